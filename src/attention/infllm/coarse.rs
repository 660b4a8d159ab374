//! Retrieval in two passes once a layer holds many blocks. Scoring every
//! block's representative key (f16, a head_dim vector per query head) is
//! the one part of a decode step that grows with the text: at 1M tokens,
//! 283 MB per token for SmolLM2, more than the rest of the step reads.
//! From `InfllmParams::coarse_from` blocks on, a step scores a q4_0 copy of
//! the keys instead (28% of the bytes; kept in memory beside them, rebuilt
//! when a session loads, never saved), keeps the best `CANDIDATES` x top-k,
//! and scores those again from the f16 keys: their top-k are the blocks
//! picked. That is one f16 pass's pick whenever its blocks were among the
//! candidates (docs/infllm.md, "Retrieval past 2048 blocks").
//!
//! The coarse pass still reads every block. Decode steps in a row ask for
//! much the same blocks, so a decode step keeps its candidates (their ids
//! and f16 keys), and the next `InfllmParams::coarse_every - 1` decode
//! steps score only those, until a block forms (the new block must be a
//! candidate) or a prompt step comes.

use super::InfllmAttention;
use crate::ggml::{dequantize, quantize, Context, GgmlType, HostArena, Tensor};

/// Blocks the coarse pass keeps, per block picked.
pub const CANDIDATES: usize = 4;

/// The coarse copy's type: 18 bytes per 32 values, against f16's 64.
const COARSE_TYPE: GgmlType = GgmlType::Q4_0;

/// q4_0 copies of a store's representative keys, a row per block, in
/// memory (never in the block file: every step reads all of them).
pub struct CoarseKeys {
    arena: HostArena,
    repr_len: usize,
    row_bytes: usize,
    /// The candidates of the last coarse pass (I32; room for one per block).
    kept: HostArena,
    /// Their f16 keys, gathered by that pass (room for one per block), so
    /// that a step reusing them reads those rows as they are: gathering
    /// converts to f32 and back, 1.3 ms per token at 1M tokens.
    kept_keys: HostArena,
}

/// A step's coarse pass: the q4_0 copy [repr_len, n], where its candidates
/// and their f16 keys are kept (room for `CANDIDATES` x k), and whether
/// this step takes the kept ones instead of scoring the copy.
pub struct CoarsePass<'a> {
    pub keys: Tensor<'a>,
    pub kept: Tensor<'a>,
    pub kept_keys: Tensor<'a>,
    pub reuse: bool,
}

impl CoarseKeys {
    /// Room for `max_blocks` rows of `repr_len` values (address space
    /// only); None when a row is not whole q4_0 blocks.
    pub fn new(repr_len: usize, max_blocks: usize) -> anyhow::Result<Option<Self>> {
        if !(repr_len as u64).is_multiple_of(COARSE_TYPE.block_size()) {
            return Ok(None);
        }
        let row_bytes = COARSE_TYPE.row_size(repr_len as u64) as usize;
        Ok(Some(Self {
            arena: HostArena::reserve(row_bytes * max_blocks)?,
            repr_len,
            row_bytes,
            kept: HostArena::reserve(4 * max_blocks)?,
            kept_keys: HostArena::reserve(2 * repr_len * max_blocks)?,
        }))
    }

    /// Sets rows `first..` (within the reserved room) from the stored f16
    /// keys `f16_rows`: as blocks form and when a session loads alike, so
    /// that the copy depends on the saved keys alone.
    pub fn set_rows(&mut self, first: usize, f16_rows: &[u8]) {
        let values = f16_rows.len() / 2;
        let x = dequantize(GgmlType::F16, f16_rows, values);
        let n = values / self.repr_len;
        quantize(
            COARSE_TYPE,
            &x,
            self.repr_len,
            self.arena.slice_mut(first * self.row_bytes, n * self.row_bytes),
        );
    }

    /// The first `len` rows as a tensor [repr_len, len].
    pub fn tensor<'a>(&'a self, ctx: &'a Context, len: usize) -> Tensor<'a> {
        let t = ctx.new_tensor(COARSE_TYPE, &[self.repr_len as i64, len as i64]);
        self.arena.place(t, 0);
        t
    }

    /// Room for `len` kept candidates, as a tensor I32 [len].
    pub fn kept_tensor<'a>(&'a self, ctx: &'a Context, len: usize) -> Tensor<'a> {
        let t = ctx.new_tensor(GgmlType::I32, &[len as i64]);
        self.kept.place(t, 0);
        t
    }

    /// Room for `len` kept candidates' keys, as a tensor F16 [repr_len, len].
    pub fn kept_keys_tensor<'a>(&'a self, ctx: &'a Context, len: usize) -> Tensor<'a> {
        let t = ctx.new_tensor(GgmlType::F16, &[self.repr_len as i64, len as i64]);
        self.kept_keys.place(t, 0);
        t
    }

    /// A step's coarse pass over the first `len` rows: the copy, and room
    /// for its kept candidates and their keys.
    pub fn pass<'a>(&'a self, ctx: &'a Context, len: usize, reuse: bool) -> CoarsePass<'a> {
        CoarsePass {
            keys: self.tensor(ctx, len),
            kept: self.kept_tensor(ctx, len),
            kept_keys: self.kept_keys_tensor(ctx, len),
            reuse,
        }
    }

    /// Lets the scheduler run the coarse matmuls on the CPU, where the rows
    /// are, rather than copy them to a device at every step.
    pub fn keep_readers_on_cpu(&self) {
        self.arena.keep_readers_on_cpu();
        self.kept_keys.keep_readers_on_cpu();
    }
}

/// Where the kept candidates come from: the decode step at `n_past`, with
/// `n_blocks` blocks.
#[derive(Debug, Clone, Copy)]
pub struct KeptPick {
    n_past: usize,
    n_blocks: usize,
}

impl InfllmAttention {
    /// Whether a step of `n_tokens` takes the candidates the last coarse
    /// pass kept: a decode step within `coarse_every` steps of that pass
    /// (uninterrupted: a prompt step, a rollback or a load drop them), no
    /// block formed since.
    pub(super) fn reuses_candidates(&self, n_tokens: usize) -> bool {
        let n_blocks = self.n_blocks();
        self.kept_pick.is_some_and(|k| {
            n_tokens == 1 && k.n_blocks == n_blocks && self.pos.n_past - k.n_past < self.p.coarse_every
        })
    }

    /// Whether some layer scores its blocks' coarse copy first.
    pub(super) fn scores_coarse(&self) -> bool {
        self.layers.iter().any(|l| l.blocks.scores_coarse(self.p.coarse_from))
    }

    /// Before a step of `n_tokens` commits: the decode step whose coarse
    /// pass (in some layer) kept its candidates becomes the one others
    /// reuse; a prompt step drops them.
    pub(super) fn note_coarse_pass(&mut self, n_tokens: usize) {
        if n_tokens > 1 || !self.scores_coarse() {
            self.kept_pick = None;
        } else if !self.reuses_candidates(1) {
            self.kept_pick = Some(KeptPick {
                n_past: self.pos.n_past,
                n_blocks: self.n_blocks(),
            });
        }
    }
}

/// Indices (I32 [k]) of the `k` blocks whose representative keys `repr`
/// [repr_len, n] (f16) score highest against `query` [repr_len, 1]: one
/// pass over `repr`, or with `coarse` two, when the candidates are fewer
/// than the blocks (the second only, over the kept candidates, when the
/// pass reuses them). In the order of one pass's `top_k` over the same
/// scores.
pub fn top_blocks<'a>(
    g: &'a Context,
    repr: Tensor<'a>,
    coarse: Option<CoarsePass<'a>>,
    query: Tensor<'a>,
    k: usize,
) -> Tensor<'a> {
    let n = repr.ne()[1];
    let n_cand = (CANDIDATES * k) as i64;
    let Some(coarse) = coarse.filter(|_| n_cand < n) else {
        let scores = g.mul_mat(repr, query);
        return g.top_k(g.reshape(scores, &[n]), k as i32);
    };
    let kept = g.view(coarse.kept, &[n_cand], &[], 0);
    let kept_keys = g.view(
        coarse.kept_keys,
        &[repr.ne()[0], n_cand],
        &[coarse.kept_keys.nb()[1]],
        0,
    );
    let (cand, keys) = match coarse.reuse {
        true => (kept, kept_keys),
        false => {
            let top = g.top_k(g.reshape(g.mul_mat(coarse.keys, query), &[n]), n_cand as i32);
            let cand = g.cpy(top, kept);
            // get_rows gives the keys in f32, exactly; back in f16, the
            // matmul rounds the query and sums as the one pass does.
            (cand, g.cpy(g.get_rows(repr, cand), kept_keys))
        }
    };
    let scores = g.mul_mat(keys, query);
    let best = g.top_k(g.reshape(scores, &[n_cand]), k as i32);
    g.reshape(g.get_rows(g.reshape(cand, &[1, n_cand]), best), &[k as i64])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::Step;
    use crate::ggml::Scheduler;

    /// The ids `top_blocks` picks from `keys` (f16 rows of `len`) for
    /// `query`: in one pass (`reuse` None), or over `coarse` in two (or the
    /// second alone over its kept candidates).
    fn pick(keys: &[half::f16], coarse: &CoarseKeys, query: &[f32], k: usize, reuse: Option<bool>) -> Vec<usize> {
        let (len, n) = (query.len(), keys.len() / query.len());
        let ctx = Step::context();
        let mut step = Step::new(&ctx);
        let repr = step.input_f16("repr", &[len as i64, n as i64], keys.to_vec());
        let q = step.input_f32("query", &[len as i64, 1], query.to_vec());
        let pass = reuse.map(|reuse| coarse.pass(&ctx, n, reuse));
        let ids = top_blocks(&ctx, repr, pass, q, k).set_output();
        step.graph.expand(ids);
        // The scheduler holds the output's memory: read before it goes.
        let mut sched = Scheduler::cpu(2).unwrap();
        step.run(&mut sched).unwrap();
        read_ids(ids, k)
    }

    fn read_ids(t: Tensor<'_>, n: usize) -> Vec<usize> {
        let mut b = vec![0u8; 4 * n];
        t.read_bytes(0, &mut b);
        b.chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as usize)
            .collect()
    }

    /// f16 values and their bytes.
    fn f16_rows(x: &[f32]) -> (Vec<half::f16>, Vec<u8>) {
        let h: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
        let bytes = h.iter().flat_map(|v| v.to_le_bytes()).collect();
        (h, bytes)
    }

    /// A q4_0 copy of `n` rows of `len` f16 values.
    fn coarse_copy(len: usize, n: usize, bytes: &[u8]) -> CoarseKeys {
        let mut coarse = CoarseKeys::new(len, n).unwrap().expect("whole q4_0 blocks");
        coarse.set_rows(0, bytes);
        coarse
    }

    /// Random values in [-1, 1), from a seed.
    fn values(seed: u64, n: usize) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// A step that reuses the kept candidates picks, for its own query, the
    /// best of those: here, where the query is the last one's opposite,
    /// none of the blocks one pass would pick.
    #[test]
    fn kept_candidates_serve_the_next_query() {
        let (len, n, k) = (64, 300, 8);
        let (keys, bytes) = f16_rows(&values(11, n * len));
        let coarse = coarse_copy(len, n, &bytes);
        let last = values(12, len);
        let query: Vec<f32> = last.iter().map(|x| -x).collect();
        pick(&keys, &coarse, &last, k, Some(false));
        let ctx = Step::context();
        let kept = read_ids(coarse.kept_tensor(&ctx, n), CANDIDATES * k);
        let mut kept_keys = vec![0u8; 2 * len * kept.len()];
        coarse.kept_keys_tensor(&ctx, n).read_bytes(0, &mut kept_keys);
        for (row, &b) in kept_keys.chunks_exact(2 * len).zip(&kept) {
            assert_eq!(row, &bytes[b * 2 * len..][..2 * len], "kept keys of block {b}");
        }
        let picked = pick(&keys, &coarse, &query, k, Some(true));
        let score = |b: usize| -> f32 {
            keys[b * len..][..len]
                .iter()
                .zip(&query)
                .map(|(a, q)| a.to_f32() * q)
                .sum()
        };
        let worst_picked = picked.iter().map(|&b| score(b)).fold(f32::MAX, f32::min);
        for b in kept.iter().filter(|b| !picked.contains(b)) {
            assert!(
                score(*b) <= worst_picked + 1e-2,
                "kept block {b} beats the pick {picked:?}"
            );
        }
        assert!(picked.iter().all(|b| kept.contains(b)), "{picked:?} not among {kept:?}");
        let one = pick(&keys, &coarse, &query, k, None);
        assert!(one.iter().all(|b| !picked.contains(b)), "{one:?} {picked:?}");
    }

    #[test]
    fn two_passes_pick_what_one_pass_picks_unless_the_copy_misleads() {
        // 32 candidates of 300 blocks.
        let (len, n, k) = (64, 300, 8);
        let x = values(7, (n + 1) * len);
        let (keys, bytes) = f16_rows(&x[..n * len]);
        let query = &x[n * len..];
        let one = pick(&keys, &coarse_copy(len, n, &bytes), query, k, None);
        let two = pick(&keys, &coarse_copy(len, n, &bytes), query, k, Some(false));
        assert_eq!(one, two, "the coarse pass lost one of the best blocks");
        // A copy that ranks blocks backwards: no candidate is among the best.
        let negated: Vec<f32> = x[..n * len].iter().map(|v| -v).collect();
        let backwards = coarse_copy(len, n, &f16_rows(&negated).1);
        let two = pick(&keys, &backwards, query, k, Some(false));
        assert!(one.iter().all(|b| !two.contains(b)), "{one:?} {two:?}");
    }
}
