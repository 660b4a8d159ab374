//! Model weights: every GGUF tensor as a ggml tensor. On the CPU its data is
//! the memory-mapped file itself (no copy); a layer placed on a device is
//! uploaded once into a buffer there.
//!
//! Architectures resolve their weights through [`Tensors`], which checks
//! each one's shape and, by the [`Role`] it plays in the graph, its type: a
//! file cannot hand an op a tensor that its kernels would abort on.

use std::collections::HashMap;

use anyhow::{bail, Context as _};

use crate::ggml::{Buffer, BufferType, Context, Device, GgmlType, Tensor, TensorId};
use crate::gguf::{GgufFile, TensorInfo};
use crate::placement::Placement;
use crate::quote::quoted;

/// How the graph uses a weight, which decides the types it may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The matrix of a matmul: projections, the output head, and the token
    /// embeddings (also looked up by row, and the head when tied). Any type
    /// ggml's CPU matmul has a kernel for (its row lookup takes them all).
    Matrix,
    /// Multiplied or added element-wise to f32 activations (norms, biases),
    /// or read as floats by rope (frequency factors): ggml's CPU kernels
    /// take only f32 there.
    F32,
}

impl Role {
    fn accepts(self, ty: GgmlType) -> bool {
        match self {
            Role::Matrix => ty.has_cpu_matmul(),
            Role::F32 => ty == GgmlType::F32,
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Role::Matrix => "a type ggml's CPU matmul supports",
            Role::F32 => "f32",
        }
    }
}

/// The file's tensors as ggml tensors without data, by name: what the
/// architectures resolve their weights against, whether the file is only
/// checked or then loaded.
pub struct TensorTable {
    ctx: Context,
    by_name: HashMap<String, TensorId>,
    /// With no `output.weight` in the file, the head tied to the embeddings
    /// is a second tensor over their bytes (llama.cpp's duplicated output):
    /// placed as the output layer, so it can live on the output's device or
    /// in a repacked layout while the embeddings are looked up in the file.
    tied_output: Option<TensorId>,
}

impl TensorTable {
    /// One metadata-only tensor per table entry (the reader checked their
    /// types, dimensions and names against ggml's limits).
    pub fn new(file: &GgufFile) -> Self {
        let ctx = Context::new(file.tensors.len() + 2, 0);
        let mut by_name = HashMap::with_capacity(file.tensors.len());
        for info in &file.tensors {
            let t = ctx.new_tensor(info.ggml_type, &ggml_ne(info)).set_name(&info.name);
            by_name.insert(info.name.clone(), ctx.id(t));
        }
        let tied_output = match (file.tensor(TIED_FROM), file.tensor(OUTPUT)) {
            (Some(embd), None) => Some(ctx.id(ctx.new_tensor(embd.ggml_type, &ggml_ne(embd)).set_name(OUTPUT))),
            _ => None,
        };
        Self {
            ctx,
            by_name,
            tied_output,
        }
    }

    /// Each tensor to place: its name, table entry and the file's entry for
    /// its bytes.
    fn entries<'f>(&self, file: &'f GgufFile) -> Vec<(&'f str, TensorId, &'f TensorInfo)> {
        let mut out: Vec<_> = file
            .tensors
            .iter()
            .map(|i| (i.name.as_str(), self.by_name[&i.name], i))
            .collect();
        if let (Some(id), Some(embd)) = (self.tied_output, file.tensor(TIED_FROM)) {
            out.push((OUTPUT, id, embd));
        }
        out
    }
}

const OUTPUT: &str = "output.weight";
const TIED_FROM: &str = "token_embd.weight";

/// ggml's dimensions of a table entry: a scalar has one.
fn ggml_ne(info: &TensorInfo) -> Vec<i64> {
    if info.dims.is_empty() {
        vec![1]
    } else {
        info.dims.iter().map(|&d| d as i64).collect()
    }
}

/// A file's tensors as the architectures see them when they load.
#[derive(Clone, Copy)]
pub struct Tensors<'w> {
    pub file: &'w GgufFile,
    table: &'w TensorTable,
}

impl<'w> Tensors<'w> {
    pub fn new(file: &'w GgufFile, table: &'w TensorTable) -> Self {
        Self { file, table }
    }

    pub fn info(&self, name: &str) -> Option<&'w TensorInfo> {
        self.file.tensor(name)
    }

    /// A tensor that must exist with the given dimensions (ggml order) and
    /// a type fit for its `role`.
    pub fn require(&self, name: &str, role: Role, dims: &[u64]) -> anyhow::Result<TensorId> {
        let info = self
            .info(name)
            .with_context(|| format!("tensor {} is missing from the model file", quoted(name)))?;
        if info.dims != dims {
            bail!("tensor {} has shape {:?}, expected {:?}", quoted(name), info.dims, dims);
        }
        if !role.accepts(info.ggml_type) {
            bail!(
                "tensor {} has type {}, expected {}",
                quoted(name),
                info.ggml_type,
                role.expected()
            );
        }
        Ok(self.table.by_name[name])
    }

    /// A tensor that may be absent; present, it is checked as by `require`.
    pub fn optional(&self, name: &str, role: Role, dims: &[u64]) -> anyhow::Result<Option<TensorId>> {
        match self.info(name) {
            None => Ok(None),
            Some(_) => self.require(name, role, dims).map(Some),
        }
    }

    /// The output head tied to `token_embd.weight` (checked with it), when
    /// the file has no `output.weight`.
    pub fn tied_output(&self) -> Option<TensorId> {
        self.table.tied_output
    }
}

pub struct Weights {
    // Field order matters: the buffers refer to the tensors in `table` and
    // to the mapping in `file`.
    _buffer: Buffer,
    /// Weights copied out of the mapping: to devices, or repacked.
    _uploaded: Vec<Buffer>,
    /// Bytes of weights in the CPU's repacked layouts.
    pub repacked_bytes: usize,
    table: TensorTable,
    pub file: GgufFile,
}

impl Weights {
    /// Places every tensor of `table` (built from `file`) as `placement`
    /// says; `log` gets a line before each device's upload. On the CPU,
    /// matmul weights go to ggml's repacked layouts where its kernels have
    /// one (as llama.cpp places them; silently: the caller reports
    /// `repacked_bytes`). `repack: false` keeps the CPU's weights in the
    /// file's layout.
    pub fn load(
        file: GgufFile,
        table: TensorTable,
        placement: &Placement,
        repack: bool,
        log: &mut dyn FnMut(String),
    ) -> anyhow::Result<Self> {
        let cpu = Device::cpu()?;
        let repacked = if repack { cpu.extra_buffer_types() } else { Vec::new() };
        let mut mapped = Vec::with_capacity(file.tensors.len() + 1);
        let mut uploads: Vec<Upload<'_>> = Vec::new();
        for (name, id, info) in table.entries(&file) {
            let t = table.ctx.tensor(id);
            let at = (t, (file.data_offset + info.offset) as usize);
            let dest = match placement.tensor(name) {
                Some(d) => Some((d.buffer_type()?, Some(d.name()))),
                None if is_matmul_weight(name, &ggml_ne(info)) => repacked
                    .iter()
                    .find(|&&b| cpu.runs_matmul_with(b, t))
                    .map(|&b| (b, None)),
                None => None,
            };
            match dest {
                None => mapped.push(at),
                Some((buft, to)) => match uploads.iter_mut().find(|u| u.buft == buft) {
                    Some(u) => u.tensors.push(at),
                    None => uploads.push(Upload {
                        buft,
                        to,
                        tensors: vec![at],
                    }),
                },
            }
        }
        let buffer = Buffer::from_host_slice(file.bytes(), &mapped).context("placing weights")?;
        let uploaded = uploads
            .iter()
            .map(|u| u.run(file.bytes(), log))
            .collect::<anyhow::Result<_>>()?;
        let repacked_bytes = uploads.iter().filter(|u| u.to.is_none()).map(Upload::bytes).sum();
        Ok(Self {
            _buffer: buffer,
            _uploaded: uploaded,
            repacked_bytes,
            table,
            file,
        })
    }

    pub fn ctx(&self) -> &Context {
        &self.table.ctx
    }

    pub fn get(&self, id: TensorId) -> Tensor<'_> {
        self.table.ctx.tensor(id)
    }
}

/// Weights to copy out of the file into one buffer of `buft`.
struct Upload<'a> {
    buft: BufferType,
    /// The device's name (None: the CPU, repacked).
    to: Option<String>,
    /// Each tensor with its data's offset in the file.
    tensors: Vec<(Tensor<'a>, usize)>,
}

impl Upload<'_> {
    fn bytes(&self) -> usize {
        self.tensors.iter().map(|(t, _)| t.nbytes()).sum()
    }

    fn run(&self, file: &[u8], log: &mut dyn FnMut(String)) -> anyhow::Result<Buffer> {
        let to = self.to.as_deref().unwrap_or("the CPU");
        if self.to.is_some() {
            log(format!(
                "copying {:.1} MiB of weights to {to}",
                self.bytes() as f64 / (1 << 20) as f64
            ));
        }
        let list: Vec<Tensor<'_>> = self.tensors.iter().map(|(t, _)| *t).collect();
        let buffer = Buffer::alloc_tensors(self.buft, &list).with_context(|| format!("placing weights on {to}"))?;
        buffer.mark_weights();
        for (t, off) in &self.tensors {
            let data = off
                .checked_add(t.nbytes())
                .and_then(|end| file.get(*off..end))
                .context("tensor data out of bounds")?;
            t.write_bytes(0, data);
        }
        Ok(buffer)
    }
}

/// Weights that are only ever the matrix of a matmul: a block's projections
/// and the output head (not the token embeddings, which are also looked up
/// by row, nor norms and biases).
fn is_matmul_weight(name: &str, ne: &[i64]) -> bool {
    let projection = name.starts_with("blk.") && name.ends_with(".weight") && !name.contains("norm");
    (projection || name == OUTPUT) && ne.len() >= 2 && ne[1] > 1
}
