//! InfLLM attention against an independent brute-force implementation of
//! docs/infllm.md, on random tensors with small settings: block
//! formation across chunk edges, initial / remainder bookkeeping, per-head
//! representative tokens under GQA, the joint softmax with both masks, and
//! top-k retrieval.

// Token positions index the history, as in the page this restates.
#![allow(clippy::needless_range_loop)]

use infllm::attention::infllm::{
    representative_key, BlockShape, BlockStore, DecodeShape, HeadShape, InfllmAttention, InfllmParams, Retrieval,
    RetrievalRecord, Role,
};
use infllm::attention::{LayerAttn, LayerPlace, LayerQkv, StepAttention};
use infllm::compute::{BuiltStep, Step};
use infllm::ggml::{self, RopeParams, Scheduler, Tensor, ROPE_NORMAL};

const HEAD_DIM: usize = 32;
const N_HEAD: usize = 9;
const N_HEAD_KV: usize = 3;
const ROPE_BASE: f32 = 10_000.0;

/// A small deterministic generator (xorshift64*), values in [-1, 1) rounded
/// to f16 so that the f16 window buffer stores them exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = (self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 40) as f32 / (1u64 << 24) as f32;
        half::f16::from_f32(2.0 * x - 1.0).to_f32()
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn params(n_init: usize, topk: usize) -> InfllmParams {
    let f32_id = ggml::type_by_name("f32").unwrap().id;
    InfllmParams {
        n_init,
        n_local: 256,
        block_size: 32,
        topk,
        repr_topk: 3,
        chunk: 64,
        type_k: f32_id,
        type_v: f32_id,
        max_tokens: 1 << 16,
        tail_steps: 1,
        tile_bytes: 16 << 20,
        coarse_from: 0,
        coarse_every: 1,
        mem_distance: None,
        retrieval: Retrieval::Paper,
        shared: false,
    }
}

fn rope_params() -> RopeParams {
    RopeParams {
        n_dims: HEAD_DIM as i32,
        mode: ROPE_NORMAL,
        n_ctx_orig: 4096,
        freq_base: ROPE_BASE,
        freq_scale: 1.0,
        ext_factor: 0.0,
        attn_factor: 1.0,
        beta_fast: 32.0,
        beta_slow: 1.0,
    }
}

/// Token-major inputs of one step: q [T][N_HEAD][HEAD_DIM], k and v [T][N_HEAD_KV][HEAD_DIM].
struct Chunk {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

fn chunks(sizes: &[usize], seed: u64) -> Vec<Chunk> {
    let mut rng = Rng(seed);
    sizes
        .iter()
        .map(|&t| Chunk {
            q: rng.vec(t * N_HEAD * HEAD_DIM),
            k: rng.vec(t * N_HEAD_KV * HEAD_DIM),
            v: rng.vec(t * N_HEAD_KV * HEAD_DIM),
        })
        .collect()
}

/// Runs the engine's InfLLM attention (one layer) over the chunks; returns
/// each token's output [N_HEAD][HEAD_DIM] and how many decode steps ran the
/// last step's graph again (as the engine does, when the decode shape is
/// unchanged).
/// `standard`: through standard ggml ops (a device's path) instead of
/// infllm's kernels.
fn run_engine(p: InfllmParams, role: Role, chunks: &[Chunk], standard: bool) -> (Vec<Vec<f32>>, usize) {
    let run = run_engine_traced(p, role, chunks, standard, false, 1);
    (run.outputs, run.reused)
}

/// What `run_engine_traced` saw.
struct Run {
    outputs: Vec<Vec<f32>>,
    /// Decode steps that ran a kept graph.
    reused: usize,
    trace: Vec<RetrievalRecord>,
    /// Per step: (tokens, blocks before it, whether it took kept candidates).
    steps: Vec<(usize, usize, bool)>,
}

/// `run_engine`, also recording retrieval when `trace` is set, over
/// `n_layer` layers given the same inputs (a token's output: each layer's
/// in turn).
fn run_engine_traced(
    p: InfllmParams,
    role: Role,
    chunks: &[Chunk],
    standard: bool,
    trace: bool,
    n_layer: usize,
) -> Run {
    ggml::set_quiet_logs(true);
    let heads = HeadShape {
        n_layer,
        head_dim: HEAD_DIM,
        n_head: N_HEAD,
        n_head_kv: N_HEAD_KV,
    };
    let place = LayerPlace {
        device: None,
        standard_ops: standard,
    };
    let mut attn = InfllmAttention::new(p, heads, role, &vec![place; n_layer], None).unwrap();
    attn.trace(trace.then_some(p.max_tokens)).unwrap();
    let mut sched = Scheduler::cpu(2).unwrap();
    let la = LayerAttn {
        rope: rope_params(),
        scale: 1.0 / (HEAD_DIM as f32).sqrt(),
        softcap: 0.0,
    };
    let mut outputs = Vec::new();
    let mut built: Option<(DecodeShape, BuiltStep)> = None;
    let mut reused = 0;
    let mut steps = Vec::new();
    for c in chunks {
        let t = c.k.len() / (N_HEAD_KV * HEAD_DIM);
        attn.prepare(t).unwrap();
        let key = (t == 1).then(|| attn.decode_shape()).flatten();
        steps.push((t, attn.n_blocks(), key.is_some_and(|k| k.reuses_candidates)));
        let mut data = Vec::new();
        match built.take() {
            Some((k, b)) if Some(k) == key => {
                let mut step = Step::replay(&b);
                attn.begin(&mut step, t);
                chunk_inputs(&mut step, c);
                step.run(&mut sched).unwrap();
                b.output().read_f32(&mut data);
                built = Some((k, b));
                reused += 1;
            }
            _ => {
                let ctx = Step::context();
                let mut step = Step::new(&ctx);
                let inp = attn.begin(&mut step, t);
                let (q, k, v) = chunk_inputs(&mut step, c);
                let outs: Vec<Tensor> = (0..n_layer)
                    .map(|layer| {
                        let qkv = LayerQkv {
                            layer,
                            q,
                            k,
                            v,
                            freq_factors: None,
                        };
                        inp.attend(&mut step, qkv, &la)
                    })
                    .collect();
                let out = outs.into_iter().reduce(|a, b| step.ctx.concat(a, b, 0)).unwrap();
                let out = out.set_output();
                step.graph.expand(out);
                step.run(&mut sched).unwrap();
                out.read_f32(&mut data);
                drop(inp);
                let ids = step.into_ids(out);
                built = key.map(|k| (k, BuiltStep::keep(ctx, ids)));
            }
        }
        outputs.extend(data.chunks(N_HEAD * HEAD_DIM * n_layer).map(|x| x.to_vec()));
        attn.commit(t).unwrap();
    }
    Run {
        outputs,
        reused,
        trace: attn.take_trace(),
        steps,
    }
}

/// ggml's NORMAL rotary embedding: adjacent pairs rotated by pos * base^(-2i/d).
fn rope(x: &[f64], pos: f64) -> Vec<f64> {
    let mut out = x.to_vec();
    for i in 0..HEAD_DIM / 2 {
        let theta = pos * (ROPE_BASE as f64).powf(-2.0 * i as f64 / HEAD_DIM as f64);
        let (s, c) = theta.sin_cos();
        let (a, b) = (x[2 * i], x[2 * i + 1]);
        out[2 * i] = a * c - b * s;
        out[2 * i + 1] = a * s + b * c;
    }
    out
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn round_f16(x: f64) -> f64 {
    half::f16::from_f64(x).to_f64()
}

/// A chunk's q, k and v as step inputs.
fn chunk_inputs<'a>(step: &mut Step<'a>, c: &Chunk) -> (Tensor<'a>, Tensor<'a>, Tensor<'a>) {
    let t = (c.k.len() / (N_HEAD_KV * HEAD_DIM)) as i64;
    let (hd, nh, nkv) = (HEAD_DIM as i64, N_HEAD as i64, N_HEAD_KV as i64);
    let q = step.input_f32("q", &[hd, nh, t], c.q.clone());
    let k = step.input_f32("k", &[hd, nkv, t], c.k.clone());
    let v = step.input_f32("v", &[hd, nkv, t], c.v.clone());
    (q, k, v)
}

/// A retrieval of the reference: tokens before the step, and each head's
/// score of each block, head-major [N_HEAD][n_blocks].
struct RefRetrieval {
    n_past: usize,
    head_scores: Vec<f64>,
}

/// The semantics of infllm.md, written out plainly over the whole history:
/// each token's output, and every retrieval.
fn run_reference(p: InfllmParams, chunks: &[Chunk]) -> (Vec<Vec<f32>>, Vec<RefRetrieval>) {
    let group = N_HEAD / N_HEAD_KV;
    let e = N_HEAD_KV * HEAD_DIM;
    let scale = 1.0 / (HEAD_DIM as f64).sqrt();
    // History, token-major.
    let mut keys: Vec<Vec<f64>> = Vec::new(); // [pos] -> [e]
    let mut vals: Vec<Vec<f64>> = Vec::new();
    let mut score: Vec<[f64; N_HEAD]> = Vec::new();
    let mut n_init = 0usize;
    let mut rem_start = 0usize;
    let mut blocks: Vec<(usize, Vec<f64>)> = Vec::new(); // (first position, representative key)
    let mut outputs = Vec::new();
    let mut retrievals = Vec::new();
    // `shared`: the blocks the last step ranked best, if it retrieved.
    let mut last_pick: Option<Vec<usize>> = None;
    let kh = |k: &Vec<f64>, h: usize| k[(h / group) * HEAD_DIM..(h / group + 1) * HEAD_DIM].to_vec();

    for c in chunks {
        let t = c.k.len() / e;
        let start = keys.len();
        let end = start + t;
        for i in 0..t {
            keys.push(c.k[i * e..(i + 1) * e].iter().map(|&x| x as f64).collect());
            vals.push(c.v[i * e..(i + 1) * e].iter().map(|&x| x as f64).collect());
            score.push([0.0; N_HEAD]);
        }
        let q_of = |i: usize, h: usize| -> Vec<f64> {
            let o = (i * N_HEAD + h) * HEAD_DIM;
            c.q[o..o + HEAD_DIM].iter().map(|&x| x as f64).collect()
        };

        // Retrieval: mean over the chunk of the globally rotated queries.
        let pick = (blocks.len() > p.topk).then(|| {
            let mut mean = vec![0.0; N_HEAD * HEAD_DIM];
            for i in 0..t {
                for h in 0..N_HEAD {
                    let qg = rope(&q_of(i, h), (p.n_local - 1) as f64);
                    for d in 0..HEAD_DIM {
                        mean[h * HEAD_DIM + d] += qg[d] / t as f64;
                    }
                }
            }
            // The engine stores representative keys in f16 and its matmul
            // rounds the query to f16 as well.
            let mean: Vec<f64> = mean.into_iter().map(round_f16).collect();
            let head = |b: usize, h: usize| {
                let r = HEAD_DIM * h..HEAD_DIM * (h + 1);
                dot(&blocks[b].1[r.clone()], &mean[r])
            };
            retrievals.push(RefRetrieval {
                n_past: start,
                head_scores: (0..N_HEAD)
                    .flat_map(|h| (0..blocks.len()).map(move |b| (b, h)))
                    .map(|(b, h)| head(b, h))
                    .collect(),
            });
            let mut order: Vec<usize> = (0..blocks.len()).collect();
            order.sort_by(|&a, &b| dot(&blocks[b].1, &mean).total_cmp(&dot(&blocks[a].1, &mean)));
            order.truncate(p.topk);
            order
        });
        // With one layer, the layers' vote is the layer's own ranking.
        let selected = match (&pick, last_pick.take()) {
            (Some(_), Some(voted)) if p.shared && t == 1 => voted,
            (Some(own), _) => own.clone(),
            (None, _) => (0..blocks.len()).collect(),
        };
        last_pick = pick;
        let mut global: Vec<usize> = selected
            .iter()
            .flat_map(|&b| blocks[b].0..blocks[b].0 + p.block_size)
            .collect();
        global.extend(0..n_init);
        // Where the global query and each global key rotate.
        let rem_end = end.saturating_sub(p.n_local).max(rem_start);
        let (q_global_at, key_at) = memory_positions(&p, n_init, &selected, &blocks, rem_start, rem_end);

        for i in 0..t {
            let pos = start + i;
            let mut out = vec![0f32; N_HEAD * HEAD_DIM];
            for h in 0..N_HEAD {
                let q = q_of(i, h);
                let ql = rope(&q, pos as f64);
                let qg = rope(&q, q_global_at);
                let kg = |j: usize| match &key_at {
                    Some(at) => rope(&kh(&keys[j], h), at[&j]),
                    None => kh(&keys[j], h),
                };
                // (position, logit, is_local)
                let mut entries: Vec<(usize, f64, bool)> = Vec::new();
                for j in (pos + 1).saturating_sub(p.n_local)..=pos {
                    entries.push((j, dot(&ql, &rope(&kh(&keys[j], h), j as f64)) * scale, true));
                }
                for &j in &global {
                    entries.push((j, dot(&qg, &kg(j)) * scale, false));
                }
                for j in rem_start..rem_end {
                    if pos - j >= p.n_local {
                        entries.push((j, dot(&qg, &kg(j)) * scale, false));
                    }
                }
                let max = entries.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = entries.iter().map(|x| (x.1 - max).exp()).sum();
                for &(j, l, local) in &entries {
                    let w = (l - max).exp() / sum;
                    if local {
                        score[j][h] += w;
                    }
                    let v = kh(&vals[j], h);
                    for d in 0..HEAD_DIM {
                        out[h * HEAD_DIM + d] += (w * v[d]) as f32;
                    }
                }
            }
            outputs.push(out);
        }

        // Eviction: initial tokens first, then whole blocks.
        let evict_end = end.saturating_sub(p.n_local);
        if n_init < p.n_init && evict_end > rem_start {
            let take = p.n_init.min(evict_end) - rem_start;
            n_init += take;
            rem_start += take;
        }
        while evict_end >= rem_start + p.block_size {
            if p.topk > 0 {
                let mut repr = vec![0.0; N_HEAD * HEAD_DIM];
                for h in 0..N_HEAD {
                    let mut toks: Vec<usize> = (rem_start..rem_start + p.block_size).collect();
                    toks.sort_by(|&a, &b| score[b][h].total_cmp(&score[a][h]).then(a.cmp(&b)));
                    for &j in &toks[..p.repr_topk] {
                        for (d, x) in kh(&keys[j], h).iter().enumerate() {
                            repr[h * HEAD_DIM + d] += x / p.repr_topk as f64;
                        }
                    }
                }
                blocks.push((rem_start, repr.into_iter().map(round_f16).collect()));
            }
            rem_start += p.block_size;
        }
    }
    (outputs, retrievals)
}

/// Where the global query rotates, and (`Retrieval::Ordered`) each global
/// key by its text position: initial tokens first, then the selected blocks
/// in text order, then the remainder [rem_start, rem_end), the last of them
/// at distance `n_local - 1` from the query.
fn memory_positions(
    p: &InfllmParams,
    n_init: usize,
    selected: &[usize],
    blocks: &[(usize, Vec<f64>)],
    rem_start: usize,
    rem_end: usize,
) -> (f64, Option<std::collections::HashMap<usize, f64>>) {
    let d = (p.n_local - 1) as f64;
    if p.retrieval != Retrieval::Ordered {
        return (d, None);
    }
    let mut firsts: Vec<usize> = selected.iter().map(|&b| blocks[b].0).collect();
    firsts.sort_unstable();
    let mut order: Vec<usize> = (0..n_init).collect();
    order.extend(firsts.iter().flat_map(|&f| f..f + p.block_size));
    order.extend(rem_start..rem_end);
    let at = order.iter().enumerate().map(|(m, &j)| (j, m as f64)).collect();
    ((order.len().max(1) - 1) as f64 + d, Some(at))
}

/// Compares both paths (infllm's kernels, standard ggml ops) with the
/// reference; returns how many decode steps reused a graph.
fn compare(p: InfllmParams, sizes: &[usize], seed: u64) -> usize {
    let data = chunks(sizes, seed);
    let (want, _) = run_reference(p, &data);
    let mut reused = Vec::new();
    for standard in [false, true] {
        let (ours, n) = run_engine(p, Role::Memory, &data, standard);
        assert_eq!(ours.len(), want.len());
        let worst = max_difference(&ours, &want);
        eprintln!(
            "standard ops {standard}: {} tokens, max |difference| {:e} at position {}",
            ours.len(),
            worst.0,
            worst.1
        );
        // Queries meet f16 keys in ggml's matmul (the query is rounded to f16).
        assert!(
            worst.0 < 2e-3,
            "standard ops {standard}: output differs by {} at position {}",
            worst.0,
            worst.1
        );
        reused.push(n);
    }
    assert_eq!(reused[0], reused[1], "both paths reuse graphs alike");
    reused[0]
}

/// The largest |difference| between two runs' outputs, and its position.
fn max_difference(ours: &[Vec<f32>], want: &[Vec<f32>]) -> (f32, usize) {
    let mut worst = (0f32, 0usize);
    for (pos, (a, b)) in ours.iter().zip(want).enumerate() {
        for (x, y) in a.iter().zip(b) {
            if (x - y).abs() > worst.0 {
                worst = ((x - y).abs(), pos);
            }
        }
    }
    worst
}

/// Chunk sizes that are not multiples of the chunk or the block, with
/// single-token decode steps in between; 1,400 tokens make 30+ blocks and
/// move the window buffer several times.
const SIZES: &[usize] = &[
    64, 37, 64, 1, 1, 50, 64, 64, 13, 64, 64, 3, 64, 64, 64, 29, 64, 64, 64, 1, 64, 64, 64, 7, 64, 64, 64, 64, 5, 1, 1,
    64, 64, 64,
];

#[test]
fn infllm_matches_brute_force() {
    compare(params(16, 2), SIZES, 7);
}

#[test]
fn infllm_matches_brute_force_with_more_blocks_and_odd_init() {
    let mut p = params(21, 4);
    p.block_size = 64;
    p.repr_topk = 1;
    compare(p, SIZES, 11);
}

/// Hundreds of decode steps after a prompt: initial tokens fill, blocks
/// form, the remainder grows and empties, the buffer moves. Steps of one
/// decode shape run one graph with new inputs. (Over this many steps some
/// seeds, e.g. 23, tie two tokens' accumulated scores to ~1e-6: f32 and f64
/// sums then pick different representative tokens and retrieve another
/// block. Seed 5 has no such tie deciding a retrieval.)
#[test]
fn decode_steps_match_brute_force() {
    let mut sizes = vec![64; 3];
    sizes.extend([1; 500]);
    let reused = compare(params(16, 2), &sizes, 5);
    assert!(reused > 400, "only {reused} of 500 decode steps reused a graph");
}

/// `--trace-retrieval` records, at every step that retrieves (prompt
/// chunks and decode steps), each head's score of each block as the brute
/// force computes it, so the top-k of its ranking are the blocks the
/// brute force's query retrieves; and tracing leaves the outputs as they were.
#[test]
fn the_trace_names_the_blocks_each_query_retrieves() {
    let p = params(16, 2);
    let mut sizes = vec![64; 12];
    sizes.extend([1; 30]);
    let data = chunks(&sizes, 7);
    let (_, want) = run_reference(p, &data);
    let plain = run_engine_traced(p, Role::Memory, &data, false, false, 1).outputs;
    let Run { outputs, trace, .. } = run_engine_traced(p, Role::Memory, &data, false, true, 1);
    assert!(plain == outputs, "tracing changed the outputs");
    assert_eq!(trace.len(), want.len());
    assert!(want.len() > 30, "{} retrievals", want.len());
    for (got, w) in trace.iter().zip(&want) {
        assert_eq!((got.n_past, got.layer, got.n_head), (w.n_past, 0, N_HEAD));
        assert_eq!(got.head_scores.len(), w.head_scores.len());
        for (a, b) in got.head_scores.iter().zip(&w.head_scores) {
            assert!((*a as f64 - b).abs() < 1e-2, "at {}: {a} vs {b}", w.n_past);
        }
        let n = got.n_blocks;
        let summed: Vec<f32> = (0..n)
            .map(|b| (0..N_HEAD).map(|h| w.head_scores[h * n + b]).sum::<f64>() as f32)
            .collect();
        let order = RetrievalRecord::ranking(&summed);
        // Unless the brute force's k-th and next blocks nearly tie.
        if summed[order[p.topk - 1]] - summed[order[p.topk]] > 1e-2 {
            let mut top = RetrievalRecord::ranking(&got.summed())[..p.topk].to_vec();
            let mut want_top = order[..p.topk].to_vec();
            top.sort_unstable();
            want_top.sort_unstable();
            assert_eq!(top, want_top, "at {}", w.n_past);
        }
    }
}

/// `--shared-retrieval`: a step of one token attends the blocks the step
/// before ranked best (with one layer, its vote is its own ranking);
/// steps of several tokens retrieve for themselves. Then three layers
/// given the same inputs: layer 0 (the lower third) does not vote, layers
/// 1 and 2 do, and their tally of equal scores is the ranking each would
/// make alone; so every layer, the non-voter too, attends what the
/// one-layer brute force attends, and the trace names the vote at the
/// steps that took it.
#[test]
fn shared_retrieval_matches_brute_force() {
    let p = InfllmParams {
        shared: true,
        ..params(16, 2)
    };
    let mut sizes = SIZES.to_vec();
    sizes.extend([1; 40]);
    sizes.extend([64, 1, 1]);
    // Seeds 5 and 29 tie two tokens' accumulated scores (see
    // `decode_steps_match_brute_force`); seeds 1-4 and 6-15 tie none.
    let data = chunks(&sizes, 1);
    let (want, retrievals) = run_reference(p, &data);
    let (paper, _) = run_reference(InfllmParams { shared: false, ..p }, &data);
    let changed = want.iter().zip(&paper).filter(|(a, b)| a != b).count();
    assert!(changed > 0, "the vote changed no output: the test checks nothing");
    compare(p, &sizes, 1);
    let run = run_engine_traced(p, Role::Memory, &data, false, true, 3);
    let starts: Vec<usize> = sizes
        .iter()
        .scan(0, |at, &n| Some(std::mem::replace(at, *at + n)))
        .collect();
    let best = |r: &RefRetrieval| {
        let n = r.head_scores.len() / N_HEAD;
        let sum = |b: usize| (0..N_HEAD).map(|h| r.head_scores[h * n + b]).sum::<f64>();
        let mut order: Vec<i32> = (0..n as i32).collect();
        order.sort_by(|&a, &b| sum(b as usize).total_cmp(&sum(a as usize)));
        order.truncate(p.topk);
        order.sort_unstable();
        order
    };
    let mut n_voted = 0;
    for r in &run.trace {
        let i = starts.iter().position(|&s| s == r.n_past).unwrap();
        let before = i
            .checked_sub(1)
            .and_then(|j| retrievals.iter().find(|x| x.n_past == starts[j]));
        let want_vote = before.filter(|_| sizes[i] == 1).map(best);
        let mut voted = r.voted.clone();
        voted.iter_mut().for_each(|v| v.sort_unstable());
        assert_eq!(voted, want_vote, "layer {} at {}", r.layer, r.n_past);
        n_voted += voted.is_some() as usize;
    }
    assert!(n_voted > 100, "{n_voted} records of voted steps");
    for layer in 0..3 {
        let ours: Vec<Vec<f32>> = run
            .outputs
            .iter()
            .map(|o| o[layer * N_HEAD * HEAD_DIM..][..N_HEAD * HEAD_DIM].to_vec())
            .collect();
        let (worst, at) = max_difference(&ours, &want);
        assert!(
            worst < 2e-3,
            "layer {layer}: output differs by {worst} at position {at}"
        );
    }
}

/// `--shared-retrieval` past `coarse_from` blocks: a decode step that
/// scores every block (the q4_0 copy) keeps its tally's best 4 x topk as
/// candidates, its vote the first topk of them; the decode steps after it
/// (at most `coarse_every - 1`, none after a prompt step or across a new
/// block) vote among the candidates alone, as the f16 scores rank them.
/// Three layers given the same inputs: the voters' tally is one layer's
/// ranking, read here from the trace (f16 keys, every block).
#[test]
fn shared_retrieval_past_coarse_from_votes_among_kept_candidates() {
    let p = InfllmParams {
        shared: true,
        coarse_from: 4,
        coarse_every: 4,
        ..params(16, 2)
    };
    let mut sizes = SIZES.to_vec();
    sizes.extend([1; 60]);
    sizes.extend([64, 1, 1, 1, 1, 1]);
    let run = run_engine_traced(p, Role::Memory, &chunks(&sizes, 1), false, true, 3);
    // One record per step (layer 1's), in step order.
    let steps: Vec<&RetrievalRecord> = run.trace.iter().filter(|r| r.layer == 1).collect();
    let sorted = |mut v: Vec<i32>| {
        v.sort_unstable();
        v
    };
    let (mut n_kept, mut n_full, mut in_a_row) = (0, 0, 0);
    for (i, pair) in steps.windows(2).enumerate() {
        let (now, next) = (pair[0], pair[1]);
        // The vote taken at `now`, if the next step is a decode step.
        let adjacent = next.n_past == now.n_past + now.n_tokens && next.n_tokens == 1;
        let voted_next = adjacent.then(|| next.voted.clone().expect("a decode step after a vote takes it"));
        match &now.vote_candidates {
            Some(kept) => {
                n_kept += 1;
                in_a_row += 1;
                assert!(in_a_row < p.coarse_every, "{in_a_row} steps in a row at {}", now.n_past);
                let prev = steps[i.checked_sub(1).expect("a first step has no candidates")];
                assert_eq!((prev.n_tokens, now.n_tokens), (1, 1), "at {}", now.n_past);
                assert_eq!(
                    prev.n_blocks, now.n_blocks,
                    "candidates across a new block at {}",
                    now.n_past
                );
                assert_eq!(kept.len(), 4 * p.topk);
                // The vote for the next step: the candidates' best in f16.
                let scores = now.summed();
                let mut by_score = kept.clone();
                by_score.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]));
                let want = sorted(by_score[..p.topk].to_vec());
                if let Some(voted) = voted_next {
                    assert_eq!(sorted(voted), want, "vote after {}", now.n_past);
                }
            }
            None => {
                in_a_row = 0;
                let Some(kept) = next.vote_candidates.clone() else {
                    continue;
                };
                n_full += 1;
                // A full step's vote is the first topk of the candidates it
                // keeps, and they hold the blocks f16 scores rank best.
                assert_eq!(voted_next.map(sorted), Some(sorted(kept[..p.topk].to_vec())));
                let best = RetrievalRecord::ranking(&now.summed());
                let best = best[..p.topk].iter().map(|&b| b as i32);
                best.for_each(|b| assert!(kept.contains(&b), "block {b} not kept at {}", now.n_past));
            }
        }
    }
    assert!(n_kept > 20, "only {n_kept} steps voted among kept candidates");
    assert!(n_full > 5, "only {n_full} steps kept candidates");
}

/// `--retrieval ordered`: memory tokens at their places in the sequence
/// [initial | blocks in text order | remainder], prompt and decode steps.
#[test]
fn ordered_memory_matches_brute_force() {
    let p = InfllmParams {
        retrieval: Retrieval::Ordered,
        ..params(16, 2)
    };
    let mut sizes = SIZES.to_vec();
    sizes.extend([1; 40]);
    compare(p, &sizes, 19);
}

#[test]
fn stream_mode_matches_brute_force() {
    compare(params(16, 0), SIZES, 13);
}

#[test]
fn short_sequence_is_full_causal_attention() {
    // Everything inside the window: no initial tokens, blocks or remainder.
    compare(params(16, 2), &[64, 64, 1, 64, 50], 17);
}

#[test]
fn representative_keys_per_head_under_gqa() {
    let shape = BlockShape {
        block_size: 8,
        head_dim: 4,
        n_head: 4,
        n_head_kv: 2,
        type_k: ggml::GgmlType::F32,
        type_v: ggml::GgmlType::F32,
    };
    let e = 8;
    let k: Vec<f32> = (0..8 * e).map(|i| i as f32).collect();
    let mut scores = vec![0f32; 4 * 8];
    // Head 0 prefers tokens 5 and 2; head 3 (KV head 1) tokens 7 and 0, with a tie at 1.
    scores[5] = 0.9;
    scores[2] = 0.8;
    scores[3 * 8 + 7] = 0.5;
    scores[3 * 8] = 0.4;
    scores[3 * 8 + 1] = 0.4;
    let r = representative_key(&shape, 2, &k, &scores);
    let mean = |a: usize, b: usize, kv: usize| -> Vec<f32> {
        (0..4)
            .map(|d| (k[a * e + kv * 4 + d] + k[b * e + kv * 4 + d]) / 2.0)
            .collect()
    };
    assert_eq!(&r[0..4], mean(5, 2, 0).as_slice());
    assert_eq!(&r[12..16], mean(7, 0, 1).as_slice());
    // Heads 1 and 2 have all-zero scores: the first two tokens win.
    assert_eq!(&r[4..8], mean(0, 1, 0).as_slice());
    assert_eq!(&r[8..12], mean(0, 1, 1).as_slice());
}

#[test]
fn quantized_block_store_round_trip() {
    let mut rng = Rng(99);
    for (name, bound) in [
        ("f32", 0.0),
        ("f16", 1e-3),
        ("q8_0", 1e-2),
        ("q5_0", 7e-2),
        ("q5_1", 7e-2),
        ("q4_0", 0.15),
        ("q4_1", 0.15),
    ] {
        let ty = ggml::type_by_name(name).unwrap().id;
        let shape = BlockShape {
            block_size: 32,
            head_dim: 64,
            n_head: 4,
            n_head_kv: 2,
            type_k: ty,
            type_v: ty,
        };
        let n = shape.block_values();
        let mut store = BlockStore::new(shape, 4).unwrap();
        let (k, v) = (rng.vec(n), rng.vec(n));
        store.push(&k, &v, &vec![0.0; shape.repr_len()], None).unwrap();
        store.push(&v, &k, &vec![0.0; shape.repr_len()], None).unwrap();
        let (k1, v1) = store.read(1);
        for (got, want) in [(k1, &v), (v1, &k)] {
            let err = got
                .iter()
                .zip(want.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err <= bound, "{name}: max error {err} > {bound}");
        }
        // Bytes per block (and so per token) follow from the types alone.
        let info = ggml::type_info(ty).unwrap();
        let per_block = 2 * n as u64 / info.block_size * info.type_size + shape.repr_len() as u64 * 2;
        assert_eq!(store.bytes() as u64, 2 * per_block, "{name}");
    }
}

/// The store's q4_0 copy of the representative keys (two-pass retrieval):
/// offered from `from` blocks on, never at 0, and holding the stored f16
/// keys within q4_0's error.
#[test]
fn the_coarse_copy_follows_the_representative_keys() {
    let mut rng = Rng(5);
    let shape = BlockShape {
        block_size: 32,
        head_dim: 64,
        n_head: 4,
        n_head_kv: 2,
        type_k: ggml::GgmlType::F16,
        type_v: ggml::GgmlType::F16,
    };
    let mut store = BlockStore::new(shape, 4).unwrap();
    let reprs: Vec<Vec<f32>> = (0..3).map(|_| rng.vec(shape.repr_len())).collect();
    for r in &reprs {
        store
            .push(&rng.vec(shape.block_values()), &rng.vec(shape.block_values()), r, None)
            .unwrap();
    }
    let ctx = ggml::Context::new(8, 0);
    for from in [0, 4] {
        assert!(
            store.coarse_pass(&ctx, from, false).is_none(),
            "offered from {from} with 3 blocks"
        );
    }
    let t = store.coarse_pass(&ctx, 3, false).expect("offered from 3 blocks").keys;
    let mut bytes = vec![0u8; t.nbytes()];
    t.read_bytes(0, &mut bytes);
    let got = ggml::dequantize(t.ty(), &bytes, 3 * shape.repr_len());
    let err = got
        .iter()
        .zip(reprs.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err <= 0.15, "q4_0 copy off by {err}");
}

#[test]
fn prompt_sized_chunks_match_brute_force() {
    let mut p = params(16, 2);
    p.n_local = 1024;
    p.chunk = 512;
    compare(p, &[512, 300], 5);
}

/// Prompt chunks of more than one query tile (128 queries) while blocks,
/// initial tokens and the remainder are in play: each tile sees its own
/// span of local keys, and the tiles' scores overlap.
#[test]
fn tiled_chunks_with_memory_match_brute_force() {
    let mut p = params(16, 2);
    p.chunk = 256;
    compare(p, &[256, 200, 256, 131, 1, 256, 256, 77, 256], 11);
}

/// Tiles of fewer queries, as long texts get (their logits kept within
/// `tile_bytes`): up to 768 keys x 9 heads x 128 queries is 3.5 MB, so
/// 2 MiB gives tiles of 64 and 256 KiB the floor, 32.
#[test]
fn smaller_query_tiles_match_brute_force() {
    for tile_bytes in [2 << 20, 256 << 10] {
        let mut p = params(16, 2);
        p.chunk = 256;
        p.tile_bytes = tile_bytes;
        compare(p, &[256, 200, 256, 131, 1, 256, 256, 77, 256], 11);
    }
}

/// Retrieval in two passes (a q4_0 copy of the representative keys, then
/// the best 4 x topk again in f16) from the 4th block on: over prompt
/// chunks and hundreds of decode steps (up to 47 blocks, 8 candidates) it
/// picks what one pass picks, so the outputs are the same to the bit on
/// both op paths, and match the brute force. (That the coarse pass decides
/// the candidates: the unit test in `coarse.rs`.)
#[test]
fn two_pass_retrieval_keeps_the_outputs() {
    let mut sizes = vec![64; 16];
    sizes.extend([1; 500]);
    let data = chunks(&sizes, 5);
    let one = params(16, 2);
    let two = InfllmParams { coarse_from: 4, ..one };
    for standard in [false, true] {
        let (a, _) = run_engine(one, Role::Memory, &data, standard);
        let (b, _) = run_engine(two, Role::Memory, &data, standard);
        assert!(a == b, "standard ops {standard}: two passes changed the outputs");
    }
    compare(two, &sizes, 5);
}

/// With `coarse_every` > 1, decode steps take the candidates of the last
/// coarse pass: at most `coarse_every - 1` steps in a row, never the first
/// decode step after a prompt step or the first after a block formed. The
/// kept candidates change the pick (random queries want other blocks), and
/// both op paths keep the same schedule.
#[test]
fn decode_steps_take_kept_candidates_until_a_block_forms() {
    let mut sizes = vec![64; 16];
    sizes.extend([1; 200]);
    sizes.extend([64, 64]);
    sizes.extend([1; 100]);
    let data = chunks(&sizes, 5);
    let every = InfllmParams {
        coarse_from: 4,
        coarse_every: 12, // not a divisor of the 32 steps between blocks
        ..params(16, 2)
    };
    let mut schedules = Vec::new();
    for standard in [false, true] {
        let run = run_engine_traced(every, Role::Memory, &data, standard, false, 1);
        let (mut run_len, mut before) = (0, None);
        for &(t, n_blocks, reuses) in &run.steps {
            if reuses {
                assert_eq!(before, Some((1, n_blocks)), "kept across a prompt step or a new block");
                run_len += 1;
                assert!(run_len < 12, "{run_len} steps took kept candidates in a row");
            } else {
                run_len = 0;
            }
            before = Some((t, n_blocks));
        }
        let n_reused = run.steps.iter().filter(|s| s.2).count();
        assert!(n_reused > 150, "{n_reused} steps took kept candidates");
        let (each, _) = run_engine(
            InfllmParams {
                coarse_every: 1,
                ..every
            },
            Role::Memory,
            &data,
            standard,
        );
        assert!(
            each != run.outputs,
            "standard ops {standard}: kept candidates changed nothing"
        );
        schedules.push(run.steps);
    }
    assert_eq!(schedules[0], schedules[1], "the op paths kept candidates differently");
}

/// Plain causal attention within a sliding window of `w` tokens (a query
/// sees itself and the w - 1 tokens before it), at true positions.
fn sliding_window_reference(w: usize, chunks: &[Chunk]) -> Vec<Vec<f32>> {
    let group = N_HEAD / N_HEAD_KV;
    let e = N_HEAD_KV * HEAD_DIM;
    let scale = 1.0 / (HEAD_DIM as f64).sqrt();
    let to_f64 = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<_>>();
    let (mut keys, mut vals) = (Vec::new(), Vec::new());
    let mut outputs = Vec::new();
    for c in chunks {
        let t = c.k.len() / e;
        let start = keys.len();
        for i in 0..t {
            keys.push(to_f64(&c.k[i * e..(i + 1) * e]));
            vals.push(to_f64(&c.v[i * e..(i + 1) * e]));
        }
        for i in 0..t {
            let pos = start + i;
            let mut out = vec![0f32; N_HEAD * HEAD_DIM];
            for h in 0..N_HEAD {
                let o = (i * N_HEAD + h) * HEAD_DIM;
                let q = rope(&to_f64(&c.q[o..o + HEAD_DIM]), pos as f64);
                let head = |x: &Vec<f64>| x[(h / group) * HEAD_DIM..(h / group + 1) * HEAD_DIM].to_vec();
                let seen = (pos + 1).saturating_sub(w)..=pos;
                let logits: Vec<f64> = seen
                    .clone()
                    .map(|j| dot(&q, &rope(&head(&keys[j]), j as f64)) * scale)
                    .collect();
                let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = logits.iter().map(|l| (l - max).exp()).sum();
                for (j, l) in seen.zip(&logits) {
                    let p = (l - max).exp() / sum;
                    for (d, v) in head(&vals[j]).iter().enumerate() {
                        out[h * HEAD_DIM + d] += (p * v) as f32;
                    }
                }
            }
            outputs.push(out);
        }
    }
    outputs
}

/// The instance serving a model's sliding-window layers (Gemma 3) is a
/// plain sliding window: a token that leaves a query's window during a
/// step is not attended by it, in prompt and decode steps alike.
#[test]
fn sliding_window_instance_is_a_plain_sliding_window() {
    let f16 = ggml::type_by_name("f16").unwrap().id;
    let p = InfllmParams {
        n_init: 0,
        n_local: 256,
        block_size: 1,
        topk: 0,
        repr_topk: 1,
        chunk: 64,
        type_k: f16,
        type_v: f16,
        max_tokens: 1 << 16,
        tail_steps: 1,
        tile_bytes: 16 << 20,
        coarse_from: 0,
        coarse_every: 1,
        mem_distance: None,
        retrieval: Retrieval::Paper,
        shared: false,
    };
    let data = chunks(&[64, 64, 64, 64, 1, 1, 1, 64, 37, 1, 1, 64, 64, 5, 64], 3);
    let want = sliding_window_reference(256, &data);
    for standard in [false, true] {
        let (ours, _) = run_engine(p, Role::SlidingWindow, &data, standard);
        let (worst, pos) = max_difference(&ours, &want);
        eprintln!(
            "standard ops {standard}: {} tokens, max |difference| {worst:e} at position {pos}",
            ours.len()
        );
        assert!(
            worst < 2e-3,
            "standard ops {standard}: output differs by {worst} at position {pos}"
        );
    }
}
