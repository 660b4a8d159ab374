//! Conversation mode as people use it: the REPL through a pseudo-terminal,
//! one turn through a pipe, sessions saved, restored and refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use std::io::Write as _;

use infllm::attention::infllm::RetrievalPreset;
use infllm::chat::{ChatTemplate, Conversation, Message};
use infllm::engine::{AttnMode, Engine, EngineParams};
use infllm::ggml::reference::{RefContext, RefModel, RefParams};
use infllm::model::Model;
use infllm::sampling::{Sampler, SamplingParams};
use rexpect::reader::Options;
use rexpect::session::{spawn_with_options, PtySession};

/// A fact and a question the 135M model answers from it.
const FACT: &str = "The secret word is pineapple.";
const QUESTION: &str = "What is the secret word?";
const FILLER: &str = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("infllm-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The binary in conversation mode, greedy, with SmolLM2 (unless `extra`
/// names a model) and a private
/// HOME (the REPL history goes there).
fn command(extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infllm"));
    if !extra.contains(&"-m") {
        cmd.args(["-m", common::smollm2().to_str().unwrap()]);
    }
    cmd.args(["-cnv", "--temp", "0", "-t", "2", "--color", "off"])
        .args(extra)
        .env("HOME", tmp("home"))
        .env_remove("XDG_DATA_HOME");
    cmd
}

/// The REPL on a pseudo-terminal.
struct Repl(PtySession);

impl Repl {
    fn start(extra: &[&str]) -> Self {
        let options = Options {
            timeout_ms: Some(600_000),
            strip_ansi_escape_codes: true,
        };
        let mut p = spawn_with_options(command(extra), options).expect("spawn infllm on a pty");
        p.exp_string("> ").expect("first prompt");
        Repl(p)
    }

    /// Sends a line; returns what came back before the next prompt,
    /// without the echoed line.
    fn say(&mut self, line: &str) -> String {
        self.0.send_line(line).unwrap();
        let (out, _) = self.0.exp_regex("\n\r*> ").expect("the next prompt");
        let out = out.replace('\r', "");
        let echo_end = out.find(line).map_or(0, |i| i + line.len());
        out[echo_end..].trim().to_string()
    }

    fn quit(mut self) {
        self.0.send_line("/exit").unwrap();
        self.0.exp_eof().expect("exit after /exit");
    }
}

/// The number that follows `marker` in `s`.
fn number_after(s: &str, marker: &str) -> usize {
    let rest = s
        .split(marker)
        .nth(1)
        .unwrap_or_else(|| panic!("no {marker:?} in {s:?}"));
    rest.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn the_second_answer_uses_the_first_turn() {
    let _cpu = common::exclusive();
    let mut chat = Repl::start(&["-n", "32"]);
    chat.say(FACT);
    let answer = chat.say(QUESTION);
    chat.quit();
    assert!(answer.contains("pineapple"), "answer: {answer:?}");
    // Without the first turn the model does not know it.
    let mut chat = Repl::start(&["-n", "32"]);
    let answer = chat.say(QUESTION);
    chat.quit();
    assert!(!answer.contains("pineapple"), "answer without the fact: {answer:?}");
}

#[test]
fn ctrl_c_interrupts_an_answer_and_the_chat_goes_on() {
    let _cpu = common::exclusive();
    let mut chat = Repl::start(&["-n", "256"]);
    chat.0
        .send_line("Write a very long story about a dragon who learns to cook.")
        .unwrap();
    // Some of the answer first: it is generating now.
    chat.0.exp_regex("\n[^\n]{40}").expect("the answer starts");
    chat.0.send_control('c').unwrap();
    chat.0.exp_string("[interrupted]").expect("the answer stops");
    chat.0.exp_string("> ").expect("back at the prompt");
    let stats = chat.say("/stats");
    let answer = chat.say(FACT);
    assert!(!answer.is_empty());
    let after = chat.say("/stats");
    chat.say("/clear");
    let cleared = chat.say("/stats");
    // Ctrl-C twice at the empty prompt quits.
    chat.0.send_control('c').unwrap();
    chat.0.exp_string("Ctrl-C again").expect("a hint after the first");
    chat.0.send_control('c').unwrap();
    let last = chat.0.exp_eof().expect("exit after the second");
    // The partial answer stayed in the memory: more tokens than its prompt.
    let held = |s: &str| number_after(s, "memory: ");
    let prompt = |s: &str| number_after(s, "prompt ");
    assert!(held(&stats) > prompt(&stats), "{stats}");
    assert!(held(&after) > held(&stats), "{after}");
    assert_eq!((held(&cleared), prompt(&cleared)), (0, 0), "{cleared}");
    // The whole chat's timings at exit, as llama.cpp prints them.
    assert!(
        last.contains("prompt eval time") && last.contains("eval time"),
        "{last}"
    );
}

#[test]
fn a_long_file_read_into_the_chat_is_answered_from_its_start() {
    let _cpu = common::exclusive();
    // 10K tokens: the fact first, then filler. With 16 initial tokens (the
    // system prompt's) and a 1024-token window the fact lies in a memory
    // block and must be retrieved.
    let doc = format!(
        "{FACT} Remember it. pineapple is the secret word.\n{}",
        FILLER.repeat(480)
    );
    let path = tmp("long.txt");
    std::fs::write(&path, doc).unwrap();
    let settings = ["--n-local", "1024", "--topk", "4", "--n-init", "16"];
    let mut chat = Repl::start(&[&["-n", "24"][..], &settings].concat());
    let read = chat.say(&format!("/read {}", path.display()));
    let n = number_after(&read, " bytes, ");
    assert!(n >= 10_000, "{read}");
    let answer = chat.say("The text above mentions a secret word. What is it?");
    let stats = chat.say("/stats");
    chat.quit();
    assert!(stats.contains(" blocks"), "{stats}");
    assert!(answer.contains("pineapple"), "answer: {answer:?}");
}

#[test]
fn a_prefill_s_bar_counts_from_its_start_and_typing_does_not_break_it() {
    let _cpu = common::exclusive();
    let path = tmp("bar.txt");
    std::fs::write(&path, FILLER.repeat(150)).unwrap();
    let mut chat = Repl::start(&[]);
    let read = chat.say(&format!("/read {}", path.display()));
    assert!(number_after(&read, " bytes, ") >= 2048, "{read}");
    chat.0.send_line("Summarize it.").unwrap();
    let (_, frame) = chat
        .0
        .exp_regex(r"512/\d+ tokens +[0-9.]+")
        .expect("a frame after one step");
    // A rate from the bar's start: the first step was read as 512,000/s.
    let rate: f64 = frame.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(rate < 10_000.0, "{frame}");
    chat.0.send("typed ahead").unwrap();
    chat.0.exp_string("1024/").expect("the next frame");
    chat.0.send_control('c').unwrap();
    let before = chat.0.exp_string("[interrupted: ").expect("the prefill stops");
    // Not echoed: the text would push the bar onto a second line.
    assert!(!before.contains("typed") && !before.contains("^C"), "{before:?}");
    chat.0.exp_string("> ").expect("back at the prompt");
    chat.quit();
}

#[test]
fn a_saved_session_continues_like_an_unbroken_run() {
    let _cpu = common::exclusive();
    let second = "And what fruit is it?";
    let mut chat = Repl::start(&["-n", "24"]);
    chat.say(FACT);
    let unbroken = chat.say(second);
    chat.quit();

    let file = tmp("saved.session");
    let _ = std::fs::remove_file(&file);
    let mut chat = Repl::start(&["-n", "24"]);
    chat.say(FACT);
    let saved = chat.say(&format!("/save {}", file.display()));
    assert!(saved.starts_with("(saved"), "{saved}");
    chat.quit();

    let mut chat = Repl::start(&["-n", "24", "--session", file.to_str().unwrap()]);
    let restored = chat.say(second);
    chat.quit();
    assert_eq!(restored, unbroken);
}

/// A session file made by piping one turn through `--session`.
fn make_session(path: &Path) {
    let _ = std::fs::remove_file(path);
    let out = pipe(&["-n", "8", "--session", path.to_str().unwrap()], "Hello!");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn pipe(extra: &[&str], input: &str) -> Output {
    let mut child = command(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn broken_or_mismatched_sessions_are_refused_and_left_alone() {
    let _cpu = common::exclusive();
    let good = tmp("good.session");
    make_session(&good);
    let bytes = std::fs::read(&good).unwrap();
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x40;
    let gemma = common::gemma3();
    let other_model = ["-m", gemma.to_str().unwrap()];
    let cases: Vec<(&str, Vec<u8>, &[&str], &str)> = vec![
        ("flipped", flipped, &[], "checksum mismatch"),
        ("half", bytes[..bytes.len() / 2].to_vec(), &[], "truncated"),
        ("short", bytes[..bytes.len() - 1].to_vec(), &[], "truncated"),
        ("empty", vec![], &[], "not an infllm session file"),
        (
            "settings",
            bytes.clone(),
            &["--n-local", "1024"],
            "other attention settings",
        ),
        ("model", bytes.clone(), &other_model, "another model"),
    ];
    for (name, content, flags, needle) in cases {
        let path = tmp(&format!("{name}.session"));
        std::fs::write(&path, &content).unwrap();
        let mut args = vec!["--session", path.to_str().unwrap()];
        args.extend_from_slice(flags);
        let out = pipe(&args, "Hello!");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            out.stdout.is_empty(),
            "{name}: stdout {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: not one line: {err}");
        assert!(err.contains(needle), "{name}: {err:?} lacks {needle:?}");
        assert_eq!(std::fs::read(&path).unwrap(), content, "{name}: the file changed");
    }
}

#[test]
fn piped_chat_prints_only_the_answer() {
    let _cpu = common::exclusive();
    let question = "What is the capital of France?";
    let out = pipe(&["-n", "32"], &format!("{question}\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();

    // The same turn through the library: the tokens behind the text.
    let mut c = conversation(0.0);
    let prompt: Vec<i32> = c.pending_tokens(question).unwrap();
    c.user_turn(question, &mut |_, _| {}).unwrap();
    let answer = c.answer(Some(32), &|| false, &mut |_| Ok(())).unwrap();
    let (text, tokens) = (answer.text, answer.tokens);
    assert_eq!(stdout, format!("{text}\n"), "stdout is the answer and nothing else");

    // llama.cpp, fed the same conversation, picks the same tokens (or a
    // near tie: the model amplifies rounding differences between kernels).
    let model = common::smollm2();
    let reference = RefModel::load(&model).unwrap();
    assert_eq!(reference.tokenize(&render(question), true, true), prompt);
    let params = RefParams {
        n_ctx: 512,
        n_batch: 512,
        n_ubatch: 512,
        n_threads: common::THREADS,
        flash_attn: Some(false),
        cache_types: None,
    };
    let mut ctx = RefContext::new(&reference, params).unwrap();
    let mut logits = ctx.decode(&prompt, 512, false).unwrap();
    let mut worst = 0f32;
    for &t in &tokens {
        let best = logits[common::argmax_of(&logits) as usize];
        worst = worst.max(best - logits[t as usize]);
        logits = ctx.decode(&[t], 512, false).unwrap();
    }
    eprintln!(
        "answer {text:?}: {} tokens, largest gap to llama.cpp's top-1 {worst}",
        tokens.len()
    );
    assert!(worst < 0.5, "{text:?} strays from llama.cpp's greedy path by {worst}");
}

/// SmolLM2's template applied to one user message.
fn render(question: &str) -> String {
    let template = Model::load(&common::smollm2()).unwrap().chat_template.unwrap();
    ChatTemplate::from_source("gguf", &template, "", "")
        .unwrap()
        .render(&[Message::new("user", question)], true)
        .unwrap()
}

fn conversation(temp: f32) -> Conversation {
    conversation_with(&common::smollm2(), temp, false)
}

/// A conversation with the model's defaults or, `small`, settings under
/// which a few hundred tokens make blocks and move the window buffer.
fn conversation_with(path: &Path, temp: f32, small: bool) -> Conversation {
    let model = Model::load(path).unwrap();
    let template = match &model.chat_template {
        Some(source) => ChatTemplate::from_source("gguf", source, "", "").unwrap(),
        None => ChatTemplate::builtin("gemma", "<bos>", "<eos>").unwrap(),
    };
    // The command line's defaults, so that the library's turns are the binary's.
    let mut p = RetrievalPreset::default().defaults_for(model.hp.n_ctx_train);
    if small {
        (p.n_init, p.n_local, p.block_size, p.topk, p.chunk) = (16, 256, 32, 2, 64);
    }
    let attn = AttnMode::Infllm(p);
    let params = EngineParams {
        attn,
        n_threads: common::THREADS as usize,
        n_ctx: 0,
        n_ubatch: 512,
        block_cache: None,
        standard_ops: false,
    };
    let engine = Engine::new(model, params).unwrap();
    let params = SamplingParams {
        temp,
        seed: 7,
        ..Default::default()
    };
    let sampler = Sampler::new(params, engine.tokenizer()).unwrap();
    Conversation::new(engine, sampler, template, None)
}

fn answer(c: &mut Conversation, n: usize) -> String {
    c.answer(Some(n), &|| false, &mut |_| Ok(())).unwrap().text
}

#[test]
fn the_second_turn_evaluates_only_its_own_tokens() {
    let _cpu = common::exclusive();
    let mut c = conversation(0.0);
    let first = c.user_turn(FACT, &mut |_, _| {}).unwrap();
    answer(&mut c, 12);
    let held = c.engine.n_past();
    let n = c.user_turn(QUESTION, &mut |_, _| {}).unwrap();
    // Exactly the end of the answer's turn and the new turn, as the template writes them.
    let new_text = format!("<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n");
    let expected = c.engine.tokenizer().encode(&new_text, false, true);
    assert_eq!(n, expected.len());
    assert_eq!(c.engine.n_past(), held + n);
    assert!(n < first, "{n} new tokens vs {first} in the first turn");
}

#[test]
fn sessions_and_regeneration_restore_the_exact_state() {
    let _cpu = common::exclusive();
    // Sampling (not greedy): the random stream must come back too. Gemma 3
    // adds its sliding-window layers' buffers to the state.
    let text = format!("{FACT}\n{}", FILLER.repeat(20));
    for model in [common::smollm2(), common::gemma3()] {
        let mut a = conversation_with(&model, 0.8, true);
        a.user_turn(&text, &mut |_, _| {}).unwrap();
        let first = answer(&mut a, 16);
        let file = tmp("library.session");
        a.save(&file).unwrap();
        a.user_turn(QUESTION, &mut |_, _| {}).unwrap();
        let unbroken = answer(&mut a, 16);

        let mut b = conversation_with(&model, 0.8, true);
        b.load(&file).unwrap();
        assert_eq!(b.messages().last().unwrap().content, first);
        assert!(b.engine.block_bytes().unwrap() > 0, "the session has blocks");
        b.user_turn(QUESTION, &mut |_, _| {}).unwrap();
        assert_eq!(answer(&mut b, 16), unbroken, "{}", model.display());
    }

    // /regen: back to before the answer (through window moves and new
    // blocks); greedy gives the same answer again.
    let mut g = conversation_with(&common::smollm2(), 0.0, true);
    g.user_turn(&text, &mut |_, _| {}).unwrap();
    let held = g.engine.n_past();
    let once = answer(&mut g, 160);
    g.forget_answer().unwrap();
    assert_eq!(g.engine.n_past(), held);
    assert_eq!(answer(&mut g, 160), once);
}

#[test]
fn single_turn_answers_the_prompt_and_exits_without_asking() {
    let _cpu = common::exclusive();
    let options = Options {
        timeout_ms: Some(300_000),
        strip_ansi_escape_codes: true,
    };
    let cmd = command(&["-st", "-p", "Say hello.", "-n", "8"]);
    let mut p = spawn_with_options(cmd, options).expect("spawn infllm on a pty");
    let screen = p.exp_eof().expect("exits after one answer");
    assert!(!screen.contains("\n> "), "asked for another message: {screen}");
    assert!(screen.contains("eval time"), "{screen}");
}

#[test]
fn a_reverse_prompt_ends_a_piped_answer() {
    let _cpu = common::exclusive();
    let question = "Count from 1 to 30, separated by commas.";
    let full = text(&pipe(&["-n", "48"], question).stdout);
    let stop: String = full.chars().skip(10).take(3).collect();
    let at = full.find(&stop).unwrap() + stop.len();
    let cut = text(&pipe(&["-n", "48", "-r", &stop], question).stdout);
    assert!(full.starts_with(cut.trim_end_matches('\n')), "{cut:?} / {full:?}");
    assert!(cut.trim_end_matches('\n').len() <= at + 8, "{cut:?} went past {stop:?}");
}
