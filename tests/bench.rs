//! `infllm bench`: its JSON has every field a row promises, and its tokens/s
//! are tokens over time the run really spent (a bench reporting fiction
//! fails: the timed runs must fill most of the wall time of the process).

mod common;

use std::process::Command;
use std::time::Instant;

use serde_json::Value;

#[test]
fn json_rows_have_the_fields_and_true_speeds() {
    let model = common::smollm2();
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_infllm"))
        .args(["bench", "-m", model.to_str().unwrap(), "-t", "2", "-o", "json"])
        .args(["-p", "256", "-n", "32", "-d", "0,600", "-r", "2", "--no-warmup"])
        .args(["--ref-max-depth", "100"])
        .output()
        .expect("run infllm bench");
    let wall = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("stdout is JSON");

    let tests: Vec<(&str, u64)> = rows
        .iter()
        .map(|r| (r["test"].as_str().unwrap(), r["n_depth"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        tests,
        [("pp256", 0), ("tg32", 0), ("pp256 @ d600", 600), ("tg32 @ d600", 600)]
    );

    let mut timed_ns = 0u64;
    for r in &rows {
        for key in ["model", "model_type", "attn", "type_k", "type_v", "test"] {
            assert!(r[key].is_string(), "{key} missing in {r}");
        }
        for key in ["n_threads", "n_prompt", "n_gen", "n_depth"] {
            assert!(r[key].is_u64(), "{key} missing in {r}");
        }
        assert_eq!(r["attn"], "infllm");
        assert_eq!(r["type_k"], "q8_0");
        assert!(r["block_memory_bytes"].is_u64(), "block memory missing in {r}");
        let n = r["n_prompt"].as_u64().unwrap() + r["n_gen"].as_u64().unwrap();
        timed_ns += check_timing(&r["infllm"], n);
        if r["n_depth"] == 0 {
            assert!(r["llama_cpp_na"].is_null(), "{r}");
            let ours = r["infllm"]["avg_ts"].as_f64().unwrap();
            let theirs = r["llama_cpp"]["avg_ts"].as_f64().unwrap();
            let ratio = r["ratio"].as_f64().unwrap();
            assert!((ratio - ours / theirs).abs() < 1e-9 * ratio, "{r}");
            timed_ns += check_timing(&r["llama_cpp"], n);
        } else {
            // Deeper than --ref-max-depth: n/a with the reason, no number.
            assert!(r["llama_cpp"].is_null() && r["ratio"].is_null(), "{r}");
            assert!(r["llama_cpp_na"].as_str().unwrap().contains("--ref-max-depth"), "{r}");
        }
    }
    let timed = timed_ns as f64 * 1e-9;
    assert!(
        timed <= wall && timed >= 0.5 * wall,
        "timed runs {timed:.2} s of a {wall:.2} s process: the reported speeds are not what ran"
    );
}

/// Checks one engine's timing object; returns its total timed nanoseconds.
fn check_timing(t: &Value, n_tokens: u64) -> u64 {
    let ns: Vec<u64> = t["samples_ns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    let ts: Vec<f64> = t["samples_ts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(ns.len(), 2, "one sample per repetition: {t}");
    for (&ns, &ts) in ns.iter().zip(&ts) {
        let expect = n_tokens as f64 / (ns as f64 * 1e-9);
        assert!(
            (ts - expect).abs() <= 1e-6 * expect,
            "{ts} t/s is not {n_tokens} tokens in {ns} ns"
        );
    }
    let avg = ts.iter().sum::<f64>() / ts.len() as f64;
    assert!((t["avg_ts"].as_f64().unwrap() - avg).abs() <= 1e-9 * avg, "{t}");
    assert!(t["stddev_ts"].as_f64().unwrap() >= 0.0);
    assert!(
        t["peak_rss_bytes"].as_u64().unwrap() > 50 << 20,
        "peak RSS below the model's size: {t}"
    );
    ns.iter().sum()
}

/// On a terminal each row shows once, in the table as it grows (stderr and
/// stdout are the same screen there).
#[test]
fn a_terminal_sees_each_row_once() {
    let model = common::smollm2();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infllm"));
    cmd.args(["bench", "-m", model.to_str().unwrap(), "-t", "2"]).args([
        "-p",
        "32",
        "-n",
        "4",
        "-r",
        "1",
        "--no-warmup",
    ]);
    let options = rexpect::reader::Options {
        timeout_ms: Some(300_000),
        strip_ansi_escape_codes: true,
    };
    let mut p = rexpect::session::spawn_with_options(cmd, options).expect("spawn infllm bench on a pty");
    let screen = p.exp_eof().expect("bench ends");
    assert_eq!(screen.matches("| pp32 |").count(), 1, "{screen}");
    assert_eq!(screen.matches("| tg4 |").count(), 1, "{screen}");
    assert_eq!(screen.matches("| model |").count(), 1, "{screen}");
    assert!(!screen.contains("bench: |"), "{screen}");
}
