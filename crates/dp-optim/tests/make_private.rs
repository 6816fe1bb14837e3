//! The one-call entry `make_private` / `PrivateTrainer::with_epsilon`: σ is calibrated for
//! the target (ε spent ≤ target and close to it, and equal to an independent accounting of
//! what the run released), the batch size is given once, methods are built without a
//! placeholder σ and keep their own validation, and bad input gets typed errors.

use candle_core::Device;
use dp_accounting::calibration::epsilon_for;
use dp_accounting::{calibrate_noise_multiplier, AccountantKind};
use dp_core::{models, Sequential};
use dp_optim::{
    make_private, BatchSize, ClipWith, Delta, Epochs, FixedClip, Method, MethodSpec, PrivacyMethod,
    PrivacyTarget, PrivateTrainer, Sgd, StopReason, TrainError, TrainerConfig,
};

/// 1000 examples of 6 features, 4 classes.
fn data() -> dp_data::Dataset {
    let n = 1000;
    let features: Vec<f32> = (0..n * 6)
        .map(|i| ((i * 37 % 101) as f32) / 101.0 - 0.5)
        .collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| (i * 7) % 4).collect();
    dp_data::Dataset::new("toy", features, labels, vec![6], 4).unwrap()
}

fn mlp() -> Sequential {
    models::mlp(&[6, 5, 4], &Device::Cpu, 0).unwrap()
}

const TARGET: PrivacyTarget = PrivacyTarget {
    epsilon: 2.0,
    delta: 1e-5,
    epochs: 2.0,
    batch_size: 50.0,
};

fn seeded(target: PrivacyTarget, method: Method) -> dp_optim::Result<PrivateTrainer<Sequential>> {
    PrivateTrainer::with_epsilon(mlp(), Sgd::new(0.1), target, method)
        .configure(|c| c.with_seed(3))
        .build(&data())
}

#[test]
fn dp_sgd_spends_the_target_and_no_more() {
    let d = data();
    for eps in [0.5, 2.0, 8.0] {
        let target = PrivacyTarget {
            epsilon: eps,
            ..TARGET
        };
        let mut t = make_private(mlp(), Sgd::new(0.1), &d, target, Method::dp_sgd(1.0)).unwrap();
        assert_eq!(t.total_steps(), 40); // ⌈2 / (50/1000)⌉
        let r = t.train(&d, None).unwrap();
        assert_eq!(r.stop, StopReason::Completed, "ε = {eps}");
        assert_eq!(r.steps, 40);
        assert!(r.epsilon <= eps, "ε = {eps}: spent {}", r.epsilon);
        assert!(
            r.epsilon >= 0.99 * eps,
            "ε = {eps}: spent only {}",
            r.epsilon
        );
        // σ is the classic calibration's, and what the accountant saw is exactly T steps of
        // (q, σ): computed here independently of the trainer.
        let sigma = calibrate_noise_multiplier(eps, 1e-5, 0.05, 40, AccountantKind::Rdp).unwrap();
        assert_eq!(r.noise_multiplier, sigma);
        let independent = epsilon_for(0.05, sigma, 40, 1e-5, AccountantKind::Rdp).unwrap();
        assert!((r.epsilon - independent).abs() <= 1e-9 * independent);
    }
}

#[test]
fn the_one_call_equals_the_long_form_with_a_placeholder_sigma() {
    let d = data();
    let mut short = seeded(TARGET, Method::dp_sgd(0.5)).unwrap();
    let cfg = TrainerConfig::new(Epochs(2.0), BatchSize(50.0), Delta(1e-5))
        .with_budget(2.0)
        .calibrate_noise_from_budget()
        .with_seed(3);
    let placeholder = Box::new(FixedClip::new(0.5, 1.0).unwrap());
    let mut long =
        PrivateTrainer::new(mlp(), Box::new(Sgd::new(0.1)), placeholder, cfg, &d).unwrap();
    let (a, b) = (
        short.train(&d, None).unwrap(),
        long.train(&d, None).unwrap(),
    );
    assert_eq!(a.noise_multiplier, b.noise_multiplier);
    assert_eq!(a.epsilon, b.epsilon);
    let losses =
        |t: &PrivateTrainer<Sequential>| t.records().iter().map(|r| r.loss).collect::<Vec<_>>();
    assert_eq!(losses(&short), losses(&long)); // same seed, same run
}

#[test]
fn every_method_is_calibrated_and_accounted() {
    let d = data();
    let per_layer = Method::custom("per_layer", |sigma, _| {
        let m = ClipWith::new("per_layer", sigma, || {
            Ok(Box::new(dp_core::clipping::PerLayerClip::equal(1.0)?))
        })?;
        Ok(Box::new(m) as Box<dyn PrivacyMethod>)
    });
    let methods = [
        Method::auto_s(),
        Method::adaptive_clipping(0.1),
        Method::global_adapt(1.0),
        Method::bam(1.0),
        Method::from_spec(MethodSpec {
            name: "auto_dpsgd".into(),
            noise_decay: "time".into(),
            ..MethodSpec::default()
        }),
        per_layer,
    ];
    for m in methods {
        let name = m.name();
        let mut t = seeded(TARGET, m).unwrap();
        let r = t.train(&d, None).unwrap();
        assert_eq!(r.stop, StopReason::Completed, "{name}");
        assert!(r.epsilon <= TARGET.epsilon, "{name}: spent {}", r.epsilon);
        assert!(
            r.epsilon >= 0.97 * TARGET.epsilon,
            "{name}: spent only {}",
            r.epsilon
        );
        assert_eq!(r.noise_multiplier, t.method().noise_multiplier(), "{name}");
    }
    // Adaptive clipping splits σ between the gradient and its count: together they cost one
    // Gaussian of multiplier σ, so the run's ε is that of T steps of (q, σ).
    let mut t = seeded(TARGET, Method::adaptive_clipping(0.1)).unwrap();
    let r = t.train(&d, None).unwrap();
    let independent = epsilon_for(0.05, r.noise_multiplier, 40, 1e-5, AccountantKind::Rdp).unwrap();
    assert!(
        (r.epsilon - independent).abs() <= 1e-6 * independent,
        "{} vs {independent}",
        r.epsilon
    );
}

#[test]
fn the_batch_size_is_given_once() {
    let t = seeded(
        PrivacyTarget {
            batch_size: 80.0,
            ..TARGET
        },
        Method::adaptive_clipping(0.1),
    )
    .unwrap();
    // The sampler, the divisor, the step count and the method's σ_b = B/20 all come from
    // the target's one batch size.
    assert_eq!(t.config().expected_batch_size, 80.0);
    assert_eq!(
        t.sampling_scheme(),
        dp_data::SamplingScheme::Poisson {
            sampling_rate: 0.08
        }
    );
    assert_eq!(t.total_steps(), 25); // ⌈2 / 0.08⌉
    let state = t.method().state().unwrap();
    assert_eq!(state["count_noise_std"].as_f64(), Some(4.0));
}

#[test]
fn bad_input_gets_typed_errors() {
    let d = data();
    let out_of_range = |target: PrivacyTarget, method: Method| match make_private(
        mlp(),
        Sgd::new(0.1),
        &d,
        target,
        method,
    ) {
        Err(TrainError::OutOfRange { name, .. }) => name,
        Err(e) => panic!("{target:?}: other error {e}"),
        Ok(_) => panic!("{target:?}: accepted"),
    };
    let t = TARGET;
    for eps in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let target = PrivacyTarget { epsilon: eps, ..t };
        assert_eq!(out_of_range(target, Method::dp_sgd(1.0)), "ε");
    }
    for delta in [0.0, 1.0, -1e-5, 1.5, f64::NAN] {
        let target = PrivacyTarget { delta, ..t };
        assert_eq!(out_of_range(target, Method::dp_sgd(1.0)), "δ");
    }
    for epochs in [0.0, -2.0, f64::INFINITY] {
        let target = PrivacyTarget { epochs, ..t };
        assert_eq!(out_of_range(target, Method::dp_sgd(1.0)), "epochs");
    }
    for batch_size in [0.0, -5.0, f64::NAN] {
        let target = PrivacyTarget { batch_size, ..t };
        assert_eq!(
            out_of_range(target, Method::dp_sgd(1.0)),
            "expected batch size"
        );
    }
    for clip in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        for m in [
            Method::dp_sgd(clip),
            Method::adaptive_clipping(clip),
            Method::global_adapt(clip),
            Method::bam(clip),
        ] {
            assert_eq!(out_of_range(t, m), "clip norm", "clip {clip}");
        }
    }
    let too_big = PrivacyTarget {
        batch_size: 1001.0,
        ..t
    };
    assert!(matches!(
        make_private(mlp(), Sgd::new(0.1), &d, too_big, Method::dp_sgd(1.0)),
        Err(TrainError::BatchLargerThanDataset { .. })
    ));
    assert!(matches!(
        make_private(mlp(), Sgd::new(f64::NAN), &d, t, Method::dp_sgd(1.0)),
        Err(TrainError::InvalidLearningRate(_))
    ));
    assert!(matches!(
        make_private(
            mlp(),
            Sgd::new(0.1),
            &d,
            t,
            Method::from_spec(MethodSpec::named("nope"))
        ),
        Err(TrainError::InvalidConfig(_))
    ));
}

#[test]
fn a_method_keeps_its_own_validation_at_the_calibrated_sigma() {
    // σ_b = B/20 = 0.2 needs σ < 0.4; ε = 1 over 2 epochs needs far more noise. The method
    // refuses (a typed error), whatever σ a placeholder would have claimed.
    let target = PrivacyTarget {
        epsilon: 1.0,
        batch_size: 4.0,
        ..TARGET
    };
    match seeded(target, Method::adaptive_clipping(0.1)) {
        Err(TrainError::InvalidConfig(msg)) => assert!(msg.contains("2σ_b"), "{msg}"),
        Err(e) => panic!("other error {e}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn configure_may_not_change_the_target() {
    let changes: [fn(TrainerConfig) -> TrainerConfig; 4] = [
        |c| c.with_budget(20.0),
        |c| TrainerConfig {
            calibrate_noise: false,
            ..c
        },
        |c| TrainerConfig { epochs: 10.0, ..c },
        |c| TrainerConfig {
            expected_batch_size: 10.0,
            ..c
        },
    ];
    for change in changes {
        let r = PrivateTrainer::with_epsilon(mlp(), Sgd::new(0.1), TARGET, Method::dp_sgd(1.0))
            .configure(change)
            .build(&data());
        assert!(matches!(r, Err(TrainError::InvalidConfig(_))));
    }
    // Other settings pass through.
    let t = PrivateTrainer::with_epsilon(mlp(), Sgd::new(0.1), TARGET, Method::dp_sgd(1.0))
        .configure(|c| c.with_seed(9).with_accountant(AccountantKind::Rdp))
        .build(&data())
        .unwrap();
    assert_eq!(t.config().seed, Some(9));
}
