//! The pipeline's pruning-mask sources end to end on the bundled digits: a mask from the
//! weights a first private stage released (whose ε the second stage composes, so the run
//! spends its budget once), a mask from a model trained on public FashionMNIST, and the
//! validation that refuses a released mask outside a private multi-epoch run.

use dp_lab::optim::MaskSource;
use dp_lab::pipeline::{execute, MaskSourceChoice, RunConfig};
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dp-lab-masks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn small(source: MaskSourceChoice) -> RunConfig {
    let mut cfg: RunConfig = toml::from_str(
        r#"
        model = "mlp"
        mlp_hidden = [16]
        epochs = 2
        batch_size = 200
        epsilon = 2.0
        sparsity = 0.5
        metrics = ["sparsity"]
        [method]
        clip = 1.0
        [optimizer]
        lr = 0.5
        "#,
    )
    .unwrap();
    cfg.mask_source = source;
    cfg
}

#[test]
fn a_released_mask_run_spends_its_budget_once_over_both_stages() {
    let d = tmp("released");
    let cfg = small(MaskSourceChoice::Released);
    let r = execute(&cfg, "released", &d, &mut |_, _| {}).unwrap();
    let first = r.first_stage.as_ref().expect("a first stage");
    // One epoch each: 4,000 examples at B = 200.
    assert_eq!(first.steps, 20);
    assert_eq!(r.steps, 40);
    assert_eq!(r.epochs.len(), 1, "the second stage's epoch");
    let eps = r.epsilon.expect("DP");
    // The second stage is calibrated for what the first left: both together spend ε = 2.
    assert!(eps <= 2.0 + 1e-9 && eps > 1.9, "ε = {eps}");
    assert!(
        first.epsilon > 0.5 && first.epsilon < eps,
        "{}",
        first.epsilon
    );
    match r.mask.as_ref().expect("a mask") {
        MaskSource::ReleasedWeights {
            private,
            epsilon,
            steps,
            ..
        } => {
            assert!(*private);
            assert_eq!(*steps, 20);
            assert!((epsilon - first.epsilon).abs() < 1e-12);
        }
        other => panic!("{other:?}"),
    }
    let s = r.metrics["sparsity"];
    assert!((s - 0.5).abs() < 0.02, "sparsity {s}");
    // Finished: running it again reports the same result from the checkpoint.
    let again = execute(&cfg, "released", &d, &mut |_, _| {}).unwrap();
    assert_eq!(again.first_stage, r.first_stage);
    assert_eq!(again.epsilon, r.epsilon);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_public_mask_comes_from_the_other_dataset_and_costs_nothing() {
    let d = tmp("public");
    let pruned = execute(
        &small(MaskSourceChoice::Public),
        "public",
        &d,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(
        pruned.mask,
        Some(MaskSource::PublicModel {
            dataset: "public:fashion-mnist".into()
        })
    );
    assert!(pruned.first_stage.is_none());
    // Same ε as the same run with a free mask from the initial weights.
    let d2 = tmp("init");
    let init = execute(&small(MaskSourceChoice::Init), "init", &d2, &mut |_, _| {}).unwrap();
    assert_eq!(init.mask, Some(MaskSource::Initialisation));
    assert_eq!(pruned.epsilon, init.epsilon);
    assert_eq!(pruned.noise_multiplier, init.noise_multiplier);
    assert!((pruned.metrics["sparsity"] - 0.5).abs() < 0.02);
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&d2);
}

#[test]
fn a_released_mask_needs_a_private_run_of_whole_epochs() {
    let mut cfg = small(MaskSourceChoice::Released);
    cfg.epsilon = None;
    cfg.regime = "non-private".into();
    let e = cfg.validate("r.toml").unwrap_err().to_string();
    assert!(e.contains("mask_source") && e.contains("r.toml"), "{e}");
    let mut cfg = small(MaskSourceChoice::Released);
    cfg.epochs = 1.0;
    let e = cfg.validate("r.toml").unwrap_err().to_string();
    assert!(e.contains("mask_source") && e.contains("≥ 2"), "{e}");
    // Without pruning the source is moot: a dense run.
    cfg.sparsity = 0.0;
    cfg.validate("r.toml").unwrap();
}

#[test]
fn public_lr_sets_the_public_models_learning_rate_only() {
    let weights = |cfg: &RunConfig, name: &str| {
        let d = tmp(name);
        execute(cfg, name, &d, &mut |_, _| {}).unwrap();
        let w = std::fs::read(d.join("model").join("model.safetensors")).unwrap();
        let _ = std::fs::remove_dir_all(&d);
        w
    };
    let default = small(MaskSourceChoice::Public);
    let mut same = default.clone();
    same.public_lr = Some(default.optimizer.lr);
    let mut other = default.clone();
    other.public_lr = Some(0.05);
    let (a, b, c) = (
        weights(&default, "plr-default"),
        weights(&same, "plr-same"),
        weights(&other, "plr-other"),
    );
    assert_eq!(a, b, "public_lr = optimizer.lr is the default");
    assert_ne!(
        a, c,
        "another public learning rate, another public model and mask"
    );
    // It is validated like the run's own learning rate.
    let mut bad = default;
    bad.public_lr = Some(-1.0);
    let e = bad.validate("r.toml").unwrap_err().to_string();
    assert!(e.contains("public_lr") && e.contains("r.toml"), "{e}");
}
