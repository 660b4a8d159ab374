//! Byte-level BPE (GPT-2 style, `tokenizer.ggml.model = "gpt2"`).
//!
//! Each pre-tokenized word is mapped byte by byte to GPT-2's printable
//! characters, then merged: always the adjacent pair with the lowest merge
//! rank (the leftmost on ties), through a priority queue with lazy deletion,
//! so a long word costs O(n log n), not O(n²).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use anyhow::{bail, Result};

use super::pretokenize::{self, Rule};
use super::unicode;
use super::vocab::{FastMap, Vocab};
use super::Token;

/// No interned string.
const NONE: u32 = u32::MAX;

pub(crate) struct Bpe {
    rules: Vec<Rule>,
    ignore_merges: bool,
    /// (left, right) -> (rank, interned id of left+right).
    merges: FastMap<(u32, u32), (u32, u32)>,
    /// GPT-2's character for each byte, as UTF-8.
    byte_chars: Vec<String>,
    /// The interned id of each byte's character.
    byte_ids: [u32; 256],
}

/// One symbol of the word being merged: encoded bytes `start..start + len`
/// (in original bytes; each is one encoded character).
#[derive(Clone, Copy)]
struct Symbol {
    start: u32,
    len: u32,
    id: u32,
    prev: i32,
    next: i32,
}

impl Bpe {
    pub(crate) fn new(merges: &[&str], rules: Vec<Rule>, ignore_merges: bool) -> Result<Self> {
        if merges.len() > u32::MAX as usize / 4 {
            bail!("too many BPE merges ({})", merges.len());
        }
        // Every string taking part in a merge, as a number.
        let mut interned: FastMap<String, u32> = FastMap::default();
        let mut intern = |s: &str| -> u32 {
            if let Some(&id) = interned.get(s) {
                return id;
            }
            let id = interned.len() as u32;
            interned.insert(s.to_string(), id);
            id
        };
        let mut pairs: FastMap<(u32, u32), (u32, u32)> = FastMap::default();
        pairs.reserve(merges.len());
        for (rank, line) in merges.iter().enumerate() {
            // As llama.cpp: split at the first space after the first byte; a
            // line without one is an empty pair.
            let space = line.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1);
            let (first, second) = match space {
                Some(p) => (&line[..p], &line[p + 1..]),
                None => ("", ""),
            };
            let l = intern(first);
            let r = intern(second);
            let joined = intern(&format!("{first}{second}"));
            pairs.entry((l, r)).or_insert((rank as u32, joined));
        }
        let table = unicode::byte_to_char_table();
        let byte_chars: Vec<String> = table.iter().map(|c| c.to_string()).collect();
        let mut byte_ids = [NONE; 256];
        for (b, s) in byte_chars.iter().enumerate() {
            byte_ids[b] = interned.get(s.as_str()).copied().unwrap_or(NONE);
        }
        Ok(Self {
            rules,
            ignore_merges,
            merges: pairs,
            byte_chars,
            byte_ids,
        })
    }

    /// Appends the tokens of one raw-text fragment.
    pub(crate) fn encode(&self, vocab: &Vocab, text: &str, out: &mut Vec<Token>) {
        let mut cache: FastMap<&str, Vec<Token>> = FastMap::default();
        let mut scratch = Scratch::default();
        for word in pretokenize::split(text, &self.rules) {
            if let Some(toks) = cache.get(word) {
                out.extend_from_slice(toks);
                continue;
            }
            let start = out.len();
            self.encode_word(vocab, word.as_bytes(), &mut scratch, out);
            if word.len() <= 64 {
                cache.insert(word, out[start..].to_vec());
            }
        }
    }

    fn encode_word(&self, vocab: &Vocab, word: &[u8], s: &mut Scratch, out: &mut Vec<Token>) {
        // The word in GPT-2's characters; `offs[i]` is where byte i's character starts.
        s.encoded.clear();
        s.offs.clear();
        for &b in word {
            s.offs.push(s.encoded.len() as u32);
            s.encoded.push_str(&self.byte_chars[b as usize]);
        }
        s.offs.push(s.encoded.len() as u32);

        if self.ignore_merges {
            if let Some(t) = vocab.lookup(&s.encoded) {
                out.push(t);
                return;
            }
        }

        let n = word.len();
        s.symbols.clear();
        s.symbols.extend(word.iter().enumerate().map(|(i, &b)| Symbol {
            start: i as u32,
            len: 1,
            id: self.byte_ids[b as usize],
            prev: i as i32 - 1,
            next: if i + 1 == n { -1 } else { i as i32 + 1 },
        }));
        s.queue.clear();
        for i in 1..n {
            self.push_pair(&s.symbols, i - 1, i, &mut s.queue);
        }
        while let Some(Reverse((_, left, right, size, joined))) = s.queue.pop() {
            let (l, r) = (s.symbols[left as usize], s.symbols[right as usize]);
            // Outdated: one side has been merged away or grown since.
            if l.len == 0 || r.len == 0 || l.len + r.len != size {
                continue;
            }
            let merged = Symbol {
                len: l.len + r.len,
                id: joined,
                next: r.next,
                ..l
            };
            s.symbols[left as usize] = merged;
            s.symbols[right as usize].len = 0;
            if r.next >= 0 {
                s.symbols[r.next as usize].prev = left as i32;
            }
            if merged.prev >= 0 {
                self.push_pair(&s.symbols, merged.prev as usize, left as usize, &mut s.queue);
            }
            if merged.next >= 0 {
                self.push_pair(&s.symbols, left as usize, merged.next as usize, &mut s.queue);
            }
        }

        let mut i = 0i32;
        while i >= 0 {
            let sym = s.symbols[i as usize];
            let text = &s.encoded[s.offs[sym.start as usize] as usize..s.offs[(sym.start + sym.len) as usize] as usize];
            match vocab.lookup(text) {
                Some(t) => out.push(t),
                None => {
                    // As llama.cpp: each byte of the encoded text on its own;
                    // bytes without a token are dropped.
                    for b in text.bytes() {
                        if let Some(t) = std::str::from_utf8(&[b]).ok().and_then(|c| vocab.lookup(c)) {
                            out.push(t);
                        }
                    }
                }
            }
            i = sym.next;
        }
    }

    fn push_pair(&self, symbols: &[Symbol], left: usize, right: usize, queue: &mut BinaryHeap<Reverse<QueueItem>>) {
        let (l, r) = (&symbols[left], &symbols[right]);
        if l.id == NONE || r.id == NONE {
            return;
        }
        if let Some(&(rank, joined)) = self.merges.get(&(l.id, r.id)) {
            queue.push(Reverse((rank, left as u32, right as u32, l.len + r.len, joined)));
        }
    }
}

/// (rank, left, right, size, joined id): ordered by rank, then leftmost.
type QueueItem = (u32, u32, u32, u32, u32);

#[derive(Default)]
struct Scratch {
    encoded: String,
    offs: Vec<u32>,
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Reverse<QueueItem>>,
}
