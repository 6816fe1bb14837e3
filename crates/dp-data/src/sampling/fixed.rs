//! Fixed-size sampling without replacement, independent across steps.

use rand_chacha::ChaCha20Rng;

use super::{make_rng, rng_from_state, wrong_scheme, BatchSampler, SamplerState, SamplingScheme};
use crate::error::DataError;
use crate::rng::sample_without_replacement;

/// Each step draws `batch_size` distinct indices uniformly from `0..n`, independently of
/// earlier steps (the "sampling without replacement" scheme of e.g. Balle et al. 2018;
/// its privacy amplification differs from Poisson sampling's and needs its own
/// accountant — the trainer must not use Poisson accounting for it).
///
/// ```
/// use dp_data::{BatchSampler, FixedSizeSampler};
/// let mut s = FixedSizeSampler::new(100, 10, Some(1))?;
/// let b = s.next_batch();
/// assert_eq!(b.len(), 10);
/// assert!(b.windows(2).all(|w| w[0] < w[1]));
/// # Ok::<(), dp_data::DataError>(())
/// ```
#[derive(Debug, Clone)]
pub struct FixedSizeSampler {
    n: usize,
    batch_size: usize,
    rng: ChaCha20Rng,
    steps: u64,
}

impl FixedSizeSampler {
    /// A sampler over `0..n`; `batch_size` must be in `1..=n`.
    pub fn new(n: usize, batch_size: usize, seed: Option<u64>) -> Result<Self, DataError> {
        if batch_size == 0 || batch_size > n {
            return Err(DataError::InvalidBatchSize { batch_size, n });
        }
        Ok(FixedSizeSampler {
            n,
            batch_size,
            rng: make_rng(seed),
            steps: 0,
        })
    }

    /// Restores a sampler from [`FixedSizeSampler::state`].
    pub fn from_state(state: SamplerState) -> Result<Self, DataError> {
        let SamplingScheme::FixedSizeWithoutReplacement { batch_size } = state.scheme else {
            return Err(wrong_scheme(
                &state,
                "fixed-size sampling without replacement",
            ));
        };
        let mut s = Self::new(state.n, batch_size, Some(0))?;
        s.rng = rng_from_state(&state);
        s.steps = state.steps;
        Ok(s)
    }

    /// The next batch, sorted ascending.
    pub fn next_batch(&mut self) -> Vec<usize> {
        self.steps += 1;
        sample_without_replacement(&mut self.rng, self.n, self.batch_size)
    }

    /// Serialisable state.
    pub fn state(&self) -> SamplerState {
        SamplerState {
            scheme: BatchSampler::scheme(self),
            n: self.n,
            seed: self.rng.get_seed(),
            word_pos: self.rng.get_word_pos(),
            cursor: 0,
            steps: self.steps,
        }
    }
}

impl BatchSampler for FixedSizeSampler {
    fn next_batch(&mut self) -> Vec<usize> {
        FixedSizeSampler::next_batch(self)
    }
    fn scheme(&self) -> SamplingScheme {
        SamplingScheme::FixedSizeWithoutReplacement {
            batch_size: self.batch_size,
        }
    }
    /// `ceil(n / batch_size)`.
    fn steps_per_epoch(&self) -> usize {
        self.n.div_ceil(self.batch_size)
    }
    fn expected_batch_size(&self) -> f64 {
        self.batch_size as f64
    }
    fn state(&self) -> SamplerState {
        FixedSizeSampler::state(self)
    }
    fn dataset_len(&self) -> usize {
        self.n
    }
}
