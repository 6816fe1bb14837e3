//! RDP curve → (ε, δ).
//!
//! Two conversions are offered. The classic one (Mironov 2017, Prop. 3) is
//! ε = min_α [ε_RDP(α) + ln(1/δ)/(α − 1)]. The improved one (Balle, Barthe, Gaboardi, Hsu &
//! Sato 2020, Theorem 21; arXiv 1905.09982), used by Opacus and Google's `dp_accounting`, is
//! ε = min_α [ε_RDP(α) + ln((α − 1)/α) − (ln δ + ln α)/(α − 1)] and is never worse for α > 1.
//! Both take the KL shortcut of `dp_accounting`: if δ² ≥ 1 − e^{−ε_RDP(α)} the mechanism is
//! (0, δ)-DP because total variation ≤ √(1 − e^{−KL}) ≤ √(1 − e^{−ε_RDP(α)}).

use serde::{Deserialize, Serialize};

use crate::error::{check_delta, check_epsilon, AccountingError};

/// How an RDP curve is turned into (ε, δ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Conversion {
    /// Balle et al. 2020, Theorem 21 (default; tighter).
    #[default]
    Balle,
    /// Mironov 2017, Proposition 3.
    Classic,
}

/// ε at a δ together with the order that attained it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpsilonReport {
    /// The (ε, δ)-DP guarantee's ε.
    pub epsilon: f64,
    /// Order α at which the minimum was attained.
    pub optimal_order: f64,
    /// True when the optimum is the smallest or largest order of the grid: widen the grid,
    /// the true optimum (and a smaller ε) may lie outside it.
    pub on_grid_edge: bool,
}

/// δ at an ε together with the order that attained it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DeltaReport {
    /// The (ε, δ)-DP guarantee's δ.
    pub delta: f64,
    /// Order α at which the minimum was attained.
    pub optimal_order: f64,
    /// True when the optimum is the smallest or largest order of the grid.
    pub on_grid_edge: bool,
}

/// ε for a given δ from per-order RDP values.
///
/// ```
/// use dp_accounting::rdp_conversion::{epsilon_from_rdp, Conversion};
/// // A Gaussian with σ = 1 has ε_RDP(α) = α/2; classic conversion at α = 5, δ = e^{-8}:
/// let r = epsilon_from_rdp(&[5.0], &[2.5], (-8f64).exp(), Conversion::Classic).unwrap();
/// assert!((r.epsilon - 4.5).abs() < 1e-12);
/// ```
pub fn epsilon_from_rdp(
    orders: &[f64],
    rdp: &[f64],
    delta: f64,
    conversion: Conversion,
) -> Result<EpsilonReport, AccountingError> {
    check_delta(delta)?;
    check_curve(orders, rdp)?;
    let ln_delta = delta.ln();
    let mut best = (f64::INFINITY, 0usize);
    let mut kl_shortcut = false;
    for (i, (&a, &r)) in orders.iter().zip(rdp).enumerate() {
        let eps = if delta * delta + (-r).exp_m1() >= 0.0 {
            kl_shortcut = true;
            0.0
        } else {
            match conversion {
                Conversion::Classic => r - ln_delta / (a - 1.0),
                Conversion::Balle => r + (-1.0 / a).ln_1p() - (ln_delta + a.ln()) / (a - 1.0),
            }
        };
        if eps < best.0 {
            best = (eps, i);
        }
    }
    if !best.0.is_finite() {
        return Err(AccountingError::Numerical(
            "RDP curve is infinite at every order".into(),
        ));
    }
    let epsilon = best.0.max(0.0);
    Ok(EpsilonReport {
        epsilon,
        optimal_order: orders[best.1],
        // ε = 0 from the KL bound is exact, whatever order produced it.
        on_grid_edge: !(kl_shortcut && epsilon == 0.0)
            && orders.len() > 1
            && (best.1 == 0 || best.1 == orders.len() - 1),
    })
}

/// δ for a given ε from per-order RDP values (the inverse of [`epsilon_from_rdp`] order by
/// order, minimised over orders).
///
/// ```
/// use dp_accounting::rdp_conversion::{delta_from_rdp, Conversion};
/// let r = delta_from_rdp(&[5.0], &[2.5], 4.5, Conversion::Classic).unwrap();
/// assert!((r.delta - (-8f64).exp()).abs() < 1e-15);
/// ```
pub fn delta_from_rdp(
    orders: &[f64],
    rdp: &[f64],
    epsilon: f64,
    conversion: Conversion,
) -> Result<DeltaReport, AccountingError> {
    check_epsilon(epsilon)?;
    check_curve(orders, rdp)?;
    let mut best = (f64::INFINITY, 0usize);
    for (i, (&a, &r)) in orders.iter().zip(rdp).enumerate() {
        // KL bound: δ ≤ √(1 − e^{−KL}) ≤ √(1 − e^{−ε_RDP(α)}).
        let kl = 0.5 * (-(-r).exp_m1()).ln();
        let conv = match conversion {
            Conversion::Classic => (a - 1.0) * (r - epsilon),
            Conversion::Balle => (a - 1.0) * (r - epsilon + (-1.0 / a).ln_1p()) - a.ln(),
        };
        let ld = kl.min(conv);
        if ld < best.0 {
            best = (ld, i);
        }
    }
    Ok(DeltaReport {
        delta: best.0.exp().min(1.0),
        optimal_order: orders[best.1],
        on_grid_edge: orders.len() > 1 && (best.1 == 0 || best.1 == orders.len() - 1),
    })
}

fn check_curve(orders: &[f64], rdp: &[f64]) -> Result<(), AccountingError> {
    crate::rdp::check_orders(orders)?;
    if orders.len() != rdp.len() {
        return Err(AccountingError::InvalidOrders(format!(
            "{} orders but {} RDP values",
            orders.len(),
            rdp.len()
        )));
    }
    if rdp.iter().any(|r| r.is_nan() || *r < 0.0) {
        return Err(AccountingError::Numerical("RDP values must be ≥ 0".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balle_never_worse_than_classic() {
        let orders = crate::rdp::default_orders();
        let rdp: Vec<f64> = orders
            .iter()
            .map(|a| a / (2.0 * 1.3f64.powi(2)) * 3.0)
            .collect();
        for d in [1e-3, 1e-5, 1e-9] {
            let b = epsilon_from_rdp(&orders, &rdp, d, Conversion::Balle).unwrap();
            let c = epsilon_from_rdp(&orders, &rdp, d, Conversion::Classic).unwrap();
            assert!(b.epsilon <= c.epsilon);
        }
    }

    #[test]
    fn edge_of_grid_flagged() {
        let orders = [2.0, 3.0, 4.0];
        // Tiny RDP: optimum at the largest order.
        let r = epsilon_from_rdp(&orders, &[1e-6, 1.5e-6, 2e-6], 1e-5, Conversion::Balle).unwrap();
        assert!(r.on_grid_edge && r.optimal_order == 4.0);
        let r = epsilon_from_rdp(
            &[2.0, 20.0, 200.0],
            &[0.02, 0.2, 2.0],
            1e-5,
            Conversion::Classic,
        )
        .unwrap();
        assert!(!r.on_grid_edge && r.optimal_order == 20.0);
    }

    #[test]
    fn inverse_round_trip() {
        let orders = crate::rdp::default_orders();
        let rdp: Vec<f64> = orders.iter().map(|a| a * 0.01).collect();
        for conv in [Conversion::Balle, Conversion::Classic] {
            for d in [1e-3, 1e-6, 1e-10] {
                let e = epsilon_from_rdp(&orders, &rdp, d, conv).unwrap().epsilon;
                let back = delta_from_rdp(&orders, &rdp, e, conv).unwrap().delta;
                assert!((back - d).abs() <= 1e-9 * d, "{conv:?} {d}: {back}");
            }
        }
    }

    #[test]
    fn bad_inputs() {
        assert!(epsilon_from_rdp(&[2.0], &[1.0], 0.0, Conversion::Balle).is_err());
        assert!(epsilon_from_rdp(&[2.0], &[1.0], 1.0, Conversion::Balle).is_err());
        assert!(epsilon_from_rdp(&[2.0], &[1.0, 2.0], 0.1, Conversion::Balle).is_err());
        assert!(delta_from_rdp(&[2.0], &[1.0], -1.0, Conversion::Balle).is_err());
        assert!(delta_from_rdp(&[2.0], &[f64::NAN], 1.0, Conversion::Balle).is_err());
    }
}
