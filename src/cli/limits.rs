//! The range of every numeric flag, checked as the flags are parsed: a
//! value outside it is a one-line error naming the flag (main.rs), before
//! anything is loaded or allocated. `--help` names each range.

use clap::builder::{RangedI64ValueParser, RangedU64ValueParser};

/// Longest text: InfLLM's address space for `-c 0`, and the largest `-c`.
pub const MAX_TOKENS: u64 = crate::attention::infllm::NO_CAP_TOKENS as u64;
/// `-t`: threads asked for. More than the cores are never started: ggml's
/// spinning workers would only take turns on them.
pub const MAX_THREADS: u64 = 1024;
/// `-b`, `-ub`: tokens per batch.
pub const MAX_BATCH: u64 = 16384;
/// `-n` without a value (-1) and InfLLM without `-c`: tokens generated at
/// most, where no context stops the text.
pub const DEFAULT_PREDICT: usize = 4096;

/// A count flag: a whole number in `min..=max`.
pub fn count(min: u64, max: u64) -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(min..=max)
}

/// A signed flag where -1 means "default": a whole number in `-1..=max`.
pub fn count_or_minus_one(max: i64) -> RangedI64ValueParser<i64> {
    RangedI64ValueParser::new().range(-1..=max)
}

/// `-n`: a whole number in `-2..=max` (-1: no limit, -2: until the context
/// is full; both stop where the context does, as llama.cpp without context
/// shift).
pub fn predict(max: i64) -> RangedI64ValueParser<i64> {
    RangedI64ValueParser::new().range(-2..=max)
}

/// A proportion (`-ts`): a finite number >= 0.
pub fn share(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s} is not a finite number >= 0")),
    }
}

/// Mebibytes (`--block-cache`), fractions allowed: a finite number in
/// `0..=max`, returned in bytes.
pub fn mib_bytes(max: u64) -> impl Fn(&str) -> Result<usize, String> + Clone {
    move |s: &str| match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=max as f64).contains(&v) => Ok((v * (1u64 << 20) as f64).round() as usize),
        _ => Err(format!("{s} is not a number of MiB in 0..={max}")),
    }
}

/// The threads to start for `-t n` (None: all cores): at most the cores.
pub fn threads(asked: Option<usize>) -> usize {
    let cores = super::default_threads();
    asked.map_or(cores, |n| n.min(cores))
}
