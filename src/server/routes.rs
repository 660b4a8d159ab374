//! The HTTP side: OpenAI's and llama-server's endpoints. Handlers check
//! the request, hand it to the compute thread and turn its events into
//! JSON or server-sent events.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::oneshot;
use tokio::time::{timeout_at, Instant};
use tokio_stream::wrappers::ReceiverStream;

use super::api::{
    parse, ApiError, ChatRequest, CompletionRequest, Defaults, DetokenizeRequest, Generation, SlotRequest,
    TokenizeRequest,
};
use super::job::{Event, Finish, Job};
use super::metrics::Metrics;
use super::worker::Work;

pub struct AppState {
    pub work: Sender<Work>,
    pub metrics: Arc<Metrics>,
    /// Set once the model is loaded.
    pub defaults: OnceLock<Defaults>,
    /// Requests that may wait for a slot.
    pub queue: u64,
    pub alias: String,
    pub api_key: Option<String>,
    pub timeout: Duration,
    pub created: u64,
}

type Shared = Arc<AppState>;

pub fn router(state: Shared, body_limit: usize) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .route("/models", get(models))
        .route("/v1/models", get(models))
        .route("/chat/completions", post(chat))
        .route("/v1/chat/completions", post(chat))
        .route("/completions", post(completions))
        .route("/v1/completions", post(completions))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/metrics", get(metrics))
        .route("/slots/{id}", post(slots))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found_error", "no such endpoint") })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn health(State(s): State<Shared>) -> Response {
    match s.metrics.ready.load(Relaxed) {
        true => Json(json!({"status": "ok"})).into_response(),
        false => ApiError::unavailable("Loading model").into_response(),
    }
}

async fn models(State(s): State<Shared>) -> Json<Value> {
    Json(json!({"object": "list", "data": [
        {"id": s.alias, "object": "model", "created": s.created, "owned_by": "infllm"}
    ]}))
}

/// The API key check (`--api-key`), then the body within its limit.
fn admitted(s: &AppState, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    if let Some(key) = &s.api_key {
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "Invalid API Key",
            ));
        }
    }
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            e.status(),
            "invalid_request_error",
            "request body over the limit (--body-limit)",
        ),
        status => ApiError::new(status, "invalid_request_error", e.body_text()),
    })
}

fn defaults(s: &AppState) -> Result<&Defaults, ApiError> {
    s.defaults.get().ok_or_else(|| ApiError::unavailable("Loading model"))
}

async fn chat(State(s): State<Shared>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let checked = admitted(&s, &headers, body).and_then(|b| parse::<ChatRequest>(&b)?.check(defaults(&s)?));
    match checked {
        Ok(gen) => generate(s, gen, Kind::Chat).await,
        Err(e) => e.into_response(),
    }
}

async fn completions(State(s): State<Shared>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let checked = admitted(&s, &headers, body).and_then(|b| parse::<CompletionRequest>(&b)?.check(defaults(&s)?));
    match checked {
        Ok(gen) => generate(s, gen, Kind::Text).await,
        Err(e) => e.into_response(),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

/// What every response of one request repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

impl Meta {
    fn new(s: &AppState, kind: Kind) -> Self {
        let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
        Self {
            id: format!("{prefix}-{:016x}", crate::sampling::random_seed()),
            created: unix_now(),
            model: s.alias.clone(),
            kind,
        }
    }

    /// A response object around `choice`.
    fn object(&self, chunk: bool, choice: Value) -> Value {
        let object = match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
               "choices": [choice]})
    }

    /// A streamed piece of text.
    fn piece(&self, text: &str) -> Value {
        match self.kind {
            Kind::Chat => self.object(
                true,
                json!({"index": 0, "delta": {"content": text}, "finish_reason": null}),
            ),
            Kind::Text => self.object(true, json!({"index": 0, "text": text, "finish_reason": null})),
        }
    }

    /// The last object: the whole text (None when streamed), why it ended, counts.
    fn last(&self, text: Option<&str>, f: &Finish) -> Value {
        let choice = match (self.kind, text) {
            (Kind::Chat, Some(t)) => json!({"index": 0, "message": {"role": "assistant", "content": t},
                                            "finish_reason": f.reason, "logprobs": null}),
            (Kind::Chat, None) => json!({"index": 0, "delta": {}, "finish_reason": f.reason}),
            (Kind::Text, t) => json!({"index": 0, "text": t.unwrap_or(""), "finish_reason": f.reason,
                                      "logprobs": null}),
        };
        let mut v = self.object(text.is_none(), choice);
        v["usage"] = usage(f);
        v["timings"] = timings(f);
        v
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn usage(f: &Finish) -> Value {
    json!({"prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens,
           "total_tokens": f.prompt_tokens + f.completion_tokens,
           "prompt_tokens_details": {"cached_tokens": f.cached}})
}

fn timings(f: &Finish) -> Value {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let rate = |n: usize, d: Duration| if d.is_zero() { 0.0 } else { n as f64 / d.as_secs_f64() };
    let read = f.prompt_tokens - f.cached;
    json!({"cache_n": f.cached, "prompt_n": read, "prompt_ms": ms(f.prompt_time),
           "prompt_per_second": rate(read, f.prompt_time),
           "predicted_n": f.completion_tokens, "predicted_ms": ms(f.predict_time),
           "predicted_per_second": rate(f.completion_tokens, f.predict_time)})
}

/// Queues `gen` for a slot; answers once it has one (or fails).
async fn generate(s: Shared, gen: Generation, kind: Kind) -> Response {
    if s.metrics.deferred.fetch_add(1, Relaxed) >= s.queue {
        s.metrics.deferred.fetch_sub(1, Relaxed);
        return ApiError::unavailable(format!("too many requests waiting ({}, --queue)", s.queue)).into_response();
    }
    let stream = gen.stream;
    let (events, mut rx) = unbounded_channel();
    if s.work.send(Work::Generate(Job { gen, events })).is_err() {
        s.metrics.deferred.fetch_sub(1, Relaxed);
        return ApiError::unavailable("the server is shutting down").into_response();
    }
    let deadline = Instant::now() + s.timeout;
    match next(&mut rx, deadline, s.timeout).await {
        Ok(Event::Started { .. }) => {}
        Ok(Event::Failed(e)) | Err(e) => return e.into_response(),
        Ok(other) => return ApiError::server(format!("unexpected {other:?}")).into_response(),
    }
    let meta = Meta::new(&s, kind);
    match stream {
        true => stream_events(meta, rx, deadline, s.timeout),
        false => collect(meta, rx, deadline, s.timeout).await,
    }
}

/// The next event, or why there is none.
async fn next(rx: &mut UnboundedReceiver<Event>, deadline: Instant, timeout: Duration) -> Result<Event, ApiError> {
    match timeout_at(deadline, rx.recv()).await {
        Ok(Some(e)) => Ok(e),
        Ok(None) => Err(ApiError::unavailable("the server is shutting down")),
        Err(_) => Err(ApiError::unavailable(format!(
            "the request ran past {} s (--timeout)",
            timeout.as_secs()
        ))),
    }
}

async fn collect(meta: Meta, mut rx: UnboundedReceiver<Event>, deadline: Instant, timeout: Duration) -> Response {
    let mut text = String::new();
    loop {
        match next(&mut rx, deadline, timeout).await {
            Ok(Event::Text(t)) => text.push_str(&t),
            Ok(Event::Done(f)) => return Json(meta.last(Some(&text), &f)).into_response(),
            Ok(Event::Started { .. }) => {}
            Ok(Event::Failed(e)) | Err(e) => return e.into_response(),
        }
    }
}

/// Server-sent events: `data: {chunk}` per piece, the last chunk with the
/// counts, then `data: [DONE]`. A client that goes away drops the stream,
/// and with it the request.
fn stream_events(meta: Meta, mut rx: UnboundedReceiver<Event>, deadline: Instant, timeout: Duration) -> Response {
    let (tx, out) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let data = |v: &Value| Ok(SseEvent::default().data(v.to_string()));
        if meta.kind == Kind::Chat {
            let first = meta.object(
                true,
                json!({"index": 0, "delta": {"role": "assistant", "content": ""},
                                                 "finish_reason": null}),
            );
            if tx.send(data(&first)).await.is_err() {
                return;
            }
        }
        loop {
            let event = tokio::select! {
                _ = tx.closed() => return,
                e = next(&mut rx, deadline, timeout) => e,
            };
            let sent = match event {
                Ok(Event::Text(t)) => tx.send(data(&meta.piece(&t))).await,
                Ok(Event::Done(f)) => {
                    let _ = tx.send(data(&meta.last(None, &f))).await;
                    let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
                    return;
                }
                Ok(Event::Started { .. }) => Ok(()),
                Ok(Event::Failed(e)) | Err(e) => {
                    let _ = tx.send(data(&e.body())).await;
                    return;
                }
            };
            if sent.is_err() {
                return;
            }
        }
    });
    Sse::new(ReceiverStream::new(out)).into_response()
}

/// Asks the compute thread and waits for its reply.
async fn ask<T>(s: &AppState, work: impl FnOnce(oneshot::Sender<T>) -> Work) -> Result<T, ApiError> {
    defaults(s)?;
    let (reply, answer) = oneshot::channel();
    s.work
        .send(work(reply))
        .map_err(|_| ApiError::unavailable("the server is shutting down"))?;
    answer
        .await
        .map_err(|_| ApiError::unavailable("the server is shutting down"))
}

async fn tokenize(State(s): State<Shared>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let run = async {
        let r: TokenizeRequest = parse(&admitted(&s, &headers, body)?)?;
        let tokens = ask(&s, |reply| Work::Tokenize {
            content: r.content,
            add_special: r.add_special,
            reply,
        })
        .await?;
        Ok::<_, ApiError>(Json(json!({"tokens": tokens})))
    };
    run.await.into_response()
}

async fn detokenize(State(s): State<Shared>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let run = async {
        let r: DetokenizeRequest = parse(&admitted(&s, &headers, body)?)?;
        let content = ask(&s, |reply| Work::Detokenize {
            tokens: r.tokens,
            reply,
        })
        .await??;
        Ok::<_, ApiError>(Json(json!({"content": content})))
    };
    run.await.into_response()
}

async fn metrics(State(s): State<Shared>, headers: HeaderMap) -> Response {
    match admitted(&s, &headers, Ok(Bytes::new())) {
        Ok(_) => ([("content-type", "text/plain; version=0.0.4")], s.metrics.render()).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn slots(
    State(s): State<Shared>,
    Path(id): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let body = admitted(&s, &headers, body)?;
        let id: usize = id
            .parse()
            .map_err(|_| ApiError::bad_request(format!("slot id {} is not a number", crate::quote::quoted(&id))))?;
        let query = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
        let action = query
            .get("action")
            .cloned()
            .ok_or_else(|| ApiError::bad_request("action is missing"))?;
        let r: SlotRequest = match body.is_empty() {
            true => SlotRequest { filename: None },
            false => parse(&body)?,
        };
        let filename = r.filename;
        let v = ask(&s, |reply| Work::Slot {
            id,
            action,
            filename,
            reply,
        })
        .await??;
        Ok::<_, ApiError>(Json(v))
    };
    run.await.into_response()
}
