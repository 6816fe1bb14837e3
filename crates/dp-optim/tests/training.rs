//! The trainer: budget stop, resume = uninterrupted, adaptive clipping, learning on real data.

use candle_core::Device;
use dp_accounting::{calibration::epsilon_for, AccountantKind};
use dp_core::{models, GaussianNoise, Model};
use dp_optim::methods::split_noise_multiplier;
use dp_optim::{
    AdaptiveQuantileClip, BatchSize, Delta, Epochs, FixedClip, PlanContext, PrivacyMethod,
    PrivateTrainer, Sgd, StopReason, TrainerConfig,
};
use rand::SeedableRng;
use rand_distr::Distribution;

fn data() -> dp_data::TrainTest {
    let mut d = dp_data::load_bundled_mnist().unwrap();
    dp_data::Normalize::mnist()
        .apply_dataset(&mut d.train)
        .unwrap();
    dp_data::Normalize::mnist()
        .apply_dataset(&mut d.test)
        .unwrap();
    d
}

fn flat(m: &impl Model) -> Vec<f32> {
    m.param_tensors()
        .iter()
        .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

#[test]
fn noise_split_matches_the_worked_values() {
    // algorithms.md §3: z=1, B=256 (σ_b=12.8) → 1.000764; z=0.8 → 0.800391; z=1, σ_b=5 → 1.005038
    assert!((split_noise_multiplier(1.0, 12.8).unwrap() - 1.000764).abs() < 1e-6);
    assert!((split_noise_multiplier(0.8, 12.8).unwrap() - 0.800391).abs() < 1e-6);
    assert!((split_noise_multiplier(1.0, 5.0).unwrap() - 1.005038).abs() < 1e-6);
    assert!(split_noise_multiplier(10.0, 5.0).is_err());
    assert!(split_noise_multiplier(0.0, 5.0).is_err());
    // The pair (σ_Δ for the sum, σ_b for the ½-sensitivity count) composes to σ exactly.
    let (s, sb) = (1.3, 7.0);
    let sd = split_noise_multiplier(s, sb).unwrap();
    assert!(((sd.powi(-2) + (2.0 * sb).powi(-2)).powf(-0.5) - s).abs() < 1e-12);
}

/// One adaptive step on given norms: the plan's count query released, then the update.
fn adapt(m: &mut AdaptiveQuantileClip, norms: &[f32], b: f64, noise: &mut GaussianNoise) {
    let ctx = PlanContext {
        step: 0,
        expected_batch_size: b,
        rescale_by_clip_norm: false,
    };
    let plan = m.plan(&ctx).unwrap();
    assert_eq!(plan.statistics.len(), 1);
    let count = plan.statistics[0].release(norms, noise).unwrap();
    m.update_from_count(count, b).unwrap();
}

#[test]
fn adaptive_clip_converges_to_the_median_norm() {
    // Norms ~ LogNormal(μ=ln 2, 0.5): median 2. Start at C₀ = 0.1 (paper default).
    let b = 256.0;
    let mut m = AdaptiveQuantileClip::new(1.0, b).unwrap();
    let mut noise = GaussianNoise::seeded(3);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(4);
    let dist = rand_distr::LogNormal::new(2f64.ln(), 0.5).unwrap();
    for _ in 0..400 {
        let norms: Vec<f32> = (0..256).map(|_| dist.sample(&mut rng) as f32).collect();
        adapt(&mut m, &norms, b, &mut noise);
    }
    let c = m.clip_norm();
    assert!((c - 2.0).abs() / 2.0 < 0.15, "C = {c}, median 2");
    // A 0.9 target tracks the 90% quantile instead: exp(ln 2 + 0.5·1.2816) = 3.79.
    let mut m = AdaptiveQuantileClip::with_params(1.0, 0.1, 0.9, 0.2, b / 20.0).unwrap();
    for _ in 0..600 {
        let norms: Vec<f32> = (0..256).map(|_| dist.sample(&mut rng) as f32).collect();
        adapt(&mut m, &norms, b, &mut noise);
    }
    assert!(
        (m.clip_norm() - 3.79).abs() / 3.79 < 0.15,
        "C = {}",
        m.clip_norm()
    );
}

#[test]
fn adaptive_count_divides_by_the_expected_batch_size() {
    // An empty realised batch: b̃ = N(0, σ_b²)/B + ½ — not a division by zero, and C moves
    // only by the noise.
    let mut m = AdaptiveQuantileClip::with_params(1.0, 1.0, 0.5, 0.2, 1e-9 + 0.6).unwrap();
    let mut noise = GaussianNoise::seeded(0);
    adapt(&mut m, &[], 100.0, &mut noise);
    let b = m.last_unclipped_fraction().unwrap();
    assert!((b - 0.5).abs() < 0.05, "{b}");
    // The two releases combine into one SGM(q, σ) with the budgeted σ.
    let ctx = PlanContext {
        step: 0,
        expected_batch_size: 100.0,
        rescale_by_clip_norm: false,
    };
    let q = m.plan(&ctx).unwrap().query_multipliers();
    let combined = dp_accounting::combined_noise_multiplier(&q).unwrap();
    assert!((combined - 1.0).abs() < 1e-12, "{combined}");
}

#[test]
fn budget_is_never_exceeded_and_the_run_says_why_it_stopped() {
    let d = data();
    let model = models::mlp(&[784, 8, 10], &Device::Cpu, 0).unwrap();
    let budget = 0.5;
    // σ = 0.7 with q = 0.025 for 40 epochs would spend far more than 0.5.
    let cfg = TrainerConfig::new(Epochs(40.0), BatchSize(100.0), Delta(1e-5))
        .with_budget(budget)
        .with_seed(1);
    let mut t = PrivateTrainer::new(
        model,
        Box::new(Sgd::new(0.1)),
        Box::new(FixedClip::new(1.0, 0.7).unwrap()),
        cfg,
        &d.train,
    )
    .unwrap();
    let r = t.train(&d.train, None).unwrap();
    assert!(r.epsilon <= budget, "{} > {budget}", r.epsilon);
    assert!(r.steps < t.total_steps());
    match r.stop {
        StopReason::BudgetExhausted {
            would_reach,
            budget: b,
        } => {
            assert!(would_reach > b);
            // One more step is exactly what would have crossed it.
            let q = 100.0 / d.train.len() as f64;
            let next = epsilon_for(q, 0.7, r.steps + 1, 1e-5, AccountantKind::Rdp).unwrap();
            assert!((next - would_reach).abs() < 1e-9);
        }
        other => panic!("expected a budget stop, got {other:?}"),
    }
    // Asking again takes no step.
    let r2 = t.train(&d.train, None).unwrap();
    assert_eq!(r2.steps, r.steps);
}

#[test]
fn calibrated_noise_spends_the_budget_and_epsilon_matches_dp_accounting() {
    let d = data();
    let model = models::mlp(&[784, 32, 10], &Device::Cpu, 2).unwrap();
    let cfg = TrainerConfig::new(Epochs(3.0), BatchSize(128.0), Delta(1e-5))
        .with_budget(4.0)
        .calibrate_noise_from_budget()
        .with_seed(2);
    let mut t = PrivateTrainer::new(
        model,
        Box::new(Sgd::new(0.2).with_momentum(0.9)),
        Box::new(FixedClip::new(1.0, 1.0).unwrap()),
        cfg,
        &d.train,
    )
    .unwrap();
    let r = t.train(&d.train, Some(&d.test)).unwrap();
    assert_eq!(r.stop, StopReason::Completed);
    let q = 128.0 / d.train.len() as f64;
    let expected = epsilon_for(q, r.noise_multiplier, r.steps, 1e-5, AccountantKind::Rdp).unwrap();
    assert!((r.epsilon - expected).abs() < 1e-12);
    assert!(r.epsilon <= 4.0 && r.epsilon > 3.9, "{}", r.epsilon);
    // It learns on real digits: well above the 10% of chance.
    let acc = r.test_accuracy.unwrap();
    assert!(acc > 0.6, "test accuracy {acc}");
    assert_eq!(t.epoch_records().len(), 3);
    assert_eq!(t.records().len() as u64, r.steps);
}

#[test]
fn resume_continues_the_run_exactly() {
    let d = data();
    let build = || models::mlp(&[784, 16, 10], &Device::Cpu, 5).unwrap();
    let cfg = TrainerConfig::new(Epochs(0.5), BatchSize(200.0), Delta(1e-5)).with_seed(9);
    let method = || Box::new(AdaptiveQuantileClip::new(1.0, 200.0).unwrap());
    let opt = || Box::new(Sgd::new(0.3).with_momentum(0.9));

    let mut whole = PrivateTrainer::new(build(), opt(), method(), cfg.clone(), &d.train).unwrap();
    let total = whole.total_steps();
    assert!(total >= 6);
    let r_whole = whole.train(&d.train, None).unwrap();

    let mut first = PrivateTrainer::new(build(), opt(), method(), cfg, &d.train).unwrap();
    for _ in 0..total / 2 {
        first.step(&d.train, &Device::Cpu).unwrap().unwrap();
    }
    let dir = std::env::temp_dir().join(format!("dp_optim_resume_{}", std::process::id()));
    first.save_checkpoint(&dir).unwrap();
    drop(first);
    let mut resumed =
        PrivateTrainer::resume(&dir, build(), opt(), method(), &d.train, &Device::Cpu).unwrap();
    assert_eq!(resumed.steps_taken(), total / 2);
    let r_res = resumed.train(&d.train, None).unwrap();
    assert_eq!(r_res.steps, r_whole.steps);
    assert_eq!(r_res.epsilon, r_whole.epsilon);
    assert_eq!(flat(resumed.model()), flat(whole.model()));
    assert_eq!(
        resumed.method().state().unwrap(),
        whole.method().state().unwrap()
    );
    assert_eq!(resumed.records(), whole.records());
    // A mismatched model is refused.
    let wrong = models::mlp(&[784, 8, 10], &Device::Cpu, 5).unwrap();
    assert!(PrivateTrainer::resume(&dir, wrong, opt(), method(), &d.train, &Device::Cpu).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn physical_batches_do_not_change_the_result() {
    let d = data();
    let run = |cap: usize| {
        let model = models::mlp(&[784, 8, 10], &Device::Cpu, 7).unwrap();
        let cfg = TrainerConfig::new(Epochs(0.1), BatchSize(100.0), Delta(1e-5))
            .with_seed(3)
            .with_max_physical_batch(cap);
        let mut t = PrivateTrainer::new(
            model,
            Box::new(Sgd::new(0.1)),
            Box::new(FixedClip::new(0.5, 1.0).unwrap()),
            cfg,
            &d.train,
        )
        .unwrap();
        t.train(&d.train, None).unwrap();
        flat(t.model())
    };
    let a = run(0);
    let b = run(17);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-5);
    }
}

#[test]
fn bad_configurations_are_refused() {
    let d = data();
    let m = || models::mlp(&[784, 4, 10], &Device::Cpu, 0).unwrap();
    let fixed = || Box::new(FixedClip::new(1.0, 1.0).unwrap());
    let bad_delta = TrainerConfig::new(Epochs(1.0), BatchSize(100.0), Delta(1.5));
    assert!(
        PrivateTrainer::new(m(), Box::new(Sgd::new(0.1)), fixed(), bad_delta, &d.train).is_err()
    );
    let no_budget = TrainerConfig::new(Epochs(1.0), BatchSize(100.0), Delta(1e-5))
        .calibrate_noise_from_budget();
    assert!(
        PrivateTrainer::new(m(), Box::new(Sgd::new(0.1)), fixed(), no_budget, &d.train).is_err()
    );
    let q_too_big = TrainerConfig::new(Epochs(1.0), BatchSize(1e6), Delta(1e-5));
    assert!(
        PrivateTrainer::new(m(), Box::new(Sgd::new(0.1)), fixed(), q_too_big, &d.train).is_err()
    );
    assert!(FixedClip::new(0.0, 1.0).is_err() && FixedClip::new(1.0, -1.0).is_err());
    assert!(AdaptiveQuantileClip::new(100.0, 100.0).is_err(), "σ ≥ 2σ_b");
}

#[test]
fn augmentation_multiplicity_keeps_accounting_and_resumes_exactly() {
    let d = data();
    let aug = dp_data::Augmentation {
        crop_padding: 2,
        flip: false,
        pad_value: 0.0,
    };
    let cfg = TrainerConfig::new(Epochs(0.2), BatchSize(100.0), Delta(1e-5))
        .with_seed(4)
        .with_augmentation_multiplicity(aug, 3);
    let build = || models::mnist_cnn(&Device::Cpu, 1).unwrap();
    let method = || Box::new(FixedClip::new(0.5, 1.2).unwrap());
    let mut whole = PrivateTrainer::new(
        build(),
        Box::new(Sgd::new(0.1)),
        method(),
        cfg.clone(),
        &d.train,
    )
    .unwrap();
    let total = whole.total_steps();
    let r = whole.train(&d.train, None).unwrap();
    // Same ε as without augmentation: K copies of one example are one example.
    let q = 100.0 / d.train.len() as f64;
    assert_eq!(
        r.epsilon,
        epsilon_for(q, 1.2, r.steps, 1e-5, AccountantKind::Rdp).unwrap()
    );
    assert!(whole.records().iter().all(|s| s.fraction_clipped >= 0.0));

    let mut first =
        PrivateTrainer::new(build(), Box::new(Sgd::new(0.1)), method(), cfg, &d.train).unwrap();
    for _ in 0..total / 2 {
        first.step(&d.train, &Device::Cpu).unwrap().unwrap();
    }
    let dir = std::env::temp_dir().join(format!("dp_optim_augmult_{}", std::process::id()));
    first.save_checkpoint(&dir).unwrap();
    let mut resumed = PrivateTrainer::resume(
        &dir,
        build(),
        Box::new(Sgd::new(0.1)),
        method(),
        &d.train,
        &Device::Cpu,
    )
    .unwrap();
    resumed.train(&d.train, None).unwrap();
    assert_eq!(flat(resumed.model()), flat(whole.model()));
    std::fs::remove_dir_all(&dir).ok();
}
