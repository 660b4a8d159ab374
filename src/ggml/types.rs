//! ggml tensor types: names, block sizes and byte sizes, from the linked ggml.

use std::ffi::CStr;

use super::sys;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeInfo {
    pub id: u32,
    pub name: &'static str,
    /// Elements per block.
    pub block_size: u64,
    /// Bytes per block.
    pub type_size: u64,
}

impl TypeInfo {
    /// Bytes taken by a row of `n` elements (`n` must be a multiple of the block size).
    pub fn row_size(&self, n: u64) -> u64 {
        n / self.block_size * self.type_size
    }
}

/// Type information for ggml type number `id`, or `None` for numbers the
/// linked ggml does not know (including removed types).
pub fn type_info(id: u32) -> Option<TypeInfo> {
    if id >= sys::GGML_TYPE_COUNT {
        return None;
    }
    // SAFETY: `id` is below GGML_TYPE_COUNT, so it indexes ggml's static
    // type-traits table; removed types have a zero block size, checked below.
    let (block_size, type_size, name) = unsafe {
        let traits = &*sys::ggml_get_type_traits(id);
        let name = if traits.type_name.is_null() {
            return None;
        } else {
            CStr::from_ptr(traits.type_name).to_str().ok()?
        };
        (traits.blck_size, traits.type_size, name)
    };
    if block_size <= 0 || type_size == 0 {
        return None;
    }
    Some(TypeInfo {
        id,
        name,
        block_size: block_size as u64,
        type_size: type_size as u64,
    })
}

/// Looks a type up by its ggml name (`f16`, `q8_0`, ...).
pub fn type_by_name(name: &str) -> Option<TypeInfo> {
    (0..sys::GGML_TYPE_COUNT)
        .filter_map(type_info)
        .find(|t| t.name.eq_ignore_ascii_case(name))
}
