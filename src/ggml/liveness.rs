//! Which backend buffers are alive. A `Tensor` handle borrows only its
//! metadata context; its bytes live in a buffer (a `Buffer`, an arena, a
//! scheduler's compute memory) that may be freed first. Reads, writes and
//! graph runs check here that the memory they touch still exists, so safe
//! code cannot reach freed memory through a handle.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::sys;

/// Live buffers by address: their memory's base and size, and the token
/// of the registration (an address freed by ggml can be another's soon).
static LIVE: Mutex<BTreeMap<usize, Span>> = Mutex::new(BTreeMap::new());

/// Counts buffers forgotten, so a graph checked since the last one is known
/// to be whole without a second walk.
static FREED: AtomicU64 = AtomicU64::new(0);

/// The next registration's token.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy)]
struct Span {
    base: usize,
    size: usize,
    token: u64,
}

/// A buffer recorded as alive: `remove` it before it is freed.
pub(super) struct Alive {
    buffer: usize,
    token: u64,
}

fn live() -> std::sync::MutexGuard<'static, BTreeMap<usize, Span>> {
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Records `buffer` (allocated and not yet freed) as alive.
pub(super) fn add(buffer: *mut sys::ggml_backend_buffer) -> Alive {
    // SAFETY: `buffer` is a valid buffer (the caller's contract); pure queries.
    let (base, size) = unsafe {
        let base = sys::ggml_backend_buffer_get_base(buffer) as usize;
        (base, sys::ggml_backend_buffer_get_size(buffer))
    };
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    live().insert(buffer as usize, Span { base, size, token });
    Alive {
        buffer: buffer as usize,
        token,
    }
}

/// Forgets a buffer about to be freed (or one ggml may have freed).
pub(super) fn remove(alive: &Alive) {
    let mut live = live();
    if live.get(&alive.buffer).is_some_and(|s| s.token == alive.token) {
        live.remove(&alive.buffer);
    }
    FREED.fetch_add(1, Ordering::Relaxed);
}

/// Buffers freed so far (see `FREED`).
pub(super) fn frees() -> u64 {
    FREED.load(Ordering::Relaxed)
}

/// Whether `t`'s bytes lie in a live buffer (a view's in its source's, as
/// ggml reads them).
pub(super) fn holds(t: *const sys::ggml_tensor) -> bool {
    holds_in(&live(), t)
}

/// Whether every tensor of `tensors` has its bytes in a live buffer.
pub(super) fn all_hold(mut tensors: impl Iterator<Item = *const sys::ggml_tensor>) -> bool {
    let live = live();
    tensors.all(|t| holds_in(&live, t))
}

fn holds_in(live: &BTreeMap<usize, Span>, t: *const sys::ggml_tensor) -> bool {
    // SAFETY: the callers pass tensors of live contexts; a view's source is
    // in a context that outlives the view (ggml's rule); pure queries.
    let (buffer, data, len) = unsafe {
        let owner = if (*t).view_src.is_null() {
            t
        } else {
            (*t).view_src.cast_const()
        };
        ((*owner).buffer as usize, (*t).data as usize, sys::ggml_nbytes(t))
    };
    len == 0
        || live
            .get(&buffer)
            .is_some_and(|s| data >= s.base && data.checked_add(len).is_some_and(|end| end <= s.base + s.size))
}

#[cfg(test)]
mod tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use super::super::{Buffer, Context, GgmlType, Graph, Scheduler, Tensor};

    /// `x` (in `buffer`) and `y = 2x`, a graph output.
    fn doubled(ctx: &Context) -> (Buffer, Tensor<'_>, Graph<'_>) {
        let x = ctx.new_tensor(GgmlType::F32, &[4]);
        let buffer = Buffer::alloc_context(ctx).unwrap();
        x.write_f32(&[1.0, 2.0, 3.0, 4.0]);
        let y = ctx.scale(x, 2.0).set_output();
        let mut graph = ctx.new_graph(8);
        graph.expand(y);
        (buffer, y, graph)
    }

    fn panic_message(f: impl FnOnce()) -> String {
        let err = catch_unwind(AssertUnwindSafe(f)).expect_err("expected a panic");
        err.downcast_ref::<&str>().map(|s| s.to_string()).unwrap_or_default()
    }

    /// `doubled`, allocated and run once on a scheduler of its own.
    fn ran(ctx: &Context) -> (Buffer, Tensor<'_>, Graph<'_>, Scheduler) {
        let (buffer, y, mut graph) = doubled(ctx);
        let mut sched = Scheduler::cpu(1).unwrap();
        sched.alloc(&mut graph).unwrap();
        sched.compute(&mut graph).unwrap();
        (buffer, y, graph, sched)
    }

    #[test]
    fn an_output_is_unreadable_once_its_scheduler_is_gone() {
        let ctx = Context::new(8, 8);
        let (_buffer, y, _graph, sched) = ran(&ctx);
        let mut out = Vec::new();
        y.read_f32(&mut out);
        assert_eq!(out, [2.0, 4.0, 6.0, 8.0]);
        drop(sched);
        let why = panic_message(|| y.read_f32(&mut out));
        assert_eq!(why, "read of a tensor whose memory was freed");
    }

    #[test]
    fn a_graph_whose_input_memory_is_gone_does_not_run() {
        let ctx = Context::new(8, 8);
        let (buffer, _, mut graph, mut sched) = ran(&ctx);
        drop(buffer);
        let err = sched.compute(&mut graph).unwrap_err().to_string();
        assert!(err.contains("memory that was freed"), "{err}");
    }

    #[test]
    fn only_the_last_allocated_graph_runs() {
        let (a, b) = (Context::new(8, 8), Context::new(8, 8));
        let (_ka, _, mut first) = doubled(&a);
        let (_kb, _, mut second) = doubled(&b);
        let mut sched = Scheduler::cpu(1).unwrap();
        sched.alloc(&mut first).unwrap();
        sched.alloc(&mut second).unwrap();
        sched.compute(&mut second).unwrap();
        let err = sched.compute(&mut first).unwrap_err().to_string();
        assert!(err.contains("last allocated"), "{err}");
    }
}
