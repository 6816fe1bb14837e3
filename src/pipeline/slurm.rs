//! Running a sweep on a Slurm cluster: one job-array task per unfinished run, each calling
//! the same binary's `worker` on the same result directory, so results, resumption and
//! `dp-lab status` are those of a local sweep. Slurm does the scheduling; nothing here
//! replaces it.

use super::error::{io, PipelineError, Result};
use super::run::write_atomic;
use super::sweep::SlurmConfig;
use super::sweep_dir::{RunState, SweepDir};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The job-array script for the unfinished runs of `dir`, and the runs it covers (`None`
/// when every run is finished).
pub fn array_script(
    dir: &SweepDir,
    exe: &Path,
    cfg: &SlurmConfig,
) -> Result<Option<(String, Vec<String>)>> {
    let manifest = dir.manifest()?;
    let todo: Vec<usize> = manifest
        .runs
        .iter()
        .enumerate()
        .filter(|(_, r)| dir.state(&r.id) != RunState::Done)
        .map(|(i, _)| i)
        .collect();
    if todo.is_empty() {
        return Ok(None);
    }
    let root = std::fs::canonicalize(&dir.root).map_err(io(&dir.root))?;
    let exe = std::fs::canonicalize(exe).map_err(io(exe))?;
    let logs = root.join("slurm");
    let indices = todo
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let limit = if cfg.max_parallel > 0 {
        format!("%{}", cfg.max_parallel)
    } else {
        String::new()
    };
    let mut s = String::from("#!/bin/bash\n");
    s += &format!("#SBATCH --job-name=dp-lab-{}\n", sanitize(&manifest.name));
    s += &format!("#SBATCH --array={indices}{limit}\n");
    s += &format!("#SBATCH --cpus-per-task={}\n", cfg.cpus_per_task.max(1));
    s += &format!("#SBATCH --mem={}\n", cfg.mem);
    s += &format!("#SBATCH --time={}\n", cfg.time);
    if !cfg.partition.is_empty() {
        s += &format!("#SBATCH --partition={}\n", cfg.partition);
    }
    s += &format!("#SBATCH --output={}/%A_%a.out\n", logs.display());
    for e in &cfg.extra {
        s += &format!("#SBATCH {e}\n");
    }
    s += "set -euo pipefail\n";
    s += &format!(
        "export CANDLE_NUM_THREADS={0} RAYON_NUM_THREADS={0}\n",
        cfg.cpus_per_task.max(1)
    );
    s += &format!(
        "exec {} worker {} --index \"$SLURM_ARRAY_TASK_ID\"\n",
        shell_quote(&exe.to_string_lossy()),
        shell_quote(&root.to_string_lossy())
    );
    let ids = todo.iter().map(|&i| manifest.runs[i].id.clone()).collect();
    Ok(Some((s, ids)))
}

/// Writes the script to `DIR/slurm/sweep.sbatch` and returns its path.
pub fn write_script(dir: &SweepDir, script: &str) -> Result<PathBuf> {
    let path = dir.root.join("slurm").join("sweep.sbatch");
    write_atomic(&path, script.as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
    }
    Ok(path)
}

/// Submits the script with `sbatch --parsable`; returns the job id.
pub fn submit(script: &Path) -> Result<String> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .arg(script)
        .output()
        .map_err(|e| PipelineError::Other(format!("running sbatch: {e} (is Slurm installed?)")))?;
    if !out.status.success() {
        return Err(PipelineError::Other(format!(
            "sbatch refused {}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.trim().split(';').next().unwrap_or("").to_string())
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Single-quotes `s` for bash.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(super::shell_quote("a b'c"), "'a b'\\''c'");
        assert_eq!(super::sanitize("my grid/1"), "my_grid_1");
    }
}
