//! llama.cpp's random draws: `std::mt19937` and libstdc++'s
//! `generate_canonical` (behind `uniform_real_distribution` and
//! `discrete_distribution`), so a seed gives the tokens llama.cpp gives.

use serde::{Deserialize, Serialize};

const N: usize = 624;
const M: usize = 397;

/// The 32-bit Mersenne Twister, as `std::mt19937`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mt19937 {
    state: Vec<u32>,
    index: usize,
}

impl std::fmt::Debug for Mt19937 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mt19937 {{ index: {} }}", self.index)
    }
}

impl Mt19937 {
    /// `std::mt19937(seed)`.
    pub fn new(seed: u32) -> Self {
        let mut state = vec![0u32; N];
        state[0] = seed;
        for i in 1..N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, index: N }
    }

    /// Checks a saved generator (a session file's): 624 words, a position
    /// within them.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.state.len() == N && self.index <= N,
            "generator state: {} words at position {} (want {N} words, position <= {N})",
            self.state.len(),
            self.index
        );
        Ok(())
    }

    fn twist(&mut self) {
        for i in 0..N {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % N] & 0x7fff_ffff);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            self.state[i] = self.state[(i + M) % N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `uniform_real_distribution<double>(0, 1)`: two words, low first.
    pub fn uniform_f64(&mut self) -> f64 {
        let lo = self.next_u32() as f64;
        let hi = self.next_u32() as f64;
        let r = (lo + hi * 4_294_967_296.0) / 18_446_744_073_709_551_616.0;
        if r >= 1.0 {
            1.0 - f64::EPSILON / 2.0
        } else {
            r
        }
    }

    /// `uniform_real_distribution<float>(0, 1)`: one word.
    pub fn uniform_f32(&mut self) -> f32 {
        let r = self.next_u32() as f32 / 4_294_967_296.0;
        if r >= 1.0 {
            1.0 - f32::EPSILON / 2.0
        } else {
            r
        }
    }

    /// `discrete_distribution<int>` over `weights`, built and drawn once:
    /// fewer than two weights give 0 without a draw.
    pub fn discrete(&mut self, weights: impl Iterator<Item = f32> + Clone) -> usize {
        let n = weights.clone().count();
        if n < 2 {
            return 0;
        }
        let sum: f64 = weights.clone().map(f64::from).sum();
        let mut cum = 0.0;
        let mut bounds: Vec<f64> = weights
            .map(|w| {
                cum += f64::from(w) / sum;
                cum
            })
            .collect();
        bounds[n - 1] = 1.0;
        let p = self.uniform_f64();
        bounds.partition_point(|&c| c < p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_10000th_output() {
        // C++11 [rand.predef]: the 10000th output of a default-constructed
        // std::mt19937 (seed 5489) is 4123659995.
        let mut g = Mt19937::new(5489);
        let last = (0..10_000).map(|_| g.next_u32()).last();
        assert_eq!(last, Some(4_123_659_995));
    }

    #[test]
    fn a_bad_saved_state_is_refused() {
        let mut g = Mt19937::new(1);
        g.index = N + 1;
        assert!(g.check().unwrap_err().to_string().contains("position 625"));
    }
}
