//! Which CPU the kernels run on, where a tuning choice was measured to differ between
//! cores (whether the AVX-512 tiles fetch the next weight panel ahead).

/// A CPU's maker, from CPUID's vendor string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// "GenuineIntel".
    Intel,
    /// "AuthenticAMD".
    Amd,
    /// Any other string (or a CPU without CPUID).
    Other,
}

/// A CPU's vendor and family, as CPUID's leaves 0 and 1 give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    /// Its maker.
    pub vendor: Vendor,
    /// Its family, the extended family added where the base family reads 0xF (AMD's Zen 4
    /// is 0x19, Zen 5 0x1A; Intel's cores 6).
    pub family: u32,
}

impl Cpu {
    /// The CPU from leaf 0's vendor registers (`EBX`, `EDX`, `ECX`) and leaf 1's `EAX`.
    pub fn from_cpuid(vendor: [u32; 3], version: u32) -> Self {
        let vendor = match vendor {
            [0x756e_6547, 0x4965_6e69, 0x6c65_746e] => Vendor::Intel,
            [0x6874_7541, 0x6974_6e65, 0x444d_4163] => Vendor::Amd,
            _ => Vendor::Other,
        };
        let base = (version >> 8) & 0xf;
        let family = if base == 0xf {
            base + ((version >> 20) & 0xff)
        } else {
            base
        };
        Self { vendor, family }
    }

    /// The CPU this process runs on, asked once.
    pub fn this() -> Self {
        static THIS: std::sync::OnceLock<Cpu> = std::sync::OnceLock::new();
        *THIS.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                let vendor = std::arch::x86_64::__cpuid(0);
                let version = std::arch::x86_64::__cpuid(1);
                Self::from_cpuid([vendor.ebx, vendor.edx, vendor.ecx], version.eax)
            }
            #[cfg(not(target_arch = "x86_64"))]
            Self {
                vendor: Vendor::Other,
                family: 0,
            }
        })
    }

    /// Whether its AVX-512 tiles fetch the next weight panel ahead: on every CPU but AMD's
    /// family 19h, whose one AVX-512 core (Zen 4, each 512-bit operation run as two halves)
    /// lost with it at every size; an Intel Xeon and AMD's Zen 5 gain (measured in
    /// `gemm.rs`, `WIDE_FETCH_MIN_ROWS`).
    pub fn wide_fetch_pays(self) -> bool {
        !(self.vendor == Vendor::Amd && self.family == 0x19)
    }
}
