//! Attention flags: `--attn infllm|full|stream` and InfLLM's settings.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::limits::{count, MAX_TOKENS};

use crate::attention::full::cache_type;
use crate::attention::infllm::{BlockSpill, InfllmParams, Retrieval, RetrievalPreset, BLOCK_TYPES, NO_CAP_TOKENS};
use crate::engine::AttnMode;
use crate::ggml::{type_by_name, GgmlType};
use crate::model::Hparams;

/// Ranges of the InfLLM flags: far past any useful setting (the reference
/// uses 128 / 4096 / 128 / 16 / 512), short of sizes that only allocate.
const MAX_N_INIT: u64 = 16384;
const MAX_N_LOCAL: u64 = 1 << 20;
const MAX_BLOCK_SIZE: u64 = 4096;
const MAX_TOPK: u64 = 1024;
const MAX_CHUNK: u64 = 8192;
/// `--mem-budget` at most (16 TiB): its bytes must fit a `usize`.
const MAX_MEM_BUDGET_MIB: u64 = 1 << 24;
/// `--mem-budget` without `--mem-file`.
const DEFAULT_MEM_BUDGET_MIB: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttnKind {
    /// InfLLM: initial tokens + local window + top-k memory blocks
    Infllm,
    /// Standard attention over a KV cache of -c tokens
    Full,
    /// StreamingLLM: initial tokens + local window (InfLLM without retrieval)
    Stream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
    Auto,
}

#[derive(Args, Debug, Clone)]
pub struct AttnArgs {
    /// Attention over the past
    #[arg(long, value_enum, default_value_t = AttnKind::Infllm, help_heading = "Attention / InfLLM")]
    pub attn: AttnKind,
    #[command(flatten)]
    pub settings: AttnSettings,
}

impl AttnArgs {
    /// The attention for a model; `n_ctx` is `-c` (None: not given).
    pub fn mode(&self, hp: &Hparams, n_ctx: Option<usize>) -> anyhow::Result<AttnMode> {
        self.settings.mode(self.attn, hp, n_ctx)
    }

    /// Lines (each after a newline) about flags that do nothing here, and
    /// llama.cpp's warning for full attention past the training context.
    pub fn notes(&self, hp: &Hparams, n_ctx: Option<usize>) -> String {
        let keep = match (self.settings.keep, self.attn) {
            (None, _) => String::new(),
            (Some(_), AttnKind::Full) => "\ninfllm: --keep has no effect: a full context stops the text \
                 (there is no context shift, as in llama.cpp without --context-shift)"
                .into(),
            (Some(_), _) => format!(
                "\ninfllm: --keep has no effect: this attention keeps its first {} tokens (--n-init) and needs no context shift",
                (self.settings.n_init)
                    .unwrap_or(self.settings.preset(self.attn).defaults_for(hp.n_ctx_train).n_init)
            ),
        };
        keep + &self.attention_notes(hp, n_ctx) + self.spill_note()
    }

    fn spill_note(&self) -> &'static str {
        let asked = self.settings.mem_file.is_some() || self.settings.mem_budget.is_some();
        match (asked, self.attn) {
            (true, AttnKind::Full | AttnKind::Stream) => {
                "\ninfllm: --mem-file and --mem-budget have no effect: this attention keeps no memory blocks"
            }
            _ => "",
        }
    }

    fn attention_notes(&self, hp: &Hparams, n_ctx: Option<usize>) -> String {
        match (self.attn, self.settings.flash_attn, n_ctx) {
            (AttnKind::Full, _, Some(n)) if n > hp.n_ctx_train => format!(
                "\ninfllm: warning: -c {n} is past the model's training context ({}): full attention \
                 degrades there (--attn infllm reads past it)",
                hp.n_ctx_train
            ),
            (AttnKind::Full, ..) | (_, Switch::Auto, _) => String::new(),
            (kind, ..) => format!(
                "\ninfllm: -fa has no effect with --attn {} (its attention has its own kernels)",
                kind.to_possible_value()
                    .map_or_else(String::new, |v| v.get_name().to_string())
            ),
        }
    }
}

/// Everything about the attention but its kind.
#[derive(Args, Debug, Clone)]
pub struct AttnSettings {
    /// Initial tokens kept forever, 0..=16384 [default: 128, less for
    /// short-context models]
    #[arg(long = "n-init", value_parser = count(0, MAX_N_INIT), help_heading = "Attention / InfLLM")]
    pub n_init: Option<usize>,
    /// Local window in tokens, 1..=1048576 [default: 4096, less for
    /// short-context models]
    #[arg(long = "n-local", value_parser = count(1, MAX_N_LOCAL), help_heading = "Attention / InfLLM")]
    pub n_local: Option<usize>,
    /// Tokens per memory block, 1..=4096, a multiple of the block type's
    /// unit (32 for q8_0) [default: 128]
    #[arg(long = "block-size", value_parser = count(1, MAX_BLOCK_SIZE), help_heading = "Attention / InfLLM")]
    pub block_size: Option<usize>,
    /// Memory blocks retrieved per chunk and layer, 0..=1024 [default: 16,
    /// less for short-context models]
    #[arg(long, value_parser = count(0, MAX_TOPK), help_heading = "Attention / InfLLM")]
    pub topk: Option<usize>,
    /// Representative tokens per block and head, 1..=--block-size [default: 4]
    #[arg(long = "repr-topk", value_parser = count(1, MAX_BLOCK_SIZE), help_heading = "Attention / InfLLM")]
    pub repr_topk: Option<usize>,
    /// Queries processed together, one retrieval per chunk, 1..=8192 and at
    /// most --n-local [default: 512]
    #[arg(long, value_parser = count(1, MAX_CHUNK), help_heading = "Attention / InfLLM")]
    pub chunk: Option<usize>,
    /// InfLLM: the prompt's last N tokens evaluated one per step, each
    /// retrieving blocks for its own query, 1..=8192 [default: 1, as the
    /// reference: the last token]
    #[arg(long = "tail-steps", value_name = "N", value_parser = count(1, MAX_CHUNK), help_heading = "Attention / InfLLM")]
    pub tail_steps: Option<usize>,
    /// InfLLM: the distance at which queries see the initial tokens and
    /// memory blocks, 0..=1048576 [default: --n-local - 1, as the reference]
    #[arg(long = "mem-distance", value_name = "N", value_parser = count(0, MAX_N_LOCAL), help_heading = "Attention / InfLLM")]
    pub mem_distance: Option<usize>,
    /// InfLLM: how memory blocks are chosen and where their tokens sit,
    /// each choice with its own defaults (the flags above override them)
    #[arg(long, value_enum, default_value_t = RetrievalPreset::Vote, help_heading = "Attention / InfLLM")]
    pub retrieval: RetrievalPreset,
    /// InfLLM: the layers' vote (on by default, with --retrieval vote) with
    /// any preset: at each step of one token (decode, --tail-steps), every
    /// layer attends the blocks that the upper two thirds of the layers
    /// ranked best at the step before (each layer's scores standardized,
    /// then summed; past --coarse-from blocks over a q4_0 copy, then the
    /// best 4 x --topk for --coarse-every steps)
    #[arg(long = "shared-retrieval", help_heading = "Attention / InfLLM")]
    pub shared_retrieval: bool,
    /// InfLLM: blocks per layer from which retrieval scores a q4_0 copy of
    /// the representative keys first, then the best 4 x --topk again in
    /// f16, 0..=16777216 (0: one f16 pass always) [default: 2048]
    #[arg(long = "coarse-from", value_name = "BLOCKS", value_parser = count(0, MAX_TOKENS),
          help_heading = "Attention / InfLLM")]
    pub coarse_from: Option<usize>,
    /// InfLLM: decode steps that one coarse pass's candidates serve (the
    /// steps after it score those only, until a block forms), 1..=16777216
    /// (1: every step scores every block) [default: 16]
    #[arg(long = "coarse-every", value_name = "STEPS", value_parser = count(1, MAX_TOKENS),
          help_heading = "Attention / InfLLM")]
    pub coarse_every: Option<usize>,
    /// Full attention: fused flash-attention kernel (-fa) [auto = on, as llama.cpp on CPU]
    #[arg(long = "flash-attn", value_enum, default_value_t = Switch::Auto, help_heading = "Attention / InfLLM")]
    pub flash_attn: Switch,
    /// Type of the cached keys (-ctk): InfLLM's memory blocks [default:
    /// q8_0] (f32, f16, q8_0, q4_0, q4_1, q5_0, q5_1), full attention's KV
    /// cache [default: f16] (also bf16)
    #[arg(long = "cache-type-k", help_heading = "Attention / InfLLM")]
    pub cache_type_k: Option<String>,
    /// Type of the cached values (-ctv), as -ctk
    #[arg(long = "cache-type-v", help_heading = "Attention / InfLLM")]
    pub cache_type_v: Option<String>,
    /// InfLLM: keep the memory blocks' keys and values in this file once
    /// they pass --mem-budget, read from a mapping: memory holds the blocks
    /// retrieval reads. Unlinked at once, except with --session /
    /// --prompt-cache, which keep it and name it instead of copying blocks
    #[arg(long = "mem-file", value_name = "PATH", help_heading = "Attention / InfLLM")]
    pub mem_file: Option<PathBuf>,
    /// InfLLM: MiB of memory blocks kept in memory; past it they move to
    /// --mem-file, or to a file in the temporary directory, 0..=16777216
    /// [default: 4096, 0 with --mem-file]
    #[arg(long = "mem-budget", value_name = "MiB", value_parser = count(0, MAX_MEM_BUDGET_MIB),
          help_heading = "Attention / InfLLM")]
    pub mem_budget: Option<usize>,
    /// llama.cpp's tokens kept at a context shift, -1..: no effect, there is
    /// no context shift here (InfLLM and stream keep their --n-init tokens)
    #[arg(long = "keep", value_name = "N", allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-1..), help_heading = "Attention / InfLLM")]
    pub keep: Option<i32>,
    /// No context shift: a full context stops the text (the only behaviour
    /// here, and llama.cpp's default)
    #[arg(long = "no-context-shift", help_heading = "Attention / InfLLM")]
    pub no_context_shift: bool,
}

impl AttnSettings {
    /// Where memory blocks go past their budget (`--mem-file`, `--mem-budget`).
    pub fn block_spill(&self) -> BlockSpill {
        let default = match self.mem_file {
            Some(_) => 0,
            None => DEFAULT_MEM_BUDGET_MIB,
        };
        BlockSpill {
            file: self.mem_file.clone(),
            budget: self.mem_budget.unwrap_or(default) << 20,
            keep: false,
        }
    }

    /// The preset whose defaults apply: StreamingLLM retrieves nothing, so
    /// it keeps the paper's window unless another placement is asked for.
    fn preset(&self, kind: AttnKind) -> RetrievalPreset {
        match (kind, self.retrieval) {
            (AttnKind::Stream, RetrievalPreset::Vote) => RetrievalPreset::Paper,
            (_, preset) => preset,
        }
    }

    /// The attention of kind `kind` for a model; `n_ctx` is `-c` (None: not given).
    pub fn mode(&self, kind: AttnKind, hp: &Hparams, n_ctx: Option<usize>) -> anyhow::Result<AttnMode> {
        if kind == AttnKind::Full {
            let cache_type =
                |flag, name: &Option<String>| name.as_deref().map_or(Ok(GgmlType::F16), |n| cache_type(flag, n));
            return Ok(AttnMode::Full {
                flash_attn: self.flash_attn != Switch::Off,
                type_k: cache_type("-ctk", &self.cache_type_k)?,
                type_v: cache_type("-ctv", &self.cache_type_v)?,
            });
        }
        let mut p = self.preset(kind).defaults_for(hp.n_ctx_train);
        p.n_init = self.n_init.unwrap_or(p.n_init);
        p.n_local = self.n_local.unwrap_or(p.n_local);
        p.block_size = self.block_size.unwrap_or(p.block_size);
        p.topk = self.topk.unwrap_or(p.topk);
        p.repr_topk = self.repr_topk.unwrap_or(p.repr_topk);
        p.tail_steps = self.tail_steps.unwrap_or(p.tail_steps);
        p.mem_distance = self.mem_distance.or(p.mem_distance);
        p.shared |= self.shared_retrieval;
        p.coarse_from = self.coarse_from.unwrap_or(p.coarse_from);
        p.coarse_every = self.coarse_every.unwrap_or(p.coarse_every);
        // Sliding-window layers step with the same chunk, at most their window.
        let window = hp.min_window().unwrap_or(usize::MAX);
        p.chunk = self.chunk.unwrap_or(p.chunk.min(p.n_local).min(window));
        anyhow::ensure!(
            p.chunk <= window,
            "--chunk {} exceeds the model's sliding window ({window} tokens)",
            p.chunk
        );
        if kind == AttnKind::Stream {
            (p.topk, p.shared) = (0, false);
        }
        p.type_k = block_type("-ctk", self.cache_type_k.as_deref().unwrap_or("q8_0"))?;
        p.type_v = block_type("-ctv", self.cache_type_v.as_deref().unwrap_or("q8_0"))?;
        p.max_tokens = match n_ctx {
            None | Some(0) => NO_CAP_TOKENS,
            Some(n) => n,
        };
        p.validate(hp.head_dim)?;
        Ok(AttnMode::Infllm(p))
    }
}

/// The options that depart from the paper's semantics, as ", a, b".
fn departures(p: &InfllmParams) -> String {
    let mut out = String::new();
    if p.retrieval == Retrieval::Ordered {
        out += ", memory in text order";
    }
    if let Some(d) = p.mem_distance {
        out += &format!(", memory at distance {d}");
    }
    if p.shared {
        out += ", blocks voted for by the layers";
    }
    if p.tail_steps > 1 {
        out += &format!(", the prompt's last {} tokens a step each", p.tail_steps);
    }
    out
}

fn block_type(flag: &str, name: &str) -> anyhow::Result<crate::ggml::GgmlType> {
    match type_by_name(name) {
        Some(t) if BLOCK_TYPES.contains(&t.name) => Ok(t.id),
        _ => anyhow::bail!("{flag} {name}: unsupported (use one of {})", BLOCK_TYPES.join(", ")),
    }
}

/// A line describing the attention, printed at load.
pub fn describe(mode: &AttnMode, hp: &Hparams) -> String {
    match mode {
        AttnMode::Full {
            flash_attn,
            type_k,
            type_v,
        } => {
            format!(
                "attention: full KV cache {}/{} (flash attention {})",
                type_k.name(),
                type_v.name(),
                if *flash_attn { "on" } else { "off" }
            )
        }
        AttnMode::Infllm(p) => {
            let name = |t| crate::ggml::type_info(t).map_or("?", |i| i.name);
            format!(
                "attention: {} n_init = {}, n_local = {}, block_size = {}, topk = {}, repr_topk = {}, chunk = {}, blocks {}/{}, span {} (trained {}){}",
                if p.topk == 0 { "stream" } else { "infllm" },
                p.n_init,
                p.n_local,
                p.block_size,
                p.topk,
                p.repr_topk,
                p.chunk,
                name(p.type_k),
                name(p.type_v),
                p.span(),
                hp.n_ctx_train,
                departures(p)
            )
        }
    }
}
