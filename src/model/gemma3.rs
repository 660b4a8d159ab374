//! Gemma 3: embeddings scaled by sqrt(n_embd), RMSNorm before and after
//! attention and feed-forward (the GGUF norm weights already hold Gemma's
//! 1 + w), per-head Q/K norms, GELU-gated feed-forward, Q pre-scaled, and
//! sliding-window layers (5 of every 6 by default) with their own rope base.
//! Only the global layers attend the whole past; under InfLLM they are the
//! ones with memory blocks.

use super::decoder::last_row;
use super::{ArchSpec, Architecture, ForwardInputs, Hparams, Weights};
use crate::attention::{LayerAttn, LayerQkv};
use crate::compute::Step;
use crate::ggml::{RopeParams, Tensor, TensorId};

pub const SPEC: ArchSpec = ArchSpec {
    names: &["gemma3"],
    neox: true,
    load: |hp, w| Ok(Box::new(Gemma3::new(hp, w)?)),
};

struct Layer {
    attn_norm: TensorId,
    wq: TensorId,
    wk: TensorId,
    wv: TensorId,
    q_norm: TensorId,
    k_norm: TensorId,
    wo: TensorId,
    attn_post_norm: TensorId,
    ffn_norm: TensorId,
    ffn_gate: TensorId,
    ffn_up: TensorId,
    ffn_down: TensorId,
    ffn_post_norm: TensorId,
    attn: LayerAttn,
}

pub struct Gemma3 {
    tok_embd: TensorId,
    output_norm: TensorId,
    output: TensorId,
    layers: Vec<Layer>,
    q_scale: f32,
    final_softcap: f32,
}

impl Gemma3 {
    fn new(hp: &mut Hparams, w: &Weights) -> anyhow::Result<Self> {
        let f = &w.file;
        let key = |k: &str| format!("gemma3.{k}");
        let window = match f.get(&key("attention.sliding_window")) {
            Some(_) => f.get_u32(&key("attention.sliding_window"))? as usize,
            None => 0,
        };
        if window > 0 {
            let pattern = match f.get(&key("attention.sliding_window_pattern")) {
                Some(v) if v.as_array().is_some() => {
                    let a = f.get_array(&key("attention.sliding_window_pattern"))?;
                    anyhow::ensure!(a.len() == hp.n_layer, "sliding_window_pattern has {} entries", a.len());
                    a.iter().map(|v| v.as_bool().unwrap_or(false)).collect::<Vec<_>>()
                }
                Some(_) => every_nth_global(hp.n_layer, f.get_u32(&key("attention.sliding_window_pattern"))?),
                None => every_nth_global(hp.n_layer, 6),
            };
            hp.layer_window = pattern.iter().map(|&swa| if swa { window } else { 0 }).collect();
        }
        let swa_rope = RopeParams {
            freq_base: f.get_f32(&key("rope.freq_base_swa")).unwrap_or(10_000.0),
            freq_scale: 1.0,
            ..hp.rope
        };

        let (e, q, kv, ff, nv, hd) = (
            hp.n_embd as u64,
            hp.n_embd_q() as u64,
            hp.n_embd_kv() as u64,
            hp.n_ff as u64,
            hp.n_vocab as u64,
            hp.head_dim as u64,
        );
        let tok_embd = w.require("token_embd.weight", &[e, nv])?;
        let layers = (0..hp.n_layer)
            .map(|i| {
                let n = |s: &str| format!("blk.{i}.{s}");
                Ok(Layer {
                    attn_norm: w.require(&n("attn_norm.weight"), &[e])?,
                    wq: w.require(&n("attn_q.weight"), &[e, q])?,
                    wk: w.require(&n("attn_k.weight"), &[e, kv])?,
                    wv: w.require(&n("attn_v.weight"), &[e, kv])?,
                    q_norm: w.require(&n("attn_q_norm.weight"), &[hd])?,
                    k_norm: w.require(&n("attn_k_norm.weight"), &[hd])?,
                    wo: w.require(&n("attn_output.weight"), &[q, e])?,
                    attn_post_norm: w.require(&n("post_attention_norm.weight"), &[e])?,
                    ffn_norm: w.require(&n("ffn_norm.weight"), &[e])?,
                    ffn_gate: w.require(&n("ffn_gate.weight"), &[e, ff])?,
                    ffn_up: w.require(&n("ffn_up.weight"), &[e, ff])?,
                    ffn_down: w.require(&n("ffn_down.weight"), &[ff, e])?,
                    ffn_post_norm: w.require(&n("post_ffw_norm.weight"), &[e])?,
                    attn: LayerAttn {
                        rope: if hp.layer_window[i] > 0 { swa_rope } else { hp.rope },
                        scale: 1.0,
                        softcap: 0.0,
                    },
                })
            })
            .collect::<anyhow::Result<_>>()?;
        // Gemma 3 27B scales by n_embd / n_head instead of the head size (as llama.cpp).
        let scale_dim = if hp.n_layer == 62 {
            hp.n_embd / hp.n_head
        } else {
            hp.head_dim
        };
        Ok(Self {
            tok_embd,
            output_norm: w.require("output_norm.weight", &[e])?,
            output: w.optional("output.weight", &[e, nv])?.unwrap_or(tok_embd),
            layers,
            q_scale: 1.0 / (scale_dim as f32).sqrt(),
            final_softcap: f.get_f32(&key("final_logit_softcapping")).unwrap_or(0.0),
        })
    }
}

/// Sliding-window flags: every `n`-th layer (the last of each group) is global.
fn every_nth_global(n_layer: usize, n: u32) -> Vec<bool> {
    let n = n as usize;
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
        let g = step.ctx;
        let t = |id| w.get(id);
        let n_tokens = inp.tokens.ne()[0];
        let norm = |x: Tensor<'a>, weight: TensorId| g.mul(g.rms_norm(x, hp.rms_eps), t(weight));
        let (hd, nh, nkv) = (hp.head_dim as i64, hp.n_head as i64, hp.n_head_kv as i64);

        let mut x = g.scale(g.get_rows(t(self.tok_embd), inp.tokens), (hp.n_embd as f32).sqrt());
        for (il, l) in self.layers.iter().enumerate() {
            let cur = norm(x, l.attn_norm);
            let q = norm(g.reshape(g.mul_mat(t(l.wq), cur), &[hd, nh, n_tokens]), l.q_norm);
            let k = norm(g.reshape(g.mul_mat(t(l.wk), cur), &[hd, nkv, n_tokens]), l.k_norm);
            let v = g.reshape(g.mul_mat(t(l.wv), cur), &[hd, nkv, n_tokens]);
            let qkv = LayerQkv {
                layer: il,
                q: g.scale(q, self.q_scale),
                k,
                v,
                freq_factors: None,
            };
            let mut attn = inp.attend(step, qkv, &l.attn);
            let mut residual = x;
            if il + 1 == self.layers.len() && inp.last_only && n_tokens > 1 {
                attn = last_row(step, attn);
                residual = last_row(step, x);
            }
            let sa = g.add(norm(g.mul_mat(t(l.wo), attn), l.attn_post_norm), residual);
            let cur = norm(sa, l.ffn_norm);
            let ffn = g.geglu(g.mul_mat(t(l.ffn_gate), cur), g.mul_mat(t(l.ffn_up), cur));
            x = g.add(norm(g.mul_mat(t(l.ffn_down), ffn), l.ffn_post_norm), sa);
        }
        let logits = g.mul_mat(t(self.output), norm(x, self.output_norm));
        match self.final_softcap {
            c if c > 0.0 => g.scale(g.tanh(g.scale(logits, 1.0 / c)), c),
            _ => logits,
        }
    }
}
