use super::{check_norm, clip_factor, ClipFactors, ClipStrategy, LayerSqNorms};
use crate::error::Result;

/// Flat clipping (Abadi et al. 2016, Alg. 1): one norm over all layers,
/// `c_i = min(1, C/(‖g_i‖ + 1e-6))`; sensitivity `C`.
///
/// ```
/// use dp_core::clipping::{ClipStrategy, FlatClip, LayerSqNorms, ClipFactors};
/// let mut clip = FlatClip::new(1.0).unwrap();
/// let f = clip.factors(&LayerSqNorms { per_layer: vec![vec![4.0, 0.25]] }).unwrap();
/// let ClipFactors::Flat(f) = f else { unreachable!() };
/// assert!((f[0] - 0.5).abs() < 1e-6 && f[1] == 1.0);
/// assert!(FlatClip::new(-1.0).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlatClip {
    max_norm: f64,
}

impl FlatClip {
    /// Clip to `max_norm` (finite, > 0).
    pub fn new(max_norm: f64) -> Result<Self> {
        Ok(Self {
            max_norm: check_norm(max_norm)?,
        })
    }
    /// The current bound `C`.
    pub fn max_norm(&self) -> f64 {
        self.max_norm
    }
    /// Changes the bound (adaptive methods move it between steps).
    pub fn set_max_norm(&mut self, c: f64) -> Result<()> {
        self.max_norm = check_norm(c)?;
        Ok(())
    }
}

impl ClipStrategy for FlatClip {
    fn factors(&mut self, sq: &LayerSqNorms) -> Result<ClipFactors> {
        Ok(ClipFactors::Flat(
            sq.total_norms()
                .into_iter()
                .map(|n| clip_factor(self.max_norm, n))
                .collect(),
        ))
    }
    fn sensitivity(&self) -> f64 {
        self.max_norm
    }
}
