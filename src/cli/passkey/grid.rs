//! The passkey grid: one cell per (length, depth) with its trials and
//! answers, as a table on stdout (`-o csv|json`) and as a picture
//! (`--plot`), like the familiar needle-in-a-haystack charts.

use std::io::Write;
use std::path::Path;

use serde_json::json;

use crate::cli::perplexity::TableFormat;
use crate::cli::plot::{self, Grid, GridCell};

/// The runs of one prompt length and key depth.
pub struct Cell {
    /// Prompt length: the `--tokens` asked, or (`--junk`) a prompt's tokens.
    pub length: usize,
    /// Where the key is, as a fraction of the filler text.
    pub depth: f64,
    /// Which `--pos` the cell's key position came from (its grid row).
    pub row: usize,
    pub passed: usize,
    /// The generated text of each trial, in trial order.
    pub answers: Vec<String>,
}

impl Cell {
    fn trials(&self) -> usize {
        self.answers.len()
    }

    /// The depth rounded for tables (a filler index gives a long fraction).
    fn depth_shown(&self) -> f64 {
        (self.depth * 1e4).round() / 1e4
    }
}

/// The grid as a table on stdout: nothing for text (the runs' lines are
/// the output), a row per cell for csv and json.
pub fn print_table(format: TableFormat, cells: &[Cell]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        TableFormat::Text => {}
        TableFormat::Csv => {
            writeln!(out, "length,depth,trials,passed,answer")?;
            for c in cells {
                let answer = c.answers.join(" | ").replace('"', "\"\"");
                let (length, depth, trials, passed) = (c.length, c.depth_shown(), c.trials(), c.passed);
                writeln!(out, "{length},{depth},{trials},{passed},\"{answer}\"")?;
            }
        }
        TableFormat::Json => {
            let rows: Vec<_> = cells
                .iter()
                .map(|c| {
                    json!({"length": c.length, "depth": c.depth_shown(), "trials": c.trials(),
                           "passed": c.passed, "answers": c.answers})
                })
                .collect();
            let runs: usize = cells.iter().map(Cell::trials).sum();
            let passed: usize = cells.iter().map(|c| c.passed).sum();
            let table = json!({"runs": runs, "passed": passed, "cells": rows});
            writeln!(out, "{}", serde_json::to_string_pretty(&table)?)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Draws the grid into `path`: lengths left to right, depths top to bottom
/// (both ascending), a dashed line where lengths pass `n_ctx_train`.
pub fn write_plot(path: &Path, cells: &[Cell], n_ctx_train: usize) -> anyhow::Result<()> {
    let mut lengths: Vec<usize> = cells.iter().map(|c| c.length).collect();
    lengths.sort_unstable();
    lengths.dedup();
    // Rows by the depths of the first length (a filler index's depth
    // differs a little from one length to the next).
    let mut rows: Vec<&Cell> = cells.iter().filter(|c| c.length == cells[0].length).collect();
    rows.sort_by(|x, y| x.depth.total_cmp(&y.depth));
    let row_of = |c: &Cell| rows.iter().position(|r| r.row == c.row).unwrap_or(0);
    let first_past = lengths.iter().position(|&l| l > n_ctx_train);
    let divider = first_past.filter(|&i| i > 0);
    let runs: usize = cells.iter().map(Cell::trials).sum();
    let passed: usize = cells.iter().map(|c| c.passed).sum();
    let trained = match divider {
        Some(_) => format!("trained on {n_ctx_train} tokens: dashed line"),
        None => format!("trained on {n_ctx_train} tokens"),
    };
    let title = format!("Passkey: {passed}/{runs} found (model {trained})");
    let grid = Grid {
        title: &title,
        x_label: "prompt length (tokens)",
        y_label: "key depth (share of the text)",
        columns: lengths.iter().map(usize::to_string).collect(),
        rows: rows.iter().map(|c| percent(c.depth)).collect(),
        cells: cells
            .iter()
            .map(|c| GridCell {
                col: lengths.binary_search(&c.length).unwrap_or(0),
                row: row_of(c),
                passed: c.passed,
                trials: c.trials(),
            })
            .collect(),
        divider,
    };
    plot::write_grid_svg(path, &grid)
}

/// `0.1` as "10%", `0.125` as "12.5%".
fn percent(depth: f64) -> String {
    let p = (depth * 1000.0).round() / 10.0;
    match p.fract() == 0.0 {
        true => format!("{p:.0}%"),
        false => format!("{p:.1}%"),
    }
}
