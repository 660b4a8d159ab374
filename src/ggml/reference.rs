//! llama.cpp itself, through its `llama_*` API: the reference the tests and
//! the bench compare infllm against. The engine never calls this module.

use std::ffi::CString;
use std::path::Path;
use std::ptr::NonNull;

use crate::placement::{GpuLayers, Offload, SplitMode};
use crate::sampling::{SamplingParams, Stage};

use super::{sys, GgmlType};

/// A model loaded by llama.cpp.
pub struct RefModel {
    raw: NonNull<sys::llama_model>,
}

// SAFETY: llama.cpp models are immutable after loading and may be shared
// between threads (llama.cpp's own servers do so).
unsafe impl Send for RefModel {}
unsafe impl Sync for RefModel {}

impl RefModel {
    /// Loads `path` on the CPU (memory-mapped, as llama.cpp does by default).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Self::load_on(path, &Offload::cpu())
    }

    /// Loads `path` without ggml's repacked CPU weight layouts (llama.cpp's
    /// `use_extra_bufts = false`): the weights stay in the file's layout and
    /// run through the same kernels as infllm's, which repacked kernels
    /// round differently (Q4_K, Q4_0, ...).
    pub fn load_unpacked(path: &Path) -> anyhow::Result<Self> {
        Self::load_on(
            path,
            &Offload {
                repack: false,
                ..Offload::cpu()
            },
        )
    }

    /// Loads `path` with the layers offloaded as `offload` asks (llama.cpp
    /// reads the same `-ngl`, `-sm`, `-mg`, `-ts` as infllm).
    pub fn load_on(path: &Path, offload: &Offload) -> anyhow::Result<Self> {
        let cpath = CString::new(path.to_string_lossy().as_bytes())?;
        let mut devices: Vec<sys::ggml_backend_dev_t> = offload.devices.iter().map(|d| d.raw()).collect();
        devices.push(std::ptr::null_mut());
        // llama.cpp reads llama_max_devices() proportions.
        let mut split = offload.tensor_split.clone();
        // SAFETY: a pure query.
        split.resize(unsafe { sys::llama_max_devices() }.max(split.len()), 0.0);
        // SAFETY: backend init is idempotent; params come from llama.cpp's
        // defaults; the path is a valid NUL-terminated string; `devices`
        // (null-terminated) and `split` outlive the load, which copies them.
        let raw = unsafe {
            sys::llama_backend_init();
            let mut params = sys::llama_model_default_params();
            params.devices = devices.as_mut_ptr();
            params.n_gpu_layers = match offload.gpu_layers {
                _ if offload.devices.is_empty() => 0,
                GpuLayers::Auto | GpuLayers::All => -1,
                GpuLayers::Count(n) => i32::try_from(n).unwrap_or(i32::MAX),
            };
            params.split_mode = match offload.split {
                SplitMode::None => sys::LLAMA_SPLIT_MODE_NONE,
                SplitMode::Layer => sys::LLAMA_SPLIT_MODE_LAYER,
            };
            params.main_gpu = offload.main_gpu as i32;
            params.tensor_split = split.as_ptr();
            params.use_extra_bufts = offload.repack;
            sys::llama_model_load_from_file(cpath.as_ptr(), params)
        };
        let raw = NonNull::new(raw).ok_or_else(|| anyhow::anyhow!("llama.cpp failed to load {}", path.display()))?;
        Ok(Self { raw })
    }

    fn vocab(&self) -> *const sys::llama_vocab {
        // SAFETY: the model pointer is valid for the life of `self`.
        unsafe { sys::llama_model_get_vocab(self.raw.as_ptr()) }
    }

    pub fn n_vocab(&self) -> usize {
        // SAFETY: valid vocab pointer.
        unsafe { sys::llama_vocab_n_tokens(self.vocab()) as usize }
    }

    /// llama.cpp's tokenization of `text`.
    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<i32> {
        let mut out = vec![0i32; text.len() + 8];
        loop {
            // SAFETY: `text` is passed with its byte length (no NUL needed);
            // `out` has room for `out.len()` tokens.
            let n = unsafe {
                sys::llama_tokenize(
                    self.vocab(),
                    text.as_ptr().cast(),
                    text.len() as i32,
                    out.as_mut_ptr(),
                    out.len() as i32,
                    add_special,
                    parse_special,
                )
            };
            if n >= 0 {
                out.truncate(n as usize);
                return out;
            }
            out.resize((-n) as usize, 0);
        }
    }

    /// The bytes of one token's piece (special tokens rendered when `special`).
    pub fn token_to_piece(&self, token: i32, special: bool) -> Vec<u8> {
        let mut buf = vec![0u8; 64];
        loop {
            // SAFETY: `buf` has room for `buf.len()` bytes.
            let n = unsafe {
                sys::llama_token_to_piece(
                    self.vocab(),
                    token,
                    buf.as_mut_ptr().cast(),
                    buf.len() as i32,
                    0,
                    special,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return buf;
            }
            buf.resize((-n) as usize, 0);
        }
    }

    /// llama.cpp's detokenization of `tokens`.
    pub fn detokenize(&self, tokens: &[i32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        let mut buf = vec![0u8; tokens.len() * 16 + 16];
        loop {
            // SAFETY: `tokens` and `buf` are valid for their lengths.
            let n = unsafe {
                sys::llama_detokenize(
                    self.vocab(),
                    tokens.as_ptr(),
                    tokens.len() as i32,
                    buf.as_mut_ptr().cast(),
                    buf.len() as i32,
                    remove_special,
                    unparse_special,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return buf;
            }
            buf.resize((-n) as usize, 0);
        }
    }

    pub fn is_eog(&self, token: i32) -> bool {
        // SAFETY: valid vocab pointer.
        unsafe { sys::llama_vocab_is_eog(self.vocab(), token) }
    }
}

impl Drop for RefModel {
    fn drop(&mut self) {
        // SAFETY: we own the model; contexts borrow it and are dropped first.
        unsafe { sys::llama_model_free(self.raw.as_ptr()) }
    }
}

/// Settings of a llama.cpp context.
#[derive(Debug, Clone, Copy)]
pub struct RefParams {
    pub n_ctx: u32,
    pub n_batch: u32,
    pub n_ubatch: u32,
    pub n_threads: i32,
    /// Flash attention on / off; None: llama.cpp's default (auto).
    pub flash_attn: Option<bool>,
    /// KV cache types (K, V); None: llama.cpp's default (f16).
    pub cache_types: Option<(GgmlType, GgmlType)>,
}

/// A llama.cpp inference context (its own KV cache).
pub struct RefContext<'m> {
    raw: NonNull<sys::llama_context>,
    model: &'m RefModel,
    n_past: i32,
}

impl<'m> RefContext<'m> {
    /// A context with llama.cpp's defaults (flash attention auto, f16 KV).
    pub fn new(model: &'m RefModel, p: RefParams) -> anyhow::Result<Self> {
        // SAFETY: default params with plain numeric fields changed; the model
        // outlives the context through the `'m` borrow.
        let raw = unsafe {
            let mut params = sys::llama_context_default_params();
            params.n_ctx = p.n_ctx;
            params.n_batch = p.n_batch;
            params.n_ubatch = p.n_ubatch;
            params.n_threads = p.n_threads;
            params.n_threads_batch = p.n_threads;
            params.no_perf = true;
            if let Some((k, v)) = p.cache_types {
                params.type_k = k.id();
                params.type_v = v.id();
            }
            if let Some(fa) = p.flash_attn {
                params.flash_attn_type = if fa {
                    sys::LLAMA_FLASH_ATTN_TYPE_ENABLED
                } else {
                    sys::LLAMA_FLASH_ATTN_TYPE_DISABLED
                };
            }
            sys::llama_init_from_model(model.raw.as_ptr(), params)
        };
        let raw = NonNull::new(raw).ok_or_else(|| anyhow::anyhow!("llama.cpp failed to create a context"))?;
        Ok(Self { raw, model, n_past: 0 })
    }

    pub fn n_past(&self) -> usize {
        self.n_past as usize
    }

    /// Forgets everything in the KV cache.
    pub fn clear(&mut self) {
        // SAFETY: valid context; clearing memory (data too) is always allowed.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.raw.as_ptr()), true) };
        self.n_past = 0;
    }

    /// Appends `tokens` (in batches of at most `n_batch`) and returns the logits
    /// of every token when `all_logits`, else of the last one only.
    pub fn decode(&mut self, tokens: &[i32], n_batch: usize, all_logits: bool) -> anyhow::Result<Vec<f32>> {
        let n_vocab = self.model.n_vocab();
        let mut out = Vec::new();
        for (ci, chunk) in tokens.chunks(n_batch.max(1)).enumerate() {
            let last_chunk = (ci + 1) * n_batch.max(1) >= tokens.len();
            // SAFETY: the batch is allocated for `chunk.len()` tokens with one
            // sequence id each, every field is filled before `llama_decode`,
            // and it is freed on every path below.
            unsafe {
                let batch = sys::llama_batch_init(chunk.len() as i32, 0, 1);
                let mut b = batch;
                b.n_tokens = chunk.len() as i32;
                for (i, &t) in chunk.iter().enumerate() {
                    *b.token.add(i) = t;
                    *b.pos.add(i) = self.n_past + i as i32;
                    *b.n_seq_id.add(i) = 1;
                    **b.seq_id.add(i) = 0;
                    *b.logits.add(i) = (all_logits || (last_chunk && i + 1 == chunk.len())) as i8;
                }
                let rc = sys::llama_decode(self.raw.as_ptr(), b);
                if rc != 0 {
                    sys::llama_batch_free(batch);
                    anyhow::bail!("llama_decode failed with code {rc}");
                }
                for (i, _) in chunk.iter().enumerate() {
                    if *b.logits.add(i) != 0 {
                        let p = sys::llama_get_logits_ith(self.raw.as_ptr(), i as i32);
                        out.extend_from_slice(std::slice::from_raw_parts(p, n_vocab));
                    }
                }
                sys::llama_batch_free(batch);
            }
            self.n_past += chunk.len() as i32;
        }
        Ok(out)
    }
}

impl Drop for RefContext<'_> {
    fn drop(&mut self) {
        // SAFETY: we own the context.
        unsafe { sys::llama_free(self.raw.as_ptr()) }
    }
}

/// llama.cpp's sampler chain for `p`, built as its common sampler
/// (`common_sampler_init`) builds it: logit biases (and, for `ignore_eos`,
/// -inf on the end-of-generation tokens), then the `--samplers` stages and
/// `dist`, or temperature and Mirostat. DRY with sequence breakers and
/// `ignore_eos` need `model`'s vocabulary.
pub struct RefSampler {
    raw: NonNull<sys::llama_sampler>,
}

impl RefSampler {
    pub fn common(p: &SamplingParams, n_vocab: usize, model: Option<&RefModel>) -> anyhow::Result<Self> {
        // SAFETY: a chain from llama.cpp's default parameters; it owns what
        // is added to it and is freed by `Drop`.
        let raw = unsafe { sys::llama_sampler_chain_init(sys::llama_sampler_chain_default_params()) };
        let chain = Self {
            raw: NonNull::new(raw).ok_or_else(|| anyhow::anyhow!("llama.cpp failed to make a sampler chain"))?,
        };
        let n = n_vocab as i32;
        let mut biases: Vec<sys::llama_logit_bias> = p
            .logit_bias
            .iter()
            .map(|&(token, bias)| sys::llama_logit_bias { token, bias })
            .collect();
        if p.ignore_eos {
            let m = model.ok_or_else(|| anyhow::anyhow!("ignore_eos needs the model's vocabulary"))?;
            let eog = (0..n).filter(|&t| m.is_eog(t));
            biases.extend(eog.map(|token| sys::llama_logit_bias {
                token,
                bias: f32::NEG_INFINITY,
            }));
        }
        if !biases.is_empty() {
            // SAFETY: llama.cpp copies the biases.
            chain.add(unsafe { sys::llama_sampler_init_logit_bias(n, biases.len() as i32, biases.as_ptr()) })?;
        }
        // SAFETY (each init below): plain numeric arguments.
        match p.mirostat {
            0 => {
                for &stage in &p.samplers {
                    chain.add(Self::stage(stage, p, n, model)?)?;
                }
                chain.add(unsafe { sys::llama_sampler_init_dist(p.seed) })?;
            }
            m => {
                chain.add(unsafe { sys::llama_sampler_init_temp(p.temp) })?;
                chain.add(match m {
                    1 => unsafe { sys::llama_sampler_init_mirostat(n, p.seed, p.mirostat_ent, p.mirostat_lr, 100) },
                    _ => unsafe { sys::llama_sampler_init_mirostat_v2(p.seed, p.mirostat_ent, p.mirostat_lr) },
                })?;
            }
        }
        Ok(chain)
    }

    fn stage(
        s: Stage,
        p: &SamplingParams,
        n: i32,
        model: Option<&RefModel>,
    ) -> anyhow::Result<*mut sys::llama_sampler> {
        let last_n = |w: usize| i32::try_from(w).unwrap_or(i32::MAX);
        // SAFETY (each init): plain numeric arguments; DRY's below.
        Ok(match s {
            Stage::Penalties => unsafe {
                sys::llama_sampler_init_penalties(
                    n,
                    last_n(p.repeat_last_n),
                    p.repeat_penalty,
                    p.frequency_penalty,
                    p.presence_penalty,
                )
            },
            Stage::Dry => Self::dry(p, model)?,
            Stage::TopNSigma => unsafe { sys::llama_sampler_init_top_n_sigma(p.top_n_sigma) },
            Stage::TopK => unsafe { sys::llama_sampler_init_top_k(p.top_k.min(i32::MAX as usize) as i32) },
            Stage::TypP => unsafe { sys::llama_sampler_init_typical(p.typical_p, 0) },
            Stage::TopP => unsafe { sys::llama_sampler_init_top_p(p.top_p, 0) },
            Stage::MinP => unsafe { sys::llama_sampler_init_min_p(p.min_p, 0) },
            Stage::Xtc => unsafe { sys::llama_sampler_init_xtc(p.xtc_probability, p.xtc_threshold, 0, p.seed) },
            Stage::Temperature => unsafe { sys::llama_sampler_init_temp_ext(p.temp, 0.0, 1.0) },
        })
    }

    fn dry(p: &SamplingParams, model: Option<&RefModel>) -> anyhow::Result<*mut sys::llama_sampler> {
        let breakers: Vec<CString> = p
            .dry_sequence_breakers
            .iter()
            .map(|b| CString::new(b.as_bytes()))
            .collect::<Result<_, _>>()?;
        let mut ptrs: Vec<*const std::os::raw::c_char> = breakers.iter().map(|b| b.as_ptr()).collect();
        let vocab = match (model, ptrs.is_empty()) {
            (Some(m), _) => m.vocab(),
            (None, true) => std::ptr::null(),
            (None, false) => anyhow::bail!("DRY's sequence breakers need the model's vocabulary"),
        };
        // SAFETY: `vocab` is the model's (alive for this call) or null with
        // no breakers (then unread); the breakers are NUL-terminated and
        // read during the call only.
        Ok(unsafe {
            sys::llama_sampler_init_dry(
                vocab,
                p.dry_multiplier,
                p.dry_base,
                p.dry_allowed_length,
                i32::try_from(p.dry_penalty_last_n).unwrap_or(i32::MAX),
                ptrs.as_mut_ptr(),
                ptrs.len(),
            )
        })
    }

    fn add(&self, s: *mut sys::llama_sampler) -> anyhow::Result<()> {
        anyhow::ensure!(!s.is_null(), "llama.cpp failed to make a sampler");
        // SAFETY: both valid; the chain takes ownership of `s`.
        unsafe { sys::llama_sampler_chain_add(self.raw.as_ptr(), s) };
        Ok(())
    }

    /// The chain's pick from `logits` (`llama_sampler_apply` on them in
    /// vocabulary order, then the selected candidate).
    pub fn sample(&mut self, logits: &[f32]) -> i32 {
        let mut data = token_data(logits);
        let mut arr = token_array(&mut data);
        // SAFETY: `arr` points into `data`, alive across the call; stages
        // only shrink it or move its start forward within `data`, and the
        // chain's last stage selects an index within the result.
        unsafe {
            sys::llama_sampler_apply(self.raw.as_ptr(), &mut arr);
            assert!(
                arr.selected >= 0 && (arr.selected as usize) < arr.size,
                "llama.cpp selected nothing"
            );
            (*arr.data.add(arr.selected as usize)).id
        }
    }

    /// Tells every stage that `token` is now part of the text.
    pub fn accept(&mut self, token: i32) {
        // SAFETY: valid chain.
        unsafe { sys::llama_sampler_accept(self.raw.as_ptr(), token) }
    }
}

impl Drop for RefSampler {
    fn drop(&mut self) {
        // SAFETY: we own the chain (and through it its stages).
        unsafe { sys::llama_sampler_free(self.raw.as_ptr()) }
    }
}

/// `logits` as llama.cpp's candidates, in vocabulary order.
fn token_data(logits: &[f32]) -> Vec<sys::llama_token_data> {
    let candidate = |(i, &logit): (usize, &f32)| sys::llama_token_data {
        id: i as i32,
        logit,
        p: 0.0,
    };
    logits.iter().enumerate().map(candidate).collect()
}

/// The array a sampler works on, over `data` (which must outlive its use).
fn token_array(data: &mut [sys::llama_token_data]) -> sys::llama_token_data_array {
    sys::llama_token_data_array {
        data: data.as_mut_ptr(),
        size: data.len(),
        selected: -1,
        sorted: false,
    }
}

/// llama.cpp's GBNF grammar sampler (`llama_sampler_init_grammar`, start
/// rule `root`) over `model`'s vocabulary.
pub struct RefGrammar<'m> {
    raw: NonNull<sys::llama_sampler>,
    _model: std::marker::PhantomData<&'m RefModel>,
}

impl<'m> RefGrammar<'m> {
    pub fn new(model: &'m RefModel, gbnf: &str) -> anyhow::Result<Self> {
        let text = CString::new(gbnf)?;
        // SAFETY: the vocabulary outlives the sampler (`'m`); both strings
        // are NUL-terminated and copied during the call; null on a bad grammar.
        let raw = unsafe { sys::llama_sampler_init_grammar(model.vocab(), text.as_ptr(), c"root".as_ptr()) };
        Ok(Self {
            raw: NonNull::new(raw).ok_or_else(|| anyhow::anyhow!("llama.cpp refused the grammar"))?,
            _model: std::marker::PhantomData,
        })
    }

    /// Sets -inf on the logits of the tokens the grammar refuses now.
    pub fn mask(&mut self, logits: &mut [f32]) {
        let mut data = token_data(logits);
        let mut arr = token_array(&mut data);
        // SAFETY: `arr` points into `data`, alive across the call; the
        // grammar sampler only changes logits in place.
        unsafe { sys::llama_sampler_apply(self.raw.as_ptr(), &mut arr) };
        data.iter().for_each(|d| logits[d.id as usize] = d.logit);
    }

    /// Whether the grammar takes `token` now (llama.cpp's one-token check).
    pub fn allows(&mut self, token: i32) -> bool {
        let mut one = [sys::llama_token_data {
            id: token,
            logit: 1.0,
            p: 0.0,
        }];
        let mut arr = token_array(&mut one);
        // SAFETY: `arr` points at `one`, alive across the call.
        unsafe { sys::llama_sampler_apply(self.raw.as_ptr(), &mut arr) };
        one[0].logit != f32::NEG_INFINITY
    }

    /// Advances the grammar past `token`.
    pub fn accept(&mut self, token: i32) {
        // SAFETY: valid sampler.
        unsafe { sys::llama_sampler_accept(self.raw.as_ptr(), token) }
    }
}

impl Drop for RefGrammar<'_> {
    fn drop(&mut self) {
        // SAFETY: we own the sampler.
        unsafe { sys::llama_sampler_free(self.raw.as_ptr()) }
    }
}

/// llama.cpp's rendering of `messages` (role, content) with its built-in
/// chat template `name` (`llama_chat_apply_template`, no model needed).
pub fn chat_apply_template(name: &str, messages: &[(&str, &str)], add_assistant: bool) -> anyhow::Result<String> {
    let tmpl = CString::new(name)?;
    let texts = messages
        .iter()
        .map(|&(role, content)| Ok((CString::new(role)?, CString::new(content)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let chat: Vec<sys::llama_chat_message> = texts
        .iter()
        .map(|(role, content)| sys::llama_chat_message {
            role: role.as_ptr(),
            content: content.as_ptr(),
        })
        .collect();
    let mut buf = vec![0u8; 256];
    loop {
        let len = i32::try_from(buf.len())?;
        // SAFETY: `tmpl` and every role and content are NUL-terminated and
        // outlive the call (`texts`); `chat` holds `chat.len()` messages;
        // llama.cpp writes at most `len` bytes into `buf`.
        let n = unsafe {
            sys::llama_chat_apply_template(
                tmpl.as_ptr(),
                chat.as_ptr(),
                chat.len(),
                add_assistant,
                buf.as_mut_ptr().cast(),
                len,
            )
        };
        let n = usize::try_from(n).map_err(|_| anyhow::anyhow!("llama.cpp knows no chat template {name:?}"))?;
        if n <= buf.len() {
            buf.truncate(n);
            return Ok(String::from_utf8(buf)?);
        }
        buf.resize(n, 0);
    }
}

/// The names of llama.cpp's built-in chat templates (`llama_chat_builtin_templates`).
pub fn chat_builtin_templates() -> Vec<String> {
    // SAFETY: with a length of 0 llama.cpp writes nothing and returns the count.
    let count = unsafe { sys::llama_chat_builtin_templates(std::ptr::null_mut(), 0) };
    let mut names = vec![std::ptr::null(); usize::try_from(count).unwrap_or(0)];
    // SAFETY: `names` has room for the `names.len()` pointers llama.cpp writes;
    // they point to its static map's keys, NUL-terminated and never freed.
    unsafe { sys::llama_chat_builtin_templates(names.as_mut_ptr(), names.len()) };
    names
        .into_iter()
        // SAFETY: each pointer is one of those keys (see above).
        .map(|p| unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned())
        .collect()
}
