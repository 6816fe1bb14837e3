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
    /// An expected batch size larger than the training set (the sampling rate would exceed 1).
    #[error(
        "expected batch size {batch_size} is larger than the training set ({dataset_len} \
         examples): the sampling rate q = B/N would be {}",
        .batch_size / *.dataset_len as f64
    )]
    BatchLargerThanDataset {
        /// The configured expected batch size.
        batch_size: f64,
        /// The training set's size.
        dataset_len: usize,
    },
    /// A number outside the range it must lie in (a target ε, δ, epochs, batch size or clip
    /// bound of [`crate::make_private`]).
    #[error("{name} = {value} is out of range: it must be {expected}")]
    OutOfRange {
        /// What the number is (`"ε"`, `"δ"`, `"epochs"`, `"expected batch size"`,
        /// `"clip norm"`).
        name: &'static str,
        /// The value given.
        value: f64,
        /// The range it must lie in.
        expected: &'static str,
    },
    /// A learning rate that is not a finite positive number.
    #[error("learning rate {0} must be finite and > 0")]
    InvalidLearningRate(f64),
    /// The model's output width is not what the loss needs for the dataset's classes.
    #[error(
        "the model outputs {width} values per example, but the loss needs {expected} for a \
         dataset of {classes} classes"
    )]
    OutputWidth {
        /// The model's output width (last dimension of its output for one example).
        width: usize,
        /// The width the loss needs.
        expected: usize,
        /// The dataset's number of classes.
        classes: usize,
    },
    /// Examples whose features are NaN or infinite, by their index in the dataset.
    #[error(
        "non-finite feature values in {} example(s) of the {set} set (dataset indices: {:?})",
        .indices.len(), &.indices[..indices.len().min(16)]
    )]
    NonFiniteExamples {
        /// Which set ("training" or "evaluation").
        set: String,
        /// Their indices in that dataset.
        indices: Vec<usize>,
    },
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
