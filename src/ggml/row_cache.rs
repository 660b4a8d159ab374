//! Device copies of host rows, filled on demand: InfLLM's block cache once
//! a layer's blocks outgrow it. A table says which host row each of the
//! cache's `cap` slots holds; the `resident` op, run by the CPU inside a
//! step's graph, maps the rows the step retrieved to slots, copying in the
//! missing ones over the least recently used (the reference's LRU
//! `max_cached_block`). So only missing rows cross to the device, and the
//! step's gathers read device memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{c_int, c_void};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::backend::Buffer;
use super::device::BufferType;
use super::sys;
use super::tensor::{Context, Tensor, TensorId};
use super::GgmlType;

/// Which row each slot holds, and the order the slots were last used in.
#[derive(Debug)]
pub struct SlotTable {
    held: Vec<Option<usize>>,
    slot_of: HashMap<usize, usize>,
    /// Slots that hold no row: taken before any row is evicted.
    free: BTreeSet<usize>,
    /// Each holding slot's last use, and those slots by it (oldest first).
    used: Vec<u64>,
    by_use: BTreeMap<u64, usize>,
    clock: u64,
    /// Rows `assign` has asked to copy in, in all.
    copies: usize,
}

impl SlotTable {
    /// `cap` empty slots; the first ones are used first.
    pub fn new(cap: usize) -> Self {
        Self {
            held: vec![None; cap],
            slot_of: HashMap::new(),
            free: (0..cap).collect(),
            used: vec![0; cap],
            by_use: BTreeMap::new(),
            clock: 0,
            copies: 0,
        }
    }

    /// Marks `slot` used now. (A free slot's stale stamp is in no map:
    /// stamps are never reused.)
    fn touch(&mut self, slot: usize) {
        self.free.remove(&slot);
        self.by_use.remove(&self.used[slot]);
        self.used[slot] = self.clock;
        self.by_use.insert(self.clock, slot);
        self.clock += 1;
    }

    /// Records that `slot` now holds `row` (copied there by the caller).
    pub fn hold(&mut self, row: usize, slot: usize) {
        if let Some(old) = self.held[slot].take() {
            self.slot_of.remove(&old);
        }
        if let Some(moved_from) = self.slot_of.insert(row, slot) {
            self.empty(moved_from);
        }
        self.held[slot] = Some(row);
        self.touch(slot);
    }

    /// Empties `slot`: free for the next missing row.
    fn empty(&mut self, slot: usize) {
        self.held[slot] = None;
        self.by_use.remove(&self.used[slot]);
        self.free.insert(slot);
    }

    /// Forgets the rows from `n` on.
    pub fn forget_from(&mut self, n: usize) {
        for slot in 0..self.held.len() {
            if let Some(row) = self.held[slot].filter(|&r| r >= n) {
                self.slot_of.remove(&row);
                self.empty(slot);
            }
        }
    }

    /// Whether slot `i` holds row `i` for every `i < n`.
    pub fn in_place(&self, n: usize) -> bool {
        (0..n).all(|i| self.held.get(i) == Some(&Some(i)))
    }

    /// The slots of `rows` (distinct, at most the slot count): a held row
    /// keeps its slot; every other one takes a free slot, else the least
    /// recently used that none of `rows` holds. Returns the (row, slot)
    /// copies to make.
    pub fn assign(&mut self, rows: &[usize], slots: &mut [usize]) -> Vec<(usize, usize)> {
        assert!(rows.len() <= self.held.len(), "more rows than slots");
        let mut missing = Vec::new();
        for (i, &row) in rows.iter().enumerate() {
            match self.slot_of.get(&row) {
                Some(&s) => {
                    self.touch(s);
                    slots[i] = s;
                }
                None => missing.push(i),
            }
        }
        // The rows just touched are the newest, so the oldest slot is free
        // to take while fewer than `cap` rows have been placed.
        let mut copies = Vec::with_capacity(missing.len());
        for i in missing {
            let oldest = || self.by_use.first_key_value().map(|(_, &s)| s);
            let s = self.free.first().copied().or_else(oldest).expect("a slot");
            self.hold(rows[i], s);
            slots[i] = s;
            copies.push((rows[i], s));
        }
        self.copies += copies.len();
        copies
    }
}

/// What a graph's `resident` op reaches through its userdata pointer.
struct Shared {
    table: Mutex<SlotTable>,
    /// The cache's device tensors (owned by `RowCache::ctx`).
    parts: Vec<*mut sys::ggml_tensor>,
}

// SAFETY: the tensor pointers are only written through ggml's backend API
// (`ggml_backend_tensor_set`), under the table's lock.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    fn table(&self) -> MutexGuard<'_, SlotTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Device tensors of `cap` rows each (the parts of a row: a block's keys,
/// values, representative key), the slots of one cache.
pub struct RowCache {
    // Field order: the buffers hold the context's tensors.
    _buffers: Vec<Buffer>,
    ctx: Context,
    parts: Vec<TensorId>,
    cap: usize,
    /// Boxed: graphs' `resident` ops hold its address.
    shared: Box<Shared>,
}

impl RowCache {
    /// Allocates `parts` (tensors of `ctx`, each [values per row, cap]) in
    /// buffers of `buft`; every slot starts empty.
    pub fn new(buft: BufferType, ctx: Context, parts: Vec<TensorId>) -> anyhow::Result<Self> {
        let tensors: Vec<Tensor<'_>> = parts.iter().map(|&id| ctx.tensor(id)).collect();
        let cap = tensors.first().map_or(0, |t| t.ne()[1] as usize);
        assert!(
            tensors.iter().all(|t| t.ne()[1] as usize == cap),
            "parts of one row count"
        );
        let buffers = tensors
            .iter()
            .map(|&t| Buffer::alloc_tensors(buft, &[t]))
            .collect::<anyhow::Result<_>>()?;
        let shared = Box::new(Shared {
            table: Mutex::new(SlotTable::new(cap)),
            parts: tensors.iter().map(|t| t.raw()).collect(),
        });
        Ok(Self {
            _buffers: buffers,
            ctx,
            parts,
            cap,
            shared,
        })
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Part `i` of every slot: [values per row, cap].
    pub fn part(&self, i: usize) -> Tensor<'_> {
        self.ctx.tensor(self.parts[i])
    }

    /// Copies rows [from, from + n) into the slots of the same numbers:
    /// `bytes[i]` holds part `i` of those rows, one after another.
    pub fn put_in_place(&self, from: usize, n: usize, bytes: &[&[u8]]) {
        assert!(from + n <= self.cap, "rows past the cache");
        let mut table = self.shared.table();
        for (i, b) in bytes.iter().enumerate() {
            let t = self.part(i);
            t.write_bytes(from * t.nb()[1], b);
        }
        (from..from + n).for_each(|r| table.hold(r, r));
    }

    /// Forgets the rows from `n` on.
    pub fn forget_from(&self, n: usize) {
        self.shared.table().forget_from(n);
    }

    /// Whether slot `i` holds row `i` for every `i < n`.
    pub fn in_place(&self, n: usize) -> bool {
        self.shared.table().in_place(n)
    }

    /// Rows copied in by `resident` ops so far.
    pub fn loads(&self) -> usize {
        self.shared.table().copies
    }
}

impl Context {
    /// The slots (I32 [n]) that hold rows `ids` (I32 [n], distinct, each a
    /// row of `host`) in `cache` after this op runs: missing rows are copied
    /// from `host` (one tensor per cache part, [values per row, rows], in
    /// host memory) over the least recently used slots. Runs on the CPU
    /// (the scheduler pins custom ops there), between the graph's parts
    /// that score the rows and that gather them.
    pub fn resident<'a>(&'a self, ids: Tensor<'a>, host: &[Tensor<'a>], cache: &'a RowCache) -> Tensor<'a> {
        let n = ids.ne()[0];
        assert!(
            ids.ty() == GgmlType::I32 && ids.is_contiguous() && ids.ne() == [n, 1, 1, 1],
            "resident: a vector of row ids"
        );
        assert!(n as usize <= cache.cap, "resident: more rows than slots");
        assert_eq!(host.len(), cache.parts.len(), "resident: a host tensor per part");
        for (i, h) in host.iter().enumerate() {
            let c = cache.part(i);
            assert!(
                h.ty() == c.ty() && h.ne()[0] == c.ne()[0] && h.nb()[1] == c.nb()[1] && h.is_allocated(),
                "resident: host rows laid out as the cache's"
            );
        }
        let mut srcs: Vec<_> = std::iter::once(ids.raw()).chain(host.iter().map(|h| h.raw())).collect();
        let shared: *const Shared = &*cache.shared;
        // SAFETY: valid context and tensors, checked above to be what the
        // callback reads; `shared` is boxed by the cache, which outlives
        // the graphs that use it ('a); one task: the callback runs on one
        // thread.
        self.wrap(unsafe {
            sys::ggml_custom_4d(
                self.raw(),
                GgmlType::I32.sys(),
                n,
                1,
                1,
                1,
                srcs.as_mut_ptr(),
                srcs.len() as c_int,
                Some(resident_op),
                1,
                shared.cast_mut().cast(),
            )
        })
    }
}

/// `resident`'s callback: src[0] the ids, src[1..] the host parts.
unsafe extern "C" fn resident_op(dst: *mut sys::ggml_tensor, ith: c_int, _: c_int, shared: *mut c_void) {
    if ith != 0 {
        return;
    }
    // SAFETY: `resident` built this node: its userdata is the cache's
    // boxed `Shared`, its sources the checked ids and host rows (host
    // memory, rows of the cache's row bytes), its output I32 [n].
    unsafe {
        let dst = &*dst;
        let shared = &*shared.cast::<Shared>();
        let n = dst.ne[0] as usize;
        let ids = std::slice::from_raw_parts((*dst.src[0]).data.cast::<i32>(), n);
        let host: Vec<&sys::ggml_tensor> = (1..=shared.parts.len()).map(|i| &*dst.src[i]).collect();
        let n_rows = host[0].ne[1] as usize;
        let rows: Vec<usize> = ids.iter().map(|&i| i as usize).collect();
        assert!(
            rows.iter().all(|&r| r < n_rows),
            "resident: a row id past the host rows"
        );
        let mut slots = vec![0usize; n];
        let mut table = shared.table();
        let copies = table.assign(&rows, &mut slots);
        for &(row, slot) in &copies {
            for (h, &part) in host.iter().zip(&shared.parts) {
                let nb = h.nb[1];
                let from = h.data.cast::<u8>().add(row * nb);
                sys::ggml_backend_tensor_set(part, from.cast(), slot * nb, nb);
            }
        }
        let out = std::slice::from_raw_parts_mut(dst.data.cast::<i32>(), n);
        for (o, s) in out.iter_mut().zip(slots) {
            *o = s as i32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SlotTable;

    fn assign(t: &mut SlotTable, rows: &[usize]) -> (Vec<usize>, Vec<(usize, usize)>) {
        let mut slots = vec![0; rows.len()];
        let copies = t.assign(rows, &mut slots);
        (slots, copies)
    }

    #[test]
    fn held_rows_keep_their_slots_and_the_least_recently_used_goes() {
        let mut t = SlotTable::new(3);
        (0..3).for_each(|r| t.hold(r, r));
        assert!(t.in_place(3));
        // Row 1 used, then 0: slot 2 (row 2) is the oldest.
        assert_eq!(assign(&mut t, &[1]), (vec![1], vec![]));
        assert_eq!(assign(&mut t, &[0]), (vec![0], vec![]));
        assert_eq!(assign(&mut t, &[5, 1]), (vec![2, 1], vec![(5, 2)]));
        // Now 0 is the oldest; a step's own rows are never evicted for it.
        assert_eq!(assign(&mut t, &[7, 5, 1]), (vec![0, 2, 1], vec![(7, 0)]));
        assert!(!t.in_place(1));
    }

    #[test]
    fn empty_slots_go_first_and_forgotten_rows_are_copied_again() {
        let mut t = SlotTable::new(4);
        assert_eq!(assign(&mut t, &[9, 3]), (vec![0, 1], vec![(9, 0), (3, 1)]));
        assert_eq!(assign(&mut t, &[4, 2]), (vec![2, 3], vec![(4, 2), (2, 3)]));
        assert_eq!(assign(&mut t, &[9]), (vec![0], vec![]));
        t.forget_from(5);
        // Row 9 forgotten: copied again, into its emptied slot, the most
        // recently used; slot 1 (row 3) was used longest ago.
        assert_eq!(assign(&mut t, &[9]), (vec![0], vec![(9, 0)]));
        // Holding a row elsewhere moves it and empties its old slot.
        t.hold(3, 0);
        assert_eq!(assign(&mut t, &[3, 7]), (vec![0, 1], vec![(7, 1)]));
        assert_eq!(t.copies, 6);
    }
}
