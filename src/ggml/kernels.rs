//! Kernels of our own, run as ggml custom ops (`Context::key_scores`).
//! Safe code on slices; the op trampolines in `graph` hand them the data.

/// Keys per tile: one vector register of f32 lanes on AVX-512, two on AVX2.
pub(super) const LANES: usize = 16;

/// f16 bits to f32, for finite values (keys are), written so that compilers
/// vectorize it: the magnitude's bits shifted into f32 place and rescaled
/// by 2^112 (the exponent bias difference) also handle subnormals.
#[inline(always)]
fn f16_bits_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let magnitude = f32::from_bits((h & 0x7fff) << 13) * f32::from_bits(0x7780_0000);
    f32::from_bits(magnitude.to_bits() | ((h & 0x8000) << 16))
}

/// A tile of f16 bits in f32 (a plain loop: `array::map` does not always
/// inline, and then does not vectorize).
#[inline(always)]
fn to_f32(src: &[u16]) -> [f32; LANES] {
    let mut out = [0f32; LANES];
    for (o, &h) in out.iter_mut().zip(&src[..LANES]) {
        *o = f16_bits_to_f32(h);
    }
    out
}

/// Dot products of queries with keys stored transposed (a row per channel):
/// `out[j][i] = sum_c keys[c * row + i] * q[j * dim + c]` for keys `i` in
/// `0..out[j].len()`. The transposed layout lets each channel's step be a
/// vector FMA over 16 keys, instead of a 64-term dot product ending in a
/// horizontal sum per key and query (what a matmul over key rows does).
pub fn key_scores(keys: &[u16], row: usize, q: &[f32], dim: usize, out: &mut [&mut [f32]]) {
    let n = out.first().map_or(0, |o| o.len());
    let full = n - n % LANES;
    match out.len() {
        // Decode (a KV head's query group): convert and multiply in registers.
        1 => fused_scores::<1>(keys, row, q, dim, out, full),
        2 => fused_scores::<2>(keys, row, q, dim, out, full),
        3 => fused_scores::<3>(keys, row, q, dim, out, full),
        4 => fused_scores::<4>(keys, row, q, dim, out, full),
        _ => tiled_scores(keys, row, q, dim, out, full),
    }
    for i in full..n {
        for (j, o) in out.iter_mut().enumerate() {
            o[i] = (0..dim)
                .map(|c| f16_bits_to_f32(keys[c * row + i]) * q[j * dim + c])
                .sum();
        }
    }
}

/// `key_scores` of whole tiles for `G` queries, each key converted once.
fn fused_scores<const G: usize>(keys: &[u16], row: usize, q: &[f32], dim: usize, out: &mut [&mut [f32]], full: usize) {
    for i in (0..full).step_by(LANES) {
        let mut acc = [[0f32; LANES]; G];
        for c in 0..dim {
            let k = to_f32(&keys[c * row + i..][..LANES]);
            for (g, a) in acc.iter_mut().enumerate() {
                let qc = q[g * dim + c];
                for (a, k) in a.iter_mut().zip(k) {
                    *a += k * qc;
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
fn tiled_scores(keys: &[u16], row: usize, q: &[f32], dim: usize, out: &mut [&mut [f32]], full: usize) {
    // One tile of keys in f32, converted once for all queries.
    let mut tile = vec![[0f32; LANES]; dim];
    for i in (0..full).step_by(LANES) {
        for (c, t) in tile.iter_mut().enumerate() {
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
                *a += k * qc;
            }
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        o[i..i + LANES].copy_from_slice(&a);
    }
    G
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

    #[test]
    fn key_scores_match_plain_dot_products() {
        let (dim, n, row) = (64, 37, 40);
        let keys: Vec<u16> = (0..dim * row)
            .map(|i| half::f16::from_f32(((i * 7919) % 201) as f32 / 100.0 - 1.0).to_bits())
            .collect();
        for r in 1..=7 {
            let q: Vec<f32> = (0..r * dim).map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0).collect();
            let mut out = vec![vec![0f32; n]; r];
            let mut views: Vec<&mut [f32]> = out.iter_mut().map(|o| o.as_mut_slice()).collect();
            key_scores(&keys, row, &q, dim, &mut views);
            for (j, o) in out.iter().enumerate() {
                for (i, &got) in o.iter().enumerate() {
                    let want: f32 = (0..dim)
                        .map(|c| half::f16::from_bits(keys[c * row + i]).to_f32() * q[j * dim + c])
                        .sum();
                    assert!((got - want).abs() < 1e-4, "query {j} key {i}: {got} vs {want}");
                }
            }
        }
    }
}
