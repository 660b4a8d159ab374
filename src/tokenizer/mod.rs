//! Tokenizers built from a GGUF file's `tokenizer.ggml.*` metadata, giving
//! exactly llama.cpp's token ids:
//!
//! - `spm`: SentencePiece-style BPE over scores, with `<0xNN>` byte
//!   fallback (`tokenizer.ggml.model = "llama"`; Llama 2, Gemma).
//! - `bpe`: byte-level BPE over merge ranks (`"gpt2"`; SmolLM, Llama 3,
//!   Qwen), after the pre-tokenizer named by `tokenizer.ggml.pre`
//!   (`pretokenize`).
//!
//! Before either runs, special tokens (control and user-defined ones) are
//! cut out of the text, longest first, as llama.cpp does. Decoding follows
//! `llama_detokenize`, including its clean-up of spaces before punctuation.

mod bpe;
mod pretokenize;
mod spm;
mod stream;
mod unicode;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use anyhow::{anyhow, bail, Context, Result};

use crate::gguf::{GgufFile, Value};

pub use stream::Utf8Stream;

/// A token id, as llama.cpp's `llama_token`.
pub type Token = i32;

// Token attributes, numbered as llama.cpp's `llama_token_attr`.
const ATTR_UNKNOWN: u16 = 1 << 0;
const ATTR_UNUSED: u16 = 1 << 1;
const ATTR_NORMAL: u16 = 1 << 2;
const ATTR_CONTROL: u16 = 1 << 3;
const ATTR_USER_DEFINED: u16 = 1 << 4;
const ATTR_BYTE: u16 = 1 << 5;
const ATTR_LSTRIP: u16 = 1 << 7;
const ATTR_RSTRIP: u16 = 1 << 8;

/// Attributes of the token types stored in `tokenizer.ggml.token_type`.
fn attr_of_type(ty: i64) -> u16 {
    match ty {
        1 => ATTR_NORMAL,
        2 => ATTR_UNKNOWN,
        3 => ATTR_CONTROL,
        4 => ATTR_USER_DEFINED,
        5 => ATTR_UNUSED,
        6 => ATTR_BYTE,
        _ => 0,
    }
}

/// Token texts that end generation (llama.cpp matches them by text).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// SentencePiece's visible space.
const SPM_SPACE: &str = "\u{2581}";

/// FxHash: a fast, non-cryptographic hash for the vocabulary maps.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The token table shared by both algorithms.
pub(crate) struct Vocab {
    texts: Vec<String>,
    scores: Vec<f32>,
    attrs: Vec<u16>,
    /// Text to id; for duplicated texts, the last id (as llama.cpp).
    ids: FastMap<String, Token>,
    /// SentencePiece byte fallback: `<0xNN>`, else the byte itself as text.
    byte_tokens: [Option<Token>; 256],
}

impl Vocab {
    #[inline]
    pub(crate) fn lookup(&self, text: &str) -> Option<Token> {
        self.ids.get(text).copied()
    }
    #[inline]
    pub(crate) fn score(&self, t: Token) -> f32 {
        self.scores[t as usize]
    }
    #[inline]
    pub(crate) fn byte_token(&self, b: u8) -> Option<Token> {
        self.byte_tokens[b as usize]
    }
}

enum Model {
    Spm,
    Bpe(Box<bpe::Bpe>),
}

/// Cuts special tokens out of the text: a byte trie of their texts.
#[derive(Default)]
struct SpecialTrie {
    /// Per node: children (byte, node), and the positions in the special
    /// list of the tokens spelled by the path to it.
    children: Vec<Vec<(u8, u32)>>,
    values: Vec<Vec<u32>>,
}

impl SpecialTrie {
    fn new() -> Self {
        Self {
            children: vec![Vec::new()],
            values: vec![Vec::new()],
        }
    }

    fn insert(&mut self, text: &[u8], value: u32) {
        let mut node = 0usize;
        for &b in text {
            node = match self.children[node].iter().find(|(c, _)| *c == b) {
                Some(&(_, n)) => n as usize,
                None => {
                    let n = self.children.len();
                    self.children.push(Vec::new());
                    self.values.push(Vec::new());
                    self.children[node].push((b, n as u32));
                    n
                }
            };
        }
        self.values[node].push(value);
    }

    #[inline]
    fn child(&self, node: usize, b: u8) -> Option<usize> {
        self.children[node]
            .iter()
            .find(|(c, _)| *c == b)
            .map(|&(_, n)| n as usize)
    }
}

/// A piece of the text after special tokens are cut out.
enum Fragment<'a> {
    Text(&'a str),
    Special(Token),
}

/// A tokenizer read from GGUF metadata. See the module documentation.
pub struct Tokenizer {
    vocab: Vocab,
    model: Model,
    bos: Option<Token>,
    eos: Option<Token>,
    eot: Option<Token>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
    eog: HashSet<Token>,
    /// Control, user-defined and unknown tokens, longest text first.
    specials: Vec<Token>,
    trie: SpecialTrie,
    /// `token_to_piece(t, true)` for every token: `pieces[offs[t]..offs[t + 1]]`.
    pieces: Vec<u8>,
    piece_offs: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &if matches!(self.model, Model::Spm) { "spm" } else { "bpe" })
            .field("n_vocab", &self.n_vocab())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

/// An integer metadata value that is a valid token id.
fn token_key(f: &GgufFile, key: &str, n_vocab: usize) -> Option<Token> {
    let v = f.get(key)?.as_i64()?;
    (0..n_vocab as i64).contains(&v).then_some(v as Token)
}

fn bool_key(f: &GgufFile, key: &str) -> Option<bool> {
    f.get(key).and_then(Value::as_bool)
}

/// The value of up to two hex digits at `text[3..5]` (`<0xNN>`), as strtol reads them.
fn byte_of_token_text(text: &str) -> u8 {
    let digits = text.as_bytes().get(3..).unwrap_or(&[]);
    let mut v = 0u32;
    for &d in digits.iter().take(2) {
        match (d as char).to_digit(16) {
            Some(x) => v = v * 16 + x,
            None => break,
        }
    }
    v as u8
}

impl Tokenizer {
    /// Reads the tokenizer of a GGUF file.
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let model_name = f
            .get("tokenizer.ggml.model")
            .ok_or_else(|| anyhow!("the GGUF file has no tokenizer: key tokenizer.ggml.model is missing"))?
            .as_str()
            .ok_or_else(|| anyhow!("tokenizer.ggml.model is not a string"))?;
        let pre = f.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("");

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
        let scores: Vec<f32> = match f.get("tokenizer.ggml.scores") {
            None => vec![0.0; n],
            Some(v) => {
                let a = v
                    .as_array()
                    .ok_or_else(|| anyhow!("tokenizer.ggml.scores is not an array"))?;
                if a.len() < n {
                    bail!("tokenizer.ggml.scores has {} entries for {n} tokens", a.len());
                }
                a[..n]
                    .iter()
                    .map(|x| x.as_f64().map(|x| x as f32))
                    .collect::<Option<_>>()
                    .ok_or_else(|| anyhow!("tokenizer.ggml.scores holds non-numbers"))?
            }
        };
        let mut attrs: Vec<u16> = match f.get("tokenizer.ggml.token_type") {
            None => vec![ATTR_NORMAL; n],
            Some(v) => {
                let a = v
                    .as_array()
                    .ok_or_else(|| anyhow!("tokenizer.ggml.token_type is not an array"))?;
                if a.len() < n {
                    bail!("tokenizer.ggml.token_type has {} entries for {n} tokens", a.len());
                }
                a[..n].iter().map(|x| attr_of_type(x.as_i64().unwrap_or(0))).collect()
            }
        };
        let mut ids: FastMap<String, Token> = FastMap::default();
        ids.reserve(n);
        for (i, t) in texts.iter().enumerate() {
            ids.insert(t.clone(), i as Token);
        }

        // Model type and its defaults.
        let spm = match model_name {
            "llama" => true,
            "gpt2" => false,
            other => bail!(
                "unsupported tokenizer model {other:?} (tokenizer.ggml.model): supported are \"llama\" (SentencePiece) and \"gpt2\" (byte-level BPE)"
            ),
        };
        let (mut bos, mut eos) = if spm { (Some(1), Some(2)) } else { (Some(11), Some(11)) };
        let (mut add_bos, mut add_eos, mut add_space_prefix, clean_spaces);
        let model = if spm {
            add_bos = true;
            add_eos = false;
            add_space_prefix = true;
            clean_spaces = false;
            Model::Spm
        } else {
            let (rules, opts) = pretokenize::for_pre(pre)?.ok_or_else(|| {
                anyhow!("unsupported pre-tokenizer {pre:?} (tokenizer.ggml.pre) for a gpt2 tokenizer")
            })?;
            add_bos = opts.add_bos.unwrap_or(false);
            add_eos = false;
            add_space_prefix = false;
            clean_spaces = opts.clean_spaces;
            if opts.no_bos {
                bos = None;
            }
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
            unicode::init();
            Model::Bpe(Box::new(
                bpe::Bpe::new(&merges, rules, opts.ignore_merges).context("reading BPE merges")?,
            ))
        };
        if let Some(v) = bool_key(f, "tokenizer.ggml.add_space_prefix") {
            add_space_prefix = v;
        }

        // Special token ids: defaults out of range are dropped; keys override.
        let in_range = |t: Option<Token>| t.filter(|&t| (t as usize) < n);
        bos = in_range(bos);
        eos = in_range(eos);
        let mut eot = None;
        let mut eom = None;
        let (mut fim_pad, mut fim_rep, mut fim_sep) = (None, None, None);
        let (mut fim_pre, mut fim_suf, mut fim_mid) = (None, None, None);
        for (key, slot) in [
            ("bos_token_id", &mut bos),
            ("eos_token_id", &mut eos),
            ("eot_token_id", &mut eot),
            ("eom_token_id", &mut eom),
            ("fim_pad_token_id", &mut fim_pad),
            ("fim_rep_token_id", &mut fim_rep),
            ("fim_sep_token_id", &mut fim_sep),
        ] {
            if let Some(t) = token_key(f, &format!("tokenizer.ggml.{key}"), n) {
                *slot = Some(t);
            }
        }
        for (keys, slot) in [
            (["fim_pre_token_id", "prefix_token_id"], &mut fim_pre),
            (["fim_suf_token_id", "suffix_token_id"], &mut fim_suf),
            (["fim_mid_token_id", "middle_token_id"], &mut fim_mid),
        ] {
            for key in keys {
                if let Some(t) = token_key(f, &format!("tokenizer.ggml.{key}"), n) {
                    *slot = Some(t);
                }
            }
        }
        if let Some(v) = bool_key(f, "tokenizer.ggml.add_bos_token") {
            add_bos = v;
        }
        if let Some(v) = bool_key(f, "tokenizer.ggml.add_eos_token") {
            add_eos = v;
        }

        // Tokens found by their text (llama.cpp walks a hash map here, so
        // which of two candidates wins is unspecified there; we take the
        // lowest id). A token found this way becomes a control token.
        let find = |slot: &mut Option<Token>, candidates: &[&str], attrs: &mut Vec<u16>| {
            if slot.is_some() {
                return;
            }
            if let Some(t) = candidates.iter().filter_map(|c| ids.get(*c).copied()).min() {
                *slot = Some(t);
                attrs[t as usize] |= ATTR_CONTROL;
            }
        };
        find(&mut eot, EOT_TEXTS, &mut attrs);
        find(&mut eom, EOM_TEXTS, &mut attrs);
        find(&mut fim_pre, FIM_PRE_TEXTS, &mut attrs);
        find(&mut fim_suf, FIM_SUF_TEXTS, &mut attrs);
        find(&mut fim_mid, FIM_MID_TEXTS, &mut attrs);
        find(&mut fim_pad, FIM_PAD_TEXTS, &mut attrs);
        find(&mut fim_rep, FIM_REP_TEXTS, &mut attrs);
        find(&mut fim_sep, FIM_SEP_TEXTS, &mut attrs);

        // End-of-generation set.
        let mut eog: HashSet<Token> = [fim_pad, fim_rep, fim_sep].into_iter().flatten().collect();
        for t in EOG_TEXTS.iter().filter_map(|text| ids.get(*text).copied()) {
            eog.insert(t);
            attrs[t as usize] |= ATTR_CONTROL;
        }
        // gpt-oss: always rendered.
        for text in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(&t) = ids.get(text) {
                attrs[t as usize] = ATTR_USER_DEFINED;
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        let eog_with = |eog: &HashSet<Token>, text: &str| eog.iter().copied().find(|&t| texts[t as usize] == text);
        // o200k_harmony / solar-open: "<|end|>" does not end generation there.
        if let Some(end) = eog_with(&eog, "<|end|>") {
            let has_return = eog_with(&eog, "<|return|>").is_some();
            let has_call = eog_with(&eog, "<|call|>").is_some() || eog_with(&eog, "<|calls|>").is_some();
            let has_flush = eog_with(&eog, "<|flush|>").is_some();
            if has_call && (has_return || has_flush) {
                eog.remove(&end);
                attrs[end as usize] = ATTR_USER_DEFINED;
            }
        }
        // Gemma 4 and PLaMo: "</s>" is a normal token.
        if let Some(s) = eog_with(&eog, "</s>") {
            if eog_with(&eog, "<|tool_response>").is_some() || eog_with(&eog, "<|plamo:eos|>").is_some() {
                eog.remove(&s);
                attrs[s as usize] = ATTR_NORMAL;
            }
        }

        // Special tokens, longest first (ties by id; llama.cpp's order there
        // is its sort's, which matters only for overlapping equal-length texts).
        let mut specials: Vec<Token> = (0..n as Token)
            .filter(|&t| attrs[t as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0)
            .collect();
        specials.sort_by(|&a, &b| texts[b as usize].len().cmp(&texts[a as usize].len()));
        let mut trie = SpecialTrie::new();
        for (i, &t) in specials.iter().enumerate() {
            trie.insert(texts[t as usize].as_bytes(), i as u32);
        }

        let mut byte_tokens = [None; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            *slot = ids
                .get(&format!("<0x{b:02X}>"))
                .copied()
                .or_else(|| std::str::from_utf8(&[b as u8]).ok().and_then(|s| ids.get(s).copied()));
        }

        let vocab = Vocab {
            texts,
            scores,
            attrs,
            ids,
            byte_tokens,
        };

        // Pieces, rendered once (special tokens shown).
        let mut pieces = Vec::new();
        let mut piece_offs = Vec::with_capacity(n + 1);
        piece_offs.push(0u32);
        let byte_of_char: HashMap<char, u8> = unicode::byte_to_char_table()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        for t in 0..n {
            let text = &vocab.texts[t];
            let attr = vocab.attrs[t];
            if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED) != 0 {
                pieces.extend_from_slice(text.as_bytes());
            } else if attr & ATTR_NORMAL != 0 {
                if spm {
                    pieces.extend_from_slice(text.replace(SPM_SPACE, " ").as_bytes());
                } else {
                    decode_byte_level(text, &byte_of_char, &mut pieces);
                }
            } else if attr & ATTR_BYTE != 0 {
                pieces.push(byte_of_token_text(text));
            }
            let end = u32::try_from(pieces.len()).map_err(|_| anyhow!("token pieces exceed 4 GiB"))?;
            piece_offs.push(end);
        }

        let mut tok = Self {
            vocab,
            model,
            bos,
            eos,
            eot,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
            eog,
            specials,
            trie,
            pieces,
            piece_offs,
        };
        tok.apply_model_specific_attrs(f, pre);
        Ok(tok)
    }

    /// llama.cpp's per-model strip attributes (set after the caches are built).
    fn apply_model_specific_attrs(&mut self, f: &GgufFile, pre: &str) {
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
            self.set_attr("<mask>", ATTR_LSTRIP, true);
        } else if name.contains("phi-3") || name.contains("phi3") {
            for &t in &self.specials {
                self.vocab.attrs[t as usize] |= ATTR_RSTRIP;
            }
            self.set_attr("</s>", ATTR_RSTRIP, true);
            for text in ["<unk>", "<s>", "<|endoftext|>"] {
                self.set_attr(text, ATTR_RSTRIP, false);
            }
        } else if name.contains("modern-bert") {
            self.set_attr("[MASK]", ATTR_LSTRIP, true);
        }
    }

    fn set_attr(&mut self, text: &str, attr: u16, on: bool) {
        if let Some(t) = self.vocab.lookup(text) {
            let a = &mut self.vocab.attrs[t as usize];
            *a = if on { *a | attr } else { *a & !attr };
        }
    }

    /// Number of tokens in the vocabulary.
    pub fn n_vocab(&self) -> usize {
        self.vocab.texts.len()
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<Token> {
        self.bos
    }

    /// End-of-sequence token.
    pub fn eos(&self) -> Option<Token> {
        self.eos
    }

    /// End-of-turn token (`<|im_end|>`, `<end_of_turn>`, ...), when known.
    pub fn eot(&self) -> Option<Token> {
        self.eot
    }

    /// Whether `encode(.., add_special = true, ..)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// Whether `encode(.., add_special = true, ..)` ends with EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos && self.eos.is_some()
    }

    /// Whether generation stops at `t` (llama.cpp's end-of-generation set).
    pub fn is_eog(&self, t: Token) -> bool {
        self.eog.contains(&t)
    }

    /// Whether `t` is a control token (rendered only on request).
    pub fn is_control(&self, t: Token) -> bool {
        self.attr(t) & ATTR_CONTROL != 0
    }

    /// The id of the token spelled exactly `text` (in the vocabulary's own
    /// spelling: `▁` for SentencePiece spaces, `Ġ` for byte-level ones).
    pub fn token_id(&self, text: &str) -> Option<Token> {
        self.vocab.lookup(text)
    }

    /// The vocabulary's spelling of `t`.
    pub fn token_text(&self, t: Token) -> Option<&str> {
        usize::try_from(t)
            .ok()
            .and_then(|i| self.vocab.texts.get(i))
            .map(String::as_str)
    }

    fn attr(&self, t: Token) -> u16 {
        usize::try_from(t)
            .ok()
            .and_then(|i| self.vocab.attrs.get(i))
            .copied()
            .unwrap_or(0)
    }

    /// Tokenizes `text` as `llama_tokenize` does. `add_special` adds BOS/EOS
    /// as the model asks; `parse_special` turns the text of control tokens
    /// (`<|im_start|>`, `<start_of_turn>`, ...) into those tokens.
    /// User-defined tokens are always recognised.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<Token> {
        let fragments = self.partition(text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        match &self.model {
            Model::Spm => {
                let mut prev_special = true;
                let mut buf = String::new();
                for frag in fragments {
                    match frag {
                        Fragment::Text(s) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push(' ');
                            }
                            buf.push_str(s);
                            let escaped = buf.replace(' ', SPM_SPACE);
                            spm::encode(&self.vocab, &escaped, &mut out);
                            prev_special = false;
                        }
                        Fragment::Special(t) => {
                            out.push(t);
                            prev_special = true;
                        }
                    }
                }
            }
            Model::Bpe(bpe) => {
                for frag in fragments {
                    match frag {
                        Fragment::Text(s) => bpe.encode(&self.vocab, s, &mut out),
                        Fragment::Special(t) => out.push(t),
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// Cuts the special tokens out of `text`: for each special token,
    /// longest first, every occurrence left to right in the text not yet cut.
    ///
    /// All occurrences are found in one pass over a trie, then taken in that
    /// order when they still lie wholly in uncut text. Because tokens come
    /// longest first, an occurrence whose first and last bytes are uncut is
    /// uncut throughout: any cut region inside it would hold a token at
    /// least as long as the occurrence itself.
    fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let bytes = text.as_bytes();
        if bytes.is_empty() {
            return Vec::new();
        }
        let active = |order: u32| {
            let t = self.specials[order as usize];
            parse_special || self.vocab.attrs[t as usize] & (ATTR_CONTROL | ATTR_UNKNOWN) == 0
        };
        // Every occurrence of every active special token, by position: (order, position).
        let mut found: Vec<(u32, u32)> = Vec::new();
        for pos in 0..bytes.len() {
            let mut node = 0usize;
            for &b in &bytes[pos..] {
                match self.trie.child(node, b) {
                    Some(next) => node = next,
                    None => break,
                }
                if let Some(&order) = self.trie.values[node].iter().find(|&&o| active(o)) {
                    found.push((order, pos as u32));
                }
            }
        }
        if found.is_empty() {
            return vec![Fragment::Text(text)];
        }
        // Stable counting sort by token order: positions stay ascending.
        let mut count = vec![0u32; self.specials.len() + 1];
        for &(order, _) in &found {
            count[order as usize + 1] += 1;
        }
        for i in 1..count.len() {
            count[i] += count[i - 1];
        }
        let mut sorted = vec![(0u32, 0u32); found.len()];
        for &(order, pos) in &found {
            let slot = &mut count[order as usize];
            sorted[*slot as usize] = (order, pos);
            *slot += 1;
        }
        drop(found);

        // Per byte: TEXT, CUT (inside a token or stripped), or a token start (id + TOKEN).
        const TEXT: u32 = 0;
        const CUT: u32 = 1;
        const TOKEN: u32 = 2;
        let mut state = vec![TEXT; bytes.len()];
        let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r');
        for (order, pos) in sorted {
            let tok = self.specials[order as usize];
            let len = self.vocab.texts[tok as usize].len();
            let pos = pos as usize;
            if state[pos] != TEXT || state[pos + len - 1] != TEXT {
                continue;
            }
            state[pos] = tok as u32 + TOKEN;
            state[pos + 1..pos + len].fill(CUT);
            let attr = self.vocab.attrs[tok as usize];
            if attr & ATTR_LSTRIP != 0 {
                let mut p = pos;
                while p > 0 && state[p - 1] == TEXT && is_space(bytes[p - 1]) {
                    state[p - 1] = CUT;
                    p -= 1;
                }
            }
            if attr & ATTR_RSTRIP != 0 {
                let mut p = pos + len;
                while p < bytes.len() && state[p] == TEXT && is_space(bytes[p]) {
                    state[p] = CUT;
                    p += 1;
                }
            }
        }

        let mut out = Vec::new();
        let mut text_start = None;
        for (i, &st) in state.iter().enumerate() {
            if st == TEXT {
                text_start.get_or_insert(i);
                continue;
            }
            if let Some(s) = text_start.take() {
                out.push(Fragment::Text(&text[s..i]));
            }
            if st >= TOKEN {
                out.push(Fragment::Special((st - TOKEN) as Token));
            }
        }
        if let Some(s) = text_start {
            out.push(Fragment::Text(&text[s..]));
        }
        out
    }

    /// The bytes of token `t`, as `llama_token_to_piece(.., lstrip = 0, special)`:
    /// control and unknown tokens are empty unless `special`. A piece may be
    /// part of a UTF-8 character (byte tokens); see [`Utf8Stream`].
    pub fn token_to_piece(&self, t: Token, special: bool) -> Vec<u8> {
        self.piece(t, special).to_vec()
    }

    fn piece(&self, t: Token, special: bool) -> &[u8] {
        let Some(i) = usize::try_from(t).ok().filter(|&i| i < self.n_vocab()) else {
            return &[];
        };
        if !special && self.vocab.attrs[i] & (ATTR_UNKNOWN | ATTR_CONTROL) != 0 {
            return &[];
        }
        &self.pieces[self.piece_offs[i] as usize..self.piece_offs[i + 1] as usize]
    }

    /// The text of `tokens`, as `llama_detokenize`: `remove_special` drops a
    /// leading BOS and trailing EOS the model adds; `unparse_special` renders
    /// control tokens.
    pub fn decode(&self, tokens: &[Token], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        let mut toks = tokens;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos && self.bos.is_some() && toks.first().copied() == self.bos {
            remove_space = false;
            toks = &toks[1..];
        }
        if remove_special && self.add_eos && self.eos.is_some() && toks.last().copied() == self.eos {
            toks = &toks[..toks.len() - 1];
        }
        let mut out = Vec::with_capacity(toks.len() * 4);
        for &t in toks {
            let mut piece = self.piece(t, unparse_special);
            if remove_space {
                piece = piece.strip_prefix(b" ").unwrap_or(piece);
                remove_space = false;
            }
            out.extend_from_slice(piece);
        }
        if self.clean_spaces {
            clean_up_spaces(&mut out);
        }
        out
    }
}

/// Byte-level BPE text back to bytes; characters outside GPT-2's map are
/// rendered as llama.cpp does (`[UNK_BYTE_0x..]`).
fn decode_byte_level(text: &str, byte_of_char: &HashMap<char, u8>, out: &mut Vec<u8>) {
    for c in text.chars() {
        match byte_of_char.get(&c) {
            Some(&b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
}

/// llama.cpp's `clean_up_tokenization_spaces`, pass for pass, in place:
/// no space before `?!.,`, `' '` collapsed around a lone apostrophe, and
/// no space before `'s`, `'m`, `'re`, `'ve`.
fn clean_up_spaces(buf: &mut Vec<u8>) {
    // Pass 1: " ?", " !", " .", " ,".
    let n = buf.len();
    let mut total = usize::from(n > 0);
    for i in 1..n {
        let x = buf[i];
        if buf[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        buf[total] = x;
        total += 1;
    }
    buf.truncate(total);

    // Pass 2: " ' " -> "'".
    let n = buf.len();
    let mut total = usize::from(n > 0);
    let mut i = 1;
    while i < n {
        let x = buf[i];
        if x == b'\'' && i + 1 < n && buf[i - 1] == b' ' && buf[i + 1] == b' ' {
            total -= 1;
            i += 1;
            buf[i] = 0;
        }
        buf[total] = x;
        total += 1;
        i += 1;
    }
    buf.truncate(total);

    // Pass 3: " 's", " 'm", " 're", " 've".
    let n = buf.len();
    let mut total = usize::from(n > 0);
    for i in 1..n {
        let x = buf[i];
        if buf[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = buf[i + 1];
            if matches!(x1, b's' | b'm') {
                total -= 1;
            } else if !matches!(x1, b't' | b'd') && i + 2 < n {
                let x2 = buf[i + 2];
                if matches!((x1, x2), (b'r', b'e') | (b'v', b'e')) {
                    total -= 1;
                }
            }
        }
        buf[total] = x;
        total += 1;
    }
    buf.truncate(total);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_spaces() {
        let mut b = b"Hello , world ! it 's a ' b ' test .".to_vec();
        clean_up_spaces(&mut b);
        assert_eq!(String::from_utf8(b).unwrap(), "Hello, world! it's a'b'test.");
    }

    #[test]
    fn tokenizer_is_shareable_between_threads() {
        fn check<T: Send + Sync>() {}
        check::<Tokenizer>();
        check::<Utf8Stream>();
    }

    #[test]
    fn byte_token_text() {
        assert_eq!(byte_of_token_text("<0x0A>"), 0x0A);
        assert_eq!(byte_of_token_text("<0xff>"), 0xFF);
        assert_eq!(byte_of_token_text("<0x"), 0);
    }
}
