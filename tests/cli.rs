//! The `infllm` binary as a user runs it: output streams, errors, exit codes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use infllm::gguf::{GgufWriter, Value};

fn infllm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infllm"))
        .args(args)
        .output()
        .expect("run infllm")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("infllm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A bad input must give one line on stderr, exit code 1, nothing on stdout.
fn assert_clean_error(out: &Output, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {err}");
    assert!(out.stdout.is_empty(), "stdout not empty: {}", text(&out.stdout));
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
}

fn run_model(model: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["-m", model.to_str().unwrap(), "-p", "Hello", "-n", "4"];
    args.extend_from_slice(extra);
    infllm(&args)
}

#[test]
fn broken_model_files_give_one_line_and_exit_1() {
    let real = std::fs::read(common::smollm2()).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.gguf", vec![], "is empty"),
        ("magic.gguf", b"GGML0000000000000000000000".to_vec(), "magic"),
        ("header.gguf", real[..1000].to_vec(), "tensor count 272 is impossible"),
        ("tokens.gguf", real[..300_000].to_vec(), "tokenizer.ggml.tokens"),
        ("data.gguf", real[..real.len() / 2].to_vec(), "past the end"),
        (
            "version.gguf",
            [&b"GGUF"[..], &7u32.to_le_bytes(), &[0u8; 16]].concat(),
            "version 7",
        ),
    ];
    for (name, bytes, needle) in cases {
        let path = tmp(name);
        std::fs::write(&path, bytes).unwrap();
        assert_clean_error(&run_model(&path, &[]), needle);
    }
    assert_clean_error(&run_model(Path::new("/nonexistent/model.gguf"), &[]), "does not exist");
}

#[test]
fn every_kind_of_malformed_file_gives_one_line_and_exit_1() {
    // A small valid file, then byte surgery on it; and the real model cut short.
    let mut w = GgufWriter::new();
    w.add("general.architecture", Value::String("llama".into()));
    w.add("general.alignment", Value::U32(32));
    w.add_tensor("a", &[32, 2], infllm::ggml::GgmlType::F32, vec![0u8; 256]);
    w.add_tensor("b", &[32], infllm::ggml::GgmlType::F32, vec![0u8; 128]);
    let good = w.to_bytes();
    let set = |at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    };
    let mut cases: Vec<Vec<u8>> = (1..10).map(|i| good[..good.len() * i / 10].to_vec()).collect();
    cases.push(set(0, b"GGUG"));
    cases.push(set(4, &1u32.to_le_bytes()));
    cases.push(set(4, &4u32.to_le_bytes()));
    cases.push(set(8, &u64::MAX.to_le_bytes()));
    cases.push(set(16, &u64::MAX.to_le_bytes()));
    cases.push(set(24, &u64::MAX.to_le_bytes())); // first key's length
    let real = std::fs::read(common::smollm2()).unwrap();
    cases.extend([7, 100_000, 1_500_000, 3_000_000].iter().map(|&n| real[..n].to_vec()));
    assert!(cases.len() >= 15);
    for (i, bytes) in cases.into_iter().enumerate() {
        let path = tmp(&format!("bad{i}.gguf"));
        std::fs::write(&path, bytes).unwrap();
        assert_clean_error(&run_model(&path, &[]), "cannot load");
    }
}

#[test]
fn unknown_architecture_is_named() {
    let mut w = GgufWriter::new();
    w.add("general.architecture", Value::String("mamba9".into()));
    let path = tmp("arch.gguf");
    w.write(&path).unwrap();
    assert_clean_error(
        &run_model(&path, &[]),
        "unknown architecture \"mamba9\" (supported: llama",
    );
}

/// `--retrieval` picks a set of defaults (the load line names them), and
/// the flags given beside it override them.
#[test]
fn retrieval_presets_set_their_defaults_and_flags_override_them() {
    let model = common::smollm2();
    let line = |extra: &[&str]| {
        let out = run_model(&model, &[&["-n", "1", "--temp", "0"][..], extra].concat());
        let err = text(&out.stderr);
        assert!(out.status.success(), "{err}");
        let line = err
            .lines()
            .find(|l| l.contains("attention: "))
            .unwrap_or_else(|| panic!("{err}"));
        line[line.find("attention: ").unwrap()..].to_string()
    };
    let sizes = |n_local, topk, span| {
        format!("n_init = 128, n_local = {n_local}, block_size = 128, topk = {topk}, repr_topk = 4, chunk = 512, blocks q8_0/q8_0, span {span} (trained 8192)")
    };
    let vote = ", blocks voted for by the layers, the prompt's last 16 tokens a step each";
    let expected = format!("attention: infllm {}{vote}", sizes(2048, 8, 3200));
    assert_eq!(line(&[]), expected);
    assert_eq!(line(&["--retrieval", "vote"]), expected);
    let paper = format!("attention: infllm {}", sizes(4096, 16, 6272));
    assert_eq!(line(&["--retrieval", "paper"]), paper);
    assert_eq!(
        line(&["--retrieval", "ordered"]),
        format!("{paper}, memory in text order")
    );
    assert_eq!(
        line(&["--retrieval", "paper", "--shared-retrieval", "--tail-steps", "16"]),
        format!("attention: infllm {}{vote}", sizes(4096, 16, 6272))
    );
    assert_eq!(
        line(&["--n-local", "1024", "--topk", "4", "--tail-steps", "1"]),
        format!(
            "attention: infllm {}, blocks voted for by the layers",
            sizes(1024, 4, 1664)
        )
    );
    // StreamingLLM retrieves nothing: the paper's window, no vote.
    let stream = line(&["--attn", "stream"]);
    assert!(
        stream.starts_with("attention: stream n_init = 128, n_local = 4096,"),
        "{stream}"
    );
    assert!(!stream.contains("voted"), "{stream}");
}

#[test]
fn prompt_longer_than_context_is_an_error() {
    let model = common::smollm2();
    let long = "word ".repeat(600);
    let out = infllm(&["-m", model.to_str().unwrap(), "-p", &long, "-c", "256", "-n", "1"]);
    assert_clean_error(&out, "prompt is too long");
}

#[test]
fn same_seed_same_text_and_prompt_echo() {
    let model = common::smollm2();
    let args = [
        "-m",
        model.to_str().unwrap(),
        "-p",
        "Once upon a time",
        "-n",
        "24",
        "--temp",
        "0.9",
        "-s",
        "1234",
    ];
    let a = infllm(&args);
    let b = infllm(&args);
    assert!(a.status.success(), "{}", text(&a.stderr));
    assert_eq!(text(&a.stdout), text(&b.stdout));
    assert!(text(&a.stdout).starts_with("Once upon a time"));
    assert!(
        text(&a.stdout).len() > "Once upon a time".len() + 10,
        "{}",
        text(&a.stdout)
    );
    // Timings go to stderr, like llama.cpp.
    assert!(text(&a.stderr).contains("tokens per second"), "{}", text(&a.stderr));

    let quiet = infllm(&[&args[..], &["--no-display-prompt"]].concat());
    assert_eq!(format!("Once upon a time{}", text(&quiet.stdout)), text(&a.stdout));
}

#[test]
fn tokenize_ids_match_llama_cpp() {
    infllm::ggml::set_quiet_logs(true);
    let model = common::smollm2();
    let s = "Hello world! <|im_start|>user\nnaïve café, 12345 tokens";
    let out = infllm(&["tokenize", "-m", model.to_str().unwrap(), "-p", s, "--ids"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rm = infllm::ggml::reference::RefModel::load(&model).unwrap();
    let want: Vec<String> = rm.tokenize(s, true, true).iter().map(|t| t.to_string()).collect();
    assert_eq!(text(&out.stdout).trim(), format!("[{}]", want.join(", ")));
}

#[test]
fn piped_stdin_is_the_prompt() {
    use std::io::Write as _;
    let model = common::smollm2();
    let mut child = Command::new(env!("CARGO_BIN_EXE_infllm"))
        .args(["-m", model.to_str().unwrap(), "-n", "4", "--temp", "0", "-t", "2"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Once upon a time").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("Once upon a time") && stdout.len() > 20,
        "{stdout:?}"
    );
    assert!(text(&out.stderr).contains("prompt = 4 tokens"), "{}", text(&out.stderr));
}

#[test]
fn a_reverse_prompt_stops_the_text_where_it_appears() {
    let model = common::smollm2();
    let base = [
        "-m",
        model.to_str().unwrap(),
        "-p",
        "1, 2, 3, 4,",
        "-n",
        "40",
        "--temp",
        "0",
    ];
    let full = text(&infllm(&[&base[..], &["--no-display-prompt"]].concat()).stdout);
    // A piece of the greedy text, well after its start.
    let stop: String = full.chars().skip(12).take(4).collect();
    let at = full.find(&stop).unwrap() + stop.len();
    let out = infllm(&[&base[..], &["--no-display-prompt", "-r", &stop]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cut = text(&out.stdout);
    let cut = cut.strip_suffix('\n').unwrap();
    assert!(full.starts_with(cut), "{cut:?} is not the start of {full:?}");
    assert!(
        cut.len() >= at && cut.len() <= at + 8,
        "stopped at {} for {stop:?} ending at {at}: {cut:?}",
        cut.len()
    );
    // `-r` reads escapes as -p does: `\n` stops at the first newline.
    let lines = infllm(&[
        "-m",
        model.to_str().unwrap(),
        "-p",
        "A list:\\n1.",
        "-n",
        "64",
        "--temp",
        "0",
        "-r",
        "\\n",
    ]);
    let printed = text(&lines.stdout);
    let answer = printed.strip_prefix("A list:\n1.").unwrap().strip_suffix('\n').unwrap();
    let first = answer.find('\n').unwrap_or_else(|| panic!("no newline in {answer:?}"));
    assert!(first + 3 >= answer.len(), "went on after the newline: {answer:?}");
}

#[test]
fn a_prompt_cache_reads_only_what_is_new() {
    let model = common::smollm2();
    let cache = tmp("prompt.cache");
    // Blocks on disk from the first: in the kept file the cache names.
    let blocks = tmp("prompt.cache.blocks");
    let _ = std::fs::remove_file(&cache);
    let _ = std::fs::remove_file(&blocks);
    let doc: String = (0..40).map(|i| format!("Item {i} is a red ball. ")).collect();
    let small = [
        "--n-init",
        "8",
        "--n-local",
        "64",
        "--block-size",
        "32",
        "--topk",
        "2",
        "--chunk",
        "32",
        "--mem-budget",
        "0",
    ];
    let run = |prompt: &str, extra: &[&str]| {
        let mut args = vec!["-m", model.to_str().unwrap(), "-p", prompt, "-n", "8", "--temp", "0"];
        args.extend_from_slice(&small);
        args.extend_from_slice(&["--no-display-prompt", "--prompt-cache", cache.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let out = infllm(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        let line = err.lines().find(|l| l.contains("prompt tokens restored")).unwrap();
        // "...: HELD of TOTAL prompt tokens restored in T s"
        let words: Vec<&str> = line.rsplit(": ").next().unwrap().split(' ').collect();
        (
            text(&out.stdout),
            (words[0].parse::<usize>().unwrap(), words[2].parse::<usize>().unwrap()),
        )
    };
    let (first, (held, n)) = run(&doc, &[]);
    assert_eq!(held, 0);
    assert!(n > 300, "{n}");
    let saved = std::fs::read(&cache).unwrap();
    let saved_blocks = std::fs::read(&blocks).unwrap();
    // The same prompt again: all but its last token come from the cache,
    // and the answer is the same to the bit (the same steps ran).
    let (again, restored) = run(&doc, &[]);
    assert_eq!(restored, (n - 1, n));
    assert_eq!(again, first);
    // A longer prompt reads only its new part; -ro leaves the cache as it
    // was, and its block file (the new part forms blocks there).
    let more_items: String = (40..48).map(|i| format!("Item {i} is a red ball. ")).collect();
    let longer = format!("{doc}{more_items}Which item is blue?");
    let (_, (held, more)) = run(&longer, &["--prompt-cache-ro"]);
    assert_eq!(held, n - 1);
    assert!(more > n + 64, "{more}");
    assert_eq!(std::fs::read(&cache).unwrap(), saved);
    assert_eq!(std::fs::read(&blocks).unwrap(), saved_blocks);
    // Another prompt starts over.
    let (_, (held, _)) = run("Something else entirely.", &["--prompt-cache-ro"]);
    assert_eq!(held, 0);
    // Other attention settings: refused in one line, the cache kept.
    let mut args = vec![
        "-m",
        model.to_str().unwrap(),
        "-p",
        &doc,
        "--prompt-cache",
        cache.to_str().unwrap(),
    ];
    args.extend_from_slice(&small);
    args.extend_from_slice(&["--n-local", "128"]);
    assert_clean_error(
        &infllm(&args),
        "saved with other attention settings: --n-local 64 (now 128)",
    );
    assert_eq!(std::fs::read(&cache).unwrap(), saved);
}
