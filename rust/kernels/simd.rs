//! Runtime selection of wider vector instructions.
//!
//! Wheels are built for the x86-64 baseline (SSE2), which would leave the hot loops at half the
//! width modern CPUs offer. Kernels therefore have a second entry point compiled with
//! `#[target_feature(enable = "avx2")]` into which the `#[inline(always)]` kernel code is inlined
//! (a closure handed to such a function is not: it keeps the baseline code), chosen at run time
//! with [`has_avx2`]. Rust never reassociates or contracts float arithmetic, so both entry points
//! give the same bits.

/// True when the CPU supports AVX2 (the answer is cached by the standard library).
#[inline]
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
