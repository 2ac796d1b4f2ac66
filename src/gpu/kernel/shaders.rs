//! The composition table: which files of `shaders/` make up each compiled shader module. Each
//! file starts with two header lines, `// requires: ...` (files that must be composed with it;
//! `a | b` for either) and `// provides: ...` (what other files or the host use from it); a test
//! checks both against this table and the files' declarations.

/// One file of `shaders/`.
#[derive(Debug)]
pub(crate) struct ShaderFile {
    /// The file name without `.wgsl`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) name: &'static str,
    pub(crate) source: &'static str,
}

/// A shader module as compiled: its files, joined in order.
#[derive(Debug)]
pub(crate) struct Shader {
    pub(crate) name: &'static str,
    pub(crate) files: &'static [&'static ShaderFile],
}

impl Shader {
    /// The composed WGSL source.
    pub(crate) fn source(&self) -> String {
        self.files
            .iter()
            .map(|f| f.source)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

macro_rules! shader_files {
    ($($ident:ident = $name:literal;)*) => {
        $(pub(crate) static $ident: ShaderFile = ShaderFile {
            name: $name,
            source: include_str!(concat!("../../../shaders/", $name, ".wgsl")),
        };)*
        /// Every file of `shaders/`.
        #[cfg_attr(not(test), allow(dead_code))]
        pub(crate) static FILES: &[&ShaderFile] = &[$(&$ident),*];
    };
}

shader_files! {
    EXACT_F32 = "exact_f32";
    HALF = "half";
    QUANTIZE = "quantize";
    ELEMENTWISE_DISPATCH = "elementwise_dispatch";
    FAKE_QUANT = "fake_quant";
    FAKE_QUANT_HALF = "fake_quant_half";
    ELEMENTWISE = "elementwise";
    ELEMENTWISE_WIDE = "elementwise_wide";
    OBSERVER = "observer";
    LSQ = "lsq";
    DYNAMIC_RULES = "dynamic_rules";
    DYNAMIC_QPARAMS = "dynamic";
    DYNAMIC_GROUPS = "dynamic_groups";
    FLOAT_FORMATS = "float_formats";
    FLOAT_BLOCKS = "float_blocks";
    FLOAT_AMAX = "float_amax";
    HISTOGRAM = "histogram";
    PERMUTE_FILE = "permute";
}

/// Scalar elementwise kernels on f32 tensors.
pub(crate) static ELEMENTWISE_F32: Shader = Shader {
    name: "fake_quant",
    files: &[
        &EXACT_F32,
        &HALF,
        &QUANTIZE,
        &FAKE_QUANT,
        &ELEMENTWISE_DISPATCH,
        &ELEMENTWISE,
    ],
};
/// Scalar elementwise kernels on 16-bit tensors (f16, bf16).
pub(crate) static ELEMENTWISE_HALF: Shader = Shader {
    name: "fake_quant_half",
    files: &[
        &EXACT_F32,
        &HALF,
        &QUANTIZE,
        &FAKE_QUANT_HALF,
        &ELEMENTWISE_DISPATCH,
        &ELEMENTWISE,
    ],
};
/// Wide elementwise kernels (a vec4 of any element type per invocation).
pub(crate) static ELEMENTWISE_VEC4: Shader = Shader {
    name: "elementwise_wide",
    files: &[
        &EXACT_F32,
        &HALF,
        &QUANTIZE,
        &ELEMENTWISE_DISPATCH,
        &ELEMENTWISE_WIDE,
    ],
};
/// The observer family.
pub(crate) static OBSERVERS: Shader = Shader {
    name: "observer",
    files: &[&EXACT_F32, &HALF, &QUANTIZE, &OBSERVER],
};
/// The LSQ family.
pub(crate) static LSQ_KERNELS: Shader = Shader {
    name: "lsq",
    files: &[&EXACT_F32, &HALF, &QUANTIZE, &LSQ],
};

/// The dynamic family: the two-pass plan's qparams kernel.
pub(crate) static DYNAMIC: Shader = Shader {
    name: "dynamic",
    files: &[
        &EXACT_F32,
        &HALF,
        &QUANTIZE,
        &DYNAMIC_RULES,
        &DYNAMIC_QPARAMS,
    ],
};
/// The dynamic family: the one-pass kernel on f32 tensors.
pub(crate) static DYNAMIC_GROUPS_F32: Shader = Shader {
    name: "dynamic_groups",
    files: &[
        &EXACT_F32,
        &HALF,
        &QUANTIZE,
        &FAKE_QUANT,
        &ELEMENTWISE_DISPATCH,
        &DYNAMIC_RULES,
        &DYNAMIC_GROUPS,
    ],
};
/// The dynamic family: the one-pass kernel on 16-bit tensors.
pub(crate) static DYNAMIC_GROUPS_HALF: Shader = Shader {
    name: "dynamic_groups_half",
    files: &[
        &EXACT_F32,
        &HALF,
        &QUANTIZE,
        &FAKE_QUANT_HALF,
        &ELEMENTWISE_DISPATCH,
        &DYNAMIC_RULES,
        &DYNAMIC_GROUPS,
    ],
};

/// The floating-point family: MX and NVFP4 blocks in one pass, on f32 tensors.
pub(crate) static FLOAT_BLOCKS_F32: Shader = Shader {
    name: "float_blocks",
    files: &[
        &EXACT_F32,
        &HALF,
        &QUANTIZE,
        &FAKE_QUANT,
        &ELEMENTWISE_DISPATCH,
        &FLOAT_FORMATS,
        &FLOAT_BLOCKS,
    ],
};
/// The floating-point family on 16-bit tensors.
pub(crate) static FLOAT_BLOCKS_HALF: Shader = Shader {
    name: "float_blocks_half",
    files: &[
        &EXACT_F32,
        &HALF,
        &QUANTIZE,
        &FAKE_QUANT_HALF,
        &ELEMENTWISE_DISPATCH,
        &FLOAT_FORMATS,
        &FLOAT_BLOCKS,
    ],
};

/// The floating-point family: FP8 amax scaling (scales, then elements), on f32 tensors.
pub(crate) static FLOAT_AMAX_F32: Shader = Shader {
    name: "float_amax",
    files: &[
        &EXACT_F32,
        &HALF,
        &QUANTIZE,
        &FAKE_QUANT,
        &ELEMENTWISE_DISPATCH,
        &FLOAT_FORMATS,
        &FLOAT_AMAX,
    ],
};
/// FP8 amax scaling on 16-bit tensors.
pub(crate) static FLOAT_AMAX_HALF: Shader = Shader {
    name: "float_amax_half",
    files: &[
        &EXACT_F32,
        &HALF,
        &QUANTIZE,
        &FAKE_QUANT_HALF,
        &ELEMENTWISE_DISPATCH,
        &FLOAT_FORMATS,
        &FLOAT_AMAX,
    ],
};

/// The histogram family on f32 tensors.
pub(crate) static HISTOGRAM_F32: Shader = Shader {
    name: "histogram",
    files: &[
        &EXACT_F32,
        &HALF,
        &QUANTIZE,
        &FAKE_QUANT,
        &ELEMENTWISE_DISPATCH,
        &HISTOGRAM,
    ],
};
/// The histogram family on 16-bit tensors.
pub(crate) static HISTOGRAM_HALF: Shader = Shader {
    name: "histogram_half",
    files: &[
        &EXACT_F32,
        &HALF,
        &QUANTIZE,
        &FAKE_QUANT_HALF,
        &ELEMENTWISE_DISPATCH,
        &HISTOGRAM,
    ],
};

/// Moving tensors and masks into and out of the groups-last view of strided groups.
pub(crate) static PERMUTE: Shader = Shader {
    name: "permute",
    files: &[&PERMUTE_FILE],
};

/// The element-type families' module pairs.
pub(crate) static DYNAMIC_GROUPS_SHADERS: super::ElementShaders = super::ElementShaders {
    f32: &DYNAMIC_GROUPS_F32,
    half: &DYNAMIC_GROUPS_HALF,
};
pub(crate) static FLOAT_BLOCKS_SHADERS: super::ElementShaders = super::ElementShaders {
    f32: &FLOAT_BLOCKS_F32,
    half: &FLOAT_BLOCKS_HALF,
};
pub(crate) static FLOAT_AMAX_SHADERS: super::ElementShaders = super::ElementShaders {
    f32: &FLOAT_AMAX_F32,
    half: &FLOAT_AMAX_HALF,
};
pub(crate) static HISTOGRAM_SHADERS: super::ElementShaders = super::ElementShaders {
    f32: &HISTOGRAM_F32,
    half: &HISTOGRAM_HALF,
};

/// Every shader module the library compiles: one line per kernel family's module.
pub(crate) static SHADERS: &[&Shader] = &[
    &ELEMENTWISE_F32,
    &ELEMENTWISE_HALF,
    &ELEMENTWISE_VEC4,
    &OBSERVERS,
    &LSQ_KERNELS,
    &DYNAMIC,
    &DYNAMIC_GROUPS_F32,
    &DYNAMIC_GROUPS_HALF,
    &FLOAT_BLOCKS_F32,
    &FLOAT_BLOCKS_HALF,
    &FLOAT_AMAX_F32,
    &FLOAT_AMAX_HALF,
    &HISTOGRAM_F32,
    &HISTOGRAM_HALF,
    &PERMUTE,
];

/// Every kernel source the library compiles, by name: the files of `shaders/`, as composed.
pub fn kernel_sources() -> Vec<(&'static str, String)> {
    SHADERS.iter().map(|s| (s.name, s.source())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names a header line lists after `key:`.
    fn header<'a>(file: &'a ShaderFile, key: &str) -> Vec<&'a str> {
        let line = file
            .source
            .lines()
            .take(2)
            .find_map(|l| l.strip_prefix(&format!("// {key}:")))
            .unwrap_or_else(|| panic!("{}.wgsl has no `// {key}:` header line", file.name));
        line.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "none")
            .collect()
    }

    fn declares(file: &ShaderFile, name: &str) -> bool {
        file.source.lines().any(|l| {
            ["fn ", "struct "].iter().any(|kw| {
                l.strip_prefix(kw).is_some_and(|rest| {
                    rest.strip_prefix(name)
                        .is_some_and(|r| r.starts_with('(') || r.starts_with(' '))
                })
            })
        })
    }

    #[test]
    fn every_file_is_composed_somewhere() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter_map(|f| f.strip_suffix(".wgsl").map(str::to_owned))
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = FILES.iter().map(|f| f.name.to_owned()).collect();
        listed.sort();
        assert_eq!(on_disk, listed, "shaders/ and the file table disagree");
        for f in FILES {
            assert!(
                SHADERS
                    .iter()
                    .any(|s| s.files.iter().any(|g| std::ptr::eq(*g, *f))),
                "{}.wgsl is in no shader module",
                f.name
            );
        }
    }

    #[test]
    fn headers_match_declarations_and_compositions() {
        for f in FILES {
            for name in header(f, "provides") {
                assert!(
                    declares(f, name),
                    "{}.wgsl says it provides `{name}` but declares no fn or struct of that name",
                    f.name
                );
            }
            for requirement in header(f, "requires") {
                let any_of: Vec<&str> = requirement.split('|').map(str::trim).collect();
                for shader in SHADERS
                    .iter()
                    .filter(|s| s.files.iter().any(|g| std::ptr::eq(*g, *f)))
                {
                    assert!(
                        shader.files.iter().any(|g| any_of.contains(&g.name)),
                        "{}.wgsl requires {requirement} but the module {} lacks it",
                        f.name,
                        shader.name
                    );
                }
            }
        }
    }

    /// Every composed module parses and validates with naga (the copy wgpu uses), no adapter needed.
    #[test]
    fn every_module_validates() {
        use wgpu::naga;
        for shader in SHADERS {
            let source = shader.source();
            let module = naga::front::wgsl::parse_str(&source)
                .unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(&source)));
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::all(),
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(&source)));
        }
    }
}
