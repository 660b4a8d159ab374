//! The Vulkan variant (`make vulkan` builds target/vulkan/release/infllm) on
//! the machine's Vulkan device, Mesa's lavapipe (a CPU implementation of
//! Vulkan) where there is no GPU: it lists the device, and its greedy text
//! with every layer on the device equals the CPU build's, with full
//! attention and with InfLLM (blocks formed and retrieved). The model is a
//! tiny random-weight llama (SmolLM2's vocabulary) written here: lavapipe
//! runs SmolLM2 itself at about a token per second.
//!
//! Where the release's lavapipe is too old for InfLLM's graphs (Debian 12's
//! Mesa 22.3.6 corrupts its heap on them, docs/devices.md),
//! scripts/install-vulkan unpacks a newer one into target/vulkan-lavapipe/
//! and the runs here name it in `VK_DRIVER_FILES`.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use infllm::gguf::Value;

const CPU_BIN: &str = env!("CARGO_BIN_EXE_infllm");
/// lavapipe is listed by ggml only when named (it skips CPU Vulkan devices otherwise).
const VISIBLE: (&str, &str) = ("GGML_VK_VISIBLE_DEVICES", "0");
/// The driver manifest of the lavapipe that scripts/install-vulkan unpacked,
/// when the release's own is too old.
const LAVAPIPE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/vulkan-lavapipe/lvp_icd.json");
/// A run longer than this is a hang (a first run compiles Mesa's pipelines: 2-3 minutes on 2 cores).
const TIMEOUT: Duration = Duration::from_secs(600);

const N_EMBD: u64 = 256;
const N_HEAD: u64 = 4;
const N_HEAD_KV: u64 = 2;
const HEAD_DIM: u64 = N_EMBD / N_HEAD;
const N_FF: u64 = 512;
const N_LAYER: u32 = 2;
const N_PREDICT: usize = 16;

/// The Vulkan build; missing, the test fails (it is never skipped).
fn vulkan_bin() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/vulkan/release/infllm");
    assert!(
        path.is_file(),
        "the Vulkan build {} is missing: run `make vulkan` (`make test` does)",
        path.display()
    );
    path
}

/// Exit status, stdout and stderr of `bin args`, killed after `TIMEOUT`.
fn run(bin: &Path, args: &[&str]) -> (ExitStatus, String, String) {
    let mut command = Command::new(bin);
    if Path::new(LAVAPIPE).is_file() {
        command.env("VK_DRIVER_FILES", LAVAPIPE);
    }
    let mut child = command
        .args(args)
        .env(VISIBLE.0, VISIBLE.1)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            r.read_to_string(&mut s).unwrap();
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            child.kill().ok();
            child.wait().ok();
            panic!("{} {args:?} ran past {TIMEOUT:?}", bin.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

/// The tiny model, written once per run (over the last run's) in cargo's
/// temporary folder for tests.
fn model() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join("vulkan-tiny-llama.gguf");
        let part = dir.join(format!("vulkan-tiny-llama.gguf.{}", std::process::id()));
        write_model(&part);
        std::fs::rename(&part, &path).unwrap();
        path
    })
}

/// A random-weight llama (f32) with SmolLM2's tokenizer, as in
/// tests/architectures.rs but with head dim 64, which ggml-vulkan's flash
/// attention kernels support. The output matrix is its own: tied to the
/// embeddings, it would predict the current token again and again.
fn write_model(path: &Path) {
    let mut m = common::TinyModel::new("llama", 7);
    let (w, n_vocab) = (&mut m.w, m.n_vocab);
    for (key, value) in [
        ("context_length", 4096),
        ("embedding_length", N_EMBD as u32),
        ("feed_forward_length", N_FF as u32),
        ("block_count", N_LAYER),
        ("attention.head_count", N_HEAD as u32),
        ("attention.head_count_kv", N_HEAD_KV as u32),
        ("rope.dimension_count", HEAD_DIM as u32),
    ] {
        w.add(&format!("llama.{key}"), Value::U32(value));
    }
    w.add("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
    w.add("llama.rope.freq_base", Value::F32(10_000.0));
    let (e, kv, ff) = (N_EMBD, N_HEAD_KV * HEAD_DIM, N_FF);
    let proj = |fan_in: u64| 2.0 / (fan_in as f32).sqrt();
    m.tensor("token_embd.weight", &[e, n_vocab], 1.0, 0.0);
    m.tensor("output_norm.weight", &[e], 0.2, 1.0);
    m.tensor("output.weight", &[e, n_vocab], proj(e), 0.0);
    for i in 0..N_LAYER {
        let n = |s: &str| format!("blk.{i}.{s}");
        m.tensor(&n("attn_norm.weight"), &[e], 0.2, 1.0);
        m.tensor(&n("attn_q.weight"), &[e, e], proj(e), 0.0);
        m.tensor(&n("attn_k.weight"), &[e, kv], proj(e), 0.0);
        m.tensor(&n("attn_v.weight"), &[e, kv], proj(e), 0.0);
        m.tensor(&n("attn_output.weight"), &[e, e], proj(e), 0.0);
        m.tensor(&n("ffn_norm.weight"), &[e], 0.2, 1.0);
        m.tensor(&n("ffn_gate.weight"), &[e, ff], proj(e), 0.0);
        m.tensor(&n("ffn_up.weight"), &[e, ff], proj(e), 0.0);
        m.tensor(&n("ffn_down.weight"), &[ff, e], proj(ff), 0.0);
    }
    m.w.write(path).unwrap();
}

/// About 300 tokens of varied text.
fn prompt() -> String {
    const WORDS: [&str; 12] = [
        "harbor", "lantern", "copper", "meadow", "violin", "glacier", "orchard", "compass", "saffron", "thunder",
        "ribbon", "granite",
    ];
    (0..40)
        .map(|i| format!("{} {} near {}.", WORDS[i % 12], i * 7 + 3, WORDS[(i * 5 + 1) % 12]))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn lists_the_vulkan_device() {
    let (status, out, err) = run(&vulkan_bin(), &["--list-devices"]);
    assert!(status.success(), "--list-devices failed ({status}): {err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("  Vulkan0: "))
        .unwrap_or_else(|| panic!("no Vulkan0 device listed:\n{out}{err}"));
    let lower = line.to_lowercase();
    assert!(
        lower.contains("llvmpipe") || lower.contains("lavapipe"),
        "Vulkan0 is not Mesa's lavapipe: {line}"
    );
}

/// Greedy text of the CPU build and of the Vulkan build with every layer on
/// Vulkan0, with `attn`'s flags; returns the Vulkan run's stderr.
fn same_text_as_the_cpu(attn: &[&str]) -> String {
    let _one_at_a_time = common::exclusive();
    let vulkan = vulkan_bin();
    let prompt_file = model().with_file_name("vulkan-prompt.txt");
    std::fs::write(&prompt_file, prompt()).unwrap();
    let n = N_PREDICT.to_string();
    let common_args = [
        "-m",
        model().to_str().unwrap(),
        "-f",
        prompt_file.to_str().unwrap(),
        "-n",
        &n,
        "--temp",
        "0",
        "-t",
        "2",
        "--no-display-prompt",
    ];
    let generate = |bin: &Path, ngl: &str| {
        let args = [&common_args[..], &["-ngl", ngl], attn].concat();
        let start = Instant::now();
        let (status, out, err) = run(bin, &args);
        eprintln!(
            "{} -ngl {ngl} {attn:?}: {:.1} s",
            bin.display(),
            start.elapsed().as_secs_f64()
        );
        assert!(status.success(), "{} {args:?} failed ({status}):\n{err}", bin.display());
        // All N_PREDICT tokens: the text ended at no end-of-text token.
        let runs = format!(" {} runs", N_PREDICT - 1);
        assert!(
            err.lines().any(|l| l.contains("eval time") && l.contains(&runs)),
            "{} did not generate {N_PREDICT} tokens:\n{err}",
            bin.display()
        );
        (out, err)
    };
    let (cpu, cpu_err) = generate(Path::new(CPU_BIN), "0");
    let (gpu, gpu_err) = generate(&vulkan, "99");
    let last = N_LAYER - 1;
    let on_device = format!("infllm: offloaded layers 0-{last} and the output on Vulkan0");
    assert!(
        gpu_err.lines().any(|l| l == on_device),
        "the layers are not on the Vulkan device (no {on_device:?}):\n{gpu_err}"
    );
    assert!(!cpu_err.contains("offloaded"), "the CPU run offloaded:\n{cpu_err}");
    assert_eq!(gpu, cpu, "Vulkan's text differs from the CPU's");
    // A text worth comparing: not one token over and over.
    let words: std::collections::HashSet<&str> = cpu.split_whitespace().collect();
    assert!(words.len() >= N_PREDICT / 2, "a degenerate text: {cpu:?}");
    gpu_err
}

#[test]
fn full_attention_on_vulkan_generates_the_cpus_text() {
    same_text_as_the_cpu(&["--attn", "full"]);
}

/// InfLLM with a window of 64 tokens and blocks of 32, two retrieved: the
/// ~300-token prompt forms blocks, and each step retrieves among them.
#[test]
fn infllm_on_vulkan_generates_the_cpus_text() {
    let err = infllm_same_text_as_the_cpu(&[]);
    assert!(
        !err.contains("on demand"),
        "the blocks outgrew the device cache:\n{err}"
    );
}

/// The same with room for 2 blocks per layer on the device (0.05 MiB, 9,216
/// bytes per block and layer): past them, the blocks each step retrieves
/// are copied in while its graph runs.
#[test]
fn infllm_past_the_vulkan_block_cache_generates_the_cpus_text() {
    let err = infllm_same_text_as_the_cpu(&["--block-cache", "0.05"]);
    assert!(
        err.contains("blocks copied into device caches on demand"),
        "no block was copied into the device cache:\n{err}"
    );
}

/// `same_text_as_the_cpu` for the small InfLLM settings above plus `more`;
/// checks that the prompt forms more blocks than are retrieved.
fn infllm_same_text_as_the_cpu(more: &[&str]) -> String {
    let [n_init, n_local, block, topk]: [usize; 4] = [4, 64, 32, 2];
    let flags = [n_init, n_local, block, topk, block].map(|n| n.to_string());
    let names = ["--n-init", "--n-local", "--block-size", "--topk", "--chunk"];
    let attn: Vec<&str> = names.iter().zip(&flags).flat_map(|(f, v)| [*f, v.as_str()]).collect();
    let err = same_text_as_the_cpu(&[&["--attn", "infllm"], &attn[..], more].concat());
    let prompt: usize = err
        .split("prompt = ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no prompt length in the run's log:\n{err}"));
    let blocks = (prompt - n_init - n_local) / block;
    assert!(
        blocks > topk,
        "{prompt} tokens form {blocks} blocks: retrieval does not choose"
    );
    err
}
