//! The per-sample rule shared by LayerNorm and GroupNorm: an elementwise affine map
//! `y = x̂ ⊙ γ + β` over the last (channel) axis, applied at every position of an example.
//!
//! Per-example gradients are small (`[B, C]` each), so they are always materialised:
//! `∂γ_i = Σ_s G_{i,s} ⊙ x̂_{i,s}`, `∂β_i = Σ_s G_{i,s}`.

use crate::error::{CoreError, Result};
use crate::seq_linear::weighted_sum_materialized;
use candle_core::Tensor;

#[derive(Debug, Default)]
pub(crate) struct AffineRecord {
    /// Normalised input `[B, S, C]`.
    pub xhat: Option<Tensor>,
    /// `[B, S, C]`
    pub g: Option<Tensor>,
}

impl AffineRecord {
    pub fn clear(&mut self) {
        self.xhat = None;
        self.g = None;
    }

    pub fn per_sample(&self, layer: &str) -> Result<Vec<Tensor>> {
        let missing = |w: &str| CoreError::MissingRecord {
            layer: layer.to_string(),
            what: w.into(),
        };
        let xhat = self
            .xhat
            .as_ref()
            .ok_or_else(|| missing("no recorded input"))?;
        let g = self
            .g
            .as_ref()
            .ok_or_else(|| missing("no recorded output gradient"))?;
        let dgamma = (g * xhat)?.sum(1)?;
        let dbeta = g.sum(1)?;
        Ok(vec![dgamma, dbeta])
    }

    pub fn sq_norms(&self, layer: &str) -> Result<Tensor> {
        let v = self.per_sample(layer)?;
        Ok((v[0].sqr()?.sum(1)? + v[1].sqr()?.sum(1)?)?)
    }

    pub fn weighted_sum(&self, layer: &str, w: &Tensor) -> Result<Vec<Tensor>> {
        self.per_sample(layer)?
            .iter()
            .map(|t| weighted_sum_materialized(t, w))
            .collect()
    }
}
