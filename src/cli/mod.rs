//! The command line: llama.cpp's flag spellings, one module per sub-command.

pub mod args;
pub mod attn;
pub mod bench;
pub mod chat;
pub mod devices;
pub mod generate;
pub mod interactive;
pub mod limits;
pub mod llama_flags;
pub mod llama_text;
pub mod logging;
pub mod passkey;
pub mod perplexity;
pub mod plot;
pub mod progress;
pub mod prompt;
pub mod prompt_cache;
pub mod rpc_server;
pub mod rss;
pub mod sampling;
pub mod signals;
pub mod terminal;
pub mod token_display;
pub mod tokenize;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::engine::{Engine, EngineParams};
use crate::model::{Hparams, Model};
use crate::session::SessionFile;
use attn::AttnArgs;

/// The model used when `-m` is not given, as placed by `models/fetch`.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Parser, Debug)]
#[command(
    name = "infllm",
    version,
    about = "Long-context inference for quantized GGUF models (ggml + InfLLM memory attention)",
    args_conflicts_with_subcommands = true,
    after_help = "Without a sub-command, generates text like llama.cpp's llama-completion:\n  infllm -m model.gguf -p \"Once upon a time\" -n 64"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub generate: generate::GenerateArgs,
    #[command(flatten)]
    pub log: logging::LogArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the token ids of a text (like llama-tokenize)
    Tokenize(tokenize::TokenizeArgs),
    /// Find a pass key hidden in a long text (like llama-passkey)
    Passkey(Box<passkey::PasskeyArgs>),
    /// Perplexity of a text file, by chunks (like llama-perplexity) or per
    /// position range over one long sequence (--range)
    Perplexity(Box<perplexity::PerplexityArgs>),
    /// Prompt and generation speed beside llama.cpp's, in one run (like llama-bench)
    Bench(Box<bench::BenchArgs>),
    /// An OpenAI-compatible HTTP server where each conversation keeps its
    /// memory (like llama-server)
    Serve(Box<crate::server::ServeArgs>),
    /// Serve this machine's devices to other machines over ggml's RPC
    /// protocol (like llama.cpp's rpc-server)
    RpcServer(rpc_server::RpcServerArgs),
}

/// Flags shared by every command that loads a model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model file (GGUF). Default: the SmolLM2 file fetched by `models/fetch`
    #[arg(short = 'm', long = "model", value_name = "FNAME")]
    pub model: Option<PathBuf>,
}

impl ModelArgs {
    /// The model path: `-m`, else `$INFLLM_MODEL`, else the default file
    /// (looked up from the working directory, then next to the repository
    /// the binary was built in). A path given by `-m` or `$INFLLM_MODEL` must
    /// name a non-empty regular file: checked here, before anything opens it.
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.model {
            crate::gguf::check_file(p)?;
            return Ok(p.clone());
        }
        if let Some(p) = std::env::var_os("INFLLM_MODEL") {
            let p = PathBuf::from(p);
            crate::gguf::check_file(&p).context("$INFLLM_MODEL")?;
            return Ok(p);
        }
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL);
        [PathBuf::from(DEFAULT_MODEL), repo]
            .into_iter()
            .find(|p| p.is_file())
            .with_context(|| {
                format!("no model given (-m) and the default model {DEFAULT_MODEL} is missing: run `models/fetch`")
            })
    }
}

/// Flags of every command that runs a model: the model, context, threads,
/// batching and attention.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Context size, 0..=16777216. Full attention: KV cache tokens
    /// [default: 4096; 0 = the model's training context]. InfLLM / stream:
    /// cap on the text length [default: 0 = none below 16777216 tokens]
    #[arg(short = 'c', long = "ctx-size", value_parser = limits::count(0, limits::MAX_TOKENS), help_heading = "Common")]
    pub ctx_size: Option<usize>,
    /// Threads, 1..=1024; at most one per core runs [default: all cores]
    #[arg(short = 't', long = "threads", value_parser = limits::count(1, limits::MAX_THREADS), help_heading = "Common")]
    pub threads: Option<usize>,
    /// Logical batch size, 1..=16384: most prompt tokens submitted at once
    #[arg(short = 'b', long = "batch-size", default_value_t = 2048,
          value_parser = limits::count(1, limits::MAX_BATCH), help_heading = "Common")]
    pub batch_size: usize,
    /// Physical batch size (-ub), 1..=16384: tokens per forward pass
    #[arg(long = "ubatch-size", default_value_t = 512,
          value_parser = limits::count(1, limits::MAX_BATCH), help_heading = "Common")]
    pub ubatch_size: usize,
    #[command(flatten)]
    pub devices: devices::DeviceArgs,
    #[command(flatten)]
    pub attn: AttnArgs,
}

impl RunArgs {
    pub fn engine_params(&self, hp: &Hparams) -> anyhow::Result<EngineParams> {
        Ok(EngineParams {
            attn: self.attn.mode(hp, self.ctx_size)?,
            n_threads: limits::threads(self.threads),
            n_ctx: self.ctx_size.unwrap_or(4096),
            n_ubatch: self.ubatch_size.min(self.batch_size).max(1),
            block_cache: self.devices.block_cache,
            standard_ops: false,
        })
    }

    /// The engine of `params` for `model`, its memory blocks on disk past
    /// `--mem-budget`.
    pub fn engine(&self, model: Model, params: EngineParams) -> anyhow::Result<Engine> {
        self.engine_saving_to(model, params, None)
    }

    /// `engine`, saving sessions to `session`: its blocks, once on disk,
    /// go to a kept file that the session names (`--mem-file`, or the
    /// session's `blocks_path`).
    pub fn engine_saving_to(
        &self,
        model: Model,
        params: EngineParams,
        session: Option<&SessionFile>,
    ) -> anyhow::Result<Engine> {
        let mut engine = Engine::new(model, params)?;
        let mut spill = self.attn.settings.block_spill();
        if let Some(s) = session {
            spill.file.get_or_insert_with(|| s.blocks_path());
            spill.keep = true;
        }
        engine.spill_blocks(spill)?;
        Ok(engine)
    }

    /// Loads the model; returns it with what to log about it, logged by
    /// the caller once the inputs are known to be valid (so that an error
    /// stays the only line on stderr).
    pub fn load(&self) -> anyhow::Result<(Model, LoadReport)> {
        let path = self.model.path()?;
        let start = Instant::now();
        let offload = self.devices.offload()?;
        let model = Model::load_on(&path, &offload, &mut |line| crate::log_info!("infllm: {line}"))?;
        let hp = &model.hp;
        let info = format!(
            "infllm: loaded {} ({}, {} layers, {} heads / {} KV heads, head dim {}, vocab {}, trained ctx {}) in {:.0} ms",
            path.display(),
            hp.arch,
            hp.n_layer,
            hp.n_head,
            hp.n_head_kv,
            hp.head_dim,
            hp.n_vocab,
            hp.n_ctx_train,
            start.elapsed().as_secs_f64() * 1e3
        );
        let info = match model.weights.repacked_bytes {
            0 => info,
            b => format!(
                "{info}; {:.1} MiB of weights repacked for the CPU",
                b as f64 / (1 << 20) as f64
            ),
        };
        let info = match model.placement.describe() {
            on if on.is_empty() => info,
            on => format!("{info}\ninfllm: offloaded {on}"),
        };
        let notes = self.attn.notes(&model.hp, self.ctx_size);
        let warnings = notes.lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
        Ok((model, LoadReport { info, warnings }))
    }
}

/// What loading a model says: a description, and warnings on the flags
/// that do not fit the model.
pub struct LoadReport {
    info: String,
    warnings: Vec<String>,
}

impl LoadReport {
    pub fn log(&self) {
        crate::log_info!("{}", self.info);
        for w in &self.warnings {
            crate::log_warn!("{w}");
        }
    }
}

/// An error and its causes on one line, outermost first.
pub fn error_line(e: &anyhow::Error) -> String {
    let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    format!("error: {}", msg.join(": "))
}

/// A command-line error (clap's) on one line: its first paragraph, without
/// usage and tips, control characters escaped, cut to a line's length.
pub fn clap_error_line(e: &clap::Error) -> String {
    const MAX_CHARS: usize = 300;
    let text = e.to_string();
    let first = text.split("\n\n").next().unwrap_or_default();
    let msg = first.trim().strip_prefix("error:").unwrap_or(first).trim();
    let mut line = String::from("error: ");
    for c in msg.chars().take(MAX_CHARS) {
        match c.is_control() {
            true => line.extend(c.escape_default()),
            false => line.push(c),
        }
    }
    line
}

/// Default thread count: the machine's cores.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get())
}

/// Parses a command line (program name first) as llama.cpp's tools read
/// theirs (see `args`): the parsed flags, or a one-line error for exit
/// code 1; `--help` and `--version` come back as clap's "errors" to print.
pub fn parse(args: Vec<std::ffi::OsString>, env: &dyn Fn(&str) -> Option<String>) -> Result<Cli, ParseError> {
    use clap::{CommandFactory, FromArgMatches};
    let mut cmd = Cli::command().args_override_self(true);
    // Built first: a sub-command then knows the global flags (`-v`, `--log-*`).
    cmd.build();
    let args = args::rewrite(args, &cmd, env).map_err(|e| ParseError::Line(format!("error: {e}")))?;
    let matches = cmd.try_get_matches_from(args).map_err(ParseError::from)?;
    Cli::from_arg_matches(&matches).map_err(ParseError::from)
}

/// Why a command line was not parsed.
#[derive(Debug)]
pub enum ParseError {
    /// `--help` or `--version`: clap prints it, exit 0.
    Info(clap::Error),
    /// A one-line error.
    Line(String),
}

impl From<clap::Error> for ParseError {
    fn from(e: clap::Error) -> Self {
        match e.use_stderr() {
            true => Self::Line(clap_error_line(&e)),
            false => Self::Info(e),
        }
    }
}
