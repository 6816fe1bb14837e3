//! Golden ε values: the §13.4 table (independent reference implementation, Opacus orders),
//! published numbers, and closed forms.

use dp_accounting::special::analytic_gaussian_delta;
use dp_accounting::{
    Accountant, AccountingError, Conversion, DpEvent, PrvAccountant, RdpAccountant,
};

fn rdp(q: f64, s: f64, t: u64, conv: Conversion) -> RdpAccountant {
    let mut a = RdpAccountant::new().with_conversion(conv);
    a.compose(&DpEvent::poisson_gaussian(q, s).unwrap().repeated(t))
        .unwrap();
    a
}

#[test]
fn spec_table_rdp_balle_and_classic() {
    // (q, σ, steps, δ, ε Balle, ε classic)
    let cases = [
        (512.0 / 60000.0, 1.23, 4687, 1e-5, 2.581, Some(2.995)),
        (2048.0 / 60000.0, 2.15, 1171, 1e-5, 2.604, Some(3.017)),
        (1024.0 / 50000.0, 1.54, 1464, 1e-5, 2.608, Some(3.027)),
        (256.0 / 60000.0, 1.0, 3515, 1e-5, 1.560, Some(1.927)),
        (1.0 / 214.0, 0.8, 12840, 1e-6, 5.903, Some(6.541)),
        (256.0 / 60000.0, 1.1, 14062, 1e-5, 2.597, None),
    ];
    for (q, s, t, d, balle, classic) in cases {
        let b = rdp(q, s, t, Conversion::Balle).epsilon(d).unwrap();
        assert!(
            (b - balle).abs() < 1e-3,
            "Balle q={q} σ={s} T={t}: {b} vs {balle}"
        );
        if let Some(c) = classic {
            let got = rdp(q, s, t, Conversion::Classic).epsilon(d).unwrap();
            assert!(
                (got - c).abs() < 1e-3,
                "classic q={q} σ={s} T={t}: {got} vs {c}"
            );
        }
    }
}

#[test]
fn optimal_orders_from_table() {
    let r = rdp(512.0 / 60000.0, 1.23, 4687, Conversion::Balle)
        .epsilon_with_order(1e-5)
        .unwrap();
    assert!((r.optimal_order - 8.1).abs() < 1e-9);
    let r = rdp(512.0 / 60000.0, 1.23, 4687, Conversion::Classic)
        .epsilon_with_order(1e-5)
        .unwrap();
    assert!((r.optimal_order - 8.8).abs() < 1e-9);
}

#[test]
fn esipova_heterogeneous_count_query() {
    // 12840 SGM steps with σ = 0.8 plus one count query per step with σ_b = 10 (§13.4): 5.909.
    let q = 1.0 / 214.0;
    let step = DpEvent::poisson_gaussian(q, 0.8).unwrap();
    let count = DpEvent::poisson_gaussian(q, 10.0).unwrap();
    let mut acc = RdpAccountant::new();
    for _ in 0..12840 {
        acc.compose(&step).unwrap();
        acc.compose(&count).unwrap();
    }
    let e = acc.epsilon(1e-6).unwrap();
    assert!((e - 5.909).abs() < 1e-3, "{e}");
    // Same value when composed as two blocks.
    let mut blocks = RdpAccountant::new();
    blocks
        .compose(&DpEvent::Composed(vec![
            step.repeated(12840),
            count.repeated(12840),
        ]))
        .unwrap();
    assert!((blocks.epsilon(1e-6).unwrap() - e).abs() < 1e-9);
}

#[test]
fn prv_bounds_bracket_published_values() {
    // q = 256/60000, σ = 1.1, 14062 steps, δ = 1e-5: tight (PLD/PRV) ε ≈ 2.39 vs RDP 2.597.
    let mut acc = PrvAccountant::new();
    acc.compose(
        &DpEvent::poisson_gaussian(256.0 / 60000.0, 1.1)
            .unwrap()
            .repeated(14062),
    )
    .unwrap();
    let b = acc.epsilon_bounds(1e-5).unwrap();
    assert!(b.lower <= 2.39 && 2.39 <= b.upper, "{b:?}");
    assert!(b.upper < 2.597);
}

#[test]
fn prv_single_gaussian_matches_analytic_curve() {
    for sigma in [0.5, 1.0, 3.0, 10.0] {
        let mut acc = PrvAccountant::new();
        acc.compose(&DpEvent::gaussian(sigma).unwrap()).unwrap();
        for delta in [1e-3, 1e-5, 1e-6] {
            let b = acc.epsilon_bounds(delta).unwrap();
            // Exact ε at δ: δ(ε) is decreasing, so the bounds bracket it iff δ(upper) ≤ δ ≤ δ(lower).
            assert!(
                analytic_gaussian_delta(sigma, b.upper) <= delta,
                "σ={sigma} δ={delta} {b:?}"
            );
            if b.lower > 0.0 {
                assert!(
                    analytic_gaussian_delta(sigma, b.lower) >= delta,
                    "σ={sigma} δ={delta} {b:?}"
                );
            }
        }
        for eps in [0.1, 0.5, 1.0, 2.0] {
            let d = acc.delta_bounds(eps).unwrap();
            let exact = analytic_gaussian_delta(sigma, eps);
            assert!(
                d.lower <= exact && exact <= d.upper,
                "σ={sigma} ε={eps}: {d:?} vs {exact}"
            );
        }
    }
}

#[test]
fn prv_heterogeneous_gaussians_match_analytic() {
    // Gaussians compose exactly: 1/σ² adds. 50 × σ=5 then 20 × σ=3 → σ_eff.
    let inv = 50.0 / 25.0 + 20.0 / 9.0;
    let s_eff = 1.0 / f64::sqrt(inv);
    let mut acc = PrvAccountant::new();
    acc.compose(&DpEvent::gaussian(5.0).unwrap().repeated(50))
        .unwrap();
    acc.compose(&DpEvent::gaussian(3.0).unwrap().repeated(20))
        .unwrap();
    for eps in [0.5, 1.0, 3.0] {
        let d = acc.delta_bounds(eps).unwrap();
        let exact = analytic_gaussian_delta(s_eff, eps);
        assert!(
            d.lower <= exact && exact <= d.upper,
            "ε={eps}: {d:?} vs {exact}"
        );
    }
}

#[test]
fn rdp_q_one_single_step_is_gaussian_closed_form() {
    // q = 1, one step: ε_RDP(α) = α/(2σ²); classic conversion has the closed-form minimiser
    // over continuous α; on the grid the value must be within the grid spacing effect.
    let s: f64 = 2.0;
    let acc = rdp(1.0, s, 1, Conversion::Classic);
    let d: f64 = 1e-5;
    let cont = 1.0 / (2.0 * s * s) + (2.0 * (1.0f64 / d).ln()).sqrt() / s;
    let e = acc.epsilon(d).unwrap();
    assert!(e >= cont - 1e-12 && e < cont + 0.01, "{e} vs {cont}");
    // And RDP is never below the exact Gaussian ε.
    assert!(analytic_gaussian_delta(s, e) <= d);
}

#[test]
fn prv_esipova_heterogeneous_below_rdp() {
    // The Esipova run with its extra count query (σ_b = 10) as a heterogeneous PRV
    // composition: tighter than RDP's 5.909, and above the SGM-only PRV value.
    let q = 1.0 / 214.0;
    let sgm = DpEvent::poisson_gaussian(q, 0.8).unwrap().repeated(12840);
    let count = DpEvent::poisson_gaussian(q, 10.0).unwrap().repeated(12840);
    let mut only = PrvAccountant::new();
    only.compose(&sgm).unwrap();
    let mut both = only.clone();
    both.compose(&count).unwrap();
    let (a, b) = (
        only.epsilon_bounds(1e-6).unwrap(),
        both.epsilon_bounds(1e-6).unwrap(),
    );
    assert!(b.upper < 5.909 && a.upper < 5.903, "{a:?} {b:?}");
    assert!(b.estimate > a.estimate, "{a:?} {b:?}");
    // RDP is never below the PRV lower bound.
    assert!(b.lower <= 5.909 && a.lower <= 5.903);
}

#[test]
fn orders_close_to_one_are_refused_not_turned_into_zero() {
    // tensorflow/privacy#166: an order of 1 + 1e-8 made ε = 0. Here, with the default grid
    // plus 1 + 1e-14 (q = 0.01, σ = 1, 1,000 steps), the series rounded ln A_α to 0 and the
    // KL shortcut reported ε = 0.0 instead of 2.10. Such orders are now refused by name.
    let e = DpEvent::poisson_gaussian(0.01, 1.0).unwrap().repeated(1000);
    for near in [1.0 + 1e-8, 1.0 + 1e-14] {
        let mut orders = dp_accounting::rdp::default_orders();
        orders.push(near);
        let mut acc = RdpAccountant::new().with_orders(orders);
        assert!(
            matches!(acc.compose(&e), Err(AccountingError::InvalidOrders(_))),
            "{near}"
        );
        assert!(matches!(
            acc.epsilon(1e-5),
            Err(AccountingError::InvalidOrders(_))
        ));
    }
    // The smallest accepted order is harmless: it never wins.
    let mut orders = dp_accounting::rdp::default_orders();
    orders.push(1.0 + dp_accounting::rdp::MIN_ORDER_GAP);
    let mut near_one = RdpAccountant::new().with_orders(orders);
    near_one.compose(&e).unwrap();
    let mut plain = RdpAccountant::new();
    plain.compose(&e).unwrap();
    let (a, b) = (
        near_one.epsilon(1e-5).unwrap(),
        plain.epsilon(1e-5).unwrap(),
    );
    assert!(
        (a - 2.10).abs() < 0.01 && (a - b).abs() < 1e-12,
        "{a} vs {b}"
    );
}
