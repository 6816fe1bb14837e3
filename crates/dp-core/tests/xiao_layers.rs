//! The model side of Xiao et al. (S&P 2023): weight-standardised convolutions, non-affine
//! GroupNorm and residual blocks. Per-sample gradients and norms against one backward per
//! example (f32, 1e-4 relative to the largest entry), batch gradients against central finite
//! differences (f64, 1e-5), and augmentation-multiplicity grouping through both.

mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use dp_core::clipping::NoClip;
use dp_core::layers::*;
use dp_core::{
    batch_gradient, clipped_gradient, models, per_example_gradients, CrossEntropy, GradMode,
    GradOptions, Init, Layer, Model, Residual, Sequential, Shortcut,
};

fn slow_reference<M: Model>(m: &mut M, x: &Tensor, y: &Tensor) -> Vec<Vec<f64>> {
    let b = x.dim(0).unwrap();
    (0..b)
        .map(|i| {
            let xi = x.narrow(0, i, 1).unwrap();
            let yi = y.narrow(0, i, 1).unwrap();
            flat(&batch_gradient(m, &xi, &yi, &CrossEntropy).unwrap().0)
        })
        .collect()
}

fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = a.iter().chain(b).fold(1e-6f64, |m, v| m.max(v.abs()));
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}[{k}]: {x} vs {y} (scale {scale})"
        );
    }
}

fn norms(v: &[Vec<f64>]) -> Vec<f64> {
    v.iter()
        .map(|g| g.iter().map(|a| a * a).sum::<f64>().sqrt())
        .collect()
}

/// Per-example gradients and norms (every mode) against the slow reference, and the
/// unclipped sum against the batch gradient.
fn check_per_sample<M: Model>(m: &mut M, x: &Tensor, y: &Tensor) {
    let reference = slow_reference(m, x, y);
    let pe = per_example_gradients(m, x, y, &CrossEntropy).unwrap();
    let pe: Vec<Vec<f64>> = pe.to_dtype(DType::F64).unwrap().to_vec2().unwrap();
    for (i, (a, r)) in pe.iter().zip(&reference).enumerate() {
        assert_close(a, r, 1e-4, &format!("example {i}"));
    }
    let want = norms(&reference);
    let summed: Vec<f64> = (0..reference[0].len())
        .map(|k| reference.iter().map(|g| g[k]).sum())
        .collect();
    for mode in [GradMode::Ghost, GradMode::Materialize, GradMode::Auto] {
        let out = clipped_gradient(
            m,
            x,
            y,
            &CrossEntropy,
            &mut NoClip,
            &GradOptions::with_mode(mode),
        )
        .unwrap();
        let got: Vec<f64> = out.stats.norms.iter().map(|&n| n as f64).collect();
        assert_close(&got, &want, 1e-4, &format!("norms {mode:?}"));
        assert_close(&flat(&out.sum), &summed, 1e-4, &format!("sum {mode:?}"));
    }
}

/// Groups of `k` consecutive rows: each group's gradient is the mean of its rows'.
fn check_grouping<M: Model>(m: &mut M, x: &Tensor, y: &Tensor, k: usize) {
    let reference = slow_reference(m, x, y);
    let mut opts = GradOptions::with_mode(GradMode::Materialize);
    opts.augmentation_multiplicity = k;
    let out = clipped_gradient(m, x, y, &CrossEntropy, &mut NoClip, &opts).unwrap();
    let means: Vec<Vec<f64>> = reference
        .chunks(k)
        .map(|c| {
            (0..c[0].len())
                .map(|j| c.iter().map(|g| g[j]).sum::<f64>() / k as f64)
                .collect()
        })
        .collect();
    let got: Vec<f64> = out.stats.norms.iter().map(|&n| n as f64).collect();
    assert_close(&got, &norms(&means), 1e-4, "group norms");
}

fn inputs(shape: &[usize], classes: usize, seed: u64, dtype: DType) -> (Tensor, Tensor) {
    let mut r = rng(seed);
    (
        randn(&mut r, shape, dtype),
        labels(&mut r, shape[0], classes),
    )
}

fn ws_chain(seed: u64, bias: bool) -> Sequential {
    let d = Device::Cpu;
    let mut i = Init::seeded(seed);
    Sequential::new(&d)
        .push(ChannelsLast)
        .push(WsConv2d::new(Conv2dConfig::new(2, 4, 3).padding(1).bias(bias), &mut i, &d).unwrap())
        .push(NonAffineGroupNorm::new(2, 4).unwrap())
        .push(Relu::default())
        .push(
            WsConv2d::new(
                Conv2dConfig::new(4, 6, 3).stride(2).groups(2).bias(bias),
                &mut i,
                &d,
            )
            .unwrap(),
        )
        .push(NonAffineGroupNorm::new(3, 6).unwrap())
        .push(Tanh::default())
        .push(GlobalAvgPool::default())
        .push(Linear::new(6, 3, true, &mut i, &d).unwrap())
}

#[test]
fn ws_conv_and_non_affine_group_norm_per_sample_match_one_backward_per_example() {
    for bias in [false, true] {
        let mut m = ws_chain(1, bias);
        let (x, y) = inputs(&[5, 2, 7, 7], 3, 1, DType::F32);
        check_per_sample(&mut m, &x, &y);
        let (x, y) = inputs(&[6, 2, 7, 7], 3, 2, DType::F32);
        check_grouping(&mut m, &x, &y, 3);
    }
}

#[test]
fn ws_conv_and_non_affine_group_norm_match_finite_differences() {
    for bias in [false, true] {
        let mut m = ws_chain(3, bias);
        to_f64(&mut m);
        let (x, y) = inputs(&[3, 2, 7, 7], 3, 3, DType::F64);
        let worst = gradcheck(&mut m, &x, &y, &CrossEntropy, 60, 3);
        assert!(worst < 1e-5, "worst relative error {worst}");
    }
}

#[test]
fn the_standardised_kernel_is_what_the_convolution_uses() {
    // WsConv2d(W) ≡ Conv2d(Ŵ) on the same input.
    let d = Device::Cpu;
    let cfg = Conv2dConfig::new(3, 5, 3).padding(1);
    let mut ws = WsConv2d::new(cfg, &mut Init::seeded(4), &d).unwrap();
    let what = ws.standardized_weight().unwrap();
    let bias = ws.params()[1].value.clone();
    let mut plain = Conv2d::from_tensors(cfg, what.clone(), Some(bias)).unwrap();
    let (x, _) = inputs(&[2, 6, 6, 3], 2, 4, DType::F32);
    let a = flat(&[ws.forward(&x, false).unwrap()]);
    let b = flat(&[plain.forward(&x, false).unwrap()]);
    assert_close(&a, &b, 1e-6, "outputs");
    // Each filter: mean 0, unbiased std 1/√n up to the 1e-6 stabiliser.
    let w: Vec<Vec<f32>> = what.reshape((5, 27)).unwrap().to_vec2().unwrap();
    for f in &w {
        let mean: f64 = f.iter().map(|&v| v as f64).sum::<f64>() / 27.0;
        let var: f64 = f.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 26.0;
        assert!(mean.abs() < 1e-6, "mean {mean}");
        assert!(
            (var.sqrt() - 1.0 / 27f64.sqrt()).abs() < 1e-4,
            "std {}",
            var.sqrt()
        );
    }
    // Standardisation is invariant to the raw weight's shift and scale, per filter.
    let raw = ws.params()[0].value.clone();
    ws.params_mut()[0].value = ((raw * 3.0).unwrap() + 0.7).unwrap();
    let again = flat(&[ws.standardized_weight().unwrap()]);
    assert_close(&again, &flat(&[what]), 1e-5, "affine invariance");
}

#[test]
fn bad_configurations_are_typed_errors() {
    let d = Device::Cpu;
    assert!(NonAffineGroupNorm::new(3, 4).is_err());
    assert!(NonAffineGroupNorm::new(2, 4)
        .unwrap()
        .with_eps(0.0)
        .is_err());
    let one = Conv2dConfig::new(1, 2, 1);
    assert!(WsConv2d::new(one, &mut Init::seeded(0), &d).is_err());
    let mut gn = NonAffineGroupNorm::new(2, 4).unwrap();
    let x = Tensor::zeros((2, 3, 3, 5), DType::F32, &d).unwrap();
    assert!(gn.forward(&x, true).is_err());
    assert!(gn.backward(&x, true).is_err());
    assert!(Shortcut::subsample_pad(2, 8, 4).is_err());
    assert!(models::ws_gn_resnet(0, &[1, 1, 1], true, &d, 0).is_err());
    assert!(models::ws_gn_resnet(4, &[1, 1], true, &d, 0).is_err());
    // A block whose body changes the shape without a matching shortcut.
    let mut i = Init::seeded(0);
    let body = Sequential::new(&d).push(Linear::new(3, 4, true, &mut i, &d).unwrap());
    let mut m = Residual::new(&d).push_block(body, Shortcut::Identity);
    let x = Tensor::zeros((2, 3), DType::F32, &d).unwrap();
    assert!(m.forward(&x, true).is_err());
}

fn small_resnet(ws: bool, seed: u64) -> Residual {
    models::ws_gn_resnet(2, &[1, 2, 1], ws, &Device::Cpu, seed).unwrap()
}

#[test]
fn resnet_per_sample_gradients_match_one_backward_per_example() {
    for ws in [true, false] {
        let mut m = small_resnet(ws, 5);
        let (x, y) = inputs(&[4, 784], 10, 5, DType::F32);
        check_per_sample(&mut m, &x, &y);
        let (x, y) = inputs(&[4, 784], 10, 6, DType::F32);
        check_grouping(&mut m, &x, &y, 2);
    }
}

#[test]
fn resnet_batch_gradient_matches_finite_differences() {
    let mut m = small_resnet(true, 7);
    to_f64(&mut m);
    let (x, y) = inputs(&[2, 784], 10, 7, DType::F64);
    let worst = gradcheck(&mut m, &x, &y, &CrossEntropy, 60, 7);
    assert!(worst < 1e-5, "worst relative error {worst}");
}

#[test]
fn residual_backward_adds_both_branches() {
    // y = W₂(x + relu(W₁x)) on a linear stack: the gradient reaching the first layer has
    // both the identity path and the body's (checked by finite differences), and a model
    // with the block lists every layer once.
    let d = Device::Cpu;
    let mut i = Init::seeded(8);
    let body = Sequential::new(&d)
        .push(Linear::new(4, 4, true, &mut i, &d).unwrap())
        .push(Tanh::default());
    let mut m = Residual::new(&d)
        .push(Linear::new(3, 4, true, &mut i, &d).unwrap())
        .push_block(body, Shortcut::Identity)
        .push(Linear::new(4, 2, true, &mut i, &d).unwrap());
    assert_eq!(m.layers().len(), 4);
    assert_eq!(m.num_params(), 3 * 4 + 4 + 4 * 4 + 4 + 4 * 2 + 2);
    to_f64(&mut m);
    let (x, y) = inputs(&[5, 3], 2, 8, DType::F64);
    let worst = gradcheck(&mut m, &x, &y, &CrossEntropy, 40, 8);
    assert!(worst < 1e-5, "worst relative error {worst}");
    let mut m32 = Residual::new(&d)
        .push(Linear::new(3, 4, true, &mut i, &d).unwrap())
        .push_block(
            Sequential::new(&d).push(Linear::new(4, 4, true, &mut i, &d).unwrap()),
            Shortcut::Identity,
        )
        .push(Linear::new(4, 2, true, &mut i, &d).unwrap());
    let (x, y) = inputs(&[5, 3], 2, 9, DType::F32);
    check_per_sample(&mut m32, &x, &y);
}
