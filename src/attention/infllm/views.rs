//! A layer's buffers as tensors of a step's graph, with the views the
//! prefill and decode graphs take of them, and the append that both start
//! with.

use super::blocks::BlockStore;
use super::inputs::InfllmInputs;
use super::InfllmAttention;
use crate::attention::{LayerAttn, LayerQkv};
use crate::compute::Step;
use crate::ggml::{Context, Tensor};

/// One layer's window buffer, initial tokens and blocks in a step's graph,
/// with the step's projections for it.
pub(super) struct LayerTensors<'a> {
    pub g: &'a Context,
    /// The step's Q, K, V (un-rotated) and the layer's attention settings.
    pub x: LayerQkv<'a>,
    pub la: LayerAttn,
    /// Un-rotated keys [n_embd_kv, cap], f16.
    pub k_raw: Tensor<'a>,
    /// Rotated keys, transposed [cap, n_embd_kv], f16.
    pub k_rot_t: Tensor<'a>,
    /// Values, transposed [cap, n_embd_kv], f16.
    pub v_t: Tensor<'a>,
    /// Accumulated local attention score [cap, n_head], f32.
    pub score: Tensor<'a>,
    pub init_k: Tensor<'a>,
    pub init_v_t: Tensor<'a>,
    pub blocks: &'a BlockStore,
    /// Standard ggml ops only (`standard.rs`).
    pub standard: bool,
    pub hd: i64,
    pub n_head_kv: i64,
    pub n_head: i64,
}

impl<'a> LayerTensors<'a> {
    /// The step's queries rotated at `pos`: [hd, n_head, T].
    pub fn rotated_q(&self, pos: Tensor<'a>) -> Tensor<'a> {
        self.rope(self.x.q, pos)
    }

    /// `x` [hd, heads, n] rotated at `pos` (I32 [n]) with the layer's settings.
    pub fn rope(&self, x: Tensor<'a>, pos: Tensor<'a>) -> Tensor<'a> {
        self.g.rope(x, pos, self.x.freq_factors, &self.la.rope)
    }

    /// Bytes of one token's keys in `k_raw` and of one head's.
    fn key_strides(&self) -> (usize, usize) {
        let row = self.k_raw.nb()[1];
        (row, row / self.n_head_kv as usize)
    }

    /// Un-rotated keys of slots [lo, lo + n): [hd, n_head_kv, n].
    pub fn raw_keys(&self, n: usize, lo: usize) -> Tensor<'a> {
        let (row, head) = self.key_strides();
        self.g
            .view(self.k_raw, &[self.hd, self.n_head_kv, n as i64], &[head, row], lo * row)
    }

    /// Slots [lo, lo + n) of a transposed buffer ([slots, n_embd_kv]:
    /// values or rotated keys) as [n, hd, n_head_kv].
    pub fn transposed(&self, src: Tensor<'a>, n: usize, lo: usize) -> Tensor<'a> {
        let nb1 = src.nb()[1];
        let (hd, nkv) = (self.hd, self.n_head_kv);
        self.g
            .view(src, &[n as i64, hd, nkv], &[nb1, nb1 * hd as usize], lo * src.nb()[0])
    }

    /// Keys [hd, n, n_head_kv] (f32) rotated at `pos` (I32 [n]), the same
    /// shape, or as they are without positions.
    pub fn rotated_keys(&self, keys: Tensor<'a>, pos: Option<Tensor<'a>>) -> Tensor<'a> {
        let Some(pos) = pos else { return keys };
        let g = self.g;
        let k = g.cont(g.permute(keys, [0, 2, 1, 3])); // [hd, n_head_kv, n]
        g.cont(g.permute(self.rope(k, pos), [0, 2, 1, 3]))
    }

    /// The first `n` initial tokens' keys: [hd, n, n_head_kv], f32.
    pub fn initial_keys(&self, n: usize) -> Tensor<'a> {
        let kb1 = self.init_k.nb()[1];
        let (hd, nkv) = (self.hd, self.n_head_kv);
        let ki = self
            .g
            .view(self.init_k, &[hd, nkv, n as i64], &[kb1 / nkv as usize, kb1], 0);
        self.g.permute(ki, [0, 2, 1, 3])
    }
}

impl InfllmAttention {
    pub(super) fn layer_tensors<'a>(&'a self, g: &'a Context, x: LayerQkv<'a>, la: &LayerAttn) -> LayerTensors<'a> {
        let l = &self.layers[x.layer];
        let s = &self.shape;
        let t = |id| self.ctx.tensor(id);
        LayerTensors {
            g,
            x,
            la: *la,
            k_raw: t(l.k_raw),
            k_rot_t: t(l.k_rot_t),
            v_t: t(l.v_t),
            score: t(l.score),
            init_k: t(l.init_k),
            init_v_t: t(l.init_v_t),
            blocks: &l.blocks,
            standard: l.standard_ops,
            hd: s.head_dim as i64,
            n_head_kv: s.n_head_kv as i64,
            n_head: s.n_head as i64,
        }
    }
}

impl<'a> LayerTensors<'a> {
    /// Appends the step's keys and values to the window buffer (raw keys,
    /// rotated keys and values transposed) at the slots of their positions,
    /// which come as input data so that a decode graph does not depend on
    /// them; after the buffer moved, first re-rotates every kept key at its
    /// new slot.
    pub(super) fn append(&self, step: &mut Step<'a>, inp: &InfllmInputs<'a>) {
        let g = self.g;
        let e = self.hd * self.n_head_kv;
        let t = inp.n_tokens as i64;
        let x = &self.x;
        if let Some(slots) = inp.rerotate {
            let n = slots.ne()[0] as usize;
            let rotated = g.reshape(self.rope(self.raw_keys(n, 0), slots), &[e, n as i64]);
            self.put_columns(step, self.k_rot_t, rotated, slots, inp.rerotate_cells);
        }
        let slots = inp.pos_local;
        step.graph
            .expand(g.set_rows(self.k_raw, g.reshape(x.k, &[e, t]), slots));
        let rotated = g.reshape(self.rope(x.k, slots), &[e, t]);
        self.put_columns(step, self.k_rot_t, rotated, slots, inp.cells);
        self.put_columns(step, self.v_t, g.reshape(x.v, &[e, t]), slots, inp.cells);
    }
}
