//! Pruning under DP with the privacy of the mask stated by construction (Watson et al.
//! 2023; algorithms.md §10, §14.5).
//!
//! A mask chosen by looking at private data is itself a release. [`TrainingMask`] can only
//! be built in ways whose cost is known:
//!
//! * [`TrainingMask::at_initialisation`]: from the initial weights — a function of the seed,
//!   not of the data (the same mask for any two datasets);
//! * [`TrainingMask::from_public_model`]: from a model trained on other, public data (e.g.
//!   FashionMNIST for an MNIST run): no cost on the private data;
//! * [`TrainingMask::from_released`]: from the weights a private run released — post-
//!   processing of that release. The mask carries the run's accounting history, and a
//!   trainer built with it ([`crate::TrainerBuilder::mask`]) composes that history before
//!   its first step, so re-training reports (and budgets, and calibrates for) the ε of the
//!   whole pipeline. A mask from the weights of a run that is not DP cannot be used by a
//!   private run.
//!
//! The trainer hands the mask to the engine (`dp_core::GradOptions::mask`): pruned
//! coordinates get no gradient and no noise, the clipped norms are over the active
//! coordinates only, and the weights are re-masked after every update, so pruned weights
//! stay exactly zero whatever the optimiser does.

use crate::error::{Result, TrainError};
use crate::trainer::PrivateTrainer;
use dp_accounting::{Accountant, DpEvent};
use dp_core::{GradientMask, Model, Prunable, PruneScope};
use serde::{Deserialize, Serialize};

/// Where a mask came from, which decides what it costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MaskSource {
    /// The initial weights (data-independent).
    Initialisation,
    /// A model trained on the named public dataset.
    PublicModel {
        /// The public dataset's name.
        dataset: String,
    },
    /// The weights released by an earlier run on the private data.
    ReleasedWeights {
        /// Whether that run was DP (a mask from a non-private run is not private).
        private: bool,
        /// Its ε at `delta` (∞ when not private).
        #[serde(with = "crate::records::maybe_inf")]
        epsilon: f64,
        /// The δ of `epsilon`.
        delta: f64,
        /// Its steps.
        steps: u64,
    },
}

impl MaskSource {
    /// A short name for records (`init`, `public`, `released`).
    pub fn name(&self) -> &'static str {
        match self {
            MaskSource::Initialisation => "init",
            MaskSource::PublicModel { .. } => "public",
            MaskSource::ReleasedWeights { .. } => "released",
        }
    }
}

/// A pruning mask with its provenance: what [`crate::TrainerBuilder::mask`] takes.
///
/// ```
/// use dp_core::{models, Model, Prunable, PruneScope};
/// use dp_optim::TrainingMask;
/// let dev = candle_core::Device::Cpu;
/// let model = models::mlp(&[784, 32, 10], &dev, 0).unwrap();
/// let mask = TrainingMask::at_initialisation(&model, 0.9, PruneScope::Global, Prunable::Weights).unwrap();
/// assert_eq!(mask.source().name(), "init");
/// // 90% of the 25,408 weights pruned; the 42 biases stay.
/// assert_eq!(mask.mask().num_active(), 25_408 - 22_867 + 42);
/// ```
#[derive(Debug, Clone)]
pub struct TrainingMask {
    mask: GradientMask,
    source: MaskSource,
    sparsity: f64,
    scope: PruneScope,
    prior: Vec<DpEvent>,
}

impl TrainingMask {
    /// Magnitude pruning of the model's **initial** weights. Call it on the freshly built
    /// model (before any training): the mask is then a function of the seed alone.
    pub fn at_initialisation<M: Model>(
        model: &M,
        sparsity: f64,
        scope: PruneScope,
        prunable: Prunable,
    ) -> Result<Self> {
        Self::magnitude(
            model,
            sparsity,
            scope,
            prunable,
            MaskSource::Initialisation,
            vec![],
        )
    }

    /// Magnitude pruning of a model trained on the public dataset `dataset` (never the
    /// private one: the mask would then be an unaccounted release).
    pub fn from_public_model<M: Model>(
        public_model: &M,
        dataset: impl Into<String>,
        sparsity: f64,
        scope: PruneScope,
        prunable: Prunable,
    ) -> Result<Self> {
        let source = MaskSource::PublicModel {
            dataset: dataset.into(),
        };
        Self::magnitude(public_model, sparsity, scope, prunable, source, vec![])
    }

    /// Magnitude pruning of the weights `trainer` has released (its current model), as
    /// post-processing of that run: the mask carries the run's accounting history, which a
    /// trainer built with it composes first.
    pub fn from_released<M: Model>(
        trainer: &PrivateTrainer<M>,
        sparsity: f64,
        scope: PruneScope,
        prunable: Prunable,
    ) -> Result<Self> {
        let private = trainer.config().is_private();
        let source = MaskSource::ReleasedWeights {
            private,
            epsilon: trainer.epsilon()?,
            delta: trainer.config().delta,
            steps: trainer.steps_taken(),
        };
        // The run's whole history: a run that was itself built on a released mask composed
        // that mask's history first, so this covers the whole pipeline. A run that is not
        // DP has no history worth carrying (its mask is refused by private runs).
        let prior = if private {
            trainer.accountant().history().to_vec()
        } else {
            Vec::new()
        };
        Self::magnitude(trainer.model(), sparsity, scope, prunable, source, prior)
    }

    fn magnitude<M: Model>(
        model: &M,
        sparsity: f64,
        scope: PruneScope,
        prunable: Prunable,
        source: MaskSource,
        prior: Vec<DpEvent>,
    ) -> Result<Self> {
        let mask = GradientMask::magnitude(&model.param_tensors(), sparsity, scope, prunable)?;
        Ok(Self {
            mask,
            source,
            sparsity,
            scope,
            prior,
        })
    }

    /// The engine's mask.
    pub fn mask(&self) -> &GradientMask {
        &self.mask
    }
    /// Where it came from.
    pub fn source(&self) -> &MaskSource {
        &self.source
    }
    /// The requested fraction of prunable coordinates removed.
    pub fn sparsity(&self) -> f64 {
        self.sparsity
    }
    /// Global or per-layer ranking.
    pub fn scope(&self) -> PruneScope {
        self.scope
    }
    /// The releases the mask depends on (empty unless it came from released weights).
    pub fn prior_events(&self) -> &[DpEvent] {
        &self.prior
    }

    /// Refuses a mask whose source makes a private run not private.
    pub(crate) fn check_for(&self, run_is_private: bool) -> Result<()> {
        if let MaskSource::ReleasedWeights { private: false, .. } = self.source {
            if run_is_private {
                return Err(TrainError::InvalidConfig(
                    "the mask was computed from the weights of a run that is not DP, so a \
                     run trained under it is not DP either; compute it at initialisation, \
                     from a public model, or from a private run's released weights"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn to_state(&self) -> Result<MaskState> {
        let keep = self
            .mask
            .keep_flags()?
            .into_iter()
            .map(|k| k.map(|k| pack_bits(&k)))
            .collect();
        Ok(MaskState {
            source: self.source.clone(),
            sparsity: self.sparsity,
            scope: self.scope,
            keep,
        })
    }

    pub(crate) fn from_state<M: Model>(state: MaskState, model: &M) -> Result<Self> {
        let params = model.param_tensors();
        if state.keep.len() != params.len() {
            return Err(TrainError::InvalidConfig(format!(
                "the checkpoint's mask covers {} parameters, the model has {}",
                state.keep.len(),
                params.len()
            )));
        }
        let keep = state
            .keep
            .into_iter()
            .zip(&params)
            .map(|(k, p)| k.map(|bits| unpack_bits(&bits, p.elem_count())))
            .collect();
        Ok(Self {
            mask: GradientMask::from_keep(&params, keep)?,
            source: state.source,
            sparsity: state.sparsity,
            scope: state.scope,
            // Already composed into the checkpoint's accountant.
            prior: Vec::new(),
        })
    }
}

/// A mask as a checkpoint stores it (keep flags packed 8 per byte).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MaskState {
    source: MaskSource,
    sparsity: f64,
    scope: PruneScope,
    keep: Vec<Option<Vec<u8>>>,
}

fn pack_bits(keep: &[bool]) -> Vec<u8> {
    keep.chunks(8)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u8, |b, (i, &k)| b | ((k as u8) << i))
        })
        .collect()
}

fn unpack_bits(bits: &[u8], n: usize) -> Vec<bool> {
    (0..n)
        .map(|i| bits.get(i / 8).is_some_and(|b| (b >> (i % 8)) & 1 == 1))
        .collect()
}

/// Composes `events` into `accountant` (a pipeline's earlier releases).
pub(crate) fn compose_prior<A: Accountant>(accountant: &mut A, events: &[DpEvent]) -> Result<()> {
    for e in events {
        accountant.compose(e)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip() {
        let keep: Vec<bool> = (0..37).map(|i| i % 3 == 0 || i == 36).collect();
        assert_eq!(unpack_bits(&pack_bits(&keep), keep.len()), keep);
    }
}
