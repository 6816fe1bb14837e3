//! Hostile-input sweep of dp-core's public constructors and entry points: NaN, ±∞, 0, −0,
//! negative, tiny (1e-300) and huge (1e300, f64::MAX) hyper-parameters, zero and odd layer
//! sizes, NaN/∞ features, empty batches, mismatched target counts, labels out of range and
//! tensors of the wrong shape. Each call must return a typed error or a sane result (finite
//! tensors of the documented shape) — never a panic, and never a NaN or ∞ that the caller
//! did not put in: a silent non-finite gradient is worse than a refusal, because it is
//! noised, released and trained on.
//!
//! Entry points (24): FlatClip::new + set_max_norm, PerLayerClip::equal,
//! PerLayerClip::with_thresholds, AutoClip::new (+ factors), PerExampleFactor::new
//! (+ factors), GaussianNoise::seeded + add_noise, privatize, NoisyGradient::normalized,
//! ClippedBatch::empty, ClipStats::quantile, clipped_gradient (both NonFinitePolicy values,
//! empty batch, wrong target count, labels out of range, a mask for another model),
//! magnitude_keep, GradientMask::from_keep, GradientMask::magnitude, BamConfig::new,
//! layers::Linear::new, layers::Conv2d::new, layers::GroupNorm::new, layers::LayerNorm::new,
//! the layers' `from_tensors` and `with_eps`,
//! layers::Dropout::new, layers::AvgPool2d / MaxPool2d (new + forward), models::mlp,
//! Model::set_param_tensors, Model::forward.

use candle_core::{DType, Device, Tensor};
use dp_core::clipping::{
    AutoClip, ClipFactors, ClipStrategy, FlatClip, LayerSqNorms, PerExampleFactor, PerLayerClip,
};
use dp_core::layers::{
    AvgPool2d, Conv2d, Conv2dConfig, Dropout, Embedding, GroupNorm, LayerNorm, Linear, MaxPool2d,
    NonAffineGroupNorm, WsConv2d,
};
use dp_core::{
    clipped_gradient, magnitude_keep, models, privatize, BamConfig, ClipStats, ClippedBatch,
    CrossEntropy, GaussianNoise, GradOptions, GradientMask, Init, Layer, Model, NonFinitePolicy,
    Prunable, PruneScope, Sequential,
};
use proptest::prelude::*;

/// Values chosen to break arithmetic, mixed with ordinary ones.
fn hostile() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::sample::select(vec![
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            -1.0,
            f64::MIN_POSITIVE,
            1e-300,
            1e-30,
            1e30,
            1e300,
            f64::MAX,
            0.5,
            1.0,
        ]),
        -10.0f64..10.0,
    ]
}

/// Sizes: zero, one, small, and (where a caller passes it through) absurd.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0usize), Just(1), 2usize..5]
}

fn dev() -> Device {
    Device::Cpu
}

fn all_finite(ts: &[Tensor]) -> bool {
    ts.iter().all(|t| {
        t.flatten_all()
            .and_then(|t| t.to_dtype(DType::F64))
            .and_then(|t| t.to_vec1::<f64>())
            .map(|v| v.iter().all(|x| x.is_finite()))
            .unwrap_or(false)
    })
}

fn valid_norm(c: f64) -> bool {
    c.is_finite() && c > 0.0
}

/// A 4 → 3 → 2 ReLU MLP.
fn mlp() -> Sequential {
    models::mlp(&[4, 3, 2], &dev(), 0).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Every strategy's constructor accepts exactly the documented range, and the weights of
    /// an accepted strategy are finite and non-negative for any finite norms.
    #[test]
    fn clipping_strategies(a in hostile(), b in hostile(),
                           sq in prop::collection::vec(hostile(), 0..4)) {
        // The engine only ever hands finite, non-negative squared norms to a strategy.
        let sq: Vec<f32> = sq.iter().map(|v| (v.abs() as f32).min(f32::MAX)).collect();
        let norms = LayerSqNorms { per_layer: vec![sq.clone(), sq.clone()] };
        let check = |f: ClipFactors| -> Result<(), TestCaseError> {
            let flat: Vec<f32> = match f {
                ClipFactors::Flat(v) => v,
                ClipFactors::PerLayer(v) => v.concat(),
            };
            prop_assert!(flat.iter().all(|w| w.is_finite() && *w >= 0.0), "{a} {b} {sq:?}: {flat:?}");
            Ok(())
        };

        let flat = FlatClip::new(a);
        prop_assert_eq!(flat.is_ok(), valid_norm(a));
        if let Ok(mut c) = flat {
            prop_assert_eq!(c.set_max_norm(b).is_ok(), valid_norm(b));
            check(c.factors(&norms).unwrap())?;
        }
        let per_layer = PerLayerClip::equal(a);
        prop_assert_eq!(per_layer.is_ok(), valid_norm(a));
        if let Ok(mut c) = per_layer {
            check(c.factors(&norms).unwrap())?;
            prop_assert!(c.sensitivity().is_finite());
        }
        let explicit = PerLayerClip::with_thresholds(vec![a, b]);
        prop_assert_eq!(explicit.is_ok(), valid_norm(a) && valid_norm(b));
        if let Ok(mut c) = explicit {
            check(c.factors(&norms).unwrap())?;
            // Three layers for two thresholds: a typed error.
            let three = LayerSqNorms { per_layer: vec![sq.clone(); 3] };
            prop_assert!(c.factors(&three).is_err());
        }
        prop_assert!(PerLayerClip::with_thresholds(vec![]).is_err());
        let auto = AutoClip::new(a, b);
        prop_assert_eq!(auto.is_ok(), valid_norm(a) && b.is_finite() && b >= 0.0);
        if let Ok(mut c) = auto {
            check(c.factors(&norms).unwrap())?;
        }
        if let Ok(mut c) = PerExampleFactor::new(a, move |n: &[f64]| vec![b; n.len()]) {
            // Weights are applied in f32: valid means finite, ≥ 0 and within f32's range.
            let valid = b.is_finite() && b >= 0.0 && b <= f32::MAX as f64;
            match c.factors(&norms) {
                Ok(f) => {
                    prop_assert!(valid || sq.is_empty(), "weight {b} accepted");
                    check(f)?;
                }
                Err(_) => prop_assert!(!valid),
            }
        }
        if let Ok(mut c) = PerExampleFactor::new(1.0, |_: &[f64]| vec![1.0]) {
            // A closure returning the wrong number of weights is refused, not indexed.
            prop_assert_eq!(c.factors(&norms).is_ok(), sq.len() == 1);
        }
    }

    /// Noise, privatisation and normalisation refuse non-finite or non-positive parameters
    /// and never return a non-finite gradient.
    #[test]
    fn noise_privatize_normalize(std in hostile(), sigma in hostile(), sens in hostile(),
                                 div in hostile(), seed in any::<u64>()) {
        let t = vec![Tensor::new(&[0f32, 1.0, -2.0], &dev()).unwrap(),
                     Tensor::zeros((2, 2), DType::F32, &dev()).unwrap()];
        let mut noise = GaussianNoise::seeded(seed);
        if let Ok(out) = noise.add_noise(&t, std) {
            prop_assert!(std.is_finite() && std >= 0.0);
            prop_assert!(all_finite(&out), "std {std}: non-finite noisy tensors");
            prop_assert_eq!(out[1].dims(), &[2, 2]);
        }
        let model = mlp();
        let empty = ClippedBatch::empty(&model, sens, sens).unwrap();
        prop_assert_eq!(empty.stats.quantile(0.5), None);
        // Norm statistics at a hostile level: a finite order statistic or None.
        let stats = ClipStats { norms: vec![f32::NAN, 1.0, 3.0, std as f32], ..ClipStats::default() };
        if let Some(x) = stats.quantile(div) {
            prop_assert!(x.is_finite(), "quantile({div}) = {x}");
        }
        match privatize(empty, sigma, &mut noise) {
            Ok(g) => {
                prop_assert!(valid_norm(sigma) && valid_norm(sens));
                prop_assert!(g.noise_std.is_finite() && g.noise_std >= 0.0);
                prop_assert!(all_finite(&g.sum), "σ {sigma} S {sens}: non-finite noisy sum");
                if let Ok(n) = g.normalized(div) {
                    prop_assert!(valid_norm(div));
                    prop_assert!(all_finite(&n), "÷{div}: non-finite normalised gradient");
                } else {
                    // Refusing a valid divisor is allowed only where the quotient overflows.
                    prop_assert!(!valid_norm(div) || div < 1.0, "÷{div} refused");
                }
            }
            // Refused only when invalid, or when σ·S is beyond the f32 the noise is scaled in.
            Err(_) => prop_assert!(
                !(valid_norm(sigma) && valid_norm(sens) && sigma * sens <= f32::MAX as f64)
            ),
        }
    }

    /// The engine on a hostile batch: non-finite features (under both policies), an empty
    /// batch, a wrong number of targets, labels beyond the model's width, a mask for another
    /// model, and every clipping strategy with hostile parameters. A returned sum is always
    /// finite, with the strategy's sensitivity.
    #[test]
    fn clipped_gradient_hostile(v in hostile(), b in 0usize..5, extra_targets in 0usize..2,
                                label_offset in 0u32..3, zero_out in any::<bool>(),
                                zero_rows in any::<bool>(), which in 0usize..4,
                                c in hostile(), g in hostile(), foreign_mask in any::<bool>()) {
        // A bias-free first layer: an all-zero example has an exactly zero gradient there.
        let mut init = Init::seeded(3);
        let mut model = Sequential::new(&dev())
            .push(Linear::new(4, 2, false, &mut init, &dev()).unwrap());
        let mut xs = vec![0.25f32; b * 4];
        if let Some(first) = xs.first_mut() {
            *first = v as f32;
        }
        if zero_rows {
            // Every row but the first is all zeros.
            xs.iter_mut().skip(4).for_each(|x| *x = 0.0);
        }
        let x = Tensor::from_vec(xs, (b, 4), &dev()).unwrap();
        let n_t = b + extra_targets;
        let y = Tensor::from_vec((0..n_t as u32).map(|i| (i % 2) + label_offset).collect::<Vec<_>>(),
                                 n_t, &dev()).unwrap();
        let mut clip: Box<dyn ClipStrategy> = match which {
            0 => match FlatClip::new(c) { Ok(s) => Box::new(s), Err(_) => return Ok(()) },
            1 => match PerLayerClip::equal(c) { Ok(s) => Box::new(s), Err(_) => return Ok(()) },
            2 => match AutoClip::new(c, g.abs()) { Ok(s) => Box::new(s), Err(_) => return Ok(()) },
            _ => match PerExampleFactor::new(c, move |n: &[f64]| vec![g.abs(); n.len()]) {
                Ok(s) => Box::new(s),
                Err(_) => return Ok(()),
            },
        };
        let mut opts = GradOptions::default();
        if zero_out {
            opts.non_finite = NonFinitePolicy::ZeroOut;
        }
        if foreign_mask {
            let other = mlp().param_tensors();
            opts.mask = Some(GradientMask::from_keep(&other, vec![None; other.len()]).unwrap());
        }
        let r = clipped_gradient(&mut model, &x, &y, &CrossEntropy, clip.as_mut(), &opts);
        let labels_bad = b > 0 && (label_offset + u32::from(b > 1)) >= 2;
        if let Ok(out) = &r {
            prop_assert!(extra_targets == 0 || b == 0, "wrong target count accepted");
            prop_assert!(!labels_bad, "labels beyond the output accepted");
            prop_assert!(!foreign_mask || b == 0, "a mask for another model accepted");
            prop_assert_eq!(out.sensitivity, clip.sensitivity());
            prop_assert!(out.examples <= b);
            prop_assert!(all_finite(&out.sum), "v {v} c {c} g {g} strategy {which}: non-finite sum");
            if !zero_out && !(v as f32).is_finite() && b > 0 {
                prop_assert!(false, "non-finite features passed under NonFinitePolicy::Error");
            }
        }
        // The model is reusable after any refusal.
        let ok_x = Tensor::ones((2, 4), DType::F32, &dev()).unwrap();
        let ok_y = Tensor::new(&[0u32, 1], &dev()).unwrap();
        let mut flat = FlatClip::new(1.0).unwrap();
        prop_assert!(clipped_gradient(&mut model, &ok_x, &ok_y, &CrossEntropy, &mut flat,
                                      &GradOptions::default()).is_ok());
    }

    /// Pruning masks: hostile fractions, NaN/∞ weights, ranges outside the key and keep
    /// flags of the wrong length.
    #[test]
    fn masks(key in prop::collection::vec(hostile(), 0..6), fraction in hostile(),
             start in 0usize..8, len in 0usize..8, per_layer in any::<bool>(),
             keep_len in 0usize..8, w in hostile()) {
        let scope = if per_layer { PruneScope::PerLayer } else { PruneScope::Global };
        let ranges = [0..key.len().min(2), start..start + len];
        if let Ok(keep) = magnitude_keep(&key, &ranges, fraction, scope) {
            prop_assert!((0.0..=1.0).contains(&fraction));
            prop_assert!(start + len <= key.len() || len == 0);
            prop_assert_eq!(keep.len(), key.len());
        }
        let params = vec![
            Tensor::new(&[[w as f32, 1.0], [-2.0, 0.5]], &dev()).unwrap(),
            Tensor::new(&[0.5f32, 0.5], &dev()).unwrap(),
        ];
        let keep = vec![Some(vec![true; keep_len]), None];
        if let Ok(m) = GradientMask::from_keep(&params, keep) {
            prop_assert_eq!(keep_len, 4);
            prop_assert!(m.num_active() <= m.total());
        }
        prop_assert!(GradientMask::from_keep(&params, vec![None]).is_err());
        match GradientMask::magnitude(&params, fraction, scope, Prunable::Weights) {
            Ok(m) => {
                prop_assert!((0.0..=1.0).contains(&fraction));
                prop_assert!(m.num_active() <= m.total() && m.total() == 6);
                let applied = m.apply(&params).unwrap();
                prop_assert_eq!(applied.len(), 2);
                prop_assert!(m.apply(&params[..1]).is_err());
            }
            Err(_) => prop_assert!(!(0.0..=1.0).contains(&fraction) || (w as f32).is_nan()),
        }
    }

    /// Hyper-parameters of BAM and the layers, including zero sizes and hostile epsilons; an
    /// accepted layer's forward pass on a finite input is finite and of the right shape.
    #[test]
    fn layers_and_configs(r in hostile(), alpha in hostile(), eps in hostile(), p in hostile(),
                          i in size(), o in size(), k in size(), s in size(), g in size(),
                          hw in 1usize..5, bias in any::<bool>()) {
        if BamConfig::new(r, alpha).is_ok() {
            prop_assert!(r.is_finite() && r >= 0.0 && (0.0..=1.0).contains(&alpha));
        }
        let d = dev();
        let mut init = Init::seeded(1);
        if let Ok(mut lin) = Linear::new(i, o, bias, &mut init, &d) {
            let x = Tensor::ones((2, i), DType::F32, &d).unwrap();
            if let Ok(y) = lin.forward(&x, true) {
                prop_assert_eq!(y.dims(), &[2, o]);
                prop_assert!(all_finite(&[y]), "Linear({i}→{o}) gave non-finite output");
            }
            let wrong = Tensor::ones((2, i + 1), DType::F32, &d).unwrap();
            prop_assert!(lin.forward(&wrong, false).is_err());
        }
        let cfg = Conv2dConfig::new(i, o, k).stride(s).groups(g.max(1)).padding(g);
        if let Ok(mut conv) = Conv2d::new(cfg, &mut init, &d) {
            prop_assert!(k > 0 && s > 0);
            let x = Tensor::ones((1, hw, hw, i), DType::F32, &d).unwrap();
            if let Ok(y) = conv.forward(&x, true) {
                prop_assert_eq!(y.dims()[3], o);
                prop_assert!(all_finite(&[y]), "Conv2d {cfg:?} gave non-finite output");
            }
        }
        let x = Tensor::new(&[[1f32, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]], &d).unwrap();
        if let Ok(mut gn) = GroupNorm::new(g, 4, &d).and_then(|n| n.with_eps(eps)) {
            prop_assert!(g > 0 && 4 % g == 0);
            let x4 = x.reshape((2, 1, 1, 4)).unwrap();
            let y = gn.forward(&x4, true).unwrap();
            prop_assert!(all_finite(&[y]), "GroupNorm eps {eps}: non-finite output");
        }
        if let Ok(mut ln) = LayerNorm::new(4, &d).unwrap().with_eps(eps) {
            let y = ln.forward(&x, true).unwrap();
            prop_assert!(all_finite(&[y]), "LayerNorm eps {eps}: non-finite output");
        }
        // ε is accepted exactly when 1/sqrt(0 + ε) is finite in f32, by every norm layer.
        let eps_ok = eps.is_finite() && (eps as f32) > 0.0 && (eps as f32).is_finite();
        prop_assert_eq!(LayerNorm::new(4, &d).unwrap().with_eps(eps).is_ok(), eps_ok);
        prop_assert_eq!(GroupNorm::new(2, 4, &d).unwrap().with_eps(eps).is_ok(), eps_ok);
        prop_assert_eq!(NonAffineGroupNorm::new(2, 4).unwrap().with_eps(eps).is_ok(), eps_ok);
        prop_assert!(LayerNorm::new(3, &d).unwrap().forward(&x, false).is_err());
        // Zero-width rows (`i` may be 0): an empty output or a typed error.
        if let Ok(mut ln) = LayerNorm::new(i, &d) {
            let xi = Tensor::ones((2, i), DType::F32, &d).unwrap();
            if let Ok(y) = ln.forward(&xi, true) {
                prop_assert_eq!(y.dims(), &[2, i]);
                prop_assert!(all_finite(&[y]));
            }
        }
        if let Ok(mut gn) = GroupNorm::new(1, i, &d) {
            let xi = Tensor::ones((2, 1, 1, i), DType::F32, &d).unwrap();
            if let Ok(y) = gn.forward(&xi, true) {
                prop_assert_eq!(y.dims(), &[2, 1, 1, i]);
                prop_assert!(all_finite(&[y]));
            }
        }
        match Dropout::new(p, 0) {
            Ok(mut drop) => {
                prop_assert!((0.0..1.0).contains(&p));
                let y = drop.forward(&x, true).unwrap();
                prop_assert!(all_finite(&[y]), "Dropout({p}): non-finite output");
            }
            Err(_) => prop_assert!(!(0.0..1.0).contains(&p)),
        }
        // `g` doubles as the channel count here: 0 channels is an empty image.
        let img = Tensor::ones((1, hw, hw, g), DType::F32, &d).unwrap();
        let pooled = [AvgPool2d::new(k, s).forward(&img, true), MaxPool2d::new(k, s).forward(&img, true)];
        for y in pooled.into_iter().flatten() {
            prop_assert!(k > 0 && s > 0 && k <= hw, "pool {k}/{s} on {hw}×{hw} accepted");
            prop_assert_eq!(y.dims(), &[1, (hw - k) / s + 1, (hw - k) / s + 1, g]);
            prop_assert!(all_finite(&[y]));
        }
    }

    /// Models: hostile widths, parameter lists of the wrong count or shape (which must
    /// leave the model untouched), and inputs of the wrong width.
    #[test]
    fn models_and_params(widths in prop::collection::vec(size(), 0..4), in_w in size(),
                         drop_one in any::<bool>(), bad_shape in any::<bool>()) {
        let d = dev();
        if let Ok(mut m) = models::mlp(&widths, &d, 0) {
            prop_assert!(widths.len() >= 2);
            let x = Tensor::ones((2, in_w), DType::F32, &d).unwrap();
            match m.forward(&x, false) {
                Ok(y) => {
                    prop_assert_eq!(in_w, widths[0]);
                    prop_assert_eq!(y.dims(), &[2, *widths.last().unwrap()]);
                    prop_assert!(all_finite(&[y]));
                }
                Err(_) => prop_assert!(in_w != widths[0]),
            }
        }
        let mut m = mlp();
        let before = m.param_tensors();
        let mut values: Vec<Tensor> = before.iter().map(|t| t.ones_like().unwrap()).collect();
        if drop_one {
            values.pop();
        } else {
            values.push(Tensor::ones(1, DType::F32, &d).unwrap());
        }
        if bad_shape {
            values[0] = Tensor::ones((1, 1), DType::F32, &d).unwrap();
        }
        prop_assert!(m.set_param_tensors(&values).is_err());
        // A refused replacement must not have half-replaced the parameters.
        let after = m.param_tensors();
        for (a, b) in before.iter().zip(&after) {
            let diff = (a - b).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            prop_assert_eq!(diff, 0.0, "a refused set_param_tensors changed the model");
        }
        let x = Tensor::ones((2, in_w), DType::F32, &d).unwrap();
        prop_assert_eq!(m.forward(&x, true).is_ok(), in_w == 4);
    }
}

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32, &dev()).unwrap()
}

fn is_shape_err<T>(r: dp_core::Result<T>) -> bool {
    matches!(r, Err(dp_core::CoreError::Shape { .. }))
}

/// Every parameterised layer's `from_tensors` accepts the documented shapes and refuses
/// any other with a typed shape error (never a panic, never a layer that fails later).
#[test]
fn from_tensors_checks_shapes() {
    assert!(Linear::from_tensors(zeros(&[2, 3]), Some(zeros(&[2]))).is_ok());
    assert!(Linear::from_tensors(zeros(&[2, 3]), None).is_ok());
    for w in [&[6][..], &[2, 3, 1], &[0, 3], &[2, 0], &[]] {
        assert!(
            is_shape_err(Linear::from_tensors(zeros(w), None)),
            "Linear {w:?}"
        );
    }
    assert!(is_shape_err(Linear::from_tensors(
        zeros(&[2, 3]),
        Some(zeros(&[3]))
    )));
    assert!(is_shape_err(Linear::from_tensors(
        zeros(&[2, 3]),
        Some(zeros(&[2, 1]))
    )));

    assert!(Embedding::from_tensors(zeros(&[5, 2])).is_ok());
    for w in [&[5][..], &[5, 2, 1], &[0, 2], &[5, 0]] {
        assert!(
            is_shape_err(Embedding::from_tensors(zeros(w))),
            "Embedding {w:?}"
        );
    }
    assert!(Embedding::new(0, 2, &mut Init::seeded(0), &dev()).is_err());

    let cfg = Conv2dConfig::new(4, 6, 3).groups(2);
    assert!(Conv2d::from_tensors(cfg, zeros(&[6, 3, 3, 2]), Some(zeros(&[6]))).is_ok());
    assert!(is_shape_err(Conv2d::from_tensors(
        cfg,
        zeros(&[6, 2, 3, 3]),
        Some(zeros(&[6]))
    )));
    assert!(is_shape_err(Conv2d::from_tensors(
        cfg,
        zeros(&[6, 3, 3, 2]),
        Some(zeros(&[4]))
    )));
    // The bias must be there exactly when the configuration says so.
    assert!(Conv2d::from_tensors(cfg, zeros(&[6, 3, 3, 2]), None).is_err());
    let nb = cfg.bias(false);
    assert!(Conv2d::from_tensors(nb, zeros(&[6, 3, 3, 2]), None).is_ok());
    assert!(Conv2d::from_tensors(nb, zeros(&[6, 3, 3, 2]), Some(zeros(&[6]))).is_err());
    assert!(WsConv2d::from_tensors(nb, zeros(&[6, 3, 3, 2]), None).is_ok());
    assert!(is_shape_err(WsConv2d::from_tensors(
        nb,
        zeros(&[6, 3, 3]),
        None
    )));
    // A 1×1 kernel on one input channel per group: a one-value filter has no std.
    let one = Conv2dConfig::new(2, 2, 1).groups(2).bias(false);
    assert!(WsConv2d::from_tensors(one, zeros(&[2, 1, 1, 1]), None).is_err());

    assert!(LayerNorm::from_tensors(zeros(&[4]), zeros(&[4])).is_ok());
    assert!(GroupNorm::from_tensors(2, zeros(&[4]), zeros(&[4])).is_ok());
    let bad: [(Vec<usize>, Vec<usize>); 5] = [
        (vec![4], vec![3]),
        (vec![4], vec![4, 1]),
        (vec![4, 1], vec![4, 1]),
        (vec![0], vec![0]),
        (vec![], vec![]),
    ];
    for (g, b) in &bad {
        assert!(
            is_shape_err(LayerNorm::from_tensors(zeros(g), zeros(b))),
            "LayerNorm {g:?} {b:?}"
        );
        assert!(
            is_shape_err(GroupNorm::from_tensors(1, zeros(g), zeros(b))),
            "GroupNorm {g:?} {b:?}"
        );
    }
    for groups in [0, 3, 5] {
        assert!(GroupNorm::from_tensors(groups, zeros(&[4]), zeros(&[4])).is_err());
        assert!(GroupNorm::new(groups, 4, &dev()).is_err());
        assert!(NonAffineGroupNorm::new(groups, 4).is_err());
    }
    assert!(LayerNorm::new(0, &dev()).is_err());
    assert!(GroupNorm::new(1, 0, &dev()).is_err());
}

/// The norm layers' default ε is PyTorch's 1e-5: on the row `[0, 1]` (variance 1/4)
/// LayerNorm gives `±0.5/sqrt(0.25 + 1e-5)`, and `with_eps` changes exactly that.
#[test]
fn norm_layers_default_to_pytorch_eps() {
    let d = dev();
    let x = Tensor::new(&[[0f64, 1.0]], &d).unwrap();
    let x4 = x.reshape((1, 1, 1, 2)).unwrap();
    let ones = Tensor::ones(2, DType::F64, &d).unwrap();
    let zeros64 = Tensor::zeros(2, DType::F64, &d).unwrap();
    let first = |y: Tensor| y.flatten_all().unwrap().to_vec1::<f64>().unwrap()[1];
    for (eps, built) in [(1e-5, None), (1e-5, Some(1e-5)), (0.25, Some(0.25))] {
        let want = 0.5 / (0.25f64 + eps).sqrt();
        let mut ln = LayerNorm::from_tensors(ones.clone(), zeros64.clone()).unwrap();
        let mut gn = GroupNorm::from_tensors(1, ones.clone(), zeros64.clone()).unwrap();
        let mut na = NonAffineGroupNorm::new(1, 2).unwrap();
        if let Some(e) = built {
            ln = ln.with_eps(e).unwrap();
            gn = gn.with_eps(e).unwrap();
            na = na.with_eps(e).unwrap();
        }
        for (name, y) in [
            ("LayerNorm", ln.forward(&x, false).unwrap()),
            ("GroupNorm", gn.forward(&x4, false).unwrap()),
            ("NonAffineGroupNorm", na.forward(&x4, false).unwrap()),
        ] {
            let got = first(y);
            assert!(
                (got - want).abs() < 1e-12,
                "{name} eps {eps}: {got} vs {want}"
            );
        }
    }
    assert_eq!(dp_core::layers::NORM_EPS, 1e-5);
}
