//! ggml contexts, tensor and graph handles, and tensor data access.
//!
//! A `Context` holds tensor metadata only (`no_alloc`): data lives in backend
//! buffers (weights: the memory-mapped file; caches: a host buffer; graph
//! intermediates: the scheduler). A `Tensor` is a copyable handle that
//! borrows its context, so it can never outlive it.

use std::ffi::CString;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{liveness, sys, GgmlType};

/// Owns a `ggml_context`.
pub struct Context {
    raw: NonNull<sys::ggml_context>,
    /// Unique in the process (an address can be reused; this cannot).
    id: u64,
}

/// The next context's `id`.
static NEXT_CONTEXT_ID: AtomicU64 = AtomicU64::new(0);

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
    ctx: u64,
    raw: NonNull<sys::ggml_tensor>,
}

// SAFETY: an id is an inert address and a context's id; it is dereferenced
// only through `Context::tensor`, which checks it belongs to that (live)
// context (by its unique id: a later context at the same address differs).
unsafe impl Send for TensorId {}
unsafe impl Sync for TensorId {}

/// A computation graph allocated in a `Context`.
pub struct Graph<'c> {
    pub(super) raw: NonNull<sys::ggml_cgraph>,
    ctx_id: u64,
    _ctx: PhantomData<&'c Context>,
}

/// A graph handle that does not borrow its context (as `TensorId`), for
/// keeping a built graph next to the context that owns it.
#[derive(Clone, Copy, Debug)]
pub struct GraphId {
    ctx: u64,
    raw: NonNull<sys::ggml_cgraph>,
}

// SAFETY: inert, as `TensorId`; dereferenced only through `Context::graph`,
// which checks it belongs to that (live) context.
unsafe impl Send for GraphId {}

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
            id: NEXT_CONTEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub(super) fn wrap(&self, t: *mut sys::ggml_tensor) -> Tensor<'_> {
        Tensor {
            raw: NonNull::new(t).expect("ggml returned a null tensor (context full)"),
            _ctx: PhantomData,
        }
    }

    /// A new tensor of type `ty` with dimensions `ne` (ggml order, 1 to 4 dims).
    pub fn new_tensor(&self, ty: GgmlType, ne: &[i64]) -> Tensor<'_> {
        assert!((1..=4).contains(&ne.len()));
        // SAFETY: the context is valid and `ne` has ne.len() elements.
        self.wrap(unsafe { sys::ggml_new_tensor(self.raw.as_ptr(), ty.sys(), ne.len() as i32, ne.as_ptr()) })
    }

    pub fn new_graph(&self, size: usize) -> Graph<'_> {
        // SAFETY: the context was sized for a graph of this size by `new`.
        let raw = unsafe { sys::ggml_new_graph_custom(self.raw.as_ptr(), size, false) };
        Graph {
            raw: NonNull::new(raw).expect("ggml_new_graph_custom failed"),
            ctx_id: self.id,
            _ctx: PhantomData,
        }
    }

    /// A storable handle to `t`, which must belong to this context.
    pub fn id(&self, t: Tensor<'_>) -> TensorId {
        TensorId {
            ctx: self.id,
            raw: t.raw,
        }
    }

    /// The tensor behind `id`.
    pub fn tensor(&self, id: TensorId) -> Tensor<'_> {
        assert!(id.ctx == self.id, "tensor id used with another context");
        Tensor {
            raw: id.raw,
            _ctx: PhantomData,
        }
    }

    /// A storable handle to `g`, which must belong to this context.
    pub fn graph_id(&self, g: &Graph<'_>) -> GraphId {
        GraphId {
            ctx: self.id,
            raw: g.raw,
        }
    }

    /// The graph behind `id`.
    pub fn graph(&self, id: GraphId) -> Graph<'_> {
        assert!(id.ctx == self.id, "graph id used with another context");
        Graph {
            raw: id.raw,
            ctx_id: self.id,
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

    pub(super) fn get(&self) -> &sys::ggml_tensor {
        // SAFETY: the tensor lives as long as its context, which outlives 'c.
        unsafe { self.raw.as_ref() }
    }

    pub fn ne(self) -> [i64; 4] {
        self.get().ne
    }

    pub fn nb(self) -> [usize; 4] {
        self.get().nb
    }

    pub fn ty(self) -> GgmlType {
        GgmlType::try_from(self.get().type_).expect("tensor of a known type")
    }

    pub fn nbytes(self) -> usize {
        // SAFETY: pure query on a valid tensor.
        unsafe { sys::ggml_nbytes(self.raw()) }
    }

    /// Byte offset of a view into the tensor it views (0 for a tensor of its own).
    pub fn view_offset(self) -> usize {
        self.get().view_offs
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

    /// Whether the tensor's memory is host memory (reads and writes are
    /// copies, not transfers to a device); false for memory since freed.
    pub fn is_host(self) -> bool {
        if !liveness::holds(self.raw()) {
            return false;
        }
        let t = self.get();
        let buffer = if t.view_src.is_null() {
            t.buffer
        } else {
            // SAFETY: a view's source outlives the view (same context or
            // one that outlives it, ggml's rule).
            unsafe { (*t.view_src).buffer }
        };
        // SAFETY: a live buffer (checked above).
        !buffer.is_null() && unsafe { sys::ggml_backend_buffer_is_host(buffer) }
    }

    /// Copies `data` into the tensor's memory at byte `offset` (any backend).
    pub fn write_bytes(self, offset: usize, data: &[u8]) {
        assert!(self.is_allocated(), "write to an unallocated tensor");
        assert!(liveness::holds(self.raw()), "write to a tensor whose memory was freed");
        assert!(offset + data.len() <= self.nbytes(), "write past the end of a tensor");
        // SAFETY: the tensor's memory is alive and the range lies in it (checked above).
        unsafe { sys::ggml_backend_tensor_set(self.raw(), data.as_ptr().cast(), offset, data.len()) }
    }

    /// Copies the tensor's bytes `[offset, offset + out.len())` into `out`.
    pub fn read_bytes(self, offset: usize, out: &mut [u8]) {
        assert!(self.is_allocated(), "read of an unallocated tensor");
        assert!(liveness::holds(self.raw()), "read of a tensor whose memory was freed");
        assert!(offset + out.len() <= self.nbytes(), "read past the end of a tensor");
        // SAFETY: the tensor's memory is alive and the range lies in it (checked above).
        unsafe { sys::ggml_backend_tensor_get(self.raw(), out.as_mut_ptr().cast(), offset, out.len()) }
    }

    pub fn write_f32(self, data: &[f32]) {
        assert_eq!(self.ty(), GgmlType::F32);
        self.write_bytes(0, as_bytes(data));
    }

    pub fn write_i32(self, data: &[i32]) {
        assert_eq!(self.ty(), GgmlType::I32);
        self.write_bytes(0, as_bytes(data));
    }

    pub fn write_f16(self, data: &[half::f16]) {
        assert_eq!(self.ty(), GgmlType::F16);
        self.write_bytes(0, as_bytes(data));
    }

    /// Reads an F32 tensor into `out` (resized to the element count).
    pub fn read_f32(self, out: &mut Vec<f32>) {
        assert_eq!(self.ty(), GgmlType::F32);
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
    /// Identifies this graph while its context lives (an address alone
    /// could be a later context's graph).
    pub(super) fn key(&self) -> (u64, usize) {
        (self.ctx_id, self.raw.as_ptr() as usize)
    }

    /// Every node and every node's sources (a tensor may come more than once).
    pub(super) fn tensors(&self) -> impl Iterator<Item = *mut sys::ggml_tensor> + '_ {
        let g = self.raw.as_ptr();
        // SAFETY: a live graph (the borrow of its context); indices below its
        // node count give its nodes, whose sources are null or live tensors.
        let n = unsafe { sys::ggml_graph_n_nodes(g) };
        (0..n).flat_map(move |i| {
            // SAFETY: as above, `i` is below the node count.
            let node = unsafe { sys::ggml_graph_node(g, i) };
            // SAFETY: a node of a live graph is a live tensor.
            let srcs = unsafe { (*node).src };
            std::iter::once(node).chain(srcs.into_iter().filter(|s| !s.is_null()))
        })
    }

    /// Adds `t` and everything it depends on.
    pub fn expand(&mut self, t: Tensor<'_>) {
        // SAFETY: graph and tensor belong to live contexts; ggml aborts if the
        // graph is full, which the caller sizes for.
        unsafe { sys::ggml_build_forward_expand(self.raw.as_ptr(), t.raw()) }
    }
}
