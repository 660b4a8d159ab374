//! Memory blocks on disk. Once the blocks' keys and values pass a budget
//! (or from the start, with `--mem-file`), they move to a file that the
//! store maps at the same addresses: steps read only the blocks retrieval
//! picks, so the OS keeps only those in memory, and gives the pages back
//! when asked (`release`, every `RELEASE_EVERY` bytes of reads). The
//! representative keys stay in memory: every step reads all of them.
//!
//! The file is scratch by default, unlinked as soon as it is created: it
//! never outlives the process, and no other program can truncate it under
//! the mapping; sessions then carry their blocks. A kept file (`keep`: a
//! chat's `--session`) stays, and sessions saved from it name it and list
//! each block's checksum instead of copying the blocks: it is append-only
//! (see `HostArena::write`), starts with a header naming it (`MAGIC`, an
//! identity), and is locked while a process holds it. What a process
//! appended and no state it wrote names is cut off when it lets the file
//! go (a `--prompt-cache-ro` run, any run that loads a session naming the
//! file and saves none): the file grows only by what sessions can read.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;

use super::coarse::CANDIDATES;
use super::window::InfllmAttention;
use crate::ggml::{piece_spans, PIECE_ALIGN};

/// Where blocks go, and when.
#[derive(Debug, Clone, Default)]
pub struct BlockSpill {
    /// The file to create (None: one in the temporary directory).
    pub file: Option<PathBuf>,
    /// Bytes of block keys and values kept in memory before they move.
    pub budget: usize,
    /// The file outlives the run, for sessions to name (`file` is then its
    /// path, opened or created when the blocks pass the budget).
    pub keep: bool,
}

/// Bytes read through the file's mappings after which the OS gets the
/// pages back: the resident share of the blocks stays below this.
const RELEASE_EVERY: usize = 128 << 20;

/// Regions start at multiples of this (pieces of arenas map them).
const REGION_ALIGN: u64 = PIECE_ALIGN as u64;

/// A kept file's first bytes: magic, format version, identity.
const MAGIC: &[u8; 8] = b"INFLLMBF";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 32;

/// An open block file and the regions given out in it (one per piece of
/// an arena: see `HostArena::write`).
pub struct BlockFile {
    file: Arc<File>,
    next: u64,
    /// Where it was created (for messages).
    shown: PathBuf,
    /// A kept file's identity (None: scratch, unlinked).
    id: Option<u128>,
    /// Where the bytes that sessions may name end: a kept file's length
    /// when opened, then the end of the regions given out when a state
    /// naming the file was last written. What lies past it is this
    /// process's alone (the file is locked), and goes with the file.
    named_end: AtomicU64,
}

impl BlockFile {
    /// Creates the file at `path` (which must not exist), or under a unique
    /// name in the temporary directory, and unlinks it.
    pub fn create(path: Option<&Path>) -> anyhow::Result<Self> {
        let (file, shown) = match path {
            Some(p) => (
                create_new(p).with_context(|| format!("--mem-file {}", p.display()))?,
                p.into(),
            ),
            None => temp_file().context("cannot create a file for the memory blocks")?,
        };
        std::fs::remove_file(&shown).with_context(|| format!("cannot unlink {}", shown.display()))?;
        Ok(Self {
            file: Arc::new(file),
            next: 0,
            shown,
            id: None,
            named_end: AtomicU64::new(0),
        })
    }

    /// Opens the kept file at `path` (absolute), or creates it (`create`)
    /// with a new identity, and locks it; new regions go past its end.
    pub fn keep(path: &Path, create: bool) -> anyhow::Result<Self> {
        let open = || -> anyhow::Result<Self> {
            anyhow::ensure!(path.to_str().is_some(), "the path is not UTF-8");
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)?;
            anyhow::ensure!(file.metadata()?.is_file(), "not a regular file");
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => anyhow::bail!("in use by another infllm process"),
                Err(TryLockError::Error(e)) => return Err(e).context("cannot lock it"),
            }
            let id = read_or_write_header(&file, create)?;
            let opened_len = file.metadata()?.len();
            Ok(Self {
                file: Arc::new(file),
                next: opened_len.next_multiple_of(REGION_ALIGN),
                shown: path.into(),
                id: Some(id),
                named_end: AtomicU64::new(opened_len),
            })
        };
        open().with_context(|| format!("block file {}", path.display()))
    }

    /// The offset of a new region of `len` bytes. A kept file grows to
    /// cover it (sparse), so that a later process appends past it.
    pub fn region(&mut self, len: usize) -> std::io::Result<u64> {
        let at = self.next;
        let next = (at + len as u64).next_multiple_of(REGION_ALIGN);
        if self.id.is_some() {
            self.file.set_len(next)?;
        }
        self.next = next;
        Ok(at)
    }

    /// A kept file's identity (None: scratch).
    pub fn id(&self) -> Option<u128> {
        self.id
    }

    /// Where it is (a kept file: the absolute path sessions name).
    pub fn path(&self) -> &Path {
        &self.shown
    }

    /// Bytes `[at, at + buf.len())` of the file.
    fn read_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, at)
    }

    /// Bytes `[at, at + buf.len())` of an arena that maps `pieces` of
    /// this file (see `HostArena::pieces`).
    pub fn read_pieces(&self, pieces: &[(usize, u64)], at: usize, buf: &mut [u8]) -> std::io::Result<()> {
        let spans = piece_spans(pieces, at, buf.len());
        spans
            .into_iter()
            .try_for_each(|(done, off, n)| self.read_at(&mut buf[done..done + n], off))
    }

    /// The file's length in bytes.
    pub fn len(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Waits until what was written is on the disk, for a state that
    /// names every region given out so far.
    pub fn sync_for_state(&self) -> std::io::Result<()> {
        self.named_end.fetch_max(self.next, Ordering::Relaxed);
        self.file.sync_data()
    }

    pub fn handle(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// Bytes the file takes on disk.
    pub fn disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        self.file.metadata().map_or(0, |m| m.blocks() * 512)
    }
}

impl Drop for BlockFile {
    /// Cuts a kept file back to the regions that states may name, once no
    /// arena maps it (one that still did would fault past the new end).
    fn drop(&mut self) {
        let keep = self.named_end.load(Ordering::Relaxed);
        if self.id.is_none() || Arc::strong_count(&self.file) > 1 || self.len().is_ok_and(|n| n <= keep) {
            return;
        }
        if let Err(e) = self.file.set_len(keep) {
            crate::log_warn!(
                "infllm: block file {}: cannot give back the blocks no session names: {e}",
                self.shown.display()
            );
        }
    }
}

/// A kept file's identity: read from its header, or (an empty file) a new
/// one written there.
fn read_or_write_header(file: &File, create: bool) -> anyhow::Result<u128> {
    if create && file.metadata()?.len() == 0 {
        let id: u128 = rand::random();
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[16..].copy_from_slice(&id.to_le_bytes());
        file.write_all_at(&header, 0)?;
        file.set_len(REGION_ALIGN)?;
        return Ok(id);
    }
    let mut header = [0u8; HEADER_LEN];
    let read = file.read_exact_at(&mut header, 0);
    anyhow::ensure!(read.is_ok() && header.starts_with(MAGIC), "not an infllm block file");
    let version = u32::from_le_bytes(header[8..12].try_into()?);
    anyhow::ensure!(
        version == VERSION,
        "format version {version}, this build reads version {VERSION}"
    );
    Ok(u128::from_le_bytes(header[16..].try_into()?))
}

fn create_new(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

fn temp_file() -> anyhow::Result<(File, PathBuf)> {
    let dir = std::env::temp_dir();
    for i in 0..100 {
        let path = dir.join(format!("infllm-blocks-{}-{i}", std::process::id()));
        match create_new(&path) {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("in {}", dir.display())),
        }
    }
    anyhow::bail!("no free name in {}", dir.display())
}

/// An instance's blocks-on-disk state.
pub(super) struct Spill {
    budget: usize,
    /// The file: created at once for a scratch `--mem-file` (a bad path
    /// fails before any work), else when the blocks pass the budget.
    pub(super) file: Option<BlockFile>,
    /// A kept file's path (opened when the blocks pass the budget).
    keep: Option<PathBuf>,
    /// Whether the blocks are in the file.
    pub(super) moved: bool,
    /// Bytes steps may have read through the file since the last release.
    read: usize,
}

impl Spill {
    /// Blocks in `file` from the start: a saved session's kept file.
    pub(super) fn adopted(file: BlockFile) -> Self {
        Self {
            budget: 0,
            keep: Some(file.path().into()),
            file: Some(file),
            moved: true,
            read: 0,
        }
    }

    /// Takes `file`, a saved session's kept file, for the blocks (which the
    /// caller maps from it) and those to come.
    pub(super) fn adopt(&mut self, file: BlockFile) {
        self.keep = Some(file.path().into());
        self.file = Some(file);
        self.moved = true;
    }

    /// The kept file the blocks are in, if they are in one.
    pub(super) fn kept_file(&self) -> Option<&BlockFile> {
        self.file.as_ref().filter(|f| self.moved && f.id().is_some())
    }
}

impl InfllmAttention {
    /// Moves the blocks to a file once they pass `config.budget` (now, if
    /// they already do).
    pub fn spill_blocks(&mut self, config: BlockSpill) -> anyhow::Result<()> {
        if self.p.topk == 0 {
            return Ok(());
        }
        let keep = match (&config.file, config.keep) {
            (Some(path), true) => Some(std::path::absolute(path).context("--mem-file")?),
            (None, true) => anyhow::bail!("a kept block file needs a path"),
            (_, false) => None,
        };
        // A kept file already there is checked (and locked) now: a file of
        // another kind fails before any work, not when the blocks move.
        let file = match (&config.file, &keep) {
            (Some(path), None) => Some(BlockFile::create(Some(path))?),
            (_, Some(path)) if path.exists() => Some(BlockFile::keep(path, true)?),
            _ => None,
        };
        self.spill = Some(Spill {
            budget: config.budget,
            file,
            keep,
            moved: false,
            read: 0,
        });
        self.fit_budget(self.n_blocks())
    }

    /// Moves the blocks to the file if `n_blocks` of them pass the budget.
    pub(super) fn fit_budget(&mut self, n_blocks: usize) -> anyhow::Result<()> {
        let Some(spill) = &mut self.spill else { return Ok(()) };
        let per_block = self.shape.k_bytes() + self.shape.v_bytes();
        let in_memory = n_blocks.saturating_mul(per_block * self.layers.len());
        if spill.moved || in_memory <= spill.budget {
            return Ok(());
        }
        let file = match (&mut spill.file, &spill.keep) {
            (Some(f), _) => f,
            (None, Some(path)) => spill.file.insert(BlockFile::keep(path, true)?),
            (None, None) => spill.file.insert(BlockFile::create(None)?),
        };
        for l in &mut self.layers {
            l.blocks.spill_to(file)?;
        }
        spill.moved = true;
        let place = match file.id() {
            Some(_) => format!("{} (kept for sessions)", file.path().display()),
            None => {
                let dir = file.path().parent().unwrap_or(Path::new("/"));
                format!("a file in {} (unlinked)", dir.display())
            }
        };
        crate::log_info!(
            "infllm: memory blocks past {} MiB: moved to {place}",
            spill.budget >> 20
        );
        Ok(())
    }

    /// After a step (`reused`: one that took the kept candidates): counts
    /// the blocks steps may since have read, and gives the pages back to the
    /// OS once enough have gathered. A step reads `topk` blocks per layer;
    /// one that keeps candidates counts all of them, since the steps that
    /// take them read among those alone. Pages given back are faulted in
    /// again: counting each step's `topk` released them every sixth step at
    /// 1M tokens, now every second pass (docs/perf.md).
    pub(super) fn note_step_reads(&mut self, reused: bool) {
        let Some(spill) = self.spill.as_mut().filter(|s| s.moved) else {
            return;
        };
        let blocks = match (reused, self.kept_pick.is_some()) {
            (true, _) => 0,
            (false, true) => CANDIDATES * self.p.topk,
            (false, false) => self.p.topk,
        };
        let per_block = self.shape.k_bytes() + self.shape.v_bytes();
        spill.read += blocks * per_block * self.layers.len();
        if spill.read >= RELEASE_EVERY {
            spill.read = 0;
            self.layers.iter().for_each(|l| l.blocks.release());
        }
    }

    /// Bytes of blocks on disk (None: in memory).
    pub fn blocks_on_disk(&self) -> Option<u64> {
        let spill = self.spill.as_ref().filter(|s| s.moved)?;
        spill.file.as_ref().map(BlockFile::disk_bytes)
    }
}
