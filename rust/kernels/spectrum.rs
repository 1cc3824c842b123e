//! Batched 2D discrete Fourier transforms and mean power spectra of images.

use std::sync::Arc;

use rayon::prelude::*;
use rustfft::num_complex::Complex64;
use rustfft::{Fft, FftPlanner};

use crate::error::{CoreError, CoreResult};
use crate::kernels::image::Batch;
use crate::kernels::moments::Pixel;
use crate::parallel::{chunked_reduce, CHUNK_ITEMS};

/// Forward 2D DFT of `h x w` planes, planned once and applied to many.
pub struct Dft2 {
    h: usize,
    w: usize,
    rows: Arc<dyn Fft<f64>>,
    cols: Arc<dyn Fft<f64>>,
}

impl Dft2 {
    pub fn new(h: usize, w: usize) -> CoreResult<Self> {
        if h == 0 || w == 0 {
            return Err(CoreError::shape(
                "x",
                "planes of at least 1x1",
                format!("{h}x{w}"),
            ));
        }
        let mut planner = FftPlanner::new();
        Ok(Self {
            h,
            w,
            rows: planner.plan_fft_forward(w),
            cols: planner.plan_fft_forward(h),
        })
    }

    /// Transforms one row-major plane in place; `tmp` is a work buffer of any size.
    pub fn apply(&self, plane: &mut [Complex64], tmp: &mut Vec<Complex64>) {
        let (h, w) = (self.h, self.w);
        // rustfft transforms every consecutive run of `len` values: all rows in one call.
        self.rows.process(plane);
        tmp.clear();
        tmp.resize(h * w, Complex64::default());
        for i in 0..h {
            for j in 0..w {
                tmp[j * h + i] = plane[i * w + j];
            }
        }
        self.cols.process(tmp);
        for j in 0..w {
            for i in 0..h {
                plane[i * w + j] = tmp[j * h + i];
            }
        }
    }
}

/// 2D DFT (numpy's `fft2` convention: no normalisation) of `n` real planes of `h x w`.
pub fn dft2(x: &[f64], n: usize, h: usize, w: usize) -> CoreResult<Vec<Complex64>> {
    let plan = Dft2::new(h, w)?;
    if x.len() != n * h * w {
        return Err(CoreError::shape(
            "x",
            format!("{n}x{h}x{w} values"),
            x.len().to_string(),
        ));
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(CoreError::value("x", "contains NaN or infinite values"));
    }
    let mut out: Vec<Complex64> = x.iter().map(|&v| Complex64::new(v, 0.0)).collect();
    out.par_chunks_mut(h * w)
        .for_each_init(Vec::new, |tmp, plane| plan.apply(plane, tmp));
    Ok(out)
}

/// Sum over the images of a batch of `|DFT2(x_c)|^2` per channel: `(C, H, W)` values, in a
/// fixed reduction order (independent of the thread count).
pub fn power_sum<T: Pixel>(x: &[T], batch: Batch) -> CoreResult<Vec<f64>> {
    batch.check(x.len())?;
    let (c, h, w) = (batch.c, batch.h, batch.w);
    let plan = Dft2::new(h, w)?;
    let len = c * h * w;
    chunked_reduce(
        batch.n,
        CHUNK_ITEMS,
        len * 8,
        vec![0.0f64; len],
        |range| {
            let mut part = vec![0.0f64; len];
            let mut plane = vec![Complex64::default(); h * w];
            let mut tmp = Vec::new();
            for idx in range {
                let img = &x[idx * len..(idx + 1) * len];
                for ch in 0..c {
                    for i in 0..h {
                        for j in 0..w {
                            let off = match batch.layout {
                                crate::kernels::image::Layout::Nchw => (ch * h + i) * w + j,
                                crate::kernels::image::Layout::Nhwc => (i * w + j) * c + ch,
                            };
                            let v = img[off].to_f64().ok_or_else(|| {
                                CoreError::value(
                                    "x",
                                    format!("image {idx} contains NaN or infinite values"),
                                )
                            })?;
                            plane[i * w + j] = Complex64::new(v, 0.0);
                        }
                    }
                    plan.apply(&mut plane, &mut tmp);
                    for (acc, z) in part[ch * h * w..(ch + 1) * h * w].iter_mut().zip(&plane) {
                        *acc += z.norm_sqr();
                    }
                }
            }
            Ok(part)
        },
        |total, part| total.iter_mut().zip(&part).for_each(|(t, p)| *t += p),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::image::Layout;

    /// The defining sum, for comparison.
    fn naive(x: &[f64], h: usize, w: usize) -> Vec<Complex64> {
        let mut out = vec![Complex64::default(); h * w];
        for u in 0..h {
            for v in 0..w {
                for i in 0..h {
                    for j in 0..w {
                        let ang = -2.0
                            * std::f64::consts::PI
                            * ((u * i) as f64 / h as f64 + (v * j) as f64 / w as f64);
                        out[u * w + v] += Complex64::from_polar(x[i * w + j], ang);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn dft2_matches_the_definition() {
        for (h, w) in [(1, 1), (3, 3), (4, 7), (7, 5), (11, 11)] {
            let x: Vec<f64> = (0..2 * h * w)
                .map(|i| ((i * 37 % 17) as f64) - 8.0)
                .collect();
            let got = dft2(&x, 2, h, w).unwrap();
            for b in 0..2 {
                let want = naive(&x[b * h * w..(b + 1) * h * w], h, w);
                for (g, e) in got[b * h * w..(b + 1) * h * w].iter().zip(&want) {
                    assert!((g - e).norm() < 1e-9, "{h}x{w}: {g} vs {e}");
                }
            }
        }
    }

    #[test]
    fn power_sum_is_layout_independent_and_parseval_holds() {
        let (n, c, h, w) = (3, 2, 5, 6);
        let nchw: Vec<u8> = (0..n * c * h * w).map(|i| (i * 53 % 251) as u8).collect();
        let mut nhwc = vec![0u8; nchw.len()];
        for b in 0..n {
            for ch in 0..c {
                for i in 0..h {
                    for j in 0..w {
                        nhwc[((b * h + i) * w + j) * c + ch] = nchw[((b * c + ch) * h + i) * w + j];
                    }
                }
            }
        }
        let a = power_sum(
            &nchw,
            Batch {
                n,
                c,
                h,
                w,
                layout: Layout::Nchw,
            },
        )
        .unwrap();
        let b = power_sum(
            &nhwc,
            Batch {
                n,
                c,
                h,
                w,
                layout: Layout::Nhwc,
            },
        )
        .unwrap();
        assert_eq!(a, b);
        // Parseval: sum |X|^2 = H W sum x^2.
        let energy: f64 = nchw.iter().map(|&v| f64::from(v).powi(2)).sum();
        let total: f64 = a.iter().sum();
        assert!((total / (h * w) as f64 - energy).abs() < 1e-6 * energy);
    }
}
