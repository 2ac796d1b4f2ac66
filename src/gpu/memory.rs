//! Memory: device tensors and masks, caller buffers described as [`TensorBinding`]s, upload,
//! read-back (through a reused staging buffer) and the checks every op makes on a binding.

use std::sync::mpsc;

use wgpu::util::DeviceExt;

use super::context::{DeviceId, GpuContext, STAGING_KEEP_BYTES, STAGING_MIN_BYTES};
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::quant::PackedMask;

impl GpuContext {
    /// Checks a buffer size against the device's maximum.
    pub(crate) fn check_buffer_size(&self, what: &'static str, bytes: u64) -> Result<()> {
        let limit = self.device_limits().max_buffer_size;
        if bytes > limit {
            return Err(Error::TooLarge {
                what,
                requested: bytes,
                limit,
            });
        }
        Ok(())
    }

    /// A new storage buffer (`STORAGE | COPY_SRC | COPY_DST`) holding `data`.
    pub(crate) fn storage_buffer_init(
        &self,
        label: &'static str,
        data: &[u8],
    ) -> Result<wgpu::Buffer> {
        self.storage_buffer(label, data.len() as u64, Some(data))
    }

    /// A new storage buffer of `bytes` zeros (wgpu zeroes new buffers).
    pub(crate) fn storage_buffer_zeroed(
        &self,
        label: &'static str,
        bytes: u64,
    ) -> Result<wgpu::Buffer> {
        self.storage_buffer(label, bytes, None)
    }

    fn storage_buffer(
        &self,
        label: &'static str,
        bytes: u64,
        contents: Option<&[u8]>,
    ) -> Result<wgpu::Buffer> {
        self.check_buffer_size(label, bytes)?;
        // A zero-sized tensor still gets a (4-byte) buffer so that it can be bound and passed around.
        let size = bytes.max(4).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        self.capture("creating a storage buffer", || {
            let buffer = self.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: contents.is_some(),
            });
            if let Some(data) = contents {
                if !data.is_empty() {
                    // Mapped ranges are whole words; an odd number of 16-bit elements leaves the
                    // last two bytes zero.
                    let mapped = data.len().next_multiple_of(4);
                    let mut padded;
                    let whole = if mapped == data.len() {
                        data
                    } else {
                        padded = data.to_vec();
                        padded.resize(mapped, 0);
                        &padded
                    };
                    buffer
                        .get_mapped_range_mut(..mapped as u64)
                        .map_err(|e| Error::device("mapping a new buffer", e))?
                        .copy_from_slice(whole);
                }
                buffer.unmap();
            }
            Ok(buffer)
        })
    }

    /// Uploads a tensor of any element type (`f32`, `half::f16`, `half::bf16`) to a new device
    /// buffer.
    pub fn upload<T: Element>(&self, data: &[T]) -> Result<GpuTensor> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buffer = self.storage_buffer(
            "fakequant tensor",
            T::DTYPE.bytes_for(data.len()),
            Some(bytes),
        )?;
        Ok(GpuTensor {
            buffer,
            len: data.len(),
            dtype: T::DTYPE,
            owner: self.device_id(),
        })
    }

    /// A new device tensor of `len` elements of `dtype` (contents unspecified until written).
    pub fn create_tensor(&self, len: usize, dtype: DType) -> Result<GpuTensor> {
        let buffer = self.storage_buffer("fakequant tensor", dtype.bytes_for(len), None)?;
        Ok(GpuTensor {
            buffer,
            len,
            dtype,
            owner: self.device_id(),
        })
    }

    /// A new device mask of `len` bits.
    pub fn create_mask(&self, len: usize) -> Result<GpuMask> {
        let buffer = self.storage_buffer("fakequant mask", PackedMask::bytes_for(len), None)?;
        Ok(GpuMask {
            buffer,
            len,
            owner: self.device_id(),
        })
    }

    /// Uploads a packed mask.
    pub fn upload_mask(&self, mask: &PackedMask) -> Result<GpuMask> {
        let buffer = self.storage_buffer(
            "fakequant mask",
            PackedMask::bytes_for(mask.len()),
            Some(bytemuck::cast_slice(mask.words())),
        )?;
        Ok(GpuMask {
            buffer,
            len: mask.len(),
            owner: self.device_id(),
        })
    }

    /// Reads a device tensor of element type `T` back (waits for the queue).
    pub fn read_tensor<T: Element>(&self, tensor: &GpuTensor) -> Result<Vec<T>> {
        self.check_owner("tensor", tensor.owner)?;
        tensor.dtype.check_same("read-back type", T::DTYPE)?;
        let bytes = self.read_buffer(&tensor.buffer, 0, tensor.dtype.bytes_for(tensor.len))?;
        let mut values: Vec<T> = bytemuck::pod_collect_to_vec(&bytes);
        values.truncate(tensor.len);
        Ok(values)
    }

    /// Reads a device mask back (waits for the queue).
    pub fn read_mask(&self, mask: &GpuMask) -> Result<PackedMask> {
        self.check_owner("mask", mask.owner)?;
        let bytes = self.read_buffer(&mask.buffer, 0, PackedMask::bytes_for(mask.len))?;
        PackedMask::from_words(bytemuck::pod_collect_to_vec(&bytes), mask.len)
    }

    /// Copies `size` bytes at `offset` of `buffer` (which needs `COPY_SRC`) to the host.
    pub fn read_buffer(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        if size == 0 {
            return Ok(Vec::new());
        }
        if !buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) {
            return Err(Error::InvalidBuffer {
                what: "read-back source",
                reason: "needs BufferUsages::COPY_SRC".into(),
            });
        }
        if !offset.is_multiple_of(4)
            || !size.is_multiple_of(4)
            || offset
                .checked_add(size)
                .is_none_or(|end| end > buffer.size())
        {
            return Err(Error::InvalidBuffer {
                what: "read-back source",
                reason: format!(
                    "range {offset}+{size} is not 4-byte aligned or exceeds the buffer ({} bytes)",
                    buffer.size()
                ),
            });
        }
        let device = self.device();
        // The staging buffer of an earlier read when it is large enough (taken out of the slot,
        // so that concurrent reads each have their own).
        let reused = self
            .staging()
            .lock()
            .map_err(|_| Error::Poisoned("read-back staging buffer"))?
            .take_if(|b| b.size() >= size);
        let staging = self.capture("copying a buffer for read-back", || {
            let staging = reused.unwrap_or_else(|| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("fakequant read-back"),
                    size: size.max(STAGING_MIN_BYTES),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            });
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fakequant read-back"),
            });
            encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
            self.queue().submit([encoder.finish()]);
            Ok(staging)
        })?;
        let (sender, receiver) = mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, ..size, move |r| {
            let _ = sender.send(r);
        });
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::device("waiting for a read-back", e))?;
        receiver
            .recv()
            .map_err(|e| Error::device("waiting for a read-back's mapping", e))?
            .map_err(|e| Error::device("mapping the read-back buffer", e))?;
        let data = staging
            .get_mapped_range(..size)
            .map_err(|e| Error::device("reading the mapped read-back buffer", e))?
            .to_vec();
        staging.unmap();
        // Kept for the next read unless it would hold a lot of memory idle.
        if staging.size() <= STAGING_KEEP_BYTES {
            let mut slot = self
                .staging()
                .lock()
                .map_err(|_| Error::Poisoned("read-back staging buffer"))?;
            if slot.as_ref().is_none_or(|b| b.size() < staging.size()) {
                *slot = Some(staging);
            }
        }
        Ok(data)
    }

    /// A new uniform buffer holding `data`.
    pub(crate) fn uniform_buffer(&self, label: &'static str, data: &[u8]) -> wgpu::Buffer {
        self.device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: data,
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// A new read-only storage buffer holding `data`.
    pub(crate) fn constant_storage(
        &self,
        label: &'static str,
        data: &[u8],
    ) -> Result<wgpu::Buffer> {
        self.check_buffer_size(label, data.len() as u64)?;
        self.capture("creating a constant buffer", || {
            Ok(self
                .device()
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: data,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                }))
        })
    }
}

impl GpuContext {
    /// Checks a tensor binding of `len` elements: f32 tensors as [`Self::check_binding`]; 16-bit
    /// ones at an even offset, with the words that hold them inside the buffer.
    pub(crate) fn check_tensor(
        &self,
        what: &'static str,
        b: &TensorBinding<'_>,
        len: usize,
    ) -> Result<()> {
        if let Some(owner) = b.owner {
            self.check_owner(what, owner)?;
        }
        if b.dtype == DType::F32 {
            return self.check_binding(what, b, b.dtype.bytes_for(len));
        }
        if !b.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::InvalidBuffer {
                what,
                reason: "needs BufferUsages::STORAGE".into(),
            });
        }
        if !b.offset.is_multiple_of(2) {
            return Err(Error::InvalidBuffer {
                what,
                reason: format!("offset {} of a 16-bit tensor is not even", b.offset),
            });
        }
        // Saturating: a length past any buffer fails the comparison below instead of wrapping.
        let end = (len as u64)
            .checked_mul(2)
            .and_then(|bytes| b.offset.checked_add(bytes))
            .and_then(|end| end.checked_next_multiple_of(4))
            .unwrap_or(u64::MAX);
        if end > b.buffer.size() {
            return Err(Error::InvalidBuffer {
                what,
                reason: format!(
                    "needs the words up to byte {end} but the buffer has {}",
                    b.buffer.size()
                ),
            });
        }
        Ok(())
    }

    /// Checks the bindings of an elementwise op on `len` elements: `x` and `y` of one element
    /// type and usable, the mask (when given) large enough, and no range the op writes (`y`, and
    /// the mask when `mask_written`) overlapping another. Callers that record other work first
    /// check here before recording anything.
    pub(crate) fn check_elementwise(
        &self,
        roles: [&'static str; 2],
        x: &TensorBinding<'_>,
        y: &TensorBinding<'_>,
        mask: Option<(&TensorBinding<'_>, bool)>,
        len: usize,
    ) -> Result<()> {
        let [x_role, y_role] = roles;
        x.dtype.check_same(y_role, y.dtype)?;
        self.check_tensor(x_role, x, len)?;
        self.check_tensor(y_role, y, len)?;
        let mut footprints = vec![
            Footprint::tensor(x_role, x, len, false),
            Footprint::tensor(y_role, y, len, true),
        ];
        if let Some((m, written)) = mask {
            self.check_binding("mask", m, PackedMask::bytes_for(len))?;
            footprints.push(Footprint::mask(m, len, written));
        }
        check_disjoint(&footprints)
    }

    pub(crate) fn check_binding(
        &self,
        what: &'static str,
        b: &TensorBinding<'_>,
        bytes: u64,
    ) -> Result<()> {
        if let Some(owner) = b.owner {
            self.check_owner(what, owner)?;
        }
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
}

/// The bytes one binding of a call covers, and whether the call writes them.
pub(crate) struct Footprint<'a> {
    role: &'static str,
    buffer: &'a wgpu::Buffer,
    start: u64,
    end: u64,
    written: bool,
}

impl<'a> Footprint<'a> {
    /// The `len` elements of a tensor binding.
    pub(crate) fn tensor(
        role: &'static str,
        b: &TensorBinding<'a>,
        len: usize,
        written: bool,
    ) -> Self {
        Self {
            role,
            buffer: b.buffer,
            start: b.offset,
            // Exactly its elements (`bytes_for` rounds 16-bit tensors up to whole words).
            end: b
                .offset
                .saturating_add((len as u64).saturating_mul(b.dtype.size())),
            written,
        }
    }

    /// The words of a mask of `len` bits.
    pub(crate) fn mask(b: &TensorBinding<'a>, len: usize, written: bool) -> Self {
        Self {
            role: "mask",
            buffer: b.buffer,
            start: b.offset,
            end: b.offset.saturating_add(PackedMask::bytes_for(len)),
            written,
        }
    }

    /// The whole 4-byte words the range touches: a kernel stores 16-bit elements into their
    /// words (atomically where a word is shared), so two written ranges must not share one.
    fn words(&self) -> (u64, u64) {
        (
            self.start & !3,
            self.end.checked_next_multiple_of(4).unwrap_or(u64::MAX),
        )
    }
}

/// Refuses a call in which a range it writes overlaps another range it binds in the same buffer.
/// Disjoint ranges of one buffer are fine (a framework's memory pool keeps many tensors in one
/// buffer): ranges are compared, not buffers. A written range is compared with a read one byte
/// by byte (a shader never stores into a neighbour's bytes), with another written one word by word.
pub(crate) fn check_disjoint(footprints: &[Footprint<'_>]) -> Result<()> {
    for (i, a) in footprints.iter().enumerate() {
        for b in footprints[i..].iter().skip(1) {
            if a.buffer != b.buffer || !(a.written || b.written) {
                continue;
            }
            if a.start == a.end || b.start == b.end {
                continue;
            }
            let ((a0, a1), (b0, b1)) = if a.written && b.written {
                (a.words(), b.words())
            } else {
                ((a.start, a.end), (b.start, b.end))
            };
            if a0 < b1 && b0 < a1 {
                let (written, other) = if a.written { (a, b) } else { (b, a) };
                return Err(Error::InvalidBuffer {
                    what: written.role,
                    reason: format!(
                        "its bytes {}..{} overlap `{}` at bytes {}..{} of the same buffer \
                         (a call may bind one buffer several times only in disjoint ranges, \
                         and ranges it writes may not share a 4-byte word)",
                        written.start, written.end, other.role, other.start, other.end
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The length checks of a device-level forward: `x` against the shape, `y` and the mask against
/// `x`.
pub(crate) fn check_forward_lengths(
    x: &GpuTensor,
    shape: &[usize],
    y: &GpuTensor,
    mask: Option<&GpuMask>,
) -> Result<()> {
    check_len(
        "x vs product of shape",
        crate::quant::numel(shape)?,
        x.len(),
    )?;
    check_len("y vs x", x.len(), y.len())?;
    if let Some(m) = mask {
        check_len("mask vs x", x.len(), m.len())?;
    }
    Ok(())
}

impl GpuContext {
    /// A host-level forward: `x` uploaded, `device` run on it with a new `y` and mask, both read
    /// back.
    pub(crate) fn forward_on_host<T: Element>(
        &self,
        x: &[T],
        shape: &[usize],
        device: impl FnOnce(&GpuTensor, &GpuTensor, &GpuMask) -> Result<()>,
    ) -> Result<crate::reference::FakeQuantOutput<T>> {
        check_len(
            "data length vs product of shape",
            crate::quant::numel(shape)?,
            x.len(),
        )?;
        let x_dev = self.upload(x)?;
        let y_dev = self.create_tensor(x.len(), T::DTYPE)?;
        let mask_dev = self.create_mask(x.len())?;
        device(&x_dev, &y_dev, &mask_dev)?;
        Ok(crate::reference::FakeQuantOutput {
            y: self.read_tensor(&y_dev)?,
            mask: self.read_mask(&mask_dev)?,
        })
    }
}

pub(crate) use crate::error::check_len;

/// A tensor's values in a device buffer owned by this library (`STORAGE | COPY_SRC | COPY_DST`).
#[derive(Debug, Clone)]
pub struct GpuTensor {
    buffer: wgpu::Buffer,
    len: usize,
    dtype: DType,
    owner: DeviceId,
}

impl GpuTensor {
    /// The buffer, for recording into a caller's encoder.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a tensor of no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// A binding of the whole tensor (which remembers the context the tensor belongs to).
    pub fn binding(&self) -> TensorBinding<'_> {
        TensorBinding {
            owner: Some(self.owner),
            ..TensorBinding::from(&self.buffer).with_dtype(self.dtype)
        }
    }
}

/// A bit-packed mask in a device buffer owned by this library.
#[derive(Debug, Clone)]
pub struct GpuMask {
    buffer: wgpu::Buffer,
    len: usize,
    owner: DeviceId,
}

impl GpuMask {
    /// The buffer, for recording into a caller's encoder.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Number of elements (bits).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a mask of no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A binding of the whole mask (which remembers the context the mask belongs to).
    pub fn binding(&self) -> TensorBinding<'_> {
        TensorBinding {
            owner: Some(self.owner),
            ..TensorBinding::from(&self.buffer)
        }
    }
}

/// Where a tensor lives in a caller's buffer: the buffer, a byte offset and the element type. The
/// buffer needs `BufferUsages::STORAGE`. The offset of an f32 tensor (and of a mask) must be a
/// multiple of the device's `min_storage_buffer_offset_alignment` (256 on most devices); a 16-bit
/// tensor may start at any even byte offset in the elementwise ops (fake-quant, straight-through).
#[derive(Debug, Clone, Copy)]
pub struct TensorBinding<'a> {
    /// The buffer.
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of element 0.
    pub offset: u64,
    /// Element type.
    pub dtype: DType,
    /// The context of the library object it was taken from (a caller's own buffer has none:
    /// wgpu checks its device).
    owner: Option<DeviceId>,
}

impl<'a> TensorBinding<'a> {
    /// An f32 tensor at `offset` bytes into `buffer`.
    pub fn new(buffer: &'a wgpu::Buffer, offset: u64) -> Self {
        Self {
            buffer,
            offset,
            dtype: DType::F32,
            owner: None,
        }
    }

    /// The same place, holding `dtype` elements.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// The tensor from its element `elements` on (a part of the tensor the caller checked).
    pub(crate) fn advanced(mut self, elements: u64) -> Self {
        self.offset = self
            .offset
            .saturating_add(elements.saturating_mul(self.dtype.size()));
        self
    }
}

impl<'a> From<&'a wgpu::Buffer> for TensorBinding<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        Self::new(buffer, 0)
    }
}
