//! Softmax over a row whose visible entries are two spans (a prompt tile's
//! local keys, then its global ones). ggml's `soft_max_ext` reads an
//! additive mask as wide as the row and makes six passes over it, a fifth
//! of a long prefill (docs/perf.md); here the spans come as four numbers,
//! the row is read three times, and nothing outside the spans is computed.

use std::ops::Range;

use super::{fma, LANES};

/// `exp(x)` for `x <= 0`, to within a few ulp, written so that compilers
/// vectorize it: `x = n ln2 + r` with `|r| <= ln2 / 2`, a polynomial for
/// `exp(r)`, and `2^n` built from its exponent bits. Below
/// -87 (where f32 runs out of normal numbers) it gives about 1.6e-38, not 0:
/// nothing a softmax's sum can tell from 0.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    // Adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let t = fma(x, std::f32::consts::LOG2_E, ROUND);
    let n = t - ROUND;
    // ln 2 in two parts; n times the first (355 / 512, few bits) is exact.
    let r = fma(n, -0.693_359_4, x);
    let r = fma(n, 2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4;
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = fma(p, r, c);
    }
    let e = fma(p, r * r, r) + 1.0;
    // n in [-126, 0]: its bits, two's complement in t's mantissa, biased.
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23;
    e * f32::from_bits(n_bits)
}

/// The largest entry of `x` (-inf when empty).
fn max_of(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let tiles = x.chunks_exact(LANES);
    let tail = tiles.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for tile in tiles {
        for (m, &v) in lanes.iter_mut().zip(tile) {
            *m = m.max(v);
        }
    }
    lanes.iter().fold(tail, |m, &v| m.max(v))
}

/// `exp(scale * (v - max))`, exactly 0 for `v` = -inf (a masked key).
#[inline(always)]
fn weight(v: f32, scale: f32, max: f32) -> f32 {
    let e = exp_nonpositive(scale * (v - max));
    if v == f32::NEG_INFINITY {
        0.0
    } else {
        e
    }
}

/// Replaces each `v` of `x` by its `weight`; returns their sum.
fn exp_in_place(x: &mut [f32], scale: f32, max: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut tiles = x.chunks_exact_mut(LANES);
    for tile in &mut tiles {
        for (s, v) in lanes.iter_mut().zip(tile) {
            *v = weight(*v, scale, max);
            *s += *v;
        }
    }
    let mut sum = 0.0;
    for v in tiles.into_remainder() {
        *v = weight(*v, scale, max);
        sum += *v;
    }
    sum + lanes.iter().sum::<f32>()
}

/// Softmax of `row` scaled by `scale` (> 0) over the entries in `spans`
/// (in order, disjoint, inside the row); every other entry, and every -inf
/// entry, becomes 0. A row with no finite entry in its spans becomes all
/// zeros.
pub fn softmax_spans(row: &mut [f32], spans: [Range<usize>; 2], scale: f32) {
    let [a, b] = spans;
    let max = max_of(&row[a.clone()]).max(max_of(&row[b.clone()]));
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    let sum = exp_in_place(&mut row[a.clone()], scale, max) + exp_in_place(&mut row[b.clone()], scale, max);
    let inv = 1.0 / sum;
    row[..a.start].fill(0.0);
    row[a.end..b.start].fill(0.0);
    row[b.end..].fill(0.0);
    for v in &mut row[a] {
        *v *= inv;
    }
    for v in &mut row[b] {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_four_ulp_of_the_library_down_to_underflow() {
        let mut worst = 0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let (got, want) = (exp_nonpositive(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 4.0 * f32::EPSILON as f64, "relative error {worst:e}");
        assert!(exp_nonpositive(f32::NEG_INFINITY) < 2e-38);
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    #[test]
    fn softmax_spans_matches_a_plain_softmax_over_the_spans() {
        let n = 203;
        // Every 7th entry masked (-inf: a key outside a step's range).
        let x: Vec<f32> = (0..n)
            .map(|i| match i % 7 {
                3 => f32::NEG_INFINITY,
                _ => ((i * 37 % 101) as f32 - 50.0) * 0.37,
            })
            .collect();
        for (a, b) in [
            (0..0, 0..n),
            (3..70, 96..203),
            (17..18, 200..200),
            (3..4, 10..11),
            (0..64, 64..160),
            (5..5, 9..9),
        ] {
            let mut row = x.clone();
            softmax_spans(&mut row, [a.clone(), b.clone()], 0.125);
            let visible = |i: &usize| a.contains(i) || b.contains(i);
            let max = (0..n)
                .filter(visible)
                .map(|i| x[i] as f64)
                .fold(f64::NEG_INFINITY, f64::max);
            let e = |i: usize| {
                if visible(&i) && x[i] > f32::NEG_INFINITY {
                    (0.125 * (x[i] as f64 - max)).exp()
                } else {
                    0.0
                }
            };
            let sum: f64 = (0..n).map(e).sum();
            for (i, &got) in row.iter().enumerate() {
                let want = if sum > 0.0 { e(i) / sum } else { 0.0 };
                if want == 0.0 {
                    assert_eq!(got, 0.0, "{a:?} {b:?} [{i}]");
                }
                assert!(
                    (got as f64 - want).abs() <= 1e-6 * want.max(1e-3),
                    "{a:?} {b:?} [{i}]: {got} vs {want}"
                );
            }
        }
    }
}
