//! Checkpoints: atomic saves that survive a real SIGKILL at any moment, resume refusing a
//! mismatched (weights, state) pair, and owner-only files.

use candle_core::Device;
use dp_core::{models, Model, Sequential};
use dp_optim::{
    checkpoint_step, BatchSize, Delta, Epochs, FixedClip, PrivateTrainer, Sgd, TrainError,
    TrainerConfig,
};
use std::path::{Path, PathBuf};

/// Environment variable that turns `checkpoint_writer_child` into the writer of the kill test.
const CHILD_DIR: &str = "DP_OPTIM_KILL_TEST_DIR";

/// A small synthetic task (512 examples, 16 features, 3 classes): steps take microseconds, so
/// the writer spends most of its time inside saves, where the kills should land.
fn data() -> dp_data::Dataset {
    let n = 512;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let features: Vec<f32> = (0..n * 16).map(|_| next()).collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
    dp_data::Dataset::new("synthetic", features, labels, vec![16], 3).unwrap()
}

fn model() -> Sequential {
    models::mlp(&[16, 8, 3], &Device::Cpu, 3).unwrap()
}

fn config() -> TrainerConfig {
    // q = 32/512: 16 steps per epoch, 4,000 planned steps (more than any child reaches).
    TrainerConfig::new(Epochs(250.0), BatchSize(32.0), Delta(1e-5)).with_seed(21)
}

fn parts() -> (Box<Sgd>, Box<FixedClip>) {
    (
        Box::new(Sgd::new(0.2)),
        Box::new(FixedClip::new(1.0, 1.1).unwrap()),
    )
}

fn fresh(train: &dp_data::Dataset) -> PrivateTrainer<Sequential> {
    let (o, m) = parts();
    PrivateTrainer::new(model(), o, m, config(), train).unwrap()
}

fn resume(dir: &Path, train: &dp_data::Dataset) -> dp_optim::Result<PrivateTrainer<Sequential>> {
    let (o, m) = parts();
    PrivateTrainer::resume(dir, model(), o, m, train, &Device::Cpu)
}

fn flat(m: &impl Model) -> Vec<f32> {
    m.param_tensors()
        .iter()
        .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dp_optim_ck_{tag}_{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    d
}

/// The file the manifest in `dir` names for `key` ("weights" or "state").
fn named_file(dir: &Path, key: &str) -> PathBuf {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    dir.join(m[key]["file"].as_str().unwrap())
}

fn is_checkpoint_error(r: dp_optim::Result<PrivateTrainer<Sequential>>) -> Option<String> {
    match r {
        Err(TrainError::Checkpoint { reason, .. }) => Some(reason),
        _ => None,
    }
}

/// Two checkpoints of one run, at steps 2 and 4, in two directories.
fn two_checkpoints(tag: &str) -> (dp_data::Dataset, PathBuf, PathBuf) {
    let train = data();
    let (early, late) = (
        temp_dir(&format!("{tag}_early")),
        temp_dir(&format!("{tag}_late")),
    );
    let mut t = fresh(&train);
    for _ in 0..2 {
        t.step(&train, &Device::Cpu).unwrap().unwrap();
    }
    t.save_checkpoint(&early).unwrap();
    for _ in 0..2 {
        t.step(&train, &Device::Cpu).unwrap().unwrap();
    }
    t.save_checkpoint(&late).unwrap();
    (train, early, late)
}

#[test]
fn weights_of_a_later_step_with_an_earlier_state_are_refused() {
    let (train, early, late) = two_checkpoints("mix_w");
    assert_eq!(resume(&early, &train).unwrap().steps_taken(), 2);
    std::fs::copy(named_file(&late, "weights"), named_file(&early, "weights")).unwrap();
    let reason = is_checkpoint_error(resume(&early, &train)).expect("a typed checkpoint error");
    assert!(reason.contains("do not match the manifest"), "{reason}");
    std::fs::remove_dir_all(&early).ok();
    std::fs::remove_dir_all(&late).ok();
}

#[test]
fn a_state_of_another_step_is_refused() {
    let (train, early, late) = two_checkpoints("mix_s");
    std::fs::copy(named_file(&early, "state"), named_file(&late, "state")).unwrap();
    assert!(is_checkpoint_error(resume(&late, &train)).is_some());
    std::fs::remove_dir_all(&early).ok();
    std::fs::remove_dir_all(&late).ok();
}

#[test]
fn a_manifest_whose_step_disagrees_with_the_state_is_refused() {
    let (train, early, late) = two_checkpoints("mix_m");
    let path = early.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["step"] = serde_json::json!(4);
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    let reason = is_checkpoint_error(resume(&early, &train)).expect("a typed checkpoint error");
    assert!(reason.contains("step 2"), "{reason}");
    // Without a manifest there is no complete checkpoint, whatever else the directory holds.
    std::fs::remove_file(early.join("manifest.json")).unwrap();
    assert!(is_checkpoint_error(resume(&early, &train)).is_some());
    assert!(checkpoint_step(&early).is_err());
    assert_eq!(checkpoint_step(&late).unwrap(), 4);
    std::fs::remove_dir_all(&early).ok();
    std::fs::remove_dir_all(&late).ok();
}

#[test]
fn a_new_save_replaces_the_previous_files_only_when_complete() {
    let train = data();
    let dir = temp_dir("generations");
    let mut t = fresh(&train);
    t.step(&train, &Device::Cpu).unwrap().unwrap();
    t.save_checkpoint(&dir).unwrap();
    let first_weights = named_file(&dir, "weights");
    // Leftovers of a killed save are cleaned up by the next save; unrelated files are kept.
    std::fs::write(dir.join(".dp-ckpt-tmp-999-weights-g7.safetensors"), b"torn").unwrap();
    std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
    t.step(&train, &Device::Cpu).unwrap().unwrap();
    t.save_checkpoint(&dir).unwrap();
    assert_ne!(named_file(&dir, "weights"), first_weights);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "manifest.json",
            "notes.txt",
            "state-g1.json",
            "weights-g1.safetensors"
        ]
    );
    assert_eq!(resume(&dir, &train).unwrap().steps_taken(), 2);
    std::fs::remove_dir_all(&dir).ok();
}

#[cfg(unix)]
#[test]
fn checkpoint_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let train = data();
    let dir = temp_dir("perms");
    let t = fresh(&train);
    t.save_checkpoint(&dir).unwrap();
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let mode = e.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{:?}", e.file_name());
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The writer of the kill test: resumes the checkpoint in `$DP_OPTIM_KILL_TEST_DIR` if there
/// is one (else starts the run), then steps and saves after every step until killed.
#[test]
#[ignore = "the child process of checkpoints_survive_sigkill_at_any_moment"]
fn checkpoint_writer_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let train = data();
    let mut t = if dir.join("manifest.json").exists() {
        resume(&dir, &train).unwrap()
    } else {
        fresh(&train)
    };
    while t.step(&train, &Device::Cpu).unwrap().is_some() {
        t.save_checkpoint(&dir).unwrap();
    }
}

/// Kills a writer (SIGKILL: no destructors, no flushing) at several moments and checks that
/// the directory always resumes to a (weights, state) pair of one step of the uninterrupted
/// run: the same weights, records and ε as that run at that step, and the same next step.
/// Pass or fail does not depend on where a kill lands: every moment must leave a valid pair.
#[cfg(unix)]
#[test]
fn checkpoints_survive_sigkill_at_any_moment() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let train = data();
    let dir = temp_dir("kill");
    // The uninterrupted run: weights and records after every step, computed as needed.
    let mut reference = fresh(&train);
    let mut ref_weights = vec![flat(reference.model())];
    let mut last_step = 0;
    let rounds = 20u64;
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "checkpoint_writer_child",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Let the writer get past start-up and into its save loop (a new save after the
        // one we saw), then kill it a varying number of milliseconds later.
        let start = Instant::now();
        let seen = checkpoint_step(&dir).ok();
        while checkpoint_step(&dir).ok() == seen {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the writer made no progress"
            );
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the writer exited early: {status}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(1_000 + (round * 7_919) % 23_000));
        child.kill().unwrap(); // SIGKILL on unix
        child.wait().unwrap();

        let resumed = resume(&dir, &train).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let s = resumed.steps_taken();
        assert!(s > last_step, "round {round}: step {s} after {last_step}");
        last_step = s;
        while ref_weights.len() as u64 <= s + 1 {
            reference.step(&train, &Device::Cpu).unwrap().unwrap();
            ref_weights.push(flat(reference.model()));
        }
        assert_eq!(
            flat(resumed.model()),
            ref_weights[s as usize],
            "round {round}"
        );
        // The records are those of the uninterrupted run. ε may differ in the last bit: an
        // accountant rebuilt from its history sums the per-order RDP in another order.
        let strip = |r: &dp_optim::StepRecord| dp_optim::StepRecord {
            epsilon: None,
            ..r.clone()
        };
        let want = &reference.records()[..s as usize];
        assert_eq!(resumed.records().len(), want.len(), "round {round}");
        for (a, b) in resumed.records().iter().zip(want) {
            assert_eq!(strip(a), strip(b), "round {round}");
            let (ea, eb) = (a.epsilon.unwrap(), b.epsilon.unwrap());
            assert!(
                (ea - eb).abs() <= 1e-12 * eb,
                "round {round}: ε {ea} vs {eb}"
            );
        }
        let (ea, eb) = (
            resumed.epsilon().unwrap(),
            want[want.len() - 1].epsilon.unwrap(),
        );
        assert!(
            (ea - eb).abs() <= 1e-12 * eb,
            "round {round}: ε {ea} vs {eb}"
        );
        // The noise and sampler streams are those of step s: the next step matches too.
        let mut next = resume(&dir, &train).unwrap();
        next.step(&train, &Device::Cpu).unwrap().unwrap();
        assert_eq!(
            flat(next.model()),
            ref_weights[s as usize + 1],
            "round {round}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_release_artefact_holds_the_model_and_its_privacy_report_and_nothing_else() {
    let d = data();
    let (opt, method) = parts();
    let mut t = PrivateTrainer::new(model(), opt, method, config(), &d).unwrap();
    for _ in 0..5 {
        t.step(&d, &Device::Cpu).unwrap().unwrap();
    }
    let dir = std::env::temp_dir().join(format!("dp_optim_release_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    t.save_release(&dir).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["model.safetensors", "privacy_report.json"]);
    // The report is the run's ε and nothing non-private (no loss, norms, batch sizes, seeds).
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("privacy_report.json")).unwrap()).unwrap();
    assert_eq!(report["epsilon"].as_f64().unwrap(), t.epsilon().unwrap());
    assert_eq!(report["steps"].as_u64().unwrap(), 5);
    let mut keys: Vec<&str> = report
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "accountant",
            "delta",
            "epsilon",
            "expected_batch_size",
            "guarantee",
            "method",
            "noise_multiplier",
            "sampling_rate",
            "steps",
            "target_epsilon"
        ]
    );
    // The weights are the model's.
    let w = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let params = t.model().named_params();
    assert_eq!(w.len(), params.len());
    for (name, p) in params {
        assert_eq!(
            w[&name].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            p.value.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
