//! Per-group / per-class accuracy and the disparate impact of privacy (Bagdasaryan,
//! Poursaeed & Shmatikov 2019, "Differential privacy has disparate impact on model accuracy";
//! Esipova et al. 2023; algorithms.md §14.4 "Fairness outcome").
//!
//! The privacy cost of group k is π_k = acc_k(non-private) − acc_k(private); the disparity is
//! π_minority − π_majority.

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{ensure_nonempty, MetricsError, Result};

/// Accuracy of one group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupAccuracy {
    /// Group id.
    pub group: usize,
    /// Correct predictions.
    pub correct: usize,
    /// Examples.
    pub total: usize,
    /// correct / total.
    pub accuracy: f64,
}

/// Overall, macro and per-group accuracy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccuracyReport {
    /// Accuracy over all examples.
    pub overall: f64,
    /// Unweighted mean of the group accuracies.
    pub macro_accuracy: f64,
    /// Per group, in increasing id.
    pub groups: Vec<GroupAccuracy>,
}

/// Arg-max class of every row of `[n, classes]` logits.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let l = Tensor::new(&[[0.1f32, 2.0, -1.0], [3.0, 0.0, 0.0]], &Device::Cpu)?;
/// assert_eq!(dp_metrics::predictions_from_logits(&l)?, vec![1, 0]);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn predictions_from_logits(logits: &Tensor) -> Result<Vec<usize>> {
    logits.dims2().map_err(|_| {
        MetricsError::ShapeMismatch(format!(
            "logits must be [n, classes], got {:?}",
            logits.dims()
        ))
    })?;
    Ok(logits
        .argmax(1)?
        .to_vec1::<u32>()?
        .into_iter()
        .map(|v| v as usize)
        .collect())
}

/// Accuracy per group (`groups[i]` is example i's group id).
///
/// ```
/// let r = dp_metrics::accuracy_by_group(&[1, 0, 1, 1], &[1, 1, 1, 0], &[0, 0, 1, 1])?;
/// assert_eq!(r.overall, 0.5);
/// assert_eq!((r.groups[0].accuracy, r.groups[1].accuracy), (0.5, 0.5));
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn accuracy_by_group(
    predictions: &[usize],
    labels: &[usize],
    groups: &[usize],
) -> Result<AccuracyReport> {
    ensure_nonempty(predictions, "no predictions")?;
    if predictions.len() != labels.len() || labels.len() != groups.len() {
        return Err(MetricsError::ShapeMismatch(
            "predictions, labels and groups differ in length".into(),
        ));
    }
    let mut per: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    let mut correct_all = 0;
    for ((p, l), g) in predictions.iter().zip(labels).zip(groups) {
        let e = per.entry(*g).or_insert((0, 0));
        e.1 += 1;
        if p == l {
            e.0 += 1;
            correct_all += 1;
        }
    }
    let groups: Vec<GroupAccuracy> = per
        .into_iter()
        .map(|(group, (correct, total))| GroupAccuracy {
            group,
            correct,
            total,
            accuracy: correct as f64 / total as f64,
        })
        .collect();
    let macro_accuracy = groups.iter().map(|g| g.accuracy).sum::<f64>() / groups.len() as f64;
    Ok(AccuracyReport {
        overall: correct_all as f64 / predictions.len() as f64,
        macro_accuracy,
        groups,
    })
}

/// Accuracy per class (the groups are the labels).
///
/// ```
/// let r = dp_metrics::accuracy_by_class(&[0, 0, 1], &[0, 1, 1])?;
/// assert_eq!((r.groups[0].accuracy, r.groups[1].accuracy), (1.0, 0.5));
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn accuracy_by_class(predictions: &[usize], labels: &[usize]) -> Result<AccuracyReport> {
    accuracy_by_group(predictions, labels, labels)
}

/// Privacy cost of one group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrivacyCost {
    /// Group id.
    pub group: usize,
    /// Non-private accuracy.
    pub nonprivate_accuracy: f64,
    /// Private accuracy.
    pub private_accuracy: f64,
    /// π_k = non-private − private.
    pub cost: f64,
}

/// Disparate impact of privacy across groups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DisparateImpact {
    /// Per group present in both reports.
    pub costs: Vec<PrivacyCost>,
    /// max_k π_k − min_k π_k.
    pub max_gap: f64,
    /// Group with the largest cost.
    pub worst_group: usize,
    /// Non-private − private overall accuracy.
    pub overall_cost: f64,
    /// Non-private − private macro accuracy.
    pub macro_cost: f64,
}

impl DisparateImpact {
    /// π_minority − π_majority (e.g. Esipova et al. compare class 8 with class 2).
    pub fn disparity(&self, minority: usize, majority: usize) -> Result<f64> {
        let find = |g: usize| {
            self.costs
                .iter()
                .find(|c| c.group == g)
                .map(|c| c.cost)
                .ok_or_else(|| MetricsError::InvalidArgument(format!("group {g} not present")))
        };
        Ok(find(minority)? - find(majority)?)
    }
}

/// Privacy cost per group and the gaps between groups, from the accuracy reports of a
/// non-private and a private model on the same evaluation set.
///
/// ```
/// let np = dp_metrics::accuracy_by_group(&[0, 1, 0, 1], &[0, 1, 0, 1], &[0, 0, 1, 1])?;
/// let p = dp_metrics::accuracy_by_group(&[0, 1, 1, 1], &[0, 1, 0, 1], &[0, 0, 1, 1])?;
/// let d = dp_metrics::disparate_impact(&np, &p)?;
/// assert_eq!(d.disparity(1, 0)?, 0.5);
/// assert_eq!((d.max_gap, d.worst_group), (0.5, 1));
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn disparate_impact(
    nonprivate: &AccuracyReport,
    private: &AccuracyReport,
) -> Result<DisparateImpact> {
    let costs: Vec<PrivacyCost> = nonprivate
        .groups
        .iter()
        .filter_map(|a| {
            private
                .groups
                .iter()
                .find(|b| b.group == a.group)
                .map(|b| PrivacyCost {
                    group: a.group,
                    nonprivate_accuracy: a.accuracy,
                    private_accuracy: b.accuracy,
                    cost: a.accuracy - b.accuracy,
                })
        })
        .collect();
    ensure_nonempty(&costs, "no group present in both reports")?;
    let (mut lo, mut hi, mut worst) = (f64::INFINITY, f64::NEG_INFINITY, costs[0].group);
    for c in &costs {
        lo = lo.min(c.cost);
        if c.cost > hi {
            hi = c.cost;
            worst = c.group;
        }
    }
    Ok(DisparateImpact {
        costs,
        max_gap: hi - lo,
        worst_group: worst,
        overall_cost: nonprivate.overall - private.overall,
        macro_cost: nonprivate.macro_accuracy - private.macro_accuracy,
    })
}
