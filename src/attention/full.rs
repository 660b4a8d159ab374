//! Standard causal attention over an f16 KV cache of fixed size `-c`, as
//! llama.cpp computes it: with ggml's fused flash-attention kernel (its
//! default on CPU), or with separate matmuls and softmax (`-fa off`), where
//! values are cached transposed.

use half::f16;

use super::state::{read_ranges, read_ranges_from, Ranges};
use super::{
    alloc_per_layer, Attention, AttentionError, LayerAttn, LayerQkv, MemoryReport, Settings, Snapshot, StateReader,
    StateWriter, StepAttention,
};
use crate::compute::Step;
use crate::ggml::{Buffer, BufferType, Context, GgmlType, Tensor, TensorId};

/// llama.cpp pads the attended KV length to 256 cells; so do we, which also
/// keeps the graph shape stable for 256 decode steps.
const KV_PAD: usize = 256;

pub struct FullAttention {
    /// The cache, one buffer per device that holds layers.
    buffers: Vec<Buffer>,
    ctx: Context,
    k: Vec<TensorId>,
    /// [n_embd_kv, n_ctx] with flash attention, else transposed [n_ctx, n_embd_kv].
    v: Vec<TensorId>,
    /// Per layer: sliding window in tokens (0: attends everything).
    layer_window: Vec<usize>,
    n_embd_kv: usize,
    n_past: usize,
    /// With `n_ctx` rounded up to the padding.
    p: CacheParams,
}

/// The shape and kind of a cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheParams {
    pub n_ctx: usize,
    pub head_dim: usize,
    pub n_head_kv: usize,
    /// Values cached row by row for ggml's fused kernel, else transposed.
    pub flash_attn: bool,
    pub type_k: GgmlType,
    pub type_v: GgmlType,
}

impl CacheParams {
    fn validate(&self) -> anyhow::Result<()> {
        for (flag, t) in [("-ctk", self.type_k), ("-ctv", self.type_v)] {
            cache_type(flag, t.name())?;
            anyhow::ensure!(
                (self.head_dim as u64).is_multiple_of(t.block_size()),
                "{flag} {}: the head size {} is not a whole number of its blocks",
                t.name(),
                self.head_dim
            );
        }
        // Transposed values are written one element at a time.
        anyhow::ensure!(
            self.flash_attn || self.type_v.block_size() == 1,
            "-ctv {}: a quantized V cache needs flash attention (-fa on)",
            self.type_v.name()
        );
        Ok(())
    }
}

/// `-ctk` / `-ctv`'s type `name`, if it is one of `CACHE_TYPES`.
pub fn cache_type(flag: &str, name: &str) -> anyhow::Result<GgmlType> {
    GgmlType::by_name(name)
        .filter(|t| CACHE_TYPES.contains(t))
        .ok_or_else(|| {
            let names = CACHE_TYPES.map(GgmlType::name).join(", ");
            anyhow::anyhow!("{flag} {name}: not a cache type (use one of {names})")
        })
}

/// The cache types llama.cpp accepts for `-ctk` / `-ctv`.
pub const CACHE_TYPES: [GgmlType; 8] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
];

/// Per-step inputs shared by all layers.
pub struct FullInputs<'a> {
    pos: Tensor<'a>,
    mask: Tensor<'a>,
    /// The mask of sliding-window layers, if the model has any.
    mask_window: Option<Tensor<'a>>,
    rows: Tensor<'a>,
    /// Element indices of the new values in the transposed cache (no flash attention).
    v_cells: Option<Tensor<'a>>,
    n_kv: usize,
}

impl FullAttention {
    /// A cache for `p.n_ctx` tokens (rounded up to the padding) over the
    /// layers, whose sliding windows `layer_window` gives (0: none), each
    /// layer's in the memory `layer_buft` names.
    pub fn new(p: CacheParams, layer_window: &[usize], layer_buft: &[BufferType]) -> anyhow::Result<Self> {
        p.validate()?;
        let n_layer = layer_window.len();
        let n_ctx = p.n_ctx.max(1).next_multiple_of(KV_PAD);
        let n_embd_kv = p.head_dim * p.n_head_kv;
        let ctx = Context::new(2 * n_layer, 0);
        let (e, c) = (n_embd_kv as i64, n_ctx as i64);
        let mut k = Vec::with_capacity(n_layer);
        let mut v = Vec::with_capacity(n_layer);
        for il in 0..n_layer {
            k.push(ctx.id(ctx.new_tensor(p.type_k, &[e, c]).set_name(&format!("cache_k_l{il}"))));
            let v_shape = if p.flash_attn { [e, c] } else { [c, e] };
            v.push(ctx.id(ctx.new_tensor(p.type_v, &v_shape).set_name(&format!("cache_v_l{il}"))));
        }
        let per_layer: Vec<Vec<TensorId>> = k.iter().zip(&v).map(|(&k, &v)| vec![k, v]).collect();
        let buffers = alloc_per_layer(&ctx, &per_layer, layer_buft)?;
        Ok(Self {
            buffers,
            ctx,
            k,
            v,
            layer_window: layer_window.to_vec(),
            n_embd_kv,
            n_past: 0,
            p: CacheParams { n_ctx, ..p },
        })
    }

    /// The cached keys and values of the tokens so far (rows before
    /// `n_past` are never rewritten, so a snapshot needs only the count).
    fn cache_bytes_used(&self) -> Vec<u8> {
        read_ranges(self.ranges(self.n_past))
    }

    /// Goes back to `n_past` tokens (cells below it are never rewritten).
    fn restore(&mut self, n_past: usize) -> anyhow::Result<()> {
        anyhow::ensure!(n_past <= self.p.n_ctx, "the saved text is longer than the context (-c)");
        anyhow::ensure!(n_past <= self.n_past, "no cached state to go forward to");
        self.n_past = n_past;
        Ok(())
    }

    /// Tensor byte ranges holding the first `n` tokens.
    fn ranges(&self, n: usize) -> Ranges<'_> {
        let e = self.n_embd_kv;
        let row = |t: GgmlType| t.row_size(e as u64) as usize;
        let mut out = Vec::new();
        for (&k, &v) in self.k.iter().zip(&self.v) {
            out.push((self.ctx.tensor(k), 0, n * row(self.p.type_k)));
            let v = self.ctx.tensor(v);
            if self.p.flash_attn {
                out.push((v, 0, n * row(self.p.type_v)));
            } else {
                let size = self.p.type_v.type_size() as usize;
                out.extend((0..e).map(|c| (v, c * self.p.n_ctx * size, n * size)));
            }
        }
        out
    }

    /// Declares this step's positions, causal mask and cache rows.
    fn inputs<'a>(&self, step: &mut Step<'a>, n_tokens: usize) -> Result<FullInputs<'a>, AttentionError> {
        let end = self.n_past + n_tokens;
        if end > self.p.n_ctx {
            return Err(AttentionError::ContextFull {
                needed: end,
                n_ctx: self.p.n_ctx,
            });
        }
        let n_kv = end.next_multiple_of(KV_PAD).min(self.p.n_ctx);
        let pos: Vec<i32> = (self.n_past..end).map(|p| p as i32).collect();
        let t = n_tokens as i64;
        // Query i (position n_past + i) sees key j if j <= its position and,
        // with a sliding window w, if the distance is below w.
        let mut mask = |window: usize, name: &str| {
            let visible = |x: usize| {
                let (q, j) = (self.n_past + x / n_kv, x % n_kv);
                j <= q && (window == 0 || q - j < window)
            };
            // The fused kernel takes an f16 mask, the softmax an f32 one (as in llama.cpp).
            if self.p.flash_attn {
                let m = (0..n_tokens * n_kv)
                    .map(|x| if visible(x) { f16::ZERO } else { f16::NEG_INFINITY })
                    .collect();
                step.input_f16(name, &[n_kv as i64, t], m)
            } else {
                let m = (0..n_tokens * n_kv)
                    .map(|x| if visible(x) { 0.0 } else { f32::NEG_INFINITY })
                    .collect();
                step.input_f32(name, &[n_kv as i64, t], m)
            }
        };
        let window = self.layer_window.iter().copied().max().unwrap_or(0);
        let mask_window = if window > 0 {
            Some(mask(window, "kq_mask_swa"))
        } else {
            None
        };
        let mask = mask(0, "kq_mask");
        // Transposed V: value (token p, channel c) is element c * n_ctx + p.
        let v_cells = (!self.p.flash_attn).then(|| {
            let cells = (0..self.n_embd_kv)
                .flat_map(|c| pos.iter().map(move |&p| (c * self.p.n_ctx) as i32 + p))
                .collect::<Vec<_>>();
            step.input_i32("v_cells", &[(self.n_embd_kv * n_tokens) as i64], cells)
        });
        Ok(FullInputs {
            pos: step.input_i32("pos", &[t], pos.clone()),
            rows: step.input_i32("kv_rows", &[t], pos),
            mask,
            mask_window,
            v_cells,
            n_kv,
        })
    }

    /// Returns [head_dim * n_head, T].
    fn attend<'a>(&'a self, step: &mut Step<'a>, inp: &FullInputs<'a>, x: LayerQkv<'a>, la: &LayerAttn) -> Tensor<'a> {
        let g = step.ctx;
        let LayerQkv {
            layer,
            q,
            k,
            v,
            freq_factors,
        } = x;
        let t = q.ne()[2];
        let mask = match self.layer_window[layer] {
            0 => inp.mask,
            _ => inp.mask_window.expect("built when a layer has a window"),
        };
        let q = g.rope(q, inp.pos, freq_factors, &la.rope);
        let k = g.rope(k, inp.pos, freq_factors, &la.rope);

        let k_cache = self.ctx.tensor(self.k[layer]);
        let v_cache = self.ctx.tensor(self.v[layer]);
        let e = self.n_embd_kv as i64;
        step.graph.expand(g.set_rows(k_cache, g.reshape(k, &[e, t]), inp.rows));

        let n_head_kv = e / self.p.head_dim as i64;
        let (hd, n_kv) = (self.p.head_dim as i64, inp.n_kv as i64);
        let row = k_cache.nb()[1];
        let head = row / n_head_kv as usize;
        let k_view = g.permute(g.view(k_cache, &[hd, n_head_kv, n_kv], &[head, row], 0), [0, 2, 1, 3]);
        let q = g.permute(q, [0, 2, 1, 3]);

        if let Some(cells) = inp.v_cells {
            // One "row" per value element: scatter the new values into the transposed cache.
            let flat = g.reshape(v_cache, &[1, e * self.p.n_ctx as i64]);
            let v_t = g.reshape(g.cont(g.transpose(g.reshape(v, &[e, t]))), &[1, e * t]);
            step.graph.expand(g.set_rows(flat, v_t, cells));
            let kq = g.soft_max_ext(mul_mat_capped(g, k_view, q, la), Some(mask), softmax_scale(la));
            let vrow = v_cache.nb()[1];
            let v_view = g.view(v_cache, &[n_kv, hd, n_head_kv], &[vrow, vrow * hd as usize], 0);
            let out = g.cont(g.permute(g.mul_mat(v_view, kq), [0, 2, 1, 3]));
            return g.reshape(out, &[out.ne()[0] * out.ne()[1], t]);
        }

        step.graph.expand(g.set_rows(v_cache, g.reshape(v, &[e, t]), inp.rows));
        let v_row = v_cache.nb()[1];
        let v_head = v_row / n_head_kv as usize;
        let v_view = g.permute(
            g.view(v_cache, &[hd, n_head_kv, n_kv], &[v_head, v_row], 0),
            [0, 2, 1, 3],
        );
        let out = g.flash_attn(q, k_view, v_view, Some(mask), la.scale, la.softcap);
        g.reshape(out, &[out.ne()[0] * out.ne()[1], t])
    }
}

/// One step's attention: the cache and the step's inputs.
struct FullStep<'a> {
    attn: &'a FullAttention,
    inputs: FullInputs<'a>,
}

impl<'a> StepAttention<'a> for FullStep<'a> {
    fn attend(&self, step: &mut Step<'a>, x: LayerQkv<'a>, la: &LayerAttn) -> Tensor<'a> {
        self.attn.attend(step, &self.inputs, x, la)
    }
}

impl Attention for FullAttention {
    fn n_past(&self) -> usize {
        self.n_past
    }

    fn n_ctx(&self) -> usize {
        self.p.n_ctx
    }

    fn step_tokens(&self, n_ubatch: usize) -> usize {
        n_ubatch.max(1)
    }

    fn clear(&mut self) {
        self.n_past = 0;
    }

    fn prepare(&mut self, _n_tokens: usize) -> Result<(), AttentionError> {
        Ok(())
    }

    fn begin<'a>(
        &'a self,
        step: &mut Step<'a>,
        n_tokens: usize,
    ) -> Result<Box<dyn StepAttention<'a> + 'a>, AttentionError> {
        let inputs = self.inputs(step, n_tokens)?;
        Ok(Box::new(FullStep { attn: self, inputs }))
    }

    fn commit(&mut self, n_tokens: usize) -> anyhow::Result<()> {
        self.n_past += n_tokens;
        Ok(())
    }

    /// Cheap: the cache is only appended to, so the count is the state.
    fn snapshot(&self) -> Snapshot {
        Snapshot(Box::new(self.n_past), 0)
    }

    fn rollback(&mut self, s: &Snapshot) -> anyhow::Result<()> {
        let n_past =
            s.0.downcast_ref::<usize>()
                .ok_or_else(|| anyhow::anyhow!("snapshot of another attention"))?;
        self.restore(*n_past)
    }

    fn memory(&self) -> MemoryReport {
        MemoryReport {
            n_past: self.n_past,
            buffer_bytes: self.buffers.iter().map(Buffer::size).sum(),
            blocks: None,
            blocks_on_disk: None,
            block_loads: 0,
        }
    }

    fn settings(&self) -> Settings {
        Settings::Full {
            flash_attn: self.p.flash_attn,
            n_ctx: self.p.n_ctx,
            type_k: self.p.type_k,
            type_v: self.p.type_v,
        }
    }

    fn state_write(&self, out: &mut dyn StateWriter) -> anyhow::Result<serde_json::Value> {
        out.section(&self.cache_bytes_used())?;
        Ok(serde_json::json!({ "n_past": self.n_past }))
    }

    /// Checks the saved token count against the index and the context
    /// before it reads the cache straight into place.
    fn state_read(&mut self, state: &serde_json::Value, sections: &mut StateReader<'_>) -> anyhow::Result<()> {
        let n_past = state["n_past"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| anyhow::anyhow!("corrupt (no n_past)"))?;
        anyhow::ensure!(
            n_past == sections.n_past(),
            "corrupt (a KV cache of {n_past} tokens in a session of {})",
            sections.n_past()
        );
        anyhow::ensure!(n_past <= self.p.n_ctx, "the saved text is longer than the context (-c)");
        let ranges = self.ranges(n_past);
        let section = sections.next(ranges.iter().map(|r| r.2).sum())?;
        read_ranges_from(ranges, sections, section)?;
        self.n_past = n_past;
        Ok(())
    }
}

/// Q·K logits, soft-capped when the model asks for it (then scaled already).
pub fn mul_mat_capped<'a>(g: &'a Context, k: Tensor<'a>, q: Tensor<'a>, la: &LayerAttn) -> Tensor<'a> {
    soft_cap(g, g.mul_mat_f32(k, q), la)
}

/// Logits soft-capped when the model asks for it (then scaled already).
pub fn soft_cap<'a>(g: &'a Context, kq: Tensor<'a>, la: &LayerAttn) -> Tensor<'a> {
    if la.softcap > 0.0 {
        g.scale(g.tanh(g.scale(kq, la.scale / la.softcap)), la.softcap)
    } else {
        kq
    }
}

/// The softmax scale that goes with `mul_mat_capped`.
pub fn softmax_scale(la: &LayerAttn) -> f32 {
    if la.softcap > 0.0 {
        1.0
    } else {
        la.scale
    }
}
