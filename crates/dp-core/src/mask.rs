//! Gradient masks: which parameter coordinates a run trains.
//!
//! Pruning under DP (Watson et al. 2023; algorithms.md §10, §14.5) is a dimension
//! reduction only if the engine honours the mask: a pruned coordinate gets no gradient and
//! no noise, so the noise vector has `d_active` dimensions and its expected norm is
//! `σC√d_active`, and each example's clipped norm is taken over the active coordinates
//! only (so clipping spends nothing of the bound on weights that cannot move). With
//! [`crate::GradOptions::mask`] set, [`crate::clipped_gradient`] does exactly that.
//!
//! A mask is a 0/1 tensor per parameter (or none: the whole parameter is active), aligned
//! with [`crate::Model::param_tensors`]. Whether the mask itself is private is decided by
//! where it came from; dp-optim's `PruningMask` records that.

use crate::error::{CoreError, Result};
use candle_core::Tensor;

/// Whether magnitude pruning ranks weights across all prunable parameters or within each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneScope {
    /// One global ranking of `|w|`.
    #[default]
    Global,
    /// The same fraction pruned in every parameter.
    PerLayer,
}

/// Which parameters magnitude pruning may remove coordinates from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prunable {
    /// Parameters with two or more dimensions (linear and convolution weights, embedding
    /// tables); biases and normalisation scales stay dense, as in the pruning literature.
    #[default]
    Weights,
    /// Every parameter.
    All,
}

impl Prunable {
    fn includes(self, param: &Tensor) -> bool {
        match self {
            Prunable::Weights => param.rank() >= 2,
            Prunable::All => true,
        }
    }
}

/// Marks the `fraction` of the entries of each group (all of `key` for [`PruneScope::Global`],
/// each range for [`PruneScope::PerLayer`]) with the smallest key as pruned (`false`),
/// rounding the count to the nearest integer and breaking ties by index. This is the one
/// ranking rule of the workspace (dp-metrics' masks use it too).
///
/// ```
/// use dp_core::{magnitude_keep, PruneScope};
/// let keep = magnitude_keep(&[0.1, 5.0, 0.2, 4.0], &[0..2, 2..4], 0.5, PruneScope::PerLayer).unwrap();
/// assert_eq!(keep, vec![false, true, false, true]);
/// ```
pub fn magnitude_keep(
    key: &[f64],
    ranges: &[std::ops::Range<usize>],
    fraction: f64,
    scope: PruneScope,
) -> Result<Vec<bool>> {
    if !(0.0..=1.0).contains(&fraction) {
        return Err(CoreError::InvalidArgument(format!(
            "prune fraction {fraction} outside [0, 1]"
        )));
    }
    if key.iter().any(|k| k.is_nan()) {
        return Err(CoreError::InvalidArgument(
            "cannot rank NaN weights for pruning".into(),
        ));
    }
    // A range past the key would index out of bounds below.
    if let Some(r) = ranges.iter().find(|r| r.start < r.end && r.end > key.len()) {
        return Err(CoreError::InvalidArgument(format!(
            "prune range {r:?} outside the {} ranked entries",
            key.len()
        )));
    }
    let mut keep = vec![true; key.len()];
    let mut prune = |mut idx: Vec<usize>| {
        let count = (fraction * idx.len() as f64).round() as usize;
        idx.sort_by(|&a, &b| key[a].total_cmp(&key[b]).then(a.cmp(&b)));
        for &i in idx.iter().take(count) {
            keep[i] = false;
        }
    };
    match scope {
        PruneScope::Global => prune(ranges.iter().flat_map(|r| r.clone()).collect()),
        PruneScope::PerLayer => {
            for r in ranges {
                prune(r.clone().collect());
            }
        }
    }
    Ok(keep)
}

/// A 0/1 mask per parameter: the coordinates a run trains.
///
/// ```
/// use dp_core::{GradientMask, Prunable, PruneScope};
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let w = Tensor::new(&[[0.1f32, -3.0], [2.0, 0.01]], &dev).unwrap();
/// let b = Tensor::new(&[0.5f32, 0.5], &dev).unwrap();
/// let params = [w, b];
/// let mask = GradientMask::magnitude(&params, 0.5, PruneScope::Global, Prunable::Weights).unwrap();
/// assert_eq!((mask.num_active(), mask.total()), (4, 6)); // two weights pruned, bias dense
/// let pruned = mask.apply(&params).unwrap();
/// assert_eq!(pruned[0].to_vec2::<f32>().unwrap(), vec![vec![0.0, -3.0], vec![2.0, 0.0]]);
/// ```
#[derive(Debug, Clone)]
pub struct GradientMask {
    masks: Vec<Option<Tensor>>,
    shapes: Vec<Vec<usize>>,
    active: usize,
    total: usize,
}

impl GradientMask {
    /// A mask from keep flags (`None`: the parameter is dense), checked against `params`'
    /// shapes. Mask tensors take each parameter's dtype and device.
    pub fn from_keep(params: &[Tensor], keep: Vec<Option<Vec<bool>>>) -> Result<Self> {
        if keep.len() != params.len() {
            return Err(CoreError::InvalidArgument(format!(
                "a mask of {} parameters for a model of {}",
                keep.len(),
                params.len()
            )));
        }
        let (mut active, mut total) = (0, 0);
        let mut masks = Vec::with_capacity(params.len());
        for (i, (p, k)) in params.iter().zip(keep).enumerate() {
            let n = p.elem_count();
            total += n;
            match k {
                None => {
                    active += n;
                    masks.push(None);
                }
                Some(k) => {
                    if k.len() != n {
                        return Err(CoreError::InvalidArgument(format!(
                            "mask of parameter {i} has {} entries, the parameter {n}",
                            k.len()
                        )));
                    }
                    active += k.iter().filter(|&&x| x).count();
                    let v: Vec<f32> = k.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect();
                    let t = Tensor::from_vec(v, p.shape(), p.device())?.to_dtype(p.dtype())?;
                    masks.push(Some(t));
                }
            }
        }
        Ok(Self {
            masks,
            shapes: params.iter().map(|p| p.dims().to_vec()).collect(),
            active,
            total,
        })
    }

    /// Magnitude pruning of `params`: removes the `sparsity` fraction of the prunable
    /// coordinates with the smallest `|w|` ([`magnitude_keep`]), globally or per parameter.
    /// Sparsity 0 gives a mask with every coordinate active.
    pub fn magnitude(
        params: &[Tensor],
        sparsity: f64,
        scope: PruneScope,
        prunable: Prunable,
    ) -> Result<Self> {
        let mut key = Vec::new();
        let mut ranges = Vec::new();
        let mut which = Vec::new();
        for (i, p) in params.iter().enumerate() {
            if !prunable.includes(p) {
                continue;
            }
            let start = key.len();
            key.extend(
                p.flatten_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_vec1::<f64>()?
                    .into_iter()
                    .map(f64::abs),
            );
            ranges.push(start..key.len());
            which.push(i);
        }
        if key.is_empty() {
            return Err(CoreError::InvalidArgument(
                "the model has no prunable parameters".into(),
            ));
        }
        let flags = magnitude_keep(&key, &ranges, sparsity, scope)?;
        let mut keep: Vec<Option<Vec<bool>>> = vec![None; params.len()];
        for (r, i) in ranges.iter().zip(which) {
            keep[i] = Some(flags[r.clone()].to_vec());
        }
        Self::from_keep(params, keep)
    }

    /// The number of trained (unmasked) coordinates, `d_active`.
    pub fn num_active(&self) -> usize {
        self.active
    }
    /// The number of coordinates of the model.
    pub fn total(&self) -> usize {
        self.total
    }
    /// The fraction of all coordinates that are masked.
    pub fn sparsity(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            1.0 - self.active as f64 / self.total as f64
        }
    }
    /// The number of parameters the mask covers.
    pub fn len(&self) -> usize {
        self.masks.len()
    }
    /// Whether the mask covers no parameter.
    pub fn is_empty(&self) -> bool {
        self.masks.is_empty()
    }
    /// Parameter `i`'s 0/1 tensor, or `None` where the parameter is dense.
    pub fn get(&self, i: usize) -> Option<&Tensor> {
        self.masks.get(i).and_then(|m| m.as_ref())
    }
    /// The keep flags (`None`: dense), e.g. to compare masks.
    pub fn keep_flags(&self) -> Result<Vec<Option<Vec<bool>>>> {
        self.masks
            .iter()
            .map(|m| match m {
                None => Ok(None),
                Some(t) => Ok(Some(
                    t.flatten_all()?
                        .to_dtype(candle_core::DType::F32)?
                        .to_vec1::<f32>()?
                        .into_iter()
                        .map(|v| v != 0.0)
                        .collect(),
                )),
            })
            .collect()
    }

    /// Checks that `tensors` are aligned with the mask (count and shapes).
    pub fn check(&self, tensors: &[Tensor]) -> Result<()> {
        if tensors.len() != self.masks.len() {
            return Err(CoreError::InvalidArgument(format!(
                "a mask of {} parameters applied to {} tensors",
                self.masks.len(),
                tensors.len()
            )));
        }
        for (i, (t, s)) in tensors.iter().zip(&self.shapes).enumerate() {
            if t.dims() != s.as_slice() {
                return Err(CoreError::InvalidArgument(format!(
                    "mask of parameter {i} has shape {s:?}, the tensor {:?}",
                    t.dims()
                )));
            }
        }
        Ok(())
    }

    /// `m ⊙ t` for every tensor (masked coordinates become exactly 0).
    pub fn apply(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        self.check(tensors)?;
        tensors
            .iter()
            .zip(&self.masks)
            .map(|(t, m)| match m {
                Some(m) => Ok(t.mul(&m.to_dtype(t.dtype())?)?),
                None => Ok(t.clone()),
            })
            .collect()
    }

    /// The masks of parameters `range` (one private layer's), for the per-sample rules.
    pub(crate) fn slice(&self, range: std::ops::Range<usize>) -> &[Option<Tensor>] {
        &self.masks[range]
    }
}

/// `Σ_p ‖m_p ⊙ g_{i,p}‖²` for materialised per-example gradients `grads` (`[B, ..shape]` per
/// parameter) and their masks: the default masked norm of every per-sample rule.
pub(crate) fn masked_sq_norms_of(grads: &[Tensor], masks: &[Option<Tensor>]) -> Result<Tensor> {
    if grads.len() != masks.len() {
        return Err(CoreError::InvalidArgument(format!(
            "{} per-example gradients for {} masks",
            grads.len(),
            masks.len()
        )));
    }
    let mut total: Option<Tensor> = None;
    for (g, m) in grads.iter().zip(masks) {
        let b = g.dim(0)?;
        let g = match m {
            Some(m) => g.broadcast_mul(&m.to_dtype(g.dtype())?.unsqueeze(0)?)?,
            None => g.clone(),
        };
        let s = g.sqr()?.reshape((b, ()))?.sum(1)?;
        total = Some(match total {
            Some(t) => (t + s)?,
            None => s,
        });
    }
    total.ok_or_else(|| CoreError::InvalidArgument("a layer without parameters".into()))
}
