//! Runs a model: feeds tokens through step graphs in micro-batches on one
//! backend, keeping the attention state between calls.

use crate::attention::full::FullAttention;
use crate::attention::infllm::{HeadShape, InfllmParams};
use crate::attention::{Attention, InfllmLayers};
use crate::compute::{BuiltStep, Step};
use crate::ggml::{Backend, GraphAllocator};
use crate::model::Model;
use crate::tokenizer::Token;

/// Which attention a run uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttnMode {
    /// Standard attention over a KV cache of `n_ctx` tokens, with or
    /// without the fused flash-attention kernel.
    Full { flash_attn: bool },
    /// InfLLM memory attention (`topk = 0`: StreamingLLM).
    Infllm(InfllmParams),
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
}

pub struct Engine {
    pub model: Model,
    pub attention: Attention,
    backend: Backend,
    alloc: GraphAllocator,
    n_ubatch: usize,
    logits: Vec<f32>,
    params: EngineParams,
    /// The last decode graph and the key it was built for.
    built: Option<((Vec<usize>, bool), BuiltStep)>,
    reuse_graphs: bool,
    reused_steps: usize,
}

impl Engine {
    pub fn new(model: Model, p: EngineParams) -> anyhow::Result<Self> {
        let hp = &model.hp;
        let attention = match p.attn {
            AttnMode::Full { flash_attn } => {
                let n_ctx = if p.n_ctx == 0 { hp.n_ctx_train } else { p.n_ctx };
                Attention::Full(FullAttention::new(
                    &hp.layer_window,
                    n_ctx,
                    hp.head_dim,
                    hp.n_head_kv,
                    flash_attn,
                )?)
            }
            AttnMode::Infllm(ip) => {
                let heads = HeadShape {
                    n_layer: hp.n_layer,
                    head_dim: hp.head_dim,
                    n_head: hp.n_head,
                    n_head_kv: hp.n_head_kv,
                };
                Attention::Infllm(Box::new(InfllmLayers::new(ip, heads, &hp.layer_window)?))
            }
        };
        Ok(Self {
            backend: Backend::cpu(p.n_threads)?,
            alloc: GraphAllocator::cpu(),
            n_ubatch: attention.step_tokens(p.n_ubatch),
            attention,
            model,
            logits: Vec::new(),
            params: p,
            built: None,
            reuse_graphs: true,
            reused_steps: 0,
        })
    }

    /// Context size in tokens (after rounding up to the cache padding).
    pub fn n_ctx(&self) -> usize {
        self.attention.n_ctx()
    }

    /// Memory held for the past, in words: blocks, bytes, bytes per token.
    pub fn memory_report(&self) -> String {
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        match &self.attention {
            Attention::Full(a) => format!("memory: KV cache {:.1} MiB", mib(a.cache_bytes())),
            Attention::Infllm(layers) => {
                let a = &layers.memory;
                let window: usize = layers.all().map(|a| a.window_bytes()).sum();
                let n = self.n_past().max(1);
                format!(
                    "memory: {} tokens, {} blocks, block memory {:.1} MiB ({:.0} bytes/token), window and initial tokens {:.1} MiB",
                    self.n_past(),
                    a.n_blocks(),
                    mib(a.block_bytes()),
                    a.block_bytes() as f64 / n as f64,
                    mib(window)
                )
            }
        }
    }

    /// Bytes of InfLLM memory blocks (None for full attention).
    pub fn block_bytes(&self) -> Option<usize> {
        match &self.attention {
            Attention::Full(_) => None,
            Attention::Infllm(a) => Some(a.memory.block_bytes()),
        }
    }

    /// Tokens processed so far.
    pub fn n_past(&self) -> usize {
        self.attention.n_past()
    }

    /// The attention settings that shape the state (what a saved session
    /// must match), in words.
    pub fn settings(&self) -> String {
        match self.params.attn {
            AttnMode::Full { flash_attn } => format!("full attention, flash_attn {flash_attn}, n_ctx {}", self.n_ctx()),
            AttnMode::Infllm(p) => format!("{p:?}"),
        }
    }

    /// Forgets the conversation.
    pub fn clear(&mut self) {
        self.attention.clear();
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
        let alone = !all_logits && tokens.len() > 1 && self.attention.last_token_alone();
        let (body, last) = tokens.split_at(tokens.len() - usize::from(alone));
        let steps = body.chunks(self.n_ubatch).chain((!last.is_empty()).then_some(last));
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
        self.built = None;
    }

    /// Steps that ran a kept graph instead of building one.
    pub fn reused_steps(&self) -> usize {
        self.reused_steps
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
        let n = tokens.len() as i64;
        let key = self
            .attention
            .reuse_key(tokens.len())
            .filter(|_| self.reuse_graphs)
            .map(|k| (k, last_only));
        let reuse = matches!((&self.built, &key), (Some((built_key, _)), Some(key)) if built_key == key);
        if reuse {
            let (built_key, built) = self.built.take().expect("checked above");
            let mut step = Step::replay(&built);
            self.attention.begin(&mut step, tokens.len())?;
            step.input_i32(&[n], tokens.to_vec());
            step.run(&mut self.backend, &mut self.alloc)?;
            built.output().read_f32(&mut self.logits);
            self.built = Some((built_key, built));
            self.reused_steps += 1;
        } else {
            // Building allocates anew, which invalidates the kept graph.
            self.built = None;
            let ctx = Step::context();
            let mut step = Step::new(&ctx);
            let attn_inputs = self.attention.begin(&mut step, tokens.len())?;
            let tok = step.input_i32(&[n], tokens.to_vec());
            let logits = self
                .model
                .forward(&mut step, &self.attention, &attn_inputs, tok, last_only)
                .set_output();
            step.graph.expand(logits);
            step.run(&mut self.backend, &mut self.alloc)?;
            logits.read_f32(&mut self.logits);
            let (graph, inputs) = step.ids();
            let output = ctx.id(logits);
            drop(step);
            if let Some(key) = key {
                self.built = Some((key, BuiltStep::keep(ctx, graph, inputs, output)));
            }
        }
        self.attention.commit(tokens.len())
    }
}
