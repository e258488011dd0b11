//! Checkpoints: named f32 tensors plus string metadata in a safetensors file.
//!
//! We always write F32 little-endian. We read F32, F16, BF16 and F64 (converted to f32) and
//! the integer dtypes (converted exactly, for label tensors of debug-step input files), so a
//! checkpoint exported by another framework loads too. Metadata values are strings in the
//! safetensors header; ours hold JSON (config, epoch, step, RNG state, class names, ...),
//! read and written through [`Checkpoint::get_json`] / [`Checkpoint::set_json`].
//!
//! The names inside our files are in [`schema`].
//!
//! Byte-level functions work everywhere (the viewer loads checkpoints it fetched); file
//! functions are native only.

pub mod schema;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use safetensors::{Dtype, SafeTensors, View};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Error, Result};

/// Largest integer magnitude that f32 holds exactly (2^24); integer tensors beyond it are
/// refused rather than silently rounded.
const MAX_EXACT_INT_IN_F32: u64 = 1 << 24;

/// One tensor: its name (timm naming, e.g. `blocks.0.attn.qkv.weight`), shape and data.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// Row-major, `shape.iter().product()` values.
    pub data: Vec<f32>,
}

impl NamedTensor {
    /// # Panics
    /// If `data.len()` is not the product of `shape` (a programmer error).
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Self {
        let name = name.into();
        let numel: usize = shape.iter().product();
        assert_eq!(data.len(), numel, "tensor `{name}`: shape {shape:?} holds {numel} values, data has {}", data.len());
        NamedTensor { name, shape, data }
    }

    /// Number of values the shape holds.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as class labels: each must be a non-negative integer (integer tensors
    /// load exactly, so this is lossless for them).
    pub fn as_labels(&self) -> Result<Vec<u32>> {
        self.data
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if v.fract() == 0.0 && (0.0..4_294_967_296.0).contains(&v) {
                    Ok(v as u32)
                } else {
                    Err(Error::format(
                        format!("tensor `{}`", self.name),
                        format!(
                            "value {v} at index {i} is not a class label (a non-negative integer); \
                             store labels as an integer tensor (I64, I32 or U8)"
                        ),
                    ))
                }
            })
            .collect()
    }
}

/// A checkpoint: tensors in file order and string metadata (JSON values, see module doc).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoint {
    pub tensors: Vec<NamedTensor>,
    pub metadata: BTreeMap<String, String>,
}

impl Checkpoint {
    /// The tensor called `name`, if present.
    pub fn get(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The tensor called `name`, which must have shape `expected_shape`.
    pub fn require(&self, name: &str, expected_shape: &[usize]) -> Result<&NamedTensor> {
        let Some(tensor) = self.get(name) else {
            let mut known: Vec<&str> = self.tensors.iter().map(|t| t.name.as_str()).collect();
            let more = known.len().saturating_sub(8);
            known.truncate(8);
            let tail = if more > 0 { format!(" and {more} more") } else { String::new() };
            return Err(Error::format(
                "checkpoint",
                format!(
                    "has no tensor `{name}` (it has {}{tail}); was it saved for a different model?",
                    known.join(", ")
                ),
            ));
        };
        if tensor.shape != expected_shape {
            return Err(Error::format(
                "checkpoint",
                format!(
                    "tensor `{name}` has shape {:?} in the file, the model expects {expected_shape:?}; \
                     the checkpoint was saved for a different model config (depth, width, resolution, classes)",
                    tensor.shape
                ),
            ));
        }
        Ok(tensor)
    }

    /// Stores `value` as JSON under metadata `key`, replacing any previous value.
    pub fn set_json<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        let json = serde_json::to_string(value).map_err(|e| {
            Error::format(format!("checkpoint metadata `{key}`"), format!("cannot be stored as JSON: {e}"))
        })?;
        self.metadata.insert(key.to_string(), json);
        Ok(())
    }

    /// Reads metadata `key` as JSON; `Ok(None)` when the key is absent.
    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let Some(text) = self.metadata.get(key) else { return Ok(None) };
        serde_json::from_str(text).map(Some).map_err(|e| {
            let shown: String = text.chars().take(80).collect();
            Error::format(
                format!("checkpoint metadata `{key}`"),
                format!(
                    "value {shown:?} does not read as expected ({e}); the checkpoint was written by \
                     another program or an incompatible autoprog version"
                ),
            )
        })
    }

    /// Serialises to safetensors bytes, every tensor as F32 little-endian. The safetensors
    /// writer orders tensors by name.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.to_bytes_as(Storage::F32)
    }

    /// [`Checkpoint::to_bytes`] with every tensor stored as `storage`.
    pub fn to_bytes_as(&self, storage: Storage) -> Result<Vec<u8>> {
        let mut seen = HashSet::with_capacity(self.tensors.len());
        for t in &self.tensors {
            if !seen.insert(t.name.as_str()) {
                return Err(Error::invalid(
                    "checkpoint",
                    format!("two tensors are named `{}`; names must be unique", t.name),
                ));
            }
            if t.data.len() != t.numel() {
                return Err(Error::shape(
                    "checkpoint",
                    format!(
                        "tensor `{}` has shape {:?} ({} values) but {} data values",
                        t.name,
                        t.shape,
                        t.numel(),
                        t.data.len()
                    ),
                ));
            }
        }
        let metadata: Option<HashMap<String, String>> =
            (!self.metadata.is_empty()).then(|| self.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        let views = self.tensors.iter().map(|t| (t.name.as_str(), TensorView(t, storage)));
        safetensors::serialize(views, metadata)
            .map_err(|e| Error::invalid("checkpoint", format!("cannot serialise to safetensors: {e}")))
    }

    /// Parses safetensors bytes; `what` (usually the file name) names the source in errors.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Checkpoint> {
        let (header_len, header) = SafeTensors::read_metadata(bytes).map_err(|e| {
            Error::format(
                what,
                format!(
                    "not a safetensors file, or it is truncated ({e}; {} bytes); re-export or re-download it",
                    bytes.len()
                ),
            )
        })?;
        // read_metadata checked that the offsets tile exactly the bytes after the header.
        let data = &bytes[8 + header_len..];
        let mut tensors = Vec::new();
        for name in header.offset_keys() {
            let Some(info) = header.info(&name) else { continue };
            let (start, end) = info.data_offsets;
            let values = decode_to_f32(info.dtype, &data[start..end])
                .map_err(|message| Error::format(what, format!("tensor `{name}`: {message}")))?;
            tensors.push(NamedTensor { name, shape: info.shape.clone(), data: values });
        }
        let metadata = header.metadata().iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
        Ok(Checkpoint { tensors, metadata })
    }

    /// Writes the checkpoint atomically (temp file + rename): a crash never leaves a
    /// half-written checkpoint in place of the previous one.
    #[cfg(native)]
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        crate::fsutil::write_atomic(path, &self.to_bytes()?)
    }

    /// Reads a checkpoint file.
    #[cfg(native)]
    pub fn load(path: &std::path::Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
        Checkpoint::from_bytes(&bytes, &path.display().to_string())
    }
}

/// How tensors are stored in a written file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// Exact.
    F32,
    /// Half the size, rounded to nearest (about 3 significant digits); for exported models.
    F16,
}

/// A tensor's data as safetensors bytes of a storage type, for serialisation.
struct TensorView<'a>(&'a NamedTensor, Storage);

impl View for TensorView<'_> {
    fn dtype(&self) -> Dtype {
        match self.1 {
            Storage::F32 => Dtype::F32,
            Storage::F16 => Dtype::F16,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        match self.1 {
            Storage::F32 if cfg!(target_endian = "little") => Cow::Borrowed(bytemuck::cast_slice(&self.0.data)),
            Storage::F32 => Cow::Owned(self.0.data.iter().flat_map(|v| v.to_le_bytes()).collect()),
            Storage::F16 => {
                Cow::Owned(self.0.data.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect())
            }
        }
    }

    fn data_len(&self) -> usize {
        self.0.data.len()
            * match self.1 {
                Storage::F32 => 4,
                Storage::F16 => 2,
            }
    }
}

/// Little-endian element bytes of `dtype` to f32. Chunked reads, so unaligned data is fine.
fn decode_to_f32(dtype: Dtype, bytes: &[u8]) -> std::result::Result<Vec<f32>, String> {
    fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        bytes.chunks_exact(N).map(|c| f(c.try_into().expect("chunks_exact yields N bytes"))).collect()
    }
    fn exact<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> i128) -> std::result::Result<Vec<f32>, String> {
        bytes
            .chunks_exact(N)
            .map(|c| {
                let v = f(c.try_into().expect("chunks_exact yields N bytes"));
                if v.unsigned_abs() <= MAX_EXACT_INT_IN_F32 as u128 {
                    Ok(v as f32)
                } else {
                    Err(format!(
                        "integer {v} is beyond {MAX_EXACT_INT_IN_F32} in magnitude, which f32 cannot hold exactly; \
                         store it as a float tensor"
                    ))
                }
            })
            .collect()
    }
    Ok(match dtype {
        Dtype::F32 => each(bytes, f32::from_le_bytes),
        Dtype::F64 => each(bytes, |b| f64::from_le_bytes(b) as f32),
        Dtype::F16 => each(bytes, |b| half::f16::from_le_bytes(b).to_f32()),
        Dtype::BF16 => each(bytes, |b| half::bf16::from_le_bytes(b).to_f32()),
        Dtype::BOOL | Dtype::U8 => exact(bytes, |[b]: [u8; 1]| b as i128)?,
        Dtype::I8 => exact(bytes, |b| i8::from_le_bytes(b) as i128)?,
        Dtype::I16 => exact(bytes, |b| i16::from_le_bytes(b) as i128)?,
        Dtype::U16 => exact(bytes, |b| u16::from_le_bytes(b) as i128)?,
        Dtype::I32 => exact(bytes, |b| i32::from_le_bytes(b) as i128)?,
        Dtype::U32 => exact(bytes, |b| u32::from_le_bytes(b) as i128)?,
        Dtype::I64 => exact(bytes, |b| i64::from_le_bytes(b) as i128)?,
        Dtype::U64 => exact(bytes, |b| u64::from_le_bytes(b) as i128)?,
        other => {
            return Err(format!(
            "dtype {other} is not supported; convert the file to F32, F16, BF16 or F64 (or an integer type for labels)"
        ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw little-endian tensor of any dtype, for building foreign files in tests.
    struct RawView {
        dtype: Dtype,
        shape: Vec<usize>,
        bytes: Vec<u8>,
    }

    impl View for RawView {
        fn dtype(&self) -> Dtype {
            self.dtype
        }
        fn shape(&self) -> &[usize] {
            &self.shape
        }
        fn data(&self) -> Cow<'_, [u8]> {
            Cow::Borrowed(&self.bytes)
        }
        fn data_len(&self) -> usize {
            self.bytes.len()
        }
    }

    fn raw(dtype: Dtype, shape: &[usize], bytes: Vec<u8>) -> RawView {
        RawView { dtype, shape: shape.to_vec(), bytes }
    }

    fn sample() -> Checkpoint {
        let mut ckpt = Checkpoint {
            tensors: vec![
                NamedTensor::new("pos_embed", vec![1, 5, 4], (0..20).map(|i| i as f32 * 0.25 - 2.0).collect()),
                NamedTensor::new("blocks.0.attn.qkv.weight", vec![12, 4], (0..48).map(|i| (i as f32).sin()).collect()),
                NamedTensor::new("cls_token", vec![1, 1, 4], vec![f32::MIN_POSITIVE, -0.0, 1e30, -7.5]),
                NamedTensor::new("scalar", vec![], vec![3.0]),
            ],
            metadata: BTreeMap::new(),
        };
        ckpt.set_json("epoch", &12u32).unwrap();
        ckpt.set_json("mean", &[0.5f32, 0.25, 0.125]).unwrap();
        ckpt.set_json("classes", &["disc", "ring"]).unwrap();
        ckpt
    }

    fn assert_same_contents(a: &Checkpoint, b: &Checkpoint) {
        assert_eq!(a.metadata, b.metadata);
        assert_eq!(a.tensors.len(), b.tensors.len());
        for t in &a.tensors {
            let u = b.get(&t.name).unwrap_or_else(|| panic!("missing {}", t.name));
            assert_eq!(t.shape, u.shape, "{}", t.name);
            let (x, y): (Vec<u32>, Vec<u32>) =
                (t.data.iter().map(|v| v.to_bits()).collect(), u.data.iter().map(|v| v.to_bits()).collect());
            assert_eq!(x, y, "{} (bit-exact)", t.name);
        }
    }

    /// A fresh directory under the system temp dir for one test.
    #[cfg(native)]
    fn temp_dir(test: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("autoprog-ckpt-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn f16_storage_halves_the_data_and_rounds_to_nearest() {
        let ckpt = sample();
        let (f32_bytes, f16_bytes) = (ckpt.to_bytes().unwrap(), ckpt.to_bytes_as(Storage::F16).unwrap());
        let values: usize = ckpt.tensors.iter().map(|t| t.numel()).sum();
        assert!(f32_bytes.len() - f16_bytes.len() >= 2 * values - 64, "{} vs {}", f32_bytes.len(), f16_bytes.len());
        let back = Checkpoint::from_bytes(&f16_bytes, "half.safetensors").unwrap();
        assert_eq!(back.metadata, ckpt.metadata);
        for t in &ckpt.tensors {
            let u = back.get(&t.name).unwrap();
            assert_eq!(u.shape, t.shape);
            for (&a, &b) in t.data.iter().zip(&u.data) {
                assert_eq!(b, half::f16::from_f32(a).to_f32(), "{}: {a}", t.name);
            }
        }
    }

    #[test]
    fn round_trip_bytes_keeps_names_shapes_data_metadata() {
        let ckpt = sample();
        let bytes = ckpt.to_bytes().unwrap();
        let back = Checkpoint::from_bytes(&bytes, "mem.safetensors").unwrap();
        assert_same_contents(&ckpt, &back);
        assert_eq!(back.get_json::<u32>("epoch").unwrap(), Some(12));
        assert_eq!(back.get_json::<Vec<f32>>("mean").unwrap(), Some(vec![0.5, 0.25, 0.125]));
        assert_eq!(back.get_json::<Vec<String>>("classes").unwrap().unwrap(), ["disc", "ring"]);
        assert_eq!(back.get_json::<u32>("absent").unwrap(), None);
        // The file is a plain safetensors file: the reference parser reads it too.
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("pos_embed").unwrap().dtype(), Dtype::F32);
        assert_eq!(st.tensor("pos_embed").unwrap().shape(), [1, 5, 4]);
    }

    #[test]
    fn float_metadata_reads_back_bit_exact() {
        // Resumes reproduce only if LR and similar state come back to the last bit.
        let values: Vec<f64> =
            (1..200).map(|i| (i as f64).ln() / 7.0 + 0.1 * i as f64).chain([0.1 + 0.2, 1e-7 / 3.0]).collect();
        let mut ckpt = Checkpoint::default();
        ckpt.set_json("values", &values).unwrap();
        let back = Checkpoint::from_bytes(&ckpt.to_bytes().unwrap(), "mem").unwrap();
        let read: Vec<f64> = back.get_json("values").unwrap().unwrap();
        assert_eq!(
            read.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            values.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn get_json_of_wrong_type_names_the_key() {
        let ckpt = sample();
        let err = ckpt.get_json::<String>("epoch").unwrap_err().to_string();
        assert!(err.contains("`epoch`"), "{err}");
    }

    #[cfg(native)]
    #[test]
    fn round_trip_file_and_atomic_save_leaves_no_temp_file() {
        let dir = temp_dir("roundtrip");
        let path = dir.join("sub").join("last.safetensors");
        let ckpt = sample();
        ckpt.save(&path).unwrap();
        // Overwriting goes through the same temp-and-rename path.
        ckpt.save(&path).unwrap();
        let back = Checkpoint::load(&path).unwrap();
        assert_same_contents(&ckpt, &back);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["last.safetensors"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(native)]
    #[test]
    fn load_of_missing_file_is_io_error_naming_the_path() {
        let path = std::env::temp_dir().join("autoprog-ckpt-does-not-exist/none.safetensors");
        let err = Checkpoint::load(&path).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("none.safetensors"), "{err}");
    }

    #[test]
    fn foreign_dtypes_load_with_correct_values() {
        let f16s = [1.5f32, -2.0, 0.333, 65504.0];
        let bf16s = [1.5f32, -3.0e38, 0.1, 7.0];
        let f64s = [0.1f64, -1e-3, 12345.678, 2.0];
        let i64s = [0i64, 3, 9, 16_777_216];
        let bytes = safetensors::serialize(
            [
                (
                    "h",
                    raw(Dtype::F16, &[2, 2], f16s.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect()),
                ),
                (
                    "b",
                    raw(Dtype::BF16, &[4], bf16s.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect()),
                ),
                ("d", raw(Dtype::F64, &[4, 1], f64s.iter().flat_map(|v| v.to_le_bytes()).collect())),
                ("labels", raw(Dtype::I64, &[4], i64s.iter().flat_map(|v| v.to_le_bytes()).collect())),
                ("i32", raw(Dtype::I32, &[2], [-5i32, 7].iter().flat_map(|v| v.to_le_bytes()).collect())),
                ("u8", raw(Dtype::U8, &[3], vec![0, 1, 255])),
            ],
            None,
        )
        .unwrap();
        let ckpt = Checkpoint::from_bytes(&bytes, "foreign.safetensors").unwrap();
        let h = ckpt.require("h", &[2, 2]).unwrap();
        assert_eq!(h.data, f16s.map(|v| half::f16::from_f32(v).to_f32()));
        assert_eq!(h.data[0], 1.5);
        let b = ckpt.require("b", &[4]).unwrap();
        assert_eq!(b.data, bf16s.map(|v| half::bf16::from_f32(v).to_f32()));
        assert_eq!(ckpt.require("d", &[4, 1]).unwrap().data, f64s.map(|v| v as f32));
        let labels = ckpt.require("labels", &[4]).unwrap();
        assert_eq!(labels.data, [0.0, 3.0, 9.0, 16_777_216.0]);
        assert_eq!(labels.as_labels().unwrap(), [0, 3, 9, 16_777_216]);
        assert_eq!(ckpt.get("i32").unwrap().data, [-5.0, 7.0]);
        assert!(ckpt.get("i32").unwrap().as_labels().unwrap_err().to_string().contains("-5"));
        assert_eq!(ckpt.get("u8").unwrap().as_labels().unwrap(), [0, 1, 255]);
        assert!(ckpt.get("d").unwrap().as_labels().is_err());
    }

    #[test]
    fn integers_beyond_f32_precision_are_refused() {
        let bytes =
            safetensors::serialize([("big", raw(Dtype::I64, &[1], (16_777_217i64).to_le_bytes().to_vec()))], None)
                .unwrap();
        let err = Checkpoint::from_bytes(&bytes, "big.safetensors").unwrap_err().to_string();
        assert!(err.contains("big.safetensors") && err.contains("`big`") && err.contains("16777217"), "{err}");
    }

    #[test]
    fn unsupported_dtype_is_a_clear_error() {
        let bytes = safetensors::serialize([("q", raw(Dtype::F8_E4M3, &[2], vec![1, 2]))], None).unwrap();
        let err = Checkpoint::from_bytes(&bytes, "q.safetensors").unwrap_err().to_string();
        assert!(err.contains("q.safetensors") && err.contains("F8_E4M3"), "{err}");
    }

    #[test]
    fn truncated_and_random_bytes_give_a_clear_error() {
        let bytes = sample().to_bytes().unwrap();
        let mut cases: Vec<Vec<u8>> = vec![Vec::new(), bytes[..5].to_vec(), bytes[..bytes.len() - 1].to_vec()];
        cases.extend((1..bytes.len()).step_by(37).map(|n| bytes[..n].to_vec()));
        // Deterministic pseudo-random junk, including a plausible-looking small header length.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for len in [8usize, 64, 1000, 4096] {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            cases.push(junk.clone());
            let mut plausible = junk;
            plausible[..8].copy_from_slice(&20u64.to_le_bytes());
            cases.push(plausible);
        }
        for case in cases {
            let err = Checkpoint::from_bytes(&case, "x.safetensors").unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, Error::Format { .. }), "{msg}");
            assert!(msg.starts_with("x.safetensors: not a safetensors file"), "{msg}");
            assert!(msg.contains("re-export or re-download"), "{msg}");
        }
    }

    #[test]
    fn require_with_wrong_shape_names_both_shapes() {
        let ckpt = sample();
        let err = ckpt.require("pos_embed", &[1, 17, 4]).unwrap_err().to_string();
        assert!(err.contains("`pos_embed`") && err.contains("[1, 5, 4]") && err.contains("[1, 17, 4]"), "{err}");
        let err = ckpt.require("head.weight", &[10, 4]).unwrap_err().to_string();
        assert!(err.contains("`head.weight`") && err.contains("pos_embed"), "{err}");
        assert!(ckpt.require("pos_embed", &[1, 5, 4]).is_ok());
    }

    #[test]
    fn duplicate_names_and_bad_lengths_refuse_to_serialise() {
        let mut ckpt = sample();
        ckpt.tensors.push(NamedTensor::new("scalar", vec![1], vec![1.0]));
        assert!(ckpt.to_bytes().unwrap_err().to_string().contains("`scalar`"));
        let mut ckpt = sample();
        ckpt.tensors[0].data.pop();
        assert!(ckpt.to_bytes().unwrap_err().to_string().contains("`pos_embed`"));
    }
}
