use super::{check_noise_multiplier, PrivacyMethod};
use crate::error::{Result, TrainError};
use crate::plan::{PerExampleObjective, PlanContext, StepOutcome, StepPlan};
use candle_core::Tensor;
use dp_core::clipping::FlatClip;
use dp_core::{BamConfig, ClipStrategy, ClippedBatch, GradOptions, Loss, Model};
use serde::{Deserialize, Serialize};

/// BAM, bias-aware minimisation (Knolle, Dorfman, Ziller, Rueckert, Kaissis, TPDP 2023):
/// DP-SGD whose per-example gradient is the mix `h_i = (1 − α)·∇ℓ_i(θ) + α·∇ℓ_i(θ + r·ĝ_i)`
/// of the gradient and the gradient at the example's own ascent point (`ĝ_i = g_i/‖g_i‖`),
/// clipped to `C` after mixing, summed and noised with `N(0, σ²C²)`.
///
/// To first order `h_i ≈ ∇[ℓ_i + αr‖∇ℓ_i‖]`: a per-example gradient-norm penalty, which
/// shrinks the norms that clipping would cut and so the clipping bias. Privacy: `h_i`
/// depends on example `i` and the public `θ` only and is clipped by the engine like any
/// DP-SGD gradient, so a step is one Poisson-subsampled Gaussian `(q, σ)`, exactly as
/// [`crate::FixedClip`]. Cost: two forward and two backward passes
/// (`dp_core::bam_clipped_gradient`); with the trainer's default grad mode the per-example
/// gradients stay factored (ghost norms and book-keeping over the `2T` positions of the mix),
/// with [`dp_core::GradMode::Materialize`] they are materialised (the reference path).
///
/// ```
/// use dp_optim::{Bam, PlanContext, PrivacyMethod};
/// let mut m = Bam::new(1.0, 1.1).unwrap(); // r = 0.05, α = 0.8
/// let ctx = PlanContext { step: 0, expected_batch_size: 256.0, rescale_by_clip_norm: false };
/// let plan = m.plan(&ctx).unwrap();
/// assert_eq!(plan.sensitivity(), 1.0);
/// assert_eq!(plan.query_multipliers(), vec![1.1]);
/// assert!(plan.objective.is_some());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bam {
    clip_norm: f64,
    noise_multiplier: f64,
    config: BamConfig,
}

impl Bam {
    /// BAM with the defaults `r = 0.05`, `α = 0.8`, clip bound `C > 0` and noise multiplier
    /// `σ > 0` (σ may be replaced by calibration).
    pub fn new(clip_norm: f64, noise_multiplier: f64) -> Result<Self> {
        Self::with_config(clip_norm, noise_multiplier, BamConfig::default())
    }

    /// BAM with another radius and mixing weight.
    pub fn with_config(clip_norm: f64, noise_multiplier: f64, config: BamConfig) -> Result<Self> {
        if !(clip_norm.is_finite() && clip_norm > 0.0) {
            return Err(TrainError::InvalidConfig(format!(
                "clip norm {clip_norm} must be finite and > 0"
            )));
        }
        Ok(Self {
            clip_norm,
            noise_multiplier: check_noise_multiplier(noise_multiplier)?,
            config,
        })
    }

    /// The radius and mixing weight.
    pub fn config(&self) -> BamConfig {
        self.config
    }
}

/// The per-example objective of [`Bam`].
struct BamObjective(BamConfig);

impl PerExampleObjective for BamObjective {
    fn name(&self) -> String {
        format!("bam(r={}, α={})", self.0.radius(), self.0.alpha())
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
        Ok(dp_core::bam_clipped_gradient(
            model, x, y, loss, clip, opts, &self.0,
        )?)
    }
}

impl PrivacyMethod for Bam {
    fn name(&self) -> String {
        "bam".into()
    }
    fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }
    fn set_noise_multiplier(&mut self, sigma: f64) -> Result<()> {
        self.noise_multiplier = check_noise_multiplier(sigma)?;
        Ok(())
    }
    fn plan(&mut self, ctx: &PlanContext) -> Result<StepPlan> {
        Ok(StepPlan::new(
            Box::new(FlatClip::new(self.clip_norm)?),
            self.noise_multiplier,
            ctx.standard_divisor(self.clip_norm),
        )?
        .with_objective(Box::new(BamObjective(self.config))))
    }
    fn after_step(&mut self, _: &StepOutcome) -> Result<()> {
        Ok(())
    }
    fn state(&self) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(self)?)
    }
    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let s: Self = serde_json::from_value(state.clone())?;
        let config = BamConfig::new(s.config.radius(), s.config.alpha())?;
        *self = Self::with_config(s.clip_norm, s.noise_multiplier, config)?;
        Ok(())
    }
}
