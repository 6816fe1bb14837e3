//! Privacy methods: how each step clips, how much noise it adds, what it releases, and
//! how it adapts. One file per method.
//!
//! # Contract
//! A method's [`PrivacyMethod::step_events`] must describe **everything** a step releases
//! (the noisy gradient sum and any noisy statistic its `after_step` uses), so that the
//! accountant's ε covers it. Statistics from [`ClipStats`] are not private: a method may
//! only let them influence training through a noisy release it accounts for.

mod andrew_adaptive;
mod fixed;

pub use andrew_adaptive::{split_noise_multiplier, AdaptiveQuantileClip};
pub use fixed::FixedClip;

use crate::error::Result;
use dp_accounting::DpEvent;
use dp_core::{ClipStats, GaussianNoise};

/// A DP training method (clipping rule + noise + adaptation).
pub trait PrivacyMethod: Send {
    /// A short name for records (`"fixed"`, `"andrew_adaptive"`, ...).
    fn name(&self) -> String;
    /// The clipping bound `C` of the next step.
    fn clip_norm(&self) -> f64;
    /// The noise multiplier of the gradient sum (noise std = multiplier × `C`).
    fn gradient_noise_multiplier(&self) -> f64;
    /// The noise multiplier the user budgets for (what one step costs, as one
    /// Poisson-subsampled Gaussian), before any split.
    fn noise_multiplier(&self) -> f64;
    /// Sets the budgeted noise multiplier (e.g. after calibration from a target ε).
    fn set_noise_multiplier(&mut self, sigma: f64) -> Result<()>;
    /// What one step with sampling rate `q` releases, as accounting events.
    fn step_events(&self, sampling_rate: f64) -> Result<Vec<DpEvent>>;
    /// Called after each step with the (non-private) statistics of the realised batch;
    /// `expected_batch_size` is the public normaliser. Any use of `stats` must go through
    /// noise drawn from `noise` and be covered by [`PrivacyMethod::step_events`].
    fn after_step(
        &mut self,
        stats: &ClipStats,
        expected_batch_size: f64,
        noise: &mut GaussianNoise,
    ) -> Result<()>;
    /// Method state for checkpoints.
    fn state(&self) -> Result<serde_json::Value>;
    /// Restores [`PrivacyMethod::state`].
    fn load_state(&mut self, state: &serde_json::Value) -> Result<()>;
}
