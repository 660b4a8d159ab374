//! Attention over the past: the full KV cache (`full`) and InfLLM's memory
//! attention (`infllm`). Architectures hand over un-rotated Q, K, V
//! and get the attention output back; positions and caches live here.

pub mod full;
pub mod infllm;

use crate::ggml::RopeParams;

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
}

use crate::compute::Step;
use crate::ggml::Tensor;
use full::{FullAttention, FullInputs};
use infllm::{HeadShape, InfllmAttention, InfllmInputs, InfllmParams, WindowState};

/// Byte ranges of tensors: (tensor, offset, length).
type Ranges<'a> = Vec<(Tensor<'a>, usize, usize)>;

/// The bytes of `ranges`, one after the other.
fn read_ranges(ranges: Ranges<'_>) -> Vec<u8> {
    let mut bytes = vec![0u8; ranges.iter().map(|r| r.2).sum()];
    let mut at = 0;
    for (t, offset, len) in ranges {
        t.read_bytes(offset, &mut bytes[at..at + len]);
        at += len;
    }
    bytes
}

/// Writes `bytes` (from `read_ranges` over the same ranges) back.
fn write_ranges(ranges: Ranges<'_>, bytes: &[u8]) -> anyhow::Result<()> {
    anyhow::ensure!(
        ranges.iter().map(|r| r.2).sum::<usize>() == bytes.len(),
        "saved attention state of the wrong size"
    );
    let mut at = 0;
    for (t, offset, len) in ranges {
        t.write_bytes(offset, &bytes[at..at + len]);
        at += len;
    }
    Ok(())
}

/// A point of the text to come back to (`Attention::snapshot`).
pub enum Snapshot {
    Full { n_past: usize },
    Infllm(Vec<WindowState>),
}

/// The attention of a running model, chosen per run.
pub enum Attention {
    /// One KV cache for all layers; sliding-window layers mask what left their window.
    Full(FullAttention),
    Infllm(Box<InfllmLayers>),
}

/// InfLLM for the layers attending the whole past and, for a model with
/// sliding-window layers, the same machinery without retrieval or initial
/// tokens for those (a window buffer of `window` tokens: memory bounded by
/// the window, positions bounded as well).
pub struct InfllmLayers {
    pub memory: InfllmAttention,
    pub window: Option<InfllmAttention>,
    /// Per model layer: (sliding-window layer, index among its kind).
    route: Vec<(bool, usize)>,
}

impl InfllmLayers {
    /// `layer_window[i]` is layer i's sliding window (0: attends everything).
    pub fn new(p: InfllmParams, heads: HeadShape, layer_window: &[usize]) -> anyhow::Result<Self> {
        let mut route = Vec::with_capacity(layer_window.len());
        let (mut n_memory, mut n_window) = (0, 0);
        for &w in layer_window {
            let n = if w > 0 { &mut n_window } else { &mut n_memory };
            route.push((w > 0, *n));
            *n += 1;
        }
        let memory = InfllmAttention::new(
            p,
            HeadShape {
                n_layer: n_memory,
                ..heads
            },
        )?;
        let window = match layer_window.iter().copied().filter(|&w| w > 0).max() {
            None => None,
            Some(w) => {
                // Blocks of one token that are never stored: every token
                // leaving the window is dropped at once (no remainder).
                let wp = InfllmParams {
                    n_init: 0,
                    n_local: w,
                    topk: 0,
                    block_size: 1,
                    repr_topk: 1,
                    type_k: crate::ggml::GgmlType::F16,
                    type_v: crate::ggml::GgmlType::F16,
                    ..p
                };
                Some(InfllmAttention::new(
                    wp,
                    HeadShape {
                        n_layer: n_window,
                        ..heads
                    },
                )?)
            }
        };
        Ok(Self { memory, window, route })
    }

    /// The memory attention, then the window layers' (if any).
    pub fn all(&self) -> impl Iterator<Item = &InfllmAttention> {
        std::iter::once(&self.memory).chain(self.window.as_ref())
    }

    pub fn all_mut(&mut self) -> impl Iterator<Item = &mut InfllmAttention> {
        std::iter::once(&mut self.memory).chain(self.window.as_mut())
    }
}

/// One step's attention inputs (positions, masks, ...).
pub enum StepInputs<'a> {
    Full(FullInputs<'a>),
    Infllm(Box<(InfllmInputs<'a>, Option<InfllmInputs<'a>>)>),
}

impl Attention {
    pub fn n_past(&self) -> usize {
        match self {
            Attention::Full(a) => a.n_past(),
            Attention::Infllm(a) => a.memory.n_past(),
        }
    }

    /// Most tokens of text this attention holds.
    pub fn n_ctx(&self) -> usize {
        match self {
            Attention::Full(a) => a.n_ctx(),
            Attention::Infllm(a) => a.memory.params().max_tokens,
        }
    }

    /// Whether the last token of a prompt is evaluated as a step of its own.
    /// InfLLM's reference does so: the logits the answer starts from come
    /// from a retrieval for that token's query, not for the mean query of a
    /// chunk (mostly the text before the question).
    pub fn last_token_alone(&self) -> bool {
        matches!(self, Attention::Infllm(_))
    }

    /// Tokens per step of prompt processing, given `-ub`: InfLLM's chunk
    /// defines its semantics (one retrieval per chunk), so it wins there.
    pub fn step_tokens(&self, n_ubatch: usize) -> usize {
        match self {
            Attention::Full(_) => n_ubatch.max(1),
            Attention::Infllm(a) => a.memory.params().chunk,
        }
    }

    pub fn clear(&mut self) {
        match self {
            Attention::Full(a) => a.clear(),
            Attention::Infllm(a) => a.all_mut().for_each(|a| a.clear()),
        }
    }

    /// The state after the tokens so far; cheap for full attention (the
    /// cache is only appended to), the window buffers' copy for InfLLM.
    pub fn snapshot(&self) -> Snapshot {
        match self {
            Attention::Full(a) => Snapshot::Full { n_past: a.n_past() },
            Attention::Infllm(a) => Snapshot::Infllm(a.all().map(|a| a.window_state()).collect()),
        }
    }

    /// Goes back to a snapshot taken earlier in this run.
    pub fn rollback(&mut self, s: &Snapshot) -> anyhow::Result<()> {
        match (self, s) {
            (Attention::Full(a), Snapshot::Full { n_past }) => a.restore(*n_past, None),
            (Attention::Infllm(a), Snapshot::Infllm(states)) => {
                anyhow::ensure!(states.len() == a.all().count(), "snapshot of another attention");
                a.all_mut()
                    .zip(states)
                    .try_for_each(|(a, s)| a.restore(s.counters, &s.bytes))
            }
            _ => anyhow::bail!("snapshot of another attention"),
        }
    }

    /// For a decode step (one token), what shapes its graph besides input
    /// data, to be called after `prepare`: two steps with equal keys build
    /// the same graph, so the engine runs the last one again. None: the
    /// step builds its own (prompt steps; full attention, whose graph
    /// follows the cache length).
    pub fn reuse_key(&self, n_tokens: usize) -> Option<Vec<usize>> {
        match self {
            Attention::Infllm(a) if n_tokens == 1 => {
                let shapes: Option<Vec<_>> = a.all().map(|a| a.decode_shape()).collect();
                shapes.map(|s| s.concat())
            }
            _ => None,
        }
    }

    /// Makes room for a step of `n_tokens`.
    pub fn prepare(&mut self, n_tokens: usize) -> Result<(), AttentionError> {
        match self {
            Attention::Full(_) => Ok(()),
            Attention::Infllm(a) => a.all_mut().try_for_each(|a| a.prepare(n_tokens)),
        }
    }

    pub fn begin<'a>(&self, step: &mut Step<'a>, n_tokens: usize) -> Result<StepInputs<'a>, AttentionError> {
        Ok(match self {
            Attention::Full(a) => StepInputs::Full(a.begin(step, n_tokens)?),
            Attention::Infllm(a) => StepInputs::Infllm(Box::new((
                a.memory.begin(step, n_tokens),
                a.window.as_ref().map(|w| w.begin(step, n_tokens)),
            ))),
        })
    }

    /// The attention output [head_dim * n_head, T] of one layer.
    pub fn attend<'a>(
        &'a self,
        step: &mut Step<'a>,
        inp: &StepInputs<'a>,
        x: LayerQkv<'a>,
        la: &LayerAttn,
    ) -> Tensor<'a> {
        match (self, inp) {
            (Attention::Full(a), StepInputs::Full(i)) => a.attend(step, i, x, la),
            (Attention::Infllm(a), StepInputs::Infllm(inputs)) => {
                let (memory, window) = &**inputs;
                let (windowed, index) = a.route[x.layer];
                let x = LayerQkv { layer: index, ..x };
                match (windowed, &a.window, window) {
                    (false, _, _) => a.memory.attend(step, memory, x, la),
                    (true, Some(w), Some(i)) => w.attend(step, i, x, la),
                    _ => unreachable!("window inputs exist when window layers do"),
                }
            }
            _ => unreachable!("step inputs come from the same attention"),
        }
    }

    /// Records a finished step.
    pub fn commit(&mut self, n_tokens: usize) -> anyhow::Result<()> {
        match self {
            Attention::Full(a) => {
                a.commit(n_tokens);
                Ok(())
            }
            Attention::Infllm(a) => a.all_mut().try_for_each(|a| a.commit(n_tokens)),
        }
    }
}
