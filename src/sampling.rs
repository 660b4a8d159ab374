//! Token sampling with llama.cpp's default chain: repetition penalty, top-k,
//! top-p, min-p, temperature, then a seeded random draw. `temp <= 0` is greedy.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::tokenizer::Token;

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

    pub fn from_state(s: &SamplerState) -> anyhow::Result<Self> {
        let mut rng = ChaCha8Rng::from_seed(s.rng_seed);
        rng.set_stream(s.rng_stream);
        rng.set_word_pos(s.rng_word_pos.parse()?);
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
        if self.history.len() > 4 * keep {
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
        let mut b = Sampler::from_state(&serde_json::from_str(&json).unwrap()).unwrap();
        let draws = |s: &mut Sampler| (0..20).map(|_| s.sample(&logits)).collect::<Vec<_>>();
        assert_eq!(draws(&mut a), draws(&mut b));
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
