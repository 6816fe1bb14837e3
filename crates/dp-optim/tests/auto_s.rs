//! AUTO-S (Bu et al. 2023) as a trainer method: every example's contribution is below the
//! sensitivity 1, and the noise std is σ.

use candle_core::{Device, Tensor};
use dp_accounting::AccountantKind;
use dp_core::{clipped_gradient, models, CrossEntropy, GaussianNoise, GradOptions, Sequential};
use dp_optim::{
    take_step, AutoS, BatchSize, Delta, Epochs, Guarantee, PlanContext, PrivacyMethod,
    PrivateTrainer, Regime, Sgd, StepEnv, TrainerConfig,
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

fn norm(ts: &[Tensor]) -> f64 {
    ts.iter()
        .map(|t| {
            t.to_dtype(candle_core::DType::F64)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        })
        .sum::<f64>()
        .sqrt()
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
fn auto_s_gives_every_example_a_contribution_of_norm_below_one() {
    let (x, y) = batch();
    let mut m = AutoS::new(1.0).unwrap();
    for i in 0..16u32 {
        let idx = Tensor::new(&[i], &Device::Cpu).unwrap();
        let (xi, yi) = (
            x.index_select(&idx, 0).unwrap(),
            y.index_select(&idx, 0).unwrap(),
        );
        let mut plan = m.plan(&ctx(0, 16.0)).unwrap();
        let mut model = mlp();
        let out = clipped_gradient(
            &mut model,
            &xi,
            &yi,
            &CrossEntropy,
            plan.clip.as_mut(),
            &GradOptions::default(),
        )
        .unwrap();
        let g = out.stats.norms[0] as f64;
        let n = norm(&out.sum);
        assert!(n < 1.0, "example {i}: ‖h_i‖ = {n} (‖g_i‖ = {g})");
        // And it is the AUTO-S factor, not a clip: ‖g‖/(‖g‖ + 0.01).
        let expected = g / (g + 0.01);
        assert!(
            (n - expected).abs() < 1e-4 * expected.max(1e-3),
            "example {i}: {n} vs {expected}"
        );
    }
}

#[test]
fn auto_s_adds_noise_of_std_sigma_through_the_step_and_the_trainer() {
    let sigma = 1.3;
    // The step: an empty Poisson batch leaves only the noise, divided by B.
    let mut model = mlp();
    let mut plan = AutoS::new(sigma).unwrap().plan(&ctx(0, 50.0)).unwrap();
    let x = Tensor::zeros((0, 784), candle_core::DType::F32, &Device::Cpu).unwrap();
    let y = Tensor::zeros(0, candle_core::DType::U32, &Device::Cpu).unwrap();
    let env = StepEnv {
        regime: Regime::Private,
        loss: &CrossEntropy,
        grad_options: &GradOptions::default(),
    };
    let r = take_step(
        &mut model,
        &mut std::iter::once(Ok((x, y))),
        &mut plan,
        &env,
        &mut GaussianNoise::seeded(7),
        &mut Sgd::new(0.0),
    )
    .unwrap();
    assert_eq!(r.sensitivity, 1.0);
    assert!((r.sum_noise_std - sigma).abs() < 1e-12);
    let z: Vec<f64> = flat(&r.gradient).iter().map(|g| g * 50.0).collect();
    let n = z.len() as f64;
    let mean = z.iter().sum::<f64>() / n;
    let std = (z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    // 9 550 draws: the sample std is within 2% of σ far beyond 5 standard errors.
    assert!((std - sigma).abs() < 0.02 * sigma, "empirical std {std}");
    assert!(mean.abs() < 0.05, "mean {mean}");

    // The trainer: every record's noise is σ·1, and ε is DP-SGD's at (q, σ).
    let d = data();
    let cfg = TrainerConfig::new(Epochs(0.1), BatchSize(100.0), Delta(1e-5)).with_seed(2);
    let mut t = PrivateTrainer::new(
        mlp(),
        Box::new(Sgd::new(0.5)),
        Box::new(AutoS::new(sigma).unwrap()),
        cfg,
        &d.train,
    )
    .unwrap();
    let rep = t.train(&d.train, None).unwrap();
    for rec in t.records() {
        assert_eq!(rec.sensitivity, 1.0);
        assert_eq!(rec.noise_std, sigma);
        assert_eq!(rec.guarantee, Guarantee::Dp);
    }
    let q = 100.0 / d.train.len() as f64;
    let e = dp_accounting::calibration::epsilon_for(q, sigma, rep.steps, 1e-5, AccountantKind::Rdp)
        .unwrap();
    assert!((rep.epsilon - e).abs() < 1e-12);
}
