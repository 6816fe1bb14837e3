//! The one error type of dp-core.

use thiserror::Error;

/// Everything that can go wrong while computing a privatised gradient.
///
/// Library code never panics on bad input; it returns one of these instead.
#[derive(Debug, Error)]
pub enum CoreError {
    /// An error raised by candle (shape mismatch inside an op, device error, ...).
    #[error("candle error: {0}")]
    Candle(#[from] candle_core::Error),
    /// A tensor did not have the shape a layer or function requires.
    #[error("shape mismatch in {context}: expected {expected}, got {got:?}")]
    Shape {
        /// Where the mismatch was found.
        context: String,
        /// What was expected, in words.
        expected: String,
        /// The offending shape.
        got: Vec<usize>,
    },
    /// One or more examples produced a NaN or infinite gradient.
    ///
    /// Under [`crate::NonFinitePolicy::Error`] (the default) the step is refused rather
    /// than releasing a poisoned update.
    #[error("non-finite per-example gradient for {} example(s) of the batch (first positions: {:?})", .examples.len(), &.examples[..examples.len().min(8)])]
    NonFiniteGradient {
        /// Positions (within the batch) of the offending examples.
        examples: Vec<usize>,
    },
    /// A clipping bound that is not a finite positive number.
    #[error("invalid clipping norm {0}: it must be finite and > 0")]
    InvalidClipNorm(f64),
    /// A noise standard deviation or multiplier that is not finite and ≥ 0 (or > 0 where required).
    #[error("invalid noise parameter {0}: it must be finite and > 0")]
    InvalidNoise(f64),
    /// A class label that the model's output has no logit for.
    #[error("label {label} is outside 0..{classes} (the model outputs {classes} logits)")]
    InvalidLabel {
        /// The largest offending label.
        label: u64,
        /// The number of logits (classes the model can predict).
        classes: usize,
    },
    /// A hyper-parameter outside its valid range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// BatchNorm mixes the examples of a batch, so a per-example gradient does not exist.
    #[error(
        "BatchNorm cannot be used with DP-SGD: its output for one example depends on every other \
         example of the batch, so per-example gradients (and hence per-example clipping) are \
         undefined. Use GroupNorm (dp_core::layers::GroupNorm) or LayerNorm instead"
    )]
    BatchNormNotPrivate,
    /// A layer owns parameters but has no per-sample gradient rule.
    #[error(
        "layer `{layer}` has trainable parameters but no per-sample gradient rule: implement \
         dp_core::PerSampleGrad for it and return it from Layer::per_sample"
    )]
    UnsupportedLayer {
        /// The layer's name.
        layer: String,
    },
    /// `backward` or a per-sample rule was called without the forward/backward record it needs.
    #[error("layer `{layer}`: {what} (call forward with train=true, then backward, first)")]
    MissingRecord {
        /// The layer's name.
        layer: String,
        /// What was missing.
        what: String,
    },
}

/// Result alias for dp-core.
pub type Result<T> = std::result::Result<T, CoreError>;

pub(crate) fn shape_err(context: &str, expected: &str, got: &[usize]) -> CoreError {
    CoreError::Shape {
        context: context.to_string(),
        expected: expected.to_string(),
        got: got.to_vec(),
    }
}
