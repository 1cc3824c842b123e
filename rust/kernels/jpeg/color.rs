//! The fixed-point YCbCr -> RGB conversion of libjpeg's `jdcolor.c`, portable code; `avx2.rs`
//! computes the same integers sixteen pixels at a time from the constants here.

// `jdcolor.c`'s fixed-point YCbCr -> RGB (16 fractional bits), as plain arithmetic: the same
// integers its tables hold.
pub(super) const HALF: i32 = 1 << 15;
pub(super) const CR_R: i32 = 91881; // FIX(1.40200)
pub(super) const CB_B: i32 = 116130; // FIX(1.77200)
pub(super) const CR_G: i32 = 46802; // FIX(0.71414)
pub(super) const CB_G: i32 = 22554; // FIX(0.34414)

/// One row of pixels, YCbCr to interleaved RGB, portable code.
pub(super) fn ycc_to_rgb(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    let clamp = |v: i32| v.clamp(0, 255) as u8;
    for (o, ((&yv, &cbv), &crv)) in out.chunks_exact_mut(3).zip(y.iter().zip(cb).zip(cr)) {
        let (yv, cbv, crv) = (i32::from(yv), i32::from(cbv) - 128, i32::from(crv) - 128);
        o[0] = clamp(yv + ((CR_R * crv + HALF) >> 16));
        o[1] = clamp(yv + ((-CB_G * cbv - CR_G * crv + HALF) >> 16));
        o[2] = clamp(yv + ((CB_B * cbv + HALF) >> 16));
    }
}
