use super::PrivacyMethod;
use crate::error::{Result, TrainError};
use crate::plan::{PlanContext, StatisticQuery, StepOutcome, StepPlan};
use dp_core::clipping::FlatClip;
use serde::{Deserialize, Serialize};

/// Adaptive clipping to a private quantile of the gradient norms (Andrew, Thakkar,
/// McMahan, Ramaswamy, "Differentially Private Learning with Adaptive Clipping", NeurIPS
/// 2021, Alg. 1 with the geometric update of §3, adapted from clients to examples).
///
/// Each step, after clipping with the current `C`:
/// 1. `u_i = 1[‖g_i‖ ≤ C]` (≤, as in the reference code);
/// 2. `b̃ = (Σ_i (u_i − ½) + N(0, σ_b²)) / B + ½`, clamped to `[0, 1]` — the shift makes
///    each example's contribution ±½ (sensitivity ½), and `B` is the **expected** batch
///    size (the realised one is private);
/// 3. `C ← C · exp(−η_C (b̃ − γ))`; the next step clips **and** scales its noise with it.
///
/// Privacy: the gradient sum (sensitivity `C`, std `σ_Δ C`) and the count (sensitivity ½,
/// std `σ_b`) are two Gaussian queries on the same Poisson sample; together they have
/// exactly the RDP of one subsampled Gaussian with `σ = (σ_Δ⁻² + (2σ_b)⁻²)^(−1/2)`. So the
/// user budgets `σ` and the gradient gets `σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−1/2)` (paper §3.1,
/// Theorem 1). The plan releases both queries and the step combines them into one
/// `PoissonSampledGaussian(q, σ)`. Requires
/// `σ < 2σ_b`. Opacus's AdaClip differs (no −½ shift, division by the realised batch
/// size), which breaks its own split; this follows TF Privacy's
/// `QuantileEstimatorQuery` instead.
///
/// ```
/// use dp_optim::{AdaptiveQuantileClip, PlanContext, PrivacyMethod};
/// // σ = 1, B = 256, σ_b = B/20 = 12.8  →  σ_Δ = 1.000764
/// let mut m = AdaptiveQuantileClip::new(1.0, 256.0).unwrap();
/// assert!((m.gradient_noise_multiplier() - 1.000764).abs() < 1e-6);
/// assert_eq!(m.clip_norm(), 0.1);
/// let ctx = PlanContext { step: 0, expected_batch_size: 256.0, rescale_by_clip_norm: false };
/// let plan = m.plan(&ctx).unwrap();
/// // The gradient (σ_Δ) and the count (σ_b / ½) are the step's two queries.
/// let q = plan.query_multipliers();
/// assert!((q[0] - 1.000764).abs() < 1e-6 && q[1] == 25.6);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveQuantileClip {
    clip_norm: f64,
    target_quantile: f64,
    clip_lr: f64,
    count_noise_std: f64,
    noise_multiplier: f64,
    gradient_noise_multiplier: f64,
    /// The last released noisy unclipped fraction `b̃` (public).
    last_fraction: Option<f64>,
}

/// `σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−1/2)`, or an error if `σ ≥ 2σ_b`.
///
/// ```
/// let s = dp_optim::methods::split_noise_multiplier(1.0, 5.0).unwrap();
/// assert!((s - 1.005038).abs() < 1e-6);
/// assert!(dp_optim::methods::split_noise_multiplier(10.0, 5.0).is_err());
/// ```
pub fn split_noise_multiplier(sigma: f64, count_noise_std: f64) -> Result<f64> {
    if !(sigma.is_finite() && sigma > 0.0) {
        return Err(TrainError::InvalidConfig(format!(
            "noise multiplier {sigma} must be > 0"
        )));
    }
    if !(count_noise_std.is_finite() && count_noise_std > 0.0) {
        return Err(TrainError::InvalidConfig(format!(
            "count noise std σ_b = {count_noise_std} must be > 0"
        )));
    }
    if sigma >= 2.0 * count_noise_std {
        return Err(TrainError::InvalidConfig(format!(
            "adaptive clipping needs σ < 2σ_b (σ = {sigma}, σ_b = {count_noise_std}): the count \
             query alone would cost more than the whole budget; raise σ_b"
        )));
    }
    Ok((sigma.powi(-2) - (2.0 * count_noise_std).powi(-2)).powf(-0.5))
}

impl AdaptiveQuantileClip {
    /// The paper's defaults: `C₀ = 0.1`, `γ = 0.5` (median), `η_C = 0.2`,
    /// `σ_b = B/20`, for budgeted noise multiplier `σ` and expected batch size `B`.
    pub fn new(noise_multiplier: f64, expected_batch_size: f64) -> Result<Self> {
        Self::with_params(noise_multiplier, 0.1, 0.5, 0.2, expected_batch_size / 20.0)
    }

    /// All parameters explicit.
    pub fn with_params(
        noise_multiplier: f64,
        initial_clip: f64,
        target_quantile: f64,
        clip_lr: f64,
        count_noise_std: f64,
    ) -> Result<Self> {
        if !(initial_clip.is_finite() && initial_clip > 0.0) {
            return Err(TrainError::InvalidConfig(format!(
                "initial clip {initial_clip} must be > 0"
            )));
        }
        if !(0.0..=1.0).contains(&target_quantile) {
            return Err(TrainError::InvalidConfig(format!(
                "target quantile {target_quantile} must be in [0, 1]"
            )));
        }
        if !(clip_lr.is_finite() && clip_lr >= 0.0) {
            return Err(TrainError::InvalidConfig(format!(
                "clip learning rate {clip_lr} must be ≥ 0"
            )));
        }
        Ok(Self {
            clip_norm: initial_clip,
            target_quantile,
            clip_lr,
            count_noise_std,
            noise_multiplier,
            gradient_noise_multiplier: split_noise_multiplier(noise_multiplier, count_noise_std)?,
            last_fraction: None,
        })
    }

    /// The last released noisy fraction of unclipped examples.
    pub fn last_unclipped_fraction(&self) -> Option<f64> {
        self.last_fraction
    }

    /// The count noise std `σ_b`.
    pub fn count_noise_std(&self) -> f64 {
        self.count_noise_std
    }

    /// The clip bound `C` of the next step.
    pub fn clip_norm(&self) -> f64 {
        self.clip_norm
    }

    /// The gradient sum's noise multiplier `σ_Δ` after the split.
    pub fn gradient_noise_multiplier(&self) -> f64 {
        self.gradient_noise_multiplier
    }

    /// Updates `C` from a released noisy count `Σ_i (u_i − ½) + N(0, σ_b²)` (Alg. 1, the
    /// geometric update), dividing by the **expected** batch size.
    pub fn update_from_count(
        &mut self,
        noisy_shifted_count: f64,
        expected_batch_size: f64,
    ) -> Result<()> {
        if !(expected_batch_size.is_finite() && expected_batch_size > 0.0) {
            return Err(TrainError::InvalidConfig(format!(
                "expected batch size {expected_batch_size} must be > 0"
            )));
        }
        let b = (noisy_shifted_count / expected_batch_size + 0.5).clamp(0.0, 1.0);
        self.last_fraction = Some(b);
        self.clip_norm *= (-self.clip_lr * (b - self.target_quantile)).exp();
        Ok(())
    }
}

impl PrivacyMethod for AdaptiveQuantileClip {
    fn name(&self) -> String {
        "andrew_adaptive".into()
    }
    fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }
    fn set_noise_multiplier(&mut self, sigma: f64) -> Result<()> {
        self.gradient_noise_multiplier = split_noise_multiplier(sigma, self.count_noise_std)?;
        self.noise_multiplier = sigma;
        Ok(())
    }
    /// Clip to `C`, noise `σ_Δ C`, and release the shifted count `Σ_i (1[‖g_i‖ ≤ C] − ½)`
    /// (sensitivity ½, std `σ_b`). Non-finite norms (examples dropped by the NaN policy)
    /// count as clipped: any 0/1 indicator keeps the sensitivity at ½.
    fn plan(&mut self, ctx: &PlanContext) -> Result<StepPlan> {
        let c = self.clip_norm;
        let count = StatisticQuery::new("unclipped_count", 0.5, self.count_noise_std, move |n| {
            if n <= c {
                0.5
            } else {
                -0.5
            }
        })?;
        Ok(StepPlan::new(
            Box::new(FlatClip::new(c)?),
            self.gradient_noise_multiplier,
            ctx.standard_divisor(c),
        )?
        .with_statistic(count))
    }
    fn after_step(&mut self, outcome: &StepOutcome) -> Result<()> {
        let count = *outcome.statistics.first().ok_or_else(|| {
            TrainError::InvalidConfig("adaptive clipping: the noisy count was not released".into())
        })?;
        self.update_from_count(count, outcome.expected_batch_size)
    }
    fn state(&self) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(self)?)
    }
    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        *self = serde_json::from_value(state.clone())?;
        Ok(())
    }
}
