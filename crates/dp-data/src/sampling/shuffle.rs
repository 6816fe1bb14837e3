//! Shuffled fixed-size batches (a new permutation per epoch).

use rand_chacha::ChaCha20Rng;

use super::{make_rng, rng_from_state, wrong_scheme, BatchSampler, SamplerState, SamplingScheme};
use crate::error::DataError;
use crate::rng::shuffle;

/// Shuffled batches: each epoch draws a uniform random permutation of `0..n` and cuts it
/// into consecutive batches of `batch_size` (the last one smaller when `batch_size` does
/// not divide `n`).
///
/// This is what non-private training (and many DP implementations, in practice) does,
/// but it is **not** Poisson sampling: the standard DP-SGD accountant does not apply.
///
/// ```
/// use dp_data::{BatchSampler, ShuffledSampler};
/// let mut s = ShuffledSampler::new(10, 4, Some(7))?;
/// let mut seen: Vec<usize> = (0..s.steps_per_epoch()).flat_map(|_| s.next_batch()).collect();
/// seen.sort();
/// assert_eq!(seen, (0..10).collect::<Vec<_>>());
/// # Ok::<(), dp_data::DataError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ShuffledSampler {
    n: usize,
    batch_size: usize,
    rng: ChaCha20Rng,
    /// Keystream position before the current permutation was drawn.
    epoch_word_pos: u128,
    perm: Vec<usize>,
    cursor: usize,
    steps: u64,
}

impl ShuffledSampler {
    /// A sampler over `0..n`; `batch_size` must be in `1..=n`.
    pub fn new(n: usize, batch_size: usize, seed: Option<u64>) -> Result<Self, DataError> {
        if batch_size == 0 || batch_size > n {
            return Err(DataError::InvalidBatchSize { batch_size, n });
        }
        let rng = make_rng(seed);
        let mut s = ShuffledSampler {
            n,
            batch_size,
            epoch_word_pos: rng.get_word_pos(),
            rng,
            perm: Vec::new(),
            cursor: 0,
            steps: 0,
        };
        s.new_epoch();
        Ok(s)
    }

    fn new_epoch(&mut self) {
        self.epoch_word_pos = self.rng.get_word_pos();
        self.perm = (0..self.n).collect();
        shuffle(&mut self.rng, &mut self.perm);
        self.cursor = 0;
    }

    /// Restores a sampler from [`ShuffledSampler::state`].
    pub fn from_state(state: SamplerState) -> Result<Self, DataError> {
        let SamplingScheme::Shuffled { batch_size } = state.scheme else {
            return Err(wrong_scheme(&state, "shuffled batches"));
        };
        if state.cursor > state.n {
            return Err(DataError::InvalidState(format!(
                "cursor {} beyond dataset size {}",
                state.cursor, state.n
            )));
        }
        let mut s = Self::new(state.n, batch_size, Some(0))?;
        s.rng = rng_from_state(&state);
        s.new_epoch();
        s.cursor = state.cursor;
        s.steps = state.steps;
        Ok(s)
    }

    /// The next batch, in permutation order.
    pub fn next_batch(&mut self) -> Vec<usize> {
        if self.cursor >= self.n {
            self.new_epoch();
        }
        let end = (self.cursor + self.batch_size).min(self.n);
        let out = self.perm[self.cursor..end].to_vec();
        self.cursor = end;
        self.steps += 1;
        out
    }

    /// Serialisable state.
    pub fn state(&self) -> SamplerState {
        SamplerState {
            scheme: BatchSampler::scheme(self),
            n: self.n,
            seed: self.rng.get_seed(),
            word_pos: self.epoch_word_pos,
            cursor: self.cursor,
            steps: self.steps,
        }
    }
}

impl BatchSampler for ShuffledSampler {
    fn next_batch(&mut self) -> Vec<usize> {
        ShuffledSampler::next_batch(self)
    }
    fn scheme(&self) -> SamplingScheme {
        SamplingScheme::Shuffled {
            batch_size: self.batch_size,
        }
    }
    /// `ceil(n / batch_size)`.
    fn steps_per_epoch(&self) -> usize {
        self.n.div_ceil(self.batch_size)
    }
    fn expected_batch_size(&self) -> f64 {
        self.n as f64 / self.steps_per_epoch() as f64
    }
    fn state(&self) -> SamplerState {
        ShuffledSampler::state(self)
    }
    fn dataset_len(&self) -> usize {
        self.n
    }
}
