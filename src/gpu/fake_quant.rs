//! Dispatch of the fake-quant kernel family (`shaders/fake_quant.wgsl`): the fused forward with
//! an optional bit-packed mask, and the straight-through backward, at three levels of API.

use super::context::{DispatchLimits, GpuContext};
use super::kernel::planning::{
    chunk_elems, element_window, mask_window, table_chunk, table_window, Window,
};
use super::kernel::recording::Dispatch;
use super::kernel::shaders::{Shader, ELEMENTWISE_F32, ELEMENTWISE_HALF, ELEMENTWISE_VEC4};
use super::kernel::{
    bindings, dtype_constant, uniform, EntryPointDecl, FamilyDecl, Kernel, Recorder, StructDecl,
};
use super::memory::{check_forward_lengths, check_len, GpuMask, GpuTensor, TensorBinding};
use super::permute::GroupsLastScratch;
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::quant::{ChannelLayout, FakeQuant, PackedMask, QuantRange, Rounding};
use crate::reference::FakeQuantOutput;

/// Elements a workgroup of the scalar kernels covers per step of its loop (`TILE` in
/// elementwise.wgsl).
const TILE_ELEMS: u64 = 1024;

/// The elementwise kernels: one fused forward (or pass-through) and the straight-through backward,
/// in a scalar variant per element family and a wide (vec4) variant for every element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ElementwiseKernel {
    pub(crate) op: ElementwiseOp,
    pub(crate) dtype: DType,
    /// Vec4 groups per invocation and tile of the wide variant (`PER_THREAD`); 0 for the scalar one.
    pub(crate) per_thread: u32,
}

/// What an elementwise kernel computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ElementwiseOp {
    /// Fused forward: rounding, per-channel, with mask.
    Forward {
        rounding: Rounding,
        per_channel: bool,
        with_mask: bool,
    },
    /// `y = x` with every mask bit set (an observer's calibration mode).
    PassThrough { with_mask: bool },
    /// Straight-through backward.
    SteBackward,
}

impl Kernel for ElementwiseKernel {
    fn shader(&self) -> &'static Shader {
        match (self.per_thread > 0, self.dtype) {
            (true, _) => &ELEMENTWISE_VEC4,
            (false, DType::F32) => &ELEMENTWISE_F32,
            (false, _) => &ELEMENTWISE_HALF,
        }
    }

    fn entry_point(&self) -> &'static str {
        match self.op {
            ElementwiseOp::Forward {
                with_mask: true, ..
            }
            | ElementwiseOp::PassThrough { with_mask: true } => "forward_masked",
            ElementwiseOp::Forward { .. } | ElementwiseOp::PassThrough { .. } => "forward",
            ElementwiseOp::SteBackward => "ste_backward",
        }
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        let mut constants = match self.op {
            ElementwiseOp::Forward {
                rounding,
                per_channel,
                with_mask,
            } => vec![
                // quantize.wgsl's ROUNDING: 0 reciprocal, 1 quotient.
                ("ROUNDING", (rounding == Rounding::Quotient) as u8 as f64),
                ("PER_CHANNEL", per_channel as u8 as f64),
                ("WITH_MASK", with_mask as u8 as f64),
            ],
            ElementwiseOp::PassThrough { with_mask } => {
                vec![("WITH_MASK", with_mask as u8 as f64), ("IDENTITY", 1.0)]
            }
            ElementwiseOp::SteBackward => vec![],
        };
        let wide = self.per_thread > 0;
        if wide || self.dtype != DType::F32 {
            constants.push(("DTYPE", dtype_constant(self.dtype)));
        }
        if wide {
            constants.push(("PER_THREAD", self.per_thread as f64));
        }
        constants
    }
}

bindings! {
    /// The fused forward (and pass-through) without a mask: the channels' parameters, x, y. (A
    /// pass-through binds the parameters of the observer it runs for, which it does not read.)
    ForwardBindings {
        params: Read @ 1,
        x: Input @ 2,
        y: ReadWrite @ 3,
    }
}

bindings! {
    /// `forward_masked`: the same, and the mask it writes.
    MaskedForwardBindings {
        params: Read @ 1,
        x: Input @ 2,
        y: ReadWrite @ 3,
        mask: ReadWrite @ 4,
    }
}

bindings! {
    /// The straight-through backward: `x` holds dy, `y` receives dx (the element access code is
    /// shared with the forward), `mask` is read.
    SteBindings {
        x: Input @ 2,
        y: ReadWrite @ 3,
        mask: Input @ 4,
    }
}

uniform! {
    /// One per binding-sized chunk of the tensor (and one for its scalar remainder).
    pub(crate) struct DispatchUniform as "Dispatch" {
        len: u32,
        num_tiles: u32,
        channels: u32,
        inner: u32,
        channel_start: u32,
        inner_start: u32,
        mask_words: u32,
        x_shift: u32,
        y_shift: u32,
        mask_shift: u32,
        table_shift: u32,
        count_first: u32,
        count_channels: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

uniform! {
    /// Everything the kernel needs about one channel, derived exactly here so that the device only
    /// multiplies, rounds and compares (see quantize.wgsl's header).
    pub(crate) struct ChannelParams as "ChannelParams" {
        scale: f32,
        inv: f32,
        inv_sub: f32,
        clip_bits: u32,
        lo: f32,
        hi: f32,
        _pad0: u32,
        _pad1: u32,
    }
}

impl DispatchUniform {
    /// The uniform of a kernel with one invocation per channel, which reads the count and the
    /// position of a second table's first entry in its window.
    pub(crate) fn for_channels_with(channels: u32, table_shift: u32) -> Self {
        Self {
            channels,
            table_shift,
            ..Default::default()
        }
    }
}

impl DispatchUniform {
    /// This uniform with `table_shift` set: for `histogram_count`, the first channel of the
    /// planned window (the index in the whole table of the dispatch's channel 0).
    pub(crate) fn with_table_shift(self, table_shift: u32) -> Self {
        Self {
            table_shift,
            ..self
        }
    }

    /// This uniform for a histogram pass whose counts bound are those of channels
    /// `count_first .. count_first + count_channels`.
    pub(crate) fn with_counts_window(self, count_first: u32, count_channels: u32) -> Self {
        Self {
            count_first,
            count_channels,
            ..self
        }
    }
}

impl ChannelParams {
    /// Bytes of one record of a parameter table.
    pub(crate) const BYTES: u64 = std::mem::size_of::<Self>() as u64;

    #[allow(
        clippy::arithmetic_side_effects,
        reason = "qmin, qmax and the zero point are validated 16-bit values, so their differences fit an i32"
    )]
    pub(crate) fn new(scale: f32, zero_point: i32, range: QuantRange) -> Self {
        // IEEE division on the host: the correctly rounded reciprocal PyTorch uses.
        let inv = 1.0f32 / scale;
        // inv * 2^-149 is exact (a power-of-two scaling that stays normal) when inv >= 2^23; below
        // that, every subnormal input rounds to zero and the factor is irrelevant.
        let inv_sub = if inv >= 8_388_608.0 {
            (inv as f64 * 2f64.powi(-149)) as f32
        } else {
            0.0
        };
        // 2^18 * scale is exact in f32 unless it overflows, when f32::MAX (no clamp) takes its place.
        let clip = (scale as f64 * 262_144.0).min(f32::MAX as f64) as f32;
        Self {
            scale,
            inv,
            inv_sub,
            clip_bits: clip.to_bits(),
            lo: (range.qmin() - zero_point) as f32,
            hi: (range.qmax() - zero_point) as f32,
            _pad0: 0,
            _pad1: 0,
        }
    }
}

/// A validated fake-quantization whose parameters live on the device: prepare once, run many times.
#[derive(Debug, Clone)]
pub struct GpuFakeQuant {
    ctx: GpuContext,
    op: FakeQuant,
    params: wgpu::Buffer,
}

impl GpuContext {
    /// Uploads `op`'s parameters once, for repeated device-level or recorded calls.
    pub fn prepare(&self, op: &FakeQuant) -> Result<GpuFakeQuant> {
        let p = op.params();
        let params: Vec<ChannelParams> = p
            .scales()
            .iter()
            .zip(p.zero_points())
            .map(|(&s, &zp)| ChannelParams::new(s, zp, op.range()))
            .collect();
        // A table larger than one binding is bound a window per chunk (see `plan_dispatch`); the
        // buffer itself is checked against the device's largest buffer.
        let params =
            self.constant_storage("fakequant channel params", bytemuck::cast_slice(&params))?;
        Ok(GpuFakeQuant {
            ctx: self.clone(),
            op: op.clone(),
            params,
        })
    }

    /// Host level: fake-quantizes host data of any element type on the device and reads the
    /// result back (`y` in the input's type, and the mask). `shape` is the
    /// row-major shape of `x` (for per-tensor parameters, `&[x.len()]` will do).
    pub fn fake_quant<T: Element>(
        &self,
        op: &FakeQuant,
        x: &[T],
        shape: &[usize],
    ) -> Result<FakeQuantOutput<T>> {
        op.layout(shape, x.len())?;
        let prepared = self.prepare(op)?;
        self.forward_on_host(x, shape, |x, y, mask| {
            prepared.forward_device(x, shape, y, Some(mask))
        })
    }

    /// Host level: the straight-through backward `dx = dy * mask` on the device, `dx` in the type
    /// of `dy`.
    pub fn ste_backward<T: Element>(&self, dy: &[T], mask: &PackedMask) -> Result<Vec<T>> {
        check_len("dy vs mask", mask.len(), dy.len())?;
        let dy_dev = self.upload(dy)?;
        let mask_dev = self.upload_mask(mask)?;
        let dx_dev = self.create_tensor(dy.len(), T::DTYPE)?;
        self.ste_backward_device(&dy_dev, &mask_dev, &dx_dev)?;
        self.read_tensor(&dx_dev)
    }

    /// Device level: `dx = dy * mask` on device tensors, submitted at once (no read-back).
    pub fn ste_backward_device(
        &self,
        dy: &GpuTensor,
        mask: &GpuMask,
        dx: &GpuTensor,
    ) -> Result<()> {
        check_len("dy vs mask", mask.len(), dy.len())?;
        check_len("dx vs dy", dy.len(), dx.len())?;
        self.run_recorded("fakequant ste_backward", |encoder| {
            self.record_ste_backward(
                encoder,
                dy.binding(),
                mask.binding(),
                dx.binding(),
                dy.len(),
            )
        })
    }

    /// Recording level: records `dx = dy * mask` for `len` elements into the caller's encoder.
    pub fn record_ste_backward(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        dy: TensorBinding<'_>,
        mask: TensorBinding<'_>,
        dx: TensorBinding<'_>,
        len: usize,
    ) -> Result<()> {
        let bindings = ElementwiseBindings {
            x: dy,
            y: dx,
            mask: Some(mask),
            params: None,
        };
        let layout = ChannelLayout {
            outer: len,
            channels: 1,
            inner: 1,
        };
        self.record_elementwise(recorder, ElementwiseOp::SteBackward, bindings, layout)
    }

    /// Records one elementwise kernel over a tensor of `layout.numel()` elements, split into
    /// chunks that each fit one storage binding, each dispatch looping over its tiles when it needs
    /// more workgroups than the limit.
    /// Checks the bindings of a fused forward on `len` elements (`y` and the mask written).
    pub(crate) fn check_forward(
        &self,
        x: &TensorBinding<'_>,
        y: &TensorBinding<'_>,
        mask: Option<&TensorBinding<'_>>,
        len: usize,
    ) -> Result<()> {
        self.check_elementwise(["x", "y"], x, y, mask.map(|m| (m, true)), len)
    }

    /// Records the fused forward of `x` into `y` (and the mask) with the channels' `params`:
    /// what every family's forward ends with.
    pub(crate) fn record_forward_with(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        params: &wgpu::Buffer,
        rounding: Rounding,
        layout: ChannelLayout,
        bindings: (
            TensorBinding<'_>,
            TensorBinding<'_>,
            Option<TensorBinding<'_>>,
        ),
    ) -> Result<()> {
        let (x, y, mask) = bindings;
        let op = ElementwiseOp::Forward {
            rounding,
            // With one channel every element is channel 0: no channel arithmetic.
            per_channel: layout.channels > 1,
            with_mask: mask.is_some(),
        };
        let bindings = ElementwiseBindings {
            x,
            y,
            mask,
            params: Some(params),
        };
        self.record_elementwise(recorder, op, bindings, layout)
    }

    #[allow(
        clippy::arithmetic_side_effects,
        reason = "sizes, offsets and counts here are bounded by checks made before: tensors and windows lie within buffers the binding checks accepted (at most the device's max_buffer_size), channel counts within one binding, so no product or sum approaches u64::MAX"
    )]
    pub(crate) fn record_elementwise(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        op: ElementwiseOp,
        b: ElementwiseBindings<'_, '_>,
        layout: ChannelLayout,
    ) -> Result<()> {
        let len = layout.numel() as u64;
        let dtype = b.x.dtype;
        let (roles, mask_written) = match op {
            ElementwiseOp::SteBackward => (["dy", "dx"], false),
            _ => (["x", "y"], true),
        };
        let mask = b.mask.as_ref().map(|m| (m, mask_written));
        self.check_elementwise(roles, &b.x, &b.y, mask, layout.numel())?;
        if len == 0 {
            return Ok(());
        }
        if layout.inner as u64 > u32::MAX as u64 / 2 || layout.channels as u64 > u32::MAX as u64 / 2
        {
            return Err(Error::TooLarge {
                what: "inner size or channel count of the per-channel layout",
                requested: layout.inner.max(layout.channels) as u64,
                limit: u32::MAX as u64 / 2,
            });
        }

        let limits = self.dispatch_limits();
        let align = self.device_limits().min_storage_buffer_offset_alignment as u64;
        // Chunks start on multiples of the granule (so their mask words are whole and aligned).
        // f32 tensors sit at aligned offsets; a 16-bit tensor's window may start up to `align`
        // bytes before its first element, which the chunk leaves room for.
        let slack = if dtype == DType::F32 { 0 } else { align };
        let chunk = table_chunk(
            chunk_elems(limits.max_binding_bytes, slack, dtype),
            layout.outer,
            layout.inner,
            ChannelParams::BYTES,
            limits.max_binding_bytes,
            align,
        );
        // The wide kernels load and store whole vec4s: x and y must start 16 bytes into their
        // windows (always for f32; 16-bit tensors at 16-byte offsets). Chunk starts are multiples
        // of the granule, so every chunk shares the first one's shifts.
        let group = 16 / dtype.size();
        let vec4_aligned = |t: &TensorBinding<'_>| {
            element_window(t.offset, t.dtype, 0, 1, align)
                .shift
                .is_multiple_of(group)
        };
        let wide = vec4_aligned(&b.x) && vec4_aligned(&b.y);
        let wide_walk = Walk {
            group,
            tile: self.wide_tile_groups(),
            record: ChannelParams::BYTES,
        };
        let scalar_walk = Walk {
            group: 1,
            tile: TILE_ELEMS,
            record: ChannelParams::BYTES,
        };
        let (mut wide_plans, mut scalar_plans) = (Vec::new(), Vec::new());
        for c in 0..len.div_ceil(chunk) {
            let (start, end) = (c * chunk, (c * chunk + chunk).min(len));
            // The body covers whole mask words; under 32 elements are left to the scalar kernel.
            let body_end = if wide {
                start + (end - start) / 32 * 32
            } else {
                start
            };
            if body_end > start {
                wide_plans.push(plan_dispatch(
                    &b, layout, start, body_end, wide_walk, align, &limits,
                ));
            }
            if end > body_end {
                scalar_plans.push(plan_dispatch(
                    &b,
                    layout,
                    body_end,
                    end,
                    scalar_walk,
                    align,
                    &limits,
                ));
            }
        }
        let per_thread = self.wide_groups_per_thread();
        for (plans, per_thread) in [(wide_plans, per_thread), (scalar_plans, 0)] {
            if plans.is_empty() {
                continue;
            }
            let kernel = ElementwiseKernel {
                op,
                dtype,
                per_thread,
            };
            if op == ElementwiseOp::SteBackward {
                let mask = b.mask.as_ref().ok_or(Error::InvalidBuffer {
                    what: "mask",
                    reason: "the straight-through backward needs the mask".into(),
                })?;
                let dispatches: Vec<_> = plans
                    .iter()
                    .map(|p| {
                        p.dispatch(SteBindings {
                            x: p.x.bind(b.x.buffer),
                            y: p.y.bind(b.y.buffer),
                            mask: p.mask.bind(mask.buffer),
                        })
                    })
                    .collect();
                self.record_pass(recorder, kernel, &dispatches)?;
            } else {
                let params_buffer = b.params.ok_or(Error::InvalidBuffer {
                    what: "params",
                    reason: "the forward needs the channels' parameters".into(),
                })?;
                let params = |p: &PlannedDispatch| {
                    p.channels
                        .of(ChannelParams::BYTES, align)
                        .bind(params_buffer)
                };
                match &b.mask {
                    Some(mask) => {
                        let dispatches: Vec<_> = plans
                            .iter()
                            .map(|p| {
                                p.dispatch(MaskedForwardBindings {
                                    params: params(p),
                                    x: p.x.bind(b.x.buffer),
                                    y: p.y.bind(b.y.buffer),
                                    mask: p.mask.bind(mask.buffer),
                                })
                            })
                            .collect();
                        self.record_pass(recorder, kernel, &dispatches)?;
                    }
                    None => {
                        let dispatches: Vec<_> = plans
                            .iter()
                            .map(|p| {
                                p.dispatch(ForwardBindings {
                                    params: params(p),
                                    x: p.x.bind(b.x.buffer),
                                    y: p.y.bind(b.y.buffer),
                                })
                            })
                            .collect();
                        self.record_pass(recorder, kernel, &dispatches)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// How a kernel variant walks a tensor: `group` elements per invocation (1 for the scalar kernels,
/// a vec4's worth for the wide ones, whose shifts and lengths count groups), `tile` groups per
/// workgroup and step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Walk {
    pub(crate) group: u64,
    pub(crate) tile: u64,
    /// Bytes of one record of the per-channel table the kernel indexes from `channel_start`.
    pub(crate) record: u64,
}

/// One planned dispatch: its uniform, the windows of x, y, the mask and the channels' table, its
/// grid.
pub(crate) struct PlannedDispatch {
    pub(crate) uniform: DispatchUniform,
    pub(crate) x: Window,
    pub(crate) y: Window,
    pub(crate) mask: Window,
    /// The records of the channels this dispatch reads (in records of any size: the shift is the
    /// uniform's `channel_start`).
    pub(crate) channels: ChannelWindow,
    pub(crate) grid: [u32; 2],
}

impl PlannedDispatch {
    /// The planned dispatch with `bindings`.
    pub(crate) fn dispatch<B>(&self, bindings: B) -> Dispatch<DispatchUniform, B> {
        Dispatch {
            uniform: self.uniform,
            bindings,
            grid: self.grid,
        }
    }
}

/// The channels a dispatch reads, as records of a per-channel table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelWindow {
    /// First channel, and how many.
    pub(crate) first: u64,
    pub(crate) count: u64,
}

impl ChannelWindow {
    /// The window of this dispatch's records in a table of `record`-byte records at offset 0.
    pub(crate) fn of(&self, record: u64, align: u64) -> Window {
        table_window(record, 0, self.first, self.count, align)
    }
}

/// The dispatch of elements `[start, end)` (`start` a multiple of 32).
#[allow(
    clippy::arithmetic_side_effects,
    reason = "sizes, offsets and counts here are bounded by checks made before: tensors and windows lie within buffers the binding checks accepted (at most the device's max_buffer_size), channel counts within one binding, so no product or sum approaches u64::MAX"
)]
pub(crate) fn plan_dispatch(
    b: &ElementwiseBindings<'_, '_>,
    layout: ChannelLayout,
    start: u64,
    end: u64,
    walk: Walk,
    align: u64,
    limits: &DispatchLimits,
) -> PlannedDispatch {
    let n = end - start;
    let Walk {
        group,
        tile,
        record,
    } = walk;
    let units = n.div_ceil(group);
    let x = element_window(b.x.offset, b.x.dtype, start, end, align);
    let y = element_window(b.y.offset, b.y.dtype, start, end, align);
    let mask = match &b.mask {
        Some(m) => mask_window(m.offset, start / 32, n.div_ceil(32), align),
        None => Window {
            offset: 0,
            size: 4,
            shift: 0,
        },
    };
    let inner = layout.inner as u64;
    let channels = layout.channels as u64;
    // The channels of [start, end): a window of the table when they do not wrap around (always
    // for per-group and leading-axis layouts), so that a table larger than one binding is bound
    // a piece at a time; the whole table when they do. The uniform's channel_start is then the
    // first channel's index in the window: every channel index the kernels form stays below
    // `channels` (the window starts at or before the first channel), so their `% channels`
    // never wraps inside a window.
    let (first_run, last_run) = (start / inner, (end - 1) / inner);
    let window = if first_run / channels == last_run / channels {
        ChannelWindow {
            first: first_run % channels,
            count: last_run - first_run + 1,
        }
    } else {
        ChannelWindow {
            first: 0,
            count: channels,
        }
    };
    let channel_start = (first_run % channels - window.first) + window.of(record, align).shift;
    PlannedDispatch {
        uniform: DispatchUniform {
            len: units as u32,
            num_tiles: units.div_ceil(tile) as u32,
            channels: layout.channels as u32,
            inner: layout.inner as u32,
            channel_start: channel_start as u32,
            inner_start: (start % inner) as u32,
            mask_words: n.div_ceil(32) as u32,
            x_shift: (x.shift / group) as u32,
            y_shift: (y.shift / group) as u32,
            mask_shift: mask.shift as u32,
            ..Default::default()
        },
        x,
        y,
        mask,
        channels: window,
        grid: [
            units.div_ceil(tile).min(limits.max_workgroups as u64) as u32,
            1,
        ],
    }
}

pub(crate) struct ElementwiseBindings<'a, 'b> {
    pub(crate) x: TensorBinding<'a>,
    pub(crate) y: TensorBinding<'a>,
    pub(crate) mask: Option<TensorBinding<'a>>,
    pub(crate) params: Option<&'b wgpu::Buffer>,
}

impl GpuFakeQuant {
    /// The validated fake-quantization.
    pub fn op(&self) -> &FakeQuant {
        &self.op
    }

    /// The context it was prepared on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Device level: fake-quantizes device tensor `x` of `shape` into `y` (and the mask when
    /// given), submitted at once; the results stay on the device.
    pub fn forward_device(
        &self,
        x: &GpuTensor,
        shape: &[usize],
        y: &GpuTensor,
        mask: Option<&GpuMask>,
    ) -> Result<()> {
        check_forward_lengths(x, shape, y, mask)?;
        self.ctx.run_recorded("fakequant forward", |encoder| {
            self.record_forward(
                encoder,
                x.binding(),
                shape,
                y.binding(),
                mask.map(GpuMask::binding),
            )
        })
    }

    /// Recording level: records the fused forward into the caller's encoder on the caller's
    /// buffers. `x` and `y` hold `numel(shape)` f32 values; `mask`, when given, receives
    /// `ceil(numel / 32)` packed words. Nothing is submitted.
    pub fn record_forward(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        x: TensorBinding<'_>,
        shape: &[usize],
        y: TensorBinding<'_>,
        mask: Option<TensorBinding<'_>>,
    ) -> Result<()> {
        let numel = crate::quant::numel(shape)?;
        let layout = self.op.layout(shape, numel)?;
        if let Some(view) = GroupsLastScratch::of(self.op.params().granularity(), shape)? {
            // Strided groups: the forward on their groups-last view, y and the mask moved back.
            let ctx = &self.ctx;
            ctx.check_elementwise(["x", "y"], &x, &y, mask.as_ref().map(|m| (m, true)), numel)?;
            return view.record_forward(ctx, recorder, (x, y, mask), |r, x, shape, y, mask| {
                self.record_forward(r, x, shape, y, mask)
            });
        }
        self.ctx.record_forward_with(
            recorder,
            &self.params,
            self.op.rounding(),
            layout.kernel_layout(),
            (x, y, mask),
        )
    }
}

/// This family's declarations, for the layout checks.
pub(crate) fn declarations() -> FamilyDecl {
    let mut entry_points = Vec::new();
    for shader in [&ELEMENTWISE_F32, &ELEMENTWISE_HALF, &ELEMENTWISE_VEC4] {
        entry_points.push(EntryPointDecl::of::<ForwardBindings>(shader, "forward"));
        entry_points.push(EntryPointDecl::of::<MaskedForwardBindings>(
            shader,
            "forward_masked",
        ));
        entry_points.push(EntryPointDecl::of::<SteBindings>(shader, "ste_backward"));
    }
    FamilyDecl {
        entry_points,
        structs: vec![
            StructDecl::of::<DispatchUniform>(&ELEMENTWISE_F32),
            StructDecl::of::<DispatchUniform>(&ELEMENTWISE_VEC4),
            StructDecl::of::<ChannelParams>(&ELEMENTWISE_F32),
        ],
    }
}
