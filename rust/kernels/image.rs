//! Geometry of an image batch and its conversion to planar, zero-padded working copies.

use crate::error::{CoreError, CoreResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `(N, C, H, W)`: channels first (PyTorch).
    Nchw,
    /// `(N, H, W, C)`: channels last (PIL, numpy images).
    Nhwc,
}

/// Shape of a C-contiguous batch of images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub layout: Layout,
}

/// A sliding window: square kernel, stride and zero padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

/// Largest supported kernel, and the largest supported image side (keeps every index in range).
pub const MAX_KERNEL: usize = 64;
pub const MAX_SIDE: usize = 1 << 20;

impl Batch {
    pub fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Checks that a flat buffer of `len` elements holds this batch.
    pub fn check(&self, len: usize) -> CoreResult<()> {
        if self.c == 0 || self.h == 0 || self.w == 0 {
            return Err(CoreError::shape(
                "x",
                "an image batch with C, H, W >= 1",
                format!("C={}, H={}, W={}", self.c, self.h, self.w),
            ));
        }
        if self.h > MAX_SIDE || self.w > MAX_SIDE {
            return Err(CoreError::shape(
                "x",
                format!("image sides of at most {MAX_SIDE}"),
                format!("H={}, W={}", self.h, self.w),
            ));
        }
        let want = self.n.checked_mul(self.image_len());
        if want != Some(len) {
            return Err(CoreError::shape(
                "x",
                format!("{} elements for {:?}", want.unwrap_or(usize::MAX), self),
                format!("{len}"),
            ));
        }
        Ok(())
    }
}

impl Window {
    /// Validates the window against images of `h x w` pixels and returns the padded size and the
    /// number of window positions `(hp, wp, ho, wo)`.
    pub fn geometry(&self, h: usize, w: usize) -> CoreResult<(usize, usize, usize, usize)> {
        if self.k == 0 || self.k > MAX_KERNEL {
            return Err(CoreError::param(
                "kernel_size",
                format!("an integer in [1, {MAX_KERNEL}]"),
                self.k.to_string(),
            ));
        }
        if self.stride == 0 {
            return Err(CoreError::param("stride", "an integer >= 1", "0"));
        }
        if self.pad >= self.k {
            return Err(CoreError::param(
                "padding",
                format!("an integer in [0, kernel_size - 1 = {}]", self.k - 1),
                self.pad.to_string(),
            ));
        }
        let (hp, wp) = (h + 2 * self.pad, w + 2 * self.pad);
        if hp < self.k || wp < self.k {
            return Err(CoreError::shape(
                "x",
                format!(
                    "images of at least {k}x{k} pixels after padding (kernel_size={k}, padding={p})",
                    k = self.k,
                    p = self.pad
                ),
                format!("{h}x{w}"),
            ));
        }
        Ok((
            hp,
            wp,
            (hp - self.k) / self.stride + 1,
            (wp - self.k) / self.stride + 1,
        ))
    }
}

/// Where the planes of one padded image live in a working buffer: `C` planes of `hp` rows of
/// `row_len` values; pixel `(c, i, j)` (padded coordinates) is at
/// `(c * hp + i) * row_len + margin + j`. The zero margins on both sides of each row let shifted
/// rows be read over a fixed, vector-friendly width without bounds juggling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planes {
    pub hp: usize,
    pub wp: usize,
    pub margin: usize,
    pub row_len: usize,
}

impl Planes {
    /// Planes of `hp` rows holding `width >= wp` values between margins of `margin` zeros.
    pub fn new(hp: usize, wp: usize, margin: usize, width: usize) -> Self {
        Self {
            hp,
            wp,
            margin,
            row_len: width + 2 * margin,
        }
    }

    pub fn offset(&self, c: usize, i: usize, j: usize) -> usize {
        (c * self.hp + i) * self.row_len + self.margin + j
    }
}

/// Copies image `idx` of `x` into `out` laid out as `planes`, with a border of `pad` pixels
/// of value `border(c)` in channel `c` (the image of a zero pixel), converting each pixel of
/// channel `c` with `conv(c, value)`. `conv` may reject a value (NaN, Inf). Margins stay zero.
#[allow(clippy::too_many_arguments)]
pub fn to_planar<T: Copy, P: Copy + Default + PartialEq>(
    x: &[T],
    batch: &Batch,
    idx: usize,
    pad: usize,
    planes: Planes,
    out: &mut Vec<P>,
    conv: impl Fn(usize, T) -> Option<P>,
    border: impl Fn(usize) -> P,
) -> CoreResult<()> {
    let (c, h, w) = (batch.c, batch.h, batch.w);
    out.clear();
    out.resize(c * planes.hp * planes.row_len, P::default());
    if pad > 0 {
        for ch in 0..c {
            let v = border(ch);
            if v == P::default() {
                continue;
            }
            for i in 0..planes.hp {
                let row = &mut out[planes.offset(ch, i, 0)..][..planes.wp];
                if i < pad || i >= pad + h {
                    row.fill(v);
                } else {
                    row[..pad].fill(v);
                    row[pad + w..].fill(v);
                }
            }
        }
    }
    let img = &x[idx * batch.image_len()..(idx + 1) * batch.image_len()];
    let bad = || {
        CoreError::value(
            "x",
            format!("image {idx} contains NaN or infinite values; clean or mask them first"),
        )
    };
    match batch.layout {
        Layout::Nchw => {
            for ch in 0..c {
                for i in 0..h {
                    let src = &img[(ch * h + i) * w..(ch * h + i + 1) * w];
                    let dst = &mut out[planes.offset(ch, i + pad, pad)..][..w];
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d = conv(ch, s).ok_or_else(bad)?;
                    }
                }
            }
        }
        Layout::Nhwc => {
            for i in 0..h {
                for j in 0..w {
                    let src = &img[(i * w + j) * c..(i * w + j + 1) * c];
                    for (ch, &s) in src.iter().enumerate() {
                        out[planes.offset(ch, i + pad, j + pad)] = conv(ch, s).ok_or_else(bad)?;
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planar_matches_for_both_layouts() {
        // 1 image, 2 channels, 2x3 pixels; value = 100*c + 10*i + j.
        let (c, h, w) = (2, 2, 3);
        let val = |ch: usize, i: usize, j: usize| (100 * ch + 10 * i + j) as u16;
        let nchw: Vec<u16> = (0..c)
            .flat_map(|ch| (0..h).flat_map(move |i| (0..w).map(move |j| val(ch, i, j))))
            .collect();
        let nhwc: Vec<u16> = (0..h)
            .flat_map(|i| (0..w).flat_map(move |j| (0..c).map(move |ch| val(ch, i, j))))
            .collect();
        let mut a = Vec::new();
        let mut b = Vec::new();
        let bn = Batch {
            n: 1,
            c,
            h,
            w,
            layout: Layout::Nchw,
        };
        let bh = Batch {
            layout: Layout::Nhwc,
            ..bn
        };
        let planes = Planes::new(4, 5, 2, 5);
        to_planar(&nchw, &bn, 0, 1, planes, &mut a, |_, v| Some(v), |_| 0).unwrap();
        to_planar(&nhwc, &bh, 0, 1, planes, &mut b, |_, v| Some(v), |_| 0).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 2 * 4 * 9);
        assert_eq!(a[planes.offset(0, 0, 0)], 0); // padding
        assert_eq!(a[planes.offset(0, 1, 1)], val(0, 0, 0));
        assert_eq!(a[planes.offset(1, 2, 3)], val(1, 1, 2));
        assert_eq!(a.iter().filter(|&&v| v != 0).count(), 11); // every pixel but (0, 0, 0) = 0
    }

    #[test]
    fn geometry_rejects_bad_windows() {
        let win = |k, stride, pad| Window { k, stride, pad };
        assert_eq!(win(3, 1, 0).geometry(32, 32).unwrap(), (32, 32, 30, 30));
        assert_eq!(win(3, 2, 1).geometry(32, 32).unwrap(), (34, 34, 16, 16));
        assert!(win(0, 1, 0).geometry(8, 8).is_err());
        assert!(win(3, 0, 0).geometry(8, 8).is_err());
        assert!(win(9, 1, 0).geometry(8, 8).is_err());
        assert!(win(3, 1, 3).geometry(8, 8).is_err());
    }
}
