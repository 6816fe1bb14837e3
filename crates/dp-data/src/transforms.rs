//! Transforms: per-channel normalisation, random crop with padding, horizontal flip, and
//! augmentation multiplicity (De et al. 2022).
//!
//! Images are channels-first (`[C, H, W]`). Normalisation is applied once, in place, to a
//! whole dataset; augmentations are applied per step to a gathered batch with an explicit
//! RNG so they are reproducible.

use rand::RngCore;

use crate::dataset::{Batch, Dataset};
use crate::error::DataError;
use crate::rng;

/// MNIST pixel mean (of `[0, 1]`-scaled training pixels), the constant used by PyTorch
/// examples, Opacus and Tramèr & Boneh (2021).
pub const MNIST_MEAN: f32 = 0.1307;
/// MNIST pixel standard deviation.
pub const MNIST_STD: f32 = 0.3081;
/// FashionMNIST pixel mean.
pub const FASHION_MNIST_MEAN: f32 = 0.2860;
/// FashionMNIST pixel standard deviation.
pub const FASHION_MNIST_STD: f32 = 0.3530;
/// CIFAR-10 per-channel (R, G, B) means of the training set.
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// CIFAR-10 per-channel (R, G, B) standard deviations of the training set pixels
/// (the true per-pixel std; the often-copied `[0.2023, 0.1994, 0.2010]` is the std of
/// per-image means and is not used here).
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// Per-channel standardisation `x ← (x − mean[c]) / std[c]`.
///
/// A single-element `mean`/`std` applies to every channel. Constants are fixed
/// (not estimated from the private training data), so normalising costs no privacy.
///
/// ```
/// use dp_data::{Normalize, MNIST_MEAN, MNIST_STD};
/// let mut data = dp_data::load_bundled_mnist()?;
/// let norm = Normalize::mnist();
/// norm.apply_dataset(&mut data.train)?;
/// let x0 = data.train.features()[0]; // a background pixel, 0 before normalising
/// assert!((x0 - (0.0 - MNIST_MEAN) / MNIST_STD).abs() < 1e-6);
/// # Ok::<(), dp_data::DataError>(())
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalize {
    /// Per-channel means (or one shared value).
    pub mean: Vec<f32>,
    /// Per-channel standard deviations (or one shared value), all positive.
    pub std: Vec<f32>,
}

impl Normalize {
    /// Normalisation with MNIST's constants ([`MNIST_MEAN`], [`MNIST_STD`]).
    pub fn mnist() -> Self {
        Normalize {
            mean: vec![MNIST_MEAN],
            std: vec![MNIST_STD],
        }
    }

    /// Normalisation with FashionMNIST's constants.
    pub fn fashion_mnist() -> Self {
        Normalize {
            mean: vec![FASHION_MNIST_MEAN],
            std: vec![FASHION_MNIST_STD],
        }
    }

    /// Normalisation with CIFAR-10's per-channel constants.
    pub fn cifar10() -> Self {
        Normalize {
            mean: CIFAR10_MEAN.to_vec(),
            std: CIFAR10_STD.to_vec(),
        }
    }

    /// Normalises `features` (any number of `[C, ...]` examples back to back) in place.
    pub fn apply(&self, features: &mut [f32], example_shape: &[usize]) -> Result<(), DataError> {
        if self.mean.len() != self.std.len() || self.mean.is_empty() {
            return Err(DataError::InvalidArgument(format!(
                "Normalize needs equally many means and stds, got {} and {}",
                self.mean.len(),
                self.std.len()
            )));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(DataError::InvalidArgument(format!(
                "Normalize std {s} must be positive and finite"
            )));
        }
        // A NaN or infinite mean would silently turn every feature into NaN/∞.
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(DataError::InvalidArgument(format!(
                "Normalize mean {m} must be finite"
            )));
        }
        let example_len: usize = example_shape.iter().product();
        let channels = example_shape.first().copied().unwrap_or(1).max(1);
        if self.mean.len() != 1 && self.mean.len() != channels {
            return Err(DataError::InvalidArgument(format!(
                "Normalize has {} channels, examples of shape {example_shape:?} have {channels}",
                self.mean.len()
            )));
        }
        if example_len == 0 || !features.len().is_multiple_of(example_len) {
            return Err(DataError::InvalidArgument(format!(
                "{} values are not a whole number of examples of shape {example_shape:?}",
                features.len()
            )));
        }
        let plane = example_len / channels;
        for example in features.chunks_exact_mut(example_len) {
            for (c, chan) in example.chunks_exact_mut(plane).enumerate() {
                let k = if self.mean.len() == 1 { 0 } else { c };
                let (m, inv) = (self.mean[k], 1.0 / self.std[k]);
                for x in chan {
                    *x = (*x - m) * inv;
                }
            }
        }
        Ok(())
    }

    /// Normalises a whole dataset in place.
    pub fn apply_dataset(&self, ds: &mut Dataset) -> Result<(), DataError> {
        let shape = ds.example_shape().to_vec();
        self.apply(ds.features_mut(), &shape)
    }

    /// Normalises a gathered batch in place.
    pub fn apply_batch(&self, batch: &mut Batch) -> Result<(), DataError> {
        let shape = batch.example_shape.clone();
        self.apply(&mut batch.features, &shape)
    }
}

/// Per-example group normalisation of channel-first features (PyTorch's
/// `GroupNorm(groups, C, affine=False)`, applied once to the data): the `C` channels are
/// split into `groups` consecutive groups, and each example's group is standardised over its
/// channels and positions, `x ← (x − μ) / √(σ² + eps)` with the biased variance.
///
/// Tramèr & Boneh (2021) normalise ScatterNet features this way (`--input_norm=GroupNorm
/// --num_groups=27` for 81 channels; their private alternative is noisy batch-norm
/// statistics). Each example is normalised with its own statistics only, so this is a
/// per-example transform and **costs no privacy** — unlike batch-norm statistics, which
/// average over the training set and must be released with noise and accounted.
///
/// ```
/// use dp_data::{Dataset, GroupNormalize};
/// let mut d = Dataset::new("x", vec![1.0, 3.0, 10.0, 30.0], vec![0], vec![2, 2], 2)?;
/// GroupNormalize::new(2, 1e-5)?.apply_dataset(&mut d)?;
/// let f = d.features();
/// assert!((f[0] + 1.0).abs() < 1e-4 && (f[1] - 1.0).abs() < 1e-4); // each group: ±1
/// assert!((f[2] + 1.0).abs() < 1e-4 && (f[3] - 1.0).abs() < 1e-4);
/// assert!(GroupNormalize::new(0, 1e-5).is_err());
/// # Ok::<(), dp_data::DataError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GroupNormalize {
    groups: usize,
    eps: f32,
}

impl GroupNormalize {
    /// PyTorch's GroupNorm default ε.
    pub const DEFAULT_EPS: f32 = 1e-5;

    /// `groups ≥ 1` groups, `eps` finite and > 0 (a zero ε divides a constant group by 0).
    pub fn new(groups: usize, eps: f32) -> Result<Self, DataError> {
        if groups == 0 {
            return Err(DataError::InvalidArgument(
                "GroupNormalize needs at least one group".into(),
            ));
        }
        if !(eps.is_finite() && eps > 0.0) {
            return Err(DataError::InvalidArgument(format!(
                "GroupNormalize eps {eps} must be finite and > 0"
            )));
        }
        Ok(Self { groups, eps })
    }

    /// The number of groups.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Normalises `features` (`[C, ...]` examples back to back) in place; `C` must be a
    /// multiple of the number of groups.
    pub fn apply(&self, features: &mut [f32], example_shape: &[usize]) -> Result<(), DataError> {
        let example_len: usize = example_shape.iter().product();
        let channels = example_shape.first().copied().unwrap_or(0);
        if channels == 0 || !channels.is_multiple_of(self.groups) {
            return Err(DataError::InvalidArgument(format!(
                "GroupNormalize: {channels} channels (shape {example_shape:?}) are not a \
                 multiple of {} groups",
                self.groups
            )));
        }
        if example_len == 0 || !features.len().is_multiple_of(example_len) {
            return Err(DataError::InvalidArgument(format!(
                "{} values are not a whole number of examples of shape {example_shape:?}",
                features.len()
            )));
        }
        let group_len = example_len / self.groups;
        for group in features.chunks_exact_mut(group_len) {
            let n = group.len() as f64;
            let mean = group.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = group
                .iter()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / n;
            let inv = 1.0 / (var + self.eps as f64).sqrt();
            for v in group.iter_mut() {
                *v = ((*v as f64 - mean) * inv) as f32;
            }
        }
        Ok(())
    }

    /// Normalises every example of a dataset in place.
    pub fn apply_dataset(&self, ds: &mut Dataset) -> Result<(), DataError> {
        let shape = ds.example_shape().to_vec();
        self.apply(ds.features_mut(), &shape)
    }
}

/// Random augmentation of one `[C, H, W]` image: crop with zero padding, then flip.
///
/// `crop_padding = p` pads each side by `p` pixels of `pad_value` and takes a random
/// `H × W` window (offsets uniform in `0..=2p`), the standard CIFAR-10 augmentation used
/// by De et al. (2022) with `p = 4`. `flip` mirrors left–right with probability 1/2.
/// `pad_value` should be the *normalised* value of a black pixel if data is normalised
/// first (or 0 when augmenting before normalising).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augmentation {
    /// Padding on each side for the random crop (0 disables cropping).
    pub crop_padding: usize,
    /// Whether to flip horizontally with probability 1/2.
    pub flip: bool,
    /// Value of padded pixels.
    pub pad_value: f32,
}

impl Augmentation {
    /// The CIFAR-10 default: 4-pixel padded random crop plus horizontal flip.
    pub fn cifar10() -> Self {
        Augmentation {
            crop_padding: 4,
            flip: true,
            pad_value: 0.0,
        }
    }

    /// Writes one augmented copy of `src` (shape `[C, H, W]`) into `dst`.
    ///
    /// ```
    /// use dp_data::Augmentation;
    /// use rand::SeedableRng;
    /// let aug = Augmentation { crop_padding: 0, flip: true, pad_value: 0.0 };
    /// let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(0);
    /// let src = [1.0, 2.0, 3.0, 4.0]; // one channel, 2x2
    /// let mut dst = [0.0; 4];
    /// aug.apply_one(&src, &[1, 2, 2], &mut rng, &mut dst)?;
    /// assert!(dst == src || dst == [2.0, 1.0, 4.0, 3.0]);
    /// # Ok::<(), dp_data::DataError>(())
    /// ```
    pub fn apply_one<R: RngCore + ?Sized>(
        &self,
        src: &[f32],
        example_shape: &[usize],
        rng: &mut R,
        dst: &mut [f32],
    ) -> Result<(), DataError> {
        let (c, h, w) = match *example_shape {
            [c, h, w] => (c, h, w),
            _ => {
                return Err(DataError::InvalidArgument(format!(
                    "augmentation needs [C, H, W] images, got shape {example_shape:?}"
                )))
            }
        };
        if src.len() != c * h * w || dst.len() != src.len() {
            return Err(DataError::InvalidArgument(format!(
                "augmentation buffers of {} and {} values for shape {example_shape:?}",
                src.len(),
                dst.len()
            )));
        }
        let p = self.crop_padding;
        // Offsets of the crop window in padded coordinates, each uniform in 0..=2p.
        let (dy, dx) = if p > 0 {
            (rng::below(rng, 2 * p + 1), rng::below(rng, 2 * p + 1))
        } else {
            (p, p)
        };
        let flip = self.flip && rng::bernoulli(rng, 0.5);
        for ch in 0..c {
            let plane = &src[ch * h * w..(ch + 1) * h * w];
            let out = &mut dst[ch * h * w..(ch + 1) * h * w];
            for y in 0..h {
                // Source row in unpadded coordinates (may fall in the padding).
                let sy = (y + dy) as isize - p as isize;
                for x in 0..w {
                    let xo = if flip { w - 1 - x } else { x };
                    let sx = (xo + dx) as isize - p as isize;
                    out[y * w + x] = if sy >= 0 && (sy as usize) < h && sx >= 0 && (sx as usize) < w
                    {
                        plane[sy as usize * w + sx as usize]
                    } else {
                        self.pad_value
                    };
                }
            }
        }
        Ok(())
    }

    /// Augments every row of a batch in place (multiplicity 1).
    pub fn apply_batch<R: RngCore + ?Sized>(
        &self,
        batch: &mut Batch,
        rng: &mut R,
    ) -> Result<(), DataError> {
        let d = batch.example_len();
        let shape = batch.example_shape.clone();
        let mut tmp = vec![0f32; d];
        for row in batch.features.chunks_exact_mut(d) {
            self.apply_one(row, &shape, rng, &mut tmp)?;
            row.copy_from_slice(&tmp);
        }
        Ok(())
    }
}

/// Augmentation multiplicity (De et al. 2022): `k` independently augmented copies of every
/// example of `batch`, as one `[B*K, C, H, W]` batch.
///
/// **Layout:** the `k` copies of example `i` are contiguous — rows `i*k .. (i+1)*k` are
/// copies of `batch` row `i` — and `labels`, `groups` and `indices` are repeated
/// accordingly. dp-core must *average the per-sample gradients of each group of `k`
/// consecutive rows before clipping* (view the per-sample gradients as `[B, K, ...]` and
/// take the mean over `K`); the clipped sum is then over the `B` original examples, so the
/// sensitivity, the sampling rate and the privacy accounting are unchanged. Gradients of the
/// `k` copies must never be clipped separately (that would multiply the sensitivity by `k`).
///
/// `k = 1` returns one augmented copy per example.
///
/// ```
/// use dp_data::{augment_multiplicity, Augmentation};
/// use rand::SeedableRng;
/// let ds = dp_data::Dataset::new("x", vec![0.0; 2 * 3 * 8 * 8], vec![0, 1], vec![3, 8, 8], 2)?;
/// let batch = ds.gather(&[1, 0]);
/// let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(0);
/// let big = augment_multiplicity(&batch, 4, &Augmentation::cifar10(), &mut rng)?;
/// assert_eq!(big.shape(), vec![8, 3, 8, 8]);
/// assert_eq!(big.labels, vec![1, 1, 1, 1, 0, 0, 0, 0]);
/// assert_eq!(big.indices, vec![1, 1, 1, 1, 0, 0, 0, 0]);
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub fn augment_multiplicity<R: RngCore + ?Sized>(
    batch: &Batch,
    k: usize,
    aug: &Augmentation,
    rng: &mut R,
) -> Result<Batch, DataError> {
    if k == 0 {
        return Err(DataError::InvalidArgument(
            "augmentation multiplicity k must be at least 1".into(),
        ));
    }
    let d = batch.example_len();
    let mut features = vec![0f32; batch.features.len() * k];
    for (i, src) in batch.features.chunks_exact(d).enumerate() {
        for j in 0..k {
            let row = i * k + j;
            aug.apply_one(
                src,
                &batch.example_shape,
                rng,
                &mut features[row * d..(row + 1) * d],
            )?;
        }
    }
    let repeat = |v: &[u32]| v.iter().flat_map(|&x| std::iter::repeat_n(x, k)).collect();
    Ok(Batch {
        features,
        labels: repeat(&batch.labels),
        groups: batch.groups.as_ref().map(|g| repeat(g)),
        indices: batch
            .indices
            .iter()
            .flat_map(|&x| std::iter::repeat_n(x, k))
            .collect(),
        example_shape: batch.example_shape.clone(),
    })
}
