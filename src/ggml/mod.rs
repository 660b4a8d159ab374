//! The only module with `unsafe`: a thin, safe layer over ggml (through the
//! `llama-cpp-sys-2` bindings). Every `unsafe` block says why it is sound.
//!
//! - `types`: the `GgmlType` enum: ggml's tensor types, names and sizes.
//! - `tensor`: contexts, tensor and graph handles, reading and writing data.
//! - `ops`: ggml's own graph ops (matmul, rope, softmax, views, ...).
//! - `custom_ops`: our ops (`key_scores`, `block_scores`, `put_columns`,
//!   ...), run by ggml's threads through callbacks into `kernels`.
//! - `device`: the devices (CPU, GPUs, RPC servers) and their memory.
//! - `backend`: backends, buffers, and the scheduler that runs a graph
//!   over them.
//! - `arena`: growable host memory for InfLLM's block store.
//! - `liveness`: which buffers are alive, checked before a tensor handle
//!   reaches memory (a handle borrows only its metadata context).
//! - `row_cache`: device copies of host rows filled on demand (InfLLM's
//!   block cache past its size), least recently used out.
//! - `quant`: row quantization with ggml's kernels.
//! - `kernels`: kernels of our own, run as custom ops (safe code).
//! - `reference`: llama.cpp's own `llama_*` API, used only by tests and the
//!   bench as the oracle for tokens and logits.
//! - `gguf_ref`: ggml's own GGUF reader, the oracle for our parser.

mod arena;
mod backend;
mod custom_ops;
mod device;
pub mod gguf_ref;
mod kernels;
mod liveness;
mod ops;
mod quant;
pub mod reference;
mod row_cache;
mod tensor;
mod types;

pub use arena::{piece_spans, HostArena, PIECE_ALIGN};
pub use backend::{Backend, Buffer, Scheduler, MAX_GRAPH_NODES};
pub use device::{add_rpc_server, exit_on_ggml_abort, serve_rpc, BufferType, Device};
/// Values the block kernels read at a time: block rows (head dim, block
/// size) are whole multiples of it.
pub use kernels::LANES as ROW_TILE;
pub use ops::{RopeParams, ROPE_NEOX, ROPE_NORMAL};
pub use quant::{dequantize, quantize};
pub use row_cache::RowCache;
pub use tensor::{Context, Graph, GraphId, Tensor, TensorId};
pub use types::{type_by_name, type_info, GgmlType, TypeInfo, UnknownType};

use llama_cpp_sys_2 as sys;

/// Maps a file read-only.
pub fn map_readonly(file: &std::fs::File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the mapping is read-only; like llama.cpp we treat model files as
    // immutable while loaded (a concurrent truncation would be the caller's bug,
    // and would fault rather than corrupt memory).
    unsafe { memmap2::Mmap::map(file) }
}

/// Silences (or restores) ggml's and llama.cpp's log output on stderr.
pub fn set_quiet_logs(quiet: bool) {
    unsafe extern "C" fn drop_log(
        _level: sys::ggml_log_level,
        _text: *const std::os::raw::c_char,
        _user: *mut std::os::raw::c_void,
    ) {
    }
    // SAFETY: installing a callback that never dereferences its arguments is
    // always valid; `None` restores the default logger.
    unsafe {
        if quiet {
            sys::llama_log_set(Some(drop_log), std::ptr::null_mut());
            sys::ggml_log_set(Some(drop_log), std::ptr::null_mut());
        } else {
            sys::llama_log_set(None, std::ptr::null_mut());
            sys::ggml_log_set(None, std::ptr::null_mut());
        }
    }
}

/// Sends ggml's and llama.cpp's log text to infllm's log (`crate::log`),
/// where `-lv 4` shows it and `-v` its debug lines too.
pub fn forward_logs() {
    unsafe extern "C" fn to_log(
        level: sys::ggml_log_level,
        text: *const std::os::raw::c_char,
        _user: *mut std::os::raw::c_void,
    ) {
        if text.is_null() {
            return;
        }
        // SAFETY: ggml passes a NUL-terminated string that lives for the call.
        let text = unsafe { std::ffi::CStr::from_ptr(text) }.to_string_lossy();
        use crate::log::Level;
        let level = match level {
            sys::GGML_LOG_LEVEL_DEBUG => Some(Level::Debug),
            sys::GGML_LOG_LEVEL_INFO => Some(Level::Info),
            sys::GGML_LOG_LEVEL_WARN => Some(Level::Warn),
            sys::GGML_LOG_LEVEL_ERROR => Some(Level::Error),
            // Continued text, or text with no level.
            _ => None,
        };
        crate::log::library_text(level, &text);
    }
    // SAFETY: the callback reads only the string ggml hands it, and
    // neither unwinds nor keeps the pointer.
    unsafe {
        sys::llama_log_set(Some(to_log), std::ptr::null_mut());
        sys::ggml_log_set(Some(to_log), std::ptr::null_mut());
    }
}
