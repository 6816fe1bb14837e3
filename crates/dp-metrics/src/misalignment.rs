//! Gradient misalignment per group (Esipova, Ghomi, Luo & Cresswell 2023, "Disparate impact
//! in differential privacy from gradient misalignment", ICLR; algorithms.md §14.4).
//!
//! For group k, g_{D,k} is the mean unclipped gradient over the whole training set's group-k
//! examples, g_B the batch mean unclipped gradient and ḡ_B the batch mean after clipping (or
//! another per-example transform). Misalignment compares cos(g_{D,k}, ḡ_B) with
//! cos(g_{D,k}, g_B). Full-data group means are accumulated chunk by chunk with
//! [`GroupGradientAccumulator`].

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::clipping::{clip_factors, grads_f64, mean_and_transformed_mean, row_norms};
use crate::error::{ensure_finite, MetricsError, Result};
use crate::surface::{cosine, norm};

/// Accumulates per-group sums of per-example gradients over many chunks, to form the
/// full-data group means g_{D,k} without holding every gradient in memory.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let mut acc = dp_metrics::GroupGradientAccumulator::new(2);
/// acc.add(&Tensor::new(&[[1f32, 0.], [3., 0.]], &Device::Cpu)?, &[0, 0])?;
/// acc.add(&Tensor::new(&[[0f32, 2.]], &Device::Cpu)?, &[1])?;
/// let m = acc.means();
/// assert_eq!(m[&0], vec![2.0, 0.0]);
/// assert_eq!(m[&1], vec![0.0, 2.0]);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupGradientAccumulator {
    d: usize,
    sums: BTreeMap<usize, Vec<f64>>,
    counts: BTreeMap<usize, usize>,
}

impl GroupGradientAccumulator {
    /// An empty accumulator for gradients of dimension `d`.
    pub fn new(d: usize) -> Self {
        Self {
            d,
            sums: BTreeMap::new(),
            counts: BTreeMap::new(),
        }
    }

    /// Adds per-example gradients `[n, d]` with their group ids.
    pub fn add(&mut self, grads: &Tensor, group_ids: &[usize]) -> Result<()> {
        let (g, n, d) = grads_f64(grads)?;
        if d != self.d {
            return Err(MetricsError::ShapeMismatch(format!(
                "gradient dim {d}, accumulator dim {}",
                self.d
            )));
        }
        if group_ids.len() != n {
            return Err(MetricsError::ShapeMismatch(format!(
                "{} group ids for {n} examples",
                group_ids.len()
            )));
        }
        let mut groups: Vec<usize> = group_ids.to_vec();
        groups.sort_unstable();
        groups.dedup();
        // One [K, n] × [n, d] matmul with the group indicator matrix.
        let k = groups.len();
        let mut ind = vec![0.0; k * n];
        for (i, gid) in group_ids.iter().enumerate() {
            let row = groups.binary_search(gid).unwrap_or(0);
            ind[row * n + i] = 1.0;
        }
        let sums = Tensor::from_vec(ind, (k, n), g.device())?
            .matmul(&g)?
            .to_vec2::<f64>()?;
        for (gid, s) in groups.iter().zip(sums) {
            ensure_finite(&s, "group gradient sum")?;
            let e = self.sums.entry(*gid).or_insert_with(|| vec![0.0; d]);
            e.iter_mut().zip(&s).for_each(|(a, b)| *a += b);
        }
        for gid in group_ids {
            *self.counts.entry(*gid).or_insert(0) += 1;
        }
        Ok(())
    }

    /// Number of examples seen per group.
    pub fn counts(&self) -> &BTreeMap<usize, usize> {
        &self.counts
    }

    /// Mean gradient per group.
    pub fn means(&self) -> BTreeMap<usize, Vec<f64>> {
        self.sums
            .iter()
            .map(|(k, s)| {
                let c = self.counts.get(k).copied().unwrap_or(1).max(1) as f64;
                (*k, s.iter().map(|v| v / c).collect())
            })
            .collect()
    }
}

/// Mean per-example gradient of every group in one `[n, d]` tensor.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let g = Tensor::new(&[[1f32], [3.], [5.]], &Device::Cpu)?;
/// let m = dp_metrics::group_mean_gradients(&g, &[7, 7, 2])?;
/// assert_eq!((m[&7][0], m[&2][0]), (2.0, 5.0));
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn group_mean_gradients(
    grads: &Tensor,
    group_ids: &[usize],
) -> Result<BTreeMap<usize, Vec<f64>>> {
    let (_, _, d) = grads_f64(grads)?;
    let mut acc = GroupGradientAccumulator::new(d);
    acc.add(grads, group_ids)?;
    Ok(acc.means())
}

/// Misalignment of one group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupMisalignment {
    /// Group id k.
    pub group: usize,
    /// ‖g_{D,k}‖.
    pub full_grad_norm: f64,
    /// cos(g_{D,k}, g_B) (`None` if a vector is 0).
    pub cos_unclipped: Option<f64>,
    /// cos(g_{D,k}, ḡ_B).
    pub cos_clipped: Option<f64>,
    /// cos_unclipped − cos_clipped: how much clipping turns the batch step away from group k.
    pub misalignment: Option<f64>,
}

/// Batch-level and per-group misalignment (§14.4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MisalignmentReport {
    /// ‖g_B‖.
    pub batch_mean_norm: f64,
    /// ‖ḡ_B‖.
    pub batch_transformed_norm: f64,
    /// cos(g_B, ḡ_B).
    pub cos_batch: Option<f64>,
    /// One entry per group, in increasing group id.
    pub groups: Vec<GroupMisalignment>,
}

/// Misalignment with clipping at `clip_norm`: `group_grads` are the full-data group means
/// g_{D,k} (e.g. from [`GroupGradientAccumulator::means`]), `batch_grads` the batch's
/// per-example gradients `[n, d]`.
///
/// ```
/// use std::collections::BTreeMap;
/// use candle_core::{Device, Tensor};
/// // Group 0 points along x; a large y-gradient dominates the unclipped mean, clipping evens it out.
/// let gd = BTreeMap::from([(0usize, vec![1.0, 0.0])]);
/// let b = Tensor::new(&[[1f32, 0.], [0., 10.]], &Device::Cpu)?;
/// let r = dp_metrics::gradient_misalignment(&gd, &b, 1.0)?;
/// let g0 = &r.groups[0];
/// assert!(g0.cos_clipped.unwrap() > g0.cos_unclipped.unwrap()); // here clipping helps group 0
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn gradient_misalignment(
    group_grads: &BTreeMap<usize, Vec<f64>>,
    batch_grads: &Tensor,
    clip_norm: f64,
) -> Result<MisalignmentReport> {
    let (g, _, _) = grads_f64(batch_grads)?;
    let factors = clip_factors(&row_norms(&g)?, clip_norm)?;
    gradient_misalignment_with_factors(group_grads, batch_grads, &factors)
}

/// As [`gradient_misalignment`] with an arbitrary per-example scaling transform
/// ḡ_B = (1/n) Σ factors_i·g_i (adaptive clipping, normalisation, …).
///
/// ```
/// use std::collections::BTreeMap;
/// use candle_core::{Device, Tensor};
/// let gd = BTreeMap::from([(0usize, vec![1.0, 1.0])]);
/// let b = Tensor::new(&[[1f32, 1.]], &Device::Cpu)?;
/// let r = dp_metrics::gradient_misalignment_with_factors(&gd, &b, &[0.1])?;
/// assert!((r.groups[0].misalignment.unwrap()).abs() < 1e-12); // pure scaling: no misalignment
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn gradient_misalignment_with_factors(
    group_grads: &BTreeMap<usize, Vec<f64>>,
    batch_grads: &Tensor,
    factors: &[f64],
) -> Result<MisalignmentReport> {
    let (gb, gbt, d) = mean_and_transformed_mean(batch_grads, factors)?;
    let mut groups = Vec::with_capacity(group_grads.len());
    for (k, gd) in group_grads {
        if gd.len() != d {
            return Err(MetricsError::ShapeMismatch(format!(
                "group {k} gradient has dim {}, batch {d}",
                gd.len()
            )));
        }
        ensure_finite(gd, "group gradient")?;
        let cu = cosine(gd, &gb);
        let cc = cosine(gd, &gbt);
        groups.push(GroupMisalignment {
            group: *k,
            full_grad_norm: norm(gd),
            cos_unclipped: cu,
            cos_clipped: cc,
            misalignment: cu.zip(cc).map(|(a, b)| a - b),
        });
    }
    Ok(MisalignmentReport {
        batch_mean_norm: norm(&gb),
        batch_transformed_norm: norm(&gbt),
        cos_batch: cosine(&gb, &gbt),
        groups,
    })
}
