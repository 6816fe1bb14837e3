//! The private training loop: dataset → Poisson sampler → per-sample clipping → noise →
//! optimiser → accountant, with a budget that is never exceeded.

use crate::accountant::AnyAccountant;
use crate::error::{Result, TrainError};
use crate::methods::PrivacyMethod;
use crate::optimizer::BaseOptimizer;
use candle_core::{Device, Tensor};
use dp_accounting::calibration::{max_steps_with, steps_for_epochs};
use dp_accounting::{
    calibrate_noise_multiplier, Accountant, AccountantKind, DpEvent, PrvAccountant,
};
use dp_core::clipping::FlatClip;
use dp_core::{
    clipped_gradient, privatize, ClippedBatch, CrossEntropy, GaussianNoise, GradMode, GradOptions,
    Loss, Model, NonFinitePolicy,
};
use dp_data::{physical_batches, Dataset, PoissonSampler, SamplingScheme};
use serde::{Deserialize, Serialize};

/// How a run is configured (serialisable, stored in checkpoints).
///
/// ```
/// use dp_optim::TrainerConfig;
/// let cfg = TrainerConfig::new(10.0, 256.0, 1e-5).with_budget(3.0).calibrate_noise_from_budget();
/// assert_eq!(cfg.target_epsilon, Some(3.0));
/// assert!(cfg.calibrate_noise);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerConfig {
    /// Epochs to train (steps = ⌈epochs/q⌉).
    pub epochs: f64,
    /// Expected logical batch size `B = q·N` (the public normaliser).
    pub expected_batch_size: f64,
    /// Largest physical batch (memory cap); 0 means no cap.
    pub max_physical_batch: usize,
    /// Target δ.
    pub delta: f64,
    /// Privacy budget ε: training stops before a step that would exceed it.
    pub target_epsilon: Option<f64>,
    /// Calibrate the method's noise multiplier so that the planned steps spend exactly
    /// the budget (requires `target_epsilon`).
    pub calibrate_noise: bool,
    /// Which accountant decides the budget.
    pub accountant: AccountantKind,
    /// Seed for sampling and noise; `None` seeds from the OS.
    pub seed: Option<u64>,
    /// Per-sample gradient mode.
    pub grad_mode: GradMode,
    /// NaN/Inf policy.
    pub non_finite: NonFinitePolicy,
    /// Show an indicatif progress bar.
    pub progress: bool,
    /// Evaluation batch size.
    pub eval_batch: usize,
    /// Divide the noisy sum by `B·C` instead of `B` (De et al. 2022's
    /// `rescale_to_unit_norm`): the update no longer grows with the clip norm, so one
    /// learning rate serves every `C`, fixed or adaptive. `C` is public (fixed, or derived
    /// from noisy releases), so this divisor is too.
    #[serde(default)]
    pub rescale_by_clip_norm: bool,
    /// Augmentation multiplicity (De et al. 2022, §3.1): each sampled example is
    /// augmented `K` times and the mean of the `K` gradients is clipped once (sensitivity
    /// and accounting unchanged). `None`: no augmentation.
    #[serde(default)]
    pub augmentation: Option<(dp_data::Augmentation, usize)>,
}

impl TrainerConfig {
    /// `epochs` of Poisson-sampled batches of expected size `expected_batch_size`, at `δ`.
    pub fn new(epochs: f64, expected_batch_size: f64, delta: f64) -> Self {
        Self {
            epochs,
            expected_batch_size,
            max_physical_batch: 0,
            delta,
            target_epsilon: None,
            calibrate_noise: false,
            accountant: AccountantKind::Rdp,
            seed: None,
            grad_mode: GradMode::Auto,
            non_finite: NonFinitePolicy::Error,
            progress: false,
            eval_batch: 1000,
            rescale_by_clip_norm: false,
            augmentation: None,
        }
    }
    /// Augment each sampled example `k` times (random crop/flip per `aug`) and clip the
    /// mean of its `k` gradients (De et al. 2022).
    pub fn with_augmentation_multiplicity(mut self, aug: dp_data::Augmentation, k: usize) -> Self {
        self.augmentation = Some((aug, k));
        self
    }
    /// Normalise updates by `B·C` (see [`TrainerConfig::rescale_by_clip_norm`]).
    pub fn with_rescale_by_clip_norm(mut self, on: bool) -> Self {
        self.rescale_by_clip_norm = on;
        self
    }
    /// Never spend more than `epsilon` (at the configured δ).
    pub fn with_budget(mut self, epsilon: f64) -> Self {
        self.target_epsilon = Some(epsilon);
        self
    }
    /// Derive σ from the budget instead of taking the method's.
    pub fn calibrate_noise_from_budget(mut self) -> Self {
        self.calibrate_noise = true;
        self
    }
    /// Use this accountant.
    pub fn with_accountant(mut self, kind: AccountantKind) -> Self {
        self.accountant = kind;
        self
    }
    /// Reproducible run.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
    /// Memory cap on physical batches.
    pub fn with_max_physical_batch(mut self, max: usize) -> Self {
        self.max_physical_batch = max;
        self
    }
    /// Progress bar on or off.
    pub fn with_progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }
    /// Per-sample gradient mode.
    pub fn with_grad_mode(mut self, mode: GradMode) -> Self {
        self.grad_mode = mode;
        self
    }
}

/// What one step did (analysis values are computed from private data and are **not**
/// differentially private: log them, never feed them back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1-based step number.
    pub step: u64,
    /// Epochs completed (fractional).
    pub epoch: f64,
    /// ε spent after this step (RDP accountant: every step; PRV: `None` between epochs).
    pub epsilon: Option<f64>,
    /// Mean loss over the realised batch (analysis only).
    pub loss: f64,
    /// The clip bound used by this step.
    pub clip_norm: f64,
    /// Fraction of examples whose norm exceeded the bound (analysis only).
    pub fraction_clipped: f64,
    /// Realised batch size (analysis only).
    pub batch_size: usize,
    /// Median per-example gradient norm (analysis only).
    pub median_norm: Option<f64>,
    /// Std of the noise added to the gradient sum.
    pub noise_std: f64,
}

/// End-of-epoch evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch number (1-based).
    pub epoch: u64,
    /// Steps so far.
    pub step: u64,
    /// ε spent so far.
    pub epsilon: f64,
    /// Test accuracy in [0, 1] (if a test set was given).
    pub test_accuracy: Option<f64>,
    /// Mean test loss.
    pub test_loss: Option<f64>,
    /// Clip bound at the end of the epoch.
    pub clip_norm: f64,
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
}

/// Summary of a [`PrivateTrainer::train`] call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Steps taken in total.
    pub steps: u64,
    /// ε spent (the configured accountant; PRV: certified upper bound).
    pub epsilon: f64,
    /// δ.
    pub delta: f64,
    /// The budgeted noise multiplier.
    pub noise_multiplier: f64,
    /// Test accuracy after the last epoch, if evaluated.
    pub test_accuracy: Option<f64>,
    /// Why it stopped.
    pub stop: StopReason,
    /// Wall-clock seconds of this call.
    pub seconds: f64,
}

/// Everything a checkpoint stores besides the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TrainerState {
    pub config: TrainerConfig,
    pub step: u64,
    pub total_steps: u64,
    pub dataset_len: usize,
    pub optimizer: crate::optimizer::OptimizerState,
    pub method_name: String,
    pub method: serde_json::Value,
    pub accountant: AnyAccountant,
    pub sampler: dp_data::SamplerState,
    pub noise: dp_core::NoiseState,
    pub records: Vec<StepRecord>,
    pub epochs: Vec<EpochRecord>,
    /// Augmentation generator: key and stream position (as for the noise stream).
    #[serde(default)]
    pub augment: Option<dp_core::NoiseState>,
}

/// A private training run over a dp-core model.
///
/// ```
/// use dp_optim::{FixedClip, PrivateTrainer, Sgd, TrainerConfig};
/// use dp_core::models;
/// let data = dp_data::load_bundled_mnist().unwrap();
/// let model = models::mlp(&[784, 16, 10], &candle_core::Device::Cpu, 0).unwrap();
/// let cfg = TrainerConfig::new(0.05, 64.0, 1e-5).with_seed(1);
/// let mut t = PrivateTrainer::new(model, Box::new(Sgd::new(0.5)), Box::new(FixedClip::new(1.0, 1.0).unwrap()), cfg, &data.train).unwrap();
/// let report = t.train(&data.train, None).unwrap();
/// assert_eq!(report.steps, 4); // ⌈0.05 / (64/4000)⌉
/// assert!(report.epsilon > 0.0);
/// ```
pub struct PrivateTrainer<M: Model> {
    model: M,
    optimizer: Box<dyn BaseOptimizer>,
    method: Box<dyn PrivacyMethod>,
    config: TrainerConfig,
    accountant: AnyAccountant,
    sampler: PoissonSampler,
    noise: GaussianNoise,
    step: u64,
    total_steps: u64,
    dataset_len: usize,
    records: Vec<StepRecord>,
    epochs: Vec<EpochRecord>,
    prv_limit: Option<(DpEvent, u64)>,
    stop_reason: Option<StopReason>,
    augment_rng: rand_chacha::ChaCha20Rng,
}

fn noise_seed(seed: u64) -> u64 {
    // A different stream from the sampler's (same user seed).
    seed ^ 0x9E37_79B9_7F4A_7C15
}

fn augment_rng(seed: Option<u64>) -> rand_chacha::ChaCha20Rng {
    use rand::SeedableRng;
    match seed {
        Some(s) => rand_chacha::ChaCha20Rng::seed_from_u64(s ^ 0xA5A5_5A5A_C3C3_3C3C),
        None => rand_chacha::ChaCha20Rng::from_entropy(),
    }
}

impl<M: Model> PrivateTrainer<M> {
    /// Prepares a run on `train` (its size fixes `q = B/N`). With
    /// `config.calibrate_noise`, the method's σ is replaced by the smallest σ that keeps
    /// the planned steps within the budget.
    pub fn new(
        model: M,
        optimizer: Box<dyn BaseOptimizer>,
        mut method: Box<dyn PrivacyMethod>,
        config: TrainerConfig,
        train: &Dataset,
    ) -> Result<Self> {
        let n = train.len();
        if n == 0 {
            return Err(TrainError::InvalidConfig("empty training set".into()));
        }
        if !(config.delta > 0.0 && config.delta < 1.0) {
            return Err(TrainError::InvalidConfig(format!(
                "δ = {} outside (0, 1)",
                config.delta
            )));
        }
        if !(config.epochs.is_finite() && config.epochs > 0.0) {
            return Err(TrainError::InvalidConfig(format!(
                "epochs = {} must be > 0",
                config.epochs
            )));
        }
        let q = config.expected_batch_size / n as f64;
        let sampler = PoissonSampler::new(n, q, config.seed)?;
        let total_steps = steps_for_epochs(config.epochs, q)?;
        if config.calibrate_noise {
            let eps = config.target_epsilon.ok_or_else(|| {
                TrainError::InvalidConfig("noise calibration needs a target ε (with_budget)".into())
            })?;
            let sigma =
                calibrate_noise_multiplier(eps, config.delta, q, total_steps, config.accountant)?;
            method.set_noise_multiplier(sigma)?;
        }
        let noise = match config.seed {
            Some(s) => GaussianNoise::seeded(noise_seed(s)),
            None => GaussianNoise::from_entropy(),
        };
        if let Some((_, k)) = &config.augmentation {
            if *k == 0 {
                return Err(TrainError::InvalidConfig(
                    "augmentation multiplicity must be ≥ 1".into(),
                ));
            }
        }
        Ok(Self {
            model,
            optimizer,
            method,
            augment_rng: augment_rng(config.seed),
            accountant: AnyAccountant::new(config.accountant),
            config,
            sampler,
            noise,
            step: 0,
            total_steps,
            dataset_len: n,
            records: Vec::new(),
            epochs: Vec::new(),
            prv_limit: None,
            stop_reason: None,
        })
    }

    pub(crate) fn export_state(&self) -> Result<TrainerState> {
        Ok(TrainerState {
            config: self.config.clone(),
            step: self.step,
            total_steps: self.total_steps,
            dataset_len: self.dataset_len,
            optimizer: self.optimizer.state()?,
            method_name: self.method.name(),
            method: self.method.state()?,
            accountant: self.accountant.clone(),
            sampler: self.sampler.state(),
            noise: self.noise.state(),
            records: self.records.clone(),
            epochs: self.epochs.clone(),
            augment: Some({
                let pos = self.augment_rng.get_word_pos();
                dp_core::NoiseState {
                    seed: self.augment_rng.get_seed(),
                    word_pos: [(pos >> 64) as u64, pos as u64],
                }
            }),
        })
    }

    pub(crate) fn from_parts(
        model: M,
        optimizer: Box<dyn BaseOptimizer>,
        method: Box<dyn PrivacyMethod>,
        state: TrainerState,
        sampler: PoissonSampler,
        noise: GaussianNoise,
    ) -> Result<Self> {
        let fallback_rng = augment_rng(state.config.seed);
        Ok(Self {
            model,
            optimizer,
            method,
            config: state.config,
            accountant: state.accountant,
            sampler,
            noise,
            step: state.step,
            total_steps: state.total_steps,
            dataset_len: state.dataset_len,
            augment_rng: match &state.augment {
                Some(a) => {
                    use rand::SeedableRng;
                    let mut r = rand_chacha::ChaCha20Rng::from_seed(a.seed);
                    r.set_word_pos(((a.word_pos[0] as u128) << 64) | a.word_pos[1] as u128);
                    r
                }
                None => fallback_rng,
            },
            records: state.records,
            epochs: state.epochs,
            prv_limit: None,
            stop_reason: None,
        })
    }

    /// The model being trained.
    pub fn model(&self) -> &M {
        &self.model
    }
    /// Mutable access to the model (e.g. for analysis between steps).
    pub fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }
    /// Consumes the trainer, returning the model.
    pub fn into_model(self) -> M {
        self.model
    }
    /// The privacy method (e.g. to read an adaptive clip bound).
    pub fn method(&self) -> &dyn PrivacyMethod {
        self.method.as_ref()
    }
    /// The run's configuration.
    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }
    /// Sampling rate `q = B/N`.
    pub fn sampling_rate(&self) -> f64 {
        self.config.expected_batch_size / self.dataset_len as f64
    }
    /// Steps taken.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }
    /// Steps planned (`⌈epochs/q⌉`).
    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }
    /// Steps per epoch (`⌈1/q⌉`, at least 1).
    pub fn steps_per_epoch(&self) -> u64 {
        (1.0 / self.sampling_rate()).ceil().max(1.0) as u64
    }
    /// Per-step records.
    pub fn records(&self) -> &[StepRecord] {
        &self.records
    }
    /// Per-epoch records.
    pub fn epoch_records(&self) -> &[EpochRecord] {
        &self.epochs
    }
    /// The accountant.
    pub fn accountant(&self) -> &AnyAccountant {
        &self.accountant
    }
    /// ε spent so far (0 before the first step).
    pub fn epsilon(&self) -> Result<f64> {
        if self.accountant.history().is_empty() {
            return Ok(0.0);
        }
        Ok(self.accountant.epsilon(self.config.delta)?)
    }

    /// The sampler's scheme: always Poisson here, which is what the accountant's
    /// `PoissonSampledGaussian` events assume.
    pub fn sampling_scheme(&self) -> SamplingScheme {
        self.sampler.scheme()
    }

    /// Would composing `events` keep ε within the budget? Returns the ε it would reach.
    fn check_budget(&mut self, events: &[DpEvent]) -> Result<Option<f64>> {
        let Some(budget) = self.config.target_epsilon else {
            return Ok(None);
        };
        // PRV queries are costly; for a homogeneous history the step limit is computed
        // once (dp-accounting's max_steps is exact for a repeated event).
        if let (AnyAccountant::Prv(_), [event]) = (&self.accountant, events) {
            let homogeneous = self.accountant.history().iter().all(|h| match h {
                DpEvent::SelfComposed { event: e, .. } => e.as_ref() == event,
                other => other == event,
            });
            if homogeneous {
                if let DpEvent::PoissonSampledGaussian {
                    sampling_rate,
                    noise_multiplier,
                } = event
                {
                    let limit = match &self.prv_limit {
                        Some((e, l)) if e == event => *l,
                        _ => {
                            let l = max_steps_with(
                                &PrvAccountant::new(),
                                budget,
                                self.config.delta,
                                *sampling_rate,
                                *noise_multiplier,
                            )?;
                            self.prv_limit = Some((event.clone(), l));
                            l
                        }
                    };
                    let composed: u64 = self
                        .accountant
                        .history()
                        .iter()
                        .map(|e| e.total_count())
                        .sum();
                    if composed < limit {
                        return Ok(None);
                    }
                    let mut trial = self.accountant.clone();
                    trial.compose(event)?;
                    return Ok(Some(trial.epsilon(self.config.delta)?));
                }
            }
        }
        let mut trial = self.accountant.clone();
        for e in events {
            trial.compose(e)?;
        }
        let eps = trial.epsilon(self.config.delta)?;
        Ok(if eps > budget { Some(eps) } else { None })
    }

    /// The training tensors of a physical batch: `K` augmented copies of each example in
    /// consecutive rows when augmentation multiplicity is on.
    fn batch_tensors(
        &mut self,
        data: &Dataset,
        idx: &[usize],
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let mut batch = data.try_gather(idx)?;
        if let Some((aug, k)) = &self.config.augmentation {
            batch = dp_data::augment_multiplicity(&batch, *k, aug, &mut self.augment_rng)?;
        }
        let rows = batch.labels.len();
        let mut shape = vec![rows];
        shape.extend_from_slice(data.example_shape());
        let x = Tensor::from_vec(batch.features, shape, device)?;
        let y = Tensor::from_vec(batch.labels, rows, device)?;
        Ok((x, y))
    }

    /// One private step. Returns `None` (and takes no step) if the budget would be exceeded.
    pub fn step(&mut self, data: &Dataset, device: &Device) -> Result<Option<StepRecord>> {
        if data.len() != self.dataset_len {
            return Err(TrainError::InvalidConfig(format!(
                "the trainer was set up for {} examples, got {} (q would be wrong)",
                self.dataset_len,
                data.len()
            )));
        }
        let q = self.sampling_rate();
        let events = self.method.step_events(q)?;
        if let Some(would) = self.check_budget(&events)? {
            self.stop_reason = Some(StopReason::BudgetExhausted {
                would_reach: would,
                budget: self.config.target_epsilon.unwrap_or(f64::INFINITY),
            });
            return Ok(None);
        }
        // The noise does not depend on the data: draw it while the gradients are computed.
        let sizes: Vec<usize> = self
            .model
            .param_tensors()
            .iter()
            .map(|t| t.elem_count())
            .collect();
        self.noise.prefetch(&sizes);
        let indices = self.sampler.next_batch();
        let c = self.method.clip_norm();
        let mut clip = FlatClip::new(c)?;
        let opts = GradOptions {
            mode: self.config.grad_mode,
            non_finite: self.config.non_finite,
            augmentation_multiplicity: self.config.augmentation.as_ref().map_or(1, |a| a.1),
            ..GradOptions::default()
        };
        let mut acc = ClippedBatch::empty(&self.model, c, c)?;
        for chunk in physical_batches(&indices, self.config.max_physical_batch) {
            let (x, y) = self.batch_tensors(data, chunk, device)?;
            acc.accumulate(clipped_gradient(
                &mut self.model,
                &x,
                &y,
                &CrossEntropy,
                &mut clip,
                &opts,
            )?)?;
        }
        let examples = acc.examples;
        let noisy = privatize(
            acc,
            self.method.gradient_noise_multiplier(),
            &mut self.noise,
        )?;
        let divisor = if self.config.rescale_by_clip_norm {
            self.config.expected_batch_size * c
        } else {
            self.config.expected_batch_size
        };
        let grads = noisy.normalized(divisor)?;
        let params = self.model.param_tensors();
        let new = self.optimizer.step(&params, &grads)?;
        self.model.set_param_tensors(&new)?;
        for e in &events {
            self.accountant.compose(e)?;
        }
        self.method.after_step(
            &noisy.stats,
            self.config.expected_batch_size,
            &mut self.noise,
        )?;
        self.step += 1;
        let epsilon = match self.accountant {
            AnyAccountant::Rdp(_) => Some(self.accountant.epsilon(self.config.delta)?),
            AnyAccountant::Prv(_) => None,
        };
        let rec = StepRecord {
            step: self.step,
            epoch: self.step as f64 * q,
            epsilon,
            loss: if examples > 0 {
                noisy.loss_sum / examples as f64
            } else {
                f64::NAN
            },
            clip_norm: c,
            fraction_clipped: noisy.stats.fraction_clipped,
            batch_size: examples,
            median_norm: noisy.stats.median(),
            noise_std: noisy.noise_std,
        };
        self.records.push(rec.clone());
        Ok(Some(rec))
    }

    /// Mean cross-entropy and accuracy on `data` (evaluation mode, in chunks).
    pub fn evaluate(&mut self, data: &Dataset, device: &Device) -> Result<(f64, f64)> {
        evaluate(&mut self.model, data, device, self.config.eval_batch)
    }

    /// Trains until the planned steps are taken or the budget would be exceeded,
    /// evaluating on `test` after every epoch.
    pub fn train(&mut self, train: &Dataset, test: Option<&Dataset>) -> Result<TrainReport> {
        let device = Device::Cpu;
        self.train_on(train, test, &device)
    }

    /// [`PrivateTrainer::train`] with batches placed on `device`.
    pub fn train_on(
        &mut self,
        train: &Dataset,
        test: Option<&Dataset>,
        device: &Device,
    ) -> Result<TrainReport> {
        let start = std::time::Instant::now();
        self.stop_reason = None;
        let per_epoch = self.steps_per_epoch();
        let bar = if self.config.progress {
            let b = indicatif::ProgressBar::new(self.total_steps);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps {msg} [{elapsed_precise}<{eta_precise}]",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_position(self.step);
            Some(b)
        } else {
            None
        };
        while self.step < self.total_steps {
            let Some(rec) = self.step(train, device)? else {
                break;
            };
            if let Some(b) = &bar {
                b.set_position(self.step);
                if let Some(e) = rec.epsilon {
                    b.set_message(format!("ε={e:.3} C={:.3}", rec.clip_norm));
                }
            }
            if self.step.is_multiple_of(per_epoch) || self.step == self.total_steps {
                self.end_epoch(test, device)?;
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let stop = self.stop_reason.clone().unwrap_or(StopReason::Completed);
        if matches!(stop, StopReason::BudgetExhausted { .. })
            && self.epochs.last().map(|e| e.step) != Some(self.step)
            && self.step > 0
        {
            self.end_epoch(test, device)?;
        }
        Ok(TrainReport {
            steps: self.step,
            epsilon: self.epsilon()?,
            delta: self.config.delta,
            noise_multiplier: self.method.noise_multiplier(),
            test_accuracy: self.epochs.last().and_then(|e| e.test_accuracy),
            stop,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    fn end_epoch(&mut self, test: Option<&Dataset>, device: &Device) -> Result<()> {
        let (loss, acc) = match test {
            Some(t) => {
                let (l, a) = self.evaluate(t, device)?;
                (Some(l), Some(a))
            }
            None => (None, None),
        };
        let epsilon = self.epsilon()?;
        self.epochs.push(EpochRecord {
            epoch: self.epochs.len() as u64 + 1,
            step: self.step,
            epsilon,
            test_accuracy: acc,
            test_loss: loss,
            clip_norm: self.method.clip_norm(),
        });
        Ok(())
    }
}

/// Mean cross-entropy and accuracy of `model` on `data`, in chunks of `batch`.
///
/// ```
/// let data = dp_data::load_bundled_mnist().unwrap();
/// let mut m = dp_core::models::mlp(&[784, 8, 10], &candle_core::Device::Cpu, 0).unwrap();
/// let (_loss, acc) = dp_optim::evaluate(&mut m, &data.test, &candle_core::Device::Cpu, 500).unwrap();
/// assert!((0.0..=1.0).contains(&acc));
/// ```
pub fn evaluate<M: Model + ?Sized>(
    model: &mut M,
    data: &Dataset,
    device: &Device,
    batch: usize,
) -> Result<(f64, f64)> {
    let n = data.len();
    if n == 0 {
        return Err(TrainError::InvalidConfig("empty evaluation set".into()));
    }
    let batch = batch.max(1);
    let (mut loss, mut correct) = (0.0, 0.0);
    let idx: Vec<usize> = (0..n).collect();
    for chunk in idx.chunks(batch) {
        let b = data.try_gather(chunk)?;
        let mut shape = vec![chunk.len()];
        shape.extend_from_slice(data.example_shape());
        let x = Tensor::from_vec(b.features, shape, device)?;
        let y = Tensor::from_vec(b.labels, chunk.len(), device)?;
        let logits = model.forward(&x, false)?;
        loss += CrossEntropy
            .loss(&logits, &y)?
            .to_dtype(candle_core::DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
        correct += dp_core::accuracy(&logits, &y)? * chunk.len() as f64;
    }
    Ok((loss / n as f64, correct / n as f64))
}
