//! Hyper-parameters read from GGUF metadata (`{arch}.*` keys).

use anyhow::{bail, ensure};

use super::meta::{Meta, Sign};
use crate::ggml::{RopeParams, ROPE_NEOX, ROPE_NORMAL};
use crate::gguf::GgufFile;
use crate::quote::quoted;

/// Bounds on the hyper-parameters: far above real models (the largest have
/// ~130 layers, 16K-wide embeddings, 128 heads of 256, 10M-token contexts),
/// low enough that nothing sized by them (per-layer tables, caches for the
/// trained context) can exhaust memory before the tensor shapes confirm them.
pub const MAX_LAYERS: usize = 4096;
pub const MAX_EMBD: usize = 1 << 17;
pub const MAX_FF: usize = 1 << 20;
pub const MAX_HEADS: usize = 4096;
pub const MAX_HEAD_DIM: usize = 4096;
pub const MAX_CONTEXT: usize = 1 << 24;

#[derive(Debug, Clone, PartialEq)]
pub struct Hparams {
    pub arch: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    pub rope: RopeParams,
    /// Per layer: its sliding attention window in tokens (0: attends the
    /// whole past). Set by architectures that have such layers.
    pub layer_window: Vec<usize>,
}

impl Hparams {
    /// Reads the keys every transformer in the registry shares, each checked
    /// against its range; `neox` picks the rotary layout the architecture uses.
    pub fn read(f: &GgufFile, neox: bool) -> anyhow::Result<Self> {
        let m = Meta::new(f)?;
        let arch = m.arch.to_string();
        let n_layer = m.count("block_count", MAX_LAYERS)?;
        let n_embd = m.count("embedding_length", MAX_EMBD)?;
        let n_head = m.count("attention.head_count", MAX_HEADS)?;
        let n_head_kv = m.count_or("attention.head_count_kv", n_head, MAX_HEADS)?;
        ensure!(
            n_head.is_multiple_of(n_head_kv),
            "{arch}: {n_head} attention heads are not a multiple of {n_head_kv} KV heads"
        );
        let head_dim = head_dim(m, n_embd, n_head)?;
        let n_rot = m.count_or("rope.dimension_count", head_dim, MAX_HEAD_DIM)?;
        ensure!(
            n_rot <= head_dim && n_rot.is_multiple_of(2),
            "{} is {n_rot}: rotary dimensions must be even and at most the head size {head_dim}",
            m.key("rope.dimension_count")
        );
        let n_ctx_train = m.count("context_length", MAX_CONTEXT)?;
        Ok(Self {
            n_layer,
            layer_window: vec![0; n_layer],
            n_ff: m.count("feed_forward_length", MAX_FF)?,
            rms_eps: m.f32_or("attention.layer_norm_rms_epsilon", 1e-5, Sign::NonNegative)?,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab: n_vocab(m)?,
            n_ctx_train,
            rope: RopeParams {
                n_dims: n_rot as i32,
                mode: if neox { ROPE_NEOX } else { ROPE_NORMAL },
                n_ctx_orig: n_ctx_train as i32,
                freq_base: m.f32_or("rope.freq_base", 10_000.0, Sign::Positive)?,
                freq_scale: rope_freq_scale(m)?,
                ext_factor: 0.0,
                attn_factor: 1.0,
                beta_fast: 32.0,
                beta_slow: 1.0,
            },
            arch,
        })
    }

    /// The smallest sliding window of any layer (None: no such layer).
    pub fn min_window(&self) -> Option<usize> {
        self.layer_window.iter().copied().filter(|&w| w > 0).min()
    }

    /// Width of the K (and V) projection: all KV heads.
    pub fn n_embd_kv(&self) -> usize {
        self.head_dim * self.n_head_kv
    }

    /// Width of the Q projection: all query heads.
    pub fn n_embd_q(&self) -> usize {
        self.head_dim * self.n_head
    }
}

/// The size of a head: `attention.key_length`, else the embedding split
/// over the heads. Values must have the same size (the caches and the
/// attention assume it).
fn head_dim(m: Meta, n_embd: usize, n_head: usize) -> anyhow::Result<usize> {
    let head_dim = match m.maybe_count("attention.key_length", MAX_HEAD_DIM)? {
        Some(d) => d,
        None if !n_embd.is_multiple_of(n_head) => {
            bail!(
                "{}: embedding length {n_embd} is not a multiple of {n_head} heads",
                m.arch
            )
        }
        None => n_embd / n_head,
    };
    let value_dim = m.count_or("attention.value_length", head_dim, MAX_HEAD_DIM)?;
    ensure!(
        value_dim == head_dim,
        "{}: value heads of {value_dim} differ from key heads of {head_dim} (not supported)",
        m.arch
    );
    Ok(head_dim)
}

/// The vocabulary: the tokenizer's tokens, which `vocab_size` must agree
/// with when present (every token id indexes the embeddings and the logits).
fn n_vocab(m: Meta) -> anyhow::Result<usize> {
    let n_tokens = m.file.get_array("tokenizer.ggml.tokens")?.len();
    ensure!(n_tokens > 0, "tokenizer.ggml.tokens is empty");
    if let Some(n) = m.maybe_usize("vocab_size")? {
        ensure!(
            n == n_tokens,
            "{} is {n}, but tokenizer.ggml.tokens has {n_tokens} tokens",
            m.key("vocab_size")
        );
    }
    Ok(n_tokens)
}

/// `freq_scale` from `{arch}.rope.scaling.*` (none and linear are
/// supported); a factor of 0 means no scaling, as in llama.cpp.
fn rope_freq_scale(m: Meta) -> anyhow::Result<f32> {
    let ty = m.str_or("rope.scaling.type", "none")?;
    let factor = match ty {
        "none" => m.f32_or("rope.scale_linear", 0.0, Sign::NonNegative)?,
        "linear" => {
            let key = "rope.scaling.factor";
            ensure!(m.get(key).is_some(), "{} is needed for linear rope scaling", m.key(key));
            m.f32(key, Sign::NonNegative)?
        }
        other => bail!(
            "rope scaling type {} is not supported (supported: none, linear)",
            quoted(other)
        ),
    };
    let scale = if factor > 0.0 { 1.0 / factor } else { 1.0 };
    ensure!(scale.is_finite(), "rope scaling factor {factor} is too small");
    Ok(scale)
}
