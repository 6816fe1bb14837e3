//! A one-call check of a model's per-example gradients against the slow definition.
//!
//! DP-SGD's guarantee rests on one property: the "gradient of example `i`" that is clipped
//! is the gradient of `ℓ_i` alone, computed as if example `i` were the only one. For a
//! chain of dp-core layers that holds by construction (every layer is tested); for a model
//! of your own ([`crate::graph::GraphModel`], or a hand-written [`Model`]) it holds only if
//! the forward never lets one example see another. [`check_per_sample_gradients`] compares
//! what the engine computes from one batched backward pass with the reference: one
//! forward and backward pass **per example**, on a batch of that example alone.

use crate::engine::{batch_gradient, forward_backward, private_layers};
use crate::error::{CoreError, Result};
use crate::layer::GradMode;
use crate::loss::Loss;
use crate::model::Model;
use candle_core::{DType, Tensor};

/// The result of [`check_per_sample_gradients`]. Relative errors are per example,
/// `‖engine_i − reference_i‖ / max(‖reference_i‖, 10⁻³·mean_j ‖reference_j‖)` (the floor
/// keeps an example with a near-zero gradient from turning rounding into a failure), and
/// the report gives the worst over the batch.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckReport {
    /// Examples in the batch.
    pub examples: usize,
    /// Scalar parameters of the private layers.
    pub params: usize,
    /// Largest `|engine − reference|` over every example and coordinate.
    pub max_abs_err: f64,
    /// Largest relative error of a materialised per-example gradient.
    pub max_rel_err: f64,
    /// Largest relative error of a per-example norm, ghost (`GradMode::Ghost`) or
    /// materialised (`GradMode::Materialize`), against `‖reference_i‖`.
    pub max_norm_rel_err: f64,
    /// Relative error of the book-keeping sum `Σ_i w_i g_i` (weights `w_i = (i+1)/B`)
    /// against `Σ_i w_i reference_i`.
    pub weighted_sum_rel_err: f64,
    /// The example with the largest gradient error.
    pub worst_example: usize,
    /// The tolerance the relative errors were held to.
    pub tolerance: f64,
    /// Whether every relative error is finite and at most `tolerance`.
    pub passed: bool,
}

impl CheckReport {
    /// `Ok(())` if the check passed, else an error that carries the report.
    ///
    /// ```
    /// use dp_core::{check_per_sample_gradients, models, CrossEntropy};
    /// use candle_core::{Device, Tensor};
    /// let mut m = models::mlp(&[3, 4, 2], &Device::Cpu, 1).unwrap();
    /// let x = Tensor::randn(0f32, 1., (4, 3), &Device::Cpu).unwrap();
    /// let y = Tensor::new(&[0u32, 1, 1, 0], &Device::Cpu).unwrap();
    /// check_per_sample_gradients(&mut m, &x, &y, &CrossEntropy, 1e-4).unwrap().ensure().unwrap();
    /// ```
    pub fn ensure(&self) -> Result<()> {
        if self.passed {
            Ok(())
        } else {
            Err(CoreError::InvalidArgument(format!(
                "per-example gradients disagree with the one-example-at-a-time reference \
                 (does the model mix examples across the batch?): {self:?}"
            )))
        }
    }
}

fn rows_f64(t: &Tensor, b: usize) -> Result<Vec<Vec<f64>>> {
    Ok(t.reshape((b, ()))?.to_dtype(DType::F64)?.to_vec2::<f64>()?)
}

fn flat_f64(ts: &[Tensor]) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for t in ts {
        out.extend(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?);
    }
    Ok(out)
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|a| a * a).sum::<f64>().sqrt()
}

/// Per-example squared norms (summed over layers) with every private layer in `mode`,
/// from one forward/backward pass.
fn engine_sq_norms<M: Model + ?Sized>(
    model: &mut M,
    x: &Tensor,
    targets: &Tensor,
    loss: &dyn Loss,
    mode: GradMode,
    b: usize,
) -> Result<Vec<f64>> {
    forward_backward(model, x, targets, loss)?;
    let mut total = vec![0.0; b];
    for layer in private_layers(model)? {
        if let Some(rule) = layer.per_sample() {
            let sq = rule
                .sq_norms(mode)?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?;
            for (t, s) in total.iter_mut().zip(sq) {
                *t += s;
            }
        }
    }
    model.clear();
    Ok(total)
}

/// Checks the engine's per-example gradients, norms (ghost and materialised) and clipped
/// sum on the batch `(x, targets)` against the slow reference — one forward and backward
/// pass per example, on that example alone — and reports the worst errors.
///
/// A model that lets examples interact (a mean over the batch axis, batch statistics)
/// fails: the gradient the engine attributes to example `i` then depends on the other
/// examples, and clipping it no longer bounds example `i`'s influence. Use f64 parameters
/// and inputs for a tight tolerance (`1e-8`); in f32 about `1e-4` is rounding. The batch
/// needs at least two examples (one cannot reveal mixing), and the model must be
/// deterministic in training mode (no dropout) for the passes to agree.
///
/// Errors: a tolerance that is not finite and > 0, fewer than two examples, targets of
/// another length, a model without private layers, or any error of the passes.
///
/// ```
/// use dp_core::{check_per_sample_gradients, models, CrossEntropy};
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let mut m = models::mlp(&[4, 6, 3], &dev, 0).unwrap();
/// let x = Tensor::randn(0f32, 1., (5, 4), &dev).unwrap();
/// let y = Tensor::new(&[0u32, 1, 2, 0, 1], &dev).unwrap();
/// let r = check_per_sample_gradients(&mut m, &x, &y, &CrossEntropy, 1e-4).unwrap();
/// assert!(r.passed && r.max_rel_err < 1e-4);
/// ```
pub fn check_per_sample_gradients<M: Model + ?Sized>(
    model: &mut M,
    x: &Tensor,
    targets: &Tensor,
    loss: &dyn Loss,
    tolerance: f64,
) -> Result<CheckReport> {
    if !(tolerance.is_finite() && tolerance > 0.0) {
        return Err(CoreError::InvalidArgument(format!(
            "tolerance {tolerance} must be finite and > 0"
        )));
    }
    let b = x.dim(0)?;
    if b < 2 {
        return Err(CoreError::InvalidArgument(format!(
            "the check needs at least two examples (got {b}): one cannot reveal mixing"
        )));
    }
    if targets.rank() == 0 || targets.dim(0)? != b {
        return Err(crate::error::shape_err(
            "check_per_sample_gradients targets",
            &format!("{b} rows (one per example)"),
            targets.dims(),
        ));
    }
    if private_layers(model)?.is_empty() {
        return Err(CoreError::InvalidArgument(
            "the model has no private layers to check".into(),
        ));
    }

    // The engine: materialised per-example gradients and their norms (one pass) ...
    forward_backward(model, x, targets, loss)?;
    let mut parts = Vec::new();
    let mut mat_sq = vec![0.0; b];
    for layer in private_layers(model)? {
        if let Some(rule) = layer.per_sample() {
            let sq = rule
                .sq_norms(GradMode::Materialize)?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?;
            for (t, s) in mat_sq.iter_mut().zip(sq) {
                *t += s;
            }
            for g in rule.per_sample_grads()? {
                parts.push(g.reshape((b, ()))?);
            }
        }
    }
    model.clear();
    let engine = rows_f64(&Tensor::cat(&parts, 1)?, b)?;
    // ... ghost norms (another pass, so no materialised gradient is reused) ...
    let ghost_sq = engine_sq_norms(model, x, targets, loss, GradMode::Ghost, b)?;
    // ... and the book-keeping sum with unequal weights.
    let w: Vec<f64> = (0..b).map(|i| (i + 1) as f64 / b as f64).collect();
    forward_backward(model, x, targets, loss)?;
    let mut wsum = Vec::new();
    for layer in private_layers(model)? {
        let dtype = layer.params()[0].value.dtype();
        let wt = Tensor::from_vec(w.clone(), b, x.device())?.to_dtype(dtype)?;
        if let Some(rule) = layer.per_sample() {
            wsum.extend(rule.weighted_sum(&wt)?);
        }
    }
    model.clear();
    let wsum = flat_f64(&wsum)?;

    // The reference: one backward pass per example, on that example alone.
    let mut reference = Vec::with_capacity(b);
    for i in 0..b {
        let (g, _) = batch_gradient(
            model,
            &x.narrow(0, i, 1)?.copy()?,
            &targets.narrow(0, i, 1)?.copy()?,
            loss,
        )?;
        reference.push(flat_f64(&g)?);
    }
    let d = reference[0].len();
    if engine[0].len() != d || wsum.len() != d {
        return Err(CoreError::InvalidArgument(format!(
            "the engine's per-example gradients have {} coordinates, the reference {d}",
            engine[0].len()
        )));
    }

    let ref_norms: Vec<f64> = reference.iter().map(|r| norm(r)).collect();
    let floor = (1e-3 * ref_norms.iter().sum::<f64>() / b as f64).max(f64::MIN_POSITIVE);
    let (mut max_abs, mut max_rel, mut max_norm_rel, mut worst) = (0f64, 0f64, 0f64, 0);
    let nan_max = |a: f64, e: f64| {
        if e.is_nan() || a.is_nan() {
            f64::NAN
        } else {
            a.max(e)
        }
    };
    for i in 0..b {
        let diff: Vec<f64> = engine[i]
            .iter()
            .zip(&reference[i])
            .map(|(e, r)| e - r)
            .collect();
        max_abs = diff.iter().fold(max_abs, |m, v| nan_max(m, v.abs()));
        let denom = ref_norms[i].max(floor);
        let rel = norm(&diff) / denom;
        if rel > max_rel || rel.is_nan() {
            worst = i;
        }
        max_rel = nan_max(max_rel, rel);
        for sq in [mat_sq[i], ghost_sq[i]] {
            max_norm_rel = nan_max(
                max_norm_rel,
                (sq.max(0.0).sqrt() - ref_norms[i]).abs() / denom,
            );
        }
    }
    let expected: Vec<f64> = (0..d)
        .map(|j| (0..b).map(|i| w[i] * reference[i][j]).sum())
        .collect();
    let ws_diff: Vec<f64> = wsum.iter().zip(&expected).map(|(a, e)| a - e).collect();
    let ws_rel = norm(&ws_diff) / norm(&expected).max(floor);
    let ok = |e: f64| e.is_finite() && e <= tolerance;
    Ok(CheckReport {
        examples: b,
        params: d,
        max_abs_err: max_abs,
        max_rel_err: max_rel,
        max_norm_rel_err: max_norm_rel,
        weighted_sum_rel_err: ws_rel,
        worst_example: worst,
        tolerance,
        passed: ok(max_rel) && ok(max_norm_rel) && ok(ws_rel),
    })
}
