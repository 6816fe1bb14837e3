//! The step plan: what a privacy method tells the step before it runs, and what the step
//! tells the method afterwards.
//!
//! A method never runs a step itself. Before each step it returns a [`StepPlan`] — the clip
//! strategy (whose sensitivity the engine enforces), the noise multiplier of the gradient
//! sum, the public divisor, the noisy statistics it wants released, and, where the paper
//! needs one, its own per-example objective. The step ([`crate::step`]) carries it out,
//! **derives the accounting event from what it actually released** (so a method cannot
//! under-state its own cost), and hands the method a [`StepOutcome`]. A new adaptive method
//! is therefore one file implementing [`crate::PrivacyMethod`].

use crate::error::{Result, TrainError};
use candle_core::Tensor;
use dp_accounting::DpEvent;
use dp_core::{ClipStats, ClipStrategy, ClippedBatch, GaussianNoise, GradOptions, Loss, Model};

/// Which parts of DP-SGD a run performs. Only [`Regime::Private`] is differentially
/// private; every other regime reports ε = ∞ in every record (Watson et al. 2023 compare
/// the first four; [`Regime::DataDependentNoise`] reproduces methods published with a
/// data-dependent noise scale, which are not DP).
///
/// ```
/// use dp_optim::Regime;
/// assert!(Regime::Private.is_private());
/// assert!(!Regime::NoiseOnly.is_private());
/// assert_eq!("clip-only".parse::<Regime>().unwrap(), Regime::ClipOnly);
/// assert!(!Regime::DataDependentNoise.is_private());
/// assert_eq!(Regime::DataDependentNoise.name(), "data_dependent_noise_not_dp");
/// ```
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Regime {
    /// Clip every example, add `N(0, σ²S²)` to the sum: DP-SGD.
    #[default]
    Private,
    /// Clip, add no noise (not private: isolates the clipping bias).
    ClipOnly,
    /// The unclipped sum plus the same `N(0, σ²C²)` a private run would add, `C` being the
    /// plan's clip bound (not private: the sum's sensitivity is unbounded).
    NoiseOnly,
    /// Neither: the ordinary gradient.
    NonPrivate,
    /// Clip (or scale) as the plan says and add `N(0, σ²S²)` where `S` is the bound the
    /// method's per-example objective **computed from the batch itself** (Auto DP-SGD as
    /// published, Chilukoti et al. 2023: the threshold is the batch's own mean gradient
    /// norm). Not private: the noise scale is a function of private data (all-zero
    /// gradients get zero noise), so ε = ∞. The only regime that runs plans marked
    /// [`StepPlan::not_dp`]; it exists so that such methods can be reproduced for comparison
    /// without ever being reported as DP.
    #[serde(rename = "data_dependent_noise_not_dp")]
    DataDependentNoise,
}

impl Regime {
    /// Whether runs in this regime have a finite ε.
    pub fn is_private(self) -> bool {
        self == Regime::Private
    }
    /// Whether per-example clipping is applied.
    pub fn clips(self) -> bool {
        matches!(
            self,
            Regime::Private | Regime::ClipOnly | Regime::DataDependentNoise
        )
    }
    /// Whether Gaussian noise is added to the gradient sum.
    pub fn adds_noise(self) -> bool {
        matches!(
            self,
            Regime::Private | Regime::NoiseOnly | Regime::DataDependentNoise
        )
    }
    /// The name used in records and on command lines.
    pub fn name(self) -> &'static str {
        match self {
            Regime::Private => "private",
            Regime::ClipOnly => "clip_only",
            Regime::NoiseOnly => "noise_only",
            Regime::NonPrivate => "non_private",
            Regime::DataDependentNoise => "data_dependent_noise_not_dp",
        }
    }
}

impl std::fmt::Display for Regime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Regime {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "private" | "dp" => Ok(Regime::Private),
            "clip_only" => Ok(Regime::ClipOnly),
            "noise_only" => Ok(Regime::NoiseOnly),
            "non_private" | "none" => Ok(Regime::NonPrivate),
            "data_dependent_noise" | "data_dependent_noise_not_dp" => {
                Ok(Regime::DataDependentNoise)
            }
            other => Err(TrainError::InvalidConfig(format!(
                "unknown regime '{other}' (private, clip-only, noise-only, non-private, \
                 data-dependent-noise)"
            ))),
        }
    }
}

/// What a method knows when it plans a step (all public).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanContext {
    /// 0-based index of the step being planned.
    pub step: u64,
    /// Expected logical batch size `q·N` (public).
    pub expected_batch_size: f64,
    /// Divide by `B·C` instead of `B` (De et al. 2022), see
    /// [`crate::TrainerConfig::rescale_by_clip_norm`].
    pub rescale_by_clip_norm: bool,
}

impl PlanContext {
    /// The standard public divisor for clip bound `c`: `B`, or `B·c` when rescaling.
    ///
    /// ```
    /// let ctx = dp_optim::PlanContext { step: 0, expected_batch_size: 256.0, rescale_by_clip_norm: true };
    /// assert_eq!(ctx.standard_divisor(0.5), 128.0);
    /// ```
    pub fn standard_divisor(&self, c: f64) -> f64 {
        if self.rescale_by_clip_norm {
            self.expected_batch_size * c
        } else {
            self.expected_batch_size
        }
    }
}

/// A noisy statistic of the batch that a method asks the step to release:
/// `Σ_i f(‖g_i‖) + N(0, noise_std²)`, computed from each example's gradient norm before
/// clipping (NaN for an example with a non-finite gradient).
///
/// The step clamps every contribution to `[−sensitivity, sensitivity]`, so the stated
/// sensitivity holds whatever `f` returns, and accounts the release as a Gaussian query
/// with multiplier `noise_std / sensitivity` on the step's sample.
///
/// ```
/// use dp_optim::StatisticQuery;
/// use dp_core::GaussianNoise;
/// // Andrew et al.'s count: +½ for an unclipped example, −½ otherwise.
/// let q = StatisticQuery::new("unclipped", 0.5, 3.0, |n| if n <= 1.0 { 0.5 } else { -0.5 }).unwrap();
/// let v = q.release(&[0.2, 3.0, 0.5], &mut GaussianNoise::seeded(0)).unwrap();
/// assert!((v - 0.5).abs() < 15.0); // ½ + N(0, 9)
/// assert_eq!(q.noise_multiplier(), 6.0);
/// ```
pub struct StatisticQuery {
    /// A name for records.
    pub name: String,
    sensitivity: f64,
    noise_std: f64,
    contribution: Box<dyn Fn(f64) -> f64 + Send + Sync>,
}

impl std::fmt::Debug for StatisticQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatisticQuery")
            .field("name", &self.name)
            .field("sensitivity", &self.sensitivity)
            .field("noise_std", &self.noise_std)
            .finish()
    }
}

impl StatisticQuery {
    /// A query whose per-example contribution is bounded by `sensitivity` in absolute value,
    /// released with `N(0, noise_std²)`.
    pub fn new(
        name: impl Into<String>,
        sensitivity: f64,
        noise_std: f64,
        contribution: impl Fn(f64) -> f64 + Send + Sync + 'static,
    ) -> Result<Self> {
        if !(sensitivity.is_finite() && sensitivity > 0.0) {
            return Err(TrainError::InvalidConfig(format!(
                "statistic sensitivity {sensitivity} must be finite and > 0"
            )));
        }
        // Drawn in f32: a std beyond f32::MAX would be ∞ there.
        if !(noise_std.is_finite() && noise_std > 0.0 && noise_std <= f32::MAX as f64) {
            return Err(TrainError::InvalidConfig(format!(
                "statistic noise std {noise_std} must be finite and > 0"
            )));
        }
        Ok(Self {
            name: name.into(),
            sensitivity,
            noise_std,
            contribution: Box::new(contribution),
        })
    }
    /// Bound on one example's contribution.
    pub fn sensitivity(&self) -> f64 {
        self.sensitivity
    }
    /// Standard deviation of the noise added to the sum.
    pub fn noise_std(&self) -> f64 {
        self.noise_std
    }
    /// The release's noise multiplier relative to its sensitivity.
    pub fn noise_multiplier(&self) -> f64 {
        self.noise_std / self.sensitivity
    }
    /// The noisy sum over `norms` (one draw from `noise`). The only way a statistic of the
    /// batch reaches a method.
    pub fn release(&self, norms: &[f32], noise: &mut GaussianNoise) -> Result<f64> {
        let s = self.sensitivity;
        let sum: f64 = norms
            .iter()
            .map(|&n| {
                let v = (self.contribution)(n as f64);
                // A NaN contribution is the worst case in neither direction: count it as 0.
                if v.is_nan() {
                    0.0
                } else {
                    v.clamp(-s, s)
                }
            })
            .sum();
        Ok(sum + noise.sample(1, self.noise_std)?[0] as f64)
    }
}

/// A per-example objective other than the plain gradient, for methods that need one (BAM's
/// gradient at each example's own ascent point, for instance).
///
/// It must return the clipped sum of one physical batch through dp-core's clipping (so that
/// the engine's check `‖c_i h_i‖ ≤ S` applies to whatever `h_i` it computes) with the
/// sensitivity of `clip`; the step refuses a sum whose stated sensitivity differs. Whatever
/// `h_i` is, it may depend on example `i` and public values only.
pub trait PerExampleObjective: Send {
    /// A short name for records.
    fn name(&self) -> String;
    /// The clipped sum of `Σ_i c_i h_i` over one physical batch.
    fn clipped_sum(
        &mut self,
        model: &mut dyn Model,
        x: &Tensor,
        y: &Tensor,
        loss: &dyn Loss,
        clip: &mut dyn ClipStrategy,
        opts: &GradOptions,
    ) -> Result<ClippedBatch>;
}

/// Everything one step does, decided by the method before the step runs.
///
/// ```
/// use dp_optim::StepPlan;
/// use dp_core::clipping::FlatClip;
/// let plan = StepPlan::new(Box::new(FlatClip::new(1.0).unwrap()), 1.1, 256.0).unwrap();
/// assert_eq!(plan.sensitivity(), 1.0);
/// assert!((plan.gradient_noise_std() - 1.1).abs() < 1e-12);
/// ```
pub struct StepPlan {
    /// The clip strategy of this step; its sensitivity is the gradient sum's.
    pub clip: Box<dyn ClipStrategy>,
    /// Noise multiplier of the gradient sum: std `σ·S`.
    pub noise_multiplier: f64,
    /// The public constant the noisy sum is divided by.
    pub divisor: f64,
    /// Noisy statistics to release on the same sample (accounted with the gradient).
    pub statistics: Vec<StatisticQuery>,
    /// Releases the step does not perform itself (e.g. a query on public data is none;
    /// a private batch-norm statistic over the full dataset is one), composed as stated.
    pub extra_events: Vec<DpEvent>,
    /// A per-example objective; `None` is the plain gradient.
    pub objective: Option<Box<dyn PerExampleObjective>>,
    /// `Some(why)` when this plan is **not** differentially private as planned (a method
    /// reproduced as published whose noise scale depends on the data). The step refuses it in
    /// [`Regime::Private`] before anything is computed; it runs only in
    /// [`Regime::DataDependentNoise`], whose records say not DP and report ε = ∞.
    pub not_dp: Option<String>,
}

impl std::fmt::Debug for StepPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepPlan")
            .field("sensitivity", &self.clip.sensitivity())
            .field("noise_multiplier", &self.noise_multiplier)
            .field("divisor", &self.divisor)
            .field("statistics", &self.statistics)
            .field("extra_events", &self.extra_events)
            .field("not_dp", &self.not_dp)
            .field(
                "objective",
                &self
                    .objective
                    .as_ref()
                    .map(|o| o.name())
                    .unwrap_or_default(),
            )
            .finish()
    }
}

impl StepPlan {
    /// Plain DP-SGD: `clip`, noise multiplier `σ`, divisor `divisor`.
    pub fn new(clip: Box<dyn ClipStrategy>, noise_multiplier: f64, divisor: f64) -> Result<Self> {
        let plan = Self {
            clip,
            noise_multiplier,
            divisor,
            statistics: Vec::new(),
            extra_events: Vec::new(),
            objective: None,
            not_dp: None,
        };
        plan.validate()?;
        Ok(plan)
    }
    /// Also release `query` on this step's sample.
    pub fn with_statistic(mut self, query: StatisticQuery) -> Self {
        self.statistics.push(query);
        self
    }
    /// Use `objective` instead of the plain per-example gradient.
    pub fn with_objective(mut self, objective: Box<dyn PerExampleObjective>) -> Self {
        self.objective = Some(objective);
        self
    }
    /// Marks the plan as not DP, saying why (see [`StepPlan::not_dp`]).
    pub fn with_not_dp(mut self, why: impl Into<String>) -> Self {
        self.not_dp = Some(why.into());
        self
    }
    /// Also compose `event` (a release the step does not perform itself).
    pub fn with_extra_event(mut self, event: DpEvent) -> Self {
        self.extra_events.push(event);
        self
    }
    /// The L2 sensitivity of the clipped gradient sum.
    pub fn sensitivity(&self) -> f64 {
        self.clip.sensitivity()
    }
    /// Standard deviation of the gradient sum's noise, `σ·S` (before the divisor).
    pub fn gradient_noise_std(&self) -> f64 {
        self.noise_multiplier * self.sensitivity()
    }
    /// The noise multipliers (each relative to its sensitivity) of the Gaussian queries this
    /// step releases on its sample: the gradient sum first, then each statistic.
    pub fn query_multipliers(&self) -> Vec<f64> {
        std::iter::once(self.noise_multiplier)
            .chain(self.statistics.iter().map(|q| q.noise_multiplier()))
            .collect()
    }
    /// Checks what can be checked before the step: σ > 0, a finite positive sensitivity
    /// and a finite positive divisor.
    pub fn validate(&self) -> Result<()> {
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier > 0.0) {
            return Err(TrainError::InvalidConfig(format!(
                "noise multiplier {} must be finite and > 0",
                self.noise_multiplier
            )));
        }
        let s = self.sensitivity();
        if !(s.is_finite() && s > 0.0) {
            return Err(TrainError::InvalidConfig(format!(
                "the clip strategy's sensitivity {s} must be finite and > 0"
            )));
        }
        if !(self.divisor.is_finite() && self.divisor > 0.0) {
            return Err(TrainError::InvalidConfig(format!(
                "divisor {} must be a finite public constant > 0",
                self.divisor
            )));
        }
        Ok(())
    }
}

/// What a step did, handed to [`crate::PrivacyMethod::after_step`].
#[derive(Debug, Clone)]
pub struct StepOutcome<'a> {
    /// 0-based index of the step just taken.
    pub step: u64,
    /// The gradient the optimiser received: the noisy sum divided by the plan's divisor.
    pub gradient: &'a [Tensor],
    /// Standard deviation of the noise in each coordinate of `gradient` (`σ·S/divisor`; 0
    /// when the regime adds none).
    pub noise_std: f64,
    /// Statistics of the per-example norms. **Not private**: use only for analysis.
    pub stats: &'a ClipStats,
    /// The noisy statistics the plan asked for, in the plan's order (private releases).
    pub statistics: &'a [f64],
    /// Expected logical batch size (public).
    pub expected_batch_size: f64,
}
