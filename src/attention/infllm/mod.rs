//! InfLLM memory attention (docs/infllm.md): each query attends to its
//! local window with true relative positions and, under the same softmax,
//! to the initial tokens, the top-k memory blocks retrieved for its chunk,
//! and the evicted remainder, all seen un-rotated from one fixed distance
//! (`n_local - 1`).
//!
//! - `window`: an instance's buffers (window buffer, initial tokens, block
//!   store) and eviction: `prepare` before a step, `commit` after it.
//! - `blocks`: the quantized block store and representative keys.
//! - `layout`: where a step's keys lie in the window buffer (index maths).
//! - `inputs`: a step's positions, masks and key ranges, as input data.
//! - `views`: a layer's buffers as graph tensors; appending a step's K / V.
//! - `prefill`, `decode`: the graphs of a prompt chunk and of one token.
//! - `standard`: each custom op, or its counterpart in standard ggml ops
//!   (layers on a device).
//! - `state`: snapshots and saved sessions.
//! - `spill`: blocks on disk past a memory budget.
//! - `vote`: blocks shared by the layers (`--shared-retrieval`).
//!
//! Retrieval runs inside the step graph (`mul_mat` against the
//! representative keys, then `top_k`), so a chunk is one graph over all
//! layers. What moves from one decode step to the next is input data, so
//! the engine runs one graph for many steps (`DecodeShape`).

mod blocks;
mod coarse;
mod decode;
mod inputs;
mod layout;
mod params;
mod prefill;
mod spill;
mod standard;
mod state;
mod trace;
mod views;
mod vote;
mod window;

pub use blocks::{representative_key, BlockShape, BlockStore};
pub use coarse::{top_blocks, CoarseKeys, CoarsePass};
pub use layout::DecodeShape;
pub use params::{InfllmParams, Retrieval, RetrievalPreset, BLOCK_TYPES, NO_CAP_TOKENS};
pub use spill::BlockSpill;
pub use state::{TextPosition, WindowState};
pub use trace::RetrievalRecord;
pub use window::{InfllmAttention, Role};

use anyhow::Context as _;
use serde::Deserialize;

use super::{
    Attention, AttentionError, LayerAttn, LayerPlace, LayerQkv, MemoryReport, ReuseKey, Settings, Snapshot,
    StateReader, StateWriter, StepAttention,
};
use crate::compute::Step;
use crate::ggml::{GgmlType, Tensor};
use inputs::InfllmInputs;
use state::SavedPosition;

/// Model dimensions the attention needs.
#[derive(Debug, Clone, Copy)]
pub struct HeadShape {
    pub n_layer: usize,
    pub head_dim: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
}

impl InfllmAttention {
    /// Appends the step's K / V to layer `x.layer`'s window buffer and
    /// returns its attention output [head_dim * n_head, T].
    fn attend<'a>(
        &'a self,
        step: &mut Step<'a>,
        inp: &InfllmInputs<'a>,
        x: LayerQkv<'a>,
        la: &LayerAttn,
    ) -> Tensor<'a> {
        let lt = self.layer_tensors(step.ctx, x, la);
        lt.append(step, inp);
        match inp.n_tokens {
            1 => self.attend_decode(step, &lt, inp),
            _ => self.attend_prefill(step, &lt, inp),
        }
    }

    /// Declares the step's inputs; `attend` then builds each layer.
    pub fn begin<'a>(&'a self, step: &mut Step<'a>, n_tokens: usize) -> InstanceStep<'a> {
        InstanceStep {
            attn: self,
            inputs: self.declare_inputs(step, n_tokens),
        }
    }
}

/// One instance's step: the instance and the step's inputs.
pub struct InstanceStep<'a> {
    attn: &'a InfllmAttention,
    inputs: InfllmInputs<'a>,
}

impl<'a> StepAttention<'a> for InstanceStep<'a> {
    fn attend(&self, step: &mut Step<'a>, x: LayerQkv<'a>, la: &LayerAttn) -> Tensor<'a> {
        self.attn.attend(step, &self.inputs, x, la)
    }
}

/// Which instance a model layer belongs to, and its index there.
#[derive(Debug, Clone, Copy)]
enum LayerRoute {
    Memory(usize),
    Window(usize),
}

/// InfLLM for the layers attending the whole past and, for a model with
/// sliding-window layers, the same machinery without retrieval or initial
/// tokens for those (a window buffer of `window` tokens: memory bounded by
/// the window, positions bounded as well).
pub struct Infllm {
    memory: InfllmAttention,
    window: Option<InfllmAttention>,
    /// Per model layer.
    routes: Vec<LayerRoute>,
}

impl Infllm {
    /// `layer_window[i]` is layer i's sliding window (0: attends
    /// everything), `places[i]` where it runs; `block_cache`: device memory
    /// for blocks (`InfllmAttention::new`).
    pub fn new(
        p: InfllmParams,
        heads: HeadShape,
        layer_window: &[usize],
        places: &[LayerPlace],
        block_cache: Option<usize>,
    ) -> anyhow::Result<Self> {
        let mut routes = Vec::with_capacity(layer_window.len());
        let (mut memory_places, mut window_places) = (Vec::new(), Vec::new());
        for (&w, &place) in layer_window.iter().zip(places) {
            if w == 0 {
                routes.push(LayerRoute::Memory(memory_places.len()));
                memory_places.push(place);
            } else {
                routes.push(LayerRoute::Window(window_places.len()));
                window_places.push(place);
            }
        }
        let (n_memory, n_window) = (memory_places.len(), window_places.len());
        let memory_heads = HeadShape {
            n_layer: n_memory,
            ..heads
        };
        let memory = InfllmAttention::new(p, memory_heads, Role::Memory, &memory_places, block_cache)?;
        let window = match layer_window.iter().copied().max().filter(|&w| w > 0) {
            None => None,
            Some(w) => {
                let heads = HeadShape {
                    n_layer: n_window,
                    ..heads
                };
                let p = window_params(p, w);
                Some(InfllmAttention::new(
                    p,
                    heads,
                    Role::SlidingWindow,
                    &window_places,
                    None,
                )?)
            }
        };
        Ok(Self { memory, window, routes })
    }

    /// The memory instance, then the window layers' (if any).
    fn all(&self) -> impl Iterator<Item = &InfllmAttention> {
        std::iter::once(&self.memory).chain(self.window.as_ref())
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut InfllmAttention> {
        std::iter::once(&mut self.memory).chain(self.window.as_mut())
    }
}

/// Settings for sliding-window layers of window `w`: blocks of one token
/// that are never stored, so every token leaving the window is dropped
/// after the step (and `Role::SlidingWindow` masks it within the step).
fn window_params(p: InfllmParams, w: usize) -> InfllmParams {
    InfllmParams {
        n_init: 0,
        n_local: w,
        topk: 0,
        block_size: 1,
        repr_topk: 1,
        type_k: GgmlType::F16,
        type_v: GgmlType::F16,
        mem_distance: None,
        retrieval: Retrieval::Paper,
        shared: false,
        ..p
    }
}

/// One step of every instance.
struct InfllmStep<'a> {
    routes: &'a [LayerRoute],
    memory: InstanceStep<'a>,
    window: Option<InstanceStep<'a>>,
}

impl<'a> StepAttention<'a> for InfllmStep<'a> {
    fn attend(&self, step: &mut Step<'a>, x: LayerQkv<'a>, la: &LayerAttn) -> Tensor<'a> {
        match (self.routes[x.layer], &self.window) {
            (LayerRoute::Memory(i), _) => self.memory.attend(step, LayerQkv { layer: i, ..x }, la),
            (LayerRoute::Window(i), Some(w)) => w.attend(step, LayerQkv { layer: i, ..x }, la),
            (LayerRoute::Window(_), None) => unreachable!("window layers have a window instance"),
        }
    }
}

impl Attention for Infllm {
    fn n_past(&self) -> usize {
        self.memory.n_past()
    }

    fn n_ctx(&self) -> usize {
        self.memory.params().max_tokens
    }

    /// InfLLM's chunk defines its semantics (one retrieval per chunk), so it
    /// wins over `-ub`.
    fn step_tokens(&self, _n_ubatch: usize) -> usize {
        self.memory.params().chunk
    }

    /// As in the reference: the logits the answer starts from come from a
    /// retrieval for the last token's query, not for the mean query of a
    /// chunk (mostly the text before the question); `--tail-steps` extends
    /// that to the prompt's last tokens.
    fn prompt_tail(&self) -> usize {
        self.memory.params().tail_steps
    }

    fn clear(&mut self) {
        self.all_mut().for_each(|a| a.clear());
    }

    fn prepare(&mut self, n_tokens: usize) -> Result<(), AttentionError> {
        self.all_mut().try_for_each(|a| a.prepare(n_tokens))
    }

    fn begin<'a>(
        &'a self,
        step: &mut Step<'a>,
        n_tokens: usize,
    ) -> Result<Box<dyn StepAttention<'a> + 'a>, AttentionError> {
        Ok(Box::new(InfllmStep {
            routes: &self.routes,
            memory: self.memory.begin(step, n_tokens),
            window: self.window.as_ref().map(|w| w.begin(step, n_tokens)),
        }))
    }

    fn commit(&mut self, n_tokens: usize) -> anyhow::Result<()> {
        self.all_mut().try_for_each(|a| a.commit(n_tokens))
    }

    /// Decode steps only: prompt steps build their own graph.
    fn reuse_key(&self, n_tokens: usize) -> Option<ReuseKey> {
        if n_tokens != 1 {
            return None;
        }
        self.all()
            .map(|a| a.decode_shape())
            .collect::<Option<_>>()
            .map(ReuseKey)
    }

    /// The window buffers' copy (blocks are only appended: their count).
    fn trace_retrieval(&mut self, max_tokens: Option<usize>) -> anyhow::Result<()> {
        self.memory.trace(max_tokens)
    }

    fn take_trace(&mut self) -> Vec<RetrievalRecord> {
        self.memory.take_trace()
    }

    fn snapshot(&self) -> Snapshot {
        let states: Vec<WindowState> = self.all().map(|a| a.window_state()).collect();
        let bytes = states.iter().map(|s| s.bytes.len()).sum();
        Snapshot(Box::new(states), bytes)
    }

    fn rollback(&mut self, s: &Snapshot) -> anyhow::Result<()> {
        let states =
            s.0.downcast_ref::<Vec<WindowState>>()
                .context("snapshot of another attention")?;
        anyhow::ensure!(states.len() == self.all().count(), "snapshot of another attention");
        self.all_mut().zip(states).try_for_each(|(a, s)| a.restore(s))
    }

    fn memory(&self) -> MemoryReport {
        MemoryReport {
            n_past: self.n_past(),
            buffer_bytes: self.all().map(|a| a.window_bytes()).sum(),
            blocks: Some((self.memory.n_blocks(), self.memory.block_bytes())),
            blocks_on_disk: self.memory.blocks_on_disk(),
            block_loads: self.memory.block_loads(),
        }
    }

    /// The memory instance's blocks (window layers keep none).
    fn spill_blocks(&mut self, spill: BlockSpill) -> anyhow::Result<()> {
        self.memory.spill_blocks(spill)
    }

    fn settings(&self) -> Settings {
        Settings::Infllm(*self.memory.params())
    }

    fn state_write(&self, out: &mut dyn StateWriter) -> anyhow::Result<serde_json::Value> {
        let saved = self
            .all()
            .map(|a| a.state_write(out))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(serde_json::to_value(saved)?)
    }

    fn state_read(&mut self, state: &serde_json::Value, sections: &mut StateReader<'_>) -> anyhow::Result<()> {
        let saved: Vec<SavedPosition> = Vec::deserialize(state)
            .map_err(|e| anyhow::anyhow!("corrupt attention state: {}", crate::quote::quoted(&e.to_string())))?;
        anyhow::ensure!(saved.len() == self.all().count(), "saved with other layers");
        // Every instance's state checked before any is read.
        let checked = self
            .all()
            .zip(&saved)
            .map(|(a, s)| a.check_saved(s, sections))
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.all_mut()
            .zip(checked)
            .try_for_each(|(a, c)| a.load_saved(c, sections))
    }
}
