//! The grammar's cost per generated token: the time `Sampler::sample` takes
//! (the draw, the grammar's check, and its masked redraw when the check
//! fails) with and without a constraint, and decode tokens/s both ways, on
//! the default model at temperature 1.
//!
//!   cargo run --release --example grammar -- [TOKENS] [THREADS]

use std::time::{Duration, Instant};

use infllm::cli::ModelArgs;
use infllm::engine::{AttnMode, Engine, EngineParams};
use infllm::model::Model;
use infllm::sampling::{GrammarSpec, Sampler, SamplingParams};

/// A JSON object of free text and numbers: the model writes for long.
const SCHEMA: &str = r#"{"type": "array", "items": {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "note": {"type": "string"}},
    "required": ["name", "age", "note"]}}"#;

struct Run {
    sample: Vec<Duration>,
    total: Duration,
}

fn run(e: &mut Engine, grammar: Option<Box<GrammarSpec>>, n: usize, seed: u32) -> anyhow::Result<Run> {
    let p = SamplingParams {
        temp: 1.0,
        seed,
        grammar,
        ..SamplingParams::default()
    };
    let mut s = Sampler::new(p, e.tokenizer())?;
    e.clear();
    let prompt = e
        .tokenizer()
        .encode("A list of people with notes, as JSON:", true, false);
    let mut logits = e.eval(&prompt, false, &mut |_, _| {})?;
    let (mut sample, start) = (Vec::new(), Instant::now());
    while sample.len() < n {
        let t0 = Instant::now();
        let t = s.sample(&logits);
        sample.push(t0.elapsed());
        if e.tokenizer().is_eog(t) {
            break;
        }
        s.accept(t);
        logits = e.eval(&[t], false, &mut |_, _| {})?;
    }
    Ok(Run {
        sample,
        total: start.elapsed(),
    })
}

fn report(name: &str, runs: &[Run]) {
    let mut all: Vec<Duration> = runs.iter().flat_map(|r| r.sample.iter().copied()).collect();
    all.sort();
    let n = all.len();
    let mean = all.iter().sum::<Duration>() / n as u32;
    let p99 = all[(n * 99 / 100).min(n - 1)];
    let secs: f64 = runs.iter().map(|r| r.total.as_secs_f64()).sum();
    println!(
        "{name}: {n} tokens, sample() mean {:.1} us, p99 {:.1} us, decode {:.1} t/s",
        mean.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        n as f64 / secs
    );
}

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse()).collect::<Result<_, _>>()?;
    let n = args.first().copied().unwrap_or(200);
    let threads = args.get(1).copied().unwrap_or(2);
    let model = Model::load(&ModelArgs { model: None }.path()?)?;
    let params = EngineParams {
        attn: AttnMode::full(true),
        n_threads: threads,
        n_ctx: 4096,
        n_ubatch: 512,
        block_cache: None,
        standard_ops: false,
    };
    let mut e = Engine::new(model, params)?;
    let seeds = [1, 2, 3];
    let plain: Vec<Run> = seeds
        .iter()
        .map(|&s| run(&mut e, None, n, s))
        .collect::<Result<_, _>>()?;
    let schema = Some(Box::new(GrammarSpec::JsonSchema(SCHEMA.to_string())));
    let json: Vec<Run> = seeds
        .iter()
        .map(|&s| run(&mut e, schema.clone(), n, s))
        .collect::<Result<_, _>>()?;
    report("no grammar", &plain);
    report("json schema", &json);
    Ok(())
}
