//! Splitting a logical batch into physical batches under a memory cap.

/// Iterator over the physical chunks of a logical batch; see [`physical_batches`].
#[derive(Debug, Clone)]
pub struct PhysicalBatches<'a> {
    rest: &'a [usize],
    max: usize,
}

impl<'a> Iterator for PhysicalBatches<'a> {
    type Item = &'a [usize];

    fn next(&mut self) -> Option<&'a [usize]> {
        if self.rest.is_empty() {
            return None;
        }
        let k = self.max.min(self.rest.len());
        let (head, tail) = self.rest.split_at(k);
        self.rest = tail;
        Some(head)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = num_physical_batches(self.rest.len(), self.max);
        (n, Some(n))
    }
}

impl ExactSizeIterator for PhysicalBatches<'_> {}

/// Splits the indices of one logical batch into consecutive chunks of at most
/// `max_physical` indices, preserving order; every index appears in exactly one chunk.
///
/// With Poisson sampling the logical batch size is random and can exceed what fits in
/// memory. The trainer computes clipped per-sample gradients chunk by chunk, **adds up the
/// clipped sums across chunks, and adds noise once** per logical batch — so physical
/// batching changes memory use, never the privacy guarantee or the result.
///
/// An empty logical batch yields no chunks (the trainer must still take the noisy step).
/// `max_physical = 0` means "no cap": the whole logical batch is one chunk.
///
/// ```
/// let logical = vec![3, 9, 14, 20, 31];
/// let chunks: Vec<&[usize]> = dp_data::physical_batches(&logical, 2).collect();
/// assert_eq!(chunks, vec![&[3, 9][..], &[14, 20][..], &[31][..]]);
/// assert_eq!(dp_data::physical_batches(&[], 2).count(), 0);
/// ```
pub fn physical_batches(indices: &[usize], max_physical: usize) -> PhysicalBatches<'_> {
    let max = if max_physical == 0 {
        usize::MAX
    } else {
        max_physical
    };
    PhysicalBatches { rest: indices, max }
}

/// Number of chunks [`physical_batches`] yields for a logical batch of `len` indices.
///
/// ```
/// assert_eq!(dp_data::num_physical_batches(10, 4), 3);
/// assert_eq!(dp_data::num_physical_batches(0, 4), 0);
/// assert_eq!(dp_data::num_physical_batches(10, 0), 1); // no cap
/// ```
pub fn num_physical_batches(len: usize, max_physical: usize) -> usize {
    if max_physical == 0 {
        usize::from(len > 0)
    } else {
        len.div_ceil(max_physical)
    }
}
