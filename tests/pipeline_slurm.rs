//! The `--slurm` path against a real single-node Slurm: a small sweep submitted as a job
//! array gives the same results as the same sweep run locally with the same seeds. Needs the
//! daemons, so it runs only with `DP_LAB_SLURM=1`; `.ci/run` starts them with
//! `scripts/slurm-local.sh start` and runs this test that way.

use dp_lab::pipeline::SweepDir;
use std::process::Command;

#[test]
fn a_slurm_array_sweep_equals_the_local_one() {
    if std::env::var("DP_LAB_SLURM").as_deref() != Ok("1") {
        eprintln!(
            "skipped: set DP_LAB_SLURM=1 with a Slurm running (scripts/slurm-local.sh start)"
        );
        return;
    }
    let d = std::env::temp_dir().join(format!("dp-lab-slurm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let sweep = d.join("s.toml");
    std::fs::write(
        &sweep,
        "axes = { seed = [0, 1] }\n[base]\nmodel = \"mlp\"\nmlp_hidden = [16]\nepochs = 0.5\nbatch_size = 200\nmetrics = [\"membership_auc\"]\n",
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_dp-lab");
    let run = |out: &str, extra: &[&str]| {
        let o = Command::new(bin)
            .args([
                "sweep",
                sweep.to_str().unwrap(),
                "--out",
                d.join(out).to_str().unwrap(),
                "--quiet",
                "--threads",
                "1",
            ])
            .args(extra)
            .env("CANDLE_NUM_THREADS", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    run("slurm", &["--slurm", "--submit"]);
    run("local", &[]);
    let (s, l) = (
        SweepDir::new(d.join("slurm")),
        SweepDir::new(d.join("local")),
    );
    let m = s.manifest().unwrap();
    let t0 = std::time::Instant::now();
    while !m.runs.iter().all(|r| s.run(&r.id).read_result().is_some()) {
        assert!(
            t0.elapsed().as_secs() < 300,
            "the array did not finish in 5 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for r in &m.runs {
        let (a, b) = (
            s.run(&r.id).read_result().unwrap(),
            l.run(&r.id).read_result().unwrap(),
        );
        assert_eq!(a.test_accuracy, b.test_accuracy, "{}", r.id);
        assert_eq!(a.epsilon, b.epsilon);
        assert_eq!(a.steps, b.steps);
        assert_eq!(a.metrics, b.metrics);
        assert_eq!(a.epochs, b.epochs);
    }
    let _ = std::fs::remove_dir_all(&d);
}
