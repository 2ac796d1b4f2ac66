//! The dynamic fake-quantization family (see [`crate::dynamic`]), integer zero-point schemes (the
//! float domain runs on the reference only, for now). Groups of a power-of-two size from 32 to 4096
//! take one pass over `x` (`shaders/dynamic_groups.wgsl`: a workgroup reduces whole groups, derives
//! their qparams and fake-quantizes them); other groups two: the observers' exact min/max
//! reduction, then their qparams (`shaders/dynamic.wgsl`) and the elementwise forward. Both share
//! the rules of `shaders/dynamic_rules.wgsl`, read from a small buffer per input type (one
//! pipeline serves every configuration).

use super::context::GpuContext;
use super::fake_quant::{plan_dispatch, ChannelParams, DispatchUniform, ElementwiseBindings, Walk};
use super::kernel::planning::{chunk_elems, table_chunk};
use super::kernel::recording::Dispatch;
use super::kernel::shaders::{
    Shader, DYNAMIC, DYNAMIC_GROUPS_F32, DYNAMIC_GROUPS_HALF, DYNAMIC_GROUPS_SHADERS,
};
use super::kernel::{
    bindings, dtype_constant, uniform, ElementShaders, EntryPointDecl, FamilyDecl, Kernel,
    Recorder, StructDecl,
};
use super::memory::{check_forward_lengths, check_len, GpuMask, GpuTensor, TensorBinding};
use super::observer::GpuObserver;
use super::permute::GroupsLastScratch;
use crate::dtype::{DType, Element};
use crate::dynamic::{DynamicConfig, DynamicOutput, DynamicScheme};
use crate::error::Result;

use crate::quant::{numel, ChannelLayout, ParamLayout, Rounding};

uniform! {
    /// The rule set of `shaders/dynamic_rules.wgsl` (a storage binding, so that one pipeline
    /// serves every configuration), for one configuration and input type.
    struct DynamicRules as "DynamicRules" {
        qmin: i32,
        qmax: i32,
        eps: u32,
        levels: u32,
        half_levels: u32,
        mid: u32,
        qparams_bf16: u32,
        arithmetic_bf16: u32,
    }
}

impl DynamicRules {
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "qmin and qmax are validated 16-bit values"
    )]
    fn new(config: &DynamicConfig, dtype: DType) -> Self {
        let (qmin, qmax) = (config.range().qmin(), config.range().qmax());
        let levels = (qmax - qmin) as f32;
        let qparams_bf16 = config.qparams_dtype() == DType::Bf16;
        Self {
            qmin,
            qmax,
            eps: config.eps_for(dtype).to_bits(),
            levels: levels.to_bits(),
            half_levels: (levels / 2.0).to_bits(),
            mid: (((qmin + qmax + 1) / 2) as f32).to_bits(),
            qparams_bf16: qparams_bf16 as u32,
            arithmetic_bf16: (qparams_bf16 && dtype == DType::Bf16) as u32,
        }
    }
}

/// The `override` constants of `shaders/dynamic_rules.wgsl`: the scheme and the input type.
fn rules_constants(scheme: DynamicScheme, dtype: DType) -> Vec<(&'static str, f64)> {
    let scheme = match scheme {
        DynamicScheme::Symmetric => 0.0,
        DynamicScheme::Asymmetric => 1.0,
        DynamicScheme::AsymmetricFloat => 2.0,
    };
    vec![("SCHEME", scheme), ("QPARAMS_DTYPE", dtype_constant(dtype))]
}

/// The two-pass plan's qparams kernel (`shaders/dynamic.wgsl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct QparamsKernel {
    scheme: DynamicScheme,
    dtype: DType,
}

impl Kernel for QparamsKernel {
    fn shader(&self) -> &'static Shader {
        &DYNAMIC
    }

    fn entry_point(&self) -> &'static str {
        "dynamic_qparams"
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        rules_constants(self.scheme, self.dtype)
    }
}

/// The one-pass kernel (`shaders/dynamic_groups.wgsl`) for inputs of `dtype` in groups of `group`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct GroupsKernel {
    scheme: DynamicScheme,
    dtype: DType,
    group: u32,
    /// Elements per invocation (`RUN`): a power of two from 32 to `group`.
    run: u32,
    masked: bool,
}

impl Kernel for GroupsKernel {
    fn shader(&self) -> &'static Shader {
        DYNAMIC_GROUPS_SHADERS.for_dtype(self.dtype)
    }

    fn entry_point(&self) -> &'static str {
        if self.masked {
            "dynamic_groups_masked"
        } else {
            "dynamic_groups"
        }
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        let mut constants = rules_constants(self.scheme, self.dtype);
        constants.push(("GROUP", self.group as f64));
        constants.push(("RUN", self.run as f64));
        ElementShaders::constants(self.dtype, constants)
    }
}

/// The float zero-point domain's last pass of the two-pass plan (`dynamic_float_apply` in
/// `shaders/dynamic_groups.wgsl`), for inputs of `dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FloatApplyKernel {
    dtype: DType,
    masked: bool,
}

impl Kernel for FloatApplyKernel {
    fn shader(&self) -> &'static Shader {
        DYNAMIC_GROUPS_SHADERS.for_dtype(self.dtype)
    }

    fn entry_point(&self) -> &'static str {
        if self.masked {
            "dynamic_float_apply_masked"
        } else {
            "dynamic_float_apply"
        }
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        let constants = rules_constants(DynamicScheme::AsymmetricFloat, self.dtype);
        ElementShaders::constants(self.dtype, constants)
    }
}

/// Groups of these sizes take the one-pass kernel: a power of two, whole mask words (an
/// invocation's run of at least 32 elements).
const ONE_PASS_GROUPS: std::ops::RangeInclusive<usize> = 32..=4096;

/// The one-pass kernel's run for groups of `group` in chunks of `chunk` elements: the context's
/// run, at most a group, and short enough that a tile (256 runs) divides the chunk, so that every
/// chunk but the last holds whole tiles. A chunk is a multiple of 2^16 elements, so runs of 256
/// always fit: the run stays at least `min(group, 256, context run)`, at least 32.
#[allow(
    clippy::arithmetic_side_effects,
    reason = "run <= 4096: 256 * run fits; the loop stops at 256 at the latest"
)]
fn one_pass_run(context_run: u32, group: u32, chunk: u64) -> u32 {
    let mut run = context_run.min(group);
    while !chunk.is_multiple_of(256 * run as u64) {
        run /= 2;
    }
    run
}

/// Whether the groups of `layout` take the one-pass kernel: contiguous, of a size it takes.
fn one_pass(layout: ChannelLayout) -> bool {
    layout.outer == 1 && layout.inner.is_power_of_two() && ONE_PASS_GROUPS.contains(&layout.inner)
}

bindings! {
    /// `dynamic_qparams`: the groups' statistics in, their fake-quant parameters and qparams out.
    QparamsBindings {
        stats: Read @ 1,
        params: ReadWrite @ 2,
        scales: ReadWrite @ 3,
        zero_points: ReadWrite @ 4,
        stats_hi: Read @ 5,
        rules: Read @ 6,
    }
}

bindings! {
    /// `dynamic_groups`: x's and y's windows, the windows of the qparams out.
    GroupsBindings {
        x: Input @ 2,
        y: ReadWrite @ 3,
        scales: ReadWrite @ 5,
        rules: Read @ 6,
        zero_points: ReadWrite @ 7,
    }
}

bindings! {
    /// `dynamic_float_apply`: x's and y's windows, the windows of the qparams in.
    FloatApplyBindings {
        x: Input @ 2,
        y: ReadWrite @ 3,
        scales: Input @ 5,
        rules: Read @ 6,
        zero_points: Input @ 7,
    }
}

bindings! {
    /// `dynamic_float_apply_masked`: the same, and the mask's window.
    FloatApplyMaskedBindings {
        x: Input @ 2,
        y: ReadWrite @ 3,
        mask: ReadWrite @ 4,
        scales: Input @ 5,
        rules: Read @ 6,
        zero_points: Input @ 7,
    }
}

bindings! {
    /// `dynamic_groups_masked`: the same, and the mask's window.
    GroupsMaskedBindings {
        x: Input @ 2,
        y: ReadWrite @ 3,
        mask: ReadWrite @ 4,
        scales: ReadWrite @ 5,
        rules: Read @ 6,
        zero_points: ReadWrite @ 7,
    }
}

uniform! {
    /// The uniform of `dynamic_qparams`.
    struct DynamicDispatch as "DynamicDispatch" {
        groups: u32,
        hi_shift: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

/// A dynamic fake-quantization on the device for tensors of one shape's groups: its own qparams
/// tables (and, for groups the one-pass kernel does not take, statistics and parameters), reused
/// by every call. Create with [`GpuContext::create_dynamic`].
#[derive(Debug)]
pub struct GpuDynamic {
    ctx: GpuContext,
    config: DynamicConfig,
    groups: usize,
    /// The two-pass plan's state, made by the first call that needs it: one-pass shapes (a 7B
    /// model's int4 weights have hundreds of millions of groups) never allocate it.
    two_pass: std::sync::OnceLock<TwoPass>,
    /// The chosen scales and zero points (f32), one per group: tables the one-pass kernel binds a
    /// window of per chunk, so they may exceed one binding.
    scales: wgpu::Buffer,
    zero_points: wgpu::Buffer,
    /// `DynamicRules` for f32, f16 and bf16 inputs.
    rules: [wgpu::Buffer; 3],
}

/// What the two-pass plan keeps between calls.
#[derive(Debug)]
struct TwoPass {
    /// Reduces each group's min and max into its batch statistics (none without a group).
    reducer: Option<GpuObserver>,
    /// The groups' fake-quant parameters for the elementwise forward.
    params: wgpu::Buffer,
}

impl GpuContext {
    /// A dynamic fake-quantization for tensors of `shape` (only the groups matter: any shape with
    /// the same number of groups fits). Every scheme, either zero-point domain, every
    /// granularity: groups of a power-of-two size from 32 to 4096 in one pass over `x`, others in
    /// two (the exact min/max reduction, then the qparams and the elementwise pass).
    pub fn create_dynamic(&self, config: &DynamicConfig, shape: &[usize]) -> Result<GpuDynamic> {
        let groups = config.granularity().channels(shape)?;
        config.granularity().param_layout(shape, numel(shape)?)?;
        let table = |label| self.storage_buffer_zeroed(label, (groups as u64).saturating_mul(4));
        let (scales, zero_points) = (
            table("fakequant dynamic scales")?,
            table("fakequant dynamic zero points")?,
        );
        let rules_for = |dtype| {
            self.constant_storage(
                "fakequant dynamic rules",
                bytemuck::bytes_of(&DynamicRules::new(config, dtype)),
            )
        };
        let rules = [
            rules_for(DType::F32)?,
            rules_for(DType::F16)?,
            rules_for(DType::Bf16)?,
        ];
        Ok(GpuDynamic {
            ctx: self.clone(),
            config: config.clone(),
            groups,
            two_pass: std::sync::OnceLock::new(),
            scales,
            zero_points,
            rules,
        })
    }
}

impl GpuDynamic {
    /// The configuration.
    pub fn config(&self) -> &DynamicConfig {
        &self.config
    }

    /// The context it was made on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Number of groups.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// The scales of the last call: `groups` f32, for recording their export into a caller's
    /// encoder.
    pub fn scales_buffer(&self) -> &wgpu::Buffer {
        &self.scales
    }

    /// The zero points of the last call: `groups` f32 (exact integers for the integer schemes).
    pub fn zero_points_buffer(&self) -> &wgpu::Buffer {
        &self.zero_points
    }

    /// Reads the qparams of the last call back: `(scales, zero_points)`.
    pub fn read_qparams(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let bytes = (self.groups as u64).saturating_mul(4);
        let read = |buffer| -> Result<Vec<f32>> {
            Ok(bytemuck::pod_collect_to_vec(
                &self.ctx.read_buffer(buffer, 0, bytes)?,
            ))
        };
        Ok((read(&self.scales)?, read(&self.zero_points)?))
    }

    /// The two-pass plan's state for tensors of `shape`, made on first use.
    fn two_pass(&self, shape: &[usize]) -> Result<&TwoPass> {
        if let Some(state) = self.two_pass.get() {
            return Ok(state);
        }
        let state = TwoPass {
            reducer: self
                .ctx
                .create_min_max_reducer(self.config.granularity(), shape)?,
            params: self.ctx.storage_buffer_zeroed(
                "fakequant dynamic params",
                (self.groups as u64).saturating_mul(ChannelParams::BYTES),
            )?,
        };
        // Another thread may have made it meanwhile: either is as good.
        Ok(self.two_pass.get_or_init(|| state))
    }

    /// `shape` checked against the object's groups.
    fn check_shape(&self, shape: &[usize], len: usize) -> Result<ParamLayout> {
        let layout = self.config.granularity().param_layout(shape, len)?;
        check_len("groups of the shape", self.groups, layout.channels())?;
        Ok(layout)
    }

    /// The kernels' layout of `shape`. Strided groups have none: they reach the kernels as
    /// their groups-last view ([`GroupsLastScratch`]).
    fn layout(&self, shape: &[usize], len: usize) -> Result<ChannelLayout> {
        self.check_shape(shape, len)?.channel_layout()
    }

    /// Recording level: the groups' qparams from `x` (of `shape`), then `y` (and the mask) with
    /// them; the qparams stay in [`Self::scales_buffer`] and [`Self::zero_points_buffer`].
    pub fn record_forward(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        x: TensorBinding<'_>,
        shape: &[usize],
        y: TensorBinding<'_>,
        mask: Option<TensorBinding<'_>>,
    ) -> Result<()> {
        if let Some(view) = GroupsLastScratch::of(self.config.granularity(), shape)? {
            // Strided groups on their groups-last view: each group's values (its qparams, in
            // the same table order) and each element's output are the same; y and the mask
            // moved back.
            let n = self.check_shape(shape, numel(shape)?)?.numel();
            self.ctx.check_forward(&x, &y, mask.as_ref(), n)?;
            return view.record_forward(&self.ctx, recorder, (x, y, mask), |r, x, shape, y, m| {
                self.record_forward(r, x, shape, y, m)
            });
        }
        let layout = self.layout(shape, numel(shape)?)?;
        // Everything the later passes bind is checked before the first is recorded.
        self.ctx
            .check_forward(&x, &y, mask.as_ref(), layout.numel())?;
        let rules = &self.rules[match x.dtype {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Bf16 => 2,
        }];
        if one_pass(layout) {
            return self.record_one_pass(recorder, rules, layout, x, y, mask);
        }
        let TwoPass { reducer, params } = self.two_pass(shape)?;
        let Some(reducer) = reducer else {
            return Ok(()); // no group, no element
        };
        let stats = reducer.batch_stats();
        reducer.record_batch_min_max(recorder, x, shape, stats)?;
        // A window of every table per chunk of groups (the parameters, 32 bytes a group, are the
        // largest), so the tables need not fit one binding.
        let dispatches: Vec<_> = self
            .ctx
            .channel_chunks(self.groups, ChannelParams::BYTES)
            .into_iter()
            .map(|chunk| {
                let (lo, hi) = chunk.two_part(self.groups);
                Dispatch {
                    uniform: DynamicDispatch {
                        groups: chunk.count as u32,
                        hi_shift: hi.shift as u32,
                        ..Default::default()
                    },
                    bindings: QparamsBindings {
                        stats: lo.bind(stats.buffer()),
                        params: chunk.table(ChannelParams::BYTES).bind(params),
                        scales: chunk.table(4).bind(&self.scales),
                        zero_points: chunk.table(4).bind(&self.zero_points),
                        stats_hi: hi.bind(stats.buffer()),
                        rules: rules.as_entire_buffer_binding(),
                    },
                    grid: [chunk.groups, 1],
                }
            })
            .collect();
        let kernel = QparamsKernel {
            scheme: self.config.scheme(),
            dtype: x.dtype,
        };
        self.ctx.record_pass(recorder, kernel, &dispatches)?;
        if self.config.scheme() == DynamicScheme::AsymmetricFloat {
            return self.record_float_apply(recorder, rules, layout, (x, y, mask));
        }
        // torchao multiplies by the reciprocal of the scale.
        self.ctx
            .record_forward_with(recorder, params, Rounding::Reciprocal, layout, (x, y, mask))
    }

    /// The float zero-point domain's last pass of the two-pass plan: each element with its
    /// group's scale and zero point, per binding-sized chunk the windows of its groups.
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "chunk bounds within the tensor the binding checks accepted"
    )]
    fn record_float_apply(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        rules: &wgpu::Buffer,
        layout: ChannelLayout,
        (x, y, mask): (
            TensorBinding<'_>,
            TensorBinding<'_>,
            Option<TensorBinding<'_>>,
        ),
    ) -> Result<()> {
        let len = layout.numel() as u64;
        let limits = self.ctx.dispatch_limits();
        let align = self.ctx.device_limits().min_storage_buffer_offset_alignment as u64;
        let slack = if x.dtype == DType::F32 { 0 } else { align };
        // A multiple of the 2^16 granule: whole tiles of 32-element words in every chunk; short
        // enough that its windows of the qparams tables fit a binding too.
        let chunk = table_chunk(
            chunk_elems(limits.max_binding_bytes, slack, x.dtype),
            layout.outer,
            layout.inner,
            4,
            limits.max_binding_bytes,
            align,
        );
        let walk = Walk {
            group: 1,
            tile: 256 * 32,
            record: 4, // f32 scales and zero points
        };
        let b = ElementwiseBindings {
            x,
            y,
            mask,
            params: None,
        };
        let plans: Vec<_> = (0..len.div_ceil(chunk))
            .map(|c| {
                let (start, end) = (c * chunk, (c * chunk + chunk).min(len));
                let plan = plan_dispatch(&b, layout, start, end, walk, align, &limits);
                let window = plan.channels.of(4, align);
                (plan, window)
            })
            .collect();
        let kernel = FloatApplyKernel {
            dtype: x.dtype,
            masked: mask.is_some(),
        };
        let rules = rules.as_entire_buffer_binding();
        match &mask {
            Some(m) => {
                let dispatches: Vec<_> = plans
                    .iter()
                    .map(|(p, w)| {
                        p.dispatch(FloatApplyMaskedBindings {
                            x: p.x.bind(x.buffer),
                            y: p.y.bind(y.buffer),
                            mask: p.mask.bind(m.buffer),
                            scales: w.bind(&self.scales),
                            rules: rules.clone(),
                            zero_points: w.bind(&self.zero_points),
                        })
                    })
                    .collect();
                self.ctx.record_pass(recorder, kernel, &dispatches)
            }
            None => {
                let dispatches: Vec<_> = plans
                    .iter()
                    .map(|(p, w)| {
                        p.dispatch(FloatApplyBindings {
                            x: p.x.bind(x.buffer),
                            y: p.y.bind(y.buffer),
                            scales: w.bind(&self.scales),
                            rules: rules.clone(),
                            zero_points: w.bind(&self.zero_points),
                        })
                    })
                    .collect();
                self.ctx.record_pass(recorder, kernel, &dispatches)
            }
        }
    }

    /// The one-pass plan: per binding-sized chunk (whole tiles of whole groups), one dispatch.
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "chunk bounds within the tensor the binding checks accepted"
    )]
    fn record_one_pass(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        rules: &wgpu::Buffer,
        layout: ChannelLayout,
        x: TensorBinding<'_>,
        y: TensorBinding<'_>,
        mask: Option<TensorBinding<'_>>,
    ) -> Result<()> {
        let len = layout.numel() as u64;
        if len == 0 {
            return Ok(());
        }
        let limits = self.ctx.dispatch_limits();
        let align = self.ctx.device_limits().min_storage_buffer_offset_alignment as u64;
        let slack = if x.dtype == DType::F32 { 0 } else { align };
        // A multiple of the 2^16 granule, so every chunk holds whole tiles and whole groups.
        let chunk = chunk_elems(limits.max_binding_bytes, slack, x.dtype);
        let run = one_pass_run(self.ctx.dynamic_run(), layout.inner as u32, chunk);
        let walk = Walk {
            group: 1,
            tile: 256 * run as u64,
            record: 4, // f32 scales and zero points
        };
        let b = ElementwiseBindings {
            x,
            y,
            mask,
            params: None,
        };
        // Per chunk, the window of its groups in the scale and zero-point tables (same offsets in
        // both); the kernel indexes them from the uniform's channel_start.
        let plans: Vec<_> = (0..len.div_ceil(chunk))
            .map(|c| {
                let (start, end) = (c * chunk, (c * chunk + chunk).min(len));
                let plan = plan_dispatch(&b, layout, start, end, walk, align, &limits);
                let window = plan.channels.of(4, align);
                (plan, window)
            })
            .collect();
        let kernel = GroupsKernel {
            scheme: self.config.scheme(),
            dtype: x.dtype,
            group: layout.inner as u32,
            run,
            masked: mask.is_some(),
        };
        let rules = rules.as_entire_buffer_binding();
        match &mask {
            Some(m) => {
                let dispatches: Vec<_> = plans
                    .iter()
                    .map(|(p, w)| {
                        p.dispatch(GroupsMaskedBindings {
                            x: p.x.bind(x.buffer),
                            y: p.y.bind(y.buffer),
                            mask: p.mask.bind(m.buffer),
                            scales: w.bind(&self.scales),
                            rules: rules.clone(),
                            zero_points: w.bind(&self.zero_points),
                        })
                    })
                    .collect();
                self.ctx.record_pass(recorder, kernel, &dispatches)
            }
            None => {
                let dispatches: Vec<_> = plans
                    .iter()
                    .map(|(p, w)| {
                        p.dispatch(GroupsBindings {
                            x: p.x.bind(x.buffer),
                            y: p.y.bind(y.buffer),
                            scales: w.bind(&self.scales),
                            rules: rules.clone(),
                            zero_points: w.bind(&self.zero_points),
                        })
                    })
                    .collect();
                self.ctx.record_pass(recorder, kernel, &dispatches)
            }
        }
    }

    /// Device level: [`Self::record_forward`] on device tensors, submitted at once.
    pub fn forward_device(
        &self,
        x: &GpuTensor,
        shape: &[usize],
        y: &GpuTensor,
        mask: Option<&GpuMask>,
    ) -> Result<()> {
        check_forward_lengths(x, shape, y, mask)?;
        self.ctx
            .run_recorded("fakequant dynamic forward", |encoder| {
                self.record_forward(
                    encoder,
                    x.binding(),
                    shape,
                    y.binding(),
                    mask.map(GpuMask::binding),
                )
            })
    }

    /// Host level: the dynamic fake-quantization of host data of any element type, with the
    /// qparams it chose.
    pub fn forward<T: Element>(&self, x: &[T], shape: &[usize]) -> Result<DynamicOutput<T>> {
        let out = self.ctx.forward_on_host(x, shape, |x, y, mask| {
            self.forward_device(x, shape, y, Some(mask))
        })?;
        let (scales, zero_points) = self.read_qparams()?;
        Ok(DynamicOutput {
            y: out.y,
            mask: out.mask,
            scales,
            zero_points,
        })
    }
}

/// What the layout tests check for this family.
pub(crate) fn declarations() -> FamilyDecl {
    FamilyDecl {
        entry_points: vec![
            EntryPointDecl::of::<QparamsBindings>(&DYNAMIC, "dynamic_qparams"),
            EntryPointDecl::of::<GroupsBindings>(&DYNAMIC_GROUPS_F32, "dynamic_groups"),
            EntryPointDecl::of::<GroupsMaskedBindings>(
                &DYNAMIC_GROUPS_F32,
                "dynamic_groups_masked",
            ),
            EntryPointDecl::of::<GroupsBindings>(&DYNAMIC_GROUPS_HALF, "dynamic_groups"),
            EntryPointDecl::of::<GroupsMaskedBindings>(
                &DYNAMIC_GROUPS_HALF,
                "dynamic_groups_masked",
            ),
            EntryPointDecl::of::<FloatApplyBindings>(&DYNAMIC_GROUPS_F32, "dynamic_float_apply"),
            EntryPointDecl::of::<FloatApplyMaskedBindings>(
                &DYNAMIC_GROUPS_F32,
                "dynamic_float_apply_masked",
            ),
            EntryPointDecl::of::<FloatApplyBindings>(&DYNAMIC_GROUPS_HALF, "dynamic_float_apply"),
            EntryPointDecl::of::<FloatApplyMaskedBindings>(
                &DYNAMIC_GROUPS_HALF,
                "dynamic_float_apply_masked",
            ),
        ],
        structs: vec![
            StructDecl::of::<DynamicDispatch>(&DYNAMIC),
            StructDecl::of::<ChannelParams>(&DYNAMIC),
            StructDecl::of::<DispatchUniform>(&DYNAMIC_GROUPS_F32),
            StructDecl::of::<DynamicRules>(&DYNAMIC),
            StructDecl::of::<DynamicRules>(&DYNAMIC_GROUPS_HALF),
        ],
    }
}
