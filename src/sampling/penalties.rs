//! The text so far, as the repetition penalties and DRY remember it, and
//! llama.cpp's `penalties` stage (repeat, frequency, presence).

use std::collections::{HashMap, VecDeque};

use super::candidates::Candidates;
use super::params::SamplingParams;
use crate::tokenizer::Token;

/// The last accepted tokens: as many as the longer of the two windows
/// (`--repeat-last-n`, `--dry-penalty-last-n`), with the counts of those in
/// the penalties' window.
#[derive(Debug, Default, Clone)]
pub struct History {
    tokens: VecDeque<Token>,
    counts: HashMap<Token, u32>,
    penalty_window: usize,
    keep: usize,
}

impl History {
    pub fn new(p: &SamplingParams) -> Self {
        let dry_on = p.dry_multiplier != 0.0 && p.dry_base >= 1.0;
        let dry_window = if dry_on { p.dry_penalty_last_n } else { 0 };
        Self {
            tokens: VecDeque::new(),
            counts: HashMap::new(),
            penalty_window: p.repeat_last_n,
            keep: p.repeat_last_n.max(dry_window),
        }
    }

    pub fn accept(&mut self, t: Token) {
        if self.keep == 0 {
            return;
        }
        self.tokens.push_back(t);
        if self.penalty_window > 0 {
            *self.counts.entry(t).or_default() += 1;
            if self.tokens.len() > self.penalty_window {
                let old = self.tokens[self.tokens.len() - 1 - self.penalty_window];
                if let Some(n) = self.counts.get_mut(&old) {
                    *n -= 1;
                    if *n == 0 {
                        self.counts.remove(&old);
                    }
                }
            }
        }
        if self.tokens.len() > self.keep {
            self.tokens.pop_front();
        }
    }

    /// Forgets everything, then accepts `tokens`.
    pub fn reset_to(&mut self, tokens: &[Token]) {
        self.tokens.clear();
        self.counts.clear();
        let from = tokens.len().saturating_sub(self.keep);
        tokens[from..].iter().for_each(|&t| self.accept(t));
    }

    pub fn to_vec(&self) -> Vec<Token> {
        self.tokens.iter().copied().collect()
    }

    /// The `i`-th token back from the newest (0: the newest).
    pub fn back(&self, i: usize) -> Token {
        self.tokens[self.tokens.len() - 1 - i]
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// `llama_sampler_penalties_apply`.
    pub fn penalize(&self, c: &mut Candidates, p: &SamplingParams) {
        let off = p.repeat_penalty == 1.0 && p.frequency_penalty == 0.0 && p.presence_penalty == 0.0;
        if p.repeat_last_n == 0 || off {
            return;
        }
        for d in &mut c.data {
            let Some(&n) = self.counts.get(&d.id) else { continue };
            d.logit = match d.logit <= 0.0 {
                true => d.logit * p.repeat_penalty,
                false => d.logit / p.repeat_penalty,
            };
            d.logit -= n as f32 * p.frequency_penalty + p.presence_penalty;
        }
        c.sorted = false;
    }
}
