//! GraphModel: any candle glue between dp-core layers, the glue differentiated by candle.
//! Per-example gradients from one batched backward pass against (a) the one-example-at-a-
//! time reference (`check_per_sample_gradients`) and (b) central finite differences of
//! each example's own loss, in f64; a batch-mixing model must fail the check; a plain
//! chain must equal `Sequential` bit for bit.

mod common;
use candle_core::{DType, Device, Tensor, D};
use common::*;
use dp_core::clipping::FlatClip;
use dp_core::graph::{softmax, GraphModel};
use dp_core::layers::*;
use dp_core::{
    check_per_sample_gradients, clipped_gradient, models, per_example_gradients, CrossEntropy,
    GradMode, GradOptions, Init, Model,
};
use rand::Rng;

const TOL: f64 = 1e-8;

fn dev() -> Device {
    Device::Cpu
}

/// conv → relu → conv + skip → tanh → max-pool (dp-core) → spatial mean → linear.
fn residual_cnn(seed: u64) -> GraphModel {
    let d = dev();
    let mut i = Init::seeded(seed);
    GraphModel::new(&d, |g, x| {
        let h = g.layer(0, x)?.relu()?;
        let h = (g.layer(1, &h)? + &h)?.tanh()?;
        let h = g.layer(2, &h)?.mean((1, 2))?;
        g.layer(3, &h)
    })
    .push(Conv2d::new(Conv2dConfig::new(2, 4, 3).padding(1), &mut i, &d).unwrap())
    .push(Conv2d::new(Conv2dConfig::new(4, 4, 3).padding(1), &mut i, &d).unwrap())
    .push(MaxPool2d::new(2, 1))
    .push(Linear::new(4, 3, true, &mut i, &d).unwrap())
}

/// A residual MLP with a custom activation (swish) and a concatenation.
fn residual_mlp(seed: u64) -> GraphModel {
    let d = dev();
    let mut i = Init::seeded(seed);
    GraphModel::new(&d, |g, x| {
        let h = g.layer(0, x)?;
        let h = (&h * candle_nn_free_sigmoid(&h)?)?; // swish
        let r = (g.layer(1, &h)?.tanh()? + &h)?;
        let cat = Tensor::cat(&[&r, &h], 1)?;
        g.layer(2, &cat)
    })
    .push(Linear::new(5, 6, true, &mut i, &d).unwrap())
    .push(Linear::new(6, 6, false, &mut i, &d).unwrap())
    .push(Linear::new(12, 3, true, &mut i, &d).unwrap())
}

fn candle_nn_free_sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}

/// Self-attention-style mixing over positions: softmax(q kᵀ/√d) v, + skip, LayerNorm,
/// mean over the sequence, linear.
fn attention(seed: u64) -> GraphModel {
    let d = dev();
    let mut i = Init::seeded(seed);
    GraphModel::new(&d, |g, x| {
        let q = g.layer(0, x)?;
        let k = g.layer(1, x)?;
        let v = g.layer(2, x)?;
        let s = (q.matmul(&k.t()?)? / 6f64.sqrt())?;
        let a = softmax(&s, D::Minus1)?;
        let o = (a.matmul(&v)? + &v)?;
        let o = g.layer(3, &o)?.mean(1)?;
        g.layer(4, &o)
    })
    .push(Linear::new(5, 6, false, &mut i, &d).unwrap())
    .push(Linear::new(5, 6, false, &mut i, &d).unwrap())
    .push(Linear::new(5, 6, true, &mut i, &d).unwrap())
    .push(LayerNorm::new(6, &d).unwrap())
    .push(Linear::new(6, 3, true, &mut i, &d).unwrap())
}

/// Embedding → LayerNorm → mean over the sequence → linear.
fn seq_mean_pool(seed: u64) -> GraphModel {
    let d = dev();
    let mut i = Init::seeded(seed);
    GraphModel::new(&d, |g, ids| {
        let e = g.layer(0, ids)?;
        let h = g.layer(1, &e)?.mean(1)?;
        g.layer(2, &h.tanh()?)
    })
    .push(Embedding::new(7, 5, &mut i, &d).unwrap())
    .push(LayerNorm::new(5, &d).unwrap())
    .push(Linear::new(5, 3, true, &mut i, &d).unwrap())
}

/// Centres the hidden layer over the batch: example i's output depends on every example.
fn batch_mixing(seed: u64) -> GraphModel {
    let d = dev();
    let mut i = Init::seeded(seed);
    GraphModel::new(&d, |g, x| {
        let h = g.layer(0, x)?;
        let h = h.broadcast_sub(&h.mean_keepdim(0)?)?.tanh()?;
        g.layer(1, &h)
    })
    .push(Linear::new(5, 6, true, &mut i, &d).unwrap())
    .push(Linear::new(6, 3, true, &mut i, &d).unwrap())
}

fn token_ids(seed: u64, b: usize, t: usize, vocab: u32) -> Tensor {
    let mut r = rng(seed);
    let v: Vec<u32> = (0..b * t).map(|_| r.gen_range(0..vocab)).collect();
    Tensor::from_vec(v, (b, t), &dev()).unwrap()
}

/// Worst relative error of the engine's per-example gradient of example `i` (from the
/// whole batch) against central differences of `ℓ_i` computed on example `i` alone.
fn fd_per_example(m: &mut GraphModel, x: &Tensor, y: &Tensor, probes: usize, seed: u64) -> f64 {
    let b = x.dim(0).unwrap();
    let g = per_example_gradients(m, x, y, &CrossEntropy)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let params = m.param_tensors();
    let shapes: Vec<Vec<usize>> = params.iter().map(|t| t.dims().to_vec()).collect();
    let mut values = flat(&params);
    let rebuild = |v: &[f64]| -> Vec<Tensor> {
        let mut off = 0;
        shapes
            .iter()
            .map(|s| {
                let n: usize = s.iter().product();
                let t = Tensor::from_vec(v[off..off + n].to_vec(), s.as_slice(), &dev()).unwrap();
                off += n;
                t
            })
            .collect()
    };
    let mut r = rng(seed);
    let h = 1e-5;
    let mut worst: f64 = 0.0;
    for _ in 0..probes {
        let i = r.gen_range(0..b);
        let j = r.gen_range(0..values.len());
        let (xi, yi) = (x.narrow(0, i, 1).unwrap(), y.narrow(0, i, 1).unwrap());
        let orig = values[j];
        values[j] = orig + h;
        m.set_param_tensors(&rebuild(&values)).unwrap();
        let lp = loss_sum(m, &xi, &yi, &CrossEntropy);
        values[j] = orig - h;
        m.set_param_tensors(&rebuild(&values)).unwrap();
        let lm = loss_sum(m, &xi, &yi, &CrossEntropy);
        values[j] = orig;
        let fd = (lp - lm) / (2.0 * h);
        let an = g[i][j];
        let err = (fd - an).abs() / (1e-6 + fd.abs().max(an.abs()));
        worst = worst.max(err.min((fd - an).abs() / 1e-4));
    }
    m.set_param_tensors(&rebuild(&values)).unwrap();
    worst
}

fn check_model(mut m: GraphModel, x: &Tensor, classes: usize, seed: u64) {
    to_f64(&mut m);
    let mut r = rng(seed + 100);
    let y = labels(&mut r, x.dim(0).unwrap(), classes);
    let report = check_per_sample_gradients(&mut m, x, &y, &CrossEntropy, TOL).unwrap();
    assert!(report.passed, "{report:?}");
    assert!(report.max_rel_err < TOL && report.max_norm_rel_err < TOL);
    let worst = fd_per_example(&mut m, x, &y, 60, seed);
    eprintln!("check: {report:?}; finite differences: worst relative error {worst:.2e}");
    assert!(
        worst < 1e-5,
        "finite differences: worst relative error {worst}"
    );
}

#[test]
fn residual_cnn_matches_reference_and_finite_differences() {
    let mut r = rng(1);
    let x = randn(&mut r, &[5, 5, 5, 2], DType::F64);
    check_model(residual_cnn(1), &x, 3, 1);
}

#[test]
fn residual_mlp_with_concat_and_custom_activation() {
    let mut r = rng(2);
    let x = randn(&mut r, &[6, 5], DType::F64);
    check_model(residual_mlp(2), &x, 3, 2);
}

#[test]
fn attention_like_model_matches_reference_and_finite_differences() {
    let mut r = rng(3);
    let x = randn(&mut r, &[5, 4, 5], DType::F64);
    check_model(attention(3), &x, 3, 3);
}

#[test]
fn sequence_mean_pool_over_embeddings() {
    check_model(seq_mean_pool(4), &token_ids(4, 6, 5, 7), 3, 4);
}

#[test]
fn batch_mixing_model_fails_the_check() {
    let mut m = batch_mixing(5);
    to_f64(&mut m);
    let mut r = rng(5);
    let x = randn(&mut r, &[6, 5], DType::F64);
    let y = labels(&mut r, 6, 3);
    let report = check_per_sample_gradients(&mut m, &x, &y, &CrossEntropy, 1e-4).unwrap();
    eprintln!("batch-mixing: {report:?}");
    assert!(!report.passed, "{report:?}");
    assert!(report.max_rel_err > 1e-2, "{report:?}");
    assert!(report.ensure().is_err());
    // The same model without the centring passes (the check is not just strict).
    let d = dev();
    let mut i = Init::seeded(5);
    let mut plain = GraphModel::new(&d, |g, x| {
        let h = g.layer(0, x)?.tanh()?;
        g.layer(1, &h)
    })
    .push(Linear::new(5, 6, true, &mut i, &d).unwrap())
    .push(Linear::new(6, 3, true, &mut i, &d).unwrap());
    to_f64(&mut plain);
    let ok = check_per_sample_gradients(&mut plain, &x, &y, &CrossEntropy, 1e-8).unwrap();
    assert!(ok.passed && ok.ensure().is_ok(), "{ok:?}");
}

fn same_clipped_gradient(seq: &mut dyn Model, graph: &mut dyn Model, x: &Tensor, y: &Tensor) {
    assert_eq!(flat(&seq.param_tensors()), flat(&graph.param_tensors()));
    for mode in [GradMode::Ghost, GradMode::Materialize, GradMode::Auto] {
        let opts = GradOptions::with_mode(mode);
        let a = clipped_gradient(
            seq,
            x,
            y,
            &CrossEntropy,
            &mut FlatClip::new(0.3).unwrap(),
            &opts,
        )
        .unwrap();
        let b = clipped_gradient(
            graph,
            x,
            y,
            &CrossEntropy,
            &mut FlatClip::new(0.3).unwrap(),
            &opts,
        )
        .unwrap();
        assert_eq!(a.stats.norms, b.stats.norms, "{mode:?}");
        assert_eq!(flat(&a.sum), flat(&b.sum), "{mode:?}");
        assert_eq!(a.loss_sum, b.loss_sum);
    }
}

#[test]
fn plain_chain_equals_sequential_bit_for_bit() {
    let mut r = rng(6);
    let x = randn(&mut r, &[8, 784], DType::F32);
    let y = labels(&mut r, 8, 10);
    let mut seq = models::mnist_cnn(&dev(), 7).unwrap();
    let mut graph = GraphModel::chain(models::mnist_cnn(&dev(), 7).unwrap());
    same_clipped_gradient(&mut seq, &mut graph, &x, &y);
    let mut seq = models::mlp(&[784, 32, 16, 10], &dev(), 8).unwrap();
    let mut graph = GraphModel::chain(models::mlp(&[784, 32, 16, 10], &dev(), 8).unwrap());
    same_clipped_gradient(&mut seq, &mut graph, &x, &y);
}

#[test]
fn misuse_is_a_typed_error() {
    let d = dev();
    let mut i = Init::seeded(9);
    let x = Tensor::ones((3, 4), DType::F32, &d).unwrap();
    let y = Tensor::new(&[0u32, 1, 0], &d).unwrap();
    // A layer index that does not exist.
    let mut m = GraphModel::new(&d, |g, x| g.layer(1, x))
        .push(Linear::new(4, 2, true, &mut i, &d).unwrap());
    assert!(m.forward(&x, true).is_err());
    // Weight sharing (the same layer twice) in a training forward.
    let mut m = GraphModel::new(&d, |g, x| {
        let h = g.layer(0, x)?;
        g.layer(0, &h)
    })
    .push(Linear::new(4, 4, true, &mut i, &d).unwrap());
    assert!(m.forward(&x, true).is_err());
    assert!(m.forward(&x, false).is_ok()); // evaluation records nothing: allowed
                                           // Backward without a recorded forward.
    let g = Tensor::ones((3, 4), DType::F32, &d).unwrap();
    assert!(m.backward(&g).is_err());
    // The checker's arguments.
    let mut m = GraphModel::new(&d, |g, x| g.layer(0, x))
        .push(Linear::new(4, 2, true, &mut i, &d).unwrap());
    for tol in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(check_per_sample_gradients(&mut m, &x, &y, &CrossEntropy, tol).is_err());
    }
    let x1 = x.narrow(0, 0, 1).unwrap();
    let y1 = y.narrow(0, 0, 1).unwrap();
    assert!(check_per_sample_gradients(&mut m, &x1, &y1, &CrossEntropy, 1e-4).is_err());
    let y2 = y.narrow(0, 0, 2).unwrap();
    assert!(check_per_sample_gradients(&mut m, &x, &y2, &CrossEntropy, 1e-4).is_err());
    // No private layer at all.
    let mut none = GraphModel::new(&d, |g, x| g.layer(0, x)).push(Relu::default());
    assert!(check_per_sample_gradients(&mut none, &x, &y, &CrossEntropy, 1e-4).is_err());
}

#[test]
fn f32_check_passes_at_f32_tolerance() {
    let mut m = attention(10);
    let mut r = rng(10);
    let x = randn(&mut r, &[6, 4, 5], DType::F32);
    let y = labels(&mut r, 6, 3);
    let report = check_per_sample_gradients(&mut m, &x, &y, &CrossEntropy, 1e-3).unwrap();
    assert!(report.passed, "{report:?}");
}

#[test]
fn a_layer_whose_output_is_unused_gets_zero_gradients() {
    let d = dev();
    let mut i = Init::seeded(11);
    let mut m = GraphModel::new(&d, |g, x| {
        let _unused = g.layer(1, x)?;
        g.layer(0, x)
    })
    .push(Linear::new(4, 3, true, &mut i, &d).unwrap())
    .push(Linear::new(4, 5, true, &mut i, &d).unwrap());
    let mut r = rng(11);
    let x = randn(&mut r, &[5, 4], DType::F32);
    let y = labels(&mut r, 5, 3);
    let g = per_example_gradients(&mut m, &x, &y, &CrossEntropy)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    // Parameters: layer 0 (3·4 + 3), then layer 1 (5·4 + 5).
    for row in &g {
        assert!(row[..15].iter().any(|v| *v != 0.0));
        assert!(row[15..].iter().all(|v| *v == 0.0));
    }
}
