//! What no file, flag or signal may do to a run: crash it, leave it running
//! unbounded, or lose a conversation (issue 23: the command line and
//! signals). Each bad input gives one `error: ` line and exit code 1; a
//! signal or a closed stdout keeps the session.

mod common;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use infllm::gguf::GgufFile;
use infllm::tokenizer::{ChunkedEncoder, Tokenizer};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("infllm-cli-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The binary with SmolLM2, 2 threads, greedy.
fn infllm(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infllm"));
    cmd.args(["-m", common::smollm2().to_str().unwrap(), "--temp", "0"]);
    if !args.contains(&"-t") {
        cmd.args(["-t", "2"]);
    }
    cmd.args(args).env("HOME", tmp("home")).env_remove("XDG_DATA_HOME");
    cmd
}

fn run(args: &[&str]) -> Output {
    infllm(args).stdin(Stdio::null()).output().expect("run infllm")
}

/// One line on stderr, `error: ` and `needle` in it, exit code 1.
fn assert_one_line_error(out: &Output, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
}

#[test]
fn out_of_range_numeric_flags_give_one_line_and_exit_1() {
    let cases: &[(&[&str], &str)] = &[
        (&["-n", "-5"], "--n-predict"),
        (&["-n", "16777217"], "--n-predict"),
        (&["-c", "16777217"], "--ctx-size"),
        (&["-t", "0"], "--threads"),
        (&["-t", "1025"], "--threads"),
        (&["-b", "0"], "--batch-size"),
        (&["-ub", "16385"], "--ubatch-size"),
        (&["--block-size", "100000"], "--block-size"),
        (&["--block-size", "0"], "--block-size"),
        (&["--n-local", "0"], "--n-local"),
        (&["--n-local", "1048577"], "--n-local"),
        (&["--n-init", "16385"], "--n-init"),
        (&["--topk", "1025"], "--topk"),
        (&["--repr-topk", "0"], "--repr-topk"),
        (&["--chunk", "0"], "--chunk"),
        (&["--chunk", "8193"], "--chunk"),
        (&["--repeat-last-n", "-2"], "--repeat-last-n"),
        (&["-s", "-2"], "--seed"),
        (&["-mg", "256"], "--main-gpu"),
        (&["-ts", "nan"], "--tensor-split"),
        (&["-ts", "1,-1"], "--tensor-split"),
        (&["--block-cache", "16777217"], "--block-cache"),
        (&["-t", "1x"], "--threads"),
        (&["passkey", "--tokens", "0"], "--tokens"),
        (&["passkey", "--junk", "1000001"], "--junk"),
        (&["passkey", "-n", "0"], "--n-predict"),
        (&["bench", "-p", "1048577"], "--n-prompt"),
        (&["bench", "-n", "1,2000000"], "--n-gen"),
        (&["bench", "-d", "16777217"], "--n-depth"),
        (&["bench", "-r", "0"], "--repetitions"),
        (&["bench", "-t", "2000"], "--threads"),
        (&["bench", "--block-size", "100000"], "--block-size"),
        (&["bench", "--ref-max-depth", "16777217"], "--ref-max-depth"),
        (&["bench", "-d", "16777216", "-p", "1000"], "more than 16777216"),
        (&["rpc-server", "-p", "0"], "--port"),
        (&["rpc-server", "-t", "0"], "--threads"),
        // Not a range, but clap's errors too are one line now.
        (&["--no-such-flag"], "--no-such-flag"),
    ];
    for (args, needle) in cases {
        // Sub-commands first, as a user types them.
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_infllm"));
        let out = cmd.args(*args).stdin(Stdio::null()).output().unwrap();
        assert!(out.stdout.is_empty(), "{args:?}: stdout {}", text(&out.stdout));
        assert_one_line_error(&out, needle);
    }
}

#[test]
fn n_predict_minus_one_stops_at_a_default_cap_without_a_context() {
    use clap::Parser as _;
    let limit = |args: &[&str]| {
        let cli = infllm::cli::Cli::try_parse_from([&["infllm"], args].concat()).unwrap();
        cli.generate.predict_limit()
    };
    let cap = Some(infllm::cli::limits::DEFAULT_PREDICT);
    assert_eq!(limit(&[]), cap);
    assert_eq!(limit(&["-n", "-1", "-c", "0"]), cap);
    assert_eq!(limit(&["--attn", "stream"]), cap);
    // A context stops the text: -c for InfLLM, the KV cache for full attention.
    assert_eq!(limit(&["-c", "1000"]), None);
    assert_eq!(limit(&["--attn", "full"]), None);
    assert_eq!(limit(&["-n", "7"]), Some(7));
    let help = text(&run(&["--help"]).stdout);
    assert!(help.contains("without -c: at most 4096"), "{help}");
}

#[test]
fn more_threads_than_cores_run_one_per_core() {
    let _cpu = common::exclusive();
    let start = Instant::now();
    let out = run(&["-p", "Hi", "-n", "2", "-t", "1000"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let cores = std::thread::available_parallelism().unwrap().get();
    assert!(
        err.contains(&format!("threads = {cores} (of -t 1000: one per core)")),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(60), "{:?}", start.elapsed());
}

/// Lines of every kind a tokenizer treats apart: indents, blank lines,
/// CRLF, digits, contractions, punctuation runs, non-ASCII letters and
/// spaces, emoji, special-token text.
fn text_with_many_cuts() -> String {
    let lines = [
        "The grass is green. The sky is blue.",
        "  indented line, two spaces",
        "\tTabbed\tline",
        "",
        "'s and 'll and don't: contractions",
        "12345678901234567890 digits, 3.14159",
        "!!! ??? ... --- === punctuation runs",
        "Ünïcödé lëttërs, 日本語のテキスト, 한국어",
        "\u{3000}ideographic space first",
        "\u{a0}no-break space first",
        "emoji 🙂🚀 and a ZWJ 👩\u{200d}💻",
        "<|im_start|>user",
        "Hello!<|im_end|>",
        "<start_of_turn>model",
        "line with trailing spaces   ",
        "CRLF line\r",
        "\r",
        "\"quoted\" (parenthesised) [bracketed] {braced}",
        "a",
        " leading space",
        "\n\nafter two newlines",
    ];
    let mut s = String::new();
    for i in 0..40 {
        for (j, l) in lines.iter().enumerate() {
            if (i + j) % 3 != 0 {
                s.push_str(l);
                s.push('\n');
            }
        }
    }
    s
}

fn tokenizer(model: &Path) -> Tokenizer {
    Tokenizer::from_gguf(&GgufFile::open(model).unwrap()).unwrap()
}

fn chunked(tok: &Tokenizer, text: &str, piece_bytes: usize, special: (bool, bool)) -> (Vec<i32>, usize) {
    let mut pieces = ChunkedEncoder::new(text.as_bytes(), special.0, special.1).with_piece_bytes(piece_bytes);
    let (mut tokens, mut n_pieces) = (Vec::new(), 0);
    let mut joined = String::new();
    while let Some((piece, t)) = pieces.next_piece(tok).unwrap() {
        joined.push_str(&piece);
        tokens.extend(t);
        n_pieces += 1;
    }
    assert_eq!(joined, text, "the pieces are the text");
    (tokens, n_pieces)
}

#[test]
fn a_text_tokenized_in_pieces_gives_the_tokens_of_the_whole() {
    let text = text_with_many_cuts();
    for model in [common::smollm2(), common::gemma3()] {
        let tok = tokenizer(&model);
        for special in [(true, true), (false, false), (true, false)] {
            let whole = tok.encode(&text, special.0, special.1);
            for piece_bytes in [1, 7, 64, 300, 1 << 20] {
                let (tokens, n) = chunked(&tok, &text, piece_bytes, special);
                assert_eq!(tokens, whole, "{model:?} {special:?}, pieces of {piece_bytes} bytes");
                if piece_bytes == 1 {
                    assert!(n > 500, "{model:?}: only {n} pieces: few cuts tested");
                }
            }
        }
        // Empty: one piece, BOS alone where the model adds it.
        assert_eq!(chunked(&tok, "", 7, (true, true)).0, tok.encode("", true, true));
        // Invalid UTF-8 is an error naming the byte.
        let mut bad = ChunkedEncoder::new(&b"ok\nfine\n\xff\xfe"[..], true, true).with_piece_bytes(4);
        let err = std::iter::from_fn(|| bad.next_piece(&tok).transpose()).find_map(Result::err);
        assert!(format!("{:#}", err.unwrap()).contains("not UTF-8 text (byte 8)"));
    }
}
