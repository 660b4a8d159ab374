//! `infllm serve` as HTTP clients use it: OpenAI's endpoints and
//! llama-server's, answers equal to the CLI's, conversations kept between
//! requests (in RAM, on disk, across a restart, in slot files), concurrent
//! clients, disconnects, bad requests and the API key.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";
/// A fact and a question the 135M model answers from it.
const FACT: &str = "The secret word is pineapple. Remember it.";
const QUESTION: &str = "What is the secret word?";
/// A prompt the model continues for a long time.
const COUNT: &str = "Count from 1 to 500: 1, 2, 3,";

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("infllm-server-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A fresh, empty directory.
fn empty_dir(name: &str) -> PathBuf {
    let dir = tmp(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An agent that gives up instead of hanging a test.
fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(Duration::from_secs(120))
        .build()
}

/// Status and body of any answer: ureq returns 4xx and 5xx as errors.
fn send(req: ureq::Request, body: Option<&[u8]>) -> (u16, String) {
    let what = format!("{} {}", req.method(), req.url());
    let result = match body {
        Some(b) => req.set("Content-Type", "application/json").send_bytes(b),
        None => req.call(),
    };
    match result {
        Ok(r) | Err(ureq::Error::Status(_, r)) => (r.status(), r.into_string().expect("a text body")),
        Err(e) => panic!("{what}: {e}"),
    }
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// A running `infllm serve`, killed on drop.
struct Server {
    child: Child,
    base: String,
    /// Everything it wrote on stderr, for failure messages.
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// SmolLM2, 2 threads, greedy, a free port, and `extra`; returns once
    /// `/health` says the model is loaded.
    fn start(extra: &[&str]) -> Self {
        Self::start_with_env(extra, None)
    }

    fn start_with_env(extra: &[&str], env: Option<(&str, &str)>) -> Self {
        let model = common::smollm2();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_infllm"));
        cmd.args([
            "serve",
            "-m",
            model.to_str().unwrap(),
            "--port",
            "0",
            "-t",
            "2",
            "--temp",
            "0",
        ])
        .args(extra)
        .env_remove("LLAMA_API_KEY")
        .env("HOME", tmp("home"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start infllm serve");
        let pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (send, lines) = mpsc::channel();
        let kept = Arc::clone(&stderr);
        // Drained all along: a full pipe would block the server.
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                let _ = send.send(line);
            }
        });
        let mut server = Server {
            child,
            base: String::new(),
            stderr,
        };
        let prefix = "infllm: listening on http://127.0.0.1:";
        while server.base.is_empty() {
            match lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    if let Some(port) = line.strip_prefix(prefix) {
                        let port: u16 = port.trim().parse().unwrap_or_else(|_| panic!("port in {line:?}"));
                        assert_ne!(port, 0, "{line}");
                        server.base = format!("http://127.0.0.1:{port}");
                    }
                }
                Err(e) => panic!("no {prefix:?} line ({e}); stderr:\n{}", server.log()),
            }
        }
        server.wait_until_loaded();
        server
    }

    /// Polls `/health`: 503 with the loading error until the model is in.
    fn wait_until_loaded(&mut self) {
        let start = Instant::now();
        loop {
            let (status, body) = self.get("/health");
            match status {
                200 => return assert_eq!(parse(&body), json!({"status": "ok"})),
                503 => assert_eq!(
                    parse(&body),
                    json!({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
                ),
                _ => panic!("/health: {status} {body}"),
            }
            let exited = self.child.try_wait().unwrap();
            assert!(exited.is_none(), "exited {exited:?} while loading:\n{}", self.log());
            assert!(start.elapsed() < Duration::from_secs(60), "not loaded:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Any request, with `auth` as its Authorization header.
    fn send_as(&self, method: &str, path: &str, auth: Option<&str>, body: Option<&[u8]>) -> (u16, String) {
        let mut req = agent().request(method, &self.url(path));
        if let Some(auth) = auth {
            req = req.set("Authorization", auth);
        }
        send(req, body)
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.send_as("GET", path, None, None)
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self.send_as("POST", path, None, Some(body.to_string().as_bytes()));
        (status, parse(&text))
    }

    /// The JSON of a request that must succeed.
    fn ok(&self, path: &str, body: &Value) -> Value {
        let (status, v) = self.post(path, body);
        assert_eq!(status, 200, "POST {path} {body}: {v}\nstderr:\n{}", self.log());
        v
    }

    /// A non-streamed chat completion, its shape checked.
    fn chat(&self, messages: &Value, max_tokens: u32) -> Value {
        let v = self.ok(CHAT, &json!({"messages": messages, "max_tokens": max_tokens}));
        assert_completion(&v, "chat.completion");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant", "{v}");
        v
    }

    /// The `data:` payloads of a streamed request, with when each came.
    fn stream(&self, path: &str, body: &Value) -> Vec<(Instant, String)> {
        match agent().post(&self.url(path)).send_json(body) {
            Ok(r) => events(r),
            Err(e) => panic!("POST {path} {body}: {e}\nstderr:\n{}", self.log()),
        }
    }

    fn metric(&self, name: &str) -> f64 {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200, "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    /// Waits until metric `name` reads `want`; returns how long it took.
    fn wait_for_metric(&self, name: &str, want: f64, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.metric(name);
            if got == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "{name} is {got}, not {want}, after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM; the exit status (within a minute) and stderr.
    fn stop(mut self) -> (ExitStatus, String) {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped.
        let sent = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(sent, 0, "kill -TERM");
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no exit after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        // The drain thread reads to the end of the pipe.
        std::thread::sleep(Duration::from_millis(100));
        (status, self.log())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Server-sent events: each `data: ` line followed by a blank line.
fn events(r: ureq::Response) -> Vec<(Instant, String)> {
    let mut out = Vec::new();
    let mut lines = BufReader::new(r.into_reader()).lines();
    while let Some(line) = lines.next() {
        let line = line.expect("read the stream");
        let data = line
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not a data line: {line:?}"));
        out.push((Instant::now(), data.to_string()));
        let blank = lines.next().map(|l| l.expect("read the stream"));
        assert_eq!(blank.as_deref(), Some(""), "after {line:?}");
    }
    out
}

/// A stream's text and its last JSON chunk; checks the chunks' shape and
/// that `[DONE]` ends it.
fn streamed(events: &[(Instant, String)], chat: bool) -> (String, Value) {
    let (last, chunks) = events.split_last().expect("an empty stream");
    assert_eq!(last.1, "[DONE]");
    let chunks: Vec<Value> = chunks.iter().map(|(_, d)| parse(d)).collect();
    let (end, pieces) = chunks.split_last().expect("no chunk before [DONE]");
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let mut text = String::new();
    for c in &chunks {
        assert_eq!(c["object"], object, "{c}");
        text.push_str(piece(c, chat));
    }
    for c in pieces {
        assert!(
            c["choices"][0]["finish_reason"].is_null(),
            "finish_reason before the end: {c}"
        );
    }
    if chat {
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "{}", chunks[0]);
    }
    assert!(matches!(reason(end), "stop" | "length"), "{end}");
    assert_counts(end);
    (text, end.clone())
}

fn piece(chunk: &Value, chat: bool) -> &str {
    let choice = &chunk["choices"][0];
    let text = if chat {
        &choice["delta"]["content"]
    } else {
        &choice["text"]
    };
    text.as_str().unwrap_or("")
}

/// A non-streamed completion's shape.
fn assert_completion(v: &Value, object: &str) {
    assert_eq!(v["object"], object, "{v}");
    assert!(
        v["id"].is_string() && v["created"].is_u64() && v["model"].is_string(),
        "{v}"
    );
    assert_eq!(v["choices"][0]["index"], 0, "{v}");
    assert!(matches!(reason(v), "stop" | "length"), "{v}");
    assert_counts(v);
}

/// `usage` and `timings` agree with each other.
fn assert_counts(v: &Value) {
    let n = |x: &Value| x.as_u64().unwrap_or_else(|| panic!("not a count in {v}"));
    let (u, t) = (&v["usage"], &v["timings"]);
    assert_eq!(
        n(&u["total_tokens"]),
        n(&u["prompt_tokens"]) + n(&u["completion_tokens"]),
        "{v}"
    );
    assert_eq!(n(&u["prompt_tokens_details"]["cached_tokens"]), n(&t["cache_n"]), "{v}");
    assert_eq!(n(&t["prompt_n"]) + n(&t["cache_n"]), n(&u["prompt_tokens"]), "{v}");
    assert_eq!(n(&t["predicted_n"]), n(&u["completion_tokens"]), "{v}");
    assert!(t["prompt_ms"].is_number() && t["predicted_ms"].is_number(), "{v}");
}

fn reason(v: &Value) -> &str {
    v["choices"][0]["finish_reason"].as_str().unwrap_or("")
}

fn answer(v: &Value) -> &str {
    v["choices"][0]["message"]["content"].as_str().expect("message.content")
}

fn usage(v: &Value, field: &str) -> u64 {
    v["usage"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("usage.{field} in {v}"))
}

fn cached(v: &Value) -> u64 {
    v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("cached_tokens in {v}"))
}

fn prompt_n(v: &Value) -> u64 {
    v["timings"]["prompt_n"]
        .as_u64()
        .unwrap_or_else(|| panic!("timings.prompt_n in {v}"))
}

/// `messages` with one more message.
fn with(messages: &Value, role: &str, content: &str) -> Value {
    let mut m = messages.as_array().unwrap().clone();
    m.push(json!({"role": role, "content": content}));
    Value::Array(m)
}

fn user(content: &str) -> Value {
    json!([{"role": "user", "content": content}])
}

/// An error answer: its status, `{"error": {code, message, type}}`, and
/// `kind` as the type when given.
fn assert_error(what: &str, (status, body): (u16, String), want: u16, kind: Option<&str>) {
    assert_eq!(status, want, "{what}: {body}");
    let v = parse(&body);
    let e = &v["error"];
    assert_eq!(e["code"], want, "{what}: {v}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {v}");
    match kind {
        Some(kind) => assert_eq!(e["type"], kind, "{what}: {v}"),
        None => assert!(e["type"].is_string(), "{what}: {v}"),
    }
}

/// The CLI's greedy answer to one message piped in conversation mode
/// (which prints the answer and a newline, nothing else).
fn cli_answer(message: &str, n: u32, extra: &[&str]) -> String {
    let model = common::smollm2();
    let n = n.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_infllm"))
        .args(["-m", model.to_str().unwrap()])
        .args(["-cnv", "--temp", "0", "-t", "2", "--color", "off", "-n", &n])
        .args(extra)
        .env("HOME", tmp("home"))
        .env_remove("XDG_DATA_HOME")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = format!("{message}\n");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let answer = stdout.strip_suffix('\n').unwrap_or_else(|| panic!("{stdout:?}"));
    answer.to_string()
}

/// `infllm tokenize --ids` output, as JSON (`[1, 2, 3]`).
fn cli_ids(text: &str, extra: &[&str]) -> Value {
    let model = common::smollm2();
    let out = Command::new(env!("CARGO_BIN_EXE_infllm"))
        .args(["tokenize", "-m", model.to_str().unwrap(), "-p", text, "--ids"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    parse(String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
fn a_greedy_answer_is_the_clis_and_streaming_it_changes_nothing() {
    let _cpu = common::exclusive();
    let question = "What is the capital of France?";
    let cli = cli_answer(question, 32, &[]);
    let server = Server::start(&[]);
    let messages = user(question);
    let whole = server.chat(&messages, 32);
    assert_eq!(answer(&whole), cli, "server vs CLI");
    // The model's id defaults to the file's name.
    assert_eq!(whole["model"], "SmolLM2-135M-Instruct.Q4_1.gguf");

    let body = json!({"messages": messages, "max_tokens": 32, "stream": true});
    let (text, last) = streamed(&server.stream(CHAT, &body), true);
    assert_eq!(text, answer(&whole));
    assert_eq!(reason(&last), reason(&whole));
    for field in ["prompt_tokens", "completion_tokens"] {
        assert_eq!(usage(&last, field), usage(&whole, field), "{field}");
    }

    // `stop`, as a string or a list: the text ends before it.
    let word = answer(&whole).split_whitespace().nth(2).expect("three words");
    let before = &answer(&whole)[..answer(&whole).find(word).unwrap()];
    for stop in [json!(word), json!(["@@never@@", word])] {
        let body = json!({"messages": messages, "max_tokens": 32, "stop": stop});
        let cut = server.ok(CHAT, &body);
        assert_eq!((answer(&cut), reason(&cut)), (before, "stop"), "stop {stop}");
    }
}

#[test]
fn a_follow_up_reads_only_its_new_tokens() {
    let _cpu = common::exclusive();
    let server = Server::start(&[]);
    let messages = user(FACT);
    let first = server.chat(&messages, 24);
    assert_eq!(cached(&first), 0, "a fresh server holds nothing: {first}");
    let messages = with(&with(&messages, "assistant", answer(&first)), "user", QUESTION);
    let second = server.chat(&messages, 24);
    assert!(
        cached(&second) >= usage(&first, "prompt_tokens"),
        "first {first}\nsecond {second}"
    );
    assert!(prompt_n(&second) < 40, "{second}");
    let total = server.metric("infllm:prompt_tokens_cached_total");
    assert_eq!(total, cached(&second) as f64);
}

#[test]
fn two_clients_at_once_get_the_answers_they_get_alone() {
    let _cpu = common::exclusive();
    let server = Server::start(&["-np", "2"]);
    let questions = ["Write a short poem about the sea.", "Explain how a bicycle works."];
    let ask = |q: &str| json!({"messages": user(q), "max_tokens": 48, "stream": true});
    // (text, first and last time a piece came) per client.
    let together: Vec<(String, Instant, Instant)> = std::thread::scope(|s| {
        let clients: Vec<_> = questions
            .iter()
            .map(|q| {
                let (server, body) = (&server, ask(q));
                s.spawn(move || {
                    let events = server.stream(CHAT, &body);
                    let (text, _) = streamed(&events, true);
                    let times: Vec<Instant> = events
                        .iter()
                        .filter(|(_, d)| d.as_str() != "[DONE]" && !piece(&parse(d), true).is_empty())
                        .map(|(t, _)| *t)
                        .collect();
                    assert!(times.len() >= 10, "{text:?}: too short to overlap");
                    (text, times[0], *times.last().unwrap())
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let (a, b) = (&together[0], &together[1]);
    // Computed at once: each started before the other ended.
    assert!(a.1 < b.2 && b.1 < a.2, "the answers did not overlap");
    for (q, (text, _, _)) in questions.iter().zip(&together) {
        let alone = server.chat(&user(q), 48);
        assert_eq!(text, answer(&alone), "{q}");
    }
}

#[test]
fn a_client_that_disconnects_stops_its_generation() {
    let _cpu = common::exclusive();
    let server = Server::start(&[]);
    let body = json!({"prompt": COUNT, "max_tokens": 2000, "stream": true});
    // Its own agent: no pooled connection outlives the reader.
    let client = agent();
    let r = client.post(&server.url(COMPLETIONS)).send_json(&body).unwrap();
    let mut lines = BufReader::new(r.into_reader()).lines();
    let mut chunks = 0;
    while chunks < 3 {
        let line = lines.next().expect("the stream ended").unwrap();
        chunks += usize::from(line.starts_with("data: "));
    }
    assert_eq!(server.metric("llamacpp:requests_processing"), 1.0);
    drop(lines);
    drop(client);
    // Waited for longer than allowed, to tell slow from never.
    let stopped = server.wait_for_metric("llamacpp:requests_processing", 0.0, Duration::from_secs(30));
    assert!(
        stopped < Duration::from_secs(2),
        "still processing {stopped:?} after the disconnect"
    );
    let predicted = server.metric("llamacpp:tokens_predicted_total");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(server.metric("llamacpp:tokens_predicted_total"), predicted);

    // It still serves, and a streamed completion is the non-streamed one.
    let body = json!({"prompt": "Once upon a time", "max_tokens": 8});
    let whole = server.ok(COMPLETIONS, &body);
    assert_completion(&whole, "text_completion");
    let text = whole["choices"][0]["text"].as_str().unwrap();
    assert!(!text.is_empty(), "{whole}");
    let body = json!({"prompt": "Once upon a time", "max_tokens": 8, "stream": true});
    let (streamed_text, _) = streamed(&server.stream(COMPLETIONS, &body), false);
    assert_eq!(streamed_text, text);
}

#[test]
fn bad_requests_get_their_error_and_the_server_goes_on() {
    let _cpu = common::exclusive();
    let server = Server::start(&["--body-limit", "1", "-c", "256"]);
    let past_c = "hello ".repeat(400);
    let invalid: Vec<(&str, &str, String)> = vec![
        ("malformed JSON", CHAT, r#"{"messages": ["#.into()),
        ("messages not a list", CHAT, r#"{"messages": "Hi"}"#.into()),
        ("no messages", CHAT, r#"{"max_tokens": 4}"#.into()),
        (
            "content a number",
            CHAT,
            r#"{"messages": [{"role": "user", "content": 5}]}"#.into(),
        ),
        (
            "max_tokens a string",
            CHAT,
            json!({"messages": user("Hi"), "max_tokens": "ten"}).to_string(),
        ),
        (
            "unknown role",
            CHAT,
            json!({"messages": [{"role": "wizard", "content": "Hi"}]}).to_string(),
        ),
        ("empty content", CHAT, json!({"messages": user("")}).to_string()),
        (
            "negative max_tokens",
            CHAT,
            json!({"messages": user("Hi"), "max_tokens": -5}).to_string(),
        ),
        (
            "chat prompt past -c",
            CHAT,
            json!({"messages": user(&past_c), "max_tokens": 4}).to_string(),
        ),
        ("prompt a number", COMPLETIONS, r#"{"prompt": 5}"#.into()),
        ("no prompt", COMPLETIONS, r#"{"max_tokens": 4}"#.into()),
        (
            "completion prompt past -c",
            COMPLETIONS,
            json!({"prompt": past_c, "max_tokens": 4}).to_string(),
        ),
        ("tokenize a number", "/tokenize", r#"{"content": 5}"#.into()),
        ("detokenize a string", "/detokenize", r#"{"tokens": "x"}"#.into()),
    ];
    for (what, path, body) in invalid {
        let reply = server.send_as("POST", path, None, Some(body.as_bytes()));
        assert_error(what, reply, 400, Some("invalid_request_error"));
    }
    let big = json!({"messages": user(&"x".repeat((1 << 20) + 1024))}).to_string();
    let reply = server.send_as("POST", CHAT, None, Some(big.as_bytes()));
    assert_error("a body over --body-limit", reply, 413, None);
    let reply = server.send_as("GET", "/v1/nothing", None, None);
    assert_error("GET of an unknown path", reply, 404, Some("not_found_error"));
    let reply = server.send_as("POST", "/v1/nothing", None, Some(b"{}"));
    assert_error("POST to an unknown path", reply, 404, Some("not_found_error"));

    // It still answers; an unknown model name is taken, content may come in
    // parts, and the paths without /v1 are the same endpoints.
    let plain = server.chat(&user("Say hello."), 8);
    let parts =
        json!([{"role": "user", "content": [{"type": "text", "text": "Say "}, {"type": "text", "text": "hello."}]}]);
    let body = json!({"model": "gpt-4o", "messages": parts, "max_tokens": 8});
    let v = server.ok("/chat/completions", &body);
    assert_eq!(answer(&v), answer(&plain));
    let v = server.ok("/completions", &json!({"prompt": "Hello", "max_tokens": 4}));
    assert_completion(&v, "text_completion");
    assert_eq!(server.get("/models"), server.get("/v1/models"));
}

#[test]
fn response_format_and_grammars_constrain_answers_as_the_cli_does() {
    let _cpu = common::exclusive();
    let question = "Name a city and its country.";
    let schema = json!({
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": false
    });
    let cli = cli_answer(question, 64, &["-j", &schema.to_string()]);
    let server = Server::start(&[]);
    let named = json!({"type": "json_schema", "json_schema": {"name": "place", "strict": true, "schema": schema}});
    for format in [named, json!({"type": "json_object", "schema": schema})] {
        let body = json!({"messages": user(question), "max_tokens": 64, "response_format": format});
        let v = server.ok(CHAT, &body);
        assert_eq!(answer(&v), cli, "{format}");
        assert_eq!(reason(&v), "stop", "{v}");
        let place = parse(answer(&v));
        assert!(place["city"].is_string() && place["country"].is_string(), "{place}");
    }
    let plain = server.chat(&user(question), 64);
    assert!(serde_json::from_str::<Value>(answer(&plain)).is_err(), "{plain}");

    // Any JSON object; llama-server's own fields on the completion endpoint.
    // (SmolLM2 nests objects until max_tokens here: the text is cut, not ended.)
    let body = json!({"messages": user(question), "max_tokens": 64, "response_format": {"type": "json_object"}});
    let v = server.ok(CHAT, &body);
    match reason(&v) {
        "stop" => assert!(parse(answer(&v)).is_object(), "{v}"),
        _ => assert!(
            answer(&v).starts_with('{') && usage(&v, "completion_tokens") == 64,
            "{v}"
        ),
    }
    let body = json!({"prompt": "Is the sky blue? Answer:", "max_tokens": 8, "grammar": "root ::= \" yes\" | \" no\""});
    let text = server.ok(COMPLETIONS, &body)["choices"][0]["text"].clone();
    assert!(text == " yes" || text == " no", "{text}");
    let body = json!({"prompt": "Count:", "max_tokens": 8, "json_schema": {"type": "integer"}});
    let text = server.ok(COMPLETIONS, &body)["choices"][0]["text"].clone();
    assert!(text.as_str().unwrap().trim().parse::<i64>().is_ok(), "{text}");

    for (what, body) in [
        (
            "both",
            json!({"prompt": "x", "grammar": "root ::= \"a\"", "json_schema": {}}),
        ),
        (
            "both through response_format",
            json!({"prompt": "x", "grammar": "root ::= \"a\"", "response_format": {"type": "json_object"}}),
        ),
        ("bad type", json!({"prompt": "x", "response_format": {"type": "xml"}})),
        ("bad grammar", json!({"prompt": "x", "grammar": "root ::= ("})),
        ("bad schema", json!({"prompt": "x", "json_schema": [1]})),
    ] {
        let reply = server.send_as("POST", COMPLETIONS, None, Some(body.to_string().as_bytes()));
        assert_error(what, reply, 400, Some("invalid_request_error"));
    }
}

#[test]
fn a_request_past_a_full_queue_gets_503() {
    let _cpu = common::exclusive();
    let server = Server::start(&["--queue", "1"]);
    // One request runs in the only slot...
    let client = agent();
    let body = json!({"prompt": COUNT, "max_tokens": 400, "stream": true});
    let r = client.post(&server.url(COMPLETIONS)).send_json(&body).unwrap();
    let mut running = BufReader::new(r.into_reader()).lines();
    assert!(running.next().expect("a first chunk").unwrap().starts_with("data: "));
    let short = json!({"messages": user("Hi"), "max_tokens": 4});
    std::thread::scope(|s| {
        // ...one waits for it...
        let waiting = s.spawn(|| server.post(CHAT, &short));
        server.wait_for_metric("llamacpp:requests_deferred", 1.0, Duration::from_secs(10));
        // ...and one more is refused.
        let refused = server.send_as("POST", CHAT, None, Some(short.to_string().as_bytes()));
        assert_error("past the queue", refused, 503, Some("unavailable_error"));
        drop(running);
        drop(client);
        let (status, v) = waiting.join().unwrap();
        assert_eq!(status, 200, "the waiting request: {v}");
    });
    assert_eq!(server.metric("llamacpp:requests_deferred"), 0.0);
}

/// Conversation X's first turn, conversation Y's first turn (another system
/// prompt), X's second turn; returns X's two answers and the conversations
/// on disk before X's second turn.
fn x_y_x(server: &Server) -> (Value, Value, f64) {
    let x = json!([
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": "Name a fruit that is yellow."}
    ]);
    let y = json!([
        {"role": "system", "content": "You are a poet who always answers in rhyme about the stars."},
        {"role": "user", "content": "Describe the night sky over the ocean."}
    ]);
    let x1 = server.chat(&x, 24);
    server.chat(&y, 24);
    let on_disk = server.metric("infllm:conversations_on_disk");
    let x = with(&with(&x, "assistant", answer(&x1)), "user", "And one that is red?");
    let x2 = server.chat(&x, 24);
    (x1, x2, on_disk)
}

#[test]
fn conversations_set_aside_on_disk_continue_bit_for_bit() {
    let _cpu = common::exclusive();
    let (a1, a2, a_disk) = x_y_x(&Server::start(&[]));
    let (b1, b2, b_disk) = x_y_x(&Server::start(&["--cache-ram", "0"]));
    assert_eq!(a_disk, 0.0, "with 8 GiB of cache nothing goes to disk");
    assert!(b_disk >= 1.0, "--cache-ram 0: X is not on disk");
    assert_eq!(answer(&a1), answer(&b1));
    for x2 in [&a2, &b2] {
        assert!(
            cached(x2) >= usage(&a1, "prompt_tokens"),
            "X's first turn is not reused: {x2}"
        );
    }
    assert_eq!(
        answer(&a2),
        answer(&b2),
        "the conversation from disk continues differently"
    );
}

/// A first turn: the messages for the second one, and the first answer.
fn first_turn(server: &Server) -> (Value, Value) {
    let first = server.chat(&user(FACT), 24);
    let messages = with(&with(&user(FACT), "assistant", answer(&first)), "user", QUESTION);
    (messages, first)
}

#[test]
fn a_restarted_server_continues_its_conversations() {
    let _cpu = common::exclusive();
    let unbroken = Server::start(&[]);
    let (messages, want_first) = first_turn(&unbroken);
    let want = unbroken.chat(&messages, 24);
    drop(unbroken);

    let dir = empty_dir("restart");
    let flags = ["--slot-save-path", dir.to_str().unwrap()];
    let server = Server::start(&flags);
    let (_, first) = first_turn(&server);
    assert_eq!(answer(&first), answer(&want_first));
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{status:?}; stderr:\n{log}");
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert!(files >= 1, "nothing saved in {}; stderr:\n{log}", dir.display());

    let server = Server::start(&flags);
    let second = server.chat(&messages, 24);
    assert!(cached(&second) > 0, "{second}");
    assert_eq!(answer(&second), answer(&want));
}

#[test]
fn the_api_key_guards_everything_but_health_and_models() {
    let _cpu = common::exclusive();
    let server = Server::start(&["--api-key", "secret", "--alias", "my-model"]);
    let body = json!({"messages": user("Hi"), "max_tokens": 4}).to_string();
    let body = Some(body.as_bytes());
    for auth in [None, Some("Bearer wrong"), Some("secret")] {
        let what = format!("Authorization {auth:?}");
        let reply = server.send_as("POST", CHAT, auth, body);
        assert_error(&what, reply, 401, Some("authentication_error"));
    }
    let (status, text) = server.send_as("POST", CHAT, Some("Bearer secret"), body);
    assert_eq!(status, 200, "{text}");
    assert_eq!(server.get("/health").0, 200);
    let (status, text) = server.get("/v1/models");
    assert_eq!(status, 200, "{text}");
    let models = parse(&text);
    assert_eq!(models["object"], "list");
    let model = &models["data"][0];
    assert_eq!(
        (&model["id"], &model["object"], &model["owned_by"]),
        (&json!("my-model"), &json!("model"), &json!("infllm"))
    );
    drop(server);

    // The key may come from LLAMA_API_KEY instead.
    let server = Server::start_with_env(&[], Some(("LLAMA_API_KEY", "from-env")));
    let body = json!({"content": "Hi"}).to_string();
    let body = Some(body.as_bytes());
    assert_error(
        "no key",
        server.send_as("POST", "/tokenize", None, body),
        401,
        Some("authentication_error"),
    );
    let (status, text) = server.send_as("POST", "/tokenize", Some("Bearer from-env"), body);
    assert_eq!(status, 200, "{text}");
}

#[test]
fn tokenize_and_detokenize_round_trip_like_the_cli() {
    let _cpu = common::exclusive();
    let server = Server::start(&[]);
    let text = "Hello world! The naïve café opens at 12345 o'clock.";
    let plain = server.ok("/tokenize", &json!({"content": text, "add_special": false}));
    assert_eq!(plain["tokens"], cli_ids(text, &["--no-bos"]));
    let special = server.ok("/tokenize", &json!({"content": text, "add_special": true}));
    assert_eq!(special["tokens"], cli_ids(text, &[]));
    let back = server.ok("/detokenize", &json!({"tokens": plain["tokens"]}));
    assert_eq!(back["content"], text);
}

#[test]
fn a_slot_saved_erased_and_restored_continues_its_conversation() {
    let _cpu = common::exclusive();
    let dir = empty_dir("slots");
    let server = Server::start(&["--slot-save-path", dir.to_str().unwrap()]);
    let (messages, first) = first_turn(&server);
    let file = json!({"filename": "conversation.bin"});
    let saved = server.ok("/slots/0?action=save", &file);
    assert_eq!(
        (&saved["id_slot"], &saved["filename"]),
        (&json!(0), &file["filename"]),
        "{saved}"
    );
    let n_saved = saved["n_saved"].as_u64().unwrap();
    assert!(n_saved >= usage(&first, "prompt_tokens"), "{saved}");
    let on_disk = std::fs::metadata(dir.join("conversation.bin")).unwrap().len();
    assert_eq!(saved["n_written"], on_disk, "{saved}");

    server.ok("/slots/0?action=erase", &json!({}));
    let restored = server.ok("/slots/0?action=restore", &file);
    assert_eq!(restored["id_slot"], 0, "{restored}");
    assert_eq!(restored["filename"], file["filename"], "{restored}");
    assert_eq!(restored["n_restored"], n_saved, "{restored}");
    assert_eq!(restored["n_read"], on_disk, "{restored}");
    let second = server.chat(&messages, 24);
    assert!(cached(&second) > 0, "{second}");

    for name in ["../escape.bin", "sub/conversation.bin"] {
        let body = json!({"filename": name}).to_string();
        let reply = server.send_as("POST", "/slots/0?action=save", None, Some(body.as_bytes()));
        assert_error(name, reply, 400, Some("invalid_request_error"));
    }
    drop(server);

    let server = Server::start(&[]);
    let body = file.to_string();
    let reply = server.send_as("POST", "/slots/0?action=save", None, Some(body.as_bytes()));
    assert_error("without --slot-save-path", reply, 501, None);
}
