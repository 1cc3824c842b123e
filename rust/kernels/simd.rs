//! Runtime selection of wider vector instructions.
//!
//! Wheels are built for the x86-64 baseline (SSE2), which would leave the hot loops at a quarter
//! of the width modern CPUs offer. `dispatch` runs a closure inside a function compiled with AVX2
//! enabled when the CPU has it, so that the `#[inline(always)]` kernels it calls are vectorised
//! for AVX2. Rust never reassociates or contracts float arithmetic, so both paths give the same
//! bits.

/// Runs `f`, compiled with AVX2 when the CPU supports it.
#[inline]
pub fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: `call_avx2` only requires AVX2, which was detected just above.
            return unsafe { call_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn call_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
