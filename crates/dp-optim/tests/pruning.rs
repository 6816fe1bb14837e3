//! Pruning under DP and switching schedules (Watson et al. 2023): pruned coordinates stay
//! exactly zero and get no noise, active ones get noise of std σC; a mask from the
//! initialisation does not depend on the data; a mask from released weights carries its
//! run's privacy cost into the re-training; a switching run accounts only its private steps
//! and reports no finite ε for the model.

use candle_core::{DType, Device, Tensor};
use dp_accounting::{Accountant, DpEvent, RdpAccountant};
use dp_core::clipping::FlatClip;
use dp_core::{models, CrossEntropy, GaussianNoise, GradOptions, Model, Prunable, PruneScope};
use dp_optim::{
    take_step, BatchSize, Delta, Epochs, FixedClip, MaskSource, PrivateTrainer, Regime, Sgd,
    StepEnv, StepPlan, TrainerConfig, TrainingMask,
};

/// A synthetic task (600 examples, 20 features, 3 classes; labels from a linear rule).
fn data(seed: u64) -> dp_data::Dataset {
    let n = 600;
    let mut x = 0x2545_F491_4F6C_DD1Du64 ^ seed;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let features: Vec<f32> = (0..n * 20).map(|_| next()).collect();
    let labels: Vec<u32> = (0..n)
        .map(|i| {
            let s: f32 = features[i * 20..i * 20 + 5].iter().sum();
            if s < -0.3 {
                0
            } else if s < 0.3 {
                1
            } else {
                2
            }
        })
        .collect();
    dp_data::Dataset::new("synthetic", features, labels, vec![20], 3).unwrap()
}

fn model(seed: u64) -> dp_core::Sequential {
    models::mlp(&[20, 32, 3], &Device::Cpu, seed).unwrap()
}

fn flat(ts: &[Tensor]) -> Vec<f64> {
    ts.iter()
        .flat_map(|t| {
            t.flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        })
        .collect()
}

fn flat_keep(mask: &TrainingMask, model: &dp_core::Sequential) -> Vec<bool> {
    mask.mask()
        .keep_flags()
        .unwrap()
        .into_iter()
        .zip(model.param_tensors())
        .flat_map(|(k, p)| k.unwrap_or_else(|| vec![true; p.elem_count()]))
        .collect()
}

fn config(epochs: f64) -> TrainerConfig {
    TrainerConfig::new(Epochs(epochs), BatchSize(60.0), Delta(1e-5)).with_seed(3)
}

#[test]
fn pruned_coordinates_get_no_noise_and_active_ones_get_sigma_c() {
    // An empty batch: the gradient is the noise alone, divided by the public B.
    let dev = Device::Cpu;
    let mut m = models::mlp(&[400, 64, 10], &dev, 1).unwrap();
    let mask =
        TrainingMask::at_initialisation(&m, 0.8, PruneScope::Global, Prunable::Weights).unwrap();
    let keep = flat_keep(&mask, &m);
    let (sigma, c, b) = (1.3, 0.7, 50.0);
    let mut plan = StepPlan::new(Box::new(FlatClip::new(c).unwrap()), sigma, b).unwrap();
    let opts = GradOptions {
        mask: Some(mask.mask().clone()),
        ..GradOptions::default()
    };
    let env = StepEnv {
        regime: Regime::Private,
        loss: &CrossEntropy,
        grad_options: &opts,
    };
    let x = Tensor::zeros((0, 400), DType::F32, &dev).unwrap();
    let y = Tensor::zeros(0, DType::U32, &dev).unwrap();
    let r = take_step(
        &mut m,
        &mut std::iter::once(Ok((x, y))),
        &mut plan,
        &env,
        &mut GaussianNoise::seeded(9),
        &mut Sgd::new(0.0),
    )
    .unwrap();
    let g = flat(&r.gradient);
    let active: Vec<f64> = g
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(v, _)| *v * b)
        .collect();
    for (v, k) in g.iter().zip(&keep) {
        if !k {
            assert_eq!(*v, 0.0, "a pruned coordinate received noise");
        }
    }
    assert_eq!(active.len(), mask.mask().num_active());
    let n = active.len() as f64;
    let mean = active.iter().sum::<f64>() / n;
    let sd = (active.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    // ~5,000 draws: the sd estimate is within 1% (1σ); 5% fails only on a wrong scale.
    assert!(
        (sd / (sigma * c) - 1.0).abs() < 0.05,
        "noise sd {sd} on active coordinates, expected σC = {}",
        sigma * c
    );
    assert!(mean.abs() < 4.0 * sigma * c / n.sqrt());
}

#[test]
fn pruned_weights_are_zero_after_every_step_with_momentum_and_weight_decay() {
    let train = data(0);
    let m = model(5);
    let mask =
        TrainingMask::at_initialisation(&m, 0.7, PruneScope::PerLayer, Prunable::Weights).unwrap();
    let keep = flat_keep(&mask, &m);
    let opt = Sgd::new(0.3).with_momentum(0.9).with_weight_decay(1e-3);
    let mut t = PrivateTrainer::builder(
        m,
        Box::new(opt),
        Box::new(FixedClip::new(1.0, 1.0).unwrap()),
        config(1.0),
    )
    .mask(mask)
    .build(&train)
    .unwrap();
    let check = |t: &PrivateTrainer<dp_core::Sequential>| {
        let w = flat(&t.model().param_tensors());
        for (v, k) in w.iter().zip(&keep) {
            if !k {
                assert_eq!(*v, 0.0);
            }
        }
        assert!(w.iter().zip(&keep).any(|(v, k)| *k && *v != 0.0));
    };
    check(&t); // zeroed at build
    let before = flat(&t.model().param_tensors());
    for _ in 0..10 {
        t.step(&train, &Device::Cpu).unwrap().unwrap();
        check(&t);
    }
    assert_ne!(before, flat(&t.model().param_tensors()));
}

#[test]
fn the_mask_from_initialisation_does_not_depend_on_the_data() {
    let (a, b) = (data(1), data(2));
    let mut keeps = Vec::new();
    for train in [&a, &b] {
        let m = model(11);
        let mask = TrainingMask::at_initialisation(&m, 0.9, PruneScope::Global, Prunable::Weights)
            .unwrap();
        assert_eq!(mask.source(), &MaskSource::Initialisation);
        let keep = flat_keep(&mask, &m);
        let mut t = PrivateTrainer::builder(
            m,
            Box::new(Sgd::new(0.2)),
            Box::new(FixedClip::new(1.0, 1.0).unwrap()),
            config(0.5),
        )
        .mask(mask)
        .build(train)
        .unwrap();
        t.train(train, None).unwrap();
        let w = flat(&t.model().param_tensors());
        // The zeros of the trained model are the mask's, whatever the data.
        let zeros: Vec<bool> = w.iter().map(|v| *v != 0.0).collect();
        assert_eq!(zeros, keep);
        keeps.push(keep);
    }
    assert_eq!(keeps[0], keeps[1]);
    // ... and a different seed gives a different mask.
    let other =
        TrainingMask::at_initialisation(&model(12), 0.9, PruneScope::Global, Prunable::Weights)
            .unwrap();
    assert_ne!(flat_keep(&other, &model(12)), keeps[0]);
}

#[test]
fn a_mask_from_released_weights_carries_its_cost_into_retraining() {
    let train = data(3);
    let (sigma, q) = (1.0, 60.0 / 600.0);
    let run = |cfg: TrainerConfig, mask: Option<TrainingMask>, m| {
        let mut b = PrivateTrainer::builder(
            m,
            Box::new(Sgd::new(0.2)),
            Box::new(FixedClip::new(1.0, sigma).unwrap()),
            cfg,
        );
        if let Some(mask) = mask {
            b = b.mask(mask);
        }
        let mut t = b.build(&train).unwrap();
        t.train(&train, None).unwrap();
        t
    };
    let first = run(config(2.0), None, model(4));
    let mask =
        TrainingMask::from_released(&first, 0.8, PruneScope::Global, Prunable::Weights).unwrap();
    assert!(matches!(
        mask.source(),
        MaskSource::ReleasedWeights {
            private: true,
            steps: 20,
            ..
        }
    ));
    let second = run(config(3.0), Some(mask), model(4));
    // The pipeline: 20 + 30 steps of the same subsampled Gaussian.
    let mut reference = RdpAccountant::new();
    reference
        .compose(&DpEvent::poisson_gaussian(q, sigma).unwrap().repeated(50))
        .unwrap();
    let want = reference.epsilon(1e-5).unwrap();
    let got = second.epsilon().unwrap();
    assert!(
        (got - want).abs() < 1e-9 * want,
        "pipeline ε {got}, expected {want}"
    );
    assert!(got > first.epsilon().unwrap());

    // Iterative pruning: a third stage on the second's released weights accounts all three.
    let mask =
        TrainingMask::from_released(&second, 0.9, PruneScope::Global, Prunable::Weights).unwrap();
    let second_model = second.model().param_tensors();
    let mut m = model(4);
    m.set_param_tensors(&second_model).unwrap();
    let third_stage = run(config(1.0), Some(mask), m);
    let mut reference = RdpAccountant::new();
    reference
        .compose(&DpEvent::poisson_gaussian(q, sigma).unwrap().repeated(60))
        .unwrap();
    let want = reference.epsilon(1e-5).unwrap();
    let got = third_stage.epsilon().unwrap();
    assert!(
        (got - want).abs() < 1e-9 * want,
        "three-stage ε {got}, expected {want}"
    );

    // Calibrating the re-training to a budget calibrates the whole pipeline.
    let mask =
        TrainingMask::from_released(&first, 0.8, PruneScope::Global, Prunable::Weights).unwrap();
    let budget = 8.0;
    let cfg = config(3.0)
        .with_budget(budget)
        .calibrate_noise_from_budget();
    let third = run(cfg, Some(mask), model(4));
    let eps = third.epsilon().unwrap();
    assert!(
        eps <= budget && eps > 0.97 * budget,
        "calibrated pipeline ε {eps}"
    );

    // A budget the source run alone already exceeds is refused at build.
    let mask =
        TrainingMask::from_released(&first, 0.8, PruneScope::Global, Prunable::Weights).unwrap();
    let tiny = config(1.0).with_budget(0.01 * first.epsilon().unwrap());
    let refused = PrivateTrainer::builder(
        model(4),
        Box::new(Sgd::new(0.2)),
        Box::new(FixedClip::new(1.0, sigma).unwrap()),
        tiny,
    )
    .mask(mask)
    .build(&train);
    assert!(refused.is_err());
}

#[test]
fn a_private_run_refuses_a_mask_from_non_private_weights() {
    let train = data(4);
    let mut sgd = PrivateTrainer::new(
        model(6),
        Box::new(Sgd::new(0.2)),
        Box::new(FixedClip::new(1.0, 1.0).unwrap()),
        config(0.5).with_regime(Regime::NonPrivate),
        &train,
    )
    .unwrap();
    sgd.train(&train, None).unwrap();
    let mask =
        TrainingMask::from_released(&sgd, 0.5, PruneScope::Global, Prunable::Weights).unwrap();
    assert!(matches!(
        mask.source(),
        MaskSource::ReleasedWeights { private: false, .. }
    ));
    let err = PrivateTrainer::builder(
        model(6),
        Box::new(Sgd::new(0.2)),
        Box::new(FixedClip::new(1.0, 1.0).unwrap()),
        config(0.5),
    )
    .mask(mask)
    .build(&train);
    assert!(err.is_err());
}

#[test]
fn switching_runs_account_only_private_steps_and_report_no_finite_epsilon() {
    let train = data(5);
    let per_epoch = 10; // q = 0.1
    for (first, then) in [
        (Regime::NonPrivate, Regime::Private),
        (Regime::Private, Regime::NonPrivate),
    ] {
        let cfg = config(3.0)
            .with_regime(first)
            .with_regime_from_epoch(2, then);
        let mut t = PrivateTrainer::new(
            model(7),
            Box::new(Sgd::new(0.2)),
            Box::new(FixedClip::new(1.0, 1.0).unwrap()),
            cfg,
            &train,
        )
        .unwrap();
        let report = t.train(&train, None).unwrap();
        assert_eq!(report.steps, 30);
        assert_eq!(report.epsilon, f64::INFINITY);
        assert!(!report.guarantee.is_private());
        assert!(t.records().iter().all(|r| r.epsilon == Some(f64::INFINITY)));
        assert!(t.epoch_records().iter().all(|e| e.epsilon == f64::INFINITY));
        let private_steps = if first.is_private() {
            2 * per_epoch
        } else {
            per_epoch
        };
        assert_eq!(
            t.accountant()
                .history()
                .iter()
                .map(|e| e.total_count())
                .sum::<u64>(),
            private_steps
        );
        // The private phase was noised (its records carry the noise std), the other not,
        // and each record names its phase's regime.
        let noised = t.records().iter().filter(|r| r.noise_std > 0.0).count() as u64;
        assert_eq!(noised, private_steps);
        for (i, r) in t.records().iter().enumerate() {
            let want = if (i as u64) < 2 * per_epoch {
                first
            } else {
                then
            };
            assert_eq!(r.regime, want, "step {}", r.step);
            assert_eq!(r.noise_std > 0.0, want.is_private());
        }
        let mut reference = RdpAccountant::new();
        reference
            .compose(
                &DpEvent::poisson_gaussian(0.1, 1.0)
                    .unwrap()
                    .repeated(private_steps),
            )
            .unwrap();
        let want = reference.epsilon(1e-5).unwrap();
        assert!((t.private_steps_epsilon().unwrap() - want).abs() < 1e-9 * want);
    }
    // A budget cannot be enforced on such a run.
    let cfg = config(3.0)
        .with_regime_from_epoch(1, Regime::NonPrivate)
        .with_budget(3.0);
    assert!(PrivateTrainer::new(
        model(7),
        Box::new(Sgd::new(0.2)),
        Box::new(FixedClip::new(1.0, 1.0).unwrap()),
        cfg,
        &train
    )
    .is_err());
}

#[test]
fn a_resumed_run_keeps_its_mask() {
    let train = data(6);
    let dir = std::env::temp_dir().join(format!("dp_optim_pruning_ck_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let m = model(8);
    let mask =
        TrainingMask::at_initialisation(&m, 0.75, PruneScope::Global, Prunable::Weights).unwrap();
    let keep = flat_keep(&mask, &m);
    let mut t = PrivateTrainer::builder(
        m,
        Box::new(Sgd::new(0.2)),
        Box::new(FixedClip::new(1.0, 1.0).unwrap()),
        config(2.0),
    )
    .mask(mask)
    .build(&train)
    .unwrap();
    for _ in 0..5 {
        t.step(&train, &Device::Cpu).unwrap();
    }
    t.save_checkpoint(&dir).unwrap();
    let mut r = PrivateTrainer::resume(
        &dir,
        model(8),
        Box::new(Sgd::new(0.2)),
        Box::new(FixedClip::new(1.0, 1.0).unwrap()),
        &train,
        &Device::Cpu,
    )
    .unwrap();
    let resumed = r.mask().expect("the mask survives a checkpoint");
    assert_eq!(flat_keep(resumed, r.model()), keep);
    for _ in 0..5 {
        r.step(&train, &Device::Cpu).unwrap();
    }
    let w = flat(&r.model().param_tensors());
    for (v, k) in w.iter().zip(&keep) {
        if !k {
            assert_eq!(*v, 0.0);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The noise stream a checkpoint of `t` records (its seed and position), from the state file.
fn noise_stream(t: &PrivateTrainer<dp_core::Sequential>, tag: &str) -> serde_json::Value {
    let dir = std::env::temp_dir().join(format!("dp_optim_stage_{tag}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    t.save_checkpoint(&dir).unwrap();
    let state = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("state-")
        })
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    v["noise"].clone()
}

#[test]
fn a_retraining_stage_does_not_replay_the_noise_of_its_source_run() {
    let train = data(7);
    let build = |mask: Option<TrainingMask>| {
        let mut b = PrivateTrainer::builder(
            model(9),
            Box::new(Sgd::new(0.2)),
            Box::new(FixedClip::new(1.0, 1.0).unwrap()),
            config(1.0),
        );
        if let Some(m) = mask {
            b = b.mask(m);
        }
        b.build(&train).unwrap()
    };
    let mut first = build(None);
    let fresh = noise_stream(&first, "fresh");
    first.train(&train, None).unwrap();
    // Same seed, same config: a second stage built on the released mask gets other streams.
    let mask =
        TrainingMask::from_released(&first, 0.5, PruneScope::Global, Prunable::Weights).unwrap();
    let second = build(Some(mask));
    assert_ne!(noise_stream(&second, "second"), fresh);
    // (A plain trainer with the same seed would replay them, which is what the mask prevents.)
    assert_eq!(noise_stream(&build(None), "plain"), fresh);
}
