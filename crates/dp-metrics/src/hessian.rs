//! Hessian spectrum by Hessian-vector products (algorithms.md §14.2).
//!
//! candle 0.11 has no double backward by default, so H·v is a central difference of
//! gradients, Hv ≈ [∇L(θ + εv) − ∇L(θ − εv)] / (2ε) with ε = `eps_scale`/‖v‖ (exact for a
//! quadratic up to rounding). λ_max comes from power iteration with the Rayleigh quotient
//! (as in PyHessian, Yao et al. 2020, Alg. 1); λ_min from power iteration on H − λ_max·I;
//! the trace from Hutchinson's estimator Tr(H) ≈ (1/m) Σ z_kᵀHz_k with Rademacher z_k
//! (Hutchinson 1990; PyHessian Alg. 2). Random vectors come from seeded `rand_chacha`.

use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::directions::{gaussian_vec, rademacher_vec};
use crate::error::{MetricsError, Result};
use crate::surface::{axpy, dot, grad_flat, norm, LossSurface, ParamLayout};

/// The default HVP step `eps_scale` (a parameter-space step of this length): short enough
/// that on the project's ReLU and max-pool models a central difference almost never crosses
/// an activation kink (a crossing turns the kink's jump in the gradient into a spurious
/// curvature of order `jump/ε`), long enough that f64 rounding stays near 1e-11 relative.
/// Measure an f64 copy of the model: in f32 a step this short is dominated by rounding, and
/// the functions here refuse f32 parameters with a step below [`MIN_EPS_SCALE_F32`].
pub const DEFAULT_HVP_EPS_SCALE: f64 = 1e-5;

/// The shortest HVP step accepted for parameters below f64 precision. At this length an f32
/// HVP has rounding error near 1e-3 relative to the gradient and may cross kinks: a
/// compromise chosen explicitly by the caller, never a default.
pub const MIN_EPS_SCALE_F32: f64 = 1e-4;

fn check_precision(layout: &ParamLayout, eps_scale: f64) -> Result<()> {
    if let Some(dt) = layout
        .dtypes()
        .iter()
        .find(|d| **d != candle_core::DType::F64)
    {
        if eps_scale < MIN_EPS_SCALE_F32 {
            return Err(MetricsError::InvalidArgument(format!(
                "Hessian-vector products by central differences at a step of {eps_scale} on \
                 {dt:?} parameters are dominated by rounding: measure an f64 copy of the model \
                 (its parameters converted with to_dtype(F64)), or pass eps_scale ≥ \
                 {MIN_EPS_SCALE_F32} knowing that such steps may cross ReLU/max-pool kinks"
            )));
        }
    }
    Ok(())
}

fn hvp_flat<S: LossSurface + ?Sized>(
    surface: &mut S,
    layout: &ParamLayout,
    theta: &[f64],
    v: &[f64],
    eps_scale: f64,
) -> Result<Vec<f64>> {
    check_precision(layout, eps_scale)?;
    let nv = norm(v);
    if nv == 0.0 {
        return Ok(vec![0.0; v.len()]);
    }
    let eps = eps_scale / nv;
    let gp = grad_flat(surface, layout, &axpy(theta, eps, v))?;
    let gm = grad_flat(surface, layout, &axpy(theta, -eps, v))?;
    let hv: Vec<f64> = gp
        .iter()
        .zip(&gm)
        .map(|(a, b)| (a - b) / (2.0 * eps))
        .collect();
    // A step so long that 2ε overflows (eps_scale near f64::MAX) turns the difference
    // quotient into ∞/∞ = NaN: refused rather than returned as curvature.
    crate::error::ensure_finite(
        &hv,
        "Hessian-vector product (is the step eps_scale too long?)",
    )?;
    Ok(hv)
}

/// Hessian-vector product H·v at `center` by central differences of gradients (§14.2), with
/// ε = `eps_scale`/‖v‖ ([`DEFAULT_HVP_EPS_SCALE`] = 1e-5 on f64 parameters; §14.2's 1e-3
/// is biased on ReLU/max-pool models, see there).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_metrics::{hessian_vector_product, QuadraticSurface};
/// let c = vec![Tensor::new(&[1f64, -1.], &Device::Cpu)?];
/// let mut q = QuadraticSurface::new(c.clone(), vec![2., 1., 1., 3.], vec![0., 0.], 0.0)?;
/// let v = vec![Tensor::new(&[1f64, 0.], &Device::Cpu)?];
/// let hv = hessian_vector_product(&mut q, &c, &v, 1e-3)?;
/// let hv = hv[0].to_vec1::<f64>()?;
/// assert!((hv[0] - 2.0).abs() < 1e-9 && (hv[1] - 1.0).abs() < 1e-9);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn hessian_vector_product<S: LossSurface + ?Sized>(
    surface: &mut S,
    center: &[Tensor],
    v: &[Tensor],
    eps_scale: f64,
) -> Result<Vec<Tensor>> {
    check_eps(eps_scale)?;
    let layout = ParamLayout::of(center);
    let theta = layout.flatten(center)?;
    let vv = layout.flatten(v)?;
    layout.unflatten(&hvp_flat(surface, &layout, &theta, &vv, eps_scale)?)
}

fn check_eps(eps_scale: f64) -> Result<()> {
    if eps_scale.is_finite() && eps_scale > 0.0 {
        Ok(())
    } else {
        Err(MetricsError::InvalidArgument(
            "eps_scale must be > 0".into(),
        ))
    }
}

/// Settings of power iteration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PowerIterationConfig {
    /// Maximum iterations (§14.2: 20–100).
    pub max_iter: usize,
    /// Stop when |λ_k − λ_{k−1}| < tol·|λ_k| (§14.2: 1e-3).
    pub tol: f64,
    /// Seed of the Gaussian start vector.
    pub seed: u64,
    /// HVP step ε = eps_scale/‖v‖ (default [`DEFAULT_HVP_EPS_SCALE`]).
    pub eps_scale: f64,
}

impl Default for PowerIterationConfig {
    fn default() -> Self {
        Self {
            max_iter: 100,
            tol: 1e-3,
            seed: 0,
            eps_scale: DEFAULT_HVP_EPS_SCALE,
        }
    }
}

/// Result of power iteration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EigenEstimate {
    /// The eigenvalue estimate (Rayleigh quotient vᵀHv of the final unit vector).
    pub eigenvalue: f64,
    /// Iterations (one HVP each, i.e. two gradient evaluations).
    pub iterations: usize,
    /// Whether the relative-change stop rule fired.
    pub converged: bool,
    /// The Rayleigh quotient after every iteration.
    pub history: Vec<f64>,
}

fn power_iteration_flat<S: LossSurface + ?Sized>(
    surface: &mut S,
    layout: &ParamLayout,
    theta: &[f64],
    shift: f64,
    cfg: &PowerIterationConfig,
) -> Result<(EigenEstimate, Vec<f64>)> {
    check_eps(cfg.eps_scale)?;
    if cfg.max_iter == 0 {
        return Err(MetricsError::InvalidArgument("max_iter must be ≥ 1".into()));
    }
    let d = layout.numel();
    if d == 0 {
        return Err(MetricsError::EmptyInput("no parameters".into()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut v = gaussian_vec(&mut rng, d);
    let n0 = norm(&v);
    v.iter_mut().for_each(|x| *x /= n0);
    let mut history = Vec::new();
    let mut converged = false;
    let mut lambda = f64::NAN;
    for _ in 0..cfg.max_iter {
        let mut hv = hvp_flat(surface, layout, theta, &v, cfg.eps_scale)?;
        if shift != 0.0 {
            hv.iter_mut().zip(&v).for_each(|(h, x)| *h -= shift * x);
        }
        let new_lambda = dot(&v, &hv);
        history.push(new_lambda);
        let nh = norm(&hv);
        // ‖Hv‖² can overflow f64 although every entry is finite; dividing by ∞ would zero v
        // and report a converged λ = 0. Refused instead.
        crate::error::ensure_finite(&[new_lambda, nh], "power iteration (‖Hv‖ overflows f64)")?;
        let done = lambda.is_finite() && (new_lambda - lambda).abs() < cfg.tol * new_lambda.abs();
        lambda = new_lambda;
        if nh == 0.0 {
            converged = true; // v is in the null space: λ = 0 exactly
            break;
        }
        v = hv.iter().map(|x| x / nh).collect();
        if done {
            converged = true;
            break;
        }
    }
    let iterations = history.len();
    Ok((
        EigenEstimate {
            eigenvalue: lambda,
            iterations,
            converged,
            history,
        },
        v,
    ))
}

/// Largest-magnitude Hessian eigenvalue (λ_max at a minimum, where H ⪰ 0; elsewhere it may be
/// negative: use [`max_eigenvalue`] for the algebraically largest one) by power iteration
/// v ← Hv/‖Hv‖ with Rayleigh quotient λ = vᵀHv (§14.2).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_metrics::{top_eigenvalue, PowerIterationConfig, QuadraticSurface};
/// let c = vec![Tensor::new(&[0.5f64, 0.5, 0.5], &Device::Cpu)?];
/// let mut q = QuadraticSurface::diagonal(c.clone(), &[5.0, 1.0, 0.5])?;
/// let cfg = PowerIterationConfig { tol: 1e-8, ..Default::default() };
/// let e = top_eigenvalue(&mut q, &c, &cfg)?;
/// assert!((e.eigenvalue - 5.0).abs() < 1e-6);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn top_eigenvalue<S: LossSurface + ?Sized>(
    surface: &mut S,
    center: &[Tensor],
    cfg: &PowerIterationConfig,
) -> Result<EigenEstimate> {
    let layout = ParamLayout::of(center);
    let theta = layout.flatten(center)?;
    Ok(power_iteration_flat(surface, &layout, &theta, 0.0, cfg)?.0)
}

/// Algebraically largest Hessian eigenvalue λ_max, also away from a minimum.
///
/// Power iteration ([`top_eigenvalue`]) converges to the eigenvalue of largest *magnitude*, which
/// is negative wherever a strongly negative curvature dominates (a saddle, an unconverged or
/// clipped run, a pruned subspace): reporting that number as "λ_max" or as sharpness is wrong.
/// When the first pass returns λ₁ < 0, every eigenvalue lies in [λ₁, −λ₁], so H − λ₁·I is
/// positive semi-definite with top eigenvalue λ_max − λ₁; a second, shifted pass finds it and
/// the shift is added back. `iterations` and `history` cover both passes (history shifted back).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_metrics::{max_eigenvalue, top_eigenvalue, PowerIterationConfig, QuadraticSurface};
/// let c = vec![Tensor::new(&[0.5f64, 0.5, 0.5], &Device::Cpu)?];
/// let mut q = QuadraticSurface::diagonal(c.clone(), &[-6.0, 2.0, 0.5])?;
/// let cfg = PowerIterationConfig { tol: 1e-10, max_iter: 2000, ..Default::default() };
/// assert!((top_eigenvalue(&mut q, &c, &cfg)?.eigenvalue + 6.0).abs() < 1e-5);
/// assert!((max_eigenvalue(&mut q, &c, &cfg)?.eigenvalue - 2.0).abs() < 1e-5);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn max_eigenvalue<S: LossSurface + ?Sized>(
    surface: &mut S,
    center: &[Tensor],
    cfg: &PowerIterationConfig,
) -> Result<EigenEstimate> {
    let layout = ParamLayout::of(center);
    let theta = layout.flatten(center)?;
    let (first, _) = power_iteration_flat(surface, &layout, &theta, 0.0, cfg)?;
    if first.eigenvalue >= 0.0 {
        return Ok(first);
    }
    let shift = first.eigenvalue;
    let (second, _) = power_iteration_flat(surface, &layout, &theta, shift, cfg)?;
    let mut history = first.history;
    history.extend(second.history.iter().map(|h| h + shift));
    Ok(EigenEstimate {
        eigenvalue: second.eigenvalue + shift,
        iterations: first.iterations + second.iterations,
        converged: first.converged && second.converged,
        history,
    })
}

/// Most negative (smallest) Hessian eigenvalue by power iteration on H − λ_max·I (§14.2);
/// the returned `eigenvalue` is already shifted back (μ + λ_max). Report |λ_min/λ_max| to
/// check the convexity of a plotted region (Li et al. 2018, §6).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_metrics::{min_eigenvalue, PowerIterationConfig, QuadraticSurface};
/// let c = vec![Tensor::new(&[0.5f64, 0.5, 0.5], &Device::Cpu)?];
/// let mut q = QuadraticSurface::diagonal(c.clone(), &[5.0, 1.0, -2.0])?;
/// let cfg = PowerIterationConfig { tol: 1e-9, max_iter: 500, ..Default::default() };
/// let e = min_eigenvalue(&mut q, &c, 5.0, &cfg)?;
/// assert!((e.eigenvalue + 2.0).abs() < 1e-5);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn min_eigenvalue<S: LossSurface + ?Sized>(
    surface: &mut S,
    center: &[Tensor],
    lambda_max: f64,
    cfg: &PowerIterationConfig,
) -> Result<EigenEstimate> {
    if !lambda_max.is_finite() {
        return Err(MetricsError::NonFinite("lambda_max".into()));
    }
    let layout = ParamLayout::of(center);
    let theta = layout.flatten(center)?;
    let (mut e, _) = power_iteration_flat(surface, &layout, &theta, lambda_max, cfg)?;
    e.eigenvalue += lambda_max;
    e.history.iter_mut().for_each(|h| *h += lambda_max);
    Ok(e)
}

/// Settings of Hutchinson's trace estimator.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HutchinsonConfig {
    /// Maximum number of Rademacher probes m (Esipova et al.'s code: 100).
    pub max_probes: usize,
    /// Minimum number of probes before the stop rule may fire.
    pub min_probes: usize,
    /// Stop early when the standard error of the mean is below `rel_tol`·|mean|
    /// (`0.0` disables early stopping).
    pub rel_tol: f64,
    /// Seed of the probes.
    pub seed: u64,
    /// HVP step ε = eps_scale/‖z‖ (default [`DEFAULT_HVP_EPS_SCALE`]).
    pub eps_scale: f64,
}

impl Default for HutchinsonConfig {
    fn default() -> Self {
        Self {
            max_probes: 100,
            min_probes: 10,
            rel_tol: 0.0,
            seed: 0,
            eps_scale: DEFAULT_HVP_EPS_SCALE,
        }
    }
}

/// Hutchinson trace estimate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceEstimate {
    /// (1/m) Σ z_kᵀHz_k.
    pub trace: f64,
    /// Standard error of that mean (sd/√m).
    pub std_error: f64,
    /// Probes used.
    pub num_probes: usize,
    /// Whether the relative-tolerance stop rule fired.
    pub converged: bool,
}

/// Hessian trace by Hutchinson's estimator with Rademacher probes (§14.2).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_metrics::{hutchinson_trace, HutchinsonConfig, QuadraticSurface};
/// let c = vec![Tensor::new(&[0.1f64, 0.2], &Device::Cpu)?];
/// // Diagonal H: zᵀHz = Tr(H) for every Rademacher z.
/// let mut q = QuadraticSurface::diagonal(c.clone(), &[3.0, 4.0])?;
/// let t = hutchinson_trace(&mut q, &c, &HutchinsonConfig { max_probes: 5, ..Default::default() })?;
/// assert!((t.trace - 7.0).abs() < 1e-6);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn hutchinson_trace<S: LossSurface + ?Sized>(
    surface: &mut S,
    center: &[Tensor],
    cfg: &HutchinsonConfig,
) -> Result<TraceEstimate> {
    check_eps(cfg.eps_scale)?;
    if cfg.max_probes == 0 {
        return Err(MetricsError::InvalidArgument(
            "max_probes must be ≥ 1".into(),
        ));
    }
    let layout = ParamLayout::of(center);
    let theta = layout.flatten(center)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let (mut sum, mut sumsq) = (0.0, 0.0);
    let mut m = 0usize;
    let mut converged = false;
    while m < cfg.max_probes {
        let z = rademacher_vec(&mut rng, layout.numel());
        let hz = hvp_flat(surface, &layout, &theta, &z, cfg.eps_scale)?;
        let q = dot(&z, &hz);
        crate::error::ensure_finite(&[q], "Hutchinson probe zᵀHz (it overflows f64)")?;
        sum += q;
        sumsq += q * q;
        m += 1;
        if cfg.rel_tol > 0.0 && m >= cfg.min_probes.max(2) {
            let (mean, se) = mean_se(sum, sumsq, m);
            if se < cfg.rel_tol * mean.abs() {
                converged = true;
                break;
            }
        }
    }
    let (trace, std_error) = mean_se(sum, sumsq, m);
    // The sum of finite probes can itself overflow.
    crate::error::ensure_finite(&[trace], "Hutchinson trace (the probes' sum overflows f64)")?;
    Ok(TraceEstimate {
        trace,
        std_error,
        num_probes: m,
        converged,
    })
}

fn mean_se(sum: f64, sumsq: f64, m: usize) -> (f64, f64) {
    let mean = sum / m as f64;
    if m < 2 {
        return (mean, f64::INFINITY);
    }
    let var = ((sumsq - m as f64 * mean * mean) / (m - 1) as f64).max(0.0);
    (mean, (var / m as f64).sqrt())
}
