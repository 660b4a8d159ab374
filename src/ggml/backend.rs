//! The compute backend (ggml's CPU backend with one persistent thread pool),
//! backend buffers, and the graph allocator.

use std::ptr::NonNull;

use super::sys;
use super::tensor::{Context, Graph, Tensor};

/// ggml's CPU backend with a thread pool that lives as long as it does, so
/// decode steps do not pay for thread creation.
pub struct Backend {
    raw: NonNull<sys::ggml_backend>,
    pool: NonNull<sys::ggml_threadpool>,
}

// SAFETY: the backend and its pool are used by one thread at a time (every
// method takes &mut self or is a pure query); ggml's CPU backend keeps no
// thread-affine state on the calling thread.
unsafe impl Send for Backend {}

impl Backend {
    pub fn cpu(n_threads: usize) -> anyhow::Result<Self> {
        let n_threads = n_threads.max(1);
        // SAFETY: plain constructor calls; results checked for null below, the
        // pool is attached to the backend that owns it for its whole life.
        unsafe {
            let raw = NonNull::new(sys::ggml_backend_cpu_init())
                .ok_or_else(|| anyhow::anyhow!("cannot initialise ggml's CPU backend"))?;
            let mut params = sys::ggml_threadpool_params_default(n_threads as i32);
            params.poll = 50;
            let pool = match NonNull::new(sys::ggml_threadpool_new(&mut params)) {
                Some(p) => p,
                None => {
                    sys::ggml_backend_free(raw.as_ptr());
                    anyhow::bail!("cannot create a ggml thread pool of {n_threads} threads");
                }
            };
            sys::ggml_backend_cpu_set_n_threads(raw.as_ptr(), n_threads as i32);
            sys::ggml_backend_cpu_set_threadpool(raw.as_ptr(), pool.as_ptr());
            Ok(Self { raw, pool })
        }
    }

    /// Runs an allocated graph.
    pub fn compute(&mut self, graph: &mut Graph<'_>) -> anyhow::Result<()> {
        // SAFETY: the graph's tensors were allocated by a GraphAllocator or
        // live in buffers, and its context is alive (the borrow of `graph`).
        let status = unsafe { sys::ggml_backend_graph_compute(self.raw.as_ptr(), graph.raw.as_ptr()) };
        if status != sys::GGML_STATUS_SUCCESS {
            anyhow::bail!("ggml graph computation failed (status {status})");
        }
        Ok(())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: we own both; the backend is freed before its pool.
        unsafe {
            sys::ggml_backend_free(self.raw.as_ptr());
            sys::ggml_threadpool_free(self.pool.as_ptr());
        }
    }
}

/// A backend buffer holding tensor data.
pub struct Buffer {
    raw: NonNull<sys::ggml_backend_buffer>,
}

// SAFETY: a buffer is memory plus a vtable; access is synchronised by the
// owner (no interior mutability across threads).
unsafe impl Send for Buffer {}

impl Buffer {
    /// Wraps existing host memory (the model file mapping) without copying, and
    /// points each `(tensor, offset)` at its bytes inside it.
    ///
    /// `memory` must outlive the buffer and every graph that reads the tensors;
    /// the caller keeps the mapping alive alongside (see `model::Weights`).
    pub fn from_host_slice(memory: &[u8], tensors: &[(Tensor<'_>, usize)]) -> anyhow::Result<Self> {
        for (t, off) in tensors {
            anyhow::ensure!(
                off.checked_add(t.nbytes()).is_some_and(|end| end <= memory.len()),
                "tensor data out of bounds"
            );
            anyhow::ensure!(!t.is_allocated(), "tensor already has data");
        }
        // SAFETY: ggml only reads through this buffer for weight tensors (the
        // CPU buffer type does not write unless asked to); ranges were checked
        // above so every tensor's data lies within `memory`.
        unsafe {
            let base = memory.as_ptr() as *mut std::ffi::c_void;
            let raw = NonNull::new(sys::ggml_backend_cpu_buffer_from_ptr(base, memory.len()))
                .ok_or_else(|| anyhow::anyhow!("cannot wrap the model mapping in a ggml buffer"))?;
            sys::ggml_backend_buffer_set_usage(raw.as_ptr(), sys::GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
            for (t, off) in tensors {
                let status = sys::ggml_backend_tensor_alloc(raw.as_ptr(), t.raw(), base.cast::<u8>().add(*off).cast());
                if status != sys::GGML_STATUS_SUCCESS {
                    sys::ggml_backend_buffer_free(raw.as_ptr());
                    anyhow::bail!("cannot place a weight tensor in the model mapping");
                }
            }
            Ok(Self { raw })
        }
    }

    /// Allocates host memory for every tensor of `ctx` (zeroed).
    pub fn alloc_context(ctx: &Context) -> anyhow::Result<Self> {
        // SAFETY: the context is valid; the CPU buffer type allocates host
        // memory and sets each tensor's data; null means out of memory.
        unsafe {
            let raw = sys::ggml_backend_alloc_ctx_tensors_from_buft(ctx.raw(), sys::ggml_backend_cpu_buffer_type());
            let raw = NonNull::new(raw).ok_or_else(|| anyhow::anyhow!("out of memory allocating tensors"))?;
            sys::ggml_backend_buffer_clear(raw.as_ptr(), 0);
            Ok(Self { raw })
        }
    }

    pub fn size(&self) -> usize {
        // SAFETY: pure query.
        unsafe { sys::ggml_backend_buffer_get_size(self.raw.as_ptr()) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: we own the buffer.
        unsafe { sys::ggml_backend_buffer_free(self.raw.as_ptr()) }
    }
}

/// Allocates graph intermediates, reusing one host buffer across graphs
/// (grown when a larger graph comes).
pub struct GraphAllocator {
    raw: NonNull<sys::ggml_gallocr>,
}

// SAFETY: owned, used from one thread at a time.
unsafe impl Send for GraphAllocator {}

impl GraphAllocator {
    pub fn cpu() -> Self {
        // SAFETY: constructor; the CPU buffer type is a static.
        let raw = unsafe { sys::ggml_gallocr_new(sys::ggml_backend_cpu_buffer_type()) };
        Self {
            raw: NonNull::new(raw).expect("ggml_gallocr_new failed"),
        }
    }

    /// Gives every tensor of `graph` without data its memory.
    pub fn alloc(&mut self, graph: &mut Graph<'_>) -> anyhow::Result<()> {
        // SAFETY: allocator and graph are valid; false means out of memory.
        let ok = unsafe { sys::ggml_gallocr_alloc_graph(self.raw.as_ptr(), graph.raw.as_ptr()) };
        anyhow::ensure!(ok, "out of memory allocating the compute graph");
        Ok(())
    }

    /// Bytes of the compute buffer.
    pub fn size(&self) -> usize {
        // SAFETY: pure query.
        unsafe { sys::ggml_gallocr_get_buffer_size(self.raw.as_ptr(), 0) }
    }
}

impl Drop for GraphAllocator {
    fn drop(&mut self) {
        // SAFETY: we own the allocator.
        unsafe { sys::ggml_gallocr_free(self.raw.as_ptr()) }
    }
}
