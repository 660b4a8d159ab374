//! Phi-3 / Phi-3.5 / Phi-4 (dense): the shared decoder with fused QKV and
//! gate/up matrices, Q scaled before attention, NeoX rotary halves.

use super::decoder::{Decoder, Options};
use super::ArchSpec;

pub const SPEC: ArchSpec = ArchSpec {
    names: &["phi3"],
    neox: true,
    load: |hp, w| {
        // LongRoPE (the 128K variants) picks frequency factors by context
        // length and scales attention: not implemented.
        anyhow::ensure!(
            w.info("blk.0.rope_factors_long.weight").is_none(),
            "phi3 with LongRoPE factors (128K variants) is not supported"
        );
        anyhow::ensure!(
            w.info("blk.0.ffn_gate_inp.weight").is_none(),
            "phi3 mixture-of-experts files are not supported"
        );
        let opt = Options {
            prescale_q: true,
            ..Options::default()
        };
        Ok(Box::new(Decoder::new(hp, w, opt)?))
    },
};
