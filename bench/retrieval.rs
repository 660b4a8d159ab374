//! Retrieval's cost per decode token at a number of blocks per layer: the
//! one part of a step that grows with the text. Scores random
//! representative keys of SmolLM2's shape (9 query heads x 64) in every
//! layer and picks the top 16, in one f16 pass, in two (a q4_0 copy, then
//! 64 candidates in f16, `attention/infllm/coarse.rs`), and in the second
//! only (the kept candidates of an earlier step's first pass).
//!
//!   cargo run --release --example retrieval -- BLOCKS [LAYERS] [REPS] [THREADS]
//!
//! 8192 blocks of 128 tokens is a text of 1M tokens.

use std::time::Instant;

use infllm::attention::infllm::{top_blocks, CoarseKeys};
use infllm::compute::{BuiltStep, Step};
use infllm::ggml::{GgmlType, HostArena, Scheduler, Tensor};
use rand::{Rng, SeedableRng};

const REPR_LEN: usize = 9 * 64;
const TOPK: usize = 16;

/// One layer's keys: f16 in an arena, and their coarse copy.
struct Layer {
    f16: HostArena,
    coarse: CoarseKeys,
}

fn layer(n: usize, rng: &mut impl Rng) -> anyhow::Result<Layer> {
    let keys: Vec<u8> = (0..n * REPR_LEN)
        .flat_map(|_| half::f16::from_f32(rng.gen_range(-1.0..1.0)).to_le_bytes())
        .collect();
    let mut f16 = HostArena::reserve(keys.len())?;
    f16.slice_mut(0, keys.len()).copy_from_slice(&keys);
    let mut coarse = CoarseKeys::new(REPR_LEN, n)?.expect("whole q4_0 blocks");
    coarse.set_rows(0, &keys);
    Ok(Layer { f16, coarse })
}

/// Declares every layer's query (new values each repetition `r`).
fn queries<'a>(step: &mut Step<'a>, n_layer: usize, r: usize) -> Vec<Tensor<'a>> {
    (0..n_layer)
        .map(|il| {
            let q = (0..REPR_LEN).map(|i| ((i * 7 + r * 13 + il) % 17) as f32 / 8.0 - 1.0);
            step.input_f32(&format!("q{il}"), &[REPR_LEN as i64, 1], q.collect())
        })
        .collect()
}

/// How a step picks its blocks.
#[derive(Clone, Copy)]
enum Passes {
    One,
    Two,
    /// The second pass over kept candidates.
    Kept,
}

/// Seconds per token: every layer's pick in one graph, built once and run
/// again `reps` times with new queries, as decode steps run (the best run).
fn time(layers: &[Layer], n: usize, passes: Passes, reps: usize, sched: &mut Scheduler) -> anyhow::Result<f64> {
    let ctx = Step::context();
    let mut step = Step::new(&ctx);
    let qs = queries(&mut step, layers.len(), 0);
    let mut out = None;
    for (l, q) in layers.iter().zip(qs) {
        let repr = ctx.new_tensor(GgmlType::F16, &[REPR_LEN as i64, n as i64]);
        l.f16.place(repr, 0);
        let coarse = |reuse| l.coarse.pass(&ctx, n, reuse);
        let coarse = match passes {
            Passes::One => None,
            Passes::Two => Some(coarse(false)),
            Passes::Kept => Some(coarse(true)),
        };
        let ids = top_blocks(&ctx, repr, coarse, q, TOPK).set_output();
        step.graph.expand(ids);
        out = Some(ids);
    }
    step.run(sched)?; // allocates, and warms up
    let ids = step.into_ids(out.expect("a layer"));
    let built = BuiltStep::keep(ctx, ids);
    let mut best = f64::MAX;
    for r in 1..=reps {
        let mut step = Step::replay(&built);
        queries(&mut step, layers.len(), r);
        let start = Instant::now();
        step.run(sched)?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse()).collect::<Result<_, _>>()?;
    let arg = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    let (n, n_layer, reps, threads) = (arg(0, 8192), arg(1, 30), arg(2, 20), arg(3, 2));
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let layers: Vec<Layer> = (0..n_layer)
        .map(|_| layer(n, &mut rng))
        .collect::<anyhow::Result<_>>()?;
    let mut sched = Scheduler::cpu(threads)?;
    for (passes, name) in [
        (Passes::One, "one pass"),
        (Passes::Two, "two passes"),
        (Passes::Kept, "kept candidates"),
    ] {
        let s = time(&layers, n, passes, reps, &mut sched)?;
        println!(
            "{n} blocks x {n_layer} layers, {name}: {:.2} ms per token (best of {reps})",
            s * 1e3
        );
    }
    Ok(())
}
