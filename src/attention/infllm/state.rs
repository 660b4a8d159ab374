//! An instance's state to come back to: snapshots within a run and the
//! sections of a saved session. Blocks are only ever appended, so a
//! snapshot remembers their count; a saved session writes them out, and
//! reading one back checks its counters and section lengths first
//! (`check_saved`), then reads (`load_saved`).

use anyhow::{ensure, Context as _};
use serde::{Deserialize, Serialize};

use std::path::Path;

use super::blocks::BlockShape;
use super::layout::KEY_PAD;
use super::spill::{BlockFile, Spill};
use super::vote::Vote;
use super::window::LayerStore;
use super::InfllmAttention;
use crate::attention::state::{read_ranges, read_ranges_from, write_ranges, Ranges, Section};
use crate::attention::{StateReader, StateWriter};
use crate::ggml::Context;

/// Where an instance stands in the text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TextPosition {
    /// Tokens processed.
    pub n_past: usize,
    /// Position held by window buffer slot 0.
    pub buffer_start: usize,
    /// Initial tokens taken so far (positions [0, n_init)).
    pub n_init: usize,
    /// First position neither initial nor in a block; everything from here
    /// on is in the window buffer.
    pub remainder_start: usize,
}

/// An instance's state besides its blocks' contents: the position, the
/// block count, the window buffer's tokens with their scores and the
/// initial tokens, and the layers' last vote.
#[derive(Clone)]
pub struct WindowState {
    pub pos: TextPosition,
    pub n_blocks: usize,
    pub bytes: Vec<u8>,
    vote: Option<Vote>,
}

/// What a saved session keeps beside an instance's sections.
#[derive(Serialize, Deserialize)]
pub struct SavedPosition {
    pub pos: TextPosition,
    pub n_blocks: usize,
    /// The kept block file holding the blocks' keys and values (None: the
    /// session's sections hold them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<SavedFile>,
    /// The blocks the layers voted for at the last step (`--retrieval
    /// vote`), which a step of one token after the load attends. Not its
    /// kept candidates: past `coarse_from` blocks the first step after a
    /// load scores every block, as the paper's retrieval does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vote: Option<Vec<i32>>,
}

/// A kept block file as a session names it.
#[derive(Serialize, Deserialize)]
pub struct SavedFile {
    path: String,
    /// Its identity (hex), from its header.
    id: String,
    /// Each layer's K and V pieces: (arena offset, file offset).
    pieces: Vec<[Vec<(usize, u64)>; 2]>,
}

/// A saved instance's state that passed `check_saved`: what to read, where.
pub struct CheckedState {
    pos: TextPosition,
    n_blocks: usize,
    window: Section,
    blocks: CheckedBlocks,
    vote: Option<Vote>,
}

/// Where a checked state's blocks are.
enum CheckedBlocks {
    /// In sections: each layer's keys, values and representative keys.
    Inline(Vec<[Section; 3]>),
    /// In a kept block file (None: the one this instance holds), checked
    /// against the sums; each layer's representative keys in a section.
    File {
        file: Option<BlockFile>,
        pieces: Vec<[Vec<(usize, u64)>; 2]>,
        sums: Vec<Vec<[u64; 2]>>,
        repr: Vec<Section>,
    },
}

impl InfllmAttention {
    /// The state to come back to with `restore` (taken between steps).
    pub fn window_state(&self) -> WindowState {
        WindowState {
            pos: self.pos,
            n_blocks: self.n_blocks(),
            bytes: read_ranges(self.window_ranges(self.pos.n_past - self.pos.buffer_start)),
            vote: self.vote.clone(),
        }
    }

    /// Returns to a `WindowState`: a snapshot of this run (its blocks are
    /// still here).
    pub fn restore(&mut self, s: &WindowState) -> anyhow::Result<()> {
        self.check_position(s.pos)?;
        ensure!(s.n_blocks <= self.n_blocks(), "inconsistent attention state");
        self.reserve(s.pos.n_past - s.pos.buffer_start + KEY_PAD)?;
        self.zero_scores();
        write_ranges(self.window_ranges(s.pos.n_past - s.pos.buffer_start), &s.bytes)?;
        for l in &mut self.layers {
            l.blocks.truncate(s.n_blocks);
        }
        self.pos = s.pos;
        self.rerotate = false;
        self.kept_pick = None;
        // Its candidates stay unused: `kept_pick` is dropped above.
        self.vote = s.vote.clone();
        Ok(())
    }

    /// Whether `c` is a position this instance can hold: ordered, within
    /// its text and buffer limits, made of whole blocks after the initial
    /// tokens (`commit` keeps these).
    fn check_position(&self, c: TextPosition) -> anyhow::Result<()> {
        let p = &self.p;
        ensure!(
            c.buffer_start <= c.remainder_start
                && c.n_init <= c.remainder_start
                && c.remainder_start <= c.n_past
                && c.n_past <= p.max_tokens
                && c.n_past - c.buffer_start + KEY_PAD <= self.max_cap,
            "inconsistent attention state (positions out of order or past the buffer)"
        );
        ensure!(
            c.n_init <= p.n_init
                && (c.remainder_start - c.n_init).is_multiple_of(p.block_size)
                && (c.remainder_start == c.n_init || c.n_init == p.n_init),
            "inconsistent attention state (initial tokens and blocks)"
        );
        Ok(())
    }

    /// Blocks stored for the text before `c.remainder_start`.
    fn blocks_before(&self, c: TextPosition) -> usize {
        match self.p.topk {
            0 => 0,
            _ => (c.remainder_start - c.n_init) / self.p.block_size,
        }
    }

    /// Writes the window state, then each layer's blocks: their keys and
    /// values, or, with the blocks in a kept file, their checksums (the
    /// file synced first); then their representative keys.
    pub fn state_write(&self, out: &mut dyn StateWriter) -> anyhow::Result<SavedPosition> {
        let s = self.window_state();
        out.section(&s.bytes)?;
        let kept = self.spill.as_ref().and_then(|s| s.kept_file());
        if let Some(f) = kept {
            f.sync_for_state()
                .with_context(|| format!("cannot write block file {}", f.path().display()))?;
        }
        for l in &self.layers {
            let [k, v, repr] = l.blocks.parts();
            match kept {
                Some(_) => out.section(&l.blocks.sums_bytes())?,
                None => {
                    out.section(k)?;
                    out.section(v)?;
                }
            }
            out.section(repr)?;
            // Blocks read from a file for the save leave memory again.
            l.blocks.release();
        }
        Ok(SavedPosition {
            pos: s.pos,
            n_blocks: s.n_blocks,
            file: kept.map(|f| SavedFile {
                path: f.path().to_str().expect("checked UTF-8").into(),
                id: format!("{:032x}", f.id().expect("kept")),
                pieces: self.layers.iter().map(|l| l.blocks.pieces()).collect(),
            }),
            vote: s.vote.filter(|v| v.after == s.pos.n_past).map(|v| v.ids),
        })
    }

    /// Checks what `state_write` wrote against this instance, the session's
    /// token count and the sections' lengths, before anything is read.
    pub fn check_saved(&self, saved: &SavedPosition, sections: &mut StateReader<'_>) -> anyhow::Result<CheckedState> {
        let c = saved.pos;
        ensure!(
            c.n_past == sections.n_past(),
            "inconsistent attention state ({} tokens in a session of {})",
            c.n_past,
            sections.n_past()
        );
        self.check_position(c)?;
        ensure!(
            saved.n_blocks == self.blocks_before(c),
            "inconsistent attention state ({} blocks where the positions make {})",
            saved.n_blocks,
            self.blocks_before(c)
        );
        let window_len = self.window_ranges(c.n_past - c.buffer_start).iter().map(|r| r.2).sum();
        let window = sections.next(window_len)?;
        let blocks = match &saved.file {
            None => CheckedBlocks::Inline(self.check_inline(saved.n_blocks, sections)?),
            Some(f) => self.check_file(f, saved.n_blocks, sections)?,
        };
        Ok(CheckedState {
            pos: c,
            n_blocks: saved.n_blocks,
            window,
            blocks,
            vote: self.check_vote(saved)?,
        })
    }

    /// A saved vote: `topk` distinct blocks of the session's (a vote is
    /// taken only among more blocks than that); none when this instance
    /// does not vote.
    fn check_vote(&self, saved: &SavedPosition) -> anyhow::Result<Option<Vote>> {
        let Some(ids) = &saved.vote else { return Ok(None) };
        let n = saved.n_blocks;
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        ensure!(
            ids.len() == self.p.topk && sorted.len() == ids.len() && ids.iter().all(|&i| i >= 0 && (i as usize) < n),
            "inconsistent attention state (its vote: {} blocks of {n})",
            ids.len()
        );
        Ok(self.voter.is_some().then(|| Vote {
            after: saved.pos.n_past,
            ids: ids.clone(),
            candidates: None,
        }))
    }

    /// Each layer's sections of `n` blocks saved in the session.
    fn check_inline(&self, n: usize, sections: &mut StateReader<'_>) -> anyhow::Result<Vec<[Section; 3]>> {
        self.layers
            .iter()
            .map(|l| {
                let lens = l.blocks.part_lens(n).context("more blocks than memory for them")?;
                let [k, v, repr] = lens.map(|len| sections.next(len));
                Ok([k?, v?, repr?])
            })
            .collect()
    }

    /// Opens the kept block file `saved` names (or takes this instance's,
    /// the same file) and checks `n` blocks of each layer in it against
    /// the session's checksums.
    fn check_file(&self, saved: &SavedFile, n: usize, sections: &mut StateReader<'_>) -> anyhow::Result<CheckedBlocks> {
        let id = u128::from_str_radix(&saved.id, 16).ok();
        ensure!(
            id.is_some() && saved.pieces.len() == self.layers.len(),
            "inconsistent attention state (its block file)"
        );
        let held = self
            .spill
            .as_ref()
            .and_then(|s| s.file.as_ref())
            .filter(|f| f.id() == id);
        let opened = match held {
            Some(_) => None,
            None => Some(BlockFile::keep(Path::new(&saved.path), false)?),
        };
        let file = held.or(opened.as_ref()).expect("one of them");
        ensure!(
            file.id() == id,
            "block file {} is not the one the session was saved with",
            file.path().display()
        );
        let mut sums = Vec::new();
        let mut repr = Vec::new();
        for (l, pieces) in self.layers.iter().zip(&saved.pieces) {
            let lens = l.blocks.part_lens(n).context("more blocks than memory for them")?;
            let sum_section = sections.next(n * 16)?;
            let sum_bytes = sections.read_section(sum_section)?;
            sums.push(l.blocks.check_file(file, pieces, &sum_bytes, n)?);
            repr.push(sections.next(lens[2])?);
        }
        Ok(CheckedBlocks::File {
            file: opened,
            pieces: saved.pieces.clone(),
            sums,
            repr,
        })
    }

    /// Reads a state `check_saved` passed, in place of this one's. A
    /// failure while blocks are taken from a file leaves nothing held.
    pub fn load_saved(&mut self, c: CheckedState, sections: &mut StateReader<'_>) -> anyhow::Result<()> {
        match c.blocks {
            CheckedBlocks::Inline(parts) => {
                self.fit_budget(c.n_blocks)?;
                let mut file = self.spill.as_mut().and_then(|s| s.file.as_mut());
                for (l, parts) in self.layers.iter_mut().zip(parts) {
                    l.blocks.read_from(sections, c.n_blocks, parts, file.as_deref_mut())?;
                }
            }
            CheckedBlocks::File {
                file,
                pieces,
                sums,
                repr,
            } => {
                if let Err(e) = self.adopt_file(file, &pieces, sums, repr, sections) {
                    // Layers may map either file: all leave them.
                    self.clear();
                    self.layers.iter_mut().for_each(|l| l.blocks.to_memory());
                    let spill = self.spill.as_mut().expect("set by adopt_file");
                    (spill.file, spill.moved) = (None, false);
                    return Err(e);
                }
            }
        }
        self.reserve(c.pos.n_past - c.pos.buffer_start + KEY_PAD)?;
        self.zero_scores();
        read_ranges_from(
            self.window_ranges(c.pos.n_past - c.pos.buffer_start),
            sections,
            c.window,
        )?;
        self.pos = c.pos;
        self.rerotate = false;
        self.kept_pick = None;
        self.vote = c.vote;
        Ok(())
    }

    /// Maps every layer's blocks from a kept file (`file`; None: the one
    /// held), which then holds the blocks to come.
    fn adopt_file(
        &mut self,
        file: Option<BlockFile>,
        pieces: &[[Vec<(usize, u64)>; 2]],
        sums: Vec<Vec<[u64; 2]>>,
        repr: Vec<Section>,
        sections: &mut StateReader<'_>,
    ) -> anyhow::Result<()> {
        if let Some(file) = file {
            match &mut self.spill {
                Some(s) => s.adopt(file),
                None => self.spill = Some(Spill::adopted(file)),
            }
        }
        let spill = self.spill.as_mut().expect("set above or held");
        spill.moved = true;
        let file = spill.file.as_ref().expect("a file");
        for (((l, p), s), r) in self.layers.iter_mut().zip(pieces).zip(sums).zip(repr) {
            l.blocks.adopt(file, p, s, sections, r)?;
        }
        Ok(())
    }

    /// The tensor byte ranges holding the state of `n` buffered tokens:
    /// their keys, values and scores (those past them are zero: written
    /// by `zero_scores` before these), the initial tokens.
    pub(super) fn window_ranges(&self, n: usize) -> Ranges<'_> {
        let layer = |l| layer_ranges(&self.ctx, self.cap, self.shape, l, n);
        self.layers.iter().flat_map(layer).collect()
    }
}

/// `window_ranges` of layer `l`, its window buffer of `cap` slots in `ctx`.
pub(super) fn layer_ranges<'c>(
    ctx: &'c Context,
    cap: usize,
    shape: BlockShape,
    l: &LayerStore,
    n: usize,
) -> Ranges<'c> {
    let e = shape.n_embd_kv();
    let t = |id| ctx.tensor(id);
    let mut out = vec![(t(l.k_raw), 0, n * e * 2)];
    for id in [l.k_rot_t, l.v_t] {
        out.extend((0..e).map(|c| (t(id), c * cap * 2, n * 2)));
    }
    out.extend((0..shape.n_head).map(|h| (t(l.score), h * cap * 4, n * 4)));
    for id in [l.init_k, l.init_v_t] {
        out.push((t(id), 0, t(id).nbytes()));
    }
    out
}
