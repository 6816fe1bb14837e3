//! Carrying out one run in a directory of its own: checkpoint every epoch, resume from the
//! last checkpoint, write the result atomically. What the directory holds:
//!
//! - `config.toml`: the resolved config (every field);
//! - `checkpoint/`: the trainer's last checkpoint (weights, optimiser, sampler, noise
//!   stream, accountant), replaced atomically each epoch;
//! - `epoch_metrics.jsonl`: the metrics computed every `metrics_every` epochs;
//! - `running.json` while a process works on the run;
//! - `result.json` once it finished ([`RunResult`]), or `error.json` if it failed;
//! - `model/`: the released weights and privacy report.

use super::config::{DatasetChoice, MaskSourceChoice, ModelChoice, Noise, RunConfig};
use super::error::{io, PipelineError, Result};
use super::metrics::{compute_metrics, Metrics};
use candle_core::Device;
use dp_core::weights::WeightFormat;
use dp_core::{models, Prunable, PruneScope, Sequential};
use dp_data::{DatasetName, Normalize, TrainTest};
use dp_optim::methods::MethodContext;
use dp_optim::{
    Adam, AdamBc, BaseOptimizer, BatchSize, Delta, EpochRecord, Epochs, Guarantee, MaskSource,
    PrivacyMethod, PrivateTrainer, Sgd, TrainReport, TrainerConfig, TrainingMask,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The result of a finished run (`result.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The run's id in its sweep (or the name given to `dp-lab train`).
    pub run_id: String,
    /// The resolved config.
    pub config: RunConfig,
    /// The dataset's name in reports.
    pub dataset: String,
    /// Whether the run is differentially private (ε finite).
    pub dp: bool,
    /// What ε certifies.
    pub guarantee: Guarantee,
    /// ε spent; `None` when the run is not DP (never a finite number for such a run).
    pub epsilon: Option<f64>,
    /// δ.
    pub delta: f64,
    /// The (calibrated) noise multiplier.
    pub noise_multiplier: f64,
    /// Steps taken.
    pub steps: u64,
    /// Final test accuracy.
    pub test_accuracy: Option<f64>,
    /// Wall-clock seconds of training in the process that finished the run.
    pub seconds: f64,
    /// The step the run resumed from (0 for a run that never stopped).
    pub resumed_from_step: u64,
    /// The trainer's report of the last piece of training.
    pub report: TrainReport,
    /// The per-epoch records (test accuracy, ε so far).
    pub epochs: Vec<EpochRecord>,
    /// Metrics of the final model (analysis only).
    pub metrics: Metrics,
    /// Metrics every `metrics_every` epochs.
    pub metrics_by_epoch: Vec<EpochMetrics>,
    /// The first stage of a `mask_source = "released"` run (its epochs precede `epochs`).
    #[serde(default)]
    pub first_stage: Option<FirstStage>,
    /// Where the run's pruning mask came from (`None`: dense), as the trainer states it.
    #[serde(default)]
    pub mask: Option<MaskSource>,
    /// Where the process that finished the run spent its time.
    #[serde(default)]
    pub timing: RunTiming,
}

/// Wall-clock seconds of the phases of the process that finished a run (what the pipeline
/// adds to training is `load` and `finish`, plus the process start before `load`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RunTiming {
    /// Loading (and normalising) the dataset.
    pub load: f64,
    /// Building the model, optimiser and method, calibrating σ, building the trainer (or
    /// resuming it), a first stage or public model included.
    pub setup: f64,
    /// The training loop with its per-epoch checkpoints and metrics.
    pub train: f64,
    /// The final metrics.
    pub metrics: f64,
    /// Releasing the model (the result file is written after this is measured).
    pub finish: f64,
}

/// The first, dense stage of a released-mask run: its weights are pruned and re-trained by
/// the second stage, whose ε ([`RunResult::epsilon`]) includes this stage's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FirstStage {
    /// Steps of the first stage.
    pub steps: u64,
    /// ε spent by the first stage alone.
    pub epsilon: f64,
    /// Test accuracy of the released (dense) weights.
    pub test_accuracy: Option<f64>,
    /// Its per-epoch records.
    pub epochs: Vec<EpochRecord>,
}

/// The metrics of one epoch (analysis only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch (1-based).
    pub epoch: u64,
    /// Values by name.
    pub metrics: Metrics,
}

/// The files of a run directory.
#[derive(Debug, Clone)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    /// `config.toml`.
    pub fn config(&self) -> PathBuf {
        self.0.join("config.toml")
    }
    /// `result.json`.
    pub fn result(&self) -> PathBuf {
        self.0.join("result.json")
    }
    /// `error.json`.
    pub fn error(&self) -> PathBuf {
        self.0.join("error.json")
    }
    /// `running.json`.
    pub fn running(&self) -> PathBuf {
        self.0.join("running.json")
    }
    /// `checkpoint/`.
    pub fn checkpoint(&self) -> PathBuf {
        self.0.join("checkpoint")
    }
    /// `stage1/`: the first stage of a released-mask run (its checkpoint and summary).
    pub fn first_stage(&self) -> PathBuf {
        self.0.join("stage1")
    }
    /// `epoch_metrics.jsonl`.
    pub fn epoch_metrics(&self) -> PathBuf {
        self.0.join("epoch_metrics.jsonl")
    }
    /// The finished result, if any.
    pub fn read_result(&self) -> Option<RunResult> {
        let bytes = std::fs::read(self.result()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsynced,
/// then renamed over `path`. A crash leaves the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn dataset_name(d: DatasetChoice) -> (DatasetName, Normalize) {
    match d {
        DatasetChoice::Bundled => (DatasetName::BundledMnist, Normalize::mnist()),
        DatasetChoice::Mnist => (DatasetName::Mnist, Normalize::mnist()),
        DatasetChoice::FashionMnist => (DatasetName::FashionMnist, Normalize::fashion_mnist()),
    }
}

/// Loads the run's dataset, normalised with its per-pixel mean and std (public constants).
pub fn load_dataset(cfg: &RunConfig) -> Result<TrainTest> {
    let data = load_normalised(cfg.dataset, cfg.data_dir.as_deref())?;
    check_train_len(cfg, &data)?;
    Ok(data)
}

fn load_normalised(choice: DatasetChoice, dir: Option<&Path>) -> Result<TrainTest> {
    let (name, norm) = dataset_name(choice);
    let (mut data, _) = dp_data::load(name, dir)?;
    norm.apply_dataset(&mut data.train)?;
    norm.apply_dataset(&mut data.test)?;
    Ok(data)
}

/// Refuses a dataset whose training split is not the size the run's config is for.
fn check_train_len(cfg: &RunConfig, data: &TrainTest) -> Result<()> {
    if data.train.len() != cfg.dataset.train_len() {
        return Err(PipelineError::Other(format!(
            "{} has {} training examples, expected {}",
            cfg.dataset.label(),
            data.train.len(),
            cfg.dataset.train_len()
        )));
    }
    Ok(())
}

/// Datasets a worker process has loaded, kept for its next runs: a pool worker works on
/// many runs of a sweep, and loading (decompressing, parsing, normalising) the same data for
/// each would cost more than a short run's training. Keyed by dataset and directory; the
/// data are normalised by public constants and never changed by a run.
#[derive(Default)]
pub struct DataCache {
    loaded: HashMap<(DatasetChoice, Option<PathBuf>), Arc<TrainTest>>,
}

impl DataCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The run's dataset (what [`load_dataset`] returns), loaded once.
    pub fn dataset(&mut self, cfg: &RunConfig) -> Result<Arc<TrainTest>> {
        let data = self.load(cfg.dataset, cfg.data_dir.as_deref())?;
        check_train_len(cfg, &data)?;
        Ok(data)
    }

    /// `choice` from `dir`, normalised, loaded once (no size check: also the public
    /// dataset of a run).
    fn load(&mut self, choice: DatasetChoice, dir: Option<&Path>) -> Result<Arc<TrainTest>> {
        let key = (choice, dir.map(Path::to_path_buf));
        if let Some(d) = self.loaded.get(&key) {
            return Ok(d.clone());
        }
        let d = Arc::new(load_normalised(choice, dir)?);
        self.loaded.insert(key, d.clone());
        Ok(d)
    }
}

pub(crate) fn build_model(cfg: &RunConfig, dev: &Device) -> Result<Sequential> {
    Ok(match cfg.model {
        ModelChoice::MnistCnn => models::mnist_cnn(dev, cfg.seed)?,
        ModelChoice::EsipovaCnn => models::esipova_cnn(dev, cfg.seed)?,
        ModelChoice::Mlp => {
            let mut dims = vec![784];
            dims.extend(&cfg.mlp_hidden);
            dims.push(10);
            models::mlp(&dims, dev, cfg.seed)?
        }
    })
}

fn build_optimizer(cfg: &RunConfig) -> Result<Box<dyn BaseOptimizer>> {
    let o = &cfg.optimizer;
    Ok(match o.name.as_str() {
        "sgd" => Box::new(
            Sgd::try_new(o.lr)?
                .with_momentum(o.momentum)
                .with_weight_decay(o.weight_decay),
        ),
        "adam" => Box::new(Adam::try_new(o.lr)?),
        "adamw" => Box::new(Adam::try_new(o.lr)?.with_weight_decay(o.weight_decay)),
        "adam_bc" => Box::new(AdamBc::new(o.lr)),
        other => {
            return Err(PipelineError::config(
                "",
                "optimizer.name",
                format!("unknown optimizer '{other}'"),
            ))
        }
    })
}

/// What pruning ranks: the weights (biases and norm parameters are kept).
const PRUNABLE: Prunable = Prunable::Weights;

fn trainer_config(cfg: &RunConfig, epochs: f64) -> Result<TrainerConfig> {
    let mut t = TrainerConfig::new(Epochs(epochs), BatchSize(cfg.batch_size), Delta(cfg.delta))
        .with_seed(cfg.seed)
        .with_regime(cfg.regime()?)
        .with_max_physical_batch(cfg.max_physical_batch)
        .with_accountant(
            cfg.accountant
                .parse()
                .map_err(|e: String| PipelineError::config("", "accountant", e))?,
        )
        .with_clipping_bias(cfg.metrics.iter().any(|m| m == "clipping_bias"));
    if let Noise::Budget(eps) = cfg.noise()? {
        t = t.with_budget(eps).calibrate_noise_from_budget();
    }
    Ok(t)
}

/// What a run reports while it trains: `(steps done, steps planned)` after every step.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Carries out the run in `dir`: resumes from its checkpoint if there is one, trains epoch by
/// epoch with a checkpoint after each, computes the metrics, releases the model and writes
/// `result.json` atomically. `run_id` names it in the result.
pub fn execute(cfg: &RunConfig, run_id: &str, dir: &Path, progress: Progress) -> Result<RunResult> {
    execute_with(cfg, run_id, dir, progress, &mut DataCache::new())
}

/// [`execute`] with the datasets of `cache` (loaded into it when missing).
pub fn execute_with(
    cfg: &RunConfig,
    run_id: &str,
    dir: &Path,
    progress: Progress,
    cache: &mut DataCache,
) -> Result<RunResult> {
    cfg.validate("")?;
    let rd = RunDir(dir.to_path_buf());
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let dev = Device::Cpu;
    let t_load = std::time::Instant::now();
    let data = cache.dataset(cfg)?;
    let mut timing = RunTiming {
        load: t_load.elapsed().as_secs_f64(),
        ..RunTiming::default()
    };
    let t_setup = std::time::Instant::now();
    let scope = if cfg.prune_scope == "per_layer" {
        PruneScope::PerLayer
    } else {
        PruneScope::Global
    };
    // The released-mask pipeline's second stage trains the epochs after the first.
    let two_stage = cfg.sparsity > 0.0 && cfg.mask_source == MaskSourceChoice::Released;
    let stage_epochs = if two_stage {
        cfg.whole_epochs() - first_stage_epochs(cfg)
    } else {
        cfg.whole_epochs()
    };
    let mut first_stage = None;
    let (mut trainer, resumed_from_step) = if dir.join("checkpoint/manifest.json").exists() {
        let (m, o, meth) = fresh_parts(cfg, &dev)?;
        let t = PrivateTrainer::resume(rd.checkpoint(), m, o, meth, &data.train, &dev)?;
        if two_stage {
            first_stage = read_first_stage(&rd)?;
        }
        let s = t.steps_taken();
        (t, s)
    } else {
        let (m, o, meth) = fresh_parts(cfg, &dev)?;
        let (m, mask) = match (cfg.sparsity > 0.0, cfg.mask_source) {
            (false, _) => (m, None),
            // The run's own initial weights (data-independent, free).
            (true, MaskSourceChoice::Init) => {
                let mask = TrainingMask::at_initialisation(&m, cfg.sparsity, scope, PRUNABLE)?;
                (m, Some(mask))
            }
            (true, MaskSourceChoice::Public) => {
                let (public, label) = train_public_model(cfg, &dev, cache)?;
                let mask =
                    TrainingMask::from_public_model(&public, label, cfg.sparsity, scope, PRUNABLE)?;
                (m, Some(mask))
            }
            // A first private stage, whose released weights are ranked and then re-trained:
            // the mask carries that stage's accounting into the second.
            (true, MaskSourceChoice::Released) => {
                let (first, summary) = run_first_stage(cfg, &rd, &data, &dev, progress)?;
                let mask = TrainingMask::from_released(&first, cfg.sparsity, scope, PRUNABLE)?;
                first_stage = Some(summary);
                (first.into_model(), Some(mask))
            }
        };
        let epochs = if two_stage {
            stage_epochs as f64
        } else {
            cfg.epochs
        };
        let mut b = PrivateTrainer::builder(m, o, meth, trainer_config(cfg, epochs)?);
        if let Some(mask) = mask {
            b = b.mask(mask);
        }
        (b.build(&data.train)?, 0)
    };
    let epoch_offset = cfg.whole_epochs() - stage_epochs;
    // Metrics of epochs before the checkpoint survive; later ones are recomputed.
    let mut by_epoch = read_epoch_metrics(&rd)?;
    let per_epoch = trainer.steps_per_epoch();
    let total = trainer.total_steps();
    by_epoch.retain(|m| m.epoch.saturating_sub(epoch_offset) * per_epoch <= trainer.steps_taken());
    let epochs = cfg.whole_epochs();
    timing.setup = t_setup.elapsed().as_secs_f64();
    let start = std::time::Instant::now();
    let mut report = None;
    while trainer.steps_taken() < total {
        let epoch = trainer.steps_taken() / per_epoch;
        trainer
            .optimizer_mut()
            .set_learning_rate(cfg.optimizer.lr_at(epoch_offset + epoch, epochs));
        let until = ((epoch + 1) * per_epoch).min(total);
        let before = trainer.steps_taken();
        let r = trainer.train_until_on(&data.train, Some(&data.test), &dev, until, &mut |rec| {
            progress(rec.step + 1, total)
        })?;
        let stopped = trainer.steps_taken() < until;
        trainer.save_checkpoint(rd.checkpoint())?;
        let done_epoch = epoch_offset + trainer.steps_taken().div_ceil(per_epoch);
        if cfg.metrics_every > 0
            && done_epoch.is_multiple_of(cfg.metrics_every)
            && trainer.steps_taken() < total
            && !stopped
        {
            let m = compute_metrics(cfg, &mut trainer, &data, &dev)?;
            let em = EpochMetrics {
                epoch: done_epoch,
                metrics: m,
            };
            append_epoch_metrics(&rd, &em)?;
            by_epoch.push(em);
        }
        report = Some(r);
        if stopped || trainer.steps_taken() == before {
            break; // the budget stopped it
        }
    }
    let report = match report {
        Some(r) => r,
        // Resumed at the end: nothing left to train, report what the checkpoint holds.
        None => trainer.train_until_on(&data.train, Some(&data.test), &dev, total, &mut |_| {})?,
    };
    timing.train = start.elapsed().as_secs_f64();
    let t_metrics = std::time::Instant::now();
    let metrics = compute_metrics(cfg, &mut trainer, &data, &dev)?;
    timing.metrics = t_metrics.elapsed().as_secs_f64();
    let t_finish = std::time::Instant::now();
    trainer.save_release(dir.join("model"))?;
    timing.finish = t_finish.elapsed().as_secs_f64();
    let dp = report.guarantee.is_private() && report.epsilon.is_finite();
    let result = RunResult {
        run_id: run_id.to_string(),
        config: cfg.clone(),
        dataset: cfg.dataset.label().to_string(),
        dp,
        guarantee: report.guarantee.clone(),
        epsilon: dp.then_some(report.epsilon),
        delta: cfg.delta,
        noise_multiplier: trainer.method().noise_multiplier(),
        steps: trainer.steps_taken() + first_stage.as_ref().map_or(0, |f| f.steps),
        test_accuracy: trainer.epoch_records().last().and_then(|e| e.test_accuracy),
        seconds: start.elapsed().as_secs_f64(),
        resumed_from_step,
        report,
        epochs: trainer.epoch_records().to_vec(),
        metrics,
        metrics_by_epoch: by_epoch,
        first_stage,
        mask: trainer.mask().map(|m| m.source().clone()),
        timing,
    };
    write_atomic(&rd.result(), &serde_json::to_vec_pretty(&result)?)?;
    Ok(result)
}

fn read_epoch_metrics(rd: &RunDir) -> Result<Vec<EpochMetrics>> {
    let path = rd.epoch_metrics();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&path)(e)),
    };
    // A line torn by a crash is dropped (its epoch is recomputed only if it is after the
    // checkpoint; otherwise that epoch's metrics are missing, which the result shows).
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn append_epoch_metrics(rd: &RunDir, m: &EpochMetrics) -> Result<()> {
    use std::io::Write;
    let path = rd.epoch_metrics();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io(&path))?;
    writeln!(f, "{}", serde_json::to_string(m)?).map_err(io(&path))?;
    f.sync_all().map_err(io(&path))?;
    Ok(())
}

/// What a trainer is built or resumed from.
type Parts = (Sequential, Box<dyn BaseOptimizer>, Box<dyn PrivacyMethod>);

/// A fresh model, optimiser and method for `cfg`, the method at the configured σ (replaced
/// by calibration for a target ε, unused without noise).
fn fresh_parts(cfg: &RunConfig, dev: &Device) -> Result<Parts> {
    let sigma = match cfg.noise()? {
        Noise::Sigma(s) => s,
        Noise::Budget(_) | Noise::None => 1.0,
    };
    let ctx = MethodContext {
        expected_batch_size: cfg.batch_size,
        steps_per_epoch: cfg.steps_per_epoch(),
    };
    Ok((
        build_model(cfg, dev)?,
        build_optimizer(cfg)?,
        cfg.method.build(sigma, &ctx)?,
    ))
}

/// Epochs of a released-mask run's first stage: `⌊epochs/2⌋`.
fn first_stage_epochs(cfg: &RunConfig) -> u64 {
    cfg.whole_epochs() / 2
}

fn read_first_stage(rd: &RunDir) -> Result<Option<FirstStage>> {
    let path = rd.first_stage().join("summary.json");
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path)(e)),
    }
}

/// The first stage of a released-mask run: the run's method at the σ calibrated for the
/// **whole** run, for `⌊epochs/2⌋` epochs, checkpointed every epoch in `stage1/` (so a killed
/// run resumes it); returns the trainer holding the released weights and its summary.
fn run_first_stage(
    cfg: &RunConfig,
    rd: &RunDir,
    data: &TrainTest,
    dev: &Device,
    progress: Progress,
) -> Result<(PrivateTrainer<Sequential>, FirstStage)> {
    let ck = rd.first_stage().join("checkpoint");
    let (m, o, meth) = fresh_parts(cfg, dev)?;
    let mut t = if ck.join("manifest.json").exists() {
        PrivateTrainer::resume(&ck, m, o, meth, &data.train, dev)?
    } else {
        // Configured for the whole run, so calibration gives the whole run's σ; it stops
        // half-way.
        PrivateTrainer::builder(m, o, meth, trainer_config(cfg, cfg.whole_epochs() as f64)?)
            .build(&data.train)?
    };
    let per_epoch = t.steps_per_epoch();
    let stop = first_stage_epochs(cfg) * per_epoch;
    let epochs = cfg.whole_epochs();
    while t.steps_taken() < stop {
        let epoch = t.steps_taken() / per_epoch;
        t.optimizer_mut()
            .set_learning_rate(cfg.optimizer.lr_at(epoch, epochs));
        let before = t.steps_taken();
        t.train_until_on(
            &data.train,
            Some(&data.test),
            dev,
            (epoch + 1) * per_epoch,
            &mut |r| progress(r.step + 1, 2 * stop),
        )?;
        t.save_checkpoint(&ck)?;
        if t.steps_taken() == before {
            return Err(PipelineError::Other(
                "the first stage of the released-mask run stopped early (budget)".into(),
            ));
        }
    }
    let summary = FirstStage {
        steps: t.steps_taken(),
        epsilon: t.epsilon()?,
        test_accuracy: t.epoch_records().last().and_then(|e| e.test_accuracy),
        epochs: t.epoch_records().to_vec(),
    };
    write_atomic(
        &rd.first_stage().join("summary.json"),
        &serde_json::to_vec_pretty(&summary)?,
    )?;
    Ok((t, summary))
}

/// The public dataset of a `mask_source = "public"` run: the other one of MNIST and
/// FashionMNIST (FashionMNIST for the bundled digits, which are MNIST digits).
fn public_dataset(cfg: &RunConfig) -> DatasetChoice {
    match cfg.dataset {
        DatasetChoice::Bundled | DatasetChoice::Mnist => DatasetChoice::FashionMnist,
        DatasetChoice::FashionMnist => DatasetChoice::Mnist,
    }
}

/// Trains the run's model non-privately on the first `train_len` examples of the public
/// dataset, with the run's optimiser, schedule, epochs and seed (the schedule scaled to
/// start at `public_lr` when set); returns it and its label.
fn train_public_model(
    cfg: &RunConfig,
    dev: &Device,
    cache: &mut DataCache,
) -> Result<(Sequential, String)> {
    let choice = public_dataset(cfg);
    let public = cache
        .load(choice, cfg.public_data_dir.as_deref())
        .map_err(|e| {
            PipelineError::Other(format!(
                "the public dataset of mask_source = \"public\" ({}): {e}",
                choice.label()
            ))
        })?;
    // Normalisation is per pixel, so the normalised subset is the subset normalised.
    let n = cfg.dataset.train_len().min(public.train.len());
    let train = public.train.subset(&(0..n).collect::<Vec<_>>());
    let tc = TrainerConfig::new(
        Epochs(cfg.whole_epochs() as f64),
        BatchSize(cfg.batch_size),
        Delta(cfg.delta),
    )
    .with_seed(cfg.seed)
    .with_regime(dp_optim::Regime::NonPrivate)
    .with_max_physical_batch(cfg.max_physical_batch);
    let method = Box::new(dp_optim::FixedClip::new(cfg.method.clip, 1.0)?);
    let mut t = PrivateTrainer::builder(build_model(cfg, dev)?, build_optimizer(cfg)?, method, tc)
        .build(&train)?;
    let per_epoch = t.steps_per_epoch();
    let epochs = cfg.whole_epochs();
    let scale = cfg.public_lr.map_or(1.0, |lr| lr / cfg.optimizer.lr);
    for epoch in 0..epochs {
        t.optimizer_mut()
            .set_learning_rate(scale * cfg.optimizer.lr_at(epoch, epochs));
        t.train_until_on(&train, None, dev, (epoch + 1) * per_epoch, &mut |_| {})?;
    }
    Ok((t.into_model(), format!("public:{}", choice.label())))
}

/// The model a finished run released (`model/model.safetensors` of its directory), rebuilt
/// from the run's config and loaded by parameter name.
pub fn load_released_model(cfg: &RunConfig, run_dir: &Path, dev: &Device) -> Result<Sequential> {
    let path = run_dir.join("model").join("model.safetensors");
    let mut model = build_model(cfg, dev)?;
    dp_core::weights::load_weights(&mut model, &path, &WeightFormat::default())?;
    Ok(model)
}
