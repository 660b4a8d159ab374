//! Tokenizing a text too long to hold whole: it is read piece by piece, each
//! piece cut where tokenizing the parts gives the tokens of the whole.
//!
//! A cut goes at a line break: after a newline that a non-space character
//! follows, or before a newline that one precedes. Pre-tokenizers split
//! there (no word or number takes a newline with it), but where a run of
//! whitespace or punctuation ends differs between them (GPT-2 leaves the
//! last newline of a run to the next piece, Llama 3 gives a punctuation run
//! the newlines after it). So each cut is checked on the text around it:
//! the two sides tokenized apart must give the tokens of the two together,
//! else the cut is not taken (`tests/cli_faults.rs` compares whole texts).

use std::io::Read;

use anyhow::Context as _;

use super::vocab::{ATTR_LSTRIP, ATTR_RSTRIP};
use super::{Token, Tokenizer};

/// Bytes read per piece (a piece grows when no cut is found in it).
const PIECE_BYTES: usize = 1 << 20;
/// Bytes on each side of a cut tokenized to check it.
const CHECK_BYTES: usize = 256;
/// Cuts tried per piece, from its end back.
const CUTS_TRIED: usize = 16;

/// A text's pieces and their tokens, read from `source` as they are needed.
/// The tokens of all pieces are those of `Tokenizer::encode` on the whole.
pub struct ChunkedEncoder<R> {
    source: R,
    add_special: bool,
    parse_special: bool,
    piece_bytes: usize,
    /// Bytes read and not yet handed out.
    buf: Vec<u8>,
    /// Bytes handed out so far (for error positions).
    offset: u64,
    started: bool,
    eof: bool,
}

impl<R: Read> ChunkedEncoder<R> {
    /// As `encode(whole text of source, add_special, parse_special)` (the
    /// tokenizer is given to each `next_piece`, so that the model it
    /// belongs to can run between pieces).
    pub fn new(source: R, add_special: bool, parse_special: bool) -> Self {
        Self {
            source,
            add_special,
            parse_special,
            piece_bytes: PIECE_BYTES,
            buf: Vec::new(),
            offset: 0,
            started: false,
            eof: false,
        }
    }

    /// Pieces of about `bytes` bytes instead of 1 MiB (tests: many cuts).
    pub fn with_piece_bytes(mut self, bytes: usize) -> Self {
        self.piece_bytes = bytes.max(1);
        self
    }

    /// The next piece of text and its tokens; None after the last. An
    /// empty text gives one empty piece (with BOS where the model adds it).
    pub fn next_piece(&mut self, tok: &Tokenizer) -> anyhow::Result<Option<(String, Vec<Token>)>> {
        if self.started && self.eof && self.buf.is_empty() {
            return Ok(None);
        }
        let (mut want, mut scanned) = (self.piece_bytes, 0);
        let cut = loop {
            self.fill(want)?;
            if self.eof {
                break self.buf.len();
            }
            if let Some(cut) = self.find_cut(tok, scanned) {
                break cut;
            }
            // Cuts near the old end are checked again with the text after them.
            scanned = self.buf.len().saturating_sub(CHECK_BYTES);
            want += self.piece_bytes;
        };
        let bytes: Vec<u8> = self.buf.drain(..cut).collect();
        let text = String::from_utf8(bytes).map_err(|e| {
            let at = self.offset + e.utf8_error().valid_up_to() as u64;
            anyhow::anyhow!("not UTF-8 text (byte {at})")
        })?;
        self.offset += cut as u64;
        let last = self.eof && self.buf.is_empty();
        let tokens = self.encode_piece(tok, &text, last);
        Ok(Some((text, tokens)))
    }

    /// Reads until `want` bytes are held or the source ends.
    fn fill(&mut self, want: usize) -> anyhow::Result<()> {
        if self.eof || self.buf.len() >= want {
            return Ok(());
        }
        let missing = (want - self.buf.len()) as u64;
        let n = (&mut self.source)
            .take(missing)
            .read_to_end(&mut self.buf)
            .context("cannot read the text")?;
        self.eof = (n as u64) < missing;
        Ok(())
    }

    /// The last safe cut in the buffer from `from` on, if any (see the
    /// module documentation).
    fn find_cut(&self, tok: &Tokenizer, from: usize) -> Option<usize> {
        let b = &self.buf;
        (from.max(1)..b.len())
            .rev()
            .filter(|&p| {
                let after_line = b[p - 1] == b'\n' && starts_with_non_space(&b[p..]);
                let before_newline = b[p] == b'\n' && ends_with_non_space(&b[..p]);
                after_line || before_newline
            })
            .take(CUTS_TRIED)
            .find(|&p| self.cut_keeps_tokens(tok, p))
    }

    /// Whether the text around `p` tokenizes the same cut at `p` or not.
    fn cut_keeps_tokens(&self, tok: &Tokenizer, p: usize) -> bool {
        let start = (p.saturating_sub(CHECK_BYTES)..p).find(|&i| is_char_start(self.buf[i]));
        let end = (p + CHECK_BYTES).min(self.buf.len());
        let end = (p..=end)
            .rev()
            .find(|&i| i == self.buf.len() || is_char_start(self.buf[i]));
        let (Some(start), Some(end)) = (start, end) else {
            return false;
        };
        let (Ok(left), Ok(right)) = (
            std::str::from_utf8(&self.buf[start..p]),
            std::str::from_utf8(&self.buf[p..end]),
        ) else {
            return false;
        };
        let apart = [self.tokens_of(tok, left), self.tokens_of(tok, right)].concat();
        apart == self.tokens_of(tok, &format!("{left}{right}"))
    }

    fn tokens_of(&self, tok: &Tokenizer, text: &str) -> Vec<Token> {
        let mut out = Vec::new();
        tok.encode_text(text, self.parse_special, false, &mut out);
        out
    }

    /// A piece's tokens: BOS before the first, EOS after the last, as the
    /// model asks.
    fn encode_piece(&mut self, tok: &Tokenizer, text: &str, last: bool) -> Vec<Token> {
        let first = !std::mem::replace(&mut self.started, true);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if first && self.add_special && tok.add_bos {
            out.extend(tok.bos);
        }
        tok.encode_text(text, self.parse_special, first, &mut out);
        if last && self.add_special && tok.add_eos {
            out.extend(tok.eos);
        }
        out
    }
}

/// Whether `b` starts with a whole character that is not whitespace.
fn starts_with_non_space(b: &[u8]) -> bool {
    let len = b.len().min(4);
    let head = match std::str::from_utf8(&b[..len]) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or(""),
    };
    head.chars().next().is_some_and(|c| !c.is_whitespace())
}

/// Whether `b` ends with a whole character that is not whitespace.
fn ends_with_non_space(b: &[u8]) -> bool {
    let start = (b.len().saturating_sub(4)..b.len()).find(|&i| is_char_start(b[i]));
    start
        .and_then(|i| std::str::from_utf8(&b[i..]).ok())
        .and_then(|s| s.chars().next_back())
        .is_some_and(|c| !c.is_whitespace())
}

fn is_char_start(b: u8) -> bool {
    (b as i8) >= -0x40
}

impl Tokenizer {
    /// The most bytes of text one token can stand for, or None when some
    /// special token also swallows the whitespace beside it (no bound):
    /// a text of `n` bytes has at least `n / max_token_bytes()` tokens.
    pub fn max_token_bytes(&self) -> Option<usize> {
        if self.vocab.attrs.iter().any(|a| a & (ATTR_LSTRIP | ATTR_RSTRIP) != 0) {
            return None;
        }
        let piece = (0..self.n_vocab()).map(|i| self.pieces.get(i).len());
        let text = self.vocab.texts.iter().map(String::len);
        // An unknown character becomes one token whatever its piece.
        piece.chain(text).max().map(|m| m.max(4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_candidates_need_a_non_space_character_after_the_newline() {
        assert!(starts_with_non_space(b"abc"));
        assert!(starts_with_non_space("é".as_bytes()));
        assert!(!starts_with_non_space(b" a"));
        assert!(!starts_with_non_space(b"\na"));
        assert!(!starts_with_non_space("\u{3000}x".as_bytes()));
        assert!(!starts_with_non_space(&"é".as_bytes()[..1]));
        assert!(!starts_with_non_space(b""));
        assert!(is_char_start(b'a') && is_char_start(0xc3) && !is_char_start(0xa9));
    }
}
