//! ggml's own GGUF reader (`gguf_init_from_file`), wrapped safely: the
//! oracle the tests compare [`crate::gguf::GgufFile`] against, field for
//! field. The engine itself never uses it.
//!
//! What ggml's reader cannot tell us, or reads differently:
//! - it does not keep a tensor's stored dimension count: `dims` here is
//!   ggml's `ne` with the trailing 1s dropped (at least one entry), so
//!   compare [`TensorInfo::ne`] rather than `dims` when a file stores
//!   trailing 1s;
//! - it rejects arrays of arrays, empty keys, and tensor offsets that are not
//!   contiguous in table order (our reader accepts the first and the last);
//! - it reads any byte as a bool, and any bytes as a string; strings come
//!   back as C strings, so one with a NUL byte inside comes back cut short
//!   (a comparison with our reader then fails), and one that is not UTF-8
//!   is an error here.

use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::path::Path;
use std::ptr::NonNull;

use anyhow::{anyhow, bail, Context, Result};

use super::{sys, GgmlType};
use crate::gguf::{TensorInfo, Value, ValueType};

/// A GGUF file as ggml's reader sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RefGguf {
    pub version: u32,
    pub alignment: u64,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// The tensor table in file order (see the module notes on `dims`).
    pub tensors: Vec<TensorInfo>,
}

/// Reads `path` with `gguf_init_from_file` (metadata and tensor table only:
/// `no_alloc`, no ggml context, no tensor data loaded).
pub fn read_file(path: &Path) -> Result<RefGguf> {
    let cpath = CString::new(path.as_os_str().as_encoded_bytes())
        .with_context(|| format!("path {} contains a NUL byte", path.display()))?;
    let params = sys::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: `cpath` is a valid NUL-terminated string that outlives the
    // call; with `ctx` null ggml creates no ggml context, so nothing but the
    // returned gguf context (owned by `Ctx` below) is allocated.
    let raw = unsafe { sys::gguf_init_from_file(cpath.as_ptr(), params) };
    let ctx = Ctx::new(raw).ok_or_else(|| anyhow!("ggml's gguf reader rejected {}", path.display()))?;
    ctx.read()
        .with_context(|| format!("reading {} through ggml", path.display()))
}

/// Reads a file held in memory with `gguf_init_from_buffer`.
pub fn read_bytes(bytes: &[u8]) -> Result<RefGguf> {
    let params = sys::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: ggml reads at most `bytes.len()` bytes from `bytes`, which is
    // valid for the whole call, and copies what it keeps (no pointer into
    // the buffer survives: no tensor data is loaded with `no_alloc`).
    let raw = unsafe { sys::gguf_init_from_buffer(bytes.as_ptr().cast(), bytes.len(), params) };
    let ctx = Ctx::new(raw).ok_or_else(|| anyhow!("ggml's gguf reader rejected the {}-byte buffer", bytes.len()))?;
    ctx.read()
}

/// Owns a `gguf_context`; frees it on drop.
struct Ctx(NonNull<sys::gguf_context>);

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: the pointer came from a successful `gguf_init_*` call and is
        // freed exactly once, here.
        unsafe { sys::gguf_free(self.0.as_ptr()) }
    }
}

/// Copies a C string owned by the gguf context; it must be UTF-8.
fn c_str(p: *const c_char, what: &dyn Fn() -> String) -> Result<String> {
    if p.is_null() {
        bail!("ggml returned no string for {}", what());
    }
    // SAFETY: non-null pointers returned by the gguf getters point to
    // NUL-terminated strings (`std::string::c_str()` or a tensor name
    // buffer) owned by the context, which is alive during this call; the
    // text is copied out before returning.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(str::to_owned)
        .map_err(|_| anyhow!("{} is not valid UTF-8", what()))
}

impl Ctx {
    fn new(raw: *mut sys::gguf_context) -> Option<Self> {
        NonNull::new(raw).map(Ctx)
    }

    fn ptr(&self) -> *const sys::gguf_context {
        self.0.as_ptr()
    }

    fn read(&self) -> Result<RefGguf> {
        // SAFETY: these getters only read fields of a valid context.
        let (version, alignment, data_offset, n_kv, n_tensors) = unsafe {
            (
                sys::gguf_get_version(self.ptr()),
                sys::gguf_get_alignment(self.ptr()),
                sys::gguf_get_data_offset(self.ptr()),
                sys::gguf_get_n_kv(self.ptr()),
                sys::gguf_get_n_tensors(self.ptr()),
            )
        };
        let metadata = (0..n_kv).map(|i| self.kv(i)).collect::<Result<_>>()?;
        let tensors = (0..n_tensors).map(|i| self.tensor(i)).collect::<Result<_>>()?;
        Ok(RefGguf {
            version,
            alignment: alignment as u64,
            data_offset: data_offset as u64,
            metadata,
            tensors,
        })
    }

    /// Key/value pair `i`, which must be in `0..gguf_get_n_kv`.
    fn kv(&self, i: i64) -> Result<(String, Value)> {
        // SAFETY: `i` is a valid key id (ggml asserts, i.e. aborts, otherwise).
        let key_ptr = unsafe { sys::gguf_get_key(self.ptr(), i) };
        let key = c_str(key_ptr, &|| format!("metadata key #{i}"))?;
        // SAFETY: valid key id.
        let ty = unsafe { sys::gguf_get_kv_type(self.ptr(), i) };
        let value = if ty == sys::GGUF_TYPE_ARRAY {
            self.array(i).with_context(|| format!("metadata key '{key}'"))?
        } else {
            self.scalar(i, ty).with_context(|| format!("metadata key '{key}'"))?
        };
        Ok((key, value))
    }

    /// A non-array value; `ty` is its `gguf_get_kv_type`.
    fn scalar(&self, i: i64, ty: sys::gguf_type) -> Result<Value> {
        let c = self.ptr();
        // SAFETY: `i` is a valid key id and each getter is called only for
        // the type the context reports for that key (ggml asserts the type and
        // that the value is not an array; both hold here).
        let value = unsafe {
            match ty {
                sys::GGUF_TYPE_UINT8 => Value::U8(sys::gguf_get_val_u8(c, i)),
                sys::GGUF_TYPE_INT8 => Value::I8(sys::gguf_get_val_i8(c, i)),
                sys::GGUF_TYPE_UINT16 => Value::U16(sys::gguf_get_val_u16(c, i)),
                sys::GGUF_TYPE_INT16 => Value::I16(sys::gguf_get_val_i16(c, i)),
                sys::GGUF_TYPE_UINT32 => Value::U32(sys::gguf_get_val_u32(c, i)),
                sys::GGUF_TYPE_INT32 => Value::I32(sys::gguf_get_val_i32(c, i)),
                sys::GGUF_TYPE_FLOAT32 => Value::F32(sys::gguf_get_val_f32(c, i)),
                sys::GGUF_TYPE_BOOL => Value::Bool(sys::gguf_get_val_bool(c, i)),
                sys::GGUF_TYPE_UINT64 => Value::U64(sys::gguf_get_val_u64(c, i)),
                sys::GGUF_TYPE_INT64 => Value::I64(sys::gguf_get_val_i64(c, i)),
                sys::GGUF_TYPE_FLOAT64 => Value::F64(sys::gguf_get_val_f64(c, i)),
                sys::GGUF_TYPE_STRING => {
                    let p = sys::gguf_get_val_str(c, i);
                    Value::String(c_str(p, &|| "the string value".into())?)
                }
                other => bail!("unknown value type {other}"),
            }
        };
        Ok(value)
    }

    /// An array value (key `i` has type `GGUF_TYPE_ARRAY`).
    fn array(&self, i: i64) -> Result<Value> {
        let c = self.ptr();
        // SAFETY: `i` is a valid key id of an array (ggml asserts that for
        // the element type).
        let (elem, n) = unsafe { (sys::gguf_get_arr_type(c, i), sys::gguf_get_arr_n(c, i)) };
        let elem_type = ValueType::from_u32(elem).ok_or_else(|| anyhow!("unknown array element type {elem}"))?;
        if elem_type == ValueType::String {
            let items = (0..n)
                .map(|j| {
                    // SAFETY: a string array with `n` items, and `j < n`
                    // (ggml does not check the index).
                    let p = unsafe { sys::gguf_get_arr_str(c, i, j) };
                    Ok(Value::String(c_str(p, &|| format!("string array item #{j}"))?))
                })
                .collect::<Result<_>>()?;
            return Ok(Value::Array(elem_type, items));
        }
        let Some(size) = elem_type.scalar_size() else {
            // ggml's reader refuses arrays of arrays, so none can be here.
            bail!("array of {elem_type:?} (ggml has no nested arrays)");
        };
        let bytes: &[u8] = if n == 0 {
            &[]
        } else {
            // SAFETY: for a non-string array ggml keeps the items packed in a
            // byte vector of `n * size` bytes (bools as one byte each) and
            // returns its start; it lives as long as the context, which is
            // borrowed for this slice's whole life. `n > 0`, so the pointer is
            // non-null; u8 has no alignment requirement.
            unsafe {
                let p = sys::gguf_get_arr_data(c, i).cast::<u8>();
                if p.is_null() {
                    bail!("ggml returned no data for a {n}-item array");
                }
                std::slice::from_raw_parts(p, n * size)
            }
        };
        let items = bytes
            .chunks_exact(size)
            .map(|b| scalar_from_ne_bytes(elem_type, b))
            .collect();
        Ok(Value::Array(elem_type, items))
    }

    /// Tensor `i`, which must be in `0..gguf_get_n_tensors`.
    fn tensor(&self, i: i64) -> Result<TensorInfo> {
        let c = self.ptr();
        // SAFETY: `i` is a valid tensor id; the name buffer is owned by the
        // context and NUL-terminated by ggml_set_name.
        let name_ptr = unsafe { sys::gguf_get_tensor_name(c, i) };
        let name = c_str(name_ptr, &|| format!("tensor name #{i}"))?;
        // SAFETY: valid tensor id; `gguf_get_tensor_ne` returns the tensor's
        // `ne` array of GGML_MAX_DIMS (4) int64 values, owned by the context,
        // and copied out at once.
        let (ne, ggml_type, offset, size) = unsafe {
            let ne_ptr = sys::gguf_get_tensor_ne(c, i);
            if ne_ptr.is_null() {
                bail!("ggml returned no dimensions for tensor '{name}'");
            }
            (
                *ne_ptr.cast::<[i64; 4]>(),
                sys::gguf_get_tensor_type(c, i),
                sys::gguf_get_tensor_offset(c, i),
                sys::gguf_get_tensor_size(c, i),
            )
        };
        let mut dims = ne
            .iter()
            .map(|&d| u64::try_from(d).map_err(|_| anyhow!("tensor '{name}' has negative dimension {d}")))
            .collect::<Result<Vec<u64>>>()?;
        while dims.len() > 1 && dims.last() == Some(&1) {
            dims.pop();
        }
        let ggml_type = GgmlType::try_from(ggml_type).with_context(|| format!("tensor '{name}'"))?;
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset: offset as u64,
            size: size as u64,
        })
    }
}

/// One array item as ggml stores it in memory (native byte order).
fn scalar_from_ne_bytes(ty: ValueType, b: &[u8]) -> Value {
    let a2 = || [b[0], b[1]];
    let a4 = || [b[0], b[1], b[2], b[3]];
    let a8 = || [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
    match ty {
        ValueType::U8 => Value::U8(b[0]),
        ValueType::I8 => Value::I8(b[0] as i8),
        ValueType::Bool => Value::Bool(b[0] != 0),
        ValueType::U16 => Value::U16(u16::from_ne_bytes(a2())),
        ValueType::I16 => Value::I16(i16::from_ne_bytes(a2())),
        ValueType::U32 => Value::U32(u32::from_ne_bytes(a4())),
        ValueType::I32 => Value::I32(i32::from_ne_bytes(a4())),
        ValueType::F32 => Value::F32(f32::from_ne_bytes(a4())),
        ValueType::U64 => Value::U64(u64::from_ne_bytes(a8())),
        ValueType::I64 => Value::I64(i64::from_ne_bytes(a8())),
        ValueType::F64 => Value::F64(f64::from_ne_bytes(a8())),
        ValueType::String | ValueType::Array => unreachable!("not a scalar type"),
    }
}
