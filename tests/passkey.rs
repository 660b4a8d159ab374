//! The passkey task at 12K tokens (1.5x SmolLM2's 8K training context),
//! through the `infllm passkey` command: InfLLM finds the key at 10% and 50%
//! of the text; StreamingLLM (no retrieval) cannot see a key that left its
//! window.
//!
//! With the defaults (`--retrieval vote`: a 2048-token window, 8 blocks of
//! 128 voted for by the upper layers) both keys lie in memory blocks and
//! must be retrieved (a key still in the window, at 90%, is left to the
//! benchmark: within the window InfLLM is the model's own attention,
//! tests/model.rs). `--share-prefix` evaluates
//! 1.9 prompts' worth instead of 2 (12K rather than 16K since session 18:
//! 5.4 minutes for the InfLLM test on 2 cores; the StreamingLLM one reads
//! 6K tokens); the benchmark script runs
//! 32K-128K with keys from 5% to 95% of the text. (Reduced
//! settings were tried for speed: with a 1024-token window this 135M model
//! fails at 90% with 4 blocks and at 10% with 8, so they test the model's
//! limits more than the engine.)

mod common;

use std::process::Command;

fn passkey(extra: &[&str]) -> String {
    let mut args = vec!["--tokens", "12288"];
    args.extend_from_slice(extra);
    run(&args)
}

fn run(extra: &[&str]) -> String {
    let _one_at_a_time = common::exclusive();
    let model = common::smollm2();
    let mut args = vec!["passkey", "-m", model.to_str().unwrap(), "-t", "2"];
    args.extend_from_slice(extra);
    let out = Command::new(env!("CARGO_BIN_EXE_infllm"))
        .args(&args)
        .output()
        .expect("run infllm");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{stdout}");
    stdout
}

#[test]
fn infllm_finds_the_key_anywhere_in_12k_tokens() {
    let out = passkey(&["--attn", "infllm", "--pos", "0.1,0.5", "--share-prefix"]);
    assert_eq!(out.lines().filter(|l| l.ends_with(": pass")).count(), 2, "{out}");
    assert!(out.contains("accuracy 2/2 (100%)"), "{out}");
    for line in out.lines().filter(|l| l.starts_with("passkey: length ")) {
        let n: usize = line["passkey: length ".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((12_000..12_600).contains(&n), "prompt of {n} tokens: {line}");
    }
}

/// 6K tokens: the key at 10% (~600) is past the 128 initial tokens and
/// more than the 4096-token window before the question.
#[test]
fn streaming_llm_misses_a_key_outside_its_window() {
    let out = run(&["--tokens", "6144", "--attn", "stream", "--pos", "0.1"]);
    assert!(out.contains(": FAIL"), "{out}");
    assert!(out.contains("accuracy 0/1"), "{out}");
}

/// Runs that go back to a snapshot of the text they share answer exactly as
/// runs from scratch: same lines, in key order. Small settings (blocks of 32,
/// a 256-token window) so that blocks, initial tokens and window moves are
/// all part of the shared state; this model then fails some of the runs,
/// which must fail the same way.
#[test]
fn shared_prefix_runs_answer_as_fresh_runs() {
    let settings = [
        "--tokens",
        "1500",
        "--n-local",
        "256",
        "--chunk",
        "128",
        "--block-size",
        "32",
    ];
    // Two keys at the same depth: the second run goes back to the very
    // point the first one left from.
    let extra = ["--topk", "2", "--n-init", "16", "--pos", "0.9,0.5", "--trials", "2"];
    let lines = |share: bool| {
        let mut args = [settings.as_slice(), extra.as_slice()].concat();
        if share {
            args.push("--share-prefix");
        }
        let out = run(&args);
        let mut runs: Vec<String> = out
            .lines()
            .filter(|l| l.starts_with("passkey: length "))
            .map(String::from)
            .collect();
        runs.sort_by_key(|l| {
            l.split("filler ")
                .nth(1)
                .and_then(|f| f.split('/').next()?.parse::<usize>().ok())
        });
        runs
    };
    let fresh = lines(false);
    assert_eq!(fresh.len(), 4);
    assert_eq!(lines(true), fresh);
}

/// `--grid` runs its five depths; `--trace-retrieval` writes a JSON line
/// per retrieval and a header per run, and the block it names as the key's
/// is the one holding the key's tokens, ranked as the line's picks say.
/// Small settings (a 256-token window, blocks of 32, 2 picked) so that keys
/// at 10% to 50% of 1,500 tokens lie in blocks; the paper's retrieval, where
/// a layer attends the blocks it ranks first (with the vote, the upper
/// layers' picks: tests/infllm_reference.rs checks those traces).
#[test]
fn the_grid_runs_its_depths_and_the_trace_names_the_key_s_block() {
    let trace = std::env::temp_dir().join(format!("infllm-trace-{}.jsonl", std::process::id()));
    let settings = "--tokens 1500 --n-local 256 --chunk 128 --block-size 32 --topk 2 --n-init 16 --retrieval paper";
    let mut args: Vec<&str> = settings.split(' ').collect();
    args.extend(["--grid", "--filler", "varied", "-o", "csv", "--trace-retrieval"]);
    args.push(trace.to_str().unwrap());
    let csv = run(&args);
    let depths: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').nth(1).unwrap()).collect();
    assert_eq!(depths, ["0.1", "0.3", "0.5", "0.7", "0.9"], "{csv}");
    let text = std::fs::read_to_string(&trace).unwrap();
    std::fs::remove_file(&trace).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let headers: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("prompt_len").is_some()).collect();
    assert_eq!(headers.len(), 5);
    let mut checked = 0;
    for h in headers {
        let run = &h["run"];
        let span = h["key_tokens"].as_array().unwrap();
        let (start, end) = (span[0].as_u64().unwrap(), span[1].as_u64().unwrap());
        assert!(end > start + 10 && end < h["prompt_len"].as_u64().unwrap(), "{h}");
        let want: Vec<u64> = ((start - 16) / 32..=(end - 1 - 16) / 32).collect();
        let n_past = h["prompt_len"].as_u64().unwrap() - 1;
        for l in lines.iter().filter(|l| &l["run"] == run && l["n_past"] == n_past) {
            let blocks: Vec<u64> = l["key_blocks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap())
                .collect();
            assert_eq!(blocks, want, "{l}");
            let n_blocks = l["n_blocks"].as_u64().unwrap();
            assert_eq!(l["head_scores"].as_array().unwrap().len() as u64, 9 * n_blocks);
            let selected = l["selected"].as_array().unwrap();
            for (b, rank) in blocks.iter().zip(l["key_ranks"].as_array().unwrap()) {
                match rank.as_u64() {
                    Some(r) => {
                        assert!(*b < n_blocks);
                        assert_eq!(selected.iter().any(|s| s == b), r < 2, "{l}");
                        checked += 1;
                    }
                    None => assert!(*b >= n_blocks, "{l}"),
                }
            }
        }
    }
    // Keys at 10%, 30% and 50% are in blocks: 30 layers each, at least.
    assert!(checked >= 90, "{checked} key ranks checked");
}
