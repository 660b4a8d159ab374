//! llama-completion's interactive mode without a chat template (`-i
//! -no-cnv`, `-if`, `--in-prefix` / `--in-suffix`): one text that the model
//! and the user continue in turn. The model writes until a reverse prompt,
//! the end of text, `-n` tokens or a Ctrl-C; then a line typed (or piped)
//! goes in between `--in-prefix` and `--in-suffix`. An empty line gives
//! the turn back; the end of input, or a Ctrl-C while waiting, ends the run.

use std::io::{BufRead, Write};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use anyhow::Context as _;

use super::generate::{write_text, End, GenerateArgs};
use super::prompt::{text_by, Rules};
use super::signals::{self, Stopped};
use crate::engine::Engine;
use crate::sampling::Sampler;
use crate::tokenizer::Token;

/// How the turns go: what goes around each input (escapes processed as
/// `-p`'s are) and who starts.
pub struct Turns {
    prefix: String,
    suffix: String,
    bos: bool,
    rules: Option<Rules>,
    /// The user writes first: `-if`, a conversation flag, or no prompt.
    user_first: bool,
}

impl Turns {
    pub fn from_args(a: &GenerateArgs) -> anyhow::Result<Self> {
        let rules = Some(a.prompt_rules());
        let read = |s: &Option<String>, flag: &str| {
            text_by(s.as_deref().unwrap_or(""), rules).with_context(|| flag.to_string())
        };
        let c = &a.chat;
        Ok(Self {
            prefix: read(&c.in_prefix, "--in-prefix")?,
            suffix: read(&c.in_suffix, "--in-suffix")?,
            bos: c.in_prefix_bos,
            rules,
            user_first: c.interactive_first || !c.no_conversation || (a.prompt.is_none() && a.file.is_none()),
        })
    }
}

/// The turns after the prompt, whose `logits` they start from (None: no
/// prompt); `limit`, `stops` and `special` as `write_text` takes them,
/// `n_eval` counts decode steps.
pub fn converse(
    (engine, sampler): (&mut Engine, &mut Sampler),
    (mut logits, limit, stops, special): (Option<Vec<f32>>, usize, &[String], bool),
    turns: &Turns,
    out: &mut impl Write,
    n_eval: &mut usize,
) -> anyhow::Result<()> {
    let mut user_first = turns.user_first;
    let lines = Lines::start();
    loop {
        // Sampled or injected, not evaluated yet.
        let mut pending: Vec<Token> = Vec::new();
        let model_turn = !std::mem::take(&mut user_first);
        if let Some(l) = logits.take_if(|_| model_turn) {
            let (end, last) = write_text((engine, sampler), (l, limit, stops, special), out, n_eval)?;
            pending.extend(last);
            match end {
                End::ContextFull => return context_full(engine, out),
                End::Interrupted => signals::clear_interrupt(),
                // As llama.cpp, the first reverse prompt hands the turn over.
                End::EndOfText if !stops.is_empty() => {
                    write!(out, "{}", stops[0])?;
                    pending.extend(engine.tokenizer().encode(&stops[0], false, true));
                }
                _ => {}
            }
        }
        write!(out, "{}", turns.prefix)?;
        out.flush()?;
        let Some(line) = lines.next()? else {
            writeln!(out)?;
            return Ok(());
        };
        let input = match line.is_empty() {
            true => Vec::new(),
            false => {
                write!(out, "{}", turns.suffix)?;
                out.flush()?;
                input_tokens(engine, turns, &text_by(&line, turns.rules)?)
            }
        };
        let room = engine.n_ctx().saturating_sub(engine.n_past() + 1);
        if pending.len() + input.len() > room {
            crate::log_warn!(
                "\ninfllm: the input does not fit: {} tokens, room for {room} (-c)",
                input.len()
            );
            return context_full(engine, out);
        }
        // As llama.cpp, each turn of the model starts a fresh sampler.
        *sampler = Sampler::new(sampler.params.clone(), engine.tokenizer())?;
        input.iter().for_each(|&t| sampler.accept(t));
        pending.extend(input);
        logits = match pending.is_empty() {
            true => logits,
            false => Some(engine.eval(&pending, false, &mut |_, _| {})?),
        };
    }
}

/// `--in-prefix-bos`, `--in-prefix`, the line, `--in-suffix`: the affixes
/// may name special tokens, the line may not (as in llama.cpp).
fn input_tokens(engine: &Engine, turns: &Turns, line: &str) -> Vec<Token> {
    let tok = engine.tokenizer();
    let bos = tok.bos().filter(|_| turns.bos);
    (bos.into_iter())
        .chain(tok.encode(&turns.prefix, false, true))
        .chain(tok.encode(line, false, false))
        .chain(tok.encode(&turns.suffix, false, true))
        .collect()
}

fn context_full(engine: &Engine, out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(out)?;
    crate::log_warn!("infllm: context full ({} tokens): stopping", engine.n_ctx());
    Ok(())
}

/// Lines of stdin, read on a thread of their own so that a Ctrl-C can end
/// the wait for one.
struct Lines(mpsc::Receiver<std::io::Result<String>>);

impl Lines {
    fn start() -> Self {
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Self(lines)
    }

    /// One input, as llama.cpp reads it: a line ending with `\` goes on
    /// with the next (joined by a newline), a last `/` is dropped. None at
    /// the end of the input.
    fn next(&self) -> anyhow::Result<Option<String>> {
        let mut text = String::new();
        while let Some(line) = self.wait()? {
            match line.strip_suffix('\\') {
                Some(head) => {
                    text.push_str(head);
                    text.push('\n');
                }
                None => {
                    text.push_str(line.strip_suffix('/').unwrap_or(&line));
                    return Ok(Some(text));
                }
            }
        }
        Ok(None)
    }

    /// The next line; a Ctrl-C while waiting stops the run.
    fn wait(&self) -> anyhow::Result<Option<String>> {
        loop {
            match self.0.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => return line.map(Some).context("cannot read the input"),
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
                Err(RecvTimeoutError::Timeout) if signals::interrupted() => return Err(Stopped::now().into()),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}
