//! Pure planning: how a tensor is cut into bindings and dispatches. No device here, so every
//! function is unit-tested on its own (below) as well as through the kernels.

use crate::dtype::DType;

/// Element tile of every elementwise kernel; chunks of a large tensor start on multiples of it.
pub(crate) const CHUNK_GRANULE_ELEMS: u64 = 1 << 16;

/// Threads per workgroup of the kernels that take one channel per invocation.
const WG_SIZE: u64 = 256;

/// A window of a buffer: what a binding covers, and where the first element sits in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// Byte offset of the binding (aligned).
    pub(crate) offset: u64,
    /// Bytes the binding covers (whole words).
    pub(crate) size: u64,
    /// Index of the first element in the binding, in elements (words for a mask).
    pub(crate) shift: u64,
}

impl Window {
    /// The window as a binding of `buffer`.
    pub(crate) fn bind<'a>(&self, buffer: &'a wgpu::Buffer) -> wgpu::BufferBinding<'a> {
        wgpu::BufferBinding {
            buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.size),
        }
    }
}

/// The window of elements `[start, end)` of a tensor of `dtype` at byte `offset`: the binding
/// starts at the byte offset aligned down to `align` and ends on a whole word. f32 tensors sit at
/// aligned offsets, so f32 tensors bound over the same elements share the shift.
#[allow(
    clippy::arithmetic_side_effects,
    reason = "sizes, offsets and counts here are bounded by checks made before: tensors and windows lie within buffers the binding checks accepted (at most the device's max_buffer_size), channel counts within one binding, so no product or sum approaches u64::MAX"
)]
pub(crate) fn element_window(
    offset: u64,
    dtype: DType,
    start: u64,
    end: u64,
    align: u64,
) -> Window {
    let size = dtype.size();
    let first = offset + start * size;
    let aligned = first / align * align;
    let shift = (first - aligned) / size;
    Window {
        offset: aligned,
        size: ((end - start + shift) * size).next_multiple_of(4),
        shift,
    }
}

/// The window of mask words `[first, first + count)` of a mask at byte `offset`.
pub(crate) fn mask_window(offset: u64, first: u64, count: u64, align: u64) -> Window {
    table_window(4, offset, first, count, align)
}

/// The window of records `[first, first + count)` of `record` bytes each (a power of two: mask
/// words, per-group scales, per-channel parameters) in a table at byte `offset`, the shift counted
/// in records. The window starts at a multiple of both the alignment and the record size (both
/// powers of two), so the shift is a whole number of records.
#[allow(
    clippy::arithmetic_side_effects,
    reason = "sizes, offsets and counts here are bounded by checks made before: tensors and windows lie within buffers the binding checks accepted (at most the device's max_buffer_size), channel counts within one binding, so no product or sum approaches u64::MAX"
)]
pub(crate) fn table_window(record: u64, offset: u64, first: u64, count: u64, align: u64) -> Window {
    let align = align.max(record);
    let byte = offset + first * record;
    let aligned = byte / align * align;
    let shift = (byte - aligned) / record;
    Window {
        offset: aligned,
        size: (count + shift) * record,
        shift,
    }
}

/// One run of [`contiguous_runs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) first_unit: u64,
    pub(crate) units: u64,
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// Splits `units` work units that tile memory in order (unit `u` starts at element `start_of(u)`,
/// `start_of(units)` is the end) into runs of at most `max_units` whose elements span at most
/// `max_elems`. One unit must fit.
#[allow(
    clippy::arithmetic_side_effects,
    reason = "sizes, offsets and counts here are bounded by checks made before: tensors and windows lie within buffers the binding checks accepted (at most the device's max_buffer_size), channel counts within one binding, so no product or sum approaches u64::MAX"
)]
pub(crate) fn contiguous_runs(
    units: u64,
    start_of: impl Fn(u64) -> u64,
    max_elems: u64,
    max_units: u64,
) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut first = 0;
    while first < units {
        let start = start_of(first);
        // The longest run that fits (start_of is monotone).
        let (mut lo, mut hi) = (first + 1, (first + max_units).min(units));
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if start_of(mid) - start <= max_elems {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        runs.push(Run {
            first_unit: first,
            units: lo - first,
            start,
            end: start_of(lo),
        });
        first = lo;
    }
    runs
}

/// Elements of `dtype` per chunk of an elementwise op: a multiple of the granule that fits one
/// binding of `max_binding_bytes` even when the window starts up to `slack` bytes early.
#[allow(
    clippy::arithmetic_side_effects,
    reason = "divisions by nonzero constants; the product is at most max_binding_bytes"
)]
pub(crate) fn chunk_elems(max_binding_bytes: u64, slack: u64, dtype: DType) -> u64 {
    (max_binding_bytes.saturating_sub(slack) / dtype.size() / CHUNK_GRANULE_ELEMS
        * CHUNK_GRANULE_ELEMS)
        .clamp(CHUNK_GRANULE_ELEMS, 1 << 30)
}

/// `chunk` (from [`chunk_elems`]) shortened, still a multiple of the granule, so that a chunk's
/// window of a per-channel table of `record` bytes a channel fits one binding too: channels of
/// `inner` elements that are runs of the tensor (`outer == 1`) and shorter than `record / size`
/// bytes would otherwise need more table than tensor per chunk (groups of 1 to 7 elements with
/// 32-byte parameters). A chunk may start and end inside a channel: two more. Layouts whose
/// chunks wrap around the channels bind the whole table anyway.
#[allow(
    clippy::arithmetic_side_effects,
    reason = "record >= 4 and the binding >= 256 KiB: no underflow; products at most the chunk"
)]
pub(crate) fn table_chunk(
    chunk: u64,
    outer: usize,
    inner: usize,
    record: u64,
    max_binding_bytes: u64,
    align: u64,
) -> u64 {
    if outer != 1 {
        return chunk;
    }
    let channels = (max_binding_bytes.saturating_sub(align) / record).saturating_sub(2);
    let elems = channels.saturating_mul(inner as u64);
    chunk
        .min(elems / CHUNK_GRANULE_ELEMS * CHUNK_GRANULE_ELEMS)
        .max(CHUNK_GRANULE_ELEMS)
}

/// Channels per chunk start on multiples of this, so that the window of every per-channel table
/// (4 to 32 bytes a channel) starts on a multiple of 256 bytes, the largest storage offset
/// alignment WebGPU allows.
pub(crate) const CHUNK_CHANNELS_GRANULE: usize = 64;

/// A range of channels of a pass with one invocation per channel, and its windows of the
/// per-channel tables: each starts at the chunk's first channel, a multiple of
/// [`CHUNK_CHANNELS_GRANULE`], so aligned in every table. Tables larger than one binding are
/// bound a window per chunk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelChunk {
    pub(crate) first: usize,
    pub(crate) count: usize,
    align: u64,
    /// Workgroups of a pass over the chunk's channels.
    pub(crate) groups: u32,
}

impl ChannelChunk {
    /// Channels `first .. first + count`.
    pub(crate) fn new(first: usize, count: usize, align: u64, max_workgroups: u32) -> Self {
        Self {
            first,
            count,
            align,
            groups: per_channel_groups(count, max_workgroups),
        }
    }

    /// The chunk's window of a table of `record` bytes per channel.
    pub(crate) fn table(&self, record: u64) -> Window {
        table_window(record, 0, self.first as u64, self.count as u64, self.align)
    }

    /// The chunk's windows of a two-part table of `channels` f32 values then `channels` more
    /// (batch statistics: minima then maxima; LSQ's gradients: dscale then dzero_point): the
    /// first part's (aligned) and the second's (starting aligned down, its shift in the window).
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "channel indices within a buffer the caller allocated"
    )]
    pub(crate) fn two_part(&self, channels: usize) -> (Window, Window) {
        let second = table_window(
            4,
            0,
            (channels + self.first) as u64,
            self.count as u64,
            self.align,
        );
        (self.table(4), second)
    }
}

/// `channels` in chunks whose windows of a table of `record` bytes a channel fit one binding of
/// `max_binding_bytes` (one chunk when the whole table fits). A window may start up to 256 bytes
/// (the largest offset alignment) before its first record (the second part of a two-part table,
/// whose start is not aligned): room is left for that.
#[allow(
    clippy::arithmetic_side_effects,
    reason = "record >= 4 and max_binding_bytes >= 256 KiB (the limits' floor): the chunk is at least the granule; counts stay below channels"
)]
pub(crate) fn channel_chunks(
    channels: usize,
    record: u64,
    max_binding_bytes: u64,
    max_workgroups: u32,
    align: u64,
) -> Vec<ChannelChunk> {
    let room = max_binding_bytes.saturating_sub(256);
    let most = (room / record) as usize / CHUNK_CHANNELS_GRANULE * CHUNK_CHANNELS_GRANULE;
    let most = most.max(CHUNK_CHANNELS_GRANULE);
    (0..channels.div_ceil(most))
        .map(|k| {
            let first = k * most;
            ChannelChunk::new(first, most.min(channels - first), align, max_workgroups)
        })
        .collect()
}

/// Workgroups for a kernel with one invocation per channel (it loops over the rest).
pub(crate) fn per_channel_groups(channels: usize, max_workgroups: u32) -> u32 {
    (channels as u64)
        .div_ceil(WG_SIZE)
        .clamp(1, max_workgroups as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_chunks_tile_the_channels_in_windows_that_fit() {
        for (channels, record, binding) in [
            (1, 32, 256 << 10),
            (70001, 4, 256 << 10),
            (65536, 32, 256 << 10),
            (8190, 32, 256 << 10),
            (5, 16, 1 << 30),
        ] {
            let chunks = channel_chunks(channels, record, binding, 65535, 256);
            let mut next = 0;
            for c in &chunks {
                assert_eq!(c.first, next, "{channels} channels: contiguous");
                assert_eq!(c.first % CHUNK_CHANNELS_GRANULE, 0);
                assert_eq!(c.table(record).shift, 0, "aligned windows");
                assert!(c.table(record).size <= binding);
                let (first, second) = c.two_part(channels);
                assert_eq!(first.shift, 0);
                assert!(second.size <= binding, "{channels}: {second:?}");
                next += c.count;
            }
            assert_eq!(next, channels);
        }
    }

    #[test]
    fn element_windows_align_down_and_cover_whole_words() {
        // f32 at an aligned offset: no shift.
        let w = element_window(512, DType::F32, 10, 20, 256);
        assert_eq!(
            w,
            Window {
                offset: 512,
                size: 80,
                shift: 10
            }
        );
        // 16-bit at an odd element offset: the window starts at the aligned byte before it and
        // its size rounds up to whole words.
        let w = element_window(258, DType::F16, 0, 3, 256);
        assert_eq!(
            w,
            Window {
                offset: 256,
                size: 8,
                shift: 1
            }
        );
        let w = element_window(0, DType::Bf16, 129, 130, 256);
        assert_eq!(
            w,
            Window {
                offset: 256,
                size: 4,
                shift: 1
            }
        );
    }

    #[test]
    fn element_windows_cover_exactly_the_elements_asked() {
        for dtype in [DType::F32, DType::F16, DType::Bf16] {
            for offset in (0..1024).step_by(dtype.size() as usize * 7) {
                for (start, end) in [(0, 1), (3, 77), (1000, 5000)] {
                    let w = element_window(offset, dtype, start, end, 256);
                    assert_eq!(w.offset % 256, 0);
                    let first_byte = w.offset + w.shift * dtype.size();
                    assert_eq!(first_byte, offset + start * dtype.size());
                    assert!(w.offset + w.size >= offset + end * dtype.size());
                    assert!(
                        w.size.is_multiple_of(4) && w.size < (end - start) * dtype.size() + 256 + 4
                    );
                }
            }
        }
    }

    #[test]
    fn mask_windows_start_aligned() {
        let w = mask_window(256, 70, 5, 256);
        assert_eq!(
            w,
            Window {
                offset: 512,
                size: (5 + 6) * 4,
                shift: 6
            }
        );
        assert_eq!(
            mask_window(0, 0, 1, 256),
            Window {
                offset: 0,
                size: 4,
                shift: 0
            }
        );
    }

    #[test]
    fn table_windows_start_aligned_on_whole_records() {
        for record in [4u64, 32] {
            for align in [4u64, 16, 32, 256] {
                for (first, count) in [(0, 1), (5, 3), (1000, 77), (8191, 2)] {
                    let w = table_window(record, 0, first, count, align);
                    assert_eq!(w.offset % align, 0);
                    assert_eq!(w.offset % record, 0, "a whole number of records before");
                    assert_eq!(w.offset + w.shift * record, first * record);
                    assert_eq!(w.size, (count + w.shift) * record);
                    assert!(w.shift * record < align.max(record));
                }
            }
        }
    }

    #[test]
    fn contiguous_runs_tile_the_units_within_both_limits() {
        let start_of = |u: u64| (u * 100).min(950);
        for (max_elems, max_units) in [(100, 1), (250, 3), (1000, 100), (100, 100)] {
            let runs = contiguous_runs(10, start_of, max_elems, max_units);
            let mut next = 0;
            for r in &runs {
                assert_eq!(r.first_unit, next);
                assert!(r.units >= 1 && r.units <= max_units);
                assert!(r.end - r.start <= max_elems.max(100));
                assert_eq!(
                    (r.start, r.end),
                    (start_of(r.first_unit), start_of(r.first_unit + r.units))
                );
                next += r.units;
            }
            assert_eq!(next, 10);
        }
        assert!(contiguous_runs(0, start_of, 10, 10).is_empty());
        assert_eq!(contiguous_runs(10, start_of, 1000, 100).len(), 1);
        assert_eq!(contiguous_runs(10, start_of, 250, 100).len(), 5);
    }

    #[test]
    fn chunks_are_granule_multiples_that_fit_a_binding() {
        assert_eq!(chunk_elems(1 << 30, 0, DType::F32), 1 << 28);
        assert_eq!(
            chunk_elems(CHUNK_GRANULE_ELEMS * 4, 0, DType::F32),
            CHUNK_GRANULE_ELEMS
        );
        // The slack of a 16-bit window costs a whole granule when the binding is tight.
        assert_eq!(
            chunk_elems(CHUNK_GRANULE_ELEMS * 4, 256, DType::F16),
            CHUNK_GRANULE_ELEMS
        );
        assert_eq!(
            chunk_elems(CHUNK_GRANULE_ELEMS * 8, 256, DType::F16),
            3 * CHUNK_GRANULE_ELEMS
        );
        assert_eq!(chunk_elems(u64::MAX, 0, DType::F16), 1 << 30);
    }

    #[test]
    fn one_invocation_per_channel() {
        assert_eq!(per_channel_groups(0, 65535), 1);
        assert_eq!(per_channel_groups(256, 65535), 1);
        assert_eq!(per_channel_groups(257, 65535), 2);
        assert_eq!(per_channel_groups(1 << 30, 7), 7);
    }
}
