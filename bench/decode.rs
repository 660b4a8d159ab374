//! Decode speed from a saved state. Filling 128K tokens takes ~23 minutes
//! on 2 cores; a session file holds that state, and each timing run reads it
//! back in seconds, so old and new code can be compared at 128K many times
//! over one fill. Default InfLLM settings (TYPE, e.g. q4_0: another type for
//! the blocks' K and V than the default q8_0; COARSE_FROM, COARSE_EVERY:
//! another `--coarse-from`, `--coarse-every`; BLOCK_SIZE, N_LOCAL, TOPK:
//! another `--block-size`, `--n-local`, `--topk`, the same for the fill and
//! its timings; SHARED=1: `--shared-retrieval`), the default model.
//!
//!   [TYPE=q4_0] cargo run --release --example decode -- fill TOKENS SESSION [THREADS]
//!   [TYPE=q4_0] cargo run --release --example decode -- time SESSION N [REPS] [THREADS]
//!
//! `time` decodes N random tokens REPS times, each time from the saved state,
//! and prints tokens/s per repetition (the state is the same in every one).
//! With PROMPT=P, each repetition first times one prompt of P random tokens
//! (pp at that depth), then decodes after it.

use std::path::Path;
use std::time::Instant;

use rand::{Rng, SeedableRng};

use infllm::attention::infllm::InfllmParams;
use infllm::cli::ModelArgs;
use infllm::engine::{AttnMode, Engine, EngineParams};
use infllm::ggml::type_by_name;
use infllm::model::Model;
use infllm::session::SessionFile;

fn engine(threads: usize) -> anyhow::Result<Engine> {
    let model = Model::load(&ModelArgs { model: None }.path()?)?;
    let mut p = InfllmParams::defaults_for(model.hp.n_ctx_train);
    for (name, value) in [
        ("COARSE_FROM", &mut p.coarse_from),
        ("COARSE_EVERY", &mut p.coarse_every),
        ("BLOCK_SIZE", &mut p.block_size),
        ("N_LOCAL", &mut p.n_local),
        ("TOPK", &mut p.topk),
    ] {
        if let Ok(n) = std::env::var(name) {
            *value = n.parse()?;
        }
    }
    p.shared = std::env::var("SHARED").is_ok_and(|v| v == "1");
    if let Ok(name) = std::env::var("TYPE") {
        let ty = type_by_name(&name).ok_or_else(|| anyhow::anyhow!("unknown type {name}"))?;
        (p.type_k, p.type_v) = (ty.id, ty.id);
    }
    let params = EngineParams {
        attn: AttnMode::Infllm(p),
        n_threads: threads,
        n_ctx: 0,
        n_ubatch: 512,
        block_cache: None,
        standard_ops: false,
    };
    Engine::new(model, params)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: usize| args.get(i).map_or(Ok(default), |s| s.parse::<usize>());
    let path = |i: usize| {
        args.get(i)
            .map(Path::new)
            .ok_or_else(|| anyhow::anyhow!("missing SESSION argument"))
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    match args.first().map(String::as_str) {
        Some("fill") => {
            let (n, path) = (num(1, 0)?, path(2)?);
            let mut e = engine(num(3, 2)?)?;
            let n_vocab = e.model().hp.n_vocab as i32;
            let tokens: Vec<i32> = (0..n).map(|_| rng.gen_range(0..n_vocab)).collect();
            let start = Instant::now();
            e.feed(&tokens, &mut |_, _| {})?;
            eprintln!("filled {n} tokens in {:.0} s", start.elapsed().as_secs_f64());
            infllm::session::save(&SessionFile::open(path)?, &e, serde_json::Value::Null)
        }
        Some("time") => {
            let path = path(1)?;
            let (n, reps) = (num(2, 128)?, num(3, 3)?);
            let mut e = engine(num(4, 2)?)?;
            let n_vocab = e.model().hp.n_vocab as i32;
            let session = SessionFile::open(path)?;
            let prompt = std::env::var("PROMPT").ok().map(|n| n.parse::<usize>()).transpose()?;
            for _ in 0..reps {
                infllm::session::load(&session, &mut e, |_, _| Ok(()))?;
                // One token untimed: the first step after a load warms up.
                e.eval(&[rng.gen_range(0..n_vocab)], false, &mut |_, _| {})?;
                if let Some(p) = prompt {
                    // As `infllm bench` times pp: one eval (a chunk, then the last token alone).
                    let tokens: Vec<i32> = (0..p).map(|_| rng.gen_range(0..n_vocab)).collect();
                    let start = Instant::now();
                    e.eval(&tokens, false, &mut |_, _| {})?;
                    let s = start.elapsed().as_secs_f64();
                    println!("depth {}: pp{p} {:.2} t/s", e.n_past() - p, p as f64 / s);
                }
                let start = Instant::now();
                for _ in 0..n {
                    e.eval(&[rng.gen_range(0..n_vocab)], false, &mut |_, _| {})?;
                }
                let s = start.elapsed().as_secs_f64();
                println!(
                    "depth {}: {:.2} t/s ({:.2} ms per token)",
                    e.n_past() - n,
                    n as f64 / s,
                    s * 1e3 / n as f64
                );
            }
            Ok(())
        }
        _ => anyhow::bail!("usage: decode fill TOKENS SESSION [THREADS] | decode time SESSION N [REPS] [THREADS]"),
    }
}
