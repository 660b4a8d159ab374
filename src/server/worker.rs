//! The compute thread: the engine, one attention state per slot (`-np`),
//! the held conversations and the requests in the slots, advanced a step
//! each in turn (a prompt chunk or a token): up to `-np` answers stream at
//! once, and each step still has every ggml thread.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::api::ApiError;
use super::job::{Active, Event, Job, Stepped};
use super::memory::{Held, Parked, Place, Pool, Record, Resume, SpillDir, MAX_HELD};
use super::metrics::Metrics;
use crate::attention::Attention;
use crate::chat::ChatTemplate;
use crate::engine::Engine;
use crate::sampling::Sampler;
use crate::session::SessionFile;
use crate::tokenizer::Token;

/// What the handlers ask of the compute thread.
pub enum Work {
    Generate(Job),
    Tokenize {
        content: String,
        add_special: bool,
        reply: oneshot::Sender<Vec<Token>>,
    },
    Detokenize {
        tokens: Vec<i64>,
        reply: oneshot::Sender<Result<String, ApiError>>,
    },
    Slot {
        id: usize,
        action: String,
        filename: Option<String>,
        reply: oneshot::Sender<Result<serde_json::Value, ApiError>>,
    },
    /// Stop: cancel the requests, keep the conversations if the directory
    /// is persistent.
    Shutdown,
}

/// The slots (`-np`): one attention state each, taking turns in one
/// engine, so that they share its scheduler, compute buffers and thread
/// pool (one pool per engine would spin against each other).
pub struct Slots {
    engine: Engine,
    /// Each slot's state while another's is in the engine (None: in it).
    states: Vec<Option<Box<dyn Attention>>>,
    current: usize,
    pub busy: Vec<bool>,
}

impl Slots {
    pub fn new(engine: Engine, n: usize) -> anyhow::Result<Self> {
        let states = (0..n)
            .map(|i| if i == 0 { Ok(None) } else { engine.new_state().map(Some) })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            engine,
            states,
            current: 0,
            busy: vec![false; n],
        })
    }

    pub fn len(&self) -> usize {
        self.busy.len()
    }

    pub fn is_empty(&self) -> bool {
        self.busy.is_empty()
    }

    /// The engine with slot `slot`'s state in it.
    pub fn at(&mut self, slot: usize) -> &mut Engine {
        if self.current != slot {
            let state = self.states[slot].take().expect("the slot's state");
            self.states[self.current] = Some(self.engine.swap_state(state));
            self.current = slot;
        }
        &mut self.engine
    }

    /// The engine, for what does not depend on a slot (the tokenizer).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Bytes of InfLLM blocks in the slots' states.
    pub fn block_bytes(&self) -> usize {
        let others = self.states.iter().flatten().filter_map(|s| s.memory().blocks);
        self.engine.block_bytes().unwrap_or(0) + others.map(|(_, b)| b).sum::<usize>()
    }
}

pub struct Worker {
    pub slots: Slots,
    pub pool: Pool,
    pub spill: SpillDir,
    /// Bytes of parked conversations kept in RAM (None: no limit).
    pub cache_ram: Option<usize>,
    pub template: ChatTemplate,
    pub metrics: Arc<Metrics>,
    pub waiting: VecDeque<Job>,
    pub active: Vec<Active>,
}

impl Worker {
    /// Serves `rx` until it closes or asks to stop.
    pub fn run(mut self, rx: Receiver<Work>) {
        loop {
            let first = match self.active.is_empty() && self.waiting.is_empty() {
                true => rx.recv().ok(),
                false => rx.try_recv().ok(),
            };
            if first.is_none() && self.active.is_empty() && self.waiting.is_empty() {
                return;
            }
            for work in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                if let Work::Shutdown = work {
                    return self.shutdown();
                }
                self.handle(work);
            }
            self.admit_waiting();
            self.step_all();
            self.publish();
        }
    }

    fn handle(&mut self, work: Work) {
        match work {
            Work::Generate(job) => self.waiting.push_back(job),
            Work::Tokenize {
                content,
                add_special,
                reply,
            } => {
                let _ = reply.send(self.engine().tokenizer().encode(&content, add_special, true));
            }
            Work::Detokenize { tokens, reply } => {
                let _ = reply.send(self.detokenize(&tokens));
            }
            Work::Slot {
                id,
                action,
                filename,
                reply,
            } => {
                let _ = reply.send(self.slot_action(id, &action, filename.as_deref()));
            }
            Work::Shutdown => unreachable!("handled by run"),
        }
    }

    pub fn engine(&self) -> &Engine {
        self.slots.engine()
    }

    fn detokenize(&self, tokens: &[i64]) -> Result<String, ApiError> {
        let tok = self.engine().tokenizer();
        let n_vocab = tok.n_vocab();
        let ids = tokens
            .iter()
            .map(|&t| {
                Token::try_from(t)
                    .ok()
                    .filter(|&t| t >= 0 && (t as usize) < n_vocab)
                    .ok_or_else(|| ApiError::bad_request(format!("token {t} is not in the vocabulary (0..{n_vocab})")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(String::from_utf8_lossy(&tok.decode(&ids, false, true)).into_owned())
    }

    /// Moves waiting requests into free slots.
    fn admit_waiting(&mut self) {
        while self.slots.busy.contains(&false) {
            let Some(job) = self.waiting.pop_front() else { break };
            self.metrics.deferred.fetch_sub(1, Relaxed);
            if job.events.is_closed() {
                continue;
            }
            let events = job.events.clone();
            match self.admit(job) {
                Ok(a) => {
                    let _ = events.send(a.started());
                    self.slots.busy[a.slot] = true;
                    self.active.push(a);
                }
                Err(e) => {
                    let _ = events.send(Event::Failed(e));
                }
            }
            self.enforce_budget();
        }
    }

    /// Puts `job` in a slot with the conversation it continues furthest,
    /// or a new one; checks that it fits the context.
    fn admit(&mut self, job: Job) -> Result<Active, ApiError> {
        let text = self.render(&job.gen.input)?;
        let busy = &self.slots.busy;
        let found = self.pool.best(&text, |h| !matches!(h.place, Place::Slot(s) if busy[s]));
        let slot = self.pick_slot(found.map(|f| f.0));
        self.vacate(slot, found.map(|f| f.0))?;
        let resumed = found.and_then(|(id, resume, _)| match self.install(id, slot) {
            Ok(()) => Some((id, resume)),
            Err(e) => {
                crate::log_warn!("infllm: a held conversation is lost, its text is read again: {e:#}");
                None
            }
        });
        let id = match resumed {
            Some((id, Resume::BeforeAnswer)) => self.rewind(id, slot).map(|()| id)?,
            Some((id, Resume::Whole)) => id,
            None => self.new_held(slot),
        };
        self.pool.touch(id);
        let h = &self.pool.held[&id];
        let engine = self.slots.at(slot);
        let new_text = text[h.text.len()..].to_string();
        let tok = engine.tokenizer();
        let bos_in_text = tok
            .bos()
            .and_then(|b| tok.token_text(b))
            .is_some_and(|b| text.starts_with(b));
        let add_bos = h.text.is_empty() && !bos_in_text;
        let tokens = match new_text.is_empty() {
            true => Vec::new(),
            false => tok.encode(&new_text, add_bos, true),
        };
        let (held, n_ctx) = (h.tokens.len(), engine.n_ctx());
        if held + tokens.len() >= n_ctx {
            if held == 0 {
                self.pool.held.remove(&id);
            }
            return Err(ApiError::bad_request(format!(
                "the prompt does not fit the context: {} tokens >= {n_ctx} (-c)",
                held + tokens.len()
            )));
        }
        let bos_added = add_bos && tokens.first() == tok.bos().as_ref();
        let sampler = Sampler::new(job.gen.sampling.clone(), tok).map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(Active::new(job, sampler, slot, (id, h), new_text, tokens, bos_added))
    }

    fn render(&self, input: &super::api::Input) -> Result<String, ApiError> {
        match input {
            super::api::Input::Text(t) => Ok(t.clone()),
            super::api::Input::Chat(messages) => self
                .template
                .render(messages, true)
                .map_err(|e| ApiError::bad_request(format!("chat template: {e:#}"))),
        }
    }

    /// The slot for a request continuing `held`: its own if it sits in one,
    /// else a free slot holding nothing, else the least recently used free one.
    fn pick_slot(&self, held: Option<u64>) -> usize {
        if let Some(Place::Slot(s)) = held.map(|id| &self.pool.held[&id].place) {
            return *s;
        }
        let free = (0..self.slots.len()).filter(|&s| !self.slots.busy[s]);
        free.min_by_key(|&s| self.pool.in_slot(s).map_or(0, |id| self.pool.held[&id].used))
            .expect("a free slot")
    }

    /// Sets the conversation in `slot` aside (unless it is `keep`) and
    /// leaves the slot's engine empty.
    pub(super) fn vacate(&mut self, slot: usize, keep: Option<u64>) -> Result<(), ApiError> {
        let engine = self.slots.at(slot);
        let Some(id) = self.pool.in_slot(slot).filter(|&id| Some(id) != keep) else {
            if keep.is_none() {
                engine.clear();
            }
            return Ok(());
        };
        let parked = Parked::take(engine).map_err(|e| ApiError::server(format!("{e:#}")))?;
        self.pool.held.get_mut(&id).expect("held").place = Place::Ram(Box::new(parked));
        Ok(())
    }

    /// Brings conversation `id` into `slot` (whose engine is empty).
    fn install(&mut self, id: u64, slot: usize) -> anyhow::Result<()> {
        let h = self.pool.held.get_mut(&id).expect("held");
        let engine = self.slots.at(slot);
        let loaded = match std::mem::replace(&mut h.place, Place::Slot(slot)) {
            Place::Slot(_) => Ok(()),
            Place::Ram(parked) => parked.restore(engine),
            Place::Disk(file) => {
                let n_vocab = engine.tokenizer().n_vocab();
                let loaded = crate::session::load(&file, engine, |saved, n_past| Record::read(saved, n_past, n_vocab));
                let _ = std::fs::remove_file(file.path());
                loaded.and_then(|r| {
                    anyhow::ensure!(r.text == h.text && r.tokens == h.tokens, "it changed on disk");
                    Ok(())
                })
            }
        };
        if loaded.is_err() {
            engine.clear();
            self.pool.held.remove(&id);
        }
        loaded
    }

    fn new_held(&mut self, slot: usize) -> u64 {
        self.pool.add(Held {
            text: String::new(),
            tokens: Vec::new(),
            logits: Vec::new(),
            before: None,
            place: Place::Slot(slot),
            used: 0,
        })
    }

    /// Takes conversation `id` (in `slot`) back to its state before its answer.
    fn rewind(&mut self, id: u64, slot: usize) -> Result<(), ApiError> {
        let h = self.pool.held.get_mut(&id).expect("held");
        let b = h.before.take().expect("a state before the answer");
        self.slots
            .at(slot)
            .rollback(&b.snapshot)
            .map_err(|e| ApiError::server(format!("{e:#}")))?;
        h.text.truncate(b.text_len);
        h.tokens.truncate(b.n_tokens);
        h.logits = b.logits;
        Ok(())
    }

    /// One step of every request in a slot, in turn.
    fn step_all(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            let a = &mut self.active[i];
            let h = self.pool.held.get_mut(&a.held).expect("held");
            let outcome = a.step(self.slots.at(a.slot), h);
            let done = match outcome {
                Ok(Stepped::Going) => false,
                Ok(Stepped::Finished(f) | Stepped::Cancelled(f)) => {
                    let read = f.prompt_tokens - f.cached;
                    let m = &self.metrics;
                    m.add_answer(read, f.cached, f.prompt_time, f.completion_tokens, f.predict_time);
                    let _ = a.job.events.send(Event::Done(f));
                    true
                }
                Err(e) => {
                    let _ = a.job.events.send(Event::Failed(ApiError::server(format!("{e:#}"))));
                    self.slots.at(a.slot).clear();
                    h.text.clear();
                    h.tokens.clear();
                    true
                }
            };
            if done {
                let a = self.active.swap_remove(i);
                self.slots.busy[a.slot] = false;
                if self.pool.held[&a.held].text.is_empty() {
                    self.pool.held.remove(&a.held);
                }
            } else {
                i += 1;
            }
        }
    }

    /// Conversations parked beyond `--cache-ram` go to disk, least recently
    /// used first; beyond `MAX_HELD` in all, the oldest are forgotten.
    fn enforce_budget(&mut self) {
        while self.cache_ram.is_some_and(|max| self.pool.parked_bytes() > max) {
            let Some(id) = self.pool.oldest(|h| matches!(h.place, Place::Ram(..))) else {
                break;
            };
            if let Err(e) = self.spill(id) {
                crate::log_warn!("infllm: a conversation could not be saved and is forgotten: {e:#}");
                self.pool.held.remove(&id);
            }
        }
        while self.pool.held.len() > MAX_HELD {
            let Some(id) = self.pool.oldest(|h| !matches!(h.place, Place::Slot(_))) else {
                break;
            };
            if let Some(Held {
                place: Place::Disk(f), ..
            }) = self.pool.held.remove(&id)
            {
                let _ = std::fs::remove_file(f.path());
            }
        }
    }

    /// Writes conversation `id`, set aside in RAM, to a session file.
    fn spill(&mut self, id: u64) -> anyhow::Result<()> {
        let h = self.pool.held.get_mut(&id).expect("held");
        let Place::Ram(parked) = &h.place else {
            unreachable!("spill takes a conversation set aside")
        };
        let file = SessionFile::open(&self.spill.file_for(&h.text))?;
        let record = serde_json::to_value(Record {
            text: h.text.clone(),
            tokens: h.tokens.clone(),
        })?;
        crate::session::save(&file, parked.as_ref(), record)?;
        h.before = None;
        h.logits = Vec::new();
        h.place = Place::Disk(file);
        Ok(())
    }

    /// Publishes the gauges.
    fn publish(&self) {
        let m = &self.metrics;
        let (ram, disk) = self.pool.counts();
        m.in_ram.store(ram as u64, Relaxed);
        m.on_disk.store(disk as u64, Relaxed);
        m.processing.store(self.active.len() as u64, Relaxed);
        let slots = self.slots.block_bytes();
        let parked: usize = self
            .pool
            .held
            .values()
            .filter_map(|h| match &h.place {
                Place::Ram(parked) => Some(parked.block_bytes),
                _ => None,
            })
            .sum();
        m.block_bytes.store((slots + parked) as u64, Relaxed);
    }

    /// Ends the requests; keeps every conversation in the persistent
    /// directory (`--slot-save-path`), if there is one.
    fn shutdown(mut self) {
        for mut a in std::mem::take(&mut self.active) {
            let h = self.pool.held.get_mut(&a.held).expect("held");
            a.keep_read(self.slots.at(a.slot), h);
            let _ = a
                .job
                .events
                .send(Event::Failed(ApiError::unavailable("the server is shutting down")));
            self.slots.busy[a.slot] = false;
        }
        for job in self.waiting.drain(..) {
            let _ = job
                .events
                .send(Event::Failed(ApiError::unavailable("the server is shutting down")));
        }
        if !self.spill.persistent {
            return;
        }
        for slot in 0..self.slots.len() {
            if let Err(e) = self.vacate(slot, None) {
                crate::log_warn!("infllm: cannot set a conversation aside: {}", e.message);
            }
        }
        let parked: Vec<u64> = self.pool.held.keys().copied().collect();
        for id in parked {
            let parked = matches!(self.pool.held[&id].place, Place::Ram(..));
            if parked && !self.pool.held[&id].text.is_empty() {
                if let Err(e) = self.spill(id) {
                    crate::log_warn!("infllm: a conversation could not be saved: {e:#}");
                }
            }
        }
    }

    /// Registers the conversations an earlier run saved in the directory.
    pub fn register_saved(&mut self) {
        for path in self.spill.saved() {
            let found = SessionFile::open(&path).and_then(|f| {
                let engine = self.slots.engine();
                let (saved, n_past) = crate::session::record(&f, engine)?;
                let r = Record::read(&saved, n_past, engine.tokenizer().n_vocab())?;
                Ok((f, r))
            });
            match found {
                Ok((file, r)) => {
                    self.pool.add(Held {
                        text: r.text,
                        tokens: r.tokens,
                        logits: Vec::new(),
                        before: None,
                        place: Place::Disk(file),
                        used: 0,
                    });
                }
                Err(e) => crate::log_warn!("infllm: skipping {}: {e:#}", path.display()),
            }
        }
    }
}
