//! Text from `-p`, `-f` or a pipe, read no further than the context can
//! hold: a file's size is checked before it is read, then its tokens are
//! counted piece by piece (memory stays bounded), and a run that streams
//! reads it once more as its prefill goes on.

use std::fs::File;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::limits;
use super::llama_text::{unescape, PromptFile};
use crate::tokenizer::{ChunkedEncoder, Tokenizer};

/// Where a text comes from.
pub enum PromptSource {
    /// `-p`, or a pipe read whole.
    Text(String),
    /// A regular file, read as it is tokenized.
    File {
        path: PathBuf,
        len: u64,
        rules: Option<Rules>,
    },
    /// A pipe (`-f` of a FIFO; None: stdin), read whole once the context
    /// says how much at most.
    Pipe(Option<PathBuf>, Option<Rules>),
}

/// A prompt read as llama.cpp reads `-p` and `-f` (see `llama_text`): a
/// file without its last newline, escapes processed when `escape`.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub escape: bool,
}

impl PromptSource {
    /// The text of `-p` or `-f`, read by `rules` (None: as it is); None
    /// when neither is given.
    pub fn from_flags(
        prompt: &Option<String>,
        file: &Option<PathBuf>,
        rules: Option<Rules>,
    ) -> anyhow::Result<Option<Self>> {
        match (prompt, file) {
            (Some(_), Some(_)) => anyhow::bail!("give the prompt with -p or -f, not both"),
            (Some(p), None) => Ok(Some(Self::Text(text_by(p, rules)?))),
            (None, Some(f)) => Self::file(f, rules).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// A file, checked to be readable now (before a model loads).
    pub fn file(path: &Path, rules: Option<Rules>) -> anyhow::Result<Self> {
        let cannot = || format!("cannot read {}", path.display());
        let meta = File::open(path).and_then(|f| f.metadata()).with_context(cannot)?;
        anyhow::ensure!(!meta.is_dir(), "cannot read {}: it is a directory", path.display());
        Ok(match meta.is_file() {
            true => Self::File {
                path: path.to_path_buf(),
                len: meta.len(),
                rules,
            },
            false => Self::Pipe(Some(path.to_path_buf()), rules),
        })
    }

    /// `-p`, `-f`, else a piped stdin, else no text.
    pub fn from_flags_or_stdin(
        prompt: &Option<String>,
        file: &Option<PathBuf>,
        rules: Option<Rules>,
    ) -> anyhow::Result<Self> {
        Ok(match Self::from_flags(prompt, file, rules)? {
            Some(s) => s,
            None if !std::io::stdin().is_terminal() => Self::Pipe(None, None),
            None => Self::Text(String::new()),
        })
    }

    fn name(&self) -> String {
        match self {
            Self::Text(_) | Self::Pipe(None, _) => "the prompt".into(),
            Self::File { path, .. } | Self::Pipe(Some(path), _) => format!("the prompt file {}", path.display()),
        }
    }

    /// The number of tokens of the text, checked to be below `room`: by
    /// the file's size first (no token stands for more than
    /// `max_token_bytes`), then by counting them piece by piece. A pipe is
    /// read here, up to what `room` tokens can hold.
    pub fn count_tokens(&mut self, tok: &Tokenizer, room: usize) -> anyhow::Result<usize> {
        let too_long = |name: &str, what: String| match room as u64 >= limits::MAX_TOKENS {
            true => anyhow::anyhow!("{name} is too long: {what}, but no context holds more than {room}"),
            false => anyhow::anyhow!("{name} is too long: {what}, but the context holds {room} (-c): raise -c"),
        };
        let per_token = tok.max_token_bytes().map(|m| m as u64);
        if let (Self::File { len, .. }, Some(m)) = (&*self, per_token) {
            if len / m >= room as u64 {
                return Err(too_long(
                    &self.name(),
                    format!("{len} bytes, at least {} tokens", len / m),
                ));
            }
        }
        let max_bytes = per_token.map(|m| m.saturating_mul(room as u64));
        if let Self::Pipe(from, rules) = self {
            let text =
                read_pipe(from.as_deref(), max_bytes, *rules).map_err(|e| match e.downcast_ref::<PipeTooLong>() {
                    Some(_) => too_long(&self.name(), "more bytes than that many tokens take".into()),
                    None => e,
                })?;
            *self = Self::Text(text);
        }
        let mut pieces = self.pieces(true, true)?;
        let mut n = 0;
        while let Some((_, tokens)) = pieces.next_piece(tok).with_context(|| self.name())? {
            n += tokens.len();
            if n >= room {
                return Err(too_long(&self.name(), format!("more than {} tokens", n.min(room))));
            }
        }
        Ok(n)
    }

    /// The text in pieces with their tokens (see `ChunkedEncoder`).
    pub fn pieces(&self, add_special: bool, parse_special: bool) -> anyhow::Result<ChunkedEncoder<Box<dyn Read + '_>>> {
        Ok(ChunkedEncoder::new(self.reader()?, add_special, parse_special))
    }

    /// The text's bytes (a file's read by its rules).
    fn reader(&self) -> anyhow::Result<Box<dyn Read + '_>> {
        Ok(match self {
            Self::Text(s) => Box::new(s.as_bytes()),
            Self::File { path, rules, .. } => {
                let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
                match rules {
                    Some(r) => Box::new(PromptFile::new(file, r.escape)),
                    None => Box::new(file),
                }
            }
            Self::Pipe(..) => anyhow::bail!("a pipe is read once its tokens are counted"),
        })
    }

    /// The whole text and its number of tokens, checked to be below `room`
    /// first (a chat message is kept whole).
    pub fn read_within(mut self, tok: &Tokenizer, room: usize) -> anyhow::Result<(String, usize)> {
        let n = self.count_tokens(tok, room)?;
        let text = match self {
            Self::Text(s) => s,
            file @ Self::File { .. } => {
                let mut bytes = Vec::new();
                file.reader()?.read_to_end(&mut bytes).context(file.name())?;
                utf8(bytes, &file.name())?
            }
            Self::Pipe(..) => unreachable!("count_tokens reads a pipe"),
        };
        Ok((text, n))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the pipe holds more than the context can")]
struct PipeTooLong;

/// `-p`'s (or `-r`'s) text by `rules`.
pub fn text_by(text: &str, rules: Option<Rules>) -> anyhow::Result<String> {
    match rules {
        Some(Rules { escape: true }) => utf8(unescape(text), "the prompt (-e: escapes processed)"),
        _ => Ok(text.to_string()),
    }
}

fn utf8(bytes: Vec<u8>, name: &str) -> anyhow::Result<String> {
    String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{name} is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
}

/// All of a pipe, refused past `max_bytes`, read by `rules`.
fn read_pipe(path: Option<&Path>, max_bytes: Option<u64>, rules: Option<Rules>) -> anyhow::Result<String> {
    let source: Box<dyn Read> = match path {
        None => Box::new(std::io::stdin()),
        Some(p) => Box::new(File::open(p).with_context(|| format!("cannot read {}", p.display()))?),
    };
    let source: Box<dyn Read> = match rules {
        Some(r) => Box::new(PromptFile::new(source, r.escape)),
        None => source,
    };
    let limit = max_bytes.unwrap_or(u64::MAX);
    let mut bytes = Vec::new();
    source
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .context("cannot read the prompt")?;
    anyhow::ensure!(bytes.len() as u64 <= limit, PipeTooLong);
    utf8(bytes, "the prompt")
}
