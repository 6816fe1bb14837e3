//! Silent wrong results made loud: model width vs classes, labels, learning rates, batch
//! sizes, swapped configuration values, δ ≥ 1/N, and NaN in the data (by dataset index).

use candle_core::Device;
use dp_core::{models, CoreError, Sequential};
use dp_optim::{
    evaluate, BaseOptimizer, BatchSize, ConfigWarning, Delta, Epochs, FixedClip, PrivateTrainer,
    Sgd, TrainError, TrainerConfig,
};

/// 200 examples of 6 features, 4 classes.
fn data() -> dp_data::Dataset {
    let n = 200;
    let features: Vec<f32> = (0..n * 6)
        .map(|i| ((i * 37 % 101) as f32) / 101.0)
        .collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 4).collect();
    dp_data::Dataset::new("toy", features, labels, vec![6], 4).unwrap()
}

fn build(
    model: Sequential,
    opt: Box<dyn BaseOptimizer>,
    cfg: TrainerConfig,
    train: &dp_data::Dataset,
) -> dp_optim::Result<PrivateTrainer<Sequential>> {
    PrivateTrainer::new(
        model,
        opt,
        Box::new(FixedClip::new(1.0, 1.0).unwrap()),
        cfg,
        train,
    )
}

fn cfg() -> TrainerConfig {
    TrainerConfig::new(Epochs(1.0), BatchSize(20.0), Delta(1e-5)).with_seed(1)
}

fn mlp(out: usize) -> Sequential {
    models::mlp(&[6, 5, out], &Device::Cpu, 0).unwrap()
}

#[test]
fn a_model_whose_width_differs_from_the_classes_is_refused_when_built() {
    let d = data();
    for width in [3, 5, 10] {
        match build(mlp(width), Box::new(Sgd::new(0.1)), cfg(), &d) {
            Err(TrainError::OutputWidth {
                width: w,
                expected,
                classes,
            }) => assert_eq!((w, expected, classes), (width, 4, 4)),
            Err(e) => panic!("width {width}: {e}"),
            Ok(_) => panic!("width {width}: accepted"),
        }
    }
    assert!(build(mlp(4), Box::new(Sgd::new(0.1)), cfg(), &d).is_ok());
}

#[test]
fn bad_learning_rates_are_refused() {
    let d = data();
    for lr in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.1] {
        assert!(
            matches!(Sgd::try_new(lr), Err(TrainError::InvalidLearningRate(_))),
            "{lr}"
        );
        assert!(
            matches!(
                build(mlp(4), Box::new(Sgd::new(lr)), cfg(), &d),
                Err(TrainError::InvalidLearningRate(_))
            ),
            "{lr}"
        );
        assert!(matches!(
            build(mlp(4), Box::new(dp_optim::Adam::new(lr)), cfg(), &d),
            Err(TrainError::InvalidLearningRate(_))
        ));
    }
    // A rate made NaN after construction (a broken schedule) is refused too.
    let mut opt = Sgd::new(0.1);
    opt.set_learning_rate(f64::NAN);
    assert!(matches!(
        build(mlp(4), Box::new(opt), cfg(), &d),
        Err(TrainError::InvalidLearningRate(_))
    ));
}

#[test]
fn a_batch_larger_than_the_dataset_names_both_sizes() {
    let d = data();
    let c = TrainerConfig::new(Epochs(1.0), BatchSize(400.0), Delta(1e-5));
    match build(mlp(4), Box::new(Sgd::new(0.1)), c, &d) {
        Err(e @ TrainError::BatchLargerThanDataset { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("400") && msg.contains("200"), "{msg}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn delta_not_below_one_over_n_is_reported() {
    let d = data();
    let t = build(
        mlp(4),
        Box::new(Sgd::new(0.1)),
        TrainerConfig::new(Epochs(1.0), BatchSize(20.0), Delta(0.005)),
        &d,
    )
    .unwrap();
    assert_eq!(
        t.warnings(),
        [ConfigWarning::DeltaNotBelowOneOverN {
            delta: 0.005,
            dataset_len: 200
        }]
    );
    assert!(t.warnings()[0].to_string().contains("1/N"));
    let ok = build(mlp(4), Box::new(Sgd::new(0.1)), cfg(), &d).unwrap();
    assert!(ok.warnings().is_empty());
}

#[test]
fn a_label_beyond_the_logits_is_a_typed_error() {
    let logits = candle_core::Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let y = candle_core::Tensor::new(&[1u32, 4], &Device::Cpu).unwrap();
    assert!(matches!(
        dp_core::Loss::loss(&dp_core::CrossEntropy, &logits, &y),
        Err(CoreError::InvalidLabel {
            label: 4,
            classes: 4
        })
    ));
}

#[test]
fn nan_in_the_training_set_is_reported_by_its_dataset_index() {
    let mut d = data();
    // Poison a few examples; with q = 1 every step samples all of them.
    for i in [17usize, 150] {
        d.features_mut()[i * 6 + 2] = f32::NAN;
    }
    let c = TrainerConfig::new(Epochs(1.0), BatchSize(200.0), Delta(1e-5)).with_seed(3);
    let mut t = build(mlp(4), Box::new(Sgd::new(0.1)), c, &d).unwrap();
    match t.step(&d, &Device::Cpu) {
        Err(TrainError::NonFiniteExamples { set, indices }) => {
            assert_eq!(set, "training");
            assert_eq!(indices, [17, 150]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn nan_in_the_test_set_is_reported_not_a_finite_accuracy() {
    let mut d = data();
    d.features_mut()[42 * 6] = f32::NAN;
    let mut m = mlp(4);
    match evaluate(&mut m, &d, &Device::Cpu, 64) {
        Err(TrainError::NonFiniteExamples { set, indices }) => {
            assert_eq!((set.as_str(), indices), ("evaluation", vec![42]));
        }
        other => panic!("{other:?}"),
    }
    // A diverged model (non-finite weights) reports a NaN accuracy, not an arg-max of NaNs.
    let clean = data();
    let mut broken = mlp(4);
    let nan: Vec<candle_core::Tensor> = dp_core::Model::param_tensors(&broken)
        .iter()
        .map(|t| (t * f64::NAN).unwrap())
        .collect();
    dp_core::Model::set_param_tensors(&mut broken, &nan).unwrap();
    let (loss, acc) = evaluate(&mut broken, &clean, &Device::Cpu, 64).unwrap();
    assert!(loss.is_nan() && acc.is_nan(), "{loss} {acc}");
}
