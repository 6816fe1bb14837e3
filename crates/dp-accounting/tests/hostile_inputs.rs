//! Hostile-input sweep: every public constructor and entry point of the crate fed NaN, ±∞,
//! 0, −0, negative, tiny, huge and empty values. Each call must return a typed error or a
//! documented result (finite ε ≥ 0, δ ∈ [0, 1], σ > 0) — never panic, never NaN.
//!
//! Entry points (13): PrivacyBudget::new, DpEvent::poisson_gaussian, DpEvent::gaussian,
//! RdpAccountant::with_orders + compose + epsilon, PrvAccountant compose + epsilon_bounds,
//! rdp_poisson_gaussian, epsilon_for, steps_for_epochs, calibrate_noise_multiplier,
//! max_steps, combined_noise_multiplier, schedule_event, BudgetGuard::new.

use dp_accounting::calibration::{epsilon_for, steps_for_epochs};
use dp_accounting::rdp::rdp_poisson_gaussian;
use dp_accounting::{
    calibrate_noise_multiplier, combined_noise_multiplier, max_steps, schedule_event, Accountant,
    AccountantKind, BudgetGuard, DpEvent, PrivacyBudget, PrvAccountant, RdpAccountant,
};
use proptest::prelude::*;

/// Values chosen to break arithmetic, mixed with ordinary ones.
fn hostile() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::sample::select(vec![
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            -1.0,
            f64::MIN_POSITIVE,
            1e-300,
            1e300,
            f64::MAX,
            1.0,
            1.0 + 1e-15,
        ]),
        -10.0f64..10.0,
        (0.0f64..1.0),
    ]
}

fn hostile_count() -> impl Strategy<Value = u64> {
    prop::sample::select(vec![0u64, 1, 2, 1000, u64::MAX / 2, u64::MAX])
}

fn ok_eps(r: Result<f64, dp_accounting::AccountingError>) -> Result<(), TestCaseError> {
    if let Ok(e) = r {
        prop_assert!(e >= 0.0 && !e.is_nan(), "ε = {e}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn budgets_and_events(a in hostile(), b in hostile(), n in hostile_count()) {
        if let Ok(p) = PrivacyBudget::new(a, b) {
            prop_assert!(p.epsilon().is_finite() && p.epsilon() > 0.0);
            prop_assert!(p.delta() > 0.0 && p.delta() < 1.0);
        }
        if DpEvent::poisson_gaussian(a, b).is_ok() {
            prop_assert!(a > 0.0 && a <= 1.0 && b.is_finite() && b > 0.0);
        }
        if DpEvent::gaussian(a).is_ok() {
            prop_assert!(a.is_finite() && a > 0.0);
        }
        let _ = BudgetGuard::new(RdpAccountant::new(), a, PrivacyBudget::new(b, 1e-5).ok());
        let _ = steps_for_epochs(a, b);
        ok_eps(combined_noise_multiplier(&[a, b]))?;
        let _ = combined_noise_multiplier(&[]);
        let _ = schedule_event(a, &[(b, n)]);
        let _ = schedule_event(a, &[]);
    }

    #[test]
    fn accountants(q in hostile(), s in hostile(), d in hostile(), order in hostile(),
                   n in hostile_count()) {
        ok_eps(rdp_poisson_gaussian(q, s, order))?;
        let mut rdp = RdpAccountant::new().with_orders(vec![order, 2.0]);
        if let Ok(e) = DpEvent::poisson_gaussian(q, s) {
            let _ = rdp.compose(&e.clone().repeated(n));
            ok_eps(rdp.epsilon(d))?;
            if let Ok(x) = rdp.delta(d) {
                prop_assert!((0.0..=1.0).contains(&x), "δ = {x}");
            }
            // PRV with a modest grid: huge counts must be refused or bounded, not hang.
            let mut prv = PrvAccountant::new().with_max_points(20_000);
            let _ = prv.compose(&e.repeated(n.min(1000)));
            if let Ok(b) = prv.epsilon_bounds(d) {
                prop_assert!(!b.upper.is_nan() && b.upper >= 0.0);
            }
        }
        let _ = RdpAccountant::new().with_orders(vec![]).epsilon(1e-5);
    }

    #[test]
    fn calibration_and_conversion(e in hostile(), d in hostile(), q in hostile(),
                                  s in hostile(), t in hostile_count()) {
        // Step counts are capped: a valid but huge count is legitimate and slow, not hostile.
        let t = t.min(100_000);
        ok_eps(epsilon_for(q, s, t, d, AccountantKind::Rdp))?;
        if let Ok(sigma) = calibrate_noise_multiplier(e, d, q, t, AccountantKind::Rdp) {
            prop_assert!(sigma.is_finite() && sigma > 0.0);
        }
        let _ = max_steps(e, d, q, s, AccountantKind::Rdp);
    }
}
