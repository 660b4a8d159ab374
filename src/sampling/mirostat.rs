//! Mirostat 1 and 2 (llama.cpp's `llama_sampler_mirostat*`): they replace
//! the chain, keep the surprise near `tau` by moving `mu`, and draw with
//! `discrete_distribution`.

use super::candidates::Candidates;
use super::rng::Mt19937;
use crate::tokenizer::Token;

/// llama.cpp's `m`: tokens used to estimate the distribution's shape.
const M: usize = 100;

pub struct Mirostat<'a> {
    pub tau: f32,
    pub eta: f32,
    pub mu: &'a mut f32,
    pub rng: &'a mut Mt19937,
}

impl Mirostat<'_> {
    /// Mirostat 1 over a vocabulary of `n_vocab`.
    pub fn v1(&mut self, c: &mut Candidates, n_vocab: usize) -> Token {
        c.softmax(true);
        let (mut ti_bi, mut ti_sq) = (0.0f32, 0.0f32);
        for i in 0..(M - 1).min(c.data.len() - 1) {
            let t = ((i + 2) as f32 / (i + 1) as f32).ln();
            let b = (c.data[i].p / c.data[i + 1].p).ln();
            ti_bi += t * b;
            ti_sq += t * t;
        }
        let s_hat = ti_bi / ti_sq;
        let eps = s_hat - 1.0;
        let k = ((eps * 2f32.powf(*self.mu)) / (1.0 - (n_vocab as f32).powf(-eps))).powf(1.0 / s_hat);
        c.top_k(cpp_int(k).max(1) as usize);
        c.softmax(true);
        self.draw(c)
    }

    /// Mirostat 2.
    pub fn v2(&mut self, c: &mut Candidates) -> Token {
        c.softmax(true);
        let keep = c.data.iter().position(|d| -d.p.log2() > *self.mu);
        c.data.truncate(keep.unwrap_or(c.data.len()).max(1));
        c.softmax(true);
        self.draw(c)
    }

    fn draw(&mut self, c: &Candidates) -> Token {
        let i = self.rng.discrete(c.data.iter().map(|d| d.p));
        let surprise = -c.data[i].p.log2();
        *self.mu -= self.eta * (surprise - self.tau);
        c.data[i].id
    }
}

/// `int(x)` as C++ compiles it on x86-64: truncation, and INT_MIN for NaN
/// and values out of range.
pub fn cpp_int(x: f32) -> i32 {
    match x.is_finite() && x > -2_147_483_649.0 && x < 2_147_483_648.0 {
        true => x as i32,
        false => i32::MIN,
    }
}
