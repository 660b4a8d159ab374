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
        (&["--block-cache", "-0.5"], "--block-cache"),
        (&["--block-cache", "inf"], "--block-cache"),
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

/// A running infllm whose stderr is read line by line.
struct Running {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: Vec<String>,
}

impl Running {
    fn start(mut cmd: Command, stdin: &str) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start infllm");
        let mut input = child.stdin.take().unwrap();
        let stdin = stdin.to_string();
        // A pipe holds 64 KiB: write the rest while infllm reads.
        std::thread::spawn(move || input.write_all(stdin.as_bytes()));
        let stderr = child.stderr.take().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        Self {
            child,
            lines,
            stderr: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `marker`.
    fn wait_for(&mut self, marker: &str) {
        while !self.stderr.last().is_some_and(|l| l.contains(marker)) {
            let line = self.lines.recv_timeout(Duration::from_secs(120));
            let line = line.unwrap_or_else(|e| panic!("no {marker:?} ({e}); stderr: {:?}", self.stderr));
            self.stderr.push(line);
        }
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap();
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Exit code and all of stderr, within `limit` of now.
    fn finish(mut self, limit: Duration) -> (Option<i32>, Vec<String>) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("still running after {limit:?}; stderr: {:?}", self.stderr);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stderr.push(line);
        }
        (status.code(), self.stderr)
    }
}

/// About 36,000 tokens: at the 2 test threads, minutes of prefill.
fn long_text() -> String {
    " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.".repeat(1500)
}

/// Steps of 32 tokens: a signal is seen within one of them.
const SHORT_STEPS: [&str; 2] = ["--chunk", "32"];

/// A piped chat turn with `session`, with the attention flags of the runs
/// that saved it.
fn chat_with(session: &Path, extra: &[&str]) -> Command {
    let mut args = vec!["-cnv", "--session", session.to_str().unwrap()];
    args.extend_from_slice(&SHORT_STEPS);
    args.extend_from_slice(extra);
    infllm(&args)
}

/// The session loads: a next turn restores it; returns the tokens it held.
fn assert_session_loads(session: &Path) -> usize {
    let mut child = chat_with(session, &["-n", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Hi").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let held = err
        .split("restored: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok());
    held.unwrap_or_else(|| panic!("not restored: {err}"))
}

#[test]
fn sigterm_during_a_prefill_saves_what_was_read_and_exits_143() {
    let _cpu = common::exclusive();
    let session = tmp("sigterm.session");
    let _ = std::fs::remove_file(&session);
    let mut chat = Running::start(chat_with(&session, &[]), &long_text());
    chat.wait_for("chat template");
    std::thread::sleep(Duration::from_millis(1500));
    chat.signal("TERM");
    let (code, stderr) = chat.finish(Duration::from_secs(60));
    assert_eq!(code, Some(143), "{stderr:?}");
    assert!(stderr.iter().any(|l| l.contains("session saved")), "{stderr:?}");
    assert_eq!(stderr.last().unwrap(), "infllm: stopped by SIGTERM");
    let held = assert_session_loads(&session);
    assert!(held > 0 && held < 36_000, "{held} tokens held");
}

#[test]
fn ctrl_c_twice_during_a_prefill_still_saves_the_session() {
    let _cpu = common::exclusive();
    let session = tmp("sigint.session");
    let _ = std::fs::remove_file(&session);
    let mut chat = Running::start(chat_with(&session, &[]), &long_text());
    chat.wait_for("chat template");
    std::thread::sleep(Duration::from_millis(1500));
    chat.signal("INT");
    chat.signal("INT");
    let (code, stderr) = chat.finish(Duration::from_secs(60));
    assert_eq!(code, Some(130), "{stderr:?}");
    assert!(stderr.iter().any(|l| l.contains("[interrupted: ")), "{stderr:?}");
    assert!(stderr.iter().any(|l| l.contains("session saved")), "{stderr:?}");
    assert!(assert_session_loads(&session) > 0);
}

#[test]
fn ctrl_c_during_a_completion_prefill_stops_it_with_exit_130() {
    let _cpu = common::exclusive();
    let file = tmp("long.txt");
    std::fs::write(&file, long_text()).unwrap();
    let mut args = vec!["-f", file.to_str().unwrap(), "-n", "4", "--no-display-prompt"];
    args.extend_from_slice(&SHORT_STEPS);
    let mut run = Running::start(infllm(&args), "");
    run.wait_for("n_ctx = ");
    std::thread::sleep(Duration::from_millis(1500));
    run.signal("INT");
    // The whole prefill would take minutes: it stopped at a step.
    let (code, stderr) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(130), "{stderr:?}");
    assert_eq!(stderr.last().unwrap(), "infllm: stopped by SIGINT");
    // llama.cpp's timing lines still come, for what was read.
    let timing = stderr
        .iter()
        .find(|l| l.contains("prompt eval time"))
        .expect("timings after Ctrl-C");
    let read: usize = timing
        .split(" / ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(read > 0, "{timing}");
}

#[test]
fn full_attention_past_the_training_context_warns_and_fa_with_infllm_says_it_does_nothing() {
    let warned = |args: &[&str], line: &str| {
        let out = run(args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stderr).lines().filter(|l| *l == line).count(),
            1,
            "{}",
            text(&out.stderr)
        );
    };
    warned(
        &["--attn", "full", "-c", "9000", "-p", "hi", "-n", "1"],
        "infllm: warning: -c 9000 is past the model's training context (8192): full attention degrades there \
         (--attn infllm reads past it)",
    );
    warned(
        &["-fa", "on", "-p", "hi", "-n", "1"],
        "infllm: -fa has no effect with --attn infllm (its attention has its own kernels)",
    );
}

#[test]
fn conversation_flags_without_conversation_mode_are_refused() {
    let session = tmp("completion.session");
    for (args, message) in [
        (
            &["-p", "hi", "-sys", "be brief"][..],
            "error: -sys / -sysf apply in conversation mode only: add -cnv",
        ),
        (
            &["-p", "hi", "--session", session.to_str().unwrap()][..],
            "error: --session keeps a conversation: add -cnv (in completion mode, --prompt-cache keeps a prompt's memory)",
        ),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(text(&out.stderr), format!("{message}\n"));
        assert!(!session.exists());
    }
}

#[test]
fn a_session_resumed_with_another_system_prompt_is_refused_and_kept() {
    let _cpu = common::exclusive();
    let session = tmp("sys.session");
    let _ = std::fs::remove_file(&session);
    let turn = |sys: &str| {
        Running::start(chat_with(&session, &["-n", "2", "-sys", sys]), "Hello.").finish(Duration::from_secs(120))
    };
    assert_eq!(turn("You are brief.").0, Some(0));
    let saved = std::fs::read(&session).unwrap();
    assert_eq!(turn("You are brief.").0, Some(0), "the same -sys goes on");
    let saved_again = std::fs::read(&session).unwrap();
    let (code, stderr) = turn("You are a pirate.");
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        [format!(
            "error: session file {}: its conversation has another system prompt (\"You are brief.\"): \
             drop -sys / -sysf to go on with it, or start another session",
            session.display()
        )]
    );
    assert_eq!(std::fs::read(&session).unwrap(), saved_again);
    assert_ne!(saved, saved_again);
}

#[test]
fn a_closed_stdout_ends_the_chat_with_one_line_and_the_session_saved() {
    let _cpu = common::exclusive();
    let session = tmp("pipe.session");
    let _ = std::fs::remove_file(&session);
    let mut chat = Running::start(
        chat_with(&session, &["-n", "256"]),
        "Write a very long story about a dragon who learns to cook.",
    );
    // `| head -c 5`: five bytes read, then the pipe closed.
    let mut stdout = chat.child.stdout.take().unwrap();
    stdout.read_exact(&mut [0u8; 5]).unwrap();
    drop(stdout);
    let (code, stderr) = chat.finish(Duration::from_secs(120));
    assert_eq!(code, Some(1), "{stderr:?}");
    let errors: Vec<_> = stderr.iter().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(
        errors,
        ["error: cannot write the answer: Broken pipe (os error 32)"],
        "{stderr:?}"
    );
    assert!(stderr.iter().any(|l| l.contains("session saved")), "{stderr:?}");
    // The turn and the answer so far are kept.
    assert!(assert_session_loads(&session) > 10);
}

#[test]
fn a_prompt_file_longer_than_the_context_is_refused_before_it_is_read() {
    let _cpu = common::exclusive();
    // 4 GiB that take no disk (a sparse file): refused by its size alone.
    let huge = tmp("huge.txt");
    std::fs::File::create(&huge).unwrap().set_len(4 << 30).unwrap();
    let huge = huge.to_str().unwrap();
    let start = Instant::now();
    for mode in [&["--attn", "full", "-c", "4096"][..], &["-c", "0"]] {
        let out = run(&[&["-f", huge, "-n", "2"], mode].concat());
        assert_one_line_error(&out, "is too long: 4294967296 bytes, at least");
    }
    assert!(start.elapsed() < Duration::from_secs(30), "{:?}", start.elapsed());
    // A file whose size passes: its tokens are counted before any output,
    // in completion and in chat mode (-f is the first message).
    let long = tmp("long-prompt.txt");
    std::fs::write(&long, long_text()).unwrap();
    let long = long.to_str().unwrap();
    assert_one_line_error(&run(&["-f", long, "-c", "10000"]), "more than 10000 tokens");
    assert_one_line_error(&run(&["-cnv", "-f", long, "-c", "10000"]), "more than 10000 tokens");
    assert_one_line_error(&run(&["-cnv", "-sysf", long, "-c", "10000"]), "more than 10000 tokens");
}

#[test]
fn sigterm_at_the_chat_prompt_saves_the_session_and_exits_143() {
    use rexpect::process::wait::WaitStatus;
    let _cpu = common::exclusive();
    let session = tmp("repl.session");
    let _ = std::fs::remove_file(&session);
    let options = rexpect::reader::Options {
        timeout_ms: Some(120_000),
        strip_ansi_escape_codes: true,
    };
    let cmd = chat_with(&session, &["-n", "4", "--color", "off"]);
    let mut repl = rexpect::session::spawn_with_options(cmd, options).expect("infllm on a pty");
    repl.exp_string("> ").expect("first prompt");
    repl.send_line("Hi").unwrap();
    repl.exp_regex("\n\r*> ").expect("the prompt after the answer");
    // Waiting for a line, the REPL still saves its memory.
    let pid = repl.process.child_pid.to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let (rest, _) = repl.exp_regex("stopped by SIGTERM").expect("a line");
    assert!(rest.contains("session saved"), "{rest}");
    assert!(matches!(repl.process.wait(), Ok(WaitStatus::Exited(_, 143))));
    assert!(assert_session_loads(&session) > 0);
}
