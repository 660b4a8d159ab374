//! Attention over the past: the full KV cache (`full`) and, in later work,
//! InfLLM's memory attention. Architectures hand over un-rotated Q, K, V
//! and get the attention output back; positions and caches live here.

pub mod full;

use crate::ggml::RopeParams;

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

/// The attention of a running model, chosen per run.
pub enum Attention {
    Full(FullAttention),
}

/// One step's attention inputs (positions, masks, ...).
pub enum StepInputs<'a> {
    Full(FullInputs<'a>),
}

impl Attention {
    pub fn n_past(&self) -> usize {
        match self {
            Attention::Full(a) => a.n_past(),
        }
    }

    pub fn clear(&mut self) {
        match self {
            Attention::Full(a) => a.clear(),
        }
    }

    pub fn begin<'a>(
        &self,
        step: &mut Step<'a>,
        n_tokens: usize,
    ) -> Result<StepInputs<'a>, AttentionError> {
        Ok(match self {
            Attention::Full(a) => StepInputs::Full(a.begin(step, n_tokens)?),
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attend<'a>(
        &'a self,
        step: &mut Step<'a>,
        inp: &StepInputs<'a>,
        layer: usize,
        q: Tensor<'a>,
        k: Tensor<'a>,
        v: Tensor<'a>,
        la: &LayerAttn,
        freq_factors: Option<Tensor<'a>>,
    ) -> Tensor<'a> {
        match (self, inp) {
            (Attention::Full(a), StepInputs::Full(i)) => {
                a.attend(step, i, layer, q, k, v, la, freq_factors)
            }
        }
    }

    pub fn commit(&mut self, n_tokens: usize) {
        match self {
            Attention::Full(a) => a.commit(n_tokens),
        }
    }
}
