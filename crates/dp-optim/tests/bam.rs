//! BAM as a trainer method: accounted exactly as DP-SGD, α = 0 is DP-SGD bit for bit, and
//! the clipping bias is recorded when asked for.

use dp_core::{BamConfig, GradMode, Model};
use dp_optim::{
    Bam, BatchSize, Delta, Epochs, FixedClip, PrivacyMethod, PrivateTrainer, Regime, Sgd,
    TrainerConfig,
};

fn run(method: Box<dyn PrivacyMethod>, cfg: TrainerConfig) -> PrivateTrainer<dp_core::Sequential> {
    let data = dp_data::load_bundled_mnist().unwrap();
    let model = dp_core::models::mlp(&[784, 16, 10], &candle_core::Device::Cpu, 0).unwrap();
    let mut t =
        PrivateTrainer::new(model, Box::new(Sgd::new(0.5)), method, cfg, &data.train).unwrap();
    t.train(&data.train, None).unwrap();
    t
}

fn config() -> TrainerConfig {
    TrainerConfig::new(Epochs(0.06), BatchSize(100.0), Delta(1e-5))
        .with_seed(3)
        .with_grad_mode(GradMode::Materialize)
}

fn weights(t: &PrivateTrainer<dp_core::Sequential>) -> Vec<f32> {
    t.model()
        .param_tensors()
        .iter()
        .flat_map(|p| p.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

#[test]
fn alpha_zero_trains_exactly_as_dp_sgd_and_costs_the_same() {
    let dp = run(Box::new(FixedClip::new(0.5, 1.1).unwrap()), config());
    let zero = Bam::with_config(0.5, 1.1, BamConfig::new(0.05, 0.0).unwrap()).unwrap();
    let bam0 = run(Box::new(zero), config());
    assert_eq!(weights(&dp), weights(&bam0));
    let bam = run(Box::new(Bam::new(0.5, 1.1).unwrap()), config());
    assert_ne!(weights(&dp), weights(&bam), "α = 0.8 changed nothing");
    // One subsampled Gaussian per step, as DP-SGD.
    let (e_dp, e_bam) = (dp.epsilon().unwrap(), bam.epsilon().unwrap());
    assert!(e_dp.is_finite() && (e_dp - e_bam).abs() <= 1e-12 * e_dp);
    assert_eq!(dp.records().len(), bam.records().len());
}

#[test]
fn clipping_bias_is_recorded_when_asked_and_is_zero_without_clipping() {
    let t = run(
        Box::new(Bam::new(0.1, 1.1).unwrap()),
        config().with_clipping_bias(true),
    );
    for r in t.records() {
        let b = r.clipping_bias.expect("tracked");
        assert!(b.l2 > 0.0 && b.cosine.abs() <= 1.0 + 1e-9, "{b:?}");
    }
    let json = serde_json::to_string(&t.records()[0]).unwrap();
    assert!(json.contains("non_private_clipping_bias"), "{json}");
    let off = run(Box::new(FixedClip::new(0.1, 1.1).unwrap()), config());
    assert!(off.records().iter().all(|r| r.clipping_bias.is_none()));
    let np = run(
        Box::new(FixedClip::new(0.1, 1.1).unwrap()),
        config()
            .with_clipping_bias(true)
            .with_regime(Regime::NonPrivate),
    );
    for r in np.records() {
        let b = r.clipping_bias.expect("tracked");
        assert_eq!(b.l2, 0.0);
        assert!((b.cosine - 1.0).abs() < 1e-9);
    }
}

#[test]
fn bam_state_round_trips_and_bad_values_are_refused() {
    let m = Bam::with_config(0.3, 1.2, BamConfig::new(0.1, 0.5).unwrap()).unwrap();
    let mut n = Bam::new(1.0, 1.0).unwrap();
    n.load_state(&m.state().unwrap()).unwrap();
    assert_eq!(m, n);
    assert!(Bam::new(0.0, 1.0).is_err());
    assert!(Bam::new(1.0, f64::NAN).is_err());
    let bad = serde_json::json!({"clip_norm": 1.0, "noise_multiplier": 1.0, "config": {"radius": 0.1, "alpha": 2.0}});
    assert!(n.load_state(&bad).is_err());
}
