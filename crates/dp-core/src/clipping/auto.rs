use super::{check_norm, ClipFactors, ClipStrategy, LayerSqNorms};
use crate::error::{CoreError, Result};

/// Automatic clipping, AUTO-S (Bu et al. 2023, "Automatic clipping", Eq. 4.1):
/// `c_i = R/(‖g_i‖ + γ)` with stability constant `γ = 0.01` by default; every example is
/// normalised, so the sensitivity is `R`. With `γ = 0` it is AUTO-V; it is also DP-NSGD
/// (Yang et al. 2022) with regulariser `γ`.
///
/// ```
/// use dp_core::clipping::{AutoClip, ClipStrategy, ClipFactors, LayerSqNorms};
/// let mut c = AutoClip::new(1.0, 0.01).unwrap();
/// let ClipFactors::Flat(f) = c.factors(&LayerSqNorms { per_layer: vec![vec![1.0]] }).unwrap() else { unreachable!() };
/// assert!((f[0] as f64 - 1.0 / 1.01).abs() < 1e-6);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AutoClip {
    scale: f64,
    gamma: f64,
}

impl AutoClip {
    /// Scale `R` (> 0) and stability constant `γ ≥ 0`.
    pub fn new(scale: f64, gamma: f64) -> Result<Self> {
        if !(gamma.is_finite() && gamma >= 0.0) {
            return Err(CoreError::InvalidArgument(format!(
                "AUTO-S gamma {gamma} must be ≥ 0"
            )));
        }
        Ok(Self {
            scale: check_norm(scale)?,
            gamma,
        })
    }

    /// AUTO-S with `R = 1`, `γ = 0.01` (the paper's default).
    pub fn auto_s() -> Self {
        Self {
            scale: 1.0,
            gamma: 0.01,
        }
    }
}

impl ClipStrategy for AutoClip {
    fn factors(&mut self, sq: &LayerSqNorms) -> Result<ClipFactors> {
        Ok(ClipFactors::Flat(
            sq.total_norms()
                .into_iter()
                .map(|n| {
                    let d = n + self.gamma;
                    if d > 0.0 {
                        // Capped at the largest f32: with a tiny γ and a zero (or tiny)
                        // norm, R/(‖g‖ + γ) overflows f32 to ∞, and ∞·0 is a NaN in the
                        // weighted sum. The cap keeps ‖c_i g_i‖ ≤ f32::MAX·‖g_i‖ < R.
                        (self.scale / d).min(f32::MAX as f64) as f32
                    } else {
                        0.0
                    }
                })
                .collect(),
        ))
    }
    fn sensitivity(&self) -> f64 {
        self.scale
    }
    /// Every example is rescaled; "clipped" counts those with norm above `R`.
    fn threshold(&self) -> f64 {
        self.scale
    }
}
