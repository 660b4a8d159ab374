//! Cutting special tokens (control, user-defined and unknown ones) out of
//! the text before the model's algorithm sees it, as llama.cpp does.

use super::vocab::{Vocab, ATTR_CONTROL, ATTR_LSTRIP, ATTR_RSTRIP, ATTR_UNKNOWN, ATTR_USER_DEFINED};
use super::Token;

/// A piece of the text after special tokens are cut out.
pub(crate) enum Fragment<'a> {
    Text(&'a str),
    Special(Token),
}

/// The special tokens, longest text first, and a trie of their texts.
pub(crate) struct Specials {
    order: Vec<Token>,
    trie: Trie,
}

impl Specials {
    /// The special tokens of `vocab`, by its attributes as they stand now.
    pub(crate) fn new(vocab: &Vocab) -> Self {
        // Longest first (ties by id; llama.cpp's order there is its sort's,
        // which matters only for overlapping equal-length texts).
        let mut order: Vec<Token> = (0..vocab.len() as Token)
            .filter(|&t| vocab.attr(t) & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0)
            .collect();
        order.sort_by(|&a, &b| vocab.texts[b as usize].len().cmp(&vocab.texts[a as usize].len()));
        let mut trie = Trie::new();
        for (i, &t) in order.iter().enumerate() {
            trie.insert(vocab.texts[t as usize].as_bytes(), i as u32);
        }
        Self { order, trie }
    }

    /// The special tokens, longest text first.
    pub(crate) fn tokens(&self) -> &[Token] {
        &self.order
    }

    /// Cuts the special tokens out of `text`: for each special token,
    /// longest first, every occurrence left to right in the text not yet cut.
    /// Control and unknown tokens count only when `parse_special`.
    ///
    /// All occurrences are found in one pass over the trie, then taken in
    /// that order when they still lie wholly in uncut text. Because tokens
    /// come longest first, an occurrence whose first and last bytes are
    /// uncut is uncut throughout: any cut region inside it would hold a
    /// token at least as long as the occurrence itself.
    pub(crate) fn partition<'a>(&self, vocab: &Vocab, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        if text.is_empty() {
            return Vec::new();
        }
        let found = self.occurrences(vocab, text.as_bytes(), parse_special);
        if found.is_empty() {
            return vec![Fragment::Text(text)];
        }
        let state = self.cut(vocab, text.as_bytes(), self.by_token_order(found));
        fragments(text, &state)
    }

    /// Every occurrence of every active special token, by position: (order, position).
    fn occurrences(&self, vocab: &Vocab, bytes: &[u8], parse_special: bool) -> Vec<(u32, u32)> {
        let active = |order: u32| {
            let t = self.order[order as usize];
            parse_special || vocab.attr(t) & (ATTR_CONTROL | ATTR_UNKNOWN) == 0
        };
        let mut found = Vec::new();
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
        found
    }

    /// A stable counting sort by token order: positions stay ascending.
    fn by_token_order(&self, found: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
        let mut count = vec![0u32; self.order.len() + 1];
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
        sorted
    }

    /// Per byte: [`TEXT`], [`CUT`] (inside a token or stripped), or a token
    /// start (its id + [`TOKEN`]), taking the occurrences in `sorted` order.
    fn cut(&self, vocab: &Vocab, bytes: &[u8], sorted: Vec<(u32, u32)>) -> Vec<u32> {
        let mut state = vec![TEXT; bytes.len()];
        let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r');
        for (order, pos) in sorted {
            let tok = self.order[order as usize];
            let len = vocab.texts[tok as usize].len();
            let pos = pos as usize;
            if state[pos] != TEXT || state[pos + len - 1] != TEXT {
                continue;
            }
            state[pos] = tok as u32 + TOKEN;
            state[pos + 1..pos + len].fill(CUT);
            let attr = vocab.attr(tok);
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
        state
    }
}

const TEXT: u32 = 0;
const CUT: u32 = 1;
const TOKEN: u32 = 2;

/// The runs of uncut text and the tokens, in order, of a [`Specials::cut`] result.
fn fragments<'a>(text: &'a str, state: &[u32]) -> Vec<Fragment<'a>> {
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

/// A byte trie of the special tokens' texts.
struct Trie {
    /// Per node: children (byte, node), and the positions in the special
    /// list of the tokens spelled by the path to it.
    children: Vec<Vec<(u8, u32)>>,
    values: Vec<Vec<u32>>,
}

impl Trie {
    fn new() -> Self {
        Self {
            children: vec![Vec::new()],
            values: vec![Vec::new()],
        }
    }

    fn insert(&mut self, text: &[u8], value: u32) {
        let mut node = 0usize;
        for &b in text {
            node = match self.child(node, b) {
                Some(n) => n,
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
