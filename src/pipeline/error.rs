//! The pipeline's errors: a config error names the file, the field and what is allowed.

use std::path::PathBuf;

/// What can go wrong in the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A value in a run or sweep file is unknown or out of range.
    #[error("{}{}{message}", if file.is_empty() { String::new() } else { format!("{file}: ") }, if field.is_empty() { String::new() } else { format!("field `{field}`: ") })]
    Config {
        /// The file (empty when not known yet).
        file: String,
        /// The field, dotted (`optimizer.lr`), empty when the whole file is at fault.
        field: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// Reading or writing a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A result directory that cannot be used as asked.
    #[error("{}: {message}", dir.display())]
    ResultDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        message: String,
    },
    /// Training.
    #[error(transparent)]
    Train(#[from] dp_optim::TrainError),
    /// Data loading.
    #[error(transparent)]
    Data(#[from] dp_data::DataError),
    /// The engine.
    #[error(transparent)]
    Core(#[from] dp_core::CoreError),
    /// A metric.
    #[error(transparent)]
    Metrics(#[from] dp_metrics::MetricsError),
    /// candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// Something else (a worker that died, a scheduler that refused).
    #[error("{0}")]
    Other(String),
}

/// The pipeline's result type.
pub type Result<T> = std::result::Result<T, PipelineError>;

impl PipelineError {
    /// A config error.
    pub fn config(file: &str, field: &str, message: impl Into<String>) -> Self {
        PipelineError::Config {
            file: file.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, naming `file` if it named none.
    pub fn in_file(self, file: &str) -> Self {
        match self {
            PipelineError::Config {
                file: f,
                field,
                message,
            } if f.is_empty() => PipelineError::Config {
                file: file.into(),
                field,
                message,
            },
            other => other,
        }
    }
}

/// Attaches the path to an io error.
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PipelineError {
    let path = path.into();
    move |source| PipelineError::Io { path, source }
}
