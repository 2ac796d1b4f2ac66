//! The integration tests, in one test binary (one link of wgpu instead of one per file): each
//! module is one former `tests/*.rs` file, `common` their shared support. The data files stay in
//! `tests/data/`.
//!
//! The tests run on parallel threads of one process and share one `GpuContext` per adapter
//! (`common::contexts`). None of them changes the process environment in this process:
//! `adapter_selection` does that in a child process.

mod common;

mod adapter_selection;
mod backend;
mod cpu_backend;
mod errors;
mod exact_f32_helpers;
mod float_formats;
mod fuzz;
mod gpu_matches_reference;
mod half_conversions;
mod half_types;
mod histogram;
mod isolation;
mod lsq;
mod observers;
mod per_group;
mod prerecorded;
mod pytorch_lsq;
mod pytorch_observers;
mod pytorch_vectors;
mod qat_digits;
mod reference_semantics;
mod strided_groups;
mod torchao_float_formats;
mod torchao_per_group;
mod torchao_range_learning;
