//! Turning what wgpu reports into this library's [`Error`]: every call that creates, records or
//! submits runs inside error scopes, so a failure is returned to the caller instead of reaching
//! wgpu's default handler (which panics).

use std::sync::Arc;

use crate::error::{Error, Result};

/// Runs `f` inside out-of-memory, validation and internal error scopes; the first error wgpu
/// reported becomes an [`Error::Wgpu`] naming `operation`, with wgpu's error as its source.
pub(crate) fn capture<T>(
    device: &wgpu::Device,
    operation: &'static str,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let out_of_memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
    let result = f();
    // Scopes pop in reverse order of their creation.
    let errors = [
        pollster::block_on(internal.pop()),
        pollster::block_on(validation.pop()),
        pollster::block_on(out_of_memory.pop()),
    ];
    if let Some(e) = errors.into_iter().flatten().next() {
        return Err(Error::Wgpu {
            operation,
            source: Arc::new(e),
        });
    }
    result
}
