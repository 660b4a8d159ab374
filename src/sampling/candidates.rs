//! The candidate list and the stages that only look at it, each as
//! llama.cpp's `llama_sampler_*_apply` computes it: same float types, same
//! order of sums, same sortedness, so the draw that follows picks the same
//! token.

use super::cpp_sort;
use super::mirostat::cpp_int;
use super::rng::Mt19937;
use crate::tokenizer::Token;

#[derive(Debug, Clone, Copy)]
pub struct TokenData {
    pub id: Token,
    pub logit: f32,
    pub p: f32,
}

/// `llama_token_data_array`: candidates, in vocabulary order until a stage
/// sorts them by descending logit.
#[derive(Debug, Default)]
pub struct Candidates {
    pub data: Vec<TokenData>,
    pub sorted: bool,
}

impl Candidates {
    pub fn fill(&mut self, logits: &[f32]) {
        self.data.clear();
        let all = logits.iter().enumerate();
        self.data.extend(all.map(|(i, &logit)| TokenData {
            id: i as Token,
            logit,
            p: 0.0,
        }));
        self.sorted = false;
    }

    /// Keeps the best `k`, sorted (`llama_token_data_array_partial_sort_inplace`).
    fn keep_best(&mut self, k: usize) {
        if k <= 128 {
            cpp_sort::partial_sort(&mut self.data, k, &higher);
            self.data.truncate(k);
        } else {
            let mut best = bucket_sort(&self.data, k);
            best.truncate(k);
            self.data = best;
        }
        self.sorted = true;
    }

    fn max_logit(&self) -> f32 {
        match self.sorted {
            true => self.data[0].logit,
            false => self.data.iter().fold(self.data[0].logit, |m, c| m.max(c.logit)),
        }
    }

    /// `llama_sampler_softmax_impl`.
    pub fn softmax(&mut self, sort: bool) {
        if sort && !self.sorted {
            self.keep_best(self.data.len());
        }
        let max = self.max_logit();
        let mut sum = 0.0f32;
        for c in &mut self.data {
            c.p = (c.logit - max).exp();
            sum += c.p;
        }
        self.data.iter_mut().for_each(|c| c.p /= sum);
    }

    pub fn top_k(&mut self, k: usize) {
        if k == 0 || self.data.is_empty() {
            return;
        }
        let k = k.min(self.data.len());
        match self.sorted {
            true => self.data.truncate(k),
            false => self.keep_best(k),
        }
    }

    pub fn top_p(&mut self, p: f32) {
        if p >= 1.0 {
            return;
        }
        // Probabilities summed in the current order, then sorted: a long
        // list first by its best 256, all of it if they are not enough.
        self.softmax(false);
        let n = self.data.len();
        let mut k = n;
        let mut sorted_copy = None;
        if !self.sorted && n > 1024 {
            k = 256;
            sorted_copy = Some(bucket_sort(&self.data, k));
        } else if !self.sorted {
            self.keep_best(n);
        }
        let mut cum = 0.0f32;
        let mut keep = n;
        for i in 0..n {
            cum += sorted_copy.as_ref().map_or(&self.data, |s| s)[i].p;
            if cum >= p {
                keep = i + 1;
                break;
            }
            if sorted_copy.is_some() && i == k - 1 {
                k = n;
                sorted_copy = Some(bucket_sort(&self.data, n));
            }
        }
        if let Some(mut s) = sorted_copy {
            s.truncate(keep);
            self.data = s;
            self.sorted = true;
        }
        self.data.truncate(keep);
    }

    pub fn min_p(&mut self, p: f32) {
        if p <= 0.0 || self.data.is_empty() {
            return;
        }
        if !self.sorted {
            let max = self.data.iter().fold(-f32::MAX, |m, c| m.max(c.logit));
            let min_logit = max + p.ln();
            let kept: Vec<TokenData> = self.data.iter().copied().filter(|c| c.logit >= min_logit).collect();
            if !kept.is_empty() {
                self.data = kept;
                return;
            }
            self.keep_best(self.data.len());
        }
        let min_logit = self.data[0].logit + p.ln();
        let keep = 1 + self.data[1..]
            .iter()
            .take_while(|c| c.logit >= min_logit || c.logit.is_nan())
            .count();
        self.data.truncate(keep);
    }

    pub fn typical(&mut self, p: f32) {
        if p >= 1.0 {
            return;
        }
        self.softmax(true);
        let entropy = self.data.iter().fold(0.0f32, |e, c| e + -c.p * c.p.ln());
        let shifted: Vec<f32> = self.data.iter().map(|c| (-c.p.ln() - entropy).abs()).collect();
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        cpp_sort::sort(&mut order, &|&a, &b| shifted[a] < shifted[b]);
        let mut cum = 0.0f32;
        let keep = order.iter().position(|&i| {
            cum += self.data[i].p;
            cum > p
        });
        order.truncate(keep.map_or(order.len(), |i| i + 1));
        self.data = order.iter().map(|&i| self.data[i]).collect();
        self.sorted = false;
    }

    /// `llama_sampler_temp_impl`: `t <= 0` keeps only the first best logit.
    pub fn temperature(&mut self, t: f32) {
        if self.data.is_empty() {
            return;
        }
        if t > 0.0 {
            self.data.iter_mut().for_each(|c| c.logit /= t);
            return;
        }
        let mut best = 0;
        for i in 1..self.data.len() {
            if self.data[i].logit > self.data[best].logit {
                self.data[best].logit = f32::NEG_INFINITY;
                best = i;
            } else {
                self.data[i].logit = f32::NEG_INFINITY;
            }
        }
    }

    pub fn top_n_sigma(&mut self, n: f32) {
        if n <= 0.0 || self.data.len() <= 1 {
            return;
        }
        let valid = || self.data.iter().filter(|c| c.logit != f32::NEG_INFINITY);
        let max = valid().fold(self.data[0].logit, |m, c| m.max(c.logit));
        let count = valid().count();
        let mean = match count {
            0 => 0.0,
            _ => valid().fold(0.0f32, |s, c| s + c.logit) / count as f32,
        };
        // The squares in double, the sum in float, as C++'s pow(float, 2).
        let acc = valid().fold(0.0f32, |a, c| {
            let d = f64::from(c.logit - mean);
            (f64::from(a) + d * d) as f32
        });
        let std = if count > 0 { (acc / count as f32).sqrt() } else { 0.0 };
        let floor = max - n * std;
        self.data
            .iter_mut()
            .filter(|c| c.logit < floor)
            .for_each(|c| c.logit = f32::NEG_INFINITY);
    }

    /// XTC: with probability `prob`, drops the top tokens above `threshold`
    /// but the last of them.
    pub fn xtc(&mut self, prob: f32, threshold: f32, rng: &mut Mt19937) {
        if prob <= 0.0 || threshold > 0.5 || self.data.len() < 2 {
            return;
        }
        if rng.uniform_f32() > prob {
            return;
        }
        self.softmax(true);
        let last = self
            .data
            .iter()
            .take_while(|c| c.p >= threshold)
            .count()
            .saturating_sub(1);
        if last > 0 {
            self.data.drain(..last);
        }
    }

    /// Adds each bias to its token's logit (the list is still in vocabulary
    /// order: this is the chain's first step).
    pub fn bias(&mut self, biases: impl Iterator<Item = (Token, f32)>) {
        for (t, b) in biases {
            if let Some(c) = self.data.get_mut(t as usize) {
                c.logit += b;
            }
        }
    }

    /// `llama_sampler_dist`: one double from `rng` picks by cumulative
    /// probability (in double, over float probabilities).
    pub fn dist(&mut self, rng: &mut Mt19937) -> Option<Token> {
        match self.data.len() {
            0 => return None,
            1 => {
                rng.uniform_f64();
                return Some(self.data[0].id);
            }
            _ => {}
        }
        let max = self.max_logit();
        let mut sum = 0.0f64;
        for c in &mut self.data {
            c.p = (c.logit - max).exp();
            sum += f64::from(c.p);
        }
        let target = sum * rng.uniform_f64();
        let mut run = 0.0f64;
        let pick = self.data.iter().position(|c| {
            run += f64::from(c.p);
            run >= target
        });
        Some(self.data[pick.unwrap_or(self.data.len() - 1)].id)
    }
}

/// llama.cpp's sort order: higher logit first.
fn higher(a: &TokenData, b: &TokenData) -> bool {
    a.logit > b.logit
}

/// `llama_token_data_array_partial_sort`: the candidates of the best logit
/// buckets (128 over [-10, 10]) holding at least `n`, the best `n` first
/// and sorted.
fn bucket_sort(data: &[TokenData], n: usize) -> Vec<TokenData> {
    const BUCKETS: usize = 128;
    const SCALE: f32 = BUCKETS as f32 / 20.0;
    const INTER: f32 = 10.0 * SCALE;
    let bucket = |c: &TokenData| cpp_int(SCALE * c.logit + INTER).clamp(0, BUCKETS as i32 - 1) as usize;
    let mut histo = [0usize; BUCKETS];
    data.iter().for_each(|c| histo[bucket(c)] += 1);
    let (mut have, mut low) = (0, BUCKETS - 1);
    loop {
        have += histo[low];
        if have >= n || low == 0 {
            break;
        }
        low -= 1;
    }
    // Each bucket's candidates in their order, best bucket first.
    let mut start = [0usize; BUCKETS];
    let mut at = 0;
    for j in (low..BUCKETS).rev() {
        start[j] = at;
        at += histo[j];
    }
    let mut out = vec![data[0]; have];
    for c in data {
        let j = bucket(c);
        if j >= low {
            out[start[j]] = *c;
            start[j] += 1;
        }
    }
    let mut done = 0;
    for j in (low + 1..BUCKETS).rev() {
        cpp_sort::sort(&mut out[done..done + histo[j]], &higher);
        done += histo[j];
    }
    cpp_sort::partial_sort(&mut out[done..done + histo[low]], n - done, &higher);
    out
}
