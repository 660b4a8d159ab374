//! Gemma 3 270M (sliding-window and global layers, 262K SentencePiece
//! vocabulary) against llama.cpp: prompt logits, greedy continuations, and
//! InfLLM on the global layers with window buffers on the others.

mod common;

use common::argmax_of;
use infllm::attention::infllm::InfllmParams;
use infllm::engine::{AttnMode, Engine, EngineParams};
use infllm::ggml::reference::{RefContext, RefModel, RefParams};
use infllm::model::Model;
use infllm::placement::Offload;

/// Largest |logit difference| allowed against llama.cpp with the same
/// kernels (flash attention on both sides).
const MAX_LOGIT_DIFF: f32 = 1e-2;

const PROMPTS: [&str; 3] = [
    "The capital of France is",
    "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n<start_of_turn>model\n",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
];

const STORY: &str = "In a small village at the edge of the forest, there lived an old clockmaker who \
    repaired every clock in the valley. One winter morning, a child knocked on his door carrying \
    a broken pocket watch that had belonged to her grandmother. ";

fn engine(attn: AttnMode, n_ctx: usize) -> Engine {
    engine_with(attn, n_ctx, true)
}

/// `repack`: the CPU weights in ggml's repacked layouts (as llama.cpp's
/// `RefModel::load`), or in the file's (as `RefModel::load_unpacked`).
fn engine_with(attn: AttnMode, n_ctx: usize, repack: bool) -> Engine {
    let offload = Offload {
        repack,
        ..Offload::cpu()
    };
    let model = Model::load_on(&common::gemma3(), &offload, &mut |_| {}).expect("load model");
    let p = EngineParams {
        attn,
        n_threads: common::THREADS as usize,
        n_ctx,
        n_ubatch: 512,
        block_cache: None,
        standard_ops: false,
    };
    Engine::new(model, p).expect("engine")
}

fn reference(model: &RefModel, n_ctx: u32, flash_attn: Option<bool>) -> RefContext<'_> {
    let p = RefParams {
        n_ctx,
        n_batch: 512,
        n_ubatch: 512,
        n_threads: common::THREADS,
        flash_attn,
        cache_types: None,
    };
    RefContext::new(model, p).expect("llama.cpp context")
}

/// Positions whose top-1 differs, and the max |difference|.
fn compare_top1(got: &[f32], want: &[f32], n_vocab: usize) -> (Vec<usize>, f32) {
    assert_eq!(got.len(), want.len());
    let mut differ = Vec::new();
    let mut max_diff = 0f32;
    for (pos, (g, w)) in got.chunks(n_vocab).zip(want.chunks(n_vocab)).enumerate() {
        if argmax_of(g) != argmax_of(w) {
            differ.push(pos);
        }
        max_diff = g.iter().zip(w).fold(max_diff, |m, (a, b)| m.max((a - b).abs()));
    }
    (differ, max_diff)
}

/// Same top-1 at every position; returns the max |difference|.
fn compare(got: &[f32], want: &[f32], n_vocab: usize) -> f32 {
    assert_eq!(got.len(), want.len());
    let mut max_diff = 0f32;
    for (pos, (g, w)) in got.chunks(n_vocab).zip(want.chunks(n_vocab)).enumerate() {
        assert_eq!(argmax_of(g), argmax_of(w), "top-1 differs at position {pos}");
        for (a, b) in g.iter().zip(w) {
            max_diff = max_diff.max((a - b).abs());
        }
    }
    max_diff
}

#[test]
fn prompt_logits_match_llama_cpp() {
    let _one_at_a_time = common::exclusive();
    infllm::ggml::set_quiet_logs(true);
    let rm = RefModel::load(&common::gemma3()).unwrap();
    let tokens = rm.tokenize(&STORY.repeat(2), true, true);
    assert!(tokens.len() >= 64, "prompt has {} tokens", tokens.len());
    let want = reference(&rm, 1024, None).decode(&tokens, 512, true).unwrap();
    let got = engine(AttnMode::full(true), 1024)
        .eval(&tokens, true, &mut |_, _| {})
        .unwrap();
    let diff = compare(&got, &want, rm.n_vocab());
    eprintln!("gemma3: {} positions, max |logit difference| {diff:e}", tokens.len());
    assert!(
        diff < MAX_LOGIT_DIFF,
        "max |logit difference| {diff} >= {MAX_LOGIT_DIFF}"
    );
}

#[test]
fn greedy_continuations_match_llama_cpp() {
    let _one_at_a_time = common::exclusive();
    infllm::ggml::set_quiet_logs(true);
    let rm = RefModel::load(&common::gemma3()).unwrap();
    let mut e = engine(AttnMode::full(true), 512);
    let mut r = reference(&rm, 512, None);
    for prompt in PROMPTS {
        let tokens = rm.tokenize(prompt, true, true);
        let (ours, theirs) = common::greedy_both(&mut e, &mut r, &tokens, 128);
        assert_eq!(ours, theirs, "greedy continuation of {prompt:?} differs");
    }
}

#[test]
fn infllm_matches_llama_cpp_past_the_sliding_window() {
    // 1,400 tokens: past the 512-token sliding window (the window layers
    // run on their own window buffers) but inside n_local, where InfLLM's
    // global layers are plain causal attention. InfLLM computes Q·K (our
    // kernel over transposed keys), softmax and P·V as separate ops, like
    // llama.cpp without flash attention, but sums in another order; this
    // model amplifies rounding, so the bound is llama.cpp's own difference
    // between its fused and unfused kernels on the same prompt.
    let _one_at_a_time = common::exclusive();
    infllm::ggml::set_quiet_logs(true);
    let rm = RefModel::load_unpacked(&common::gemma3()).unwrap();
    let tokens = rm.tokenize(&STORY.repeat(30), true, true);
    assert!(tokens.len() > 1100 && tokens.len() < 2048, "{} tokens", tokens.len());
    let n_vocab = rm.n_vocab();
    let want = reference(&rm, 2048, Some(false)).decode(&tokens, 512, true).unwrap();
    let fused = reference(&rm, 2048, Some(true)).decode(&tokens, 512, true).unwrap();
    let (fused_mismatches, bound) = compare_top1(&fused, &want, n_vocab);
    // Weights in the file's layout on both sides: the kernels differ only
    // in attention.
    let got = engine_with(AttnMode::Infllm(InfllmParams::defaults_for(32768)), 0, false)
        .eval(&tokens, true, &mut |_, _| {})
        .unwrap();
    let (mismatches, diff) = compare_top1(&got, &want, n_vocab);
    eprintln!(
        "gemma3 infllm: {} positions, max |logit difference| {diff:e}, top-1 differs at {mismatches:?}; \
         llama.cpp fused vs unfused: {bound:e}, top-1 differs at {fused_mismatches:?}",
        tokens.len()
    );
    assert!(diff <= bound, "max |logit difference| {diff} > {bound}");
    // Near ties flip under rounding: no more flips than llama.cpp's own kernels show.
    assert!(
        mismatches.len() <= fused_mismatches.len().max(1),
        "top-1 differs at {mismatches:?}"
    );
}
