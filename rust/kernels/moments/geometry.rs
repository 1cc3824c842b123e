//! What every moments kernel shares: the result type [`Moments`], the window geometry of one
//! padded image, and the index ranges of kernel offsets. The bottom of the module tree: it
//! imports nothing from the other files of `moments/`.

use std::ops::Range;

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

/// Window geometry of one (padded) image.
#[derive(Clone, Copy)]
pub(super) struct Geo {
    pub(super) k: usize,
    pub(super) s: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
    /// Columns of every product row: the padded width rounded up to whole vectors.
    pub(super) wc: usize,
}

/// Lanes the product rows are rounded up to (16 `u16` = one AVX2 register).
pub(super) const LANES: usize = 16;

/// Index range of offsets `a` in `[0, k)` with `a + d` also in `[0, k)`.
pub(super) fn offset_range(k: usize, d: isize) -> Range<usize> {
    let lo = (-d).max(0) as usize;
    let hi = (k as isize - d).min(k as isize).max(0) as usize;
    lo..hi
}

/// Blocks `(c1, c2, di)` in the order they are computed: channel pairs `c1 <= c2`, row shifts
/// from `-(k - 1)` (`0` for one channel with itself, the rest is its mirror) to `k - 1`. Only the
/// AVX2 kernels walk the blocks in this order.
#[cfg(target_arch = "x86_64")]
pub(super) fn blocks(c: usize, k: usize) -> impl Iterator<Item = (usize, usize, isize)> {
    let kd = k as isize - 1;
    (0..c).flat_map(move |c1| {
        (c1..c).flat_map(move |c2| {
            let lo = if c1 == c2 { 0 } else { -kd };
            (lo..=kd).map(move |di| (c1, c2, di))
        })
    })
}
