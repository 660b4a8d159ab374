//! Local-window logits (Q·K) and P·V over 30 layers' window buffers
//! (SmolLM2's shapes), as one graph per "token": ggml's matmul over
//! token-major or head-major key rows against our `key_scores` kernel over
//! transposed keys; P·V by ggml's matmul against our `value_sums` kernel.
//! GROUP queries per KV head: 3 is decode, 384 a prompt's 128-query tile.
//!   GROUP=3 cargo run --release --example local_attn -- [THREADS] [N_KEYS]
use std::time::Instant;

use infllm::compute::Step;
use infllm::ggml::{Buffer, Context, GgmlType, Scheduler};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().map_or(Ok(2), |s| s.parse())?;
    let n: i64 = args.next().map_or(Ok(4096), |s| s.parse())?;
    let r: i64 = std::env::var("GROUP").map_or(Ok(3), |s| s.parse())?;
    let (hd, nkv, layers, cap) = (64i64, 3i64, 30usize, 5632i64);
    let e = hd * nkv;
    let ctx = Context::new(7 * layers, 0);
    let bufs: Vec<_> = (0..layers)
        .map(|_| {
            (
                ctx.new_tensor(GgmlType::F16, &[e, cap]),
                ctx.new_tensor(GgmlType::F16, &[cap, e]),
                ctx.new_tensor(GgmlType::F16, &[hd, cap, nkv]),
                ctx.new_tensor(GgmlType::F16, &[cap, e]),
            )
        })
        .collect();
    // Queries and probabilities made once: the modes time the kernels, not
    // the upload of a new 4.5 MB of probabilities per token.
    let inputs: Vec<_> = (0..layers)
        .map(|_| {
            (
                ctx.new_tensor(GgmlType::F32, &[hd, r, nkv]),
                ctx.new_tensor(GgmlType::F32, &[n, r, nkv]),
            )
        })
        .collect();
    let _buf = Buffer::alloc_context(&ctx)?;
    for (q, p) in &inputs {
        q.write_f32(&vec![0.01; (hd * r * nkv) as usize]);
        p.write_f32(&vec![0.0001; (n * r * nkv) as usize]);
    }
    let mut sched = Scheduler::cpu(threads)?;
    for mode in [
        "K token-major",
        "K head-major",
        "K kernel",
        "V",
        "V kernel",
        "K+V token-major",
        "K+V kernel",
    ] {
        let mut run = |reps: usize| -> anyhow::Result<f64> {
            let start = Instant::now();
            for _ in 0..reps {
                let sctx = Step::context();
                let mut step = Step::new(&sctx);
                let g = step.ctx;
                for ((k, vt, kh, kt_buf), &(q, p)) in bufs.iter().zip(&inputs) {
                    let kt = g.permute(g.view(*k, &[hd, nkv, n], &[128, e as usize * 2], 0), [0, 2, 1, 3]);
                    let khm = g.view(*kh, &[hd, n, nkv], &[128, cap as usize * 128], 0);
                    let v = g.view(
                        *vt,
                        &[n, hd, nkv],
                        &[cap as usize * 2, cap as usize * 2 * hd as usize],
                        0,
                    );
                    if mode.starts_with('K') && mode.contains("kernel") {
                        // Transposed keys in their own buffer (as in the engine).
                        let kt = g.view(
                            *kt_buf,
                            &[n, hd, nkv],
                            &[cap as usize * 2, cap as usize * 2 * hd as usize],
                            0,
                        );
                        step.graph.expand(g.key_scores(kt, q, None));
                    } else if mode.starts_with("K") {
                        let kk = if mode.contains("head") { khm } else { kt };
                        step.graph.expand(g.mul_mat(kk, q));
                    }
                    if mode.contains('V') && mode.contains("kernel") {
                        step.graph.expand(g.value_sums(v, p, None));
                    } else if mode.contains('V') {
                        step.graph.expand(g.mul_mat(v, p));
                    }
                }
                step.run(&mut sched)?;
            }
            Ok(start.elapsed().as_secs_f64() / reps as f64)
        };
        run(5)?;
        let t = run(100)?;
        println!("{mode:>16}: {:.2} ms per token (30 layers, {n} keys)", t * 1e3);
    }
    Ok(())
}
