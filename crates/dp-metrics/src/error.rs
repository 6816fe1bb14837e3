//! The crate's error type.

/// Errors returned by every fallible function of this crate. Library code never panics on bad
/// input; it returns one of these instead.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Two inputs that must agree in shape (or length) do not.
    #[error("shape mismatch: {0}")]
    ShapeMismatch(String),
    /// An input that must be non-empty is empty.
    #[error("empty input: {0}")]
    EmptyInput(String),
    /// A NaN or infinity where a finite number is required.
    #[error("non-finite value: {0}")]
    NonFinite(String),
    /// A parameter outside its valid range (a negative clip norm, a grid of one point, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An error from candle.
    #[error("candle error: {0}")]
    Candle(#[from] candle_core::Error),
    /// An I/O error (writing CSV/JSON/JSONL or images).
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    /// A JSON (de)serialisation error.
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
    /// An error from the plotting backend.
    #[error("plot error: {0}")]
    Plot(String),
}

/// `Result` with [`MetricsError`].
pub type Result<T> = std::result::Result<T, MetricsError>;

pub(crate) fn ensure_finite(values: &[f64], what: &str) -> Result<()> {
    if values.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(MetricsError::NonFinite(what.to_string()))
    }
}

pub(crate) fn ensure_nonempty<T>(values: &[T], what: &str) -> Result<()> {
    if values.is_empty() {
        Err(MetricsError::EmptyInput(what.to_string()))
    } else {
        Ok(())
    }
}
