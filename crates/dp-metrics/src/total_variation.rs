//! Total variation of landscape slices and training curves, and the ROF residual roughness
//! (algorithms.md §14.1).
//!
//! The 2-D discretisations are the standard forward-difference ones of the ROF model
//! (Rudin, Osher & Fatemi 1992; Chambolle 2004, eq. (2.1)–(2.2)) with a zero difference at
//! the last row and column. [`rof_denoise`] is Chambolle's projection algorithm
//! (Chambolle 2004, "An algorithm for total variation minimization and applications",
//! JMIV 20, eq. (9) and Theorem 3.1, step τ ≤ 1/8).

use serde::{Deserialize, Serialize};

use crate::error::{ensure_finite, ensure_nonempty, MetricsError, Result};
use crate::landscape::Grid2d;

/// 1-D total variation TV₁ = Σ_k |f_{k+1} − f_k| (§14.1); errors if it overflows f64.
///
/// ```
/// assert_eq!(dp_metrics::tv_1d(&[3.0, 1.0, 2.0])?, 3.0);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn tv_1d(f: &[f64]) -> Result<f64> {
    ensure_nonempty(f, "tv_1d of an empty curve")?;
    ensure_finite(f, "tv_1d input")?;
    let tv: f64 = f.windows(2).map(|w| (w[1] - w[0]).abs()).sum();
    // Finite values near ±f64::MAX can have a TV beyond f64: refused, not ∞.
    ensure_finite(&[tv], "tv_1d (the variation overflows f64)")?;
    Ok(tv)
}

/// Scale-free roughness R₁ = TV₁ / [(f₀ − f_min) + (f_{M−1} − f_min)] (§14.1).
///
/// R₁ ≥ 1, with equality iff the curve is unimodal (non-increasing, then non-decreasing);
/// R₁ − 1 measures spurious oscillation. A constant curve has R₁ = 1 by convention; a curve
/// whose ends both sit at the minimum but which rises in between (zero denominator, positive
/// TV) has R₁ = +∞.
///
/// ```
/// assert_eq!(dp_metrics::roughness_1d(&[4.0, 1.0, 0.0, 2.0])?, 1.0);
/// assert_eq!(dp_metrics::roughness_1d(&[4.0, 1.0, 2.0, 0.0, 2.0])?, 8.0 / 6.0);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn roughness_1d(f: &[f64]) -> Result<f64> {
    let tv = tv_1d(f)?;
    let min = f.iter().copied().fold(f64::INFINITY, f64::min);
    let denom = (f[0] - min) + (f[f.len() - 1] - min);
    if denom > 0.0 {
        Ok(tv / denom)
    } else if tv == 0.0 {
        Ok(1.0)
    } else {
        Ok(f64::INFINITY)
    }
}

/// Temporal TV of a training-loss curve, TV_t = Σ_t |L_{t+1} − L_t| / (L_0 − L_T) (§14.1).
/// ≥ 1 for a curve that decreases overall, 1 iff monotone. Errors if L_0 ≤ L_T.
///
/// ```
/// assert_eq!(dp_metrics::temporal_tv(&[3.0, 2.0, 2.5, 1.0])?, 3.0 / 2.0);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn temporal_tv(losses: &[f64]) -> Result<f64> {
    let tv = tv_1d(losses)?;
    let drop = losses[0] - losses[losses.len() - 1];
    if drop <= 0.0 {
        return Err(MetricsError::InvalidArgument(
            "temporal TV needs a curve that decreases overall (L_0 > L_T)".into(),
        ));
    }
    let r = tv / drop;
    // A drop of a few ulps (1e-308) under a finite TV overflows: refused, not ∞.
    ensure_finite(&[r], "temporal TV (the overall drop is too small)")?;
    Ok(r)
}

fn check_grid(g: &Grid2d) -> Result<()> {
    // The fields are public, so `rows·cols` may overflow: checked, not multiplied.
    if g.rows.checked_mul(g.cols) != Some(g.values.len()) || g.values.is_empty() {
        return Err(MetricsError::ShapeMismatch(
            "grid values do not match rows x cols".into(),
        ));
    }
    ensure_finite(&g.values, "grid")
}

/// Forward differences (dx along rows, dy along columns), zero at the last row / column.
fn forward_diff(g: &Grid2d, i: usize, j: usize) -> (f64, f64) {
    let v = g.get(i, j);
    let dx = if i + 1 < g.rows {
        g.get(i + 1, j) - v
    } else {
        0.0
    };
    let dy = if j + 1 < g.cols {
        g.get(i, j + 1) - v
    } else {
        0.0
    };
    (dx, dy)
}

/// Anisotropic 2-D TV, TV_a = Σ_{i,j} (|f_{i+1,j} − f_{i,j}| + |f_{i,j+1} − f_{i,j}|) (§14.1).
/// Multiply by the grid step h to approximate ∫|f_x| + |f_y|.
///
/// ```
/// let g = dp_metrics::Grid2d::new(2, 2, vec![0., 1., 2., 3.])?;
/// assert_eq!(dp_metrics::tv_2d_anisotropic(&g)?, 2.0 * 2.0 + 2.0 * 1.0);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn tv_2d_anisotropic(g: &Grid2d) -> Result<f64> {
    check_grid(g)?;
    let mut s = 0.0;
    for i in 0..g.rows {
        for j in 0..g.cols {
            let (dx, dy) = forward_diff(g, i, j);
            s += dx.abs() + dy.abs();
        }
    }
    ensure_finite(&[s], "tv_2d_anisotropic (the variation overflows f64)")?;
    Ok(s)
}

/// Isotropic 2-D TV, TV_iso = Σ_{i,j} √((f_{i+1,j} − f_{i,j})² + (f_{i,j+1} − f_{i,j})²) (§14.1).
///
/// ```
/// let g = dp_metrics::Grid2d::new(2, 2, vec![0., 1., 2., 3.])?;
/// let expected = 5f64.sqrt() + 2.0 + 1.0; // (0,0): √(2²+1²); (0,1): 2; (1,0): 1
/// assert!((dp_metrics::tv_2d_isotropic(&g)? - expected).abs() < 1e-12);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn tv_2d_isotropic(g: &Grid2d) -> Result<f64> {
    check_grid(g)?;
    let mut s = 0.0;
    for i in 0..g.rows {
        for j in 0..g.cols {
            let (dx, dy) = forward_diff(g, i, j);
            s += dx.hypot(dy);
        }
    }
    ensure_finite(&[s], "tv_2d_isotropic (the variation overflows f64)")?;
    Ok(s)
}

/// TV scalars of a 1-D slice, on f and (where f > 0) on log f.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TvSummary1d {
    /// TV₁.
    pub tv: f64,
    /// R₁ (see [`roughness_1d`]).
    pub roughness: f64,
    /// max f − min f.
    pub range: f64,
    /// TV₁ / range (`None` for a constant curve).
    pub tv_normalized: Option<f64>,
    /// TV₁ of log f (`None` unless every f > 0).
    pub log_tv: Option<f64>,
    /// R₁ of log f.
    pub log_roughness: Option<f64>,
}

/// TV, roughness and range-normalised TV of a curve, also on log f.
///
/// ```
/// let s = dp_metrics::tv_summary_1d(&[4.0, 1.0, 2.0])?;
/// assert_eq!((s.tv, s.roughness, s.range), (4.0, 1.0, 3.0));
/// assert!((s.log_tv.unwrap() - (4f64.ln() + 2f64.ln())).abs() < 1e-12);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn tv_summary_1d(f: &[f64]) -> Result<TvSummary1d> {
    let tv = tv_1d(f)?;
    let roughness = roughness_1d(f)?;
    let (lo, hi) = f
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let range = hi - lo;
    let (log_tv, log_roughness) = if lo > 0.0 {
        let lf: Vec<f64> = f.iter().map(|v| v.ln()).collect();
        (Some(tv_1d(&lf)?), Some(roughness_1d(&lf)?))
    } else {
        (None, None)
    };
    Ok(TvSummary1d {
        tv,
        roughness,
        range,
        tv_normalized: (range > 0.0).then(|| tv / range),
        log_tv,
        log_roughness,
    })
}

/// TV scalars of a 2-D slice, on f and (where f > 0) on log f.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TvSummary2d {
    /// Grid step h used to scale the `*_integral` values.
    pub h: f64,
    /// TV_a.
    pub tv_anisotropic: f64,
    /// TV_iso.
    pub tv_isotropic: f64,
    /// h·TV_a ≈ ∫(|f_x| + |f_y|).
    pub tv_anisotropic_integral: f64,
    /// h·TV_iso ≈ ∫|∇f|.
    pub tv_isotropic_integral: f64,
    /// max f − min f.
    pub range: f64,
    /// TV_a / range (`None` for a constant grid).
    pub tv_anisotropic_normalized: Option<f64>,
    /// TV_iso / range.
    pub tv_isotropic_normalized: Option<f64>,
    /// TV_a of log f / range of log f (`None` unless every f > 0 and log f is not constant).
    pub log_tv_anisotropic_normalized: Option<f64>,
    /// TV_iso of log f / range of log f.
    pub log_tv_isotropic_normalized: Option<f64>,
}

/// TV summary of a grid with step `h` (§14.1): raw, h-scaled, range-normalised and on log f.
///
/// ```
/// let g = dp_metrics::Grid2d::from_fn(3, 3, |_, _| 2.0)?;
/// let s = dp_metrics::tv_summary_2d(&g, 0.5)?;
/// assert_eq!((s.tv_anisotropic, s.tv_isotropic), (0.0, 0.0));
/// assert_eq!(s.tv_isotropic_normalized, None);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn tv_summary_2d(g: &Grid2d, h: f64) -> Result<TvSummary2d> {
    if !(h.is_finite() && h > 0.0) {
        return Err(MetricsError::InvalidArgument(
            "grid step h must be > 0".into(),
        ));
    }
    let ta = tv_2d_anisotropic(g)?;
    let ti = tv_2d_isotropic(g)?;
    let (lo, hi) = g.min_max();
    let range = hi - lo;
    let (mut la, mut li) = (None, None);
    if lo > 0.0 {
        let lg = g.map(f64::ln);
        let (llo, lhi) = lg.min_max();
        if lhi > llo {
            la = Some(tv_2d_anisotropic(&lg)? / (lhi - llo));
            li = Some(tv_2d_isotropic(&lg)? / (lhi - llo));
        }
    }
    // A finite grid and step can still overflow (h·TV or max − min beyond f64): refused.
    ensure_finite(
        &[h * ta, h * ti, range],
        "TV summary (h·TV or the grid's range overflows f64)",
    )?;
    Ok(TvSummary2d {
        h,
        tv_anisotropic: ta,
        tv_isotropic: ti,
        tv_anisotropic_integral: h * ta,
        tv_isotropic_integral: h * ti,
        range,
        tv_anisotropic_normalized: (range > 0.0).then(|| ta / range),
        tv_isotropic_normalized: (range > 0.0).then(|| ti / range),
        log_tv_anisotropic_normalized: la,
        log_tv_isotropic_normalized: li,
    })
}

/// Settings of the ROF solver.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RofConfig {
    /// λ as a fraction of the grid's range, λ = `lambda_rel`·(max f − min f) (§14.1: 0.05).
    /// Ignored when `lambda_abs` is set.
    pub lambda_rel: f64,
    /// A fixed λ (use the same value across models for comparisons).
    pub lambda_abs: Option<f64>,
    /// Maximum iterations of Chambolle's projection.
    pub max_iter: usize,
    /// Stop when the largest change of the dual variable is below this.
    pub tol: f64,
    /// Step τ (Chambolle proves convergence for τ ≤ 1/8).
    pub tau: f64,
}

impl Default for RofConfig {
    fn default() -> Self {
        Self {
            lambda_rel: 0.05,
            lambda_abs: None,
            max_iter: 2000,
            tol: 1e-6,
            tau: 0.125,
        }
    }
}

/// The ROF solution u* = argmin_u ½‖u − f‖² + λ·TV_iso(u).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RofSolution {
    /// The denoised grid u*.
    pub denoised: Grid2d,
    /// Iterations run.
    pub iterations: usize,
    /// Whether the tolerance was reached.
    pub converged: bool,
}

/// Solves the ROF problem u* = argmin_u ½‖u − f‖² + λ·TV_iso(u) with Chambolle's (2004)
/// projection algorithm: p ← (p + τ∇(div p − f/λ)) / (1 + τ|∇(div p − f/λ)|), u = f − λ div p.
///
/// ```
/// use dp_metrics::{rof_denoise, Grid2d};
/// let f = Grid2d::from_fn(8, 8, |_, _| 1.5)?;
/// let s = rof_denoise(&f, 0.1, 100, 1e-9, 0.125)?;
/// assert!(s.denoised.values.iter().all(|v| (v - 1.5).abs() < 1e-12)); // constants are fixed points
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn rof_denoise(
    f: &Grid2d,
    lambda: f64,
    max_iter: usize,
    tol: f64,
    tau: f64,
) -> Result<RofSolution> {
    check_grid(f)?;
    if !(lambda.is_finite() && lambda >= 0.0 && tau > 0.0 && tau <= 0.25) {
        return Err(MetricsError::InvalidArgument(
            "need λ ≥ 0 and 0 < τ ≤ 1/4".into(),
        ));
    }
    if lambda == 0.0 {
        return Ok(RofSolution {
            denoised: f.clone(),
            iterations: 0,
            converged: true,
        });
    }
    let (m, n) = (f.rows, f.cols);
    let idx = |i: usize, j: usize| i * n + j;
    let mut px = vec![0.0; m * n];
    let mut py = vec![0.0; m * n];
    let mut div = vec![0.0; m * n];
    let compute_div = |px: &[f64], py: &[f64], div: &mut [f64]| {
        for i in 0..m {
            for j in 0..n {
                let k = idx(i, j);
                let mut d = 0.0;
                if i + 1 < m {
                    d += px[k];
                }
                if i > 0 {
                    d -= px[idx(i - 1, j)];
                }
                if j + 1 < n {
                    d += py[k];
                }
                if j > 0 {
                    d -= py[idx(i, j - 1)];
                }
                div[k] = d;
            }
        }
    };
    let mut iterations = 0;
    let mut converged = false;
    let mut w = vec![0.0; m * n];
    while iterations < max_iter {
        iterations += 1;
        compute_div(&px, &py, &mut div);
        for k in 0..m * n {
            w[k] = div[k] - f.values[k] / lambda;
        }
        let mut change: f64 = 0.0;
        for i in 0..m {
            for j in 0..n {
                let k = idx(i, j);
                let gx = if i + 1 < m {
                    w[idx(i + 1, j)] - w[k]
                } else {
                    0.0
                };
                let gy = if j + 1 < n {
                    w[idx(i, j + 1)] - w[k]
                } else {
                    0.0
                };
                let denom = 1.0 + tau * gx.hypot(gy);
                let nx = (px[k] + tau * gx) / denom;
                let ny = (py[k] + tau * gy) / denom;
                change = change.max((nx - px[k]).abs()).max((ny - py[k]).abs());
                px[k] = nx;
                py[k] = ny;
            }
        }
        if change < tol {
            converged = true;
            break;
        }
    }
    compute_div(&px, &py, &mut div);
    let u: Vec<f64> = f
        .values
        .iter()
        .zip(&div)
        .map(|(fv, d)| fv - lambda * d)
        .collect();
    // A tiny λ scales the grid by 1/λ inside the iteration, which can overflow: refused,
    // rather than a "denoised" grid of NaN.
    ensure_finite(&u, "ROF solution (f/λ overflows f64; use a larger λ)")?;
    Ok(RofSolution {
        denoised: Grid2d::new(m, n, u)?,
        iterations,
        converged,
    })
}

/// ROF residual roughness of a landscape grid (§14.1, our proposal).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RofRoughness {
    /// The λ used.
    pub lambda: f64,
    /// High-frequency energy ρ_HF = ‖f − u*‖₂ / ‖f − mean(f)‖₂ (`None` for a constant grid).
    pub hf_energy: Option<f64>,
    /// TV drop ΔTV = (TV_iso(f) − TV_iso(u*)) / TV_iso(f) (`None` for a constant grid).
    pub tv_drop: Option<f64>,
    /// Solver iterations.
    pub iterations: usize,
    /// Whether the solver reached its tolerance.
    pub converged: bool,
}

/// Denoises `f` with ROF and reports ρ_HF and ΔTV; both are near 0 for a smooth basin and
/// large for a rugged landscape.
///
/// ```
/// use dp_metrics::{rof_roughness, Grid2d, RofConfig};
/// let smooth = Grid2d::from_fn(21, 21, |i, j| ((i as f64 - 10.0).powi(2) + (j as f64 - 10.0).powi(2)) / 100.0)?;
/// let rugged = Grid2d::from_fn(21, 21, |i, j| smooth.get(i, j) + 0.3 * (((i * 7 + j * 3) % 5) as f64 - 2.0))?;
/// let a = rof_roughness(&smooth, &RofConfig::default())?;
/// let b = rof_roughness(&rugged, &RofConfig::default())?;
/// assert!(b.hf_energy.unwrap() > 3.0 * a.hf_energy.unwrap());
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn rof_roughness(f: &Grid2d, cfg: &RofConfig) -> Result<RofRoughness> {
    check_grid(f)?;
    let (lo, hi) = f.min_max();
    let lambda = cfg.lambda_abs.unwrap_or(cfg.lambda_rel * (hi - lo));
    let sol = rof_denoise(f, lambda, cfg.max_iter, cfg.tol, cfg.tau)?;
    let mean = f.values.iter().sum::<f64>() / f.values.len() as f64;
    let dev = f
        .values
        .iter()
        .map(|v| (v - mean).powi(2))
        .sum::<f64>()
        .sqrt();
    let res = f
        .values
        .iter()
        .zip(&sol.denoised.values)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    let tv_f = tv_2d_isotropic(f)?;
    let tv_u = tv_2d_isotropic(&sol.denoised)?;
    Ok(RofRoughness {
        lambda,
        hf_energy: (dev > 0.0).then(|| res / dev),
        tv_drop: (tv_f > 0.0).then(|| (tv_f - tv_u) / tv_f),
        iterations: sol.iterations,
        converged: sol.converged,
    })
}
