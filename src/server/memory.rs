//! The conversations a server holds. Each is an attention state with the
//! text and tokens it has read; it sits in a slot's engine, parked in RAM,
//! or in a session file, and a request whose text extends it continues it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::attention::{MemorySections, Settings, Snapshot, StateWriter};
use crate::engine::Engine;
use crate::session::SavedState;
use crate::session::SessionFile;
use crate::tokenizer::Token;

/// The state before an answer: where a request that changed the answer
/// (cut at a stop string, edited, or asked again) goes back to.
pub struct Before {
    pub snapshot: Snapshot,
    pub text_len: usize,
    pub n_tokens: usize,
    pub logits: Vec<f32>,
}

pub enum Place {
    /// Installed in slot `i`'s engine.
    Slot(usize),
    /// Set aside in RAM (boxed: the state's settings are large beside a slot number).
    Ram(Box<Parked>),
    /// In a session file (locked while held).
    Disk(SessionFile),
}

pub struct Held {
    /// The text the state has read: rendered turns and answers.
    pub text: String,
    pub tokens: Vec<Token>,
    /// Logits after the last token (empty when not kept: read from disk).
    pub logits: Vec<f32>,
    pub before: Option<Before>,
    pub place: Place,
    /// When it was last used (a counter), for least-recently-used order.
    pub used: u64,
}

/// Where a match continues: the whole state, or its state before the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    Whole,
    BeforeAnswer,
}

/// What a session file of the server records besides the state.
#[derive(Serialize, Deserialize)]
pub struct Record {
    pub text: String,
    pub tokens: Vec<Token>,
}

impl Record {
    /// Reads a saved record, checked against the memory it comes with.
    pub fn read(saved: &serde_json::Value, n_past: usize, n_vocab: usize) -> anyhow::Result<Self> {
        let r = Record::deserialize(saved).map_err(|e| anyhow::anyhow!("corrupt record: {e}"))?;
        anyhow::ensure!(
            r.tokens.len() == n_past && !r.text.is_empty(),
            "record of {} tokens for a memory of {n_past}",
            r.tokens.len()
        );
        if let Some(t) = r
            .tokens
            .iter()
            .find(|&&t| usize::try_from(t).map_or(true, |t| t >= n_vocab))
        {
            anyhow::bail!("token {t} is not in the vocabulary (0..{n_vocab})");
        }
        Ok(r)
    }
}

/// The held conversations, by id.
#[derive(Default)]
pub struct Pool {
    pub held: BTreeMap<u64, Held>,
    next_id: u64,
    clock: u64,
}

/// Conversations held at most (in RAM and on disk together): the least
/// recently used beyond it are forgotten.
pub const MAX_HELD: usize = 256;

impl Pool {
    pub fn add(&mut self, h: Held) -> u64 {
        self.next_id += 1;
        self.held.insert(self.next_id, h);
        self.touch(self.next_id);
        self.next_id
    }

    pub fn touch(&mut self, id: u64) {
        self.clock += 1;
        if let Some(h) = self.held.get_mut(&id) {
            h.used = self.clock;
        }
    }

    /// The held conversation in slot `slot`, if any.
    pub fn in_slot(&self, slot: usize) -> Option<u64> {
        self.held
            .iter()
            .find(|(_, h)| matches!(h.place, Place::Slot(s) if s == slot))
            .map(|(&id, _)| id)
    }

    /// The conversation that `text` continues furthest, among those `free`
    /// allows: its id, where it resumes, and how many bytes of `text` it holds.
    /// A state must leave something to read or keep its last logits.
    pub fn best(&self, text: &str, free: impl Fn(&Held) -> bool) -> Option<(u64, Resume, usize)> {
        let mut best: Option<(u64, Resume, usize)> = None;
        for (&id, h) in self.held.iter().filter(|(_, h)| free(h)) {
            let usable = |len: usize, logits: &[f32]| text.len() > len || !logits.is_empty();
            let found = if text.starts_with(&h.text) && usable(h.text.len(), &h.logits) {
                Some((Resume::Whole, h.text.len()))
            } else {
                h.before
                    .as_ref()
                    .filter(|b| text.starts_with(&h.text[..b.text_len]) && usable(b.text_len, &b.logits))
                    .map(|b| (Resume::BeforeAnswer, b.text_len))
            };
            if let Some((resume, len)) = found.filter(|&(_, len)| len > 0) {
                if best.is_none_or(|(_, _, l)| len > l) {
                    best = Some((id, resume, len));
                }
            }
        }
        best
    }

    /// Bytes of the conversations set aside in RAM.
    pub fn parked_bytes(&self) -> usize {
        self.held.values().map(held_bytes).sum()
    }

    /// Conversations in RAM (slots and parked) and on disk.
    pub fn counts(&self) -> (usize, usize) {
        let disk = self.held.values().filter(|h| matches!(h.place, Place::Disk(_))).count();
        (self.held.len() - disk, disk)
    }

    /// The least recently used conversation `pick` accepts.
    pub fn oldest(&self, pick: impl Fn(&Held) -> bool) -> Option<u64> {
        self.held
            .iter()
            .filter(|(_, h)| pick(h))
            .min_by_key(|(_, h)| h.used)
            .map(|(&id, _)| id)
    }
}

/// An attention state set aside in RAM: what a session file would hold
/// (the used part of its buffers and its blocks), not the buffers
/// themselves, so that a short conversation takes little.
pub struct Parked {
    identity: u64,
    settings: Settings,
    n_past: usize,
    state: serde_json::Value,
    sections: MemorySections,
    /// InfLLM block bytes among them.
    pub block_bytes: usize,
}

impl Parked {
    /// Copies `engine`'s state out and clears the engine.
    pub fn take(engine: &mut Engine) -> anyhow::Result<Self> {
        let mut sections = MemorySections::default();
        let state = engine.state_write(&mut sections)?;
        let parked = Self {
            identity: engine.model().identity,
            settings: engine.settings(),
            n_past: engine.n_past(),
            state,
            sections,
            block_bytes: engine.block_bytes().unwrap_or(0),
        };
        engine.clear();
        Ok(parked)
    }

    /// Puts the state back into `engine` (of the same model and settings).
    pub fn restore(&self, engine: &mut Engine) -> anyhow::Result<()> {
        engine.state_read(&self.state, &mut self.sections.reader(self.n_past)?)
    }

    pub fn bytes(&self) -> usize {
        self.sections.len()
    }
}

impl SavedState for Parked {
    fn identity(&self) -> u64 {
        self.identity
    }

    fn settings(&self) -> Settings {
        self.settings.clone()
    }

    fn n_past(&self) -> usize {
        self.n_past
    }

    fn write_state(&self, out: &mut dyn StateWriter) -> anyhow::Result<serde_json::Value> {
        let mut reader = self.sections.reader(self.n_past)?;
        let mut buf = Vec::new();
        while let Some(len) = reader.next_len() {
            buf.resize(len, 0);
            let s = reader.next(len)?;
            reader.read_into(s, 0, &mut buf)?;
            out.section(&buf)?;
        }
        Ok(self.state.clone())
    }
}

/// Bytes a conversation set aside takes: its state and its snapshot.
pub fn held_bytes(h: &Held) -> usize {
    let snapshot = h.before.as_ref().map_or(0, |b| b.snapshot.bytes());
    match &h.place {
        Place::Ram(p) => p.bytes() + snapshot,
        _ => 0,
    }
}

/// Where conversations go when they leave RAM: `--slot-save-path`, kept
/// across restarts, or a private temporary directory removed at exit.
pub struct SpillDir {
    pub path: PathBuf,
    pub persistent: bool,
}

impl SpillDir {
    pub fn new(slot_save_path: Option<&Path>) -> anyhow::Result<Self> {
        let (path, persistent) = match slot_save_path {
            Some(p) => (p.to_path_buf(), true),
            None => (
                std::env::temp_dir().join(format!("infllm-serve-{}", std::process::id())),
                false,
            ),
        };
        std::fs::create_dir_all(&path).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
        Ok(Self { path, persistent })
    }

    /// The file a conversation with this text goes to.
    pub fn file_for(&self, text: &str) -> PathBuf {
        let hash = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
        self.path.join(format!("conversation-{hash:016x}.session"))
    }

    /// Session files of conversations an earlier run left (persistent only).
    pub fn saved(&self) -> Vec<PathBuf> {
        if !self.persistent {
            return Vec::new();
        }
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("conversation-") && n.ends_with(".session"))
            })
            .collect();
        files.sort();
        files
    }
}

impl Drop for SpillDir {
    fn drop(&mut self) {
        if !self.persistent {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
