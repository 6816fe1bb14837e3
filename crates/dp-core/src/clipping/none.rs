use super::{ClipFactors, ClipStrategy, LayerSqNorms};
use crate::error::Result;

/// No clipping: the plain gradient sum, for non-private baselines. Its sensitivity is
/// infinite, so [`crate::privatize`] refuses to "privatise" it.
///
/// ```
/// use dp_core::clipping::{ClipStrategy, NoClip};
/// assert!(NoClip.sensitivity().is_infinite());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct NoClip;

impl ClipStrategy for NoClip {
    fn factors(&mut self, sq: &LayerSqNorms) -> Result<ClipFactors> {
        Ok(ClipFactors::Flat(vec![1.0; sq.batch_size()]))
    }
    fn sensitivity(&self) -> f64 {
        f64::INFINITY
    }
}
