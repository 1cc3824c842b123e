//! The two AVX2 layouts of the shifted-products kernel side by side, on the same random `u8`
//! batches: images in lanes (`moments/lanes_avx2.rs`, chosen by `Method::Shifted` where it fits)
//! and strips of one image (`moments/strips_avx2.rs`, forced by `Method::Strips`), best of 3 each,
//! on the threads rayon is given. Both must give the same integers (checked).
//!
//! `cargo run --release --example moments_kernels [OUT.json]`
//! (default `bench-results/moments_kernels.json`).

use std::time::Instant;

use firstlayer::kernels::image::{Batch, Layout, Window};
use firstlayer::kernels::moments::{patch_moments, Method};

/// Random bytes (xorshift), the same for every run.
fn data(n: usize) -> Vec<u8> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "bench-results/moments_kernels.json".into());
    let threads = rayon::current_num_threads();
    let mut rows = Vec::new();
    println!("threads: {threads}");
    println!("| side | k | lanes us/image | strips us/image | lanes speedup |");
    println!("|---:|---:|---:|---:|---:|");
    for side in [32usize, 64, 128] {
        // About 12 M pixels per run.
        let n = (12_000_000 / (3 * side * side)).next_multiple_of(32);
        let x = data(n * 3 * side * side);
        let b = Batch {
            n,
            c: 3,
            h: side,
            w: side,
            layout: Layout::Nchw,
        };
        for k in [3usize, 5, 7, 11] {
            let win = Window {
                k,
                stride: 1,
                pad: 0,
            };
            let time = |method: Method| {
                let mut best = f64::MAX;
                let mut got = None;
                for _ in 0..3 {
                    let t = Instant::now();
                    let m = patch_moments(&x, b, win, None, 0, method, &[]).unwrap();
                    best = best.min(t.elapsed().as_secs_f64());
                    got = Some(m);
                }
                (best * 1e6 / n as f64, got.unwrap())
            };
            let (lanes, a) = time(Method::Shifted);
            let (strips, s) = time(Method::Strips);
            assert_eq!(a, s, "side {side} k {k}: the two layouts disagree");
            println!(
                "| {side} | {k} | {lanes:.2} | {strips:.2} | {:.2}x |",
                strips / lanes
            );
            rows.push(format!(
                "{{\"side\": {side}, \"k\": {k}, \"images\": {n}, \"lanes_us_per_image\": {lanes:.4}, \
                 \"strips_us_per_image\": {strips:.4}, \"lanes_speedup\": {:.4}}}",
                strips / lanes
            ));
        }
    }
    let json = format!(
        "{{\"threads\": {threads}, \"channels\": 3, \"layout\": \"NCHW\", \"rows\": [\n  {}\n]}}\n",
        rows.join(",\n  ")
    );
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let tmp = format!("{out}.tmp");
    std::fs::write(&tmp, json).unwrap();
    std::fs::rename(&tmp, &out).unwrap();
    println!("JSON written to {out}");
}
