//! The crate's single error type.
//!
//! Every loader failure names the file involved and what was wrong with it, because the
//! usual cause is a half-downloaded or mis-named file and the user needs to know which one.
//! Loaders never panic on bad input and never silently return fewer examples than the
//! files declare.

use std::path::PathBuf;

/// Errors produced by `dp-data`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File that failed.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The file starts like a gzip stream but does not decompress.
    #[error("{path}: corrupt gzip stream: {reason}")]
    Gzip {
        /// File that failed.
        path: PathBuf,
        /// What the decompressor reported.
        reason: String,
    },

    /// The IDX magic number is not the one expected for this kind of file.
    #[error("{path}: bad magic number {found:#010x}, expected {expected:#010x}")]
    BadMagic {
        /// File that failed.
        path: PathBuf,
        /// Magic number read from the file.
        found: u32,
        /// Magic number required.
        expected: u32,
    },

    /// The file is shorter than its header (or the format) requires.
    #[error("{path}: truncated file: expected {expected} bytes, found {found}")]
    Truncated {
        /// File that failed.
        path: PathBuf,
        /// Bytes the header/format requires.
        expected: u64,
        /// Bytes actually present.
        found: u64,
    },

    /// The file is structurally invalid in another way (e.g. trailing bytes).
    #[error("{path}: malformed file: {reason}")]
    Malformed {
        /// File that failed.
        path: PathBuf,
        /// Description of the problem.
        reason: String,
    },

    /// An image file and its label file disagree on the number of examples.
    #[error(
        "count mismatch: {images_path} holds {images} images but {labels_path} holds {labels} labels"
    )]
    CountMismatch {
        /// Image file.
        images_path: PathBuf,
        /// Number of images declared.
        images: usize,
        /// Label file.
        labels_path: PathBuf,
        /// Number of labels declared.
        labels: usize,
    },

    /// Example dimensions differ from what the dataset requires.
    #[error("{path}: dimensions mismatch: found {found:?}, expected {expected:?}")]
    DimsMismatch {
        /// File that failed.
        path: PathBuf,
        /// Dimensions found.
        found: Vec<usize>,
        /// Dimensions required.
        expected: Vec<usize>,
    },

    /// A label is outside `0..num_classes`.
    #[error("{path}: label {label} of example {index} is outside 0..{num_classes}")]
    LabelOutOfRange {
        /// File that failed.
        path: PathBuf,
        /// Position of the offending example.
        index: usize,
        /// Label read.
        label: u32,
        /// Number of classes of the dataset.
        num_classes: usize,
    },

    /// A CSV line could not be parsed.
    #[error("{path}:{line}: {reason}")]
    Csv {
        /// File that failed.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Description of the problem.
        reason: String,
    },

    /// No data for the dataset was found in any searched location.
    #[error("dataset {name} not found; searched: {}", display_paths(searched))]
    NotFound {
        /// Dataset looked for.
        name: String,
        /// Locations searched, in order.
        searched: Vec<PathBuf>,
    },

    /// A Poisson sampling rate outside `(0, 1]`.
    #[error("invalid sampling rate {0}: must lie in (0, 1]")]
    InvalidSamplingRate(f64),

    /// A batch size of zero or larger than the dataset where that is not allowed.
    #[error("invalid batch size {batch_size} for a dataset of {n} examples")]
    InvalidBatchSize {
        /// Requested batch size.
        batch_size: usize,
        /// Number of examples.
        n: usize,
    },

    /// A sampler state does not match the sampler it is restored into.
    #[error("invalid sampler state: {0}")]
    InvalidState(String),

    /// Any other invalid argument (bad shapes, lengths, probabilities, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "(nothing)".to_string();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
