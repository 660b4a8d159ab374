//! One request being answered: its prompt read a chunk per step, then its
//! answer a token per step, each piece of text sent as it comes.

use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::api::{ApiError, Generation};
use super::memory::{Before, Held};
use crate::chat::read_prefix;
use crate::engine::Engine;
use crate::sampling::Sampler;
use crate::tokenizer::{Token, Utf8Stream};

/// What the compute thread tells a request's handler.
#[derive(Debug)]
pub enum Event {
    /// The request has a slot: its prompt's tokens, of which `cached` were
    /// already in the memory.
    Started {
        prompt_tokens: usize,
        cached: usize,
    },
    Text(String),
    Done(Finish),
    Failed(ApiError),
}

/// How an answer ended, with its counts and times.
#[derive(Debug, Clone)]
pub struct Finish {
    /// "stop" (end of turn or a stop string), "length", or "cancelled"
    /// (the client went away; never sent).
    pub reason: &'static str,
    pub prompt_tokens: usize,
    pub cached: usize,
    pub completion_tokens: usize,
    pub prompt_time: Duration,
    pub predict_time: Duration,
}

/// A request for generation, as the compute thread receives it.
pub struct Job {
    pub gen: Generation,
    pub events: UnboundedSender<Event>,
}

/// Whether a step finished the request.
pub enum Stepped {
    Going,
    Finished(Finish),
    /// The client went away: the memory keeps what was read and written.
    Cancelled(Finish),
}

/// A request in a slot.
pub struct Active {
    pub job: Job,
    pub slot: usize,
    pub held: u64,
    sampler: Sampler,
    bos_added: bool,
    /// The new text and its tokens, `read` of them evaluated so far.
    text: String,
    tokens: Vec<Token>,
    read: usize,
    answering: bool,
    logits: Vec<f32>,
    /// Generated tokens (all evaluated), their bytes, their text so far,
    /// and how much of it was sent (text that may start a stop string waits).
    generated: Vec<Token>,
    bytes: Vec<u8>,
    utf8: Utf8Stream,
    out: String,
    sent: usize,
    prompt_tokens: usize,
    cached: usize,
    start: Instant,
    prompt_time: Duration,
}

impl Active {
    /// A request whose slot holds `held` (`logits`: after its last token),
    /// with `text` and its `tokens` still to read.
    /// `bos_added`: the tokens start with a BOS the text does not spell.
    pub fn new(
        job: Job,
        sampler: Sampler,
        slot: usize,
        held: (u64, &Held),
        text: String,
        tokens: Vec<Token>,
        bos_added: bool,
    ) -> Self {
        let (id, h) = held;
        Self {
            sampler,
            bos_added,
            slot,
            held: id,
            prompt_tokens: h.tokens.len() + tokens.len(),
            cached: h.tokens.len(),
            text,
            tokens,
            read: 0,
            answering: false,
            logits: h.logits.clone(),
            generated: Vec::new(),
            bytes: Vec::new(),
            utf8: Utf8Stream::new(),
            out: String::new(),
            sent: 0,
            start: Instant::now(),
            prompt_time: Duration::ZERO,
            job,
        }
    }

    pub fn started(&self) -> Event {
        Event::Started {
            prompt_tokens: self.prompt_tokens,
            cached: self.cached,
        }
    }

    /// One step: a prompt chunk or one token.
    pub fn step(&mut self, engine: &mut Engine, h: &mut Held) -> anyhow::Result<Stepped> {
        if self.job.events.is_closed() {
            self.keep_read(engine, h);
            return Ok(Stepped::Cancelled(self.counts("cancelled")));
        }
        if !self.answering {
            self.read_chunk(engine, h)?;
            return Ok(Stepped::Going);
        }
        self.answer_token(engine, h)
    }

    fn read_chunk(&mut self, engine: &mut Engine, h: &mut Held) -> anyhow::Result<()> {
        let step = engine.step_tokens();
        let rest = &self.tokens[self.read..];
        if rest.len() > step {
            engine.feed(&rest[..step], &mut |_, _| {})?;
            self.read += step;
            return Ok(());
        }
        if !rest.is_empty() {
            self.logits = engine.eval(rest, false, &mut |_, _| {})?;
            self.read = self.tokens.len();
        }
        h.text.push_str(&std::mem::take(&mut self.text));
        h.tokens.append(&mut self.tokens);
        self.read = 0;
        h.before = Some(Before {
            snapshot: engine.snapshot(),
            text_len: h.text.len(),
            n_tokens: h.tokens.len(),
            logits: self.logits.clone(),
        });
        self.sampler.set_history(&h.tokens);
        self.answering = true;
        self.prompt_time = self.start.elapsed();
        Ok(())
    }

    fn answer_token(&mut self, engine: &mut Engine, h: &mut Held) -> anyhow::Result<Stepped> {
        if self.job.gen.max_tokens.is_some_and(|l| self.generated.len() >= l) {
            return Ok(self.finish("length", h, true));
        }
        let t = self.sampler.sample(&self.logits);
        let tok = engine.tokenizer();
        if tok.is_eog(t) {
            // Not evaluated: the template's end of turn comes with the next turn.
            return Ok(self.finish("stop", h, true));
        }
        if engine.n_past() + 1 >= engine.n_ctx() {
            return Ok(self.finish("length", h, true));
        }
        let piece = tok.token_to_piece(t, false);
        self.bytes.extend_from_slice(&piece);
        self.out.push_str(&self.utf8.push(&piece));
        self.logits = engine.eval(&[t], false, &mut |_, _| {})?;
        self.sampler.accept(t);
        self.generated.push(t);
        h.tokens.push(t);
        if let Some(at) = find_stop(&self.out, &self.job.gen.stop, self.sent) {
            self.send_text(at);
            return Ok(self.finish("stop", h, false));
        }
        let safe = self.out.len() - held_back(&self.out, &self.job.gen.stop);
        if !self.send_text(safe) {
            self.keep_read(engine, h);
            return Ok(Stepped::Cancelled(self.counts("cancelled")));
        }
        Ok(Stepped::Going)
    }

    /// Sends the text up to byte `end`; false when the client is gone.
    fn send_text(&mut self, end: usize) -> bool {
        if end <= self.sent {
            return true;
        }
        let piece = self.out[self.sent..end].to_string();
        self.sent = end;
        self.job.events.send(Event::Text(piece)).is_ok()
    }

    /// Ends the answer: the memory holds its text; sends what is left
    /// (`flush`: not when a stop string ended it).
    fn finish(&mut self, reason: &'static str, h: &mut Held, flush: bool) -> Stepped {
        if flush {
            self.out.push_str(&self.utf8.finish());
            self.send_text(self.out.len());
        }
        self.keep_answer(h);
        // The caller counts it, then sends `Done`: a client that reads the
        // metrics after its answer finds it counted.
        Stepped::Finished(self.counts(reason))
    }

    /// The counts and times so far (a prompt cut short counts what was read).
    pub fn counts(&self, reason: &'static str) -> Finish {
        let (cached, read) = match self.answering {
            true => (self.cached, self.prompt_tokens - self.cached),
            false => (self.cached, self.read),
        };
        let prompt_time = match self.answering {
            true => self.prompt_time,
            false => self.start.elapsed(),
        };
        Finish {
            reason,
            prompt_tokens: cached + read,
            cached,
            completion_tokens: self.generated.len(),
            prompt_time,
            predict_time: self.start.elapsed() - prompt_time,
        }
    }

    fn keep_answer(&mut self, h: &mut Held) {
        h.text.push_str(&String::from_utf8_lossy(&self.bytes));
        h.logits = std::mem::take(&mut self.logits);
    }

    /// What a stopped request leaves in the memory: the answer so far, or
    /// the part of the prompt read (when its tokens spell a start of the
    /// text; else the memory holds text it cannot name and is cleared).
    pub fn keep_read(&mut self, engine: &mut Engine, h: &mut Held) {
        if self.answering {
            return self.keep_answer(h);
        }
        let read = &self.tokens[..self.read];
        let prefix = read_prefix(engine.tokenizer(), &self.text, read, self.bos_added);
        if prefix.len() < self.text.len() {
            h.text.push_str(prefix);
            h.tokens.extend_from_slice(read);
            h.logits.clear();
        } else {
            engine.clear();
            h.text.clear();
            h.tokens.clear();
        }
        h.before = None;
    }
}

/// Where the first stop string starts in `out`, searching from near `from`.
fn find_stop(out: &str, stops: &[String], from: usize) -> Option<usize> {
    stops
        .iter()
        .filter_map(|s| {
            let mut start = from.saturating_sub(s.len());
            while !out.is_char_boundary(start) {
                start -= 1;
            }
            out[start..].find(s.as_str()).map(|at| start + at)
        })
        .min()
}

/// Bytes at the end of `out` that may be the start of a stop string.
fn held_back(out: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|s| {
            (1..s.len())
                .rev()
                .filter(|&n| s.is_char_boundary(n))
                .map(move |n| &s[..n])
        })
        .filter(|prefix| out.ends_with(prefix))
        .map(str::len)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_and_their_starts_held_back() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(find_stop("abc\n\nd", &stops, 0), Some(3));
        assert_eq!(find_stop("abcEN", &stops, 0), None);
        assert_eq!(held_back("abcEN", &stops), 2);
        assert_eq!(held_back("abc\n", &stops), 1);
        assert_eq!(held_back("abc", &stops), 0);
        // Text already sent is searched only where a stop could still end.
        assert_eq!(find_stop("END and more", &stops, 10), None);
    }
}
