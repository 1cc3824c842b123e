//! A baseline (sequential Huffman, 8-bit) JPEG decoder that reproduces libjpeg(-turbo)'s default
//! output, which is what Pillow returns: the "islow" integer IDCT, "fancy" (triangle) chroma
//! upsampling for 4:2:2 and 4:2:0, and the fixed-point YCbCr -> RGB of `jdcolor.c`. Written from
//! the JPEG specification (ITU T.81) and the documented libjpeg algorithms. It answers `None` for
//! anything else (progressive, arithmetic coding, 12-bit, unusual sampling, CMYK), which the
//! generic decoder then handles.
//!
//! Speed comes from three places: a Huffman lookup that decodes a short code *and* its
//! coefficient in one step, the IDCT and the colour conversion in AVX2 where the CPU has it
//! (the same integers as the portable code, so the same bits), and decoding only the [`Window`]
//! the caller keeps: blocks that no kept pixel depends on skip their IDCT, and only the kept
//! pixels are upsampled and converted.
//!
//! Integer ranges: dequantised coefficients are kept to 16 bits as libjpeg-turbo's SIMD code
//! keeps them, and the IDCT runs in wrapping `i32`. Every coefficient a baseline 8-bit encoder
//! writes stays far inside both, so this is libjpeg's arithmetic exactly; for hostile files the
//! two code paths still agree with each other bit for bit.
//!
//! The files form a tree, each importing only from the ones below it: this file (markers,
//! Huffman decoding, upsampling, and the choice of IDCT and colour code per CPU); `avx2.rs`
//! (x86-64: both steps in AVX2); `idct.rs` and `color.rs` (both steps in portable code, with the
//! constants `avx2.rs` shares).

#[cfg(target_arch = "x86_64")]
mod avx2;
mod color;
mod idct;

use std::ops::Range;

use self::color::ycc_to_rgb;
use self::idct::{idct_dc, idct_islow};
use crate::kernels::simd::has_avx2;

/// The part of the image to return: rows `top..top + h`, columns `left..left + w`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub top: usize,
    pub left: usize,
    pub h: usize,
    pub w: usize,
}

/// One frame component.
#[derive(Clone, Copy, Default)]
struct Comp {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
}

const FAST_BITS: u32 = 9;

/// A Huffman table: a 9-bit lookahead table plus the canonical `maxcode` slow path.
struct Huff {
    fast: Vec<(u8, u8)>, // (code length, value); length 0: not in the fast table
    /// For AC tables: codes whose length plus their coefficient's bits fit the lookahead,
    /// packed as `value << 16 | run << 8 | total length` (0: not there).
    fast_ac: Vec<i32>,
    maxcode: [i32; 18],
    valptr: [i32; 17],
    mincode: [i32; 17],
    values: Vec<u8>,
}

/// Sign-extend a `k`-bit magnitude category value (T.81 F.12 EXTEND).
fn extend(v: i32, k: u32) -> i32 {
    if v < 1 << (k - 1) {
        v - (1 << k) + 1
    } else {
        v
    }
}

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
        let fast_ac = (0..1u32 << FAST_BITS)
            .map(|look| {
                let (len, rs) = fast[look as usize];
                let (len, run, s) = (u32::from(len), i32::from(rs >> 4), u32::from(rs & 15));
                if len == 0 || s == 0 || len + s > FAST_BITS {
                    return 0;
                }
                let v = ((look >> (FAST_BITS - len - s)) & ((1 << s) - 1)) as i32;
                (extend(v, s) << 16) | (run << 8) | (len + s) as i32
            })
            .collect();
        Some(Huff {
            fast,
            fast_ac,
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

impl Bits<'_> {
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
    #[inline]
    fn peek(&mut self, k: u32) -> u32 {
        if self.n < k {
            self.fill();
        }
        (self.acc >> (64 - k)) as u32
    }
    #[inline]
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
    #[inline]
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
    fn receive_extend(&mut self, k: u8) -> i32 {
        if k == 0 {
            return 0;
        }
        extend(self.bits(u32::from(k)) as i32, u32::from(k))
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
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// A dequantised coefficient, kept to 16 bits like libjpeg-turbo's `pmullw`.
#[inline]
fn dequantize(v: i32, q: i32) -> i32 {
    i32::from(v.wrapping_mul(q) as i16)
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

/// Tables and frame header collected before the scan.
struct Header {
    width: usize,
    height: usize,
    comps: Vec<Comp>,
    qt: [[i32; 64]; 4],
    dc: Vec<Option<Huff>>,
    ac: Vec<Option<Huff>>,
    restart: usize,
}

fn decode_planes(b: &[u8], window: impl FnOnce(usize, usize) -> Window) -> Option<Planes> {
    if b.get(0..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut hd = Header {
        width: 0,
        height: 0,
        comps: Vec::new(),
        qt: [[0i32; 64]; 4],
        dc: (0..4).map(|_| None).collect(),
        ac: (0..4).map(|_| None).collect(),
        restart: 0,
    };
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
                hd.height = be16(seg, 1)?;
                hd.width = be16(seg, 3)?;
                let n = usize::from(seg[5]);
                if !(n == 1 || n == 3) || hd.width == 0 || hd.height == 0 {
                    return None;
                }
                for k in 0..n {
                    let c = seg.get(6 + 3 * k..9 + 3 * k)?;
                    hd.comps.push(Comp {
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
                        hd.dc[id] = Some(h);
                    } else {
                        hd.ac[id] = Some(h);
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
                        hd.qt[id][z] = if prec == 0 {
                            i32::from(*seg.get(j)?)
                        } else {
                            be16(seg, j)? as i32
                        };
                        j += 1 + usize::from(prec);
                    }
                }
            }
            0xDD => hd.restart = be16(seg, 0)?,
            0xEE if seg.starts_with(b"Adobe") && seg.len() >= 12 => {
                adobe_rgb = seg[11] == 0 && hd.comps.len() != 1;
            }
            0xDA => {
                i += len;
                check_scan(seg, &hd.comps)?;
                if adobe_rgb || hd.comps.iter().map(|c| c.id).eq(*b"RGB") {
                    return None; // RGB-coded JPEGs: no colour conversion in libjpeg
                }
                let win = window(hd.height, hd.width);
                return decode_scan(b, i, seg, &hd, win);
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

/// Blocks of a component (`f`: its upsampling factor, `n`: its size in samples, both along one
/// axis) that the pixels `keep` depend on: upsampling reads one sample either side.
fn needed_blocks(keep: &Range<usize>, f: usize, n: usize) -> Range<usize> {
    let reach = usize::from(f > 1);
    let lo = (keep.start / f).saturating_sub(reach);
    let hi = ((keep.end - 1) / f + reach).min(n - 1);
    lo / 8..hi / 8 + 1
}

fn decode_scan(b: &[u8], start: usize, seg: &[u8], hd: &Header, win: Window) -> Option<Planes> {
    let comps = &hd.comps;
    let n = comps.len();
    let sel: Vec<(usize, usize)> = (0..n)
        .map(|k| {
            let t = seg[2 + 2 * k];
            (usize::from(t >> 4) & 3, usize::from(t & 15) & 3)
        })
        .collect();
    if comps
        .iter()
        .any(|c| c.h == 0 || c.v == 0 || c.h > 2 || c.v > 2)
    {
        return None;
    }
    let (hmax, vmax) = if n == 1 {
        (1, 1) // a single-component scan is not interleaved: one block per MCU
    } else {
        (
            comps.iter().map(|c| c.h).max()?,
            comps.iter().map(|c| c.v).max()?,
        )
    };
    if n == 3 && (comps[0].h != hmax || comps[0].v != vmax) {
        return None; // luma below full resolution: left to the generic decoder, before any work
    }
    let comps: Vec<Comp> = if n == 1 {
        vec![Comp {
            h: 1,
            v: 1,
            ..comps[0]
        }]
    } else {
        comps.to_vec()
    };
    let (width, height) = (hd.width, hd.height);
    let mcux = width.div_ceil(8 * hmax);
    let mcuy = height.div_ceil(8 * vmax);
    let strides: Vec<usize> = comps.iter().map(|c| mcux * c.h * 8).collect();
    let mut planes: Vec<Vec<u8>> = (0..n)
        .map(|k| vec![0u8; strides[k] * mcuy * comps[k].v * 8])
        .collect();
    // Block rows and columns of each component that the window needs.
    let need: Vec<(Range<usize>, Range<usize>)> = comps
        .iter()
        .map(|c| {
            let (fx, fy) = (hmax / c.h, vmax / c.v);
            let (cw, ch) = ((width * c.h).div_ceil(hmax), (height * c.v).div_ceil(vmax));
            (
                needed_blocks(&(win.top..win.top + win.h), fy, ch),
                needed_blocks(&(win.left..win.left + win.w), fx, cw),
            )
        })
        .collect();
    let tables: Vec<(&Huff, &Huff)> = sel
        .iter()
        .map(|&(d, a)| Some((hd.dc[d].as_ref()?, hd.ac[a].as_ref()?)))
        .collect::<Option<_>>()?;
    let avx2 = has_avx2();
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
    let mut todo = hd.restart;
    for my in 0..mcuy {
        for mx in 0..mcux {
            if hd.restart > 0 {
                if todo == 0 {
                    if !bits.restart() {
                        return None;
                    }
                    pred.iter_mut().for_each(|p| *p = 0);
                    todo = hd.restart;
                }
                todo -= 1;
            }
            for (k, c) in comps.iter().enumerate() {
                let (dct, act) = tables[k];
                let q = &hd.qt[c.tq];
                for by in 0..c.v {
                    for bx in 0..c.h {
                        coef.fill(0);
                        let t = bits.decode(dct)?;
                        pred[k] = pred[k].wrapping_add(bits.receive_extend(t));
                        coef[0] = dequantize(pred[k], q[0]);
                        let mut z = 1;
                        let mut any_ac = false;
                        while z < 64 {
                            let f = act.fast_ac[bits.peek(FAST_BITS) as usize];
                            if f != 0 {
                                // A short code and its coefficient, in one lookup.
                                bits.skip((f & 255) as u32);
                                z += ((f >> 8) & 15) as usize;
                                if z > 63 {
                                    return None;
                                }
                                let zz = ZIGZAG[z];
                                coef[zz] = dequantize(f >> 16, q[zz]);
                                any_ac = true;
                                z += 1;
                                continue;
                            }
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
                            coef[zz] = dequantize(bits.receive_extend(s), q[zz]);
                            any_ac = true;
                            z += 1;
                        }
                        let (row, col) = (my * c.v + by, mx * c.h + bx);
                        if !(need[k].0.contains(&row) && need[k].1.contains(&col)) {
                            continue; // no kept pixel depends on this block
                        }
                        let s = strides[k];
                        let out = &mut planes[k][row * 8 * s + col * 8..];
                        if !any_ac {
                            idct_dc(coef[0], out, s);
                        } else if avx2 {
                            #[cfg(target_arch = "x86_64")]
                            // SAFETY: the CPU has AVX2 (checked above).
                            unsafe {
                                self::avx2::idct_islow(&coef, out, s)
                            };
                        } else {
                            idct_islow(&coef, out, s);
                        }
                    }
                }
            }
        }
        if bits.overrun > 8 {
            return None; // ran out of data: truncated
        }
    }
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

/// libjpeg's "fancy" upsampling of one row `y` of component `k` to full width (`out`, `width`
/// bytes), using `tmp` as scratch.
fn upsample_row(p: &Planes, k: usize, y: usize, out: &mut [u8], tmp: &mut Vec<i32>) -> Option<()> {
    let c = p.comps[k];
    let (fx, fy) = (p.hmax / c.h, p.vmax / c.v);
    let plane = &p.planes[k];
    let s = p.strides[k];
    // The component's own size, as libjpeg computes it (ceil).
    let cw = (p.width * c.h).div_ceil(p.hmax);
    let ch = (p.height * c.v).div_ceil(p.vmax);
    let row = |y: usize| &plane[y.min(ch - 1) * s..y.min(ch - 1) * s + cw];
    let w = p.width;
    if cw <= 2 && (fx, fy) != (1, 1) {
        // libjpeg's fancy upsampling needs 3 columns; it replicates otherwise.
        let r = row(y / fy);
        for (x, o) in out.iter_mut().enumerate() {
            *o = r[x / fx];
        }
        return Some(());
    }
    match (fx, fy) {
        (1, 1) => out.copy_from_slice(&row(y)[..w]),
        (2, 1) => h2v1(row(y), out),
        (2, 2) => {
            let here = row(y / 2);
            // Even output rows lean on the row above, odd ones on the row below.
            let other = if y % 2 == 0 {
                row((y / 2).saturating_sub(1))
            } else {
                row(y / 2 + 1)
            };
            tmp.clear();
            tmp.extend(
                here.iter()
                    .zip(other)
                    .map(|(&a, &b)| i32::from(a) * 3 + i32::from(b)),
            );
            h2v2_row(tmp, out);
        }
        _ => return None,
    }
    Some(())
}

/// Store an upsampled value; the last one of an odd-width row falls outside and is dropped.
#[inline]
fn put(out: &mut [u8], i: usize, v: i32) {
    if let Some(o) = out.get_mut(i) {
        *o = v as u8;
    }
}

/// Horizontal fancy upsampling; `out` may be one sample short of `2 * inp.len()` (odd widths).
fn h2v1(inp: &[u8], out: &mut [u8]) {
    let n = inp.len();
    let v = |i: usize| i32::from(inp[i]);
    if n == 1 {
        put(out, 0, v(0));
        put(out, 1, v(0));
        return;
    }
    put(out, 0, v(0));
    put(out, 1, (v(0) * 3 + v(1) + 2) >> 2);
    for i in 1..n - 1 {
        let t = v(i) * 3;
        put(out, 2 * i, (t + v(i - 1) + 1) >> 2);
        put(out, 2 * i + 1, (t + v(i + 1) + 2) >> 2);
    }
    put(out, 2 * n - 2, (v(n - 1) * 3 + v(n - 2) + 1) >> 2);
    put(out, 2 * n - 1, v(n - 1));
}

/// Horizontal half of the 4:2:0 fancy upsampling, from the vertical sums `3 * near + far`.
fn h2v2_row(sums: &[i32], out: &mut [u8]) {
    let n = sums.len();
    if n == 1 {
        put(out, 0, (sums[0] * 4 + 8) >> 4);
        put(out, 1, (sums[0] * 4 + 7) >> 4);
        return;
    }
    put(out, 0, (sums[0] * 4 + 8) >> 4);
    put(out, 1, (sums[0] * 3 + sums[1] + 7) >> 4);
    // The interior in pairs, written straight into `out` (the hot loop: no bounds on each put).
    let pairs = (n - 2).min(out.len().saturating_sub(2) / 2);
    for (i, o) in out[2..2 + 2 * pairs].chunks_exact_mut(2).enumerate() {
        let i = i + 1;
        o[0] = ((sums[i] * 3 + sums[i - 1] + 8) >> 4) as u8;
        o[1] = ((sums[i] * 3 + sums[i + 1] + 7) >> 4) as u8;
    }
    put(out, 2 * n - 2, (sums[n - 1] * 3 + sums[n - 2] + 8) >> 4);
    put(out, 2 * n - 1, (sums[n - 1] * 4 + 7) >> 4);
}

/// Decode like libjpeg's defaults, or `None` for what this does not cover. `window` is told the
/// image's `(height, width)` and answers the part to return; the answer is `(rgb, window)`.
pub fn decode(
    b: &[u8],
    window: impl FnOnce(usize, usize) -> Option<Window>,
) -> Option<(Vec<u8>, Window)> {
    let mut win = None;
    let p = decode_planes(b, |h, w| {
        let full = Window {
            top: 0,
            left: 0,
            h,
            w,
        };
        *win.insert(window(h, w).unwrap_or(full))
    })?;
    let win = win?;
    let cols = win.left..win.left + win.w;
    let avx2 = has_avx2();
    let mut rgb = vec![0u8; win.h * win.w * 3];
    let mut rows = vec![vec![0u8; p.width]; p.comps.len()];
    let mut tmp = Vec::new();
    for (y, out) in (win.top..).zip(rgb.chunks_exact_mut(win.w * 3)) {
        for (k, row) in rows.iter_mut().enumerate() {
            upsample_row(&p, k, y, row, &mut tmp)?;
        }
        if let [luma] = &rows[..] {
            for (o, &v) in out.chunks_exact_mut(3).zip(&luma[cols.clone()]) {
                o.fill(v);
            }
            continue;
        }
        let (yr, cb, cr) = (
            &rows[0][cols.clone()],
            &rows[1][cols.clone()],
            &rows[2][cols.clone()],
        );
        if avx2 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX2 (checked above).
            unsafe {
                self::avx2::ycc_to_rgb(yr, cb, cr, out)
            };
        } else {
            ycc_to_rgb(yr, cb, cr, out);
        }
    }
    Some((rgb, win))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_ac_table_agrees_with_the_slow_path() {
        // The standard luminance AC table (T.81 K.5).
        let counts = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
        let values: Vec<u8> = (0..162u32).map(|i| ((i * 37 + 1) % 251) as u8).collect();
        let h = Huff::new(&counts, values).unwrap();
        let mut seen = 0;
        for look in 0..1u32 << FAST_BITS {
            let f = h.fast_ac[look as usize];
            if f == 0 {
                continue;
            }
            seen += 1;
            // Decode the same bits the long way.
            let bytes = [(look >> 1) as u8, ((look & 1) << 7) as u8, 0, 0];
            let mut b = Bits {
                data: &bytes,
                pos: 0,
                acc: 0,
                n: 0,
                marker: false,
                overrun: 0,
            };
            let rs = b.decode(&h).unwrap();
            let v = b.receive_extend(rs & 15);
            assert_eq!(f >> 16, v, "{look:09b}");
            assert_eq!((f >> 8) & 255, i32::from(rs >> 4));
            assert_eq!((f & 255) as u32, 64 - b.n, "bits consumed"); // the first fill loads 64
        }
        assert!(seen > 100, "{seen}");
    }

    #[test]
    fn needed_blocks_cover_the_upsampling_neighbours() {
        // Full resolution: exactly the blocks of the kept pixels.
        assert_eq!(needed_blocks(&(16..240), 1, 256), 2..30);
        // Half resolution: kept rows 16..240 read chroma rows 7..=120.
        assert_eq!(needed_blocks(&(16..240), 2, 128), 0..16);
        assert_eq!(needed_blocks(&(40..41), 2, 128), 2..3);
        assert_eq!(needed_blocks(&(0..256), 2, 128), 0..16);
    }
}
