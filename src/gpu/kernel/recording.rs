//! Where recorded work goes: a [`Recorder`] is either a caller's `wgpu::CommandEncoder` (the pass
//! is encoded into it at once) or a [`Prerecording`] (the pass is kept, with everything it binds,
//! for replay by [`Prerecorded`]). Every `record_*` call of the library takes one explicitly, so
//! a call can neither slip into a recording it was not meant for nor be dropped silently.

use super::{Bindings, Kernel, UniformLayout};
use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;

mod sealed {
    /// A compute pass ready to encode: everything it binds is created, so encoding it (again)
    /// creates nothing. Public only inside this private module, so that [`super::Recorder`]
    /// stays sealed.
    pub struct PreparedPass {
        pub(crate) pipeline: wgpu::ComputePipeline,
        /// Held for the bind groups, which refer to it.
        pub(crate) _uniforms: wgpu::Buffer,
        pub(crate) dispatches: Vec<(wgpu::BindGroup, [u32; 2])>,
    }

    pub trait Sealed {
        /// Takes one prepared pass.
        fn take_pass(
            &mut self,
            ctx: &crate::gpu::GpuContext,
            pass: PreparedPass,
        ) -> crate::Result<()>;
    }
}
pub(crate) use sealed::PreparedPass;

impl PreparedPass {
    /// Sets the pipeline and issues the dispatches into `pass`.
    fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        for (group, grid) in &self.dispatches {
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(grid[0], grid[1], 1);
        }
    }

    /// Sets the pipeline and issues dispatch `index` alone into `pass`.
    fn encode_dispatch(&self, pass: &mut wgpu::ComputePass<'_>, index: usize) {
        if let Some((group, grid)) = self.dispatches.get(index) {
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(grid[0], grid[1], 1);
        }
    }
}

/// Where a `record_*` call puts its work: a `wgpu::CommandEncoder` (encoded at once; the caller
/// submits it) or a [`Prerecording`] (kept for replay). Sealed: implemented by those two only.
pub trait Recorder: sealed::Sealed {}

impl sealed::Sealed for wgpu::CommandEncoder {
    fn take_pass(&mut self, ctx: &GpuContext, pass: PreparedPass) -> Result<()> {
        ctx.capture("recording a compute pass", || {
            let mut compute = self.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("fakequant"),
                timestamp_writes: None,
            });
            pass.encode(&mut compute);
            Ok(())
        })
    }
}
impl Recorder for wgpu::CommandEncoder {}

/// A recording in progress, handed to the closure of [`GpuContext::prerecord`]: every `record_*`
/// call given it is kept instead of encoded.
pub struct Prerecording {
    ctx: GpuContext,
    passes: Vec<PreparedPass>,
}

impl std::fmt::Debug for Prerecording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prerecording")
            .field("passes", &self.passes.len())
            .finish()
    }
}

impl sealed::Sealed for Prerecording {
    fn take_pass(&mut self, ctx: &GpuContext, pass: PreparedPass) -> Result<()> {
        ctx.check_owner("recorder (a prerecording)", self.ctx.device_id())?;
        self.passes.push(pass);
        Ok(())
    }
}
impl Recorder for Prerecording {}

/// Work recorded once by [`GpuContext::prerecord`], to be recorded again any number of times
/// (CUDA graphs' capture and replay, for wgpu).
///
/// Replaying records the same dispatches on the same buffers with the same layout parameters.
/// What changes between steps lives in buffers and is read when the work runs: tensor contents,
/// observer state, learned LSQ parameters. A replay of an observer step therefore observes the
/// new batch and updates the current state, exactly as a fresh `record_step` would. Holds the bind
/// groups of its calls, and through them their buffers, until dropped.
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

impl GpuContext {
    /// Runs `record`, whose `record_*` calls take the given [`Prerecording`] as their recorder,
    /// and keeps what they record: the returned [`Prerecorded`] records the same work into an
    /// encoder again and again without creating a buffer, a bind group or a pipeline.
    ///
    /// Everything is validated here, once: an invalid call fails this function, not the replay.
    pub fn prerecord(
        &self,
        record: impl FnOnce(&mut Prerecording) -> Result<()>,
    ) -> Result<Prerecorded> {
        let mut recording = Prerecording {
            ctx: self.clone(),
            passes: Vec::new(),
        };
        record(&mut recording)?;
        Ok(Prerecorded {
            ctx: self.clone(),
            passes: recording.passes,
        })
    }

    /// Records one compute pass of `kernel`: per dispatch a uniform value (bound at 0), the
    /// entry point's typed bindings and the workgroup grid. The uniforms share one buffer at
    /// aligned offsets.
    pub(crate) fn record_pass<'a, K: Kernel, U: UniformLayout, B: Bindings<'a>>(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        kernel: K,
        dispatches: &[Dispatch<U, B>],
    ) -> Result<()> {
        let pass = self.prepare_pass(kernel, dispatches)?;
        recorder.take_pass(self, pass)
    }

    /// Refuses a planned pass that binds more than [`DispatchLimits::max_binding_bytes`] in one
    /// storage binding or launches more than `max_workgroups`: the limits in force, lowered ones
    /// included, hold for every binding a plan makes (a device with those limits would refuse the
    /// pass), so tests with lowered limits prove that tables larger than a binding are windowed.
    ///
    /// [`DispatchLimits::max_binding_bytes`]: crate::DispatchLimits::max_binding_bytes
    fn check_within_limits<'a, U, B: Bindings<'a>>(
        &self,
        dispatches: &[Dispatch<U, B>],
    ) -> Result<()> {
        let limits = self.dispatch_limits();
        for d in dispatches {
            for b in d.bindings.buffers() {
                let bytes = match b.size {
                    Some(size) => size.get(),
                    None => b.buffer.size().saturating_sub(b.offset),
                };
                if bytes > limits.max_binding_bytes {
                    return Err(Error::TooLarge {
                        // The plans window every tensor: what overflows is a table that one
                        // binding must hold.
                        what: "a table one storage binding must hold (per-channel or per-group \
                               parameters or statistics)",
                        requested: bytes,
                        limit: limits.max_binding_bytes,
                    });
                }
            }
            if d.grid[0] > limits.max_workgroups {
                return Err(Error::TooLarge {
                    what: "workgroups of one dispatch",
                    requested: d.grid[0] as u64,
                    limit: limits.max_workgroups as u64,
                });
            }
        }
        Ok(())
    }

    #[allow(
        clippy::arithmetic_side_effects,
        reason = "one aligned uniform slot (a few hundred bytes) per planned dispatch, and dispatches are bounded by the tensor's size"
    )]
    fn prepare_pass<'a, K: Kernel, U: UniformLayout, B: Bindings<'a>>(
        &self,
        kernel: K,
        dispatches: &[Dispatch<U, B>],
    ) -> Result<PreparedPass> {
        self.check_within_limits(dispatches)?;
        let (pipeline, layout) = self.kernels().pipeline(self.device(), &kernel, B::SLOTS)?;
        let size = std::mem::size_of::<U>();
        let alignment = self.device_limits().min_uniform_buffer_offset_alignment as usize;
        let stride = size.next_multiple_of(alignment);
        let mut uniform_bytes = vec![0u8; stride * dispatches.len()];
        for (i, d) in dispatches.iter().enumerate() {
            uniform_bytes[i * stride..i * stride + size]
                .copy_from_slice(bytemuck::bytes_of(&d.uniform));
        }
        self.capture("creating the bind groups of a pass", || {
            let uniforms = self.uniform_buffer("fakequant dispatch", &uniform_bytes);
            let dispatches = dispatches
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let uniform = wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &uniforms,
                            offset: (i * stride) as u64,
                            size: wgpu::BufferSize::new(size as u64),
                        }),
                    };
                    let entries: Vec<wgpu::BindGroupEntry<'_>> = std::iter::once(uniform)
                        .chain(B::SLOTS.iter().zip(d.bindings.buffers()).map(|(slot, b)| {
                            wgpu::BindGroupEntry {
                                binding: slot.binding,
                                resource: wgpu::BindingResource::Buffer(b),
                            }
                        }))
                        .collect();
                    let group = self.device().create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some(kernel.entry_point()),
                        layout: &layout.bind_group,
                        entries: &entries,
                    });
                    (group, d.grid)
                })
                .collect();
            Ok(PreparedPass {
                pipeline,
                _uniforms: uniforms,
                dispatches,
            })
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
        self.ctx.capture("recording a prerecorded pass", || {
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

    /// Submits the kept work and waits for its completion: recorded into one new encoder, or, on
    /// the GL backend, one submission per dispatch (wgpu's GL backend holds its one context lock
    /// for a whole submission, and another thread touching the device waits at most 6 s for it).
    pub fn run(&self) -> Result<()> {
        self.run_labelled("fakequant prerecorded")
    }

    /// [`Prerecorded::run`], its encoders labelled `label`.
    pub(crate) fn run_labelled(&self, label: &str) -> Result<()> {
        if !self.ctx.submits_each_dispatch() {
            let mut encoder = self.ctx.create_encoder(label);
            self.record(&mut encoder)?;
            return self.ctx.submit_and_wait(encoder);
        }
        for pass in &self.passes {
            for index in 0..pass.dispatches.len() {
                let mut encoder = self.ctx.create_encoder(label);
                self.ctx.capture("recording a dispatch", || {
                    let mut compute = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(label),
                        timestamp_writes: None,
                    });
                    pass.encode_dispatch(&mut compute, index);
                    Ok(())
                })?;
                self.ctx.submit(encoder)?;
            }
        }
        self.ctx.wait_for_submitted()
    }

    /// The number of compute passes kept (each a pipeline and its dispatches).
    pub fn passes(&self) -> usize {
        self.passes.len()
    }

    /// The number of dispatches kept.
    pub fn dispatches(&self) -> usize {
        self.passes.iter().map(|p| p.dispatches.len()).sum()
    }
}

/// One dispatch of a pass: its uniform value, its entry point's bindings and its grid.
pub(crate) struct Dispatch<U, B> {
    pub(crate) uniform: U,
    pub(crate) bindings: B,
    pub(crate) grid: [u32; 2],
}
