//! Gaussian noise from a ChaCha20 stream.
//!
//! This folder holds everything the noise of a DP step needs: this module (the
//! [`GaussianNoise`] generator, its checkpointable [`NoiseState`], sampling and adding noise
//! to tensors in fixed-size independent streams), `chacha_simd` (the ChaCha20 keystream of
//! `rand_chacha`, sixteen blocks at a time with AVX-512) and `ziggurat` (standard normals
//! from that keystream, draw for draw those of `rand_distr`). Adding noise to f32 host
//! tensors goes through the kernel dispatch (`crate::kernels::dispatch`) like every layer.
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
use rayon::prelude::*;

mod chacha_simd;
mod ziggurat;

use chacha_simd::KeyStream;

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
/// [`GaussianNoise::prefetch`] draws the next call's noise on a background thread while the
/// caller computes gradients; the values are exactly those the call would have drawn.
///
/// ```
/// use dp_core::GaussianNoise;
/// let mut a = GaussianNoise::seeded(7);
/// let mut b = GaussianNoise::seeded(7);
/// assert_eq!(a.sample(5, 1.0).unwrap(), b.sample(5, 1.0).unwrap());
/// ```
///
/// It is deliberately not `Clone`: a clone would continue the same stream, and two copies
/// add the same noise. Use [`GaussianNoise::duplicate_stream`] where that is really meant.
///
/// ```compile_fail
/// let a = dp_core::GaussianNoise::seeded(1);
/// let b = a.clone(); // refused: duplication must be explicit
/// ```
pub struct GaussianNoise {
    rng: ChaCha20Rng,
    pending: Option<Prefetch>,
}

/// Noise being drawn ahead of time: the stream position before its keys were taken, the
/// sizes requested, and the thread producing standard normals.
struct Prefetch {
    start: u128,
    sizes: Vec<usize>,
    handle: std::thread::JoinHandle<Vec<Vec<f32>>>,
}

impl std::fmt::Debug for GaussianNoise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GaussianNoise")
            .field("word_pos", &self.position())
            .field("prefetching", &self.pending.as_ref().map(|p| p.sizes.len()))
            .finish()
    }
}

/// `n` standard normals scaled by `std` from key `key`, in fixed-size chunks (chunk `k`
/// uses ChaCha20 stream `k` of the key), filled in parallel on rayon's pool.
///
/// The keystream comes from [`KeyStream`] (sixteen blocks per refill, by AVX-512 or AVX2)
/// where the CPU has either and from `rand_chacha` elsewhere: the same words either way, turned into
/// normals by [`ziggurat::fill`] (the draws of `rand_distr::StandardNormal`, faster).
fn fill_normals(key: [u8; 32], n: usize, std: f32) -> Vec<f32> {
    let mut out = vec![0f32; n];
    out.par_chunks_mut(NOISE_CHUNK)
        .enumerate()
        .for_each(|(k, chunk)| match KeyStream::new(key, k as u64) {
            Some(mut r) => ziggurat::fill(&mut r, chunk, std),
            None => {
                let mut r = ChaCha20Rng::from_seed(key);
                r.set_stream(k as u64);
                ziggurat::fill(&mut ziggurat::Scalar(&mut r), chunk, std);
            }
        });
    out
}

impl GaussianNoise {
    /// A second generator at the same point of the stream: **both copies add identical
    /// noise**. Adding the same noise twice (to two releases, or to one release from each
    /// copy) lets anyone who sees both cancel it, so this is for tests and for reproducing a
    /// draw, never for noising two releases. That is why `GaussianNoise` is not `Clone`: a
    /// duplicate must be asked for by name. A pending prefetch is not shared (the duplicate
    /// draws those values itself; they are the same values).
    ///
    /// ```
    /// use dp_core::GaussianNoise;
    /// let mut a = GaussianNoise::seeded(3);
    /// let mut b = a.duplicate_stream();
    /// assert_eq!(a.sample(4, 1.0).unwrap(), b.sample(4, 1.0).unwrap()); // the same noise: never release both
    /// ```
    pub fn duplicate_stream(&self) -> Self {
        let mut rng = self.rng.clone();
        rng.set_word_pos(self.position());
        Self { rng, pending: None }
    }

    /// A stream seeded from the operating system's CSPRNG.
    pub fn from_entropy() -> Self {
        Self {
            rng: ChaCha20Rng::from_entropy(),
            pending: None,
        }
    }

    /// A reproducible stream.
    pub fn seeded(seed: u64) -> Self {
        Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
            pending: None,
        }
    }

    /// The stream position, not counting keys taken by a pending prefetch.
    fn position(&self) -> u128 {
        match &self.pending {
            Some(p) => p.start,
            None => self.rng.get_word_pos(),
        }
    }

    /// Drops a pending prefetch and rewinds the stream to before it.
    fn cancel_prefetch(&mut self) {
        if let Some(p) = self.pending.take() {
            self.rng.set_word_pos(p.start);
        }
    }

    /// The stream's current state (a pending prefetch counts as not yet drawn).
    pub fn state(&self) -> NoiseState {
        let pos = self.position();
        NoiseState {
            seed: self.rng.get_seed(),
            word_pos: [(pos >> 64) as u64, pos as u64],
        }
    }

    /// Resumes a stream exactly where [`GaussianNoise::state`] left it.
    pub fn from_state(state: &NoiseState) -> Self {
        let mut rng = ChaCha20Rng::from_seed(state.seed);
        rng.set_word_pos(((state.word_pos[0] as u128) << 64) | state.word_pos[1] as u128);
        Self { rng, pending: None }
    }

    fn next_key(&mut self) -> [u8; 32] {
        let mut key = [0u8; 32];
        self.rng.fill_bytes(&mut key);
        key
    }

    /// `n` independent `N(0, std²)` draws.
    ///
    /// Each call takes a fresh 256-bit key from the main stream and fills fixed-size
    /// chunks of the output from independent ChaCha20 streams of that key (chunk `k` uses
    /// stream `k`), in parallel. The chunking does not depend on the number of threads, so
    /// a seed gives the same noise bit for bit on any machine. `std` must be finite, ≥ 0 and
    /// at most `f32::MAX` ([`CoreError::InvalidNoise`] otherwise, with nothing drawn): a NaN
    /// or infinite scale would turn every draw into NaN or ±∞.
    pub fn sample(&mut self, n: usize, std: f64) -> Result<Vec<f32>> {
        check_std(std)?;
        Ok(self.sample_unchecked(n, std))
    }

    fn sample_unchecked(&mut self, n: usize, std: f64) -> Vec<f32> {
        self.cancel_prefetch();
        let key = self.next_key();
        fill_normals(key, n, std as f32)
    }

    /// Starts drawing, on a background thread, the noise that the next
    /// [`GaussianNoise::add_noise`] call on tensors of these element counts will use, so
    /// that it overlaps with the gradient computation. Any other draw first cancels it
    /// (rewinding the stream), so results never depend on whether prefetch was used.
    pub fn prefetch(&mut self, sizes: &[usize]) {
        self.cancel_prefetch();
        let start = self.rng.get_word_pos();
        let keys: Vec<([u8; 32], usize)> = sizes.iter().map(|&n| (self.next_key(), n)).collect();
        let handle = std::thread::spawn(move || {
            keys.into_iter()
                .map(|(key, n)| fill_normals(key, n, 1.0))
                .collect()
        });
        self.pending = Some(Prefetch {
            start,
            sizes: sizes.to_vec(),
            handle,
        });
    }

    /// Returns `t + N(0, std² I)` for each tensor, drawing the tensors' noise in order
    /// (one [`GaussianNoise::sample`] call per tensor, or a matching prefetch). `std` must be
    /// finite, ≥ 0 and at most `f32::MAX` (the noise is scaled in f32).
    pub fn add_noise(&mut self, tensors: &[Tensor], std: f64) -> Result<Vec<Tensor>> {
        check_std(std)?;
        let sizes: Vec<usize> = tensors.iter().map(|t| t.elem_count()).collect();
        let prefetched = match self.pending.take() {
            Some(p) if p.sizes == sizes => match p.handle.join() {
                Ok(z) => Some(z),
                Err(_) => {
                    self.rng.set_word_pos(p.start);
                    None
                }
            },
            Some(p) => {
                self.rng.set_word_pos(p.start);
                None
            }
            None => None,
        };
        // Standard normals, prefetched or drawn now; `(z as f32)·1` then `·s` is the same f32
        // product `sample(n, std)` computes.
        let normals: Vec<Vec<f32>> = match prefetched {
            Some(z) => z,
            None => sizes
                .iter()
                .map(|&n| self.sample_unchecked(n, 1.0))
                .collect(),
        };
        let s = std as f32;
        tensors
            .iter()
            .zip(normals)
            .map(|(t, mut z)| {
                if crate::kernels::dispatch::fast_path(t) {
                    // f32 on the host: `t + z·s` into z's buffer in one pass, the same f32
                    // operations as the tensor expression below.
                    crate::kernels::dispatch::with_host(t, |tv| {
                        z.iter_mut()
                            .zip(tv)
                            .for_each(|(zi, ti)| *zi = *ti + *zi * s)
                    })?;
                    return Ok(Tensor::from_vec(z, t.dims(), t.device())?);
                }
                z.iter_mut().for_each(|zi| *zi *= s);
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
        self.cancel_prefetch();
        self.rng.gen()
    }
}

/// The noise is scaled in f32: a std beyond `f32::MAX` would be ∞ there and turn every
/// coordinate into ±∞ (or NaN), so it is refused like a non-finite one.
fn check_std(std: f64) -> Result<()> {
    if std.is_finite() && std >= 0.0 && std <= f32::MAX as f64 {
        Ok(())
    } else {
        Err(CoreError::InvalidNoise(std))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The noise is the same whichever keystream implementation the CPU gets.
    #[test]
    fn noise_equals_the_rand_chacha_reference() {
        let key = [42u8; 32];
        let n = 2 * NOISE_CHUNK + 123;
        let fast = fill_normals(key, n, 0.5);
        let mut slow = Vec::with_capacity(n);
        for k in 0..n.div_ceil(NOISE_CHUNK) {
            let mut r = ChaCha20Rng::from_seed(key);
            r.set_stream(k as u64);
            let len = NOISE_CHUNK.min(n - k * NOISE_CHUNK);
            slow.extend((0..len).map(|_| r.sample::<f32, _>(rand_distr::StandardNormal) * 0.5));
        }
        assert_eq!(fast, slow);
    }
}
