//! Counters the server exposes at `/metrics` (Prometheus text), with
//! llama-server's names where it has the same figure.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Default)]
pub struct Metrics {
    /// The model is loaded: requests are taken.
    pub ready: AtomicBool,
    /// Prompt tokens evaluated, and those found in the memory instead.
    pub prompt_tokens: AtomicU64,
    pub prompt_cached: AtomicU64,
    pub prompt_micros: AtomicU64,
    pub predicted_tokens: AtomicU64,
    pub predicted_micros: AtomicU64,
    pub requests: AtomicU64,
    /// Requests in a slot, and waiting for one.
    pub processing: AtomicU64,
    pub deferred: AtomicU64,
    pub in_ram: AtomicU64,
    pub on_disk: AtomicU64,
    /// Bytes of InfLLM blocks of the conversations in RAM.
    pub block_bytes: AtomicU64,
}

impl Metrics {
    pub fn add_answer(&self, read: usize, cached: usize, prompt: Duration, predicted: usize, predict: Duration) {
        self.prompt_tokens.fetch_add(read as u64, Relaxed);
        self.prompt_cached.fetch_add(cached as u64, Relaxed);
        self.prompt_micros.fetch_add(prompt.as_micros() as u64, Relaxed);
        self.predicted_tokens.fetch_add(predicted as u64, Relaxed);
        self.predicted_micros.fetch_add(predict.as_micros() as u64, Relaxed);
        self.requests.fetch_add(1, Relaxed);
    }

    pub fn render(&self) -> String {
        let rate = |tokens: &AtomicU64, micros: &AtomicU64| {
            let us = micros.load(Relaxed);
            if us == 0 {
                0.0
            } else {
                tokens.load(Relaxed) as f64 * 1e6 / us as f64
            }
        };
        let rows: [(&str, &str, &str, f64); 12] = [
            (
                "llamacpp:prompt_tokens_total",
                "counter",
                "Prompt tokens evaluated.",
                self.prompt_tokens.load(Relaxed) as f64,
            ),
            (
                "llamacpp:prompt_seconds_total",
                "counter",
                "Prompt evaluation time.",
                self.prompt_micros.load(Relaxed) as f64 / 1e6,
            ),
            (
                "llamacpp:tokens_predicted_total",
                "counter",
                "Tokens generated.",
                self.predicted_tokens.load(Relaxed) as f64,
            ),
            (
                "llamacpp:tokens_predicted_seconds_total",
                "counter",
                "Generation time.",
                self.predicted_micros.load(Relaxed) as f64 / 1e6,
            ),
            (
                "llamacpp:prompt_tokens_seconds",
                "gauge",
                "Average prompt tokens per second.",
                rate(&self.prompt_tokens, &self.prompt_micros),
            ),
            (
                "llamacpp:predicted_tokens_seconds",
                "gauge",
                "Average generated tokens per second.",
                rate(&self.predicted_tokens, &self.predicted_micros),
            ),
            (
                "llamacpp:requests_processing",
                "gauge",
                "Requests in a slot.",
                self.processing.load(Relaxed) as f64,
            ),
            (
                "llamacpp:requests_deferred",
                "gauge",
                "Requests waiting for a slot.",
                self.deferred.load(Relaxed) as f64,
            ),
            (
                "infllm:prompt_tokens_cached_total",
                "counter",
                "Prompt tokens found in a conversation's memory, not evaluated.",
                self.prompt_cached.load(Relaxed) as f64,
            ),
            (
                "infllm:conversations_in_ram",
                "gauge",
                "Conversations held in RAM.",
                self.in_ram.load(Relaxed) as f64,
            ),
            (
                "infllm:conversations_on_disk",
                "gauge",
                "Conversations held in session files.",
                self.on_disk.load(Relaxed) as f64,
            ),
            (
                "infllm:block_memory_bytes",
                "gauge",
                "Bytes of memory blocks of the conversations in RAM.",
                self.block_bytes.load(Relaxed) as f64,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
        }
        let _ = writeln!(
            out,
            "# TYPE infllm:requests_total counter\ninfllm:requests_total {}",
            self.requests.load(Relaxed)
        );
        out
    }
}
