// requires: none
// provides: permute_words, permute_halves, permute_bytes, permute_bits
// Moves a tensor, or its packed mask, between its own layout and the groups-last view of strided
// groups (`StridedGroups` in src/quant.rs): both are sequences of blocks of `rows * cols`
// elements, each destination block `[rows, cols]` the transpose of its source block
// `[cols, rows]`. Values move as bits, never as floats, so the permutation is exact on every
// device (no NaN quieted or canonicalized, no subnormal flushed).

struct Permute {
    // Destination elements of this dispatch.
    len: u32,
    // Position, within its block, of the dispatch's first destination element.
    lead: u32,
    // The destination block is [rows, cols].
    rows: u32,
    cols: u32,
    // Where the dispatch's first source block starts in the source binding, and where its first
    // destination element sits in the destination binding: in elements (bits for a mask).
    src_shift: u32,
    dst_shift: u32,
    // Invocations per row of the grid (its x size times the workgroup size).
    row_stride: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Permute;
// `read_write` though only read: a caller's input may share a buffer with another binding of the
// same dispatch chain, and wgpu refuses one buffer bound read-only and read-write in one dispatch.
@group(0) @binding(1) var<storage, read_write> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<atomic<u32>>;

// The source position (from the first source block) of destination element `e` of the dispatch.
fn source_of(e: u32) -> u32 {
    let block = p.rows * p.cols;
    let l = p.lead + e;
    let q = l / block;
    let r = l - q * block;
    let a = r / p.cols;
    let s = r - a * p.cols;
    return q * block + s * p.rows + a;
}

fn element(gid: vec3<u32>) -> u32 {
    return gid.y * p.row_stride + gid.x;
}

// 32-bit elements: one per invocation.
@compute @workgroup_size(256)
fn permute_words(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = element(gid);
    if (e >= p.len) {
        return;
    }
    atomicStore(&dst[p.dst_shift + e], src[p.src_shift + source_of(e)]);
}

// 16-bit elements: one per invocation. Two share a word, owned by neighbouring invocations (or,
// at a tensor's odd ends, by a neighbour's data): each half is cleared and set with atomics on
// its own 16 bits, so the word ends right whatever the interleaving.
@compute @workgroup_size(256)
fn permute_halves(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = element(gid);
    if (e >= p.len) {
        return;
    }
    let h = p.src_shift + source_of(e);
    let value = (src[h >> 1u] >> ((h & 1u) * 16u)) & 0xffffu;
    let d = p.dst_shift + e;
    let shift = (d & 1u) * 16u;
    atomicAnd(&dst[d >> 1u], ~(0xffffu << shift));
    atomicOr(&dst[d >> 1u], value << shift);
}

// 8-bit elements (floating-point element codes): one per invocation, each byte cleared and set
// with atomics on its own 8 bits, as the halves above.
@compute @workgroup_size(256)
fn permute_bytes(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = element(gid);
    if (e >= p.len) {
        return;
    }
    let b = p.src_shift + source_of(e);
    let value = (src[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu;
    let d = p.dst_shift + e;
    let shift = (d & 3u) * 8u;
    atomicAnd(&dst[d >> 2u], ~(0xffu << shift));
    atomicOr(&dst[d >> 2u], value << shift);
}

// Mask bits: one whole destination word per invocation (a dispatch starts on a word, and bits
// past the end of the last word are written as zeros, as a packed mask has them).
@compute @workgroup_size(256)
fn permute_bits(@builtin(global_invocation_id) gid: vec3<u32>) {
    let w = element(gid);
    if (w * 32u >= p.len) {
        return;
    }
    var word = 0u;
    for (var k = 0u; k < 32u; k = k + 1u) {
        let e = w * 32u + k;
        if (e < p.len) {
            let b = p.src_shift + source_of(e);
            word = word | (((src[b >> 5u] >> (b & 31u)) & 1u) << k);
        }
    }
    atomicStore(&dst[(p.dst_shift >> 5u) + w], word);
}
