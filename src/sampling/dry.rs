//! DRY ("don't repeat yourself"), as llama.cpp's `llama_sampler_dry`:
//! tokens that would extend a repeat of the recent text lose
//! `multiplier * base^(length - allowed)`; sequence breakers end repeats.

use std::collections::HashMap;

use super::candidates::Candidates;
use super::params::SamplingParams;
use super::penalties::History;
use crate::tokenizer::{Token, Tokenizer};

/// llama.cpp cuts breakers to 40 bytes and their tails to 20 tokens.
const MAX_BREAKER_BYTES: usize = 40;
const MAX_TAIL_TOKENS: usize = 20;

/// Each token that can start a breaker, with the tokens that must follow
/// it (empty: the token holds a whole breaker).
#[derive(Debug, Default, Clone)]
pub struct Breakers(HashMap<Token, Vec<Vec<Token>>>);

impl Breakers {
    /// The breakers' token sequences in `tok`'s vocabulary
    /// (`get_overlapping_token_sequences`).
    pub fn new(breakers: &[String], tok: &Tokenizer) -> Self {
        let mut map: HashMap<Token, Vec<Vec<Token>>> = HashMap::new();
        let words: Vec<Vec<u8>> = (0..tok.n_vocab())
            .map(|t| tok.decode(&[t as Token], false, true))
            .collect();
        for b in breakers {
            let s = &b.as_bytes()[..b.len().min(MAX_BREAKER_BYTES)];
            for (t, word) in words.iter().enumerate() {
                for tail in tails(word, s, tok) {
                    let seqs = map.entry(t as Token).or_default();
                    if tail.is_empty() || !seqs.contains(&tail) {
                        seqs.push(tail);
                    }
                }
            }
        }
        Self(map)
    }
}

/// The tails `word` asks for to spell breaker `s`: [] when it holds `s`,
/// else the tokens of what is left of `s` after each of its prefixes that
/// ends `word`.
fn tails(word: &[u8], s: &[u8], tok: &Tokenizer) -> Vec<Vec<Token>> {
    if s.is_empty() {
        return Vec::new();
    }
    if word.windows(s.len()).any(|w| w == s) {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for pos in (0..word.len()).filter(|&p| word[p] == s[0]) {
        let i = (1..s.len())
            .take_while(|&i| pos + i < word.len())
            .find(|&i| word[pos + i] != s[i]);
        if i.is_some() {
            continue;
        }
        let matched = (word.len() - pos).min(s.len());
        let rest = String::from_utf8_lossy(&s[matched..]);
        let mut tail = tok.encode(&rest, false, false);
        tail.truncate(MAX_TAIL_TOKENS);
        out.push(tail);
    }
    out
}

/// `llama_sampler_dry_apply`.
pub fn apply(c: &mut Candidates, p: &SamplingParams, h: &History, breakers: &Breakers) {
    if p.dry_multiplier == 0.0 || p.dry_base < 1.0 || p.dry_penalty_last_n == 0 {
        return;
    }
    let n = h.len().min(p.dry_penalty_last_n);
    let allowed = p.dry_allowed_length as i64;
    if n as i64 <= allowed {
        return;
    }
    let limit = repeat_limit(h, n, breakers);
    if (limit as i64) < allowed {
        return;
    }
    let counts = repeat_counts(h, n, limit);
    let mut longest: HashMap<Token, usize> = HashMap::new();
    for (i, &len) in counts[..n - 1].iter().enumerate() {
        if len as i64 >= allowed {
            let t = h.back(n - 2 - i);
            let e = longest.entry(t).or_insert(len);
            *e = (*e).max(len);
        }
    }
    penalize(c, p, &longest, breakers);
}

/// Step 1: the longest repeat may not reach back past the last breaker.
fn repeat_limit(h: &History, n: usize, breakers: &Breakers) -> usize {
    for i in 0..n {
        let Some(seqs) = breakers.0.get(&h.back(i)) else {
            continue;
        };
        let fits =
            |tail: &&Vec<Token>| tail.len() <= i && tail.iter().enumerate().all(|(o, &t)| t == h.back(i - o - 1));
        if let Some(longest) = seqs.iter().filter(fits).map(Vec::len).max() {
            return i - longest;
        }
    }
    n
}

/// Step 2: for each position (oldest first), how many tokens ending there
/// repeat the text's last tokens, at most `limit` (a reversed Z-algorithm).
fn repeat_counts(h: &History, n: usize, limit: usize) -> Vec<usize> {
    let mut counts = vec![0usize; n];
    let last = n - 1;
    let (mut lt, mut rt) = (0usize, 0usize);
    for k in 1..n {
        if k > rt {
            let mut m = 0;
            while m + k < n && h.back(m) == h.back(m + k) {
                m += 1;
            }
            counts[last - k] = m.min(limit);
            if m > 0 {
                (lt, rt) = (k, k + m - 1);
            }
        } else if counts[last - (k - lt)] < rt - k + 1 {
            counts[last - k] = counts[last - (k - lt)].min(limit);
        } else {
            let mut i = rt + 1;
            while i < n && h.back(i) == h.back(i - k) {
                i += 1;
            }
            counts[last - k] = (i - k).min(limit);
            (lt, rt) = (k, i - 1);
        }
    }
    counts
}

/// Step 4: the penalties, but not on tokens that are whole breakers.
fn penalize(c: &mut Candidates, p: &SamplingParams, longest: &HashMap<Token, usize>, breakers: &Breakers) {
    // pow(base, exp) stays below f32::MAX.
    let max_exponent = match p.dry_base > 1.000_001 {
        true => (88.722_84_f32 / p.dry_base.ln()) as i64,
        false => 0,
    };
    for d in &mut c.data {
        let Some(&len) = longest.get(&d.id) else { continue };
        let whole_breaker = breakers.0.get(&d.id).is_some_and(|s| s.iter().any(Vec::is_empty));
        if whole_breaker {
            continue;
        }
        let mut exp = len as i64 - i64::from(p.dry_allowed_length);
        if max_exponent > 0 && exp > max_exponent {
            exp = max_exponent;
        }
        // C++'s pow(float, int) is in double.
        let penalty = f64::from(p.dry_multiplier) * f64::from(p.dry_base).powf(exp as f64);
        d.logit -= penalty as f32;
    }
    c.sorted = false;
}
