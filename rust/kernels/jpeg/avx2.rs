//! The JPEG decoder's two arithmetic-heavy steps in AVX2: the islow IDCT and YCbCr -> RGB.
//!
//! The same integers as the portable code in `idct.rs` and `color.rs` (wrapping `i32` lanes, the
//! same constants, shifts and clamps), so the same bits; the tests below check that on random and
//! extreme input.
//!
//! * IDCT: the eight rows of a block are eight `i32x8` registers, so one butterfly transforms all
//!   eight columns at once; a transpose turns the rows into columns for the second pass and back.
//! * Colour: sixteen pixels per step in `i32x8` lanes, packed with saturation (which is the clamp
//!   to `0..=255`) and interleaved into RGB with byte shuffles.

use std::arch::x86_64::*;

use crate::kernels::jpeg::color::{self, CB_B, CB_G, CR_G, CR_R, HALF};
use crate::kernels::jpeg::idct::{
    CB, F0298, F0390, F0541, F0765, F0899, F1175, F1501, F1847, F1961, F2053, F2562, F3072, P1,
};

#[inline]
#[target_feature(enable = "avx2")]
fn add(a: __m256i, b: __m256i) -> __m256i {
    _mm256_add_epi32(a, b)
}

#[inline]
#[target_feature(enable = "avx2")]
fn sub(a: __m256i, b: __m256i) -> __m256i {
    _mm256_sub_epi32(a, b)
}

#[inline]
#[target_feature(enable = "avx2")]
fn mulc(a: __m256i, c: i32) -> __m256i {
    _mm256_mullo_epi32(a, _mm256_set1_epi32(c))
}

/// The islow butterfly of `idct.rs`, on eight lanes at once.
#[inline]
#[target_feature(enable = "avx2")]
fn butterfly(d: &[__m256i; 8]) -> [__m256i; 8] {
    let (z2, z3) = (d[2], d[6]);
    let z1 = mulc(add(z2, z3), F0541);
    let tmp2 = add(z1, mulc(z3, -F1847));
    let tmp3 = add(z1, mulc(z2, F0765));
    let tmp0 = _mm256_slli_epi32::<{ CB as i32 }>(add(d[0], d[4]));
    let tmp1 = _mm256_slli_epi32::<{ CB as i32 }>(sub(d[0], d[4]));
    let (t10, t13, t11, t12) = (
        add(tmp0, tmp3),
        sub(tmp0, tmp3),
        add(tmp1, tmp2),
        sub(tmp1, tmp2),
    );
    let (o0, o1, o2, o3) = (d[7], d[5], d[3], d[1]);
    let z1 = add(o0, o3);
    let z2 = add(o1, o2);
    let z3 = add(o0, o2);
    let z4 = add(o1, o3);
    let z5 = mulc(add(z3, z4), F1175);
    let (o0, o1, o2, o3) = (
        mulc(o0, F0298),
        mulc(o1, F2053),
        mulc(o2, F3072),
        mulc(o3, F1501),
    );
    let z1 = mulc(z1, -F0899);
    let z2 = mulc(z2, -F2562);
    let z3 = add(mulc(z3, -F1961), z5);
    let z4 = add(mulc(z4, -F0390), z5);
    let o0 = add(add(o0, z1), z3);
    let o1 = add(add(o1, z2), z4);
    let o2 = add(add(o2, z2), z3);
    let o3 = add(add(o3, z1), z4);
    [
        add(t10, o3),
        add(t11, o2),
        add(t12, o1),
        add(t13, o0),
        sub(t13, o0),
        sub(t12, o1),
        sub(t11, o2),
        sub(t10, o3),
    ]
}

/// Transpose an 8x8 block of `i32` held as eight row registers.
#[inline]
#[target_feature(enable = "avx2")]
fn transpose(r: &[__m256i; 8]) -> [__m256i; 8] {
    let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
    let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
    let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
    let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
    let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    // Columns c and c + 4 of rows 0..4 (low half) and 4..8 (high half).
    let s0 = _mm256_unpacklo_epi64(t0, t2);
    let s1 = _mm256_unpackhi_epi64(t0, t2);
    let s2 = _mm256_unpacklo_epi64(t1, t3);
    let s3 = _mm256_unpackhi_epi64(t1, t3);
    let s4 = _mm256_unpacklo_epi64(t4, t6);
    let s5 = _mm256_unpackhi_epi64(t4, t6);
    let s6 = _mm256_unpacklo_epi64(t5, t7);
    let s7 = _mm256_unpackhi_epi64(t5, t7);
    [
        _mm256_permute2x128_si256::<0x20>(s0, s4),
        _mm256_permute2x128_si256::<0x20>(s1, s5),
        _mm256_permute2x128_si256::<0x20>(s2, s6),
        _mm256_permute2x128_si256::<0x20>(s3, s7),
        _mm256_permute2x128_si256::<0x31>(s0, s4),
        _mm256_permute2x128_si256::<0x31>(s1, s5),
        _mm256_permute2x128_si256::<0x31>(s2, s6),
        _mm256_permute2x128_si256::<0x31>(s3, s7),
    ]
}

/// `idct::idct_islow` with AVX2: the block's 8x8 pixels go to `out` at `stride` bytes per row.
///
/// # Safety
/// The CPU must support AVX2. Memory accesses are bounds-checked (a short `out` panics).
#[target_feature(enable = "avx2")]
pub(super) fn idct_islow(coef: &[i32; 64], out: &mut [u8], stride: usize) {
    // SAFETY: eight unaligned loads of eight `i32` each, inside the 64-element array.
    let rows: [__m256i; 8] =
        std::array::from_fn(|r| unsafe { _mm256_loadu_si256(coef.as_ptr().add(8 * r).cast()) });
    let round1 = _mm256_set1_epi32(1 << (CB - P1 - 1));
    let ws = butterfly(&rows).map(|v| _mm256_srai_epi32::<{ (CB - P1) as i32 }>(add(v, round1)));
    let cols = butterfly(&transpose(&ws));
    // (x + 2^17) >> 18, then + 128: the rounding constant and the level shift in one add after.
    let round2 = _mm256_set1_epi32(1 << (CB + P1 + 3 - 1));
    let level = _mm256_set1_epi32(128);
    let cols = cols.map(|v| {
        add(
            _mm256_srai_epi32::<{ (CB + P1 + 3) as i32 }>(add(v, round2)),
            level,
        )
    });
    let r = transpose(&cols);
    // Saturating packs clamp to 0..=255; the dword permute puts each row's 8 bytes together.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let pack = |a: usize| {
        let lo = _mm256_packs_epi32(r[a], r[a + 1]);
        let hi = _mm256_packs_epi32(r[a + 2], r[a + 3]);
        _mm256_permutevar8x32_epi32(_mm256_packus_epi16(lo, hi), order)
    };
    let mut bytes = [0u8; 64];
    // SAFETY: two 32-byte unaligned stores into the 64-byte buffer.
    unsafe {
        _mm256_storeu_si256(bytes.as_mut_ptr().cast(), pack(0));
        _mm256_storeu_si256(bytes.as_mut_ptr().add(32).cast(), pack(4));
    }
    for (row, px) in bytes.chunks_exact(8).enumerate() {
        out[row * stride..row * stride + 8].copy_from_slice(px);
    }
}

/// Byte shuffles that interleave 16 R, 16 G and 16 B bytes into three 16-byte chunks of RGB:
/// `[chunk][channel]`, -128 (high bit set) where the chunk's byte is another channel's.
const INTERLEAVE: [[[i8; 16]; 3]; 3] = {
    let mut m = [[[-128i8; 16]; 3]; 3];
    let mut g = 0;
    while g < 48 {
        m[g / 16][g % 3][g % 16] = (g / 3) as i8;
        g += 1;
    }
    m
};

/// `color::ycc_to_rgb` with AVX2: one row, YCbCr to interleaved RGB.
///
/// # Safety
/// The CPU must support AVX2. Only the pixels all four slices hold are read and written.
#[target_feature(enable = "avx2")]
pub(super) fn ycc_to_rgb(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    let n = y.len().min(cb.len()).min(cr.len()).min(out.len() / 3);
    let half = _mm256_set1_epi32(HALF);
    let c128 = _mm256_set1_epi32(128);
    // Eight pixels from the low 8 bytes of each register, as i32 lanes.
    let channel = |yv: __m128i, cbv: __m128i, crv: __m128i| {
        let y32 = _mm256_cvtepu8_epi32(yv);
        let cb32 = sub(_mm256_cvtepu8_epi32(cbv), c128);
        let cr32 = sub(_mm256_cvtepu8_epi32(crv), c128);
        let r = add(y32, _mm256_srai_epi32::<16>(add(mulc(cr32, CR_R), half)));
        let g = mulc(cb32, -CB_G);
        let g = add(
            y32,
            _mm256_srai_epi32::<16>(add(add(g, mulc(cr32, -CR_G)), half)),
        );
        let b = add(y32, _mm256_srai_epi32::<16>(add(mulc(cb32, CB_B), half)));
        (r, g, b)
    };
    // SAFETY: the shuffle masks are 16-byte arrays.
    let masks: [[__m128i; 3]; 3] =
        INTERLEAVE.map(|chunk| chunk.map(|m| unsafe { _mm_loadu_si128(m.as_ptr().cast()) }));
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: 16 bytes from index i < n - 15 of each input row.
        let (yv, cbv, crv) = unsafe {
            (
                _mm_loadu_si128(y.as_ptr().add(i).cast()),
                _mm_loadu_si128(cb.as_ptr().add(i).cast()),
                _mm_loadu_si128(cr.as_ptr().add(i).cast()),
            )
        };
        let (r0, g0, b0) = channel(yv, cbv, crv);
        let hi = |v: __m128i| _mm_srli_si128::<8>(v);
        let (r1, g1, b1) = channel(hi(yv), hi(cbv), hi(crv));
        // i32 -> i16 (in order after the qword permute) -> u8 with the clamp to 0..=255.
        let to16 = |a, b| _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
        let (r16, g16, b16) = (to16(r0, r1), to16(g0, g1), to16(b0, b1));
        let rg = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi16(r16, g16));
        let bb = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi16(b16, b16));
        let planes = [
            _mm256_castsi256_si128(rg),
            _mm256_extracti128_si256::<1>(rg),
            _mm256_castsi256_si128(bb),
        ];
        let dst = &mut out[3 * i..3 * i + 48];
        for (chunk, m) in masks.iter().enumerate() {
            let v = _mm_or_si128(
                _mm_or_si128(
                    _mm_shuffle_epi8(planes[0], m[0]),
                    _mm_shuffle_epi8(planes[1], m[1]),
                ),
                _mm_shuffle_epi8(planes[2], m[2]),
            );
            // SAFETY: 16 bytes at offset 16 * chunk of the 48-byte slice.
            unsafe { _mm_storeu_si128(dst.as_mut_ptr().add(16 * chunk).cast(), v) };
        }
        i += 16;
    }
    color::ycc_to_rgb(&y[i..n], &cb[i..n], &cr[i..n], &mut out[3 * i..3 * n]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::jpeg::idct;
    use crate::kernels::simd::has_avx2;

    /// A small deterministic generator (SplitMix64).
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed;
        move || {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    #[test]
    fn idct_equals_the_portable_code() {
        if !has_avx2() {
            return; // nothing to compare on this CPU
        }
        let mut next = rng(7);
        for case in 0..20_000 {
            // Realistic blocks (a few small coefficients), dense ones, and the 16-bit extremes.
            let coef: [i32; 64] = std::array::from_fn(|i| {
                let r = next();
                match case % 4 {
                    0 if i > 10 => 0,
                    0 | 1 => (r % 2049) as i32 - 1024,
                    2 => i32::from(r as i16),
                    _ => [i32::from(i16::MIN), i32::from(i16::MAX), 0][(r % 3) as usize],
                }
            });
            let (mut a, mut b) = ([0u8; 80], [0u8; 80]);
            idct::idct_islow(&coef, &mut a, 10);
            // SAFETY: the CPU has AVX2 (checked above).
            unsafe { idct_islow(&coef, &mut b, 10) };
            assert_eq!(a, b, "case {case}: {coef:?}");
        }
    }

    #[test]
    fn colour_conversion_equals_the_portable_code() {
        if !has_avx2() {
            return;
        }
        let mut next = rng(11);
        for n in [0, 1, 15, 16, 17, 31, 48, 224, 257] {
            let mut row = || (0..n).map(|_| next() as u8).collect::<Vec<u8>>();
            let (mut y, cb, cr) = (row(), row(), row());
            y.iter_mut().take(3).for_each(|v| *v = 255); // saturating corners
            let (mut a, mut b) = (vec![0u8; 3 * n], vec![0u8; 3 * n]);
            color::ycc_to_rgb(&y, &cb, &cr, &mut a);
            // SAFETY: the CPU has AVX2 (checked above).
            unsafe { ycc_to_rgb(&y, &cb, &cr, &mut b) };
            assert_eq!(a, b, "n = {n}");
        }
    }
}
