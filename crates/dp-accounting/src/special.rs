//! Special functions in log space: log-erfc, log-sum-exp with signs, the normal CDF.
//!
//! The RDP series of Mironov, Talwar & Zhang (2019, §3.3) multiplies huge exponentials by tiny
//! complementary error functions; both must stay in log space or the sum overflows for small σ
//! and underflows for large σ.

use statrs::function::erf::erfc;

/// ln(erfc(x)), accurate for all finite x.
///
/// `erfc` underflows past x ≈ 26.5; above x = 20 the asymptotic expansion
/// erfc(x) ≈ e^{-x²}/(x√π)·(1 − 1/(2x²) + 3/(4x⁴) − 15/(8x⁶) + 105/(16x⁸)) is used, whose
/// truncation error there is below 1e-13 relative.
pub(crate) fn log_erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 20.0 {
        return erfc(x).ln();
    }
    let r = 1.0 / (2.0 * x * x);
    let series = 1.0 - r * (1.0 - 3.0 * r * (1.0 - 5.0 * r * (1.0 - 7.0 * r)));
    -x * x - x.ln() - 0.5 * std::f64::consts::PI.ln() + series.ln()
}

/// ln(e^a + e^b).
pub(crate) fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

/// ln(e^x − 1) for x > 0 without cancellation.
pub(crate) fn log_expm1(x: f64) -> f64 {
    if x > 30.0 {
        x + (-(-x).exp()).ln_1p()
    } else {
        x.exp_m1().ln()
    }
}

/// A real number s·e^{m} kept as sign and log-magnitude, for alternating series.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SignedLog {
    pub positive: bool,
    pub log_abs: f64,
}

impl SignedLog {
    pub const ZERO: SignedLog = SignedLog {
        positive: true,
        log_abs: f64::NEG_INFINITY,
    };

    /// self + (sign)·e^{log_term}.
    pub fn add(self, positive: bool, log_term: f64) -> SignedLog {
        if log_term == f64::NEG_INFINITY {
            return self;
        }
        if self.log_abs == f64::NEG_INFINITY {
            return SignedLog {
                positive,
                log_abs: log_term,
            };
        }
        if self.positive == positive {
            return SignedLog {
                positive,
                log_abs: log_add(self.log_abs, log_term),
            };
        }
        // Opposite signs: the larger magnitude wins.
        let (big, small, sign) = if self.log_abs >= log_term {
            (self.log_abs, log_term, self.positive)
        } else {
            (log_term, self.log_abs, positive)
        };
        let diff = (small - big).exp();
        if diff >= 1.0 {
            return SignedLog::ZERO;
        }
        SignedLog {
            positive: sign,
            log_abs: big + (-diff).ln_1p(),
        }
    }
}

/// Standard normal CDF Φ(x) = ½·erfc(−x/√2), accurate in the lower tail.
///
/// ```
/// use dp_accounting::special::normal_cdf;
/// assert_eq!(normal_cdf(0.0), 0.5);
/// let tail = normal_cdf(-10.0); // 7.6198530241605261e-24 (mpmath)
/// assert!((tail / 7.619853024160526e-24 - 1.0).abs() < 1e-9, "{tail:e}");
/// ```
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// Exact δ(ε) of the sensitivity-1 Gaussian mechanism with noise multiplier σ
/// (Balle & Wang 2018, Theorem 8): δ(ε) = Φ(1/(2σ) − εσ) − e^ε Φ(−1/(2σ) − εσ).
///
/// Used as ground truth for the PRV accountant.
///
/// ```
/// use dp_accounting::special::analytic_gaussian_delta;
/// // σ = 1, ε = 0: δ = Φ(1/2) − Φ(−1/2) ≈ 0.3829.
/// assert!((analytic_gaussian_delta(1.0, 0.0) - 0.382924922548026).abs() < 1e-12);
/// ```
pub fn analytic_gaussian_delta(sigma: f64, epsilon: f64) -> f64 {
    let a = 1.0 / (2.0 * sigma);
    let b = epsilon * sigma;
    // e^ε Φ(−a − b) computed in log space: it can be e^{large}·tiny.
    let second = {
        let x = (a + b) / std::f64::consts::SQRT_2;
        (epsilon + (0.5f64).ln() + log_erfc(x)).exp()
    };
    (normal_cdf(a - b) - second).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_erfc_matches_direct_and_is_continuous() {
        for x in [-3.0, -0.5, 0.0, 0.7, 2.0, 5.0, 10.0, 19.9] {
            assert!((log_erfc(x) - erfc(x).ln()).abs() < 1e-12 * (1.0 + erfc(x).ln().abs()));
        }
        // Continuity across the branch and a value from mpmath: ln erfc(30) = -903.97411711064388 (mpmath)
        let below = erfc(19.99999).ln();
        let above = log_erfc(20.00001);
        assert!((below - above).abs() < 1e-3);
        assert!(
            (log_erfc(30.0) - (-903.974_117_110_643_9)).abs() < 1e-9,
            "{}",
            log_erfc(30.0)
        );
    }

    #[test]
    fn signed_log_sum() {
        let s = SignedLog::ZERO
            .add(true, 3f64.ln())
            .add(false, 1f64.ln())
            .add(true, 0.5f64.ln());
        assert!(s.positive);
        assert!((s.log_abs.exp() - 2.5).abs() < 1e-12);
        let n = SignedLog::ZERO.add(true, 0.0).add(false, 2f64.ln());
        assert!(!n.positive);
        assert!((n.log_abs.exp() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn log_expm1_both_branches() {
        for x in [1e-10f64, 0.3, 5.0, 29.0, 31.0, 100.0] {
            let expected = if x < 30.0 { x.exp_m1().ln() } else { x };
            assert!((log_expm1(x) - expected).abs() < 1e-9 * expected.abs().max(1.0));
        }
    }
}
