//! Noise calibration and step budgets.
//!
//! ε is monotone in σ (decreasing) and in the number of steps (increasing), so both searches
//! bracket the answer and bisect. Calibration bisects in log σ until the bracket is within a
//! relative 5e-4, i.e. three significant digits, and returns the bracket's safe end, so the
//! result always meets the target (Opacus's "noise search not conservative" bug, #348).

use crate::accountant::{Accountant, AccountantKind};
use crate::error::{check_delta, check_noise_multiplier, check_sampling_rate, AccountingError};
use crate::event::DpEvent;
use crate::prv::PrvAccountant;
use crate::rdp_accountant::RdpAccountant;

const SIGMA_MIN: f64 = 1e-2;
const SIGMA_MAX: f64 = 1e4;
const REL_TOL: f64 = 5e-4;

/// ε after `steps` Poisson-subsampled Gaussian steps with the chosen accountant (PRV: the
/// certified upper bound).
///
/// ```
/// use dp_accounting::{calibration::epsilon_for, AccountantKind};
/// let e = epsilon_for(512.0 / 60000.0, 1.23, 4687, 1e-5, AccountantKind::Rdp).unwrap();
/// assert!((e - 2.581).abs() < 1e-3);
/// ```
pub fn epsilon_for(
    sampling_rate: f64,
    noise_multiplier: f64,
    steps: u64,
    delta: f64,
    kind: AccountantKind,
) -> Result<f64, AccountingError> {
    match kind {
        AccountantKind::Rdp => epsilon_with(
            &RdpAccountant::new(),
            sampling_rate,
            noise_multiplier,
            steps,
            delta,
        ),
        AccountantKind::Prv => epsilon_with(
            &PrvAccountant::new(),
            sampling_rate,
            noise_multiplier,
            steps,
            delta,
        ),
    }
}

/// ε after composing `steps` subsampled Gaussian steps onto a copy of `prototype` (which may
/// carry configuration such as orders, conversion or error budgets, and earlier events).
///
/// ```
/// use dp_accounting::{calibration::epsilon_with, Conversion, RdpAccountant};
/// let classic = RdpAccountant::new().with_conversion(Conversion::Classic);
/// let e = epsilon_with(&classic, 512.0 / 60000.0, 1.23, 4687, 1e-5).unwrap();
/// assert!((e - 2.995).abs() < 1e-3);
/// ```
pub fn epsilon_with<A: Accountant>(
    prototype: &A,
    sampling_rate: f64,
    noise_multiplier: f64,
    steps: u64,
    delta: f64,
) -> Result<f64, AccountingError> {
    if steps == 0 {
        return Err(AccountingError::InvalidSteps);
    }
    let event = DpEvent::poisson_gaussian(sampling_rate, noise_multiplier)?.repeated(steps);
    let mut a = prototype.clone();
    a.compose(&event)?;
    a.epsilon(delta)
}

/// Number of steps for `epochs` passes at sampling rate q: ⌈epochs/q⌉ (rounded up so the
/// accounted run is never shorter than the real one).
///
/// ```
/// assert_eq!(dp_accounting::steps_for_epochs(60.0, 256.0 / 60000.0).unwrap(), 14063);
/// ```
pub fn steps_for_epochs(epochs: f64, sampling_rate: f64) -> Result<u64, AccountingError> {
    check_sampling_rate(sampling_rate)?;
    if !(epochs.is_finite() && epochs > 0.0) {
        return Err(AccountingError::InvalidSteps);
    }
    let s = (epochs / sampling_rate * (1.0 - 1e-12)).ceil();
    if s >= u64::MAX as f64 {
        return Err(AccountingError::CountOverflow);
    }
    Ok((s as u64).max(1))
}

/// The smallest noise multiplier σ (to three significant digits, rounded up) such that
/// `steps` Poisson-subsampled Gaussian steps at rate q are (target_epsilon, δ)-DP under the
/// chosen accountant.
///
/// The RDP accountant evaluates ε from a per-step RDP vector, so each probe is cheap; the PRV
/// probe runs a full FFT composition, so the search first brackets around the RDP answer
/// (PRV's σ is at most a few percent away).
///
/// ```
/// use dp_accounting::{calibrate_noise_multiplier, calibration::epsilon_for, AccountantKind};
/// let (q, steps, delta) = (256.0 / 60000.0, 14062, 1e-5);
/// let sigma = calibrate_noise_multiplier(3.0, delta, q, steps, AccountantKind::Rdp).unwrap();
/// assert!(epsilon_for(q, sigma, steps, delta, AccountantKind::Rdp).unwrap() <= 3.0);
/// assert!(epsilon_for(q, sigma * 0.999, steps, delta, AccountantKind::Rdp).unwrap() > 3.0);
/// ```
pub fn calibrate_noise_multiplier(
    target_epsilon: f64,
    delta: f64,
    sampling_rate: f64,
    steps: u64,
    kind: AccountantKind,
) -> Result<f64, AccountingError> {
    match kind {
        AccountantKind::Rdp => calibrate_noise_multiplier_with(
            &RdpAccountant::new(),
            target_epsilon,
            delta,
            sampling_rate,
            steps,
        ),
        AccountantKind::Prv => calibrate_noise_multiplier_with(
            &PrvAccountant::new(),
            target_epsilon,
            delta,
            sampling_rate,
            steps,
        ),
    }
}

/// [`calibrate_noise_multiplier`] for any accountant configuration: `prototype` is cloned for
/// every probe (its configuration and any earlier events are kept).
///
/// ```
/// use dp_accounting::{calibration::{calibrate_noise_multiplier_with, epsilon_with}, Conversion, RdpAccountant};
/// let classic = RdpAccountant::new().with_conversion(Conversion::Classic);
/// let s = calibrate_noise_multiplier_with(&classic, 2.0, 1e-5, 0.01, 1000).unwrap();
/// assert!(epsilon_with(&classic, 0.01, s, 1000, 1e-5).unwrap() <= 2.0);
/// ```
pub fn calibrate_noise_multiplier_with<A: Accountant>(
    prototype: &A,
    target_epsilon: f64,
    delta: f64,
    sampling_rate: f64,
    steps: u64,
) -> Result<f64, AccountingError> {
    let kind = prototype.kind();
    if !(target_epsilon.is_finite() && target_epsilon > 0.0) {
        return Err(AccountingError::InvalidEpsilon(target_epsilon));
    }
    check_delta(delta)?;
    check_sampling_rate(sampling_rate)?;
    if steps == 0 {
        return Err(AccountingError::InvalidSteps);
    }
    let eps = |s: f64| epsilon_with(prototype, sampling_rate, s, steps, delta);
    // Bracket: lo violates the target, hi meets it.
    let start = match kind {
        AccountantKind::Rdp => 1.0,
        AccountantKind::Prv => calibrate_noise_multiplier(
            target_epsilon,
            delta,
            sampling_rate,
            steps,
            AccountantKind::Rdp,
        )
        .unwrap_or(1.0),
    };
    let factor = if kind == AccountantKind::Prv {
        1.05
    } else {
        2.0
    };
    let (mut lo, mut hi);
    if eps(start)? <= target_epsilon {
        hi = start;
        lo = start / factor;
        loop {
            if lo < SIGMA_MIN {
                return Err(AccountingError::CalibrationFailed(format!(
                    "ε ≤ {target_epsilon} already with σ = {SIGMA_MIN}; the target does not constrain the noise"
                )));
            }
            if eps(lo)? > target_epsilon {
                break;
            }
            hi = lo;
            lo /= factor * factor;
        }
    } else {
        lo = start;
        hi = start * factor;
        loop {
            if hi > SIGMA_MAX {
                return Err(AccountingError::CalibrationFailed(format!(
                    "ε > {target_epsilon} even with σ = {SIGMA_MAX}"
                )));
            }
            if eps(hi)? <= target_epsilon {
                break;
            }
            lo = hi;
            hi *= factor * factor;
        }
    }
    while hi / lo > 1.0 + REL_TOL {
        let mid = (lo * hi).sqrt();
        if eps(mid)? <= target_epsilon {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi)
}

/// The largest number of steps whose ε stays ≤ `epsilon` at δ (0 if even one step exceeds
/// it).
///
/// ```
/// use dp_accounting::{max_steps, calibration::epsilon_for, AccountantKind};
/// let (q, sigma, delta) = (256.0 / 60000.0, 1.1, 1e-5);
/// let t = max_steps(2.597, delta, q, sigma, AccountantKind::Rdp).unwrap();
/// assert!(epsilon_for(q, sigma, t, delta, AccountantKind::Rdp).unwrap() <= 2.597);
/// assert!(epsilon_for(q, sigma, t + 1, delta, AccountantKind::Rdp).unwrap() > 2.597);
/// ```
pub fn max_steps(
    epsilon: f64,
    delta: f64,
    sampling_rate: f64,
    noise_multiplier: f64,
    kind: AccountantKind,
) -> Result<u64, AccountingError> {
    match kind {
        AccountantKind::Rdp => max_steps_with(
            &RdpAccountant::new(),
            epsilon,
            delta,
            sampling_rate,
            noise_multiplier,
        ),
        AccountantKind::Prv => max_steps_with(
            &PrvAccountant::new(),
            epsilon,
            delta,
            sampling_rate,
            noise_multiplier,
        ),
    }
}

/// [`max_steps`] for any accountant configuration (see [`calibrate_noise_multiplier_with`]).
///
/// ```
/// use dp_accounting::{calibration::max_steps_with, Conversion, RdpAccountant};
/// let classic = RdpAccountant::new().with_conversion(Conversion::Classic);
/// let balle = RdpAccountant::new();
/// let (a, b) = (max_steps_with(&classic, 2.0, 1e-5, 0.01, 1.0).unwrap(), max_steps_with(&balle, 2.0, 1e-5, 0.01, 1.0).unwrap());
/// assert!(0 < a && a < b);
/// ```
pub fn max_steps_with<A: Accountant>(
    prototype: &A,
    epsilon: f64,
    delta: f64,
    sampling_rate: f64,
    noise_multiplier: f64,
) -> Result<u64, AccountingError> {
    let kind = prototype.kind();
    if !(epsilon.is_finite() && epsilon >= 0.0) {
        return Err(AccountingError::InvalidEpsilon(epsilon));
    }
    check_delta(delta)?;
    check_sampling_rate(sampling_rate)?;
    check_noise_multiplier(noise_multiplier)?;
    const LIMIT: u64 = 1 << 40;
    let ok = |t: u64| -> Result<bool, AccountingError> {
        Ok(epsilon_with(prototype, sampling_rate, noise_multiplier, t, delta)? <= epsilon)
    };
    // Start from the RDP answer for PRV (PRV allows at least about as many steps).
    let mut lo: u64 = match kind {
        AccountantKind::Rdp => 0,
        AccountantKind::Prv => {
            let r = max_steps(
                epsilon,
                delta,
                sampling_rate,
                noise_multiplier,
                AccountantKind::Rdp,
            )
            .unwrap_or(0);
            if r > 0 && ok(r)? {
                r
            } else {
                0
            }
        }
    };
    // lo is feasible (or 0); find an infeasible hi by doubling.
    let mut hi = lo.max(1);
    loop {
        if !ok(hi)? {
            break;
        }
        lo = hi;
        if hi >= LIMIT {
            return Err(AccountingError::CalibrationFailed(format!(
                "more than {LIMIT} steps fit the budget"
            )));
        }
        hi = hi.saturating_mul(if kind == AccountantKind::Prv { 5 } else { 2 })
            / if kind == AccountantKind::Prv { 4 } else { 1 };
        hi = hi.max(lo + 1);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if ok(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}
