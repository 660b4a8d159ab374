//! InfLLM settings and their per-model defaults.

use anyhow::ensure;

use crate::ggml::{type_by_name, type_info, GgmlType, ROW_TILE};

/// Types allowed for the quantized block store (`-ctk` / `-ctv`): their
/// quantization blocks (1 or 32 values) divide any head dimension we run.
pub const BLOCK_TYPES: &[&str] = &["f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"];

/// Text length addressed when `-c 0` asks for no cap (address space is
/// reserved for it, memory is used only as the text grows).
pub const NO_CAP_TOKENS: usize = 1 << 24;

/// Where memory tokens sit for the queries that attend them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retrieval {
    /// The paper's: every initial, retrieved and remainder token at one
    /// distance (`mem_distance`, by default `n_local - 1`).
    #[default]
    Paper,
    /// In text order: initial tokens, the retrieved blocks sorted by their
    /// place in the text, the remainder, each token at its own position in
    /// that sequence, the last one at `mem_distance`: the order of the
    /// tokens inside a block (a key's digits) stays visible.
    Ordered,
}

impl Retrieval {
    fn is_paper(&self) -> bool {
        *self == Retrieval::Paper
    }
}

/// How blocks are chosen and placed (`--retrieval`), each with its
/// defaults; flags given beside it override them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RetrievalPreset {
    /// The layers' vote (`shared`) on a 2048-token window with 8 blocks,
    /// the prompt's last 16 tokens a step each: exact 5-digit keys where
    /// the paper's settings lose digits (docs/infllm.md, "The default")
    #[default]
    Vote,
    /// The paper's: each layer its own blocks, a 4096-token window with 16
    /// blocks, the prompt's last token a step
    Paper,
    /// The paper's, with memory tokens in text order (`Retrieval::Ordered`)
    Ordered,
}

impl RetrievalPreset {
    /// The preset's settings for a model trained on `n_ctx_train` tokens.
    pub fn defaults_for(self, n_ctx_train: usize) -> InfllmParams {
        let paper = InfllmParams::paper_values();
        let p = match self {
            RetrievalPreset::Paper => paper,
            RetrievalPreset::Ordered => InfllmParams {
                retrieval: Retrieval::Ordered,
                ..paper
            },
            RetrievalPreset::Vote => InfllmParams {
                n_local: 2048,
                topk: 8,
                tail_steps: 16,
                shared: true,
                ..paper
            },
        };
        p.within(n_ctx_train)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InfllmParams {
    /// First tokens kept forever (attention sinks).
    pub n_init: usize,
    /// Sliding local window, in tokens.
    pub n_local: usize,
    /// Tokens per memory block.
    pub block_size: usize,
    /// Memory blocks retrieved per chunk and layer (0: StreamingLLM).
    pub topk: usize,
    /// Representative tokens per block and head.
    pub repr_topk: usize,
    /// Queries processed together; one retrieval per chunk.
    pub chunk: usize,
    /// ggml types of the stored block keys and values.
    pub type_k: GgmlType,
    pub type_v: GgmlType,
    /// Most tokens of text (the `-c` cap; `NO_CAP_TOKENS` when 0 is given).
    pub max_tokens: usize,
    /// A prompt's last tokens evaluated one per step, each retrieving for
    /// its own query (1: the last one, as the reference does). How a
    /// prompt is stepped, not a shape of the state: not saved in sessions.
    #[serde(skip, default = "one")]
    pub tail_steps: usize,
    /// Bytes a prompt tile's logits (f32, queries x heads x keys) may
    /// take: tiles are halved from 128 queries down to 32 to stay within
    /// it, so that the softmax and P·V find the logits in cache (pp512 at
    /// 8K, 16 MiB: tiles of 128, 29 MB, 102 t/s; of 64, 129 t/s; of 32,
    /// 126 t/s; docs/perf.md). How a prompt is computed: not saved.
    #[serde(skip, default = "tile_logits_bytes")]
    pub tile_bytes: usize,
    /// Blocks per layer from which retrieval scores in two passes: a q4_0
    /// copy of every representative key, then the f16 keys of the best
    /// few (`coarse.rs`); 0: one f16 pass always. How retrieval is
    /// computed, not a shape of the state: not saved.
    #[serde(skip, default = "coarse_blocks")]
    pub coarse_from: usize,
    /// Decode steps that one coarse pass's candidates serve (1: every step
    /// scores every block); a new block or a prompt step ends them. How
    /// retrieval is computed: not saved.
    #[serde(skip, default = "coarse_steps")]
    pub coarse_every: usize,
    /// The distance at which a query sees the keys outside its window
    /// (None: `n_local - 1`, the reference's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_distance: Option<usize>,
    /// Positions of memory tokens (sessions saved before it: the paper's).
    #[serde(default, skip_serializing_if = "Retrieval::is_paper")]
    pub retrieval: Retrieval,
    /// Steps of one token attend, in every layer, the blocks the upper
    /// layers voted for at the step before (`vote.rs`); false: each layer
    /// its own, as the paper. How blocks are chosen: not saved.
    #[serde(skip)]
    pub shared: bool,
}

fn one() -> usize {
    1
}

fn tile_logits_bytes() -> usize {
    16 << 20
}

/// 2048 blocks (256K tokens at the default block size): below it one
/// pass was as fast, its keys in cache (`bench/retrieval.rs`, docs/infllm.md).
pub const DEFAULT_COARSE_FROM: usize = 2048;

fn coarse_blocks() -> usize {
    DEFAULT_COARSE_FROM
}

/// Decode steps per coarse pass (docs/infllm.md, "Retrieval past 2048 blocks").
pub const DEFAULT_COARSE_EVERY: usize = 16;

fn coarse_steps() -> usize {
    DEFAULT_COARSE_EVERY
}

impl InfllmParams {
    /// The reference defaults (128 / 4096 / 128 / 16 / 4 / 512), shrunk for
    /// models trained on short contexts (`within`): the paper's semantics,
    /// which the tests compare against (the command line's default is
    /// `RetrievalPreset::Vote`).
    pub fn defaults_for(n_ctx_train: usize) -> Self {
        Self::paper_values().within(n_ctx_train)
    }

    fn paper_values() -> Self {
        let q8_0 = type_by_name("q8_0").map_or(GgmlType::F16, |t| t.id);
        Self {
            n_init: 128,
            n_local: 4096,
            block_size: 128,
            topk: 16,
            repr_topk: 4,
            chunk: 512,
            type_k: q8_0,
            type_v: q8_0,
            max_tokens: NO_CAP_TOKENS,
            tail_steps: 1,
            tile_bytes: tile_logits_bytes(),
            coarse_from: coarse_blocks(),
            coarse_every: coarse_steps(),
            mem_distance: None,
            retrieval: Retrieval::Paper,
            shared: false,
        }
    }

    /// Halves the window and top-k until the attended span n_init +
    /// n_local + topk * block_size is below `n_ctx_train`.
    fn within(mut self, n_ctx_train: usize) -> Self {
        let p = &mut self;
        while p.span() >= n_ctx_train && p.n_local > 256 {
            p.n_local /= 2;
            p.topk = (p.topk / 2).max(1);
        }
        p.chunk = p.chunk.min(p.n_local);
        p.n_init = p.n_init.min(p.n_local / 4);
        self
    }

    /// Where global queries rotate: the distance of the keys outside the window.
    pub fn global_position(&self) -> usize {
        self.mem_distance.unwrap_or(self.n_local - 1)
    }

    /// Tokens a query can attend: initial + local + retrieved.
    pub fn span(&self) -> usize {
        self.n_init + self.n_local + self.topk * self.block_size
    }

    pub fn validate(&self, head_dim: usize) -> anyhow::Result<()> {
        ensure!(self.n_local > 0, "--n-local must be positive");
        ensure!(self.tail_steps > 0, "--tail-steps must be positive");
        ensure!(self.coarse_every > 0, "--coarse-every must be positive");
        ensure!(self.block_size > 0, "--block-size must be positive");
        ensure!(
            self.chunk > 0 && self.chunk <= self.n_local,
            "--chunk must be between 1 and --n-local ({})",
            self.n_local
        );
        ensure!(
            self.repr_topk > 0 && self.repr_topk <= self.block_size,
            "--repr-topk must be between 1 and --block-size"
        );
        for (flag, ty) in [("-ctk", self.type_k), ("-ctv", self.type_v)] {
            let info = type_info(ty).ok_or_else(|| anyhow::anyhow!("{flag}: unknown type {ty}"))?;
            ensure!(
                BLOCK_TYPES.contains(&info.name),
                "{flag} {}: not a block-store type (use one of {})",
                info.name,
                BLOCK_TYPES.join(", ")
            );
            // Rows of whole quantization blocks, and (when blocks are kept)
            // of whole tiles for the kernels that read them in decode.
            let tile = if self.topk > 0 { ROW_TILE as u64 } else { 1 };
            let unit = info.block_size.max(tile);
            ensure!(
                (head_dim as u64).is_multiple_of(unit) && (self.block_size as u64).is_multiple_of(unit),
                "{flag} {}: head dim {head_dim} and --block-size {} must be multiples of {unit}",
                info.name,
                self.block_size,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_keep_the_span_inside_the_training_context() {
        let p = InfllmParams::defaults_for(8192);
        assert_eq!(
            (p.n_init, p.n_local, p.block_size, p.topk, p.repr_topk, p.chunk),
            (128, 4096, 128, 16, 4, 512)
        );
        assert_eq!(p.span(), 6272);
        for n in [1024, 2048, 4096, 32768] {
            let p = InfllmParams::defaults_for(n);
            assert!(p.span() < n, "{n}: {p:?}");
            p.validate(64).unwrap();
        }
    }

    #[test]
    fn presets_differ_from_the_paper_only_where_they_say() {
        let paper = InfllmParams::defaults_for(8192);
        assert_eq!(RetrievalPreset::Paper.defaults_for(8192), paper);
        let ordered = RetrievalPreset::Ordered.defaults_for(8192);
        assert_eq!(
            ordered,
            InfllmParams {
                retrieval: Retrieval::Ordered,
                ..paper
            }
        );
        let vote = RetrievalPreset::Vote.defaults_for(8192);
        let expected = InfllmParams {
            n_local: 2048,
            topk: 8,
            tail_steps: 16,
            shared: true,
            ..paper
        };
        assert_eq!(vote, expected);
        assert_eq!(vote.span(), 3200);
        // A model trained on 2K tokens: halved once, as the paper's are.
        let short = RetrievalPreset::Vote.defaults_for(2048);
        assert_eq!(
            (short.n_init, short.n_local, short.topk, short.chunk),
            (128, 1024, 4, 512)
        );
        assert!(short.shared && short.span() < 2048);
    }
}
