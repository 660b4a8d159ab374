//! `infllm passkey`: llama.cpp's passkey test, extended. A five-digit key is
//! hidden at chosen positions of a long filler text; the model must repeat
//! it (greedy) when asked at the end.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Args;
use rand::{Rng, SeedableRng};

use super::attn::describe;
use super::limits::{self, count};
use super::progress::Progress;
use super::RunArgs;
use crate::attention::Snapshot;
use crate::engine::Engine;
use crate::sampling::argmax;
use crate::tokenizer::{Token, Tokenizer};

const INTRO: &str = "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. \
                     I will quiz you about the important information there.";
const FILLER: &str = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
const QUESTION: &str = " What is the pass key? The pass key is";

/// `--junk` at most: some 20 million tokens of filler.
const MAX_JUNK: u64 = 1_000_000;

#[derive(Args, Debug)]
pub struct PasskeyArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Target prompt length in tokens, 1..=16777216
    #[arg(long, default_value_t = 16384, conflicts_with = "junk", value_parser = count(1, limits::MAX_TOKENS))]
    pub tokens: usize,
    /// Number of filler sentences instead of a token count, 0..=1000000
    #[arg(long, value_parser = count(0, MAX_JUNK))]
    pub junk: Option<usize>,
    /// Where the key goes: a fraction of the text (0.5) or a filler index (120); repeat or comma-separate for several runs
    #[arg(long, value_delimiter = ',', default_values = ["0.1", "0.5", "0.9"])]
    pub pos: Vec<String>,
    /// Seed of the pass key, 0..=18446744073709551615
    #[arg(short = 's', long, default_value_t = 1234)]
    pub seed: u64,
    /// Tokens generated after the question, 1..=1024
    #[arg(short = 'n', long = "n-predict", default_value_t = 12, value_parser = count(1, 1024))]
    pub n_predict: usize,
    /// Evaluate the text the runs have in common once (runs in key order):
    /// each run goes back to a snapshot of it. Same answers, less prefill,
    /// one more copy of the window state in memory
    #[arg(long)]
    pub share_prefix: bool,
}

/// The prompt with the key line inserted before filler sentence `at`.
pub fn prompt(n_junk: usize, at: usize, key: u32) -> String {
    let key_line = format!(" The pass key is {key}. Remember it. {key} is the pass key.");
    let mut p = String::with_capacity(INTRO.len() + (n_junk + 1) * FILLER.len() + QUESTION.len());
    p.push_str(INTRO);
    for i in 0..n_junk {
        if i == at {
            p.push_str(&key_line);
        }
        p.push_str(FILLER);
    }
    if at >= n_junk {
        p.push_str(&key_line);
    }
    p.push_str(QUESTION);
    p
}

/// Filler sentences that make a prompt of about `tokens` tokens.
fn junk_for(tok: &Tokenizer, tokens: usize) -> usize {
    let cost = |s: &str| tok.encode(s, false, false).len();
    let fixed = cost(INTRO) + cost(QUESTION) + cost(" The pass key is 12345. Remember it. 12345 is the pass key.");
    let per = cost(&FILLER.repeat(10)) as f64 / 10.0;
    ((tokens.saturating_sub(fixed)) as f64 / per).round() as usize
}

/// A position argument as a filler index.
fn position(arg: &str, n_junk: usize) -> anyhow::Result<usize> {
    if arg.contains('.') {
        let f: f64 = arg.parse().map_err(|_| anyhow::anyhow!("--pos {arg}: not a number"))?;
        anyhow::ensure!(
            (0.0..=1.0).contains(&f),
            "--pos {arg}: a fraction must be between 0 and 1"
        );
        Ok(((f * n_junk as f64).round() as usize).min(n_junk))
    } else {
        let i: usize = arg
            .parse()
            .map_err(|_| anyhow::anyhow!("--pos {arg}: not a fraction or an index"))?;
        anyhow::ensure!(i <= n_junk, "--pos {arg}: there are only {n_junk} filler sentences");
        Ok(i)
    }
}

/// One run: the key's filler index, the key, the prompt's tokens.
struct KeyRun {
    at: usize,
    key: u32,
    tokens: Vec<Token>,
}

/// Tokens and time, summed over the runs.
#[derive(Default)]
struct Rate(usize, Duration);

impl Rate {
    fn per_second(&self) -> f64 {
        self.0 as f64 / self.1.as_secs_f64().max(1e-9)
    }
}

/// The snapshot after a prefix the runs share, and that prefix's tokens.
type SharedPrefix<'t> = Option<(&'t [Token], Snapshot)>;

pub fn run(a: &PasskeyArgs) -> anyhow::Result<()> {
    let (model, info) = a.run.load()?;
    let n_junk = match a.junk {
        Some(n) => n,
        None => junk_for(&model.tokenizer, a.tokens),
    };
    let positions = a
        .pos
        .iter()
        .map(|p| position(p, n_junk))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut params = a.run.engine_params(&model.hp)?;
    if a.run.ctx_size.is_none() {
        // Full attention: room for the prompt and the answer.
        params.n_ctx = a.tokens.max(n_junk * 32) + a.n_predict + 256;
    }
    let attn_info = describe(&params.attn, &model.hp);
    let mut engine = Engine::new(model, params)?;
    info.log();
    crate::log_info!("infllm: {attn_info}");
    let runs = key_runs(a, &engine, n_junk, &positions)?;

    let mut out = std::io::stdout().lock();
    let (mut passed, mut prefill, mut decode) = (0, Rate::default(), Rate::default());
    let mut shared: SharedPrefix = None;
    for (i, run) in runs.iter().enumerate() {
        let next = runs.get(i + 1).filter(|_| a.share_prefix);
        let t0 = Instant::now();
        let (logits, n_read) = read_prompt(&mut engine, run, next, &mut shared)?;
        prefill.0 += n_read;
        prefill.1 += t0.elapsed();
        let t1 = Instant::now();
        let answer = greedy_answer(&mut engine, logits, a.n_predict)?;
        decode.0 += answer.len().saturating_sub(1);
        decode.1 += t1.elapsed();
        let text = String::from_utf8_lossy(&engine.tokenizer().decode(&answer, false, false)).into_owned();
        let ok = text.contains(&run.key.to_string());
        passed += ok as usize;
        writeln!(
            out,
            "passkey: length {} tokens, position {:.0}% (filler {}/{n_junk}), key {}, generated {text:?}: {}",
            run.tokens.len(),
            100.0 * run.at as f64 / n_junk.max(1) as f64,
            run.at,
            run.key,
            if ok { "pass" } else { "FAIL" }
        )?;
        out.flush()?;
    }
    writeln!(
        out,
        "passkey: accuracy {passed}/{} ({:.0}%), prefill {:.1} tokens/s, decode {:.1} tokens/s, peak RSS {}",
        positions.len(),
        100.0 * passed as f64 / positions.len().max(1) as f64,
        prefill.per_second(),
        decode.per_second(),
        super::rss::peak_rss_bytes().map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64))
    )?;
    if a.share_prefix {
        let all: usize = runs.iter().map(|r| r.tokens.len()).sum();
        crate::log_info!("infllm: --share-prefix: {} of {all} prompt tokens evaluated", prefill.0);
    }
    crate::log_info!("infllm: {}", engine.memory_report());
    Ok(())
}

/// A run per key position, keys drawn from the seed in `--pos` order; in
/// key order with `--share-prefix`, so that consecutive prompts share most.
fn key_runs(a: &PasskeyArgs, engine: &Engine, n_junk: usize, positions: &[usize]) -> anyhow::Result<Vec<KeyRun>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let mut runs = Vec::with_capacity(positions.len());
    for &at in positions {
        let key: u32 = rng.gen_range(10_000..100_000);
        let tokens = engine.tokenizer().encode(&prompt(n_junk, at, key), true, true);
        anyhow::ensure!(
            tokens.len() < engine.n_ctx(),
            "the prompt is too long: {} tokens, but the context holds {} (-c): raise -c",
            tokens.len(),
            engine.n_ctx()
        );
        runs.push(KeyRun { at, key, tokens });
    }
    if a.share_prefix {
        runs.sort_by_key(|r| r.at);
    }
    Ok(runs)
}

/// Evaluates `run`'s prompt, from the shared snapshot where it starts with
/// its prefix; when `next` is given, first snapshots whole steps of what the
/// two prompts have in common. Returns the last logits and the tokens read.
fn read_prompt<'t>(
    engine: &mut Engine,
    run: &'t KeyRun,
    next: Option<&KeyRun>,
    shared: &mut SharedPrefix<'t>,
) -> anyhow::Result<(Vec<f32>, usize)> {
    let tokens = &run.tokens;
    let mut start = match shared {
        Some((prefix, snapshot)) if tokens.starts_with(prefix) => {
            engine.rollback(snapshot)?;
            prefix.len()
        }
        _ => {
            engine.clear();
            0
        }
    };
    let first = start;
    let mut progress = Progress::new(tokens.len() - start);
    if let Some(next) = next {
        let common = tokens.iter().zip(&next.tokens).take_while(|(x, y)| x == y).count();
        let end = common.min(tokens.len() - 1) / engine.step_tokens() * engine.step_tokens();
        if end > start {
            engine.feed(&tokens[start..end], &mut |done, _| progress.update(done))?;
            *shared = Some((&tokens[..end], engine.snapshot()));
            start = end;
        }
    }
    let logits = engine.eval(&tokens[start..], false, &mut |done, _| {
        progress.update(start - first + done)
    })?;
    progress.finish();
    Ok((logits, tokens.len() - first))
}

/// Up to `n_predict` greedy tokens from `logits`, stopping at end of text.
fn greedy_answer(engine: &mut Engine, mut logits: Vec<f32>, n_predict: usize) -> anyhow::Result<Vec<Token>> {
    let mut answer: Vec<Token> = Vec::new();
    for i in 0..n_predict {
        let scored: Vec<_> = logits.iter().enumerate().map(|(i, &l)| (i as Token, l)).collect();
        let t = argmax(&scored);
        if engine.tokenizer().is_eog(t) {
            break;
        }
        answer.push(t);
        if i + 1 < n_predict {
            logits = engine.eval(&[t], false, &mut |_, _| {})?;
        }
    }
    Ok(answer)
}
