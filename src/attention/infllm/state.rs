//! An instance's state to come back to: snapshots within a run and the
//! sections of a saved session. Blocks are only ever appended, so a
//! snapshot remembers their count; a saved session writes them out.

use serde::{Deserialize, Serialize};

use super::layout::KEY_PAD;
use super::InfllmAttention;
use crate::attention::state::{read_ranges, write_ranges, Ranges};
use crate::attention::{StateReader, StateWriter};

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
/// initial tokens.
#[derive(Clone)]
pub struct WindowState {
    pub pos: TextPosition,
    pub n_blocks: usize,
    pub bytes: Vec<u8>,
}

/// What a saved session keeps beside an instance's sections.
#[derive(Serialize, Deserialize)]
pub struct SavedPosition {
    pub pos: TextPosition,
    pub n_blocks: usize,
}

impl InfllmAttention {
    /// The state to come back to with `restore` (taken between steps).
    pub fn window_state(&self) -> WindowState {
        WindowState {
            pos: self.pos,
            n_blocks: self.n_blocks(),
            bytes: read_ranges(self.window_ranges(self.pos.n_past - self.pos.buffer_start)),
        }
    }

    /// Returns to a `WindowState`: a snapshot of this run (its blocks are
    /// still here) or a saved session's, after its blocks were mapped.
    pub fn restore(&mut self, s: &WindowState) -> anyhow::Result<()> {
        self.restore_parts(s.pos, s.n_blocks, &s.bytes)
    }

    fn restore_parts(&mut self, c: TextPosition, n_blocks: usize, bytes: &[u8]) -> anyhow::Result<()> {
        anyhow::ensure!(
            n_blocks <= self.n_blocks()
                && c.buffer_start <= c.remainder_start
                && c.remainder_start <= c.n_past
                && c.n_past <= self.p.max_tokens
                && c.n_init <= self.p.n_init
                && c.n_past - c.buffer_start + KEY_PAD <= self.cap,
            "inconsistent attention state"
        );
        write_ranges(self.window_ranges(c.n_past - c.buffer_start), bytes)?;
        for l in &mut self.layers {
            l.blocks.truncate(n_blocks);
        }
        self.pos = c;
        self.rerotate = false;
        Ok(())
    }

    /// Writes the window state, then each layer's blocks (mappable).
    pub fn state_write(&self, out: &mut dyn StateWriter) -> anyhow::Result<SavedPosition> {
        let s = self.window_state();
        out.section(&s.bytes, false)?;
        for l in &self.layers {
            for part in l.blocks.parts() {
                out.section(part, true)?;
            }
        }
        Ok(SavedPosition {
            pos: s.pos,
            n_blocks: s.n_blocks,
        })
    }

    /// Reads back what `state_write` wrote, mapping the blocks from the file.
    pub fn state_read(&mut self, saved: &SavedPosition, sections: &mut StateReader<'_>) -> anyhow::Result<()> {
        let bytes = sections.next_bytes()?;
        let n = saved.n_blocks;
        for l in &mut self.layers {
            let mut offsets = [0u64; 3];
            for (o, len) in offsets.iter_mut().zip(l.blocks.part_lens(n)) {
                *o = sections.next_offset(len)?;
            }
            l.blocks.map_from(sections.file, n, offsets)?;
        }
        self.restore_parts(saved.pos, n, bytes)
    }

    /// The tensor byte ranges holding the state of `n` buffered tokens:
    /// their keys and values, all scores (zero past the tokens), the
    /// initial tokens.
    fn window_ranges(&self, n: usize) -> Ranges<'_> {
        let e = self.shape.n_embd_kv();
        let mut out = Vec::new();
        for l in &self.layers {
            let t = |id| self.ctx.tensor(id);
            out.push((t(l.k_raw), 0, n * e * 2));
            for id in [l.k_rot_t, l.v_t] {
                out.extend((0..e).map(|c| (t(id), c * self.cap * 2, n * 2)));
            }
            for id in [l.score, l.init_k, l.init_v_t] {
                out.push((t(id), 0, t(id).nbytes()));
            }
        }
        out
    }
}
