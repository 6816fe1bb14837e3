//! A sweep file: a base config plus axes that expand into runs.
//!
//! ```toml
//! name = "thesis-grid"
//! max_runs = 500                 # refuse larger expansions without --force
//!
//! [base]                         # any RunConfig fields
//! dataset = "bundled"
//! epochs = 2
//!
//! [[grid]]                       # one block of runs; blocks are concatenated
//! axes = { "method.name" = ["dp_sgd", "auto_s"], epsilon = [1, 3, 8], seed = [0, 1] }
//!
//! [[grid]]                       # the non-private baseline: no epsilon axis
//! axes = { regime = ["non-private"], seed = [0, 1] }
//! zip = [{ "optimizer.lr" = [0.5, 1.0], "method.clip" = [0.1, 0.2] }]  # vary together
//!
//! [slurm]                        # resources of each array task (only with --slurm)
//! cpus_per_task = 2
//! ```
//!
//! An axis is a list, or a range `{ start, stop, step }` (stop included when it falls on the
//! grid) or `{ start, stop, num, log = true }` (`num` points, geometric when `log`). Top-level
//! `axes` and `zip` are shorthand for one `[[grid]]`. Axes expand as a cartesian product in
//! file order (the last one varies fastest); a zip is one axis whose fields vary together.

use super::config::RunConfig;
use super::error::{PipelineError, Result};
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// Resources of each Slurm array task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmConfig {
    /// `--cpus-per-task` (also the worker's threads).
    pub cpus_per_task: usize,
    /// `--mem`, e.g. `"4G"`.
    pub mem: String,
    /// `--time`, e.g. `"02:00:00"`.
    pub time: String,
    /// `--partition` (the cluster's default when empty).
    pub partition: String,
    /// Most array tasks running at once (`--array=…%N`; 0: no limit).
    pub max_parallel: usize,
    /// Extra `#SBATCH` lines, verbatim (`"--account=mylab"`).
    pub extra: Vec<String>,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        Self {
            cpus_per_task: 1,
            mem: "4G".into(),
            time: "04:00:00".into(),
            partition: String::new(),
            max_parallel: 0,
            extra: Vec::new(),
        }
    }
}

/// One block of runs: axes crossed with each other and with the zips.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grid {
    /// Field (dotted) → values.
    pub axes: Table,
    /// Groups of fields that vary together (equal-length lists).
    pub zip: Vec<Table>,
}

/// A sweep file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SweepFile {
    /// The sweep's name (default: the file's stem).
    pub name: String,
    /// The config every run starts from.
    pub base: Table,
    /// Shorthand for one grid's axes.
    pub axes: Table,
    /// Shorthand for one grid's zips.
    pub zip: Vec<Table>,
    /// Blocks of runs.
    pub grid: Vec<Grid>,
    /// Expansions larger than this are refused without `--force`.
    pub max_runs: usize,
    /// Slurm resources.
    pub slurm: SlurmConfig,
}

impl Default for SweepFile {
    fn default() -> Self {
        Self {
            name: String::new(),
            base: Table::new(),
            axes: Table::new(),
            zip: Vec::new(),
            grid: Vec::new(),
            max_runs: 500,
            slurm: SlurmConfig::default(),
        }
    }
}

/// One expanded run: its id, the values its axes set, and the resolved config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedRun {
    /// `0007-method.name=bam,epsilon=3` (index first, so ids sort in expansion order).
    pub id: String,
    /// The axis values of this run, in axis order.
    pub overrides: Vec<(String, Value)>,
    /// The resolved config.
    pub config: RunConfig,
}

impl SweepFile {
    /// Parses a sweep file; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Self> {
        let mut s: SweepFile = toml::from_str(text)
            .map_err(|e| PipelineError::config(file, "", e.message().to_string()))?;
        if s.name.is_empty() {
            s.name = std::path::Path::new(file)
                .file_stem()
                .and_then(|n| n.to_str())
                .unwrap_or("sweep")
                .to_string();
        }
        Ok(s)
    }

    fn grids(&self) -> Vec<Grid> {
        let mut g = Vec::new();
        if !self.axes.is_empty() || !self.zip.is_empty() || self.grid.is_empty() {
            g.push(Grid {
                axes: self.axes.clone(),
                zip: self.zip.clone(),
            });
        }
        g.extend(self.grid.iter().cloned());
        g
    }

    /// Expands the sweep into runs, each validated. Refused: an axis that is not a field, a
    /// value out of range (naming the run's axis values), zips of unequal lengths, an
    /// expansion to zero runs, or to more than `max_runs` unless `force`.
    pub fn expand(&self, file: &str, force: bool) -> Result<Vec<PlannedRun>> {
        // The base alone must be a valid config (an unknown field is named as `base`'s).
        let _base: RunConfig =
            Value::Table(self.base.clone())
                .try_into()
                .map_err(|e: toml::de::Error| {
                    PipelineError::config(file, "base", e.message().to_string())
                })?;
        let mut combos: Vec<Vec<(String, Value)>> = Vec::new();
        for (gi, grid) in self.grids().iter().enumerate() {
            let mut dims: Vec<Vec<Vec<(String, Value)>>> = Vec::new();
            for (key, spec) in &grid.axes {
                let values = axis_values(spec)
                    .map_err(|m| PipelineError::config(file, &format!("axes.{key}"), m))?;
                self.check_field(key, &values[0], file)?;
                dims.push(values.into_iter().map(|v| vec![(key.clone(), v)]).collect());
            }
            for (zi, z) in grid.zip.iter().enumerate() {
                let mut len = None;
                let mut cols = Vec::new();
                for (key, spec) in z {
                    let values = axis_values(spec)
                        .map_err(|m| PipelineError::config(file, &format!("zip.{key}"), m))?;
                    if *len.get_or_insert(values.len()) != values.len() {
                        return Err(PipelineError::config(
                            file,
                            &format!("zip.{key}"),
                            format!(
                                "zip {zi} of grid {gi}: {} values where the zip's other \
                                 fields have {}",
                                values.len(),
                                len.unwrap_or(0)
                            ),
                        ));
                    }
                    self.check_field(key, &values[0], file)?;
                    cols.push((key.clone(), values));
                }
                let n = len.unwrap_or(0);
                dims.push(
                    (0..n)
                        .map(|i| {
                            cols.iter()
                                .map(|(k, v)| (k.clone(), v[i].clone()))
                                .collect()
                        })
                        .collect(),
                );
            }
            let mut acc: Vec<Vec<(String, Value)>> = vec![Vec::new()];
            for d in &dims {
                let mut next = Vec::with_capacity(acc.len() * d.len());
                for a in &acc {
                    for choice in d {
                        let mut c = a.clone();
                        c.extend(choice.iter().cloned());
                        next.push(c);
                    }
                }
                acc = next;
            }
            combos.extend(acc);
        }
        if combos.is_empty() {
            return Err(PipelineError::config(
                file,
                "axes",
                "the sweep expands to zero runs",
            ));
        }
        if combos.len() > self.max_runs && !force {
            return Err(PipelineError::config(
                file,
                "max_runs",
                format!(
                    "the sweep expands to {} runs, more than max_runs = {} (raise max_runs or \
                     pass --force)",
                    combos.len(),
                    self.max_runs
                ),
            ));
        }
        let width = combos.len().to_string().len().max(4);
        combos
            .into_iter()
            .enumerate()
            .map(|(i, overrides)| {
                let desc = describe(&overrides);
                let config = self.resolve(&overrides).map_err(|e| {
                    PipelineError::config(file, "", format!("run {i} ({desc}): {e}"))
                })?;
                config.validate("").map_err(|e| {
                    PipelineError::config(file, "", format!("run {i} ({desc}): {e}"))
                })?;
                Ok(PlannedRun {
                    id: run_id(i, width, &desc),
                    overrides,
                    config,
                })
            })
            .collect()
    }

    /// The base with `overrides` applied, as a config.
    fn resolve(&self, overrides: &[(String, Value)]) -> Result<RunConfig> {
        let mut t = self.base.clone();
        for (k, v) in overrides {
            set_path(&mut t, k, v.clone()).map_err(|m| PipelineError::config("", k, m))?;
        }
        Value::Table(t)
            .try_into()
            .map_err(|e: toml::de::Error| PipelineError::config("", "", e.message().to_string()))
    }

    /// Refuses an axis that names no field of [`RunConfig`].
    fn check_field(&self, key: &str, sample: &Value, file: &str) -> Result<()> {
        self.resolve(&[(key.to_string(), sample.clone())])
            .map(|_| ())
            .map_err(|e| PipelineError::config(file, &format!("axes.{key}"), e.to_string()))
    }
}

/// The values of one axis: a list, or a range table.
fn axis_values(spec: &Value) -> std::result::Result<Vec<Value>, String> {
    let num = |t: &Table, k: &str| -> std::result::Result<f64, String> {
        match t.get(k) {
            Some(Value::Integer(i)) => Ok(*i as f64),
            Some(Value::Float(f)) => Ok(*f),
            Some(_) => Err(format!("range field `{k}` must be a number")),
            None => Err(format!("range needs `{k}`")),
        }
    };
    let values = match spec {
        Value::Array(a) => a.clone(),
        Value::Table(t) => {
            for k in t.keys() {
                if !["start", "stop", "step", "num", "log"].contains(&k.as_str()) {
                    return Err(format!(
                        "unknown range field `{k}` (start, stop, step | num, log)"
                    ));
                }
            }
            let (start, stop) = (num(t, "start")?, num(t, "stop")?);
            let ints = matches!(t.get("start"), Some(Value::Integer(_)))
                && matches!(t.get("step"), Some(Value::Integer(_)) | None)
                && t.get("num").is_none();
            if let Some(step) = t.get("step") {
                let step = match step {
                    Value::Integer(i) => *i as f64,
                    Value::Float(f) => *f,
                    _ => return Err("range field `step` must be a number".into()),
                };
                if !(step.is_finite() && step > 0.0 && start.is_finite() && stop >= start) {
                    return Err("range needs finite start ≤ stop and step > 0".into());
                }
                let n = ((stop - start) / step + 1e-9).floor() as usize + 1;
                if n > 100_000 {
                    return Err(format!("range of {n} values"));
                }
                (0..n)
                    .map(|i| {
                        let x = start + i as f64 * step;
                        if ints {
                            Value::Integer(x.round() as i64)
                        } else {
                            Value::Float(x)
                        }
                    })
                    .collect()
            } else {
                let n = num(t, "num")?;
                if !(n >= 1.0 && n.fract() == 0.0 && n <= 100_000.0) {
                    return Err("range field `num` must be a whole number ≥ 1".into());
                }
                let n = n as usize;
                let log = matches!(t.get("log"), Some(Value::Boolean(true)));
                if log && !(start > 0.0 && stop > 0.0) {
                    return Err("a log range needs start and stop > 0".into());
                }
                (0..n)
                    .map(|i| {
                        let f = if n == 1 {
                            0.0
                        } else {
                            i as f64 / (n - 1) as f64
                        };
                        Value::Float(if log {
                            (start.ln() + f * (stop.ln() - start.ln())).exp()
                        } else {
                            start + f * (stop - start)
                        })
                    })
                    .collect()
            }
        }
        other => vec![other.clone()],
    };
    if values.is_empty() {
        return Err("an axis needs at least one value".into());
    }
    Ok(values)
}

/// Sets `a.b.c = v` in `t`, creating the tables on the way.
fn set_path(t: &mut Table, path: &str, v: Value) -> std::result::Result<(), String> {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().unwrap_or(path);
    let mut cur = t;
    for p in parts {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        cur = match entry {
            Value::Table(t) => t,
            _ => return Err(format!("`{p}` is not a table")),
        };
    }
    cur.insert(last.to_string(), v);
    Ok(())
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Float(f) => format!("{f}"),
        other => other.to_string(),
    }
}

/// `method.name=bam,epsilon=3`.
fn describe(overrides: &[(String, Value)]) -> String {
    overrides
        .iter()
        .map(|(k, v)| format!("{k}={}", short(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A file-system-safe id: the zero-padded index, then the description (truncated).
fn run_id(i: usize, width: usize, desc: &str) -> String {
    let clean: String = desc
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "=.,_-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    if clean.is_empty() {
        format!("{i:0width$}")
    } else {
        format!("{i:0width$}-{clean}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_expand_as_stated() {
        let v = axis_values(
            &toml::from_str::<Table>("a = { start = 1, stop = 7, step = 3 }").unwrap()["a"],
        )
        .unwrap();
        assert_eq!(
            v,
            vec![Value::Integer(1), Value::Integer(4), Value::Integer(7)]
        );
        let v = axis_values(
            &toml::from_str::<Table>("a = { start = 1.0, stop = 100.0, num = 3, log = true }")
                .unwrap()["a"],
        )
        .unwrap();
        let f: Vec<f64> = v.iter().map(|x| x.as_float().unwrap()).collect();
        assert!(
            (f[0] - 1.0).abs() < 1e-12 && (f[1] - 10.0).abs() < 1e-9 && (f[2] - 100.0).abs() < 1e-9
        );
        assert!(axis_values(&Value::Array(vec![])).is_err());
        assert!(axis_values(
            &toml::from_str::<Table>("a = { start = 1, stop = 0, step = 1 }").unwrap()["a"]
        )
        .is_err());
    }

    #[test]
    fn ids_are_safe_and_ordered() {
        assert_eq!(
            run_id(7, 4, "method.name=bam,epsilon=3"),
            "0007-method.name=bam,epsilon=3"
        );
        assert_eq!(run_id(1, 4, "data_dir=/x y"), "0001-data_dir=_x_y");
    }
}
