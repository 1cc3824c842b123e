//! The shifted-products kernel for `u8` images at stride 1, written with AVX2 intrinsics.
//!
//! Same algorithm and same integers as the portable kernel in `portable.rs` (so the same bits),
//! arranged so that the work per product is three instructions:
//!
//! * pixels are `u16`, and interleaved with the row below in `pairs`: one `vpmaddwd` of an A
//!   pair with a B pair is the sum of two rows' products for 8 columns; with B's row
//!   zero-extended (`vpmovzxwd`, a pixel and a zero), one row's;
//! * for one channel pair `(c1, c2)` and row shift `di`, all `2k - 1` column shifts `dj` are
//!   done together, in a strip of 8 columns at a time: the A pair is loaded once and each `dj`
//!   loads B at its offset, so the `2k - 1` column sums (`u32`, 8 lanes each) stay in registers
//!   down the whole image;
//! * the window of offset `(ai, aj)` covers rows `[ai, ai + ho)` and columns `[aj, aj + wo)`.
//!   Its sum is the total over those rows of all columns, minus the first `aj` columns, minus
//!   the columns from `aj + wo` on: so only row totals and the `2 (k - 1)` edge columns are kept,
//!   interior strips add straight into one register per `dj`;
//! * the rows are cut at every `ai` and `ai + ho`; the pieces between cuts are summed (two rows
//!   per instruction where they can), and their running sums give every window's rows as a
//!   difference. These are added up over the images of a chunk and turned into entries of
//!   `sum p p^T` once per chunk ([`flush`]): that step costs `O(p^2)` whatever the image size.
//!
//! `u32` lanes: an edge column sums at most `Exact::MAX_ROWS` products below `2^16` (taller
//! images use the portable kernel); interior strips are summed in groups small enough that a
//! lane holds a whole image, and widened into `u64` per window.

use std::arch::x86_64::*;
use std::ops::Range;

use crate::kernels::image::Planes;
use crate::kernels::moments::geometry::{blocks, offset_range};

/// Columns per strip (one `u32x8` register).
const STRIP: usize = 8;

/// Buffers of the kernel, kept by the caller's worker between images.
#[derive(Default)]
pub struct Scratch {
    /// Running sums of one block at each row cut, `u32` lanes: the interior strips of each
    /// column group `[group][cut][dj]`, and each edge strip `[slot][cut][dj]`.
    snap_tot: Vec<[u32; 8]>,
    snap_edge: Vec<[u32; 8]>,
    /// Row cuts of each row shift `di`, indexed by `di + k - 1`.
    cuts: Vec<Vec<usize>>,
    /// Edge slot of each strip, or `NO_SLOT`.
    slot_of: Vec<usize>,
    /// Interior strips in groups whose lanes cannot wrap over the whole image, and edge strips.
    groups: Vec<Vec<usize>>,
    edge_strips: Vec<usize>,
    /// Window-row sums added up over the images since the last [`flush`], per block, window
    /// row offset and column shift: all columns (`u64`, 4 lanes) and the edge strips (`u32`).
    acc_tot: Vec<[u64; 4]>,
    acc_edge: Vec<[u32; 8]>,
    /// Images in the accumulators, and the shape they were taken with.
    pending: usize,
    shape: Option<Shape>,
    n_slots: usize,
}

const NO_SLOT: usize = usize::MAX;

/// Geometry of one call.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub c: usize,
    pub k: usize,
    pub ho: usize,
    pub wo: usize,
    /// Columns of the planes rounded up to whole strips (zeros past the image).
    pub wc: usize,
}

/// Adds `sum p p^T` of every patch of one image to the accumulators of `sc`; [`flush`] turns
/// them into window sums in `second` (`p x p`, row-major) once for many images.
///
/// `planes` is the planar image with zero margins of at least `k - 1` columns and `pairs` its
/// interleaving with the row below (`pairs[2q + e] = planes[q + e * row_len]`).
///
/// # Safety
/// The CPU must support AVX2, `pl.margin >= k - 1`, `s.wc % 16 == 0`, `2 <= k <= 15`, and the
/// padded height `s.ho + k - 1` at most `Exact::MAX_ROWS`.
#[target_feature(enable = "avx2")]
pub unsafe fn second_moments(
    s: Shape,
    pl: Planes,
    planes: &[u16],
    pairs: &[u16],
    sc: &mut Scratch,
    second: &mut [u64],
) {
    let k = s.k;
    let nd = 2 * k - 1;
    // Edge lanes of the accumulators hold at most 2^32 / 255^2 = 66,051 window rows.
    if sc.shape != Some(s) || (sc.pending + 1) * (s.ho + k - 1) > 66_051 {
        flush(sc, second);
    }
    if sc.shape.is_none() {
        layout(sc, s);
    }
    let n_slots = sc.n_slots;
    sc.pending += 1;
    for (bidx, (c1, c2, di)) in blocks(s.c, k).enumerate() {
        let ai = offset_range(k, di);
        let cuts = &sc.cuts[(di + k as isize - 1) as usize];
        let n_cuts = cuts.len();
        sc.snap_tot.clear();
        sc.snap_tot.resize(sc.groups.len() * n_cuts * nd, [0; 8]);
        sc.snap_edge.clear();
        sc.snap_edge.resize(n_slots * n_cuts * nd, [0; 8]);
        let b0 = pl.offset(c2, 0, 0) - (k - 1);
        let rows = Rows {
            a: &pairs[2 * pl.offset(c1, 0, 0)..],
            b_pairs: &pairs[2 * b0..],
            b_planes: &planes[b0..],
            row: pl.row_len,
            di,
        };
        for (g, strips) in sc.groups.iter().enumerate() {
            let snaps = &mut sc.snap_tot[g * n_cuts * nd..(g + 1) * n_cuts * nd];
            dispatch(nd, &rows, strips, cuts, snaps);
        }
        for (slot, &v) in sc.edge_strips.iter().enumerate() {
            let snaps = &mut sc.snap_edge[slot * n_cuts * nd..(slot + 1) * n_cuts * nd];
            dispatch(nd, &rows, &[v], cuts, snaps);
        }
        // The window of offset ai covers rows [ai, ai + ho): a difference of running sums,
        // exact in wrapping u32 lanes since the true value fits.
        let cut = |r: usize| cuts.binary_search(&r).expect("rows are cut at windows");
        for (t, ai) in ai.enumerate() {
            let (ja, jb) = (cut(ai), cut(ai + s.ho));
            let at = (bidx * k + t) * nd;
            let diff = |snaps: &[[u32; 8]], base: usize, d: usize| {
                let a = _mm256_loadu_si256(snaps[base + ja * nd + d].as_ptr() as *const __m256i);
                let b = _mm256_loadu_si256(snaps[base + jb * nd + d].as_ptr() as *const __m256i);
                _mm256_sub_epi32(b, a)
            };
            for d in 0..nd {
                let mut sum = _mm256_loadu_si256(sc.acc_tot[at + d].as_ptr() as *const __m256i);
                for g in 0..sc.groups.len() {
                    let w = diff(&sc.snap_tot, g * n_cuts * nd, d);
                    let lo = _mm256_cvtepu32_epi64(_mm256_castsi256_si128(w));
                    let hi = _mm256_cvtepu32_epi64(_mm256_extracti128_si256::<1>(w));
                    sum = _mm256_add_epi64(sum, _mm256_add_epi64(lo, hi));
                }
                _mm256_storeu_si256(sc.acc_tot[at + d].as_mut_ptr() as *mut __m256i, sum);
                for slot in 0..n_slots {
                    let w = diff(&sc.snap_edge, slot * n_cuts * nd, d);
                    let acc = sc.acc_edge[(at + d) * n_slots + slot].as_mut_ptr() as *mut __m256i;
                    _mm256_storeu_si256(acc, _mm256_add_epi32(_mm256_loadu_si256(acc), w));
                }
            }
        }
    }
}

/// What depends on the shape only, made once per run of images of that shape: the strips
/// holding edge columns (`[0, k - 1)` on the left, `[wo, wo + k - 1)` on the right), the other
/// strips in groups whose `u32` lanes hold a whole image's products (`hp` rows), the row cuts of
/// each row shift (every window starts at some `ai` and ends before `ai + ho`), and zeroed
/// accumulators.
fn layout(sc: &mut Scratch, s: Shape) {
    let k = s.k;
    let nd = 2 * k - 1;
    let group_size = (66_051 / (s.ho + k - 1)).max(1);
    sc.slot_of.clear();
    sc.edge_strips.clear();
    sc.groups.clear();
    for v in 0..s.wc / STRIP {
        let (a, b) = (STRIP * v, STRIP * v + STRIP);
        if a < k - 1 || (b > s.wo && a < s.wo + k - 1) {
            sc.slot_of.push(sc.edge_strips.len());
            sc.edge_strips.push(v);
        } else {
            sc.slot_of.push(NO_SLOT);
            match sc.groups.last_mut() {
                Some(g) if g.len() < group_size => g.push(v),
                _ => sc.groups.push(vec![v]),
            }
        }
    }
    sc.cuts = (0..nd)
        .map(|d| {
            let ai = offset_range(k, d as isize - (k as isize - 1));
            let mut cuts: Vec<usize> = ai.clone().chain(ai.map(|a| a + s.ho)).collect();
            cuts.sort_unstable();
            cuts.dedup();
            cuts
        })
        .collect();
    sc.n_slots = sc.edge_strips.len();
    let n = blocks(s.c, k).count() * k * nd;
    sc.acc_tot.clear();
    sc.acc_tot.resize(n, [0; 4]);
    sc.acc_edge.clear();
    sc.acc_edge.resize(n * sc.n_slots, [0; 8]);
    sc.shape = Some(s);
}

/// Adds the window sums accumulated in `sc` to `second` and empties the accumulators.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn flush(sc: &mut Scratch, second: &mut [u64]) {
    let Some(s) = sc.shape.take() else {
        return;
    };
    if sc.pending > 0 {
        let k = s.k;
        for (bidx, (c1, c2, di)) in blocks(s.c, k).enumerate() {
            let block = Block {
                k,
                wo: s.wo,
                p: s.c * k * k,
                pair: (c1, c2, di),
                n_slots: sc.n_slots,
                first: bidx * k,
            };
            scatter(&block, offset_range(k, di), sc, second);
        }
    }
    sc.pending = 0;
}

/// The rows one `(c1, c2, di)` block reads: A's pairs (channel `c1`), and B's pairs and planes
/// (channel `c2`) from `k - 1` columns left of column 0, so that the column shift of index `d`
/// (`dj = d - (k - 1)`) reads B at column `x + d`.
struct Rows<'a> {
    a: &'a [u16],
    b_pairs: &'a [u16],
    b_planes: &'a [u16],
    /// Elements from one planar row to the next (twice that in the pairs).
    row: usize,
    di: isize,
}

/// Calls the block pass with the number of column shifts as a constant, so that its sums live
/// in registers.
#[target_feature(enable = "avx2")]
unsafe fn dispatch(
    nd: usize,
    rows: &Rows<'_>,
    strips: &[usize],
    cuts: &[usize],
    snaps: &mut [[u32; 8]],
) {
    macro_rules! go {
        ($($n:literal)*) => {
            match nd {
                $($n => pass::<$n>(rows, strips, cuts, snaps),)*
                _ => unreachable!("kernel sizes are 2..=15"),
            }
        };
    }
    go!(3 5 7 9 11 13 15 17 19 21 23 25 27 29);
}

#[inline(always)]
unsafe fn load(x: &[u16], at: usize) -> __m256i {
    debug_assert!(at + 16 <= x.len());
    _mm256_loadu_si256(x.as_ptr().add(at) as *const __m256i)
}

/// 8 pixels from `at`, each followed by a zero: one row in the layout of the pairs.
#[inline(always)]
unsafe fn load_single(x: &[u16], at: usize) -> __m256i {
    debug_assert!(at + 8 <= x.len());
    _mm256_cvtepu16_epi32(_mm_loadu_si128(x.as_ptr().add(at) as *const __m128i))
}

/// Running sums down the rows, over the columns of `strips` together, of A's row `r` times B's
/// row `r + di` shifted by each of the `ND` column shifts: `snaps[j * ND + d]` is the sum over
/// the rows `[cuts[0], cuts[j])`. Two rows per instruction where a piece between cuts allows.
#[target_feature(enable = "avx2")]
unsafe fn pass<const ND: usize>(
    rows: &Rows<'_>,
    strips: &[usize],
    cuts: &[usize],
    snaps: &mut [[u32; 8]],
) {
    let mut acc = [_mm256_setzero_si256(); ND];
    for (j, w) in cuts.windows(2).enumerate() {
        let mut r = w[0];
        while r + 1 < w[1] {
            let a_row = 2 * r * rows.row;
            let b_row = 2 * ((r as isize + rows.di) as usize) * rows.row;
            for &v in strips {
                let a = load(rows.a, a_row + 2 * STRIP * v);
                let b_at = b_row + 2 * STRIP * v;
                for (d, acc) in acc.iter_mut().enumerate() {
                    let b = load(rows.b_pairs, b_at + 2 * d);
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(a, b));
                }
            }
            r += 2;
        }
        if r < w[1] {
            // The last row alone: B's row with zeros in place of the row below.
            let a_row = 2 * r * rows.row;
            let b_row = ((r as isize + rows.di) as usize) * rows.row;
            for &v in strips {
                let a = load(rows.a, a_row + 2 * STRIP * v);
                let b_at = b_row + STRIP * v;
                for (d, acc) in acc.iter_mut().enumerate() {
                    let b = load_single(rows.b_planes, b_at + d);
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(a, b));
                }
            }
        }
        for (snap, &a) in snaps[(j + 1) * ND..(j + 2) * ND].iter_mut().zip(&acc) {
            _mm256_storeu_si256(snap.as_mut_ptr() as *mut __m256i, a);
        }
    }
}

/// What the scatter of one block needs besides the sums.
struct Block {
    k: usize,
    wo: usize,
    p: usize,
    pair: (usize, usize, isize),
    n_slots: usize,
    /// Index of its first window row offset in the accumulators.
    first: usize,
}

/// Turns the accumulated sums of one `(c1, c2, di)` block into window sums and adds them to
/// the second moment (and its mirror entry).
#[target_feature(enable = "avx2")]
unsafe fn scatter(b: &Block, ai_range: Range<usize>, sc: &Scratch, second: &mut [u64]) {
    let (k, p, ns) = (b.k, b.p, b.n_slots);
    let (c1, c2, di) = b.pair;
    let nd = 2 * k - 1;
    let kk = k * k;
    // Where edge column x sits among the slots' lanes (`slot * 8 + lane`).
    let mut left_at = [0usize; 16];
    let mut right_at = [0usize; 16];
    for x in 0..k - 1 {
        left_at[x] = sc.slot_of[x / STRIP] * STRIP + x % STRIP;
        let y = b.wo + x;
        right_at[x] = sc.slot_of[y / STRIP] * STRIP + y % STRIP;
    }
    let mut cols = [0u32; 5 * STRIP];
    // left[j]: the first j columns; right[j]: the columns from wo + j on (to wo + k - 1).
    let mut left = [0u64; 16];
    let mut right = [0u64; 16];
    for (t, ai) in ai_range.enumerate() {
        let bi = (ai as isize + di) as usize;
        let at = (b.first + t) * nd;
        for d in 0..nd {
            let dj = d as isize - (k as isize - 1);
            if c1 == c2 && di == 0 && dj < 0 {
                continue; // the mirror entry is filled by symmetry
            }
            // All columns of the window rows: the interior total plus every edge strip lane.
            let mut t4 = _mm256_loadu_si256(sc.acc_tot[at + d].as_ptr() as *const __m256i);
            for slot in 0..ns {
                let e = _mm256_loadu_si256(sc.acc_edge[(at + d) * ns + slot].as_ptr() as *const _);
                _mm256_storeu_si256(cols.as_mut_ptr().add(slot * STRIP) as *mut __m256i, e);
                let lo = _mm256_cvtepu32_epi64(_mm256_castsi256_si128(e));
                let hi = _mm256_cvtepu32_epi64(_mm256_extracti128_si256::<1>(e));
                t4 = _mm256_add_epi64(t4, _mm256_add_epi64(lo, hi));
            }
            let mut lanes = [0u64; 4];
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, t4);
            let tot = lanes.iter().fold(0u64, |acc, &v| acc.wrapping_add(v));
            for x in 0..k - 1 {
                left[x + 1] = left[x] + u64::from(cols[left_at[x]]);
            }
            right[k - 1] = 0;
            for j in (0..k - 1).rev() {
                right[j] = right[j + 1] + u64::from(cols[right_at[j]]);
            }
            let row1 = c1 * kk + ai * k;
            let row2 = c2 * kk + bi * k;
            for aj in offset_range(k, dj) {
                let w = tot.wrapping_sub(left[aj]).wrapping_sub(right[aj]);
                let r1 = row1 + aj;
                let r2 = (row2 as isize + aj as isize + dj) as usize;
                second[r1 * p + r2] = second[r1 * p + r2].wrapping_add(w);
                if r1 != r2 {
                    second[r2 * p + r1] = second[r2 * p + r1].wrapping_add(w);
                }
            }
        }
    }
}
