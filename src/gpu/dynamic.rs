//! The dynamic fake-quantization family (see [`crate::dynamic`]), integer zero-point schemes (the
//! float domain runs on the reference only, for now). Groups of a power-of-two size from 32 to 4096
//! take one pass over `x` (`shaders/dynamic_groups.wgsl`: a workgroup reduces whole groups, derives
//! their qparams and fake-quantizes them); other groups two: the observers' exact min/max
//! reduction, then their qparams (`shaders/dynamic.wgsl`) and the elementwise forward. Both share
//! the rules of `shaders/dynamic_rules.wgsl`, read from a small buffer per input type (one
//! pipeline serves every configuration).

use super::context::GpuContext;
use super::fake_quant::{plan_dispatch, ChannelParams, DispatchUniform, ElementwiseBindings, Walk};
use super::kernel::planning::{chunk_elems, per_channel_groups};
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
use crate::dtype::{DType, Element};
use crate::dynamic::{DynamicConfig, DynamicOutput, DynamicScheme};
use crate::error::{Error, Result};

use crate::quant::{numel, ChannelLayout, Rounding};

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

/// Why the float zero-point domain refuses `layout` on the device.
fn float_domain_unsupported(layout: ChannelLayout) -> Error {
    Error::Unsupported(format!(
        "the float zero-point domain (DynamicScheme::AsymmetricFloat) runs on the device for \
         contiguous groups of a power-of-two size from 32 to 4096 (the one-pass kernel), not for \
         groups of {} in {} runs; the reference takes any",
        layout.inner, layout.outer
    ))
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
        _pad0: u32,
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
    /// the same number of groups fits). The float zero-point domain is refused here
    /// ([`Error::Unsupported`]); the reference implements it.
    pub fn create_dynamic(&self, config: &DynamicConfig, shape: &[usize]) -> Result<GpuDynamic> {
        let groups = config.granularity().channels(shape)?;
        let layout = config.granularity().layout(shape, numel(shape)?)?;
        if config.scheme() == DynamicScheme::AsymmetricFloat && !one_pass(layout) {
            return Err(float_domain_unsupported(layout));
        }
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

    fn layout(&self, shape: &[usize], len: usize) -> Result<ChannelLayout> {
        let layout = self.config.granularity().layout(shape, len)?;
        check_len("groups of the shape", self.groups, layout.channels)?;
        Ok(layout)
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
        if self.config.scheme() == DynamicScheme::AsymmetricFloat {
            // A shape with this object's group count whose groups the one-pass kernel does not take.
            return Err(float_domain_unsupported(layout));
        }
        let TwoPass { reducer, params } = self.two_pass(shape)?;
        let Some(reducer) = reducer else {
            return Ok(()); // no group, no element
        };
        let stats = reducer.batch_stats();
        reducer.record_batch_min_max(recorder, x, shape, stats)?;
        let bindings = QparamsBindings {
            stats: stats.buffer().as_entire_buffer_binding(),
            params: params.as_entire_buffer_binding(),
            scales: self.scales.as_entire_buffer_binding(),
            zero_points: self.zero_points.as_entire_buffer_binding(),
            rules: rules.as_entire_buffer_binding(),
        };
        let grid = per_channel_groups(self.groups, self.ctx.dispatch_limits().max_workgroups);
        self.ctx.record_pass(
            recorder,
            QparamsKernel {
                scheme: self.config.scheme(),
                dtype: x.dtype,
            },
            &[Dispatch {
                uniform: DynamicDispatch {
                    groups: self.groups as u32,
                    ..Default::default()
                },
                bindings,
                grid: [grid, 1],
            }],
        )?;
        // torchao multiplies by the reciprocal of the scale.
        self.ctx
            .record_forward_with(recorder, params, Rounding::Reciprocal, layout, (x, y, mask))
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
