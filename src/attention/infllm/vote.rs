//! Shared retrieval (`--shared-retrieval`): at a step of one token, every
//! layer attends the same blocks, those the upper layers voted for at the
//! step before. Why: in SmolLM2 the lower layers rank the block that holds
//! a passkey far down (20th-84th) where the upper layers rank it among
//! their first few, and with the key's block forced into every layer the
//! model copies keys it otherwise loses (docs/infllm.md, "Shared
//! retrieval").
//!
//! The voters are the instance's upper two thirds of layers. At every step
//! that retrieves, each voter scores every block as the paper ranks them
//! (representative key · query, summed over heads) and the graph copies the
//! scores out; `commit` standardizes each voter's scores over the blocks
//! (mean 0, variance 1, so that no layer's scale outweighs the others),
//! sums them, and keeps the best `topk` as the next step's blocks.
//!
//! Past `coarse_from` blocks a voter scores the blocks' q4_0 copy
//! (`coarse.rs`), and a decode step that ran that pass keeps the tally's
//! best `CANDIDATES` x `topk` blocks: the decode steps that reuse
//! candidates (`reuses_candidates`) score only those, from their f16 keys,
//! and vote among them. So the vote reads every block once per
//! `coarse_every` steps, as the paper's retrieval does.

use super::coarse::CANDIDATES;
use super::window::decode;
use super::{InfllmAttention, RetrievalRecord};
use crate::attention::alloc_per_layer;
use crate::compute::Step;
use crate::ggml::{Buffer, BufferType, Context, GgmlType, Tensor, TensorId};

/// The tensors the voters' scores are copied into: in host memory, and
/// for a layer on a device in its memory too, for the steps that score
/// there (the copy then stays on the device, no graph split; `read_vote`
/// reads the scores back after the step).
pub(super) struct Voter {
    // Field order: the buffers hold the context's tensors.
    _buffers: Vec<Buffer>,
    ctx: Context,
    /// F32 [cap_blocks] per voting layer, layer `first` + i: on the host,
    /// and on the layer's device if it has one.
    tensors: Vec<(TensorId, Option<TensorId>)>,
    first: usize,
}

/// The blocks voted for at the step that ended at `after` tokens.
#[derive(Debug, Clone)]
pub(super) struct Vote {
    pub after: usize,
    pub ids: Vec<i32>,
    /// Past `coarse_from` blocks: the blocks the voters score at the decode
    /// steps that reuse candidates (the best of the last full tally).
    pub candidates: Option<Vec<i32>>,
}

impl Voter {
    /// Voters for an instance whose layers' memory is `bufts`, holding up
    /// to `cap_blocks` blocks.
    pub fn new(bufts: &[BufferType], cap_blocks: usize) -> anyhow::Result<Self> {
        let (n_layer, cpu) = (bufts.len(), BufferType::cpu());
        let first = n_layer / 3;
        let ctx = Context::new(2 * (n_layer - first), 0);
        let scores = || ctx.id(ctx.new_tensor(GgmlType::F32, &[cap_blocks as i64]));
        let tensors: Vec<(TensorId, Option<TensorId>)> = bufts[first..]
            .iter()
            .map(|&buft| (scores(), (buft != cpu).then(scores)))
            .collect();
        let host: Vec<Tensor<'_>> = tensors.iter().map(|t| ctx.tensor(t.0)).collect();
        let on_devices: Vec<Vec<TensorId>> = (0..n_layer)
            .map(|il| il.checked_sub(first).and_then(|i| tensors[i].1).into_iter().collect())
            .collect();
        let mut buffers = alloc_per_layer(&ctx, &on_devices, bufts)?;
        buffers.push(Buffer::alloc_tensors(cpu, &host)?);
        Ok(Self {
            _buffers: buffers,
            ctx,
            tensors,
            first,
        })
    }

    /// Layer `il`'s tensor, if it votes: on its device when the step
    /// scores there.
    fn tensor(&self, il: usize, on_device: bool) -> Option<Tensor<'_>> {
        let (host, device) = self.tensors[il.checked_sub(self.first)?];
        let id = device.filter(|_| on_device).unwrap_or(host);
        Some(self.ctx.tensor(id))
    }
}

/// The `k` blocks with the highest sum over `layers` of their standardized
/// scores (each layer's scores over the same blocks); ties go to the
/// earlier block.
pub fn tally(layers: &[Vec<f32>], k: usize) -> Vec<i32> {
    let n = layers.first().map_or(0, Vec::len);
    let mut sum = vec![0f64; n];
    for scores in layers {
        let mean = scores.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = scores.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        // Equal scores say nothing: such a layer adds 0 to every block.
        let inv_sd = if var > 0.0 { var.sqrt().recip() } else { 0.0 };
        sum.iter_mut()
            .zip(scores)
            .for_each(|(s, &x)| *s += (x as f64 - mean) * inv_sd);
    }
    let sum: Vec<f32> = sum.into_iter().map(|s| s as f32).collect();
    let best = RetrievalRecord::ranking(&sum).into_iter().take(k);
    best.map(|b| b as i32).collect()
}

impl InfllmAttention {
    /// Whether layer `il` copies out its block scores for the vote.
    pub(super) fn votes(&self, il: usize) -> bool {
        self.voter.as_ref().is_some_and(|v| v.tensor(il, false).is_some())
    }

    /// Where layer `il`'s scores go: on its device when its blocks are
    /// scored there.
    fn vote_tensor(&self, il: usize) -> Option<Tensor<'_>> {
        let on_device = self.layers[il].blocks.scored_on_device();
        self.voter.as_ref()?.tensor(il, on_device)
    }

    /// Adds to `step` the copy of layer `il`'s block scores (F32 [n_blocks, 1]).
    pub(super) fn record_vote<'a>(&'a self, step: &mut Step<'a>, g: &'a Context, il: usize, scores: Tensor<'a>) {
        let Some(dst) = self.vote_tensor(il) else { return };
        let n = scores.ne()[0];
        step.graph
            .expand(g.cpy(g.reshape(scores, &[n]), g.view(dst, &[n], &[], 0)));
    }

    /// After a step that retrieved (before its blocks form): the voters'
    /// tally for the next step, over the blocks the step's voters scored.
    pub(super) fn read_vote(&mut self, n_tokens: usize) {
        let Some(voter) = &self.voter else { return };
        let kept = self.vote_candidates(n_tokens).map(<[i32]>::to_vec);
        let n = kept.as_ref().map_or(self.n_blocks(), Vec::len);
        let layers: Vec<Vec<f32>> = (voter.first..self.layers.len())
            .filter_map(|il| self.vote_tensor(il))
            .map(|t| {
                let mut bytes = vec![0u8; n * 4];
                t.read_bytes(0, &mut bytes);
                decode(GgmlType::F32, &bytes)
            })
            .collect();
        let topk = self.p.topk;
        let best = tally(&layers, CANDIDATES * topk);
        let (ids, candidates) = match kept {
            // Positions among the candidates, as block ids.
            Some(kept) => (best[..topk].iter().map(|&i| kept[i as usize]).collect(), Some(kept)),
            None => {
                let keep = n_tokens == 1 && self.scores_coarse();
                (best[..topk.min(n)].to_vec(), keep.then_some(best))
            }
        };
        self.vote = Some(Vote {
            after: self.pos.n_past + n_tokens,
            ids,
            candidates,
        });
    }

    /// The candidates the voters score at a step of `n_tokens` from here,
    /// if it takes the last step's vote and reuses candidates; None: they
    /// score every block.
    pub(super) fn vote_candidates(&self, n_tokens: usize) -> Option<&[i32]> {
        self.voted_blocks(n_tokens)?;
        let kept = self.vote.as_ref()?.candidates.as_deref()?;
        self.reuses_candidates(n_tokens).then_some(kept)
    }

    /// The blocks every layer attends at a step of `n_tokens` from here:
    /// the last step's vote, for a step of one token that retrieves.
    pub(super) fn voted_blocks(&self, n_tokens: usize) -> Option<&[i32]> {
        let vote = self.vote.as_ref()?;
        (n_tokens == 1 && vote.after == self.pos.n_past && self.retrieves()).then_some(vote.ids.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::tally;

    #[test]
    fn the_tally_standardizes_each_layer_before_summing() {
        // Layer 0's scores are ~100x layer 1's: summed raw, layer 0 would
        // decide (blocks 0, 2, 1, 3); standardized, each counts alike.
        let layers = vec![vec![300.0, 100.0, 200.0, 0.0], vec![0.0, 4.0, 3.0, 1.0]];
        assert_eq!(tally(&layers, 4), vec![2, 1, 0, 3]);
        assert_eq!(tally(&layers, 2), vec![2, 1]);
        // Ties go to the earlier block.
        assert_eq!(tally(&[vec![1.0, 0.0], vec![0.0, 1.0]], 2), vec![0, 1]);
        // A layer whose scores are all equal adds nothing.
        let flat = vec![vec![5.0; 4], vec![1.0, 0.0, 2.0, 3.0]];
        assert_eq!(tally(&flat, 1), vec![3]);
    }
}
