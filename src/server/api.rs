//! OpenAI's request and error shapes as the server reads and checks them:
//! every value is checked here, before it reaches the compute thread.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::chat::Message;
use crate::quote::quoted;
use crate::sampling::{random_seed, GrammarSpec, SamplingParams};
use crate::tokenizer::Token;

/// An error as OpenAI's API returns it: `{"error": {code, message, type}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", message)
    }

    pub fn server(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.status.as_u16(), "message": self.message, "type": self.kind}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// A request body as JSON of type `T`; serde's message names the field.
pub fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// `content` as OpenAI sends it: a string or a list of parts.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// `stop`: one string or several.
#[derive(Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

/// The generation options both completion endpoints take.
#[derive(Deserialize, Default)]
struct Options {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    repeat_last_n: Option<i64>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    /// llama-server's name for `max_tokens`.
    n_predict: Option<i64>,
    seed: Option<i64>,
    stop: Option<StopField>,
    #[serde(default)]
    stream: bool,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    /// OpenAI's `{"TOKEN_ID": BIAS}` or llama-server's `[[TOKEN_ID, BIAS]]`.
    logit_bias: Option<serde_json::Value>,
    n: Option<i64>,
    /// llama-server's constraints: GBNF text, a JSON schema, or OpenAI's
    /// `response_format`.
    grammar: Option<String>,
    json_schema: Option<serde_json::Value>,
    response_format: Option<ResponseFormat>,
}

/// OpenAI's `response_format`: `{"type": "text"}`, `{"type": "json_object"}`
/// (llama-server also reads a `schema` beside it) or `{"type":
/// "json_schema", "json_schema": {"name": .., "schema": {..}}}`.
#[derive(Deserialize)]
struct ResponseFormat {
    #[serde(rename = "type", default)]
    kind: String,
    schema: Option<serde_json::Value>,
    json_schema: Option<NamedSchema>,
}

#[derive(Deserialize)]
struct NamedSchema {
    schema: Option<serde_json::Value>,
}

#[derive(Deserialize)]
pub struct ChatRequest {
    messages: Vec<InMessage>,
    #[serde(flatten)]
    options: Options,
}

#[derive(Deserialize)]
pub struct CompletionRequest {
    prompt: String,
    #[serde(flatten)]
    options: Options,
}

/// The server's defaults for what a request leaves out (its flags).
#[derive(Debug, Clone)]
pub struct Defaults {
    pub sampling: SamplingParams,
    /// Seed flag -1: a new seed per request.
    pub random_seed: bool,
    /// `-n`; None: until the end of the turn or the context.
    pub max_tokens: Option<usize>,
    pub n_ctx: usize,
}

/// A checked request for the compute thread.
#[derive(Debug, Clone)]
pub struct Generation {
    pub input: Input,
    pub sampling: SamplingParams,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub stream: bool,
}

#[derive(Debug, Clone)]
pub enum Input {
    /// Rendered with the chat template.
    Chat(Vec<Message>),
    /// Read as it is.
    Text(String),
}

/// Roles a chat request may use (OpenAI's `developer` is a system prompt).
fn role(r: &str) -> Result<&'static str, ApiError> {
    match r {
        "system" | "developer" => Ok("system"),
        "user" => Ok("user"),
        "assistant" => Ok("assistant"),
        _ => Err(ApiError::bad_request(format!(
            "unknown message role {} (system, developer, user or assistant)",
            quoted(r)
        ))),
    }
}

fn content_text(i: usize, c: Option<Content>) -> Result<String, ApiError> {
    match c {
        None => Ok(String::new()),
        Some(Content::Text(t)) => Ok(t),
        Some(Content::Parts(parts)) => parts
            .into_iter()
            .map(|p| match (p.kind.as_str(), p.text) {
                ("text", Some(t)) => Ok(t),
                (kind, _) => Err(ApiError::bad_request(format!(
                    "messages[{i}]: content part of type {} is not supported (text only)",
                    quoted(kind)
                ))),
            })
            .collect(),
    }
}

impl ChatRequest {
    pub fn check(self, d: &Defaults) -> Result<Generation, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::bad_request("messages is empty"));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            let role = role(&m.role).map_err(|e| ApiError::bad_request(format!("messages[{i}]: {}", e.message)))?;
            let content = content_text(i, m.content)?;
            if content.is_empty() && role != "assistant" {
                return Err(ApiError::bad_request(format!("messages[{i}]: empty content")));
            }
            messages.push(Message::new(role, &content));
        }
        if messages.last().is_some_and(|m| m.role == "assistant") {
            return Err(ApiError::bad_request(
                "the last message is the assistant's: nothing to answer (continuing an answer is not supported)",
            ));
        }
        self.options.check(Input::Chat(messages), d)
    }
}

impl CompletionRequest {
    pub fn check(self, d: &Defaults) -> Result<Generation, ApiError> {
        if self.prompt.is_empty() {
            return Err(ApiError::bad_request("prompt is empty"));
        }
        self.options.check(Input::Text(self.prompt), d)
    }
}

fn range_error(field: &str, want: &str, got: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("{field} must be {want}, got {got}"))
}

impl Options {
    fn check(self, input: Input, d: &Defaults) -> Result<Generation, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad_request("n must be 1 (one choice per request)"));
        }
        let max = self.max_completion_tokens.or(self.max_tokens).or(self.n_predict);
        let max_tokens = match max {
            None | Some(-1) => d.max_tokens,
            Some(n) if n < 0 => return Err(range_error("max_tokens", ">= 0", n)),
            Some(n) => Some(n as usize),
        };
        let sampling = self.sampling(d)?;
        let stop = match self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s],
            Some(StopField::Many(v)) => v,
        };
        if stop.len() > 16 || stop.iter().any(String::is_empty) {
            return Err(ApiError::bad_request("stop: at most 16 non-empty strings"));
        }
        Ok(Generation {
            input,
            sampling,
            max_tokens,
            stop,
            stream: self.stream,
        })
    }

    fn sampling(&self, d: &Defaults) -> Result<SamplingParams, ApiError> {
        let mut p = d.sampling.clone();
        for (field, value, target) in [
            ("presence_penalty", self.presence_penalty, &mut p.presence_penalty),
            ("frequency_penalty", self.frequency_penalty, &mut p.frequency_penalty),
        ] {
            if let Some(v) = value {
                *target = Some(v)
                    .filter(|v| v.is_finite())
                    .ok_or(range_error(field, "finite", v))?;
            }
        }
        if let Some(b) = &self.logit_bias {
            p.logit_bias = logit_bias(b)?;
        }
        if let Some(t) = self.temperature {
            p.temp = Some(t)
                .filter(|t| t.is_finite())
                .ok_or(range_error("temperature", "finite", t))?;
        }
        for (field, value, target) in [("top_p", self.top_p, &mut p.top_p), ("min_p", self.min_p, &mut p.min_p)] {
            if let Some(v) = value {
                *target = Some(v)
                    .filter(|v| (0.0..=1.0).contains(v))
                    .ok_or(range_error(field, "in [0, 1]", v))?;
            }
        }
        if let Some(k) = self.top_k {
            p.top_k = usize::try_from(k).map_err(|_| range_error("top_k", ">= 0", k))?;
        }
        if let Some(r) = self.repeat_penalty {
            p.repeat_penalty =
                Some(r)
                    .filter(|r| r.is_finite() && *r > 0.0)
                    .ok_or(range_error("repeat_penalty", "> 0", r))?;
        }
        if let Some(n) = self.repeat_last_n {
            p.repeat_last_n = match n {
                -1 => d.n_ctx,
                n => usize::try_from(n).map_err(|_| range_error("repeat_last_n", ">= -1", n))?,
            };
        }
        // llama.cpp's seeds are 32-bit; -1 and 4294967295 ask for a random one.
        p.seed = match self.seed {
            Some(-1 | 0xFFFF_FFFF) => random_seed() as u32,
            Some(s) => u32::try_from(s).map_err(|_| range_error("seed", "in [-1, 4294967295]", s))?,
            None if d.random_seed => random_seed() as u32,
            None => d.sampling.seed,
        };
        p.check().map_err(|e| ApiError::bad_request(e.to_string()))?;
        // After `check`, which would compile it again under a flag's name.
        if let Some(g) = self.constraint()? {
            let field = match g {
                GrammarSpec::Gbnf(_) => "grammar",
                GrammarSpec::JsonSchema(_) => "json_schema",
            };
            g.check_as(field).map_err(|e| ApiError::bad_request(e.to_string()))?;
            p.grammar = Some(Box::new(g));
        }
        Ok(p)
    }

    /// The request's grammar or schema, read as llama-server reads them
    /// (`response_format` wins over `json_schema`; an empty schema is any
    /// JSON object); None keeps the server's own.
    fn constraint(&self) -> Result<Option<GrammarSpec>, ApiError> {
        let mut schema = self.json_schema.clone();
        if let Some(f) = &self.response_format {
            schema = match f.kind.as_str() {
                "" | "text" => schema,
                "json_object" => Some(f.schema.clone().unwrap_or_default()),
                "json_schema" => Some(
                    f.json_schema
                        .as_ref()
                        .and_then(|s| s.schema.clone())
                        .unwrap_or_default(),
                ),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "response_format type must be text, json_object or json_schema, got {}",
                        quoted(other)
                    )))
                }
            };
        }
        Ok(match (schema, &self.grammar) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "a JSON schema (json_schema or response_format) and a grammar cannot both be given",
                ))
            }
            (Some(s), None) => {
                let any_object = s.is_null() || s.as_object().is_some_and(|o| o.is_empty());
                let s = if any_object { json!({"type": "object"}) } else { s };
                Some(GrammarSpec::JsonSchema(s.to_string()))
            }
            (None, Some(g)) => Some(GrammarSpec::Gbnf(g.clone())),
            (None, None) => None,
        })
    }
}

/// A request's `logit_bias`: token ids (as strings or numbers) with finite
/// biases, or `false` (llama-server: the token is banned).
fn logit_bias(v: &serde_json::Value) -> Result<Vec<(Token, f32)>, ApiError> {
    use serde_json::Value;
    let bad = || ApiError::bad_request("logit_bias must map token ids to numbers (or false)");
    let pair = |t: &Value, b: &Value| -> Result<(Token, f32), ApiError> {
        let t = match t {
            Value::String(s) => s.parse::<Token>().ok(),
            t => t.as_i64().and_then(|t| Token::try_from(t).ok()),
        };
        let b = match b {
            Value::Bool(false) => Some(f32::NEG_INFINITY),
            b => b.as_f64().map(|b| b as f32).filter(|b| b.is_finite()),
        };
        t.filter(|&t| t >= 0).zip(b).ok_or_else(bad)
    };
    match v {
        Value::Object(m) => m.iter().map(|(t, b)| pair(&Value::String(t.clone()), b)).collect(),
        Value::Array(a) => a
            .iter()
            .map(|e| match e.as_array().map(Vec::as_slice) {
                Some([t, b]) => pair(t, b),
                _ => Err(bad()),
            })
            .collect(),
        _ => Err(bad()),
    }
}

/// `POST /tokenize`.
#[derive(Deserialize)]
pub struct TokenizeRequest {
    pub content: String,
    #[serde(default)]
    pub add_special: bool,
}

/// `POST /detokenize`.
#[derive(Deserialize)]
pub struct DetokenizeRequest {
    pub tokens: Vec<i64>,
}

/// `POST /slots/{id}` body.
#[derive(Deserialize)]
pub struct SlotRequest {
    #[serde(default)]
    pub filename: Option<String>,
}

/// `?action=` of `/slots/{id}`.
#[derive(Deserialize)]
pub struct SlotQuery {
    pub action: String,
}

/// A slot file name: a plain name inside `--slot-save-path`.
pub fn check_filename(name: &str) -> Result<(), ApiError> {
    let plain = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control);
    match plain {
        true => Ok(()),
        false => Err(ApiError::bad_request(format!(
            "filename {} must be a plain file name (no path, not hidden)",
            quoted(name)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(body: serde_json::Value) -> Result<SamplingParams, String> {
        let d = Defaults {
            sampling: SamplingParams::default(),
            random_seed: false,
            max_tokens: None,
            n_ctx: 512,
        };
        let r: CompletionRequest = serde_json::from_value(body).unwrap();
        r.check(&d).map(|g| g.sampling).map_err(|e| e.message)
    }

    #[test]
    fn penalties_seed_and_logit_bias_reach_the_sampler() {
        let p = sampling(json!({
            "prompt": "x", "presence_penalty": 0.5, "frequency_penalty": -0.25, "seed": 4000000000u32,
            "logit_bias": {"15": 2.5, "7": false}
        }))
        .unwrap();
        assert_eq!(
            (p.presence_penalty, p.frequency_penalty, p.seed),
            (0.5, -0.25, 4_000_000_000)
        );
        let mut bias = p.logit_bias;
        bias.sort_by_key(|b| b.0);
        assert_eq!(bias, [(7, f32::NEG_INFINITY), (15, 2.5)]);
        let p = sampling(json!({"prompt": "x", "logit_bias": [[3, -1.0]]})).unwrap();
        assert_eq!(p.logit_bias, [(3, -1.0)]);
    }

    #[test]
    fn bad_sampling_fields_are_refused() {
        for (body, want) in [
            (
                json!({"prompt": "x", "seed": 4294967296u64}),
                "seed must be in [-1, 4294967295]",
            ),
            (
                json!({"prompt": "x", "logit_bias": {"a": 1}}),
                "logit_bias must map token ids",
            ),
            (
                json!({"prompt": "x", "logit_bias": [[1]]}),
                "logit_bias must map token ids",
            ),
        ] {
            let e = sampling(body).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }
}
