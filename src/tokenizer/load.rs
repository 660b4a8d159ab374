//! Reading a tokenizer from a GGUF file's `tokenizer.ggml.*` metadata, step
//! by step: the vocabulary, the model type and its defaults, the tokens
//! with roles, the special-token cutter, the rendered pieces.

use anyhow::{anyhow, bail, Context, Result};

use super::bpe::Bpe;
use super::pieces::Pieces;
use super::pretokenize;
use super::special::Specials;
use super::special_ids::SpecialIds;
use super::vocab::{attr_of_type, Vocab, ATTR_LSTRIP, ATTR_NORMAL, ATTR_RSTRIP};
use super::{Model, Token, Tokenizer};
use crate::gguf::{GgufFile, Value};
use crate::quote::quoted;

/// What the model type (and its pre-tokenizer) sets before the file's keys
/// override it.
struct Defaults {
    bos: Option<Token>,
    eos: Option<Token>,
    add_bos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
}

impl Tokenizer {
    /// Reads the tokenizer of a GGUF file.
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let model_name = model_name(f)?;
        let pre = f.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("");
        let texts = read_texts(f)?;
        let n = texts.len();
        let scores = read_scores(f, n)?;
        let attrs = read_attrs(f, n)?;
        let mut vocab = Vocab::new(texts, scores, attrs);
        let (model, defaults) = read_model(f, model_name, pre)?;

        let mut ids = SpecialIds::read(f, n, defaults.bos, defaults.eos);
        ids.find_by_text(&mut vocab);
        let eog = ids.end_of_generation(&mut vocab);
        let specials = Specials::new(&vocab);
        let pieces = Pieces::new(&vocab, matches!(model, Model::Spm))?;
        // llama.cpp sets these after its caches are built.
        apply_model_specific_attrs(f, pre, &specials, &mut vocab);

        Ok(Self {
            vocab,
            model,
            bos: ids.bos,
            eos: ids.eos,
            eot: ids.eot,
            add_bos: bool_key(f, "tokenizer.ggml.add_bos_token").unwrap_or(defaults.add_bos),
            add_eos: bool_key(f, "tokenizer.ggml.add_eos_token").unwrap_or(false),
            add_space_prefix: bool_key(f, "tokenizer.ggml.add_space_prefix").unwrap_or(defaults.add_space_prefix),
            clean_spaces: defaults.clean_spaces,
            eog,
            specials,
            pieces,
        })
    }
}

fn model_name(f: &GgufFile) -> Result<&str> {
    f.get("tokenizer.ggml.model")
        .ok_or_else(|| anyhow!("the GGUF file has no tokenizer: key tokenizer.ggml.model is missing"))?
        .as_str()
        .ok_or_else(|| anyhow!("tokenizer.ggml.model is not a string"))
}

/// The token texts (`tokenizer.ggml.tokens`); an empty one becomes
/// `[EMPTY_i]`, as in llama.cpp.
fn read_texts(f: &GgufFile) -> Result<Vec<String>> {
    let tokens = f
        .get("tokenizer.ggml.tokens")
        .ok_or_else(|| anyhow!("key tokenizer.ggml.tokens (the vocabulary) is missing"))?
        .as_array()
        .ok_or_else(|| anyhow!("tokenizer.ggml.tokens is not an array"))?;
    let n = tokens.len();
    if n == 0 || n > i32::MAX as usize {
        bail!("tokenizer.ggml.tokens has {n} entries");
    }
    let mut texts = Vec::with_capacity(n);
    for (i, t) in tokens.iter().enumerate() {
        let s = t
            .as_str()
            .ok_or_else(|| anyhow!("tokenizer.ggml.tokens[{i}] is not a string"))?;
        texts.push(if s.is_empty() {
            format!("[EMPTY_{i}]")
        } else {
            s.to_string()
        });
    }
    Ok(texts)
}

/// The first `n` entries of array `key`, or `None` when the key is absent.
fn per_token_array<'f>(f: &'f GgufFile, key: &str, n: usize) -> Result<Option<&'f [Value]>> {
    let Some(v) = f.get(key) else {
        return Ok(None);
    };
    let a = v.as_array().ok_or_else(|| anyhow!("{key} is not an array"))?;
    if a.len() < n {
        bail!("{key} has {} entries for {n} tokens", a.len());
    }
    Ok(Some(&a[..n]))
}

/// Token scores (`tokenizer.ggml.scores`; zero when absent).
fn read_scores(f: &GgufFile, n: usize) -> Result<Vec<f32>> {
    match per_token_array(f, "tokenizer.ggml.scores", n)? {
        None => Ok(vec![0.0; n]),
        Some(a) => a
            .iter()
            .map(|x| x.as_f64().map(|x| x as f32))
            .collect::<Option<_>>()
            .ok_or_else(|| anyhow!("tokenizer.ggml.scores holds non-numbers")),
    }
}

/// Token attributes from `tokenizer.ggml.token_type` (all normal when absent).
fn read_attrs(f: &GgufFile, n: usize) -> Result<Vec<u16>> {
    Ok(match per_token_array(f, "tokenizer.ggml.token_type", n)? {
        None => vec![ATTR_NORMAL; n],
        Some(a) => a.iter().map(|x| attr_of_type(x.as_i64().unwrap_or(0))).collect(),
    })
}

/// The tokenization algorithm named by `tokenizer.ggml.model`, and its defaults.
fn read_model(f: &GgufFile, model_name: &str, pre: &str) -> Result<(Model, Defaults)> {
    match model_name {
        "llama" => Ok((
            Model::Spm,
            Defaults {
                bos: Some(1),
                eos: Some(2),
                add_bos: true,
                add_space_prefix: true,
                clean_spaces: false,
            },
        )),
        "gpt2" => read_bpe(f, pre),
        other => bail!(
            "unsupported tokenizer model {} (tokenizer.ggml.model): supported are \"llama\" (SentencePiece) and \"gpt2\" (byte-level BPE)",
            quoted(other)
        ),
    }
}

/// Byte-level BPE: the pre-tokenizer named `pre` and the merges.
fn read_bpe(f: &GgufFile, pre: &str) -> Result<(Model, Defaults)> {
    let (rules, opts) = pretokenize::for_pre(pre)?.ok_or_else(|| {
        anyhow!(
            "unsupported pre-tokenizer {} (tokenizer.ggml.pre) for a gpt2 tokenizer",
            quoted(pre)
        )
    })?;
    let merges = f
        .get("tokenizer.ggml.merges")
        .ok_or_else(|| anyhow!("key tokenizer.ggml.merges is missing (needed by a gpt2 tokenizer)"))?
        .as_array()
        .ok_or_else(|| anyhow!("tokenizer.ggml.merges is not an array"))?;
    let merges: Vec<&str> = merges
        .iter()
        .map(Value::as_str)
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow!("tokenizer.ggml.merges holds non-strings"))?;
    let bpe = Bpe::new(&merges, rules, opts.ignore_merges).context("reading BPE merges")?;
    let defaults = Defaults {
        bos: if opts.no_bos { None } else { Some(11) },
        eos: Some(11),
        add_bos: opts.add_bos.unwrap_or(false),
        add_space_prefix: false,
        clean_spaces: opts.clean_spaces,
    };
    Ok((Model::Bpe(Box::new(bpe)), defaults))
}

fn bool_key(f: &GgufFile, key: &str) -> Option<bool> {
    f.get(key).and_then(Value::as_bool)
}

/// llama.cpp's per-model strip attributes.
fn apply_model_specific_attrs(f: &GgufFile, pre: &str, specials: &Specials, vocab: &mut Vocab) {
    let name = f
        .get("general.name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    let arch = f.get("general.architecture").and_then(Value::as_str).unwrap_or("");
    if ["jina-v2-de", "jina-v2-es", "jina-v2-code", "mmbert"]
        .iter()
        .any(|s| pre.contains(s))
        || ["nomic-bert-moe", "jina-bert-v3"].iter().any(|s| arch.contains(s))
    {
        vocab.set_attr("<mask>", ATTR_LSTRIP, true);
    } else if name.contains("phi-3") || name.contains("phi3") {
        for &t in specials.tokens() {
            vocab.attrs[t as usize] |= ATTR_RSTRIP;
        }
        vocab.set_attr("</s>", ATTR_RSTRIP, true);
        for text in ["<unk>", "<s>", "<|endoftext|>"] {
            vocab.set_attr(text, ATTR_RSTRIP, false);
        }
    } else if name.contains("modern-bert") {
        vocab.set_attr("[MASK]", ATTR_LSTRIP, true);
    }
}
