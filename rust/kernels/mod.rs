//! Pure-Rust compute kernels: no Python types here, so they are unit-tested with `cargo test`.

pub mod decode;
pub mod extract;
pub mod image;
pub mod jpeg;
pub mod moments;
pub mod simd;
pub mod spectrum;
