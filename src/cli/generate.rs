//! Text generation, shaped like llama.cpp's llama-completion: stdout carries
//! the prompt (unless --no-display-prompt) and the generated text, streamed;
//! load information and timings go to stderr.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;

use super::attn::describe;
use super::chat::ChatArgs;
use super::progress::Progress;
use super::{read_prompt, read_stdin, RunArgs};
use crate::engine::Engine;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::Utf8Stream;

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Prompt to start generation with
    #[arg(short = 'p', long = "prompt", help_heading = "Common")]
    pub prompt: Option<String>,
    /// File containing the prompt
    #[arg(short = 'f', long = "file", help_heading = "Common")]
    pub file: Option<PathBuf>,
    /// Number of tokens to predict (-1 = until end of text or full context)
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true, help_heading = "Common")]
    pub n_predict: i64,
    /// Print only the generated text, not the prompt
    #[arg(long = "no-display-prompt", help_heading = "Common")]
    pub no_display_prompt: bool,

    /// Temperature (0 = greedy)
    #[arg(long, default_value_t = 0.8, help_heading = "Sampling")]
    pub temp: f32,
    /// Top-k sampling (0 = off)
    #[arg(long = "top-k", default_value_t = 40, help_heading = "Sampling")]
    pub top_k: usize,
    /// Top-p (nucleus) sampling (1.0 = off)
    #[arg(long = "top-p", default_value_t = 0.95, help_heading = "Sampling")]
    pub top_p: f32,
    /// Min-p sampling (0.0 = off)
    #[arg(long = "min-p", default_value_t = 0.05, help_heading = "Sampling")]
    pub min_p: f32,
    /// Penalty for repeated tokens (1.0 = off)
    #[arg(long = "repeat-penalty", default_value_t = 1.0, help_heading = "Sampling")]
    pub repeat_penalty: f32,
    /// Tokens considered by the repeat penalty (-1 = context size)
    #[arg(
        long = "repeat-last-n",
        default_value_t = 64,
        allow_negative_numbers = true,
        help_heading = "Sampling"
    )]
    pub repeat_last_n: i64,
    /// Random seed (-1 = random)
    #[arg(short = 's', long = "seed", default_value_t = -1, allow_negative_numbers = true, help_heading = "Sampling")]
    pub seed: i64,

    #[command(flatten)]
    pub chat: ChatArgs,
}

impl GenerateArgs {
    pub fn sampling(&self, n_ctx: usize) -> SamplingParams {
        let seed = if self.seed < 0 {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        } else {
            self.seed as u64
        };
        SamplingParams {
            temp: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: if self.repeat_last_n < 0 {
                n_ctx
            } else {
                self.repeat_last_n as usize
            },
            seed,
        }
    }
}

pub fn run(a: &GenerateArgs) -> anyhow::Result<()> {
    if a.run.devices.list_if_asked()? {
        return Ok(());
    }
    if a.chat.wanted(a.prompt.is_some() || a.file.is_some()) {
        return super::chat::run(a);
    }
    let prompt = prompt_text(a)?;
    let (model, info) = a.run.load()?;
    let tokens = model.tokenizer.encode(&prompt, true, true);
    anyhow::ensure!(
        !tokens.is_empty(),
        "the prompt is empty and the model adds no BOS token: give a prompt with -p or -f"
    );
    let params = a.run.engine_params(&model.hp)?;
    let attn_info = describe(&params.attn, &model.hp);
    let mut engine = Engine::new(model, params)?;
    let n_ctx = engine.n_ctx();
    anyhow::ensure!(
        tokens.len() < n_ctx,
        "the prompt is too long: {} tokens, but the context holds {n_ctx} (-c): raise -c",
        tokens.len(),
    );
    let mut sampler = Sampler::new(a.sampling(n_ctx));
    eprintln!("{info}");
    eprintln!("infllm: {attn_info}");
    eprintln!(
        "infllm: n_ctx = {n_ctx}, n_ubatch = {}, threads = {}, prompt = {} tokens, seed = {}",
        params.n_ubatch,
        params.n_threads,
        tokens.len(),
        sampler.params.seed
    );

    let mut out = std::io::stdout().lock();
    if !a.no_display_prompt {
        write!(out, "{prompt}")?;
        out.flush()?;
    }
    let t0 = Instant::now();
    let mut progress = Progress::new(tokens.len());
    let logits = engine.eval(&tokens, false, &mut |done, _| progress.update(done))?;
    progress.finish();
    let prompt_time = t0.elapsed();
    tokens.iter().for_each(|&t| sampler.accept(t));

    let t1 = Instant::now();
    let limit = if a.n_predict < 0 {
        usize::MAX
    } else {
        a.n_predict as usize
    };
    let n_eval = generate(&mut engine, &mut sampler, logits, limit, &mut out)?;
    let gen_time = t1.elapsed();
    print_timings(tokens.len(), prompt_time, n_eval, gen_time);
    eprintln!("infllm: {}", engine.memory_report());
    Ok(())
}

/// The prompt: -p, -f, or without them a piped stdin.
fn prompt_text(a: &GenerateArgs) -> anyhow::Result<String> {
    Ok(match read_prompt(&a.prompt, &a.file)? {
        Some(p) => p,
        None if !std::io::stdin().is_terminal() => read_stdin()?,
        None => String::new(),
    })
}

/// Samples and prints up to `limit` tokens from `logits` on, stopping at
/// end of text or a full context; returns the decode steps run.
fn generate(
    engine: &mut Engine,
    sampler: &mut Sampler,
    mut logits: Vec<f32>,
    limit: usize,
    out: &mut impl Write,
) -> anyhow::Result<usize> {
    let n_ctx = engine.n_ctx();
    let mut utf8 = Utf8Stream::new();
    let (mut n_gen, mut n_eval) = (0usize, 0usize);
    while n_gen < limit {
        let t = sampler.sample(&logits);
        if engine.tokenizer().is_eog(t) {
            break;
        }
        sampler.accept(t);
        n_gen += 1;
        write!(out, "{}", utf8.push(&engine.tokenizer().token_to_piece(t, false)))?;
        out.flush()?;
        if engine.n_past() + 1 > n_ctx {
            eprintln!("\ninfllm: context full ({n_ctx} tokens): stopping");
            break;
        }
        if n_gen == limit {
            break;
        }
        logits = engine.eval(&[t], false, &mut |_, _| {})?;
        n_eval += 1;
    }
    write!(out, "{}", utf8.finish())?;
    writeln!(out)?;
    out.flush()?;
    Ok(n_eval)
}

/// llama.cpp-style timing lines on stderr.
pub fn print_timings(n_prompt: usize, prompt: Duration, n_gen: usize, gen: Duration) {
    let line = |label: &str, n: usize, unit: &str, d: Duration| {
        let ms = d.as_secs_f64() * 1e3;
        let per = if n > 0 { ms / n as f64 } else { 0.0 };
        let tps = if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
        eprintln!(
            "infllm: {label} = {ms:10.2} ms / {n:5} {unit} ({per:8.2} ms per token, {tps:8.2} tokens per second)"
        );
    };
    eprintln!();
    line("prompt eval time", n_prompt, "tokens", prompt);
    line("       eval time", n_gen, "runs  ", gen);
}
