//! What a run records: per step, per epoch, and at the end. Every record says what its ε
//! means ([`Guarantee`]); a run that is not differentially private reports ε = ∞, written
//! `"inf"` in JSON (never a number, never `null`).

use crate::plan::Regime;
use serde::{Deserialize, Serialize};

/// What the ε of a record certifies.
///
/// ```
/// use dp_optim::{Guarantee, Regime};
/// assert!(Guarantee::Dp.is_private());
/// let g = Guarantee::NotPrivate { regime: Regime::ClipOnly };
/// assert!(!g.is_private());
/// assert_eq!(serde_json::to_string(&g).unwrap(), r#"{"kind":"not_private","regime":"clip_only"}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Guarantee {
    /// (ε, δ)-DP: the batches were Poisson-sampled, as the accountant assumes.
    Dp,
    /// (ε, δ)-DP **only if** the batches had been Poisson-sampled: the sampler was another
    /// (the user opted in with [`crate::TrainerConfig::assume_poisson_accounting`]).
    DpAssumingPoisson {
        /// The sampler actually used.
        sampler: String,
    },
    /// Not differentially private (ε = ∞).
    NotPrivate {
        /// The regime of the run.
        regime: Regime,
    },
}

impl Guarantee {
    /// Whether ε is finite.
    pub fn is_private(&self) -> bool {
        !matches!(self, Guarantee::NotPrivate { .. })
    }
}

/// ε and other values that may be infinite, as JSON numbers or the string `"inf"`.
pub(crate) mod maybe_inf {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Num(f64),
        Text(String),
    }

    fn parse(r: Repr) -> Result<f64, String> {
        match r {
            Repr::Num(x) => Ok(x),
            Repr::Text(t) if t == "inf" || t == "infinity" => Ok(f64::INFINITY),
            Repr::Text(t) => Err(format!("expected a number or \"inf\", got {t:?}")),
        }
    }

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if *x == f64::INFINITY {
            s.serialize_str("inf")
        } else {
            s.serialize_f64(*x)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        parse(Repr::deserialize(d)?).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::*;
        pub fn serialize<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match x {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            match Option::<Repr>::deserialize(d)? {
                Some(r) => parse(r).map(Some).map_err(serde::de::Error::custom),
                None => Ok(None),
            }
        }
    }
}

/// What one step did.
///
/// **Not a release artefact.** The fields marked NON-PRIVATE (loss, realised batch size,
/// fraction clipped, median norm) are computed from the private batch without noise: they
/// are not covered by ε, and their JSON names start with `non_private_` so that a file
/// holding them says so. Researchers need them; keep them with the checkpoint, never publish
/// them, never feed them back into training. The other fields are public (the configuration,
/// ε) or noisy releases (`statistics`, and a clip norm derived from them). What to publish
/// is [`PrivacyReport`] and the model ([`crate::PrivateTrainer::save_release`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1-based step number.
    pub step: u64,
    /// Epochs completed (fractional).
    pub epoch: f64,
    /// ε spent after this step: every step for accountants whose ε is cheap to evaluate
    /// (RDP), `None` between epochs for the others (PRV); ∞ for a run that is not DP.
    #[serde(with = "maybe_inf::option")]
    pub epsilon: Option<f64>,
    /// What ε certifies.
    pub guarantee: Guarantee,
    /// The regime this step ran in (a switching run changes it between phases; records of
    /// checkpoints written before the field existed read as private).
    #[serde(default)]
    pub regime: Regime,
    /// NON-PRIVATE: mean loss over the realised batch (analysis only).
    #[serde(rename = "non_private_loss", alias = "loss")]
    pub loss: f64,
    /// The clip bound (the strategy's threshold) used by this step.
    pub clip_norm: f64,
    /// L2 sensitivity of the gradient sum (∞ when the regime does not clip).
    #[serde(with = "maybe_inf")]
    pub sensitivity: f64,
    /// NON-PRIVATE: fraction of examples whose norm exceeded the bound (analysis only).
    #[serde(rename = "non_private_fraction_clipped", alias = "fraction_clipped")]
    pub fraction_clipped: f64,
    /// NON-PRIVATE: realised batch size (analysis only; under Poisson sampling the size
    /// itself reveals membership information).
    #[serde(rename = "non_private_batch_size", alias = "batch_size")]
    pub batch_size: usize,
    /// NON-PRIVATE: median per-example gradient norm (analysis only; `None` when no norms
    /// were taken).
    #[serde(rename = "non_private_median_norm", alias = "median_norm")]
    pub median_norm: Option<f64>,
    /// Std of the noise added to the gradient sum (`σ·S`; 0 without noise).
    pub noise_std: f64,
    /// The noisy statistics the method asked for (private releases), in its order.
    pub statistics: Vec<f64>,
    /// NON-PRIVATE: the step's clipping bias and clipped/unclipped cosine, when
    /// [`crate::TrainerConfig::track_clipping_bias`] is on (analysis only).
    #[serde(rename = "non_private_clipping_bias", default)]
    pub clipping_bias: Option<crate::ClippingBias>,
}

/// End-of-epoch evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch number (1-based).
    pub epoch: u64,
    /// Steps so far.
    pub step: u64,
    /// ε spent so far (∞ for a run that is not DP).
    #[serde(with = "maybe_inf")]
    pub epsilon: f64,
    /// What ε certifies.
    pub guarantee: Guarantee,
    /// Test accuracy in [0, 1] (if a test set was given).
    pub test_accuracy: Option<f64>,
    /// Mean test loss.
    pub test_loss: Option<f64>,
    /// Clip bound of the last step of the epoch.
    pub clip_norm: f64,
    /// Test accuracy of the averaged weights, for a run with
    /// [`crate::TrainerConfig::averaging`] (post-processing: same ε).
    #[serde(default)]
    pub averaged_test_accuracy: Option<f64>,
    /// Mean test loss of the averaged weights.
    #[serde(default)]
    pub averaged_test_loss: Option<f64>,
}

/// Why training stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StopReason {
    /// All planned steps were taken.
    Completed,
    /// The next step would have spent more than the budget.
    BudgetExhausted {
        /// ε that the next step would have reached.
        would_reach: f64,
        /// The budget.
        budget: f64,
    },
    /// The epoch callback of [`crate::TrainHooks::on_epoch`] stopped the run.
    StoppedByCallback {
        /// The epoch after which it stopped (1-based).
        epoch: u64,
    },
}

/// Summary of a [`crate::PrivateTrainer::train`] call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Steps taken in total.
    pub steps: u64,
    /// ε spent (the configured accountant; PRV: certified upper bound; ∞ when not DP).
    #[serde(with = "maybe_inf")]
    pub epsilon: f64,
    /// δ.
    pub delta: f64,
    /// What ε certifies.
    pub guarantee: Guarantee,
    /// The budgeted noise multiplier.
    pub noise_multiplier: f64,
    /// Test accuracy after the last epoch, if evaluated.
    pub test_accuracy: Option<f64>,
    /// Test accuracy of the averaged weights after the last epoch, for a run with
    /// [`crate::TrainerConfig::averaging`].
    #[serde(default)]
    pub averaged_test_accuracy: Option<f64>,
    /// Why it stopped.
    pub stop: StopReason,
    /// Wall-clock seconds of this call.
    pub seconds: f64,
}

/// What a run may publish besides the model: its privacy guarantee and the public settings
/// that produced it — nothing computed from the training data without noise (no losses,
/// batch sizes, clip fractions or norms; see [`StepRecord`]). Written by
/// [`crate::PrivateTrainer::save_release`] as `privacy_report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacyReport {
    /// ε spent (∞ when the run is not DP).
    #[serde(with = "maybe_inf")]
    pub epsilon: f64,
    /// δ.
    pub delta: f64,
    /// What ε certifies.
    pub guarantee: Guarantee,
    /// The accountant that computed ε.
    pub accountant: dp_accounting::AccountantKind,
    /// Steps taken.
    pub steps: u64,
    /// Sampling rate `q = B/N`.
    pub sampling_rate: f64,
    /// Expected batch size `B` (public).
    pub expected_batch_size: f64,
    /// The budgeted noise multiplier of the method.
    pub noise_multiplier: f64,
    /// The privacy method's name.
    pub method: String,
    /// The budget the run was held to, if any.
    pub target_epsilon: Option<f64>,
}
