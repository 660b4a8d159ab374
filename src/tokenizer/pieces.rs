//! Tokens back to text: every token's bytes rendered once at load time, and
//! `llama_detokenize`'s clean-up of spaces before punctuation.

use std::collections::HashMap;

use anyhow::{anyhow, Result};

use super::unicode;
use super::vocab::{byte_of_token_text, Vocab, ATTR_BYTE, ATTR_CONTROL, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_USER_DEFINED};

/// SentencePiece's visible space.
pub(crate) const SPM_SPACE: &str = "\u{2581}";

/// `token_to_piece(t, special = true)` for every token, end to end.
pub(crate) struct Pieces {
    bytes: Vec<u8>,
    /// Token `t`'s piece is `bytes[offs[t]..offs[t + 1]]`.
    offs: Vec<u32>,
}

impl Pieces {
    /// The pieces of `vocab`'s tokens; `spm` says how normal tokens spell
    /// bytes (SentencePiece's `▁` for a space, else GPT-2's byte characters).
    pub(crate) fn new(vocab: &Vocab, spm: bool) -> Result<Self> {
        let mut bytes = Vec::new();
        let mut offs = Vec::with_capacity(vocab.len() + 1);
        offs.push(0u32);
        let byte_of_char: HashMap<char, u8> = unicode::byte_to_char_table()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        for (text, &attr) in vocab.texts.iter().zip(&vocab.attrs) {
            if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED) != 0 {
                bytes.extend_from_slice(text.as_bytes());
            } else if attr & ATTR_NORMAL != 0 {
                if spm {
                    bytes.extend_from_slice(text.replace(SPM_SPACE, " ").as_bytes());
                } else {
                    decode_byte_level(text, &byte_of_char, &mut bytes);
                }
            } else if attr & ATTR_BYTE != 0 {
                bytes.push(byte_of_token_text(text));
            }
            let end = u32::try_from(bytes.len()).map_err(|_| anyhow!("token pieces exceed 4 GiB"))?;
            offs.push(end);
        }
        Ok(Self { bytes, offs })
    }

    /// The piece of token number `i` (in range).
    #[inline]
    pub(crate) fn get(&self, i: usize) -> &[u8] {
        &self.bytes[self.offs[i] as usize..self.offs[i + 1] as usize]
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
pub(crate) fn clean_up_spaces(buf: &mut Vec<u8>) {
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
}
