//! The dynamic fake-quantization family (see [`crate::dynamic`]): per call, the groups' min and max
//! (the observers' exact reductions), their qparams (`shaders/dynamic.wgsl`), then the elementwise
//! forward with them. Two passes over `x`; the integer zero-point schemes run here, the float
//! zero-point domain on the reference only (for now).

use super::context::GpuContext;
use super::fake_quant::{ChannelParams, ElementwiseBindings, ElementwiseOp};
use super::kernel::planning::per_channel_groups;
use super::kernel::recording::Dispatch;
use super::kernel::shaders::{Shader, DYNAMIC};
use super::kernel::{bindings, uniform, EntryPointDecl, FamilyDecl, Kernel, Recorder, StructDecl};
use super::memory::{check_len, GpuMask, GpuTensor, TensorBinding};
use super::observer::GpuObserver;
use crate::dtype::{DType, Element};
use crate::dynamic::{DynamicConfig, DynamicOutput, DynamicScheme};
use crate::error::{Error, Result};
use crate::observer::{Averaging, ObserverConfig, QScheme};
use crate::quant::{numel, ChannelLayout, Rounding};

/// The one entry point of `shaders/dynamic.wgsl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct DynamicKernel;

impl Kernel for DynamicKernel {
    fn shader(&self) -> &'static Shader {
        &DYNAMIC
    }

    fn entry_point(&self) -> &'static str {
        "dynamic_qparams"
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }
}

bindings! {
    /// `dynamic_qparams`: the groups' statistics in, their fake-quant parameters and qparams out.
    QparamsBindings {
        stats: Read @ 1,
        params: ReadWrite @ 2,
        qparams: ReadWrite @ 3,
    }
}

uniform! {
    /// The uniform of `dynamic_qparams`.
    struct DynamicDispatch as "DynamicDispatch" {
        groups: u32,
        scheme: u32,
        qmin: i32,
        qmax: i32,
        eps: u32,
        levels: u32,
        half_levels: u32,
        dtype: u32,
    }
}

/// A dynamic fake-quantization on the device for tensors of one shape's groups: its own group
/// statistics, parameters and qparams buffers, reused by every call. Create with
/// [`GpuContext::create_dynamic`].
#[derive(Debug)]
pub struct GpuDynamic {
    ctx: GpuContext,
    config: DynamicConfig,
    groups: usize,
    /// Reduces each group's min and max into its batch statistics (its state is never used).
    reducer: GpuObserver,
    params: wgpu::Buffer,
    qparams: wgpu::Buffer,
}

impl GpuContext {
    /// A dynamic fake-quantization for tensors of `shape` (only the groups matter: any shape with
    /// the same number of groups fits). The float zero-point domain is refused here
    /// ([`Error::Unsupported`]); the reference implements it.
    pub fn create_dynamic(&self, config: &DynamicConfig, shape: &[usize]) -> Result<GpuDynamic> {
        if config.scheme() == DynamicScheme::AsymmetricFloat {
            return Err(Error::Unsupported(
                "the float zero-point domain (DynamicScheme::AsymmetricFloat) runs on the \
                 reference only in this version"
                    .into(),
            ));
        }
        let groups = config.granularity().channels(shape)?;
        let reducer = self.create_observer(
            &ObserverConfig::new(
                config.range(),
                QScheme::Symmetric,
                Averaging::MinMax,
                config.granularity(),
            )?,
            shape,
        )?;
        let param_bytes =
            (groups as u64).saturating_mul(std::mem::size_of::<ChannelParams>() as u64);
        let params = self.storage_buffer_zeroed("fakequant dynamic params", param_bytes)?;
        let qparams = self.storage_buffer_zeroed(
            "fakequant dynamic qparams",
            (groups as u64).saturating_mul(8),
        )?;
        Ok(GpuDynamic {
            ctx: self.clone(),
            config: config.clone(),
            groups,
            reducer,
            params,
            qparams,
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

    /// The qparams of the last call: `groups` f32 scales, then `groups` f32 zero points (exact
    /// integers), for recording their export into a caller's encoder.
    pub fn qparams_buffer(&self) -> &wgpu::Buffer {
        &self.qparams
    }

    /// Reads the qparams of the last call back: `(scales, zero_points)`.
    pub fn read_qparams(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let bytes =
            self.ctx
                .read_buffer(&self.qparams, 0, (self.groups as u64).saturating_mul(8))?;
        let words: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        let (scales, zero_points) = words.split_at(self.groups);
        Ok((scales.to_vec(), zero_points.to_vec()))
    }

    fn layout(&self, shape: &[usize], len: usize) -> Result<ChannelLayout> {
        let layout = self.config.granularity().layout(shape, len)?;
        check_len("groups of the shape", self.groups, layout.channels)?;
        Ok(layout)
    }

    /// Recording level: the groups' qparams from `x` (of `shape`), then `y` (and the mask) with
    /// them; the qparams stay in [`Self::qparams_buffer`].
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
        self.ctx.check_elementwise(
            ["x", "y"],
            &x,
            &y,
            mask.as_ref().map(|m| (m, true)),
            layout.numel(),
        )?;
        let stats = self.reducer.batch_stats();
        self.reducer
            .record_batch_min_max(recorder, x, shape, stats)?;
        let (qmin, qmax) = (self.config.range().qmin(), self.config.range().qmax());
        #[allow(
            clippy::arithmetic_side_effects,
            reason = "qmin and qmax are validated 16-bit values"
        )]
        let levels = (qmax - qmin) as f32;
        let uniform = DynamicDispatch {
            groups: self.groups as u32,
            scheme: match self.config.scheme() {
                DynamicScheme::Symmetric => 0,
                _ => 1,
            },
            qmin,
            qmax,
            eps: self.config.eps_for(x.dtype).to_bits(),
            levels: levels.to_bits(),
            half_levels: (levels / 2.0).to_bits(),
            dtype: match x.dtype {
                DType::F32 => 0,
                DType::F16 => 1,
                DType::Bf16 => 2,
            },
        };
        let bindings = QparamsBindings {
            stats: stats.buffer().as_entire_buffer_binding(),
            params: self.params.as_entire_buffer_binding(),
            qparams: self.qparams.as_entire_buffer_binding(),
        };
        let grid = per_channel_groups(self.groups, self.ctx.dispatch_limits().max_workgroups);
        self.ctx.record_pass(
            recorder,
            DynamicKernel,
            &[Dispatch {
                uniform,
                bindings,
                grid: [grid, 1],
            }],
        )?;
        let op = ElementwiseOp::Forward {
            // torchao multiplies by the reciprocal of the scale.
            rounding: Rounding::Reciprocal,
            per_channel: true,
            with_mask: mask.is_some(),
        };
        let bindings = ElementwiseBindings {
            x,
            y,
            mask,
            params: Some(&self.params),
        };
        self.ctx.record_elementwise(recorder, op, bindings, layout)
    }

    /// Device level: [`Self::record_forward`] on device tensors, submitted at once.
    pub fn forward_device(
        &self,
        x: &GpuTensor,
        shape: &[usize],
        y: &GpuTensor,
        mask: Option<&GpuMask>,
    ) -> Result<()> {
        check_len("x vs product of shape", numel(shape)?, x.len())?;
        check_len("y vs x", x.len(), y.len())?;
        if let Some(m) = mask {
            check_len("mask vs x", x.len(), m.len())?;
        }
        let mut encoder = self.ctx.create_encoder("fakequant dynamic forward");
        self.record_forward(
            &mut encoder,
            x.binding(),
            shape,
            y.binding(),
            mask.map(GpuMask::binding),
        )?;
        self.ctx.submit_and_wait(encoder)
    }

    /// Host level: the dynamic fake-quantization of host data of any element type, with the
    /// qparams it chose.
    pub fn forward<T: Element>(&self, x: &[T], shape: &[usize]) -> Result<DynamicOutput<T>> {
        check_len("data length vs product of shape", numel(shape)?, x.len())?;
        let x_dev = self.ctx.upload(x)?;
        let y_dev = self.ctx.create_tensor(x.len(), T::DTYPE)?;
        let mask_dev = self.ctx.create_mask(x.len())?;
        self.forward_device(&x_dev, shape, &y_dev, Some(&mask_dev))?;
        let (scales, zero_points) = self.read_qparams()?;
        Ok(DynamicOutput {
            y: self.ctx.read_tensor(&y_dev)?,
            mask: self.ctx.read_mask(&mask_dev)?,
            scales,
            zero_points,
        })
    }
}

/// What the layout tests check for this family.
pub(crate) fn declarations() -> FamilyDecl {
    FamilyDecl {
        entry_points: vec![EntryPointDecl::of::<QparamsBindings>(
            &DYNAMIC,
            DynamicKernel.entry_point(),
        )],
        structs: vec![
            StructDecl::of::<DynamicDispatch>(&DYNAMIC),
            StructDecl::of::<ChannelParams>(&DYNAMIC),
        ],
    }
}
