//! Dispatch of the fake-quant kernel family (`shaders/fake_quant.wgsl`): the fused forward with
//! an optional bit-packed mask, and the straight-through backward, at three levels of API.

use bytemuck::{Pod, Zeroable};

use super::context::{
    GpuContext, GpuMask, GpuTensor, KernelKey, TensorBinding, CHUNK_GRANULE_ELEMS,
};
use crate::error::{Error, Result};
use crate::quant::{ChannelLayout, FakeQuant, PackedMask, QuantRange, Rounding};
use crate::reference::FakeQuantOutput;

/// Elements a workgroup covers per step of its loop (`TILE` in the shader).
const TILE_ELEMS: u64 = 1024;

/// `Dispatch` in the shader: one per binding-sized chunk of the tensor.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct DispatchUniform {
    len: u32,
    num_tiles: u32,
    channels: u32,
    inner: u32,
    channel_start: u32,
    inner_start: u32,
    mask_words: u32,
    _pad: u32,
}

/// `ChannelParams` in the shader: everything the kernel needs about one channel, derived exactly
/// here so that the device only multiplies, rounds and compares (see the shader's header).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub(crate) struct ChannelParams {
    scale: f32,
    inv: f32,
    inv_sub: f32,
    clip_bits: u32,
    lo: f32,
    hi: f32,
    _pad: [u32; 2],
}

impl ChannelParams {
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
            _pad: [0; 2],
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
        let bytes = std::mem::size_of_val(params.as_slice()) as u64;
        if bytes > self.dispatch_limits().max_binding_bytes {
            return Err(Error::TooLarge {
                what: "per-channel parameters (32 bytes per channel)",
                requested: bytes,
                limit: self.dispatch_limits().max_binding_bytes,
            });
        }
        let params =
            self.constant_storage("fakequant channel params", bytemuck::cast_slice(&params))?;
        Ok(GpuFakeQuant {
            ctx: self.clone(),
            op: op.clone(),
            params,
        })
    }

    /// Convenience level: fake-quantizes host data on the device and reads the result back.
    /// `shape` is the row-major shape of `x` (for per-tensor parameters, `&[x.len()]` will do).
    pub fn fake_quant(
        &self,
        op: &FakeQuant,
        x: &[f32],
        shape: &[usize],
        with_mask: bool,
    ) -> Result<FakeQuantOutput> {
        op.layout(shape, x.len())?;
        let prepared = self.prepare(op)?;
        let x_dev = self.upload(x)?;
        let y_dev = self.create_tensor(x.len())?;
        let mask_dev = if with_mask {
            Some(self.create_mask(x.len())?)
        } else {
            None
        };
        prepared.forward(&x_dev, shape, &y_dev, mask_dev.as_ref())?;
        let y = self.read_tensor(&y_dev)?;
        let mask = mask_dev.map(|m| self.read_mask(&m)).transpose()?;
        Ok(FakeQuantOutput { y, mask })
    }

    /// Convenience level: the straight-through backward `dx = dy * mask` on the device.
    pub fn ste_backward(&self, dy: &[f32], mask: &PackedMask) -> Result<Vec<f32>> {
        if dy.len() != mask.len() {
            return Err(Error::LengthMismatch {
                what: "dy vs mask",
                expected: mask.len(),
                actual: dy.len(),
            });
        }
        let dy_dev = self.upload(dy)?;
        let mask_dev = self.upload_mask(mask)?;
        let dx_dev = self.create_tensor(dy.len())?;
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
        let mut encoder = self.create_encoder("fakequant ste_backward");
        self.record_ste_backward(
            &mut encoder,
            dy.binding(),
            mask.binding(),
            dx.binding(),
            dy.len(),
        )?;
        self.submit_and_wait(encoder)
    }

    /// Recording level: records `dx = dy * mask` for `len` elements into the caller's encoder.
    pub fn record_ste_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
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
        self.record_elementwise(encoder, KernelKey::SteBackward, bindings, layout)
    }

    pub(crate) fn check_binding(
        &self,
        what: &'static str,
        b: &TensorBinding<'_>,
        bytes: u64,
    ) -> Result<()> {
        let align = self.device_limits().min_storage_buffer_offset_alignment as u64;
        if !b.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::InvalidBuffer {
                what,
                reason: "needs BufferUsages::STORAGE".into(),
            });
        }
        if !b.offset.is_multiple_of(align) {
            return Err(Error::InvalidBuffer {
                what,
                reason: format!(
                    "offset {} is not a multiple of min_storage_buffer_offset_alignment ({align})",
                    b.offset
                ),
            });
        }
        if b.offset
            .checked_add(bytes)
            .is_none_or(|end| end > b.buffer.size())
        {
            return Err(Error::InvalidBuffer {
                what,
                reason: format!(
                    "needs {bytes} bytes at offset {} but the buffer has {}",
                    b.offset,
                    b.buffer.size()
                ),
            });
        }
        Ok(())
    }

    /// Records one elementwise kernel over a tensor of `layout.numel()` elements, split into
    /// chunks that each fit one storage binding, each dispatch looping over its tiles when it needs
    /// more workgroups than the limit.
    pub(crate) fn record_elementwise(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        key: KernelKey,
        b: ElementwiseBindings<'_, '_>,
        layout: ChannelLayout,
    ) -> Result<()> {
        let len = layout.numel() as u64;
        let data_bytes = len * 4;
        let mask_bytes = PackedMask::words_for(layout.numel()) as u64 * 4;
        self.check_binding("x", &b.x, data_bytes)?;
        self.check_binding("y", &b.y, data_bytes)?;
        if let Some(m) = &b.mask {
            self.check_binding("mask", m, mask_bytes)?;
        }
        if b.x.buffer == b.y.buffer {
            return Err(Error::InvalidBuffer {
                what: "y",
                reason: "the output must be a different buffer from the input (in-place is not supported)".into(),
            });
        }
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
        let chunk =
            (limits.max_binding_bytes / 4 / CHUNK_GRANULE_ELEMS * CHUNK_GRANULE_ELEMS).min(1 << 30);
        let uniform_stride = (self.device_limits().min_uniform_buffer_offset_alignment as u64)
            .max(std::mem::size_of::<DispatchUniform>() as u64);
        let chunks: Vec<(u64, u64)> = (0..len.div_ceil(chunk))
            .map(|c| (c * chunk, chunk.min(len - c * chunk)))
            .collect();

        let mut uniform_bytes = vec![0u8; (uniform_stride as usize) * chunks.len()];
        for (i, &(start, n)) in chunks.iter().enumerate() {
            let inner = layout.inner as u64;
            let u = DispatchUniform {
                len: n as u32,
                num_tiles: n.div_ceil(TILE_ELEMS) as u32,
                channels: layout.channels as u32,
                inner: layout.inner as u32,
                channel_start: ((start / inner) % layout.channels as u64) as u32,
                inner_start: (start % inner) as u32,
                mask_words: n.div_ceil(32) as u32,
                _pad: 0,
            };
            let at = i * uniform_stride as usize;
            uniform_bytes[at..at + std::mem::size_of::<DispatchUniform>()]
                .copy_from_slice(bytemuck::bytes_of(&u));
        }

        let pipeline = self.pipeline(key)?;
        let kernels = self.kernels();
        self.capture(|| {
            let uniforms = self.uniform_buffer("fakequant dispatch", &uniform_bytes);
            let bind_groups: Vec<wgpu::BindGroup> = chunks
                .iter()
                .enumerate()
                .map(|(i, &(start, n))| {
                    fn range<'r>(
                        t: &TensorBinding<'r>,
                        offset: u64,
                        bytes: u64,
                    ) -> wgpu::BindingResource<'r> {
                        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: t.buffer,
                            offset: t.offset + offset,
                            size: wgpu::BufferSize::new(bytes),
                        })
                    }
                    let dummy_read = kernels.dummy_read.as_entire_binding();
                    let dummy_write = kernels.dummy_write.as_entire_binding();
                    let mask_bytes = n.div_ceil(32) * 4;
                    self.device().create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("fakequant elementwise"),
                        layout: &kernels.elementwise_layout,
                        entries: &[
                            wgpu::BindGroupEntry {
                                binding: 0,
                                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                    buffer: &uniforms,
                                    offset: i as u64 * uniform_stride,
                                    size: wgpu::BufferSize::new(
                                        std::mem::size_of::<DispatchUniform>() as u64,
                                    ),
                                }),
                            },
                            wgpu::BindGroupEntry {
                                binding: 1,
                                resource: match b.params {
                                    Some(p) => p.as_entire_binding(),
                                    None => dummy_read,
                                },
                            },
                            wgpu::BindGroupEntry {
                                binding: 2,
                                resource: range(&b.x, start * 4, n * 4),
                            },
                            wgpu::BindGroupEntry {
                                binding: 3,
                                resource: range(&b.y, start * 4, n * 4),
                            },
                            wgpu::BindGroupEntry {
                                binding: 4,
                                resource: match &b.mask {
                                    Some(m) => range(m, start / 32 * 4, mask_bytes),
                                    None => dummy_write,
                                },
                            },
                        ],
                    })
                })
                .collect();
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("fakequant elementwise"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipeline);
            for (bind_group, &(_, n)) in bind_groups.iter().zip(&chunks) {
                let workgroups = n.div_ceil(TILE_ELEMS).min(limits.max_workgroups as u64) as u32;
                pass.set_bind_group(0, bind_group, &[]);
                pass.dispatch_workgroups(workgroups, 1, 1);
            }
            Ok(())
        })
    }
}

pub(crate) struct ElementwiseBindings<'a, 'b> {
    pub(crate) x: TensorBinding<'a>,
    pub(crate) y: TensorBinding<'a>,
    pub(crate) mask: Option<TensorBinding<'a>>,
    pub(crate) params: Option<&'b wgpu::Buffer>,
}

pub(crate) fn check_len(what: &'static str, expected: usize, actual: usize) -> Result<()> {
    if expected != actual {
        return Err(Error::LengthMismatch {
            what,
            expected,
            actual,
        });
    }
    Ok(())
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
    pub fn forward(
        &self,
        x: &GpuTensor,
        shape: &[usize],
        y: &GpuTensor,
        mask: Option<&GpuMask>,
    ) -> Result<()> {
        check_len("y vs x", x.len(), y.len())?;
        if let Some(m) = mask {
            check_len("mask vs x", x.len(), m.len())?;
        }
        let mut encoder = self.ctx.create_encoder("fakequant forward");
        self.record_forward(
            &mut encoder,
            x.binding(),
            shape,
            y.binding(),
            mask.map(GpuMask::binding),
        )?;
        self.ctx.submit_and_wait(encoder)
    }

    /// Recording level: records the fused forward into the caller's encoder on the caller's
    /// buffers. `x` and `y` hold `numel(shape)` f32 values; `mask`, when given, receives
    /// `ceil(numel / 32)` packed words. Nothing is submitted.
    pub fn record_forward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: TensorBinding<'_>,
        shape: &[usize],
        y: TensorBinding<'_>,
        mask: Option<TensorBinding<'_>>,
    ) -> Result<()> {
        let numel = crate::quant::numel(shape)?;
        let layout = self.op.layout(shape, numel)?;
        let key = KernelKey::Forward {
            rounding: match self.op.rounding() {
                Rounding::Reciprocal => 0,
                Rounding::Quotient => 1,
            },
            per_channel: self.op.params().axis().is_some(),
            with_mask: mask.is_some(),
        };
        let bindings = ElementwiseBindings {
            x,
            y,
            mask,
            params: Some(&self.params),
        };
        self.ctx.record_elementwise(encoder, key, bindings, layout)
    }
}
