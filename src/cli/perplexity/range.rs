//! `--range N`: the whole text read as one sequence by each attention mode,
//! the perplexity of every N positions in a table (text, csv, json) and,
//! with `--plot`, against position in an SVG picture. Shows whether memory
//! attention keeps its quality past the model's training context.

use std::io::Write;
use std::time::Instant;

use serde_json::{json, Value};

use super::{engine_for, load_tokens, score_positions, token_nll, Nll, PerplexityArgs, TableFormat};
use crate::cli::attn::AttnKind;
use crate::cli::plot::{self, Chart, Series};
use crate::cli::progress::Progress;
use crate::model::Model;
use crate::tokenizer::Token;

/// One mode's scores: per range, and over the whole text.
struct ModeScores {
    kind: AttnKind,
    ranges: Vec<Nll>,
    total: Nll,
}

pub fn run(
    a: &PerplexityArgs,
    text: &str,
    n: usize,
    modes: &[AttnKind],
    max_ranges: Option<usize>,
) -> anyhow::Result<()> {
    let (model, info, mut tokens) = load_tokens(&a.run_args(modes[0], 0), text)?;
    if let Some(c) = a.ctx_size.filter(|&c| c > 0) {
        tokens.truncate(c);
    }
    if let Some(r) = max_ranges {
        tokens.truncate(r.saturating_mul(n));
    }
    anyhow::ensure!(
        tokens.len() >= 2,
        "the text is too short: {} token(s), perplexity needs at least 2",
        tokens.len()
    );
    info.log();
    crate::log_info!(
        "perplexity: {} tokens read as one sequence, perplexity per {n} positions",
        tokens.len()
    );
    let n_ctx_train = model.hp.n_ctx_train;
    let mut model = Some(model);
    let mut scores = Vec::with_capacity(modes.len());
    for &kind in modes {
        let run = a.run_args(kind, tokens.len());
        let m = match model.take() {
            Some(m) => m,
            None => run.load()?.0,
        };
        scores.push(score_mode(&run, m, kind, &tokens, n)?);
    }
    print_table(a.output, n, tokens.len(), &scores)?;
    if let Some(path) = &a.plot {
        let title = format!("Perplexity per {n} tokens");
        let marker = format!("trained context ({n_ctx_train})");
        let chart = Chart {
            title: &title,
            x_label: "position (tokens)",
            y_label: "perplexity",
            // Only where the text goes past it.
            marker: (n_ctx_train < tokens.len()).then_some((n_ctx_train as f64, marker.as_str())),
        };
        plot::write_svg(path, &chart, &series(n, tokens.len(), &scores))?;
        crate::log_info!("perplexity: plot written to {}", path.display());
    }
    Ok(())
}

/// Reads `tokens` with attention `kind`, scoring each position (but the
/// first) into the range of N it falls in.
fn score_mode(
    run: &crate::cli::RunArgs,
    model: Model,
    kind: AttnKind,
    tokens: &[Token],
    n: usize,
) -> anyhow::Result<ModeScores> {
    let mut engine = engine_for(run, model)?;
    let mut s = ModeScores {
        kind,
        ranges: vec![Nll::default(); tokens.len().div_ceil(n)],
        total: Nll::default(),
    };
    let t0 = Instant::now();
    let mut progress = Progress::new(tokens.len());
    score_positions(
        &mut engine,
        tokens,
        0,
        &mut |done| progress.update(done),
        &mut |j, row| {
            if let Some(&target) = tokens.get(j + 1) {
                let v = token_nll(row, target);
                s.ranges[(j + 1) / n].push(v);
                s.total.push(v);
            }
        },
    )?;
    progress.finish();
    let secs = t0.elapsed().as_secs_f64();
    crate::log_info!(
        "perplexity: {}: PPL = {:.4} +/- {} over {} tokens, {:.1} s ({:.1} tokens/s)",
        name(kind),
        s.total.ppl(),
        s.total.error().map_or("n/a".into(), |e| format!("{e:.5}")),
        s.total.count(),
        secs,
        tokens.len() as f64 / secs.max(1e-9)
    );
    Ok(s)
}

fn name(kind: AttnKind) -> &'static str {
    match kind {
        AttnKind::Infllm => "infllm",
        AttnKind::Stream => "stream",
        AttnKind::Full => "full",
    }
}

/// Positions `[start, end)` of range `r`.
fn bounds(r: usize, n: usize, len: usize) -> (usize, usize) {
    (r * n, ((r + 1) * n).min(len))
}

/// The table on stdout: one row per range, a perplexity and its error per mode.
fn print_table(format: TableFormat, n: usize, len: usize, scores: &[ModeScores]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let n_ranges = scores[0].ranges.len();
    match format {
        TableFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&table_json(n, len, scores))?)?,
        TableFormat::Csv => {
            let cols: Vec<String> = scores.iter().map(|s| format!("{0},{0}_err", name(s.kind))).collect();
            writeln!(out, "start,end,tokens,{}", cols.join(","))?;
            for r in 0..n_ranges {
                let (start, end) = bounds(r, n, len);
                let cells: Vec<String> = scores
                    .iter()
                    .map(|s| {
                        let nll = &s.ranges[r];
                        let err = nll.error().map_or(String::new(), |e| format!("{e:.5}"));
                        format!("{:.4},{err}", nll.ppl())
                    })
                    .collect();
                writeln!(out, "{start},{end},{},{}", scores[0].ranges[r].count(), cells.join(","))?;
            }
        }
        TableFormat::Text => {
            let heads: String = scores.iter().map(|s| format!("{:>22}", name(s.kind))).collect();
            writeln!(out, "{:>9} {:>9} {:>7}{heads}", "start", "end", "tokens")?;
            for r in 0..n_ranges {
                let (start, end) = bounds(r, n, len);
                let cells: String = scores.iter().map(|s| text_cell(&s.ranges[r])).collect();
                writeln!(out, "{start:>9} {end:>9} {:>7}{cells}", scores[0].ranges[r].count())?;
            }
        }
    }
    Ok(())
}

fn text_cell(nll: &Nll) -> String {
    let err = nll.error().map_or("-".into(), |e| format!("{e:.4}"));
    format!("{:>22}", format!("{:.4} +/- {err}", nll.ppl()))
}

fn table_json(n: usize, len: usize, scores: &[ModeScores]) -> Value {
    let per_mode = |f: &dyn Fn(&ModeScores) -> Value| -> Value {
        scores.iter().map(|s| (name(s.kind).to_string(), f(s))).collect()
    };
    let ranges: Vec<Value> = (0..scores[0].ranges.len())
        .map(|r| {
            let (start, end) = bounds(r, n, len);
            json!({
                "start": start,
                "end": end,
                "tokens": scores[0].ranges[r].count(),
                "ppl": per_mode(&|s| json!(s.ranges[r].ppl())),
                "err": per_mode(&|s| json!(s.ranges[r].error())),
            })
        })
        .collect();
    json!({
        "range": n,
        "tokens": len,
        "modes": scores.iter().map(|s| name(s.kind)).collect::<Vec<_>>(),
        "ranges": ranges,
        "total": {
            "tokens": scores[0].total.count(),
            "ppl": per_mode(&|s| json!(s.total.ppl())),
            "err": per_mode(&|s| json!(s.total.error())),
        },
    })
}

/// One line per mode: each range's perplexity at its middle position.
fn series(n: usize, len: usize, scores: &[ModeScores]) -> Vec<Series> {
    scores
        .iter()
        .map(|s| Series {
            name: name(s.kind).to_string(),
            points: (0..s.ranges.len())
                .filter(|&r| s.ranges[r].count() > 0)
                .map(|r| {
                    let (start, end) = bounds(r, n, len);
                    ((start + end) as f64 / 2.0, s.ranges[r].ppl())
                })
                .collect(),
        })
        .collect()
}
