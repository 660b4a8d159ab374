//! Conversation mode, like llama-cli's: a REPL on a terminal, one turn
//! from stdin otherwise. Answers stream to stdout; everything else (load
//! information, progress, notices) goes to stderr, so piped output is the
//! answer alone.

use std::borrow::Cow;
use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::history::DefaultHistory;
use rustyline::{Completer, Editor, Helper, Hinter, Validator};

use super::attn::describe;
use super::error_line;
use super::generate::GenerateArgs;
use super::progress::Progress;
use super::prompt::{PromptSource, Rules};
use super::signals::{self, Stopped};
use crate::chat::{ChatTemplate, Conversation, Stop};
use crate::sampling::Sampler;
use crate::session::SessionFile;

#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    /// Conversation mode (-cnv): chat with the model's template (default when
    /// stdin is a terminal and no prompt is given)
    #[arg(
        long = "conversation",
        overrides_with = "no_conversation",
        help_heading = "Conversation"
    )]
    pub conversation: bool,
    /// Never enter conversation mode (-no-cnv)
    #[arg(
        long = "no-conversation",
        overrides_with = "conversation",
        help_heading = "Conversation"
    )]
    pub no_conversation: bool,
    /// Interactive mode: conversation mode, or with -no-cnv (or --in-prefix /
    /// --in-suffix) one text that the model and you continue in turn
    #[arg(short = 'i', long = "interactive", help_heading = "Conversation")]
    pub interactive: bool,
    /// Interactive mode, waiting for your input right away (-if)
    #[arg(long = "interactive-first", help_heading = "Conversation")]
    pub interactive_first: bool,
    /// Interactive mode without a template: text put before each of your
    /// inputs (turns the chat template off, as in llama.cpp)
    #[arg(long = "in-prefix", value_name = "STRING", help_heading = "Conversation")]
    pub in_prefix: Option<String>,
    /// Interactive mode without a template: text put after each of your
    /// inputs (turns the chat template off, as in llama.cpp)
    #[arg(long = "in-suffix", value_name = "STRING", help_heading = "Conversation")]
    pub in_suffix: Option<String>,
    /// Interactive mode without a template: a BOS token before each input
    #[arg(long = "in-prefix-bos", help_heading = "Conversation")]
    pub in_prefix_bos: bool,
    /// One turn only: answer -p (or the first message), then exit
    #[arg(long = "single-turn", help_heading = "Conversation")]
    pub single_turn: bool,
    /// Accepted for llama.cpp's command lines: chat templates are always
    /// rendered as Jinja here
    #[arg(long = "jinja", help_heading = "Conversation")]
    pub jinja: bool,
    #[arg(
        long = "chat-template",
        value_name = "JINJA_TEMPLATE",
        help = crate::chat::template::help(),
        help_heading = "Conversation"
    )]
    pub chat_template: Option<String>,
    /// File holding a Jinja chat template
    #[arg(long = "chat-template-file", value_name = "FNAME", help_heading = "Conversation")]
    pub chat_template_file: Option<PathBuf>,
    /// System prompt (-sys; the last of -sys and -sysf counts)
    #[arg(
        long = "system-prompt",
        value_name = "PROMPT",
        overrides_with = "system_prompt_file",
        help_heading = "Conversation"
    )]
    pub system_prompt: Option<String>,
    /// File holding the system prompt (-sysf)
    #[arg(
        long = "system-prompt-file",
        value_name = "FNAME",
        overrides_with = "system_prompt",
        help_heading = "Conversation"
    )]
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
        !self.no_conversation && !self.affixes() && self.interaction_asked(has_prompt)
    }

    /// Whether this run is llama-completion's interactive mode without a
    /// template: `-i` / `-if` with `-no-cnv`, or interaction with
    /// `--in-prefix` / `--in-suffix` / `--in-prefix-bos`, which turn the
    /// template off.
    pub fn plain_interactive(&self, has_prompt: bool) -> bool {
        match self.no_conversation {
            true => self.interactive || self.interactive_first,
            false => self.affixes() && self.interaction_asked(has_prompt),
        }
    }

    fn affixes(&self) -> bool {
        self.in_prefix.is_some() || self.in_suffix.is_some() || self.in_prefix_bos
    }

    fn interaction_asked(&self, has_prompt: bool) -> bool {
        self.conversation
            || self.interactive
            || self.interactive_first
            || (!has_prompt && std::io::stdin().is_terminal())
    }
}

/// Stdout closed (a pipe's reader gone): the conversation ends, kept.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the answer: {0}")]
struct OutputClosed(std::io::Error);

/// The terminal cannot be read any more: the conversation ends, kept.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the next message: {0}")]
struct InputClosed(ReadlineError);

/// Whether `e` ended a conversation whose memory is whole (to be saved).
fn keeps_conversation(e: &anyhow::Error) -> bool {
    e.is::<Stopped>() || e.is::<OutputClosed>() || e.is::<InputClosed>()
}

pub fn run(a: &GenerateArgs) -> anyhow::Result<()> {
    let c = &a.chat;
    // Taken first: a session another process holds stops the run before any work.
    let session = c.session.as_deref().map(SessionFile::open).transpose()?;
    let first = PromptSource::from_flags(&a.prompt, &a.file, Some(a.prompt_rules()))?;
    let system = PromptSource::from_flags(&c.system_prompt, &c.system_prompt_file, Some(Rules { escape: false }))?;
    let (model, info) = a.run.load()?;
    let template = chat_template(&model, c)?;
    let params = a.run.engine_params(&model.hp)?;
    let attn_info = describe(&params.attn, &model.hp);
    let engine = a.run.engine_saving_to(model, params, session.as_ref())?;
    // Texts are read once the context says how long they may be, and
    // before any output: an error is then the only line.
    let (tok, n_ctx) = (engine.tokenizer(), engine.n_ctx());
    let read = |s: PromptSource| s.read_within(tok, n_ctx).map(|(text, _)| text);
    let system = system.map(read).transpose()?;
    let first = first.map(read).transpose()?;
    let sampler = Sampler::new(a.sampling(n_ctx)?, engine.tokenizer())?;
    let mut conv = Conversation::new(engine, sampler, template, system.clone());
    conv.reverse_prompts = a.reverse_prompts()?;
    conv.show_special = a.tokens.special;
    conv.on_turn_tokens = a.tokens.verbose_prompt.then_some(super::token_display::log_tokens as _);
    // A session that cannot be restored stops the run before any output.
    let restored = match session {
        Some(s) => {
            let restored = conv.use_session(s)?;
            let path = c.session.as_deref().filter(|_| restored);
            if let Some(path) = path {
                same_system_prompt(&conv, system.as_deref())
                    .with_context(|| format!("session file {}", path.display()))?;
            }
            path
        }
        None => None,
    };
    info.log();
    crate::log_info!("infllm: {attn_info}");
    crate::log_info!(
        "infllm: chat template {}, threads {}, seed {}",
        conv.template().name(),
        super::generate::threads_used(a.run.threads, params.n_threads),
        conv.sampler.params.seed
    );
    if let Some(path) = restored {
        crate::log_info!(
            "infllm: session {} restored: {} tokens, {} messages",
            path.display(),
            conv.engine.n_past(),
            conv.messages().len()
        );
    }
    // A piped turn is read once the run has said what it restored (a caller
    // may wait for that line before it writes).
    let first = match first {
        None if !std::io::stdin().is_terminal() => {
            let pipe = PromptSource::Pipe(None, None).read_within(conv.engine.tokenizer(), n_ctx)?;
            Some(pipe.0.trim_end().to_string())
        }
        first => first,
    };
    signals::install()?;
    signals::set_unsaved(c.session.is_some());
    let result = converse(&mut conv, first, a.predict_limit(), c);
    // Stopped by a signal or a closed stdout, the memory and the
    // conversation still agree: keep them.
    let keep = result.as_ref().err().is_none_or(keeps_conversation);
    if keep {
        let t = conv.totals;
        super::generate::print_timings(t.prompt_tokens, t.prompt_time, t.gen_tokens, t.gen_time);
    }
    if let (true, Some(path)) = (keep, &c.session) {
        let start = std::time::Instant::now();
        conv.save(path)?;
        let mib = std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64);
        crate::log_info!(
            "infllm: session saved to {} ({mib:.1} MiB in {:.2} s)",
            path.display(),
            start.elapsed().as_secs_f64()
        );
    }
    signals::set_unsaved(false);
    result?;
    // A signal that came during the save.
    match signals::quit_code() {
        Some(code) => Err(Stopped { code }.into()),
        None => Ok(()),
    }
}

/// A restored conversation goes on with its own system prompt: `-sys` or
/// `-sysf`, when given, must be that one (else it would silently not apply).
fn same_system_prompt(conv: &Conversation, asked: Option<&str>) -> anyhow::Result<()> {
    let Some(asked) = asked else { return Ok(()) };
    let saved = conv
        .messages()
        .first()
        .filter(|m| m.role == "system")
        .map(|m| m.content.as_str());
    anyhow::ensure!(
        saved == Some(asked),
        "its conversation has {}: drop -sys / -sysf to go on with it, or start another session",
        match saved {
            Some(s) => format!(
                "another system prompt ({})",
                crate::quote::quoted(&s.chars().take(60).collect::<String>())
            ),
            None => "no system prompt".into(),
        }
    );
    Ok(())
}

/// The model's template, or the one the flags name.
fn chat_template(model: &crate::model::Model, c: &ChatArgs) -> anyhow::Result<ChatTemplate> {
    template_for(model, c.chat_template.as_deref(), c.chat_template_file.as_deref())
}

/// The template `--chat-template NAME` / `--chat-template-file F` name,
/// else the model's own.
pub fn template_for(
    model: &crate::model::Model,
    name: Option<&str>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<ChatTemplate> {
    let tok = &model.tokenizer;
    let token_text = |t: Option<crate::tokenizer::Token>| t.and_then(|t| tok.token_text(t)).unwrap_or("").to_string();
    // Gemma files often come without a template; their format is known.
    let fallback = (model.chat_template.is_none() && model.hp.arch.starts_with("gemma")).then_some("gemma");
    ChatTemplate::resolve(
        model.chat_template.as_deref(),
        name.or(fallback),
        file,
        &token_text(tok.bos()),
        &token_text(tok.eos()),
    )
}

/// On a terminal, the REPL (after the `-p` turn, if any); otherwise the
/// one turn read from `-p` / `-f` or the piped stdin.
fn converse(conv: &mut Conversation, first: Option<String>, limit: Option<usize>, c: &ChatArgs) -> anyhow::Result<()> {
    if std::io::stdin().is_terminal() {
        let color = match c.color {
            Color::Auto => std::io::stdout().is_terminal(),
            Color::On => true,
            Color::Off => false,
        };
        let mut repl = Repl {
            conv,
            limit,
            pending_doc: None,
            color,
            single_turn: c.single_turn,
        };
        match first {
            Some(p) if c.single_turn => repl.turn(&p).map(|_| ()),
            Some(p) => {
                repl.turn(&p)?;
                repl.run()
            }
            None => repl.run(),
        }
    } else {
        conv.regen = false;
        let turn = first.unwrap_or_default();
        if !turn.is_empty() && answer_turn(conv, &turn, limit)? == Stop::Interrupted {
            return Err(Stopped::now().into());
        }
        Ok(())
    }
}

/// Evaluates a user message and streams the answer to stdout; a message
/// interrupted while read is not answered.
fn answer_turn(conv: &mut Conversation, content: &str, limit: Option<usize>) -> anyhow::Result<Stop> {
    let mut progress = None;
    let read = conv.read_user_turn(content, &signals::interrupted, &mut |done, total| {
        progress.get_or_insert_with(|| Progress::new(total)).update(done)
    })?;
    if let Some(mut p) = progress {
        p.clear();
    }
    if !read.complete {
        signals::clear_interrupt();
        eprintln!("[interrupted: {} tokens of the message read]", read.tokens);
        return Ok(Stop::Interrupted);
    }
    stream_answer(conv, limit)
}

/// Streams an answer to stdout. If stdout closes, the answer stops there
/// (what was generated stays in the memory) and `OutputClosed` ends the
/// conversation.
fn stream_answer(conv: &mut Conversation, limit: Option<usize>) -> anyhow::Result<Stop> {
    let mut out = std::io::stdout().lock();
    let closed = Cell::new(false);
    let mut write_error = None;
    let stop = conv
        .answer(limit, &|| closed.get() || signals::interrupted(), &mut |s| {
            if !closed.get() {
                if let Err(e) = out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
                    closed.set(true);
                    write_error = Some(e);
                }
            }
            Ok(())
        })?
        .stop;
    let end_of_line = writeln!(out).and_then(|_| out.flush());
    if let Some(e) = write_error.or(end_of_line.err()) {
        return Err(OutputClosed(e).into());
    }
    signals::clear_interrupt();
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
    /// `-st`: the first answered message ends the chat.
    single_turn: bool,
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
        let terminal = super::terminal::Saved::now();
        let reader = LineReader::start(rl);
        let mut ctrl_c = false;
        loop {
            if signals::quit_code().is_some() {
                break;
            }
            let input = match reader.read() {
                Input::Read(Ok(s)) => s,
                Input::Read(Err(ReadlineError::Interrupted)) if !ctrl_c => {
                    ctrl_c = true;
                    eprintln!("(Ctrl-C again or Ctrl-D to quit)");
                    continue;
                }
                Input::Read(Err(ReadlineError::Interrupted | ReadlineError::Eof)) => break,
                // A hangup (SIGHUP) closes the terminal too: the signal's code.
                Input::Read(Err(_)) if signals::quit_code().is_some() => break,
                Input::Read(Err(e)) => return Err(InputClosed(e).into()),
                Input::Quit => break,
            };
            ctrl_c = false;
            let input = input.trim();
            if input.is_empty() {
                continue;
            }
            reader.add_history(input);
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
            let answered = !input.starts_with('/') && result.is_ok();
            match result {
                Err(e) if keeps_conversation(&e) => return Err(e),
                // A failed command or turn is reported; the conversation goes on.
                Err(e) => eprintln!("{}", error_line(&e)),
                Ok(()) => {}
            }
            if answered && self.single_turn {
                break;
            }
        }
        // Quitting on a signal, the reader may still be waiting for a line.
        terminal.restore();
        if let (Some(mut rl), Some(h)) = (reader.finish(), &history) {
            if let Some(dir) = h.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = rl.save_history(h);
        }
        Ok(())
    }

    fn turn(&mut self, content: &str) -> anyhow::Result<Stop> {
        signals::clear_interrupt();
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
                let room = self.conv.engine.n_ctx().saturating_sub(self.conv.engine.n_past());
                let (doc, n) = PromptSource::file(path, None)?.read_within(self.conv.engine.tokenizer(), room)?;
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

/// What the REPL waits for: a message, or a signal asking to quit.
enum Input {
    Read(Result<String, ReadlineError>),
    Quit,
}

enum Request {
    Message,
    History(String),
}

/// rustyline on a thread of its own, so that a signal can end the wait
/// for a message (the main thread then saves the session and exits).
struct LineReader {
    /// A message asked for, or a line for the history; closed to end the thread.
    ask: mpsc::Sender<Request>,
    inputs: mpsc::Receiver<Input>,
    thread: std::thread::JoinHandle<Editor<Prompt, DefaultHistory>>,
    /// Whether the thread may be waiting for a line now.
    reading: Cell<bool>,
}

impl LineReader {
    fn start(mut rl: Editor<Prompt, DefaultHistory>) -> Self {
        let (ask, asked) = mpsc::channel();
        let (send, inputs) = mpsc::channel();
        let wake = send.clone();
        signals::on_quit(Some(Box::new(move || {
            let _ = wake.send(Input::Quit);
        })));
        let thread = std::thread::spawn(move || {
            for request in asked {
                match request {
                    Request::Message => {
                        if send.send(Input::Read(read_input(&mut rl))).is_err() {
                            break;
                        }
                    }
                    Request::History(line) => {
                        let _ = rl.add_history_entry(line);
                    }
                }
            }
            rl
        });
        Self {
            ask,
            inputs,
            thread,
            reading: Cell::new(false),
        }
    }

    /// The next message, or `Quit` when a signal asks first.
    fn read(&self) -> Input {
        if self.ask.send(Request::Message).is_err() {
            return Input::Quit;
        }
        self.reading.set(true);
        let input = self.inputs.recv().unwrap_or(Input::Quit);
        self.reading.set(matches!(input, Input::Quit));
        input
    }

    fn add_history(&self, line: &str) {
        let _ = self.ask.send(Request::History(line.to_string()));
    }

    /// The editor back (for its history); None while it may still wait for
    /// a line (it ends with the process).
    fn finish(self) -> Option<Editor<Prompt, DefaultHistory>> {
        signals::on_quit(None);
        if self.reading.get() {
            return None;
        }
        drop(self.ask);
        self.thread.join().ok()
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
    let old = s.params.clone();
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
    // The flags' ranges; a refused value leaves the setting as it was.
    s.params.check().inspect_err(|_| s.params = old)
}

/// `$XDG_DATA_HOME/infllm/history` (or under ~/.local/share).
fn history_path() -> Option<PathBuf> {
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(data.join("infllm").join("history"))
}
