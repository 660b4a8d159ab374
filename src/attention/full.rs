//! Standard causal attention over an f16 KV cache of fixed size `-c`, with
//! ggml's fused flash-attention kernel (llama.cpp's default on CPU).

use half::f16;

use super::{AttentionError, LayerAttn};
use crate::compute::Step;
use crate::ggml::{Buffer, Context, Tensor, TensorId, TYPE_F16};

/// llama.cpp pads the attended KV length to 256 cells; so do we, which also
/// keeps the graph shape stable for 256 decode steps.
const KV_PAD: usize = 256;

pub struct FullAttention {
    _buffer: Buffer,
    ctx: Context,
    k: Vec<TensorId>,
    v: Vec<TensorId>,
    n_ctx: usize,
    n_embd_kv: usize,
    head_dim: usize,
    n_past: usize,
}

/// Per-step inputs shared by all layers.
pub struct FullInputs<'a> {
    pos: Tensor<'a>,
    mask: Tensor<'a>,
    rows: Tensor<'a>,
    n_kv: usize,
}

impl FullAttention {
    /// A cache for `n_ctx` tokens (rounded up to the padding) over `n_layer` layers.
    pub fn new(
        n_layer: usize,
        n_ctx: usize,
        head_dim: usize,
        n_head_kv: usize,
    ) -> anyhow::Result<Self> {
        let n_ctx = n_ctx.max(1).next_multiple_of(KV_PAD);
        let n_embd_kv = head_dim * n_head_kv;
        let ctx = Context::new(2 * n_layer, 0);
        let mut k = Vec::with_capacity(n_layer);
        let mut v = Vec::with_capacity(n_layer);
        for il in 0..n_layer {
            let kt = ctx
                .new_tensor(TYPE_F16, &[n_embd_kv as i64, n_ctx as i64])
                .set_name(&format!("cache_k_l{il}"));
            let vt = ctx
                .new_tensor(TYPE_F16, &[n_embd_kv as i64, n_ctx as i64])
                .set_name(&format!("cache_v_l{il}"));
            k.push(ctx.id(kt));
            v.push(ctx.id(vt));
        }
        let buffer = Buffer::alloc_context(&ctx)?;
        Ok(Self {
            _buffer: buffer,
            ctx,
            k,
            v,
            n_ctx,
            n_embd_kv,
            head_dim,
            n_past: 0,
        })
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// Bytes of the K and V caches.
    pub fn cache_bytes(&self) -> usize {
        self._buffer.size()
    }

    pub fn clear(&mut self) {
        self.n_past = 0;
    }

    /// Declares this step's positions, causal mask and cache rows.
    pub fn begin<'a>(
        &self,
        step: &mut Step<'a>,
        n_tokens: usize,
    ) -> Result<FullInputs<'a>, AttentionError> {
        let end = self.n_past + n_tokens;
        if end > self.n_ctx {
            return Err(AttentionError::ContextFull {
                needed: end,
                n_ctx: self.n_ctx,
            });
        }
        let n_kv = end.next_multiple_of(KV_PAD).min(self.n_ctx);
        let pos: Vec<i32> = (self.n_past..end).map(|p| p as i32).collect();
        let mut mask = vec![f16::NEG_INFINITY; n_kv * n_tokens];
        for (i, row) in mask.chunks_mut(n_kv).enumerate() {
            row[..=self.n_past + i].fill(f16::ZERO);
        }
        Ok(FullInputs {
            pos: step.input_i32(&[n_tokens as i64], pos.clone()),
            rows: step.input_i32(&[n_tokens as i64], pos),
            mask: step.input_f16(&[n_kv as i64, n_tokens as i64], mask),
            n_kv,
        })
    }

    /// q [head_dim, n_head, T], k and v [head_dim, n_head_kv, T], un-rotated.
    /// Returns [head_dim * n_head, T].
    #[allow(clippy::too_many_arguments)]
    pub fn attend<'a>(
        &'a self,
        step: &mut Step<'a>,
        inp: &FullInputs<'a>,
        layer: usize,
        q: Tensor<'a>,
        k: Tensor<'a>,
        v: Tensor<'a>,
        la: &LayerAttn,
        freq_factors: Option<Tensor<'a>>,
    ) -> Tensor<'a> {
        let g = step.ctx;
        let n_tokens = q.ne()[2];
        let q = g.rope(q, inp.pos, freq_factors, &la.rope);
        let k = g.rope(k, inp.pos, freq_factors, &la.rope);

        let k_cache = self.ctx.tensor(self.k[layer]);
        let v_cache = self.ctx.tensor(self.v[layer]);
        let kv_rows = [self.n_embd_kv as i64, n_tokens];
        step.graph
            .expand(g.set_rows(k_cache, g.reshape(k, &kv_rows), inp.rows));
        step.graph
            .expand(g.set_rows(v_cache, g.reshape(v, &kv_rows), inp.rows));

        let n_head_kv = (self.n_embd_kv / self.head_dim) as i64;
        let row = k_cache.nb()[1];
        let head = row / n_head_kv as usize;
        let shape = [self.head_dim as i64, n_head_kv, inp.n_kv as i64];
        let k_view = g.permute(g.view(k_cache, &shape, &[head, row], 0), [0, 2, 1, 3]);
        let v_view = g.permute(g.view(v_cache, &shape, &[head, row], 0), [0, 2, 1, 3]);
        let q = g.permute(q, [0, 2, 1, 3]);
        let out = g.flash_attn(q, k_view, v_view, Some(inp.mask), la.scale, la.softcap);
        g.reshape(out, &[out.ne()[0] * out.ne()[1], n_tokens])
    }

    /// Records that the step's tokens are now in the cache.
    pub fn commit(&mut self, n_tokens: usize) {
        self.n_past += n_tokens;
    }
}
