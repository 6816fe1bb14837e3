//! The engine: one forward and one backward pass, per-example norms, clip weights, the
//! clipped sum, and noise.

use crate::clipping::{ClipFactors, ClipStrategy, LayerSqNorms};
use crate::error::{CoreError, Result};
use crate::layer::{GradMode, Layer};
use crate::loss::Loss;
use crate::model::Model;
use crate::noise::GaussianNoise;
use candle_core::{Device, Tensor};
use std::collections::HashMap;

/// What to do when an example's gradient is NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum NonFinitePolicy {
    /// Refuse the step with [`CoreError::NonFiniteGradient`] (default): nothing poisoned is
    /// released, and the caller learns which examples misbehaved.
    ///
    /// **Privacy meaning.** Whether a step aborts depends on the private data (one example's
    /// gradient), so the abort itself — and the error naming the examples — is a
    /// data-dependent release that the accountant does not cover: the ε of the run describes
    /// the steps that ran, not the fact that the run stopped where it did or the positions
    /// the error reports. Treat an aborted run as a debugging event on trusted data, not as a
    /// private release; for training on data that may hold such examples, use
    /// [`NonFinitePolicy::ZeroOut`], whose output distribution the accounting covers.
    #[default]
    Error,
    /// Give those examples weight 0 (JAX Privacy's `nan_safe`): the step proceeds with
    /// the other examples, noise is still added, and the statistics count them.
    ZeroOut,
}

/// Options of [`clipped_gradient`].
#[derive(Debug, Clone, Default)]
pub struct GradOptions {
    /// Mode for every private layer without an override.
    pub mode: GradMode,
    /// Per-layer overrides, keyed by the index of the private layer (parameterised
    /// layers only, in model order).
    pub layer_modes: HashMap<usize, GradMode>,
    /// NaN/Inf handling.
    pub non_finite: NonFinitePolicy,
    /// Augmentation multiplicity `K` (De et al. 2022): the batch holds `K` augmented
    /// copies of each example in consecutive rows (`dp_data::augment_multiplicity`'s
    /// layout); each example's gradient is the mean over its copies, clipped once.
    /// 0 or 1: off.
    pub augmentation_multiplicity: usize,
    /// Also form the **unclipped** sum `Σ_i g_i` ([`ClippedBatch::unclipped_sum`]), for the
    /// clipping bias `‖Σ_i c_i g_i − Σ_i g_i‖` (Knolle et al. 2023; analysis only: it is
    /// computed from private data without noise). Costs one more weighted sum per layer.
    pub track_unclipped_sum: bool,
    /// Train only the coordinates this mask keeps (pruning under DP, Watson et al. 2023):
    /// each example's norm is taken over the active coordinates, and the clipped (and
    /// unclipped) sums are zero on the masked ones, so the sensitivity holds on the
    /// `d_active`-dimensional space the noise is then added to (mask the noise too, as
    /// dp-optim's step does). Aligned with [`Model::param_tensors`].
    pub mask: Option<crate::GradientMask>,
}

impl GradOptions {
    /// Options with the given default mode.
    pub fn with_mode(mode: GradMode) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }
}

/// Summary statistics of a batch's per-example gradient norms.
///
/// These are computed from private data and are **not** differentially private: use them
/// for analysis, or privatise what you use (as adaptive clipping does with its noisy count).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClipStats {
    /// Each example's flat gradient norm `‖g_i‖` before clipping (NaN for non-finite ones).
    pub norms: Vec<f32>,
    /// The strategy's threshold (`C` for flat clipping).
    pub threshold: f64,
    /// Examples with `‖g_i‖ > threshold`.
    pub num_clipped: usize,
    /// `num_clipped / B` (0 for an empty batch).
    pub fraction_clipped: f64,
    /// Examples dropped for non-finite gradients under [`NonFinitePolicy::ZeroOut`].
    pub num_non_finite: usize,
}

impl ClipStats {
    pub(crate) fn new(norms: Vec<f32>, threshold: f64, num_non_finite: usize) -> Self {
        let num_clipped = norms.iter().filter(|n| (**n as f64) > threshold).count();
        let b = norms.len();
        Self {
            fraction_clipped: if b == 0 {
                0.0
            } else {
                num_clipped as f64 / b as f64
            },
            norms,
            threshold,
            num_clipped,
            num_non_finite,
        }
    }

    /// The `p`-quantile (`0 ≤ p ≤ 1`, linear interpolation; levels outside are clamped) of
    /// the finite norms, or `None` for an empty batch or a NaN level (which has no clamp:
    /// it would interpolate to a NaN "norm").
    pub fn quantile(&self, p: f64) -> Option<f64> {
        if p.is_nan() {
            return None;
        }
        let mut v: Vec<f64> = self
            .norms
            .iter()
            .filter(|n| n.is_finite())
            .map(|&n| n as f64)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let pos = p.clamp(0.0, 1.0) * (v.len() - 1) as f64;
        let lo = pos.floor() as usize;
        let hi = pos.ceil() as usize;
        Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
    }

    /// The median norm.
    pub fn median(&self) -> Option<f64> {
        self.quantile(0.5)
    }
}

/// The clipped gradient sum of one (physical or logical) batch and its sensitivity.
///
/// `sum` is `Σ_i c_i g_i`, aligned with [`Model::param_tensors`]. It is a **sum**, never a
/// mean: divide only by a public constant (the expected batch size) after noise.
#[derive(Debug, Clone)]
pub struct ClippedBatch {
    /// Clipped gradient sum, one tensor per parameter.
    pub sum: Vec<Tensor>,
    /// L2 sensitivity of `sum` under add/remove-one.
    pub sensitivity: f64,
    /// Per-example norm statistics (not private).
    pub stats: ClipStats,
    /// Sum of the per-example losses (not private).
    pub loss_sum: f64,
    /// Realised number of examples (private: do not divide by it).
    pub examples: usize,
    /// `Σ_i g_i` of the plain per-example gradients, when
    /// [`GradOptions::track_unclipped_sum`] asked for it. **Not private**: for the clipping
    /// bias and the clipped/unclipped cosine only; never release it or train on it.
    pub unclipped_sum: Option<Vec<Tensor>>,
}

impl ClippedBatch {
    /// An empty batch (zero sum): what an empty Poisson draw contributes.
    pub fn empty<M: Model + ?Sized>(model: &M, sensitivity: f64, threshold: f64) -> Result<Self> {
        let sum = model
            .param_tensors()
            .iter()
            .map(|t| t.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            sum,
            sensitivity,
            stats: ClipStats::new(Vec::new(), threshold, 0),
            loss_sum: 0.0,
            examples: 0,
            unclipped_sum: None,
        })
    }

    /// Adds another physical batch of the same logical batch (same strategy).
    pub fn accumulate(&mut self, other: ClippedBatch) -> Result<()> {
        if self.sum.len() != other.sum.len() {
            return Err(CoreError::InvalidArgument(
                "accumulating clipped sums of different models".into(),
            ));
        }
        if (self.sensitivity - other.sensitivity).abs() > 1e-12 * self.sensitivity.abs().max(1.0)
            && !(self.sensitivity.is_infinite() && other.sensitivity.is_infinite())
        {
            return Err(CoreError::InvalidArgument(format!(
                "accumulating sums with different sensitivities ({} vs {})",
                self.sensitivity, other.sensitivity
            )));
        }
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a = (&*a + b)?;
        }
        let mut norms = std::mem::take(&mut self.stats.norms);
        norms.extend_from_slice(&other.stats.norms);
        self.stats = ClipStats::new(
            norms,
            self.stats.threshold,
            self.stats.num_non_finite + other.stats.num_non_finite,
        );
        self.loss_sum += other.loss_sum;
        // An empty physical batch contributes a zero unclipped sum.
        self.unclipped_sum = match (self.unclipped_sum.take(), other.unclipped_sum) {
            (Some(a), Some(b)) => Some(
                a.iter()
                    .zip(&b)
                    .map(|(x, y)| x + y)
                    .collect::<candle_core::Result<Vec<_>>>()?,
            ),
            (Some(a), None) if other.examples == 0 => Some(a),
            (None, Some(b)) if self.examples == 0 => Some(b),
            _ => None,
        };
        self.examples += other.examples;
        Ok(())
    }

    /// The un-noised sum, for non-private or clip-only baselines (releases raw data).
    pub fn into_non_private(self) -> Vec<Tensor> {
        self.sum
    }
}

/// A privatised gradient sum: `Σ_i c_i g_i + N(0, σ²S²)`.
#[derive(Debug, Clone)]
pub struct NoisyGradient {
    /// The noisy sum, one tensor per parameter.
    pub sum: Vec<Tensor>,
    /// Standard deviation of the added noise, `σ·S`.
    pub noise_std: f64,
    /// The noise multiplier `σ`.
    pub noise_multiplier: f64,
    /// The sum's sensitivity `S`.
    pub sensitivity: f64,
    /// Statistics of the batch (not private).
    pub stats: ClipStats,
    /// Sum of per-example losses (not private).
    pub loss_sum: f64,
}

impl NoisyGradient {
    /// The noisy sum divided by a **public** constant, normally the expected batch size
    /// `q·N` (never the realised batch size, which is private: Opacus #571). Errors if the
    /// divisor is not finite and > 0, or if dividing by it (below 1) overflows.
    pub fn normalized(&self, expected_batch_size: f64) -> Result<Vec<Tensor>> {
        if !(expected_batch_size.is_finite() && expected_batch_size > 0.0) {
            return Err(CoreError::InvalidArgument(format!(
                "expected batch size {expected_batch_size} must be finite and > 0"
            )));
        }
        let out = self
            .sum
            .iter()
            .map(|t| t / expected_batch_size)
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Dividing by less than 1 can overflow f32 (and 1/1e-300 is ∞ in f32, so a zero
        // coordinate becomes 0·∞ = NaN): refuse a result that is no longer finite. A divisor
        // ≥ 1 only shrinks the (finite) noisy sum, so the usual case pays nothing.
        if expected_batch_size < 1.0 {
            for t in &out {
                let s = t
                    .abs()?
                    .to_dtype(candle_core::DType::F64)?
                    .sum_all()?
                    .to_scalar::<f64>()?;
                if !s.is_finite() {
                    return Err(CoreError::InvalidArgument(format!(
                        "dividing by expected batch size {expected_batch_size} overflows"
                    )));
                }
            }
        }
        Ok(out)
    }
}

/// Adds `N(0, (σ·S)²)` once to a clipped sum of sensitivity `S` (Abadi et al. 2016, Alg. 1
/// line "Add noise"). `σ` must be finite and > 0.
///
/// ```
/// use dp_core::{privatize, ClippedBatch, GaussianNoise, Sequential, layers::Linear, Init};
/// use candle_core::Device;
/// let dev = Device::Cpu;
/// let model = Sequential::new(&dev).push(Linear::new(3, 2, true, &mut Init::seeded(0), &dev).unwrap());
/// let empty = ClippedBatch::empty(&model, 1.0, 1.0).unwrap();
/// let noisy = privatize(empty, 1.1, &mut GaussianNoise::seeded(0)).unwrap();
/// assert!((noisy.noise_std - 1.1).abs() < 1e-12);
/// ```
pub fn privatize(
    batch: ClippedBatch,
    noise_multiplier: f64,
    noise: &mut GaussianNoise,
) -> Result<NoisyGradient> {
    if !(noise_multiplier.is_finite() && noise_multiplier > 0.0) {
        return Err(CoreError::InvalidNoise(noise_multiplier));
    }
    if !(batch.sensitivity.is_finite() && batch.sensitivity > 0.0) {
        return Err(CoreError::InvalidArgument(format!(
            "cannot privatise a sum of sensitivity {} (unclipped?)",
            batch.sensitivity
        )));
    }
    let std = noise_multiplier * batch.sensitivity;
    let sum = noise.add_noise(&batch.sum, std)?;
    Ok(NoisyGradient {
        sum,
        noise_std: std,
        noise_multiplier,
        sensitivity: batch.sensitivity,
        stats: batch.stats,
        loss_sum: batch.loss_sum,
    })
}

pub(crate) fn private_layers<M: Model + ?Sized>(model: &mut M) -> Result<Vec<&mut dyn Layer>> {
    let mut out = Vec::new();
    for layer in model.layers_mut() {
        if layer.params().is_empty() {
            continue;
        }
        if layer.per_sample().is_none() {
            return Err(CoreError::UnsupportedLayer {
                layer: layer.name(),
            });
        }
        out.push(layer);
    }
    Ok(out)
}

pub(crate) fn forward_backward<M: Model + ?Sized>(
    model: &mut M,
    x: &Tensor,
    targets: &Tensor,
    loss: &dyn Loss,
) -> Result<f64> {
    let out = model.forward(x, true)?;
    let (per_example, grad) = loss.loss_and_grad(&out, targets)?;
    model.backward(&grad)?;
    let l = per_example
        .to_dtype(candle_core::DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok(l)
}

/// The clipped gradient sum of a batch, from **one** forward and **one** backward pass.
///
/// Steps: forward (layers record activations) → per-example loss gradient → backward
/// (layers record output gradients) → each private layer's per-example squared norms
/// (ghost or materialised, per [`GradOptions`]) → the strategy's weights → the engine
/// checks every example's weighted norm against the stated sensitivity → each layer
/// forms `Σ_i c_i g_i` (book-keeping, Bu et al. 2022). An empty batch gives a zero sum.
///
/// ```
/// use dp_core::{clipped_gradient, CrossEntropy, GradOptions, Init, Sequential, Model};
/// use dp_core::clipping::FlatClip;
/// use dp_core::layers::Linear;
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let mut m = Sequential::new(&dev).push(Linear::new(4, 3, true, &mut Init::seeded(1), &dev).unwrap());
/// let x = Tensor::randn(0f32, 10., (8, 4), &dev).unwrap();
/// let y = Tensor::new(&[0u32, 1, 2, 0, 1, 2, 0, 1], &dev).unwrap();
/// let mut clip = FlatClip::new(0.5).unwrap();
/// let out = clipped_gradient(&mut m, &x, &y, &CrossEntropy, &mut clip, &GradOptions::default()).unwrap();
/// assert_eq!(out.sensitivity, 0.5);
/// assert_eq!(out.examples, 8);
/// assert_eq!(out.sum.len(), 2);
/// ```
pub fn clipped_gradient<M: Model + ?Sized>(
    model: &mut M,
    x: &Tensor,
    targets: &Tensor,
    loss: &dyn Loss,
    clip: &mut dyn ClipStrategy,
    opts: &GradOptions,
) -> Result<ClippedBatch> {
    let sensitivity = clip.sensitivity();
    let threshold = clip.threshold();
    let b = x.dim(0)?;
    if b == 0 {
        return empty_batch(model, sensitivity, threshold, opts);
    }
    let k = opts.augmentation_multiplicity.max(1);
    if b % k != 0 {
        return Err(CoreError::InvalidArgument(format!(
            "batch of {b} rows is not a whole number of groups of {k} augmented copies"
        )));
    }
    if let Some(mask) = &opts.mask {
        mask.check(&model.param_tensors())?;
    }
    let loss_sum = forward_backward(model, x, targets, loss)? / k as f64;
    let device: Device = x.device().clone();
    let mut layers = private_layers(model)?;
    // From here on, "examples" are the original ones (groups of K rows).
    let b = b / k;

    // 1. Per-layer per-example squared norms (one small [L, B] transfer to the host).
    let sq = layer_sq_norm_tensors(&mut layers, opts)?;
    let sq = sq_norms_to_host(sq)?;

    // 2. Non-finite examples.
    let totals = sq.total_norms();
    let bad: Vec<usize> = (0..b).filter(|&i| !totals[i].is_finite()).collect();
    if !bad.is_empty() && opts.non_finite == NonFinitePolicy::Error {
        model.clear();
        return Err(CoreError::NonFiniteGradient { examples: bad });
    }
    if !bad.is_empty() {
        // ZeroOut. A weight of 0 would not help (0·NaN = NaN inside the weighted sums), so
        // the finite examples are recomputed on their own; the rare bad step pays twice.
        drop(layers);
        model.clear();
        let (xg, yg) = without_examples(x, targets, &bad, b, k)?;
        let mut out = clipped_gradient(model, &xg, &yg, loss, clip, opts)?;
        let norms: Vec<f32> = totals.iter().map(|&n| n as f32).collect();
        out.stats = ClipStats::new(norms, threshold, bad.len());
        return Ok(out);
    }

    // 3. Weights, then enforce the stated sensitivity example by example.
    let (weights, shared) = clip_weights(clip, &sq, b, sensitivity, &device)?;

    // 4. Weighted sums, layer by layer.
    let mut sum = Vec::new();
    for (l, layer) in layers.iter_mut().enumerate() {
        let rule = layer
            .per_sample()
            .ok_or_else(|| CoreError::UnsupportedLayer {
                layer: "unknown".into(),
            })?;
        let w = match &shared {
            Some(w) => w.clone(),
            None => Tensor::from_vec(weights[l].clone(), b, &device)?,
        };
        sum.extend(rule.weighted_sum(&w)?);
    }
    let unclipped_sum = if opts.track_unclipped_sum {
        let ones = Tensor::ones(b, candle_core::DType::F32, &device)?;
        let mut plain = Vec::with_capacity(sum.len());
        for layer in layers.iter_mut() {
            if let Some(rule) = layer.per_sample() {
                plain.extend(rule.weighted_sum(&ones)?);
            }
        }
        Some(plain)
    } else {
        None
    };
    let (sum, unclipped_sum) = match &opts.mask {
        Some(mask) => (
            mask.apply(&sum)?,
            unclipped_sum.map(|u| mask.apply(&u)).transpose()?,
        ),
        None => (sum, unclipped_sum),
    };
    drop(layers);
    model.clear();
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

/// The engine's step 1, after the forward and backward pass: group augmented copies
/// ([`GradOptions::augmentation_multiplicity`]), then each private layer's per-example
/// squared norms (`[B]` each) in the layer's mode, over the active coordinates when
/// [`GradOptions::mask`] is set. Shared by [`clipped_gradient`] and [`layer_sq_norms`], so
/// what a caller inspects is what the clip strategy sees.
pub(crate) fn layer_sq_norm_tensors(
    layers: &mut [&mut dyn Layer],
    opts: &GradOptions,
) -> Result<Vec<Tensor>> {
    let k = opts.augmentation_multiplicity.max(1);
    // Each private layer's parameters, as a range of the model's parameter list.
    let mut ranges = Vec::with_capacity(layers.len());
    let mut start = 0;
    for layer in layers.iter() {
        let n = layer.params().len();
        ranges.push(start..start + n);
        start += n;
    }
    let layer_masks = |l: usize| -> Option<&[Option<Tensor>]> {
        let m = opts.mask.as_ref()?.slice(ranges[l].clone());
        m.iter().any(|t| t.is_some()).then_some(m)
    };
    if k > 1 {
        for layer in layers.iter_mut() {
            if let Some(rule) = layer.per_sample() {
                rule.group_examples(k)?;
            }
        }
    }
    let mut sq = Vec::with_capacity(layers.len());
    for (l, layer) in layers.iter_mut().enumerate() {
        let mode = opts.layer_modes.get(&l).copied().unwrap_or(opts.mode);
        let rule = layer
            .per_sample()
            .ok_or_else(|| CoreError::UnsupportedLayer {
                layer: "unknown".into(),
            })?;
        sq.push(match layer_masks(l) {
            Some(masks) => rule.masked_sq_norms(masks)?,
            None => rule.sq_norms(mode)?,
        });
    }
    Ok(sq)
}

/// Per-layer squared norms (one `[B]` tensor per private layer, any float dtype) as one
/// small `[L, B]` transfer to the host.
pub(crate) fn sq_norms_to_host(sq: Vec<Tensor>) -> Result<LayerSqNorms> {
    let per_layer = if sq.is_empty() {
        Vec::new()
    } else {
        let sq = sq
            .into_iter()
            .map(|t| t.to_dtype(candle_core::DType::F32))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::stack(&sq, 0)?.to_vec2::<f32>()?
    };
    Ok(LayerSqNorms { per_layer })
}

/// An empty batch's zero sum, with its zero unclipped sum when `opts` tracks it.
pub(crate) fn empty_batch<M: Model + ?Sized>(
    model: &M,
    sensitivity: f64,
    threshold: f64,
    opts: &GradOptions,
) -> Result<ClippedBatch> {
    let mut empty = ClippedBatch::empty(model, sensitivity, threshold)?;
    if opts.track_unclipped_sum {
        empty.unclipped_sum = Some(empty.sum.clone());
    }
    Ok(empty)
}

/// The rows of `x` and `targets` without the examples in `bad` (example `i` is rows
/// `i·k .. (i+1)·k`): what [`NonFinitePolicy::ZeroOut`] recomputes on.
pub(crate) fn without_examples(
    x: &Tensor,
    targets: &Tensor,
    bad: &[usize],
    b: usize,
    k: usize,
) -> Result<(Tensor, Tensor)> {
    let good: Vec<u32> = (0..b)
        .filter(|i| !bad.contains(i))
        .flat_map(|i| (i * k..(i + 1) * k).map(|r| r as u32))
        .collect();
    let n = good.len();
    let idx = Tensor::from_vec(good, n, x.device())?;
    Ok((x.index_select(&idx, 0)?, targets.index_select(&idx, 0)?))
}

/// Refuses a clipped sum that overflowed. Every weighted example has norm ≤ `S`, so every
/// coordinate (and partial sum) of the sum of `b` of them is at most `b·S`: below f32's range
/// nothing can overflow and the check costs nothing. Only a bound that f32 cannot hold (an
/// AUTO-S scale of 1e300, say) pays one reduction per parameter, and gets a typed error
/// instead of an ∞ that would be noised and released.
pub(crate) fn check_clipped_sum(sum: &[Tensor], sensitivity: f64, b: usize) -> Result<()> {
    if !(sensitivity.is_finite() && sensitivity * b as f64 > f32::MAX as f64 / 2.0) {
        return Ok(());
    }
    for t in sum {
        let s = t
            .abs()?
            .to_dtype(candle_core::DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
        if !s.is_finite() {
            return Err(CoreError::InvalidArgument(format!(
                "the clipped sum overflows: sensitivity {sensitivity} is beyond the range of the \
                 gradients' dtype"
            )));
        }
    }
    Ok(())
}

/// The clip strategy's per-layer weights for the examples of `sq`, with the stated
/// sensitivity enforced example by example (a strategy's rounding or bug cannot push an
/// example past it), and — for flat factors — the one weight tensor every layer shares.
pub(crate) fn clip_weights(
    clip: &mut dyn ClipStrategy,
    sq: &LayerSqNorms,
    b: usize,
    sensitivity: f64,
    device: &Device,
) -> Result<(Vec<Vec<f32>>, Option<Tensor>)> {
    let factors = clip.factors(sq)?;
    let n_layers = sq.per_layer.len();
    let mut weights: Vec<Vec<f32>> = (0..n_layers)
        .map(|l| (0..b).map(|i| factors.get(l, i)).collect())
        .collect();
    if sensitivity.is_finite() {
        for i in 0..b {
            let contrib: f64 = (0..n_layers)
                .map(|l| (weights[l][i] as f64).powi(2) * sq.per_layer[l][i] as f64)
                .sum::<f64>()
                .sqrt();
            if contrib > sensitivity {
                // Rounding (or a strategy bug) pushed the example past the bound.
                let s = (sensitivity / contrib * (1.0 - 1e-6)) as f32;
                for w in weights.iter_mut() {
                    w[i] *= s;
                }
            }
        }
    }
    // Flat factors stay equal across layers (the sensitivity check above scales every
    // layer of an example alike), so one weight tensor serves all layers.
    let flat = matches!(factors, ClipFactors::Flat(_)) && n_layers > 0;
    let shared = if flat {
        Some(Tensor::from_vec(weights[0].clone(), b, device)?)
    } else {
        None
    };
    Ok((weights, shared))
}

/// Every example's full gradient, flattened and concatenated over parameters in model
/// order: a `[B, d]` tensor. For analysis (dp-metrics) and tests; memory is `B·d`. The
/// same gradients split by parameter, with names: [`named_per_example_gradients`].
///
/// ```
/// use dp_core::{per_example_gradients, CrossEntropy, Init, Sequential};
/// use dp_core::layers::Linear;
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let mut m = Sequential::new(&dev).push(Linear::new(4, 3, true, &mut Init::seeded(1), &dev).unwrap());
/// let x = Tensor::ones((2, 4), candle_core::DType::F32, &dev).unwrap();
/// let y = Tensor::new(&[0u32, 1], &dev).unwrap();
/// assert_eq!(per_example_gradients(&mut m, &x, &y, &CrossEntropy).unwrap().dims(), &[2, 15]);
/// ```
pub fn per_example_gradients<M: Model + ?Sized>(
    model: &mut M,
    x: &Tensor,
    targets: &Tensor,
    loss: &dyn Loss,
) -> Result<Tensor> {
    let b = x.dim(0)?;
    let parts = named_per_example_gradients(model, x, targets, loss)?
        .into_iter()
        .map(|(_, g)| g.reshape((b, ())))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 1)?)
}

/// Every example's gradient split by parameter: one `(name, [B, ..param shape])` pair per
/// parameter, in [`Model::param_tensors`] order, named as [`Model::named_params`] names
/// them (`"{layer index}.{param}"`, e.g. `"0.weight"`). Entry `(name, g)` holds in row `i`
/// the gradient of example `i`'s own loss `ℓ_i` with respect to that parameter, from one
/// forward and one backward pass of the summed loss (each layer's materialised per-sample
/// rule, the same one [`GradMode::Materialize`] clips). Not private (raw per-example
/// gradients); memory is `B·d`.
///
/// Errors as [`clipped_gradient`]: a layer with parameters but no per-sample rule, shape
/// errors of the passes.
///
/// ```
/// use dp_core::{named_per_example_gradients, CrossEntropy, Init, Sequential};
/// use dp_core::layers::{Linear, Relu};
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let mut init = Init::seeded(1);
/// let mut m = Sequential::new(&dev)
///     .push(Linear::new(4, 3, true, &mut init, &dev).unwrap())
///     .push(Relu::default())
///     .push(Linear::new(3, 2, false, &mut init, &dev).unwrap());
/// let x = Tensor::randn(0f32, 1., (5, 4), &dev).unwrap();
/// let y = Tensor::new(&[0u32, 1, 1, 0, 1], &dev).unwrap();
/// let grads = named_per_example_gradients(&mut m, &x, &y, &CrossEntropy).unwrap();
/// let names: Vec<&str> = grads.iter().map(|(n, _)| n.as_str()).collect();
/// assert_eq!(names, ["0.weight", "0.bias", "1.weight"]); // the ReLU has no parameters
/// assert_eq!(grads[0].1.dims(), &[5, 3, 4]); // [B, out, in]
/// assert_eq!(grads[2].1.dims(), &[5, 2, 3]);
/// ```
pub fn named_per_example_gradients<M: Model + ?Sized>(
    model: &mut M,
    x: &Tensor,
    targets: &Tensor,
    loss: &dyn Loss,
) -> Result<Vec<(String, Tensor)>> {
    let names: Vec<String> = model.named_params().into_iter().map(|(n, _)| n).collect();
    forward_backward(model, x, targets, loss)?;
    let mut grads = Vec::with_capacity(names.len());
    let run = (|| -> Result<()> {
        for layer in private_layers(model)? {
            if let Some(rule) = layer.per_sample() {
                grads.extend(rule.per_sample_grads()?);
            }
        }
        Ok(())
    })();
    model.clear();
    run?;
    if grads.len() != names.len() {
        return Err(CoreError::InvalidArgument(format!(
            "the private layers gave {} per-example gradients for {} parameters",
            grads.len(),
            names.len()
        )));
    }
    Ok(names.into_iter().zip(grads).collect())
}

/// Each example's squared gradient norm in each private layer, with the layers' names:
/// what [`layer_sq_norms`] returns.
#[derive(Debug, Clone)]
pub struct NamedLayerSqNorms {
    /// One name per private layer (a layer with parameters), in model order:
    /// `"{k}.{Layer::name}"`, `k` counting the layers that have parameters — the prefix of
    /// its parameters' names in [`Model::named_params`] (`"1.Conv2d(1→16, 3×3)"` owns
    /// `"1.weight"` and `"1.bias"`).
    pub names: Vec<String>,
    /// `[B, L]` (f32): row `i`, column `l` is `‖∂ℓ_i/∂θ_l‖²` over layer `l`'s parameters.
    pub sq_norms: Tensor,
}

impl NamedLayerSqNorms {
    /// The same norms as a [`ClipStrategy`] receives them (`per_layer[l][i]`), e.g. to call
    /// a strategy's [`ClipStrategy::factors`] by hand.
    pub fn to_layer_sq_norms(&self) -> Result<LayerSqNorms> {
        let (b, l) = self.sq_norms.dims2()?;
        let per_layer = if b == 0 || l == 0 {
            vec![Vec::new(); l]
        } else {
            self.sq_norms.t()?.contiguous()?.to_vec2::<f32>()?
        };
        Ok(LayerSqNorms { per_layer })
    }
}

/// Each example's squared gradient norm per private layer, `[B, L]` with the layers'
/// names, from one forward and one backward pass: exactly the norms
/// [`clipped_gradient`] hands its [`ClipStrategy`] (same code path: ghost or materialised
/// per [`GradOptions::mode`] and [`GradOptions::layer_modes`], over the active coordinates
/// under [`GradOptions::mask`], one row per original example under
/// [`GradOptions::augmentation_multiplicity`]). Summing a row gives `‖g_i‖²`. Not private:
/// for analysis, or to design a clip rule. The model's records are cleared afterwards.
///
/// Errors: a batch that is not a whole number of augmentation groups, a mask that does not
/// fit the model, a layer with parameters but no per-sample rule, errors of the passes.
///
/// ```
/// use dp_core::{layer_sq_norms, models, CrossEntropy, GradOptions};
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let mut m = models::mlp(&[4, 6, 3], &dev, 0).unwrap(); // Reshape, Linear, ReLU, Linear
/// let x = Tensor::randn(0f32, 1., (5, 4), &dev).unwrap();
/// let y = Tensor::new(&[0u32, 1, 2, 0, 1], &dev).unwrap();
/// let n = layer_sq_norms(&mut m, &x, &y, &CrossEntropy, &GradOptions::default()).unwrap();
/// assert_eq!(n.names, ["0.Linear(4→6)", "1.Linear(6→3)"]); // numbered as in named_params
/// assert_eq!(n.sq_norms.dims(), &[5, 2]);
/// let host = n.to_layer_sq_norms().unwrap(); // what a ClipStrategy sees: [L][B]
/// assert_eq!((host.per_layer.len(), host.batch_size()), (2, 5));
/// ```
pub fn layer_sq_norms<M: Model + ?Sized>(
    model: &mut M,
    x: &Tensor,
    targets: &Tensor,
    loss: &dyn Loss,
    opts: &GradOptions,
) -> Result<NamedLayerSqNorms> {
    let names: Vec<String> = model
        .layers()
        .into_iter()
        .filter(|l| !l.params().is_empty())
        .enumerate()
        .map(|(k, l)| format!("{k}.{}", l.name()))
        .collect();
    let rows = x.dim(0)?;
    let k = opts.augmentation_multiplicity.max(1);
    if rows % k != 0 {
        return Err(CoreError::InvalidArgument(format!(
            "batch of {rows} rows is not a whole number of groups of {k} augmented copies"
        )));
    }
    if let Some(mask) = &opts.mask {
        mask.check(&model.param_tensors())?;
    }
    let b = rows / k;
    if rows == 0 || names.is_empty() {
        // Refuse a layer without a per-sample rule even when there is nothing to compute.
        private_layers(model)?;
        let sq_norms = Tensor::zeros((b, names.len()), candle_core::DType::F32, x.device())?;
        return Ok(NamedLayerSqNorms { names, sq_norms });
    }
    forward_backward(model, x, targets, loss)?;
    let sq = (|| -> Result<Tensor> {
        let mut layers = private_layers(model)?;
        let sq = layer_sq_norm_tensors(&mut layers, opts)?
            .into_iter()
            .map(|t| t.to_dtype(candle_core::DType::F32))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&sq, 1)?)
    })();
    model.clear();
    Ok(NamedLayerSqNorms {
        names,
        sq_norms: sq?,
    })
}

/// The ordinary (non-private) gradient of the **summed** loss and the loss sum: one
/// forward and one backward pass with all weights 1.
///
/// ```
/// use dp_core::{batch_gradient, CrossEntropy, Init, Sequential};
/// use dp_core::layers::Linear;
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let mut m = Sequential::new(&dev).push(Linear::new(4, 3, true, &mut Init::seeded(1), &dev).unwrap());
/// let x = Tensor::ones((2, 4), candle_core::DType::F32, &dev).unwrap();
/// let y = Tensor::new(&[0u32, 1], &dev).unwrap();
/// let (g, _loss) = batch_gradient(&mut m, &x, &y, &CrossEntropy).unwrap();
/// assert_eq!(g[0].dims(), &[3, 4]);
/// ```
pub fn batch_gradient<M: Model + ?Sized>(
    model: &mut M,
    x: &Tensor,
    targets: &Tensor,
    loss: &dyn Loss,
) -> Result<(Vec<Tensor>, f64)> {
    let b = x.dim(0)?;
    let loss_sum = forward_backward(model, x, targets, loss)?;
    let ones = Tensor::ones(b, candle_core::DType::F32, x.device())?;
    let mut sum = Vec::new();
    for layer in private_layers(model)? {
        if let Some(rule) = layer.per_sample() {
            sum.extend(rule.weighted_sum(&ones)?);
        }
    }
    model.clear();
    Ok((sum, loss_sum))
}
