//! burn's tensors as the library's buffers: a CubeCL tensor's wgpu buffer, offset and size, and
//! outputs allocated in burn's memory pool, so that a kernel reads and writes burn's memory in
//! place (no read-back, no copy).
//!
//! Ordering: asking burn's runtime for a tensor's resource records burn's pending work on that
//! tensor (cubecl's `get_resource`); burn's stream is then flushed to the queue and the library's
//! commands submitted after it (see [`submit`]); burn's later work on the outputs is submitted
//! after them. wgpu orders submissions on one queue, so each side sees the other's writes.

use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::DType as BurnDType;
use burn_cubecl::cubecl::wgpu::{AutoCompiler, WgpuResource, WgpuServer};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use fakequant::{DType, GpuContext, TensorBinding};

static BOUND: AtomicU64 = AtomicU64::new(0);
static AT_OFFSET: AtomicU64 = AtomicU64::new(0);
static COPIES: AtomicU64 = AtomicU64::new(0);

/// How the QAT ops have reached burn's memory since the process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BindingStats {
    /// Tensors bound in place (inputs, outputs, masks, parameters).
    pub bound: u64,
    /// Of those, the ones at a non-zero offset in a buffer burn's pool shares between tensors.
    pub at_nonzero_offset: u64,
    /// Inputs copied before they could be bound: a strided view made contiguous, or a tensor at
    /// an offset the device's binding alignment refuses. burn's own allocations are aligned for
    /// binding, so a contiguous tensor is never copied; with burn's fusion, views reach the ops
    /// already materialized.
    pub copies: u64,
}

/// The counts so far (see [`BindingStats`]).
pub fn binding_stats() -> BindingStats {
    BindingStats {
        bound: BOUND.load(Ordering::Relaxed),
        at_nonzero_offset: AT_OFFSET.load(Ordering::Relaxed),
        copies: COPIES.load(Ordering::Relaxed),
    }
}

/// The library's element type of a burn float dtype, if the kernels take it.
pub(crate) fn element_type(dtype: BurnDType) -> Option<DType> {
    match dtype {
        BurnDType::F32 => Some(DType::F32),
        BurnDType::F16 => Some(DType::F16),
        BurnDType::BF16 => Some(DType::Bf16),
        _ => None,
    }
}

/// A tensor's place in burn's memory, held for the duration of one recording: the allocation
/// stays put while this lives.
pub(crate) struct Bound {
    resource: cubecl_runtime::storage::ManagedResource<WgpuResource>,
    dtype: DType,
}

impl Bound {
    pub(crate) fn binding(&self) -> TensorBinding<'_> {
        let r = self.resource.resource();
        TensorBinding::new(&r.buffer, r.offset).with_dtype(self.dtype)
    }
}

/// The resource behind `tensor`'s handle. An error here is burn's runtime refusing its own
/// tensor (a failed earlier kernel, a tensor of another runtime): nothing this crate can repair.
pub(crate) fn bind(tensor: &CubeTensor, dtype: DType) -> Bound {
    let resource = tensor
        .client
        .get_resource::<WgpuServer<AutoCompiler>>(tensor.handle.clone())
        .unwrap_or_else(|e| panic!("burn's runtime refused a tensor's wgpu resource: {e:?}"));
    BOUND.fetch_add(1, Ordering::Relaxed);
    if resource.resource().offset != 0 {
        AT_OFFSET.fetch_add(1, Ordering::Relaxed);
    }
    Bound { resource, dtype }
}

/// `tensor` bound for a kernel to read: contiguous, at an offset the device accepts; a copy
/// only when it is not. The tensor is returned with its binding: it must outlive the recording.
pub(crate) fn bind_input(tensor: CubeTensor, ctx: &GpuContext) -> (CubeTensor, Bound) {
    let dtype = element_type(tensor.dtype).unwrap_or(DType::F32);
    // A contiguous tensor binds as it is, whatever the size of its allocation (fusion's outputs
    // may be padded).
    let tensor = if tensor.is_contiguous() {
        tensor
    } else {
        COPIES.fetch_add(1, Ordering::Relaxed);
        into_contiguous(tensor)
    };
    let bound = bind(&tensor, dtype);
    let align = u64::from(ctx.device_limits().min_storage_buffer_offset_alignment);
    if bound.resource.resource().offset.is_multiple_of(align) {
        return (tensor, bound);
    }
    drop(bound);
    COPIES.fetch_add(1, Ordering::Relaxed);
    let copy = tensor.copy();
    let bound = bind(&copy, dtype);
    (copy, bound)
}

/// A new contiguous tensor of `shape` and `dtype` in burn's pool, on `like`'s device.
pub(crate) fn empty_like(like: &CubeTensor, shape: Vec<usize>, dtype: BurnDType) -> CubeTensor {
    empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        shape.into(),
        dtype,
    )
}

/// Records with `record` into a new encoder of `ctx` and submits it to the shared queue, without
/// waiting, after burn's own recorded work.
///
/// burn's runtime records kernels into its stream's encoder and submits them later; asking for a
/// resource (`bind`) records burn's pending work on that tensor but does not submit it. So burn's
/// stream is flushed (submitted) first: the kernels then see every write burn recorded before
/// them, and burn's recorded reads of memory its pool has just handed to this op's outputs run
/// before the outputs are written. burn's work recorded afterwards is submitted after this.
/// The arguments were validated by the public functions, so a refusal here is a bug.
pub(crate) fn submit(
    ctx: &GpuContext,
    burn: &CubeTensor,
    label: &'static str,
    record: impl FnOnce(&mut wgpu::CommandEncoder) -> fakequant::Result<()>,
) {
    let mut encoder = ctx.create_encoder(label);
    if let Err(e) = record(&mut encoder) {
        panic!("fakequant refused a validated {label}: {e}");
    }
    burn.client
        .flush()
        .unwrap_or_else(|e| panic!("burn's runtime refused to flush its stream: {e:?}"));
    ctx.queue().submit([encoder.finish()]);
}
