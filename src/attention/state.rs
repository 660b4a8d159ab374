//! Saving an attention's state: the sections an attention writes (opaque
//! bytes; mappable ones are loaded by mapping the file instead of reading
//! it) and reads back in the same order. The file format around them is
//! `session.rs`'s.

use std::fs::File;

use anyhow::{ensure, Context as _};

use crate::ggml::Tensor;

/// Where an attention writes its state: sections of bytes, in order.
pub trait StateWriter {
    /// A section; `mappable` ones start where the file can be mapped from.
    fn section(&mut self, data: &[u8], mappable: bool) -> std::io::Result<()>;
}

/// A saved state's sections, handed back in the order they were written.
pub struct StateReader<'f> {
    /// The saved file, for sections to map rather than read.
    pub file: &'f File,
    /// The file's bytes up to its index.
    bytes: &'f [u8],
    /// (offset, length) of each section, checked to lie within `bytes`.
    sections: std::slice::Iter<'f, (u64, u64)>,
}

impl<'f> StateReader<'f> {
    /// `sections` must lie within `bytes` (checked).
    pub fn new(file: &'f File, bytes: &'f [u8], sections: &'f [(u64, u64)]) -> anyhow::Result<Self> {
        for &(offset, len) in sections {
            ensure!(
                offset.checked_add(len).is_some_and(|end| end <= bytes.len() as u64),
                "corrupt (section past the data)"
            );
        }
        Ok(Self {
            file,
            bytes,
            sections: sections.iter(),
        })
    }

    fn next_section(&mut self) -> anyhow::Result<(usize, usize)> {
        let &(offset, len) = self.sections.next().context("corrupt (missing sections)")?;
        Ok((offset as usize, len as usize))
    }

    /// The next section's bytes.
    pub fn next_bytes(&mut self) -> anyhow::Result<&'f [u8]> {
        let (offset, len) = self.next_section()?;
        Ok(&self.bytes[offset..offset + len])
    }

    /// The next section's offset in the file, which must be `len` bytes long
    /// (a section to map).
    pub fn next_offset(&mut self, len: usize) -> anyhow::Result<u64> {
        let (offset, found) = self.next_section()?;
        ensure!(found == len, "corrupt (section of {found} bytes, expected {len})");
        Ok(offset as u64)
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
