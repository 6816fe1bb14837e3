//! What a checkpoint stores besides the weights.

use crate::config::TrainerConfig;
use crate::optim::OptimizerState;
use crate::records::{EpochRecord, StepRecord};
use dp_accounting::{AnyAccountant, BudgetGuard};
use serde::{Deserialize, Serialize};

/// Everything a checkpoint stores besides the weights: configuration, position, optimiser
/// and method state, the accountant (inside its budget guard), the sampler, noise and
/// augmentation streams, and the records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TrainerState {
    pub config: TrainerConfig,
    pub step: u64,
    pub total_steps: u64,
    pub dataset_len: usize,
    pub optimizer: OptimizerState,
    pub method_name: String,
    pub method: serde_json::Value,
    pub guard: BudgetGuard<AnyAccountant>,
    pub sampler: dp_data::SamplerState,
    pub noise: dp_core::NoiseState,
    pub records: Vec<StepRecord>,
    pub epochs: Vec<EpochRecord>,
    /// Augmentation generator: key and stream position (as for the noise stream).
    #[serde(default)]
    pub augment: Option<dp_core::NoiseState>,
    /// The pruning mask the run trains under.
    #[serde(default)]
    pub mask: Option<crate::pruning::MaskState>,
    /// The average of the iterates, for a run with averaging.
    #[serde(default)]
    pub average: Option<crate::averaging::AverageState>,
}
