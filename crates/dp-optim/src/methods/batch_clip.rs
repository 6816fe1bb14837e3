use super::{check_noise_multiplier, PrivacyMethod};
use crate::error::{Result, TrainError};
use crate::plan::{PerExampleObjective, PlanContext, StepOutcome, StepPlan};
use candle_core::Tensor;
use dp_core::clipping::{ClipFactors, FlatClip, LayerSqNorms};
use dp_core::{clipped_gradient, ClipStrategy, ClippedBatch, GradOptions, Loss, Model};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

/// Batch (micro-batch) clipping, the "BatchClipping" remedy of Xiao, Xiang, Wang & Devadas,
/// "A Theory to Instruct Differentially-Private Learning via Clipping Bias Reduction"
/// (IEEE S&P 2023): the sampled batch is cut into **units of `m` examples**, each unit's
/// *mean* gradient is clipped to `C`, the clipped means are summed and noised once.
///
/// Why: the paper's theory puts the clipping bias down to the sampling noise of the
/// gradient being clipped; the mean of `m` per-example gradients has `1/m` of its variance.
///
/// # What is ours, not the paper's
/// Neither the paper's text nor its official code (`zihangxiang/A-Theory-to-Instruct-…`,
/// whose stored version trains per-example DP-SGD with heavy-ball momentum and
/// self-augmentation, no unit clipping) could be read for the privacy analysis of units, so
/// the partition and its sensitivity below are derived here:
///
/// * **Partition.** The examples Poisson sampling drew are put in a uniformly random order
///   (a ChaCha20 stream seeded from the method's seed and the step: public randomness,
///   independent of the data) and cut into consecutive units of `m`; the last unit holds
///   the remaining `n mod m` examples. Each unit's mean is over its own members.
/// * **Sensitivity under add/remove of one example**, `S = C` for `m = 1` (per-example
///   DP-SGD, bit for bit) and **`S = 4C` for `m ≥ 2`** — not `C`. Couple the random order
///   of `D ∪ {x}` with that of `D` by putting `x` at a uniform position; if that position is
///   in a full unit `A`, the member `y` it displaces goes to the last unit. Then at most two
///   units differ (`A` with `x` for `y`, the last unit with and without `y`), each clipped
///   mean moves by at most `2C` (a unit that keeps other members can flip from `+C` to
///   `−C`), so the sum moves by at most `4C`; the coupling attains it (see the tests).
///   Under this coupling the partition needs a whole logical batch: the objective refuses a
///   step that arrives in more than one physical batch.
/// * **Accounting.** Every example is still sampled with probability `q`, and for every
///   sample of the others (and every coupled pair of orders) including `x` shifts the sum
///   by at most `S`. By the joint convexity of the Rényi (and hockey-stick) divergences
///   over that mixture, a step is one Poisson-subsampled Gaussian `(q, σ)` whose noise std
///   is `σ·S`: the plan states `S`, so the trainer's ordinary SGM accounting is right.
/// * **Divisor.** The noisy sum of about `B/m` clipped means is divided by the public
///   `B/m` (the expected number of units), so the step has the scale of a mean gradient.
///
/// ```
/// use dp_optim::{methods::BatchClip, PlanContext, PrivacyMethod};
/// let ctx = PlanContext { step: 0, expected_batch_size: 256.0, rescale_by_clip_norm: false };
/// let mut m = BatchClip::new(0.5, 4, 1.1).unwrap();
/// let plan = m.plan(&ctx).unwrap();
/// assert_eq!(plan.sensitivity(), 2.0); // 4C for units of m ≥ 2
/// assert_eq!(plan.query_multipliers(), vec![1.1]); // one SGM (q, σ) per step
/// assert_eq!(plan.divisor, 64.0); // B/m
/// assert_eq!(BatchClip::new(0.5, 1, 1.1).unwrap().plan(&ctx).unwrap().sensitivity(), 0.5);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchClip {
    clip_norm: f64,
    unit_size: usize,
    noise_multiplier: f64,
    seed: u64,
}

impl BatchClip {
    /// Units of `unit_size = m ≥ 1` examples, each unit's mean clipped to `C > 0`, noise
    /// multiplier `σ > 0` (calibration may replace it); partition seed 0.
    pub fn new(clip_norm: f64, unit_size: usize, noise_multiplier: f64) -> Result<Self> {
        if !(clip_norm.is_finite() && clip_norm > 0.0) {
            return Err(TrainError::InvalidConfig(format!(
                "clip norm {clip_norm} must be finite and > 0"
            )));
        }
        if unit_size == 0 {
            return Err(TrainError::InvalidConfig(
                "batch clipping needs units of at least one example".into(),
            ));
        }
        Ok(Self {
            clip_norm,
            unit_size,
            noise_multiplier: check_noise_multiplier(noise_multiplier)?,
            seed: 0,
        })
    }

    /// Another seed for the (public) random partition into units.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The unit size `m`.
    pub fn unit_size(&self) -> usize {
        self.unit_size
    }

    /// The clip bound `C` of every unit's mean.
    pub fn clip_norm(&self) -> f64 {
        self.clip_norm
    }

    /// The L2 sensitivity of the clipped sum under add/remove of one example: `C` for
    /// `m = 1`, `4C` for `m ≥ 2` (see the type's documentation).
    pub fn sensitivity(&self) -> f64 {
        unit_sensitivity(self.clip_norm, self.unit_size)
    }
}

/// `C` for units of one example, `4C` otherwise (see [`BatchClip`]).
fn unit_sensitivity(c: f64, m: usize) -> f64 {
    if m == 1 {
        c
    } else {
        4.0 * c
    }
}

/// Clips each unit's mean to `C` and states the sensitivity of the sum of units.
#[derive(Debug, Clone, Copy)]
struct UnitClip {
    flat: FlatClip,
    sensitivity: f64,
}

impl ClipStrategy for UnitClip {
    fn factors(&mut self, sq: &LayerSqNorms) -> dp_core::Result<ClipFactors> {
        self.flat.factors(sq)
    }
    fn sensitivity(&self) -> f64 {
        self.sensitivity
    }
    fn threshold(&self) -> f64 {
        self.flat.max_norm()
    }
}

/// The order in which the `n` examples of step `step` are cut into units: a uniformly
/// random permutation from ChaCha20 seeded with `(seed, step)` (public, data-independent).
pub fn unit_order(seed: u64, step: u64, n: usize) -> Vec<usize> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order
}

/// The clipped sum of batch clipping for examples taken in `order` (a permutation of the
/// batch's examples; each example is `K` consecutive rows when `opts` asks for
/// augmentation multiplicity `K`): consecutive units of `m`, the last one with the
/// remaining `n mod m`, each unit's mean gradient weighted by `clip` (flat clipping to `C`
/// for [`BatchClip`]). Two engine passes at most (full units, then the remainder), each
/// with dp-core's grouping of rows, so the engine checks every unit against `clip`'s
/// sensitivity. `examples` and `loss_sum` count examples; the statistics' norms are the
/// units' (their mean gradients' norms before clipping).
///
/// ```
/// use dp_optim::methods::batch_clipped_sum;
/// use dp_core::{models, CrossEntropy, GradOptions, clipping::FlatClip};
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let mut m = models::mlp(&[6, 4, 3], &dev, 0).unwrap();
/// let x = Tensor::randn(0f32, 1., (7, 6), &dev).unwrap();
/// let y = Tensor::from_vec((0..7u32).map(|i| i % 3).collect::<Vec<_>>(), 7, &dev).unwrap();
/// let mut clip = FlatClip::new(1.0).unwrap();
/// let order: Vec<usize> = (0..7).rev().collect();
/// let s = batch_clipped_sum(&mut m, &x, &y, &CrossEntropy, &mut clip, &GradOptions::default(), 3, &order).unwrap();
/// assert_eq!((s.examples, s.stats.norms.len()), (7, 3)); // units of 3, 3 and 1
/// ```
#[allow(clippy::too_many_arguments)]
pub fn batch_clipped_sum(
    model: &mut dyn Model,
    x: &Tensor,
    y: &Tensor,
    loss: &dyn Loss,
    clip: &mut dyn ClipStrategy,
    opts: &GradOptions,
    unit_size: usize,
    order: &[usize],
) -> Result<ClippedBatch> {
    if unit_size == 0 {
        return Err(TrainError::InvalidConfig(
            "batch clipping needs units of at least one example".into(),
        ));
    }
    let k = opts.augmentation_multiplicity.max(1);
    let rows = x.dim(0)?;
    if rows % k != 0 {
        return Err(TrainError::InvalidConfig(format!(
            "batch of {rows} rows is not a whole number of groups of {k} augmented copies"
        )));
    }
    let n = rows / k;
    let mut seen = vec![false; n];
    if order.len() != n
        || order
            .iter()
            .any(|&i| i >= n || std::mem::replace(&mut seen[i], true))
    {
        return Err(TrainError::InvalidConfig(format!(
            "the unit order must be a permutation of the batch's {n} examples"
        )));
    }
    if n == 0 {
        return Ok(dp_core::clipped_gradient(model, x, y, loss, clip, opts)?);
    }
    let idx: Vec<u32> = order
        .iter()
        .flat_map(|&i| (i * k..(i + 1) * k).map(|r| r as u32))
        .collect();
    let idx = Tensor::from_vec(idx, rows, x.device())?;
    let (xs, ys) = (x.index_select(&idx, 0)?, y.index_select(&idx, 0)?);
    let m = unit_size.min(n);
    let full = n / m;
    let rest = n % m;
    let mut out: Option<ClippedBatch> = None;
    for (start, units, size) in [(0, full, m), (full * m, usize::from(rest > 0), rest)] {
        if units == 0 {
            continue;
        }
        let (r0, len) = (start * k, units * size * k);
        let mut o = opts.clone();
        o.augmentation_multiplicity = size * k;
        let mut part = clipped_gradient(
            model,
            &xs.narrow(0, r0, len)?,
            &ys.narrow(0, r0, len)?,
            loss,
            clip,
            &o,
        )?;
        // The engine counted units and divided the loss by the unit's rows.
        part.loss_sum *= size as f64;
        part.examples *= size;
        match out.as_mut() {
            Some(a) => a.accumulate(part)?,
            None => out = Some(part),
        }
    }
    out.ok_or_else(|| TrainError::InvalidConfig("no units".into()))
}

/// The per-example objective of [`BatchClip`] for one step.
struct BatchClipObjective {
    unit_size: usize,
    seed: u64,
    step: u64,
    batches: usize,
}

impl PerExampleObjective for BatchClipObjective {
    fn name(&self) -> String {
        format!("batch_clip(m={})", self.unit_size)
    }
    fn clipped_sum(
        &mut self,
        model: &mut dyn Model,
        x: &Tensor,
        y: &Tensor,
        loss: &dyn Loss,
        clip: &mut dyn ClipStrategy,
        opts: &GradOptions,
    ) -> Result<ClippedBatch> {
        self.batches += 1;
        if self.unit_size == 1 {
            // Units of one example: per-example DP-SGD, through the same engine call.
            return Ok(clipped_gradient(model, x, y, loss, clip, opts)?);
        }
        if self.batches > 1 {
            return Err(TrainError::InvalidConfig(
                "batch clipping partitions the whole logical batch: its sensitivity does not \
                 hold when the step arrives in several physical batches (raise \
                 max_physical_batch above the batch size)"
                    .into(),
            ));
        }
        let n = x.dim(0)? / opts.augmentation_multiplicity.max(1);
        let order = unit_order(self.seed, self.step, n);
        batch_clipped_sum(model, x, y, loss, clip, opts, self.unit_size, &order)
    }
}

impl PrivacyMethod for BatchClip {
    fn name(&self) -> String {
        "batch_clip".into()
    }
    fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }
    fn set_noise_multiplier(&mut self, sigma: f64) -> Result<()> {
        self.noise_multiplier = check_noise_multiplier(sigma)?;
        Ok(())
    }
    fn plan(&mut self, ctx: &PlanContext) -> Result<StepPlan> {
        let clip = UnitClip {
            flat: FlatClip::new(self.clip_norm)?,
            sensitivity: self.sensitivity(),
        };
        let divisor = ctx.standard_divisor(self.clip_norm) / self.unit_size as f64;
        Ok(
            StepPlan::new(Box::new(clip), self.noise_multiplier, divisor)?.with_objective(
                Box::new(BatchClipObjective {
                    unit_size: self.unit_size,
                    seed: self.seed,
                    step: ctx.step,
                    batches: 0,
                }),
            ),
        )
    }
    fn after_step(&mut self, _: &StepOutcome) -> Result<()> {
        Ok(())
    }
    fn state(&self) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(self)?)
    }
    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let s: Self = serde_json::from_value(state.clone())?;
        *self = Self::new(s.clip_norm, s.unit_size, s.noise_multiplier)?.with_seed(s.seed);
        Ok(())
    }
}
