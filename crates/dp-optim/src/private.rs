//! The one-call entry, in the spirit of Opacus's `make_private_with_epsilon`: a model, an
//! optimiser, the training set, a target `(ε, δ)` over some epochs of batches of one
//! expected size, and a method described **without** a noise multiplier → a trainer whose σ
//! spends the target.
//!
//! Why a method without σ: σ is not the user's to choose once ε is; writing a placeholder
//! σ that calibration then replaces is a trap (a placeholder that fails the method's own
//! check, such as adaptive clipping's `σ < 2σ_b`, fails a run that would have been valid,
//! and one that passes hides that it is ignored). A [`Method`] is built by the trainer once
//! σ is known, with the expected batch size taken from the [`PrivacyTarget`] (the one place
//! it is given), and the built method goes through the trainer's usual calibration and
//! budget guard, which account every query each step releases.

use crate::config::{BatchSize, Delta, Epochs, TrainerConfig};
use crate::error::{Result, TrainError};
use crate::methods::{MethodContext, MethodSpec, PrivacyMethod};
use crate::optim::BaseOptimizer;
use crate::trainer::PrivateTrainer;
use dp_core::Model;
use dp_data::Dataset;

/// What a private run must achieve: `(ε, δ)`-DP after `epochs` epochs of Poisson-sampled
/// batches of expected size `batch_size` (`q = batch_size / N`). Built as a struct
/// literal, so every number is named at the call site and two cannot be swapped silently.
/// Checked by [`PrivacyTarget::validate`] (and by [`make_private`]).
///
/// ```
/// use dp_optim::PrivacyTarget;
/// let target = PrivacyTarget { epsilon: 3.0, delta: 1e-5, epochs: 10.0, batch_size: 256.0 };
/// let cfg = target.config().unwrap();
/// assert_eq!((cfg.target_epsilon, cfg.calibrate_noise), (Some(3.0), true));
/// assert_eq!(cfg.expected_batch_size, 256.0);
/// assert!(PrivacyTarget { epsilon: 0.0, ..target }.validate().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrivacyTarget {
    /// Target ε (finite, > 0): the noise is calibrated to spend it, and never more is spent.
    pub epsilon: f64,
    /// Target δ, in `(0, 1)` (usually well below `1/N`; see [`crate::ConfigWarning`]).
    pub delta: f64,
    /// Epochs to train (finite, > 0); steps = `⌈epochs/q⌉`.
    pub epochs: f64,
    /// Expected logical batch size `B = q·N` (finite, > 0, at most `N`): the sampling rate,
    /// the public divisor, and whatever a method derives from `B` (adaptive clipping's
    /// `σ_b = B/20`).
    pub batch_size: f64,
}

/// `Ok` when `value` is finite and `ok` holds, else [`TrainError::OutOfRange`].
fn check_range(name: &'static str, value: f64, expected: &'static str, ok: bool) -> Result<()> {
    if value.is_finite() && ok {
        Ok(())
    } else {
        Err(TrainError::OutOfRange {
            name,
            value,
            expected,
        })
    }
}

impl PrivacyTarget {
    /// Refuses ε ≤ 0, δ ∉ (0, 1), epochs ≤ 0, a batch size ≤ 0, or any non-finite value,
    /// with [`TrainError::OutOfRange`] naming the field.
    pub fn validate(&self) -> Result<()> {
        check_range("ε", self.epsilon, "finite and > 0", self.epsilon > 0.0)?;
        check_range(
            "δ",
            self.delta,
            "in (0, 1)",
            self.delta > 0.0 && self.delta < 1.0,
        )?;
        check_range("epochs", self.epochs, "finite and > 0", self.epochs > 0.0)?;
        check_range(
            "expected batch size",
            self.batch_size,
            "finite and > 0",
            self.batch_size > 0.0,
        )
    }

    /// The run's configuration: these epochs, batch size and δ, with the budget ε and noise
    /// calibration on. Further settings (seed, accountant, memory cap, ...) go through
    /// [`crate::TrainerBuilder::configure`].
    pub fn config(&self) -> Result<TrainerConfig> {
        self.validate()?;
        Ok(self.unchecked_config())
    }

    pub(crate) fn unchecked_config(&self) -> TrainerConfig {
        TrainerConfig::new(
            Epochs(self.epochs),
            BatchSize(self.batch_size),
            Delta(self.delta),
        )
        .with_budget(self.epsilon)
        .calibrate_noise_from_budget()
    }

    /// Whether `cfg` still trains to this target (what
    /// [`crate::TrainerBuilder::configure`] must not change).
    pub(crate) fn matches(&self, cfg: &TrainerConfig) -> bool {
        cfg.epochs == self.epochs
            && cfg.expected_batch_size == self.batch_size
            && cfg.delta == self.delta
            && cfg.target_epsilon == Some(self.epsilon)
            && cfg.calibrate_noise
    }
}

type BuildFn = dyn Fn(f64, &MethodContext) -> Result<Box<dyn PrivacyMethod>> + Send;

enum Recipe {
    Spec(MethodSpec),
    Custom(String, Box<BuildFn>),
}

/// A privacy method described without its noise multiplier, for [`make_private`] and
/// [`PrivateTrainer::with_epsilon`]: the trainer calibrates σ for the [`PrivacyTarget`],
/// then builds the method at that σ with the target's batch size. Every constructor takes
/// the method's own parameters only, clip bound first; what depends on the run (σ, `B`,
/// steps per epoch) comes from the target. The method built is the usual one of
/// [`crate::methods`], with its own validation.
///
/// ```
/// use dp_optim::{Method, MethodContext, MethodSpec};
/// let ctx = MethodContext { expected_batch_size: 256.0, steps_per_epoch: 16 };
/// assert_eq!(Method::dp_sgd(0.1).build(1.0, &ctx).unwrap().name(), "fixed");
/// assert_eq!(Method::adaptive_clipping(0.1).build(1.0, &ctx).unwrap().name(), "andrew_adaptive");
/// assert_eq!(Method::auto_s().name(), "auto_s");
/// // Any parameter of a registered method, through its spec:
/// let spec = MethodSpec { name: "andrew_adaptive".into(), clip: 0.5, target_quantile: 0.7, ..MethodSpec::default() };
/// assert_eq!(Method::from_spec(spec).name(), "andrew_adaptive");
/// assert!(Method::dp_sgd(0.0).build(1.0, &ctx).is_err());
/// ```
pub struct Method {
    recipe: Recipe,
}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.recipe {
            Recipe::Spec(s) => f.debug_tuple("Method").field(s).finish(),
            Recipe::Custom(name, _) => f.debug_tuple("Method::custom").field(name).finish(),
        }
    }
}

impl Method {
    fn spec(name: &str, clip: f64) -> Self {
        Self::from_spec(MethodSpec {
            clip,
            ..MethodSpec::named(name)
        })
    }

    /// DP-SGD (Abadi et al. 2016): every example clipped to `clip_norm`
    /// ([`crate::FixedClip`]).
    pub fn dp_sgd(clip_norm: f64) -> Self {
        Self::spec("dp_sgd", clip_norm)
    }

    /// AUTO-S (Bu et al. 2023): every example normalised, no clip bound
    /// ([`crate::AutoS`], with its learning-rate convention).
    pub fn auto_s() -> Self {
        Self::from_spec(MethodSpec::named("auto_s"))
    }

    /// Adaptive clipping to the private median of the norms (Andrew et al. 2021) from
    /// `initial_clip`, with the paper's `η_C = 0.2` and `σ_b = B/20`
    /// ([`crate::AdaptiveQuantileClip`]); other quantiles through [`Method::from_spec`].
    pub fn adaptive_clipping(initial_clip: f64) -> Self {
        Self::spec("andrew_adaptive", initial_clip)
    }

    /// Global-Adapt (Esipova et al. 2023) with clip bound `clip_norm`
    /// ([`crate::GlobalAdapt`]).
    pub fn global_adapt(clip_norm: f64) -> Self {
        Self::spec("global_adapt", clip_norm)
    }

    /// BAM (Knolle et al. 2023) with clip bound `clip_norm` and the paper's radius and
    /// mixing weight ([`crate::Bam`]).
    pub fn bam(clip_norm: f64) -> Self {
        Self::spec("bam", clip_norm)
    }

    /// Any method of [`MethodSpec::NAMES`] with all its parameters.
    pub fn from_spec(spec: MethodSpec) -> Self {
        Self {
            recipe: Recipe::Spec(spec),
        }
    }

    /// A method of your own (or [`crate::ClipWith`] with a dp-core clip strategy): `build`
    /// makes it at the calibrated σ for the run's context. It is then calibrated and
    /// accounted like any other, through its [`PrivacyMethod::calibration_multipliers`] and
    /// the releases of its plans.
    ///
    /// ```
    /// use dp_optim::{ClipWith, Method, MethodContext, PrivacyMethod};
    /// use dp_core::clipping::PerLayerClip;
    /// let per_layer = Method::custom("per_layer", |sigma, _ctx| {
    ///     let m = ClipWith::new("per_layer", sigma, || Ok(Box::new(PerLayerClip::equal(1.0)?)))?;
    ///     Ok(Box::new(m) as Box<dyn PrivacyMethod>)
    /// });
    /// let ctx = MethodContext { expected_batch_size: 64.0, steps_per_epoch: 10 };
    /// assert_eq!(per_layer.build(1.3, &ctx).unwrap().noise_multiplier(), 1.3);
    /// ```
    pub fn custom(
        name: impl Into<String>,
        build: impl Fn(f64, &MethodContext) -> Result<Box<dyn PrivacyMethod>> + Send + 'static,
    ) -> Self {
        Self {
            recipe: Recipe::Custom(name.into(), Box::new(build)),
        }
    }

    /// The method's name.
    pub fn name(&self) -> String {
        match &self.recipe {
            Recipe::Spec(s) => s.name.clone(),
            Recipe::Custom(name, _) => name.clone(),
        }
    }

    /// The method at noise multiplier `sigma` for a run with context `ctx`. A registered
    /// method whose clip bound is not finite and > 0 gets [`TrainError::OutOfRange`];
    /// everything else is the method's own validation.
    pub fn build(&self, sigma: f64, ctx: &MethodContext) -> Result<Box<dyn PrivacyMethod>> {
        match &self.recipe {
            Recipe::Spec(s) => {
                if !matches!(s.name.as_str(), "auto_s" | "auto_dpsgd_published_not_dp") {
                    check_range("clip norm", s.clip, "finite and > 0", s.clip > 0.0)?;
                }
                s.build(sigma, ctx)
            }
            Recipe::Custom(_, f) => f(sigma, ctx),
        }
    }
}

/// Opacus's `make_private_with_epsilon` in one call: `model` trained with `optimizer` on
/// `train` by `method`, with the noise multiplier calibrated so that the planned run spends
/// `target.epsilon` at `target.delta` (RDP accountant, Poisson sampling at
/// `q = target.batch_size / N`, cross-entropy, seed from the OS). For a seed, another
/// accountant, loss or sampler, use [`PrivateTrainer::with_epsilon`], which returns the
/// builder.
///
/// Errors: [`TrainError::OutOfRange`] for a target or clip bound out of range,
/// [`TrainError::BatchLargerThanDataset`], and every check of [`PrivateTrainer::new`] and
/// of the method (e.g. adaptive clipping's `σ < 2σ_b` at the calibrated σ).
///
/// ```
/// use dp_optim::{make_private, Method, PrivacyTarget, Sgd};
/// let data = dp_data::load_bundled_mnist().unwrap();
/// let model = dp_core::models::mlp(&[784, 16, 10], &candle_core::Device::Cpu, 0).unwrap();
/// let target = PrivacyTarget { epsilon: 3.0, delta: 1e-5, epochs: 0.5, batch_size: 200.0 };
/// let mut trainer = make_private(model, Sgd::new(0.5), &data.train, target, Method::dp_sgd(1.0)).unwrap();
/// let report = trainer.train(&data.train, Some(&data.test)).unwrap();
/// assert_eq!(report.steps, 10); // ⌈0.5 / (200/4000)⌉
/// assert!(report.epsilon <= 3.0 && report.epsilon > 2.9);
/// ```
pub fn make_private<M: Model>(
    model: M,
    optimizer: impl BaseOptimizer + 'static,
    train: &Dataset,
    target: PrivacyTarget,
    method: Method,
) -> Result<PrivateTrainer<M>> {
    PrivateTrainer::with_epsilon(model, optimizer, target, method).build(train)
}

/// The provisional σ a [`Method`] is first built at: the σ of one Poisson-subsampled
/// Gaussian per step that spends the target, which is the final σ for every method whose
/// step costs one such Gaussian (DP-SGD, AUTO-S, Andrew et al.'s split, ...). The trainer's
/// calibration then sets the method's own σ from its
/// [`PrivacyMethod::calibration_multipliers`], so a method with extra queries or a noise
/// schedule ends at the σ its releases need.
pub(crate) fn resolve_method(
    method: &Method,
    target: &PrivacyTarget,
    config: &TrainerConfig,
    dataset_len: usize,
) -> Result<Box<dyn PrivacyMethod>> {
    target.validate()?;
    if !target.matches(config) {
        return Err(TrainError::InvalidConfig(
            "configure() changed the epochs, batch size, δ, ε or the calibration of a run \
             built from a PrivacyTarget: change the target instead"
                .into(),
        ));
    }
    if dataset_len == 0 {
        return Err(TrainError::InvalidConfig("empty training set".into()));
    }
    if target.batch_size > dataset_len as f64 {
        return Err(TrainError::BatchLargerThanDataset {
            batch_size: target.batch_size,
            dataset_len,
        });
    }
    let q = target.batch_size / dataset_len as f64;
    let steps = dp_accounting::calibration::steps_for_epochs(target.epochs, q)?;
    let sigma = dp_accounting::calibrate_noise_multiplier(
        target.epsilon,
        target.delta,
        q,
        steps,
        config.accountant,
    )?;
    let ctx = MethodContext {
        expected_batch_size: target.batch_size,
        steps_per_epoch: (1.0 / q).ceil().max(1.0) as u64,
    };
    method.build(sigma, &ctx)
}
