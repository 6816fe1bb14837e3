//! A sweep's result directory, the same however its runs are launched (local workers or a
//! Slurm array): `sweep.json` (the expansion: every run's id and resolved config) and
//! `runs/<id>/` per run (see [`super::run`]). Each run's state is read from its own files
//! alone, so `dp-lab status` needs nothing else.

use super::error::{io, PipelineError, Result};
use super::run::{execute_with, write_atomic, DataCache, RunDir};
use super::sweep::PlannedRun;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `sweep.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub format: u32,
    /// The sweep's name.
    pub name: String,
    /// The sweep file it was expanded from.
    pub source: String,
    /// The runs, in expansion order.
    pub runs: Vec<PlannedRun>,
}

/// Where a run stands.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// `result.json` is there.
    Done,
    /// `error.json` is there (the error's message).
    Failed(String),
    /// A process says it works on it (`running.json`: host, pid, start time).
    Running(String),
    /// `running.json` names a process of this host that no longer exists: killed mid-run
    /// (the next `sweep` resumes it from its checkpoint).
    Interrupted,
    /// Not started.
    Pending,
}

/// What `running.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Running {
    host: String,
    pid: u32,
    started_unix: u64,
}

/// What `error.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunError {
    /// The run.
    pub run_id: String,
    /// The error, as displayed.
    pub error: String,
}

/// A sweep's result directory.
#[derive(Debug, Clone)]
pub struct SweepDir {
    /// Its root.
    pub root: PathBuf,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Whether process `pid` of this host still runs (a zombie does not: a killed worker whose
/// parent died too may stay one where nothing reaps it).
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X') | None)
        }
        // No procfs: the process cannot be looked up, so it is taken to be running.
        Err(_) => !Path::new("/proc/self").exists(),
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SweepDir {
    /// The directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn manifest_path(&self) -> PathBuf {
        self.root.join("sweep.json")
    }

    /// The run directory of `id`.
    pub fn run(&self, id: &str) -> RunDir {
        RunDir(self.root.join("runs").join(id))
    }

    /// Reads `sweep.json`.
    pub fn manifest(&self) -> Result<Manifest> {
        let p = self.manifest_path();
        let bytes = std::fs::read(&p).map_err(io(&p))?;
        serde_json::from_slice(&bytes).map_err(|e| PipelineError::ResultDir {
            dir: self.root.clone(),
            message: format!("sweep.json unreadable: {e}"),
        })
    }

    /// Makes the directory hold `runs`: writes `sweep.json` and each run's `config.toml`, or,
    /// if it already holds this same sweep, leaves it as it is (finished runs stay
    /// finished). A directory holding another sweep's results, or other files and no
    /// `sweep.json`, is refused.
    pub fn prepare(&self, name: &str, source: &str, runs: &[PlannedRun]) -> Result<()> {
        let manifest = Manifest {
            format: 1,
            name: name.into(),
            source: source.into(),
            runs: runs.to_vec(),
        };
        if self.manifest_path().exists() {
            let old = self.manifest()?;
            if old.runs != manifest.runs {
                return Err(PipelineError::ResultDir {
                    dir: self.root.clone(),
                    message: format!(
                        "holds the results of another sweep ('{}' from {}, {} runs); choose \
                         another --out or remove it",
                        old.name,
                        old.source,
                        old.runs.len()
                    ),
                });
            }
            return Ok(());
        }
        if self.root.exists() {
            let non_empty = std::fs::read_dir(&self.root)
                .map_err(io(&self.root))?
                .next()
                .is_some();
            if non_empty {
                return Err(PipelineError::ResultDir {
                    dir: self.root.clone(),
                    message: "is not empty and holds no sweep.json: not a sweep's result \
                              directory; choose another --out"
                        .into(),
                });
            }
        }
        for r in runs {
            let rd = self.run(&r.id);
            let text = toml::to_string(&r.config)
                .map_err(|e| PipelineError::Other(format!("run {}: {e}", r.id)))?;
            write_atomic(&rd.config(), text.as_bytes())?;
        }
        // The manifest last: a directory with a manifest has all its configs.
        write_atomic(
            &self.manifest_path(),
            &serde_json::to_vec_pretty(&manifest)?,
        )?;
        Ok(())
    }

    /// Where run `id` stands, from its files.
    pub fn state(&self, id: &str) -> RunState {
        let rd = self.run(id);
        if rd.result().exists() {
            return RunState::Done;
        }
        if let Ok(r) = std::fs::read(rd.running()) {
            if let Ok(r) = serde_json::from_slice::<Running>(&r) {
                let alive = r.host != hostname() || pid_alive(r.pid);
                return if alive {
                    RunState::Running(format!("{} pid {}", r.host, r.pid))
                } else {
                    RunState::Interrupted
                };
            }
        }
        if let Ok(e) = std::fs::read(rd.error()) {
            let msg = serde_json::from_slice::<RunError>(&e)
                .map(|e| e.error)
                .unwrap_or_else(|_| "error.json unreadable".into());
            return RunState::Failed(msg);
        }
        if rd.checkpoint().join("manifest.json").exists() {
            return RunState::Interrupted;
        }
        RunState::Pending
    }

    /// Records a failure of run `id` (atomically).
    pub fn record_failure(&self, id: &str, error: &str) -> Result<()> {
        let e = RunError {
            run_id: id.into(),
            error: error.into(),
        };
        write_atomic(&self.run(id).error(), &serde_json::to_vec_pretty(&e)?)
    }

    /// Works on run `id` in this process (what a worker does): marks it running, resumes or
    /// starts it, writes its result, or records its error. Returns whether it finished.
    pub fn work_on(&self, id: &str, progress: &mut dyn FnMut(u64, u64)) -> Result<bool> {
        self.work_on_with(id, progress, &mut DataCache::new())
    }

    /// [`SweepDir::work_on`] with the datasets of `cache` (a pool worker's, kept across its
    /// runs).
    pub fn work_on_with(
        &self,
        id: &str,
        progress: &mut dyn FnMut(u64, u64),
        cache: &mut DataCache,
    ) -> Result<bool> {
        let manifest = self.manifest()?;
        let run =
            manifest
                .runs
                .iter()
                .find(|r| r.id == id)
                .ok_or_else(|| PipelineError::ResultDir {
                    dir: self.root.clone(),
                    message: format!("no run '{id}' in sweep.json"),
                })?;
        if self.state(id) == RunState::Done {
            return Ok(true);
        }
        let rd = self.run(id);
        let _ = std::fs::remove_file(rd.error());
        let marker = Running {
            host: hostname(),
            pid: std::process::id(),
            started_unix: now_unix(),
        };
        write_atomic(&rd.running(), &serde_json::to_vec(&marker)?)?;
        let outcome = execute_with(&run.config, id, &rd.0, progress, cache);
        let finished = match &outcome {
            Ok(_) => true,
            Err(e) => {
                self.record_failure(id, &e.to_string())?;
                false
            }
        };
        let _ = std::fs::remove_file(rd.running());
        Ok(finished)
    }
}
