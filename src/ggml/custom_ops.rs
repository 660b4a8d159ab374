//! Our custom ggml ops: graph nodes whose work is done by our kernels
//! (`kernels`), called back by ggml's threads. Each builder checks what its
//! callback will read; each callback relies on those checks.

mod callbacks;

use std::ffi::c_int;

use super::tensor::{Context, Tensor};
use super::{kernels, sys, GgmlType};
use callbacks::{
    block_scores_op, block_values_op, key_scores_op, mask_outside_op, put_columns_op, softmax_spans_op, tile_values_op,
    value_sums_op,
};

/// The signature of ggml's custom-op callbacks.
type CustomOp = unsafe extern "C" fn(*mut sys::ggml_tensor, c_int, c_int, *mut std::ffi::c_void);

impl Context {
    /// Writes vectors `x` [n_rows, n] (f32 or f16, contiguous) as columns
    /// of `dst` [cap, n_rows] f16 (a row per channel): x's vector i into
    /// column `slots[i]` (I32 [n], each below cap). ggml's `set_rows` on a
    /// transposed view does the same on one thread when n = 1 (it splits
    /// vectors between threads); this op splits the rows.
    pub fn put_columns<'a>(&'a self, dst: Tensor<'a>, x: Tensor<'a>, slots: Tensor<'a>) -> Tensor<'a> {
        let n_rows = dst.ne()[1];
        let [x_rows, n, ..] = x.ne();
        assert!(
            dst.ty() == GgmlType::F16 && dst.nb()[0] == 2 && dst.ne()[2..] == [1, 1],
            "put_columns: f16 rows with unit stride"
        );
        assert!(
            matches!(x.ty(), GgmlType::F32 | GgmlType::F16) && x.is_contiguous() && x_rows == n_rows,
            "put_columns: contiguous f32 or f16 vectors of the row count"
        );
        assert!(
            slots.ty() == GgmlType::I32 && slots.is_contiguous() && slots.ne() == [n, 1, 1, 1],
            "put_columns: a slot per vector"
        );
        let mut args = [x.raw(), slots.raw()];
        // SAFETY: valid context and tensors (checked above to be what the op
        // reads and writes); ggml copies the source pointers into the node,
        // a view of `dst`.
        self.wrap(unsafe {
            sys::ggml_custom_inplace(
                self.raw(),
                dst.raw(),
                args.as_mut_ptr(),
                2,
                Some(put_columns_op),
                -1, // every thread takes a share of the rows
                std::ptr::null_mut(),
            )
        })
    }

    /// Logits of queries against keys stored transposed: `keys_t` [n, dim,
    /// n_kv] f16 or f32 (a row per channel; rows and heads may be strided), `q`
    /// [dim, n_q, n_head] f32 contiguous, query head h reading KV head
    /// h / (n_head / n_kv) as `mul_mat` broadcasts. Result [n, n_q, n_head]
    /// f32, rows written at their strides (so `join_rows` can place it). Our
    /// kernel (`kernels::key_scores`) as a ggml custom op. With `valid` (I32
    /// [2], a key range [from, to) given as data), keys outside it score
    /// -inf without being read.
    pub fn key_scores<'a>(&'a self, keys_t: Tensor<'a>, q: Tensor<'a>, valid: Option<Tensor<'a>>) -> Tensor<'a> {
        let [n, dim, n_kv, _] = keys_t.ne();
        let [q_dim, n_q, n_head, _] = q.ne();
        let key_size = match keys_t.ty() {
            GgmlType::F16 => 2,
            GgmlType::F32 => 4,
            ty => panic!("key_scores: f16 or f32 keys, not {ty:?}"),
        };
        assert!(
            keys_t.nb()[0] == key_size && keys_t.nb()[1].is_multiple_of(key_size) && q.ty() == GgmlType::F32,
            "key_scores: keys with unit stride, f32 queries"
        );
        assert!(
            q_dim == dim && n_head % n_kv == 0 && q.ne()[3] == 1 && q.is_contiguous(),
            "key_scores: query shape"
        );
        let mut args = with_range([keys_t.raw(), q.raw()], valid);
        // SAFETY: the sources were checked above and in `with_range`; every
        // thread takes a share of the keys.
        unsafe { self.custom_f32([n, n_q, n_head, 1], &mut args, key_scores_op) }
    }

    /// Probabilities times values stored transposed: `vals_t` [n, hd, n_kv]
    /// f16 (a row per channel; rows and heads may be strided), `p` [n, group,
    /// n_kv] f32 (rows may be strided). Result [hd, group, n_kv] f32, as
    /// `mul_mat(vals_t, p)`. Our kernel (`kernels::value_sums`): ggml's f16
    /// matmul of a few columns took 1.8x as long (docs/perf.md). With
    /// `valid` (as `key_scores`'), only the values in that range are read
    /// (the others' probabilities are zero).
    pub fn value_sums<'a>(&'a self, vals_t: Tensor<'a>, p: Tensor<'a>, valid: Option<Tensor<'a>>) -> Tensor<'a> {
        let [n, hd, n_kv, one] = vals_t.ne();
        let [pn, group, p_kv, p_one] = p.ne();
        assert!(
            vals_t.ty() == GgmlType::F16 && vals_t.nb()[0] == 2 && p.ty() == GgmlType::F32 && p.nb()[0] == 4,
            "value_sums: f16 values and f32 probabilities with unit stride"
        );
        assert!(pn == n && p_kv == n_kv && one == 1 && p_one == 1, "value_sums: shapes");
        let mut args = with_range([vals_t.raw(), p.raw()], valid);
        // SAFETY: the sources were checked above and in `with_range`; the
        // threads share the (KV head, channel) pairs.
        unsafe { self.custom_f32([hd, group, n_kv, 1], &mut args, value_sums_op) }
    }

    /// Probabilities times values for a prompt tile: `vals_t` [n, hd, n_kv]
    /// f16 (a row per channel; rows and heads may be strided), `p` [n, n_q,
    /// n_head] f32 (unit element stride), query head h reading KV head
    /// h / (n_head / n_kv). Result [hd, n_q, n_head] f32: `mul_mat(vals_t,
    /// p)`, probabilities rounded to f16 as ggml's does
    /// (`kernels::tile_values`).
    pub fn tile_values<'a>(&'a self, vals_t: Tensor<'a>, p: Tensor<'a>) -> Tensor<'a> {
        let [n, hd, n_kv, one] = vals_t.ne();
        let [pn, n_q, n_head, p_one] = p.ne();
        assert!(
            vals_t.ty() == GgmlType::F16 && vals_t.nb()[0] == 2 && p.ty() == GgmlType::F32 && p.nb()[0] == 4,
            "tile_values: f16 values and f32 probabilities with unit stride"
        );
        // The callback reads channel rows as u16 slices `nb[1] / 2` apart.
        assert!(
            hd > 0 && vals_t.nb()[1].is_multiple_of(2) && pn == n && n_head % n_kv == 0 && one == 1 && p_one == 1,
            "tile_values: shapes"
        );
        // SAFETY: the sources were checked above; the threads share each KV
        // head's probability rows.
        unsafe { self.custom_f32([hd, n_q, n_head, 1], &mut [vals_t.raw(), p.raw()], tile_values_op) }
    }

    /// `x` [n, ...] f32 (unit element stride) with every row's entries
    /// outside `valid` (I32 [2], a range [from, to) given as data) set to
    /// -inf: a softmax then gives them no weight.
    pub fn mask_outside<'a>(&'a self, x: Tensor<'a>, valid: Tensor<'a>) -> Tensor<'a> {
        let [n, n1, n2, n3] = x.ne();
        assert!(
            x.ty() == GgmlType::F32 && x.nb()[0] == 4,
            "mask_outside: f32 with unit stride"
        );
        let mut args = with_range([x.raw()], Some(valid));
        // SAFETY: the sources were checked above and in `with_range`; the
        // threads share the rows.
        unsafe { self.custom_f32([n, n1, n2, n3], &mut args, mask_outside_op) }
    }

    /// Softmax in place of every row of `x` [n, n_q, n_head] f32 (unit
    /// element stride), scaled by `scale` (> 0), over the row's two visible
    /// spans: `spans` (I32 [4, n_q], contiguous) holds `[a0, a1, b0, b1]`
    /// for query row i, entries [a0, a1) and [b0, b1) (in order, clamped to
    /// the row); every other entry becomes 0. `soft_max_ext` with the
    /// additive mask of those spans, for a prompt tile's joined logits,
    /// without reading the mask (`kernels::softmax_spans`).
    pub fn softmax_spans<'a>(&'a self, x: Tensor<'a>, spans: Tensor<'a>, scale: f32) -> Tensor<'a> {
        assert!(
            spans.ty() == GgmlType::I32 && spans.is_contiguous() && spans.ne() == [4, x.ne()[1], 1, 1],
            "softmax_spans: four I32 bounds per query row"
        );
        self.softmax_op(x, Some(spans), scale)
    }

    /// Softmax in place of every row of `x` [n, ...] f32 (unit element
    /// stride) scaled by `scale` (> 0); entries of -inf become 0. What
    /// `soft_max_ext` without a mask computes, with every pass vectorized:
    /// ggml finds a row's largest entry one value at a time, which was most
    /// of its softmax in a decode step (docs/perf.md).
    pub fn softmax_rows<'a>(&'a self, x: Tensor<'a>, scale: f32) -> Tensor<'a> {
        self.softmax_op(x, None, scale)
    }

    /// `softmax_spans`, or whole rows without `spans`.
    fn softmax_op<'a>(&'a self, x: Tensor<'a>, spans: Option<Tensor<'a>>, scale: f32) -> Tensor<'a> {
        assert!(
            x.ty() == GgmlType::F32 && x.nb()[0] == 4,
            "softmax: f32 rows with unit stride"
        );
        assert!(scale > 0.0 && scale.is_finite(), "softmax: a positive scale");
        let mut args: Vec<_> = spans.iter().map(|s| s.raw()).collect();
        // SAFETY: valid context and tensors (checked above and by the
        // callers to be what the op reads and writes); ggml copies the
        // source pointers into the node, a view of `x`. The scale travels as
        // the bits of the userdata pointer (the callback reads no memory
        // through it).
        self.wrap(unsafe {
            sys::ggml_custom_inplace(
                self.raw(),
                x.raw(),
                args.as_mut_ptr(),
                args.len() as c_int,
                Some(softmax_spans_op),
                -1, // every thread takes a share of the rows
                scale.to_bits() as usize as *mut std::ffi::c_void,
            )
        })
    }

    /// Logits of query heads against the keys of chosen memory blocks, read
    /// in their stored type (no gathered or dequantized copy). `store`
    /// [bs x hd x n_kv, n_blocks] holds each block's keys transposed (a row
    /// of bs values per channel, channels KV-head-major), `ids` [n_sel] I32
    /// the chosen blocks, `q` [hd, group, n_kv] f32 contiguous the query
    /// heads by KV head. Result [bs x n_sel, group, n_kv] f32 (rows at their
    /// strides, for `join_rows`). Our kernel (`kernels::column_dots`).
    pub fn block_scores<'a>(&'a self, store: Tensor<'a>, ids: Tensor<'a>, q: Tensor<'a>) -> Tensor<'a> {
        let [hd, group, n_kv, _] = q.ne();
        let bs = check_block_op(store, ids, hd * n_kv, q);
        assert!(q.is_contiguous(), "block_scores: contiguous queries");
        // SAFETY: the sources were checked above and by `check_block_op`;
        // the threads share the (block, KV head) pairs.
        unsafe {
            self.custom_f32(
                [bs * ids.ne()[0], group, n_kv, 1],
                &mut [store.raw(), ids.raw(), q.raw()],
                block_scores_op,
            )
        }
    }

    /// The chosen memory blocks' values weighted by attention probabilities
    /// and summed over the blocks. `store` [bs x hd x n_kv, n_blocks] holds
    /// each block's values transposed (hd rows of bs values per KV head),
    /// `ids` [n_sel] I32 the chosen blocks (in `block_scores`' order), `p`
    /// [bs * n_sel, group, n_kv] f32 (rows may be strided) their
    /// probabilities. Result [hd, group, n_kv] f32.
    pub fn block_values<'a>(&'a self, store: Tensor<'a>, ids: Tensor<'a>, p: Tensor<'a>, hd: i64) -> Tensor<'a> {
        let [_, group, n_kv, _] = p.ne();
        let bs = check_block_op(store, ids, hd * n_kv, p);
        assert_eq!(p.ne()[0], bs * ids.ne()[0], "block_values: one probability per key");
        // SAFETY: the sources were checked above and by `check_block_op`;
        // the threads share the (KV head, channel) pairs.
        unsafe {
            self.custom_f32(
                [hd, group, n_kv, 1],
                &mut [store.raw(), ids.raw(), p.raw()],
                block_values_op,
            )
        }
    }

    /// A new f32 node of shape `ne` that `op` computes from `srcs`, run by
    /// every thread of the pool (GGML_N_TASKS_MAX: each op splits its work
    /// by thread number).
    ///
    /// # Safety
    /// `srcs` must be tensors of this context, checked to be what `op` reads.
    unsafe fn custom_f32<'a>(&'a self, ne: [i64; 4], srcs: &mut [*mut sys::ggml_tensor], op: CustomOp) -> Tensor<'a> {
        // SAFETY: valid context and tensors (the caller's contract); ggml
        // copies the source pointers into the new node.
        self.wrap(unsafe {
            sys::ggml_custom_4d(
                self.raw(),
                GgmlType::F32.sys(),
                ne[0],
                ne[1],
                ne[2],
                ne[3],
                srcs.as_mut_ptr(),
                srcs.len() as c_int,
                Some(op),
                -1,
                std::ptr::null_mut(),
            )
        })
    }
}

/// Checks what `block_scores` and `block_values` read; returns the block
/// size: `store` is [n_embd * bs, n_blocks] of a block-store type with
/// contiguous rows of whole kernel tiles, `ids` a contiguous I32 vector,
/// `x` f32 vectors with unit element stride.
fn check_block_op(store: Tensor<'_>, ids: Tensor<'_>, n_embd: i64, x: Tensor<'_>) -> i64 {
    let [per_block, _, one, _] = store.ne();
    let info = super::type_info(store.ty()).expect("block store of a known type");
    assert!(
        one == 1 && per_block % n_embd == 0 && store.nb()[0] as u64 == info.type_size,
        "block op: store shape"
    );
    let bs = per_block / n_embd;
    let unit = (kernels::LANES as u64).max(info.block_size) as i64;
    assert!(
        bs % unit == 0 && (n_embd / x.ne()[2]) % unit == 0,
        "block op: rows of whole tiles"
    );
    assert!(
        ids.ty() == GgmlType::I32 && ids.is_contiguous() && ids.ne()[1..] == [1, 1, 1],
        "block op: ids"
    );
    assert!(
        x.ty() == GgmlType::F32 && x.nb()[0] == 4 && x.ne()[3] == 1,
        "block op: f32 vectors"
    );
    bs
}

/// An op's sources followed by its optional range input, checked to be
/// I32 [2] (read by `range_of`).
fn with_range<const N: usize>(
    srcs: [*mut sys::ggml_tensor; N],
    valid: Option<Tensor<'_>>,
) -> Vec<*mut sys::ggml_tensor> {
    let mut args = srcs.to_vec();
    if let Some(v) = valid {
        assert!(
            v.ty() == GgmlType::I32 && v.is_contiguous() && v.ne() == [2, 1, 1, 1],
            "a range input is I32 [2]"
        );
        args.push(v.raw());
    }
    args
}
