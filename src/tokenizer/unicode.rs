//! Unicode character classes as llama.cpp's tokenizer sees them: the major
//! general category of each code point (as of Unicode 15.0, the version of
//! llama.cpp's tables) and the White_Space property.
//!
//! The table is derived once, at first use, from the Unicode data that the
//! regex engine already carries, so no table is kept in this source tree.

use std::sync::OnceLock;

/// `\p{N}`.
pub(crate) const NUMBER: u8 = 1 << 0;
/// `\p{L}`.
pub(crate) const LETTER: u8 = 1 << 1;
/// `\p{M}`.
pub(crate) const MARK: u8 = 1 << 2;
/// `\p{P}`.
pub(crate) const PUNCT: u8 = 1 << 3;
/// `\p{S}`.
pub(crate) const SYMBOL: u8 = 1 << 4;
/// `\s` (the White_Space property).
pub(crate) const WHITESPACE: u8 = 1 << 5;
/// Set for every code point; absent only for "past the end of the text".
pub(crate) const PRESENT: u8 = 1 << 7;

/// Classes of one code point (or, when empty, of a position outside the text).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flags(pub(crate) u8);

impl Flags {
    #[inline]
    pub(crate) fn has(self, bits: u8) -> bool {
        self.0 & bits != 0
    }
    #[inline]
    pub(crate) fn is_letter(self) -> bool {
        self.has(LETTER)
    }
    #[inline]
    pub(crate) fn is_number(self) -> bool {
        self.has(NUMBER)
    }
    #[inline]
    pub(crate) fn is_mark(self) -> bool {
        self.has(MARK)
    }
    #[inline]
    pub(crate) fn is_whitespace(self) -> bool {
        self.has(WHITESPACE)
    }
    /// A real code point (not past the end).
    #[inline]
    pub(crate) fn present(self) -> bool {
        self.has(PRESENT)
    }
}

const N_CODEPOINTS: usize = 0x11_0000;

static TABLE: OnceLock<Box<[u8]>> = OnceLock::new();

/// The classes of `c`.
#[inline]
pub(crate) fn flags(c: char) -> Flags {
    Flags(table()[c as usize] | PRESENT)
}

/// Forces the table to be built now (it takes a few tens of milliseconds).
pub(crate) fn init() {
    table();
}

fn table() -> &'static [u8] {
    TABLE.get_or_init(build)
}

fn build() -> Box<[u8]> {
    let mut table = vec![0u8; N_CODEPOINTS];
    let all: String = (0..N_CODEPOINTS as u32).filter_map(char::from_u32).collect();
    let mut mark = |pattern: &str, value: u8| {
        let re = fancy_regex::Regex::new(pattern).expect("a valid Unicode class");
        for m in re.find_iter(&all) {
            let m = m.expect("a plain class cannot fail to match");
            for c in m.as_str().chars() {
                table[c as usize] = value;
            }
        }
    };
    mark(r"\p{N}+", NUMBER);
    mark(r"\p{L}+", LETTER);
    mark(r"\p{M}+", MARK);
    mark(r"\p{P}+", PUNCT);
    mark(r"\p{S}+", SYMBOL);
    // llama.cpp's tables are Unicode 15.0: later assignments are unassigned there.
    mark(r"\P{Age=15.0}+", 0);
    for c in all.chars().filter(|c| c.is_whitespace()) {
        table[c as usize] |= WHITESPACE;
    }
    table.into_boxed_slice()
}

/// GPT-2's reversible byte-to-character map: printable Latin-1 bytes map to
/// themselves, the others to U+0100 and up, in byte order.
pub(crate) fn byte_to_char_table() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        out[b as usize] = if printable(b) {
            char::from_u32(b).expect("Latin-1")
        } else {
            let c = char::from_u32(next).expect("below U+0200");
            next += 1;
            c
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert!(flags('a').is_letter());
        assert!(flags('é').is_letter());
        assert!(flags('中').is_letter());
        assert!(flags('7').is_number());
        assert!(flags('½').is_number());
        assert!(flags('\u{301}').is_mark());
        assert!(flags('!').has(PUNCT));
        assert!(flags('$').has(SYMBOL));
        assert!(flags('😀').has(SYMBOL));
        assert!(flags(' ').is_whitespace());
        assert!(flags('\u{3000}').is_whitespace());
        assert!(!flags('\u{200B}').is_whitespace());
        // U+1C89 was assigned in Unicode 16.0: unassigned for llama.cpp.
        assert_eq!(flags('\u{1C89}').0 & !PRESENT, 0);
    }

    #[test]
    fn byte_map() {
        let t = byte_to_char_table();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0xAD], 'Ń');
    }
}
