//! BAM (Knolle et al. 2023): the gradient at each example's own ascent point, from per-example
//! parameter offsets, against one-model-per-example references and finite differences; the
//! mix is clipped after mixing; α = 0 is DP-SGD bit for bit.

mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use dp_core::clipping::FlatClip;
use dp_core::layers::*;
use dp_core::{
    bam_clipped_gradient, batch_gradient, clipped_gradient, models, per_example_ascent_gradients,
    BamConfig, CrossEntropy, GradMode, GradOptions, Init, Model, Sequential,
};

fn small_cnn(seed: u64) -> Sequential {
    let d = Device::Cpu;
    let mut i = Init::seeded(seed);
    Sequential::new(&d)
        .push(Reshape::new(&[6, 6, 1]))
        .push(Conv2d::new(Conv2dConfig::new(1, 4, 3).stride(1).padding(1), &mut i, &d).unwrap())
        .push(Tanh::default())
        .push(AvgPool2d::new(2, 2))
        .push(Flatten::default())
        .push(Linear::new(36, 8, true, &mut i, &d).unwrap())
        .push(Tanh::default())
        .push(Linear::new(8, 3, true, &mut i, &d).unwrap())
}

fn row(t: &Tensor, i: usize) -> Vec<f64> {
    t.get(i)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Sets the model's parameters to the flat vector `theta`.
fn set_flat<M: Model>(m: &mut M, theta: &[f64]) {
    let mut off = 0;
    let ps: Vec<Tensor> = m
        .param_tensors()
        .iter()
        .map(|t| {
            let n = t.elem_count();
            let v = Tensor::from_vec(theta[off..off + n].to_vec(), t.dims(), &Device::Cpu)
                .unwrap()
                .to_dtype(t.dtype())
                .unwrap();
            off += n;
            v
        })
        .collect();
    m.set_param_tensors(&ps).unwrap();
}

/// The engine's g′_i equals, for every example, the gradient of a separate copy of the model
/// moved to that example's ascent point (one backward per example), and a central finite
/// difference of ℓ_i there along random directions — for a linear model and a CNN.
#[test]
fn ascent_gradients_match_one_model_per_example_and_finite_differences() {
    let r = 0.5; // large enough that g′_i differs clearly from g_i
    for (name, make, din) in [
        (
            "linear",
            (|s| models::mlp(&[5, 3], &Device::Cpu, s).unwrap()) as fn(u64) -> Sequential,
            5,
        ),
        ("cnn", small_cnn as fn(u64) -> Sequential, 36),
    ] {
        let mut m = make(3);
        to_f64(&mut m);
        let mut g = rng(7);
        let b = 4;
        let x = (randn(&mut g, &[b, din], DType::F64) * 2.0).unwrap();
        let y = labels(&mut g, b, 3);
        let theta = flat(&m.param_tensors());
        let (plain, ascent) =
            per_example_ascent_gradients(&mut m, &x, &y, &CrossEntropy, r).unwrap();
        let mut moved_any = 0.0f64;
        for i in 0..b {
            let gi = row(&plain, i);
            let n = norm(&gi);
            let point: Vec<f64> = theta.iter().zip(&gi).map(|(t, g)| t + r * g / n).collect();
            let mut copy = make(3);
            to_f64(&mut copy);
            set_flat(&mut copy, &point);
            let xi = x.narrow(0, i, 1).unwrap();
            let yi = y.narrow(0, i, 1).unwrap();
            let (want, _) = batch_gradient(&mut copy, &xi, &yi, &CrossEntropy).unwrap();
            let want = flat(&want);
            let got = row(&ascent, i);
            let err = norm(
                &got.iter()
                    .zip(&want)
                    .map(|(a, b)| a - b)
                    .collect::<Vec<_>>(),
            );
            assert!(
                err <= 1e-9 * norm(&want).max(1.0),
                "{name} example {i}: |Δ| = {err}"
            );
            moved_any = moved_any.max(norm(
                &got.iter().zip(&gi).map(|(a, b)| a - b).collect::<Vec<_>>(),
            ));
            // Finite differences of ℓ_i at the ascent point.
            for k in 0..3 {
                let v: Vec<f64> = flat(&[randn(&mut rng(100 + k), &[theta.len()], DType::F64)]);
                let h = 1e-5;
                let mut at = |s: f64| {
                    let p: Vec<f64> = point.iter().zip(&v).map(|(p, v)| p + s * v).collect();
                    set_flat(&mut copy, &p);
                    loss_sum(&mut copy, &xi, &yi, &CrossEntropy)
                };
                let fd = (at(h) - at(-h)) / (2.0 * h);
                let an: f64 = got.iter().zip(&v).map(|(a, b)| a * b).sum();
                assert!(
                    (fd - an).abs() <= 1e-5 * an.abs().max(1.0),
                    "{name} {i}: fd {fd} vs {an}"
                );
            }
        }
        assert!(
            moved_any > 1e-3,
            "{name}: the ascent point did not change the gradient"
        );
    }
}

/// h_i = (1−α)g_i + αg′_i is clipped **after** mixing: the sum equals Σ min(1, C/‖h_i‖) h_i,
/// every contribution is ≤ C, and it differs from mixing separately clipped gradients.
#[test]
fn the_mix_is_clipped_after_mixing() {
    let (c, cfg) = (0.3, BamConfig::new(0.5, 0.8).unwrap());
    let mut m = small_cnn(5);
    to_f64(&mut m);
    let mut g = rng(11);
    let b = 6;
    let x = (randn(&mut g, &[b, 36], DType::F64) * 3.0).unwrap();
    let y = labels(&mut g, b, 3);
    let (plain, ascent) = per_example_ascent_gradients(&mut m, &x, &y, &CrossEntropy, 0.5).unwrap();
    let d = plain.dim(1).unwrap();
    let mut want = vec![0.0; d];
    let mut separately = vec![0.0; d];
    for i in 0..b {
        let (gi, gpi) = (row(&plain, i), row(&ascent, i));
        let h: Vec<f64> = gi
            .iter()
            .zip(&gpi)
            .map(|(a, b)| 0.2 * a + 0.8 * b)
            .collect();
        let f = (c / norm(&h)).min(1.0);
        assert!(f * norm(&h) <= c * (1.0 + 1e-12));
        let (fg, fgp) = ((c / norm(&gi)).min(1.0), (c / norm(&gpi)).min(1.0));
        for k in 0..d {
            want[k] += f * h[k];
            separately[k] += 0.2 * fg * gi[k] + 0.8 * fgp * gpi[k];
        }
    }
    let mut clip = FlatClip::new(c).unwrap();
    let out = bam_clipped_gradient(
        &mut m,
        &x,
        &y,
        &CrossEntropy,
        &mut clip,
        &GradOptions::default(),
        &cfg,
    )
    .unwrap();
    assert_eq!(out.sensitivity, c);
    let got = flat(&out.sum);
    let err = norm(
        &got.iter()
            .zip(&want)
            .map(|(a, b)| a - b)
            .collect::<Vec<_>>(),
    );
    // The engine's clip factors are f32 (as DP-SGD's), hence the tolerance.
    assert!(err < 1e-5 * norm(&want), "clipped mix differs by {err}");
    let other = norm(
        &separately
            .iter()
            .zip(&want)
            .map(|(a, b)| a - b)
            .collect::<Vec<_>>(),
    );
    assert!(
        other > 1e-4,
        "mixing clipped gradients gave the same sum ({other})"
    );
    assert!(out.stats.num_clipped > 0);
}

/// With α = 0 BAM is DP-SGD: the clipped sum, norms and statistics equal the engine's in
/// materialised mode to the bit (f32, host kernels), on the MNIST CNN and an MLP.
#[test]
fn alpha_zero_is_dp_sgd_bit_for_bit() {
    let dev = Device::Cpu;
    for (name, mut m, din) in [
        ("mnist_cnn", models::mnist_cnn(&dev, 1).unwrap(), 784),
        ("mlp", models::mlp(&[20, 16, 4], &dev, 1).unwrap(), 20),
    ] {
        let mut g = rng(3);
        let b = 8;
        let x = randn(&mut g, &[b, din], DType::F32);
        let y = labels(&mut g, b, 4);
        let opts = GradOptions {
            track_unclipped_sum: true,
            ..GradOptions::with_mode(GradMode::Materialize)
        };
        let mut clip = FlatClip::new(0.1).unwrap();
        let dp = clipped_gradient(&mut m, &x, &y, &CrossEntropy, &mut clip, &opts).unwrap();
        let cfg = BamConfig::new(0.05, 0.0).unwrap();
        let bam =
            bam_clipped_gradient(&mut m, &x, &y, &CrossEntropy, &mut clip, &opts, &cfg).unwrap();
        assert_eq!(dp.stats.norms, bam.stats.norms, "{name}: norms");
        assert_eq!(dp.loss_sum, bam.loss_sum, "{name}: loss");
        for (a, b) in dp.sum.iter().zip(&bam.sum) {
            let (a, b): (Vec<f32>, Vec<f32>) = (
                a.flatten_all().unwrap().to_vec1().unwrap(),
                b.flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert_eq!(a, b, "{name}: clipped sum differs");
        }
        // The unclipped references agree too (up to summation order).
        let (u, v) = (
            flat(dp.unclipped_sum.as_ref().unwrap()),
            flat(bam.unclipped_sum.as_ref().unwrap()),
        );
        let err = norm(&u.iter().zip(&v).map(|(a, b)| a - b).collect::<Vec<_>>());
        assert!(
            err <= 1e-4 * norm(&u),
            "{name}: unclipped sums differ by {err}"
        );
        // And a real α moves the sum.
        let moved = bam_clipped_gradient(
            &mut m,
            &x,
            &y,
            &CrossEntropy,
            &mut clip,
            &opts,
            &BamConfig::default(),
        )
        .unwrap();
        assert_ne!(
            flat(&moved.sum),
            flat(&bam.sum),
            "{name}: α = 0.8 changed nothing"
        );
    }
}

/// A model with a layer that cannot take per-example offsets is refused with an error naming
/// it, and nothing of the failed step lingers (the next DP-SGD step is unaffected).
#[test]
fn layers_without_offsets_are_refused_and_leave_no_state() {
    let dev = Device::Cpu;
    let mut i = Init::seeded(0);
    let mut m = Sequential::new(&dev)
        .push(Linear::new(6, 8, true, &mut i, &dev).unwrap())
        .push(LayerNorm::new(8, &dev).unwrap())
        .push(Linear::new(8, 3, true, &mut i, &dev).unwrap());
    let mut g = rng(2);
    let x = randn(&mut g, &[5, 6], DType::F32);
    let y = labels(&mut g, 5, 3);
    let mut clip = FlatClip::new(1.0).unwrap();
    let before = clipped_gradient(
        &mut m,
        &x,
        &y,
        &CrossEntropy,
        &mut clip,
        &GradOptions::default(),
    )
    .unwrap();
    let err = bam_clipped_gradient(
        &mut m,
        &x,
        &y,
        &CrossEntropy,
        &mut clip,
        &GradOptions::default(),
        &BamConfig::default(),
    );
    let msg = format!("{}", err.expect_err("LayerNorm has no offsets"));
    assert!(
        msg.contains("LayerNorm") || msg.contains("offsets"),
        "{msg}"
    );
    let after = clipped_gradient(
        &mut m,
        &x,
        &y,
        &CrossEntropy,
        &mut clip,
        &GradOptions::default(),
    )
    .unwrap();
    assert_eq!(flat(&before.sum), flat(&after.sum));
    assert!(BamConfig::new(-0.1, 0.5).is_err());
    assert!(BamConfig::new(f64::NAN, 0.5).is_err());
    assert!(BamConfig::new(0.1, -0.5).is_err());
}

/// An example with a non-finite gradient: an error by default; under ZeroOut the sum is BAM's
/// on the other examples and the statistics count it.
#[test]
fn non_finite_examples_follow_the_engine_policy() {
    let dev = Device::Cpu;
    let mut m = models::mlp(&[6, 5, 3], &dev, 4).unwrap();
    let mut g = rng(9);
    let mut v: Vec<f32> = randn(&mut g, &[4, 6], DType::F32)
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    v[7] = f32::NAN; // example 1
    let x = Tensor::from_vec(v, (4, 6), &dev).unwrap();
    let y = labels(&mut g, 4, 3);
    let mut clip = FlatClip::new(0.5).unwrap();
    let cfg = BamConfig::default();
    let err = bam_clipped_gradient(
        &mut m,
        &x,
        &y,
        &CrossEntropy,
        &mut clip,
        &GradOptions::default(),
        &cfg,
    );
    assert!(
        matches!(err, Err(dp_core::CoreError::NonFiniteGradient { ref examples }) if examples == &[1])
    );
    let zero = GradOptions {
        non_finite: dp_core::NonFinitePolicy::ZeroOut,
        ..GradOptions::default()
    };
    let out = bam_clipped_gradient(&mut m, &x, &y, &CrossEntropy, &mut clip, &zero, &cfg).unwrap();
    assert_eq!(out.stats.num_non_finite, 1);
    assert_eq!(out.examples, 3);
    let idx = Tensor::new(&[0u32, 2, 3], &dev).unwrap();
    let (xs, ys) = (
        x.index_select(&idx, 0).unwrap(),
        y.index_select(&idx, 0).unwrap(),
    );
    let want =
        bam_clipped_gradient(&mut m, &xs, &ys, &CrossEntropy, &mut clip, &zero, &cfg).unwrap();
    assert_eq!(flat(&out.sum), flat(&want.sum));
}

/// A strided, padded CNN with a grouped convolution (BAM keeps the grouped conv's ascent
/// offsets materialised, the second conv's and the Linear's factored: `prefer_factored`).
fn strided_cnn(seed: u64) -> Sequential {
    let d = Device::Cpu;
    let mut i = Init::seeded(seed);
    Sequential::new(&d)
        .push(Reshape::new(&[9, 9, 2]))
        .push(
            Conv2d::new(
                Conv2dConfig::new(2, 6, 3).stride(2).padding(1).groups(2),
                &mut i,
                &d,
            )
            .unwrap(),
        )
        .push(Tanh::default())
        .push(Conv2d::new(Conv2dConfig::new(6, 32, 3).stride(2).padding(1), &mut i, &d).unwrap())
        .push(Relu::default())
        .push(Flatten::default())
        .push(Linear::new(288, 4, true, &mut i, &d).unwrap())
}

/// A Linear over a sequence of 5 positions per example, then a classifier.
fn sequence_model(seed: u64) -> Sequential {
    let d = Device::Cpu;
    let mut i = Init::seeded(seed);
    Sequential::new(&d)
        .push(Reshape::new(&[5, 6]))
        .push(Linear::new(6, 8, true, &mut i, &d).unwrap())
        .push(Tanh::default())
        .push(Flatten::default())
        .push(Linear::new(40, 4, false, &mut i, &d).unwrap())
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    norm(&a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>()) / norm(b).max(1e-30)
}

/// The factored path (ghost norms over 2T positions, offsets as position Grams, no
/// per-example gradients) equals the materialised reference: clipped sum, every example's
/// norm of h_i, the clipped count, the loss and the unclipped reference — for an MLP, a
/// strided/padded/grouped CNN, a sequence Linear model and the MNIST CNN, in f32 (host
/// kernels) and f64 (candle's ops); and it leaves no offsets behind.
#[test]
fn factored_path_equals_the_materialised_path() {
    type Build = fn(u64) -> Sequential;
    let cases: [(&str, Build, usize, usize); 4] = [
        (
            "mlp",
            |s| models::mlp(&[12, 16, 10, 4], &Device::Cpu, s).unwrap(),
            12,
            4,
        ),
        ("strided_cnn", strided_cnn, 162, 4),
        ("sequence", sequence_model, 30, 4),
        (
            "mnist_cnn",
            |s| models::mnist_cnn(&Device::Cpu, s).unwrap(),
            784,
            10,
        ),
    ];
    for (name, make, din, classes) in cases {
        for dtype in [DType::F32, DType::F64] {
            let mut m = make(2);
            if dtype == DType::F64 {
                to_f64(&mut m);
            }
            let mut g = rng(13);
            let b = 10;
            let x = (randn(&mut g, &[b, din], dtype) * 1.5).unwrap();
            let y = labels(&mut g, b, classes);
            let cfg = BamConfig::new(0.3, 0.7).unwrap();
            let run = |m: &mut Sequential, mode: GradMode, c: f64| {
                let opts = GradOptions {
                    track_unclipped_sum: true,
                    ..GradOptions::with_mode(mode)
                };
                let mut clip = FlatClip::new(c).unwrap();
                bam_clipped_gradient(m, &x, &y, &CrossEntropy, &mut clip, &opts, &cfg).unwrap()
            };
            // The clip bound at the median norm, so that some examples are clipped and some not.
            let probe = run(&mut m, GradMode::Materialize, 1e9);
            let c = probe.stats.median().unwrap();
            let want = run(&mut m, GradMode::Materialize, c);
            assert!(
                want.stats.num_clipped > 0 && want.stats.num_clipped < b,
                "{name}"
            );
            let tol = if dtype == DType::F32 { 2e-4 } else { 1e-9 };
            let before = clipped_gradient(
                &mut m,
                &x,
                &y,
                &CrossEntropy,
                &mut FlatClip::new(c).unwrap(),
                &GradOptions::default(),
            )
            .unwrap();
            for mode in [GradMode::Auto, GradMode::Ghost] {
                let got = run(&mut m, mode, c);
                let what = format!("{name} {dtype:?} {mode:?}");
                let e = rel_err(&flat(&got.sum), &flat(&want.sum));
                assert!(e < tol, "{what}: clipped sums differ by {e}");
                for (i, (a, w)) in got.stats.norms.iter().zip(&want.stats.norms).enumerate() {
                    let e = ((a - w) / w).abs() as f64;
                    assert!(e < tol.max(1e-6), "{what}: norm of example {i}: {a} vs {w}");
                }
                assert_eq!(got.stats.num_clipped, want.stats.num_clipped, "{what}");
                assert_eq!(got.loss_sum, want.loss_sum, "{what}: loss");
                let e = rel_err(
                    &flat(got.unclipped_sum.as_ref().unwrap()),
                    &flat(want.unclipped_sum.as_ref().unwrap()),
                );
                assert!(e < tol, "{what}: unclipped sums differ by {e}");
            }
            // No ascent offsets outlive the step.
            let after = clipped_gradient(
                &mut m,
                &x,
                &y,
                &CrossEntropy,
                &mut FlatClip::new(c).unwrap(),
                &GradOptions::default(),
            )
            .unwrap();
            assert_eq!(flat(&before.sum), flat(&after.sum), "{name} {dtype:?}");
        }
    }
}

/// The factored path against one model per example, built explicitly: for each example a
/// copy at θ gives g_i, a copy moved to θ + r·g_i/‖g_i‖ gives g′_i, and the clipped sum of
/// h_i = (1−α)g_i + αg′_i and its norms are formed by hand (f64, a CNN and an MLP).
#[test]
fn factored_path_equals_one_model_per_example() {
    let (r, alpha, c) = (0.4, 0.6, 0.5);
    type Build = fn(u64) -> Sequential;
    let cases: [(&str, Build, usize); 3] = [
        (
            "mlp",
            |s| models::mlp(&[7, 9, 3], &Device::Cpu, s).unwrap(),
            7,
        ),
        ("cnn", small_cnn, 36),
        (
            "sequence",
            |s| {
                let d = Device::Cpu;
                let mut i = Init::seeded(s);
                Sequential::new(&d)
                    .push(Reshape::new(&[4, 5]))
                    .push(Linear::new(5, 6, true, &mut i, &d).unwrap())
                    .push(Tanh::default())
                    .push(Flatten::default())
                    .push(Linear::new(24, 3, true, &mut i, &d).unwrap())
            },
            20,
        ),
    ];
    for (name, make, din) in cases {
        let mut m = make(4);
        to_f64(&mut m);
        let mut g = rng(21);
        let b = 6;
        let x = (randn(&mut g, &[b, din], DType::F64) * 2.0).unwrap();
        let y = labels(&mut g, b, 3);
        let theta = flat(&m.param_tensors());
        let mut want = vec![0.0; theta.len()];
        let mut want_norms = Vec::new();
        for i in 0..b {
            let xi = x.narrow(0, i, 1).unwrap();
            let yi = y.narrow(0, i, 1).unwrap();
            let mut copy = make(4);
            to_f64(&mut copy);
            set_flat(&mut copy, &theta);
            let (gi, _) = batch_gradient(&mut copy, &xi, &yi, &CrossEntropy).unwrap();
            let gi = flat(&gi);
            let n = norm(&gi);
            let point: Vec<f64> = theta.iter().zip(&gi).map(|(t, g)| t + r * g / n).collect();
            set_flat(&mut copy, &point);
            let (gpi, _) = batch_gradient(&mut copy, &xi, &yi, &CrossEntropy).unwrap();
            let h: Vec<f64> = gi
                .iter()
                .zip(flat(&gpi))
                .map(|(a, b)| (1.0 - alpha) * a + alpha * b)
                .collect();
            let nh = norm(&h);
            let f = (c / nh).min(1.0);
            want.iter_mut().zip(&h).for_each(|(w, h)| *w += f * h);
            want_norms.push(nh);
        }
        for mode in [GradMode::Auto, GradMode::Ghost] {
            let out = bam_clipped_gradient(
                &mut m,
                &x,
                &y,
                &CrossEntropy,
                &mut FlatClip::new(c).unwrap(),
                &GradOptions::with_mode(mode),
                &BamConfig::new(r, alpha).unwrap(),
            )
            .unwrap();
            // The engine's clip factors are f32 (as DP-SGD's), hence the tolerance.
            let e = rel_err(&flat(&out.sum), &want);
            assert!(e < 1e-5, "{name} {mode:?}: clipped sum differs by {e}");
            for (i, (a, w)) in out.stats.norms.iter().zip(&want_norms).enumerate() {
                assert!(
                    ((*a as f64 - w) / w).abs() < 1e-6,
                    "{name} {mode:?} example {i}: {a} vs {w}"
                );
            }
            assert!(out.stats.num_clipped > 0, "{name}: nothing clipped");
        }
    }
}
