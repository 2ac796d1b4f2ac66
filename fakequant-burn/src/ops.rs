//! The QAT ops as a burn backend extension: implemented for burn's CubeCL backend (the library's
//! kernels on the tensors' own wgpu buffers) and for burn's autodiff decorator (the backward
//! registered with burn's graph, its state the bit-packed mask).
//!
//! Every argument was validated by the public functions in `crate::functions` before a call
//! reaches here, so these functions do not return errors.

use std::sync::Arc;

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{backend_extension, AutodiffBackend, Backend, TensorMetadata};
use burn::tensor::DType as BurnDType;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn_autodiff::Autodiff;
use burn_cubecl::CubeBackend;
use fakequant::{
    GpuContext, GpuDynamic, GpuFakeQuant, GpuFloatQuant, GpuLsq, GpuLsqGrads, GpuObserver, Mode,
    TensorBinding,
};

use crate::interop::{bind, bind_input, element_type, empty_like, submit, Bound};

/// What a fake-quant op runs, prepared on the shared device: the non-tensor argument of the
/// fake-quant ops. Its parameters (or its observer's state) live in device buffers.
#[derive(Debug, Clone)]
pub enum FakeQuantKernel {
    /// Fixed parameters.
    Fixed(Arc<GpuFakeQuant>),
    /// An observer's fused step: statistics, qparams and fake-quant in one submission, the
    /// state updated on the device (see [`Mode`]).
    Observer(Arc<GpuObserver>, Mode),
    /// Dynamic qparams per group, token, channel or tensor, from each call's own values (one
    /// pass for groups of 32 to 4096); the chosen qparams stay in the object's tables.
    Dynamic(Arc<GpuDynamic>),
    /// A floating-point format (FP8, MX, NVFP4); with `pass_through` the backward is `dx = dy`
    /// (torchao's MX and NVFP4 QAT), otherwise the straight-through estimator with the clip mask.
    Float {
        /// The format and its scales, prepared for one shape.
        quant: Arc<GpuFloatQuant>,
        /// `dx = dy` instead of the masked straight-through estimator.
        pass_through: bool,
    },
}

impl FakeQuantKernel {
    fn ctx(&self) -> &GpuContext {
        match self {
            Self::Fixed(gpu) => gpu.context(),
            Self::Observer(obs, _) => obs.context(),
            Self::Dynamic(dynamic) => dynamic.context(),
            Self::Float { quant, .. } => quant.context(),
        }
    }

    /// Whether the backward passes `dy` through unmasked.
    fn pass_through(&self) -> bool {
        matches!(
            self,
            Self::Float {
                pass_through: true,
                ..
            }
        )
    }

    fn record(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: TensorBinding<'_>,
        shape: &[usize],
        y: TensorBinding<'_>,
        mask: Option<TensorBinding<'_>>,
    ) -> fakequant::Result<()> {
        match self {
            Self::Fixed(gpu) => gpu.record_forward(encoder, x, shape, y, mask),
            Self::Observer(obs, mode) => obs.record_step(encoder, x, shape, y, mask, *mode),
            Self::Dynamic(dynamic) => dynamic.record_forward(encoder, x, shape, y, mask),
            Self::Float { quant, .. } => quant.record_forward(encoder, x, shape, y, mask),
        }
    }
}

/// The library's kernels as burn operations. Use the types of this crate
/// ([`crate::FakeQuantizer`], [`crate::ObserverQuantizer`], [`crate::LsqQuantizer`]): they
/// validate their arguments and return errors, which these do not.
#[backend_extension(Cube, Autodiff, Fusion: cfg(feature = "fusion"))]
pub trait QatOps: Backend {
    /// `y = fake_quant(x)`; under autodiff, the straight-through backward with the clip mask.
    #[fusion(dtype = x, shape = x)]
    fn qat_fake_quant(x: FloatTensor<Self>, kernel: FakeQuantKernel) -> FloatTensor<Self>;

    /// `y` and the bit-packed clip mask (`ceil(numel / 32)` u32 words, bit `i % 32` of word
    /// `i / 32` set where element `i` was inside the range).
    #[fusion(meta = |x, _kernel| (x.clone(), mask_spec(&x.shape)))]
    fn qat_fake_quant_masked(
        x: FloatTensor<Self>,
        kernel: FakeQuantKernel,
    ) -> (FloatTensor<Self>, IntTensor<Self>);

    /// `dx = dy * mask`: the straight-through backward.
    #[fusion(dtype = dy, shape = dy)]
    fn qat_ste_backward(
        dy: FloatTensor<Self>,
        mask: IntTensor<Self>,
        kernel: FakeQuantKernel,
    ) -> FloatTensor<Self>;

    /// The LSQ forward with the learnable `scale` and `zero_point` (f32, one per channel);
    /// under autodiff, the LSQ backward: `dx` and the gradients of both parameters.
    #[fusion(dtype = x, shape = x)]
    fn qat_lsq(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        zero_point: FloatTensor<Self>,
        kernel: LsqKernel,
    ) -> FloatTensor<Self>;

    /// The LSQ backward: `(dx, dscale, dzero_point)`, reduced per channel in the reference's
    /// order.
    #[fusion(meta = |x, _dy, scale, zero_point, _kernel| (x.clone(), scale.clone(), zero_point.clone()))]
    fn qat_lsq_backward(
        x: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        zero_point: FloatTensor<Self>,
        kernel: LsqKernel,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The packed mask of a tensor of `shape`: `ceil(numel / 32)` u32 words.
#[cfg(feature = "fusion")]
fn mask_spec(shape: &burn::tensor::Shape) -> burn::backend::fusion::custom::TensorSpec {
    burn::backend::fusion::custom::TensorSpec::new(
        vec![shape.num_elements().div_ceil(32)].into(),
        BurnDType::U32,
    )
}

/// An LSQ quantizer on the shared device: the non-tensor argument of the LSQ ops. The
/// learnable parameters are burn tensors; each call copies them into the quantizer's parameter
/// buffers on the device, in the same submission, before its kernels read them.
#[derive(Debug, Clone)]
pub struct LsqKernel {
    pub(crate) lsq: Arc<GpuLsq>,
    /// The reduced gradients of a backward, allocated once: each backward writes them and copies
    /// them out to burn's tensors in one submission, and submissions on the queue run in order,
    /// so the next backward cannot overwrite them before they are copied.
    pub(crate) grads: GpuLsqGrads,
}

impl LsqKernel {
    /// Records the copies of burn's `scale` and `zero_point` into the quantizer's buffers.
    fn record_params(&self, encoder: &mut wgpu::CommandEncoder, scale: &Bound, zero_point: &Bound) {
        let bytes = 4 * self.lsq.channels() as u64;
        for (from, to) in [
            (scale, self.lsq.scale_buffer()),
            (zero_point, self.lsq.zero_point_buffer()),
        ] {
            let b = from.binding();
            encoder.copy_buffer_to_buffer(b.buffer, b.offset, to, 0, bytes);
        }
    }
}

fn fake_quant_cube(
    x: FloatTensor<CubeBackend>,
    kernel: &FakeQuantKernel,
    with_mask: bool,
) -> (FloatTensor<CubeBackend>, Option<IntTensor<CubeBackend>>) {
    let ctx = kernel.ctx();
    let shape: Vec<usize> = x.shape().to_vec();
    let numel: usize = shape.iter().product();
    let y = empty_like(&x, shape.clone(), x.dtype);
    let mask = with_mask.then(|| empty_like(&x, vec![numel.div_ceil(32)], BurnDType::U32));
    if numel == 0 {
        return (y, mask);
    }
    let dtype = element_type(x.dtype).expect("validated: a float dtype the kernels take");
    let (_x, xb) = bind_input(x, ctx);
    let yb = bind(&y, dtype);
    let mb = mask.as_ref().map(|m| bind(m, dtype));
    submit(ctx, &y, "fakequant-burn fake_quant", |encoder| {
        kernel.record(
            encoder,
            xb.binding(),
            &shape,
            yb.binding(),
            mb.as_ref().map(|m| m.binding()),
        )
    });
    (y, mask)
}

impl QatOps for CubeBackend {
    fn qat_fake_quant(x: FloatTensor<Self>, kernel: FakeQuantKernel) -> FloatTensor<Self> {
        fake_quant_cube(x, &kernel, false).0
    }

    fn qat_fake_quant_masked(
        x: FloatTensor<Self>,
        kernel: FakeQuantKernel,
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        let (y, mask) = fake_quant_cube(x, &kernel, true);
        (y, mask.expect("asked for"))
    }

    fn qat_ste_backward(
        dy: FloatTensor<Self>,
        mask: IntTensor<Self>,
        kernel: FakeQuantKernel,
    ) -> FloatTensor<Self> {
        let ctx = kernel.ctx();
        let shape: Vec<usize> = dy.shape().to_vec();
        let numel: usize = shape.iter().product();
        let dx = empty_like(&dy, shape, dy.dtype);
        if numel == 0 {
            return dx;
        }
        let dtype = element_type(dy.dtype).expect("validated: a float dtype the kernels take");
        let (_dy, dyb) = bind_input(dy, ctx);
        let dxb = bind(&dx, dtype);
        // The mask is the forward's own output: contiguous and aligned.
        let mb = bind(&mask, dtype);
        submit(ctx, &dx, "fakequant-burn ste_backward", |encoder| {
            ctx.record_ste_backward(encoder, dyb.binding(), mb.binding(), dxb.binding(), numel)
        });
        dx
    }

    fn qat_lsq(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        zero_point: FloatTensor<Self>,
        kernel: LsqKernel,
    ) -> FloatTensor<Self> {
        let ctx = kernel.lsq.context();
        let shape: Vec<usize> = x.shape().to_vec();
        let y = empty_like(&x, shape.clone(), x.dtype);
        if shape.iter().product::<usize>() == 0 {
            return y;
        }
        let dtype = element_type(x.dtype).expect("validated: a float dtype the kernels take");
        let (_x, xb) = bind_input(x, ctx);
        let (_s, sb) = bind_input(scale, ctx);
        let (_z, zb) = bind_input(zero_point, ctx);
        let yb = bind(&y, dtype);
        submit(ctx, &y, "fakequant-burn lsq forward", |encoder| {
            kernel.record_params(encoder, &sb, &zb);
            kernel
                .lsq
                .record_forward(encoder, xb.binding(), &shape, yb.binding(), None)
        });
        y
    }

    fn qat_lsq_backward(
        x: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        zero_point: FloatTensor<Self>,
        kernel: LsqKernel,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let ctx = kernel.lsq.context();
        let shape: Vec<usize> = x.shape().to_vec();
        let channels = kernel.lsq.channels();
        let dx = empty_like(&x, shape.clone(), x.dtype);
        let dscale = empty_like(&scale, vec![channels], scale.dtype);
        let dzero_point = empty_like(&zero_point, vec![channels], zero_point.dtype);
        let grads = &kernel.grads;
        let dtype = element_type(x.dtype).expect("validated: a float dtype the kernels take");
        let f32 = fakequant::DType::F32;
        let (_x, xb) = bind_input(x, ctx);
        let (_dy, dyb) = bind_input(dy, ctx);
        let (_s, sb) = bind_input(scale, ctx);
        let (_z, zb) = bind_input(zero_point, ctx);
        let dxb = bind(&dx, dtype);
        let (dsb, dzb) = (bind(&dscale, f32), bind(&dzero_point, f32));
        submit(ctx, &dx, "fakequant-burn lsq backward", |encoder| {
            kernel.record_params(encoder, &sb, &zb);
            kernel.lsq.record_backward(
                encoder,
                xb.binding(),
                dyb.binding(),
                &shape,
                dxb.binding(),
                grads,
            )?;
            // The gradient buffer holds dscale then dzero_point, one f32 per channel each.
            let bytes = 4 * channels as u64;
            for (i, to) in [dsb.binding(), dzb.binding()].into_iter().enumerate() {
                encoder.copy_buffer_to_buffer(
                    grads.buffer(),
                    i as u64 * bytes,
                    to.buffer,
                    to.offset,
                    bytes,
                );
            }
            Ok(())
        });
        (dx, dscale, dzero_point)
    }
}

/// The straight-through backward of a fake-quant: `dx = dy * mask`.
#[derive(Debug)]
struct StraightThrough;

impl<B: Backend + QatOps> Backward<B, 1> for StraightThrough {
    type State = (IntTensor<B>, FakeQuantKernel);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (mask, kernel) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            B::qat_ste_backward(dy, mask, kernel)
        });
    }
}

/// The pass-through backward of a floating-point format (torchao's): `dx = dy`.
#[derive(Debug)]
struct PassThrough;

impl<B: Backend> Backward<B, 1> for PassThrough {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        unary::<B, _>(ops.parents, ops.node, grads, |dy| dy);
    }
}

/// The fake-quant under autodiff: `y` registered with the straight-through backward when `x`
/// tracks gradients (the mask its state), and the mask when `with_mask` (otherwise an untracked
/// call writes none).
fn fake_quant_autodiff<B: Backend + QatOps, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    kernel: FakeQuantKernel,
    with_mask: bool,
) -> (FloatTensor<Autodiff<B, C>>, Option<IntTensor<B>>) {
    let node = x.node();
    if kernel.pass_through() {
        // The backward is the identity: no mask to keep (one is made only when asked for).
        let (y, mask) = if with_mask {
            let (y, mask) = B::qat_fake_quant_masked(x.into_primitive(), kernel);
            (y, Some(mask))
        } else {
            (B::qat_fake_quant(x.into_primitive(), kernel), None)
        };
        let y = PassThrough
            .prepare::<C>([node])
            .compute_bound()
            .stateless(y);
        return (y, mask);
    }
    match StraightThrough
        .prepare::<C>([node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (y, mask) = B::qat_fake_quant_masked(x.into_primitive(), kernel.clone());
            let returned = with_mask.then(|| mask.clone());
            (prep.finish((mask, kernel), y), returned)
        }
        OpsKind::UnTracked(prep) if with_mask => {
            let (y, mask) = B::qat_fake_quant_masked(x.into_primitive(), kernel);
            (prep.finish(y), Some(mask))
        }
        OpsKind::UnTracked(prep) => (
            prep.finish(B::qat_fake_quant(x.into_primitive(), kernel)),
            None,
        ),
    }
}

impl<B: Backend + QatOps, C: CheckpointStrategy> QatOps for Autodiff<B, C> {
    fn qat_fake_quant(x: FloatTensor<Self>, kernel: FakeQuantKernel) -> FloatTensor<Self> {
        fake_quant_autodiff::<B, C>(x, kernel, false).0
    }

    fn qat_fake_quant_masked(
        x: FloatTensor<Self>,
        kernel: FakeQuantKernel,
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        let (y, mask) = fake_quant_autodiff::<B, C>(x, kernel, true);
        (y, mask.expect("asked for"))
    }

    fn qat_ste_backward(
        dy: FloatTensor<Self>,
        mask: IntTensor<Self>,
        kernel: FakeQuantKernel,
    ) -> FloatTensor<Self> {
        // The backward of a backward (dx is linear in dy with the same mask) is not registered:
        // QAT never differentiates twice through a fake-quant.
        Self::from_inner(B::qat_ste_backward(dy.into_primitive(), mask, kernel))
    }

    fn qat_lsq(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        zero_point: FloatTensor<Self>,
        kernel: LsqKernel,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), scale.node(), zero_point.node()];
        let (x, scale, zero_point) = (
            x.into_primitive(),
            scale.into_primitive(),
            zero_point.into_primitive(),
        );
        match LsqBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::qat_lsq(x.clone(), scale.clone(), zero_point.clone(), kernel.clone());
                prep.finish((x, scale, zero_point, kernel), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::qat_lsq(x, scale, zero_point, kernel)),
        }
    }

    fn qat_lsq_backward(
        x: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        zero_point: FloatTensor<Self>,
        kernel: LsqKernel,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // Not differentiated again (see `qat_ste_backward`).
        let (dx, dscale, dzero_point) = B::qat_lsq_backward(
            x.into_primitive(),
            dy.into_primitive(),
            scale.into_primitive(),
            zero_point.into_primitive(),
            kernel,
        );
        (
            Self::from_inner(dx),
            Self::from_inner(dscale),
            Self::from_inner(dzero_point),
        )
    }
}

/// The LSQ backward: `dx`, `dscale` and `dzero_point` from one pass of the library's kernel.
#[derive(Debug)]
struct LsqBackward;

impl<B: Backend + QatOps> Backward<B, 3> for LsqBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, LsqKernel);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, scale, zero_point, kernel) = ops.state;
        let dy = grads.consume::<B>(&ops.node);
        let (dx, dscale, dzero_point) = B::qat_lsq_backward(x, dy, scale, zero_point, kernel);
        let [x_node, scale_node, zero_point_node] = ops.parents;
        for (node, grad) in [
            (x_node, dx),
            (scale_node, dscale),
            (zero_point_node, dzero_point),
        ] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}
