//! Models: hyper-parameters, weights, and one file per architecture. Adding
//! an architecture means one file and one line in `REGISTRY`.

mod builders;
mod decoder;
mod gemma3;
mod granite;
mod hparams;
mod llama;
mod meta;
mod phi3;
mod qwen2;
mod qwen3;
mod weights;

pub use hparams::Hparams;
pub use weights::{Role, TensorTable, Tensors, Weights};

use std::path::Path;

use anyhow::{ensure, Context as _};

use crate::attention::{LayerAttn, LayerQkv, StepAttention};
use crate::compute::Step;
use crate::ggml::Tensor;
use crate::gguf::GgufFile;
use crate::placement::{Offload, Placement};
use crate::quote::quoted;
use crate::tokenizer::Tokenizer;

/// The architectures this engine runs.
const REGISTRY: &[ArchSpec] = &[
    llama::SPEC,
    qwen2::SPEC,
    qwen3::SPEC,
    phi3::SPEC,
    gemma3::SPEC,
    granite::SPEC,
];

/// More tensors than any supported architecture has (about 16 per layer):
/// each becomes a ggml tensor header before the architecture looks at them.
pub const MAX_TENSORS: usize = 1 << 16;

/// Names of the supported architectures (`general.architecture`).
pub fn supported() -> Vec<&'static str> {
    REGISTRY.iter().flat_map(|a| a.names.iter().copied()).collect()
}

/// The file's architecture: its registered name and entry.
fn spec(file: &GgufFile) -> anyhow::Result<(&'static str, &'static ArchSpec)> {
    let name = file.architecture()?;
    REGISTRY
        .iter()
        .find_map(|a| Some((*a.names.iter().find(|&&n| n == name)?, a)))
        .with_context(|| {
            format!(
                "unknown architecture {} (supported: {})",
                quoted(name),
                supported().join(", ")
            )
        })
}

/// Every check a model file gets before it is loaded: architecture,
/// hyper-parameters, tokenizer, and each tensor the architecture uses (its
/// shape, and its type against the ops that use it). No ggml compute, no
/// weight upload: cheap enough to run on every input of a fuzzer.
/// `Model::load_on` runs the same checks first.
pub fn check(file: &GgufFile) -> anyhow::Result<()> {
    Checked::new(file).map(drop)
}

/// A model file that passed every check, and what the checks built, which
/// loading goes on with.
struct Checked {
    hp: Hparams,
    tokenizer: Tokenizer,
    table: TensorTable,
    arch: Box<dyn Architecture>,
}

impl Checked {
    fn new(file: &GgufFile) -> anyhow::Result<Self> {
        let (_, spec) = spec(file)?;
        let mut hp = Hparams::read(file, spec.neox)?;
        let tokenizer = Tokenizer::from_gguf(file).context("reading the tokenizer")?;
        let n = file.tensors.len();
        ensure!(
            n <= MAX_TENSORS,
            "{n} tensors: more than any supported model has ({MAX_TENSORS})"
        );
        let table = TensorTable::new(file);
        let arch = (spec.load)(&mut hp, Tensors::new(file, &table))?;
        Ok(Self {
            hp,
            tokenizer,
            table,
            arch,
        })
    }
}

/// An architecture: its `general.architecture` names, rotary layout and
/// graph builder.
pub struct ArchSpec {
    pub names: &'static [&'static str],
    /// Rotary dimensions in NeoX halves (true) or adjacent pairs.
    pub neox: bool,
    /// Builds the graph builder, resolving (and so checking) every tensor it
    /// uses; may refine the hyper-parameters (sliding windows).
    pub load: fn(&mut Hparams, Tensors<'_>) -> anyhow::Result<Box<dyn Architecture>>,
}

/// A model's forward pass over its weights.
pub trait Architecture: Send + Sync {
    /// Adds one step to `step`; returns logits [n_vocab, n_out].
    fn forward<'a>(&self, hp: &Hparams, w: &'a Weights, step: &mut Step<'a>, inp: &ForwardInputs<'a, '_>)
        -> Tensor<'a>;
}

/// A loaded model: hyper-parameters, weights (mapped), tokenizer, architecture.
pub struct Model {
    pub hp: Hparams,
    pub weights: Weights,
    pub tokenizer: Tokenizer,
    /// Hash of the GGUF header and tensor table: what saved sessions check.
    pub identity: u64,
    /// `tokenizer.chat_template`, if the file has one.
    pub chat_template: Option<String>,
    /// Which device holds each layer.
    pub placement: Placement,
    arch: Box<dyn Architecture>,
}

impl Model {
    /// Loads a model to run on the CPU.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Self::load_on(path, &Offload::cpu(), &mut |_| {})
    }

    /// Loads a model with its layers placed on the devices `offload` asks
    /// for; `log` gets a line before each device's upload.
    pub fn load_on(path: &Path, offload: &Offload, log: &mut dyn FnMut(String)) -> anyhow::Result<Self> {
        Self::load_inner(path, offload, log).with_context(|| format!("cannot load {}", path.display()))
    }

    fn load_inner(path: &Path, offload: &Offload, log: &mut dyn FnMut(String)) -> anyhow::Result<Self> {
        let file = GgufFile::open(path)?;
        let Checked {
            hp,
            tokenizer,
            table,
            arch,
        } = Checked::new(&file)?;
        let identity = xxhash_rust::xxh3::xxh3_64(&file.bytes()[..file.data_offset as usize]);
        let chat_template = file.get_str("tokenizer.chat_template").ok().map(str::to_string);
        let placement = Placement::new(offload, hp.n_layer)?;
        let weights = Weights::load(file, table, &placement, offload.repack, log)?;
        Ok(Self {
            hp,
            weights,
            tokenizer,
            identity,
            chat_template,
            placement,
            arch,
        })
    }

    /// Adds the forward pass of one step to `step`; returns logits [n_vocab, n_out].
    pub fn forward<'a>(
        &'a self,
        step: &mut Step<'a>,
        attention: &dyn StepAttention<'a>,
        tokens: Tensor<'a>,
        last_only: bool,
    ) -> Tensor<'a> {
        let inp = ForwardInputs {
            tokens,
            last_only,
            attention,
        };
        self.arch.forward(&self.hp, &self.weights, step, &inp)
    }
}

/// What an architecture's forward pass gets besides its weights.
pub struct ForwardInputs<'a, 's> {
    /// Token ids, I32 [n_tokens].
    pub tokens: Tensor<'a>,
    /// Produce logits for the last token only.
    pub last_only: bool,
    attention: &'s dyn StepAttention<'a>,
}

impl<'a> ForwardInputs<'a, '_> {
    pub fn attend(&self, step: &mut Step<'a>, x: LayerQkv<'a>, la: &LayerAttn) -> Tensor<'a> {
        self.attention.attend(step, x, la)
    }
}
