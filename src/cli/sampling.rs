//! The sampling flags, as llama.cpp spells them (generation, chat, serve).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use super::limits;
use crate::sampling::{parse_letters, parse_logit_bias, parse_stages, random_seed, GrammarSpec, SamplingParams, Stage};
use crate::tokenizer::Token;

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Samplers in order, separated by ';' (names: penalties, dry,
    /// top_n_sigma, top_k, typ_p, top_p, min_p, xtc, temperature)
    #[arg(long, value_parser = parse_stages, help_heading = "Sampling",
          default_value = "penalties;dry;top_n_sigma;top_k;typ_p;top_p;min_p;xtc;temperature")]
    pub samplers: ::std::vec::Vec<Stage>,
    /// Samplers in order, one letter each (e d s k y p m x t)
    #[arg(long = "sampling-seq", visible_alias = "sampler-seq", value_parser = parse_letters,
          conflicts_with = "samplers", help_heading = "Sampling")]
    pub sampling_seq: Option<::std::vec::Vec<Stage>>,
    /// Temperature, finite (<= 0 = greedy)
    #[arg(
        long,
        visible_alias = "temperature",
        default_value_t = 0.8,
        allow_negative_numbers = true,
        help_heading = "Sampling"
    )]
    pub temp: f32,
    /// Top-k sampling, 0..=2147483647 (0 = off)
    #[arg(long = "top-k", default_value_t = 40, help_heading = "Sampling")]
    pub top_k: usize,
    /// Top-p (nucleus) sampling, 0..=1 (1.0 = off)
    #[arg(
        long = "top-p",
        allow_negative_numbers = true,
        default_value_t = 0.95,
        help_heading = "Sampling"
    )]
    pub top_p: f32,
    /// Min-p sampling, 0..=1 (0.0 = off)
    #[arg(
        long = "min-p",
        allow_negative_numbers = true,
        default_value_t = 0.05,
        help_heading = "Sampling"
    )]
    pub min_p: f32,
    /// Locally typical sampling, 0..=1 (1.0 = off)
    #[arg(
        long,
        visible_alias = "typical-p",
        allow_negative_numbers = true,
        default_value_t = 1.0,
        help_heading = "Sampling"
    )]
    pub typical: f32,
    /// Top-n-sigma sampling, finite (<= 0 = off)
    #[arg(long = "top-nsigma", visible_alias = "top-n-sigma", default_value_t = -1.0,
          allow_negative_numbers = true, help_heading = "Sampling")]
    pub top_nsigma: f32,
    /// XTC probability, 0..=1 (0.0 = off)
    #[arg(
        long = "xtc-probability",
        allow_negative_numbers = true,
        default_value_t = 0.0,
        help_heading = "Sampling"
    )]
    pub xtc_probability: f32,
    /// XTC threshold, 0..=1 (> 0.5 = off)
    #[arg(
        long = "xtc-threshold",
        allow_negative_numbers = true,
        default_value_t = 0.1,
        help_heading = "Sampling"
    )]
    pub xtc_threshold: f32,
    /// Penalty for repeated tokens, > 0 (1.0 = off)
    #[arg(
        long = "repeat-penalty",
        allow_negative_numbers = true,
        default_value_t = 1.0,
        help_heading = "Sampling"
    )]
    pub repeat_penalty: f32,
    /// Tokens considered by the penalties, -1..=16777216 (-1 = context size,
    /// 0 = off)
    #[arg(
        long = "repeat-last-n",
        default_value_t = 64,
        allow_negative_numbers = true,
        value_parser = limits::count_or_minus_one(limits::MAX_TOKENS as i64),
        help_heading = "Sampling"
    )]
    pub repeat_last_n: i64,
    /// Presence penalty, finite (0.0 = off)
    #[arg(
        long = "presence-penalty",
        default_value_t = 0.0,
        allow_negative_numbers = true,
        help_heading = "Sampling"
    )]
    pub presence_penalty: f32,
    /// Frequency penalty, finite (0.0 = off)
    #[arg(
        long = "frequency-penalty",
        default_value_t = 0.0,
        allow_negative_numbers = true,
        help_heading = "Sampling"
    )]
    pub frequency_penalty: f32,
    /// DRY multiplier, >= 0 (0.0 = off)
    #[arg(
        long = "dry-multiplier",
        allow_negative_numbers = true,
        default_value_t = 0.0,
        help_heading = "Sampling"
    )]
    pub dry_multiplier: f32,
    /// DRY base, >= 1
    #[arg(
        long = "dry-base",
        allow_negative_numbers = true,
        default_value_t = 1.75,
        help_heading = "Sampling"
    )]
    pub dry_base: f32,
    /// DRY: repeats longer than this are penalized, -2147483648..=2147483647
    #[arg(
        long = "dry-allowed-length",
        default_value_t = 2,
        allow_negative_numbers = true,
        help_heading = "Sampling"
    )]
    pub dry_allowed_length: i32,
    /// Tokens DRY scans, -1..=16777216 (-1 = context size, 0 = off)
    #[arg(long = "dry-penalty-last-n", default_value_t = 64, allow_negative_numbers = true,
          value_parser = limits::count_or_minus_one(limits::MAX_TOKENS as i64), help_heading = "Sampling")]
    pub dry_penalty_last_n: i64,
    /// DRY sequence breaker, repeatable; replaces the defaults ('\n', ':',
    /// '"', '*'); "none" = no breakers
    #[arg(long = "dry-sequence-breaker", help_heading = "Sampling")]
    pub dry_sequence_breaker: Vec<String>,
    /// Mirostat: 0 = off, 1 = Mirostat, 2 = Mirostat 2.0 (replace the
    /// samplers above)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2),
          help_heading = "Sampling")]
    pub mirostat: u8,
    /// Mirostat learning rate (eta), finite
    #[arg(
        long = "mirostat-lr",
        default_value_t = 0.1,
        allow_negative_numbers = true,
        help_heading = "Sampling"
    )]
    pub mirostat_lr: f32,
    /// Mirostat target entropy (tau), finite
    #[arg(
        long = "mirostat-ent",
        default_value_t = 5.0,
        allow_negative_numbers = true,
        help_heading = "Sampling"
    )]
    pub mirostat_ent: f32,
    /// Logit bias TOKEN_ID(+/-)BIAS, repeatable (e.g. 15043+1, 2-inf); the
    /// token within the vocabulary
    #[arg(short = 'l', long = "logit-bias", value_parser = parse_logit_bias, help_heading = "Sampling")]
    pub logit_bias: Vec<(Token, f32)>,
    /// Never end on an end-of-generation token (their logits get -inf)
    #[arg(long = "ignore-eos", help_heading = "Sampling")]
    pub ignore_eos: bool,
    /// Random seed, -1..=4294967295 (-1 or 4294967295 = random)
    #[arg(short = 's', long = "seed", default_value_t = -1, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i64).range(-1..=u32::MAX as i64), help_heading = "Sampling")]
    pub seed: i64,
    /// GBNF grammar the output follows (llama.cpp's syntax; llguidance's
    /// Lark when it starts with %llguidance)
    #[arg(long, value_name = "GRAMMAR", help_heading = "Constrained output",
          conflicts_with_all = ["grammar_file", "json_schema", "json_schema_file"])]
    pub grammar: Option<String>,
    /// File to read the --grammar from
    #[arg(long = "grammar-file", value_name = "FNAME", help_heading = "Constrained output",
          conflicts_with_all = ["json_schema", "json_schema_file"])]
    pub grammar_file: Option<PathBuf>,
    /// JSON schema the output follows, e.g. '{"type": "object"}' for any
    /// JSON object
    #[arg(
        short = 'j',
        long = "json-schema",
        value_name = "SCHEMA",
        help_heading = "Constrained output",
        conflicts_with = "json_schema_file"
    )]
    pub json_schema: Option<String>,
    /// File to read the --json-schema from (llama.cpp: -jf)
    #[arg(long = "json-schema-file", value_name = "FILE", help_heading = "Constrained output")]
    pub json_schema_file: Option<PathBuf>,
}

/// llama.cpp's "random" seed (`LLAMA_DEFAULT_SEED`).
const RANDOM_SEED: i64 = u32::MAX as i64;

impl SamplingArgs {
    /// Whether `-s` asks for a new random seed.
    pub fn random_seed(&self) -> bool {
        self.seed < 0 || self.seed == RANDOM_SEED
    }

    /// The constraint the flags give, its file read.
    fn grammar(&self) -> anyhow::Result<Option<Box<GrammarSpec>>> {
        let read = |flag: &str, path: &Path| {
            std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))
        };
        Ok(
            match (
                &self.grammar,
                &self.grammar_file,
                &self.json_schema,
                &self.json_schema_file,
            ) {
                (Some(g), ..) => Some(Box::new(GrammarSpec::Gbnf(g.clone()))),
                (_, Some(f), ..) => Some(Box::new(GrammarSpec::Gbnf(read("--grammar-file", f)?))),
                (_, _, Some(s), _) => Some(Box::new(GrammarSpec::JsonSchema(s.clone()))),
                (.., Some(f)) => Some(Box::new(GrammarSpec::JsonSchema(read("--json-schema-file", f)?))),
                _ => None,
            },
        )
    }

    /// The sampler's parameters, checked (`SamplingParams::check`: the same
    /// ranges a session's record gets).
    pub fn params(&self, n_ctx: usize) -> anyhow::Result<SamplingParams> {
        let window = |n: i64| if n < 0 { n_ctx } else { n as usize };
        let breakers = match self.dry_sequence_breaker.as_slice() {
            [] => SamplingParams::default().dry_sequence_breakers,
            b => b.iter().filter(|s| *s != "none").cloned().collect(),
        };
        let p = SamplingParams {
            samplers: self.sampling_seq.clone().unwrap_or_else(|| self.samplers.clone()),
            temp: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            typical_p: self.typical,
            top_n_sigma: self.top_nsigma,
            xtc_probability: self.xtc_probability,
            xtc_threshold: self.xtc_threshold,
            repeat_penalty: self.repeat_penalty,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            repeat_last_n: window(self.repeat_last_n),
            dry_multiplier: self.dry_multiplier,
            dry_base: self.dry_base,
            dry_allowed_length: self.dry_allowed_length,
            dry_penalty_last_n: window(self.dry_penalty_last_n),
            dry_sequence_breakers: breakers,
            mirostat: self.mirostat,
            mirostat_lr: self.mirostat_lr,
            mirostat_ent: self.mirostat_ent,
            logit_bias: self.logit_bias.clone(),
            ignore_eos: self.ignore_eos,
            seed: match self.random_seed() {
                true => random_seed() as u32,
                false => self.seed as u32,
            },
            grammar: self.grammar()?,
        };
        p.check()?;
        Ok(p)
    }
}
