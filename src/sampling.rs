//! Token sampling with llama.cpp's default chain: repetition penalty, top-k,
//! top-p, min-p, temperature, then a seeded random draw. `temp <= 0` is
//! greedy, as in llama.cpp (`--temp -1` is a common spelling of it).

use anyhow::{ensure, Context as _};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::quote::quoted;
use crate::tokenizer::Token;

/// Largest `--repeat-last-n`: llama.cpp reads it as a 32-bit int. Values past
/// the context behave as the whole context (the text is no longer).
pub const MAX_REPEAT_LAST_N: usize = i32::MAX as usize;

/// llama.cpp's sampling defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub temp: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temp: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Checks the values llama.cpp accepts for the flags (seeds: any); errors
    /// name the flag as a user types it.
    pub fn check(&self) -> anyhow::Result<()> {
        ensure!(
            self.temp.is_finite(),
            "--temp must be a finite number (<= 0: greedy), got {}",
            self.temp
        );
        for (flag, value) in [("--top-p", self.top_p), ("--min-p", self.min_p)] {
            ensure!((0.0..=1.0).contains(&value), "{flag} must be in [0, 1], got {value}");
        }
        ensure!(
            self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0,
            "--repeat-penalty must be a number > 0 (1: off), got {}",
            self.repeat_penalty
        );
        ensure!(
            self.repeat_last_n <= MAX_REPEAT_LAST_N,
            "--repeat-last-n must be in [-1, {MAX_REPEAT_LAST_N}] (-1: the context size), got {}",
            self.repeat_last_n
        );
        Ok(())
    }
}

/// A seed from the clock, as `-s -1` gives.
pub fn random_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Everything a sampler needs to go on exactly where it was (sessions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplerState {
    pub params: SamplingParams,
    rng_seed: [u8; 32],
    rng_stream: u64,
    /// The generator's position (a u128, as text for JSON).
    rng_word_pos: String,
    history: Vec<Token>,
}

impl SamplerState {
    /// Checks a saved state (a session file's): its parameters as flags
    /// are, its history as tokens of a vocabulary of `n_vocab`; returns the
    /// generator's position.
    pub fn check(&self, n_vocab: usize) -> anyhow::Result<u128> {
        self.params.check()?;
        if let Some(t) = self
            .history
            .iter()
            .find(|&&t| usize::try_from(t).map_or(true, |t| t >= n_vocab))
        {
            anyhow::bail!("sampler history: token {t} is not in the vocabulary (0..{n_vocab})");
        }
        // The generator counts 2^64 blocks of 16 words.
        self.rng_word_pos
            .parse()
            .ok()
            .filter(|&pos: &u128| pos < 1 << 68)
            .with_context(|| {
                format!(
                    "sampler rng_word_pos {}: not a whole number below 2^68",
                    quoted(&self.rng_word_pos)
                )
            })
    }
}

pub struct Sampler {
    pub params: SamplingParams,
    rng: ChaCha8Rng,
    /// Recent tokens, for the repetition penalty.
    history: Vec<Token>,
    candidates: Vec<(Token, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(params.seed),
            params,
            history: Vec::new(),
            candidates: Vec::new(),
        }
    }

    pub fn state(&self) -> SamplerState {
        SamplerState {
            params: self.params,
            rng_seed: self.rng.get_seed(),
            rng_stream: self.rng.get_stream(),
            rng_word_pos: self.rng.get_word_pos().to_string(),
            history: self.history.clone(),
        }
    }

    /// A sampler going on from `s`, checked as `SamplerState::check` does.
    pub fn from_state(s: &SamplerState, n_vocab: usize) -> anyhow::Result<Self> {
        let word_pos = s.check(n_vocab)?;
        let mut rng = ChaCha8Rng::from_seed(s.rng_seed);
        rng.set_stream(s.rng_stream);
        rng.set_word_pos(word_pos);
        Ok(Self {
            params: s.params,
            rng,
            history: s.history.clone(),
            candidates: Vec::new(),
        })
    }

    /// Restarts the random stream from `seed`.
    pub fn reseed(&mut self, seed: u64) {
        self.params.seed = seed;
        self.rng = ChaCha8Rng::seed_from_u64(seed);
    }

    /// Recent tokens (the repetition penalty's memory).
    pub fn history(&self) -> &[Token] {
        &self.history
    }

    pub fn set_history(&mut self, history: Vec<Token>) {
        self.history = history;
    }

    /// Records a token that is now part of the text (prompt or generated).
    pub fn accept(&mut self, t: Token) {
        self.history.push(t);
        let keep = self.params.repeat_last_n.max(1);
        if self.history.len() > keep.saturating_mul(4) {
            self.history.drain(..self.history.len() - keep);
        }
    }

    /// Picks the next token from `logits`.
    pub fn sample(&mut self, logits: &[f32]) -> Token {
        let p = self.params;
        self.candidates.clear();
        self.candidates
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as Token, l)));
        self.apply_repeat_penalty();
        if p.temp <= 0.0 {
            return argmax(&self.candidates);
        }
        let c = &mut self.candidates;
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, |a, b| b.1.total_cmp(&a.1));
            c.truncate(p.top_k);
        }
        c.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if p.top_p < 1.0 {
            let probs = softmax(c);
            let mut cum = 0.0;
            let keep = probs
                .iter()
                .position(|&q| {
                    cum += q;
                    cum >= p.top_p
                })
                .map_or(c.len(), |i| i + 1);
            c.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            // p_i >= min_p * p_max  <=>  l_i >= l_max + ln(min_p)
            let threshold = c[0].1 + p.min_p.ln();
            let keep = c.iter().take_while(|x| x.1 >= threshold).count();
            c.truncate(keep.max(1));
        }
        for x in c.iter_mut() {
            x.1 /= p.temp;
        }
        let probs = softmax(c);
        let r: f32 = self.rng.gen();
        let mut cum = 0.0;
        for (i, q) in probs.iter().enumerate() {
            cum += q;
            if r < cum {
                return c[i].0;
            }
        }
        c[c.len() - 1].0
    }

    fn apply_repeat_penalty(&mut self) {
        let p = self.params;
        if p.repeat_penalty == 1.0 || p.repeat_last_n == 0 {
            return;
        }
        let start = self.history.len().saturating_sub(p.repeat_last_n);
        let mut seen: Vec<Token> = self.history[start..].to_vec();
        seen.sort_unstable();
        seen.dedup();
        for t in seen {
            if let Some(c) = self.candidates.get_mut(t as usize) {
                c.1 = if c.1 > 0.0 {
                    c.1 / p.repeat_penalty
                } else {
                    c.1 * p.repeat_penalty
                };
            }
        }
    }
}

/// The first token with the highest logit (llama.cpp's greedy rule).
pub fn argmax(c: &[(Token, f32)]) -> Token {
    let mut best = 0;
    for i in 1..c.len() {
        if c[i].1 > c[best].1 {
            best = i;
        }
    }
    c[best].0
}

/// Probabilities of candidates sorted by descending logit.
fn softmax(c: &[(Token, f32)]) -> Vec<f32> {
    let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<f32> = c.iter().map(|x| (x.1 - max).exp()).collect();
    let sum: f32 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= sum);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_maximum() {
        let mut s = Sampler::new(SamplingParams {
            temp: 0.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&[0.1, 2.0, 2.0, -1.0]), 1);
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let params = SamplingParams {
            seed: 42,
            ..Default::default()
        };
        let draw = || {
            let mut s = Sampler::new(params);
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(), draw());
    }

    #[test]
    fn state_round_trip_continues_the_draws() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let mut a = Sampler::new(SamplingParams {
            seed: 7,
            ..Default::default()
        });
        for _ in 0..13 {
            let t = a.sample(&logits);
            a.accept(t);
        }
        let json = serde_json::to_string(&a.state()).unwrap();
        let mut b = Sampler::from_state(&serde_json::from_str(&json).unwrap(), 100).unwrap();
        let draws = |s: &mut Sampler| (0..20).map(|_| s.sample(&logits)).collect::<Vec<_>>();
        assert_eq!(draws(&mut a), draws(&mut b));
    }

    #[test]
    fn check_takes_llama_cpp_ranges_and_names_the_flag() {
        let ok = SamplingParams::default();
        ok.check().unwrap();
        for temp in [0.0, -1.0] {
            SamplingParams {
                temp,
                top_p: 1.0,
                min_p: 0.0,
                ..ok
            }
            .check()
            .unwrap();
        }
        let bad = [
            (
                SamplingParams { temp: f32::NAN, ..ok },
                "--temp must be a finite number (<= 0: greedy), got NaN",
            ),
            (
                SamplingParams { top_p: -1.0, ..ok },
                "--top-p must be in [0, 1], got -1",
            ),
            (SamplingParams { min_p: 5.0, ..ok }, "--min-p must be in [0, 1], got 5"),
            (
                SamplingParams {
                    repeat_penalty: 0.0,
                    ..ok
                },
                "--repeat-penalty must be a number > 0 (1: off), got 0",
            ),
            (
                SamplingParams {
                    repeat_last_n: 1 << 62,
                    ..ok
                },
                "--repeat-last-n must be in [-1, 2147483647] (-1: the context size), got 4611686018427387904",
            ),
        ];
        for (p, message) in bad {
            assert_eq!(p.check().unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn a_huge_repeat_window_keeps_the_history() {
        let mut s = Sampler::new(SamplingParams {
            repeat_last_n: usize::MAX,
            ..Default::default()
        });
        for t in 0..10 {
            s.accept(t);
        }
        assert_eq!(s.history().len(), 10);
    }

    #[test]
    fn repeat_penalty_demotes_seen_tokens() {
        let mut s = Sampler::new(SamplingParams {
            temp: 0.0,
            repeat_penalty: 2.0,
            ..Default::default()
        });
        s.accept(0);
        assert_eq!(s.sample(&[3.0, 2.0]), 1);
    }
}
