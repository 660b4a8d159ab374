//! Graph pieces every architecture is wired from, each beside the tensors it
//! reads: token embeddings and the output head ([`Ends`]), self-attention
//! ([`SelfAttn`]), the feed-forward block ([`Ffn`]), and RMSNorm
//! ([`Builder::norm`]). Projections fused or separate, biases and Q/K norms
//! follow the tensors present in the file, as llama.cpp loads them.

mod ffn;
mod self_attn;

pub use ffn::{Act, Ffn};
pub use self_attn::SelfAttn;

use super::weights::{Role, Tensors};
use super::{ForwardInputs, Hparams, Weights};
use crate::compute::Step;
use crate::ggml::{Context, Tensor, TensorId};

/// What a forward pass builds with: the step's graph context, the weights,
/// the hyper-parameters and the step's inputs.
pub struct Builder<'a, 'b> {
    pub g: &'a Context,
    pub w: &'a Weights,
    pub hp: &'b Hparams,
    pub inp: &'b ForwardInputs<'a, 'b>,
    pub n_tokens: i64,
}

impl<'a, 'b> Builder<'a, 'b> {
    pub fn new(hp: &'b Hparams, w: &'a Weights, step: &Step<'a>, inp: &'b ForwardInputs<'a, 'b>) -> Self {
        Self {
            g: step.ctx,
            w,
            hp,
            inp,
            n_tokens: inp.tokens.ne()[0],
        }
    }

    pub fn t(&self, id: TensorId) -> Tensor<'a> {
        self.w.get(id)
    }

    /// RMSNorm over the first dimension, times `weight`.
    pub fn norm(&self, x: Tensor<'a>, weight: TensorId) -> Tensor<'a> {
        self.g.mul(self.g.rms_norm(x, self.hp.rms_eps), self.t(weight))
    }

    pub fn bias(&self, x: Tensor<'a>, b: Option<TensorId>) -> Tensor<'a> {
        b.map_or(x, |b| self.g.add(x, self.t(b)))
    }

    /// `x @ w` (ggml's mul_mat of the weight and the activations).
    pub fn mm(&self, w: TensorId, x: Tensor<'a>) -> Tensor<'a> {
        self.g.mul_mat(self.t(w), x)
    }

    /// `cap * tanh(x / cap)`; 0 means no capping.
    pub fn softcap(&self, x: Tensor<'a>, cap: f32) -> Tensor<'a> {
        match cap {
            c if c > 0.0 => self.g.scale(self.g.tanh(self.g.scale(x, 1.0 / c)), c),
            _ => x,
        }
    }

    /// Whether layer `il` may keep only the last row: it is the last layer
    /// and only the last token's logits are wanted.
    fn last_row_only(&self, il: usize) -> bool {
        il + 1 == self.hp.n_layer && self.inp.last_only && self.n_tokens > 1
    }
}

/// The last row (token) of a [n, n_tokens] tensor.
fn last_row<'a>(g: &'a Context, x: Tensor<'a>) -> Tensor<'a> {
    let [n0, n1, ..] = x.ne();
    let nb1 = x.nb()[1];
    g.view(x, &[n0, 1], &[nb1], nb1 * (n1 as usize - 1))
}

/// Tensor widths (ggml dimensions) the loaders check shapes with.
struct Dims {
    embd: u64,
    q: u64,
    kv: u64,
    ff: u64,
    vocab: u64,
    head: u64,
}

impl Dims {
    fn of(hp: &Hparams) -> Self {
        Self {
            embd: hp.n_embd as u64,
            q: hp.n_embd_q() as u64,
            kv: hp.n_embd_kv() as u64,
            ff: hp.n_ff as u64,
            vocab: hp.n_vocab as u64,
            head: hp.head_dim as u64,
        }
    }
}

/// The tensors of layer `il`, by their names without the `blk.{il}.` prefix.
pub struct Blk<'w> {
    w: Tensors<'w>,
    il: usize,
    d: Dims,
}

impl<'w> Blk<'w> {
    pub fn new(w: Tensors<'w>, hp: &Hparams, il: usize) -> Self {
        Self { w, il, d: Dims::of(hp) }
    }

    pub fn require(&self, name: &str, role: Role, dims: &[u64]) -> anyhow::Result<TensorId> {
        self.w.require(&format!("blk.{}.{name}", self.il), role, dims)
    }

    pub fn optional(&self, name: &str, role: Role, dims: &[u64]) -> anyhow::Result<Option<TensorId>> {
        self.w.optional(&format!("blk.{}.{name}", self.il), role, dims)
    }

    /// A projection matrix.
    pub fn matrix(&self, name: &str, dims: &[u64]) -> anyhow::Result<TensorId> {
        self.require(name, Role::Matrix, dims)
    }

    /// A norm over the embedding: `{name}.weight`, [n_embd].
    pub fn norm(&self, name: &str) -> anyhow::Result<TensorId> {
        self.require(&format!("{name}.weight"), Role::F32, &[self.d.embd])
    }
}

/// Token embeddings and the output head (tied to the embeddings when the
/// file has no `output.weight`).
pub struct Ends {
    tok_embd: TensorId,
    output_norm: TensorId,
    output: TensorId,
    output_bias: Option<TensorId>,
}

impl Ends {
    pub fn load(hp: &Hparams, w: Tensors<'_>) -> anyhow::Result<Self> {
        let d = Dims::of(hp);
        let tok_embd = w.require("token_embd.weight", Role::Matrix, &[d.embd, d.vocab])?;
        Ok(Self {
            tok_embd,
            output_norm: w.require("output_norm.weight", Role::F32, &[d.embd])?,
            output: w
                .optional("output.weight", Role::Matrix, &[d.embd, d.vocab])?
                .or(w.tied_output())
                .unwrap_or(tok_embd),
            output_bias: w.optional("output.bias", Role::F32, &[d.vocab])?,
        })
    }

    /// The step's token embeddings [n_embd, n_tokens].
    pub fn embed<'a>(&self, b: &Builder<'a, '_>) -> Tensor<'a> {
        b.g.get_rows(b.t(self.tok_embd), b.inp.tokens)
    }

    /// Logits [n_vocab, n_rows] of the last layer's output: final norm and head.
    pub fn logits<'a>(&self, b: &Builder<'a, '_>, x: Tensor<'a>) -> Tensor<'a> {
        b.bias(b.mm(self.output, b.norm(x, self.output_norm)), self.output_bias)
    }
}
