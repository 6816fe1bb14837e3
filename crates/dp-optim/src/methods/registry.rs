//! Methods by name, for configuration files and command lines: a [`MethodSpec`] names a
//! method and states its parameters; [`MethodSpec::build`] makes the method.
//!
//! This is the one place that maps names to method files, so a tool that selects methods by
//! name (the `dp-lab` pipeline, a sweep file) gains a new method when its file adds one arm
//! here, without changing the tool.

use super::{
    AdaptiveQuantileClip, AutoDpSgd, AutoDpSgdPublishedNotDp, AutoS, Bam, BatchClip, FixedClip,
    GlobalAdapt, NoiseDecay, PrivacyMethod,
};
use crate::error::{Result, TrainError};
use dp_core::BamConfig;
use serde::{Deserialize, Serialize};

/// A method chosen by name with its parameters, as a config file states it. Every field has
/// a default (the method papers' own), so `name` alone is a complete spec; fields a method
/// does not use are ignored by it.
///
/// ```
/// use dp_optim::methods::{MethodContext, MethodSpec};
/// let spec: MethodSpec = serde_json::from_str(r#"{"name": "bam", "clip": 0.1}"#).unwrap();
/// let ctx = MethodContext { expected_batch_size: 256.0, steps_per_epoch: 16 };
/// let m = spec.build(1.0, &ctx).unwrap();
/// assert_eq!(m.name(), "bam");
/// assert!(MethodSpec::named("no_such_method").build(1.0, &ctx).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MethodSpec {
    /// One of [`MethodSpec::NAMES`].
    pub name: String,
    /// Clip bound `C` (DP-SGD, BAM, Global-Adapt; Auto DP-SGD's constant threshold when
    /// `threshold = "constant"`); the initial bound `C₀` of the adaptive quantile methods.
    pub clip: f64,
    /// Target quantile `γ` of the norms (Andrew et al.; Auto DP-SGD's private threshold).
    pub target_quantile: f64,
    /// Learning rate `η_C` of the clip bound's geometric update (Andrew et al.).
    pub clip_lr: f64,
    /// BAM's ascent radius `r`.
    pub radius: f64,
    /// BAM's mixing weight `α`.
    pub alpha: f64,
    /// AUTO-S's stability constant `γ` (also Auto DP-SGD's).
    pub gamma: f64,
    /// Auto DP-SGD's σ schedule: `constant`, `time`, `step` or `exponential`.
    pub noise_decay: String,
    /// Auto DP-SGD's threshold: `quantile` (Andrew et al.'s private estimate) or `constant`
    /// (the public `clip`).
    pub threshold: String,
    /// Global-Adapt's initial upper bound `Z₀`.
    pub upper_bound: f64,
    /// Batch clipping's unit size `m` (Xiao et al. 2023; ours: 2, the paper's value could
    /// not be read).
    pub unit_size: usize,
}

impl Default for MethodSpec {
    fn default() -> Self {
        Self {
            name: "dp_sgd".into(),
            clip: 1.0,
            target_quantile: 0.5,
            clip_lr: 0.2,
            radius: BamConfig::DEFAULT_RADIUS,
            alpha: BamConfig::DEFAULT_ALPHA,
            gamma: AutoS::GAMMA,
            noise_decay: "constant".into(),
            threshold: "quantile".into(),
            upper_bound: 100.0,
            unit_size: 2,
        }
    }
}

/// What building a method needs to know about the run (all public).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MethodContext {
    /// Expected logical batch size `B = q·N`.
    pub expected_batch_size: f64,
    /// Steps per epoch, `⌈N/B⌉` (what the trainer uses).
    pub steps_per_epoch: u64,
}

impl MethodSpec {
    /// Every name [`MethodSpec::build`] accepts.
    pub const NAMES: &'static [&'static str] = &[
        "dp_sgd",
        "auto_s",
        "andrew_adaptive",
        "global_adapt",
        "global",
        "bam",
        "auto_dpsgd",
        "auto_dpsgd_published_not_dp",
        "batch_clip",
    ];

    /// The spec of method `name` with the default parameters.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Whether the method is DP as published. Only `auto_dpsgd_published_not_dp` is not: its
    /// noise scale depends on the batch's own norms, so it runs only in
    /// [`crate::Regime::DataDependentNoise`] and never reports a finite ε.
    pub fn is_dp_as_published(&self) -> bool {
        self.name != "auto_dpsgd_published_not_dp"
    }

    /// Whether the method trains under a pruning mask ([`crate::TrainingMask`]). BAM does not
    /// yet: its ascent points would have to move only the kept coordinates, which dp-core's
    /// per-example objective does not support, so a BAM run with a mask is refused.
    ///
    /// ```
    /// let mut m = dp_optim::methods::MethodSpec::default();
    /// assert!(m.supports_pruning());
    /// m.name = "bam".into();
    /// assert!(!m.supports_pruning());
    /// ```
    pub fn supports_pruning(&self) -> bool {
        self.name != "bam"
    }

    /// Refuses an unknown name (listing the known ones) or a parameter out of range, without
    /// building anything a run would use.
    pub fn validate(&self, ctx: &MethodContext) -> Result<()> {
        self.build(1.0, ctx).map(|_| ())
    }

    /// The method, at (budgeted) noise multiplier `sigma` (calibration may replace it).
    pub fn build(&self, sigma: f64, ctx: &MethodContext) -> Result<Box<dyn PrivacyMethod>> {
        let decay = || NoiseDecay::by_name(&self.noise_decay);
        Ok(match self.name.as_str() {
            "dp_sgd" => Box::new(FixedClip::new(self.clip, sigma)?),
            "auto_s" => Box::new(AutoS::with_gamma(sigma, self.gamma)?),
            "andrew_adaptive" => Box::new(self.quantile_clip(sigma, ctx)?),
            "global_adapt" => {
                Box::new(GlobalAdapt::new(sigma, self.clip)?.with_initial_bound(self.upper_bound)?)
            }
            "global" => Box::new(GlobalAdapt::global(sigma, self.clip, self.upper_bound)?),
            "bam" => Box::new(Bam::with_config(
                self.clip,
                sigma,
                BamConfig::new(self.radius, self.alpha)?,
            )?),
            "auto_dpsgd" => Box::new(match self.threshold.as_str() {
                "quantile" => AutoDpSgd::with_quantile_clip(
                    self.quantile_clip(sigma, ctx)?,
                    decay()?,
                    ctx.steps_per_epoch,
                )?,
                "constant" => AutoDpSgd::with_constant_threshold(
                    self.clip,
                    sigma,
                    decay()?,
                    ctx.steps_per_epoch,
                )?,
                other => {
                    return Err(TrainError::InvalidConfig(format!(
                        "unknown Auto DP-SGD threshold '{other}' (quantile, constant)"
                    )))
                }
            }),
            "batch_clip" => Box::new(BatchClip::new(self.clip, self.unit_size, sigma)?),
            "auto_dpsgd_published_not_dp" => Box::new(AutoDpSgdPublishedNotDp::new(
                sigma,
                decay()?,
                ctx.steps_per_epoch,
            )?),
            other => {
                return Err(TrainError::InvalidConfig(format!(
                    "unknown method '{other}' (known: {})",
                    Self::NAMES.join(", ")
                )))
            }
        })
    }

    /// Andrew et al.'s estimator with this spec's `C₀`, `γ`, `η_C` and the paper's
    /// `σ_b = B/20`.
    fn quantile_clip(&self, sigma: f64, ctx: &MethodContext) -> Result<AdaptiveQuantileClip> {
        AdaptiveQuantileClip::with_params(
            sigma,
            self.clip,
            self.target_quantile,
            self.clip_lr,
            ctx.expected_batch_size / 20.0,
        )
    }
}
