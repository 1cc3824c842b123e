//! Second-moment statistics of all image patches: count, sum and `sum p p^T`.
//!
//! Two kernels give the same answer:
//!
//! * **direct**: gathers every patch, in blocks of 256, and adds each block's Gram matrix
//!   (`~p^2/2` multiply-adds per patch, `p = C k^2`; the `p x p` entries are touched once per
//!   block, which keeps `p = 3 x 32 x 32 = 3072` off the memory bus);
//! * **shifted products**: entry `M[(c,a),(c',b)]` is the sum of `x_c[q] x_c'[q + d]`, `d = b - a`,
//!   over the window positions shifted by `a`. For one channel pair and one shift `d` the products
//!   of a whole image are formed once (row by row, vectorised), summed down the columns, and the
//!   `k^2` window sums are read off with sliding sums. That is `~C^2 (2k-1)^2 / 2` multiply-adds
//!   per pixel instead of `~(C k^2)^2 / 2`.
//!
//! `u8` images accumulate in integers (`u16` pixels, `u32` column sums, `u64` totals), so the
//! result is exact and independent of the order of work. Float images accumulate in `f64`.
//!
//! The files form a tree, each importing only from the ones below it:
//!
//! * `mod.rs` (this file): [`patch_moments`], the entry point: checks, chunks of images over
//!   rayon, and per chunk the kernel ([`Method`], the CPU, the shape);
//! * `portable.rs`: the two kernels in portable code, generic over [`Accum`];
//! * `accum.rs`: the arithmetic families ([`Exact`], [`Float`]) and the [`Pixel`] types; the
//!   exact family's hook runs `strips_avx2` where it applies;
//! * `lanes_avx2.rs`, `strips_avx2.rs` (x86-64): the AVX2 kernels for `u8` images at stride 1,
//!   images in lanes (small images) and strips of one image (any size);
//! * `geometry.rs`: [`Moments`], the window geometry and the offset ranges they all use.

mod accum;
mod geometry;
#[cfg(target_arch = "x86_64")]
mod lanes_avx2;
mod portable;
#[cfg(target_arch = "x86_64")]
mod strips_avx2;

use std::ops::Range;

use self::accum::add_into;
pub use self::accum::{Accum, Exact, FastScratch, Float, Pixel};
pub use self::geometry::Moments;
use self::geometry::{Geo, LANES};
use self::portable::{direct_finish, image_direct, image_shifted, Scratch};
use crate::error::{CoreError, CoreResult};
use crate::kernels::image::{to_planar, Batch, Planes, Window};
use crate::kernels::simd;
use crate::parallel::{chunked_reduce, exact_chunk_items, CHUNK_ITEMS};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The faster of the two for the shape at hand ([`Method::choose`]).
    Auto,
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
    /// The faster kernel for `c` channels, a window `k` moved by `stride`, padded images of
    /// `hp x wp` pixels and `n_win` windows, from their operation counts and rates measured on
    /// 32 RGB images of 96 x 96 (one thread, both kernels on the same images):
    ///
    /// * shifted products: `C (C + 1) / 2 (2k - 1)^2` products of two planes per image
    ///   (`hp wp` each), whatever the stride; at stride 1 and `k <= 15` the AVX2 kernels run
    ///   instead, faster than anything else, so they are always taken there;
    /// * direct (the Gram matrix of blocks of 256 patches): `(C k^2)^2 / 2` multiply-adds per
    ///   window plus `(C k^2)^2` per image; its rate grows with `p = C k^2` (longer dot
    ///   products, 2 x 2 register blocks): 2x the shifted products' rate per unit up to
    ///   `p = 256`, `p / 128` above, 6x from `p = 768` (24 G multiply-adds/s at k = 16).
    ///
    /// Measured direct/shifted time: 0.37 at (k, stride) = (3, 3), 0.63 at (5, 2), 0.76 at
    /// (8, 3), 0.81 at (11, 3), 0.43 at (16, 4), 0.14 at (16, 8), 0.37 at (24, 4); the shifted
    /// products faster at (8, 2) (1.56), (11, 2) (1.52), (16, 2) (1.43): the model picks the
    /// faster at each.
    pub fn choose(
        c: usize,
        k: usize,
        stride: usize,
        (hp, wp): (usize, usize),
        n_win: usize,
    ) -> Self {
        if k == 1 {
            return Self::Direct;
        }
        if stride == 1 && k <= 15 {
            return Self::Shifted;
        }
        let p = (c * k * k) as f64;
        let rate = (p / 128.0).clamp(2.0, 6.0);
        let direct = (n_win as f64 * p * p / 2.0 + p * p) / rate;
        let shifted = (c * (c + 1) / 2 * (2 * k - 1) * (2 * k - 1)) as f64 * (hp * wp) as f64;
        if direct < shifted {
            Self::Direct
        } else {
            Self::Shifted
        }
    }
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
            // `Auto` is resolved in `patch_moments`; it would mean the shifted products.
            Method::Shifted | Method::Strips | Method::Portable | Method::Auto => {
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
    if job.method == Method::Direct {
        direct_finish::<T::Acc>(p, &mut sc, &mut part.second);
    }
    Ok(part)
}

/// The moments of a chunk of `u8` images by the images-in-lanes kernel (`lanes_avx2`), where
/// it applies: stride 1 and padded images of at most `MAX_PIXELS` (128 x 128). Against the strip
/// kernel (`strips_avx2`) on 32 to 128 pixel images at k = 3 to 11 it is faster everywhere
/// (`examples/moments_kernels.rs`: 2.7-5.8x at 32 x 32, 1.1-1.9x at 128 x 128).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn chunk_lanes<T: Pixel>(job: &Job<'_, T>, range: Range<usize>) -> Option<Moments<Tot<T>>> {
    use self::lanes_avx2 as lanes;
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
/// Memory: the result holds `p^2 + p (n_classes + 1)` totals (`p = C k^2`; `u64` or `f64`, so a
/// `3 x 32 x 32` window's `p x p` is 75.5 MB), and each chunk of images in flight its own partial
/// of that size: at most `max(2, 64 MiB / partial)` chunks run at once (`parallel.rs`), so at
/// k = 32 and C = 3 three copies (226 MB) plus per worker a block of 256 gathered patches (1.5 MB)
/// and the planar image; at k = 16 (4.7 MB per partial) up to 13 chunks run in parallel.
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
    let method = match method {
        Method::Auto => Method::choose(batch.c, win.k, win.stride, (hp, wp), ho * wo),
        m => m,
    };
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
            let methods = [
                Method::Direct,
                Method::Shifted,
                Method::Strips,
                Method::Portable,
            ];
            check_methods(&x, b, win, &methods, &format!("case {i}"));
        }
    }

    /// Each of `methods` on one case: count, sums and second moments equal the naive reference.
    fn check_methods(x: &[u8], b: Batch, win: Window, methods: &[Method], what: &str) {
        let (count, sum, m) = naive(x, b, win);
        for &method in methods {
            let got = patch_moments(x, b, win, None, 0, method, &[]).unwrap();
            assert_eq!(got.count, count, "{what} {method:?}");
            assert_eq!(got.sum, sum, "{what} {method:?}");
            assert_eq!(got.second, m, "{what} {method:?}");
        }
    }

    #[test]
    fn kernels_16_and_32_match_the_naive_reference() {
        // Patch embeddings (ViT-B/16, CLIP ViT-B/32): stride 1 and stride k, one and three
        // channels, both layouts, padding; the AVX2 kernels take k <= 15 only, so these run the
        // portable code whatever the method asks.
        let cases = [
            (2, 1, 20, 21, 16, 1, 0, Layout::Nchw),
            (2, 3, 18, 19, 16, 1, 0, Layout::Nhwc),
            (2, 3, 48, 33, 16, 16, 0, Layout::Nchw),
            (1, 1, 50, 40, 16, 16, 3, Layout::Nhwc),
            (1, 1, 34, 35, 32, 1, 0, Layout::Nchw),
            (1, 3, 33, 32, 32, 1, 0, Layout::Nhwc),
            (2, 1, 64, 70, 32, 32, 0, Layout::Nchw),
            (1, 3, 64, 32, 32, 32, 0, Layout::Nchw),
            (1, 4, 16, 17, 16, 1, 0, Layout::Nchw),
        ];
        for (i, &(n, c, h, w, k, stride, pad, layout)) in cases.iter().enumerate() {
            let b = Batch { n, c, h, w, layout };
            let x = data(n * c * h * w, 101 + i as u64);
            let methods = [
                Method::Direct,
                Method::Shifted,
                Method::Strips,
                Method::Auto,
            ];
            check_methods(
                &x,
                b,
                Window { k, stride, pad },
                &methods,
                &format!("case {i}"),
            );
        }
    }

    #[test]
    fn large_kernels_are_exact_past_u32() {
        // All-255 images with more windows than a u32 holds at 255^2 each (65,536+): every
        // entry of the second moment is count * 255^2 > 2^32. Direct: 1 x 300 x 300 at k = 2
        // (89,401 patches per image, past the direct kernel's flush every MAX_ROWS patches);
        // shifted: 300 x 300 at k = 2, and a 70,000-row image (past MAX_ROWS rows per
        // column sum: summed in blocks of rows).
        let cases = [
            (300, 300, 2, 1, Method::Direct),
            (300, 300, 2, 1, Method::Shifted),
            (70_000, 3, 2, 1, Method::Shifted),
        ];
        for (h, w, k, stride, method) in cases {
            let b = Batch {
                n: 1,
                c: 1,
                h,
                w,
                layout: Layout::Nchw,
            };
            let x = vec![255u8; h * w];
            let win = Window { k, stride, pad: 0 };
            let got = patch_moments(&x, b, win, None, 0, method, &[]).unwrap();
            let count = (((h - k) / stride + 1) * ((w - k) / stride + 1)) as u64;
            assert_eq!(got.count, count);
            assert!(count * 65025 > u64::from(u32::MAX), "{h}x{w} k={k}");
            assert!(
                got.second.iter().all(|&v| v == count * 65025),
                "{h}x{w} {method:?}"
            );
            assert!(got.sum.iter().all(|&v| v == count * 255));
        }
    }

    #[test]
    fn auto_picks_the_kernel_the_measurements_favour() {
        // (c, k, stride, padded side): the cases measured in `Method::choose`'s comment.
        let pick = |c: usize, k: usize, s: usize, side: usize| {
            let n = (side - k) / s + 1;
            Method::choose(c, k, s, (side, side), n * n)
        };
        assert_eq!(pick(3, 1, 1, 32), Method::Direct);
        assert_eq!(pick(3, 3, 1, 96), Method::Shifted); // AVX2
        assert_eq!(pick(3, 3, 3, 96), Method::Direct);
        assert_eq!(pick(3, 5, 2, 96), Method::Direct);
        assert_eq!(pick(3, 8, 2, 96), Method::Shifted);
        assert_eq!(pick(3, 8, 3, 96), Method::Direct);
        assert_eq!(pick(3, 11, 2, 96), Method::Shifted);
        assert_eq!(pick(3, 11, 3, 96), Method::Direct);
        assert_eq!(pick(3, 16, 1, 224), Method::Shifted);
        assert_eq!(pick(3, 16, 2, 96), Method::Shifted);
        assert_eq!(pick(3, 16, 4, 96), Method::Direct);
        assert_eq!(pick(3, 24, 4, 96), Method::Direct);
        assert_eq!(pick(3, 16, 16, 224), Method::Direct); // ViT-B/16
        assert_eq!(pick(3, 32, 32, 224), Method::Direct); // CLIP ViT-B/32
        assert_eq!(pick(3, 32, 1, 32), Method::Direct); // one window per image
        assert_eq!(pick(3, 4, 4, 224), Method::Direct); // ConvNeXt, Swin
        assert_eq!(pick(3, 11, 4, 227), Method::Direct); // AlexNet
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]
        /// Any window from 12 to 32 on any small batch: direct and shifted products agree with
        /// the naive reference (random shapes, strides, padding, layouts, channels 1 to 4).
        #[test]
        fn large_windows_agree_with_the_naive_reference(
            k in 12usize..=32,
            c in 1usize..=4,
            extra_h in 0usize..6,
            extra_w in 0usize..6,
            stride in 1usize..=33,
            pad in 0usize..3,
            nhwc in proptest::bool::ANY,
            seed in 0u64..1000,
        ) {
            let (h, w) = (k + extra_h, k + extra_w);
            let layout = if nhwc { Layout::Nhwc } else { Layout::Nchw };
            let b = Batch { n: 1, c, h, w, layout };
            let x = data(c * h * w, seed);
            let methods = [Method::Direct, Method::Shifted, Method::Strips, Method::Auto];
            check_methods(&x, b, Window { k, stride, pad }, &methods, "property");
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
