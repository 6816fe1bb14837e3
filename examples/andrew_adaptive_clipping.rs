//! Adaptive clipping to the median gradient norm (Andrew, Thakkar, McMahan, Ramaswamy,
//! NeurIPS 2021) against DP-SGD with fixed clip norms, at the same (ε, δ).
//!
//! ```text
//! cargo run --release --example andrew_adaptive_clipping                       # bundled MNIST digits
//! cargo run --release --example andrew_adaptive_clipping -- --dataset fashion-mnist
//! cargo run --release --example andrew_adaptive_clipping -- --dataset mnist --data-dir DIR
//! ```
//!
//! Every configuration trains the DP-literature tanh CNN (Tramèr & Boneh 2021) from the
//! same initialisation with Poisson sampling, SGD with momentum, and a noise multiplier
//! calibrated so that the planned steps spend exactly the budget. The adaptive run starts
//! at C₀ = 0.1 and follows the privately estimated median (γ = 0.5, η_C = 0.2,
//! σ_b = B/20); its count query is paid for by splitting the noise (one SGM per step).
//! The paper's claim: adaptive median clipping lands within about one point of the best
//! fixed C chosen in hindsight, and C_t tracks the median within a few hundred steps.
//!
//! Updates are divided by `B·C_t` (De et al. 2022's unit-norm rescaling; `C_t` is public)
//! so that one learning rate serves every clip norm: without it (`--no-rescale`) the
//! update grows with `C` and a large adaptive `C` needs a smaller learning rate, which
//! turns the comparison into one of learning-rate tuning.
//!
//! The "true median" printed beside C_t is the median of the realised batch's
//! per-example norms: an analysis value from private data, logged only, never used.
//!
//! Writes `records.json`, `epochs.csv`, `clip_vs_median.png` and `accuracy.png` into
//! `--out` (default `target/andrew_adaptive_clipping/`), and ends with one JSON line per
//! configuration.

// Training allocates and frees large activation buffers every step; glibc's allocator
// returns them to the OS each time (mmap/munmap + page faults, ~20% of a CNN step here).
// mimalloc keeps them. Library users choose their own allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::{Data, Loaded};

use anyhow::{Context, Result};
use candle_core::Device;
use clap::Parser;
use dp_lab::accounting::AccountantKind;
use dp_lab::core::models;
use dp_lab::metrics::plot::{line_plot, LinePlot, Series};
use dp_lab::optim::{
    AdaptiveQuantileClip, BatchSize, Delta, EpochRecord, Epochs, FixedClip, PrivacyMethod,
    PrivateTrainer, Sgd, StepRecord, TrainerConfig,
};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Andrew et al. 2021 adaptive clipping vs fixed clipping at equal privacy")]
struct Args {
    #[arg(long, value_enum, default_value = "bundled")]
    dataset: Data,
    /// Directory with the dataset's standard files.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Epochs per configuration.
    #[arg(long, default_value_t = 15.0)]
    epochs: f64,
    /// Expected (Poisson) batch size.
    #[arg(long, default_value_t = 128.0)]
    batch_size: f64,
    /// Learning rate (SGD, momentum 0.9), the same for every configuration. With the
    /// default unit-norm rescaling it is the step per unit of clipped gradient.
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// Divide the noisy sum by B instead of B·C (plain DP-SGD normalisation): then the
    /// update grows with C and each C needs its own learning rate.
    #[arg(long)]
    no_rescale: bool,
    /// Fixed clip norms to compare.
    #[arg(long, value_delimiter = ',', default_value = "0.03,0.1,0.3,1.0")]
    fixed: Vec<f64>,
    /// Target ε (δ below); σ is calibrated to spend it.
    #[arg(long, default_value_t = 3.0)]
    epsilon: f64,
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory.
    #[arg(long, default_value = "target/andrew_adaptive_clipping")]
    out: PathBuf,
}

#[derive(Serialize)]
struct RunRecord {
    method: String,
    steps: Vec<StepRecord>,
    epochs: Vec<EpochRecord>,
}

fn main() -> Result<()> {
    dp_lab::allocator::keep_freed_pages();
    // Before any tensor op: candle's element-wise pool must not spin against the GEMMs.
    dp_lab::core::configure_cpu_threads();
    let args = Args::parse();
    let dev = Device::Cpu;
    let Loaded { data, label, .. } = args.dataset.load_reported(args.data_dir.as_deref())?;
    std::fs::create_dir_all(&args.out)?;

    let mut methods: Vec<(String, Box<dyn PrivacyMethod>)> = args
        .fixed
        .iter()
        .map(|&c| {
            Ok((
                format!("fixed C={c}"),
                Box::new(FixedClip::new(c, 1.0)?) as Box<dyn PrivacyMethod>,
            ))
        })
        .collect::<Result<_>>()?;
    methods.push((
        "adaptive median".into(),
        Box::new(AdaptiveQuantileClip::new(1.0, args.batch_size)?),
    ));

    let mut runs = Vec::new();
    let mut summaries = Vec::new();
    for (label_m, method) in methods {
        let model = models::mnist_cnn(&dev, args.seed)?;
        let cfg = TrainerConfig::new(
            Epochs(args.epochs),
            BatchSize(args.batch_size),
            Delta(args.delta),
        )
        .with_budget(args.epsilon)
        .calibrate_noise_from_budget()
        .with_accountant(AccountantKind::Rdp)
        .with_seed(args.seed)
        .with_max_physical_batch(512)
        .with_rescale_by_clip_norm(!args.no_rescale)
        .with_progress(true);
        let opt = Sgd::new(args.lr).with_momentum(0.9);
        let mut t = PrivateTrainer::new(model, Box::new(opt), method, cfg, &data.train)?;
        for w in t.warnings() {
            eprintln!("warning: {w}");
        }
        eprintln!(
            "\n== {label_m}: q = {:.4}, {} steps, σ = {:.4}",
            t.sampling_rate(),
            t.total_steps(),
            t.method().noise_multiplier(),
        );
        let report = t.train(&data.train, Some(&data.test))?;
        if let Some(first) = t.records().first() {
            // σ_Δ of the gradient sum after Andrew et al.'s split (= σ for fixed clipping).
            eprintln!("gradient σ = {:.4}", first.noise_std / first.sensitivity);
        }
        let per_epoch = t.steps_per_epoch() as usize;
        for e in t.epoch_records() {
            let lo = (e.step as usize).saturating_sub(per_epoch);
            let window = &t.records()[lo..e.step as usize];
            let med: Vec<f64> = window.iter().filter_map(|r| r.median_norm).collect();
            let med = med.iter().sum::<f64>() / med.len().max(1) as f64;
            eprintln!(
                "epoch {:>3}  test acc {:6.2}%  ε {:.3}  C_t {:.4}  median ‖g‖ {:.4}",
                e.epoch,
                100.0 * e.test_accuracy.unwrap_or(f64::NAN),
                e.epsilon,
                e.clip_norm,
                med
            );
        }
        summaries.push(serde_json::json!({
            "example": "andrew_adaptive_clipping",
            "method": label_m,
            "dataset": label,
            "test_accuracy": report.test_accuracy,
            "epsilon": report.epsilon,
            "delta": report.delta,
            "steps": report.steps,
            "seconds": (report.seconds * 10.0).round() / 10.0,
            "noise_multiplier": report.noise_multiplier,
            "final_clip_norm": t.records().last().map(|r| r.clip_norm),
        }));
        runs.push(RunRecord {
            method: label_m,
            steps: t.records().to_vec(),
            epochs: t.epoch_records().to_vec(),
        });
    }

    // Records and plots.
    std::fs::write(args.out.join("records.json"), serde_json::to_vec(&runs)?)?;
    let mut csv = String::from("method,epoch,step,epsilon,test_accuracy,clip_norm\n");
    for r in &runs {
        for e in &r.epochs {
            csv += &format!(
                "{},{},{},{},{},{}\n",
                r.method,
                e.epoch,
                e.step,
                e.epsilon,
                e.test_accuracy.unwrap_or(f64::NAN),
                e.clip_norm
            );
        }
    }
    std::fs::write(args.out.join("epochs.csv"), csv)?;
    let adaptive = runs.last().context("no runs")?;
    let steps: Vec<f64> = adaptive.steps.iter().map(|s| s.step as f64).collect();
    let clip_png = args.out.join("clip_vs_median.png");
    line_plot(
        &clip_png,
        &LinePlot::new(
            "Adaptive clip norm vs the batch's median gradient norm",
            "step",
            "norm",
        )
        .with_series(Series::new(
            "C_t (private, adaptive)",
            steps.clone(),
            adaptive.steps.iter().map(|s| s.clip_norm).collect(),
        ))
        .with_series(Series::new(
            "median ||g_i|| (analysis only)",
            steps,
            adaptive
                .steps
                .iter()
                .map(|s| s.median_norm.unwrap_or(f64::NAN))
                .collect(),
        )),
    )?;
    let mut acc_plot = LinePlot::new(
        format!(
            "Test accuracy at (ε, δ) = ({}, {})",
            args.epsilon, args.delta
        ),
        "epoch",
        "test accuracy",
    );
    for r in &runs {
        acc_plot = acc_plot.with_series(Series::new(
            r.method.clone(),
            r.epochs.iter().map(|e| e.epoch as f64).collect(),
            r.epochs
                .iter()
                .map(|e| e.test_accuracy.unwrap_or(f64::NAN))
                .collect(),
        ));
    }
    let acc_png = args.out.join("accuracy.png");
    line_plot(&acc_png, &acc_plot)?;
    eprintln!(
        "\nwrote {}, {}, records.json, epochs.csv",
        clip_png.display(),
        acc_png.display()
    );
    for s in summaries {
        println!("{s}");
    }
    Ok(())
}
