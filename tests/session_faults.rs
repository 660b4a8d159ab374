//! Session files under fire: crafted records, a file truncated under a
//! running chat, killed saves' leftovers, two processes on one session,
//! FIFOs and symbolic links as session paths, a full disk under the
//! memory blocks. Each ends in one line of error and exit 1, or in a
//! conversation that goes on and saves.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Small buffers (fast to set up); ~180 tokens make memory blocks.
const SMALL: [&str; 10] = [
    "--n-local",
    "64",
    "--block-size",
    "32",
    "--n-init",
    "8",
    "--topk",
    "2",
    "--chunk",
    "32",
];

/// A fresh directory for one test.
fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("infllm-session-faults-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The binary in conversation mode, greedy, two tokens per answer, with
/// the `SMALL` settings.
fn command(session: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infllm"));
    cmd.args(["-m", common::smollm2().to_str().unwrap()])
        .args(["-cnv", "--temp", "0", "-n", "2", "--color", "off"])
        .args(["-t", &common::THREADS.to_string()])
        .args(SMALL)
        .arg("--session")
        .arg(session)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// One turn piped through a chat on `session`.
fn chat(session: &Path, turn: &str) -> Output {
    chat_with(session, &[], turn)
}

/// `chat` with more flags.
fn chat_with(session: &Path, flags: &[&str], turn: &str) -> Output {
    let mut child = command(session).args(flags).spawn().unwrap();
    // A refused run may be gone before it reads its turn.
    let _ = child.stdin.take().unwrap().write_all(turn.as_bytes());
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A run that succeeded.
fn assert_ok(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
}

/// A run refused with one line of error naming `needle`, before any answer.
fn assert_refused(out: &Output, needle: &str, case: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{case}: {err}");
    assert!(out.stdout.is_empty(), "{case}: an answer: {:?}", out.stdout);
    assert_eq!(err.trim_end().lines().count(), 1, "{case}: not one line: {err}");
    assert!(err.starts_with("error: "), "{case}: {err}");
    assert!(err.contains(needle), "{case}: {err:?} lacks {needle:?}");
}

/// A session of a two-token answer to `prompt`.
fn make_session(path: &Path, prompt: &str) {
    let _ = std::fs::remove_file(path);
    assert_ok(&chat(path, prompt));
}

/// A session of a two-token answer to "Hi" at `path` (made once per run).
fn hi_session(path: &Path) {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let bytes = BYTES.get_or_init(|| {
        let d = dir("hi");
        make_session(&d.join("hi.session"), "Hi");
        let bytes = std::fs::read(d.join("hi.session")).unwrap();
        let _ = std::fs::remove_dir_all(&d);
        bytes
    });
    std::fs::write(path, bytes).unwrap();
}

/// The messages a run says it restored (from its stderr).
fn restored_messages(err: &str) -> usize {
    let line = err
        .lines()
        .find(|l| l.contains(" restored: "))
        .unwrap_or_else(|| panic!("no restore in {err}"));
    line.split(", ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The messages a session file holds.
fn saved_messages(session: &Path) -> usize {
    let index = split_session(&std::fs::read(session).unwrap()).1;
    index["record"]["messages"].as_array().unwrap().len()
}

/// A session file's index (JSON) and the bytes before it.
fn split_session(bytes: &[u8]) -> (Vec<u8>, Value) {
    let n = bytes.len();
    let index_len = u64::from_le_bytes(bytes[n - 24..n - 16].try_into().unwrap()) as usize;
    let start = n - 24 - index_len;
    (
        bytes[..start].to_vec(),
        serde_json::from_slice(&bytes[start..n - 24]).unwrap(),
    )
}

/// The session file with `index`: layout and checksum as src/session.rs
/// writes them (so only the edited values can be refused).
fn join_session(data: &[u8], index: &Value) -> Vec<u8> {
    let mut out = data.to_vec();
    let index = serde_json::to_vec(index).unwrap();
    out.extend_from_slice(&index);
    out.extend_from_slice(&(index.len() as u64).to_le_bytes());
    let checksum = xxhash_rust::xxh3::xxh3_64(&out);
    out.extend_from_slice(&checksum.to_le_bytes());
    out.extend_from_slice(b"INFLLMSE");
    out
}

/// `bytes` (a session file) with `edit` applied to its index.
fn crafted(bytes: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let (data, mut index) = split_session(bytes);
    edit(&mut index);
    join_session(&data, &index)
}

/// The value at a `/`-separated JSON pointer, to set.
fn at<'v>(index: &'v mut Value, pointer: &str) -> &'v mut Value {
    index
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in the index"))
}

#[test]
fn crafted_records_are_refused_in_one_line_and_left_alone() {
    let _cpu = common::exclusive();
    let d = dir("crafted");
    let good = d.join("good.session");
    hi_session(&good);
    let bytes = std::fs::read(&good).unwrap();
    let n_past = split_session(&bytes).1["n_past"].as_u64().unwrap();
    assert!(n_past > 2, "{n_past} tokens");

    // The helper re-encodes a file that loads.
    let same = d.join("same.session");
    std::fs::write(&same, crafted(&bytes, |_| {})).unwrap();
    assert_ok(&chat(&same, "Hi"));

    type Edit = Box<dyn Fn(&mut Value)>;
    let set = |pointer: &'static str, v: Value| -> Edit { Box::new(move |i| *at(i, pointer) = v.clone()) };
    let cases: Vec<(&str, Edit, String)> = vec![
        (
            "repeat_last_n",
            set("/record/sampler/params/repeat_last_n", json!(1u64 << 62)),
            "--repeat-last-n must be in [-1, 2147483647]".into(),
        ),
        (
            "n_blocks",
            set("/state/0/n_blocks", json!(1u64 << 60)),
            "1152921504606846976 blocks where the positions make 0".into(),
        ),
        (
            "negative_token",
            set("/record/sampler/history/0", json!(-5)),
            "token -5 is not in the vocabulary".into(),
        ),
        (
            "vocab_token",
            set("/record/sampler/history/0", json!(49152)),
            "token 49152 is not in the vocabulary".into(),
        ),
        (
            "top_p",
            set("/record/sampler/params/top_p", json!(-1)),
            "--top-p must be in [0, 1], got -1".into(),
        ),
        (
            "min_p",
            set("/record/sampler/params/min_p", json!(5)),
            "--min-p must be in [0, 1], got 5".into(),
        ),
        (
            "temp",
            set("/record/sampler/params/temp", json!(1e39)),
            "--temp must be a finite number".into(),
        ),
        (
            "repeat_penalty",
            set("/record/sampler/params/repeat_penalty", json!(0)),
            "--repeat-penalty must be a number > 0".into(),
        ),
        (
            "role",
            set("/record/messages/0/role", json!("alien")),
            "role \"alien\"".into(),
        ),
        (
            "role_newline",
            set("/record/messages/0/role", json!("a\nb")),
            "role \"a\\nb\"".into(),
        ),
        (
            "empty_conversation",
            Box::new(|i| {
                *at(i, "/record/messages") = json!([]);
                *at(i, "/record/fed") = json!("");
            }),
            format!("do not match a memory of {n_past} tokens"),
        ),
        (
            "rng_position",
            set("/record/sampler/rngs/dist/index", json!(700)),
            "sampler dist generator state: 624 words at position 700".into(),
        ),
        (
            "temp_type",
            set("/record/sampler/params/temp", json!("hot\nter")),
            "conversation record: corrupt".into(),
        ),
        (
            "index_n_past",
            set("/n_past", json!(n_past + 1)),
            format!("({n_past} tokens in a session of {})", n_past + 1),
        ),
        (
            "state_n_past",
            Box::new(move |i| {
                *at(i, "/n_past") = json!(1_000_000);
                *at(i, "/state/0/pos/n_past") = json!(1_000_000);
            }),
            "positions out of order or past the buffer".into(),
        ),
        (
            "section_len",
            Box::new(|i| {
                let len = at(i, "/sections/0/1").as_u64().unwrap();
                *at(i, "/sections/0/1") = json!(len - 1);
            }),
            "corrupt (section of".into(),
        ),
        (
            "section_offset",
            set("/sections/0/0", json!(1u64 << 63)),
            "section past the data".into(),
        ),
        (
            "state_type",
            set("/state", json!("x\ny")),
            "corrupt attention state".into(),
        ),
        (
            "model",
            set("/model", json!("x\ny")),
            "saved with another model (identity \"x\\ny\"".into(),
        ),
    ];
    for (name, edit, needle) in cases {
        let path = d.join(format!("{name}.session"));
        let content = crafted(&bytes, edit);
        std::fs::write(&path, &content).unwrap();
        let out = chat(&path, "Hi");
        assert_refused(&out, &needle, name);
        let prefix = format!("error: session file {}: ", path.display());
        assert!(stderr(&out).starts_with(&prefix), "{name}: {}", stderr(&out));
        assert_eq!(std::fs::read(&path).unwrap(), content, "{name}: the file changed");
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// Reads `child`'s stderr up to a line holding `marker`; returns what came.
fn read_until(err: &mut BufReader<ChildStderr>, marker: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(marker) {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "no {marker:?} in {seen}");
        seen.push_str(&line);
    }
    seen
}

/// Sends `turn` to a chat started with a piped stdin and waits for it.
fn finish(mut child: Child, mut err: BufReader<ChildStderr>, turn: &str) -> Output {
    child.stdin.take().unwrap().write_all(turn.as_bytes()).unwrap();
    let mut rest = Vec::new();
    err.read_to_end(&mut rest).unwrap();
    let mut out = child.wait_with_output().unwrap();
    out.stderr = rest;
    out
}

/// The layers' vote a session saves (the default `--retrieval vote`, past
/// `--topk` blocks) is checked before it reaches a graph: `--topk`
/// distinct blocks of the session's.
#[test]
fn a_crafted_vote_is_refused_in_one_line() {
    let _cpu = common::exclusive();
    let d = dir("vote");
    let good = d.join("good.session");
    make_session(&good, &"The grass is green. The sky is blue. ".repeat(15));
    let bytes = std::fs::read(&good).unwrap();
    let index = split_session(&bytes).1;
    let n_blocks = index["state"][0]["n_blocks"].as_u64().unwrap();
    let vote = index["state"][0]["vote"].as_array().expect("a saved vote").clone();
    assert_eq!(vote.len(), 2, "{index}");
    assert_ok(&chat(&d.join("good.session"), "And the sun?"));
    let cases = [
        ("past_the_blocks", json!([0, n_blocks])),
        ("negative", json!([-1, 0])),
        ("twice", json!([vote[0], vote[0]])),
        ("short", json!([vote[0]])),
        ("not_ids", json!("x\ny")),
    ];
    for (name, value) in cases {
        let path = d.join(format!("{name}.session"));
        let content = crafted(&bytes, |i| *at(i, "/state/0/vote") = value);
        std::fs::write(&path, &content).unwrap();
        let needle = match name {
            "not_ids" => "corrupt attention state",
            _ => "inconsistent attention state (its vote",
        };
        assert_refused(&chat(&path, "Hi"), needle, name);
        assert_eq!(std::fs::read(&path).unwrap(), content, "{name}: the file changed");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_session_truncated_under_a_running_chat_does_not_stop_it() {
    let _cpu = common::exclusive();
    let d = dir("truncated");
    let session = d.join("blocks.session");
    let text = "The grass is green. The sky is blue. ".repeat(15);
    make_session(&session, &text);
    let index = split_session(&std::fs::read(&session).unwrap()).1;
    assert!(index["state"][0]["n_blocks"].as_u64().unwrap() > 0, "{index}");

    let mut child = command(&session).spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    read_until(&mut err, " restored: ");
    // Another program cuts the file while the chat holds its blocks.
    let len = std::fs::metadata(&session).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&session)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let out = finish(child, err, "And the sun?");
    assert_ok(&out);
    assert!(!out.stdout.is_empty(), "no answer: {}", stderr(&out));

    // The save after it is whole: the next run goes on from four messages.
    let out = chat(&session, "Thanks.");
    assert_ok(&out);
    assert_eq!(restored_messages(&stderr(&out)), 4);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_save_removes_what_killed_saves_left() {
    let _cpu = common::exclusive();
    let d = dir("stale");
    let session = d.join("s.session");
    let stale = d.join(".s.session.99999999.tmp");
    let other = d.join(".other.session.99999999.tmp");
    for f in [&stale, &other] {
        std::fs::write(f, vec![0u8; 1 << 20]).unwrap();
    }
    assert_ok(&chat(&session, "Hi"));
    assert!(session.is_file());
    assert!(!stale.exists(), "the stale temporary file is still there");
    assert!(other.exists(), "another session's file was removed");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_session_in_use_is_refused_before_any_work() {
    let _cpu = common::exclusive();
    let d = dir("in_use");
    let session = d.join("s.session");
    hi_session(&session);

    let mut first = command(&session).spawn().unwrap();
    let mut err = BufReader::new(first.stderr.take().unwrap());
    read_until(&mut err, " restored: ");
    let link = d.join("link.session");
    std::os::unix::fs::symlink(&session, &link).unwrap();
    for path in [&session, &link] {
        let started = Instant::now();
        let out = chat(path, "Hello?");
        let expected = format!(
            "error: session {} is in use by another infllm process\n",
            path.display()
        );
        assert_refused(&out, "is in use", &path.display().to_string());
        assert_eq!(stderr(&out), expected);
        eprintln!("refused in {:?}", started.elapsed());
    }
    // The first goes on and saves its turn.
    assert_ok(&finish(first, err, "One more."));
    assert_eq!(saved_messages(&session), 4);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn fifos_are_refused_and_links_written_through() {
    let _cpu = common::exclusive();
    let d = dir("special");
    let fifo = d.join("fifo.session");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let mut child = command(&fifo).spawn().unwrap();
    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("a FIFO as session path hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_refused(&out, "is a FIFO, not a regular file", "fifo");

    // A link to a session: read and written through, still a link after.
    let target = d.join("target.session");
    hi_session(&target);
    let link = d.join("link.session");
    std::os::unix::fs::symlink("target.session", &link).unwrap();
    let out = chat(&link, "Hello again.");
    assert_ok(&out);
    assert_eq!(restored_messages(&stderr(&out)), 2);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(saved_messages(&target), 4);
    // A dangling link: the session is made where it points.
    let dangling = d.join("dangling.session");
    std::os::unix::fs::symlink("new.session", &dangling).unwrap();
    assert_ok(&chat(&dangling, "Hi"));
    assert!(d.join("new.session").is_file());
    assert!(std::fs::symlink_metadata(&dangling).unwrap().file_type().is_symlink());
    let leftovers: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_full_disk_under_the_memory_blocks_ends_the_run_and_keeps_the_session() {
    // Blocks go to --mem-file (kept for the session) from the first one;
    // the file may not grow
    // past 2 MB (`prlimit --fsize`: writes past it fail with EFBIG, as on a
    // full disk, once SIGXFSZ no longer ends the process), less than the
    // regions of 30 layers' keys and values. A long turn forms blocks, and
    // writing them fails: the run ends with one line naming the cause,
    // exit 1, and the session holds the last turn that completed.
    let _cpu = common::exclusive();
    let d = dir("full-disk");
    let session = d.join("s.session");
    hi_session(&session);
    let before = std::fs::read(&session).unwrap();
    let cmd = command(&session);
    let mut limited = Command::new("prlimit");
    limited
        .arg("--fsize=2000000")
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .arg("--mem-file")
        .arg(d.join("blocks"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = limited.spawn().expect("prlimit (util-linux)");
    let turn = "The quick brown fox jumps over the lazy dog. ".repeat(40);
    let _ = child.stdin.take().unwrap().write_all(turn.as_bytes());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("memory blocks") && last.contains("File too large"),
        "{err}"
    );
    assert_eq!(std::fs::read(&session).unwrap(), before, "the session changed");
    // Without the limit, the same turn goes on from the same session.
    let again = chat(&session, &turn);
    assert_ok(&again);
    assert_eq!(saved_messages(&session), 4);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_session_names_its_kept_block_file_and_a_changed_block_is_refused() {
    // With --mem-budget 0 the blocks go to `s.session.blocks` from the
    // first one, and the session names that file and each block's checksum
    // instead of holding the blocks.
    let _cpu = common::exclusive();
    let d = dir("kept-blocks");
    let session = d.join("s.session");
    let blocks = d.join("s.session.blocks");
    let run = |turn: &str| chat_with(&session, &["--mem-budget", "0"], turn);
    assert_ok(&run(&"The quick brown fox jumps over the lazy dog. ".repeat(40)));
    let index = split_session(&std::fs::read(&session).unwrap()).1;
    let named = index["state"][0]["file"]["path"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(named.ends_with("s.session.blocks"), "{index}");
    assert!(blocks.is_file());
    // The next run restores it and goes on.
    let out = run("And then?");
    assert_ok(&out);
    assert_eq!(restored_messages(&stderr(&out)), 2);
    assert_eq!(saved_messages(&session), 4);
    // A changed block (the first layer's keys start at 64 KiB): refused in
    // one line, the session left as it was.
    let before = std::fs::read(&session).unwrap();
    let mut bytes = std::fs::read(&blocks).unwrap();
    bytes[(1 << 16) + 10] ^= 1;
    std::fs::write(&blocks, &bytes).unwrap();
    assert_refused(&run("Again?"), "is corrupt (block 0 differs", "a changed block");
    assert_eq!(std::fs::read(&session).unwrap(), before, "the session changed");
    let _ = std::fs::remove_dir_all(&d);
}
