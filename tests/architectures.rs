//! Every registered architecture besides the real SmolLM2 (`llama`): a tiny
//! random-weight GGUF file written by the test (SmolLM2's vocabulary,
//! random weights), loaded by llama.cpp (the oracle) and by infllm, logits
//! compared over a 64-token input at every position.

mod common;

use std::path::{Path, PathBuf};

use infllm::engine::{AttnMode, Engine, EngineParams};
use infllm::ggml::reference::{RefContext, RefModel, RefParams};
use infllm::gguf::{GgufWriter, Value};
use infllm::model::Model;

const N_EMBD: u64 = 64;
const N_HEAD: u64 = 4;
const N_HEAD_KV: u64 = 2;
const N_FF: u64 = 96;
const N_LAYER: u32 = 2;
const N_TOKENS: usize = 64;

/// How an architecture's tensors are laid out.
#[derive(Clone, Copy)]
struct Recipe {
    arch: &'static str,
    head_dim: u64,
    fused_qkv: bool,
    qkv_bias: bool,
    qk_norm: bool,
    fused_ffn: bool,
    tied_output: bool,
    /// Further `{arch}.*` metadata: the architecture's own scalars.
    meta: &'static [(&'static str, f32)],
}

const PLAIN: Recipe = Recipe {
    arch: "",
    head_dim: N_EMBD / N_HEAD,
    fused_qkv: false,
    qkv_bias: false,
    qk_norm: false,
    fused_ffn: false,
    tied_output: false,
    meta: &[],
};

/// Writes a random-weight model of `r`'s layout with SmolLM2's tokenizer.
fn write_model(r: Recipe, path: &Path) {
    let a = r.arch;
    let mut m = common::TinyModel::new(a, a.bytes().map(u64::from).sum());
    let (w, n_vocab) = (&mut m.w, m.n_vocab);
    w.add(&format!("{a}.context_length"), Value::U32(4096));
    w.add(&format!("{a}.embedding_length"), Value::U32(N_EMBD as u32));
    w.add(&format!("{a}.feed_forward_length"), Value::U32(N_FF as u32));
    w.add(&format!("{a}.block_count"), Value::U32(N_LAYER));
    w.add(&format!("{a}.attention.head_count"), Value::U32(N_HEAD as u32));
    w.add(&format!("{a}.attention.head_count_kv"), Value::U32(N_HEAD_KV as u32));
    w.add(&format!("{a}.attention.key_length"), Value::U32(r.head_dim as u32));
    w.add(&format!("{a}.attention.value_length"), Value::U32(r.head_dim as u32));
    w.add(&format!("{a}.rope.dimension_count"), Value::U32(r.head_dim as u32));
    w.add(&format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(1e-6));
    w.add(&format!("{a}.rope.freq_base"), Value::F32(10_000.0));
    for (key, value) in r.meta {
        w.add(&format!("{a}.{key}"), Value::F32(*value));
    }
    let (e, q, kv, ff, hd) = (N_EMBD, N_HEAD * r.head_dim, N_HEAD_KV * r.head_dim, N_FF, r.head_dim);
    let proj = |fan_in: u64| 2.0 / (fan_in as f32).sqrt();
    m.tensor("token_embd.weight", &[e, n_vocab], 1.0, 0.0);
    m.tensor("output_norm.weight", &[e], 0.2, 1.0);
    if !r.tied_output {
        m.tensor("output.weight", &[e, n_vocab], proj(e), 0.0);
    }
    for i in 0..N_LAYER {
        let n = |s: &str| format!("blk.{i}.{s}");
        m.tensor(&n("attn_norm.weight"), &[e], 0.2, 1.0);
        if r.fused_qkv {
            m.tensor(&n("attn_qkv.weight"), &[e, q + 2 * kv], proj(e), 0.0);
        } else {
            m.tensor(&n("attn_q.weight"), &[e, q], proj(e), 0.0);
            m.tensor(&n("attn_k.weight"), &[e, kv], proj(e), 0.0);
            m.tensor(&n("attn_v.weight"), &[e, kv], proj(e), 0.0);
        }
        if r.qkv_bias {
            m.tensor(&n("attn_q.bias"), &[q], 0.5, 0.0);
            m.tensor(&n("attn_k.bias"), &[kv], 0.5, 0.0);
            m.tensor(&n("attn_v.bias"), &[kv], 0.5, 0.0);
        }
        if r.qk_norm {
            m.tensor(&n("attn_q_norm.weight"), &[hd], 0.2, 1.0);
            m.tensor(&n("attn_k_norm.weight"), &[hd], 0.2, 1.0);
        }
        m.tensor(&n("attn_output.weight"), &[q, e], proj(q), 0.0);
        m.tensor(&n("ffn_norm.weight"), &[e], 0.2, 1.0);
        if r.fused_ffn {
            m.tensor(&n("ffn_up.weight"), &[e, 2 * ff], proj(e), 0.0);
        } else {
            m.tensor(&n("ffn_gate.weight"), &[e, ff], proj(e), 0.0);
            m.tensor(&n("ffn_up.weight"), &[e, ff], proj(e), 0.0);
        }
        m.tensor(&n("ffn_down.weight"), &[ff, e], proj(ff), 0.0);
    }
    m.w.write(path).unwrap();
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("infllm-arch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// infllm's logits of every position against llama.cpp's; returns the max |difference|.
fn compare(r: Recipe) -> f32 {
    let path = tmp(&format!("{}.gguf", r.arch));
    write_model(r, &path);
    infllm::ggml::set_quiet_logs(true);
    let rm = RefModel::load(&path).unwrap();
    let n_vocab = rm.n_vocab();
    let text = "The quick brown fox jumps over the lazy dog. Rust and ggml run small models on long inputs, \
                one token at a time, and the numbers must agree with the reference at every position: \
                top-1 first, then each logit within a bound stated in the test, for every architecture \
                that the registry lists today and for the ones added after it.";
    let tokens: Vec<i32> = rm.tokenize(text, false, false).into_iter().take(N_TOKENS).collect();
    assert_eq!(tokens.len(), N_TOKENS, "the text has too few tokens");
    let params = RefParams {
        n_ctx: 256,
        n_batch: 256,
        n_ubatch: 256,
        n_threads: common::THREADS,
        flash_attn: Some(false),
        cache_types: None,
    };
    let expected = RefContext::new(&rm, params)
        .unwrap()
        .decode(&tokens, 256, true)
        .unwrap();

    let model = Model::load(&path).unwrap();
    assert_eq!(model.hp.arch, r.arch);
    let params = EngineParams {
        attn: AttnMode::full(false),
        n_threads: common::THREADS as usize,
        n_ctx: 256,
        n_ubatch: 256,
        block_cache: None,
        standard_ops: false,
    };
    let got = Engine::new(model, params)
        .unwrap()
        .eval(&tokens, true, &mut |_, _| {})
        .unwrap();
    assert_eq!(got.len(), expected.len());

    let mut max_diff = 0f32;
    for (i, (a, b)) in got.chunks(n_vocab).zip(expected.chunks(n_vocab)).enumerate() {
        let argmax = |x: &[f32]| x.iter().enumerate().max_by(|p, q| p.1.total_cmp(q.1)).unwrap().0;
        assert_eq!(argmax(a), argmax(b), "{}: top-1 differs at position {i}", r.arch);
        for (x, y) in a.iter().zip(b) {
            max_diff = max_diff.max((x - y).abs());
        }
    }
    eprintln!("{}: {N_TOKENS} positions, max |logit difference| {max_diff:e}", r.arch);
    assert!(max_diff < 1e-3, "{}: logits differ by {max_diff}", r.arch);
    std::fs::remove_file(&path).ok();
    max_diff
}

#[test]
fn qwen2_equals_llama_cpp() {
    let _g = common::exclusive();
    compare(Recipe {
        arch: "qwen2",
        qkv_bias: true,
        ..PLAIN
    });
}

#[test]
fn qwen3_equals_llama_cpp() {
    let _g = common::exclusive();
    // Head dim 32 with 4 heads: the Q width (128) differs from n_embd (64), as in real Qwen3.
    compare(Recipe {
        arch: "qwen3",
        head_dim: 32,
        qk_norm: true,
        tied_output: true,
        ..PLAIN
    });
}

#[test]
fn phi3_equals_llama_cpp() {
    let _g = common::exclusive();
    compare(Recipe {
        arch: "phi3",
        fused_qkv: true,
        fused_ffn: true,
        ..PLAIN
    });
}

#[test]
fn mistral3_equals_llama_cpp() {
    let _g = common::exclusive();
    compare(Recipe {
        arch: "mistral3",
        ..PLAIN
    });
}

#[test]
fn granite_equals_llama_cpp() {
    let _g = common::exclusive();
    // Granite 3's four scalars, none of them 1 (attention.scale replaces 1/sqrt(16) = 0.25).
    compare(Recipe {
        arch: "granite",
        meta: &[
            ("embedding_scale", 12.0),
            ("residual_scale", 0.22),
            ("attention.scale", 0.2),
            ("logit_scale", 8.0),
        ],
        ..PLAIN
    });
}

#[test]
fn unknown_architecture_lists_the_supported_ones() {
    let path = tmp("unknown.gguf");
    let mut w = GgufWriter::new();
    w.add("general.architecture", Value::String("mamba9".into()));
    w.write(&path).unwrap();
    let err = Model::load(&path).err().expect("an unknown architecture must not load");
    let msg = format!("{err:#}");
    for name in ["mamba9", "llama", "qwen2", "qwen3", "phi3", "mistral3", "granite"] {
        assert!(msg.contains(name), "{msg:?} does not name {name}");
    }
}
