//! `infllm serve`: an OpenAI-compatible HTTP server, with llama-server's
//! flags, where each conversation keeps its memory between requests.
//!
//! Threads: tokio runs the HTTP side (`routes`); one compute thread owns
//! the model, the engine, the slots' states and the conversations
//! (`worker`), and takes work through a channel. Nothing model-related
//! crosses threads.

pub mod api;
pub mod job;
pub mod memory;
pub mod metrics;
pub mod routes;
pub mod slots;
pub mod worker;

use std::collections::VecDeque;
use std::future::IntoFuture as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio::sync::oneshot;

use crate::cli::attn::AttnKind;
use crate::cli::sampling::SamplingArgs;
use crate::cli::{limits, RunArgs};
use api::Defaults;
use memory::{Pool, SpillDir};
use metrics::Metrics;
use routes::AppState;
use worker::{Slots, Work, Worker};

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub sample: SamplingArgs,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1", help_heading = "Server")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start)
    #[arg(long, default_value_t = 8080, help_heading = "Server")]
    pub port: u16,
    /// Conversations computed at once (-np), 1..=256: their steps interleave
    #[arg(long = "parallel", default_value_t = 1, value_parser = limits::count(1, 256), help_heading = "Server")]
    pub parallel: usize,
    /// Key that requests must send as `Authorization: Bearer KEY` [env: LLAMA_API_KEY]
    #[arg(long = "api-key", help_heading = "Server")]
    pub api_key: Option<String>,
    /// Longest a request may wait and run, in seconds, 1..=86400
    #[arg(long, default_value_t = 600, value_parser = limits::count(1, 86400), help_heading = "Server")]
    pub timeout: usize,
    /// Directory for slot files and for conversations kept across restarts
    #[arg(long = "slot-save-path", value_name = "DIR", help_heading = "Server")]
    pub slot_save_path: Option<PathBuf>,
    /// MiB of RAM for conversations set aside, -1..=16777216 (-1: no limit);
    /// beyond it the least recently used go to session files
    #[arg(long = "cache-ram", default_value_t = 8192, allow_negative_numbers = true,
          value_parser = limits::count_or_minus_one(1 << 24), help_heading = "Server")]
    pub cache_ram: i64,
    /// Model name in responses and /v1/models [default: the file's name]
    #[arg(long, help_heading = "Server")]
    pub alias: Option<String>,
    /// Requests taken at most besides those in slots, 1..=65536 (those
    /// being handed to a slot count); more get 503
    #[arg(long, default_value_t = 64, value_parser = limits::count(1, 65536), help_heading = "Server")]
    pub queue: usize,
    /// Largest request body in MiB, 1..=4096
    #[arg(long = "body-limit", default_value_t = 64, value_parser = limits::count(1, 4096), help_heading = "Server")]
    pub body_limit: usize,
    /// Default most tokens per answer, -1..=16777216 (-1: to the end of the
    /// turn or the context; InfLLM / stream without -c: 4096)
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true,
          value_parser = limits::count_or_minus_one(limits::MAX_TOKENS as i64), help_heading = "Server")]
    pub n_predict: i64,
    /// Chat template: a built-in name or a Jinja source
    #[arg(long = "chat-template", value_name = "JINJA_TEMPLATE", help_heading = "Server")]
    pub chat_template: Option<String>,
    /// Chat template from a file
    #[arg(long = "chat-template-file", value_name = "FNAME", help_heading = "Server")]
    pub chat_template_file: Option<PathBuf>,
}

impl ServeArgs {
    fn max_tokens(&self) -> Option<usize> {
        let unbounded = self.run.attn.attn != AttnKind::Full && matches!(self.run.ctx_size, None | Some(0));
        match usize::try_from(self.n_predict) {
            Ok(n) => Some(n),
            Err(_) if unbounded => Some(limits::DEFAULT_PREDICT),
            Err(_) => None,
        }
    }

    fn api_key(&self) -> Option<String> {
        let key = self.api_key.clone().or_else(|| std::env::var("LLAMA_API_KEY").ok());
        key.filter(|k| !k.is_empty())
    }
}

pub fn run(a: &ServeArgs) -> anyhow::Result<()> {
    // Checked before anything starts: the flags, the model path.
    a.sample.params(1)?;
    let model_path = a.run.model.path()?;
    let alias = a.alias.clone().unwrap_or_else(|| {
        model_path
            .file_name()
            .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    runtime.block_on(serve(a.clone(), alias))
}

async fn serve(a: ServeArgs, alias: String) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
    crate::log_info!("infllm: listening on http://{}", listener.local_addr()?);
    let metrics = Arc::new(Metrics::default());
    let (work, work_rx) = std::sync::mpsc::channel();
    let state = Arc::new(AppState {
        work: work.clone(),
        metrics: Arc::clone(&metrics),
        defaults: OnceLock::new(),
        queue: a.queue as u64,
        alias,
        api_key: a.api_key(),
        timeout: Duration::from_secs(a.timeout as u64),
        created: routes::unix_now(),
    });
    let (ready, loaded) = oneshot::channel();
    let compute = {
        let (a, metrics) = (a.clone(), Arc::clone(&metrics));
        std::thread::Builder::new()
            .name("infllm-compute".into())
            .spawn(move || compute_main(&a, metrics, ready, work_rx))?
    };
    let app = routes::router(Arc::clone(&state), a.body_limit << 20);
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(stop_signal(work))
            .into_future(),
    );
    match loaded.await {
        Ok(Ok(d)) => {
            let _ = state.defaults.set(d);
            metrics.ready.store(true, Relaxed);
            crate::log_info!("infllm: ready");
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => anyhow::bail!("the compute thread ended while loading"),
    }
    server.await?.context("the HTTP server failed")?;
    drop(state);
    let _ = compute.join();
    crate::log_info!("infllm: stopped");
    Ok(())
}

/// SIGINT or SIGTERM: the compute thread stops the requests and keeps the
/// conversations; the HTTP side stops taking connections.
async fn stop_signal(work: std::sync::mpsc::Sender<Work>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    crate::log_info!("infllm: stopping");
    let _ = work.send(Work::Shutdown);
}

/// The compute thread: loads the model, says so through `ready`, serves.
fn compute_main(
    a: &ServeArgs,
    metrics: Arc<Metrics>,
    ready: oneshot::Sender<anyhow::Result<Defaults>>,
    work: std::sync::mpsc::Receiver<Work>,
) {
    match build_worker(a, metrics) {
        Ok((worker, defaults)) => {
            let _ = ready.send(Ok(defaults));
            worker.run(work);
        }
        Err(e) => {
            let _ = ready.send(Err(e));
        }
    }
}

fn build_worker(a: &ServeArgs, metrics: Arc<Metrics>) -> anyhow::Result<(Worker, Defaults)> {
    let (model, info) = a.run.load()?;
    let params = a.run.engine_params(&model.hp)?;
    let template = crate::cli::chat::template_for(&model, a.chat_template.as_deref(), a.chat_template_file.as_deref())?;
    info.log();
    let slots = Slots::new(a.run.engine(model, params)?, a.parallel)?;
    let n_ctx = slots.engine().n_ctx();
    let defaults = Defaults {
        sampling: a.sample.params(n_ctx)?,
        random_seed: a.sample.random_seed(),
        max_tokens: a.max_tokens(),
        n_ctx,
    };
    let mut worker = Worker {
        slots,
        pool: Pool::default(),
        spill: SpillDir::new(a.slot_save_path.as_deref())?,
        cache_ram: usize::try_from(a.cache_ram).ok().map(|mib| mib << 20),
        template,
        metrics,
        waiting: VecDeque::new(),
        active: Vec::new(),
    };
    worker.register_saved();
    Ok((worker, defaults))
}
