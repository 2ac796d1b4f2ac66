//! Dispatch of the LSQ kernel family (`shaders/lsq.wgsl`): the learnable scale and zero point
//! live in device buffers (a framework's optimizer updates them in place); the forward reuses the
//! fake-quant kernel; the backward writes `dx` and reduces `dscale` / `dzero_point` in one pass over
//! `x` and `dy`, then a few tiny passes over the partial sums, in the reference's fixed order.

use std::sync::Mutex;

use super::context::{DeviceId, GpuContext};
use super::fake_quant::ChannelParams;
use super::kernel::planning::{contiguous_runs, element_window, ChannelChunk};
use super::kernel::recording::Dispatch;
use super::kernel::shaders::{Shader, LSQ_KERNELS};
use super::kernel::{
    bindings, dtype_constant, uniform, EntryPointDecl, FamilyDecl, Kernel, Recorder, StructDecl,
};
use super::memory::{
    check_disjoint, check_forward_lengths, check_len, Footprint, GpuMask, GpuTensor, TensorBinding,
};
use super::observer::GpuObserver;
use super::permute::{Direction, GroupsLastScratch};
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::lsq::{LsqConfig, LsqGrads};
use crate::quant::{numel, ChannelLayout, Granularity, ParamLayout, Rounding};
use crate::reference::lsq::{lsq_layout, BLOCK};
use crate::reference::FakeQuantOutput;

/// Tensors up to 2^31 - 1 elements keep every index in a u32 on the device.
const MAX_ELEMS: u64 = (1 << 31) - 1;

/// The entry points of `shaders/lsq.wgsl`, for tensors of an element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct LsqKernel {
    entry: LsqEntry,
    dtype: DType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LsqEntry {
    Params,
    Backward,
    InitTerms,
    /// One level of the tree; `counts` when the second word is an integer count.
    Sum {
        counts: bool,
    },
    Finish,
    InitFinish,
    FromObserver,
}

impl LsqEntry {
    /// The kernel on f32 data (every entry point but the first pass reads only parameters and
    /// partial sums).
    fn f32(self) -> LsqKernel {
        LsqKernel {
            entry: self,
            dtype: DType::F32,
        }
    }
}

impl Kernel for LsqKernel {
    fn shader(&self) -> &'static Shader {
        &LSQ_KERNELS
    }

    fn entry_point(&self) -> &'static str {
        match self.entry {
            LsqEntry::Params => "lsq_params",
            LsqEntry::Backward => "lsq_backward",
            LsqEntry::InitTerms => "lsq_init_terms",
            LsqEntry::Sum { .. } => "lsq_sum",
            LsqEntry::Finish => "lsq_finish",
            LsqEntry::InitFinish => "lsq_init_finish",
            LsqEntry::FromObserver => "lsq_from_observer",
        }
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        let mut constants = vec![("DTYPE", dtype_constant(self.dtype))];
        if let LsqEntry::Sum { counts } = self.entry {
            constants.push(("COUNTS", counts as u8 as f64));
        }
        constants
    }
}

bindings! {
    /// `lsq_params`: the learnable parameters in, the fake-quant parameters out.
    ParamsBindings {
        params: ReadWrite @ 4,
        scale: Input @ 6,
        zero_point: Input @ 7,
    }
}

bindings! {
    /// `lsq_backward`: x, dy and dx windows, the parameters, the first level of partial sums.
    BackwardBindings {
        x: Input @ 1,
        dy: Input @ 2,
        dx: ReadWrite @ 3,
        params: Input @ 4,
        partials: ReadWrite @ 5,
    }
}

bindings! {
    /// `lsq_init_terms`: x's window and the first level of (sum |x|, count) partials.
    InitTermsBindings {
        x: Input @ 1,
        partials: ReadWrite @ 5,
    }
}

bindings! {
    /// `lsq_sum`: one level of partial sums to the next.
    SumBindings {
        partials: ReadWrite @ 5,
        level: Read @ 9,
    }
}

bindings! {
    /// `lsq_finish`: the last level (the empty first level for an empty tensor, not read) to the
    /// reduced gradients.
    FinishBindings {
        grads: ReadWrite @ 8,
        level: Read @ 9,
        grads_hi: ReadWrite @ 11,
    }
}

bindings! {
    /// `lsq_init_finish`: the last level of (sum |x|, count) to the scales.
    InitFinishBindings {
        scale: ReadWrite @ 6,
        level: Read @ 9,
    }
}

bindings! {
    /// `lsq_from_observer`: an observer's state to the learnable parameters.
    FromObserverBindings {
        scale: ReadWrite @ 6,
        zero_point: ReadWrite @ 7,
        observer_state: Read @ 10,
    }
}

uniform! {
    /// The uniform of every LSQ dispatch (fields unused by an entry point stay zero).
    struct LsqDispatch as "LsqDispatch" {
        total: u32,
        x_shift: u32,
        window_base: u32,
        channels: u32,
        inner: u32,
        per_channel: u32,
        blocks: u32,
        contiguous: u32,
        first_unit: u32,
        src_blocks: u32,
        qmin: i32,
        qmax: i32,
        eps: u32,
        grad_factor: u32,
        sqrt_qmax: u32,
        dy_shift: u32,
        dx_shift: u32,
        hi_shift: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

/// The reduced gradients of an LSQ backward on the device: `channels` f32 `dscale` values, then
/// `channels` f32 `dzero_point` values.
#[derive(Debug, Clone)]
pub struct GpuLsqGrads {
    buffer: wgpu::Buffer,
    channels: usize,
    owner: DeviceId,
}

impl GpuLsqGrads {
    /// The buffer (`STORAGE | COPY_SRC | COPY_DST`), `8 * channels` bytes.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.channels
    }
}

/// An LSQ quantizer whose learnable parameters live on the device. Create with
/// [`GpuContext::create_lsq`].
#[derive(Debug)]
pub struct GpuLsq {
    ctx: GpuContext,
    config: LsqConfig,
    channels: usize,
    /// f32 per channel: the learnable scale and zero point.
    scale: wgpu::Buffer,
    zero_point: wgpu::Buffer,
    /// `ChannelParams` per channel, derived from them before each forward and backward.
    params: wgpu::Buffer,
    /// Two partial-sum buffers, ping-ponged between the levels of the tree, grown on demand.
    partials: Mutex<[Option<wgpu::Buffer>; 2]>,
}

impl GpuContext {
    /// An LSQ quantizer with initial learnable parameters (one scale and zero point per channel,
    /// one for per-tensor). Any values are accepted: the effective ones are clamped (see
    /// [`crate::lsq`]).
    pub fn create_lsq(
        &self,
        config: &LsqConfig,
        scales: &[f32],
        zero_points: &[f32],
    ) -> Result<GpuLsq> {
        let channels = scales.len();
        if channels == 0
            || zero_points.len() != channels
            || (config.granularity() == Granularity::PerTensor && channels != 1)
        {
            return Err(Error::ParamLengthMismatch {
                scales: channels,
                zero_points: zero_points.len(),
            });
        }
        // The tables are bound a window per chunk of channels; each must fit one buffer.
        let param_bytes = (channels as u64).saturating_mul(ChannelParams::BYTES);
        let max_buffer = self.device_limits().max_buffer_size;
        if param_bytes > max_buffer {
            return Err(Error::TooLarge {
                what: "LSQ channels (32 bytes of fake-quant parameters per channel, in one buffer)",
                requested: param_bytes,
                limit: max_buffer,
            });
        }
        let params = vec![ChannelParams::new(1.0, 0, config.range()); channels];
        Ok(GpuLsq {
            ctx: self.clone(),
            config: config.clone(),
            channels,
            scale: self.storage_buffer_init("fakequant lsq scale", bytemuck::cast_slice(scales))?,
            zero_point: self.storage_buffer_init(
                "fakequant lsq zero point",
                bytemuck::cast_slice(zero_points),
            )?,
            params: self
                .storage_buffer_init("fakequant lsq params", bytemuck::cast_slice(&params))?,
            partials: Mutex::new([None, None]),
        })
    }

    /// An LSQ quantizer whose learnable parameters are `observer`'s calibrated qparams (copied on
    /// the device).
    pub fn create_lsq_from_observer(
        &self,
        config: &LsqConfig,
        observer: &GpuObserver,
    ) -> Result<GpuLsq> {
        self.check_owner("observer", observer.context().device_id())?;
        let ones = vec![1.0; observer.channels()];
        let zeros = vec![0.0; observer.channels()];
        let lsq = self.create_lsq(config, &ones, &zeros)?;
        lsq.init_from_observer(observer)?;
        Ok(lsq)
    }

    /// Reads reduced gradients back: `(dscale, dzero_point)`.
    pub fn read_lsq_grads(&self, grads: &GpuLsqGrads) -> Result<(Vec<f32>, Vec<f32>)> {
        self.check_owner("grads", grads.owner)?;
        let bytes =
            self.read_buffer(&grads.buffer, 0, (grads.channels as u64).saturating_mul(8))?;
        let words: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        let (dscale, dzero_point) = words.split_at(grads.channels);
        Ok((dscale.to_vec(), dzero_point.to_vec()))
    }
}

/// How the tensor's blocks are dispatched: the first pass over `x` (and `dy`).
struct BlockPlan {
    uniform: LsqDispatch,
    /// Per dispatch: first unit, window start and end (flat elements), grid.
    dispatches: Vec<(u64, u64, u64, [u32; 2])>,
    /// Blocks per channel.
    blocks: u64,
}

impl GpuLsq {
    /// The context it was created on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The configuration.
    pub fn config(&self) -> &LsqConfig {
        &self.config
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The learnable scales, f32 per channel (`STORAGE | COPY_SRC | COPY_DST`): an optimizer on
    /// the device updates them in place.
    pub fn scale_buffer(&self) -> &wgpu::Buffer {
        &self.scale
    }

    /// The learnable zero points, f32 per channel.
    pub fn zero_point_buffer(&self) -> &wgpu::Buffer {
        &self.zero_point
    }

    /// New gradient outputs sized for this quantizer.
    pub fn create_grads(&self) -> Result<GpuLsqGrads> {
        Ok(GpuLsqGrads {
            buffer: self.ctx.storage_buffer_init(
                "fakequant lsq grads",
                &vec![0u8; self.channels.saturating_mul(8)],
            )?,
            channels: self.channels,
            owner: self.ctx.device_id(),
        })
    }

    /// Reads the learnable parameters back: `(scales, zero_points)`.
    pub fn read_params(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let bytes = (self.channels as u64).saturating_mul(4);
        let scales = self.ctx.read_buffer(&self.scale, 0, bytes)?;
        let zero_points = self.ctx.read_buffer(&self.zero_point, 0, bytes)?;
        Ok((
            bytemuck::pod_collect_to_vec(&scales),
            bytemuck::pod_collect_to_vec(&zero_points),
        ))
    }

    /// Writes the learnable parameters (takes effect before the next submission).
    pub fn load_params(&self, scales: &[f32], zero_points: &[f32]) -> Result<()> {
        check_len("scales", self.channels, scales.len())?;
        check_len("zero points", self.channels, zero_points.len())?;
        self.ctx.capture("loading LSQ parameters", || {
            let queue = self.ctx.queue();
            queue.write_buffer(&self.scale, 0, bytemuck::cast_slice(scales));
            queue.write_buffer(&self.zero_point, 0, bytemuck::cast_slice(zero_points));
            Ok(())
        })
    }

    /// `shape` checked against the quantizer's channels and the kernels' element limit.
    fn check_shape(&self, shape: &[usize]) -> Result<ParamLayout> {
        let n = numel(shape)?;
        let layout = lsq_layout(&self.config, shape, n)?;
        if layout.channels() != self.channels {
            return Err(Error::ChannelCountMismatch {
                axis: self.config.granularity().axis().unwrap_or(0),
                channels: layout.channels(),
                params: self.channels,
            });
        }
        if n as u64 > MAX_ELEMS {
            return Err(Error::TooLarge {
                what: "LSQ tensor (elements)",
                requested: n as u64,
                limit: MAX_ELEMS,
            });
        }
        Ok(layout)
    }

    /// The kernels' layout of `shape`. Strided groups have none: they reach the kernels as
    /// their groups-last view ([`GroupsLastScratch`]).
    fn layout(&self, shape: &[usize]) -> Result<ChannelLayout> {
        let n = numel(shape)?;
        let layout = self.check_shape(shape)?.channel_layout()?;
        // Per-tensor: one channel of contiguous elements.
        Ok(match self.config.granularity() {
            Granularity::PerTensor => ChannelLayout {
                outer: 1,
                channels: 1,
                inner: n,
            },
            _ => layout,
        })
    }

    #[allow(
        clippy::arithmetic_side_effects,
        reason = "sizes, offsets and counts here are bounded by checks made before: tensors and windows lie within buffers the binding checks accepted (at most the device's max_buffer_size), channel counts within one binding, so no product or sum approaches u64::MAX"
    )]
    fn base_uniform(&self, layout: ChannelLayout) -> LsqDispatch {
        let range = self.config.range();
        LsqDispatch {
            total: layout.numel() as u32,
            channels: layout.channels as u32,
            inner: layout.inner as u32,
            per_channel: (layout.outer * layout.inner) as u32,
            qmin: range.qmin(),
            qmax: range.qmax(),
            eps: self.config.eps().to_bits(),
            sqrt_qmax: (range.qmax() as f32).sqrt().to_bits(),
            ..Default::default()
        }
    }

    /// Records `lsq_params`: the fake-quant parameters of the current learnable ones.
    fn record_params(&self, recorder: &mut (impl Recorder + ?Sized)) -> Result<()> {
        let uniform = LsqDispatch {
            qmin: self.config.range().qmin(),
            qmax: self.config.range().qmax(),
            eps: self.config.eps().to_bits(),
            ..Default::default()
        };
        // A window of every table per chunk of channels (the parameters, 32 bytes a channel, are
        // the largest), so the tables need not fit one binding.
        let dispatches: Vec<_> = self
            .ctx
            .channel_chunks(self.channels, ChannelParams::BYTES)
            .into_iter()
            .map(|chunk| Dispatch {
                uniform: LsqDispatch {
                    channels: chunk.count as u32,
                    ..uniform
                },
                bindings: ParamsBindings {
                    params: chunk.table(ChannelParams::BYTES).bind(&self.params),
                    scale: chunk.table(4).bind(&self.scale),
                    zero_point: chunk.table(4).bind(&self.zero_point),
                },
                grid: [chunk.groups, 1],
            })
            .collect();
        self.ctx
            .record_pass(recorder, LsqEntry::Params.f32(), &dispatches)
    }

    /// The channel ranges reduced one after the other, with their layouts: the whole tensor when
    /// its partial sums and parameters fit one binding; otherwise, for channels that are runs of
    /// the tensor (`outer == 1`: per group, per token, per channel on a leading axis), chunks of
    /// channels (sub-tensors) whose partial sums and parameters fit.
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "blocks per channel are at most 2^31 / 4096; the binding at least 256 KiB"
    )]
    fn reduce_chunks(&self, layout: ChannelLayout) -> Result<Vec<(ChannelChunk, ChannelLayout)>> {
        let limits = self.ctx.dispatch_limits();
        let blocks = (layout.outer * layout.inner).div_ceil(BLOCK) as u64;
        let per_channel = (blocks * 8).max(ChannelParams::BYTES);
        if layout.channels as u64 * per_channel <= limits.max_binding_bytes {
            return Ok(vec![(self.ctx.channel_chunk(0, layout.channels), layout)]);
        }
        if layout.outer != 1 || per_channel * 64 > limits.max_binding_bytes {
            return Err(Error::TooLarge {
                what: "LSQ partial sums (8 bytes per block of 4096 elements) and parameters of \
                       channels that are not runs of the tensor (per channel on a non-leading \
                       axis)",
                requested: (layout.channels as u64).saturating_mul(per_channel),
                limit: limits.max_binding_bytes,
            });
        }
        Ok(self
            .ctx
            .channel_chunks(layout.channels, per_channel)
            .into_iter()
            .map(|chunk| {
                let sub = ChannelLayout {
                    outer: 1,
                    channels: chunk.count,
                    inner: layout.inner,
                };
                (chunk, sub)
            })
            .collect())
    }

    /// Recording level: the LSQ forward (fake-quant with the effective parameters of the current
    /// learnable ones) of `x` into `y`, with the mask when given.
    pub fn record_forward(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        x: TensorBinding<'_>,
        shape: &[usize],
        y: TensorBinding<'_>,
        mask: Option<TensorBinding<'_>>,
    ) -> Result<()> {
        if let Some(view) = GroupsLastScratch::of(self.config.granularity(), shape)? {
            // Strided groups: on their groups-last view, y and the mask moved back.
            self.check_shape(shape)?;
            self.ctx
                .check_forward(&x, &y, mask.as_ref(), view.groups.numel())?;
            return view.record_forward(&self.ctx, recorder, (x, y, mask), |r, x, shape, y, m| {
                self.record_forward(r, x, shape, y, m)
            });
        }
        let layout = self.layout(shape)?;
        // Checked before the parameters are recorded, so that a failed call records nothing.
        self.ctx
            .check_forward(&x, &y, mask.as_ref(), layout.numel())?;
        self.record_params(recorder)?;
        // The reference LSQ forward multiplies by the reciprocal (`reference::lsq`).
        self.ctx.record_forward_with(
            recorder,
            &self.params,
            Rounding::Reciprocal,
            layout,
            (x, y, mask),
        )
    }

    /// The dispatches of the first pass over the tensor: blocks of 4096 elements of one channel.
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "sizes, offsets and counts here are bounded by checks made before: tensors and windows lie within buffers the binding checks accepted (at most the device's max_buffer_size), channel counts within one binding, so no product or sum approaches u64::MAX"
    )]
    fn block_plan(&self, layout: ChannelLayout, align: u64, dtype: DType) -> Result<BlockPlan> {
        let limits = self.ctx.dispatch_limits();
        let max_elems = (limits.max_binding_bytes - align) / dtype.size();
        let max_wg = limits.max_workgroups as u64;
        let (channels, inner) = (layout.channels as u64, layout.inner as u64);
        let per_channel = layout.outer as u64 * inner;
        let blocks = per_channel.div_ceil(BLOCK as u64);
        let mut uniform = self.base_uniform(layout);
        uniform.blocks = blocks as u32;
        let mut dispatches = Vec::new();
        if layout.outer == 1 {
            // Unit u = (channel u / blocks, block u % blocks): consecutive units are consecutive
            // memory, so a run of them is one window.
            uniform.contiguous = 1;
            let units = channels * blocks;
            let start_of = |u: u64| {
                if u >= units {
                    layout.numel() as u64
                } else {
                    (u / blocks) * inner + (u % blocks) * BLOCK as u64
                }
            };
            dispatches = contiguous_runs(units, start_of, max_elems, max_wg)
                .into_iter()
                .map(|run| (run.first_unit, run.start, run.end, [run.units as u32, 1]))
                .collect();
        } else {
            // Block b of every channel: channels along y; the window spans from channel 0's first
            // element of the first block to channel C-1's last element of the last block.
            let flat = |c: u64, j: u64| ((j / inner) * channels + c) * inner + j % inner;
            let window = |b0: u64, b1: u64| {
                let last = (b1 * BLOCK as u64).min(per_channel) - 1;
                (flat(0, b0 * BLOCK as u64), flat(channels - 1, last) + 1)
            };
            let grid_y = channels.min(max_wg) as u32;
            let mut first = 0;
            while first < blocks {
                let mut count = 0;
                while first + count < blocks && count < max_wg {
                    let (s, e) = window(first, first + count + 1);
                    if e - s > max_elems {
                        break;
                    }
                    count += 1;
                }
                if count == 0 {
                    return Err(Error::TooLarge {
                        what: "span of one block of 4096 elements per channel across all channels (elements)",
                        requested: {
                            let (s, e) = window(first, first + 1);
                            e - s
                        },
                        limit: max_elems,
                    });
                }
                let (s, e) = window(first, first + count);
                dispatches.push((first, s, e, [count as u32, grid_y]));
                first += count;
            }
        }
        Ok(BlockPlan {
            uniform,
            dispatches,
            blocks,
        })
    }

    /// Two partial-sum buffers of at least `bytes` each.
    fn partial_buffers(&self, bytes: u64) -> Result<[wgpu::Buffer; 2]> {
        let limit = self.ctx.dispatch_limits().max_binding_bytes;
        if bytes > limit {
            return Err(Error::TooLarge {
                what: "LSQ partial sums (8 bytes per block of 4096 elements)",
                requested: bytes,
                limit,
            });
        }
        let mut cached = self
            .partials
            .lock()
            .map_err(|_| Error::Poisoned("LSQ partials"))?;
        let mut out = Vec::with_capacity(2);
        for slot in cached.iter_mut() {
            if let Some(b) = slot.as_ref().filter(|b| b.size() >= bytes.max(8)) {
                out.push(b.clone());
                continue;
            }
            let b = self.ctx.capture("creating the LSQ partials", || {
                Ok(self.ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("fakequant lsq partials"),
                    size: bytes.max(8).next_multiple_of(256),
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                }))
            })?;
            *slot = Some(b.clone());
            out.push(b);
        }
        Ok([out[0].clone(), out[1].clone()])
    }

    /// Records the first pass (the backward when `grads` holds dy and dx, the initialization's
    /// terms otherwise) and the tree levels; returns the buffer holding the final level (one pair
    /// per channel) and whether it holds one (an empty tensor has none: the buffer is the empty
    /// first level then).
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "sizes, offsets and counts here are bounded by checks made before: tensors and windows lie within buffers the binding checks accepted (at most the device's max_buffer_size), channel counts within one binding, so no product or sum approaches u64::MAX"
    )]
    fn record_reduction<'a>(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        (chunk, layout): (ChannelChunk, ChannelLayout),
        x: TensorBinding<'a>,
        grads: Option<(TensorBinding<'a>, TensorBinding<'a>)>,
    ) -> Result<(wgpu::Buffer, bool)> {
        let init = grads.is_none();
        let align = self.ctx.device_limits().min_storage_buffer_offset_alignment as u64;
        let plan = self.block_plan(layout, align, x.dtype)?;
        let [mut src, mut dst] = self.partial_buffers(chunk.count as u64 * plan.blocks * 8)?;
        if plan.blocks == 0 {
            return Ok((src, false));
        }
        let params = chunk.table(ChannelParams::BYTES);
        let window_of = |first: u64, start: u64, end: u64| {
            let xw = element_window(x.offset, x.dtype, start, end, align);
            let mut uniform = plan.uniform;
            uniform.first_unit = first as u32;
            uniform.window_base = start as u32;
            uniform.x_shift = xw.shift as u32;
            (uniform, xw.bind(x.buffer))
        };
        match &grads {
            Some((dy, dx)) => {
                let dispatches: Vec<_> = plan
                    .dispatches
                    .iter()
                    .map(|&(first, start, end, grid)| {
                        let (mut uniform, xb) = window_of(first, start, end);
                        let dyw = element_window(dy.offset, dy.dtype, start, end, align);
                        let dxw = element_window(dx.offset, dx.dtype, start, end, align);
                        uniform.dy_shift = dyw.shift as u32;
                        uniform.dx_shift = dxw.shift as u32;
                        Dispatch {
                            uniform,
                            bindings: BackwardBindings {
                                x: xb,
                                dy: dyw.bind(dy.buffer),
                                dx: dxw.bind(dx.buffer),
                                params: params.bind(&self.params),
                                partials: src.as_entire_buffer_binding(),
                            },
                            grid,
                        }
                    })
                    .collect();
                let kernel = LsqKernel {
                    entry: LsqEntry::Backward,
                    dtype: x.dtype,
                };
                self.ctx.record_pass(recorder, kernel, &dispatches)?;
            }
            None => {
                let dispatches: Vec<_> = plan
                    .dispatches
                    .iter()
                    .map(|&(first, start, end, grid)| {
                        let (uniform, xb) = window_of(first, start, end);
                        Dispatch {
                            uniform,
                            bindings: InitTermsBindings {
                                x: xb,
                                partials: src.as_entire_buffer_binding(),
                            },
                            grid,
                        }
                    })
                    .collect();
                let kernel = LsqKernel {
                    entry: LsqEntry::InitTerms,
                    dtype: x.dtype,
                };
                self.ctx.record_pass(recorder, kernel, &dispatches)?;
            }
        }
        // The tree over the blocks' sums, 4096 to 1 per level.
        let mut level = plan.blocks;
        while level > 1 {
            let next = level.div_ceil(BLOCK as u64);
            let uniform = LsqDispatch {
                channels: chunk.count as u32,
                blocks: next as u32,
                src_blocks: level as u32,
                ..Default::default()
            };
            let units =
                (chunk.count as u64 * next).min(self.ctx.dispatch_limits().max_workgroups as u64);
            std::mem::swap(&mut src, &mut dst);
            self.ctx.record_pass(
                recorder,
                LsqEntry::Sum { counts: init }.f32(),
                &[Dispatch {
                    uniform,
                    bindings: SumBindings {
                        partials: src.as_entire_buffer_binding(),
                        level: dst.as_entire_buffer_binding(),
                    },
                    grid: [units as u32, 1],
                }],
            )?;
            level = next;
        }
        Ok((src, true))
    }

    /// Recording level: the LSQ backward in one pass over `x` and `dy` (of `shape`): `dx`, and the
    /// reduced `dscale` / `dzero_point` into `grads`, in the reference's order, times the
    /// configured gradient factor.
    pub fn record_backward(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        x: TensorBinding<'_>,
        dy: TensorBinding<'_>,
        shape: &[usize],
        dx: TensorBinding<'_>,
        grads: &GpuLsqGrads,
    ) -> Result<()> {
        let n = self.check_shape(shape)?.numel();
        self.ctx.check_owner("grads", grads.owner)?;
        check_len("channels of the gradients", self.channels, grads.channels)?;
        x.dtype.check_same("dy", dy.dtype)?;
        x.dtype.check_same("dx", dx.dtype)?;
        self.ctx.check_tensor("x", &x, n)?;
        self.ctx.check_tensor("dy", &dy, n)?;
        self.ctx.check_tensor("dx", &dx, n)?;
        check_disjoint(&[
            Footprint::tensor("x", &x, n, false),
            Footprint::tensor("dy", &dy, n, false),
            Footprint::tensor("dx", &dx, n, true),
        ])?;
        if let Some(view) = GroupsLastScratch::of(self.config.granularity(), shape)? {
            // Strided groups on their groups-last view: each group's terms in the same order
            // (the same sums); dx moved back.
            let ctx = &self.ctx;
            let xs = view.record_input(ctx, recorder, x)?;
            let dys = view.record_input(ctx, recorder, dy)?;
            let dxs = view.tensor(ctx, x.dtype)?;
            self.record_backward(
                recorder,
                xs.binding(),
                dys.binding(),
                &view.shape,
                dxs.binding(),
                grads,
            )?;
            return view.record_tensor(ctx, recorder, Direction::FromGroupsLast, dxs.binding(), dx);
        }
        let layout = self.layout(shape)?;
        let chunks = self.reduce_chunks(layout)?;
        self.record_params(recorder)?;
        let grad_factor = self.config.grad_factor(layout.numel()).to_bits();
        for (chunk, sub) in chunks {
            // Channels that are runs: the chunk's sub-tensor (the whole tensor for one chunk).
            let skip = (chunk.first as u64).saturating_mul(sub.inner as u64);
            let (x, dy, dx) = (x.advanced(skip), dy.advanced(skip), dx.advanced(skip));
            let (last, has_level) =
                self.record_reduction(recorder, (chunk, sub), x, Some((dy, dx)))?;
            let (lo, hi) = chunk.two_part(self.channels);
            let mut uniform = self.base_uniform(sub);
            uniform.grad_factor = grad_factor;
            uniform.src_blocks = has_level as u32;
            uniform.hi_shift = hi.shift as u32;
            self.ctx.record_pass(
                recorder,
                LsqEntry::Finish.f32(),
                &[Dispatch {
                    uniform,
                    bindings: FinishBindings {
                        grads: lo.bind(&grads.buffer),
                        level: level_binding(&last, chunk.count, has_level),
                        grads_hi: hi.bind(&grads.buffer),
                    },
                    grid: [chunk.groups, 1],
                }],
            )?;
        }
        Ok(())
    }

    /// Recording level: LSQ's initialization from data, `s = 2 * mean(|x|) / sqrt(qmax)` per
    /// channel (see [`crate::lsq`]), written to the learnable scales; zero points are left alone.
    pub fn record_init_from_data(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        x: TensorBinding<'_>,
        shape: &[usize],
    ) -> Result<()> {
        if let Some(view) = GroupsLastScratch::of(self.config.granularity(), shape)? {
            // Strided groups on their groups-last view: the same terms in the same order.
            self.check_shape(shape)?;
            let xs = view.record_input(&self.ctx, recorder, x)?;
            return self.record_init_from_data(recorder, xs.binding(), &view.shape);
        }
        let layout = self.layout(shape)?;
        self.ctx.check_tensor("x", &x, layout.numel())?;
        for (chunk, sub) in self.reduce_chunks(layout)? {
            // Channels that are runs: the chunk's sub-tensor (the whole tensor for one chunk).
            let x = x.advanced((chunk.first as u64).saturating_mul(sub.inner as u64));
            let (last, has_level) = self.record_reduction(recorder, (chunk, sub), x, None)?;
            let mut uniform = self.base_uniform(sub);
            uniform.src_blocks = has_level as u32;
            self.ctx.record_pass(
                recorder,
                LsqEntry::InitFinish.f32(),
                &[Dispatch {
                    uniform,
                    bindings: InitFinishBindings {
                        scale: chunk.table(4).bind(&self.scale),
                        level: level_binding(&last, chunk.count, has_level),
                    },
                    grid: [chunk.groups, 1],
                }],
            )?;
        }
        Ok(())
    }

    /// Recording level: the learnable parameters from an observer's calibrated qparams (the
    /// seed's "load the pseudo-quantization parameters obtained from calibration"), on the device.
    pub fn record_init_from_observer(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        observer: &GpuObserver,
    ) -> Result<()> {
        self.ctx
            .check_owner("observer", observer.context().device_id())?;
        check_len("observer channels", self.channels, observer.channels())?;
        // A window of every table per chunk of channels (the observer's state, 16 bytes a
        // channel, is the largest).
        let dispatches: Vec<_> = self
            .ctx
            .channel_chunks(self.channels, 16)
            .into_iter()
            .map(|chunk| Dispatch {
                uniform: LsqDispatch {
                    channels: chunk.count as u32,
                    ..Default::default()
                },
                bindings: FromObserverBindings {
                    scale: chunk.table(4).bind(&self.scale),
                    zero_point: chunk.table(4).bind(&self.zero_point),
                    observer_state: chunk.table(16).bind(observer.state_buffer()),
                },
                grid: [chunk.groups, 1],
            })
            .collect();
        self.ctx
            .record_pass(recorder, LsqEntry::FromObserver.f32(), &dispatches)
    }

    /// Device level: the forward on device tensors, submitted at once.
    pub fn forward_device(
        &self,
        x: &GpuTensor,
        shape: &[usize],
        y: &GpuTensor,
        mask: Option<&GpuMask>,
    ) -> Result<()> {
        check_forward_lengths(x, shape, y, mask)?;
        self.ctx.run_recorded("fakequant lsq forward", |encoder| {
            self.record_forward(
                encoder,
                x.binding(),
                shape,
                y.binding(),
                mask.map(GpuMask::binding),
            )
        })
    }

    /// Device level: the backward on device tensors, submitted at once.
    pub fn backward_device(
        &self,
        x: &GpuTensor,
        dy: &GpuTensor,
        shape: &[usize],
        dx: &GpuTensor,
        grads: &GpuLsqGrads,
    ) -> Result<()> {
        check_len("x vs product of shape", numel(shape)?, x.len())?;
        check_len("dy vs x", x.len(), dy.len())?;
        check_len("dx vs x", x.len(), dx.len())?;
        self.ctx.run_recorded("fakequant lsq backward", |encoder| {
            self.record_backward(
                encoder,
                x.binding(),
                dy.binding(),
                shape,
                dx.binding(),
                grads,
            )
        })
    }

    /// Host level: the forward on host data of any element type, `y` in the type of `x`, and
    /// the mask.
    pub fn forward<T: Element>(&self, x: &[T], shape: &[usize]) -> Result<FakeQuantOutput<T>> {
        self.ctx.forward_on_host(x, shape, |x, y, mask| {
            self.forward_device(x, shape, y, Some(mask))
        })
    }

    /// Host level: the backward on host data of any element type: `dx` in the type of `x` and
    /// `dy`, the reduced gradients f32.
    pub fn backward<T: Element>(&self, x: &[T], dy: &[T], shape: &[usize]) -> Result<LsqGrads<T>> {
        check_len("data length vs product of shape", numel(shape)?, x.len())?;
        check_len("dy vs x", x.len(), dy.len())?;
        let x_dev = self.ctx.upload(x)?;
        let dy_dev = self.ctx.upload(dy)?;
        let dx_dev = self.ctx.create_tensor(x.len(), T::DTYPE)?;
        let grads = self.create_grads()?;
        self.backward_device(&x_dev, &dy_dev, shape, &dx_dev, &grads)?;
        let (dscale, dzero_point) = self.ctx.read_lsq_grads(&grads)?;
        Ok(LsqGrads {
            dx: self.ctx.read_tensor(&dx_dev)?,
            dscale,
            dzero_point,
        })
    }

    /// Host level: the learnable parameters from an observer's calibrated qparams, on the
    /// device (see [`Self::record_init_from_observer`]), submitted at once.
    pub fn init_from_observer(&self, observer: &GpuObserver) -> Result<()> {
        self.ctx
            .run_recorded("fakequant lsq from observer", |encoder| {
                self.record_init_from_observer(encoder, observer)
            })
    }

    /// Host level: initializes the scales from host data and returns them.
    pub fn init_from_data<T: Element>(&self, x: &[T], shape: &[usize]) -> Result<Vec<f32>> {
        check_len("data length vs product of shape", numel(shape)?, x.len())?;
        let x_dev = self.ctx.upload(x)?;
        self.ctx.run_recorded("fakequant lsq init", |encoder| {
            self.record_init_from_data(encoder, x_dev.binding(), shape)
        })?;
        Ok(self.read_params()?.0)
    }
}

/// The last level of a chunk's partial sums (a pair per channel), bound to its size: the cached
/// buffer may be larger than a binding.
fn level_binding(
    buffer: &wgpu::Buffer,
    channels: usize,
    has_level: bool,
) -> wgpu::BufferBinding<'_> {
    let bytes = if has_level {
        (channels as u64).saturating_mul(8)
    } else {
        0
    };
    wgpu::BufferBinding {
        buffer,
        offset: 0,
        size: wgpu::BufferSize::new(bytes.max(8)),
    }
}

/// This family's declarations, for the layout checks.
pub(crate) fn declarations() -> FamilyDecl {
    let entry = |e: LsqEntry| e.f32().entry_point();
    FamilyDecl {
        entry_points: vec![
            EntryPointDecl::of::<ParamsBindings>(&LSQ_KERNELS, entry(LsqEntry::Params)),
            EntryPointDecl::of::<BackwardBindings>(&LSQ_KERNELS, entry(LsqEntry::Backward)),
            EntryPointDecl::of::<InitTermsBindings>(&LSQ_KERNELS, entry(LsqEntry::InitTerms)),
            EntryPointDecl::of::<SumBindings>(&LSQ_KERNELS, entry(LsqEntry::Sum { counts: false })),
            EntryPointDecl::of::<FinishBindings>(&LSQ_KERNELS, entry(LsqEntry::Finish)),
            EntryPointDecl::of::<InitFinishBindings>(&LSQ_KERNELS, entry(LsqEntry::InitFinish)),
            EntryPointDecl::of::<FromObserverBindings>(&LSQ_KERNELS, entry(LsqEntry::FromObserver)),
        ],
        structs: vec![
            StructDecl::of::<LsqDispatch>(&LSQ_KERNELS),
            StructDecl::of::<ChannelParams>(&LSQ_KERNELS),
        ],
    }
}
