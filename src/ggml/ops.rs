//! Wrappers of ggml's own graph ops (matmul, norms, rope, attention,
//! views, ...), and `join_rows`, which lays op results side by side.
//!
//! Shapes are the caller's responsibility (they come from checked model
//! hyper-parameters); ggml aborts on a mismatch, which is a bug here.

use super::tensor::{Context, Tensor};
use super::{sys, GgmlType};

// ggml.h #defines (not exported by bindgen): GGML_ROPE_TYPE_NORMAL, GGML_ROPE_TYPE_NEOX.
pub const ROPE_NORMAL: i32 = 0;
pub const ROPE_NEOX: i32 = 2;

macro_rules! unary {
    ($($name:ident => $f:ident),* $(,)?) => {$(
        pub fn $name<'a>(&'a self, a: Tensor<'a>) -> Tensor<'a> {
            // SAFETY: valid context and tensor; ggml validates shapes.
            self.wrap(unsafe { sys::$f(self.raw(), a.raw()) })
        }
    )*};
}
macro_rules! binary {
    ($($name:ident => $f:ident),* $(,)?) => {$(
        pub fn $name<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
            // SAFETY: valid context and tensors; ggml validates shapes.
            self.wrap(unsafe { sys::$f(self.raw(), a.raw(), b.raw()) })
        }
    )*};
}

impl Context {
    unary! {
        cont => ggml_cont, transpose => ggml_transpose, tanh => ggml_tanh, sum_rows => ggml_sum_rows,
        swiglu_fused => ggml_swiglu,
    }
    binary! {
        add => ggml_add, add_inplace => ggml_add_inplace, mul => ggml_mul, mul_mat => ggml_mul_mat,
        get_rows => ggml_get_rows,
        swiglu => ggml_swiglu_split, geglu => ggml_geglu_split, cpy => ggml_cpy, out_prod => ggml_out_prod,
    }

    /// `a @ b` with f32 accumulation.
    pub fn mul_mat_f32<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
        let t = self.mul_mat(a, b);
        // SAFETY: precision hint on a freshly created op.
        unsafe { sys::ggml_prec_set_acc(t.raw(), sys::GGML_PREC_F32) };
        t
    }

    pub fn rms_norm<'a>(&'a self, a: Tensor<'a>, eps: f32) -> Tensor<'a> {
        // SAFETY: valid context and tensor.
        self.wrap(unsafe { sys::ggml_rms_norm(self.raw(), a.raw(), eps) })
    }

    pub fn scale<'a>(&'a self, a: Tensor<'a>, s: f32) -> Tensor<'a> {
        // SAFETY: valid context and tensor.
        self.wrap(unsafe { sys::ggml_scale(self.raw(), a.raw(), s) })
    }

    pub fn cast<'a>(&'a self, a: Tensor<'a>, ty: GgmlType) -> Tensor<'a> {
        // SAFETY: valid context and tensor.
        self.wrap(unsafe { sys::ggml_cast(self.raw(), a.raw(), ty.sys()) })
    }

    pub fn concat<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>, dim: i32) -> Tensor<'a> {
        // SAFETY: valid context and tensors.
        self.wrap(unsafe { sys::ggml_concat(self.raw(), a.raw(), b.raw(), dim) })
    }

    pub fn reshape<'a>(&'a self, a: Tensor<'a>, ne: &[i64]) -> Tensor<'a> {
        // SAFETY: valid context and tensor; ggml checks the element count.
        self.wrap(unsafe {
            match *ne {
                [n0] => sys::ggml_reshape_1d(self.raw(), a.raw(), n0),
                [n0, n1] => sys::ggml_reshape_2d(self.raw(), a.raw(), n0, n1),
                [n0, n1, n2] => sys::ggml_reshape_3d(self.raw(), a.raw(), n0, n1, n2),
                [n0, n1, n2, n3] => sys::ggml_reshape_4d(self.raw(), a.raw(), n0, n1, n2, n3),
                _ => panic!("reshape to {} dims", ne.len()),
            }
        })
    }

    /// A strided view: `ne` elements per dim, `nb` byte strides for dims 1.., byte `offset`.
    pub fn view<'a>(&'a self, a: Tensor<'a>, ne: &[i64], nb: &[usize], offset: usize) -> Tensor<'a> {
        assert_eq!(nb.len() + 1, ne.len());
        // SAFETY: valid context and tensor; ggml checks the view stays inside `a`.
        self.wrap(unsafe {
            match (ne, nb) {
                ([n0], []) => sys::ggml_view_1d(self.raw(), a.raw(), *n0, offset),
                ([n0, n1], [b1]) => sys::ggml_view_2d(self.raw(), a.raw(), *n0, *n1, *b1, offset),
                ([n0, n1, n2], [b1, b2]) => sys::ggml_view_3d(self.raw(), a.raw(), *n0, *n1, *n2, *b1, *b2, offset),
                ([n0, n1, n2, n3], [b1, b2, b3]) => {
                    sys::ggml_view_4d(self.raw(), a.raw(), *n0, *n1, *n2, *n3, *b1, *b2, *b3, offset)
                }
                _ => panic!("view with {} dims", ne.len()),
            }
        })
    }

    pub fn permute<'a>(&'a self, a: Tensor<'a>, axes: [i32; 4]) -> Tensor<'a> {
        // SAFETY: valid context and tensor; ggml checks the axes.
        self.wrap(unsafe { sys::ggml_permute(self.raw(), a.raw(), axes[0], axes[1], axes[2], axes[3]) })
    }

    /// Writes the rows of `src` into `dst` at the row indices `rows` (I32 or I64).
    pub fn set_rows<'a>(&'a self, dst: Tensor<'a>, src: Tensor<'a>, rows: Tensor<'a>) -> Tensor<'a> {
        // SAFETY: valid context and tensors.
        self.wrap(unsafe { sys::ggml_set_rows(self.raw(), dst.raw(), src.raw(), rows.raw()) })
    }

    /// Rotary embedding of `a` ([head_dim, n_head, n_tokens]) at positions `pos` (I32).
    /// `freq_factors` optionally divides each dimension pair's frequency.
    pub fn rope<'a>(
        &'a self,
        a: Tensor<'a>,
        pos: Tensor<'a>,
        freq_factors: Option<Tensor<'a>>,
        rope: &RopeParams,
    ) -> Tensor<'a> {
        // SAFETY: valid context and tensors.
        self.wrap(unsafe {
            sys::ggml_rope_ext(
                self.raw(),
                a.raw(),
                pos.raw(),
                freq_factors.map_or(std::ptr::null_mut(), |f| f.raw()),
                rope.n_dims,
                rope.mode,
                rope.n_ctx_orig,
                rope.freq_base,
                rope.freq_scale,
                rope.ext_factor,
                rope.attn_factor,
                rope.beta_fast,
                rope.beta_slow,
            )
        })
    }

    /// Fused attention: q [d, n_q, n_head], k/v [d, n_kv, n_head_kv] (f16),
    /// mask [n_kv, n_q] (f16). Result [d, n_head, n_q].
    pub fn flash_attn<'a>(
        &'a self,
        q: Tensor<'a>,
        k: Tensor<'a>,
        v: Tensor<'a>,
        mask: Option<Tensor<'a>>,
        scale: f32,
        softcap: f32,
    ) -> Tensor<'a> {
        // SAFETY: valid context and tensors; f32 accumulation as llama.cpp sets it.
        unsafe {
            let mask = mask.map_or(std::ptr::null_mut(), |m| m.raw());
            let t = sys::ggml_flash_attn_ext(self.raw(), q.raw(), k.raw(), v.raw(), mask, scale, 0.0, softcap);
            sys::ggml_prec_set_acc(t, sys::GGML_PREC_F32);
            self.wrap(t)
        }
    }

    /// softmax(a * scale + mask) along rows.
    pub fn soft_max_ext<'a>(&'a self, a: Tensor<'a>, mask: Option<Tensor<'a>>, scale: f32) -> Tensor<'a> {
        // SAFETY: valid context and tensors.
        self.wrap(unsafe {
            let mask = mask.map_or(std::ptr::null_mut(), |m| m.raw());
            sys::ggml_soft_max_ext(self.raw(), a.raw(), mask, scale, 0.0)
        })
    }

    /// F32 tensors with equal dims 1..3 joined along dim 0.
    ///
    /// No copy for parts that are fresh `mul_mat` or custom-op results (not
    /// yet used by any op): they are turned into views of the joined tensor,
    /// so the op writes its rows straight into place (ggml's matmul and all
    /// our custom ops honour destination strides). Other parts are copied in
    /// with `set`. The joined tensor is a graph node (never a leaf, which the
    /// allocator would keep alive for the whole graph), and the returned view
    /// depends on every part, so the parts run before its readers and the
    /// allocator frees the joined memory after its last reader.
    pub fn join_rows<'a>(&'a self, parts: &[Tensor<'a>]) -> Tensor<'a> {
        if let [only] = parts {
            return *only;
        }
        let [_, n1, n2, n3] = parts[0].ne();
        let n0: i64 = parts.iter().map(|p| p.ne()[0]).sum();
        let joined = self.unwritten_f32(&[n0, n1, n2, n3]);
        let nb = joined.nb();
        let mut copied = Vec::new();
        let mut offset = 0usize;
        for &p in parts {
            assert_eq!(p.ne()[1..], [n1, n2, n3], "join_rows: parts differ beyond dim 0");
            assert_eq!(p.ty(), GgmlType::F32, "join_rows: parts must be f32");
            // SAFETY: `p` has `joined`'s dims 1..3 (checked above) and its
            // rows end at offset + 4 * ne0 <= 4 * n0.
            if !unsafe { write_into(p, joined, offset) } {
                copied.push((p, offset));
            }
            offset += p.ne()[0] as usize * 4;
        }
        let mut out = self.view(joined, &[n0, n1, n2, n3], &nb[1..], 0);
        // SAFETY: `out` is a view node.
        unsafe { add_dependencies(out, parts) };
        for (p, offset) in copied {
            // SAFETY: valid context and tensors; `p` lands inside `out`
            // (rows of p.ne[0] floats at `offset`, checked by ggml).
            out = self
                .wrap(unsafe { sys::ggml_set_inplace(self.raw(), out.raw(), p.raw(), nb[1], nb[2], nb[3], offset) });
        }
        out
    }

    /// A new f32 graph node of shape `ne` that computes nothing: whatever
    /// views it writes its memory.
    fn unwritten_f32(&self, ne: &[i64]) -> Tensor<'_> {
        let t = self.new_tensor(GgmlType::F32, ne);
        // SAFETY: `t` is a tensor of this context that nothing uses yet.
        // A VIEW op computes nothing on every backend, so the node is left
        // uninitialised (`join_rows` writes every element through a part).
        unsafe { (*t.raw()).op = sys::GGML_OP_VIEW };
        t
    }

    /// `a` repeated to shape `ne`.
    pub fn repeat_4d<'a>(&'a self, a: Tensor<'a>, ne: [i64; 4]) -> Tensor<'a> {
        // SAFETY: valid context and tensor; ggml checks that `ne` is a multiple of a's shape.
        self.wrap(unsafe { sys::ggml_repeat_4d(self.raw(), a.raw(), ne[0], ne[1], ne[2], ne[3]) })
    }

    /// Indices (I32) that sort each row ascending.
    pub fn argsort_ascending<'a>(&'a self, a: Tensor<'a>) -> Tensor<'a> {
        // SAFETY: valid context and tensor.
        self.wrap(unsafe { sys::ggml_argsort(self.raw(), a.raw(), sys::GGML_SORT_ORDER_ASC) })
    }

    /// Indices of the `k` largest values of each row (I32), in no particular order.
    pub fn top_k<'a>(&'a self, a: Tensor<'a>, k: i32) -> Tensor<'a> {
        // SAFETY: valid context and tensor.
        self.wrap(unsafe { sys::ggml_top_k(self.raw(), a.raw(), k) })
    }
}

/// Turns `part`, when it is a fresh result of an op that honours its
/// destination's strides (ggml's matmul, our custom ops) and not yet
/// allocated, into a view of `joined` at byte `offset`, so the op writes
/// its rows straight into place. Whether it did.
///
/// # Safety
/// `part` must have `joined`'s dims 1..3, and its rows at `offset` must end
/// inside `joined`'s; callers pass only new results, which no op reads yet.
unsafe fn write_into(part: Tensor<'_>, joined: Tensor<'_>, offset: usize) -> bool {
    let pt = part.get();
    let writes_strided = pt.op == sys::GGML_OP_MUL_MAT || pt.op == sys::GGML_OP_CUSTOM;
    if !(writes_strided && pt.view_src.is_null() && pt.data.is_null()) {
        return false;
    }
    let nb = joined.nb();
    // SAFETY: `part` is a fresh, unallocated mul_mat or custom node (checked
    // above); with `joined`'s strides it stays inside `joined` (the
    // caller's contract).
    unsafe {
        let r = part.raw();
        (*r).view_src = joined.raw();
        (*r).view_offs = offset;
        (*r).nb[1] = nb[1];
        (*r).nb[2] = nb[2];
        (*r).nb[3] = nb[3];
    }
    true
}

/// Makes the graph compute every one of `parts` before `view`.
///
/// # Safety
/// `view` must be a VIEW node: it has src[0] only, the extra sources are
/// graph dependencies (ggml visits all GGML_MAX_SRC sources) and nothing
/// reads them when computing a view.
unsafe fn add_dependencies(view: Tensor<'_>, parts: &[Tensor<'_>]) {
    assert!(parts.len() < view.get().src.len(), "join_rows: too many parts");
    for (i, &p) in parts.iter().enumerate() {
        // SAFETY: the caller's contract; the index is checked above.
        unsafe { (*view.raw()).src[1 + i] = p.raw() };
    }
}

/// Rotary-embedding settings, as ggml_rope_ext takes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeParams {
    pub n_dims: i32,
    pub mode: i32,
    pub n_ctx_orig: i32,
    pub freq_base: f32,
    pub freq_scale: f32,
    pub ext_factor: f32,
    pub attn_factor: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
}
