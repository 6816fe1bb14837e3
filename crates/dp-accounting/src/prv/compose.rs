//! FFT composition and (ε, δ) read-out of a composed PRV (Gopi, Lee & Wutschitz 2021,
//! Algorithm 1); the domain and mesh come from [`super::grid`].

use rustfft::num_complex::Complex64;
use rustfft::FftPlanner;

use super::discretise::{discretise, SubsampledGaussianPrv};
use super::grid::choose_grid;
use crate::error::AccountingError;
use crate::event::GaussianBlock;

/// Raises the spectrum of a real sequence to the n-th power in place, z^n = |z|^n e^{i n arg z}
/// (accurate to ~n ulp, like repeated squaring). The spectrum of a real sequence is Hermitian,
/// X[N−k] = conj(X[k]), so only half of it is computed; coefficients whose power underflows
/// (|z|^n < e^{−745}) are set to zero without trigonometry, which is most of them for long
/// compositions.
fn pow_hermitian(spec: &mut [Complex64], n: u64) {
    let len = spec.len();
    let nf = n as f64;
    for k in 0..=len / 2 {
        let z = spec[k];
        let log_mag = 0.5 * z.norm_sqr().ln() * nf;
        let p = if log_mag < -745.0 || !log_mag.is_finite() {
            Complex64::new(0.0, 0.0)
        } else {
            Complex64::from_polar(log_mag.exp(), z.arg() * nf)
        };
        spec[k] = p;
        if k > 0 && k < len - k {
            spec[len - k] = p.conj();
        }
    }
}

/// A composed PRV on the grid t_i = t0 + i·Δt.
#[derive(Debug, Clone)]
pub(crate) struct ComposedPrv {
    pub pmf: Vec<f64>,
    pub t0: f64,
    pub dt: f64,
}

/// Discretises each block's PRV on a common grid and composes all of them: the spectra are
/// raised to the block counts and multiplied (convolution theorem), so homogeneous and
/// heterogeneous compositions cost one FFT per distinct mechanism plus one inverse FFT.
/// The circular convolution wraps mass beyond the domain; the domain choice bounds it.
pub(crate) fn compose_blocks(
    blocks: &[GaussianBlock],
    eps_error: f64,
    delta_error: f64,
    max_points: usize,
) -> Result<ComposedPrv, AccountingError> {
    if blocks.is_empty() {
        return Err(AccountingError::EmptyHistory);
    }
    let grid = choose_grid(blocks, eps_error, delta_error, max_points)?;
    let n = grid.len;
    let mut planner = FftPlanner::<f64>::new();
    let fwd = planner.plan_fft_forward(n);
    let inv = planner.plan_fft_inverse(n);
    let mut scratch = vec![
        Complex64::new(0.0, 0.0);
        fwd.get_inplace_scratch_len()
            .max(inv.get_inplace_scratch_len())
    ];
    let mut acc: Vec<Complex64> = Vec::new();
    let mut total_shift = 0.0;
    let mut k_total: u64 = 0;
    for b in blocks {
        let prv = SubsampledGaussianPrv {
            q: b.q,
            sigma: b.sigma,
        };
        let (pmf, shift) = discretise(&prv, &grid)?;
        total_shift += shift * b.count as f64;
        k_total = k_total
            .checked_add(b.count)
            .ok_or(AccountingError::CountOverflow)?;
        let mut buf: Vec<Complex64> = pmf.into_iter().map(|p| Complex64::new(p, 0.0)).collect();
        fwd.process_with_scratch(&mut buf, &mut scratch);
        pow_hermitian(&mut buf, b.count);
        if acc.is_empty() {
            acc = buf;
        } else {
            for (a, z) in acc.iter_mut().zip(buf) {
                *a *= z;
            }
        }
    }
    inv.process_with_scratch(&mut acc, &mut scratch);
    // Index j of the circular sum holds Σ i_k mod n; value (j − k·m)Δt + shift. Re-centre so
    // that index r holds value (r − m)Δt + shift: r = j − (k − 1)m (mod n).
    let m = grid.zero;
    let roll = (((k_total - 1) % n as u64) as usize * m) % n;
    let scale = 1.0 / n as f64;
    let mut pmf = vec![0.0; n];
    for (r, p) in pmf.iter_mut().enumerate() {
        // FFT round-off can leave tiny negative masses; dropping them only raises δ.
        *p = (acc[(r + roll) % n].re * scale).max(0.0);
    }
    Ok(ComposedPrv {
        pmf,
        t0: grid.t(0) + total_shift,
        dt: grid.dt,
    })
}

impl ComposedPrv {
    fn t(&self, i: usize) -> f64 {
        self.t0 + i as f64 * self.dt
    }

    /// δ(ε) = Σ_{t_j > ε} p_j (1 − e^{ε − t_j}) of the discrete distribution.
    pub fn delta_at(&self, epsilon: f64) -> f64 {
        let mut d = 0.0;
        for i in (0..self.pmf.len()).rev() {
            let t = self.t(i);
            if t <= epsilon {
                break;
            }
            d += self.pmf[i] * -(epsilon - t).exp_m1();
        }
        d.clamp(0.0, 1.0)
    }

    /// The ε with δ(ε) = `delta` for the discrete distribution (0 if δ(0) ≤ `delta`), from the
    /// tail sums D₁(i) = Σ_{j≥i} p_j and D₂(i) = Σ_{j≥i} p_j e^{−t_j}: on [t_{i−1}, t_i],
    /// δ(ε) = D₁(i) − e^ε D₂(i), so ε = ln((D₁(i) − δ)/D₂(i)).
    pub fn epsilon_at(&self, delta: f64) -> Result<f64, AccountingError> {
        let n = self.pmf.len();
        let (mut d1, mut d2) = (0.0f64, 0.0f64);
        for i in (0..n).rev() {
            let t = self.t(i);
            let (n1, n2) = (d1 + self.pmf[i], d2 + self.pmf[i] * (-t).exp());
            let delta_here = n1 - t.exp() * n2;
            if delta_here > delta {
                // Solution lies in [t_i, t_{i+1}] with the tail sums from i + 1 on.
                if i + 1 >= n - 1 {
                    return Err(AccountingError::Numerical(
                        "ε lies at the edge of the PRV domain; increase eps_error or use RDP"
                            .into(),
                    ));
                }
                if d2 <= 0.0 {
                    return Ok(self.t(i + 1).max(0.0));
                }
                let eps = ((d1 - delta) / d2).ln();
                return Ok(eps.clamp(t, self.t(i + 1)).max(0.0));
            }
            if t <= 0.0 {
                // δ(0) ≤ target: the guarantee holds with ε = 0.
                return Ok(0.0);
            }
            d1 = n1;
            d2 = n2;
        }
        Ok(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composing_gaussians_gives_gaussian() {
        // Three Gaussians with σ = √3·σ₀ compose to a Gaussian with σ₀.
        let s0: f64 = 1.5;
        let block = GaussianBlock {
            q: 1.0,
            sigma: s0 * 3f64.sqrt(),
            count: 3,
        };
        let c = compose_blocks(&[block], 0.01, 1e-9, 1 << 24).unwrap();
        let total: f64 = c.pmf.iter().sum();
        assert!((total - 1.0).abs() < 1e-9);
        let mean: f64 = c.pmf.iter().enumerate().map(|(i, p)| p * c.t(i)).sum();
        assert!((mean - 1.0 / (2.0 * s0 * s0)).abs() < 1e-9, "{mean}");
        for eps in [0.0, 0.5, 1.0, 2.0] {
            let exact = crate::special::analytic_gaussian_delta(s0, eps);
            let lo = c.delta_at(eps + 0.01) - 1e-9;
            let hi = c.delta_at(eps - 0.01) + 1e-9;
            assert!(lo <= exact && exact <= hi, "ε={eps}: {lo} {exact} {hi}");
        }
    }
}
