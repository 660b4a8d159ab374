//! Text from `-p`, `-f` or a pipe, read no further than the context can
//! hold: a file's size is checked before it is read, then its tokens are
//! counted piece by piece (memory stays bounded), and a run that streams
//! reads it once more as its prefill goes on.

use std::fs::File;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::limits;
use crate::tokenizer::{ChunkedEncoder, Tokenizer};

/// Where a text comes from.
pub enum PromptSource {
    /// `-p`, or a pipe read whole.
    Text(String),
    /// A regular file, read as it is tokenized.
    File { path: PathBuf, len: u64 },
    /// A pipe (`-f` of a FIFO; None: stdin), read whole once the context
    /// says how much at most.
    Pipe(Option<PathBuf>),
}

impl PromptSource {
    /// The text of `-p` or `-f`; None when neither is given.
    pub fn from_flags(prompt: &Option<String>, file: &Option<PathBuf>) -> anyhow::Result<Option<Self>> {
        match (prompt, file) {
            (Some(_), Some(_)) => anyhow::bail!("give the prompt with -p or -f, not both"),
            (Some(p), None) => Ok(Some(Self::Text(p.clone()))),
            (None, Some(f)) => Self::file(f).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// A file, checked to be readable now (before a model loads).
    pub fn file(path: &Path) -> anyhow::Result<Self> {
        let cannot = || format!("cannot read {}", path.display());
        let meta = File::open(path).and_then(|f| f.metadata()).with_context(cannot)?;
        anyhow::ensure!(!meta.is_dir(), "cannot read {}: it is a directory", path.display());
        Ok(match meta.is_file() {
            true => Self::File {
                path: path.to_path_buf(),
                len: meta.len(),
            },
            false => Self::Pipe(Some(path.to_path_buf())),
        })
    }

    /// `-p`, `-f`, else a piped stdin, else no text.
    pub fn from_flags_or_stdin(prompt: &Option<String>, file: &Option<PathBuf>) -> anyhow::Result<Self> {
        Ok(match Self::from_flags(prompt, file)? {
            Some(s) => s,
            None if !std::io::stdin().is_terminal() => Self::Pipe(None),
            None => Self::Text(String::new()),
        })
    }

    fn name(&self) -> String {
        match self {
            Self::Text(_) | Self::Pipe(None) => "the prompt".into(),
            Self::File { path, .. } | Self::Pipe(Some(path)) => format!("the prompt file {}", path.display()),
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
        if let Self::Pipe(from) = self {
            *self = Self::Text(read_pipe(from.as_deref(), max_bytes).map_err(
                |e| match e.downcast_ref::<PipeTooLong>() {
                    Some(_) => too_long(&self.name(), "more bytes than that many tokens take".into()),
                    None => e,
                },
            )?);
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
        let source: Box<dyn Read> = match self {
            Self::Text(s) => Box::new(s.as_bytes()),
            Self::File { path, .. } => {
                Box::new(File::open(path).with_context(|| format!("cannot read {}", path.display()))?)
            }
            Self::Pipe(_) => anyhow::bail!("a pipe is read once its tokens are counted"),
        };
        Ok(ChunkedEncoder::new(source, add_special, parse_special))
    }

    /// The whole text and its number of tokens, checked to be below `room`
    /// first (a chat message is kept whole).
    pub fn read_within(mut self, tok: &Tokenizer, room: usize) -> anyhow::Result<(String, usize)> {
        let n = self.count_tokens(tok, room)?;
        let text = match self {
            Self::Text(s) => s,
            Self::File { path, .. } => {
                std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?
            }
            Self::Pipe(_) => unreachable!("count_tokens reads a pipe"),
        };
        Ok((text, n))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the pipe holds more than the context can")]
struct PipeTooLong;

/// All of a pipe, refused past `max_bytes`.
fn read_pipe(path: Option<&Path>, max_bytes: Option<u64>) -> anyhow::Result<String> {
    let source: Box<dyn Read> = match path {
        None => Box::new(std::io::stdin()),
        Some(p) => Box::new(File::open(p).with_context(|| format!("cannot read {}", p.display()))?),
    };
    let limit = max_bytes.unwrap_or(u64::MAX);
    let mut bytes = Vec::new();
    source
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .context("cannot read the prompt")?;
    anyhow::ensure!(bytes.len() as u64 <= limit, PipeTooLong);
    String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("the prompt is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
}
