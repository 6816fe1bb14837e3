//! How the row-wise host kernels (activations, im2col/col2im, pooling) split their work
//! over rayon's pool: one thread below 64k elements, all of them above.
//!
//! The pool is the one the matrix products use, so kernels and products never
//! oversubscribe the cores.

use rayon::prelude::*;

/// Threads worth using for `work` elements: splitting a small job costs more than it saves.
pub(crate) fn threads_for(work: usize) -> usize {
    if work < 1 << 16 {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// Runs `f(chunk_index, chunk)` over `out` split into `rows` equal rows, in parallel on
/// rayon's pool (the one the matrix products use, so the two never oversubscribe the cores).
/// The rows may be `f32` or the unwritten slots of a [`super::fresh::Fresh`] buffer.
pub(crate) fn par_rows<T: Send, F>(out: &mut [T], rows: usize, work: usize, f: F)
where
    F: Fn(usize, &mut [T]) + Sync,
{
    if rows == 0 || out.is_empty() {
        return;
    }
    let row_len = out.len() / rows;
    let threads = threads_for(work).min(rows);
    if threads <= 1 {
        for (r, chunk) in out.chunks_mut(row_len).enumerate() {
            f(r, chunk);
        }
        return;
    }
    let per = rows.div_ceil(threads);
    out.par_chunks_mut(per * row_len)
        .enumerate()
        .for_each(|(t, block)| {
            for (k, chunk) in block.chunks_mut(row_len).enumerate() {
                f(t * per + k, chunk);
            }
        });
}
