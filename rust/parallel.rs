//! Deterministic parallel reductions.
//!
//! Work is cut into chunks whose boundaries depend only on the problem (never on the number of
//! threads); each chunk is reduced sequentially, and chunk partials are combined in chunk order.
//! Float results are therefore bit-identical for any `RAYON_NUM_THREADS`, and integer results are
//! exact whatever the order.

use rayon::prelude::*;

use crate::error::CoreResult;

/// Items (images) reduced sequentially inside one chunk.
pub const CHUNK_ITEMS: usize = 8;

/// Budget for the chunk partials alive at once, in bytes: bounds memory whatever the dataset size.
const PARTIALS_BUDGET: usize = 64 << 20;

/// Reduce `n` items in fixed chunks: `map(range)` builds a partial for a chunk of item indices,
/// `fold(total, partial)` merges them, strictly in chunk order.
pub fn chunked_reduce<P, M, F>(
    n: usize,
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
    let n_chunks = n.div_ceil(CHUNK_ITEMS);
    // How many partials may be alive at once: a function of the partial size only.
    let group = (PARTIALS_BUDGET / partial_bytes.max(1)).clamp(2, 256);
    let mut start = 0;
    while start < n_chunks {
        let end = (start + group).min(n_chunks);
        let partials: Vec<CoreResult<P>> = (start..end)
            .into_par_iter()
            .map(|c| map(c * CHUNK_ITEMS..((c + 1) * CHUNK_ITEMS).min(n)))
            .collect();
        for p in partials {
            fold(&mut total, p?);
        }
        start = end;
    }
    Ok(total)
}
