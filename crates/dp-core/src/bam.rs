//! A per-example objective evaluated away from `θ`: BAM, bias-aware minimisation (Knolle,
//! Dorfman, Ziller, Rueckert, Kaissis, "Bias-Aware Minimisation: Understanding and Mitigating
//! Estimator Bias in Private SGD", TPDP 2023).
//!
//! For each example `i` of the batch:
//!
//! ```text
//! g_i  = ∇ℓ_i(θ)                       one forward + one backward, materialised
//! g′_i = ∇ℓ_i(θ + r·g_i/‖g_i‖)         the gradient at the example's own ascent point
//! h_i  = (1 − α)·g_i + α·g′_i          mixed, then clipped, summed and noised as DP-SGD
//! ```
//!
//! `h_i` depends on example `i` and the public `θ` only, and it is clipped to the stated
//! sensitivity by the same [`crate::ClipStrategy`] and the same per-example check as DP-SGD,
//! so BAM costs no more privacy than DP-SGD at the same `(q, σ, T)`.
//!
//! The ascent points differ per example, which the one-forward-one-backward engine of
//! [`crate::clipped_gradient`] cannot express. Here they are **per-example parameter
//! offsets** ([`crate::PerSampleGrad::set_example_offsets`]): in the second pass each
//! private layer evaluates example `i` at `θ + Δ_i` (for linear-type layers one batched
//! product `A_i Δ_iᵀ` beside the shared `A_i Wᵀ`, and `G_i Δ_i` in the backward), and its
//! unchanged per-sample rule then yields `g′_i`. So a BAM step is two forward and two backward
//! passes over the batch, not `B` models. Every layer with parameters must support offsets
//! (Linear and Conv2d do); a model with another one is refused with an error naming it.
//!
//! Two paths compute the same thing:
//!
//! - **factored** (the default, [`GradMode::Auto`] / [`GradMode::Ghost`]): a linear-type
//!   layer's per-example gradient is `g_i = G_iᵀA_i` over the example's `T` positions, so the
//!   offset `Δ_i = s_i·G_iᵀA_i` (`s_i = r/‖g_i‖`) need not be formed: the second forward adds
//!   `s_i(A′_iA_iᵀ)G_i` and the second backward `s_i(G′_iG_iᵀ)A_i` (position Gram matrices;
//!   per layer, whichever of this and the materialised `Δ_i` is cheaper). The mix
//!   `h_i = (1−α)G_iᵀA_i + αG′_iᵀA′_i = [(1−α)G_i; αG′_i]ᵀ[A_i; A′_i]` is an ordinary record of
//!   `2T` positions, so its norm is a ghost norm and its clipped sum book-keeping (Li et al.
//!   2021; Bu et al. 2022): no per-example gradient is materialised where the layer's rule
//!   would not materialise it for DP-SGD ([`crate::PerSampleGrad::begin_factored_ascent`],
//!   [`crate::PerSampleGrad::mix_factored_ascent`]).
//! - **materialised** ([`GradMode::Materialize`], the reference): `g_i`, `g′_i` and `h_i`
//!   are materialised (`3·B·d` values); with `α = 0` it equals DP-SGD bit for bit. It is also
//!   taken for a model with a layer that has offsets but no factored form.
//!
//! Decisions where the method is not pinned down (`shared/docs/algorithms.md` §5; no official
//! code was found): `r = 0.05`, `α = 0.8` are the defaults of the public objax implementation;
//! the normalisation uses the flat norm over all layers; an example whose gradient is exactly
//! zero is not moved (`Δ_i = 0`, so `h_i = g_i = 0`).

use crate::clipping::{ClipStrategy, LayerSqNorms};
use crate::engine::{
    check_clipped_sum, clip_weights, empty_batch, forward_backward, private_layers,
    sq_norms_to_host, without_examples, ClipStats, ClippedBatch,
};
use crate::engine::{GradOptions, NonFinitePolicy};
use crate::error::{CoreError, Result};
use crate::layer::GradMode;
use crate::layers::seq_linear::{parts_sq_norms, weighted_sum_materialized};
use crate::loss::Loss;
use crate::model::Model;
use candle_core::{DType, Device, Tensor};

/// BAM's two hyper-parameters: the ascent radius `r` and the mixing weight `α`.
///
/// ```
/// use dp_core::BamConfig;
/// let c = BamConfig::default();
/// assert_eq!((c.radius(), c.alpha()), (0.05, 0.8));
/// assert!(BamConfig::new(0.05, 1.5).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BamConfig {
    radius: f64,
    alpha: f64,
}

impl Default for BamConfig {
    fn default() -> Self {
        Self {
            radius: Self::DEFAULT_RADIUS,
            alpha: Self::DEFAULT_ALPHA,
        }
    }
}

impl BamConfig {
    /// `r = 0.05`, the default of the public objax implementation.
    pub const DEFAULT_RADIUS: f64 = 0.05;
    /// `α = 0.8`, the default of the public objax implementation.
    pub const DEFAULT_ALPHA: f64 = 0.8;

    /// Radius `r ≥ 0` (finite) and mixing weight `α ∈ [0, 1]`. `α = 0` is DP-SGD; `α = 1`
    /// is per-example SAM (the perturbed gradient alone).
    pub fn new(radius: f64, alpha: f64) -> Result<Self> {
        if !(radius.is_finite() && radius >= 0.0) {
            return Err(CoreError::InvalidArgument(format!(
                "BAM radius r = {radius} must be finite and ≥ 0"
            )));
        }
        if !(0.0..=1.0).contains(&alpha) {
            return Err(CoreError::InvalidArgument(format!(
                "BAM mixing weight α = {alpha} must be in [0, 1]"
            )));
        }
        Ok(Self { radius, alpha })
    }

    /// The ascent radius `r`.
    pub fn radius(&self) -> f64 {
        self.radius
    }

    /// The mixing weight `α`.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }
}

/// Per layer, per parameter: one materialised tensor `[B, ..param shape]`.
type LayerGrads = Vec<Vec<Tensor>>;

/// The plain per-example gradients, materialised, with their per-layer squared norms
/// (the norms of [`GradMode::Materialize`], to the bit) and the loss sum.
fn plain_gradients<M: Model + ?Sized>(
    model: &mut M,
    x: &Tensor,
    targets: &Tensor,
    loss: &dyn Loss,
) -> Result<(LayerGrads, Vec<Tensor>, f64)> {
    let loss_sum = forward_backward(model, x, targets, loss)?;
    let mut grads = Vec::new();
    let mut sq = Vec::new();
    for layer in private_layers(model)? {
        let name = layer.name();
        let rule = layer
            .per_sample()
            .ok_or(CoreError::UnsupportedLayer { layer: name })?;
        sq.push(rule.sq_norms(GradMode::Materialize)?);
        grads.push(rule.per_sample_grads()?);
    }
    model.clear();
    Ok((grads, sq, loss_sum))
}

/// The per-example gradients at `θ + scale_i·g_i` for the plain gradients `plain`.
fn ascent_gradients<M: Model + ?Sized>(
    model: &mut M,
    x: &Tensor,
    targets: &Tensor,
    loss: &dyn Loss,
    plain: &LayerGrads,
    scale: &Tensor,
) -> Result<LayerGrads> {
    let set = (|| -> Result<()> {
        let b = scale.dim(0)?;
        for (layer, g) in private_layers(model)?.into_iter().zip(plain) {
            let name = layer.name();
            let rule = layer.per_sample().ok_or(CoreError::UnsupportedLayer {
                layer: name.clone(),
            })?;
            let offsets = g
                .iter()
                .map(|t| {
                    let mut shape = vec![b];
                    shape.extend(std::iter::repeat_n(1, t.rank() - 1));
                    t.broadcast_mul(&scale.to_dtype(t.dtype())?.reshape(shape)?)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            rule.set_example_offsets(offsets).map_err(|e| {
                CoreError::InvalidArgument(format!(
                    "BAM evaluates each example at its own ascent point, which needs \
                     per-example parameter offsets; layer {name} refused them: {e}"
                ))
            })?;
        }
        Ok(())
    })();
    if let Err(e) = set {
        // The layers before the one that refused hold offsets: drop them.
        model.clear();
        return Err(e);
    }
    let run = (|| -> Result<LayerGrads> {
        forward_backward(model, x, targets, loss)?;
        let mut out = Vec::new();
        for layer in private_layers(model)? {
            let name = layer.name();
            let rule = layer
                .per_sample()
                .ok_or(CoreError::UnsupportedLayer { layer: name })?;
            out.push(rule.per_sample_grads()?);
        }
        Ok(out)
    })();
    // Offsets must never outlive this step, whatever happened.
    model.clear();
    run
}

fn flatten(grads: &LayerGrads, b: usize) -> Result<Tensor> {
    let parts = grads
        .iter()
        .flatten()
        .map(|t| t.reshape((b, ())))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 1)?)
}

/// `r / ‖g_i‖` per example (0 for a zero gradient), from the per-layer squared norms, in
/// f64 (the offsets take the model's dtype).
fn ascent_scales(sq: &[Tensor], radius: f64, device: &Device) -> Result<Tensor> {
    let mut total: Option<Vec<f64>> = None;
    for t in sq {
        let v: Vec<f64> = t.to_dtype(DType::F64)?.to_vec1()?;
        total = Some(match total {
            Some(acc) => acc.iter().zip(&v).map(|(a, b)| a + b).collect(),
            None => v,
        });
    }
    let scales: Vec<f64> = total
        .unwrap_or_default()
        .iter()
        .map(|&n| if n > 0.0 { radius / n.sqrt() } else { 0.0 })
        .collect();
    let b = scales.len();
    Ok(Tensor::from_vec(scales, b, device)?)
}

/// Every example's plain gradient `g_i` and its gradient `g′_i = ∇ℓ_i(θ + r·g_i/‖g_i‖)` at its
/// own ascent point, each flattened and concatenated over parameters in model order: two
/// `[B, d]` tensors. For analysis and tests; [`bam_clipped_gradient`] is the training path.
///
/// ```
/// use dp_core::{per_example_ascent_gradients, CrossEntropy, Init, Sequential};
/// use dp_core::layers::Linear;
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let mut m = Sequential::new(&dev).push(Linear::new(4, 3, true, &mut Init::seeded(1), &dev).unwrap());
/// let x = Tensor::ones((2, 4), candle_core::DType::F32, &dev).unwrap();
/// let y = Tensor::new(&[0u32, 1], &dev).unwrap();
/// let (g, g_ascent) = per_example_ascent_gradients(&mut m, &x, &y, &CrossEntropy, 0.05).unwrap();
/// assert_eq!(g.dims(), &[2, 15]);
/// assert_eq!(g_ascent.dims(), &[2, 15]);
/// ```
pub fn per_example_ascent_gradients<M: Model + ?Sized>(
    model: &mut M,
    x: &Tensor,
    targets: &Tensor,
    loss: &dyn Loss,
    radius: f64,
) -> Result<(Tensor, Tensor)> {
    BamConfig::new(radius, 0.0)?;
    let b = x.dim(0)?;
    let (plain, sq, _) = plain_gradients(model, x, targets, loss)?;
    let scale = ascent_scales(&sq, radius, x.device())?;
    let ascent = ascent_gradients(model, x, targets, loss, &plain, &scale)?;
    Ok((flatten(&plain, b)?, flatten(&ascent, b)?))
}

/// BAM's clipped sum `Σ_i c_i h_i` over one batch, with `h_i = (1 − α)g_i + α g′_i` (see the
/// module documentation), clipped by `clip` after mixing, with the same per-example check of
/// the stated sensitivity as [`crate::clipped_gradient`]. The statistics' norms are those of
/// `h_i` (what is clipped); with [`GradOptions::track_unclipped_sum`] the unclipped
/// reference is the **plain** `Σ_i g_i`, so the clipping bias `‖Σ c_i h_i − Σ g_i‖` measures
/// how far the released direction is from the ordinary gradient.
///
/// With [`GradMode::Materialize`] the per-example gradients are materialised (the reference
/// path; with `α = 0` the result equals [`crate::clipped_gradient`] in that mode bit for
/// bit); otherwise the factored path runs (module documentation), which agrees with it up
/// to rounding. Augmentation multiplicity is not supported (an error).
///
/// ```
/// use dp_core::{bam_clipped_gradient, BamConfig, CrossEntropy, GradOptions, Init, Sequential};
/// use dp_core::clipping::FlatClip;
/// use dp_core::layers::{Linear, Tanh};
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let mut init = Init::seeded(1);
/// let mut m = Sequential::new(&dev)
///     .push(Linear::new(4, 8, true, &mut init, &dev).unwrap())
///     .push(Tanh::default())
///     .push(Linear::new(8, 3, true, &mut init, &dev).unwrap());
/// let x = Tensor::randn(0f32, 3., (8, 4), &dev).unwrap();
/// let y = Tensor::new(&[0u32, 1, 2, 0, 1, 2, 0, 1], &dev).unwrap();
/// let mut clip = FlatClip::new(0.5).unwrap();
/// let out = bam_clipped_gradient(&mut m, &x, &y, &CrossEntropy, &mut clip,
///                                &GradOptions::default(), &BamConfig::default()).unwrap();
/// assert_eq!(out.sensitivity, 0.5);
/// assert_eq!(out.sum.len(), 4);
/// ```
pub fn bam_clipped_gradient<M: Model + ?Sized>(
    model: &mut M,
    x: &Tensor,
    targets: &Tensor,
    loss: &dyn Loss,
    clip: &mut dyn ClipStrategy,
    opts: &GradOptions,
    cfg: &BamConfig,
) -> Result<ClippedBatch> {
    let sensitivity = clip.sensitivity();
    let threshold = clip.threshold();
    let b = x.dim(0)?;
    if b == 0 {
        return empty_batch(model, sensitivity, threshold, opts);
    }
    if opts.augmentation_multiplicity > 1 {
        return Err(CoreError::InvalidArgument(
            "BAM does not support augmentation multiplicity".into(),
        ));
    }
    if opts.mask.is_some() {
        // The ascent point and the mixed gradient would have to be masked too; refuse
        // rather than clip norms over coordinates the run does not train.
        return Err(CoreError::InvalidArgument(
            "BAM does not support gradient masks (pruning)".into(),
        ));
    }
    if use_factored(model, opts)? {
        return bam_factored(model, x, targets, loss, clip, opts, cfg);
    }
    let device = x.device().clone();
    let (plain, plain_sq, loss_sum) = plain_gradients(model, x, targets, loss)?;
    let scale = ascent_scales(&plain_sq, cfg.radius, &device)?;
    // Even at α = 0 the mix is formed (`1·g_i + 0·g′_i = g_i` exactly), so that the test of
    // α = 0 against DP-SGD checks the whole path.
    let ascent = ascent_gradients(model, x, targets, loss, &plain, &scale)?;
    let (a, c) = (cfg.alpha, 1.0 - cfg.alpha);
    let mut h = Vec::with_capacity(plain.len());
    let mut sq = Vec::with_capacity(plain.len());
    for (g, gp) in plain.iter().zip(&ascent) {
        let mixed = g
            .iter()
            .zip(gp)
            .map(|(g, gp)| g.affine(c, 0.0)? + gp.affine(a, 0.0)?)
            .collect::<candle_core::Result<Vec<_>>>()?;
        let refs: Vec<&Tensor> = mixed.iter().collect();
        sq.push(parts_sq_norms(&refs)?);
        h.push(mixed);
    }
    let sq = sq_norms_to_host(sq)?;

    let totals = sq.total_norms();
    let bad: Vec<usize> = (0..b).filter(|&i| !totals[i].is_finite()).collect();
    if !bad.is_empty() {
        if opts.non_finite == NonFinitePolicy::Error {
            return Err(CoreError::NonFiniteGradient { examples: bad });
        }
        // ZeroOut: recompute on the finite examples (as the engine does).
        let (xg, yg) = without_examples(x, targets, &bad, b, 1)?;
        let mut out = bam_clipped_gradient(model, &xg, &yg, loss, clip, opts, cfg)?;
        let norms: Vec<f32> = totals.iter().map(|&n| n as f32).collect();
        out.stats = ClipStats::new(norms, threshold, bad.len());
        return Ok(out);
    }

    let (weights, shared) = clip_weights(clip, &sq, b, sensitivity, &device)?;
    let mut sum = Vec::new();
    for (l, parts) in h.iter().enumerate() {
        let w = match &shared {
            Some(w) => w.clone(),
            None => Tensor::from_vec(weights[l].clone(), b, &device)?,
        };
        for p in parts {
            sum.push(weighted_sum_materialized(p, &w)?);
        }
    }
    let unclipped_sum = if opts.track_unclipped_sum {
        let ones = Tensor::ones(b, DType::F32, &device)?;
        Some(
            plain
                .iter()
                .flatten()
                .map(|g| weighted_sum_materialized(g, &ones))
                .collect::<Result<Vec<_>>>()?,
        )
    } else {
        None
    };
    check_clipped_sum(&sum, sensitivity, b)?;
    let norms: Vec<f32> = totals.iter().map(|&n| n as f32).collect();
    Ok(ClippedBatch {
        sum,
        sensitivity,
        stats: ClipStats::new(norms, threshold, 0),
        loss_sum,
        examples: b,
        unclipped_sum,
    })
}

/// The factored path applies unless [`GradMode::Materialize`] is asked for (the reference
/// path, kept as it was) or some private layer cannot keep its ascent offsets factored.
fn use_factored<M: Model + ?Sized>(model: &mut M, opts: &GradOptions) -> Result<bool> {
    if opts.mode == GradMode::Materialize
        || opts
            .layer_modes
            .values()
            .any(|m| *m == GradMode::Materialize)
    {
        return Ok(false);
    }
    Ok(private_layers(model)?
        .into_iter()
        .all(|l| l.per_sample().is_some_and(|r| r.supports_factored_ascent())))
}

/// BAM without per-example gradients (for models whose private layers are all linear-type):
/// the plain pass's norms give the scales `s_i = r/‖g_i‖`; each layer keeps its ascent
/// offset `Δ_i = s_i G_iᵀA_i` factored ([`crate::PerSampleGrad::begin_factored_ascent`]) for
/// the second pass; afterwards its record becomes that of `h_i` over `2T` positions
/// ([`crate::PerSampleGrad::mix_factored_ascent`]), whose norms and clipped sum follow the
/// layer's ordinary rule (ghost norm and book-keeping where cheaper). Same clipping, same
/// per-example sensitivity check and same statistics as the materialised path.
fn bam_factored<M: Model + ?Sized>(
    model: &mut M,
    x: &Tensor,
    targets: &Tensor,
    loss: &dyn Loss,
    clip: &mut dyn ClipStrategy,
    opts: &GradOptions,
    cfg: &BamConfig,
) -> Result<ClippedBatch> {
    let sensitivity = clip.sensitivity();
    let threshold = clip.threshold();
    let b = x.dim(0)?;
    let device = x.device().clone();
    let mode_of = |k: usize| opts.layer_modes.get(&k).copied().unwrap_or(opts.mode);
    // Everything between the first forward and the end of the step runs in a closure so
    // that the records and offsets are dropped whatever happens.
    let run = (|| -> Result<(f64, Option<Vec<Tensor>>, LayerSqNorms)> {
        let loss_sum = forward_backward(model, x, targets, loss)?;
        let mut plain_sq = Vec::new();
        let mut unclipped = opts.track_unclipped_sum.then(Vec::new);
        let ones = Tensor::ones(b, DType::F32, &device)?;
        for (k, layer) in private_layers(model)?.into_iter().enumerate() {
            let name = layer.name();
            let rule = layer
                .per_sample()
                .ok_or(CoreError::UnsupportedLayer { layer: name })?;
            plain_sq.push(rule.sq_norms(mode_of(k))?);
            if let Some(u) = unclipped.as_mut() {
                u.extend(rule.weighted_sum(&ones)?);
            }
        }
        let scale = ascent_scales(&plain_sq, cfg.radius, &device)?;
        for layer in private_layers(model)? {
            let name = layer.name();
            let rule = layer
                .per_sample()
                .ok_or(CoreError::UnsupportedLayer { layer: name })?;
            rule.begin_factored_ascent(&scale)?;
        }
        forward_backward(model, x, targets, loss)?;
        let mut sq = Vec::new();
        for (k, layer) in private_layers(model)?.into_iter().enumerate() {
            let name = layer.name();
            let rule = layer
                .per_sample()
                .ok_or(CoreError::UnsupportedLayer { layer: name })?;
            rule.mix_factored_ascent(cfg.alpha)?;
            sq.push(rule.sq_norms(mode_of(k))?);
        }
        Ok((loss_sum, unclipped, sq_norms_to_host(sq)?))
    })();
    let (loss_sum, unclipped_sum, sq) = match run {
        Ok(v) => v,
        Err(e) => {
            model.clear();
            return Err(e);
        }
    };

    let totals = sq.total_norms();
    let bad: Vec<usize> = (0..b).filter(|&i| !totals[i].is_finite()).collect();
    if !bad.is_empty() {
        model.clear();
        if opts.non_finite == NonFinitePolicy::Error {
            return Err(CoreError::NonFiniteGradient { examples: bad });
        }
        // ZeroOut: recompute on the finite examples (as the engine does).
        let (xg, yg) = without_examples(x, targets, &bad, b, 1)?;
        let mut out = bam_clipped_gradient(model, &xg, &yg, loss, clip, opts, cfg)?;
        let norms: Vec<f32> = totals.iter().map(|&n| n as f32).collect();
        out.stats = ClipStats::new(norms, threshold, bad.len());
        return Ok(out);
    }

    let sums = (|| -> Result<Vec<Tensor>> {
        let (weights, shared) = clip_weights(clip, &sq, b, sensitivity, &device)?;
        let mut sum = Vec::new();
        for (l, layer) in private_layers(model)?.into_iter().enumerate() {
            let name = layer.name();
            let rule = layer
                .per_sample()
                .ok_or(CoreError::UnsupportedLayer { layer: name })?;
            let w = match &shared {
                Some(w) => w.clone(),
                None => Tensor::from_vec(weights[l].clone(), b, &device)?,
            };
            sum.extend(rule.weighted_sum(&w)?);
        }
        Ok(sum)
    })();
    model.clear();
    let sum = sums?;
    check_clipped_sum(&sum, sensitivity, b)?;
    let norms: Vec<f32> = totals.iter().map(|&n| n as f32).collect();
    Ok(ClippedBatch {
        sum,
        sensitivity,
        stats: ClipStats::new(norms, threshold, 0),
        loss_sum,
        examples: b,
        unclipped_sum,
    })
}
