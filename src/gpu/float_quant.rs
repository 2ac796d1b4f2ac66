//! The floating-point fake-quantization family (see [`crate::float_quant`]): MX and NVFP4 block
//! scaling in one pass over `x` (`shaders/float_blocks.wgsl`, with the integer element
//! conversions of `shaders/float_formats.wgsl`), writing `y`, the mask, the element codes and the
//! block scales; FP8 amax scaling after the observers' exact min/max reduction
//! (`shaders/float_amax.wgsl`: the channels' scales, then the elements).

use super::context::GpuContext;
use super::fake_quant::{
    plan_dispatch, DispatchUniform, ElementwiseBindings, PlannedDispatch, Walk,
};
use super::kernel::planning::{chunk_elems, table_chunk, table_window, Window};
use super::kernel::recording::Dispatch;
use super::kernel::shaders::{
    Shader, FLOAT_AMAX_F32, FLOAT_AMAX_HALF, FLOAT_AMAX_SHADERS, FLOAT_BLOCKS_F32,
    FLOAT_BLOCKS_HALF, FLOAT_BLOCKS_SHADERS,
};
use super::kernel::{
    bindings, dtype_constant, uniform, Bindings, ElementShaders, EntryPointDecl, FamilyDecl,
    Kernel, Recorder, StructDecl,
};
use super::memory::{check_forward_lengths, check_len, GpuMask, GpuTensor, TensorBinding};
use super::observer::GpuObserver;
use super::permute::GroupsLastScratch;
use crate::dtype::{DType, Element};
use crate::error::Result;
use crate::float_quant::{
    ElementFormat, FloatQuantConfig, FloatQuantOutput, FloatScales, FloatScaling, MxScaleRule,
};
use crate::quant::{numel, ChannelLayout, ParamLayout};

uniform! {
    /// The rules of `shaders/float_blocks.wgsl` that are values, not pipeline constants.
    struct FloatRules as "FloatRules" {
        two_level: u32,
        tensor_scale: u32,
        inv_tensor_scale: u32,
        six_tensor_scale: u32,
    }
}

uniform! {
    /// The rules of `shaders/float_amax.wgsl`: amax's bounds (f32 bits; 0 and +inf for none).
    struct Fp8Rules as "Fp8Rules" {
        lower: u32,
        upper: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

/// `FORMAT` of `shaders/float_formats.wgsl`.
fn format_constant(format: ElementFormat) -> f64 {
    match format {
        ElementFormat::Fp8E4M3 => 0.0,
        ElementFormat::Fp8E5M2 => 1.0,
        ElementFormat::Fp6E2M3 => 2.0,
        ElementFormat::Fp6E3M2 => 3.0,
        ElementFormat::Fp4E2M1 => 4.0,
    }
}

/// The one-pass block kernel for one format, scaling and input type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct BlocksKernel {
    format: ElementFormat,
    /// `SCALING`: 0 MX, 1 NVFP4 (torchao), 2 NVFP4 (Model Optimizer).
    scaling: u8,
    rule: MxScaleRule,
    dtype: DType,
    masked: bool,
}

impl Kernel for BlocksKernel {
    fn shader(&self) -> &'static Shader {
        FLOAT_BLOCKS_SHADERS.for_dtype(self.dtype)
    }

    fn entry_point(&self) -> &'static str {
        if self.masked {
            "float_blocks_masked"
        } else {
            "float_blocks"
        }
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        let rule = match self.rule {
            MxScaleRule::Floor => 0.0,
            MxScaleRule::Ceil => 1.0,
            MxScaleRule::Even => 2.0,
            MxScaleRule::Rceil => 3.0,
        };
        let constants = vec![
            ("FORMAT", format_constant(self.format)),
            ("SCALING", f64::from(self.scaling)),
            ("RULE", rule),
            ("INPUT_DTYPE", dtype_constant(self.dtype)),
        ];
        ElementShaders::constants(self.dtype, constants)
    }
}

/// The FP8 amax kernels (`shaders/float_amax.wgsl`) for one format and input type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct AmaxKernel {
    format: ElementFormat,
    dtype: DType,
    /// `fp8_scales`, else the forward.
    scales: bool,
    masked: bool,
    /// The one-pass forward's block length (`fp8_groups`), or 0 for the three-pass kernels.
    group: u32,
}

impl Kernel for AmaxKernel {
    fn shader(&self) -> &'static Shader {
        FLOAT_AMAX_SHADERS.for_dtype(self.dtype)
    }

    fn entry_point(&self) -> &'static str {
        match (self.scales, self.group != 0, self.masked) {
            (true, _, _) => "fp8_scales",
            (false, true, true) => "fp8_groups_masked",
            (false, true, false) => "fp8_groups",
            (false, false, true) => "fp8_forward_masked",
            (false, false, false) => "fp8_forward",
        }
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        let constants = vec![
            ("FORMAT", format_constant(self.format)),
            ("INPUT_DTYPE", dtype_constant(self.dtype)),
            ("GROUP", f64::from(self.group.max(32))),
        ];
        ElementShaders::constants(self.dtype, constants)
    }
}

/// The block length of FP8 amax scaling's one-pass kernel for `layout`, if it takes it: blocks
/// (channels or groups) that are single runs of the tensor, of a power of two from 32 elements
/// (whole mask and code words) to the context's dynamic run (`GpuContext::dynamic_run`: 4096 on
/// CPU adapters, where one invocation per block beats a separate min/max pass; 32 on GPUs, where
/// longer blocks would leave too few invocations). A chunk of x, a multiple of 2^16 elements,
/// then holds whole blocks.
fn fp8_one_pass_group(layout: ChannelLayout, dynamic_run: u32) -> Option<u32> {
    let group = u32::try_from(layout.inner).ok()?;
    (layout.outer == 1 && group.is_power_of_two() && (32..=dynamic_run.min(4096)).contains(&group))
        .then_some(group)
}

bindings! {
    /// `fp8_scales`: the channels' statistics in, their scales out.
    Fp8ScalesBindings {
        scales: ReadWrite @ 5,
        rules: Read @ 6,
        stats: Read @ 8,
        stats_hi: Read @ 9,
    }
}

bindings! {
    /// `fp8_forward`: x's and y's windows, the scales' window in, the codes' window out.
    Fp8ForwardBindings {
        x: Input @ 2,
        y: ReadWrite @ 3,
        scales: Input @ 5,
        codes: ReadWrite @ 7,
    }
}

bindings! {
    /// `fp8_forward_masked`: the same, and the mask's window.
    Fp8ForwardMaskedBindings {
        x: Input @ 2,
        y: ReadWrite @ 3,
        mask: ReadWrite @ 4,
        scales: Input @ 5,
        codes: ReadWrite @ 7,
    }
}

bindings! {
    /// `fp8_groups`: x's and y's windows, the windows of the scales and codes out.
    Fp8GroupsBindings {
        x: Input @ 2,
        y: ReadWrite @ 3,
        scales: ReadWrite @ 5,
        rules: Read @ 6,
        codes: ReadWrite @ 7,
    }
}

bindings! {
    /// `fp8_groups_masked`: the same, and the mask's window.
    Fp8GroupsMaskedBindings {
        x: Input @ 2,
        y: ReadWrite @ 3,
        mask: ReadWrite @ 4,
        scales: ReadWrite @ 5,
        rules: Read @ 6,
        codes: ReadWrite @ 7,
    }
}

bindings! {
    /// `float_blocks`: x's and y's windows, the windows of the codes and scales out.
    BlocksBindings {
        x: Input @ 2,
        y: ReadWrite @ 3,
        codes: ReadWrite @ 5,
        rules: Read @ 6,
        scales: ReadWrite @ 7,
    }
}

bindings! {
    /// `float_blocks_masked`: the same, and the mask's window.
    BlocksMaskedBindings {
        x: Input @ 2,
        y: ReadWrite @ 3,
        mask: ReadWrite @ 4,
        codes: ReadWrite @ 5,
        rules: Read @ 6,
        scales: ReadWrite @ 7,
    }
}

/// A floating-point fake-quantization on the device for tensors of one shape's element count:
/// its code and scale buffers, reused by every call. Create with
/// [`GpuContext::create_float_quant`].
#[derive(Debug)]
pub struct GpuFloatQuant {
    ctx: GpuContext,
    config: FloatQuantConfig,
    len: usize,
    blocks: usize,
    /// One byte per element, four to a word.
    codes: wgpu::Buffer,
    /// One word per block: the scale byte in its low 8 bits (MX, NVFP4), or the f32 scale (FP8
    /// amax scaling, a block being a tensor, channel or group).
    scales: wgpu::Buffer,
    /// `FloatRules` (MX, NVFP4) or `Fp8Rules` (amax scaling).
    rules: wgpu::Buffer,
    /// Amax scaling: reduces each block's min and max (its state is never used).
    reducer: Option<GpuObserver>,
}

impl GpuContext {
    /// A floating-point fake-quantization for tensors of `shape` (any shape with as many elements
    /// and blocks fits).
    pub fn create_float_quant(
        &self,
        config: &FloatQuantConfig,
        shape: &[usize],
    ) -> Result<GpuFloatQuant> {
        let len = numel(shape)?;
        let granularity = config.granularity(shape);
        // Strided blocks run on their groups-last view: the kernels see its layout.
        let layout = granularity.param_layout(shape, len)?.kernel_layout();
        let (rules, reducer) = match config.scaling() {
            FloatScaling::Amax { lower, upper, .. } => {
                let rules = Fp8Rules {
                    lower: lower.unwrap_or(0.0).to_bits(),
                    upper: upper.unwrap_or(f32::INFINITY).to_bits(),
                    ..Default::default()
                };
                let reducer = self.create_min_max_reducer(granularity, shape)?;
                (bytemuck::bytes_of(&rules).to_vec(), reducer)
            }
            FloatScaling::Mx(_) | FloatScaling::Nvfp4(_) | FloatScaling::Nvfp4Modelopt(_) => {
                let tensor_scale = match config.scaling() {
                    FloatScaling::Nvfp4(g) => g,
                    FloatScaling::Nvfp4Modelopt(g) => Some(g),
                    _ => None,
                };
                let rules = FloatRules {
                    two_level: u32::from(tensor_scale.is_some()),
                    tensor_scale: tensor_scale.unwrap_or(1.0).to_bits(),
                    // The host's IEEE division: the correctly rounded reciprocal torchao uses.
                    inv_tensor_scale: (1.0 / tensor_scale.unwrap_or(1.0)).to_bits(),
                    // The host's IEEE product, as the reference forms it.
                    six_tensor_scale: (6.0 * tensor_scale.unwrap_or(1.0)).to_bits(),
                };
                (bytemuck::bytes_of(&rules).to_vec(), None)
            }
        };
        Ok(GpuFloatQuant {
            ctx: self.clone(),
            config: config.clone(),
            len,
            blocks: layout.channels,
            codes: self
                .storage_buffer_zeroed("fakequant float codes", (len as u64).next_multiple_of(4))?,
            scales: self.storage_buffer_zeroed(
                "fakequant float scales",
                (layout.channels as u64).saturating_mul(4),
            )?,
            rules: self.constant_storage("fakequant float rules", &rules)?,
            reducer,
        })
    }
}

impl GpuFloatQuant {
    /// The configuration.
    pub fn config(&self) -> &FloatQuantConfig {
        &self.config
    }

    /// The context it was made on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The element codes of the last call: one byte per element (its low bits the code), in a
    /// buffer of whole words.
    pub fn codes_buffer(&self) -> &wgpu::Buffer {
        &self.codes
    }

    /// The block scales of the last call: one u32 per block, the E8M0 (MX) or E4M3 (NVFP4) byte
    /// in its low 8 bits.
    pub fn scales_buffer(&self) -> &wgpu::Buffer {
        &self.scales
    }

    /// Reads the element codes of the last call back.
    pub fn read_codes(&self) -> Result<Vec<u8>> {
        let mut bytes =
            self.ctx
                .read_buffer(&self.codes, 0, (self.len as u64).next_multiple_of(4))?;
        bytes.truncate(self.len);
        Ok(bytes)
    }

    /// Reads the scales of the last call back.
    pub fn read_scales(&self) -> Result<FloatScales> {
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&self.ctx.read_buffer(
            &self.scales,
            0,
            (self.blocks as u64).saturating_mul(4),
        )?);
        let bytes = || words.iter().map(|&w| w as u8).collect();
        Ok(match self.config.scaling() {
            FloatScaling::Amax { .. } => {
                FloatScales::F32(words.iter().map(|&w| f32::from_bits(w)).collect())
            }
            FloatScaling::Nvfp4(tensor) => FloatScales::E4M3 {
                blocks: bytes(),
                tensor,
            },
            FloatScaling::Nvfp4Modelopt(g) => FloatScales::E4M3 {
                blocks: bytes(),
                tensor: Some(g),
            },
            FloatScaling::Mx(_) => FloatScales::E8M0(bytes()),
        })
    }

    /// `shape` checked against the object's elements and blocks.
    fn check_shape(&self, shape: &[usize]) -> Result<ParamLayout> {
        let len = numel(shape)?;
        check_len("elements of the shape", self.len, len)?;
        let layout = self.config.granularity(shape).param_layout(shape, len)?;
        check_len("blocks of the shape", self.blocks, layout.channels())?;
        Ok(layout)
    }

    /// The kernels' layout of `shape`. Strided blocks have none: they reach the kernels as
    /// their groups-last view ([`GroupsLastScratch`]).
    fn layout(&self, shape: &[usize]) -> Result<ChannelLayout> {
        self.check_shape(shape)?.channel_layout()
    }

    /// Recording level: `y` (and the mask) from `x` of `shape`; the codes and scales stay in
    /// [`Self::codes_buffer`] and [`Self::scales_buffer`].
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "chunk bounds within the tensor the binding checks accepted"
    )]
    pub fn record_forward(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        x: TensorBinding<'_>,
        shape: &[usize],
        y: TensorBinding<'_>,
        mask: Option<TensorBinding<'_>>,
    ) -> Result<()> {
        if let Some(view) = GroupsLastScratch::of(self.config.granularity(shape), shape)? {
            // Strided blocks on their groups-last view: each block's amax and scale (in the same
            // table order) and each element's conversion are the same; y, the mask and the
            // codes moved back.
            let n = self.check_shape(shape)?.numel();
            self.ctx.check_forward(&x, &y, mask.as_ref(), n)?;
            view.record_forward(&self.ctx, recorder, (x, y, mask), |r, x, shape, y, m| {
                self.record_forward(r, x, shape, y, m)
            })?;
            return view.record_bytes_from_groups_last(&self.ctx, recorder, &self.codes);
        }
        let layout = self.layout(shape)?;
        self.ctx
            .check_forward(&x, &y, mask.as_ref(), layout.numel())?;
        let len = layout.numel() as u64;
        if len == 0 {
            return Ok(());
        }
        let limits = self.ctx.dispatch_limits();
        let align = self.ctx.device_limits().min_storage_buffer_offset_alignment as u64;
        let slack = if x.dtype == DType::F32 { 0 } else { align };
        // A multiple of the 2^16 granule: every chunk holds whole runs of 32 (whole blocks), and
        // its codes start on an aligned word; short enough that its window of the scales fits a
        // binding too.
        let chunk = table_chunk(
            chunk_elems(limits.max_binding_bytes, slack, x.dtype),
            layout.outer,
            layout.inner,
            4,
            limits.max_binding_bytes,
            align,
        );
        // FP8 amax scaling in one pass where an invocation takes a whole block (see
        // `fp8_one_pass_group`): a tile is then 256 blocks.
        let one_pass_group = self
            .reducer
            .as_ref()
            .and_then(|_| fp8_one_pass_group(layout, self.ctx.dynamic_run()));
        let walk = Walk {
            group: 1,
            tile: 256 * u64::from(one_pass_group.unwrap_or(32)),
            record: 4, // a scale word per block
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
                let scales = plan.channels.of(4, align);
                let codes = table_window(4, 0, start / 4, (end - start).div_ceil(4), align);
                debug_assert_eq!(codes.shift, 0, "chunks start on aligned code words");
                (plan, scales, codes)
            })
            .collect();
        if let Some(group) = one_pass_group {
            return self.record_amax_one_pass(recorder, group, (x, y), mask, &plans);
        }
        if let Some(reducer) = &self.reducer {
            return self.record_amax(recorder, reducer, (x, shape, y), mask, &plans);
        }
        let kernel = BlocksKernel {
            format: self.config.format(),
            scaling: match self.config.scaling() {
                FloatScaling::Nvfp4(_) => 1,
                FloatScaling::Nvfp4Modelopt(_) => 2,
                _ => 0,
            },
            rule: match self.config.scaling() {
                FloatScaling::Mx(rule) => rule,
                _ => MxScaleRule::Rceil,
            },
            dtype: x.dtype,
            masked: mask.is_some(),
        };
        let rules = self.rules.as_entire_buffer_binding();
        match &mask {
            Some(m) => self.record_plans(recorder, kernel, &plans, |p, scales, codes| {
                BlocksMaskedBindings {
                    x: p.x.bind(x.buffer),
                    y: p.y.bind(y.buffer),
                    mask: p.mask.bind(m.buffer),
                    codes: codes.bind(&self.codes),
                    rules: rules.clone(),
                    scales: scales.bind(&self.scales),
                }
            }),
            None => self.record_plans(recorder, kernel, &plans, |p, scales, codes| {
                BlocksBindings {
                    x: p.x.bind(x.buffer),
                    y: p.y.bind(y.buffer),
                    codes: codes.bind(&self.codes),
                    rules: rules.clone(),
                    scales: scales.bind(&self.scales),
                }
            }),
        }
    }

    /// Records `kernel`'s pass with a dispatch per plan, its bindings from `bind` (given the plan
    /// and its windows of the scales and the codes).
    fn record_plans<'a, B: Bindings<'a>>(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        kernel: impl Kernel,
        plans: &[(PlannedDispatch, Window, Window)],
        bind: impl Fn(&PlannedDispatch, &Window, &Window) -> B,
    ) -> Result<()> {
        let dispatches: Vec<_> = plans
            .iter()
            .map(|(p, scales, codes)| p.dispatch(bind(p, scales, codes)))
            .collect();
        self.ctx.record_pass(recorder, kernel, &dispatches)
    }

    /// FP8 amax scaling in one pass: each invocation a block of `group` elements (its amax, its
    /// scale, its elements).
    fn record_amax_one_pass(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        group: u32,
        (x, y): (TensorBinding<'_>, TensorBinding<'_>),
        mask: Option<TensorBinding<'_>>,
        plans: &[(PlannedDispatch, Window, Window)],
    ) -> Result<()> {
        let kernel = AmaxKernel {
            format: self.config.format(),
            dtype: x.dtype,
            scales: false,
            masked: mask.is_some(),
            group,
        };
        let rules = self.rules.as_entire_buffer_binding();
        match &mask {
            Some(m) => self.record_plans(recorder, kernel, plans, |p, scales, codes| {
                Fp8GroupsMaskedBindings {
                    x: p.x.bind(x.buffer),
                    y: p.y.bind(y.buffer),
                    mask: p.mask.bind(m.buffer),
                    scales: scales.bind(&self.scales),
                    rules: rules.clone(),
                    codes: codes.bind(&self.codes),
                }
            }),
            None => self.record_plans(recorder, kernel, plans, |p, scales, codes| {
                Fp8GroupsBindings {
                    x: p.x.bind(x.buffer),
                    y: p.y.bind(y.buffer),
                    scales: scales.bind(&self.scales),
                    rules: rules.clone(),
                    codes: codes.bind(&self.codes),
                }
            }),
        }
    }

    /// FP8 amax scaling: the blocks' min and max, their scales, then the elements.
    fn record_amax(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        reducer: &GpuObserver,
        (x, shape, y): (TensorBinding<'_>, &[usize], TensorBinding<'_>),
        mask: Option<TensorBinding<'_>>,
        plans: &[(PlannedDispatch, Window, Window)],
    ) -> Result<()> {
        let stats = reducer.batch_stats();
        reducer.record_batch_min_max(recorder, x, shape, stats)?;
        let kernel = |scales, masked| AmaxKernel {
            format: self.config.format(),
            dtype: x.dtype,
            scales,
            masked,
            group: 0,
        };
        // A window of every table per chunk of blocks, so the tables need not fit one binding.
        let scale_passes: Vec<_> = self
            .ctx
            .channel_chunks(self.blocks, 4)
            .into_iter()
            .map(|chunk| {
                let (lo, hi) = chunk.two_part(self.blocks);
                Dispatch {
                    uniform: DispatchUniform::for_channels_with(
                        chunk.count as u32,
                        hi.shift as u32,
                    ),
                    bindings: Fp8ScalesBindings {
                        scales: lo.bind(&self.scales),
                        rules: self.rules.as_entire_buffer_binding(),
                        stats: lo.bind(stats.buffer()),
                        stats_hi: hi.bind(stats.buffer()),
                    },
                    grid: [chunk.groups, 1],
                }
            })
            .collect();
        self.ctx
            .record_pass(recorder, kernel(true, false), &scale_passes)?;
        match &mask {
            Some(m) => {
                self.record_plans(recorder, kernel(false, true), plans, |p, scales, codes| {
                    Fp8ForwardMaskedBindings {
                        x: p.x.bind(x.buffer),
                        y: p.y.bind(y.buffer),
                        mask: p.mask.bind(m.buffer),
                        scales: scales.bind(&self.scales),
                        codes: codes.bind(&self.codes),
                    }
                })
            }
            None => self.record_plans(recorder, kernel(false, false), plans, |p, scales, codes| {
                Fp8ForwardBindings {
                    x: p.x.bind(x.buffer),
                    y: p.y.bind(y.buffer),
                    scales: scales.bind(&self.scales),
                    codes: codes.bind(&self.codes),
                }
            }),
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
        self.ctx.run_recorded("fakequant float forward", |encoder| {
            self.record_forward(
                encoder,
                x.binding(),
                shape,
                y.binding(),
                mask.map(GpuMask::binding),
            )
        })
    }

    /// Host level: the fake-quantization of host data of any element type, with the codes and
    /// scales it chose.
    pub fn forward<T: Element>(&self, x: &[T], shape: &[usize]) -> Result<FloatQuantOutput<T>> {
        let out = self.ctx.forward_on_host(x, shape, |x, y, mask| {
            self.forward_device(x, shape, y, Some(mask))
        })?;
        Ok(FloatQuantOutput {
            y: out.y,
            mask: out.mask,
            codes: self.read_codes()?,
            scales: self.read_scales()?,
        })
    }
}

/// What the layout tests check for this family.
pub(crate) fn declarations() -> FamilyDecl {
    FamilyDecl {
        entry_points: vec![
            EntryPointDecl::of::<BlocksBindings>(&FLOAT_BLOCKS_F32, "float_blocks"),
            EntryPointDecl::of::<BlocksMaskedBindings>(&FLOAT_BLOCKS_F32, "float_blocks_masked"),
            EntryPointDecl::of::<BlocksBindings>(&FLOAT_BLOCKS_HALF, "float_blocks"),
            EntryPointDecl::of::<BlocksMaskedBindings>(&FLOAT_BLOCKS_HALF, "float_blocks_masked"),
            EntryPointDecl::of::<Fp8ScalesBindings>(&FLOAT_AMAX_F32, "fp8_scales"),
            EntryPointDecl::of::<Fp8ForwardBindings>(&FLOAT_AMAX_F32, "fp8_forward"),
            EntryPointDecl::of::<Fp8ForwardMaskedBindings>(&FLOAT_AMAX_F32, "fp8_forward_masked"),
            EntryPointDecl::of::<Fp8ScalesBindings>(&FLOAT_AMAX_HALF, "fp8_scales"),
            EntryPointDecl::of::<Fp8ForwardBindings>(&FLOAT_AMAX_HALF, "fp8_forward"),
            EntryPointDecl::of::<Fp8ForwardMaskedBindings>(&FLOAT_AMAX_HALF, "fp8_forward_masked"),
            EntryPointDecl::of::<Fp8GroupsBindings>(&FLOAT_AMAX_F32, "fp8_groups"),
            EntryPointDecl::of::<Fp8GroupsMaskedBindings>(&FLOAT_AMAX_F32, "fp8_groups_masked"),
            EntryPointDecl::of::<Fp8GroupsBindings>(&FLOAT_AMAX_HALF, "fp8_groups"),
            EntryPointDecl::of::<Fp8GroupsMaskedBindings>(&FLOAT_AMAX_HALF, "fp8_groups_masked"),
        ],
        structs: vec![
            StructDecl::of::<FloatRules>(&FLOAT_BLOCKS_F32),
            StructDecl::of::<DispatchUniform>(&FLOAT_BLOCKS_F32),
            StructDecl::of::<Fp8Rules>(&FLOAT_AMAX_F32),
            StructDecl::of::<DispatchUniform>(&FLOAT_AMAX_F32),
        ],
    }
}
