//! Cost of one graph launch on ggml's CPU thread pool: what splitting each
//! step's graph per layer (for host-side retrieval) would add per token.
//!
//!   cargo run --release --example launch -- [THREADS] [NODES]

use std::time::Instant;

use infllm::compute::Step;
use infllm::ggml::Scheduler;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().map_or(Ok(2), |s| s.parse())?;
    let nodes: usize = args.next().map_or(Ok(1), |s| s.parse())?;
    let mut sched = Scheduler::cpu(threads)?;
    let time = |n: usize, sched: &mut Scheduler| -> anyhow::Result<f64> {
        let start = Instant::now();
        for _ in 0..n {
            let ctx = Step::context();
            let mut step = Step::new(&ctx);
            let mut x = step.input_f32("x", &[64], vec![1.0; 64]);
            for _ in 0..nodes {
                x = ctx.scale(x, 0.5);
            }
            step.graph.expand(x);
            step.run(sched)?;
        }
        Ok(start.elapsed().as_secs_f64() / n as f64)
    };
    time(100, &mut sched)?; // warm-up
    let per = time(5000, &mut sched)?;
    println!(
        "threads {threads}, {nodes} tiny node(s) per graph: {:.1} us per graph launch (build, allocate, compute)",
        per * 1e6
    );
    Ok(())
}
