//! Element types of tensors: what a buffer stores per value, and the conversions between
//! the host's f32 and the stored type.

/// What a tensor stores per element.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Element {
    /// 4-byte words: f32, or u32 where a kernel documents it.
    #[default]
    F32,
    /// IEEE half precision: storage only, kernels compute in f32 (needs `SHADER_F16`).
    F16,
}

impl Element {
    pub const fn bytes(self) -> usize {
        match self {
            Element::F32 => 4,
            Element::F16 => 2,
        }
    }
    /// The WGSL scalar type.
    pub const fn wgsl(self) -> &'static str {
        match self {
            Element::F32 => "f32",
            Element::F16 => "f16",
        }
    }
    /// `value` as this type stores it (f16: rounded to nearest, even on ties).
    pub fn round(self, value: f32) -> f32 {
        match self {
            Element::F32 => value,
            Element::F16 => half::f16::from_f32(value).to_f32(),
        }
    }
    pub(crate) fn encode(self, data: &[f32]) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Element::F32 => bytemuck::cast_slice(data).into(),
            Element::F16 => data.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect::<Vec<u8>>().into(),
        }
    }
    pub(crate) fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Element::F32 => bytemuck::pod_collect_to_vec(bytes),
            Element::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        }
    }
}

impl std::fmt::Display for Element {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.wgsl())
    }
}
