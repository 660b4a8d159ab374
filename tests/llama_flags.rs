//! The command line read as llama.cpp reads it: every name of every flag
//! llama-completion, llama-server and llama-perplexity take (common/arg.cpp)
//! either reaches an infllm flag or gets the one-line "not supported" error
//! (for llama-completion, as the README's table says);
//! llama.cpp's spellings, repeated flags, negative values and `LLAMA_ARG_*`
//! variables behave as in llama.cpp.

use std::ffi::OsString;
use std::process::Command;

use clap::CommandFactory;
use infllm::cli::llama_flags::{LlamaFlag, Tools, B, C, LLAMA_FLAGS, P, S};
use infllm::cli::{self, args::reaches, Cli, ParseError};

fn parse_env(args: &[&str], env: &[(&str, &str)]) -> Result<Cli, String> {
    let argv: Vec<OsString> = std::iter::once("infllm")
        .chain(args.iter().copied())
        .map(OsString::from)
        .collect();
    let env = |var: &str| env.iter().find(|(k, _)| *k == var).map(|(_, v)| v.to_string());
    match cli::parse(argv, &env) {
        Ok(c) => Ok(c),
        Err(ParseError::Line(line)) => Err(line),
        Err(ParseError::Info(e)) => Err(format!("(help or version) {e}")),
    }
}

fn parse(args: &[&str]) -> Result<Cli, String> {
    parse_env(args, &[])
}

fn unsupported(name: &str) -> String {
    format!("error: invalid argument: {name} (not supported by infllm)")
}

#[test]
fn the_trial_s_flags_parse_or_get_one_line() {
    for name in ["-tb", "-np", "-hf"] {
        assert_eq!(parse(&[name, "2"]).unwrap_err(), unsupported(name));
    }
    assert!(parse(&["-if"]).unwrap().generate.chat.interactive_first);
    let g = parse(&["-sm", "none", "-mg", "0", "-co", "-ngl", "3"])
        .unwrap()
        .generate;
    assert_eq!(format!("{:?}", g.run.devices.split_mode), "None");
    assert_eq!(g.run.devices.main_gpu, 0);
    assert!(g.run.devices.n_gpu_layers.is_some());
    let serve = parse(&["serve", "-np", "3"]).unwrap();
    let Some(cli::Command::Serve(s)) = serve.command else {
        panic!("not serve")
    };
    assert_eq!(s.parallel, 3);
}

#[test]
fn last_flag_wins_and_values_may_start_with_a_dash() {
    let g = parse(&[
        "--temp", "0.1", "-n", "5", "--temp", "-1", "-n", "-2", "-p", "-x", "-c", "7", "-c", "9",
    ])
    .unwrap()
    .generate;
    assert_eq!(g.sample.temp, -1.0);
    assert_eq!(g.n_predict, -2);
    assert_eq!(g.prompt.as_deref(), Some("-x"));
    assert_eq!(g.run.ctx_size, Some(9));
    let g = parse(&[
        "--n_predict",
        "3",
        "--temperature=0.5",
        "--repeat-last-n",
        "-1",
        "-s",
        "-1",
    ])
    .unwrap()
    .generate;
    assert_eq!((g.n_predict, g.sample.temp), (3, 0.5));
    assert_eq!((g.sample.repeat_last_n, g.sample.seed), (-1, -1));
    let g = parse(&[
        "-no-cnv",
        "-cnv",
        "--no-escape",
        "-e",
        "--no-display-prompt",
        "--display-prompt",
    ])
    .unwrap()
    .generate;
    assert!(g.chat.conversation && !g.chat.no_conversation);
    assert!(g.prompt_rules().escape && !g.no_display_prompt);
    assert!(!parse(&["-e", "--no-escape"]).unwrap().generate.prompt_rules().escape);
    // -p and -f set one prompt, -sys and -sysf one system prompt: the last counts.
    let g = parse(&["-p", "a", "-f", "x.txt", "-sysf", "s.txt", "-sys", "b"])
        .unwrap()
        .generate;
    assert_eq!((g.prompt, g.file), (None, Some("x.txt".into())));
    assert_eq!(
        (g.chat.system_prompt, g.chat.system_prompt_file),
        (Some("b".into()), None)
    );
    let g = parse(&["-f", "x.txt", "-p", "a", "-sys", "b", "-sysf", "s.txt"])
        .unwrap()
        .generate;
    assert_eq!((g.prompt, g.file), (Some("a".into()), None));
    assert_eq!(
        (g.chat.system_prompt, g.chat.system_prompt_file),
        (None, Some("s.txt".into()))
    );
}

#[test]
fn environment_sets_what_the_command_line_leaves() {
    let env = [
        ("LLAMA_ARG_CTX_SIZE", "300"),
        ("LLAMA_ARG_TEMPERATURE", "-1"),
        ("LLAMA_ARG_N_GPU_LAYERS", "2"),
        ("LLAMA_ARG_MMPROJ", "ignored.gguf"),
    ];
    let g = parse_env(&["-c", "100"], &env).unwrap().generate;
    assert_eq!(g.run.ctx_size, Some(100));
    assert_eq!(g.sample.temp, -1.0);
    assert!(g.run.devices.n_gpu_layers.is_some());
    let g = parse_env(&[], &[("LLAMA_ARG_NO_REPACK", "1")]).unwrap().generate;
    assert!(g.run.devices.no_repack);
    let g = parse_env(&[], &[("LLAMA_ARG_REPACK", "off")]).unwrap().generate;
    assert!(g.run.devices.no_repack);
    let g = parse_env(&["--no-repack"], &[("LLAMA_ARG_REPACK", "on")])
        .unwrap()
        .generate;
    assert!(g.run.devices.no_repack);
    assert_eq!(
        parse_env(&[], &[("LLAMA_ARG_REPACK", "maybe")]).unwrap_err(),
        "error: LLAMA_ARG_REPACK=maybe: not a boolean (on|off|true|false|1|0)"
    );
    let bad = parse_env(&[], &[("LLAMA_ARG_CTX_SIZE", "x")]).unwrap_err();
    assert!(bad.contains("invalid value 'x' for '--ctx-size"), "{bad}");
}

/// A valid value for each infllm flag a llama.cpp flag reaches.
fn sample_value(flag: &str) -> Option<&'static str> {
    Some(match flag {
        "--threads" | "--batch-size" | "--ubatch-size" | "--n-predict" | "--ctx-size" | "--top-k" | "--seed"
        | "--repeat-last-n" | "--main-gpu" | "--n-gpu-layers" => "1",
        "--temp" | "--top-p" | "--min-p" | "--repeat-penalty" => "0.5",
        "--flash-attn" | "--color" => "on",
        "--cache-type-k" | "--cache-type-v" => "q8_0",
        "--split-mode" => "layer",
        "--tensor-split" => "1,1",
        "--device" => "none",
        "--rpc" => "127.0.0.1:50052",
        "--prompt" | "--system-prompt" | "--chat-template" | "--reverse-prompt" | "--prompt-cache" => "x",
        "--file" | "--system-prompt-file" | "--chat-template-file" | "--model" => "README.md",
        _ => return None,
    })
}

/// What the README's table says of a flag: `yes`, `no`, or the names that work.
fn status(cmd: &clap::Command, flag: &LlamaFlag) -> String {
    let names: Vec<&str> = flag.names.iter().chain(flag.negations).copied().collect();
    let working: Vec<&str> = names.iter().copied().filter(|n| reaches(cmd, n).is_ok()).collect();
    match working.len() {
        n if n == names.len() => "yes".into(),
        0 => "not supported".into(),
        _ => format!(
            "only {}",
            working.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn table(cmd: &clap::Command) -> String {
    let mut t = String::from("| llama-completion flag | infllm |\n|---|---|\n");
    for flag in LLAMA_FLAGS.iter().filter(|f| f.tools & C != 0) {
        let names: Vec<String> = flag
            .names
            .iter()
            .chain(flag.negations)
            .map(|n| format!("`{n}`"))
            .collect();
        t += &format!("| {} | {} |\n", names.join(", "), status(cmd, flag));
    }
    t
}

/// Walks every name of every flag of llama.cpp's `tool`, read by the infllm
/// command that stands for it (`before`: its name and required flags): each
/// either parses with a value it takes, or gets the one-line error.
/// Returns how many names work.
fn walk(tool: Tools, before: &[&str]) -> usize {
    // Built as `cli::parse` builds it: a sub-command then has the global flags.
    let mut root = Cli::command();
    root.build();
    let cmd = before.first().and_then(|s| root.find_subcommand(s)).unwrap_or(&root);
    let parse = |args: &[&str]| parse(&[before, args].concat());
    let mut supported = 0;
    for flag in LLAMA_FLAGS.iter().filter(|f| f.tools & tool != 0) {
        for &name in flag.names.iter().chain(flag.negations) {
            let Some(target) = reaches(cmd, name).unwrap_or_else(|e| {
                assert_eq!(e, format!("invalid argument: {name} (not supported by infllm)"));
                let args: &[&str] = if flag.takes_value { &[name, "1"] } else { &[name] };
                assert_eq!(parse(args).unwrap_err(), unsupported(name), "{before:?}");
                None
            }) else {
                continue;
            };
            supported += 1;
            // A value from the table, else the first common one it takes.
            let values: Vec<&str> = match (flag.takes_value, sample_value(&target)) {
                (false, _) => vec![],
                (true, Some(v)) => vec![v],
                (true, None) => vec!["1", "0.5", "1+1", "top_k", "kt"],
            };
            let parses = |v: Option<&str>| parse(&[name].into_iter().chain(v).collect::<Vec<_>>());
            match name {
                "-h" | "--help" | "--usage" | "--version" => assert!(parses(None).unwrap_err().starts_with("(help")),
                _ if values.is_empty() => assert!(
                    parses(None).is_ok(),
                    "{before:?} {name} (reaches {target}): {:?}",
                    parses(None).err()
                ),
                _ => assert!(
                    values.iter().any(|v| parses(Some(v)).is_ok()),
                    "{before:?} {name} (reaches {target}) takes none of {values:?}: {:?}",
                    parses(Some(values[0])).err()
                ),
            }
        }
    }
    supported
}

#[test]
fn every_llama_server_and_perplexity_flag_works_or_is_refused_in_one_line() {
    let served = walk(S, &["serve"]);
    assert!(served > 40, "only {served} llama-server names work");
    let perplexity = walk(P, &["perplexity", "-f", "README.md"]);
    assert!(perplexity > 30, "only {perplexity} llama-perplexity names work");
}

#[test]
fn every_llama_bench_flag_works_or_is_refused_in_one_line() {
    let supported = walk(B, &["bench"]);
    // -ngl -dev -sm -ts -mg -rpc -ctk -ctv -fa, each with its long name.
    assert_eq!(supported, 18, "llama-bench names that work");
    let b = parse(&[
        "bench",
        "-ngl",
        "99",
        "-dev",
        "none",
        "-rpc",
        "127.0.0.1:1",
        "-ctk",
        "q4_0",
        "-ts",
        "1,1",
    ])
    .unwrap();
    let Some(cli::Command::Bench(b)) = b.command else {
        panic!("not bench")
    };
    assert!(b.devices.n_gpu_layers.is_some());
    assert_eq!(b.devices.device.as_deref(), Some("none"));
    assert_eq!(b.devices.rpc.as_deref(), Some("127.0.0.1:1"));
    assert_eq!(b.devices.tensor_split, [1.0, 1.0]);
    assert_eq!(parse(&["bench", "-nkvo", "1"]).unwrap_err(), unsupported("-nkvo"));
}

#[test]
fn every_llama_completion_flag_works_or_is_refused_in_one_line() {
    let cmd = Cli::command();
    let supported = walk(C, &[]);
    assert!(supported > 40, "only {supported} names work");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let want = table(&cmd);
    let (start, end) = ("<!-- llama-flags -->\n", "<!-- /llama-flags -->");
    let got = readme
        .split_once(start)
        .and_then(|(_, r)| r.split_once(end))
        .map(|(t, _)| t);
    if got != Some(want.as_str()) {
        let out = concat!(env!("CARGO_MANIFEST_DIR"), "/target/llama-flags.md");
        std::fs::write(out, &want).unwrap();
        panic!("README.md's table of llama.cpp flags is not what the flags do: the right one is in {out}");
    }
}

#[test]
fn the_binary_refuses_an_unsupported_flag_in_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_infllm"))
        .args(["-hf", "ggml-org/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr), unsupported("-hf") + "\n");
    assert!(out.stdout.is_empty());
}
