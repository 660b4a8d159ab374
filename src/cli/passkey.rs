//! `infllm passkey`: llama.cpp's passkey test, extended. A key (five
//! digits, `--key-digits`) is hidden at chosen positions of a long filler
//! text (llama.cpp's repeated passage, or `--filler varied`), with other
//! keys as distractors when `--needles` asks; the model must repeat it
//! (greedy) when asked at the end: the first number it writes must be the
//! whole key. Several lengths and positions make a grid (`-o csv|json`,
//! `--plot`).

mod grid;
mod haystack;
mod needles;
mod trace;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use rand::SeedableRng;

use super::attn::describe;
use super::limits::{self, count};
use super::perplexity::TableFormat;
use super::progress::Progress;
use super::RunArgs;
use crate::attention::{Settings, Snapshot};
use crate::engine::Engine;
use crate::sampling::argmax;
use crate::tokenizer::{Token, Tokenizer};
use haystack::{Filler, Haystack};
use needles::{finds_key, fixed_tokens, Planted};
use trace::{TraceFile, TracedRun};

/// `--junk` at most: some 20 million tokens of filler.
const MAX_JUNK: u64 = 1_000_000;

#[derive(Args, Debug)]
pub struct PasskeyArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Target prompt lengths in tokens, each 1..=16777216; a comma list
    /// (4096,8192) runs every position at every length [default: 16384;
    /// with --grid 8192,16384,32768,65536,131072]
    #[arg(long, value_delimiter = ',', conflicts_with = "junk", value_parser = count(1, limits::MAX_TOKENS))]
    pub tokens: Vec<usize>,
    /// Numbers of filler sentences instead of token counts, each 0..=1000000 (a comma list too)
    #[arg(long, value_delimiter = ',', value_parser = count(0, MAX_JUNK))]
    pub junk: Vec<usize>,
    /// Where the key goes: a fraction of the text, 0..=1 (0.5), or a filler
    /// index (120); repeat or comma-separate for several runs [default:
    /// 0.1,0.5,0.9; with --grid 0.1,0.3,0.5,0.7,0.9]
    #[arg(long, value_delimiter = ',')]
    pub pos: Vec<String>,
    /// Runs per length and position, each with its own key and (with
    /// --filler varied) its own text, from seeds --seed, --seed + 1, ...; 1..=1000
    #[arg(long, default_value_t = 1, value_parser = count(1, 1000))]
    pub trials: usize,
    /// The needle-in-a-haystack grid: lengths 8K to 128K by doubling,
    /// depths 10% to 90%, --share-prefix on (--tokens and --pos still choose)
    #[arg(long)]
    pub grid: bool,
    /// Table of the grid on stdout, a row per length and position: length,
    /// depth, trials, passed, answer (csv, json; the runs' lines then go to
    /// stderr). text: the runs' lines only
    #[arg(short = 'o', long = "output-format", value_enum, default_value_t = TableFormat::Text)]
    pub output: TableFormat,
    /// Draw the grid (lengths x positions, green: found, red: missed) into this SVG file
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Seed of the pass keys (and of a varied filler), 0..=18446744073709551615
    #[arg(short = 's', long, default_value_t = 1234)]
    pub seed: u64,
    /// The text around the key: llama.cpp's filler passage repeated, or
    /// sentences that never repeat
    #[arg(long, value_enum, default_value_t = Filler::Repeat)]
    pub filler: Filler,
    /// Digits of a key, 1..=9
    #[arg(long = "key-digits", default_value_t = 5, value_parser = count(1, 9))]
    pub key_digits: usize,
    /// Keys in each text, 1..=16: more than one are the keys of doors of
    /// different colours, the others spread over the text, and the question
    /// asks for the one at --pos
    #[arg(long, default_value_t = 1, value_parser = count(1, needles::DOORS.len() as u64))]
    pub needles: usize,
    /// Tokens generated after the question, 1..=1024
    #[arg(short = 'n', long = "n-predict", default_value_t = 12, value_parser = count(1, 1024))]
    pub n_predict: usize,
    /// Evaluate the text the runs have in common once (runs in key order):
    /// each run goes back to a snapshot of it. Same answers, less prefill,
    /// one more copy of the window state in memory
    #[arg(long)]
    pub share_prefix: bool,
    /// Write every retrieval (step, layer, blocks picked, the key's rank)
    /// into this file as JSON lines, and say per run whether the key's
    /// blocks were picked when the answer was written (InfLLM only)
    #[arg(long, value_name = "FILE")]
    pub trace_retrieval: Option<PathBuf>,
}

/// `--grid`'s lengths and depths.
const GRID_TOKENS: [usize; 5] = [8192, 16384, 32768, 65536, 131072];
const GRID_DEPTHS: [&str; 5] = ["0.1", "0.3", "0.5", "0.7", "0.9"];

impl PasskeyArgs {
    /// The prompt lengths asked (`--tokens`, or the defaults).
    fn lengths(&self) -> Vec<usize> {
        match (self.tokens.is_empty(), self.grid) {
            (false, _) => self.tokens.clone(),
            (true, true) => GRID_TOKENS.to_vec(),
            (true, false) => vec![16384],
        }
    }

    /// The key positions asked (`--pos`, or the defaults).
    fn depths(&self) -> Vec<String> {
        let defaults: &[&str] = if self.grid {
            &GRID_DEPTHS
        } else {
            &["0.1", "0.5", "0.9"]
        };
        match self.pos.is_empty() {
            true => defaults.iter().map(|d| d.to_string()).collect(),
            false => self.pos.clone(),
        }
    }

    fn shares_prefix(&self) -> bool {
        self.share_prefix || self.grid
    }
}

/// Filler pieces of each length asked (`--junk`, or `--tokens`
/// converted); distinct, since each is a column of the grid.
fn junk_counts(a: &PasskeyArgs, tok: &Tokenizer, hay: &mut Haystack) -> anyhow::Result<Vec<usize>> {
    let lengths = a.lengths();
    let (flag, asked) = match a.junk.is_empty() {
        true => ("--tokens", &lengths),
        false => ("--junk", &a.junk),
    };
    anyhow::ensure!(!asked.is_empty(), "{flag}: no length given");
    let counts: Vec<usize> = match a.junk.is_empty() {
        true => {
            let fixed = fixed_tokens(tok, a.needles, a.key_digits);
            asked.iter().map(|&t| hay.pieces_for(tok, t, fixed)).collect()
        }
        false => asked.clone(),
    };
    for (i, n) in counts.iter().enumerate() {
        if let Some(j) = counts[..i].iter().position(|m| m == n) {
            anyhow::bail!(
                "{flag}: {} and {} give the same text ({n} filler sentences)",
                asked[j],
                asked[i]
            );
        }
    }
    Ok(counts)
}

/// A key position: its filler index and its depth (a fraction of the text).
#[derive(Clone, Copy)]
struct Position {
    at: usize,
    depth: f64,
}

/// A position argument in a text of `n_junk` filler sentences.
fn position(arg: &str, n_junk: usize) -> anyhow::Result<Position> {
    if arg.contains('.') {
        let f: f64 = arg.parse().map_err(|_| anyhow::anyhow!("--pos {arg}: not a number"))?;
        anyhow::ensure!(
            (0.0..=1.0).contains(&f),
            "--pos {arg}: a fraction must be between 0 and 1"
        );
        let at = ((f * n_junk as f64).round() as usize).min(n_junk);
        Ok(Position { at, depth: f })
    } else {
        let i: usize = arg
            .parse()
            .map_err(|_| anyhow::anyhow!("--pos {arg:?}: not a fraction or an index"))?;
        anyhow::ensure!(i <= n_junk, "--pos {arg}: there are only {n_junk} filler sentences");
        Ok(Position {
            at: i,
            depth: i as f64 / n_junk.max(1) as f64,
        })
    }
}

/// The positions of `--pos` in a text of `n_junk` filler sentences;
/// distinct, since each is a row of the grid.
fn positions(a: &PasskeyArgs, n_junk: usize) -> anyhow::Result<Vec<Position>> {
    let asked = a.depths();
    let found = asked
        .iter()
        .map(|p| position(p, n_junk))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (i, p) in found.iter().enumerate() {
        if let Some(j) = found[..i].iter().position(|q| q.at == p.at) {
            anyhow::bail!(
                "--pos {} and {}: the same filler index ({}) in {n_junk} sentences (--trials repeats a position)",
                asked[j],
                asked[i],
                p.at
            );
        }
    }
    Ok(found)
}

/// One run: its grid cell and text (`hays` index), the filler sentences
/// and the key's index among them, the key, the prompt's tokens.
struct KeyRun {
    cell: usize,
    hay: usize,
    n_junk: usize,
    at: usize,
    key: u32,
    tokens: Vec<Token>,
    /// The key line's tokens (with --trace-retrieval).
    key_tokens: std::ops::Range<usize>,
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

/// Each length's filler sentences and key positions.
type Layout = Vec<(usize, Vec<Position>)>;

pub fn run(a: &PasskeyArgs) -> anyhow::Result<()> {
    if let Some(plot) = &a.plot {
        super::plot::check_target(plot)?;
    }
    let (model, info) = a.run.load()?;
    let n_ctx_train = model.hp.n_ctx_train;
    // A text per trial (one when the filler repeats).
    let n_hays = if a.filler == Filler::Varied { a.trials } else { 1 };
    let mut hays: Vec<Haystack> = (0..n_hays as u64)
        .map(|t| Haystack::new(a.filler, a.seed.wrapping_add(t)))
        .collect();
    let layout: Layout = junk_counts(a, &model.tokenizer, &mut hays[0])?
        .into_iter()
        .map(|n| Ok((n, positions(a, n)?)))
        .collect::<anyhow::Result<_>>()?;
    let mut params = a.run.engine_params(&model.hp)?;
    if a.run.ctx_size.is_none() {
        // Full attention: room for the longest prompt and the answer.
        let tokens = a.lengths().into_iter().max().unwrap_or(0);
        let n_junk = layout.iter().map(|l| l.0).max().unwrap_or(0);
        params.n_ctx = tokens.max(n_junk * 32) + a.n_predict + 256;
    }
    let attn_info = describe(&params.attn, &model.hp);
    let mut engine = a.run.engine(model, params)?;
    info.log();
    crate::log_info!("infllm: {attn_info}");
    let longest = layout.iter().map(|l| l.0).max().unwrap_or(0);
    hays.iter_mut().for_each(|h| h.grow(longest));
    let runs = key_runs(a, &engine, &layout, &hays)?;
    let mut cells = empty_cells(a, &layout, &runs);
    // The runs' lines are the text output; beside a table they go to stderr.
    let mut out: Box<dyn Write> = match a.output {
        TableFormat::Text => Box::new(std::io::stdout().lock()),
        _ => Box::new(std::io::stderr().lock()),
    };
    let mut trace = start_trace(a, &mut engine, &runs)?;
    let (prefill, decode) = run_all(a, &mut engine, &runs, &mut cells, &mut out, trace.as_mut())?;
    let passed: usize = cells.iter().map(|c| c.passed).sum();
    writeln!(
        out,
        "passkey: accuracy {passed}/{} ({:.0}%), prefill {:.1} tokens/s, decode {:.1} tokens/s, peak RSS {}",
        runs.len(),
        100.0 * passed as f64 / runs.len().max(1) as f64,
        prefill.per_second(),
        decode.per_second(),
        super::rss::peak_rss_bytes().map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64))
    )?;
    out.flush()?;
    drop(out);
    if a.shares_prefix() {
        let all: usize = runs.iter().map(|r| r.tokens.len()).sum();
        crate::log_info!("infllm: --share-prefix: {} of {all} prompt tokens evaluated", prefill.0);
    }
    crate::log_info!("infllm: {}", engine.memory_report());
    grid::print_table(a.output, &cells)?;
    if let Some(path) = &a.plot {
        grid::write_plot(path, &cells, n_ctx_train)?;
        crate::log_info!("passkey: plot written to {}", path.display());
    }
    Ok(())
}

/// Runs every key, a line each on `out`, their answers into `cells`;
/// returns the prefill and decode rates.
fn run_all(
    a: &PasskeyArgs,
    engine: &mut Engine,
    runs: &[KeyRun],
    cells: &mut [grid::Cell],
    out: &mut dyn Write,
    mut trace: Option<&mut TraceFile>,
) -> anyhow::Result<(Rate, Rate)> {
    let (mut prefill, mut decode) = (Rate::default(), Rate::default());
    let mut shared: SharedPrefix = None;
    for (i, run) in runs.iter().enumerate() {
        let next = runs.get(i + 1).filter(|_| a.shares_prefix());
        let t0 = Instant::now();
        let (logits, n_read) = read_prompt(engine, run, next, &mut shared)?;
        prefill.0 += n_read;
        prefill.1 += t0.elapsed();
        let t1 = Instant::now();
        let answer = greedy_answer(engine, logits, a.n_predict)?;
        decode.0 += answer.len().saturating_sub(1);
        decode.1 += t1.elapsed();
        let text = String::from_utf8_lossy(&engine.tokenizer().decode(&answer, false, false)).into_owned();
        let ok = finds_key(&text, run.key);
        writeln!(
            out,
            "passkey: length {} tokens, position {:.0}% (filler {}/{}), key {}, generated {text:?}: {}",
            run.tokens.len(),
            100.0 * run.at as f64 / run.n_junk.max(1) as f64,
            run.at,
            run.n_junk,
            run.key,
            if ok { "pass" } else { "FAIL" }
        )?;
        out.flush()?;
        if let Some(trace) = trace.as_deref_mut() {
            let traced = TracedRun {
                index: i,
                prompt_len: run.tokens.len(),
                key: run.key,
                key_tokens: run.key_tokens.clone(),
                passed: ok,
            };
            let line = trace.write_run(&traced, &engine.take_trace())?;
            crate::log_info!("trace: {line}");
        }
        let cell = &mut cells[run.cell];
        cell.passed += ok as usize;
        cell.answers.push(text);
    }
    Ok((prefill, decode))
}

/// With `--trace-retrieval`: the file, and the engine recording retrieval.
fn start_trace(a: &PasskeyArgs, engine: &mut Engine, runs: &[KeyRun]) -> anyhow::Result<Option<TraceFile>> {
    let Some(path) = &a.trace_retrieval else {
        return Ok(None);
    };
    let p = match engine.settings() {
        Settings::Infllm(p) if p.topk > 0 => p,
        _ => anyhow::bail!("--trace-retrieval: only InfLLM retrieves blocks (--attn infllm, --topk above 0)"),
    };
    let longest = runs.iter().map(|r| r.tokens.len()).max().unwrap_or(0);
    engine.trace_retrieval(Some(longest + a.n_predict))?;
    TraceFile::create(path, p).map(Some)
}

/// `--trials` runs per length and position, keys drawn from the seed in
/// that order (length, position, trial), trial t's text from `hays[t]`
/// (or the one text); with `--share-prefix` each length's and text's runs
/// in key order, so that consecutive prompts share most.
fn key_runs(a: &PasskeyArgs, engine: &Engine, layout: &Layout, hays: &[Haystack]) -> anyhow::Result<Vec<KeyRun>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let mut runs = Vec::new();
    let cells = layout
        .iter()
        .flat_map(|(n_junk, ps)| ps.iter().map(move |p| (*n_junk, p.at)));
    for (cell, (n_junk, at)) in cells.enumerate() {
        for trial in 0..a.trials {
            let hay_index = trial.min(hays.len() - 1);
            let hay = &hays[hay_index];
            let planted = Planted::draw(&mut rng, a.needles, a.key_digits as u32, n_junk, at)?;
            let key = planted.target().key;
            let prompt = planted.prompt(hay, n_junk);
            let tokens = engine.tokenizer().encode(&prompt, true, true);
            let key_tokens = match (&a.trace_retrieval, planted.target_span(&prompt)) {
                (Some(_), Some(span)) => {
                    let count = |s: &str| engine.tokenizer().encode(s, true, true).len();
                    count(&prompt[..span.start])..count(&prompt[..span.end])
                }
                _ => 0..0,
            };
            anyhow::ensure!(
                tokens.len() < engine.n_ctx(),
                "the prompt is too long: {} tokens, but the context holds {} (-c): raise -c",
                tokens.len(),
                engine.n_ctx()
            );
            runs.push(KeyRun {
                cell,
                hay: hay_index,
                n_junk,
                at,
                key,
                tokens,
                key_tokens,
            });
        }
    }
    if a.shares_prefix() {
        runs.sort_by_key(|r| (r.n_junk, r.hay, r.at));
    }
    Ok(runs)
}

/// The grid's cells, length by length, without answers yet. A cell's
/// length is the `--tokens` asked, or with `--junk` the first prompt's of
/// that length (one column: prompts differ by a token or two).
fn empty_cells(a: &PasskeyArgs, layout: &Layout, runs: &[KeyRun]) -> Vec<grid::Cell> {
    let mut cells = Vec::new();
    for (li, (n_junk, ps)) in layout.iter().enumerate() {
        let length = match a.junk.is_empty() {
            true => a.lengths()[li],
            false => runs.iter().find(|r| r.n_junk == *n_junk).map_or(0, |r| r.tokens.len()),
        };
        for (row, p) in ps.iter().enumerate() {
            cells.push(grid::Cell {
                length,
                depth: p.depth,
                row,
                passed: 0,
                answers: Vec::new(),
            });
        }
    }
    cells
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
