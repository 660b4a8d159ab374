//! The graph of a decode step (one new token), reading every key and value
//! once: our kernels read the query heads sharing a KV head together
//! (`key_scores` and `value_sums` over the window: ggml's f16 matmul of
//! three columns took 4x and 1.8x as long), and the retrieved blocks in
//! their stored type (no gathered copy; `mul_mat_id` with an expert per
//! block and KV head spent most of its time on per-expert bookkeeping that
//! grows with the text). Measurements: docs/perf.md.

use super::inputs::{DecodeRanges, InfllmInputs};
use super::views::LayerTensors;
use super::InfllmAttention;
use crate::attention::full::{mul_mat_capped, soft_cap, softmax_scale};
use crate::compute::Step;
use crate::ggml::{GgmlType, Tensor};

/// Which keys a decode step's logits row holds, in order.
struct Parts<'a> {
    /// Local keys read (padded; the valid ones come as a range).
    n_local: usize,
    /// The retrieved blocks' indices.
    blocks: Option<Tensor<'a>>,
    n_block_keys: usize,
    n_init: usize,
    n_rem: usize,
}

impl InfllmAttention {
    /// Returns [head_dim * n_head, 1]; the token is already appended.
    pub(super) fn attend_decode<'a>(
        &'a self,
        step: &mut Step<'a>,
        lt: &LayerTensors<'a>,
        inp: &InfllmInputs<'a>,
    ) -> Tensor<'a> {
        let g = lt.g;
        let (hd, nkv, nh) = (lt.hd, lt.n_head_kv, lt.n_head);
        // [hd, group, n_head_kv]: head h = kv * group + j.
        let q_local = g.reshape(lt.rotated_q(inp.pos_local), &[hd, nh / nkv, nkv]);
        let q_global = g.reshape(lt.rotated_q(inp.pos_global), &[hd, nh / nkv, nkv]);
        let ranges = inp.ranges.expect("decode steps have key ranges");
        let blocks = self.select_blocks(step, lt, inp, || {
            let q = inp.pos_retrieve.map_or(q_global, |at| lt.rotated_q(at));
            g.reshape(q, &[hd * nh, 1])
        });
        let parts = Parts {
            n_local: inp.tiles[0].n_keys,
            blocks,
            n_block_keys: inp.n_selected * self.shape.block_size,
            n_init: inp.n_init,
            n_rem: inp.n_rem,
        };
        let logits = self.decode_logits(lt, inp, &parts, ranges, [q_local, q_global]);
        // One softmax over all query heads' rows as one matrix (ggml splits
        // rows, not heads, between threads: [W, 3, 3] left one thread 6 rows).
        let width = logits.ne()[0];
        let probs = lt.decode_softmax(g.reshape(logits, &[width, nh]), softmax_scale(&lt.la));
        let out = self.decode_values(lt, inp, &parts, ranges, probs);
        // Accumulate each local key's probability (per query head; only blocks use it).
        if self.p.topk > 0 {
            let n = parts.n_local as i64;
            let mass = g.view(probs, &[n, nh], &[width as usize * 4], 0);
            let acc = g.view(lt.score, &[n, nh], &[lt.score.nb()[1]], inp.tiles[0].lo * 4);
            step.graph.expand(g.add_inplace(acc, mass));
        }
        g.reshape(out, &[hd * nh, 1])
    }

    /// Logits [local | blocks | initial | remainder, group, n_head_kv].
    fn decode_logits<'a>(
        &self,
        lt: &LayerTensors<'a>,
        inp: &InfllmInputs<'a>,
        parts: &Parts<'a>,
        ranges: DecodeRanges<'a>,
        [q_local, q_global]: [Tensor<'a>; 2],
    ) -> Tensor<'a> {
        let (g, la) = (lt.g, &lt.la);
        // The local window through our kernel: a matmul over key rows spends
        // most of its time in a horizontal sum per dot product (docs/perf.md).
        let local_keys = lt.transposed(lt.k_rot_t, parts.n_local, inp.tiles[0].lo);
        let local = lt.key_logits(local_keys, q_local, Some(ranges.local));
        let mut logits = vec![soft_cap(g, local, la)];
        let pos = inp.memory_pos;
        if let Some(ids) = parts.blocks {
            let block = match pos.and_then(|p| p.blocks) {
                // In text order: the keys dequantized and rotated at their positions.
                Some(at) => mul_mat_capped(g, lt.rotated_keys(lt.block_keys(ids), Some(at)), q_global, la),
                None => soft_cap(g, lt.block_logits(ids, q_global), la),
            };
            logits.push(block);
        }
        if parts.n_init > 0 {
            let init = lt.rotated_keys(lt.initial_keys(parts.n_init), pos.and_then(|p| p.init));
            logits.push(mul_mat_capped(g, init, q_global, la));
        }
        if parts.n_rem > 0 {
            let raw = lt.raw_keys(parts.n_rem, inp.rem_lo);
            let raw = match pos.and_then(|p| p.rem) {
                Some(at) => lt.rope(g.cast(raw, GgmlType::F32), at),
                None => raw,
            };
            let rem_keys = g.permute(raw, [0, 2, 1, 3]);
            let rem = mul_mat_capped(g, lt.operand(rem_keys), q_global, la);
            logits.push(lt.mask_outside(rem, ranges.remainder));
        }
        lt.join_rows(&logits)
    }

    /// Probabilities [width, n_head] times the values of the same keys:
    /// [hd, group, n_head_kv].
    fn decode_values<'a>(
        &self,
        lt: &LayerTensors<'a>,
        inp: &InfllmInputs<'a>,
        parts: &Parts<'a>,
        ranges: DecodeRanges<'a>,
        probs: Tensor<'a>,
    ) -> Tensor<'a> {
        let g = lt.g;
        let nkv = lt.n_head_kv;
        let r = lt.n_head / nkv;
        let width = probs.ne()[0] as usize;
        let probs = g.reshape(probs, &[width as i64, r, nkv]);
        // The probabilities of keys [off, off + n) of the row.
        let part = |n: usize, off: usize| {
            let nb = [width * 4, width * 4 * r as usize];
            g.view(probs, &[n as i64, r, nkv], &nb, off * 4)
        };
        let local_values = lt.transposed(lt.v_t, parts.n_local, inp.tiles[0].lo);
        let mut out = lt.value_sums(local_values, part(parts.n_local, 0), Some(ranges.local));
        let mut off = parts.n_local;
        if let Some(ids) = parts.blocks {
            let p = part(parts.n_block_keys, off);
            out = g.add(out, lt.block_value_sums(ids, p));
            off += parts.n_block_keys;
        }
        if parts.n_init > 0 {
            let init_values = lt.transposed(lt.init_v_t, parts.n_init, 0);
            out = g.add(out, g.mul_mat(init_values, lt.operand(part(parts.n_init, off))));
            off += parts.n_init;
        }
        if parts.n_rem > 0 {
            let rem_values = lt.transposed(lt.v_t, parts.n_rem, inp.rem_lo);
            out = g.add(
                out,
                lt.value_sums(rem_values, part(parts.n_rem, off), Some(ranges.remainder)),
            );
        }
        out
    }
}
