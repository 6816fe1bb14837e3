//! The private training loop: sampler → method's plan → [`crate::take_step`] → accountant,
//! with a budget that is never exceeded.

use crate::accounting::SampleAccounting;
use crate::averaging::ParamAverage;
use crate::config::{ConfigWarning, TrainerConfig};
use crate::error::{Result, TrainError};
use crate::evaluate::{evaluate_with, rows_to_tensors};
use crate::methods::PrivacyMethod;
use crate::optim::BaseOptimizer;
use crate::plan::{PlanContext, StepOutcome};
use crate::private::{resolve_method, Method, PrivacyTarget};
use crate::pruning::{compose_prior, TrainingMask};
use crate::records::{EpochRecord, Guarantee, StepRecord, StopReason, TrainReport};
use crate::schedule::LrSchedule;
use crate::state::TrainerState;
use crate::step::{take_step, StepEnv};
use candle_core::{Device, Tensor};
use dp_accounting::calibration::steps_for_epochs;
use dp_accounting::{
    calibrate_noise, calibrate_noise_multiplier, schedule_event, Accountant, AnyAccountant,
    BudgetCheck, BudgetGuard, NoiseSearch, PrivacyBudget,
};
use dp_core::{CrossEntropy, GaussianNoise, GradOptions, Loss, Model};
use dp_data::{physical_batches, BatchSampler, Dataset, PoissonSampler, SamplingScheme};

/// The loss a trainer uses (shared with evaluation).
pub type BoxedLoss = Box<dyn Loss + Send + Sync>;
/// The sampler a trainer draws batches from.
pub type BoxedSampler = Box<dyn BatchSampler + Send>;

/// Builds a [`PrivateTrainer`] with a loss or sampler other than the defaults
/// (cross-entropy; Poisson sampling at `q = B/N`).
///
/// ```
/// use dp_optim::{BatchSize, Delta, Epochs, FixedClip, PrivateTrainer, Sgd, TrainerConfig};
/// let data = dp_data::load_bundled_mnist().unwrap();
/// let model = || dp_core::models::mlp(&[784, 8, 10], &candle_core::Device::Cpu, 0).unwrap();
/// let cfg = TrainerConfig::new(Epochs(0.05), BatchSize(64.0), Delta(1e-5)).with_seed(1);
/// let shuffled = dp_data::ShuffledSampler::new(data.train.len(), 64, Some(1)).unwrap();
/// let method = Box::new(FixedClip::new(1.0, 1.0).unwrap());
/// // A shuffled sampler is not what the accountant assumes: refused without the opt-in.
/// let refused = PrivateTrainer::builder(model(), Box::new(Sgd::new(0.1)), method.clone(), cfg.clone())
///     .sampler(shuffled.clone()).build(&data.train);
/// assert!(refused.is_err());
/// let t = PrivateTrainer::builder(model(), Box::new(Sgd::new(0.1)), method, cfg.assume_poisson_accounting(true))
///     .sampler(shuffled).loss(dp_core::CrossEntropy).build(&data.train).unwrap();
/// assert!(matches!(t.guarantee(), dp_optim::Guarantee::DpAssumingPoisson { .. }));
/// ```
pub struct TrainerBuilder<M: Model> {
    model: M,
    optimizer: Box<dyn BaseOptimizer>,
    method: MethodSource,
    config: TrainerConfig,
    loss: Option<BoxedLoss>,
    sampler: Option<BoxedSampler>,
    mask: Option<TrainingMask>,
}

/// Where a builder's method comes from: built by the caller, or built by the trainer at the
/// σ calibrated for a [`PrivacyTarget`].
enum MethodSource {
    Built(Box<dyn PrivacyMethod>),
    Calibrated {
        method: Method,
        target: PrivacyTarget,
    },
}

impl<M: Model> TrainerBuilder<M> {
    /// Changes the configuration before the run is prepared: seed, accountant, memory cap,
    /// progress bar, learning-rate schedule, ... For a builder from
    /// [`PrivateTrainer::with_epsilon`], the target's epochs, batch size, δ, ε and the
    /// calibration must stay as they are ([`PrivateTrainer::with_epsilon`]'s `build`
    /// refuses a change: change the [`PrivacyTarget`] instead).
    ///
    /// ```
    /// use dp_optim::{Method, PrivacyTarget, PrivateTrainer, Sgd};
    /// let data = dp_data::load_bundled_mnist().unwrap();
    /// let model = || dp_core::models::mlp(&[784, 8, 10], &candle_core::Device::Cpu, 0).unwrap();
    /// let target = PrivacyTarget { epsilon: 2.0, delta: 1e-5, epochs: 1.0, batch_size: 100.0 };
    /// let t = PrivateTrainer::with_epsilon(model(), Sgd::new(0.1), target, Method::dp_sgd(1.0))
    ///     .configure(|c| c.with_seed(7).with_max_physical_batch(50))
    ///     .build(&data.train)
    ///     .unwrap();
    /// assert_eq!((t.config().seed, t.config().max_physical_batch), (Some(7), 50));
    /// // Changing the target behind its back is refused.
    /// let sneaky = PrivateTrainer::with_epsilon(model(), Sgd::new(0.1), target, Method::dp_sgd(1.0))
    ///     .configure(|c| c.with_budget(10.0))
    ///     .build(&data.train);
    /// assert!(sneaky.is_err());
    /// ```
    pub fn configure(mut self, f: impl FnOnce(TrainerConfig) -> TrainerConfig) -> Self {
        self.config = f(self.config);
        self
    }
    /// Train only the coordinates `mask` keeps (pruning under DP): the model's pruned
    /// weights are zeroed at build and after every update, they get no gradient and no
    /// noise, and clipped norms are over the active coordinates. A mask from released
    /// weights brings that run's accounting history, which this run composes first (its ε
    /// is the whole pipeline's); see [`TrainingMask`].
    pub fn mask(mut self, mask: TrainingMask) -> Self {
        self.mask = Some(mask);
        self
    }
    /// Train with this per-example loss instead of cross-entropy.
    pub fn loss(mut self, loss: impl Loss + Send + Sync + 'static) -> Self {
        self.loss = Some(Box::new(loss));
        self
    }
    /// Draw batches from this sampler instead of a Poisson sampler at `q = B/N`. Its
    /// scheme decides the accounting: a non-Poisson sampler is refused unless the config
    /// opts in with [`TrainerConfig::assume_poisson_accounting`].
    pub fn sampler(mut self, sampler: impl BatchSampler + Send + 'static) -> Self {
        self.sampler = Some(Box::new(sampler));
        self
    }
    /// Checks the configuration, calibrates σ if asked, and prepares the run on `train`.
    pub fn build(self, train: &Dataset) -> Result<PrivateTrainer<M>> {
        PrivateTrainer::build(self, train)
    }
}

/// A private training run over a dp-core model.
///
/// ```
/// use dp_optim::{BatchSize, Delta, Epochs, FixedClip, PrivateTrainer, Sgd, TrainerConfig};
/// use dp_core::models;
/// let data = dp_data::load_bundled_mnist().unwrap();
/// let model = models::mlp(&[784, 16, 10], &candle_core::Device::Cpu, 0).unwrap();
/// let cfg = TrainerConfig::new(Epochs(0.05), BatchSize(64.0), Delta(1e-5)).with_seed(1);
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
    loss: BoxedLoss,
    sampler: BoxedSampler,
    accounting: SampleAccounting,
    guard: BudgetGuard<AnyAccountant>,
    noise: GaussianNoise,
    step: u64,
    total_steps: u64,
    dataset_len: usize,
    records: Vec<StepRecord>,
    epochs: Vec<EpochRecord>,
    stop_reason: Option<StopReason>,
    augment_rng: rand_chacha::ChaCha20Rng,
    warnings: Vec<ConfigWarning>,
    mask: Option<TrainingMask>,
    average: Option<ParamAverage>,
    /// The optimiser's learning rate when the trainer was built or resumed: what
    /// [`TrainerConfig::lr_schedule`] scales.
    base_lr: f64,
}

pub(crate) fn noise_seed(seed: u64) -> u64 {
    // A different stream from the sampler's (same user seed).
    seed ^ 0x9E37_79B9_7F4A_7C15
}

/// The seed of a pipeline stage that follows `prior_steps` accounted steps (the seed itself
/// for the first stage).
fn stage_seed(seed: u64, prior_steps: u64) -> u64 {
    if prior_steps == 0 {
        seed
    } else {
        seed ^ prior_steps
            .wrapping_mul(0xD6E8_FEB8_6659_FD93)
            .rotate_left(17)
    }
}

pub(crate) fn augment_rng(seed: Option<u64>) -> rand_chacha::ChaCha20Rng {
    use rand::SeedableRng;
    match seed {
        Some(s) => rand_chacha::ChaCha20Rng::seed_from_u64(s ^ 0xA5A5_5A5A_C3C3_3C3C),
        None => rand_chacha::ChaCha20Rng::from_entropy(),
    }
}

/// The indices (into `data`) among `indices` of examples with a NaN or infinite feature.
pub(crate) fn non_finite_examples(data: &Dataset, indices: &[usize]) -> Vec<usize> {
    let mut bad: Vec<usize> = indices
        .iter()
        .copied()
        .filter(|&i| {
            data.example(i)
                .is_some_and(|x| x.iter().any(|v| !v.is_finite()))
        })
        .collect();
    bad.sort_unstable();
    bad.dedup();
    bad
}

/// Refuses a model whose output width differs from what `loss` needs for `train`'s classes
/// (cross-entropy: one logit per class), by one forward pass of one example. Without it a
/// too-narrow model fails at the first label beyond its width and a too-wide one trains
/// silently.
fn check_output_width<M: Model>(model: &mut M, loss: &dyn Loss, train: &Dataset) -> Result<()> {
    let classes = train.num_classes();
    let Some(expected) = loss.output_width(classes) else {
        return Ok(());
    };
    let device = model
        .param_tensors()
        .first()
        .map_or(Device::Cpu, |t| t.device().clone());
    let (x, _) = crate::evaluate::batch_tensors(train, &[0], &device)?;
    let out = model.forward(&x, false)?;
    let width = out.dims().iter().skip(1).product::<usize>();
    if out.dims().len() != 2 || width != expected {
        return Err(TrainError::OutputWidth {
            width,
            expected,
            classes,
        });
    }
    Ok(())
}

/// Checks the parts of a configuration that do not depend on the data.
fn check_config(config: &TrainerConfig) -> Result<Option<PrivacyBudget>> {
    config.lr_schedule.validate()?;
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
    if !(config.expected_batch_size.is_finite() && config.expected_batch_size > 0.0) {
        return Err(TrainError::InvalidConfig(format!(
            "expected batch size {} must be > 0",
            config.expected_batch_size
        )));
    }
    if let Some(a) = &config.averaging {
        a.validate()?;
    }
    if let Some((_, 0)) = &config.augmentation {
        return Err(TrainError::InvalidConfig(
            "augmentation multiplicity must be ≥ 1".into(),
        ));
    }
    let budget = config
        .target_epsilon
        .map(|e| PrivacyBudget::new(e, config.delta))
        .transpose()?;
    if let (Some(_), Some(regime), false) =
        (&budget, config.non_private_regime(), config.calibrate_noise)
    {
        return Err(TrainError::InvalidConfig(format!(
            "a run with a {regime} phase has no finite ε, so a budget cannot be enforced; a \
             target ε is accepted only to calibrate σ (calibrate_noise_from_budget), e.g. for \
             a noise-only run that adds the noise a private run would"
        )));
    }
    if config.calibrate_noise && budget.is_none() {
        return Err(TrainError::InvalidConfig(
            "noise calibration needs a target ε (with_budget)".into(),
        ));
    }
    Ok(budget)
}

impl<M: Model> PrivateTrainer<M> {
    /// Prepares a run on `train` (its size fixes `q = B/N`) with the default loss and a
    /// Poisson sampler. With `config.calibrate_noise`, the method's σ is replaced by the
    /// smallest σ that keeps the planned steps within the budget.
    pub fn new(
        model: M,
        optimizer: Box<dyn BaseOptimizer>,
        method: Box<dyn PrivacyMethod>,
        config: TrainerConfig,
        train: &Dataset,
    ) -> Result<Self> {
        Self::builder(model, optimizer, method, config).build(train)
    }

    /// A builder, for a loss or sampler other than the defaults.
    pub fn builder(
        model: M,
        optimizer: Box<dyn BaseOptimizer>,
        method: Box<dyn PrivacyMethod>,
        config: TrainerConfig,
    ) -> TrainerBuilder<M> {
        TrainerBuilder {
            model,
            optimizer,
            method: MethodSource::Built(method),
            config,
            loss: None,
            sampler: None,
            mask: None,
        }
    }

    /// A builder for a run that spends `target`: `method` is built by the trainer at the
    /// noise multiplier calibrated for it (no placeholder σ), with `target.batch_size` as
    /// the one batch size of the run. [`crate::make_private`] is this followed by
    /// [`TrainerBuilder::build`]; the builder adds [`TrainerBuilder::configure`] (seed,
    /// accountant, ...), a loss, a sampler or a mask. σ is then calibrated as for
    /// [`TrainerConfig::calibrate_noise_from_budget`], from the built method's releases,
    /// and the budget guard accounts every step's releases as for any run.
    ///
    /// ```
    /// use dp_optim::{Adam, Method, PrivacyTarget, PrivateTrainer};
    /// let data = dp_data::load_bundled_mnist().unwrap();
    /// let model = dp_core::models::mlp(&[784, 16, 10], &candle_core::Device::Cpu, 0).unwrap();
    /// let target = PrivacyTarget { epsilon: 3.0, delta: 1e-5, epochs: 0.5, batch_size: 100.0 };
    /// let mut t = PrivateTrainer::with_epsilon(model, Adam::new(1e-3), target, Method::adaptive_clipping(0.1))
    ///     .configure(|c| c.with_seed(0))
    ///     .build(&data.train)
    ///     .unwrap();
    /// let report = t.train(&data.train, None).unwrap();
    /// assert!(report.epsilon <= 3.0 && report.epsilon > 2.9);
    /// ```
    pub fn with_epsilon(
        model: M,
        optimizer: impl BaseOptimizer + 'static,
        target: PrivacyTarget,
        method: Method,
    ) -> TrainerBuilder<M> {
        TrainerBuilder {
            model,
            optimizer: Box::new(optimizer),
            method: MethodSource::Calibrated { method, target },
            config: target.unchecked_config(),
            loss: None,
            sampler: None,
            mask: None,
        }
    }

    fn build(b: TrainerBuilder<M>, train: &Dataset) -> Result<Self> {
        let TrainerBuilder {
            model,
            optimizer,
            method,
            config,
            loss,
            sampler,
            mask,
        } = b;
        let n = train.len();
        let mut method = match method {
            MethodSource::Built(m) => m,
            MethodSource::Calibrated { method, target } => {
                resolve_method(&method, &target, &config, n)?
            }
        };
        if n == 0 {
            return Err(TrainError::InvalidConfig("empty training set".into()));
        }
        let budget = check_config(&config)?;
        crate::optim::check_learning_rate(optimizer.learning_rate())?;
        if config.expected_batch_size > n as f64 {
            return Err(TrainError::BatchLargerThanDataset {
                batch_size: config.expected_batch_size,
                dataset_len: n,
            });
        }
        let loss: BoxedLoss = loss.unwrap_or_else(|| Box::new(CrossEntropy));
        let mut model = model;
        check_output_width(&mut model, loss.as_ref(), train)?;
        if let Some(m) = &mask {
            m.check_for(config.is_private())?;
            let pruned = m.mask().apply(&model.param_tensors())?;
            model.set_param_tensors(&pruned)?;
        }
        let prior: &[dp_accounting::DpEvent] = mask.as_ref().map_or(&[], |m| m.prior_events());
        // A re-training on a released mask continues a pipeline whose earlier stage drew from
        // the streams of (probably) the same seed: re-using them would replay that stage's
        // batches and noise, correlated noise the accounting does not cover. Each stage's
        // streams are derived from the seed and the steps already accounted.
        let prior_steps: u64 = prior.iter().map(|e| e.total_count()).sum();
        let seed = config.seed.map(|s| stage_seed(s, prior_steps));
        let warnings = config.warnings(n);
        let q = config.expected_batch_size / n as f64;
        let sampler: BoxedSampler = match sampler {
            Some(s) => {
                if s.dataset_len() != n {
                    return Err(TrainError::InvalidConfig(format!(
                        "the sampler draws from {} examples, the training set has {n}",
                        s.dataset_len()
                    )));
                }
                // The config's B is the public divisor and fixes the step count; the
                // sampler must draw batches of that (expected) size.
                let b = match s.scheme() {
                    SamplingScheme::Poisson { sampling_rate } => sampling_rate * n as f64,
                    SamplingScheme::Shuffled { batch_size }
                    | SamplingScheme::FixedSizeWithoutReplacement { batch_size } => {
                        batch_size as f64
                    }
                };
                if (b - config.expected_batch_size).abs() > 1e-9 * b.max(1.0) {
                    return Err(TrainError::InvalidConfig(format!(
                        "the sampler's batch size {b} differs from the config's expected batch \
                         size {} (the public divisor)",
                        config.expected_batch_size
                    )));
                }
                s
            }
            None => Box::new(PoissonSampler::new(n, q, seed)?),
        };
        // A run without private steps accounts nothing, so its sampler needs no Poisson
        // guarantee.
        let accounting = SampleAccounting::from_scheme(
            sampler.scheme(),
            n,
            config.assume_poisson_accounting || !has_private_phase(&config),
        )?;
        let total_steps = steps_for_epochs(config.epochs, q)?;
        if config.calibrate_noise {
            let eps = budget.as_ref().map(|b| b.epsilon()).unwrap_or(f64::NAN);
            let sigma = calibrate(
                &accounting,
                method.as_ref(),
                &config,
                eps,
                total_steps,
                prior,
            )?;
            method.set_noise_multiplier(sigma)?;
        }
        let guard_budget = if config.is_private() { budget } else { None };
        let mut accountant = AnyAccountant::new(config.accountant);
        compose_prior(&mut accountant, prior)?;
        if let Some(b) = &guard_budget {
            let spent = if prior.is_empty() {
                0.0
            } else {
                accountant.epsilon(b.delta())?
            };
            if spent > b.epsilon() {
                return Err(TrainError::InvalidConfig(format!(
                    "the mask's source run already spent ε = {spent:.4}, more than the budget \
                     ε = {} of the whole pipeline",
                    b.epsilon()
                )));
            }
        }
        let guard = BudgetGuard::new(accountant, config.delta, guard_budget)?
            .with_planned_steps(total_steps);
        let noise = match seed {
            Some(s) => GaussianNoise::seeded(noise_seed(s)),
            None => GaussianNoise::from_entropy(),
        };
        let average = config
            .averaging
            .map(|a| ParamAverage::new(a, &model.param_tensors()));
        Ok(Self {
            average,
            model,
            base_lr: optimizer.learning_rate(),
            optimizer,
            method,
            augment_rng: augment_rng(seed),
            loss,
            warnings,
            sampler,
            accounting,
            guard,
            config,
            noise,
            step: 0,
            total_steps,
            dataset_len: n,
            records: Vec::new(),
            epochs: Vec::new(),
            stop_reason: None,
            mask,
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
            guard: self.guard.clone(),
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
            mask: self.mask.as_ref().map(|m| m.to_state()).transpose()?,
            average: self.average.as_ref().map(|a| a.to_state()).transpose()?,
        })
    }

    pub(crate) fn from_parts(
        model: M,
        optimizer: Box<dyn BaseOptimizer>,
        method: Box<dyn PrivacyMethod>,
        state: TrainerState,
        sampler: BoxedSampler,
        noise: GaussianNoise,
    ) -> Result<Self> {
        let accounting = SampleAccounting::from_scheme(
            sampler.scheme(),
            state.dataset_len,
            state.config.assume_poisson_accounting || !has_private_phase(&state.config),
        )?;
        let mask = state
            .mask
            .map(|m| TrainingMask::from_state(m, &model))
            .transpose()?;
        let device = model
            .param_tensors()
            .first()
            .map_or(Device::Cpu, |t| t.device().clone());
        let average = match (&state.config.averaging, &state.average) {
            (None, None) => None,
            (Some(kind), Some(a)) if *kind == a.kind => Some(ParamAverage::from_state(a, &device)?),
            (kind, a) => {
                return Err(TrainError::Checkpoint {
                    path: "state".into(),
                    reason: format!(
                        "the configuration's averaging {kind:?} does not match the stored \
                         average ({:?})",
                        a.as_ref().map(|a| a.kind)
                    ),
                })
            }
        };
        let fallback_rng = augment_rng(state.config.seed);
        let warnings = state.config.warnings(state.dataset_len);
        Ok(Self {
            warnings,
            model,
            base_lr: optimizer.learning_rate(),
            optimizer,
            method,
            config: state.config,
            loss: Box::new(CrossEntropy),
            sampler,
            accounting,
            guard: state.guard,
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
            stop_reason: None,
            mask,
            average,
        })
    }

    /// Settings that are legal but probably mistakes (e.g. δ ≥ 1/N), found when the trainer
    /// was built. The library prints nothing: show these to the user.
    pub fn warnings(&self) -> &[ConfigWarning] {
        &self.warnings
    }
    /// The pruning mask the run trains under, if any.
    pub fn mask(&self) -> Option<&TrainingMask> {
        self.mask.as_ref()
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
    /// The privacy method.
    pub fn method(&self) -> &dyn PrivacyMethod {
        self.method.as_ref()
    }
    /// The base optimiser (e.g. for its [`BaseOptimizer::diagnostics`] after a step).
    pub fn optimizer(&self) -> &dyn BaseOptimizer {
        self.optimizer.as_ref()
    }

    /// The base optimiser, to change its learning rate between steps (a public schedule).
    pub fn optimizer_mut(&mut self) -> &mut dyn BaseOptimizer {
        self.optimizer.as_mut()
    }
    /// Replaces the loss (e.g. after [`PrivateTrainer::resume`], which restores the default).
    pub fn set_loss(&mut self, loss: impl Loss + Send + Sync + 'static) {
        self.loss = Box::new(loss);
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
        self.guard.accountant()
    }
    /// What this run's ε certifies.
    pub fn guarantee(&self) -> Guarantee {
        match self.config.non_private_regime() {
            Some(regime) => self.accounting.guarantee(regime),
            None => self.accounting.guarantee(self.config.regime),
        }
    }
    /// ε spent so far (0 before the first step; ∞ for a run that is not DP, including a
    /// switching run with any phase that is not private).
    pub fn epsilon(&self) -> Result<f64> {
        if !self.config.is_private() {
            return Ok(f64::INFINITY);
        }
        Ok(self.guard.epsilon()?)
    }
    /// ε of the private steps alone (what the accountant recorded). For a switching run
    /// this is **not** the model's guarantee (that is [`PrivateTrainer::epsilon`], ∞): it
    /// says what the private phases spent, for analysis.
    pub fn private_steps_epsilon(&self) -> Result<f64> {
        Ok(self.guard.epsilon()?)
    }
    /// The sampler's scheme, which decides the accounting.
    pub fn sampling_scheme(&self) -> SamplingScheme {
        self.sampler.scheme()
    }

    /// One step. Returns `None` (and takes no step) if the budget would be exceeded.
    pub fn step(&mut self, data: &Dataset, device: &Device) -> Result<Option<StepRecord>> {
        if data.len() != self.dataset_len {
            return Err(TrainError::InvalidConfig(format!(
                "the trainer was set up for {} examples, got {} (q would be wrong)",
                self.dataset_len,
                data.len()
            )));
        }
        if self.config.lr_schedule != LrSchedule::Constant {
            let f =
                self.config
                    .lr_schedule
                    .factor(self.step, self.steps_per_epoch(), self.total_steps);
            self.optimizer.set_learning_rate(self.base_lr * f);
        }
        let ctx = PlanContext {
            step: self.step,
            expected_batch_size: self.config.expected_batch_size,
            rescale_by_clip_norm: self.config.rescale_by_clip_norm,
        };
        let mut plan = self.method.plan(&ctx)?;
        plan.validate()?;
        let regime = self.config.regime_at(self.step, self.steps_per_epoch());
        // The event is derived from what the plan releases, before anything is released.
        let event = if regime.is_private() {
            let e = self
                .accounting
                .step_event(&plan.query_multipliers(), &plan.extra_events)?;
            if let BudgetCheck::Exceeds {
                would_reach,
                budget,
            } = self.guard.check(&e)?
            {
                self.stop_reason = Some(StopReason::BudgetExhausted {
                    would_reach,
                    budget,
                });
                return Ok(None);
            }
            Some(e)
        } else {
            None
        };
        let indices = self.sampler.next_batch();
        let opts = GradOptions {
            mode: self.config.grad_mode,
            non_finite: self.config.non_finite,
            augmentation_multiplicity: self.config.augmentation.as_ref().map_or(1, |a| a.1),
            track_unclipped_sum: self.config.track_clipping_bias,
            mask: self.mask.as_ref().map(|m| m.mask().clone()),
            ..GradOptions::default()
        };
        let env = StepEnv {
            regime,
            loss: self.loss.as_ref(),
            grad_options: &opts,
        };
        let augmentation = self.config.augmentation.clone();
        let rng = &mut self.augment_rng;
        let mut batches = physical_batches(&indices, self.config.max_physical_batch).map(
            |chunk| -> Result<(Tensor, Tensor)> {
                let mut batch = data.try_gather(chunk)?;
                if let Some((aug, k)) = &augmentation {
                    batch = dp_data::augment_multiplicity(&batch, *k, aug, rng)?;
                }
                rows_to_tensors(batch, data.example_shape(), device)
            },
        );
        let result = match take_step(
            &mut self.model,
            &mut batches,
            &mut plan,
            &env,
            &mut self.noise,
            self.optimizer.as_mut(),
        ) {
            Ok(r) => r,
            // The engine names positions in a physical batch; a user needs the dataset
            // indices, and the usual cause is non-finite input data.
            Err(TrainError::Core(dp_core::CoreError::NonFiniteGradient { examples })) => {
                let bad = non_finite_examples(data, &indices);
                return Err(if bad.is_empty() {
                    TrainError::Core(dp_core::CoreError::NonFiniteGradient { examples })
                } else {
                    TrainError::NonFiniteExamples {
                        set: "training".into(),
                        indices: bad,
                    }
                });
            }
            Err(e) => return Err(e),
        };
        if let Some(e) = &event {
            self.guard.record(e)?;
        }
        if let Some(a) = &mut self.average {
            a.update(&self.model.param_tensors())?;
        }
        self.method.after_step(&StepOutcome {
            step: self.step,
            gradient: &result.gradient,
            noise_std: result.noise_std,
            stats: &result.stats,
            statistics: &result.statistics,
            expected_batch_size: self.config.expected_batch_size,
        })?;
        self.step += 1;
        let epsilon = if !self.config.is_private() {
            Some(f64::INFINITY)
        } else if self.guard.accountant().epsilon_is_cheap() {
            Some(self.guard.epsilon()?)
        } else {
            None
        };
        let rec = StepRecord {
            step: self.step,
            epoch: self.step as f64 * self.sampling_rate(),
            epsilon,
            guarantee: self.guarantee(),
            regime,
            loss: if result.examples > 0 {
                result.loss_sum / result.examples as f64
            } else {
                f64::NAN
            },
            clip_norm: plan.clip.threshold(),
            sensitivity: result.sensitivity,
            fraction_clipped: result.stats.fraction_clipped,
            batch_size: result.examples,
            median_norm: result.stats.median(),
            noise_std: result.sum_noise_std,
            statistics: result.statistics,
            clipping_bias: result.clipping_bias,
        };
        self.records.push(rec.clone());
        Ok(Some(rec))
    }

    /// The average of the iterates, for a run with [`TrainerConfig::averaging`].
    pub fn average(&self) -> Option<&ParamAverage> {
        self.average.as_ref()
    }

    /// Mean loss and accuracy of the **averaged** weights on `data` (`None` for a run
    /// without averaging). The model's own weights are swapped back afterwards, so training
    /// continues from them; post-processing, so ε is unchanged.
    pub fn evaluate_averaged(
        &mut self,
        data: &Dataset,
        device: &Device,
    ) -> Result<Option<(f64, f64)>> {
        let Some(avg) = self.average.as_ref().map(|a| a.values().to_vec()) else {
            return Ok(None);
        };
        let own = self.model.param_tensors();
        self.model.set_param_tensors(&avg)?;
        let result = evaluate_with(
            &mut self.model,
            data,
            device,
            self.config.eval_batch,
            self.loss.as_ref(),
        );
        self.model.set_param_tensors(&own)?;
        result.map(Some)
    }

    /// Mean loss (the trainer's) and accuracy on `data` (evaluation mode, in chunks).
    pub fn evaluate(&mut self, data: &Dataset, device: &Device) -> Result<(f64, f64)> {
        evaluate_with(
            &mut self.model,
            data,
            device,
            self.config.eval_batch,
            self.loss.as_ref(),
        )
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
        self.train_until_on(train, test, device, u64::MAX, &mut |_| {})
    }

    /// Trains until step `until` (at most the planned steps), the end of the plan, or the
    /// budget, calling `on_step` after every step. Epochs end and are evaluated as in
    /// [`PrivateTrainer::train`], so a run trained in pieces (say one epoch per call, with a
    /// checkpoint between calls) has the records of one trained in one call.
    ///
    /// ```
    /// use dp_optim::{BatchSize, Delta, Epochs, FixedClip, PrivateTrainer, Sgd, TrainerConfig};
    /// let data = dp_data::load_bundled_mnist().unwrap();
    /// let model = dp_core::models::mlp(&[784, 8, 10], &candle_core::Device::Cpu, 0).unwrap();
    /// let cfg = TrainerConfig::new(Epochs(0.2), BatchSize(100.0), Delta(1e-5)).with_seed(0);
    /// let mut t = PrivateTrainer::new(model, Box::new(Sgd::new(0.1)), Box::new(FixedClip::new(1.0, 1.0).unwrap()), cfg, &data.train).unwrap();
    /// let mut seen = 0;
    /// t.train_until_on(&data.train, None, &candle_core::Device::Cpu, 3, &mut |_| seen += 1).unwrap();
    /// assert_eq!((t.steps_taken(), seen), (3, 3));
    /// ```
    pub fn train_until_on(
        &mut self,
        train: &Dataset,
        test: Option<&Dataset>,
        device: &Device,
        until: u64,
        on_step: &mut dyn FnMut(&StepRecord),
    ) -> Result<TrainReport> {
        let mut hooks = TrainHooks::new().on_step(on_step).until(until);
        self.train_with(train, test, device, &mut hooks)
    }

    /// Trains as [`PrivateTrainer::train_until_on`] does, with `hooks`: a callback after every
    /// step, a callback after every epoch that gets the trainer itself (to evaluate, log,
    /// save, or stop the run early), and a checkpoint every `k` steps (and at the end).
    ///
    /// ```
    /// use dp_optim::{BatchSize, Delta, Epochs, FixedClip, PrivateTrainer, Sgd, TrainHooks, TrainerConfig};
    /// use std::ops::ControlFlow;
    /// let data = dp_data::load_bundled_mnist().unwrap();
    /// let dev = candle_core::Device::Cpu;
    /// let model = dp_core::models::mlp(&[784, 8, 10], &dev, 0).unwrap();
    /// let cfg = TrainerConfig::new(Epochs(3.0), BatchSize(400.0), Delta(1e-5)).with_seed(0);
    /// let mut t = PrivateTrainer::new(model, Box::new(Sgd::new(0.1)), Box::new(FixedClip::new(1.0, 1.0).unwrap()), cfg, &data.train).unwrap();
    /// let dir = std::env::temp_dir().join(format!("dp-optim-hooks-doc-{}", std::process::id()));
    /// let mut on_epoch = |t: &mut PrivateTrainer<_>, e: &dp_optim::EpochRecord| {
    ///     let (_, train_acc) = t.evaluate(&data.test, &dev)?; // the caller's own evaluation
    ///     assert!((0.0..=1.0).contains(&train_acc));
    ///     Ok(if e.epoch == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
    /// };
    /// let mut hooks = TrainHooks::new().on_epoch(&mut on_epoch).checkpoint_every(7, &dir);
    /// let r = t.train_with(&data.train, None, &dev, &mut hooks).unwrap();
    /// assert_eq!(r.steps, 20); // stopped after two epochs of 10 steps
    /// assert_eq!(dp_optim::checkpoint_step(&dir).unwrap(), 20);
    /// # std::fs::remove_dir_all(&dir).ok();
    /// ```
    pub fn train_with(
        &mut self,
        train: &Dataset,
        test: Option<&Dataset>,
        device: &Device,
        hooks: &mut TrainHooks<'_, M>,
    ) -> Result<TrainReport> {
        let start = std::time::Instant::now();
        let until = hooks.until.min(self.total_steps);
        if let Some((k, _)) = &hooks.checkpoint {
            if *k == 0 {
                return Err(TrainError::InvalidConfig(
                    "checkpoint_every: k must be ≥ 1".into(),
                ));
            }
        }
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
        while self.step < until {
            let Some(rec) = self.step(train, device)? else {
                break;
            };
            if let Some(f) = hooks.on_step.as_mut() {
                f(&rec);
            }
            if let Some(b) = &bar {
                b.set_position(self.step);
                if let Some(e) = rec.epsilon {
                    b.set_message(format!("ε={e:.3} C={:.3}", rec.clip_norm));
                }
            }
            if let Some((k, dir)) = &hooks.checkpoint {
                if self.step.is_multiple_of(*k) {
                    self.save_checkpoint(dir)?;
                }
            }
            if self.step.is_multiple_of(per_epoch) || self.step == self.total_steps {
                self.end_epoch(test, device)?;
                if let Some(f) = hooks.on_epoch.as_mut() {
                    let rec = self.epochs.last().cloned().expect("an epoch just ended");
                    if f(self, &rec)?.is_break() {
                        self.stop_reason = Some(StopReason::StoppedByCallback { epoch: rec.epoch });
                        break;
                    }
                }
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let stop = self.stop_reason.clone().unwrap_or(StopReason::Completed);
        if let Some((k, dir)) = &hooks.checkpoint {
            if !self.step.is_multiple_of(*k) {
                self.save_checkpoint(dir)?;
            }
        }
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
            guarantee: self.guarantee(),
            noise_multiplier: self.method.noise_multiplier(),
            test_accuracy: self.epochs.last().and_then(|e| e.test_accuracy),
            averaged_test_accuracy: self.epochs.last().and_then(|e| e.averaged_test_accuracy),
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
        let averaged = match test {
            Some(t) => self.evaluate_averaged(t, device)?,
            None => None,
        };
        let epsilon = self.epsilon()?;
        self.epochs.push(EpochRecord {
            epoch: self.epochs.len() as u64 + 1,
            step: self.step,
            epsilon,
            guarantee: self.guarantee(),
            test_accuracy: acc,
            test_loss: loss,
            clip_norm: self.records.last().map_or(f64::NAN, |r| r.clip_norm),
            averaged_test_accuracy: averaged.map(|(_, a)| a),
            averaged_test_loss: averaged.map(|(l, _)| l),
        });
        Ok(())
    }
}

/// Whether any phase of the run is private (its steps are then accounted).
fn has_private_phase(config: &TrainerConfig) -> bool {
    config.regime.is_private() || config.regime_switches.iter().any(|(_, r)| r.is_private())
}

/// The smallest budgeted σ whose planned run fits `eps`, for `method`'s releases under the
/// configured accountant. A constant-σ run is one repeated event (the classic search); a
/// schedule or a multi-query step goes through the generic search, warm-started from a cheap
/// accountant when the configured one is expensive to query.
fn calibrate(
    accounting: &SampleAccounting,
    method: &dyn PrivacyMethod,
    config: &TrainerConfig,
    eps: f64,
    steps: u64,
    prior: &[dp_accounting::DpEvent],
) -> Result<f64> {
    // Releases of exactly one query with multiplier σ every step (checked at two σ): the
    // run is one repeated subsampled Gaussian.
    let constant =
        |s: f64| -> Result<bool> { Ok(accounting.run_blocks(method, s, steps)? == [(s, steps)]) };
    if prior.is_empty() && constant(1.0)? && constant(2.0)? {
        return Ok(calibrate_noise_multiplier(
            eps,
            config.delta,
            accounting.q,
            steps,
            config.accountant,
        )?);
    }
    let make_event = |s: f64| {
        let blocks = accounting
            .run_blocks(method, s, steps)
            .map_err(|e| dp_accounting::AccountingError::CalibrationFailed(e.to_string()))?;
        let run = schedule_event(accounting.q, &blocks)?;
        Ok(if prior.is_empty() {
            run
        } else {
            // The pipeline's earlier releases come first: σ is the one that makes the
            // whole pipeline fit the budget.
            let mut all = prior.to_vec();
            all.push(run);
            dp_accounting::DpEvent::Composed(all)
        })
    };
    let mut search = NoiseSearch::default();
    let kind = config.accountant;
    if !AnyAccountant::new(kind).epsilon_is_cheap() {
        let guess = calibrate_noise(
            dp_accounting::RdpAccountant::new,
            make_event,
            eps,
            config.delta,
            NoiseSearch::default(),
        )?;
        search = search.starting_at(guess);
    }
    Ok(calibrate_noise(
        || AnyAccountant::new(kind),
        make_event,
        eps,
        config.delta,
        search,
    )?)
}

/// What [`PrivateTrainer::train_with`] calls and writes while it trains.
pub struct TrainHooks<'a, M: Model> {
    until: u64,
    on_step: Option<Box<StepHook<'a>>>,
    on_epoch: Option<Box<EpochHook<'a, M>>>,
    checkpoint: Option<(u64, std::path::PathBuf)>,
}

/// The step callback of [`TrainHooks::on_step`].
pub type StepHook<'a> = dyn FnMut(&StepRecord) + 'a;

/// The epoch callback of [`TrainHooks::on_epoch`].
pub type EpochHook<'a, M> =
    dyn FnMut(&mut PrivateTrainer<M>, &EpochRecord) -> Result<std::ops::ControlFlow<()>> + 'a;

impl<M: Model> Default for TrainHooks<'_, M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a, M: Model> TrainHooks<'a, M> {
    /// No callbacks, no checkpoints, train to the end of the plan.
    pub fn new() -> Self {
        Self {
            until: u64::MAX,
            on_step: None,
            on_epoch: None,
            checkpoint: None,
        }
    }

    /// Stop at step `until` (at most the planned steps).
    pub fn until(mut self, until: u64) -> Self {
        self.until = until;
        self
    }

    /// Call `f` after every step with its record.
    pub fn on_step(mut self, f: &'a mut StepHook<'a>) -> Self {
        self.on_step = Some(Box::new(f));
        self
    }

    /// Call `f` after every epoch (after the trainer's own evaluation) with the trainer and
    /// the epoch's record; `ControlFlow::Break` stops the run there
    /// ([`StopReason::StoppedByCallback`]).
    pub fn on_epoch(mut self, f: &'a mut EpochHook<'a, M>) -> Self {
        self.on_epoch = Some(Box::new(f));
        self
    }

    /// Write a checkpoint ([`PrivateTrainer::save_checkpoint`]) into `dir` every `k` steps
    /// and when training stops.
    pub fn checkpoint_every(mut self, k: u64, dir: impl Into<std::path::PathBuf>) -> Self {
        self.checkpoint = Some((k, dir.into()));
        self
    }
}
