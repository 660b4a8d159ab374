//! `infllm passkey` as a grid: several lengths and positions, the table
//! (`-o csv|json`) and the picture (`--plot`), on short prompts (512 and
//! 1024 tokens: seconds, not minutes; tests/passkey.rs tests retrieval).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn infllm(args: &[&str]) -> Output {
    let _one_at_a_time = common::exclusive();
    let model = common::smollm2();
    let mut all = vec!["passkey", "-m", model.to_str().unwrap(), "-t", "2"];
    all.extend_from_slice(args);
    Command::new(env!("CARGO_BIN_EXE_infllm"))
        .args(&all)
        .output()
        .expect("run infllm")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh path in the temporary folder.
fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("infllm-passkey-{}-{name}", std::process::id()))
}

/// Every tag closed in order, one root element: a well-formed SVG (no
/// comments or CDATA are written by the backend).
fn assert_well_formed(svg: &str) {
    let mut open: Vec<&str> = Vec::new();
    let mut roots = 0;
    for piece in svg.split('<').skip(1) {
        let tag = &piece[..piece.find('>').expect("an unclosed '<'")];
        let name = tag.trim_start_matches('/').split([' ', '\n', '/']).next().unwrap();
        if open.is_empty() {
            roots += 1;
        }
        if tag.starts_with('/') {
            assert_eq!(open.pop(), Some(name), "</{name}> closes the wrong tag");
        } else if !tag.ends_with('/') {
            open.push(name);
        }
    }
    assert!(open.is_empty(), "unclosed tags: {open:?}");
    assert_eq!(roots, 1, "one root element");
}

/// The cells of the grid picture: (x, y, fill) of each filled rectangle
/// but the white background.
fn cells(svg: &str) -> Vec<(i64, i64, String)> {
    let attr = |tag: &str, name: &str| {
        let from = tag.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        tag[from..from + tag[from..].find('"').unwrap()].to_string()
    };
    svg.split("<rect")
        .skip(1)
        .map(|t| t.split("/>").next().unwrap())
        .map(|t| {
            (
                attr(t, "x").parse().unwrap(),
                attr(t, "y").parse().unwrap(),
                attr(t, "fill"),
            )
        })
        .filter(|r| r.2 != "#FFFFFF")
        .collect()
}

/// The sorted distinct values.
fn distinct(mut v: Vec<i64>) -> Vec<i64> {
    v.sort_unstable();
    v.dedup();
    v
}

/// One CSV row of the grid: length, depth, trials, passed.
fn row(line: &str) -> (usize, f64, usize, usize) {
    let f: Vec<&str> = line.splitn(5, ',').collect();
    (
        f[0].parse().unwrap(),
        f[1].parse().unwrap(),
        f[2].parse().unwrap(),
        f[3].parse().unwrap(),
    )
}

/// 2 lengths x 2 depths: 4 csv rows, one line per run on stderr, and a
/// picture with a cell per row, lengths left to right and depths top to
/// bottom, green where the row passed and red where it failed.
#[test]
fn a_grid_prints_a_row_and_draws_a_cell_per_length_and_depth() {
    let svg_path = temp("grid.svg");
    let out = infllm(&[
        "--tokens",
        "512,1024",
        "--pos",
        "0.1,0.9",
        "--share-prefix",
        "-o",
        "csv",
        "--plot",
        svg_path.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "length,depth,trials,passed,answer", "{stdout}");
    let rows: Vec<_> = lines[1..].iter().map(|l| row(l)).collect();
    let grid: Vec<(usize, f64)> = rows.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(grid, [(512, 0.1), (512, 0.9), (1024, 0.1), (1024, 0.9)], "{stdout}");
    assert!(rows.iter().all(|r| r.2 == 1 && r.3 <= 1), "{stdout}");
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("passkey: length ")).count(),
        4,
        "{stderr}"
    );

    let svg = std::fs::read_to_string(&svg_path).expect("the svg is written");
    std::fs::remove_file(&svg_path).unwrap();
    assert_well_formed(&svg);
    let found = cells(&svg);
    assert_eq!(found.len(), 4, "{svg}");
    let xs = distinct(found.iter().map(|c| c.0).collect());
    let ys = distinct(found.iter().map(|c| c.1).collect());
    assert_eq!((xs.len(), ys.len()), (2, 2), "{found:?}");
    for (x, y, fill) in &found {
        let (col, r) = (xs.binary_search(x).unwrap(), ys.binary_search(y).unwrap());
        let passed = rows[col * 2 + r].3;
        let want = if passed == 1 { "#2EA043" } else { "#DA3633" };
        assert_eq!(fill, want, "cell of {:?}", rows[col * 2 + r]);
    }
    for label in [
        "512",
        "1024",
        "10%",
        "90%",
        "prompt length (tokens)",
        "key depth",
        "trained on 8192 tokens",
    ] {
        assert!(svg.contains(label), "{label} missing from the picture");
    }
}

/// `--trials 2`: a cell counts two runs with their own keys; json rows.
#[test]
fn trials_share_a_cell_in_the_json_table() {
    let out = infllm(&["--tokens", "512", "--pos", "0.5", "--trials", "2", "-o", "json"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("json on stdout");
    assert_eq!(v["runs"], 2, "{stdout}");
    let cells = v["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 1, "{stdout}");
    assert_eq!(
        (cells[0]["length"].as_u64(), cells[0]["depth"].as_f64()),
        (Some(512), Some(0.5))
    );
    assert_eq!(cells[0]["trials"], 2);
    assert_eq!(cells[0]["answers"].as_array().unwrap().len(), 2);
    let keys: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.split(", key ").nth(1))
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(keys.len(), 2, "{stderr}");
    assert_ne!(keys[0], keys[1], "each trial has its own key");
    let passes = stderr.lines().filter(|l| l.ends_with(": pass")).count();
    assert_eq!(cells[0]["passed"], passes, "{stdout}{stderr}");
}

/// `--junk` lengths: a column each (named by a prompt's tokens), whatever
/// the depth; the key at filler 0 and at the end of the text.
#[test]
fn junk_lengths_make_one_column_each() {
    let svg_path = temp("junk.svg");
    let out = infllm(&[
        "--junk",
        "3,30",
        "--pos",
        "0.0,1.0",
        "-o",
        "csv",
        "--plot",
        svg_path.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    let rows: Vec<_> = stdout.lines().skip(1).map(row).collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    assert_eq!(
        (rows[0].0, rows[2].0),
        (rows[1].0, rows[3].0),
        "one length per --junk: {stdout}"
    );
    assert!(rows[0].0 < rows[2].0, "{stdout}");
    let svg = std::fs::read_to_string(&svg_path).expect("the svg is written");
    std::fs::remove_file(&svg_path).unwrap();
    assert_well_formed(&svg);
    let found = cells(&svg);
    let xs = distinct(found.iter().map(|c| c.0).collect());
    let ys = distinct(found.iter().map(|c| c.1).collect());
    assert_eq!((found.len(), xs.len(), ys.len()), (4, 2, 2), "{found:?}");
    for label in ["0%", "100%"] {
        assert!(
            svg.contains(&format!("\n{label}\n")),
            "{label} missing from the picture"
        );
    }
}

/// Bad lists, lengths, depths and plot paths: one line, exit 1, and no
/// picture written.
#[test]
fn bad_grid_flags_are_one_line_errors() {
    let missing = Path::new("/nonexistent-folder/grid.svg");
    let folder = std::env::temp_dir();
    let cases: [(&[&str], &str); 9] = [
        (&["--tokens", ""], "--tokens"),
        (&["--pos", ""], "--pos"),
        (&["--tokens", "0"], "--tokens"),
        (&["--tokens", "512,0"], "--tokens"),
        (
            &["--tokens", "512", "--pos", "1.5"],
            "--pos 1.5: a fraction must be between 0 and 1",
        ),
        (&["--tokens", "512", "--pos", "-0.1"], "--pos"),
        (
            &["--tokens", "512,512", "--pos", "0.5"],
            "--tokens: 512 and 512 give the same text",
        ),
        (
            &["--tokens", "512", "--plot", missing.to_str().unwrap()],
            "folder /nonexistent-folder does not exist",
        ),
        (&["--tokens", "512", "--plot", folder.to_str().unwrap()], "is a folder"),
    ];
    for (args, want) in cases {
        let out = infllm(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("error: ") && last.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(text(&out.stdout).is_empty(), "{args:?}");
    }
    assert!(!missing.exists());
}
