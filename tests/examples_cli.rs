//! Hostile command-line values for every example: each run must end quickly with a non-zero
//! exit status and an error message, never a panic, never a run that trains with the value.
//!
//! Covered: 11 examples, 75 numeric flags, 4 values each (NaN, ∞, −1, 0; 0 is left out where
//! it is a documented setting: BAM's r and α, a sparsity of 0), 297 runs. `abadi_dp_sgd`
//! needs the full datasets and is left out; `bench_step` has no numeric training flags.
//!
//! The binaries are the ones `cargo test --workspace` builds next to this test
//! (`target/<profile>/examples/`); run the whole workspace's tests, not this file alone.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CASES: &[(&str, &[&str])] = &[
    (
        "andrew_adaptive_clipping",
        &["--epochs", "--batch-size", "--lr", "--epsilon", "--delta"],
    ),
    (
        "bu_automatic_clipping",
        &[
            "--epochs",
            "--batch-size",
            "--lr",
            "--clips",
            "--epsilon",
            "--delta",
        ],
    ),
    (
        "chilukoti_auto_dpsgd",
        &[
            "--epochs",
            "--batch-size",
            "--lr",
            "--published-lr",
            "--clip",
            "--step-factor",
            "--epsilon",
            "--delta",
        ],
    ),
    ("esipova_global_adapt", &["--epochs", "--sigma", "--delta"]),
    (
        "knolle_bam",
        &[
            "--epochs",
            "--batch-size",
            "--clip",
            "--lr",
            "--radius",
            "--alpha",
            "--epsilon",
            "--delta",
        ],
    ),
    (
        "loss_landscape",
        &[
            "--epochs",
            "--batch-size",
            "--lr",
            "--clip",
            "--epsilon",
            "--delta",
            "--rho",
            "--hvp-eps",
        ],
    ),
    (
        "privacy_budget",
        &[
            "--sampling-rate",
            "--noise-multiplier",
            "--target-epsilon",
            "--epochs",
            "--delta",
        ],
    ),
    (
        "tang_dp_adambc",
        &[
            "--epochs",
            "--batch-size",
            "--clip",
            "--epsilon",
            "--delta",
            "--lr-sgd",
            "--lr-adam",
            "--lr-adambc",
        ],
    ),
    (
        "tramer_scatternet",
        &[
            "--epochs",
            "--clip",
            "--epsilon",
            "--sweep",
            "--delta",
            "--groups",
            "--ema-decay",
        ],
    ),
    (
        "watson_clipping_pruning",
        &[
            "--epochs",
            "--batch-size",
            "--clip",
            "--lr",
            "--epsilon",
            "--delta",
            "--sparsities",
        ],
    ),
    (
        "xiao_clipping_bias",
        &[
            "--epochs",
            "--batch-size",
            "--clip",
            "--lr",
            "--units",
            "--width",
            "--probe",
            "--probe-every",
            "--epsilon",
            "--delta",
        ],
    ),
];

/// Flags for which 0 is a legitimate setting (BAM with r = 0 or α = 0 is DP-SGD; a
/// sparsity of 0 is the dense model): those runs would train, so 0 is not sent.
const ZERO_IS_VALID: &[&str] = &["--radius", "--alpha", "--sparsities"];

fn examples_dir() -> PathBuf {
    // target/<profile>/deps/examples_cli-… → target/<profile>/examples
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("examples")
}

fn run(
    bin: &PathBuf,
    flag: &str,
    value: &str,
    out: &std::path::Path,
) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .arg(format!("{flag}={value}"))
        .current_dir(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn example");
    // Refusals take well under a second; a run still going after a minute is training.
    let limit = Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            use std::io::Read;
            if let Some(mut s) = child.stderr.take() {
                let _ = s.read_to_string(&mut err);
            }
            return (status.code(), err, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return (None, "still running after 60 s".into(), started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_example_refuses_hostile_numeric_flags() {
    let dir = examples_dir();
    let out = std::env::temp_dir().join(format!("dp_lab_examples_cli_{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let mut jobs = Vec::new();
    for (example, flags) in CASES {
        let bin = dir.join(example);
        assert!(
            bin.exists(),
            "{} is not built: run `cargo test --workspace`, which builds the examples",
            bin.display()
        );
        for flag in *flags {
            for value in ["nan", "inf", "-1", "0"] {
                if value == "0" && ZERO_IS_VALID.contains(flag) {
                    continue;
                }
                jobs.push((bin.clone(), *example, *flag, value));
            }
        }
    }
    // Two at a time (the CI machine has two cores).
    let jobs = std::sync::Mutex::new(jobs.into_iter());
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let Some((bin, example, flag, value)) = jobs.lock().unwrap().next() else {
                    break;
                };
                let (code, err, took) = run(&bin, flag, value, &out);
                let last = err.lines().last().unwrap_or("").to_string();
                let bad = match code {
                    None => Some(format!("did not finish ({took:?})")),
                    Some(0) => Some("exited 0: trained with the value".into()),
                    Some(101) => Some(format!("panicked: {last}")),
                    Some(_) if err.contains("panicked") => Some(format!("panicked: {last}")),
                    Some(_) if err.trim().is_empty() => Some("failed without a message".into()),
                    Some(_) => None,
                };
                if let Some(why) = bad {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("{example} {flag}={value}: {why}"));
                }
            });
        }
    });
    let _ = std::fs::remove_dir_all(&out);
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} hostile runs misbehaved:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
