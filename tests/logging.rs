//! llama.cpp's logging and token display flags (issue 24): `-lv N` and
//! `-v` filter the log lines by level, `--log-disable` silences stderr and
//! leaves stdout alone, `--log-file` gets the lines too, `-v` lets ggml's
//! own lines through, `--verbose-prompt` lists the prompt's tokens as the
//! tokenizer (and llama.cpp) reads them, `-sp` prints special tokens as
//! llama.cpp's `llama_token_to_piece(..., special = true)` writes them.

mod common;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use infllm::cli::{self, Cli, ParseError};
use infllm::ggml::reference::RefModel;
use infllm::gguf::GgufFile;
use infllm::tokenizer::Tokenizer;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("infllm-logging-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The binary on SmolLM2, greedy, 2 threads, one run at a time.
fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let _one = common::exclusive();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infllm"));
    cmd.args(["-m", common::smollm2().to_str().unwrap(), "--temp", "0", "-t"])
        .arg(common::THREADS.to_string())
        .args(args)
        .env_remove("INFLLM_GGML_LOG")
        .env_remove("GGML_SCHED_DEBUG")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    let out = cmd.output().expect("run infllm");
    if !matches!(out.status.code(), Some(0 | 1)) {
        panic!("{args:?}: exit {:?}; stderr: {}", out.status, text(&out.stderr));
    }
    out
}

fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
    out
}

/// One line on stderr, `error: ` and `needle` in it, exit code 1.
fn assert_one_line_error(out: &Output, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
}

const LOADED: &str = "infllm: loaded ";
// `-fa` with InfLLM attention: a warning, on a run as short as any.
const WARNING: &str = "infllm: -fa has no effect with --attn infllm";
const RUN: [&str; 6] = ["-p", "Hello", "-n", "2", "-fa", "on"];

fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    RUN.iter().copied().chain(extra.iter().copied()).collect()
}

#[test]
fn verbosity_filters_lines_by_level_and_log_disable_silences_stderr_only() {
    let info = ok(&RUN);
    let (err, generated) = (text(&info.stderr), text(&info.stdout));
    assert!(err.contains(LOADED) && err.contains(WARNING), "{err}");
    assert!(err.contains("prompt eval time"), "{err}");
    assert!(
        generated.starts_with("Hello") && generated.len() > "Hello".len(),
        "{generated:?}"
    );

    let warnings = ok(&with(&["-lv", "2"]));
    let err = text(&warnings.stderr);
    assert_eq!(
        err.trim_end(),
        WARNING.to_string() + " (its attention has its own kernels)"
    );
    let errors = ok(&with(&["--log-verbosity", "1"]));
    assert_eq!(text(&errors.stderr), "");

    let disabled = ok(&with(&["--log-disable"]));
    assert_eq!(text(&disabled.stderr), "");
    for out in [&warnings, &errors, &disabled] {
        assert_eq!(text(&out.stdout), generated, "the generated text changed with the log");
    }
}

#[test]
fn log_file_gets_the_lines_and_the_error_of_a_failed_run() {
    let path = tmp("run.log");
    let out = ok(&with(&["--log-file", path.to_str().unwrap(), "--log-prefix"]));
    let log = std::fs::read_to_string(&path).unwrap();
    let err = text(&out.stderr);
    assert!(log.contains(&format!("I {LOADED}")), "{log}");
    assert!(log.contains(&format!("W {WARNING}")), "{log}");
    assert_eq!(log, err, "the file and stderr differ");

    let failed = run(&["-f", "/nonexistent/prompt.txt", "--log-file", path.to_str().unwrap()]);
    assert_one_line_error(&failed, "cannot read /nonexistent/prompt.txt");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text(&failed.stderr));
    // --log-disable: the reason a run failed is still given.
    let failed = run(&["-f", "/nonexistent/prompt.txt", "--log-disable"]);
    assert_one_line_error(&failed, "cannot read /nonexistent/prompt.txt");
}

#[test]
fn verbose_lets_ggml_s_own_lines_through() {
    // ggml's scheduler writes each graph's split as debug lines when asked.
    let split = "## SPLIT #0: CPU";
    let env = [("GGML_SCHED_DEBUG", "1")];
    let args = ["-p", "Hello", "-n", "1"];
    let verbose = run_env(&[&args[..], &["-v"]].concat(), &env);
    assert_eq!(verbose.status.code(), Some(0));
    assert!(text(&verbose.stderr).contains(split), "{}", text(&verbose.stderr));
    // Debug lines are level 5: -lv 4 shows ggml's information, not them.
    let trace = run_env(&[&args[..], &["-lv", "4"]].concat(), &env);
    assert_eq!(trace.status.code(), Some(0));
    assert!(!text(&trace.stderr).contains(split), "{}", text(&trace.stderr));
    assert!(text(&trace.stderr).contains(LOADED));
}

#[test]
fn verbose_prompt_lists_the_prompt_s_tokens_with_their_ids() {
    let prompt = "<|im_start|>user\nHi there, naïve café<|im_end|>\n";
    let out = ok(&[
        "-p",
        prompt,
        "--no-escape",
        "-n",
        "0",
        "--verbose-prompt",
        "--no-display-prompt",
    ]);
    let err = text(&out.stderr);
    let model = common::smollm2();
    let ours = Tokenizer::from_gguf(&GgufFile::open(&model).unwrap()).unwrap();
    infllm::ggml::set_quiet_logs(true);
    let theirs = RefModel::load(&model).unwrap();
    let ids = theirs.tokenize(prompt, true, true);
    assert_eq!(ids, ours.encode(prompt, true, true));
    assert_eq!(ids.first(), Some(&1), "<|im_start|> read as the special token");
    // llama-completion's lines: `%6d -> '%s'`, the piece with special tokens.
    let mut want = format!(
        "infllm: prompt: '{prompt}'\ninfllm: number of tokens in prompt = {}\n",
        ids.len()
    );
    for &id in &ids {
        want += &format!("{id:6} -> '{}'\n", text(&theirs.token_to_piece(id, true)));
    }
    assert!(err.contains(&want), "{err}\nwants:\n{want}");
}

#[test]
fn special_prints_special_tokens_as_llama_cpp_writes_them() {
    infllm::ggml::set_quiet_logs(true);
    let theirs = RefModel::load(&common::smollm2()).unwrap();
    let piece = |t: i32| text(&theirs.token_to_piece(t, true));
    let (im_start, im_end) = (piece(1), piece(2));
    assert_eq!((im_start.as_str(), im_end.as_str()), ("<|im_start|>", "<|im_end|>"));
    assert!(theirs.token_to_piece(1, false).is_empty());

    // The logit bias makes <|im_start|> (1) every token.
    let forced = ["-p", "Hello", "-n", "2", "--no-display-prompt", "-l", "1+100"];
    let shown = ok(&[&forced[..], &["-sp"]].concat());
    assert_eq!(text(&shown.stdout), format!("{im_start}{im_start}\n"));
    let hidden = ok(&forced);
    assert_eq!(text(&hidden.stdout), "\n");
    // The end of text (<|im_end|>) is printed too before generation stops.
    let end = ok(&[
        "-p",
        "Hello",
        "-n",
        "4",
        "--no-display-prompt",
        "-l",
        "2+100",
        "--special",
    ]);
    assert_eq!(text(&end.stdout), format!("{im_end}\n"));
}

#[test]
fn conversation_mode_shows_special_tokens_and_each_turn_s_tokens() {
    let chat = ["-cnv", "-p", "Hello"];
    // -sp: forced <|im_start|> tokens, and the <|im_end|> that ends an answer.
    let forced = ok(&[&chat[..], &["-n", "2", "-l", "1+100", "-sp"]].concat());
    assert_eq!(text(&forced.stdout), "<|im_start|><|im_start|>\n");
    let end = ok(&[&chat[..], &["-n", "4", "-l", "2+100", "-sp"]].concat());
    assert_eq!(text(&end.stdout), "<|im_end|>\n");
    let hidden = ok(&[&chat[..], &["-n", "4", "-l", "2+100"]].concat());
    assert_eq!(text(&hidden.stdout), "\n");

    // --verbose-prompt: the turn as the template renders it, then its
    // tokens as llama.cpp reads that text.
    let err = text(&ok(&[&chat[..], &["-n", "1", "--verbose-prompt"]].concat()).stderr);
    let rest = err.split_once("infllm: prompt: '").expect("a prompt line").1;
    let turn = rest.split_once("'\ninfllm: number of tokens").expect("a count line").0;
    assert!(
        turn.ends_with("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"),
        "{turn:?}"
    );
    infllm::ggml::set_quiet_logs(true);
    let theirs = RefModel::load(&common::smollm2()).unwrap();
    let ids = theirs.tokenize(turn, true, true);
    let mut want = format!("infllm: number of tokens in prompt = {}\n", ids.len());
    for &id in &ids {
        want += &format!("{id:6} -> '{}'\n", text(&theirs.token_to_piece(id, true)));
    }
    assert!(err.contains(&want), "{err}\nwants:\n{want}");
}

fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Cli, String> {
    let argv: Vec<OsString> = std::iter::once("infllm")
        .chain(args.iter().copied())
        .map(OsString::from)
        .collect();
    let env = |var: &str| env.iter().find(|(k, _)| *k == var).map(|(_, v)| v.to_string());
    cli::parse(argv, &env).map_err(|e| match e {
        ParseError::Line(line) => line,
        ParseError::Info(e) => format!("(help or version) {e}"),
    })
}

fn verbosity(args: &[&str], env: &[(&str, &str)]) -> u32 {
    parse(args, env).unwrap().log.settings().unwrap().verbosity
}

#[test]
fn log_flags_parse_as_llama_cpp_s_and_bad_values_get_one_line() {
    assert_eq!(verbosity(&[], &[]), 3);
    for args in [
        &["-lv", "2"][..],
        &["--verbosity=2"],
        &["--log-verbosity", "2"],
        &["-v", "-lv", "2"],
    ] {
        assert_eq!(verbosity(args, &[]), 2, "{args:?}");
    }
    for args in [&["-v"][..], &["--verbose"], &["--log-verbose"], &["-lv", "2", "-v"]] {
        assert_eq!(verbosity(args, &[]), u32::MAX, "{args:?}");
    }
    assert_eq!(verbosity(&[], &[("LLAMA_ARG_LOG_VERBOSITY", "4")]), 4);
    assert_eq!(verbosity(&["-lv", "1"], &[("LLAMA_ARG_LOG_VERBOSITY", "4")]), 1);
    // Every sub-command takes them.
    let tokenize = parse(&["tokenize", "-p", "x", "--log-disable", "--verbose"], &[]).unwrap();
    assert!(tokenize.log.log_disable && tokenize.log.verbose);
    let style = parse(&["--log-prefix", "--log-timestamps", "--log-colors", "off"], &[])
        .unwrap()
        .log
        .settings()
        .unwrap()
        .style;
    assert!(style.prefix && style.timestamps && !style.colors);
    assert!(
        parse(&["--log-colors", "enabled"], &[])
            .unwrap()
            .log
            .settings()
            .unwrap()
            .style
            .colors
    );
    let g = parse(&["-sp", "--verbose-prompt"], &[]).unwrap().generate;
    assert!(g.tokens.special && g.tokens.verbose_prompt);

    for (args, needle) in [
        (&["-lv", "-1"][..], "invalid value '-1' for '--verbosity"),
        (&["-lv", "x"], "invalid value 'x' for '--verbosity"),
        (&["--log-colors", "maybe"], "invalid value 'maybe' for '--log-colors"),
    ] {
        let err = parse(args, &[]).unwrap_err();
        assert!(
            err.starts_with("error: ") && err.contains(needle) && !err.contains('\n'),
            "{args:?}: {err}"
        );
    }
    let unwritable = run(&["-p", "x", "--log-file", "/nonexistent/dir/run.log"]);
    assert_one_line_error(&unwritable, "--log-file /nonexistent/dir/run.log: cannot write");
    let negative = run(&["-p", "x", "-lv", "-1"]);
    assert_one_line_error(&negative, "-1");
}
