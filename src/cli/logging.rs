//! llama.cpp's logging flags (`-v`, `-lv`, `--log-*`), for every command:
//! they set up `crate::log` before any work starts.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::args::switch_value;
use super::attn::Switch;
use crate::log::{Settings, Style, DEFAULT_VERBOSITY};

#[derive(Args, Debug, Clone, Default)]
pub struct LogArgs {
    /// Log every line: debug lines, and ggml's and llama.cpp's own (-lv
    /// infinity)
    #[arg(
        short = 'v',
        long = "verbose",
        alias = "log-verbose",
        overrides_with = "verbosity",
        global = true,
        help_heading = "Common"
    )]
    pub verbose: bool,
    /// Log lines up to this level (-lv), 0..=2147483647: 0 none (the generated
    /// text only), 1 errors, 2 warnings, 3 information [default], 4 trace
    /// (ggml's and llama.cpp's lines), 5 debug
    #[arg(long = "verbosity", alias = "log-verbosity", value_name = "N", overrides_with = "verbose",
          value_parser = clap::value_parser!(i64).range(0..=i32::MAX as i64), global = true, help_heading = "Common")]
    pub verbosity: Option<i64>,
    /// No log lines at all; the generated text, and the error line of a
    /// run that fails, still print
    #[arg(long = "log-disable", global = true, help_heading = "Common")]
    pub log_disable: bool,
    /// Also write the log lines to FNAME (created, or emptied first)
    #[arg(long = "log-file", value_name = "FNAME", global = true, help_heading = "Common")]
    pub log_file: Option<PathBuf>,
    /// Colours in the log (with --log-prefix): on, off or auto (when
    /// stderr is a terminal) [default: auto]
    #[arg(long = "log-colors", value_name = "WHEN", value_parser = when, global = true, help_heading = "Common")]
    pub log_colors: Option<Switch>,
    /// Start each log line with its level: I, W, E or D
    #[arg(
        long = "log-prefix",
        overrides_with = "no_log_prefix",
        global = true,
        help_heading = "Common"
    )]
    pub log_prefix: bool,
    /// Log lines without the level [default]
    #[arg(
        long = "no-log-prefix",
        overrides_with = "log_prefix",
        global = true,
        help_heading = "Common"
    )]
    pub no_log_prefix: bool,
    /// Put the time since the start (minutes.seconds.ms.us) in the prefix
    #[arg(
        long = "log-timestamps",
        overrides_with = "no_log_timestamps",
        global = true,
        help_heading = "Common"
    )]
    pub log_timestamps: bool,
    /// No time in the prefix [default]
    #[arg(
        long = "no-log-timestamps",
        overrides_with = "log_timestamps",
        global = true,
        help_heading = "Common"
    )]
    pub no_log_timestamps: bool,
}

/// llama.cpp's spellings of on, off and auto.
fn when(s: &str) -> Result<Switch, String> {
    match (s, switch_value(s)) {
        (_, Some(true)) => Ok(Switch::On),
        (_, Some(false)) => Ok(Switch::Off),
        ("auto" | "-1", None) => Ok(Switch::Auto),
        _ => Err("not one of on, off, auto".into()),
    }
}

impl LogArgs {
    /// The log settings these flags ask for; the log file is created here.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let verbosity = match (self.verbose, self.verbosity) {
            (true, _) => u32::MAX,
            (false, Some(n)) => n as u32,
            (false, None) => DEFAULT_VERBOSITY,
        };
        let file = match (&self.log_file, self.log_disable) {
            (Some(path), false) => Some(
                std::fs::File::create(path).with_context(|| format!("--log-file {}: cannot write", path.display()))?,
            ),
            _ => None,
        };
        let colors = match self.log_colors.unwrap_or(Switch::Auto) {
            Switch::On => true,
            Switch::Off => false,
            Switch::Auto => std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb"),
        };
        Ok(Settings {
            verbosity,
            disabled: self.log_disable,
            file,
            style: Style {
                colors,
                prefix: self.log_prefix,
                timestamps: self.log_timestamps,
            },
        })
    }
}
