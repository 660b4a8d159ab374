//! Qwen3 (dense): the shared decoder with per-head RMSNorm of Q and K before
//! rotation, NeoX rotary halves.

use super::decoder::{Decoder, Options};
use super::ArchSpec;

pub const SPEC: ArchSpec = ArchSpec {
    names: &["qwen3"],
    neox: true,
    load: |hp, w| {
        let opt = Options {
            qk_norm: true,
            ..Options::default()
        };
        Ok(Box::new(Decoder::new(hp, w, opt)?))
    },
};
