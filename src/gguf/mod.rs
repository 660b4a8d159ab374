//! GGUF, the llama.cpp model file format: a hand-rolled reader over a memory
//! map (weights are used in place, never copied) and a small writer for test
//! fixtures. Every count, length, offset and dimension read from the file is
//! checked before use, so a broken file is an error, never a panic.

mod reader;
mod value;
mod writer;

pub use reader::{check_file, GgufError, GgufFile, TensorInfo};
pub use value::{Value, ValueType};
pub use writer::GgufWriter;

/// "GGUF" as stored at offset 0.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
