//! The architecture's metadata keys (`{arch}.*`): required ones, and
//! optional ones with the default that stands in when a file leaves them out.
//! A key that is present with the wrong type or out of its range is an
//! error, never the default.

use anyhow::ensure;

use crate::gguf::{GgufFile, Value};

#[derive(Clone, Copy)]
pub struct Meta<'f> {
    pub file: &'f GgufFile,
    /// A registered architecture's name: keys built from it are safe to
    /// print in errors.
    pub arch: &'f str,
}

/// Which finite numbers a float key accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    /// 0 or more (epsilons; scales where 0 means "none").
    NonNegative,
    /// Above 0 (frequency bases, divisors).
    Positive,
}

impl<'f> Meta<'f> {
    pub fn new(file: &'f GgufFile) -> anyhow::Result<Self> {
        Ok(Self {
            file,
            arch: super::spec(file)?.0,
        })
    }

    /// The full key: `{arch}.{k}`.
    pub fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    /// The raw value, for keys that may have more than one type.
    pub fn get(&self, k: &str) -> Option<&'f Value> {
        self.file.get(&self.key(k))
    }

    /// `read` of the key if present, None if absent.
    pub fn maybe<T, E>(
        &self,
        k: &str,
        read: impl FnOnce(&'f GgufFile, &str) -> Result<T, E>,
    ) -> anyhow::Result<Option<T>>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let key = self.key(k);
        match self.file.get(&key) {
            None => Ok(None),
            Some(_) => Ok(Some(read(self.file, &key)?)),
        }
    }

    pub fn maybe_usize(&self, k: &str) -> anyhow::Result<Option<usize>> {
        Ok(self.maybe(k, GgufFile::get_u32)?.map(|v| v as usize))
    }

    pub fn usize_or(&self, k: &str, default: usize) -> anyhow::Result<usize> {
        Ok(self.maybe_usize(k)?.unwrap_or(default))
    }

    /// A required count, 1 to `max`.
    pub fn count(&self, k: &str, max: usize) -> anyhow::Result<usize> {
        let n = self.file.get_u32(&self.key(k))? as usize;
        self.in_range(k, n, max)
    }

    /// An optional count, 1 to `max` when present.
    pub fn maybe_count(&self, k: &str, max: usize) -> anyhow::Result<Option<usize>> {
        self.maybe_usize(k)?.map(|n| self.in_range(k, n, max)).transpose()
    }

    pub fn count_or(&self, k: &str, default: usize, max: usize) -> anyhow::Result<usize> {
        Ok(self.maybe_count(k, max)?.unwrap_or(default))
    }

    fn in_range(&self, k: &str, n: usize, max: usize) -> anyhow::Result<usize> {
        ensure!(
            (1..=max).contains(&n),
            "{} is {n}: out of range (1 to {max})",
            self.key(k)
        );
        Ok(n)
    }

    pub fn f32(&self, k: &str, sign: Sign) -> anyhow::Result<f32> {
        let v = self.file.get_f32(&self.key(k))?;
        self.checked_f32(k, v, sign)
    }

    /// An optional float (`default` when absent), finite and of `sign`.
    pub fn f32_or(&self, k: &str, default: f32, sign: Sign) -> anyhow::Result<f32> {
        match self.maybe(k, GgufFile::get_f32)? {
            Some(v) => self.checked_f32(k, v, sign),
            None => Ok(default),
        }
    }

    fn checked_f32(&self, k: &str, v: f32, sign: Sign) -> anyhow::Result<f32> {
        let (ok, need) = match sign {
            Sign::NonNegative => (v >= 0.0, "finite and at least 0"),
            Sign::Positive => (v > 0.0, "finite and above 0"),
        };
        ensure!(v.is_finite() && ok, "{} is {v}: must be {need}", self.key(k));
        Ok(v)
    }

    pub fn bool_or(&self, k: &str, default: bool) -> anyhow::Result<bool> {
        Ok(self.maybe(k, GgufFile::get_bool)?.unwrap_or(default))
    }

    pub fn str_or(&self, k: &str, default: &'f str) -> anyhow::Result<&'f str> {
        Ok(self.maybe(k, GgufFile::get_str)?.unwrap_or(default))
    }
}
