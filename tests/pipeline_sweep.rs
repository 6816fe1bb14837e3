//! The `dp-lab` pipeline: expansion of sweep files against hand-written lists, validation
//! errors that name the field, and the command end to end on the bundled digits (a two-run
//! sweep whose CSV matches the runs' own JSON, a failing run that does not stop the others,
//! resumption after the workers are killed mid-run, and a report that parses and holds
//! every plot).

use dp_lab::pipeline::{RunConfig, SweepDir, SweepFile};
use std::path::{Path, PathBuf};
use std::process::Command;

fn expand(text: &str) -> Result<Vec<Vec<(String, String)>>, String> {
    let s = SweepFile::from_toml(text, "t.toml").map_err(|e| e.to_string())?;
    let runs = s.expand("t.toml", false).map_err(|e| e.to_string())?;
    Ok(runs
        .into_iter()
        .map(|r| {
            r.overrides
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect()
        })
        .collect())
}

fn pairs(v: &[&[(&str, &str)]]) -> Vec<Vec<(String, String)>> {
    v.iter()
        .map(|r| {
            r.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

#[test]
fn axes_expand_as_a_product_in_file_order() {
    let got = expand(
        r#"
        [base]
        epochs = 1
        [[grid]]
        axes = { "method.name" = ["dp_sgd", "bam"], epsilon = [1, 3] }
        "#,
    )
    .unwrap();
    assert_eq!(
        got,
        pairs(&[
            &[("method.name", "\"dp_sgd\""), ("epsilon", "1")],
            &[("method.name", "\"dp_sgd\""), ("epsilon", "3")],
            &[("method.name", "\"bam\""), ("epsilon", "1")],
            &[("method.name", "\"bam\""), ("epsilon", "3")],
        ])
    );
}

#[test]
fn zips_vary_together_and_grids_concatenate() {
    let got = expand(
        r#"
        axes = { seed = [0, 1] }
        zip = [{ "optimizer.lr" = [0.5, 2.0], "method.clip" = [0.1, 0.2] }]
        [[grid]]
        axes = { regime = ["non-private"] }
        "#,
    )
    .unwrap();
    assert_eq!(
        got,
        pairs(&[
            &[
                ("seed", "0"),
                ("optimizer.lr", "0.5"),
                ("method.clip", "0.1")
            ],
            &[
                ("seed", "0"),
                ("optimizer.lr", "2.0"),
                ("method.clip", "0.2")
            ],
            &[
                ("seed", "1"),
                ("optimizer.lr", "0.5"),
                ("method.clip", "0.1")
            ],
            &[
                ("seed", "1"),
                ("optimizer.lr", "2.0"),
                ("method.clip", "0.2")
            ],
            &[("regime", "\"non-private\"")],
        ])
    );
}

#[test]
fn ranges_expand_into_their_grid() {
    let got =
        expand(r#"axes = { epsilon = { start = 1.0, stop = 8.0, num = 4, log = true } }"#).unwrap();
    let eps: Vec<f64> = got.iter().map(|r| r[0].1.parse().unwrap()).collect();
    let want = [1.0, 2.0, 4.0, 8.0];
    for (a, b) in eps.iter().zip(want) {
        assert!((a - b).abs() < 1e-9, "{eps:?}");
    }
    let got = expand(r#"axes = { seed = { start = 0, stop = 4, step = 2 } }"#).unwrap();
    assert_eq!(
        got,
        pairs(&[&[("seed", "0")], &[("seed", "2")], &[("seed", "4")]])
    );
}

#[test]
fn bad_sweeps_are_refused_naming_what_is_wrong() {
    let err = |t: &str| expand(t).unwrap_err();
    assert!(err(r#"axes = { epohcs = [1, 2] }"#).contains("epohcs"));
    assert!(
        err(r#"axes = { "method.name" = ["dp_sgd", "magic"] }"#).contains("unknown method 'magic'")
    );
    let e = err(r#"axes = { regime = ["non-private"], epsilon = [3] }"#);
    assert!(e.contains("not DP") && e.contains("epsilon"), "{e}");
    assert!(err(r#"axes = { epsilon = [] }"#).contains("at least one value"));
    assert!(err(r#"zip = [{ epsilon = [1, 2], seed = [0] }]"#).contains("zip"));
    assert!(err(r#"axes = { delta = [2.0] }"#).contains("delta"));
    let e = err(r#"axes = { "method.name" = ["bam"], sparsity = [0.5] }"#);
    assert!(e.contains("sparsity") && e.contains("bam"), "{e}");
    assert!(err(r#"axes = { seed = { start = 0, stop = 2000, step = 1 } }"#).contains("max_runs"));
    assert!(err("bogus = 1").contains("bogus"));
    assert!(err("[base]\nmodel = \"resnet\"").contains("resnet"));
    let e = err(r#"axes = { "optimizer.name" = ["lbfgs"] }"#);
    assert!(e.contains("optimizer.name") && e.contains("adam"), "{e}");
}

#[test]
fn every_field_has_a_default_and_resolved_configs_round_trip() {
    let cfg = RunConfig::default();
    cfg.validate("default").unwrap();
    let text = toml::to_string(&cfg).unwrap();
    let back = RunConfig::from_toml(&text, "x").unwrap();
    assert_eq!(back, cfg);
    assert!(RunConfig::from_toml("[method]\nname = \"bam\"\nradious = 1", "x").is_err());
}

// ---- the binary end to end

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dp-lab"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dp-lab-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `dp-lab ARGS` with one thread per process (as the pool gives its workers).
fn dp_lab(args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .env("CANDLE_NUM_THREADS", "1")
        .output()
        .unwrap()
}

/// `dp-lab sweep FILE --out OUT --quiet [--jobs N]`.
fn sweep_args(file: &Path, out: &Path, jobs: Option<usize>) -> Vec<String> {
    let mut a: Vec<String> = ["sweep", path_str(file), "--out", path_str(out), "--quiet"]
        .map(String::from)
        .to_vec();
    if let Some(j) = jobs {
        a.extend(["--jobs".to_string(), j.to_string()]);
    }
    a
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn sweep_cmd(file: &Path, out: &Path, jobs: Option<usize>) -> std::process::Output {
    let a = sweep_args(file, out, jobs);
    dp_lab(&a.iter().map(String::as_str).collect::<Vec<_>>())
}

const SMALL_BASE: &str = r#"
[base]
dataset = "bundled"
model = "mlp"
mlp_hidden = [16]
epochs = 0.5
batch_size = 200
metrics = ["per_class_accuracy", "membership_auc", "sparsity"]
[base.method]
clip = 1.0
[base.optimizer]
lr = 0.5
"#;

#[test]
fn a_two_run_sweep_end_to_end_and_its_csv_matches_the_runs_json() {
    let d = tmp("e2e");
    let sweep = write(
        &d,
        "two.toml",
        &format!("{SMALL_BASE}\n[[grid]]\naxes = {{ \"method.name\" = [\"dp_sgd\"], epsilon = [2] }}\n[[grid]]\naxes = {{ regime = [\"non-private\"] }}\n"),
    );
    let out = d.join("out");
    let o = sweep_cmd(&sweep, &out, Some(2));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = dp_lab(&["report", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let dir = SweepDir::new(&out);
    let m = dir.manifest().unwrap();
    assert_eq!(m.runs.len(), 2);
    let mut rdr = csv::Reader::from_path(out.join("results.csv")).unwrap();
    let header = rdr.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 2);
    for (row, run) in rows.iter().zip(&m.runs) {
        let r = dir.run(&run.id).read_result().unwrap();
        assert_eq!(&row[col("run_id")], run.id);
        let acc: f64 = row[col("test_accuracy")].parse().unwrap();
        assert_eq!(Some(acc), r.test_accuracy);
        assert_eq!(row[col("steps")].parse::<u64>().unwrap(), r.steps);
        let auc: f64 = row[col("membership_auc")].parse().unwrap();
        assert_eq!(Some(&auc), r.metrics.get("membership_auc"));
        if r.dp {
            let e: f64 = row[col("epsilon")].parse().unwrap();
            assert!(e <= 2.0 && Some(e) == r.epsilon);
        } else {
            // A run that is not DP never reports a number for ε.
            assert_eq!(&row[col("epsilon")], "not DP");
            assert!(r.epsilon.is_none());
        }
        // The report adds the CKA to the non-private run of the same setting (not to the
        // non-private run itself).
        let cka = &row[col("cka_to_non_private")];
        if r.config.regime == "non-private" {
            assert_eq!(cka, "");
        } else {
            let v: f64 = cka.parse().unwrap();
            assert!(v > 0.0 && v <= 1.0 + 1e-9, "CKA {v}");
        }
        // The resolved config is next to the result, and reproduces it.
        let cfg = std::fs::read_to_string(dir.run(&run.id).config()).unwrap();
        assert_eq!(RunConfig::from_toml(&cfg, "c").unwrap(), r.config);
    }
    // The report parses (it is well-formed XHTML) and embeds every plot it wrote.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(&html, opts).expect("report.html parses");
    let svgs = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "svg")
        .count();
    let files = std::fs::read_dir(out.join("report")).unwrap().count();
    assert!(files >= 3, "accuracy and two metrics: {files}");
    assert_eq!(svgs, files);
    assert!(html.contains("Best configuration"));
    assert!(std::fs::read_to_string(out.join("report.md"))
        .unwrap()
        .contains("| bundled-mnist-5k |"));

    // Re-running skips the finished runs; another sweep in the same directory is refused.
    let o = sweep_cmd(&sweep, &out, None);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("2 skipped"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let other = write(
        &d,
        "other.toml",
        &format!("axes = {{ seed = [5] }}\n{SMALL_BASE}"),
    );
    let o = sweep_cmd(&other, &out, None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("another sweep"));
    let o = dp_lab(&["status", out.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("2 done"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_failing_run_is_recorded_and_does_not_stop_the_others() {
    let d = tmp("fail");
    // The first run's data directory does not exist: it fails when it loads its data,
    // after validation, and the two runs after it still run.
    let sweep = write(
        &d,
        "fail.toml",
        &format!("axes = {{ dataset = [\"mnist\"], data_dir = [\"/nonexistent/dp-lab\"] }}\n{SMALL_BASE}\n[[grid]]\naxes = {{ seed = [0, 1] }}\n"),
    );
    let out = d.join("out");
    let o = sweep_cmd(&sweep, &out, Some(1));
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let dir = SweepDir::new(&out);
    let m = dir.manifest().unwrap();
    let states: Vec<_> = m.runs.iter().map(|r| dir.state(&r.id)).collect();
    assert!(
        matches!(&states[0], dp_lab::pipeline::RunState::Failed(msg) if msg.contains("nonexistent")),
        "{states:?}"
    );
    assert_eq!(states[1], dp_lab::pipeline::RunState::Done);
    assert_eq!(states[2], dp_lab::pipeline::RunState::Done);
    let o = dp_lab(&["status", out.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("2 done, 0 running, 1 failed"));
    let _ = std::fs::remove_dir_all(&d);
}

#[cfg(unix)]
#[test]
fn a_killed_sweep_loses_nothing_and_resumes_from_its_checkpoints() {
    use std::os::unix::process::CommandExt;
    let d = tmp("kill");
    // Runs long enough (the CNN, 20 epochs) that the kill lands while they train.
    let base = SMALL_BASE
        .replace("epochs = 0.5", "epochs = 20")
        .replace("model = \"mlp\"", "model = \"mnist_cnn\"");
    let sweep = write(
        &d,
        "kill.toml",
        &format!("axes = {{ seed = [0, 1] }}\n{base}"),
    );
    let out = d.join("out");
    let mut child = Command::new(bin())
        .args(sweep_args(&sweep, &out, Some(2)))
        .env("CANDLE_NUM_THREADS", "1")
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = child.id() as i32;
    let dir = SweepDir::new(&out);
    // Wait until a run has checkpointed, then kill the whole group (the sweep and its
    // workers) with SIGKILL.
    let t0 = std::time::Instant::now();
    loop {
        let ready = dir.manifest().ok().is_some_and(|m| {
            m.runs
                .iter()
                .any(|r| dir.run(&r.id).checkpoint().join("manifest.json").exists())
        });
        if ready {
            break;
        }
        assert!(
            t0.elapsed().as_secs() < 120,
            "no checkpoints after 2 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let killed = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = child.wait();
    let m = dir.manifest().unwrap();
    // SIGKILL is delivered asynchronously: wait until no worker is seen running.
    let t1 = std::time::Instant::now();
    let mid = loop {
        let mid: Vec<_> = m.runs.iter().map(|r| dir.state(&r.id)).collect();
        let running = mid
            .iter()
            .any(|s| matches!(s, dp_lab::pipeline::RunState::Running(_)));
        if !running || t1.elapsed().as_secs() > 10 {
            break mid;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // Interrupted (killed mid-run), done (it finished first) or not started; never failed.
    use dp_lab::pipeline::RunState::{Done, Interrupted, Pending};
    assert!(
        mid.iter()
            .all(|s| matches!(s, Interrupted | Done | Pending)),
        "{mid:?}"
    );

    let checkpointed: Vec<bool> = m
        .runs
        .iter()
        .map(|r| dir.run(&r.id).checkpoint().join("manifest.json").exists())
        .collect();
    let o = sweep_cmd(&sweep, &out, None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut resumed = 0;
    for ((r, before), ckpt) in m.runs.iter().zip(&mid).zip(&checkpointed) {
        let res = dir
            .run(&r.id)
            .read_result()
            .expect("finished after the rerun");
        assert_eq!(res.steps, 20 * 20, "all planned steps");
        assert_eq!(
            res.epochs.len(),
            20,
            "one record per epoch, none lost or repeated"
        );
        if *before == Interrupted && *ckpt {
            assert!(
                res.resumed_from_step > 0,
                "resumed from its checkpoint, not restarted"
            );
            resumed += 1;
        }
        // ε of a resumed run equals that of the same configuration run without a stop.
        assert!(res.epsilon.unwrap() <= 3.0);
    }
    assert!(
        resumed >= 1,
        "the kill came after both runs finished: make them longer ({mid:?})"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn train_writes_the_resolved_config_and_budget_matches_the_example() {
    let d = tmp("train");
    let cfg = write(
        &d,
        "run.toml",
        "model = \"mlp\"\nmlp_hidden = [8]\nepochs = 0.2\nbatch_size = 200\nsigma = 1.0\n",
    );
    let out = d.join("out");
    let o = dp_lab(&[
        "train",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["noise_multiplier"], 1.0);
    assert_eq!(line["steps"], 4);
    let resolved = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        resolved.contains("delta") && resolved.contains("[optimizer]"),
        "every field written"
    );
    // A different config into the same directory is refused.
    let cfg2 = write(&d, "run2.toml", "epochs = 0.3\n");
    let o = dp_lab(&[
        "train",
        cfg2.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    // Unknown fields and ranges fail before anything runs, naming the field.
    let bad = write(&d, "bad.toml", "batch_size = -3\n");
    let o = dp_lab(&[
        "train",
        bad.to_str().unwrap(),
        "--out",
        d.join("bad").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("batch_size"));
    assert!(!d.join("bad").exists(), "nothing ran");

    let args = [
        "--sampling-rate",
        "0.004266",
        "--noise-multiplier",
        "1.1",
        "--steps",
        "14062",
        "--json",
    ];
    let mut a = vec!["budget"];
    a.extend(args);
    let o = dp_lab(&a);
    assert!(o.status.success());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let eps = j["epsilon"].as_f64().unwrap();
    assert!(eps > 1.0 && eps < 10.0);
    let _ = std::fs::remove_dir_all(&d);
}
