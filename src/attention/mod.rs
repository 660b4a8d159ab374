//! Attention over the past: the full KV cache (`full`) and, in later work,
//! InfLLM's memory attention. Architectures hand over un-rotated Q, K, V
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
use infllm::{InfllmAttention, InfllmInputs};

/// The attention of a running model, chosen per run.
pub enum Attention {
    Full(FullAttention),
    Infllm(InfllmAttention),
}

/// One step's attention inputs (positions, masks, ...).
pub enum StepInputs<'a> {
    Full(FullInputs<'a>),
    Infllm(InfllmInputs<'a>),
}

impl Attention {
    pub fn n_past(&self) -> usize {
        match self {
            Attention::Full(a) => a.n_past(),
            Attention::Infllm(a) => a.n_past(),
        }
    }

    /// Most tokens of text this attention holds.
    pub fn n_ctx(&self) -> usize {
        match self {
            Attention::Full(a) => a.n_ctx(),
            Attention::Infllm(a) => a.params().max_tokens,
        }
    }

    /// Tokens per step of prompt processing, given `-ub`: InfLLM's chunk
    /// defines its semantics (one retrieval per chunk), so it wins there.
    pub fn step_tokens(&self, n_ubatch: usize) -> usize {
        match self {
            Attention::Full(_) => n_ubatch.max(1),
            Attention::Infllm(a) => a.params().chunk,
        }
    }

    pub fn clear(&mut self) {
        match self {
            Attention::Full(a) => a.clear(),
            Attention::Infllm(a) => a.clear(),
        }
    }

    /// Makes room for a step of `n_tokens`.
    pub fn prepare(&mut self, n_tokens: usize) -> Result<(), AttentionError> {
        match self {
            Attention::Full(_) => Ok(()),
            Attention::Infllm(a) => a.prepare(n_tokens),
        }
    }

    pub fn begin<'a>(&self, step: &mut Step<'a>, n_tokens: usize) -> Result<StepInputs<'a>, AttentionError> {
        Ok(match self {
            Attention::Full(a) => StepInputs::Full(a.begin(step, n_tokens)?),
            Attention::Infllm(a) => StepInputs::Infllm(a.begin(step, n_tokens)),
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
            (Attention::Infllm(a), StepInputs::Infllm(i)) => a.attend(step, i, x, la),
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
            Attention::Infllm(a) => a.commit(n_tokens),
        }
    }
}
