//! The GGUF reader and writer: agreement with ggml's own reader on the real
//! model files, errors (never panics) on malformed files, writer round trips
//! and a small deterministic fuzz loop.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use infllm::ggml::gguf_ref::{self, RefGguf};
use infllm::ggml::GgmlType;
use infllm::gguf::{GgufFile, GgufWriter, TensorInfo, Value, ValueType};

const F32: GgmlType = GgmlType::F32;
const F16: GgmlType = GgmlType::F16;
const Q4_0: GgmlType = GgmlType::Q4_0;
const Q8_0: GgmlType = GgmlType::Q8_0;
const Q4_K: GgmlType = GgmlType::Q4_K;

// ---------------------------------------------------------------------------
// Helpers

/// Values equal, floats compared bit for bit (so NaN equals itself).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(ta, xs), Value::Array(tb, ys)) => {
            ta == tb && xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| same_value(x, y))
        }
        _ => a == b,
    }
}

fn assert_same_metadata(ours: &[(String, Value)], theirs: &[(String, Value)]) {
    let keys = |m: &[(String, Value)]| m.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(keys(ours), keys(theirs), "metadata keys or their order differ");
    for ((key, a), (_, b)) in ours.iter().zip(theirs) {
        assert_eq!(a.value_type(), b.value_type(), "type of '{key}'");
        if let (Value::Array(ta, xs), Value::Array(tb, ys)) = (a, b) {
            assert_eq!(ta, tb, "element type of '{key}'");
            assert_eq!(xs.len(), ys.len(), "length of '{key}'");
            if let Some(i) = (0..xs.len()).find(|&i| !same_value(&xs[i], &ys[i])) {
                panic!("'{key}'[{i}]: ours {:?}, ggml {:?}", xs[i], ys[i]);
            }
        }
        assert!(same_value(a, b), "value of '{key}': ours {a:?}, ggml {b:?}");
    }
}

/// ggml does not keep the stored dimension count: it reports `ne` with the
/// trailing 1s dropped.
fn ggml_dims(t: &TensorInfo) -> Vec<u64> {
    let mut d = t.ne().to_vec();
    while d.len() > 1 && d.last() == Some(&1) {
        d.pop();
    }
    d
}

fn assert_same_tensors(ours: &[TensorInfo], theirs: &[TensorInfo]) {
    assert_eq!(ours.len(), theirs.len(), "tensor count");
    for (a, b) in ours.iter().zip(theirs) {
        assert_eq!(a.name, b.name, "tensor names or their order differ");
        assert_eq!(a.ne(), b.ne(), "dims of '{}'", a.name);
        assert_eq!(ggml_dims(a), b.dims, "dims of '{}'", a.name);
        assert_eq!(a.ggml_type, b.ggml_type, "type of '{}'", a.name);
        assert_eq!(a.offset, b.offset, "offset of '{}'", a.name);
        assert_eq!(a.size, b.size, "size of '{}'", a.name);
    }
}

fn assert_same_as_ggml(ours: &GgufFile, theirs: &RefGguf) {
    assert_eq!(ours.version, theirs.version, "version");
    assert_eq!(ours.alignment, theirs.alignment, "alignment");
    assert_eq!(ours.data_offset, theirs.data_offset, "data offset");
    assert_same_metadata(&ours.metadata, &theirs.metadata);
    assert_same_tensors(&ours.tensors, &theirs.tensors);
}

/// Parses `bytes`, turning a panic into a test failure that names the input.
fn parse(bytes: Vec<u8>, what: &str) -> Result<GgufFile, String> {
    match catch_unwind(AssertUnwindSafe(|| GgufFile::from_bytes(bytes))) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => panic!("the reader panicked on {what}"),
    }
}

/// `bytes` must be rejected with a message containing every one of `needles`.
#[track_caller]
fn expect_err(bytes: Vec<u8>, needles: &[&str]) -> String {
    let msg = match parse(bytes, &format!("the file meant to fail with {needles:?}")) {
        Ok(_) => panic!("accepted a file that should fail with {needles:?}"),
        Err(msg) => msg,
    };
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
    }
    msg
}

fn put(bytes: &mut [u8], at: usize, new: &[u8]) {
    bytes[at..at + new.len()].copy_from_slice(new);
}

fn with(bytes: &[u8], at: usize, new: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    put(&mut b, at, new);
    b
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}

fn strings(items: &[&str]) -> Value {
    Value::Array(ValueType::String, items.iter().map(|v| s(v)).collect())
}

fn bytes_of(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// A small valid file with every structure: strings, scalars, a bool, a
/// string array, a nested array, and two tensors (the first padded, the last
/// ending exactly at the end of the file, so that any shorter prefix is
/// invalid).
fn small_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    // The long first value lets every later cut pass the count check.
    w.add(
        "general.name",
        s("a small file with every structure, cut at every byte in the tests"),
    )
    .add("general.alignment", Value::U32(32))
    .add("test.count", Value::U32(7))
    .add("test.flag", Value::Bool(true))
    .add("test.eps", Value::F32(1e-5))
    .add("general.architecture", s("llama"))
    .add("test.tokens", strings(&["<s>", "hello", "", "wörld"]))
    .add(
        "test.nested",
        Value::Array(
            ValueType::Array,
            vec![strings(&["x", "yz"]), Value::Array(ValueType::I64, vec![])],
        ),
    )
    .add_tensor("tensor.quant", &[32], Q8_0, bytes_of(34, 1))
    .add_tensor("tensor.float", &[4, 2], F32, bytes_of(32, 2));
    w
}

fn small() -> Vec<u8> {
    small_writer().to_bytes()
}

/// Offset of tensor entry `name`'s fields: (n_dims, first dim, type, offset)
/// for an entry with `n_dims` dimensions.
fn tensor_fields(bytes: &[u8], name: &str, n_dims: usize) -> (usize, usize, usize, usize) {
    let n = common::after_str(bytes, name);
    (n, n + 4, n + 4 + 8 * n_dims, n + 4 + 8 * n_dims + 4)
}

/// A file with one tensor entry written from raw fields (no data unless given).
fn one_tensor(name: &str, dims: &[u64], ggml_type: GgmlType, data: Vec<u8>) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add("general.architecture", s("llama"))
        .add_tensor(name, dims, ggml_type, data);
    w.to_bytes()
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("infllm-test-gguf-{}-{name}.gguf", std::process::id()))
}

/// Deterministic xorshift64 (no extra crate).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Uses everything a parsed file offers, so that a bad bound shows up as a panic.
fn exercise(f: &GgufFile) {
    for (key, _) in &f.metadata {
        let _ = (
            f.get_u32(key),
            f.get_f32(key),
            f.get_bool(key),
            f.get_str(key),
            f.get_array(key),
        );
        assert!(f.get(key).is_some());
    }
    for t in &f.tensors {
        assert_eq!(f.tensor(&t.name), Some(t));
        assert_eq!(f.tensor_data(t).len() as u64, t.size);
    }
    let _ = f.architecture();
    assert!(f.data_offset <= f.bytes().len() as u64);
}

// ---------------------------------------------------------------------------
// The real model files, against ggml's reader

fn check_model(path: &Path, arch: &str) {
    let ours = GgufFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let theirs = gguf_ref::read_file(path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    assert_same_as_ggml(&ours, &theirs);
    // Real files store no trailing 1 dimensions: the tables agree verbatim.
    for (a, b) in ours.tensors.iter().zip(&theirs.tensors) {
        assert_eq!(a.dims, b.dims, "dims of '{}'", a.name);
    }
    assert_eq!(ours.architecture().unwrap(), arch);
    assert!(!ours.tensors.is_empty());
    let vocab = ours.get_array("tokenizer.ggml.tokens").unwrap();
    assert!(vocab.len() > 40_000, "vocab of {} tokens", vocab.len());
    exercise(&ours);
}

#[test]
fn smollm2_matches_ggml_reader() {
    check_model(&common::smollm2(), "llama");
}

#[test]
fn gemma3_matches_ggml_reader() {
    check_model(&common::gemma3(), "gemma3");
}

// ---------------------------------------------------------------------------
// Malformed files: always an error with a useful message, never a panic

#[test]
fn small_file_is_valid_and_matches_ggml_layout() {
    let bytes = small();
    let f = parse(bytes.clone(), "the small valid file").unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.metadata.len(), 8);
    assert_eq!(f.get_u32("test.count").unwrap(), 7);
    assert_eq!(f.tensors.len(), 2);
    assert_eq!(f.data_offset % 32, 0);
    assert_eq!(
        f.data_offset + 64 + 32,
        bytes.len() as u64,
        "no trailing bytes after the last tensor"
    );
    // ggml has no nested arrays: without that key, its reader agrees.
    let mut w = GgufWriter::new();
    for (k, v) in &f.metadata {
        if k != "test.nested" {
            w.add(k, v.clone());
        }
    }
    for t in &f.tensors {
        w.add_tensor(&t.name, &t.dims, t.ggml_type, f.tensor_data(t).to_vec());
    }
    let flat = w.to_bytes();
    let ours = parse(flat.clone(), "the small flat file").unwrap();
    assert_same_as_ggml(&ours, &gguf_ref::read_bytes(&flat).unwrap());
}

#[test]
fn truncated_at_every_byte_offset() {
    let bytes = small();
    for len in 0..bytes.len() {
        let msg = parse(bytes[..len].to_vec(), &format!("the file cut to {len} bytes"))
            .err()
            .unwrap_or_else(|| panic!("the file cut to {len} of {} bytes was accepted", bytes.len()));
        assert!(
            ["truncated GGUF file", "impossible", "runs past the end"]
                .iter()
                .any(|n| msg.contains(n)),
            "cut to {len}: unexpected error {msg:?}"
        );
    }
    assert!(parse(bytes, "the whole file").is_ok());
}

#[test]
fn truncated_at_structural_boundaries() {
    let b = small();
    let cut = |len: usize, needles: &[&str]| {
        expect_err(b[..len].to_vec(), needles);
    };
    cut(0, &["magic at byte 0 needs 4 bytes, 0 left"]);
    cut(2, &["magic at byte 0"]);
    cut(6, &["version at byte 4"]);
    cut(12, &["tensor count at byte 8"]);
    cut(20, &["metadata count at byte 16"]);
    cut(24, &["metadata count 8 is impossible"]);
    // Early cuts trip the count check first (8 entries need at least 104 bytes).
    cut(24 + 103, &["metadata count 8 is impossible"]);
    // Inside a key's length and inside a key.
    let key = common::find(&b, b"general.architecture");
    cut(
        key - 3,
        &[&format!("metadata entry #5: metadata key length at byte {}", key - 8)],
    );
    cut(
        key + 3,
        &[&format!(
            "metadata entry #5: metadata key at byte {key} needs 20 bytes, 3 left"
        )],
    );
    // Inside a value type, a string value, a u32 value, a bool.
    let arch = common::after_str(&b, "general.architecture");
    cut(arch + 2, &["metadata key \"general.architecture\": value type"]);
    cut(
        common::after_str(&b, "llama") - 2,
        &["metadata key \"general.architecture\": string value at byte"],
    );
    cut(
        common::after_str(&b, "test.count") + 6,
        &["metadata key \"test.count\": u32 value"],
    );
    cut(
        common::after_str(&b, "test.flag") + 4,
        &["metadata key \"test.flag\": bool value"],
    );
    // Inside a string array: its length, then its third item.
    let tokens = common::after_str(&b, "test.tokens");
    cut(tokens + 4 + 4 + 3, &["metadata key \"test.tokens\": array length"]);
    cut(
        common::after_str(&b, "hello") + 8 + 4,
        &["metadata key \"test.tokens\": String array item #3: string value length"],
    );
    cut(
        common::after_str(&b, "wörld") - 1,
        &["String array item #3: string value at byte"],
    );
    // Inside a nested array.
    cut(
        common::after_str(&b, "x") + 8 + 1,
        &["\"test.nested\": Array array item #0: String array item #1: string value at byte"],
    );
    // Inside each field of a tensor entry.
    let (n_dims, dim0, ty, off) = tensor_fields(&b, "tensor.float", 2);
    cut(
        common::find(&b, b"tensor.float") + 4,
        &["tensor entry #1: tensor name at byte"],
    );
    cut(
        n_dims + 1,
        &["tensor entry #1: tensor \"tensor.float\": dimension count"],
    );
    cut(dim0 + 8 + 3, &["tensor \"tensor.float\": dimension 1 at byte"]);
    cut(ty + 1, &["tensor \"tensor.float\": ggml type"]);
    cut(off + 7, &["tensor \"tensor.float\": data offset"]);
    // Inside the padding before the data, and inside the data.
    cut(off + 8 + 1, &["padding to the 32-byte aligned tensor data"]);
    cut(
        b.len() - 1,
        &["tensor \"tensor.float\"", "runs past the end of the file"],
    );
    cut(
        b.len() - 70,
        &["tensor \"tensor.quant\"", "runs past the end of the file"],
    );
}

#[test]
fn bad_magic_and_versions() {
    let b = small();
    expect_err(with(&b, 0, b"GGML"), &["not a GGUF file", "47, 47, 4d, 4c"]);
    expect_err(with(&b, 0, b"\0\0\0\0"), &["not a GGUF file"]);
    for v in [0u32, 1, 4, u32::MAX] {
        expect_err(
            with(&b, 4, &v.to_le_bytes()),
            &[&format!("unsupported GGUF version {v} (supported: 2, 3)")],
        );
    }
    // Version 3 as a big-endian file stores it.
    expect_err(
        with(&b, 4, &3u32.to_be_bytes()),
        &["version 50331648", "is the file big-endian?"],
    );
    // Version 2 has the same layout as 3.
    assert_eq!(parse(with(&b, 4, &2u32.to_le_bytes()), "version 2").unwrap().version, 2);
}

#[test]
fn absurd_counts() {
    let b = small();
    expect_err(
        with(&b, 16, &u64::MAX.to_le_bytes()),
        &["at byte 24", "metadata count 18446744073709551615 is impossible"],
    );
    expect_err(
        with(&b, 8, &u64::MAX.to_le_bytes()),
        &["tensor count 18446744073709551615 is impossible"],
    );
    expect_err(
        with(&b, 8, &(1u64 << 40).to_le_bytes()),
        &["tensor count 1099511627776 is impossible"],
    );
    // Counts that fit the bytes but are still lies: the entries run out, or
    // garbage is read as entries.
    let mut w = GgufWriter::new();
    w.add("a", strings(&["x"; 40]));
    let m = w.to_bytes();
    expect_err(
        with(&m, 16, &2u64.to_le_bytes()),
        &[
            "metadata entry #1: metadata key length at byte",
            "needs 8 bytes, 0 left",
        ],
    );
    expect_err(
        with(&b, 16, &20u64.to_le_bytes()),
        &["truncated GGUF file: metadata entry #9: metadata key at byte"],
    );
    expect_err(with(&b, 8, &3u64.to_le_bytes()), &["GGUF file"]);
}

#[test]
fn absurd_string_and_array_lengths() {
    let b = small();
    // Key length.
    expect_err(
        with(&b, 24, &u64::MAX.to_le_bytes()),
        &["metadata key at byte 32 needs 18446744073709551615 bytes"],
    );
    // String value length.
    let llama = common::find(&b, b"llama") - 8;
    expect_err(
        with(&b, llama, &(1u64 << 62).to_le_bytes()),
        &[
            "\"general.architecture\": string value at byte",
            "needs 4611686018427387904 bytes",
        ],
    );
    // Array lengths, a string array and an inner array.
    let tokens = common::after_str(&b, "test.tokens") + 8;
    expect_err(
        with(&b, tokens, &u64::MAX.to_le_bytes()),
        &[
            "\"test.tokens\"",
            "length of the String array 18446744073709551615 is impossible",
        ],
    );
    let inner = common::after_str(&b, "test.nested") + 4 + 4 + 8 + 4;
    expect_err(
        with(&b, inner, &(u64::MAX / 2).to_le_bytes()),
        &[
            "\"test.nested\": Array array item #0",
            "length of the String array",
            "impossible",
        ],
    );
    // Tensor name length.
    let name = common::find(&b, b"tensor.quant") - 8;
    expect_err(
        with(&b, name, &u64::MAX.to_le_bytes()),
        &["tensor entry #0: tensor name at byte"],
    );
}

#[test]
fn tensor_offsets_past_the_end_or_misaligned() {
    let b = small();
    let (_, _, _, off) = tensor_fields(&b, "tensor.float", 2);
    expect_err(
        with(&b, off, &(1u64 << 20).to_le_bytes()),
        &["tensor \"tensor.float\"", "data [1048576, +32) runs past the end"],
    );
    expect_err(
        with(&b, off, &(u64::MAX - 31).to_le_bytes()),
        &["tensor \"tensor.float\"", "runs past the end"],
    );
    expect_err(
        with(&b, off, &72u64.to_le_bytes()),
        &["tensor \"tensor.float\"", "data offset 72 is not aligned to 32"],
    );
    // Overlapping data: both tensors at offset 0.
    expect_err(
        with(&b, off, &0u64.to_le_bytes()),
        &["tensor \"tensor.float\"", "overlaps tensor \"tensor.quant\""],
    );
    // The header claims an alignment the layout does not have.
    let align = common::after_str(&b, "general.alignment") + 4;
    expect_err(
        with(&b, align, &128u32.to_le_bytes()),
        &["tensor \"tensor.float\": data offset 64 is not aligned to 128"],
    );
}

#[test]
fn bad_general_alignment() {
    let with_alignment = |v: Value| {
        let mut w = GgufWriter::new();
        w.add("general.architecture", s("llama"))
            .add("general.alignment", v)
            .add_tensor("t", &[8], F32, bytes_of(32, 0));
        w.to_bytes()
    };
    let b = with_alignment(Value::U32(0));
    let at = common::find(&b, b"general.alignment") - 8;
    expect_err(
        b,
        &[
            &format!("at byte {at}: "),
            "\"general.alignment\": alignment 0 is not a power of two",
        ],
    );
    expect_err(with_alignment(Value::U32(3)), &["alignment 3 is not a power of two"]);
    expect_err(
        with_alignment(Value::U64(32)),
        &["\"general.alignment\" must be a u32, found U64 32"],
    );
    expect_err(with_alignment(s("32")), &["must be a u32, found String"]);
    // A valid non-default alignment is used for the layout.
    let f = parse(with_alignment(Value::U32(64)), "alignment 64").unwrap();
    assert_eq!((f.alignment, f.data_offset % 64), (64, 0));
}

#[test]
fn unknown_value_types() {
    let b = small();
    let count = common::after_str(&b, "test.count");
    expect_err(
        with(&b, count, &13u32.to_le_bytes()),
        &["metadata key \"test.count\": unknown value type 13"],
    );
    expect_err(
        with(&b, count, &u32::MAX.to_le_bytes()),
        &["unknown value type 4294967295"],
    );
    let tokens = common::after_str(&b, "test.tokens") + 4;
    expect_err(
        with(&b, tokens, &42u32.to_le_bytes()),
        &["metadata key \"test.tokens\": unknown array element type 42"],
    );
}

#[test]
fn unknown_ggml_types() {
    let b = small();
    let (_, _, ty, _) = tensor_fields(&b, "tensor.float", 2);
    expect_err(
        with(&b, ty, &1000u32.to_le_bytes()),
        &["tensor \"tensor.float\": unknown ggml type 1000"],
    );
    // 4 was Q4_2, removed from ggml.
    expect_err(
        with(&b, ty, &4u32.to_le_bytes()),
        &["tensor \"tensor.float\": unknown ggml type 4"],
    );
}

#[test]
fn bad_tensor_shapes() {
    // Too many dimensions.
    expect_err(
        one_tensor("t", &[1, 1, 1, 1, 1], F32, vec![0; 4]),
        &["tensor \"t\": 5 dimensions (ggml supports at most 4)"],
    );
    let b = small();
    let (n_dims, ..) = tensor_fields(&b, "tensor.quant", 1);
    expect_err(
        with(&b, n_dims, &u32::MAX.to_le_bytes()),
        &["tensor \"tensor.quant\": 4294967295 dimensions"],
    );
    // Element count overflows i64 (each dimension alone is fine).
    expect_err(
        one_tensor("t", &[1 << 32, 1 << 32], F32, vec![]),
        &["tensor \"t\"", "overflow"],
    );
    expect_err(
        one_tensor("t", &[1 << 31, 1 << 31, 2, 1], F32, vec![]),
        &["tensor \"t\"", "overflow"],
    );
    // A dimension ggml would read as negative, hidden by a zero.
    expect_err(
        one_tensor("t", &[0, u64::MAX], F32, vec![]),
        &["tensor \"t\"", "negative"],
    );
    // Byte size overflows even though the element count fits.
    expect_err(
        one_tensor("t", &[1 << 62], F32, vec![]),
        &["tensor \"t\"", "data size", "overflows"],
    );
    // Row not a multiple of the block size.
    expect_err(
        one_tensor("t", &[33, 2], Q8_0, vec![]),
        &["tensor \"t\": row of 33 elements is not a multiple of the q8_0 block size 32"],
    );
    expect_err(
        one_tensor("t", &[], Q4_K, vec![]),
        &["row of 1 elements is not a multiple of the q4_K block size 256"],
    );
    // Zero-element and zero-dimension tensors are fine.
    assert!(parse(one_tensor("t", &[0, 4], F32, vec![]), "an empty tensor").is_ok());
    assert_eq!(
        parse(one_tensor("t", &[], F32, vec![0; 4]), "a scalar")
            .unwrap()
            .tensors[0]
            .size,
        4
    );
}

#[test]
fn duplicate_names_and_keys() {
    let mut w = small_writer();
    w.add_tensor("tensor.quant", &[8], F32, bytes_of(32, 3));
    expect_err(
        w.to_bytes(),
        &["tensor \"tensor.quant\": duplicate tensor name (entry #2 at byte"],
    );
    let mut w = small_writer();
    w.add("test.count", Value::U32(8));
    expect_err(w.to_bytes(), &["duplicate metadata key \"test.count\" (entry #8)"]);
}

#[test]
fn bad_keys_and_names() {
    // Invalid UTF-8 in a key, a string value and a tensor name.
    let b = small();
    let key = common::find(&b, b"test.flag");
    expect_err(
        with(&b, key + 1, &[0xff]),
        &["metadata entry #3: metadata key is not valid UTF-8 (bad byte at index 1 of 9)"],
    );
    let hello = common::find(&b, b"hello");
    expect_err(
        with(&b, hello, &[0xc3, 0x28]),
        &["\"test.tokens\": String array item #1: string value is not valid UTF-8"],
    );
    let name = common::find(&b, b"tensor.float");
    expect_err(
        with(&b, name, &[0x80]),
        &["tensor entry #1: tensor name is not valid UTF-8"],
    );
    // An empty key.
    let mut w = GgufWriter::new();
    w.add("", Value::U8(1));
    expect_err(w.to_bytes(), &["at byte 24", "metadata entry #0 has an empty key"]);
    // A tensor name ggml would cut.
    let long = "x".repeat(64);
    expect_err(
        one_tensor(&long, &[8], F32, bytes_of(32, 0)),
        &["is 64 bytes long (ggml allows at most 63)"],
    );
    assert!(parse(one_tensor(&long[..63], &[8], F32, bytes_of(32, 0)), "a 63-byte name").is_ok());
    // A NUL in a tensor name (found by fuzz/model_check: ggml's C string).
    expect_err(
        one_tensor("blk\0.0.attn_norm.weight", &[8], F32, bytes_of(32, 0)),
        &["name holds a NUL byte"],
    );
}

#[test]
fn bool_not_zero_or_one() {
    let b = small();
    let flag = common::after_str(&b, "test.flag") + 4;
    assert_eq!(b[flag], 1);
    expect_err(
        with(&b, flag, &[2]),
        &["metadata key \"test.flag\": bool value 2 is neither 0 nor 1"],
    );
    expect_err(with(&b, flag, &[0xff]), &["bool value 255"]);
    let mut w = GgufWriter::new();
    w.add(
        "flags",
        Value::Array(ValueType::Bool, vec![Value::Bool(false), Value::Bool(true)]),
    );
    let b = w.to_bytes();
    let n = b.len();
    expect_err(with(&b, n - 1, &[7]), &["\"flags\": Bool array item #1: bool value 7"]);
}

#[test]
fn deeply_nested_arrays() {
    let nest = |depth: usize| {
        let mut v = Value::Array(ValueType::U8, vec![Value::U8(9)]);
        for _ in 1..depth {
            v = Value::Array(ValueType::Array, vec![v]);
        }
        let mut w = GgufWriter::new();
        w.add("deep", v);
        w.to_bytes()
    };
    let ok = parse(nest(8), "arrays nested 8 deep").unwrap();
    assert!(matches!(ok.get("deep"), Some(Value::Array(ValueType::Array, _))));
    expect_err(nest(9), &["metadata key \"deep\"", "arrays nested more than 8 deep"]);
    expect_err(nest(1000), &["arrays nested more than 8 deep"]);
    // A long chain of array headers with nothing after: the count check
    // stops it before any recursion.
    let mut b = GgufWriter::new()
        .add("deep", Value::Array(ValueType::Array, vec![]))
        .to_bytes();
    let len_at = b.len() - 8;
    put(&mut b, len_at, &1u64.to_le_bytes());
    expect_err(b, &["\"deep\"", "length of the Array array 1 is impossible"]);
}

#[test]
fn open_errors() {
    let missing = temp_path("missing");
    let e = GgufFile::open(&missing).unwrap_err().to_string();
    assert!(
        e.starts_with("model file ") && e.ends_with("missing.gguf does not exist"),
        "{e}"
    );
    // Paths that are not regular files are refused before they are opened
    // (opening a FIFO would block).
    let e = GgufFile::open(std::env::temp_dir()).unwrap_err().to_string();
    assert!(e.ends_with("is a directory"), "{e}");
    let e = GgufFile::open("/dev/null").unwrap_err().to_string();
    assert!(e.ends_with("is not a regular file (a character device)"), "{e}");
    let empty = temp_path("empty");
    std::fs::write(&empty, b"").unwrap();
    let e = GgufFile::open(&empty).unwrap_err().to_string();
    std::fs::remove_file(&empty).unwrap();
    assert!(e.ends_with("is empty"), "{e}");
    expect_err(vec![], &["magic at byte 0 needs 4 bytes, 0 left"]);
    // ggml's reader reports failures as errors too.
    assert!(gguf_ref::read_file(&missing).is_err());
    assert!(gguf_ref::read_bytes(&with(&small(), 0, b"GGML")).is_err());
    assert!(gguf_ref::read_bytes(&small()).is_err(), "ggml has no nested arrays");
}

// ---------------------------------------------------------------------------
// Writer round trips

fn every_value() -> Vec<(String, Value)> {
    use Value::*;
    let arr = |t: ValueType, items: Vec<Value>| Array(t, items);
    let v = vec![
        ("u8", U8(255)),
        ("i8", I8(-128)),
        ("u16", U16(65535)),
        ("i16", I16(-32768)),
        ("u32", U32(u32::MAX)),
        ("i32", I32(i32::MIN)),
        ("f32", F32(-1.5e-7)),
        ("f32.nan", F32(f32::NAN)),
        ("f32.inf", F32(f32::NEG_INFINITY)),
        ("bool.true", Bool(true)),
        ("bool.false", Bool(false)),
        ("string", s("héllo\twörld 🦀")),
        ("string.empty", s("")),
        ("u64", U64(u64::MAX)),
        ("i64", I64(i64::MIN)),
        ("f64", F64(std::f64::consts::PI)),
        ("arr.u8", arr(ValueType::U8, vec![U8(0), U8(255)])),
        ("arr.i8", arr(ValueType::I8, vec![I8(-1), I8(1)])),
        ("arr.u16", arr(ValueType::U16, vec![U16(1), U16(65535)])),
        ("arr.i16", arr(ValueType::I16, vec![I16(-2)])),
        ("arr.u32", arr(ValueType::U32, vec![U32(3), U32(4), U32(5)])),
        ("arr.i32", arr(ValueType::I32, vec![I32(-3), I32(i32::MAX)])),
        (
            "arr.f32",
            arr(ValueType::F32, vec![F32(0.25), F32(-0.0), F32(f32::MAX)]),
        ),
        (
            "arr.bool",
            arr(ValueType::Bool, vec![Bool(true), Bool(false), Bool(true)]),
        ),
        ("arr.string", strings(&["a", "", "ünï", "<|im_start|>"])),
        ("arr.u64", arr(ValueType::U64, vec![U64(1 << 40)])),
        ("arr.i64", arr(ValueType::I64, vec![I64(-1 << 40), I64(7)])),
        ("arr.f64", arr(ValueType::F64, vec![F64(1e300), F64(-2.5)])),
        ("arr.empty.u8", arr(ValueType::U8, vec![])),
        ("arr.empty.string", arr(ValueType::String, vec![])),
        ("arr.empty.f64", arr(ValueType::F64, vec![])),
    ];
    v.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn nested_values() -> Vec<(String, Value)> {
    use Value::*;
    vec![
        ("arr.empty.array".to_string(), Array(ValueType::Array, vec![])),
        (
            "arr.nested".to_string(),
            Array(
                ValueType::Array,
                vec![
                    Array(ValueType::String, vec![s("x"), s("yz")]),
                    Array(ValueType::String, vec![]),
                    Array(ValueType::U8, vec![U8(1)]),
                    Array(ValueType::Array, vec![Array(ValueType::F32, vec![F32(2.0)])]),
                ],
            ),
        ),
    ]
}

fn round_trip_tensors() -> Vec<(&'static str, Vec<u64>, GgmlType, Vec<u8>)> {
    vec![
        ("tok_embd.weight", vec![64, 3], Q4_0, bytes_of(3 * 2 * 18, 5)),
        ("norm.weight", vec![7], F32, bytes_of(28, 6)),
        ("empty", vec![0, 5], F16, vec![]),
        ("blk.0.ffn.weight", vec![256, 1, 2], Q4_K, bytes_of(2 * 144, 7)),
        ("four.d", vec![2, 3, 1, 2], F16, bytes_of(24, 8)),
        ("trailing.ones", vec![4, 1, 1], F32, bytes_of(16, 9)),
    ]
}

fn writer_with(values: &[(String, Value)]) -> GgufWriter {
    let mut w = GgufWriter::new();
    for (k, v) in values {
        w.add(k, v.clone());
    }
    for (name, dims, ty, data) in round_trip_tensors() {
        w.add_tensor(name, &dims, ty, data);
    }
    w
}

#[test]
fn writer_round_trip_every_value_type() {
    let mut values = every_value();
    values.extend(nested_values());
    let f = parse(writer_with(&values).to_bytes(), "the writer's output").unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, 32);
    assert_same_metadata(&f.metadata, &values);
    for (k, v) in &values {
        assert!(same_value(f.get(k).unwrap(), v), "{k}");
    }
    for (name, dims, ty, data) in round_trip_tensors() {
        let t = f.tensor(name).unwrap();
        assert_eq!((&t.dims, t.ggml_type, t.offset % 32), (&dims, ty, 0), "{name}");
        assert_eq!(f.tensor_data(t), &data[..], "data of {name}");
    }
    assert_eq!(f.get_u32("u8").unwrap(), 255);
    assert!(f.get_u32("i32").is_err());
    assert!(f.get_bool("bool.true").unwrap());
    assert_eq!(f.get_str("string").unwrap(), "héllo\twörld 🦀");
    assert_eq!(f.get_array("arr.nested").unwrap().len(), 4);
    assert!(f
        .get_f32("string")
        .unwrap_err()
        .to_string()
        .contains("\"string\" has type String, expected a number"));
    assert!(f
        .get_u32("nope")
        .unwrap_err()
        .to_string()
        .contains("\"nope\" is missing"));

    // Metadata only (no tensors): no padding after the header, as in ggml.
    let mut w = GgufWriter::new();
    w.add("general.architecture", s("x"));
    let b = w.to_bytes();
    let f = parse(b.clone(), "a file without tensors").unwrap();
    assert_eq!(f.data_offset, b.len() as u64);
    assert_same_as_ggml(&f, &gguf_ref::read_bytes(&b).unwrap());
    // An empty file: no metadata, no tensors.
    let f = parse(GgufWriter::new().to_bytes(), "an empty GGUF").unwrap();
    assert_eq!((f.metadata.len(), f.tensors.len(), f.data_offset), (0, 0, 24));
}

#[test]
fn writer_output_read_by_ggml() {
    // Everything ggml supports (all but nested arrays), with an alignment of 64.
    let mut values = every_value();
    values.insert(0, ("general.alignment".to_string(), Value::U32(64)));
    let w = writer_with(&values);
    let path = temp_path("round-trip");
    w.write(&path).unwrap();
    let ours = GgufFile::open(&path);
    let theirs = gguf_ref::read_file(&path);
    std::fs::remove_file(&path).unwrap();
    let (ours, theirs) = (ours.unwrap(), theirs.unwrap());
    assert_eq!(ours.alignment, 64);
    assert_same_as_ggml(&ours, &theirs);
    assert_same_metadata(&theirs.metadata, &values);
    assert_eq!(
        theirs.tensors.iter().find(|t| t.name == "trailing.ones").unwrap().dims,
        vec![4]
    );
    // The same bytes through ggml's buffer reader.
    assert_eq!(gguf_ref::read_bytes(&w.to_bytes()).unwrap().tensors, theirs.tensors);
}

// ---------------------------------------------------------------------------
// Fuzz

#[test]
fn fuzz_byte_flips_and_truncations_never_panic() {
    let base = small();
    let interesting: [u64; 8] = [0, 1, 7, 32, 255, 1 << 31, i64::MAX as u64, u64::MAX];
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let (mut ok, mut err) = (0, 0);
    for iter in 0..2000 {
        let mut b = base.clone();
        let n_mutations = 1 + rng.below(3);
        for _ in 0..n_mutations {
            match rng.below(4) {
                0 => {
                    let at = rng.below(b.len());
                    b[at] = rng.next() as u8;
                }
                1 => {
                    let at = rng.below(b.len());
                    b[at] ^= 1 << rng.below(8);
                }
                2 if b.len() >= 8 => {
                    let at = rng.below(b.len() - 7);
                    let v = interesting[rng.below(interesting.len())];
                    put(&mut b, at, &v.to_le_bytes()[..8]);
                }
                _ => {
                    let len = rng.below(b.len() + 1);
                    b.truncate(len);
                }
            }
            if b.is_empty() {
                break;
            }
        }
        match parse(b, &format!("fuzz case {iter}")) {
            Ok(f) => {
                exercise(&f);
                ok += 1;
            }
            Err(msg) => {
                assert!(msg.contains("GGUF"), "fuzz case {iter}: {msg}");
                err += 1;
            }
        }
    }
    // Both outcomes are exercised (flips inside tensor data or values keep the file valid).
    assert!(ok > 50 && err > 500, "{ok} accepted, {err} rejected");
}
