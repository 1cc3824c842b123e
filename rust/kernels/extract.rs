//! Patch extraction: the patches themselves, strided and sampled, in conv-weight order.
//!
//! A patch at window position `(i, j)` of image `n` is written as one row of `C k^2` values in
//! the order `(c, di, dj)`, the order of `conv.weight.flatten(1)` and `F.unfold`. Positions are
//! numbered `(n * ho + i) * wo + j` ("linear positions"); every plan writes rows in increasing
//! linear position.
//!
//! Three plans:
//!
//! * [`Plan::All`]: the rows `[start, end)` of the enumeration of every position;
//! * [`Plan::Sample`]: `m` distinct positions drawn uniformly over the whole batch, without
//!   replacement, in increasing order;
//! * [`Plan::PerImage`]: `min(m, ho * wo)` distinct positions per image, each image drawn from its
//!   own stream (seeded by the seed and the image's global index), rows `[start, end)`.
//!
//! Sparse samples (`13 m < total`) are drawn sequentially by Vitter's sequential sampling
//! (Algorithm D, switching to Algorithm A once the remaining fraction is large): `O(m)` expected
//! time, `O(1)` memory, from a seeded xoshiro256** stream, in blocks that are extracted in
//! parallel while the next block is drawn. Dense samples, where sequential sampling would cost
//! `O(total)` anyway, are the `m` positions of smallest hashed key, found by parallel passes over
//! fixed ranges ([`Dense`]). Either way the bits of the result depend on the seed only, never on
//! the number of threads.

use rayon::prelude::*;

use crate::error::{CoreError, CoreResult};
use crate::kernels::image::{Batch, Layout, Window};

/// Rows written by one parallel task (All and Sample plans).
const GRAIN: usize = 512;

/// Sampled positions drawn ahead, and extracted while the next block is drawn.
const SAMPLE_BLOCK: usize = 1 << 16;

// ---------------------------------------------------------------------------------------------
// Random numbers
// ---------------------------------------------------------------------------------------------

/// SplitMix64: seeds the main generator and derives per-image streams.
#[inline]
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256**: the generator behind every draw.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Self { s }
    }

    /// The stream of item `index` under `seed`: distinct, well-mixed seeds for distinct items.
    pub fn for_item(seed: u64, index: u64) -> Self {
        let mut sm = seed ^ 0x6A09_E667_F3BC_C909;
        let a = splitmix64(&mut sm);
        let mut sm2 = index.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ a;
        Self::new(splitmix64(&mut sm2))
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in the open interval (0, 1): never 0, so its logarithm is finite.
    #[inline]
    pub fn open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }
}

// ---------------------------------------------------------------------------------------------
// Sequential sampling without replacement
// ---------------------------------------------------------------------------------------------

/// `m` distinct indices of `0..total`, uniformly among all such subsets, yielded in increasing
/// order (Vitter 1987, "An efficient algorithm for sequential random sampling").
#[derive(Clone, Debug)]
pub struct Sampler {
    rng: Rng,
    /// Samples still to draw.
    n: u64,
    /// Records not yet passed.
    records: u64,
    /// Index of the next record.
    cur: u64,
    /// `U^(1/n)` carried between steps of Algorithm D.
    vprime: f64,
    /// Algorithm D until the sampling fraction exceeds 1/13, then Algorithm A for good.
    use_d: bool,
}

impl Sampler {
    /// Requires `m <= total`.
    pub fn new(total: u64, m: u64, rng: Rng) -> Self {
        let mut s = Self {
            rng,
            n: m.min(total),
            records: total,
            cur: 0,
            vprime: 0.0,
            use_d: true,
        };
        if s.n > 0 {
            s.vprime = s.pow_u(1.0 / s.n as f64);
        }
        s
    }

    /// `U^e` for a fresh uniform `U`.
    #[inline]
    fn pow_u(&mut self, e: f64) -> f64 {
        (self.rng.open01().ln() * e).exp()
    }

    /// Number of records to skip before the next selected one (Algorithm D, step D2-D4).
    fn skip_d(&mut self) -> u64 {
        let n = self.n as f64;
        let big_n = self.records as f64;
        let ninv = 1.0 / n;
        let nmin1inv = 1.0 / (n - 1.0);
        let qu1 = big_n - n + 1.0;
        loop {
            // D2: X = N (1 - V'), S = floor(X), rejected outright when S >= N - n + 1.
            let (x, s) = loop {
                let x = big_n * (1.0 - self.vprime);
                let s = x.floor();
                if s < qu1 {
                    break (x, s);
                }
                self.vprime = self.pow_u(ninv);
            };
            let u = self.rng.open01();
            let y1 = ((u * big_n / qu1).ln() * nmin1inv).exp();
            self.vprime = y1 * (1.0 - x / big_n) * (qu1 / (qu1 - s));
            if self.vprime <= 1.0 {
                // D3: squeeze acceptance; V' is reused as the next step's variate.
                return s as u64;
            }
            // D4: exact acceptance test.
            let mut y2 = 1.0;
            let mut top = big_n - 1.0;
            let (mut bottom, limit) = if n - 1.0 > s {
                (big_n - n, big_n - s)
            } else {
                (big_n - s - 1.0, qu1)
            };
            let mut t = big_n - 1.0;
            while t >= limit {
                y2 = (y2 * top) / bottom;
                top -= 1.0;
                bottom -= 1.0;
                t -= 1.0;
            }
            if big_n / (big_n - x) >= y1 * (y2.ln() * nmin1inv).exp() {
                self.vprime = self.pow_u(nmin1inv);
                return s as u64;
            }
            self.vprime = self.pow_u(ninv);
        }
    }

    /// Number of records to skip (Algorithm A), for `n >= 2`.
    fn skip_a(&mut self) -> u64 {
        let v = self.rng.open01();
        let mut s = 0u64;
        let mut top = (self.records - self.n) as f64;
        let mut big_n = self.records as f64;
        let mut quot = top / big_n;
        while quot > v {
            s += 1;
            top -= 1.0;
            big_n -= 1.0;
            quot = quot * top / big_n;
        }
        s
    }
}

impl Iterator for Sampler {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let s = if self.n == self.records {
            0
        } else if self.use_d && self.n > 1 && 13 * self.n < self.records {
            self.skip_d()
        } else if self.n == 1 {
            let v = if self.use_d {
                self.vprime
            } else {
                self.rng.open01()
            };
            // floor(N V) < N for V < 1; the min guards the last rounding step.
            ((self.records as f64 * v).floor() as u64).min(self.records - 1)
        } else {
            self.use_d = false;
            self.skip_a()
        };
        // Every branch keeps n - 1 records after the selected one; never run past the end.
        let s = s.min(self.records - self.n);
        let idx = self.cur + s;
        self.cur = idx + 1;
        self.records -= s + 1;
        self.n -= 1;
        Some(idx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.n).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

/// Dense samples (`13 m >= total`, where sequential Algorithm A costs `O(total)` anyway): the `m`
/// positions of smallest key, `key(pos)` being the SplitMix64 output at index `pos` of the
/// stream of `seed` (a bijection of `pos`, so keys are distinct). The `m` smallest of distinct
/// pseudo-random keys are a uniform `m`-subset; every pass below runs in parallel over fixed
/// ranges of positions and only integer counts are combined, so the result does not depend on
/// the number of threads.
#[derive(Clone, Copy, Debug)]
pub struct Dense {
    seed: u64,
    /// A position is selected when its key is at most this.
    threshold: u64,
}

/// Top key bits of the histogram that locates the threshold.
const DENSE_BITS: u32 = 16;
/// Fixed number of ranges the histogram passes are cut into.
const DENSE_RANGES: u64 = 16;
/// Up to this many positions, all keys are held and the threshold is selected directly.
const DENSE_DIRECT: u64 = 1 << 20;

impl Dense {
    #[inline(always)]
    pub fn key(&self, pos: u64) -> u64 {
        let mut z = self
            .seed
            .wrapping_add(pos.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[inline(always)]
    pub fn selected(&self, pos: u64) -> bool {
        self.key(pos) <= self.threshold
    }

    /// Requires `1 <= m <= total`.
    pub fn new(total: u64, m: u64, seed: u64) -> Self {
        let mut sm = seed ^ 0xBB67_AE85_84CA_A73B;
        let mut d = Self {
            seed: splitmix64(&mut sm),
            threshold: u64::MAX,
        };
        if total <= DENSE_DIRECT {
            let mut keys: Vec<u64> = (0..total).map(|pos| d.key(pos)).collect();
            let (_, kth, _) = keys.select_nth_unstable((m - 1) as usize);
            d.threshold = *kth;
            return d;
        }
        let range = |r: u64| {
            let len = total.div_ceil(DENSE_RANGES);
            (r * len).min(total)..((r + 1) * len).min(total)
        };
        let shift = 64 - DENSE_BITS;
        let hists: Vec<Vec<u64>> = (0..DENSE_RANGES)
            .into_par_iter()
            .map(|r| {
                let mut h = vec![0u64; 1 << DENSE_BITS];
                for pos in range(r) {
                    h[(d.key(pos) >> shift) as usize] += 1;
                }
                h
            })
            .collect();
        let mut cum = 0u64;
        let mut bucket = 0u64;
        for b in 0..1usize << DENSE_BITS {
            let c: u64 = hists.iter().map(|h| h[b]).sum();
            if cum + c >= m {
                bucket = b as u64;
                break;
            }
            cum += c;
        }
        let need = (m - cum) as usize; // in 1..=count of the bucket
        let mut cand: Vec<u64> = (0..DENSE_RANGES)
            .into_par_iter()
            .flat_map_iter(|r| {
                range(r)
                    .map(|pos| d.key(pos))
                    .filter(|k| k >> shift == bucket)
            })
            .collect();
        cand.sort_unstable();
        d.threshold = cand[need - 1];
        d
    }
}

// ---------------------------------------------------------------------------------------------
// Geometry and plans
// ---------------------------------------------------------------------------------------------

/// What to extract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Rows `[start, end)` of the enumeration of every position.
    All { start: u64, end: u64 },
    /// `m` positions drawn uniformly without replacement over the batch.
    Sample { m: u64, seed: u64 },
    /// `min(m, ho * wo)` positions per image; image `n` draws from the stream of its global
    /// index `image_offset + n`; rows `[start, end)` of the result.
    PerImage {
        m: u64,
        seed: u64,
        start: u64,
        end: u64,
    },
}

/// Validated geometry of one extraction.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub batch: Batch,
    pub win: Window,
    /// Window positions per column and per row.
    pub ho: usize,
    pub wo: usize,
    /// Values per patch, `C k^2`.
    pub p: usize,
}

impl Geometry {
    pub fn new(batch: Batch, win: Window) -> CoreResult<Self> {
        let (_, _, ho, wo) = win.geometry(batch.h, batch.w)?;
        Ok(Self {
            batch,
            win,
            ho,
            wo,
            p: batch.c * win.k * win.k,
        })
    }

    /// Positions per image.
    pub fn per_image(&self) -> u64 {
        (self.ho * self.wo) as u64
    }

    /// Positions in the batch.
    pub fn total(&self) -> u64 {
        self.batch.n as u64 * self.per_image()
    }

    /// Number of rows a plan writes, after checking its parameters.
    pub fn rows(&self, plan: Plan) -> CoreResult<u64> {
        let range = |start: u64, end: u64, all: u64| {
            if start > end || end > all {
                Err(CoreError::param(
                    "start, end",
                    format!("0 <= start <= end <= {all}"),
                    format!("start={start}, end={end}"),
                ))
            } else {
                Ok(end - start)
            }
        };
        match plan {
            Plan::All { start, end } => range(start, end, self.total()),
            Plan::Sample { m, .. } => {
                if m > self.total() {
                    Err(CoreError::param(
                        "max_patches",
                        format!(
                            "at most the number of patch positions, {} ({} images x {} x {})",
                            self.total(),
                            self.batch.n,
                            self.ho,
                            self.wo
                        ),
                        m.to_string(),
                    ))
                } else {
                    Ok(m)
                }
            }
            Plan::PerImage { m, start, end, .. } => {
                let all = self.batch.n as u64 * m.min(self.per_image());
                range(start, end, all)
            }
        }
    }

    /// `(image, i, j)` of a linear position.
    #[inline]
    fn split(&self, pos: u64) -> (usize, usize, usize) {
        let per = self.per_image();
        let img = (pos / per) as usize;
        let r = (pos % per) as usize;
        (img, r / self.wo, r % self.wo)
    }
}

// ---------------------------------------------------------------------------------------------
// Writing one patch
// ---------------------------------------------------------------------------------------------

/// Writes the patch at window position `(oi, oj)` of `img` (one image of the batch) to `dst`.
#[inline]
fn write_patch<T: Copy + Default>(img: &[T], g: &Geometry, oi: usize, oj: usize, dst: &mut [T]) {
    let (c, h, w) = (g.batch.c, g.batch.h, g.batch.w);
    let (k, s, pad) = (g.win.k, g.win.stride, g.win.pad);
    let (y0, x0) = (oi * s, oj * s); // padded coordinates of the top-left corner
    let inside = y0 >= pad && x0 >= pad && y0 + k <= h + pad && x0 + k <= w + pad;
    if inside {
        let (y0, x0) = (y0 - pad, x0 - pad);
        match g.batch.layout {
            Layout::Nchw => {
                for ch in 0..c {
                    for di in 0..k {
                        let src = &img[(ch * h + y0 + di) * w + x0..][..k];
                        dst[(ch * k + di) * k..][..k].copy_from_slice(src);
                    }
                }
            }
            Layout::Nhwc => match c {
                1 => nhwc_inside::<T, 1>(img, w, k, y0, x0, dst),
                3 => nhwc_inside::<T, 3>(img, w, k, y0, x0, dst),
                4 => nhwc_inside::<T, 4>(img, w, k, y0, x0, dst),
                _ => nhwc_inside_dyn(img, c, w, k, y0, x0, dst),
            },
        }
        return;
    }
    // Border: read each value through the padding.
    let at = |ch: usize, y: usize, x: usize| -> T {
        if y < pad || x < pad || y - pad >= h || x - pad >= w {
            return T::default();
        }
        let (y, x) = (y - pad, x - pad);
        match g.batch.layout {
            Layout::Nchw => img[(ch * h + y) * w + x],
            Layout::Nhwc => img[(y * w + x) * c + ch],
        }
    };
    for ch in 0..c {
        for di in 0..k {
            let row = &mut dst[(ch * k + di) * k..][..k];
            for (dj, d) in row.iter_mut().enumerate() {
                *d = at(ch, y0 + di, x0 + dj);
            }
        }
    }
}

/// Writes one patch: `(image, oi, oj, dst)`.
type PatchFn<T> = fn(&[T], &Geometry, usize, usize, &mut [T]);

/// Top-left corner (image coordinates) of a window that lies inside the image, else `None`.
#[inline(always)]
fn inside(g: &Geometry, oi: usize, oj: usize) -> Option<(usize, usize)> {
    let (k, s, pad) = (g.win.k, g.win.stride, g.win.pad);
    let (y0, x0) = (oi * s, oj * s);
    (y0 >= pad && x0 >= pad && y0 + k <= g.batch.h + pad && x0 + k <= g.batch.w + pad)
        .then(|| (y0 - pad, x0 - pad))
}

/// Channels-first patch with `K` known at compile time: `C K` fixed-size row copies.
fn patch_nchw<T: Copy + Default, const K: usize>(
    img: &[T],
    g: &Geometry,
    oi: usize,
    oj: usize,
    dst: &mut [T],
) {
    let Some((y0, x0)) = inside(g, oi, oj) else {
        return write_patch(img, g, oi, oj, dst);
    };
    let (h, w) = (g.batch.h, g.batch.w);
    for (ch, plane) in dst[..g.p].chunks_exact_mut(K * K).enumerate() {
        for (di, row) in plane.chunks_exact_mut(K).enumerate() {
            row.copy_from_slice(&img[(ch * h + y0 + di) * w + x0..][..K]);
        }
    }
}

/// Channels-last patch with `C` and `K` known at compile time.
fn patch_nhwc<T: Copy + Default, const C: usize, const K: usize>(
    img: &[T],
    g: &Geometry,
    oi: usize,
    oj: usize,
    dst: &mut [T],
) {
    let Some((y0, x0)) = inside(g, oi, oj) else {
        return write_patch(img, g, oi, oj, dst);
    };
    let w = g.batch.w;
    let dst = &mut dst[..C * K * K];
    for di in 0..K {
        let run = &img[((y0 + di) * w + x0) * C..][..K * C];
        for dj in 0..K {
            for ch in 0..C {
                dst[ch * K * K + di * K + dj] = run[dj * C + ch];
            }
        }
    }
}

/// The fastest writer for this geometry: specialised for common kernel sizes and channels.
fn patch_fn<T: Copy + Default>(g: &Geometry) -> PatchFn<T> {
    macro_rules! by_k {
        ($f:ident $(, $c:literal)?) => {
            match g.win.k {
                1 => $f::<T, $($c,)? 1> as PatchFn<T>,
                2 => $f::<T, $($c,)? 2>,
                3 => $f::<T, $($c,)? 3>,
                4 => $f::<T, $($c,)? 4>,
                5 => $f::<T, $($c,)? 5>,
                6 => $f::<T, $($c,)? 6>,
                7 => $f::<T, $($c,)? 7>,
                8 => $f::<T, $($c,)? 8>,
                9 => $f::<T, $($c,)? 9>,
                11 => $f::<T, $($c,)? 11>,
                _ => write_patch::<T>,
            }
        };
    }
    match (g.batch.layout, g.batch.c) {
        (Layout::Nchw, _) => by_k!(patch_nchw),
        (Layout::Nhwc, 1) => by_k!(patch_nhwc, 1),
        (Layout::Nhwc, 3) => by_k!(patch_nhwc, 3),
        (Layout::Nhwc, 4) => by_k!(patch_nhwc, 4),
        _ => write_patch::<T>,
    }
}

/// Channels-last patch fully inside the image, `C` known at compile time: each image row of the
/// window is one contiguous run of `k C` values, scattered to the `C` planes of the patch.
#[inline]
fn nhwc_inside<T: Copy, const C: usize>(
    img: &[T],
    w: usize,
    k: usize,
    y0: usize,
    x0: usize,
    dst: &mut [T],
) {
    // The same loop with the channel count known at compile time.
    nhwc_inside_dyn(img, C, w, k, y0, x0, dst);
}

#[inline(always)]
fn nhwc_inside_dyn<T: Copy>(
    img: &[T],
    c: usize,
    w: usize,
    k: usize,
    y0: usize,
    x0: usize,
    dst: &mut [T],
) {
    let kk = k * k;
    for di in 0..k {
        let run = &img[((y0 + di) * w + x0) * c..][..k * c];
        for (dj, px) in run.chunks_exact(c).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                dst[ch * kk + di * k + dj] = v;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------------

/// One parallel task: rows of the output with their optional position rows.
struct Task<'a, T> {
    out: &'a mut [T],
    pos: Option<&'a mut [i64]>,
}

/// Splits `out` (and `pos`) into consecutive tasks of `sizes[t]` rows each.
fn split_tasks<'a, T>(
    mut out: &'a mut [T],
    mut pos: Option<&'a mut [i64]>,
    p: usize,
    sizes: impl Iterator<Item = usize>,
) -> Vec<Task<'a, T>> {
    let mut tasks = Vec::new();
    for rows in sizes {
        let (head, tail) = std::mem::take(&mut out).split_at_mut(rows * p);
        out = tail;
        let head_pos = match pos.take() {
            Some(ps) => {
                let (a, b) = ps.split_at_mut(rows * 3);
                pos = Some(b);
                Some(a)
            }
            None => None,
        };
        tasks.push(Task {
            out: head,
            pos: head_pos,
        });
    }
    tasks
}

#[inline]
fn emit<T: Copy + Default>(
    (x, g, write): (&[T], &Geometry, PatchFn<T>),
    row: usize,
    (img, oi, oj): (usize, usize, usize),
    image_offset: u64,
    task: &mut Task<'_, T>,
) {
    let len = g.batch.image_len();
    write(
        &x[img * len..(img + 1) * len],
        g,
        oi,
        oj,
        &mut task.out[row * g.p..(row + 1) * g.p],
    );
    if let Some(pos) = task.pos.as_deref_mut() {
        pos[row * 3] = (image_offset + img as u64) as i64;
        pos[row * 3 + 1] = oi as i64;
        pos[row * 3 + 2] = oj as i64;
    }
}

/// Writes the patches chosen by `plan` into `out` (`rows * C k^2` values) and, when given, their
/// `(image_offset + image, i, j)` positions into `positions` (`rows * 3` values).
pub fn extract<T: Copy + Default + Send + Sync>(
    x: &[T],
    batch: Batch,
    win: Window,
    plan: Plan,
    image_offset: u64,
    out: &mut [T],
    positions: Option<&mut [i64]>,
) -> CoreResult<()> {
    batch.check(x.len())?;
    let g = Geometry::new(batch, win)?;
    let rows = usize::try_from(g.rows(plan)?)
        .map_err(|_| CoreError::param("max_patches", "a count that fits in memory", "more"))?;
    let want = rows.saturating_mul(g.p);
    if out.len() != want {
        return Err(CoreError::shape(
            "out",
            format!("({rows}, {}) ({want} values)", g.p),
            format!("{} values", out.len()),
        ));
    }
    if let Some(pos) = positions.as_deref() {
        if pos.len() != rows * 3 {
            return Err(CoreError::shape(
                "positions",
                format!("({rows}, 3)"),
                format!("{} values", pos.len()),
            ));
        }
    }
    if rows == 0 {
        return Ok(());
    }
    let ctx = (x, &g, patch_fn::<T>(&g));
    match plan {
        Plan::All { start, .. } => {
            let sizes = (0..rows.div_ceil(GRAIN)).map(|t| GRAIN.min(rows - t * GRAIN));
            let tasks = split_tasks(out, positions, g.p, sizes);
            tasks.into_par_iter().enumerate().for_each(|(t, mut task)| {
                let first = start + (t * GRAIN) as u64;
                let n_rows = task.out.len() / g.p;
                let (mut img, mut oi, mut oj) = g.split(first);
                for row in 0..n_rows {
                    emit(ctx, row, (img, oi, oj), image_offset, &mut task);
                    oj += 1;
                    if oj == g.wo {
                        oj = 0;
                        oi += 1;
                        if oi == g.ho {
                            oi = 0;
                            img += 1;
                        }
                    }
                }
            });
        }
        Plan::Sample { m, seed } if 13 * m >= g.total() => {
            let dense = Dense::new(g.total(), m, seed);
            // Fixed blocks of positions: count the selected ones, then extract each block
            // into its own rows.
            let total = g.total();
            let block = (total.div_ceil(1 << 16)).max(4096);
            let n_blocks = total.div_ceil(block) as usize;
            let span = |b: usize| b as u64 * block..((b as u64 + 1) * block).min(total);
            let counts: Vec<usize> = (0..n_blocks)
                .into_par_iter()
                .map(|b| span(b).filter(|&pos| dense.selected(pos)).count())
                .collect();
            let tasks = split_tasks(out, positions, g.p, counts.into_iter());
            tasks.into_par_iter().enumerate().for_each(|(b, mut task)| {
                let chosen = span(b).filter(|&pos| dense.selected(pos));
                for (row, pos) in chosen.enumerate() {
                    emit(ctx, row, g.split(pos), image_offset, &mut task);
                }
            });
        }
        Plan::Sample { m, seed } => {
            let mut sampler = Sampler::new(g.total(), m, Rng::new(seed));
            let draw = |sampler: &mut Sampler, buf: &mut Vec<u64>| {
                buf.clear();
                buf.extend(sampler.by_ref().take(SAMPLE_BLOCK));
            };
            let mut cur = Vec::with_capacity(SAMPLE_BLOCK);
            let mut next = Vec::with_capacity(SAMPLE_BLOCK);
            draw(&mut sampler, &mut cur);
            let sizes =
                (0..rows.div_ceil(SAMPLE_BLOCK)).map(|b| SAMPLE_BLOCK.min(rows - b * SAMPLE_BLOCK));
            for block in split_tasks(out, positions, g.p, sizes) {
                // Extract this block while the next one is drawn.
                let cur_ref = &cur;
                rayon::join(
                    || {
                        let n_rows = block.out.len() / g.p;
                        let sizes =
                            (0..n_rows.div_ceil(GRAIN)).map(|t| GRAIN.min(n_rows - t * GRAIN));
                        let tasks = split_tasks(block.out, block.pos, g.p, sizes);
                        tasks.into_par_iter().enumerate().for_each(|(t, mut task)| {
                            let ids = &cur_ref[t * GRAIN..][..task.out.len() / g.p];
                            for (row, &pos) in ids.iter().enumerate() {
                                emit(ctx, row, g.split(pos), image_offset, &mut task);
                            }
                        });
                    },
                    || draw(&mut sampler, &mut next),
                );
                std::mem::swap(&mut cur, &mut next);
            }
        }
        Plan::PerImage {
            m,
            seed,
            start,
            end,
        } => {
            let per = m.min(g.per_image());
            let (i0, i1) = ((start / per) as usize, end.div_ceil(per) as usize);
            // Rows of image i within [start, end).
            let span = |i: usize| {
                let lo = (i as u64 * per).max(start);
                let hi = ((i as u64 + 1) * per).min(end);
                (lo - i as u64 * per, hi - i as u64 * per)
            };
            let sizes = (i0..i1).map(|i| {
                let (lo, hi) = span(i);
                (hi - lo) as usize
            });
            let tasks = split_tasks(out, positions, g.p, sizes);
            tasks.into_par_iter().enumerate().for_each(|(t, mut task)| {
                let img = i0 + t;
                let (lo, hi) = span(img);
                let rng = Rng::for_item(seed, image_offset + img as u64);
                let sampler = Sampler::new(g.per_image(), per, rng);
                for (row, r) in sampler
                    .skip(lo as usize)
                    .take((hi - lo) as usize)
                    .enumerate()
                {
                    let r = r as usize;
                    emit(ctx, row, (img, r / g.wo, r % g.wo), image_offset, &mut task);
                }
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize, c: usize, h: usize, w: usize, layout: Layout) -> Batch {
        Batch { n, c, h, w, layout }
    }

    /// Reference: patch value `(c, di, dj)` read straight from the definition.
    fn reference(x: &[f64], b: Batch, win: Window, pos: (usize, usize, usize)) -> Vec<f64> {
        let (img, oi, oj) = pos;
        let mut v = Vec::new();
        for ch in 0..b.c {
            for di in 0..win.k {
                for dj in 0..win.k {
                    let y = (oi * win.stride + di) as isize - win.pad as isize;
                    let xx = (oj * win.stride + dj) as isize - win.pad as isize;
                    if y < 0 || xx < 0 || y >= b.h as isize || xx >= b.w as isize {
                        v.push(0.0);
                        continue;
                    }
                    let (y, xx) = (y as usize, xx as usize);
                    let idx = match b.layout {
                        Layout::Nchw => ((img * b.c + ch) * b.h + y) * b.w + xx,
                        Layout::Nhwc => ((img * b.h + y) * b.w + xx) * b.c + ch,
                    };
                    v.push(x[idx]);
                }
            }
        }
        v
    }

    fn run(x: &[f64], b: Batch, win: Window, plan: Plan) -> (Vec<f64>, Vec<i64>) {
        let g = Geometry::new(b, win).unwrap();
        let rows = g.rows(plan).unwrap() as usize;
        let mut out = vec![f64::NAN; rows * g.p];
        let mut pos = vec![-1; rows * 3];
        extract(x, b, win, plan, 0, &mut out, Some(&mut pos)).unwrap();
        (out, pos)
    }

    #[test]
    fn all_plan_matches_reference() {
        for layout in [Layout::Nchw, Layout::Nhwc] {
            for c in [1, 2, 3, 4, 5] {
                for (k, stride, pad) in [(1, 1, 0), (3, 1, 1), (3, 2, 0), (4, 3, 2), (5, 1, 4)] {
                    let b = batch(2, c, 7, 9, layout);
                    let win = Window { k, stride, pad };
                    let x: Vec<f64> = (0..b.n * b.image_len()).map(|v| v as f64 + 1.0).collect();
                    let g = Geometry::new(b, win).unwrap();
                    let total = g.total();
                    let (out, pos) = run(
                        &x,
                        b,
                        win,
                        Plan::All {
                            start: 0,
                            end: total,
                        },
                    );
                    for r in 0..total as usize {
                        let p = g.split(r as u64);
                        assert_eq!(
                            &pos[r * 3..r * 3 + 3],
                            &[p.0 as i64, p.1 as i64, p.2 as i64]
                        );
                        assert_eq!(out[r * g.p..(r + 1) * g.p], reference(&x, b, win, p)[..]);
                    }
                    // A sub-range equals the same rows of the whole.
                    let (part, _) = run(
                        &x,
                        b,
                        win,
                        Plan::All {
                            start: 3,
                            end: total - 2,
                        },
                    );
                    assert_eq!(part[..], out[3 * g.p..(total as usize - 2) * g.p]);
                }
            }
        }
    }

    #[test]
    fn sampled_rows_are_the_patches_at_their_positions() {
        let b = batch(3, 3, 12, 10, Layout::Nhwc);
        let win = Window {
            k: 3,
            stride: 1,
            pad: 1,
        };
        let x: Vec<f64> = (0..b.n * b.image_len()).map(|v| v as f64).collect();
        let g = Geometry::new(b, win).unwrap();
        let (out, pos) = run(&x, b, win, Plan::Sample { m: 50, seed: 7 });
        let lin: Vec<u64> = pos
            .chunks(3)
            .map(|p| (p[0] as u64 * g.ho as u64 + p[1] as u64) * g.wo as u64 + p[2] as u64)
            .collect();
        assert!(lin.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
        for (r, p) in pos.chunks(3).enumerate() {
            let p = (p[0] as usize, p[1] as usize, p[2] as usize);
            assert_eq!(out[r * g.p..(r + 1) * g.p], reference(&x, b, win, p)[..]);
        }
        assert_eq!(run(&x, b, win, Plan::Sample { m: 50, seed: 7 }).0, out);
        assert_ne!(run(&x, b, win, Plan::Sample { m: 50, seed: 8 }).1, pos);
    }

    #[test]
    fn per_image_ranges_compose() {
        let b = batch(4, 2, 6, 6, Layout::Nchw);
        let win = Window {
            k: 2,
            stride: 1,
            pad: 0,
        };
        let x: Vec<f64> = (0..b.n * b.image_len()).map(|v| v as f64).collect();
        let plan = |start, end| Plan::PerImage {
            m: 7,
            seed: 3,
            start,
            end,
        };
        let (all, pos) = run(&x, b, win, plan(0, 28));
        for r in 0..28 {
            assert_eq!(pos[r * 3] as usize, r / 7);
        }
        let g = Geometry::new(b, win).unwrap();
        let (mid, _) = run(&x, b, win, plan(5, 17));
        assert_eq!(mid[..], all[5 * g.p..17 * g.p]);
        // m >= positions per image: every position.
        let (every, _) = run(
            &x,
            b,
            win,
            Plan::PerImage {
                m: 1000,
                seed: 1,
                start: 0,
                end: 100,
            },
        );
        let (full, _) = run(&x, b, win, Plan::All { start: 0, end: 100 });
        assert_eq!(every, full);
    }

    #[test]
    fn sampler_is_sorted_distinct_and_complete() {
        for (total, m) in [
            (1, 1),
            (10, 10),
            (10, 0),
            (1000, 3),
            (1000, 999),
            (1 << 40, 100),
        ] {
            let v: Vec<u64> = Sampler::new(total, m, Rng::new(5)).collect();
            assert_eq!(v.len() as u64, m);
            assert!(v.windows(2).all(|w| w[0] < w[1]));
            assert!(v.iter().all(|&i| i < total));
        }
    }

    /// Chi-square statistic of the subset frequencies of `m`-subsets of `0..total`.
    fn subset_chi2(total: u64, m: u64, draws: usize) -> (f64, usize) {
        use std::collections::HashMap;
        let mut counts: HashMap<Vec<u64>, usize> = HashMap::new();
        for d in 0..draws {
            let v: Vec<u64> = Sampler::new(total, m, Rng::for_item(11, d as u64)).collect();
            *counts.entry(v).or_default() += 1;
        }
        // Number of subsets C(total, m).
        let mut cells = 1u64;
        for i in 0..m {
            cells = cells * (total - i) / (i + 1);
        }
        let expected = draws as f64 / cells as f64;
        let seen: f64 = counts
            .values()
            .map(|&o| (o as f64 - expected).powi(2) / expected)
            .sum();
        let unseen = (cells as usize - counts.len()) as f64 * expected;
        (seen + unseen, cells as usize - 1)
    }

    #[test]
    fn sampler_subsets_are_uniform() {
        // Algorithm A (m/N >= 1/13) and Algorithm D (m/N < 1/13): every subset equally likely.
        // Threshold: df + 5 sqrt(2 df), far beyond the 0.999 quantile of chi-square(df).
        for (total, m) in [(6, 3), (9, 2), (40, 2), (60, 3)] {
            let (chi2, df) = subset_chi2(total, m, 200_000);
            let limit = df as f64 + 5.0 * (2.0 * df as f64).sqrt();
            assert!(chi2 < limit, "N={total} m={m}: chi2={chi2:.1} df={df}");
        }
    }

    #[test]
    fn dense_subsets_are_uniform() {
        use std::collections::HashMap;
        for (total, m) in [(6u64, 3u64), (9, 2), (5, 5), (10, 1)] {
            let draws = 100_000;
            let mut counts: HashMap<Vec<u64>, usize> = HashMap::new();
            for d in 0..draws {
                let dense = Dense::new(total, m, d);
                let v: Vec<u64> = (0..total).filter(|&p| dense.selected(p)).collect();
                assert_eq!(v.len() as u64, m);
                *counts.entry(v).or_default() += 1;
            }
            let mut cells = 1u64;
            for i in 0..m {
                cells = cells * (total - i) / (i + 1);
            }
            assert_eq!(counts.len() as u64, cells);
            let expected = draws as f64 / cells as f64;
            let chi2: f64 = counts
                .values()
                .map(|&o| (o as f64 - expected).powi(2) / expected)
                .sum();
            let df = (cells - 1) as f64;
            assert!(
                chi2 <= df + 5.0 * (2.0 * df).sqrt() + 1e-9,
                "N={total} m={m}: {chi2}"
            );
        }
    }

    #[test]
    fn dense_histogram_threshold_equals_direct_selection() {
        let total = DENSE_DIRECT + 12_345;
        for m in [1, 777, total / 3, total] {
            let d = Dense::new(total, m, 4);
            let mut keys: Vec<u64> = (0..total).map(|p| d.key(p)).collect();
            keys.sort_unstable();
            assert_eq!(d.threshold, keys[(m - 1) as usize]);
        }
    }

    #[test]
    fn dense_and_sequential_plans_take_the_right_count() {
        let b = batch(5, 1, 9, 9, Layout::Nchw);
        let win = Window {
            k: 2,
            stride: 1,
            pad: 0,
        };
        let x: Vec<f64> = (0..b.n * b.image_len()).map(|v| v as f64).collect();
        let g = Geometry::new(b, win).unwrap();
        for m in [1, 10, 30, 200, 320] {
            let (out, pos) = run(&x, b, win, Plan::Sample { m, seed: 9 });
            assert_eq!(pos.len() as u64, 3 * m);
            for (r, p) in pos.chunks(3).enumerate() {
                let p = (p[0] as usize, p[1] as usize, p[2] as usize);
                assert_eq!(out[r * g.p..(r + 1) * g.p], reference(&x, b, win, p)[..]);
            }
        }
    }

    #[test]
    fn bad_requests_are_errors() {
        let b = batch(1, 1, 5, 5, Layout::Nchw);
        let win = Window {
            k: 3,
            stride: 1,
            pad: 0,
        };
        let x = vec![0.0f64; 25];
        let mut out = vec![0.0; 9 * 9];
        let e = extract(
            &x,
            b,
            win,
            Plan::Sample { m: 10, seed: 0 },
            0,
            &mut out,
            None,
        );
        assert!(matches!(
            e,
            Err(CoreError::Param {
                arg: "max_patches",
                ..
            })
        ));
        let mut small = vec![0.0; 8 * 9];
        let e = extract(
            &x,
            b,
            win,
            Plan::All { start: 0, end: 9 },
            0,
            &mut small,
            None,
        );
        assert!(matches!(e, Err(CoreError::Shape { arg: "out", .. })));
        let big = Window { k: 7, ..win };
        assert!(extract(&x, b, big, Plan::All { start: 0, end: 0 }, 0, &mut [], None).is_err());
    }
}
