//! The error type of dp-optim.

use thiserror::Error;

/// Everything that can go wrong while training privately.
#[derive(Debug, Error)]
pub enum TrainError {
    /// From dp-core (shapes, non-finite gradients, invalid clip norms, ...).
    #[error(transparent)]
    Core(#[from] dp_core::CoreError),
    /// From candle directly.
    #[error("candle error: {0}")]
    Candle(#[from] candle_core::Error),
    /// From dp-accounting (invalid q, σ, δ, calibration failure, ...).
    #[error(transparent)]
    Accounting(#[from] dp_accounting::AccountingError),
    /// From dp-data (sampling rate, corrupt files, ...).
    #[error(transparent)]
    Data(#[from] dp_data::DataError),
    /// A configuration that cannot be trained privately.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A sampler whose scheme the accountant's events do not describe.
    #[error("sampling does not match the accounting: {0}")]
    SamplingMismatch(String),
    /// A checkpoint that cannot be read or does not match the model.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file involved.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// Filesystem error.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// JSON (de)serialisation error.
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
}

/// Result alias for dp-optim.
pub type Result<T> = std::result::Result<T, TrainError>;
