//! Hostile-input sweep of dp-optim's public constructors and entry points: the trainer's
//! configuration (epochs, batch size, δ, budget, learning rate, clip norm, σ), the
//! optimisers and the methods, with NaN, ±∞, 0, −0, negative, tiny and huge values. Each
//! must give a typed error or a trainer that works — never a panic.
//!
//! Entry points (8): TrainerConfig::new + PrivateTrainer::new, TrainerConfig::with_budget,
//! Sgd::try_new, Adam::try_new, Adam::new (through the trainer), FixedClip::new,
//! AdaptiveQuantileClip::new, optim::check_learning_rate.

use candle_core::Device;
use dp_optim::{
    Adam, AdaptiveQuantileClip, BatchSize, Delta, Epochs, FixedClip, PrivateTrainer, Sgd,
    TrainerConfig,
};
use proptest::prelude::*;

fn hostile() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::sample::select(vec![
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            -1.0,
            1e-300,
            1e300,
            0.5,
            1.0,
            10.0,
        ]),
        -5.0f64..50.0,
    ]
}

fn data() -> dp_data::Dataset {
    let n = 64;
    let features: Vec<f32> = (0..n * 4).map(|i| (i % 7) as f32 / 7.0).collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 2).collect();
    dp_data::Dataset::new("toy", features, labels, vec![4], 2).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_trainer_refuses_or_works(epochs in hostile(), batch in hostile(), delta in hostile(),
                                   budget in prop::option::of(hostile()), lr in hostile(),
                                   clip in hostile(), sigma in hostile(), adam in any::<bool>()) {
        let d = data();
        let model = dp_core::models::mlp(&[4, 3, 2], &Device::Cpu, 0).unwrap();
        // Keep legitimate but slow runs (millions of steps) out: the sweep is about refusals.
        let epochs = if epochs.is_finite() && epochs > 2.0 { 2.0 } else { epochs };
        let mut cfg = TrainerConfig::new(Epochs(epochs), BatchSize(batch), Delta(delta)).with_seed(0);
        if let Some(b) = budget {
            cfg = cfg.with_budget(b);
        }
        let opt: Box<dyn dp_optim::BaseOptimizer> =
            if adam { Box::new(Adam::new(lr)) } else { Box::new(Sgd::new(lr)) };
        prop_assert_eq!(Sgd::try_new(lr).is_ok(), lr.is_finite() && lr > 0.0);
        prop_assert_eq!(Adam::try_new(lr).is_ok(), lr.is_finite() && lr > 0.0);
        prop_assert_eq!(dp_optim::optim::check_learning_rate(lr).is_ok(), lr.is_finite() && lr > 0.0);
        let _ = AdaptiveQuantileClip::new(clip, batch);
        let Ok(method) = FixedClip::new(clip, sigma) else { return Ok(()) };
        if let Ok(mut t) = PrivateTrainer::new(model, opt, Box::new(method), cfg, &d) {
            prop_assert!(lr.is_finite() && lr > 0.0);
            prop_assert!(batch > 0.0 && batch <= 64.0 && delta > 0.0 && delta < 1.0);
            let r = t.train(&d, None);
            if let Ok(r) = r {
                prop_assert!(r.epsilon >= 0.0 && !r.epsilon.is_nan());
                if let Some(b) = budget {
                    prop_assert!(r.epsilon <= b);
                }
            }
        }
    }
}
