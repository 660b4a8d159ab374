//! Log lines, as llama.cpp's `common/log` writes them: each line has a
//! verbosity level and goes to stderr (and to `--log-file`) when its level
//! is at most the threshold (`-lv N`, default 3; `-v`: every line);
//! `--log-disable` writes none. Not log lines: the generated text
//! (stdout), the line a failed run ends with (`failure`), the REPL's own
//! prompts.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// A line's verbosity level (llama.cpp's `LOG_LEVEL_*`; 0 is the output
/// itself, which infllm writes to stdout, not to the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    /// Detail: ggml's and llama.cpp's own lines.
    Trace = 4,
    Debug = 5,
}

/// The threshold without `-lv` or `-v`: information and above.
pub const DEFAULT_VERBOSITY: u32 = Level::Info as u32;

/// How the log is written.
pub struct Settings {
    /// Lines of a level up to this are written (`u32::MAX`: all).
    pub verbosity: u32,
    /// No line at all.
    pub disabled: bool,
    /// Where the lines go besides stderr.
    pub file: Option<File>,
    pub style: Style,
}

/// What a line looks like on stderr.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    /// Colours (with the prefix only, as llama.cpp).
    pub colors: bool,
    /// The level's letter first (`I`, `W`, `E`, `D`).
    pub prefix: bool,
    /// The time since the start before the letter, as
    /// `minutes.seconds.milliseconds.microseconds`.
    pub timestamps: bool,
}

// Read on every line (ggml's threads too), without taking the lock.
static VERBOSITY: AtomicU32 = AtomicU32::new(DEFAULT_VERBOSITY);
static DISABLED: AtomicBool = AtomicBool::new(false);
static WRITER: Mutex<Writer> = Mutex::new(Writer {
    file: None,
    style: Style {
        colors: false,
        prefix: false,
        timestamps: false,
    },
    start: None,
});

/// Sets how lines are written from now on.
pub fn configure(s: Settings) {
    VERBOSITY.store(s.verbosity, Relaxed);
    DISABLED.store(s.disabled, Relaxed);
    *writer() = Writer {
        file: s.file,
        style: s.style,
        start: Some(Instant::now()),
    };
}

/// Whether a line of `level` would be written.
pub fn enabled(level: Level) -> bool {
    !DISABLED.load(Relaxed) && level as u32 <= VERBOSITY.load(Relaxed)
}

/// Writes one line of `level` (the macros `log_info!` and the like call
/// this; `args` is only formatted when the line is written).
pub fn line(level: Level, args: fmt::Arguments) {
    if enabled(level) {
        writer().write(Some(level), &format!("{args}\n"));
    }
}

/// Text from ggml or llama.cpp, which brings its own newlines: `level`
/// None continues the previous text. It is detail whatever its level
/// (infllm says in its own line what failed), so written from `Trace` on.
pub fn library_text(level: Option<Level>, text: &str) {
    if enabled(level.map_or(Level::Trace, |l| l.max(Level::Trace))) {
        writer().write(level, text);
    }
}

/// The line a failed run ends with: on stderr whatever the settings (a
/// script must learn why it failed), and in the log file with the rest.
pub fn failure(line: &str) {
    let mut w = writer();
    eprintln!("{line}");
    if enabled(Level::Error) {
        w.write_file(Some(Level::Error), &format!("{line}\n"));
    }
}

fn writer() -> std::sync::MutexGuard<'static, Writer> {
    WRITER.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Writer {
    file: Option<File>,
    style: Style,
    start: Option<Instant>,
}

impl Level {
    /// The letter of `--log-prefix` (trace lines are information there).
    fn letter(self) -> char {
        match self {
            Level::Error => 'E',
            Level::Warn => 'W',
            Level::Info | Level::Trace => 'I',
            Level::Debug => 'D',
        }
    }
}

const RESET: &str = "\x1b[0m";

impl Writer {
    /// `text` on stderr and in the file; a write that fails is dropped (a
    /// closed stderr must not stop the work).
    fn write(&mut self, level: Option<Level>, text: &str) {
        let _ = std::io::stderr().write_all(self.render(level, text, self.style.colors).as_bytes());
        self.write_file(level, text);
    }

    fn write_file(&mut self, level: Option<Level>, text: &str) {
        let line = self.render(level, text, false);
        if let Some(f) = &mut self.file {
            let _ = f.write_all(line.as_bytes());
        }
    }

    /// `text` with the prefix asked for; colours, as llama.cpp's, only
    /// with the prefix: the letter for information, the whole line for
    /// the other levels.
    fn render(&self, level: Option<Level>, text: &str, colors: bool) -> String {
        let Some(level) = level.filter(|_| self.style.prefix) else {
            return text.to_string();
        };
        let paint = |c: &'static str| if colors { c } else { "" };
        let time = self
            .timestamp()
            .map_or_else(String::new, |t| format!("{}{t}{} ", paint("\x1b[34m"), paint(RESET)));
        let letter = level.letter();
        let body = text.trim_end_matches('\n');
        let newlines = &text[body.len()..];
        match level {
            Level::Info | Level::Trace => format!("{time}{}{letter} {}{text}", paint("\x1b[32m"), paint(RESET)),
            Level::Warn => format!("{time}{}{letter} {body}{}{newlines}", paint("\x1b[35m"), paint(RESET)),
            Level::Error => format!("{time}{}{letter} {body}{}{newlines}", paint("\x1b[31m"), paint(RESET)),
            Level::Debug => format!("{time}{}{letter} {body}{}{newlines}", paint("\x1b[33m"), paint(RESET)),
        }
    }

    /// `M.SS.mmm.uuu` since `configure`, when asked for.
    fn timestamp(&self) -> Option<String> {
        let us = self.start.filter(|_| self.style.timestamps)?.elapsed().as_micros();
        Some(format!(
            "{}.{:02}.{:03}.{:03}",
            us / 60_000_000,
            us / 1_000_000 % 60,
            us / 1000 % 1000,
            us % 1000
        ))
    }
}

/// An error line (level 1) for the log.
#[macro_export]
macro_rules! log_error {
    ($($t:tt)*) => { $crate::log::line($crate::log::Level::Error, format_args!($($t)*)) };
}

/// A warning (level 2).
#[macro_export]
macro_rules! log_warn {
    ($($t:tt)*) => { $crate::log::line($crate::log::Level::Warn, format_args!($($t)*)) };
}

/// An information line (level 3, shown by default).
#[macro_export]
macro_rules! log_info {
    ($($t:tt)*) => { $crate::log::line($crate::log::Level::Info, format_args!($($t)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(style: Style) -> Writer {
        Writer {
            file: None,
            style,
            start: None,
        }
    }

    #[test]
    fn lines_are_written_as_llama_cpp_writes_them() {
        let plain = writer(Style::default());
        assert_eq!(plain.render(Some(Level::Warn), "w\n", true), "w\n");
        let prefixed = Style {
            prefix: true,
            ..Style::default()
        };
        let w = writer(prefixed);
        assert_eq!(w.render(Some(Level::Trace), "t\n", false), "I t\n");
        assert_eq!(w.render(Some(Level::Error), "e\n\n", false), "E e\n\n");
        // Continued text gets no prefix.
        assert_eq!(w.render(None, "...", false), "...");
        // Colours: the letter for information; the whole line, reset before
        // the newline, otherwise.
        assert_eq!(w.render(Some(Level::Info), "i\n", true), "\x1b[32mI \x1b[0mi\n");
        assert_eq!(w.render(Some(Level::Warn), "w\n", true), "\x1b[35mW w\x1b[0m\n");
        let timed = Writer {
            start: Some(Instant::now() - std::time::Duration::from_micros(61_002_003)),
            ..writer(Style {
                timestamps: true,
                ..prefixed
            })
        };
        let line = timed.render(Some(Level::Debug), "d\n", false);
        assert!(line.starts_with("1.01.002.") && line.ends_with(" D d\n"), "{line:?}");
    }
}
