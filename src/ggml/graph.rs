//! ggml contexts, tensor handles and the graph ops the models use.
//!
//! A `Context` holds tensor metadata only (`no_alloc`): data lives in backend
//! buffers (weights: the memory-mapped file; caches: a host buffer; graph
//! intermediates: the graph allocator). A `Tensor` is a copyable handle that
//! borrows its context, so it can never outlive it.

use std::ffi::{c_int, c_void, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;

use super::{kernels, sys};

/// Owns a `ggml_context`.
pub struct Context {
    raw: NonNull<sys::ggml_context>,
}

// SAFETY: a context is plain memory owned by this value; ggml keeps no
// thread-local state tied to it. It is used from one thread at a time (&mut
// or & access per Rust's rules, ops only take &self on one thread).
unsafe impl Send for Context {}

/// A tensor in a `Context`.
#[derive(Clone, Copy)]
pub struct Tensor<'c> {
    raw: NonNull<sys::ggml_tensor>,
    _ctx: PhantomData<&'c Context>,
}

/// A tensor handle that does not borrow its context, for storing in structs
/// next to the context that owns it. Turned back into a `Tensor` only by the
/// context it came from (checked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorId {
    ctx: *const sys::ggml_context,
    raw: NonNull<sys::ggml_tensor>,
}

// SAFETY: an id is an inert pair of addresses; it is dereferenced only through
// `Context::tensor`, which checks it belongs to that (live) context.
unsafe impl Send for TensorId {}
unsafe impl Sync for TensorId {}

/// A computation graph allocated in a `Context`.
pub struct Graph<'c> {
    pub(super) raw: NonNull<sys::ggml_cgraph>,
    _ctx: PhantomData<&'c Context>,
}

/// A graph handle that does not borrow its context (as `TensorId`), for
/// keeping a built graph next to the context that owns it.
#[derive(Clone, Copy, Debug)]
pub struct GraphId {
    ctx: *const sys::ggml_context,
    raw: NonNull<sys::ggml_cgraph>,
}

// SAFETY: an inert pair of addresses, dereferenced only through
// `Context::graph`, which checks it belongs to that (live) context.
unsafe impl Send for GraphId {}

// ggml.h #defines (not exported by bindgen): GGML_ROPE_TYPE_NORMAL, GGML_ROPE_TYPE_NEOX.
pub const ROPE_NORMAL: i32 = 0;
pub const ROPE_NEOX: i32 = 2;

impl Context {
    /// A metadata-only context with room for `n_tensors` tensors and a graph of `graph_size` nodes.
    pub fn new(n_tensors: usize, graph_size: usize) -> Self {
        // SAFETY: overhead queries are pure; ggml_init with no_alloc and an
        // internally allocated pool of the computed size. ggml_init aborts on
        // allocation failure rather than returning null, but check anyway.
        let raw = unsafe {
            let mem_size = sys::ggml_tensor_overhead() * n_tensors
                + if graph_size > 0 {
                    sys::ggml_graph_overhead_custom(graph_size, false)
                } else {
                    0
                };
            sys::ggml_init(sys::ggml_init_params {
                mem_size,
                mem_buffer: std::ptr::null_mut(),
                no_alloc: true,
            })
        };
        Self {
            raw: NonNull::new(raw).expect("ggml_init failed: out of memory"),
        }
    }

    fn wrap(&self, t: *mut sys::ggml_tensor) -> Tensor<'_> {
        Tensor {
            raw: NonNull::new(t).expect("ggml returned a null tensor (context full)"),
            _ctx: PhantomData,
        }
    }

    /// A new tensor of type `ty` with dimensions `ne` (ggml order, 1 to 4 dims).
    pub fn new_tensor(&self, ty: u32, ne: &[i64]) -> Tensor<'_> {
        assert!((1..=4).contains(&ne.len()));
        // SAFETY: the context is valid and `ne` has ne.len() elements.
        self.wrap(unsafe { sys::ggml_new_tensor(self.raw.as_ptr(), ty, ne.len() as i32, ne.as_ptr()) })
    }

    pub fn new_graph(&self, size: usize) -> Graph<'_> {
        // SAFETY: the context was sized for a graph of this size by `new`.
        let raw = unsafe { sys::ggml_new_graph_custom(self.raw.as_ptr(), size, false) };
        Graph {
            raw: NonNull::new(raw).expect("ggml_new_graph_custom failed"),
            _ctx: PhantomData,
        }
    }

    /// A storable handle to `t`, which must belong to this context.
    pub fn id(&self, t: Tensor<'_>) -> TensorId {
        TensorId {
            ctx: self.raw.as_ptr(),
            raw: t.raw,
        }
    }

    /// The tensor behind `id`.
    pub fn tensor(&self, id: TensorId) -> Tensor<'_> {
        assert!(
            std::ptr::eq(id.ctx, self.raw.as_ptr()),
            "tensor id used with another context"
        );
        Tensor {
            raw: id.raw,
            _ctx: PhantomData,
        }
    }

    /// A storable handle to `g`, which must belong to this context.
    pub fn graph_id(&self, g: &Graph<'_>) -> GraphId {
        GraphId {
            ctx: self.raw.as_ptr(),
            raw: g.raw,
        }
    }

    /// The graph behind `id`.
    pub fn graph(&self, id: GraphId) -> Graph<'_> {
        assert!(
            std::ptr::eq(id.ctx, self.raw.as_ptr()),
            "graph id used with another context"
        );
        Graph {
            raw: id.raw,
            _ctx: PhantomData,
        }
    }

    pub(super) fn raw(&self) -> *mut sys::ggml_context {
        self.raw.as_ptr()
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: we own the context; tensors borrowing it are gone.
        unsafe { sys::ggml_free(self.raw.as_ptr()) }
    }
}

impl<'c> Tensor<'c> {
    pub(super) fn raw(self) -> *mut sys::ggml_tensor {
        self.raw.as_ptr()
    }

    fn get(&self) -> &sys::ggml_tensor {
        // SAFETY: the tensor lives as long as its context, which outlives 'c.
        unsafe { self.raw.as_ref() }
    }

    pub fn ne(self) -> [i64; 4] {
        self.get().ne
    }

    pub fn nb(self) -> [usize; 4] {
        self.get().nb
    }

    pub fn ty(self) -> u32 {
        self.get().type_
    }

    pub fn nbytes(self) -> usize {
        // SAFETY: pure query on a valid tensor.
        unsafe { sys::ggml_nbytes(self.raw()) }
    }

    pub fn is_contiguous(self) -> bool {
        // SAFETY: pure query on a valid tensor.
        unsafe { sys::ggml_is_contiguous(self.raw()) }
    }

    pub fn n_elements(self) -> i64 {
        self.ne().iter().product()
    }

    pub fn set_name(self, name: &str) -> Self {
        let c = CString::new(name).expect("tensor name without NUL");
        // SAFETY: ggml copies the name into the tensor (truncating to its buffer).
        unsafe { sys::ggml_set_name(self.raw(), c.as_ptr()) };
        self
    }

    /// Marks a graph input (the allocator gives it its own memory).
    pub fn set_input(self) -> Self {
        // SAFETY: flag update on a valid tensor.
        unsafe { sys::ggml_set_input(self.raw()) };
        self
    }

    /// Marks a graph output (its memory is not reused inside the graph).
    pub fn set_output(self) -> Self {
        // SAFETY: flag update on a valid tensor.
        unsafe { sys::ggml_set_output(self.raw()) };
        self
    }

    /// Whether the tensor has memory (allocated in a buffer).
    pub fn is_allocated(self) -> bool {
        !self.get().data.is_null()
    }

    /// Copies `data` into the tensor's memory at byte `offset` (any backend).
    pub fn write_bytes(self, offset: usize, data: &[u8]) {
        assert!(self.is_allocated(), "write to an unallocated tensor");
        assert!(offset + data.len() <= self.nbytes(), "write past the end of a tensor");
        // SAFETY: the tensor is allocated and the range was checked above.
        unsafe { sys::ggml_backend_tensor_set(self.raw(), data.as_ptr().cast(), offset, data.len()) }
    }

    /// Copies the tensor's bytes `[offset, offset + out.len())` into `out`.
    pub fn read_bytes(self, offset: usize, out: &mut [u8]) {
        assert!(self.is_allocated(), "read of an unallocated tensor");
        assert!(offset + out.len() <= self.nbytes(), "read past the end of a tensor");
        // SAFETY: the tensor is allocated and the range was checked above.
        unsafe { sys::ggml_backend_tensor_get(self.raw(), out.as_mut_ptr().cast(), offset, out.len()) }
    }

    pub fn write_f32(self, data: &[f32]) {
        assert_eq!(self.ty(), sys::GGML_TYPE_F32);
        self.write_bytes(0, as_bytes(data));
    }

    pub fn write_i32(self, data: &[i32]) {
        assert_eq!(self.ty(), sys::GGML_TYPE_I32);
        self.write_bytes(0, as_bytes(data));
    }

    pub fn write_f16(self, data: &[half::f16]) {
        assert_eq!(self.ty(), sys::GGML_TYPE_F16);
        self.write_bytes(0, as_bytes(data));
    }

    /// Reads an F32 tensor into `out` (resized to the element count).
    pub fn read_f32(self, out: &mut Vec<f32>) {
        assert_eq!(self.ty(), sys::GGML_TYPE_F32);
        out.resize(self.n_elements() as usize, 0.0);
        // SAFETY: f32 has no invalid bit patterns; the byte view covers `out` exactly.
        let bytes = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), out.len() * 4) };
        self.read_bytes(0, bytes);
    }
}

/// Views a slice of plain numbers as bytes.
fn as_bytes<T: Copy>(data: &[T]) -> &[u8] {
    // SAFETY: T is one of f32/i32/f16 (plain data without padding); the
    // byte view has the same lifetime and size.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast(), std::mem::size_of_val(data)) }
}

impl Graph<'_> {
    /// Adds `t` and everything it depends on.
    pub fn expand(&mut self, t: Tensor<'_>) {
        // SAFETY: graph and tensor belong to live contexts; ggml aborts if the
        // graph is full, which the caller sizes for.
        unsafe { sys::ggml_build_forward_expand(self.raw.as_ptr(), t.raw()) }
    }
}

/// Graph ops. Shapes are the caller's responsibility (they come from checked
/// model hyper-parameters); ggml aborts on a mismatch, which is a bug here.
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

    pub fn cast<'a>(&'a self, a: Tensor<'a>, ty: u32) -> Tensor<'a> {
        // SAFETY: valid context and tensor.
        self.wrap(unsafe { sys::ggml_cast(self.raw(), a.raw(), ty) })
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

    /// Writes vectors `x` [n_rows, n] (f32 or f16, contiguous) as columns
    /// of `dst` [cap, n_rows] f16 (a row per channel): x's vector i into
    /// column `slots[i]` (I32 [n], each below cap). ggml's `set_rows` on a
    /// transposed view does the same on one thread when n = 1 (it splits
    /// vectors between threads); this op splits the rows.
    pub fn put_columns<'a>(&'a self, dst: Tensor<'a>, x: Tensor<'a>, slots: Tensor<'a>) -> Tensor<'a> {
        let n_rows = dst.ne()[1];
        let [x_rows, n, ..] = x.ne();
        assert!(
            dst.ty() == sys::GGML_TYPE_F16 && dst.nb()[0] == 2 && dst.ne()[2..] == [1, 1],
            "put_columns: f16 rows with unit stride"
        );
        assert!(
            matches!(x.ty(), sys::GGML_TYPE_F32 | sys::GGML_TYPE_F16) && x.is_contiguous() && x_rows == n_rows,
            "put_columns: contiguous f32 or f16 vectors of the row count"
        );
        assert!(
            slots.ty() == sys::GGML_TYPE_I32 && slots.is_contiguous() && slots.ne() == [n, 1, 1, 1],
            "put_columns: a slot per vector"
        );
        let mut args = [x.raw(), slots.raw()];
        // SAFETY: valid context and tensors (checked above to be what the op
        // reads and writes); ggml copies the source pointers into the node,
        // a view of `dst`.
        self.wrap(unsafe {
            sys::ggml_custom_inplace(
                self.raw(),
                dst.raw(),
                args.as_mut_ptr(),
                2,
                Some(put_columns_op),
                -1, // every thread takes a share of the rows
                std::ptr::null_mut(),
            )
        })
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

    /// Logits of queries against keys stored transposed: `keys_t` [n, dim,
    /// n_kv] f16 (a row per channel; rows and heads may be strided), `q`
    /// [dim, n_q, n_head] f32 contiguous, query head h reading KV head
    /// h / (n_head / n_kv) as `mul_mat` broadcasts. Result [n, n_q, n_head]
    /// f32, rows written at their strides (so `join_rows` can place it). Our
    /// kernel (`kernels::key_scores`) as a ggml custom op. With `valid` (I32
    /// [2], a key range [from, to) given as data), keys outside it score
    /// -inf without being read.
    pub fn key_scores<'a>(&'a self, keys_t: Tensor<'a>, q: Tensor<'a>, valid: Option<Tensor<'a>>) -> Tensor<'a> {
        let [n, dim, n_kv, _] = keys_t.ne();
        let [q_dim, n_q, n_head, _] = q.ne();
        assert!(
            keys_t.ty() == sys::GGML_TYPE_F16 && keys_t.nb()[0] == 2 && q.ty() == sys::GGML_TYPE_F32,
            "key_scores: f16 keys with unit stride, f32 queries"
        );
        assert!(
            q_dim == dim && n_head % n_kv == 0 && q.ne()[3] == 1 && q.is_contiguous(),
            "key_scores: query shape"
        );
        let mut args = with_range([keys_t.raw(), q.raw()], valid);
        // SAFETY: valid context and tensors (checked above and in
        // `with_range` to be what the op reads); ggml copies the source
        // pointers into the new node.
        self.wrap(unsafe {
            sys::ggml_custom_4d(
                self.raw(),
                sys::GGML_TYPE_F32,
                n,
                n_q,
                n_head,
                1,
                args.as_mut_ptr(),
                args.len() as c_int,
                Some(key_scores_op),
                -1, // GGML_N_TASKS_MAX: every thread takes a share of the keys
                std::ptr::null_mut(),
            )
        })
    }

    /// Probabilities times values stored transposed: `vals_t` [n, hd, n_kv]
    /// f16 (a row per channel; rows and heads may be strided), `p` [n, group,
    /// n_kv] f32 (rows may be strided). Result [hd, group, n_kv] f32, as
    /// `mul_mat(vals_t, p)`. Our kernel (`kernels::value_sums`): ggml's f16
    /// matmul of a few columns took 1.8x as long (docs/perf.md). With
    /// `valid` (as `key_scores`'), only the values in that range are read
    /// (the others' probabilities are zero).
    pub fn value_sums<'a>(&'a self, vals_t: Tensor<'a>, p: Tensor<'a>, valid: Option<Tensor<'a>>) -> Tensor<'a> {
        let [n, hd, n_kv, one] = vals_t.ne();
        let [pn, group, p_kv, p_one] = p.ne();
        assert!(
            vals_t.ty() == sys::GGML_TYPE_F16 && vals_t.nb()[0] == 2 && p.ty() == sys::GGML_TYPE_F32 && p.nb()[0] == 4,
            "value_sums: f16 values and f32 probabilities with unit stride"
        );
        assert!(pn == n && p_kv == n_kv && one == 1 && p_one == 1, "value_sums: shapes");
        let mut args = with_range([vals_t.raw(), p.raw()], valid);
        // SAFETY: valid context and tensors (checked above and in
        // `with_range` to be what the op reads); ggml copies the source
        // pointers into the new node.
        self.wrap(unsafe {
            sys::ggml_custom_4d(
                self.raw(),
                sys::GGML_TYPE_F32,
                hd,
                group,
                n_kv,
                1,
                args.as_mut_ptr(),
                args.len() as c_int,
                Some(value_sums_op),
                -1, // GGML_N_TASKS_MAX: the threads share the (KV head, channel) pairs
                std::ptr::null_mut(),
            )
        })
    }

    /// `x` [n, ...] f32 (unit element stride) with every row's entries
    /// outside `valid` (I32 [2], a range [from, to) given as data) set to
    /// -inf: a softmax then gives them no weight.
    pub fn mask_outside<'a>(&'a self, x: Tensor<'a>, valid: Tensor<'a>) -> Tensor<'a> {
        let [n, n1, n2, n3] = x.ne();
        assert!(
            x.ty() == sys::GGML_TYPE_F32 && x.nb()[0] == 4,
            "mask_outside: f32 with unit stride"
        );
        let mut args = with_range([x.raw()], Some(valid));
        // SAFETY: valid context and tensors (checked above and in
        // `with_range`); ggml copies the source pointers into the new node.
        self.wrap(unsafe {
            sys::ggml_custom_4d(
                self.raw(),
                sys::GGML_TYPE_F32,
                n,
                n1,
                n2,
                n3,
                args.as_mut_ptr(),
                args.len() as c_int,
                Some(mask_outside_op),
                -1, // the threads share the rows
                std::ptr::null_mut(),
            )
        })
    }

    /// Logits of query heads against the keys of chosen memory blocks, read
    /// in their stored type (no gathered or dequantized copy). `store`
    /// [bs x hd x n_kv, n_blocks] holds each block's keys transposed (a row
    /// of bs values per channel, channels KV-head-major), `ids` [n_sel] I32
    /// the chosen blocks, `q` [hd, group, n_kv] f32 contiguous the query
    /// heads by KV head. Result [bs x n_sel, group, n_kv] f32 (rows at their
    /// strides, for `join_rows`). Our kernel (`kernels::column_dots`).
    pub fn block_scores<'a>(&'a self, store: Tensor<'a>, ids: Tensor<'a>, q: Tensor<'a>) -> Tensor<'a> {
        let [hd, group, n_kv, _] = q.ne();
        let bs = check_block_op(store, ids, hd * n_kv, q);
        assert!(q.is_contiguous(), "block_scores: contiguous queries");
        self.block_op(store, ids, q, [bs * ids.ne()[0], group, n_kv], Some(block_scores_op))
    }

    /// The chosen memory blocks' values weighted by attention probabilities
    /// and summed over the blocks. `store` [bs x hd x n_kv, n_blocks] holds
    /// each block's values transposed (hd rows of bs values per KV head),
    /// `ids` [n_sel] I32 the chosen blocks (in `block_scores`' order), `p`
    /// [bs * n_sel, group, n_kv] f32 (rows may be strided) their
    /// probabilities. Result [hd, group, n_kv] f32.
    pub fn block_values<'a>(&'a self, store: Tensor<'a>, ids: Tensor<'a>, p: Tensor<'a>, hd: i64) -> Tensor<'a> {
        let [_, group, n_kv, _] = p.ne();
        let bs = check_block_op(store, ids, hd * n_kv, p);
        assert_eq!(p.ne()[0], bs * ids.ne()[0], "block_values: one probability per key");
        self.block_op(store, ids, p, [hd, group, n_kv], Some(block_values_op))
    }

    /// A custom op over a block store, chosen block ids and f32 vectors.
    fn block_op<'a>(
        &'a self,
        store: Tensor<'a>,
        ids: Tensor<'a>,
        x: Tensor<'a>,
        ne: [i64; 3],
        op: sys::ggml_custom_op_t,
    ) -> Tensor<'a> {
        let mut args = [store.raw(), ids.raw(), x.raw()];
        // SAFETY: valid context and tensors (checked by the callers to be
        // what `op` reads); ggml copies the source pointers into the node.
        self.wrap(unsafe {
            sys::ggml_custom_4d(
                self.raw(),
                sys::GGML_TYPE_F32,
                ne[0],
                ne[1],
                ne[2],
                1,
                args.as_mut_ptr(),
                3,
                op,
                -1, // GGML_N_TASKS_MAX: the threads share the (block, head) pairs
                std::ptr::null_mut(),
            )
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
        let joined = self.new_tensor(sys::GGML_TYPE_F32, &[n0, n1, n2, n3]);
        // SAFETY: `joined` is a tensor of this context that nothing uses yet.
        // A VIEW op computes nothing on every backend, so the node is left
        // uninitialised; every element is written by exactly one part below.
        unsafe { (*joined.raw()).op = sys::GGML_OP_VIEW };
        let nb = joined.nb();
        let mut copied = Vec::new();
        let mut offset = 0usize;
        for &p in parts {
            assert_eq!(p.ne()[1..], [n1, n2, n3], "join_rows: parts differ beyond dim 0");
            assert_eq!(p.ty(), sys::GGML_TYPE_F32, "join_rows: parts must be f32");
            let pt = p.get();
            let writes_strided = pt.op == sys::GGML_OP_MUL_MAT || pt.op == sys::GGML_OP_CUSTOM;
            if writes_strided && pt.view_src.is_null() && pt.data.is_null() {
                // SAFETY: `p` is a fresh, unallocated mul_mat or custom node (checked
                // above; callers pass only new results); making it a view
                // with `joined`'s strides keeps it inside `joined` (dims
                // 1..3 equal, dim 0 ends at offset + ne0 <= n0).
                unsafe {
                    let r = p.raw();
                    (*r).view_src = joined.raw();
                    (*r).view_offs = offset;
                    (*r).nb[1] = nb[1];
                    (*r).nb[2] = nb[2];
                    (*r).nb[3] = nb[3];
                }
                copied.push(None);
            } else {
                copied.push(Some((p, offset)));
            }
            offset += p.ne()[0] as usize * 4;
        }
        let mut out = self.view(joined, &[n0, n1, n2, n3], &nb[1..], 0);
        assert!(parts.len() < out.get().src.len(), "join_rows: too many parts");
        // SAFETY: a VIEW op has src[0] only; the extra sources are graph
        // dependencies (ggml visits all GGML_MAX_SRC sources) and nothing
        // reads them when computing a view.
        for (i, &p) in parts.iter().enumerate() {
            unsafe { (*out.raw()).src[1 + i] = p.raw() };
        }
        for (p, offset) in copied.into_iter().flatten() {
            // SAFETY: valid context and tensors; `p` lands inside `out`
            // (rows of p.ne[0] floats at `offset`, checked by ggml).
            out = self
                .wrap(unsafe { sys::ggml_set_inplace(self.raw(), out.raw(), p.raw(), nb[1], nb[2], nb[3], offset) });
        }
        out
    }

    /// `a` repeated to shape `ne`.
    pub fn repeat_4d<'a>(&'a self, a: Tensor<'a>, ne: [i64; 4]) -> Tensor<'a> {
        // SAFETY: valid context and tensor; ggml checks that `ne` is a multiple of a's shape.
        self.wrap(unsafe { sys::ggml_repeat_4d(self.raw(), a.raw(), ne[0], ne[1], ne[2], ne[3]) })
    }

    /// Indices of the `k` largest values of each row (I32), in no particular order.
    pub fn top_k<'a>(&'a self, a: Tensor<'a>, k: i32) -> Tensor<'a> {
        // SAFETY: valid context and tensor.
        self.wrap(unsafe { sys::ggml_top_k(self.raw(), a.raw(), k) })
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

/// Checks what `block_scores` and `block_values` read; returns the block
/// size: `store` is [n_embd * bs, n_blocks] of a block-store type with
/// contiguous rows of whole kernel tiles, `ids` a contiguous I32 vector,
/// `x` f32 vectors with unit element stride.
fn check_block_op(store: Tensor<'_>, ids: Tensor<'_>, n_embd: i64, x: Tensor<'_>) -> i64 {
    let [per_block, _, one, _] = store.ne();
    let info = super::type_info(store.ty()).expect("block store of a known type");
    assert!(
        one == 1 && per_block % n_embd == 0 && store.nb()[0] as u64 == info.type_size,
        "block op: store shape"
    );
    let bs = per_block / n_embd;
    let unit = (kernels::LANES as u64).max(info.block_size) as i64;
    assert!(
        bs % unit == 0 && (n_embd / x.ne()[2]) % unit == 0,
        "block op: rows of whole tiles"
    );
    assert!(
        ids.ty() == sys::GGML_TYPE_I32 && ids.is_contiguous() && ids.ne()[1..] == [1, 1, 1],
        "block op: ids"
    );
    assert!(
        x.ty() == sys::GGML_TYPE_F32 && x.nb()[0] == 4 && x.ne()[3] == 1,
        "block op: f32 vectors"
    );
    bs
}

/// An op's sources followed by its optional range input, checked to be
/// I32 [2] (read by `range_of`).
fn with_range<const N: usize>(
    srcs: [*mut sys::ggml_tensor; N],
    valid: Option<Tensor<'_>>,
) -> Vec<*mut sys::ggml_tensor> {
    let mut args = srcs.to_vec();
    if let Some(v) = valid {
        assert!(
            v.ty() == sys::GGML_TYPE_I32 && v.is_contiguous() && v.ne() == [2, 1, 1, 1],
            "a range input is I32 [2]"
        );
        args.push(v.raw());
    }
    args
}

/// The range [from, to) an op's source `i` holds (clamped to `n`), or all
/// of 0..n without one.
///
/// # Safety
/// Source `i` of `dst`, if any, must be an allocated I32 [2] tensor (as
/// `with_range` checks at build time).
unsafe fn range_of(dst: &sys::ggml_tensor, i: usize, n: usize) -> (usize, usize) {
    let src = dst.src[i];
    if src.is_null() {
        return (0, n);
    }
    // SAFETY: an allocated I32 [2] tensor (the caller's contract).
    let r = unsafe { std::slice::from_raw_parts((*src).data as *const i32, 2) };
    let to = (r[1].max(0) as usize).min(n);
    ((r[0].max(0) as usize).min(to), to)
}

/// Runs `f` with the kernels' reading of `store`'s rows.
///
/// # Safety
/// `store` must be a valid tensor of a known ggml type.
unsafe fn with_row_format(store: &sys::ggml_tensor, f: impl FnOnce(&kernels::RowFormat)) {
    match store.type_ {
        sys::GGML_TYPE_F32 => f(&kernels::RowFormat::F32),
        sys::GGML_TYPE_F16 => f(&kernels::RowFormat::F16),
        sys::GGML_TYPE_Q8_0 => f(&kernels::RowFormat::Q8_0),
        sys::GGML_TYPE_Q4_0 => f(&kernels::RowFormat::Q4_0),
        ty => {
            let info = super::type_info(ty).expect("known type");
            // SAFETY: `ty` is a known type (the caller's contract), so its
            // traits entry is valid for the whole program.
            let to_float = unsafe { (*sys::ggml_get_type_traits(ty)).to_float }.expect("type with to_float");
            let convert = |src: &[u8], dst: &mut [f32]| {
                assert_eq!(src.len() as u64, info.row_size(dst.len() as u64), "a whole row");
                // SAFETY: `src` holds exactly one row of dst.len() values of
                // type `ty` (checked), `dst` has room for them.
                unsafe { to_float(src.as_ptr().cast(), dst.as_mut_ptr(), dst.len() as i64) }
            };
            f(&kernels::RowFormat::Convert(&convert))
        }
    }
}

/// Bytes of one row of `n` values of `ty` (a known type).
fn row_bytes(ty: u32, n: usize) -> usize {
    super::type_info(ty).expect("known type").row_size(n as u64) as usize
}

/// The chosen blocks' ids, each checked to be a block of the store.
///
/// # Safety
/// `ids` must be an allocated, contiguous I32 vector.
unsafe fn block_ids(ids: &sys::ggml_tensor, n_blocks: i64) -> &[i32] {
    // SAFETY: the caller's contract.
    let ids = unsafe { std::slice::from_raw_parts(ids.data as *const i32, ids.ne[0] as usize) };
    assert!(
        ids.iter().all(|&b| (0..n_blocks).contains(&i64::from(b))),
        "block id out of range"
    );
    ids
}

/// The `block_scores` op: each of ggml's `nth` threads takes every nth
/// (block, KV head) pair.
unsafe extern "C" fn block_scores_op(dst: *mut sys::ggml_tensor, ith: c_int, nth: c_int, _: *mut c_void) {
    // SAFETY: ggml calls this only for nodes built by `Context::block_scores`,
    // whose sources were checked there (store rows of whole tiles of a known
    // type, contiguous I32 ids, contiguous f32 queries [hd, group, n_kv]),
    // allocated when the graph runs. Ids are checked against the store; each
    // slice below stays inside its tensor: a block's keys for one KV head
    // (hd rows of bs values), one query head's hd values, one output row's
    // bs logits.
    // Threads write disjoint (block, KV head) ranges of `dst`.
    unsafe {
        let dst = &*dst;
        let (store, ids, q) = (&*dst.src[0], &*dst.src[1], &*dst.src[2]);
        let (hd, group, n_kv) = (q.ne[0] as usize, q.ne[1] as usize, q.ne[2] as usize);
        let ids = block_ids(ids, store.ne[1]);
        let bs = dst.ne[0] as usize / ids.len();
        let row = row_bytes(store.type_, bs);
        let heads: Vec<&[f32]> = (0..n_kv * group)
            .map(|h| {
                let x = (q.data as *const u8).add(h / group * q.nb[2] + h % group * q.nb[1]);
                std::slice::from_raw_parts(x as *const f32, hd)
            })
            .collect();
        let mut out: Vec<&mut [f32]> = Vec::with_capacity(group);
        with_row_format(store, |fmt| {
            for item in (ith as usize..ids.len() * n_kv).step_by(nth as usize) {
                let (i, kv) = (item / n_kv, item % n_kv);
                let keys = (store.data as *const u8).add(ids[i] as usize * store.nb[1] + kv * hd * row);
                let keys = std::slice::from_raw_parts(keys, hd * row);
                out.clear();
                out.extend((0..group).map(|j| {
                    let o = (dst.data as *mut u8).add(kv * dst.nb[2] + j * dst.nb[1] + i * bs * 4);
                    std::slice::from_raw_parts_mut(o as *mut f32, bs)
                }));
                kernels::column_dots(fmt, (keys, row, row), &heads[kv * group..][..group], &mut out);
            }
        });
    }
}

/// The `block_values` op: each of ggml's `nth` threads takes every nth
/// (KV head, 16 channels) pair, summing over all chosen blocks.
unsafe extern "C" fn block_values_op(dst: *mut sys::ggml_tensor, ith: c_int, nth: c_int, _: *mut c_void) {
    // SAFETY: ggml calls this only for nodes built by `Context::block_values`,
    // whose sources were checked there (store rows of whole tiles of a known
    // type, contiguous I32 ids, f32 probabilities [bs * n_sel, group, n_kv]
    // with unit element stride), allocated when the graph runs. Ids are
    // checked against the store; each slice below stays inside its tensor:
    // a block's value rows c0..c1 for one KV head, one head's bs
    // probabilities of one block, one output row's channels c0..c1. Threads
    // write disjoint (KV head, channel) ranges of `dst`.
    unsafe {
        let dst = &*dst;
        let (store, ids, p) = (&*dst.src[0], &*dst.src[1], &*dst.src[2]);
        let (hd, group, n_kv) = (dst.ne[0] as usize, dst.ne[1] as usize, dst.ne[2] as usize);
        let ids = block_ids(ids, store.ne[1]);
        let bs = p.ne[0] as usize / ids.len();
        let row = row_bytes(store.type_, bs);
        let tiles = hd.div_ceil(kernels::LANES);
        // Each (KV head, block)'s probabilities, one slice per query head.
        let probs: Vec<&[f32]> = (0..n_kv * ids.len() * group)
            .map(|h| {
                let (kv, i, j) = (h / group / ids.len(), h / group % ids.len(), h % group);
                let x = (p.data as *const u8).add(kv * p.nb[2] + j * p.nb[1] + i * bs * 4);
                std::slice::from_raw_parts(x as *const f32, bs)
            })
            .collect();
        let mut sets: Vec<kernels::RowSet> = Vec::with_capacity(ids.len());
        let mut out: Vec<&mut [f32]> = Vec::with_capacity(group);
        with_row_format(store, |fmt| {
            for item in (ith as usize..n_kv * tiles).step_by(nth as usize) {
                let (kv, c0) = (item / tiles, item % tiles * kernels::LANES);
                let c1 = (c0 + kernels::LANES).min(hd);
                sets.clear();
                sets.extend(ids.iter().enumerate().map(|(i, &b)| {
                    let at = b as usize * store.nb[1] + (kv * hd + c0) * row;
                    let rows = std::slice::from_raw_parts((store.data as *const u8).add(at), (c1 - c0) * row);
                    (rows, &probs[(kv * ids.len() + i) * group..][..group])
                }));
                out.clear();
                out.extend((0..group).map(|j| {
                    let o = (dst.data as *mut u8).add(kv * dst.nb[2] + j * dst.nb[1] + c0 * 4);
                    std::slice::from_raw_parts_mut(o as *mut f32, c1 - c0)
                }));
                kernels::row_dots(fmt, row, row, &sets, &mut out);
            }
        });
    }
}

/// The `value_sums` op: each of ggml's `nth` threads takes every nth
/// (KV head, 16 channels) pair.
unsafe extern "C" fn value_sums_op(dst: *mut sys::ggml_tensor, ith: c_int, nth: c_int, _: *mut c_void) {
    // SAFETY: ggml calls this only for nodes built by `Context::value_sums`,
    // whose sources were checked there (f16 values and f32 probabilities,
    // unit element strides, matching shapes) and which are allocated when
    // the graph runs. Each slice below stays inside its tensor: values span
    // channels c0..c1 of one KV head's n keys, probabilities one query
    // head's n, outputs channels c0..c1 of one row. Threads write disjoint
    // (KV head, channel) ranges of `dst`; nothing writes the sources.
    unsafe {
        let dst = &*dst;
        let (v, p) = (&*dst.src[0], &*dst.src[1]);
        let (from, to) = range_of(dst, 2, v.ne[0] as usize);
        let (n, hd, group, n_kv) = (to - from, dst.ne[0] as usize, dst.ne[1] as usize, dst.ne[2] as usize);
        let tiles = hd.div_ceil(kernels::LANES);
        let mut probs: Vec<&[f32]> = Vec::with_capacity(group);
        let mut out: Vec<&mut [f32]> = Vec::with_capacity(group);
        for item in (ith as usize..n_kv * tiles).step_by(nth as usize) {
            let (kv, c0) = (item / tiles, item % tiles * kernels::LANES);
            let c1 = (c0 + kernels::LANES).min(hd);
            let vals = (v.data as *const u8).add(kv * v.nb[2] + c0 * v.nb[1] + from * 2);
            let vals = std::slice::from_raw_parts(vals, (c1 - c0 - 1) * v.nb[1] + 2 * n);
            probs.clear();
            probs.extend((0..group).map(|j| {
                let x = (p.data as *const u8).add(kv * p.nb[2] + j * p.nb[1] + from * 4);
                std::slice::from_raw_parts(x as *const f32, n)
            }));
            out.clear();
            out.extend((0..group).map(|j| {
                let o = (dst.data as *mut u8).add(kv * dst.nb[2] + j * dst.nb[1] + c0 * 4);
                std::slice::from_raw_parts_mut(o as *mut f32, c1 - c0)
            }));
            kernels::value_sums(vals, v.nb[1], &probs, &mut out);
        }
    }
}

/// The `key_scores` op, run by each of ggml's `nth` threads on its share
/// of the keys (whole 16-key tiles).
unsafe extern "C" fn key_scores_op(dst: *mut sys::ggml_tensor, ith: c_int, nth: c_int, _: *mut c_void) {
    // SAFETY: ggml calls this only for nodes built by `Context::key_scores`,
    // whose sources were checked there (f16 keys with unit element stride,
    // contiguous f32 queries, matching shapes) and which are allocated when
    // the graph runs. Each slice below stays inside its tensor: keys span
    // channels 0..dim of the thread's key range for one KV head, queries one
    // head's rows, outputs one row's key range. Threads write disjoint key
    // ranges of `dst` (the first also the keys outside the valid range,
    // which no thread's range holds); nothing writes the sources.
    unsafe {
        let dst = &*dst;
        let (k, q) = (&*dst.src[0], &*dst.src[1]);
        let (dim, n_kv) = (k.ne[1] as usize, k.ne[2] as usize);
        let (n_q, n_head) = (q.ne[1] as usize, q.ne[2] as usize);
        let (ith, nth) = (ith as usize, nth as usize);
        // Keys outside the range score -inf: the first thread writes those.
        let (from, to) = range_of(dst, 2, k.ne[0] as usize);
        if ith == 0 {
            fill_outside(dst, from, to, f32::NEG_INFINITY);
        }
        let n = to - from;
        let tiles = n.div_ceil(kernels::LANES);
        let lo = from + (tiles * ith / nth * kernels::LANES).min(n);
        let hi = from + (tiles * (ith + 1) / nth * kernels::LANES).min(n);
        if lo == hi {
            return;
        }
        let row = k.nb[1] / 2;
        for h in 0..n_head {
            let kv = h / (n_head / n_kv);
            let keys = (k.data as *const u8).add(kv * k.nb[2] + lo * 2) as *const u16;
            let keys = std::slice::from_raw_parts(keys, (dim - 1) * row + (hi - lo));
            let qs = std::slice::from_raw_parts((q.data as *const u8).add(h * q.nb[2]) as *const f32, n_q * dim);
            let mut out: Vec<&mut [f32]> = (0..n_q)
                .map(|j| {
                    let o = (dst.data as *mut u8).add(h * dst.nb[2] + j * dst.nb[1] + lo * 4);
                    std::slice::from_raw_parts_mut(o as *mut f32, hi - lo)
                })
                .collect();
            kernels::key_scores(keys, row, qs, dim, &mut out);
        }
    }
}

/// The `put_columns` op: each of ggml's `nth` threads writes its share of
/// the destination rows.
unsafe extern "C" fn put_columns_op(dst: *mut sys::ggml_tensor, ith: c_int, nth: c_int, _: *mut c_void) {
    // SAFETY: ggml calls this only for nodes built by `Context::put_columns`,
    // whose tensors were checked there (f16 destination rows with unit
    // element stride, contiguous f32 / f16 vectors of the row count, one I32
    // slot per vector) and are allocated when the graph runs. Slots are
    // checked below against the row length before any write. Threads write
    // disjoint destination rows; nothing writes the sources.
    unsafe {
        let dst = &*dst;
        let (x, slots) = (&*dst.src[1], &*dst.src[2]);
        let (cap, n_rows, n) = (dst.ne[0] as usize, dst.ne[1] as usize, x.ne[1] as usize);
        let slots = std::slice::from_raw_parts(slots.data as *const i32, n);
        assert!(
            slots.iter().all(|&s| (0..cap as i32).contains(&s)),
            "put_columns: slot past the row"
        );
        let (r0, r1) = (
            n_rows * ith as usize / nth as usize,
            n_rows * (ith as usize + 1) / nth as usize,
        );
        let f16_src = x.type_ == sys::GGML_TYPE_F16;
        for r in r0..r1 {
            let row = (dst.data as *mut u8).add(r * dst.nb[1]) as *mut half::f16;
            for (i, &slot) in slots.iter().enumerate() {
                let at = (x.data as *const u8).add(i * x.nb[1] + r * x.nb[0]);
                let v = match f16_src {
                    true => *(at as *const half::f16),
                    false => half::f16::from_f32(*(at as *const f32)),
                };
                *row.add(slot as usize) = v;
            }
        }
    }
}

/// Sets the entries of every row (dim 0) of the f32 tensor `t` outside
/// [from, to) to `value`.
///
/// # Safety
/// `t` must be an allocated f32 tensor with unit element stride, `from <=
/// to <= ne[0]`, and nothing else may access those entries during the call
/// (other threads may use the rest of the rows: no reference covers it).
unsafe fn fill_outside(t: &sys::ggml_tensor, from: usize, to: usize, value: f32) {
    let n = t.ne[0] as usize;
    for i3 in 0..t.ne[3] as usize {
        for i2 in 0..t.ne[2] as usize {
            for i1 in 0..t.ne[1] as usize {
                // SAFETY: the two runs lie inside row (i1, i2, i3) of `t` and
                // are ours alone (the caller's contract).
                unsafe {
                    let row = (t.data as *mut u8).add(i1 * t.nb[1] + i2 * t.nb[2] + i3 * t.nb[3]) as *mut f32;
                    std::slice::from_raw_parts_mut(row, from).fill(value);
                    std::slice::from_raw_parts_mut(row.add(to), n - to).fill(value);
                }
            }
        }
    }
}

/// The `mask_outside` op: each of ggml's `nth` threads takes every nth row.
unsafe extern "C" fn mask_outside_op(dst: *mut sys::ggml_tensor, ith: c_int, nth: c_int, _: *mut c_void) {
    // SAFETY: ggml calls this only for nodes built by `Context::mask_outside`:
    // `dst` and its source `x` are allocated f32 tensors of one shape with
    // unit element stride, source 1 the checked range; each slice below is
    // one row of its tensor. Threads write disjoint rows of `dst`.
    unsafe {
        let dst = &*dst;
        let x = &*dst.src[0];
        let n = dst.ne[0] as usize;
        let (from, to) = range_of(dst, 1, n);
        let (n1, n2) = (dst.ne[1] as usize, dst.ne[2] as usize);
        let rows = n1 * n2 * dst.ne[3] as usize;
        for r in (ith as usize..rows).step_by(nth as usize) {
            let (i1, i2, i3) = (r % n1, r / n1 % n2, r / (n1 * n2));
            let at = |t: &sys::ggml_tensor| (t.data as *mut u8).add(i1 * t.nb[1] + i2 * t.nb[2] + i3 * t.nb[3]);
            let src = std::slice::from_raw_parts(at(x) as *const f32, n);
            let out = std::slice::from_raw_parts_mut(at(dst) as *mut f32, n);
            out.fill(f32::NEG_INFINITY);
            out[from..to].copy_from_slice(&src[from..to]);
        }
    }
}
