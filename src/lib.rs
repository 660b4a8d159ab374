//! infllm: long-context inference for quantized GGUF models on ggml, with
//! InfLLM memory attention.

pub mod attention;
pub mod chat;
pub mod cli;
pub mod compute;
pub mod engine;
pub mod ggml;
pub mod gguf;
pub mod log;
pub mod model;
pub mod placement;
pub mod quote;
pub mod sampling;
pub mod server;
pub mod session;
pub mod tokenizer;
