//! Strided groups on the device (groups along an axis followed by longer axes, see
//! [`StridedGroups`]): every family serves them on their groups-last view, where each group is a
//! run of consecutive elements, the case its kernels are built for. This module moves a tensor
//! (or its packed mask) into that view and back (`shaders/permute.wgsl`); the families record
//! their usual passes on scratch tensors in between. The same groups see the same values in the
//! same order, so the results are the reference's bits; the moves copy bits, never floats.

use super::context::GpuContext;
use super::kernel::planning::{element_window, mask_window, table_window};
use super::kernel::recording::Dispatch;
use super::kernel::shaders::{Shader, PERMUTE};
use super::kernel::{bindings, uniform, EntryPointDecl, FamilyDecl, Kernel, Recorder, StructDecl};
use super::memory::{GpuMask, GpuTensor, TensorBinding};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::quant::{Granularity, StridedGroups};

/// Threads per workgroup of the permutation kernels.
const WG_SIZE: u64 = 256;
/// Destination elements of one dispatch at most, so that every position in a binding (bits of
/// a mask included) fits a `u32`.
const MAX_DISPATCH_ELEMS: u64 = 1 << 30;

/// What moves: 32-bit elements, 16-bit elements, bytes (element codes) or mask bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Unit {
    Word,
    Half,
    Byte,
    Bit,
}

impl Unit {
    fn of(dtype: DType) -> Self {
        match dtype {
            DType::F32 => Unit::Word,
            DType::F16 | DType::Bf16 => Unit::Half,
        }
    }
}

/// Which way a tensor moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// From the tensor's layout to the groups-last view.
    ToGroupsLast,
    /// From the groups-last view back.
    FromGroupsLast,
}

/// The permutation kernel for one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PermuteKernel {
    unit: Unit,
}

impl Kernel for PermuteKernel {
    fn shader(&self) -> &'static Shader {
        &PERMUTE
    }

    fn entry_point(&self) -> &'static str {
        match self.unit {
            Unit::Word => "permute_words",
            Unit::Half => "permute_halves",
            Unit::Byte => "permute_bytes",
            Unit::Bit => "permute_bits",
        }
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }
}

bindings! {
    /// Every permutation entry point: a source window in, a destination window out.
    PermuteBindings {
        src: Input @ 1,
        dst: ReadWrite @ 2,
    }
}

uniform! {
    /// The uniform of the permutation kernels (see `shaders/permute.wgsl`).
    struct PermuteUniform as "Permute" {
        len: u32,
        lead: u32,
        rows: u32,
        cols: u32,
        src_shift: u32,
        dst_shift: u32,
        row_stride: u32,
        _pad0: u32,
    }
}

/// Scratch for one call on strided groups: `x`'s groups-last view, the view's outputs, and the
/// shape the family's own path takes them with.
pub(crate) struct GroupsLastScratch {
    pub(crate) groups: StridedGroups,
    pub(crate) shape: Vec<usize>,
}

impl GroupsLastScratch {
    /// The groups-last view of a tensor of `shape` under `granularity`, when its groups are
    /// strided.
    pub(crate) fn of(granularity: Granularity, shape: &[usize]) -> Result<Option<Self>> {
        Ok(granularity
            .groups_last(shape)?
            .map(|(groups, shape)| Self { groups, shape }))
    }

    /// A device tensor for a view of `dtype`.
    pub(crate) fn tensor(&self, ctx: &GpuContext, dtype: DType) -> Result<GpuTensor> {
        ctx.create_tensor(self.groups.numel(), dtype)
    }

    /// A device mask for a view.
    pub(crate) fn mask(&self, ctx: &GpuContext) -> Result<GpuMask> {
        ctx.create_mask(self.groups.numel())
    }

    /// Records `x` moved into its groups-last view, `forward` on the view (its `x`, the view's
    /// shape, its `y` and mask), and the view's `y` and mask moved back into `y` and `mask`:
    /// every forward that maps a tensor to a tensor and a mask. The caller checks the bindings
    /// first.
    pub(crate) fn record_forward<R: Recorder + ?Sized>(
        &self,
        ctx: &GpuContext,
        recorder: &mut R,
        (x, y, mask): (
            TensorBinding<'_>,
            TensorBinding<'_>,
            Option<TensorBinding<'_>>,
        ),
        forward: impl FnOnce(
            &mut R,
            TensorBinding<'_>,
            &[usize],
            TensorBinding<'_>,
            Option<TensorBinding<'_>>,
        ) -> Result<()>,
    ) -> Result<()> {
        let (xs, ys) = (self.tensor(ctx, x.dtype)?, self.tensor(ctx, x.dtype)?);
        let ms = mask.map(|_| self.mask(ctx)).transpose()?;
        self.record_tensor(ctx, recorder, Direction::ToGroupsLast, x, xs.binding())?;
        forward(
            recorder,
            xs.binding(),
            &self.shape,
            ys.binding(),
            ms.as_ref().map(GpuMask::binding),
        )?;
        self.record_tensor(ctx, recorder, Direction::FromGroupsLast, ys.binding(), y)?;
        if let (Some(ms), Some(mask)) = (&ms, mask) {
            self.record_mask(ctx, recorder, Direction::FromGroupsLast, ms.binding(), mask)?;
        }
        Ok(())
    }

    /// Checks the input `x` and records it moved into a new tensor, its groups-last view.
    pub(crate) fn record_input(
        &self,
        ctx: &GpuContext,
        recorder: &mut (impl Recorder + ?Sized),
        x: TensorBinding<'_>,
    ) -> Result<GpuTensor> {
        ctx.check_tensor("x", &x, self.groups.numel())?;
        let view = self.tensor(ctx, x.dtype)?;
        self.record_tensor(ctx, recorder, Direction::ToGroupsLast, x, view.binding())?;
        Ok(view)
    }

    /// Records `src` (a tensor of `numel` elements) moved into `dst`, in `direction`.
    pub(crate) fn record_tensor(
        &self,
        ctx: &GpuContext,
        recorder: &mut (impl Recorder + ?Sized),
        direction: Direction,
        src: TensorBinding<'_>,
        dst: TensorBinding<'_>,
    ) -> Result<()> {
        src.dtype.check_same("the permuted tensor", dst.dtype)?;
        record_permute(
            ctx,
            recorder,
            self.groups,
            direction,
            Unit::of(src.dtype),
            src,
            dst,
        )
    }

    /// Records the byte table `buffer` (an element code per element, in the groups-last view's
    /// order) put into the tensor's order, in place (through a scratch copy).
    pub(crate) fn record_bytes_from_groups_last(
        &self,
        ctx: &GpuContext,
        recorder: &mut (impl Recorder + ?Sized),
        buffer: &wgpu::Buffer,
    ) -> Result<()> {
        let bytes = (self.groups.numel() as u64).next_multiple_of(4);
        let scratch = ctx.storage_buffer_zeroed("fakequant permuted codes", bytes)?;
        let (table, copy) = (TensorBinding::from(buffer), TensorBinding::from(&scratch));
        let units = self.groups;
        record_permute(
            ctx,
            recorder,
            units,
            Direction::FromGroupsLast,
            Unit::Byte,
            table,
            copy,
        )?;
        // The copy back: blocks of one element, the identity.
        let identity = StridedGroups {
            blocks: units.numel(),
            size: 1,
            inner: 1,
        };
        record_permute(
            ctx,
            recorder,
            identity,
            Direction::FromGroupsLast,
            Unit::Byte,
            copy,
            table,
        )
    }

    /// Records the mask `src` moved into `dst`, in `direction`.
    pub(crate) fn record_mask(
        &self,
        ctx: &GpuContext,
        recorder: &mut (impl Recorder + ?Sized),
        direction: Direction,
        src: TensorBinding<'_>,
        dst: TensorBinding<'_>,
    ) -> Result<()> {
        record_permute(ctx, recorder, self.groups, direction, Unit::Bit, src, dst)
    }
}

/// Records the permutation of the `groups.numel()` units of `src` into `dst`. Each dispatch
/// covers a run of destination elements starting on a multiple of 32 (whole mask words, whole
/// 16-bit pairs) and binds the whole blocks its sources lie in, so a dispatch needs a binding of
/// at most its own length plus two blocks.
#[allow(
    clippy::arithmetic_side_effects,
    reason = "counts are bounded by the tensor's element count, which lies within a buffer the callers' binding checks accepted, and by the capacity checked here"
)]
fn record_permute(
    ctx: &GpuContext,
    recorder: &mut (impl Recorder + ?Sized),
    groups: StridedGroups,
    direction: Direction,
    unit: Unit,
    src: TensorBinding<'_>,
    dst: TensorBinding<'_>,
) -> Result<()> {
    let n = groups.numel() as u64;
    if n == 0 {
        return Ok(());
    }
    let (size, inner) = (groups.size as u64, groups.inner as u64);
    let block = size * inner;
    let (rows, cols) = match direction {
        Direction::ToGroupsLast => (inner, size),
        Direction::FromGroupsLast => (size, inner),
    };
    let limits = ctx.dispatch_limits();
    let align = ctx.device_limits().min_storage_buffer_offset_alignment as u64;
    // Units one window holds once its start is aligned down.
    let bytes = limits.max_binding_bytes.saturating_sub(align);
    let capacity = match unit {
        Unit::Word => bytes / 4,
        Unit::Half => bytes / 2,
        Unit::Byte => bytes,
        Unit::Bit => bytes.saturating_mul(8),
    }
    .min(MAX_DISPATCH_ELEMS);
    // Room for the run plus a partial block on either side; a run of whole 32s.
    let chunk = capacity.saturating_sub(2 * block) / 32 * 32;
    if chunk == 0 {
        return Err(Error::TooLarge {
            what: "a block of strided groups (group size times the elements after the group \
                   axis): the permutation binds two of them at once",
            requested: block,
            limit: capacity / 2,
        });
    }
    let per_word = if unit == Unit::Bit { 32 } else { 1 };
    let max_workgroups = u64::from(limits.max_workgroups);
    let mut dispatches = Vec::new();
    let mut start = 0;
    while start < n {
        let end = (start + chunk).min(n);
        let (first_block, last_block) = (start / block, end.div_ceil(block));
        let (src_window, src_shift, dst_window, dst_shift) = match unit {
            Unit::Word | Unit::Half => {
                let dtype = if unit == Unit::Word {
                    DType::F32
                } else {
                    DType::F16
                };
                let s = element_window(
                    src.offset,
                    dtype,
                    first_block * block,
                    last_block * block,
                    align,
                );
                let d = element_window(dst.offset, dtype, start, end, align);
                (s, s.shift, d, d.shift)
            }
            Unit::Byte => {
                // Byte tables sit at aligned offsets: windows of whole words from a word.
                let s = table_window(
                    4,
                    src.offset,
                    first_block * block / 4,
                    (last_block * block).div_ceil(4) - first_block * block / 4,
                    align,
                );
                let d = table_window(4, dst.offset, start / 4, end.div_ceil(4) - start / 4, align);
                (
                    s,
                    s.shift * 4 + first_block * block % 4,
                    d,
                    d.shift * 4 + start % 4,
                )
            }
            Unit::Bit => {
                let first_bit = first_block * block;
                let last_bit = last_block * block;
                let s = mask_window(
                    src.offset,
                    first_bit / 32,
                    last_bit.div_ceil(32) - first_bit / 32,
                    align,
                );
                let d = mask_window(dst.offset, start / 32, end.div_ceil(32) - start / 32, align);
                (s, s.shift * 32 + first_bit % 32, d, d.shift * 32)
            }
        };
        let invocations = (end - start).div_ceil(per_word);
        let workgroups = invocations.div_ceil(WG_SIZE);
        let grid_x = workgroups.min(max_workgroups);
        let grid_y = workgroups.div_ceil(grid_x);
        dispatches.push(Dispatch {
            uniform: PermuteUniform {
                len: (end - start) as u32,
                lead: (start - first_block * block) as u32,
                rows: rows as u32,
                cols: cols as u32,
                src_shift: src_shift as u32,
                dst_shift: dst_shift as u32,
                row_stride: (grid_x * WG_SIZE) as u32,
                _pad0: 0,
            },
            bindings: PermuteBindings {
                src: src_window.bind(src.buffer),
                dst: dst_window.bind(dst.buffer),
            },
            grid: [grid_x as u32, grid_y as u32],
        });
        start = end;
    }
    ctx.record_pass(recorder, PermuteKernel { unit }, &dispatches)
}

/// This family's declarations, for the layout checks.
pub(crate) fn declarations() -> FamilyDecl {
    FamilyDecl {
        entry_points: [
            "permute_words",
            "permute_halves",
            "permute_bytes",
            "permute_bits",
        ]
        .into_iter()
        .map(|entry| EntryPointDecl::of::<PermuteBindings>(&PERMUTE, entry))
        .collect(),
        structs: vec![StructDecl::of::<PermuteUniform>(&PERMUTE)],
    }
}
