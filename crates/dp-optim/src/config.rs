//! A run's configuration: serialisable, stored in checkpoints.

use crate::plan::Regime;
use dp_accounting::AccountantKind;
use dp_core::{GradMode, NonFinitePolicy};
use serde::{Deserialize, Serialize};

/// Epochs to train, for [`TrainerConfig::new`]: a named type, so that the epochs and the
/// batch size cannot be swapped without a compile error (a swap once planned 170,667 steps
/// without a word).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Epochs(pub f64);

/// Expected logical batch size `B = q·N`, for [`TrainerConfig::new`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchSize(pub f64);

/// Target δ, for [`TrainerConfig::new`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delta(pub f64);

/// Something legal but probably not meant, found by [`TrainerConfig::warnings`]. Library
/// code does not print; callers (the examples) show these to the user.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigWarning {
    /// δ ≥ 1/N: a mechanism that publishes one random example in full is (0, 1/N)-DP, so such
    /// a δ permits that. The usual choice is δ well below 1/N.
    DeltaNotBelowOneOverN {
        /// The configured δ.
        delta: f64,
        /// The training set's size.
        dataset_len: usize,
    },
}

impl std::fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigWarning::DeltaNotBelowOneOverN { delta, dataset_len } => write!(
                f,
                "δ = {delta} is not below 1/N = {} (N = {dataset_len}): such a δ allows \
                 publishing a random example in full; choose δ ≪ 1/N",
                1.0 / *dataset_len as f64
            ),
        }
    }
}

/// How a run is configured (serialisable, stored in checkpoints).
///
/// ```
/// use dp_optim::{BatchSize, Delta, Epochs, TrainerConfig};
/// let cfg = TrainerConfig::new(Epochs(10.0), BatchSize(256.0), Delta(1e-5))
///     .with_budget(3.0)
///     .calibrate_noise_from_budget();
/// assert_eq!(cfg.target_epsilon, Some(3.0));
/// assert!(cfg.calibrate_noise);
/// assert!(cfg.warnings(60_000).is_empty());
/// assert_eq!(cfg.warnings(50_000).len(), 0);
/// assert_eq!(TrainerConfig::new(Epochs(1.0), BatchSize(64.0), Delta(1e-3)).warnings(4_000).len(), 1);
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
    /// DP (default), clip-only, noise-only or non-private. Only [`Regime::Private`] runs
    /// have a finite ε; the others say so in every record.
    #[serde(default)]
    pub regime: Regime,
    /// Account a sampler that is not Poisson (shuffled or fixed-size batches) as if it were
    /// Poisson with `q = B/N`. Off by default: such a run is refused. When on, every record
    /// says that its ε holds only under this assumption.
    #[serde(default)]
    pub assume_poisson_accounting: bool,
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
    /// Record each step's clipping bias `‖Σ_i c_i g_i − Σ_i g_i‖` and the cosine between the
    /// clipped and the unclipped sums ([`crate::StepRecord::clipping_bias`]; Knolle et al.
    /// 2023). Analysis only (computed without noise); costs one more weighted sum per layer.
    #[serde(default)]
    pub track_clipping_bias: bool,
    /// Later phases of a switching schedule (Watson et al. 2023's switching experiments):
    /// `(k, regime)` trains in `regime` from epoch `k` on (whole epochs of
    /// `⌈1/q⌉` steps), [`TrainerConfig::regime`] being the regime of the first phase. Only
    /// the private steps are accounted; a run with any phase that is not private reports
    /// ε = ∞ in every record, since the model it releases is not DP.
    #[serde(default)]
    pub regime_switches: Vec<(u64, Regime)>,
    /// Keep an average of the iterates (EMA or Polyak; De et al. 2022) and evaluate it after
    /// every epoch next to the trained weights ([`crate::EpochRecord::averaged_test_accuracy`]).
    /// Post-processing of the private iterates: no privacy cost. Stored in checkpoints.
    #[serde(default)]
    pub averaging: Option<crate::Averaging>,
    /// The learning-rate schedule the trainer applies before every step, as a factor of
    /// the optimiser's rate when the trainer was built (public: no privacy cost).
    /// [`crate::LrSchedule::Constant`] leaves the rate alone, so a caller may set it
    /// itself.
    #[serde(default)]
    pub lr_schedule: crate::LrSchedule,
}

impl TrainerConfig {
    /// `epochs` of Poisson-sampled batches of expected size `expected_batch_size`, at `δ`.
    /// The values are checked when the trainer is built; see also
    /// [`TrainerConfig::warnings`].
    pub fn new(
        Epochs(epochs): Epochs,
        BatchSize(expected_batch_size): BatchSize,
        Delta(delta): Delta,
    ) -> Self {
        Self {
            epochs,
            expected_batch_size,
            max_physical_batch: 0,
            delta,
            target_epsilon: None,
            calibrate_noise: false,
            accountant: AccountantKind::Rdp,
            regime: Regime::Private,
            assume_poisson_accounting: false,
            seed: None,
            grad_mode: GradMode::Auto,
            non_finite: NonFinitePolicy::Error,
            progress: false,
            eval_batch: 1000,
            rescale_by_clip_norm: false,
            augmentation: None,
            track_clipping_bias: false,
            regime_switches: Vec::new(),
            averaging: None,
            lr_schedule: crate::LrSchedule::Constant,
        }
    }

    /// Apply `schedule` to the learning rate before every step (see
    /// [`TrainerConfig::lr_schedule`]).
    ///
    /// ```
    /// use dp_optim::{BatchSize, Delta, Epochs, LrSchedule, TrainerConfig};
    /// let cfg = TrainerConfig::new(Epochs(1.0), BatchSize(64.0), Delta(1e-5))
    ///     .with_lr_schedule(LrSchedule::Cosine { floor: 0.0 });
    /// assert_eq!(cfg.lr_schedule, LrSchedule::Cosine { floor: 0.0 });
    /// ```
    pub fn with_lr_schedule(mut self, schedule: crate::LrSchedule) -> Self {
        self.lr_schedule = schedule;
        self
    }
    /// Keep this average of the iterates (see [`TrainerConfig::averaging`]).
    ///
    /// ```
    /// use dp_optim::{Averaging, BatchSize, Delta, Epochs, TrainerConfig};
    /// let cfg = TrainerConfig::new(Epochs(1.0), BatchSize(64.0), Delta(1e-5))
    ///     .with_averaging(Averaging::ema(0.999).unwrap());
    /// assert!(matches!(cfg.averaging, Some(Averaging::Ema { .. })));
    /// ```
    pub fn with_averaging(mut self, averaging: crate::Averaging) -> Self {
        self.averaging = Some(averaging);
        self
    }
    /// From epoch `epoch` on, train in `regime` (see [`TrainerConfig::regime_switches`]).
    ///
    /// ```
    /// use dp_optim::{BatchSize, Delta, Epochs, Regime, TrainerConfig};
    /// let cfg = TrainerConfig::new(Epochs(4.0), BatchSize(64.0), Delta(1e-5))
    ///     .with_regime(Regime::NonPrivate)
    ///     .with_regime_from_epoch(2, Regime::Private);
    /// assert_eq!(cfg.regime_at(0, 10), Regime::NonPrivate);
    /// assert_eq!(cfg.regime_at(20, 10), Regime::Private);
    /// assert!(!cfg.is_private()); // the released model saw non-private steps
    /// ```
    pub fn with_regime_from_epoch(mut self, epoch: u64, regime: Regime) -> Self {
        self.regime_switches.push((epoch, regime));
        self
    }
    /// The regime of step `step` (0-based) of a run with `steps_per_epoch` steps per epoch.
    pub fn regime_at(&self, step: u64, steps_per_epoch: u64) -> Regime {
        let epoch = step / steps_per_epoch.max(1);
        self.regime_switches
            .iter()
            .filter(|(k, _)| *k <= epoch)
            .max_by_key(|(k, _)| *k)
            .map_or(self.regime, |(_, r)| *r)
    }
    /// Whether every phase of the run is private: only then has the released model a
    /// finite ε.
    pub fn is_private(&self) -> bool {
        self.regime.is_private() && self.regime_switches.iter().all(|(_, r)| r.is_private())
    }
    /// The regime that makes the run not private (the first phase's, else the first later
    /// phase that is not private), or `None` for a private run.
    pub fn non_private_regime(&self) -> Option<Regime> {
        if !self.regime.is_private() {
            return Some(self.regime);
        }
        self.regime_switches
            .iter()
            .map(|(_, r)| *r)
            .find(|r| !r.is_private())
    }
    /// Legal settings that are probably mistakes, for a training set of `dataset_len`
    /// examples (also available as [`crate::PrivateTrainer::warnings`]). Empty when nothing
    /// looks wrong.
    pub fn warnings(&self, dataset_len: usize) -> Vec<ConfigWarning> {
        let mut w = Vec::new();
        if dataset_len > 0 && self.delta * dataset_len as f64 >= 1.0 {
            w.push(ConfigWarning::DeltaNotBelowOneOverN {
                delta: self.delta,
                dataset_len,
            });
        }
        w
    }
    /// Augment each sampled example `k` times (random crop/flip per `aug`) and clip the
    /// mean of its `k` gradients (De et al. 2022).
    pub fn with_augmentation_multiplicity(mut self, aug: dp_data::Augmentation, k: usize) -> Self {
        self.augmentation = Some((aug, k));
        self
    }
    /// See [`TrainerConfig::track_clipping_bias`].
    pub fn with_clipping_bias(mut self, on: bool) -> Self {
        self.track_clipping_bias = on;
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
    /// Train in `regime` (see [`Regime`]).
    pub fn with_regime(mut self, regime: Regime) -> Self {
        self.regime = regime;
        self
    }
    /// Account a non-Poisson sampler as Poisson (see
    /// [`TrainerConfig::assume_poisson_accounting`]).
    pub fn assume_poisson_accounting(mut self, on: bool) -> Self {
        self.assume_poisson_accounting = on;
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
