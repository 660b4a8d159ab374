//! A small GGUF v3 writer, used to build test fixtures (tiny random models,
//! malformed files). Its layout is ggml's: the header padded to the
//! alignment when there are tensors, each tensor's data padded to the
//! alignment, tensor offsets contiguous in table order; so ggml's own
//! reader accepts what it writes (nested arrays apart, which ggml lacks).

use std::io::{self, Write};
use std::path::Path;

use super::value::Value;
use super::{DEFAULT_ALIGNMENT, MAGIC};
use crate::ggml::GgmlType;

/// Collects metadata and tensors, then writes them in one go.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, key: &str, value: Value) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds a tensor with dimensions in ggml order and raw data of type `ggml_type`.
    pub fn add_tensor(&mut self, name: &str, dims: &[u64], ggml_type: GgmlType, data: Vec<u8>) -> &mut Self {
        self.tensors.push((name.to_string(), dims.to_vec(), ggml_type, data));
        self
    }

    /// `general.alignment` when it is a u32 above 0, else the default: an
    /// invalid alignment can be written (for malformed fixtures) and is then
    /// not used for the layout.
    fn alignment(&self) -> u64 {
        match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            Some((_, Value::U32(a))) if *a > 0 => *a as u64,
            _ => DEFAULT_ALIGNMENT,
        }
    }

    /// The whole file as bytes.
    ///
    /// # Panics
    /// If an array value holds an item whose type is not the array's element
    /// type (it could not be read back).
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = self.alignment();
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            out.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            put_value(&mut out, value);
        }
        let mut offset = 0u64;
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + data.len() as u64).next_multiple_of(align);
        }
        // Each tensor's data starts aligned and is padded after, as ggml writes it.
        for (_, _, _, data) in &self.tensors {
            out.resize((out.len() as u64).next_multiple_of(align) as usize, 0);
            out.extend_from_slice(data);
        }
        if !self.tensors.is_empty() {
            out.resize((out.len() as u64).next_multiple_of(align) as usize, 0);
        }
        out
    }

    /// Writes the file through a temporary name, so a failed write leaves nothing behind.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("gguf.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&self.to_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(elem, items) => {
            out.extend_from_slice(&(*elem as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                assert_eq!(item.value_type(), *elem, "GGUF array of {elem:?} holds a {item}");
                put_value(out, item);
            }
        }
    }
}
