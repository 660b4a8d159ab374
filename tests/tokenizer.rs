//! The tokenizer against llama.cpp (the `llama_*` API, through
//! `infllm::ggml::reference`): token ids, pieces, detokenization and the
//! end-of-generation set, on both real models; the same checks for other
//! settings of the real vocabularies (other pre-tokenizers, a space prefix,
//! BOS/EOS), written into tiny all-zero models that llama.cpp loads; the
//! streaming UTF-8 decoder; and the speed of long and adversarial prompts.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use infllm::ggml::reference::RefModel;
use infllm::gguf::{GgufFile, GgufWriter, Value, ValueType};
use infllm::tokenizer::{Token, Tokenizer, Utf8Stream};
use rand::{Rng, SeedableRng};

/// One model read by both sides.
struct Both {
    name: String,
    ours: Tokenizer,
    theirs: RefModel,
}

fn load(name: &str, path: &Path) -> Both {
    infllm::ggml::set_quiet_logs(true);
    let file = GgufFile::open(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let t0 = Instant::now();
    let ours = Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("tokenizer of {}: {e:#}", path.display()));
    eprintln!("{name}: tokenizer loaded in {:?}", t0.elapsed());
    let theirs = RefModel::load(path).unwrap_or_else(|e| panic!("llama.cpp loading {}: {e:#}", path.display()));
    assert_eq!(ours.n_vocab(), theirs.n_vocab(), "{name}: vocabulary size");
    Both {
        name: name.to_string(),
        ours,
        theirs,
    }
}

fn smollm2() -> &'static Both {
    static M: OnceLock<Both> = OnceLock::new();
    M.get_or_init(|| load("SmolLM2", &common::smollm2()))
}

fn gemma3() -> &'static Both {
    static M: OnceLock<Both> = OnceLock::new();
    M.get_or_init(|| load("Gemma 3", &common::gemma3()))
}

const RUST_SNIPPET: &str = r#"fn main() {
    let v: Vec<u32> = (0..10).map(|x| x * x).collect();
    if let Some(&last) = v.last() {
        println!("last = {last:>4}, sum = {}", v.iter().sum::<u32>());
    }
    // a comment with 'quotes' and "strings"
}
"#;

const PYTHON_SNIPPET: &str = "import os\n\ndef walk(root: str) -> list[str]:\n    \"\"\"Return files.\"\"\"\n    out = []\n    for d, _, fs in os.walk(root):\n\tout += [os.path.join(d, f) for f in fs if not f.startswith('.')]\n    return out  # done\n";

const PARAGRAPH: &str =
    "The quick brown fox, whose name was Ëmile, jumped over 13 lazy dogs (and 2,048 cats) on 2024-05-17 at 10:45pm. \
He said: \"I'm tired... aren't you?\" — then 走了. Prices rose 3.5% to $1,299.99; naïve coöperation wasn't enough!!! \
Meanwhile, in the café, someone typed `cargo test --release` and waited   patiently\t\tfor the results 🎉🎉.\n\n\
Next paragraph: Ünïcödé stress — ﬁ ligature, ½ fraction, Ⅻ numeral, ㊙ symbol, and a ZWJ 👩‍💻 coder.\r\n";

/// Strings every model is checked on.
fn corpus() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        "a",
        " ",
        "   ",
        "\n",
        "Hello world",
        "Hello, world! How are you?",
        "   leading spaces",
        "trailing spaces   ",
        " leading single space",
        "\n\nstarting newlines",
        "tabs\tand\t\tmore\ttabs\t",
        "multiple\n\n\nnewlines\n\n",
        "  \n  \t \r\n mixed whitespace \u{3000} ideographic\u{a0}nbsp",
        "a  b   c    d     e      f                                      g",
        "1234567890 3.14159 -42 1,000,000 99999999999999999999 0x1F 007",
        "é ñ ü ö ç café naïve résumé Straße über Ñandú",
        "e\u{301} n\u{303} combining marks",
        "中文测试，你好世界。日本語のテキスト、カタカナ",
        "한국어 텍스트 입니다",
        "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷 keycap 1️⃣",
        "don't I'LL we've they're she'd it's You'RE O'Neil 'quoted' rock'n'roll",
        RUST_SNIPPET,
        PYTHON_SNIPPET,
        PARAGRAPH,
        "!!!??? ... ,,, ;; -- ** ``` ''' \"\"\" ((( ))) [[[ ]]] {{ }}",
        "$100 + 20% = <x> | y ^ z ~ w @ # & * _ \\ /",
        "Mixed CASE camelCase snake_case_words SCREAMING_CASE kebab-case",
        "Arabic: مرحبا بالعالم; Hebrew: שלום; Hindi: नमस्ते दुनिया; Thai: สวัสดีชาวโลก",
        "Greek αβγ Δ, Cyrillic Привет мир",
        "math ∑∫√∞ ≤ ≥ ≠ ½ ² ³ ① ⅷ",
        "zero\u{200B}width\u{200D}joiner\u{FEFF}bom\u{E000}private",
        "control \u{1}\u{7}\u{7F}\u{85} chars",
        "url https://example.com/path?q=1&r=2#frag and email a.b@c.de",
        "\t\t\tindented\n    code\n\t mixed",
        "Ġ weird Ċ chars ▁ in ▁▁text",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
        "<|endoftext|><bos>text<eos></s><unk><pad>",
        "<table><tr><td>cell</td></tr></table> <b>bold</b> </s> [multimodal] <unused0><mask>",
        "unterminated <|im_start and <start_of_turn and <|im_end|",
        "hi<|im_end|><|im_end|>  <|im_start|> spaced <end_of_turn>\n\n<end_of_turn>",
        "<reponame>x<file_sep>y<filename>z",
        "...trailing\n",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(PARAGRAPH.repeat(3));
    v
}

/// Random strings drawn from pieces that stress the edge cases.
fn random_corpus(seed: u64, n: usize) -> Vec<String> {
    const PIECES: &[&str] = &[
        " ",
        "  ",
        "\t",
        "\n",
        "\n\n",
        "\r\n",
        "\u{a0}",
        "\u{3000}",
        "a",
        "b",
        "The",
        "hello",
        "Ä",
        "é",
        "e\u{301}",
        "ß",
        "1",
        "23",
        "456",
        "7890",
        "½",
        "'",
        "'s",
        "'LL",
        "'ve",
        "\"",
        ".",
        ",",
        "!",
        "?",
        "...",
        "-",
        "_",
        "(",
        ")",
        "<",
        ">",
        "|",
        "$",
        "+",
        "=",
        "^",
        "~",
        "`",
        "中",
        "文",
        "日本",
        "한",
        "😀",
        "👍🏽",
        "👨‍👩‍👧",
        "\u{200B}",
        "\u{1}",
        "▁",
        "Ġ",
        "<|im_start|>",
        "<|im_end|>",
        "<start_of_turn>",
        "<end_of_turn>",
        "</s>",
        "<b>",
        "<eos>",
        "<|endoftext|>",
        "<0x0A>",
        "ﬁ",
        "Ⅻ",
        "\u{10FFFF}",
        "\u{E000}",
        "@",
        "#",
        "%",
        "&",
        "*",
        "/",
        "\\",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.gen_range(0..24);
            (0..len).map(|_| PIECES[rng.gen_range(0..PIECES.len())]).collect()
        })
        .collect()
}

fn check_encode(m: &Both, texts: &[String]) {
    let mut failures = Vec::new();
    for s in texts {
        for (add, parse) in [(true, true), (false, false), (true, false), (false, true)] {
            let ours = m.ours.encode(s, add, parse);
            let theirs = m.theirs.tokenize(s, add, parse);
            if ours != theirs {
                failures.push(format!(
                    "{:?} (add_special {add}, parse_special {parse}):\n  ours   {ours:?}\n  llama  {theirs:?}",
                    s
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}: {} tokenizations differ from llama.cpp:\n{}",
        m.name,
        failures.len(),
        failures.join("\n")
    );
}

fn check_decode(m: &Both, texts: &[String]) {
    let mut failures = Vec::new();
    for s in texts {
        for (add, parse) in [(true, true), (false, false)] {
            let ids = m.theirs.tokenize(s, add, parse);
            for (remove, unparse) in [(false, false), (false, true), (true, false), (true, true)] {
                let ours = m.ours.decode(&ids, remove, unparse);
                let theirs = m.theirs.detokenize(&ids, remove, unparse);
                if ours != theirs {
                    failures.push(format!(
                        "{s:?} ids {ids:?} (remove_special {remove}, unparse_special {unparse}):\n  ours   {:?}\n  llama  {:?}",
                        String::from_utf8_lossy(&ours),
                        String::from_utf8_lossy(&theirs)
                    ));
                }
                // Round trip wherever llama.cpp's own round trip holds.
                let ours_ids = m.ours.encode(s, add, parse);
                if theirs == s.as_bytes() && m.ours.decode(&ours_ids, remove, unparse) != s.as_bytes() {
                    failures.push(format!(
                        "{s:?}: no round trip (remove_special {remove}, unparse_special {unparse})"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}: {} detokenizations differ from llama.cpp:\n{}",
        m.name,
        failures.len(),
        failures.join("\n")
    );
}

/// Every token's piece, with and without special rendering.
fn check_pieces(m: &Both) {
    let mut failures = Vec::new();
    for t in 0..m.ours.n_vocab() as Token {
        for special in [false, true] {
            let ours = m.ours.token_to_piece(t, special);
            let theirs = m.theirs.token_to_piece(t, special);
            if ours != theirs && failures.len() < 50 {
                failures.push(format!(
                    "token {t} (special {special}): ours {ours:?}, llama {theirs:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}: pieces differ:\n{}",
        m.name,
        failures.join("\n")
    );
}

fn check_eog(m: &Both) {
    let ours: Vec<Token> = (0..m.ours.n_vocab() as Token).filter(|&t| m.ours.is_eog(t)).collect();
    let theirs: Vec<Token> = (0..m.ours.n_vocab() as Token).filter(|&t| m.theirs.is_eog(t)).collect();
    assert_eq!(ours, theirs, "{}: end-of-generation tokens", m.name);
    assert!(!ours.is_empty());
}

/// About 200 KB of varied text (not one sentence repeated).
fn long_text() -> String {
    let base = corpus();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut s = String::new();
    let mut i = 0u64;
    while s.len() < 200_000 {
        let piece = &base[rng.gen_range(0..base.len())];
        // Keep special-token text out: a long prompt is plain text.
        if piece.contains('<') {
            continue;
        }
        s.push_str(piece);
        s.push_str(&format!(" {} ", i * 7919 % 100_003));
        i += 1;
    }
    s
}

fn check_speed(m: &Both) {
    let text = long_text();
    let t0 = Instant::now();
    let ours = m.ours.encode(&text, true, false);
    let ours_time = t0.elapsed();
    let t0 = Instant::now();
    let theirs = m.theirs.tokenize(&text, true, false);
    let theirs_time = t0.elapsed();
    eprintln!(
        "{}: {} bytes -> {} tokens in {:?} (llama.cpp {:?})",
        m.name,
        text.len(),
        ours.len(),
        ours_time,
        theirs_time
    );
    assert!(ours == theirs, "{}: the long text tokenizes differently", m.name);
    assert!(
        ours_time.as_secs_f64() < 10.0,
        "{}: encoding 200 KB took {ours_time:?}",
        m.name
    );
}

/// Inputs that each stress one part: one huge word, long whitespace runs,
/// digit runs, byte fallback, text full of near-special-token prefixes.
fn stress_texts(unit: usize) -> Vec<(&'static str, String)> {
    vec![
        ("letters", "a".repeat(unit)),
        ("spaces", " ".repeat(unit)),
        ("newlines", "\n".repeat(unit)),
        ("digits", "7".repeat(unit)),
        ("cjk", "中".repeat(unit / 3)),
        ("byte fallback", "\u{10FFFF}".repeat(unit / 4)),
        ("angle brackets", "<".repeat(unit)),
        ("no spaces", "abcdefghijklmnopqrstuvwxyz0123456789".repeat(unit / 36)),
    ]
}

fn check_stress(m: &Both) {
    // Exactness on small versions (llama.cpp itself is slow on some long ones).
    let small: Vec<String> = stress_texts(3000).into_iter().map(|(_, t)| t).collect();
    check_encode(m, &small);
    for (name, text) in stress_texts(200_000) {
        let t0 = Instant::now();
        let ids = m.ours.encode(&text, true, true);
        let took = t0.elapsed();
        eprintln!(
            "{}: {name}, {} bytes -> {} tokens in {took:?}",
            m.name,
            text.len(),
            ids.len()
        );
        assert!(took.as_secs_f64() < 10.0, "{}: {name} took {took:?}", m.name);
    }
}

// ---------------------------------------------------------------------------
// SmolLM2: byte-level BPE, pre-tokenizer "smollm".

#[test]
fn smollm2_encode_matches_llama_cpp() {
    check_encode(smollm2(), &corpus());
}

#[test]
fn smollm2_encode_random_strings_match_llama_cpp() {
    check_encode(smollm2(), &random_corpus(1, 400));
}

/// Every ASCII control character between letters: SmolLM2's vocabulary
/// has no byte token for some (0x04, 0x06, ...), which llama.cpp drops; the
/// tokenizer fuzz target found these.
#[test]
fn control_characters_match_llama_cpp() {
    let texts: Vec<String> = (1u8..32).chain([127]).map(|b| format!("a{}b", b as char)).collect();
    check_encode(smollm2(), &texts);
    check_encode(gemma3(), &texts);
}

#[test]
fn smollm2_chat_tokens_are_single_ids() {
    let m = &smollm2().ours;
    let start = m.token_id("<|im_start|>").expect("<|im_start|> in vocab");
    let end = m.token_id("<|im_end|>").expect("<|im_end|> in vocab");
    let ids = m.encode("<|im_start|>user\nhi<|im_end|>", false, true);
    assert_eq!(ids.first(), Some(&start));
    assert_eq!(ids.last(), Some(&end));
    assert!(m.is_eog(end));
    // Without parse_special the markers are plain text.
    assert!(!m.encode("<|im_start|>", false, false).contains(&start));
}

#[test]
fn smollm2_decode_matches_llama_cpp() {
    let mut texts = corpus();
    texts.extend(random_corpus(2, 100));
    check_decode(smollm2(), &texts);
}

#[test]
fn smollm2_pieces_match_llama_cpp() {
    check_pieces(smollm2());
}

#[test]
fn smollm2_eog_matches_llama_cpp() {
    check_eog(smollm2());
}

#[test]
fn smollm2_long_text_is_fast() {
    check_speed(smollm2());
}

#[test]
fn smollm2_stress_inputs() {
    check_stress(smollm2());
}

// ---------------------------------------------------------------------------
// Gemma 3: SentencePiece-style with byte fallback, no space prefix.

#[test]
fn gemma3_encode_matches_llama_cpp() {
    check_encode(gemma3(), &corpus());
}

#[test]
fn gemma3_encode_random_strings_match_llama_cpp() {
    check_encode(gemma3(), &random_corpus(3, 400));
}

#[test]
fn gemma3_chat_tokens_are_single_ids() {
    let m = &gemma3().ours;
    let start = m.token_id("<start_of_turn>").expect("<start_of_turn> in vocab");
    let end = m.token_id("<end_of_turn>").expect("<end_of_turn> in vocab");
    let ids = m.encode("<start_of_turn>user\nhi<end_of_turn>", true, true);
    assert_eq!(ids[0], m.bos().expect("Gemma has BOS"));
    assert!(m.add_bos());
    assert_eq!(ids[1], start);
    assert_eq!(ids.last(), Some(&end));
    assert!(m.is_eog(end));
}

#[test]
fn gemma3_decode_matches_llama_cpp() {
    let mut texts = corpus();
    texts.extend(random_corpus(4, 100));
    check_decode(gemma3(), &texts);
}

#[test]
fn gemma3_pieces_match_llama_cpp() {
    check_pieces(gemma3());
}

#[test]
fn gemma3_eog_matches_llama_cpp() {
    check_eog(gemma3());
}

#[test]
fn gemma3_long_text_is_fast() {
    check_speed(gemma3());
}

#[test]
fn gemma3_stress_inputs() {
    check_stress(gemma3());
}

// ---------------------------------------------------------------------------
// Other settings: a real model's tokenizer metadata, with some keys
// replaced, in a tiny all-zero llama model that llama.cpp loads.

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("infllm-tokenizer-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// Writes the tokenizer of `src`, with `overrides` (set or replace), into a
/// one-layer, 16-wide llama model at `path`.
fn synthetic_model(src: &Path, overrides: &[(&str, Value)], path: &Path) {
    const EMBD: u64 = 16;
    let src = GgufFile::open(src).expect("source model");
    let n_vocab = src.get_array("tokenizer.ggml.tokens").expect("tokens").len() as u64;
    let mut w = GgufWriter::new();
    w.add("general.architecture", Value::String("llama".into()));
    w.add("general.name", Value::String("tokenizer test".into()));
    for (k, v) in [
        ("llama.block_count", 1u32),
        ("llama.context_length", 256),
        ("llama.embedding_length", EMBD as u32),
        ("llama.feed_forward_length", 32),
        ("llama.attention.head_count", 2),
        ("llama.attention.head_count_kv", 2),
        ("llama.rope.dimension_count", 8),
        ("llama.vocab_size", n_vocab as u32),
    ] {
        w.add(k, Value::U32(v));
    }
    w.add("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
    for (k, v) in &src.metadata {
        if k.starts_with("tokenizer.") && k != "tokenizer.chat_template" && !overrides.iter().any(|(o, _)| o == k) {
            w.add(k, v.clone());
        }
    }
    for (k, v) in overrides {
        w.add(k, v.clone());
    }
    let zeros = |dims: &[u64]| vec![0u8; dims.iter().product::<u64>() as usize * 4];
    w.add_tensor(
        "token_embd.weight",
        &[EMBD, n_vocab],
        infllm::ggml::GgmlType::F32,
        zeros(&[EMBD, n_vocab]),
    );
    w.add_tensor(
        "output_norm.weight",
        &[EMBD],
        infllm::ggml::GgmlType::F32,
        zeros(&[EMBD]),
    );
    for (name, dims) in [
        ("attn_norm", vec![EMBD]),
        ("attn_q", vec![EMBD, EMBD]),
        ("attn_k", vec![EMBD, EMBD]),
        ("attn_v", vec![EMBD, EMBD]),
        ("attn_output", vec![EMBD, EMBD]),
        ("ffn_norm", vec![EMBD]),
        ("ffn_gate", vec![EMBD, 32]),
        ("ffn_up", vec![EMBD, 32]),
        ("ffn_down", vec![32, EMBD]),
    ] {
        w.add_tensor(
            &format!("blk.0.{name}.weight"),
            &dims,
            infllm::ggml::GgmlType::F32,
            zeros(&dims),
        );
    }
    std::fs::write(path, w.to_bytes()).expect("writing the test model");
}

/// Both sides on `src`'s tokenizer with `overrides`.
fn load_synthetic(name: &str, src: &Path, overrides: &[(&str, Value)], dir: &TempDir) -> Both {
    infllm::ggml::set_quiet_logs(true);
    let path = dir.0.join(format!("{}.gguf", name.replace(' ', "-")));
    synthetic_model(src, overrides, &path);
    let both = Both {
        name: name.to_string(),
        ours: Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap_or_else(|e| panic!("{name}: {e:#}")),
        theirs: RefModel::load(&path).unwrap_or_else(|e| panic!("llama.cpp loading {name}: {e:#}")),
    };
    std::fs::remove_file(&path).ok();
    both
}

#[test]
fn spm_with_space_prefix_and_eos_matches_llama_cpp() {
    // Gemma's vocabulary the Llama 2 way: a space before the text (and after
    // each special token), BOS and EOS added.
    let dir = TempDir::new("spm");
    let m = load_synthetic(
        "Gemma vocab, space prefix",
        &common::gemma3(),
        &[
            ("tokenizer.ggml.add_space_prefix", Value::Bool(true)),
            ("tokenizer.ggml.add_eos_token", Value::Bool(true)),
        ],
        &dir,
    );
    assert!(m.ours.encode("hi", true, false).ends_with(&[m.ours.eos().unwrap()]));
    let plain = &gemma3().ours;
    assert_ne!(
        m.ours.encode("hi", false, false),
        plain.encode("hi", false, false),
        "no space prefix added"
    );
    let mut texts = corpus();
    texts.extend(random_corpus(6, 150));
    check_encode(&m, &texts);
    check_decode(&m, &texts);
}

#[test]
fn bpe_with_bos_and_eos_matches_llama_cpp() {
    let dir = TempDir::new("bpe");
    let m = load_synthetic(
        "SmolLM2 vocab, BOS and EOS",
        &common::smollm2(),
        &[
            ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
            ("tokenizer.ggml.add_eos_token", Value::Bool(true)),
            ("tokenizer.ggml.pre", Value::String("default".into())),
        ],
        &dir,
    );
    assert!(m.ours.add_bos());
    let mut texts = corpus();
    texts.extend(random_corpus(7, 150));
    check_encode(&m, &texts);
    check_decode(&m, &texts);
}

#[test]
fn other_pre_tokenizers_match_llama_cpp() {
    // SmolLM2's vocabulary and merges under other `tokenizer.ggml.pre` values.
    let dir = TempDir::new("pre");
    let mut texts = corpus();
    texts.extend(random_corpus(5, 150));
    // The same probe under every pre-tokenizer: they must not all agree, or
    // the test would not be testing the pre-tokenizers.
    let probe = "I'LL pay 12345 now!!  ok\n\n(x+y)=>z";
    let mut probes: Vec<(&str, Vec<Token>)> = Vec::new();
    for pre in [
        "default",
        "gpt-2",
        "llama-bpe",
        "qwen2",
        "qwen35",
        "starcoder",
        "falcon",
        "deepseek-coder",
        "deepseek-v3",
        "bloom",
        "viking",
        "tekken",
        "gpt-4o",
        "seed-coder",
        "bailingmoe",
        "ufakzeka",
        "chatglm-bpe",
        "stablelm2",
    ] {
        let m = load_synthetic(
            &format!("pre {pre}"),
            &common::smollm2(),
            &[("tokenizer.ggml.pre", Value::String(pre.into()))],
            &dir,
        );
        check_encode(&m, &texts);
        check_decode(&m, &texts[..40]);
        probes.push((pre, m.ours.encode(probe, false, false)));
    }
    let of = |pre: &str| &probes.iter().find(|(p, _)| *p == pre).expect("probed").1;
    for (a, b) in [
        ("default", "gpt-2"),
        ("gpt-2", "llama-bpe"),
        ("default", "starcoder"),
        ("gpt-2", "bloom"),
    ] {
        assert_ne!(of(a), of(b), "pre-tokenizers {a} and {b} split {probe:?} the same way");
    }
}

// ---------------------------------------------------------------------------
// Errors.

fn tokenizer_file(model: &str, pre: Option<&str>) -> GgufFile {
    let mut w = GgufWriter::new();
    w.add("tokenizer.ggml.model", Value::String(model.into()));
    if let Some(pre) = pre {
        w.add("tokenizer.ggml.pre", Value::String(pre.into()));
    }
    let tokens = ["a", "b", "ab"].iter().map(|s| Value::String(s.to_string())).collect();
    w.add("tokenizer.ggml.tokens", Value::Array(ValueType::String, tokens));
    w.add(
        "tokenizer.ggml.merges",
        Value::Array(ValueType::String, vec![Value::String("a b".into())]),
    );
    GgufFile::from_bytes(w.to_bytes()).expect("a valid GGUF")
}

#[test]
fn unsupported_tokenizers_are_named_in_the_error() {
    let err = Tokenizer::from_gguf(&tokenizer_file("bert", None)).unwrap_err();
    assert!(format!("{err:#}").contains("\"bert\""), "{err:#}");
    let err = Tokenizer::from_gguf(&tokenizer_file("gpt2", Some("no-such-pre"))).unwrap_err();
    assert!(format!("{err:#}").contains("\"no-such-pre\""), "{err:#}");
    let err = Tokenizer::from_gguf(&GgufFile::from_bytes(GgufWriter::new().to_bytes()).unwrap()).unwrap_err();
    assert!(format!("{err:#}").contains("tokenizer.ggml.model"), "{err:#}");
    // A minimal gpt2 tokenizer works.
    let t = Tokenizer::from_gguf(&tokenizer_file("gpt2", Some("gpt-2"))).unwrap();
    assert_eq!(t.encode("ab", false, false), [2]);
}

// ---------------------------------------------------------------------------
// Streaming UTF-8.

#[test]
fn utf8_stream_holds_back_split_characters() {
    let text = "aé中😀z";
    let bytes = text.as_bytes();
    // Every way to cut the bytes into two pushes gives the text back, and no
    // push ever returns half a character.
    for cut in 0..=bytes.len() {
        let mut s = Utf8Stream::new();
        let mut out = s.push(&bytes[..cut]);
        assert!(text.starts_with(&out));
        out += &s.push(&bytes[cut..]);
        out += &s.finish();
        assert_eq!(out, text, "cut at {cut}");
    }
    // Byte by byte.
    let mut s = Utf8Stream::new();
    let mut out = String::new();
    for (i, b) in bytes.iter().enumerate() {
        let got = s.push(&[*b]);
        out += &got;
        assert!(text.is_char_boundary(out.len()), "after byte {i}");
    }
    assert_eq!(out + &s.finish(), text);
}

#[test]
fn utf8_stream_replaces_invalid_bytes() {
    let mut s = Utf8Stream::new();
    assert_eq!(s.push(b"a\xffb"), "a\u{FFFD}b");
    assert_eq!(s.push(b"\xe4\xb8"), "");
    assert_eq!(s.finish(), "\u{FFFD}");
    assert_eq!(s.push("ok".as_bytes()), "ok");
}

#[test]
fn utf8_stream_over_byte_fallback_tokens() {
    // Gemma spells rare characters with <0xNN> tokens, one byte each.
    let m = &gemma3().ours;
    let text = "x\u{10FFFF}y𝔘";
    let ids = m.encode(text, false, false);
    let mut s = Utf8Stream::new();
    let mut out = String::new();
    for &t in &ids {
        let piece = s.push(&m.token_to_piece(t, false));
        assert!(!piece.contains('\u{FFFD}'), "a character was split: {ids:?}");
        out += &piece;
    }
    out += &s.finish();
    assert_eq!(out, text);
}
