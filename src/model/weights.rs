//! Model weights: every GGUF tensor as a ggml tensor. On the CPU its data is
//! the memory-mapped file itself (no copy); a layer placed on a device is
//! uploaded once into a buffer there.

use std::collections::HashMap;

use anyhow::{bail, Context as _};

use crate::ggml::{self, Buffer, BufferType, Context, Device, Tensor, TensorId};
use crate::gguf::{GgufFile, TensorInfo};
use crate::placement::Placement;

pub struct Weights {
    // Field order matters: the buffers and context refer to the mapping in `file`.
    _buffer: Buffer,
    /// Weights copied out of the mapping: to devices, or repacked.
    _uploaded: Vec<Buffer>,
    /// Bytes of weights in the CPU's repacked layouts.
    pub repacked_bytes: usize,
    ctx: Context,
    by_name: HashMap<String, TensorId>,
    pub file: GgufFile,
}

impl Weights {
    /// Places every tensor as `placement` says; `log` gets a line before
    /// each device's upload. On the CPU, matmul weights go to ggml's
    /// repacked layouts where its kernels have one (as llama.cpp places
    /// them; silently: the caller reports `repacked_bytes`).
    /// `repack: false` keeps the CPU's weights in the file's layout.
    pub fn load(
        file: GgufFile,
        placement: &Placement,
        repack: bool,
        log: &mut dyn FnMut(String),
    ) -> anyhow::Result<Self> {
        let ctx = Context::new(file.tensors.len() + 1, 0);
        let cpu = Device::cpu()?;
        let repacked = if repack { cpu.extra_buffer_types() } else { Vec::new() };
        let mut mapped = Vec::with_capacity(file.tensors.len());
        let mut uploads: Vec<Upload<'_>> = Vec::new();
        let mut by_name = HashMap::with_capacity(file.tensors.len());
        for info in &file.tensors {
            let ne: Vec<i64> = if info.dims.is_empty() {
                vec![1]
            } else {
                info.dims.iter().map(|&d| d as i64).collect()
            };
            if ggml::type_info(info.ggml_type).is_none() {
                bail!("tensor '{}' has unsupported type {}", info.name, info.ggml_type);
            }
            let t = ctx.new_tensor(info.ggml_type, &ne).set_name(&info.name);
            let at = (t, (file.data_offset + info.offset) as usize);
            let dest = match placement.tensor(&info.name) {
                Some(d) => Some((d.buffer_type()?, Some(d.name()))),
                None if is_matmul_weight(&info.name, &ne) => repacked
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
            by_name.insert(info.name.clone(), ctx.id(t));
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
            ctx,
            by_name,
            file,
        })
    }

    pub fn ctx(&self) -> &Context {
        &self.ctx
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.file.tensor(name)
    }

    /// A tensor that must exist with the given dimensions (ggml order).
    pub fn require(&self, name: &str, dims: &[u64]) -> anyhow::Result<TensorId> {
        let info = self
            .info(name)
            .with_context(|| format!("tensor '{name}' is missing from the model file"))?;
        if info.dims != dims {
            bail!("tensor '{name}' has shape {:?}, expected {:?}", info.dims, dims);
        }
        Ok(self.by_name[name])
    }

    /// A tensor that may be absent; present with the wrong shape is an error.
    pub fn optional(&self, name: &str, dims: &[u64]) -> anyhow::Result<Option<TensorId>> {
        match self.info(name) {
            None => Ok(None),
            Some(_) => self.require(name, dims).map(Some),
        }
    }

    pub fn get(&self, id: TensorId) -> Tensor<'_> {
        self.ctx.tensor(id)
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
    (projection || name == "output.weight") && ne.len() >= 2 && ne[1] > 1
}
