//! Clipping, noise, pruning and the loss landscape (Watson, Gan, Dantam, Mirzasoleiman,
//! Sarkar 2023, "Inference and Interference", arXiv 2311.06839).
//!
//! ```text
//! cargo run --release --example watson_clipping_pruning                             # bundled digits
//! cargo run --release --example watson_clipping_pruning -- --dataset mnist          # full MNIST
//! cargo run --release --example watson_clipping_pruning -- --dataset fashion-mnist \
//!     --mask-sources init,released,public                                           # + a mask from MNIST
//! ```
//!
//! Four experiments from one initialisation and one learning-rate protocol (SGD, momentum
//! 0.9, constant rate; B, C and the rate fixed before any run, not tuned on test data):
//!
//! 1. **Regimes**: SGD, clip-only, noise-only and DP-SGD (the noise-only run adds the σC of
//!    the DP run to the unclipped sum); train and test loss and accuracy per epoch, and at each
//!    epoch end the expected loss change of a plain step of size η split into its
//!    non-private, clipping-magnitude, clipping-direction and noise terms (algorithms.md
//!    §14.4, on a fixed probe batch; analysis only).
//! 2. **Switching**: non-private for the first k epochs then DP-SGD, and the reverse, for each
//!    k of `--switch-epochs`. Only the private steps are accounted, and every record of such a
//!    run reports ε = ∞: the released model is not DP. The JSON line also gives the ε of the
//!    private steps alone, under a key that says it is not a guarantee.
//! 3. **Landscapes** around every regime and pruned model: 1-D and 2-D filter-normalised
//!    slices (Li et al. 2018), their total variation and roughness R₁, random-direction
//!    sharpness, λ_max (power iteration) and Tr(H) (Hutchinson), on an f64 copy of the model
//!    and a fixed probe set of training examples. For a pruned model the directions, the
//!    Hessian and the trace are restricted to the active coordinates (the subspace it trains).
//! 4. **Pruning**: DP-SGD at the target ε with magnitude-pruning masks of each sparsity of
//!    `--sparsities` (of the weights; biases stay dense), from each source of
//!    `--mask-sources`: `init` (the initial weights, ranked per layer: data-independent),
//!    `released` (the weights a private run released after half the
//!    epochs, then re-training for the other half, σ calibrated so that the whole pipeline
//!    spends ε) and `public` (a model trained without privacy on the other dataset:
//!    FashionMNIST for MNIST runs, MNIST for FashionMNIST runs); trained weights are ranked
//!    globally (`--prune-scope`). Pruned coordinates get no
//!    gradient and no noise: the noise has d_active dimensions.
//!
//! Only the abstract of the paper could be consulted: its models, datasets and settings are
//! not known here, so the model is a ReLU MLP (784-256-256-10 by default; `--model cnn` for
//! the Tramèr & Boneh tanh CNN) and the claims checked are the abstract's: clipping costs more
//! than noise (noise-only recovers, clip-only does not), the late phase decides the result,
//! and heavy magnitude pruning improves DP-SGD's test accuracy.
//!
//! Writes `records.json`, `summary.csv` and plots into `--out` (default
//! `target/watson_clipping_pruning/`); prints one JSON line per configuration with the usual
//! keys plus `regime` and `sparsity`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::{Data, Loaded};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Parser, ValueEnum};
use dp_lab::accounting::{calibrate_noise_multiplier, AccountantKind};
use dp_lab::core::clipping::FlatClip;
use dp_lab::core::{
    clipped_gradient, models, CrossEntropy, GradOptions, GradientMask, Model, Prunable, PruneScope,
    Sequential,
};
use dp_lab::data::Dataset;
use dp_lab::metrics::plot::{
    line_plot, plot_slice_2d, plot_slices_1d, LinePlot, Series, SurfaceOptions,
};
use dp_lab::metrics::{
    filter_normalize, flatten_params, hutchinson_trace, linspace, loss_change_decomposition,
    max_eigenvalue, mean_sd, random_direction, slice_1d, slice_2d, tv_summary_1d, tv_summary_2d,
    BiasHandling, CoreModelSurface, HutchinsonConfig, LossChangeDecomposition, LossSurface,
    MetricsError, PowerIterationConfig, StepGradients, DEFAULT_HVP_EPS_SCALE,
};
use dp_lab::optim::{
    batch_tensors, BatchSize, Delta, Epochs, FixedClip, PrivateTrainer, Regime, Sgd, TrainerConfig,
    TrainingMask,
};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
enum Arch {
    /// ReLU MLP 784-256-256-10 (269,322 parameters).
    Mlp,
    /// The Tramèr & Boneh tanh CNN (26,010 parameters).
    Cnn,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
enum Source {
    Init,
    Released,
    Public,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
enum Experiment {
    Regimes,
    Switching,
    Pruning,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
enum ScopeArg {
    Auto,
    Global,
    PerLayer,
}

impl ScopeArg {
    fn for_source(self, source: Source) -> PruneScope {
        match (self, source) {
            (ScopeArg::Global, _) => PruneScope::Global,
            (ScopeArg::PerLayer, _) | (ScopeArg::Auto, Source::Init) => PruneScope::PerLayer,
            (ScopeArg::Auto, _) => PruneScope::Global,
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "Watson et al. 2023: regimes, switching, landscapes and pruning under DP")]
struct Args {
    #[arg(long, value_enum, default_value = "bundled")]
    dataset: Data,
    /// Directory with the dataset's standard files.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "mlp")]
    model: Arch,
    /// Epochs of every run.
    #[arg(long, default_value_t = 10)]
    epochs: u64,
    /// Expected (Poisson) batch size.
    #[arg(long, default_value_t = 256.0)]
    batch_size: f64,
    /// Clip bound C.
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Learning rate (SGD, momentum 0.9), the same for every run.
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// Target ε of the private runs (and of the σ every noised run uses).
    #[arg(long, default_value_t = 3.0)]
    epsilon: f64,
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// Which experiments to run (landscapes go with regimes and pruning).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "regimes,switching,pruning"
    )]
    experiments: Vec<Experiment>,
    /// Switching points k (epochs).
    #[arg(long, value_delimiter = ',', default_value = "2,5,8")]
    switch_epochs: Vec<u64>,
    /// Sparsities of the pruning experiment.
    #[arg(long, value_delimiter = ',', default_value = "0,0.5,0.8,0.9,0.95,0.99")]
    sparsities: Vec<f64>,
    /// Mask sources of the pruning experiment.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "init,released"
    )]
    mask_sources: Vec<Source>,
    /// Magnitude ranking: `auto` ranks per layer for `init` masks (initial magnitudes follow
    /// each layer's fan-in, so a global ranking at initialisation removes whole layers) and
    /// globally for masks from trained weights.
    #[arg(long, value_enum, default_value = "auto")]
    prune_scope: ScopeArg,
    /// Directory of the public dataset for `public` masks (default: its usual place).
    #[arg(long)]
    public_data_dir: Option<PathBuf>,
    /// Training examples the landscapes and the decomposition are measured on.
    #[arg(long, default_value_t = 500)]
    probe: usize,
    /// Training examples the per-epoch train loss and accuracy are measured on.
    #[arg(long, default_value_t = 10_000)]
    train_eval: usize,
    /// Points per axis of the 2-D slice (1-D slices get 2·grid − 1).
    #[arg(long, default_value_t = 13)]
    grid: usize,
    /// Random directions (1-D slices and sharpness), K ≥ 3 per §14.1.
    #[arg(long, default_value_t = 3)]
    directions: usize,
    /// Hutchinson probes for Tr(H) (landscapes and the decomposition's noise term).
    #[arg(long, default_value_t = 30)]
    hutchinson_probes: usize,
    /// Power iterations for λ_max.
    #[arg(long, default_value_t = 20)]
    power_iters: usize,
    /// Skip the landscapes (for a quick look at the training curves).
    #[arg(long)]
    no_landscapes: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "target/watson_clipping_pruning")]
    out: PathBuf,
}

fn build(arch: Arch, seed: u64) -> Result<Sequential> {
    Ok(match arch {
        Arch::Mlp => models::mlp(&[784, 256, 256, 10], &Device::Cpu, seed)?,
        Arch::Cnn => models::mnist_cnn(&Device::Cpu, seed)?,
    })
}

/// ε for JSON: a number when finite, `"inf"` otherwise (never `null`, never a finite stand-in).
fn eps_json(e: f64) -> Value {
    if e.is_finite() {
        json!(e)
    } else {
        json!("inf")
    }
}

#[derive(Serialize, Clone)]
struct EpochRow {
    epoch: u64,
    train_loss: f64,
    train_accuracy: f64,
    test_loss: f64,
    test_accuracy: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    decomposition: Option<LossChangeDecomposition>,
}

#[derive(Serialize)]
struct Landscape {
    slice_1d_tv: f64,
    slice_1d_tv_sd: f64,
    slice_1d_roughness: f64,
    slice_1d_roughness_sd: f64,
    slice_2d_tv_isotropic: f64,
    slice_2d_tv_normalized: Option<f64>,
    sharpness: Vec<(f64, f64)>,
    lambda_max: f64,
    hessian_trace: f64,
    hessian_trace_se: f64,
    center_loss: f64,
    #[serde(skip)]
    slices: Vec<dp_lab::metrics::Slice1d>,
    #[serde(skip)]
    slice_2d: Option<dp_lab::metrics::Slice2d>,
}

#[derive(Serialize)]
struct RunRow {
    name: String,
    regime: String,
    sparsity: f64,
    mask_source: String,
    epsilon: f64,
    epochs: Vec<EpochRow>,
    mean_fraction_clipped: f64,
    steps: u64,
    seconds: f64,
    noise_multiplier: f64,
    num_active: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    landscape: Option<Landscape>,
    #[serde(skip)]
    json: Value,
}

/// What every run needs from the command line and the data.
struct Ctx<'a> {
    args: &'a Args,
    train: &'a Dataset,
    test: &'a Dataset,
    train_eval: Dataset,
    probe: (Tensor, Tensor),
    sigma: f64,
    label: &'static str,
    dev: Device,
}

impl Ctx<'_> {
    fn config(&self, epochs: u64) -> TrainerConfig {
        TrainerConfig::new(
            Epochs(epochs as f64),
            BatchSize(self.args.batch_size),
            Delta(self.args.delta),
        )
        .with_seed(self.args.seed)
        .with_max_physical_batch(512)
    }

    fn trainer(
        &self,
        model: Sequential,
        cfg: TrainerConfig,
        sigma: f64,
        mask: Option<TrainingMask>,
    ) -> Result<PrivateTrainer<Sequential>> {
        let opt = Sgd::new(self.args.lr).with_momentum(0.9);
        let method = Box::new(FixedClip::new(self.args.clip, sigma)?);
        let mut b = PrivateTrainer::builder(model, Box::new(opt), method, cfg);
        if let Some(m) = mask {
            b = b.mask(m);
        }
        Ok(b.build(self.train)?)
    }

    /// Trains epoch by epoch, measuring train (on a fixed subset) and test loss and accuracy
    /// after each, and — when `decompose` — the loss-change decomposition.
    fn train(
        &self,
        t: &mut PrivateTrainer<Sequential>,
        decompose: bool,
        rows: &mut Vec<EpochRow>,
    ) -> Result<()> {
        let per_epoch = t.steps_per_epoch();
        let start_epoch = rows.len() as u64;
        while t.steps_taken() < t.total_steps() {
            let mut stopped = false;
            for _ in 0..per_epoch {
                if t.steps_taken() >= t.total_steps() {
                    break;
                }
                if t.step(self.train, &self.dev)?.is_none() {
                    stopped = true;
                    break;
                }
            }
            let (train_loss, train_accuracy) = t.evaluate(&self.train_eval, &self.dev)?;
            let (test_loss, test_accuracy) = t.evaluate(self.test, &self.dev)?;
            let epoch = start_epoch + t.steps_taken().div_ceil(per_epoch);
            let decomposition = if decompose {
                Some(self.decompose(t)?)
            } else {
                None
            };
            rows.push(EpochRow {
                epoch,
                train_loss,
                train_accuracy,
                test_loss,
                test_accuracy,
                decomposition,
            });
            if stopped {
                break;
            }
        }
        Ok(())
    }

    /// §14.4 at the current weights: g_D over the probe set, g_B and ḡ_B over its first B
    /// examples, a plain step of size η with the run's noise (σC/B, or 0).
    fn decompose(&self, t: &PrivateTrainer<Sequential>) -> Result<LossChangeDecomposition> {
        let regime = t
            .config()
            .regime_at(t.steps_taken().saturating_sub(1), t.steps_per_epoch());
        let mut m = f64_copy(self.args.model, t.model())?;
        let b = (self.args.batch_size as usize).min(self.probe.0.dim(0)?);
        let (xb, yb) = (self.probe.0.narrow(0, 0, b)?, self.probe.1.narrow(0, 0, b)?);
        let opts = GradOptions {
            track_unclipped_sum: true,
            mask: t
                .mask()
                .map(|m| f64_mask(m.mask(), &t.model().param_tensors()))
                .transpose()?,
            ..GradOptions::default()
        };
        let mut clip = FlatClip::new(self.args.clip)?;
        let out = clipped_gradient(&mut m, &xb, &yb, &CrossEntropy, &mut clip, &opts)?;
        let scale = 1.0 / self.args.batch_size;
        let unclipped = out.unclipped_sum.context("unclipped sum")?;
        let g_b: Vec<f64> = flatten_params(&unclipped)?
            .iter()
            .map(|v| v * scale)
            .collect();
        let clipped = if regime.clips() {
            flatten_params(&out.sum)?
        } else {
            flatten_params(&unclipped)?
        };
        let g_c: Vec<f64> = clipped.iter().map(|v| v * scale).collect();
        let noise_std = if regime.adds_noise() {
            self.sigma * self.args.clip / self.args.batch_size
        } else {
            0.0
        };
        let mut surface =
            CoreModelSurface::new(&mut m, self.probe.0.clone(), self.probe.1.clone())?;
        let center = surface.parameters();
        let g_d = flatten_params(&surface.grad_at(&center)?)?;
        let trace = hutchinson_trace(
            &mut surface,
            &center,
            &HutchinsonConfig {
                max_probes: self.args.hutchinson_probes,
                min_probes: self.args.hutchinson_probes,
                seed: self.args.seed,
                ..HutchinsonConfig::default()
            },
        )?;
        Ok(loss_change_decomposition(
            &mut surface,
            &center,
            StepGradients {
                full: &g_d,
                batch: &g_b,
                clipped: &g_c,
            },
            self.args.lr,
            noise_std,
            trace.trace,
            DEFAULT_HVP_EPS_SCALE,
        )?)
    }

    fn finish(
        &self,
        name: String,
        t: &PrivateTrainer<Sequential>,
        rows: Vec<EpochRow>,
        (sparsity, source): (f64, &str),
        started: Instant,
        extra: Value,
    ) -> Result<RunRow> {
        let regime = t.config().non_private_regime().unwrap_or(Regime::Private);
        let epsilon = t.epsilon()?;
        let records = t.records();
        let fc =
            records.iter().map(|r| r.fraction_clipped).sum::<f64>() / records.len().max(1) as f64;
        let last = rows.last().cloned().context("no epoch")?;
        let num_active = t
            .mask()
            .map_or(t.model().num_params(), |m| m.mask().num_active());
        let mut j = json!({
            "example": "watson_clipping_pruning",
            "dataset": self.label,
            "model": format!("{:?}", self.args.model).to_lowercase(),
            "configuration": name,
            "regime": regime.name(),
            "sparsity": sparsity,
            "mask_source": source,
            "test_accuracy": last.test_accuracy,
            "test_loss": last.test_loss,
            "train_accuracy": last.train_accuracy,
            "train_loss": last.train_loss,
            "epsilon": eps_json(epsilon),
            "delta": self.args.delta,
            "guarantee": t.guarantee(),
            "steps": t.steps_taken(),
            "noise_multiplier": t.method().noise_multiplier(),
            "clip_norm": self.args.clip,
            "batch_size": self.args.batch_size,
            "learning_rate": self.args.lr,
            "non_private_mean_fraction_clipped": fc,
            "num_active_params": num_active,
            "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        });
        if let (Value::Object(o), Value::Object(e)) = (&mut j, extra) {
            o.extend(e);
        }
        Ok(RunRow {
            name,
            regime: regime.name().into(),
            sparsity,
            mask_source: source.into(),
            epsilon,
            epochs: rows,
            mean_fraction_clipped: fc,
            steps: t.steps_taken(),
            seconds: started.elapsed().as_secs_f64(),
            noise_multiplier: t.method().noise_multiplier(),
            num_active,
            landscape: None,
            json: j,
        })
    }
}

/// A copy of `model` (same architecture) with f64 parameters: the analysis precision.
fn f64_copy(arch: Arch, model: &Sequential) -> Result<Sequential> {
    let mut m = build(arch, 0)?;
    let p = model
        .param_tensors()
        .iter()
        .map(|t| t.to_dtype(DType::F64))
        .collect::<candle_core::Result<Vec<_>>>()?;
    m.set_param_tensors(&p)?;
    Ok(m)
}

/// The mask with f64 0/1 tensors, for the f64 analysis copy.
fn f64_mask(mask: &GradientMask, params: &[Tensor]) -> Result<GradientMask> {
    let p = params
        .iter()
        .map(|t| t.to_dtype(DType::F64))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(GradientMask::from_keep(&p, mask.keep_flags()?)?)
}

/// A loss surface restricted to a mask's active coordinates: `L(m ⊙ θ)`, whose gradient
/// and Hessian are those of the subspace a pruned model trains.
struct Masked<'a, S> {
    inner: S,
    mask: &'a GradientMask,
}

impl<S: LossSurface> LossSurface for Masked<'_, S> {
    fn parameters(&self) -> Vec<Tensor> {
        self.inner.parameters()
    }
    fn loss_at(&mut self, p: &[Tensor]) -> std::result::Result<f64, MetricsError> {
        let p = self
            .mask
            .apply(p)
            .map_err(|e| MetricsError::InvalidArgument(e.to_string()))?;
        self.inner.loss_at(&p)
    }
    fn grad_at(&mut self, p: &[Tensor]) -> std::result::Result<Vec<Tensor>, MetricsError> {
        let p = self
            .mask
            .apply(p)
            .map_err(|e| MetricsError::InvalidArgument(e.to_string()))?;
        let g = self.inner.grad_at(&p)?;
        self.mask
            .apply(&g)
            .map_err(|e| MetricsError::InvalidArgument(e.to_string()))
    }
}

/// A filter-normalised random direction, restricted to the mask's active coordinates
/// before normalising (so that its filters have the lengths of the model's active ones).
fn direction(center: &[Tensor], seed: u64, mask: Option<&GradientMask>) -> Result<Vec<Tensor>> {
    let d = random_direction(center, seed)?;
    let d = match mask {
        Some(m) => m.apply(&d)?,
        None => d,
    };
    Ok(filter_normalize(&d, center, BiasHandling::Zero)?)
}

fn landscape(ctx: &Ctx, model: &Sequential, mask: Option<&GradientMask>) -> Result<Landscape> {
    let args = ctx.args;
    let mut m = f64_copy(args.model, model)?;
    let mask = mask
        .map(|k| f64_mask(k, &model.param_tensors()))
        .transpose()?;
    let inner = CoreModelSurface::new(&mut m, ctx.probe.0.clone(), ctx.probe.1.clone())?;
    let dense = GradientMask::from_keep(&inner.parameters(), vec![None; inner.parameters().len()])?;
    let mut s = Masked {
        inner,
        mask: mask.as_ref().unwrap_or(&dense),
    };
    let center = s.parameters();
    let center_loss = s.loss_at(&center)?;
    let alphas = linspace(-1.0, 1.0, 2 * args.grid - 1);
    let mut slices = Vec::new();
    let (mut tvs, mut rough) = (Vec::new(), Vec::new());
    let radii = [0.05, 0.1, 0.25];
    let mut sharp = vec![Vec::new(); radii.len()];
    for k in 0..args.directions {
        let d = direction(&center, args.seed + 100 + k as u64, mask.as_ref())?;
        let sl = slice_1d(&mut s, &center, &d, &alphas)?;
        let tv = tv_summary_1d(&sl.losses)?;
        tvs.push(tv.tv);
        rough.push(tv.roughness);
        let sr = slice_1d(&mut s, &center, &d, &radii)?;
        for (i, l) in sr.losses.iter().enumerate() {
            sharp[i].push(l - center_loss);
        }
        slices.push(sl);
    }
    let grid = linspace(-1.0, 1.0, args.grid);
    let dx = direction(&center, args.seed + 1, mask.as_ref())?;
    let dy = direction(&center, args.seed + 2, mask.as_ref())?;
    let s2 = slice_2d(&mut s, &center, &dx, &dy, &grid, &grid)?;
    let tv2 = tv_summary_2d(&s2.losses, grid[1] - grid[0])?;
    let lam = max_eigenvalue(
        &mut s,
        &center,
        &PowerIterationConfig {
            max_iter: args.power_iters,
            seed: args.seed,
            ..PowerIterationConfig::default()
        },
    )?;
    let tr = hutchinson_trace(
        &mut s,
        &center,
        &HutchinsonConfig {
            max_probes: args.hutchinson_probes,
            min_probes: args.hutchinson_probes,
            seed: args.seed,
            ..HutchinsonConfig::default()
        },
    )?;
    let (t1, r1) = (mean_sd(&tvs)?, mean_sd(&rough)?);
    Ok(Landscape {
        slice_1d_tv: t1.mean,
        slice_1d_tv_sd: t1.sd,
        slice_1d_roughness: r1.mean,
        slice_1d_roughness_sd: r1.sd,
        slice_2d_tv_isotropic: tv2.tv_isotropic,
        slice_2d_tv_normalized: if tv2.range > 0.0 {
            Some(tv2.tv_isotropic / tv2.range)
        } else {
            None
        },
        sharpness: radii
            .iter()
            .zip(&sharp)
            .map(|(r, v)| (*r, v.iter().sum::<f64>() / v.len().max(1) as f64))
            .collect(),
        lambda_max: lam.eigenvalue,
        hessian_trace: tr.trace,
        hessian_trace_se: tr.std_error,
        center_loss,
        slices,
        slice_2d: Some(s2),
    })
}

fn attach_landscape(
    ctx: &Ctx,
    row: &mut RunRow,
    model: &Sequential,
    mask: Option<&GradientMask>,
) -> Result<()> {
    if ctx.args.no_landscapes {
        return Ok(());
    }
    let t0 = Instant::now();
    let l = landscape(ctx, model, mask)?;
    eprintln!(
        "   landscape: λ_max {:.3}  Tr(H) {:.1}  TV₁ {:.3}  R₁ {:.3}  S_0.1 {:.4}  ({:.0} s)",
        l.lambda_max,
        l.hessian_trace,
        l.slice_1d_tv,
        l.slice_1d_roughness,
        l.sharpness[1].1,
        t0.elapsed().as_secs_f64()
    );
    if let Value::Object(o) = &mut row.json {
        o.insert("landscape".into(), serde_json::to_value(&l)?);
    }
    row.landscape = Some(l);
    Ok(())
}

fn log_run(row: &RunRow) {
    let last = row.epochs.last();
    eprintln!(
        "== {:<34} test acc {:6.2}%  train loss {:.4}  ε {}  ({:.0} s)",
        row.name,
        100.0 * last.map_or(f64::NAN, |e| e.test_accuracy),
        last.map_or(f64::NAN, |e| e.train_loss),
        if row.epsilon.is_finite() {
            format!("{:.3}", row.epsilon)
        } else {
            "∞ (not DP)".into()
        },
        row.seconds
    );
}

fn public_dataset(args: &Args) -> Result<Data> {
    Ok(match args.dataset {
        Data::Mnist | Data::Bundled => Data::FashionMnist,
        Data::FashionMnist => Data::Mnist,
    })
}

fn main() -> Result<()> {
    dp_lab::allocator::keep_freed_pages();
    dp_lab::core::configure_cpu_threads();
    let args = Args::parse();
    if args.epochs < 2 {
        bail!("--epochs must be ≥ 2 (the released-mask pipeline trains two halves)");
    }
    if args.probe == 0 || args.grid < 3 || args.directions == 0 {
        bail!("--probe must be ≥ 1, --grid ≥ 3 and --directions ≥ 1");
    }
    // Checked before any run, not when the experiment that uses them starts.
    common::positive("--lr", args.lr)?;
    for &s in &args.sparsities {
        if !(0.0..=1.0).contains(&s) {
            bail!("--sparsities: {s} is not in [0, 1]");
        }
    }
    for &k in &args.switch_epochs {
        if k == 0 || k >= args.epochs {
            bail!("--switch-epochs: {k} must lie in 1..{}", args.epochs);
        }
    }
    let dev = Device::Cpu;
    let Loaded { data, label, .. } = args.dataset.load_reported(args.data_dir.as_deref())?;
    std::fs::create_dir_all(&args.out)?;
    let n = data.train.len();
    let probe_idx: Vec<usize> = (0..args.probe.min(n)).collect();
    let (px, py) = batch_tensors(&data.train, &probe_idx, &dev)?;
    let probe = (px.to_dtype(DType::F64)?, py);
    let train_eval = data
        .train
        .subset(&(0..args.train_eval.min(n)).collect::<Vec<_>>());
    let q = args.batch_size / n as f64;
    let steps = dp_lab::accounting::calibration::steps_for_epochs(args.epochs as f64, q)?;
    let sigma =
        calibrate_noise_multiplier(args.epsilon, args.delta, q, steps, AccountantKind::Rdp)?;
    eprintln!(
        "q = {q:.5}, {steps} steps, σ = {sigma:.4} for (ε, δ) = ({}, {}), C = {}, lr = {}, B = {}",
        args.epsilon, args.delta, args.clip, args.lr, args.batch_size
    );
    let ctx = Ctx {
        args: &args,
        train: &data.train,
        test: &data.test,
        train_eval,
        probe,
        sigma,
        label,
        dev: dev.clone(),
    };
    let mut runs: Vec<RunRow> = Vec::new();

    // 1. Regimes (+ 3. their landscapes).
    let regimes = [
        Regime::NonPrivate,
        Regime::ClipOnly,
        Regime::NoiseOnly,
        Regime::Private,
    ];
    let run_regimes = args.experiments.contains(&Experiment::Regimes);
    for regime in regimes.into_iter().filter(|_| run_regimes) {
        let started = Instant::now();
        let mut cfg = ctx.config(args.epochs).with_regime(regime);
        if regime.is_private() {
            cfg = cfg.with_budget(args.epsilon);
        }
        let mut t = ctx.trainer(build(args.model, args.seed)?, cfg, sigma, None)?;
        let mut rows = Vec::new();
        ctx.train(&mut t, true, &mut rows)?;
        let mut row = ctx.finish(
            regime.name().into(),
            &t,
            rows,
            (0.0, "none"),
            started,
            json!({"experiment": "regimes"}),
        )?;
        log_run(&row);
        attach_landscape(&ctx, &mut row, t.model(), None)?;
        runs.push(row);
    }

    // 2. Switching.
    let switch_epochs = if args.experiments.contains(&Experiment::Switching) {
        args.switch_epochs.clone()
    } else {
        Vec::new()
    };
    for &k in &switch_epochs {
        for (first, then) in [
            (Regime::NonPrivate, Regime::Private),
            (Regime::Private, Regime::NonPrivate),
        ] {
            let started = Instant::now();
            let cfg = ctx
                .config(args.epochs)
                .with_regime(first)
                .with_regime_from_epoch(k, then);
            let mut t = ctx.trainer(build(args.model, args.seed)?, cfg, sigma, None)?;
            let mut rows = Vec::new();
            ctx.train(&mut t, false, &mut rows)?;
            let name = format!("{}→{} at epoch {k}", first.name(), then.name());
            let extra = json!({
                "experiment": "switching",
                "first": first.name(),
                "then": then.name(),
                "switch_epoch": k,
                "epsilon_of_private_steps_only_not_a_guarantee": t.private_steps_epsilon()?,
            });
            let row = ctx.finish(name, &t, rows, (0.0, "none"), started, extra)?;
            log_run(&row);
            runs.push(row);
        }
    }

    // 4. Pruning (+ 3. landscapes of the pruned DP models).
    let sources = if args.experiments.contains(&Experiment::Pruning) {
        args.mask_sources.clone()
    } else {
        Vec::new()
    };
    let public_model = if sources.contains(&Source::Public) {
        let pd = public_dataset(&args)?;
        let public = pd
            .load(args.public_data_dir.as_deref())
            .context("the public dataset for `public` masks")?;
        eprintln!(
            "public model: SGD on {} ({} examples)",
            public.label,
            public.data.train.len()
        );
        let cfg = TrainerConfig::new(
            Epochs(args.epochs as f64),
            BatchSize(args.batch_size),
            Delta(args.delta),
        )
        .with_seed(args.seed)
        .with_regime(Regime::NonPrivate);
        let mut t = PrivateTrainer::new(
            build(args.model, args.seed)?,
            Box::new(Sgd::new(args.lr).with_momentum(0.9)),
            Box::new(FixedClip::new(args.clip, sigma)?),
            cfg,
            &public.data.train,
        )?;
        t.train(&public.data.train, None)?;
        Some((t.into_model(), public.label))
    } else {
        None
    };
    for &source in &sources {
        for &sparsity in &args.sparsities {
            let started = Instant::now();
            let mut rows = Vec::new();
            let scope = args.prune_scope.for_source(source);
            let (t, src_name) = match source {
                Source::Init | Source::Public => {
                    let model = build(args.model, args.seed)?;
                    let (mask, name) = if source == Source::Init {
                        (
                            TrainingMask::at_initialisation(
                                &model,
                                sparsity,
                                scope,
                                Prunable::Weights,
                            )?,
                            "init".to_string(),
                        )
                    } else {
                        let (pm, pl) = public_model.as_ref().context("public model")?;
                        (
                            TrainingMask::from_public_model(
                                pm,
                                *pl,
                                sparsity,
                                scope,
                                Prunable::Weights,
                            )?,
                            format!("public:{pl}"),
                        )
                    };
                    let cfg = ctx.config(args.epochs).with_budget(args.epsilon);
                    let mut t = ctx.trainer(model, cfg, sigma, Some(mask))?;
                    ctx.train(&mut t, false, &mut rows)?;
                    (t, name)
                }
                Source::Released => {
                    let half = args.epochs / 2;
                    // Phase 1 spends part of the budget at the σ of the whole pipeline ...
                    let cfg = ctx.config(half).with_budget(args.epsilon);
                    let mut first = ctx.trainer(build(args.model, args.seed)?, cfg, sigma, None)?;
                    ctx.train(&mut first, false, &mut rows)?;
                    let mask =
                        TrainingMask::from_released(&first, sparsity, scope, Prunable::Weights)?;
                    // ... and phase 2 is calibrated so that both together spend exactly ε.
                    let cfg = ctx
                        .config(args.epochs - half)
                        .with_budget(args.epsilon)
                        .calibrate_noise_from_budget();
                    let mut second = ctx.trainer(first.into_model(), cfg, sigma, Some(mask))?;
                    ctx.train(&mut second, false, &mut rows)?;
                    (second, "released".to_string())
                }
            };
            let name = format!("dp_sgd sparsity {sparsity} mask {src_name}");
            let scope_name = match scope {
                PruneScope::Global => "global",
                PruneScope::PerLayer => "per_layer",
            };
            let extra = json!({"experiment": "pruning", "pruning_scope": scope_name, "prunable": "weights"});
            let mut row = ctx.finish(name, &t, rows, (sparsity, &src_name), started, extra)?;
            log_run(&row);
            if source == Source::Init {
                let mask = t.mask().map(|m| m.mask().clone());
                attach_landscape(&ctx, &mut row, t.model(), mask.as_ref())?;
            }
            runs.push(row);
        }
    }

    write_outputs(&ctx, &runs)?;
    for r in &runs {
        println!("{}", r.json);
    }
    Ok(())
}

fn write_outputs(ctx: &Ctx, runs: &[RunRow]) -> Result<()> {
    let args = ctx.args;
    let out = &args.out;
    std::fs::write(out.join("records.json"), serde_json::to_vec(runs)?)?;
    let mut csv = String::from(
        "configuration,regime,sparsity,mask_source,test_accuracy,train_loss,epsilon,mean_fraction_clipped,num_active,lambda_max,hessian_trace,slice_1d_tv,slice_1d_roughness,sharpness_0.1\n",
    );
    for r in runs {
        let last = r.epochs.last();
        let l = r.landscape.as_ref();
        csv.push_str(&format!(
            "\"{}\",{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.name,
            r.regime,
            r.sparsity,
            r.mask_source,
            last.map_or(f64::NAN, |e| e.test_accuracy),
            last.map_or(f64::NAN, |e| e.train_loss),
            if r.epsilon.is_finite() {
                r.epsilon.to_string()
            } else {
                "inf".into()
            },
            r.mean_fraction_clipped,
            r.num_active,
            l.map_or(f64::NAN, |l| l.lambda_max),
            l.map_or(f64::NAN, |l| l.hessian_trace),
            l.map_or(f64::NAN, |l| l.slice_1d_tv),
            l.map_or(f64::NAN, |l| l.slice_1d_roughness),
            l.map_or(f64::NAN, |l| l.sharpness[1].1),
        ));
    }
    std::fs::write(out.join("summary.csv"), csv)?;
    let title = |w: &str| {
        format!(
            "{w} ({}, σ = {:.3}, ε = {})",
            ctx.label, ctx.sigma, args.epsilon
        )
    };
    let epochs = |r: &RunRow, f: &dyn Fn(&EpochRow) -> f64| -> Series {
        Series::new(
            r.name.clone(),
            r.epochs.iter().map(|e| e.epoch as f64).collect(),
            r.epochs.iter().map(f).collect(),
        )
    };
    let regimes: Vec<&RunRow> = runs
        .iter()
        .filter(|r| r.json["experiment"] == "regimes")
        .collect();
    let mut acc = LinePlot::new(title("regimes: test accuracy"), "epoch", "test accuracy");
    let mut loss = LinePlot::new(title("regimes: train loss"), "epoch", "train loss");
    for r in &regimes {
        acc = acc.with_series(epochs(r, &|e| e.test_accuracy));
        loss = loss.with_series(epochs(r, &|e| e.train_loss));
    }
    line_plot(out.join("regimes_test_accuracy.png"), &acc)?;
    line_plot(out.join("regimes_train_loss.png"), &loss)?;
    if let Some(dp) = regimes.iter().find(|r| r.regime == "private") {
        let mut p = LinePlot::new(
            title("DP-SGD: expected loss change of one step (§14.4)"),
            "epoch",
            "loss change",
        );
        type Term = fn(&LossChangeDecomposition) -> f64;
        let terms: [(&str, Term); 4] = [
            ("non-private", |d| d.non_private),
            ("clip: magnitude", |d| d.clip_magnitude),
            ("clip: direction", |d| d.clip_direction),
            ("noise", |d| d.noise),
        ];
        for (name, f) in terms {
            p = p.with_series(Series::new(
                name,
                dp.epochs.iter().map(|e| e.epoch as f64).collect(),
                dp.epochs
                    .iter()
                    .map(|e| e.decomposition.as_ref().map_or(f64::NAN, f))
                    .collect(),
            ));
        }
        line_plot(out.join("dp_sgd_loss_change.png"), &p)?;
    }
    let mut sw = LinePlot::new(title("switching: test accuracy"), "epoch", "test accuracy");
    for r in runs.iter().filter(|r| {
        r.json["experiment"] == "switching"
            || r.json["experiment"] == "regimes"
                && (r.regime == "private" || r.regime == "non_private")
    }) {
        sw = sw.with_series(epochs(r, &|e| e.test_accuracy));
    }
    line_plot(out.join("switching_test_accuracy.png"), &sw)?;
    let mut pr = LinePlot::new(
        title("pruning: DP-SGD test accuracy"),
        "sparsity",
        "test accuracy",
    );
    let mut sources: Vec<&str> = runs
        .iter()
        .filter(|r| r.json["experiment"] == "pruning")
        .map(|r| r.mask_source.as_str())
        .collect();
    sources.dedup();
    for s in sources {
        let rs: Vec<&RunRow> = runs
            .iter()
            .filter(|r| r.json["experiment"] == "pruning" && r.mask_source == s)
            .collect();
        pr = pr.with_series(Series::new(
            format!("mask {s}"),
            rs.iter().map(|r| r.sparsity).collect(),
            rs.iter()
                .map(|r| r.epochs.last().map_or(f64::NAN, |e| e.test_accuracy))
                .collect(),
        ));
    }
    line_plot(out.join("pruning_test_accuracy.png"), &pr)?;
    // The landscape metrics and the clipped fraction against sparsity (init masks, which
    // are the ones whose landscapes are measured).
    let pruned: Vec<&RunRow> = runs
        .iter()
        .filter(|r| r.json["experiment"] == "pruning" && r.landscape.is_some())
        .collect();
    if !pruned.is_empty() {
        type Metric = fn(&RunRow) -> f64;
        let metrics: [(&str, &str, Metric); 4] = [
            ("lambda_max", "λ_max", |r| {
                r.landscape.as_ref().map_or(f64::NAN, |l| l.lambda_max)
            }),
            ("hessian_trace", "Tr(H)", |r| {
                r.landscape.as_ref().map_or(f64::NAN, |l| l.hessian_trace)
            }),
            ("slice_tv", "TV₁ of the 1-D slices", |r| {
                r.landscape.as_ref().map_or(f64::NAN, |l| l.slice_1d_tv)
            }),
            ("fraction_clipped", "mean fraction clipped", |r| {
                r.mean_fraction_clipped
            }),
        ];
        for (file, what, f) in metrics {
            let p = LinePlot::new(title(&format!("pruning: {what}")), "sparsity", what)
                .with_series(Series::new(
                    "DP-SGD, init mask",
                    pruned.iter().map(|r| r.sparsity).collect(),
                    pruned.iter().map(|r| f(r)).collect(),
                ));
            line_plot(out.join(format!("pruning_{file}.png")), &p)?;
        }
    }
    let with_l: Vec<&RunRow> = runs.iter().filter(|r| r.landscape.is_some()).collect();
    if !with_l.is_empty() {
        let named: Vec<(String, &dp_lab::metrics::Slice1d)> = regimes
            .iter()
            .filter_map(|r| r.landscape.as_ref().map(|l| (r.name.clone(), &l.slices[0])))
            .collect();
        let refs: Vec<(&str, &dp_lab::metrics::Slice1d)> =
            named.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        plot_slices_1d(
            out.join("regimes_slices_1d.png"),
            &title("1-D slices (direction 0)"),
            &refs,
        )?;
        for (i, r) in with_l.iter().enumerate() {
            if let Some(s2) = r.landscape.as_ref().and_then(|l| l.slice_2d.as_ref()) {
                let opts = SurfaceOptions {
                    title: format!("{} — 2-D slice", r.name),
                    ..SurfaceOptions::default()
                };
                plot_slice_2d(out.join(format!("landscape_2d_{i:02}.png")), s2, &opts)?;
            }
        }
    }
    eprintln!(
        "wrote records.json, summary.csv and plots into {}",
        out.display()
    );
    Ok(())
}
