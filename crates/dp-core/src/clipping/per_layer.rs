use super::{check_norm, clip_factor, ClipFactors, ClipStrategy, LayerSqNorms};
use crate::error::{CoreError, Result};

/// Per-layer clipping (McMahan et al. 2018): layer `l` of each example is clipped to
/// `C_l`, so the flat sensitivity is `sqrt(Σ_l C_l²)`. With [`PerLayerClip::equal`] the
/// budget `C` is split evenly, `C_l = C/√L`, so that `Σ C_l² = C²`.
///
/// ```
/// use dp_core::clipping::{ClipStrategy, PerLayerClip, LayerSqNorms};
/// let mut clip = PerLayerClip::equal(2.0).unwrap();
/// let _ = clip.factors(&LayerSqNorms { per_layer: vec![vec![9.0], vec![0.0]] }).unwrap();
/// assert!((clip.sensitivity() - 2.0).abs() < 1e-12);
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PerLayerClip {
    total: f64,
    thresholds: Option<Vec<f64>>,
}

impl PerLayerClip {
    /// Splits `total` evenly over however many private layers the model has.
    pub fn equal(total: f64) -> Result<Self> {
        Ok(Self {
            total: check_norm(total)?,
            thresholds: None,
        })
    }

    /// Explicit per-layer bounds `C_l` (one per private layer, in model order).
    pub fn with_thresholds(thresholds: Vec<f64>) -> Result<Self> {
        if thresholds.is_empty() {
            return Err(CoreError::InvalidArgument("no per-layer thresholds".into()));
        }
        for &c in &thresholds {
            check_norm(c)?;
        }
        let total = thresholds.iter().map(|c| c * c).sum::<f64>().sqrt();
        Ok(Self {
            total,
            thresholds: Some(thresholds),
        })
    }
}

impl ClipStrategy for PerLayerClip {
    fn factors(&mut self, sq: &LayerSqNorms) -> Result<ClipFactors> {
        let layers = sq.per_layer.len();
        let th = match &self.thresholds {
            Some(t) if t.len() == layers => t.clone(),
            Some(t) => {
                return Err(CoreError::InvalidArgument(format!(
                    "{} per-layer thresholds for a model with {layers} private layers",
                    t.len()
                )))
            }
            None => vec![self.total / (layers.max(1) as f64).sqrt(); layers],
        };
        Ok(ClipFactors::PerLayer(
            sq.per_layer
                .iter()
                .zip(&th)
                .map(|(l, &c)| {
                    l.iter()
                        .map(|&s| clip_factor(c, (s as f64).max(0.0).sqrt()))
                        .collect()
                })
                .collect(),
        ))
    }
    fn sensitivity(&self) -> f64 {
        self.total
    }
}
