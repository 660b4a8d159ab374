//! The architecture's metadata keys (`{arch}.*`): required ones, and
//! optional ones with the default that stands in when a file leaves them out.
//! A key that is present with the wrong type is an error, never the default.

use crate::gguf::{GgufFile, Value};

#[derive(Clone, Copy)]
pub struct Meta<'f> {
    pub file: &'f GgufFile,
    pub arch: &'f str,
}

impl<'f> Meta<'f> {
    pub fn new(file: &'f GgufFile) -> anyhow::Result<Self> {
        Ok(Self {
            file,
            arch: file.architecture()?,
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

    pub fn usize(&self, k: &str) -> anyhow::Result<usize> {
        Ok(self.file.get_u32(&self.key(k))? as usize)
    }

    pub fn maybe_usize(&self, k: &str) -> anyhow::Result<Option<usize>> {
        Ok(self.maybe(k, GgufFile::get_u32)?.map(|v| v as usize))
    }

    pub fn usize_or(&self, k: &str, default: usize) -> anyhow::Result<usize> {
        Ok(self.maybe_usize(k)?.unwrap_or(default))
    }

    pub fn f32(&self, k: &str) -> anyhow::Result<f32> {
        Ok(self.file.get_f32(&self.key(k))?)
    }

    pub fn f32_or(&self, k: &str, default: f32) -> anyhow::Result<f32> {
        Ok(self.maybe(k, GgufFile::get_f32)?.unwrap_or(default))
    }

    pub fn bool_or(&self, k: &str, default: bool) -> anyhow::Result<bool> {
        Ok(self.maybe(k, GgufFile::get_bool)?.unwrap_or(default))
    }

    pub fn str_or(&self, k: &str, default: &'f str) -> anyhow::Result<&'f str> {
        Ok(self.maybe(k, GgufFile::get_str)?.unwrap_or(default))
    }
}
