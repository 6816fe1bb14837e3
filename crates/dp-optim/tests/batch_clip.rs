//! Batch (micro-batch) clipping (Xiao et al., S&P 2023): every unit's contribution is its
//! mean gradient clipped to C, adding or removing one example moves the clipped sum by at
//! most the stated sensitivity (4C for m ≥ 2, attained), units of one example are DP-SGD
//! bit for bit, and the step is accounted as one subsampled Gaussian with that sensitivity.

use candle_core::{DType, Device, Tensor};
use dp_core::clipping::FlatClip;
use dp_core::layers::Linear;
use dp_core::{
    per_example_gradients, CrossEntropy, GradMode, GradOptions, HalfSquaredError, Init, Model,
    Sequential,
};
use dp_optim::methods::{batch_clipped_sum, unit_order, BatchClip, MethodContext, MethodSpec};
use dp_optim::{
    BatchSize, Delta, Epochs, FixedClip, PlanContext, PrivacyMethod, PrivateTrainer, Sgd,
    TrainerConfig,
};
use proptest::prelude::*;

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

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|a| a * a).sum::<f64>().sqrt()
}

fn model(seed: u64) -> Sequential {
    dp_core::models::mlp(&[6, 5, 3], &Device::Cpu, seed).unwrap()
}

fn batch(n: usize, seed: u64) -> (Tensor, Tensor) {
    let dev = Device::Cpu;
    let mut init = Init::seeded(seed);
    let x = init.normal(&[n, 6], 3.0, &dev).unwrap();
    let y: Vec<u32> = (0..n as u32).map(|i| (i * 7 + seed as u32) % 3).collect();
    (x, Tensor::from_vec(y, n, &dev).unwrap())
}

/// One backward per example, unit means, each clipped to C: the slow reference of
/// `Σ_u clip_C(mean_{i∈u} g_i)` and the list of the clipped unit means.
fn reference(
    m: &mut Sequential,
    x: &Tensor,
    y: &Tensor,
    c: f64,
    unit: usize,
    order: &[usize],
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let g = per_example_gradients(m, x, y, &CrossEntropy).unwrap();
    let g: Vec<Vec<f64>> = g.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    let d = g[0].len();
    let mut units = Vec::new();
    for chunk in order.chunks(unit) {
        let mut mean = vec![0.0; d];
        for &i in chunk {
            for (a, b) in mean.iter_mut().zip(&g[i]) {
                *a += b / chunk.len() as f64;
            }
        }
        let f = (c / (norm(&mean) + 1e-6)).min(1.0);
        units.push(mean.iter().map(|v| v * f).collect::<Vec<_>>());
    }
    let mut sum = vec![0.0; d];
    for u in &units {
        for (a, b) in sum.iter_mut().zip(u) {
            *a += b;
        }
    }
    (sum, units)
}

fn clipped(
    m: &mut Sequential,
    x: &Tensor,
    y: &Tensor,
    c: f64,
    unit: usize,
    order: &[usize],
) -> dp_core::ClippedBatch {
    let mut clip = FlatClip::new(c).unwrap();
    let opts = GradOptions::with_mode(GradMode::Materialize);
    batch_clipped_sum(m, x, y, &CrossEntropy, &mut clip, &opts, unit, order).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Each unit contributes its mean gradient clipped to C (≤ C), and the sum is theirs.
    #[test]
    fn every_unit_contributes_its_clipped_mean(n in 1usize..14, unit in 1usize..6, seed in 0u64..50) {
        let mut m = model(seed);
        let (x, y) = batch(n, seed);
        let c = 0.3;
        let order = unit_order(seed, 3, n);
        let got = clipped(&mut m, &x, &y, c, unit, &order);
        let (want, units) = reference(&mut m, &x, &y, c, unit, &order);
        prop_assert_eq!(got.stats.norms.len(), units.len());
        prop_assert_eq!(got.examples, n);
        for u in &units {
            prop_assert!(norm(u) <= c * (1.0 + 1e-6), "unit contributes {} > C", norm(u));
        }
        let g = flat(&got.sum);
        for (a, b) in g.iter().zip(&want) {
            prop_assert!((a - b).abs() <= 1e-5 + 1e-4 * b.abs(), "{} vs {}", a, b);
        }
        prop_assert!(norm(&g) <= units.len() as f64 * c * (1.0 + 1e-5));
    }

    /// Add/remove one example under the coupling of the proof: removing `x` from its unit
    /// and moving the last unit's first member into its place changes at most two units,
    /// and the sum moves by at most the stated sensitivity.
    #[test]
    fn removing_one_example_moves_the_sum_by_at_most_the_sensitivity(
        n in 2usize..14, unit in 1usize..5, removed in 0usize..14, seed in 0u64..50,
    ) {
        let removed = removed % n;
        let mut m = model(seed);
        let (x, y) = batch(n, seed);
        let c = 0.2;
        let order = unit_order(seed, 1, n);
        let with = flat(&clipped(&mut m, &x, &y, c, unit, &order).sum);
        // The order of D = batch without example `removed`: `removed`'s slot is taken by the
        // last example in the order (the coupling), then indices are renumbered.
        let pos = order.iter().position(|&i| i == removed).unwrap();
        let mut rest: Vec<usize> = order.clone();
        let last = rest.pop().unwrap();
        if last != removed {
            rest[pos] = last;
        }
        let keep: Vec<u32> = (0..n).filter(|&i| i != removed).map(|i| i as u32).collect();
        let idx = Tensor::from_vec(keep.clone(), n - 1, &Device::Cpu).unwrap();
        let (xd, yd) = (x.index_select(&idx, 0).unwrap(), y.index_select(&idx, 0).unwrap());
        let renum: Vec<usize> = rest
            .iter()
            .map(|i| keep.iter().position(|&k| k as usize == *i).unwrap())
            .collect();
        let without = flat(&clipped(&mut m, &xd, &yd, c, unit, &renum).sum);
        let diff: Vec<f64> = with.iter().zip(&without).map(|(a, b)| a - b).collect();
        let s = BatchClip::new(c, unit, 1.0).unwrap().sensitivity();
        prop_assert!(norm(&diff) <= s * (1.0 + 1e-5), "moved {} > S = {}", norm(&diff), s);
    }
}

/// A 1-parameter model with weight 0 under ½(ŷ − t)² and input 1: example `i`'s gradient
/// is exactly `−t_i`, so the units' means can be chosen.
fn scalar_grads(targets: &[f64]) -> (Sequential, Tensor, Tensor) {
    let dev = Device::Cpu;
    let lin = Linear::from_tensors(Tensor::zeros((1, 1), DType::F32, &dev).unwrap(), None).unwrap();
    let m = Sequential::new(&dev).push(lin);
    let n = targets.len();
    let x = Tensor::ones((n, 1), DType::F32, &dev).unwrap();
    let t: Vec<f32> = targets.iter().map(|&t| t as f32).collect();
    (m, x, Tensor::from_vec(t, (n, 1), &dev).unwrap())
}

fn scalar_sum(targets: &[f64], unit: usize, c: f64) -> f64 {
    let (mut m, x, y) = scalar_grads(targets);
    let mut clip = FlatClip::new(c).unwrap();
    let order: Vec<usize> = (0..targets.len()).collect();
    let opts = GradOptions::default();
    let s = batch_clipped_sum(
        &mut m,
        &x,
        &y,
        &HalfSquaredError,
        &mut clip,
        &opts,
        unit,
        &order,
    )
    .unwrap();
    flat(&s.sum)[0]
}

#[test]
fn the_coupling_attains_four_c_so_neither_c_nor_two_c_can_be_claimed() {
    // Gradients g = −t. D ∪ {x}, units of 2 in this order: {x=50, a=−30} {y=10, r=−5};
    // D (x removed, y moved into x's slot): {y=10, a=−30} {r=−5}.
    let c = 1.0;
    let with = scalar_sum(&[-50.0, 30.0, -10.0, 5.0], 2, c);
    let without = scalar_sum(&[-10.0, 30.0, 5.0], 2, c);
    let moved = (with - without).abs();
    assert!((moved - 4.0 * c).abs() < 1e-4, "moved {moved}");
    let s = BatchClip::new(c, 2, 1.0).unwrap().sensitivity();
    assert!(moved <= s * (1.0 + 1e-6) && moved > 2.0 * c * 1.5);
    // A single unit that keeps a member flips from +C to −C: 2C.
    let one = (scalar_sum(&[-50.0, 30.0], 2, c) - scalar_sum(&[30.0], 2, c)).abs();
    assert!((one - 2.0 * c).abs() < 1e-4, "moved {one}");
}

fn train(method: Box<dyn PrivacyMethod>, cfg: TrainerConfig) -> PrivateTrainer<Sequential> {
    let data = dp_data::load_bundled_mnist().unwrap();
    let model = dp_core::models::mlp(&[784, 12, 10], &Device::Cpu, 0).unwrap();
    let mut t =
        PrivateTrainer::new(model, Box::new(Sgd::new(0.5)), method, cfg, &data.train).unwrap();
    t.train(&data.train, None).unwrap();
    t
}

fn config() -> TrainerConfig {
    TrainerConfig::new(Epochs(0.05), BatchSize(100.0), Delta(1e-5))
        .with_seed(5)
        .with_grad_mode(GradMode::Materialize)
}

fn weights(t: &PrivateTrainer<Sequential>) -> Vec<f32> {
    t.model()
        .param_tensors()
        .iter()
        .flat_map(|p| p.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

#[test]
fn units_of_one_example_are_dp_sgd_bit_for_bit_at_the_same_cost() {
    let dp = train(Box::new(FixedClip::new(0.5, 1.1).unwrap()), config());
    let one = train(Box::new(BatchClip::new(0.5, 1, 1.1).unwrap()), config());
    assert_eq!(weights(&dp), weights(&one));
    let (a, b) = (dp.epsilon().unwrap(), one.epsilon().unwrap());
    assert!(a.is_finite() && a == b);
    let four = train(Box::new(BatchClip::new(0.5, 4, 1.1).unwrap()), config());
    assert_ne!(weights(&dp), weights(&four), "units of 4 changed nothing");
}

#[test]
fn a_step_is_one_subsampled_gaussian_with_noise_sigma_times_four_c() {
    let ctx = PlanContext {
        step: 7,
        expected_batch_size: 100.0,
        rescale_by_clip_norm: false,
    };
    let mut m = BatchClip::new(0.5, 4, 1.1).unwrap();
    let plan = m.plan(&ctx).unwrap();
    assert_eq!(plan.query_multipliers(), vec![1.1]);
    assert!((plan.gradient_noise_std() - 1.1 * 4.0 * 0.5).abs() < 1e-12);
    assert_eq!(plan.divisor, 25.0);
    // The trainer accounts what the plan states: the same (q, σ) as DP-SGD, so the same ε
    // for the same σ (the noise std is 4× larger, relative to a 4× larger sensitivity).
    let dp = train(Box::new(FixedClip::new(0.5, 1.1).unwrap()), config());
    let bc = train(Box::new(BatchClip::new(0.5, 4, 1.1).unwrap()), config());
    assert_eq!(dp.epsilon().unwrap(), bc.epsilon().unwrap());
    for r in bc.records() {
        // σ·S on the sum: 1.1 × 4 × 0.5.
        assert!((r.noise_std - 1.1 * 2.0).abs() < 1e-9, "{}", r.noise_std);
    }
}

#[test]
fn several_physical_batches_are_refused_for_units_larger_than_one() {
    let data = dp_data::load_bundled_mnist().unwrap();
    let model = dp_core::models::mlp(&[784, 8, 10], &Device::Cpu, 0).unwrap();
    let cfg = config().with_max_physical_batch(16);
    let method = BatchClip::new(0.5, 2, 1.1).unwrap();
    let mut t = PrivateTrainer::new(
        model,
        Box::new(Sgd::new(0.5)),
        Box::new(method),
        cfg,
        &data.train,
    )
    .unwrap();
    let err = t.train(&data.train, None).unwrap_err().to_string();
    assert!(err.contains("physical"), "{err}");
}

#[test]
fn registered_by_name_state_round_trips_and_bad_values_are_refused() {
    let ctx = MethodContext {
        expected_batch_size: 64.0,
        steps_per_epoch: 10,
    };
    let spec: MethodSpec =
        serde_json::from_str(r#"{"name": "batch_clip", "clip": 0.2, "unit_size": 4}"#).unwrap();
    let mut m = spec.build(1.3, &ctx).unwrap();
    assert_eq!(m.name(), "batch_clip");
    let plan = m
        .plan(&PlanContext {
            step: 0,
            expected_batch_size: 64.0,
            rescale_by_clip_norm: false,
        })
        .unwrap();
    assert!((plan.sensitivity() - 0.8).abs() < 1e-12);
    let a = BatchClip::new(0.3, 3, 1.2).unwrap().with_seed(9);
    let mut b = BatchClip::new(1.0, 1, 1.0).unwrap();
    b.load_state(&a.state().unwrap()).unwrap();
    assert_eq!(a, b);
    assert!(BatchClip::new(0.0, 2, 1.0).is_err());
    assert!(BatchClip::new(1.0, 0, 1.0).is_err());
    assert!(BatchClip::new(1.0, 2, f64::NAN).is_err());
    let bad = MethodSpec {
        unit_size: 0,
        ..MethodSpec::named("batch_clip")
    };
    assert!(bad.validate(&ctx).is_err());
    // A wrong order is a typed error, not a panic.
    let mut model = model(0);
    let (x, y) = batch(4, 0);
    let mut clip = FlatClip::new(1.0).unwrap();
    let opts = GradOptions::default();
    for order in [vec![0, 1, 2], vec![0, 1, 1, 2], vec![0, 1, 2, 9]] {
        assert!(batch_clipped_sum(
            &mut model,
            &x,
            &y,
            &CrossEntropy,
            &mut clip,
            &opts,
            2,
            &order
        )
        .is_err());
    }
}
