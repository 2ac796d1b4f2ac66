//! The library's error type: every public function returns [`Result`] instead of panicking.

use std::fmt;

/// Everything that can go wrong in a call of this library.
///
/// Each variant carries enough context to tell the caller which argument was wrong and why.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The quantization range is unusable (for example `qmin >= qmax`, or wider than 16 bits).
    InvalidRange {
        /// Requested lower bound.
        qmin: i32,
        /// Requested upper bound.
        qmax: i32,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A scale is not positive, finite and normal with a finite normal reciprocal.
    InvalidScale {
        /// Index of the scale (0 for per-tensor).
        index: usize,
        /// The offending value.
        scale: f32,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A zero point lies outside `[qmin, qmax]`.
    InvalidZeroPoint {
        /// Index of the zero point (0 for per-tensor).
        index: usize,
        /// The offending value.
        zero_point: i32,
        /// Lower bound of the range.
        qmin: i32,
        /// Upper bound of the range.
        qmax: i32,
    },
    /// Per-channel parameters have different lengths, or none at all.
    ParamLengthMismatch {
        /// Number of scales given.
        scales: usize,
        /// Number of zero points given.
        zero_points: usize,
    },
    /// The channel axis does not exist in the shape.
    AxisOutOfRange {
        /// Requested axis.
        axis: usize,
        /// Rank of the shape.
        rank: usize,
    },
    /// The number of per-channel parameters differs from the size of the channel axis.
    ChannelCountMismatch {
        /// Channel axis.
        axis: usize,
        /// Size of that axis in the shape.
        channels: usize,
        /// Number of parameters given.
        params: usize,
    },
    /// Two lengths that must agree do not (data vs shape, dy vs mask, output vs input...).
    LengthMismatch {
        /// What was being compared.
        what: &'static str,
        /// The length that was expected.
        expected: usize,
        /// The length that was found.
        actual: usize,
    },
    /// A buffer handed to the library cannot be used as asked.
    InvalidBuffer {
        /// Which argument.
        what: &'static str,
        /// Why it cannot be used.
        reason: String,
    },
    /// The tensor (or the buffers it needs) is larger than the device or this library can address.
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Requested size.
        requested: u64,
        /// The limit it exceeds.
        limit: u64,
    },
    /// An observer configuration or state is unusable (range without zero, averaging constant
    /// outside `(0, 1]`, a reversed or non-finite running range...).
    InvalidObserver(String),
    /// An LSQ configuration or its parameters are unusable.
    InvalidLsq(String),
    /// A tuning setting of the context is out of its range.
    InvalidSetting(String),
    /// No adapter matched the request (or none is present at all).
    NoAdapter(String),
    /// The device could not be created.
    RequestDevice(String),
    /// wgpu reported a validation, out-of-memory or internal error, or a device call failed.
    Gpu(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidRange { qmin, qmax, reason } => {
                write!(f, "invalid quantization range [{qmin}, {qmax}]: {reason}")
            }
            Error::InvalidScale { index, scale, reason } => write!(
                f,
                "invalid scale at index {index}: {scale:e} (bits {:#010x}) {reason}",
                scale.to_bits()
            ),
            Error::InvalidZeroPoint { index, zero_point, qmin, qmax } => write!(
                f,
                "zero point {zero_point} at index {index} lies outside the range [{qmin}, {qmax}]"
            ),
            Error::ParamLengthMismatch { scales, zero_points } => write!(
                f,
                "per-channel parameters need one scale and one zero point per channel (and at least one channel): got {scales} scales and {zero_points} zero points"
            ),
            Error::AxisOutOfRange { axis, rank } => {
                write!(f, "channel axis {axis} is out of range for a shape of rank {rank}")
            }
            Error::ChannelCountMismatch { axis, channels, params } => write!(
                f,
                "axis {axis} has {channels} channels but {params} per-channel parameters were given"
            ),
            Error::LengthMismatch { what, expected, actual } => {
                write!(f, "{what}: expected length {expected}, got {actual}")
            }
            Error::InvalidBuffer { what, reason } => write!(f, "buffer `{what}` cannot be used: {reason}"),
            Error::TooLarge { what, requested, limit } => {
                write!(f, "{what} is too large: {requested} exceeds the limit {limit}")
            }
            Error::InvalidObserver(msg) => write!(f, "invalid observer: {msg}"),
            Error::InvalidLsq(msg) => write!(f, "invalid LSQ quantizer: {msg}"),
            Error::InvalidSetting(msg) => write!(f, "invalid context setting: {msg}"),
            Error::NoAdapter(msg) => write!(f, "no GPU adapter: {msg}"),
            Error::RequestDevice(msg) => write!(f, "could not create a GPU device: {msg}"),
            Error::Gpu(msg) => write!(f, "GPU error: {msg}"),
        }
    }
}

impl std::error::Error for Error {}

/// Shorthand for `Result<T, fakequant::Error>`.
pub type Result<T> = std::result::Result<T, Error>;
