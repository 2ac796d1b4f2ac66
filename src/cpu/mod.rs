//! The CPU backend: the GPU path's operations for machines without a GPU, multi-threaded and
//! written for the compiler's vectorizer, bit for bit equal to the [reference](crate::reference).
//!
//! The reference stays the readable specification; this is a separate implementation checked
//! against it (`tests/all/cpu_backend.rs`). Three things make it fast without changing a bit:
//!
//! - **Branch-free element arithmetic.** Every per-element function is a fixed sequence of
//!   correctly rounded f32 operations, compares and selects (no call, no data-dependent branch),
//!   so that LLVM vectorizes the loops with the baseline x86-64 (SSE2) or AArch64 (NEON)
//!   instructions, without `target-cpu=native`. Why each sequence equals the reference's is
//!   argued where it is written ([`elementwise`]). Rust never contracts a multiply and an add
//!   into a fused multiply-add, and never flushes subnormals, so each operation below is the one
//!   IEEE operation it reads as.
//! - **Threads over large tensors.** A tensor is cut into tasks of whole mask words (and whole
//!   reduction blocks), which a [rayon] pool runs in parallel; below [`Cpu::PARALLEL_MIN`]
//!   elements the call runs on the caller's thread, so a tiny tensor costs what the reference
//!   costs.
//! - **Reductions in the defined order.** Min/max commute (zeros are canonical, NaN and
//!   infinities skipped), so each task reduces its part and the parts are merged in any order.
//!   LSQ's sums follow [`crate::reference::lsq::tree_sum`]: its blocks of 4096 terms are summed
//!   in parallel, each in the reference's lane order, and the blocks' sums are combined by the
//!   reference's own function.
//!
//! Dynamic fake-quantization (per group, per token) computes the groups' qparams in parallel with
//! the reference's own per-group functions, then runs the fast kernels; the floating-point formats
//! (FP8, MX, NVFP4) reduce each block's amax in parallel, then convert the elements in parallel
//! with the reference's per-block and per-element functions; histogram observers count in
//! parallel into per-task histograms that are then added.

/// Compiles a kernel twice: for the baseline instruction set, and on x86-64 also with AVX2
/// (256-bit vectors, twice SSE2's lanes); the generated function takes an [`InstructionSet`]
/// first and runs the AVX2 build when it is asked for and the processor has it. The body is the
/// same source, so both builds are the same IEEE operations (enabling AVX2 adds no fused
/// multiply-add: Rust never contracts `a * b + c`); only the vector width differs. The portable
/// body is `#[inline(always)]`, so it, and the `#[inline(always)]` helpers it calls, are compiled
/// inside the AVX2 function with AVX2 (a closure it passes elsewhere would not be: kernels loop
/// over [`elementwise::runs`], an iterator, for that reason).
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident $(<$($g:ident: $b:path),+>)? ($($arg:ident: $ty:ty),* $(,)?)
            $(-> $ret:ty)?
        $body:block
    ) => {
        $(#[$meta])*
        #[allow(unused_variables, clippy::too_many_arguments)]
        $vis fn $name $(<$($g: $b),+>)? (
            isa: $crate::cpu::InstructionSet,
            $($arg: $ty),*
        ) $(-> $ret)? {
            #[inline(always)]
            fn portable $(<$($g: $b),+>)? ($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            fn avx2 $(<$($g: $b),+>)? ($($arg: $ty),*) $(-> $ret)? {
                portable($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if isa == $crate::cpu::InstructionSet::Avx2 && std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: `avx2` needs only the processor's AVX2, detected just above.
                return unsafe { avx2($($arg),*) };
            }
            portable($($arg),*)
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2;
mod backend;
pub mod convert;
mod dynamic;
pub mod elementwise;
mod float_quant;
mod histogram;
mod lsq;
mod observer;
pub mod reduce;

pub use dynamic::CpuDynamic;
pub use float_quant::CpuFloatQuant;
pub use histogram::CpuHistogramObserver;
pub use lsq::CpuLsq;
pub use observer::CpuObserver;

use std::sync::Arc;

use crate::error::{Error, Result};

/// The vector instructions the CPU backend's kernels run with. Results are the same bits with
/// every one (the kernels are one source compiled per set: `multiversion!` in `src/cpu/mod.rs`);
/// only the speed differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InstructionSet {
    /// The target's baseline (SSE2 on x86-64, NEON on AArch64), as compiled.
    Baseline,
    /// x86-64 with AVX2, where the processor has it.
    Avx2,
}

impl InstructionSet {
    /// The widest this processor runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Self::Avx2;
        }
        Self::Baseline
    }
}

/// The CPU backend: a thread pool and the fast CPU kernels (see the [module](self)).
///
/// Cloning shares the pool. Results never depend on the number of threads.
#[derive(Clone)]
pub struct Cpu {
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
    isa: InstructionSet,
}

impl std::fmt::Debug for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cpu")
            .field("threads", &self.threads)
            .field("instruction_set", &self.isa)
            .finish()
    }
}

impl Cpu {
    /// Tensors with fewer elements than this run on the caller's thread, where waking the pool
    /// would cost about as much as the work (a 64K-element fake-quant takes 0.02 ms here).
    pub const PARALLEL_MIN: usize = 1 << 16;

    /// The most threads [`Cpu::with_threads`] accepts.
    pub const MAX_THREADS: usize = 1024;

    /// A backend with one thread per available core (`std::thread::available_parallelism`, or 1
    /// when the system does not say).
    pub fn new() -> Result<Self> {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(Self::MAX_THREADS);
        Self::with_threads(threads)
    }

    /// A backend with `threads` threads (1 to [`Cpu::MAX_THREADS`]); with 1, everything runs on
    /// the caller's thread.
    pub fn with_threads(threads: usize) -> Result<Self> {
        if !(1..=Self::MAX_THREADS).contains(&threads) {
            return Err(Error::InvalidSetting(format!(
                "CPU backend threads = {threads}: allowed 1 to {}",
                Self::MAX_THREADS
            )));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("fakequant-cpu-{i}"))
            .build()
            .map_err(|e| {
                Error::Unsupported(format!(
                    "the CPU backend could not start its {threads} threads: {e}"
                ))
            })?;
        Ok(Self {
            pool: Arc::new(pool),
            threads,
            isa: InstructionSet::detect(),
        })
    }

    /// The same backend with the kernels limited to `isa` (for testing both builds, and for
    /// measuring them); an error when this processor does not have it.
    pub fn with_instruction_set(mut self, isa: InstructionSet) -> Result<Self> {
        let available = isa == InstructionSet::Baseline || InstructionSet::detect() == isa;
        if !available {
            return Err(Error::Unsupported(format!(
                "instruction set {isa:?}: this processor has {:?}",
                InstructionSet::detect()
            )));
        }
        self.isa = isa;
        Ok(self)
    }

    /// The instruction set the kernels run with (the widest the processor has, unless
    /// [`Cpu::with_instruction_set`] chose another).
    pub fn instruction_set(&self) -> InstructionSet {
        self.isa
    }

    /// The number of threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Whether a tensor of `len` elements is worth the pool (see [`Cpu::PARALLEL_MIN`]).
    fn parallel(&self, len: usize) -> bool {
        len >= Self::PARALLEL_MIN && self.threads > 1
    }

    /// Elements per parallel task for a tensor of `len` elements: a multiple of `unit` (whole
    /// mask words, whole reduction blocks), about four tasks per thread for balance; the whole
    /// tensor when it runs on the caller's thread.
    fn task_len(&self, len: usize, unit: usize) -> usize {
        if !self.parallel(len) {
            return len.next_multiple_of(unit).max(unit);
        }
        len.div_ceil(self.threads * 4)
            .next_multiple_of(unit)
            .max(unit)
    }

    /// Calls `work(start, y, words)` on consecutive tasks that cover `y` (elements `start..`) and
    /// the mask words of those elements, in the pool or on the caller's thread. Tasks hold whole
    /// mask words ([`elementwise::CHUNK`] elements at least).
    pub(crate) fn for_each_task<T: Send>(
        &self,
        y: &mut [T],
        words: &mut [u32],
        work: impl Fn(usize, &mut [T], &mut [u32]) + Sync,
    ) {
        // No second output: a slice of `()` (a zero-sized type, so nothing is allocated).
        let mut none = vec![(); y.len()];
        self.for_each_task_with_codes(y, &mut none, words, |start, y, _, words| {
            work(start, y, words)
        });
    }

    /// [`Cpu::for_each_task`] with a second per-element output (`codes`, as long as `y`).
    pub(crate) fn for_each_task_with_codes<T: Send, U: Send>(
        &self,
        y: &mut [T],
        codes: &mut [U],
        words: &mut [u32],
        work: impl Fn(usize, &mut [T], &mut [U], &mut [u32]) + Sync,
    ) {
        let task = self.task_len(y.len(), elementwise::CHUNK);
        if !self.parallel(y.len()) {
            work(0, y, codes, words);
            return;
        }
        use rayon::prelude::*;
        self.pool.install(|| {
            y.par_chunks_mut(task)
                .zip(codes.par_chunks_mut(task))
                .zip(words.par_chunks_mut(task / 32))
                .enumerate()
                .for_each(|(k, ((y, codes), words))| work(k * task, y, codes, words))
        });
    }

    /// Calls `work(start, out)` on consecutive tasks of whole mask words that cover `out`
    /// (elements `start..`), in the pool or on the caller's thread.
    pub(crate) fn for_each_output<T: Send>(
        &self,
        out: &mut [T],
        work: impl Fn(usize, &mut [T]) + Sync,
    ) {
        let task = self.task_len(out.len(), elementwise::CHUNK);
        if !self.parallel(out.len()) {
            work(0, out);
            return;
        }
        use rayon::prelude::*;
        self.pool.install(|| {
            out.par_chunks_mut(task)
                .enumerate()
                .for_each(|(k, out)| work(k * task, out))
        });
    }

    /// `work` over consecutive ranges of `0..len` (each a multiple of `unit` long but the last),
    /// in the pool or on the caller's thread; the results in range order.
    pub(crate) fn map_ranges<R: Send>(
        &self,
        len: usize,
        unit: usize,
        work: impl Fn(std::ops::Range<usize>) -> R + Sync,
    ) -> Vec<R> {
        let task = self.task_len(len, unit);
        let ranges = (0..len.div_ceil(task))
            .map(|k| k * task..((k + 1) * task).min(len))
            .collect();
        self.map_tasks(len, ranges, work)
    }

    /// `work(task)` for each of `tasks`, the results in order: in the pool when the work covers
    /// `elements` elements worth it, else on the caller's thread.
    pub(crate) fn map_tasks<I: Send, R: Send>(
        &self,
        elements: usize,
        tasks: Vec<I>,
        work: impl Fn(I) -> R + Sync,
    ) -> Vec<R> {
        if !self.parallel(elements) {
            return tasks.into_iter().map(work).collect();
        }
        use rayon::prelude::*;
        self.pool
            .install(|| tasks.into_par_iter().map(&work).collect())
    }

    /// `work(scratch, k)` for `k` in `0..count`, the results in order: in the pool when the work
    /// covers `elements` elements worth it, else on the caller's thread. Each run of consecutive
    /// indices gets a `scratch` from `init`, reused across its indices.
    pub(crate) fn map_indices<S, R: Send>(
        &self,
        count: usize,
        elements: usize,
        init: impl Fn() -> S + Sync,
        work: impl Fn(&mut S, usize) -> R + Sync,
    ) -> Vec<R> {
        if !self.parallel(elements) {
            let mut scratch = init();
            return (0..count).map(|k| work(&mut scratch, k)).collect();
        }
        use rayon::prelude::*;
        let min_len = (count / (self.threads * 16)).max(1);
        self.pool.install(|| {
            (0..count)
                .into_par_iter()
                .with_min_len(min_len)
                .map_init(&init, &work)
                .collect()
        })
    }
}

/// A zeroed output of `len` elements (lazily zeroed pages from the allocator), or
/// [`Error::TooLarge`] when the host cannot allocate it, instead of the allocator's abort.
pub(crate) fn try_output<T: bytemuck::Zeroable>(what: &'static str, len: usize) -> Result<Vec<T>> {
    let mut out = bytemuck::allocation::try_zeroed_vec(len).map_err(|()| Error::TooLarge {
        what,
        requested: len as u64,
        limit: (isize::MAX as usize / std::mem::size_of::<T>().max(1)) as u64,
    })?;
    advise_huge_pages(&mut out);
    Ok(out)
}

/// Asks Linux for transparent huge pages on a large new output, before anything touches it. A
/// large zeroed allocation is fresh memory from `mmap` whose pages the kernel zero-fills on the
/// first write: with 4 KiB pages that is one page fault per 4 KiB, which costs more than the
/// fake-quant of those bytes (measured: 20 ms of a 35 ms call at 16M f32 on 2 cores); 2 MiB
/// pages take 512 times fewer faults. Advisory only: where the kernel refuses (THP off), nothing
/// changes but the speed.
fn advise_huge_pages<T>(out: &mut [T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = std::mem::size_of_val(out);
        if bytes < 2 * HUGE {
            return;
        }
        let start = out.as_mut_ptr() as usize;
        let (first, end) = (start.next_multiple_of(HUGE), (start + bytes) / HUGE * HUGE);
        if first < end {
            // SAFETY: madvise with MADV_HUGEPAGE changes no memory contents and no mapping the
            // program relies on; the range (2 MiB-aligned, hence page-aligned) lies inside `out`,
            // which this function borrows exclusively. A failure is ignored: the hint is optional.
            unsafe {
                libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = out;
}

/// Whether `FAKEQUANT_BACKEND` names the CPU backend (`cpu`, alone): the CPU backend is not a wgpu
/// backend, so it cannot be listed with GPU backends.
pub fn backend_from_env() -> Result<bool> {
    let Ok(value) = std::env::var("FAKEQUANT_BACKEND") else {
        return Ok(false);
    };
    let names: Vec<String> = value
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    if !names.iter().any(|n| n == "cpu") {
        return Ok(false);
    }
    if names.len() > 1 {
        return Err(Error::InvalidEnvironment {
            name: "FAKEQUANT_BACKEND",
            value,
            reason: "cpu (the CPU backend) cannot be combined with GPU backends".into(),
        });
    }
    Ok(true)
}
