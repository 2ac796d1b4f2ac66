//! The library's error type: every public function returns [`Result`] instead of panicking.
//!
//! Validation errors are structured (the argument, the value, what is allowed). Failures of the
//! device keep what wgpu reported as their [`std::error::Error::source`].

use std::sync::Arc;

/// Everything that can go wrong in a call of this library.
///
/// Each variant carries enough context to tell the caller which argument was wrong and why.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The quantization range is unusable (for example `qmin >= qmax`, or wider than 16 bits).
    #[error("invalid quantization range [{qmin}, {qmax}]: {reason}")]
    InvalidRange {
        /// Requested lower bound.
        qmin: i32,
        /// Requested upper bound.
        qmax: i32,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A bit width outside 2 to 16 (`QuantRange::signed`, `unsigned`, `signed_narrow`).
    #[error("bit width {bits} is not supported: ranges have 2 to 16 bits")]
    InvalidBitWidth {
        /// The requested width.
        bits: u32,
    },
    /// The product of a shape's dimensions does not fit a `usize`.
    #[error("shape {shape:?} has more elements than a usize can count")]
    ShapeOverflow {
        /// The shape.
        shape: Vec<usize>,
    },
    /// A scale is not positive, finite and normal with a finite normal reciprocal.
    #[error("invalid scale at index {index}: {scale:e} (bits {:#010x}) {reason}", scale.to_bits())]
    InvalidScale {
        /// Index of the scale (0 for per-tensor).
        index: usize,
        /// The offending value.
        scale: f32,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A zero point lies outside `[qmin, qmax]`.
    #[error("zero point {zero_point} at index {index} lies outside the range [{qmin}, {qmax}]")]
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
    #[error("parameters need one scale and one zero point per channel, exactly one of each per tensor: got {scales} scales and {zero_points} zero points")]
    ParamLengthMismatch {
        /// Number of scales given.
        scales: usize,
        /// Number of zero points given.
        zero_points: usize,
    },
    /// The channel axis does not exist in the shape.
    #[error("channel axis {axis} is out of range for a shape of rank {rank}")]
    AxisOutOfRange {
        /// Requested axis.
        axis: usize,
        /// Rank of the shape.
        rank: usize,
    },
    /// A per-group granularity that does not fit the shape.
    #[error("groups of {size} along axis {axis} of shape {shape:?}: {reason}")]
    InvalidGroup {
        /// The group axis.
        axis: usize,
        /// The group size.
        size: usize,
        /// The shape.
        shape: Vec<usize>,
        /// What is allowed.
        reason: &'static str,
    },
    /// The number of per-channel parameters differs from the size of the channel axis.
    #[error("axis {axis} has {channels} channels but {params} per-channel parameters were given")]
    ChannelCountMismatch {
        /// Channel axis.
        axis: usize,
        /// Size of that axis in the shape.
        channels: usize,
        /// Number of parameters given.
        params: usize,
    },
    /// Two lengths that must agree do not (data vs shape, dy vs mask, output vs input...).
    #[error("{what}: expected length {expected}, got {actual}")]
    LengthMismatch {
        /// What was being compared.
        what: &'static str,
        /// The length that was expected.
        expected: usize,
        /// The length that was found.
        actual: usize,
    },
    /// A buffer handed to the library cannot be used as asked.
    #[error("buffer `{what}` cannot be used: {reason}")]
    InvalidBuffer {
        /// Which argument.
        what: &'static str,
        /// Why it cannot be used.
        reason: String,
    },
    /// The tensor (or the buffers it needs) is larger than the device or this library can address.
    #[error("{what} is too large: {requested} exceeds the limit {limit}")]
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
    #[error("invalid observer: {0}")]
    InvalidObserver(String),
    /// An LSQ configuration or its parameters are unusable.
    #[error("invalid LSQ quantizer: {0}")]
    InvalidLsq(String),
    /// A valid request this build does not implement on this path (the message says which, and
    /// where it is available).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// A tuning setting of the context is out of its range.
    #[error("invalid context setting: {0}")]
    InvalidSetting(String),
    /// An environment variable this library reads (`FAKEQUANT_BACKEND`, ...) has a value it
    /// cannot use.
    #[error("environment variable {name}={value:?}: {reason}")]
    InvalidEnvironment {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is allowed.
        reason: String,
    },
    /// No adapter matched the request (or none is present at all).
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// wgpu could not create the device.
    #[error("could not create a GPU device: {0}")]
    RequestDevice(#[source] Arc<wgpu::RequestDeviceError>),
    /// The device lacks a limit this library needs.
    #[error("the device's {limit} is {actual}, below the {required} this library needs")]
    DeviceLimit {
        /// The wgpu limit's name.
        limit: &'static str,
        /// The device's value.
        actual: u64,
        /// What the library needs.
        required: u64,
    },
    /// wgpu reported a validation, out-of-memory or internal error while this library recorded,
    /// created or submitted something.
    #[error("GPU error while {operation}: {source}")]
    Wgpu {
        /// What the library was doing.
        operation: &'static str,
        /// wgpu's error.
        #[source]
        source: Arc<wgpu::Error>,
    },
    /// wgpu reported an error outside this library's calls, in work the caller recorded or
    /// submitted on the context's device (only for contexts that installed the handler: those of
    /// [`crate::GpuContext::new`] and [`crate::GpuContext::from_adapter`]). Returned once, by the
    /// next call into the device or by [`crate::GpuContext::poll`].
    #[error("wgpu reported an error in the caller's own work on this device{}: {source}", if *.more > 0 { format!(" ({} more since)", .more) } else { String::new() })]
    Uncaptured {
        /// The first error reported since the last one returned.
        #[source]
        source: Arc<wgpu::Error>,
        /// How many more were reported after it (dropped).
        more: usize,
    },
    /// An object of one [`crate::GpuContext`] was passed to another: tensors, masks, observers,
    /// LSQ quantizers, prepared ops and prerecordings belong to the device they were created on.
    #[error("`{what}` belongs to another GpuContext (device {owner}); this call runs on device {device}: create it on this context, or use a clone of the context that created it")]
    ForeignObject {
        /// Which argument.
        what: &'static str,
        /// The device the object was created on (a number, unique in the process).
        owner: u64,
        /// The device of the call.
        device: u64,
    },
    /// Waiting for the device, or mapping a buffer to read it back, failed.
    #[error("GPU error while {operation}: {source}")]
    Device {
        /// What the library was doing.
        operation: &'static str,
        /// The failure wgpu reported.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A lock of the library's shared state was poisoned by a panic in another thread.
    #[error("the {0} lock was poisoned by a panic in another thread")]
    Poisoned(&'static str),
}

impl Error {
    /// A device failure with its source.
    pub(crate) fn device(
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Device {
            operation,
            source: Arc::new(source),
        }
    }
}

/// Validation errors compare by value; device errors by the identity of their source.
impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        use Error::*;
        match (self, other) {
            (RequestDevice(a), RequestDevice(b)) => Arc::ptr_eq(a, b),
            (
                Uncaptured {
                    source: a,
                    more: m1,
                },
                Uncaptured {
                    source: b,
                    more: m2,
                },
            ) => m1 == m2 && Arc::ptr_eq(a, b),
            (
                Wgpu {
                    operation: o1,
                    source: a,
                },
                Wgpu {
                    operation: o2,
                    source: b,
                },
            ) => o1 == o2 && Arc::ptr_eq(a, b),
            (
                Device {
                    operation: o1,
                    source: a,
                },
                Device {
                    operation: o2,
                    source: b,
                },
            ) => o1 == o2 && Arc::ptr_eq(a, b),
            (RequestDevice(_) | Wgpu { .. } | Device { .. } | Uncaptured { .. }, _)
            | (_, RequestDevice(_) | Wgpu { .. } | Device { .. } | Uncaptured { .. }) => false,
            // Every other variant holds plain data: its message says everything it holds.
            (a, b) => {
                std::mem::discriminant(a) == std::mem::discriminant(b)
                    && a.to_string() == b.to_string()
            }
        }
    }
}

/// Shorthand for `Result<T, fakequant::Error>`.
pub type Result<T> = std::result::Result<T, Error>;

/// An error unless `actual == expected`.
pub(crate) fn check_len(what: &'static str, expected: usize, actual: usize) -> Result<()> {
    if expected != actual {
        return Err(Error::LengthMismatch {
            what,
            expected,
            actual,
        });
    }
    Ok(())
}
