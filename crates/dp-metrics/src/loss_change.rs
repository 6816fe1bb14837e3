//! The expected loss change of one private step, split into what the ordinary step would
//! do, what clipping changes (its direction and its magnitude) and what the noise costs
//! (algorithms.md §14.4, after Esipova et al. 2023's decomposition; Watson et al. 2023 ask
//! the same question of clipping against noise).
//!
//! For a step `θ' = θ − η(ḡ_B + ξ)` with `ξ ~ N(0, s²I)` (`s = σC/B` for a sum divided by
//! the public `B`), the second-order expansion of the loss `L` around `θ`, with `g_D` its
//! gradient and `H` its Hessian, gives `E[L(θ')] = L(θ) + R_nonpriv + R_clip + R_noise`:
//!
//! * `R_nonpriv = −η⟨g_D, g_B⟩ + (η²/2)·g_BᵀHg_B` — the ordinary step on the unclipped
//!   batch mean `g_B`;
//! * `R_clip = η⟨g_D, g_B − ḡ_B⟩ + (η²/2)·(ḡ_BᵀHḡ_B − g_BᵀHg_B)` — what replacing `g_B` by
//!   the clipped mean `ḡ_B` changes, split with `r = ‖ḡ_B‖/‖g_B‖` into
//!   * the magnitude part `R_mag = η(1 − r)⟨g_D, g_B⟩ + (η²/2)(r² − 1)·g_BᵀHg_B` (the step
//!     `r·g_B`: same direction, clipped length) and
//!   * the direction part `R_dir = η⟨g_D, r·g_B − ḡ_B⟩ + (η²/2)(ḡ_BᵀHḡ_B − r²·g_BᵀHg_B)`
//!     (turning `r·g_B` into `ḡ_B`), with `R_mag + R_dir = R_clip` exactly;
//! * `R_noise = (η²/2)·s²·Tr(H)` — the noise's expected cost (zero first-order term).
//!
//! The three are computed from private data without noise: analysis only (see the crate's
//! contract).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{ensure_finite, MetricsError, Result};
use crate::hessian::hessian_vector_product;
use crate::surface::{dot, norm, LossSurface, ParamLayout};

/// The terms of the expected loss change of one step (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossChangeDecomposition {
    /// `L(θ)` on the surface's probe set.
    pub loss: f64,
    /// The ordinary step's change, `R_nonpriv`.
    pub non_private: f64,
    /// What clipping changes, `R_clip = clip_magnitude + clip_direction`.
    pub clip: f64,
    /// The clipped length along the unclipped direction, `R_mag`.
    pub clip_magnitude: f64,
    /// The turn from the unclipped to the clipped direction, `R_dir`.
    pub clip_direction: f64,
    /// The noise's expected cost, `R_noise`.
    pub noise: f64,
    /// `R_nonpriv + R_clip + R_noise`: the predicted expected change of the private step.
    pub predicted_change: f64,
    /// `r = ‖ḡ_B‖/‖g_B‖` (NaN when `g_B = 0`).
    pub magnitude_ratio: f64,
    /// `Tr(H)` used for the noise term.
    pub hessian_trace: f64,
}

/// The inputs of one step's decomposition, flat and in the surface's parameter order.
#[derive(Clone, Copy, Debug)]
pub struct StepGradients<'a> {
    /// `g_D`: the gradient of the loss being decomposed (e.g. the mean gradient over the
    /// probe set or the whole training set).
    pub full: &'a [f64],
    /// `g_B`: the batch's mean unclipped gradient.
    pub batch: &'a [f64],
    /// `ḡ_B`: the batch's clipped sum divided by the same public constant as the step.
    pub clipped: &'a [f64],
}

/// Decomposes the expected loss change of a step of learning rate `lr` with noise of
/// per-coordinate std `noise_std` (on the divided gradient, `σC/B`) at `center`, with
/// curvature terms from Hessian-vector products on `surface` (step `hvp_eps_scale`, see
/// [`crate::PowerIterationConfig::eps_scale`]) and the given `Tr(H)` (e.g. from
/// [`crate::hutchinson_trace`]; for a masked run, the trace over the active coordinates).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_metrics::{loss_change_decomposition, QuadraticSurface, StepGradients};
/// let c = vec![Tensor::new(&[1f64, -2.], &Device::Cpu)?];
/// let mut q = QuadraticSurface::diagonal(c.clone(), &[2.0, 4.0])?; // g_D = (2, −8)
/// let g = StepGradients { full: &[2.0, -8.0], batch: &[2.0, -8.0], clipped: &[0.2, -0.8] };
/// let d = loss_change_decomposition(&mut q, &c, g, 0.1, 0.5, 6.0, 1e-5)?;
/// assert!((d.clip_magnitude + d.clip_direction - d.clip).abs() < 1e-12);
/// assert!(d.clip_direction.abs() < 1e-9); // clipping only shortened the step
/// assert!((d.noise - 0.5 * 0.01 * 0.25 * 6.0).abs() < 1e-12);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn loss_change_decomposition<S: LossSurface + ?Sized>(
    surface: &mut S,
    center: &[Tensor],
    grads: StepGradients<'_>,
    lr: f64,
    noise_std: f64,
    hessian_trace: f64,
    hvp_eps_scale: f64,
) -> Result<LossChangeDecomposition> {
    let layout = ParamLayout::of(center);
    let d = layout.numel();
    for (name, v) in [
        ("full gradient", grads.full),
        ("batch gradient", grads.batch),
        ("clipped gradient", grads.clipped),
    ] {
        if v.len() != d {
            return Err(MetricsError::ShapeMismatch(format!(
                "{name} has {} entries, the parameters {d}",
                v.len()
            )));
        }
        ensure_finite(v, name)?;
    }
    for (name, v) in [
        ("learning rate", lr),
        ("noise std", noise_std),
        ("Hessian trace", hessian_trace),
    ] {
        if !v.is_finite() || (name != "Hessian trace" && v < 0.0) {
            return Err(MetricsError::InvalidArgument(format!("{name} = {v}")));
        }
    }
    let loss = surface.loss_at(center)?;
    let quad = |surface: &mut S, v: &[f64]| -> Result<f64> {
        let vt = layout.unflatten(v)?;
        let hv = layout.flatten(&hessian_vector_product(
            surface,
            center,
            &vt,
            hvp_eps_scale,
        )?)?;
        Ok(dot(v, &hv))
    };
    let (g_d, g_b, g_c) = (grads.full, grads.batch, grads.clipped);
    let ghg = quad(surface, g_b)?;
    let chc = quad(surface, g_c)?;
    let nb = norm(g_b);
    let r = if nb > 0.0 { norm(g_c) / nb } else { f64::NAN };
    let eta = lr;
    let half = 0.5 * eta * eta;
    let non_private = -eta * dot(g_d, g_b) + half * ghg;
    let diff: Vec<f64> = g_b.iter().zip(g_c).map(|(a, b)| a - b).collect();
    let clip = eta * dot(g_d, &diff) + half * (chc - ghg);
    let (clip_magnitude, clip_direction) = if r.is_finite() {
        let mag = eta * (1.0 - r) * dot(g_d, g_b) + half * (r * r - 1.0) * ghg;
        (mag, clip - mag)
    } else {
        // g_B = 0: there is no unclipped direction; all of it is "direction".
        (0.0, clip)
    };
    let noise = half * noise_std * noise_std * hessian_trace;
    // Finite but extreme inputs (a learning rate of 1e300, say) overflow the products:
    // refused, rather than terms of ∞ and NaN.
    ensure_finite(
        &[
            loss,
            non_private,
            clip,
            clip_magnitude,
            clip_direction,
            noise,
            non_private + clip + noise,
        ],
        "loss-change terms (they overflow f64)",
    )?;
    Ok(LossChangeDecomposition {
        loss,
        non_private,
        clip,
        clip_magnitude,
        clip_direction,
        noise,
        predicted_change: non_private + clip + noise,
        magnitude_ratio: r,
        hessian_trace,
    })
}
