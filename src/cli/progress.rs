//! Prefill progress on stderr: a bar with tokens/s when stderr is a
//! terminal, plain periodic lines otherwise (logs, pipes, CI).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Prompts shorter than this get no progress report.
const MIN_TOKENS: usize = 2048;
/// Interval between plain lines.
const LINE_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
    last_line: Instant,
    total: usize,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        let bar = (total >= MIN_TOKENS && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("prefill {bar:40} {pos}/{len} tokens  {per_sec}  eta {eta}")
                    .expect("valid template"),
            );
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            start: now,
            last_line: now,
            total,
        }
    }

    pub fn update(&mut self, done: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position(done as u64);
        } else if self.total >= MIN_TOKENS && done < self.total && self.last_line.elapsed() >= LINE_EVERY {
            self.last_line = Instant::now();
            let secs = self.start.elapsed().as_secs_f64();
            eprintln!(
                "infllm: prefill {done}/{} tokens ({:.0}%), {:.1} tokens/s",
                self.total,
                100.0 * done as f64 / self.total as f64,
                done as f64 / secs
            );
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
