//! The common mesh every PRV is discretised on and composed over, and its choice for a given
//! error budget (Gopi, Lee & Wutschitz 2021, §5.3).
//!
//! Kept apart from `compose` and `discretise` so that both depend on it and neither on the
//! other's internals: `compose` → `discretise` → `grid`, one way.

use crate::error::AccountingError;
use crate::event::GaussianBlock;
use crate::rdp::{default_orders, rdp_poisson_gaussian_orders};
use crate::rdp_conversion::{epsilon_from_rdp, Conversion};

/// A regular grid t_i = (i − m)·Δt, i = 0..len, with m = len/2 so that 0 is a grid point.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grid {
    pub len: usize,
    pub zero: usize,
    pub dt: f64,
}

impl Grid {
    pub fn t(&self, i: usize) -> f64 {
        (i as f64 - self.zero as f64) * self.dt
    }
}

/// Smallest even number ≥ n of the form 2^a·3^b (fast sizes for rustfft).
fn fast_even_len(n: usize) -> usize {
    let mut best = usize::MAX;
    let mut p3 = 1usize;
    while p3 < best {
        let mut v = p3 * 2;
        while v < n {
            v *= 2;
        }
        best = best.min(v);
        match p3.checked_mul(3) {
            Some(x) => p3 = x,
            None => break,
        }
    }
    best
}

/// Chooses the truncation domain [−L, L] and mesh Δt for composing `blocks` with the given
/// error budget (Gopi et al. 2021, §5.3): L is the largest of the RDP ε of the whole
/// composition at δ_err/4, each single step's RDP ε at δ_err/(8k), and ε_err, plus 3; the mesh
/// is Δt = ε_err/√(k·ln(12/δ_err)/2) with k the total number of compositions. The RDP ε uses the
/// classic conversion, which is larger and so gives a safely wider domain.
pub(crate) fn choose_grid(
    blocks: &[GaussianBlock],
    eps_error: f64,
    delta_error: f64,
    max_points: usize,
) -> Result<Grid, AccountingError> {
    let k: f64 = blocks.iter().map(|b| b.count as f64).sum();
    let orders = default_orders();
    let mut total = vec![0.0; orders.len()];
    let mut l = eps_error;
    for b in blocks {
        let v = rdp_poisson_gaussian_orders(b.q, b.sigma, &orders)?;
        let single = epsilon_from_rdp(
            &orders,
            &v,
            (delta_error / (8.0 * k)).min(0.5),
            Conversion::Classic,
        )?;
        l = l.max(single.epsilon);
        for (t, r) in total.iter_mut().zip(&v) {
            *t += b.count as f64 * r;
        }
    }
    let full = epsilon_from_rdp(
        &orders,
        &total,
        (delta_error / 4.0).min(0.5),
        Conversion::Classic,
    )?;
    l = l.max(full.epsilon) + 3.0;
    let dt = eps_error / (k * (12.0 / delta_error).ln() / 2.0).sqrt();
    let half = (l / dt).ceil();
    if !half.is_finite() || half > (max_points / 2) as f64 {
        return Err(AccountingError::DomainTooLarge {
            needed: if half.is_finite() {
                (2.0 * half) as usize
            } else {
                usize::MAX
            },
            max: max_points,
        });
    }
    let len = fast_even_len(2 * half as usize + 2);
    if len > max_points {
        return Err(AccountingError::DomainTooLarge {
            needed: len,
            max: max_points,
        });
    }
    Ok(Grid {
        len,
        zero: len / 2,
        dt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_lengths() {
        assert_eq!(fast_even_len(1), 2);
        assert_eq!(fast_even_len(7), 8);
        assert_eq!(fast_even_len(13), 16);
        assert_eq!(fast_even_len(17), 18);
        assert_eq!(fast_even_len(1000), 1024);
        for n in [3usize, 100, 12345, 1_000_001] {
            let l = fast_even_len(n);
            assert!(l >= n && l.is_multiple_of(2) && (l as f64) < 1.2 * n as f64 + 2.0);
        }
    }
}
