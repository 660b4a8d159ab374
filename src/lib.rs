//! infllm: long-context inference for quantized GGUF models on ggml, with
//! InfLLM memory attention.

pub mod ggml;
pub mod gguf;
