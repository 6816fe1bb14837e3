//! Running a sweep on this machine: a pool of worker processes (`dp-lab worker DIR ID`),
//! each on one run, each with its own threads. A worker that fails or dies is recorded and
//! the others go on; a finished run is never run again.

use super::error::{io, PipelineError, Result};
use super::sweep_dir::{RunState, SweepDir};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How the pool runs.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Worker processes at once.
    pub jobs: usize,
    /// Threads of each worker (`CANDLE_NUM_THREADS`, `RAYON_NUM_THREADS`).
    pub threads: usize,
    /// Draw progress bars (on a terminal).
    pub progress: bool,
}

impl PoolOptions {
    /// The default on this machine: one worker per core, one thread each (measured fastest
    /// for sweeps of small runs on 2 cores; see README).
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            jobs: cores,
            threads: 1,
            progress: true,
        }
    }
}

/// What a sweep ended with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolSummary {
    /// Runs finished (now or before).
    pub done: usize,
    /// Runs that failed in this invocation.
    pub failed: Vec<String>,
    /// Runs that were already finished and were skipped.
    pub skipped: usize,
}

struct Worker {
    id: String,
    child: Child,
    bar: ProgressBar,
}

/// Runs every unfinished run of `dir` with `exe worker DIR ID` processes.
pub fn run_pool(dir: &SweepDir, exe: &Path, opts: &PoolOptions) -> Result<PoolSummary> {
    let manifest = dir.manifest()?;
    let mut summary = PoolSummary::default();
    let mut queue = Vec::new();
    for r in &manifest.runs {
        match dir.state(&r.id) {
            RunState::Done => {
                summary.done += 1;
                summary.skipped += 1;
            }
            RunState::Running(who) => {
                return Err(PipelineError::ResultDir {
                    dir: dir.root.clone(),
                    message: format!(
                        "run {} is being run by {who}: is another sweep running here?",
                        r.id
                    ),
                })
            }
            _ => queue.push(r.id.clone()),
        }
    }
    queue.reverse(); // pop from the front of the expansion order
    let total = manifest.runs.len() as u64;
    let multi = if opts.progress {
        MultiProgress::new()
    } else {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    };
    let sweep_bar = multi.add(ProgressBar::new(total));
    sweep_bar.set_style(
        ProgressStyle::with_template(
            "{prefix} {bar:30} {pos}/{len} runs {msg} [{elapsed_precise}<{eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    sweep_bar.set_prefix(manifest.name.clone());
    sweep_bar.set_position(summary.done as u64);
    let run_style = ProgressStyle::with_template("  {prefix:40!} {bar:20} {pos}/{len} steps")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let (tx, rx) = mpsc::channel::<(String, u64, u64)>();
    let mut workers: Vec<Worker> = Vec::new();
    loop {
        while workers.len() < opts.jobs.max(1) {
            let Some(id) = queue.pop() else { break };
            let rd = dir.run(&id);
            std::fs::create_dir_all(&rd.0).map_err(io(&rd.0))?;
            let log =
                std::fs::File::create(rd.0.join("log.txt")).map_err(io(rd.0.join("log.txt")))?;
            let mut child = Command::new(exe)
                .arg("worker")
                .arg(&dir.root)
                .arg(&id)
                .env("CANDLE_NUM_THREADS", opts.threads.to_string())
                .env("RAYON_NUM_THREADS", opts.threads.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(log))
                .spawn()
                .map_err(io(exe))?;
            if let Some(out) = child.stdout.take() {
                let tx = tx.clone();
                let id = id.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                        let mut it = line.split_whitespace();
                        if it.next() == Some("progress") {
                            let s = it.next().and_then(|x| x.parse().ok());
                            let t = it.next().and_then(|x| x.parse().ok());
                            if let (Some(s), Some(t)) = (s, t) {
                                let _ = tx.send((id.clone(), s, t));
                            }
                        }
                    }
                });
            }
            let bar = multi.add(ProgressBar::new(1));
            bar.set_style(run_style.clone());
            bar.set_prefix(id.clone());
            workers.push(Worker { id, child, bar });
        }
        if workers.is_empty() {
            break;
        }
        for (id, s, t) in rx.try_iter() {
            if let Some(w) = workers.iter().find(|w| w.id == id) {
                w.bar.set_length(t);
                w.bar.set_position(s);
            }
        }
        let mut i = 0;
        while i < workers.len() {
            match workers[i].child.try_wait().map_err(io(exe))? {
                None => i += 1,
                Some(status) => {
                    let w = workers.swap_remove(i);
                    w.bar.finish_and_clear();
                    multi.remove(&w.bar);
                    if dir.state(&w.id) == RunState::Done {
                        summary.done += 1;
                    } else {
                        // A worker that died (not one that recorded its error) leaves its
                        // marker behind and no error.json: clear the one, write the other.
                        let rd = dir.run(&w.id);
                        let _ = std::fs::remove_file(rd.running());
                        if !rd.error().exists() {
                            let tail = log_tail(&rd.0.join("log.txt"));
                            dir.record_failure(
                                &w.id,
                                &format!("worker exited with {status}; log: {tail}"),
                            )?;
                        }
                        summary.failed.push(w.id.clone());
                    }
                    sweep_bar.set_position((summary.done + summary.failed.len()) as u64);
                }
            }
        }
        sweep_bar.set_message(format!(
            "done {} failed {} running {}",
            summary.done,
            summary.failed.len(),
            workers.len()
        ));
        std::thread::sleep(Duration::from_millis(50));
    }
    sweep_bar.finish();
    Ok(summary)
}

/// The last lines of a worker's log, for the error record of a worker that died.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
