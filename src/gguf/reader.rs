//! GGUF reader: parses the header, metadata and tensor table of a memory
//! mapped file, checking every field against the bytes actually present.
//!
//! Every count, length, offset and dimension is checked before it is used:
//! a broken file gives a [`GgufError`] naming the problem and where it is
//! (byte offset, metadata key, tensor), never a panic, an out-of-bounds read
//! or an allocation sized by an unchecked count.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::value::{Value, ValueType};
use super::{DEFAULT_ALIGNMENT, MAGIC};
use crate::ggml::{self, GgmlType};
use crate::quote::quoted;

/// Arrays nested deeper than this are rejected (real files nest at most 2).
pub const MAX_ARRAY_DEPTH: usize = 8;
/// ggml tensors have at most 4 dimensions (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// ggml keeps tensor names in a 64-byte buffer with a NUL (`GGML_MAX_NAME`):
/// a longer name would be cut short there, and could then collide.
pub const MAX_TENSOR_NAME: usize = 63;
/// Vectors are pre-allocated for at most this many items: a lying count then
/// costs nothing, a true one only a few reallocations as the items are read.
const MAX_PREALLOC: usize = 1 << 16;

/// Text from the file (key and tensor names, string values) enters these
/// messages only through [`quoted`]: escaped and cut, so that each stays one
/// short line.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The cause is part of the message and not a `source`: printed as an
    /// error chain, it would appear twice.
    #[error("cannot open {}: {cause}", path.display())]
    Io { path: PathBuf, cause: std::io::Error },
    /// A path that is no file to map: missing, a directory, a device or
    /// FIFO (opening one would block), or empty.
    #[error("model file {} {why}", path.display())]
    NotAFile { path: PathBuf, why: String },
    #[error("not a GGUF file (magic {0:02x?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("unsupported GGUF version {0} (supported: 2, 3){hint}", hint = endian_hint(*.0))]
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
    #[error("corrupt GGUF file: tensor {}: {msg}", quoted(name))]
    Tensor { name: String, msg: String },
    #[error("GGUF metadata key {} is missing", quoted(.0))]
    MissingKey(String),
    #[error("GGUF metadata key {} has type {found:?}, expected {expected}", quoted(key))]
    WrongType {
        key: String,
        found: ValueType,
        expected: &'static str,
    },
}

impl GgufError {
    /// Prefixes the description of a parse error with where it happened
    /// (a metadata key, a tensor entry).
    fn context(self, ctx: &str) -> Self {
        match self {
            GgufError::Truncated {
                what,
                offset,
                needed,
                available,
            } => GgufError::Truncated {
                what: format!("{ctx}: {what}"),
                offset,
                needed,
                available,
            },
            GgufError::Corrupt { offset, msg } => GgufError::Corrupt {
                offset,
                msg: format!("{ctx}: {msg}"),
            },
            other => other,
        }
    }
}

/// A version read from a file of the other byte order has its low bits clear.
fn endian_hint(version: u32) -> &'static str {
    if version != 0 && version & 0xffff == 0 {
        "; is the file big-endian?"
    } else {
        ""
    }
}

type Result<T> = std::result::Result<T, GgufError>;

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (row) dimension. As many
    /// entries as the file stores (0 to [`MAX_DIMS`]).
    pub dims: Vec<u64>,
    /// The data's ggml type.
    pub ggml_type: GgmlType,
    /// Offset of the data, relative to the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements (at most `i64::MAX`, checked at parse time).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// ggml's `ne`: the dimensions padded with 1 to [`MAX_DIMS`] entries.
    pub fn ne(&self) -> [u64; MAX_DIMS] {
        let mut ne = [1; MAX_DIMS];
        ne[..self.dims.len()].copy_from_slice(&self.dims);
        ne
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
    /// Absolute offset of the tensor data section. As in ggml, it is padded
    /// to `alignment` only when the file has tensors.
    pub data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish_non_exhaustive()
    }
}

impl GgufFile {
    /// Memory-maps and parses a file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        check_file(path)?;
        let io = |cause| GgufError::Io {
            path: path.to_path_buf(),
            cause,
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
        let magic: [u8; 4] = r.array("magic")?;
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
        // (value) bytes; each tensor entry at least 8 (name length) + 4
        // (dimension count) + 4 (type) + 8 (offset).
        r.check_count(n_kv, 13, "metadata count")?;
        r.check_count(n_tensors, 24, "tensor count")?;

        let meta = r.metadata(n_kv)?;
        let alignment = alignment(&meta)?;
        let Metadata {
            entries: metadata,
            index: key_index,
            ..
        } = meta;

        let prealloc = (n_tensors as usize).min(MAX_PREALLOC);
        let mut tensors = Vec::with_capacity(prealloc);
        let mut tensor_index = HashMap::with_capacity(prealloc);
        for i in 0..n_tensors {
            let at = r.pos;
            let t = r
                .tensor_info(alignment)
                .map_err(|e| e.context(&format!("tensor entry #{i}")))?;
            if tensor_index.insert(t.name.clone(), tensors.len()).is_some() {
                return Err(GgufError::Tensor {
                    name: t.name,
                    msg: format!("duplicate tensor name (entry #{i} at byte {at})"),
                });
            }
            tensors.push(t);
        }

        // ggml pads the header to the alignment only when there are tensors.
        let header_end = r.pos as u64;
        let data_offset = if tensors.is_empty() {
            header_end
        } else {
            header_end.checked_next_multiple_of(alignment).unwrap_or(u64::MAX)
        };
        let data_len = (data.len() as u64)
            .checked_sub(data_offset)
            .ok_or_else(|| GgufError::Truncated {
                what: format!("padding to the {alignment}-byte aligned tensor data"),
                offset: r.pos,
                needed: data_offset - header_end,
                available: r.remaining(),
            })?;
        check_tensor_extents(&tensors, data_offset, data_len)?;

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
        v.as_f64()
            .map(|f| f as f32)
            .ok_or_else(|| self.wrong(key, v, "a number"))
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

    /// The bytes of one tensor of this file (bounds were checked at parse
    /// time).
    ///
    /// # Panics
    /// If `t` is not an entry of this file's tensor table and its extent does
    /// not lie inside the file (a caller bug, never a file problem).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let span = self
            .data_offset
            .checked_add(t.offset)
            .and_then(|start| Some(start..start.checked_add(t.size)?))
            .and_then(|r| Some(usize::try_from(r.start).ok()?..usize::try_from(r.end).ok()?))
            .and_then(|r| self.bytes().get(r));
        span.unwrap_or_else(|| panic!("tensor {} is not a tensor of this GGUF file", quoted(&t.name)))
    }
}

/// Checks that `path` is a non-empty regular file (following links) without
/// opening it: opening a FIFO would block, and a directory or device cannot
/// be mapped as a model.
pub fn check_file(path: &Path) -> Result<()> {
    let not_a_file = |why: String| GgufError::NotAFile {
        path: path.to_path_buf(),
        why,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_a_file("does not exist".into())),
        Err(e) => return Err(not_a_file(format!("cannot be read: {e}"))),
    };
    let ty = meta.file_type();
    if ty.is_dir() {
        return Err(not_a_file("is a directory".into()));
    }
    if !ty.is_file() {
        return Err(not_a_file(format!("is not a regular file ({})", special_kind(ty))));
    }
    if meta.len() == 0 {
        return Err(not_a_file("is empty".into()));
    }
    Ok(())
}

/// What a path that is neither a regular file nor a directory is.
#[cfg(unix)]
fn special_kind(ty: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if ty.is_fifo() {
        "a FIFO"
    } else if ty.is_char_device() {
        "a character device"
    } else if ty.is_block_device() {
        "a block device"
    } else if ty.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: std::fs::FileType) -> &'static str {
    "a special file"
}

/// `general.alignment`: when present, a u32 power of two (as ggml requires).
fn alignment(meta: &Metadata) -> Result<u64> {
    const KEY: &str = "general.alignment";
    let Some(&i) = meta.index.get(KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let msg = match &meta.entries[i].1 {
        Value::U32(a) if a.is_power_of_two() => return Ok(*a as u64),
        Value::U32(a) => format!("metadata key \"{KEY}\": alignment {a} is not a power of two"),
        v => format!("metadata key \"{KEY}\" must be a u32, found {:?} {v}", v.value_type()),
    };
    Err(GgufError::Corrupt {
        offset: meta.offsets[i],
        msg,
    })
}

/// Tensor data must lie inside the data section and not overlap.
fn check_tensor_extents(tensors: &[TensorInfo], data_offset: u64, data_len: u64) -> Result<()> {
    let mut spans: Vec<&TensorInfo> = tensors.iter().collect();
    spans.sort_by_key(|t| t.offset);
    // The non-empty tensor that ends last so far.
    let mut prev: Option<(&TensorInfo, u64)> = None;
    for t in spans {
        let end = t
            .offset
            .checked_add(t.size)
            .filter(|&e| e <= data_len)
            .ok_or_else(|| GgufError::Tensor {
                name: t.name.clone(),
                msg: format!(
                    "data [{}, +{}) runs past the end of the file (data section at byte {} is {} bytes)",
                    t.offset, t.size, data_offset, data_len
                ),
            })?;
        if t.size == 0 {
            continue;
        }
        if let Some((p, p_end)) = prev {
            if p_end > t.offset {
                return Err(GgufError::Tensor {
                    name: t.name.clone(),
                    msg: format!(
                        "data [{}, +{}) overlaps tensor {} [{}, +{})",
                        t.offset,
                        t.size,
                        quoted(&p.name),
                        p.offset,
                        p.size
                    ),
                });
            }
        }
        prev = Some((t, end));
    }
    Ok(())
}

/// The metadata section as parsed: entries in file order, their index by
/// key, and the byte offset of each entry.
struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    offsets: Vec<usize>,
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
        let rest = &self.data[self.pos..];
        match usize::try_from(n).ok().and_then(|n| rest.get(..n)) {
            Some(s) => {
                self.pos += s.len();
                Ok(s)
            }
            None => Err(GgufError::Truncated {
                what: what.into(),
                offset: self.pos,
                needed: n,
                available: rest.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
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
                format!(
                    "{what} {count} is impossible: {count} items of at least {min_size} bytes do not fit in the {} bytes that follow",
                    self.remaining()
                ),
            ));
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.u64(&format!("{what} length"))?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| {
            self.corrupt(
                at,
                format!(
                    "{what} is not valid UTF-8 (bad byte at index {} of {len})",
                    e.utf8_error().valid_up_to()
                ),
            )
        })
    }

    fn value_type(&mut self, what: &str) -> Result<ValueType> {
        let at = self.pos;
        let t = self.u32(what)?;
        ValueType::from_u32(t).ok_or_else(|| self.corrupt(at, format!("unknown {what} {t} (known: 0 to 12)")))
    }

    /// The key/value section; keys are unique and non-empty.
    fn metadata(&mut self, n_kv: u64) -> Result<Metadata> {
        let prealloc = (n_kv as usize).min(MAX_PREALLOC);
        let mut metadata = Vec::with_capacity(prealloc);
        let mut key_index = HashMap::with_capacity(prealloc);
        let mut offsets = Vec::with_capacity(prealloc);
        for i in 0..n_kv {
            let at = self.pos;
            let key = self
                .string("metadata key")
                .map_err(|e| e.context(&format!("metadata entry #{i}")))?;
            if key.is_empty() {
                return Err(self.corrupt(at, format!("metadata entry #{i} has an empty key")));
            }
            if key_index.contains_key(&key) {
                return Err(self.corrupt(at, format!("duplicate metadata key {} (entry #{i})", quoted(&key))));
            }
            let ctx = || format!("metadata key {}", quoted(&key));
            let ty = self.value_type("value type").map_err(|e| e.context(&ctx()))?;
            let value = self.value(ty, 0).map_err(|e| e.context(&ctx()))?;
            key_index.insert(key.clone(), metadata.len());
            metadata.push((key, value));
            offsets.push(at);
        }
        Ok(Metadata {
            entries: metadata,
            index: key_index,
            offsets,
        })
    }

    fn value(&mut self, ty: ValueType, depth: usize) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>("u8 value")?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array("i8 value")?)),
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
                    return Err(self.corrupt(at, format!("arrays nested more than {MAX_ARRAY_DEPTH} deep")));
                }
                let elem = self.value_type("array element type")?;
                let count = self.u64("array length")?;
                // Strings take at least 8 bytes (length), arrays at least 12
                // (element type and length).
                let min = match elem {
                    ValueType::String => 8,
                    ValueType::Array => 12,
                    scalar => scalar.scalar_size().unwrap_or(1),
                };
                self.check_count(count, min as u64, &format!("length of the {elem:?} array"))?;
                let mut items = Vec::with_capacity((count as usize).min(MAX_PREALLOC));
                for i in 0..count {
                    let item = self.value(elem, depth + 1);
                    items.push(item.map_err(|e| e.context(&format!("{elem:?} array item #{i}")))?);
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
        if name.len() > MAX_TENSOR_NAME {
            return Err(bad(format!(
                "name is {} bytes long (ggml allows at most {MAX_TENSOR_NAME})",
                name.len()
            )));
        }
        // ggml keeps the name as a C string: a NUL would cut it short.
        if name.contains('\0') {
            return Err(bad("name holds a NUL byte".into()));
        }
        let ctx = || format!("tensor {}", quoted(&name));
        let n_dims = self.u32("dimension count").map_err(|e| e.context(&ctx()))?;
        if n_dims as usize > MAX_DIMS {
            return Err(bad(format!("{n_dims} dimensions (ggml supports at most {MAX_DIMS})")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for i in 0..n_dims {
            dims.push(self.u64(&format!("dimension {i}")).map_err(|e| e.context(&ctx()))?);
        }
        let ggml_type = self.u32("ggml type").map_err(|e| e.context(&ctx()))?;
        let offset = self.u64("data offset").map_err(|e| e.context(&ctx()))?;

        // ggml stores dimensions and counts elements as int64_t: each and
        // their running product must fit (checked in order, as ggml does).
        if let Some(d) = dims.iter().find(|&&d| d > i64::MAX as u64) {
            return Err(bad(format!("dimension {d} of {dims:?} is negative as ggml's int64")));
        }
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d).filter(|&n| n <= i64::MAX as u64))
            .ok_or_else(|| bad(format!("dimensions {dims:?} overflow: more than i64::MAX elements")))?;
        let ggml_type = GgmlType::try_from(ggml_type).map_err(|e| bad(e.to_string()))?;
        let (name_of_type, block_size) = (ggml_type.name(), ggml_type.block_size());
        let row = dims.first().copied().unwrap_or(1);
        if row % block_size != 0 {
            return Err(bad(format!(
                "row of {row} elements is not a multiple of the {name_of_type} block size {block_size}"
            )));
        }
        let size = (n_elements / block_size)
            .checked_mul(ggml_type.type_size())
            .ok_or_else(|| bad(format!("data size of {n_elements} {name_of_type} elements overflows")))?;
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
