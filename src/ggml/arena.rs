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

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::FileExt as _;
use std::ptr::NonNull;
use std::sync::Arc;

use super::sys;
use super::tensor::Tensor;

pub struct HostArena {
    ptr: NonNull<u8>,
    len: usize,
    buffer: NonNull<sys::ggml_backend_buffer>,
    /// The file the range maps, and where in it (None: anonymous memory).
    file: Option<(Arc<File>, u64)>,
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
        Ok(Self {
            ptr,
            len,
            buffer,
            file: None,
        })
    }

    /// Moves the arena to `file` at `offset` (a multiple of the page size):
    /// its first `used` bytes are written there, then the file is mapped
    /// over the arena's addresses.
    pub fn spill(&mut self, file: Arc<File>, offset: u64, used: usize) -> std::io::Result<()> {
        assert!(self.file.is_none(), "arena already in a file");
        file.write_all_at(self.slice(0, used), offset)?;
        let off = libc::off_t::try_from(offset).map_err(|_| std::io::Error::other("block file offset too large"))?;
        self.map_file(&file, off)?;
        self.file = Some((file, offset));
        Ok(())
    }

    /// Maps `file` from `off` over the arena's range, in one step: a new
    /// mapping elsewhere, then moved onto the range, which it replaces
    /// atomically (the anonymous pages are released); on failure the arena
    /// is untouched.
    #[cfg(target_os = "linux")]
    fn map_file(&mut self, file: &File, off: libc::off_t) -> std::io::Result<()> {
        // SAFETY: a new shared read-only mapping of the file, at an address
        // of the kernel's choice; checked against MAP_FAILED.
        let mapped = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                self.len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                off,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: moves the mapping made above onto the arena's range (owned
        // by the arena, its tensors only read during graph compute, which
        // never overlaps a call with &mut self).
        let moved = unsafe {
            libc::mremap(
                mapped,
                self.len,
                self.len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                self.ptr.as_ptr().cast::<libc::c_void>(),
            )
        };
        if moved == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            // SAFETY: unmapping the mapping made above, which nothing uses.
            unsafe { libc::munmap(mapped, self.len) };
            return Err(e);
        }
        Ok(())
    }

    /// Maps `file` from `off` over the arena's range (MAP_FIXED replaces the
    /// anonymous pages; systems without `mremap`).
    #[cfg(not(target_os = "linux"))]
    fn map_file(&mut self, file: &File, off: libc::off_t) -> std::io::Result<()> {
        // SAFETY: the range is the arena's own mapping, replaced in place;
        // the result is checked.
        let mapped = unsafe {
            libc::mmap(
                self.ptr.as_ptr().cast(),
                self.len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                off,
            )
        };
        match mapped == self.ptr.as_ptr().cast() {
            true => Ok(()),
            false => Err(std::io::Error::last_os_error()),
        }
    }

    /// Whether the arena maps a file.
    pub fn in_file(&self) -> bool {
        self.file.is_some()
    }

    /// Writes `bytes` at `offset`: into memory, or into the file.
    pub fn write(&mut self, offset: usize, bytes: &[u8]) -> std::io::Result<()> {
        match &self.file {
            Some((file, base)) => {
                assert!(
                    offset.checked_add(bytes.len()).is_some_and(|e| e <= self.len),
                    "arena write out of range"
                );
                file.write_all_at(bytes, base + offset as u64)
            }
            None => {
                self.slice_mut(offset, bytes.len()).copy_from_slice(bytes);
                Ok(())
            }
        }
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
        // SAFETY: buffer first (it refers to the mapping), then the mapping we own.
        unsafe {
            sys::ggml_backend_buffer_free(self.buffer.as_ptr());
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}
