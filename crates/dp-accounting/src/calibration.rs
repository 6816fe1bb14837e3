//! Noise calibration and count budgets, generic over the accountant and the mechanism.
//!
//! In the manner of `calibrate_dp_mechanism` in Google's `dp_accounting`, the searches take an
//! *accountant factory* and an *event factory*: [`calibrate_noise`] finds the smallest
//! parameter p (a noise multiplier, or anything ε decreases in) whose event meets a target ε,
//! and [`max_count`] the largest count n (steps, releases) whose event stays within a budget.
//! Neither asks which accountant it holds, so σ schedules, steps that release several
//! queries ([`crate::combined_noise_multiplier`]) and accountants added later calibrate the
//! same way.
//!
//! ε is monotone in σ (decreasing) and in the number of steps (increasing), so both searches
//! bracket the answer and bisect. Calibration bisects in log p until the bracket is within a
//! relative tolerance (5e-4 by default, i.e. three significant digits) and returns the
//! bracket's safe end, so the result always meets the target (Opacus's "noise search not
//! conservative" bug, #348).
//!
//! The kind-based functions ([`calibrate_noise_multiplier`], [`max_steps`], [`epsilon_for`])
//! and their `_with` variants are thin wrappers for the constant-σ DP-SGD case.

use crate::accountant::{Accountant, AccountantKind};
use crate::any::AnyAccountant;
use crate::error::{
    check_delta, check_epsilon, check_noise_multiplier, check_sampling_rate, AccountingError,
};
use crate::event::DpEvent;
use crate::rdp_accountant::RdpAccountant;

/// Step counts above this are not searched by [`max_steps`] (2⁴⁰ ≈ 10¹²).
const STEP_LIMIT: u64 = 1 << 40;

/// Growth factor of the bracket around a warm start for accountants whose ε is costly: the
/// cheap RDP answer is within a few percent of theirs, so a narrow first bracket saves probes.
const WARM_GROWTH: f64 = 1.05;

/// Where and how finely [`calibrate_noise`] searches.
///
/// The bracket grows from `initial` by `growth`, then by `growth²` per probe, until ε
/// crosses the target, clamped to [`lower`, `upper`]; then it is bisected geometrically until
/// hi/lo ≤ 1 + `rel_tol`.
///
/// ```
/// use dp_accounting::NoiseSearch;
/// let s = NoiseSearch::default();
/// assert_eq!((s.lower, s.upper, s.initial, s.rel_tol, s.growth), (1e-2, 1e4, 1.0, 5e-4, 2.0));
/// let warm = NoiseSearch::default().starting_at(1.1).growing_by(1.05);
/// assert_eq!((warm.initial, warm.growth), (1.1, 1.05));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoiseSearch {
    /// Smallest parameter considered; if the target is met even here, it does not constrain
    /// the noise and calibration fails rather than return an arbitrary value.
    pub lower: f64,
    /// Largest parameter considered; if the target is not met here, calibration fails.
    pub upper: f64,
    /// First probe (a warm start from a cheaper accountant's answer saves probes).
    pub initial: f64,
    /// Relative width of the final bracket; the result is its upper (safe) end.
    pub rel_tol: f64,
    /// Factor (> 1) of the first bracket step from `initial`; later steps use its square.
    /// A good warm start deserves a small one.
    pub growth: f64,
}

impl Default for NoiseSearch {
    fn default() -> Self {
        NoiseSearch {
            lower: 1e-2,
            upper: 1e4,
            initial: 1.0,
            rel_tol: 5e-4,
            growth: 2.0,
        }
    }
}

impl NoiseSearch {
    /// The same search, first probing `guess` (clamped to [`lower`, `upper`] when run).
    ///
    /// ```
    /// assert_eq!(dp_accounting::NoiseSearch::default().starting_at(3.0).initial, 3.0);
    /// ```
    pub fn starting_at(self, guess: f64) -> Self {
        NoiseSearch {
            initial: guess,
            ..self
        }
    }

    /// The same search with bracket growth factor `factor` (> 1).
    ///
    /// ```
    /// assert_eq!(dp_accounting::NoiseSearch::default().growing_by(1.1).growth, 1.1);
    /// ```
    pub fn growing_by(self, factor: f64) -> Self {
        NoiseSearch {
            growth: factor,
            ..self
        }
    }

    /// Checks 0 < lower < upper < ∞, initial > 0, rel_tol > 0 and growth > 1, all finite.
    fn check(&self) -> Result<(), AccountingError> {
        let finite_pos = |x: f64| x.is_finite() && x > 0.0;
        if finite_pos(self.lower)
            && finite_pos(self.upper)
            && self.lower < self.upper
            && finite_pos(self.initial)
            && finite_pos(self.rel_tol)
            && self.growth.is_finite()
            && self.growth > 1.0
        {
            Ok(())
        } else {
            Err(AccountingError::InvalidConfig(format!(
                "noise search {self:?} needs 0 < lower < upper, initial > 0, rel_tol > 0, growth > 1"
            )))
        }
    }
}

/// ε of `event` composed onto a fresh accountant from `make_accountant`.
fn epsilon_of<A: Accountant>(
    make_accountant: &impl Fn() -> A,
    event: &DpEvent,
    delta: f64,
) -> Result<f64, AccountingError> {
    let mut a = make_accountant();
    a.compose(event)?;
    a.epsilon(delta)
}

/// The smallest parameter p (to `search.rel_tol`, rounded up) such that the event
/// `make_event(p)`, composed onto `make_accountant()`, is (target_epsilon, δ)-DP, assuming ε
/// decreases in p.
///
/// The answer is the safe end of the final bracket, so ε(p) ≤ target always holds for the
/// returned p, whatever the tolerance. p is typically a noise multiplier, but the event
/// factory can map it to anything: a σ schedule, or a step whose gradient and count share
/// one sample (see [`crate::combined_noise_multiplier`]).
///
/// Errors: [`AccountingError::InvalidEpsilon`] / [`AccountingError::InvalidDelta`] for a bad
/// target, [`AccountingError::InvalidConfig`] for a malformed `search`,
/// [`AccountingError::CalibrationFailed`] when the target is met already at `search.lower`
/// (it does not constrain the noise) or not even at `search.upper`, and any error of the
/// factories or the accountant.
///
/// ```
/// use dp_accounting::{calibrate_noise, Accountant, DpEvent, NoiseSearch, RdpAccountant};
/// let run = |s: f64| Ok(DpEvent::poisson_gaussian(0.01, s)?.repeated(1000));
/// let s = calibrate_noise(RdpAccountant::new, run, 2.0, 1e-5, NoiseSearch::default()).unwrap();
/// let eps = |s: f64| {
///     let mut a = RdpAccountant::new();
///     a.compose(&run(s).unwrap()).unwrap();
///     a.epsilon(1e-5).unwrap()
/// };
/// assert!(eps(s) <= 2.0 && eps(s * 0.999) > 2.0);
/// ```
pub fn calibrate_noise<A: Accountant>(
    make_accountant: impl Fn() -> A,
    make_event: impl Fn(f64) -> Result<DpEvent, AccountingError>,
    target_epsilon: f64,
    delta: f64,
    search: NoiseSearch,
) -> Result<f64, AccountingError> {
    if !(target_epsilon.is_finite() && target_epsilon > 0.0) {
        return Err(AccountingError::InvalidEpsilon(target_epsilon));
    }
    check_delta(delta)?;
    search.check()?;
    let meets = |p: f64| -> Result<bool, AccountingError> {
        Ok(epsilon_of(&make_accountant, &make_event(p)?, delta)? <= target_epsilon)
    };
    let NoiseSearch {
        lower,
        upper,
        rel_tol,
        growth,
        ..
    } = search;
    let start = search.initial.clamp(lower, upper);
    // Bracket: lo violates the target, hi meets it.
    let (mut lo, mut hi);
    if meets(start)? {
        hi = start;
        lo = start / growth;
        loop {
            if lo <= lower {
                lo = lower;
                if meets(lo)? {
                    return Err(AccountingError::CalibrationFailed(format!(
                        "ε ≤ {target_epsilon} already with noise parameter {lower}; the target does not constrain the noise"
                    )));
                }
                break;
            }
            if !meets(lo)? {
                break;
            }
            hi = lo;
            lo /= growth * growth;
        }
    } else {
        lo = start;
        hi = start * growth;
        loop {
            if hi >= upper {
                hi = upper;
                if !meets(hi)? {
                    return Err(AccountingError::CalibrationFailed(format!(
                        "ε > {target_epsilon} even with noise parameter {upper}"
                    )));
                }
                break;
            }
            if meets(hi)? {
                break;
            }
            lo = hi;
            hi *= growth * growth;
        }
    }
    while hi / lo > 1.0 + rel_tol {
        let mid = (lo * hi).sqrt();
        if meets(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi)
}

/// The largest n ≤ `cap` such that `make_event(n)`, composed onto `make_accountant()`, is
/// (epsilon, δ)-DP; 0 if even n = 1 exceeds the budget. Assumes ε increases in n.
///
/// `cap` is checked first: a budget that allows more than `cap` returns `cap` (not an error),
/// which is what a trainer that plans `cap` steps needs, and costs one probe. Otherwise the
/// search doubles from 1 and bisects, never probing beyond twice the answer (so an accountant
/// whose cost grows with n, like PRV, is not asked about absurd counts). If ε cannot be
/// evaluated at `cap` itself (PRV's grid outgrows its cap for huge counts), the search
/// continues below it and reports that error only if it needs `cap` again.
///
/// ```
/// use dp_accounting::{max_count, max_steps, AccountantKind, DpEvent, RdpAccountant};
/// let step = DpEvent::poisson_gaussian(0.01, 1.0).unwrap();
/// let run = |n: u64| Ok(step.clone().repeated(n));
/// let all = max_steps(2.0, 1e-5, 0.01, 1.0, AccountantKind::Rdp).unwrap();
/// assert_eq!(max_count(RdpAccountant::new, run, 2.0, 1e-5, u64::MAX).unwrap(), all);
/// assert_eq!(max_count(RdpAccountant::new, run, 2.0, 1e-5, 100).unwrap(), 100);
/// ```
pub fn max_count<A: Accountant>(
    make_accountant: impl Fn() -> A,
    make_event: impl Fn(u64) -> Result<DpEvent, AccountingError>,
    epsilon: f64,
    delta: f64,
    cap: u64,
) -> Result<u64, AccountingError> {
    check_epsilon(epsilon)?;
    check_delta(delta)?;
    if cap == 0 {
        return Ok(0);
    }
    let fits = |n: u64| -> Result<bool, AccountingError> {
        Ok(epsilon_of(&make_accountant, &make_event(n)?, delta)? <= epsilon)
    };
    let cap_known_infeasible = match fits(cap) {
        Ok(true) => return Ok(cap),
        Ok(false) => true,
        Err(_) => false,
    };
    count_search(&fits, 0, 1, cap, cap_known_infeasible, |n| {
        n.saturating_mul(2)
    })
}

/// [`max_count`] warm-started at `start` (a cheaper accountant's answer): probes `start`,
/// then grows the bracket by 5/4 per probe (or, if `start` already exceeds the budget,
/// searches below it as [`max_count`] does). The result is the same for an ε monotone in n;
/// only the probes differ.
///
/// ```
/// use dp_accounting::{calibration::max_count_from, max_count, DpEvent, PrvAccountant};
/// let step = DpEvent::poisson_gaussian(0.02, 1.0).unwrap();
/// let run = |n: u64| Ok(step.clone().repeated(n));
/// let n = max_count_from(PrvAccountant::new, run, 1.0, 1e-5, 1 << 20, 40).unwrap();
/// assert!(n > 0 && n < 1 << 20);
/// ```
pub fn max_count_from<A: Accountant>(
    make_accountant: impl Fn() -> A,
    make_event: impl Fn(u64) -> Result<DpEvent, AccountingError>,
    epsilon: f64,
    delta: f64,
    cap: u64,
    start: u64,
) -> Result<u64, AccountingError> {
    check_epsilon(epsilon)?;
    check_delta(delta)?;
    let start = start.min(cap);
    if start == 0 {
        return max_count(make_accountant, make_event, epsilon, delta, cap);
    }
    let fits = |n: u64| -> Result<bool, AccountingError> {
        Ok(epsilon_of(&make_accountant, &make_event(n)?, delta)? <= epsilon)
    };
    if !fits(start)? {
        return max_count(make_accountant, make_event, epsilon, delta, start - 1);
    }
    if start == cap {
        return Ok(cap);
    }
    let grow = |n: u64| n.saturating_mul(5) / 4;
    count_search(
        &fits,
        start,
        grow(start).max(start + 1).min(cap),
        cap,
        false,
        grow,
    )
}

/// Brackets and bisects a count: `lo` fits (or is 0), `hi` ≤ `cap` is the next probe, and
/// `cap_known_infeasible` says `cap` was already found over budget. Returns the largest
/// fitting n ≤ cap.
fn count_search(
    fits: &impl Fn(u64) -> Result<bool, AccountingError>,
    mut lo: u64,
    mut hi: u64,
    cap: u64,
    cap_known_infeasible: bool,
    grow: impl Fn(u64) -> u64,
) -> Result<u64, AccountingError> {
    loop {
        if hi == cap && cap_known_infeasible {
            break;
        }
        if !fits(hi)? {
            break;
        }
        lo = hi;
        if hi == cap {
            return Ok(cap);
        }
        hi = grow(hi).max(lo + 1).min(cap);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

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
    epsilon_with(
        &AnyAccountant::new(kind),
        sampling_rate,
        noise_multiplier,
        steps,
        delta,
    )
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
/// chosen accountant: [`calibrate_noise_multiplier_with`] on a fresh
/// [`AnyAccountant::new`]`(kind)`.
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
    calibrate_noise_multiplier_with(
        &AnyAccountant::new(kind),
        target_epsilon,
        delta,
        sampling_rate,
        steps,
    )
}

/// [`calibrate_noise_multiplier`] for any accountant configuration: [`calibrate_noise`] with
/// a clone of `prototype` per probe (its configuration and any earlier events are kept) and
/// the constant-σ run as the event.
///
/// When the prototype's ε is costly ([`Accountant::epsilon_is_cheap`] is false, as for PRV)
/// the search is warm-started at the RDP answer with a narrow first bracket: every probe is
/// a full composition, and a tighter accountant's σ is at most a few percent below RDP's.
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
    if !(target_epsilon.is_finite() && target_epsilon > 0.0) {
        return Err(AccountingError::InvalidEpsilon(target_epsilon));
    }
    check_delta(delta)?;
    check_sampling_rate(sampling_rate)?;
    if steps == 0 {
        return Err(AccountingError::InvalidSteps);
    }
    let search = if prototype.epsilon_is_cheap() {
        NoiseSearch::default()
    } else {
        let guess = calibrate_noise_multiplier_with(
            &RdpAccountant::new(),
            target_epsilon,
            delta,
            sampling_rate,
            steps,
        )
        .unwrap_or(NoiseSearch::default().initial);
        NoiseSearch::default()
            .starting_at(guess)
            .growing_by(WARM_GROWTH)
    };
    calibrate_noise(
        || prototype.clone(),
        |s| Ok(DpEvent::poisson_gaussian(sampling_rate, s)?.repeated(steps)),
        target_epsilon,
        delta,
        search,
    )
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
    max_steps_with(
        &AnyAccountant::new(kind),
        epsilon,
        delta,
        sampling_rate,
        noise_multiplier,
    )
}

/// [`max_steps`] for any accountant configuration (see [`calibrate_noise_multiplier_with`]):
/// [`max_count`] over repetitions of one step, with a clone of `prototype` per probe.
/// Fails with [`AccountingError::CalibrationFailed`] if 2⁴⁰ steps or more fit the budget.
///
/// For an accountant with costly ε the search is warm-started ([`max_count_from`]) at the RDP
/// answer, which a tighter accountant allows at least about as many steps as.
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
    check_epsilon(epsilon)?;
    check_delta(delta)?;
    check_sampling_rate(sampling_rate)?;
    check_noise_multiplier(noise_multiplier)?;
    let step = DpEvent::poisson_gaussian(sampling_rate, noise_multiplier)?;
    let make = || prototype.clone();
    let run = |n: u64| Ok(step.clone().repeated(n));
    let warm = if prototype.epsilon_is_cheap() {
        0
    } else {
        max_steps_with(
            &RdpAccountant::new(),
            epsilon,
            delta,
            sampling_rate,
            noise_multiplier,
        )
        .unwrap_or(0)
    };
    let n = if warm > 0 {
        max_count_from(make, run, epsilon, delta, STEP_LIMIT, warm)?
    } else {
        max_count(make, run, epsilon, delta, STEP_LIMIT)?
    };
    if n >= STEP_LIMIT {
        return Err(AccountingError::CalibrationFailed(format!(
            "{STEP_LIMIT} steps or more fit the budget"
        )));
    }
    Ok(n)
}
