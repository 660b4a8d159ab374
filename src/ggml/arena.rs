//! Growable host memory for InfLLM's block store: a large virtual address
//! range reserved up front without backing memory (MAP_NORESERVE), so pages
//! become resident only as blocks are written. One contiguous range lets a
//! single ggml tensor address every block of a layer (for `get_rows`) while
//! the memory used still follows the text, block by block.

use std::ptr::NonNull;

use super::sys;
use super::tensor::Tensor;

/// File offsets given to `HostArena::map_file` are multiples of this (the
/// largest page size of the platforms we run on).
pub const MAP_ALIGN: usize = 64 << 10;

pub struct HostArena {
    ptr: NonNull<u8>,
    len: usize,
    buffer: NonNull<sys::ggml_backend_buffer>,
}

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
        Ok(Self { ptr, len, buffer })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes `[offset, offset + len)` for writing.
    pub fn slice_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
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

    /// Replaces the arena's first `len` bytes with a private (copy-on-write)
    /// mapping of `file` from `offset`: a saved session's blocks come back
    /// without being read or copied. `offset` must be a multiple of
    /// `MAP_ALIGN`, and the file must stay unmodified while mapped.
    pub fn map_file(&mut self, file: &std::fs::File, offset: u64, len: usize) -> anyhow::Result<()> {
        use std::os::fd::AsRawFd;
        anyhow::ensure!(len <= self.len, "mapped data longer than the arena");
        if len == 0 {
            return Ok(());
        }
        anyhow::ensure!(offset.is_multiple_of(MAP_ALIGN as u64), "unaligned file offset");
        let offset = libc::off_t::try_from(offset)?;
        // SAFETY: MAP_FIXED over the start of our own reservation (the range
        // is inside it, checked above); the buffer keeps pointing at the same
        // addresses. &mut self: no Rust reference into the range is alive.
        let ptr = unsafe {
            libc::mmap(
                self.ptr.as_ptr().cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                file.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            let err = std::io::Error::last_os_error();
            // A failed MAP_FIXED may have unmapped the range: reserve it anew
            // (empty) so the arena stays valid memory.
            // SAFETY: as above, over our own range, anonymous this time.
            unsafe {
                libc::mmap(
                    self.ptr.as_ptr().cast(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            anyhow::bail!("cannot map the saved blocks: {err}");
        }
        Ok(())
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
        // SAFETY: buffer first (it refers to the mapping), then the mapping we own.
        unsafe {
            sys::ggml_backend_buffer_free(self.buffer.as_ptr());
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}
