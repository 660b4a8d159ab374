//! Hyper-parameters read from GGUF metadata (`{arch}.*` keys).

use anyhow::{bail, Context as _};

use super::meta::Meta;
use crate::ggml::{RopeParams, ROPE_NEOX, ROPE_NORMAL};
use crate::gguf::GgufFile;

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
    /// Reads the keys every transformer in the registry shares; `neox` picks
    /// the rotary layout the architecture uses.
    pub fn read(f: &GgufFile, neox: bool) -> anyhow::Result<Self> {
        let m = Meta::new(f)?;
        let arch = m.arch.to_string();
        let n_embd = m.usize("embedding_length")?;
        let n_head = m.usize("attention.head_count")?;
        let n_head_kv = m.usize_or("attention.head_count_kv", n_head)?;
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            bail!("{arch}: head counts {n_head} / {n_head_kv} are invalid (need n_head a multiple of n_head_kv)");
        }
        let head_dim = match m.maybe_usize("attention.key_length")? {
            Some(d) => d,
            None if n_embd % n_head != 0 => {
                bail!("{arch}: embedding length {n_embd} is not a multiple of {n_head} heads")
            }
            None => n_embd / n_head,
        };
        let n_vocab = match m.maybe_usize("vocab_size")? {
            Some(n) => n,
            None => f.get_array("tokenizer.ggml.tokens")?.len(),
        };
        let n_rot = m.usize_or("rope.dimension_count", head_dim)?;
        let n_ctx_train = m.usize("context_length")?;
        let n_layer = m.usize("block_count")?;
        let hp = Self {
            n_layer,
            layer_window: vec![0; n_layer],
            n_ff: m.usize("feed_forward_length")?,
            rms_eps: m.f32_or("attention.layer_norm_rms_epsilon", 1e-5)?,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab,
            n_ctx_train,
            rope: RopeParams {
                n_dims: n_rot as i32,
                mode: if neox { ROPE_NEOX } else { ROPE_NORMAL },
                n_ctx_orig: n_ctx_train as i32,
                freq_base: m.f32_or("rope.freq_base", 10_000.0)?,
                freq_scale: rope_freq_scale(m)?,
                ext_factor: 0.0,
                attn_factor: 1.0,
                beta_fast: 32.0,
                beta_slow: 1.0,
            },
            arch,
        };
        if hp.n_layer == 0 || hp.n_embd == 0 || hp.head_dim == 0 || n_rot > hp.head_dim || n_rot % 2 != 0 {
            bail!("{}: invalid hyper-parameters {hp:?}", hp.arch);
        }
        Ok(hp)
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

/// `freq_scale` from `{arch}.rope.scaling.*` (none and linear are supported).
fn rope_freq_scale(m: Meta) -> anyhow::Result<f32> {
    let ty = m.str_or("rope.scaling.type", "none")?;
    match ty {
        "none" => match m.f32_or("rope.scale_linear", 0.0)? {
            v if v > 0.0 => Ok(1.0 / v),
            _ => Ok(1.0),
        },
        "linear" => {
            let factor = m
                .maybe("rope.scaling.factor", GgufFile::get_f32)?
                .with_context(|| format!("{} is needed for {ty} rope scaling", m.key("rope.scaling.factor")))?;
            Ok(1.0 / if factor > 0.0 { factor } else { 1.0 })
        }
        other => bail!("rope scaling type '{other}' is not supported (supported: none, linear)"),
    }
}
