//! Shared test support: one context per adapter, a seeded generator, the adversarial corpus and
//! bit-exact comparison against the CPU reference.
#![allow(dead_code)]

mod rng;
pub mod vectors;

pub use rng::Rng;

use std::sync::OnceLock;

use fakequant::{reference, FakeQuant, GpuContext, MinMax, ObserverState, PackedMask, QuantRange};

/// One context per adapter present (honouring FAKEQUANT_BACKEND / FAKEQUANT_ADAPTER), with the GL
/// turn (see [`GlTurn`]) held until the returned value (or its iterator) is dropped. With
/// FAKEQUANT_REQUIRE_GPU=1 a missing adapter fails the test instead of skipping the GPU part.
pub fn contexts() -> Contexts {
    let all = all_contexts();
    Contexts {
        turn: gl_turn(all),
        all,
    }
}

/// The contexts of [`contexts`] and the GL turn: a slice while held, iterated by value.
pub struct Contexts {
    turn: Option<GlTurn>,
    all: &'static [GpuContext],
}

impl std::ops::Deref for Contexts {
    type Target = [GpuContext];
    fn deref(&self) -> &[GpuContext] {
        self.all
    }
}

impl IntoIterator for Contexts {
    type Item = &'static GpuContext;
    type IntoIter = ContextsIter;
    fn into_iter(self) -> ContextsIter {
        ContextsIter {
            turn: self.turn,
            iter: self.all.iter(),
        }
    }
}

/// Iterates the contexts, holding the GL turn until dropped (the end of the `for` loop).
pub struct ContextsIter {
    turn: Option<GlTurn>,
    iter: std::slice::Iter<'static, GpuContext>,
}

impl Iterator for ContextsIter {
    type Item = &'static GpuContext;
    fn next(&mut self) -> Option<&'static GpuContext> {
        self.iter.next()
    }
}

/// The GL turn, for a test that makes contexts of its own from [`contexts`]'s (held until
/// dropped; `None` where no context is on GL).
pub fn gpu_turn() -> Option<GlTurn> {
    gl_turn(all_contexts())
}

fn gl_turn(all: &[GpuContext]) -> Option<GlTurn> {
    let on_gl = all.iter().any(|c| {
        c.adapter_info()
            .is_some_and(|i| i.backend == wgpu::Backend::Gl)
    });
    on_gl.then(GlTurn::take)
}

/// One test thread at a time on the GL adapter (re-entrant within a thread). wgpu's GL backend
/// runs every device of the adapter behind one lock, and a thread that waits more than 6 s for
/// it panics inside wgpu-hal ("Could not lock adapter context. This is most-likely a
/// deadlock."). The library keeps its own submissions short on GL (a dispatch each), but
/// llvmpipe compiles a kernel's machine code at its first dispatch, inside the submission: on a
/// loaded 2-core CI machine a large kernel's compilation in one test thread, or a test's own
/// encoder of many passes, can outlast 6 s while another test thread creates a buffer (a CI run
/// failed so). Concurrent use of one context is tested on purpose by
/// `isolation::threads_sharing_a_context_get_the_reference_results`, inside one turn.
pub struct GlTurn(());

static TURN: std::sync::Mutex<(Option<std::thread::ThreadId>, usize)> =
    std::sync::Mutex::new((None, 0));
static TURN_FREED: std::sync::Condvar = std::sync::Condvar::new();

impl GlTurn {
    fn take() -> Self {
        let me = std::thread::current().id();
        let mut holder = TURN.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match holder.0 {
                None => {
                    *holder = (Some(me), 1);
                    break;
                }
                Some(owner) if owner == me => {
                    holder.1 += 1;
                    break;
                }
                Some(_) => {
                    holder = TURN_FREED.wait(holder).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
        GlTurn(())
    }
}

impl Drop for GlTurn {
    fn drop(&mut self) {
        let mut holder = TURN.lock().unwrap_or_else(|p| p.into_inner());
        holder.1 -= 1;
        if holder.1 == 0 {
            holder.0 = None;
            TURN_FREED.notify_all();
        }
    }
}

/// The contexts without the GL turn (the lists' sizes and names).
fn all_contexts() -> &'static [GpuContext] {
    static CONTEXTS: OnceLock<Vec<GpuContext>> = OnceLock::new();
    CONTEXTS.get_or_init(|| {
        let adapters = GpuContext::adapters().expect("adapter enumeration failed");
        let contexts: Vec<GpuContext> = adapters
            .iter()
            .map(|a| GpuContext::from_adapter(a).expect("device creation failed"))
            .collect();
        if contexts.is_empty() {
            if std::env::var("FAKEQUANT_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("FAKEQUANT_REQUIRE_GPU=1 but no compute-capable adapter was found");
            }
            eprintln!("note: no GPU adapter present; GPU comparisons are skipped");
        }
        for c in &contexts {
            eprintln!("testing on adapter: {}", c.adapter_name());
        }
        contexts
    })
}

/// Random data of several distributions, `n` values, scaled around `scale`.
pub fn random_data(rng: &mut Rng, n: usize, distribution: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| match distribution % 5 {
            0 => rng.normal() * scale * 40.0,
            1 => rng.uniform(-300.0, 300.0) * scale,
            // heavy tail: most values small, some far outside the range
            2 => rng.normal() * scale * 2f32.powi(rng.below(20) as i32),
            // integers and half-integers of the scale: exact ties for power-of-two scales
            3 => (rng.below(600) as f32 - 300.0) * 0.5 * scale,
            _ => rng.any_bits(),
        })
        .collect()
}

fn ulp_neighbours(v: f32, out: &mut Vec<f32>) {
    let bits = v.to_bits();
    for d in 0..=2u32 {
        out.push(f32::from_bits(bits.wrapping_add(d)));
        out.push(f32::from_bits(bits.wrapping_sub(d)));
    }
}

/// Inputs that hit every hard case for one channel: exact ties of `x * inv` and of `x / scale`
/// and their +-1, 2 ulp neighbours, around zero, around both clamp edges and inside; signed
/// zeros; subnormals; the normal boundary; FLT_MAX; infinities; quiet and signalling NaNs.
pub fn adversarial(scale: f32, zero_point: i32, range: QuantRange) -> Vec<f32> {
    let inv = 1.0f32 / scale;
    let lo = (range.qmin() - zero_point) as i64;
    let hi = (range.qmax() - zero_point) as i64;
    let mut ks: Vec<i64> = (-4..=4).collect();
    for edge in [lo, hi] {
        ks.extend(edge - 3..=edge + 3);
    }
    ks.extend([lo / 2, hi / 2, (lo + hi) / 2]);
    let mut out = Vec::new();
    for &k in &ks {
        for half in [0.0f64, 0.5, -0.5] {
            let t = k as f64 + half;
            // ties of x * inv, of x / scale, and exact multiples
            for candidate in [t / inv as f64, t * scale as f64] {
                let c = candidate as f32;
                if c.is_finite() {
                    ulp_neighbours(c, &mut out);
                    ulp_neighbours(-c, &mut out);
                }
            }
        }
    }
    let specials = [
        0x0000_0000u32,
        0x8000_0000, // signed zeros
        0x0000_0001,
        0x8000_0001,
        0x0000_0002,
        0x0040_0000,
        0x807f_ffff,
        0x007f_ffff,
        0x0012_3456, // subnormals
        0x0080_0000,
        0x8080_0000,
        0x0080_0001, // smallest normals
        0x7f7f_ffff,
        0xff7f_ffff,
        0x7f7f_fffe,
        0x7149_f2ca,
        0xf149_f2ca, // huge finite
        0x7f80_0000,
        0xff80_0000, // infinities
        0x7fc0_0000,
        0xffc0_0000,
        0x7fc1_2345,
        0xffff_ffff, // quiet NaNs
        0x7f80_0001,
        0xff80_0001,
        0x7fbf_ffff,
        0x7f81_2345, // signalling NaNs
    ];
    out.extend(specials.iter().map(|&b| f32::from_bits(b)));
    // Subnormals that land on ties when the scale is tiny (the subnormal path of the kernel).
    for m in [
        1u32, 3, 0x3f_ffff, 0x40_0000, 0x40_0001, 0x60_0000, 0x7f_ffff,
    ] {
        out.push(f32::from_bits(m));
        out.push(f32::from_bits(m | 0x8000_0000));
    }
    out
}

/// Scales from 2^-126 (the smallest legal) through 2^-60 .. 2^60 to 2^126, and awkward ones.
pub fn scale_sweep() -> Vec<f32> {
    let mut s: Vec<f32> = (-6..=6).map(|e| 2f32.powi(e * 10)).collect();
    s.extend([
        2f32.powi(-126),
        1.5 * 2f32.powi(-126),
        2f32.powi(-125) * 1.25,
        2f32.powi(-100),
        2f32.powi(126),
        0.1,
        1.0 / 3.0,
        f32::from_bits(0x3e4c_04fe), // 0.1992378 (REFERENCE.md row 1)
        f32::from_bits(0x3ba5_a4b6), // 0.0050550355
        f32::from_bits(0x3f79_50f9), // 0.9738918
        f32::from_bits(0x3f7f_ffff), // 1 - ulp
        f32::from_bits(0x3f80_0001), // 1 + ulp
        2.533506 / 127.5,
        7.0e-3,
        123.456,
    ]);
    s
}

/// The ranges of every bit width the library documents, plus narrow and custom ones.
pub fn ranges() -> Vec<QuantRange> {
    let mut r = vec![
        QuantRange::INT8,
        QuantRange::INT8_NARROW,
        QuantRange::UINT8,
        QuantRange::INT4,
        QuantRange::UINT4,
        QuantRange::INT16,
    ];
    for bits in 2..=16 {
        r.push(QuantRange::signed(bits).unwrap());
        r.push(QuantRange::unsigned(bits).unwrap());
    }
    r.push(QuantRange::new(-5, 300).unwrap());
    r
}

/// Asserts two f32 slices are identical bit for bit, reporting the first differences.
pub fn assert_bits_eq(context: &str, x: &[f32], expected: &[f32], actual: &[f32]) {
    assert_eq!(expected.len(), actual.len(), "{context}: length");
    let bad: Vec<usize> = (0..expected.len())
        .filter(|&i| expected[i].to_bits() != actual[i].to_bits())
        .collect();
    if !bad.is_empty() {
        let details: Vec<String> = bad
            .iter()
            .take(8)
            .map(|&i| {
                let xi = x.get(i).map_or(0, |v| v.to_bits());
                format!(
                    "  [{i}] x={:#010x} ({:e}) expected {:#010x} ({:e}) got {:#010x} ({:e})",
                    xi,
                    f32::from_bits(xi),
                    expected[i].to_bits(),
                    expected[i],
                    actual[i].to_bits(),
                    actual[i]
                )
            })
            .collect();
        panic!(
            "{context}: {} of {} values differ:\n{}",
            bad.len(),
            expected.len(),
            details.join("\n")
        );
    }
}

pub fn assert_mask_eq(context: &str, expected: &PackedMask, actual: &PackedMask) {
    if expected != actual {
        let e = expected.to_bools();
        let a = actual.to_bools();
        let first: Vec<usize> = (0..e.len().min(a.len()))
            .filter(|&i| e[i] != a[i])
            .take(8)
            .collect();
        panic!(
            "{context}: masks differ (lengths {} / {}), first at {first:?}",
            e.len(),
            a.len()
        );
    }
}

/// Runs the forward (with and without mask) and the backward on `ctx` and asserts they equal the
/// CPU reference bit for bit.
pub fn check_on_gpu(ctx: &GpuContext, op: &FakeQuant, x: &[f32], shape: &[usize], label: &str) {
    let context = format!("{label} on {}", ctx.adapter_name());
    let expected = reference::fake_quant(op, x, shape).unwrap();
    let got = ctx.fake_quant(op, x, shape).unwrap();
    assert_bits_eq(&format!("{context}: y"), x, &expected.y, &got.y);
    let expected_mask = expected.mask;
    assert_mask_eq(&format!("{context}: mask"), &expected_mask, &got.mask);
    // Without a mask: the device level, whose kernels skip the mask.
    let got_no_mask = forward_without_mask(ctx, op, x, shape);
    assert_bits_eq(
        &format!("{context}: y without mask"),
        x,
        &expected.y,
        &got_no_mask,
    );
    // The backward on a gradient that holds every kind of value.
    let mut rng = Rng::new(x.len() as u64 ^ 0x5eed);
    let dy: Vec<f32> = (0..x.len())
        .map(|i| {
            if i % 7 == 0 {
                rng.any_bits()
            } else {
                rng.normal()
            }
        })
        .collect();
    let expected_dx = reference::ste_backward(&dy, &expected_mask).unwrap();
    let got_dx = ctx.ste_backward(&dy, &expected_mask).unwrap();
    assert_bits_eq(&format!("{context}: dx"), &dy, &expected_dx, &got_dx);
}

/// Runs a test kernel over `items` items: the WGSL `helpers`, then an entry point that, for item
/// `i`, runs `prelude` (which reads `input` and defines the operands) and stores `output[i] =
/// expr`. Returns one u32 per item. For testing the shaders' integer helpers directly.
pub fn run_test_kernel(
    ctx: &GpuContext,
    helpers: &str,
    prelude: &str,
    expr: &str,
    input: &[u32],
    items: usize,
) -> Vec<u32> {
    use wgpu::util::DeviceExt;
    const WORKGROUP: u32 = 64;
    const MAX_GROUPS_X: u32 = 32768;
    let source = format!(
        "{helpers}
@group(0) @binding(0) var<storage, read> input: array<u32>;
@group(0) @binding(1) var<storage, read_write> output: array<u32>;

@compute @workgroup_size({WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {{
    let i = gid.x + gid.y * {MAX_GROUPS_X}u * {WORKGROUP}u;
    if (i >= arrayLength(&output)) {{
        return;
    }}
    {prelude}
    output[i] = {expr};
}}
"
    );
    let device = ctx.device();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("helper test"),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("helper test"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let input_buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("helper test input"),
        contents: bytemuck::cast_slice(input),
        usage,
    });
    let output_buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("helper test output"),
        size: items as u64 * 4,
        usage,
        mapped_at_creation: false,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("helper test"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: input_buffer.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: output_buffer.as_entire_binding(),
            },
        ],
    });
    let groups = (items as u32).div_ceil(WORKGROUP);
    let mut encoder = ctx.create_encoder("helper test");
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("helper test"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups.min(MAX_GROUPS_X), groups.div_ceil(MAX_GROUPS_X), 1);
    }
    ctx.submit_and_wait(encoder).unwrap();
    let bytes = ctx
        .read_buffer(&output_buffer, 0, items as u64 * 4)
        .unwrap();
    bytemuck::pod_collect_to_vec(&bytes)
}

/// Asserts two ranges equal bit for bit.
pub fn assert_minmax_eq(context: &str, expected: &MinMax, actual: &MinMax) {
    assert_bits_eq(&format!("{context}: min"), &[], &expected.min, &actual.min);
    assert_bits_eq(&format!("{context}: max"), &[], &expected.max, &actual.max);
}

/// Asserts two observer states (running range, scales, zero points) equal bit for bit.
pub fn assert_state_eq(context: &str, expected: &ObserverState, actual: &ObserverState) {
    assert_minmax_eq(context, &expected.running, &actual.running);
    assert_bits_eq(
        &format!("{context}: scales"),
        &[],
        &expected.scales,
        &actual.scales,
    );
    assert_eq!(
        expected.zero_points, actual.zero_points,
        "{context}: zero points"
    );
}

/// A gradient with every kind of value: mostly normal, every 97th element any bit pattern.
pub fn gradients(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            if i % 97 == 0 {
                rng.any_bits()
            } else {
                rng.normal()
            }
        })
        .collect()
}

/// The granularity of a test case written with an optional axis (`None` per tensor).
pub fn granularity_of(axis: Option<usize>) -> fakequant::Granularity {
    match axis {
        None => fakequant::Granularity::PerTensor,
        Some(axis) => fakequant::Granularity::per_channel(axis),
    }
}

/// The device-level forward without a mask (the kernels' `WITH_MASK = false` variant), read back.
pub fn forward_without_mask<T: fakequant::Element>(
    ctx: &GpuContext,
    op: &FakeQuant,
    x: &[T],
    shape: &[usize],
) -> Vec<T> {
    let prepared = ctx.prepare(op).unwrap();
    let x_dev = ctx.upload(x).unwrap();
    let y_dev = ctx.create_tensor(x.len(), T::DTYPE).unwrap();
    prepared
        .forward_device(&x_dev, shape, &y_dev, None)
        .unwrap();
    ctx.read_tensor(&y_dev).unwrap()
}

/// The smallest shape with `channels` along `config`'s channel axis (`[]` per tensor): what the
/// observers of the tests whose data shapes vary are created for.
pub fn channel_shape(config: &fakequant::ObserverConfig, channels: usize) -> Vec<usize> {
    match config.granularity().axis() {
        None => Vec::new(),
        Some(axis) => {
            let mut shape = vec![1; axis + 1];
            shape[axis] = channels;
            shape
        }
    }
}

/// A dynamic fake-quantization's outputs against the expected ones, bit for bit: y, the mask,
/// the scales and the zero points.
pub fn assert_dynamic_eq<T: fakequant::Element>(
    label: &str,
    expected: &fakequant::DynamicOutput<T>,
    got: &fakequant::DynamicOutput<T>,
) {
    let bits = |v: &[T]| v.iter().map(|e| e.to_bits_u32()).collect::<Vec<_>>();
    let fbits = |v: &[f32]| v.iter().map(|e| e.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        fbits(&got.scales),
        fbits(&expected.scales),
        "{label}: scales"
    );
    assert_eq!(
        fbits(&got.zero_points),
        fbits(&expected.zero_points),
        "{label}: zero points"
    );
    let (g, e) = (bits(&got.y), bits(&expected.y));
    assert_eq!(g.len(), e.len(), "{label}: y length");
    if let Some(i) = (0..e.len()).find(|&i| g[i] != e[i]) {
        let n = (0..e.len()).filter(|&i| g[i] != e[i]).count();
        panic!(
            "{label}: y differs at {n} elements, first [{i}]: {:#x} vs reference {:#x}",
            g[i], e[i]
        );
    }
    assert_mask_eq(label, &expected.mask, &got.mask);
}
