//! SIGINT, SIGTERM and SIGHUP, once work has started.
//!
//! The first Ctrl-C interrupts what runs (a prefill between steps, an answer
//! between tokens). A second one before that is taken, SIGTERM or SIGHUP
//! asks to quit with 128 + the signal number, as a shell reports a process
//! the signal ended. When nothing would be lost the process exits at once;
//! while a conversation's memory is not saved yet (`set_unsaved`), the main
//! thread stops at its next check, saves (a save under way is finished),
//! then exits with that code.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::SeqCst};
use std::sync::{Mutex, Once};

use anyhow::Context as _;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Exit code asked for by a signal (0: none).
static QUIT: AtomicI32 = AtomicI32::new(0);
static UNSAVED: AtomicBool = AtomicBool::new(false);
static EXITING: AtomicBool = AtomicBool::new(false);

type Hook = Box<dyn Fn() + Send>;
/// Wakes the main thread when it waits for input (the REPL).
static ON_QUIT: Mutex<Option<Hook>> = Mutex::new(None);
/// Runs before exiting (the REPL gives the terminal its settings back).
static AT_EXIT: Mutex<Option<Hook>> = Mutex::new(None);

/// The work was stopped by a signal: the process exits with `code` after a
/// line (main.rs), not with an error.
#[derive(Debug, thiserror::Error)]
#[error("stopped by {}", signal_name(*.code))]
pub struct Stopped {
    pub code: i32,
}

impl Stopped {
    /// Stopped by the signal asked to quit with, else by the Ctrl-C taken.
    pub fn now() -> Self {
        Self {
            code: quit_code().unwrap_or(128 + SIGINT),
        }
    }
}

fn signal_name(code: i32) -> &'static str {
    match code - 128 {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Handles SIGXFSZ, so that a write past the file size limit (`ulimit -f`)
/// fails with EFBIG, an error the caller reports, instead of the signal
/// ending the process without a word.
pub fn catch_file_size_limit() -> anyhow::Result<()> {
    let seen = std::sync::Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGXFSZ, seen)
        .map(drop)
        .context("cannot handle SIGXFSZ")
}

/// Starts handling the signals (once per process).
pub fn install() -> anyhow::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = Signals::new([SIGINT, SIGTERM, SIGHUP])
            .and_then(|mut signals| {
                std::thread::Builder::new()
                    .name("signals".into())
                    .spawn(move || signals.forever().for_each(on_signal))
                    .map(drop)
            })
            .context("cannot install the signal handlers");
    });
    result
}

fn on_signal(signal: i32) {
    if signal == SIGINT && !INTERRUPTED.swap(true, SeqCst) {
        return;
    }
    INTERRUPTED.store(true, SeqCst);
    let _ = QUIT.compare_exchange(0, 128 + signal, SeqCst, SeqCst);
    let code = QUIT.load(SeqCst);
    if !UNSAVED.load(SeqCst) {
        eprintln!("\ninfllm: {}", Stopped { code });
        exit(code);
    }
    if let Some(wake) = ON_QUIT.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        wake();
    }
}

/// Whether the work under way should stop: Ctrl-C, or a request to quit.
pub fn interrupted() -> bool {
    INTERRUPTED.load(SeqCst)
}

/// Takes a Ctrl-C: the next work runs until the next one.
pub fn clear_interrupt() {
    if QUIT.load(SeqCst) == 0 {
        INTERRUPTED.store(false, SeqCst);
    }
}

/// The exit code a signal asked to quit with, if one did.
pub fn quit_code() -> Option<i32> {
    Some(QUIT.load(SeqCst)).filter(|&c| c != 0)
}

/// Whether exiting now would lose memory that is to be saved: while it
/// would, a signal leaves the exit to the main thread.
pub fn set_unsaved(unsaved: bool) {
    UNSAVED.store(unsaved, SeqCst);
}

/// `wake` runs when a signal asks to quit while memory is unsaved.
pub fn on_quit(wake: Option<Hook>) {
    *ON_QUIT.lock().unwrap_or_else(|e| e.into_inner()) = wake;
}

/// `hook` runs before the process exits through `exit`.
pub fn at_exit(hook: Option<Hook>) {
    *AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()) = hook;
}

/// Exits with `code`, once: a second caller (the main thread and the
/// signal thread at the same time) waits for the first to end the process.
pub fn exit(code: i32) -> ! {
    if EXITING.swap(true, SeqCst) {
        loop {
            std::thread::park();
        }
    }
    if let Some(hook) = AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()).take() {
        hook();
    }
    std::process::exit(code)
}
