//! Qwen2 / Qwen2.5: the shared decoder with Q/K/V biases, NeoX rotary halves.

use super::decoder::{Decoder, Options};
use super::ArchSpec;

pub const SPEC: ArchSpec = ArchSpec {
    names: &["qwen2"],
    neox: true,
    load: |hp, w| Ok(Box::new(Decoder::new(hp, w, Options::default())?)),
};
