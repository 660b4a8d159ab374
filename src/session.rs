//! Session files: an engine's whole attention state plus the caller's own
//! record (the conversation, the sampler), so that a conversation survives a
//! restart.
//!
//! Layout: `MAGIC` and the format version; the sections (window buffers,
//! KV cache, blocks; or, for blocks in a kept block file, their checksums,
//! the index naming the file: see attention/infllm/spill.rs); the index
//! (JSON: model identity, attention settings, token count, counters,
//! section table, caller's record); the index length, an xxh3-64 checksum
//! of everything before it, `END`.
//!
//! A session is used through a `SessionFile`: the path with its symbolic
//! links followed, refused unless it is a regular file (or absent), and
//! locked (`.NAME.lock` beside it) for as long as the value lives, so that
//! two processes never write one session.
//!
//! Files are written to a temporary name (`.NAME.PID.tmp`) and renamed, so
//! a session file is either the old one or the complete new one; the lock
//! holder removes temporary files that killed saves left. Loading checks
//! everything (length, magic, version, checksum, model, settings, record,
//! counters) before it touches the engine, then reads the sections into
//! memory (a mapping would die with SIGBUS if another program truncated the
//! file), and never writes to the file.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{BufWriter, ErrorKind, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileExt as _, FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context as _};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::attention::{Settings, Source, StateReader, StateWriter};
use crate::engine::Engine;
use crate::quote::quoted;

const MAGIC: &[u8; 8] = b"INFLLMSS";
const END: &[u8; 8] = b"INFLLMSE";
const VERSION: u32 = 9;
/// Version 8 is version 9 without kept block files: read as well.
const OLDEST_READ: u32 = 8;
const HEADER_LEN: usize = 16;
/// Index length, checksum, END.
const TRAILER_LEN: usize = 24;

#[derive(Serialize, Deserialize)]
struct Index {
    /// Hex of the model's identity hash (GGUF header and tensor table).
    model: String,
    /// The attention settings.
    attention: Settings,
    /// Tokens the state holds (the attention's state and the caller's
    /// record are checked against it).
    n_past: usize,
    /// What the attention needs besides its sections (`Attention::state_write`).
    state: serde_json::Value,
    /// (offset, length) of each section, in the order the state reads them.
    sections: Vec<(u64, u64)>,
    record: serde_json::Value,
}

/// A session path taken for this process: links followed, locked.
pub struct SessionFile {
    /// The path as given (for messages).
    shown: PathBuf,
    /// The file it names: links followed, in a canonical directory.
    target: PathBuf,
    /// Held (locked) while this value lives (see `take_lock` for None).
    _lock: Option<File>,
}

impl SessionFile {
    /// Takes the session at `path` for this process: refuses anything but a
    /// regular file (or none yet) without opening it, fails at once if
    /// another process holds it, and removes what killed saves left.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let target = resolve(path).with_context(|| format!("session {}", path.display()))?;
        refuse_special(&target).with_context(|| format!("session {}", path.display()))?;
        let lock = take_lock(&target, path)?;
        remove_stale_temps(&target);
        Ok(Self {
            shown: path.to_path_buf(),
            target,
            _lock: lock,
        })
    }

    /// Whether a saved session is there.
    /// The file (links resolved).
    pub fn path(&self) -> &Path {
        &self.target
    }

    pub fn exists(&self) -> bool {
        std::fs::symlink_metadata(&self.target).is_ok_and(|m| m.is_file())
    }

    /// Where the memory blocks of an engine saving here go once they pass
    /// the memory budget (`NAME.blocks` beside the file; a kept block file,
    /// which the session then names instead of copying the blocks).
    pub fn blocks_path(&self) -> PathBuf {
        let mut name = self.target.clone().into_os_string();
        name.push(".blocks");
        name.into()
    }

    /// Whether `path` names this session's file.
    pub fn holds(&self, path: &Path) -> bool {
        resolve(path).is_ok_and(|t| t == self.target)
    }
}

/// `path` with its symbolic links followed to the file they name (which
/// may not exist yet), in its directory's canonical form.
fn resolve(path: &Path) -> anyhow::Result<PathBuf> {
    let mut path = path.to_path_buf();
    for _ in 0..40 {
        let is_link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link {
            let name = path.file_name().context("the path names no file")?;
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            let dir = std::fs::canonicalize(dir).with_context(|| format!("cannot find directory {}", dir.display()))?;
            return Ok(dir.join(name));
        }
        let link = std::fs::read_link(&path).context("cannot read the symbolic link")?;
        // A relative link is relative to its own directory.
        path = path.parent().map_or(link.clone(), |dir| dir.join(&link));
    }
    bail!("too many levels of symbolic links")
}

/// Refuses `target` if it exists and is not a regular file (a FIFO would
/// block the open forever), without opening it.
fn refuse_special(target: &Path) -> anyhow::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(target) else {
        return Ok(());
    };
    let t = meta.file_type();
    let kind = match () {
        _ if t.is_file() => return Ok(()),
        _ if t.is_dir() => "a directory",
        _ if t.is_fifo() => "a FIFO",
        _ if t.is_socket() => "a socket",
        _ if t.is_block_device() || t.is_char_device() => "a device",
        _ => "not a regular file",
    };
    bail!("is {kind}, not a regular file")
}

/// `.NAME.SUFFIX` beside `target`.
fn beside(target: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(target.file_name().unwrap_or(OsStr::new("session")));
    name.push(".");
    name.push(suffix);
    target.with_file_name(name)
}

/// Opens `path`, which must be a regular file, without blocking on a FIFO
/// planted in its place.
fn open_regular(path: &Path, options: &mut OpenOptions) -> std::io::Result<File> {
    let file = options.custom_flags(libc::O_NONBLOCK).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// Locks `.NAME.lock` beside `target` (the session file itself is replaced
/// by rename, so it cannot carry the lock). None in a directory we may not
/// write to: no save can happen there either, and loading needs no lock.
fn take_lock(target: &Path, shown: &Path) -> anyhow::Result<Option<File>> {
    let path = beside(target, "lock");
    let file = match open_regular(
        &path,
        OpenOptions::new().read(true).write(true).create(true).truncate(false),
    ) {
        Ok(file) => file,
        Err(e) if matches!(e.kind(), ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem) => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("session {}: cannot open {}", shown.display(), path.display()))
        }
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => bail!("session {} is in use by another infllm process", shown.display()),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("session {}: cannot lock {}", shown.display(), path.display()))
        }
    }
}

/// Removes the temporary files of saves of `target` that were killed: the
/// caller holds the lock, so no save of it is under way. Best effort.
fn remove_stale_temps(target: &Path) {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if is_temp_of(&entry.file_name(), name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether `file` is `.NAME.PID.tmp` for the session file `name`.
fn is_temp_of(file: &OsStr, name: &OsStr) -> bool {
    let pid = file
        .as_bytes()
        .strip_prefix(b".")
        .and_then(|f| f.strip_prefix(name.as_bytes()))
        .and_then(|f| f.strip_prefix(b"."))
        .and_then(|f| f.strip_suffix(b".tmp"));
    pid.is_some_and(|pid| !pid.is_empty() && pid.iter().all(u8::is_ascii_digit))
}

/// A state to save: an engine's, or one set aside in memory (a server's).
pub trait SavedState {
    /// The model's identity hash.
    fn identity(&self) -> u64;
    fn settings(&self) -> Settings;
    fn n_past(&self) -> usize;
    /// Writes the sections; returns what reading them back needs besides.
    fn write_state(&self, out: &mut dyn StateWriter) -> anyhow::Result<serde_json::Value>;
}

impl SavedState for Engine {
    fn identity(&self) -> u64 {
        self.model().identity
    }

    fn settings(&self) -> Settings {
        Engine::settings(self)
    }

    fn n_past(&self) -> usize {
        Engine::n_past(self)
    }

    fn write_state(&self, out: &mut dyn StateWriter) -> anyhow::Result<serde_json::Value> {
        self.state_write(out)
    }
}

/// Writes `engine`'s state and `record` to `session` (atomically).
pub fn save(session: &SessionFile, engine: &dyn SavedState, record: serde_json::Value) -> anyhow::Result<()> {
    let target = &session.target;
    let tmp = beside(target, &format!("{}.tmp", std::process::id()));
    let result = write_file(&tmp, engine, record).and_then(|()| {
        std::fs::rename(&tmp, target)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), target.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot save session {}", session.shown.display()))
}

/// Restores the state saved in `session` into `engine` (built with the
/// same model and attention settings); returns the caller's record as
/// `check(record, n_past)` reads it (called before the engine changes, so
/// a record it refuses leaves the engine as it was). Only a file changed
/// while it is read can fail once the engine changed: it is then cleared.
pub fn load<T>(
    session: &SessionFile,
    engine: &mut Engine,
    check: impl FnOnce(&serde_json::Value, usize) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    load_inner(&session.target, engine, check).with_context(|| format!("session file {}", session.shown.display()))
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
    fn section(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.sections.push((self.pos, data.len() as u64));
        self.write(data)
    }
}

fn write_file(tmp: &Path, engine: &dyn SavedState, record: serde_json::Value) -> anyhow::Result<()> {
    // create_new: never through a link or a FIFO planted under this name.
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut w = SectionWriter {
        out: BufWriter::with_capacity(1 << 20, file),
        hash: Xxh3::new(),
        pos: 0,
        sections: Vec::new(),
    };
    w.write(MAGIC)?;
    w.write(&VERSION.to_le_bytes())?;
    w.write(&0u32.to_le_bytes())?;
    let state = engine.write_state(&mut w)?;
    let index = serde_json::to_vec(&Index {
        model: format!("{:016x}", engine.identity()),
        attention: engine.settings(),
        n_past: engine.n_past(),
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

/// `len` bytes of `file` from `offset`.
fn read_at(file: &File, offset: u64, len: usize) -> anyhow::Result<Vec<u8>> {
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, offset).context("cannot read it")?;
    Ok(bytes)
}

/// The xxh3-64 of `file`'s first `len` bytes, read a bounded buffer at a time.
fn checksum(file: &File, len: u64) -> anyhow::Result<u64> {
    const STEP: u64 = 1 << 20;
    let mut hash = Xxh3::new();
    let mut buf = vec![0u8; STEP as usize];
    let mut at = 0;
    while at < len {
        let n = STEP.min(len - at) as usize;
        file.read_exact_at(&mut buf[..n], at).context("cannot read it")?;
        hash.update(&buf[..n]);
        at += n as u64;
    }
    Ok(hash.digest())
}

/// The caller's record in `session` and the tokens its state holds,
/// without reading the state (checked as `load` checks it, for `engine`).
pub fn record(session: &SessionFile, engine: &Engine) -> anyhow::Result<(serde_json::Value, usize)> {
    let read = || {
        let file = open_regular(&session.target, OpenOptions::new().read(true)).context("cannot open it")?;
        let (index, _) = read_index(&file, engine)?;
        Ok::<_, anyhow::Error>((index.record, index.n_past))
    };
    read().with_context(|| format!("session file {}", session.shown.display()))
}

/// The checked index of a session file for `engine`'s model and settings,
/// and where it starts.
fn read_index(file: &File, engine: &Engine) -> anyhow::Result<(Index, u64)> {
    let len = file.metadata().context("cannot stat it")?.len();
    let not_session = || format!("not an infllm session file (or truncated to {len} bytes)");
    ensure!(len >= (HEADER_LEN + TRAILER_LEN) as u64, not_session());
    let header = read_at(file, 0, HEADER_LEN)?;
    ensure!(header.starts_with(MAGIC), not_session());
    let version = u32::from_le_bytes(header[8..12].try_into()?);
    ensure!(
        (OLDEST_READ..=VERSION).contains(&version),
        "format version {version}, this build reads versions {OLDEST_READ} to {VERSION}"
    );
    let trailer = read_at(file, len - TRAILER_LEN as u64, TRAILER_LEN)?;
    ensure!(trailer.ends_with(END), "truncated or corrupt (no end marker)");
    let le = |at: usize| u64::from_le_bytes(trailer[at..at + 8].try_into().expect("8 bytes"));
    let (index_len, saved_checksum) = (le(0), le(8));
    ensure!(
        checksum(file, len - 16)? == saved_checksum,
        "corrupt (checksum mismatch)"
    );
    let index_start = (len - TRAILER_LEN as u64)
        .checked_sub(index_len)
        .filter(|&s| s >= HEADER_LEN as u64)
        .context("corrupt (index length)")?;
    let index_bytes = read_at(file, index_start, index_len as usize)?;
    let index: Index = serde_json::from_slice(&index_bytes)
        .map_err(|e| anyhow::anyhow!("corrupt index: {}", quoted(&e.to_string())))?;

    let model = format!("{:016x}", engine.model().identity);
    ensure!(
        index.model == model,
        "saved with another model (identity {}, this model {model})",
        quoted(&index.model)
    );
    if let Some(why) = engine.settings().mismatch(&index.attention) {
        bail!("{why}");
    }
    Ok((index, index_start))
}

fn load_inner<T>(
    target: &Path,
    engine: &mut Engine,
    check: impl FnOnce(&serde_json::Value, usize) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let file = open_regular(target, OpenOptions::new().read(true)).context("cannot open it")?;
    let (index, index_start) = read_index(&file, engine)?;
    let mut sections = StateReader::new(Source::File(&file), index_start, &index.sections, index.n_past)?;
    let record = check(&index.record, index.n_past)?;
    if let Err(e) = engine.state_read(&index.state, &mut sections) {
        if sections.read_failed() {
            engine.clear();
            return Err(e.context("the memory was cleared"));
        }
        return Err(e);
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_files_are_recognized_by_session_and_pid() {
        let name = OsStr::new("chat.session");
        assert!(is_temp_of(OsStr::new(".chat.session.12345.tmp"), name));
        for other in [
            ".chat.session.tmp",
            ".chat.session.12a.tmp",
            ".other.session.12345.tmp",
            ".chat.session.lock",
            "chat.session",
        ] {
            assert!(!is_temp_of(OsStr::new(other), name), "{other}");
        }
    }
}
