//! Generic calibration: σ schedules, steps that release two queries, capped count searches.

use dp_accounting::{
    calibrate_noise, calibrate_noise_multiplier, combined_noise_multiplier, max_count, max_steps,
    schedule_event, Accountant, AccountantKind, AccountingError, AnyAccountant, DpEvent,
    NoiseSearch, PrvAccountant, RdpAccountant,
};

const DELTA: f64 = 1e-5;

fn eps_of<A: Accountant>(proto: &A, event: &DpEvent) -> f64 {
    let mut a = proto.fresh();
    a.compose(event).unwrap();
    a.epsilon(DELTA).unwrap()
}

/// σ for the first half of the steps, 1.5σ for the second.
fn half_and_half(q: f64, steps: u64) -> impl Fn(f64) -> Result<DpEvent, AccountingError> {
    move |s| schedule_event(q, &[(s, steps / 2), (1.5 * s, steps - steps / 2)])
}

fn schedule_is_calibrated<A: Accountant>(proto: A) {
    let (q, steps, target) = (0.01, 1000, 2.0);
    let make = half_and_half(q, steps);
    let s = calibrate_noise(
        || proto.fresh(),
        &make,
        target,
        DELTA,
        NoiseSearch::default(),
    )
    .unwrap();
    assert!(
        eps_of(&proto, &make(s).unwrap()) <= target,
        "{}",
        proto.name()
    );
    assert!(
        eps_of(&proto, &make(s * (1.0 - 1e-3)).unwrap()) > target,
        "{}",
        proto.name()
    );
    // The schedule is really used: it needs less σ than a constant σ over all steps, but
    // more than a constant 1.5σ would.
    let constant = |s: f64| Ok(DpEvent::poisson_gaussian(q, s)?.repeated(steps));
    let c = calibrate_noise(
        || proto.fresh(),
        constant,
        target,
        DELTA,
        NoiseSearch::default(),
    )
    .unwrap();
    assert!(
        c / 1.5 < s && s < c,
        "{}: schedule {s}, constant {c}",
        proto.name()
    );
}

#[test]
fn sigma_schedule_calibrates_with_rdp() {
    schedule_is_calibrated(RdpAccountant::new());
}

#[test]
fn sigma_schedule_calibrates_with_prv() {
    schedule_is_calibrated(PrvAccountant::new());
}

#[test]
fn schedule_event_builds_blocks_and_validates() {
    let e = schedule_event(0.1, &[(1.0, 3), (2.0, 0), (1.5, 2)]).unwrap();
    assert_eq!(e.total_count(), 5);
    let DpEvent::Composed(blocks) = &e else {
        panic!("not a Composed event: {e:?}")
    };
    assert_eq!(blocks.len(), 3);
    assert_eq!(
        blocks[0],
        DpEvent::poisson_gaussian(0.1, 1.0).unwrap().repeated(3)
    );
    assert_eq!(schedule_event(0.1, &[]), Err(AccountingError::InvalidSteps));
    assert_eq!(
        schedule_event(0.1, &[(1.0, 0)]),
        Err(AccountingError::InvalidSteps)
    );
    assert_eq!(
        schedule_event(0.1, &[(1.0, 1), (-1.0, 1)]),
        Err(AccountingError::InvalidNoiseMultiplier(-1.0))
    );
    assert_eq!(
        schedule_event(1.5, &[(1.0, 1)]),
        Err(AccountingError::InvalidSamplingRate(1.5))
    );
}

#[test]
fn combined_noise_multiplier_values() {
    assert_eq!(combined_noise_multiplier(&[1.3]).unwrap(), 1.3);
    assert_eq!(combined_noise_multiplier(&[0.7]).unwrap(), 0.7);
    // Two equal queries: σ/√2.
    let two = combined_noise_multiplier(&[2.0, 2.0]).unwrap();
    assert!((two - 2.0 / 2f64.sqrt()).abs() < 1e-15);
    // Order does not matter; adding a query only lowers σ.
    let a = combined_noise_multiplier(&[1.0, 3.0, 7.0]).unwrap();
    let b = combined_noise_multiplier(&[7.0, 1.0, 3.0]).unwrap();
    assert!((a - b).abs() < 1e-15 && a < 1.0);
    // Andrew et al. 2021 §3.1: σ = 1 and σ_b = 12.8 give σ_Δ = 1.000764 for the gradient.
    let sigma_b: f64 = 12.8;
    let sigma_delta = (1.0 - (2.0 * sigma_b).powi(-2)).powf(-0.5);
    assert!((sigma_delta - 1.000764).abs() < 1e-6, "{sigma_delta}");
    let c = combined_noise_multiplier(&[sigma_delta, 2.0 * sigma_b]).unwrap();
    assert!((c - 1.0).abs() < 1e-12, "{c}");
    let c = combined_noise_multiplier(&[1.000764, 2.0 * sigma_b]).unwrap();
    assert!((c - 1.0).abs() < 1e-6, "{c}");
    // Extreme magnitudes neither underflow nor overflow.
    let c = combined_noise_multiplier(&[1e300, 1e300]).unwrap();
    assert!((c / (1e300 / 2f64.sqrt()) - 1.0).abs() < 1e-12);
    let c = combined_noise_multiplier(&[1e-300, 1.0]).unwrap();
    assert!((c / 1e-300 - 1.0).abs() < 1e-12);
}

#[test]
fn combined_noise_multiplier_rejects_bad_inputs() {
    assert!(matches!(
        combined_noise_multiplier(&[]),
        Err(AccountingError::InvalidMechanism(_))
    ));
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert!(
            matches!(
                combined_noise_multiplier(&[1.0, bad]),
                Err(AccountingError::InvalidNoiseMultiplier(_))
            ),
            "{bad}"
        );
    }
}

/// A step releasing a gradient sum with multiplier p and a count with σ_b = 5 (sensitivity
/// ½, so multiplier 10) on one Poisson sample.
fn two_query_step(q: f64, steps: u64) -> impl Fn(f64) -> Result<DpEvent, AccountingError> {
    move |p| {
        let sigma = combined_noise_multiplier(&[p, 5.0 / 0.5])?;
        Ok(DpEvent::poisson_gaussian(q, sigma)?.repeated(steps))
    }
}

fn two_query_calibration(kind: AccountantKind) {
    let (q, steps, target) = (256.0 / 60000.0, 2000, 1.5);
    let proto = AnyAccountant::new(kind);
    let make = two_query_step(q, steps);
    let p = calibrate_noise(
        || proto.fresh(),
        &make,
        target,
        DELTA,
        NoiseSearch::default(),
    )
    .unwrap();
    let eps_p = eps_of(&proto, &make(p).unwrap());
    assert!(eps_p <= target, "{kind}: {eps_p}");
    assert!(eps_of(&proto, &make(p * (1.0 - 1e-3)).unwrap()) > target);
    // The combined σ is the constant σ the accountant calibrates for one query.
    let sigma = combined_noise_multiplier(&[p, 10.0]).unwrap();
    let direct = calibrate_noise_multiplier(target, DELTA, q, steps, kind).unwrap();
    assert!(
        (sigma / direct - 1.0).abs() < 2e-3,
        "{kind}: {sigma} vs {direct}"
    );
    let single = DpEvent::poisson_gaussian(q, sigma).unwrap().repeated(steps);
    assert_eq!(eps_of(&proto, &single), eps_p);
    // The count costs privacy: the gradient needs more noise than without it.
    assert!(p > direct);
}

#[test]
fn two_query_step_calibrates_with_rdp() {
    two_query_calibration(AccountantKind::Rdp);
}

#[test]
fn two_query_step_calibrates_with_prv() {
    two_query_calibration(AccountantKind::Prv);
}

#[test]
fn noise_search_bounds_and_config() {
    let run = |s: f64| Ok(DpEvent::poisson_gaussian(0.01, s)?.repeated(100));
    let free =
        calibrate_noise(RdpAccountant::new, run, 2.0, DELTA, NoiseSearch::default()).unwrap();
    // The target met already at `lower` does not constrain the noise; one not met at
    // `upper` cannot be met.
    let above = NoiseSearch {
        lower: 2.0 * free,
        upper: 100.0 * free,
        ..NoiseSearch::default()
    };
    let below = NoiseSearch {
        lower: 0.01 * free,
        upper: 0.5 * free,
        ..NoiseSearch::default()
    };
    for search in [
        above,
        below,
        above.starting_at(1e9),
        below.starting_at(1e-9),
    ] {
        assert!(
            matches!(
                calibrate_noise(RdpAccountant::new, run, 2.0, DELTA, search),
                Err(AccountingError::CalibrationFailed(_))
            ),
            "{search:?}"
        );
    }
    // An answer just above `lower` is found, not refused, when the bracket overshoots it.
    let search = NoiseSearch {
        lower: free * 0.99,
        ..NoiseSearch::default()
    }
    .starting_at(free * 50.0);
    let s = calibrate_noise(RdpAccountant::new, run, 2.0, DELTA, search).unwrap();
    assert!(
        s >= search.lower && (s / free - 1.0).abs() < 1e-3,
        "{s} vs {free}"
    );
    // Malformed searches are configuration errors.
    for bad in [
        NoiseSearch::default().starting_at(0.0),
        NoiseSearch::default().growing_by(1.0),
        NoiseSearch {
            lower: 2.0,
            upper: 1.0,
            ..NoiseSearch::default()
        },
        NoiseSearch {
            rel_tol: f64::NAN,
            ..NoiseSearch::default()
        },
    ] {
        assert!(matches!(
            calibrate_noise(RdpAccountant::new, run, 2.0, DELTA, bad),
            Err(AccountingError::InvalidConfig(_))
        ));
    }
    assert_eq!(
        calibrate_noise(RdpAccountant::new, run, 0.0, DELTA, NoiseSearch::default()),
        Err(AccountingError::InvalidEpsilon(0.0))
    );
}

#[test]
fn max_count_caps_without_failing() {
    let (q, sigma, budget) = (0.01, 1.0, 2.0);
    let step = DpEvent::poisson_gaussian(q, sigma).unwrap();
    let run = |n: u64| Ok(step.clone().repeated(n));
    let all = max_steps(budget, DELTA, q, sigma, AccountantKind::Rdp).unwrap();
    assert!(all > 10);
    // Budget allows more than the cap: the cap, no error.
    for cap in [1, all / 2, all - 1, all] {
        assert_eq!(
            max_count(RdpAccountant::new, run, budget, DELTA, cap).unwrap(),
            cap
        );
    }
    // Otherwise exactly max_steps.
    for cap in [all + 1, 2 * all, 1 << 40, u64::MAX] {
        assert_eq!(
            max_count(RdpAccountant::new, run, budget, DELTA, cap).unwrap(),
            all,
            "cap {cap}"
        );
    }
    assert_eq!(
        max_count(RdpAccountant::new, run, budget, DELTA, 0).unwrap(),
        0
    );
    // Even one step exceeds a tiny budget.
    assert_eq!(
        max_count(RdpAccountant::new, run, 1e-6, DELTA, 100).unwrap(),
        0
    );
    assert!(max_count(RdpAccountant::new, run, f64::NAN, DELTA, 100).is_err());
}

#[test]
fn max_count_with_prv_caps_and_survives_an_unevaluable_cap() {
    let (q, sigma, budget) = (0.05, 1.0, 3.0);
    let step = DpEvent::poisson_gaussian(q, sigma).unwrap();
    let run = |n: u64| Ok(step.clone().repeated(n));
    let eps = |n: u64| eps_of(&PrvAccountant::new(), &step.clone().repeated(n));
    // u64::MAX steps cannot be evaluated by PRV (its grid outgrows the cap); the search
    // goes on below it.
    let n = max_count(PrvAccountant::new, run, budget, DELTA, u64::MAX).unwrap();
    assert!(n > 0);
    assert!(eps(n) <= budget && eps(n + 1) > budget, "{n}");
    assert_eq!(
        max_count(PrvAccountant::new, run, budget, DELTA, n - 1).unwrap(),
        n - 1
    );
    assert_eq!(
        max_count(PrvAccountant::new, run, budget, DELTA, n + 1).unwrap(),
        n
    );
    assert_eq!(
        max_steps(budget, DELTA, q, sigma, AccountantKind::Prv).unwrap(),
        n
    );
}
