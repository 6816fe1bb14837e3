//! Logging metrics during training to a JSONL file.
//!
//! **Contract.** Everything logged here is *analysis*: it is computed on a fixed probe set,
//! without noise, and is never released. It costs no privacy budget **only because** it is not
//! released and does not influence training. Nothing written by [`MetricsLogger`] may be read
//! back by the training loop or used to choose hyper-parameters, clip norms, schedules,
//! stopping times or checkpoints on private data; doing so would make it part of the mechanism
//! and void the accountant's ε. The logger is therefore write-only from the trainer's point of
//! view ([`read_log`] is for offline analysis).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{MetricsError, Result};

/// One line of the log: `{"step": …, "metric": "…", "value": …}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogRecord<T> {
    /// Training step the metric describes.
    pub step: u64,
    /// Metric name, e.g. `"clipping"` or `"sharpness"`.
    pub metric: String,
    /// The metric's serde struct.
    pub value: T,
}

/// Appends serde records, one JSON object per line, to a file (see the module contract:
/// nothing logged may feed back into training).
///
/// ```
/// let path = std::env::temp_dir().join(format!("dp_metrics_doc_{}.jsonl", std::process::id()));
/// let mut log = dp_metrics::MetricsLogger::create(&path)?.every(10);
/// for step in 0..25u64 {
///     if log.is_due(step) {
///         log.log(step, "loss", &(1.0 / (step + 1) as f64))?;
///     }
/// }
/// let recs = dp_metrics::read_log(&path)?;
/// assert_eq!(recs.iter().map(|r| r.step).collect::<Vec<_>>(), vec![0, 10, 20]);
/// std::fs::remove_file(&path)?;
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
#[derive(Debug)]
pub struct MetricsLogger {
    writer: BufWriter<File>,
    path: PathBuf,
    every: u64,
}

impl MetricsLogger {
    /// Creates (truncates) the file.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let file = File::create(path.as_ref())?;
        Ok(Self {
            writer: BufWriter::new(file),
            path: path.as_ref().to_path_buf(),
            every: 1,
        })
    }

    /// Opens the file for appending, creating it if needed.
    pub fn append(path: impl AsRef<Path>) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path.as_ref())?;
        Ok(Self {
            writer: BufWriter::new(file),
            path: path.as_ref().to_path_buf(),
            every: 1,
        })
    }

    /// Sets the logging period k used by [`is_due`](Self::is_due) (0 is treated as 1).
    pub fn every(mut self, k: u64) -> Self {
        self.every = k.max(1);
        self
    }

    /// Whether `step` is a multiple of the logging period (§14: log every k steps and at the
    /// end — call [`log`](Self::log) unconditionally for the final step).
    pub fn is_due(&self, step: u64) -> bool {
        step.is_multiple_of(self.every)
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one record and flushes it to the file.
    pub fn log<T: Serialize>(&mut self, step: u64, metric: &str, value: &T) -> Result<()> {
        let rec = LogRecord {
            step,
            metric: metric.to_string(),
            value,
        };
        serde_json::to_writer(&mut self.writer, &rec)?;
        self.writer.write_all(b"\n")?;
        self.writer.flush()?;
        Ok(())
    }
}

/// Reads a JSONL log back for offline analysis (values as `serde_json::Value`).
///
/// ```
/// let path = std::env::temp_dir().join(format!("dp_metrics_doc_read_{}.jsonl", std::process::id()));
/// dp_metrics::MetricsLogger::create(&path)?.log(3, "auc", &0.51)?;
/// let r = dp_metrics::read_log(&path)?;
/// assert_eq!((r[0].step, r[0].metric.as_str(), r[0].value.as_f64()), (3, "auc", Some(0.51)));
/// std::fs::remove_file(&path)?;
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn read_log(path: impl AsRef<Path>) -> Result<Vec<LogRecord<serde_json::Value>>> {
    let reader = BufReader::new(File::open(path)?);
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .map_err(|e| MetricsError::InvalidArgument(format!("line {}: {e}", i + 1)))?,
        );
    }
    Ok(out)
}
