//! Samples per second of one training step: non-private, DP with materialised per-sample
//! gradients, and DP with ghost norms + book-keeping, on the models of the DP literature.
//!
//! ```text
//! cargo run --release --example bench_step -- --json
//! ```
//!
//! A "step" is everything a training step does, through the same function the trainer
//! calls (`dp_optim::take_step`): forward, backward, per-example norms, clip weights,
//! clipped sum, Gaussian noise (DP modes), division by the expected batch size and an SGD
//! update (dp-optim's `Sgd`). Inputs are real digits from the bundled MNIST subset for the
//! MNIST models and random images for the CIFAR-sized models (no CIFAR-10 offline; the
//! speed does not depend on pixel values).
//!
//! `--graph` measures instead the cost of writing a model as a `dp_core::graph::GraphModel`
//! (glue differentiated by candle's autograd) against the hand-written `Sequential`, on the
//! same MLP and MNIST CNN, DP step with ghost norms + book-keeping: `graph_chain` calls the
//! same layers through the graph context (the probe overhead alone), `graph_glue` writes
//! the activations and the flatten as candle ops (what a user's own forward looks like).

// Training allocates and frees large activation buffers every step; glibc's allocator
// returns them to the OS each time (mmap/munmap + page faults, ~20% of a CNN step here).
// mimalloc keeps them. Library users choose their own allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use dp_lab::core::clipping::FlatClip;
use dp_lab::core::graph::GraphModel;
use dp_lab::core::layers::{Conv2d, Conv2dConfig, Linear, MaxPool2d};
use dp_lab::core::Init;
use dp_lab::core::{
    models, CrossEntropy, GaussianNoise, GradMode, GradOptions, GradientMask, Model, Prunable,
    PruneScope, Sequential,
};
use dp_lab::optim::{
    batch_tensors, take_step, Bam, PlanContext, PrivacyMethod, Regime, Sgd, StepEnv, StepPlan,
};
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Seconds to measure each (model, mode) pair, split over the rounds.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Interleaved measurement rounds per model; the median round is reported.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Only models whose name contains this string.
    #[arg(long)]
    filter: Option<String>,
    /// Measure GraphModel (autograd glue) against Sequential instead (see the module docs).
    #[arg(long)]
    graph: bool,
    /// Only this mode (non_private, dp_materialized, dp_ghost_bookkeeping, dp_bam, dp_pruned_90); for profiling.
    #[arg(long)]
    mode: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    NonPrivate,
    Materialize,
    Ghost,
    /// BAM (Knolle et al. 2023): a second forward/backward at per-example ascent points.
    Bam,
    /// DP-SGD under a 90% magnitude-pruning mask (per layer, from the initial weights):
    /// norms over the active coordinates, masked sums, noise and weights.
    Pruned90,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::NonPrivate => "non_private",
            Mode::Materialize => "dp_materialized",
            Mode::Ghost => "dp_ghost_bookkeeping",
            Mode::Bam => "dp_bam",
            Mode::Pruned90 => "dp_pruned_90",
        }
    }
}

/// One full step through dp-optim's step function (the trainer's): flat clipping to 1,
/// σ = 1, divided by the batch size, plain SGD. Non-private steps take the ordinary
/// gradient (no norms, no noise).
fn step<M: Model>(
    model: &mut M,
    x: &Tensor,
    y: &Tensor,
    mode: Mode,
    mask: Option<&GradientMask>,
    noise: &mut GaussianNoise,
    opt: &mut Sgd,
) -> Result<()> {
    let b = x.dim(0)? as f64;
    // "Ghost" is the mixed rule of Bu et al. 2022: ghost norms where they are cheaper
    // (linear layers), materialised norms elsewhere (early convs).
    let (regime, grad_mode) = match mode {
        Mode::NonPrivate => (Regime::NonPrivate, GradMode::Auto),
        Mode::Materialize => (Regime::Private, GradMode::Materialize),
        Mode::Ghost | Mode::Bam | Mode::Pruned90 => (Regime::Private, GradMode::Auto),
    };
    let opts = GradOptions {
        mask: mask.cloned(),
        ..GradOptions::with_mode(grad_mode)
    };
    let env = StepEnv {
        regime,
        loss: &CrossEntropy,
        grad_options: &opts,
    };
    let mut plan = if mode == Mode::Bam {
        let ctx = PlanContext {
            step: 0,
            expected_batch_size: b,
            rescale_by_clip_norm: false,
        };
        Bam::new(1.0, 1.0)?.plan(&ctx)?
    } else {
        StepPlan::new(Box::new(FlatClip::new(1.0)?), 1.0, b)?
    };
    take_step(
        model,
        &mut std::iter::once(Ok((x.clone(), y.clone()))),
        &mut plan,
        &env,
        noise,
        opt,
    )?;
    Ok(())
}

fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() -> Result<()> {
    dp_lab::allocator::keep_freed_pages();
    // Before any tensor op: candle's element-wise pool must not spin against the GEMMs.
    dp_lab::core::configure_cpu_threads();
    let args = Args::parse();
    let dev = Device::Cpu;
    let data = dp_lab::data::load_bundled_mnist()?;
    if args.graph {
        return bench_graph(&args, &data);
    }
    let mnist_batch = |b: usize| -> Result<(Tensor, Tensor)> {
        let idx: Vec<usize> = (0..b).collect();
        Ok(batch_tensors(&data.train, &idx, &dev)?)
    };
    let cifar_batch = |b: usize| -> Result<(Tensor, Tensor)> {
        let x = Tensor::randn(0f32, 1., (b, 3, 32, 32), &dev)?;
        let y = Tensor::from_vec((0..b as u32).map(|i| i % 10).collect::<Vec<_>>(), b, &dev)?;
        Ok((x, y))
    };
    type Build = Box<dyn Fn() -> Result<Sequential>>;
    let configs: Vec<(&str, usize, Build, bool)> = vec![
        (
            "mlp_784_256_256_10",
            256,
            Box::new(|| Ok(models::mlp(&[784, 256, 256, 10], &Device::Cpu, 0)?)),
            true,
        ),
        (
            "mnist_cnn",
            256,
            Box::new(|| Ok(models::mnist_cnn(&Device::Cpu, 0)?)),
            true,
        ),
        (
            "cifar_cnn",
            128,
            Box::new(|| Ok(models::cifar_cnn(&Device::Cpu, 0, false)?)),
            false,
        ),
        (
            "cifar_cnn_groupnorm",
            128,
            Box::new(|| Ok(models::cifar_cnn(&Device::Cpu, 0, true)?)),
            false,
        ),
    ];
    if !args.json {
        println!(
            "{:<22} {:<22} {:>6} {:>12} {:>10} {:>8}",
            "model", "mode", "batch", "samples/s", "ms/step", "vs np"
        );
    }
    for (name, b, build, is_mnist) in configs {
        if let Some(f) = &args.filter {
            if !name.contains(f.as_str()) {
                continue;
            }
        }
        let (x, y) = if is_mnist {
            mnist_batch(b)?
        } else {
            cifar_batch(b)?
        };
        let x = x.to_dtype(DType::F32)?;
        // Every mode of this model is set up first and measured in interleaved rounds;
        // each mode's time is the median over rounds, so a burst of background load on a
        // shared machine does not land on one mode only.
        struct Run {
            mode: Mode,
            model: Sequential,
            mask: Option<GradientMask>,
            noise: GaussianNoise,
            opt: Sgd,
            round_ms: Vec<f64>,
            steps: usize,
        }
        let mut runs = Vec::new();
        for mode in [
            Mode::NonPrivate,
            Mode::Materialize,
            Mode::Ghost,
            Mode::Bam,
            Mode::Pruned90,
        ] {
            if args.mode.as_deref().is_some_and(|m| m != mode.name()) {
                continue;
            }
            let model = build()?;
            let mask = match mode {
                Mode::Pruned90 => Some(GradientMask::magnitude(
                    &model.param_tensors(),
                    0.9,
                    PruneScope::PerLayer,
                    Prunable::Weights,
                )?),
                _ => None,
            };
            let mut run = Run {
                mode,
                model,
                mask,
                noise: GaussianNoise::seeded(0),
                opt: Sgd::new(0.01),
                round_ms: Vec::new(),
                steps: 0,
            };
            // Warm-up; BAM needs per-example parameter offsets in every layer, which not
            // every benchmark model has (GroupNorm): those skip BAM and say so.
            let warm = (0..2).try_for_each(|_| {
                step(
                    &mut run.model,
                    &x,
                    &y,
                    mode,
                    run.mask.as_ref(),
                    &mut run.noise,
                    &mut run.opt,
                )
            });
            match warm {
                Ok(()) => runs.push(run),
                Err(e) if mode == Mode::Bam => eprintln!("{name}: dp_bam skipped: {e}"),
                Err(e) => return Err(e),
            }
        }
        let per_round = args.seconds / args.rounds.max(1) as f64;
        for _ in 0..args.rounds.max(1) {
            for run in runs.iter_mut() {
                let start = Instant::now();
                let mut steps = 0usize;
                while steps < 2 || start.elapsed().as_secs_f64() < per_round {
                    step(
                        &mut run.model,
                        &x,
                        &y,
                        run.mode,
                        run.mask.as_ref(),
                        &mut run.noise,
                        &mut run.opt,
                    )?;
                    steps += 1;
                }
                run.round_ms
                    .push(start.elapsed().as_secs_f64() * 1e3 / steps as f64);
                run.steps += steps;
            }
        }
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let base_ms = runs
            .iter()
            .find(|r| r.mode == Mode::NonPrivate)
            .map(|r| median(&r.round_ms));
        for run in &runs {
            let ms = median(&run.round_ms);
            let ratio = base_ms.map(|b| ms / b).unwrap_or(1.0);
            let sps = b as f64 / (ms / 1e3);
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "model": name, "mode": run.mode.name(), "batch": b,
                        "samples_per_s": (sps * 10.0).round() / 10.0,
                        "ms_per_step": (ms * 1000.0).round() / 1000.0,
                        "time_vs_non_private": (ratio * 1000.0).round() / 1000.0,
                        "peak_rss_mb": peak_rss_mb(),
                        "steps_measured": run.steps,
                        "rounds": run.round_ms.len(),
                        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                    })
                );
            } else {
                println!(
                    "{:<22} {:<22} {:>6} {:>12.0} {:>10.2} {:>8.2}",
                    name,
                    run.mode.name(),
                    b,
                    sps,
                    ms,
                    ratio
                );
            }
        }
    }
    Ok(())
}

/// The MNIST CNN of `models::mnist_cnn` (same layers, same initialisation) with the tanh
/// activations, the input reshape and the flatten written as candle ops in the glue.
fn mnist_cnn_glue(seed: u64) -> Result<GraphModel> {
    let dev = Device::Cpu;
    let mut init = Init::seeded(seed);
    Ok(GraphModel::new(&dev, |g, x| {
        let b = x.dim(0)?;
        let h = g.layer(0, &x.reshape((b, 28, 28, 1))?)?.tanh()?;
        let h = g.layer(1, &h)?;
        let h = g.layer(2, &h)?.tanh()?;
        let h = g.layer(3, &h)?.flatten_from(1)?;
        let h = g.layer(4, &h)?.tanh()?;
        g.layer(5, &h)
    })
    .push(Conv2d::new(
        Conv2dConfig::new(1, 16, 8).stride(2).padding(3),
        &mut init,
        &dev,
    )?)
    .push(MaxPool2d::new(2, 1))
    .push(Conv2d::new(
        Conv2dConfig::new(16, 32, 4).stride(2),
        &mut init,
        &dev,
    )?)
    .push(MaxPool2d::new(2, 1))
    .push(Linear::new(512, 32, true, &mut init, &dev)?)
    .push(Linear::new(32, 10, true, &mut init, &dev)?))
}

/// `models::mlp(&[784, 256, 256, 10])` with the ReLUs and the flatten as candle ops.
fn mlp_glue(seed: u64) -> Result<GraphModel> {
    let dev = Device::Cpu;
    let mut init = Init::seeded(seed);
    Ok(GraphModel::new(&dev, |g, x| {
        let h = g.layer(0, &x.flatten_from(1)?)?.relu()?;
        let h = g.layer(1, &h)?.relu()?;
        g.layer(2, &h)
    })
    .push(Linear::new(784, 256, true, &mut init, &dev)?)
    .push(Linear::new(256, 256, true, &mut init, &dev)?)
    .push(Linear::new(256, 10, true, &mut init, &dev)?))
}

enum Bench {
    Seq(Sequential),
    Graph(GraphModel),
}

fn bench_graph(args: &Args, data: &dp_lab::data::TrainTest) -> Result<()> {
    let dev = Device::Cpu;
    type Build = Box<dyn Fn() -> Result<Sequential>>;
    type BuildGlue = Box<dyn Fn() -> Result<GraphModel>>;
    let configs: Vec<(&str, Build, BuildGlue)> = vec![
        (
            "mlp_784_256_256_10",
            Box::new(|| Ok(models::mlp(&[784, 256, 256, 10], &Device::Cpu, 0)?)),
            Box::new(|| mlp_glue(0)),
        ),
        (
            "mnist_cnn",
            Box::new(|| Ok(models::mnist_cnn(&Device::Cpu, 0)?)),
            Box::new(|| mnist_cnn_glue(0)),
        ),
    ];
    let b = 256;
    let idx: Vec<usize> = (0..b).collect();
    let (x, y) = batch_tensors(&data.train, &idx, &dev)?;
    if !args.json {
        println!(
            "{:<22} {:<14} {:>6} {:>12} {:>10} {:>12}",
            "model", "variant", "batch", "samples/s", "ms/step", "vs seq"
        );
    }
    for (name, build, build_glue) in configs {
        if let Some(f) = &args.filter {
            if !name.contains(f.as_str()) {
                continue;
            }
        }
        let mut runs: Vec<(&str, Bench, Vec<f64>)> = vec![
            ("sequential", Bench::Seq(build()?), Vec::new()),
            (
                "graph_chain",
                Bench::Graph(GraphModel::chain(build()?)),
                Vec::new(),
            ),
            ("graph_glue", Bench::Graph(build_glue()?), Vec::new()),
        ];
        let mut noise = GaussianNoise::seeded(0);
        let mut opt = Sgd::new(0.01);
        let mut one = |m: &mut Bench| -> Result<()> {
            match m {
                Bench::Seq(m) => step(m, &x, &y, Mode::Ghost, None, &mut noise, &mut opt),
                Bench::Graph(m) => step(m, &x, &y, Mode::Ghost, None, &mut noise, &mut opt),
            }
        };
        for (_, m, _) in runs.iter_mut() {
            one(m)?;
            one(m)?;
        }
        let per_round = args.seconds / args.rounds.max(1) as f64;
        for _ in 0..args.rounds.max(3) {
            for (_, m, ms) in runs.iter_mut() {
                let start = Instant::now();
                let mut steps = 0usize;
                while steps < 2 || start.elapsed().as_secs_f64() < per_round {
                    one(m)?;
                    steps += 1;
                }
                ms.push(start.elapsed().as_secs_f64() * 1e3 / steps as f64);
            }
        }
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let base = median(&runs[0].2);
        for (variant, _, ms) in &runs {
            let m = median(ms);
            let ratio = m / base;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "model": name, "variant": variant, "mode": "dp_ghost_bookkeeping",
                        "batch": b,
                        "samples_per_s": ((b as f64 / (m / 1e3)) * 10.0).round() / 10.0,
                        "ms_per_step": (m * 1000.0).round() / 1000.0,
                        "time_vs_sequential": (ratio * 1000.0).round() / 1000.0,
                        "rounds": ms.len(),
                    })
                );
            } else {
                println!(
                    "{:<22} {:<14} {:>6} {:>12.0} {:>10.2} {:>12.3}",
                    name,
                    variant,
                    b,
                    b as f64 / (m / 1e3),
                    m,
                    ratio
                );
            }
        }
    }
    Ok(())
}
