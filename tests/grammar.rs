//! Constrained output (`--grammar`, `--json-schema`): infllm's grammar
//! sampler against llama.cpp's (`llama_sampler_init_grammar` in its common
//! sampler's check-then-resample scheme) on the same logits, and the binary's
//! output under a schema or grammar, which must always parse.

mod common;

use std::process::{Command, Output};

use infllm::engine::{AttnMode, Engine, EngineParams};
use infllm::ggml::reference::{RefGrammar, RefModel, RefSampler};
use infllm::model::Model;
use infllm::sampling::{GrammarSpec, Sampler, SamplingParams};

fn infllm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infllm"))
        .args(args)
        .output()
        .expect("run infllm")
}

/// The generated text (the prompt is not shown) of a run on SmolLM2.
fn generate(prompt: &str, extra: &[&str]) -> String {
    let model = common::smollm2();
    let mut args = vec![
        "-m",
        model.to_str().unwrap(),
        "-p",
        prompt,
        "--no-display-prompt",
        "-t",
        "2",
    ];
    args.extend_from_slice(extra);
    let out = infllm(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "infllm {extra:?} failed: {err}");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn engine() -> Engine {
    let model = Model::load(&common::smollm2()).expect("load SmolLM2");
    let params = EngineParams {
        attn: AttnMode::full(true),
        n_threads: common::THREADS as usize,
        n_ctx: 512,
        n_ubatch: 512,
        block_cache: None,
        standard_ops: false,
    };
    Engine::new(model, params).expect("engine")
}

/// llama.cpp's `common_sampler_sample` with a grammar: the chain's draw,
/// and when the grammar refuses it, a second draw on the masked logits.
fn llama_cpp_draw(chain: &mut RefSampler, grammar: &mut RefGrammar, logits: &[f32]) -> i32 {
    let t = chain.sample(logits);
    if grammar.allows(t) {
        return t;
    }
    let mut masked = logits.to_vec();
    grammar.mask(&mut masked);
    chain.sample(&masked)
}

const GRAMMARS: [&str; 4] = [
    r#"root ::= ("yes" | "no") ".""#,
    r#"root ::= "The answer is " [0-9]{1,3} ("." [0-9]+)? "!""#,
    "root ::= \"[\" item (\", \" item){0,3} \"]\"\nitem ::= \"\\\"\" [a-z]+ ( \" \" [a-z]+ )? \"\\\"\"\n",
    "root ::= obj\nobj ::= \"{\" ws \"\\\"name\\\": \" str \",\" ws \"\\\"ok\\\": \" (\"true\" | \"false\") ws \"}\"\nstr ::= \"\\\"\" [A-Za-z ]{1,10} \"\\\"\"\nws ::= [ \\n]?\n",
];

/// Each grammar, greedy and at temperature 1 with several seeds: infllm's
/// tokens are llama.cpp's, draw after draw, on infllm's logits.
#[test]
fn same_tokens_as_llama_cpp_grammar_sampler() {
    let _x = common::exclusive();
    let mut e = engine();
    let reference = RefModel::load(&common::smollm2()).expect("llama.cpp loads SmolLM2");
    let prompt = e
        .tokenizer()
        .encode("Q: Is water wet? Give the answer in the asked format.\nA:", true, false);
    let mut resampled = 0;
    for g in GRAMMARS {
        for (temp, seed) in [(0.0, 0), (1.0, 1), (1.0, 2), (1.0, 3)] {
            let p = SamplingParams {
                temp,
                seed,
                ..SamplingParams::default()
            };
            let mut ours = Sampler::new(
                SamplingParams {
                    grammar: Some(Box::new(GrammarSpec::Gbnf(g.to_string()))),
                    ..p.clone()
                },
                e.tokenizer(),
            )
            .unwrap();
            let mut chain = RefSampler::common(&p, reference.n_vocab(), Some(&reference)).unwrap();
            let mut grammar = RefGrammar::new(&reference, g).unwrap();
            e.clear();
            let mut logits = e.eval(&prompt, false, &mut |_, _| {}).unwrap();
            let mut text = Vec::new();
            for step in 0..48 {
                let a = ours.sample(&logits);
                let b = llama_cpp_draw(&mut chain, &mut grammar, &logits);
                assert_eq!(
                    a, b,
                    "{g:?} temp {temp} seed {seed} step {step}: infllm {a}, llama.cpp {b}"
                );
                resampled += usize::from(temp == 0.0 && a != common::argmax_of(&logits));
                if e.tokenizer().is_eog(a) {
                    break;
                }
                ours.accept(a);
                chain.accept(b);
                grammar.accept(b);
                text.extend(e.tokenizer().token_to_piece(a, false));
                logits = e.eval(&[a], false, &mut |_, _| {}).unwrap();
            }
            eprintln!("{g:?} temp {temp} seed {seed}: {:?}", String::from_utf8_lossy(&text));
        }
    }
    // The grammars must have changed greedy tokens, or the test shows nothing.
    assert!(resampled >= 4, "the grammars changed only {resampled} greedy draws");
}

/// Under a JSON schema, at temperature 1, the output parses and keeps the
/// schema's required keys, enum and integer range.
#[test]
fn json_schema_output_parses_and_keeps_the_schema() {
    let _x = common::exclusive();
    let schema = r#"{"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "color": {"enum": ["red", "green", "blue"]},
        "ok": {"type": "boolean"}},
      "required": ["name", "age", "color", "ok"], "additionalProperties": false}"#;
    for seed in ["1", "2", "3", "4", "5"] {
        let out = generate(
            "A person as JSON:",
            &["-j", schema, "--temp", "1.0", "-s", seed, "-n", "200"],
        );
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("seed {seed}: {out:?} does not parse: {e}"));
        let o = v
            .as_object()
            .unwrap_or_else(|| panic!("seed {seed}: not an object: {out}"));
        let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["age", "color", "name", "ok"], "seed {seed}: {out}");
        let age = o["age"].as_i64().unwrap_or_else(|| panic!("seed {seed}: age {out}"));
        assert!((18..=99).contains(&age), "seed {seed}: {out}");
        assert!(
            ["red", "green", "blue"].contains(&o["color"].as_str().unwrap_or("")),
            "seed {seed}: {out}"
        );
        assert!(
            o["name"].as_str().is_some_and(|n| n.chars().count() <= 12),
            "seed {seed}: {out}"
        );
        assert!(o["ok"].is_boolean(), "seed {seed}: {out}");
    }
}

/// A GBNF grammar's output is exactly one of its sentences, whatever the seed.
#[test]
fn gbnf_output_is_one_of_its_sentences() {
    let _x = common::exclusive();
    let dir = std::env::temp_dir().join(format!("infllm-grammar-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("yes-no.gbnf");
    std::fs::write(&file, "# an answer\nroot ::= (\"yes\" | \"no\") \".\"\n").unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for seed in ["1", "2", "3", "4", "5", "6"] {
        let out = generate(
            "Is the sky green?",
            &[
                "--grammar-file",
                file.to_str().unwrap(),
                "--temp",
                "1.0",
                "-s",
                seed,
                "-n",
                "50",
            ],
        );
        // The run ends its output with a newline at the end of generation.
        let out = out.strip_suffix('\n').unwrap_or(&out).to_string();
        assert!(out == "yes." || out == "no.", "seed {seed}: {out:?}");
        seen.insert(out);
    }
    eprintln!("sentences seen: {seen:?}");
}

/// A bad grammar, schema or file: one line `error: ...`, exit 1, no output.
#[test]
fn bad_constraints_give_one_line_errors() {
    let model = common::smollm2();
    let m = model.to_str().unwrap();
    for (flags, needle) in [
        (vec!["--grammar", "root ::= \"a"], "unterminated string"),
        (vec!["--grammar", "root ::= item"], "rule 'item'"),
        (vec!["--grammar", "start ::= \"a\""], "no 'root' rule"),
        (vec!["--grammar", "root ::= <think> \"a\""], "not supported"),
        (vec!["-j", "{\"type\": "], "--json-schema"),
        (vec!["-j", "[1, 2]"], "object or a boolean"),
        (
            vec!["-j", r#"{"type": "integer", "minimum": 5, "maximum": 2}"#],
            "--json-schema",
        ),
        (
            vec!["--grammar-file", "/nonexistent/g.gbnf"],
            "--grammar-file /nonexistent/g.gbnf",
        ),
        (
            vec!["-jf", "/nonexistent/s.json"],
            "--json-schema-file /nonexistent/s.json",
        ),
    ] {
        let mut args = vec!["-m", m, "-p", "Hi", "-n", "4"];
        args.extend(&flags);
        let out = infllm(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {err}");
        assert!(
            out.stdout.is_empty(),
            "{flags:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{flags:?}: not one line: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{flags:?}: {err:?} lacks {needle:?}"
        );
    }
}

/// Without a grammar, greedy output is the argmax continuation, as before.
#[test]
fn greedy_output_without_grammar_is_unchanged() {
    let _x = common::exclusive();
    let prompt = "The capital of France is";
    let out = generate(prompt, &["--temp", "0", "-n", "12"]);
    let mut e = engine();
    let tokens = e.tokenizer().encode(prompt, true, false);
    let mut logits = e.eval(&tokens, false, &mut |_, _| {}).unwrap();
    let mut want = Vec::new();
    for _ in 0..12 {
        let t = common::argmax_of(&logits);
        if e.tokenizer().is_eog(t) {
            break;
        }
        want.extend(e.tokenizer().token_to_piece(t, false));
        logits = e.eval(&[t], false, &mut |_, _| {}).unwrap();
    }
    assert_eq!(out.trim_end_matches('\n'), String::from_utf8_lossy(&want));
}
