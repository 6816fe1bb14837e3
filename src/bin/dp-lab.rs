//! `dp-lab`: train one run from a config file, sweep a grid of runs (here or on Slurm), see
//! where a sweep stands, and report its results. See `dp_lab::pipeline` and README.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use dp_lab::pipeline::{
    array_script, budget, execute, run_pool, submit, write_report, write_script, BudgetArgs,
    DataCache, PoolOptions, RunConfig, RunDir, RunState, SweepDir, SweepFile, RUN_LOG_MARKER,
};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "dp-lab",
    version,
    about = "Differentially private training: runs, sweeps, reports"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One run from a config file (every field has a default; unknown fields are errors).
    Train {
        /// The run's config (TOML).
        config: PathBuf,
        /// Result directory (default: target/dp-lab/runs/<file stem>). Re-running the same
        /// config resumes from its checkpoint.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A grid of runs from a sweep file, by a pool of worker processes or as a Slurm array.
    Sweep {
        /// The sweep file (TOML).
        sweep: PathBuf,
        /// Result directory (default: target/dp-lab/<sweep name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Worker processes at once (default: one per core).
        #[arg(long)]
        jobs: Option<usize>,
        /// Threads per worker (default: 1).
        #[arg(long)]
        threads: Option<usize>,
        /// Write a Slurm job-array script instead of running here.
        #[arg(long)]
        slurm: bool,
        /// With --slurm: submit it with sbatch.
        #[arg(long, requires = "slurm")]
        submit: bool,
        /// Allow an expansion larger than the file's max_runs.
        #[arg(long)]
        force: bool,
        /// Only expand and list the runs.
        #[arg(long)]
        dry_run: bool,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// Done / running / failed / pending runs of a result directory.
    Status {
        /// The sweep's result directory.
        dir: PathBuf,
    },
    /// results.csv, results.json, report.html and report.md of a result directory.
    Report {
        /// The sweep's result directory.
        dir: PathBuf,
    },
    /// ε of a DP-SGD run, or σ for a target ε.
    Budget {
        #[command(flatten)]
        args: BudgetArgs,
    },
    /// Works on one run of a sweep (what the pool and Slurm tasks call).
    #[command(hide = true)]
    Worker {
        /// The sweep's result directory.
        dir: PathBuf,
        /// The run's id.
        id: Option<String>,
        /// The run's index in sweep.json (Slurm's array task id).
        #[arg(long)]
        index: Option<usize>,
        /// Work on the run ids read from standard input, one per line, until it closes,
        /// keeping loaded datasets (what the local pool runs).
        #[arg(long, conflicts_with_all = ["id", "index"])]
        serve: bool,
    },
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn train(config: &Path, out: Option<PathBuf>) -> Result<()> {
    let file = config.display().to_string();
    let cfg = RunConfig::from_toml(&read(config)?, &file)?;
    cfg.validate(&file)?;
    let stem = config
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("run")
        .to_string();
    let out = out.unwrap_or_else(|| PathBuf::from("target/dp-lab/runs").join(&stem));
    let rd = RunDir(out.clone());
    let resolved = toml::to_string(&cfg)?;
    match std::fs::read_to_string(rd.config()) {
        Ok(old) if old != resolved => bail!(
            "{} holds another run (its config.toml differs from {file}); choose another --out",
            out.display()
        ),
        Ok(_) => eprintln!("{}: resuming (same config)", out.display()),
        Err(_) => dp_lab::pipeline::write_atomic(&rd.config(), resolved.as_bytes())?,
    }
    if let Some(r) = rd.read_result() {
        eprintln!("{}: already finished", out.display());
        println!("{}", summary_line(&r));
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new(1);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let r = execute(&cfg, &stem, &out, &mut |s, t| {
        bar.set_length(t);
        bar.set_position(s);
    })?;
    bar.finish_and_clear();
    eprintln!("wrote {}", rd.result().display());
    println!("{}", summary_line(&r));
    Ok(())
}

fn summary_line(r: &dp_lab::pipeline::RunResult) -> String {
    serde_json::json!({
        "run_id": r.run_id,
        "dataset": r.dataset,
        "method": r.config.method.name,
        "regime": r.config.regime,
        "dp": r.dp,
        "epsilon": r.epsilon.map_or(serde_json::json!("not DP"), |e| serde_json::json!(e)),
        "delta": r.delta,
        "noise_multiplier": r.noise_multiplier,
        "steps": r.steps,
        "test_accuracy": r.test_accuracy,
        "seconds": (r.seconds * 10.0).round() / 10.0,
    })
    .to_string()
}

#[allow(clippy::too_many_arguments)]
fn sweep(
    path: &Path,
    out: Option<PathBuf>,
    jobs: Option<usize>,
    threads: Option<usize>,
    slurm: bool,
    do_submit: bool,
    force: bool,
    dry_run: bool,
    quiet: bool,
) -> Result<()> {
    let file = path.display().to_string();
    let s = SweepFile::from_toml(&read(path)?, &file)?;
    let runs = s.expand(&file, force)?;
    if dry_run {
        for r in &runs {
            println!("{}", r.id);
        }
        eprintln!("{}: {} runs", file, runs.len());
        return Ok(());
    }
    let out = out.unwrap_or_else(|| PathBuf::from("target/dp-lab").join(&s.name));
    let dir = SweepDir::new(&out);
    dir.prepare(&s.name, &file, &runs)?;
    let exe = std::env::current_exe().context("locating the dp-lab binary")?;
    if slurm {
        let Some((script, ids)) = array_script(&dir, &exe, &s.slurm)? else {
            eprintln!("{}: every run is finished", out.display());
            return Ok(());
        };
        let p = write_script(&dir, &script)?;
        eprintln!("wrote {} ({} array tasks)", p.display(), ids.len());
        if do_submit {
            let job = submit(&p)?;
            std::fs::write(out.join("slurm").join("job_id"), &job)?;
            eprintln!(
                "submitted job {job}; `dp-lab status {}` shows progress",
                out.display()
            );
        }
        return Ok(());
    }
    let mut opts = PoolOptions::for_this_machine();
    if let Some(j) = jobs {
        if j == 0 {
            bail!("--jobs must be ≥ 1");
        }
        opts.jobs = j;
    }
    if let Some(t) = threads {
        if t == 0 {
            bail!("--threads must be ≥ 1");
        }
        opts.threads = t;
    }
    opts.progress = !quiet;
    let t0 = std::time::Instant::now();
    let summary = run_pool(&dir, &exe, &opts)?;
    eprintln!(
        "{}: {} of {} runs done ({} skipped as finished), {} failed, in {:.1} s",
        out.display(),
        summary.done,
        runs.len(),
        summary.skipped,
        summary.failed.len(),
        t0.elapsed().as_secs_f64()
    );
    for id in &summary.failed {
        if let RunState::Failed(msg) = dir.state(id) {
            eprintln!("  failed: {id}: {msg}");
        }
    }
    if !summary.failed.is_empty() {
        std::process::exit(2);
    }
    Ok(())
}

fn status(dir: &Path) -> Result<()> {
    let d = SweepDir::new(dir);
    let m = d.manifest()?;
    let (mut done, mut failed, mut running, mut interrupted, mut pending) = (0, 0, 0, 0, 0);
    for r in &m.runs {
        let st = d.state(&r.id);
        let what = match &st {
            RunState::Done => {
                done += 1;
                "done".to_string()
            }
            RunState::Failed(e) => {
                failed += 1;
                format!("failed: {e}")
            }
            RunState::Running(who) => {
                running += 1;
                format!("running ({who})")
            }
            RunState::Interrupted => {
                interrupted += 1;
                "interrupted (resumes from its checkpoint)".into()
            }
            RunState::Pending => {
                pending += 1;
                "pending".into()
            }
        };
        println!("{:<60} {what}", r.id);
    }
    println!(
        "{}: {} runs: {done} done, {running} running, {failed} failed, {interrupted} interrupted, {pending} pending",
        m.name,
        m.runs.len()
    );
    Ok(())
}

fn worker(dir: &Path, id: Option<String>, index: Option<usize>, serve: bool) -> Result<()> {
    let d = SweepDir::new(dir);
    if serve {
        return serve_runs(&d);
    }
    let id = match (id, index) {
        (Some(id), None) => id,
        (None, Some(i)) => {
            let m = d.manifest()?;
            m.runs.get(i).map(|r| r.id.clone()).with_context(|| {
                format!("no run {i} in {} ({} runs)", dir.display(), m.runs.len())
            })?
        }
        _ => bail!("give a run id or --index"),
    };
    if !work_one(&d, &id, &mut DataCache::new())? {
        std::process::exit(1);
    }
    Ok(())
}

/// Works on run `id` with progress on standard output; says on standard error why a run
/// failed. Returns whether it finished.
fn work_one(d: &SweepDir, id: &str, cache: &mut DataCache) -> Result<bool> {
    let finished = d.work_on_with(id, &mut |s, t| println!("progress {s} {t}"), cache)?;
    if !finished {
        if let RunState::Failed(msg) = d.state(id) {
            eprintln!("run {id} failed: {msg}");
        }
    }
    Ok(finished)
}

/// The pool's worker: runs the ids it is sent, one at a time, and answers each with
/// `finished ID ok|failed` on standard output; standard error carries each run's log after
/// a `RUN_LOG_MARKER ID` line (the pool files it under the run).
fn serve_runs(d: &SweepDir) -> Result<()> {
    use std::io::{BufRead, Write};
    let mut cache = DataCache::new();
    for line in std::io::stdin().lock().lines() {
        let id = line?;
        let id = id.trim();
        if id.is_empty() {
            continue;
        }
        eprintln!("{RUN_LOG_MARKER} {id}");
        let ok = work_one(d, id, &mut cache).unwrap_or_else(|e| {
            eprintln!("run {id}: {e:#}");
            false
        });
        println!("finished {id} {}", if ok { "ok" } else { "failed" });
        std::io::stdout().flush()?;
    }
    Ok(())
}

fn main() {
    dp_lab::allocator::keep_freed_pages();
    let cli = Cli::parse();
    // Keep candle's own pool on the caller unless the pool or Slurm chose the threads.
    dp_lab::core::configure_cpu_threads();
    let r = match cli.command {
        Command::Train { config, out } => train(&config, out),
        Command::Sweep {
            sweep: s,
            out,
            jobs,
            threads,
            slurm,
            submit,
            force,
            dry_run,
            quiet,
        } => sweep(&s, out, jobs, threads, slurm, submit, force, dry_run, quiet),
        Command::Status { dir } => status(&dir),
        Command::Report { dir } => write_report(&SweepDir::new(&dir))
            .map(|f| {
                eprintln!(
                    "{} runs: wrote {}, {}, {}, {} and {} plots",
                    f.runs,
                    f.csv.display(),
                    f.json.display(),
                    f.html.display(),
                    f.markdown.display(),
                    f.plots.len()
                );
            })
            .map_err(Into::into),
        Command::Budget { args } => budget(&args)
            .map(|(json, text)| {
                if args.json {
                    println!("{json}");
                } else {
                    println!("{text}");
                }
            })
            .map_err(Into::into),
        Command::Worker {
            dir,
            id,
            index,
            serve,
        } => worker(&dir, id, index, serve),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
