//! The shifted-products kernel for small `u8` images at stride 1, with the images in the lanes.
//!
//! Same sums as the portable kernel in `portable.rs` (integers, so the same bits), arranged for
//! small images (CIFAR's 32x32, up to 128x128), where the strip kernel (`strips_avx2`) spends
//! much of its time on the image's edges: here 32 images go through the algorithm together, so
//! there are no edges to treat apart. Lane `m` of the two registers of a
//! pixel holds pixel `(y, x)` of image `m` (as `i16`), so one `vpmaddwd` forms the product of
//! one pixel pair in 16 images (lane `l` sums images `2l` and `2l + 1`, all of which are added
//! up in the end anyway), and every index computation, cut and snapshot is shared by 32 images.
//!
//! For channels `(c1, c2)` and shift `(di, dj)`, entry `M[(c1, a, b), (c2, a + di, b + dj)]` is
//! the sum of `Q(y, x) = X1[y][x] X2[y + di][x + dj]` over the box `[a, a + ho) x [b, b + wo)`.
//! Along each row, the running sum of `Q` is added at every column cut (`b` and `b + wo`) into
//! `v`, which therefore holds, per cut, the sum down the rows of the row prefix sums. `v` is saved
//! at row `a` and, at row `a + ho`, each box is read off the four corners:
//! `(v[b + wo] - v[b]) - (saved[b + wo] - saved[b])`. The box sums of a block of images are added
//! into `u32` accumulators, widened into the `u64` totals before they could overflow. Cuts are
//! `k - 1` columns from either side of the row only, so each row is left cuts, a middle without
//! any, right cuts (`row_group`); rows with no save or read between them are summed in bands.
//!
//! `u32` lanes: a lane adds products of four images, so any sum over them is at most
//! `hp * wp * 4 * 255^2`, which [`MAX_PIXELS`] keeps below `2^32`.

use std::arch::x86_64::*;

use std::ops::Range;

use crate::kernels::image::{Batch, Layout};
use crate::kernels::moments::geometry::{blocks, offset_range, Moments};

/// Images per block: the 16 `i16` lanes of `HALVES` 256-bit registers per pixel.
pub const IMAGES: usize = 32;

// Chunks of images come in whole blocks.
const _: () = assert!(crate::parallel::EXACT_BLOCK % IMAGES == 0);

/// Registers per pixel of a block.
const HALVES: usize = IMAGES / 16;

/// Column shifts summed together: their running sums stay in registers.
const MAX_GROUP: usize = 8;

/// Rows summed together at most: a band's rows of both operands stay in L1.
const BAND: usize = 8;

/// The largest padded image (`hp * wp` pixels) whose sums fit a `u32` lane.
pub const MAX_PIXELS: usize = (u32::MAX / (2 * HALVES as u32 * 255 * 255)) as usize;

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

/// Where each box's sum goes: what depends on the shape only.
#[derive(Default)]
struct Plan {
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
        let k = s.k;
        let nd = 2 * k - 1;
        let mut plan = Plan::default();
        let kk = k * k;
        for (c1, c2, di) in blocks(s.c, k) {
            for a in 0..k {
                for t in 0..nd {
                    plan.box_base.push(plan.entries.len());
                    let dj = t as isize - (k as isize - 1);
                    let a2 = a as isize + di;
                    if !(0..k as isize).contains(&a2) || t < first_shift(c1, c2, di, k) {
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
        let box_max = (s.ho() * s.wo() * 2 * HALVES) as u64 * 255 * 255;
        plan.max_pending = (u64::from(u32::MAX) / box_max).max(1) as usize;
        plan
    }

    /// Index in `box_base` of block number `bidx`, row offset `a`, shift `t`.
    fn base_at(&self, k: usize, bidx: usize, a: usize, t: usize) -> usize {
        let nd = 2 * k - 1;
        self.box_base[(bidx * k + a) * nd + t]
    }
}

/// The first column shift `t = dj + k - 1` that block `(c1, c2, di)` computes: for one channel
/// with itself at `di = 0` only `dj >= 0` (the rest is the mirror).
fn first_shift(c1: usize, c2: usize, di: isize, k: usize) -> usize {
    if c1 == c2 && di == 0 {
        k - 1
    } else {
        0
    }
}

/// Whether the kernel takes this shape: besides [`MAX_PIXELS`], each row must have its `k - 1`
/// left cuts before the window's right edge (`wo >= k - 1`), so that a row is left cuts, middle,
/// right cuts.
pub fn fits(s: Shape) -> bool {
    (2..=15).contains(&s.k) && s.hp >= s.k && s.wp >= 2 * s.k - 2 && s.hp * s.wp <= MAX_PIXELS
}

/// Length of a row in the block: `k - 1` zero columns, the `wp` pixels, `k` zero columns, so
/// that the second operand of every column shift (and the one read ahead) is in the row.
fn row_len(s: Shape) -> usize {
    s.wp + 2 * s.k - 1
}

/// The images of a block, one `i32` each.
type Wide = [__m256i; 2 * HALVES];

/// Buffers of the kernel for one chunk of images.
struct Scratch {
    shape: Shape,
    plan: Plan,
    /// The block's images, pixel-major: `soa[(c * hp + y) * row_len + k - 1 + x][m]` is pixel
    /// `(y, x)` of channel `c` of image `m`; the margins stay zero.
    soa: Vec<[i16; IMAGES]>,
    filled: usize,
    /// Per column shift `t` and cut `i`: the sum down the rows of the row prefix sums, at the
    /// `2 k` cut columns `0..k` (`i < k`) and `wo..wo + k` (`i = k + b`); its copy at each row `a`.
    v: Vec<__m256i>,
    saved: Vec<__m256i>,
    /// Box sums of the blocks since the last widening, in `plan.entries` order.
    acc: Vec<__m256i>,
    pending: usize,
    /// Class of each image in the block (`None`: no labels).
    labels: [Option<usize>; IMAGES],
    /// Per column: window column sums of one channel, as `i32`.
    cols: Vec<Wide>,
    /// The block's images transposed: `flat[q][m]` is byte `q` of image `m`.
    flat: Vec<[i16; IMAGES]>,
    /// A zero image, for the lanes of a partial block.
    zeros: Vec<u8>,
}

/// The moments of the patches of images `range` of the `u8` batch `x` (stride 1, zero padding
/// `pad`): the same sums as `moments::patch_moments`, [`IMAGES`] images at a time.
///
/// # Safety
/// The CPU must support AVX2, and [`fits`] holds for the padded shape.
#[target_feature(enable = "avx2")]
pub unsafe fn moments(
    x: &[u8],
    batch: Batch,
    s: Shape,
    pad: usize,
    range: Range<usize>,
    labels: Option<&[i64]>,
    n_classes: usize,
) -> Moments<u64> {
    let p = s.c * s.k * s.k;
    let mut out = Moments::<u64>::zeros(p, n_classes);
    let plan = Plan::new(s);
    let mut sc = Scratch {
        shape: s,
        soa: vec![[0; IMAGES]; s.c * s.hp * row_len(s)],
        filled: 0,
        v: Vec::new(),
        saved: Vec::new(),
        acc: vec![_mm256_setzero_si256(); plan.entries.len()],
        pending: 0,
        labels: [None; IMAGES],
        cols: Vec::new(),
        flat: Vec::new(),
        zeros: Vec::new(),
        plan,
    };
    let per_image = (s.ho() * s.wo()) as u64;
    for start in range.clone().step_by(IMAGES) {
        let n = IMAGES.min(range.end - start);
        for m in 0..n {
            let class = labels.map(|l| l[start + m] as usize);
            sc.labels[m] = class;
            out.count += per_image;
            if let Some(cls) = class {
                out.class_count[cls] += per_image;
            }
        }
        load_block(&mut sc, x, batch, pad, start, n);
        sc.filled = n;
        block(&mut sc, &mut out);
    }
    widen(&mut sc, &mut out.second);
    out
}

/// Output register `j` of [`transpose16`] holds input column `BITREV[j]`.
const BITREV: [usize; 16] = [0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15];

/// Transposes 16 rows of 16 bytes: four rounds of interleaving pairs of rows (bytes, then 2,
/// 4 and 8 bytes at a time) leave column `BITREV[j]` in register `j`, its rows in order.
#[inline]
#[target_feature(enable = "avx2")]
fn transpose16(mut a: [__m128i; 16]) -> [__m128i; 16] {
    let mut b = [_mm_setzero_si128(); 16];
    // One round: rows 2i and 2i + 1 interleaved, their low halves to i, high halves to i + 8.
    macro_rules! round {
        ($from:ident, $to:ident, $lo:ident, $hi:ident) => {
            for i in 0..8 {
                $to[i] = $lo($from[2 * i], $from[2 * i + 1]);
                $to[i + 8] = $hi($from[2 * i], $from[2 * i + 1]);
            }
        };
    }
    round!(a, b, _mm_unpacklo_epi8, _mm_unpackhi_epi8);
    round!(b, a, _mm_unpacklo_epi16, _mm_unpackhi_epi16);
    round!(a, b, _mm_unpacklo_epi32, _mm_unpackhi_epi32);
    round!(b, a, _mm_unpacklo_epi64, _mm_unpackhi_epi64);
    a
}

/// Puts images `start..start + n` of `x` into the lanes of `sc.soa` (the other lanes get zero
/// images): each pixel index becomes one `[i16; IMAGES]`, by transposes of 16 pixels of 16
/// images, then rows go to their channel planes.
#[inline(never)]
#[target_feature(enable = "avx2")]
fn load_block(sc: &mut Scratch, x: &[u8], batch: Batch, pad: usize, start: usize, n: usize) {
    let s = sc.shape;
    let len = batch.image_len();
    sc.zeros.resize(len, 0);
    let zeros = &sc.zeros[..];
    let imgs: [&[u8]; IMAGES] = std::array::from_fn(|m| {
        if m < n {
            &x[(start + m) * len..][..len]
        } else {
            zeros
        }
    });
    let flat = &mut sc.flat;
    flat.resize(len, [0; IMAGES]);
    let mut q = 0;
    while q + 16 <= len {
        for half in 0..HALVES {
            let rows: [__m128i; 16] = std::array::from_fn(|m| {
                let row = &imgs[16 * half + m][q..q + 16];
                // SAFETY: 16 bytes, read unaligned.
                unsafe { _mm_loadu_si128(row.as_ptr().cast()) }
            });
            let cols = transpose16(rows);
            for (j, col) in cols.into_iter().enumerate() {
                let lanes = &mut flat[q + BITREV[j]][16 * half..16 * half + 16];
                // SAFETY: 32 bytes, written unaligned.
                unsafe {
                    _mm256_storeu_si256(lanes.as_mut_ptr().cast(), _mm256_cvtepu8_epi16(col))
                };
            }
        }
        q += 16;
    }
    for (q, px) in flat.iter_mut().enumerate().skip(q) {
        for (lane, img) in px.iter_mut().zip(&imgs) {
            *lane = i16::from(img[q]);
        }
    }
    // Pixel (y, x) of channel ch goes to soa[(ch hp + pad + y) wr + k - 1 + pad + x]; the
    // padding and the margins are never written, so they stay zero.
    let (c, h, w, wr) = (batch.c, batch.h, batch.w, row_len(s));
    let at = |ch: usize, y: usize| (ch * s.hp + pad + y) * wr + s.k - 1 + pad;
    match batch.layout {
        Layout::Nchw => {
            for ch in 0..c {
                for y in 0..h {
                    let src = &flat[(ch * h + y) * w..][..w];
                    sc.soa[at(ch, y)..][..w].copy_from_slice(src);
                }
            }
        }
        Layout::Nhwc => {
            for y in 0..h {
                let src = &flat[y * w * c..][..w * c];
                for ch in 0..c {
                    let dst = &mut sc.soa[at(ch, y)..][..w];
                    for (d, px) in dst.iter_mut().zip(src[ch..].iter().step_by(c)) {
                        *d = *px;
                    }
                }
            }
        }
    }
}

/// Adds the window sums of every image in the block to `out.sum` (and its class's sums):
/// per channel, column sums down the rows of each row offset `a`, then sums along them.
#[inline(never)]
#[target_feature(enable = "avx2")]
fn first_moments(sc: &mut Scratch, out: &mut Moments<u64>) {
    let s = sc.shape;
    let (k, ho, wo, wr) = (s.k, s.ho(), s.wo(), row_len(s));
    let kk = k * k;
    let zero = _mm256_setzero_si256();
    // The images of a pixel as i32, 8 per register.
    let widen = |px: &[i16; IMAGES]| -> Wide {
        std::array::from_fn(|i| {
            // SAFETY: 16 bytes inside the pixel's IMAGES i16, read unaligned.
            let v = unsafe { _mm_loadu_si128(px.as_ptr().add(8 * i).cast()) };
            _mm256_cvtepi16_epi32(v)
        })
    };
    let add = |a: Wide, b: Wide| -> Wide { std::array::from_fn(|i| _mm256_add_epi32(a[i], b[i])) };
    let sub = |a: Wide, b: Wide| -> Wide { std::array::from_fn(|i| _mm256_sub_epi32(a[i], b[i])) };
    sc.cols.resize(s.wp, [zero; 2 * HALVES]);
    for ch in 0..s.c {
        let row = |y: usize| &sc.soa[(ch * s.hp + y) * wr + k - 1..][..s.wp];
        let mut cols = std::mem::take(&mut sc.cols);
        cols.fill([zero; 2 * HALVES]);
        for y in 0..ho {
            for (col, px) in cols.iter_mut().zip(row(y)) {
                *col = add(*col, widen(px));
            }
        }
        for a in 0..k {
            if a > 0 {
                // Slide the rows down by one: drop row a - 1, add row a - 1 + ho.
                for ((col, old), new) in cols.iter_mut().zip(row(a - 1)).zip(row(a - 1 + ho)) {
                    *col = sub(add(*col, widen(new)), widen(old));
                }
            }
            let mut box_sum = cols[..wo]
                .iter()
                .fold([zero; 2 * HALVES], |t, &col| add(t, col));
            for b in 0..k {
                if b > 0 {
                    box_sum = sub(add(box_sum, cols[b - 1 + wo]), cols[b - 1]);
                }
                let mut lanes = [0i32; IMAGES];
                for (i, part) in box_sum.iter().enumerate() {
                    // SAFETY: 8 i32 stored at 8 i, inside the array of IMAGES.
                    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().add(8 * i).cast(), *part) };
                }
                let r = ch * kk + a * k + b;
                for (m, &v) in lanes.iter().enumerate().take(sc.filled) {
                    // Sums of u8 pixels over at most MAX_PIXELS pixels: non-negative i32.
                    let v = v as u64;
                    out.sum[r] += v;
                    if let Some(cls) = sc.labels[m] {
                        out.class_sum[cls * out.p + r] += v;
                    }
                }
            }
        }
        sc.cols = cols;
    }
}

/// Forms the sums of the images in the block (unused lanes hold zero images).
///
/// For each `(c1, c2, di)` the rows go down once; each row passes over every column shift
/// `dj` in groups of a few ([`row_group`]), so that one load of a pixel serves the whole group.
#[inline(never)]
#[target_feature(enable = "avx2")]
fn block(sc: &mut Scratch, out: &mut Moments<u64>) {
    let s = sc.shape;
    if sc.pending == sc.plan.max_pending {
        widen(sc, &mut out.second);
    }
    first_moments(sc, out);
    let (k, ho, wp) = (s.k, s.ho(), s.wp);
    let (nd, nc, wr) = (2 * k - 1, 2 * k, row_len(s));
    let zero = _mm256_setzero_si256();
    sc.v.resize(nd * nc, zero);
    sc.saved.resize(k * nd * nc, zero);
    for (bidx, (c1, c2, di)) in blocks(s.c, k).enumerate() {
        let rows_a = offset_range(k, di);
        let shifts = first_shift(c1, c2, di, k)..nd;
        sc.v.fill(zero);
        // One past the last row summed.
        let last = rows_a.end - 1 + ho;
        // Rows where something happens before they are summed: `v` is saved (rows `a`) or read
        // (rows `a + ho`). Between them rows are summed in bands: the running sums run down the
        // band's rows at each column, so that a cut is added once per band, not once per row.
        let event = |y: usize| y < rows_a.end || y >= rows_a.start + ho;
        let mut y = rows_a.start;
        loop {
            if y >= rows_a.start + ho {
                // Row a + ho: the boxes of row offset a are complete.
                let a = y - ho;
                let saved = &sc.saved[(a - rows_a.start) * nd * nc..][..nd * nc];
                for t in shifts.clone() {
                    let first = sc.plan.base_at(k, bidx, a, t);
                    let bs = offset_range(k, t as isize - (k as isize - 1));
                    let acc = &mut sc.acc[first..first + bs.len()];
                    let (now, then) = (&sc.v[t * nc..][..nc], &saved[t * nc..][..nc]);
                    for (sum, b) in acc.iter_mut().zip(bs) {
                        let d_now = _mm256_sub_epi32(now[k + b], now[b]);
                        let d_then = _mm256_sub_epi32(then[k + b], then[b]);
                        *sum = _mm256_add_epi32(*sum, _mm256_sub_epi32(d_now, d_then));
                    }
                }
            }
            if y < rows_a.end {
                let at = (y - rows_a.start) * nd * nc;
                sc.saved[at..at + nd * nc].copy_from_slice(&sc.v);
            }
            if y == last {
                break;
            }
            let mut end = y + 1;
            while end < last && end - y < BAND && !event(end) {
                end += 1;
            }
            let at1 = (c1 * s.hp + y) * wr + k - 1;
            let at2 = (c2 * s.hp + (y as isize + di) as usize) * wr;
            // Groups of at most MAX_GROUP shifts, whose running sums stay in registers.
            let groups = shifts.len().div_ceil(MAX_GROUP);
            let mut t = shifts.start;
            for g in (1..=groups).rev() {
                let size = (nd - t).div_ceil(g);
                let v = &mut sc.v[t * nc..(t + size) * nc];
                let band = Band {
                    at1,
                    at2: at2 + t,
                    rows: end - y,
                    wr,
                    wp,
                    k,
                };
                let soa = &sc.soa;
                match size {
                    1 => row_group::<1>(soa, band, v),
                    2 => row_group::<2>(soa, band, v),
                    3 => row_group::<3>(soa, band, v),
                    4 => row_group::<4>(soa, band, v),
                    5 => row_group::<5>(soa, band, v),
                    6 => row_group::<6>(soa, band, v),
                    7 => row_group::<7>(soa, band, v),
                    _ => row_group::<8>(soa, band, v),
                }
                t += size;
            }
            y = end;
        }
    }
    sc.pending += 1;
}

/// Rows summed together: `rows` rows from `at1` (first operand, pixel `x` at `at1 + x`) and
/// `at2` (second operand of the group's first shift at column `x`: `at2 + x`), `wr` apart.
#[derive(Clone, Copy)]
struct Band {
    at1: usize,
    at2: usize,
    rows: usize,
    wr: usize,
    wp: usize,
    k: usize,
}

/// The rows of a band for `G` consecutive column shifts: shift `j`'s product at column `x` is
/// `soa[at1 + x] * soa[at2 + x + j]`, summed down the band's rows. Running sums along the row
/// are added at the cuts: after each of the first `k - 1` columns, after column `wo - 1`, and
/// after each of the last `k - 1` columns. `v` holds `2 k` cuts per shift; the first is the
/// empty prefix, which stays zero.
#[inline(never)]
#[target_feature(enable = "avx2")]
fn row_group<const G: usize>(soa: &[[i16; IMAGES]], b: Band, v: &mut [__m256i]) {
    let Band {
        at1,
        at2,
        rows,
        wr,
        wp,
        k,
    } = b;
    let wo = wp + 1 - k;
    let nc = 2 * k;
    let span = (rows - 1) * wr;
    assert!(wo + 1 >= k && v.len() == G * nc);
    assert!(at1 + span + wp <= soa.len() && at2 + span + wp + G - 1 <= soa.len());
    let base = soa.as_ptr();
    // SAFETY: every pixel index below is `at1 + r wr + x` or `at2 + r wr + x + j` with
    // `r < rows`, `x < wp`, `j < G`: in bounds by the assertion above; `h < HALVES` registers
    // of 32 bytes make up a pixel.
    let load =
        |i: usize, h: usize| unsafe { _mm256_loadu_si256(base.add(i).cast::<__m256i>().add(h)) };
    let mut run = [_mm256_setzero_si256(); G];
    macro_rules! step {
        ($x:expr) => {{
            let x = $x;
            for r in 0..rows {
                let a: [__m256i; HALVES] = std::array::from_fn(|h| load(at1 + r * wr + x, h));
                let b = at2 + r * wr + x;
                for j in 0..G {
                    let mut q = _mm256_madd_epi16(a[0], load(b + j, 0));
                    for h in 1..HALVES {
                        q = _mm256_add_epi32(q, _mm256_madd_epi16(a[h], load(b + j, h)));
                    }
                    run[j] = _mm256_add_epi32(run[j], q);
                }
            }
        }};
    }
    macro_rules! cut {
        ($i:expr) => {{
            let i = $i;
            for j in 0..G {
                let c = &mut v[j * nc + i];
                *c = _mm256_add_epi32(*c, run[j]);
            }
        }};
    }
    for x in 0..k - 1 {
        step!(x);
        cut!(x + 1);
    }
    for x in k - 1..wo {
        step!(x);
    }
    cut!(k);
    for x in wo..wp {
        step!(x);
        cut!(k + 1 + x - wo);
    }
}

/// Adds the accumulated box sums into `second` (and their mirror entries) and clears them.
#[target_feature(enable = "avx2")]
fn widen(sc: &mut Scratch, second: &mut [u64]) {
    let s = sc.shape;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::has_avx2;

    #[test]
    fn accumulators_are_widened_before_they_overflow() {
        if !has_avx2() {
            return;
        }
        // All-255 images: every box of a block adds 2 * HALVES * 100 * 255^2 to each lane, so
        // the u32 accumulators would wrap after 330 / HALVES blocks; 340 / HALVES blocks must
        // still come out exact.
        let blocks = 340 / HALVES;
        let s = Shape {
            c: 1,
            k: 3,
            hp: 12,
            wp: 12,
        };
        let images = IMAGES * blocks + 5; // and a partial block
        let batch = Batch {
            n: images,
            c: 1,
            h: 12,
            w: 12,
            layout: Layout::Nchw,
        };
        let x = vec![255u8; images * 144];
        // SAFETY: AVX2 is present; the shape fits.
        let got = unsafe { moments(&x, batch, s, 0, 0..images, None, 0) };
        assert!(
            Plan::new(s).max_pending < blocks,
            "{}",
            Plan::new(s).max_pending
        );
        let want = images as u64 * 100 * 65025;
        assert_eq!(got.count, images as u64 * 100);
        assert!(got.sum.iter().all(|&v| v == images as u64 * 100 * 255));
        let second = got.second;
        assert!(
            second.iter().all(|&v| v == want),
            "{:?} != {want}",
            &second[..3]
        );
    }
}
