//! Clipping statistics, clipping bias, dispersion and signal-to-noise from per-example
//! gradients (algorithms.md §14.3).
//!
//! Per-example gradients come in as one candle tensor `[n, d]` (flattened per example; any
//! float dtype, converted to `f64`). Per-layer metrics take the column range of each layer,
//! `&[(String, Range<usize>)]`. Definitions:
//!
//! * clipping (Abadi et al. 2016, eq. in Alg. 1): clip_C(g) = g · min(1, C/‖g‖);
//! * clipping bias b = ḡ_c − ḡ (Chen, Wu & Hong 2020, "Understanding gradient clipping in
//!   private SGD", §3), ‖b‖, ‖b‖/‖ḡ‖ and the alignment cos(ḡ_c, ḡ);
//! * magnitude ratio ρ_m = ‖ḡ_c‖/‖ḡ‖ and direction-only bias ‖ḡ_c − ρ_m ḡ‖ (§14.3);
//! * within-batch dispersion V = (1/n) Σ‖g_i − ḡ‖² (Xiao et al., S&P 2023);
//! * SNR = ‖Σ_i clip(g_i)‖ / (σ·C·√d), whose denominator is E‖N(0, σ²C²I_d)‖ ≈ σC√d.

use std::ops::Range;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{ensure_finite, ensure_nonempty, MetricsError, Result};
use crate::surface::{axpy, cosine, norm};

/// Checks `[n, d]` with n, d ≥ 1 and converts to f64.
pub(crate) fn grads_f64(grads: &Tensor) -> Result<(Tensor, usize, usize)> {
    let (n, d) = grads.dims2().map_err(|_| {
        MetricsError::ShapeMismatch(format!(
            "per-example gradients must be [n, d], got {:?}",
            grads.dims()
        ))
    })?;
    if n == 0 || d == 0 {
        return Err(MetricsError::EmptyInput(
            "per-example gradients with n = 0 or d = 0".into(),
        ));
    }
    Ok((grads.to_dtype(DType::F64)?, n, d))
}

/// Σ_i w_i g_i as a flat vector (one `[1, n] × [n, d]` matmul, no slow `sum(0)`).
pub(crate) fn weighted_row_sum(g: &Tensor, w: &[f64]) -> Result<Vec<f64>> {
    let wt = Tensor::from_vec(w.to_vec(), (1, w.len()), g.device())?;
    Ok(wt.matmul(g)?.flatten_all()?.to_vec1::<f64>()?)
}

/// Euclidean norm of each row of an `[n, d]` f64 tensor.
pub(crate) fn row_norms(g: &Tensor) -> Result<Vec<f64>> {
    let norms = g.sqr()?.sum(1)?.sqrt()?.to_vec1::<f64>()?;
    ensure_finite(&norms, "per-example gradient norms")?;
    Ok(norms)
}

/// Euclidean norm of every per-example gradient (row of `[n, d]`).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let g = Tensor::new(&[[3f32, 4.], [0., 1.]], &Device::Cpu)?;
/// assert_eq!(dp_metrics::per_example_norms(&g)?, vec![5.0, 1.0]);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn per_example_norms(grads: &Tensor) -> Result<Vec<f64>> {
    let (g, _, _) = grads_f64(grads)?;
    row_norms(&g)
}

/// Per-example clip factors min(1, C/‖g_i‖) (1 for a zero gradient); errors on a NaN,
/// infinite or negative norm.
///
/// ```
/// assert_eq!(dp_metrics::clip_factors(&[0.5, 2.0, 0.0], 1.0)?, vec![1.0, 0.5, 1.0]);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn clip_factors(norms: &[f64], clip_norm: f64) -> Result<Vec<f64>> {
    check_clip(clip_norm)?;
    // `NaN > C` is false, so a NaN (or negative) norm would get factor 1: an unclipped
    // example reported as within the bound. Refused instead.
    if let Some(bad) = norms.iter().find(|n| !(n.is_finite() && **n >= 0.0)) {
        return Err(MetricsError::NonFinite(format!(
            "per-example norm {bad} (norms must be finite and ≥ 0)"
        )));
    }
    Ok(norms
        .iter()
        .map(|&n| if n > clip_norm { clip_norm / n } else { 1.0 })
        .collect())
}

fn check_clip(clip_norm: f64) -> Result<()> {
    if clip_norm.is_finite() && clip_norm > 0.0 {
        Ok(())
    } else {
        Err(MetricsError::InvalidArgument(format!(
            "clip norm must be > 0, got {clip_norm}"
        )))
    }
}

/// Summary of a set of norms.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NormQuantiles {
    /// Smallest.
    pub min: f64,
    /// 10% quantile.
    pub p10: f64,
    /// Median.
    pub p50: f64,
    /// 90% quantile.
    pub p90: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// The q-quantile (0 ≤ q ≤ 1) with linear interpolation between order statistics
/// (Hyndman & Fan 1996, type 7 — numpy's default).
///
/// ```
/// assert_eq!(dp_metrics::quantile(&[4.0, 1.0, 3.0, 2.0], 0.5)?, 2.5);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn quantile(values: &[f64], q: f64) -> Result<f64> {
    let mut v = values.to_vec();
    sort_checked(&mut v)?;
    quantile_sorted(&v, q)
}

fn sort_checked(v: &mut [f64]) -> Result<()> {
    ensure_nonempty(v, "quantile of no values")?;
    ensure_finite(v, "quantile input")?;
    v.sort_by(f64::total_cmp);
    Ok(())
}

fn quantile_sorted(v: &[f64], q: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&q) {
        return Err(MetricsError::InvalidArgument(format!(
            "quantile level {q} outside [0, 1]"
        )));
    }
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let t = pos - lo as f64;
    let gap = v[hi] - v[lo];
    Ok(if gap.is_finite() {
        v[lo] + gap * t
    } else {
        // The gap between neighbours near ±f64::MAX overflows (∞·0 = NaN at t = 0):
        // interpolate without forming it.
        v[lo] * (1.0 - t) + v[hi] * t
    })
}

/// Min, 10/50/90% quantiles, max and mean of `norms` (§14.3).
///
/// ```
/// let q = dp_metrics::norm_quantiles(&[1.0, 2.0, 3.0])?;
/// assert_eq!((q.min, q.p50, q.max, q.mean), (1.0, 2.0, 3.0, 2.0));
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn norm_quantiles(norms: &[f64]) -> Result<NormQuantiles> {
    let mut v = norms.to_vec();
    sort_checked(&mut v)?;
    Ok(NormQuantiles {
        min: v[0],
        p10: quantile_sorted(&v, 0.1)?,
        p50: quantile_sorted(&v, 0.5)?,
        p90: quantile_sorted(&v, 0.9)?,
        max: v[v.len() - 1],
        mean: mean_of(&v),
    })
}

/// The mean of finite values, finite even where their sum overflows f64: then each value is
/// divided by `n` before summing, and the result (which rounding can push just past
/// f64::MAX) is clamped to the values' range, where the mean lies.
pub(crate) fn mean_of(v: &[f64]) -> f64 {
    let n = v.len() as f64;
    let plain = v.iter().sum::<f64>() / n;
    if plain.is_finite() {
        return plain;
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    v.iter().map(|x| x / n).sum::<f64>().clamp(lo, hi)
}

/// Andrew et al. (2021) adaptive-clipping tracking error |C_t − median‖g_i‖| / median (§14.3).
///
/// ```
/// assert_eq!(dp_metrics::tracking_error(1.5, &[1.0, 1.0, 3.0])?, 0.5);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn tracking_error(clip_norm: f64, norms: &[f64]) -> Result<f64> {
    let med = quantile(norms, 0.5)?;
    if med <= 0.0 {
        return Err(MetricsError::InvalidArgument("median norm is 0".into()));
    }
    Ok((clip_norm - med).abs() / med)
}

/// Bias of a transformed mean gradient ḡ_c against the plain mean ḡ.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BiasStats {
    /// ‖ḡ‖.
    pub mean_grad_norm: f64,
    /// ‖ḡ_c‖.
    pub transformed_mean_norm: f64,
    /// ‖b‖ = ‖ḡ_c − ḡ‖.
    pub bias_norm: f64,
    /// ‖b‖/‖ḡ‖ (`None` if ḡ = 0).
    pub relative_bias: Option<f64>,
    /// cos(ḡ_c, ḡ) — BAM's "stochastic alignment" (`None` if either is 0).
    pub cosine: Option<f64>,
    /// ρ_m = ‖ḡ_c‖/‖ḡ‖ (`None` if ḡ = 0).
    pub magnitude_ratio: Option<f64>,
    /// Direction-only bias ‖ḡ_c − ρ_m·ḡ‖ (`None` if ḡ = 0).
    pub direction_bias: Option<f64>,
}

/// Bias statistics of a transformed mean `g_transformed` (ḡ_c: clipped, or any algorithm's
/// per-example transform) against the unclipped mean `g_mean` (ḡ), both flat (§14.3).
///
/// ```
/// let b = dp_metrics::bias_stats(&[2.0, 0.0], &[1.0, 0.0])?;
/// assert_eq!((b.bias_norm, b.relative_bias, b.magnitude_ratio), (1.0, Some(0.5), Some(0.5)));
/// assert_eq!(b.direction_bias, Some(0.0)); // same direction: the bias is pure magnitude
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn bias_stats(g_mean: &[f64], g_transformed: &[f64]) -> Result<BiasStats> {
    if g_mean.len() != g_transformed.len() {
        return Err(MetricsError::ShapeMismatch(
            "mean and transformed gradients differ in length".into(),
        ));
    }
    ensure_finite(g_mean, "mean gradient")?;
    ensure_finite(g_transformed, "transformed mean gradient")?;
    let ng = norm(g_mean);
    let nc = norm(g_transformed);
    let b = axpy(g_transformed, -1.0, g_mean);
    let bias_norm = norm(&b);
    let (relative_bias, magnitude_ratio, direction_bias) = if ng > 0.0 {
        let rho = nc / ng;
        (
            Some(bias_norm / ng),
            Some(rho),
            Some(norm(&axpy(g_transformed, -rho, g_mean))),
        )
    } else {
        (None, None, None)
    };
    let cosine = cosine(g_transformed, g_mean);
    // Finite inputs can still overflow f64 in the squared norms (entries near 1e200 and
    // beyond): refused, rather than an ∞ norm and NaN ratios.
    let outputs = [
        Some(ng),
        Some(nc),
        Some(bias_norm),
        relative_bias,
        magnitude_ratio,
    ];
    let outputs: Vec<f64> = outputs
        .into_iter()
        .chain([direction_bias, cosine])
        .flatten()
        .collect();
    ensure_finite(
        &outputs,
        "bias statistics (the gradient norms overflow f64)",
    )?;
    Ok(BiasStats {
        mean_grad_norm: ng,
        transformed_mean_norm: nc,
        bias_norm,
        relative_bias,
        cosine,
        magnitude_ratio,
        direction_bias,
    })
}

/// The clipping-bias vector b = ḡ_c − ḡ = (1/n) Σ (clip_C(g_i) − g_i) (§14.3), flat, length d.
/// It is exactly 0 when no example has ‖g_i‖ > C.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let g = Tensor::new(&[[3f32, 4.], [0., 1.]], &Device::Cpu)?;
/// let b = dp_metrics::clipping_bias_vector(&g, 1.0)?;
/// // only row 0 is clipped: (1/2)·((0.6, 0.8) − (3, 4))
/// assert!((b[0] + 1.2).abs() < 1e-6 && (b[1] + 1.6).abs() < 1e-6);
/// assert_eq!(dp_metrics::clipping_bias_vector(&g, 10.0)?, vec![0.0, 0.0]);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn clipping_bias_vector(grads: &Tensor, clip_norm: f64) -> Result<Vec<f64>> {
    let (g, n, _) = grads_f64(grads)?;
    let norms = row_norms(&g)?;
    let w: Vec<f64> = clip_factors(&norms, clip_norm)?
        .iter()
        .map(|f| (f - 1.0) / n as f64)
        .collect();
    weighted_row_sum(&g, &w)
}

/// Clipping statistics of one layer (its columns of the per-example gradients). Clipping
/// uses the full per-example norm; only the sums are restricted to the layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerClipStats {
    /// Layer name.
    pub name: String,
    /// Number of parameters d_l.
    pub dim: usize,
    /// Quantiles of the per-example norms of this layer's block.
    pub norm_quantiles: NormQuantiles,
    /// Bias of the layer's clipped mean.
    pub bias: BiasStats,
    /// Per-layer SNR ‖Σ_i clip(g_i)_l‖ / (σ·C·√d_l) (`None` without σ or with σ = 0).
    pub snr: Option<f64>,
}

/// Clipping statistics of a batch (or probe set) of per-example gradients (§14.3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClippingStats {
    /// Number of examples n.
    pub n: usize,
    /// Number of parameters d.
    pub d: usize,
    /// Clip norm C.
    pub clip_norm: f64,
    /// φ = (1/n) Σ 1[‖g_i‖ > C].
    pub clipped_fraction: f64,
    /// Quantiles of ‖g_i‖.
    pub norm_quantiles: NormQuantiles,
    /// Bias of the clipped mean ḡ_c against ḡ.
    pub bias: BiasStats,
    /// Dispersion V = (1/n) Σ‖g_i − ḡ‖².
    pub dispersion: f64,
    /// V/‖ḡ‖² (`None` if ḡ = 0).
    pub relative_dispersion: Option<f64>,
    /// SNR = ‖Σ_i clip(g_i)‖ / (σ·C·√d) (`None` without σ or with σ = 0).
    pub snr: Option<f64>,
    /// Per-layer statistics, in the order given.
    pub layers: Vec<LayerClipStats>,
}

/// All §14.3 statistics of per-example gradients `grads` `[n, d]` under clipping at
/// `clip_norm` (C), with the SNR for noise multiplier σ = `noise_multiplier` (use σ_t for a
/// decaying schedule) and per-layer statistics for the column ranges in `layers`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let g = Tensor::new(&[[3f32, 4.], [0., 1.]], &Device::Cpu)?;
/// let layers = vec![("w".to_string(), 0..1), ("b".to_string(), 1..2)];
/// let s = dp_metrics::clipping_stats(&g, 1.0, Some(1.0), &layers)?;
/// assert_eq!(s.clipped_fraction, 0.5);
/// assert!((s.dispersion - 4.5).abs() < 1e-9); // ḡ = (1.5, 2.5); each ‖g_i − ḡ‖² = 4.5
/// // ‖Σ clip(g_i)‖ = ‖(0.6, 1.8)‖ over σ·C·√2
/// assert!((s.snr.unwrap() - (0.36f64 + 3.24).sqrt() / 2f64.sqrt()).abs() < 1e-6);
/// assert_eq!(s.layers.len(), 2);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn clipping_stats(
    grads: &Tensor,
    clip_norm: f64,
    noise_multiplier: Option<f64>,
    layers: &[(String, Range<usize>)],
) -> Result<ClippingStats> {
    check_clip(clip_norm)?;
    if let Some(s) = noise_multiplier {
        if !(s.is_finite() && s >= 0.0) {
            return Err(MetricsError::InvalidArgument(format!(
                "noise multiplier must be ≥ 0, got {s}"
            )));
        }
    }
    let (g, n, d) = grads_f64(grads)?;
    for (name, r) in layers {
        if r.start >= r.end || r.end > d {
            return Err(MetricsError::ShapeMismatch(format!(
                "layer {name}: range {r:?} not inside 0..{d}"
            )));
        }
    }
    let norms = row_norms(&g)?;
    let factors = clip_factors(&norms, clip_norm)?;
    let clipped_fraction = norms.iter().filter(|&&x| x > clip_norm).count() as f64 / n as f64;
    let inv_n = 1.0 / n as f64;
    let gbar = weighted_row_sum(&g, &vec![inv_n; n])?;
    let gc = weighted_row_sum(&g, &factors.iter().map(|f| f * inv_n).collect::<Vec<_>>())?;
    let bias = bias_stats(&gbar, &gc)?;
    let gbar_t = Tensor::from_vec(gbar.clone(), (1, d), g.device())?;
    let dispersion = g
        .broadcast_sub(&gbar_t)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?
        * inv_n;
    let ng2 = bias.mean_grad_norm.powi(2);
    // σ·C·√d can underflow to 0 (σ and C both tiny), which would make the ratio ∞ or 0/0:
    // a ratio that is not finite is refused rather than reported.
    let snr_of = |sum_norm: f64, dim: usize| -> Result<Option<f64>> {
        match noise_multiplier.filter(|s| *s > 0.0) {
            None => Ok(None),
            Some(s) => {
                let r = sum_norm / (s * clip_norm * (dim as f64).sqrt());
                if r.is_finite() {
                    Ok(Some(r))
                } else {
                    Err(MetricsError::NonFinite(format!(
                        "signal-to-noise ratio at σ = {s}, C = {clip_norm}"
                    )))
                }
            }
        }
    };
    let snr = snr_of(n as f64 * bias.transformed_mean_norm, d)?;
    let mut layer_stats = Vec::with_capacity(layers.len());
    for (name, r) in layers {
        let block = g.narrow(1, r.start, r.len())?;
        let lb = bias_stats(&gbar[r.clone()], &gc[r.clone()])?;
        layer_stats.push(LayerClipStats {
            name: name.clone(),
            dim: r.len(),
            norm_quantiles: norm_quantiles(&row_norms(&block)?)?,
            snr: snr_of(n as f64 * lb.transformed_mean_norm, r.len())?,
            bias: lb,
        });
    }
    Ok(ClippingStats {
        n,
        d,
        clip_norm,
        clipped_fraction,
        norm_quantiles: norm_quantiles(&norms)?,
        bias,
        dispersion,
        relative_dispersion: (ng2 > 0.0).then(|| dispersion / ng2),
        snr,
        layers: layer_stats,
    })
}

/// Bias statistics for an algorithm's own per-example *scaling* transform (the Global-Adapt
/// factor, AUTO-S's 1/(‖g‖ + γ), …): ḡ_t = (1/n) Σ factors_i·g_i against ḡ (§14.3).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let g = Tensor::new(&[[2f32, 0.], [0., 2.]], &Device::Cpu)?;
/// let b = dp_metrics::transform_bias_stats(&g, &[0.5, 0.5])?;
/// assert_eq!(b.magnitude_ratio, Some(0.5));
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn transform_bias_stats(grads: &Tensor, factors: &[f64]) -> Result<BiasStats> {
    let (gbar, gt, _) = mean_and_transformed_mean(grads, factors)?;
    bias_stats(&gbar, &gt)
}

/// The batch mean `ḡ = (1/n)Σ g_i` and the transformed mean `(1/n)Σ c_i g_i` of per-example
/// gradients `[n, d]` with validated factors `c`; also returns `d`.
pub(crate) fn mean_and_transformed_mean(
    grads: &Tensor,
    factors: &[f64],
) -> Result<(Vec<f64>, Vec<f64>, usize)> {
    let (g, n, d) = grads_f64(grads)?;
    if factors.len() != n {
        return Err(MetricsError::ShapeMismatch(format!(
            "{} factors for {n} examples",
            factors.len()
        )));
    }
    ensure_finite(factors, "transform factors")?;
    let inv_n = 1.0 / n as f64;
    let gbar = weighted_row_sum(&g, &vec![inv_n; n])?;
    let gt = weighted_row_sum(&g, &factors.iter().map(|f| f * inv_n).collect::<Vec<_>>())?;
    Ok((gbar, gt, d))
}
