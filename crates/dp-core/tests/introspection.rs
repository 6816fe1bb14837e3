//! The public views of the engine's per-example quantities: `layer_sq_norms` (per-layer
//! squared norms `[B, L]`, named) and `named_per_example_gradients` (per-example gradients
//! split by parameter), checked in f64 against the slow reference (one backward pass per
//! example, on that example alone, via `batch_gradient`), against `check_per_sample_gradients`,
//! and against what a `ClipStrategy` receives inside `clipped_gradient`.

mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use dp_core::clipping::{ClipFactors, ClipStrategy, FlatClip, LayerSqNorms};
use dp_core::graph::GraphModel;
use dp_core::layers::*;
use dp_core::{
    batch_gradient, check_per_sample_gradients, clipped_gradient, layer_sq_norms,
    named_per_example_gradients, per_example_gradients, CoreError, CrossEntropy, GradMode,
    GradOptions, GradientMask, Init, Model, Prunable, PruneScope,
};

const TOL: f64 = 1e-9;

/// conv → relu → conv + skip → max-pool → spatial mean → linear (no bias on the last
/// conv, so layers own different numbers of parameters).
fn residual_cnn(seed: u64) -> GraphModel {
    let d = Device::Cpu;
    let mut i = Init::seeded(seed);
    GraphModel::new(&d, |g, x| {
        let h = g.layer(0, x)?.relu()?;
        let h = (g.layer(1, &h)? + &h)?.tanh()?;
        let h = g.layer(2, &h)?.mean((1, 2))?;
        g.layer(3, &h)
    })
    .push(Conv2d::new(Conv2dConfig::new(2, 4, 3).padding(1), &mut i, &d).unwrap())
    .push(
        Conv2d::new(
            Conv2dConfig::new(4, 4, 3).padding(1).bias(false),
            &mut i,
            &d,
        )
        .unwrap(),
    )
    .push(MaxPool2d::new(2, 1))
    .push(Linear::new(4, 3, true, &mut i, &d).unwrap())
}

fn batch(seed: u64, b: usize) -> (Tensor, Tensor) {
    let mut r = rng(seed);
    (
        randn(&mut r, &[b, 5, 5, 2], DType::F64),
        labels(&mut r, b, 3),
    )
}

/// The reference: each example's gradient, per parameter, from a backward pass of its own.
fn reference(m: &mut GraphModel, x: &Tensor, y: &Tensor) -> Vec<Vec<Tensor>> {
    (0..x.dim(0).unwrap())
        .map(|i| {
            let xi = x.narrow(0, i, 1).unwrap().copy().unwrap();
            let yi = y.narrow(0, i, 1).unwrap().copy().unwrap();
            batch_gradient(m, &xi, &yi, &CrossEntropy).unwrap().0
        })
        .collect()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn sq(t: &Tensor) -> f64 {
    values(t).iter().map(|v| v * v).sum()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// Which parameters (indices into `param_tensors`) each private layer owns.
fn layer_params(m: &GraphModel) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for l in m.layers() {
        let n = l.params().len();
        if n > 0 {
            out.push(start..start + n);
            start += n;
        }
    }
    out
}

#[test]
fn named_gradients_match_the_one_example_reference() {
    let mut m = residual_cnn(1);
    to_f64(&mut m);
    let (x, y) = batch(2, 6);
    let grads = named_per_example_gradients(&mut m, &x, &y, &CrossEntropy).unwrap();
    let expected_names: Vec<String> = m.named_params().into_iter().map(|(n, _)| n).collect();
    let names: Vec<String> = grads.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, expected_names);
    assert_eq!(
        names,
        ["0.weight", "0.bias", "1.weight", "2.weight", "2.bias"]
    );
    let params = m.param_tensors();
    let reference = reference(&mut m, &x, &y);
    let mut worst = 0f64;
    for (p, (name, g)) in grads.iter().enumerate() {
        let mut dims = vec![6];
        dims.extend_from_slice(params[p].dims());
        assert_eq!(g.dims(), dims.as_slice(), "{name}");
        for (i, r) in reference.iter().enumerate() {
            let row = g.narrow(0, i, 1).unwrap().squeeze(0).unwrap();
            let diff = (&row - &r[p]).unwrap();
            worst = worst.max(sq(&diff).sqrt() / sq(&r[p]).sqrt().max(1e-12));
        }
    }
    assert!(worst < TOL, "worst relative error {worst:e}");
    // The flat view is the same gradients, concatenated.
    let flat = per_example_gradients(&mut m, &x, &y, &CrossEntropy).unwrap();
    let parts: Vec<Tensor> = grads
        .iter()
        .map(|(_, g)| g.reshape((6, ())).unwrap())
        .collect();
    assert_eq!(values(&flat), values(&Tensor::cat(&parts, 1).unwrap()));
    // And the model's own check agrees that these are per-example gradients.
    let report = check_per_sample_gradients(&mut m, &x, &y, &CrossEntropy, 1e-8).unwrap();
    assert!(report.passed, "{report:?}");
}

#[test]
fn layer_sq_norms_match_the_reference_in_both_modes() {
    let mut m = residual_cnn(3);
    to_f64(&mut m);
    let (x, y) = batch(4, 5);
    let reference = reference(&mut m, &x, &y);
    let ranges = layer_params(&m);
    for mode in [GradMode::Ghost, GradMode::Materialize, GradMode::Auto] {
        let n =
            layer_sq_norms(&mut m, &x, &y, &CrossEntropy, &GradOptions::with_mode(mode)).unwrap();
        assert_eq!(n.names.len(), 3);
        assert!(n.names[0].starts_with("0.Conv2d"), "{:?}", n.names);
        assert!(n.names[1].starts_with("1.Conv2d"), "{:?}", n.names);
        assert!(n.names[2].starts_with("2.Linear"), "{:?}", n.names);
        assert_eq!(n.sq_norms.dims(), &[5, 3]);
        let got = n
            .sq_norms
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        for (i, r) in reference.iter().enumerate() {
            for (l, range) in ranges.iter().enumerate() {
                let want: f64 = r[range.clone()].iter().map(sq).sum();
                // f32 output: its rounding is the tolerance.
                assert!(
                    rel(got[i][l], want) < 1e-6,
                    "{mode:?} example {i} layer {l}: {} vs {want}",
                    got[i][l]
                );
            }
        }
    }
}

/// A strategy that records what the engine hands it.
struct Spy(Option<LayerSqNorms>);
impl ClipStrategy for Spy {
    fn factors(&mut self, sq: &LayerSqNorms) -> dp_core::Result<ClipFactors> {
        self.0 = Some(sq.clone());
        FlatClip::new(1.0)?.factors(sq)
    }
    fn sensitivity(&self) -> f64 {
        1.0
    }
}

#[test]
fn layer_sq_norms_are_what_a_clip_strategy_sees() {
    let mut m = residual_cnn(5);
    let (x, y) = batch(6, 7);
    let x = x.to_dtype(DType::F32).unwrap();
    let params = m.param_tensors();
    let mask =
        GradientMask::magnitude(&params, 0.5, PruneScope::Global, Prunable::Weights).unwrap();
    let mut layer_modes = std::collections::HashMap::new();
    layer_modes.insert(1, GradMode::Materialize);
    let settings = [
        GradOptions::default(),
        GradOptions {
            mode: GradMode::Ghost,
            layer_modes,
            ..GradOptions::default()
        },
        GradOptions {
            mask: Some(mask),
            ..GradOptions::default()
        },
    ];
    for opts in &settings {
        let mut spy = Spy(None);
        clipped_gradient(&mut m, &x, &y, &CrossEntropy, &mut spy, opts).unwrap();
        let seen = spy.0.unwrap();
        let n = layer_sq_norms(&mut m, &x, &y, &CrossEntropy, opts).unwrap();
        assert_eq!(n.to_layer_sq_norms().unwrap(), seen);
    }
}

#[test]
fn masked_norms_are_over_the_active_coordinates() {
    let mut m = residual_cnn(7);
    to_f64(&mut m);
    let (x, y) = batch(8, 4);
    let mask = GradientMask::magnitude(
        &m.param_tensors(),
        0.7,
        PruneScope::Global,
        Prunable::Weights,
    )
    .unwrap();
    let reference = reference(&mut m, &x, &y);
    let ranges = layer_params(&m);
    let opts = GradOptions {
        mask: Some(mask.clone()),
        ..GradOptions::default()
    };
    let n = layer_sq_norms(&mut m, &x, &y, &CrossEntropy, &opts).unwrap();
    let got = n
        .sq_norms
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let dense = layer_sq_norms(&mut m, &x, &y, &CrossEntropy, &GradOptions::default()).unwrap();
    let dense = dense
        .sq_norms
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    for (i, r) in reference.iter().enumerate() {
        let masked = mask.apply(r).unwrap();
        for (l, range) in ranges.iter().enumerate() {
            let want: f64 = masked[range.clone()].iter().map(sq).sum();
            assert!(rel(got[i][l], want) < 1e-6, "example {i} layer {l}");
        }
        // Pruning 70% of the weights must change the norms (or the mask was ignored).
        assert!(got[i].iter().sum::<f64>() < dense[i].iter().sum::<f64>());
    }
}

#[test]
fn augmented_copies_give_one_row_per_example() {
    let mut m = residual_cnn(9);
    to_f64(&mut m);
    let (x, y) = batch(10, 6); // three examples, two copies each (consecutive rows)
    let opts = GradOptions {
        augmentation_multiplicity: 2,
        ..GradOptions::default()
    };
    let n = layer_sq_norms(&mut m, &x, &y, &CrossEntropy, &opts).unwrap();
    assert_eq!(n.sq_norms.dims(), &[3, 3]);
    let got = n
        .sq_norms
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let reference = reference(&mut m, &x, &y);
    let ranges = layer_params(&m);
    for e in 0..3 {
        for (l, range) in ranges.iter().enumerate() {
            // The example's gradient is the mean over its copies.
            let want: f64 = range
                .clone()
                .map(|p| {
                    let mean =
                        ((&reference[2 * e][p] + &reference[2 * e + 1][p]).unwrap() * 0.5).unwrap();
                    sq(&mean)
                })
                .sum();
            assert!(rel(got[e][l], want) < 1e-6, "example {e} layer {l}");
        }
    }
}

#[test]
fn misuse_is_a_typed_error() {
    let mut m = residual_cnn(11);
    to_f64(&mut m);
    let (x, y) = batch(12, 5);
    let odd = GradOptions {
        augmentation_multiplicity: 2,
        ..GradOptions::default()
    };
    assert!(matches!(
        layer_sq_norms(&mut m, &x, &y, &CrossEntropy, &odd),
        Err(CoreError::InvalidArgument(_))
    ));
    let other = residual_cnn(11);
    let wrong_mask = GradientMask::magnitude(
        &other.param_tensors()[..2],
        0.5,
        PruneScope::Global,
        Prunable::Weights,
    )
    .unwrap();
    let opts = GradOptions {
        mask: Some(wrong_mask),
        ..GradOptions::default()
    };
    assert!(layer_sq_norms(&mut m, &x, &y, &CrossEntropy, &opts).is_err());
    // An empty batch has no rows, but still its layers' names.
    let empty = x.narrow(0, 0, 0).unwrap();
    let ey = y.narrow(0, 0, 0).unwrap();
    let n = layer_sq_norms(&mut m, &empty, &ey, &CrossEntropy, &GradOptions::default()).unwrap();
    assert_eq!((n.sq_norms.dims(), n.names.len()), (&[0usize, 3][..], 3));
    assert_eq!(n.to_layer_sq_norms().unwrap().per_layer.len(), 3);
    // A failed call leaves no records behind: the next call is correct.
    let (x2, y2) = batch(13, 4);
    let after = layer_sq_norms(&mut m, &x2, &y2, &CrossEntropy, &GradOptions::default()).unwrap();
    assert_eq!(after.sq_norms.dims(), &[4, 3]);
}
