//! The shifted-products kernel for `u8` images at stride 1, written with AVX2 intrinsics.
//!
//! Same algorithm and same integers as the portable kernel in `moments.rs` (so the same bits),
//! arranged so that the work per product is three instructions:
//!
//! * pixels are `u16` in two interleaved copies of the planes: `pairs` holds a pixel and the one
//!   below it, `singles` a pixel and a zero. One `vpmaddwd` of an A pair with a B pair is the
//!   sum of two rows' products for 8 columns; with a B single, one row's;
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
//! images use the portable kernel); interior lanes are widened into `u64` totals before they can
//! wrap.

use std::arch::x86_64::*;
use std::ops::Range;

use crate::kernels::image::Planes;

/// Columns per strip (one `u32x8` register).
const STRIP: usize = 8;

/// Buffers of the kernel, kept by the caller's worker between images.
#[derive(Default)]
pub struct Scratch {
    singles: Vec<u16>,
    /// Running `u64` totals at each row cut: `[cut][dj]`, 4 lanes each.
    totals: Vec<[u64; 4]>,
    /// Running sums of the edge strips at each row cut: `[cut][slot][dj]`, 8 columns each.
    edges: Vec<[u32; 8]>,
    cuts: Vec<usize>,
    /// Edge slot of each strip, or `NO_SLOT`.
    slot_of: Vec<usize>,
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

/// Index range of offsets `a` in `[0, k)` with `a + d` also in `[0, k)`.
fn offset_range(k: usize, d: isize) -> Range<usize> {
    let lo = (-d).max(0) as usize;
    let hi = (k as isize - d).min(k as isize).max(0) as usize;
    lo..hi
}

/// Blocks `(c1, c2, di)` in the order they are computed: channel pairs `c1 <= c2`, row shifts
/// from `-(k - 1)` (`0` for one channel with itself, the rest is its mirror) to `k - 1`.
fn blocks(c: usize, k: usize) -> impl Iterator<Item = (usize, usize, isize)> {
    let kd = k as isize - 1;
    (0..c).flat_map(move |c1| {
        (c1..c).flat_map(move |c2| {
            let lo = if c1 == c2 { 0 } else { -kd };
            (lo..=kd).map(move |di| (c1, c2, di))
        })
    })
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
    sc.singles.clear();
    sc.singles.resize(2 * planes.len(), 0);
    for (d, &v) in sc.singles.iter_mut().step_by(2).zip(planes) {
        *d = v;
    }
    // Strips holding edge columns, [0, k - 1) on the left and [wo, wo + k - 1) on the right.
    let nv = s.wc / STRIP;
    sc.slot_of.clear();
    let mut n_slots = 0;
    for v in 0..nv {
        let (a, b) = (STRIP * v, STRIP * v + STRIP);
        let edge = a < k - 1 || (b > s.wo && a < s.wo + k - 1);
        sc.slot_of.push(if edge { n_slots } else { NO_SLOT });
        n_slots += usize::from(edge);
    }
    if sc.shape.is_none() {
        let n = blocks(s.c, k).count() * k * nd;
        sc.acc_tot.clear();
        sc.acc_tot.resize(n, [0; 4]);
        sc.acc_edge.clear();
        sc.acc_edge.resize(n * n_slots, [0; 8]);
        sc.shape = Some(s);
        sc.n_slots = n_slots;
    }
    sc.pending += 1;
    for (bidx, (c1, c2, di)) in blocks(s.c, k).enumerate() {
        let ai = offset_range(k, di);
        // Row cuts: every window starts at some ai and ends before ai + ho.
        sc.cuts.clear();
        sc.cuts.extend(ai.clone());
        sc.cuts.extend(ai.clone().map(|a| a + s.ho));
        sc.cuts.sort_unstable();
        sc.cuts.dedup();
        let n_cuts = sc.cuts.len();
        sc.totals.clear();
        sc.totals.resize(n_cuts * nd, [0; 4]);
        sc.edges.clear();
        sc.edges.resize(n_cuts * n_slots * nd, [0; 8]);
        let b_base = 2 * pl.offset(c2, 0, 0);
        let rows = Rows {
            a: &pairs[2 * pl.offset(c1, 0, 0)..],
            b_pairs: &pairs[b_base - 2 * (k - 1)..],
            b_singles: &sc.singles[b_base - 2 * (k - 1)..],
            row: 2 * pl.row_len,
            di,
            slot_of: &sc.slot_of,
        };
        for j in 1..n_cuts {
            let (r0, r1) = (sc.cuts[j - 1], sc.cuts[j]);
            let (done, next) = sc.totals.split_at_mut(j * nd);
            let tot = &mut next[..nd];
            tot.copy_from_slice(&done[(j - 1) * nd..]);
            let (done, next) = sc.edges.split_at_mut(j * n_slots * nd);
            let edge = &mut next[..n_slots * nd];
            edge.copy_from_slice(&done[(j - 1) * n_slots * nd..]);
            dispatch(nd, &rows, r0..r1, tot, edge);
        }
        // The window of offset ai covers rows [ai, ai + ho): a difference of running sums.
        let cut = |r: usize| sc.cuts.binary_search(&r).expect("rows are cut at windows");
        for (t, ai) in ai.enumerate() {
            let (ja, jb) = (cut(ai), cut(ai + s.ho));
            let at = (bidx * k + t) * nd;
            for d in 0..nd {
                let acc = sc.acc_tot[at + d].as_mut_ptr() as *mut __m256i;
                let ta = _mm256_loadu_si256(sc.totals[ja * nd + d].as_ptr() as *const _);
                let tb = _mm256_loadu_si256(sc.totals[jb * nd + d].as_ptr() as *const _);
                let sum = _mm256_add_epi64(_mm256_loadu_si256(acc), _mm256_sub_epi64(tb, ta));
                _mm256_storeu_si256(acc, sum);
                for slot in 0..n_slots {
                    let acc = sc.acc_edge[(at + d) * n_slots + slot].as_mut_ptr();
                    let acc = acc as *mut __m256i;
                    let ea = sc.edges[(ja * n_slots + slot) * nd + d].as_ptr();
                    let eb = sc.edges[(jb * n_slots + slot) * nd + d].as_ptr();
                    let diff = _mm256_sub_epi32(
                        _mm256_loadu_si256(eb as *const __m256i),
                        _mm256_loadu_si256(ea as *const __m256i),
                    );
                    _mm256_storeu_si256(acc, _mm256_add_epi32(_mm256_loadu_si256(acc), diff));
                }
            }
        }
    }
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

/// The rows one `(c1, c2, di)` block reads. `b_pairs` and `b_singles` start `k - 1` columns
/// left of column 0 of channel `c2`, so that shift `dj` reads at column `x + dj + k - 1 >= 0`.
struct Rows<'a> {
    a: &'a [u16],
    b_pairs: &'a [u16],
    b_singles: &'a [u16],
    /// `u16` elements from one interleaved row to the next.
    row: usize,
    di: isize,
    slot_of: &'a [usize],
}

/// Calls the row-piece kernel with the number of column shifts as a constant, so that its
/// sums live in registers.
#[target_feature(enable = "avx2")]
unsafe fn dispatch(
    nd: usize,
    rows: &Rows<'_>,
    r: Range<usize>,
    tot: &mut [[u64; 4]],
    edge: &mut [[u32; 8]],
) {
    macro_rules! go {
        ($($n:literal)*) => {
            match nd {
                $($n => piece::<$n>(rows, r, tot, edge),)*
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

/// Widens the `u32` lanes of `acc` into the `u64` lanes of `tot`.
#[inline(always)]
unsafe fn widen_into(tot: &mut [u64; 4], acc: __m256i) {
    let lo = _mm256_cvtepu32_epi64(_mm256_castsi256_si128(acc));
    let hi = _mm256_cvtepu32_epi64(_mm256_extracti128_si256::<1>(acc));
    let t = _mm256_loadu_si256(tot.as_ptr() as *const __m256i);
    let sum = _mm256_add_epi64(t, _mm256_add_epi64(lo, hi));
    _mm256_storeu_si256(tot.as_mut_ptr() as *mut __m256i, sum);
}

/// Adds the products of rows `r` (of A with B shifted by `di` and each of the `ND` column
/// shifts) to `tot` (the interior strips, all columns together) and `edge` (the edge strips,
/// per column).
#[target_feature(enable = "avx2")]
unsafe fn piece<const ND: usize>(
    rows: &Rows<'_>,
    r: Range<usize>,
    tot: &mut [[u64; 4]],
    edge: &mut [[u32; 8]],
) {
    // Each strip is its own loop over the rows, so that its ND sums stay in registers: the
    // interior strips all add into one set, each edge strip keeps its own.
    let n_slots = edge.len() / ND;
    let interior = rows.slot_of.len() - n_slots;
    // Interior lanes take at most 2 * 255^2 per instruction: widen before 2^32 / 130050.
    let flush_every = (33_000 / interior.max(1)).max(1);
    let mut acc = [_mm256_setzero_si256(); ND];
    let mut row = r.start;
    let mut since = 0;
    while row < r.end {
        // Two rows per instruction, or the last one alone (its partner times a zero).
        let single = row + 1 == r.end;
        let b_src = if single { rows.b_singles } else { rows.b_pairs };
        let a_row = row * rows.row;
        let b_row = ((row as isize + rows.di) as usize) * rows.row;
        for (v, _) in rows
            .slot_of
            .iter()
            .enumerate()
            .filter(|(_, &s)| s == NO_SLOT)
        {
            let a = load(rows.a, a_row + 2 * STRIP * v);
            let b_at = b_row + 2 * STRIP * v;
            for (d, acc) in acc.iter_mut().enumerate() {
                let b = load(b_src, b_at + 2 * d);
                *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(a, b));
            }
        }
        row += if single { 1 } else { 2 };
        since += 1;
        if since == flush_every {
            for (t, a) in tot.iter_mut().zip(&mut acc) {
                widen_into(t, *a);
                *a = _mm256_setzero_si256();
            }
            since = 0;
        }
    }
    for (t, &a) in tot.iter_mut().zip(&acc) {
        widen_into(t, a);
    }
    for (v, &slot) in rows
        .slot_of
        .iter()
        .enumerate()
        .filter(|(_, &s)| s != NO_SLOT)
    {
        // Edge columns sum at most MAX_ROWS rows: u32 lanes hold them.
        let mut acc = [_mm256_setzero_si256(); ND];
        let mut row = r.start;
        while row < r.end {
            let single = row + 1 == r.end;
            let b_src = if single { rows.b_singles } else { rows.b_pairs };
            let a = load(rows.a, row * rows.row + 2 * STRIP * v);
            let b_at = ((row as isize + rows.di) as usize) * rows.row + 2 * STRIP * v;
            for (d, acc) in acc.iter_mut().enumerate() {
                let b = load(b_src, b_at + 2 * d);
                *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(a, b));
            }
            row += if single { 1 } else { 2 };
        }
        for (e, &a) in edge[slot * ND..(slot + 1) * ND].iter_mut().zip(&acc) {
            let old = _mm256_loadu_si256(e.as_ptr() as *const __m256i);
            _mm256_storeu_si256(e.as_mut_ptr() as *mut __m256i, _mm256_add_epi32(old, a));
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
