//! Conversation mode, like llama-cli's: a REPL on a terminal, one turn
//! from stdin otherwise. Answers stream to stdout; everything else (load
//! information, progress, notices) goes to stderr, so piped output is the
//! answer alone.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::history::DefaultHistory;
use rustyline::{Completer, Editor, Helper, Hinter, Validator};

use super::attn::describe;
use super::generate::GenerateArgs;
use super::progress::Progress;
use super::{error_line, read_prompt, read_stdin};
use crate::chat::{ChatTemplate, Conversation, Stop};
use crate::engine::Engine;
use crate::sampling::Sampler;
use crate::session::SessionFile;

#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    /// Conversation mode (-cnv): chat with the model's template (default when
    /// stdin is a terminal and no prompt is given)
    #[arg(long = "conversation", help_heading = "Conversation")]
    pub conversation: bool,
    /// Never enter conversation mode (-no-cnv)
    #[arg(
        long = "no-conversation",
        conflicts_with = "conversation",
        help_heading = "Conversation"
    )]
    pub no_conversation: bool,
    /// Interactive mode (same as conversation mode here)
    #[arg(short = 'i', long = "interactive", help_heading = "Conversation")]
    pub interactive: bool,
    /// Chat template: a built-in name (chatml, llama3, gemma) or a Jinja
    /// template [default: the model's, else chatml]
    #[arg(long = "chat-template", value_name = "JINJA_TEMPLATE", help_heading = "Conversation")]
    pub chat_template: Option<String>,
    /// File holding a Jinja chat template
    #[arg(long = "chat-template-file", value_name = "FNAME", help_heading = "Conversation")]
    pub chat_template_file: Option<PathBuf>,
    /// System prompt (-sys)
    #[arg(long = "system-prompt", value_name = "PROMPT", help_heading = "Conversation")]
    pub system_prompt: Option<String>,
    /// File holding the system prompt (-sysf)
    #[arg(long = "system-prompt-file", value_name = "FNAME", help_heading = "Conversation")]
    pub system_prompt_file: Option<PathBuf>,
    /// Session file: loaded at start if it exists, saved at exit
    #[arg(long = "session", value_name = "FNAME", help_heading = "Conversation")]
    pub session: Option<PathBuf>,
    /// Colours on a terminal
    #[arg(long = "color", value_enum, default_value_t = Color::Auto, num_args = 0..=1,
          default_missing_value = "on", help_heading = "Conversation")]
    pub color: Color,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    Auto,
    On,
    Off,
}

impl ChatArgs {
    /// Whether this run is a conversation: asked for, or by default on a
    /// terminal when no prompt is given (as llama-cli decides).
    pub fn wanted(&self, has_prompt: bool) -> bool {
        if self.no_conversation {
            return false;
        }
        self.conversation || self.interactive || (!has_prompt && std::io::stdin().is_terminal())
    }
}

/// Set by Ctrl-C; a second Ctrl-C before it is taken exits.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

pub fn run(a: &GenerateArgs) -> anyhow::Result<()> {
    let c = &a.chat;
    // Taken first: a session another process holds stops the run before any work.
    let session = c.session.as_deref().map(SessionFile::open).transpose()?;
    let first = read_prompt(&a.prompt, &a.file)?;
    let system = read_prompt(&c.system_prompt, &c.system_prompt_file)?;
    let (model, info) = a.run.load()?;
    let template = chat_template(&model, c)?;
    let params = a.run.engine_params(&model.hp)?;
    let attn_info = describe(&params.attn, &model.hp);
    let engine = Engine::new(model, params)?;
    let sampler = Sampler::new(a.sampling(engine.n_ctx()));
    let mut conv = Conversation::new(engine, sampler, template, system);
    // A session that cannot be restored stops the run before any output.
    let restored = match session {
        Some(s) => {
            let restored = conv.use_session(s)?;
            c.session.as_deref().filter(|_| restored)
        }
        None => None,
    };
    eprintln!("{info}");
    eprintln!("infllm: {attn_info}");
    eprintln!(
        "infllm: chat template {}, threads {}, seed {}",
        conv.template().name(),
        params.n_threads,
        conv.sampler.params.seed
    );
    if let Some(path) = restored {
        eprintln!(
            "infllm: session {} restored: {} tokens, {} messages",
            path.display(),
            conv.engine.n_past(),
            conv.messages().len()
        );
    }
    ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::Relaxed) {
            std::process::exit(130);
        }
    })
    .context("cannot install the Ctrl-C handler")?;

    converse(&mut conv, first, usize::try_from(a.n_predict).ok(), c.color)?;
    if let Some(path) = &c.session {
        conv.save(path)?;
        eprintln!("infllm: session saved to {}", path.display());
    }
    Ok(())
}

/// The model's template, or the one the flags name.
fn chat_template(model: &crate::model::Model, c: &ChatArgs) -> anyhow::Result<ChatTemplate> {
    let tok = &model.tokenizer;
    let token_text = |t: Option<crate::tokenizer::Token>| t.and_then(|t| tok.token_text(t)).unwrap_or("").to_string();
    // Gemma files often come without a template; their format is known.
    let fallback = (model.chat_template.is_none() && model.hp.arch.starts_with("gemma")).then_some("gemma");
    ChatTemplate::resolve(
        model.chat_template.as_deref(),
        c.chat_template.as_deref().or(fallback),
        c.chat_template_file.as_deref(),
        &token_text(tok.bos()),
        &token_text(tok.eos()),
    )
}

/// On a terminal, the REPL (after the `-p` turn, if any); otherwise one
/// turn from `-p` / `-f` or the piped stdin.
fn converse(conv: &mut Conversation, first: Option<String>, limit: Option<usize>, color: Color) -> anyhow::Result<()> {
    if std::io::stdin().is_terminal() {
        let color = match color {
            Color::Auto => std::io::stdout().is_terminal(),
            Color::On => true,
            Color::Off => false,
        };
        let mut repl = Repl {
            conv,
            limit,
            pending_doc: None,
            color,
        };
        if let Some(p) = first {
            repl.turn(&p)?;
        }
        repl.run()
    } else {
        conv.regen = false;
        let turn = match first {
            Some(p) => p,
            None => read_stdin()?.trim_end().to_string(),
        };
        if !turn.is_empty() {
            answer_turn(conv, &turn, limit)?;
        }
        Ok(())
    }
}

/// Evaluates a user message and streams the answer to stdout.
fn answer_turn(conv: &mut Conversation, content: &str, limit: Option<usize>) -> anyhow::Result<Stop> {
    let mut progress = None;
    conv.user_turn(content, &mut |done, total| {
        progress.get_or_insert_with(|| Progress::new(total)).update(done)
    })?;
    if let Some(p) = progress {
        p.finish();
    }
    stream_answer(conv, limit)
}

fn stream_answer(conv: &mut Conversation, limit: Option<usize>) -> anyhow::Result<Stop> {
    let mut out = std::io::stdout().lock();
    let stop = conv
        .answer(limit, &interrupted, &mut |s| {
            out.write_all(s.as_bytes())?;
            Ok(out.flush()?)
        })?
        .stop;
    writeln!(out)?;
    out.flush()?;
    INTERRUPTED.store(false, Ordering::Relaxed);
    match stop {
        Stop::Interrupted => eprintln!("[interrupted]"),
        Stop::ContextFull => eprintln!("[context full: -c {}]", conv.engine.n_ctx()),
        Stop::EndOfTurn | Stop::Limit => {}
    }
    Ok(stop)
}

const HELP: &str = "\
commands:
  /help                 this list
  /exit                 quit (also Ctrl-D, or Ctrl-C twice at an empty prompt)
  /clear                start a new conversation
  /regen                answer the last message again
  /read FILE            add a file to your next message (long documents)
  /save FILE            save the conversation and memory
  /load FILE            load a saved conversation
  /stats                memory and speed
  /set NAME VALUE       sampling: temp, top-k, top-p, min-p, repeat-penalty, seed
input: end a line with \\ to continue it; \"\"\" on a line starts and ends a block.
Ctrl-C interrupts an answer; what was said stays in the memory.";

struct Repl<'a> {
    conv: &'a mut Conversation,
    limit: Option<usize>,
    /// A file read with /read, waiting for the next message.
    pending_doc: Option<String>,
    color: bool,
}

/// Colours the prompt (and nothing else).
#[derive(Completer, Helper, Hinter, Validator)]
struct Prompt {
    color: bool,
}

impl Highlighter for Prompt {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(&'s self, prompt: &'p str, _default: bool) -> Cow<'b, str> {
        if self.color {
            Cow::Owned(format!("\x1b[32m{prompt}\x1b[0m"))
        } else {
            Cow::Borrowed(prompt)
        }
    }
}

impl Repl<'_> {
    fn run(&mut self) -> anyhow::Result<()> {
        let mut rl: Editor<Prompt, DefaultHistory> = Editor::new()?;
        rl.set_helper(Some(Prompt { color: self.color }));
        let history = history_path();
        if let Some(h) = &history {
            let _ = rl.load_history(h);
        }
        eprintln!("infllm: chat: /help for commands, Ctrl-C interrupts an answer, Ctrl-D or /exit quits");
        let mut ctrl_c = false;
        loop {
            let input = match read_input(&mut rl) {
                Ok(s) => s,
                Err(ReadlineError::Interrupted) if !ctrl_c => {
                    ctrl_c = true;
                    eprintln!("(Ctrl-C again or Ctrl-D to quit)");
                    continue;
                }
                Err(ReadlineError::Interrupted | ReadlineError::Eof) => break,
                Err(e) => return Err(e.into()),
            };
            ctrl_c = false;
            let input = input.trim();
            if input.is_empty() {
                continue;
            }
            let _ = rl.add_history_entry(input);
            let result = if let Some(cmd) = input.strip_prefix('/') {
                match self.command(cmd) {
                    Ok(true) => break,
                    r => r.map(|_| ()),
                }
            } else {
                let content = match self.pending_doc.take() {
                    Some(doc) => format!("{doc}\n\n{input}"),
                    None => input.to_string(),
                };
                self.turn(&content).map(|_| ())
            };
            // A failed command or turn is reported; the conversation goes on.
            if let Err(e) = result {
                eprintln!("{}", error_line(&e));
            }
        }
        if let Some(h) = &history {
            if let Some(dir) = h.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = rl.save_history(h);
        }
        Ok(())
    }

    fn turn(&mut self, content: &str) -> anyhow::Result<Stop> {
        INTERRUPTED.store(false, Ordering::Relaxed);
        answer_turn(self.conv, content, self.limit)
    }

    /// Runs a `/command`; true means quit.
    fn command(&mut self, cmd: &str) -> anyhow::Result<bool> {
        let (name, arg) = cmd.split_once(char::is_whitespace).unwrap_or((cmd, ""));
        let arg = arg.trim();
        let file_arg = || -> anyhow::Result<&Path> {
            anyhow::ensure!(!arg.is_empty(), "/{name} needs a file name");
            Ok(Path::new(arg))
        };
        match name {
            "help" | "?" => println!("{HELP}"),
            "exit" | "quit" => return Ok(true),
            "clear" => {
                self.conv.clear();
                self.pending_doc = None;
                println!("(new conversation)");
            }
            "regen" => {
                self.conv.forget_answer()?;
                stream_answer(self.conv, self.limit)?;
            }
            "read" => {
                let path = file_arg()?;
                let doc = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                let n = self.conv.engine.tokenizer().encode(&doc, false, false).len();
                println!(
                    "(read {}: {} bytes, {n} tokens; it goes with your next message)",
                    path.display(),
                    doc.len()
                );
                self.pending_doc = Some(doc);
            }
            "save" => {
                let path = file_arg()?;
                self.conv.save(path)?;
                println!("(saved {} tokens to {})", self.conv.engine.n_past(), path.display());
            }
            "load" => {
                let path = file_arg()?;
                self.conv.load(path)?;
                println!(
                    "(loaded {}: {} tokens, {} messages)",
                    path.display(),
                    self.conv.engine.n_past(),
                    self.conv.messages().len()
                );
            }
            "stats" => println!("{}", self.stats()),
            "set" => {
                let (key, value) = arg.split_once(char::is_whitespace).context("usage: /set NAME VALUE")?;
                set_sampling(&mut self.conv.sampler, key, value.trim())?;
                println!("({key} = {})", value.trim());
            }
            _ => anyhow::bail!("unknown command /{name} (/help lists them)"),
        }
        Ok(false)
    }

    fn stats(&self) -> String {
        let s = self.conv.stats;
        let rate = |n: usize, d: std::time::Duration| {
            if d.is_zero() {
                0.0
            } else {
                n as f64 / d.as_secs_f64()
            }
        };
        format!(
            "{}\nlast turn: prompt {} tokens ({:.1} tokens/s), answer {} tokens ({:.1} tokens/s)",
            self.conv.engine.memory_report(),
            s.prompt_tokens,
            rate(s.prompt_tokens, s.prompt_time),
            s.gen_tokens,
            rate(s.gen_tokens, s.gen_time)
        )
    }
}

/// One message: a line, lines joined by a trailing `\`, or a `"""` block.
fn read_input(rl: &mut Editor<Prompt, DefaultHistory>) -> Result<String, ReadlineError> {
    let first = rl.readline("> ")?;
    if first.trim() == "\"\"\"" {
        let mut lines = Vec::new();
        loop {
            let line = rl.readline("")?;
            if line.trim() == "\"\"\"" {
                return Ok(lines.join("\n"));
            }
            lines.push(line);
        }
    }
    let mut text = first;
    while let Some(head) = text.strip_suffix('\\') {
        text = format!("{head}\n{}", rl.readline("")?);
    }
    Ok(text)
}

fn set_sampling(s: &mut Sampler, key: &str, value: &str) -> anyhow::Result<()> {
    let f = || {
        value
            .parse::<f32>()
            .with_context(|| format!("{key}: not a number: {value}"))
    };
    let p = &mut s.params;
    match key {
        "temp" => p.temp = f()?,
        "top-k" => p.top_k = value.parse().with_context(|| format!("top-k: not a count: {value}"))?,
        "top-p" => p.top_p = f()?,
        "min-p" => p.min_p = f()?,
        "repeat-penalty" => p.repeat_penalty = f()?,
        "seed" => s.reseed(value.parse().with_context(|| format!("seed: not a number: {value}"))?),
        _ => anyhow::bail!("unknown setting {key} (temp, top-k, top-p, min-p, repeat-penalty, seed)"),
    }
    Ok(())
}

/// `$XDG_DATA_HOME/infllm/history` (or under ~/.local/share).
fn history_path() -> Option<PathBuf> {
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(data.join("infllm").join("history"))
}
