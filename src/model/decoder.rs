//! The pre-norm decoder most architectures share: RMSNorm, rotary attention
//! with GQA, SwiGLU feed-forward. Architecture files pick the options;
//! fused or separate projections and biases follow the tensors present in
//! the file, as llama.cpp loads them.

use super::{Architecture, ForwardInputs, Hparams, Weights};
use crate::attention::{LayerAttn, LayerQkv};
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

enum Projection {
    Separate { q: TensorId, k: TensorId, v: TensorId },
    Fused(TensorId),
}

enum FeedForward {
    Gated {
        gate: TensorId,
        up: TensorId,
    },
    /// Gate and up stacked in one matrix [n_embd, 2 * n_ff] (Phi-3).
    Fused(TensorId),
}

struct Layer {
    attn_norm: TensorId,
    qkv: Projection,
    /// Biases: fused [q | k | v] or separate (each optional).
    qkv_bias: Option<TensorId>,
    bq: Option<TensorId>,
    bk: Option<TensorId>,
    bv: Option<TensorId>,
    q_norm: Option<TensorId>,
    k_norm: Option<TensorId>,
    wo: TensorId,
    ffn_norm: TensorId,
    ffn: FeedForward,
    ffn_down: TensorId,
}

pub struct Decoder {
    tok_embd: TensorId,
    output_norm: TensorId,
    output: TensorId,
    output_bias: Option<TensorId>,
    rope_freqs: Option<TensorId>,
    layers: Vec<Layer>,
    attn: LayerAttn,
    q_scale: Option<f32>,
}

impl Decoder {
    pub fn new(hp: &Hparams, w: &Weights, opt: Options) -> anyhow::Result<Self> {
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
                let fused = w.optional(&n("attn_qkv.weight"), &[e, q + 2 * kv])?;
                let qkv = match fused {
                    Some(t) => Projection::Fused(t),
                    None => Projection::Separate {
                        q: w.require(&n("attn_q.weight"), &[e, q])?,
                        k: w.require(&n("attn_k.weight"), &[e, kv])?,
                        v: w.require(&n("attn_v.weight"), &[e, kv])?,
                    },
                };
                let ffn = match w.optional(&n("ffn_gate.weight"), &[e, ff])? {
                    Some(gate) => FeedForward::Gated {
                        gate,
                        up: w.require(&n("ffn_up.weight"), &[e, ff])?,
                    },
                    None => FeedForward::Fused(w.require(&n("ffn_up.weight"), &[e, 2 * ff])?),
                };
                let qk_norm = |s: &str| -> anyhow::Result<Option<TensorId>> {
                    opt.qk_norm.then(|| w.require(&n(s), &[hd])).transpose()
                };
                Ok(Layer {
                    attn_norm: w.require(&n("attn_norm.weight"), &[e])?,
                    qkv,
                    qkv_bias: w.optional(&n("attn_qkv.bias"), &[q + 2 * kv])?,
                    bq: w.optional(&n("attn_q.bias"), &[q])?,
                    bk: w.optional(&n("attn_k.bias"), &[kv])?,
                    bv: w.optional(&n("attn_v.bias"), &[kv])?,
                    q_norm: qk_norm("attn_q_norm.weight")?,
                    k_norm: qk_norm("attn_k_norm.weight")?,
                    wo: w.require(&n("attn_output.weight"), &[q, e])?,
                    ffn_norm: w.require(&n("ffn_norm.weight"), &[e])?,
                    ffn,
                    ffn_down: w.require(&n("ffn_down.weight"), &[ff, e])?,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let scale = 1.0 / (hp.head_dim as f32).sqrt();
        Ok(Self {
            tok_embd,
            output_norm: w.require("output_norm.weight", &[e])?,
            output: w.optional("output.weight", &[e, nv])?.unwrap_or(tok_embd),
            output_bias: w.optional("output.bias", &[nv])?,
            rope_freqs: w.optional("rope_freqs.weight", &[hp.rope.n_dims as u64 / 2])?,
            layers,
            attn: LayerAttn {
                rope: hp.rope,
                scale: if opt.prescale_q { 1.0 } else { scale },
                softcap: 0.0,
            },
            q_scale: opt.prescale_q.then_some(scale),
        })
    }
}

impl Architecture for Decoder {
    /// Logits [n_vocab, n_out] of the step's tokens (all, or the last one).
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
        let add_bias = |x: Tensor<'a>, b: Option<TensorId>| b.map_or(x, |b| g.add(x, w.get(b)));
        let norm = |x: Tensor<'a>, weight: TensorId| g.mul(g.rms_norm(x, hp.rms_eps), t(weight));
        let (hd, nh, nkv) = (hp.head_dim as i64, hp.n_head as i64, hp.n_head_kv as i64);

        let mut x = g.get_rows(t(self.tok_embd), inp.tokens);
        for (il, l) in self.layers.iter().enumerate() {
            let cur = norm(x, l.attn_norm);
            let (q, k, v) = match l.qkv {
                Projection::Separate { q, k, v } => (
                    add_bias(g.mul_mat(t(q), cur), l.bq),
                    add_bias(g.mul_mat(t(k), cur), l.bk),
                    add_bias(g.mul_mat(t(v), cur), l.bv),
                ),
                Projection::Fused(wqkv) => {
                    let all = add_bias(g.mul_mat(t(wqkv), cur), l.qkv_bias);
                    let (eq, ekv) = (hp.n_embd_q(), hp.n_embd_kv());
                    let rows =
                        |n: usize, off: usize| g.cont(g.view(all, &[n as i64, n_tokens], &[all.nb()[1]], off * 4));
                    (
                        add_bias(rows(eq, 0), l.bq),
                        add_bias(rows(ekv, eq), l.bk),
                        add_bias(rows(ekv, eq + ekv), l.bv),
                    )
                }
            };
            let mut q = g.reshape(q, &[hd, nh, n_tokens]);
            let mut k = g.reshape(k, &[hd, nkv, n_tokens]);
            let v = g.reshape(v, &[hd, nkv, n_tokens]);
            if let (Some(qn), Some(kn)) = (l.q_norm, l.k_norm) {
                q = norm(q, qn);
                k = norm(k, kn);
            }
            if let Some(s) = self.q_scale {
                q = g.scale(q, s);
            }
            let qkv = LayerQkv {
                layer: il,
                q,
                k,
                v,
                freq_factors: self.rope_freqs.map(t),
            };
            let mut attn = inp.attend(step, qkv, &self.attn);
            let mut residual = x;
            if il + 1 == self.layers.len() && inp.last_only && n_tokens > 1 {
                // Only the last token's logits are needed: skip the other rows.
                attn = last_row(step, attn);
                residual = last_row(step, x);
            }
            x = g.add(residual, g.mul_mat(t(l.wo), attn));
            let cur = norm(x, l.ffn_norm);
            let ffn = match l.ffn {
                FeedForward::Gated { gate, up } => g.swiglu(g.mul_mat(t(gate), cur), g.mul_mat(t(up), cur)),
                FeedForward::Fused(up) => g.swiglu_fused(g.mul_mat(t(up), cur)),
            };
            x = g.add(x, g.mul_mat(t(l.ffn_down), ffn));
        }
        let x = norm(x, self.output_norm);
        add_bias(g.mul_mat(t(self.output), x), self.output_bias)
    }
}

pub(super) fn last_row<'a>(step: &Step<'a>, x: Tensor<'a>) -> Tensor<'a> {
    let [n0, n1, ..] = x.ne();
    let nb1 = x.nb()[1];
    step.ctx.view(x, &[n0, 1], &[nb1], nb1 * (n1 as usize - 1))
}
