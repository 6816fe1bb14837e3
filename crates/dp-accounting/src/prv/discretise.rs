//! The privacy loss random variable (PRV) of the Poisson-subsampled Gaussian and its
//! mean-preserving discretisation (Gopi, Lee & Wutschitz 2021, §5 and Algorithm 1).
//!
//! With P = (1−q)N(0,σ²) + qN(1,σ²) and Q = N(0,σ²) (add/remove adjacency), the PRV is
//! Y = ln(P(X)/Q(X)) for X ∼ P. Writing z = ln((e^t + q − 1)/q), its CDF is
//! F(t) = 1 − (q/2)·erfc((2zσ² − 1)/(2√2σ)) − ((1−q)/2)·erfc((2zσ² + 1)/(2√2σ)) for
//! t > ln(1−q) and 0 below. Cell masses are differences of F in the lower half and of the
//! survival function S = 1 − F in the upper half, so tail probabilities keep full precision.

use statrs::function::erf::erfc;

use super::grid::Grid;
use crate::error::AccountingError;

/// PRV of one Poisson-subsampled Gaussian step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SubsampledGaussianPrv {
    pub q: f64,
    pub sigma: f64,
}

impl SubsampledGaussianPrv {
    /// (F(t), S(t)) with whichever is smaller computed directly.
    pub fn cdf_sf(&self, t: f64) -> (f64, f64) {
        let (q, s) = (self.q, self.sigma);
        if q < 1.0 && t <= (-q).ln_1p() {
            return (0.0, 1.0);
        }
        // z = ln((e^t + q − 1)/q), stable for large t and near the lower end.
        let z = if q == 1.0 {
            t
        } else {
            t - q.ln() + ((q - 1.0) * (-t).exp()).ln_1p()
        };
        let a1 = (z * s + 0.5 / s) / std::f64::consts::SQRT_2;
        let a2 = (z * s - 0.5 / s) / std::f64::consts::SQRT_2;
        if a1 < 0.0 {
            // Lower tail: F = (1−q)Φ(√2·a1) + qΦ(√2·a2), both arguments negative.
            let f = 0.5 * ((1.0 - q) * erfc(-a1) + q * erfc(-a2));
            (f, 1.0 - f)
        } else {
            let sf = 0.5 * ((1.0 - q) * erfc(a1) + q * erfc(a2));
            (1.0 - sf, sf)
        }
    }

    /// E[Y] = KL(P‖Q), by composite Simpson integration of p(x)·ln(p(x)/q(x)) over
    /// [−12σ, 1 + 12σ]; the integrand is smooth on the scale min(σ, σ²).
    pub fn mean(&self) -> f64 {
        let (q, s) = (self.q, self.sigma);
        if q == 1.0 {
            return 1.0 / (2.0 * s * s);
        }
        let ln_q = q.ln();
        let lo = -12.0 * s;
        let hi = 1.0 + 12.0 * s;
        let n = 8000usize;
        let h = (hi - lo) / n as f64;
        let norm = 1.0 / (s * (2.0 * std::f64::consts::PI).sqrt());
        let f = |x: f64| {
            let u = (2.0 * x - 1.0) / (2.0 * s * s);
            let log_ratio = if u + ln_q < 0.0 {
                (q * u.exp_m1()).ln_1p()
            } else {
                u + ln_q + ((1.0 - q) * (-u).exp() / q).ln_1p()
            };
            let p0 = (-(x * x) / (2.0 * s * s)).exp();
            let p1 = (-((x - 1.0) * (x - 1.0)) / (2.0 * s * s)).exp();
            norm * ((1.0 - q) * p0 + q * p1) * log_ratio
        };
        let mut sum = f(lo) + f(hi);
        for i in 1..n {
            let w = if i % 2 == 1 { 4.0 } else { 2.0 };
            sum += w * f(lo + i as f64 * h);
        }
        sum * h / 3.0
    }
}

/// Upper-tail mass below which the rest of the grid is left empty.
const NEGLIGIBLE_TAIL: f64 = 1e-40;

/// Cell-centred discretisation on `grid`: mass of [t_i − Δt/2, t_i + Δt/2] at t_i, then a
/// shift so the discrete mean equals E[Y] (Gopi et al. 2021, Algorithm 1, lines 4-6; the mean
/// match is what makes their error bound hold). Returns (pmf, shift).
pub(crate) fn discretise(
    prv: &SubsampledGaussianPrv,
    grid: &Grid,
) -> Result<(Vec<f64>, f64), AccountingError> {
    let n = grid.len;
    let mut pmf = vec![0.0; n];
    let edge = |j: usize| grid.t(j) - 0.5 * grid.dt;
    let mut prev = prv.cdf_sf(edge(0));
    let mut discrete_mean = 0.0;
    for (i, p) in pmf.iter_mut().enumerate() {
        if prev.1 < NEGLIGIBLE_TAIL {
            // Everything above this edge together has mass S < 1e-40: leave it at zero
            // (an error far below any δ budget, even after 10⁹ compositions).
            break;
        }
        let next = prv.cdf_sf(edge(i + 1));
        // Use F differences while F is the accurate (small) side, S differences after.
        let mass = if next.0 <= 0.5 {
            next.0 - prev.0
        } else {
            prev.1 - next.1
        };
        *p = mass.max(0.0);
        discrete_mean += *p * grid.t(i);
        prev = next;
    }
    let shift = prv.mean() - discrete_mean;
    if !shift.is_finite() || shift.abs() >= 0.5 * grid.dt {
        return Err(AccountingError::Numerical(format!(
            "PRV discretisation mean shift {shift:e} exceeds half the mesh {:e} (q={}, σ={})",
            0.5 * grid.dt,
            prv.q,
            prv.sigma
        )));
    }
    Ok((pmf, shift))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_is_monotone_and_matches_gaussian_for_q_one() {
        let prv = SubsampledGaussianPrv { q: 1.0, sigma: 2.0 };
        // Y ~ N(1/(2σ²), 1/σ²) for the plain Gaussian.
        for t in [-1.0, 0.0, 0.125, 0.5, 2.0] {
            let (f, _) = prv.cdf_sf(t);
            let want = crate::special::normal_cdf((t - 0.125) * 2.0);
            assert!((f - want).abs() < 1e-14);
        }
        let prv = SubsampledGaussianPrv {
            q: 0.01,
            sigma: 0.8,
        };
        let mut last = 0.0;
        for i in -100..400 {
            let (f, s) = prv.cdf_sf(i as f64 * 0.02);
            assert!(f >= last - 1e-15 && (f + s - 1.0).abs() < 1e-15);
            last = f;
        }
    }

    #[test]
    fn mean_is_kl_divergence() {
        let p = SubsampledGaussianPrv { q: 1.0, sigma: 0.7 };
        assert!((p.mean() - 1.0 / (2.0 * 0.49)).abs() < 1e-15);
        // Small q: KL ≈ q²(e^{1/σ²} − 1)/2.
        let p = SubsampledGaussianPrv {
            q: 1e-3,
            sigma: 1.0,
        };
        let approx = 1e-6 * (1f64.exp() - 1.0) / 2.0;
        assert!(
            (p.mean() - approx).abs() < 0.01 * approx,
            "{} vs {approx}",
            p.mean()
        );
        // Almost q = 1 approaches the Gaussian.
        let p = SubsampledGaussianPrv {
            q: 1.0 - 1e-9,
            sigma: 0.5,
        };
        assert!((p.mean() - 2.0).abs() < 1e-6);
    }
}
