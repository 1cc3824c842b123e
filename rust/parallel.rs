//! Deterministic parallel reductions.
//!
//! Work is cut into chunks; each chunk is reduced sequentially, and chunk partials are combined
//! in chunk order. Float reductions use chunks whose boundaries depend only on the problem (never
//! on the number of threads), so their results are bit-identical for any `RAYON_NUM_THREADS`;
//! integer results are exact whatever the order, so their chunks may be sized to the threads.

use rayon::prelude::*;

use crate::error::CoreResult;

/// Items (images) reduced sequentially inside one chunk, where the result depends on the
/// chunking (float sums).
pub const CHUNK_ITEMS: usize = 8;

/// Chunk size for exact (integer) reductions, whose result does not depend on it: large
/// enough to amortise the per-chunk work (a `p x p` partial), small enough to give every
/// thread a few chunks; whole blocks of images, which the small-image kernel
/// (`moments/lanes_avx2.rs`) works on together.
pub fn exact_chunk_items(n: usize) -> usize {
    n.div_ceil(4 * rayon::current_num_threads())
        .clamp(EXACT_BLOCK, 256)
        .next_multiple_of(EXACT_BLOCK)
}

/// Exact chunks hold whole multiples of this many images (a block of `moments/lanes_avx2.rs`).
pub const EXACT_BLOCK: usize = 32;

/// Budget for the chunk partials alive at once, in bytes: bounds memory whatever the dataset size.
const PARTIALS_BUDGET: usize = 64 << 20;

/// Reduce `n` items in chunks of `chunk_items`: `map(range)` builds a partial for a chunk of
/// item indices, `fold(total, partial)` merges them, strictly in chunk order.
pub fn chunked_reduce<P, M, F>(
    n: usize,
    chunk_items: usize,
    partial_bytes: usize,
    mut total: P,
    map: M,
    mut fold: F,
) -> CoreResult<P>
where
    P: Send,
    M: Fn(std::ops::Range<usize>) -> CoreResult<P> + Sync,
    F: FnMut(&mut P, P),
{
    let chunk_items = chunk_items.max(1);
    let n_chunks = n.div_ceil(chunk_items);
    // How many partials may be alive at once: a function of the partial size only.
    let group = (PARTIALS_BUDGET / partial_bytes.max(1)).clamp(2, 256);
    let mut start = 0;
    while start < n_chunks {
        let end = (start + group).min(n_chunks);
        let partials: Vec<CoreResult<P>> = (start..end)
            .into_par_iter()
            .map(|c| map(c * chunk_items..((c + 1) * chunk_items).min(n)))
            .collect();
        for p in partials {
            fold(&mut total, p?);
        }
        start = end;
    }
    Ok(total)
}
