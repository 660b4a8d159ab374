//! `infllm tokenize`: a text's token ids, like llama-tokenize.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::{read_prompt, ModelArgs};
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to tokenize
    #[arg(short = 'p', long = "prompt")]
    pub prompt: Option<String>,
    /// File whose text to tokenize
    #[arg(short = 'f', long = "file")]
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
    let text = read_prompt(&a.prompt, &a.file)?.ok_or_else(|| anyhow::anyhow!("give the text with -p or -f"))?;
    let file = GgufFile::open(a.model.path()?)?;
    let tok = Tokenizer::from_gguf(&file)?;
    let ids = tok.encode(&text, !a.no_bos, !a.no_parse_special);
    let mut out = std::io::stdout().lock();
    if a.ids {
        let list: Vec<String> = ids.iter().map(|t| t.to_string()).collect();
        writeln!(out, "[{}]", list.join(", "))?;
    } else {
        for &t in &ids {
            let piece = String::from_utf8_lossy(&tok.token_to_piece(t, true)).into_owned();
            writeln!(out, "{t:6} -> '{piece}'")?;
        }
    }
    Ok(())
}
