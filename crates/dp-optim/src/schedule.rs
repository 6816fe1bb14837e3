//! Learning-rate schedules: the factor on the optimiser's base learning rate at each step.
//! A schedule depends only on the step counter and the run's public plan (steps per epoch,
//! planned steps), so it costs no privacy. The trainer applies it before every step
//! ([`crate::TrainerConfig::with_lr_schedule`]); the base rate is the optimiser's own when
//! the trainer is built or resumed.

use crate::error::{Result, TrainError};
use serde::{Deserialize, Serialize};

/// A learning-rate schedule, as a factor of the base rate.
///
/// ```
/// use dp_optim::LrSchedule;
/// // 10 steps per epoch, 101 planned steps (0..=100).
/// let f = |s: &LrSchedule, step| s.factor(step, 10, 101);
/// assert_eq!(f(&LrSchedule::Constant, 57), 1.0);
/// let step = LrSchedule::Step { every_epochs: 3, factor: 0.5 };
/// assert_eq!((f(&step, 29), f(&step, 30), f(&step, 60)), (1.0, 0.5, 0.25));
/// let cos = LrSchedule::Cosine { floor: 0.0 };
/// assert_eq!(f(&cos, 0), 1.0);
/// assert!((f(&cos, 50) - 0.5).abs() < 1e-12);
/// assert!(f(&cos, 100).abs() < 1e-12);
/// let warm = LrSchedule::WarmUp { steps: 4, then: Box::new(LrSchedule::Constant) };
/// assert_eq!((f(&warm, 0), f(&warm, 3), f(&warm, 4)), (0.25, 1.0, 1.0));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Multiplied by `factor` every `every_epochs` epochs (whole epochs of the run's
    /// `⌈1/q⌉` steps).
    Step {
        /// Epochs between two decays (≥ 1).
        every_epochs: u64,
        /// Factor of each decay, in (0, 1].
        factor: f64,
    },
    /// Cosine annealing from the base rate (step 0) to `floor` × base at the last planned
    /// step: `floor + (1 − floor)·(1 + cos(π t/T))/2`.
    Cosine {
        /// The final factor, in [0, 1].
        floor: f64,
    },
    /// Linear warm-up: factor `(t + 1)/steps` for the first `steps` steps, then `then`
    /// (whose clock starts at 0 where warm-up started, so a cosine still ends at the last
    /// planned step).
    WarmUp {
        /// Warm-up steps (≥ 1).
        steps: u64,
        /// The schedule after warm-up.
        then: Box<LrSchedule>,
    },
}

impl LrSchedule {
    /// The factor at (0-based) `step` of a run of `total_steps` planned steps with
    /// `steps_per_epoch` steps per epoch.
    pub fn factor(&self, step: u64, steps_per_epoch: u64, total_steps: u64) -> f64 {
        match self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Step {
                every_epochs,
                factor,
            } => {
                let epoch = step / steps_per_epoch.max(1);
                factor.powf((epoch / (*every_epochs).max(1)) as f64)
            }
            LrSchedule::Cosine { floor } => {
                let last = total_steps.saturating_sub(1).max(1) as f64;
                let t = (step as f64 / last).min(1.0);
                floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            LrSchedule::WarmUp { steps, then } => {
                if step < *steps {
                    (step + 1) as f64 / *steps as f64
                } else {
                    then.factor(step, steps_per_epoch, total_steps)
                }
            }
        }
    }

    /// Refuses parameters out of range, naming the parameter.
    ///
    /// ```
    /// use dp_optim::LrSchedule;
    /// assert!(LrSchedule::Step { every_epochs: 0, factor: 0.5 }.validate().is_err());
    /// assert!(LrSchedule::Cosine { floor: 1.5 }.validate().is_err());
    /// assert!(LrSchedule::Cosine { floor: 0.1 }.validate().is_ok());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| {
            Err(TrainError::InvalidConfig(format!(
                "learning-rate schedule: {m}"
            )))
        };
        match self {
            LrSchedule::Constant => Ok(()),
            LrSchedule::Step {
                every_epochs,
                factor,
            } => {
                if *every_epochs == 0 {
                    return bad("every_epochs must be ≥ 1".into());
                }
                if !(*factor > 0.0 && *factor <= 1.0) {
                    return bad(format!("step factor {factor} must be in (0, 1]"));
                }
                Ok(())
            }
            LrSchedule::Cosine { floor } => {
                if !(0.0..=1.0).contains(floor) {
                    return bad(format!("cosine floor {floor} must be in [0, 1]"));
                }
                Ok(())
            }
            LrSchedule::WarmUp { steps, then } => {
                if *steps == 0 {
                    return bad("warm-up steps must be ≥ 1".into());
                }
                then.validate()
            }
        }
    }
}
