//! 1-D and 2-D loss-landscape slices, linear interpolation between two solutions and the
//! barrier height (algorithms.md §12.7 and §14.1).
//!
//! Slices follow Li et al. (2018), "Visualizing the Loss Landscape of Neural Nets":
//! f(α) = L(θ* + α·d) and f(α, β) = L(θ* + α·δ + β·η) with filter-normalised random
//! directions (see [`crate::directions`]). Interpolation follows Goodfellow, Vinyals & Saxe
//! (2015): f(λ) = L((1 − λ)θ_A + λθ_B).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::directions::{filter_normalized_direction_flat, BiasHandling};
use crate::error::{ensure_finite, ensure_nonempty, MetricsError, Result};
use crate::surface::{axpy, loss_flat, LossSurface, ParamLayout};

/// Seed offset for the second direction of a 2-D slice.
const SECOND_DIRECTION_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// `n` evenly spaced points from `start` to `end` inclusive (`n = 1` gives `[start]`).
///
/// ```
/// assert_eq!(dp_metrics::linspace(-1.0, 1.0, 5), vec![-1.0, -0.5, 0.0, 0.5, 1.0]);
/// ```
pub fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    let span = end - start;
    match n {
        0 => vec![],
        1 => vec![start],
        _ => (0..n)
            .map(|i| {
                if i == n - 1 {
                    end
                } else if i == 0 {
                    start
                } else if span.is_finite() {
                    start + span * i as f64 / (n - 1) as f64
                } else {
                    // `end − start` overflows (ends near ±f64::MAX): interpolate without it,
                    // instead of ∞·0 = NaN at the start and ±∞ inside.
                    let t = i as f64 / (n - 1) as f64;
                    start * (1.0 - t) + end * t
                }
            })
            .collect(),
    }
}

/// Mean and sample standard deviation of a set of scalars (e.g. one metric over K direction
/// seeds, §14.1).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeanSd {
    /// Arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1 in the denominator; 0 for a single value).
    pub sd: f64,
    /// Number of values.
    pub n: usize,
}

/// Mean ± sd of `values` (finite; errors on NaN or ∞, or if the spread overflows f64).
///
/// ```
/// let m = dp_metrics::mean_sd(&[1.0, 2.0, 3.0])?;
/// assert_eq!(m.mean, 2.0);
/// assert!((m.sd - 1.0).abs() < 1e-12);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn mean_sd(values: &[f64]) -> Result<MeanSd> {
    ensure_nonempty(values, "mean_sd of no values")?;
    ensure_finite(values, "mean_sd input")?;
    let n = values.len();
    let mean = crate::clipping::mean_of(values);
    let sd = if n > 1 {
        let plain =
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
        if plain.is_finite() {
            plain
        } else {
            // The squares overflowed (values near 1e160 and beyond): the same sum, scaled by
            // the largest deviation.
            let s = values.iter().map(|v| (v - mean).abs()).fold(0.0, f64::max);
            let r = values.iter().map(|v| ((v - mean) / s).powi(2)).sum::<f64>();
            s * (r / (n - 1) as f64).sqrt()
        }
    } else {
        0.0
    };
    if !sd.is_finite() {
        return Err(MetricsError::NonFinite(
            "mean_sd: the spread of the values overflows f64".into(),
        ));
    }
    Ok(MeanSd { mean, sd, n })
}

/// A dense 2-D grid of values, row-major: `values[i * cols + j]` is row i, column j.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grid2d {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Row-major values.
    pub values: Vec<f64>,
}

impl Grid2d {
    /// A grid from row-major values.
    ///
    /// ```
    /// let g = dp_metrics::Grid2d::new(2, 3, vec![0., 1., 2., 3., 4., 5.])?;
    /// assert_eq!(g.get(1, 2), 5.0);
    /// # Ok::<(), dp_metrics::MetricsError>(())
    /// ```
    pub fn new(rows: usize, cols: usize, values: Vec<f64>) -> Result<Self> {
        if rows == 0 || cols == 0 {
            return Err(MetricsError::EmptyInput(
                "grid with no rows or columns".into(),
            ));
        }
        if values.len() != rows * cols {
            return Err(MetricsError::ShapeMismatch(format!(
                "{rows}x{cols} grid needs {} values, got {}",
                rows * cols,
                values.len()
            )));
        }
        Ok(Self { rows, cols, values })
    }

    /// A grid with `values[i][j] = f(i, j)`.
    ///
    /// ```
    /// let g = dp_metrics::Grid2d::from_fn(2, 2, |i, j| (i + 2 * j) as f64)?;
    /// assert_eq!(g.values, vec![0., 2., 1., 3.]);
    /// # Ok::<(), dp_metrics::MetricsError>(())
    /// ```
    pub fn from_fn(
        rows: usize,
        cols: usize,
        mut f: impl FnMut(usize, usize) -> f64,
    ) -> Result<Self> {
        let mut v = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for j in 0..cols {
                v.push(f(i, j));
            }
        }
        Self::new(rows, cols, v)
    }

    /// Value at row `i`, column `j` (panics if out of range, like slice indexing).
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.values[i * self.cols + j]
    }

    /// Smallest and largest value.
    pub fn min_max(&self) -> (f64, f64) {
        self.values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            })
    }

    /// The grid with `f` applied to every value.
    pub fn map(&self, mut f: impl FnMut(f64) -> f64) -> Self {
        Self {
            rows: self.rows,
            cols: self.cols,
            values: self.values.iter().map(|&v| f(v)).collect(),
        }
    }
}

/// A 1-D slice f(α) = L(θ* + α·d).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slice1d {
    /// The step sizes α (increasing).
    pub alphas: Vec<f64>,
    /// The losses f(α).
    pub losses: Vec<f64>,
}

impl Slice1d {
    /// Index of the α closest to 0 (the centre).
    pub fn center_index(&self) -> usize {
        nearest_index(&self.alphas, 0.0)
    }

    /// Finite-difference curvature at the centre, κ₀ = (f(h) − 2f(0) + f(−h))/h² with h one
    /// grid step (§14.1). Needs a grid point at the centre with a neighbour on each side.
    ///
    /// ```
    /// let a = dp_metrics::linspace(-1.0, 1.0, 21);
    /// let s = dp_metrics::Slice1d { losses: a.iter().map(|x| 3.0 * x * x).collect(), alphas: a };
    /// assert!((s.curvature_at_center()? - 6.0).abs() < 1e-9);
    /// # Ok::<(), dp_metrics::MetricsError>(())
    /// ```
    pub fn curvature_at_center(&self) -> Result<f64> {
        let c = self.center_index();
        if c == 0 || c + 1 >= self.alphas.len() {
            return Err(MetricsError::InvalidArgument(
                "curvature needs grid points on both sides of the centre".into(),
            ));
        }
        let h1 = self.alphas[c] - self.alphas[c - 1];
        let h2 = self.alphas[c + 1] - self.alphas[c];
        if h1 <= 0.0 || h2 <= 0.0 {
            return Err(MetricsError::InvalidArgument(
                "alphas must be increasing".into(),
            ));
        }
        // Non-uniform three-point second derivative (reduces to the formula above when h1 = h2).
        let f = &self.losses;
        Ok(2.0 * (h1 * f[c + 1] - (h1 + h2) * f[c] + h2 * f[c - 1]) / (h1 * h2 * (h1 + h2)))
    }
}

/// A 2-D slice f(α, β) = L(θ* + α·δ + β·η); `losses.get(i, j)` is at (`alphas[i]`, `betas[j]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slice2d {
    /// Steps along the first direction (grid rows).
    pub alphas: Vec<f64>,
    /// Steps along the second direction (grid columns).
    pub betas: Vec<f64>,
    /// The losses.
    pub losses: Grid2d,
}

impl Slice2d {
    /// Row and column of the grid point closest to (0, 0).
    pub fn center_index(&self) -> (usize, usize) {
        (
            nearest_index(&self.alphas, 0.0),
            nearest_index(&self.betas, 0.0),
        )
    }
}

pub(crate) fn nearest_index(xs: &[f64], x: f64) -> usize {
    let mut best = 0;
    for (i, v) in xs.iter().enumerate() {
        if (v - x).abs() < (xs[best] - x).abs() {
            best = i;
        }
    }
    best
}

fn check_grid(xs: &[f64], what: &str) -> Result<()> {
    ensure_nonempty(xs, what)?;
    ensure_finite(xs, what)?;
    if xs.windows(2).any(|w| w[1] <= w[0]) {
        return Err(MetricsError::InvalidArgument(format!(
            "{what} must be strictly increasing"
        )));
    }
    Ok(())
}

/// Evaluates f(α) = L(center + α·direction) for every α (Li et al. 2018, §12.7 step 4).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_metrics::{slice_1d, linspace, QuadraticSurface};
/// let c = vec![Tensor::new(&[0f64, 0.], &Device::Cpu)?];
/// let mut q = QuadraticSurface::diagonal(c.clone(), &[2.0, 0.0])?;
/// let d = vec![Tensor::new(&[1f64, 0.], &Device::Cpu)?];
/// let s = slice_1d(&mut q, &c, &d, &linspace(-1.0, 1.0, 3))?;
/// assert_eq!(s.losses, vec![1.0, 0.0, 1.0]); // ½·2·α²
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn slice_1d<S: LossSurface + ?Sized>(
    surface: &mut S,
    center: &[Tensor],
    direction: &[Tensor],
    alphas: &[f64],
) -> Result<Slice1d> {
    check_grid(alphas, "alphas")?;
    let layout = ParamLayout::of(center);
    let c = layout.flatten(center)?;
    let d = layout.flatten(direction)?;
    slice_1d_flat(surface, &layout, &c, &d, alphas)
}

pub(crate) fn slice_1d_flat<S: LossSurface + ?Sized>(
    surface: &mut S,
    layout: &ParamLayout,
    c: &[f64],
    d: &[f64],
    alphas: &[f64],
) -> Result<Slice1d> {
    let losses = alphas
        .iter()
        .map(|&a| loss_flat(surface, layout, &axpy(c, a, d)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Slice1d {
        alphas: alphas.to_vec(),
        losses,
    })
}

/// Evaluates f(α, β) = L(center + α·dir_x + β·dir_y) on the grid `alphas × betas`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_metrics::{slice_2d, linspace, QuadraticSurface};
/// let c = vec![Tensor::new(&[0f64, 0.], &Device::Cpu)?];
/// let mut q = QuadraticSurface::diagonal(c.clone(), &[2.0, 4.0])?;
/// let dx = vec![Tensor::new(&[1f64, 0.], &Device::Cpu)?];
/// let dy = vec![Tensor::new(&[0f64, 1.], &Device::Cpu)?];
/// let s = slice_2d(&mut q, &c, &dx, &dy, &linspace(-1.0, 1.0, 3), &linspace(-1.0, 1.0, 3))?;
/// assert_eq!(s.losses.get(0, 0), 3.0); // ½(2 + 4)
/// assert_eq!(s.losses.get(1, 1), 0.0);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn slice_2d<S: LossSurface + ?Sized>(
    surface: &mut S,
    center: &[Tensor],
    dir_x: &[Tensor],
    dir_y: &[Tensor],
    alphas: &[f64],
    betas: &[f64],
) -> Result<Slice2d> {
    check_grid(alphas, "alphas")?;
    check_grid(betas, "betas")?;
    let layout = ParamLayout::of(center);
    let c = layout.flatten(center)?;
    let dx = layout.flatten(dir_x)?;
    let dy = layout.flatten(dir_y)?;
    slice_2d_flat(surface, &layout, &c, &dx, &dy, alphas, betas)
}

fn slice_2d_flat<S: LossSurface + ?Sized>(
    surface: &mut S,
    layout: &ParamLayout,
    c: &[f64],
    dx: &[f64],
    dy: &[f64],
    alphas: &[f64],
    betas: &[f64],
) -> Result<Slice2d> {
    let mut values = Vec::with_capacity(alphas.len() * betas.len());
    for &a in alphas {
        let row = axpy(c, a, dx);
        for &b in betas {
            values.push(loss_flat(surface, layout, &axpy(&row, b, dy))?);
        }
    }
    Ok(Slice2d {
        alphas: alphas.to_vec(),
        betas: betas.to_vec(),
        losses: Grid2d::new(alphas.len(), betas.len(), values)?,
    })
}

/// A 1-D slice along a seeded, filter-normalised random direction around `center`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_metrics::{random_slice_1d, linspace, BiasHandling, QuadraticSurface};
/// let c = vec![Tensor::new(&[[1f64, 1.], [1., 1.]], &Device::Cpu)?];
/// let mut q = QuadraticSurface::diagonal(c.clone(), &[1.0; 4])?;
/// let s = random_slice_1d(&mut q, &c, 0, BiasHandling::Zero, &linspace(-1.0, 1.0, 11))?;
/// assert_eq!(s.losses.len(), 11);
/// assert!((s.losses[5] - 2.0).abs() < 1e-12); // L(θ*) = ½‖θ*‖²
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn random_slice_1d<S: LossSurface + ?Sized>(
    surface: &mut S,
    center: &[Tensor],
    seed: u64,
    bias: BiasHandling,
    alphas: &[f64],
) -> Result<Slice1d> {
    check_grid(alphas, "alphas")?;
    let layout = ParamLayout::of(center);
    let c = layout.flatten(center)?;
    let d = filter_normalized_direction_flat(&layout, &c, seed, bias);
    slice_1d_flat(surface, &layout, &c, &d, alphas)
}

/// A 2-D slice along two independent seeded, filter-normalised random directions.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_metrics::{random_slice_2d, linspace, BiasHandling, QuadraticSurface};
/// let c = vec![Tensor::new(&[[1f64, 0.], [0., 1.]], &Device::Cpu)?];
/// let mut q = QuadraticSurface::diagonal(c.clone(), &[1.0; 4])?;
/// let g = linspace(-1.0, 1.0, 5);
/// let s = random_slice_2d(&mut q, &c, 3, BiasHandling::Zero, &g, &g)?;
/// assert_eq!((s.losses.rows, s.losses.cols), (5, 5));
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn random_slice_2d<S: LossSurface + ?Sized>(
    surface: &mut S,
    center: &[Tensor],
    seed: u64,
    bias: BiasHandling,
    alphas: &[f64],
    betas: &[f64],
) -> Result<Slice2d> {
    check_grid(alphas, "alphas")?;
    check_grid(betas, "betas")?;
    let layout = ParamLayout::of(center);
    let c = layout.flatten(center)?;
    let dx = filter_normalized_direction_flat(&layout, &c, seed, bias);
    let dy = filter_normalized_direction_flat(&layout, &c, seed ^ SECOND_DIRECTION_SEED, bias);
    slice_2d_flat(surface, &layout, &c, &dx, &dy, alphas, betas)
}

/// Linear interpolation between two solutions with its barrier height.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interpolation {
    /// The mixing coefficients λ.
    pub lambdas: Vec<f64>,
    /// f(λ) = L((1 − λ)θ_A + λθ_B).
    pub losses: Vec<f64>,
    /// max_{λ∈\[0,1\]} f(λ) − max(f(0), f(1)) (see [`barrier_height`]).
    pub barrier: f64,
}

/// Evaluates f(λ) = L((1 − λ)θ_A + λθ_B) (Goodfellow et al. 2015; §14.1 uses λ ∈ [−0.5, 1.5])
/// and its barrier height. `lambdas` must contain 0 and 1 (up to 1e-9).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_metrics::{interpolate, linspace, QuadraticSurface};
/// let a = vec![Tensor::new(&[-1f64], &Device::Cpu)?];
/// let b = vec![Tensor::new(&[1f64], &Device::Cpu)?];
/// // L(θ) = ½θ² is convex: no barrier, the path dips to 0 halfway.
/// let mut q = QuadraticSurface::diagonal(a.clone(), &[1.0])?;
/// let it = interpolate(&mut q, &a, &b, &linspace(-0.5, 1.5, 9))?;
/// assert_eq!(it.barrier, 0.0);
/// assert_eq!(it.losses[4], 0.0);  // λ = 0.5
/// assert_eq!(it.losses[0], 2.0);  // λ = −0.5: θ = −2
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn interpolate<S: LossSurface + ?Sized>(
    surface: &mut S,
    theta_a: &[Tensor],
    theta_b: &[Tensor],
    lambdas: &[f64],
) -> Result<Interpolation> {
    check_grid(lambdas, "lambdas")?;
    let layout = ParamLayout::of(theta_a);
    let a = layout.flatten(theta_a)?;
    let b = layout.flatten(theta_b)?;
    let diff: Vec<f64> = b.iter().zip(&a).map(|(x, y)| x - y).collect();
    let s = slice_1d_flat(surface, &layout, &a, &diff, lambdas)?;
    let barrier = barrier_height(&s.alphas, &s.losses)?;
    Ok(Interpolation {
        lambdas: s.alphas,
        losses: s.losses,
        barrier,
    })
}

/// Barrier height of an interpolation curve, max_{λ∈\[0,1\]} f(λ) − max(f(0), f(1)) (§14.1;
/// Frankle et al. 2020's linear-mode-connectivity "error barrier" on the loss). ≤ 0 means
/// the two solutions are linearly connected without a bump. `lambdas` must contain 0 and 1.
///
/// ```
/// let l = [0.0, 0.5, 1.0];
/// assert_eq!(dp_metrics::barrier_height(&l, &[1.0, 3.0, 2.0])?, 1.0);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn barrier_height(lambdas: &[f64], losses: &[f64]) -> Result<f64> {
    if lambdas.len() != losses.len() {
        return Err(MetricsError::ShapeMismatch(
            "lambdas and losses differ in length".into(),
        ));
    }
    ensure_nonempty(lambdas, "lambdas")?;
    ensure_finite(losses, "losses")?;
    let find = |x: f64| -> Result<usize> {
        let i = nearest_index(lambdas, x);
        if (lambdas[i] - x).abs() > 1e-9 {
            Err(MetricsError::InvalidArgument(format!(
                "lambdas must contain {x}"
            )))
        } else {
            Ok(i)
        }
    };
    let (i0, i1) = (find(0.0)?, find(1.0)?);
    let inside = lambdas
        .iter()
        .zip(losses)
        .filter(|(l, _)| **l >= -1e-9 && **l <= 1.0 + 1e-9)
        .map(|(_, f)| *f)
        .fold(f64::NEG_INFINITY, f64::max);
    Ok(inside - losses[i0].max(losses[i1]))
}
