//! The kernel machinery every family shares, and nothing family-specific.
//!
//! A kernel family (fake-quant, observers, LSQ, ...) lives in its own module and declares there:
//! - its kernel key, a small `Copy + Hash` value implementing [`Kernel`]: which composed shader
//!   ([`shaders::Shader`], listed in the composition table), which entry point, which WGSL
//!   `override` constants;
//! - one typed binding struct per entry point, declared with [`bindings!`]: named fields, each
//!   read-only or read-write once, with the WGSL binding number (binding 0 is always the
//!   dispatch uniform);
//! - its uniform structs, declared with [`uniform!`], whose layout a test checks against the WGSL
//!   struct as naga lays it out.
//!
//! The cache ([`cache::Kernels`]) builds modules, layouts and pipelines from those declarations on
//! first use; recording ([`recording`]) turns a list of dispatches into a compute pass for a
//! [`Recorder`]. Adding a family is its shader file(s), its module, and one line in the
//! composition table.

pub(crate) mod cache;
#[cfg(test)]
mod layout_tests;
pub(crate) mod planning;
pub(crate) mod recording;
pub mod shaders;

pub use recording::{Prerecorded, Prerecording, Recorder};

/// How an entry point uses a storage binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Access {
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`, written by the entry point.
    ReadWrite,
    /// `var<storage, read_write>` that the entry point only reads (`layout_tests` checks that it
    /// stores nothing there). A caller's input tensor is declared so: wgpu refuses a buffer bound
    /// read-only and read-write in one dispatch, and an input may share a buffer with the
    /// dispatch's output (disjoint ranges of one buffer, as a framework's memory pool hands out).
    Input,
}

/// One storage binding of an entry point: the WGSL variable's name, its binding number in group 0
/// and its access mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Slot {
    pub(crate) name: &'static str,
    pub(crate) binding: u32,
    pub(crate) access: Access,
}

/// The storage bindings of one entry point, as a struct with a named field per binding (see
/// [`bindings!`]). The pipeline layout is derived from [`Bindings::SLOTS`], so a struct binds
/// exactly what its entry point declares, in no particular order of the caller's choosing.
pub(crate) trait Bindings<'a> {
    /// The bindings, in declaration order.
    const SLOTS: &'static [Slot];
    /// The buffers, in the order of [`Bindings::SLOTS`].
    fn buffers(&self) -> Vec<wgpu::BufferBinding<'a>>;
}

/// Declares an entry point's bindings: `Name { field: Read @ 2, other: ReadWrite @ 3 }` makes a
/// struct `Name<'a>` with a `wgpu::BufferBinding<'a>` per field and its [`Bindings`] impl.
macro_rules! bindings {
    ($(#[$meta:meta])* $name:ident { $($(#[$field_meta:meta])* $field:ident: $access:ident @ $binding:literal),* $(,)? }) => {
        $(#[$meta])*
        pub(crate) struct $name<'a> {
            $($(#[$field_meta])* pub(crate) $field: wgpu::BufferBinding<'a>,)*
        }

        impl<'a> $crate::gpu::kernel::Bindings<'a> for $name<'a> {
            const SLOTS: &'static [$crate::gpu::kernel::Slot] = &[$(
                $crate::gpu::kernel::Slot {
                    name: stringify!($field),
                    binding: $binding,
                    access: $crate::gpu::kernel::Access::$access,
                }
            ),*];

            fn buffers(&self) -> Vec<wgpu::BufferBinding<'a>> {
                vec![$(self.$field.clone()),*]
            }
        }
    };
}
pub(crate) use bindings;

/// Declares a uniform struct mirrored from WGSL: `#[repr(C)]`, `Pod`, and a record of its field
/// offsets that `layout_tests` compares with the WGSL struct of the same name (fields named
/// `_pad*` are padding on both sides and only count toward the size).
macro_rules! uniform {
    ($(#[$meta:meta])* $vis:vis struct $name:ident as $wgsl:literal { $($(#[$field_meta:meta])* $field:ident: $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default)]
        $vis struct $name {
            $($(#[$field_meta])* $field: $ty,)*
        }

        impl $crate::gpu::kernel::UniformLayout for $name {
            const WGSL_NAME: &'static str = $wgsl;
            fn fields() -> Vec<(&'static str, usize)> {
                vec![$((stringify!($field), std::mem::offset_of!($name, $field))),*]
            }
        }
    };
}
pub(crate) use uniform;

/// A struct shared with WGSL (see [`uniform!`]).
pub(crate) trait UniformLayout: bytemuck::Pod {
    /// The WGSL struct's name.
    const WGSL_NAME: &'static str;
    /// Field names and byte offsets.
    #[cfg_attr(not(test), allow(dead_code))]
    fn fields() -> Vec<(&'static str, usize)>;
}

/// A kernel variant: its key in the pipeline cache. Each family implements it for its own key
/// type; the cache and the recording code know no family.
pub(crate) trait Kernel: Copy + std::fmt::Debug {
    /// The composed shader module it comes from.
    fn shader(&self) -> &'static shaders::Shader;
    /// The entry point.
    fn entry_point(&self) -> &'static str;
    /// The values of the module's `override` constants for this variant.
    fn constants(&self) -> Vec<(&'static str, f64)>;
}

/// The `DTYPE` override of the kernels that read 16-bit elements: 0 f32, 1 f16, 2 bf16.
pub(crate) fn dtype_constant(dtype: crate::DType) -> f64 {
    match dtype {
        crate::DType::F32 => 0.0,
        crate::DType::F16 => 1.0,
        crate::DType::Bf16 => 2.0,
    }
}

/// An element-type family's shader modules: the one for f32 tensors, and the one for 16-bit
/// tensors (f16, bf16), which takes the `DTYPE` override.
#[derive(Debug)]
pub(crate) struct ElementShaders {
    pub(crate) f32: &'static shaders::Shader,
    pub(crate) half: &'static shaders::Shader,
}

impl ElementShaders {
    /// The module for tensors of `dtype`.
    pub(crate) fn for_dtype(&self, dtype: crate::DType) -> &'static shaders::Shader {
        match dtype {
            crate::DType::F32 => self.f32,
            _ => self.half,
        }
    }

    /// `constants`, and the `DTYPE` the 16-bit module takes for `dtype`.
    pub(crate) fn constants(
        dtype: crate::DType,
        mut constants: Vec<(&'static str, f64)>,
    ) -> Vec<(&'static str, f64)> {
        if dtype != crate::DType::F32 {
            constants.push(("DTYPE", dtype_constant(dtype)));
        }
        constants
    }
}

/// What a family declares to the checks in `layout_tests`: its entry points with their bindings,
/// and its structs shared with WGSL.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct FamilyDecl {
    pub(crate) entry_points: Vec<EntryPointDecl>,
    pub(crate) structs: Vec<StructDecl>,
}

/// An entry point and the bindings its binding struct declares.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct EntryPointDecl {
    pub(crate) shader: &'static shaders::Shader,
    pub(crate) entry_point: &'static str,
    pub(crate) slots: &'static [Slot],
}

impl EntryPointDecl {
    /// `entry_point` of `shader`, bound with `B`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn of<'a, B: Bindings<'a>>(
        shader: &'static shaders::Shader,
        entry_point: &'static str,
    ) -> Self {
        Self {
            shader,
            entry_point,
            slots: B::SLOTS,
        }
    }
}

/// A Rust struct mirrored from WGSL: its size and field offsets.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct StructDecl {
    pub(crate) shader: &'static shaders::Shader,
    pub(crate) wgsl_name: &'static str,
    pub(crate) size: usize,
    pub(crate) fields: Vec<(&'static str, usize)>,
}

impl StructDecl {
    /// `U` as declared in `shader`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn of<U: UniformLayout>(shader: &'static shaders::Shader) -> Self {
        Self {
            shader,
            wgsl_name: U::WGSL_NAME,
            size: std::mem::size_of::<U>(),
            fields: U::fields(),
        }
    }
}
