//! The gated feed-forward block (SwiGLU, GELU-gated, fused gate-up).

use super::{Blk, Builder, Dims, Role};
use crate::ggml::{Tensor, TensorId};
use crate::model::weights::Tensors;
use crate::model::Hparams;

/// The gate's activation in a gated feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Silu,
    Gelu,
}

#[derive(Clone, Copy)]
enum Up {
    Gated {
        gate: TensorId,
        up: TensorId,
    },
    /// Gate and up stacked in one matrix [n_embd, 2 * n_ff] (Phi-3).
    Fused(TensorId),
}

/// The gated feed-forward block: act(gate · x) * (up · x), then down.
pub struct Ffn {
    up: Up,
    down: TensorId,
    act: Act,
}

impl Ffn {
    /// Loads layer `il`'s block: separate gate and up, or (SiLU only) fused.
    pub fn load(w: Tensors<'_>, hp: &Hparams, il: usize, act: Act) -> anyhow::Result<Self> {
        let blk = Blk::new(w, hp, il);
        let Dims { embd: e, ff, .. } = Dims::of(hp);
        let up = match blk.optional("ffn_gate.weight", Role::Matrix, &[e, ff])? {
            Some(gate) => Up::Gated {
                gate,
                up: blk.matrix("ffn_up.weight", &[e, ff])?,
            },
            None if act == Act::Silu => Up::Fused(blk.matrix("ffn_up.weight", &[e, 2 * ff])?),
            None => anyhow::bail!("tensor \"blk.{il}.ffn_gate.weight\" is missing from the model file"),
        };
        Ok(Self {
            up,
            down: blk.matrix("ffn_down.weight", &[ff, e])?,
            act,
        })
    }

    /// The block's output [n_embd, n_tokens] for its normed input `cur`.
    pub fn build<'a>(&self, b: &Builder<'a, '_>, cur: Tensor<'a>) -> Tensor<'a> {
        let g = b.g;
        let hidden = match (self.up, self.act) {
            (Up::Gated { gate, up }, Act::Silu) => g.swiglu(b.mm(gate, cur), b.mm(up, cur)),
            (Up::Gated { gate, up }, Act::Gelu) => g.geglu(b.mm(gate, cur), b.mm(up, cur)),
            (Up::Fused(up), _) => g.swiglu_fused(b.mm(up, cur)),
        };
        b.mm(self.down, hidden)
    }
}
