//! `infllm bench`: llama-bench's prompt (`pp`) and generation (`tg`) tests,
//! optionally with `-d` tokens already in memory, each also run through
//! llama.cpp (the `llama_*` API of the same ggml build, with its defaults:
//! flash attention auto, f16 KV cache) in the same process, and the ratio.
//!
//! Per model and depth each engine fills its memory once, then runs the
//! tests in turn. At depth 0 every run starts from an empty memory; at depth
//! d > 0 runs continue one after another (the k-th at depth d + k·n), for
//! both engines alike. The peak RSS is restarted before each engine loads
//! (Linux), so each figure is that engine's own.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::attn::{AttnKind, AttnSettings};
use super::devices::DeviceArgs;
use super::limits::{self, count};
use super::rss::{peak_rss_bytes, reset_peak_rss};
use super::ModelArgs;
use crate::engine::{AttnMode, Engine, EngineParams};
use crate::ggml::reference::{RefContext, RefModel, RefParams};
use crate::model::Model;
use crate::placement::Offload;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Md,
    Json,
    Csv,
}

/// `-p` and `-n` at most: tokens of one test.
const MAX_TEST_TOKENS: u64 = 1 << 20;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model files (GGUF), comma-separated or repeated [default: the SmolLM2 file]
    #[arg(short = 'm', long = "model", value_delimiter = ',', value_name = "FNAME")]
    pub models: Vec<PathBuf>,
    /// Prompt sizes of the pp tests, 0..=1048576 (0: none)
    #[arg(short = 'p', long = "n-prompt", value_delimiter = ',', default_value = "512",
          value_parser = count(0, MAX_TEST_TOKENS))]
    pub n_prompt: Vec<usize>,
    /// Generated tokens of the tg tests, 0..=1048576 (0: none)
    #[arg(short = 'n', long = "n-gen", value_delimiter = ',', default_value = "128",
          value_parser = count(0, MAX_TEST_TOKENS))]
    pub n_gen: Vec<usize>,
    /// Tokens already in memory when the tests run, 0..=16777216
    #[arg(short = 'd', long = "n-depth", value_delimiter = ',', default_value = "0",
          value_parser = count(0, limits::MAX_TOKENS))]
    pub n_depth: Vec<usize>,
    /// Timed runs per test, 1..=1000
    #[arg(short = 'r', long = "repetitions", default_value_t = 5, value_parser = count(1, 1000))]
    pub reps: usize,
    /// Threads, 1..=1024; at most one per core runs [default: all cores]
    #[arg(short = 't', long = "threads", value_parser = count(1, limits::MAX_THREADS))]
    pub threads: Option<usize>,
    /// Attention modes, comma-separated
    #[arg(long = "attn", value_enum, value_delimiter = ',', default_value = "infllm")]
    pub attn: Vec<AttnKind>,
    #[command(flatten)]
    pub settings: AttnSettings,
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Md)]
    pub output: Format,
    /// Deepest depth also run through llama.cpp (deeper rows show n/a),
    /// 0..=16777216
    #[arg(long = "ref-max-depth", default_value_t = 32768, value_parser = count(0, limits::MAX_TOKENS))]
    pub ref_max_depth: usize,
    /// Do not run llama.cpp
    #[arg(long = "no-ref")]
    pub no_ref: bool,
    /// No untimed warm-up run before each test's timed runs
    #[arg(long = "no-warmup")]
    pub no_warmup: bool,
    #[command(flatten)]
    pub devices: DeviceArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Test {
    Prompt(usize),
    Gen(usize),
}

impl Test {
    fn n_tokens(self) -> usize {
        match self {
            Test::Prompt(n) | Test::Gen(n) => n,
        }
    }

    fn name(self, depth: usize) -> String {
        let base = match self {
            Test::Prompt(n) => format!("pp{n}"),
            Test::Gen(n) => format!("tg{n}"),
        };
        if depth > 0 {
            format!("{base} @ d{depth}")
        } else {
            base
        }
    }
}

/// One engine's runs of one test.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub samples_ns: Vec<u64>,
    pub samples_ts: Vec<f64>,
    pub avg_ts: f64,
    pub stddev_ts: f64,
    /// Peak RSS of the engine's run up to the end of this test.
    pub peak_rss_bytes: Option<u64>,
}

impl Timing {
    fn new(n_tokens: usize, samples_ns: Vec<u64>, peak_rss_bytes: Option<u64>) -> Self {
        let samples_ts: Vec<f64> = samples_ns.iter().map(|&ns| n_tokens as f64 * 1e9 / ns as f64).collect();
        let n = samples_ts.len().max(1) as f64;
        let avg_ts = samples_ts.iter().sum::<f64>() / n;
        let var = samples_ts.iter().map(|t| (t - avg_ts).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        Self {
            samples_ns,
            samples_ts,
            avg_ts,
            stddev_ts: var.sqrt(),
            peak_rss_bytes,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub model: String,
    pub model_type: String,
    pub n_threads: usize,
    /// Where the layers ran: "CPU", or the placement ("layers 0-29 on RPC0, ...").
    pub devices: String,
    pub attn: String,
    /// Types of the stored memory blocks (InfLLM) or of the KV cache (full).
    pub type_k: String,
    pub type_v: String,
    pub test: String,
    pub n_prompt: usize,
    pub n_gen: usize,
    pub n_depth: usize,
    pub infllm: Timing,
    pub block_memory_bytes: Option<u64>,
    pub llama_cpp: Option<Timing>,
    /// Why there is no llama.cpp figure.
    pub llama_cpp_na: Option<String>,
    /// infllm t/s over llama.cpp t/s.
    pub ratio: Option<f64>,
}

/// Either engine, as the bench drives it.
trait Runner {
    fn eval(&mut self, tokens: &[i32]) -> anyhow::Result<()>;
    fn clear(&mut self);
}

impl Runner for Engine {
    fn eval(&mut self, tokens: &[i32]) -> anyhow::Result<()> {
        Engine::eval(self, tokens, false, &mut |_, _| {}).map(drop)
    }
    fn clear(&mut self) {
        Engine::clear(self)
    }
}

impl Runner for RefContext<'_> {
    fn eval(&mut self, tokens: &[i32]) -> anyhow::Result<()> {
        self.decode(tokens, 2048, false).map(drop)
    }
    fn clear(&mut self) {
        RefContext::clear(self)
    }
}

/// What every session runs.
struct Plan {
    tests: Vec<Test>,
    reps: usize,
    warmup: bool,
}

impl Plan {
    /// Context the engines need at `depth` (runs continue when depth > 0).
    fn n_ctx(&self, depth: usize) -> usize {
        let runs = self.reps + self.warmup as usize;
        let tokens = self.tests.iter().map(|t| t.n_tokens());
        if depth == 0 {
            tokens.max().unwrap_or(0)
        } else {
            depth + tokens.map(|n| n * runs).sum::<usize>()
        }
    }

    /// Fills `depth` tokens, then times every test; the tokens are random
    /// but the same for both engines (seeded by the depth).
    fn session(&self, r: &mut dyn Runner, depth: usize, n_vocab: usize) -> anyhow::Result<Vec<Timing>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(depth as u64);
        let mut draw = |n: usize| -> Vec<i32> { (0..n).map(|_| rng.gen_range(0..n_vocab as i32)).collect() };
        if depth > 0 {
            r.eval(&draw(depth))?;
        }
        let mut out = Vec::new();
        for &test in &self.tests {
            let mut samples = Vec::new();
            for run in 0..self.reps + self.warmup as usize {
                if depth == 0 {
                    r.clear();
                }
                let tokens = draw(test.n_tokens());
                let start = Instant::now();
                match test {
                    Test::Prompt(_) => r.eval(&tokens)?,
                    Test::Gen(_) => {
                        for &t in &tokens {
                            r.eval(&[t])?;
                        }
                    }
                }
                if run >= self.warmup as usize {
                    samples.push(start.elapsed().as_nanos() as u64);
                }
            }
            out.push(Timing::new(test.n_tokens(), samples, peak_rss_bytes()));
        }
        Ok(out)
    }
}

pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    if a.devices.list_if_asked()? {
        return Ok(());
    }
    let models = model_paths(a)?;
    let plan = plan(a)?;
    let threads = limits::threads(a.threads);
    let offload = a.devices.offload()?;
    let rss_resets = reset_peak_rss();
    // On a terminal the markdown table grows row by row; otherwise rows
    // show on stderr as they come and the table follows on stdout.
    let live = a.output == Format::Md && std::io::stdout().is_terminal();
    let mut rows = Vec::new();
    for path in &models {
        for &depth in &a.n_depth {
            // llama.cpp runs once per depth, whatever the attention modes.
            let mut reference: Option<Result<Vec<Timing>, String>> = None;
            for &kind in &a.attn {
                let ours = bench_ours(a, &plan, (path, &offload), kind, depth, threads)?;
                let reference =
                    reference.get_or_insert_with(|| reference_timings(a, &plan, (path, &offload), depth, threads));
                for (i, (&test, timing)) in plan.tests.iter().zip(ours.timings).enumerate() {
                    let row = ours.meta.row(test, depth, timing, reference.as_ref().map(|r| &r[i]));
                    match live {
                        true if rows.is_empty() => {
                            print!(
                                "{}",
                                format_rows(a, &plan, std::slice::from_ref(&row), threads, rss_resets)?
                            )
                        }
                        true => println!("{}", markdown_line(&row)),
                        false => crate::log_info!("bench: {}", markdown_line(&row)),
                    }
                    rows.push(row);
                }
            }
        }
    }
    if !live {
        print!("{}", format_rows(a, &plan, &rows, threads, rss_resets)?);
    }
    Ok(())
}

/// The models to bench: `-m` (repeatable) or the default one.
fn model_paths(a: &BenchArgs) -> anyhow::Result<Vec<PathBuf>> {
    let models = if a.models.is_empty() {
        vec![ModelArgs { model: None }.path()?]
    } else {
        a.models.clone()
    };
    for m in &models {
        anyhow::ensure!(m.is_file(), "model file {} does not exist", m.display());
    }
    Ok(models)
}

fn plan(a: &BenchArgs) -> anyhow::Result<Plan> {
    let tests: Vec<Test> = (a.n_prompt.iter().filter(|&&n| n > 0).map(|&n| Test::Prompt(n)))
        .chain(a.n_gen.iter().filter(|&&n| n > 0).map(|&n| Test::Gen(n)))
        .collect();
    anyhow::ensure!(!tests.is_empty(), "nothing to bench: every -p and -n is 0");
    anyhow::ensure!(a.reps > 0, "-r must be at least 1");
    let plan = Plan {
        tests,
        reps: a.reps,
        warmup: !a.no_warmup,
    };
    let deepest = a.n_depth.iter().map(|&d| plan.n_ctx(d)).max().unwrap_or(0);
    anyhow::ensure!(
        deepest <= limits::MAX_TOKENS as usize,
        "-d, -p, -n and -r ask for {deepest} tokens in memory, more than {}",
        limits::MAX_TOKENS
    );
    Ok(plan)
}

/// What one engine configuration's rows share.
struct RowMeta {
    model: String,
    model_type: String,
    n_threads: usize,
    devices: String,
    attn: String,
    type_k: String,
    type_v: String,
    block_bytes: Option<usize>,
}

impl RowMeta {
    fn row(&self, test: Test, depth: usize, timing: Timing, reference: Result<&Timing, &String>) -> Row {
        let (n_prompt, n_gen) = match test {
            Test::Prompt(n) => (n, 0),
            Test::Gen(n) => (0, n),
        };
        let (llama_cpp, llama_cpp_na) = match reference {
            Ok(r) => (Some(r.clone()), None),
            Err(e) => (None, Some(e.clone())),
        };
        Row {
            model: self.model.clone(),
            model_type: self.model_type.clone(),
            n_threads: self.n_threads,
            devices: self.devices.clone(),
            attn: self.attn.clone(),
            type_k: self.type_k.clone(),
            type_v: self.type_v.clone(),
            test: test.name(depth),
            n_prompt,
            n_gen,
            n_depth: depth,
            ratio: llama_cpp.as_ref().map(|r| timing.avg_ts / r.avg_ts),
            infllm: timing,
            block_memory_bytes: self.block_bytes.map(|b| b as u64),
            llama_cpp,
            llama_cpp_na,
        }
    }
}

/// Our timings of every test, with what their rows say of the engine.
struct Ours {
    meta: RowMeta,
    timings: Vec<Timing>,
}

/// Runs the plan on a fresh engine of attention `kind` at `depth`.
fn bench_ours(
    a: &BenchArgs,
    plan: &Plan,
    (path, offload): (&Path, &Offload),
    kind: AttnKind,
    depth: usize,
    threads: usize,
) -> anyhow::Result<Ours> {
    let model = Model::load_on(path, offload, &mut |_| {})?;
    let devices = match model.placement.describe() {
        on if on.is_empty() => "CPU".to_string(),
        on => on,
    };
    let n_vocab = model.hp.n_vocab;
    let model_type = model.hp.arch.clone();
    let mode = a.settings.mode(kind, &model.hp, None)?;
    let (type_k, type_v) = match &mode {
        AttnMode::Full { type_k, type_v, .. } => (type_name(*type_k), type_name(*type_v)),
        AttnMode::Infllm(p) => (type_name(p.type_k), type_name(p.type_v)),
    };
    let params = EngineParams {
        attn: mode,
        n_threads: threads,
        n_ctx: plan.n_ctx(depth),
        n_ubatch: 512,
        block_cache: a.devices.block_cache,
        standard_ops: false,
    };
    reset_peak_rss();
    let mut engine = Engine::new(model, params)?;
    engine.spill_blocks(a.settings.block_spill())?;
    let timings = plan.session(&mut engine, depth, n_vocab)?;
    let meta = RowMeta {
        model: file_name(path),
        model_type,
        n_threads: threads,
        devices,
        attn: format!("{kind:?}").to_lowercase(),
        type_k,
        type_v,
        block_bytes: engine.block_bytes(),
    };
    Ok(Ours { meta, timings })
}

/// llama.cpp's timings at `depth`, or why there are none.
fn reference_timings(
    a: &BenchArgs,
    plan: &Plan,
    (path, offload): (&Path, &Offload),
    depth: usize,
    threads: usize,
) -> Result<Vec<Timing>, String> {
    if a.no_ref {
        Err("--no-ref".into())
    } else if depth > a.ref_max_depth {
        Err(format!("depth {depth} > --ref-max-depth {}", a.ref_max_depth))
    } else {
        reset_peak_rss();
        run_reference((path, offload), plan, depth, threads).map_err(|e| format!("llama.cpp: {e:#}"))
    }
}

/// The rows as `-o` asks.
fn format_rows(a: &BenchArgs, plan: &Plan, rows: &[Row], threads: usize, rss_resets: bool) -> anyhow::Result<String> {
    Ok(match a.output {
        Format::Json => serde_json::to_string_pretty(rows)? + "\n",
        Format::Csv => csv(rows),
        Format::Md => {
            let rss_note = if rss_resets {
                ""
            } else {
                " (peak RSS: process-wide, not per engine)"
            };
            let devices = rows.first().map_or("CPU", |r| r.devices.as_str());
            format!(
                "threads: {threads}, devices: {devices}, repetitions: {}, warm-up: {}{rss_note}\n\n{}",
                a.reps,
                if plan.warmup { "yes" } else { "no" },
                markdown(rows)
            )
        }
    })
}

fn run_reference(
    (path, offload): (&Path, &Offload),
    plan: &Plan,
    depth: usize,
    threads: usize,
) -> anyhow::Result<Vec<Timing>> {
    let model = RefModel::load_on(path, offload)?;
    let params = RefParams {
        n_ctx: plan.n_ctx(depth) as u32,
        n_batch: 2048,
        n_ubatch: 512,
        n_threads: threads as i32,
        flash_attn: None,
        cache_types: None,
    };
    let mut ctx = RefContext::new(&model, params)?;
    plan.session(&mut ctx, depth, model.n_vocab())
}

fn type_name(t: crate::ggml::GgmlType) -> String {
    crate::ggml::type_info(t).map_or("?", |i| i.name).to_string()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| path.display().to_string(), |f| f.to_string_lossy().into_owned())
}

fn mib(b: Option<u64>) -> String {
    b.map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64))
}

const MD_HEADER: &str =
    "| model | attn | test | t/s | peak RSS | block memory | llama.cpp t/s | llama.cpp RSS | ratio |";

fn markdown_line(r: &Row) -> String {
    let (ref_ts, ref_rss, ratio) = match (&r.llama_cpp, &r.llama_cpp_na) {
        (Some(t), _) => (
            format!("{:.2} ± {:.2}", t.avg_ts, t.stddev_ts),
            mib(t.peak_rss_bytes),
            format!("{:.2}", r.ratio.unwrap_or(f64::NAN)),
        ),
        (None, na) => (
            format!("n/a ({})", na.as_deref().unwrap_or("?")),
            "n/a".into(),
            "n/a".into(),
        ),
    };
    format!(
        "| {} | {} | {} | {:.2} ± {:.2} | {} | {} | {ref_ts} | {ref_rss} | {ratio} |",
        r.model,
        r.attn,
        r.test,
        r.infllm.avg_ts,
        r.infllm.stddev_ts,
        mib(r.infllm.peak_rss_bytes),
        r.block_memory_bytes.map_or("-".into(), |b| mib(Some(b))),
    )
}

fn markdown(rows: &[Row]) -> String {
    let mut s = format!("{MD_HEADER}\n|---|---|---|--:|--:|--:|--:|--:|--:|\n");
    for r in rows {
        s += &markdown_line(r);
        s.push('\n');
    }
    s
}

fn csv(rows: &[Row]) -> String {
    let opt = |x: Option<String>| x.unwrap_or_default();
    let mut s = String::from(
        "model,model_type,n_threads,devices,attn,type_k,type_v,test,n_prompt,n_gen,n_depth,avg_ts,stddev_ts,peak_rss_bytes,\
         block_memory_bytes,llama_cpp_avg_ts,llama_cpp_stddev_ts,llama_cpp_peak_rss_bytes,llama_cpp_na,ratio\n",
    );
    for r in rows {
        let t = r.llama_cpp.as_ref();
        let fields = [
            r.model.clone(),
            r.model_type.clone(),
            r.n_threads.to_string(),
            r.devices.clone(),
            r.attn.clone(),
            r.type_k.clone(),
            r.type_v.clone(),
            r.test.clone(),
            r.n_prompt.to_string(),
            r.n_gen.to_string(),
            r.n_depth.to_string(),
            format!("{:.4}", r.infllm.avg_ts),
            format!("{:.4}", r.infllm.stddev_ts),
            opt(r.infllm.peak_rss_bytes.map(|b| b.to_string())),
            opt(r.block_memory_bytes.map(|b| b.to_string())),
            opt(t.map(|t| format!("{:.4}", t.avg_ts))),
            opt(t.map(|t| format!("{:.4}", t.stddev_ts))),
            opt(t.and_then(|t| t.peak_rss_bytes).map(|b| b.to_string())),
            opt(r.llama_cpp_na.clone()),
            opt(r.ratio.map(|x| format!("{x:.4}"))),
        ];
        let quoted: Vec<String> = fields
            .iter()
            .map(|f| {
                if f.contains([',', '"']) {
                    format!("\"{}\"", f.replace('"', "\"\""))
                } else {
                    f.clone()
                }
            })
            .collect();
        s += &quoted.join(",");
        s.push('\n');
    }
    s
}
