//! Loss landscapes of a non-private and a DP-SGD model trained from the same start.
//!
//!   cargo run --release --example loss_landscape -- --model mlp --epochs 10 --epsilon 3
//!
//! Trains the same architecture twice on the bundled MNIST digits (4,000 train / 1,000 test,
//! normalised), from the same initialisation and for the same number of steps: once with
//! plain minibatch SGD, once with DP-SGD (Poisson sampling at q = B/N, flat clipping at C,
//! Gaussian noise calibrated with the RDP accountant to the target (ε, δ), sum divided by
//! the expected batch size). Then it measures both solutions the same way (dp-metrics,
//! algorithms.md §14) on a fixed probe set of training examples:
//!
//! * a 2-D filter-normalised landscape (Li et al. 2018) and K 1-D slices, with their total
//!   variation and roughness R₁ (1 = unimodal, > 1 = spurious bumps),
//! * random-direction sharpness at radius ρ, λ_max of the Hessian by power iteration and its
//!   trace by Hutchinson's estimator (Hessian-vector products by differences of gradients),
//! * linear CKA between the two models' penultimate-layer activations on the test set, and
//!   the loss along the straight line between the two solutions with its barrier height.
//!
//! What to read off: the centre loss and test accuracy say how far DP-SGD got; λ_max, the
//! trace and S_ρ say whether it stopped in a sharper or a flatter region than SGD (the noise
//! and the clipping bias change both the path and the end point); roughness > 1 would show
//! a rugged landscape; CKA < 1 says the hidden representation itself differs; a positive
//! barrier says the two solutions are not linearly connected.
//!
//! Run time on 2 CPU cores: about 10 s with the default MLP; about 5 minutes with
//! `--model cnn --analysis-dtype f32`, where about 900 loss and up to 400 gradient
//! evaluations per model on the probe set dominate (lower `--grid`, `--directions` or `--hutchinson-probes` for a
//! quicker look).
//!
//! Files go to `--out` (default `target/loss_landscape/`): CSV and JSON of every grid, slice
//! and interpolation, PNG heatmaps with contours of both landscapes, a 1-D slice comparison,
//! the interpolation curve, the training loss, and `summary.json`. Progress goes to stderr;
//! stdout gets one JSON line per model, one with CKA and the barrier, and one listing the
//! plots. `--seed` fixes everything (initialisation, sampling, noise, directions, probes).
//!
//! These measurements use the private training data without noise: they are analysis, not
//! part of the released model, and must not feed back into training (see dp-metrics' docs).

// Training allocates and frees large activation buffers every step; glibc's allocator
// returns them to the OS each time (mmap/munmap + page faults, ~20% of a CNN step here).
// mimalloc keeps them. Library users choose their own allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Parser, ValueEnum};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;

use dp_lab::accounting::{
    calibrate_noise_multiplier, steps_for_epochs, Accountant, AccountantKind, DpEvent,
    RdpAccountant,
};
use dp_lab::core::clipping::FlatClip;
use dp_lab::core::{models, CrossEntropy, GaussianNoise, GradOptions, Model, Sequential};
use dp_lab::data::{load_bundled_mnist, Dataset, Normalize, PoissonSampler, ShuffledSampler};
use dp_lab::metrics::plot::{
    line_plot, plot_slice_2d, plot_slices_1d, write_json, write_series_csv, write_slice_2d_csv,
    LinePlot, Series, SurfaceOptions, SurfaceStyle,
};
use dp_lab::metrics::{
    hutchinson_trace, interpolate, layer_activations, linear_cka, linspace, max_eigenvalue,
    random_direction_sharpness, random_slice_1d, random_slice_2d, summarize_slices_1d,
    tv_summary_2d, BiasHandling, CoreModelSurface, EigenEstimate, HutchinsonConfig, Interpolation,
    Kappa, LossSurface, PowerIterationConfig, SharpnessConfig, SharpnessReport, Slice1d, Slice2d,
    SliceSummary1d, TraceEstimate, TvSummary2d,
};
use dp_lab::optim::{batch_tensors, evaluate, take_step, Regime, Sgd, StepEnv, StepPlan};

// Seed offsets, so that every random stream of the run derives from `--seed` alone and no two
// streams coincide.
const SAMPLER_SEED: u64 = 0x5A3D_0001;
const NOISE_SEED: u64 = 0x5A3D_0002;
const PROBE_SEED: u64 = 0x5A3D_0003;
const DIRECTION_SEED: u64 = 0x5A3D_0100;
const SHARPNESS_SEED: u64 = 0x5A3D_0200;
const HESSIAN_SEED: u64 = 0x5A3D_0300;
/// 1-D slices per model drawn in the comparison plot.
const SLICES_PLOTTED: usize = 4;

#[derive(Debug, Clone, Copy, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum ModelArg {
    /// ReLU MLP 784-64-10 (50,890 parameters).
    Mlp,
    /// The tanh CNN of the DP literature (26,010 parameters; slower per example).
    Cnn,
}

#[derive(Debug, Clone, Copy, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum DtypeArg {
    F32,
    F64,
}

/// Train non-private and DP-SGD models from the same start and compare their loss landscapes.
#[derive(Debug, Parser, Serialize)]
struct Args {
    /// Architecture.
    #[arg(long, value_enum, default_value_t = ModelArg::Mlp)]
    model: ModelArg,
    /// Epochs; both runs take ⌈epochs/q⌉ steps with q = batch-size / N.
    #[arg(long, default_value_t = 10.0)]
    epochs: f64,
    /// Batch size B (expected batch size for DP-SGD).
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Learning rate of both runs (plain SGD, no momentum).
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// Flat clipping norm C of DP-SGD.
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Target ε of DP-SGD.
    #[arg(long, default_value_t = 3.0)]
    epsilon: f64,
    /// Target δ of DP-SGD.
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// Points per axis of the 2-D landscape over [-1, 1]².
    #[arg(long, default_value_t = 21)]
    grid: usize,
    /// Points of each 1-D slice over [-1, 1].
    #[arg(long, default_value_t = 41)]
    slice_points: usize,
    /// Number of random directions K (1-D slices and sharpness).
    #[arg(long, default_value_t = 10)]
    directions: usize,
    /// Sharpness radii ρ in filter-normalised units, comma-separated; the printed
    /// `sharpness` is at the first. Small radii probe the local curvature, larger ones the
    /// width of the basin.
    #[arg(long, value_delimiter = ',', default_value = "0.05,0.1,0.25")]
    rho: Vec<f64>,
    /// Maximum power-iteration steps for λ_max (stops earlier at 0.1% relative change).
    #[arg(long, default_value_t = 100)]
    power_iters: usize,
    /// Rademacher probes for the Hessian trace (its standard error is printed).
    #[arg(long, default_value_t = 100)]
    hutchinson_probes: usize,
    /// Number of training examples in the fixed probe set of every landscape metric.
    #[arg(long, default_value_t = 1000)]
    probe: usize,
    /// Precision of the landscape analysis: f64 makes the finite-difference Hessian
    /// estimates accurate; f32 is faster.
    #[arg(long, value_enum, default_value_t = DtypeArg::F64)]
    analysis_dtype: DtypeArg,
    /// Step of the finite-difference Hessian-vector products, as a length in parameter
    /// space (default 1e-5 in f64, 1e-4 in f32). Keep it small: ReLU and max-pool kinks
    /// crossed by a longer step make the gradient difference jump (with 1e-3 the MLP's
    /// Hutchinson trace can even come out negative); f32 rounding sets the lower limit.
    #[arg(long)]
    hvp_eps: Option<f64>,
    /// Seed of everything random.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory.
    #[arg(long, default_value = "target/loss_landscape")]
    out: PathBuf,
}

fn main() -> Result<()> {
    dp_lab::allocator::keep_freed_pages();
    // Before any tensor op: candle's element-wise pool must not spin against the GEMMs.
    dp_lab::core::configure_cpu_threads();
    let args = Args::parse();
    anyhow::ensure!(
        args.grid >= 2 && args.slice_points >= 3,
        "--grid ≥ 2 and --slice-points ≥ 3"
    );
    anyhow::ensure!(
        args.directions >= 1 && !args.rho.is_empty() && args.probe >= 1,
        "--directions, --rho and --probe must not be empty"
    );
    anyhow::ensure!(
        args.lr.is_finite() && args.lr > 0.0 && args.rho.iter().all(|r| r.is_finite() && *r > 0.0),
        "--lr and every --rho must be finite and > 0"
    );
    let t_start = Instant::now();
    let dev = Device::Cpu;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    // ---- data: the bundled MNIST subset, normalised with the standard MNIST constants.
    let mut data = load_bundled_mnist()?;
    Normalize::mnist().apply_dataset(&mut data.train)?;
    Normalize::mnist().apply_dataset(&mut data.test)?;
    let n = data.train.len();
    let q = args.batch_size as f64 / n as f64;
    let steps = steps_for_epochs(args.epochs, q)?;
    eprintln!(
        "data: {n} train / {} test, q = {q:.4}, {steps} steps",
        data.test.len()
    );

    // ---- privacy: the smallest σ meeting (ε, δ) for `steps` Poisson-sampled steps at rate q.
    let sigma =
        calibrate_noise_multiplier(args.epsilon, args.delta, q, steps, AccountantKind::Rdp)?;
    let mut accountant = RdpAccountant::new();
    accountant.compose(&DpEvent::poisson_gaussian(q, sigma)?.repeated(steps))?;
    let epsilon = accountant.epsilon(args.delta)?;
    eprintln!(
        "DP-SGD: σ = {sigma:.4}, C = {}, ε = {epsilon:.3} at δ = {}",
        args.clip, args.delta
    );

    // ---- training: same architecture, same initialisation, same number of steps.
    let t_train = Instant::now();
    let mut non_private = build_model(args.model, &dev, args.seed)?;
    let np_losses = train_non_private(&mut non_private, &data.train, &args, steps, &dev)?;
    let mut dp_model = build_model(args.model, &dev, args.seed)?;
    let dp_losses = train_dp_sgd(&mut dp_model, &data.train, &args, steps, sigma, &dev)?;
    let train_seconds = t_train.elapsed().as_secs_f64();
    let test_idx: Vec<usize> = (0..data.test.len()).collect();
    let (test_x, _) = batch_tensors(&data.test, &test_idx, &dev)?;
    let np_acc = evaluate(&mut non_private, &data.test, &dev, 500)?.1;
    let dp_acc = evaluate(&mut dp_model, &data.test, &dev, 500)?.1;
    eprintln!(
        "trained in {train_seconds:.1}s: test accuracy non-private {:.2}%, DP-SGD {:.2}%",
        100.0 * np_acc,
        100.0 * dp_acc
    );

    // ---- representations: linear CKA of the penultimate layer (the last hidden
    // representation, before the classifier) on the test set.
    let penultimate = non_private.len() - 2;
    let cka = linear_cka(
        &layer_activations(&mut non_private, &test_x, penultimate)?,
        &layer_activations(&mut dp_model, &test_x, penultimate)?,
    )?;

    // ---- landscapes: both models measured identically on one fixed probe set.
    let dtype = match args.analysis_dtype {
        DtypeArg::F32 => DType::F32,
        DtypeArg::F64 => DType::F64,
    };
    let (probe_x, probe_y) = probe_set(&data.train, args.probe, args.seed, &dev, dtype)?;
    cast_params(&mut non_private, dtype)?;
    cast_params(&mut dp_model, dtype)?;
    let t_np = Instant::now();
    let np = analyse(&mut non_private, &probe_x, &probe_y, &args, dtype)?;
    let np_seconds = t_np.elapsed().as_secs_f64();
    eprintln!("non-private landscape measured in {np_seconds:.1}s");
    let t_dp = Instant::now();
    let dp = analyse(&mut dp_model, &probe_x, &probe_y, &args, dtype)?;
    let dp_seconds = t_dp.elapsed().as_secs_f64();
    eprintln!("DP-SGD landscape measured in {dp_seconds:.1}s");

    // ---- the straight path θ(λ) = (1 − λ)θ_non-private + λθ_DP, beyond both ends.
    let theta_dp = dp_model.param_tensors();
    let mut surface = CoreModelSurface::new(&mut non_private, probe_x.clone(), probe_y.clone())?;
    let theta_np = surface.parameters();
    let interp = interpolate(&mut surface, &theta_np, &theta_dp, &linspace(-0.5, 1.5, 41))?;

    // ---- files and plots.
    let mut plots = Vec::new();
    let reports = [
        (
            "non_private",
            "non-private SGD",
            np_acc,
            None,
            &np,
            &np_losses,
            np_seconds,
        ),
        (
            "dp_sgd",
            "DP-SGD",
            dp_acc,
            Some(epsilon),
            &dp,
            &dp_losses,
            dp_seconds,
        ),
    ];
    let mut lines = Vec::new();
    for (key, title, acc, eps, a, _, seconds) in &reports {
        write_landscape_files(&args.out, key, a)?;
        let png = args.out.join(format!("landscape_2d_{key}.png"));
        let opts = SurfaceOptions {
            title: format!(
                "{title}: loss on {} probe examples (test acc. {:.1}%)",
                args.probe,
                100.0 * acc
            ),
            style: SurfaceStyle::HeatmapWithContours,
            log_scale: true,
            ..SurfaceOptions::default()
        };
        plot_slice_2d(&png, &a.slice_2d, &opts)?;
        plots.push(png);
        lines.push(ModelLine {
            model: key,
            test_accuracy: *acc,
            epsilon: *eps,
            delta: eps.map(|_| args.delta),
            noise_multiplier: eps.map(|_| sigma),
            center_loss: a.sharpness.base_loss,
            tv: a.tv_2d.tv_isotropic_integral,
            tv_normalized: a.tv_2d.tv_isotropic_normalized,
            tv_1d: a.slices_summary.tv.mean,
            roughness: a.slices_summary.roughness.mean,
            roughness_sd: a.slices_summary.roughness.sd,
            curvature_1d: a.slices_summary.curvature.mean,
            sharpness: a.sharpness.radii[0].sharpness,
            sharpness_sd: a.sharpness.radii[0].sd,
            rho: args.rho[0],
            sharpness_by_radius: a
                .sharpness
                .radii
                .iter()
                .map(|r| (r.rho, r.sharpness, r.sd))
                .collect(),
            lambda_max: a.lambda_max.eigenvalue,
            lambda_max_converged: a.lambda_max.converged,
            hessian_trace: a.trace.trace,
            hessian_trace_std_error: a.trace.std_error,
            analysis_seconds: *seconds,
        });
    }

    // 1-D slices of both models along the same seeds, on one plot: the first few directions
    // of each (the plot palette has 8 colours; the CSV/JSON files hold all K).
    let named: Vec<(String, &Slice1d)> = reports
        .iter()
        .flat_map(|(_, title, _, _, a, _, _)| {
            a.slices_1d
                .iter()
                .take(SLICES_PLOTTED)
                .enumerate()
                .map(move |(k, s)| (format!("{title}, direction {k}"), s))
        })
        .collect();
    let slices_png = args.out.join("slices_1d.png");
    plot_slices_1d(
        &slices_png,
        &format!(
            "1-D filter-normalised slices ({} probe examples)",
            args.probe
        ),
        &named
            .iter()
            .map(|(k, s)| (k.as_str(), *s))
            .collect::<Vec<_>>(),
    )?;
    plots.push(slices_png);

    let interp_series = Series::new(
        "non-private → DP-SGD",
        interp.lambdas.clone(),
        interp.losses.clone(),
    );
    write_series_csv(
        args.out.join("interpolation.csv"),
        std::slice::from_ref(&interp_series),
    )?;
    write_json(args.out.join("interpolation.json"), &interp)?;
    let interp_png = args.out.join("interpolation.png");
    line_plot(
        &interp_png,
        &LinePlot::new(
            format!(
                "Linear interpolation (λ = 0: non-private, 1: DP-SGD), barrier {:.3}",
                interp.barrier
            ),
            "λ",
            "probe loss",
        )
        .with_series(interp_series),
    )?;
    plots.push(interp_png);

    let mut loss_plot = LinePlot::new("Training loss (mean per epoch)", "epoch", "loss");
    loss_plot.log_y = true;
    let steps_per_epoch = ((1.0 / q).round() as usize).max(1);
    for (_, title, _, _, _, losses, _) in &reports {
        let per_epoch = epoch_means(losses, steps_per_epoch);
        let epochs: Vec<f64> = (1..=per_epoch.len()).map(|e| e as f64).collect();
        loss_plot = loss_plot.with_series(Series::new(*title, epochs, per_epoch));
    }
    write_series_csv(args.out.join("training_loss.csv"), &loss_plot.series)?;
    let loss_png = args.out.join("training_loss.png");
    line_plot(&loss_png, &loss_plot)?;
    plots.push(loss_png);

    let total_seconds = t_start.elapsed().as_secs_f64();
    let pair = json!({
        "cka": cka,
        "cka_layer": penultimate,
        "barrier_height": interp.barrier,
        "interpolation_endpoints": [loss_at_lambda(&interp, 0.0), loss_at_lambda(&interp, 1.0)],
    });
    let plot_paths: Vec<String> = plots.iter().map(|p| p.display().to_string()).collect();
    write_json(
        args.out.join("summary.json"),
        &json!({
            "config": &args,
            "steps": steps,
            "sampling_rate": q,
            "models": lines,
            "comparison": pair,
            "plots": plot_paths,
            "seconds": { "train": train_seconds, "total": total_seconds },
        }),
    )?;
    eprintln!(
        "done in {total_seconds:.1}s; files in {}",
        args.out.display()
    );

    for line in &lines {
        println!("{}", serde_json::to_string(line)?);
    }
    println!("{pair}");
    println!(
        "{}",
        json!({ "plots": plot_paths, "seconds": total_seconds })
    );
    Ok(())
}

/// One model's printed summary line.
#[derive(Serialize)]
struct ModelLine<'a> {
    model: &'a str,
    test_accuracy: f64,
    /// ε actually reached (RDP accountant) for DP-SGD; `null` for the non-private model.
    epsilon: Option<f64>,
    delta: Option<f64>,
    noise_multiplier: Option<f64>,
    /// Mean probe loss at the solution.
    center_loss: f64,
    /// Isotropic TV of the 2-D landscape, h-scaled (≈ ∫|∇f| over [-1, 1]²).
    tv: f64,
    /// The same divided by the landscape's range (scale-free).
    tv_normalized: Option<f64>,
    /// Mean TV of the 1-D slices.
    tv_1d: f64,
    /// Mean roughness R₁ of the 1-D slices (1 = unimodal).
    roughness: f64,
    roughness_sd: f64,
    /// Mean finite-difference curvature at the centre of the 1-D slices.
    curvature_1d: f64,
    /// Random-direction sharpness S_ρ = mean over K directions of L(θ + ρd) − L(θ).
    sharpness: f64,
    sharpness_sd: f64,
    rho: f64,
    /// (ρ, S_ρ, sd over directions) for every radius.
    sharpness_by_radius: Vec<(f64, f64, f64)>,
    lambda_max: f64,
    lambda_max_converged: bool,
    hessian_trace: f64,
    hessian_trace_std_error: f64,
    analysis_seconds: f64,
}

/// Everything measured on one model.
struct Analysis {
    slice_2d: Slice2d,
    tv_2d: TvSummary2d,
    slices_1d: Vec<Slice1d>,
    slices_summary: SliceSummary1d,
    sharpness: SharpnessReport,
    lambda_max: EigenEstimate,
    trace: TraceEstimate,
}

fn build_model(kind: ModelArg, dev: &Device, seed: u64) -> Result<Sequential> {
    Ok(match kind {
        ModelArg::Mlp => models::mlp(&[784, 64, 10], dev, seed)?,
        ModelArg::Cnn => models::mnist_cnn(dev, seed)?,
    })
}

/// Gradient-descent steps through dp-optim's one step function: plain SGD updates, the
/// regime and plan deciding clipping and noise.
struct Stepper {
    env_regime: Regime,
    noise: GaussianNoise,
    opt: Sgd,
}

impl Stepper {
    fn new(regime: Regime, seed: u64, lr: f64) -> Self {
        Self {
            env_regime: regime,
            noise: GaussianNoise::seeded(seed),
            opt: Sgd::new(lr),
        }
    }

    /// One step on rows `idx` of `train`; returns the mean batch loss (analysis only).
    fn step(
        &mut self,
        model: &mut Sequential,
        train: &Dataset,
        idx: &[usize],
        mut plan: StepPlan,
        dev: &Device,
    ) -> Result<Option<f64>> {
        let opts = GradOptions::default();
        let env = StepEnv {
            regime: self.env_regime,
            loss: &CrossEntropy,
            grad_options: &opts,
        };
        // An empty Poisson draw is still a step: it releases pure noise.
        let mut batches = (!idx.is_empty())
            .then(|| batch_tensors(train, idx, dev))
            .into_iter();
        let r = take_step(
            model,
            &mut batches,
            &mut plan,
            &env,
            &mut self.noise,
            &mut self.opt,
        )?;
        Ok((r.examples > 0).then(|| r.loss_sum / r.examples as f64))
    }
}

/// Plain minibatch SGD on shuffled fixed-size batches; returns each step's mean batch loss.
fn train_non_private(
    model: &mut Sequential,
    train: &Dataset,
    args: &Args,
    steps: u64,
    dev: &Device,
) -> Result<Vec<f64>> {
    let mut sampler =
        ShuffledSampler::new(train.len(), args.batch_size, Some(args.seed ^ SAMPLER_SEED))?;
    let mut stepper = Stepper::new(Regime::NonPrivate, args.seed ^ NOISE_SEED, args.lr);
    let mut losses = Vec::with_capacity(steps as usize);
    for _ in 0..steps {
        let idx = sampler.next_batch();
        // Non-private: the mean over the realised batch (the clip bound is unused).
        let plan = StepPlan::new(Box::new(FlatClip::new(args.clip)?), 1.0, idx.len() as f64)?;
        if let Some(l) = stepper.step(model, train, &idx, plan, dev)? {
            losses.push(l);
        }
    }
    Ok(losses)
}

/// DP-SGD (Abadi et al. 2016): Poisson batches at rate q, per-example gradients clipped to
/// C, N(0, σ²C²) added once to the sum, divided by the expected batch size qN (a public
/// constant; the realised batch size is private). Returns each step's mean batch loss, which
/// is only logged for the plot and never influences training.
fn train_dp_sgd(
    model: &mut Sequential,
    train: &Dataset,
    args: &Args,
    steps: u64,
    sigma: f64,
    dev: &Device,
) -> Result<Vec<f64>> {
    let q = args.batch_size as f64 / train.len() as f64;
    let mut sampler = PoissonSampler::new(train.len(), q, Some(args.seed ^ SAMPLER_SEED))?;
    let expected = sampler.expected_batch_size();
    let mut stepper = Stepper::new(Regime::Private, args.seed ^ NOISE_SEED, args.lr);
    let mut losses = Vec::with_capacity(steps as usize);
    for _ in 0..steps {
        let idx = sampler.next_batch();
        let plan = StepPlan::new(Box::new(FlatClip::new(args.clip)?), sigma, expected)?;
        if let Some(l) = stepper.step(model, train, &idx, plan, dev)? {
            losses.push(l);
        }
    }
    Ok(losses)
}

/// A seeded random subset of `size` training examples, in the analysis dtype.
fn probe_set(
    train: &Dataset,
    size: usize,
    seed: u64,
    dev: &Device,
    dtype: DType,
) -> Result<(Tensor, Tensor)> {
    let mut idx: Vec<usize> = (0..train.len()).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ PROBE_SEED));
    idx.truncate(size.min(train.len()));
    let (x, y) = batch_tensors(train, &idx, dev)?;
    Ok((x.to_dtype(dtype)?, y))
}

/// Converts the model's parameters to `dtype` (dp-core layers follow their parameters'
/// dtype; its fast kernels are f32-only, other dtypes use candle's generic path).
fn cast_params(model: &mut Sequential, dtype: DType) -> Result<()> {
    let cast = model
        .param_tensors()
        .iter()
        .map(|t| t.to_dtype(dtype))
        .collect::<candle_core::Result<Vec<_>>>()?;
    model.set_param_tensors(&cast)?;
    Ok(())
}

/// All landscape metrics of one model on the probe set. The direction seeds are the same
/// for every model, so the two landscapes are sampled along corresponding (filter-normalised)
/// directions.
fn analyse(
    model: &mut Sequential,
    probe_x: &Tensor,
    probe_y: &Tensor,
    args: &Args,
    dtype: DType,
) -> Result<Analysis> {
    let mut surface = CoreModelSurface::new(model, probe_x.clone(), probe_y.clone())?;
    let theta = surface.parameters();
    let bias = BiasHandling::Zero;

    let axis = linspace(-1.0, 1.0, args.grid);
    let slice_2d = random_slice_2d(
        &mut surface,
        &theta,
        args.seed ^ DIRECTION_SEED,
        bias,
        &axis,
        &axis,
    )?;
    let h = if args.grid > 1 {
        2.0 / (args.grid - 1) as f64
    } else {
        1.0
    };
    let tv_2d = tv_summary_2d(&slice_2d.losses, h)?;

    let alphas = linspace(-1.0, 1.0, args.slice_points);
    let slices_1d = (0..args.directions as u64)
        .map(|k| {
            random_slice_1d(
                &mut surface,
                &theta,
                (args.seed ^ DIRECTION_SEED).wrapping_add(1 + k),
                bias,
                &alphas,
            )
        })
        .collect::<dp_lab::metrics::Result<Vec<_>>>()?;
    let slices_summary = summarize_slices_1d(&slices_1d, Kappa::Relative(0.1))?;

    let sharpness = random_direction_sharpness(
        &mut surface,
        &theta,
        &SharpnessConfig {
            radii: args.rho.clone(),
            num_directions: args.directions,
            seed: args.seed ^ SHARPNESS_SEED,
            bias,
        },
    )?;

    // Finite-difference HVPs step a length eps_scale in parameter space: short enough to
    // rarely cross a ReLU/max-pool kink (see --hvp-eps), long enough for the precision.
    let eps_scale = args
        .hvp_eps
        .unwrap_or(if dtype == DType::F64 { 1e-5 } else { 1e-4 });
    let lambda_max = max_eigenvalue(
        &mut surface,
        &theta,
        &PowerIterationConfig {
            max_iter: args.power_iters,
            tol: 1e-3,
            seed: args.seed ^ HESSIAN_SEED,
            eps_scale,
        },
    )?;
    let trace = hutchinson_trace(
        &mut surface,
        &theta,
        &HutchinsonConfig {
            max_probes: args.hutchinson_probes,
            min_probes: args.hutchinson_probes,
            rel_tol: 0.0,
            seed: args.seed ^ HESSIAN_SEED,
            eps_scale,
        },
    )?;
    Ok(Analysis {
        slice_2d,
        tv_2d,
        slices_1d,
        slices_summary,
        sharpness,
        lambda_max,
        trace,
    })
}

/// CSV and JSON of one model's 2-D grid and 1-D slices.
fn write_landscape_files(out: &Path, key: &str, a: &Analysis) -> Result<()> {
    write_slice_2d_csv(out.join(format!("landscape_2d_{key}.csv")), &a.slice_2d)?;
    write_json(out.join(format!("landscape_2d_{key}.json")), &a.slice_2d)?;
    let series: Vec<Series> = a
        .slices_1d
        .iter()
        .enumerate()
        .map(|(k, s)| Series::new(format!("direction {k}"), s.alphas.clone(), s.losses.clone()))
        .collect();
    write_series_csv(out.join(format!("slices_1d_{key}.csv")), &series)?;
    write_json(out.join(format!("slices_1d_{key}.json")), &a.slices_1d)?;
    Ok(())
}

/// Mean of each consecutive run of `per_epoch` values (the last run may be shorter).
fn epoch_means(values: &[f64], per_epoch: usize) -> Vec<f64> {
    values
        .chunks(per_epoch)
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect()
}

/// f(λ) at the grid point nearest to λ.
fn loss_at_lambda(interp: &Interpolation, lambda: f64) -> f64 {
    let i = interp
        .lambdas
        .iter()
        .enumerate()
        .min_by(|a, b| (a.1 - lambda).abs().total_cmp(&(b.1 - lambda).abs()))
        .map_or(0, |(i, _)| i);
    interp.losses[i]
}
