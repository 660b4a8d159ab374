//! `--prompt-cache FILE` in completion mode, as llama.cpp's: the memory
//! after a prompt is kept in a session file, and a later run whose prompt
//! starts with that one reads only what is new. The state is saved one
//! token short of the prompt, so that the same prompt again (or a longer
//! one) still has its last token to evaluate for logits: InfLLM's memory
//! cannot take a token back.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::progress::Progress;
use super::signals;
use crate::engine::Engine;
use crate::sampling::Sampler;
use crate::session::{self, SessionFile};
use crate::tokenizer::Token;

/// What a prompt cache's record holds: the tokens its state has read.
#[derive(Serialize, Deserialize)]
struct Record {
    prompt_cache: Vec<Token>,
}

pub struct PromptCache {
    file: SessionFile,
    read_only: bool,
}

impl PromptCache {
    /// The cache at `path`, locked for this run (`read_only`: never written).
    pub fn open(path: &Path, read_only: bool) -> anyhow::Result<Self> {
        let file = SessionFile::open(path).context("--prompt-cache")?;
        Ok(Self { file, read_only })
    }

    /// The session file the run saves to (None: read-only).
    pub fn saves_to(&self) -> Option<&SessionFile> {
        (!self.read_only).then_some(&self.file)
    }

    /// Checks that a saved cache is one `engine` can load (its model and
    /// settings), before anything is printed.
    pub fn check(&self, engine: &Engine) -> anyhow::Result<()> {
        if self.file.exists() {
            let (record, n_past) = session::record(&self.file, engine)?;
            read_record(&record, n_past).with_context(|| self.name())?;
        }
        Ok(())
    }

    /// Loads the saved state into `engine` when its tokens start `prompt`
    /// (and leave at least its last token); returns how many it holds.
    pub fn restore(&self, engine: &mut Engine, prompt: &[Token]) -> anyhow::Result<usize> {
        if !self.file.exists() {
            return Ok(0);
        }
        let (record, n_past) = session::record(&self.file, engine)?;
        let saved = read_record(&record, n_past).with_context(|| self.name())?;
        if saved.len() >= prompt.len() || !prompt.starts_with(&saved) {
            return Ok(0);
        }
        session::load(&self.file, engine, |_, _| Ok(()))?;
        Ok(saved.len())
    }

    /// Reads `text` (whose tokens are `tokens`) into `engine` from where
    /// the cache leaves off, printing it to `echo`; saves the memory before
    /// its last token, then evaluates that one. Returns its logits; `done`
    /// counts the tokens evaluated.
    pub fn prefill(
        &self,
        (engine, sampler): (&mut Engine, &mut Sampler),
        (text, tokens): (&str, &[Token]),
        echo: Option<&mut dyn Write>,
        done: &mut usize,
    ) -> anyhow::Result<Vec<f32>> {
        let started = std::time::Instant::now();
        let held = self.restore(engine, tokens)?;
        let secs = started.elapsed().as_secs_f64();
        if let Some(out) = echo {
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
        // The prompt's eval time includes this (and the save below).
        crate::log_info!(
            "infllm: {}: {held} of {} prompt tokens restored in {secs:.2} s",
            self.name(),
            tokens.len()
        );
        let (body, last) = tokens.split_at(tokens.len() - 1);
        let mut progress = Progress::new(body.len() - held);
        for chunk in body[held..].chunks(engine.step_tokens()) {
            if signals::interrupted() {
                progress.clear();
                return Err(signals::Stopped::now().into());
            }
            engine.feed(chunk, &mut |_, _| {})?;
            *done += chunk.len();
            progress.update(*done);
        }
        progress.finish();
        if held < body.len() {
            self.save(engine, body)?;
        }
        body.iter().for_each(|&t| sampler.accept(t));
        let logits = engine.eval(last, false, &mut |_, _| {})?;
        sampler.accept(last[0]);
        *done += 1;
        Ok(logits)
    }

    /// Saves `engine`'s state, which holds `tokens` (unless read-only).
    pub fn save(&self, engine: &Engine, tokens: &[Token]) -> anyhow::Result<()> {
        if self.read_only {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let record = serde_json::to_value(Record {
            prompt_cache: tokens.to_vec(),
        })?;
        session::save(&self.file, engine, record)?;
        let secs = started.elapsed().as_secs_f64();
        crate::log_info!("infllm: {}: {} tokens saved in {secs:.2} s", self.name(), tokens.len());
        Ok(())
    }

    fn name(&self) -> String {
        format!("prompt cache {}", self.file.path().display())
    }
}

/// A cache's tokens, checked against the state's length (a chat session
/// is not a prompt cache).
fn read_record(record: &serde_json::Value, n_past: usize) -> anyhow::Result<Vec<Token>> {
    let r: Record = serde_json::from_value(record.clone())
        .map_err(|_| anyhow::anyhow!("not a prompt cache (a chat session? use it with -cnv --session)"))?;
    anyhow::ensure!(
        r.prompt_cache.len() == n_past,
        "corrupt: {} tokens recorded for a memory of {n_past}",
        r.prompt_cache.len()
    );
    Ok(r.prompt_cache)
}
