//! The quantization parameters and their validation: ranges, scales, zero points, granularity,
//! rounding of the quotient, channel layout and the bit-packed mask.
//!
//! Everything here is plain data shared by the CPU reference ([`crate::reference`]) and the GPU
//! path ([`crate::gpu`]); constructing it validates it, so both paths only ever see legal values.

use crate::error::{Error, Result};

/// An integer quantization range `[qmin, qmax]`, `qmin < qmax`, that fits a signed or unsigned
/// integer of 2 to 16 bits (`-32768 <= qmin`, `qmax <= 65535`, `qmax - qmin <= 65535`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantRange {
    qmin: i32,
    qmax: i32,
}

impl QuantRange {
    /// A custom range. Fails unless `qmin < qmax` and the range fits a 16-bit integer.
    pub fn new(qmin: i32, qmax: i32) -> Result<Self> {
        let err = |reason| Err(Error::InvalidRange { qmin, qmax, reason });
        if qmin >= qmax {
            return err("qmin must be smaller than qmax");
        }
        if qmin < -32768 || qmax > 65535 || (qmax as i64 - qmin as i64) > 65535 {
            return err("the range must fit a signed or unsigned integer of at most 16 bits");
        }
        Ok(Self { qmin, qmax })
    }

    /// The full signed range of `bits` bits, `[-2^(bits-1), 2^(bits-1) - 1]`, for 2 to 16 bits.
    pub fn signed(bits: u32) -> Result<Self> {
        if !(2..=16).contains(&bits) {
            return Err(Error::InvalidBitWidth { bits });
        }
        Self::new(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    }

    /// The narrow (symmetric) signed range of `bits` bits, `[-(2^(bits-1) - 1), 2^(bits-1) - 1]`.
    pub fn signed_narrow(bits: u32) -> Result<Self> {
        let full = Self::signed(bits)?;
        Self::new(full.qmin + 1, full.qmax)
    }

    /// The unsigned range of `bits` bits, `[0, 2^bits - 1]`, for 2 to 16 bits.
    pub fn unsigned(bits: u32) -> Result<Self> {
        if !(2..=16).contains(&bits) {
            return Err(Error::InvalidBitWidth { bits });
        }
        Self::new(0, (1 << bits) - 1)
    }

    /// int8, `[-128, 127]`.
    pub const INT8: Self = Self {
        qmin: -128,
        qmax: 127,
    };
    /// Narrow int8, `[-127, 127]` (symmetric around zero).
    pub const INT8_NARROW: Self = Self {
        qmin: -127,
        qmax: 127,
    };
    /// uint8, `[0, 255]`.
    pub const UINT8: Self = Self { qmin: 0, qmax: 255 };
    /// int4, `[-8, 7]`.
    pub const INT4: Self = Self { qmin: -8, qmax: 7 };
    /// uint4, `[0, 15]`.
    pub const UINT4: Self = Self { qmin: 0, qmax: 15 };
    /// int16, `[-32768, 32767]`.
    pub const INT16: Self = Self {
        qmin: -32768,
        qmax: 32767,
    };

    /// Lower bound.
    pub fn qmin(&self) -> i32 {
        self.qmin
    }

    /// Upper bound.
    pub fn qmax(&self) -> i32 {
        self.qmax
    }
}

/// How the quotient `x / scale` is formed before rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Rounding {
    /// PyTorch's arithmetic: `round_half_even(x * (1.0f32 / scale))`, the reciprocal rounded to f32
    /// first. This is what `torch.fake_quantize_per_*_affine` compute.
    #[default]
    Reciprocal,
    /// The seed document's arithmetic: `round_half_even(x / scale)` with the correctly rounded f32
    /// quotient. It differs from [`Rounding::Reciprocal`] on a few percent of near-tie inputs.
    Quotient,
}

/// Which elements share a scale and zero point: the one granularity type of fake-quant
/// parameters, observers and LSQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Granularity {
    /// One scale and zero point for the whole tensor.
    #[default]
    PerTensor,
    /// One per index along `axis` of a row-major contiguous shape: the channel of flat index `i`
    /// is `(i / inner) % channels`.
    PerChannel {
        /// The channel axis.
        axis: usize,
    },
    /// One per group of `size` consecutive elements along `axis` (torchao's per-group
    /// granularity), any axis of any rank; `size` divides the axis length `len`. With
    /// `shape = [outer..., len, inner...]` (`inner` the product after the axis), the group of
    /// flat index `i` is `(i / (size * inner)) * inner + i % inner`: parameters are ordered by
    /// the flat index of the group's first element, as a tensor of shape
    /// `[outer..., len / size, inner...]`. Along the last axis longer than 1 (`inner == 1`, the
    /// weights of a linear layer grouped along their input axis, the common case) group `g`
    /// covers the flat indices `g * size .. (g + 1) * size` (see [`ParamLayout`]).
    PerGroup {
        /// The axis the groups run along.
        axis: usize,
        /// Elements per group, at least 1.
        size: usize,
    },
    /// One per token: a group per row of the last axis (per-group along the last axis with the
    /// whole row as a group), the granularity of dynamic activation quantization. A scalar
    /// (rank 0) is one token of one element.
    PerToken,
}

impl Granularity {
    /// Per-channel along `axis`.
    pub fn per_channel(axis: usize) -> Self {
        Granularity::PerChannel { axis }
    }

    /// Groups of `size` consecutive elements along `axis`.
    pub fn per_group(axis: usize, size: usize) -> Self {
        Granularity::PerGroup { axis, size }
    }

    /// The axis parameters are taken along: the channel or group axis, `None` per tensor and per
    /// token (whose axis is the last one of the shape).
    pub fn axis(&self) -> Option<usize> {
        match *self {
            Granularity::PerTensor | Granularity::PerToken => None,
            Granularity::PerChannel { axis } | Granularity::PerGroup { axis, .. } => Some(axis),
        }
    }

    /// How the flat indices of a tensor of `shape` holding `len` values map to parameter sets,
    /// for every granularity: checks the axis against the shape and `len` against the shape's
    /// product.
    pub fn param_layout(&self, shape: &[usize], len: usize) -> Result<ParamLayout> {
        if let Granularity::PerGroup { axis, size } = *self {
            let n = numel(shape)?;
            if n != len {
                return Err(Error::LengthMismatch {
                    what: "data length vs product of shape",
                    expected: n,
                    actual: len,
                });
            }
            return group_layout(shape, n, axis, size);
        }
        self.layout(shape, len).map(ParamLayout::Channels)
    }

    /// For groups along an axis followed by longer axes ([`StridedGroups`]): the groups, and a
    /// shape whose tensor under this same granularity has the groups of their groups-last view
    /// (all ones but the group axis, which holds every element), so that an op called on
    /// `(groups.to_groups_last(x), shape)` computes the same groups from the same values in the
    /// same order. `None` for every other granularity and shape.
    pub fn groups_last(&self, shape: &[usize]) -> Result<Option<(StridedGroups, Vec<usize>)>> {
        let Granularity::PerGroup { axis, .. } = *self else {
            return Ok(None);
        };
        let n = numel(shape)?;
        Ok(self.param_layout(shape, n)?.strided().map(|groups| {
            let mut view = vec![1; shape.len()];
            view[axis] = n;
            (groups, view)
        }))
    }

    /// The channel layout of a tensor of `shape` holding `len` values: checks the axis against
    /// the shape and `len` against the shape's product; per tensor, one channel of `len`
    /// elements. Groups along an axis followed by longer axes have none (`InvalidGroup`): their
    /// layout is [`Granularity::param_layout`]'s [`ParamLayout::StridedGroups`].
    pub fn layout(&self, shape: &[usize], len: usize) -> Result<ChannelLayout> {
        let n = numel(shape)?;
        if n != len {
            return Err(Error::LengthMismatch {
                what: "data length vs product of shape",
                expected: n,
                actual: len,
            });
        }
        match *self {
            Granularity::PerTensor => Ok(ChannelLayout {
                outer: n,
                channels: 1,
                inner: 1,
            }),
            Granularity::PerChannel { axis } => ChannelLayout::new(shape, axis),
            Granularity::PerGroup { axis, size } => match group_layout(shape, n, axis, size)? {
                ParamLayout::Channels(layout) => Ok(layout),
                ParamLayout::StridedGroups(_) => Err(Error::InvalidGroup {
                    axis,
                    size,
                    shape: shape.to_vec(),
                    reason: "groups along an axis followed by longer axes have no channel \
                             layout (see Granularity::param_layout)",
                }),
            },
            Granularity::PerToken => match shape.last() {
                None => Ok(ChannelLayout {
                    outer: 1,
                    channels: 1,
                    inner: 1,
                }),
                Some(&row) => group_layout(shape, n, shape.len() - 1, row)?.channel_layout(),
            },
        }
    }

    /// The number of parameter sets a tensor of `shape` needs (1 per tensor).
    pub fn channels(&self, shape: &[usize]) -> Result<usize> {
        match *self {
            Granularity::PerTensor => Ok(1),
            Granularity::PerChannel { axis } => {
                shape.get(axis).copied().ok_or(Error::AxisOutOfRange {
                    axis,
                    rank: shape.len(),
                })
            }
            Granularity::PerGroup { .. } | Granularity::PerToken => {
                Ok(self.param_layout(shape, numel(shape)?)?.channels())
            }
        }
    }
}

/// Groups of `size` along `axis`: with nothing longer than 1 after the axis, the groups are
/// consecutive runs of `size` flat elements, so group `g` is "channel" `g` of `[1, n / size, size]`
/// and every per-channel path (reference and kernels) serves groups as is; otherwise the groups
/// are strided ([`StridedGroups`]).
fn group_layout(shape: &[usize], n: usize, axis: usize, size: usize) -> Result<ParamLayout> {
    let Some(&len) = shape.get(axis) else {
        return Err(Error::AxisOutOfRange {
            axis,
            rank: shape.len(),
        });
    };
    let refuse = |reason: &'static str| {
        Err(Error::InvalidGroup {
            axis,
            size,
            shape: shape.to_vec(),
            reason,
        })
    };
    if size == 0 {
        return refuse("the group size must be at least 1");
    }
    if len % size != 0 {
        return refuse("the group size must divide the axis length");
    }
    // Every factor divides `n`, which did not overflow.
    let inner: usize = shape[axis + 1..].iter().product();
    if inner <= 1 || n == 0 {
        return Ok(ParamLayout::Channels(ChannelLayout {
            outer: 1,
            channels: n / size,
            inner: size,
        }));
    }
    Ok(ParamLayout::StridedGroups(StridedGroups {
        blocks: n / (size * inner),
        size,
        inner,
    }))
}

/// How a tensor's flat indices map to parameter sets ([`Granularity::param_layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamLayout {
    /// Per tensor, per channel, per token, and groups of consecutive elements.
    Channels(ChannelLayout),
    /// Groups along an axis followed by longer axes.
    StridedGroups(StridedGroups),
}

impl ParamLayout {
    /// The number of parameter sets.
    pub fn channels(&self) -> usize {
        match self {
            ParamLayout::Channels(layout) => layout.channels,
            ParamLayout::StridedGroups(groups) => groups.groups(),
        }
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        match self {
            ParamLayout::Channels(layout) => layout.numel(),
            ParamLayout::StridedGroups(groups) => groups.numel(),
        }
    }

    /// The parameter set of flat index `i`.
    pub fn channel_of(&self, i: usize) -> usize {
        match self {
            ParamLayout::Channels(layout) => layout.channel_of(i),
            ParamLayout::StridedGroups(groups) => groups.group_of(i),
        }
    }

    /// The channel layout the kernels run on: this one, or for strided groups that of their
    /// groups-last view ([`StridedGroups::groups_last_layout`]), whose parameter sets are the
    /// same in the same order.
    pub fn kernel_layout(&self) -> ChannelLayout {
        match self {
            ParamLayout::Channels(layout) => *layout,
            ParamLayout::StridedGroups(groups) => groups.groups_last_layout(),
        }
    }

    /// The strided groups, if these are.
    pub fn strided(&self) -> Option<StridedGroups> {
        match self {
            ParamLayout::Channels(_) => None,
            ParamLayout::StridedGroups(groups) => Some(*groups),
        }
    }

    /// The channel layout the kernels take. Strided groups have none (`InvalidGroup`, describing
    /// the tensor as `[blocks, size, inner]`): every path moves them to their groups-last view
    /// before it asks, so a path that forgot would refuse them rather than misread them.
    pub(crate) fn channel_layout(self) -> Result<ChannelLayout> {
        match self {
            ParamLayout::Channels(layout) => Ok(layout),
            ParamLayout::StridedGroups(groups) => Err(Error::InvalidGroup {
                axis: 0,
                size: groups.size,
                shape: vec![groups.blocks, groups.size, groups.inner],
                reason: "groups along an axis followed by longer axes have no channel layout",
            }),
        }
    }
}

/// Groups of `size` along an axis followed by `inner > 1` elements: the tensor seen as
/// `[blocks, size, inner]` (`blocks` = the product before the axis times `len / size`), group
/// `(p, b)` is the `size` elements `(p, t, b)`, `t = 0 .. size`, in flat order, and its parameter
/// set is number `p * inner + b`.
///
/// The fast paths serve them through the groups-last view `[blocks, inner, size]` (the last two
/// axes swapped): there group `p * inner + b` is the run of `size` consecutive elements
/// `(p, b, t)`, in the same order as in the tensor, so per-group reductions (min/max, LSQ's
/// `tree_sum`, the dynamic qparams) see the same values in the same order, and the results are
/// the same bits. The permutation moves values without arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StridedGroups {
    /// Blocks of `size * inner` elements.
    pub blocks: usize,
    /// Elements per group.
    pub size: usize,
    /// Elements after the group axis (the stride of a group's elements), more than 1.
    pub inner: usize,
}

impl StridedGroups {
    /// The number of groups.
    pub fn groups(&self) -> usize {
        self.blocks * self.inner
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.blocks * self.size * self.inner
    }

    /// The group of flat index `i`.
    pub fn group_of(&self, i: usize) -> usize {
        (i / (self.size * self.inner)) * self.inner + i % self.inner
    }

    /// The flat index in the tensor of element `j` of the groups-last view.
    pub fn source_of(&self, j: usize) -> usize {
        let block = self.size * self.inner;
        let (p, r) = (j / block, j % block);
        p * block + (r % self.size) * self.inner + r / self.size
    }

    /// The channel layout of the groups-last view: a group per run of `size`.
    pub fn groups_last_layout(&self) -> ChannelLayout {
        ChannelLayout {
            outer: 1,
            channels: self.groups(),
            inner: self.size,
        }
    }

    /// The groups-last view of `x` (its `numel()` values).
    pub fn to_groups_last<T: Copy>(&self, x: &[T]) -> Vec<T> {
        (0..x.len()).map(|j| x[self.source_of(j)]).collect()
    }

    /// The tensor whose groups-last view is `v`.
    pub fn from_groups_last<T: Copy>(&self, v: &[T]) -> Vec<T> {
        let mut out = v.to_vec();
        self.from_groups_last_into(v, &mut out);
        out
    }

    /// Writes the tensor whose groups-last view is `v` into `out` (as long as `v`).
    pub fn from_groups_last_into<T: Copy>(&self, v: &[T], out: &mut [T]) {
        for (j, &value) in v.iter().enumerate() {
            out[self.source_of(j)] = value;
        }
    }

    /// The mask of the tensor whose groups-last view has mask `m`.
    pub fn mask_from_groups_last(&self, m: &PackedMask) -> PackedMask {
        PackedMask::from_bools(&self.from_groups_last(&m.to_bools()))
    }
}

/// Per-tensor or per-channel scales and integer zero points.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantParams {
    scales: Vec<f32>,
    zero_points: Vec<i32>,
    granularity: Granularity,
}

impl QuantParams {
    /// One scale and zero point for the whole tensor.
    pub fn per_tensor(scale: f32, zero_point: i32) -> Self {
        Self {
            scales: vec![scale],
            zero_points: vec![zero_point],
            granularity: Granularity::PerTensor,
        }
    }

    /// One scale and zero point per index of `axis` (checked against the shape at call time).
    pub fn per_channel(axis: usize, scales: Vec<f32>, zero_points: Vec<i32>) -> Self {
        Self::new(Granularity::PerChannel { axis }, scales, zero_points)
    }

    /// One scale and zero point per group of `size` along `axis` (see [`Granularity::PerGroup`]).
    pub fn per_group(axis: usize, size: usize, scales: Vec<f32>, zero_points: Vec<i32>) -> Self {
        Self::new(Granularity::PerGroup { axis, size }, scales, zero_points)
    }

    /// Parameters of any granularity (counts checked by [`FakeQuant::new`] and at call time).
    pub fn new(granularity: Granularity, scales: Vec<f32>, zero_points: Vec<i32>) -> Self {
        Self {
            scales,
            zero_points,
            granularity,
        }
    }

    /// Per tensor or per channel along an axis.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// The scales (one for per-tensor).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The zero points (one for per-tensor).
    pub fn zero_points(&self) -> &[i32] {
        &self.zero_points
    }
}

/// Checks one scale: positive, finite and normal, with a finite normal f32 reciprocal, so that
/// `scale` lies in `[2^-126, 2^126]`.
pub fn validate_scale(index: usize, scale: f32) -> Result<()> {
    let err = |reason| {
        Err(Error::InvalidScale {
            index,
            scale,
            reason,
        })
    };
    if scale.is_nan() {
        return err("is NaN");
    }
    if scale <= 0.0 {
        return err("must be positive");
    }
    if !scale.is_finite() {
        return err("must be finite");
    }
    if !scale.is_normal() {
        return err("must be a normal number (not subnormal)");
    }
    if !(1.0f32 / scale).is_normal() {
        return err("must have a normal f32 reciprocal (scale <= 2^126)");
    }
    Ok(())
}

/// A validated fake-quantization: range, parameters and rounding.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeQuant {
    range: QuantRange,
    params: QuantParams,
    rounding: Rounding,
}

impl FakeQuant {
    /// Validates the parameters against the range: every scale legal (see [`validate_scale`]),
    /// every zero point inside `[qmin, qmax]`, as many zero points as scales and at least one.
    pub fn new(range: QuantRange, params: QuantParams) -> Result<Self> {
        if params.scales.len() != params.zero_points.len() || params.scales.is_empty() {
            return Err(Error::ParamLengthMismatch {
                scales: params.scales.len(),
                zero_points: params.zero_points.len(),
            });
        }
        if params.granularity == Granularity::PerTensor && params.scales.len() != 1 {
            return Err(Error::ParamLengthMismatch {
                scales: params.scales.len(),
                zero_points: 1,
            });
        }
        for (index, &scale) in params.scales.iter().enumerate() {
            validate_scale(index, scale)?;
        }
        for (index, &zero_point) in params.zero_points.iter().enumerate() {
            if zero_point < range.qmin || zero_point > range.qmax {
                return Err(Error::InvalidZeroPoint {
                    index,
                    zero_point,
                    qmin: range.qmin,
                    qmax: range.qmax,
                });
            }
        }
        Ok(Self {
            range,
            params,
            rounding: Rounding::default(),
        })
    }

    /// The same fake-quantization with another [`Rounding`].
    pub fn with_rounding(mut self, rounding: Rounding) -> Self {
        self.rounding = rounding;
        self
    }

    /// The quantization range.
    pub fn range(&self) -> QuantRange {
        self.range
    }

    /// The scales and zero points.
    pub fn params(&self) -> &QuantParams {
        &self.params
    }

    /// How the quotient is formed.
    pub fn rounding(&self) -> Rounding {
        self.rounding
    }

    /// Checks `shape` against the parameters and `len` against the shape, and returns how flat
    /// indices map to channels.
    pub fn layout(&self, shape: &[usize], len: usize) -> Result<ParamLayout> {
        let layout = self.params.granularity.param_layout(shape, len)?;
        if layout.channels() != self.params.scales.len() {
            return Err(Error::ChannelCountMismatch {
                axis: self.params.granularity.axis().unwrap_or(0),
                channels: layout.channels(),
                params: self.params.scales.len(),
            });
        }
        Ok(layout)
    }
}

/// The product of a shape's dimensions, or an error if it overflows `usize`.
pub fn numel(shape: &[usize]) -> Result<usize> {
    // A zero dimension makes the tensor empty, whatever the others multiply to.
    if shape.contains(&0) {
        return Ok(0);
    }
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::ShapeOverflow {
            shape: shape.to_vec(),
        })
}

/// How a row-major contiguous tensor splits around its channel axis: `shape = [outer..., channels,
/// inner...]`, so the channel of flat index `i` is `(i / inner) % channels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLayout {
    /// Product of the dimensions before the axis.
    pub outer: usize,
    /// Size of the channel axis.
    pub channels: usize,
    /// Product of the dimensions after the axis.
    pub inner: usize,
}

impl ChannelLayout {
    /// The layout of `shape` around `axis`.
    pub fn new(shape: &[usize], axis: usize) -> Result<Self> {
        if axis >= shape.len() {
            return Err(Error::AxisOutOfRange {
                axis,
                rank: shape.len(),
            });
        }
        Ok(Self {
            outer: numel(&shape[..axis])?,
            channels: shape[axis],
            inner: numel(&shape[axis + 1..])?,
        })
    }

    /// The channel of flat index `i`.
    pub fn channel_of(&self, i: usize) -> usize {
        (i / self.inner) % self.channels
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.outer * self.channels * self.inner
    }
}

/// A boolean per element packed 32 to a `u32` word: element `i` is bit `i % 32` of word `i / 32`.
/// Bits past `len` in the last word are zero.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PackedMask {
    words: Vec<u32>,
    len: usize,
}

impl PackedMask {
    /// Number of `u32` words that hold `len` bits.
    pub fn words_for(len: usize) -> usize {
        len.div_ceil(32)
    }

    /// Bytes of the words that hold `len` bits (`u64::MAX` when that does not fit a `u64`, so
    /// that the size check that follows fails).
    pub fn bytes_for(len: usize) -> u64 {
        (Self::words_for(len) as u64).saturating_mul(4)
    }

    /// Packs a slice of booleans.
    pub fn from_bools(bits: &[bool]) -> Self {
        let mut words = vec![0u32; Self::words_for(bits.len())];
        for (i, _) in bits.iter().enumerate().filter(|(_, &b)| b) {
            words[i / 32] |= 1 << (i % 32);
        }
        Self {
            words,
            len: bits.len(),
        }
    }

    /// Wraps words read from a device. Fails if the word count does not match `len`, or if a bit
    /// past `len` is set.
    pub fn from_words(words: Vec<u32>, len: usize) -> Result<Self> {
        if words.len() != Self::words_for(len) {
            return Err(Error::LengthMismatch {
                what: "mask words",
                expected: Self::words_for(len),
                actual: words.len(),
            });
        }
        if !len.is_multiple_of(32) && words[len / 32] >> (len % 32) != 0 {
            return Err(Error::InvalidBuffer {
                what: "mask",
                reason: "bits past the end are set".into(),
            });
        }
        Ok(Self { words, len })
    }

    /// Number of elements (bits).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the mask covers no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The packed words.
    pub fn words(&self) -> &[u32] {
        &self.words
    }

    /// The bit of element `i`, `None` past the end.
    pub fn get(&self, i: usize) -> Option<bool> {
        (i < self.len).then(|| self.words[i / 32] >> (i % 32) & 1 == 1)
    }

    /// One boolean per element.
    pub fn to_bools(&self) -> Vec<bool> {
        (0..self.len)
            .map(|i| self.words[i / 32] >> (i % 32) & 1 == 1)
            .collect()
    }
}
