//! What the fuzz targets share: the property every error must have, tiny
//! model files, and the seed files each target writes when it starts.

pub mod seeds;
pub mod session;
pub mod tiny;

use std::path::PathBuf;

/// Longest error line accepted: enough for a message naming a file, a key
/// and a value, far below what an unescaped dump of file bytes gives.
const MAX_ERROR_LEN: usize = 600;

/// An error as the command line prints it (`cli::error_line`) is one short
/// line: text from a hostile file must not break it or flood the terminal.
pub fn assert_one_line(e: &anyhow::Error) {
    let line = infllm::cli::error_line(e);
    assert!(
        !line.contains(['\n', '\r']) && line.len() <= MAX_ERROR_LEN,
        "error is not one short line ({} bytes): {line:?}",
        line.len()
    );
}

/// A file of the repository (the models fetched by `models/fetch`).
pub fn repo_file(rel: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    assert!(path.is_file(), "{} is missing: run `models/fetch`", path.display());
    path
}

/// Writes `make()`'s seeds into `fuzz/corpus/TARGET` unless it already holds
/// files (called from the targets' `init`, before libFuzzer reads it).
pub fn seed_corpus(target: &str, make: impl FnOnce() -> Vec<(String, Vec<u8>)>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("create the corpus folder");
    if std::fs::read_dir(&dir)
        .expect("read the corpus folder")
        .next()
        .is_some()
    {
        return;
    }
    for (name, bytes) in make() {
        std::fs::write(dir.join(name), bytes).expect("write a seed");
    }
}
