//! The sampling flags, as llama.cpp spells them (generation, chat, serve).

use clap::Args;

use super::limits;
use crate::sampling::{random_seed, SamplingParams};

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Temperature (0 = greedy)
    #[arg(long, default_value_t = 0.8, help_heading = "Sampling")]
    pub temp: f32,
    /// Top-k sampling (0 = off)
    #[arg(long = "top-k", default_value_t = 40, help_heading = "Sampling")]
    pub top_k: usize,
    /// Top-p (nucleus) sampling (1.0 = off)
    #[arg(long = "top-p", default_value_t = 0.95, help_heading = "Sampling")]
    pub top_p: f32,
    /// Min-p sampling (0.0 = off)
    #[arg(long = "min-p", default_value_t = 0.05, help_heading = "Sampling")]
    pub min_p: f32,
    /// Penalty for repeated tokens (1.0 = off)
    #[arg(long = "repeat-penalty", default_value_t = 1.0, help_heading = "Sampling")]
    pub repeat_penalty: f32,
    /// Tokens considered by the repeat penalty, -1..=16777216 (-1 = context
    /// size)
    #[arg(
        long = "repeat-last-n",
        default_value_t = 64,
        allow_negative_numbers = true,
        value_parser = limits::count_or_minus_one(limits::MAX_TOKENS as i64),
        help_heading = "Sampling"
    )]
    pub repeat_last_n: i64,
    /// Random seed, -1..=9223372036854775807 (-1 = random)
    #[arg(short = 's', long = "seed", default_value_t = -1, allow_negative_numbers = true,
          value_parser = limits::count_or_minus_one(i64::MAX), help_heading = "Sampling")]
    pub seed: i64,
}

impl SamplingArgs {
    /// The sampler's parameters, checked (`SamplingParams::check`: the same
    /// ranges a session's record gets).
    pub fn params(&self, n_ctx: usize) -> anyhow::Result<SamplingParams> {
        let seed = if self.seed < 0 { random_seed() } else { self.seed as u64 };
        let p = SamplingParams {
            temp: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: if self.repeat_last_n < 0 {
                n_ctx
            } else {
                self.repeat_last_n as usize
            },
            seed,
        };
        p.check()?;
        Ok(p)
    }
}
