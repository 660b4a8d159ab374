//! How tokens are shown, as llama-completion shows them: `-sp` prints
//! special tokens in the generated text, `--verbose-prompt` logs the
//! prompt's tokens with their ids before they are read (in conversation
//! mode, each turn's).

use clap::Args;

use super::prompt::PromptSource;
use crate::log::{enabled, Level};
use crate::tokenizer::{Token, Tokenizer};

#[derive(Args, Debug, Clone)]
pub struct TokenDisplayArgs {
    /// Print special tokens (e.g. <|im_end|>) in the generated text (-sp)
    #[arg(long = "special", help_heading = "Common")]
    pub special: bool,
    /// Log the prompt's tokens with their ids before generating
    #[arg(long = "verbose-prompt", help_heading = "Common")]
    pub verbose_prompt: bool,
}

impl TokenDisplayArgs {
    /// With `--verbose-prompt`, logs the prompt, its number of tokens and
    /// each token (`    id -> 'piece'`) as it will be read.
    pub fn log_prompt(&self, prompt: &PromptSource, tok: &Tokenizer) -> anyhow::Result<()> {
        if !self.verbose_prompt || !enabled(Level::Info) {
            return Ok(());
        }
        let (mut text, mut tokens) = (String::new(), Vec::new());
        let mut pieces = prompt.pieces(true, true)?;
        while let Some((piece, ids)) = pieces.next_piece(tok)? {
            text += &piece;
            tokens.extend(ids);
        }
        log_tokens(&text, &tokens, tok);
        Ok(())
    }
}

/// `--verbose-prompt`'s lines for a text about to be read: the text, its
/// number of tokens and each token (`    id -> 'piece'`).
pub fn log_tokens(text: &str, tokens: &[Token], tok: &Tokenizer) {
    crate::log_info!("infllm: prompt: '{text}'");
    crate::log_info!("infllm: number of tokens in prompt = {}", tokens.len());
    for &t in tokens {
        let piece = String::from_utf8_lossy(&tok.token_to_piece(t, true)).into_owned();
        crate::log_info!("{t:6} -> '{piece}'");
    }
    crate::log_info!("");
}
