//! The graph of a prompt step (a chunk of queries): one retrieval for the
//! chunk's mean query, the chosen blocks gathered and dequantized with the
//! initial tokens and the remainder into one set of global keys and values,
//! then per query tile one softmax over [local | global] logits and tiled
//! matmuls.

use super::coarse::top_blocks;
use super::inputs::{InfllmInputs, Tile};
use super::views::LayerTensors;
use super::InfllmAttention;
use crate::attention::full::{soft_cap, softmax_scale};
use crate::compute::Step;
use crate::ggml::{Context, GgmlType, Tensor};

/// The global keys and values of a step, shared by its tiles.
struct Global<'a> {
    /// [hd, n, n_head_kv] f32, as `LayerTensors::global_keys` lays them out.
    keys: Option<Tensor<'a>>,
    /// Transposed [n, hd, n_head_kv], f16.
    values: Option<Tensor<'a>>,
    n: usize,
}

impl InfllmAttention {
    /// Returns [head_dim * n_head, T]; the chunk is already appended.
    pub(super) fn attend_prefill<'a>(
        &'a self,
        step: &mut Step<'a>,
        lt: &LayerTensors<'a>,
        inp: &InfllmInputs<'a>,
    ) -> Tensor<'a> {
        let g = lt.g;
        let (hd, nh, t) = (lt.hd, lt.n_head, inp.n_tokens as i64);
        let q_local = g.permute(lt.rotated_q(inp.pos_local), [0, 2, 1, 3]); // [hd, T, n_head]
        let q_global = lt.rotated_q(inp.pos_global); // [hd, n_head, T]
        let blocks = self.select_blocks(step, lt, inp, || {
            // The chunk's mean global query.
            let q = inp.pos_retrieve.map_or(q_global, |at| lt.rotated_q(at));
            let q_flat = g.reshape(q, &[hd * nh, t]);
            match inp.ones {
                Some(ones) => g.scale(g.out_prod(q_flat, ones), 1.0 / t as f32),
                None => q_flat,
            }
        });
        let global = self.gather_global(lt, inp, blocks);
        let q_global = g.permute(q_global, [0, 2, 1, 3]); // [hd, T, n_head]
        let outs: Vec<_> = inp
            .tiles
            .iter()
            .map(|tile| self.attend_tile(step, lt, inp, tile, [q_local, q_global], &global))
            .collect();
        let out = match outs.len() {
            1 => g.cont(outs[0]),
            _ => outs.into_iter().reduce(|a, b| g.concat(a, b, 2)).expect("non-empty"),
        };
        g.reshape(out, &[hd * nh, t])
    }

    /// Where the blocks the step attends lie in the layer's block tensors
    /// (`BlockStore::slots`): all blocks when they are at most top-k, else
    /// the top-k by their representative keys' dot product with `query()`
    /// [hd * n_head, 1] (in two passes past `coarse_from` blocks) or the
    /// step's vote. None without blocks.
    pub(super) fn select_blocks<'a>(
        &'a self,
        step: &mut Step<'a>,
        lt: &LayerTensors<'a>,
        inp: &InfllmInputs<'a>,
        query: impl FnOnce() -> Tensor<'a>,
    ) -> Option<Tensor<'a>> {
        let g = lt.g;
        (inp.n_selected > 0).then(|| {
            let ids = inp.all_blocks.unwrap_or_else(|| {
                let ids = self.retrieve(step, lt, inp, query());
                match inp.memory_pos {
                    Some(_) => in_text_order(g, ids),
                    None => ids,
                }
            });
            lt.blocks.slots(g, ids)
        })
    }

    /// The top-k blocks for `query` [hd * n_head, 1], or the step's vote
    /// (`--shared-retrieval`), for which a voting layer copies out its
    /// score of every block (`vote.rs`).
    fn retrieve<'a>(
        &'a self,
        step: &mut Step<'a>,
        lt: &LayerTensors<'a>,
        inp: &InfllmInputs<'a>,
        query: Tensor<'a>,
    ) -> Tensor<'a> {
        let g = lt.g;
        if self.tracing(inp.n_blocks) {
            self.record_scores(step, lt, query);
        }
        if self.votes(lt.x.layer) {
            return self.vote_and_pick(step, lt, inp, query);
        }
        inp.voted.unwrap_or_else(|| {
            let coarse = lt.blocks.coarse_pass(g, self.p.coarse_from, inp.reuse_candidates);
            top_blocks(g, lt.blocks.repr_tensor(g), coarse, query, inp.n_selected)
        })
    }

    /// A voter's retrieval: its scores for the vote (every block, from the
    /// q4_0 copy past `coarse_from`; or the vote's kept candidates alone,
    /// from their f16 keys), and the blocks it attends: the step's vote,
    /// else its own top-k (in two passes past `coarse_from`).
    fn vote_and_pick<'a>(
        &'a self,
        step: &mut Step<'a>,
        lt: &LayerTensors<'a>,
        inp: &InfllmInputs<'a>,
        query: Tensor<'a>,
    ) -> Tensor<'a> {
        let g = lt.g;
        let repr = lt.blocks.repr_tensor(g);
        let coarse = inp
            .vote_candidates
            .is_none()
            .then(|| lt.blocks.coarse_pass(g, self.p.coarse_from, false))
            .flatten();
        let scores = match (inp.vote_candidates, &coarse) {
            // get_rows gives the f16 keys in f32, exactly; back in f16, the
            // matmul sums as one pass over every block does.
            (Some(ids), _) => g.mul_mat(g.cast(g.get_rows(repr, ids), GgmlType::F16), query),
            (None, Some(pass)) => g.mul_mat(pass.keys, query),
            (None, None) => g.mul_mat(repr, query),
        };
        self.record_vote(step, g, lt.x.layer, scores);
        // A step with candidates always has a vote (`vote_candidates`).
        inp.voted.unwrap_or_else(|| match coarse {
            Some(pass) => top_blocks(g, repr, Some(pass), query, inp.n_selected),
            None => g.top_k(g.reshape(scores, &[inp.n_blocks as i64]), inp.n_selected as i32),
        })
    }

    /// The step's global keys (f32) and transposed values (f16): the
    /// selected blocks, dequantized, then the initial tokens, then the
    /// remainder. One matmul over them all (after a small copy) beats one
    /// per part, whose logits would each be copied into place.
    fn gather_global<'a>(
        &self,
        lt: &LayerTensors<'a>,
        inp: &InfllmInputs<'a>,
        blocks: Option<Tensor<'a>>,
    ) -> Global<'a> {
        let g = lt.g;
        let e = lt.hd * lt.n_head_kv;
        let (bs, n_sel) = (self.shape.block_size as i64, inp.n_selected as i64);
        let n_block_keys = bs * n_sel;
        let mut keys = Vec::new();
        let mut values = Vec::new();
        let pos = inp.memory_pos;
        if let Some(idx) = blocks {
            keys.push(lt.rotated_keys(lt.block_keys(idx), pos.and_then(|p| p.blocks)));
            values.push(lt.block_values_t(idx));
        }
        if inp.n_init > 0 {
            keys.push(lt.rotated_keys(lt.initial_keys(inp.n_init), pos.and_then(|p| p.init)));
            values.push(g.view(lt.init_v_t, &[inp.n_init as i64, e], &[lt.init_v_t.nb()[1]], 0));
        }
        if inp.n_rem > 0 {
            let rem = g.cast(lt.raw_keys(inp.n_rem, inp.rem_lo), GgmlType::F32);
            let rem = pos.and_then(|p| p.rem).map_or(rem, |at| lt.rope(rem, at));
            keys.push(g.permute(rem, [0, 2, 1, 3]));
            let vr = g.view(lt.v_t, &[inp.n_rem as i64, e], &[lt.v_t.nb()[1]], inp.rem_lo * 2);
            values.push(g.cast(vr, GgmlType::F32));
        }
        let n = n_block_keys as usize + inp.n_init + inp.n_rem;
        // Values transposed, in f16, so that P·V runs as one tiled matmul.
        let values = values
            .into_iter()
            .reduce(|a, b| g.concat(a, b, 0))
            .map(|all| lt.transposed(g.cast(all, GgmlType::F16), n, 0));
        Global {
            keys: keys
                .into_iter()
                .reduce(|a, b| g.concat(a, b, 1))
                .map(|k| lt.global_keys(k)),
            values,
            n,
        }
    }

    /// One tile's output [hd, n_head, n_q]: logits over its local keys and
    /// the global ones, one softmax, P·V; adds each local key's probability
    /// mass to its accumulated score (blocks pick representatives by it).
    fn attend_tile<'a>(
        &self,
        step: &mut Step<'a>,
        lt: &LayerTensors<'a>,
        inp: &InfllmInputs<'a>,
        tile: &Tile<'a>,
        [q_local, q_global]: [Tensor<'a>; 2],
        global: &Global<'a>,
    ) -> Tensor<'a> {
        let (g, la) = (lt.g, &lt.la);
        let nh = lt.n_head;
        // The tile's queries: rows [q0, q0 + n_q) of a [x, T, n_head] tensor.
        let rows = |x: Tensor<'a>| {
            let nb = x.nb();
            g.view(x, &[x.ne()[0], tile.n_q as i64, nh], &[nb[1], nb[2]], tile.q0 * nb[1])
        };
        // Queries copied contiguous: our kernel and ggml's tiled ones take only those.
        let local_keys = lt.transposed(lt.k_rot_t, tile.n_keys, tile.lo);
        let local = lt.key_logits(local_keys, g.cont(rows(q_local)), None);
        let mut logits = vec![soft_cap(g, local, la)];
        if let Some(k) = global.keys {
            logits.push(soft_cap(g, lt.global_logits(k, g.cont(rows(q_global))), la));
        }
        let probs = lt.tile_softmax(lt.join_rows(&logits), tile, softmax_scale(la));

        // Outputs: probabilities times values, local then global.
        let pnb = probs.nb();
        let part = |n: usize, off: usize| g.view(probs, &[n as i64, tile.n_q as i64, nh], &[pnb[1], pnb[2]], off * 4);
        let p_local = part(tile.n_keys, 0);
        let mut out = lt.tile_value_sums(lt.transposed(lt.v_t, tile.n_keys, tile.lo), p_local);
        if let Some(v) = global.values {
            out = g.add(out, lt.tile_value_sums(v, part(global.n, tile.n_keys)));
        }
        // Tiles overlap: graph order sums their masses.
        if self.p.topk > 0 {
            let ones = inp.ones_heads.expect("multi-token steps have ones");
            let n = tile.n_keys as i64;
            let mass = g.reshape(g.out_prod(p_local, rows(ones)), &[n, nh]);
            let acc = g.view(lt.score, &[n, nh], &[lt.score.nb()[1]], tile.lo * 4);
            step.graph.expand(g.add_inplace(acc, mass));
        }
        g.permute(out, [0, 2, 1, 3]) // [hd, n_head, n_q]
    }
}

/// Block indices `ids` (I32 [k]) sorted ascending: the blocks in text order.
fn in_text_order<'a>(g: &'a Context, ids: Tensor<'a>) -> Tensor<'a> {
    let k = ids.ne()[0];
    let f = g.cast(ids, GgmlType::F32);
    let sorted = g.get_rows(g.reshape(f, &[1, k]), g.argsort_ascending(f));
    g.reshape(g.cast(sorted, GgmlType::I32), &[k])
}
