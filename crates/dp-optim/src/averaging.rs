//! Parameter averaging: an exponential moving average (EMA) or the Polyak (uniform) average
//! of the iterates, kept next to the trained weights and evaluated instead of them.
//!
//! De et al. (2022, "Unlocking high-accuracy differentially private image classification
//! through scale", §3.2) average the weights of DP-SGD runs (EMA with decay 0.9999, and
//! Polyak averaging, both from step 0): the noise of single iterates averages out. The
//! conventions are those of their official code (`jax_privacy/src/training/averaging.py`):
//! after the update with index `t = 0, 1, …`
//!
//! - **Polyak**: `θ̄ ← (t·θ̄ + θ)/(t + 1)`, the mean of the iterates after each update;
//! - **EMA**: `θ̄ ← μ_t·θ̄ + (1 − μ_t)·θ` with `μ_t = min(μ, (1 + t)/(10 + t))` when warm-up is
//!   on (their default; `μ_t = μ` otherwise), starting from the initial weights.
//!
//! **Privacy.** DP-SGD's guarantee covers the whole sequence of iterates (each step releases
//! its noisy gradient, and the accountant composes them all), so any function of the
//! iterates — their average included — is post-processing: evaluating or releasing the
//! averaged weights costs nothing more (tested: ε is unchanged).

use crate::error::{Result, TrainError};
use crate::tensor_state::TensorState;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Which average of the iterates a run keeps ([`crate::TrainerConfig::with_averaging`]).
///
/// ```
/// use dp_optim::Averaging;
/// let ema = Averaging::ema(0.9999)?;
/// assert_eq!(ema.old_weight(0), 0.1); // warm-up: min(μ, 1/10)
/// assert_eq!(Averaging::Polyak.old_weight(3), 0.75); // (3·θ̄ + θ)/4
/// assert!(Averaging::ema(1.0).is_err());
/// # Ok::<(), dp_optim::TrainError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Averaging {
    /// Exponential moving average with decay `μ ∈ [0, 1)`, optionally warmed up.
    Ema {
        /// The decay μ (De et al. 2022: 0.9999).
        decay: f64,
        /// Use `min(μ, (1 + t)/(10 + t))` (jax_privacy's default), so that the early
        /// average is not dominated by the initial weights.
        warmup: bool,
    },
    /// The uniform (Polyak–Ruppert) average of the iterates after each update.
    Polyak,
}

impl Averaging {
    /// An EMA with decay `decay` and jax_privacy's warm-up. Refused unless `0 ≤ decay < 1`
    /// (μ = 1 would never move from the initial weights).
    pub fn ema(decay: f64) -> Result<Self> {
        if !(decay.is_finite() && (0.0..1.0).contains(&decay)) {
            return Err(TrainError::InvalidConfig(format!(
                "EMA decay {decay} must lie in [0, 1)"
            )));
        }
        Ok(Averaging::Ema {
            decay,
            warmup: true,
        })
    }

    /// Checks a value built directly (e.g. read from a file).
    pub fn validate(&self) -> Result<()> {
        match *self {
            Averaging::Ema { decay, .. } => Self::ema(decay).map(|_| ()),
            Averaging::Polyak => Ok(()),
        }
    }

    /// The weight of the old average in the update with index `t` (0 for the first update).
    pub fn old_weight(&self, t: u64) -> f64 {
        let t = t as f64;
        match *self {
            Averaging::Ema { decay, warmup } => {
                if warmup {
                    decay.min((1.0 + t) / (10.0 + t))
                } else {
                    decay
                }
            }
            Averaging::Polyak => t / (t + 1.0),
        }
    }

    /// A short name for records and JSON lines: `"ema(0.9999)"`, `"polyak"`.
    pub fn label(&self) -> String {
        match *self {
            Averaging::Ema { decay, warmup } => {
                format!("ema({decay}{})", if warmup { "" } else { ", no warm-up" })
            }
            Averaging::Polyak => "polyak".into(),
        }
    }
}

/// The running average of a model's parameters.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_optim::{Averaging, ParamAverage};
/// let p0 = Tensor::new(&[0f32, 0.], &Device::Cpu)?;
/// let mut avg = ParamAverage::new(Averaging::Polyak, &[p0]);
/// avg.update(&[Tensor::new(&[2f32, 4.], &Device::Cpu)?])?;
/// avg.update(&[Tensor::new(&[4f32, 8.], &Device::Cpu)?])?;
/// assert_eq!(avg.values()[0].to_vec1::<f32>()?, [3.0, 6.0]); // mean of the iterates
/// assert_eq!(avg.updates(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ParamAverage {
    kind: Averaging,
    updates: u64,
    values: Vec<Tensor>,
}

/// A [`ParamAverage`] as stored in checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AverageState {
    pub kind: Averaging,
    pub updates: u64,
    pub values: Vec<TensorState>,
}

impl ParamAverage {
    /// Starts the average at `initial` (the weights before the first update).
    pub fn new(kind: Averaging, initial: &[Tensor]) -> Self {
        Self {
            kind,
            updates: 0,
            values: initial.to_vec(),
        }
    }

    /// Folds in the weights after one more update.
    pub fn update(&mut self, params: &[Tensor]) -> Result<()> {
        if params.len() != self.values.len() {
            return Err(TrainError::InvalidConfig(format!(
                "averaging {} parameter tensors, got {}",
                self.values.len(),
                params.len()
            )));
        }
        let mu = self.kind.old_weight(self.updates);
        let next = self
            .values
            .iter()
            .zip(params)
            .map(|(old, new)| Ok((old.affine(mu, 0.0)? + new.affine(1.0 - mu, 0.0)?)?))
            .collect::<Result<Vec<_>>>()?;
        self.values = next;
        self.updates += 1;
        Ok(())
    }

    /// The averaged parameters, in the model's parameter order.
    pub fn values(&self) -> &[Tensor] {
        &self.values
    }

    /// Updates folded in so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Which average this is.
    pub fn kind(&self) -> Averaging {
        self.kind
    }

    pub(crate) fn to_state(&self) -> Result<AverageState> {
        Ok(AverageState {
            kind: self.kind,
            updates: self.updates,
            values: self
                .values
                .iter()
                .map(TensorState::from_tensor)
                .collect::<Result<_>>()?,
        })
    }

    pub(crate) fn from_state(state: &AverageState, device: &Device) -> Result<Self> {
        state.kind.validate()?;
        Ok(Self {
            kind: state.kind,
            updates: state.updates,
            values: state
                .values
                .iter()
                .map(|t| t.to_tensor(device))
                .collect::<Result<_>>()?,
        })
    }
}
