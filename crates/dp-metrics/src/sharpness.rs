//! Random-direction sharpness and flatness width (algorithms.md §14.1).
//!
//! Sharpness S_ρ = (1/K) Σ_k [L(θ* + ρ·d_k) − L(θ*)] with filter-normalised random directions
//! d_k (Li et al. 2018's normalisation; a filter-normalised analogue of the random-direction
//! sharpness of Keskar et al. 2017 / Jiang et al. 2020, "Fantastic generalization measures",
//! §C). The flatness width w_κ is the length of the largest interval around α = 0 on which
//! f(α) ≤ f(0) + κ (in 2-D, an area fraction).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::directions::{filter_normalized_direction_flat, BiasHandling};
use crate::error::{MetricsError, Result};
use crate::landscape::{mean_sd, MeanSd, Slice1d, Slice2d};
use crate::surface::{axpy, loss_flat, LossSurface, ParamLayout};

/// Settings of [`random_direction_sharpness`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SharpnessConfig {
    /// Radii ρ (§14.1: 0.05, 0.1, 0.25).
    pub radii: Vec<f64>,
    /// Number of random directions K.
    pub num_directions: usize,
    /// Seed of the first direction; direction k uses `seed + k`.
    pub seed: u64,
    /// Treatment of biases and norm parameters.
    pub bias: BiasHandling,
}

impl Default for SharpnessConfig {
    fn default() -> Self {
        Self {
            radii: vec![0.05, 0.1, 0.25],
            num_directions: 10,
            seed: 0,
            bias: BiasHandling::Zero,
        }
    }
}

/// Sharpness at one radius.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RadiusSharpness {
    /// The radius ρ.
    pub rho: f64,
    /// S_ρ = mean over directions of L(θ* + ρ·d_k) − L(θ*).
    pub sharpness: f64,
    /// Sample standard deviation of the per-direction increases.
    pub sd: f64,
    /// The per-direction increases.
    pub per_direction: Vec<f64>,
}

/// Random-direction sharpness report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SharpnessReport {
    /// L(θ*).
    pub base_loss: f64,
    /// One entry per radius.
    pub radii: Vec<RadiusSharpness>,
}

/// S_ρ = (1/K) Σ_k [L(θ* + ρ·d_k) − L(θ*)] with K seeded filter-normalised directions (§14.1).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_metrics::{random_direction_sharpness, QuadraticSurface, SharpnessConfig, BiasHandling};
/// // One filter [1, 1] and a quadratic with H = 2I: every filter-normalised d has ‖d‖ = ‖θ*‖,
/// // so L(θ* + ρd) − L(θ*) = ρ⟨θ*, 2d⟩ + ρ²‖d‖²; averaged over ±d pairs it is ≈ ρ²·2.
/// let c = vec![Tensor::new(&[[1f64, 1.]], &Device::Cpu)?];
/// let mut q = QuadraticSurface::diagonal(c.clone(), &[2.0, 2.0])?;
/// let cfg = SharpnessConfig { radii: vec![0.1], num_directions: 4, seed: 0, bias: BiasHandling::Zero };
/// let r = random_direction_sharpness(&mut q, &c, &cfg)?;
/// assert_eq!(r.radii[0].per_direction.len(), 4);
/// assert!((r.base_loss - 2.0).abs() < 1e-12);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn random_direction_sharpness<S: LossSurface + ?Sized>(
    surface: &mut S,
    center: &[Tensor],
    cfg: &SharpnessConfig,
) -> Result<SharpnessReport> {
    if cfg.num_directions == 0 || cfg.radii.is_empty() {
        return Err(MetricsError::InvalidArgument(
            "need at least one direction and one radius".into(),
        ));
    }
    let layout = ParamLayout::of(center);
    let c = layout.flatten(center)?;
    let base_loss = loss_flat(surface, &layout, &c)?;
    let dirs: Vec<Vec<f64>> = (0..cfg.num_directions)
        .map(|k| {
            filter_normalized_direction_flat(&layout, &c, cfg.seed.wrapping_add(k as u64), cfg.bias)
        })
        .collect();
    let mut radii = Vec::with_capacity(cfg.radii.len());
    for &rho in &cfg.radii {
        let per_direction = dirs
            .iter()
            .map(|d| Ok(loss_flat(surface, &layout, &axpy(&c, rho, d))? - base_loss))
            .collect::<Result<Vec<f64>>>()?;
        let MeanSd { mean, sd, .. } = mean_sd(&per_direction)?;
        radii.push(RadiusSharpness {
            rho,
            sharpness: mean,
            sd,
            per_direction,
        });
    }
    Ok(SharpnessReport { base_loss, radii })
}

/// The tolerance κ of a flatness width.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Kappa {
    /// An absolute increase (§14.1: 0.1).
    Absolute(f64),
    /// A fraction of f(0) (§14.1: 0.1, i.e. 10%).
    Relative(f64),
}

impl Kappa {
    fn threshold(self, f0: f64) -> f64 {
        match self {
            Kappa::Absolute(k) => f0 + k,
            Kappa::Relative(r) => f0 + r * f0.abs(),
        }
    }
}

/// Flatness width w_κ: the length of the largest interval [α_l, α_r] containing the centre
/// on which every sample satisfies f(α) ≤ f(0) + κ (§14.1). Grid resolution limits it to
/// the sampled α; a slice that stays below the threshold everywhere returns the full span.
///
/// ```
/// use dp_metrics::{flatness_width_1d, linspace, Kappa, Slice1d};
/// let a = linspace(-1.0, 1.0, 201);
/// let s = Slice1d { losses: a.iter().map(|x| x * x).collect(), alphas: a };
/// // x² ≤ 0.25 on [−0.5, 0.5]
/// assert!((flatness_width_1d(&s, Kappa::Absolute(0.25))? - 1.0).abs() < 1e-9);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn flatness_width_1d(slice: &Slice1d, kappa: Kappa) -> Result<f64> {
    if slice.alphas.len() != slice.losses.len() || slice.alphas.is_empty() {
        return Err(MetricsError::ShapeMismatch("slice alphas/losses".into()));
    }
    let c = slice.center_index();
    let thr = kappa.threshold(slice.losses[c]);
    let ok = |i: usize| slice.losses[i] <= thr;
    let mut l = c;
    while l > 0 && ok(l - 1) {
        l -= 1;
    }
    let mut r = c;
    while r + 1 < slice.losses.len() && ok(r + 1) {
        r += 1;
    }
    Ok(slice.alphas[r] - slice.alphas[l])
}

/// 2-D flatness: fractions of grid points with f ≤ f(0,0) + κ.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlatnessArea {
    /// Fraction of all grid points that satisfy the inequality (§14.1's area fraction).
    pub fraction: f64,
    /// Fraction of grid points in the 4-connected region around the centre that satisfies it
    /// (the 2-D analogue of the "largest interval around the centre").
    pub connected_fraction: f64,
}

/// 2-D flatness area fractions (§14.1).
///
/// ```
/// use dp_metrics::{flatness_area_2d, linspace, Grid2d, Kappa, Slice2d};
/// let a = linspace(-1.0, 1.0, 3);
/// let losses = Grid2d::new(3, 3, vec![5., 0.1, 5., 0.1, 0., 5., 5., 5., 0.05])?;
/// let s = Slice2d { alphas: a.clone(), betas: a, losses };
/// let f = flatness_area_2d(&s, Kappa::Absolute(0.2))?;
/// assert_eq!(f.fraction, 4.0 / 9.0);
/// assert_eq!(f.connected_fraction, 3.0 / 9.0); // the corner (2,2) is cut off
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn flatness_area_2d(slice: &Slice2d, kappa: Kappa) -> Result<FlatnessArea> {
    let g = &slice.losses;
    if g.rows != slice.alphas.len()
        || g.cols != slice.betas.len()
        || g.values.len() != g.rows * g.cols
    {
        return Err(MetricsError::ShapeMismatch(
            "slice grid does not match alphas x betas".into(),
        ));
    }
    let (ci, cj) = slice.center_index();
    let thr = kappa.threshold(g.get(ci, cj));
    let ok: Vec<bool> = g.values.iter().map(|v| *v <= thr).collect();
    let total = ok.len() as f64;
    let fraction = ok.iter().filter(|b| **b).count() as f64 / total;
    let mut seen = vec![false; ok.len()];
    let mut stack = vec![(ci, cj)];
    seen[ci * g.cols + cj] = true;
    let mut count = 0usize;
    while let Some((i, j)) = stack.pop() {
        count += 1;
        let mut push = |a: usize, b: usize| {
            let k = a * g.cols + b;
            if ok[k] && !seen[k] {
                seen[k] = true;
                stack.push((a, b));
            }
        };
        if i > 0 {
            push(i - 1, j);
        }
        if i + 1 < g.rows {
            push(i + 1, j);
        }
        if j > 0 {
            push(i, j - 1);
        }
        if j + 1 < g.cols {
            push(i, j + 1);
        }
    }
    Ok(FlatnessArea {
        fraction,
        connected_fraction: count as f64 / total,
    })
}

/// Mean ± sd over K direction seeds of the scalar summaries of 1-D slices (§14.1: use K ≥ 3
/// seeds and report mean ± sd of every scalar).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SliceSummary1d {
    /// TV₁ of f.
    pub tv: MeanSd,
    /// Roughness R₁ of f.
    pub roughness: MeanSd,
    /// Finite-difference curvature κ₀ at the centre.
    pub curvature: MeanSd,
    /// Flatness width w_κ.
    pub flatness_width: MeanSd,
}

/// Summarises slices along several random directions (e.g. from
/// [`random_slice_1d`](crate::random_slice_1d) with seeds 0..K).
///
/// ```
/// use dp_metrics::{linspace, summarize_slices_1d, Kappa, Slice1d};
/// let a = linspace(-1.0, 1.0, 21);
/// let slices: Vec<Slice1d> = (1..=3)
///     .map(|k| Slice1d { losses: a.iter().map(|x| k as f64 * x * x).collect(), alphas: a.clone() })
///     .collect();
/// let s = summarize_slices_1d(&slices, Kappa::Absolute(0.1))?;
/// assert!((s.curvature.mean - 4.0).abs() < 1e-9); // κ₀ = 2k, k = 1, 2, 3
/// assert_eq!(s.roughness.mean, 1.0);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn summarize_slices_1d(slices: &[Slice1d], kappa: Kappa) -> Result<SliceSummary1d> {
    crate::error::ensure_nonempty(slices, "no slices")?;
    let mut tv = Vec::new();
    let mut rough = Vec::new();
    let mut curv = Vec::new();
    let mut width = Vec::new();
    for s in slices {
        tv.push(crate::total_variation::tv_1d(&s.losses)?);
        rough.push(crate::total_variation::roughness_1d(&s.losses)?);
        curv.push(s.curvature_at_center()?);
        width.push(flatness_width_1d(s, kappa)?);
    }
    Ok(SliceSummary1d {
        tv: mean_sd(&tv)?,
        roughness: mean_sd(&rough)?,
        curvature: mean_sd(&curv)?,
        flatness_width: mean_sd(&width)?,
    })
}
