//! Row quantization and dequantization with ggml's own kernels.

use super::types::type_info;
use super::{sys, GgmlType};

/// Quantizes `src` (rows of `n_per_row` values) to ggml type `ty` into `dst`,
/// which must be exactly the quantized size.
pub fn quantize(ty: GgmlType, src: &[f32], n_per_row: usize, dst: &mut [u8]) {
    let info = type_info(ty).expect("known type");
    assert!(n_per_row > 0 && src.len().is_multiple_of(n_per_row));
    assert_eq!(
        n_per_row as u64 % info.block_size,
        0,
        "row not a multiple of the block size"
    );
    let n_rows = src.len() / n_per_row;
    assert_eq!(dst.len() as u64, info.row_size(n_per_row as u64) * n_rows as u64);
    // SAFETY: `src` holds n_rows * n_per_row floats and `dst` exactly the
    // quantized size of that (both checked); no importance matrix is needed
    // for the types this engine quantizes (checked by ggml, which asserts).
    unsafe {
        assert!(
            !sys::ggml_quantize_requires_imatrix(ty.sys()),
            "type {} needs an importance matrix",
            info.name
        );
        sys::ggml_quantize_chunk(
            ty.sys(),
            src.as_ptr(),
            dst.as_mut_ptr().cast(),
            0,
            n_rows as i64,
            n_per_row as i64,
            std::ptr::null(),
        );
    }
}

/// Dequantizes `n` values of type `ty` from `src`.
pub fn dequantize(ty: GgmlType, src: &[u8], n: usize) -> Vec<f32> {
    let info = type_info(ty).expect("known type");
    assert_eq!(n as u64 % info.block_size, 0);
    assert_eq!(src.len() as u64, info.row_size(n as u64));
    if ty == GgmlType::F32 {
        return src
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
    }
    let mut out = vec![0f32; n];
    // SAFETY: sizes checked above; every ggml type with a block size has a
    // to_float conversion for rows of whole blocks.
    unsafe {
        let traits = &*sys::ggml_get_type_traits(ty.sys());
        let to_float = traits.to_float.expect("type without to_float");
        to_float(src.as_ptr().cast(), out.as_mut_ptr(), n as i64);
    }
    out
}
