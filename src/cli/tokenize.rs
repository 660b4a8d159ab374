//! `infllm tokenize`: a text's token ids, like llama-tokenize.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::prompt::PromptSource;
use super::ModelArgs;
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to tokenize
    #[arg(short = 'p', long = "prompt", overrides_with = "file")]
    pub prompt: Option<String>,
    /// File whose text to tokenize
    #[arg(short = 'f', long = "file", overrides_with = "prompt")]
    pub file: Option<PathBuf>,
    /// Print only the ids, as a list: [1, 2, 3]
    #[arg(long)]
    pub ids: bool,
    /// Never add a BOS token, even if the model asks for one
    #[arg(long = "no-bos")]
    pub no_bos: bool,
    /// Treat special-token text (e.g. <|im_start|>) as plain text
    #[arg(long = "no-parse-special")]
    pub no_parse_special: bool,
}

pub fn run(a: &TokenizeArgs) -> anyhow::Result<()> {
    let text = PromptSource::from_flags(&a.prompt, &a.file, None)?
        .ok_or_else(|| anyhow::anyhow!("give the text with -p or -f"))?;
    let text = match text {
        // A pipe given to -f: no context bounds it here.
        PromptSource::Pipe(Some(path), _) => PromptSource::Text(
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?,
        ),
        source => source,
    };
    let file = GgufFile::open(a.model.path()?)?;
    let tok = Tokenizer::from_gguf(&file)?;
    // Piece by piece: a long file's tokens are printed as they come.
    let mut pieces = text.pieces(!a.no_bos, !a.no_parse_special)?;
    let mut out = std::io::stdout().lock();
    let mut first = true;
    if a.ids {
        write!(out, "[")?;
    }
    while let Some((_, ids)) = pieces.next_piece(&tok)? {
        for t in ids {
            if a.ids {
                let sep = if std::mem::take(&mut first) { "" } else { ", " };
                write!(out, "{sep}{t}")?;
            } else {
                let piece = String::from_utf8_lossy(&tok.token_to_piece(t, true)).into_owned();
                writeln!(out, "{t:6} -> '{piece}'")?;
            }
        }
    }
    if a.ids {
        writeln!(out, "]")?;
    }
    Ok(())
}
