//! Loss-threshold membership-inference attack (Yeom, Giacomelli, Fredrikson & Jha 2018,
//! "Privacy risk in machine learning", CSF, §3.2), reported as in Carlini et al. 2022
//! ("Membership inference attacks from first principles", S&P): ROC AUC and the TPR at low
//! FPR. An empirical check *beside* the accountant's ε, never a substitute for it.
//!
//! The attack predicts "member" when the loss is below a threshold; sweeping the threshold
//! gives the ROC curve. The AUC is the Mann–Whitney statistic P(ℓ_member < ℓ_non-member)
//! + ½P(tie).

use serde::{Deserialize, Serialize};

use crate::error::{ensure_finite, ensure_nonempty, MetricsError, Result};

/// TPR at a maximum FPR.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TprAtFpr {
    /// The FPR budget α.
    pub max_fpr: f64,
    /// The best TPR over thresholds with FPR ≤ α.
    pub tpr: f64,
    /// The FPR actually achieved at that threshold.
    pub fpr: f64,
}

/// Result of the loss-threshold attack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MembershipReport {
    /// Number of member (training) losses.
    pub n_members: usize,
    /// Number of non-member (held-out) losses.
    pub n_nonmembers: usize,
    /// ROC AUC (0.5 = no leakage).
    pub auc: f64,
    /// Membership advantage max_t (TPR − FPR) (Yeom et al. 2018, Def. 4).
    pub advantage: f64,
    /// Best balanced accuracy, (1 + advantage)/2.
    pub best_accuracy: f64,
    /// TPR at each requested FPR level.
    pub tpr_at_fpr: Vec<TprAtFpr>,
}

/// The default low-FPR levels 1e-3, 1e-2, 0.1.
pub const DEFAULT_FPR_LEVELS: [f64; 3] = [1e-3, 1e-2, 0.1];

fn to_f64<T: Copy + Into<f64>>(v: &[T], what: &str) -> Result<Vec<f64>> {
    ensure_nonempty(v, what)?;
    let out: Vec<f64> = v.iter().map(|x| (*x).into()).collect();
    ensure_finite(&out, what)?;
    Ok(out)
}

/// ROC curve points (FPR, TPR) of the loss-threshold attack, from (0, 0) to (1, 1), one point
/// per distinct loss value (ties move both rates at once).
///
/// ```
/// let roc = dp_metrics::roc_curve(&[0.1f64, 0.2], &[0.3f64, 0.4])?;
/// assert_eq!(roc, vec![(0.0, 0.0), (0.0, 0.5), (0.0, 1.0), (0.5, 1.0), (1.0, 1.0)]);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn roc_curve<T: Copy + Into<f64>>(
    member_losses: &[T],
    nonmember_losses: &[T],
) -> Result<Vec<(f64, f64)>> {
    let m = to_f64(member_losses, "member losses")?;
    let nm = to_f64(nonmember_losses, "non-member losses")?;
    Ok(roc_points(&m, &nm))
}

fn roc_points(m: &[f64], nm: &[f64]) -> Vec<(f64, f64)> {
    // (loss, is_member), ascending: the threshold sweeps from "nobody is a member" upward.
    let mut all: Vec<(f64, bool)> = m
        .iter()
        .map(|&l| (l, true))
        .chain(nm.iter().map(|&l| (l, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (pm, pn) = (m.len() as f64, nm.len() as f64);
    let mut pts = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < all.len() {
        let v = all[i].0;
        while i < all.len() && all[i].0 == v {
            if all[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        pts.push((fp as f64 / pn, tp as f64 / pm));
    }
    pts
}

/// Runs the loss-threshold attack: AUC, advantage and the best TPR at each FPR in
/// `fpr_levels` (e.g. [`DEFAULT_FPR_LEVELS`]). Accepts `f32` or `f64` losses.
///
/// ```
/// let members = [0.1f32, 0.2, 0.3];
/// let held_out = [0.5f32, 0.6, 0.7];
/// let r = dp_metrics::loss_threshold_attack(&members, &held_out, &dp_metrics::DEFAULT_FPR_LEVELS)?;
/// assert_eq!(r.auc, 1.0); // perfectly separable
/// assert_eq!(r.tpr_at_fpr[0].tpr, 1.0);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn loss_threshold_attack<T: Copy + Into<f64>>(
    member_losses: &[T],
    nonmember_losses: &[T],
    fpr_levels: &[f64],
) -> Result<MembershipReport> {
    let m = to_f64(member_losses, "member losses")?;
    let nm = to_f64(nonmember_losses, "non-member losses")?;
    if fpr_levels.iter().any(|a| !(0.0..=1.0).contains(a)) {
        return Err(MetricsError::InvalidArgument(
            "FPR levels must be in [0, 1]".into(),
        ));
    }
    let pts = roc_points(&m, &nm);
    // Trapezoidal area = Mann–Whitney U / (n_m n_n) with ties counted ½.
    let auc = pts
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
        .sum::<f64>();
    let advantage = pts.iter().map(|(f, t)| t - f).fold(0.0f64, f64::max);
    let tpr_at_fpr =
        fpr_levels
            .iter()
            .map(|&a| {
                let (fpr, tpr) = pts.iter().filter(|(f, _)| *f <= a + 1e-12).fold(
                    (0.0, 0.0),
                    |best, &(f, t)| if t > best.1 { (f, t) } else { best },
                );
                TprAtFpr {
                    max_fpr: a,
                    tpr,
                    fpr,
                }
            })
            .collect();
    Ok(MembershipReport {
        n_members: m.len(),
        n_nonmembers: nm.len(),
        auc,
        advantage,
        best_accuracy: (1.0 + advantage) / 2.0,
        tpr_at_fpr,
    })
}
