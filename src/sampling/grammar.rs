//! Constrained output (`--grammar`, `--json-schema`): the llguidance crate
//! keeps the grammar's state and says which tokens may come next; the
//! sampler draws as usual, checks the token, and draws again with the
//! grammar's mask when it was refused (llama.cpp's common sampler does the
//! same, so a token the grammar refuses is never emitted).

use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};

use super::{gbnf, SamplingParams};
use crate::tokenizer::{Token, Tokenizer};

/// A constraint as the user gave it (kept as text: a session file saves it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "text", rename_all = "snake_case")]
pub enum GrammarSpec {
    /// llama.cpp's GBNF (`--grammar`); llguidance's Lark when it starts
    /// with `%llguidance`, as llama.cpp built with llguidance reads it.
    Gbnf(String),
    /// A JSON schema (`--json-schema`).
    JsonSchema(String),
}

/// Whitespace between JSON tokens as llama.cpp's schema grammars allow it
/// (a space, or one or two newlines and up to 20 spaces or tabs), not
/// llguidance's default of any amount: at a temperature a model can
/// otherwise write newlines until `-n` runs out, mid-object.
const JSON_WHITESPACE: &str = r"[ ]|\n{1,2}[ \t]{0,20}";

/// `schema` with `JSON_WHITESPACE`, unless it sets llguidance's options
/// itself (`x-guidance`).
fn bounded_whitespace(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(o) = schema.as_object_mut().filter(|o| !o.contains_key("x-guidance")) {
        o.insert(
            "x-guidance".into(),
            serde_json::json!({ "whitespace_pattern": JSON_WHITESPACE }),
        );
    }
    schema
}

impl GrammarSpec {
    fn top_level(&self) -> Result<TopLevelGrammar> {
        Ok(match self {
            GrammarSpec::Gbnf(g) if g.trim_start().starts_with("%llguidance") => TopLevelGrammar::from_lark(g.clone()),
            GrammarSpec::Gbnf(g) => TopLevelGrammar::from_lark(gbnf::to_lark(g)?),
            GrammarSpec::JsonSchema(s) => {
                let v: serde_json::Value = serde_json::from_str(s).context("JSON schema: not JSON")?;
                ensure!(
                    v.is_object() || v.is_boolean(),
                    "JSON schema: must be an object or a boolean"
                );
                TopLevelGrammar::from_json_schema(bounded_whitespace(v))
            }
        })
    }

    /// Checks that the constraint compiles (against a byte-level
    /// vocabulary: no model needed, so a bad one stops a run before it loads).
    pub fn check(&self) -> Result<()> {
        self.check_as(self.flag())
    }

    /// `check`, its errors naming `what` (a server request's field).
    pub fn check_as(&self, what: &str) -> Result<()> {
        compile(self, &ApproximateTokEnv::single_byte_env(), what).map(drop)
    }

    fn flag(&self) -> &'static str {
        match self {
            GrammarSpec::Gbnf(_) => "--grammar",
            GrammarSpec::JsonSchema(_) => "--json-schema",
        }
    }
}

/// The constraint compiled for `env`; errors on one line, naming `what`.
fn compile(spec: &GrammarSpec, env: &TokEnv, what: &str) -> Result<Matcher> {
    let one_line = |e: anyhow::Error| {
        let text = format!("{e:#}").split_whitespace().collect::<Vec<_>>().join(" ");
        anyhow::anyhow!("{what}: {text}")
    };
    let top = spec.top_level().map_err(one_line)?;
    let mut factory = ParserFactory::new_simple(env).map_err(one_line)?;
    factory.quiet();
    let parser = factory.create_parser(top).map_err(one_line)?;
    let m = Matcher::new(Ok(parser));
    match m.get_error() {
        Some(e) => Err(one_line(anyhow::anyhow!(e))),
        None => Ok(m),
    }
}

/// A grammar's state while tokens are generated.
pub struct Grammar {
    matcher: Matcher,
    /// The end-of-generation tokens (what a finished grammar allows).
    eog: Vec<Token>,
    /// Whether the next draw starts a new answer (the state is reset first).
    stale: bool,
}

impl Grammar {
    /// The constraint `params` name, compiled for `tok`'s vocabulary.
    pub fn for_params(params: &SamplingParams, tok: &Tokenizer) -> Result<Option<Box<Self>>> {
        (params.grammar.as_ref())
            .map(|g| Self::new(g, tok).map(Box::new))
            .transpose()
    }

    fn new(spec: &GrammarSpec, tok: &Tokenizer) -> Result<Self> {
        let eog: Vec<Token> = (0..tok.n_vocab() as Token).filter(|&t| tok.is_eog(t)).collect();
        ensure!(
            !eog.is_empty(),
            "{}: the model has no end-of-generation token to end a constrained answer",
            spec.flag()
        );
        let matcher = compile(spec, &token_env(tok, &eog), spec.flag())?;
        Ok(Self {
            matcher,
            eog,
            stale: false,
        })
    }

    /// The first end-of-generation token (what ends a finished answer).
    pub fn eog(&self) -> Token {
        self.eog[0]
    }

    /// Makes the next draw start the grammar from its beginning.
    pub fn restart(&mut self) {
        self.stale = true;
    }

    fn fresh(&mut self) -> Result<()> {
        if std::mem::take(&mut self.stale) {
            self.matcher.reset()?;
        }
        Ok(())
    }

    /// Whether `t` may come next.
    pub fn allows(&mut self, t: Token) -> Result<bool> {
        self.fresh()?;
        if self.matcher.is_stopped() {
            return Ok(self.eog.contains(&t));
        }
        Ok(self.matcher.validate_tokens(&[t as u32])? == 1)
    }

    /// The tokens that may come next.
    pub fn mask(&mut self) -> Result<SimpleVob> {
        self.fresh()?;
        self.matcher.compute_mask_or_eos()
    }

    /// Advances past `t` (a token `allows` accepted).
    pub fn commit(&mut self, t: Token) -> Result<()> {
        self.fresh()?;
        self.matcher.consume_token(t as u32)
    }
}

/// The vocabulary as llguidance sees it: each token's bytes, control tokens
/// marked special (no grammar text matches them), the end-of-generation
/// tokens as its EOS set.
fn token_env(tok: &Tokenizer, eog: &[Token]) -> TokEnv {
    let n = tok.n_vocab();
    let words: Vec<Vec<u8>> = (0..n as Token)
        .map(|t| match tok.is_control(t) {
            true => {
                let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                w.extend(tok.token_to_piece(t, true));
                w
            }
            false => tok.token_to_piece(t, false),
        })
        .collect();
    let info = TokRxInfo::new(n as u32, eog[0] as u32);
    let eos: Vec<u32> = eog.iter().map(|&t| t as u32).collect();
    let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos);
    Arc::new(ApproximateTokEnv::new(trie))
}
