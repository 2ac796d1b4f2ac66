//! The floating-point fake-quantization family (see [`crate::float_quant`]): MX and NVFP4 block
//! scaling in one pass over `x` (`shaders/float_blocks.wgsl`, with the integer element
//! conversions of `shaders/float_formats.wgsl`), writing `y`, the mask, the element codes and the
//! block scales. FP8 amax scaling runs on the reference only for now.

use super::context::GpuContext;
use super::fake_quant::{plan_dispatch, DispatchUniform, ElementwiseBindings, Walk};
use super::kernel::planning::{chunk_elems, table_window};
use super::kernel::recording::Dispatch;
use super::kernel::shaders::{Shader, FLOAT_BLOCKS_F32, FLOAT_BLOCKS_HALF};
use super::kernel::{
    bindings, dtype_constant, uniform, EntryPointDecl, FamilyDecl, Kernel, Recorder, StructDecl,
};
use super::memory::{check_forward_lengths, check_len, GpuMask, GpuTensor, TensorBinding};
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::float_quant::{
    ElementFormat, FloatQuantConfig, FloatQuantOutput, FloatScales, FloatScaling, MxScaleRule,
};
use crate::quant::{numel, ChannelLayout};

uniform! {
    /// The rules of `shaders/float_blocks.wgsl` that are values, not pipeline constants.
    struct FloatRules as "FloatRules" {
        two_level: u32,
        tensor_scale: u32,
        inv_tensor_scale: u32,
        _pad0: u32,
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
    /// `SCALING`: 0 MX, 1 NVFP4.
    nvfp4: bool,
    rule: MxScaleRule,
    dtype: DType,
    masked: bool,
}

impl Kernel for BlocksKernel {
    fn shader(&self) -> &'static Shader {
        match self.dtype {
            DType::F32 => &FLOAT_BLOCKS_F32,
            _ => &FLOAT_BLOCKS_HALF,
        }
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
        let mut constants = vec![
            ("FORMAT", format_constant(self.format)),
            ("SCALING", f64::from(u8::from(self.nvfp4))),
            ("RULE", rule),
            ("INPUT_DTYPE", dtype_constant(self.dtype)),
        ];
        if self.dtype != DType::F32 {
            constants.push(("DTYPE", dtype_constant(self.dtype)));
        }
        constants
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
    /// One word per block, the scale byte in its low 8 bits.
    scales: wgpu::Buffer,
    rules: wgpu::Buffer,
}

impl GpuContext {
    /// A floating-point fake-quantization for tensors of `shape` (any shape with as many elements
    /// and blocks fits). MX and NVFP4 run on the device; FP8 amax scaling is refused here
    /// ([`Error::Unsupported`]), the reference implements it.
    pub fn create_float_quant(
        &self,
        config: &FloatQuantConfig,
        shape: &[usize],
    ) -> Result<GpuFloatQuant> {
        let len = numel(shape)?;
        let (block, tensor_scale) =
            match config.scaling() {
                FloatScaling::Amax { .. } => return Err(Error::Unsupported(
                    "FP8 amax scaling runs on the reference (reference::float_quant) only, for \
                     now; MX and NVFP4 block scaling run on the device"
                        .into(),
                )),
                FloatScaling::Mx(_) => (32, None),
                FloatScaling::Nvfp4(g) => (16, g),
            };
        let layout = config.granularity(shape).layout(shape, len)?;
        debug_assert_eq!(layout.inner, block);
        let rules = FloatRules {
            two_level: u32::from(tensor_scale.is_some()),
            tensor_scale: tensor_scale.unwrap_or(1.0).to_bits(),
            // The host's IEEE division: the correctly rounded reciprocal torchao uses.
            inv_tensor_scale: (1.0 / tensor_scale.unwrap_or(1.0)).to_bits(),
            ..Default::default()
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
            rules: self.constant_storage("fakequant float rules", bytemuck::bytes_of(&rules))?,
        })
    }
}

impl GpuFloatQuant {
    /// The configuration.
    pub fn config(&self) -> &FloatQuantConfig {
        &self.config
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
        let bytes = words.into_iter().map(|w| w as u8).collect();
        Ok(match self.config.scaling() {
            FloatScaling::Nvfp4(tensor) => FloatScales::E4M3 {
                blocks: bytes,
                tensor,
            },
            _ => FloatScales::E8M0(bytes),
        })
    }

    fn layout(&self, shape: &[usize]) -> Result<ChannelLayout> {
        let len = numel(shape)?;
        check_len("elements of the shape", self.len, len)?;
        let layout = self.config.granularity(shape).layout(shape, len)?;
        check_len("blocks of the shape", self.blocks, layout.channels)?;
        Ok(layout)
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
        // its codes start on an aligned word.
        let chunk = chunk_elems(limits.max_binding_bytes, slack, x.dtype);
        let walk = Walk {
            group: 1,
            tile: 256 * 32,
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
        let kernel = BlocksKernel {
            format: self.config.format(),
            nvfp4: matches!(self.config.scaling(), FloatScaling::Nvfp4(_)),
            rule: match self.config.scaling() {
                FloatScaling::Mx(rule) => rule,
                _ => MxScaleRule::Rceil,
            },
            dtype: x.dtype,
            masked: mask.is_some(),
        };
        let rules = self.rules.as_entire_buffer_binding();
        match &mask {
            Some(m) => {
                let dispatches: Vec<_> = plans
                    .iter()
                    .map(|(p, scales, codes)| Dispatch {
                        uniform: p.uniform,
                        bindings: BlocksMaskedBindings {
                            x: p.x.bind(x.buffer),
                            y: p.y.bind(y.buffer),
                            mask: p.mask.bind(m.buffer),
                            codes: codes.bind(&self.codes),
                            rules: rules.clone(),
                            scales: scales.bind(&self.scales),
                        },
                        grid: p.grid,
                    })
                    .collect();
                self.ctx.record_pass(recorder, kernel, &dispatches)
            }
            None => {
                let dispatches: Vec<_> = plans
                    .iter()
                    .map(|(p, scales, codes)| Dispatch {
                        uniform: p.uniform,
                        bindings: BlocksBindings {
                            x: p.x.bind(x.buffer),
                            y: p.y.bind(y.buffer),
                            codes: codes.bind(&self.codes),
                            rules: rules.clone(),
                            scales: scales.bind(&self.scales),
                        },
                        grid: p.grid,
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
        ],
        structs: vec![
            StructDecl::of::<FloatRules>(&FLOAT_BLOCKS_F32),
            StructDecl::of::<DispatchUniform>(&FLOAT_BLOCKS_F32),
        ],
    }
}
