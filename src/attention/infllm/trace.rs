//! Recording retrieval (`infllm passkey --trace-retrieval`): at every step
//! that retrieves, each layer's per-head scores of every block (its
//! representative key for head h · the step's query for head h; the sum
//! over heads is what the paper ranks by). The step graph copies them into
//! a host tensor per layer; `commit` reads them out after the step ran.

use super::views::LayerTensors;
use super::window::decode;
use super::InfllmAttention;
use crate::compute::Step;
use crate::ggml::{Buffer, Context, GgmlType, Tensor, TensorId};

/// One layer's retrieval at one step.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RetrievalRecord {
    /// Tokens before the step, and the step's (1: decode, or a prompt's
    /// last token, which retrieves for its own query).
    pub n_past: usize,
    pub n_tokens: usize,
    /// The layer's index among the instance's (every layer for a model
    /// without sliding-window layers).
    pub layer: usize,
    pub n_blocks: usize,
    pub n_head: usize,
    /// Head-major [n_head][n_blocks].
    pub head_scores: Vec<f32>,
    /// With `--shared-retrieval`, at a step that took the layers' vote: the
    /// blocks every layer attended (not this layer's own top-k).
    pub voted: Option<Vec<i32>>,
    /// At a step whose voters scored only the last vote's kept candidates
    /// (past `coarse_from` blocks): those blocks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vote_candidates: Option<Vec<i32>>,
}

impl RetrievalRecord {
    /// Each block's score summed over heads.
    pub fn summed(&self) -> Vec<f32> {
        let mut sum = vec![0f32; self.n_blocks];
        for head in self.head_scores.chunks_exact(self.n_blocks) {
            sum.iter_mut().zip(head).for_each(|(s, x)| *s += x);
        }
        sum
    }

    /// Blocks by `scores`, best first (ties: the earlier block).
    pub fn ranking(scores: &[f32]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        order
    }
}

/// The host tensors the step graphs copy scores into, and what was read.
pub(super) struct Tracer {
    // Field order: the buffer holds the context's tensors.
    _buffer: Buffer,
    ctx: Context,
    /// Per layer, F32 [cap_blocks * n_head].
    tensors: Vec<TensorId>,
    cap_blocks: usize,
    records: Vec<RetrievalRecord>,
}

impl Tracer {
    /// Room for `cap_blocks` blocks in each of `n_layer` layers.
    pub fn new(n_layer: usize, n_head: usize, cap_blocks: usize) -> anyhow::Result<Self> {
        let ctx = Context::new(n_layer, 0);
        let tensors = (0..n_layer)
            .map(|_| ctx.id(ctx.new_tensor(GgmlType::F32, &[(cap_blocks * n_head) as i64])))
            .collect();
        Ok(Self {
            _buffer: Buffer::alloc_context(&ctx)?,
            ctx,
            tensors,
            cap_blocks,
            records: Vec::new(),
        })
    }
}

impl InfllmAttention {
    /// Starts recording retrieval with room for `max_tokens` of text (the
    /// blocks past it are not recorded), or stops (None).
    pub fn trace(&mut self, max_tokens: Option<usize>) -> anyhow::Result<()> {
        self.tracer = match max_tokens {
            Some(n) if self.p.topk > 0 => Some(Tracer::new(
                self.layers.len(),
                self.shape.n_head,
                n.div_ceil(self.p.block_size),
            )?),
            _ => None,
        };
        Ok(())
    }

    /// The records since the last call.
    pub fn take_trace(&mut self) -> Vec<RetrievalRecord> {
        self.tracer
            .as_mut()
            .map_or_else(Vec::new, |t| std::mem::take(&mut t.records))
    }

    /// Whether this step's retrieval is recorded.
    pub(super) fn tracing(&self, n_blocks: usize) -> bool {
        self.tracer.as_ref().is_some_and(|t| n_blocks <= t.cap_blocks)
    }

    /// Adds to `step` the copy of layer `lt`'s per-head block scores for
    /// `query` [hd * n_head, 1] into its trace tensor.
    pub(super) fn record_scores<'a>(&'a self, step: &mut Step<'a>, lt: &LayerTensors<'a>, query: Tensor<'a>) {
        let Some(tracer) = &self.tracer else { return };
        let g = lt.g;
        let (hd, nh) = (lt.hd, lt.n_head);
        let n_blocks = lt.blocks.len() as i64;
        let repr = g.reshape(lt.blocks.repr_tensor(g), &[hd, nh, n_blocks]);
        let repr = g.permute(repr, [0, 2, 1, 3]); // [hd, n_blocks, nh]
        let q = g.permute(g.reshape(query, &[hd, nh, 1]), [0, 2, 1, 3]); // [hd, 1, nh]
        let scores = g.mul_mat_f32(repr, q); // [n_blocks, 1, nh]
        let dst = tracer.ctx.tensor(tracer.tensors[lt.x.layer]);
        let dst = g.reshape(g.view(dst, &[n_blocks * nh], &[], 0), &[n_blocks, 1, nh]);
        step.graph.expand(g.cpy(scores, dst));
    }

    /// After a step of `n_tokens` that retrieved: each layer's scores.
    pub(super) fn read_trace(&mut self, n_tokens: usize) {
        let (n_blocks, n_head) = (self.n_blocks(), self.shape.n_head);
        let n_past = self.pos.n_past;
        let voted = self.voted_blocks(n_tokens).map(<[i32]>::to_vec);
        let vote_candidates = self.vote_candidates(n_tokens).map(<[i32]>::to_vec);
        let Some(tracer) = self.tracer.as_mut() else { return };
        for (layer, &id) in tracer.tensors.iter().enumerate() {
            let mut bytes = vec![0u8; n_blocks * n_head * 4];
            tracer.ctx.tensor(id).read_bytes(0, &mut bytes);
            let head_scores = decode(GgmlType::F32, &bytes);
            tracer.records.push(RetrievalRecord {
                n_past,
                n_tokens,
                layer,
                n_blocks,
                n_head,
                head_scores,
                voted: voted.clone(),
                vote_candidates: vote_candidates.clone(),
            });
        }
    }
}
