//! Gaussian noise from a ChaCha20 stream.
//!
//! # Floating-point caveat
//! The noise is sampled in floating point (ziggurat on a ChaCha20 stream, then added in
//! f32). Mironov (CCS 2012) and later work (Jin et al. 2022, "Are we there yet?") show that
//! the gaps in the set of representable floats can leak information about the un-noised
//! value, for sampling *and* for the addition. dp-lab does **not** claim protection
//! against such attacks (nor does Opacus's `secure_mode`, which was shown insufficient,
//! meta-pytorch/opacus#616). The guarantee stated by the accountants is the idealised one
//! for real-valued Gaussian noise. What is done: the generator is a CSPRNG (ChaCha20),
//! seeded from the OS unless a seed is given; each noise coordinate is an independent
//! draw; noise is added once to the clipped *sum*, whose sensitivity is known.

use crate::error::{CoreError, Result};
use candle_core::Tensor;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;

/// Elements per independent noise stream (fixed: reproducibility must not depend on
/// the thread count).
const NOISE_CHUNK: usize = 1 << 15;

/// The serialisable position of a [`GaussianNoise`] stream (for checkpoints).
///
/// The seed is as sensitive as the noise it generates: whoever holds it can subtract the
/// noise from a released gradient. Store checkpoints accordingly.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NoiseState {
    /// The 32-byte ChaCha20 key.
    pub seed: [u8; 32],
    /// Stream position in 32-bit words, split into (high, low) 64-bit halves.
    pub word_pos: [u64; 2],
}

/// A Gaussian noise source: ChaCha20 seeded from the OS by default, or from an explicit
/// seed for bit-for-bit reproducible runs.
///
/// ```
/// use dp_core::GaussianNoise;
/// let mut a = GaussianNoise::seeded(7);
/// let mut b = GaussianNoise::seeded(7);
/// assert_eq!(a.sample(5, 1.0), b.sample(5, 1.0));
/// ```
#[derive(Debug, Clone)]
pub struct GaussianNoise {
    rng: ChaCha20Rng,
}

impl GaussianNoise {
    /// A stream seeded from the operating system's CSPRNG.
    pub fn from_entropy() -> Self {
        Self {
            rng: ChaCha20Rng::from_entropy(),
        }
    }

    /// A reproducible stream.
    pub fn seeded(seed: u64) -> Self {
        Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
        }
    }

    /// The stream's current state.
    pub fn state(&self) -> NoiseState {
        let pos = self.rng.get_word_pos();
        NoiseState {
            seed: self.rng.get_seed(),
            word_pos: [(pos >> 64) as u64, pos as u64],
        }
    }

    /// Resumes a stream exactly where [`GaussianNoise::state`] left it.
    pub fn from_state(state: &NoiseState) -> Self {
        let mut rng = ChaCha20Rng::from_seed(state.seed);
        rng.set_word_pos(((state.word_pos[0] as u128) << 64) | state.word_pos[1] as u128);
        Self { rng }
    }

    /// `n` independent `N(0, std²)` draws.
    ///
    /// Each call takes a fresh 256-bit key from the main stream and fills fixed-size
    /// chunks of the output from independent ChaCha20 streams of that key (chunk `k` uses
    /// stream `k`), in parallel. The chunking does not depend on the number of threads, so
    /// a seed gives the same noise bit for bit on any machine.
    pub fn sample(&mut self, n: usize, std: f64) -> Vec<f32> {
        let mut key = [0u8; 32];
        self.rng.fill_bytes(&mut key);
        let s = std as f32;
        let mut out = vec![0f32; n];
        let fill = |k: usize, chunk: &mut [f32]| {
            let mut r = ChaCha20Rng::from_seed(key);
            r.set_stream(k as u64);
            for v in chunk.iter_mut() {
                *v = r.sample::<f32, _>(StandardNormal) * s;
            }
        };
        let chunks: Vec<(usize, &mut [f32])> = out.chunks_mut(NOISE_CHUNK).enumerate().collect();
        let threads = std::thread::available_parallelism()
            .map(|t| t.get())
            .unwrap_or(1)
            .min(chunks.len())
            .min(8);
        if threads <= 1 {
            for (k, c) in chunks {
                fill(k, c);
            }
        } else {
            let mut per_thread: Vec<Vec<(usize, &mut [f32])>> =
                (0..threads).map(|_| Vec::new()).collect();
            for (j, kc) in chunks.into_iter().enumerate() {
                per_thread[j % threads].push(kc);
            }
            std::thread::scope(|scope| {
                for work in per_thread {
                    scope.spawn(move || {
                        for (k, c) in work {
                            fill(k, c);
                        }
                    });
                }
            });
        }
        out
    }

    /// Returns `t + N(0, std² I)` for each tensor, drawing the tensors' noise in order
    /// (one [`GaussianNoise::sample`] call per tensor).
    pub fn add_noise(&mut self, tensors: &[Tensor], std: f64) -> Result<Vec<Tensor>> {
        if !(std.is_finite() && std >= 0.0) {
            return Err(CoreError::InvalidNoise(std));
        }
        tensors
            .iter()
            .map(|t| {
                let z = self.sample(t.elem_count(), std);
                let mut z = Tensor::from_vec(z, t.dims(), t.device())?;
                if z.dtype() != t.dtype() {
                    z = z.to_dtype(t.dtype())?;
                }
                Ok((t + z)?)
            })
            .collect()
    }

    /// A uniform draw in `[0, 1)` from the same stream (for methods that need other
    /// randomness tied to the run's seed).
    pub fn uniform(&mut self) -> f64 {
        self.rng.gen()
    }
}
