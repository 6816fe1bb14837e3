//! Model sparsity, Hoyer sparsity, pruning masks and their overlap (algorithms.md §14.5).
//!
//! * sparsity s = fraction of weights with |w| ≤ τ (τ = 0 after pruning; τ = 1e-3·max|w| per
//!   layer for unpruned models);
//! * Hoyer (2004) sparsity (√n − ‖w‖₁/‖w‖₂)/(√n − 1) ∈ [0, 1] ("Non-negative matrix
//!   factorization with sparseness constraints", JMLR 5, eq. (1));
//! * magnitude pruning (keep the largest |w|) and random pruning masks, the number of active
//!   parameters d_active (the noise norm scales as σC√d_active), and the Jaccard index of two
//!   masks' kept sets.
//!
//! Parameters are passed as named tensors `&[(String, Tensor)]`.

use candle_core::{DType, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{ensure_finite, ensure_nonempty, MetricsError, Result};

fn values_of(t: &Tensor) -> Result<Vec<f64>> {
    let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    ensure_finite(&v, "parameter values")?;
    Ok(v)
}

/// Names parameters `param0`, `param1`, … (for [`LossSurface::parameters`](crate::LossSurface)
/// output, which is unnamed).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let named = dp_metrics::name_params(&[Tensor::new(&[1f32], &Device::Cpu)?]);
/// assert_eq!(named[0].0, "param0");
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn name_params(params: &[Tensor]) -> Vec<(String, Tensor)> {
    params
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("param{i}"), t.clone()))
        .collect()
}

/// The sparsity threshold τ.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Threshold {
    /// A fixed τ (use 0 after pruning).
    Absolute(f64),
    /// τ = factor·max|w| per layer (§14.5: 1e-3 for unpruned models).
    RelativeToMax(f64),
}

/// Hoyer sparsity (√n − ‖w‖₁/‖w‖₂)/(√n − 1): 0 for a constant-magnitude vector, 1 for a
/// single non-zero. `None` for an all-zero vector or n = 1.
///
/// ```
/// assert_eq!(dp_metrics::hoyer_sparsity(&[0.0, 0.0, 5.0, 0.0]), Some(1.0));
/// assert!(dp_metrics::hoyer_sparsity(&[1.0, -1.0, 1.0, 1.0]).unwrap().abs() < 1e-12);
/// ```
pub fn hoyer_sparsity(w: &[f64]) -> Option<f64> {
    let n = w.len() as f64;
    let l1: f64 = w.iter().map(|x| x.abs()).sum();
    let l2: f64 = w.iter().map(|x| x * x).sum::<f64>().sqrt();
    if w.len() < 2 || l2 == 0.0 || !l2.is_finite() {
        return None;
    }
    Some(((n.sqrt() - l1 / l2) / (n.sqrt() - 1.0)).clamp(0.0, 1.0))
}

/// Sparsity of one layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSparsity {
    /// Layer name.
    pub name: String,
    /// Number of weights.
    pub numel: usize,
    /// The τ used.
    pub threshold: f64,
    /// Weights with |w| ≤ τ.
    pub num_small: usize,
    /// num_small / numel.
    pub sparsity: f64,
    /// Hoyer sparsity (`None` for an all-zero or single-weight layer).
    pub hoyer: Option<f64>,
}

/// Per-layer and global sparsity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SparsityReport {
    /// Per layer, in input order.
    pub layers: Vec<LayerSparsity>,
    /// Total weights.
    pub total: usize,
    /// Total weights with |w| ≤ τ (layer thresholds).
    pub num_small: usize,
    /// num_small / total.
    pub global_sparsity: f64,
    /// Weights with |w| > τ (d_active when the small ones are pruned).
    pub num_active: usize,
}

/// Sparsity (fraction |w| ≤ τ) and Hoyer sparsity per layer and globally (§14.5).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_metrics::{sparsity_report, Threshold};
/// let p = vec![("w".to_string(), Tensor::new(&[[0f32, 1.], [0., 2.]], &Device::Cpu)?)];
/// let r = sparsity_report(&p, Threshold::Absolute(0.0))?;
/// assert_eq!((r.global_sparsity, r.num_active), (0.5, 2));
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn sparsity_report(
    params: &[(String, Tensor)],
    threshold: Threshold,
) -> Result<SparsityReport> {
    ensure_nonempty(params, "no parameters")?;
    let mut layers = Vec::with_capacity(params.len());
    let (mut total, mut small) = (0usize, 0usize);
    for (name, t) in params {
        let v = values_of(t)?;
        let tau = match threshold {
            Threshold::Absolute(a) => a,
            Threshold::RelativeToMax(f) => f * v.iter().fold(0.0f64, |m, x| m.max(x.abs())),
        };
        if !(tau.is_finite() && tau >= 0.0) {
            return Err(MetricsError::InvalidArgument(format!("threshold {tau}")));
        }
        let num_small = v.iter().filter(|x| x.abs() <= tau).count();
        total += v.len();
        small += num_small;
        layers.push(LayerSparsity {
            name: name.clone(),
            numel: v.len(),
            threshold: tau,
            num_small,
            sparsity: if v.is_empty() {
                0.0
            } else {
                num_small as f64 / v.len() as f64
            },
            hoyer: hoyer_sparsity(&v),
        });
    }
    if total == 0 {
        return Err(MetricsError::EmptyInput(
            "parameters have no elements".into(),
        ));
    }
    Ok(SparsityReport {
        layers,
        total,
        num_small: small,
        global_sparsity: small as f64 / total as f64,
        num_active: total - small,
    })
}

/// One layer of a pruning mask: `keep[i]` is true for an active (unpruned) weight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMask {
    /// Layer name.
    pub name: String,
    /// Shape of the layer.
    pub shape: Vec<usize>,
    /// Row-major keep flags.
    pub keep: Vec<bool>,
}

/// A pruning mask over named layers (the analysis view: keep flags with names, for
/// [`mask_jaccard`] and reports). Training under a mask uses `dp_core::GradientMask`;
/// [`PruningMask::from_gradient_mask`] converts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruningMask {
    /// Per layer, in parameter order.
    pub layers: Vec<LayerMask>,
}

impl PruningMask {
    /// The named keep flags of an engine mask over `params` (dense parameters: all kept).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use dp_core::{GradientMask, Prunable, PruneScope};
    /// let p = vec![("w".to_string(), Tensor::new(&[[0.1f32, -5.], [0.2, 4.]], &Device::Cpu)?)];
    /// let g = GradientMask::magnitude(&[p[0].1.clone()], 0.5, PruneScope::Global, Prunable::Weights)?;
    /// let m = dp_metrics::PruningMask::from_gradient_mask(&g, &p)?;
    /// assert_eq!(m.layers[0].keep, vec![false, true, false, true]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_gradient_mask(
        mask: &dp_core::GradientMask,
        params: &[(String, Tensor)],
    ) -> Result<Self> {
        let flags = mask
            .keep_flags()
            .map_err(|e| MetricsError::ShapeMismatch(e.to_string()))?;
        if flags.len() != params.len() {
            return Err(MetricsError::ShapeMismatch(
                "mask and parameters differ in layer count".into(),
            ));
        }
        let keep: Vec<bool> = flags
            .into_iter()
            .zip(params)
            .flat_map(|(k, (_, t))| k.unwrap_or_else(|| vec![true; t.elem_count()]))
            .collect();
        Ok(build_mask(params, keep))
    }

    /// d_active: the number of unmasked parameters.
    pub fn num_active(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.keep.iter().filter(|k| **k).count())
            .sum()
    }

    /// Total number of parameters.
    pub fn total(&self) -> usize {
        self.layers.iter().map(|l| l.keep.len()).sum()
    }

    /// Multiplies every parameter by its mask (pruned weights become 0).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use dp_metrics::{magnitude_pruning_mask, PruneScope};
    /// let p = vec![("w".to_string(), Tensor::new(&[1f32, -3., 2.], &Device::Cpu)?)];
    /// let m = magnitude_pruning_mask(&p, 1.0 / 3.0, PruneScope::Global)?;
    /// let pruned = m.apply(&p)?;
    /// assert_eq!(pruned[0].1.to_vec1::<f32>()?, vec![0.0, -3.0, 2.0]);
    /// # Ok::<(), dp_metrics::MetricsError>(())
    /// ```
    pub fn apply(&self, params: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        if params.len() != self.layers.len() {
            return Err(MetricsError::ShapeMismatch(
                "mask and parameters differ in layer count".into(),
            ));
        }
        params
            .iter()
            .zip(&self.layers)
            .map(|((name, t), l)| {
                if t.dims() != l.shape.as_slice() {
                    return Err(MetricsError::ShapeMismatch(format!(
                        "layer {name}: mask shape {:?}",
                        l.shape
                    )));
                }
                let m: Vec<f64> = l.keep.iter().map(|k| if *k { 1.0 } else { 0.0 }).collect();
                let mt = Tensor::from_vec(m, t.shape(), t.device())?.to_dtype(t.dtype())?;
                Ok((name.clone(), t.mul(&mt)?))
            })
            .collect()
    }
}

pub use dp_core::PruneScope;

fn check_fraction(f: f64) -> Result<()> {
    if (0.0..=1.0).contains(&f) {
        Ok(())
    } else {
        Err(MetricsError::InvalidArgument(format!(
            "prune fraction {f} outside [0, 1]"
        )))
    }
}

fn build_mask(params: &[(String, Tensor)], keep_flat: Vec<bool>) -> PruningMask {
    let mut start = 0;
    let layers = params
        .iter()
        .map(|(name, t)| {
            let n = t.elem_count();
            let l = LayerMask {
                name: name.clone(),
                shape: t.dims().to_vec(),
                keep: keep_flat[start..start + n].to_vec(),
            };
            start += n;
            l
        })
        .collect();
    PruningMask { layers }
}

/// Magnitude-pruning mask that removes the fraction `prune_fraction` of weights with the
/// smallest |w| (rounded to the nearest count), globally or per layer.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_metrics::{magnitude_pruning_mask, PruneScope};
/// let p = vec![("w".to_string(), Tensor::new(&[0.1f32, -5., 0.2, 4.], &Device::Cpu)?)];
/// let m = magnitude_pruning_mask(&p, 0.5, PruneScope::Global)?;
/// assert_eq!(m.layers[0].keep, vec![false, true, false, true]);
/// assert_eq!(m.num_active(), 2);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn magnitude_pruning_mask(
    params: &[(String, Tensor)],
    prune_fraction: f64,
    scope: PruneScope,
) -> Result<PruningMask> {
    check_fraction(prune_fraction)?;
    ensure_nonempty(params, "no parameters")?;
    let mut mags = Vec::new();
    let mut ranges = Vec::new();
    for (_, t) in params {
        let start = mags.len();
        mags.extend(values_of(t)?.into_iter().map(f64::abs));
        ranges.push(start..mags.len());
    }
    // The one ranking rule of the workspace, shared with the engine's masks.
    let keep = dp_core::magnitude_keep(&mags, &ranges, prune_fraction, scope)
        .map_err(|e| MetricsError::InvalidArgument(e.to_string()))?;
    Ok(build_mask(params, keep))
}

/// Random pruning mask removing the fraction `prune_fraction` of weights uniformly at random
/// (the baseline for magnitude pruning), seeded.
///
/// ```
/// use candle_core::{Device, Tensor, DType};
/// use dp_metrics::{random_pruning_mask, PruneScope};
/// let p = vec![("w".to_string(), Tensor::ones((10, 10), DType::F32, &Device::Cpu)?)];
/// let m = random_pruning_mask(&p, 0.3, PruneScope::Global, 1)?;
/// assert_eq!(m.num_active(), 70);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn random_pruning_mask(
    params: &[(String, Tensor)],
    prune_fraction: f64,
    scope: PruneScope,
    seed: u64,
) -> Result<PruningMask> {
    check_fraction(prune_fraction)?;
    ensure_nonempty(params, "no parameters")?;
    let sizes: Vec<usize> = params.iter().map(|(_, t)| t.elem_count()).collect();
    let total: usize = sizes.iter().sum();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut keep = vec![true; total];
    let mut prune_in = |range: std::ops::Range<usize>, keep: &mut [bool]| {
        let mut idx: Vec<usize> = range.clone().collect();
        idx.shuffle(&mut rng);
        let count = (prune_fraction * range.len() as f64).round() as usize;
        for &i in idx.iter().take(count) {
            keep[i] = false;
        }
    };
    match scope {
        PruneScope::Global => prune_in(0..total, &mut keep),
        PruneScope::PerLayer => {
            let mut start = 0;
            for s in sizes {
                prune_in(start..start + s, &mut keep);
                start += s;
            }
        }
    }
    Ok(build_mask(params, keep))
}

/// Jaccard index |A ∩ B| / |A ∪ B| of the *kept* (active) sets of two masks over the same
/// layers (§14.5). Two empty kept sets give 1.
///
/// ```
/// use dp_metrics::{mask_jaccard, LayerMask, PruningMask};
/// let m = |k: Vec<bool>| PruningMask { layers: vec![LayerMask { name: "w".into(), shape: vec![4], keep: k }] };
/// let a = m(vec![true, true, false, false]);
/// let b = m(vec![true, false, true, false]);
/// assert_eq!(mask_jaccard(&a, &b)?, 1.0 / 3.0);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn mask_jaccard(a: &PruningMask, b: &PruningMask) -> Result<f64> {
    if a.layers.len() != b.layers.len() {
        return Err(MetricsError::ShapeMismatch(
            "masks differ in layer count".into(),
        ));
    }
    let (mut inter, mut union) = (0usize, 0usize);
    for (la, lb) in a.layers.iter().zip(&b.layers) {
        if la.keep.len() != lb.keep.len() {
            return Err(MetricsError::ShapeMismatch(format!(
                "layer {}: masks differ in size",
                la.name
            )));
        }
        for (x, y) in la.keep.iter().zip(&lb.keep) {
            inter += (*x && *y) as usize;
            union += (*x || *y) as usize;
        }
    }
    Ok(if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    })
}
