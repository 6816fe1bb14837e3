//! # dp-optim: private optimisers and the private training loop
//!
//! - [`BaseOptimizer`]: what happens to a private gradient ([`Sgd`] with momentum and weight
//!   decay, [`Adam`] / AdamW) — knows nothing of privacy.
//! - [`PrivacyMethod`]: how a step clips, how much noise it adds, what it releases and how
//!   it adapts ([`FixedClip`] = DP-SGD; [`AdaptiveQuantileClip`] = Andrew et al. 2021).
//!   Each adaptive method of the literature is one new file in [`methods`].
//! - [`PrivateTrainer`]: dataset → Poisson sampler → per-sample clipping (dp-core) → noise
//!   → optimiser → accountant (dp-accounting), with a budget that is never exceeded,
//!   noise calibration from a target ε, physical batches under a memory cap, per-step and
//!   per-epoch records, and checkpoints that resume the accountant.
//!
//! On the CPU, call `dp_core::configure_cpu_threads()` at the start of `main` (see there).
//!
//! ```
//! use dp_optim::{AdaptiveQuantileClip, PrivateTrainer, Sgd, TrainerConfig};
//! let data = dp_data::load_bundled_mnist().unwrap();
//! let model = dp_core::models::mlp(&[784, 16, 10], &candle_core::Device::Cpu, 0).unwrap();
//! let cfg = TrainerConfig::new(0.1, 100.0, 1e-5).with_budget(3.0).calibrate_noise_from_budget().with_seed(0);
//! let method = AdaptiveQuantileClip::new(1.0, 100.0).unwrap(); // σ replaced by calibration
//! let mut t = PrivateTrainer::new(model, Box::new(Sgd::new(0.5)), Box::new(method), cfg, &data.train).unwrap();
//! let report = t.train(&data.train, Some(&data.test)).unwrap();
//! assert!(report.epsilon <= 3.0);
//! ```

mod accountant;
mod checkpoint;
mod error;
mod fused;
pub mod methods;
mod optimizer;
mod tensor_state;
mod trainer;

pub use accountant::AnyAccountant;
pub use error::{Result, TrainError};
pub use methods::{AdaptiveQuantileClip, FixedClip, PrivacyMethod};
pub use optimizer::{Adam, BaseOptimizer, OptimizerState, Sgd};
pub use tensor_state::TensorState;
pub use trainer::{
    evaluate, EpochRecord, PrivateTrainer, StepRecord, StopReason, TrainReport, TrainerConfig,
};
