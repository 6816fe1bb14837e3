//! Clipping strategies: how per-example norms become per-example weights.
//!
//! A strategy sees each example's squared gradient norm per private layer and returns
//! the weights `c_i` (one per example, or one per example and layer) of the clipped sum
//! `Σ_i c_i g_i`, together with the sum's L2 sensitivity under add/remove-one. The engine
//! ([`crate::clipped_gradient`]) re-checks every example's weighted norm against that
//! sensitivity, so a strategy cannot silently under-state it.

mod auto;
mod flat;
mod none;
mod per_example;
mod per_layer;

pub use auto::AutoClip;
pub use flat::FlatClip;
pub use none::NoClip;
pub use per_example::PerExampleFactor;
pub use per_layer::PerLayerClip;

use crate::error::{CoreError, Result};

/// Opacus's stabiliser in `min(1, C/(‖g‖ + 1e-6))`.
pub const CLIP_EPS: f64 = 1e-6;

/// Per-layer, per-example squared gradient norms: `per_layer[l][i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSqNorms {
    /// Squared norms, one vector of length `B` per private layer.
    pub per_layer: Vec<Vec<f32>>,
}

impl LayerSqNorms {
    /// Batch size `B`.
    pub fn batch_size(&self) -> usize {
        self.per_layer.first().map_or(0, |v| v.len())
    }

    /// Each example's flat (all-layer) gradient norm `‖g_i‖`, computed in f64.
    pub fn total_norms(&self) -> Vec<f64> {
        (0..self.batch_size())
            .map(|i| {
                self.per_layer
                    .iter()
                    .map(|l| l[i] as f64)
                    .sum::<f64>()
                    // not `.max(0.0)`: it would turn a NaN norm into 0
                    .sqrt()
            })
            .collect()
    }
}

/// The weights a strategy assigns.
#[derive(Debug, Clone, PartialEq)]
pub enum ClipFactors {
    /// One weight per example, shared by all layers.
    Flat(Vec<f32>),
    /// One weight per layer and example: `[L][B]`.
    PerLayer(Vec<Vec<f32>>),
}

impl ClipFactors {
    /// The weight of example `i` in layer `l`.
    pub fn get(&self, l: usize, i: usize) -> f32 {
        match self {
            ClipFactors::Flat(v) => v[i],
            ClipFactors::PerLayer(v) => v[l][i],
        }
    }
}

/// A per-example clipping (or normalisation) rule.
///
/// # Contract
/// For every example `i`, `‖Σ_l c_{l,i} g_{l,i}‖ ≤ sensitivity()`. The engine enforces
/// it (shrinking any example that exceeds it by rounding), so the noisy sum's
/// sensitivity is what the strategy states.
pub trait ClipStrategy: Send {
    /// The weights for this batch's norms.
    fn factors(&mut self, sq_norms: &LayerSqNorms) -> Result<ClipFactors>;
    /// L2 sensitivity of the weighted sum under add/remove-one.
    fn sensitivity(&self) -> f64;
    /// The norm above which an example counts as "clipped" in the statistics
    /// (defaults to the sensitivity).
    fn threshold(&self) -> f64 {
        self.sensitivity()
    }
}

pub(crate) fn check_norm(c: f64) -> Result<f64> {
    if c.is_finite() && c > 0.0 {
        Ok(c)
    } else {
        Err(CoreError::InvalidClipNorm(c))
    }
}

/// `min(1, C/(n + 1e-6))`.
pub(crate) fn clip_factor(c: f64, n: f64) -> f32 {
    (c / (n + CLIP_EPS)).min(1.0) as f32
}
