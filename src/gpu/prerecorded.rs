//! Prerecorded work: every `record_*` call made inside [`GpuContext::prerecord`] is kept, with its
//! pipelines, uniforms and bind groups, and replayed by [`Prerecorded::record`] without creating
//! anything. This is the steady state of a training loop, which runs the same ops on the same
//! buffers step after step (CUDA graphs' capture and replay, for wgpu).
//!
//! Replaying records the same dispatches on the same buffers with the same layout parameters. What
//! changes between steps lives in buffers and is read when the work runs: tensor contents,
//! observer state, learned LSQ parameters. A replay of an observer step therefore observes the new
//! batch and updates the current state, exactly as a fresh `record_step` would.

use std::cell::RefCell;

use super::context::{GpuContext, PreparedPass};
use crate::error::Result;

thread_local! {
    /// The passes kept by the innermost `prerecord` running on this thread, if any.
    static KEPT: RefCell<Option<Vec<PreparedPass>>> = const { RefCell::new(None) };
}

/// Keeps `pass` when a [`GpuContext::prerecord`] is running on this thread (returns `None`);
/// otherwise hands it back for encoding now.
pub(crate) fn keep(pass: PreparedPass) -> Option<PreparedPass> {
    KEPT.with(|kept| match kept.borrow_mut().as_mut() {
        Some(passes) => {
            passes.push(pass);
            None
        }
        None => Some(pass),
    })
}

/// Work recorded once by [`GpuContext::prerecord`], to be recorded again any number of times.
///
/// Holds the bind groups of its calls, and through them their buffers, until dropped.
pub struct Prerecorded {
    ctx: GpuContext,
    passes: Vec<PreparedPass>,
}

impl std::fmt::Debug for Prerecorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prerecorded")
            .field("passes", &self.passes.len())
            .finish()
    }
}

/// Restores the enclosing `prerecord`'s passes (or none) when the closure returns or panics.
struct Restore(Option<Vec<PreparedPass>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let outer = self.0.take();
        KEPT.with(|kept| *kept.borrow_mut() = outer);
    }
}

impl GpuContext {
    /// Runs `record` (any of this library's `record_*` calls, on any buffers) and keeps what it
    /// records instead of encoding it: the returned [`Prerecorded`] records the same work into an
    /// encoder again and again without creating a buffer, a bind group or a pipeline. `record` is
    /// given a scratch encoder; what it encodes there itself is discarded.
    ///
    /// Everything is validated here, once: an invalid call fails this function, not the replay.
    /// Work recorded through other contexts on other devices must not be mixed in.
    pub fn prerecord(
        &self,
        record: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<()>,
    ) -> Result<Prerecorded> {
        let outer = KEPT.with(|kept| kept.borrow_mut().replace(Vec::new()));
        let restore = Restore(outer);
        let mut scratch = self.create_encoder("fakequant prerecord (discarded)");
        let result = record(&mut scratch);
        let passes = KEPT
            .with(|kept| kept.borrow_mut().take())
            .unwrap_or_default();
        drop(restore);
        result?;
        Ok(Prerecorded {
            ctx: self.clone(),
            passes,
        })
    }
}

impl Prerecorded {
    /// Records the kept work into `encoder`, in order, in one compute pass (wgpu orders the
    /// dispatches of a pass like separate passes where they share a buffer).
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        if self.passes.is_empty() {
            return Ok(());
        }
        self.ctx.capture(|| {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("fakequant prerecorded"),
                timestamp_writes: None,
            });
            for p in &self.passes {
                p.encode(&mut pass);
            }
            Ok(())
        })
    }

    /// Records the kept work into a new encoder and submits it, waiting for completion.
    pub fn run(&self) -> Result<()> {
        let mut encoder = self.ctx.create_encoder("fakequant prerecorded");
        self.record(&mut encoder)?;
        self.ctx.submit_and_wait(encoder)
    }

    /// The number of compute passes kept (each a pipeline and its dispatches).
    pub fn passes(&self) -> usize {
        self.passes.len()
    }

    /// The number of dispatches kept.
    pub fn dispatches(&self) -> usize {
        self.passes.iter().map(PreparedPass::dispatch_count).sum()
    }
}
