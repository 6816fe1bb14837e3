//! BatchNorm is refused: it is not compatible with per-example privacy.

use crate::error::{CoreError, Result};

/// Always returns [`CoreError::BatchNormNotPrivate`].
///
/// BatchNorm normalises each example with statistics of the whole batch, so one
/// example's output (and gradient) depends on all others: there is no per-example
/// gradient to clip, and the running statistics would leak unprivatised data. Use
/// [`crate::layers::GroupNorm`] (what Opacus's `ModuleValidator.fix` substitutes) or
/// [`crate::layers::LayerNorm`].
///
/// ```
/// assert!(dp_core::layers::batch_norm(16).is_err());
/// ```
pub fn batch_norm(_channels: usize) -> Result<()> {
    Err(CoreError::BatchNormNotPrivate)
}
