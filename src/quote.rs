//! Text taken from a file or a flag, made safe for a one-line error.

/// Longest quoted text, in characters (the rest is cut with `...`).
const MAX_CHARS: usize = 64;

/// `s` in double quotes, with control characters, quotes and non-ASCII
/// escaped (`\n`, `\u{0}`) and cut to `MAX_CHARS`: a damaged key name or
/// template can neither break the line nor flood the terminal.
pub fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        if i == MAX_CHARS {
            out.push_str("...");
            break;
        }
        if c.is_ascii_graphic() || c == ' ' {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    out.push('"');
    out
}

/// Bytes that should be text: as `quoted`, invalid UTF-8 shown as U+FFFD.
pub fn quoted_bytes(b: &[u8]) -> String {
    let cut = &b[..b.len().min(4 * MAX_CHARS)];
    quoted(&String::from_utf8_lossy(cut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_text_is_one_short_line() {
        assert_eq!(quoted("blk.0.attn"), "\"blk.0.attn\"");
        assert_eq!(quoted("a\nb\0\"c"), "\"a\\nb\\u{0}\\\"c\"");
        let long = quoted(&"x".repeat(10_000));
        assert!(long.len() < 80 && long.ends_with("...\""), "{long}");
        let bytes = quoted_bytes(&[0xff; 100_000]);
        assert!(bytes.len() < 1000 && !bytes.contains('\n'), "{bytes}");
    }
}
