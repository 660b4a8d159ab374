//! Which tokens play a role (BOS, EOS, end of turn, fill-in-the-middle
//! parts) and which end generation: from the file's keys, else found by
//! their text as llama.cpp finds them.

use std::collections::HashSet;

use crate::gguf::GgufFile;

use super::vocab::{Vocab, ATTR_CONTROL, ATTR_NORMAL, ATTR_USER_DEFINED};
use super::Token;

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

/// The tokens with a role, where the vocabulary has them.
#[derive(Debug, Default)]
pub(crate) struct SpecialIds {
    pub bos: Option<Token>,
    pub eos: Option<Token>,
    pub eot: Option<Token>,
    eom: Option<Token>,
    fim_pre: Option<Token>,
    fim_suf: Option<Token>,
    fim_mid: Option<Token>,
    fim_pad: Option<Token>,
    fim_rep: Option<Token>,
    fim_sep: Option<Token>,
}

impl SpecialIds {
    /// The model type's default BOS and EOS (dropped when out of range),
    /// overridden by the `tokenizer.ggml.*_token_id` keys.
    pub(crate) fn read(f: &GgufFile, n_vocab: usize, bos: Option<Token>, eos: Option<Token>) -> Self {
        let in_range = |t: Option<Token>| t.filter(|&t| (t as usize) < n_vocab);
        let mut ids = Self {
            bos: in_range(bos),
            eos: in_range(eos),
            ..Self::default()
        };
        for (key, slot) in [
            ("bos_token_id", &mut ids.bos),
            ("eos_token_id", &mut ids.eos),
            ("eot_token_id", &mut ids.eot),
            ("eom_token_id", &mut ids.eom),
            ("fim_pad_token_id", &mut ids.fim_pad),
            ("fim_rep_token_id", &mut ids.fim_rep),
            ("fim_sep_token_id", &mut ids.fim_sep),
        ] {
            if let Some(t) = token_key(f, key, n_vocab) {
                *slot = Some(t);
            }
        }
        for (keys, slot) in [
            (["fim_pre_token_id", "prefix_token_id"], &mut ids.fim_pre),
            (["fim_suf_token_id", "suffix_token_id"], &mut ids.fim_suf),
            (["fim_mid_token_id", "middle_token_id"], &mut ids.fim_mid),
        ] {
            for key in keys {
                if let Some(t) = token_key(f, key, n_vocab) {
                    *slot = Some(t);
                }
            }
        }
        ids
    }

    /// Fills the roles still unset from the tokens' texts; a token found
    /// this way becomes a control token. llama.cpp walks a hash map here,
    /// so which of two candidates wins is unspecified there; we take the
    /// lowest id.
    pub(crate) fn find_by_text(&mut self, vocab: &mut Vocab) {
        for (slot, candidates) in [
            (&mut self.eot, EOT_TEXTS),
            (&mut self.eom, EOM_TEXTS),
            (&mut self.fim_pre, FIM_PRE_TEXTS),
            (&mut self.fim_suf, FIM_SUF_TEXTS),
            (&mut self.fim_mid, FIM_MID_TEXTS),
            (&mut self.fim_pad, FIM_PAD_TEXTS),
            (&mut self.fim_rep, FIM_REP_TEXTS),
            (&mut self.fim_sep, FIM_SEP_TEXTS),
        ] {
            if slot.is_some() {
                continue;
            }
            if let Some(t) = candidates.iter().filter_map(|c| vocab.lookup(c)).min() {
                *slot = Some(t);
                vocab.attrs[t as usize] |= ATTR_CONTROL;
            }
        }
    }

    /// llama.cpp's end-of-generation set, marking its tokens as control
    /// tokens, with the exceptions some vocabularies need.
    pub(crate) fn end_of_generation(&self, vocab: &mut Vocab) -> HashSet<Token> {
        let mut eog: HashSet<Token> = [self.fim_pad, self.fim_rep, self.fim_sep]
            .into_iter()
            .flatten()
            .collect();
        for text in EOG_TEXTS {
            if let Some(t) = vocab.lookup(text) {
                eog.insert(t);
                vocab.attrs[t as usize] |= ATTR_CONTROL;
            }
        }
        // gpt-oss: always rendered.
        for text in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(t) = vocab.lookup(text) {
                vocab.attrs[t as usize] = ATTR_USER_DEFINED;
            }
        }
        eog.extend([self.eos, self.eot, self.eom].into_iter().flatten());
        drop_eog_exceptions(&mut eog, vocab);
        eog
    }
}

/// Tokens that end generation elsewhere but not in the vocabularies that
/// mark them so: such a token goes back to the attribute it has there.
fn drop_eog_exceptions(eog: &mut HashSet<Token>, vocab: &mut Vocab) {
    let eog_with = |eog: &HashSet<Token>, text: &str| eog.iter().copied().find(|&t| vocab.texts[t as usize] == text);
    // o200k_harmony / solar-open: "<|end|>" does not end generation there.
    if let Some(end) = eog_with(eog, "<|end|>") {
        let has_return = eog_with(eog, "<|return|>").is_some();
        let has_call = eog_with(eog, "<|call|>").is_some() || eog_with(eog, "<|calls|>").is_some();
        let has_flush = eog_with(eog, "<|flush|>").is_some();
        if has_call && (has_return || has_flush) {
            eog.remove(&end);
            vocab.attrs[end as usize] = ATTR_USER_DEFINED;
        }
    }
    // Gemma 4 and PLaMo: "</s>" is a normal token.
    if let Some(s) = eog_with(eog, "</s>") {
        if eog_with(eog, "<|tool_response>").is_some() || eog_with(eog, "<|plamo:eos|>").is_some() {
            eog.remove(&s);
            vocab.attrs[s as usize] = ATTR_NORMAL;
        }
    }
}

/// The valid token id under key `tokenizer.ggml.{name}`, if any.
fn token_key(f: &GgufFile, name: &str, n_vocab: usize) -> Option<Token> {
    let v = f.get(&format!("tokenizer.ggml.{name}"))?.as_i64()?;
    (0..n_vocab as i64).contains(&v).then_some(v as Token)
}
