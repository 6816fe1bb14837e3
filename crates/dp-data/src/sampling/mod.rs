//! Batch samplers and physical batching.
//!
//! DP-SGD's privacy analysis (the moments/RDP accountant for the subsampled Gaussian
//! mechanism) assumes **Poisson sampling**: each example joins each logical batch
//! independently with probability `q`. [`PoissonSampler`] implements exactly that. The
//! other samplers ([`ShuffledSampler`], [`FixedSizeSampler`]) are provided for
//! comparison; every sampler reports its [`SamplingScheme`] so the trainer can refuse to
//! apply Poisson accounting to a non-Poisson sampler unless explicitly overridden.
//!
//! All samplers use ChaCha20 ([`rand_chacha::ChaCha20Rng`]), seeded from the OS by default
//! and from an explicit `u64` for reproducible runs. Their [`SamplerState`] (seed plus
//! keystream position) is serde-serialisable; restoring it continues the exact same
//! sequence of batches, which makes checkpoints resume bit-identically.

mod fixed;
mod physical;
mod poisson;
mod shuffle;

pub use fixed::FixedSizeSampler;
pub use physical::{num_physical_batches, physical_batches, PhysicalBatches};
pub use poisson::PoissonSampler;
pub use shuffle::ShuffledSampler;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// Which batch-sampling scheme a sampler implements.
///
/// The privacy accountant's guarantee holds for [`SamplingScheme::Poisson`]; for the
/// others it is at best a heuristic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum SamplingScheme {
    /// Each example independently with probability `sampling_rate`; variable batch size.
    Poisson {
        /// Inclusion probability `q`.
        sampling_rate: f64,
    },
    /// A fresh random permutation each epoch, cut into consecutive batches.
    Shuffled {
        /// Batch size (the last batch of an epoch may be smaller).
        batch_size: usize,
    },
    /// Each step, `batch_size` distinct examples uniformly at random, independently of
    /// previous steps.
    FixedSizeWithoutReplacement {
        /// Batch size.
        batch_size: usize,
    },
}

impl SamplingScheme {
    /// Whether this is Poisson sampling (the scheme the accountant assumes).
    pub fn is_poisson(&self) -> bool {
        matches!(self, SamplingScheme::Poisson { .. })
    }
}

impl std::fmt::Display for SamplingScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SamplingScheme::Poisson { sampling_rate } => {
                write!(f, "Poisson sampling (q = {sampling_rate})")
            }
            SamplingScheme::Shuffled { batch_size } => {
                write!(f, "shuffled fixed-size batches (B = {batch_size})")
            }
            SamplingScheme::FixedSizeWithoutReplacement { batch_size } => {
                write!(
                    f,
                    "fixed-size sampling without replacement (B = {batch_size})"
                )
            }
        }
    }
}

/// Serialisable sampler state for checkpoints.
///
/// `seed` is the 32-byte ChaCha20 key and `word_pos` the keystream position (in 32-bit
/// words, see `ChaCha20Rng::get_word_pos`). For [`ShuffledSampler`], `word_pos` is the
/// position at the start of the current epoch's shuffle and `cursor` the position within
/// the epoch (the permutation is regenerated on restore); other samplers ignore `cursor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplerState {
    /// The scheme of the sampler that produced this state.
    pub scheme: SamplingScheme,
    /// Dataset size.
    pub n: usize,
    /// ChaCha20 seed (key).
    pub seed: [u8; 32],
    /// ChaCha20 keystream position in 32-bit words.
    pub word_pos: u128,
    /// Position within the current epoch (shuffled sampler only).
    pub cursor: usize,
    /// Number of batches drawn so far.
    pub steps: u64,
}

/// Common interface of the batch samplers.
///
/// ```
/// use dp_data::{BatchSampler, PoissonSampler, SamplingScheme};
/// let mut s: Box<dyn BatchSampler> = Box::new(PoissonSampler::new(1000, 0.01, Some(1))?);
/// let batch = s.next_batch();
/// assert!(batch.iter().all(|&i| i < 1000));
/// assert_eq!(s.scheme(), SamplingScheme::Poisson { sampling_rate: 0.01 });
/// assert_eq!(s.steps_per_epoch(), 100);
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub trait BatchSampler {
    /// Indices of the next logical batch (sorted ascending for Poisson and fixed-size
    /// sampling; in permutation order for shuffled batches). May be empty for Poisson.
    fn next_batch(&mut self) -> Vec<usize>;
    /// The sampling scheme implemented.
    fn scheme(&self) -> SamplingScheme;
    /// Steps that make up one epoch (one expected pass over the data).
    fn steps_per_epoch(&self) -> usize;
    /// Expected logical batch size; the normaliser of the noisy gradient sum.
    fn expected_batch_size(&self) -> f64;
    /// Serialisable state for checkpointing.
    fn state(&self) -> SamplerState;
    /// Number of examples sampled from.
    fn dataset_len(&self) -> usize;
}

/// A ChaCha20 generator from an explicit seed, or from OS entropy when `None`.
pub(crate) fn make_rng(seed: Option<u64>) -> ChaCha20Rng {
    match seed {
        Some(s) => ChaCha20Rng::seed_from_u64(s),
        None => ChaCha20Rng::from_entropy(),
    }
}

/// Rebuilds the generator recorded in a state.
pub(crate) fn rng_from_state(state: &SamplerState) -> ChaCha20Rng {
    let mut rng = ChaCha20Rng::from_seed(state.seed);
    rng.set_word_pos(state.word_pos);
    rng
}

/// The error for restoring a state into a sampler of another scheme.
pub(crate) fn wrong_scheme(state: &SamplerState, expected: &str) -> DataError {
    DataError::InvalidState(format!("state is for {}, not {expected}", state.scheme))
}
