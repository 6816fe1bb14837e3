//! Checkpoints: weights as safetensors, everything else (optimiser, method, accountant,
//! sampler and noise streams, records) as JSON, so that a resumed run continues exactly —
//! the same batches, the same noise, and the accountant's history rather than a fresh one.
//!
//! The noise and sampler seeds are as sensitive as the data: whoever holds them can
//! subtract the noise from released gradients. Store checkpoints accordingly.

use crate::error::{Result, TrainError};
use crate::methods::PrivacyMethod;
use crate::optim::BaseOptimizer;
use crate::state::TrainerState;
use crate::trainer::{BoxedSampler, PrivateTrainer};
use candle_core::{Device, Tensor};
use dp_core::{GaussianNoise, Model};
use dp_data::{
    Dataset, FixedSizeSampler, PoissonSampler, SamplerState, SamplingScheme, ShuffledSampler,
};
use std::collections::HashMap;
use std::path::Path;

const WEIGHTS: &str = "weights.safetensors";
const STATE: &str = "state.json";

/// Rebuilds a sampler of the scheme that wrote `state`, continuing its stream.
fn sampler_from_state(state: SamplerState) -> Result<BoxedSampler> {
    Ok(match state.scheme {
        SamplingScheme::Poisson { .. } => Box::new(PoissonSampler::from_state(state)?),
        SamplingScheme::Shuffled { .. } => Box::new(ShuffledSampler::from_state(state)?),
        SamplingScheme::FixedSizeWithoutReplacement { .. } => {
            Box::new(FixedSizeSampler::from_state(state)?)
        }
    })
}

fn ck_err(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

impl<M: Model> PrivateTrainer<M> {
    /// Writes `dir/weights.safetensors` and `dir/state.json`.
    pub fn save_checkpoint(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)?;
        let weights: HashMap<String, Tensor> = self
            .model()
            .named_params()
            .into_iter()
            .map(|(n, p)| (n, p.value.clone()))
            .collect();
        candle_core::safetensors::save(&weights, dir.join(WEIGHTS))?;
        let state = self.export_state()?;
        std::fs::write(dir.join(STATE), serde_json::to_vec_pretty(&state)?)?;
        Ok(())
    }

    /// Resumes a run saved by [`PrivateTrainer::save_checkpoint`] into a freshly built
    /// `model`, `optimizer` and `method` of the same kinds. The accountant, sampler and
    /// noise streams continue where they stopped: ε after resuming equals ε of an
    /// uninterrupted run (tested). The loss is the default (cross-entropy): set another with
    /// [`PrivateTrainer::set_loss`].
    pub fn resume(
        dir: impl AsRef<Path>,
        mut model: M,
        mut optimizer: Box<dyn BaseOptimizer>,
        mut method: Box<dyn PrivacyMethod>,
        train: &Dataset,
        device: &Device,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let wpath = dir.join(WEIGHTS);
        let spath = dir.join(STATE);
        let mut weights = candle_core::safetensors::load(&wpath, device)
            .map_err(|e| ck_err(&wpath, e.to_string()))?;
        let names: Vec<String> = model.named_params().into_iter().map(|(n, _)| n).collect();
        let mut values = Vec::with_capacity(names.len());
        for n in &names {
            values.push(
                weights
                    .remove(n)
                    .ok_or_else(|| ck_err(&wpath, format!("no tensor named {n}")))?,
            );
        }
        if !weights.is_empty() {
            return Err(ck_err(&wpath, "extra tensors: the model does not match"));
        }
        model
            .set_param_tensors(&values)
            .map_err(|e| ck_err(&wpath, e.to_string()))?;
        let state: TrainerState = serde_json::from_slice(&std::fs::read(&spath)?)
            .map_err(|e| ck_err(&spath, e.to_string()))?;
        if state.dataset_len != train.len() {
            return Err(ck_err(
                &spath,
                format!(
                    "saved for {} examples, got {}",
                    state.dataset_len,
                    train.len()
                ),
            ));
        }
        if method.name() != state.method_name {
            return Err(ck_err(
                &spath,
                format!("saved method {}, got {}", state.method_name, method.name()),
            ));
        }
        optimizer.load_state(&state.optimizer, device)?;
        method.load_state(&state.method)?;
        let sampler = sampler_from_state(state.sampler.clone())?;
        let noise = GaussianNoise::from_state(&state.noise);
        PrivateTrainer::from_parts(model, optimizer, method, state, sampler, noise)
    }
}
