//! Tramèr & Boneh (ICLR 2021), "Differentially private learning needs better features (or
//! much more data)": DP-SGD on handcrafted ScatterNet features against the end-to-end CNN,
//! at (ε, δ) = (3, 1e-5), each with and without parameter averaging (De et al. 2022).
//!
//! ```text
//! cargo run --release --example tramer_scatternet                                   # bundled digits
//! cargo run --release --example tramer_scatternet -- --dataset mnist --data-dir ../shared/data/mnist
//! cargo run --release --example tramer_scatternet -- --dataset fashion-mnist
//! ```
//!
//! Features: kymatio's `Scattering2D(J = 2, L = 8)` (`dp_data::Scattering2D`, checked against
//! kymatio's output), 81×7×7 per 28×28 image, computed **once per dataset** from the raw
//! `[0, 1]` pixels and cached in memory for every run, then normalised per example by
//! GroupNorm over 27 groups of 3 channels (`dp_data::GroupNormalize`, the paper's
//! FashionMNIST setting). Both are per-example, data-independent transforms: they cost no
//! privacy, so every ε below is DP-SGD's alone. (For MNIST the paper used private batch-norm
//! statistics instead, whose cost it adds to ε; that is not implemented here.)
//!
//! Models and hyper-parameters are the official code's (`ftramer/Handcrafted-DP` README):
//! ScatterNet + linear (MNIST B = 4096, lr 8; FashionMNIST B = 8192, lr 16), ScatterNet + CNN
//! (MNIST B = 1024, lr 1; FashionMNIST B = 2048, lr 4), end-to-end CNN (MNIST B = 512, lr 0.5;
//! FashionMNIST B = 2048, lr 4); SGD with momentum 0.9, C = 0.1, 40 epochs (the epochs at
//! which the README's σ spend ε = 3 under the classic RDP conversion, for all but the MNIST
//! ScatterNet CNN). σ is calibrated here so that the planned steps spend the budget (RDP,
//! Poisson sampling). The bundled digits (4,000 training examples) take MNIST's settings with
//! each batch scaled by 4,000/60,000 (which keeps q and the step count), but never below 256,
//! the batch of the project's other bundled runs (fixed before any run here: a first run with
//! the scaled batches of 68 and 34 left the CNNs near 40–50% at ε = 3). Nothing is tuned on
//! the test set.
//!
//! Each private run keeps an EMA of its weights (decay 0.9999 with jax_privacy's warm-up) and
//! reports the test accuracy of both the trained and the averaged weights: averaging is
//! post-processing of the private iterates, so the two share one run and one ε. Each model is
//! also trained non-privately (no clipping, no noise, learning rate × C so that the step
//! matches a private step of clipped gradients). A sweep over ε (default 1, 2, 3, 5, 8) gives
//! `accuracy_vs_epsilon.png`.
//!
//! Writes `records.json` and `accuracy_vs_epsilon.png` into `--out` (default
//! `target/tramer_scatternet/`) and ends with one JSON line per configuration.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::{positive, Data, Loaded};

use anyhow::{ensure, Context, Result};
use candle_core::Device;
use clap::Parser;
use dp_lab::core::{models, Sequential};
use dp_lab::data::{Dataset, GroupNormalize, Scattering2D};
use dp_lab::metrics::plot::{line_plot, LinePlot, Series};
use dp_lab::optim::{
    Averaging, BatchSize, Delta, EpochRecord, Epochs, FixedClip, PrivateTrainer, Regime, Sgd,
    TrainerConfig,
};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, clap::ValueEnum, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Model {
    /// ScatterNet features + a linear classifier.
    ScatterLinear,
    /// ScatterNet features + the small tanh CNN.
    ScatterCnn,
    /// The end-to-end tanh CNN on pixels.
    EndToEnd,
}

impl Model {
    fn name(self) -> &'static str {
        match self {
            Model::ScatterLinear => "scatternet+linear",
            Model::ScatterCnn => "scatternet+cnn",
            Model::EndToEnd => "end-to-end-cnn",
        }
    }
    /// (batch size, learning rate) of the official README for MNIST / FashionMNIST.
    fn paper_settings(self, fashion: bool) -> (f64, f64) {
        match (self, fashion) {
            (Model::ScatterLinear, false) => (4096.0, 8.0),
            (Model::ScatterLinear, true) => (8192.0, 16.0),
            (Model::ScatterCnn, false) => (1024.0, 1.0),
            (Model::ScatterCnn, true) => (2048.0, 4.0),
            (Model::EndToEnd, false) => (512.0, 0.5),
            (Model::EndToEnd, true) => (2048.0, 4.0),
        }
    }
    fn features(self) -> &'static str {
        match self {
            Model::EndToEnd => "pixels",
            _ => "scattering(J=2,L=8)+groupnorm(27)",
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "ScatterNet + linear / CNN vs end-to-end CNN under DP (Tramèr & Boneh 2021)")]
struct Args {
    #[arg(long, value_enum, default_value = "bundled")]
    dataset: Data,
    /// Directory with the dataset's standard files.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Models to train.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "scatter-linear,scatter-cnn,end-to-end"
    )]
    models: Vec<Model>,
    /// Epochs of every run (the paper's 40 by default).
    #[arg(long, default_value_t = 40.0)]
    epochs: f64,
    /// Clip bound C.
    #[arg(long, default_value_t = 0.1)]
    clip: f64,
    /// Target ε of the main comparison (δ below).
    #[arg(long, default_value_t = 3.0)]
    epsilon: f64,
    /// Further ε for the accuracy-vs-ε plot (the main ε is always included; pass the main ε
    /// alone for no sweep).
    #[arg(long, value_delimiter = ',', default_value = "1,2,5,8")]
    sweep: Vec<f64>,
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// GroupNorm groups over the 81 scattering channels (the paper's 27).
    #[arg(long, default_value_t = 27)]
    groups: usize,
    /// EMA decay of the averaged weights (De et al. 2022: 0.9999), in (0, 1).
    #[arg(long, default_value_t = 0.9999)]
    ema_decay: f64,
    /// Skip the non-private reference runs.
    #[arg(long)]
    skip_non_private: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory.
    #[arg(long, default_value = "target/tramer_scatternet")]
    out: PathBuf,
}

#[derive(Serialize)]
struct RunRecord {
    model: Model,
    target_epsilon: Option<f64>,
    epochs: Vec<EpochRecord>,
}

/// (ε, test accuracy, test accuracy of the EMA weights) of one run.
type CurvePoint = (f64, f64, f64);

/// Train and test sets of one model's inputs.
struct Inputs {
    train: Dataset,
    test: Dataset,
}

fn build(model: Model, shape: &[usize], seed: u64) -> Result<Sequential> {
    let dev = Device::Cpu;
    Ok(match model {
        Model::ScatterLinear => {
            models::scatter_linear(shape[0], shape[1], shape[2], 10, &dev, seed)?
        }
        Model::ScatterCnn => models::scatter_cnn(shape[0], shape[1], shape[2], &dev, seed)?,
        Model::EndToEnd => models::mnist_cnn(&dev, seed)?,
    })
}

fn main() -> Result<()> {
    dp_lab::allocator::keep_freed_pages();
    dp_lab::core::configure_cpu_threads();
    let args = Args::parse();
    // Every numeric flag is checked before any work.
    positive("--epochs", args.epochs)?;
    positive("--clip", args.clip)?;
    positive("--epsilon", args.epsilon)?;
    positive("--delta", args.delta)?;
    ensure!(args.delta < 1.0, "--delta = {}: must be < 1", args.delta);
    for &e in &args.sweep {
        positive("--sweep", e)?;
    }
    ensure!(
        args.ema_decay.is_finite() && args.ema_decay > 0.0 && args.ema_decay < 1.0,
        "--ema-decay = {}: must lie in (0, 1)",
        args.ema_decay
    );
    let norm_groups = GroupNormalize::new(args.groups, GroupNormalize::DEFAULT_EPS)?;
    ensure!(
        81 % args.groups == 0,
        "--groups = {}: must divide the 81 scattering channels",
        args.groups
    );
    ensure!(!args.models.is_empty(), "--models: name at least one model");
    let averaging = Averaging::ema(args.ema_decay)?;

    let (
        Loaded {
            data,
            label,
            source,
        },
        pixel_norm,
    ) = args.dataset.load_raw(args.data_dir.as_deref())?;
    eprintln!(
        "{label}: {} train / {} test examples from {source}",
        data.train.len(),
        data.test.len()
    );
    std::fs::create_dir_all(&args.out)?;
    let fashion = args.dataset == Data::FashionMnist;
    // The bundled digits keep MNIST's sampling rates: B scaled by N/60,000.
    let batch_scale = data.train.len() as f64 / 60_000.0;

    // Scattering features: computed once per dataset, cached for every run.
    let needs_scattering = args.models.iter().any(|m| *m != Model::EndToEnd);
    let mut scattering_seconds = None;
    let scattered = if needs_scattering {
        let started = Instant::now();
        let s = Scattering2D::tramer_boneh(28, 28)?;
        let mut train = s
            .transform_dataset(&data.train)
            .context("scattering the training set")?;
        let mut test = s
            .transform_dataset(&data.test)
            .context("scattering the test set")?;
        norm_groups.apply_dataset(&mut train)?;
        norm_groups.apply_dataset(&mut test)?;
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "scattering: {} + {} images → {:?} in {secs:.1} s ({} threads)",
            data.train.len(),
            data.test.len(),
            train.example_shape(),
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        scattering_seconds = Some(secs);
        Some(Inputs { train, test })
    } else {
        None
    };
    let pixels = if args.models.contains(&Model::EndToEnd) {
        let (mut train, mut test) = (data.train.clone(), data.test.clone());
        pixel_norm.apply_dataset(&mut train)?;
        pixel_norm.apply_dataset(&mut test)?;
        Some(Inputs { train, test })
    } else {
        None
    };
    drop(data);

    let mut epsilons = vec![args.epsilon];
    epsilons.extend(args.sweep.iter().copied().filter(|e| *e != args.epsilon));
    let mut runs = Vec::new();
    let mut lines = Vec::new();
    let mut curves: Vec<(Model, Vec<CurvePoint>)> = Vec::new();
    for &model in &args.models {
        let inputs = match model {
            Model::EndToEnd => pixels.as_ref(),
            _ => scattered.as_ref(),
        }
        .context("inputs of the model")?;
        let (paper_b, lr) = model.paper_settings(fashion);
        // Full datasets: the paper's B. The bundled digits: B scaled by N/60,000 (same q and
        // steps), but at least the 256 of the project's other bundled runs (a batch of 34
        // drowns a 26k-parameter CNN's clipped signal in noise of norm ~10× larger).
        let batch = (paper_b * batch_scale)
            .round()
            .clamp(256f64.min(paper_b), paper_b);
        let shape = inputs.train.example_shape().to_vec();
        let mut curve = Vec::new();
        let targets: Vec<Option<f64>> = epsilons
            .iter()
            .map(|e| Some(*e))
            .chain((!args.skip_non_private).then_some(None))
            .collect();
        for target in targets {
            let net = build(model, &shape, args.seed)?;
            let mut cfg =
                TrainerConfig::new(Epochs(args.epochs), BatchSize(batch), Delta(args.delta))
                    .with_seed(args.seed)
                    .with_max_physical_batch(1024)
                    .with_averaging(averaging);
            let run_lr = match target {
                Some(eps) => {
                    cfg = cfg.with_budget(eps).calibrate_noise_from_budget();
                    lr
                }
                None => {
                    cfg = cfg.with_regime(Regime::NonPrivate);
                    lr * args.clip
                }
            };
            let opt = Sgd::new(run_lr).with_momentum(0.9);
            let method = FixedClip::new(args.clip, 1.0)?;
            let mut t =
                PrivateTrainer::new(net, Box::new(opt), Box::new(method), cfg, &inputs.train)?;
            eprintln!(
                "\n== {} {}: B = {batch}, lr = {run_lr}, q = {:.4}, {} steps, σ = {:.4}",
                model.name(),
                target.map_or("non-private".to_string(), |e| format!("ε = {e}")),
                t.sampling_rate(),
                t.total_steps(),
                t.method().noise_multiplier(),
            );
            let report = t.train(&inputs.train, Some(&inputs.test))?;
            let last = t.epoch_records().last().cloned();
            let averaged = last.as_ref().and_then(|e| e.averaged_test_accuracy);
            eprintln!(
                "{}: test accuracy {:.2}% (EMA weights {:.2}%), ε {:.3}, {:.1} s",
                model.name(),
                100.0 * report.test_accuracy.unwrap_or(f64::NAN),
                100.0 * averaged.unwrap_or(f64::NAN),
                report.epsilon,
                report.seconds
            );
            if let Some(eps) = target {
                curve.push((
                    eps,
                    report.test_accuracy.unwrap_or(f64::NAN),
                    averaged.unwrap_or(f64::NAN),
                ));
            }
            let main = target.is_none() || target == Some(args.epsilon);
            if main {
                for (avg_label, acc) in [
                    ("none".to_string(), report.test_accuracy),
                    (averaging.label(), averaged),
                ] {
                    lines.push(serde_json::json!({
                        "example": "tramer_scatternet",
                        "method": if target.is_some() { "dp_sgd" } else { "non_private" },
                        "model": model.name(),
                        "features": model.features(),
                        "averaging": avg_label,
                        "dataset": label,
                        "test_accuracy": acc,
                        "epsilon": report.epsilon,
                        "delta": report.delta,
                        "steps": report.steps,
                        "batch_size": batch,
                        "lr": run_lr,
                        "clip": args.clip,
                        "epochs": args.epochs,
                        "seconds": (report.seconds * 10.0).round() / 10.0,
                        "scattering_seconds": match model {
                            Model::EndToEnd => None,
                            _ => scattering_seconds.map(|s| (s * 10.0).round() / 10.0),
                        },
                        "noise_multiplier": report.noise_multiplier,
                    }));
                }
            }
            runs.push(RunRecord {
                model,
                target_epsilon: target,
                epochs: t.epoch_records().to_vec(),
            });
        }
        curve.sort_by(|a, b| a.0.total_cmp(&b.0));
        curves.push((model, curve));
    }

    std::fs::write(args.out.join("records.json"), serde_json::to_vec(&runs)?)?;
    let mut plot = LinePlot::new(
        format!("{label}: test accuracy vs ε (δ = {})", args.delta),
        "ε",
        "test accuracy",
    );
    for (model, curve) in &curves {
        let xs: Vec<f64> = curve.iter().map(|c| c.0).collect();
        plot = plot
            .with_series(Series::new(
                model.name(),
                xs.clone(),
                curve.iter().map(|c| c.1).collect(),
            ))
            .with_series(Series::new(
                format!("{} (EMA)", model.name()),
                xs,
                curve.iter().map(|c| c.2).collect(),
            ));
    }
    line_plot(args.out.join("accuracy_vs_epsilon.png"), &plot)?;
    eprintln!(
        "\nwrote accuracy_vs_epsilon.png and records.json into {}",
        args.out.display()
    );
    for l in lines {
        println!("{l}");
    }
    Ok(())
}
