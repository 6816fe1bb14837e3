use super::{check_noise_multiplier, PrivacyMethod};
use crate::error::{Result, TrainError};
use crate::plan::{PlanContext, StepOutcome, StepPlan};
use dp_core::ClipStrategy;

type MakeClip = Box<dyn FnMut() -> Result<Box<dyn ClipStrategy>> + Send>;

/// DP-SGD with any clip strategy of dp-core or your own: per-layer clipping (McMahan et
/// al. 2018), AUTO-S (Bu et al. 2023), caller-supplied per-example factors, ... The noise
/// std is `σ × the strategy's sensitivity`; the divisor is the expected batch size (or
/// `B·S` with [`crate::TrainerConfig::rescale_by_clip_norm`]). One Poisson-subsampled
/// Gaussian `(q, σ)` per step.
///
/// ```
/// use dp_optim::{ClipWith, PlanContext, PrivacyMethod};
/// use dp_core::clipping::AutoClip;
/// let mut m = ClipWith::new("auto_s", 1.0, || Ok(Box::new(AutoClip::auto_s()))).unwrap();
/// let ctx = PlanContext { step: 0, expected_batch_size: 64.0, rescale_by_clip_norm: false };
/// assert_eq!(m.plan(&ctx).unwrap().sensitivity(), 1.0);
/// ```
pub struct ClipWith {
    name: String,
    noise_multiplier: f64,
    make: MakeClip,
}

impl ClipWith {
    /// A method named `name` (recorded in checkpoints) that builds each step's strategy with
    /// `make`, at noise multiplier `σ > 0`.
    pub fn new(
        name: impl Into<String>,
        noise_multiplier: f64,
        make: impl FnMut() -> Result<Box<dyn ClipStrategy>> + Send + 'static,
    ) -> Result<Self> {
        let mut m = Self {
            name: name.into(),
            noise_multiplier: 1.0,
            make: Box::new(make),
        };
        m.set_noise_multiplier(noise_multiplier)?;
        Ok(m)
    }
}

impl PrivacyMethod for ClipWith {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }
    fn set_noise_multiplier(&mut self, sigma: f64) -> Result<()> {
        self.noise_multiplier = check_noise_multiplier(sigma)?;
        Ok(())
    }
    fn plan(&mut self, ctx: &PlanContext) -> Result<StepPlan> {
        let clip = (self.make)()?;
        let s = clip.sensitivity();
        StepPlan::new(clip, self.noise_multiplier, ctx.standard_divisor(s))
    }
    fn after_step(&mut self, _: &StepOutcome) -> Result<()> {
        Ok(())
    }
    fn state(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({ "noise_multiplier": self.noise_multiplier }))
    }
    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let sigma = state
            .get("noise_multiplier")
            .and_then(|v| v.as_f64())
            .ok_or_else(|| TrainError::InvalidConfig("ClipWith state has no σ".into()))?;
        self.set_noise_multiplier(sigma)
    }
}
