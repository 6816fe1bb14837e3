//! Checkpoints: weights as safetensors, everything else (optimiser, method, accountant,
//! sampler and noise streams, records) as JSON, so that a resumed run continues exactly —
//! the same batches, the same noise, and the accountant's history rather than a fresh one.
//!
//! # Atomicity
//!
//! A checkpoint is three files: `weights-g<N>.safetensors`, `state-g<N>.json` and
//! `manifest.json`, which names the two files of generation `N`, the step, and each file's
//! length and 64-bit FNV-1a hash. A save writes each data file to a temporary file in the same
//! directory, fsyncs it, renames it into place, and only then writes the manifest the same
//! way (temporary file, fsync, rename, fsync of the directory). The manifest's rename is the
//! commit point: a crash before it leaves the previous manifest, which still names the
//! previous generation's files (they are deleted only after the new manifest is in place); a
//! crash after it leaves the new, complete pair. Why it matters: weights from one step with
//! the accountant and noise stream of another under-report ε and replay noise already in the
//! weights, so [`PrivateTrainer::resume`] refuses any pair whose hashes or step disagree with
//! the manifest ([`TrainError::Checkpoint`]). The hashes detect torn or mixed files, not a
//! deliberate forger (FNV-1a is not cryptographic): protect the directory itself.
//!
//! # Confidentiality
//!
//! The noise and sampler seeds are as sensitive as the data: whoever holds them can
//! subtract the noise from released gradients. On unix every file is created owner
//! read/write only (0o600) and a directory the save creates is 0o700. The step records in
//! the state carry non-private statistics ([`crate::StepRecord`]): a checkpoint is never a
//! release artefact.
//!
//! # Resuming twice
//!
//! Resuming the same checkpoint twice replays the same noise stream and the same batches:
//! two continuations released from one checkpoint add identical noise, and anyone who sees
//! both can cancel it. Their combined privacy cost is not the ε either reports. Continue a
//! checkpoint once; to try something else, start a fresh run (fresh seed) instead.
//!
//! One writer per directory: two runs saving into the same directory race on the manifest.

use crate::error::{Result, TrainError};
use crate::methods::PrivacyMethod;
use crate::optim::BaseOptimizer;
use crate::records::PrivacyReport;
use crate::state::TrainerState;
use crate::trainer::{BoxedSampler, PrivateTrainer};
use candle_core::Device;
use dp_core::weights::WeightFormat;
use dp_core::{GaussianNoise, Model};
use dp_data::{
    Dataset, FixedSizeSampler, PoissonSampler, SamplerState, SamplingScheme, ShuffledSampler,
};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The commit record of a checkpoint directory.
const MANIFEST: &str = "manifest.json";
/// Version of the manifest format.
const FORMAT: u32 = 1;
/// Prefix of every temporary file a save creates (removed by the next save).
const TMP_PREFIX: &str = ".dp-ckpt-tmp-";

/// One data file of a checkpoint as the manifest binds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileEntry {
    /// File name inside the checkpoint directory.
    file: String,
    /// Length in bytes.
    len: u64,
    /// 64-bit FNV-1a of the contents, as 16 hex digits.
    fnv1a64: String,
}

/// `manifest.json`: which weights and state belong together, and at which step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    /// Incremented by every save; names the data files, so a save never overwrites a file
    /// the current manifest names.
    generation: u64,
    /// The trainer's step when saved (also stored in the state, checked on resume).
    step: u64,
    weights: FileEntry,
    state: FileEntry,
}

/// 64-bit FNV-1a: a dependency-free checksum that binds the files to the manifest.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn entry(file: String, bytes: &[u8]) -> FileEntry {
    FileEntry {
        file,
        len: bytes.len() as u64,
        fnv1a64: format!("{:016x}", fnv1a64(bytes)),
    }
}

/// Rebuilds a sampler of the scheme that wrote `state`, continuing its stream.
fn sampler_from_state(state: SamplerState) -> Result<BoxedSampler> {
    Ok(match state.scheme {
        SamplingScheme::Poisson { .. } => Box::new(PoissonSampler::from_state(state)?),
        SamplingScheme::Shuffled { .. } => Box::new(ShuffledSampler::from_state(state)?),
        SamplingScheme::FixedSizeWithoutReplacement { .. } => {
            Box::new(FixedSizeSampler::from_state(state)?)
        }
    })
}

fn ck_err(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Creates `path` (which must not exist) readable and writable by the owner only.
fn create_private(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// Creates `dir` (owner-only on unix) if it does not exist.
fn create_dir_private(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// Flushes a directory's entries (the renames into it) to disk. Not every platform can open
/// a directory for syncing; there the renames are as durable as the platform makes them.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Writes `bytes` to `dir/name` atomically: a private temporary file, fsync, rename.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{TMP_PREFIX}{}-{name}", std::process::id()));
    // A temporary file left by a process that was killed is garbage: start afresh.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let mut f = create_private(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

/// Reads `dir/e.file` and checks its length and hash against the manifest.
fn read_checked(dir: &Path, e: &FileEntry) -> Result<(PathBuf, Vec<u8>)> {
    if e.file.contains(['/', '\\']) || e.file.starts_with('.') {
        return Err(ck_err(
            &dir.join(MANIFEST),
            format!("file name {:?} is not a plain name", e.file),
        ));
    }
    let path = dir.join(&e.file);
    let bytes = std::fs::read(&path).map_err(|err| ck_err(&path, err.to_string()))?;
    let hash = format!("{:016x}", fnv1a64(&bytes));
    if bytes.len() as u64 != e.len || hash != e.fnv1a64 {
        return Err(ck_err(
            &path,
            format!(
                "contents ({} bytes, fnv1a64 {hash}) do not match the manifest ({} bytes, \
                 {}): the file is torn or from another checkpoint",
                bytes.len(),
                e.len,
                e.fnv1a64
            ),
        ));
    }
    Ok((path, bytes))
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(|e| {
        ck_err(
            &path,
            format!("{e} (no complete checkpoint in this directory)"),
        )
    })?;
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| ck_err(&path, e.to_string()))?;
    if m.format != FORMAT {
        return Err(ck_err(
            &path,
            format!("manifest format {} (this build reads {FORMAT})", m.format),
        ));
    }
    Ok(m)
}

/// The step of the complete checkpoint in `dir` (the one [`PrivateTrainer::resume`] would
/// load), or an error if there is none. Reads only the manifest.
pub fn checkpoint_step(dir: impl AsRef<Path>) -> Result<u64> {
    Ok(read_manifest(dir.as_ref())?.step)
}

/// Whether `name` is a file a save may have written (a data file or a temporary file).
fn is_ours(name: &str) -> bool {
    name.starts_with(TMP_PREFIX)
        || (name.starts_with("weights-g") && name.ends_with(".safetensors"))
        || (name.starts_with("state-g") && name.ends_with(".json"))
}

/// Removes files of earlier generations and temporary files of killed saves; keeps the two
/// that `keep` names. Failures are ignored: leftovers waste space but are never read.
fn remove_stale(dir: &Path, keep: &Manifest) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_ours(name) && name != keep.weights.file && name != keep.state.file {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl<M: Model> PrivateTrainer<M> {
    /// The run's privacy report: ε, δ, what ε certifies, and the public settings behind it,
    /// free of the non-private per-step statistics.
    pub fn privacy_report(&self) -> Result<PrivacyReport> {
        Ok(PrivacyReport {
            epsilon: self.epsilon()?,
            delta: self.config().delta,
            guarantee: self.guarantee(),
            accountant: self.config().accountant,
            steps: self.steps_taken(),
            sampling_rate: self.sampling_rate(),
            expected_batch_size: self.config().expected_batch_size,
            noise_multiplier: self.method().noise_multiplier(),
            method: self.method().name(),
            target_epsilon: self.config().target_epsilon,
        })
    }

    /// Writes the run's release artefact into `dir`: `model.safetensors` (the weights) and
    /// `privacy_report.json` ([`PrivacyReport`]). Unlike a checkpoint it holds no seeds, no
    /// optimiser or sampler state and no per-step records (whose loss, batch size, clipped
    /// fraction and median norm are not private): it is what may be published. Each file is
    /// written atomically.
    pub fn save_release(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        create_dir_private(dir)?;
        let report = self.privacy_report()?;
        let wbytes = self.weight_bytes(dir, "release")?;
        write_atomic(dir, "model.safetensors", &wbytes)?;
        write_atomic(
            dir,
            "privacy_report.json",
            &serde_json::to_vec_pretty(&report)?,
        )?;
        sync_dir(dir)?;
        Ok(())
    }

    /// The model's weights as safetensors bytes. candle writes safetensors to a path only:
    /// they go to a private temporary file in `dir` (named with `tag`), which is read back
    /// (to hash and write atomically) and removed.
    fn weight_bytes(&self, dir: &Path, tag: &str) -> Result<Vec<u8>> {
        let weights = dp_core::weights::weights_to_tensors(self.model(), &WeightFormat::default())?;
        let staging = dir.join(format!(
            "{TMP_PREFIX}{}-{tag}.safetensors",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&staging);
        drop(create_private(&staging)?);
        candle_core::safetensors::save(&weights, &staging)?;
        let bytes = std::fs::read(&staging)?;
        std::fs::remove_file(&staging)?;
        Ok(bytes)
    }

    /// Saves the run into `dir` atomically: after a crash at any point, `dir` holds either
    /// this checkpoint or the previous one, never a mix (weights from one step with the
    /// accountant and noise stream of another would under-report ε and replay noise).
    /// Weights and state go to temporary files that are fsynced and renamed into place; a
    /// manifest naming both (step, lengths, hashes) is written last the same way and is the
    /// commit point. The previous checkpoint's files are removed only once the new manifest
    /// is in place. Files are owner read/write only on unix (they hold the noise seeds).
    /// The state holds the non-private per-step statistics: a checkpoint is never a release
    /// artefact. One writer per directory.
    ///
    /// ```
    /// use dp_optim::{checkpoint_step, BatchSize, Delta, Epochs, FixedClip, PrivateTrainer, Sgd, TrainerConfig};
    /// use candle_core::Device;
    /// let data = dp_data::load_bundled_mnist().unwrap();
    /// let model = dp_core::models::mlp(&[784, 8, 10], &Device::Cpu, 0).unwrap();
    /// let cfg = TrainerConfig::new(Epochs(0.2), BatchSize(100.0), Delta(1e-5)).with_seed(0);
    /// let method = Box::new(FixedClip::new(1.0, 1.0).unwrap());
    /// let mut t = PrivateTrainer::new(model, Box::new(Sgd::new(0.1)), method, cfg, &data.train).unwrap();
    /// let dir = std::env::temp_dir().join(format!("dp-optim-doc-save-{}", std::process::id()));
    /// for _ in 0..2 {
    ///     t.step(&data.train, &Device::Cpu).unwrap();
    ///     t.save_checkpoint(&dir).unwrap(); // replaces the previous checkpoint atomically
    /// }
    /// assert_eq!(checkpoint_step(&dir).unwrap(), 2);
    /// // One manifest, the weights and the state: the first save's files are gone.
    /// assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn save_checkpoint(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        create_dir_private(dir)?;
        let generation = match read_manifest(dir) {
            Ok(m) => m.generation + 1,
            Err(_) => 0,
        };
        let wbytes = self.weight_bytes(dir, "staging")?;
        let state = self.export_state()?;
        let sbytes = serde_json::to_vec_pretty(&state)?;
        let manifest = Manifest {
            format: FORMAT,
            generation,
            step: state.step,
            weights: entry(format!("weights-g{generation}.safetensors"), &wbytes),
            state: entry(format!("state-g{generation}.json"), &sbytes),
        };
        write_atomic(dir, &manifest.weights.file, &wbytes)?;
        write_atomic(dir, &manifest.state.file, &sbytes)?;
        // The data files' names must be durable before the manifest that names them.
        sync_dir(dir)?;
        write_atomic(dir, MANIFEST, &serde_json::to_vec_pretty(&manifest)?)?;
        sync_dir(dir)?;
        remove_stale(dir, &manifest);
        Ok(())
    }

    /// Resumes a run saved by [`PrivateTrainer::save_checkpoint`] into a freshly built
    /// `model`, `optimizer` and `method` of the same kinds. The accountant, sampler and
    /// noise streams continue where they stopped: ε after resuming equals ε of an
    /// uninterrupted run (tested). The loss is the default (cross-entropy): set another with
    /// [`PrivateTrainer::set_loss`].
    ///
    /// Refused ([`TrainError::Checkpoint`]): no manifest; a weights or state file whose
    /// length or hash differs from the manifest (torn, or from another checkpoint); a state
    /// whose step differs from the manifest's.
    ///
    /// Resume a checkpoint **once**: a second continuation of the same checkpoint replays the
    /// same noise stream and batches, so two released continuations add identical noise that
    /// anyone holding both can cancel, and their joint privacy cost is not the ε either
    /// reports. To explore alternatives, start fresh runs with fresh seeds.
    ///
    /// A run killed after 3 of its 8 steps and resumed ends where the uninterrupted run
    /// ends, with the same ε:
    ///
    /// ```
    /// use dp_optim::{BatchSize, Delta, Epochs, FixedClip, PrivateTrainer, Sgd, TrainerConfig};
    /// use dp_core::Model;
    /// use candle_core::Device;
    /// let dev = Device::Cpu;
    /// let data = dp_data::load_bundled_mnist().unwrap();
    /// let fresh = || {
    ///     let model = dp_core::models::mlp(&[784, 8, 10], &dev, 0).unwrap();
    ///     (model, Box::new(Sgd::new(0.1)), Box::new(FixedClip::new(1.0, 1.0).unwrap()))
    /// };
    /// let cfg = TrainerConfig::new(Epochs(0.2), BatchSize(100.0), Delta(1e-5)).with_seed(0);
    /// let (model, opt, method) = fresh();
    /// let mut whole = PrivateTrainer::new(model, opt, method, cfg.clone(), &data.train).unwrap();
    /// let whole_report = whole.train(&data.train, None).unwrap();
    ///
    /// let dir = std::env::temp_dir().join(format!("dp-optim-doc-resume-{}", std::process::id()));
    /// let (model, opt, method) = fresh();
    /// let mut t = PrivateTrainer::new(model, opt, method, cfg, &data.train).unwrap();
    /// for _ in 0..3 {
    ///     t.step(&data.train, &dev).unwrap();
    /// }
    /// t.save_checkpoint(&dir).unwrap();
    /// drop(t); // the process dies here
    ///
    /// let (model, opt, method) = fresh(); // the same kinds, freshly built
    /// let mut t = PrivateTrainer::resume(&dir, model, opt, method, &data.train, &dev).unwrap();
    /// assert_eq!(t.steps_taken(), 3);
    /// let report = t.train(&data.train, None).unwrap();
    /// assert_eq!(report.steps, whole_report.steps);
    /// assert_eq!(report.epsilon, whole_report.epsilon);
    /// assert_eq!(t.model().param_tensors()[0].to_vec2::<f32>().unwrap(),
    ///            whole.model().param_tensors()[0].to_vec2::<f32>().unwrap());
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn resume(
        dir: impl AsRef<Path>,
        mut model: M,
        mut optimizer: Box<dyn BaseOptimizer>,
        mut method: Box<dyn PrivacyMethod>,
        train: &Dataset,
        device: &Device,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let manifest = read_manifest(dir)?;
        let (wpath, wbytes) = read_checked(dir, &manifest.weights)?;
        let (spath, sbytes) = read_checked(dir, &manifest.state)?;
        let state: TrainerState =
            serde_json::from_slice(&sbytes).map_err(|e| ck_err(&spath, e.to_string()))?;
        if state.step != manifest.step {
            return Err(ck_err(
                &spath,
                format!(
                    "state is at step {}, the manifest says {}",
                    state.step, manifest.step
                ),
            ));
        }
        let weights = candle_core::safetensors::load_buffer(&wbytes, device)
            .map_err(|e| ck_err(&wpath, e.to_string()))?;
        dp_core::weights::weights_from_tensors(&mut model, weights, &WeightFormat::default())
            .map_err(|e| ck_err(&wpath, e.to_string()))?;
        if state.dataset_len != train.len() {
            return Err(ck_err(
                &spath,
                format!(
                    "saved for {} examples, got {}",
                    state.dataset_len,
                    train.len()
                ),
            ));
        }
        if method.name() != state.method_name {
            return Err(ck_err(
                &spath,
                format!("saved method {}, got {}", state.method_name, method.name()),
            ));
        }
        optimizer.load_state(&state.optimizer, device)?;
        method.load_state(&state.method)?;
        let sampler = sampler_from_state(state.sampler.clone())?;
        let noise = GaussianNoise::from_state(&state.noise);
        PrivateTrainer::from_parts(model, optimizer, method, state, sampler, noise)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        // From the FNV reference (draft-eastlake-fnv): "" and "a".
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn only_checkpoint_files_are_cleaned_up() {
        assert!(is_ours("weights-g3.safetensors") && is_ours("state-g0.json"));
        assert!(is_ours(".dp-ckpt-tmp-12-manifest.json"));
        assert!(!is_ours("manifest.json") && !is_ours("notes.txt") && !is_ours("model.pt"));
    }
}
