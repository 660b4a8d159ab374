//! A sampler's state for session files: enough to go on exactly where it
//! was (generator positions, recent tokens, Mirostat's target).

use serde::{Deserialize, Serialize};

use super::{Grammar, History, Rngs, Sampler, SamplingParams, VocabFacts};
use crate::tokenizer::{Token, Tokenizer};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplerState {
    pub params: SamplingParams,
    rngs: Rngs,
    mirostat_mu: f32,
    history: Vec<Token>,
}

impl SamplerState {
    /// Checks a saved state (a session file's): its parameters as flags
    /// are, its generators, its history as tokens of a vocabulary of
    /// `n_vocab`.
    pub fn check(&self, n_vocab: usize) -> anyhow::Result<()> {
        self.params.check_vocab(n_vocab)?;
        for (name, g) in [
            ("dist", &self.rngs.dist),
            ("xtc", &self.rngs.xtc),
            ("mirostat", &self.rngs.mirostat),
        ] {
            g.check().map_err(|e| anyhow::anyhow!("sampler {name} {e}"))?;
        }
        anyhow::ensure!(
            self.mirostat_mu.is_finite(),
            "sampler mirostat_mu must be a finite number, got {}",
            self.mirostat_mu
        );
        if let Some(t) = self
            .history
            .iter()
            .find(|&&t| usize::try_from(t).map_or(true, |t| t >= n_vocab))
        {
            anyhow::bail!("sampler history: token {t} is not in the vocabulary (0..{n_vocab})");
        }
        Ok(())
    }
}

impl Sampler {
    pub fn state(&self) -> SamplerState {
        SamplerState {
            params: self.params.clone(),
            rngs: self.rngs.clone(),
            mirostat_mu: self.mu,
            history: self.history.to_vec(),
        }
    }

    /// A sampler going on from `s`, checked as `SamplerState::check` does.
    pub fn from_state(s: &SamplerState, tok: &Tokenizer) -> anyhow::Result<Self> {
        s.check(tok.n_vocab())?;
        let vocab = VocabFacts::new(&s.params, tok);
        let grammar = Grammar::for_params(&s.params, tok)?;
        Ok(Self {
            grammar,
            ..Self::restored(s, vocab)
        })
    }

    pub(super) fn restored(s: &SamplerState, vocab: VocabFacts) -> Self {
        let mut history = History::new(&s.params);
        history.reset_to(&s.history);
        Self {
            params: s.params.clone(),
            rngs: s.rngs.clone(),
            mu: s.mirostat_mu,
            history,
            vocab,
            candidates: Default::default(),
            grammar: None,
            drawn: None,
        }
    }
}
