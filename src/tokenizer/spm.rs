//! SentencePiece-style BPE (`tokenizer.ggml.model = "llama"`), as llama.cpp
//! runs it: spaces become U+2581, the text starts as one symbol per
//! character, and the adjacent pair whose concatenation is the
//! highest-scoring vocabulary token is merged first (the leftmost on ties).
//! Symbols left that are not tokens fall back to `<0xNN>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::vocab::Vocab;
use super::Token;

#[derive(Clone, Copy)]
struct Symbol {
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
}

/// A candidate merge; the heap's maximum is the best one.
struct Pair {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Pair {}
impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pair {
    fn cmp(&self, other: &Self) -> Ordering {
        // Higher score first; on a tie, the leftmost.
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Appends the tokens of `text` (whose spaces are already escaped).
pub(crate) fn encode(vocab: &Vocab, text: &str, out: &mut Vec<Token>) {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        let idx = symbols.len() as i32;
        symbols.push(Symbol {
            start: i as u32,
            len: c.len_utf8() as u32,
            prev: idx - 1,
            next: if i + c.len_utf8() == text.len() { -1 } else { idx + 1 },
        });
    }
    if symbols.is_empty() {
        return;
    }
    let mut queue = BinaryHeap::new();
    let try_pair = |symbols: &[Symbol], left: i32, right: i32, queue: &mut BinaryHeap<Pair>| {
        if left < 0 || right < 0 {
            return;
        }
        let (l, r) = (symbols[left as usize], symbols[right as usize]);
        let size = l.len + r.len;
        let piece = &text[l.start as usize..(l.start + size) as usize];
        if let Some(t) = vocab.lookup(piece) {
            queue.push(Pair {
                score: vocab.score(t),
                left: left as u32,
                right: right as u32,
                size,
            });
        }
    };
    for i in 1..symbols.len() as i32 {
        try_pair(&symbols, i - 1, i, &mut queue);
    }
    while let Some(p) = queue.pop() {
        let (l, r) = (symbols[p.left as usize], symbols[p.right as usize]);
        if l.len == 0 || r.len == 0 || l.len + r.len != p.size {
            continue;
        }
        symbols[p.left as usize].len += r.len;
        symbols[p.left as usize].next = r.next;
        symbols[p.right as usize].len = 0;
        if r.next >= 0 {
            symbols[r.next as usize].prev = p.left as i32;
        }
        try_pair(&symbols, l.prev, p.left as i32, &mut queue);
        try_pair(&symbols, p.left as i32, r.next, &mut queue);
    }

    let mut i = 0i32;
    while i >= 0 {
        let s = symbols[i as usize];
        let piece = &text[s.start as usize..(s.start + s.len) as usize];
        match vocab.lookup(piece) {
            Some(t) => out.push(t),
            None => out.extend(piece.bytes().filter_map(|b| vocab.byte_token(b))),
        }
        i = s.next;
    }
}
