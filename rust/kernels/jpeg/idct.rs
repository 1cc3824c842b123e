//! libjpeg's "islow" integer IDCT in portable code, and its shortcut for blocks with only a DC
//! coefficient. The bottom of the decoder: `avx2.rs` computes the same integers eight lanes at a
//! time from the constants here.

// libjpeg's islow constants: 13 fractional bits (`CB`), `P1` extra bits after the first pass.
pub(super) const CB: u32 = 13;
pub(super) const P1: u32 = 2;
pub(super) const F0298: i32 = 2446;
pub(super) const F0390: i32 = 3196;
pub(super) const F0541: i32 = 4433;
pub(super) const F0765: i32 = 6270;
pub(super) const F0899: i32 = 7373;
pub(super) const F1175: i32 = 9633;
pub(super) const F1501: i32 = 12299;
pub(super) const F1847: i32 = 15137;
pub(super) const F1961: i32 = 16069;
pub(super) const F2053: i32 = 16819;
pub(super) const F2562: i32 = 20995;
pub(super) const F3072: i32 = 25172;

/// libjpeg's `jpeg_idct_islow` of one block, portable code: one 1-D pass down the columns
/// (descaled by `CB - P1` bits), one along the rows (`CB + P1 + 3` bits, then + 128, clamped).
pub(super) fn idct_islow(coef: &[i32; 64], out: &mut [u8], stride: usize) {
    let descale = |x: i32, n: u32| x.wrapping_add(1 << (n - 1)) >> n;
    // The shared butterfly: inputs in natural order 0..8, outputs before descaling.
    let butterfly = |d: [i32; 8]| -> [i32; 8] {
        let m = |a: i32, c: i32| a.wrapping_mul(c);
        let (z2, z3) = (d[2], d[6]);
        let z1 = m(z2.wrapping_add(z3), F0541);
        let tmp2 = z1.wrapping_add(m(z3, -F1847));
        let tmp3 = z1.wrapping_add(m(z2, F0765));
        let tmp0 = d[0].wrapping_add(d[4]) << CB;
        let tmp1 = d[0].wrapping_sub(d[4]) << CB;
        let t10 = tmp0.wrapping_add(tmp3);
        let t13 = tmp0.wrapping_sub(tmp3);
        let t11 = tmp1.wrapping_add(tmp2);
        let t12 = tmp1.wrapping_sub(tmp2);
        let (o0, o1, o2, o3) = (d[7], d[5], d[3], d[1]);
        let z1 = o0.wrapping_add(o3);
        let z2 = o1.wrapping_add(o2);
        let z3 = o0.wrapping_add(o2);
        let z4 = o1.wrapping_add(o3);
        let z5 = m(z3.wrapping_add(z4), F1175);
        let (o0, o1, o2, o3) = (m(o0, F0298), m(o1, F2053), m(o2, F3072), m(o3, F1501));
        let z1 = m(z1, -F0899);
        let z2 = m(z2, -F2562);
        let z3 = m(z3, -F1961).wrapping_add(z5);
        let z4 = m(z4, -F0390).wrapping_add(z5);
        let o0 = o0.wrapping_add(z1).wrapping_add(z3);
        let o1 = o1.wrapping_add(z2).wrapping_add(z4);
        let o2 = o2.wrapping_add(z2).wrapping_add(z3);
        let o3 = o3.wrapping_add(z1).wrapping_add(z4);
        [
            t10.wrapping_add(o3),
            t11.wrapping_add(o2),
            t12.wrapping_add(o1),
            t13.wrapping_add(o0),
            t13.wrapping_sub(o0),
            t12.wrapping_sub(o1),
            t11.wrapping_sub(o2),
            t10.wrapping_sub(o3),
        ]
    };
    let mut ws = [0i32; 64];
    for col in 0..8 {
        let o = butterfly(std::array::from_fn(|r| coef[r * 8 + col]));
        for r in 0..8 {
            ws[r * 8 + col] = descale(o[r], CB - P1);
        }
    }
    for row in 0..8 {
        let o = butterfly(std::array::from_fn(|c| ws[row * 8 + c]));
        for c in 0..8 {
            let v = descale(o[c], CB + P1 + 3).wrapping_add(128);
            out[row * stride + c] = v.clamp(0, 255) as u8;
        }
    }
}

/// The IDCT of a block with only a DC coefficient: the constant both passes give.
pub(super) fn idct_dc(dc: i32, out: &mut [u8], stride: usize) {
    let v = ((((dc << 2) + 16) >> 5) + 128).clamp(0, 255) as u8;
    for r in 0..8 {
        out[r * stride..r * stride + 8].fill(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dc_only_shortcut_equals_the_full_idct() {
        for dc in [-32768, -1024, -17, -1, 0, 1, 7, 8, 9, 500, 1023, 32767] {
            let mut coef = [0i32; 64];
            coef[0] = dc;
            let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
            idct_islow(&coef, &mut a, 8);
            idct_dc(dc, &mut b, 8);
            assert_eq!(a, b, "dc {dc}");
        }
    }
}
