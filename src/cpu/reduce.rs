//! The CPU backend's reductions: per-channel min/max (order-free) and LSQ's fixed-order sums
//! (blocks in parallel, each in the reference's order).

use super::convert::widen;
use super::Cpu;
use crate::dtype::Element;
use crate::observer::MinMax;
use crate::quant::ChannelLayout;
use crate::reference::lsq::{add, tree_sum, BLOCK, GROUP, LANES};

/// The finite min and max of each channel of `x` ([`crate::reference::observer::batch_min_max`]).
/// The reference's result does not depend on the order of the elements: non-finite values are
/// skipped, zeros count as `+0.0` (`v + 0.0` turns `-0.0` into `+0.0` and changes nothing else),
/// and among equal values the bits are then equal. So each task reduces its part and the parts
/// are merged in any order.
pub fn channel_min_max<T: Element>(cpu: &Cpu, layout: &ChannelLayout, x: &[T]) -> MinMax {
    let parts = cpu.map_ranges(x.len(), super::elementwise::CHUNK, |range| {
        let mut part = MinMax::empty(layout.channels);
        for run in super::elementwise::runs(layout, range.start, range.end) {
            let (x, c) = (&x[run.start..run.end], run.channel);
            if run.consecutive {
                let n = x.len();
                min_max_row(cpu.isa, x, &mut part.min[c..c + n], &mut part.max[c..c + n]);
            } else {
                (part.min[c], part.max[c]) = min_max_run(cpu.isa, x, part.min[c], part.max[c]);
            }
        }
        part
    });
    let mut total = MinMax::empty(layout.channels);
    for part in parts {
        for c in 0..layout.channels {
            (total.min[c], total.max[c]) =
                (total.min[c].min(part.min[c]), total.max[c].max(part.max[c]));
        }
    }
    total
}

multiversion! {
    /// `x`'s values folded into each element's own running min and max (a row of channels).
    fn min_max_row<T: Element>(x: &[T], min: &mut [f32], max: &mut [f32]) {
        for ((v, lo), hi) in x.iter().zip(min.iter_mut()).zip(max.iter_mut()) {
            (*lo, *hi) = fold_min_max(*lo, *hi, widen(*v));
        }
    }
}

multiversion! {
    /// `x`'s values (one channel) folded into the running `(lo, hi)`, with independent
    /// accumulators per lane, so that the loop vectorizes (one running min/max would chain every
    /// element to the previous one).
    pub(crate) fn min_max_run<T: Element>(x: &[T], lo: f32, hi: f32) -> (f32, f32) {
        let mut lanes_lo = [f32::INFINITY; ACCUMULATORS];
        let mut lanes_hi = [f32::NEG_INFINITY; ACCUMULATORS];
        let mut rows = x.chunks_exact(ACCUMULATORS);
        for row in &mut rows {
            for (k, v) in row.iter().enumerate() {
                (lanes_lo[k], lanes_hi[k]) = fold_min_max(lanes_lo[k], lanes_hi[k], widen(*v));
            }
        }
        for v in rows.remainder() {
            (lanes_lo[0], lanes_hi[0]) = fold_min_max(lanes_lo[0], lanes_hi[0], widen(*v));
        }
        lanes_lo
            .into_iter()
            .zip(lanes_hi)
            .fold((lo, hi), |(lo, hi), (l, h)| (lo.min(l), hi.max(h)))
    }
}

/// Running minima and maxima per task in [`channel_min_max`]: 16 f32 lanes, a 512-bit vector.
const ACCUMULATORS: usize = 16;

/// One finite value (zeros as `+0.0`) folded into a running min and max; non-finite skipped.
/// Written as a select of the value (or of the infinity that changes nothing) followed by a
/// strict compare-and-select, the shape of a vector `min`/`max` instruction (measured: 3x faster
/// than folding the finiteness test into the compares).
#[inline(always)]
fn fold_min_max(lo: f32, hi: f32, v: f32) -> (f32, f32) {
    let finite = v.abs() < f32::INFINITY;
    let v = v + 0.0;
    let for_min = if finite { v } else { f32::INFINITY };
    let for_max = if finite { v } else { f32::NEG_INFINITY };
    (
        if for_min < lo { for_min } else { lo },
        if for_max > hi { for_max } else { hi },
    )
}

multiversion! {
/// [`crate::reference::lsq::block_sum`], equal bit for bit and without its per-lane passes:
/// lane `t` adds rows `t, t + 256, ..` of the block as a vector over the 256 lanes, in the same
/// order from the same `+0`. Lanes, and groups of lanes, that hold no term are `+0` in the
/// reference, and adding them changes nothing: a sum that starts from `+0` is never `-0` (with
/// rounding to nearest, `+0 + -0` and `x + -x` are `+0`), and its NaN is already canonical. So
/// only the lanes and groups that hold terms are added.
pub fn block_sum(terms: &[f32]) -> f32 {
    debug_assert!(terms.len() <= BLOCK);
    let mut lanes = [0.0f32; LANES];
    for row in terms.chunks(LANES) {
        for (lane, &v) in lanes.iter_mut().zip(row) {
            *lane = add(*lane, v);
        }
    }
    let present = terms.len().min(LANES);
    lanes[..present]
        .chunks(GROUP)
        .map(|group| group.iter().fold(0.0, |acc, &v| add(acc, v)))
        .fold(0.0, add)
}
}

/// How the terms of each channel split into [`BLOCK`]s: channel `c`'s terms are its elements in
/// flat order (ranks `0..per_channel`), block `k` the ranks `k * BLOCK ..`.
#[derive(Debug, Clone, Copy)]
pub struct ChannelBlocks {
    layout: ChannelLayout,
    per_channel: usize,
    blocks_per_channel: usize,
}

impl ChannelBlocks {
    /// The blocks of `layout`.
    pub fn new(layout: &ChannelLayout) -> Self {
        let per_channel = layout.outer * layout.inner;
        Self {
            layout: *layout,
            per_channel,
            blocks_per_channel: per_channel.div_ceil(BLOCK),
        }
    }

    /// The contiguous flat ranges `(start, len)` of block `k` of channel `c`, in rank order.
    pub fn pieces(&self, c: usize, k: usize, pieces: &mut Vec<(usize, usize)>) {
        pieces.clear();
        let end = ((k + 1) * BLOCK).min(self.per_channel);
        let mut rank = k * BLOCK;
        if self.layout.channels == 1 {
            // One channel: ranks are flat indices.
            pieces.push((rank, end - rank));
            return;
        }
        let inner = self.layout.inner;
        while rank < end {
            let (o, j) = (rank / inner, rank % inner);
            let len = (inner - j).min(end - rank);
            pieces.push(((o * self.layout.channels + c) * inner + j, len));
            rank += len;
        }
    }

    /// Whether each channel's elements are one contiguous flat range (one channel, or nothing
    /// before the channel axis), so that the blocks, in order, partition the tensor.
    pub fn contiguous(&self) -> bool {
        self.layout.channels <= 1 || self.layout.outer == 1
    }

    /// For every channel, the [`tree_sum`]s of `K` kinds of terms over the channel's elements in
    /// flat order, and a tally. `terms(c, start, len, out)` pushes the terms of the flat elements
    /// `start..start + len` (all of channel `c`) onto `out` and returns their tally. Blocks run
    /// in parallel for a large tensor; each channel's sum is then the reference's: one block is
    /// its own sum, more are summed by `tree_sum` over the block sums. Tallies are integers,
    /// summed exactly.
    pub fn tree_sums<const K: usize>(
        &self,
        cpu: &Cpu,
        terms: impl Fn(usize, usize, usize, &mut [Vec<f32>; K]) -> u64 + Sync,
    ) -> Vec<([f32; K], u64)> {
        let per_channel = self.blocks_per_channel;
        let blocks: Vec<([f32; K], u64)> = cpu.map_indices(
            self.layout.channels * per_channel,
            self.layout.numel(),
            || {
                (
                    Vec::new(),
                    std::array::from_fn::<Vec<f32>, K, _>(|_| Vec::new()),
                )
            },
            |(pieces, out), b| {
                let c = b / per_channel;
                self.pieces(c, b % per_channel, pieces);
                out.iter_mut().for_each(Vec::clear);
                let tally = pieces
                    .iter()
                    .map(|&(start, len)| terms(c, start, len, out))
                    .sum::<u64>();
                (std::array::from_fn(|t| block_sum(cpu.isa, &out[t])), tally)
            },
        );
        self.channel_sums(&blocks)
    }

    /// [`ChannelBlocks::tree_sums`] for a [`ChannelBlocks::contiguous`] layout, with a
    /// per-element output written in the same pass: `terms(c, start, len, out, output)` also
    /// fills `output`, the elements `start..start + len` of `output`. The blocks partition the
    /// tensor in flat order, so each task owns the output of its blocks.
    pub fn tree_sums_with_output<const K: usize, O: Send>(
        &self,
        cpu: &Cpu,
        output: &mut [O],
        terms: impl Fn(usize, usize, usize, &mut [Vec<f32>; K], &mut [O]) -> u64 + Sync,
    ) -> Vec<([f32; K], u64)> {
        debug_assert!(self.contiguous());
        let per_channel = self.blocks_per_channel;
        let count = self.layout.channels * per_channel;
        let block_range = |b: usize| {
            let (c, k) = (b / per_channel, b % per_channel);
            let start = c * self.per_channel + k * BLOCK;
            (c, start, BLOCK.min(self.per_channel - k * BLOCK))
        };
        // Tasks of consecutive blocks, each with the output of its blocks.
        let per_task = count.div_ceil(cpu.threads() * 4).max(1);
        let mut tasks = Vec::with_capacity(count.div_ceil(per_task));
        let mut rest = output;
        for first in (0..count).step_by(per_task) {
            let blocks = first..(first + per_task).min(count);
            let len: usize = blocks.clone().map(|b| block_range(b).2).sum();
            let (mine, others) = rest.split_at_mut(len);
            tasks.push((blocks, mine));
            rest = others;
        }
        let run = |(blocks, output): (std::ops::Range<usize>, &mut [O])| {
            let mut out: [Vec<f32>; K] = std::array::from_fn(|_| Vec::with_capacity(BLOCK));
            let mut offset = 0;
            blocks
                .map(|b| {
                    let (c, start, len) = block_range(b);
                    out.iter_mut().for_each(Vec::clear);
                    let tally = terms(c, start, len, &mut out, &mut output[offset..offset + len]);
                    offset += len;
                    (std::array::from_fn(|t| block_sum(cpu.isa, &out[t])), tally)
                })
                .collect::<Vec<([f32; K], u64)>>()
        };
        let blocks: Vec<([f32; K], u64)> = cpu
            .map_tasks(self.layout.numel(), tasks, run)
            .into_iter()
            .flatten()
            .collect();
        self.channel_sums(&blocks)
    }

    /// Each channel's sums from its blocks' (in block order): one block is its own sum, more are
    /// summed by the reference's `tree_sum` over the block sums.
    fn channel_sums<const K: usize>(&self, blocks: &[([f32; K], u64)]) -> Vec<([f32; K], u64)> {
        let per_channel = self.blocks_per_channel;
        (0..self.layout.channels)
            .map(|c| {
                let partials = &blocks[c * per_channel..(c + 1) * per_channel];
                let sums = std::array::from_fn(|t| match partials {
                    [] => 0.0,
                    [(one, _)] => one[t],
                    many => tree_sum(&many.iter().map(|(p, _)| p[t]).collect::<Vec<_>>()),
                });
                (sums, partials.iter().map(|(_, n)| n).sum())
            })
            .collect()
    }
}

/// `max |x|` per channel ([`crate::reference::float_quant`]'s `channel_amax`): over the finite
/// values when `finite_only` (0 without one), else over every value with a NaN making the channel
/// NaN. Order-free (a maximum, and "any NaN"), so tasks merge their parts in any order.
pub fn channel_amax<T: Element>(
    cpu: &Cpu,
    layout: &ChannelLayout,
    x: &[T],
    finite_only: bool,
) -> Vec<f32> {
    let merge = |a: f32, b: f32| {
        if a.is_nan() || b.is_nan() {
            f32::NAN
        } else {
            a.max(b)
        }
    };
    let parts = cpu.map_ranges(x.len(), super::elementwise::CHUNK, |range| {
        let mut part = vec![0.0f32; layout.channels];
        for run in super::elementwise::runs(layout, range.start, range.end) {
            let x = &x[run.start..run.end];
            if run.consecutive {
                amax_row(cpu.isa, x, &mut part[run.channel..], finite_only);
            } else {
                let a = &mut part[run.channel];
                *a = merge(*a, amax_run(cpu.isa, x, finite_only));
            }
        }
        part
    });
    let mut total = vec![0.0f32; layout.channels];
    for part in parts {
        for (t, p) in total.iter_mut().zip(part) {
            *t = merge(*t, p);
        }
    }
    total
}

/// One value folded into a running `max |x|` (see [`channel_amax`]): NaN sticks unless
/// `finite_only`, where NaN and infinities are skipped.
#[inline(always)]
fn fold_amax(a: f32, v: f32, finite_only: bool) -> f32 {
    let magnitude = v.abs();
    if v.is_nan() {
        return if finite_only { a } else { f32::NAN };
    }
    let counted = !finite_only || magnitude < f32::INFINITY;
    if counted && magnitude > a {
        magnitude
    } else {
        a
    }
}

multiversion! {
    /// `x`'s values folded into each element's own running amax (a row of channels).
    fn amax_row<T: Element>(x: &[T], amax: &mut [f32], finite_only: bool) {
        for (v, a) in x.iter().zip(amax.iter_mut()) {
            *a = fold_amax(*a, widen(*v), finite_only);
        }
    }
}

multiversion! {
    /// `max |x|` of one channel's values (from 0), NaN if `x` holds a NaN and not
    /// `finite_only`; infinities skipped when `finite_only`.
    fn amax_run<T: Element>(x: &[T], finite_only: bool) -> f32 {
        let mut lanes = [0.0f32; ACCUMULATORS];
        let mut nan = [false; ACCUMULATORS];
        let mut fold = |k: usize, v: f32| {
            let magnitude = v.abs();
            let counted = if finite_only {
                magnitude < f32::INFINITY
            } else {
                magnitude <= f32::INFINITY
            };
            let m = if counted { magnitude } else { 0.0 };
            lanes[k] = if m > lanes[k] { m } else { lanes[k] };
            nan[k] |= v.is_nan();
        };
        let mut rows = x.chunks_exact(ACCUMULATORS);
        for row in &mut rows {
            for (k, v) in row.iter().enumerate() {
                fold(k, widen(*v));
            }
        }
        for v in rows.remainder() {
            fold(0, widen(*v));
        }
        if !finite_only && nan.iter().any(|&n| n) {
            return f32::NAN;
        }
        lanes.into_iter().fold(0.0, f32::max)
    }
}
