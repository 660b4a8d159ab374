//! The terminal's settings: the REPL puts them back after rustyline's raw
//! mode, a prefill's progress bar turns echo off while it is drawn, and
//! whatever ends the process (a signal's exit) puts back the settings
//! found first.

use std::io::IsTerminal;
use std::sync::Mutex;

use nix::sys::termios::{self, LocalFlags, SetArg, Termios};

use super::signals;

/// The settings before infllm first changed them.
static FIRST: Mutex<Option<Termios>> = Mutex::new(None);

fn set(t: &Termios) {
    let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, t);
}

/// Keeps `t` as the settings to put back at exit, unless some are kept.
fn keep_for_exit(t: &Termios) {
    let mut first = FIRST.lock().unwrap_or_else(|e| e.into_inner());
    if first.is_none() {
        *first = Some(t.clone());
        signals::at_exit(Some(Box::new(|| {
            if let Some(t) = FIRST.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                set(t);
            }
        })));
    }
}

/// Settings saved to be put back (after the REPL's raw mode).
pub struct Saved(Option<Termios>);

impl Saved {
    pub fn now() -> Self {
        let saved = termios::tcgetattr(std::io::stdin()).ok();
        saved.iter().for_each(keep_for_exit);
        Self(saved)
    }

    pub fn restore(&self) {
        self.0.iter().for_each(set);
    }
}

/// While it lives, what is typed is not echoed (it would push a progress
/// bar onto a second line, which is then drawn twice); the typed text
/// waits for the next prompt.
pub struct EchoOff(Termios);

impl EchoOff {
    /// None when stdin is not a terminal.
    pub fn new() -> Option<Self> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = termios::tcgetattr(&stdin).ok()?;
        keep_for_exit(&saved);
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &quiet).ok()?;
        Some(Self(saved))
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        set(&self.0);
    }
}
