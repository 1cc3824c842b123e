//! The portable kernels, generic over the arithmetic family: shifted products
//! ([`image_shifted`]) and direct outer products ([`image_direct`]) of one planar image.
//! `Accum::fast_second` lets a family replace the second moments of `image_shifted` by a
//! specialised kernel.

use std::ops::Range;

use crate::kernels::image::Planes;
use crate::kernels::moments::accum::{Accum, FastScratch};
use crate::kernels::moments::geometry::{offset_range, Geo};

/// Reusable buffers of one worker.
pub(super) struct Scratch<A: Accum> {
    pub(super) planes: Vec<A::Plane>,
    /// `planes` interleaved with itself `stride` rows further down: element `2q + e` is
    /// `planes[q + e * stride * row_len]`, so one pass over a "pair row" sums two window rows.
    pairs: Vec<A::Plane>,
    col: Vec<A::Col>,
    table: Vec<A::Total>,
    /// The direct kernel's gathered patches, transposed: `xt[r * GRAM + t]` is entry `r` of
    /// patch `t` of the block; `filled` patches are in.
    xt: Vec<A::Plane>,
    filled: usize,
    pub(super) fast: FastScratch,
}

impl<A: Accum> Scratch<A> {
    pub(super) fn new() -> Self {
        Self {
            planes: Vec::new(),
            pairs: Vec::new(),
            col: Vec::new(),
            table: Vec::new(),
            xt: Vec::new(),
            filled: 0,
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

/// Adds the moments of the planar image in `sc.planes` with the shifted-products kernel.
#[inline(always)]
pub(super) fn image_shifted<A: Accum>(
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

/// Patches per block of the direct kernel. A block's Gram matrix is formed with dot products of
/// `GRAM` terms in `A::Col` (for `u8`: at most 256 * 255^2 < 2^32, far below `MAX_ROWS` terms).
pub(super) const GRAM: usize = 256;

/// Rows of the block's `q` side kept hot while every `r <= q` streams past: 32 rows of 256
/// `u16` are 16 KiB, in L1.
const GRAM_ROWS: usize = 32;

/// Adds the moments of the planar image in `sc.planes` by gathering every patch: first moments
/// straight into `img_sum`, second moments as the Gram matrix of blocks of [`GRAM`] patches
/// (patches of several images share a block; [`direct_finish`] adds the last one).
///
/// Dot products over a block instead of one outer product per patch: each `p x p` entry is read
/// and written once per block instead of once per patch (a `3 x 32 x 32` patch has a 37 MB
/// upper triangle in `u32`, which one outer product per patch streams from memory), and the
/// pairs of `u8` products are the shape LLVM turns into `pmaddwd`.
#[inline(always)]
pub(super) fn image_direct<A: Accum>(
    c: usize,
    pl: Planes,
    g: Geo,
    sc: &mut Scratch<A>,
    second: &mut [A::Total],
    img_sum: &mut [A::Total],
) {
    let (k, s) = (g.k, g.s);
    let p = c * k * k;
    if sc.xt.len() != p * GRAM {
        sc.xt.clear();
        sc.xt.resize(p * GRAM, A::Plane::default());
        sc.filled = 0;
    }
    for m in 0..g.ho {
        for n in 0..g.wo {
            let t = sc.filled;
            let mut r = 0;
            for ch in 0..c {
                for i in 0..k {
                    let start = pl.offset(ch, s * m + i, s * n);
                    for &v in &sc.planes[start..start + k] {
                        sc.xt[r * GRAM + t] = v;
                        img_sum[r] =
                            A::add(img_sum[r], A::widen(A::plane_add(A::Col::default(), v)));
                        r += 1;
                    }
                }
            }
            sc.filled += 1;
            if sc.filled == GRAM {
                gram_block::<A>(p, sc, second);
            }
        }
    }
}

/// Adds the Gram matrix of the gathered block to the upper triangle of `second` and empties it.
#[inline(always)]
fn gram_block<A: Accum>(p: usize, sc: &mut Scratch<A>, second: &mut [A::Total]) {
    let n = sc.filled;
    if n == 0 {
        return;
    }
    // Whole pairs of terms: the slot after an odd count is zeroed for this block.
    let n2 = n.next_multiple_of(2);
    if n2 > n {
        for r in 0..p {
            sc.xt[r * GRAM + n] = A::Plane::default();
        }
    }
    let xt = &sc.xt;
    let row = |r: usize| &xt[r * GRAM..r * GRAM + n2];
    let dot = |a: &[A::Plane], b: &[A::Plane]| {
        let mut acc = A::Col::default();
        for (u, v) in a.chunks_exact(2).zip(b.chunks_exact(2)) {
            acc = A::mul_add2(acc, [u[0], u[1]], [v[0], v[1]]);
        }
        acc
    };
    // Two rows by two columns at once: four dot products share each loaded pair of terms, so
    // the loop does one load per multiply-add pair instead of two.
    let p2 = p & !1;
    for q0 in (0..p2).step_by(GRAM_ROWS) {
        let q1 = (q0 + GRAM_ROWS).min(p2);
        for r in (0..q1).step_by(2) {
            let (a0, a1) = (row(r), row(r + 1));
            for q in (q0.max(r)..q1).step_by(2) {
                let (b0, b1) = (row(q), row(q + 1));
                let mut acc = [A::Col::default(); 4];
                for (((u0, u1), v0), v1) in a0
                    .chunks_exact(2)
                    .zip(a1.chunks_exact(2))
                    .zip(b0.chunks_exact(2))
                    .zip(b1.chunks_exact(2))
                {
                    let (u0, u1, v0, v1) = (
                        [u0[0], u0[1]],
                        [u1[0], u1[1]],
                        [v0[0], v0[1]],
                        [v1[0], v1[1]],
                    );
                    acc[0] = A::mul_add2(acc[0], u0, v0);
                    acc[1] = A::mul_add2(acc[1], u0, v1);
                    acc[2] = A::mul_add2(acc[2], u1, v0);
                    acc[3] = A::mul_add2(acc[3], u1, v1);
                }
                let mut put = |i: usize, j: usize, v: A::Col| {
                    second[i * p + j] = A::add(second[i * p + j], A::widen(v));
                };
                put(r, q, acc[0]);
                put(r, q + 1, acc[1]);
                if q > r {
                    put(r + 1, q, acc[2]); // on the diagonal block this entry is below it
                }
                put(r + 1, q + 1, acc[3]);
            }
        }
    }
    if p2 < p {
        // The last row and column of an odd dimension.
        let last = row(p - 1);
        for r in 0..p {
            let v = dot(row(r), last);
            second[r * p + p - 1] = A::add(second[r * p + p - 1], A::widen(v));
        }
    }
    sc.filled = 0;
}

/// Finishes the direct kernel's chunk: adds the last block and mirrors the upper triangle of
/// `second` (the chunk's own partial, zero below the diagonal) into the lower one, in tiles.
#[inline(always)]
pub(super) fn direct_finish<A: Accum>(p: usize, sc: &mut Scratch<A>, second: &mut [A::Total]) {
    gram_block::<A>(p, sc, second);
    const TILE: usize = 64;
    for r0 in (0..p).step_by(TILE) {
        for q0 in (r0..p).step_by(TILE) {
            for r in r0..(r0 + TILE).min(p) {
                for q in q0.max(r + 1)..(q0 + TILE).min(p) {
                    second[q * p + r] = second[r * p + q];
                }
            }
        }
    }
}
