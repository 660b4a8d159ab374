//! Attention over the past: the full KV cache (`full`) and InfLLM's memory
//! attention (`infllm`). Architectures hand over un-rotated Q, K, V and get
//! the attention output back; positions, caches and everything an attention
//! remembers live behind the `Attention` interface, which the engine and
//! session files use without knowing the kind.

pub mod full;
pub mod infllm;
mod settings;
pub mod state;

pub use settings::Settings;
pub use state::{MemorySections, Source, StateReader, StateWriter};

use std::any::Any;

use crate::compute::Step;
use crate::ggml::{Buffer, BufferType, Context, Device, RopeParams, Tensor, TensorId};

/// A layer's projections of the step's tokens, un-rotated:
/// q [head_dim, n_head, T], k and v [head_dim, n_head_kv, T].
#[derive(Clone, Copy)]
pub struct LayerQkv<'a> {
    pub layer: usize,
    pub q: Tensor<'a>,
    pub k: Tensor<'a>,
    pub v: Tensor<'a>,
    /// Optional per-dimension rotary frequency factors (Llama 3.1 `rope_freqs`).
    pub freq_factors: Option<Tensor<'a>>,
}

/// What one layer's attention needs from its architecture.
#[derive(Debug, Clone, Copy)]
pub struct LayerAttn {
    pub rope: RopeParams,
    /// Multiplier of Q·K (usually 1/sqrt(head_dim)).
    pub scale: f32,
    /// Logit soft-capping (0 = none).
    pub softcap: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum AttentionError {
    #[error("the prompt is too long for the context: {needed} tokens > -c {n_ctx}")]
    ContextFull { needed: usize, n_ctx: usize },
    #[error("cannot grow the window buffer: {0}")]
    NoMemory(String),
}

/// A point of the text to come back to (`Attention::snapshot`); what it
/// holds is the attention kind's own.
pub struct Snapshot(pub(crate) Box<dyn Any + Send>, pub(crate) usize);

impl Snapshot {
    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        self.1
    }
}

/// What shapes a decode step's graph besides its input data, as the
/// attention describes it: two steps with equal keys build equal graphs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReuseKey(pub(crate) Vec<infllm::DecodeShape>);

/// Memory held for the past.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryReport {
    /// Tokens of text held.
    pub n_past: usize,
    /// Bytes of fixed-size buffers: the KV cache, or InfLLM's window
    /// buffers and initial tokens.
    pub buffer_bytes: usize,
    /// InfLLM's memory blocks (per layer) and their bytes (all layers).
    pub blocks: Option<(usize, usize)>,
    /// Bytes the blocks' file takes on disk (None: blocks in memory).
    pub blocks_on_disk: Option<u64>,
    /// Blocks copied into device block caches on demand, all layers.
    pub block_loads: usize,
}

/// One step's attention, declared by `Attention::begin`: what every layer's
/// graph calls with its Q, K, V.
pub trait StepAttention<'a> {
    /// The attention output [head_dim * n_head, T] of one layer.
    fn attend(&self, step: &mut Step<'a>, x: LayerQkv<'a>, la: &LayerAttn) -> Tensor<'a>;
}

/// An attention kind: owns its state (caches, windows, blocks) and says what
/// a step needs. One step is `prepare` (make room), `begin` (declare the
/// step's inputs), `attend` per layer while the graph is built, the graph
/// runs, then `commit` (record the step's tokens).
pub trait Attention: Send {
    /// Tokens processed so far.
    fn n_past(&self) -> usize;
    /// Most tokens of text this attention holds.
    fn n_ctx(&self) -> usize;
    /// Tokens per step of prompt processing, given `-ub`.
    fn step_tokens(&self, n_ubatch: usize) -> usize;
    /// How many of a prompt's last tokens are evaluated a token per step.
    fn prompt_tail(&self) -> usize {
        0
    }
    /// Forgets the text.
    fn clear(&mut self);

    /// Makes room for a step of `n_tokens`.
    fn prepare(&mut self, n_tokens: usize) -> Result<(), AttentionError>;
    /// Declares the step's inputs (positions, masks, ...) in `step`.
    fn begin<'a>(
        &'a self,
        step: &mut Step<'a>,
        n_tokens: usize,
    ) -> Result<Box<dyn StepAttention<'a> + 'a>, AttentionError>;
    /// Records a finished step.
    fn commit(&mut self, n_tokens: usize) -> anyhow::Result<()>;
    /// For a step of `n_tokens`, after `prepare`: what shapes its graph, when
    /// a kept graph may run it (None: the step builds its own).
    fn reuse_key(&self, _n_tokens: usize) -> Option<ReuseKey> {
        None
    }

    /// Starts recording each retrieval, for texts up to `max_tokens`, or
    /// stops (None); `take_trace` hands over what was recorded.
    fn trace_retrieval(&mut self, _max_tokens: Option<usize>) -> anyhow::Result<()> {
        anyhow::bail!("only InfLLM retrieves blocks (--attn infllm)")
    }
    fn take_trace(&mut self) -> Vec<infllm::RetrievalRecord> {
        Vec::new()
    }

    /// Moves memory blocks to a file past a budget (InfLLM only; the
    /// others keep no blocks).
    fn spill_blocks(&mut self, _spill: infllm::BlockSpill) -> anyhow::Result<()> {
        Ok(())
    }

    /// The state after the tokens so far, to `rollback` to in this run.
    fn snapshot(&self) -> Snapshot;
    fn rollback(&mut self, s: &Snapshot) -> anyhow::Result<()>;

    /// What the state holds, in bytes.
    fn memory(&self) -> MemoryReport;
    /// The settings that shape the state (what a saved state must match).
    fn settings(&self) -> Settings;
    /// Writes the state as sections; returns what else reading it back
    /// needs (counters), to keep beside them.
    fn state_write(&self, out: &mut dyn StateWriter) -> anyhow::Result<serde_json::Value>;
    /// Reads back what `state_write` wrote (`state` is its return value).
    fn state_read(&mut self, state: &serde_json::Value, sections: &mut StateReader<'_>) -> anyhow::Result<()>;
}

impl std::fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        match self.blocks {
            None => write!(f, "memory: KV cache {:.1} MiB", mib(self.buffer_bytes))?,
            Some((n_blocks, bytes)) => write!(
                f,
                "memory: {} tokens, {} blocks, block memory {:.1} MiB ({:.0} bytes/token), window and initial tokens {:.1} MiB",
                self.n_past,
                n_blocks,
                mib(bytes),
                bytes as f64 / self.n_past.max(1) as f64,
                mib(self.buffer_bytes)
            )?,
        }
        if let Some(bytes) = self.blocks_on_disk {
            write!(f, ", blocks on disk {:.1} MiB", mib(bytes as usize))?;
        }
        match self.block_loads {
            0 => Ok(()),
            n => write!(f, ", {n} blocks copied into device caches on demand"),
        }
    }
}

/// Where one layer's attention state lives, and which ops compute it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LayerPlace {
    /// The device holding the layer (None: the CPU).
    pub device: Option<Device>,
    /// Standard ggml ops only, no custom op (which only the CPU backend
    /// runs): on a device, or on the CPU to check them.
    pub standard_ops: bool,
}

impl LayerPlace {
    pub fn buffer_type(&self) -> anyhow::Result<BufferType> {
        self.device.map_or(Ok(BufferType::cpu()), |d| d.buffer_type())
    }
}

/// Allocates each layer's tensors (`per_layer[il]`, of `ctx`) in memory of
/// `layer_buft[il]`: one zeroed buffer per distinct memory.
pub fn alloc_per_layer(
    ctx: &Context,
    per_layer: &[Vec<TensorId>],
    layer_buft: &[BufferType],
) -> anyhow::Result<Vec<Buffer>> {
    anyhow::ensure!(layer_buft.len() == per_layer.len(), "one buffer type per layer");
    let mut kinds: Vec<BufferType> = Vec::new();
    for b in layer_buft {
        if !kinds.contains(b) {
            kinds.push(*b);
        }
    }
    kinds
        .into_iter()
        .map(|buft| {
            let tensors: Vec<Tensor<'_>> = (0..per_layer.len())
                .filter(|&il| layer_buft[il] == buft)
                .flat_map(|il| per_layer[il].iter().map(|&id| ctx.tensor(id)))
                .collect();
            let buffer = Buffer::alloc_tensors(buft, &tensors)?;
            buffer.clear();
            Ok(buffer)
        })
        .collect()
}
