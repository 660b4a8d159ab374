//! The memory of one layer: evicted blocks with their K and V quantized in
//! host memory, and one representative key per block for retrieval. A
//! layer on a device also keeps copies of blocks there (its block cache):
//! the first ones while they fit, so that retrieval and attention read
//! device memory; past its size, the blocks retrieval picks, least
//! recently used out (`RowCache`), while retrieval scores on the CPU.
//! Keys and values can move to a file (`spill_to`, see `spill`); the
//! representative keys, read whole at every step, stay in memory.

use anyhow::Context as _;
use half::f16;
use xxhash_rust::xxh3::xxh3_64;

use super::coarse::{CoarseKeys, CoarsePass};
use super::spill::BlockFile;

use crate::attention::state::{Section, StateReader};
use crate::ggml::{
    dequantize, quantize, type_info, Context, Device, GgmlType, HostArena, RowCache, Tensor, PIECE_ALIGN,
};

/// Bytes of one representative key value (f16: retrieval reads every
/// block's key per step, so this halves the per-token cost that grows with
/// the text).
const REPR_BYTES: usize = 2;

/// Shapes shared by the stores of all layers.
#[derive(Debug, Clone, Copy)]
pub struct BlockShape {
    pub block_size: usize,
    pub head_dim: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub type_k: GgmlType,
    pub type_v: GgmlType,
}

impl BlockShape {
    pub fn n_embd_kv(&self) -> usize {
        self.head_dim * self.n_head_kv
    }

    /// Values in one block's K (or V): block_size x n_embd_kv.
    pub fn block_values(&self) -> usize {
        self.block_size * self.n_embd_kv()
    }

    /// Length of a representative key: one head_dim vector per query head.
    pub fn repr_len(&self) -> usize {
        self.head_dim * self.n_head
    }

    pub fn k_bytes(&self) -> usize {
        type_info(self.type_k)
            .expect("checked type")
            .row_size(self.block_values() as u64) as usize
    }

    pub fn v_bytes(&self) -> usize {
        type_info(self.type_v)
            .expect("checked type")
            .row_size(self.block_values() as u64) as usize
    }

    /// Bytes one block takes in a layer: K, V and its representative key (f16).
    pub fn bytes_per_block(&self) -> usize {
        self.k_bytes() + self.v_bytes() + self.repr_len() * REPR_BYTES
    }
}

pub struct BlockStore {
    shape: BlockShape,
    k: HostArena,
    v: HostArena,
    repr: HostArena,
    /// Their q4_0 copy, for retrieval past `InfllmParams::coarse_from`
    /// blocks (None where a key is not whole q4_0 blocks).
    coarse: Option<CoarseKeys>,
    len: usize,
    /// Each block's K and V checksums (xxh3-64): a session that names a
    /// kept block file lists them, and loading checks the file against them.
    sums: Vec<[u64; 2]>,
    /// The device's copies of blocks, in the store's layouts: K, V and
    /// representative keys (None on the CPU).
    cache: Option<RowCache>,
}

impl BlockStore {
    /// Reserves (address space only) room for `max_blocks` blocks.
    pub fn new(shape: BlockShape, max_blocks: usize) -> anyhow::Result<Self> {
        let max_blocks = max_blocks.max(1);
        Ok(Self {
            k: HostArena::reserve(shape.k_bytes() * max_blocks)?,
            v: HostArena::reserve(shape.v_bytes() * max_blocks)?,
            repr: HostArena::reserve(shape.repr_len() * REPR_BYTES * max_blocks)?,
            coarse: CoarseKeys::new(shape.repr_len(), max_blocks)?,
            shape,
            len: 0,
            sums: Vec::new(),
            cache: None,
        })
    }

    /// Keeps copies of blocks in `device`'s memory, at most `cap` of them
    /// (fewer where the device takes no tensor that large; none if fewer
    /// than `min`, the blocks one step reads).
    pub fn cache_on(&mut self, device: Device, cap: usize, min: usize) -> anyhow::Result<()> {
        let buft = device.buffer_type()?;
        let fits = |cap| {
            let ctx = Context::new(3, 0);
            let tensors = self.cache_tensors(&ctx, cap);
            tensors
                .iter()
                .all(|&t| t.nbytes() <= buft.max_size() && device.supports_op(t))
        };
        let mut cap = cap;
        while cap > 0 && !fits(cap) {
            cap /= 2;
        }
        if cap == 0 || cap < min {
            return Ok(());
        }
        let ctx = Context::new(3, 0);
        let parts = self.cache_tensors(&ctx, cap).map(|t| ctx.id(t)).to_vec();
        self.cache = Some(RowCache::new(buft, ctx, parts)?);
        // Scoring past the cache reads every representative key: on the
        // CPU, where they are, rather than copied over at every step.
        self.repr.keep_readers_on_cpu();
        if let Some(c) = &self.coarse {
            c.keep_readers_on_cpu();
        }
        self.upload(0, self.len);
        Ok(())
    }

    /// The cache's K, V and representative keys for `cap` blocks, in `ctx`.
    fn cache_tensors<'a>(&self, ctx: &'a Context, cap: usize) -> [Tensor<'a>; 3] {
        let s = self.shape;
        let n = s.block_values() as i64;
        let types = [s.type_k, s.type_v, GgmlType::F16];
        let rows = [n, n, s.repr_len() as i64];
        [0, 1, 2].map(|i| ctx.new_tensor(types[i], &[rows[i], cap as i64]))
    }

    /// Copies blocks [from, to) into the cache slots of the same numbers,
    /// as far as the cache reaches.
    fn upload(&self, from: usize, to: usize) {
        let Some(c) = &self.cache else { return };
        let to = to.min(c.cap());
        if from >= to {
            return;
        }
        let sizes = self.block_part_bytes();
        let host = [&self.k, &self.v, &self.repr];
        let bytes: Vec<&[u8]> = (0..3)
            .map(|i| host[i].slice(from * sizes[i], (to - from) * sizes[i]))
            .collect();
        c.put_in_place(from, to - from, &bytes);
    }

    /// The cache once the blocks outgrow it (steps then gather through
    /// `slots`).
    fn outgrown_cache(&self) -> Option<&RowCache> {
        self.cache.as_ref().filter(|c| self.len > c.cap())
    }

    /// Part `i` of the blocks as a tensor [row, n]: all blocks so far from
    /// the device cache when it holds them in place; past it, K and V are
    /// the cache's slots (indexed by `slots`), the representative keys the
    /// host's; without a cache, the host store's.
    fn part_tensor<'a>(&'a self, ctx: &'a Context, i: usize, ty: GgmlType, row: usize) -> Tensor<'a> {
        match &self.cache {
            Some(c) if self.len <= c.cap() => {
                let t = c.part(i);
                ctx.view(t, &[row as i64, self.len as i64], &[t.nb()[1]], 0)
            }
            Some(c) if i < 2 => c.part(i),
            _ => self.host_part(ctx, i, ty, row),
        }
    }

    /// Part `i` of the blocks so far in host memory: [row, len].
    fn host_part<'a>(&'a self, ctx: &'a Context, i: usize, ty: GgmlType, row: usize) -> Tensor<'a> {
        let t = ctx.new_tensor(ty, &[row as i64, self.len as i64]);
        [&self.k, &self.v, &self.repr][i].place(t, 0);
        t
    }

    /// Where blocks `ids` (I32 [n], distinct) lie in `k_tensor` and
    /// `v_tensor`: the ids themselves, or past the device cache the slots
    /// that the step's `resident` op copies missing blocks into.
    pub fn slots<'a>(&'a self, ctx: &'a Context, ids: Tensor<'a>) -> Tensor<'a> {
        let Some(c) = self.outgrown_cache() else { return ids };
        let s = self.shape;
        let host = [
            self.host_part(ctx, 0, s.type_k, s.block_values()),
            self.host_part(ctx, 1, s.type_v, s.block_values()),
            self.host_part(ctx, 2, GgmlType::F16, s.repr_len()),
        ];
        ctx.resident(ids, &host, c)
    }

    /// Whether a step scores the blocks on the device: their representative
    /// keys are all in its cache (past it they are scored on the CPU).
    pub fn scored_on_device(&self) -> bool {
        self.cache.is_some() && self.outgrown_cache().is_none()
    }

    /// Blocks copied into the device cache on demand so far.
    pub fn cache_loads(&self) -> usize {
        self.cache.as_ref().map_or(0, RowCache::loads)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn shape(&self) -> BlockShape {
        self.shape
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Forgets the blocks from `n` on (blocks are only ever appended, so a
    /// snapshot of the rest of the state goes back with this).
    pub fn truncate(&mut self, n: usize) {
        if n >= self.len {
            return;
        }
        self.len = n;
        self.sums.truncate(self.len);
        if let Some(c) = &self.cache {
            c.forget_from(self.len);
            // Back within the cache: each block in its own slot again.
            if self.len <= c.cap() && !c.in_place(self.len) {
                self.upload(0, self.len);
            }
        }
    }

    /// The stored bytes: keys, values, representative keys.
    pub fn parts(&self) -> [&[u8]; 3] {
        let s = self.shape;
        [
            self.k.slice(0, self.len * s.k_bytes()),
            self.v.slice(0, self.len * s.v_bytes()),
            self.repr.slice(0, self.len * s.repr_len() * REPR_BYTES),
        ]
    }

    /// Byte lengths of `parts` for `n` blocks, if the store has room for
    /// them (None: more than it reserved).
    pub fn part_lens(&self, n: usize) -> Option<[usize; 3]> {
        let room = [&self.k, &self.v, &self.repr].map(HostArena::len);
        let lens = self.block_part_bytes().map(|b| n.checked_mul(b));
        match lens {
            [Some(k), Some(v), Some(r)] if k <= room[0] && v <= room[1] && r <= room[2] => Some([k, v, r]),
            _ => None,
        }
    }

    /// Checksums of block `i`'s K and V as stored.
    fn block_sums(&self, i: usize) -> [u64; 2] {
        let s = self.shape;
        [
            xxh3_64(self.k.slice(i * s.k_bytes(), s.k_bytes())),
            xxh3_64(self.v.slice(i * s.v_bytes(), s.v_bytes())),
        ]
    }

    /// Bytes of one block in each part.
    fn block_part_bytes(&self) -> [usize; 3] {
        let s = self.shape;
        [s.k_bytes(), s.v_bytes(), s.repr_len() * REPR_BYTES]
    }

    /// Reads `n` blocks saved by `parts` from `sections` (each checked to
    /// be `part_lens(n)` long), in place of the blocks held.
    pub fn read_from(
        &mut self,
        sections: &mut StateReader<'_>,
        n: usize,
        parts: [Section; 3],
        mut file: Option<&mut BlockFile>,
    ) -> anyhow::Result<()> {
        let lens = self
            .part_lens(n)
            .context("the saved blocks exceed the memory reserved for them")?;
        self.truncate(0);
        let arenas = [&mut self.k, &mut self.v, &mut self.repr];
        for ((arena, len), part) in arenas.into_iter().zip(lens).zip(parts) {
            if !arena.in_file() {
                sections.read_into(part, 0, arena.slice_mut(0, len))?;
                continue;
            }
            let f = &mut file;
            sections.read_in_steps(part, 0, len, |at, bytes| {
                write_to(arena, at, bytes, f.as_deref_mut()).map_err(write_error)
            })?;
        }
        self.sums = (0..n).map(|i| self.block_sums(i)).collect();
        self.len = n;
        self.rebuild_coarse();
        self.upload(0, n);
        Ok(())
    }

    /// Moves the keys and values (not yet moved) to regions of `file`.
    pub fn spill_to(&mut self, file: &mut BlockFile) -> anyhow::Result<()> {
        let used = [self.len * self.shape.k_bytes(), self.len * self.shape.v_bytes()];
        let keep = file.id().is_some();
        for (arena, used) in [&mut self.k, &mut self.v].into_iter().zip(used) {
            if !arena.in_file() {
                let handle = file.handle();
                arena
                    .spill(handle, used, keep, &mut |len| file.region(len))
                    .map_err(write_error)?;
            }
        }
        Ok(())
    }

    /// Where the keys and values lie in their file (see `HostArena::pieces`).
    pub fn pieces(&self) -> [Vec<(usize, u64)>; 2] {
        [self.k.pieces().to_vec(), self.v.pieces().to_vec()]
    }

    /// The blocks' checksums, K then V per block, little-endian.
    pub fn sums_bytes(&self) -> Vec<u8> {
        self.sums.iter().flatten().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Checks `n` blocks in `file` at `pieces` (K, V) against their
    /// checksums `sums` (as `sums_bytes` wrote them), reading each block.
    pub fn check_file(
        &self,
        file: &BlockFile,
        pieces: &[Vec<(usize, u64)>; 2],
        sums: &[u8],
        n: usize,
    ) -> anyhow::Result<Vec<[u64; 2]>> {
        let sizes = self.block_part_bytes();
        let lens = self.part_lens(n).context("more blocks than memory for them")?;
        let arena_lens = [self.k.len(), self.v.len()];
        for i in 0..2 {
            check_pieces(&pieces[i], arena_lens[i])?;
            let end = file_end(&pieces[i], lens[i]);
            let file_len = file.len()?;
            anyhow::ensure!(
                file_len >= end,
                "block file {} is truncated ({file_len} bytes, the session needs {end})",
                file.path().display()
            );
        }
        let sums: Vec<[u64; 2]> = sums
            .chunks_exact(16)
            .map(|c| [0, 8].map(|at| u64::from_le_bytes(c[at..at + 8].try_into().expect("8 bytes"))))
            .collect();
        let mut buf = Vec::new();
        for (b, want) in sums.iter().enumerate() {
            for i in 0..2 {
                buf.resize(sizes[i], 0);
                file.read_pieces(&pieces[i], b * sizes[i], &mut buf)
                    .with_context(|| format!("cannot read block file {}", file.path().display()))?;
                anyhow::ensure!(
                    xxh3_64(&buf) == want[i],
                    "block file {} is corrupt (block {b} differs from the session's checksum)",
                    file.path().display()
                );
            }
        }
        Ok(sums)
    }

    /// Takes `n` blocks that `check_file` passed from `file` at `pieces`,
    /// in place of the blocks held, with their representative keys read
    /// from `repr` (checked to be `part_lens(n)[2]` long). On failure the
    /// store is empty.
    pub fn adopt(
        &mut self,
        file: &BlockFile,
        pieces: &[Vec<(usize, u64)>; 2],
        sums: Vec<[u64; 2]>,
        sections: &mut StateReader<'_>,
        repr: Section,
    ) -> anyhow::Result<()> {
        self.truncate(0);
        let n = sums.len();
        let len = self.part_lens(n).context("more blocks than memory for them")?[2];
        sections.read_into(repr, 0, self.repr.slice_mut(0, len))?;
        for (arena, p) in [&mut self.k, &mut self.v].into_iter().zip(pieces) {
            arena
                .adopt(file.handle(), p)
                .with_context(|| format!("cannot map block file {}", file.path().display()))?;
        }
        self.sums = sums;
        self.len = n;
        self.rebuild_coarse();
        self.upload(0, n);
        Ok(())
    }

    /// Drops every block and leaves the file: keys and values in memory
    /// again (after a failed `adopt`).
    pub fn to_memory(&mut self) {
        self.truncate(0);
        self.k.to_memory();
        self.v.to_memory();
    }

    /// Lets the OS take back the pages of keys and values that steps read
    /// from the file (they stay in the file).
    pub fn release(&self) {
        self.k.release(self.len * self.shape.k_bytes());
        self.v.release(self.len * self.shape.v_bytes());
    }

    /// Appends a block. `k` is token-major (block_size rows of n_embd_kv),
    /// `v_t` channel-major (n_embd_kv rows of block_size). Keys are stored
    /// channel-major too (a row of block_size per channel, so quantization
    /// groups run along tokens): decode scores them a tile of tokens at a
    /// time, with no horizontal sum per key (`kernels::column_dots`).
    pub fn push(
        &mut self,
        k: &[f32],
        v_t: &[f32],
        repr: &[f32],
        mut file: Option<&mut BlockFile>,
    ) -> anyhow::Result<()> {
        let s = self.shape;
        assert_eq!(k.len(), s.block_values());
        let (bs, e) = (s.block_size, s.n_embd_kv());
        let k_t: Vec<f32> = (0..e).flat_map(|c| (0..bs).map(move |t| k[t * e + c])).collect();
        assert_eq!(v_t.len(), s.block_values());
        assert_eq!(repr.len(), s.repr_len());
        let i = self.len;
        anyhow::ensure!(
            (i + 1) * s.k_bytes() <= self.k.len(),
            "the text is longer than the block memory reserved for it (raise -c)"
        );
        let mut k_q = vec![0u8; s.k_bytes()];
        quantize(s.type_k, &k_t, bs, &mut k_q);
        let mut v_q = vec![0u8; s.v_bytes()];
        quantize(s.type_v, v_t, bs, &mut v_q);
        let r: Vec<u8> = repr.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect();
        write_to(&mut self.k, i * s.k_bytes(), &k_q, file.as_deref_mut()).map_err(write_error)?;
        write_to(&mut self.v, i * s.v_bytes(), &v_q, file).map_err(write_error)?;
        write_to(&mut self.repr, i * r.len(), &r, None).map_err(write_error)?;
        if let Some(c) = &mut self.coarse {
            c.set_rows(i, &r);
        }
        self.sums.push([xxh3_64(&k_q), xxh3_64(&v_q)]);
        self.len += 1;
        self.upload(i, i + 1);
        Ok(())
    }

    /// All blocks' keys as one tensor [block_values, len] of `type_k`
    /// (each block channel-major, as `push` stores it).
    pub fn k_tensor<'a>(&'a self, ctx: &'a Context) -> Tensor<'a> {
        self.part_tensor(ctx, 0, self.shape.type_k, self.shape.block_values())
    }

    /// All blocks' transposed values as one tensor [block_values, len] of `type_v`.
    pub fn v_tensor<'a>(&'a self, ctx: &'a Context) -> Tensor<'a> {
        self.part_tensor(ctx, 1, self.shape.type_v, self.shape.block_values())
    }

    /// Whether retrieval scores the q4_0 copy of the representative keys
    /// first: from `from` blocks on (0: never), unless a device cache
    /// holds every block (retrieval then runs there).
    pub fn scores_coarse(&self, from: usize) -> bool {
        let on_device = self.cache.is_some() && self.outgrown_cache().is_none();
        self.coarse.is_some() && from > 0 && self.len >= from && !on_device
    }

    /// The coarse pass over the q4_0 copy [repr_len, len] where retrieval
    /// scores it first (`scores_coarse`); `reuse`: this step takes the
    /// candidates the last pass kept.
    pub fn coarse_pass<'a>(&'a self, ctx: &'a Context, from: usize, reuse: bool) -> Option<CoarsePass<'a>> {
        let coarse = self.coarse.as_ref().filter(|_| self.scores_coarse(from))?;
        Some(coarse.pass(ctx, self.len, reuse))
    }

    /// The coarse copy of the `len` blocks' representative keys, after
    /// they were read (it is not saved).
    fn rebuild_coarse(&mut self) {
        let bytes = self.len * self.shape.repr_len() * REPR_BYTES;
        if let Some(c) = &mut self.coarse {
            c.set_rows(0, self.repr.slice(0, bytes));
        }
    }

    /// Representative keys [repr_len, len], f16.
    pub fn repr_tensor<'a>(&'a self, ctx: &'a Context) -> Tensor<'a> {
        self.part_tensor(ctx, 2, GgmlType::F16, self.shape.repr_len())
    }

    /// Block `i` dequantized, in `push`'s layouts: (k token-major, v_t).
    pub fn read(&self, i: usize) -> (Vec<f32>, Vec<f32>) {
        let s = self.shape;
        let (bs, e, n) = (s.block_size, s.n_embd_kv(), s.block_values());
        let k_t = dequantize(s.type_k, self.k.slice(i * s.k_bytes(), s.k_bytes()), n);
        let mut k = vec![0f32; n];
        for (c, row) in k_t.chunks_exact(bs).enumerate() {
            for (t, &x) in row.iter().enumerate() {
                k[t * e + c] = x;
            }
        }
        (k, dequantize(s.type_v, self.v.slice(i * s.v_bytes(), s.v_bytes()), n))
    }

    /// Bytes in use (the blocks as saved; the coarse copy, 28% of the
    /// representative keys' bytes, is left out).
    pub fn bytes(&self) -> usize {
        self.len * self.shape.bytes_per_block()
    }
}

/// Where the first `used` bytes of an arena mapping `pieces` end in the file.
fn file_end(pieces: &[(usize, u64)], used: usize) -> u64 {
    let ends = pieces.iter().skip(1).map(|p| p.0).chain([usize::MAX]);
    let spans = pieces.iter().zip(ends).filter(|(p, _)| p.0 < used);
    spans
        .map(|(&(at, off), end)| off + (end.min(used) - at) as u64)
        .max()
        .unwrap_or(0)
}

/// Refuses pieces (read from a session) that an arena of `len` bytes
/// cannot map: they must start at 0, ascend, and lie on `PIECE_ALIGN`
/// boundaries inside the arena and past the file's header.
fn check_pieces(pieces: &[(usize, u64)], len: usize) -> anyhow::Result<()> {
    let aligned =
        |p: &(usize, u64)| p.0.is_multiple_of(PIECE_ALIGN) && p.1.is_multiple_of(PIECE_ALIGN as u64) && p.1 > 0;
    anyhow::ensure!(
        pieces.first().is_some_and(|p| p.0 == 0)
            && pieces.windows(2).all(|w| w[0].0 < w[1].0)
            && pieces
                .iter()
                .all(|p| aligned(p) && p.0 < len && p.1.checked_add(len as u64).is_some()),
        "inconsistent attention state (where the blocks lie in their file)"
    );
    Ok(())
}

/// Writes to `arena`, which takes new space in `file` as it needs.
fn write_to(arena: &mut HostArena, at: usize, bytes: &[u8], mut file: Option<&mut BlockFile>) -> std::io::Result<()> {
    arena.write(at, bytes, &mut |len| match file.as_deref_mut() {
        Some(f) => f.region(len),
        None => Err(std::io::Error::other("the memory blocks have no file")),
    })
}

fn write_error(e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!("cannot write the memory blocks to their file: {e}")
}

/// A block's representative key: for each query head `h`, the mean of the
/// un-rotated keys (from the KV head serving `h`) of the `repr_topk` tokens
/// with the highest accumulated local attention score for `h`; ties go to
/// the earlier token. `k` is token-major [block_size][n_embd_kv]; `scores`
/// is head-major [n_head][block_size].
pub fn representative_key(shape: &BlockShape, repr_topk: usize, k: &[f32], scores: &[f32]) -> Vec<f32> {
    let (bs, hd, e) = (shape.block_size, shape.head_dim, shape.n_embd_kv());
    let group = shape.n_head / shape.n_head_kv;
    let mut out = vec![0f32; shape.repr_len()];
    let mut order: Vec<usize> = (0..bs).collect();
    for h in 0..shape.n_head {
        let s = &scores[h * bs..(h + 1) * bs];
        order.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
        let kv = h / group;
        let dst = &mut out[h * hd..(h + 1) * hd];
        for &t in &order[..repr_topk] {
            for (d, x) in dst.iter_mut().zip(&k[t * e + kv * hd..t * e + (kv + 1) * hd]) {
                *d += x;
            }
        }
        dst.iter_mut().for_each(|d| *d /= repr_topk as f32);
    }
    out
}
