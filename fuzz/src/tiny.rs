//! Tiny model files: SmolLM2's first tokens as the vocabulary, random
//! weights, a few kilobytes, so that the fuzzer mutates every part often.

use infllm::ggml::GgmlType;
use infllm::gguf::{GgufFile, GgufWriter, Value, ValueType};

/// Tokens kept from SmolLM2's vocabulary (its specials, the 256 bytes, the
/// first merges).
pub const N_VOCAB: usize = 400;
const N_HEAD: u64 = 2;
const N_HEAD_KV: u64 = 1;
const N_LAYER: u32 = 2;

/// The tokenizer metadata of SmolLM2 cut to `N_VOCAB` tokens: every merge
/// whose parts and result are kept.
fn add_vocab(w: &mut GgufWriter) {
    let f = GgufFile::open(crate::repo_file("models/SmolLM2-135M-Instruct.Q4_1.gguf")).expect("SmolLM2");
    let tokens = f.get_array("tokenizer.ggml.tokens").expect("tokens");
    let kept: std::collections::HashSet<&str> = tokens[..N_VOCAB].iter().filter_map(Value::as_str).collect();
    let merges: Vec<Value> = f
        .get_array("tokenizer.ggml.merges")
        .expect("merges")
        .iter()
        .filter(|m| {
            let m = m.as_str().unwrap_or("");
            let (a, b) = m.split_once(' ').unwrap_or((m, ""));
            kept.contains(a) && kept.contains(b) && kept.contains(format!("{a}{b}").as_str())
        })
        .cloned()
        .collect();
    for (key, value) in &f.metadata {
        let value = match key.as_str() {
            "tokenizer.ggml.tokens" | "tokenizer.ggml.token_type" => match value {
                Value::Array(t, a) => Value::Array(*t, a[..N_VOCAB].to_vec()),
                v => v.clone(),
            },
            "tokenizer.ggml.merges" => Value::Array(ValueType::String, merges.clone()),
            "tokenizer.chat_template" => continue,
            k if k.starts_with("tokenizer.") => value.clone(),
            _ => continue,
        };
        w.add(key, value);
    }
}

/// Deterministic weights (a linear congruential sequence in [-scale, scale]).
fn weights(n: u64, scale: f32, seed: &mut u64) -> Vec<u8> {
    (0..n)
        .flat_map(|_| {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = (*seed >> 40) as f32 / (1u64 << 24) as f32;
            (scale * (2.0 * u - 1.0)).to_le_bytes()
        })
        .collect()
}

/// A random-weight model of architecture `arch`, embedding size `e` (two
/// heads, one KV head), with every tensor the builders may ask for (biases
/// and Q/K norms are optional for most, Gemma 3's extra norms ignored by the
/// others).
pub fn model(arch: &str, e: u64) -> Vec<u8> {
    let (head_dim, ff, v) = (e / N_HEAD, e * 3 / 2, N_VOCAB as u64);
    let kv = N_HEAD_KV * head_dim;
    let mut w = GgufWriter::new();
    w.add("general.architecture", Value::String(arch.into()));
    add_vocab(&mut w);
    for (key, v) in [
        ("context_length", 4096),
        ("embedding_length", e as u32),
        ("feed_forward_length", ff as u32),
        ("block_count", N_LAYER),
        ("attention.head_count", N_HEAD as u32),
        ("attention.head_count_kv", N_HEAD_KV as u32),
        ("rope.dimension_count", head_dim as u32),
    ] {
        w.add(&format!("{arch}.{key}"), Value::U32(v));
    }
    w.add(&format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(1e-5));
    w.add(&format!("{arch}.rope.freq_base"), Value::F32(10_000.0));
    let mut seed = arch.len() as u64;
    let mut t = |name: &str, dims: &[u64], scale: f32| {
        let data = weights(dims.iter().product(), scale, &mut seed);
        w.add_tensor(name, dims, GgmlType::F32, data);
    };
    t("token_embd.weight", &[e, v], 1.0);
    t("output_norm.weight", &[e], 1.0);
    t("output.weight", &[e, v], 0.25);
    for i in 0..N_LAYER {
        let n = |s: &str| format!("blk.{i}.{s}");
        for norm in ["attn_norm", "ffn_norm", "post_attention_norm", "post_ffw_norm"] {
            t(&n(&format!("{norm}.weight")), &[e], 1.0);
        }
        t(&n("attn_q_norm.weight"), &[head_dim], 1.0);
        t(&n("attn_k_norm.weight"), &[head_dim], 1.0);
        t(&n("attn_q.weight"), &[e, e], 0.25);
        t(&n("attn_k.weight"), &[e, kv], 0.25);
        t(&n("attn_v.weight"), &[e, kv], 0.25);
        t(&n("attn_q.bias"), &[e], 0.1);
        t(&n("attn_output.weight"), &[e, e], 0.25);
        t(&n("ffn_gate.weight"), &[e, ff], 0.25);
        t(&n("ffn_up.weight"), &[e, ff], 0.25);
        t(&n("ffn_down.weight"), &[ff, e], 0.2);
    }
    w.to_bytes()
}
