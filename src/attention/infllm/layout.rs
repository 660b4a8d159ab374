//! Where a step's keys lie in the window buffer: the index maths of one
//! step, kept apart from the buffers they index.

use super::{InfllmAttention, Role};

/// Key counts are padded to a multiple of this (with masked keys): in a
/// prompt step so that ggml's tiled matmul kernels apply, in decode so that
/// consecutive steps share their graph.
pub(super) const KEY_PAD: usize = 32;

/// A chunk's queries attend in tiles of at most this many, each over only
/// the local keys its queries can see: causal masking would otherwise waste
/// half the local work of a first chunk (and chunk / n_local of later ones).
const MAX_QUERY_TILE: usize = 128;
/// Tiles are halved down to this many queries while their logits pass
/// `InfllmParams::tile_bytes`.
const MIN_QUERY_TILE: usize = 32;

/// Where a step's keys lie: its tiles' local ranges and its global keys.
/// Positions are token indices in the text.
pub(super) struct Layout {
    /// Position of the step's first token.
    pub start: usize,
    pub n_tokens: usize,
    /// Position held by window buffer slot 0.
    pub buffer_start: usize,
    /// First position neither initial nor in a block.
    pub remainder_start: usize,
    pub n_local: usize,
    /// Keys of the blocks attended and the initial tokens.
    pub n_fixed: usize,
    /// Whether tokens that left a query's window and are in no block stay
    /// visible to it (InfLLM), or are gone (a model's sliding window).
    pub remainder: bool,
    /// Queries per tile (`with_fitting_tile`).
    pub query_tile: usize,
}

/// The shape of a decode step's graph besides its input data: two decode
/// steps of equal shape build the same graph (`Attention::reuse_key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeShape {
    /// Buffer slot of the first key the step reads (local and remainder).
    pub span_start: usize,
    /// Local keys read (padded).
    pub span_len: usize,
    /// Remainder keys read (padded).
    pub n_rem: usize,
    pub n_blocks: usize,
    pub n_init: usize,
    /// The window buffer's capacity: a grown buffer has new tensors.
    pub cap: usize,
    /// Whether the step copies out its retrieval scores (`trace`).
    pub traced: bool,
    /// Whether it takes the last coarse pass's candidates (`coarse.rs`).
    pub reuses_candidates: bool,
    /// Whether its layers attend the last step's vote (`vote.rs`).
    pub voted: bool,
    /// Whether its voters score the vote's kept candidates alone.
    pub vote_candidates: bool,
}

impl Layout {
    /// Position of the first key in query `q`'s window.
    pub fn window_start(&self, q: usize) -> usize {
        (q + 1).saturating_sub(self.n_local).max(self.buffer_start)
    }

    /// End of the remainder: the tokens that left the window of the step's
    /// last query and are in no block.
    pub fn rem_end(&self) -> usize {
        self.window_start(self.start + self.n_tokens - 1)
            .max(self.remainder_start)
    }

    /// Remainder keys from `rem_lo`, padded (masked outside the tokens
    /// that left the window): in a prompt step so that the global keys are
    /// a multiple of `KEY_PAD`, in decode to a multiple of it.
    pub fn n_rem(&self) -> usize {
        if !self.remainder {
            return 0;
        }
        match (self.rem_end() - self.remainder_start, self.n_tokens) {
            (0, 1) => 0,
            (_, 1) => (self.rem_end() - self.rem_lo()).next_multiple_of(KEY_PAD),
            (0, _) if self.n_fixed.is_multiple_of(KEY_PAD) => 0,
            (n, _) => (self.n_fixed + n).next_multiple_of(KEY_PAD) - self.n_fixed,
        }
    }

    /// Position of the first local key of the tile starting at query `q0`.
    /// A decode step's keys, local and remainder alike, start at the
    /// remainder rounded down to `KEY_PAD` (masked up to where each part
    /// starts) and are padded like a prompt's: the span moves only every
    /// `KEY_PAD` tokens, so consecutive steps share a graph shape.
    pub fn lo_pos(&self, q0: usize) -> usize {
        match self.n_tokens {
            1 => (self.remainder_start - self.remainder_start % KEY_PAD).max(self.buffer_start),
            _ => self.window_start(self.start + q0),
        }
    }

    /// First remainder key (a position).
    pub fn rem_lo(&self) -> usize {
        match self.n_tokens {
            1 => self.lo_pos(0),
            _ => self.remainder_start,
        }
    }

    /// This layout with the largest query tile, from `MAX_QUERY_TILE`
    /// halving down to `MIN_QUERY_TILE`, whose logits for `n_head` heads
    /// fit `bytes`.
    fn with_fitting_tile(mut self, n_head: usize, bytes: usize) -> Self {
        let local = (self.start + self.n_tokens - self.buffer_start).min(self.n_local + MAX_QUERY_TILE);
        let keys = local + self.n_fixed + self.n_rem();
        while self.query_tile > MIN_QUERY_TILE && self.query_tile * n_head * keys * 4 > bytes {
            self.query_tile /= 2;
        }
        self
    }

    /// Local keys (padded) of the tile starting at query `q0`; padding
    /// reaches into later, masked buffer slots, never past the buffer.
    pub fn n_keys(&self, q0: usize) -> usize {
        let n_q = self.query_tile.min(self.n_tokens - q0);
        (self.start + q0 + n_q - self.lo_pos(q0)).next_multiple_of(KEY_PAD)
    }
}

impl InfllmAttention {
    /// The layout of a step of `n_tokens` from the current position.
    pub(super) fn layout(&self, n_tokens: usize) -> Layout {
        let p = &self.p;
        Layout {
            start: self.pos.n_past,
            n_tokens,
            buffer_start: self.pos.buffer_start,
            remainder_start: self.pos.remainder_start,
            n_local: p.n_local,
            n_fixed: self.n_blocks().min(p.topk) * p.block_size + self.pos.n_init,
            remainder: self.role == Role::Memory,
            query_tile: MAX_QUERY_TILE,
        }
        .with_fitting_tile(self.shape.n_head, p.tile_bytes)
    }

    /// The shape of the next decode step's graph; none for a step that
    /// re-rotates the buffer (its graph has that extra work).
    pub fn decode_shape(&self) -> Option<DecodeShape> {
        let l = self.layout(1);
        (!self.rerotate).then(|| DecodeShape {
            span_start: l.lo_pos(0) - self.pos.buffer_start,
            span_len: l.n_keys(0),
            n_rem: l.n_rem(),
            n_blocks: self.n_blocks(),
            n_init: self.pos.n_init,
            cap: self.cap,
            traced: self.tracing(self.n_blocks()),
            reuses_candidates: self.reuses_candidates(1),
            voted: self.voted_blocks(1).is_some(),
            vote_candidates: self.vote_candidates(1).is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prompt step of 512 tokens after `start`, SmolLM2's window.
    fn prompt_at(start: usize, n_fixed: usize) -> Layout {
        Layout {
            start,
            n_tokens: 512,
            buffer_start: start.saturating_sub(4096),
            remainder_start: start.saturating_sub(4096),
            n_local: 4096,
            n_fixed,
            remainder: true,
            query_tile: MAX_QUERY_TILE,
        }
    }

    #[test]
    fn tiles_shrink_while_their_logits_pass_the_budget() {
        let fit = |l: Layout, n_head| l.with_fitting_tile(n_head, 16 << 20).query_tile;
        // 512 keys x 9 heads x 128 queries: 2.4 MB.
        assert_eq!(fit(prompt_at(0, 0), 9), 128);
        // ~6.3K keys (window, 16 blocks of 128, initial tokens): 29 MB at 128.
        let deep = || prompt_at(131_072, 16 * 128 + 128);
        assert_eq!(fit(deep(), 9), 64);
        // Gemma 3 270M's 4 heads: 13 MB at 128.
        assert_eq!(fit(deep(), 4), 128);
        // Many heads never go below the floor.
        assert_eq!(fit(deep(), 64), MIN_QUERY_TILE);
    }
}
