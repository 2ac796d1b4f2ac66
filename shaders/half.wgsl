// Exact conversions between f32 and the 16-bit storage types (f16, bf16), on bit patterns with
// integer arithmetic. Prepended after exact_f32.wgsl.
