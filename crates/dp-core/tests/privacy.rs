//! Privacy invariants of the engine: clipped contributions are bounded, the clipped sum's
//! sensitivity is the stated bound, noise has the stated distribution and is
//! reproducible, and non-finite gradients never poison an update silently.

mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use dp_core::clipping::{AutoClip, ClipStrategy, FlatClip, NoClip, PerExampleFactor, PerLayerClip};
use dp_core::layers::*;
use dp_core::{
    clipped_gradient, per_example_gradients, privatize, ClippedBatch, CoreError, CrossEntropy,
    GaussianNoise, GradMode, GradOptions, Init, Layer, Model, NonFinitePolicy, Param, Sequential,
};
use proptest::prelude::*;

fn model(seed: u64) -> Sequential {
    let d = Device::Cpu;
    let mut i = Init::seeded(seed);
    Sequential::new(&d)
        .push(Reshape::new(&[6, 6, 1]))
        .push(Conv2d::new(Conv2dConfig::new(1, 3, 3), &mut i, &d).unwrap())
        .push(Tanh::default())
        .push(Flatten::default())
        .push(Linear::new(48, 8, true, &mut i, &d).unwrap())
        .push(LayerNorm::new(8, &d).unwrap())
        .push(Relu::default())
        .push(Linear::new(8, 4, true, &mut i, &d).unwrap())
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn strategies(c: f64) -> Vec<(&'static str, Box<dyn ClipStrategy>)> {
    vec![
        ("flat", Box::new(FlatClip::new(c).unwrap())),
        ("per-layer", Box::new(PerLayerClip::equal(c).unwrap())),
        ("auto-s", Box::new(AutoClip::new(c, 0.01).unwrap())),
        (
            "per-example (lying closure)",
            // Claims sensitivity c but returns weights that would exceed it: the engine
            // must still enforce the bound.
            Box::new(
                PerExampleFactor::new(c, |n: &[f64]| n.iter().map(|_| 10.0).collect()).unwrap(),
            ),
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Removing one example moves the clipped sum by at most C (+1e-5 relative), for every
    /// strategy and both gradient paths; hence each contribution is bounded by C too.
    #[test]
    fn removing_one_example_moves_the_sum_by_at_most_c(b in 2usize..9, c in 0.01f64..3.0, scale in 0.1f32..30.0, seed in 0u64..500, ghost: bool) {
        let mut m = model(seed);
        let mut r = rng(seed);
        let x = (randn(&mut r, &[b, 36], DType::F32) * scale as f64).unwrap();
        let y = labels(&mut r, b, 4);
        let opts = GradOptions::with_mode(if ghost { GradMode::Ghost } else { GradMode::Materialize });
        for (name, mut s) in strategies(c) {
            let full = clipped_gradient(&mut m, &x, &y, &CrossEntropy, s.as_mut(), &opts).unwrap();
            prop_assert!((full.sensitivity - c).abs() < 1e-12);
            let full_v = flat(&full.sum);
            for drop in 0..b {
                let keep: Vec<u32> = (0..b as u32).filter(|&k| k as usize != drop).collect();
                let idx = Tensor::new(keep.as_slice(), &Device::Cpu).unwrap();
                let xs = x.index_select(&idx, 0).unwrap();
                let ys = y.index_select(&idx, 0).unwrap();
                let part = clipped_gradient(&mut m, &xs, &ys, &CrossEntropy, s.as_mut(), &opts).unwrap();
                let diff: Vec<f64> = full_v.iter().zip(flat(&part.sum)).map(|(a, b)| a - b).collect();
                prop_assert!(norm(&diff) <= c * (1.0 + 1e-5), "{name}: ‖Δ‖ = {} > C = {c}", norm(&diff));
            }
        }
    }
}

#[test]
fn every_clipped_per_example_contribution_is_at_most_c() {
    let mut m = model(3);
    let mut r = rng(3);
    let b = 16;
    let x = (randn(&mut r, &[b, 36], DType::F32) * 20.0).unwrap();
    let y = labels(&mut r, b, 4);
    let c = 0.3;
    let g: Vec<Vec<f64>> = per_example_gradients(&mut m, &x, &y, &CrossEntropy)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2()
        .unwrap();
    let mut clip = FlatClip::new(c).unwrap();
    let out = clipped_gradient(
        &mut m,
        &x,
        &y,
        &CrossEntropy,
        &mut clip,
        &GradOptions::default(),
    )
    .unwrap();
    let mut clipped_sum = vec![0.0; g[0].len()];
    for (i, gi) in g.iter().enumerate() {
        let n = norm(gi);
        assert!((n - out.stats.norms[i] as f64).abs() <= 1e-4 * n.max(1.0));
        let f = (c / (n + 1e-6)).min(1.0);
        assert!(n * f <= c * (1.0 + 1e-5));
        for (s, v) in clipped_sum.iter_mut().zip(gi) {
            *s += f * v;
        }
    }
    let ours = flat(&out.sum);
    let scale = clipped_sum.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
    for (a, e) in ours.iter().zip(&clipped_sum) {
        assert!((a - e).abs() <= 1e-4 * scale, "{a} vs {e}");
    }
    assert!(out.stats.num_clipped > 0);
    assert_eq!(
        out.stats.num_clipped,
        g.iter().filter(|gi| norm(gi) > c).count()
    );
}

#[test]
fn per_layer_clipping_bounds_each_layer() {
    let mut m = model(4);
    let mut r = rng(4);
    let x = (randn(&mut r, &[6, 36], DType::F32) * 10.0).unwrap();
    let y = labels(&mut r, 6, 4);
    let mut clip = PerLayerClip::with_thresholds(vec![0.1, 0.2, 0.3, 0.4]).unwrap();
    assert!((clip.sensitivity() - (0.01f64 + 0.04 + 0.09 + 0.16).sqrt()).abs() < 1e-12);
    let out = clipped_gradient(
        &mut m,
        &x,
        &y,
        &CrossEntropy,
        &mut clip,
        &GradOptions::default(),
    )
    .unwrap();
    assert_eq!(out.sum.len(), m.param_tensors().len());
    let mut wrong = PerLayerClip::with_thresholds(vec![0.1, 0.2]).unwrap();
    assert!(clipped_gradient(
        &mut m,
        &x,
        &y,
        &CrossEntropy,
        &mut wrong,
        &GradOptions::default()
    )
    .is_err());
}

/// Noise with a fixed seed: the sample mean and standard deviation of 200k draws lie
/// within 5 standard errors of 0 and σ (false-alarm rate < 1e-6 per check), and two
/// streams with one seed are identical.
#[test]
fn noise_has_the_stated_mean_and_std_and_is_reproducible() {
    let std = 2.5;
    let n = 200_000;
    let z = GaussianNoise::seeded(123).sample(n, std).unwrap();
    let mean = z.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let var = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    assert!(mean.abs() < 5.0 * std / (n as f64).sqrt(), "mean {mean}");
    // sd of the sample variance ≈ σ²·sqrt(2/(n−1))
    assert!(
        (var - std * std).abs() < 5.0 * std * std * (2.0 / (n - 1) as f64).sqrt(),
        "var {var}"
    );
    // Kurtosis of a Gaussian is 3.
    let k = z.iter().map(|&v| (v as f64 - mean).powi(4)).sum::<f64>() / n as f64 / (var * var);
    assert!(
        (k - 3.0).abs() < 5.0 * (24.0 / n as f64).sqrt(),
        "kurtosis {k}"
    );
    assert_eq!(z, GaussianNoise::seeded(123).sample(n, std).unwrap());
    assert_ne!(
        z[..10],
        GaussianNoise::seeded(124).sample(10, std).unwrap()[..]
    );
}

#[test]
fn noise_state_resumes_the_stream_exactly() {
    let mut a = GaussianNoise::seeded(5);
    let _ = a.sample(1001, 1.0).unwrap();
    let state = a.state();
    let json = serde_json_like(&state);
    let mut b = GaussianNoise::from_state(&state);
    assert_eq!(a.sample(777, 1.0).unwrap(), b.sample(777, 1.0).unwrap());
    assert!(!json.is_empty());
}

fn serde_json_like(s: &dp_core::NoiseState) -> String {
    format!("{:?}", s)
}

/// Zero gradients in: the privatised sum is pure noise with std σ·C on every coordinate.
#[test]
fn privatised_zero_gradient_has_std_sigma_c() {
    let d = Device::Cpu;
    let m =
        Sequential::new(&d).push(Linear::new(300, 100, true, &mut Init::seeded(0), &d).unwrap());
    let (sigma, c) = (1.3, 0.7);
    let empty = ClippedBatch::empty(&m, c, c).unwrap();
    let noisy = privatize(empty, sigma, &mut GaussianNoise::seeded(9)).unwrap();
    let v = flat(&noisy.sum);
    let n = v.len() as f64;
    let sd = (v.iter().map(|x| x * x).sum::<f64>() / n).sqrt();
    assert!(
        (sd - sigma * c).abs() < 5.0 * sigma * c / (2.0 * n).sqrt(),
        "sd {sd}"
    );
    // Same seed, same noisy gradient, bit for bit.
    let again = privatize(
        ClippedBatch::empty(&m, c, c).unwrap(),
        sigma,
        &mut GaussianNoise::seeded(9),
    )
    .unwrap();
    assert_eq!(flat(&again.sum), v);
}

#[test]
fn privatize_rejects_bad_noise_and_unclipped_sums() {
    let d = Device::Cpu;
    let m = Sequential::new(&d).push(Linear::new(3, 2, true, &mut Init::seeded(0), &d).unwrap());
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = privatize(
            ClippedBatch::empty(&m, 1.0, 1.0).unwrap(),
            bad,
            &mut GaussianNoise::seeded(0),
        );
        assert!(matches!(e, Err(CoreError::InvalidNoise(_))), "{bad}");
    }
    let e = privatize(
        ClippedBatch::empty(&m, f64::INFINITY, 1.0).unwrap(),
        1.0,
        &mut GaussianNoise::seeded(0),
    );
    assert!(e.is_err());
    assert!(FlatClip::new(0.0).is_err() && FlatClip::new(f64::NAN).is_err());
    let noisy = privatize(
        ClippedBatch::empty(&m, 1.0, 1.0).unwrap(),
        1.0,
        &mut GaussianNoise::seeded(0),
    )
    .unwrap();
    assert!(noisy.normalized(0.0).is_err());
}

#[test]
fn non_finite_gradients_are_refused_or_zeroed() {
    let mut m = model(6);
    let mut r = rng(6);
    let mut xs: Vec<f32> = randn(&mut r, &[4, 36], DType::F32)
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    xs[2 * 36 + 5] = f32::NAN;
    let x = Tensor::from_vec(xs, (4, 36), &Device::Cpu).unwrap();
    let y = labels(&mut r, 4, 4);
    let mut clip = FlatClip::new(1.0).unwrap();
    match clipped_gradient(
        &mut m,
        &x,
        &y,
        &CrossEntropy,
        &mut clip,
        &GradOptions::default(),
    ) {
        Err(CoreError::NonFiniteGradient { examples }) => assert_eq!(examples, vec![2]),
        other => panic!("expected NonFiniteGradient, got {other:?}"),
    }
    let opts = GradOptions {
        non_finite: NonFinitePolicy::ZeroOut,
        ..GradOptions::default()
    };
    let out = clipped_gradient(&mut m, &x, &y, &CrossEntropy, &mut clip, &opts).unwrap();
    assert_eq!(out.stats.num_non_finite, 1);
    assert!(flat(&out.sum).iter().all(|v| v.is_finite()));
    // Equals the sum over the three finite examples.
    let idx = Tensor::new(&[0u32, 1, 3], &Device::Cpu).unwrap();
    let ref_out = clipped_gradient(
        &mut m,
        &x.index_select(&idx, 0).unwrap(),
        &y.index_select(&idx, 0).unwrap(),
        &CrossEntropy,
        &mut clip,
        &GradOptions::default(),
    )
    .unwrap();
    for (a, b) in flat(&out.sum).iter().zip(flat(&ref_out.sum)) {
        assert!((a - b).abs() < 1e-5);
    }
}

#[test]
fn empty_batch_is_a_zero_sum_that_can_still_be_noised() {
    let mut m = model(7);
    let x = Tensor::zeros((0, 36), DType::F32, &Device::Cpu).unwrap();
    let y = Tensor::zeros(0, DType::U32, &Device::Cpu).unwrap();
    let mut clip = FlatClip::new(1.0).unwrap();
    let out = clipped_gradient(
        &mut m,
        &x,
        &y,
        &CrossEntropy,
        &mut clip,
        &GradOptions::default(),
    )
    .unwrap();
    assert_eq!(out.examples, 0);
    assert!(flat(&out.sum).iter().all(|v| *v == 0.0));
    let noisy = privatize(out, 1.0, &mut GaussianNoise::seeded(1)).unwrap();
    assert!(flat(&noisy.sum).iter().any(|v| *v != 0.0));
}

#[test]
fn accumulating_physical_batches_equals_one_logical_batch() {
    let mut m = model(8);
    let mut r = rng(8);
    let x = randn(&mut r, &[10, 36], DType::F32);
    let y = labels(&mut r, 10, 4);
    let mut clip = FlatClip::new(0.5).unwrap();
    let opts = GradOptions::default();
    let whole = clipped_gradient(&mut m, &x, &y, &CrossEntropy, &mut clip, &opts).unwrap();
    let mut acc = clipped_gradient(
        &mut m,
        &x.narrow(0, 0, 4).unwrap(),
        &y.narrow(0, 0, 4).unwrap(),
        &CrossEntropy,
        &mut clip,
        &opts,
    )
    .unwrap();
    acc.accumulate(
        clipped_gradient(
            &mut m,
            &x.narrow(0, 4, 6).unwrap(),
            &y.narrow(0, 4, 6).unwrap(),
            &CrossEntropy,
            &mut clip,
            &opts,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(acc.examples, 10);
    assert_eq!(acc.stats.norms.len(), 10);
    for (a, b) in flat(&acc.sum).iter().zip(flat(&whole.sum)) {
        assert!((a - b).abs() < 1e-5);
    }
    let other = clipped_gradient(
        &mut m,
        &x,
        &y,
        &CrossEntropy,
        &mut FlatClip::new(2.0).unwrap(),
        &opts,
    )
    .unwrap();
    assert!(
        acc.accumulate(other).is_err(),
        "mixing sensitivities must be refused"
    );
}

#[test]
fn batch_norm_is_refused_with_an_explanation() {
    let e = dp_core::layers::batch_norm(8).unwrap_err();
    assert!(matches!(e, CoreError::BatchNormNotPrivate));
    assert!(e.to_string().contains("GroupNorm"));
}

struct Custom {
    p: Param,
}
impl Layer for Custom {
    fn name(&self) -> String {
        "Custom".into()
    }
    fn forward(&mut self, x: &Tensor, _t: bool) -> dp_core::Result<Tensor> {
        Ok(x.broadcast_mul(&self.p.value)?)
    }
    fn backward(&mut self, g: &Tensor, _n: bool) -> dp_core::Result<Option<Tensor>> {
        Ok(Some(g.clone()))
    }
    fn params(&self) -> Vec<&Param> {
        vec![&self.p]
    }
}

#[test]
fn a_parameterised_layer_without_a_rule_is_a_clear_error() {
    let d = Device::Cpu;
    let mut m = Sequential::new(&d).push(Custom {
        p: Param::new("scale", Tensor::ones(4, DType::F32, &d).unwrap()),
    });
    let x = Tensor::ones((2, 4), DType::F32, &d).unwrap();
    let y = Tensor::new(&[0u32, 1], &d).unwrap();
    let e = clipped_gradient(
        &mut m,
        &x,
        &y,
        &CrossEntropy,
        &mut NoClip,
        &GradOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, CoreError::UnsupportedLayer { .. }));
    assert!(e.to_string().contains("PerSampleGrad"));
}

#[test]
fn shape_errors_are_typed() {
    let mut m = model(1);
    let x = Tensor::zeros((2, 35), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(m.forward(&x, false), Err(CoreError::Shape { .. })));
    assert!(Conv2d::new(
        Conv2dConfig::new(3, 4, 3).groups(2),
        &mut Init::seeded(0),
        &Device::Cpu
    )
    .is_err());
    assert!(GroupNorm::new(3, 8, &Device::Cpu).is_err());
}

/// Prefetched noise is exactly the noise the call would have drawn, and a cancelled or
/// mismatched prefetch leaves the stream as if it never happened.
#[test]
fn prefetched_noise_is_identical_and_cancellation_rewinds() {
    let d = Device::Cpu;
    let ts = vec![
        Tensor::zeros((300, 100), DType::F32, &d).unwrap(),
        Tensor::zeros(100, DType::F32, &d).unwrap(),
    ];
    let mut plain = GaussianNoise::seeded(11);
    let mut pre = GaussianNoise::seeded(11);
    for _ in 0..3 {
        pre.prefetch(&[30_000, 100]);
        let a = flat(&plain.add_noise(&ts, 0.7).unwrap());
        let b = flat(&pre.add_noise(&ts, 0.7).unwrap());
        assert_eq!(a, b);
    }
    // A prefetch for other sizes, or an interleaved draw, is cancelled and rewound.
    pre.prefetch(&[5]);
    assert_eq!(pre.state(), plain.state());
    let a = flat(&plain.add_noise(&ts, 1.0).unwrap());
    let b = flat(&pre.add_noise(&ts, 1.0).unwrap());
    assert_eq!(a, b);
    pre.prefetch(&[30_000, 100]);
    assert_eq!(plain.sample(3, 1.0).unwrap(), pre.sample(3, 1.0).unwrap());
    // A checkpoint taken while a prefetch is pending resumes at the same point.
    pre.prefetch(&[30_000, 100]);
    let mut resumed = GaussianNoise::from_state(&pre.state());
    assert_eq!(
        flat(&resumed.add_noise(&ts, 1.0).unwrap()),
        flat(&pre.add_noise(&ts, 1.0).unwrap())
    );
}

/// `add_noise` on f32 host tensors (the fused pass) adds exactly the values `sample` draws:
/// `t + N(0, σ²)` with the same f32 products and sums.
#[test]
fn fused_noise_addition_equals_sample_plus_tensor() {
    let d = Device::Cpu;
    let n = 40_000;
    let base: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    let t = Tensor::from_vec(base.clone(), n, &d).unwrap();
    let got = flat(&GaussianNoise::seeded(3).add_noise(&[t], 0.7).unwrap());
    let z = GaussianNoise::seeded(3).sample(n, 0.7).unwrap();
    let want: Vec<f32> = base.iter().zip(&z).map(|(a, b)| a + b).collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(*g, f64::from(*w)); // f32 → f64 is exact
    }
}

/// A NaN, infinite, negative or f32-overflowing scale is refused before anything is drawn
/// (it would turn every draw into NaN or ±∞), and the stream does not move.
#[test]
fn sampling_refuses_a_scale_it_cannot_apply() {
    let mut a = GaussianNoise::seeded(5);
    for std in [f64::NAN, f64::INFINITY, -1.0, 1e300] {
        assert!(a.sample(3, std).is_err(), "std {std}");
    }
    assert_eq!(a.sample(3, 0.0).unwrap(), vec![0.0; 3]);
    let mut b = GaussianNoise::seeded(5);
    let _ = b.sample(3, 0.0).unwrap();
    assert_eq!(a.sample(4, 1.0).unwrap(), b.sample(4, 1.0).unwrap());
}
