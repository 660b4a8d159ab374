//! IBM Granite 3.x (dense): the Llama layout and tensors, with four scalars
//! from the metadata: embeddings times `embedding_scale`, each block's output
//! times `residual_scale` before it joins the residual, Q·K times
//! `attention.scale`, logits divided by `logit_scale`.

use super::builders::Builder;
use super::decoder::{Decoder, Options};
use super::meta::{Meta, Sign};
use super::weights::Tensors;
use super::{ArchSpec, Architecture, ForwardInputs, Hparams, Weights};
use crate::compute::Step;
use crate::ggml::Tensor;

pub const SPEC: ArchSpec = ArchSpec {
    names: &["granite"],
    neox: false,
    load: |hp, w| Ok(Box::new(Granite::new(hp, w)?)),
};

/// Experts, and the optional biases llama.cpp would add: not implemented.
const UNSUPPORTED_TENSORS: [&str; 5] = [
    "ffn_gate_inp.weight",
    "attn_output.bias",
    "ffn_up.bias",
    "ffn_gate.bias",
    "ffn_down.bias",
];

struct Granite {
    decoder: Decoder,
    /// 0 leaves the embeddings or block outputs unscaled (as llama.cpp).
    embedding_scale: f32,
    residual_scale: f32,
    logit_scale: f32,
}

impl Granite {
    fn new(hp: &mut Hparams, w: Tensors<'_>) -> anyhow::Result<Self> {
        let m = Meta::new(w.file)?;
        anyhow::ensure!(
            m.bool_or("rope.scaling.finetuned", true)?,
            "granite without rope is not supported"
        );
        anyhow::ensure!(
            m.get("deepstack_mapping").is_none(),
            "granite vision files are not supported"
        );
        for t in UNSUPPORTED_TENSORS {
            anyhow::ensure!(
                w.info(&format!("blk.0.{t}")).is_none(),
                "granite with {t} is not supported"
            );
        }
        let mut decoder = Decoder::new(hp, w, Options::default())?;
        let attention_scale = m.f32_or("attention.scale", 0.0, Sign::NonNegative)?;
        if attention_scale != 0.0 {
            for l in &mut decoder.layers {
                l.attn.params.scale = attention_scale;
            }
        }
        let logit_scale = m.f32("logit_scale", Sign::Positive)?;
        Ok(Self {
            decoder,
            embedding_scale: m.f32_or("embedding_scale", 0.0, Sign::NonNegative)?,
            residual_scale: m.f32_or("residual_scale", 0.0, Sign::NonNegative)?,
            logit_scale,
        })
    }
}

impl Architecture for Granite {
    fn forward<'a>(
        &self,
        hp: &Hparams,
        w: &'a Weights,
        step: &mut Step<'a>,
        inp: &ForwardInputs<'a, '_>,
    ) -> Tensor<'a> {
        let b = Builder::new(hp, w, step, inp);
        let g = b.g;
        let scaled = |x: Tensor<'a>, s: f32| if s != 0.0 { g.scale(x, s) } else { x };
        let mut x = scaled(self.decoder.ends.embed(&b), self.embedding_scale);
        for (il, l) in self.decoder.layers.iter().enumerate() {
            let (attn, residual) = l.attn.build(&b, step, il, b.norm(x, l.attn_norm), x);
            x = g.add(residual, scaled(attn, self.residual_scale));
            let ffn = l.ffn.build(&b, b.norm(x, l.ffn_norm));
            x = g.add(x, scaled(ffn, self.residual_scale));
        }
        g.scale(self.decoder.ends.logits(&b, x), 1.0 / self.logit_scale)
    }
}
