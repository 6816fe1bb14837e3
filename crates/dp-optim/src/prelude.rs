//! What a private training script needs from dp-optim, in one `use`:
//! `use dp_optim::prelude::*;` (the root crate's `dp_lab::prelude` adds the model, data and
//! accounting side).
//!
//! ```
//! use dp_optim::prelude::*;
//! let data = dp_data::load_bundled_mnist().unwrap();
//! let model = dp_core::models::mlp(&[784, 8, 10], &candle_core::Device::Cpu, 0).unwrap();
//! let target = PrivacyTarget { epsilon: 1.0, delta: 1e-5, epochs: 0.2, batch_size: 100.0 };
//! let t = make_private(model, Sgd::new(0.1), &data.train, target, Method::auto_s()).unwrap();
//! assert_eq!(t.total_steps(), 8);
//! ```

pub use crate::{
    batch_tensors, evaluate, make_private, Adam, AdamBc, AdaptiveQuantileClip, AutoS, Bam,
    BaseOptimizer, BatchSize, ClipWith, Delta, EpochRecord, Epochs, FixedClip, GlobalAdapt,
    LrSchedule, Method, MethodContext, MethodSpec, PrivacyMethod, PrivacyTarget, PrivateTrainer,
    Regime, Sgd, StepRecord, TrainError, TrainHooks, TrainReport, TrainerConfig,
};
