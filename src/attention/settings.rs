//! The attention settings that shape a saved state, compared field by field
//! so that a mismatch names the flag and both values.

use serde::{Deserialize, Serialize};

use super::infllm::{InfllmParams, NO_CAP_TOKENS};
use crate::ggml::GgmlType;

/// What a saved state must match to be loaded (`Attention::settings`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "attn", rename_all = "lowercase")]
pub enum Settings {
    Full {
        flash_attn: bool,
        n_ctx: usize,
        /// Cache types (f16 in sessions saved before they could change).
        #[serde(default = "f16")]
        type_k: GgmlType,
        #[serde(default = "f16")]
        type_v: GgmlType,
    },
    Infllm(InfllmParams),
}

fn f16() -> GgmlType {
    GgmlType::F16
}

/// The command-line flag that sets each settings field.
const FLAGS: &[(&str, &str)] = &[
    ("attn", "--attn"),
    ("flash_attn", "-fa"),
    ("n_ctx", "-c"),
    ("max_tokens", "-c"),
    ("n_init", "--n-init"),
    ("n_local", "--n-local"),
    ("block_size", "--block-size"),
    ("topk", "--topk"),
    ("repr_topk", "--repr-topk"),
    ("chunk", "--chunk"),
    ("mem_distance", "--mem-distance"),
    ("retrieval", "--retrieval"),
    ("type_k", "-ctk"),
    ("type_v", "-ctv"),
];

impl Settings {
    /// Why a state saved with `saved` cannot be loaded under `self`, naming
    /// each differing flag with both values; None when they are equal.
    pub fn mismatch(&self, saved: &Settings) -> Option<String> {
        let (now, then) = (fields(self), fields(saved));
        let keys = now.keys().chain(then.keys().filter(|k| !now.contains_key(*k)));
        let diffs: Vec<String> = keys
            .filter(|k| now.get(*k) != then.get(*k))
            .map(|k| {
                let flag = FLAGS.iter().find(|(f, _)| f == k).map_or(k.as_str(), |(_, flag)| flag);
                let show = |m: &serde_json::Map<String, serde_json::Value>| match m.get(k) {
                    None => "unset".to_string(),
                    Some(serde_json::Value::String(s)) => s.clone(),
                    // InfLLM's "no cap" is what `-c 0` (or no -c) asks for.
                    Some(v) if k == "max_tokens" && v.as_u64() == Some(NO_CAP_TOKENS as u64) => "0".into(),
                    Some(v) => v.to_string(),
                };
                format!("{flag} {} (now {})", show(&then), show(&now))
            })
            .collect();
        (!diffs.is_empty()).then(|| format!("saved with other attention settings: {}", diffs.join(", ")))
    }
}

fn fields(s: &Settings) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(s) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => unreachable!("settings serialize to an object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mismatch_names_the_flag_and_both_values() {
        let a = InfllmParams::defaults_for(8192);
        let b = InfllmParams { n_local: 1024, ..a };
        let msg = Settings::Infllm(b).mismatch(&Settings::Infllm(a)).unwrap();
        assert_eq!(msg, "saved with other attention settings: --n-local 4096 (now 1024)");
        assert!(Settings::Infllm(a).mismatch(&Settings::Infllm(a)).is_none());
        let full = Settings::Full {
            flash_attn: true,
            n_ctx: 4096,
            type_k: GgmlType::F16,
            type_v: GgmlType::F16,
        };
        assert!(full
            .mismatch(&Settings::Infllm(a))
            .unwrap()
            .contains("--attn infllm (now full)"));
        let q4 = Settings::Infllm(InfllmParams {
            type_k: crate::ggml::GgmlType::Q4_0,
            ..a
        });
        assert_eq!(
            q4.mismatch(&Settings::Infllm(a)).unwrap(),
            "saved with other attention settings: -ctk q8_0 (now q4_0)"
        );
        let uncapped = InfllmParams {
            max_tokens: NO_CAP_TOKENS,
            ..a
        };
        let capped = Settings::Infllm(InfllmParams { max_tokens: 5000, ..a });
        assert_eq!(
            capped.mismatch(&Settings::Infllm(uncapped)).unwrap(),
            "saved with other attention settings: -c 0 (now 5000)"
        );
    }
}
