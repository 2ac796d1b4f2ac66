//! The crate's errors: the library's own, and the arguments a burn caller can get wrong.

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The library refused (an argument, a device limit, a wgpu error).
    #[error(transparent)]
    Library(#[from] fakequant::Error),
    /// burn's runtime refused.
    #[error("burn: {what}: {message}")]
    Burn {
        /// What was being done.
        what: &'static str,
        /// burn's message.
        message: String,
    },
    /// A tensor on another device than the [`crate::QatDevice`] the op was made for.
    #[error("`{what}` is on {device}, not on the QAT device {expected}")]
    DeviceMismatch {
        /// The argument.
        what: &'static str,
        /// Its device.
        device: String,
        /// The device the op runs on.
        expected: String,
    },
    /// A tensor of an element type the kernels do not take.
    #[error("`{what}` has dtype {dtype:?}; the QAT ops take f32, f16 and bf16")]
    UnsupportedDType {
        /// The argument.
        what: &'static str,
        /// Its dtype.
        dtype: burn::tensor::DType,
    },
    /// A parameter or input the op cannot take (shape, dtype, channel count).
    #[error("`{what}`: {reason}")]
    UnsupportedParameter {
        /// The argument.
        what: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
