//! Llama (Llama 2/3, SmolLM2, Mistral 7B, ...) and Mistral 3 (`mistral3`):
//! the shared decoder as it is, rotary pairs adjacent, optional Llama 3 rope
//! frequency factors.

use super::decoder::{Decoder, Options};
use super::ArchSpec;

pub const SPEC: ArchSpec = ArchSpec {
    names: &["llama", "mistral3"],
    neox: false,
    load: |hp, w| {
        // Mistral 3's optional Llama-4-style attention temperature is not implemented.
        let key = format!("{}.attention.temperature_scale", hp.arch);
        anyhow::ensure!(
            w.file.get_f32(&key).map_or(true, |v| v == 0.0),
            "{key} (attention temperature scaling) is not supported"
        );
        Ok(Box::new(Decoder::new(hp, w, Options::default())?))
    },
};
