//! Rényi DP of the Poisson-subsampled Gaussian mechanism (Mironov, Talwar & Zhang 2019).
//!
//! For sampling rate q and noise multiplier σ, the RDP at order α is ε(α) = ln(A_α)/(α − 1)
//! with A_α = E_{z∼N(0,σ²)}[((1−q) + q·e^{(2z−1)/(2σ²)})^α] (their §3.3). Integer orders use the
//! binomial expansion (their Eq. (1) / Theorem 5); fractional orders use the two-series
//! expansion of their §3.3 with a signed log-sum. Compositions add per order.

use crate::error::{check_noise_multiplier, check_sampling_rate, AccountingError};
use crate::special::{log_add, log_erfc, log_expm1, SignedLog};

/// Largest order accepted; the integer expansion costs O(α) per evaluation.
pub const MAX_ORDER: f64 = 1.0e5;

/// Opacus's default order grid: 1.1, 1.2, …, 10.9 and 12, 13, …, 63.
///
/// ```
/// let orders = dp_accounting::rdp::default_orders();
/// assert_eq!(orders.len(), 99 + 52);
/// assert!((orders[0] - 1.1).abs() < 1e-12 && orders[orders.len() - 1] == 63.0);
/// ```
pub fn default_orders() -> Vec<f64> {
    let mut v: Vec<f64> = (1..100).map(|x| 1.0 + x as f64 / 10.0).collect();
    v.extend((12..64).map(|x| x as f64));
    v
}

/// Smallest order accepted: `1 + MIN_ORDER_GAP`.
///
/// Why: near α = 1, ln A_α ≈ (α − 1)·KL is a tiny difference of terms of size ~1, so the
/// series loses every digit. Measured (q ∈ [1e-6, 0.5], σ ∈ [0.5, 10]): at α − 1 ≥ 1e-4 the
/// computed ε(α) is within 1% of its limit; at 1e-6 it is already off by 6× (q = 1e-6,
/// σ = 0.5); at 1e-8 and below it may round to 0, and the KL shortcut of the conversion then
/// reports ε = 0 for the whole run (default grid + 1 + 1e-14 at q = 0.01, σ = 1, 1,000 steps
/// gave 0.0 instead of 2.10). 1e-3 keeps a margin of ten over the last good value. Such
/// orders are never the optimum of a useful conversion anyway (the ln(1/δ)/(α − 1) term is
/// ≥ 1,000·ln(1/δ)), so nothing is lost by refusing them.
pub const MIN_ORDER_GAP: f64 = 1e-3;

/// Checks that an order grid is non-empty and every order is finite, ≥ 1 + [`MIN_ORDER_GAP`]
/// and ≤ [`MAX_ORDER`].
pub(crate) fn check_orders(orders: &[f64]) -> Result<(), AccountingError> {
    if orders.is_empty() {
        return Err(AccountingError::InvalidOrders("empty order grid".into()));
    }
    for &a in orders {
        if !(1.0 + MIN_ORDER_GAP..=MAX_ORDER).contains(&a) {
            return Err(AccountingError::InvalidOrders(format!(
                "order {a} must be finite, ≥ 1 + {MIN_ORDER_GAP} (closer to 1 the RDP series \
                 loses all precision) and ≤ {MAX_ORDER}"
            )));
        }
    }
    Ok(())
}

/// RDP ε(α) of one Poisson-subsampled Gaussian step.
///
/// Closed forms: q = 1 gives α/(2σ²) (plain Gaussian, Mironov 2017 Prop. 7).
///
/// ```
/// use dp_accounting::rdp::rdp_poisson_gaussian;
/// // §13.4: q = 0.01, σ = 1, α = 2 gives ln(1 + q²(e − 1)).
/// let v = rdp_poisson_gaussian(0.01, 1.0, 2.0).unwrap();
/// assert!((v - 1.7181342e-4).abs() < 1e-11);
/// assert!((rdp_poisson_gaussian(1.0, 2.0, 8.0).unwrap() - 1.0).abs() < 1e-15);
/// ```
pub fn rdp_poisson_gaussian(q: f64, sigma: f64, order: f64) -> Result<f64, AccountingError> {
    check_sampling_rate(q)?;
    check_noise_multiplier(sigma)?;
    check_orders(&[order])?;
    Ok(log_a(q, sigma, order)? / (order - 1.0))
}

/// RDP of one step at every order of `orders`.
///
/// ```
/// use dp_accounting::rdp::{default_orders, rdp_poisson_gaussian_orders};
/// let v = rdp_poisson_gaussian_orders(1.0, 1.0, &default_orders()).unwrap();
/// assert!((v[0] - 0.55).abs() < 1e-12);
/// ```
pub fn rdp_poisson_gaussian_orders(
    q: f64,
    sigma: f64,
    orders: &[f64],
) -> Result<Vec<f64>, AccountingError> {
    check_sampling_rate(q)?;
    check_noise_multiplier(sigma)?;
    check_orders(orders)?;
    orders
        .iter()
        .map(|&a| Ok(log_a(q, sigma, a)? / (a - 1.0)))
        .collect()
}

/// ln A_α for validated inputs.
fn log_a(q: f64, sigma: f64, alpha: f64) -> Result<f64, AccountingError> {
    if q == 1.0 {
        return Ok(alpha * (alpha - 1.0) / (2.0 * sigma * sigma));
    }
    if alpha.fract() == 0.0 {
        Ok(log_a_int(q, sigma, alpha as u64))
    } else {
        log_a_frac(q, sigma, alpha)
    }
}

/// ln A_α for integer α by the binomial expansion
/// A_α = Σ_k C(α,k)(1−q)^{α−k} q^k e^{(k²−k)/(2σ²)}.
///
/// Since the binomial weights sum to one, A_α − 1 = Σ_{k≥2} C(α,k)(1−q)^{α−k}q^k(e^{(k²−k)/(2σ²)} − 1),
/// a sum of positive terms; computing ln(A_α − 1) first keeps full relative precision even when
/// A_α − 1 ≈ 1e-13 (q = 1e-6), where ln(Σ) of the raw terms would lose it.
fn log_a_int(q: f64, sigma: f64, alpha: u64) -> f64 {
    let ln_q = q.ln();
    let ln_1mq = (-q).ln_1p();
    let two_s2 = 2.0 * sigma * sigma;
    let a = alpha as f64;
    let mut log_binom = a.ln(); // ln C(α, 1)
    let mut log_am1 = f64::NEG_INFINITY;
    for k in 2..=alpha {
        let kf = k as f64;
        log_binom += (a - kf + 1.0).ln() - kf.ln();
        let term = log_binom + (a - kf) * ln_1mq + kf * ln_q + log_expm1((kf * kf - kf) / two_s2);
        log_am1 = log_add(log_am1, term);
    }
    // ln(1 + e^{log_am1}) without overflow or loss of precision.
    if log_am1 < 0.0 {
        log_am1.exp().ln_1p()
    } else {
        log_am1 + (-log_am1).exp().ln_1p()
    }
}

/// ln A_α for fractional α by the series A_α = A₀ + A₁ of Mironov, Talwar & Zhang (2019, §3.3):
/// with z₀ = σ² ln(1/q − 1) + ½ and j = α − i,
/// A₀ = Σ_i C(α,i) q^i (1−q)^j e^{(i²−i)/(2σ²)} ½erfc((i − z₀)/(√2σ)),
/// A₁ = Σ_i C(α,i) q^j (1−q)^i e^{(j²−j)/(2σ²)} ½erfc((z₀ − j)/(√2σ)).
/// The generalised binomial coefficients change sign, so the sums are signed log-sums. Terms
/// decay only polynomially once i > z₀; the loop stops when both are below e^{-30}.
fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> Result<f64, AccountingError> {
    const MAX_TERMS: usize = 2_000_000;
    let ln_q = q.ln();
    let ln_1mq = (-q).ln_1p();
    let two_s2 = 2.0 * sigma * sigma;
    let sqrt2s = std::f64::consts::SQRT_2 * sigma;
    let z0 = sigma * sigma * (ln_1mq - ln_q) + 0.5;
    let ln_half = 0.5f64.ln();
    let mut a0 = SignedLog::ZERO;
    let mut a1 = SignedLog::ZERO;
    let mut log_coef = 0.0f64; // ln |C(α, i)|
    let mut coef_positive = true;
    for i in 0..MAX_TERMS {
        let fi = i as f64;
        if i > 0 {
            let factor = alpha - fi + 1.0;
            log_coef += factor.abs().ln() - fi.ln();
            if factor < 0.0 {
                coef_positive = !coef_positive;
            }
        }
        let j = alpha - fi;
        let log_t0 = log_coef + fi * ln_q + j * ln_1mq;
        let log_t1 = log_coef + j * ln_q + fi * ln_1mq;
        let log_e0 = ln_half + log_erfc((fi - z0) / sqrt2s);
        let log_e1 = ln_half + log_erfc((z0 - j) / sqrt2s);
        let log_s0 = log_t0 + (fi * fi - fi) / two_s2 + log_e0;
        let log_s1 = log_t1 + (j * j - j) / two_s2 + log_e1;
        a0 = a0.add(coef_positive, log_s0);
        a1 = a1.add(coef_positive, log_s1);
        if fi > alpha && log_s0.max(log_s1) < -30.0 {
            let total = a0.add(a1.positive, a1.log_abs);
            if !total.positive || !total.log_abs.is_finite() {
                return Err(AccountingError::Numerical(format!(
                    "RDP series for q={q}, σ={sigma}, α={alpha} gave a non-positive A_α"
                )));
            }
            // A_α > 1 mathematically for q < 1. A value that rounded to ≤ 1 carries no
            // digits, and 0 would let the KL shortcut report ε = 0: use the upper bound
            // ln A_α ≤ (α − 1)·ε(⌈α⌉) instead (RDP is non-decreasing in the order, and the
            // integer expansion keeps full precision).
            if total.log_abs <= 0.0 {
                let up = alpha.ceil();
                return Ok((alpha - 1.0) * log_a_int(q, sigma, up as u64) / (up - 1.0));
            }
            return Ok(total.log_abs);
        }
    }
    Err(AccountingError::Numerical(format!(
        "RDP series for q={q}, σ={sigma}, α={alpha} did not converge"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn spec_per_order_vectors() {
        // §13.4 table (independent reference implementation).
        let cases = [
            (0.01, 1.0, 2.0, 1.7181342e-4),
            (0.01, 1.0, 3.5, 3.1311664e-4),
            (0.01, 1.0, 32.0, 11.2462759),
            (0.01, 1.0, 1.5, 1.2725374e-4),
            (0.01, 2.0, 10.0, 1.4562315e-4),
        ];
        for (q, s, a, want) in cases {
            let got = rdp_poisson_gaussian(q, s, a).unwrap();
            assert!(close(got, want, 1e-6), "q={q} σ={s} α={a}: {got} vs {want}");
        }
        let analytic = (1.0 + 0.01f64 * 0.01 * (std::f64::consts::E - 1.0)).ln();
        assert!(close(
            rdp_poisson_gaussian(0.01, 1.0, 2.0).unwrap(),
            analytic,
            1e-12
        ));
    }

    #[test]
    fn q_one_is_plain_gaussian() {
        for s in [0.3, 1.0, 7.0, 100.0] {
            for a in [1.1, 2.0, 3.5, 63.0] {
                let got = rdp_poisson_gaussian(1.0, s, a).unwrap();
                assert!(close(got, a / (2.0 * s * s), 1e-14));
            }
        }
    }

    #[test]
    fn fractional_series_agrees_with_integer_expansion() {
        for (q, s) in [(0.01, 1.0), (0.3, 0.7), (1e-5, 5.0), (0.9, 2.0), (0.5, 0.5)] {
            for a in [2u64, 3, 8, 20] {
                let int = log_a_int(q, s, a);
                let frac = log_a_frac(q, s, a as f64 + 1e-12).unwrap();
                assert!(
                    (int - frac).abs() <= 1e-9 * int.abs() + 1e-14,
                    "q={q} s={s} a={a}: {int} vs {frac}"
                );
            }
        }
    }

    #[test]
    fn stable_across_parameter_range() {
        for q in [1e-6, 1e-4, 0.01, 0.2, 0.999, 1.0] {
            for s in [0.3, 0.5, 1.0, 10.0, 100.0] {
                let v = rdp_poisson_gaussian_orders(q, s, &default_orders()).unwrap();
                for (w, a) in v.iter().zip(default_orders()) {
                    assert!(w.is_finite() && *w >= 0.0, "q={q} s={s} a={a}: {w}");
                    // Never above the unsubsampled Gaussian.
                    assert!(
                        *w <= a / (2.0 * s * s) * (1.0 + 1e-9) + 1e-15,
                        "q={q} s={s} a={a}"
                    );
                }
                // RDP is non-decreasing in the order.
                for p in v.windows(2) {
                    assert!(p[1] >= p[0] * (1.0 - 1e-9) - 1e-15, "q={q} s={s}: {:?}", p);
                }
            }
        }
    }

    #[test]
    fn a_fractional_order_that_rounds_to_zero_gets_a_safe_upper_bound() {
        // q = 1e-6, σ = 100, α = 1.1: A_α − 1 ≈ 1e-17 is below the series' rounding, so the
        // value comes from the bound (α − 1)·ε(2) — never 0, never below the truth.
        let (q, s, a) = (1e-6, 100.0, 1.1);
        let v = rdp_poisson_gaussian(q, s, a).unwrap();
        let at2 = rdp_poisson_gaussian(q, s, 2.0).unwrap();
        assert!(v > 0.0 && v <= at2 * (1.0 + 1e-12), "{v} {at2}");
    }

    #[test]
    fn small_q_asymptotics() {
        // For q → 0, A_α − 1 ≈ C(α,2) q² (e^{1/σ²} − 1) at integer orders.
        let (q, s) = (1e-6f64, 1.0f64);
        let got = rdp_poisson_gaussian(q, s, 2.0).unwrap();
        let want = (q * q * (1f64.exp() - 1.0)).ln_1p();
        assert!(close(got, want, 1e-10), "{got} vs {want}");
    }

    #[test]
    fn invalid_orders_rejected() {
        assert!(check_orders(&[]).is_err());
        assert!(check_orders(&[1.0]).is_err());
        assert!(check_orders(&[f64::NAN]).is_err());
        assert!(check_orders(&[2.0, 1e9]).is_err());
        // Orders too close to 1 for the series (the issue's 1 + 1e-14, and 1 + 1e-6).
        for a in [1.0 + 1e-14, 1.0 + 1e-6, 1.0 + 0.999e-3] {
            assert!(
                matches!(
                    rdp_poisson_gaussian(0.01, 1.0, a),
                    Err(AccountingError::InvalidOrders(_))
                ),
                "{a}"
            );
        }
        assert!(check_orders(&[1.0 + MIN_ORDER_GAP]).is_ok());
        assert!(rdp_poisson_gaussian(0.1, 1.0, 0.5).is_err());
    }
}
