//! Text generation, shaped like llama.cpp's llama-completion: stdout carries
//! the prompt (unless --no-display-prompt) and the generated text, streamed;
//! load information and timings go to stderr.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;

use super::attn::{describe, AttnKind};
use super::chat::ChatArgs;
use super::interactive::{self, Turns};
use super::progress::Progress;
use super::prompt::{text_by, PromptSource, Rules};
use super::prompt_cache::PromptCache;
use super::sampling::SamplingArgs;
use super::token_display::TokenDisplayArgs;
use super::{limits, signals, RunArgs};
use crate::chat::conversation::reverse_prompt_at_end;
use crate::engine::Engine;
use crate::quote::quoted;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{Token, Utf8Stream};

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Prompt to start generation with (as in llama.cpp, the last of -p and
    /// -f counts)
    #[arg(short = 'p', long = "prompt", overrides_with = "file", help_heading = "Common")]
    pub prompt: Option<String>,
    /// File containing the prompt
    #[arg(short = 'f', long = "file", overrides_with = "prompt", help_heading = "Common")]
    pub file: Option<PathBuf>,
    /// Number of tokens to predict, -2..=16777216 (-1, -2 = until end of text
    /// or full context; InfLLM / stream without -c: at most 4096)
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true,
          value_parser = limits::predict(limits::MAX_TOKENS as i64), help_heading = "Common")]
    pub n_predict: i64,
    /// Print only the generated text, not the prompt
    #[arg(
        long = "no-display-prompt",
        overrides_with = "display_prompt",
        help_heading = "Common"
    )]
    pub no_display_prompt: bool,
    /// Print the prompt before the generated text [default]
    #[arg(
        long = "display-prompt",
        overrides_with = "no_display_prompt",
        help_heading = "Common"
    )]
    pub display_prompt: bool,
    /// Read \n \r \t \' \" \\ \xHH in the prompt (-p, -f) as the characters they
    /// name [default]
    #[arg(short = 'e', long = "escape", overrides_with = "no_escape", help_heading = "Common")]
    pub escape: bool,
    /// Take the prompt's backslashes as written
    #[arg(long = "no-escape", overrides_with = "escape", help_heading = "Common")]
    pub no_escape: bool,
    /// Completion mode: keep the memory after the prompt in FNAME; a
    /// later prompt that starts with this one reads only what is new
    #[arg(long = "prompt-cache", value_name = "FNAME", help_heading = "Common")]
    pub prompt_cache: Option<PathBuf>,
    /// Use --prompt-cache without changing it
    #[arg(long = "prompt-cache-ro", help_heading = "Common")]
    pub prompt_cache_ro: bool,
    /// Stop generating (conversation: end the answer) where this text
    /// appears; repeat for several
    #[arg(short = 'r', long = "reverse-prompt", value_name = "PROMPT", help_heading = "Common")]
    pub reverse_prompt: Vec<String>,
    #[command(flatten)]
    pub tokens: TokenDisplayArgs,

    #[command(flatten)]
    pub sample: SamplingArgs,

    #[command(flatten)]
    pub chat: ChatArgs,
}

impl GenerateArgs {
    /// Most tokens to generate: `-n`, or without it (-1) none where the
    /// context stops the text, and `DEFAULT_PREDICT` where it does not
    /// (InfLLM or stream without -c).
    pub fn predict_limit(&self) -> Option<usize> {
        let unbounded = self.run.attn.attn != AttnKind::Full && matches!(self.run.ctx_size, None | Some(0));
        match usize::try_from(self.n_predict) {
            Ok(n) => Some(n),
            Err(_) if unbounded => Some(limits::DEFAULT_PREDICT),
            Err(_) => None,
        }
    }

    /// How `-p` and `-f` are read (as llama.cpp reads them).
    pub fn prompt_rules(&self) -> Rules {
        Rules {
            escape: !self.no_escape,
        }
    }

    /// `-r`'s texts, their escapes processed as the prompt's are.
    pub fn reverse_prompts(&self) -> anyhow::Result<Vec<String>> {
        let rules = Some(self.prompt_rules());
        (self.reverse_prompt.iter())
            .map(|r| text_by(r, rules).with_context(|| format!("-r {}", quoted(r))))
            .collect()
    }

    /// The sampler's parameters, checked.
    pub fn sampling(&self, n_ctx: usize) -> anyhow::Result<SamplingParams> {
        self.sample.params(n_ctx)
    }
}

pub fn run(a: &GenerateArgs) -> anyhow::Result<()> {
    if a.run.devices.list_if_asked()? {
        return Ok(());
    }
    let has_prompt = a.prompt.is_some() || a.file.is_some();
    if a.chat.wanted(has_prompt) {
        return super::chat::run(a);
    }
    let c = &a.chat;
    anyhow::ensure!(
        c.system_prompt.is_none() && c.system_prompt_file.is_none(),
        "-sys / -sysf apply in conversation mode only: add -cnv"
    );
    anyhow::ensure!(
        c.session.is_none(),
        "--session keeps a conversation: add -cnv (in completion mode, --prompt-cache keeps a prompt's memory)"
    );
    anyhow::ensure!(
        !a.prompt_cache_ro || a.prompt_cache.is_some(),
        "--prompt-cache-ro needs --prompt-cache FNAME"
    );
    // Taken first: a cache another process holds stops the run before any work.
    let cache = (a.prompt_cache.as_deref())
        .map(|p| PromptCache::open(p, a.prompt_cache_ro))
        .transpose()?;
    // Interactive, stdin holds the user's inputs, not the prompt.
    let turns = (c.plain_interactive(has_prompt))
        .then(|| Turns::from_args(a))
        .transpose()?;
    let mut prompt = match turns {
        Some(_) => PromptSource::from_flags(&a.prompt, &a.file, Some(a.prompt_rules()))?
            .unwrap_or(PromptSource::Text(String::new())),
        None => PromptSource::from_flags_or_stdin(&a.prompt, &a.file, Some(a.prompt_rules()))?,
    };
    let (model, info) = a.run.load()?;
    let params = a.run.engine_params(&model.hp)?;
    let attn_info = describe(&params.attn, &model.hp);
    let saving = cache.as_ref().and_then(PromptCache::saves_to);
    let mut engine = a.run.engine_saving_to(model, params, saving)?;
    let n_ctx = engine.n_ctx();
    let n_prompt = prompt.count_tokens(engine.tokenizer(), n_ctx)?;
    anyhow::ensure!(
        n_prompt > 0 || turns.is_some(),
        "the prompt is empty and the model adds no BOS token: give a prompt with -p or -f"
    );
    let mut sampler = Sampler::new(a.sampling(n_ctx)?, engine.tokenizer())?;
    let stops = a.reverse_prompts()?;
    if let Some(cache) = &cache {
        cache.check(&engine)?;
    }
    info.log();
    crate::log_info!("infllm: {attn_info}");
    crate::log_info!(
        "infllm: n_ctx = {n_ctx}, n_ubatch = {}, threads = {}, prompt = {n_prompt} tokens, seed = {}",
        params.n_ubatch,
        threads_used(a.run.threads, params.n_threads),
        sampler.params.seed
    );
    a.tokens.log_prompt(&prompt, engine.tokenizer())?;

    signals::install()?;
    let mut out = std::io::stdout().lock();
    let t0 = Instant::now();
    let echo = (!a.no_display_prompt).then_some(&mut out as &mut dyn Write);
    let mut n_read = 0;
    let prefilled = match &cache {
        // Interactive without a prompt: the user starts.
        _ if n_prompt == 0 => Ok(Vec::new()),
        Some(cache) => prompt.read_within(engine.tokenizer(), n_ctx).and_then(|(text, _)| {
            let tokens = engine.tokenizer().encode(&text, true, true);
            cache.prefill((&mut engine, &mut sampler), (&text, &tokens), echo, &mut n_read)
        }),
        None => prefill(&mut engine, &mut sampler, (&prompt, n_prompt), echo, &mut n_read),
    };
    let prompt_time = t0.elapsed();

    let t1 = Instant::now();
    let limit = a.predict_limit().unwrap_or(usize::MAX);
    let mut n_eval = 0;
    let result = prefilled.and_then(|logits| match &turns {
        Some(turns) => {
            let logits = (n_prompt > 0).then_some(logits);
            let how = (logits, limit, &stops[..], a.tokens.special);
            interactive::converse((&mut engine, &mut sampler), how, turns, &mut out, &mut n_eval)
        }
        None => generate(
            (&mut engine, &mut sampler),
            (logits, limit, &stops, a.tokens.special),
            &mut out,
            &mut n_eval,
        ),
    });
    // A Ctrl-C still gets the timings of what ran, as in llama.cpp.
    if result.as_ref().err().is_none_or(|e| e.is::<signals::Stopped>()) {
        print_timings(n_read, prompt_time, n_eval, t1.elapsed());
        crate::log_info!("infllm: {}", engine.memory_report());
    }
    result
}

/// "2", or "2 (of -t 1000: one per core)" when -t asked for more than run.
pub fn threads_used(asked: Option<usize>, used: usize) -> String {
    match asked {
        Some(n) if n > used => format!("{used} (of -t {n}: one per core)"),
        _ => used.to_string(),
    }
}

/// Reads the prompt piece by piece into the engine, printing each piece to
/// `echo` as its tokens go in; returns the last logits. Whole steps are fed
/// as they come (the memory holds the prompt, not this function), so the
/// steps are those of one `eval` of the whole; a Ctrl-C is taken between them.
/// `done` counts the tokens read.
fn prefill(
    engine: &mut Engine,
    sampler: &mut Sampler,
    (prompt, n_prompt): (&PromptSource, usize),
    mut echo: Option<&mut dyn Write>,
    done: &mut usize,
) -> anyhow::Result<Vec<f32>> {
    let step = engine.step_tokens();
    let n_ctx = engine.n_ctx();
    let mut progress = Progress::new(n_prompt);
    let mut pieces = prompt.pieces(true, true)?;
    let mut pending = Vec::new();
    while let Some((text, tokens)) = pieces.next_piece(engine.tokenizer())? {
        if let Some(out) = echo.as_mut() {
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
        pending.extend(tokens);
        // The file may have grown since its tokens were counted.
        anyhow::ensure!(
            *done + pending.len() < n_ctx,
            "the prompt is too long: more than {n_ctx} tokens (-c): raise -c"
        );
        // All but the last step's worth, which `eval` takes with the logits.
        let whole = pending.len().saturating_sub(1) / step * step;
        for chunk in pending[..whole].chunks(step) {
            stop_if_interrupted(&mut progress)?;
            engine.feed(chunk, &mut |_, _| {})?;
            chunk.iter().for_each(|&t| sampler.accept(t));
            *done += chunk.len();
            progress.update(*done);
        }
        pending.drain(..whole);
    }
    stop_if_interrupted(&mut progress)?;
    let logits = engine.eval(&pending, false, &mut |n, _| progress.update(*done + n))?;
    *done += pending.len();
    pending.iter().for_each(|&t| sampler.accept(t));
    progress.finish();
    Ok(logits)
}

fn stop_if_interrupted(progress: &mut Progress) -> anyhow::Result<()> {
    if signals::interrupted() {
        progress.clear();
        println!();
        return Err(signals::Stopped::now().into());
    }
    Ok(())
}

/// Samples and prints up to `limit` tokens from `logits` on, stopping at
/// end of text, a reverse prompt (`stops`), a full context or a Ctrl-C;
/// `n_eval` counts the decode steps; `special` as in `write_text`.
fn generate(
    (engine, sampler): (&mut Engine, &mut Sampler),
    (logits, limit, stops, special): (Vec<f32>, usize, &[String], bool),
    out: &mut impl Write,
    n_eval: &mut usize,
) -> anyhow::Result<()> {
    let (end, _) = write_text((engine, sampler), (logits, limit, stops, special), out, n_eval)?;
    writeln!(out)?;
    out.flush()?;
    match end {
        End::ContextFull => crate::log_warn!("infllm: context full ({} tokens): stopping", engine.n_ctx()),
        End::Interrupted => return Err(signals::Stopped::now().into()),
        End::EndOfText | End::Limit | End::ReversePrompt => {}
    }
    Ok(())
}

/// Why a stretch of generated text ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    EndOfText,
    Limit,
    ReversePrompt,
    ContextFull,
    Interrupted,
}

/// Samples and prints tokens from `logits` on until one of `End`'s
/// reasons; returns it with the last token sampled (an end of text
/// included), which is not evaluated yet. `special` (-sp): special tokens
/// are printed, the end of text too (as llama.cpp).
pub fn write_text(
    (engine, sampler): (&mut Engine, &mut Sampler),
    (mut logits, limit, stops, special): (Vec<f32>, usize, &[String], bool),
    out: &mut impl Write,
    n_eval: &mut usize,
) -> anyhow::Result<(End, Option<Token>)> {
    if limit == 0 {
        return Ok((End::Limit, None));
    }
    let n_ctx = engine.n_ctx();
    let mut utf8 = Utf8Stream::new();
    let mut shown = String::new();
    let mut n_gen = 0usize;
    let end = loop {
        let t = sampler.sample(&logits);
        if engine.tokenizer().is_eog(t) {
            if special {
                write!(out, "{}", utf8.push(&engine.tokenizer().token_to_piece(t, true)))?;
            }
            break (End::EndOfText, t);
        }
        sampler.accept(t);
        n_gen += 1;
        let text = utf8.push(&engine.tokenizer().token_to_piece(t, special));
        write!(out, "{text}")?;
        out.flush()?;
        shown.push_str(&text);
        let end = if reverse_prompt_at_end(&shown, stops) {
            Some(End::ReversePrompt)
        } else if engine.n_past() + 1 > n_ctx {
            Some(End::ContextFull)
        } else if n_gen == limit {
            Some(End::Limit)
        } else {
            signals::interrupted().then_some(End::Interrupted)
        };
        if let Some(end) = end {
            break (end, t);
        }
        logits = engine.eval(&[t], false, &mut |_, _| {})?;
        *n_eval += 1;
    };
    write!(out, "{}", utf8.finish())?;
    out.flush()?;
    Ok((end.0, Some(end.1)))
}

/// llama.cpp-style timing lines on stderr.
pub fn print_timings(n_prompt: usize, prompt: Duration, n_gen: usize, gen: Duration) {
    let line = |label: &str, n: usize, unit: &str, d: Duration| {
        let ms = d.as_secs_f64() * 1e3;
        let per = if n > 0 { ms / n as f64 } else { 0.0 };
        let tps = if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
        crate::log_info!(
            "infllm: {label} = {ms:10.2} ms / {n:5} {unit} ({per:8.2} ms per token, {tps:8.2} tokens per second)"
        );
    };
    crate::log_info!("");
    line("prompt eval time", n_prompt, "tokens", prompt);
    line("       eval time", n_gen, "runs  ", gen);
}
