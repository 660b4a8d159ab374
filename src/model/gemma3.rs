//! Gemma 3: embeddings scaled by sqrt(n_embd), RMSNorm before and after
//! attention and feed-forward (the GGUF norm weights already hold Gemma's
//! 1 + w), per-head Q/K norms, GELU-gated feed-forward, Q pre-scaled, and
//! sliding-window layers (5 of every 6 by default) with their own rope base.
//! Only the global layers attend the whole past; under InfLLM they are the
//! ones with memory blocks.

use anyhow::{ensure, Context as _};

use super::builders::{Act, Blk, Builder, Ends, Ffn, SelfAttn};
use super::meta::{Meta, Sign};
use super::weights::Tensors;
use super::{ArchSpec, Architecture, ForwardInputs, Hparams, Weights};
use crate::compute::Step;
use crate::ggml::{RopeParams, Tensor, TensorId};
use crate::gguf::Value;

pub const SPEC: ArchSpec = ArchSpec {
    names: &["gemma3"],
    neox: true,
    load: |hp, w| Ok(Box::new(Gemma3::new(hp, w)?)),
};

struct Layer {
    attn_norm: TensorId,
    attn: SelfAttn,
    attn_post_norm: TensorId,
    ffn_norm: TensorId,
    ffn: Ffn,
    ffn_post_norm: TensorId,
}

struct Gemma3 {
    ends: Ends,
    layers: Vec<Layer>,
    final_softcap: f32,
}

impl Gemma3 {
    fn new(hp: &mut Hparams, w: Tensors<'_>) -> anyhow::Result<Self> {
        let m = Meta::new(w.file)?;
        hp.layer_window = layer_windows(m, hp)?;
        let swa_rope = RopeParams {
            freq_base: m.f32_or("rope.freq_base_swa", 10_000.0, Sign::Positive)?,
            freq_scale: 1.0,
            ..hp.rope
        };
        // Gemma 3 27B scales by n_embd / n_head instead of the head size (as llama.cpp).
        let scale_dim = if hp.n_layer == 62 {
            hp.n_embd / hp.n_head
        } else {
            hp.head_dim
        };
        let hp = &*hp;
        let layer = |il| -> anyhow::Result<Layer> {
            let blk = Blk::new(w, hp, il);
            let mut attn = SelfAttn::load(w, hp, il, true)?;
            attn.prescale_q(1.0 / (scale_dim as f32).sqrt());
            if hp.layer_window[il] > 0 {
                attn.params.rope = swa_rope;
            }
            Ok(Layer {
                attn_norm: blk.norm("attn_norm")?,
                attn,
                attn_post_norm: blk.norm("post_attention_norm")?,
                ffn_norm: blk.norm("ffn_norm")?,
                ffn: Ffn::load(w, hp, il, Act::Gelu)?,
                ffn_post_norm: blk.norm("post_ffw_norm")?,
            })
        };
        Ok(Self {
            ends: Ends::load(hp, w)?,
            layers: (0..hp.n_layer).map(layer).collect::<anyhow::Result<_>>()?,
            final_softcap: m.f32_or("final_logit_softcapping", 0.0, Sign::NonNegative)?,
        })
    }
}

/// Each layer's sliding window (0: global) from `attention.sliding_window`
/// (at most the trained context) and `attention.sliding_window_pattern`
/// (per-layer flags, or n: every n-th layer is global; 6 when absent).
fn layer_windows(m: Meta, hp: &Hparams) -> anyhow::Result<Vec<usize>> {
    let n_layer = hp.n_layer;
    let window = m.usize_or("attention.sliding_window", 0)?;
    if window == 0 {
        return Ok(vec![0; n_layer]);
    }
    ensure!(
        window <= hp.n_ctx_train,
        "{} is {window}: above the trained context of {} tokens",
        m.key("attention.sliding_window"),
        hp.n_ctx_train
    );
    let key = "attention.sliding_window_pattern";
    let swa: Vec<bool> = match m.get(key) {
        Some(v) if v.as_array().is_some() => {
            let a = m.file.get_array(&m.key(key))?;
            ensure!(
                a.len() == n_layer,
                "{} has {} entries for {n_layer} layers",
                m.key(key),
                a.len()
            );
            let flag = |(i, v): (usize, &Value)| {
                v.as_bool()
                    .with_context(|| format!("{}[{i}] is not a bool", m.key(key)))
            };
            a.iter().enumerate().map(flag).collect::<anyhow::Result<_>>()?
        }
        _ => every_nth_global(n_layer, m.usize_or(key, 6)?),
    };
    Ok(swa.iter().map(|&swa| if swa { window } else { 0 }).collect())
}

/// Sliding-window flags: every `n`-th layer (the last of each group) is global.
fn every_nth_global(n_layer: usize, n: usize) -> Vec<bool> {
    (0..n_layer).map(|il| n == 0 || il % n < n - 1).collect()
}

impl Architecture for Gemma3 {
    fn forward<'a>(
        &self,
        hp: &Hparams,
        w: &'a Weights,
        step: &mut Step<'a>,
        inp: &ForwardInputs<'a, '_>,
    ) -> Tensor<'a> {
        let b = Builder::new(hp, w, step, inp);
        let g = b.g;
        let mut x = g.scale(self.ends.embed(&b), (hp.n_embd as f32).sqrt());
        for (il, l) in self.layers.iter().enumerate() {
            let (attn, residual) = l.attn.build(&b, step, il, b.norm(x, l.attn_norm), x);
            let sa = g.add(b.norm(attn, l.attn_post_norm), residual);
            let ffn = l.ffn.build(&b, b.norm(sa, l.ffn_norm));
            x = g.add(b.norm(ffn, l.ffn_post_norm), sa);
        }
        b.softcap(self.ends.logits(&b, x), self.final_softcap)
    }
}
