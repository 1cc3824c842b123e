//! Pure-Rust compute kernels: no Python types here, so they are unit-tested with `cargo test`.

pub mod decode;
pub mod extract;
pub mod image;
pub mod jpeg;
#[cfg(target_arch = "x86_64")]
pub mod jpeg_avx2;
pub mod moments;
#[cfg(target_arch = "x86_64")]
pub mod moments_avx2;
#[cfg(target_arch = "x86_64")]
pub mod moments_lanes;
pub mod simd;
pub mod spectrum;
