use super::{check_noise_multiplier, PrivacyMethod};
use crate::error::{Result, TrainError};
use crate::plan::{PlanContext, StepOutcome, StepPlan};
use dp_core::clipping::FlatClip;
use serde::{Deserialize, Serialize};

/// DP-SGD's fixed clipping (Abadi et al. 2016, Alg. 1): clip every example to `C`, add
/// `N(0, σ²C²)` to the sum; one Poisson-subsampled Gaussian `(q, σ)` per step.
///
/// ```
/// use dp_optim::{FixedClip, PlanContext, PrivacyMethod};
/// let mut m = FixedClip::new(0.1, 1.1).unwrap();
/// let ctx = PlanContext { step: 0, expected_batch_size: 256.0, rescale_by_clip_norm: false };
/// let plan = m.plan(&ctx).unwrap();
/// assert_eq!(plan.sensitivity(), 0.1);
/// assert_eq!(plan.query_multipliers(), vec![1.1]);
/// assert_eq!(plan.divisor, 256.0);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixedClip {
    clip_norm: f64,
    noise_multiplier: f64,
}

impl FixedClip {
    /// Clip bound `C > 0` and noise multiplier `σ > 0` (σ may be replaced later by
    /// calibration).
    pub fn new(clip_norm: f64, noise_multiplier: f64) -> Result<Self> {
        if !(clip_norm.is_finite() && clip_norm > 0.0) {
            return Err(TrainError::InvalidConfig(format!(
                "clip norm {clip_norm} must be > 0"
            )));
        }
        let mut m = Self {
            clip_norm,
            noise_multiplier: 1.0,
        };
        m.set_noise_multiplier(noise_multiplier)?;
        Ok(m)
    }
    /// The clip bound `C`.
    pub fn clip_norm(&self) -> f64 {
        self.clip_norm
    }
}

impl PrivacyMethod for FixedClip {
    fn name(&self) -> String {
        "fixed".into()
    }
    fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }
    fn set_noise_multiplier(&mut self, sigma: f64) -> Result<()> {
        self.noise_multiplier = check_noise_multiplier(sigma)?;
        Ok(())
    }
    fn plan(&mut self, ctx: &PlanContext) -> Result<StepPlan> {
        StepPlan::new(
            Box::new(FlatClip::new(self.clip_norm)?),
            self.noise_multiplier,
            ctx.standard_divisor(self.clip_norm),
        )
    }
    fn after_step(&mut self, _: &StepOutcome) -> Result<()> {
        Ok(())
    }
    fn state(&self) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(self)?)
    }
    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        *self = serde_json::from_value(state.clone())?;
        Ok(())
    }
}
