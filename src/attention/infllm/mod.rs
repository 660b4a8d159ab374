//! InfLLM memory attention (`shared/docs/infllm.md`): each query attends to
//! its local window with true relative positions and, under the same
//! softmax, to the initial tokens, the top-k memory blocks retrieved for its
//! chunk, and the evicted remainder, all seen un-rotated from one fixed
//! distance (`n_local - 1`).
//!
//! Storage per layer:
//! - a linear *window buffer* of the most recent tokens (everything not yet
//!   initial or in a block): un-rotated keys, keys rotated at their
//!   position relative to the buffer start (bounded, never the raw index;
//!   stored transposed, a row per channel, for our logits kernel),
//!   transposed values, and each token's accumulated local attention score
//!   per query head. When it fills, the buffer drops what it no longer
//!   needs, moves the rest to the front and re-rotates the keys.
//! - the initial tokens' K and V (f32);
//! - the block store (`memory`): quantized K and V, representative keys.
//!
//! Retrieval runs inside the step graph (`mul_mat` against the
//! representative keys, then `top_k`), so a chunk is one graph over all
//! layers. A prompt chunk gathers the chosen blocks (`get_rows`, dequantized)
//! and runs tiled matmuls; a decode step reads them in their stored type
//! with our kernels (`block_scores`, `block_values`). What moves from one
//! decode step to the next (the new token's slot, the window's valid keys)
//! is input data, so the engine runs one graph for many steps
//! (`decode_shape`).

mod memory;
mod params;

pub use memory::{representative_key, BlockShape, BlockStore};
pub use params::{InfllmParams, BLOCK_TYPES, NO_CAP_TOKENS};

use half::f16;

use super::full::{mul_mat_capped, soft_cap, softmax_scale};
use super::{read_ranges, write_ranges, AttentionError, LayerAttn, LayerQkv, Ranges};
use crate::compute::Step;
use crate::ggml::{Buffer, Context, GgmlType, Tensor, TensorId};

/// Key counts are padded to a multiple of this (with masked keys): in a
/// prompt step so that ggml's tiled matmul kernels apply, in decode so that
/// consecutive steps share their graph.
const KEY_PAD: usize = 32;

/// A chunk's queries attend in tiles of this many, each over only the
/// local keys its queries can see: causal masking would otherwise waste
/// half the local work of a first chunk (and chunk / n_local of later ones).
const QUERY_TILE: usize = 128;

struct LayerStore {
    k_raw: TensorId,
    k_rot_t: TensorId,
    v_t: TensorId,
    score: TensorId,
    init_k: TensorId,
    init_v_t: TensorId,
    blocks: BlockStore,
}

/// An instance's position in the text: what `WindowState` restores.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub n_past: usize,
    pub base: usize,
    pub n_init_cur: usize,
    pub rem_start: usize,
    pub n_blocks: usize,
}

/// An instance's state besides its blocks: the counters, the window
/// buffer's tokens with their scores, the initial tokens. Blocks are only
/// ever appended, so a snapshot remembers just their count.
#[derive(Clone)]
pub struct WindowState {
    pub counters: Counters,
    pub bytes: Vec<u8>,
}

/// Model dimensions the attention needs.
#[derive(Debug, Clone, Copy)]
pub struct HeadShape {
    pub n_layer: usize,
    pub head_dim: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
}

pub struct InfllmAttention {
    p: InfllmParams,
    shape: BlockShape,
    layers: Vec<LayerStore>,
    _buffer: Buffer,
    ctx: Context,
    /// Window buffer capacity in tokens.
    cap: usize,
    /// Tokens processed.
    n_past: usize,
    /// Position held by window buffer index 0.
    base: usize,
    /// Initial tokens taken so far (positions [0, n_init_cur)).
    n_init_cur: usize,
    /// First position neither initial nor in a block; everything from here
    /// on is in the window buffer.
    rem_start: usize,
    /// The buffer moved: rotated keys must be recomputed in the next step.
    rerotate: bool,
}

/// One step's inputs, shared by all layers.
pub struct InfllmInputs<'a> {
    pos_local: Tensor<'a>,
    pos_global: Tensor<'a>,
    /// The chunk's query tiles (one in decode).
    tiles: Vec<Tile<'a>>,
    /// Block indices when every block is attended (no retrieval needed).
    all_blocks: Option<Tensor<'a>>,
    /// Positions 0..n for re-rotating the whole buffer after it moved.
    rerotate: Option<Tensor<'a>>,
    /// Ones [1, T, n_head], to sum probabilities over the chunk's queries.
    ones_heads: Option<Tensor<'a>>,
    /// Ones [1, T], to average the chunk's queries for retrieval.
    ones: Option<Tensor<'a>>,
    n_tokens: usize,
    /// Decode: the local keys' and the remainder's valid ranges within
    /// their (padded) key spans, I32 [2] each.
    ranges: Option<(Tensor<'a>, Tensor<'a>)>,
    n_blocks: usize,
    n_selected: usize,
    n_init: usize,
    /// Remainder keys: buffer indices [rem_lo, rem_lo + n_rem).
    rem_lo: usize,
    n_rem: usize,
}

/// Queries [q0, q0 + n_q) of a step and the local keys they see: buffer
/// indices [lo, lo + n_keys), padded with masked keys.
struct Tile<'a> {
    q0: usize,
    n_q: usize,
    lo: usize,
    n_keys: usize,
    /// [n_keys + global keys, n_q]; none for a single query (decode),
    /// whose key ranges come as data instead.
    mask: Option<Tensor<'a>>,
}

/// Where a step's keys lie: its tiles' local ranges and its global keys.
struct Layout {
    start: usize,
    n_tokens: usize,
    base: usize,
    rem_start: usize,
    n_local: usize,
    /// Keys of the blocks attended and the initial tokens.
    n_fixed: usize,
}

impl Layout {
    /// Position of the first key in query `q`'s window.
    fn window_start(&self, q: usize) -> usize {
        (q + 1).saturating_sub(self.n_local).max(self.base)
    }

    /// End of the remainder: the tokens that left the window of the step's
    /// last query and are in no block.
    fn rem_end(&self) -> usize {
        self.window_start(self.start + self.n_tokens - 1).max(self.rem_start)
    }

    /// Remainder keys from `rem_lo`, padded (masked outside the tokens
    /// that left the window): in a prompt step so that the global keys are
    /// a multiple of `KEY_PAD`, in decode to a multiple of it.
    fn n_rem(&self) -> usize {
        match (self.rem_end() - self.rem_start, self.n_tokens) {
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
    fn lo_pos(&self, q0: usize) -> usize {
        match self.n_tokens {
            1 => (self.rem_start - self.rem_start % KEY_PAD).max(self.base),
            _ => self.window_start(self.start + q0),
        }
    }

    /// First remainder key (a position).
    fn rem_lo(&self) -> usize {
        match self.n_tokens {
            1 => self.lo_pos(0),
            _ => self.rem_start,
        }
    }

    /// Local keys (padded) of the tile starting at query `q0`; padding
    /// reaches into later, masked buffer slots, never past the buffer.
    fn n_keys(&self, q0: usize) -> usize {
        let n_q = QUERY_TILE.min(self.n_tokens - q0);
        (self.start + q0 + n_q - self.lo_pos(q0)).next_multiple_of(KEY_PAD)
    }
}

impl InfllmAttention {
    pub fn new(p: InfllmParams, h: HeadShape) -> anyhow::Result<Self> {
        p.validate(h.head_dim)?;
        let shape = BlockShape {
            block_size: p.block_size,
            head_dim: h.head_dim,
            n_head: h.n_head,
            n_head_kv: h.n_head_kv,
            type_k: p.type_k,
            type_v: p.type_v,
        };
        // Window + one chunk + a partial block, plus a chunk of slack so the
        // buffer moves at most once per chunk, plus room to pad key ranges.
        let cap = p.n_local + 2 * p.chunk + p.block_size + 2 * KEY_PAD;
        let e = shape.n_embd_kv() as i64;
        let ctx = Context::new(6 * h.n_layer, 0);
        let n_init = p.n_init.max(1) as i64;
        let max_blocks = p.max_tokens.div_ceil(p.block_size);
        let mut layers = Vec::with_capacity(h.n_layer);
        for il in 0..h.n_layer {
            let t = |ty, ne: &[i64], name: &str| ctx.id(ctx.new_tensor(ty, ne).set_name(&format!("{name}_l{il}")));
            layers.push(LayerStore {
                k_raw: t(GgmlType::F16, &[e, cap as i64], "win_k_raw"),
                k_rot_t: t(GgmlType::F16, &[cap as i64, e], "win_k_rot_t"),
                v_t: t(GgmlType::F16, &[cap as i64, e], "win_v_t"),
                score: t(GgmlType::F32, &[cap as i64, h.n_head as i64], "win_score"),
                init_k: t(GgmlType::F32, &[e, n_init], "init_k"),
                init_v_t: t(GgmlType::F32, &[n_init, e], "init_v_t"),
                blocks: BlockStore::new(shape, if p.topk > 0 { max_blocks } else { 0 })?,
            });
        }
        let buffer = Buffer::alloc_context(&ctx)?;
        Ok(Self {
            p,
            shape,
            layers,
            _buffer: buffer,
            ctx,
            cap,
            n_past: 0,
            base: 0,
            n_init_cur: 0,
            rem_start: 0,
            rerotate: false,
        })
    }

    pub fn params(&self) -> &InfllmParams {
        &self.p
    }

    pub fn n_past(&self) -> usize {
        self.n_past
    }

    pub fn n_blocks(&self) -> usize {
        self.layers.first().map_or(0, |l| l.blocks.len())
    }

    /// Bytes of quantized block memory (all layers).
    pub fn block_bytes(&self) -> usize {
        self.layers.iter().map(|l| l.blocks.bytes()).sum()
    }

    /// Bytes of the fixed-size buffers (window, initial tokens; all layers).
    pub fn window_bytes(&self) -> usize {
        self._buffer.size()
    }

    pub fn clear(&mut self) {
        self.n_past = 0;
        self.base = 0;
        self.n_init_cur = 0;
        self.rem_start = 0;
        self.rerotate = false;
        for l in &mut self.layers {
            l.blocks.clear();
            let score = self.ctx.tensor(l.score);
            score.write_bytes(0, &vec![0u8; score.nbytes()]);
        }
    }

    /// The state to come back to with `restore` (taken between steps).
    pub fn window_state(&self) -> WindowState {
        WindowState {
            counters: Counters {
                n_past: self.n_past,
                base: self.base,
                n_init_cur: self.n_init_cur,
                rem_start: self.rem_start,
                n_blocks: self.n_blocks(),
            },
            bytes: read_ranges(self.window_ranges(self.n_past - self.base)),
        }
    }

    /// Returns to the state `c` and `bytes` (a `WindowState`'s) describe:
    /// a snapshot of this run (its blocks are still here) or a saved
    /// session after `map_blocks`.
    pub fn restore(&mut self, c: Counters, bytes: &[u8]) -> anyhow::Result<()> {
        anyhow::ensure!(
            c.n_blocks <= self.n_blocks()
                && c.base <= c.rem_start
                && c.rem_start <= c.n_past
                && c.n_past <= self.p.max_tokens
                && c.n_init_cur <= self.p.n_init
                && c.n_past - c.base + KEY_PAD <= self.cap,
            "inconsistent attention state"
        );
        write_ranges(self.window_ranges(c.n_past - c.base), bytes)?;
        for l in &mut self.layers {
            l.blocks.truncate(c.n_blocks);
        }
        self.n_past = c.n_past;
        self.base = c.base;
        self.n_init_cur = c.n_init_cur;
        self.rem_start = c.rem_start;
        self.rerotate = false;
        Ok(())
    }

    /// Each layer's block bytes (keys, values, representative keys).
    pub fn block_parts(&self) -> impl Iterator<Item = [&[u8]; 3]> {
        self.layers.iter().map(|l| l.blocks.parts())
    }

    /// Byte lengths of one layer's `block_parts` for `n` blocks.
    pub fn block_part_lens(&self, n: usize) -> [usize; 3] {
        self.layers.first().map_or([0; 3], |l| l.blocks.part_lens(n))
    }

    /// Maps `n` saved blocks per layer from `file`; `offsets` yields each
    /// layer's three part offsets, in `block_parts` order.
    pub fn map_blocks(
        &mut self,
        file: &std::fs::File,
        n: usize,
        mut offsets: impl FnMut() -> anyhow::Result<[u64; 3]>,
    ) -> anyhow::Result<()> {
        for l in &mut self.layers {
            l.blocks.map_from(file, n, offsets()?)?;
        }
        Ok(())
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

    /// Makes room in the window buffer for `n_tokens` more tokens.
    pub fn prepare(&mut self, n_tokens: usize) -> Result<(), AttentionError> {
        assert!(n_tokens <= self.p.chunk, "steps are at most one chunk");
        if self.n_past + n_tokens > self.p.max_tokens {
            return Err(AttentionError::ContextFull {
                needed: self.n_past + n_tokens,
                n_ctx: self.p.max_tokens,
            });
        }
        // Steps use up to KEY_PAD slots past their last token (masked padding).
        if self.n_past + n_tokens - self.base + KEY_PAD <= self.cap {
            return Ok(());
        }
        // Drop what precedes the remainder; move the rest to the front.
        let shift = self.rem_start - self.base;
        let kept = self.n_past - self.rem_start;
        assert!(
            shift > 0 && kept + n_tokens + KEY_PAD <= self.cap,
            "window buffer too small"
        );
        let e = self.shape.n_embd_kv();
        let cap = self.cap;
        for l in &self.layers {
            // k_raw: one row of `cap` tokens; v_t and score: a row per channel / head.
            shift_items(self.ctx.tensor(l.k_raw), 1, cap, e * 2, shift, kept);
            shift_items(self.ctx.tensor(l.v_t), e, cap, 2, shift, kept);
            shift_items(self.ctx.tensor(l.score), self.shape.n_head, cap, 4, shift, kept);
        }
        self.base = self.rem_start;
        self.rerotate = true;
        Ok(())
    }

    /// The shape of a decode step's graph: where its key ranges start in
    /// the window buffer and how long they are (padded), the blocks and
    /// initial tokens. Two decode steps of equal shape build the same graph;
    /// none for a step that re-rotates the buffer.
    pub fn decode_shape(&self) -> Option<[usize; 5]> {
        let l = self.layout(1);
        let lo = l.lo_pos(0) - self.base;
        (!self.rerotate).then_some([lo, l.n_keys(0), l.n_rem(), self.n_blocks(), self.n_init_cur])
    }

    fn layout(&self, n_tokens: usize) -> Layout {
        let p = &self.p;
        Layout {
            start: self.n_past,
            n_tokens,
            base: self.base,
            rem_start: self.rem_start,
            n_local: p.n_local,
            n_fixed: self.n_blocks().min(p.topk) * p.block_size + self.n_init_cur,
        }
    }

    /// Declares this step's positions, masks and index inputs.
    pub fn begin<'a>(&self, step: &mut Step<'a>, n_tokens: usize) -> InfllmInputs<'a> {
        let p = &self.p;
        let (start, end) = (self.n_past, self.n_past + n_tokens);
        let lay = self.layout(n_tokens);
        let n_blocks = self.n_blocks();
        let n_selected = n_blocks.min(p.topk);
        let n_init = self.n_init_cur;
        let (n_fixed, n_rem) = (lay.n_fixed, lay.n_rem());
        let n_global = n_fixed + n_rem;

        let mut tiles = Vec::new();
        for q0 in (0..n_tokens).step_by(QUERY_TILE) {
            let n_q = QUERY_TILE.min(n_tokens - q0);
            let lo_pos = lay.lo_pos(q0);
            let n_keys = lay.n_keys(q0);
            // One mask over [local | blocks | initial | remainder] keys. A
            // lone query (decode) has key ranges instead (`ranges`).
            let mask = (n_tokens > 1).then(|| {
                let width = n_keys + n_global;
                let mut mask = vec![f32::NEG_INFINITY; width * n_q];
                for (i, row) in mask.chunks_mut(width).enumerate() {
                    let q = start + q0 + i;
                    for (j, m) in row[..n_keys].iter_mut().enumerate() {
                        let d = q as isize - (lo_pos + j) as isize;
                        if (0..p.n_local as isize).contains(&d) {
                            *m = 0.0;
                        }
                    }
                    row[n_keys..n_keys + n_fixed].fill(0.0);
                    for (j, m) in row[width - n_rem..].iter_mut().enumerate() {
                        if q >= self.rem_start + j + p.n_local {
                            *m = 0.0;
                        }
                    }
                }
                step.input_f32(&[width as i64, n_q as i64], mask)
            });
            tiles.push(Tile {
                q0,
                n_q,
                lo: lo_pos - self.base,
                n_keys,
                mask,
            });
        }
        // Decode: within the keys from `lo_pos` on, the local ones are those
        // from the window's start; the remainder's, those that left it.
        let ranges = (n_tokens == 1).then(|| {
            let lo = lay.lo_pos(0);
            let mut range = |r: [usize; 2]| step.input_i32(&[2], r.map(|x| (x - lo) as i32).to_vec());
            (
                range([lay.window_start(start), end]),
                range([self.rem_start, lay.rem_end()]),
            )
        });

        let t = n_tokens as i64;
        let n_valid = self.n_past - self.base;
        InfllmInputs {
            pos_local: step.input_i32(&[t], (start..end).map(|q| (q - self.base) as i32).collect()),
            pos_global: step.input_i32(&[t], vec![p.n_local as i32 - 1; n_tokens]),
            tiles,
            all_blocks: (n_selected > 0 && n_blocks <= p.topk)
                .then(|| step.input_i32(&[n_blocks as i64], (0..n_blocks as i32).collect())),
            rerotate: (self.rerotate && n_valid > 0)
                .then(|| step.input_i32(&[n_valid as i64], (0..n_valid as i32).collect())),
            ones_heads: (n_tokens > 1).then(|| {
                step.input_f32(
                    &[1, t, self.shape.n_head as i64],
                    vec![1.0; n_tokens * self.shape.n_head],
                )
            }),
            ones: (n_tokens > 1 && n_blocks > p.topk).then(|| step.input_f32(&[1, t], vec![1.0; n_tokens])),
            n_tokens,
            ranges,
            n_blocks,
            n_selected,
            n_init,
            rem_lo: lay.rem_lo() - self.base,
            n_rem,
        }
    }

    /// Returns [head_dim * n_head, T].
    pub fn attend<'a>(
        &'a self,
        step: &mut Step<'a>,
        inp: &InfllmInputs<'a>,
        x: LayerQkv<'a>,
        la: &LayerAttn,
    ) -> Tensor<'a> {
        let g = step.ctx;
        let LayerQkv {
            layer,
            q,
            k,
            v,
            freq_factors,
        } = x;
        let s = &self.shape;
        let l = &self.layers[layer];
        let (hd, nkv, nh, e) = (
            s.head_dim as i64,
            s.n_head_kv as i64,
            s.n_head as i64,
            s.n_embd_kv() as i64,
        );
        let t = inp.n_tokens as i64;
        let k_raw = self.ctx.tensor(l.k_raw);
        let k_rot_t = self.ctx.tensor(l.k_rot_t);
        let v_t = self.ctx.tensor(l.v_t);
        let row = k_raw.nb()[1]; // bytes of one token's keys (f16)
        let head = row / nkv as usize;
        let vt_row = v_t.nb()[1]; // bytes of one channel over the buffer (k_rot_t, v_t)
        let rope = |x, pos| g.rope(x, pos, freq_factors, &la.rope);

        // After the buffer moved, rotate every kept key at its new index.
        if let Some(idx) = inp.rerotate {
            let n = idx.ne()[0];
            let raw = g.view(k_raw, &[hd, nkv, n], &[head, row], 0);
            step.graph
                .expand(g.put_columns(k_rot_t, g.reshape(rope(raw, idx), &[e, n]), idx));
        }

        // Append the chunk: raw keys, rotated keys and values (transposed),
        // at the slots of their positions relative to the buffer start. The
        // slots come as input data, so a decode graph does not depend on them.
        let slots = inp.pos_local;
        step.graph.expand(g.set_rows(k_raw, g.reshape(k, &[e, t]), slots));
        step.graph
            .expand(g.put_columns(k_rot_t, g.reshape(rope(k, slots), &[e, t]), slots));
        step.graph.expand(g.put_columns(v_t, g.reshape(v, &[e, t]), slots));

        if t == 1 {
            return self.attend_one(step, inp, x, la);
        }

        // Logits over [local | blocks | initial | remainder]; one softmax per
        // query tile.
        let q_local = g.permute(rope(q, inp.pos_local), [0, 2, 1, 3]); // [hd, T, n_head]
        let keys = |src: Tensor<'a>, n: usize, lo: usize| {
            g.view(src, &[hd, nkv, n as i64], &[head, row], lo * row) // [hd, n_head_kv, n]
        };
        let q_global = rope(q, inp.pos_global);
        let block_rows = (inp.n_selected > 0).then(|| {
            inp.all_blocks.unwrap_or_else(|| {
                // Retrieval: the chunk's mean global query against every block's representative key.
                let q_flat = g.reshape(q_global, &[hd * nh, t]);
                let q_mean = match inp.ones {
                    Some(ones) => g.scale(g.out_prod(q_flat, ones), 1.0 / t as f32),
                    None => q_flat,
                };
                let scores = g.mul_mat(l.blocks.repr_tensor(g), q_mean);
                g.top_k(g.reshape(scores, &[inp.n_blocks as i64]), inp.n_selected as i32)
            })
        });
        let n_blocks_keys = inp.n_selected * s.block_size;
        // Global keys, un-rotated, f32, [hd, n, n_head_kv] per part.
        let mut global_keys = Vec::new();
        if let Some(idx) = block_rows {
            // Blocks store keys channel-major: [block_size, hd, n_head_kv] each.
            let (bs, n_sel) = (s.block_size as i64, inp.n_selected as i64);
            let kb = g.reshape(g.get_rows(l.blocks.k_tensor(g), idx), &[bs, hd, nkv, n_sel]);
            let kb = g.cont(g.permute(kb, [1, 0, 3, 2])); // [hd, bs, n_sel, nkv]
            global_keys.push(g.reshape(kb, &[hd, n_blocks_keys as i64, nkv]));
        }
        if inp.n_init > 0 {
            let ki = self.ctx.tensor(l.init_k);
            let kb1 = ki.nb()[1];
            let ki = g.view(ki, &[hd, nkv, inp.n_init as i64], &[kb1 / nkv as usize, kb1], 0);
            global_keys.push(g.permute(ki, [0, 2, 1, 3]));
        }
        if inp.n_rem > 0 {
            global_keys.push(g.permute(g.cast(keys(k_raw, inp.n_rem, inp.rem_lo), GgmlType::F32), [0, 2, 1, 3]));
        }
        // One matmul over all global keys (a small copy) instead of one per
        // part, whose logits would each be copied into place.
        let global_keys = global_keys.into_iter().reduce(|a, b| g.concat(a, b, 1));
        let q_global = g.permute(q_global, [0, 2, 1, 3]);

        let transposed = |src, n, lo| transposed_rows(g, src, s, n, lo);
        let n_global = n_blocks_keys + inp.n_init + inp.n_rem;
        let init_v_t = self.ctx.tensor(l.init_v_t);
        // The global values gathered transposed, in f16, so that P·V runs as
        // one tiled matmul.
        let global_values = (n_global > 0).then(|| {
            let mut parts = Vec::new();
            if let Some(idx) = block_rows {
                let (bs, n_sel) = (s.block_size as i64, inp.n_selected as i64);
                let vb = g.reshape(g.get_rows(l.blocks.v_tensor(g), idx), &[bs, e, n_sel]);
                let vb = g.cont(g.permute(vb, [0, 2, 1, 3])); // [bs, n_sel, e]
                parts.push(g.reshape(vb, &[bs * n_sel, e]));
            }
            if inp.n_init > 0 {
                parts.push(g.view(init_v_t, &[inp.n_init as i64, e], &[init_v_t.nb()[1]], 0));
            }
            if inp.n_rem > 0 {
                let vr = g.view(v_t, &[inp.n_rem as i64, e], &[vt_row], inp.rem_lo * 2);
                parts.push(g.cast(vr, GgmlType::F32));
            }
            let all = parts.into_iter().reduce(|a, b| g.concat(a, b, 0)).expect("non-empty");
            transposed(g.cast(all, GgmlType::F16), n_global, 0)
        });

        let score = self.ctx.tensor(l.score);
        let ones = inp.ones_heads.expect("multi-token steps have ones");
        let mut outs = Vec::new();
        for tile in &inp.tiles {
            // The tile's queries: rows [q0, q0 + n_q) of a [x, T, n_head] tensor.
            let rows = |x: Tensor<'a>| {
                let nb = x.nb();
                g.view(x, &[x.ne()[0], tile.n_q as i64, nh], &[nb[1], nb[2]], tile.q0 * nb[1])
            };
            // Queries copied contiguous: our kernel and ggml's tiled ones take only those.
            let local = g.key_scores(transposed(k_rot_t, tile.n_keys, tile.lo), g.cont(rows(q_local)), None);
            let mut logits = vec![soft_cap(g, local, la)];
            if let Some(k) = global_keys {
                logits.push(mul_mat_capped(g, k, g.cont(rows(q_global)), la));
            }
            let probs = g.soft_max_ext(g.join_rows(&logits), tile.mask, softmax_scale(la));

            // Outputs: probabilities times values, local then global.
            let pnb = probs.nb();
            let part =
                |n: usize, off: usize| g.view(probs, &[n as i64, tile.n_q as i64, nh], &[pnb[1], pnb[2]], off * 4);
            let p_local = part(tile.n_keys, 0);
            let mut out = g.mul_mat(transposed(v_t, tile.n_keys, tile.lo), p_local);
            if let Some(v) = global_values {
                out = g.add(out, g.mul_mat(v, part(n_global, tile.n_keys)));
            }
            outs.push(g.permute(out, [0, 2, 1, 3])); // [hd, n_head, n_q]

            // Accumulate each local key's probability mass, per query head
            // (only blocks use it). Tiles overlap: graph order sums them.
            if self.p.topk > 0 {
                let n = tile.n_keys as i64;
                let mass = g.reshape(g.out_prod(p_local, rows(ones)), &[n, nh]);
                let acc = g.view(score, &[n, nh], &[score.nb()[1]], tile.lo * 4);
                step.graph.expand(g.add_inplace(acc, mass));
            }
        }
        let out = match outs.len() {
            1 => g.cont(outs[0]),
            _ => outs.into_iter().reduce(|a, b| g.concat(a, b, 2)).expect("non-empty"),
        };
        g.reshape(out, &[hd * nh, t])
    }

    /// Attention of a single new token (decode), reading every key and value
    /// once: our kernels read the query heads sharing a KV head together
    /// (`key_scores` and `value_sums` over the window: ggml's f16 matmul
    /// of three columns took 4x and 1.8x as long), and the retrieved
    /// blocks in their stored type (no gathered copy; `mul_mat_id` with an
    /// expert per block and KV head spent most of its time on per-expert
    /// bookkeeping that grows with the text). Measurements: docs/perf.md.
    /// The new token is already appended.
    fn attend_one<'a>(
        &'a self,
        step: &mut Step<'a>,
        inp: &InfllmInputs<'a>,
        x: LayerQkv<'a>,
        la: &LayerAttn,
    ) -> Tensor<'a> {
        let g = step.ctx;
        let LayerQkv {
            layer, q, freq_factors, ..
        } = x;
        let s = &self.shape;
        let l = &self.layers[layer];
        let (hd, nkv, nh) = (s.head_dim as i64, s.n_head_kv as i64, s.n_head as i64);
        let r = nh / nkv;
        let k_raw = self.ctx.tensor(l.k_raw);
        let k_rot_t = self.ctx.tensor(l.k_rot_t);
        let v_t = self.ctx.tensor(l.v_t);
        let row = k_raw.nb()[1];
        let head = row / nkv as usize;
        let rope = |x, pos| g.rope(x, pos, freq_factors, &la.rope);
        let tile = &inp.tiles[0];
        // [hd, group, n_head_kv]: head h = kv * group + j.
        let q_local = g.reshape(rope(q, inp.pos_local), &[hd, r, nkv]);
        let q_global = g.reshape(rope(q, inp.pos_global), &[hd, r, nkv]);
        let keys = |src: Tensor<'a>, n: usize, lo: usize| {
            g.permute(g.view(src, &[hd, nkv, n as i64], &[head, row], lo * row), [0, 2, 1, 3])
        };
        let transposed = |src, n, lo| transposed_rows(g, src, s, n, lo);
        // The local window through our kernel: a matmul over key rows spends
        // most of its time in a horizontal sum per dot product (docs/perf.md).
        let (local_keys, left_keys) = inp.ranges.expect("decode steps have key ranges");
        let local = g.key_scores(transposed(k_rot_t, tile.n_keys, tile.lo), q_local, Some(local_keys));
        let mut logits = vec![soft_cap(g, local, la)];

        let n_blocks_keys = inp.n_selected * s.block_size;
        // The chosen blocks, read in their stored type by our kernels.
        let block_ids = (inp.n_selected > 0).then(|| {
            inp.all_blocks.unwrap_or_else(|| {
                let scores = g.mul_mat(l.blocks.repr_tensor(g), g.reshape(q_global, &[hd * nh, 1]));
                g.top_k(g.reshape(scores, &[inp.n_blocks as i64]), inp.n_selected as i32)
            })
        });
        if let Some(ids) = block_ids {
            logits.push(soft_cap(g, g.block_scores(l.blocks.k_tensor(g), ids, q_global), la));
        }
        if inp.n_init > 0 {
            let ki = self.ctx.tensor(l.init_k);
            let kb1 = ki.nb()[1];
            let ki = g.view(ki, &[hd, nkv, inp.n_init as i64], &[kb1 / nkv as usize, kb1], 0);
            logits.push(mul_mat_capped(g, g.permute(ki, [0, 2, 1, 3]), q_global, la));
        }
        if inp.n_rem > 0 {
            let rem = mul_mat_capped(g, keys(k_raw, inp.n_rem, inp.rem_lo), q_global, la);
            logits.push(g.mask_outside(rem, left_keys));
        }
        // One softmax over all query heads' rows as one matrix (ggml splits
        // rows, not heads, between threads: [W, 3, 3] left one thread 6 rows).
        let logits = g.join_rows(&logits);
        let width = logits.ne()[0] as usize;
        let probs = g.soft_max_ext(g.reshape(logits, &[width as i64, nh]), None, softmax_scale(la));
        let probs = g.reshape(probs, &[width as i64, r, nkv]);

        let part = |n: usize, off: usize| {
            g.view(
                probs,
                &[n as i64, r, nkv],
                &[width * 4, width * 4 * r as usize],
                off * 4,
            )
        };
        let mut out = g.value_sums(
            transposed(v_t, tile.n_keys, tile.lo),
            part(tile.n_keys, 0),
            Some(local_keys),
        );
        let mut off = tile.n_keys;
        if let Some(ids) = block_ids {
            let probs = part(n_blocks_keys, off);
            out = g.add(out, g.block_values(l.blocks.v_tensor(g), ids, probs, hd)); // [hd, r, nkv]
            off += n_blocks_keys;
        }
        if inp.n_init > 0 {
            out = g.add(
                out,
                g.mul_mat(
                    transposed(self.ctx.tensor(l.init_v_t), inp.n_init, 0),
                    part(inp.n_init, off),
                ),
            );
            off += inp.n_init;
        }
        if inp.n_rem > 0 {
            out = g.add(
                out,
                g.value_sums(
                    transposed(v_t, inp.n_rem, inp.rem_lo),
                    part(inp.n_rem, off),
                    Some(left_keys),
                ),
            );
        }

        // Accumulate each local key's probability (per query head; only blocks use it).
        if self.p.topk > 0 {
            let score = self.ctx.tensor(l.score);
            let n = tile.n_keys as i64;
            let mass = g.view(probs, &[n, nh], &[width * 4], 0);
            let acc = g.view(score, &[n, nh], &[score.nb()[1]], tile.lo * 4);
            step.graph.expand(g.add_inplace(acc, mass));
        }
        g.reshape(out, &[hd * nh, 1])
    }

    /// After a step: the chunk is in the window; tokens that left every
    /// future query's window become initial tokens or memory blocks.
    pub fn commit(&mut self, n_tokens: usize) -> anyhow::Result<()> {
        self.n_past += n_tokens;
        self.rerotate = false;
        let evict_end = self.n_past.saturating_sub(self.p.n_local);
        if self.n_init_cur < self.p.n_init && evict_end > self.rem_start {
            let take = self.p.n_init.min(evict_end) - self.rem_start;
            for l in &self.layers {
                self.take_initial(l, take);
            }
            self.n_init_cur += take;
            self.rem_start += take;
        }
        while evict_end >= self.rem_start + self.p.block_size {
            if self.p.topk > 0 {
                for il in 0..self.layers.len() {
                    self.form_block(il)?;
                }
            }
            self.rem_start += self.p.block_size;
        }
        Ok(())
    }

    /// Copies `take` tokens from the remainder start into the initial tokens.
    fn take_initial(&self, l: &LayerStore, take: usize) {
        let e = self.shape.n_embd_kv();
        let idx = self.rem_start - self.base;
        let k = read_f16(self.ctx.tensor(l.k_raw), idx * e * 2, take * e);
        let init_k = self.ctx.tensor(l.init_k);
        init_k.write_bytes(self.n_init_cur * e * 4, f32_bytes(&k).as_slice());
        let v_t = self.ctx.tensor(l.v_t);
        let init_v_t = self.ctx.tensor(l.init_v_t);
        let n_init = init_v_t.ne()[0] as usize;
        for c in 0..e {
            let v = read_f16(v_t, (c * self.cap + idx) * 2, take);
            init_v_t.write_bytes((c * n_init + self.n_init_cur) * 4, f32_bytes(&v).as_slice());
        }
    }

    /// Turns the block_size tokens at the remainder start of layer `il` into a memory block.
    fn form_block(&mut self, il: usize) -> anyhow::Result<()> {
        let s = self.shape;
        let (bs, e) = (s.block_size, s.n_embd_kv());
        let idx = self.rem_start - self.base;
        let l = &self.layers[il];
        let k = read_f16(self.ctx.tensor(l.k_raw), idx * e * 2, bs * e);
        let v_t_win = self.ctx.tensor(l.v_t);
        let mut v_t = Vec::with_capacity(bs * e);
        for c in 0..e {
            v_t.extend(read_f16(v_t_win, (c * self.cap + idx) * 2, bs));
        }
        let score = self.ctx.tensor(l.score);
        let mut scores = Vec::with_capacity(bs * s.n_head);
        for h in 0..s.n_head {
            scores.extend(read_f32(score, (h * self.cap + idx) * 4, bs));
        }
        let repr = representative_key(&s, self.p.repr_topk, &k, &scores);
        self.layers[il].blocks.push(&k, &v_t, &repr)
    }
}

/// Slots [lo, lo + n) of a transposed buffer ([slots, n_embd_kv]: values or
/// rotated keys) as [n, head_dim, n_head_kv].
fn transposed_rows<'a>(g: &'a Context, src: Tensor<'a>, s: &BlockShape, n: usize, lo: usize) -> Tensor<'a> {
    let nb1 = src.nb()[1];
    let (hd, nkv) = (s.head_dim as i64, s.n_head_kv as i64);
    g.view(src, &[n as i64, hd, nkv], &[nb1, nb1 * hd as usize], lo * src.nb()[0])
}

fn read_f16(t: Tensor<'_>, offset: usize, n: usize) -> Vec<f32> {
    let mut bytes = vec![0u8; n * 2];
    t.read_bytes(offset, &mut bytes);
    bytes
        .chunks_exact(2)
        .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

fn read_f32(t: Tensor<'_>, offset: usize, n: usize) -> Vec<f32> {
    let mut bytes = vec![0u8; n * 4];
    t.read_bytes(offset, &mut bytes);
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// In each of `n_rows` rows of `per_row` items of `item` bytes, moves items
/// [shift, shift + kept) to the front and zeroes the rest.
fn shift_items(t: Tensor<'_>, n_rows: usize, per_row: usize, item: usize, shift: usize, kept: usize) {
    let row_bytes = per_row * item;
    let mut buf = vec![0u8; row_bytes];
    for r in 0..n_rows {
        t.read_bytes(r * row_bytes, &mut buf);
        buf.copy_within(shift * item..(shift + kept) * item, 0);
        buf[kept * item..].fill(0);
        t.write_bytes(r * row_bytes, &buf);
    }
}
