//! Unicode character classes as llama.cpp's tokenizer sees them: the major
//! general category of each code point and the White_Space property.
//!
//! llama.cpp's tables are Unicode 15.0, so the categories come from
//! `unicode-general-category` 0.6, the release built on that version (later
//! releases would class characters assigned since then as letters,
//! symbols, ...). White_Space follows from the categories too.

use std::sync::OnceLock;

use unicode_general_category::{get_general_category, GeneralCategory};

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

/// Classes of the Basic Multilingual Plane, where nearly all text lies,
/// copied once (a fraction of a millisecond) from the crate's tables:
/// indexing them is a few times faster than the crate's look-up, which
/// matters in the pre-tokenizer's per-character loop.
static BMP: OnceLock<Box<[Flags]>> = OnceLock::new();

/// The classes of `c`.
#[inline]
pub(crate) fn flags(c: char) -> Flags {
    let bmp = BMP.get_or_init(|| {
        (0..=0xFFFF)
            .map(|u| char::from_u32(u).map_or(Flags(PRESENT), classify))
            .collect()
    });
    match bmp.get(c as usize) {
        Some(&f) => f,
        None => classify(c),
    }
}

fn classify(c: char) -> Flags {
    use GeneralCategory::*;
    let class = match get_general_category(c) {
        DecimalNumber | LetterNumber | OtherNumber => NUMBER,
        UppercaseLetter | LowercaseLetter | TitlecaseLetter | ModifierLetter | OtherLetter => LETTER,
        NonspacingMark | SpacingMark | EnclosingMark => MARK,
        ConnectorPunctuation | DashPunctuation | OpenPunctuation | ClosePunctuation | InitialPunctuation
        | FinalPunctuation | OtherPunctuation => PUNCT,
        MathSymbol | CurrencySymbol | ModifierSymbol | OtherSymbol => SYMBOL,
        // White_Space is the three separator categories and five controls
        // (\t to \r, U+0085): one category look-up serves both.
        SpaceSeparator | LineSeparator | ParagraphSeparator => WHITESPACE,
        Control if c.is_whitespace() => WHITESPACE,
        Control | Format | Surrogate | PrivateUse | Unassigned => 0,
    };
    Flags(class | PRESENT)
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
    fn white_space_is_the_standard_librarys() {
        for c in (0..=0x10_FFFF).filter_map(char::from_u32) {
            assert_eq!(flags(c).is_whitespace(), c.is_whitespace(), "U+{:04X}", c as u32);
        }
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
