//! Parameter averaging (De et al. 2022): the EMA and Polyak averages equal their
//! recurrences computed by hand from the iterates, evaluating them changes neither ε nor the
//! trained weights, and a checkpoint keeps the average so that a resumed run continues it.

use candle_core::Device;
use dp_core::{models, Model, Sequential};
use dp_optim::{
    Averaging, BatchSize, Delta, Epochs, FixedClip, PrivateTrainer, Sgd, TrainError, TrainerConfig,
};

fn data() -> dp_data::Dataset {
    let n = 256;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let features: Vec<f32> = (0..n * 12).map(|_| next()).collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
    dp_data::Dataset::new("synthetic", features, labels, vec![12], 3).unwrap()
}

fn model() -> Sequential {
    models::mlp(&[12, 6, 3], &Device::Cpu, 5).unwrap()
}

fn trainer(avg: Option<Averaging>, train: &dp_data::Dataset) -> PrivateTrainer<Sequential> {
    let mut cfg = TrainerConfig::new(Epochs(1.0), BatchSize(32.0), Delta(1e-5)).with_seed(3);
    if let Some(a) = avg {
        cfg = cfg.with_averaging(a);
    }
    PrivateTrainer::new(
        model(),
        Box::new(Sgd::new(0.3).with_momentum(0.5)),
        Box::new(FixedClip::new(1.0, 1.0).unwrap()),
        cfg,
        train,
    )
    .unwrap()
}

fn flat(ts: &[candle_core::Tensor]) -> Vec<f64> {
    ts.iter()
        .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .map(|v| v as f64)
        .collect()
}

/// Runs `steps` steps and returns the iterates θ_0 … θ_steps and the trainer.
fn iterates(
    avg: Averaging,
    steps: usize,
    train: &dp_data::Dataset,
) -> (Vec<Vec<f64>>, PrivateTrainer<Sequential>) {
    let mut t = trainer(Some(avg), train);
    let mut thetas = vec![flat(&t.model().param_tensors())];
    for _ in 0..steps {
        t.step(train, &Device::Cpu).unwrap().unwrap();
        thetas.push(flat(&t.model().param_tensors()));
    }
    (thetas, t)
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len());
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{what}: coordinate {k}: {g} vs {w}"
        );
    }
}

#[test]
fn ema_equals_the_hand_computed_recurrence() {
    let train = data();
    for warmup in [false, true] {
        let avg = Averaging::Ema { decay: 0.8, warmup };
        let (thetas, t) = iterates(avg, 5, &train);
        // θ̄_0 = θ_0; θ̄_{t+1} = μ_t θ̄_t + (1 − μ_t) θ_{t+1}, μ_t = 0.8 or min(0.8, (1+t)/(10+t)).
        let mut want = thetas[0].clone();
        for (k, theta) in thetas.iter().enumerate().skip(1) {
            let tt = (k - 1) as f64;
            let mu = if warmup {
                0.8f64.min((1.0 + tt) / (10.0 + tt))
            } else {
                0.8
            };
            for (w, th) in want.iter_mut().zip(theta) {
                *w = mu * *w + (1.0 - mu) * th;
            }
        }
        // Without warm-up, the closed form too: 0.8^5 θ_0 + Σ_k 0.2·0.8^(5−k) θ_k.
        if !warmup {
            let closed: Vec<f64> = (0..want.len())
                .map(|i| {
                    0.8f64.powi(5) * thetas[0][i]
                        + (1..=5)
                            .map(|k| 0.2 * 0.8f64.powi(5 - k as i32) * thetas[k][i])
                            .sum::<f64>()
                })
                .collect();
            assert_close(&want, &closed, "closed form");
        }
        let a = t.average().unwrap();
        assert_eq!(a.updates(), 5);
        assert_close(&flat(a.values()), &want, &format!("EMA warmup={warmup}"));
        // The average is not the last iterate (the test would pass trivially otherwise).
        let last = thetas.last().unwrap();
        assert!(want.iter().zip(last).any(|(w, l)| (w - l).abs() > 1e-3));
    }
}

#[test]
fn polyak_is_the_mean_of_the_iterates() {
    let train = data();
    let (thetas, t) = iterates(Averaging::Polyak, 4, &train);
    let want: Vec<f64> = (0..thetas[0].len())
        .map(|i| (1..=4).map(|k| thetas[k][i]).sum::<f64>() / 4.0)
        .collect();
    assert_close(&flat(t.average().unwrap().values()), &want, "Polyak");
}

#[test]
fn averaging_costs_no_privacy_and_leaves_training_alone() {
    let train = data();
    let mut plain = trainer(None, &train);
    let mut avg = trainer(Some(Averaging::ema(0.9).unwrap()), &train);
    let rp = plain.train(&train, Some(&train)).unwrap();
    let eps_before = avg.epsilon().unwrap();
    assert_eq!(eps_before, 0.0);
    let ra = avg.train(&train, Some(&train)).unwrap();
    // Same ε, same steps, same trained weights: the average is computed beside the run.
    assert_eq!(ra.epsilon, rp.epsilon);
    assert_eq!(ra.steps, rp.steps);
    assert_eq!(
        flat(&plain.model().param_tensors()),
        flat(&avg.model().param_tensors())
    );
    assert_eq!(ra.test_accuracy, rp.test_accuracy);
    assert!(ra.averaged_test_accuracy.is_some() && rp.averaged_test_accuracy.is_none());
    assert!(avg
        .epoch_records()
        .iter()
        .all(|e| e.averaged_test_loss.is_some()));
    // Evaluating the average again spends nothing and restores the model's own weights.
    let own = flat(&avg.model().param_tensors());
    let (_, acc) = avg
        .evaluate_averaged(&train, &Device::Cpu)
        .unwrap()
        .unwrap();
    assert_eq!(Some(acc), ra.averaged_test_accuracy);
    assert_eq!(avg.epsilon().unwrap(), ra.epsilon);
    assert_eq!(flat(&avg.model().param_tensors()), own);
    assert!(plain
        .evaluate_averaged(&train, &Device::Cpu)
        .unwrap()
        .is_none());
}

#[test]
fn a_resumed_run_continues_the_average() {
    let train = data();
    let avg = Averaging::ema(0.7).unwrap();
    let (_, whole) = iterates(avg, 6, &train);
    let (_, first) = iterates(avg, 3, &train);
    let dir = std::env::temp_dir().join(format!("dp_optim_avg_{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    first.save_checkpoint(&dir).unwrap();
    let mut resumed = PrivateTrainer::resume(
        &dir,
        model(),
        Box::new(Sgd::new(0.3).with_momentum(0.5)),
        Box::new(FixedClip::new(1.0, 1.0).unwrap()),
        &train,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(resumed.average().unwrap().updates(), 3);
    for _ in 0..3 {
        resumed.step(&train, &Device::Cpu).unwrap().unwrap();
    }
    assert_eq!(resumed.average().unwrap().updates(), 6);
    assert_close(
        &flat(resumed.average().unwrap().values()),
        &flat(whole.average().unwrap().values()),
        "resumed average",
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_decays_are_refused() {
    for d in [f64::NAN, f64::INFINITY, -0.1, 1.0, 1.5] {
        assert!(matches!(
            Averaging::ema(d),
            Err(TrainError::InvalidConfig(_))
        ));
    }
    // A hand-built config with a bad decay is refused when the trainer is built.
    let train = data();
    let cfg = TrainerConfig::new(Epochs(1.0), BatchSize(32.0), Delta(1e-5)).with_averaging(
        Averaging::Ema {
            decay: 2.0,
            warmup: false,
        },
    );
    let r = PrivateTrainer::new(
        model(),
        Box::new(Sgd::new(0.1)),
        Box::new(FixedClip::new(1.0, 1.0).unwrap()),
        cfg,
        &train,
    );
    assert!(r.is_err());
}
