//! Session files: an engine's whole attention state plus the caller's own
//! record (the conversation, the sampler), so that a conversation survives a
//! restart.
//!
//! Layout: `MAGIC` and the format version; the sections (window buffers,
//! KV cache, blocks; block sections start at multiples of `MAP_ALIGN` so
//! that loading maps them instead of reading them); the index (JSON: model
//! identity, attention settings, counters, section table, caller's record);
//! the index length, an xxh3-64 checksum of everything before it, `END`.
//!
//! Files are written to a temporary name and renamed, so a session file is
//! either the old one or the complete new one. Loading checks everything
//! (length, magic, version, checksum, model, settings) before it touches the
//! engine, and never writes to the file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context as _};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::attention::{Settings, StateReader, StateWriter};
use crate::engine::Engine;
use crate::ggml::{map_readonly, MAP_ALIGN};

const MAGIC: &[u8; 8] = b"INFLLMSS";
const END: &[u8; 8] = b"INFLLMSE";
const VERSION: u32 = 5;
const HEADER_LEN: usize = 16;
/// Index length, checksum, END.
const TRAILER_LEN: usize = 24;

#[derive(Serialize, Deserialize)]
struct Index {
    /// Hex of the model's identity hash (GGUF header and tensor table).
    model: String,
    /// The attention settings.
    attention: Settings,
    /// What the attention needs besides its sections (`Attention::state_write`).
    state: serde_json::Value,
    /// (offset, length) of each section, in the order the state reads them.
    sections: Vec<(u64, u64)>,
    record: serde_json::Value,
}

/// Writes `engine`'s state and `record` to `path` (atomically).
pub fn save(path: &Path, engine: &Engine, record: serde_json::Value) -> anyhow::Result<()> {
    let tmp = temp_path(path);
    let result = write_file(&tmp, engine, record).and_then(|()| {
        std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot save session {}", path.display()))
}

/// Restores the state saved in `path` into `engine` (built with the same
/// model and attention settings); returns the caller's record as `check`
/// reads it (called before the engine changes, so a record it refuses
/// leaves the engine as it was).
pub fn load<T>(
    path: &Path,
    engine: &mut Engine,
    check: impl FnOnce(&serde_json::Value) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    load_inner(path, engine, check).with_context(|| format!("session file {}", path.display()))
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map_or("session".into(), |n| n.to_string_lossy());
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Sequential writer that hashes what it writes and records sections.
struct SectionWriter {
    out: BufWriter<File>,
    hash: Xxh3,
    pos: u64,
    sections: Vec<(u64, u64)>,
}

impl SectionWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.out.write_all(data)?;
        self.hash.update(data);
        self.pos += data.len() as u64;
        Ok(())
    }
}

impl StateWriter for SectionWriter {
    /// A section; `mappable` ones start at a multiple of `MAP_ALIGN`.
    fn section(&mut self, data: &[u8], mappable: bool) -> std::io::Result<()> {
        if mappable && !data.is_empty() {
            let pad = self.pos.next_multiple_of(MAP_ALIGN as u64) - self.pos;
            self.write(&vec![0u8; pad as usize])?;
        }
        self.sections.push((self.pos, data.len() as u64));
        self.write(data)
    }
}

fn write_file(tmp: &Path, engine: &Engine, record: serde_json::Value) -> anyhow::Result<()> {
    let file = File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut w = SectionWriter {
        out: BufWriter::with_capacity(1 << 20, file),
        hash: Xxh3::new(),
        pos: 0,
        sections: Vec::new(),
    };
    w.write(MAGIC)?;
    w.write(&VERSION.to_le_bytes())?;
    w.write(&0u32.to_le_bytes())?;
    let state = engine.state_write(&mut w)?;
    let index = serde_json::to_vec(&Index {
        model: format!("{:016x}", engine.model().identity),
        attention: engine.settings(),
        state,
        sections: std::mem::take(&mut w.sections),
        record,
    })?;
    w.write(&index)?;
    w.write(&(index.len() as u64).to_le_bytes())?;
    let checksum = w.hash.digest();
    w.out.write_all(&checksum.to_le_bytes())?;
    w.out.write_all(END)?;
    let file = w.out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(())
}

fn load_inner<T>(
    path: &Path,
    engine: &mut Engine,
    check: impl FnOnce(&serde_json::Value) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let file = File::open(path).context("cannot open it")?;
    let map = map_readonly(&file).context("cannot map it")?;
    let b: &[u8] = &map;
    ensure!(
        b.len() >= HEADER_LEN + TRAILER_LEN && b.starts_with(MAGIC),
        "not an infllm session file (or truncated to {} bytes)",
        b.len()
    );
    let version = u32::from_le_bytes(b[8..12].try_into()?);
    ensure!(
        version == VERSION,
        "format version {version}, this build reads version {VERSION}"
    );
    ensure!(b.ends_with(END), "truncated or corrupt (no end marker)");
    let le = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let (index_len, checksum) = (le(b.len() - 24), le(b.len() - 16));
    ensure!(xxh3_64(&b[..b.len() - 16]) == checksum, "corrupt (checksum mismatch)");
    let index_start = (b.len() - TRAILER_LEN)
        .checked_sub(usize::try_from(index_len)?)
        .filter(|&s| s >= HEADER_LEN)
        .context("corrupt (index length)")?;
    let index: Index = serde_json::from_slice(&b[index_start..b.len() - TRAILER_LEN]).context("corrupt index")?;

    let model = format!("{:016x}", engine.model().identity);
    ensure!(
        index.model == model,
        "saved with another model (identity {}, this model {model})",
        index.model
    );
    if let Some(why) = engine.settings().mismatch(&index.attention) {
        bail!("{why}");
    }
    let mut sections = StateReader::new(&file, &b[..index_start], &index.sections)?;
    let record = check(&index.record)?;
    engine.state_read(&index.state, &mut sections)?;
    Ok(record)
}
