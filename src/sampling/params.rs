//! The sampling parameters (llama.cpp's `common_params_sampling`), their
//! ranges, and the sampler names and letters of `--samplers` and
//! `--sampling-seq`.

use anyhow::{bail, ensure};
use serde::{Deserialize, Serialize};

use super::GrammarSpec;
use crate::tokenizer::Token;

/// Largest `--repeat-last-n`, `--dry-penalty-last-n`: llama.cpp reads them
/// as 32-bit ints. Values past the context behave as the whole context.
pub const MAX_LAST_N: usize = i32::MAX as usize;
/// llama.cpp's `--top-k` is a 32-bit int too.
pub const MAX_TOP_K: usize = i32::MAX as usize;

/// One step of the chain, in llama.cpp's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Penalties,
    Dry,
    TopNSigma,
    TopK,
    TypP,
    TopP,
    MinP,
    Xtc,
    Temperature,
}

/// Name, `--sampling-seq` letter, stage.
const STAGES: [(&str, char, Stage); 9] = [
    ("penalties", 'e', Stage::Penalties),
    ("dry", 'd', Stage::Dry),
    ("top_n_sigma", 's', Stage::TopNSigma),
    ("top_k", 'k', Stage::TopK),
    ("typ_p", 'y', Stage::TypP),
    ("top_p", 'p', Stage::TopP),
    ("min_p", 'm', Stage::MinP),
    ("xtc", 'x', Stage::Xtc),
    ("temperature", 't', Stage::Temperature),
];

/// llama.cpp's default chain.
pub const DEFAULT_STAGES: [Stage; 9] = [
    Stage::Penalties,
    Stage::Dry,
    Stage::TopNSigma,
    Stage::TopK,
    Stage::TypP,
    Stage::TopP,
    Stage::MinP,
    Stage::Xtc,
    Stage::Temperature,
];

impl Stage {
    /// A `--samplers` name: llama.cpp's, its kebab-case and no-dash forms,
    /// and `nucleus`, `temp`, `typ`; any case.
    pub fn from_name(name: &str) -> Option<Stage> {
        let n = name.to_ascii_lowercase();
        let alias = match n.as_str() {
            "nucleus" => Some(Stage::TopP),
            "temp" => Some(Stage::Temperature),
            "typ" => Some(Stage::TypP),
            _ => None,
        };
        alias.or_else(|| {
            STAGES
                .iter()
                .find(|(c, _, _)| *c == n || c.replace('_', "-") == n || c.replace('_', "") == n)
                .map(|s| s.2)
        })
    }

    pub fn from_letter(c: char) -> Option<Stage> {
        STAGES.iter().find(|s| s.1 == c).map(|s| s.2)
    }
}

/// `--samplers`: names separated by ';' (empty parts skipped).
pub fn parse_stages(list: &str) -> Result<Vec<Stage>, String> {
    let known = || STAGES.map(|s| s.0).join(";");
    list.split(';')
        .filter(|s| !s.is_empty())
        .map(|s| Stage::from_name(s).ok_or_else(|| format!("unknown sampler {s:?} (known: {})", known())))
        .collect()
}

/// `--sampling-seq`: one letter per sampler.
pub fn parse_letters(seq: &str) -> Result<Vec<Stage>, String> {
    let known: String = STAGES.iter().map(|s| s.1).collect();
    seq.chars()
        .map(|c| Stage::from_letter(c).ok_or_else(|| format!("unknown sampler letter {c:?} (known: {known})")))
        .collect()
}

/// `-l TOKEN_ID(+/-)BIAS`, as llama.cpp reads it (`15043+1`, `2-inf`).
pub fn parse_logit_bias(s: &str) -> Result<(Token, f32), String> {
    let bad = || format!("{s:?} is not TOKEN_ID(+/-)BIAS, e.g. 15043+1 or 15043-inf");
    let at = s
        .char_indices()
        .skip(1)
        .find(|&(_, c)| c == '+' || c == '-')
        .ok_or_else(bad)?
        .0;
    let token: Token = s[..at].trim().parse().map_err(|_| bad())?;
    let bias: f32 = s[at + 1..].trim().parse().map_err(|_| bad())?;
    if bias.is_nan() || s[at + 1..].trim().starts_with(['+', '-']) {
        return Err(bad());
    }
    Ok((token, if &s[at..=at] == "-" { -bias } else { bias }))
}

/// llama.cpp's sampling defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub samplers: Vec<Stage>,
    pub temp: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub typical_p: f32,
    pub top_n_sigma: f32,
    pub xtc_probability: f32,
    pub xtc_threshold: f32,
    pub repeat_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub repeat_last_n: usize,
    pub dry_multiplier: f32,
    pub dry_base: f32,
    pub dry_allowed_length: i32,
    pub dry_penalty_last_n: usize,
    pub dry_sequence_breakers: Vec<String>,
    /// 0: off, 1: Mirostat, 2: Mirostat 2.0 (they replace the chain).
    pub mirostat: u8,
    pub mirostat_lr: f32,
    pub mirostat_ent: f32,
    pub logit_bias: Vec<(Token, f32)>,
    /// End-of-generation tokens get a -inf bias.
    pub ignore_eos: bool,
    pub seed: u32,
    /// The output's grammar or JSON schema (absent in older session files).
    #[serde(default)]
    pub grammar: Option<Box<GrammarSpec>>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            samplers: DEFAULT_STAGES.to_vec(),
            temp: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            typical_p: 1.0,
            top_n_sigma: -1.0,
            xtc_probability: 0.0,
            xtc_threshold: 0.1,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            repeat_last_n: 64,
            dry_multiplier: 0.0,
            dry_base: 1.75,
            dry_allowed_length: 2,
            dry_penalty_last_n: 64,
            dry_sequence_breakers: ["\n", ":", "\"", "*"].map(String::from).to_vec(),
            mirostat: 0,
            mirostat_lr: 0.1,
            mirostat_ent: 5.0,
            logit_bias: Vec::new(),
            ignore_eos: false,
            seed: 0,
            grammar: None,
        }
    }
}

impl SamplingParams {
    /// Checks the values the flags accept; errors name the flag as a user
    /// types it.
    pub fn check(&self) -> anyhow::Result<()> {
        ensure!(
            self.temp.is_finite(),
            "--temp must be a finite number (<= 0: greedy), got {}",
            self.temp
        );
        for (flag, v) in [
            ("--top-p", self.top_p),
            ("--min-p", self.min_p),
            ("--typical", self.typical_p),
            ("--xtc-probability", self.xtc_probability),
            ("--xtc-threshold", self.xtc_threshold),
        ] {
            ensure!((0.0..=1.0).contains(&v), "{flag} must be in [0, 1], got {v}");
        }
        ensure!(
            self.top_k <= MAX_TOP_K,
            "--top-k must be in [0, {MAX_TOP_K}], got {}",
            self.top_k
        );
        let r = self.repeat_penalty;
        ensure!(
            r.is_finite() && r > 0.0 && (1.0 / r).is_finite(),
            "--repeat-penalty must be a number > 0 (1: off), got {r}"
        );
        for (flag, v) in [
            ("--top-nsigma", self.top_n_sigma),
            ("--presence-penalty", self.presence_penalty),
            ("--frequency-penalty", self.frequency_penalty),
            ("--mirostat-lr", self.mirostat_lr),
            ("--mirostat-ent", self.mirostat_ent),
        ] {
            ensure!(v.is_finite(), "{flag} must be a finite number, got {v}");
        }
        for (flag, n) in [
            ("--repeat-last-n", self.repeat_last_n),
            ("--dry-penalty-last-n", self.dry_penalty_last_n),
        ] {
            ensure!(
                n <= MAX_LAST_N,
                "{flag} must be in [-1, {MAX_LAST_N}] (-1: the context size), got {n}"
            );
        }
        let m = self.dry_multiplier;
        ensure!(
            m.is_finite() && m >= 0.0,
            "--dry-multiplier must be a finite number >= 0 (0: off), got {m}"
        );
        let b = self.dry_base;
        ensure!(
            b.is_finite() && b >= 1.0,
            "--dry-base must be a finite number >= 1, got {b}"
        );
        ensure!(
            self.mirostat <= 2,
            "--mirostat must be 0, 1 or 2, got {}",
            self.mirostat
        );
        if let Some(s) = self.dry_sequence_breakers.iter().find(|s| s.is_empty()) {
            bail!("--dry-sequence-breaker must not be empty, got {s:?}");
        }
        if let Some((t, b)) = self.logit_bias.iter().find(|(t, b)| *t < 0 || b.is_nan()) {
            bail!("--logit-bias {t}: need a token >= 0 and a bias that is a number, got {b}");
        }
        self.grammar.as_ref().map_or(Ok(()), |g| g.check())
    }

    /// `check`, and that the biased tokens are in a vocabulary of `n_vocab`.
    pub fn check_vocab(&self, n_vocab: usize) -> anyhow::Result<()> {
        self.check()?;
        if let Some((t, _)) = self.logit_bias.iter().find(|(t, _)| *t as usize >= n_vocab) {
            bail!("--logit-bias: token {t} is not in the vocabulary (0..{n_vocab})");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_letters_as_llama_cpp_reads_them() {
        let all = "penalties;dry;top_n_sigma;top_k;typ_p;top_p;min_p;xtc;temperature";
        assert_eq!(parse_stages(all).unwrap(), DEFAULT_STAGES);
        assert_eq!(parse_letters("edskypmxt").unwrap(), DEFAULT_STAGES);
        assert_eq!(
            parse_stages("Top-K;nucleus;minp;temp;").unwrap(),
            [Stage::TopK, Stage::TopP, Stage::MinP, Stage::Temperature]
        );
        assert!(parse_stages("top_k;bogus")
            .unwrap_err()
            .contains("unknown sampler \"bogus\""));
        assert!(parse_letters("kq").unwrap_err().contains("'q'"));
    }

    #[test]
    fn logit_bias_syntax() {
        assert_eq!(parse_logit_bias("15043+1").unwrap(), (15043, 1.0));
        assert_eq!(parse_logit_bias("2-0.5").unwrap(), (2, -0.5));
        assert_eq!(parse_logit_bias("2-inf").unwrap(), (2, f32::NEG_INFINITY));
        for bad in ["15043", "+1", "x+1", "1+", "1+nan", "1+-2"] {
            assert!(parse_logit_bias(bad).is_err(), "{bad}");
        }
    }
}
