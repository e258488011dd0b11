//! The crate's one error type. Messages name the operation, the shapes or limit involved,
//! and what to do about it.

use thiserror::Error;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "no GPU adapter found{backends}. Install a GPU driver, or a software one: \
         `apt-get install mesa-vulkan-drivers libvulkan1` (Vulkan lavapipe)"
    )]
    NoAdapter { backends: String },

    #[error("no adapter matches --adapter {wanted:?}; available: {available}. Run `autoprog info` to list them")]
    AdapterNotFound { wanted: String, available: String },

    #[error("unknown backend {0:?}; use one of vulkan, metal, dx12, gl, webgpu")]
    UnknownBackend(String),

    #[error("could not open the device on {adapter}: {reason}")]
    RequestDevice { adapter: String, reason: String },

    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },

    #[error(
        "{what} needs {} MiB in one buffer binding; this adapter binds at most {} MiB \
         (max_storage_buffer_binding_size). Try a smaller batch or model",
        bytes.div_ceil(1 << 20), limit >> 20
    )]
    BindingTooLarge { what: String, bytes: u64, limit: u64 },

    #[error("{op}: {detail}")]
    InvalidArgument { op: &'static str, detail: String },

    /// An optional adapter feature a kernel needs is missing; `hint` says what to do instead.
    #[error("{what} needs the adapter feature {feature}, which this device lacks; {hint}")]
    MissingFeature { what: String, feature: &'static str, hint: &'static str },

    #[error("GPU error in {op}: {detail}")]
    Gpu { op: String, detail: String },

    #[error("reading back {what} failed: {detail}")]
    Readback { what: String, detail: String },

    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },

    /// A bad setting: the message names the option and the accepted range.
    #[error("{0}")]
    Config(String),

    #[error("batch {batch} could not be filled: {detail}; check or remove the broken files")]
    BatchUnfillable { batch: usize, detail: String },

    /// A file or value that does not hold what its format promises (a truncated
    /// checkpoint, metadata that is not the JSON we wrote). `what` names the file or key.
    #[error("{what}: {message}")]
    Format { what: String, message: String },
}

impl Error {
    /// Shorthand for a shape error of operation `op`.
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape { op, detail: detail.into() }
    }

    /// Shorthand for a format error about `what` (a file name or a metadata key).
    pub fn format(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Format { what: what.into(), message: message.into() }
    }

    /// f16 storage asked of a device without f16 shaders; `what` names what asked for it.
    pub fn missing_f16(what: impl Into<String>) -> Self {
        Error::MissingFeature {
            what: what.into(),
            feature: "SHADER_F16",
            hint: "train in f32 (--precision f32, or auto), or on an adapter that has it (`autoprog info` lists them)",
        }
    }

    /// Shorthand for an invalid-argument error of operation `op`.
    pub fn invalid(op: &'static str, detail: impl Into<String>) -> Self {
        Error::InvalidArgument { op, detail: detail.into() }
    }
}
