//! Privacy methods: how each step clips, how much noise it adds, what it releases, and how
//! it adapts. One file per method.
//!
//! # Contract
//! A method plans each step ([`PrivacyMethod::plan`]) and learns what happened
//! ([`PrivacyMethod::after_step`]). It never adds noise or accounts anything itself: the step
//! releases the noisy gradient and every [`crate::StatisticQuery`] the plan asks for, and
//! derives the accounting event from those releases. Statistics in
//! [`crate::StepOutcome::stats`] are not private: a method may let only the noisy
//! [`crate::StepOutcome::statistics`] and the noisy gradient influence what it does next.
//!
//! # Adding a method
//! One file: a type implementing [`PrivacyMethod`]. It is usable from outside this crate
//! (see the example on [`PrivacyMethod`]).

mod andrew_adaptive;
mod auto_clip;
mod auto_dpsgd;
mod bam;
mod batch_clip;
mod clip_with;
mod fixed;
mod global_adapt;
mod registry;

pub use andrew_adaptive::{split_noise_multiplier, AdaptiveQuantileClip};
pub use auto_clip::AutoS;
pub use auto_dpsgd::{AutoDpSgd, AutoDpSgdPublishedNotDp, NoiseDecay, SafeThreshold};
pub use bam::Bam;
pub use batch_clip::{batch_clipped_sum, unit_order, BatchClip};
pub use clip_with::ClipWith;
pub use fixed::FixedClip;
pub use global_adapt::{AboveBound, GlobalAdapt};
pub use registry::{MethodContext, MethodSpec};

use crate::error::{Result, TrainError};
use crate::plan::{PlanContext, StepOutcome, StepPlan};

/// A DP training method: plans every step and adapts from its noisy outcome.
///
/// A toy method written outside dp-optim: DP-SGD whose clip bound halves after 5 steps (a
/// public schedule, so it needs no extra release).
///
/// ```
/// use dp_optim::{BatchSize, Delta, Epochs, PlanContext, PrivacyMethod, PrivateTrainer, Sgd, StepOutcome, StepPlan, TrainerConfig};
/// use dp_core::clipping::FlatClip;
///
/// struct HalvingClip { sigma: f64 }
/// impl PrivacyMethod for HalvingClip {
///     fn name(&self) -> String { "halving_clip".into() }
///     fn noise_multiplier(&self) -> f64 { self.sigma }
///     fn set_noise_multiplier(&mut self, s: f64) -> dp_optim::Result<()> { self.sigma = s; Ok(()) }
///     fn plan(&mut self, ctx: &PlanContext) -> dp_optim::Result<StepPlan> {
///         let c = if ctx.step < 5 { 1.0 } else { 0.5 };
///         StepPlan::new(Box::new(FlatClip::new(c)?), self.sigma, ctx.standard_divisor(c))
///     }
///     fn after_step(&mut self, _: &StepOutcome) -> dp_optim::Result<()> { Ok(()) }
///     fn state(&self) -> dp_optim::Result<serde_json::Value> { Ok(serde_json::json!(self.sigma)) }
///     fn load_state(&mut self, v: &serde_json::Value) -> dp_optim::Result<()> {
///         self.sigma = serde_json::from_value(v.clone())?; Ok(())
///     }
/// }
///
/// let data = dp_data::load_bundled_mnist().unwrap();
/// let model = dp_core::models::mlp(&[784, 8, 10], &candle_core::Device::Cpu, 0).unwrap();
/// let cfg = TrainerConfig::new(Epochs(0.2), BatchSize(100.0), Delta(1e-5)).with_seed(0);
/// let mut t = PrivateTrainer::new(model, Box::new(Sgd::new(0.1)), Box::new(HalvingClip { sigma: 1.0 }), cfg, &data.train).unwrap();
/// let report = t.train(&data.train, None).unwrap();
/// assert_eq!(report.steps, 8);
/// assert_eq!(t.records()[7].clip_norm, 0.5);
/// assert!(report.epsilon.is_finite() && report.epsilon > 0.0);
/// ```
pub trait PrivacyMethod: Send {
    /// A short name for records and checkpoints (`"fixed"`, `"andrew_adaptive"`, ...).
    fn name(&self) -> String;
    /// The noise multiplier the user budgets for (what calibration sets).
    fn noise_multiplier(&self) -> f64;
    /// Sets the budgeted noise multiplier (e.g. after calibration from a target ε).
    fn set_noise_multiplier(&mut self, sigma: f64) -> Result<()>;
    /// The plan of the next step. A plan whose step the budget refuses is dropped without
    /// being carried out, so planning should not change what the method releases later
    /// (adapt in [`PrivacyMethod::after_step`], not here).
    fn plan(&mut self, ctx: &PlanContext) -> Result<StepPlan>;
    /// Called after each step with what it released.
    fn after_step(&mut self, outcome: &StepOutcome) -> Result<()>;
    /// The noise multipliers (each relative to its sensitivity) of the Gaussian queries that
    /// step `step` releases on its sample when the budgeted multiplier is `sigma`: the
    /// calibration's event factory. The default, `[sigma]`, is right for every method whose
    /// releases together cost one subsampled Gaussian of multiplier `sigma` (DP-SGD, and
    /// Andrew et al.'s split); a method with an extra query of fixed noise (a noisy count
    /// with its own σ_b) returns both. Calibration relies on it; the budget guard does not
    /// (it accounts what each step actually released).
    fn calibration_multipliers(&self, sigma: f64, _step: u64) -> Result<Vec<f64>> {
        Ok(vec![sigma])
    }
    /// Method state for checkpoints.
    fn state(&self) -> Result<serde_json::Value>;
    /// Restores [`PrivacyMethod::state`].
    fn load_state(&mut self, state: &serde_json::Value) -> Result<()>;
}

/// A budgeted noise multiplier: finite and > 0.
pub(crate) fn check_noise_multiplier(sigma: f64) -> Result<f64> {
    if sigma.is_finite() && sigma > 0.0 {
        Ok(sigma)
    } else {
        Err(TrainError::InvalidConfig(format!(
            "noise multiplier {sigma} must be finite and > 0"
        )))
    }
}
