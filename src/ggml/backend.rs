//! Backends (a device's compute: ggml's CPU backend with one persistent
//! thread pool, or a GPU's, or a remote one), backend buffers, and the
//! scheduler that runs a graph over several backends.

use std::ptr::NonNull;

use super::device::{BufferType, Device};
use super::liveness;
use super::sys;
use super::tensor::{Context, Graph, Tensor};

/// Most nodes a graph may have (a 64-layer model uses ~2,500).
pub const MAX_GRAPH_NODES: usize = 16_384;

/// A device's backend: what computes graphs there. The CPU's has a thread
/// pool that lives as long as it does, so decode steps do not pay for
/// thread creation.
pub struct Backend {
    raw: NonNull<sys::ggml_backend>,
    pool: Option<NonNull<sys::ggml_threadpool>>,
    device: Device,
}

// SAFETY: the backend and its pool are used by one thread at a time (every
// method takes &mut self or is a pure query); ggml's backends keep no
// thread-affine state on the calling thread.
unsafe impl Send for Backend {}

impl Backend {
    pub fn cpu(n_threads: usize) -> anyhow::Result<Self> {
        Self::new(Device::cpu()?, n_threads)
    }

    /// The backend of `device`; `n_threads` applies to the CPU's.
    pub fn new(device: Device, n_threads: usize) -> anyhow::Result<Self> {
        // SAFETY: constructor on a registered device; null is checked.
        let raw = unsafe { sys::ggml_backend_dev_init(device.raw(), std::ptr::null()) };
        let raw = NonNull::new(raw).ok_or_else(|| anyhow::anyhow!("cannot initialise device {}", device.name()))?;
        let mut backend = Self {
            raw,
            pool: None,
            device,
        };
        if device.is_cpu() {
            backend.attach_pool(n_threads.max(1))?;
        }
        Ok(backend)
    }

    fn attach_pool(&mut self, n_threads: usize) -> anyhow::Result<()> {
        // SAFETY: a CPU backend (checked by the caller); the pool is attached
        // to the backend that owns it for its whole life; null is checked.
        unsafe {
            let mut params = sys::ggml_threadpool_params_default(n_threads as i32);
            params.poll = 50;
            let pool = NonNull::new(sys::ggml_threadpool_new(&mut params))
                .ok_or_else(|| anyhow::anyhow!("cannot create a ggml thread pool of {n_threads} threads"))?;
            sys::ggml_backend_cpu_set_n_threads(self.raw.as_ptr(), n_threads as i32);
            sys::ggml_backend_cpu_set_threadpool(self.raw.as_ptr(), pool.as_ptr());
            self.pool = Some(pool);
        }
        Ok(())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: we own both; the backend is freed before its pool.
        unsafe {
            sys::ggml_backend_free(self.raw.as_ptr());
            if let Some(pool) = self.pool {
                sys::ggml_threadpool_free(pool.as_ptr());
            }
        }
    }
}

/// A backend buffer holding tensor data.
pub struct Buffer {
    raw: NonNull<sys::ggml_backend_buffer>,
    alive: liveness::Alive,
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
            Ok(Self::live(raw))
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
            Ok(Self::live(raw))
        }
    }

    /// One buffer of `buft` holding `tensors` (tensors without data), not
    /// initialised (`clear` zeroes it).
    pub fn alloc_tensors(buft: BufferType, tensors: &[Tensor<'_>]) -> anyhow::Result<Self> {
        let align = buft.alignment().max(1);
        let mut offsets = Vec::with_capacity(tensors.len());
        let mut size = 0usize;
        for t in tensors {
            anyhow::ensure!(!t.is_allocated(), "tensor already has data");
            offsets.push(size);
            size = (size + buft.alloc_size(*t)).next_multiple_of(align);
        }
        // SAFETY: a buffer of `size` bytes of `buft`; null means out of
        // memory. Each tensor is placed at an aligned offset inside it, with
        // the room the buffer type asks for (`alloc_size`), checked above.
        unsafe {
            let raw = sys::ggml_backend_buft_alloc_buffer(buft.raw.as_ptr(), size.max(1));
            let raw = NonNull::new(raw)
                .ok_or_else(|| anyhow::anyhow!("out of memory: {} MiB on {}", size >> 20, buft.name()))?;
            let buffer = Self::live(raw);
            let base = sys::ggml_backend_buffer_get_base(raw.as_ptr()).cast::<u8>();
            for (t, off) in tensors.iter().zip(offsets) {
                let status = sys::ggml_backend_tensor_alloc(raw.as_ptr(), t.raw(), base.add(off).cast());
                anyhow::ensure!(
                    status == sys::GGML_STATUS_SUCCESS,
                    "cannot place a tensor on {}",
                    buft.name()
                );
            }
            Ok(buffer)
        }
    }

    /// Owns `raw`, a buffer just allocated, recorded as alive.
    fn live(raw: NonNull<sys::ggml_backend_buffer>) -> Self {
        let alive = liveness::add(raw.as_ptr());
        Self { raw, alive }
    }

    /// Sets every byte to zero.
    pub fn clear(&self) {
        // SAFETY: a valid buffer, not in use by a running graph (&self is
        // only shared between graph runs).
        unsafe { sys::ggml_backend_buffer_clear(self.raw.as_ptr(), 0) }
    }

    /// Marks the buffer as holding weights: the scheduler runs the ops that
    /// read them on its backend.
    pub fn mark_weights(&self) {
        // SAFETY: a valid buffer; usage is a hint for the scheduler.
        unsafe { sys::ggml_backend_buffer_set_usage(self.raw.as_ptr(), sys::GGML_BACKEND_BUFFER_USAGE_WEIGHTS) }
    }

    pub fn size(&self) -> usize {
        // SAFETY: pure query.
        unsafe { sys::ggml_backend_buffer_get_size(self.raw.as_ptr()) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        liveness::remove(&self.alive);
        // SAFETY: we own the buffer.
        unsafe { sys::ggml_backend_buffer_free(self.raw.as_ptr()) }
    }
}

/// Runs graphs over one or more backends (ggml's scheduler): each node goes
/// to the backend of the memory its inputs live in, or that can run it,
/// with copies between them where a graph crosses devices. Intermediates
/// live in one compute buffer per backend, reused across graphs.
pub struct Scheduler {
    raw: NonNull<sys::ggml_backend_sched>,
    /// Devices first, the CPU last (ggml's rule).
    backends: Vec<Backend>,
    /// The compute memory of the last allocation (ggml frees it when it
    /// allocates more, or with the scheduler).
    compute_memory: Vec<liveness::Alive>,
    /// The graph last allocated (`Graph::key`): the one `compute` runs.
    allocated: Option<(u64, usize)>,
    /// `liveness::frees()` when that graph's memory was last found alive.
    checked: u64,
}

// SAFETY: owned, used from one thread at a time.
unsafe impl Send for Scheduler {}

impl Scheduler {
    pub fn cpu(n_threads: usize) -> anyhow::Result<Self> {
        Self::new(vec![Backend::cpu(n_threads)?], MAX_GRAPH_NODES)
    }

    /// A scheduler over `backends`, the CPU's last, for graphs of up to
    /// `graph_size` nodes.
    pub fn new(backends: Vec<Backend>, graph_size: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            backends.last().is_some_and(|b| b.device.is_cpu()),
            "the CPU backend must come last"
        );
        anyhow::ensure!(backends.len() <= 16, "at most 15 devices besides the CPU");
        let mut raw_backends: Vec<_> = backends.iter().map(|b| b.raw.as_ptr()).collect();
        // SAFETY: the backends outlive the scheduler (owned by it, dropped
        // after it); null buffer types mean each backend's default.
        let raw = unsafe {
            sys::ggml_backend_sched_new(
                raw_backends.as_mut_ptr(),
                std::ptr::null_mut(),
                raw_backends.len() as i32,
                graph_size,
                false,
                true,
            )
        };
        let raw = NonNull::new(raw).ok_or_else(|| anyhow::anyhow!("cannot create the graph scheduler"))?;
        Ok(Self {
            raw,
            backends,
            compute_memory: Vec::new(),
            allocated: None,
            checked: 0,
        })
    }

    /// Assigns every node of `graph` a backend and gives every tensor
    /// without data its memory (forgetting the previous graph's).
    pub fn alloc(&mut self, graph: &mut Graph<'_>) -> anyhow::Result<()> {
        self.allocated = None;
        let fresh: Vec<_> = graph.tensors().filter(|&t| Self::needs_memory(t)).collect();
        // SAFETY: scheduler and graph are valid; false means out of memory.
        let ok = unsafe {
            sys::ggml_backend_sched_reset(self.raw.as_ptr());
            self.pin_custom_ops(graph);
            sys::ggml_backend_sched_alloc_graph(self.raw.as_ptr(), graph.raw.as_ptr())
        };
        self.note_compute_memory(&fresh);
        anyhow::ensure!(ok, "out of memory allocating the compute graph");
        self.check_memory(graph)?;
        self.allocated = Some(graph.key());
        Ok(())
    }

    /// Whether the allocator gives `t` memory (not a view, no data yet).
    fn needs_memory(t: *mut sys::ggml_tensor) -> bool {
        // SAFETY: a live tensor of the graph being allocated.
        unsafe { (*t).data.is_null() && (*t).view_src.is_null() }
    }

    /// Records the buffers the allocator put `fresh` in as this scheduler's
    /// compute memory, in place of the last allocation's.
    fn note_compute_memory(&mut self, fresh: &[*mut sys::ggml_tensor]) {
        self.compute_memory.iter().for_each(liveness::remove);
        let mut buffers: Vec<_> = fresh
            .iter()
            // SAFETY: live tensors of the graph just allocated.
            .map(|&t| unsafe { (*t).buffer })
            .filter(|b| !b.is_null())
            .collect();
        buffers.sort();
        buffers.dedup();
        self.compute_memory = buffers.into_iter().map(liveness::add).collect();
    }

    /// Fails if a tensor of `graph` has no memory or memory since freed.
    fn check_memory(&mut self, graph: &Graph<'_>) -> anyhow::Result<()> {
        let frees = liveness::frees();
        anyhow::ensure!(
            liveness::all_hold(graph.tensors().map(|t| t.cast_const())),
            "a graph reads or writes memory that was freed (or never given)"
        );
        self.checked = frees;
        Ok(())
    }

    /// Nodes only the CPU backend can run, assigned to it: our custom ops
    /// (they call back into this process; ggml's RPC backend claims every
    /// op, and would fail on them), and `join_rows`' joined tensors with
    /// everything written into or read through them (the scheduler leaves a
    /// view of no tensor unassigned, and would copy it before it is written).
    fn pin_custom_ops(&mut self, graph: &Graph<'_>) {
        let cpu = self.backends.last().expect("the CPU backend").raw.as_ptr();
        let mut pinned = std::collections::HashSet::new();
        // SAFETY: node indices are below the graph's node count; each node is
        // a live tensor of the graph; the CPU backend belongs to this scheduler.
        unsafe {
            for i in 0..sys::ggml_graph_n_nodes(graph.raw.as_ptr()) {
                let node = sys::ggml_graph_node(graph.raw.as_ptr(), i);
                let n = &*node;
                let joined = n.op == sys::GGML_OP_VIEW && n.view_src.is_null() && n.src[0].is_null();
                if n.op == sys::GGML_OP_CUSTOM || joined || pinned.contains(&n.view_src) {
                    pinned.insert(node);
                    sys::ggml_backend_sched_set_tensor_backend(self.raw.as_ptr(), node, cpu);
                }
            }
        }
    }

    /// Runs the graph last allocated (`alloc`), again if asked: inputs are
    /// copied to the devices that read them at every run.
    pub fn compute(&mut self, graph: &mut Graph<'_>) -> anyhow::Result<()> {
        // ggml runs the splits of the last allocation whatever graph it is
        // given: it must be this one, whose context the borrow keeps alive.
        anyhow::ensure!(
            self.allocated == Some(graph.key()),
            "a graph run without being the scheduler's last allocated one"
        );
        if self.checked != liveness::frees() {
            self.check_memory(graph)?;
        }
        // SAFETY: the graph is this scheduler's last allocation, its context
        // is alive, and all its tensors' memory (checked since the last free).
        let status = unsafe { sys::ggml_backend_sched_graph_compute(self.raw.as_ptr(), graph.raw.as_ptr()) };
        if status != sys::GGML_STATUS_SUCCESS {
            anyhow::bail!("ggml graph computation failed (status {status})");
        }
        Ok(())
    }

    /// Parts the last graph was cut into (one per change of backend).
    pub fn n_splits(&self) -> usize {
        // SAFETY: pure query.
        unsafe { sys::ggml_backend_sched_get_n_splits(self.raw.as_ptr()) as usize }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.compute_memory.iter().for_each(liveness::remove);
        // SAFETY: we own the scheduler; the backends are dropped after it.
        unsafe { sys::ggml_backend_sched_free(self.raw.as_ptr()) }
    }
}
