//! GGUF reader: parses the header, metadata and tensor table of a memory
//! mapped file, checking every field against the bytes actually present.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::value::{Value, ValueType};
use super::{DEFAULT_ALIGNMENT, MAGIC};
use crate::ggml;

/// Arrays nested deeper than this are rejected (real files nest at most 2).
const MAX_ARRAY_DEPTH: usize = 8;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a GGUF file (magic {0:02x?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    #[error("truncated GGUF file: {what} at byte {offset} needs {needed} bytes, {available} left")]
    Truncated {
        what: String,
        offset: usize,
        needed: u64,
        available: usize,
    },
    #[error("corrupt GGUF file at byte {offset}: {msg}")]
    Corrupt { offset: usize, msg: String },
    #[error("corrupt GGUF file: tensor '{name}': {msg}")]
    Tensor { name: String, msg: String },
    #[error("GGUF metadata key '{0}' is missing")]
    MissingKey(String),
    #[error("GGUF metadata key '{key}' has type {found:?}, expected {expected}")]
    WrongType {
        key: String,
        found: ValueType,
        expected: &'static str,
    },
}

type Result<T> = std::result::Result<T, GgufError>;

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (row) dimension.
    pub dims: Vec<u64>,
    /// ggml type number (`ggml_type`).
    pub ggml_type: u32,
    /// Offset of the data, relative to the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

enum Bytes {
    Map(Mmap),
    Owned(Vec<u8>),
}

/// A parsed GGUF file; tensor data stays in the mapping.
pub struct GgufFile {
    bytes: Bytes,
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    pub alignment: u64,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
}

impl GgufFile {
    /// Memory-maps and parses a file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let map = ggml::map_readonly(&file).map_err(io)?;
        Self::parse(Bytes::Map(map))
    }

    /// Parses a file held in memory (used by tests and fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Bytes::Owned(bytes))
    }

    fn parse(bytes: Bytes) -> Result<Self> {
        let data: &[u8] = match &bytes {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        };
        let mut r = Cursor { data, pos: 0 };
        let magic: [u8; 4] = r.take(4, "magic")?.try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // Each key/value pair takes at least 8 (key length) + 4 (type) + 1
        // bytes; each tensor entry at least 8 + 4 + 4 + 8.
        r.check_count(n_kv, 13, "metadata count")?;
        r.check_count(n_tensors, 24, "tensor count")?;

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut key_index = HashMap::with_capacity(n_kv as usize);
        for _ in 0..n_kv {
            let at = r.pos;
            let key = r.string("metadata key")?;
            let ty = r.value_type("metadata value type")?;
            let value = r.value(ty, 0)?;
            if key_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(r.corrupt(at, format!("duplicate metadata key '{key}'")));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata.get(key_index.get("general.alignment").copied().unwrap_or(usize::MAX)) {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if a.is_power_of_two() => *a as u64,
            Some((_, v)) => {
                return Err(r.corrupt(r.pos, format!("general.alignment {v} is not a power of two u32")))
            }
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let t = r.tensor_info(alignment)?;
            if tensor_index.insert(t.name.clone(), tensors.len()).is_some() {
                return Err(GgufError::Tensor {
                    name: t.name,
                    msg: "duplicate tensor name".into(),
                });
            }
            tensors.push(t);
        }

        let data_offset = (r.pos as u64).next_multiple_of(alignment);
        let data_len = (data.len() as u64).checked_sub(data_offset).ok_or(GgufError::Truncated {
            what: "padding before tensor data".into(),
            offset: r.pos,
            needed: data_offset - r.pos as u64,
            available: data.len() - r.pos,
        })?;
        check_tensor_extents(&tensors, data_len)?;

        Ok(Self {
            bytes,
            version,
            metadata,
            key_index,
            tensors,
            tensor_index,
            alignment,
            data_offset,
        })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| GgufError::MissingKey(key.into()))
    }

    fn wrong(&self, key: &str, v: &Value, expected: &'static str) -> GgufError {
        GgufError::WrongType {
            key: key.into(),
            found: v.value_type(),
            expected,
        }
    }

    /// A non-negative integer that fits in u32, whatever integer type stores it.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        let v = self.require(key)?;
        v.as_i64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| self.wrong(key, v, "a non-negative 32-bit integer"))
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f64().map(|f| f as f32).ok_or_else(|| self.wrong(key, v, "a number"))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| self.wrong(key, v, "a bool"))
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong(key, v, "a string"))
    }

    pub fn get_array(&self, key: &str) -> Result<&[Value]> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| self.wrong(key, v, "an array"))
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of one tensor (bounds were checked at parse time).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + t.offset) as usize;
        &self.bytes()[start..start + t.size as usize]
    }
}

/// Tensor data must lie inside the data section and not overlap.
fn check_tensor_extents(tensors: &[TensorInfo], data_len: u64) -> Result<()> {
    let mut spans: Vec<&TensorInfo> = tensors.iter().collect();
    spans.sort_by_key(|t| t.offset);
    let mut prev: Option<&TensorInfo> = None;
    for t in spans {
        t.offset.checked_add(t.size).filter(|&e| e <= data_len).ok_or_else(|| GgufError::Tensor {
            name: t.name.clone(),
            msg: format!(
                "data [{}, +{}) runs past the end of the file (data section is {} bytes)",
                t.offset, t.size, data_len
            ),
        })?;
        if let Some(p) = prev {
            if t.size > 0 && p.offset + p.size > t.offset {
                return Err(GgufError::Tensor {
                    name: t.name.clone(),
                    msg: format!("data overlaps tensor '{}'", p.name),
                });
            }
        }
        if t.size > 0 {
            prev = Some(t);
        }
    }
    Ok(())
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn corrupt(&self, offset: usize, msg: String) -> GgufError {
        GgufError::Corrupt { offset, msg }
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() as u64 {
            return Err(GgufError::Truncated {
                what: what.into(),
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            });
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N as u64, what)?.try_into().expect("length checked"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each at least `min_size` bytes long must fit in the rest of the file.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<()> {
        if count.saturating_mul(min_size) > self.remaining() as u64 {
            return Err(self.corrupt(
                self.pos,
                format!("{what} {count} is impossible for the {} bytes that follow", self.remaining()),
            ));
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.corrupt(at, format!("{what} is not valid UTF-8")))
    }

    fn value_type(&mut self, what: &str) -> Result<ValueType> {
        let at = self.pos;
        let t = self.u32(what)?;
        ValueType::from_u32(t).ok_or_else(|| self.corrupt(at, format!("unknown {what} {t}")))
    }

    fn value(&mut self, ty: ValueType, depth: usize) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>("u8 value")?[0]),
            ValueType::I8 => Value::I8(self.array::<1>("i8 value")?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array("u16 value")?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array("i16 value")?)),
            ValueType::U32 => Value::U32(self.u32("u32 value")?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array("i32 value")?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array("f32 value")?)),
            ValueType::U64 => Value::U64(self.u64("u64 value")?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array("i64 value")?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array("f64 value")?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.array::<1>("bool value")?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(self.corrupt(at, format!("bool value {b} is neither 0 nor 1"))),
                }
            }
            ValueType::String => Value::String(self.string("string value")?),
            ValueType::Array => {
                let at = self.pos;
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.corrupt(at, "arrays nested too deeply".into()));
                }
                let elem = self.value_type("array element type")?;
                let count = self.u64("array length")?;
                // Strings take at least 8 bytes, arrays at least 12.
                let min = elem.scalar_size().unwrap_or(if elem == ValueType::String { 8 } else { 12 });
                self.check_count(count, min as u64, "array length")?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }

    fn tensor_info(&mut self, alignment: u64) -> Result<TensorInfo> {
        let name = self.string("tensor name")?;
        let bad = |msg: String| GgufError::Tensor {
            name: name.clone(),
            msg,
        };
        let n_dims = self.u32("tensor dimension count")?;
        if n_dims as usize > MAX_DIMS {
            return Err(bad(format!("{n_dims} dimensions (ggml supports at most {MAX_DIMS})")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64("tensor dimension")?);
        }
        let ggml_type = self.u32("tensor type")?;
        let offset = self.u64("tensor data offset")?;

        let info = ggml::type_info(ggml_type).ok_or_else(|| bad(format!("unknown ggml type {ggml_type}")))?;
        // ggml indexes elements with int64_t: the product must fit.
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d).filter(|&n| n <= i64::MAX as u64))
            .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
        let row = dims.first().copied().unwrap_or(1);
        if row % info.block_size != 0 {
            return Err(bad(format!(
                "row of {row} elements is not a multiple of the {} block size {}",
                info.name, info.block_size
            )));
        }
        let size = (n_elements / info.block_size)
            .checked_mul(info.type_size)
            .ok_or_else(|| bad("data size overflows".into()))?;
        if offset % alignment != 0 {
            return Err(bad(format!("data offset {offset} is not aligned to {alignment}")));
        }
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            size,
        })
    }
}
