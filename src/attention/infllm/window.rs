//! One InfLLM instance over a set of layers: the window buffer of recent
//! tokens, the initial tokens, the block store, and eviction: making room
//! before a step (`prepare`) and, after it, turning tokens that left every
//! future window into initial tokens or memory blocks (`commit`).

use half::f16;

use super::blocks::{representative_key, BlockShape, BlockStore};
use super::coarse::KeptPick;
use super::layout::KEY_PAD;
use super::spill::Spill;
use super::state::{layer_ranges, TextPosition};
use super::trace::Tracer;
use super::vote::{Vote, Voter};
use super::{HeadShape, InfllmParams};
use crate::attention::state::{read_ranges, write_ranges};
use crate::attention::{alloc_per_layer, AttentionError, LayerPlace};
use crate::ggml::{Buffer, BufferType, Context, GgmlType, Tensor, TensorId};

/// One layer's storage. The window buffer holds, per slot (a token
/// position relative to `TextPosition::buffer_start`), its un-rotated key,
/// its key rotated at the slot index (transposed: a row per channel, for
/// the logits kernel), its value (transposed) and its accumulated local
/// attention score per query head.
pub(super) struct LayerStore {
    pub k_raw: TensorId,
    pub k_rot_t: TensorId,
    pub v_t: TensorId,
    pub score: TensorId,
    /// The initial tokens' keys [n_embd_kv, n_init] and values transposed, f32.
    pub init_k: TensorId,
    pub init_v_t: TensorId,
    pub blocks: BlockStore,
    /// Standard ggml ops only (a device's layer).
    pub standard_ops: bool,
}

/// What an instance serves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Role {
    /// Layers attending the whole past: InfLLM proper.
    Memory,
    /// A model's sliding-window layers: tokens leaving the window are
    /// dropped at once, never attended again (no remainder).
    SlidingWindow,
}

/// InfLLM attention of the layers that share one set of settings.
pub struct InfllmAttention {
    pub(super) p: InfllmParams,
    pub(super) shape: BlockShape,
    pub(super) layers: Vec<LayerStore>,
    /// The window buffers and initial tokens, one buffer per device.
    buffers: Vec<Buffer>,
    /// Each layer's buffer type (where its window lives).
    bufts: Vec<BufferType>,
    pub(super) ctx: Context,
    /// Window buffer capacity in tokens: it grows with the text, doubling,
    /// up to `max_cap`, so that a short text allocates little.
    pub(super) cap: usize,
    pub(super) max_cap: usize,
    pub(super) pos: TextPosition,
    /// The buffer moved: rotated keys must be recomputed in the next step.
    pub(super) rerotate: bool,
    pub(super) role: Role,
    /// Recording retrieval (`trace`).
    pub(super) tracer: Option<Tracer>,
    /// Blocks on disk (`spill`; None: always in memory).
    pub(super) spill: Option<Spill>,
    /// The decode step whose coarse pass chose the kept candidates.
    pub(super) kept_pick: Option<KeptPick>,
    /// `--shared-retrieval`: the voters' scores, and their last vote.
    pub(super) voter: Option<Voter>,
    pub(super) vote: Option<Vote>,
}

/// Window buffer slots to start with: a first prompt step (512 tokens by
/// default) and its padding.
const FIRST_CAP: usize = 640;

impl InfllmAttention {
    /// An instance over the layers `places` describes (one per layer);
    /// `block_cache`: bytes of device memory for blocks, all layers on a
    /// device together (None: a quarter of its free memory).
    pub fn new(
        p: InfllmParams,
        h: HeadShape,
        role: Role,
        places: &[LayerPlace],
        block_cache: Option<usize>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(places.len() == h.n_layer, "one place per layer");
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
        let max_cap = p.n_local + 2 * p.chunk + p.block_size + 2 * KEY_PAD;
        let cap = max_cap.min(FIRST_CAP);
        let ctx = Context::new(6 * h.n_layer, 0);
        let max_blocks = p.max_tokens.div_ceil(p.block_size);
        let stored_blocks = if p.topk > 0 { max_blocks } else { 0 };
        let mut layers = (0..h.n_layer)
            .map(|il| LayerStore::new(&ctx, il, &p, shape, cap, stored_blocks, places[il].standard_ops))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let per_layer: Vec<Vec<TensorId>> = layers.iter().map(|l| l.window_tensors().to_vec()).collect();
        let bufts = places
            .iter()
            .map(LayerPlace::buffer_type)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let buffers = alloc_per_layer(&ctx, &per_layer, &bufts)?;
        if p.topk > 0 {
            cache_blocks(&mut layers, places, block_cache, (max_blocks, p.topk))?;
        }
        let voter = (p.shared && p.topk > 0)
            .then(|| Voter::new(&bufts, max_blocks))
            .transpose()?;
        Ok(Self {
            p,
            shape,
            layers,
            buffers,
            bufts,
            ctx,
            cap,
            max_cap,
            pos: TextPosition::default(),
            rerotate: false,
            role,
            tracer: None,
            spill: None,
            kept_pick: None,
            voter,
            vote: None,
        })
    }

    /// Prefix of this instance's step input names (unique per step).
    pub(super) fn name(&self) -> &'static str {
        match self.role {
            Role::Memory => "mem",
            Role::SlidingWindow => "win",
        }
    }

    pub fn params(&self) -> &InfllmParams {
        &self.p
    }

    pub fn n_past(&self) -> usize {
        self.pos.n_past
    }

    pub fn n_blocks(&self) -> usize {
        self.layers.first().map_or(0, |l| l.blocks.len())
    }

    /// Bytes of quantized block memory (all layers).
    pub fn block_bytes(&self) -> usize {
        self.layers.iter().map(|l| l.blocks.bytes()).sum()
    }

    /// Blocks copied into device block caches on demand (all layers).
    pub fn block_loads(&self) -> usize {
        self.layers.iter().map(|l| l.blocks.cache_loads()).sum()
    }

    /// Bytes of the fixed-size buffers (window, initial tokens; all layers).
    pub fn window_bytes(&self) -> usize {
        self.buffers.iter().map(Buffer::size).sum()
    }

    pub fn clear(&mut self) {
        self.pos = TextPosition::default();
        self.rerotate = false;
        self.kept_pick = None;
        self.vote = None;
        for l in &mut self.layers {
            l.blocks.clear();
        }
        self.zero_scores();
    }

    /// Zeroes every buffered token's score: tokens enter the buffer with none.
    pub fn zero_scores(&self) {
        for l in &self.layers {
            let score = self.ctx.tensor(l.score);
            score.write_bytes(0, &vec![0u8; score.nbytes()]);
        }
    }

    /// Makes room in the window buffer for `n_tokens` more tokens.
    pub fn prepare(&mut self, n_tokens: usize) -> Result<(), AttentionError> {
        assert!(n_tokens <= self.p.chunk, "steps are at most one chunk");
        let TextPosition {
            n_past,
            buffer_start,
            remainder_start,
            ..
        } = self.pos;
        if n_past + n_tokens > self.p.max_tokens {
            return Err(AttentionError::ContextFull {
                needed: n_past + n_tokens,
                n_ctx: self.p.max_tokens,
            });
        }
        // Steps use up to KEY_PAD slots past their last token (masked padding).
        let slots = n_past + n_tokens - buffer_start + KEY_PAD;
        self.reserve(slots.min(self.max_cap))
            .map_err(|e| AttentionError::NoMemory(format!("{e:#}")))?;
        if slots <= self.cap {
            return Ok(());
        }
        // Drop what precedes the remainder; move the rest to the front.
        let shift = remainder_start - buffer_start;
        let kept = n_past - remainder_start;
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
        self.pos.buffer_start = remainder_start;
        self.rerotate = true;
        Ok(())
    }

    /// Grows the window buffers to `slots` slots at least (doubling, or
    /// straight to `max_cap` once a doubling passes half of it: the last
    /// growth copies the most), keeping what they hold, a layer at a time
    /// (the old and new buffers coexist: no third copy of the whole). The
    /// step graph kept for reuse refers to the old tensors: `decode_shape`
    /// names the capacity.
    pub(super) fn reserve(&mut self, slots: usize) -> anyhow::Result<()> {
        if slots <= self.cap {
            return Ok(());
        }
        anyhow::ensure!(
            slots <= self.max_cap,
            "{slots} slots: more than the window buffer's {}",
            self.max_cap
        );
        let doubled = slots.max(2 * self.cap);
        let cap = if 2 * doubled > self.max_cap {
            self.max_cap
        } else {
            doubled
        };
        let n = self.pos.n_past - self.pos.buffer_start;
        let ctx = Context::new(6 * self.layers.len(), 0);
        let windows: Vec<[TensorId; 6]> = (0..self.layers.len())
            .map(|il| window_tensors(&ctx, il, &self.p, self.shape, cap))
            .collect();
        let per_layer: Vec<Vec<TensorId>> = windows.iter().map(|w| w.to_vec()).collect();
        let buffers = alloc_per_layer(&ctx, &per_layer, &self.bufts)?;
        for (l, w) in self.layers.iter_mut().zip(windows) {
            let held = read_ranges(layer_ranges(&self.ctx, self.cap, self.shape, l, n));
            l.set_window(w);
            write_ranges(layer_ranges(&ctx, cap, self.shape, l, n), &held)?;
        }
        // The old buffers go before the context that described their tensors.
        self.buffers = buffers;
        self.ctx = ctx;
        self.cap = cap;
        Ok(())
    }

    /// After a step: the chunk is in the window; tokens that left every
    /// future query's window become initial tokens or memory blocks. If a
    /// block cannot be stored (its file is full), the step is undone.
    pub fn commit(&mut self, n_tokens: usize) -> anyhow::Result<()> {
        if self.retrieves() && self.tracing(self.n_blocks()) {
            self.read_trace(n_tokens);
        }
        match self.retrieves() {
            true => self.read_vote(n_tokens),
            false => self.vote = None,
        }
        let (pos, rerotate, n_blocks) = (self.pos, self.rerotate, self.n_blocks());
        let reused = self.reuses_candidates(n_tokens);
        self.note_coarse_pass(n_tokens);
        let result = self.evict(n_tokens).and_then(|()| self.fit_budget(self.n_blocks()));
        if result.is_err() {
            (self.pos, self.rerotate) = (pos, rerotate);
            self.layers.iter_mut().for_each(|l| l.blocks.truncate(n_blocks));
            self.kept_pick = None;
            self.vote = None;
        }
        self.note_step_reads(reused);
        result
    }

    /// Moves the text position past the step's tokens and evicts.
    fn evict(&mut self, n_tokens: usize) -> anyhow::Result<()> {
        self.pos.n_past += n_tokens;
        self.rerotate = false;
        let evict_end = self.pos.n_past.saturating_sub(self.p.n_local);
        if self.pos.n_init < self.p.n_init && evict_end > self.pos.remainder_start {
            let take = self.p.n_init.min(evict_end) - self.pos.remainder_start;
            for l in &self.layers {
                self.take_initial(l, take);
            }
            self.pos.n_init += take;
            self.pos.remainder_start += take;
        }
        while evict_end >= self.pos.remainder_start + self.p.block_size {
            if self.p.topk > 0 {
                for il in 0..self.layers.len() {
                    self.form_block(il)?;
                }
            }
            self.pos.remainder_start += self.p.block_size;
        }
        Ok(())
    }

    /// Whether a step now picks blocks (more are stored than it attends).
    pub(super) fn retrieves(&self) -> bool {
        self.p.topk > 0 && self.n_blocks() > self.p.topk
    }

    /// Window buffer slot of the remainder's first token.
    fn remainder_slot(&self) -> usize {
        self.pos.remainder_start - self.pos.buffer_start
    }

    /// Copies `take` tokens from the remainder start into the initial tokens.
    fn take_initial(&self, l: &LayerStore, take: usize) {
        let e = self.shape.n_embd_kv();
        let (slot, n_init) = (self.remainder_slot(), self.pos.n_init);
        let k = read_f16(self.ctx.tensor(l.k_raw), slot * e * 2, take * e);
        let init_k = self.ctx.tensor(l.init_k);
        init_k.write_bytes(n_init * e * 4, f32_bytes(&k).as_slice());
        let v = read_columns(self.ctx.tensor(l.v_t), slot, take);
        let init_v_t = self.ctx.tensor(l.init_v_t);
        let init_cap = init_v_t.ne()[0] as usize;
        for (c, v) in v.chunks_exact(take).enumerate() {
            init_v_t.write_bytes((c * init_cap + n_init) * 4, f32_bytes(v).as_slice());
        }
    }

    /// Turns the block_size tokens at the remainder start of layer `il` into a memory block.
    fn form_block(&mut self, il: usize) -> anyhow::Result<()> {
        let s = self.shape;
        let (bs, e) = (s.block_size, s.n_embd_kv());
        let slot = self.remainder_slot();
        let l = &self.layers[il];
        let k = read_f16(self.ctx.tensor(l.k_raw), slot * e * 2, bs * e);
        let v_t = read_columns(self.ctx.tensor(l.v_t), slot, bs);
        let scores = read_columns(self.ctx.tensor(l.score), slot, bs);
        let repr = representative_key(&s, self.p.repr_topk, &k, &scores);
        let file = self.spill.as_mut().and_then(|s| s.file.as_mut().filter(|_| s.moved));
        self.layers[il].blocks.push(&k, &v_t, &repr, file)
    }
}

impl LayerStore {
    /// Layer `il`'s tensors in `ctx` (allocated by the caller) and block store.
    fn new(
        ctx: &Context,
        il: usize,
        p: &InfllmParams,
        shape: BlockShape,
        cap: usize,
        max_blocks: usize,
        standard_ops: bool,
    ) -> anyhow::Result<Self> {
        let [k_raw, k_rot_t, v_t, score, init_k, init_v_t] = window_tensors(ctx, il, p, shape, cap);
        Ok(Self {
            k_raw,
            k_rot_t,
            v_t,
            score,
            init_k,
            init_v_t,
            blocks: BlockStore::new(shape, max_blocks)?,
            standard_ops,
        })
    }

    fn window_tensors(&self) -> [TensorId; 6] {
        [
            self.k_raw,
            self.k_rot_t,
            self.v_t,
            self.score,
            self.init_k,
            self.init_v_t,
        ]
    }

    fn set_window(&mut self, [k_raw, k_rot_t, v_t, score, init_k, init_v_t]: [TensorId; 6]) {
        (self.k_raw, self.k_rot_t, self.v_t, self.score) = (k_raw, k_rot_t, v_t, score);
        (self.init_k, self.init_v_t) = (init_k, init_v_t);
    }
}

/// Layer `il`'s window buffer of `cap` slots and initial tokens, in `ctx`:
/// un-rotated keys, rotated keys (transposed), values (transposed), scores,
/// initial keys and values (transposed).
fn window_tensors(ctx: &Context, il: usize, p: &InfllmParams, shape: BlockShape, cap: usize) -> [TensorId; 6] {
    let t = |ty, ne: &[i64], name: &str| ctx.id(ctx.new_tensor(ty, ne).set_name(&format!("{name}_l{il}")));
    let (e, cap, n_init) = (shape.n_embd_kv() as i64, cap as i64, p.n_init.max(1) as i64);
    [
        t(GgmlType::F16, &[e, cap], "win_k_raw"),
        t(GgmlType::F16, &[cap, e], "win_k_rot_t"),
        t(GgmlType::F16, &[cap, e], "win_v_t"),
        t(GgmlType::F32, &[cap, shape.n_head as i64], "win_score"),
        t(GgmlType::F32, &[e, n_init], "init_k"),
        t(GgmlType::F32, &[n_init, e], "init_v_t"),
    ]
}

/// Gives each layer on a device a block cache there: `budget` bytes per
/// device (default: a quarter of its free memory), shared by its layers;
/// at most the blocks the text can form, at least the `topk` one step reads.
fn cache_blocks(
    layers: &mut [LayerStore],
    places: &[LayerPlace],
    budget: Option<usize>,
    (max_blocks, topk): (usize, usize),
) -> anyhow::Result<()> {
    for (il, place) in places.iter().enumerate() {
        let Some(device) = place.device else { continue };
        let sharing = places.iter().filter(|p| p.device == Some(device)).count();
        let budget = budget.unwrap_or_else(|| device.memory().0 / 4);
        let per_block = layers[il].blocks.shape().bytes_per_block();
        let cap = (budget / sharing / per_block).min(max_blocks);
        if cap > 0 {
            layers[il].blocks.cache_on(device, cap, topk)?;
        }
    }
    Ok(())
}

fn read_f16(t: Tensor<'_>, offset: usize, n: usize) -> Vec<f32> {
    let mut bytes = vec![0u8; n * 2];
    t.read_bytes(offset, &mut bytes);
    decode(t.ty(), &bytes)
}

/// f16 or f32 bytes as f32 values.
pub(super) fn decode(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    match ty {
        GgmlType::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    }
}

/// Items [from, from + n) of every row of `t` (a transposed buffer: f16
/// values or f32 scores), row after row. Host memory is read row by row;
/// a device's in one transfer of the rows' whole span (a read per row
/// would be a round trip each).
fn read_columns(t: Tensor<'_>, from: usize, n: usize) -> Vec<f32> {
    let [per_row, n_rows, ..] = t.ne().map(|x| x as usize);
    let item = t.nb()[0];
    let row = |r: usize| (r * per_row + from) * item;
    if t.is_host() {
        return (0..n_rows)
            .flat_map(|r| {
                let mut bytes = vec![0u8; n * item];
                t.read_bytes(row(r), &mut bytes);
                decode(t.ty(), &bytes)
            })
            .collect();
    }
    let mut span = vec![0u8; row(n_rows - 1) + n * item - row(0)];
    t.read_bytes(row(0), &mut span);
    (0..n_rows)
        .flat_map(|r| decode(t.ty(), &span[row(r) - row(0)..][..n * item]))
        .collect()
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// In each of `n_rows` rows of `per_row` items of `item` bytes, moves items
/// [shift, shift + kept) to the front and zeroes the rest. The whole tensor
/// is read and written once (one transfer each on a device).
fn shift_items(t: Tensor<'_>, n_rows: usize, per_row: usize, item: usize, shift: usize, kept: usize) {
    let row_bytes = per_row * item;
    let mut buf = vec![0u8; n_rows * row_bytes];
    t.read_bytes(0, &mut buf);
    for row in buf.chunks_exact_mut(row_bytes) {
        row.copy_within(shift * item..(shift + kept) * item, 0);
        row[kept * item..].fill(0);
    }
    t.write_bytes(0, &buf);
}
