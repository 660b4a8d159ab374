//! Llama (Llama 2/3, Mistral, SmolLM2, ...): RMSNorm, rotary attention with
//! GQA, SwiGLU feed-forward, tied or separate output matrix.

use super::{ForwardInputs, Hparams, Weights};
use crate::attention::{LayerAttn, LayerQkv};
use crate::compute::Step;
use crate::ggml::{Tensor, TensorId};

struct Layer {
    attn_norm: TensorId,
    wq: TensorId,
    wk: TensorId,
    wv: TensorId,
    wo: TensorId,
    bq: Option<TensorId>,
    bk: Option<TensorId>,
    bv: Option<TensorId>,
    ffn_norm: TensorId,
    ffn_gate: TensorId,
    ffn_up: TensorId,
    ffn_down: TensorId,
}

pub struct Llama {
    tok_embd: TensorId,
    output_norm: TensorId,
    output: TensorId,
    rope_freqs: Option<TensorId>,
    layers: Vec<Layer>,
    attn: LayerAttn,
}

impl Llama {
    pub fn new(hp: &Hparams, w: &Weights) -> anyhow::Result<Self> {
        let (e, q, kv, ff, nv) = (
            hp.n_embd as u64,
            hp.n_embd_q() as u64,
            hp.n_embd_kv() as u64,
            hp.n_ff as u64,
            hp.n_vocab as u64,
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
                    wo: w.require(&n("attn_output.weight"), &[q, e])?,
                    bq: w.optional(&n("attn_q.bias"), &[q])?,
                    bk: w.optional(&n("attn_k.bias"), &[kv])?,
                    bv: w.optional(&n("attn_v.bias"), &[kv])?,
                    ffn_norm: w.require(&n("ffn_norm.weight"), &[e])?,
                    ffn_gate: w.require(&n("ffn_gate.weight"), &[e, ff])?,
                    ffn_up: w.require(&n("ffn_up.weight"), &[e, ff])?,
                    ffn_down: w.require(&n("ffn_down.weight"), &[ff, e])?,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            tok_embd,
            output_norm: w.require("output_norm.weight", &[e])?,
            output: w.optional("output.weight", &[e, nv])?.unwrap_or(tok_embd),
            rope_freqs: w.optional("rope_freqs.weight", &[hp.rope.n_dims as u64 / 2])?,
            layers,
            attn: LayerAttn {
                rope: hp.rope,
                scale: 1.0 / (hp.head_dim as f32).sqrt(),
                softcap: 0.0,
            },
        })
    }

    /// Logits [n_vocab, n_out] of the step's tokens (all, or the last one).
    pub fn forward<'a>(
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
        let rope_freqs = self.rope_freqs.map(t);

        let mut x = g.get_rows(t(self.tok_embd), inp.tokens);
        for (il, l) in self.layers.iter().enumerate() {
            let cur = g.mul(g.rms_norm(x, hp.rms_eps), t(l.attn_norm));
            let q = add_bias(g.mul_mat(t(l.wq), cur), l.bq);
            let k = add_bias(g.mul_mat(t(l.wk), cur), l.bk);
            let v = add_bias(g.mul_mat(t(l.wv), cur), l.bv);
            let q = g.reshape(q, &[hp.head_dim as i64, hp.n_head as i64, n_tokens]);
            let k = g.reshape(k, &[hp.head_dim as i64, hp.n_head_kv as i64, n_tokens]);
            let v = g.reshape(v, &[hp.head_dim as i64, hp.n_head_kv as i64, n_tokens]);
            let qkv = LayerQkv {
                layer: il,
                q,
                k,
                v,
                freq_factors: rope_freqs,
            };
            let mut attn = inp.attend(step, qkv, &self.attn);
            let mut residual = x;
            if il + 1 == self.layers.len() && inp.last_only && n_tokens > 1 {
                // Only the last token's logits are needed: skip the other rows.
                attn = last_row(step, attn);
                residual = last_row(step, x);
            }
            x = g.add(residual, g.mul_mat(t(l.wo), attn));
            let cur = g.mul(g.rms_norm(x, hp.rms_eps), t(l.ffn_norm));
            let ffn = g.swiglu(g.mul_mat(t(l.ffn_gate), cur), g.mul_mat(t(l.ffn_up), cur));
            x = g.add(x, g.mul_mat(t(l.ffn_down), ffn));
        }
        let x = g.mul(g.rms_norm(x, hp.rms_eps), t(self.output_norm));
        g.mul_mat(t(self.output), x)
    }
}

fn last_row<'a>(step: &Step<'a>, x: Tensor<'a>) -> Tensor<'a> {
    let [n0, n1, ..] = x.ne();
    let nb1 = x.nb()[1];
    step.ctx.view(x, &[n0, 1], &[nb1], nb1 * (n1 as usize - 1))
}
