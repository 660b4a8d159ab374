//! Model weights: every GGUF tensor as a ggml tensor. On the CPU its data is
//! the memory-mapped file itself (no copy); a layer placed on a device is
//! uploaded once into a buffer there.

use std::collections::HashMap;

use anyhow::{bail, Context as _};

use crate::ggml::{self, Buffer, Context, Device, Tensor, TensorId};
use crate::gguf::{GgufFile, TensorInfo};
use crate::placement::Placement;

pub struct Weights {
    // Field order matters: the buffers and context refer to the mapping in `file`.
    _buffer: Buffer,
    _device_buffers: Vec<Buffer>,
    ctx: Context,
    by_name: HashMap<String, TensorId>,
    pub file: GgufFile,
}

impl Weights {
    /// Places every tensor as `placement` says; `log` gets a line before
    /// each device's upload.
    pub fn load(file: GgufFile, placement: &Placement, log: &mut dyn FnMut(String)) -> anyhow::Result<Self> {
        let ctx = Context::new(file.tensors.len() + 1, 0);
        let mut placed = Vec::with_capacity(file.tensors.len());
        let mut on_device: Vec<(Device, Vec<(Tensor<'_>, usize)>)> = Vec::new();
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
            match placement.tensor(&info.name) {
                None => placed.push(at),
                Some(d) => match on_device.iter_mut().find(|(dev, _)| *dev == d) {
                    Some((_, list)) => list.push(at),
                    None => on_device.push((d, vec![at])),
                },
            }
            by_name.insert(info.name.clone(), ctx.id(t));
        }
        let buffer = Buffer::from_host_slice(file.bytes(), &placed).context("placing weights")?;
        let device_buffers = on_device
            .iter()
            .map(|(d, tensors)| upload(*d, tensors, file.bytes(), log))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            _buffer: buffer,
            _device_buffers: device_buffers,
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

/// Copies `tensors` (with their offsets in the file) into one buffer on `device`.
fn upload(
    device: Device,
    tensors: &[(Tensor<'_>, usize)],
    file: &[u8],
    log: &mut dyn FnMut(String),
) -> anyhow::Result<Buffer> {
    let bytes: usize = tensors.iter().map(|(t, _)| t.nbytes()).sum();
    log(format!(
        "uploading {:.1} MiB of weights to {}",
        bytes as f64 / (1 << 20) as f64,
        device.name()
    ));
    let list: Vec<Tensor<'_>> = tensors.iter().map(|(t, _)| *t).collect();
    let buffer = Buffer::alloc_tensors(device.buffer_type()?, &list)
        .with_context(|| format!("placing weights on {}", device.name()))?;
    buffer.mark_weights();
    for (t, off) in tensors {
        let data = off
            .checked_add(t.nbytes())
            .and_then(|end| file.get(*off..end))
            .context("tensor data out of bounds")?;
        t.write_bytes(0, data);
    }
    Ok(buffer)
}
