//! One run as a config file states it ([`RunConfig`]), and its validation: every field has
//! a default, unknown fields are errors, and a value out of range is refused naming the
//! file, the field and what is allowed, before anything runs.

use super::error::{PipelineError, Result};
use dp_optim::methods::{MethodContext, MethodSpec};
use dp_optim::Regime;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The datasets a run can use (the real ones the project reports on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetChoice {
    /// 5,000 real MNIST digits compiled into dp-data (4,000 train / 1,000 test).
    #[default]
    Bundled,
    /// Full MNIST (60,000 / 10,000) from `data_dir`, `DP_LAB_DATA` or `/usr/share/datasets`.
    Mnist,
    /// Full FashionMNIST (`apt-get install dataset-fashion-mnist`).
    FashionMnist,
}

impl DatasetChoice {
    /// The name in results and reports.
    pub fn label(self) -> &'static str {
        match self {
            DatasetChoice::Bundled => "bundled-mnist-5k",
            DatasetChoice::Mnist => "mnist",
            DatasetChoice::FashionMnist => "fashion-mnist",
        }
    }

    /// Training examples (public: fixes `q = B/N` before the data is read).
    pub fn train_len(self) -> usize {
        match self {
            DatasetChoice::Bundled => 4_000,
            DatasetChoice::Mnist | DatasetChoice::FashionMnist => 60_000,
        }
    }
}

/// The models a run can train (dp-core's builders).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ModelChoice {
    /// Tramèr & Boneh's tanh CNN for 28×28 inputs.
    #[default]
    MnistCnn,
    /// Esipova et al.'s CNN.
    EsipovaCnn,
    /// A multilayer perceptron 784 → `mlp_hidden` → 10.
    Mlp,
}

/// The base optimiser and its learning-rate schedule (public: no privacy cost).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// `sgd`, `adam`, `adamw` or `adam_bc` (DP-AdamBC, Tang et al. 2024).
    pub name: String,
    /// Learning rate (at the start of the schedule).
    pub lr: f64,
    /// SGD's momentum.
    pub momentum: f64,
    /// Weight decay (SGD, AdamW).
    pub weight_decay: f64,
    /// `constant`, `cosine` (to 0 at the last epoch) or `step` (× `step_factor` every
    /// `step_every` epochs).
    pub schedule: String,
    /// Epochs between two decays of the `step` schedule.
    pub step_every: u64,
    /// Factor of each decay of the `step` schedule.
    pub step_factor: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            name: "sgd".into(),
            lr: 1.0,
            momentum: 0.9,
            weight_decay: 0.0,
            schedule: "constant".into(),
            step_every: 10,
            step_factor: 0.5,
        }
    }
}

impl OptimizerConfig {
    /// The optimiser names [`OptimizerConfig::name`] accepts.
    pub const NAMES: &'static [&'static str] = &["sgd", "adam", "adamw", "adam_bc"];
    /// The schedules [`OptimizerConfig::schedule`] accepts.
    pub const SCHEDULES: &'static [&'static str] = &["constant", "cosine", "step"];

    /// The learning rate of (0-based) epoch `epoch` of `epochs`.
    ///
    /// ```
    /// let mut o = dp_lab::pipeline::OptimizerConfig::default();
    /// o.schedule = "cosine".into();
    /// assert_eq!(o.lr_at(0, 10), 1.0);
    /// assert!((o.lr_at(5, 10) - 0.5).abs() < 1e-12);
    /// ```
    pub fn lr_at(&self, epoch: u64, epochs: u64) -> f64 {
        match self.schedule.as_str() {
            "cosine" => {
                let t = epoch as f64 / epochs.max(1) as f64;
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            "step" => {
                self.lr
                    * self
                        .step_factor
                        .powf((epoch / self.step_every.max(1)) as f64)
            }
            _ => self.lr,
        }
    }
}

/// Metrics a run can compute on its final model (and every `metrics_every` epochs).
/// Analysis only: computed without noise on a fixed probe set, never fed back into training.
pub const METRIC_NAMES: &[&str] = &[
    "per_class_accuracy",
    "clipping_bias",
    "membership_auc",
    "sharpness",
    "lambda_max",
    "hessian_trace",
    "landscape_tv",
    "sparsity",
];

/// Where a pruning mask comes from (it decides what the mask costs in privacy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MaskSourceChoice {
    /// Magnitude pruning of the initial weights: data-independent, free.
    #[default]
    Init,
    /// Magnitude pruning of weights released by a first private stage of the same run
    /// (`⌊epochs/2⌋` epochs at the σ of the whole run), then re-training from those weights
    /// under the mask; the second stage is calibrated so that both together spend the run's
    /// ε (Watson et al.'s two-stage pipeline). Needs `epochs ≥ 2` and a private regime.
    Released,
    /// Magnitude pruning of a model trained non-privately on the *other* dataset (MNIST ↔
    /// FashionMNIST; FashionMNIST for the bundled digits, which are MNIST), its first
    /// `train_len` examples, with the run's model, optimiser and epochs: public data, free.
    Public,
}

impl MaskSourceChoice {
    /// The name in results and reports.
    pub fn label(self) -> &'static str {
        match self {
            MaskSourceChoice::Init => "init",
            MaskSourceChoice::Released => "released",
            MaskSourceChoice::Public => "public",
        }
    }
}

/// One training run. Every field has a default; `dp-lab train` writes the resolved config
/// (every field) next to the results, so a run is reproducible from its own output.
///
/// ```
/// let cfg: dp_lab::pipeline::RunConfig = toml::from_str("epochs = 2\n[method]\nname = \"bam\"").unwrap();
/// assert_eq!(cfg.epochs, 2.0);
/// assert!(toml::from_str::<dp_lab::pipeline::RunConfig>("epohcs = 2").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// `bundled`, `mnist` or `fashion-mnist`.
    pub dataset: DatasetChoice,
    /// Directory with the dataset's files (full datasets only).
    pub data_dir: Option<PathBuf>,
    /// `mnist_cnn`, `esipova_cnn` or `mlp`.
    pub model: ModelChoice,
    /// Hidden widths of the `mlp` model.
    pub mlp_hidden: Vec<usize>,
    /// The privacy method and its parameters (`[method]`, `name` one of
    /// [`MethodSpec::NAMES`]).
    pub method: MethodSpec,
    /// `private`, `clip-only`, `noise-only`, `non-private` or `data-dependent-noise`.
    pub regime: String,
    /// Target ε (the noise is calibrated so the run spends it). Private runs only; default
    /// 3 when neither `epsilon` nor `sigma` is given.
    pub epsilon: Option<f64>,
    /// A fixed noise multiplier instead of a target ε.
    pub sigma: Option<f64>,
    /// δ.
    pub delta: f64,
    /// `rdp` or `prv`.
    pub accountant: String,
    /// Epochs (`⌈epochs·N/B⌉` steps).
    pub epochs: f64,
    /// Expected (Poisson) batch size `B`.
    pub batch_size: f64,
    /// Most examples per physical batch (memory cap; not a privacy parameter).
    pub max_physical_batch: usize,
    /// The base optimiser and its schedule (`[optimizer]`).
    pub optimizer: OptimizerConfig,
    /// Fraction of weights pruned, in [0, 1).
    pub sparsity: f64,
    /// Where the pruning mask comes from: `init`, `released` or `public` (moot, and
    /// ignored, when `sparsity = 0`).
    pub mask_source: MaskSourceChoice,
    /// Directory of the public dataset of `mask_source = "public"` (default: as for
    /// `data_dir`).
    pub public_data_dir: Option<PathBuf>,
    /// Learning rate at the start of the public model's schedule (`mask_source = "public"`:
    /// its training is non-private, so a private run's learning rate, tuned for clipped
    /// and noised gradients, is usually far too large for it). Default: `optimizer.lr`.
    /// The schedule's shape is the run's.
    pub public_lr: Option<f64>,
    /// `global` (one ranking) or `per_layer`.
    pub prune_scope: String,
    /// Seed of the model, the sampler, the noise and the metrics' probes.
    pub seed: u64,
    /// Metrics at the end (names from [`METRIC_NAMES`]).
    pub metrics: Vec<String>,
    /// Also compute them every k epochs (0: at the end only).
    pub metrics_every: u64,
    /// Examples in the probe set of the landscape and Hessian metrics.
    pub probe_size: usize,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetChoice::Bundled,
            data_dir: None,
            model: ModelChoice::MnistCnn,
            mlp_hidden: vec![256],
            method: MethodSpec {
                clip: 0.1,
                ..MethodSpec::default()
            },
            regime: "private".into(),
            epsilon: None,
            sigma: None,
            delta: 1e-5,
            accountant: "rdp".into(),
            epochs: 1.0,
            batch_size: 256.0,
            max_physical_batch: 512,
            optimizer: OptimizerConfig::default(),
            sparsity: 0.0,
            mask_source: MaskSourceChoice::Init,
            public_data_dir: None,
            public_lr: None,
            prune_scope: "global".into(),
            seed: 0,
            metrics: vec!["per_class_accuracy".into()],
            metrics_every: 0,
            probe_size: 256,
        }
    }
}

/// What ε a run is held to, resolved from `epsilon`, `sigma` and the regime.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Noise {
    /// Calibrate σ so the run spends this ε.
    Budget(f64),
    /// This σ (ε is whatever the accountant reports; ∞ when not DP).
    Sigma(f64),
    /// No noise (non-private, clip-only).
    None,
}

impl RunConfig {
    /// Parses a run file (unknown fields are errors naming the file).
    pub fn from_toml(text: &str, file: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| PipelineError::config(file, "", e.message().to_string()))
    }

    /// The regime, parsed.
    pub fn regime(&self) -> Result<Regime> {
        self.regime
            .parse()
            .map_err(|e: dp_optim::TrainError| PipelineError::config("", "regime", e.to_string()))
    }

    /// Steps per epoch `⌈N/B⌉` for this dataset and batch size.
    pub fn steps_per_epoch(&self) -> u64 {
        (self.dataset.train_len() as f64 / self.batch_size)
            .ceil()
            .max(1.0) as u64
    }

    /// Epochs as a whole number of epoch boundaries (the last one may be partial).
    pub fn whole_epochs(&self) -> u64 {
        self.epochs.ceil().max(1.0) as u64
    }

    /// The noise the run uses: an ε for a non-private regime, both ε and σ, or a
    /// noise-only run without σ are refused.
    pub fn noise(&self) -> Result<Noise> {
        let regime = self.regime()?;
        let err = |field: &str, msg: String| Err(PipelineError::config("", field, msg));
        match regime {
            Regime::Private => match (self.epsilon, self.sigma) {
                (Some(_), Some(_)) => err("sigma", "give epsilon or sigma, not both".into()),
                (Some(e), None) => Ok(Noise::Budget(e)),
                (None, Some(s)) => Ok(Noise::Sigma(s)),
                (None, None) => Ok(Noise::Budget(3.0)),
            },
            _ if self.epsilon.is_some() => err(
                "epsilon",
                format!(
                    "regime '{}' is not DP and has no ε: remove epsilon (a noise-only or \
                     data-dependent-noise run takes sigma)",
                    self.regime
                ),
            ),
            Regime::NoiseOnly | Regime::DataDependentNoise => match self.sigma {
                Some(s) => Ok(Noise::Sigma(s)),
                None => err(
                    "sigma",
                    format!("regime '{}' needs sigma (it adds noise)", self.regime),
                ),
            },
            Regime::NonPrivate | Regime::ClipOnly => match self.sigma {
                Some(_) => err(
                    "sigma",
                    format!("regime '{}' adds no noise: remove sigma", self.regime),
                ),
                None => Ok(Noise::None),
            },
        }
    }

    /// Checks every field; the error names the field and the allowed values. `file` names
    /// the config file in the message.
    pub fn validate(&self, file: &str) -> Result<()> {
        let bad = |field: &str, msg: String| Err(PipelineError::config(file, field, msg));
        let finite_pos = |x: f64| x.is_finite() && x > 0.0;
        self.noise().map_err(|e| e.in_file(file))?;
        let regime = self.regime().map_err(|e| e.in_file(file))?;
        if let Some(e) = self.epsilon {
            if !finite_pos(e) {
                return bad("epsilon", format!("{e}: must be finite and > 0"));
            }
        }
        if let Some(s) = self.sigma {
            if !finite_pos(s) {
                return bad("sigma", format!("{s}: must be finite and > 0"));
            }
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return bad("delta", format!("{}: must be in (0, 1)", self.delta));
        }
        if self
            .accountant
            .parse::<dp_accounting::AccountantKind>()
            .is_err()
        {
            return bad(
                "accountant",
                format!("'{}': allowed values rdp, prv", self.accountant),
            );
        }
        if !(finite_pos(self.epochs) && self.epochs <= 10_000.0) {
            return bad("epochs", format!("{}: must be in (0, 10000]", self.epochs));
        }
        let n = self.dataset.train_len() as f64;
        if !(finite_pos(self.batch_size) && self.batch_size <= n) {
            return bad(
                "batch_size",
                format!(
                    "{}: must be in (0, {n}] (the training set)",
                    self.batch_size
                ),
            );
        }
        if self.max_physical_batch == 0 {
            return bad("max_physical_batch", "must be ≥ 1".into());
        }
        if self.model == ModelChoice::Mlp && self.mlp_hidden.contains(&0) {
            return bad("mlp_hidden", "widths must be ≥ 1".into());
        }
        let o = &self.optimizer;
        if !OptimizerConfig::NAMES.contains(&o.name.as_str()) {
            return bad(
                "optimizer.name",
                format!(
                    "'{}': allowed values {}",
                    o.name,
                    OptimizerConfig::NAMES.join(", ")
                ),
            );
        }
        if !OptimizerConfig::SCHEDULES.contains(&o.schedule.as_str()) {
            return bad(
                "optimizer.schedule",
                format!(
                    "'{}': allowed values {}",
                    o.schedule,
                    OptimizerConfig::SCHEDULES.join(", ")
                ),
            );
        }
        if !finite_pos(o.lr) {
            return bad("optimizer.lr", format!("{}: must be finite and > 0", o.lr));
        }
        if !(o.momentum.is_finite() && (0.0..1.0).contains(&o.momentum)) {
            return bad(
                "optimizer.momentum",
                format!("{}: must be in [0, 1)", o.momentum),
            );
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return bad(
                "optimizer.weight_decay",
                format!("{}: must be finite and ≥ 0", o.weight_decay),
            );
        }
        if !(o.step_factor > 0.0 && o.step_factor <= 1.0) || o.step_every == 0 {
            return bad(
                "optimizer.step_factor",
                "step_factor must be in (0, 1] and step_every ≥ 1".into(),
            );
        }
        if let Some(lr) = self.public_lr {
            if !finite_pos(lr) {
                return bad("public_lr", format!("{lr}: must be finite and > 0"));
            }
        }
        if !(self.sparsity.is_finite() && (0.0..1.0).contains(&self.sparsity)) {
            return bad("sparsity", format!("{}: must be in [0, 1)", self.sparsity));
        }
        if self.sparsity > 0.0 && !self.method.supports_pruning() {
            return bad(
                "sparsity",
                format!(
                    "method '{}' does not train under a pruning mask: use sparsity = 0",
                    self.method.name
                ),
            );
        }
        // Without pruning the mask source is moot (a dense run, whatever it says).
        if self.mask_source == MaskSourceChoice::Released && self.sparsity > 0.0 {
            if regime != Regime::Private {
                return bad(
                    "mask_source",
                    format!(
                        "'released' is a two-stage private pipeline; regime '{}' is not \
                         private (use 'init' or 'public')",
                        self.regime
                    ),
                );
            }
            if self.epochs < 2.0 || self.epochs.fract() != 0.0 {
                return bad(
                    "mask_source",
                    format!(
                        "'released' trains ⌊epochs/2⌋ epochs, prunes, then the rest: epochs \
                         must be a whole number ≥ 2, got {}",
                        self.epochs
                    ),
                );
            }
        }
        if !["global", "per_layer"].contains(&self.prune_scope.as_str()) {
            return bad(
                "prune_scope",
                format!("'{}': allowed values global, per_layer", self.prune_scope),
            );
        }
        for m in &self.metrics {
            if !METRIC_NAMES.contains(&m.as_str()) {
                return bad(
                    "metrics",
                    format!(
                        "unknown metric '{m}': allowed values {}",
                        METRIC_NAMES.join(", ")
                    ),
                );
            }
        }
        if self.probe_size == 0 {
            return bad("probe_size", "must be ≥ 1".into());
        }
        let ctx = MethodContext {
            expected_batch_size: self.batch_size,
            steps_per_epoch: self.steps_per_epoch(),
        };
        self.method
            .validate(&ctx)
            .map_err(|e| PipelineError::config(file, "method", e.to_string()))?;
        let published = !self.method.is_dp_as_published();
        if published != (regime == Regime::DataDependentNoise) {
            return bad(
                "regime",
                format!(
                    "method '{}' runs in regime '{}', not '{}' (data-dependent-noise is only \
                     for methods that are not DP as published)",
                    self.method.name,
                    if published {
                        "data-dependent-noise"
                    } else {
                        "private (or a non-private one)"
                    },
                    self.regime
                ),
            );
        }
        Ok(())
    }
}
