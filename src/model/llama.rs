//! Llama (Llama 2/3, SmolLM2, Mistral 7B, ...) and Mistral 3 (`mistral3`):
//! the shared decoder as it is, rotary pairs adjacent, optional Llama 3 rope
//! frequency factors.

use super::decoder::{Decoder, Options};
use super::meta::{Meta, Sign};
use super::ArchSpec;

pub const SPEC: ArchSpec = ArchSpec {
    names: &["llama", "mistral3"],
    neox: false,
    load: |hp, w| {
        // Mistral 3's optional Llama-4-style attention temperature is not implemented.
        let m = Meta::new(w.file)?;
        let key = "attention.temperature_scale";
        anyhow::ensure!(
            m.f32_or(key, 0.0, Sign::NonNegative)? == 0.0,
            "{} (attention temperature scaling) is not supported",
            m.key(key)
        );
        Ok(Box::new(Decoder::new(hp, w, Options::default())?))
    },
};
