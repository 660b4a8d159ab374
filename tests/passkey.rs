//! The passkey task at 16K tokens (twice SmolLM2's 8K training context),
//! through the `infllm passkey` command: InfLLM finds the key at 10%, 50% and
//! 90% of the text; StreamingLLM (no retrieval) cannot see a key that left
//! its window.
//!
//! Smaller settings than the defaults (a 1024-token window, 4 blocks per
//! chunk) keep this test to a few minutes on 2 cores; the benchmark script
//! runs the defaults at 32K-128K.

mod common;

use std::process::Command;

fn passkey(extra: &[&str]) -> String {
    let _one_at_a_time = common::exclusive();
    let model = common::smollm2();
    let mut args = vec!["passkey", "-m", model.to_str().unwrap(), "--tokens", "16384", "-t", "2"];
    args.extend_from_slice(&["--n-local", "1024", "--topk", "4", "--n-init", "64"]);
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
fn infllm_finds_the_key_anywhere_in_16k_tokens() {
    let out = passkey(&["--attn", "infllm", "--pos", "0.1,0.5,0.9"]);
    assert_eq!(out.lines().filter(|l| l.ends_with(": pass")).count(), 3, "{out}");
    assert!(out.contains("accuracy 3/3 (100%)"), "{out}");
    for line in out.lines().filter(|l| l.starts_with("passkey: length ")) {
        let n: usize = line["passkey: length ".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((16_000..16_800).contains(&n), "prompt of {n} tokens: {line}");
    }
}

#[test]
fn streaming_llm_misses_a_key_outside_its_window() {
    let out = passkey(&["--attn", "stream", "--pos", "0.5"]);
    assert!(out.contains(": FAIL"), "{out}");
    assert!(out.contains("accuracy 0/1"), "{out}");
}
