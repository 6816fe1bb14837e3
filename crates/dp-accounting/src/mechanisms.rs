//! Event factories for steps that are more than one constant-σ Gaussian query: several
//! queries released on one sample, and σ schedules.
//!
//! They are plain functions returning [`DpEvent`]s so that [`crate::calibrate_noise`] and
//! [`crate::max_count`] can calibrate any of them through a closure, in the manner of
//! `calibrate_dp_mechanism` in Google's `dp_accounting`.

use crate::error::{check_noise_multiplier, AccountingError};
use crate::event::DpEvent;

/// The noise multiplier of several Gaussian queries released on the same sample, each
/// σ_k already normalised by its own L2 sensitivity: (Σ_k σ_k⁻²)^(−1/2).
///
/// Why this is exact, not a bound: the joint release (f₁(D) + N(0, σ₁²Δ₁²), …) rescaled
/// coordinate-wise by 1/(σ_kΔ_k) is one Gaussian mechanism with unit noise whose vector
/// sensitivity has squared norm Σ_k σ_k⁻², so it is the Gaussian mechanism with the multiplier
/// returned here; subsampling first keeps it one Poisson-subsampled Gaussian. A DP-SGD step
/// that releases a noisy gradient sum and a noisy count on one Poisson sample is therefore one
/// [`DpEvent::PoissonSampledGaussian`] with this σ (Andrew et al. 2021, §3.1 Theorem 1 is the
/// two-query case with a count of sensitivity ½: σ = (σ_Δ⁻² + (2σ_b)⁻²)^(−1/2)).
///
/// Errors: [`AccountingError::InvalidMechanism`] for an empty slice,
/// [`AccountingError::InvalidNoiseMultiplier`] for any σ_k that is not finite and > 0.
///
/// ```
/// use dp_accounting::combined_noise_multiplier;
/// // Andrew et al.: σ_b = 12.8 for the clipped count, σ_Δ chosen so the step has σ = 1.
/// let sigma = combined_noise_multiplier(&[1.000764, 2.0 * 12.8]).unwrap();
/// assert!((sigma - 1.0).abs() < 1e-6);
/// assert_eq!(combined_noise_multiplier(&[1.3]).unwrap(), 1.3);
/// assert!(combined_noise_multiplier(&[]).is_err());
/// ```
pub fn combined_noise_multiplier(multipliers: &[f64]) -> Result<f64, AccountingError> {
    if multipliers.is_empty() {
        return Err(AccountingError::InvalidMechanism(
            "combined_noise_multiplier needs at least one query".into(),
        ));
    }
    for &s in multipliers {
        check_noise_multiplier(s)?;
    }
    // Factor out the smallest σ so that neither σ⁻² underflows nor the sum overflows:
    // σ_min · (Σ (σ_min/σ_k)²)^(−1/2), with the sum in [1, n].
    let s_min = multipliers.iter().copied().fold(f64::INFINITY, f64::min);
    let sum: f64 = multipliers.iter().map(|&s| (s_min / s).powi(2)).sum();
    let sigma = s_min / sum.sqrt();
    check_noise_multiplier(sigma)?;
    Ok(sigma)
}

/// A σ schedule at a fixed sampling rate: `sigmas[i] = (σ_i, n_i)` is n_i Poisson-subsampled
/// Gaussian steps with multiplier σ_i, composed in order into one `Composed` event of
/// `SelfComposed` blocks.
///
/// Errors: [`AccountingError::InvalidSamplingRate`] / [`AccountingError::InvalidNoiseMultiplier`]
/// for bad parameters, [`AccountingError::InvalidSteps`] when the schedule has no steps at all
/// (an empty slice or only zero counts: there is nothing to calibrate), and
/// [`AccountingError::CountOverflow`] when the counts overflow.
///
/// ```
/// use dp_accounting::{calibrate_noise, schedule_event, NoiseSearch, RdpAccountant};
/// let e = schedule_event(0.01, &[(1.0, 500), (1.5, 500)]).unwrap();
/// assert_eq!(e.total_count(), 1000);
/// // σ for the first half, 1.5σ for the second, calibrated to ε = 2 at δ = 1e-5.
/// let s = calibrate_noise(
///     RdpAccountant::new,
///     |s| schedule_event(0.01, &[(s, 500), (1.5 * s, 500)]),
///     2.0,
///     1e-5,
///     NoiseSearch::default(),
/// )
/// .unwrap();
/// assert!(s > 0.5 && s < 2.0);
/// ```
pub fn schedule_event(
    sampling_rate: f64,
    sigmas: &[(f64, u64)],
) -> Result<DpEvent, AccountingError> {
    let blocks = sigmas
        .iter()
        .map(|&(s, n)| Ok(DpEvent::poisson_gaussian(sampling_rate, s)?.repeated(n)))
        .collect::<Result<Vec<_>, AccountingError>>()?;
    let event = DpEvent::Composed(blocks);
    event.validate()?;
    if event.total_count() == 0 {
        return Err(AccountingError::InvalidSteps);
    }
    Ok(event)
}
