//! Memory blocks on disk. Once the blocks' keys and values pass a budget
//! (or from the start, with `--mem-file`), they move to a file that the
//! store maps at the same addresses: steps read only the blocks retrieval
//! picks, so the OS keeps only those in memory, and gives the pages back
//! when asked (`release`, every `RELEASE_EVERY` bytes of reads). The
//! representative keys stay in memory: every step reads all of them.
//!
//! The file is scratch, unlinked as soon as it is created: it never
//! outlives the process, and no other program can truncate it under the
//! mapping. Sessions still carry their blocks.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

use super::window::InfllmAttention;

/// Where blocks go, and when.
#[derive(Debug, Clone, Default)]
pub struct BlockSpill {
    /// The file to create (None: one in the temporary directory).
    pub file: Option<PathBuf>,
    /// Bytes of block keys and values kept in memory before they move.
    pub budget: usize,
}

/// Bytes read through the file's mappings after which the OS gets the
/// pages back: the resident share of the blocks stays below this.
const RELEASE_EVERY: usize = 128 << 20;

/// Regions start at multiples of this (a page size on every system we run).
const REGION_ALIGN: u64 = 1 << 16;

/// An open, unlinked block file and the regions given out in it (one per
/// arena, each as long as the arena's reserved range: the file is sparse).
pub struct BlockFile {
    file: Arc<File>,
    next: u64,
    /// Where it was created (for messages).
    shown: PathBuf,
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
        })
    }

    /// The offset of a new region of `len` bytes.
    pub fn region(&mut self, len: usize) -> u64 {
        let at = self.next;
        self.next = (at + len as u64).next_multiple_of(REGION_ALIGN);
        at
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
    /// The file: created at once for `--mem-file` (a bad path fails before
    /// any work), else when the blocks pass the budget.
    file: Option<BlockFile>,
    /// Whether the blocks are in the file.
    moved: bool,
    /// Bytes steps may have read through the file since the last release.
    read: usize,
}

impl InfllmAttention {
    /// Moves the blocks to a file once they pass `config.budget` (now, if
    /// they already do).
    pub fn spill_blocks(&mut self, config: BlockSpill) -> anyhow::Result<()> {
        if self.p.topk == 0 {
            return Ok(());
        }
        let file = match &config.file {
            Some(path) => Some(BlockFile::create(Some(path))?),
            None => None,
        };
        self.spill = Some(Spill {
            budget: config.budget,
            file,
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
        let file = match &mut spill.file {
            Some(f) => f,
            None => spill.file.insert(BlockFile::create(None)?),
        };
        for l in &mut self.layers {
            l.blocks.spill_to(file)?;
        }
        spill.moved = true;
        crate::log_info!(
            "infllm: memory blocks past {} MiB: moved to a file in {} (unlinked)",
            spill.budget >> 20,
            file.shown.parent().unwrap_or(Path::new("/")).display()
        );
        Ok(())
    }

    /// After a step that read at most `topk` blocks per layer: gives the
    /// pages back to the OS once enough reads have gathered.
    pub(super) fn note_step_reads(&mut self) {
        let Some(spill) = self.spill.as_mut().filter(|s| s.moved) else {
            return;
        };
        let per_block = self.shape.k_bytes() + self.shape.v_bytes();
        spill.read += self.p.topk * per_block * self.layers.len();
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
