//! pp512 / tg128 of infllm and of llama.cpp (the `llama_*` API of the same
//! ggml build) in one run, same model and threads, interleaved repetitions.
//!
//!   cargo run --release --example speed -- [MODEL] [THREADS] [REPS]

use std::path::PathBuf;
use std::time::Instant;

use infllm::engine::{Engine, EngineParams};
use infllm::ggml::reference::{RefContext, RefModel, RefParams};
use infllm::model::Model;

const PP: usize = 512;
const TG: usize = 128;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into()),
    );
    let threads: usize = args.next().map_or(Ok(2), |s| s.parse())?;
    let reps: usize = args.next().map_or(Ok(5), |s| s.parse())?;
    infllm::ggml::set_quiet_logs(true);

    let rm = RefModel::load(&path)?;
    let n_vocab = rm.n_vocab() as i32;
    // Arbitrary but valid token ids, as llama-bench uses.
    let prompt: Vec<i32> = (0..PP as i32).map(|i| (i * 7919 + 13) % n_vocab).collect();
    let params = RefParams {
        n_ctx: (PP + TG) as u32,
        n_batch: 2048,
        n_ubatch: 512,
        n_threads: threads as i32,
        flash_attn: None,
    };
    let mut rctx = RefContext::new(&rm, params)?;
    let mut engine = Engine::new(
        Model::load(&path)?,
        EngineParams {
            attn: infllm::engine::AttnMode::Full { flash_attn: true },
            n_threads: threads,
            n_ctx: PP + TG,
            n_ubatch: 512,
        },
    )?;

    let (mut ours_pp, mut ref_pp, mut ours_tg, mut ref_tg) = (vec![], vec![], vec![], vec![]);
    for rep in 0..=reps {
        // Repetition 0 is a warm-up (page faults of the mapping, allocator sizing).
        let keep = rep > 0;
        engine.clear();
        let t = Instant::now();
        engine.eval(&prompt, false, &mut |_, _| {})?;
        let s = t.elapsed().as_secs_f64();
        rctx.clear();
        let t = Instant::now();
        rctx.decode(&prompt, 2048, false)?;
        let r = t.elapsed().as_secs_f64();
        if keep {
            ours_pp.push(PP as f64 / s);
            ref_pp.push(PP as f64 / r);
        }

        engine.clear();
        let t = Instant::now();
        for &t in &prompt[..TG] {
            engine.eval(&[t], false, &mut |_, _| {})?;
        }
        let s = t.elapsed().as_secs_f64();
        rctx.clear();
        let t = Instant::now();
        for &t in &prompt[..TG] {
            rctx.decode(&[t], 1, false)?;
        }
        let r = t.elapsed().as_secs_f64();
        if keep {
            ours_tg.push(TG as f64 / s);
            ref_tg.push(TG as f64 / r);
        }
    }
    println!("model: {} | threads: {threads} | repetitions: {reps}", path.display());
    println!("| test  | infllm t/s | llama.cpp t/s | ratio |");
    println!("|-------|-----------:|--------------:|------:|");
    for (name, a, b) in [("pp512", &ours_pp, &ref_pp), ("tg128", &ours_tg, &ref_tg)] {
        let (ma, sa) = mean_sd(a);
        let (mb, sb) = mean_sd(b);
        println!("| {name} | {ma:8.1} ± {sa:.1} | {mb:8.1} ± {sb:.1} | {:.3} |", ma / mb);
    }
    Ok(())
}

fn mean_sd(x: &[f64]) -> (f64, f64) {
    let m = x.iter().sum::<f64>() / x.len() as f64;
    let v = x.iter().map(|a| (a - m).powi(2)).sum::<f64>() / (x.len().max(2) - 1) as f64;
    (m, v.sqrt())
}
