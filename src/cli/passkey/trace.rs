//! `infllm passkey --trace-retrieval FILE`: every retrieval of every run as
//! a JSON line (step, layer, the blocks picked, the rank of the block(s)
//! holding the key; each head's scores at the answer's steps), and a line
//! per run on the log saying whether the key's blocks were picked when the
//! answer was written: a miss (not picked) or dilution (picked, yet the
//! answer is wrong).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::Path;

use serde_json::json;

use crate::attention::infllm::{InfllmParams, RetrievalRecord};

/// The trace file and the settings that map tokens to blocks.
pub struct TraceFile {
    out: BufWriter<File>,
    p: InfllmParams,
}

/// What a run's records are read against.
pub struct TracedRun {
    pub index: usize,
    pub prompt_len: usize,
    pub key: u32,
    /// The key line's tokens.
    pub key_tokens: Range<usize>,
    pub passed: bool,
}

impl TracedRun {
    /// The blocks that hold the key line's tokens (two when it straddles a boundary).
    fn key_blocks(&self, p: &InfllmParams) -> Vec<usize> {
        let block = |t: usize| t.checked_sub(p.n_init).map(|t| t / p.block_size);
        match (block(self.key_tokens.start), block(self.key_tokens.end - 1)) {
            (Some(a), Some(b)) => (a..=b).collect(),
            (None, Some(b)) => (0..=b).collect(),
            _ => Vec::new(),
        }
    }
}

impl TraceFile {
    pub fn create(path: &Path, p: InfllmParams) -> anyhow::Result<Self> {
        let file = File::create(path).map_err(|e| {
            anyhow::anyhow!(
                "--trace-retrieval {}: {e}",
                crate::quote::quoted(&path.display().to_string())
            )
        })?;
        Ok(Self {
            out: BufWriter::new(file),
            p,
        })
    }

    /// Writes `run`'s records; returns the run's summary line.
    pub fn write_run(&mut self, run: &TracedRun, records: &[RetrievalRecord]) -> anyhow::Result<String> {
        let key_blocks = run.key_blocks(&self.p);
        // Answer steps: the prompt's last token (a step of its own) and decode.
        // Per answer step, each layer's best rank of a key block (None: not
        // a block yet, the key is in the local window), and whether the
        // layer attended a key block.
        let mut answer_steps: Vec<(usize, Vec<KeySeen>)> = Vec::new();
        for r in records {
            let ranking = RetrievalRecord::ranking(&r.summed());
            let rank = |b: usize| ranking.iter().position(|&x| x == b);
            let ranks: Vec<Option<usize>> = key_blocks.iter().map(|&b| rank(b)).collect();
            let own = ranking[..self.p.topk.min(ranking.len())].iter().map(|&b| b as i32);
            let selected: Vec<i32> = r.voted.clone().unwrap_or_else(|| own.collect());
            let answering = r.n_past + 1 >= run.prompt_len;
            let mut line = json!({
                "run": run.index, "n_past": r.n_past, "n_tokens": r.n_tokens, "layer": r.layer,
                "n_blocks": r.n_blocks, "selected": selected, "voted": r.voted.is_some(),
                "key_blocks": key_blocks, "key_ranks": ranks,
            });
            if answering {
                line["head_scores"] = json!(r.head_scores);
                if answer_steps.last().is_none_or(|s| s.0 != r.n_past) {
                    answer_steps.push((r.n_past, Vec::new()));
                }
                let seen = KeySeen {
                    rank: ranks.iter().flatten().min().copied(),
                    picked: key_blocks.iter().any(|&b| selected.contains(&(b as i32))),
                };
                answer_steps.last_mut().expect("pushed").1.push(seen);
            }
            writeln!(self.out, "{line}")?;
        }
        let head = json!({"run": run.index, "prompt_len": run.prompt_len, "key": run.key,
                          "key_tokens": [run.key_tokens.start, run.key_tokens.end], "passed": run.passed});
        writeln!(self.out, "{head}")?;
        self.out.flush()?;
        Ok(summary(run, &key_blocks, &answer_steps))
    }
}

/// One layer at one answer step: the key's blocks' best rank among the
/// layer's own scores, and whether the layer attended one of them.
struct KeySeen {
    rank: Option<usize>,
    picked: bool,
}

/// "run 2 (FAIL): key in block 57; picked at the answer's steps in
/// 12/30, 30/30, ... layers, its median rank 20, 0, ...".
fn summary(run: &TracedRun, key_blocks: &[usize], steps: &[(usize, Vec<KeySeen>)]) -> String {
    let verdict = if run.passed { "pass" } else { "FAIL" };
    let blocks: Vec<String> = key_blocks.iter().map(usize::to_string).collect();
    let head = format!("run {} ({verdict}): key in block {}", run.index, blocks.join("+"));
    if steps.is_empty() {
        return format!("{head}, no retrieval at the answer's steps (at most --topk blocks: all attended)");
    }
    if steps.iter().all(|s| s.1.iter().all(|l| l.rank.is_none())) {
        return format!("{head}, in the local window at the answer's steps");
    }
    let picked: Vec<String> = steps
        .iter()
        .map(|s| format!("{}/{}", s.1.iter().filter(|l| l.picked).count(), s.1.len()))
        .collect();
    let medians: Vec<String> = steps
        .iter()
        .map(|s| {
            let mut r: Vec<usize> = s.1.iter().filter_map(|l| l.rank).collect();
            r.sort_unstable();
            r.get(r.len() / 2).map_or("-".into(), usize::to_string)
        })
        .collect();
    format!(
        "{head}; picked at the answer's steps in {} layers, its median rank {}",
        picked.join(", "),
        medians.join(", ")
    )
}
