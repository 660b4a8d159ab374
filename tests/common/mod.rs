//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

fn model(file: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(file);
    // Tests that need a model fail loudly without it: they are never skipped.
    assert!(
        path.is_file(),
        "model file {} is missing: run `models/fetch` (or `make test`)",
        path.display()
    );
    path
}

/// SmolLM2-135M-Instruct, Q4_1 (architecture `llama`, byte-level BPE tokenizer).
pub fn smollm2() -> PathBuf {
    model("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Gemma 3 270M, Q4_K_M (architecture `gemma3`, SentencePiece-style tokenizer).
pub fn gemma3() -> PathBuf {
    model("gemma-3-270m-q4_k_m.gguf")
}

/// Threads for tests: the CI machine has 2 cores.
pub const THREADS: i32 = 2;

/// Serializes the CPU-heavy tests of one test binary: run side by side,
/// their 2-thread ggml pools would spin against each other on 2 cores.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Index of the largest logit, with llama.cpp's tie rule.
pub fn argmax_of(logits: &[f32]) -> i32 {
    let c: Vec<(i32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as i32, l)).collect();
    infllm::sampling::argmax(&c)
}

/// Greedy continuations of `tokens` by infllm and by llama.cpp, side by
/// side, until `n` tokens or the first difference (both lists end there).
pub fn greedy_both(
    e: &mut infllm::engine::Engine,
    r: &mut infllm::ggml::reference::RefContext<'_>,
    tokens: &[i32],
    n: usize,
) -> (Vec<i32>, Vec<i32>) {
    e.clear();
    r.clear();
    let mut lg = e.eval(tokens, false, &mut |_, _| {}).unwrap();
    let mut lr = r.decode(tokens, 512, false).unwrap();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let (a, b) = (argmax_of(&lg), argmax_of(&lr));
        ours.push(a);
        theirs.push(b);
        if a != b {
            break;
        }
        lg = e.eval(&[a], false, &mut |_, _| {}).unwrap();
        lr = r.decode(&[b], 512, false).unwrap();
    }
    (ours, theirs)
}

/// A tiny random-weight GGUF model being written: SmolLM2's tokenizer, f32
/// tensors of uniform random values (tests/architectures.rs, tests/vulkan.rs).
pub struct TinyModel {
    pub w: infllm::gguf::GgufWriter,
    rng: rand::rngs::StdRng,
    /// SmolLM2's vocabulary size.
    pub n_vocab: u64,
}

impl TinyModel {
    /// A writer with the architecture `arch` and SmolLM2's tokenizer metadata.
    pub fn new(arch: &str, seed: u64) -> Self {
        use infllm::gguf::{GgufFile, GgufWriter, Value};
        use rand::SeedableRng;
        let vocab = GgufFile::open(smollm2()).unwrap();
        let n_vocab = vocab.get_array("tokenizer.ggml.tokens").unwrap().len() as u64;
        let mut w = GgufWriter::new();
        w.add("general.architecture", Value::String(arch.into()));
        // Not the architecture's name: llama.cpp tunes token attributes by model name (phi3).
        w.add("general.name", Value::String("tiny random test model".into()));
        for (key, value) in &vocab.metadata {
            if key.starts_with("tokenizer.") && key != "tokenizer.chat_template" {
                w.add(key, value.clone());
            }
        }
        Self {
            w,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            n_vocab,
        }
    }

    /// A tensor of `offset + scale * U(-1, 1)` values.
    pub fn tensor(&mut self, name: &str, dims: &[u64], scale: f32, offset: f32) {
        use rand::Rng;
        let n: u64 = dims.iter().product();
        let data: Vec<u8> = (0..n)
            .flat_map(|_| (offset + scale * self.rng.gen_range(-1.0f32..1.0)).to_le_bytes())
            .collect();
        self.w.add_tensor(name, dims, infllm::ggml::GgmlType::F32, data);
    }
}

/// Where `needle` first occurs in a file's bytes (tests that patch files).
pub fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not in the file", String::from_utf8_lossy(needle)))
}

/// Offset just past the GGUF length-prefixed string `s` (where what follows it starts).
pub fn after_str(bytes: &[u8], s: &str) -> usize {
    find(bytes, &[&(s.len() as u64).to_le_bytes()[..], s.as_bytes()].concat()) + 8 + s.len()
}
