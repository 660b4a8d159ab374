//! A step's inputs, declared before its graph is built: positions, the
//! query tiles with their masks, the key ranges of a decode step, index
//! tensors. Everything that moves from one decode step to the next is
//! here, as data, so that one graph serves many steps.

use super::layout::Layout;
use super::{InfllmAttention, Retrieval};
use crate::compute::Step;
use crate::ggml::Tensor;

/// One step's inputs, shared by all layers of an instance.
pub(super) struct InfllmInputs<'a> {
    /// Window buffer slots of the step's tokens (where they are appended,
    /// and the positions their local queries rotate at).
    pub pos_local: Tensor<'a>,
    /// Where global queries rotate (`--mem-distance`, by default
    /// `n_local - 1`; further with `--retrieval ordered`), for every token.
    pub pos_global: Tensor<'a>,
    /// With `--retrieval ordered`: where the query that picks blocks
    /// rotates (as `pos_global` would without it, so the pick is the same).
    pub pos_retrieve: Option<Tensor<'a>>,
    /// The chunk's query tiles (one in decode).
    pub tiles: Vec<Tile<'a>>,
    /// Block indices when every block is attended (no retrieval needed).
    pub all_blocks: Option<Tensor<'a>>,
    /// `--shared-retrieval`: the blocks every layer attends (I32 [topk]),
    /// voted for at the step before.
    pub voted: Option<Tensor<'a>>,
    /// The blocks the voters score instead of every block (I32
    /// [CANDIDATES * topk]), at a step that reuses candidates (`vote.rs`).
    pub vote_candidates: Option<Tensor<'a>>,
    /// Slots 0..n for re-rotating the whole buffer after it moved.
    pub rerotate: Option<Tensor<'a>>,
    /// Ones [1, T, n_head], to sum probabilities over the chunk's queries.
    pub ones_heads: Option<Tensor<'a>>,
    /// Ones [1, T], to average the chunk's queries for retrieval.
    pub ones: Option<Tensor<'a>>,
    pub n_tokens: usize,
    /// Decode: the valid ranges of the local keys and of the remainder
    /// within their (padded) key spans.
    pub ranges: Option<DecodeRanges<'a>>,
    /// Where the appended columns land in the transposed buffers, for the
    /// standard-op path: I32 [n_embd_kv * T] (`LayerTensors::put_columns`).
    pub cells: Option<Tensor<'a>>,
    /// The same for re-rotated keys, when the buffer moved.
    pub rerotate_cells: Option<Tensor<'a>>,
    pub n_blocks: usize,
    pub n_selected: usize,
    /// The step takes the last coarse pass's candidates (`coarse.rs`).
    pub reuse_candidates: bool,
    pub n_init: usize,
    /// Remainder keys: buffer slots [rem_lo, rem_lo + n_rem).
    pub rem_lo: usize,
    pub n_rem: usize,
    /// `--retrieval ordered`: where each global key rotates.
    pub memory_pos: Option<MemoryPositions<'a>>,
}

/// The positions of the global keys in text order (`Retrieval::Ordered`):
/// I32 [n_init], [n_selected * block_size], [n_rem], each present when
/// its part is.
#[derive(Clone, Copy)]
pub(super) struct MemoryPositions<'a> {
    pub init: Option<Tensor<'a>>,
    pub blocks: Option<Tensor<'a>>,
    pub rem: Option<Tensor<'a>>,
}

/// A decode step's valid key ranges, relative to its span's start.
#[derive(Clone, Copy)]
pub(super) struct DecodeRanges<'a> {
    pub local: KeyRange<'a>,
    pub remainder: KeyRange<'a>,
}

/// Keys [from, to) of a span: I32 [2] for the custom kernels, and for the
/// standard-op path an additive mask over the span (0 inside, -inf out).
#[derive(Clone, Copy)]
pub(super) struct KeyRange<'a> {
    pub range: Tensor<'a>,
    pub mask: Option<Tensor<'a>>,
}

/// Queries [q0, q0 + n_q) of a step and the local keys they see: buffer
/// slots [lo, lo + n_keys), padded with masked keys.
pub(super) struct Tile<'a> {
    pub q0: usize,
    pub n_q: usize,
    pub lo: usize,
    pub n_keys: usize,
    /// [n_keys + global keys, n_q] for the standard ops; none for a single
    /// query (decode), whose key ranges come as data instead.
    pub mask: Option<Tensor<'a>>,
    /// I32 [4, n_q], each query's visible spans, for our softmax; none for
    /// a single query.
    pub spans: Option<Tensor<'a>>,
}

/// Which inputs a step declares: for our kernels (`custom`), for the
/// standard ops (`standard`), or both when its layers differ.
#[derive(Clone, Copy)]
struct Paths {
    custom: bool,
    standard: bool,
}

impl InfllmAttention {
    /// Declares this step's positions, masks and index inputs.
    pub(super) fn declare_inputs<'a>(&self, step: &mut Step<'a>, n_tokens: usize) -> InfllmInputs<'a> {
        let p = &self.p;
        let pos = self.pos;
        let (start, end) = (pos.n_past, pos.n_past + n_tokens);
        let lay = self.layout(n_tokens);
        let n_blocks = self.n_blocks();
        let n_selected = n_blocks.min(p.topk);
        let name = |what: &str| format!("{}.{what}", self.name());
        // Which paths this step's layers take: our kernels, standard ops.
        let standard = self.layers.iter().any(|l| l.standard_ops);
        let custom = self.layers.iter().any(|l| !l.standard_ops);
        let tiles = (0..n_tokens)
            .step_by(lay.query_tile)
            .map(|q0| self.tile(step, &lay, q0, Paths { custom, standard }))
            .collect();
        // Decode: within the keys from `lo_pos` on, the local ones are those
        // from the window's start; the remainder's, those that left it.
        let ranges = (n_tokens == 1).then(|| {
            let lo = lay.lo_pos(0);
            let mut range = |what: &str, r: [usize; 2], span: usize| {
                let r = r.map(|x| x - lo);
                let mask = standard.then(|| {
                    let m = (0..span).map(|j| {
                        if (r[0]..r[1]).contains(&j) {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    });
                    step.input_f32(&name(&format!("{what}_mask")), &[span as i64], m.collect())
                });
                let range = step.input_i32(&name(what), &[2], r.map(|x| x as i32).to_vec());
                KeyRange { range, mask }
            };
            DecodeRanges {
                local: range("local_range", [lay.window_start(start), end], lay.n_keys(0)),
                remainder: range("remainder_range", [pos.remainder_start, lay.rem_end()], lay.n_rem()),
            }
        });

        let t = n_tokens as i64;
        let n_valid = pos.n_past - pos.buffer_start;
        let nh = self.shape.n_head;
        let slots: Vec<i32> = (start..end).map(|q| (q - pos.buffer_start) as i32).collect();
        let mut cells = |what: &str, slots: &[i32]| {
            standard.then(|| {
                let e = self.shape.n_embd_kv();
                let c = (0..e).flat_map(|c| slots.iter().map(move |&s| (c * self.cap) as i32 + s));
                step.input_i32(&name(what), &[(e * slots.len()) as i64], c.collect())
            })
        };
        // Slots 0..n_valid, only after the buffer moved (at most once a chunk).
        let rerotate_slots = (self.rerotate && n_valid > 0).then(|| (0..n_valid as i32).collect::<Vec<_>>());
        let rerotate_cells = rerotate_slots.as_deref().and_then(|r| cells("rerotate_cells", r));
        let cells = cells("cells", &slots);
        let (global_pos, memory_pos) = self.memory_positions(step, &lay, n_selected);
        InfllmInputs {
            pos_local: step.input_i32(&name("pos_local"), &[t], slots),
            pos_global: step.input_i32(&name("pos_global"), &[t], vec![global_pos; n_tokens]),
            pos_retrieve: memory_pos.map(|_| {
                let d = p.global_position() as i32;
                step.input_i32(&name("pos_retrieve"), &[t], vec![d; n_tokens])
            }),
            tiles,
            all_blocks: (n_selected > 0 && n_blocks <= p.topk)
                .then(|| step.input_i32(&name("all_blocks"), &[n_blocks as i64], (0..n_blocks as i32).collect())),
            voted: self
                .voted_blocks(n_tokens)
                .map(|ids| step.input_i32(&name("voted"), &[ids.len() as i64], ids.to_vec())),
            vote_candidates: self
                .vote_candidates(n_tokens)
                .map(|ids| step.input_i32(&name("vote_candidates"), &[ids.len() as i64], ids.to_vec())),
            rerotate: rerotate_slots.map(|r| step.input_i32(&name("rerotate"), &[n_valid as i64], r)),
            ones_heads: (n_tokens > 1)
                .then(|| step.input_f32(&name("ones_heads"), &[1, t, nh as i64], vec![1.0; n_tokens * nh])),
            ones: (n_tokens > 1 && n_blocks > p.topk)
                .then(|| step.input_f32(&name("ones"), &[1, t], vec![1.0; n_tokens])),
            n_tokens,
            ranges,
            cells,
            rerotate_cells,
            n_blocks,
            n_selected,
            reuse_candidates: self.reuses_candidates(n_tokens),
            n_init: pos.n_init,
            rem_lo: lay.rem_lo() - pos.buffer_start,
            n_rem: lay.n_rem(),
            memory_pos,
        }
    }

    /// Where global queries rotate, and with `--retrieval ordered` where
    /// each global key does: initial tokens at 0.., the selected blocks
    /// (sorted by their place in the text) after them, then the remainder;
    /// the query so that the last memory token the step's last query sees
    /// lies at `global_position()`.
    fn memory_positions<'a>(
        &self,
        step: &mut Step<'a>,
        lay: &Layout,
        n_selected: usize,
    ) -> (i32, Option<MemoryPositions<'a>>) {
        let d = self.p.global_position() as i32;
        if self.p.retrieval != Retrieval::Ordered {
            return (d, None);
        }
        let n_init = self.pos.n_init as i32;
        let n_block_keys = (n_selected * self.p.block_size) as i32;
        let rem_first = n_init + n_block_keys + lay.rem_lo() as i32 - lay.remainder_start as i32;
        let n_memory = n_init + n_block_keys + (lay.rem_end() - lay.remainder_start) as i32;
        let mut input = |what: &str, from: i32, n: usize| {
            (n > 0).then(|| {
                let name = format!("{}.{what}", self.name());
                step.input_i32(&name, &[n as i64], (from..from + n as i32).collect())
            })
        };
        let positions = MemoryPositions {
            init: input("pos_init", 0, self.pos.n_init),
            blocks: input("pos_blocks", n_init, n_block_keys as usize),
            rem: input("pos_rem", rem_first, lay.n_rem()),
        };
        ((n_memory - 1).max(0) + d, Some(positions))
    }

    /// The tile of queries from `q0`: its local key range and, for a prompt
    /// step, which of [local | blocks | initial | remainder] keys each query
    /// sees: as spans for our softmax, as an additive mask for the standard
    /// ops, each where `paths` asks, both from `visible_spans`.
    fn tile<'a>(&self, step: &mut Step<'a>, lay: &Layout, q0: usize, paths: Paths) -> Tile<'a> {
        let n_q = lay.query_tile.min(lay.n_tokens - q0);
        let lo_pos = lay.lo_pos(q0);
        let n_keys = lay.n_keys(q0);
        let width = n_keys + lay.n_fixed + lay.n_rem();
        let prompt = lay.n_tokens > 1;
        let spans: Vec<[usize; 4]> = (0..n_q)
            .map(|i| self.visible_spans(lay, lo_pos, n_keys, q0 + i))
            .collect();
        let name = |what: &str| format!("{}.{what}{q0}", self.name());
        let mask = (prompt && paths.standard).then(|| {
            let mut mask = vec![f32::NEG_INFINITY; width * n_q];
            for (row, s) in mask.chunks_mut(width).zip(&spans) {
                row[s[0]..s[1]].fill(0.0);
                row[s[2]..s[3]].fill(0.0);
            }
            step.input_f32(&name("mask"), &[width as i64, n_q as i64], mask)
        });
        let spans = (prompt && paths.custom).then(|| {
            let bounds = spans.iter().flatten().map(|&b| b as i32).collect();
            step.input_i32(&name("spans"), &[4, n_q as i64], bounds)
        });
        Tile {
            q0,
            n_q,
            lo: lo_pos - lay.buffer_start,
            n_keys,
            mask,
            spans,
        }
    }

    /// The keys query `i` of the step sees, as spans [a0, a1) of the local
    /// keys (those within `n_local` positions back, itself included) and
    /// [b0, b1) of the global ones (every block and initial token, and the
    /// remainder's tokens that left its window).
    fn visible_spans(&self, lay: &Layout, lo_pos: usize, n_keys: usize, i: usize) -> [usize; 4] {
        let q = lay.start + i;
        let n_local = self.p.n_local;
        let a1 = (q + 1).saturating_sub(lo_pos).min(n_keys);
        let a0 = (q + 1).saturating_sub(lo_pos + n_local).min(a1);
        let seen_rem = (q + 1).saturating_sub(lay.remainder_start + n_local).min(lay.n_rem());
        [a0, a1, n_keys, n_keys + lay.n_fixed + seen_rem]
    }
}
