//! A conversation over one engine. Each turn renders the whole conversation
//! with the chat template but evaluates only the text the memory does not
//! hold yet: earlier turns stay in the attention state, never re-processed.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use serde::{Deserialize, Serialize};

use super::template::{ChatTemplate, Message};
use crate::attention::Snapshot;
use crate::engine::Engine;
use crate::quote::quoted;
use crate::sampling::{Sampler, SamplerState};
use crate::session::SessionFile;
use crate::tokenizer::{Token, Tokenizer};

/// Why an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The model ended its turn.
    EndOfTurn,
    /// `-n` tokens were generated.
    Limit,
    /// The user interrupted (Ctrl-C).
    Interrupted,
    /// The context (`-c`) is full.
    ContextFull,
}

/// Whether `text` ends with one of `prompts`, as llama.cpp's `-r` sees it:
/// the reverse prompt starts within its length plus two bytes of the end
/// (a token may carry a little more after it).
pub fn reverse_prompt_at_end(text: &str, prompts: &[String]) -> bool {
    prompts.iter().filter(|p| !p.is_empty()).any(|p| {
        let from = text.len().saturating_sub(p.len() + 2);
        text.as_bytes()[from..].windows(p.len()).any(|w| w == p.as_bytes())
    })
}

/// A generated answer: its text, its tokens, why it ended.
#[derive(Debug, Clone)]
pub struct Answer {
    pub text: String,
    pub tokens: Vec<Token>,
    pub stop: Stop,
}

/// How much of a user turn was read into the memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnRead {
    /// Tokens evaluated.
    pub tokens: usize,
    /// False when interrupted before its end.
    pub complete: bool,
}

/// The start of `text` that `tokens`, its first tokens, stand for (the
/// whole text when their pieces do not spell a start of it).
pub fn read_prefix<'t>(tok: &Tokenizer, text: &'t str, tokens: &[Token], bos_added: bool) -> &'t str {
    let tokens = &tokens[usize::from(bos_added)..];
    let spelled: Vec<u8> = tokens.iter().flat_map(|&t| tok.token_to_piece(t, true)).collect();
    // SentencePiece's space prefix is not in the text.
    let spelled = match text.as_bytes().starts_with(&spelled) {
        true => &spelled[..],
        false => spelled.strip_prefix(b" ").unwrap_or(&spelled),
    };
    match text.as_bytes().starts_with(spelled) && text.is_char_boundary(spelled.len()) {
        true => &text[..spelled.len()],
        false => text,
    }
}

/// The part of a message's `content` within the first `read` bytes of the
/// rendered `text` (all of it when the template changed it beyond finding).
fn message_prefix<'c>(text: &str, content: &'c str, read: usize) -> &'c str {
    match text.find(content) {
        Some(at) => &content[..read.saturating_sub(at).min(content.len())],
        None => content,
    }
}

/// Timings of a turn, or of all turns.
#[derive(Debug, Clone, Copy, Default)]
pub struct TurnStats {
    pub prompt_tokens: usize,
    pub prompt_time: Duration,
    pub gen_tokens: usize,
    pub gen_time: Duration,
}

impl TurnStats {
    fn add(&mut self, o: &TurnStats) {
        self.prompt_tokens += o.prompt_tokens;
        self.prompt_time += o.prompt_time;
        self.gen_tokens += o.gen_tokens;
        self.gen_time += o.gen_time;
    }
}

/// The state just before the last answer, for `regenerate`.
struct BeforeAnswer {
    snapshot: Snapshot,
    logits: Vec<f32>,
    fed_len: usize,
    history: Vec<Token>,
}

/// What a session file keeps of a conversation besides the engine state.
/// Not the last logits: a restored conversation goes on with a user turn,
/// which evaluates new tokens first.
#[derive(Serialize, Deserialize)]
pub struct Record {
    messages: Vec<Message>,
    fed: String,
    sampler: SamplerState,
}

/// The roles a conversation writes: a system prompt first, if any, then
/// user and assistant turns.
const ROLES: [&str; 3] = ["system", "user", "assistant"];

impl Record {
    /// Reads a saved record, checked as flags and turns are: its sampler
    /// (returned, ready), its roles, its tokens (of `n_vocab`), and that it
    /// holds a turn exactly when the memory holds `n_past` tokens.
    fn read(saved: &serde_json::Value, n_past: usize, n_vocab: usize) -> anyhow::Result<Self> {
        let r = Record::deserialize(saved).map_err(|e| anyhow::anyhow!("corrupt: {}", quoted(&e.to_string())))?;
        r.sampler.check(n_vocab)?;
        for (i, m) in r.messages.iter().enumerate() {
            ensure!(
                ROLES.contains(&m.role.as_str()) && (m.role != "system" || i == 0),
                "message {i}: role {} is not one this conversation writes (system first, then user and assistant)",
                quoted(&m.role)
            );
        }
        let has_turn = r.messages.iter().any(|m| m.role == "user");
        ensure!(
            has_turn == (n_past > 0) && r.fed.is_empty() == (n_past == 0),
            "{} messages ({} user turns, {} bytes of text) do not match a memory of {n_past} tokens",
            r.messages.len(),
            r.messages.iter().filter(|m| m.role == "user").count(),
            r.fed.len()
        );
        Ok(r)
    }
}

pub struct Conversation {
    pub engine: Engine,
    pub sampler: Sampler,
    template: ChatTemplate,
    /// The system prompt a cleared conversation starts with.
    system: Option<String>,
    messages: Vec<Message>,
    /// The text the attention state holds: rendered turns and answers.
    fed: String,
    /// Logits after the last evaluated token.
    logits: Vec<f32>,
    before_answer: Option<BeforeAnswer>,
    /// Keep the state before each answer for `forget_answer` (a copy of
    /// the window buffers: up to their size again in memory).
    pub regen: bool,
    /// Texts that end an answer where they appear (`-r`).
    pub reverse_prompts: Vec<String>,
    /// Special tokens are shown in answers (`-sp`): their text, and the
    /// end-of-turn token that ends one.
    pub show_special: bool,
    /// Called with each turn's text and tokens before they are read
    /// (`--verbose-prompt`).
    pub on_turn_tokens: Option<fn(&str, &[Token], &Tokenizer)>,
    /// The last turn's timings (none after `clear`).
    pub stats: TurnStats,
    /// Every turn's, since the start.
    pub totals: TurnStats,
    /// The session this conversation is saved to (`use_session`): locked
    /// for as long as the conversation lives.
    session: Option<SessionFile>,
}

impl Conversation {
    pub fn new(engine: Engine, sampler: Sampler, template: ChatTemplate, system: Option<String>) -> Self {
        let mut c = Self {
            engine,
            sampler,
            template,
            system,
            messages: Vec::new(),
            fed: String::new(),
            logits: Vec::new(),
            before_answer: None,
            regen: true,
            stats: TurnStats::default(),
            totals: TurnStats::default(),
            reverse_prompts: Vec::new(),
            show_special: false,
            on_turn_tokens: None,
            session: None,
        };
        c.clear();
        c
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Starts over: an empty memory and only the system prompt.
    pub fn clear(&mut self) {
        self.engine.clear();
        self.messages = self.system.iter().map(|s| Message::new("system", s)).collect();
        self.fed.clear();
        self.logits.clear();
        self.before_answer = None;
        self.stats = TurnStats::default();
    }

    /// The tokens a user message adds to the memory: the newly rendered
    /// text (end of the previous turn, the message, the assistant header).
    pub fn pending_tokens(&self, content: &str) -> anyhow::Result<Vec<Token>> {
        Ok(self.render_turn(content)?.2)
    }

    /// The conversation with `content` added, the new text and its tokens.
    fn render_turn(&self, content: &str) -> anyhow::Result<(Vec<Message>, String, Vec<Token>)> {
        let mut messages = self.messages.clone();
        messages.push(Message::new("user", content));
        let text = self.new_text(&messages)?;
        let tok = &self.engine.tokenizer();
        // The first piece gets the BOS token, unless the template wrote it.
        let bos_in_text = tok
            .bos()
            .and_then(|b| tok.token_text(b))
            .is_some_and(|b| text.starts_with(b));
        let tokens = tok.encode(&text, self.fed.is_empty() && !bos_in_text, true);
        Ok((messages, text, tokens))
    }

    /// The rendered conversation past what the memory holds. Templates that
    /// rewrite earlier turns (trimming an answer, say) break the prefix; then
    /// the new text is what follows the earlier messages' rendering, as
    /// llama.cpp does.
    fn new_text(&self, messages: &[Message]) -> anyhow::Result<String> {
        let full = self.template.render(messages, true)?;
        if let Some(rest) = full.strip_prefix(&self.fed) {
            return Ok(rest.to_string());
        }
        let before = self.template.render(&messages[..messages.len() - 1], false)?;
        Ok(full
            .get(before.len()..)
            .filter(|_| full.starts_with(&before))
            .unwrap_or(&full)
            .to_string())
    }

    /// Adds a user message and evaluates its tokens (`progress(done,
    /// total)` after each step); returns how many tokens were evaluated.
    pub fn user_turn(&mut self, content: &str, progress: &mut dyn FnMut(usize, usize)) -> anyhow::Result<usize> {
        Ok(self.read_user_turn(content, &|| false, progress)?.tokens)
    }

    /// As `user_turn`, polling `interrupted` between steps. An interrupted
    /// turn keeps what was read: the memory holds it, and the message is
    /// cut to it; there is then nothing to answer.
    pub fn read_user_turn(
        &mut self,
        content: &str,
        interrupted: &dyn Fn() -> bool,
        progress: &mut dyn FnMut(usize, usize),
    ) -> anyhow::Result<TurnRead> {
        let (mut messages, text, tokens) = self.render_turn(content)?;
        let n_ctx = self.engine.n_ctx();
        anyhow::ensure!(
            self.engine.n_past() + tokens.len() < n_ctx,
            "the conversation does not fit the context: {} tokens held + {} new > {n_ctx} (-c)",
            self.engine.n_past(),
            tokens.len()
        );
        let start = Instant::now();
        let tok = self.engine.tokenizer();
        if let Some(show) = self.on_turn_tokens {
            show(&text, &tokens, tok);
        }
        let bos_added = self.fed.is_empty()
            && tokens
                .first()
                .is_some_and(|&t| Some(t) == tok.bos() && !text.as_bytes().starts_with(&tok.token_to_piece(t, true)));
        // Whole steps, then the rest with the logits: the steps of one `eval`.
        let step = self.engine.step_tokens();
        let mut done = 0;
        // The start, so that a progress rate counts the first step's time.
        progress(0, tokens.len());
        while tokens.len() - done > step && !interrupted() {
            self.engine.feed(&tokens[done..done + step], &mut |_, _| {})?;
            done += step;
            progress(done, tokens.len());
        }
        let complete = !interrupted();
        if complete {
            self.logits = self
                .engine
                .eval(&tokens[done..], false, &mut |n, total| progress(done + n, done + total))?;
            done = tokens.len();
        } else if done == 0 {
            return Ok(TurnRead { tokens: 0, complete });
        } else {
            self.logits.clear();
            let read = read_prefix(self.engine.tokenizer(), &text, &tokens[..done], bos_added);
            let user = messages.last_mut().expect("the user message");
            user.content = message_prefix(&text, &user.content, read.len()).to_string();
            self.fed.push_str(read);
        }
        if complete {
            self.fed.push_str(&text);
        }
        self.messages = messages;
        tokens[..done].iter().for_each(|&t| self.sampler.accept(t));
        self.before_answer = None;
        self.stats = TurnStats {
            prompt_tokens: done,
            prompt_time: start.elapsed(),
            ..Default::default()
        };
        self.totals.add(&self.stats);
        Ok(TurnRead { tokens: done, complete })
    }

    /// Generates the assistant's answer (at most `limit` tokens), passing
    /// each piece of text to `on_text` as it comes; `interrupted` is polled
    /// between tokens. What was generated stays in the memory however the
    /// answer ends.
    pub fn answer(
        &mut self,
        limit: Option<usize>,
        interrupted: &dyn Fn() -> bool,
        on_text: &mut dyn FnMut(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<Answer> {
        anyhow::ensure!(!self.logits.is_empty(), "nothing to answer: no user message yet");
        self.before_answer = self.regen.then(|| BeforeAnswer {
            snapshot: self.engine.snapshot(),
            logits: self.logits.clone(),
            fed_len: self.fed.len(),
            history: self.sampler.history().to_vec(),
        });
        let start = Instant::now();
        let mut bytes = Vec::new();
        let mut utf8 = crate::tokenizer::Utf8Stream::new();
        let mut tokens = Vec::new();
        let mut shown = String::new();
        let stop = loop {
            if reverse_prompt_at_end(&shown, &self.reverse_prompts) {
                break Stop::EndOfTurn;
            }
            if interrupted() {
                break Stop::Interrupted;
            }
            if limit.is_some_and(|l| tokens.len() >= l) {
                break Stop::Limit;
            }
            let t = self.sampler.sample(&self.logits);
            let tok = &self.engine.tokenizer();
            if tok.is_eog(t) {
                if self.show_special {
                    on_text(&utf8.push(&tok.token_to_piece(t, true)))?;
                }
                // Not evaluated now: the template's end of turn comes with the next turn.
                break Stop::EndOfTurn;
            }
            if self.engine.n_past() + 1 >= self.engine.n_ctx() {
                break Stop::ContextFull;
            }
            let piece = tok.token_to_piece(t, false);
            bytes.extend_from_slice(&piece);
            let text = match self.show_special {
                true => utf8.push(&tok.token_to_piece(t, true)),
                false => utf8.push(&piece),
            };
            on_text(&text)?;
            shown.push_str(&text);
            self.logits = self.engine.eval(&[t], false, &mut |_, _| {})?;
            self.sampler.accept(t);
            tokens.push(t);
        };
        on_text(&utf8.finish())?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        self.fed.push_str(&text);
        self.messages.push(Message::new("assistant", &text));
        let gen = TurnStats {
            gen_tokens: tokens.len(),
            gen_time: start.elapsed(),
            ..Default::default()
        };
        self.stats.gen_tokens = gen.gen_tokens;
        self.stats.gen_time = gen.gen_time;
        self.totals.add(&gen);
        Ok(Answer { text, tokens, stop })
    }

    /// Drops the last answer from the memory and the conversation, ready
    /// to `answer` again (the sampler's random stream goes on).
    pub fn forget_answer(&mut self) -> anyhow::Result<()> {
        let b = self.before_answer.take().context("no answer to regenerate")?;
        self.engine.rollback(&b.snapshot)?;
        self.logits = b.logits;
        self.fed.truncate(b.fed_len);
        self.messages.pop();
        // The random stream goes on, so a new answer can differ.
        self.sampler.set_history(&b.history);
        Ok(())
    }

    /// The conversation and sampler, for a session file.
    pub fn record(&self) -> Record {
        Record {
            messages: self.messages.clone(),
            fed: self.fed.clone(),
            sampler: self.sampler.state(),
        }
    }

    /// Takes `session` (see `SessionFile::open`) for this conversation:
    /// restored from it if it exists, held (locked) until the conversation
    /// ends, saved to by `save` with its path. Returns whether it was restored.
    pub fn use_session(&mut self, session: SessionFile) -> anyhow::Result<bool> {
        let restored = session.exists();
        if restored {
            self.load_from(&session)?;
        }
        self.session = Some(session);
        Ok(restored)
    }

    /// Saves the whole state to `path` (atomically), under its lock: the
    /// held session's, or taken for this save.
    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let taken;
        let session = match &self.session {
            Some(s) if s.holds(path) => s,
            _ => {
                taken = SessionFile::open(path)?;
                &taken
            }
        };
        crate::session::save(session, &self.engine, serde_json::to_value(self.record())?)
    }

    /// Loads a session saved by `save`; the file is checked before anything
    /// changes here.
    pub fn load(&mut self, path: &std::path::Path) -> anyhow::Result<()> {
        match self.session.take_if(|s| s.holds(path)) {
            Some(held) => {
                let result = self.load_from(&held);
                self.session = Some(held);
                result
            }
            None => {
                // Checked first: a mistyped name leaves no lock file behind.
                anyhow::ensure!(path.exists(), "session file {}: no such file", path.display());
                self.load_from(&SessionFile::open(path)?)
            }
        }
    }

    fn load_from(&mut self, session: &SessionFile) -> anyhow::Result<()> {
        let n_vocab = self.engine.tokenizer().n_vocab();
        let held = self.engine.n_past();
        let loaded = crate::session::load(session, &mut self.engine, |saved, n_past| {
            Record::read(saved, n_past, n_vocab).context("conversation record")
        });
        let record = match loaded {
            Ok(r) => r,
            Err(e) => {
                // A file changed while it was read clears the memory: the
                // conversation goes with it.
                if self.engine.n_past() != held {
                    self.clear();
                }
                return Err(e);
            }
        };
        self.sampler = Sampler::from_state(&record.sampler, self.engine.tokenizer())?;
        self.messages = record.messages;
        self.fed = record.fed;
        self.logits.clear();
        self.before_answer = None;
        Ok(())
    }
}
