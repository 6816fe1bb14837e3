//! # dp-lab
//!
//! Differentially private deep learning in Rust. This crate re-exports the workspace's
//! crates under short names so that an application can depend on one crate:
//!
//! - [`core`]: per-sample gradients, clipping and noise (`dp-core`)
//! - [`accounting`]: RDP and PRV accountants and noise calibration (`dp-accounting`)
//! - [`optim`]: DP optimisers, adaptive clipping and the private trainer (`dp-optim`)
//! - [`metrics`]: loss-landscape, optimisation and representation metrics (`dp-metrics`)
//! - [`data`]: dataset loaders, Poisson sampling and batching (`dp-data`)
//! - [`prelude`]: everything a training script needs, in one `use dp_lab::prelude::*;`

pub use dp_accounting as accounting;
pub use dp_core as core;
pub use dp_data as data;
pub use dp_metrics as metrics;
pub use dp_optim as optim;

/// What a private training script needs, in one `use dp_lab::prelude::*;`: models and
/// layers (dp-core), the one-call entry [`make_private`](crate::optim::make_private) with
/// its [`PrivacyTarget`](crate::optim::PrivacyTarget) and [`Method`](crate::optim::Method),
/// the trainer, optimisers and methods (dp-optim), the budget types (dp-accounting) and the
/// data loaders (dp-data).
///
/// ```
/// use dp_lab::prelude::*;
/// let dev = Device::Cpu;
/// let data = load_bundled_mnist().unwrap();
/// let mut init = Init::seeded(0);
/// let model = Sequential::new(&dev)
///     .push(Reshape::new(&[784]))
///     .push(Linear::new(784, 10, true, &mut init, &dev).unwrap());
/// let target = PrivacyTarget { epsilon: 2.0, delta: 1e-5, epochs: 0.25, batch_size: 100.0 };
/// let mut trainer = make_private(model, Sgd::new(0.5), &data.train, target, Method::dp_sgd(1.0)).unwrap();
/// let report = trainer.train(&data.train, Some(&data.test)).unwrap();
/// assert!(report.epsilon <= 2.0);
/// assert!(PrivacyBudget::new(report.epsilon, report.delta).is_ok());
/// ```
pub mod prelude {
    pub use dp_accounting::{AccountantKind, PrivacyBudget};
    pub use dp_core::candle_core::{DType, Device, Tensor, D};
    pub use dp_core::graph::{softmax, GraphModel};
    pub use dp_core::layers::*;
    pub use dp_core::{
        check_per_sample_gradients, configure_cpu_threads, layer_sq_norms,
        named_per_example_gradients, CrossEntropy, GradMode, GradOptions, Init, Loss, Model,
        Residual, Sequential,
    };
    pub use dp_data::{
        load, load_bundled_mnist, Dataset, DatasetName, Normalize, PoissonSampler, TrainTest,
    };
    pub use dp_optim::prelude::*;
}

#[cfg(feature = "pipeline")]
pub mod allocator;
#[cfg(feature = "pipeline")]
pub mod pipeline;
