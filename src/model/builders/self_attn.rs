//! Self-attention: projections, optional Q/K norms, the engine's attention
//! (full KV cache or InfLLM), the output projection.

use super::{last_row, Blk, Builder, Dims, Role};
use crate::attention::{LayerAttn, LayerQkv};
use crate::compute::Step;
use crate::ggml::{Tensor, TensorId};
use crate::model::weights::Tensors;
use crate::model::Hparams;

#[derive(Clone, Copy)]
enum Projection {
    Separate { q: TensorId, k: TensorId, v: TensorId },
    Fused(TensorId),
}

/// Self-attention: Q/K/V projections (fused or separate, optional biases),
/// optional per-head Q/K norms, the attention, the output projection.
pub struct SelfAttn {
    qkv: Projection,
    /// Biases: fused [q | k | v] or separate (each optional).
    qkv_bias: Option<TensorId>,
    bq: Option<TensorId>,
    bk: Option<TensorId>,
    bv: Option<TensorId>,
    q_norm: Option<TensorId>,
    k_norm: Option<TensorId>,
    wo: TensorId,
    /// Llama 3 rotary frequency factors (`rope_freqs.weight`), if any.
    freq_factors: Option<TensorId>,
    /// Rotary parameters, Q·K scale and softcap the attention uses.
    pub params: LayerAttn,
    /// Q is multiplied by this before attention (see [`SelfAttn::prescale_q`]).
    q_scale: Option<f32>,
}

impl SelfAttn {
    /// Loads layer `il`'s attention; `qk_norm`: per-head Q and K norms are
    /// required (Qwen3, Gemma 3). Scale 1/sqrt(head_dim), the model's rope.
    pub fn load(w: Tensors<'_>, hp: &Hparams, il: usize, qk_norm: bool) -> anyhow::Result<Self> {
        let blk = Blk::new(w, hp, il);
        let Dims {
            embd: e, q, kv, head, ..
        } = Dims::of(hp);
        let qkv = match blk.optional("attn_qkv.weight", Role::Matrix, &[e, q + 2 * kv])? {
            Some(t) => Projection::Fused(t),
            None => Projection::Separate {
                q: blk.matrix("attn_q.weight", &[e, q])?,
                k: blk.matrix("attn_k.weight", &[e, kv])?,
                v: blk.matrix("attn_v.weight", &[e, kv])?,
            },
        };
        let head_norm = |s: &str| qk_norm.then(|| blk.require(s, Role::F32, &[head])).transpose();
        let bias = |s: &str, n: u64| blk.optional(s, Role::F32, &[n]);
        Ok(Self {
            qkv,
            qkv_bias: bias("attn_qkv.bias", q + 2 * kv)?,
            bq: bias("attn_q.bias", q)?,
            bk: bias("attn_k.bias", kv)?,
            bv: bias("attn_v.bias", kv)?,
            q_norm: head_norm("attn_q_norm.weight")?,
            k_norm: head_norm("attn_k_norm.weight")?,
            wo: blk.matrix("attn_output.weight", &[q, e])?,
            freq_factors: w.optional("rope_freqs.weight", Role::F32, &[hp.rope.n_dims as u64 / 2])?,
            params: LayerAttn {
                rope: hp.rope,
                scale: 1.0 / (hp.head_dim as f32).sqrt(),
                softcap: 0.0,
            },
            q_scale: None,
        })
    }

    /// Scales Q by `s` before attention, which then multiplies Q·K by 1
    /// (Phi-3, Gemma 3: the same rounding as llama.cpp).
    pub fn prescale_q(&mut self, s: f32) {
        self.q_scale = Some(s);
        self.params.scale = 1.0;
    }

    /// Attention of layer `il` over its normed input `cur`, through the
    /// output projection. Returns it with `residual`; on the last layer, when
    /// only the last token's logits are wanted, both keep only that row.
    pub fn build<'a>(
        &self,
        b: &Builder<'a, '_>,
        step: &mut Step<'a>,
        il: usize,
        cur: Tensor<'a>,
        residual: Tensor<'a>,
    ) -> (Tensor<'a>, Tensor<'a>) {
        let (g, hp) = (b.g, b.hp);
        let (q, k, v) = self.project(b, cur);
        let (hd, nt) = (hp.head_dim as i64, b.n_tokens);
        let mut q = g.reshape(q, &[hd, hp.n_head as i64, nt]);
        let mut k = g.reshape(k, &[hd, hp.n_head_kv as i64, nt]);
        let v = g.reshape(v, &[hd, hp.n_head_kv as i64, nt]);
        if let (Some(qn), Some(kn)) = (self.q_norm, self.k_norm) {
            q = b.norm(q, qn);
            k = b.norm(k, kn);
        }
        if let Some(s) = self.q_scale {
            q = g.scale(q, s);
        }
        let qkv = LayerQkv {
            layer: il,
            q,
            k,
            v,
            freq_factors: self.freq_factors.map(|f| b.t(f)),
        };
        let mut attn = b.inp.attend(step, qkv, &self.params);
        let mut residual = residual;
        if b.last_row_only(il) {
            // The other rows feed nothing: skip them from here on.
            attn = last_row(g, attn);
            residual = last_row(g, residual);
        }
        (b.mm(self.wo, attn), residual)
    }

    /// Q, K and V [width, n_tokens], biases added.
    fn project<'a>(&self, b: &Builder<'a, '_>, cur: Tensor<'a>) -> (Tensor<'a>, Tensor<'a>, Tensor<'a>) {
        match self.qkv {
            Projection::Separate { q, k, v } => (
                b.bias(b.mm(q, cur), self.bq),
                b.bias(b.mm(k, cur), self.bk),
                b.bias(b.mm(v, cur), self.bv),
            ),
            Projection::Fused(wqkv) => {
                let all = b.bias(b.mm(wqkv, cur), self.qkv_bias);
                let (eq, ekv) = (b.hp.n_embd_q(), b.hp.n_embd_kv());
                let rows = |n: usize, off: usize| {
                    b.g.cont(b.g.view(all, &[n as i64, b.n_tokens], &[all.nb()[1]], off * 4))
                };
                (
                    b.bias(rows(eq, 0), self.bq),
                    b.bias(rows(ekv, eq), self.bk),
                    b.bias(rows(ekv, eq + ekv), self.bv),
                )
            }
        }
    }
}
