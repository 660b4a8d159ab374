//! Models: hyper-parameters, weights, and one file per architecture. Adding
//! an architecture means one file and one line in `Arch::load`.

mod hparams;
mod llama;
mod weights;

pub use hparams::Hparams;
pub use weights::Weights;

use std::path::Path;

use anyhow::Context as _;

use crate::attention::{Attention, LayerAttn, LayerQkv, StepInputs};
use crate::compute::Step;
use crate::ggml::Tensor;
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;

/// Architectures this engine runs (`general.architecture`).
pub const SUPPORTED: &[&str] = &["llama", "mistral"];

enum Arch {
    Llama(llama::Llama),
}

/// A loaded model: hyper-parameters, weights (mapped), tokenizer, architecture.
pub struct Model {
    pub hp: Hparams,
    pub weights: Weights,
    pub tokenizer: Tokenizer,
    arch: Arch,
}

impl Model {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Self::load_inner(path).with_context(|| format!("cannot load {}", path.display()))
    }

    fn load_inner(path: &Path) -> anyhow::Result<Self> {
        let file = GgufFile::open(path)?;
        let name = file.architecture()?;
        // Rotary layout per architecture: adjacent pairs (false) or NeoX halves.
        let neox = match name {
            "llama" | "mistral" => false,
            other => anyhow::bail!("unknown architecture '{other}' (supported: {})", SUPPORTED.join(", ")),
        };
        let hp = Hparams::read(&file, neox)?;
        let tokenizer = Tokenizer::from_gguf(&file).context("reading the tokenizer")?;
        let weights = Weights::load(file)?;
        let arch = Arch::Llama(llama::Llama::new(&hp, &weights)?);
        Ok(Self {
            hp,
            weights,
            tokenizer,
            arch,
        })
    }

    /// Adds the forward pass of one step to `step`; returns logits [n_vocab, n_out].
    pub fn forward<'a>(
        &'a self,
        step: &mut Step<'a>,
        attention: &'a Attention,
        attn_inputs: &StepInputs<'a>,
        tokens: Tensor<'a>,
        last_only: bool,
    ) -> Tensor<'a> {
        let inp = ForwardInputs {
            tokens,
            last_only,
            attention,
            attn_inputs,
        };
        match &self.arch {
            Arch::Llama(m) => m.forward(&self.hp, &self.weights, step, &inp),
        }
    }
}

/// What an architecture's forward pass gets besides its weights.
pub struct ForwardInputs<'a, 's> {
    /// Token ids, I32 [n_tokens].
    pub tokens: Tensor<'a>,
    /// Produce logits for the last token only.
    pub last_only: bool,
    attention: &'a Attention,
    attn_inputs: &'s StepInputs<'a>,
}

impl<'a> ForwardInputs<'a, '_> {
    pub fn attend(&self, step: &mut Step<'a>, x: LayerQkv<'a>, la: &LayerAttn) -> Tensor<'a> {
        self.attention.attend(step, self.attn_inputs, x, la)
    }
}
