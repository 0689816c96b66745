//! The instruction sets the kernels are compiled for, and running a kernel on one.

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction set the kernels run on. Holding one proves the CPU has it.
#[derive(Debug, Clone, Copy)]
pub enum Isa {
    /// Plain scalar code: every CPU.
    Scalar,
    /// AVX2 with FMA (x86-64-v3).
    #[cfg(target_arch = "x86_64")]
    Avx2(pulp::x86::V3),
    /// AVX-512 (x86-64-v4).
    #[cfg(target_arch = "x86_64")]
    Avx512(pulp::x86::V4),
}

/// The rank of the widest instruction set [`Isa::best`] returns ([`Isa::set_widest`]);
/// `u8::MAX`: the widest the CPU has.
static WIDEST: AtomicU8 = AtomicU8::new(u8::MAX);

impl Isa {
    /// The widest this CPU has, or the one [`Isa::set_widest`] chose.
    pub fn best() -> Self {
        let widest = WIDEST.load(Ordering::Relaxed);
        Self::all()
            .into_iter()
            .rfind(|isa| isa.rank() <= widest)
            .unwrap_or(Self::Scalar)
    }

    /// Makes [`Isa::best`] return `widest` (or a narrower one, if the CPU lacked it) for
    /// the whole process, or, with `None`, the widest the CPU has again. A model's kernels
    /// are chosen when it loads: those loaded before keep theirs.
    pub fn set_widest(widest: Option<Self>) {
        WIDEST.store(widest.map_or(u8::MAX, Self::rank), Ordering::Relaxed);
    }

    /// The instruction set called `name` ([`Isa::name`]), if this CPU runs it.
    pub fn named(name: &str) -> Option<Self> {
        Self::all().into_iter().find(|isa| isa.name() == name)
    }

    /// Its place from narrowest to widest.
    fn rank(self) -> u8 {
        match self {
            Self::Scalar => 0,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2(_) => 1,
            #[cfg(target_arch = "x86_64")]
            Self::Avx512(_) => 2,
        }
    }

    /// Every instruction set this CPU runs, narrowest first.
    pub fn all() -> Vec<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            let mut all = vec![Self::Scalar];
            all.extend(pulp::x86::V3::try_new().map(Self::Avx2));
            all.extend(pulp::x86::V4::try_new().map(Self::Avx512));
            all
        }
        #[cfg(not(target_arch = "x86_64"))]
        vec![Self::Scalar]
    }

    /// Its name: `scalar`, `avx2`, `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Self::Avx2(_) => "avx2",
            #[cfg(target_arch = "x86_64")]
            Self::Avx512(_) => "avx512",
        }
    }

    /// The instruction set of half its width that this CPU also runs: AVX2 for AVX-512,
    /// else itself.
    pub(crate) fn half_width(self) -> Self {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512(v4) => Self::Avx2(*v4),
            other => other,
        }
    }

    /// f32 lanes in one of its vectors.
    pub fn lanes(self) -> usize {
        self.run(Lanes)
    }

    /// Runs `op` compiled for this instruction set.
    #[inline(always)]
    pub fn run<Op: pulp::WithSimd>(self, op: Op) -> Op::Output {
        use pulp::Simd;
        match self {
            Self::Scalar => Simd::vectorize(pulp::Scalar::new(), op),
            #[cfg(target_arch = "x86_64")]
            Self::Avx2(simd) => Simd::vectorize(simd, op),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512(simd) => Simd::vectorize(simd, op),
        }
    }
}

struct Lanes;

impl pulp::WithSimd for Lanes {
    type Output = usize;
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> usize {
        S::F32_LANES
    }
}
