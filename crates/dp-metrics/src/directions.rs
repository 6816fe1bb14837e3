//! Random directions in parameter space with filter normalisation.
//!
//! Li, Xu, Taylor, Studer & Goldstein (2018), "Visualizing the Loss Landscape of Neural Nets",
//! §4 (filter-wise normalisation): a Gaussian direction d is rescaled filter by filter,
//! d_{l,j} ← d_{l,j} · ‖θ_{l,j}‖ / ‖d_{l,j}‖, where a filter is a slice along dim 0 of a
//! tensor of rank ≥ 2 (an output channel of a convolution, a row of a linear layer's weight).
//! Rank-0/1 tensors (biases, normalisation gains and shifts) are handled by [`BiasHandling`].
//!
//! Random numbers come from `rand_chacha` (candle's CPU RNG cannot be seeded), so a seed
//! reproduces a direction exactly on every device.

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::surface::ParamLayout;

/// What to do with the direction's rank-0/1 tensors (biases, norm gains and shifts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum BiasHandling {
    /// Set them to zero (Li et al.'s `--xignore biasbn`; the default, §12.7 step 3).
    #[default]
    Zero,
    /// Copy the weights (what Li et al.'s code does without `biasbn`): the direction moves each
    /// bias proportionally to itself.
    CopyWeights,
    /// Keep the random values, rescaled as one filter to the norm of the whole tensor.
    Normalize,
}

/// Draws a standard Gaussian vector of length `n` from `rng` (Box–Muller, f64).
pub(crate) fn gaussian_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]
        let u2: f64 = rng.gen::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push(r * t.cos());
        out.push(r * t.sin());
    }
    out.truncate(n);
    out
}

/// Draws a Rademacher (±1) vector of length `n`.
pub(crate) fn rademacher_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| if rng.gen::<bool>() { 1.0 } else { -1.0 })
        .collect()
}

/// A raw N(0, I) direction with the shapes, dtypes and devices of `params`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let p = vec![Tensor::zeros((3, 4), candle_core::DType::F32, &Device::Cpu)?];
/// let d1 = dp_metrics::random_direction(&p, 7)?;
/// let d2 = dp_metrics::random_direction(&p, 7)?;
/// assert_eq!(d1[0].dims(), &[3, 4]);
/// assert_eq!(dp_metrics::flatten_params(&d1)?, dp_metrics::flatten_params(&d2)?);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn random_direction(params: &[Tensor], seed: u64) -> Result<Vec<Tensor>> {
    let layout = ParamLayout::of(params);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    layout.unflatten(&gaussian_vec(&mut rng, layout.numel()))
}

/// Filter-normalises `direction` against `params` in flat form (shared with the other modules).
pub(crate) fn filter_normalize_flat(
    layout: &ParamLayout,
    direction: &mut [f64],
    params: &[f64],
    bias: BiasHandling,
) {
    for (shape, range) in layout.shapes().iter().zip(layout.ranges()) {
        let numel = range.len();
        if numel == 0 {
            continue;
        }
        let d = &mut direction[range.clone()];
        let w = &params[range];
        if shape.len() >= 2 {
            let filters = shape[0].max(1);
            let fsize = numel / filters;
            for (df, wf) in d.chunks_mut(fsize).zip(w.chunks(fsize)) {
                rescale(df, wf);
            }
        } else {
            match bias {
                BiasHandling::Zero => d.iter_mut().for_each(|x| *x = 0.0),
                BiasHandling::CopyWeights => d.copy_from_slice(w),
                BiasHandling::Normalize => rescale(d, w),
            }
        }
    }
}

fn rescale(d: &mut [f64], w: &[f64]) {
    let dn = d.iter().map(|x| x * x).sum::<f64>().sqrt();
    let wn = w.iter().map(|x| x * x).sum::<f64>().sqrt();
    // Li et al. divide by ‖d‖ + 1e-10; a zero weight filter gives a zero direction filter.
    let s = if dn > 0.0 { wn / dn } else { 0.0 };
    d.iter_mut().for_each(|x| *x *= s);
}

/// Filter-normalises `direction` with respect to `params` (Li et al. 2018, §4):
/// every filter (dim-0 slice of a rank ≥ 2 tensor) of the result has the Euclidean norm of
/// the corresponding filter of `params`; rank-0/1 tensors follow `bias`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_metrics::{filter_normalize, BiasHandling};
/// let w = vec![Tensor::new(&[[3f32, 4.], [0., 1.]], &Device::Cpu)?, Tensor::new(&[1f32, 1.], &Device::Cpu)?];
/// let d = vec![Tensor::new(&[[1f32, 0.], [2., 2.]], &Device::Cpu)?, Tensor::new(&[5f32, 5.], &Device::Cpu)?];
/// let n = filter_normalize(&d, &w, BiasHandling::Zero)?;
/// let rows = n[0].to_vec2::<f32>()?;
/// assert!((rows[0][0] - 5.0).abs() < 1e-6);          // ‖(3,4)‖ = 5
/// let r1 = (rows[1][0].powi(2) + rows[1][1].powi(2)).sqrt();
/// assert!((r1 - 1.0).abs() < 1e-6);                   // ‖(0,1)‖ = 1
/// assert_eq!(n[1].to_vec1::<f32>()?, vec![0.0, 0.0]); // biases zeroed
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn filter_normalize(
    direction: &[Tensor],
    params: &[Tensor],
    bias: BiasHandling,
) -> Result<Vec<Tensor>> {
    let layout = ParamLayout::of(params);
    let w = layout.flatten(params)?;
    let mut d = layout.flatten(direction)?;
    filter_normalize_flat(&layout, &mut d, &w, bias);
    layout.unflatten(&d)
}

/// A seeded Gaussian direction, filter-normalised against `params` (§12.7 steps 1–3).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_metrics::{filter_normalized_direction, BiasHandling};
/// let w = vec![Tensor::new(&[[3f32, 4.]], &Device::Cpu)?];
/// let d = filter_normalized_direction(&w, 1, BiasHandling::Zero)?;
/// let v = d[0].to_vec2::<f32>()?;
/// assert!(((v[0][0].powi(2) + v[0][1].powi(2)).sqrt() - 5.0).abs() < 1e-5);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn filter_normalized_direction(
    params: &[Tensor],
    seed: u64,
    bias: BiasHandling,
) -> Result<Vec<Tensor>> {
    let layout = ParamLayout::of(params);
    let w = layout.flatten(params)?;
    let d = filter_normalized_direction_flat(&layout, &w, seed, bias);
    layout.unflatten(&d)
}

pub(crate) fn filter_normalized_direction_flat(
    layout: &ParamLayout,
    params: &[f64],
    seed: u64,
    bias: BiasHandling,
) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut d = gaussian_vec(&mut rng, layout.numel());
    filter_normalize_flat(layout, &mut d, params, bias);
    d
}
