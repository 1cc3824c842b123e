//! Deterministic parallel reductions.
//!
//! Work is cut into chunks; each chunk is reduced sequentially, and chunk partials are combined
//! in chunk order. Float reductions use chunks whose boundaries depend only on the problem (never
//! on the number of threads), so their results are bit-identical for any `RAYON_NUM_THREADS`;
//! integer results are exact whatever the order, so their chunks may be sized to the threads.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::error::{CoreError, CoreResult};

/// Asked between groups of chunks whether the caller wants the work stopped (Ctrl-C). The
/// binding layer installs it (it runs the interpreter's signal handlers); pure Rust callers and
/// the tests run without one. A stop returns [`CoreError::Interrupted`], never a partial result.
static INTERRUPT_HOOK: OnceLock<fn() -> bool> = OnceLock::new();

/// Install the interrupt check (first call wins; later calls are ignored).
pub fn set_interrupt_hook(hook: fn() -> bool) {
    let _ = INTERRUPT_HOOK.set(hook);
}

/// Whether the installed hook asks to stop (`false` without one).
pub fn interrupted() -> bool {
    INTERRUPT_HOOK.get().is_some_and(|hook| hook())
}

/// How long one group of chunks should take: the interrupt is checked once per group, so this
/// bounds how late Ctrl-C is seen (plus one chunk), while keeping the per-group barrier rare.
const GROUP_TARGET: Duration = Duration::from_millis(100);

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
/// item indices, `fold(total, partial)` merges them, strictly in chunk order. Between groups of
/// chunks the installed interrupt hook is asked whether to stop ([`CoreError::Interrupted`]).
pub fn chunked_reduce<P, M, F>(
    n: usize,
    chunk_items: usize,
    partial_bytes: usize,
    total: P,
    map: M,
    fold: F,
) -> CoreResult<P>
where
    P: Send,
    M: Fn(std::ops::Range<usize>) -> CoreResult<P> + Sync,
    F: FnMut(&mut P, P),
{
    reduce_until(n, chunk_items, partial_bytes, total, map, fold, interrupted)
}

/// [`chunked_reduce`] with its stop check passed in (the tests pass their own).
fn reduce_until<P, M, F>(
    n: usize,
    chunk_items: usize,
    partial_bytes: usize,
    mut total: P,
    map: M,
    mut fold: F,
    stop: impl Fn() -> bool,
) -> CoreResult<P>
where
    P: Send,
    M: Fn(std::ops::Range<usize>) -> CoreResult<P> + Sync,
    F: FnMut(&mut P, P),
{
    let chunk_items = chunk_items.max(1);
    let n_chunks = n.div_ceil(chunk_items);
    // How many partials may be alive at once: a function of the partial size only.
    let cap = (PARTIALS_BUDGET / partial_bytes.max(1)).clamp(2, 256);
    // Groups start at one chunk per thread and grow while they finish within GROUP_TARGET, so
    // the interrupt check between groups comes every ~100 ms. The grouping never changes the
    // result: partials are folded strictly in chunk order whatever the group boundaries.
    let threads = rayon::current_num_threads().max(1);
    let mut group = threads.min(cap);
    let mut start = 0;
    while start < n_chunks {
        let end = (start + group).min(n_chunks);
        let began = Instant::now();
        let partials: Vec<CoreResult<P>> = (start..end)
            .into_par_iter()
            .map(|c| map(c * chunk_items..((c + 1) * chunk_items).min(n)))
            .collect();
        for p in partials {
            fold(&mut total, p?);
        }
        start = end;
        if start < n_chunks && stop() {
            return Err(CoreError::Interrupted);
        }
        let took = began.elapsed();
        if took < GROUP_TARGET / 2 {
            group = (group * 2).min(cap);
        } else if took > GROUP_TARGET * 2 {
            group = (group / 2).max(threads.min(cap));
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A float sum whose bits depend on the order of the additions.
    fn float_sum(n: usize, stop: impl Fn() -> bool) -> CoreResult<f64> {
        let item = |i: usize| 1.0 / (i as f64 + 1.0) * if i % 3 == 0 { 1e8 } else { 1.0 };
        reduce_until(
            n,
            CHUNK_ITEMS,
            8,
            0.0,
            |r| Ok(r.map(item).fold(0.0, |a, b| a + b)),
            |t, p| *t += p,
            stop,
        )
    }

    #[test]
    fn groups_never_change_the_float_result() {
        let reference = (0..10_000usize)
            .collect::<Vec<_>>()
            .chunks(CHUNK_ITEMS)
            .map(|c| {
                c.iter()
                    .map(|&i| 1.0 / (i as f64 + 1.0) * if i % 3 == 0 { 1e8 } else { 1.0 })
                    .fold(0.0, |a, b| a + b)
            })
            .fold(0.0, |a, b| a + b);
        let got = float_sum(10_000, || false).unwrap();
        assert_eq!(got.to_bits(), reference.to_bits());
    }

    #[test]
    fn a_stop_request_between_groups_is_an_interrupt_not_a_partial_result() {
        let asked = AtomicUsize::new(0);
        let r = float_sum(100_000, || asked.fetch_add(1, Ordering::Relaxed) >= 1);
        assert_eq!(r, Err(CoreError::Interrupted));
        assert_eq!(asked.load(Ordering::Relaxed), 2);
        // A reduction of one group never asks.
        let never = AtomicUsize::new(0);
        let one = float_sum(CHUNK_ITEMS, || {
            never.fetch_add(1, Ordering::Relaxed) < usize::MAX
        });
        assert!(one.is_ok());
        assert_eq!(never.load(Ordering::Relaxed), 0);
    }
}
