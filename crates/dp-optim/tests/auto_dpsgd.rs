//! Auto DP-SGD (Chilukoti et al. 2023) as trainer methods: the σ schedules, the accounting
//! of the DP-safe variant, and that the published variant never reports a finite ε.

use candle_core::{Device, Tensor};
use dp_accounting::{schedule_event, Accountant, AccountantKind, AnyAccountant, DpEvent};
use dp_core::{models, CrossEntropy, GaussianNoise, GradOptions, Sequential};
use dp_optim::methods::{AutoDpSgd, AutoDpSgdPublishedNotDp, NoiseDecay};
use dp_optim::{
    take_step, BatchSize, Delta, Epochs, Guarantee, PlanContext, PrivacyMethod, PrivateTrainer,
    Regime, Sgd, StepEnv, TrainerConfig,
};

fn data() -> dp_data::TrainTest {
    let mut d = dp_data::load_bundled_mnist().unwrap();
    dp_data::Normalize::mnist()
        .apply_dataset(&mut d.train)
        .unwrap();
    d
}

fn mlp() -> Sequential {
    models::mlp(&[784, 12, 10], &Device::Cpu, 3).unwrap()
}

fn ctx(step: u64, b: f64) -> PlanContext {
    PlanContext {
        step,
        expected_batch_size: b,
        rescale_by_clip_norm: false,
    }
}

fn flat(ts: &[Tensor]) -> Vec<f64> {
    ts.iter()
        .flat_map(|t| {
            t.flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        })
        .collect()
}

/// 16 examples of the bundled digits, some scaled up 1000× (huge gradients), one zeroed.
fn batch() -> (Tensor, Tensor) {
    let d = data();
    let idx: Vec<usize> = (0..16).collect();
    let (x, y) = dp_optim::batch_tensors(&d.train, &idx, &Device::Cpu).unwrap();
    let scale: Vec<f32> = (0..16)
        .map(|i| match i % 4 {
            0 => 1000.0,
            1 => 0.0,
            _ => 1.0,
        })
        .collect();
    let mut dims = vec![1usize; x.rank()];
    dims[0] = 16;
    let s = Tensor::from_vec(scale, dims, &Device::Cpu).unwrap();
    (x.broadcast_mul(&s).unwrap(), y)
}

#[test]
fn the_noise_schedules_match_hand_computed_values() {
    let s0 = 2.0;
    let time = NoiseDecay::Time { k: 0.05 };
    assert_eq!(time.sigma(s0, 0), 2.0);
    assert!((time.sigma(s0, 4) - 2.0 / 1.2).abs() < 1e-15);
    let step = NoiseDecay::Step {
        factor: 0.6,
        every: 10,
    };
    assert_eq!(step.sigma(s0, 9), 2.0);
    assert!((step.sigma(s0, 10) - 1.2).abs() < 1e-15);
    assert!((step.sigma(s0, 25) - 0.72).abs() < 1e-15);
    let exp = NoiseDecay::Exponential { k: 0.01 };
    assert!((exp.sigma(s0, 10) - 1.809_674_836_071_919_6).abs() < 1e-12);
    assert_eq!(NoiseDecay::by_name("step").unwrap(), NoiseDecay::STEP);
    assert!(NoiseDecay::by_name("linear").is_err());
    assert!(NoiseDecay::Step {
        factor: 1.5,
        every: 1
    }
    .validate()
    .is_err());
    assert!(NoiseDecay::Time { k: -0.1 }.validate().is_err());
    // Blocks of a run: 7 steps, 3 per epoch, halving every epoch.
    let half = NoiseDecay::Step {
        factor: 0.5,
        every: 1,
    };
    assert_eq!(half.blocks(1.0, 7, 3), vec![(1.0, 3), (0.5, 3), (0.25, 1)]);

    // The methods plan exactly these σ_e, step by step (the quantile variant's two queries
    // recombine to σ_e).
    let mut safe = AutoDpSgd::with_private_quantile(1.0, 100.0, half, 3).unwrap();
    let mut constant = AutoDpSgd::with_constant_threshold(0.7, 1.0, half, 3).unwrap();
    let mut published = AutoDpSgdPublishedNotDp::new(1.0, half, 3).unwrap();
    for t in 0..7u64 {
        let want = [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25][t as usize];
        let q = safe.plan(&ctx(t, 100.0)).unwrap().query_multipliers();
        assert_eq!(q.len(), 2);
        let combined = dp_accounting::combined_noise_multiplier(&q).unwrap();
        assert!((combined - want).abs() < 1e-12, "step {t}: {combined}");
        assert_eq!(
            constant.plan(&ctx(t, 100.0)).unwrap().query_multipliers(),
            vec![want]
        );
        assert_eq!(
            published.plan(&ctx(t, 100.0)).unwrap().noise_multiplier,
            want
        );
        assert_eq!(safe.calibration_multipliers(1.0, t).unwrap(), vec![want]);
    }
}

fn eps_of(event: DpEvent, kind: AccountantKind) -> f64 {
    let mut a = AnyAccountant::new(kind);
    a.compose(&event).unwrap();
    a.epsilon(1e-5).unwrap()
}

#[test]
fn the_safe_variants_epsilon_is_the_accountants_composition_of_its_schedule() {
    let d = data();
    let (b, epochs) = (200.0, 3.0);
    let q = b / d.train.len() as f64;
    let spe = (1.0 / q).ceil() as u64;
    assert_eq!(spe, 20);
    let half = NoiseDecay::Step {
        factor: 0.5,
        every: 1,
    };
    let methods: Vec<(AccountantKind, Box<dyn PrivacyMethod>)> = vec![
        (
            AccountantKind::Rdp,
            Box::new(AutoDpSgd::with_private_quantile(1.0, b, half, spe).unwrap()),
        ),
        (
            AccountantKind::Prv,
            Box::new(AutoDpSgd::with_private_quantile(1.0, b, half, spe).unwrap()),
        ),
        (
            AccountantKind::Rdp,
            Box::new(AutoDpSgd::with_constant_threshold(0.5, 1.0, half, spe).unwrap()),
        ),
    ];
    for (kind, method) in methods {
        let name = method.name();
        let cfg = TrainerConfig::new(Epochs(epochs), BatchSize(b), Delta(1e-5))
            .with_budget(3.0)
            .calibrate_noise_from_budget()
            .with_accountant(kind)
            .with_seed(4);
        let mut t =
            PrivateTrainer::new(mlp(), Box::new(Sgd::new(0.5)), method, cfg, &d.train).unwrap();
        let s0 = t.method().noise_multiplier();
        // By hand: 20 steps at σ₀, 20 at σ₀/2, 20 at σ₀/4.
        let sched = |s: f64| schedule_event(q, &[(s, 20), (s / 2.0, 20), (s / 4.0, 20)]).unwrap();
        let e = eps_of(sched(s0), kind);
        assert!(e <= 3.0, "{name} {kind}: ε {e}");
        assert!(
            eps_of(sched(s0 * 0.99), kind) > 3.0,
            "{name} {kind}: σ₀ = {s0} does not spend the budget"
        );
        let r = t.train(&d.train, None).unwrap();
        assert_eq!(r.steps, 60);
        assert!(
            (r.epsilon - e).abs() < 1e-9 * e,
            "{name} {kind}: run {} vs composition {e}",
            r.epsilon
        );
        for rec in t.records() {
            assert_eq!(rec.guarantee, Guarantee::Dp);
        }
    }
}

#[test]
fn the_published_variant_never_reports_a_finite_epsilon() {
    let d = data();
    let b = 200.0;
    let spe = 20;
    let published = || Box::new(AutoDpSgdPublishedNotDp::new(1.0, NoiseDecay::STEP, spe).unwrap());
    // In the DP regime it is refused at its first step, before anything is released.
    let mut t = PrivateTrainer::new(
        mlp(),
        Box::new(Sgd::new(0.5)),
        published(),
        TrainerConfig::new(Epochs(1.0), BatchSize(b), Delta(1e-5)).with_seed(3),
        &d.train,
    )
    .unwrap();
    let err = t.train(&d.train, None).unwrap_err().to_string();
    assert!(err.contains("not differentially private"), "{err}");
    assert!(t.records().is_empty());
    assert_eq!(t.steps_taken(), 0);
    // Through the step, every regime but the data-dependent one refuses it.
    let (x, y) = batch();
    for regime in [
        Regime::Private,
        Regime::ClipOnly,
        Regime::NoiseOnly,
        Regime::NonPrivate,
    ] {
        let mut plan = published().plan(&ctx(0, 16.0)).unwrap();
        let env = StepEnv {
            regime,
            loss: &CrossEntropy,
            grad_options: &GradOptions::default(),
        };
        let r = take_step(
            &mut mlp(),
            &mut std::iter::once(Ok((x.clone(), y.clone()))),
            &mut plan,
            &env,
            &mut GaussianNoise::seeded(0),
            &mut Sgd::new(0.1),
        );
        assert!(r.is_err(), "{regime} ran a not-DP plan");
    }
    // In its own regime, even with σ₀ calibrated to the ε its authors would claim, every
    // record says not DP and ε = ∞.
    let cfg = TrainerConfig::new(Epochs(1.0), BatchSize(b), Delta(1e-5))
        .with_regime(Regime::DataDependentNoise)
        .with_budget(3.0)
        .calibrate_noise_from_budget()
        .with_seed(3);
    let mut t =
        PrivateTrainer::new(mlp(), Box::new(Sgd::new(0.5)), published(), cfg, &d.train).unwrap();
    let r = t.train(&d.train, Some(&d.test)).unwrap();
    assert_eq!(r.steps, 20);
    assert_eq!(r.epsilon, f64::INFINITY);
    let not_dp = Guarantee::NotPrivate {
        regime: Regime::DataDependentNoise,
    };
    assert_eq!(r.guarantee, not_dp);
    for rec in t.records() {
        assert_eq!(rec.epsilon, Some(f64::INFINITY));
        assert_eq!(rec.guarantee, not_dp);
        // The noise follows the batch's own bound: σ·C_t.
        assert!((rec.noise_std - t.method().noise_multiplier() * rec.sensitivity).abs() < 1e-9);
    }
    for e in t.epoch_records() {
        assert_eq!(e.epsilon, f64::INFINITY);
    }
    let json = serde_json::to_string(&r).unwrap();
    assert!(
        json.contains("\"inf\"") && json.contains("data_dependent_noise_not_dp"),
        "{json}"
    );
    // The ε the authors would claim is finite, and is only that: a claim.
    let sigma0 = t.method().noise_multiplier();
    let claimed = AutoDpSgdPublishedNotDp::new(sigma0, NoiseDecay::STEP, spe)
        .unwrap()
        .epsilon_if_threshold_were_public(b / d.train.len() as f64, 20, 1e-5, AccountantKind::Rdp)
        .unwrap();
    assert!(claimed <= 3.0 && claimed > 2.9, "claimed {claimed}");
}

#[test]
fn the_published_noise_scale_is_a_function_of_the_data() {
    // σ·C_t with C_t the batch's mean norm: an empty batch gets no noise at all (the
    // reviewers' counter-example), a batch with one example gets σ·‖g‖.
    let (x, y) = batch();
    let run = |rows: &[u32]| {
        let idx = Tensor::new(rows, &Device::Cpu).unwrap();
        let (xs, ys) = (
            x.index_select(&idx, 0).unwrap(),
            y.index_select(&idx, 0).unwrap(),
        );
        let mut plan = AutoDpSgdPublishedNotDp::new(2.0, NoiseDecay::Constant, 10)
            .unwrap()
            .plan(&ctx(0, 16.0))
            .unwrap();
        let env = StepEnv {
            regime: Regime::DataDependentNoise,
            loss: &CrossEntropy,
            grad_options: &GradOptions::default(),
        };
        take_step(
            &mut mlp(),
            &mut std::iter::once(Ok((xs, ys))),
            &mut plan,
            &env,
            &mut GaussianNoise::seeded(1),
            &mut Sgd::new(0.0),
        )
        .unwrap()
    };
    let empty = run(&[]);
    assert_eq!(empty.sum_noise_std, 0.0);
    assert!(flat(&empty.gradient).iter().all(|g| *g == 0.0));
    let one = run(&[2]);
    let g = one.stats.norms[0] as f64;
    assert!(g > 0.0);
    assert!((one.sum_noise_std - 2.0 * g).abs() < 1e-6 * g);
    let many = run(&[0, 2, 3, 6]);
    let mean = many.stats.norms.iter().map(|&n| n as f64).sum::<f64>() / 4.0;
    assert!((many.sensitivity - mean).abs() < 1e-9 * mean);
    assert!((many.sum_noise_std - 2.0 * mean).abs() < 1e-9 * mean);
}
