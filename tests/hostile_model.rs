//! Hostile model files (issue 23): a tensor type, a hyper-parameter, a name
//! or a path that the engine cannot use is refused with one short `error: `
//! line and exit code 1, never a ggml abort, a panic, a hang, or an
//! allocation sized by an unchecked value.
//!
//! Most files are tiny models written here (a 262-token SentencePiece
//! vocabulary, zero weights); the reproducers patch SmolLM2's header and pad
//! the copy, sparse, to the real size: the checks run before any weight is
//! read.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use infllm::ggml::GgmlType;
use infllm::gguf::{GgufFile, GgufWriter, Value, ValueType};

const N_EMBD: u64 = 64;
const N_HEAD: u64 = 4;
const N_HEAD_KV: u64 = 2;
const HEAD_DIM: u64 = 32;
const N_FF: u64 = 256;
const N_LAYER: u32 = 2;
/// Longest accepted error line.
const MAX_LINE: usize = 300;

// ---------------------------------------------------------------------------
// Tiny models

/// A tiny model being written: metadata and tensors (name, dims, type) that
/// tests edit before `bytes`; tensor data is zero, norms one.
struct Tiny {
    arch: &'static str,
    meta: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType)>,
}

/// A SentencePiece vocabulary: the three specials, the 256 byte tokens,
/// and three pieces.
fn tiny_vocab() -> Vec<(String, Value)> {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    let mut types = vec![2, 3, 3];
    tokens.extend((0..=255).map(|b| format!("<0x{b:02X}>")));
    types.extend([6; 256]);
    tokens.extend(["\u{2581}", "h", "i"].map(String::from));
    types.extend([1; 3]);
    let n = tokens.len();
    let strings = tokens.into_iter().map(Value::String).collect();
    vec![
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(ValueType::String, strings)),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(ValueType::F32, vec![Value::F32(0.0); n]),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(ValueType::I32, types.into_iter().map(Value::I32).collect()),
        ),
    ]
}

impl Tiny {
    /// Llama: attention and feed-forward norms, tied output.
    fn llama() -> Self {
        Self::new("llama", &[], &["attn_norm", "ffn_norm"])
    }

    /// Gemma 3: Q/K norms, norms after attention and feed-forward, sliding
    /// windows.
    fn gemma3() -> Self {
        let mut t = Self::new(
            "gemma3",
            &["attn_q_norm", "attn_k_norm"],
            &["attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"],
        );
        t.set_arch("attention.sliding_window", Value::U32(64));
        t
    }

    fn new(arch: &'static str, head_norms: &[&str], norms: &[&str]) -> Self {
        let n_vocab = match &tiny_vocab()[1].1 {
            Value::Array(_, items) => items.len() as u64,
            _ => unreachable!(),
        };
        let mut t = Self {
            arch,
            meta: vec![
                ("general.architecture".into(), Value::String(arch.into())),
                ("general.name".into(), Value::String("hostile test model".into())),
            ],
            tensors: Vec::new(),
        };
        t.meta.extend(tiny_vocab());
        for (k, v) in [
            ("context_length", 256),
            ("embedding_length", N_EMBD as u32),
            ("feed_forward_length", N_FF as u32),
            ("block_count", N_LAYER),
            ("attention.head_count", N_HEAD as u32),
            ("attention.head_count_kv", N_HEAD_KV as u32),
            ("attention.key_length", HEAD_DIM as u32),
            ("attention.value_length", HEAD_DIM as u32),
        ] {
            t.set_arch(k, Value::U32(v));
        }
        t.set_arch("attention.layer_norm_rms_epsilon", Value::F32(1e-6));
        let (e, q, kv) = (N_EMBD, N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM);
        t.tensor("token_embd.weight", &[e, n_vocab], GgmlType::F16);
        t.tensor("output_norm.weight", &[e], GgmlType::F32);
        for i in 0..N_LAYER {
            let blk = |s: &str| format!("blk.{i}.{s}");
            for n in norms {
                t.tensor(&blk(&format!("{n}.weight")), &[e], GgmlType::F32);
            }
            for n in head_norms {
                t.tensor(&blk(&format!("{n}.weight")), &[HEAD_DIM], GgmlType::F32);
            }
            for (n, dims) in [
                ("attn_q", [e, q]),
                ("attn_k", [e, kv]),
                ("attn_v", [e, kv]),
                ("attn_output", [q, e]),
                ("ffn_gate", [e, N_FF]),
                ("ffn_up", [e, N_FF]),
                ("ffn_down", [N_FF, e]),
            ] {
                t.tensor(&blk(&format!("{n}.weight")), &dims, GgmlType::Q8_0);
            }
        }
        t
    }

    fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType) {
        self.tensors.push((name.into(), dims.to_vec(), ty));
    }

    /// Sets (or adds) metadata key `key`.
    fn set(&mut self, key: &str, v: Value) -> &mut Self {
        match self.meta.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = v,
            None => self.meta.push((key.into(), v)),
        }
        self
    }

    /// Sets `{arch}.{key}`.
    fn set_arch(&mut self, key: &str, v: Value) -> &mut Self {
        let key = format!("{}.{key}", self.arch);
        self.set(&key, v)
    }

    /// Gives tensor `name` type `ty`, its data sized to match.
    fn retype(&mut self, name: &str, ty: GgmlType) -> &mut Self {
        let t = self.tensors.iter_mut().find(|t| t.0 == name);
        t.unwrap_or_else(|| panic!("no tensor {name}")).2 = ty;
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut w = GgufWriter::new();
        for (k, v) in &self.meta {
            w.add(k, v.clone());
        }
        for (name, dims, ty) in &self.tensors {
            let rows: u64 = dims[1..].iter().product();
            let len = (ty.row_size(dims[0]) * rows) as usize;
            let data = if *ty == GgmlType::F32 && name.contains("norm") {
                1f32.to_le_bytes().repeat(len / 4)
            } else {
                vec![0; len]
            };
            w.add_tensor(name, dims, *ty, data);
        }
        w.to_bytes()
    }

    fn write(&self, name: &str) -> PathBuf {
        write(name, &self.bytes())
    }
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("infllm-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let path = tmp(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

// ---------------------------------------------------------------------------
// Byte surgery

/// Sets the type field of tensor `name` (with `n_dims` dimensions) in the
/// table: the data size the reader derives changes with it.
fn patch_tensor_type(bytes: &mut [u8], name: &str, n_dims: usize, ty: GgmlType) {
    let at = common::after_str(bytes, name) + 4 + 8 * n_dims;
    bytes[at..at + 4].copy_from_slice(&ty.id().to_le_bytes());
}

/// Sets the value of u32 metadata key `key`.
fn patch_u32(bytes: &mut [u8], key: &str, v: u32) {
    let at = common::after_str(bytes, key);
    assert_eq!(
        bytes[at..at + 4],
        (ValueType::U32 as u32).to_le_bytes(),
        "{key} is not a u32"
    );
    bytes[at + 4..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// SmolLM2's header (metadata and tensor table), to patch.
fn smollm2_header() -> Vec<u8> {
    let path = common::smollm2();
    let end = GgufFile::open(&path).unwrap().data_offset as usize;
    let mut header = vec![0; end];
    std::io::Read::read_exact(&mut std::fs::File::open(&path).unwrap(), &mut header).unwrap();
    header
}

/// A copy of SmolLM2 with `header` for its own, the weights left as a hole
/// of the real size (sparse: nothing is written, nothing read).
fn smollm2_with(name: &str, header: &[u8]) -> PathBuf {
    let path = tmp(name);
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(header).unwrap();
    f.set_len(std::fs::metadata(common::smollm2()).unwrap().len()).unwrap();
    path
}

// ---------------------------------------------------------------------------
// Running the binary

fn infllm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infllm"))
        .args(args)
        .env_remove("INFLLM_MODEL")
        .output()
        .expect("run infllm")
}

fn run_model(model: &Path) -> Output {
    infllm(&["-m", model.to_str().unwrap(), "-p", "hi", "-n", "2", "-t", "2"])
}

/// Exit code 1 and one short `error: ` line on stderr naming every needle.
#[track_caller]
fn assert_refused(out: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {err:.2000}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:.2000}");
    assert!(err.starts_with("error: "), "{err:.2000}");
    assert!(err.len() <= MAX_LINE, "{} bytes: {err:.2000}", err.len());
    for n in needles {
        assert!(err.contains(n), "{err:?} does not mention {n:?}");
    }
    err
}

/// `bytes` fails `infllm::model::check` with a message naming every needle.
#[track_caller]
fn assert_check_fails(bytes: Vec<u8>, needles: &[&str]) {
    let msg = match GgufFile::from_bytes(bytes) {
        Ok(f) => format!("{:#}", infllm::model::check(&f).expect_err("check passed")),
        Err(e) => e.to_string(),
    };
    for n in needles {
        assert!(msg.contains(n), "{msg:?} does not mention {n:?}");
    }
}

// ---------------------------------------------------------------------------
// The fixtures themselves are fine

#[test]
fn tiny_models_and_real_files_pass_the_checks() {
    for tiny in [Tiny::llama(), Tiny::gemma3()] {
        let f = GgufFile::from_bytes(tiny.bytes()).unwrap();
        infllm::model::check(&f).unwrap_or_else(|e| panic!("{}: {e:#}", tiny.arch));
    }
    for path in [common::smollm2(), common::gemma3()] {
        let f = GgufFile::open(&path).unwrap();
        infllm::model::check(&f).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    }
    let _one_at_a_time = common::exclusive();
    for tiny in [Tiny::llama(), Tiny::gemma3()] {
        let out = run_model(&tiny.write(&format!("{}-ok.gguf", tiny.arch)));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{}: {err}", tiny.arch);
    }
}

/// `check` costs little on a small file (it is what a fuzzer calls).
#[test]
fn check_is_cheap() {
    let f = GgufFile::from_bytes(Tiny::gemma3().bytes()).unwrap();
    let n = 200;
    let start = Instant::now();
    for _ in 0..n {
        infllm::model::check(&f).unwrap();
    }
    let each = start.elapsed() / n;
    println!("check of a tiny gemma3 file: {each:?}");
    assert!(each < Duration::from_millis(20), "{each:?} per check");
}

// ---------------------------------------------------------------------------
// Items 1 (tensor types), 2 and 3 (hyper-parameters)

/// Types the CPU's element-wise ops reject beside f32 activations.
const NOT_F32: [GgmlType; 6] = [
    GgmlType::Q4_0,
    GgmlType::Q5_0,
    GgmlType::Q8_1,
    GgmlType::BF16,
    GgmlType::MXFP4,
    GgmlType::F16,
];

#[test]
fn norm_weights_that_are_not_f32_are_refused() {
    let norms = [
        (Tiny::llama as fn() -> Tiny, "blk.1.attn_norm.weight"),
        (Tiny::llama, "blk.0.ffn_norm.weight"),
        (Tiny::llama, "output_norm.weight"),
        (Tiny::gemma3, "blk.0.attn_q_norm.weight"),
        (Tiny::gemma3, "blk.1.post_attention_norm.weight"),
        (Tiny::gemma3, "blk.0.post_ffw_norm.weight"),
    ];
    for (i, (tiny, name)) in norms.into_iter().enumerate() {
        for (j, ty) in NOT_F32.into_iter().enumerate() {
            // Data sized for the type, and the type alone patched (the
            // data then looks smaller): each checked in-process, one of
            // each run by the binary.
            let mut t = tiny();
            let sized = t.retype(name, ty).bytes();
            let mut patched = tiny().bytes();
            patch_tensor_type(&mut patched, name, 1, ty);
            let expected = format!("has type {ty}, expected f32");
            let needles = [name, expected.as_str()];
            assert_check_fails(sized.clone(), &needles);
            assert_check_fails(patched.clone(), &needles);
            if j == i % NOT_F32.len() {
                assert_refused(&run_model(&write(&format!("norm{i}.gguf"), &sized)), &needles);
                assert_refused(&run_model(&write(&format!("norm{i}p.gguf"), &patched)), &needles);
            }
        }
    }
}

/// The reproducer: SmolLM2 with `blk.14.ffn_norm.weight` as q4_0.
#[test]
fn smollm2_with_a_q4_0_norm_is_refused() {
    let mut header = smollm2_header();
    patch_tensor_type(&mut header, "blk.14.ffn_norm.weight", 1, GgmlType::Q4_0);
    let path = smollm2_with("smollm2-q4-norm.gguf", &header);
    assert_refused(
        &run_model(&path),
        &["tensor \"blk.14.ffn_norm.weight\" has type q4_0, expected f32"],
    );
}

#[test]
fn other_weights_of_unusable_types_are_refused() {
    let cases = [
        // No CPU matmul kernel.
        ("blk.0.attn_q.weight", GgmlType::Q8_1),
        ("blk.1.ffn_down.weight", GgmlType::Q8_K),
        ("blk.0.attn_k.weight", GgmlType::I32),
        ("blk.0.attn_output.weight", GgmlType::F64),
        ("token_embd.weight", GgmlType::I16),
    ];
    for (i, (name, ty)) in cases.into_iter().enumerate() {
        let mut t = Tiny::llama();
        let expected = format!("has type {ty}, expected a type ggml's CPU matmul supports");
        let needles = [name, expected.as_str()];
        let bytes = t.retype(name, ty).bytes();
        assert_check_fails(bytes.clone(), &needles);
        assert_refused(&run_model(&write(&format!("matrix{i}.gguf"), &bytes)), &needles);
    }
    // Biases, rope factors and an untied head are checked as well.
    let mut t = Tiny::llama();
    t.tensor("blk.0.attn_q.bias", &[N_HEAD * HEAD_DIM], GgmlType::Q8_0);
    assert_check_fails(t.bytes(), &["\"blk.0.attn_q.bias\" has type q8_0, expected f32"]);
    let mut t = Tiny::llama();
    t.tensor("rope_freqs.weight", &[HEAD_DIM / 2], GgmlType::F16);
    assert_check_fails(t.bytes(), &["\"rope_freqs.weight\" has type f16, expected f32"]);
    let mut t = Tiny::llama();
    t.tensor("output.weight", &[N_EMBD, 262], GgmlType::I8);
    let bytes = t.bytes();
    assert_check_fails(bytes.clone(), &["\"output.weight\" has type i8"]);
    assert_refused(
        &run_model(&write("output-i8.gguf", &bytes)),
        &["\"output.weight\" has type i8"],
    );
}

#[test]
fn bad_hyper_parameters_are_refused() {
    use Value::{F32, U32};
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "attention.layer_norm_rms_epsilon",
            F32(f32::NAN),
            "is NaN: must be finite and at least 0",
        ),
        (
            "attention.layer_norm_rms_epsilon",
            F32(-1e-6),
            "must be finite and at least 0",
        ),
        (
            "attention.layer_norm_rms_epsilon",
            F32(f32::INFINITY),
            "is inf: must be finite",
        ),
        (
            "rope.freq_base",
            F32(0.0),
            "llama.rope.freq_base is 0: must be finite and above 0",
        ),
        ("rope.freq_base", F32(f32::NEG_INFINITY), "must be finite and above 0"),
        ("rope.freq_base", F32(f32::NAN), "must be finite and above 0"),
        ("rope.scale_linear", F32(-2.0), "llama.rope.scale_linear is -2"),
        (
            "block_count",
            U32(u32::MAX),
            "llama.block_count is 4294967295: out of range (1 to 4096)",
        ),
        ("block_count", U32(0), "llama.block_count is 0: out of range"),
        (
            "embedding_length",
            U32(1 << 30),
            "llama.embedding_length is 1073741824: out of range",
        ),
        ("feed_forward_length", U32(u32::MAX), "llama.feed_forward_length"),
        ("attention.head_count", U32(0), "llama.attention.head_count is 0"),
        (
            "attention.head_count",
            U32(1 << 20),
            "llama.attention.head_count is 1048576",
        ),
        (
            "attention.head_count_kv",
            U32(3),
            "4 attention heads are not a multiple of 3 KV heads",
        ),
        ("attention.key_length", U32(u32::MAX), "llama.attention.key_length"),
        (
            "attention.value_length",
            U32(16),
            "value heads of 16 differ from key heads of 32",
        ),
        ("rope.dimension_count", U32(7), "rotary dimensions must be even"),
        ("rope.dimension_count", U32(64), "at most the head size 32"),
        (
            "context_length",
            U32(u32::MAX),
            "llama.context_length is 4294967295: out of range",
        ),
        (
            "vocab_size",
            U32(1000),
            "llama.vocab_size is 1000, but tokenizer.ggml.tokens has 262",
        ),
        ("block_count", Value::I32(-1), "llama.block_count"),
        (
            "block_count",
            Value::String("2".into()),
            "llama.block_count\" has type String",
        ),
    ];
    for (i, (key, value, needle)) in cases.into_iter().enumerate() {
        let mut t = Tiny::llama();
        let bytes = t.set_arch(key, value).bytes();
        assert_check_fails(bytes.clone(), &[needle]);
        assert_refused(&run_model(&write(&format!("hparam{i}.gguf"), &bytes)), &[needle]);
    }
    // Gemma 3's own keys.
    let cases: Vec<(&str, Value, &str)> = vec![
        ("rope.freq_base_swa", F32(-1.0), "gemma3.rope.freq_base_swa is -1"),
        (
            "final_logit_softcapping",
            F32(f32::NAN),
            "gemma3.final_logit_softcapping is NaN",
        ),
        (
            "attention.sliding_window",
            U32(1 << 20),
            "above the trained context of 256 tokens",
        ),
        (
            "attention.sliding_window_pattern",
            Value::Array(ValueType::U8, vec![Value::U8(1), Value::U8(0)]),
            "gemma3.attention.sliding_window_pattern[0] is not a bool",
        ),
    ];
    for (key, value, needle) in cases {
        let mut t = Tiny::gemma3();
        assert_check_fails(t.set_arch(key, value).bytes(), &[needle]);
    }
}

/// The reproducers for item 3: counts that sized an allocation
/// before they were checked (an abort, or seconds and gigabytes).
#[test]
fn huge_block_counts_fail_at_once() {
    let mut header = smollm2_header();
    patch_u32(&mut header, "llama.block_count", u32::MAX);
    let path = smollm2_with("smollm2-layers.gguf", &header);
    let start = Instant::now();
    assert_refused(&run_model(&path), &["llama.block_count is 4294967295"]);
    let mut t = Tiny::gemma3();
    let path = t
        .set_arch("block_count", Value::U32(469_671_647))
        .write("gemma3-layers.gguf");
    assert_refused(&run_model(&path), &["gemma3.block_count is 469671647: out of range"]);
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
}

// ---------------------------------------------------------------------------
// Item 4: text from the file is escaped and cut

#[test]
fn text_from_the_file_is_escaped_and_cut() {
    // A damaged key length in SmolLM2: the key takes in the bytes that
    // follow it (binary: a tab, NULs), then a count is read as its type.
    let mut header = smollm2_header();
    let key = "tokenizer.ggml.tokens";
    let len_at = common::after_str(&header, key) - key.len() - 8;
    header[len_at..len_at + 8].copy_from_slice(&(key.len() as u64 + 8).to_le_bytes());
    assert_refused(
        &run_model(&smollm2_with("smollm2-key.gguf", &header)),
        &[
            "metadata key \"tokenizer.ggml.tokens\\t\\u{0}\\u{0}\\u{0}\\u{8}\\u{0}",
            "unknown value type 49152",
        ],
    );

    // A key of 100,000 characters with line breaks and a NUL, then an
    // unknown value type.
    let long_key = format!("\0{}", "xy\n".repeat(33_333));
    let mut w = GgufWriter::new();
    w.add(&long_key, Value::U8(0));
    let mut b = w.to_bytes();
    let at = common::after_str(&b, &long_key);
    b[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    assert_refused(
        &run_model(&write("long-key.gguf", &b)),
        &["metadata key \"\\u{0}xy\\nxy\\n", "...\": unknown value type 99"],
    );

    // An architecture, a tensor name and a string value with line breaks.
    let junk = format!("a\nb\r{}", "z".repeat(5000));
    let mut t = Tiny::llama();
    t.set("general.architecture", Value::String(junk.clone()));
    assert_refused(
        &run_model(&t.write("arch.gguf")),
        &["unknown architecture \"a\\nb\\rzzz", "...\" (supported: llama"],
    );
    let mut t = Tiny::llama();
    t.set_arch("rope.scaling.type", Value::String(junk.clone()));
    assert_refused(
        &run_model(&t.write("rope-type.gguf")),
        &["rope scaling type \"a\\nb\\rzzz", "...\" is not supported"],
    );
    let name = "bad\nname\u{1}";
    let mut w = GgufWriter::new();
    w.add("general.architecture", Value::String("llama".into()));
    w.add_tensor(name, &[4], GgmlType::F32, vec![0; 16]);
    w.add_tensor(name, &[4], GgmlType::F32, vec![0; 16]);
    assert_refused(
        &run_model(&write("tensor-name.gguf", &w.to_bytes())),
        &["tensor \"bad\\nname\\u{1}\": duplicate tensor name"],
    );
}

// ---------------------------------------------------------------------------
// Item 13 (model part): what -m and INFLLM_MODEL name

/// Runs infllm, killing it if it takes longer than 20 s (a FIFO must not
/// block it).
fn run_bounded(args: &[&str], env: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infllm"));
    cmd.args(args).env_remove("INFLLM_MODEL");
    if let Some(v) = env {
        cmd.env("INFLLM_MODEL", v);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("infllm {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn model_paths_that_are_not_model_files() {
    let dir = tmp("a-directory");
    std::fs::create_dir_all(&dir).unwrap();
    let empty = write("empty.gguf", b"");
    let fifo = tmp("fifo.gguf");
    let _ = std::fs::remove_file(&fifo);
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo failed");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let cases = [
        (s(&dir), "is a directory"),
        ("/dev/zero".into(), "is not a regular file (a character device)"),
        ("/dev/null".into(), "is not a regular file (a character device)"),
        (s(&fifo), "is not a regular file (a FIFO)"),
        (s(&empty), "is empty"),
        ("/nonexistent/model.gguf".into(), "does not exist"),
    ];
    for (path, why) in &cases {
        let out = run_bounded(&["-m", path, "-p", "hi", "-n", "2", "-t", "2"], None);
        assert_refused(&out, &[&format!("error: model file {path} {why}")]);
        let out = run_bounded(&["-p", "hi", "-n", "2", "-t", "2"], Some(path));
        let err = assert_refused(&out, &[&format!("error: $INFLLM_MODEL: model file {path} {why}")]);
        assert_eq!(err.matches(why).count(), 1, "{err}");
    }
}

/// An I/O error's cause appears once in the error line (it was both the
/// message's tail and its source).
#[test]
fn io_error_causes_are_not_doubled() {
    let e = infllm::gguf::GgufError::Io {
        path: "/x.gguf".into(),
        cause: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
    };
    let line = infllm::cli::error_line(&anyhow::Error::from(e));
    assert_eq!(line, "error: cannot open /x.gguf: permission denied");
}
