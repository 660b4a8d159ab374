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
//! cut out of the text, longest first, as llama.cpp does (`special`).
//! Decoding follows `llama_detokenize`, including its clean-up of spaces
//! before punctuation (`pieces`). `load` reads it all from the file.

mod bpe;
mod chunked;
mod load;
mod pieces;
mod pretokenize;
mod special;
mod special_ids;
mod spm;
mod stream;
mod unicode;
mod vocab;

use std::collections::HashSet;

use pieces::{clean_up_spaces, Pieces, SPM_SPACE};
use special::{Fragment, Specials};
use vocab::{Vocab, ATTR_CONTROL, ATTR_UNKNOWN};

pub use chunked::ChunkedEncoder;
pub use stream::Utf8Stream;

/// A token id, as llama.cpp's `llama_token`.
pub type Token = i32;

enum Model {
    Spm,
    Bpe(Box<bpe::Bpe>),
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
    specials: Specials,
    pieces: Pieces,
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

impl Tokenizer {
    /// Number of tokens in the vocabulary.
    pub fn n_vocab(&self) -> usize {
        self.vocab.len()
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
        self.vocab.attr(t) & ATTR_CONTROL != 0
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

    /// Tokenizes `text` as `llama_tokenize` does. `add_special` adds BOS/EOS
    /// as the model asks; `parse_special` turns the text of control tokens
    /// (`<|im_start|>`, `<start_of_turn>`, ...) into those tokens.
    /// User-defined tokens are always recognised.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<Token> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        self.encode_text(text, parse_special, true, &mut out);
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// The tokens of `text` alone (no BOS / EOS); `at_start`: whether it
    /// starts the whole text (SentencePiece's space prefix goes there only).
    fn encode_text(&self, text: &str, parse_special: bool, at_start: bool, out: &mut Vec<Token>) {
        let fragments = self.specials.partition(&self.vocab, text, parse_special);
        match &self.model {
            Model::Spm => self.encode_spm(fragments, at_start, out),
            Model::Bpe(bpe) => {
                for frag in fragments {
                    match frag {
                        Fragment::Text(s) => bpe.encode(&self.vocab, s, out),
                        Fragment::Special(t) => out.push(t),
                    }
                }
            }
        }
    }

    /// SentencePiece over the text fragments: spaces become `▁`, and a
    /// fragment after a special token (or the start) gets the model's space
    /// prefix.
    fn encode_spm(&self, fragments: Vec<Fragment>, at_start: bool, out: &mut Vec<Token>) {
        let mut prev_special = at_start;
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
                    spm::encode(&self.vocab, &escaped, out);
                    prev_special = false;
                }
                Fragment::Special(t) => {
                    out.push(t);
                    prev_special = true;
                }
            }
        }
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
        self.pieces.get(i)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_is_shareable_between_threads() {
        fn check<T: Send + Sync>() {}
        check::<Tokenizer>();
        check::<Utf8Stream>();
    }
}
