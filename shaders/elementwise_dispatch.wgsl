// requires: none
// provides: Dispatch, dispatch_channel
// The uniform of every elementwise dispatch, scalar (elementwise.wgsl) and wide
// (elementwise_wide.wgsl): one Rust struct (`DispatchUniform` in src/gpu/fake_quant.rs) fills both.
// The scalar kernels count lengths and shifts in elements, the wide ones in vec4 groups.
struct Dispatch {
    // Elements (groups) in this dispatch.
    len: u32,
    // Tiles of the kernel's tile size; the grid strides over them.
    num_tiles: u32,
    // Per-channel layout: the channel of dispatch-local element e is
    // (channel_start + (inner_start + e) / inner) % channels (always in elements).
    channels: u32,
    inner: u32,
    channel_start: u32,
    inner_start: u32,
    // Mask words in this dispatch.
    mask_words: u32,
    // Element (group) i of the dispatch is element (group) i + x_shift (y_shift) of the x (y)
    // binding, and mask word w is word w + mask_shift of the mask binding: bindings start at
    // offsets aligned down to the device's offset alignment.
    x_shift: u32,
    y_shift: u32,
    mask_shift: u32,
    // The per-channel passes of a family (one invocation per channel): where the first entry of
    // a second table sits in its window (fp8_scales and histogram_grow: the maxima, which follow
    // all the minima). histogram_count: the first channel of the dispatch's window, its index in
    // the whole table of exponents.
    table_shift: u32,
    // histogram_count: the channels whose counts are bound (a window of the table: channels
    // count_first .. count_first + count_channels of the tensor).
    count_first: u32,
    count_channels: u32,
    _pad1: u32,
    _pad2: u32,
}

// The channel of dispatch-local element `i` (the binding `dispatch` is declared by each family).
fn dispatch_channel(i: u32) -> u32 {
    return (dispatch.channel_start + (dispatch.inner_start + i) / dispatch.inner) % dispatch.channels;
}
