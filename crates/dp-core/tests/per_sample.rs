//! Per-sample gradients and norms against a slow reference that runs one backward pass
//! per example, for every layer type and both clipping paths (ghost and materialised).
//! Tolerance (f32 models): 1e-4 relative to the largest entry.

mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use dp_core::clipping::NoClip;
use dp_core::layers::*;
use dp_core::{
    batch_gradient, clipped_gradient, per_example_gradients, CrossEntropy, GradMode, GradOptions,
    Init, Layer, Model, PerSampleGrad, Sequential,
};
use proptest::prelude::*;

fn slow_reference(m: &mut Sequential, x: &Tensor, y: &Tensor) -> Vec<Vec<f64>> {
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

/// Checks per-example gradients, per-layer squared norms in both modes, and that they
/// sum to the batch gradient.
fn check_model(mut m: Sequential, x: Tensor, y: Tensor) {
    let reference = slow_reference(&mut m, &x, &y);
    let pe = per_example_gradients(&mut m, &x, &y, &CrossEntropy).unwrap();
    let pe: Vec<Vec<f64>> = pe.to_dtype(DType::F64).unwrap().to_vec2().unwrap();
    for (i, (a, r)) in pe.iter().zip(&reference).enumerate() {
        assert_close(a, r, 1e-4, &format!("example {i}"));
    }
    // Norms in both modes equal the reference norms.
    let ref_norms: Vec<f64> = reference
        .iter()
        .map(|g| g.iter().map(|v| v * v).sum::<f64>().sqrt())
        .collect();
    for mode in [GradMode::Ghost, GradMode::Materialize, GradMode::Auto] {
        let out = clipped_gradient(
            &mut m,
            &x,
            &y,
            &CrossEntropy,
            &mut NoClip,
            &GradOptions::with_mode(mode),
        )
        .unwrap();
        let norms: Vec<f64> = out.stats.norms.iter().map(|&n| n as f64).collect();
        assert_close(&norms, &ref_norms, 1e-4, &format!("norms {mode:?}"));
        // Unclipped weighted sum = batch gradient = Σ_i per-example gradients.
        let summed: Vec<f64> = (0..reference[0].len())
            .map(|k| reference.iter().map(|g| g[k]).sum())
            .collect();
        assert_close(&flat(&out.sum), &summed, 1e-4, &format!("sum {mode:?}"));
    }
    let (bg, _) = batch_gradient(&mut m, &x, &y, &CrossEntropy).unwrap();
    let summed: Vec<f64> = (0..reference[0].len())
        .map(|k| reference.iter().map(|g| g[k]).sum())
        .collect();
    assert_close(&flat(&bg), &summed, 1e-4, "batch gradient");
}

fn inputs(shape: &[usize], classes: usize, seed: u64) -> (Tensor, Tensor) {
    let mut r = rng(seed);
    (
        randn(&mut r, shape, DType::F32),
        labels(&mut r, shape[0], classes),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn linear_random_shapes(b in 1usize..6, t in 1usize..4, p in 1usize..7, r in 2usize..6, bias: bool, seq: bool, seed in 0u64..1000) {
        let d = Device::Cpu;
        let mut i = Init::seeded(seed);
        let (shape, flat_in) = if seq { (vec![b, t, p], t * r) } else { (vec![b, p], r) };
        let m = Sequential::new(&d)
            .push(Linear::new(p, r, bias, &mut i, &d).unwrap())
            .push(Tanh::default())
            .push(Flatten::default())
            .push(Linear::new(flat_in, 3, true, &mut i, &d).unwrap());
        let (x, y) = inputs(&shape, 3, seed);
        check_model(m, x, y);
    }

    #[test]
    fn conv_random_configs(b in 1usize..4, hw in 5usize..9, k in 1usize..4, s in 1usize..3, pad in 0usize..2, dil in 1usize..3, g in 1usize..3, bias: bool, seed in 0u64..1000) {
        let d = Device::Cpu;
        let mut i = Init::seeded(seed);
        let (cin, cout) = (2 * g, 2 * g);
        let cfg = Conv2dConfig::new(cin, cout, k).stride(s).padding(pad).dilation(dil).groups(g).bias(bias);
        let conv = Conv2d::new(cfg, &mut i, &d).unwrap();
        let span = dil * (k - 1) + 1;
        prop_assume!(hw + 2 * pad >= span);
        let o = (hw + 2 * pad - span) / s + 1;
        let m = Sequential::new(&d)
            .push(conv)
            .push(Tanh::default())
            .push(Flatten::default())
            .push(Linear::new(o * o * cout, 3, true, &mut i, &d).unwrap());
        let (x, y) = inputs(&[b, hw, hw, cin], 3, seed);
        check_model(m, x, y);
    }

    #[test]
    fn norm_layers_random(b in 1usize..5, hw in 2usize..5, groups in 1usize..4, seed in 0u64..1000) {
        let d = Device::Cpu;
        let mut i = Init::seeded(seed);
        let c = 2 * groups;
        let gamma = randn(&mut rng(seed + 1), &[c], DType::F32);
        let beta = randn(&mut rng(seed + 2), &[c], DType::F32);
        let gn = GroupNorm::from_tensors(groups, gamma.clone(), beta.clone()).unwrap();
        let ln = LayerNorm::from_tensors(gamma, beta).unwrap();
        let m = Sequential::new(&d)
            .push(Conv2d::new(Conv2dConfig::new(2, c, 1), &mut i, &d).unwrap())
            .push(gn)
            .push(Relu::default())
            .push(ln)
            .push(Flatten::default())
            .push(Linear::new(hw * hw * c, 3, true, &mut i, &d).unwrap());
        let (x, y) = inputs(&[b, hw, hw, 2], 3, seed);
        check_model(m, x, y);
    }
}

#[test]
fn embedding_per_sample_in_both_modes() {
    let d = Device::Cpu;
    let mut i = Init::seeded(9);
    let m = Sequential::new(&d)
        .push(Embedding::new(7, 3, &mut i, &d).unwrap())
        .push(Flatten::default())
        .push(Linear::new(12, 3, true, &mut i, &d).unwrap());
    // Repeated ids within an example exercise the ghost norm's cross terms.
    let x = Tensor::new(&[[1u32, 1, 2, 6], [0, 3, 3, 3], [5, 4, 1, 1]], &d).unwrap();
    let y = Tensor::new(&[0u32, 2, 1], &d).unwrap();
    check_model(m, x, y);
}

#[test]
fn mnist_cnn_and_cifar_cnn_with_group_norm() {
    let (x, y) = inputs(&[3, 784], 10, 11);
    check_model(dp_core::models::mnist_cnn(&Device::Cpu, 11).unwrap(), x, y);
    let (x, y) = inputs(&[2, 3, 16, 16], 10, 12);
    check_model(
        dp_core::models::cifar_cnn(&Device::Cpu, 12, true).unwrap(),
        x,
        y,
    );
}

/// An independent reference: candle's own autograd (conv2d in NCHW with the PyTorch
/// kernel layout), one backward pass per example.
#[test]
fn conv_matches_candle_autograd_per_example() {
    use candle_core::Var;
    let mut r = rng(21);
    let (b, cin, cout, k, g) = (3, 4, 6, 3, 2);
    let cfg = Conv2dConfig::new(cin, cout, k)
        .stride(2)
        .padding(1)
        .dilation(1)
        .groups(g);
    let w = randn(&mut r, &[cout, k, k, cin / g], DType::F32);
    let bias = randn(&mut r, &[cout], DType::F32);
    let mut conv = Conv2d::from_tensors(cfg, w.clone(), Some(bias.clone())).unwrap();
    let x = randn(&mut r, &[b, 7, 7, cin], DType::F32);
    let up = randn(&mut r, &[b, 4, 4, cout], DType::F32); // upstream gradient
    conv.forward(&x, true).unwrap();
    conv.backward(&up, true).unwrap();
    let ours = conv.per_sample_grads().unwrap();
    let ours_w: Vec<f32> = ours[0].flatten_all().unwrap().to_vec1().unwrap();
    let ours_b: Vec<f32> = ours[1].flatten_all().unwrap().to_vec1().unwrap();

    let w_nchw = Var::from_tensor(&w.permute((0, 3, 1, 2)).unwrap().contiguous().unwrap()).unwrap();
    let bv = Var::from_tensor(&bias).unwrap();
    let per = cout * k * k * (cin / g);
    for i in 0..b {
        let xi = x
            .narrow(0, i, 1)
            .unwrap()
            .permute((0, 3, 1, 2))
            .unwrap()
            .contiguous()
            .unwrap();
        let yi = xi
            .conv2d(w_nchw.as_tensor(), 1, 2, 1, g)
            .unwrap()
            .broadcast_add(&bv.as_tensor().reshape((1, cout, 1, 1)).unwrap())
            .unwrap();
        let ui = up.narrow(0, i, 1).unwrap().permute((0, 3, 1, 2)).unwrap();
        let l = (yi * ui).unwrap().sum_all().unwrap();
        let grads = l.backward().unwrap();
        let gw = grads
            .get(w_nchw.as_tensor())
            .unwrap()
            .permute((0, 2, 3, 1))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let gb = grads.get(bv.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let a: Vec<f64> = ours_w[i * per..(i + 1) * per]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let e: Vec<f64> = gw.iter().map(|&v| v as f64).collect();
        assert_close(&a, &e, 1e-5, "conv weight vs candle autograd");
        let a: Vec<f64> = ours_b[i * cout..(i + 1) * cout]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let e: Vec<f64> = gb.iter().map(|&v| v as f64).collect();
        assert_close(&a, &e, 1e-5, "conv bias vs candle autograd");
    }
}

#[test]
fn model_trait_lists_every_parameter() {
    let m = dp_core::models::mnist_cnn(&Device::Cpu, 0).unwrap();
    let names: Vec<String> = m.named_params().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 8);
    assert_eq!(names[0], "0.weight"); // the Reshape before the first conv has no parameters
    let _ = m.layers().iter().map(|l| l.name()).collect::<Vec<_>>();
}
