//! Parallel decoding of image files (PNG, JPEG, BMP) into uint8 arrays.
//!
//! The pipeline follows torchvision's conventions on PIL images, step for step, so that the
//! result equals `python/firstlayer/sources.py`'s Pillow path:
//!
//! 1. decode and convert to RGB like `PIL.Image.convert("RGB")` (alpha dropped, palettes
//!    expanded, 16-bit RGB keeps the high byte, 16-bit grayscale is clipped to 255);
//! 2. `Resize(size)`: bilinear with antialiasing, the same separable triangle filter and 22-bit
//!    fixed-point arithmetic as Pillow's resampler (same pass order, each pass rounded to uint8);
//! 3. `CenterCrop(size)`: zero padding split as torchvision does, offsets rounded half to even
//!    (Python's `round`);
//! 4. grayscale: ITU-R 601-2 luma with Pillow's integer rounding.
//!
//! PNG and BMP are decoded by the `image` crate. Baseline JPEGs are decoded here (module
//! `libjpeg`), reproducing libjpeg-turbo's default output that Pillow returns (islow IDCT, fancy
//! chroma upsampling, fixed-point YCbCr -> RGB); other JPEGs (progressive, arithmetic, 4:4:0, ...)
//! fall back to the `image` crate's zune-jpeg, which may differ from Pillow by a few levels.
//!
//! Every failure (unreadable, corrupt or truncated file, even a decoder panic) becomes a reason
//! string; nothing panics and nothing is dropped silently.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use image::{DynamicImage, ImageFormat, ImageReader};
use rayon::prelude::*;

/// `transforms.Resize(size)`: an int sets the shorter side, a pair is the exact `(h, w)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resize {
    Shorter(usize),
    Exact(usize, usize),
}

/// What to do after decoding; see the module documentation for the order of the steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    pub grayscale: bool,
    pub resize: Option<Resize>,
    pub center_crop: Option<(usize, usize)>,
}

/// A decoded image: `h * w * channels` bytes in row-major HWC order (`channels` is 3 or 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub h: usize,
    pub w: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

/// Decode every file on `threads` threads (0: the global rayon pool), in input order.
pub fn decode_files(
    paths: &[PathBuf],
    opts: &DecodeOptions,
    threads: usize,
) -> Vec<Result<Decoded, String>> {
    let run = || {
        paths
            .par_iter()
            .map(|p| decode_file(p, opts))
            .collect::<Vec<_>>()
    };
    match pool(threads) {
        Some(p) => p.install(run),
        None => run(),
    }
}

/// The last dedicated pool built, with its number of threads.
type PoolCache = Mutex<Option<(usize, Arc<rayon::ThreadPool>)>>;

/// A dedicated pool of `threads` threads, cached across calls; `None` means the global pool.
fn pool(threads: usize) -> Option<Arc<rayon::ThreadPool>> {
    static CACHE: OnceLock<PoolCache> = OnceLock::new();
    if threads == 0 || threads == rayon::current_num_threads() {
        return None;
    }
    let mut cache = CACHE
        .get_or_init(|| Mutex::new(None))
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((n, p)) = cache.as_ref() {
        if *n == threads {
            return Some(Arc::clone(p));
        }
    }
    let p = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("firstlayer-decode-{i}"))
            .build()
            .ok()?,
    );
    *cache = Some((threads, Arc::clone(&p)));
    Some(p)
}

/// Read and decode one file; any failure (or panic) is returned as a reason.
pub fn decode_file(path: &Path, opts: &DecodeOptions) -> Result<Decoded, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("OSError: {e}"))?;
    decode_bytes(&bytes, opts)
}

/// Decode one encoded image held in memory; any failure (or panic) is returned as a reason.
pub fn decode_bytes(bytes: &[u8], opts: &DecodeOptions) -> Result<Decoded, String> {
    std::panic::catch_unwind(|| decode_unguarded(bytes, opts)).unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        Err(format!("DecoderPanic: {msg}"))
    })
}

fn decode_unguarded(bytes: &[u8], opts: &DecodeOptions) -> Result<Decoded, String> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("OSError: {e}"))?;
    let format = reader
        .format()
        .ok_or_else(|| "UnidentifiedImageError: cannot identify image file".to_string())?;
    if format == ImageFormat::Jpeg && !jpeg_complete(bytes) {
        return Err("OSError: image file is truncated (no end-of-image marker)".into());
    }
    if format == ImageFormat::Jpeg {
        if let Some((rgb, h, w)) = libjpeg::decode(bytes) {
            return Ok(process(rgb, h, w, opts));
        }
    }
    let img = reader
        .decode()
        .map_err(|e| format!("DecodeError ({format:?}): {e}"))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let rgb = to_rgb8(img)?;
    Ok(process(rgb, h, w, opts))
}

/// Resize, crop and convert an RGB image (`h * w * 3` bytes) as the options say.
pub fn process(rgb: Vec<u8>, h: usize, w: usize, opts: &DecodeOptions) -> Decoded {
    let (mut data, mut h, mut w) = (rgb, h, w);
    if let Some(size) = opts.resize {
        let (nh, nw) = resized_size(h, w, size);
        if (nh, nw) != (h, w) {
            data = resize_bilinear(&data, h, w, 3, nh, nw);
            (h, w) = (nh, nw);
        }
    }
    if let Some((ch, cw)) = opts.center_crop {
        data = center_crop(&data, h, w, 3, ch, cw);
        (h, w) = (ch, cw);
    }
    if opts.grayscale {
        data = luma(&data);
        return Decoded {
            h,
            w,
            channels: 1,
            data,
        };
    }
    Decoded {
        h,
        w,
        channels: 3,
        data,
    }
}

/// A JPEG file is complete when an end-of-image marker follows its first scan; truncated JPEGs
/// are an error in Pillow, while the Rust decoder would fill the missing part silently.
fn jpeg_complete(b: &[u8]) -> bool {
    if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return true; // not a JPEG stream we can judge; let the decoder decide
    }
    let mut i = 2;
    // Walk the marker segments up to the first start-of-scan.
    loop {
        if i >= b.len() || b[i] != 0xFF {
            return false;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1; // fill bytes
        }
        let Some(&m) = b.get(i) else { return false };
        i += 1;
        match m {
            0xDA => break,
            0xD9 => return false, // end of image before any scan
            0x01 | 0xD0..=0xD7 => {}
            _ => {
                let Some(len) = b.get(i..i + 2) else {
                    return false;
                };
                i += usize::from(u16::from_be_bytes([len[0], len[1]]));
            }
        }
    }
    // Entropy-coded data never holds 0xFF 0xD9: the first one after the scan header is the end.
    b[i..].windows(2).any(|p| p == [0xFF, 0xD9])
}

/// `PIL.Image.convert("RGB")` of what the decoder produced: `h * w * 3` bytes.
pub fn to_rgb8(img: DynamicImage) -> Result<Vec<u8>, String> {
    fn expand<T: Copy, const C: usize>(px: &[T], f: impl Fn(&[T]) -> [u8; 3]) -> Vec<u8> {
        let mut out = Vec::with_capacity(px.len() / C * 3);
        for p in px.chunks_exact(C) {
            out.extend_from_slice(&f(p));
        }
        out
    }
    let hi = |v: u16| (v >> 8) as u8; // Pillow reads 16-bit samples by their high byte ...
    let clip = |v: u16| v.min(255) as u8; // ... except 16-bit grayscale ("I;16"), which it clips
    Ok(match img {
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageRgba8(b) => expand::<u8, 4>(b.as_raw(), |p| [p[0], p[1], p[2]]),
        DynamicImage::ImageLuma8(b) => expand::<u8, 1>(b.as_raw(), |p| [p[0]; 3]),
        DynamicImage::ImageLumaA8(b) => expand::<u8, 2>(b.as_raw(), |p| [p[0]; 3]),
        DynamicImage::ImageRgb16(b) => {
            expand::<u16, 3>(b.as_raw(), |p| [hi(p[0]), hi(p[1]), hi(p[2])])
        }
        DynamicImage::ImageRgba16(b) => {
            expand::<u16, 4>(b.as_raw(), |p| [hi(p[0]), hi(p[1]), hi(p[2])])
        }
        DynamicImage::ImageLuma16(b) => expand::<u16, 1>(b.as_raw(), |p| [clip(p[0]); 3]),
        DynamicImage::ImageLumaA16(b) => expand::<u16, 2>(b.as_raw(), |p| [hi(p[0]); 3]),
        other => return Err(format!("unsupported pixel format {:?}", other.color())),
    })
}

/// Output `(h, w)` of `transforms.Resize(size)` (the shorter side truncated as torchvision does).
pub fn resized_size(h: usize, w: usize, size: Resize) -> (usize, usize) {
    match size {
        Resize::Exact(rh, rw) => (rh, rw),
        Resize::Shorter(s) => {
            let (short, long) = if w <= h { (w, h) } else { (h, w) };
            // Python: int(size * long / short), a correctly rounded float division, truncated.
            let new_long = ((s * long) as f64 / short as f64) as usize;
            if w <= h {
                (new_long, s)
            } else {
                (s, new_long)
            }
        }
    }
}

/// Fixed-point precision of the resampling coefficients (Pillow's 8-bit path).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per-output-sample filter taps: `bounds[i] = (first input index, tap count)` and `ksize`
/// fixed-point weights per output sample in `coeffs`.
struct Taps {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    coeffs: Vec<i32>,
}

/// The triangle ("bilinear") filter, widened by the downscale factor so that it antialiases.
fn taps(in_size: usize, out_size: usize) -> Taps {
    let triangle = |x: f64| {
        let x = x.abs();
        if x < 1.0 {
            1.0 - x
        } else {
            0.0
        }
    };
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the triangle's support is 1
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut coeffs = vec![0i32; out_size * ksize];
    let mut weights = vec![0f64; ksize];
    for (xx, k) in coeffs.chunks_exact_mut(ksize).enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) casts truncate toward zero, as Rust's `as` does.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut total = 0.0;
        for (x, wt) in weights[..n].iter_mut().enumerate() {
            *wt = triangle(((x + xmin) as f64 - center + 0.5) * ss);
            total += *wt;
        }
        for (c, &wt) in k.iter_mut().zip(&weights[..n]) {
            let v = if total == 0.0 { wt } else { wt / total };
            let v = v * f64::from(1u32 << PRECISION_BITS);
            *c = if v < 0.0 {
                (v - 0.5) as i32
            } else {
                (v + 0.5) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Taps {
        ksize,
        bounds,
        coeffs,
    }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `resize(..., BILINEAR)` of an `h * w * c` image to `nh * nw`: two separable passes,
/// each rounded to uint8. Pillow runs the horizontal pass first (over only the rows the vertical
/// pass reads), except when the image shrinks vertically by more than twice the columns it loses
/// horizontally; that rule was measured against Pillow 13 (it decides the rounding of the
/// intermediate image, hence bit-exactness).
pub fn resize_bilinear(src: &[u8], h: usize, w: usize, c: usize, nh: usize, nw: usize) -> Vec<u8> {
    assert_eq!(src.len(), h * w * c, "resize_bilinear: buffer size");
    if nh == 0 || nw == 0 || h == 0 || w == 0 {
        return vec![0; nh * nw * c];
    }
    match (nh != h, nw != w) {
        (false, false) => src.to_vec(),
        (false, true) => horizontal(src, w, c, 0..h, &taps(w, nw)),
        (true, false) => vertical(src, w * c, 0, &taps(h, nh)),
        (true, true) => {
            let vert = taps(h, nh);
            let vertical_first = nh < h && 2 * (w as i64 - nw as i64) < (h - nh) as i64;
            if vertical_first {
                let tmp = vertical(src, w * c, 0, &vert);
                horizontal(&tmp, w, c, 0..nh, &taps(w, nw))
            } else {
                let first = vert.bounds[0].0;
                let last = vert.bounds[nh - 1].0 + vert.bounds[nh - 1].1;
                let tmp = horizontal(src, w, c, first..last, &taps(w, nw));
                vertical(&tmp, nw * c, first, &vert)
            }
        }
    }
}

/// The horizontal pass over `rows` of a `w`-wide image with `c` channels.
fn horizontal(src: &[u8], w: usize, c: usize, rows: std::ops::Range<usize>, t: &Taps) -> Vec<u8> {
    let half = 1i32 << (PRECISION_BITS - 1);
    let nw = t.bounds.len();
    let mut out = vec![0u8; rows.len() * nw * c];
    for (orow, y) in out.chunks_exact_mut(nw * c).zip(rows) {
        let irow = &src[y * w * c..(y + 1) * w * c];
        for (xx, opx) in orow.chunks_exact_mut(c).enumerate() {
            let (xmin, n) = t.bounds[xx];
            let k = &t.coeffs[xx * t.ksize..xx * t.ksize + n];
            let ipx = &irow[xmin * c..(xmin + n) * c];
            if c == 3 {
                // The common case, all three channels in one sweep over the taps.
                let mut acc = [half; 3];
                for (&kv, p) in k.iter().zip(ipx.chunks_exact(3)) {
                    acc[0] += i32::from(p[0]) * kv;
                    acc[1] += i32::from(p[1]) * kv;
                    acc[2] += i32::from(p[2]) * kv;
                }
                for (o, a) in opx.iter_mut().zip(acc) {
                    *o = clip8(a);
                }
                continue;
            }
            for (ch, o) in opx.iter_mut().enumerate() {
                let mut acc = half;
                for (&kv, p) in k.iter().zip(ipx.chunks_exact(c)) {
                    acc += i32::from(p[ch]) * kv;
                }
                *o = clip8(acc);
            }
        }
    }
    out
}

/// The vertical pass; `src` holds rows `row0..` of the image, `stride` bytes each.
fn vertical(src: &[u8], stride: usize, row0: usize, t: &Taps) -> Vec<u8> {
    let half = 1i32 << (PRECISION_BITS - 1);
    let nh = t.bounds.len();
    let mut out = vec![0u8; nh * stride];
    let mut acc = vec![0i32; stride];
    for (yy, orow) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin, n) = t.bounds[yy];
        let k = &t.coeffs[yy * t.ksize..yy * t.ksize + n];
        acc.fill(half);
        for (y, &kv) in (ymin - row0..).zip(k) {
            for (a, &p) in acc.iter_mut().zip(&src[y * stride..(y + 1) * stride]) {
                *a += i32::from(p) * kv;
            }
        }
        for (o, &a) in orow.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Python's `int(round(d / 2.0))` for a non-negative integer `d` (round half to even).
fn half_round_even(d: usize) -> usize {
    let k = d / 2;
    if d % 2 == 1 && k % 2 == 1 {
        k + 1
    } else {
        k
    }
}

/// `transforms.CenterCrop((ch, cw))` of an `h * w * c` image, zero-padded (split as torchvision
/// does) where the crop is larger than the image.
pub fn center_crop(src: &[u8], h: usize, w: usize, c: usize, ch: usize, cw: usize) -> Vec<u8> {
    let (pad_t, pad_l) = (ch.saturating_sub(h) / 2, cw.saturating_sub(w) / 2);
    let (ph, pw) = (h.max(ch), w.max(cw));
    // Position of the crop inside the padded image.
    let (top, left) = (half_round_even(ph - ch), half_round_even(pw - cw));
    let mut out = vec![0u8; ch * cw * c];
    for y in 0..ch {
        // Row y of the crop is row (top + y - pad_t) of the source, when that exists.
        let Some(sy) = (top + y).checked_sub(pad_t).filter(|&sy| sy < h) else {
            continue;
        };
        for x in 0..cw {
            let Some(sx) = (left + x).checked_sub(pad_l).filter(|&sx| sx < w) else {
                continue;
            };
            let o = (y * cw + x) * c;
            let i = (sy * w + sx) * c;
            out[o..o + c].copy_from_slice(&src[i..i + c]);
        }
    }
    out
}

/// `PIL.Image.convert("L")` of RGB pixels: ITU-R 601-2 luma in Pillow's 16-bit fixed point.
pub fn luma(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .map(|p| {
            let v = u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471;
            ((v + 0x8000) >> 16) as u8
        })
        .collect()
}

/// A baseline (sequential Huffman, 8-bit) JPEG decoder that reproduces libjpeg(-turbo)'s default
/// output, which is what Pillow returns: the "islow" integer IDCT, "fancy" (triangle) chroma
/// upsampling for 4:2:2 and 4:2:0, and the fixed-point YCbCr -> RGB of `jdcolor.c`. Written from
/// the JPEG specification (ITU T.81) and the documented libjpeg algorithms. It answers `None` for
/// anything else (progressive, arithmetic coding, 12-bit, unusual sampling, CMYK), which the
/// generic decoder then handles.
mod libjpeg {
    /// One frame component.
    #[derive(Clone, Copy, Default)]
    struct Comp {
        id: u8,
        h: usize,
        v: usize,
        tq: usize,
    }

    /// A Huffman table: a 9-bit lookahead table plus the canonical `maxcode` slow path.
    struct Huff {
        fast: Vec<(u8, u8)>, // (code length, value); length 0: not in the fast table
        maxcode: [i32; 18],
        valptr: [i32; 17],
        mincode: [i32; 17],
        values: Vec<u8>,
    }

    const FAST_BITS: u32 = 9;

    impl Huff {
        fn new(counts: &[u8; 16], values: Vec<u8>) -> Option<Huff> {
            let mut fast = vec![(0u8, 0u8); 1 << FAST_BITS];
            let mut maxcode = [-1i32; 18];
            let mut valptr = [0i32; 17];
            let mut mincode = [0i32; 17];
            let (mut code, mut k) = (0i32, 0usize);
            for len in 1..=16 {
                let n = usize::from(counts[len - 1]);
                valptr[len] = k as i32;
                mincode[len] = code;
                for _ in 0..n {
                    let value = *values.get(k)?;
                    if len <= FAST_BITS as usize {
                        let shift = FAST_BITS as usize - len;
                        let base = (code as usize) << shift;
                        for e in fast.get_mut(base..base + (1 << shift))? {
                            *e = (len as u8, value);
                        }
                    }
                    code += 1;
                    k += 1;
                }
                if n > 0 {
                    maxcode[len] = code - 1;
                }
                code <<= 1;
            }
            maxcode[17] = i32::MAX;
            Some(Huff {
                fast,
                maxcode,
                valptr,
                mincode,
                values,
            })
        }
    }

    /// Entropy-coded data reader: removes stuffed zero bytes, stops at markers.
    struct Bits<'a> {
        data: &'a [u8],
        pos: usize,
        acc: u64,
        n: u32,
        marker: bool,
        overrun: usize,
    }

    impl<'a> Bits<'a> {
        fn fill(&mut self) {
            while self.n <= 56 {
                let mut byte = 0u8;
                if !self.marker && self.pos < self.data.len() {
                    byte = self.data[self.pos];
                    if byte == 0xFF {
                        match self.data.get(self.pos + 1) {
                            Some(0x00) => self.pos += 2,
                            _ => {
                                self.marker = true;
                                byte = 0;
                            }
                        }
                    } else {
                        self.pos += 1;
                    }
                } else {
                    self.overrun += 1;
                }
                self.acc |= u64::from(byte) << (56 - self.n);
                self.n += 8;
            }
        }
        fn peek(&mut self, k: u32) -> u32 {
            if self.n < k {
                self.fill();
            }
            (self.acc >> (64 - k)) as u32
        }
        fn skip(&mut self, k: u32) {
            self.acc <<= k;
            self.n -= k;
        }
        fn bits(&mut self, k: u32) -> u32 {
            if k == 0 {
                return 0;
            }
            let v = self.peek(k);
            self.skip(k);
            v
        }
        fn decode(&mut self, h: &Huff) -> Option<u8> {
            let look = self.peek(FAST_BITS) as usize;
            let (len, value) = h.fast[look];
            if len > 0 {
                self.skip(u32::from(len));
                return Some(value);
            }
            let mut code = self.bits(FAST_BITS) as i32;
            let mut len = FAST_BITS as usize;
            while code > h.maxcode[len] {
                len += 1;
                if len > 16 {
                    return None;
                }
                code = (code << 1) | self.bits(1) as i32;
            }
            h.values
                .get((h.valptr[len] + code - h.mincode[len]) as usize)
                .copied()
        }
        /// Sign-extend a `k`-bit magnitude category value (T.81 F.12 EXTEND).
        fn receive_extend(&mut self, k: u8) -> i32 {
            if k == 0 {
                return 0;
            }
            let v = self.bits(u32::from(k)) as i32;
            if v < 1 << (k - 1) {
                v - (1 << k) + 1
            } else {
                v
            }
        }
        /// At a restart marker: drop the bits left (padding) and skip the marker.
        fn restart(&mut self) -> bool {
            self.acc = 0;
            self.n = 0;
            self.overrun = 0;
            if !self.marker {
                while self.pos < self.data.len() && self.data[self.pos] != 0xFF {
                    self.pos += 1;
                }
            }
            while self.data.get(self.pos + 1) == Some(&0xFF) {
                self.pos += 1;
            }
            if matches!(self.data.get(self.pos + 1), Some(0xD0..=0xD7)) {
                self.pos += 2;
                self.marker = false;
                return true;
            }
            false
        }
    }

    const ZIGZAG: [usize; 64] = [
        0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27,
        20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
        58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
    ];

    /// libjpeg's `jpeg_idct_islow`: 13-bit constants, 2 extra bits after the column pass.
    fn idct_islow(coef: &[i32; 64], out: &mut [u8], stride: usize) {
        const CB: u32 = 13;
        const P1: u32 = 2;
        const F0298: i64 = 2446;
        const F0390: i64 = 3196;
        const F0541: i64 = 4433;
        const F0765: i64 = 6270;
        const F0899: i64 = 7373;
        const F1175: i64 = 9633;
        const F1501: i64 = 12299;
        const F1847: i64 = 15137;
        const F1961: i64 = 16069;
        const F2053: i64 = 16819;
        const F2562: i64 = 20995;
        const F3072: i64 = 25172;
        let descale = |x: i64, n: u32| (x + (1 << (n - 1))) >> n;
        // The shared butterfly: inputs in natural order 0..8, outputs before descaling.
        let butterfly = |d: [i64; 8]| -> [i64; 8] {
            let (z2, z3) = (d[2], d[6]);
            let z1 = (z2 + z3) * F0541;
            let tmp2 = z1 - z3 * F1847;
            let tmp3 = z1 + z2 * F0765;
            let (z2, z3) = (d[0], d[4]);
            let tmp0 = (z2 + z3) << CB;
            let tmp1 = (z2 - z3) << CB;
            let (t10, t13, t11, t12) = (tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2);
            let (mut o0, mut o1, mut o2, mut o3) = (d[7], d[5], d[3], d[1]);
            let z1 = o0 + o3;
            let z2 = o1 + o2;
            let z3 = o0 + o2;
            let z4 = o1 + o3;
            let z5 = (z3 + z4) * F1175;
            o0 *= F0298;
            o1 *= F2053;
            o2 *= F3072;
            o3 *= F1501;
            let z1 = -z1 * F0899;
            let z2 = -z2 * F2562;
            let z3 = -z3 * F1961 + z5;
            let z4 = -z4 * F0390 + z5;
            o0 += z1 + z3;
            o1 += z2 + z4;
            o2 += z2 + z3;
            o3 += z1 + z4;
            [
                t10 + o3,
                t11 + o2,
                t12 + o1,
                t13 + o0,
                t13 - o0,
                t12 - o1,
                t11 - o2,
                t10 - o3,
            ]
        };
        let mut ws = [0i64; 64];
        for col in 0..8 {
            let d: [i64; 8] = std::array::from_fn(|r| i64::from(coef[r * 8 + col]));
            if d[1..].iter().all(|&v| v == 0) {
                for r in 0..8 {
                    ws[r * 8 + col] = d[0] << P1;
                }
                continue;
            }
            let o = butterfly(d);
            for r in 0..8 {
                ws[r * 8 + col] = descale(o[r], CB - P1);
            }
        }
        for row in 0..8 {
            let d: [i64; 8] = std::array::from_fn(|c| ws[row * 8 + c]);
            if d[1..].iter().all(|&v| v == 0) {
                // libjpeg's zero-row shortcut (the same value the full pass gives).
                let v = (descale(d[0], P1 + 3) + 128).clamp(0, 255) as u8;
                out[row * stride..row * stride + 8].fill(v);
                continue;
            }
            let o = butterfly(d);
            for c in 0..8 {
                let v = descale(o[c], CB + P1 + 3) + 128;
                out[row * stride + c] = v.clamp(0, 255) as u8;
            }
        }
    }

    fn be16(b: &[u8], i: usize) -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *b.get(i)?,
            *b.get(i + 1)?,
        ])))
    }

    /// Decoded component planes (padded to whole MCUs) and their geometry.
    struct Planes {
        width: usize,
        height: usize,
        comps: Vec<Comp>,
        planes: Vec<Vec<u8>>,
        strides: Vec<usize>,
        hmax: usize,
        vmax: usize,
    }

    fn decode_planes(b: &[u8]) -> Option<Planes> {
        if b.get(0..2)? != [0xFF, 0xD8] {
            return None;
        }
        let mut qt = [[0i32; 64]; 4];
        let mut dc: Vec<Option<Huff>> = (0..4).map(|_| None).collect();
        let mut ac: Vec<Option<Huff>> = (0..4).map(|_| None).collect();
        let mut comps: Vec<Comp> = Vec::new();
        let (mut width, mut height) = (0usize, 0usize);
        let mut restart = 0usize;
        let mut adobe_rgb = false;
        let mut i = 2;
        loop {
            if *b.get(i)? != 0xFF {
                return None;
            }
            while *b.get(i)? == 0xFF {
                i += 1;
            }
            let m = *b.get(i)?;
            i += 1;
            if matches!(m, 0x01 | 0xD0..=0xD7) {
                continue;
            }
            let len = be16(b, i)?;
            let seg = b.get(i + 2..i + len)?;
            match m {
                0xC0 | 0xC1 => {
                    if seg[0] != 8 {
                        return None;
                    }
                    height = be16(seg, 1)?;
                    width = be16(seg, 3)?;
                    let n = usize::from(seg[5]);
                    if !(n == 1 || n == 3) || width == 0 || height == 0 {
                        return None;
                    }
                    for k in 0..n {
                        let c = seg.get(6 + 3 * k..9 + 3 * k)?;
                        comps.push(Comp {
                            id: c[0],
                            h: usize::from(c[1] >> 4),
                            v: usize::from(c[1] & 15),
                            tq: usize::from(c[2] & 3),
                        });
                    }
                }
                0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return None,
                0xC4 => {
                    let mut j = 0;
                    while j < seg.len() {
                        let (class, id) = (seg[j] >> 4, usize::from(seg[j] & 3));
                        let counts: [u8; 16] = seg.get(j + 1..j + 17)?.try_into().ok()?;
                        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
                        let values = seg.get(j + 17..j + 17 + total)?.to_vec();
                        let h = Huff::new(&counts, values)?;
                        if class == 0 {
                            dc[id] = Some(h);
                        } else {
                            ac[id] = Some(h);
                        }
                        j += 17 + total;
                    }
                }
                0xDB => {
                    let mut j = 0;
                    while j < seg.len() {
                        let (prec, id) = (seg[j] >> 4, usize::from(seg[j] & 3));
                        j += 1;
                        for &z in &ZIGZAG {
                            qt[id][z] = if prec == 0 {
                                i32::from(*seg.get(j)?)
                            } else {
                                be16(seg, j)? as i32
                            };
                            j += 1 + usize::from(prec);
                        }
                    }
                }
                0xDD => restart = be16(seg, 0)?,
                0xEE if seg.starts_with(b"Adobe") && seg.len() >= 12 => {
                    adobe_rgb = seg[11] == 0 && comps.len() != 1;
                }
                0xDA => {
                    i += len;
                    check_scan(seg, &comps)?;
                    if adobe_rgb || comps.iter().map(|c| c.id).eq(*b"RGB") {
                        return None; // RGB-coded JPEGs: no colour conversion in libjpeg
                    }
                    return decode_scan(b, i, seg, width, height, &comps, &qt, &dc, &ac, restart);
                }
                0xD9 => return None,
                _ => {}
            }
            i += len;
        }
    }

    /// The scan must be the single interleaved scan of every component, in frame order.
    fn check_scan(seg: &[u8], comps: &[Comp]) -> Option<()> {
        let n = usize::from(*seg.first()?);
        if n != comps.len() || comps.is_empty() {
            return None;
        }
        for (k, c) in comps.iter().enumerate() {
            if *seg.get(1 + 2 * k)? != c.id {
                return None;
            }
        }
        Some(())
    }

    #[allow(clippy::too_many_arguments)]
    fn decode_scan(
        b: &[u8],
        start: usize,
        seg: &[u8],
        width: usize,
        height: usize,
        comps: &[Comp],
        qt: &[[i32; 64]; 4],
        dc: &[Option<Huff>],
        ac: &[Option<Huff>],
        restart: usize,
    ) -> Option<Planes> {
        let n = comps.len();
        let sel: Vec<(usize, usize)> = (0..n)
            .map(|k| {
                let t = seg[2 + 2 * k];
                (usize::from(t >> 4) & 3, usize::from(t & 15) & 3)
            })
            .collect();
        let (hmax, vmax) = if n == 1 {
            (1, 1) // a single-component scan is not interleaved: one block per MCU
        } else {
            (
                comps.iter().map(|c| c.h).max()?,
                comps.iter().map(|c| c.v).max()?,
            )
        };
        if comps
            .iter()
            .any(|c| c.h == 0 || c.v == 0 || c.h > 2 || c.v > 2)
        {
            return None;
        }
        let mcux = width.div_ceil(8 * hmax);
        let mcuy = height.div_ceil(8 * vmax);
        let (hs, vs): (Vec<usize>, Vec<usize>) = if n == 1 {
            (vec![1], vec![1])
        } else {
            (
                comps.iter().map(|c| c.h).collect(),
                comps.iter().map(|c| c.v).collect(),
            )
        };
        let strides: Vec<usize> = hs.iter().map(|&h| mcux * h * 8).collect();
        let mut planes: Vec<Vec<u8>> = (0..n)
            .map(|k| vec![0u8; strides[k] * mcuy * vs[k] * 8])
            .collect();
        let mut bits = Bits {
            data: b,
            pos: start,
            acc: 0,
            n: 0,
            marker: false,
            overrun: 0,
        };
        let mut pred = vec![0i32; n];
        let mut coef = [0i32; 64];
        let mut todo = restart;
        for my in 0..mcuy {
            for mx in 0..mcux {
                if restart > 0 {
                    if todo == 0 {
                        if !bits.restart() {
                            return None;
                        }
                        pred.iter_mut().for_each(|p| *p = 0);
                        todo = restart;
                    }
                    todo -= 1;
                }
                for k in 0..n {
                    let c = comps[k];
                    let (dct, act) = (dc[sel[k].0].as_ref()?, ac[sel[k].1].as_ref()?);
                    let q = &qt[c.tq];
                    for by in 0..vs[k] {
                        for bx in 0..hs[k] {
                            coef.fill(0);
                            let t = bits.decode(dct)?;
                            pred[k] += bits.receive_extend(t);
                            coef[0] = pred[k] * q[0];
                            let mut z = 1;
                            let mut any_ac = false;
                            while z < 64 {
                                let rs = bits.decode(act)?;
                                let (r, s) = (usize::from(rs >> 4), rs & 15);
                                if s == 0 {
                                    if r != 15 {
                                        break;
                                    }
                                    z += 16;
                                    continue;
                                }
                                z += r;
                                if z > 63 {
                                    return None;
                                }
                                let zz = ZIGZAG[z];
                                coef[zz] = bits.receive_extend(s) * q[zz];
                                any_ac = true;
                                z += 1;
                            }
                            let x0 = (mx * hs[k] + bx) * 8;
                            let y0 = (my * vs[k] + by) * 8;
                            let s = strides[k];
                            let out = &mut planes[k][y0 * s + x0..];
                            if any_ac {
                                idct_islow(&coef, out, s);
                            } else {
                                // DC only: the IDCT is a constant, ((dc << 2) + 16) >> 5 + 128.
                                let v = ((i64::from(coef[0]) * 4 + 16) >> 5) + 128;
                                let v = v.clamp(0, 255) as u8;
                                for r in 0..8 {
                                    out[r * s..r * s + 8].fill(v);
                                }
                            }
                        }
                    }
                }
            }
            if bits.overrun > 8 {
                return None; // ran out of data: truncated
            }
        }
        let comps = if n == 1 {
            vec![Comp {
                h: 1,
                v: 1,
                ..comps[0]
            }]
        } else {
            comps.to_vec()
        };
        Some(Planes {
            width,
            height,
            comps,
            planes,
            strides,
            hmax,
            vmax,
        })
    }

    /// libjpeg's "fancy" upsampling of one component to full resolution (`width x height`).
    fn upsample(p: &Planes, k: usize) -> Option<Vec<u8>> {
        let c = p.comps[k];
        let (fx, fy) = (p.hmax / c.h, p.vmax / c.v);
        let plane = &p.planes[k];
        let s = p.strides[k];
        // The component's own size, as libjpeg computes it (ceil).
        let cw = (p.width * c.h).div_ceil(p.hmax);
        let ch = (p.height * c.v).div_ceil(p.vmax);
        let row = |y: usize| &plane[y.min(ch - 1) * s..y.min(ch - 1) * s + cw];
        let (w, h) = (p.width, p.height);
        let mut out = vec![0u8; w * h];
        if cw <= 2 && (fx, fy) != (1, 1) {
            // libjpeg's fancy upsampling needs 3 columns; it replicates otherwise.
            for y in 0..h {
                let r = row(y / fy);
                for x in 0..w {
                    out[y * w + x] = r[x / fx];
                }
            }
            return Some(out);
        }
        match (fx, fy) {
            (1, 1) => {
                for y in 0..h {
                    out[y * w..(y + 1) * w].copy_from_slice(&row(y)[..w]);
                }
            }
            (2, 1) => {
                let mut line = vec![0u8; cw * 2];
                for y in 0..h {
                    h2v1(row(y), &mut line);
                    out[y * w..(y + 1) * w].copy_from_slice(&line[..w]);
                }
            }
            (2, 2) => {
                let mut line = vec![0u8; cw * 2];
                let mut sums = vec![0i32; cw];
                for y in 0..h {
                    let here = row(y / 2);
                    // Even output rows lean on the row above, odd ones on the row below.
                    let other = if y % 2 == 0 {
                        row((y / 2).saturating_sub(1))
                    } else {
                        row(y / 2 + 1)
                    };
                    for (sm, (&a, &b2)) in sums.iter_mut().zip(here.iter().zip(other)) {
                        *sm = i32::from(a) * 3 + i32::from(b2);
                    }
                    h2v2_row(&sums, &mut line);
                    out[y * w..(y + 1) * w].copy_from_slice(&line[..w]);
                }
            }
            _ => return None,
        }
        Some(out)
    }

    fn h2v1(inp: &[u8], out: &mut [u8]) {
        let n = inp.len();
        if n == 1 {
            out[0] = inp[0];
            out[1] = inp[0];
            return;
        }
        let v = |i: usize| i32::from(inp[i]);
        out[0] = inp[0];
        out[1] = ((v(0) * 3 + v(1) + 2) >> 2) as u8;
        for i in 1..n - 1 {
            let t = v(i) * 3;
            out[2 * i] = ((t + v(i - 1) + 1) >> 2) as u8;
            out[2 * i + 1] = ((t + v(i + 1) + 2) >> 2) as u8;
        }
        out[2 * n - 2] = ((v(n - 1) * 3 + v(n - 2) + 1) >> 2) as u8;
        out[2 * n - 1] = inp[n - 1];
    }

    fn h2v2_row(sums: &[i32], out: &mut [u8]) {
        let n = sums.len();
        if n == 1 {
            out[0] = ((sums[0] * 4 + 8) >> 4) as u8;
            out[1] = ((sums[0] * 4 + 7) >> 4) as u8;
            return;
        }
        out[0] = ((sums[0] * 4 + 8) >> 4) as u8;
        out[1] = ((sums[0] * 3 + sums[1] + 7) >> 4) as u8;
        for i in 1..n - 1 {
            out[2 * i] = ((sums[i] * 3 + sums[i - 1] + 8) >> 4) as u8;
            out[2 * i + 1] = ((sums[i] * 3 + sums[i + 1] + 7) >> 4) as u8;
        }
        out[2 * n - 2] = ((sums[n - 1] * 3 + sums[n - 2] + 8) >> 4) as u8;
        out[2 * n - 1] = ((sums[n - 1] * 4 + 7) >> 4) as u8;
    }

    /// Decode to `(rgb, h, w)` like libjpeg's defaults, or `None` for what this does not cover.
    pub(super) fn decode(b: &[u8]) -> Option<(Vec<u8>, usize, usize)> {
        let p = decode_planes(b)?;
        let (w, h) = (p.width, p.height);
        if p.comps.len() == 1 {
            let y = upsample(&p, 0)?;
            let mut rgb = vec![0u8; w * h * 3];
            for (o, &v) in rgb.chunks_exact_mut(3).zip(&y) {
                o.fill(v);
            }
            return Some((rgb, h, w));
        }
        if p.comps[0].h != p.hmax || p.comps[0].v != p.vmax {
            return None;
        }
        let y = upsample(&p, 0)?;
        let cb = upsample(&p, 1)?;
        let cr = upsample(&p, 2)?;
        const HALF: i32 = 1 << 15;
        let fix = |x: f64| (x * 65536.0 + 0.5) as i32;
        let (cr_r, cb_b, cr_g, cb_g) = (fix(1.40200), fix(1.77200), fix(0.71414), fix(0.34414));
        let t: [[i32; 256]; 4] = std::array::from_fn(|k| {
            std::array::from_fn(|i| {
                let x = i as i32 - 128;
                match k {
                    0 => (cr_r * x + HALF) >> 16,
                    1 => (cb_b * x + HALF) >> 16,
                    2 => -cr_g * x,
                    _ => -cb_g * x + HALF,
                }
            })
        });
        let clamp = |v: i32| v.clamp(0, 255) as u8;
        let mut rgb = vec![0u8; w * h * 3];
        for (o, ((&yv, &cbv), &crv)) in rgb.chunks_exact_mut(3).zip(y.iter().zip(&cb).zip(&cr)) {
            let (yv, cbv, crv) = (i32::from(yv), usize::from(cbv), usize::from(crv));
            o[0] = clamp(yv + t[0][crv]);
            o[1] = clamp(yv + ((t[3][cbv] + t[2][crv]) >> 16));
            o[2] = clamp(yv + t[1][cbv]);
        }
        Some((rgb, h, w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luma_matches_pillow_on_primaries() {
        // Pillow: convert("L") of pure red, green, blue, white, and a mid grey.
        let px = [
            255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255, 128, 128, 128,
        ];
        assert_eq!(luma(&px), vec![76, 150, 29, 255, 128]);
    }

    #[test]
    fn resized_size_follows_torchvision() {
        assert_eq!(resized_size(32, 32, Resize::Shorter(256)), (256, 256));
        assert_eq!(resized_size(375, 500, Resize::Shorter(256)), (256, 341));
        assert_eq!(resized_size(500, 333, Resize::Shorter(224)), (336, 224));
        assert_eq!(resized_size(10, 20, Resize::Exact(7, 9)), (7, 9));
    }

    #[test]
    fn identity_and_constant_resizes() {
        let img: Vec<u8> = (0..5 * 7 * 3).map(|v| (v * 7 % 256) as u8).collect();
        assert_eq!(resize_bilinear(&img, 5, 7, 3, 5, 7), img);
        let flat = vec![200u8; 13 * 17 * 3];
        for (nh, nw) in [(4, 5), (30, 40), (13, 3), (1, 1)] {
            let out = resize_bilinear(&flat, 13, 17, 3, nh, nw);
            assert!(out.iter().all(|&v| v == 200), "{nh}x{nw}");
        }
    }

    #[test]
    fn halving_averages_pairs() {
        // Downscale by exactly 2: taps [0.25, 0.5, 0.25] centred between two pixels average
        // the pair (the outer taps reach beyond, so check a constant-pair pattern).
        let row = [10u8, 10, 50, 50, 90, 90];
        let out = resize_bilinear(&row, 1, 6, 1, 1, 3);
        assert_eq!(out.len(), 3);
        assert!(out[0] < out[1] && out[1] < out[2], "{out:?}");
    }

    #[test]
    fn center_crop_rounds_half_to_even_and_pads() {
        let img: Vec<u8> = (0..6u8).collect(); // 1 x 6, one channel
                                               // (6 - 3) / 2 = 1.5 rounds to 2 (Python's round).
        assert_eq!(center_crop(&img, 1, 6, 1, 1, 3), vec![2, 3, 4]);
        // (6 - 1) / 2 = 2.5 rounds to 2.
        assert_eq!(center_crop(&img, 1, 6, 1, 1, 1), vec![2]);
        // Larger crop: pad left (9 - 6) // 2 = 1, right 2; one row above, one below (3 - 1).
        let out = center_crop(&img, 1, 6, 1, 3, 9);
        assert_eq!(&out[9..18], &[0, 0, 1, 2, 3, 4, 5, 0, 0]);
        assert!(out[..9].iter().chain(&out[18..]).all(|&v| v == 0));
    }

    #[test]
    fn corrupt_and_truncated_bytes_give_reasons() {
        let opts = DecodeOptions::default();
        assert!(decode_bytes(b"", &opts).is_err());
        assert!(decode_bytes(b"not an image at all", &opts).is_err());
        let mut png = Vec::new();
        let img = image::RgbImage::from_fn(9, 5, |x, y| image::Rgb([x as u8, y as u8, 7]));
        img.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        let ok = decode_bytes(&png, &opts).unwrap();
        assert_eq!((ok.h, ok.w, ok.channels), (5, 9, 3));
        assert_eq!(ok.data, img.into_raw());
        for cut in [8, 30, png.len() / 2, png.len() - 20] {
            assert!(decode_bytes(&png[..cut], &opts).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn baseline_jpeg_decoder_agrees_with_zune() {
        // The image crate's encoder writes baseline 4:2:0 JPEGs; both decoders must agree
        // closely (they round the IDCT and the chroma upsampling differently).
        let img = image::RgbImage::from_fn(37, 21, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 11) as u8, ((x * y) % 256) as u8])
        });
        let mut jpg = Vec::new();
        img.write_to(&mut Cursor::new(&mut jpg), ImageFormat::Jpeg)
            .unwrap();
        let (ours, h, w) = libjpeg::decode(&jpg).expect("a baseline JPEG");
        assert_eq!((h, w), (21, 37));
        let theirs = image::load_from_memory(&jpg).unwrap().to_rgb8().into_raw();
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(&a, &b)| a.abs_diff(b))
            .max()
            .unwrap();
        assert!(worst <= 8, "max |diff| {worst}");
    }

    #[test]
    fn truncated_jpeg_is_an_error() {
        let mut jpg = Vec::new();
        let img = image::RgbImage::from_fn(40, 24, |x, y| image::Rgb([x as u8 * 6, y as u8, 99]));
        img.write_to(&mut Cursor::new(&mut jpg), ImageFormat::Jpeg)
            .unwrap();
        let opts = DecodeOptions {
            grayscale: true,
            resize: Some(Resize::Shorter(12)),
            center_crop: Some((10, 10)),
        };
        let ok = decode_bytes(&jpg, &opts).unwrap();
        assert_eq!((ok.h, ok.w, ok.channels), (10, 10, 1));
        assert!(jpeg_complete(&jpg));
        for cut in [2, 100, jpg.len() / 2, jpg.len() - 2] {
            assert!(cut < 4 || !jpeg_complete(&jpg[..cut]), "cut at {cut}");
            assert!(decode_bytes(&jpg[..cut], &opts).is_err(), "cut at {cut}");
        }
    }
}
