//! The callbacks ggml's threads run for our custom ops. Each reads the
//! node's sources as its builder (in `custom_ops`) checked them, splits the
//! work by thread number `ith` of `nth`, and runs a kernel on its share.

use std::ffi::{c_int, c_void};

use crate::ggml::{kernels, sys, GgmlType};

/// The range [from, to) an op's source `i` holds (clamped to `n`), or all
/// of 0..n without one.
///
/// # Safety
/// Source `i` of `dst`, if any, must be an allocated I32 [2] tensor (as
/// `with_range` checks at build time).
unsafe fn range_of(dst: &sys::ggml_tensor, i: usize, n: usize) -> (usize, usize) {
    let src = dst.src[i];
    if src.is_null() {
        return (0, n);
    }
    // SAFETY: an allocated I32 [2] tensor (the caller's contract).
    let r = unsafe { std::slice::from_raw_parts((*src).data as *const i32, 2) };
    let to = (r[1].max(0) as usize).min(n);
    ((r[0].max(0) as usize).min(to), to)
}

/// Runs `f` with the kernels' reading of `store`'s rows.
///
/// # Safety
/// `store` must be a valid tensor of a known ggml type.
unsafe fn with_row_format(store: &sys::ggml_tensor, f: impl FnOnce(&kernels::RowFormat)) {
    match GgmlType::try_from(store.type_).expect("known type") {
        GgmlType::F32 => f(&kernels::RowFormat::F32),
        GgmlType::F16 => f(&kernels::RowFormat::F16),
        GgmlType::Q8_0 => f(&kernels::RowFormat::Q8_0),
        GgmlType::Q4_0 => f(&kernels::RowFormat::Q4_0),
        ty => {
            // SAFETY: `ty` is a known type (the caller's contract), so its
            // traits entry is valid for the whole program.
            let to_float = unsafe { (*sys::ggml_get_type_traits(ty.sys())).to_float }.expect("type with to_float");
            let convert = |src: &[u8], dst: &mut [f32]| {
                assert_eq!(src.len() as u64, ty.row_size(dst.len() as u64), "a whole row");
                // SAFETY: `src` holds exactly one row of dst.len() values of
                // type `ty` (checked), `dst` has room for them.
                unsafe { to_float(src.as_ptr().cast(), dst.as_mut_ptr(), dst.len() as i64) }
            };
            f(&kernels::RowFormat::Convert(&convert))
        }
    }
}

/// Bytes of one row of `n` values of `store`'s type.
fn row_bytes(store: &sys::ggml_tensor, n: usize) -> usize {
    let ty = GgmlType::try_from(store.type_).expect("known type");
    ty.row_size(n as u64) as usize
}

/// The chosen blocks' ids, each checked to be a block of the store.
///
/// # Safety
/// `ids` must be an allocated, contiguous I32 vector.
unsafe fn block_ids(ids: &sys::ggml_tensor, n_blocks: i64) -> &[i32] {
    // SAFETY: the caller's contract.
    let ids = unsafe { std::slice::from_raw_parts(ids.data as *const i32, ids.ne[0] as usize) };
    assert!(
        ids.iter().all(|&b| (0..n_blocks).contains(&i64::from(b))),
        "block id out of range"
    );
    ids
}

/// The `block_scores` op: each of ggml's `nth` threads takes every nth
/// (block, KV head) pair.
pub(super) unsafe extern "C" fn block_scores_op(dst: *mut sys::ggml_tensor, ith: c_int, nth: c_int, _: *mut c_void) {
    // SAFETY: ggml calls this only for nodes built by `Context::block_scores`,
    // whose sources were checked there (store rows of whole tiles of a known
    // type, contiguous I32 ids, contiguous f32 queries [hd, group, n_kv]),
    // allocated when the graph runs. Ids are checked against the store; each
    // slice below stays inside its tensor: a block's keys for one KV head
    // (hd rows of bs values; this item's and the thread's next item's),
    // one query head's hd values, one output row's bs logits.
    // Threads write disjoint (block, KV head) ranges of `dst`.
    unsafe {
        let dst = &*dst;
        let (store, ids, q) = (&*dst.src[0], &*dst.src[1], &*dst.src[2]);
        let (hd, group, n_kv) = (q.ne[0] as usize, q.ne[1] as usize, q.ne[2] as usize);
        let ids = block_ids(ids, store.ne[1]);
        let bs = dst.ne[0] as usize / ids.len();
        let row = row_bytes(store, bs);
        let heads: Vec<&[f32]> = (0..n_kv * group)
            .map(|h| {
                let x = (q.data as *const u8).add(h / group * q.nb[2] + h % group * q.nb[1]);
                std::slice::from_raw_parts(x as *const f32, hd)
            })
            .collect();
        let mut out: Vec<&mut [f32]> = Vec::with_capacity(group);
        with_row_format(store, |fmt| {
            let keys = |item: usize| {
                let (i, kv) = (item / n_kv, item % n_kv);
                let at = (store.data as *const u8).add(ids[i] as usize * store.nb[1] + kv * hd * row);
                std::slice::from_raw_parts(at, hd * row)
            };
            let items = ids.len() * n_kv;
            for item in (ith as usize..items).step_by(nth as usize) {
                let (i, kv) = (item / n_kv, item % n_kv);
                // This thread's next keys, prefetched while these are read.
                let next = (item + (nth as usize) < items).then(|| keys(item + nth as usize));
                out.clear();
                out.extend((0..group).map(|j| {
                    let o = (dst.data as *mut u8).add(kv * dst.nb[2] + j * dst.nb[1] + i * bs * 4);
                    std::slice::from_raw_parts_mut(o as *mut f32, bs)
                }));
                let (keys, next) = (keys(item), next.unwrap_or_default());
                kernels::column_dots(fmt, (keys, row, row), next, &heads[kv * group..][..group], &mut out);
            }
        });
    }
}

/// The `block_values` op: each of ggml's `nth` threads takes every nth
/// (KV head, 16 channels) pair, summing over all chosen blocks.
pub(super) unsafe extern "C" fn block_values_op(dst: *mut sys::ggml_tensor, ith: c_int, nth: c_int, _: *mut c_void) {
    // SAFETY: ggml calls this only for nodes built by `Context::block_values`,
    // whose sources were checked there (store rows of whole tiles of a known
    // type, contiguous I32 ids, f32 probabilities [bs * n_sel, group, n_kv]
    // with unit element stride), allocated when the graph runs. Ids are
    // checked against the store; each slice below stays inside its tensor:
    // a block's value rows c0..c1 for one KV head, one head's bs
    // probabilities of one block, one output row's channels c0..c1. Threads
    // write disjoint (KV head, channel) ranges of `dst`.
    unsafe {
        let dst = &*dst;
        let (store, ids, p) = (&*dst.src[0], &*dst.src[1], &*dst.src[2]);
        let (hd, group, n_kv) = (dst.ne[0] as usize, dst.ne[1] as usize, dst.ne[2] as usize);
        let ids = block_ids(ids, store.ne[1]);
        let bs = p.ne[0] as usize / ids.len();
        let row = row_bytes(store, bs);
        let tiles = hd.div_ceil(kernels::LANES);
        // Each (KV head, block)'s probabilities, one slice per query head.
        let probs: Vec<&[f32]> = (0..n_kv * ids.len() * group)
            .map(|h| {
                let (kv, i, j) = (h / group / ids.len(), h / group % ids.len(), h % group);
                let x = (p.data as *const u8).add(kv * p.nb[2] + j * p.nb[1] + i * bs * 4);
                std::slice::from_raw_parts(x as *const f32, bs)
            })
            .collect();
        let mut sets: Vec<kernels::RowSet> = Vec::with_capacity(ids.len());
        let mut out: Vec<&mut [f32]> = Vec::with_capacity(group);
        with_row_format(store, |fmt| {
            for item in (ith as usize..n_kv * tiles).step_by(nth as usize) {
                let (kv, c0) = (item / tiles, item % tiles * kernels::LANES);
                let c1 = (c0 + kernels::LANES).min(hd);
                sets.clear();
                sets.extend(ids.iter().enumerate().map(|(i, &b)| {
                    let at = b as usize * store.nb[1] + (kv * hd + c0) * row;
                    let rows = std::slice::from_raw_parts((store.data as *const u8).add(at), (c1 - c0) * row);
                    (rows, &probs[(kv * ids.len() + i) * group..][..group])
                }));
                out.clear();
                out.extend((0..group).map(|j| {
                    let o = (dst.data as *mut u8).add(kv * dst.nb[2] + j * dst.nb[1] + c0 * 4);
                    std::slice::from_raw_parts_mut(o as *mut f32, c1 - c0)
                }));
                kernels::row_dots(fmt, row, row, &sets, &mut out);
            }
        });
    }
}

/// The `value_sums` op: each of ggml's `nth` threads takes every nth
/// (KV head, 16 channels) pair.
pub(super) unsafe extern "C" fn value_sums_op(dst: *mut sys::ggml_tensor, ith: c_int, nth: c_int, _: *mut c_void) {
    // SAFETY: ggml calls this only for nodes built by `Context::value_sums`,
    // whose sources were checked there (f16 values and f32 probabilities,
    // unit element strides, matching shapes) and which are allocated when
    // the graph runs. Each slice below stays inside its tensor: values span
    // channels c0..c1 of one KV head's n keys, probabilities one query
    // head's n, outputs channels c0..c1 of one row. Threads write disjoint
    // (KV head, channel) ranges of `dst`; nothing writes the sources.
    unsafe {
        let dst = &*dst;
        let (v, p) = (&*dst.src[0], &*dst.src[1]);
        let (from, to) = range_of(dst, 2, v.ne[0] as usize);
        let (n, hd, group, n_kv) = (to - from, dst.ne[0] as usize, dst.ne[1] as usize, dst.ne[2] as usize);
        let tiles = hd.div_ceil(kernels::LANES);
        let mut probs: Vec<&[f32]> = Vec::with_capacity(group);
        let mut out: Vec<&mut [f32]> = Vec::with_capacity(group);
        for item in (ith as usize..n_kv * tiles).step_by(nth as usize) {
            let (kv, c0) = (item / tiles, item % tiles * kernels::LANES);
            let c1 = (c0 + kernels::LANES).min(hd);
            let vals = (v.data as *const u8).add(kv * v.nb[2] + c0 * v.nb[1] + from * 2);
            let vals = std::slice::from_raw_parts(vals, (c1 - c0 - 1) * v.nb[1] + 2 * n);
            probs.clear();
            probs.extend((0..group).map(|j| {
                let x = (p.data as *const u8).add(kv * p.nb[2] + j * p.nb[1] + from * 4);
                std::slice::from_raw_parts(x as *const f32, n)
            }));
            out.clear();
            out.extend((0..group).map(|j| {
                let o = (dst.data as *mut u8).add(kv * dst.nb[2] + j * dst.nb[1] + c0 * 4);
                std::slice::from_raw_parts_mut(o as *mut f32, c1 - c0)
            }));
            kernels::value_sums(vals, v.nb[1], &probs, &mut out);
        }
    }
}

/// The `tile_values` op: each of ggml's `nth` threads takes its share of
/// every KV head's probability rows (query heads by queries).
pub(super) unsafe extern "C" fn tile_values_op(dst: *mut sys::ggml_tensor, ith: c_int, nth: c_int, _: *mut c_void) {
    // SAFETY: ggml calls this only for nodes built by `Context::tile_values`,
    // whose sources were checked there (f16 values [n, hd, n_kv] and f32
    // probabilities [n, n_q, n_head], unit element strides) and which are
    // allocated when the graph runs. Each slice below stays inside its
    // tensor: values span one KV head's hd rows of n keys, probabilities one
    // row of n, outputs one row of hd. Threads write disjoint rows of `dst`;
    // nothing writes the sources.
    unsafe {
        let dst = &*dst;
        let (v, p) = (&*dst.src[0], &*dst.src[1]);
        let (n, hd, n_kv) = (v.ne[0] as usize, v.ne[1] as usize, v.ne[2] as usize);
        let (n_q, n_head) = (p.ne[1] as usize, p.ne[2] as usize);
        let rows = n_q * n_head / n_kv;
        let (from, to) = (
            rows * ith as usize / nth as usize,
            rows * (ith as usize + 1) / nth as usize,
        );
        let row = v.nb[1] / 2;
        for kv in 0..n_kv {
            let vals = (v.data as *const u8).add(kv * v.nb[2]);
            let vals = std::slice::from_raw_parts(vals as *const u16, (hd - 1) * row + n);
            // Row r of this KV head: query head kv * group + r / n_q, query r % n_q.
            let at = |t: &sys::ggml_tensor, r: usize| (kv * rows + r) / n_q * t.nb[2] + r % n_q * t.nb[1];
            let probs: Vec<&[f32]> = (from..to)
                .map(|r| std::slice::from_raw_parts((p.data as *const u8).add(at(p, r)) as *const f32, n))
                .collect();
            let mut out: Vec<&mut [f32]> = (from..to)
                .map(|r| std::slice::from_raw_parts_mut((dst.data as *mut u8).add(at(dst, r)) as *mut f32, hd))
                .collect();
            kernels::tile_values(vals, row, &probs, &mut out);
        }
    }
}

/// The `key_scores` op, run by each of ggml's `nth` threads on its share
/// of the keys (whole 16-key tiles).
pub(super) unsafe extern "C" fn key_scores_op(dst: *mut sys::ggml_tensor, ith: c_int, nth: c_int, _: *mut c_void) {
    // SAFETY: ggml calls this only for nodes built by `Context::key_scores`,
    // whose keys are f16 or f32 (checked there).
    unsafe {
        match (*(*dst).src[0]).type_ == GgmlType::F32.sys() {
            true => key_scores_of::<f32>(&*dst, ith as usize, nth as usize),
            false => key_scores_of::<u16>(&*dst, ith as usize, nth as usize),
        }
    }
}

/// `key_scores_op` for keys stored as `T` (f16 bits or f32).
///
/// # Safety
/// `dst` must be a node built by `Context::key_scores` whose keys are `T`.
unsafe fn key_scores_of<T: kernels::KeyValue>(dst: &sys::ggml_tensor, ith: usize, nth: usize) {
    // SAFETY: the sources were checked by `Context::key_scores` (keys of `T`
    // with unit element stride, contiguous f32 queries, matching shapes)
    // and are allocated when the graph runs. Each slice below stays inside
    // its tensor: keys span channels 0..dim of the thread's key range for
    // one KV head, queries one head's rows, outputs one row's key range.
    // Threads write disjoint key ranges of `dst` (the first also the keys
    // outside the valid range, which no thread's range holds); nothing
    // writes the sources.
    unsafe {
        let (k, q) = (&*dst.src[0], &*dst.src[1]);
        let (dim, n_kv) = (k.ne[1] as usize, k.ne[2] as usize);
        let (n_q, n_head) = (q.ne[1] as usize, q.ne[2] as usize);
        // Keys outside the range score -inf: the first thread writes those.
        let (from, to) = range_of(dst, 2, k.ne[0] as usize);
        if ith == 0 {
            fill_outside(dst, from, to, f32::NEG_INFINITY);
        }
        let n = to - from;
        let tiles = n.div_ceil(kernels::LANES);
        let lo = from + (tiles * ith / nth * kernels::LANES).min(n);
        let hi = from + (tiles * (ith + 1) / nth * kernels::LANES).min(n);
        if lo == hi {
            return;
        }
        let size = std::mem::size_of::<T>();
        let row = k.nb[1] / size;
        for h in 0..n_head {
            let kv = h / (n_head / n_kv);
            let keys = (k.data as *const u8).add(kv * k.nb[2] + lo * size) as *const T;
            let keys = std::slice::from_raw_parts(keys, (dim - 1) * row + (hi - lo));
            let qs = std::slice::from_raw_parts((q.data as *const u8).add(h * q.nb[2]) as *const f32, n_q * dim);
            let mut out: Vec<&mut [f32]> = (0..n_q)
                .map(|j| {
                    let o = (dst.data as *mut u8).add(h * dst.nb[2] + j * dst.nb[1] + lo * 4);
                    std::slice::from_raw_parts_mut(o as *mut f32, hi - lo)
                })
                .collect();
            kernels::key_scores(keys, row, qs, dim, &mut out);
        }
    }
}

/// The `put_columns` op: each of ggml's `nth` threads writes its share of
/// the destination rows.
pub(super) unsafe extern "C" fn put_columns_op(dst: *mut sys::ggml_tensor, ith: c_int, nth: c_int, _: *mut c_void) {
    // SAFETY: ggml calls this only for nodes built by `Context::put_columns`,
    // whose tensors were checked there (f16 destination rows with unit
    // element stride, contiguous f32 / f16 vectors of the row count, one I32
    // slot per vector) and are allocated when the graph runs. Slots are
    // checked below against the row length before any write. Threads write
    // disjoint destination rows; nothing writes the sources.
    unsafe {
        let dst = &*dst;
        let (x, slots) = (&*dst.src[1], &*dst.src[2]);
        let (cap, n_rows, n) = (dst.ne[0] as usize, dst.ne[1] as usize, x.ne[1] as usize);
        let slots = std::slice::from_raw_parts(slots.data as *const i32, n);
        assert!(
            slots.iter().all(|&s| (0..cap as i32).contains(&s)),
            "put_columns: slot past the row"
        );
        let (r0, r1) = (
            n_rows * ith as usize / nth as usize,
            n_rows * (ith as usize + 1) / nth as usize,
        );
        let f16_src = x.type_ == GgmlType::F16.sys();
        for r in r0..r1 {
            let row = (dst.data as *mut u8).add(r * dst.nb[1]) as *mut half::f16;
            for (i, &slot) in slots.iter().enumerate() {
                let at = (x.data as *const u8).add(i * x.nb[1] + r * x.nb[0]);
                let v = match f16_src {
                    true => *(at as *const half::f16),
                    false => half::f16::from_f32(*(at as *const f32)),
                };
                *row.add(slot as usize) = v;
            }
        }
    }
}

/// The `softmax_spans` op (and `softmax_rows`, without spans): each of
/// ggml's `nth` threads takes every nth row; `scale` is the f32 whose bits
/// the userdata pointer holds.
pub(super) unsafe extern "C" fn softmax_spans_op(
    dst: *mut sys::ggml_tensor,
    ith: c_int,
    nth: c_int,
    scale: *mut c_void,
) {
    let scale = f32::from_bits(scale as usize as u32);
    // SAFETY: ggml calls this only for nodes built by
    // `Context::softmax_op`: `dst` is an in-place view of the f32 logits
    // (unit element stride), source 1 (if any) the contiguous I32 [4, ne1]
    // spans; both are allocated when the graph runs. Bounds are clamped to
    // the row before use; each slice below is one row. Threads write
    // disjoint rows.
    unsafe {
        let dst = &*dst;
        let spans = (!dst.src[1].is_null())
            .then(|| std::slice::from_raw_parts((*dst.src[1]).data as *const i32, 4 * dst.ne[1] as usize));
        let n = dst.ne[0] as usize;
        for r in (ith as usize..n_rows(dst)).step_by(nth as usize) {
            let i1 = r % dst.ne[1] as usize;
            let row = std::slice::from_raw_parts_mut((dst.data as *mut u8).add(row_offset(dst, r)) as *mut f32, n);
            let spans = spans.map_or([0..n, n..n], |s| clamped_spans(&s[4 * i1..4 * i1 + 4], n));
            kernels::softmax_spans(row, spans, scale);
        }
    }
}

/// Bounds [a0, a1, b0, b1] as two ordered, disjoint ranges inside 0..n.
fn clamped_spans(b: &[i32], n: usize) -> [std::ops::Range<usize>; 2] {
    let at = |i: usize, lo: usize| (b[i].max(0) as usize).clamp(lo, n);
    let a0 = at(0, 0);
    let a1 = at(1, a0);
    let b0 = at(2, a1);
    [a0..a1, b0..at(3, b0)]
}

/// Sets the entries of every row (dim 0) of the f32 tensor `t` outside
/// [from, to) to `value`.
///
/// # Safety
/// `t` must be an allocated f32 tensor with unit element stride, `from <=
/// to <= ne[0]`, and nothing else may access those entries during the call
/// (other threads may use the rest of the rows: no reference covers it).
unsafe fn fill_outside(t: &sys::ggml_tensor, from: usize, to: usize, value: f32) {
    let n = t.ne[0] as usize;
    for i3 in 0..t.ne[3] as usize {
        for i2 in 0..t.ne[2] as usize {
            for i1 in 0..t.ne[1] as usize {
                // SAFETY: the two runs lie inside row (i1, i2, i3) of `t` and
                // are ours alone (the caller's contract).
                unsafe {
                    let row = (t.data as *mut u8).add(i1 * t.nb[1] + i2 * t.nb[2] + i3 * t.nb[3]) as *mut f32;
                    std::slice::from_raw_parts_mut(row, from).fill(value);
                    std::slice::from_raw_parts_mut(row.add(to), n - to).fill(value);
                }
            }
        }
    }
}

/// Rows (dim 0 vectors) of `t`.
fn n_rows(t: &sys::ggml_tensor) -> usize {
    (t.ne[1] * t.ne[2] * t.ne[3]) as usize
}

/// Byte offset of row `r` of `t`, rows counted dim 1 fastest (strides
/// honoured, so views work).
fn row_offset(t: &sys::ggml_tensor, r: usize) -> usize {
    let (n1, n2) = (t.ne[1] as usize, t.ne[2] as usize);
    r % n1 * t.nb[1] + r / n1 % n2 * t.nb[2] + r / (n1 * n2) * t.nb[3]
}

/// The `mask_outside` op: each of ggml's `nth` threads takes every nth row.
pub(super) unsafe extern "C" fn mask_outside_op(dst: *mut sys::ggml_tensor, ith: c_int, nth: c_int, _: *mut c_void) {
    // SAFETY: ggml calls this only for nodes built by `Context::mask_outside`:
    // `dst` and its source `x` are allocated f32 tensors of one shape with
    // unit element stride, source 1 the checked range; each slice below is
    // one row of its tensor. Threads write disjoint rows of `dst`.
    unsafe {
        let dst = &*dst;
        let x = &*dst.src[0];
        let n = dst.ne[0] as usize;
        let (from, to) = range_of(dst, 1, n);
        for r in (ith as usize..n_rows(dst)).step_by(nth as usize) {
            let at = |t: &sys::ggml_tensor| (t.data as *mut u8).add(row_offset(t, r));
            let src = std::slice::from_raw_parts(at(x) as *const f32, n);
            let out = std::slice::from_raw_parts_mut(at(dst) as *mut f32, n);
            out.fill(f32::NEG_INFINITY);
            out[from..to].copy_from_slice(&src[from..to]);
        }
    }
}
