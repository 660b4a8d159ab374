//! Model weights: every GGUF tensor as a ggml tensor whose data is the
//! memory-mapped file itself (no copy).

use std::collections::HashMap;

use anyhow::{bail, Context as _};

use crate::ggml::{self, Buffer, Context, Tensor, TensorId};
use crate::gguf::{GgufFile, TensorInfo};

pub struct Weights {
    // Field order matters: the buffer and context refer to the mapping in `file`.
    _buffer: Buffer,
    ctx: Context,
    by_name: HashMap<String, TensorId>,
    pub file: GgufFile,
}

impl Weights {
    pub fn load(file: GgufFile) -> anyhow::Result<Self> {
        let ctx = Context::new(file.tensors.len() + 1, 0);
        let mut placed = Vec::with_capacity(file.tensors.len());
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
            placed.push((t, (file.data_offset + info.offset) as usize));
            by_name.insert(info.name.clone(), ctx.id(t));
        }
        let buffer = Buffer::from_host_slice(file.bytes(), &placed).context("placing weights")?;
        Ok(Self {
            _buffer: buffer,
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
