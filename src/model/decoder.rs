//! The pre-norm decoder most architectures share: RMSNorm, rotary attention
//! with GQA, SwiGLU feed-forward. Architecture files pick the options; the
//! layout of projections and biases follows the tensors in the file.

use super::builders::{Act, Blk, Builder, Ends, Ffn, SelfAttn};
use super::weights::Tensors;
use super::{Architecture, ForwardInputs, Hparams, Weights};
use crate::compute::Step;
use crate::ggml::{Tensor, TensorId};

/// What differs between the architectures built on this decoder.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Q and K are RMS-normed per head before rotation (Qwen3).
    pub qk_norm: bool,
    /// Q is scaled by 1/sqrt(head_dim) before attention, which then uses
    /// scale 1 (Phi-3; the same rounding as llama.cpp).
    pub prescale_q: bool,
}

/// One pre-norm layer: x += attn(norm(x)); x += ffn(norm(x)).
pub struct Layer {
    pub attn_norm: TensorId,
    pub attn: SelfAttn,
    pub ffn_norm: TensorId,
    pub ffn: Ffn,
}

pub struct Decoder {
    pub ends: Ends,
    pub layers: Vec<Layer>,
}

impl Decoder {
    pub fn new(hp: &Hparams, w: Tensors<'_>, opt: Options) -> anyhow::Result<Self> {
        let layer = |il| -> anyhow::Result<Layer> {
            let blk = Blk::new(w, hp, il);
            let mut attn = SelfAttn::load(w, hp, il, opt.qk_norm)?;
            if opt.prescale_q {
                attn.prescale_q(1.0 / (hp.head_dim as f32).sqrt());
            }
            Ok(Layer {
                attn_norm: blk.norm("attn_norm")?,
                attn,
                ffn_norm: blk.norm("ffn_norm")?,
                ffn: Ffn::load(w, hp, il, Act::Silu)?,
            })
        };
        Ok(Self {
            ends: Ends::load(hp, w)?,
            layers: (0..hp.n_layer).map(layer).collect::<anyhow::Result<_>>()?,
        })
    }
}

impl Architecture for Decoder {
    fn forward<'a>(
        &self,
        hp: &Hparams,
        w: &'a Weights,
        step: &mut Step<'a>,
        inp: &ForwardInputs<'a, '_>,
    ) -> Tensor<'a> {
        let b = Builder::new(hp, w, step, inp);
        let mut x = self.ends.embed(&b);
        for (il, l) in self.layers.iter().enumerate() {
            let (attn, residual) = l.attn.build(&b, step, il, b.norm(x, l.attn_norm), x);
            x = b.g.add(residual, attn);
            x = b.g.add(x, l.ffn.build(&b, b.norm(x, l.ffn_norm)));
        }
        self.ends.logits(&b, x)
    }
}
