//! Prefill progress on stderr: a bar with tokens/s when stderr is a
//! terminal, plain periodic log lines otherwise (logs, pipes, CI); both
//! are information, so neither shows under -lv 2 or --log-disable.

use std::fmt::Write;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressState, ProgressStyle};

use super::terminal::EchoOff;

/// Prompts shorter than this get no progress report.
const MIN_TOKENS: usize = 2048;
/// Interval between plain lines.
const LINE_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    bar: Option<ProgressBar>,
    /// Typing is not echoed while the bar is shown.
    _echo_off: Option<EchoOff>,
    start: Instant,
    last_line: Instant,
    total: usize,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        let shown = crate::log::enabled(crate::log::Level::Info);
        let bar = (shown && total >= MIN_TOKENS && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total as u64);
            // Rate and ETA from the mean since the start: indicatif's own
            // estimates swing with every step (a first step read as millions/s).
            let rate = |s: &ProgressState| s.pos() as f64 / s.elapsed().as_secs_f64().max(1e-3);
            let style = ProgressStyle::with_template("prefill {bar:40} {pos}/{len} tokens  {rate}  eta {left}")
                .expect("valid template")
                .with_key("rate", move |s: &ProgressState, w: &mut dyn Write| {
                    let _ = write!(w, "{:.1} tokens/s", rate(s));
                })
                .with_key("left", move |s: &ProgressState, w: &mut dyn Write| {
                    let left = s.len().unwrap_or(0).saturating_sub(s.pos()) as f64;
                    let _ = match s.pos() {
                        0 => write!(w, "-"),
                        _ => {
                            let secs = (left / rate(s)).round() as u64;
                            write!(w, "{}:{:02}", secs / 60, secs % 60)
                        }
                    };
                });
            bar.set_style(style);
            bar
        });
        let now = Instant::now();
        Self {
            _echo_off: bar.as_ref().and_then(|_| EchoOff::new()),
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
            crate::log_info!(
                "infllm: prefill {done}/{} tokens ({:.0}%), {:.1} tokens/s",
                self.total,
                100.0 * done as f64 / self.total as f64,
                done as f64 / secs
            );
        }
    }

    /// Takes the bar off the terminal (an interrupted prefill).
    pub fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self._echo_off = None;
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
