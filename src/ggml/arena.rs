//! Growable host memory for InfLLM's block store: a large virtual address
//! range reserved up front without backing memory (MAP_NORESERVE), so pages
//! become resident only as blocks are written. One contiguous range lets a
//! single ggml tensor address every block of a layer (for `get_rows`) while
//! the memory used still follows the text, block by block.
//!
//! An arena can move to a file (`spill`): the same addresses then map the
//! file, so tensors placed in it stay valid, and the OS keeps in memory only
//! the pages that are read. It is then written with `pwrite` (a write
//! through the mapping past the file's end would raise SIGBUS) and read
//! through the mapping.
//!
//! The arena maps its file in pieces (`pieces`), each given file space as
//! the arena grows. An arena in a file that sessions refer to is
//! append-only (`keep`): a write over bytes already in the file (after a
//! rollback) first moves the arena's tail to a new piece, so that bytes a
//! saved session names never change.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::FileExt as _;
use std::ptr::NonNull;
use std::sync::Arc;

use super::tensor::Tensor;
use super::{liveness, sys};

pub struct HostArena {
    ptr: NonNull<u8>,
    len: usize,
    buffer: NonNull<sys::ggml_backend_buffer>,
    alive: liveness::Alive,
    /// The file the range maps (None: anonymous memory).
    file: Option<FileMap>,
}

/// Where an arena lies in its file.
struct FileMap {
    file: Arc<File>,
    /// (arena offset, file offset) of each mapped piece, ascending; a piece
    /// runs to the next one's start, the last to the arena's end.
    pieces: Vec<(usize, u64)>,
    /// Where the file space given to the last piece ends, in the arena: a
    /// write past it starts a new piece.
    room: usize,
    /// Append-only: arena bytes from here on were never written in the
    /// last piece (below it, a write moves the tail first).
    fresh: Option<usize>,
}

/// Pieces of a file start at multiples of this in the arena and the file
/// (a page size on every system we run).
pub const PIECE_ALIGN: usize = 1 << 16;

/// File space given to a piece: as much as the arena holds before it (so
/// that pieces double while the text is short), within these bounds. The
/// file stays about as long as its data, in few pieces.
const PIECE_MIN: usize = 1 << 20;
const PIECE_MAX: usize = 256 << 20;

/// Gives `len` bytes of file space for a piece; returns their offset.
pub type Alloc<'a> = dyn FnMut(usize) -> std::io::Result<u64> + 'a;

// SAFETY: the arena owns its mapping; mutable access goes through &mut self.
unsafe impl Send for HostArena {}

impl HostArena {
    /// Reserves `len` bytes of address space (no memory is committed).
    pub fn reserve(len: usize) -> anyhow::Result<Self> {
        let len = len.max(1);
        // SAFETY: an anonymous private mapping with no fixed address; the
        // result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            anyhow::bail!(
                "cannot reserve {} GiB of address space for the block memory: {}",
                len >> 30,
                std::io::Error::last_os_error()
            );
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).expect("mmap returned null");
        // SAFETY: the range [ptr, ptr + len) is mapped read-write for the
        // arena's whole life; the buffer is freed before it is unmapped.
        let buffer = unsafe { sys::ggml_backend_cpu_buffer_from_ptr(ptr.as_ptr().cast(), len) };
        let Some(buffer) = NonNull::new(buffer) else {
            // SAFETY: unmapping the range mapped above.
            unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
            anyhow::bail!("cannot wrap the block memory in a ggml buffer");
        };
        Ok(Self {
            ptr,
            len,
            buffer,
            alive: liveness::add(buffer.as_ptr()),
            file: None,
        })
    }

    /// Makes ggml's scheduler run the ops that read this memory on the CPU,
    /// as it does for weights in host memory, instead of copying all of it
    /// to the device of the op's neighbours at every step.
    pub fn keep_readers_on_cpu(&self) {
        // SAFETY: a buffer this arena owns; its usage only steers scheduling.
        unsafe { sys::ggml_backend_buffer_set_usage(self.buffer.as_ptr(), sys::GGML_BACKEND_BUFFER_USAGE_WEIGHTS) }
    }

    /// Moves the arena to `file`, at space `alloc` gives: its first
    /// `used` bytes are written there, then the file is mapped over the
    /// arena's addresses. `keep`: the arena is append-only there.
    pub fn spill(&mut self, file: Arc<File>, used: usize, keep: bool, alloc: &mut Alloc) -> std::io::Result<()> {
        assert!(self.file.is_none(), "arena already in a file");
        let room = self.piece_len(0, used);
        let offset = alloc(room)?;
        file.write_all_at(self.slice(0, used), offset)?;
        self.map_file(&file, 0, offset)?;
        self.file = Some(FileMap {
            file,
            pieces: vec![(0, offset)],
            room,
            fresh: keep.then_some(used),
        });
        Ok(())
    }

    /// File space for a piece from `at` that holds at least up to `end`.
    fn piece_len(&self, at: usize, end: usize) -> usize {
        let len = at.clamp(PIECE_MIN, PIECE_MAX).max(end - at);
        len.next_multiple_of(PIECE_ALIGN).min(self.len - at)
    }

    /// Maps the `pieces` of `file` (checked by the caller: ascending from
    /// 0, at multiples of `PIECE_ALIGN`, inside the arena) over the arena,
    /// append-only, in place of what it held. On failure the arena is
    /// anonymous memory again, its contents lost.
    pub fn adopt(&mut self, file: Arc<File>, pieces: &[(usize, u64)]) -> std::io::Result<()> {
        let ends = pieces.iter().skip(1).map(|p| p.0).chain([self.len]);
        let mapped = pieces
            .iter()
            .zip(ends)
            .try_for_each(|(&(at, off), end)| self.map_range(&file, at, end, off));
        if let Err(e) = mapped {
            self.to_memory();
            return Err(e);
        }
        // What the last piece holds past the session's blocks is unknown:
        // the next write starts a new piece.
        self.file = Some(FileMap {
            file,
            pieces: pieces.to_vec(),
            room: 0,
            fresh: Some(self.len),
        });
        Ok(())
    }

    /// The pieces of the file the arena maps (empty: in memory).
    pub fn pieces(&self) -> &[(usize, u64)] {
        self.file.as_ref().map_or(&[], |f| &f.pieces)
    }

    /// Maps `file` from `off` over the arena from `at` (a multiple of
    /// `PIECE_ALIGN`) to its end.
    fn map_file(&mut self, file: &File, at: usize, off: u64) -> std::io::Result<()> {
        self.map_range(file, at, self.len, off)
    }

    fn map_range(&mut self, file: &File, at: usize, end: usize, off: u64) -> std::io::Result<()> {
        assert!(
            at.is_multiple_of(PIECE_ALIGN) && at < end && end <= self.len,
            "bad piece"
        );
        let off = libc::off_t::try_from(off).map_err(|_| std::io::Error::other("block file offset too large"))?;
        // SAFETY: `at` is page-aligned and [at, end) inside the arena (asserted).
        let start = unsafe { self.ptr.as_ptr().add(at) };
        map_over(file, start, end - at, off)
    }

    /// Leaves the file: the range is fresh anonymous memory again, its
    /// contents lost (after a failed `adopt`). Should that fail, the
    /// process cannot go on safely.
    pub fn to_memory(&mut self) {
        self.file = None;
        // SAFETY: the range is the arena's own; MAP_FIXED replaces it in place.
        let p = unsafe {
            libc::mmap(
                self.ptr.as_ptr().cast(),
                self.len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert!(p == self.ptr.as_ptr().cast(), "cannot remap the block memory");
    }

    /// Whether the arena maps a file.
    pub fn in_file(&self) -> bool {
        self.file.is_some()
    }

    /// Writes `bytes` at `offset`: into memory, or into the file. Writing
    /// past the last piece's file space, or (append-only) below what it
    /// holds, first moves the arena's tail, from the `PIECE_ALIGN`
    /// boundary below `offset`, to a new piece at space `alloc` gives.
    pub fn write(&mut self, offset: usize, bytes: &[u8], alloc: &mut Alloc) -> std::io::Result<()> {
        let end = offset.checked_add(bytes.len()).filter(|&e| e <= self.len);
        let end = end.expect("arena write out of range");
        let Some(f) = &self.file else {
            self.slice_mut(offset, bytes.len()).copy_from_slice(bytes);
            return Ok(());
        };
        if end > f.room || f.fresh.is_some_and(|fresh| offset < fresh) {
            let at = offset - offset % PIECE_ALIGN;
            let len = self.piece_len(at, end);
            self.new_piece(at, offset, alloc(len)?, len)?;
        }
        let f = self.file.as_mut().expect("in a file");
        f.fresh = f.fresh.map(|fresh| fresh.max(end));
        piece_spans(&f.pieces, offset, bytes.len())
            .try_for_each(|(done, at, n)| f.file.write_all_at(&bytes[done..done + n], at))
    }

    /// Moves the arena's tail from `at` to `len` bytes of the file at
    /// `off`, with the bytes [at, keep) copied there.
    fn new_piece(&mut self, at: usize, keep: usize, off: u64, len: usize) -> std::io::Result<()> {
        let f = self.file.as_ref().expect("in a file");
        let file = Arc::clone(&f.file);
        file.write_all_at(self.slice(at, keep - at), off)?;
        self.map_file(&file, at, off)?;
        let f = self.file.as_mut().expect("in a file");
        f.pieces.retain(|p| p.0 < at);
        f.pieces.push((at, off));
        f.room = at + len;
        f.fresh = f.fresh.map(|_| keep);
        Ok(())
    }

    /// Lets the OS take back the pages of the first `used` bytes that reads
    /// brought in (a file's arena only: its data stays in the file).
    pub fn release(&self, used: usize) {
        if self.file.is_none() || used == 0 {
            return;
        }
        let used = used.min(self.len);
        // SAFETY: the range lies within the arena's file mapping; dropping
        // the pages of a shared file mapping loses nothing (later reads
        // fetch them again from the page cache or the file).
        unsafe { libc::madvise(self.ptr.as_ptr().cast(), used, libc::MADV_DONTNEED) };
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes `[offset, offset + len)` for writing, in memory (a file's
    /// arena is read-only: see `write`).
    pub fn slice_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        assert!(self.file.is_none(), "an arena in a file is written with `write`");
        assert!(
            offset.checked_add(len).is_some_and(|e| e <= self.len),
            "arena write out of range"
        );
        // SAFETY: in range (checked); &mut self guarantees no other Rust
        // reference, and ggml reads the memory only during graph compute,
        // which never overlaps a call with &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(offset), len) }
    }

    /// Bytes `[offset, offset + len)` for reading.
    pub fn slice(&self, offset: usize, len: usize) -> &[u8] {
        assert!(
            offset.checked_add(len).is_some_and(|e| e <= self.len),
            "arena read out of range"
        );
        // SAFETY: in range (checked); shared borrow of self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset), len) }
    }

    /// Points `t` (a tensor without data) at `offset` in the arena.
    pub fn place(&self, t: Tensor<'_>, offset: usize) {
        assert!(!t.is_allocated(), "tensor already has data");
        assert!(
            offset.checked_add(t.nbytes()).is_some_and(|e| e <= self.len),
            "tensor past the arena"
        );
        // SAFETY: the tensor's bytes lie inside the buffer (checked above).
        let status = unsafe {
            sys::ggml_backend_tensor_alloc(self.buffer.as_ptr(), t.raw(), self.ptr.as_ptr().add(offset).cast())
        };
        assert_eq!(status, sys::GGML_STATUS_SUCCESS, "ggml_backend_tensor_alloc failed");
    }
}

impl Drop for HostArena {
    fn drop(&mut self) {
        liveness::remove(&self.alive);
        // SAFETY: buffer first (it refers to the mapping), then the mapping we own.
        unsafe {
            sys::ggml_backend_buffer_free(self.buffer.as_ptr());
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Arena bytes `[at, at + len)` of an arena mapping `pieces` of a file,
/// as spans that each lie in one piece: (offset from `at`, file offset,
/// length).
pub fn piece_spans(pieces: &[(usize, u64)], at: usize, len: usize) -> impl Iterator<Item = (usize, u64, usize)> + '_ {
    let mut done = 0;
    std::iter::from_fn(move || {
        let pos = at + done;
        if done == len {
            return None;
        }
        let i = pieces.partition_point(|p| p.0 <= pos) - 1;
        let end = pieces.get(i + 1).map_or(usize::MAX, |p| p.0);
        let n = (end - pos).min(len - done);
        let span = (done, pieces[i].1 + (pos - pieces[i].0) as u64, n);
        done += n;
        Some(span)
    })
}

/// Maps `len` bytes of `file` from `off` over `[start, start + len)`, a
/// page-aligned range of an arena, in one step: a new mapping elsewhere,
/// then moved onto the range, which it replaces atomically; on failure the
/// range is untouched.
#[cfg(target_os = "linux")]
fn map_over(file: &File, start: *mut u8, len: usize, off: libc::off_t) -> std::io::Result<()> {
    // SAFETY: a new shared read-only mapping of the file, at an address of
    // the kernel's choice; checked against MAP_FAILED.
    let mapped = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            off,
        )
    };
    if mapped == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: moves the mapping made above onto the arena's range (owned by
    // the arena, whose tensors are only read during graph compute, which
    // never overlaps a call with &mut self on the arena).
    let moved = unsafe {
        libc::mremap(
            mapped,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            start.cast::<libc::c_void>(),
        )
    };
    if moved == libc::MAP_FAILED {
        let e = std::io::Error::last_os_error();
        // SAFETY: unmapping the mapping made above, which nothing uses.
        unsafe { libc::munmap(mapped, len) };
        return Err(e);
    }
    Ok(())
}

/// Maps `len` bytes of `file` from `off` over `[start, start + len)`
/// (MAP_FIXED replaces the pages in place; systems without `mremap`).
#[cfg(not(target_os = "linux"))]
fn map_over(file: &File, start: *mut u8, len: usize, off: libc::off_t) -> std::io::Result<()> {
    // SAFETY: the range is an arena's own mapping, replaced in place; the
    // result is checked.
    let mapped = unsafe {
        libc::mmap(
            start.cast(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED | libc::MAP_FIXED,
            file.as_raw_fd(),
            off,
        )
    };
    match mapped == start.cast() {
        true => Ok(()),
        false => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Record `i` of `RECORD` bytes in one of two versions.
    const RECORD: usize = 40_000;
    fn record(i: usize, version: u8) -> Vec<u8> {
        vec![(i % 200) as u8 + version; RECORD]
    }

    fn file_bytes(file: &File) -> Vec<u8> {
        let mut bytes = vec![0u8; file.metadata().unwrap().len() as usize];
        file.read_exact_at(&mut bytes, 0).unwrap();
        bytes
    }

    #[test]
    fn an_append_only_arena_reads_back_its_writes_and_never_rewrites_its_file() {
        let mut arena = HostArena::reserve(8 << 20).unwrap();
        let path = std::env::temp_dir().join(format!("infllm-arena-test-{}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        let file = Arc::new(file);
        let mut next = 0u64;
        let mut alloc = |len: usize| {
            let at = next;
            next = (at + len as u64).next_multiple_of(PIECE_ALIGN as u64);
            file.set_len(next).map(|()| at)
        };
        arena.write(0, &record(0, 1), &mut alloc).unwrap();
        arena.spill(Arc::clone(&file), RECORD, true, &mut alloc).unwrap();
        // 4 MB of records that straddle the 64 KiB boundaries: past the
        // first piece's 1 MiB and the next ones'.
        for i in 1..100 {
            arena.write(i * RECORD, &record(i, 1), &mut alloc).unwrap();
        }
        assert!(arena.pieces().len() >= 3, "{:?}", arena.pieces());
        let before = file_bytes(&file);
        // Back to record 50, other records from there.
        for i in 50..100 {
            arena.write(i * RECORD, &record(i, 100), &mut alloc).unwrap();
        }
        for i in 0..100 {
            let version = if i < 50 { 1 } else { 100 };
            assert!(arena.slice(i * RECORD, RECORD) == record(i, version), "record {i}");
        }
        let after = file_bytes(&file);
        assert!(after.len() > before.len());
        assert!(
            after[..before.len()] == before[..],
            "bytes in the file were written again"
        );
    }
}
