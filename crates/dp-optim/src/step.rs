//! The one training step: the trainer, `bench_step` and `loss_landscape` all call
//! [`take_step`], so there is a single place where clipping, noise, the divisor and the
//! update meet.

use crate::error::{Result, TrainError};
use crate::optim::BaseOptimizer;
use crate::plan::{Regime, StepPlan};
use candle_core::Tensor;
use dp_core::clipping::NoClip;
use dp_core::{
    batch_gradient, clipped_gradient, privatize, ClipStats, ClipStrategy, ClippedBatch,
    GaussianNoise, GradOptions, Loss, Model,
};

/// How a step computes its gradient, apart from the plan: the regime, the loss and the
/// per-sample gradient options.
#[derive(Clone, Copy)]
pub struct StepEnv<'a> {
    /// DP, clip-only, noise-only or non-private.
    pub regime: Regime,
    /// The per-example loss.
    pub loss: &'a dyn Loss,
    /// Per-sample gradient mode, NaN policy, augmentation multiplicity.
    pub grad_options: &'a GradOptions,
}

/// What one step released and did.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// The gradient the optimiser received: the (noisy) sum divided by the plan's divisor.
    pub gradient: Vec<Tensor>,
    /// Std of the noise in each coordinate of `gradient` (0 when the regime adds none).
    pub noise_std: f64,
    /// Std of the noise added to the sum, before the divisor (`σ·S`, or 0).
    pub sum_noise_std: f64,
    /// L2 sensitivity of the gradient sum (∞ when the regime does not clip).
    pub sensitivity: f64,
    /// The noisy statistics of the plan, in its order.
    pub statistics: Vec<f64>,
    /// Per-example norm statistics (not private; empty when the regime needed no norms).
    pub stats: ClipStats,
    /// Sum of the per-example losses (not private).
    pub loss_sum: f64,
    /// Realised number of examples (private: analysis only).
    pub examples: usize,
    /// The clipping bias of the step, when [`GradOptions::track_unclipped_sum`] asked for it
    /// (not private: analysis only).
    pub clipping_bias: Option<ClippingBias>,
}

/// How far clipping moved a step's gradient sum (Knolle et al. 2023, the quantities BAM
/// reduces): `l2 = ‖Σ_i c_i h_i − Σ_i g_i‖` and the cosine between the two sums, where `g_i`
/// is the plain per-example gradient and `h_i` what the method clips (`g_i` itself for
/// DP-SGD). Computed before noise, from private data: **not private**, analysis only.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let a = [Tensor::new(&[3f32, 0.0], &Device::Cpu).unwrap()];
/// let b = [Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap()];
/// let bias = dp_optim::ClippingBias::between(&a, &b).unwrap();
/// assert!((bias.l2 - 4.0).abs() < 1e-12 && (bias.cosine - 0.6).abs() < 1e-12);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClippingBias {
    /// `‖clipped sum − unclipped sum‖`.
    pub l2: f64,
    /// `cos(clipped sum, unclipped sum)` (NaN when either is zero).
    pub cosine: f64,
}

impl ClippingBias {
    /// The bias of `clipped` against `unclipped` (same parameter order and shapes).
    pub fn between(clipped: &[Tensor], unclipped: &[Tensor]) -> Result<Self> {
        if clipped.len() != unclipped.len() {
            return Err(TrainError::InvalidConfig(
                "clipped and unclipped sums of different models".into(),
            ));
        }
        let (mut diff, mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for (a, b) in clipped.iter().zip(unclipped) {
            let a: Vec<f64> = a
                .flatten_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_vec1()?;
            let b: Vec<f64> = b
                .flatten_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_vec1()?;
            if a.len() != b.len() {
                return Err(TrainError::InvalidConfig(
                    "clipped and unclipped sums of different shapes".into(),
                ));
            }
            for (x, y) in a.iter().zip(&b) {
                diff += (x - y) * (x - y);
                dot += x * y;
                na += x * x;
                nb += y * y;
            }
        }
        let cosine = if na > 0.0 && nb > 0.0 {
            dot / (na.sqrt() * nb.sqrt())
        } else {
            f64::NAN
        };
        Ok(Self {
            l2: diff.sqrt(),
            cosine,
        })
    }
}

/// One step: gradients over `batches` (the physical batches of one logical batch, each
/// `(inputs, targets)`), clipped and noised as `plan` and `env.regime` say, divided by the
/// plan's public divisor, and applied by `optimizer` to `model`.
///
/// The Gaussian noise for the gradient is drawn on a background thread while the gradients
/// are computed (same stream as drawing it in place); statistics are released after it,
/// from the same stream. Accounting is the caller's: a [`crate::PrivateTrainer`] derives the
/// event from [`StepPlan::query_multipliers`] before calling this.
///
/// ```
/// use dp_optim::{take_step, Regime, Sgd, StepEnv, StepPlan};
/// use dp_core::{clipping::FlatClip, models, CrossEntropy, GaussianNoise, GradOptions};
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let mut model = models::mlp(&[20, 8, 4], &dev, 0).unwrap();
/// let x = Tensor::randn(0f32, 1., (16, 20), &dev).unwrap();
/// let y = Tensor::from_vec((0..16u32).map(|i| i % 4).collect::<Vec<_>>(), 16, &dev).unwrap();
/// let mut plan = StepPlan::new(Box::new(FlatClip::new(1.0).unwrap()), 1.1, 16.0).unwrap();
/// let env = StepEnv { regime: Regime::Private, loss: &CrossEntropy, grad_options: &GradOptions::default() };
/// let r = take_step(&mut model, &mut std::iter::once(Ok((x, y))), &mut plan, &env,
///                   &mut GaussianNoise::seeded(0), &mut Sgd::new(0.1)).unwrap();
/// assert_eq!(r.examples, 16);
/// assert!((r.noise_std - 1.1 / 16.0).abs() < 1e-12);
/// ```
pub fn take_step<M: Model>(
    model: &mut M,
    batches: &mut dyn Iterator<Item = Result<(Tensor, Tensor)>>,
    plan: &mut StepPlan,
    env: &StepEnv,
    noise: &mut GaussianNoise,
    optimizer: &mut dyn BaseOptimizer,
) -> Result<StepResult> {
    plan.validate()?;
    // Checked before anything is computed: a NaN learning rate set by a schedule would
    // otherwise surface a step later as a "non-finite gradient". A rate of 0 is allowed
    // here (a step that only measures the gradient); the trainer refuses it when built.
    let lr = optimizer.learning_rate();
    if !(lr.is_finite() && lr >= 0.0) {
        return Err(TrainError::InvalidLearningRate(lr));
    }
    let regime = env.regime;
    if let Some(why) = &plan.not_dp {
        if regime != Regime::DataDependentNoise {
            return Err(TrainError::InvalidConfig(format!(
                "this plan is not differentially private ({why}); it runs only in the \
                 data-dependent-noise regime, whose records say not DP and report ε = ∞"
            )));
        }
    }
    if regime.adds_noise() {
        // The noise does not depend on the data: draw it while the gradients are computed.
        let sizes: Vec<usize> = model
            .param_tensors()
            .iter()
            .map(|t| t.elem_count())
            .collect();
        noise.prefetch(&sizes);
    }
    let acc = gradient_sum(model, batches, plan, env)?;
    let (examples, sensitivity) = (acc.examples, acc.sensitivity);
    let clipping_bias = match &acc.unclipped_sum {
        Some(u) => Some(ClippingBias::between(&acc.sum, u)?),
        None => None,
    };
    let (sum, sum_noise_std, stats, loss_sum) = match regime {
        Regime::Private => {
            let noisy = privatize(acc, plan.noise_multiplier, noise)?;
            (noisy.sum, noisy.noise_std, noisy.stats, noisy.loss_sum)
        }
        Regime::NoiseOnly => {
            let std = plan.gradient_noise_std();
            (
                noise.add_noise(&acc.sum, std)?,
                std,
                acc.stats,
                acc.loss_sum,
            )
        }
        Regime::DataDependentNoise => {
            // `acc.sensitivity` is the bound the objective computed from this batch (it may
            // be 0: then so is the noise, which is why this is not DP).
            let std = plan.noise_multiplier * acc.sensitivity;
            (
                noise.add_noise(&acc.sum, std)?,
                std,
                acc.stats,
                acc.loss_sum,
            )
        }
        Regime::ClipOnly | Regime::NonPrivate => (acc.sum, 0.0, acc.stats, acc.loss_sum),
    };
    // Pruned coordinates get no noise either: the noise has d_active dimensions.
    let mask = env.grad_options.mask.as_ref();
    let sum = match mask {
        Some(m) => m.apply(&sum)?,
        None => sum,
    };
    let statistics: Vec<f64> = plan
        .statistics
        .iter()
        .map(|q| q.release(&stats.norms, noise))
        .collect::<Result<_>>()?;
    let d = plan.divisor;
    let gradient = sum
        .iter()
        .map(|t| t / d)
        .collect::<candle_core::Result<Vec<_>>>()?;
    let noise_std = sum_noise_std / d;
    optimizer.set_gradient_noise_std(noise_std);
    let new = optimizer.step(&model.param_tensors(), &gradient)?;
    // Re-masked after the update, so pruned weights stay exactly zero whatever the optimiser
    // does (weight decay, momentum from before the mask).
    let new = match mask {
        Some(m) => m.apply(&new)?,
        None => new,
    };
    model.set_param_tensors(&new)?;
    Ok(StepResult {
        gradient,
        noise_std,
        sum_noise_std,
        sensitivity,
        statistics,
        stats,
        loss_sum,
        examples,
        clipping_bias,
    })
}

/// The (clipped or plain) gradient sum over the physical batches.
fn gradient_sum<M: Model>(
    model: &mut M,
    batches: &mut dyn Iterator<Item = Result<(Tensor, Tensor)>>,
    plan: &mut StepPlan,
    env: &StepEnv,
) -> Result<ClippedBatch> {
    let mut no_clip = NoClip;
    let clips = env.regime.clips();
    // Unclipped regimes need the norms only when a statistic or objective uses them.
    let plain = !clips && plan.statistics.is_empty() && plan.objective.is_none();
    let clip: &mut dyn ClipStrategy = if clips {
        plan.clip.as_mut()
    } else {
        &mut no_clip
    };
    let (sensitivity, threshold) = (clip.sensitivity(), clip.threshold());
    // The first physical batch is the accumulator (adding it to zeros would cost one
    // element-wise pass per parameter and change nothing).
    let mut acc: Option<ClippedBatch> = None;
    for batch in batches {
        let (x, y) = batch?;
        let part = if plain {
            let examples = x.dim(0)?;
            let (sum, loss_sum) = if examples == 0 {
                (
                    ClippedBatch::empty(&*model, sensitivity, threshold)?.sum,
                    0.0,
                )
            } else {
                batch_gradient(model, &x, &y, env.loss)?
            };
            ClippedBatch {
                // Not clipped: the unclipped sum is the sum itself.
                unclipped_sum: env.grad_options.track_unclipped_sum.then(|| sum.clone()),
                sum,
                sensitivity,
                stats: ClipStats {
                    threshold,
                    ..ClipStats::default()
                },
                loss_sum,
                examples,
            }
        } else if let Some(obj) = plan.objective.as_mut() {
            let part = obj.clipped_sum(model, &x, &y, env.loss, clip, env.grad_options)?;
            // Only the not-DP data-dependent regime lets an objective state a bound of its
            // own (computed from the batch); everywhere else the plan's bound is the bound.
            if part.sensitivity != sensitivity && env.regime != Regime::DataDependentNoise {
                return Err(TrainError::InvalidConfig(format!(
                    "objective '{}' returned a sum of sensitivity {} for a clip of sensitivity {}",
                    obj.name(),
                    part.sensitivity,
                    sensitivity
                )));
            }
            part
        } else {
            clipped_gradient(model, &x, &y, env.loss, clip, env.grad_options)?
        };
        match acc.as_mut() {
            Some(a) => a.accumulate(part)?,
            None => acc = Some(part),
        }
    }
    match acc {
        Some(a) => Ok(a),
        None => Ok(ClippedBatch::empty(&*model, sensitivity, threshold)?),
    }
}
