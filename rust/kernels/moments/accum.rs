//! The arithmetic families the kernels are generic over ([`Accum`]: exact integers for `u8`,
//! `f64` for floats) and the input pixel types that choose one ([`Pixel`]).
//!
//! The `u8` family's [`Accum::fast_second`] hands stride-1 images to the AVX2 strip kernel
//! (`strips_avx2`), so this file sits above the SIMD kernels and below the portable code.

use crate::kernels::image::Planes;
use crate::kernels::moments::geometry::Moments;
use crate::kernels::simd;

/// Arithmetic of one accumulation family.
pub trait Accum: Send + Sync + 'static {
    /// A pixel of the planar working copy.
    type Plane: Copy + Default + PartialEq + Send + Sync;
    /// A column sum over at most `MAX_ROWS` rows of products.
    type Col: Copy + Default + Send + Sync;
    /// A total over any number of patches.
    type Total: Copy + Default + Send + Sync + PartialEq + std::fmt::Debug;
    /// Rows of products a column sum holds without overflow.
    const MAX_ROWS: usize;
    /// Whether sums are exact (integers), so that the order of work cannot change them.
    const EXACT: bool;
    fn mul_add(acc: Self::Col, a: Self::Plane, b: Self::Plane) -> Self::Col;
    fn mul_sub(acc: Self::Col, a: Self::Plane, b: Self::Plane) -> Self::Col;
    /// `acc + a0 b0 + a1 b1`: two rows at once (one `vpmaddwd` lane for `u8` pixels).
    fn mul_add2(acc: Self::Col, a: [Self::Plane; 2], b: [Self::Plane; 2]) -> Self::Col;
    fn plane_add(acc: Self::Col, a: Self::Plane) -> Self::Col;
    fn plane_sub(acc: Self::Col, a: Self::Plane) -> Self::Col;
    fn widen(c: Self::Col) -> Self::Total;
    fn add(a: Self::Total, b: Self::Total) -> Self::Total;
    fn sub(a: Self::Total, b: Self::Total) -> Self::Total;
    /// Adds the second moments of the planar image `planes` (and `pairs`, its interleaving
    /// with the row below) with a kernel specialised for this arithmetic and CPU, and returns
    /// true; false where none applies (the portable kernel runs instead).
    #[allow(clippy::too_many_arguments)]
    fn fast_second(
        _c: usize,
        _pl: Planes,
        _g: (usize, usize, usize, usize, usize),
        _planes: &[Self::Plane],
        _pairs: &[Self::Plane],
        _sc: &mut FastScratch,
        _second: &mut [Self::Total],
    ) -> bool {
        false
    }
    /// Finishes what `fast_second` left pending (it may sum several images before it adds them
    /// to `second`); called once all images of a chunk are in.
    fn fast_flush(_sc: &mut FastScratch, _second: &mut [Self::Total]) {}
    /// Integer moments (from a kernel for `u8` pixels) as this family's totals.
    fn from_exact(m: Moments<u64>) -> Moments<Self::Total>;
}

/// Buffers of the specialised kernels.
#[derive(Default)]
pub struct FastScratch {
    #[cfg(target_arch = "x86_64")]
    avx2: crate::kernels::moments::strips_avx2::Scratch,
}

/// Exact integer arithmetic for `u8` pixels.
pub struct Exact;

impl Accum for Exact {
    type Plane = u16;
    type Col = u32;
    type Total = u64;
    // The only `u32` sums are bounded by a count of terms, never by the kernel size or the image:
    // a shifted-products column sum adds at most MAX_ROWS rows of products (taller images are
    // summed in blocks of rows), and the direct kernel's dot products over a block at most
    // `portable::GRAM` = 256 patches, each term at most 255^2: 65535 * 255^2 = 4,261,413,375 <
    // 2^32. Everything
    // past a column is `u64`: an image's window sums (hsums) and all totals. So k = 32 on a 224 x
    // 224 image (37,249 windows, up to 2.4e9 per entry) or on 512 x 512 (231,361 windows, 1.5e10
    // per entry, above 2^32) is exact (`large_kernels_are_exact_past_u32`).
    const MAX_ROWS: usize = 65_535;
    const EXACT: bool = true;
    #[inline(always)]
    fn mul_add(acc: u32, a: u16, b: u16) -> u32 {
        // a, b <= 255, so the u16 product is exact; the u32 sum cannot overflow (MAX_ROWS).
        acc.wrapping_add(u32::from(a.wrapping_mul(b)))
    }
    // Column sums slide by removing rows added before: wrapping keeps them exact.
    #[inline(always)]
    fn mul_sub(acc: u32, a: u16, b: u16) -> u32 {
        acc.wrapping_sub(u32::from(a.wrapping_mul(b)))
    }
    #[inline(always)]
    fn mul_add2(acc: u32, a: [u16; 2], b: [u16; 2]) -> u32 {
        // Pixels are <= 255, so as i16 they are unchanged and the pairwise sum of i32 products
        // is exact: the shape LLVM turns into `pmaddwd` (16 products per AVX2 instruction).
        let (a0, a1) = (i32::from(a[0] as i16), i32::from(a[1] as i16));
        let (b0, b1) = (i32::from(b[0] as i16), i32::from(b[1] as i16));
        acc.wrapping_add((a0 * b0 + a1 * b1) as u32)
    }
    #[inline(always)]
    fn plane_add(acc: u32, a: u16) -> u32 {
        acc.wrapping_add(u32::from(a))
    }
    #[inline(always)]
    fn plane_sub(acc: u32, a: u16) -> u32 {
        acc.wrapping_sub(u32::from(a))
    }
    #[inline(always)]
    fn widen(c: u32) -> u64 {
        u64::from(c)
    }
    // Totals are sums of non-negative terms below 2^64 at any realistic scale (2.8e14 patches
    // of 255s); sliding sums subtract terms that were added before, so wrapping is exact.
    #[inline(always)]
    fn add(a: u64, b: u64) -> u64 {
        a.wrapping_add(b)
    }
    #[inline(always)]
    fn sub(a: u64, b: u64) -> u64 {
        a.wrapping_sub(b)
    }
    /// AVX2 intrinsics at stride 1 (`strips_avx2`), for padded images of at most `MAX_ROWS`
    /// rows.
    fn fast_second(
        c: usize,
        pl: Planes,
        (k, s, ho, wo, wc): (usize, usize, usize, usize, usize),
        planes: &[u16],
        pairs: &[u16],
        sc: &mut FastScratch,
        second: &mut [u64],
    ) -> bool {
        // Small images (up to 128 x 128) never come here under `Method::Shifted`: `chunk_lanes`
        // takes them first.
        #[cfg(target_arch = "x86_64")]
        if s == 1
            && (2..=15).contains(&k)
            && pl.hp <= Self::MAX_ROWS
            && pl.margin >= k - 1
            && simd::has_avx2()
        {
            use crate::kernels::moments::strips_avx2::{second_moments, Shape};
            let shape = Shape { c, k, ho, wo, wc };
            // SAFETY: AVX2 is present, stride 1, 2 <= k <= 15, margins of k - 1, wc
            // whole vectors (LANES), at most MAX_ROWS rows: the conditions of `second_moments`.
            unsafe { second_moments(shape, pl, planes, pairs, &mut sc.avx2, second) };
            return true;
        }
        let _ = (c, pl, k, s, ho, wo, wc, planes, pairs, sc, second);
        false
    }
    fn fast_flush(sc: &mut FastScratch, second: &mut [u64]) {
        #[cfg(target_arch = "x86_64")]
        if simd::has_avx2() {
            // SAFETY: AVX2 is present.
            unsafe {
                crate::kernels::moments::strips_avx2::flush(&mut sc.avx2, second);
            }
        }
        let _ = (sc, second);
    }
    fn from_exact(m: Moments<u64>) -> Moments<u64> {
        m
    }
}

/// `f64` arithmetic for float pixels.
pub struct Float;

impl Accum for Float {
    type Plane = f64;
    type Col = f64;
    type Total = f64;
    fn from_exact(m: Moments<u64>) -> Moments<f64> {
        // Integer sums of u8 products stay far below 2^53: exact as f64.
        let f = |v: Vec<u64>| v.into_iter().map(|x| x as f64).collect();
        Moments {
            p: m.p,
            count: m.count,
            sum: f(m.sum),
            second: f(m.second),
            class_count: m.class_count,
            class_sum: f(m.class_sum),
        }
    }
    const MAX_ROWS: usize = usize::MAX;
    const EXACT: bool = false;
    #[inline(always)]
    fn mul_add(acc: f64, a: f64, b: f64) -> f64 {
        acc + a * b
    }
    #[inline(always)]
    fn mul_sub(acc: f64, a: f64, b: f64) -> f64 {
        acc - a * b
    }
    #[inline(always)]
    fn mul_add2(acc: f64, a: [f64; 2], b: [f64; 2]) -> f64 {
        acc + (a[0] * b[0] + a[1] * b[1])
    }
    #[inline(always)]
    fn plane_add(acc: f64, a: f64) -> f64 {
        acc + a
    }
    #[inline(always)]
    fn plane_sub(acc: f64, a: f64) -> f64 {
        acc - a
    }
    #[inline(always)]
    fn widen(c: f64) -> f64 {
        c
    }
    #[inline(always)]
    fn add(a: f64, b: f64) -> f64 {
        a + b
    }
    #[inline(always)]
    fn sub(a: f64, b: f64) -> f64 {
        a - b
    }
}

/// An input pixel type and the accumulation family it uses.
pub trait Pixel: Copy + Send + Sync + 'static {
    type Acc: Accum;
    /// Whether pixels may be shifted before accumulation (floats; integers stay exact).
    const SHIFTABLE: bool;
    /// The pixel as `f64`, or `None` for NaN and infinities.
    fn to_f64(self) -> Option<f64>;
    /// `self - shift` in the working type of its accumulation family, or `None` for NaN/Inf.
    fn plane(self, shift: f64) -> Option<<Self::Acc as Accum>::Plane>;
    /// A zero pixel (padding) shifted by `shift`.
    fn zero_plane(shift: f64) -> <Self::Acc as Accum>::Plane;
    /// The pixels as bytes, for the kernels written for `u8` only.
    fn bytes(_x: &[Self]) -> Option<&[u8]> {
        None
    }
}

impl Pixel for u8 {
    type Acc = Exact;
    const SHIFTABLE: bool = false;
    #[inline(always)]
    fn to_f64(self) -> Option<f64> {
        Some(f64::from(self))
    }
    #[inline(always)]
    fn plane(self, _shift: f64) -> Option<u16> {
        Some(u16::from(self))
    }
    fn zero_plane(_shift: f64) -> u16 {
        0
    }
    fn bytes(x: &[u8]) -> Option<&[u8]> {
        Some(x)
    }
}

impl Pixel for f32 {
    type Acc = Float;
    const SHIFTABLE: bool = true;
    #[inline(always)]
    fn to_f64(self) -> Option<f64> {
        self.is_finite().then_some(f64::from(self))
    }
    #[inline(always)]
    fn plane(self, shift: f64) -> Option<f64> {
        self.is_finite().then_some(f64::from(self) - shift)
    }
    fn zero_plane(shift: f64) -> f64 {
        -shift
    }
}

impl Pixel for f64 {
    type Acc = Float;
    const SHIFTABLE: bool = true;
    #[inline(always)]
    fn to_f64(self) -> Option<f64> {
        self.is_finite().then_some(self)
    }
    #[inline(always)]
    fn plane(self, shift: f64) -> Option<f64> {
        self.is_finite().then_some(self - shift)
    }
    fn zero_plane(shift: f64) -> f64 {
        -shift
    }
}

pub(super) fn add_into<A: Accum>(dst: &mut [A::Total], src: &[A::Total]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = A::add(*d, s);
    }
}

impl<T: Copy + Default> Moments<T> {
    pub(super) fn merge<A: Accum<Total = T>>(&mut self, other: &Self) {
        self.count += other.count;
        add_into::<A>(&mut self.sum, &other.sum);
        add_into::<A>(&mut self.second, &other.second);
        for (d, &s) in self.class_count.iter_mut().zip(&other.class_count) {
            *d += s;
        }
        add_into::<A>(&mut self.class_sum, &other.class_sum);
    }
}
