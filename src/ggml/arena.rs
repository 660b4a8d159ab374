//! Growable host memory for InfLLM's block store: a large virtual address
//! range reserved up front without backing memory (MAP_NORESERVE), so pages
//! become resident only as blocks are written. One contiguous range lets a
//! single ggml tensor address every block of a layer (for `get_rows`) while
//! the memory used still follows the text, block by block.

use std::ptr::NonNull;

use super::sys;
use super::tensor::Tensor;

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
