//! P·V of a prompt tile: many probability rows (a tile's queries, for
//! every query head of a KV head) times one KV head's values, stored
//! transposed (a row of keys per channel, f16).
//!
//! ggml's f16 matmul (tinyBLAS on x86) computes these as dot products
//! along the keys, after a pass that converts the probabilities to f16; at
//! 8K tokens of depth the two took 44% of a prefill (docs/perf.md). Here a
//! chunk of keys is turned token-major once (f32, 32 KiB: L1), and each key
//! then costs one broadcast probability per row against a vector of 16
//! channels: `ROWS` FMAs for `ROWS` + 1 loads.
//!
//! Probabilities are rounded to f16 first, as ggml's matmul converts its
//! f32 operand to the f16 of the values: the model sees what llama.cpp's
//! path gives it (Gemma 3 tells the difference, tests/gemma3.rs).

use std::ops::Range;

use super::{f16_bits_to_f32, fma, prefetch_lines, LANES};

/// Bytes of a chunk's values in f32: within L1, for every row block to reread.
const CHUNK_BYTES: usize = 32 << 10;
/// The most keys per chunk (the probability buffer's size).
const MAX_CHUNK: usize = 256;
/// Probability rows per register block: `tile_scores`' shape, four rows
/// of a 16-lane vector of channels.
const ROWS: usize = 4;

/// `out[r][c] = sum_k f16(p[r][k]) * value(c, k)` over `k` in
/// `0..p[r].len()`, channel `c`'s values at `vals[c * row..]`, for channels
/// `c` in `0..out[r].len()`. Every row of `p` has one length, every row of
/// `out` another.
pub fn tile_values(vals: &[u16], row: usize, p: &[&[f32]], out: &mut [&mut [f32]]) {
    assert_eq!(p.len(), out.len(), "tile_values: an output per probability row");
    let n = p.first().map_or(0, |r| r.len());
    let hd = out.first().map_or(0, |o| o.len());
    assert!(p.iter().all(|r| r.len() == n) && out.iter().all(|o| o.len() == hd));
    out.iter_mut().for_each(|o| o.fill(0.0));
    let vecs = hd.div_ceil(LANES);
    let len = (CHUNK_BYTES / (vecs * LANES * 4)).clamp(LANES, MAX_CHUNK);
    // Channel vector j's values of key i at chunk[j * len + i].
    let mut chunk = vec![[0f32; LANES]; vecs * len];
    for k0 in (0..n).step_by(len) {
        let keys = k0..(k0 + len).min(n);
        token_major(vals, row, hd, keys.clone(), len, &mut chunk);
        for r0 in (0..p.len()).step_by(ROWS) {
            let r1 = (r0 + ROWS).min(p.len());
            // The next rows' probabilities: each row is read a chunk at a
            // time, rows far apart, which the hardware does not foresee.
            let next = r1..(r1 + ROWS).min(p.len());
            p[next].iter().for_each(|r| prefetch_lines(&r[keys.clone()]));
            let probs = rounded(&p[r0..r1], keys.clone());
            for j in 0..vecs {
                let acc = row_block(&chunk[j * len..][..keys.len()], &probs);
                let c = j * LANES..(j * LANES + LANES).min(hd);
                for (o, a) in out[r0..r1].iter_mut().zip(&acc) {
                    for (o, a) in o[c.clone()].iter_mut().zip(a) {
                        *o += a;
                    }
                }
            }
        }
    }
}

/// Values of keys `keys` in f32 into `chunk` (`len` keys per channel
/// vector); channels past `hd` are zero.
fn token_major(vals: &[u16], row: usize, hd: usize, keys: Range<usize>, len: usize, chunk: &mut [[f32; LANES]]) {
    if !hd.is_multiple_of(LANES) {
        chunk.iter_mut().for_each(|x| x.fill(0.0));
    }
    for c in 0..hd {
        let src = &vals[c * row + keys.start..c * row + keys.end];
        for (dst, &h) in chunk[c / LANES * len..].iter_mut().zip(src) {
            dst[c % LANES] = f16_bits_to_f32(h);
        }
    }
}

/// Up to `ROWS` rows' probabilities of keys `keys`, rounded to f16; rows
/// past `p.len()` are zero.
fn rounded(p: &[&[f32]], keys: Range<usize>) -> [[f32; MAX_CHUNK]; ROWS] {
    let mut probs = [[0f32; MAX_CHUNK]; ROWS];
    for (dst, src) in probs.iter_mut().zip(p) {
        for (d, &x) in dst.iter_mut().zip(&src[keys.clone()]) {
            *d = round_to_f16(x);
        }
    }
    probs
}

/// One channel vector's sums over a chunk's keys (`vals`, a vector per
/// key) for `ROWS` rows of probabilities.
#[inline(always)]
fn row_block(vals: &[[f32; LANES]], probs: &[[f32; MAX_CHUNK]; ROWS]) -> [[f32; LANES]; ROWS] {
    let mut acc = [[0f32; LANES]; ROWS];
    for (k, v) in vals.iter().enumerate() {
        for (a, pr) in acc.iter_mut().zip(probs) {
            let pk = pr[k];
            for (a, v) in a.iter_mut().zip(v) {
                *a = fma(pk, *v, *a);
            }
        }
    }
    acc
}

/// `x` (a probability: finite, >= 0) rounded to the nearest f16, ties to
/// even, as ggml's f32 -> f16 conversion rounds it; back in f32.
#[inline(always)]
fn round_to_f16(x: f32) -> f32 {
    // f16 normals (from 2^-14): 10 mantissa bits kept, the rest rounded.
    let b = x.to_bits();
    let normal = f32::from_bits((b + 0x0fff + ((b >> 13) & 1)) & !0x1fff);
    // Below, f16 steps are 2^-24: the ulp of 0.5, so adding 0.5 rounds to them.
    let subnormal = (x + 0.5) - 0.5;
    if x >= f32::from_bits(0x3880_0000) {
        normal
    } else {
        subnormal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_matches_ggmls_conversion() {
        let mut x = 0f32;
        // f32s from 0 to 1 in steps of 701 ulp (1.5M values), then every tie.
        while x <= 1.0 {
            let want = half::f16::from_f32(x).to_f32();
            assert_eq!(round_to_f16(x).to_bits(), want.to_bits(), "{x:e}");
            x = f32::from_bits(x.to_bits() + 701);
        }
        for bits in 0..0x3c00u16 {
            let h = half::f16::from_bits(bits).to_f32();
            let next = half::f16::from_bits(bits + 1).to_f32();
            let tie = (h + next) / 2.0;
            let want = half::f16::from_f32(tie).to_f32();
            assert_eq!(round_to_f16(tie).to_bits(), want.to_bits(), "tie {tie:e}");
        }
    }

    /// A test case: values (f16 bits) and their row stride, probability
    /// rows, and the f64 sums of their f16 roundings.
    type Case = (Vec<u16>, usize, Vec<Vec<f32>>, Vec<Vec<f64>>);

    fn case(n: usize, hd: usize, rows: usize) -> Case {
        let row = n + 5;
        let vals: Vec<u16> = (0..hd * row)
            .map(|i| half::f16::from_f32(((i * 37 % 101) as f32 - 50.0) / 17.0).to_bits())
            .collect();
        let p: Vec<Vec<f32>> = (0..rows)
            .map(|r| {
                (0..n)
                    .map(|k| ((k * 13 + r * 7) % 97) as f32 / (97.0 * n as f32))
                    .collect()
            })
            .collect();
        let want = p
            .iter()
            .map(|pr| {
                (0..hd)
                    .map(|c| {
                        let v = |k: usize| f64::from(half::f16::from_bits(vals[c * row + k]).to_f32());
                        (0..n)
                            .map(|k| f64::from(half::f16::from_f32(pr[k]).to_f32()) * v(k))
                            .sum()
                    })
                    .collect()
            })
            .collect();
        (vals, row, p, want)
    }

    #[test]
    fn matches_f64_sums_of_rounded_probabilities() {
        // Whole and partial chunks, row blocks and channel passes.
        for (n, hd, rows) in [(1, 16, 1), (128, 64, 4), (300, 64, 7), (129, 80, 3), (517, 256, 9)] {
            let (vals, row, p, want) = case(n, hd, rows);
            let prows: Vec<&[f32]> = p.iter().map(Vec::as_slice).collect();
            let mut out = vec![vec![f32::NAN; hd]; rows];
            let mut outs: Vec<&mut [f32]> = out.iter_mut().map(Vec::as_mut_slice).collect();
            tile_values(&vals, row, &prows, &mut outs);
            for (r, (o, w)) in out.iter().zip(&want).enumerate() {
                for (c, (&o, &w)) in o.iter().zip(w).enumerate() {
                    assert!(
                        (f64::from(o) - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "n {n} hd {hd} row {r} channel {c}: {o} vs {w}"
                    );
                }
            }
        }
    }
}
