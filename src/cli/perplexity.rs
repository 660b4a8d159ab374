//! `infllm perplexity`: llama.cpp's llama-perplexity (its default mode:
//! chunks of `-c` tokens, the second half of each scored), and `--range N`:
//! the text read as one sequence, perplexity per N positions, for one or
//! several attention modes side by side.

mod range;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use super::attn::{describe, AttnArgs, AttnKind, AttnSettings};
use super::devices::DeviceArgs;
use super::limits::{self, count, count_or_minus_one};
use super::{LoadReport, ModelArgs, RunArgs};
use crate::engine::Engine;
use crate::model::Model;
use crate::tokenizer::Token;

/// llama-perplexity's context when `-c` is not given.
const DEFAULT_CTX: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TableFormat {
    Text,
    Csv,
    Json,
}

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text file to score
    #[arg(short = 'f', long = "file", value_name = "FNAME")]
    pub file: PathBuf,
    /// Tokens per chunk, 1..=16777216 [default: 512]. With --range: the
    /// text is cut to this many tokens [default: the whole text]
    #[arg(short = 'c', long = "ctx-size", value_parser = count(0, limits::MAX_TOKENS), help_heading = "Common")]
    pub ctx_size: Option<usize>,
    /// Threads, 1..=1024; at most one per core runs [default: all cores]
    #[arg(short = 't', long = "threads", value_parser = count(1, limits::MAX_THREADS), help_heading = "Common")]
    pub threads: Option<usize>,
    /// Logical batch size, 1..=16384: most tokens submitted at once
    #[arg(short = 'b', long = "batch-size", default_value_t = 2048,
          value_parser = count(1, limits::MAX_BATCH), help_heading = "Common")]
    pub batch_size: usize,
    /// Physical batch size (-ub), 1..=16384: tokens per forward pass
    #[arg(long = "ubatch-size", default_value_t = 512,
          value_parser = count(1, limits::MAX_BATCH), help_heading = "Common")]
    pub ubatch_size: usize,
    /// Chunks to score, -1..=2147483647 (-1: all). With --range: ranges
    #[arg(long, default_value_t = -1, value_parser = count_or_minus_one(i32::MAX as i64), allow_negative_numbers = true)]
    pub chunks: i64,
    /// Read the text as one sequence (no chunks) and report the perplexity
    /// of every N positions, 1..=16777216
    #[arg(long, value_name = "N", value_parser = count(1, limits::MAX_TOKENS))]
    pub range: Option<usize>,
    /// Table format of --range
    #[arg(short = 'o', long = "output-format", value_enum, default_value_t = TableFormat::Text, requires = "range")]
    pub output: TableFormat,
    /// Draw perplexity against position (--range) into this SVG file
    #[arg(long, value_name = "FILE.svg", requires = "range")]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub devices: DeviceArgs,
    /// Attention over the past; with --range a comma list runs each mode
    /// over the same text (infllm,stream,full)
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "infllm",
        help_heading = "Attention / InfLLM"
    )]
    pub attn: Vec<AttnKind>,
    #[command(flatten)]
    pub settings: AttnSettings,
}

impl PerplexityArgs {
    /// The flags of one run with attention `kind` and context `n_ctx`.
    fn run_args(&self, kind: AttnKind, n_ctx: usize) -> RunArgs {
        RunArgs {
            model: self.model.clone(),
            ctx_size: Some(n_ctx),
            threads: self.threads,
            batch_size: self.batch_size,
            ubatch_size: self.ubatch_size,
            devices: self.devices.clone(),
            attn: AttnArgs {
                attn: kind,
                settings: self.settings.clone(),
            },
        }
    }

    /// `--chunks`: None for all.
    fn max_chunks(&self) -> anyhow::Result<Option<usize>> {
        anyhow::ensure!(self.chunks != 0, "--chunks 0: nothing to score (-1: all chunks)");
        Ok(usize::try_from(self.chunks).ok())
    }
}

pub fn run(a: &PerplexityArgs) -> anyhow::Result<()> {
    let text = read_text(&a.file)?;
    let max_chunks = a.max_chunks()?;
    if let Some(plot) = &a.plot {
        super::plot::check_target(plot)?;
    }
    let mut modes = a.attn.clone();
    modes.dedup();
    match a.range {
        Some(n) => range::run(a, &text, n, &modes, max_chunks),
        None => {
            anyhow::ensure!(
                modes.len() == 1,
                "--attn: several modes need --range (one sequence scored by each)"
            );
            let n_ctx = a.ctx_size.unwrap_or(DEFAULT_CTX);
            anyhow::ensure!(n_ctx > 0, "perplexity needs -c > 0 (tokens per chunk)");
            chunked(&a.run_args(modes[0], n_ctx), &text, n_ctx, max_chunks)
        }
    }
}

/// The file's text, less one trailing newline (as llama.cpp reads `-f`).
fn read_text(path: &Path) -> anyhow::Result<String> {
    let mut text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if text.ends_with('\n') {
        text.pop();
    }
    Ok(text)
}

/// Negative log-likelihoods summed, as llama-perplexity keeps them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Nll {
    sum: f64,
    sum2: f64,
    count: usize,
}

/// -log p(target) under `logits`, as llama-perplexity computes it (a float
/// maximum, a double sum of float exponentials).
pub fn token_nll(logits: &[f32], target: Token) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum_exp: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    -(f64::from(logits[target as usize] - max) - sum_exp.ln())
}

impl Nll {
    /// Scores `target` under one token's `logits`.
    pub fn add(&mut self, logits: &[f32], target: Token) {
        self.push(token_nll(logits, target));
    }

    /// Adds one token's negative log-likelihood.
    pub fn push(&mut self, v: f64) {
        self.sum += v;
        self.sum2 += v * v;
        self.count += 1;
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// exp(mean negative log-likelihood).
    pub fn ppl(&self) -> f64 {
        (self.sum / self.count as f64).exp()
    }

    /// llama-perplexity's uncertainty of the perplexity: the standard error
    /// of the mean log-likelihood, times the perplexity. None when the
    /// variance comes out as not positive (one token, or rounding).
    pub fn error(&self) -> Option<f64> {
        let n = self.count as f64;
        let mean = self.sum / n;
        let var = self.sum2 / n - mean * mean;
        (var > 0.0 && self.count > 1).then(|| (var / (n - 1.0)).sqrt() * self.ppl())
    }
}

/// An engine for `run` over `model`; prints the attention line.
fn engine_for(run: &RunArgs, model: Model) -> anyhow::Result<Engine> {
    let params = run.engine_params(&model.hp)?;
    crate::log_info!("infllm: {}", describe(&params.attn, &model.hp));
    run.engine(model, params)
}

/// The model and the text's tokens as llama-perplexity reads them (BOS
/// added as the model asks, special-token text kept as text); the model
/// line is printed by the caller once the tokens are known to be enough.
fn load_tokens(run: &RunArgs, text: &str) -> anyhow::Result<(Model, LoadReport, Vec<Token>)> {
    let (model, info) = run.load()?;
    let tokens = model.tokenizer.encode(text, true, false);
    Ok((model, info, tokens))
}

/// Evaluates `tokens` from an empty state and scores, by `score(j, row)`,
/// the logits of every position `j >= from`; the positions before `from`
/// are read in whole steps without logits where they can be.
fn score_positions(
    engine: &mut Engine,
    tokens: &[Token],
    from: usize,
    progress: &mut dyn FnMut(usize),
    score: &mut dyn FnMut(usize, &[f32]),
) -> anyhow::Result<()> {
    engine.clear();
    let step = engine.step_tokens();
    let skip = from.min(tokens.len()) / step * step;
    engine.feed(&tokens[..skip], &mut |done, _| progress(done))?;
    let mut at = skip;
    for piece in tokens[skip..].chunks(step) {
        let logits = engine.eval(piece, true, &mut |_, _| {})?;
        let n_vocab = logits.len() / piece.len();
        for (i, row) in logits.chunks_exact(n_vocab).enumerate() {
            if at + i >= from {
                score(at + i, row);
            }
        }
        at += piece.len();
        progress(at);
    }
    Ok(())
}

/// llama-perplexity's default mode: chunks of `n_ctx` tokens, each read
/// from an empty context with BOS first (when the model adds one), the
/// second half of each scored; `[i]ppl,` per chunk on stdout, the final
/// estimate on stderr.
fn chunked(run: &RunArgs, text: &str, n_ctx: usize, max_chunks: Option<usize>) -> anyhow::Result<()> {
    let (model, info, tokens) = load_tokens(run, text)?;
    anyhow::ensure!(
        tokens.len() >= 2 * n_ctx,
        "you need at least {} tokens to evaluate perplexity with a context of {n_ctx}: the text tokenizes to only {} tokens",
        2 * n_ctx,
        tokens.len()
    );
    info.log();
    let bos = model.tokenizer.bos().filter(|_| model.tokenizer.add_bos());
    let mut engine = engine_for(run, model)?;
    let n_chunk = max_chunks.map_or(tokens.len() / n_ctx, |n| n.min(tokens.len() / n_ctx));
    let first = n_ctx / 2;
    crate::log_info!(
        "perplexity: calculating perplexity over {n_chunk} chunks, n_ctx={n_ctx}, batch_size={}",
        run.batch_size.min(n_ctx)
    );
    let mut nll = Nll::default();
    let mut out = std::io::stdout().lock();
    for i in 0..n_chunk {
        let t0 = Instant::now();
        let mut chunk = tokens[i * n_ctx..(i + 1) * n_ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let last = n_ctx - 1;
        score_positions(&mut engine, &chunk, first, &mut |_| {}, &mut |j, row| {
            if j < last {
                nll.add(row, chunk[j + 1]);
            }
        })?;
        if i == 0 {
            eta_line(t0.elapsed().as_secs_f64(), n_chunk);
        }
        write!(out, "[{}]{:.4},", i + 1, nll.ppl())?;
        out.flush()?;
    }
    writeln!(out, "\n")?;
    out.flush()?;
    match nll.error() {
        Some(err) => crate::log_info!("Final estimate: PPL = {:.4} +/- {:.5}", nll.ppl(), err),
        None => crate::log_error!("Unexpected negative standard deviation of log(prob)"),
    }
    Ok(())
}

/// llama-perplexity's time estimate after the first chunk (on stderr).
fn eta_line(secs_per_pass: f64, n_chunk: usize) {
    let mut total = (secs_per_pass * n_chunk as f64) as u64;
    let hours = match total >= 3600 {
        true => {
            let h = format!("{} hours ", total / 3600);
            total %= 3600;
            h
        }
        false => String::new(),
    };
    crate::log_info!(
        "perplexity: {secs_per_pass:.2} seconds per pass - ETA {hours}{:.2} minutes",
        total as f64 / 60.0
    );
}
