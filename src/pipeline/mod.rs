//! The evaluation pipeline behind the `dp-lab` command: one run from a config file, a sweep
//! of runs from a sweep file (on this machine or as a Slurm job array), their status, and a
//! report of tables and plots. Every method, regime, dataset and metric is chosen by name;
//! methods come from [`dp_optim::methods::MethodSpec`], so a new method file is selectable
//! here without changing the pipeline.
//!
//! ```text
//! dp-lab train RUN.toml [--out DIR]
//! dp-lab sweep SWEEP.toml [--out DIR] [--jobs N] [--slurm [--submit]] [--force]
//! dp-lab status DIR
//! dp-lab report DIR
//! dp-lab budget --sampling-rate Q (--noise-multiplier S | --target-epsilon E) (--steps T | --epochs E)
//! ```
//!
//! A result directory is the only state: runs write their results atomically, checkpoint
//! every epoch, and resume from the last checkpoint, so a killed sweep loses no finished
//! result and re-running it continues where it stopped.

mod budget;
mod config;
mod error;
mod local;
mod metrics;
mod report;
mod run;
mod slurm;
mod sweep;
mod sweep_dir;

pub use budget::{budget, BudgetArgs, ConversionArg};
pub use config::{
    DatasetChoice, MaskSourceChoice, ModelChoice, Noise, OptimizerConfig, RunConfig, METRIC_NAMES,
};
pub use error::{PipelineError, Result};
pub use local::{run_pool, PoolOptions, PoolSummary, RUN_LOG_MARKER};
pub use metrics::{compute_metrics, Metrics};
pub use report::{collect, label, write_csv, write_report, ReportFiles};
pub use run::{
    execute, execute_with, load_dataset, write_atomic, DataCache, EpochMetrics, RunDir, RunResult,
    RunTiming,
};
pub use slurm::{array_script, submit, write_script};
pub use sweep::{Grid, PlannedRun, SlurmConfig, SweepFile};
pub use sweep_dir::{Manifest, RunError, RunState, SweepDir};
