use super::{check_noise_multiplier, PrivacyMethod};
use crate::error::{Result, TrainError};
use crate::plan::{PlanContext, StepOutcome, StepPlan};
use dp_core::clipping::AutoClip;
use serde::{Deserialize, Serialize};

/// Automatic clipping, AUTO-S (Bu, Wang, Zha, Karypis, "Automatic Clipping: Differentially
/// Private Deep Learning Made Easier and Stronger", NeurIPS 2023, Eq. 4.1 / Alg. 1), as a
/// trainer method.
///
/// Every example is **normalised** instead of clipped: `g_i ↦ g_i/(‖g_i‖ + γ)` with the
/// stability constant `γ = 0.01` of the paper, so each contribution has norm `< 1` and the
/// sum's sensitivity is 1 whatever the gradients are; the noise is `N(0, σ²)` per coordinate.
///
/// **Learning-rate convention** (paper §4, "automatic DP-SGD with `R` is DP-SGD with
/// `R = 1` and learning rate `ηR`"): the clip scale `R` is fixed at 1 and absorbed into the
/// learning rate, so there is no clip norm to tune. The divisor is the expected batch size
/// `B` (with [`crate::TrainerConfig::rescale_by_clip_norm`] it is `B·1`, the same), so the
/// optimiser sees `(Σ_i g_i/(‖g_i‖+γ) + N(0, σ²))/B`, whose norm is at most 1 up to the
/// noise: tune `η` as for a unit-norm gradient. Privacy: one Poisson-subsampled Gaussian
/// `(q, σ)` per step, exactly as DP-SGD with `C = 1`.
///
/// ```
/// use dp_optim::{AutoS, PlanContext, PrivacyMethod};
/// let mut m = AutoS::new(1.1).unwrap();
/// let ctx = PlanContext { step: 0, expected_batch_size: 64.0, rescale_by_clip_norm: false };
/// let plan = m.plan(&ctx).unwrap();
/// assert_eq!(plan.sensitivity(), 1.0);
/// assert_eq!(plan.query_multipliers(), vec![1.1]);
/// assert_eq!(plan.divisor, 64.0);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoS {
    noise_multiplier: f64,
    gamma: f64,
}

impl AutoS {
    /// The paper's stability constant.
    pub const GAMMA: f64 = 0.01;

    /// AUTO-S with `γ = 0.01` at noise multiplier `σ > 0` (σ may be replaced by calibration).
    pub fn new(noise_multiplier: f64) -> Result<Self> {
        Self::with_gamma(noise_multiplier, Self::GAMMA)
    }

    /// Another stability constant `γ > 0` (`γ = 0` is AUTO-V, whose factor is unbounded for
    /// a zero gradient; it is refused here because a method must not divide by a possibly
    /// zero private norm).
    pub fn with_gamma(noise_multiplier: f64, gamma: f64) -> Result<Self> {
        if !(gamma.is_finite() && gamma > 0.0) {
            return Err(TrainError::InvalidConfig(format!(
                "AUTO-S stability constant γ = {gamma} must be finite and > 0"
            )));
        }
        Ok(Self {
            noise_multiplier: check_noise_multiplier(noise_multiplier)?,
            gamma,
        })
    }

    /// The stability constant `γ`.
    pub fn gamma(&self) -> f64 {
        self.gamma
    }
}

impl PrivacyMethod for AutoS {
    fn name(&self) -> String {
        "auto_s".into()
    }
    fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }
    fn set_noise_multiplier(&mut self, sigma: f64) -> Result<()> {
        self.noise_multiplier = check_noise_multiplier(sigma)?;
        Ok(())
    }
    /// `c_i = 1/(‖g_i‖ + γ)`, sensitivity 1, noise `σ`, divisor `B`.
    fn plan(&mut self, ctx: &PlanContext) -> Result<StepPlan> {
        StepPlan::new(
            Box::new(AutoClip::new(1.0, self.gamma)?),
            self.noise_multiplier,
            ctx.standard_divisor(1.0),
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
        *self = Self::with_gamma(s.noise_multiplier, s.gamma)?;
        Ok(())
    }
}
