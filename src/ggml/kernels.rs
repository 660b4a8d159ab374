//! Kernels of our own, run as ggml custom ops (`Context::key_scores`,
//! `value_sums`, `tile_values`, `block_scores`, `block_values`,
//! `softmax_spans`).
//! Safe code on slices (but a prefetch hint); the op trampolines in `graph`
//! hand them the data.

mod softmax;
mod tile_values;

pub use softmax::softmax_spans;
pub use tile_values::tile_values;

/// Keys per tile: one vector register of f32 lanes on AVX-512, two on AVX2.
pub const LANES: usize = 16;

/// f16 bits to f32, for finite values (keys are), written so that compilers
/// vectorize it: the magnitude's bits shifted into f32 place and rescaled
/// by 2^112 (the exponent bias difference) also handle subnormals.
#[inline(always)]
fn f16_bits_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let magnitude = f32::from_bits((h & 0x7fff) << 13) * f32::from_bits(0x7780_0000);
    f32::from_bits(magnitude.to_bits() | ((h & 0x8000) << 16))
}

/// How far ahead of the tile in use `fused_scores` prefetches, in keys
/// (two tiles: the next cache line of each row). Measured with
/// `bench/local_attn.rs`, see docs/perf.md.
const PREFETCH_KEYS: usize = 2 * LANES;

/// Asks the CPU to start loading the cache line of `s[i]` (or of the last
/// element, if `i` is past the end). A hint only: no effect on results.
#[inline(always)]
fn prefetch<T>(s: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(last) = s.len().checked_sub(1) {
        let p = &s[i.min(last)] as *const T;
        // SAFETY: `_mm_prefetch` reads nothing and cannot fault; it needs
        // SSE, which every x86-64 CPU has. `p` points into `s`.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (s, i);
}

/// `a * b + c`, fused where the CPU has FMA (built for it: `f32::mul_add`
/// without hardware support is a library call).
#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    if cfg!(target_feature = "fma") {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// A stored key value: f16 bits (the window's keys) or f32 (a prompt
/// step's global keys, dequantized from the block store).
pub trait KeyValue: Copy {
    fn value(self) -> f32;
}

impl KeyValue for u16 {
    #[inline(always)]
    fn value(self) -> f32 {
        f16_bits_to_f32(self)
    }
}

impl KeyValue for f32 {
    #[inline(always)]
    fn value(self) -> f32 {
        self
    }
}

/// A tile of keys in f32 (a plain loop: `array::map` does not always
/// inline, and then does not vectorize).
#[inline(always)]
fn to_f32<T: KeyValue>(src: &[T]) -> [f32; LANES] {
    let mut out = [0f32; LANES];
    for (o, &h) in out.iter_mut().zip(&src[..LANES]) {
        *o = h.value();
    }
    out
}

/// Dot products of queries with keys stored transposed (a row per channel):
/// `out[j][i] = sum_c keys[c * row + i] * q[j * dim + c]` for keys `i` in
/// `0..out[j].len()`. The transposed layout lets each channel's step be a
/// vector FMA over 16 keys, instead of a 64-term dot product ending in a
/// horizontal sum per key and query (what a matmul over key rows does).
pub fn key_scores<T: KeyValue>(keys: &[T], row: usize, q: &[f32], dim: usize, out: &mut [&mut [f32]]) {
    let n = out.first().map_or(0, |o| o.len());
    let full = n - n % LANES;
    match out.len() {
        // Decode (a KV head's query group): convert and multiply in registers.
        1 => fused_scores::<T, 1>(keys, row, q, dim, out, full),
        2 => fused_scores::<T, 2>(keys, row, q, dim, out, full),
        3 => fused_scores::<T, 3>(keys, row, q, dim, out, full),
        4 => fused_scores::<T, 4>(keys, row, q, dim, out, full),
        _ => tiled_scores(keys, row, q, dim, out, full),
    }
    for i in full..n {
        for (j, o) in out.iter_mut().enumerate() {
            o[i] = (0..dim).map(|c| keys[c * row + i].value() * q[j * dim + c]).sum();
        }
    }
}

/// `key_scores` of whole tiles for `G` queries, each key converted once.
fn fused_scores<T: KeyValue, const G: usize>(
    keys: &[T],
    row: usize,
    q: &[f32],
    dim: usize,
    out: &mut [&mut [f32]],
    full: usize,
) {
    for i in (0..full).step_by(LANES) {
        let mut acc = [[0f32; LANES]; G];
        for c in 0..dim {
            // A tile reads 32 bytes from each of `dim` rows, rows that lie
            // in different pages: the hardware prefetcher does not follow.
            prefetch(keys, c * row + i + PREFETCH_KEYS);
            let k = to_f32(&keys[c * row + i..][..LANES]);
            for (g, a) in acc.iter_mut().enumerate() {
                let qc = q[g * dim + c];
                for (a, k) in a.iter_mut().zip(k) {
                    *a = fma(k, qc, *a);
                }
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            o[i..i + LANES].copy_from_slice(&a);
        }
    }
}

/// `key_scores` of whole tiles for many queries (a prompt's): each tile
/// converted once into f32, then read by the queries four at a time.
fn tiled_scores<T: KeyValue>(keys: &[T], row: usize, q: &[f32], dim: usize, out: &mut [&mut [f32]], full: usize) {
    // One tile of keys in f32, converted once for all queries.
    let mut tile = vec![[0f32; LANES]; dim];
    for i in (0..full).step_by(LANES) {
        for (c, t) in tile.iter_mut().enumerate() {
            prefetch(keys, c * row + i + PREFETCH_KEYS);
            *t = to_f32(&keys[c * row + i..][..LANES]);
        }
        let mut j = 0;
        while j < out.len() {
            let (qs, os) = (&q[j * dim..], &mut out[j..]);
            j += match os.len() {
                1 => tile_scores::<1>(&tile, qs, dim, os, i),
                2 => tile_scores::<2>(&tile, qs, dim, os, i),
                3 => tile_scores::<3>(&tile, qs, dim, os, i),
                _ => tile_scores::<4>(&tile, qs, dim, os, i),
            };
        }
    }
}

/// The first `G` queries' scores for the key tile at `i`; returns `G`.
fn tile_scores<const G: usize>(
    tile: &[[f32; LANES]],
    q: &[f32],
    dim: usize,
    out: &mut [&mut [f32]],
    i: usize,
) -> usize {
    let mut acc = [[0f32; LANES]; G];
    for (c, k) in tile.iter().enumerate() {
        for (g, a) in acc.iter_mut().enumerate() {
            let qc = q[g * dim + c];
            for (a, k) in a.iter_mut().zip(k) {
                *a = fma(*k, qc, *a);
            }
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        o[i..i + LANES].copy_from_slice(&a);
    }
    G
}

/// Probability-weighted sums of values stored transposed (a row per
/// channel, f16): `out[g][c] = sum_i value(c, i) * p[g][i]` over `i` in
/// `0..p[g].len()`, for channels `c` in `0..out[g].len()`, channel `c`'s
/// row starting at byte `c * stride` of `vals`. Each row is read once,
/// front to back, for all `p.len()` vectors (decode's P·V over the local
/// window: a KV head's query group): `row_dots` over the whole tiles, then
/// each row's last `n % 16` values.
pub fn value_sums(vals: &[u8], stride: usize, p: &[&[f32]], out: &mut [&mut [f32]]) {
    assert_eq!(p.len(), out.len(), "value_sums: one output per vector");
    let Some(n) = p.first().map(|x| x.len()) else { return };
    let full = n - n % LANES;
    row_dots(&RowFormat::F16, 2 * full, stride, &[(vals, p)], out);
    for (o, p) in out.iter_mut().zip(p) {
        for (c, o) in o.iter_mut().enumerate() {
            let row = &vals[c * stride..][..2 * n];
            for (v, &x) in row[2 * full..].chunks_exact(2).zip(&p[full..]) {
                *o += f16_bits_to_f32(u16::from_le_bytes(v.try_into().expect("two bytes"))) * x;
            }
        }
    }
}

/// How the rows of a memory block are stored (their ggml type).
pub enum RowFormat<'a> {
    F32,
    F16,
    /// Blocks of 32 values: an f16 scale and 32 signed bytes.
    Q8_0,
    /// Blocks of 32 values: an f16 scale and 16 bytes, value j in the low
    /// nibble of byte j and value j + 16 in its high nibble, offset by 8.
    Q4_0,
    /// Any other type, converted to f32 a row at a time (ggml's `to_float`).
    Convert(&'a dyn Fn(&[u8], &mut [f32])),
}

/// Bytes of one q8_0 block (32 values).
const Q8_0_BYTES: usize = 34;
/// Bytes of one q4_0 block (32 values).
const Q4_0_BYTES: usize = 18;

/// Per-lane partial dot products of one row with `G` vectors.
type Lanes<const G: usize> = [[f32; LANES]; G];

/// Adds the products of stored rows with vectors `xs` (one per query head)
/// into lane accumulators: `acc[i][g][l] += sum_j row_i[j] * xs[g][j]` over
/// `j % LANES == l`, for the `acc.len()` rows of `row_bytes` bytes in
/// `rows`, `stride` bytes apart. Lanes, not sums: a row's dot products end
/// in one horizontal sum (`lane_sum`), which the caller may defer over
/// several blocks' rows. Rows hold whole tiles (and whole quantization
/// blocks); `xs` may run longer (its first values are read), except for
/// `RowFormat::Convert`, whose rows hold `xs[g].len()` values, converted
/// into `buf`. `next` holds the rows the caller reads next (same layout),
/// to prefetch.
fn accumulate_rows<const G: usize>(
    fmt: &RowFormat,
    (rows, next): (&[u8], &[u8]),
    (row_bytes, stride): (usize, usize),
    xs: [&[f32]; G],
    acc: &mut [Lanes<G>],
    buf: &mut [f32],
) {
    let row = |r: usize| &rows[r * stride..][..row_bytes];
    let next = |r: usize| next.get(r * stride..).map_or(&[][..], |n| &n[..row_bytes.min(n.len())]);
    match fmt {
        RowFormat::Q8_0 => add_rows(row, next, &xs, acc, Q8_0_BYTES, q8_0_block),
        RowFormat::Q4_0 => add_rows(row, next, &xs, acc, Q4_0_BYTES, q4_0_block),
        RowFormat::F16 => add_rows(row, next, &xs, acc, 2 * LANES, f16_tile),
        RowFormat::F32 => add_rows(row, next, &xs, acc, 4 * LANES, f32_tile),
        RowFormat::Convert(to_f32) => {
            for (r, out) in acc.iter_mut().enumerate() {
                to_f32(row(r), buf);
                let mut a = [[0f32; LANES]; G];
                for (t, k) in buf.chunks_exact(LANES).enumerate() {
                    add_products(k.try_into().expect("a tile"), &xs, t * LANES, &mut a);
                }
                add_lanes(out, &a);
            }
        }
    }
}

/// Values of each row read per pass over the rows (at most: rows are cut
/// at whole steps), so that the vectors' matching values stay in the L1
/// cache while every row reads them. Long rows (the window's values, 4K+)
/// read whole would fetch the vectors from L2 for each row.
const SEGMENT: usize = 512;

/// `accumulate_rows` for rows stored in steps of `step_bytes`, each
/// decoded by `decode` into `T` tiles of f32; row `r` is `row(r)`, and
/// `next(r)` the same row of the rows read next.
///
/// Reading a piece of a row (a segment) prefetches the piece the same row
/// reads one pass later: its next segment, or the next rows' first one.
/// The pieces lie in different pages (channel rows of a buffer, chosen
/// blocks), where the hardware prefetcher does not follow (docs/perf.md).
#[inline(always)]
fn add_rows<'a, const G: usize, const T: usize>(
    row: impl Fn(usize) -> &'a [u8],
    next: impl Fn(usize) -> &'a [u8],
    xs: &[&[f32]; G],
    acc: &mut [Lanes<G>],
    step_bytes: usize,
    decode: impl Fn(&[u8]) -> [[f32; LANES]; T],
) {
    let Some(row_bytes) = (!acc.is_empty()).then(|| row(0).len()) else {
        return;
    };
    let segment = step_bytes * (SEGMENT / (T * LANES)).max(1);
    for s0 in (0..row_bytes).step_by(segment) {
        let first = s0 / step_bytes * T; // the segment's first tile
        let end = (s0 + segment).min(row_bytes);
        for (r, out) in acc.iter_mut().enumerate() {
            let row = row(r);
            prefetch_lines(if end < row_bytes {
                &row[end..(end + segment).min(row_bytes)]
            } else {
                next(r)
            });
            // Accumulators local to the row, so that they live in registers
            // (updated through `out` they stayed in memory: scalar code).
            let mut a = [[0f32; LANES]; G];
            for (s, step) in row[s0..end].chunks_exact(step_bytes).enumerate() {
                for (t, k) in decode(step).iter().enumerate() {
                    add_products(k, xs, (first + s * T + t) * LANES, &mut a);
                }
            }
            add_lanes(out, &a);
        }
    }
}

/// Prefetches every cache line of `s` (a piece of a row: at most a
/// segment, or a prompt tile's probabilities for one chunk of keys).
#[inline(always)]
fn prefetch_lines<T>(s: &[T]) {
    for i in (0..s.len()).step_by((64 / std::mem::size_of::<T>()).max(1)) {
        prefetch(s, i);
    }
    prefetch(s, s.len().saturating_sub(1)); // the last line, if the piece is not aligned
}

/// The f16 scale at the start of a quantization block.
#[inline(always)]
fn block_scale(blk: &[u8]) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([blk[0], blk[1]]))
}

/// A q8_0 block's 32 values: scale x signed bytes.
#[inline(always)]
fn q8_0_block(blk: &[u8]) -> [[f32; LANES]; 2] {
    let d = block_scale(blk);
    let mut k = [[0f32; LANES]; 2];
    for (h, k) in k.iter_mut().enumerate() {
        for (k, &q) in k.iter_mut().zip(&blk[2 + h * LANES..][..LANES]) {
            *k = f32::from(q as i8) * d;
        }
    }
    k
}

/// A q4_0 block's 32 values: the low nibbles, then the high ones, less 8.
#[inline(always)]
fn q4_0_block(blk: &[u8]) -> [[f32; LANES]; 2] {
    let d = block_scale(blk);
    let mut k = [[0f32; LANES]; 2];
    for (h, k) in k.iter_mut().enumerate() {
        for (k, &q) in k.iter_mut().zip(&blk[2..2 + LANES]) {
            *k = (f32::from((q >> (4 * h)) & 0x0f) - 8.0) * d;
        }
    }
    k
}

/// 16 f16 values.
#[inline(always)]
fn f16_tile(bytes: &[u8]) -> [[f32; LANES]; 1] {
    let mut k = [0f32; LANES];
    for (k, b) in k.iter_mut().zip(bytes.chunks_exact(2)) {
        *k = f16_bits_to_f32(u16::from_le_bytes(b.try_into().expect("two bytes")));
    }
    [k]
}

/// 16 f32 values.
#[inline(always)]
fn f32_tile(bytes: &[u8]) -> [[f32; LANES]; 1] {
    let mut k = [0f32; LANES];
    for (k, b) in k.iter_mut().zip(bytes.chunks_exact(4)) {
        *k = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    [k]
}

/// `out += a`, lane by lane.
#[inline(always)]
fn add_lanes<const G: usize>(out: &mut Lanes<G>, a: &Lanes<G>) {
    for g in 0..G {
        for l in 0..LANES {
            out[g][l] += a[g][l];
        }
    }
}

/// Stored rows and the vectors they are multiplied with.
pub type RowSet<'a> = (&'a [u8], &'a [&'a [f32]]);

/// Dot products of stored rows with vectors, summed over row sets:
/// `out[g][i] = sum over sets (rows, xs) of row_i · xs[g]`, for the
/// `out[g].len()` rows of each set, each row `row_bytes` bytes (whole
/// tiles) and `stride` bytes after the one before. Decode's window values
/// are one set (channel rows, the query heads' probabilities); its block
/// values are one set per block (channel rows, that block's probabilities),
/// summed.
pub fn row_dots(fmt: &RowFormat, row_bytes: usize, stride: usize, sets: &[RowSet], out: &mut [&mut [f32]]) {
    let rows = (row_bytes, stride); // every set's layout
                                    // Vectors four at a time: 4 x 16 lanes of accumulators per row.
    let n = out.len();
    for g0 in (0..n).step_by(4) {
        let out = &mut out[g0..(g0 + 4).min(n)];
        match out.len() {
            1 => summed_row_dots::<1>(fmt, rows, sets, g0, out),
            2 => summed_row_dots::<2>(fmt, rows, sets, g0, out),
            3 => summed_row_dots::<3>(fmt, rows, sets, g0, out),
            _ => summed_row_dots::<4>(fmt, rows, sets, g0, out),
        }
    }
}

/// `row_dots` for vectors `g0..g0 + G`, `ROWS` rows at a time (their
/// accumulators on the stack).
fn summed_row_dots<const G: usize>(
    fmt: &RowFormat,
    (row_bytes, stride): (usize, usize),
    sets: &[RowSet],
    g0: usize,
    out: &mut [&mut [f32]],
) {
    const ROWS: usize = 16;
    let n = out[0].len();
    let mut buf = match fmt {
        RowFormat::Convert(_) => vec![0f32; sets.first().map_or(0, |(_, xs)| xs[g0].len())],
        _ => Vec::new(),
    };
    for r0 in (0..n).step_by(ROWS) {
        let mut acc = [[[0f32; LANES]; G]; ROWS];
        let acc = &mut acc[..ROWS.min(n - r0)];
        for (s, (data, xs)) in sets.iter().enumerate() {
            let xs = std::array::from_fn(|g| xs[g0 + g]);
            // What is read next: this group of rows in the next set, else
            // the next group in the first set.
            let next = match sets.get(s + 1) {
                Some((d, _)) => &d[r0 * stride..],
                None => sets[0].0.get((r0 + ROWS) * stride..).unwrap_or_default(),
            };
            accumulate_rows(
                fmt,
                (&data[r0 * stride..], next),
                (row_bytes, stride),
                xs,
                acc,
                &mut buf,
            );
        }
        for (i, a) in acc.iter().enumerate() {
            for (o, a) in out.iter_mut().zip(a) {
                o[r0 + i] = lane_sum(a);
            }
        }
    }
}

/// Dot products down the columns of stored rows: `out[g][t] = sum_c
/// row_c[t] * xs[g][c]` over the `xs[g].len()` rows of `rows` (`row_bytes`
/// bytes each, `stride` apart), for the `out[g].len()` values of a row.
/// Decode's block keys: a row per channel, a column per token, so each
/// channel's step is a vector FMA per query over the tokens of a tile, with
/// no horizontal sum per key (what a block's 64-value token rows paid, per
/// key and query head: twice the time per key of the window's keys).
///
/// `next`: the rows read after these (the same layout, or empty), whose
/// pieces are prefetched as these are read: the next block, in other pages.
pub fn column_dots(
    fmt: &RowFormat,
    (rows, row_bytes, stride): (&[u8], usize, usize),
    next: &[u8],
    xs: &[&[f32]],
    out: &mut [&mut [f32]],
) {
    let layout = (rows, row_bytes, stride);
    if let RowFormat::Convert(to_f32) = fmt {
        // Other types: every row converted once, then read as f32 rows (a
        // conversion per 32-value step read 14-19% slower for q5_0).
        let n = out.first().map_or(0, |o| o.len());
        let mut f32_rows = vec![0u8; xs.first().map_or(0, |x| x.len()) * n * 4];
        let mut buf = vec![0f32; n];
        for (c, dst) in f32_rows.chunks_exact_mut(n * 4).enumerate() {
            to_f32(&rows[c * stride..][..row_bytes], &mut buf);
            for (d, x) in dst.chunks_exact_mut(4).zip(&buf) {
                d.copy_from_slice(&x.to_le_bytes());
            }
        }
        return column_dots(&RowFormat::F32, (&f32_rows, n * 4, n * 4), &[], xs, out);
    }
    for (xs, out) in xs.chunks(4).zip(out.chunks_mut(4)) {
        match xs.len() {
            1 => column_format::<1>(fmt, layout, next, xs, out),
            2 => column_format::<2>(fmt, layout, next, xs, out),
            3 => column_format::<3>(fmt, layout, next, xs, out),
            _ => column_format::<4>(fmt, layout, next, xs, out),
        }
    }
}

/// `column_dots` for `G` vectors, by the rows' format.
fn column_format<const G: usize>(
    fmt: &RowFormat,
    layout: (&[u8], usize, usize),
    next: &[u8],
    xs: &[&[f32]],
    out: &mut [&mut [f32]],
) {
    let xs: [&[f32]; G] = std::array::from_fn(|g| xs[g]);
    match fmt {
        RowFormat::Q8_0 => column_steps(layout, next, &xs, out, Q8_0_BYTES, q8_0_block),
        RowFormat::Q4_0 => column_steps(layout, next, &xs, out, Q4_0_BYTES, q4_0_block),
        RowFormat::F16 => column_steps(layout, next, &xs, out, 2 * LANES, f16_tile),
        RowFormat::F32 | RowFormat::Convert(_) => column_steps(layout, next, &xs, out, 4 * LANES, f32_tile),
    }
}

/// `column_dots` of rows stored in steps of `step_bytes`, each decoded by
/// `decode` into `T` tiles: per step, every row's piece (a block's keys fit
/// in L1, so the passes over them after the first hit it).
#[inline(always)]
fn column_steps<const G: usize, const T: usize>(
    (rows, row_bytes, stride): (&[u8], usize, usize),
    next: &[u8],
    xs: &[&[f32]; G],
    out: &mut [&mut [f32]],
    step_bytes: usize,
    decode: impl Fn(&[u8]) -> [[f32; LANES]; T],
) {
    let n_rows = xs[0].len();
    for (s, s0) in (0..row_bytes).step_by(step_bytes).enumerate() {
        let mut acc = [[[0f32; LANES]; T]; G];
        for c in 0..n_rows {
            if let Some(piece) = next.get(c * stride + s0..) {
                prefetch_lines(&piece[..step_bytes.min(piece.len())]);
            }
            let tiles = decode(&rows[c * stride + s0..][..step_bytes]);
            for (a, x) in acc.iter_mut().zip(xs) {
                let w = x[c];
                for (a, k) in a.iter_mut().zip(&tiles) {
                    for l in 0..LANES {
                        a[l] = fma(k[l], w, a[l]);
                    }
                }
            }
        }
        for (o, a) in out.iter_mut().zip(&acc) {
            for (t, a) in a.iter().enumerate() {
                o[(s * T + t) * LANES..][..LANES].copy_from_slice(a);
            }
        }
    }
}

/// `a[g] += k * xs[g][at..at + LANES]`, lane by lane.
#[inline(always)]
fn add_products<const G: usize>(k: &[f32; LANES], xs: &[&[f32]; G], at: usize, a: &mut Lanes<G>) {
    for g in 0..G {
        let x = &xs[g][at..at + LANES];
        for l in 0..LANES {
            a[g][l] = fma(k[l], x[l], a[g][l]);
        }
    }
}

/// The sum of a lane accumulator, pairwise (so that it vectorizes).
#[inline(always)]
fn lane_sum(a: &[f32; LANES]) -> f32 {
    let mut v = *a;
    let mut w = LANES / 2;
    while w > 0 {
        for l in 0..w {
            v[l] += v[l + w];
        }
        w /= 2;
    }
    v[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_half() {
        for bits in (0..=u16::MAX).filter(|b| b & 0x7c00 != 0x7c00) {
            let want = half::f16::from_bits(bits).to_f32();
            assert_eq!(f16_bits_to_f32(bits).to_bits(), want.to_bits(), "bits {bits:#06x}");
        }
    }

    /// q8_0 rows of `n` values (an f16 scale, then 32 signed bytes per 32)
    /// and their values.
    fn q8_0_rows(n_rows: usize, n: usize, seed: usize) -> (Vec<u8>, Vec<f32>) {
        let (mut bytes, mut vals) = (Vec::new(), Vec::new());
        for b in 0..n_rows * n / 32 {
            let d = half::f16::from_f32(0.01 + (b * 7 + seed) as f32 % 5.0 / 100.0);
            bytes.extend(d.to_le_bytes());
            for j in 0..32 {
                let q = ((b * 31 + j * 17 + seed) % 255) as i32 - 127;
                bytes.push(q as i8 as u8);
                vals.push(q as f32 * d.to_f32());
            }
        }
        (bytes, vals)
    }

    /// Each set's stored rows and the values they hold.
    type RowSets = Vec<(Vec<u8>, Vec<f32>)>;

    /// Rows of `vals` quantized by ggml to type `ty`, and ggml's values of them.
    fn ggml_rows(ty: crate::ggml::GgmlType, vals: &[f32], n: usize) -> (Vec<u8>, Vec<f32>) {
        let info = crate::ggml::type_info(ty).unwrap();
        let mut bytes = vec![0u8; info.row_size(n as u64) as usize * vals.len() / n];
        crate::ggml::quantize(ty, vals, n, &mut bytes);
        let back = crate::ggml::dequantize(ty, &bytes, vals.len());
        (bytes, back)
    }

    fn plain_dots(vals: &[f32], n: usize, x: &[f32]) -> Vec<f32> {
        vals.chunks(n)
            .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }

    #[test]
    fn row_dots_sum_plain_dot_products_over_sets() {
        // More rows than one stack tile of accumulators (16), not a multiple.
        let (n_rows, n) = (37, 64);
        let sets: Vec<(Vec<u8>, Vec<f32>)> = (0..3).map(|s| q8_0_rows(n_rows, n, s)).collect();
        // 1 to 6 vectors: groups of up to four, and what is left.
        for g in 1..=6 {
            let xs: Vec<Vec<f32>> = (0..sets.len() * g)
                .map(|v| (0..n).map(|i| ((i * 13 + v * 7) % 23) as f32 / 11.0 - 1.0).collect())
                .collect();
            let as_f32 = |src: &[u8], dst: &mut [f32]| {
                for (d, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                    *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            };
            // (format, row bytes, each set's rows and their values)
            let mut cases: Vec<(RowFormat, usize, RowSets)> = Vec::new();
            cases.push((RowFormat::Q8_0, n / 32 * Q8_0_BYTES, sets.clone()));
            let f32_sets: Vec<(Vec<u8>, Vec<f32>)> = sets
                .iter()
                .map(|(_, v)| (v.iter().flat_map(|x| x.to_le_bytes()).collect(), v.clone()))
                .collect();
            cases.push((RowFormat::F32, n * 4, f32_sets.clone()));
            cases.push((RowFormat::Convert(&as_f32), n * 4, f32_sets));
            // q4_0 and f16 rows as ggml writes them.
            for (fmt, ty, row_bytes) in [
                (RowFormat::Q4_0, crate::ggml::GgmlType::Q4_0, n / 32 * Q4_0_BYTES),
                (RowFormat::F16, crate::ggml::GgmlType::F16, n * 2),
            ] {
                cases.push((fmt, row_bytes, sets.iter().map(|(_, v)| ggml_rows(ty, v, n)).collect()));
            }
            for (fmt, row_bytes, sets) in &cases {
                let vectors: Vec<&[f32]> = xs.iter().map(|x| x.as_slice()).collect();
                let input: Vec<RowSet> = (0..sets.len())
                    .map(|s| (&sets[s].0[..], &vectors[s * g..(s + 1) * g]))
                    .collect();
                let mut out = vec![vec![0f32; n_rows]; g];
                let mut views: Vec<&mut [f32]> = out.iter_mut().map(|o| o.as_mut_slice()).collect();
                row_dots(fmt, *row_bytes, *row_bytes, &input, &mut views);
                for (j, o) in out.iter().enumerate() {
                    let mut want = vec![0f32; n_rows];
                    for (s, (_, vals)) in sets.iter().enumerate() {
                        for (w, d) in want.iter_mut().zip(plain_dots(vals, n, &xs[s * g + j])) {
                            *w += d;
                        }
                    }
                    for (i, (&got, &want)) in o.iter().zip(&want).enumerate() {
                        assert!(
                            (got - want).abs() < 1e-3 * want.abs().max(1.0),
                            "vector {j} row {i}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn column_dots_match_plain_sums_down_columns() {
        // 24 channel rows of 64 values (two q8_0 / q4_0 blocks, four tiles).
        let (n_rows, n) = (24, 64);
        let (q8, q8_vals) = q8_0_rows(n_rows, n, 3);
        let as_f32 = |src: &[u8], dst: &mut [f32]| {
            for (d, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        };
        let f32_bytes: Vec<u8> = q8_vals.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut cases: Vec<(RowFormat, usize, Vec<u8>, Vec<f32>)> = vec![
            (RowFormat::Q8_0, n / 32 * Q8_0_BYTES, q8, q8_vals.clone()),
            (RowFormat::F32, n * 4, f32_bytes.clone(), q8_vals.clone()),
            (RowFormat::Convert(&as_f32), n * 4, f32_bytes, q8_vals.clone()),
        ];
        for (fmt, ty, row_bytes) in [
            (RowFormat::Q4_0, crate::ggml::GgmlType::Q4_0, n / 32 * Q4_0_BYTES),
            (RowFormat::F16, crate::ggml::GgmlType::F16, n * 2),
        ] {
            let (bytes, vals) = ggml_rows(ty, &q8_vals, n);
            cases.push((fmt, row_bytes, bytes, vals));
        }
        // 1 to 6 vectors: groups of up to four, and what is left.
        for g in 1..=6 {
            let xs: Vec<Vec<f32>> = (0..g)
                .map(|v| {
                    (0..n_rows)
                        .map(|c| ((c * 13 + v * 7) % 23) as f32 / 11.0 - 1.0)
                        .collect()
                })
                .collect();
            let vectors: Vec<&[f32]> = xs.iter().map(|x| x.as_slice()).collect();
            for (fmt, row_bytes, bytes, vals) in &cases {
                let mut out = vec![vec![0f32; n]; g];
                let mut views: Vec<&mut [f32]> = out.iter_mut().map(|o| o.as_mut_slice()).collect();
                // Rows read next (prefetched; shorter than these) or none.
                let next: &[u8] = if g % 2 == 1 { &bytes[bytes.len() / 3..] } else { &[] };
                column_dots(fmt, (bytes, *row_bytes, *row_bytes), next, &vectors, &mut views);
                for (j, o) in out.iter().enumerate() {
                    for (t, &got) in o.iter().enumerate() {
                        let want: f32 = (0..n_rows).map(|c| vals[c * n + t] * xs[j][c]).sum();
                        assert!(
                            (got - want).abs() < 1e-3 * want.abs().max(1.0),
                            "vector {j} column {t}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// `len` f16 values (as bits) in [-1, 1].
    fn f16_values(len: usize) -> Vec<u16> {
        (0..len)
            .map(|i| half::f16::from_f32(((i * 7919) % 201) as f32 / 100.0 - 1.0).to_bits())
            .collect()
    }

    #[test]
    fn value_sums_match_plain_dot_products() {
        // Rows longer than their values (a window of a larger buffer),
        // lengths that are not a multiple of 16, shorter and longer than
        // a segment (the part of each row read per pass).
        for (dim, n, row) in [(24, 37, 40), (20, 2 * SEGMENT + 77, 2 * SEGMENT + 90)] {
            value_sums_case(dim, n, row);
        }
    }

    fn value_sums_case(dim: usize, n: usize, row: usize) {
        let vals = f16_values(dim * row);
        for r in 1..=7 {
            let p: Vec<Vec<f32>> = (0..r)
                .map(|j| (0..n).map(|i| ((i * 31 + j * 5) % 17) as f32 / 8.0 - 1.0).collect())
                .collect();
            let ps: Vec<&[f32]> = p.iter().map(|x| x.as_slice()).collect();
            let mut out = vec![vec![0f32; dim]; r];
            let mut views: Vec<&mut [f32]> = out.iter_mut().map(|o| o.as_mut_slice()).collect();
            let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
            value_sums(&bytes, 2 * row, &ps, &mut views);
            for (j, o) in out.iter().enumerate() {
                for (c, &got) in o.iter().enumerate() {
                    let want: f32 = (0..n)
                        .map(|i| half::f16::from_bits(vals[c * row + i]).to_f32() * p[j][i])
                        .sum();
                    assert!((got - want).abs() < 1e-4, "vector {j} channel {c}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn key_scores_match_plain_dot_products() {
        let (dim, row) = (64, 40);
        let keys = f16_values(dim * row);
        key_scores_case(&keys, row, dim);
        let keys: Vec<f32> = keys.iter().map(|&k| half::f16::from_bits(k).to_f32() * 1.001).collect();
        key_scores_case(&keys, row, dim);
    }

    fn key_scores_case<T: KeyValue>(keys: &[T], row: usize, dim: usize) {
        let n = 37;
        for r in 1..=7 {
            let q: Vec<f32> = (0..r * dim).map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0).collect();
            let mut out = vec![vec![0f32; n]; r];
            let mut views: Vec<&mut [f32]> = out.iter_mut().map(|o| o.as_mut_slice()).collect();
            key_scores(keys, row, &q, dim, &mut views);
            for (j, o) in out.iter().enumerate() {
                for (i, &got) in o.iter().enumerate() {
                    let want: f32 = (0..dim).map(|c| keys[c * row + i].value() * q[j * dim + c]).sum();
                    assert!((got - want).abs() < 1e-4, "query {j} key {i}: {got} vs {want}");
                }
            }
        }
    }
}
