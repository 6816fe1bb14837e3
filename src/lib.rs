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

pub use dp_accounting as accounting;
pub use dp_core as core;
pub use dp_data as data;
pub use dp_metrics as metrics;
pub use dp_optim as optim;

#[cfg(feature = "pipeline")]
pub mod pipeline;
