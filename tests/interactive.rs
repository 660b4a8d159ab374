//! llama-completion's interactive mode without a chat template (`-i
//! -no-cnv`, `-if`, `--in-prefix` / `--in-suffix`): the text after each
//! input is llama.cpp's greedy continuation of the same tokens, fed the way
//! llama.cpp's completion tool feeds them.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use infllm::ggml::reference::{RefContext, RefModel, RefParams};

const PROMPT: &str = "The capital of France is";
const N: usize = 6;

/// infllm with `args`, its stdin the lines of `input`.
fn infllm(args: &[&str], input: &str) -> Output {
    let model = common::smollm2();
    let mut child = Command::new(env!("CARGO_BIN_EXE_infllm"))
        .args([
            "-m",
            model.to_str().unwrap(),
            "--attn",
            "full",
            "-c",
            "512",
            "--temp",
            "0",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run infllm");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// llama.cpp's greedy tokens after `batch` is decoded, `n` of them, the
/// last one not decoded (as the completion tool leaves it before an input).
fn greedy(ctx: &mut RefContext<'_>, batch: &[i32], n: usize) -> Vec<i32> {
    let mut logits = ctx.decode(batch, 512, false).unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let t = common::argmax_of(&logits);
        out.push(t);
        if out.len() < n {
            logits = ctx.decode(&[t], 512, false).unwrap();
        }
    }
    out
}

fn pieces(rm: &RefModel, tokens: &[i32]) -> String {
    let bytes: Vec<u8> = tokens.iter().flat_map(|&t| rm.token_to_piece(t, false)).collect();
    String::from_utf8(bytes).unwrap()
}

fn reference(rm: &RefModel) -> RefContext<'_> {
    infllm::ggml::set_quiet_logs(true);
    let p = RefParams {
        n_ctx: 512,
        n_batch: 512,
        n_ubatch: 512,
        n_threads: common::THREADS,
        flash_attn: None,
        cache_types: None,
    };
    RefContext::new(rm, p).unwrap()
}

#[test]
fn each_input_goes_between_the_affixes_and_the_model_goes_on_from_it() {
    let _one_at_a_time = common::exclusive();
    let (prefix, input, suffix) = ("\nQ: ", "What about Italy?", "\nA:");
    let n = N.to_string();
    let args = [
        "-i",
        "-no-cnv",
        "-p",
        PROMPT,
        "-n",
        &n,
        "--in-prefix",
        "\\nQ: ",
        "--in-suffix",
        "\\nA:",
    ];
    let out = infllm(&args, &format!("{input}\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let rm = RefModel::load(&common::smollm2()).unwrap();
    let mut ctx = reference(&rm);
    let first = greedy(&mut ctx, &rm.tokenize(PROMPT, true, true), N);
    // The last token sampled goes in with the input, which names no special token.
    let batch: Vec<i32> = [&first[N - 1..], &rm.tokenize(prefix, false, true)[..]]
        .concat()
        .into_iter()
        .chain(rm.tokenize(input, false, false))
        .chain(rm.tokenize(suffix, false, true))
        .collect();
    let second = greedy(&mut ctx, &batch, N);
    // Piped, the input is not echoed; the end of the input ends the run.
    let want = format!(
        "{PROMPT}{}{prefix}{suffix}{}{prefix}\n",
        pieces(&rm, &first),
        pieces(&rm, &second)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
}

#[test]
fn interactive_first_waits_and_an_empty_line_gives_the_turn_back() {
    let _one_at_a_time = common::exclusive();
    let n = N.to_string();
    let out = infllm(&["-if", "-no-cnv", "-p", PROMPT, "-n", &n, "--in-prefix", "> "], "\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let rm = RefModel::load(&common::smollm2()).unwrap();
    let first = greedy(&mut reference(&rm), &rm.tokenize(PROMPT, true, true), N);
    let want = format!("{PROMPT}> {}> \n", pieces(&rm, &first));
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
}

#[test]
fn a_line_ending_in_a_backslash_goes_on_with_the_next() {
    let _one_at_a_time = common::exclusive();
    let n = N.to_string();
    // A last `/` gives the turn back without a newline (dropped either way).
    let out = infllm(&["-if", "-no-cnv", "-p", PROMPT, "-n", &n], "Paris,\\\nthe city/\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let rm = RefModel::load(&common::smollm2()).unwrap();
    let mut ctx = reference(&rm);
    ctx.decode(&rm.tokenize(PROMPT, true, true), 512, false).unwrap();
    let first = greedy(&mut ctx, &rm.tokenize("Paris,\nthe city", false, false), N);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{PROMPT}{}\n", pieces(&rm, &first))
    );
}

#[test]
fn without_a_prompt_the_user_starts() {
    let _one_at_a_time = common::exclusive();
    let n = N.to_string();
    let out = infllm(&["-i", "-no-cnv", "-n", &n], &format!("{PROMPT}\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let rm = RefModel::load(&common::smollm2()).unwrap();
    // SmolLM2 adds no BOS: the input is all the model reads.
    let first = greedy(&mut reference(&rm), &rm.tokenize(PROMPT, false, false), N);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", pieces(&rm, &first))
    );
}
