//! The seed corpora: small valid inputs of every kind a target reads, from
//! which libFuzzer's mutations start.

use infllm::gguf::{GgufWriter, Value, ValueType};

/// The architectures with a seed model.
const ARCHS: [&str; 7] = ["llama", "qwen2", "qwen3", "phi3", "mistral3", "granite", "gemma3"];

/// Embedding size of the seed models: small, so that mutations hit the
/// header (keys, tensor table) as often as the data.
const SEED_EMBD: u64 = 8;

/// Tiny models, one per architecture.
pub fn models() -> Vec<(String, Vec<u8>)> {
    ARCHS
        .iter()
        .map(|a| (format!("{a}.gguf"), crate::tiny::model(a, SEED_EMBD)))
        .collect()
}

/// The models, and a file holding a value of every metadata type.
pub fn gguf() -> Vec<(String, Vec<u8>)> {
    let mut w = GgufWriter::new();
    w.add("general.architecture", Value::String("llama".into()));
    w.add("u8", Value::U8(7))
        .add("i8", Value::I8(-7))
        .add("u16", Value::U16(7));
    w.add("i16", Value::I16(-7))
        .add("u32", Value::U32(7))
        .add("i32", Value::I32(-7));
    w.add("u64", Value::U64(7))
        .add("i64", Value::I64(-7))
        .add("f32", Value::F32(0.5));
    w.add("f64", Value::F64(0.25)).add("bool", Value::Bool(true));
    w.add("string", Value::String("text".into()));
    let inner = Value::Array(ValueType::U32, vec![Value::U32(1), Value::U32(2)]);
    w.add("arrays", Value::Array(ValueType::Array, vec![inner.clone(), inner]));
    let mut seeds = models();
    seeds.push(("values.gguf".into(), w.to_bytes()));
    seeds
}

/// Chat templates (`SOURCE \0 MESSAGE \x01 MESSAGE ...`): the built-in ones
/// and SmolLM2's own.
pub fn templates() -> Vec<(String, Vec<u8>)> {
    let f = infllm::gguf::GgufFile::open(crate::repo_file("models/SmolLM2-135M-Instruct.Q4_1.gguf")).expect("SmolLM2");
    let smollm = f
        .get_str("tokenizer.chat_template")
        .expect("SmolLM2's template")
        .to_string();
    let mut sources = vec![("smollm2".to_string(), smollm)];
    sources.extend(infllm::chat::template::builtins().map(|(n, s)| (n.to_string(), s.to_string())));
    let messages = "You are terse.\x01What is 2+2?\x01Four.\x01And 3+3?";
    sources
        .into_iter()
        .map(|(name, src)| (format!("{name}.jinja"), format!("{src}\0{messages}").into_bytes()))
        .collect()
}

/// Texts for the tokenizers (the first byte picks tokenizer and flags).
pub fn texts() -> Vec<(String, Vec<u8>)> {
    let texts = [
        "Hello world! It's 2026, isn't it?",
        "<|im_start|>user\nfn main() { println!(\"{}\", 1 + 2); }<|im_end|>\n",
        "  leading spaces\t\ttabs\r\nand\u{a0}odd\u{2009}spaces   ",
        "Ünïcödé: 日本語のテキスト, emoji 🎉👍🏽, Ελληνικά, العربية, 12345678901234",
        "<bos><start_of_turn>user\nhi<end_of_turn>\n",
    ];
    texts
        .iter()
        .enumerate()
        .flat_map(|(i, t)| (0u8..8).map(move |flags| (format!("text{i}-{flags}"), [&[flags], t.as_bytes()].concat())))
        .collect()
}
