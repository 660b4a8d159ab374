//! Text taken from a file or a flag, made safe for a one-line error.

/// Longest quoted text, in output characters (the rest is cut with `...`).
const MAX_CHARS: usize = 64;

/// `s` in double quotes, with control characters, quotes and non-ASCII
/// escaped (`\n`, `\u{0}`) and cut to `MAX_CHARS` of output: a damaged key
/// name or template can neither break the line nor flood the terminal.
pub fn quoted(s: &str) -> String {
    format!("\"{}\"", escape(s, MAX_CHARS, true))
}

/// `s` with control characters and non-ASCII escaped, cut to `max` bytes of
/// output with `...`: a message that quotes a file (a template error) on
/// one line.
pub fn escaped(s: &str, max: usize) -> String {
    escape(s, max, false)
}

fn escape(s: &str, max: usize, quotes: bool) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let e: String = match c {
            '"' | '\\' if quotes => format!("\\{c}"),
            c if c.is_ascii_graphic() || c == ' ' => c.to_string(),
            c => c.escape_default().collect(),
        };
        if out.len() + e.len() > max {
            out.push_str("...");
            break;
        }
        out.push_str(&e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_text_is_one_short_line() {
        assert_eq!(quoted("blk.0.attn"), "\"blk.0.attn\"");
        assert_eq!(quoted("a\nb\0\"c"), "\"a\\nb\\u{0}\\\"c\"");
        for long in ["x".repeat(10_000), "\0".repeat(10_000)] {
            let q = quoted(&long);
            assert!(q.len() < 72 && q.ends_with("...\""), "{q}");
        }
    }
}
