//! Runs a model: feeds tokens through step graphs in micro-batches on the
//! devices that hold its layers (and the CPU), keeping the attention state
//! between calls.

use crate::attention::full::{CacheParams, FullAttention};
use crate::attention::infllm::{BlockSpill, HeadShape, Infllm, InfllmParams, RetrievalRecord};
use crate::attention::{Attention, LayerPlace, MemoryReport, ReuseKey, Settings, Snapshot, StateReader, StateWriter};
use crate::compute::{BuiltStep, Step};
use crate::ggml::{Backend, GgmlType, Scheduler, MAX_GRAPH_NODES};
use crate::model::Model;
use crate::tokenizer::{Token, Tokenizer};

/// Which attention a run uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttnMode {
    /// Standard attention over a KV cache of `n_ctx` tokens, with or
    /// without the fused flash-attention kernel.
    Full {
        flash_attn: bool,
        /// Cache types (`-ctk`, `-ctv`).
        type_k: GgmlType,
        type_v: GgmlType,
    },
    /// InfLLM memory attention (`topk = 0`: StreamingLLM).
    Infllm(InfllmParams),
}

impl AttnMode {
    /// Full attention over an f16 cache (llama.cpp's default).
    pub fn full(flash_attn: bool) -> Self {
        Self::Full {
            flash_attn,
            type_k: GgmlType::F16,
            type_v: GgmlType::F16,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct EngineParams {
    pub attn: AttnMode,
    pub n_threads: usize,
    /// Context size in tokens (`-c`).
    pub n_ctx: usize,
    /// Tokens per forward pass during prompt processing (`-ub`; InfLLM
    /// steps are its `--chunk` instead: one retrieval per chunk).
    pub n_ubatch: usize,
    /// Device memory for InfLLM's block cache, bytes per device
    /// (`--block-cache`; None: a quarter of the device's free memory).
    pub block_cache: Option<usize>,
    /// InfLLM through standard ggml ops on the CPU too (the path devices
    /// take), instead of infllm's own kernels: to check one against the other.
    pub standard_ops: bool,
}

/// What a kept decode graph was built for: a step whose key is equal runs
/// it again with new input data.
#[derive(PartialEq)]
struct StepKey {
    attention: ReuseKey,
    last_only: bool,
}

pub struct Engine {
    model: Model,
    params: EngineParams,
    attention: Box<dyn Attention>,
    sched: Scheduler,
    n_ubatch: usize,
    logits: Vec<f32>,
    /// The last decode graph and the key it was built for.
    kept: Option<(StepKey, BuiltStep)>,
    reuse_graphs: bool,
    reused_steps: usize,
}

impl Engine {
    pub fn new(model: Model, p: EngineParams) -> anyhow::Result<Self> {
        let attention = new_attention(&model, &p)?;
        let mut backends = model
            .placement
            .devices()
            .into_iter()
            .map(|d| Backend::new(d, p.n_threads))
            .collect::<anyhow::Result<Vec<_>>>()?;
        backends.push(Backend::cpu(p.n_threads)?);
        Ok(Self {
            sched: Scheduler::new(backends, MAX_GRAPH_NODES)?,
            n_ubatch: attention.step_tokens(p.n_ubatch),
            attention,
            model,
            params: p,
            logits: Vec::new(),
            kept: None,
            reuse_graphs: true,
            reused_steps: 0,
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// An empty attention state like this engine's, to hold another
    /// conversation (`swap_state`).
    pub fn new_state(&self) -> anyhow::Result<Box<dyn Attention>> {
        new_attention(&self.model, &self.params)
    }

    /// Puts `state` (from `new_state`) in place of the engine's; returns
    /// the one it held.
    pub fn swap_state(&mut self, state: Box<dyn Attention>) -> Box<dyn Attention> {
        // A kept graph refers to the old state's tensors.
        self.kept = None;
        std::mem::replace(&mut self.attention, state)
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.model.tokenizer
    }

    /// Context size in tokens (after rounding up to the cache padding).
    pub fn n_ctx(&self) -> usize {
        self.attention.n_ctx()
    }

    /// Memory held for the past.
    pub fn memory(&self) -> MemoryReport {
        self.attention.memory()
    }

    /// Keeps InfLLM's memory blocks in a file once they pass a budget.
    pub fn spill_blocks(&mut self, spill: BlockSpill) -> anyhow::Result<()> {
        self.attention.spill_blocks(spill)
    }

    /// Memory held for the past, in words: blocks, bytes, bytes per token.
    pub fn memory_report(&self) -> String {
        self.memory().to_string()
    }

    /// Bytes of InfLLM memory blocks (None for full attention).
    pub fn block_bytes(&self) -> Option<usize> {
        self.memory().blocks.map(|(_, bytes)| bytes)
    }

    /// Tokens processed so far.
    pub fn n_past(&self) -> usize {
        self.attention.n_past()
    }

    /// The attention settings that shape the state (what a saved session
    /// must match).
    pub fn settings(&self) -> Settings {
        self.attention.settings()
    }

    /// Forgets the conversation.
    pub fn clear(&mut self) {
        self.attention.clear();
    }

    /// Records retrieval for texts up to `max_tokens` (InfLLM only), or stops (None).
    pub fn trace_retrieval(&mut self, max_tokens: Option<usize>) -> anyhow::Result<()> {
        self.attention.trace_retrieval(max_tokens)
    }

    /// The retrieval recorded since the last call.
    pub fn take_trace(&mut self) -> Vec<RetrievalRecord> {
        self.attention.take_trace()
    }

    /// The state after the tokens so far, to `rollback` to in this run.
    pub fn snapshot(&self) -> Snapshot {
        self.attention.snapshot()
    }

    pub fn rollback(&mut self, s: &Snapshot) -> anyhow::Result<()> {
        self.attention.rollback(s)
    }

    /// Writes the attention state as sections (`session.rs`); returns what
    /// reading it back needs besides them.
    pub fn state_write(&self, out: &mut dyn StateWriter) -> anyhow::Result<serde_json::Value> {
        self.attention.state_write(out)
    }

    /// Reads back what `state_write` wrote.
    pub fn state_read(&mut self, state: &serde_json::Value, sections: &mut StateReader<'_>) -> anyhow::Result<()> {
        self.kept = None;
        self.attention.state_read(state, sections)
    }

    /// Appends `tokens`; returns the logits of every token (`all_logits`,
    /// `n_vocab` per token) or of the last one. `progress(done, total)` is
    /// called after every micro-batch.
    pub fn eval(
        &mut self,
        tokens: &[Token],
        all_logits: bool,
        progress: &mut dyn FnMut(usize, usize),
    ) -> anyhow::Result<Vec<f32>> {
        anyhow::ensure!(!tokens.is_empty(), "nothing to evaluate");
        let tail = if all_logits { 0 } else { self.attention.prompt_tail() };
        let (body, tail) = tokens.split_at(tokens.len() - tail.min(tokens.len()));
        let steps = body.chunks(self.n_ubatch).chain(tail.chunks(1));
        let mut out = Vec::new();
        let mut done = 0;
        for chunk in steps {
            let last_chunk = done + chunk.len() == tokens.len();
            self.step(chunk, !all_logits)?;
            if all_logits || last_chunk {
                out.extend_from_slice(&self.logits);
            }
            done += chunk.len();
            progress(done, tokens.len());
        }
        Ok(out)
    }

    /// Appends `tokens` in steps of `step_tokens()`, keeping no logits: the
    /// first part of a prompt. Fed in multiples of `step_tokens()`, then
    /// finished with `eval`, a prompt takes the same steps as in one `eval`.
    pub fn feed(&mut self, tokens: &[Token], progress: &mut dyn FnMut(usize, usize)) -> anyhow::Result<()> {
        let mut done = 0;
        for chunk in tokens.chunks(self.n_ubatch) {
            self.step(chunk, true)?;
            done += chunk.len();
            progress(done, tokens.len());
        }
        Ok(())
    }

    /// Whether decode steps may run the last step's graph again (on by
    /// default; off: every step builds its graph, for comparison).
    pub fn set_graph_reuse(&mut self, on: bool) {
        self.reuse_graphs = on;
        self.kept = None;
    }

    /// Steps that ran a kept graph instead of building one.
    pub fn reused_steps(&self) -> usize {
        self.reused_steps
    }

    /// Parts the last step's graph was cut into, one per change of device.
    pub fn graph_splits(&self) -> usize {
        self.sched.n_splits()
    }

    /// Tokens per prompt step.
    pub fn step_tokens(&self) -> usize {
        self.n_ubatch
    }

    /// One forward pass over at most `n_ubatch` tokens. A decode step whose
    /// graph would come out as the last one's (`Attention::reuse_key`)
    /// runs that graph again with new inputs instead of building one.
    fn step(&mut self, tokens: &[Token], last_only: bool) -> anyhow::Result<()> {
        self.attention.prepare(tokens.len())?;
        let key = self.attention.reuse_key(tokens.len()).filter(|_| self.reuse_graphs);
        let key = key.map(|attention| StepKey { attention, last_only });
        // A kept graph that does not fit is dropped before building, which
        // allocates anew and so invalidates it.
        match self.kept.take().filter(|(kept, _)| Some(kept) == key.as_ref()) {
            Some((kept, built)) => {
                self.replay(&built, tokens)?;
                self.kept = Some((kept, built));
                self.reused_steps += 1;
            }
            None => {
                let built = self.build(tokens, last_only)?;
                self.kept = key.map(|key| (key, built));
            }
        }
        self.attention.commit(tokens.len())
    }

    /// Runs a kept graph with this step's inputs.
    fn replay(&mut self, built: &BuiltStep, tokens: &[Token]) -> anyhow::Result<()> {
        let mut step = Step::replay(built);
        self.attention.begin(&mut step, tokens.len())?;
        step.input_i32("tokens", &[tokens.len() as i64], tokens.to_vec());
        step.run(&mut self.sched)?;
        built.output().read_f32(&mut self.logits);
        Ok(())
    }

    /// Builds and runs this step's graph; returns it, to keep.
    fn build(&mut self, tokens: &[Token], last_only: bool) -> anyhow::Result<BuiltStep> {
        let ctx = Step::context();
        let mut step = Step::new(&ctx);
        let attention = self.attention.begin(&mut step, tokens.len())?;
        let tok = step.input_i32("tokens", &[tokens.len() as i64], tokens.to_vec());
        let logits = self.model.forward(&mut step, &*attention, tok, last_only).set_output();
        step.graph.expand(logits);
        step.run(&mut self.sched)?;
        logits.read_f32(&mut self.logits);
        drop(attention);
        let ids = step.into_ids(logits);
        Ok(BuiltStep::keep(ctx, ids))
    }
}

/// The attention `p` asks for, sized for `model`, each layer's state on
/// the device that holds the layer.
fn new_attention(model: &Model, p: &EngineParams) -> anyhow::Result<Box<dyn Attention>> {
    let hp = &model.hp;
    let places: Vec<LayerPlace> = (0..hp.n_layer)
        .map(|il| {
            let device = model.placement.layer(il);
            LayerPlace {
                device,
                standard_ops: device.is_some() || p.standard_ops,
            }
        })
        .collect();
    Ok(match p.attn {
        AttnMode::Full {
            flash_attn,
            type_k,
            type_v,
        } => {
            let n_ctx = if p.n_ctx == 0 { hp.n_ctx_train } else { p.n_ctx };
            let bufts = places
                .iter()
                .map(LayerPlace::buffer_type)
                .collect::<anyhow::Result<Vec<_>>>()?;
            let cache = CacheParams {
                n_ctx,
                head_dim: hp.head_dim,
                n_head_kv: hp.n_head_kv,
                flash_attn,
                type_k,
                type_v,
            };
            Box::new(FullAttention::new(cache, &hp.layer_window, &bufts)?)
        }
        AttnMode::Infllm(ip) => {
            let heads = HeadShape {
                n_layer: hp.n_layer,
                head_dim: hp.head_dim,
                n_head: hp.n_head,
                n_head_kv: hp.n_head_kv,
            };
            Box::new(Infllm::new(ip, heads, &hp.layer_window, &places, p.block_cache)?)
        }
    })
}
