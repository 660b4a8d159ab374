//! Chat templates: turning a conversation into the prompt text a chat model
//! was trained on.
//!
//! Templates are Jinja, as stored in GGUF `tokenizer.chat_template` and in
//! Hugging Face `tokenizer_config.json`, rendered with minijinja set up the
//! way `transformers` sets up Jinja2 (trim/lstrip blocks, Python string
//! methods, `raise_exception`, `strftime_now`), so that a model's own template
//! renders here as it does in Python. llama.cpp's named formats are built in
//! (see `builtin`), for models without a template and `--chat-template NAME`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use chrono::DateTime;
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{context, Environment, Error, ErrorKind, Value};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// "system", "user" or "assistant".
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

use super::builtin::BUILTINS;

/// A compiled chat template.
pub struct ChatTemplate {
    name: String,
    /// Holds the one template, registered under `name`; built once because
    /// compiling is the costly part and a REPL renders every turn.
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// A Jinja template (as in GGUF `tokenizer.chat_template`, Hugging Face
    /// style). Errors (one clear line) if it does not compile.
    pub fn from_source(name: &str, source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = hf_environment();
        env.add_template_owned(name.to_string(), source.to_string())
            .map_err(|e| anyhow!("chat template {name} does not compile: {}", one_line(&e)))?;
        Ok(Self {
            name: name.to_string(),
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// One of the built-ins, by llama.cpp's name ("chatml", "llama3", ...).
    pub fn builtin(name: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        match BUILTINS.iter().find(|(n, _)| *n == name) {
            Some((n, source)) => Self::from_source(n, source, bos_token, eos_token),
            None => bail!(
                "unknown chat template {name:?}; built-in templates are: {}",
                builtin_names()
            ),
        }
    }

    /// Picks the template as llama-cli does: `file` (--chat-template-file),
    /// else `name_or_source` (--chat-template: a built-in name, or a Jinja
    /// source if it contains "{%" or "{{"), else the GGUF's own template,
    /// else ChatML.
    pub fn resolve(
        gguf: Option<&str>,
        name_or_source: Option<&str>,
        file: Option<&Path>,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<Self> {
        if let Some(path) = file {
            let source = std::fs::read_to_string(path)
                .with_context(|| format!("reading chat template file {}", path.display()))?;
            let name = format!("file:{}", path.display());
            return Self::from_source(&name, &source, bos_token, eos_token);
        }
        if let Some(arg) = name_or_source {
            return if arg.contains("{%") || arg.contains("{{") {
                Self::from_source("custom", arg, bos_token, eos_token)
            } else {
                Self::builtin(arg.trim(), bos_token, eos_token)
            };
        }
        match gguf {
            Some(source) => Self::from_source("gguf", source, bos_token, eos_token),
            None => Self::builtin("chatml", bos_token, eos_token),
        }
    }

    /// A built-in's name, "gguf", "file:<path>" or "custom".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renders `messages`; `add_generation_prompt` appends the header that
    /// opens the assistant's turn, so the model continues as the assistant.
    ///
    /// An empty conversation without a generation prompt is "" without
    /// running the template, as in llama.cpp: templates such as Gemma 3's
    /// read `messages[0]` and fail on an empty list, and "" keeps it a prefix
    /// of every later render.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        if messages.is_empty() && !add_generation_prompt {
            return Ok(String::new());
        }
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
            .collect();
        let template = self
            .env
            .get_template(&self.name)
            .map_err(|e| anyhow!("chat template {}: {}", self.name, one_line(&e)))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(|e| anyhow!("chat template {}: {}", self.name, one_line(&e)))
    }
}

/// The built-in templates: (name, Jinja source).
pub fn builtins() -> impl Iterator<Item = (&'static str, &'static str)> {
    BUILTINS.into_iter()
}

/// A template error on one line: its message can quote the template and the
/// messages (`raise_exception` text), which come from files.
fn one_line(e: &Error) -> String {
    crate::quote::escaped(&e.to_string(), 300)
}

fn builtin_names() -> String {
    BUILTINS.map(|(n, _)| n).join(", ")
}

/// The `--chat-template` help, listing the built-in names.
pub fn help() -> String {
    format!(
        "Chat template: a built-in name ({}) or a Jinja template [default: the model's, else chatml]",
        builtin_names()
    )
}

/// Instructions one render may run (about 0.1 s).
const TEMPLATE_FUEL: u64 = 10_000_000;

/// An environment that behaves like the one `transformers` renders chat
/// templates with, since that is what template authors test against.
fn hf_environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A hostile template (a model file's) must not hang a render: real ones
    // take a few hundred instructions a message.
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    // `.strip()`, `.startswith()`, `.split()`, `.items()`, ... as in Python.
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        format_time(secs, &fmt)
    });
    // minijinja's own `tojson` needs a feature we do not enable, and it
    // HTML-escapes; templates expect Python's `json.dumps`.
    env.add_filter("tojson", tojson);
    env
}

/// `value | tojson(indent=None)` with Python's `json.dumps` separators.
fn tojson(value: &Value, indent: Option<usize>, kwargs: Kwargs) -> Result<String, Error> {
    let indent = match kwargs.get::<Option<usize>>("indent")? {
        Some(i) => Some(i),
        None => indent,
    };
    // Accepted for compatibility; output is always UTF-8, keys in insertion order.
    for key in ["ensure_ascii", "sort_keys", "separators"] {
        let _: Option<Value> = kwargs.get(key)?;
    }
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, indent, 0)?;
    Ok(out)
}

fn write_json(out: &mut String, v: &Value, indent: Option<usize>, depth: usize) -> Result<(), Error> {
    let json_err = |e: serde_json::Error| Error::new(ErrorKind::BadSerialization, e.to_string());
    let (open, close, is_map) = match v.kind() {
        ValueKind::Seq | ValueKind::Iterable => ('[', ']', false),
        ValueKind::Map => ('{', '}', true),
        ValueKind::Undefined | ValueKind::None => {
            out.push_str("null");
            return Ok(());
        }
        _ => {
            out.push_str(&serde_json::to_string(v).map_err(json_err)?);
            return Ok(());
        }
    };
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * depth));
        }
    };
    out.push(open);
    let mut empty = true;
    for (i, item) in v.try_iter()?.enumerate() {
        empty = false;
        if i > 0 {
            out.push_str(if indent.is_some() { "," } else { ", " });
        }
        newline(out, depth + 1);
        if is_map {
            let key = item.as_str().map_or_else(|| item.to_string(), str::to_string);
            out.push_str(&serde_json::to_string(&key).map_err(json_err)?);
            out.push_str(": ");
            write_json(out, &v.get_item(&item)?, indent, depth + 1)?;
        } else {
            write_json(out, &item, indent, depth + 1)?;
        }
    }
    if !empty {
        newline(out, depth);
    }
    out.push(close);
    Ok(())
}

/// The `strftime` directives rendered; any other is written as it stands.
const DIRECTIVES: &str = "YymdejBbAaHIpMS%";

/// `strftime` for UTC seconds since 1970, enough for the date lines templates
/// put in system prompts (Llama 3.x uses "%d %b %Y").
fn format_time(secs: u64, fmt: &str) -> String {
    let Some(time) = i64::try_from(secs).ok().and_then(|s| DateTime::from_timestamp(s, 0)) else {
        return String::new();
    };
    // Every directive left is one chrono renders, so formatting cannot fail.
    let mut out = String::new();
    let _ = write!(out, "{}", time.format(&escape_unknown_directives(fmt)));
    out
}

/// `fmt` with each `%` that does not start one of [`DIRECTIVES`] doubled,
/// so that it stays as written.
fn escape_unknown_directives(fmt: &str) -> String {
    let mut out = String::with_capacity(fmt.len());
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '%' {
            continue;
        }
        match chars.next_if(|&d| DIRECTIVES.contains(d)) {
            Some(d) => out.push(d),
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;
    use std::path::PathBuf;

    fn conversation() -> Vec<Message> {
        vec![
            Message::new("system", "You are terse."),
            Message::new("user", "  Hi\n"),
            Message::new("assistant", "Hello!"),
            Message::new("user", "A joke, please."),
        ]
    }

    /// A built-in; they write no BOS (the tokenizer adds it), so the
    /// token texts given must not show up.
    fn builtin(name: &str) -> ChatTemplate {
        ChatTemplate::builtin(name, "<bos>", "<eos>").unwrap()
    }

    fn model_path(file: &str) -> PathBuf {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(file);
        assert!(path.exists(), "{} is missing; run models/fetch", path.display());
        path
    }

    /// The GGUF's chat template (if any), BOS and EOS token texts.
    fn gguf_template(file: &str) -> (Option<String>, String, String) {
        let gguf = GgufFile::open(model_path(file)).unwrap();
        let tokens = gguf.get_array("tokenizer.ggml.tokens").unwrap();
        let token = |key: &str| {
            let id = gguf.get_u32(key).unwrap() as usize;
            tokens[id].as_str().unwrap().to_string()
        };
        let template = gguf
            .get("tokenizer.chat_template")
            .map(|v| v.as_str().unwrap().to_string());
        (
            template,
            token("tokenizer.ggml.bos_token_id"),
            token("tokenizer.ggml.eos_token_id"),
        )
    }

    fn smollm2() -> ChatTemplate {
        let (template, bos, eos) = gguf_template("SmolLM2-135M-Instruct.Q4_1.gguf");
        let template = template.expect("SmolLM2 GGUF has a chat template");
        ChatTemplate::resolve(Some(&template), None, None, &bos, &eos).unwrap()
    }

    /// Asserts what a REPL relies on to extend its prompt turn by turn: the
    /// finished conversation so far is a prefix of the next prompt, and the
    /// prompt is a prefix of the conversation with the reply appended.
    fn assert_prefix_property(t: &ChatTemplate, messages: &[Message]) {
        assert_history_is_a_prefix(t, messages);
        if let Some(e) = prompt_prefix_failure(t, messages) {
            panic!("{e}");
        }
    }

    /// The first half: the conversation so far is a prefix of the next prompt.
    fn assert_history_is_a_prefix(t: &ChatTemplate, messages: &[Message]) {
        for n in 0..messages.len() {
            let done = t.render(&messages[..n], false).unwrap();
            let next = t.render(&messages[..n + 1], true).unwrap();
            assert!(
                next.starts_with(&done),
                "{}: {n} messages {done:?} is not a prefix of {next:?}",
                t.name()
            );
        }
    }

    /// The second half: where a prompt is not a prefix of its answered
    /// conversation, why.
    fn prompt_prefix_failure(t: &ChatTemplate, messages: &[Message]) -> Option<String> {
        (0..messages.len())
            .filter(|&n| messages[n].role == "assistant")
            .find_map(|n| {
                let prompt = t.render(&messages[..n], true).unwrap();
                let answered = t.render(&messages[..n + 1], false).unwrap();
                let name = t.name();
                (!answered.starts_with(&prompt))
                    .then(|| format!("{name}: prompt {prompt:?} is not a prefix of {answered:?}"))
            })
    }

    const CHATML_DONE: &str = "<|im_start|>system\nYou are terse.<|im_end|>\n\
        <|im_start|>user\n  Hi\n<|im_end|>\n\
        <|im_start|>assistant\nHello!<|im_end|>\n\
        <|im_start|>user\nA joke, please.<|im_end|>\n";

    #[test]
    fn chatml_builtin() {
        let t = builtin("chatml");
        assert_eq!(t.name(), "chatml");
        assert_eq!(t.render(&conversation(), false).unwrap(), CHATML_DONE);
        assert_eq!(
            t.render(&conversation(), true).unwrap(),
            format!("{CHATML_DONE}<|im_start|>assistant\n")
        );
        // An empty history is "" (a prefix of anything); a bare prompt is not.
        assert_eq!(t.render(&[], false).unwrap(), "");
        assert_eq!(t.render(&[], true).unwrap(), "<|im_start|>assistant\n");
    }

    #[test]
    fn llama3_builtin() {
        let done = "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>\
            <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
            <|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>\
            <|start_header_id|>user<|end_header_id|>\n\nA joke, please.<|eot_id|>";
        let t = builtin("llama3");
        assert_eq!(t.render(&conversation(), false).unwrap(), done);
        assert_eq!(
            t.render(&conversation(), true).unwrap(),
            format!("{done}<|start_header_id|>assistant<|end_header_id|>\n\n")
        );
    }

    const GEMMA_DONE: &str = "<start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n\
        <start_of_turn>model\nHello!<end_of_turn>\n\
        <start_of_turn>user\nA joke, please.<end_of_turn>\n";

    #[test]
    fn gemma_builtin() {
        let t = builtin("gemma");
        assert_eq!(t.render(&conversation(), false).unwrap(), GEMMA_DONE);
        assert_eq!(
            t.render(&conversation(), true).unwrap(),
            format!("{GEMMA_DONE}<start_of_turn>model\n")
        );
        // Without a system message there is no prefix.
        assert_eq!(
            t.render(&conversation()[1..2], true).unwrap(),
            "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    /// Formats whose generation prompt is not how an answer renders: the
    /// conversation then keeps the prompt it evaluated and takes the next
    /// turn's text from after the answered conversation (`new_text`), as
    /// llama.cpp does.
    const PROMPT_NOT_IN_ANSWER: [&str; 2] = ["bailing-think", "yandex"];

    /// Every built-in keeps the history half (see `builtin`), with spaces
    /// to trim too; all but two keep the prompt half.
    #[test]
    fn builtins_keep_the_prefix_property() {
        let mut spaced = conversation();
        spaced[2].content = " Hello! \n".into();
        for (name, _) in builtins() {
            for messages in [&conversation()[..], &conversation()[1..], &spaced[..]] {
                let t = builtin(name);
                assert_history_is_a_prefix(&t, messages);
                let failure = prompt_prefix_failure(&t, messages);
                let expected = PROMPT_NOT_IN_ANSWER.contains(&name);
                assert_eq!(failure.is_some(), expected, "{name}: {failure:?}");
            }
        }
    }

    #[test]
    fn raise_exception_fails_the_render_with_its_message() {
        let t = ChatTemplate::from_source(
            "strict",
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('First message must be from the user') }}{% endif %}ok",
            "",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&conversation()[1..], false).unwrap(), "ok");
        let err = t.render(&conversation(), false).unwrap_err().to_string();
        assert!(err.contains("First message must be from the user"), "{err}");
    }

    #[test]
    fn compile_error_is_one_line() {
        let err = ChatTemplate::from_source("broken", "{% for m in messages %}", "", "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("broken") && !err.contains('\n'), "{err}");
    }

    #[test]
    fn hugging_face_conveniences() {
        // Block tags on their own lines leave no blank lines or indentation.
        let source = "{% for m in messages %}\n    {% if m.content.strip().startswith('A') %}\n{{ m.content.split(',')[0] | upper }}\n    {% endif %}\n{% endfor %}\n{{ eos_token }}\n";
        let t = ChatTemplate::from_source("hf", source, "<s>", "</s>").unwrap();
        assert_eq!(t.render(&conversation(), false).unwrap(), "A JOKE\n</s>");

        let t = ChatTemplate::from_source("date", "{{ strftime_now('%d %b %Y') }}", "", "").unwrap();
        let date = t.render(&conversation(), false).unwrap();
        assert_eq!(date.len(), 11, "{date}");

        let t = ChatTemplate::from_source(
            "json",
            "{{ messages[0] | tojson }}|{{ [1, 'a'] | tojson(indent=2) }}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            t.render(&conversation()[2..3], false).unwrap(),
            "{\"role\": \"assistant\", \"content\": \"Hello!\"}|[\n  1,\n  \"a\"\n]"
        );
    }

    #[test]
    fn strftime_formats_utc_dates() {
        // 2024-07-26 14:05:09 UTC, a Friday.
        let t = 1_722_002_709;
        assert_eq!(format_time(t, "%d %b %Y"), "26 Jul 2024");
        assert_eq!(
            format_time(t, "%A %a %B %m/%d/%y %H:%M:%S %I%p %j %% %Q"),
            "Friday Fri July 07/26/24 14:05:09 02PM 208 % %Q"
        );
        assert_eq!(format_time(0, "%Y-%m-%d %a"), "1970-01-01 Thu");
        assert_eq!(format_time(951_782_400, "%Y-%m-%d"), "2000-02-29");
        // Unknown directives and a lone `%` stay as written.
        assert_eq!(format_time(t, "%e|%-d|%Z|100%"), "26|%-d|%Z|100%");
    }

    #[test]
    fn resolve_precedence() {
        let gguf = "{{ 'from gguf' }}";
        let pick =
            |name: Option<&str>, file: Option<&Path>| ChatTemplate::resolve(Some(gguf), name, file, "<s>", "</s>");
        assert_eq!(pick(None, None).unwrap().name(), "gguf");
        assert_eq!(pick(Some("llama3"), None).unwrap().name(), "llama3");
        let custom = pick(Some("{{ bos_token }}{{ messages | length }}"), None).unwrap();
        assert_eq!(custom.name(), "custom");
        assert_eq!(custom.render(&conversation(), true).unwrap(), "<s>4");
        let none = ChatTemplate::resolve(None, None, None, "", "").unwrap();
        assert_eq!(none.name(), "chatml");

        let path = std::env::temp_dir().join(format!("infllm-template-{}.jinja", std::process::id()));
        std::fs::write(&path, "{% for m in messages %}[{{ m.role }}]{% endfor %}\n").unwrap();
        let from_file = pick(Some("gemma"), Some(&path)).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(from_file.name(), format!("file:{}", path.display()));
        assert_eq!(
            from_file.render(&conversation(), false).unwrap(),
            "[system][user][assistant][user]"
        );
    }

    #[test]
    fn resolve_errors_name_the_problem() {
        let missing = Path::new("/nonexistent/dir/chat.jinja");
        let err = ChatTemplate::resolve(None, None, Some(missing), "", "").unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/dir/chat.jinja"), "{err:#}");

        let err = ChatTemplate::resolve(None, Some("vicuna-13b"), None, "", "")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"vicuna-13b\"") && err.contains("chatml, command-r"),
            "{err}"
        );
        assert!(builtins().all(|(n, _)| err.contains(n)), "{err}");
    }

    #[test]
    fn smollm2_gguf_template_is_chatml_with_a_default_system_prompt() {
        let t = smollm2();
        assert_eq!(t.name(), "gguf");
        // With a system message it is exactly ChatML.
        let chatml = builtin("chatml");
        for gen in [false, true] {
            assert_eq!(
                t.render(&conversation(), gen).unwrap(),
                chatml.render(&conversation(), gen).unwrap()
            );
        }
        // Without one it injects its own.
        assert_eq!(
            t.render(&[Message::new("user", "Hi")], true).unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_prefix_property(&t, &conversation());
        assert_prefix_property(&t, &conversation()[1..]);
    }

    #[test]
    fn gemma3_gguf_has_no_template_so_the_builtin_stands_in() {
        let (template, bos, eos) = gguf_template("gemma-3-270m-q4_k_m.gguf");
        assert_eq!((bos.as_str(), eos.as_str()), ("<bos>", "<eos>"));
        // This pinned file carries no `tokenizer.chat_template`; if a newer
        // one does, it must render as the built-in does after its BOS.
        if let Some(source) = template {
            let t = ChatTemplate::resolve(Some(&source), None, None, &bos, &eos).unwrap();
            let gemma = builtin("gemma");
            for gen in [false, true] {
                assert_eq!(
                    t.render(&conversation(), gen).unwrap(),
                    format!("{bos}{}", gemma.render(&conversation(), gen).unwrap())
                );
            }
            assert_prefix_property(&t, &conversation());
        }
        let t = ChatTemplate::resolve(None, Some("gemma"), None, &bos, &eos).unwrap();
        assert_eq!(t.render(&conversation(), false).unwrap(), GEMMA_DONE);
    }

    /// A template in the shape of Gemma 3's published one (content may be a
    /// string or a list of parts, roles must alternate, the system text
    /// prefixes the first turn), written here to check the built-in against
    /// it and that its constructs render.
    const GEMMA3_STYLE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set rest = messages[1:] -%}
{%- else -%}
    {%- set first_prefix = "" -%}
    {%- set rest = messages -%}
{%- endif -%}
{%- for message in rest -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- set role = "model" if message['role'] == 'assistant' else message['role'] -%}
    {{ '<start_of_turn>' + role + '\n' + (first_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for part in message['content'] -%}
            {%- if part['type'] == 'text' -%}{{ part['text'] | trim }}{%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\n' }}
{%- endif -%}
"#;

    #[test]
    fn gemma_builtin_matches_gemma3_style_template() {
        let t = ChatTemplate::from_source("gguf", GEMMA3_STYLE, "<bos>", "<eos>").unwrap();
        let gemma = builtin("gemma");
        for messages in [&conversation()[..], &conversation()[1..]] {
            for gen in [false, true] {
                let builtin = gemma.render(messages, gen).unwrap();
                assert_eq!(t.render(messages, gen).unwrap(), format!("<bos>{builtin}"));
            }
            assert_prefix_property(&t, messages);
        }
        let err = t
            .render(&[Message::new("assistant", "?")], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("must alternate"), "{err}");
    }
}
