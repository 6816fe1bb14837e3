//! The clipping-bias theory of Xiao, Xiang, Wang & Devadas (IEEE S&P 2023) measured: DP-SGD
//! against batch (micro-batch) clipping with units of m = 2 and 4, and against the paper's
//! model family (a ResNet with weight-standardised convolutions and non-affine GroupNorm,
//! scaled to 28×28), alone and combined, at the same (ε, δ).
//!
//! ```text
//! cargo run --release --example xiao_clipping_bias                                  # bundled digits
//! cargo run --release --example xiao_clipping_bias -- --dataset mnist --data-dir /work/shared/data/mnist
//! ```
//!
//! The theory's quantity: the clipping bias grows with the sampling noise of the gradient
//! being clipped. Every `--probe-every` steps, on a fixed probe set of training examples
//! (analysis only, not private), the example computes the per-example gradients, forms the
//! quantity each configuration clips (the gradient itself for DP-SGD, the mean over units of
//! m for batch clipping, same random units every probe), and records its spread
//! V = (1/n) Σ‖g_u − ḡ‖² (relative: V/‖ḡ‖²), the relative clipping bias ‖ḡ_c − ḡ‖/‖ḡ‖,
//! the cosine of ḡ_c with ḡ, and the signal-to-noise ratio ‖Σ clip(g_u)‖/(σ·S·√d) with the
//! configuration's own sensitivity S (C for DP-SGD, 4C for units of m ≥ 2; see
//! `dp_optim::methods::BatchClip`). The training steps' own clipping bias
//! ‖Σ clip − Σ unclipped‖/divisor is recorded too.
//!
//! Every configuration gets the σ calibrated so that its planned steps spend (ε, δ); batch
//! clipping is accounted as one subsampled Gaussian whose noise std is σ·S. Hyper-parameters
//! are fixed before any run (B = 256, C = 0.1, SGD with learning rate 1 and momentum 0.9:
//! the DP-SGD settings the other examples use for the tanh CNN) and shared by every
//! configuration. The papers' headline results are on CIFAR-10, which is not reachable from
//! these machines: these datasets are a new measurement.
//!
//! Writes `records.json`, `accuracy.png`, `relative_bias.png`, `relative_spread.png` and
//! `snr.png` into `--out` (default `target/xiao_clipping_bias/`) and ends with one JSON line
//! per configuration.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::{positive, Data, Loaded};

use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::Parser;
use dp_lab::core::{models, per_example_gradients, CrossEntropy, Model};
use dp_lab::metrics::plot::{line_plot, LinePlot, Series};
use dp_lab::optim::methods::{unit_order, BatchClip};
use dp_lab::optim::{
    batch_tensors, BatchSize, Delta, Epochs, FixedClip, PrivacyMethod, PrivateTrainer, Sgd,
    StepRecord, TrainerConfig,
};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    about = "Clipping bias vs gradient spread (Xiao et al. 2023): DP-SGD, batch clipping, WS+GN ResNet"
)]
struct Args {
    #[arg(long, value_enum, default_value = "bundled")]
    dataset: Data,
    /// Directory with the dataset's standard files.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Epochs per configuration.
    #[arg(long, default_value_t = 10.0)]
    epochs: f64,
    /// Expected (Poisson) batch size.
    #[arg(long, default_value_t = 256.0)]
    batch_size: f64,
    /// Clip bound C (of each example, or of each unit's mean).
    #[arg(long, default_value_t = 0.1)]
    clip: f64,
    /// Learning rate (SGD, momentum 0.9), the same for every configuration.
    #[arg(long, default_value_t = 1.0)]
    lr: f64,
    /// Unit sizes m of batch clipping (comma-separated; 1 is DP-SGD).
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    units: Vec<usize>,
    /// Base width of the ResNet (channels of its first stage).
    #[arg(long, default_value_t = 8)]
    width: usize,
    /// Skip the ResNet configurations.
    #[arg(long)]
    no_resnet: bool,
    /// Probe-set size for the spread and bias measurements (a multiple of every unit size).
    #[arg(long, default_value_t = 128)]
    probe: usize,
    /// Measure on the probe set every this many steps.
    #[arg(long, default_value_t = 4)]
    probe_every: u64,
    /// Target ε (δ below).
    #[arg(long, default_value_t = 3.0)]
    epsilon: f64,
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory.
    #[arg(long, default_value = "target/xiao_clipping_bias")]
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, Serialize)]
enum Arch {
    TanhCnn,
    WsGnResNet,
}

/// One probe measurement (not private).
#[derive(Clone, Debug, Serialize)]
struct Probe {
    step: u64,
    /// V/‖ḡ‖² of the clipped quantity (per-example gradients or unit means).
    relative_spread: f64,
    /// V of the clipped quantity.
    spread: f64,
    /// ‖ḡ_c − ḡ‖/‖ḡ‖.
    relative_bias: f64,
    /// cos(ḡ_c, ḡ).
    cosine: f64,
    /// ‖Σ clip(g_u)‖/(σ·S·√d).
    snr: f64,
    /// Fraction of units (or examples) with norm > C.
    clipped_fraction: f64,
}

#[derive(Serialize)]
struct RunRecord {
    config: String,
    epochs: Vec<(u64, f64)>,
    probes: Vec<Probe>,
    steps: Vec<StepRecord>,
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v
        .filter(|x| x.is_finite())
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

/// The clipped quantity of a configuration on the probe set: per-example gradients
/// (`unit = 1`) or the means over units of `unit` in a fixed random order.
fn clipped_quantity(grads: &Tensor, unit: usize, seed: u64) -> Result<Tensor> {
    if unit == 1 {
        return Ok(grads.clone());
    }
    let (n, d) = grads.dims2()?;
    let order: Vec<u32> = unit_order(seed, 0, n)
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let idx = Tensor::from_vec(order, n, grads.device())?;
    Ok(grads
        .index_select(&idx, 0)?
        .reshape((n / unit, unit, d))?
        .mean(1)?)
}

struct Setup<'a> {
    args: &'a Args,
    data: &'a dp_lab::data::TrainTest,
    label: &'static str,
    probe: (Tensor, Tensor),
}

fn run<M: Model + Send + 'static>(
    s: &Setup,
    name: &str,
    model: M,
    unit: usize,
) -> Result<(RunRecord, serde_json::Value)> {
    let a = s.args;
    let dev = Device::Cpu;
    let method: Box<dyn PrivacyMethod> = if unit == 1 {
        Box::new(FixedClip::new(a.clip, 1.0)?)
    } else {
        Box::new(BatchClip::new(a.clip, unit, 1.0)?.with_seed(a.seed))
    };
    let sensitivity = if unit == 1 { a.clip } else { 4.0 * a.clip };
    let cfg = TrainerConfig::new(Epochs(a.epochs), BatchSize(a.batch_size), Delta(a.delta))
        .with_budget(a.epsilon)
        .calibrate_noise_from_budget()
        .with_seed(a.seed)
        .with_clipping_bias(true);
    let opt = Sgd::new(a.lr).with_momentum(0.9);
    let mut t = PrivateTrainer::new(model, Box::new(opt), method, cfg, &s.data.train)?;
    let sigma = t.method().noise_multiplier();
    eprintln!(
        "\n== {name}: q = {:.4}, {} steps, σ = {sigma:.4}, noise std σ·S = {:.4}",
        t.sampling_rate(),
        t.total_steps(),
        sigma * sensitivity
    );
    let start = std::time::Instant::now();
    let (xp, yp) = &s.probe;
    let d = t.model().num_params();
    let mut probes = Vec::new();
    let mut epochs = Vec::new();
    let per_epoch = t.steps_per_epoch();
    let divisor = a.batch_size / unit as f64;
    for step in 0..t.total_steps() {
        if step % a.probe_every == 0 {
            let g = per_example_gradients(t.model_mut(), xp, yp, &CrossEntropy)?;
            let q = clipped_quantity(&g, unit, a.seed)?;
            let st = dp_lab::metrics::clipping_stats(
                &q,
                a.clip,
                Some(sigma * sensitivity / a.clip),
                &[],
            )?;
            probes.push(Probe {
                step,
                relative_spread: st.relative_dispersion.unwrap_or(f64::NAN),
                spread: st.dispersion,
                relative_bias: st.bias.relative_bias.unwrap_or(f64::NAN),
                cosine: st.bias.cosine.unwrap_or(f64::NAN),
                snr: st.snr.unwrap_or(f64::NAN),
                clipped_fraction: st.clipped_fraction,
            });
        }
        if t.step(&s.data.train, &dev)?.is_none() {
            break;
        }
        if (step + 1) % per_epoch == 0 || step + 1 == t.total_steps() {
            let (_, acc) = t.evaluate(&s.data.test, &dev)?;
            let epoch = (step + 1).div_ceil(per_epoch);
            eprintln!("epoch {epoch:>3}  test acc {:6.2}%", 100.0 * acc);
            epochs.push((epoch, acc));
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let steps = t.records().to_vec();
    let p = |f: fn(&Probe) -> f64| mean(probes.iter().map(f));
    let summary = serde_json::json!({
        "example": "xiao_clipping_bias",
        "config": name,
        "dataset": s.label,
        "unit_size": unit,
        "sensitivity": sensitivity,
        "test_accuracy": epochs.last().map(|e| e.1),
        "epsilon": t.epsilon()?,
        "delta": a.delta,
        "steps": t.steps_taken(),
        "noise_multiplier": sigma,
        "params": d,
        "seconds": (seconds * 10.0).round() / 10.0,
        "non_private_probe_mean_relative_spread": p(|x| x.relative_spread),
        "non_private_probe_mean_relative_bias": p(|x| x.relative_bias),
        "non_private_probe_mean_cosine": p(|x| x.cosine),
        "non_private_probe_mean_snr": p(|x| x.snr),
        "non_private_probe_mean_clipped_fraction": p(|x| x.clipped_fraction),
        "non_private_step_mean_clipping_bias": mean(
            steps.iter().filter_map(|r| r.clipping_bias.map(|b| b.l2 / divisor))
        ),
    });
    Ok((
        RunRecord {
            config: name.to_string(),
            epochs,
            probes,
            steps,
        },
        summary,
    ))
}

fn main() -> Result<()> {
    dp_lab::allocator::keep_freed_pages();
    dp_lab::core::configure_cpu_threads();
    let args = Args::parse();
    positive("--epochs", args.epochs)?;
    positive("--batch-size", args.batch_size)?;
    positive("--clip", args.clip)?;
    positive("--lr", args.lr)?;
    positive("--epsilon", args.epsilon)?;
    positive("--delta", args.delta)?;
    anyhow::ensure!(args.probe_every > 0, "--probe-every must be ≥ 1");
    anyhow::ensure!(args.probe > 0, "--probe must be ≥ 1");
    anyhow::ensure!(args.width > 0, "--width must be ≥ 1");
    anyhow::ensure!(
        args.units.iter().all(|&m| m >= 1 && args.probe % m == 0),
        "--units must be ≥ 1 and divide --probe ({})",
        args.probe
    );
    let dev = Device::Cpu;
    let Loaded { data, label, .. } = args.dataset.load_reported(args.data_dir.as_deref())?;
    std::fs::create_dir_all(&args.out)?;
    anyhow::ensure!(
        args.probe <= data.train.len(),
        "--probe exceeds the training set"
    );
    let probe_idx: Vec<usize> = unit_order(args.seed ^ 0x5eed, 1, data.train.len())
        .into_iter()
        .take(args.probe)
        .collect();
    let setup = Setup {
        args: &args,
        data: &data,
        label,
        probe: batch_tensors(&data.train, &probe_idx, &dev)?,
    };

    let mut configs: Vec<(String, Arch, usize)> = vec![("dp_sgd cnn".into(), Arch::TanhCnn, 1)];
    for &m in args.units.iter().filter(|&&m| m > 1) {
        configs.push((format!("batch_clip m={m} cnn"), Arch::TanhCnn, m));
    }
    if !args.no_resnet {
        configs.push(("dp_sgd ws-gn-resnet".into(), Arch::WsGnResNet, 1));
        if let Some(&m) = args.units.iter().find(|&&m| m > 1) {
            configs.push((
                format!("batch_clip m={m} ws-gn-resnet"),
                Arch::WsGnResNet,
                m,
            ));
        }
    }
    let mut runs = Vec::new();
    let mut lines = Vec::new();
    for (name, arch, unit) in &configs {
        let (rec, line) = match arch {
            Arch::TanhCnn => run(&setup, name, models::mnist_cnn(&dev, args.seed)?, *unit)?,
            Arch::WsGnResNet => {
                let m = models::ws_gn_resnet(args.width, &[1, 1, 1], true, &dev, args.seed)?;
                run(&setup, name, m, *unit)?
            }
        };
        eprintln!("{line}");
        runs.push(rec);
        lines.push(line);
    }

    std::fs::write(args.out.join("records.json"), serde_json::to_vec(&runs)?)?;
    let title = |what: &str| format!("{what}, (ε, δ) = ({}, {})", args.epsilon, args.delta);
    let mut acc = LinePlot::new(title("test accuracy"), "epoch", "accuracy");
    let mut bias = LinePlot::new(
        title("relative clipping bias ‖ḡ_c − ḡ‖/‖ḡ‖ (probe)"),
        "step",
        "bias",
    );
    let mut spread = LinePlot::new(
        title("relative spread V/‖ḡ‖² of the clipped quantity (probe)"),
        "step",
        "spread",
    );
    let mut snr = LinePlot::new(title("SNR ‖Σ clip‖/(σ·S·√d) (probe)"), "step", "SNR");
    for r in &runs {
        let xs: Vec<f64> = r.probes.iter().map(|p| p.step as f64).collect();
        let series = |f: fn(&Probe) -> f64| {
            Series::new(
                r.config.clone(),
                xs.clone(),
                r.probes.iter().map(f).collect(),
            )
        };
        acc = acc.with_series(Series::new(
            r.config.clone(),
            r.epochs.iter().map(|e| e.0 as f64).collect(),
            r.epochs.iter().map(|e| e.1).collect(),
        ));
        bias = bias.with_series(series(|p| p.relative_bias));
        spread = spread.with_series(series(|p| p.relative_spread));
        snr = snr.with_series(series(|p| p.snr));
    }
    for (file, plot) in [
        ("accuracy.png", &acc),
        ("relative_bias.png", &bias),
        ("relative_spread.png", &spread),
        ("snr.png", &snr),
    ] {
        line_plot(args.out.join(file), plot)?;
    }
    eprintln!("\nwrote plots and records.json into {}", args.out.display());
    for l in lines {
        println!("{l}");
    }
    Ok(())
}
