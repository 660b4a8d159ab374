//! The built-in chat templates against llama.cpp's `llama_chat_apply_template`
//! for the same names: byte-equal renders of varied conversations, with and
//! without the generation prompt. No model needed.

use infllm::chat::template::builtins;
use infllm::chat::ChatTemplate;
use infllm::chat::Message;
use infllm::ggml::reference::{chat_apply_template, chat_builtin_templates};

type Turns = &'static [(&'static str, &'static str)];

/// Named conversations: roles as the conversation writes them, contents
/// with the spaces, tabs, newlines (and a no-break space, not C whitespace)
/// that trimming formats treat differently.
const CONVERSATIONS: [(&str, Turns); 7] = [
    ("system + user", &[("system", "You are terse."), ("user", "Hi")]),
    ("user only", &[("user", "What is 2+2?")]),
    (
        "multi-turn",
        &[
            ("system", "Be brief."),
            ("user", "Name a colour."),
            ("assistant", "Blue."),
            ("user", "Another?"),
            ("assistant", "Red."),
            ("user", "Thanks"),
        ],
    ),
    (
        "multi-turn, no system",
        &[("user", "Hello"), ("assistant", "Hi there!"), ("user", "Bye")],
    ),
    (
        "spaces and newlines",
        &[
            ("system", "  Keep it short.\n\n"),
            ("user", "\n  Two lines\nof text \t\n"),
            ("assistant", " An answer with spaces. \n"),
            ("user", "\r\n\x0b\x0cmore\x0c "),
        ],
    ),
    (
        "no-break spaces and unicode",
        &[("user", "\u{a0}café ☕\u{a0}"), ("assistant", "\u{3000}はい\u{3000}")],
    ),
    ("ends with an answer", &[("user", "Q"), ("assistant", "A")]),
];

fn messages(turns: Turns) -> Vec<Message> {
    turns.iter().map(|&(r, c)| Message::new(r, c)).collect()
}

#[test]
fn every_builtin_renders_as_llama_cpp_does() {
    let mut differ = Vec::new();
    let mut checked = 0;
    for (name, _) in builtins() {
        let ours = ChatTemplate::builtin(name, "<bos>", "<eos>").unwrap();
        for (label, turns) in CONVERSATIONS {
            for gen in [false, true] {
                let expected = chat_apply_template(name, turns, gen).unwrap();
                let got = ours.render(&messages(turns), gen).unwrap();
                checked += 1;
                if got != expected {
                    differ.push(format!(
                        "{name} / {label} / gen={gen}:\n  infllm   {got:?}\n  llama.cpp {expected:?}"
                    ));
                }
            }
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {checked} renders differ:\n{}",
        differ.len(),
        differ.join("\n")
    );
    assert_eq!(checked, builtins().count() * CONVERSATIONS.len() * 2);
}

#[test]
fn the_formats_are_distinct() {
    // The oracle tells the formats apart, but for roles a conversation does
    // not write: `assistant_tool_call` (Granite 4.x) and `tool` (EXAONE 4).
    let turns = CONVERSATIONS[4].1;
    let mut by_render: Vec<(String, Vec<&str>)> = Vec::new();
    for (name, _) in builtins() {
        let render = chat_apply_template(name, turns, true).unwrap();
        assert!(!render.is_empty(), "{name}");
        match by_render.iter_mut().find(|(r, _)| *r == render) {
            Some((_, names)) => names.push(name),
            None => by_render.push((render, vec![name])),
        }
    }
    let shared: Vec<&Vec<&str>> = by_render.iter().map(|(_, n)| n).filter(|n| n.len() > 1).collect();
    assert_eq!(
        shared,
        [
            &vec!["exaone3", "exaone4"],
            &vec!["granite", "granite-4.0", "granite-4.1"]
        ]
    );
}

#[test]
fn builtin_names_are_llama_cpps() {
    let theirs = chat_builtin_templates();
    assert!(theirs.len() > 50, "{theirs:?}");
    let ours: Vec<&str> = builtins().map(|(n, _)| n).collect();
    let unknown: Vec<_> = ours.iter().filter(|n| !theirs.iter().any(|t| t == *n)).collect();
    assert!(unknown.is_empty(), "llama.cpp does not know {unknown:?}");
    let missing: Vec<_> = theirs.iter().filter(|t| !ours.contains(&t.as_str())).collect();
    assert!(missing.is_empty(), "not built in: {missing:?}");
}

#[test]
fn oracle_rejects_an_unknown_name() {
    // A name llama.cpp does not know is not silently rendered as something else.
    let err = chat_apply_template("no-such-template", &[("user", "Hi")], true).unwrap_err();
    assert!(err.to_string().contains("no-such-template"), "{err}");
}
