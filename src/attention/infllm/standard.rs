//! Each custom op of the InfLLM graphs, or its counterpart in standard
//! ggml ops: the CPU runs infllm's own kernels, a layer on a device (whose
//! backend cannot call back into this process) runs the standard ops, which
//! the CPU can run too to check them (`EngineParams::standard_ops`).
//!
//! The counterparts read the same buffers: transposed keys are copied
//! contiguous before their matmul, key ranges become additive masks, blocks
//! are gathered with `get_rows` (dequantized) instead of read in place, and
//! columns are written into transposed buffers one element per row with
//! `set_rows`.

use super::inputs::{KeyRange, Tile};
use super::views::LayerTensors;
use crate::compute::Step;
use crate::ggml::Tensor;

impl<'a> LayerTensors<'a> {
    /// Writes column i of `x` [e, t] into column `slots[i]` of the
    /// transposed buffer `dst_t` [cap, e]; `cells` (I32 [e * t], the
    /// element `c * cap + slot` for each (token, channel), channel-major)
    /// are the same positions for the standard path.
    pub fn put_columns(
        &self,
        step: &mut Step<'a>,
        dst_t: Tensor<'a>,
        x: Tensor<'a>,
        slots: Tensor<'a>,
        cells: Option<Tensor<'a>>,
    ) {
        let g = self.g;
        if !self.standard {
            step.graph.expand(g.put_columns(dst_t, x, slots));
            return;
        }
        let cells = cells.expect("standard-op steps declare their cells");
        let [cap, e, ..] = dst_t.ne();
        let flat = g.reshape(dst_t, &[1, cap * e]);
        let x_t = g.reshape(g.cont(g.transpose(x)), &[1, x.n_elements()]);
        step.graph.expand(g.set_rows(flat, x_t, cells));
    }

    /// Logits [n, n_q, n_head] of queries `q` [hd, n_q, n_head] against the
    /// transposed keys `keys_t` [n, hd, n_kv]; keys outside `valid` get -inf.
    pub fn key_logits(&self, keys_t: Tensor<'a>, q: Tensor<'a>, valid: Option<KeyRange<'a>>) -> Tensor<'a> {
        let g = self.g;
        if !self.standard {
            return g.key_scores(keys_t, q, valid.map(|v| v.range));
        }
        let keys = g.cont(g.permute(keys_t, [1, 0, 2, 3])); // [hd, n, n_kv]
        let logits = g.mul_mat_f32(keys, q);
        match valid {
            Some(v) => g.add(logits, v.mask.expect("standard-op steps declare masks")),
            None => logits,
        }
    }

    /// Probabilities `p` [n, group, n_kv] times the transposed values
    /// `vals_t` [n, hd, n_kv]: [hd, group, n_kv]. Outside `valid` the
    /// probabilities are zero.
    pub fn value_sums(&self, vals_t: Tensor<'a>, p: Tensor<'a>, valid: Option<KeyRange<'a>>) -> Tensor<'a> {
        let g = self.g;
        if !self.standard {
            return g.value_sums(vals_t, p, valid.map(|v| v.range));
        }
        g.mul_mat(self.operand(vals_t), g.cont(p))
    }

    /// A prompt tile's probabilities `p` [n, n_q, n_head] times the
    /// transposed values `vals_t` [n, hd, n_kv] f16: [hd, n_q, n_head].
    pub fn tile_value_sums(&self, vals_t: Tensor<'a>, p: Tensor<'a>) -> Tensor<'a> {
        match self.standard {
            false => self.g.tile_values(vals_t, p),
            true => self.g.mul_mat(self.operand(vals_t), self.operand(p)),
        }
    }

    /// `t` as a matmul operand on a device: copied when it is a view that
    /// starts off the alignment a device may ask of a buffer binding.
    /// Vulkan requires offsets of storage bindings to be multiples of
    /// `minStorageBufferOffsetAlignment` (at most 256 by the spec), and
    /// ggml-vulkan's matmul binds its operands where they start (Khronos'
    /// validation layer reported it, docs/devices.md). The CPU path reads
    /// views in place.
    pub fn operand(&self, t: Tensor<'a>) -> Tensor<'a> {
        const DEVICE_BINDING_ALIGN: usize = 256;
        match self.standard && !t.view_offset().is_multiple_of(DEVICE_BINDING_ALIGN) {
            true => self.g.cont(t),
            false => t,
        }
    }

    /// A prompt step's global keys [hd, n, n_kv] f32, laid out for
    /// `global_logits`: transposed for our kernel (once per step; its
    /// tiles share them), as they are for `mul_mat`.
    pub fn global_keys(&self, keys: Tensor<'a>) -> Tensor<'a> {
        match self.standard {
            false => self.g.cont(self.g.permute(keys, [1, 0, 2, 3])),
            true => keys,
        }
    }

    /// Logits [n, n_q, n_head] of queries `q` [hd, n_q, n_head] against
    /// keys from `global_keys`. ggml's f32 matmul of these shapes (64-term
    /// dot products) took most of a long prefill's attention (docs/perf.md).
    pub fn global_logits(&self, keys: Tensor<'a>, q: Tensor<'a>) -> Tensor<'a> {
        match self.standard {
            false => self.g.key_scores(keys, q, None),
            true => self.g.mul_mat_f32(keys, q),
        }
    }

    /// A prompt tile's probabilities: the softmax of its joined logits
    /// `x` [n, n_q, n_head] scaled by `scale`, over the keys each query
    /// sees (the tile's spans, or its mask on the standard path).
    pub fn tile_softmax(&self, x: Tensor<'a>, tile: &Tile<'a>, scale: f32) -> Tensor<'a> {
        match self.standard {
            false => self
                .g
                .softmax_spans(x, tile.spans.expect("prompt tiles declare spans"), scale),
            true => self.g.soft_max_ext(x, tile.mask, scale),
        }
    }

    /// A decode step's probabilities: the softmax of its joined logits `x`
    /// [n, n_head] scaled by `scale`; keys outside their ranges hold -inf.
    pub fn decode_softmax(&self, x: Tensor<'a>, scale: f32) -> Tensor<'a> {
        match self.standard {
            false => self.g.softmax_rows(x, scale),
            true => self.g.soft_max_ext(x, None, scale),
        }
    }

    /// `x` [n, ...] with the entries outside `valid` set to -inf.
    pub fn mask_outside(&self, x: Tensor<'a>, valid: KeyRange<'a>) -> Tensor<'a> {
        match self.standard {
            false => self.g.mask_outside(x, valid.range),
            true => self.g.add(x, valid.mask.expect("standard-op steps declare masks")),
        }
    }

    /// Logits [bs * n_sel, group, n_kv] of `q` [hd, group, n_kv] against
    /// the keys of blocks `ids` (I32 [n_sel]), block by block.
    pub fn block_logits(&self, ids: Tensor<'a>, q: Tensor<'a>) -> Tensor<'a> {
        let g = self.g;
        match self.standard {
            false => g.block_scores(self.blocks.k_tensor(g), ids, q),
            true => g.mul_mat_f32(self.block_keys(ids), q),
        }
    }

    /// The keys of blocks `ids`, dequantized: [hd, bs * n_sel, n_kv], f32.
    pub fn block_keys(&self, ids: Tensor<'a>) -> Tensor<'a> {
        let g = self.g;
        let (bs, n_sel) = (self.blocks.shape().block_size as i64, ids.ne()[0]);
        // Blocks store keys channel-major: [block_size, hd, n_head_kv] each.
        let kb = g.reshape(
            g.get_rows(self.blocks.k_tensor(g), ids),
            &[bs, self.hd, self.n_head_kv, n_sel],
        );
        let kb = g.cont(g.permute(kb, [1, 0, 3, 2])); // [hd, bs, n_sel, nkv]
        g.reshape(kb, &[self.hd, bs * n_sel, self.n_head_kv])
    }

    /// The values of blocks `ids`, dequantized and transposed:
    /// [bs * n_sel, n_embd_kv], f32.
    pub fn block_values_t(&self, ids: Tensor<'a>) -> Tensor<'a> {
        let g = self.g;
        let (bs, n_sel) = (self.blocks.shape().block_size as i64, ids.ne()[0]);
        let e = self.hd * self.n_head_kv;
        let vb = g.reshape(g.get_rows(self.blocks.v_tensor(g), ids), &[bs, e, n_sel]);
        let vb = g.cont(g.permute(vb, [0, 2, 1, 3])); // [bs, n_sel, e]
        g.reshape(vb, &[bs * n_sel, e])
    }

    /// Probabilities `p` [bs * n_sel, group, n_kv] times the values of
    /// blocks `ids`: [hd, group, n_kv].
    pub fn block_value_sums(&self, ids: Tensor<'a>, p: Tensor<'a>) -> Tensor<'a> {
        let g = self.g;
        if !self.standard {
            return g.block_values(self.blocks.v_tensor(g), ids, p, self.hd);
        }
        let n = p.ne()[0];
        let values = g.reshape(self.block_values_t(ids), &[n, self.hd, self.n_head_kv]);
        g.mul_mat(values, g.cont(p))
    }

    /// `parts` [n_i, ...] side by side along rows.
    pub fn join_rows(&self, parts: &[Tensor<'a>]) -> Tensor<'a> {
        let g = self.g;
        match self.standard {
            false => g.join_rows(parts),
            true => parts.iter().copied().reduce(|a, b| g.concat(a, b, 0)).expect("a part"),
        }
    }
}
