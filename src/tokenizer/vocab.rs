//! The token table shared by both algorithms: each token's text, score and
//! attributes, and the lookups from text to id.

use std::collections::HashMap;

use rustc_hash::FxBuildHasher;

use super::Token;

/// A hash map with rustc's Fx hash: fast, non-cryptographic, enough for
/// vocabulary texts and merge pairs.
pub(crate) type FastMap<K, V> = HashMap<K, V, FxBuildHasher>;

// Token attributes, numbered as llama.cpp's `llama_token_attr`.
pub(crate) const ATTR_UNKNOWN: u16 = 1 << 0;
pub(crate) const ATTR_UNUSED: u16 = 1 << 1;
pub(crate) const ATTR_NORMAL: u16 = 1 << 2;
pub(crate) const ATTR_CONTROL: u16 = 1 << 3;
pub(crate) const ATTR_USER_DEFINED: u16 = 1 << 4;
pub(crate) const ATTR_BYTE: u16 = 1 << 5;
pub(crate) const ATTR_LSTRIP: u16 = 1 << 7;
pub(crate) const ATTR_RSTRIP: u16 = 1 << 8;

/// Attributes of the token types stored in `tokenizer.ggml.token_type`.
pub(crate) fn attr_of_type(ty: i64) -> u16 {
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

pub(crate) struct Vocab {
    pub(crate) texts: Vec<String>,
    pub(crate) scores: Vec<f32>,
    pub(crate) attrs: Vec<u16>,
    /// Text to id; for duplicated texts, the last id (as llama.cpp).
    ids: FastMap<String, Token>,
    /// SentencePiece byte fallback: `<0xNN>`, else the byte itself as text.
    byte_tokens: [Option<Token>; 256],
}

impl Vocab {
    /// The table of `texts`; `attrs` may still change (see [`Vocab::set_attr`]).
    pub(crate) fn new(texts: Vec<String>, scores: Vec<f32>, attrs: Vec<u16>) -> Self {
        let mut ids: FastMap<String, Token> = FastMap::default();
        ids.reserve(texts.len());
        for (i, t) in texts.iter().enumerate() {
            ids.insert(t.clone(), i as Token);
        }
        let mut byte_tokens = [None; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            *slot = ids
                .get(&format!("<0x{b:02X}>"))
                .copied()
                .or_else(|| std::str::from_utf8(&[b as u8]).ok().and_then(|s| ids.get(s).copied()));
        }
        Self {
            texts,
            scores,
            attrs,
            ids,
            byte_tokens,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.texts.len()
    }

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

    /// The attributes of `t`; none for an id outside the table.
    pub(crate) fn attr(&self, t: Token) -> u16 {
        usize::try_from(t)
            .ok()
            .and_then(|i| self.attrs.get(i))
            .copied()
            .unwrap_or(0)
    }

    /// Sets (`on`) or clears `attr` on the token spelled `text`, if any.
    pub(crate) fn set_attr(&mut self, text: &str, attr: u16, on: bool) {
        if let Some(t) = self.lookup(text) {
            let a = &mut self.attrs[t as usize];
            *a = if on { *a | attr } else { *a & !attr };
        }
    }
}

/// The value of up to two hex digits at `text[3..5]` (`<0xNN>`), as strtol reads them.
pub(crate) fn byte_of_token_text(text: &str) -> u8 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_token_text() {
        assert_eq!(byte_of_token_text("<0x0A>"), 0x0A);
        assert_eq!(byte_of_token_text("<0xff>"), 0xFF);
        assert_eq!(byte_of_token_text("<0x"), 0);
    }
}
