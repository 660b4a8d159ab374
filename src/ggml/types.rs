//! ggml tensor types: the `GgmlType` enum, with names, block sizes and
//! byte sizes read from the linked ggml's type traits.

use std::ffi::CStr;
use std::fmt;

use super::sys;

/// A ggml tensor type. The discriminant is ggml's number for the type (what
/// GGUF tensor tables and ggml's API use), taken from the bindings, so the
/// two cannot disagree; numbers of removed types have no variant.
///
/// `Display` prints ggml's name, which is also how settings saved in
/// session files spell it.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32 = sys::GGML_TYPE_F32,
    F16 = sys::GGML_TYPE_F16,
    Q4_0 = sys::GGML_TYPE_Q4_0,
    Q4_1 = sys::GGML_TYPE_Q4_1,
    Q5_0 = sys::GGML_TYPE_Q5_0,
    Q5_1 = sys::GGML_TYPE_Q5_1,
    Q8_0 = sys::GGML_TYPE_Q8_0,
    Q8_1 = sys::GGML_TYPE_Q8_1,
    Q2_K = sys::GGML_TYPE_Q2_K,
    Q3_K = sys::GGML_TYPE_Q3_K,
    Q4_K = sys::GGML_TYPE_Q4_K,
    Q5_K = sys::GGML_TYPE_Q5_K,
    Q6_K = sys::GGML_TYPE_Q6_K,
    Q8_K = sys::GGML_TYPE_Q8_K,
    IQ2_XXS = sys::GGML_TYPE_IQ2_XXS,
    IQ2_XS = sys::GGML_TYPE_IQ2_XS,
    IQ3_XXS = sys::GGML_TYPE_IQ3_XXS,
    IQ1_S = sys::GGML_TYPE_IQ1_S,
    IQ4_NL = sys::GGML_TYPE_IQ4_NL,
    IQ3_S = sys::GGML_TYPE_IQ3_S,
    IQ2_S = sys::GGML_TYPE_IQ2_S,
    IQ4_XS = sys::GGML_TYPE_IQ4_XS,
    I8 = sys::GGML_TYPE_I8,
    I16 = sys::GGML_TYPE_I16,
    I32 = sys::GGML_TYPE_I32,
    I64 = sys::GGML_TYPE_I64,
    F64 = sys::GGML_TYPE_F64,
    IQ1_M = sys::GGML_TYPE_IQ1_M,
    BF16 = sys::GGML_TYPE_BF16,
    TQ1_0 = sys::GGML_TYPE_TQ1_0,
    TQ2_0 = sys::GGML_TYPE_TQ2_0,
    MXFP4 = sys::GGML_TYPE_MXFP4,
    NVFP4 = sys::GGML_TYPE_NVFP4,
    Q1_0 = sys::GGML_TYPE_Q1_0,
    Q2_0 = sys::GGML_TYPE_Q2_0,
}

impl GgmlType {
    /// Every variant, in ggml's order.
    pub const ALL: [GgmlType; 35] = {
        use GgmlType::*;
        [
            F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ2_XXS, IQ2_XS, IQ3_XXS,
            IQ1_S, IQ4_NL, IQ3_S, IQ2_S, IQ4_XS, I8, I16, I32, I64, F64, IQ1_M, BF16, TQ1_0, TQ2_0, MXFP4, NVFP4, Q1_0,
            Q2_0,
        ]
    };

    /// ggml's number for the type.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// ggml's name (`f16`, `q8_0`, `q4_K`, ...).
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Elements per block.
    pub fn block_size(self) -> u64 {
        self.info().block_size
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.info().type_size
    }

    /// Bytes taken by a row of `n` elements (`n` must be a multiple of the block size).
    pub fn row_size(self, n: u64) -> u64 {
        self.info().row_size(n)
    }

    /// Whether ggml's CPU backend can multiply by a matrix of this type (it
    /// has a `vec_dot` kernel for it). Its `supports_op` accepts any type
    /// with f32 activations: the kernel table is the real answer.
    pub fn has_cpu_matmul(self) -> bool {
        // SAFETY: `self` is a known type, below GGML_TYPE_COUNT, so it
        // indexes the CPU backend's static, always initialized traits table.
        unsafe { (*sys::ggml_get_type_traits_cpu(self.sys())).vec_dot.is_some() }
    }

    /// The type named `name` (ggml's name, any case).
    pub fn by_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// The bindings' number, for ggml calls.
    pub(super) fn sys(self) -> sys::ggml_type {
        self as sys::ggml_type
    }

    fn info(self) -> TypeInfo {
        type_info(self).expect("every variant has type traits (tested)")
    }
}

/// A ggml type number without a variant, or one the linked ggml has no
/// traits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownType(pub u32);

impl fmt::Display for UnknownType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown ggml type {}", self.0)
    }
}

impl std::error::Error for UnknownType {}

impl TryFrom<u32> for GgmlType {
    type Error = UnknownType;

    fn try_from(id: u32) -> Result<Self, UnknownType> {
        Self::ALL
            .into_iter()
            .find(|t| t.id() == id && traits(id).is_some())
            .ok_or(UnknownType(id))
    }
}

impl serde::Serialize for GgmlType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for GgmlType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Self::by_name(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown ggml type {name:?}")))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeInfo {
    pub id: GgmlType,
    pub name: &'static str,
    /// Elements per block.
    pub block_size: u64,
    /// Bytes per block.
    pub type_size: u64,
}

impl TypeInfo {
    /// Bytes taken by a row of `n` elements (`n` must be a multiple of the block size).
    pub fn row_size(&self, n: u64) -> u64 {
        n / self.block_size * self.type_size
    }
}

/// Type information for `ty` from the linked ggml (`None` only if it had
/// no traits for a variant, which a test rules out).
pub fn type_info(ty: GgmlType) -> Option<TypeInfo> {
    let (name, block_size, type_size) = traits(ty.id())?;
    Some(TypeInfo {
        id: ty,
        name,
        block_size,
        type_size,
    })
}

/// Looks a type up by its ggml name (`f16`, `q8_0`, ...).
pub fn type_by_name(name: &str) -> Option<TypeInfo> {
    GgmlType::by_name(name).and_then(type_info)
}

/// Name, block size and block bytes of ggml type number `id`, or `None`
/// for numbers the linked ggml does not know (including removed types).
fn traits(id: u32) -> Option<(&'static str, u64, u64)> {
    if id >= sys::GGML_TYPE_COUNT {
        return None;
    }
    // SAFETY: `id` is below GGML_TYPE_COUNT, so it indexes ggml's static
    // type-traits table; removed types have a zero block size, checked below.
    let (block_size, type_size, name) = unsafe {
        let traits = &*sys::ggml_get_type_traits(id);
        let name = if traits.type_name.is_null() {
            return None;
        } else {
            CStr::from_ptr(traits.type_name).to_str().ok()?
        };
        (traits.blck_size, traits.type_size, name)
    };
    if block_size <= 0 || type_size == 0 {
        return None;
    }
    Some((name, block_size as u64, type_size as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_number_is_a_variant_with_traits() {
        for t in GgmlType::ALL {
            assert!(type_info(t).is_some(), "no traits for type {}", t.id());
            assert_eq!(GgmlType::try_from(t.id()), Ok(t));
            assert_eq!(GgmlType::by_name(t.name()), Some(t));
        }
        for id in 0..sys::GGML_TYPE_COUNT + 2 {
            let known = traits(id).is_some();
            assert_eq!(GgmlType::try_from(id).is_ok(), known, "type number {id}");
        }
    }

    #[test]
    fn numbers_names_and_sizes() {
        assert_eq!((GgmlType::F32.id(), GgmlType::F16.id(), GgmlType::Q8_0.id()), (0, 1, 8));
        assert_eq!(GgmlType::I32.id(), 26);
        assert_eq!(GgmlType::Q4_K.name(), "q4_K");
        assert_eq!(GgmlType::by_name("Q8_0"), Some(GgmlType::Q8_0));
        assert_eq!((GgmlType::Q8_0.block_size(), GgmlType::Q8_0.type_size()), (32, 34));
        assert_eq!(GgmlType::F16.row_size(10), 20);
        // 4 was Q4_2, removed from ggml.
        assert_eq!(GgmlType::try_from(4).unwrap_err().to_string(), "unknown ggml type 4");
        assert_eq!(format!("{:?} {}", GgmlType::Q8_0, GgmlType::Q8_0), "Q8_0 q8_0");
        // Saved settings name the type.
        assert_eq!(serde_json::to_string(&GgmlType::Q4_K).unwrap(), "\"q4_K\"");
        assert_eq!(serde_json::from_str::<GgmlType>("\"q4_K\"").unwrap(), GgmlType::Q4_K);
        assert!(serde_json::from_str::<GgmlType>("\"q9\"").is_err());
    }

    #[test]
    fn cpu_matmul_types() {
        use GgmlType::*;
        for t in [F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K, IQ4_NL, MXFP4] {
            assert!(t.has_cpu_matmul(), "{t}");
        }
        // Activation-only quantizations and integer types have no kernel.
        for t in [Q8_1, Q8_K, I8, I16, I32, I64, F64] {
            assert!(!t.has_cpu_matmul(), "{t}");
        }
    }
}
