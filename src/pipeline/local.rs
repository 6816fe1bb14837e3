//! Running a sweep on this machine: a pool of worker processes (`dp-lab worker DIR --serve`),
//! each on one run at a time, each with its own threads, each keeping its loaded datasets
//! for its next runs. A worker that fails or dies is recorded and
//! the others go on; a finished run is never run again.

use super::error::{io, PipelineError, Result};
use super::sweep_dir::{RunState, SweepDir};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
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

/// The line a serving worker writes on standard error before a run's log: the pool files
/// what follows under that run (`runs/ID/log.txt`).
pub const RUN_LOG_MARKER: &str = "\u{1}dp-lab-run";

/// What a worker's output readers tell the pool.
enum Event {
    /// `(worker, steps done, steps planned)` of the worker's current run.
    Progress(usize, u64, u64),
    /// The worker finished its current run (its state on disk says how).
    Finished(usize),
    /// The worker's output closed: it is exiting.
    Closed(usize),
}

/// A `dp-lab worker DIR --serve` process: it works on the runs it is sent one at a time and
/// keeps what it loaded (datasets) between them, so a sweep of short runs pays the process
/// start and the data load once per worker, not once per run.
struct Worker {
    key: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    /// The run it is working on, with its progress bar.
    current: Option<(String, ProgressBar)>,
}

fn spawn_worker(
    exe: &Path,
    dir: &SweepDir,
    opts: &PoolOptions,
    key: usize,
    tx: &mpsc::Sender<Event>,
) -> Result<Worker> {
    let mut child = Command::new(exe)
        .arg("worker")
        .arg(&dir.root)
        .arg("--serve")
        .env("CANDLE_NUM_THREADS", opts.threads.to_string())
        .env("RAYON_NUM_THREADS", opts.threads.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(exe))?;
    // The pool learns of every exit from this reader (`Closed`), so it must exist.
    let out = child
        .stdout
        .take()
        .ok_or_else(|| PipelineError::Other("a worker's standard output is not piped".into()))?;
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                let mut it = line.split_whitespace();
                match it.next() {
                    Some("progress") => {
                        let s = it.next().and_then(|x| x.parse().ok());
                        let t = it.next().and_then(|x| x.parse().ok());
                        if let (Some(s), Some(t)) = (s, t) {
                            let _ = tx.send(Event::Progress(key, s, t));
                        }
                    }
                    Some("finished") => {
                        let _ = tx.send(Event::Finished(key));
                    }
                    _ => {}
                }
            }
            let _ = tx.send(Event::Closed(key));
        });
    }
    if let Some(err) = child.stderr.take() {
        let root = dir.clone();
        std::thread::spawn(move || {
            // Each run's log goes to its own file: the worker announces the run first.
            let mut log: Option<std::fs::File> = None;
            for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                if let Some(id) = line.strip_prefix(RUN_LOG_MARKER) {
                    let path = root.run(id.trim()).0.join("log.txt");
                    log = std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(path)
                        .ok();
                    continue;
                }
                if let Some(f) = log.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
            }
        });
    }
    let stdin = child.stdin.take();
    Ok(Worker {
        key,
        child,
        stdin,
        current: None,
    })
}

/// Runs every unfinished run of `dir` with `exe worker DIR --serve` processes.
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
    let (tx, rx) = mpsc::channel::<Event>();
    let mut workers: Vec<Worker> = Vec::new();
    let mut next_key = 0usize;
    loop {
        // Start workers while there is work for them.
        while workers.len() < opts.jobs.max(1)
            && queue.len() > workers.iter().filter(|w| w.current.is_none()).count()
        {
            workers.push(spawn_worker(exe, dir, opts, next_key, &tx)?);
            next_key += 1;
        }
        // Give each idle worker the next run; close the input of those with none left.
        for w in workers
            .iter_mut()
            .filter(|w| w.current.is_none() && w.stdin.is_some())
        {
            let Some(id) = queue.pop() else {
                w.stdin = None; // end of input: the worker exits
                continue;
            };
            let rd = dir.run(&id);
            std::fs::create_dir_all(&rd.0).map_err(io(&rd.0))?;
            std::fs::File::create(rd.0.join("log.txt")).map_err(io(rd.0.join("log.txt")))?;
            let sent = w
                .stdin
                .as_mut()
                .is_some_and(|s| writeln!(s, "{id}").and_then(|_| s.flush()).is_ok());
            if !sent {
                // The worker is gone; its Closed event removes it and the run goes back.
                queue.push(id);
                w.stdin = None;
                continue;
            }
            let bar = multi.add(ProgressBar::new(1));
            bar.set_style(run_style.clone());
            bar.set_prefix(id.clone());
            w.current = Some((id, bar));
        }
        if workers.is_empty() {
            break;
        }
        sweep_bar.set_message(format!(
            "done {} failed {} running {}",
            summary.done,
            summary.failed.len(),
            workers.iter().filter(|w| w.current.is_some()).count()
        ));
        // Sleep until a worker reports progress, finishes or exits: its output reader sends
        // `Closed` when the worker's standard output closes, which it does on any exit (the
        // timeout only keeps the bars redrawn).
        let first = rx.recv_timeout(Duration::from_millis(500)).ok();
        for event in first.into_iter().chain(rx.try_iter()) {
            match event {
                Event::Progress(key, s, t) => {
                    if let Some((_, bar)) = workers
                        .iter()
                        .find(|w| w.key == key)
                        .and_then(|w| w.current.as_ref())
                    {
                        bar.set_length(t);
                        bar.set_position(s);
                    }
                }
                Event::Finished(key) => {
                    if let Some(w) = workers.iter_mut().find(|w| w.key == key) {
                        if let Some((id, bar)) = w.current.take() {
                            settle(dir, &multi, &sweep_bar, &mut summary, &id, &bar, None)?;
                        }
                    }
                }
                Event::Closed(key) => {
                    let Some(i) = workers.iter().position(|w| w.key == key) else {
                        continue;
                    };
                    let mut w = workers.swap_remove(i);
                    drop(w.stdin.take());
                    let status = w.child.wait().map_err(io(exe))?;
                    // A worker that died during a run leaves its marker and no error.
                    if let Some((id, bar)) = w.current.take() {
                        settle(
                            dir,
                            &multi,
                            &sweep_bar,
                            &mut summary,
                            &id,
                            &bar,
                            Some(status),
                        )?;
                    }
                }
            }
        }
    }
    sweep_bar.finish();
    Ok(summary)
}

/// Counts run `id` as done or failed from its state on disk; a worker that exited during
/// the run (`exited`) without recording an error gets one recorded with its log's tail.
fn settle(
    dir: &SweepDir,
    multi: &MultiProgress,
    sweep_bar: &ProgressBar,
    summary: &mut PoolSummary,
    id: &str,
    bar: &ProgressBar,
    exited: Option<std::process::ExitStatus>,
) -> Result<()> {
    bar.finish_and_clear();
    multi.remove(bar);
    if dir.state(id) == RunState::Done {
        summary.done += 1;
    } else {
        let rd = dir.run(id);
        let _ = std::fs::remove_file(rd.running());
        if !rd.error().exists() {
            let tail = log_tail(&rd.0.join("log.txt"));
            let how = exited.map_or("worker gave up on the run".to_string(), |s| {
                format!("worker exited with {s}")
            });
            dir.record_failure(id, &format!("{how}; log: {tail}"))?;
        }
        summary.failed.push(id.to_string());
    }
    sweep_bar.set_position((summary.done + summary.failed.len()) as u64);
    Ok(())
}

/// The last lines of a worker's log, for the error record of a worker that died.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
