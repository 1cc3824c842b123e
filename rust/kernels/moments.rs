//! Second-moment statistics of all image patches: count, sum and `sum p p^T`.
//!
//! Two kernels give the same answer:
//!
//! * **direct**: gathers every patch and accumulates its outer product (`~p^2/2` multiply-adds
//!   per patch, `p = C k^2`);
//! * **shifted products**: entry `M[(c,a),(c',b)]` is the sum of `x_c[q] x_c'[q + d]`, `d = b - a`,
//!   over the window positions shifted by `a`. For one channel pair and one shift `d` the products
//!   of a whole image are formed once (row by row, vectorised), summed down the columns, and the
//!   `k^2` window sums are read off with sliding sums. That is `~C^2 (2k-1)^2 / 2` multiply-adds
//!   per pixel instead of `~(C k^2)^2 / 2`.
//!
//! `u8` images accumulate in integers (`u16` pixels, `u32` column sums, `u64` totals), so the
//! result is exact and independent of the order of work. Float images accumulate in `f64`.

use std::ops::Range;

use crate::error::{CoreError, CoreResult};
use crate::kernels::image::{to_planar, Batch, Planes, Window};
use crate::kernels::simd;
use crate::parallel::{chunked_reduce, exact_chunk_items, CHUNK_ITEMS};

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
    avx2: crate::kernels::moments_avx2::Scratch,
}

/// Exact integer arithmetic for `u8` pixels.
pub struct Exact;

impl Accum for Exact {
    type Plane = u16;
    type Col = u32;
    type Total = u64;
    // 65535 * 255^2 < 2^32.
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
    /// AVX2 intrinsics at stride 1 (`moments_avx2`), for padded images of at most `MAX_ROWS`
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
            use crate::kernels::moments_avx2::{second_moments, Shape};
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
                crate::kernels::moments_avx2::flush(&mut sc.avx2, second);
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Direct,
    /// Shifted products, with the specialised kernel where one applies.
    Shifted,
    /// Shifted products, portable code only (to test the specialised kernels against).
    Portable,
    /// Shifted products, one image at a time: never the images-in-lanes kernel (to test the
    /// strip kernel on shapes where the lanes kernel would be chosen).
    Strips,
}

impl Method {
    /// The faster kernel for a window, from measurements (`benches/bench_patch_stats.py`): the
    /// shifted products win as soon as there is more than one offset per channel.
    pub fn auto(k: usize) -> Self {
        if k == 1 {
            Self::Direct
        } else {
            Self::Shifted
        }
    }
}

/// Raw moments of patches of dimension `p`, optionally per class.
#[derive(Clone, Debug, PartialEq)]
pub struct Moments<T> {
    pub p: usize,
    pub count: u64,
    pub sum: Vec<T>,
    /// `p x p`, row-major, symmetric.
    pub second: Vec<T>,
    pub class_count: Vec<u64>,
    /// `n_classes x p`, row-major.
    pub class_sum: Vec<T>,
}

impl<T: Copy + Default> Moments<T> {
    pub fn zeros(p: usize, n_classes: usize) -> Self {
        Self {
            p,
            count: 0,
            sum: vec![T::default(); p],
            second: vec![T::default(); p * p],
            class_count: vec![0; n_classes],
            class_sum: vec![T::default(); n_classes * p],
        }
    }
}

fn add_into<A: Accum>(dst: &mut [A::Total], src: &[A::Total]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = A::add(*d, s);
    }
}

impl<T: Copy + Default> Moments<T> {
    fn merge<A: Accum<Total = T>>(&mut self, other: &Self) {
        self.count += other.count;
        add_into::<A>(&mut self.sum, &other.sum);
        add_into::<A>(&mut self.second, &other.second);
        for (d, &s) in self.class_count.iter_mut().zip(&other.class_count) {
            *d += s;
        }
        add_into::<A>(&mut self.class_sum, &other.class_sum);
    }
}

/// Window geometry of one (padded) image.
#[derive(Clone, Copy)]
struct Geo {
    k: usize,
    s: usize,
    ho: usize,
    wo: usize,
    /// Columns of every product row: the padded width rounded up to whole vectors.
    wc: usize,
}

/// Lanes the product rows are rounded up to (16 `u16` = one AVX2 register).
const LANES: usize = 16;

/// Reusable buffers of one worker.
struct Scratch<A: Accum> {
    planes: Vec<A::Plane>,
    /// `planes` interleaved with itself `stride` rows further down: element `2q + e` is
    /// `planes[q + e * stride * row_len]`, so one pass over a "pair row" sums two window rows.
    pairs: Vec<A::Plane>,
    col: Vec<A::Col>,
    table: Vec<A::Total>,
    patch: Vec<A::Plane>,
    upper: Vec<A::Col>,
    fast: FastScratch,
}

impl<A: Accum> Scratch<A> {
    fn new() -> Self {
        Self {
            planes: Vec::new(),
            pairs: Vec::new(),
            col: Vec::new(),
            table: Vec::new(),
            patch: Vec::new(),
            upper: Vec::new(),
            fast: FastScratch::default(),
        }
    }
}

/// Horizontal window sums of one column-sum vector: `out[aj] += sum_n col[s n + aj]` for every
/// `aj` in `aj_range`, by sliding sums along each residue class of `aj` modulo the stride.
#[inline(always)]
fn hsums<A: Accum>(col: &[A::Col], g: Geo, aj_range: &Range<usize>, out: &mut [A::Total]) {
    for sigma in 0..g.s.min(g.k) {
        let q_lo = aj_range.start.saturating_sub(sigma).div_ceil(g.s);
        let q_hi = aj_range.end.saturating_sub(sigma).div_ceil(g.s);
        if q_lo >= q_hi {
            continue;
        }
        let first = sigma + g.s * q_lo;
        let mut acc = A::Total::default();
        if g.s == 1 {
            // Contiguous: a plain loop the compiler vectorises.
            for &v in &col[first..first + g.wo] {
                acc = A::add(acc, A::widen(v));
            }
        } else {
            for &v in col[first..].iter().step_by(g.s).take(g.wo) {
                acc = A::add(acc, A::widen(v));
            }
        }
        out[first] = A::add(out[first], acc);
        for q in q_lo + 1..q_hi {
            let aj = sigma + g.s * q;
            acc = A::sub(acc, A::widen(col[aj - g.s]));
            acc = A::add(acc, A::widen(col[aj - g.s + g.s * g.wo]));
            out[aj] = A::add(out[aj], acc);
        }
    }
}

/// `sc.table[ai * k + aj] = sum_{m < ho, n < wo} R_{s m + ai}[s n + aj]` for `ai` in `ai_range`
/// and `aj` in `aj_range`, where `fill(r, col, subtract)` adds (or subtracts) row vector `R_r`
/// into `col` and `fill2(r, col)` adds `R_r + R_{r+s}`.
///
/// The offsets `ai` of one residue class modulo the stride use overlapping runs of rows: the
/// column sums slide from one `ai` to the next by removing one row and adding one, so each row
/// product is formed about once per class.
#[inline(always)]
fn window_table<A: Accum>(
    g: Geo,
    ai_range: Range<usize>,
    aj_range: Range<usize>,
    fill: impl Fn(usize, &mut [A::Col], bool),
    fill2: impl Fn(usize, &mut [A::Col]),
    sc: &mut Scratch<A>,
) {
    let k = g.k;
    sc.table.clear();
    sc.table.resize(k * k, A::Total::default());
    sc.col.resize(g.wc, A::Col::default());
    let col = &mut sc.col;
    for rho in 0..g.s.min(k) {
        // The ai of this residue class are rho + s t for t in [t_lo, t_hi); their rows are
        // rho + s u for u in [t, t + ho).
        let t_lo = ai_range.start.saturating_sub(rho).div_ceil(g.s);
        let t_hi = ai_range.end.saturating_sub(rho).div_ceil(g.s);
        if t_lo >= t_hi {
            continue;
        }
        let row = |u: usize| rho + g.s * u;
        if g.ho <= A::MAX_ROWS {
            col.iter_mut().for_each(|c| *c = A::Col::default());
            let mut u = t_lo;
            while u + 1 < t_lo + g.ho {
                fill2(row(u), col);
                u += 2;
            }
            if u < t_lo + g.ho {
                fill(row(u), col, false);
            }
            for t in t_lo..t_hi {
                if t > t_lo {
                    fill(row(t - 1), col, true);
                    fill(row(t - 1 + g.ho), col, false);
                }
                let ai = rho + g.s * t;
                hsums::<A>(col, g, &aj_range, &mut sc.table[ai * k..(ai + 1) * k]);
            }
        } else {
            // Column sums of more than MAX_ROWS rows would overflow: sum blocks of rows.
            for t in t_lo..t_hi {
                let ai = rho + g.s * t;
                let mut start = t;
                while start < t + g.ho {
                    let end = (start + A::MAX_ROWS).min(t + g.ho);
                    col.iter_mut().for_each(|c| *c = A::Col::default());
                    for u in start..end {
                        fill(row(u), col, false);
                    }
                    hsums::<A>(col, g, &aj_range, &mut sc.table[ai * k..(ai + 1) * k]);
                    start = end;
                }
            }
        }
    }
}

/// Index range of offsets `a` in `[0, k)` with `a + d` also in `[0, k)`.
fn offset_range(k: usize, d: isize) -> Range<usize> {
    let lo = (-d).max(0) as usize;
    let hi = (k as isize - d).min(k as isize).max(0) as usize;
    lo..hi
}

/// Adds the moments of the planar image in `sc.planes` with the shifted-products kernel.
#[inline(always)]
fn image_shifted<A: Accum>(
    c: usize,
    pl: Planes,
    g: Geo,
    sc: &mut Scratch<A>,
    second: &mut [A::Total],
    img_sum: &mut [A::Total],
    fast: bool,
) {
    let k = g.k;
    let kk = k * k;
    let p = c * kk;
    let wc = g.wc;
    let planes = std::mem::take(&mut sc.planes);
    let mut pairs = std::mem::take(&mut sc.pairs);
    let down = g.s * pl.row_len;
    pairs.clear();
    pairs.resize(2 * planes.len(), A::Plane::default());
    let below = planes.get(down..).unwrap_or_default();
    for ((pair, &v), &u) in pairs.chunks_exact_mut(2).zip(&planes).zip(below) {
        pair[0] = v;
        pair[1] = u;
    }
    for (pair, &v) in pairs.chunks_exact_mut(2).zip(&planes).skip(below.len()) {
        pair[0] = v; // the last rows have no row below: their partner stays zero
    }
    // Row r of channel ch, shifted right by dj, over the fixed width wc (margins are zeros).
    let row_at = |ch: usize, r: usize, dj: isize| {
        let start = (pl.offset(ch, r, 0) as isize + dj) as usize;
        &planes[start..start + wc]
    };
    // The same, for the pair of rows r and r + s.
    let pair_at = |ch: usize, r: usize, dj: isize| {
        let start = 2 * (pl.offset(ch, r, 0) as isize + dj) as usize;
        &pairs[start..start + 2 * wc]
    };
    // First moments.
    for ch in 0..c {
        window_table::<A>(
            g,
            0..k,
            0..k,
            |r, col, subtract| add_row::<A>(col, row_at(ch, r, 0), subtract),
            |r, col| {
                add_row::<A>(col, row_at(ch, r, 0), false);
                add_row::<A>(col, row_at(ch, r + g.s, 0), false);
            },
            sc,
        );
        img_sum[ch * kk..(ch + 1) * kk].copy_from_slice(&sc.table);
    }
    let geo = (k, g.s, g.ho, g.wo, wc);
    if fast && A::fast_second(c, pl, geo, &planes, &pairs, &mut sc.fast, second) {
        sc.planes = planes;
        sc.pairs = pairs;
        return;
    }
    // Second moments: one product image per channel pair and shift.
    let kd = k as isize - 1;
    for c1 in 0..c {
        for c2 in c1..c {
            for di in -kd..=kd {
                for dj in -kd..=kd {
                    if c1 == c2 && (di < 0 || (di == 0 && dj < 0)) {
                        continue; // the mirror entry is filled by symmetry
                    }
                    let (ai_range, aj_range) = (offset_range(k, di), offset_range(k, dj));
                    window_table::<A>(
                        g,
                        ai_range.clone(),
                        aj_range.clone(),
                        |r, col, subtract| {
                            let a = row_at(c1, r, 0);
                            let b = row_at(c2, (r as isize + di) as usize, dj);
                            // Columns where either factor lies in a margin give 0: no bounds
                            // logic needed, and the loop runs over whole vectors.
                            if subtract {
                                for ((o, &u), &v) in col.iter_mut().zip(a).zip(b) {
                                    *o = A::mul_sub(*o, u, v);
                                }
                            } else {
                                for ((o, &u), &v) in col.iter_mut().zip(a).zip(b) {
                                    *o = A::mul_add(*o, u, v);
                                }
                            }
                        },
                        |r, col| {
                            let a = pair_at(c1, r, 0);
                            let b = pair_at(c2, (r as isize + di) as usize, dj);
                            for ((o, u), v) in
                                col.iter_mut().zip(a.chunks_exact(2)).zip(b.chunks_exact(2))
                            {
                                *o = A::mul_add2(*o, [u[0], u[1]], [v[0], v[1]]);
                            }
                        },
                        sc,
                    );
                    for ai in ai_range.clone() {
                        let bi = (ai as isize + di) as usize;
                        for aj in aj_range.clone() {
                            let bj = (aj as isize + dj) as usize;
                            let r1 = c1 * kk + ai * k + aj;
                            let r2 = c2 * kk + bi * k + bj;
                            let v = sc.table[ai * k + aj];
                            second[r1 * p + r2] = A::add(second[r1 * p + r2], v);
                            if r1 != r2 {
                                second[r2 * p + r1] = A::add(second[r2 * p + r1], v);
                            }
                        }
                    }
                }
            }
        }
    }
    sc.planes = planes;
    sc.pairs = pairs;
}

#[inline(always)]
fn add_row<A: Accum>(col: &mut [A::Col], x: &[A::Plane], subtract: bool) {
    if subtract {
        col.iter_mut()
            .zip(x)
            .for_each(|(o, &v)| *o = A::plane_sub(*o, v));
    } else {
        col.iter_mut()
            .zip(x)
            .for_each(|(o, &v)| *o = A::plane_add(*o, v));
    }
}

/// Adds the moments of the planar image in `sc.planes` by gathering every patch.
#[inline(always)]
fn image_direct<A: Accum>(
    c: usize,
    pl: Planes,
    g: Geo,
    sc: &mut Scratch<A>,
    second: &mut [A::Total],
    img_sum: &mut [A::Total],
) {
    let (k, s) = (g.k, g.s);
    let p = c * k * k;
    sc.patch.resize(p, A::Plane::default());
    let mut upper = std::mem::take(&mut sc.upper);
    let mut sums = vec![A::Col::default(); p];
    upper.clear();
    upper.resize(p * p, A::Col::default());
    let flush = |upper: &mut [A::Col],
                 sums: &mut [A::Col],
                 second: &mut [A::Total],
                 img_sum: &mut [A::Total]| {
        for r in 0..p {
            for q in r..p {
                let v = A::widen(upper[r * p + q]);
                second[r * p + q] = A::add(second[r * p + q], v);
                if q != r {
                    second[q * p + r] = A::add(second[q * p + r], v);
                }
                upper[r * p + q] = A::Col::default();
            }
            img_sum[r] = A::add(img_sum[r], A::widen(sums[r]));
            sums[r] = A::Col::default();
        }
    };
    let mut pending = 0;
    for m in 0..g.ho {
        for n in 0..g.wo {
            let mut idx = 0;
            for ch in 0..c {
                for i in 0..k {
                    let start = pl.offset(ch, s * m + i, s * n);
                    sc.patch[idx..idx + k].copy_from_slice(&sc.planes[start..start + k]);
                    idx += k;
                }
            }
            for r in 0..p {
                let xr = sc.patch[r];
                sums[r] = A::plane_add(sums[r], xr);
                for (o, &xq) in upper[r * p + r..(r + 1) * p].iter_mut().zip(&sc.patch[r..]) {
                    *o = A::mul_add(*o, xr, xq);
                }
            }
            pending += 1;
            if pending == A::MAX_ROWS {
                flush(&mut upper, &mut sums, second, img_sum);
                pending = 0;
            }
        }
    }
    flush(&mut upper, &mut sums, second, img_sum);
    sc.upper = upper;
}

/// Everything a chunk of images needs, shared by all chunks.
struct Job<'a, T> {
    x: &'a [T],
    batch: Batch,
    win: Window,
    planes: Planes,
    g: Geo,
    labels: Option<&'a [i64]>,
    n_classes: usize,
    method: Method,
    /// Per-channel value subtracted from every pixel (empty: none).
    shift: &'a [f64],
}

type Tot<T> = <<T as Pixel>::Acc as Accum>::Total;

/// Moments of the images `range` of a job. Inlined into both the baseline and the AVX2 entry
/// points, so that each gets its own vectorised copy of every kernel loop.
#[inline(always)]
fn chunk<T: Pixel>(job: &Job<'_, T>, range: Range<usize>) -> CoreResult<Moments<Tot<T>>> {
    #[cfg(target_arch = "x86_64")]
    if let Some(m) = chunk_lanes(job, range.clone()) {
        return Ok(m);
    }
    let p = job.batch.c * job.win.k * job.win.k;
    let per_image = (job.g.ho * job.g.wo) as u64;
    let mut part = Moments::<Tot<T>>::zeros(p, job.n_classes);
    let mut sc = Scratch::<T::Acc>::new();
    let mut img_sum = vec![Tot::<T>::default(); p];
    for idx in range {
        to_planar(
            job.x,
            &job.batch,
            idx,
            job.win.pad,
            job.planes,
            &mut sc.planes,
            |ch, v| v.plane(job.shift.get(ch).copied().unwrap_or(0.0)),
            |ch| T::zero_plane(job.shift.get(ch).copied().unwrap_or(0.0)),
        )?;
        img_sum.iter_mut().for_each(|v| *v = Tot::<T>::default());
        let (c, pl, g) = (job.batch.c, job.planes, job.g);
        match job.method {
            Method::Shifted | Method::Strips | Method::Portable => {
                let fast = job.method != Method::Portable;
                image_shifted::<T::Acc>(c, pl, g, &mut sc, &mut part.second, &mut img_sum, fast)
            }
            Method::Direct => {
                image_direct::<T::Acc>(c, pl, g, &mut sc, &mut part.second, &mut img_sum)
            }
        }
        add_into::<T::Acc>(&mut part.sum, &img_sum);
        part.count += per_image;
        if let Some(l) = job.labels {
            let cls = l[idx] as usize;
            part.class_count[cls] += per_image;
            add_into::<T::Acc>(&mut part.class_sum[cls * p..(cls + 1) * p], &img_sum);
        }
    }
    T::Acc::fast_flush(&mut sc.fast, &mut part.second);
    Ok(part)
}

/// The moments of a chunk of `u8` images by the images-in-lanes kernel (`moments_lanes`), where
/// it applies: stride 1 and padded images of at most `MAX_PIXELS` (128 x 128). Against the strip
/// kernel (`moments_avx2`) on 32 to 128 pixel images at k = 3 to 11 it is faster everywhere
/// (`examples/moments_kernels.rs`: 2.7-5.8x at 32 x 32, 1.1-1.9x at 128 x 128).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn chunk_lanes<T: Pixel>(job: &Job<'_, T>, range: Range<usize>) -> Option<Moments<Tot<T>>> {
    use crate::kernels::moments_lanes as lanes;
    let x = T::bytes(job.x)?;
    let (k, pl) = (job.win.k, job.planes);
    let shape = lanes::Shape {
        c: job.batch.c,
        k,
        hp: pl.hp,
        wp: pl.wp,
    };
    if job.method != Method::Shifted
        || job.win.stride != 1
        || !lanes::fits(shape)
        || !simd::has_avx2()
    {
        return None;
    }
    let (b, pad, labels, n_classes) = (job.batch, job.win.pad, job.labels, job.n_classes);
    // SAFETY: AVX2 is present and the shape fits: the conditions of `moments`.
    let m = unsafe { lanes::moments(x, b, shape, pad, range, labels, n_classes) };
    Some(T::Acc::from_exact(m))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn chunk_avx2<T: Pixel>(job: &Job<'_, T>, range: Range<usize>) -> CoreResult<Moments<Tot<T>>> {
    chunk(job, range)
}

/// Moments of the patches of every image in a C-contiguous batch `x`.
///
/// `labels` (one per image, in `[0, n_classes)`) adds per-class patch counts and sums. `shift`
/// (one value per channel, or empty) is subtracted from every pixel first, padding included: float
/// moments about a point near the mean keep the covariance accurate for large means.
pub fn patch_moments<T: Pixel>(
    x: &[T],
    batch: Batch,
    win: Window,
    labels: Option<&[i64]>,
    n_classes: usize,
    method: Method,
    shift: &[f64],
) -> CoreResult<Moments<<T::Acc as Accum>::Total>> {
    batch.check(x.len())?;
    if !shift.is_empty() {
        if !T::SHIFTABLE {
            return Err(CoreError::value(
                "shift",
                "integer images accumulate exactly and take no shift".to_string(),
            ));
        }
        if shift.len() != batch.c || shift.iter().any(|v| !v.is_finite()) {
            return Err(CoreError::value(
                "shift",
                format!(
                    "expected {} finite values (one per channel), got {shift:?}",
                    batch.c
                ),
            ));
        }
    }
    let (hp, wp, ho, wo) = win.geometry(batch.h, batch.w)?;
    let p = batch.c * win.k * win.k;
    if let Some(l) = labels {
        if l.len() != batch.n {
            return Err(CoreError::shape(
                "labels",
                format!("({},) (one label per image)", batch.n),
                format!("({},)", l.len()),
            ));
        }
        if let Some((i, &bad)) = l
            .iter()
            .enumerate()
            .find(|(_, &v)| v < 0 || v as usize >= n_classes)
        {
            return Err(CoreError::value(
                "labels",
                format!("expected integers in [0, n_classes={n_classes}), got {bad} at index {i}"),
            ));
        }
    }
    let n_classes = if labels.is_some() { n_classes } else { 0 };
    let wc = wp.div_ceil(LANES) * LANES;
    let g = Geo {
        k: win.k,
        s: win.stride,
        ho,
        wo,
        wc,
    };
    let planes = Planes::new(hp, wp, win.k - 1, wc);
    let partial_bytes = (p * p + p * (n_classes + 1)) * std::mem::size_of::<Tot<T>>();
    // Float sums depend on the chunking: keep it fixed. Integer sums do not: bigger chunks
    // amortise the per-chunk partial and the specialised kernels' once-per-chunk step.
    let chunk_items = if T::Acc::EXACT {
        exact_chunk_items(batch.n)
    } else {
        CHUNK_ITEMS
    };
    chunked_reduce(
        batch.n,
        chunk_items,
        partial_bytes,
        Moments::<Tot<T>>::zeros(p, n_classes),
        |range| {
            let job = Job {
                x,
                batch,
                win,
                planes,
                g,
                labels,
                n_classes,
                method,
                shift,
            };
            if simd::has_avx2() {
                // SAFETY: `chunk_avx2` only requires AVX2, which the CPU has (checked above).
                #[cfg(target_arch = "x86_64")]
                return unsafe { chunk_avx2(&job, range) };
            }
            chunk(&job, range)
        },
        |total, part| total.merge::<T::Acc>(&part),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::image::Layout;

    /// A deterministic pseudo-random generator for test data (xorshift).
    fn data(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    /// Reference: gather each patch explicitly and accumulate in u64.
    fn naive(x: &[u8], b: Batch, win: Window) -> (u64, Vec<u64>, Vec<u64>) {
        let (hp, wp, ho, wo) = win.geometry(b.h, b.w).unwrap();
        let k = win.k;
        let p = b.c * k * k;
        let mut sum = vec![0u64; p];
        let mut m = vec![0u64; p * p];
        let mut count = 0;
        let px = |img: usize, c: usize, i: usize, j: usize| -> u64 {
            // padded coordinates -> value (0 in the border)
            if i < win.pad || j < win.pad || i >= hp - win.pad || j >= wp - win.pad {
                return 0;
            }
            let (i, j) = (i - win.pad, j - win.pad);
            let off = match b.layout {
                Layout::Nchw => ((img * b.c + c) * b.h + i) * b.w + j,
                Layout::Nhwc => ((img * b.h + i) * b.w + j) * b.c + c,
            };
            u64::from(x[off])
        };
        for img in 0..b.n {
            for mi in 0..ho {
                for ni in 0..wo {
                    let mut patch = Vec::with_capacity(p);
                    for c in 0..b.c {
                        for i in 0..k {
                            for j in 0..k {
                                patch.push(px(img, c, win.stride * mi + i, win.stride * ni + j));
                            }
                        }
                    }
                    count += 1;
                    for r in 0..p {
                        sum[r] += patch[r];
                        for q in 0..p {
                            m[r * p + q] += patch[r] * patch[q];
                        }
                    }
                }
            }
        }
        (count, sum, m)
    }

    #[test]
    fn both_kernels_match_the_naive_reference() {
        let cases = [
            (2, 3, 9, 11, 3, 1, 0, Layout::Nchw),
            (1, 1, 7, 7, 7, 1, 0, Layout::Nchw),
            (3, 2, 10, 8, 4, 2, 1, Layout::Nhwc),
            (2, 3, 12, 13, 5, 3, 2, Layout::Nchw),
            (1, 2, 5, 6, 1, 1, 0, Layout::Nhwc),
            (2, 1, 6, 20, 3, 4, 0, Layout::Nchw),
            (1, 1, 4, 4, 3, 1, 2, Layout::Nchw), // window rows < kernel rows
            // Stride 1 at several strips, narrow and wide images, every kernel parity.
            (2, 3, 40, 37, 7, 1, 0, Layout::Nchw),
            (1, 2, 9, 30, 11, 1, 3, Layout::Nhwc),
            (1, 1, 16, 17, 15, 1, 0, Layout::Nchw),
            (2, 2, 5, 41, 2, 1, 0, Layout::Nchw),
            (1, 1, 21, 3, 3, 1, 0, Layout::Nchw), // one window column: edges overlap
            (1, 3, 3, 3, 3, 1, 1, Layout::Nhwc),
            (1, 4, 12, 25, 8, 1, 0, Layout::Nchw),
            (1, 1, 33, 9, 9, 1, 4, Layout::Nchw),
            // Several blocks of images (the small-image kernel takes 32), the last one partial.
            (45, 3, 12, 10, 5, 1, 1, Layout::Nhwc),
            (40, 1, 9, 9, 3, 1, 0, Layout::Nchw),
            (33, 2, 6, 7, 2, 1, 0, Layout::Nchw),
        ];
        for (i, &(n, c, h, w, k, stride, pad, layout)) in cases.iter().enumerate() {
            let b = Batch { n, c, h, w, layout };
            let win = Window { k, stride, pad };
            let x = data(n * c * h * w, 7 + i as u64);
            let (count, sum, m) = naive(&x, b, win);
            for method in [
                Method::Direct,
                Method::Shifted,
                Method::Strips,
                Method::Portable,
            ] {
                let got = patch_moments(&x, b, win, None, 0, method, &[]).unwrap();
                assert_eq!(got.count, count, "case {i} {method:?}");
                assert_eq!(got.sum, sum, "case {i} {method:?}");
                assert_eq!(got.second, m, "case {i} {method:?}");
            }
        }
    }

    #[test]
    fn lanes_kernel_matches_the_portable_code() {
        // Shapes the images-in-lanes kernel takes (stride 1, small images):
        // bands of rows of every length, every group size of column shifts, partial blocks,
        // padding, tall and wide images, the smallest width it accepts (2 k - 2).
        let cases = [
            (17, 3, 32, 32, 7, 0, Layout::Nhwc),
            (20, 3, 32, 32, 11, 0, Layout::Nchw),
            (33, 1, 12, 10, 3, 0, Layout::Nchw),
            (18, 2, 20, 26, 9, 2, Layout::Nhwc),
            (16, 4, 30, 28, 15, 0, Layout::Nchw),
            (5, 3, 40, 14, 5, 1, Layout::Nhwc),
            (3, 1, 9, 4, 2, 0, Layout::Nchw),
            (40, 2, 16, 12, 7, 0, Layout::Nchw),
            (70, 3, 13, 13, 4, 0, Layout::Nhwc),
        ];
        for (i, &(n, c, h, w, k, pad, layout)) in cases.iter().enumerate() {
            let b = Batch { n, c, h, w, layout };
            let win = Window { k, stride: 1, pad };
            let x = data(n * c * h * w, 31 + i as u64);
            let labels: Vec<i64> = (0..n as i64).map(|j| (j * 7 + i as i64) % 3).collect();
            let l = Some(&labels[..]);
            let want = patch_moments(&x, b, win, l, 3, Method::Portable, &[]).unwrap();
            for method in [Method::Shifted, Method::Strips] {
                let got = patch_moments(&x, b, win, l, 3, method, &[]).unwrap();
                assert_eq!(got, want, "case {i} {method:?}");
            }
        }
    }

    #[test]
    fn float_path_agrees_with_integers() {
        let b = Batch {
            n: 3,
            c: 2,
            h: 8,
            w: 9,
            layout: Layout::Nchw,
        };
        let win = Window {
            k: 3,
            stride: 1,
            pad: 1,
        };
        let x = data(b.n * b.image_len(), 3);
        let xf: Vec<f32> = x.iter().map(|&v| f32::from(v)).collect();
        let exact = patch_moments(&x, b, win, None, 0, Method::Shifted, &[]).unwrap();
        for method in [Method::Direct, Method::Shifted] {
            let got = patch_moments(&xf, b, win, None, 0, method, &[]).unwrap();
            // Integers below 2^53 are represented exactly, so the float sums are exact too.
            let want: Vec<f64> = exact.second.iter().map(|&v| v as f64).collect();
            assert_eq!(got.second, want);
        }
    }

    #[test]
    fn labels_split_sums_by_class() {
        let b = Batch {
            n: 4,
            c: 1,
            h: 5,
            w: 5,
            layout: Layout::Nchw,
        };
        let win = Window {
            k: 2,
            stride: 1,
            pad: 0,
        };
        let x = data(b.n * b.image_len(), 11);
        let got = patch_moments(&x, b, win, Some(&[1, 0, 1, 1]), 2, Method::Shifted, &[]).unwrap();
        assert_eq!(got.class_count, vec![16, 48]);
        let total: Vec<u64> = (0..4)
            .map(|i| got.class_sum[i] + got.class_sum[4 + i])
            .collect();
        assert_eq!(total, got.sum);
        assert!(patch_moments(&x, b, win, Some(&[1, 0, 2, 1]), 2, Method::Shifted, &[]).is_err());
        assert!(patch_moments(&x, b, win, Some(&[1, 0]), 2, Method::Shifted, &[]).is_err());
    }

    #[test]
    fn non_finite_floats_are_rejected() {
        let b = Batch {
            n: 1,
            c: 1,
            h: 3,
            w: 3,
            layout: Layout::Nchw,
        };
        let mut x = vec![0.5f64; 9];
        x[4] = f64::NAN;
        let err = patch_moments(
            &x,
            b,
            Window {
                k: 2,
                stride: 1,
                pad: 0,
            },
            None,
            0,
            Method::Shifted,
            &[],
        );
        assert!(err.unwrap_err().to_string().contains("NaN"));
    }

    #[test]
    fn all_255_totals_are_exact() {
        // Worst case per pixel: every product is 255^2.
        let b = Batch {
            n: 20,
            c: 3,
            h: 16,
            w: 16,
            layout: Layout::Nchw,
        };
        let x = vec![255u8; b.n * b.image_len()];
        let got = patch_moments(
            &x,
            b,
            Window {
                k: 3,
                stride: 1,
                pad: 0,
            },
            None,
            0,
            Method::Shifted,
            &[],
        )
        .unwrap();
        let count = 20 * 14 * 14;
        assert_eq!(got.count, count);
        assert!(got.second.iter().all(|&v| v == count * 65025));
    }

    #[test]
    fn shifted_float_moments_are_the_moments_of_shifted_pixels_padding_included() {
        // Moments about a shift s, mapped back (sum + n s, M + s sum^T + sum s^T + n s s^T),
        // are the raw moments; zero padding is shifted like every other pixel.
        let b = Batch {
            n: 3,
            c: 2,
            h: 6,
            w: 5,
            layout: Layout::Nhwc,
        };
        let x: Vec<f64> = data(b.n * b.image_len(), 11)
            .iter()
            .map(|&v| f64::from(v) / 7.0)
            .collect();
        let shift = [3.25, -1.5];
        for method in [Method::Direct, Method::Shifted] {
            let win = Window {
                k: 3,
                stride: 2,
                pad: 1,
            };
            let raw = patch_moments(&x, b, win, None, 0, method, &[]).unwrap();
            let got = patch_moments(&x, b, win, None, 0, method, &shift).unwrap();
            assert_eq!(raw.count, got.count);
            let n = got.count as f64;
            let p = raw.p;
            let s: Vec<f64> = (0..p).map(|r| shift[r / 9]).collect();
            for r in 0..p {
                let sum = got.sum[r] + n * s[r];
                assert!((sum - raw.sum[r]).abs() <= 1e-9 * raw.sum[r].abs().max(1.0));
                for q in 0..p {
                    let m = got.second[r * p + q]
                        + s[r] * got.sum[q]
                        + got.sum[r] * s[q]
                        + n * s[r] * s[q];
                    let want = raw.second[r * p + q];
                    assert!((m - want).abs() <= 1e-9 * want.abs().max(1.0), "{r} {q}");
                }
            }
        }
        let bytes = vec![0u8; b.n * b.image_len()];
        let win = Window {
            k: 3,
            stride: 1,
            pad: 0,
        };
        assert!(patch_moments(&bytes, b, win, None, 0, Method::Shifted, &shift).is_err());
        assert!(patch_moments(&x, b, win, None, 0, Method::Shifted, &[1.0]).is_err());
    }
}
