//! Token sampling as llama.cpp's common sampler does it: logit biases, then
//! the `--samplers` chain (penalties, DRY, top-n-sigma, top-k, typical,
//! top-p, min-p, XTC, temperature) and a draw, or Mirostat; with the same
//! random generator (`std::mt19937`), so a seed gives llama.cpp's tokens.
//! `temp <= 0` is greedy, as in llama.cpp (the draw still takes its number).

mod candidates;
mod cpp_sort;
mod dry;
mod gbnf;
mod grammar;
mod mirostat;
mod params;
mod penalties;
mod rng;
mod state;

use candidates::Candidates;
use dry::Breakers;
use grammar::Grammar;
use mirostat::Mirostat;
use penalties::History;
use rng::Mt19937;

pub use grammar::GrammarSpec;
pub use params::{
    parse_letters, parse_logit_bias, parse_stages, SamplingParams, Stage, DEFAULT_STAGES, MAX_LAST_N, MAX_TOP_K,
};
pub use state::SamplerState;

use crate::tokenizer::{Token, Tokenizer};

/// A seed from the clock, as `-s -1` gives.
pub fn random_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The generators: llama.cpp's dist, XTC and Mirostat samplers each seed
/// their own from the same seed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Rngs {
    dist: Mt19937,
    xtc: Mt19937,
    mirostat: Mt19937,
}

impl Rngs {
    fn new(seed: u32) -> Self {
        let g = Mt19937::new(seed);
        Self {
            dist: g.clone(),
            xtc: g.clone(),
            mirostat: g,
        }
    }
}

/// What the vocabulary tells the sampler.
#[derive(Debug, Clone, Default)]
struct VocabFacts {
    n_vocab: usize,
    /// End-of-generation tokens (`--ignore-eos` bans them).
    eog: Vec<Token>,
    breakers: Breakers,
}

impl VocabFacts {
    fn new(p: &SamplingParams, tok: &Tokenizer) -> Self {
        let n_vocab = tok.n_vocab();
        let dry_on = p.dry_multiplier != 0.0 && p.dry_base >= 1.0 && p.dry_penalty_last_n != 0;
        Self {
            n_vocab,
            // llama.cpp drops --ignore-eos for a vocabulary without EOS.
            eog: match tok.eos() {
                Some(_) => (0..n_vocab as Token).filter(|&t| tok.is_eog(t)).collect(),
                None => Vec::new(),
            },
            breakers: match dry_on {
                true => Breakers::new(&p.dry_sequence_breakers, tok),
                false => Breakers::default(),
            },
        }
    }
}

pub struct Sampler {
    /// Read at each draw: a changed value (chat's `/set`) takes effect at
    /// the next token.
    pub params: SamplingParams,
    rngs: Rngs,
    /// Mirostat's running target.
    mu: f32,
    history: History,
    vocab: VocabFacts,
    candidates: Candidates,
    /// The constraint (`params.grammar` compiled for the vocabulary).
    /// (Boxed: a sampler without one stays small.)
    grammar: Option<Box<Grammar>>,
    /// The token `sample` gave last, until it is accepted.
    drawn: Option<Token>,
}

impl Sampler {
    /// A sampler for `tok`'s vocabulary; the parameters checked as flags
    /// are (and the biased tokens against the vocabulary).
    pub fn new(params: SamplingParams, tok: &Tokenizer) -> anyhow::Result<Self> {
        params.check_vocab(tok.n_vocab())?;
        let vocab = VocabFacts::new(&params, tok);
        let grammar = Grammar::for_params(&params, tok)?;
        Ok(Self {
            grammar,
            ..Self::with_vocab(params, vocab)
        })
    }

    fn with_vocab(params: SamplingParams, vocab: VocabFacts) -> Self {
        Self {
            rngs: Rngs::new(params.seed),
            mu: 2.0 * params.mirostat_ent,
            history: History::new(&params),
            params,
            vocab,
            candidates: Candidates::default(),
            grammar: None,
            drawn: None,
        }
    }

    /// Restarts the random streams (and Mirostat's target) from `seed`.
    pub fn reseed(&mut self, seed: u32) {
        self.params.seed = seed;
        self.rngs = Rngs::new(seed);
        self.mu = 2.0 * self.params.mirostat_ent;
    }

    /// Recent tokens (the penalties' and DRY's memory).
    pub fn history(&self) -> Vec<Token> {
        self.history.to_vec()
    }

    /// Forgets the recent tokens, then remembers the last of `tokens`.
    /// (An answer drawn after this starts the grammar afresh.)
    pub fn set_history(&mut self, tokens: &[Token]) {
        self.history.reset_to(tokens);
        self.grammar.iter_mut().for_each(|g| g.restart());
    }

    /// Records a token that is now part of the text (prompt or generated).
    /// The token `sample` just gave advances the grammar; any other token
    /// is prompt text, so the next answer starts the grammar afresh (as
    /// llama.cpp resets its sampler for each answer).
    pub fn accept(&mut self, t: Token) {
        self.history.accept(t);
        let Some(g) = &mut self.grammar else { return };
        if self.drawn.take() != Some(t) {
            g.restart();
        } else if let Err(e) = g.commit(t) {
            crate::log_warn!("infllm: grammar: {e}");
        }
    }

    /// Picks the next token from `logits`. With a grammar, as llama.cpp's
    /// common sampler: a draw, then a check of the token, and when the
    /// grammar refuses it, a second draw with the grammar's mask applied.
    pub fn sample(&mut self, logits: &[f32]) -> Token {
        let t = self.draw(logits, None);
        let allowed = match &mut self.grammar {
            None => return t,
            Some(g) => g.allows(t),
        };
        let t = match allowed.and_then(|ok| if ok { Ok(t) } else { self.draw_masked(logits) }) {
            Ok(t) => t,
            Err(e) => {
                // A grammar that failed (past llguidance's limits) ends the answer.
                crate::log_warn!("infllm: grammar: {e}: stopping");
                self.grammar.as_ref().map_or(t, |g| g.eog())
            }
        };
        self.drawn = Some(t);
        t
    }

    /// A draw among the tokens the grammar allows; its end-of-generation
    /// token when none is left (a finished grammar under `--ignore-eos`).
    fn draw_masked(&mut self, logits: &[f32]) -> anyhow::Result<Token> {
        let g = self.grammar.as_mut().expect("a grammar");
        let mask = g.mask()?;
        let eog = g.eog();
        let t = self.draw(logits, Some(&|t: Token| mask.is_allowed(t as u32)));
        Ok(if mask.is_allowed(t as u32) { t } else { eog })
    }

    /// The chain's draw from `logits`, the tokens `allowed` refuses removed
    /// first.
    fn draw(&mut self, logits: &[f32], allowed: Option<&dyn Fn(Token) -> bool>) -> Token {
        let c = &mut self.candidates;
        c.fill(logits);
        if let Some(allowed) = allowed {
            c.data
                .iter_mut()
                .filter(|d| !allowed(d.id))
                .for_each(|d| d.logit = f32::NEG_INFINITY);
        }
        let p = &self.params;
        let eog = self.vocab.eog.iter().filter(|_| p.ignore_eos);
        c.bias(p.logit_bias.iter().copied().chain(eog.map(|&t| (t, f32::NEG_INFINITY))));
        if p.mirostat != 0 {
            if p.temp != 1.0 {
                c.temperature(p.temp);
            }
            let mut m = Mirostat {
                tau: p.mirostat_ent,
                eta: p.mirostat_lr,
                mu: &mut self.mu,
                rng: &mut self.rngs.mirostat,
            };
            return match p.mirostat {
                1 => m.v1(c, self.vocab.n_vocab),
                _ => m.v2(c),
            };
        }
        for i in 0..self.params.samplers.len() {
            self.apply(self.params.samplers[i]);
        }
        let c = &mut self.candidates;
        c.dist(&mut self.rngs.dist).unwrap_or(0)
    }

    fn apply(&mut self, stage: Stage) {
        let (c, p) = (&mut self.candidates, &self.params);
        match stage {
            Stage::Penalties => self.history.penalize(c, p),
            Stage::Dry => dry::apply(c, p, &self.history, &self.vocab.breakers),
            Stage::TopNSigma => c.top_n_sigma(p.top_n_sigma),
            Stage::TopK => c.top_k(p.top_k),
            Stage::TypP => c.typical(p.typical_p),
            Stage::TopP => c.top_p(p.top_p),
            Stage::MinP => c.min_p(p.min_p),
            Stage::Xtc => c.xtc(p.xtc_probability, p.xtc_threshold, &mut self.rngs.xtc),
            Stage::Temperature => c.temperature(p.temp),
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

#[cfg(test)]
mod tests;
