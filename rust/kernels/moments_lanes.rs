//! The shifted-products kernel for small `u8` images at stride 1, with the images in the lanes.
//!
//! Same sums as the portable kernel in `moments.rs` (integers, so the same bits), arranged for
//! kernels that are large next to the image (CIFAR's 32x32 at `k >= 7`), where the strip kernel
//! (`moments_avx2`) spends most of its time on the image's edges: here 16 images go through the
//! algorithm together, so there are no edges to treat apart. Lane `m` of every
//! register holds pixel `(y, x)` of image `m` (as `i16`), so one `vpmaddwd` forms the product
//! of one pixel pair in 16 images (lane `l` sums images `2l` and `2l + 1`, all of which are added
//! up in the end anyway), and every index computation, cut and snapshot is shared by 16 images.
//!
//! For channels `(c1, c2)` and shift `(di, dj)`, entry `M[(c1, a, b), (c2, a + di, b + dj)]` is
//! the sum of `Q(y, x) = X1[y][x] X2[y + di][x + dj]` over the box `[a, a + ho) x [b, b + wo)`.
//! Along each row, the running sum of `Q` is added at every column cut (`b` and `b + wo`) into
//! `v`, which therefore holds, per cut, the sum down the rows of the row prefix sums. `v` is saved
//! at row `a` and, at row `a + ho`, each box is read off the four corners:
//! `(v[b + wo] - v[b]) - (saved[b + wo] - saved[b])`. The box sums of a block of images are added
//! into `u32` accumulators, widened into the `u64` totals before they could overflow.
//!
//! `u32` lanes: a lane adds products of two images, so any sum over one image pair is at most
//! `hp * wp * 2 * 255^2`, which [`MAX_PIXELS`] keeps below `2^32`.

use std::arch::x86_64::*;
use std::ops::Range;

use crate::kernels::image::Planes;
use crate::kernels::moments_avx2::{blocks, offset_range};

/// Images per block: 16 `i16` lanes of a 256-bit register.
pub const IMAGES: usize = 16;

/// The largest padded image (`hp * wp` pixels) whose sums fit a `u32` lane.
pub const MAX_PIXELS: usize = (u32::MAX / (2 * 255 * 255)) as usize;

/// Geometry of one call: channels, kernel size, padded height and width (stride 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub c: usize,
    pub k: usize,
    pub hp: usize,
    pub wp: usize,
}

impl Shape {
    fn ho(&self) -> usize {
        self.hp - self.k + 1
    }
    fn wo(&self) -> usize {
        self.wp - self.k + 1
    }
}

/// What depends on the shape only: the column cuts of every `dj` and the entry of each box.
#[derive(Default)]
struct Plan {
    /// Per column shift `t = dj + k - 1`: its box columns `b` and the range of its cuts in
    /// `cut_col` (and in `v`).
    shifts: Vec<(Range<usize>, Range<usize>)>,
    /// Column of each cut (ascending within a shift).
    cut_col: Vec<usize>,
    /// Per column shift and box column `b` (in order): the cuts at `b` and at `b + wo`.
    box_cuts: Vec<Vec<(usize, usize)>>,
    /// Per block `(c1, c2, di)`, row offset `a` (from the first) and shift `t`: where its boxes
    /// start in `entries`.
    box_base: Vec<usize>,
    /// `(r, q)` of every box.
    entries: Vec<(u32, u32)>,
    /// Blocks the `u32` accumulators take before they are widened.
    max_pending: usize,
}

impl Plan {
    fn new(s: Shape) -> Self {
        let (k, wo) = (s.k, s.wo());
        let nd = 2 * k - 1;
        let mut plan = Plan::default();
        for t in 0..nd {
            let dj = t as isize - (k as isize - 1);
            let b = offset_range(k, dj);
            let mut cols: Vec<usize> = b.clone().chain(b.start + wo..b.end + wo).collect();
            cols.sort_unstable();
            cols.dedup();
            let base = plan.cut_col.len();
            let at = |col: usize| base + cols.binary_search(&col).unwrap_or(0);
            let boxes = b.clone().map(|b1| (at(b1), at(b1 + wo))).collect();
            plan.box_cuts.push(boxes);
            plan.shifts.push((b, base..base + cols.len()));
            plan.cut_col.extend(cols);
        }
        let kk = k * k;
        for (c1, c2, di) in blocks(s.c, k) {
            for a in 0..k {
                for t in 0..nd {
                    plan.box_base.push(plan.entries.len());
                    let dj = t as isize - (k as isize - 1);
                    let a2 = a as isize + di;
                    if !(0..k as isize).contains(&a2) || !in_dj_range(c1, c2, di, dj) {
                        continue;
                    }
                    for b in offset_range(k, dj) {
                        let r = c1 * kk + a * k + b;
                        let q = c2 * kk + a2 as usize * k + (b as isize + dj) as usize;
                        plan.entries.push((r as u32, q as u32));
                    }
                }
            }
        }
        let box_max = (s.ho() * wo) as u64 * 2 * 255 * 255;
        plan.max_pending = (u64::from(u32::MAX) / box_max).max(1) as usize;
        plan
    }

    /// Index in `box_base` of block number `bidx`, row offset `a`, shift `t`.
    fn base_at(&self, k: usize, bidx: usize, a: usize, t: usize) -> usize {
        let nd = 2 * k - 1;
        self.box_base[(bidx * k + a) * nd + t]
    }
}

/// Whether block `(c1, c2, di)` computes column shift `dj`: for one channel with itself at
/// `di = 0` only `dj >= 0` (the rest is the mirror).
fn in_dj_range(c1: usize, c2: usize, di: isize, dj: isize) -> bool {
    !(c1 == c2 && di == 0 && dj < 0)
}

/// Buffers of the kernel, kept by the caller between images.
#[derive(Default)]
pub struct Scratch {
    shape: Option<Shape>,
    plan: Plan,
    /// The block's images, pixel-major: `soa[(c * hp + y) * wp + x][m]` is image `m`'s pixel.
    soa: Vec<[i16; IMAGES]>,
    filled: usize,
    /// Per cut: sum down the rows of the row prefix sums; its copy at each row `a`.
    v: Vec<__m256i>,
    saved: Vec<__m256i>,
    /// Box sums of the blocks since the last widening, in `plan.entries` order.
    acc: Vec<__m256i>,
    pending: usize,
}

/// Adds one image (planar, as `moments.rs` lays it out) to the block; when the block is full its
/// sums are formed. [`flush`] finishes a partial block and adds everything to `second`.
///
/// # Safety
/// The CPU must support AVX2; stride 1, `2 <= s.k <= 15`, `s.hp * s.wp <= MAX_PIXELS`, and
/// `planes` laid out by `pl` with `s.hp` rows of `s.wp` pixels per channel, each at most 255.
#[target_feature(enable = "avx2")]
pub unsafe fn add_image(
    s: Shape,
    pl: Planes,
    planes: &[u16],
    sc: &mut Scratch,
    second: &mut [u64],
) {
    if sc.shape != Some(s) {
        flush(sc, second);
        sc.shape = Some(s);
        sc.plan = Plan::new(s);
        sc.soa.clear();
        sc.soa.resize(s.c * s.hp * s.wp, [0; IMAGES]);
        sc.acc.clear();
        sc.acc.resize(sc.plan.entries.len(), _mm256_setzero_si256());
    }
    let m = sc.filled;
    for ch in 0..s.c {
        for y in 0..s.hp {
            let src = &planes[pl.offset(ch, y, 0)..pl.offset(ch, y, 0) + s.wp];
            let dst = &mut sc.soa[(ch * s.hp + y) * s.wp..(ch * s.hp + y + 1) * s.wp];
            for (d, &v) in dst.iter_mut().zip(src) {
                d[m] = v as i16;
            }
        }
    }
    sc.filled += 1;
    if sc.filled == IMAGES {
        block(sc, second);
    }
}

/// Rows of the two planes read by one band: about 12 KiB, so that they stay in L1 while
/// every column shift passes over them.
fn band_rows(wp: usize) -> usize {
    (12 * 1024 / (2 * wp * 32)).max(1)
}

/// Forms the sums of the images in the block (unused lanes are zero images).
///
/// For each `(c1, c2, di)`, rows are taken in bands; within a band each column shift `dj` runs
/// down the rows, so that the short loops of a row repeat with the same trip counts (predicted
/// branches) while the band's rows stay in cache. Each `dj` has its own cuts in `v` and `saved`,
/// so the order of the shifts is free.
#[target_feature(enable = "avx2")]
fn block(sc: &mut Scratch, second: &mut [u64]) {
    let Some(s) = sc.shape else { return };
    if sc.filled == 0 {
        return;
    }
    for px in sc.soa.iter_mut() {
        px[sc.filled..].fill(0);
    }
    if sc.pending == sc.plan.max_pending {
        widen(sc, second);
    }
    let (k, ho, wo, wp) = (s.k, s.ho(), s.wo(), s.wp);
    let kd = k as isize - 1;
    let zero = _mm256_setzero_si256();
    let n_cuts = sc.plan.cut_col.len();
    sc.v.resize(n_cuts, zero);
    sc.saved.resize(k * n_cuts, zero);
    let band = band_rows(wp);
    for (bidx, (c1, c2, di)) in blocks(s.c, k).enumerate() {
        let rows_a = offset_range(k, di);
        sc.v.fill(zero);
        let last = rows_a.end - 1 + ho; // one past the last row summed
        for y0 in (rows_a.start..=last).step_by(band) {
            for t in 0..2 * k - 1 {
                let dj = t as isize - kd;
                if !in_dj_range(c1, c2, di, dj) {
                    continue;
                }
                let (ref bs, ref cuts) = sc.plan.shifts[t];
                let v = &mut sc.v[cuts.clone()];
                for y in y0..(y0 + band).min(last + 1) {
                    if y >= rows_a.start + ho {
                        // Row a + ho: the boxes of row offset a are complete.
                        let a = y - ho;
                        let saved = &sc.saved[(a - rows_a.start) * n_cuts..][cuts.clone()];
                        let first = sc.plan.base_at(k, bidx, a, t);
                        let acc = &mut sc.acc[first..first + bs.len()];
                        for (sum, &(cs, ce)) in acc.iter_mut().zip(&sc.plan.box_cuts[t]) {
                            let (cs, ce) = (cs - cuts.start, ce - cuts.start);
                            let now = _mm256_sub_epi32(v[ce], v[cs]);
                            let then = _mm256_sub_epi32(saved[ce], saved[cs]);
                            *sum = _mm256_add_epi32(*sum, _mm256_sub_epi32(now, then));
                        }
                    }
                    if y < rows_a.end {
                        let at = (y - rows_a.start) * n_cuts;
                        sc.saved[at..at + n_cuts][cuts.clone()].copy_from_slice(v);
                    }
                    if y == last {
                        break;
                    }
                    let row1 = &sc.soa[(c1 * s.hp + y) * wp..][..wp];
                    let y2 = (y as isize + di) as usize;
                    let row2 = &sc.soa[(c2 * s.hp + y2) * wp..][..wp];
                    let end = bs.end - 1 + wo;
                    let b0 = (bs.start as isize + dj) as usize;
                    let (a, b) = (&row1[bs.start..end], &row2[b0..b0 + end - bs.start]);
                    if bs.len() - 1 < wo {
                        row_sums(a, b, bs.len() - 1, v);
                    } else {
                        let cols = &sc.plan.cut_col[cuts.clone()];
                        row_cuts(a, b, bs.start, cols, v);
                    }
                }
            }
        }
    }
    sc.pending += 1;
    sc.filled = 0;
}

/// The product of one pixel pair in 16 images (lanes 2l and 2l + 1 added).
#[inline]
#[target_feature(enable = "avx2")]
fn product(a: &[i16; IMAGES], b: &[i16; IMAGES]) -> __m256i {
    // SAFETY: each element is 16 `i16`, 32 bytes.
    unsafe {
        _mm256_madd_epi16(
            _mm256_loadu_si256(a.as_ptr().cast()),
            _mm256_loadu_si256(b.as_ptr().cast()),
        )
    }
}

/// One row of one shift, cuts apart (`left < wo`): `left` columns each followed by a cut, the
/// middle, a cut, and `left` more columns each followed by a cut. `v` holds the shift's
/// `2 (left + 1)` cuts; the first is the empty prefix, which stays zero.
#[inline]
#[target_feature(enable = "avx2")]
fn row_sums(a: &[[i16; IMAGES]], b: &[[i16; IMAGES]], left: usize, v: &mut [__m256i]) {
    let n = a.len();
    let (vl, vr) = v[1..].split_at_mut(left);
    let mut run = _mm256_setzero_si256();
    for ((pa, pb), vc) in a[..left].iter().zip(&b[..left]).zip(vl.iter_mut()) {
        run = _mm256_add_epi32(run, product(pa, pb));
        *vc = _mm256_add_epi32(*vc, run);
    }
    // The middle, in two chains.
    let mid = n - left;
    let (ma, mb) = (&a[left..mid], &b[left..mid]);
    let mut run2 = _mm256_setzero_si256();
    let pairs = ma.len() / 2;
    for i in 0..pairs {
        run = _mm256_add_epi32(run, product(&ma[2 * i], &mb[2 * i]));
        run2 = _mm256_add_epi32(run2, product(&ma[2 * i + 1], &mb[2 * i + 1]));
    }
    if ma.len() % 2 == 1 {
        run = _mm256_add_epi32(run, product(&ma[ma.len() - 1], &mb[ma.len() - 1]));
    }
    run = _mm256_add_epi32(run, run2);
    vr[0] = _mm256_add_epi32(vr[0], run);
    for ((pa, pb), vc) in a[mid..].iter().zip(&b[mid..]).zip(vr[1..].iter_mut()) {
        run = _mm256_add_epi32(run, product(pa, pb));
        *vc = _mm256_add_epi32(*vc, run);
    }
}

/// One row of one shift, any cuts: the running sum along the row is added at each cut column
/// (columns count from `x0`).
#[inline]
#[target_feature(enable = "avx2")]
fn row_cuts(
    a: &[[i16; IMAGES]],
    b: &[[i16; IMAGES]],
    x0: usize,
    cols: &[usize],
    v: &mut [__m256i],
) {
    let mut run = _mm256_setzero_si256();
    let mut x = 0;
    for (&col, vc) in cols.iter().zip(v.iter_mut()) {
        let to = col - x0;
        for (pa, pb) in a[x..to].iter().zip(&b[x..to]) {
            run = _mm256_add_epi32(run, product(pa, pb));
        }
        x = to;
        *vc = _mm256_add_epi32(*vc, run);
    }
}

/// Adds the accumulated box sums into `second` (and their mirror entries) and clears them.
#[target_feature(enable = "avx2")]
fn widen(sc: &mut Scratch, second: &mut [u64]) {
    let Some(s) = sc.shape else { return };
    if sc.pending == 0 {
        return;
    }
    let p = s.c * s.k * s.k;
    let zero = _mm256_setzero_si256();
    for (sum, &(r, q)) in sc.acc.iter_mut().zip(&sc.plan.entries) {
        let mut lanes = [0u32; 8];
        // SAFETY: 32 bytes into an array of 8 `u32`.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), *sum) };
        let total: u64 = lanes.iter().map(|&l| u64::from(l)).sum();
        let (r, q) = (r as usize, q as usize);
        second[r * p + q] = second[r * p + q].wrapping_add(total);
        if r != q {
            second[q * p + r] = second[q * p + r].wrapping_add(total);
        }
        *sum = zero;
    }
    sc.pending = 0;
}

/// Forms the sums of a partial block and adds everything pending to `second`.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn flush(sc: &mut Scratch, second: &mut [u64]) {
    block(sc, second);
    widen(sc, second);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::has_avx2;

    #[test]
    fn accumulators_are_widened_before_they_overflow() {
        if !has_avx2() {
            return;
        }
        // All-255 images: every box of a block adds 2 * 100 * 255^2 to each lane, so the u32
        // accumulators would wrap after 330 blocks; 340 blocks must still come out exact.
        let s = Shape {
            c: 1,
            k: 3,
            hp: 12,
            wp: 12,
        };
        let pl = Planes::new(12, 12, 2, 16);
        let mut planes = vec![0u16; 12 * pl.row_len];
        for y in 0..12 {
            planes[pl.offset(0, y, 0)..pl.offset(0, y, 0) + 12].fill(255);
        }
        let mut sc = Scratch::default();
        let mut second = vec![0u64; 81];
        let images = 16 * 340 + 5; // and a partial block
        for _ in 0..images {
            // SAFETY: AVX2 is present; the shape satisfies `add_image`'s conditions.
            unsafe { add_image(s, pl, &planes, &mut sc, &mut second) };
        }
        // SAFETY: as above.
        unsafe { flush(&mut sc, &mut second) };
        assert!(sc.plan.max_pending < 340, "{}", sc.plan.max_pending);
        let want = images as u64 * 100 * 65025;
        assert!(
            second.iter().all(|&v| v == want),
            "{:?} != {want}",
            &second[..3]
        );
    }
}
