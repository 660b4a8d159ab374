//! Decode's reads of retrieved memory blocks over 30 layers (SmolLM2's
//! shapes): `block_scores` (Q·K) and `block_values` (P·V) over TOPK chosen
//! blocks of stores holding N_BLOCKS blocks per layer, one graph per "token".
//! MODE=keys or MODE=values times one of the two; MODE=retrieval the
//! retrieval instead: every block's representative key scored, then the
//! top TOPK.
//!   TYPE=q8_0 [MODE=keys|values|retrieval] cargo run --release --example block_attn -- [THREADS] [N_BLOCKS] [TOPK]
use std::time::Instant;

use infllm::attention::infllm::{BlockShape, BlockStore};
use infllm::compute::Step;
use infllm::ggml::{type_by_name, Buffer, Context, GgmlType, Scheduler};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().map_or(Ok(2), |s| s.parse())?;
    let n_blocks: usize = args.next().map_or(Ok(300), |s| s.parse())?;
    let topk: usize = args.next().map_or(Ok(16), |s| s.parse())?;
    let mode = std::env::var("MODE").unwrap_or_default();
    let retrieval = mode == "retrieval";
    let ty = std::env::var("TYPE").unwrap_or_else(|_| "q8_0".into());
    let ty = type_by_name(&ty)
        .ok_or_else(|| anyhow::anyhow!("unknown type {ty}"))?
        .id;
    let (hd, nkv, r, layers, bs) = (64usize, 3usize, 3usize, 30usize, 128usize);
    let shape = BlockShape {
        block_size: bs,
        head_dim: hd,
        n_head: nkv * r,
        n_head_kv: nkv,
        type_k: ty,
        type_v: ty,
    };
    let vals: Vec<f32> = (0..shape.block_values())
        .map(|i| ((i * 7919) % 201) as f32 / 100.0 - 1.0)
        .collect();
    let mut stores = Vec::new();
    for _ in 0..layers {
        let mut s = BlockStore::new(shape, n_blocks)?;
        for j in 0..n_blocks {
            let repr: Vec<f32> = (0..shape.repr_len())
                .map(|i| ((i * 31 + j * 17) % 97) as f32 / 97.0 - 0.5)
                .collect();
            s.push(&vals, &vals, &repr, None)?;
        }
        stores.push(s);
    }
    // Queries and probabilities made once: the runs time the kernels, not
    // the upload of new inputs per token.
    let n = (topk * bs) as i64;
    let ctx = Context::new(2 * layers, 0);
    let inputs: Vec<_> = (0..layers)
        .map(|_| {
            let q = ctx.new_tensor(GgmlType::F32, &[hd as i64, r as i64, nkv as i64]);
            (q, ctx.new_tensor(GgmlType::F32, &[n, r as i64, nkv as i64]))
        })
        .collect();
    let _buf = Buffer::alloc_context(&ctx)?;
    for (q, p) in &inputs {
        q.write_f32(&vec![0.01; hd * r * nkv]);
        p.write_f32(&vec![0.0001; n as usize * r * nkv]);
    }
    let mut sched = Scheduler::cpu(threads)?;
    let mut run = |reps: usize, seed: usize| -> anyhow::Result<f64> {
        let start = Instant::now();
        for rep in 0..reps {
            let sctx: Context = Step::context();
            let mut step = Step::new(&sctx);
            let g = step.ctx;
            for (il, (s, &(q, p))) in stores.iter().zip(&inputs).enumerate() {
                if retrieval {
                    let q = g.reshape(q, &[(hd * r * nkv) as i64, 1]);
                    let scores = g.mul_mat(s.repr_tensor(g), q);
                    step.graph
                        .expand(g.top_k(g.reshape(scores, &[n_blocks as i64]), topk as i32));
                    continue;
                }
                let ids = (0..topk).map(|i| ((i * 131 + il * 17 + rep * 7 + seed) % n_blocks) as i32);
                let ids = step.input_i32("ids", &[topk as i64], ids.collect());
                if mode != "values" {
                    step.graph.expand(g.block_scores(s.k_tensor(g), ids, q));
                }
                if mode != "keys" {
                    step.graph.expand(g.block_values(s.v_tensor(g), ids, p, hd as i64));
                }
            }
            step.run(&mut sched)?;
        }
        Ok(start.elapsed().as_secs_f64() / reps as f64)
    };
    run(5, 1)?;
    let reps: usize = std::env::var("REPS").map_or(Ok(100), |s| s.parse())?;
    let t = run(reps, 2)?;
    println!(
        "{:.2} ms per token (30 layers, {topk} of {n_blocks} blocks, {threads} threads)",
        t * 1e3
    );
    Ok(())
}
