//! Prompt text as llama.cpp reads it: `-f` drops one trailing newline, and
//! with `-e` (on by default) `\n \r \t \' \" \\ \xHH` in the prompt become
//! the characters they name; any other backslash stays as written.

use std::io::Read;

/// `text` with its escapes processed, as llama.cpp's `string_process_escapes`.
pub fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let used = unescape_into(text.as_bytes(), text.len(), &mut out);
    debug_assert_eq!(used, text.len());
    out
}

/// Processes the escapes of `raw` that start before `end` (one may run past
/// it, never past `raw`); returns how many bytes of `raw` were read.
fn unescape_into(raw: &[u8], end: usize, out: &mut Vec<u8>) -> usize {
    let mut i = 0;
    while i < end {
        if raw[i] != b'\\' || i + 1 >= raw.len() {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let c = raw[i + 1];
        let named = match c {
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'\'' | b'"' | b'\\' => Some(c),
            b'x' => hex_byte(raw.get(i + 2..i + 4)).inspect(|_| i += 2),
            _ => None,
        };
        match named {
            Some(b) => out.push(b),
            None => out.extend_from_slice(&[b'\\', c]),
        }
        i += 2;
    }
    i
}

/// Two hex digits as a byte.
fn hex_byte(digits: Option<&[u8]>) -> Option<u8> {
    let d = std::str::from_utf8(digits?).ok()?;
    d.chars()
        .all(|c| c.is_ascii_hexdigit())
        .then(|| u8::from_str_radix(d, 16).ok())?
}

/// A prompt file read as llama.cpp reads `-f`: without its last newline,
/// escapes processed when `escape` (streamed: the file is never held whole).
pub struct PromptFile<R> {
    inner: R,
    escape: bool,
    /// Bytes read and not yet processed (the last ones may start an escape
    /// or be the final newline).
    raw: Vec<u8>,
    /// Processed bytes not yet handed out.
    ready: Vec<u8>,
    eof: bool,
}

/// Bytes kept back while the file goes on: the longest escape (`\xHH`).
const HOLD: usize = 4;

impl<R: Read> PromptFile<R> {
    pub fn new(inner: R, escape: bool) -> Self {
        Self {
            inner,
            escape,
            raw: Vec::new(),
            ready: Vec::new(),
            eof: false,
        }
    }

    /// Reads on and processes what is safe to process.
    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.inner.read(&mut chunk)?;
        self.raw.extend_from_slice(&chunk[..n]);
        self.eof = n == 0;
        let end = match self.eof {
            true => {
                if self.raw.last() == Some(&b'\n') {
                    self.raw.pop();
                }
                self.raw.len()
            }
            false => self.raw.len().saturating_sub(HOLD),
        };
        let used = match self.escape {
            true => unescape_into(&self.raw, end, &mut self.ready),
            false => {
                self.ready.extend_from_slice(&self.raw[..end]);
                end
            }
        };
        self.raw.drain(..used);
        Ok(())
    }
}

impl<R: Read> Read for PromptFile<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.ready.is_empty() && !self.eof {
            self.fill()?;
        }
        let n = buf.len().min(self.ready.len());
        buf[..n].copy_from_slice(&self.ready[..n]);
        self.ready.drain(..n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_as_llama_cpp() {
        let cases: [(&str, &[u8]); 7] = [
            (r"Q\nA:", b"Q\nA:"),
            (r#"a\tb\rc\\d\'e\""#, b"a\tb\rc\\d'e\""),
            (r"\x41\x4a!", b"AJ!"),
            (r"\x4", b"\\x4"),
            (r"\xzz", b"\\xzz"),
            (r"\q end\", b"\\q end\\"),
            ("caf\u{e9}\\n", "caf\u{e9}\n".as_bytes()),
        ];
        for (text, want) in cases {
            assert_eq!(unescape(text), want, "{text}");
        }
    }

    /// A file in reads of `step` bytes, as `PromptFile` hands it out.
    fn read_all(text: &[u8], escape: bool, step: usize) -> Vec<u8> {
        struct Trickle<'a>(&'a [u8], usize);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.1.min(self.0.len()).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut out = Vec::new();
        PromptFile::new(Trickle(text, step), escape)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn a_file_loses_one_final_newline_and_escapes_across_reads() {
        let text = br"one\ntwo \x41\x42 three\\ four\";
        let whole = [&text[..], b"\n\n"].concat();
        for step in 1..8 {
            let mut want = unescape(std::str::from_utf8(text).unwrap());
            want.push(b'\n');
            assert_eq!(read_all(&whole, true, step), want, "step {step}");
            assert_eq!(read_all(&whole, false, step), [&text[..], b"\n"].concat());
        }
        assert_eq!(read_all(b"", true, 3), b"");
        assert_eq!(read_all(b"\n", true, 3), b"");
    }
}
