//! Saving an attention's state: the sections an attention writes (opaque
//! bytes) and reads back in the same order. The file format around them is
//! `session.rs`'s.

use std::fs::File;
use std::os::unix::fs::FileExt as _;

use anyhow::{ensure, Context as _};

use crate::ggml::Tensor;

/// Where an attention writes its state: sections of bytes, in order.
pub trait StateWriter {
    fn section(&mut self, data: &[u8]) -> std::io::Result<()>;
}

/// A state's sections kept in memory (a server's conversation set aside).
#[derive(Default)]
pub struct MemorySections {
    data: Vec<u8>,
    sections: Vec<(u64, u64)>,
}

impl MemorySections {
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// A reader of these sections, for a state of `n_past` tokens.
    pub fn reader(&self, n_past: usize) -> anyhow::Result<StateReader<'_>> {
        StateReader::new(
            Source::Bytes(&self.data),
            self.data.len() as u64,
            &self.sections,
            n_past,
        )
    }
}

impl StateWriter for MemorySections {
    fn section(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.sections.push((self.data.len() as u64, data.len() as u64));
        self.data.extend_from_slice(data);
        Ok(())
    }
}

/// Where saved sections are read from.
#[derive(Clone, Copy)]
pub enum Source<'f> {
    File(&'f File),
    Bytes(&'f [u8]),
}

impl Source<'_> {
    fn read_exact_at(&self, dst: &mut [u8], offset: u64) -> std::io::Result<()> {
        match self {
            Source::File(f) => f.read_exact_at(dst, offset),
            Source::Bytes(b) => {
                // Sections were checked to lie within the bytes.
                let at = offset as usize;
                dst.copy_from_slice(&b[at..at + dst.len()]);
                Ok(())
            }
        }
    }
}

/// Where a section lies in the saved file.
#[derive(Debug, Clone, Copy)]
pub struct Section {
    offset: u64,
    len: usize,
}

/// A saved state's sections, handed back in the order they were written,
/// and read from the file (not mapped: another program may truncate it
/// while we run, and a mapping would then kill us with SIGBUS).
///
/// A reader of a state (`Attention::state_read`) checks everything it can
/// (counters, section lengths) before it changes anything; then it reads. A
/// read fails only if the file changed since the session layer checked it
/// (`read_failed`): the state may then be half read, and the caller clears it.
pub struct StateReader<'f> {
    file: Source<'f>,
    /// (offset, length) of each section, checked to lie within the data.
    sections: std::slice::Iter<'f, (u64, u64)>,
    /// Tokens the saved state holds, as the session index says: every
    /// attention's state must agree.
    n_past: usize,
    read_failed: bool,
}

impl<'f> StateReader<'f> {
    /// `sections` must lie within the file's first `data_len` bytes (checked).
    pub fn new(file: Source<'f>, data_len: u64, sections: &'f [(u64, u64)], n_past: usize) -> anyhow::Result<Self> {
        for &(offset, len) in sections {
            ensure!(
                offset.checked_add(len).is_some_and(|end| end <= data_len),
                "corrupt (section past the data)"
            );
        }
        Ok(Self {
            file,
            sections: sections.iter(),
            n_past,
            read_failed: false,
        })
    }

    /// Tokens the saved state holds.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// The length of the next section, if there is one.
    pub fn next_len(&self) -> Option<usize> {
        self.sections.clone().next().map(|&(_, len)| len as usize)
    }

    /// The next section, which must be `len` bytes long.
    pub fn next(&mut self, len: usize) -> anyhow::Result<Section> {
        let &(offset, found) = self.sections.next().context("corrupt (missing sections)")?;
        ensure!(
            found == len as u64,
            "corrupt (section of {found} bytes, expected {len})"
        );
        Ok(Section { offset, len })
    }

    /// Fills `dst` from section `s`, from `at` on.
    pub fn read_into(&mut self, s: Section, at: usize, dst: &mut [u8]) -> anyhow::Result<()> {
        ensure!(
            at.checked_add(dst.len()).is_some_and(|end| end <= s.len),
            "read past a section"
        );
        let result = self.file.read_exact_at(dst, s.offset + at as u64);
        self.read_failed |= result.is_err();
        result.context("it changed while it was read")
    }

    /// The whole of section `s`.
    pub fn read_section(&mut self, s: Section) -> anyhow::Result<Vec<u8>> {
        let mut bytes = vec![0u8; s.len];
        self.read_into(s, 0, &mut bytes)?;
        Ok(bytes)
    }

    /// Reads `len` bytes of section `s` from `at` on, in pieces of at most
    /// `READ_STEP` bytes (the memory a large state takes on its way in),
    /// handing each to `put` with its offset from `at`.
    pub fn read_in_steps(
        &mut self,
        s: Section,
        at: usize,
        len: usize,
        mut put: impl FnMut(usize, &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut buf = Vec::new();
        for done in (0..len).step_by(READ_STEP) {
            buf.resize(READ_STEP.min(len - done), 0);
            self.read_into(s, at + done, &mut buf)?;
            put(done, &buf)?;
        }
        Ok(())
    }

    /// Whether a read failed (the file changed since it was checked).
    pub fn read_failed(&self) -> bool {
        self.read_failed
    }
}

/// Byte ranges of tensors: (tensor, offset, length).
pub(crate) type Ranges<'a> = Vec<(Tensor<'a>, usize, usize)>;

/// The bytes of `ranges`, one after the other.
pub(crate) fn read_ranges(ranges: Ranges<'_>) -> Vec<u8> {
    let mut bytes = vec![0u8; ranges.iter().map(|r| r.2).sum()];
    let mut at = 0;
    for (t, offset, len) in ranges {
        t.read_bytes(offset, &mut bytes[at..at + len]);
        at += len;
    }
    bytes
}

/// Writes `bytes` (from `read_ranges` over the same ranges) back.
pub(crate) fn write_ranges(ranges: Ranges<'_>, bytes: &[u8]) -> anyhow::Result<()> {
    ensure!(
        ranges.iter().map(|r| r.2).sum::<usize>() == bytes.len(),
        "saved attention state of the wrong size"
    );
    let mut at = 0;
    for (t, offset, len) in ranges {
        t.write_bytes(offset, &bytes[at..at + len]);
        at += len;
    }
    Ok(())
}

/// Bytes read from a file per step (`StateReader::read_in_steps`).
const READ_STEP: usize = 4 << 20;

/// Reads section `s` into `ranges`, one after the other: the inverse of
/// `read_ranges`, straight from the file.
pub(crate) fn read_ranges_from(ranges: Ranges<'_>, sections: &mut StateReader<'_>, s: Section) -> anyhow::Result<()> {
    ensure!(
        ranges.iter().map(|r| r.2).sum::<usize>() == s.len,
        "saved attention state of the wrong size"
    );
    let mut at = 0;
    for (t, offset, len) in ranges {
        sections.read_in_steps(s, at, len, |done, bytes| {
            t.write_bytes(offset + done, bytes);
            Ok(())
        })?;
        at += len;
    }
    Ok(())
}
