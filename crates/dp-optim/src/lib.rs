//! # dp-optim: private optimisers and the private training loop
//!
//! - [`BaseOptimizer`]: what happens to a private gradient ([`Sgd`] with momentum and weight
//!   decay, [`Adam`] / AdamW) — knows nothing of privacy.
//! - [`PrivacyMethod`]: plans each step as a [`StepPlan`] (clip strategy, noise multiplier,
//!   public divisor, noisy statistics, optional per-example objective) and adapts from the
//!   [`StepOutcome`] ([`FixedClip`] = DP-SGD; [`ClipWith`] = DP-SGD with any dp-core clip
//!   strategy, AUTO-S and per-layer among them; [`AutoS`] = Bu et al. 2023 with its
//!   learning-rate convention; [`AdaptiveQuantileClip`] = Andrew et al. 2021;
//!   [`methods::AutoDpSgd`] = Chilukoti et al. 2023 made DP, and
//!   [`methods::AutoDpSgdPublishedNotDp`] as published, which is not DP and runs only in
//!   [`Regime::DataDependentNoise`]). Each method of the literature is one new file in
//!   [`methods`].
//! - [`take_step`]: the one step (gradients → clip → noise → divisor → update), in any
//!   [`Regime`] (DP, clip-only, noise-only, non-private); the trainer, `bench_step` and
//!   `loss_landscape` all call it.
//! - [`PrivateTrainer`]: sampler → plan → step → accountant (dp-accounting), with the
//!   accounting event derived from the sampler's scheme and the plan's releases, a budget
//!   that is never exceeded, noise calibration from a target ε (schedules and multi-query
//!   steps included), any loss and sampler, physical batches under a memory cap, per-step
//!   and per-epoch records that say what their ε certifies, and checkpoints that resume
//!   the accountant.
//! - [`make_private`] / [`PrivateTrainer::with_epsilon`]: the one-call entry (Opacus's
//!   `make_private_with_epsilon`): model, optimiser, training set, a [`PrivacyTarget`]
//!   (ε, δ, epochs, batch size) and a [`Method`] given without σ → a trainer whose σ is
//!   calibrated to spend the target. [`prelude`] brings in what a training script needs.
//!
//! On the CPU, call `dp_core::configure_cpu_threads()` at the start of `main` (see there).
//!
//! ```
//! use dp_optim::prelude::*;
//! let data = dp_data::load_bundled_mnist().unwrap();
//! let model = dp_core::models::mlp(&[784, 16, 10], &candle_core::Device::Cpu, 0).unwrap();
//! let target = PrivacyTarget { epsilon: 3.0, delta: 1e-5, epochs: 0.1, batch_size: 100.0 };
//! let mut t = PrivateTrainer::with_epsilon(model, Sgd::new(0.5), target, Method::adaptive_clipping(1.0))
//!     .configure(|c| c.with_seed(0))
//!     .build(&data.train)
//!     .unwrap();
//! let report = t.train(&data.train, Some(&data.test)).unwrap();
//! assert!(report.epsilon <= 3.0);
//! ```

mod accounting;
mod averaging;
mod checkpoint;
mod config;
mod error;
mod evaluate;
pub mod methods;
pub mod optim;
mod plan;
pub mod prelude;
mod private;
mod pruning;
mod records;
mod schedule;
mod state;
mod step;
mod tensor_state;
mod trainer;

pub use averaging::{Averaging, ParamAverage};
pub use checkpoint::checkpoint_step;
pub use config::{BatchSize, ConfigWarning, Delta, Epochs, TrainerConfig};
/// The accountant a trainer uses, chosen at run time (from dp-accounting).
pub use dp_accounting::AnyAccountant;
pub use error::{Result, TrainError};
pub use evaluate::{batch_tensors, evaluate, evaluate_with, predicted_classes};
pub use methods::{
    AboveBound, AdaptiveQuantileClip, AutoS, Bam, ClipWith, FixedClip, GlobalAdapt, PrivacyMethod,
};
pub use methods::{MethodContext, MethodSpec};
pub use optim::{Adam, AdamBc, BaseOptimizer, OptimizerState, Sgd};
pub use plan::{PerExampleObjective, PlanContext, Regime, StatisticQuery, StepOutcome, StepPlan};
pub use private::{make_private, Method, PrivacyTarget};
pub use pruning::{MaskSource, TrainingMask};
pub use records::{EpochRecord, Guarantee, PrivacyReport, StepRecord, StopReason, TrainReport};
pub use schedule::LrSchedule;
pub use step::{take_step, ClippingBias, StepEnv, StepResult};
pub use tensor_state::TensorState;
pub use trainer::{
    BoxedLoss, BoxedSampler, EpochHook, PrivateTrainer, StepHook, TrainHooks, TrainerBuilder,
};
