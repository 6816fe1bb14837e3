//! Gradient masks (pruning under DP): the engine's norms are those of the masked
//! per-example gradients, the clipped sum is `Σ_i c_i (m ⊙ g_i)` with each term within the
//! bound, and masked coordinates of every sum are exactly zero, in every gradient mode and
//! for every kind of linear-type layer (plain, sequence, convolution).

mod common;
use candle_core::{DType, Device};
use common::*;
use dp_core::clipping::FlatClip;
use dp_core::layers::*;
use dp_core::{
    clipped_gradient, per_example_gradients, CrossEntropy, GradMode, GradOptions, GradientMask,
    Init, Model, Prunable, PruneScope, Sequential,
};
use proptest::prelude::*;
use rand::Rng;

fn conv_model(seed: u64) -> (Sequential, Vec<usize>) {
    let d = Device::Cpu;
    let mut i = Init::seeded(seed);
    let m = Sequential::new(&d)
        .push(Reshape::new(&[6, 6, 1]))
        .push(Conv2d::new(Conv2dConfig::new(1, 4, 3).stride(1).padding(1), &mut i, &d).unwrap())
        .push(Tanh::default())
        .push(AvgPool2d::new(2, 2))
        .push(Flatten::default())
        .push(Linear::new(36, 8, true, &mut i, &d).unwrap())
        .push(Tanh::default())
        .push(Linear::new(8, 3, true, &mut i, &d).unwrap());
    (m, vec![36])
}

fn sequence_model(seed: u64) -> (Sequential, Vec<usize>) {
    let d = Device::Cpu;
    let mut i = Init::seeded(seed);
    let m = Sequential::new(&d)
        .push(Reshape::new(&[4, 9]))
        .push(Linear::new(9, 5, true, &mut i, &d).unwrap())
        .push(Tanh::default())
        .push(Flatten::default())
        .push(Linear::new(20, 3, true, &mut i, &d).unwrap());
    (m, vec![36])
}

/// A random mask over every parameter (biases included), keeping each coordinate with
/// probability `keep`.
fn random_mask(model: &Sequential, keep: f64, seed: u64) -> GradientMask {
    let mut r = rng(seed);
    let params = model.param_tensors();
    let flags = params
        .iter()
        .map(|p| Some((0..p.elem_count()).map(|_| r.gen_bool(keep)).collect()))
        .collect();
    GradientMask::from_keep(&params, flags).unwrap()
}

fn flat_mask(mask: &GradientMask, model: &Sequential) -> Vec<f64> {
    mask.keep_flags()
        .unwrap()
        .iter()
        .zip(model.param_tensors())
        .flat_map(|(k, p)| match k {
            Some(k) => k.iter().map(|&x| x as u8 as f64).collect::<Vec<_>>(),
            None => vec![1.0; p.elem_count()],
        })
        .collect()
}

fn check_masked_step(
    mut model: Sequential,
    in_dims: &[usize],
    keep: f64,
    seed: u64,
    mode: GradMode,
) {
    let b = 12;
    let mut r = rng(seed + 1000);
    let mut shape = vec![b];
    shape.extend_from_slice(in_dims);
    let x = randn(&mut r, &shape, DType::F32);
    let y = labels(&mut r, b, 3);
    let mask = random_mask(&model, keep, seed);
    let m = flat_mask(&mask, &model);

    // The slow reference: every example's full gradient, masked by hand.
    let g = per_example_gradients(&mut model, &x, &y, &CrossEntropy).unwrap();
    let g: Vec<Vec<f64>> = g.to_dtype(DType::F64).unwrap().to_vec2().unwrap();
    let masked: Vec<Vec<f64>> = g
        .iter()
        .map(|gi| gi.iter().zip(&m).map(|(a, b)| a * b).collect())
        .collect();
    let norms: Vec<f64> = masked
        .iter()
        .map(|v| v.iter().map(|a| a * a).sum::<f64>().sqrt())
        .collect();
    let mut sorted = norms.clone();
    sorted.sort_by(f64::total_cmp);
    let c = sorted[b / 2].max(1e-3);

    let opts = GradOptions {
        mode,
        mask: Some(mask),
        track_unclipped_sum: true,
        ..GradOptions::default()
    };
    let mut clip = FlatClip::new(c).unwrap();
    let out = clipped_gradient(&mut model, &x, &y, &CrossEntropy, &mut clip, &opts).unwrap();

    for (i, (&got, &want)) in out.stats.norms.iter().zip(&norms).enumerate() {
        let got = got as f64;
        assert!(
            (got - want).abs() <= 1e-4 * want.max(1e-3),
            "example {i}: engine norm {got}, masked reference {want} ({mode:?})"
        );
        // The example's contribution to the sum is within the bound.
        assert!(got.min(c) <= c * (1.0 + 1e-6));
    }
    let sum = flat(&out.sum);
    let unclipped = flat(out.unclipped_sum.as_ref().unwrap());
    for j in 0..m.len() {
        let want: f64 = (0..b).map(|i| masked[i][j] * (c / norms[i]).min(1.0)).sum();
        let plain: f64 = (0..b).map(|i| masked[i][j]).sum();
        if m[j] == 0.0 {
            assert_eq!(sum[j], 0.0, "masked coordinate {j} of the clipped sum");
            assert_eq!(
                unclipped[j], 0.0,
                "masked coordinate {j} of the unclipped sum"
            );
        } else {
            assert!(
                (sum[j] - want).abs() < 1e-4,
                "coordinate {j}: {} vs {want}",
                sum[j]
            );
            assert!((unclipped[j] - plain).abs() < 1e-4);
        }
    }
}

#[test]
fn masked_norms_and_sums_match_the_masked_reference_in_every_mode() {
    for mode in [GradMode::Auto, GradMode::Ghost, GradMode::Materialize] {
        for seed in 0..3 {
            let (m, dims) = conv_model(seed);
            check_masked_step(m, &dims, 0.4, seed, mode);
            let (m, dims) = sequence_model(seed);
            check_masked_step(m, &dims, 0.6, seed, mode);
        }
    }
}

#[test]
fn a_dense_mask_changes_nothing() {
    let (mut a, _) = conv_model(3);
    let (mut b, _) = conv_model(3);
    let mut r = rng(5);
    let x = randn(&mut r, &[10, 36], DType::F32);
    let y = labels(&mut r, 10, 3);
    let mask = GradientMask::magnitude(&a.param_tensors(), 0.0, PruneScope::Global, Prunable::All)
        .unwrap();
    assert_eq!(mask.num_active(), mask.total());
    let mut clip = FlatClip::new(0.5).unwrap();
    let plain = clipped_gradient(
        &mut a,
        &x,
        &y,
        &CrossEntropy,
        &mut clip,
        &GradOptions::default(),
    )
    .unwrap();
    let opts = GradOptions {
        mask: Some(mask),
        ..GradOptions::default()
    };
    let masked = clipped_gradient(&mut b, &x, &y, &CrossEntropy, &mut clip, &opts).unwrap();
    let (p, q) = (flat(&plain.sum), flat(&masked.sum));
    for (u, v) in p.iter().zip(&q) {
        assert!((u - v).abs() < 1e-5);
    }
}

#[test]
fn magnitude_masks_prune_the_stated_fraction_of_the_smallest_weights() {
    let (model, _) = conv_model(7);
    let params = model.param_tensors();
    let prunable: usize = params
        .iter()
        .filter(|p| p.rank() >= 2)
        .map(|p| p.elem_count())
        .sum();
    for sparsity in [0.0, 0.5, 0.9, 0.99, 1.0] {
        for scope in [PruneScope::Global, PruneScope::PerLayer] {
            let mask =
                GradientMask::magnitude(&params, sparsity, scope, Prunable::Weights).unwrap();
            let pruned = mask.total() - mask.num_active();
            let want = match scope {
                PruneScope::Global => (sparsity * prunable as f64).round() as usize,
                PruneScope::PerLayer => params
                    .iter()
                    .filter(|p| p.rank() >= 2)
                    .map(|p| (sparsity * p.elem_count() as f64).round() as usize)
                    .sum(),
            };
            assert_eq!(pruned, want, "sparsity {sparsity} {scope:?}");
            // Every kept weight is at least as large as every pruned one (globally).
            if scope == PruneScope::Global && pruned > 0 && pruned < prunable {
                let flags = mask.keep_flags().unwrap();
                let (mut kept_min, mut pruned_max) = (f64::INFINITY, 0.0f64);
                for (p, k) in params.iter().zip(&flags) {
                    let Some(k) = k else { continue };
                    let v = flat(std::slice::from_ref(p));
                    for (w, keep) in v.iter().zip(k) {
                        if *keep {
                            kept_min = kept_min.min(w.abs());
                        } else {
                            pruned_max = pruned_max.max(w.abs());
                        }
                    }
                }
                assert!(kept_min >= pruned_max);
            }
        }
    }
    assert!(GradientMask::magnitude(&params, 1.5, PruneScope::Global, Prunable::All).is_err());
    assert!(GradientMask::magnitude(&params, f64::NAN, PruneScope::Global, Prunable::All).is_err());
}

#[test]
fn a_mask_of_the_wrong_model_is_refused() {
    let (mut a, _) = conv_model(1);
    let (b, _) = sequence_model(1);
    let mask = random_mask(&b, 0.5, 1);
    let mut r = rng(2);
    let x = randn(&mut r, &[4, 36], DType::F32);
    let y = labels(&mut r, 4, 3);
    let opts = GradOptions {
        mask: Some(mask),
        ..GradOptions::default()
    };
    let mut clip = FlatClip::new(1.0).unwrap();
    assert!(clipped_gradient(&mut a, &x, &y, &CrossEntropy, &mut clip, &opts).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Whatever the mask and the bound, every example's masked clipped contribution stays
    /// within the bound and the masked coordinates of the sum are exactly zero.
    #[test]
    fn clipped_masked_contributions_never_exceed_the_bound(
        seed in 0u64..1000, keep in 0.05f64..1.0, c in 0.001f64..10.0,
    ) {
        let (mut model, _) = sequence_model(seed);
        let mask = random_mask(&model, keep, seed);
        let m = flat_mask(&mask, &model);
        let mut r = rng(seed);
        let x = (randn(&mut r, &[8, 36], DType::F32) * 3.0).unwrap();
        let y = labels(&mut r, 8, 3);
        let g = per_example_gradients(&mut model, &x, &y, &CrossEntropy).unwrap();
        let g: Vec<Vec<f64>> = g.to_dtype(DType::F64).unwrap().to_vec2().unwrap();
        let opts = GradOptions { mask: Some(mask), ..GradOptions::default() };
        let mut clip = FlatClip::new(c).unwrap();
        let out = clipped_gradient(&mut model, &x, &y, &CrossEntropy, &mut clip, &opts).unwrap();
        prop_assert!(out.sensitivity == c);
        for (gi, n) in g.iter().zip(&out.stats.norms) {
            // The true norm of what the example contributes: its masked gradient, scaled by
            // the factor the engine derived from its own norm.
            let true_norm = gi.iter().zip(&m).map(|(a, b)| (a * b).powi(2)).sum::<f64>().sqrt();
            let factor = (c / *n as f64).min(1.0);
            prop_assert!(factor * true_norm <= c * (1.0 + 1e-4), "{} > {c}", factor * true_norm);
        }
        let sum = flat(&out.sum);
        for (s, mj) in sum.iter().zip(&m) {
            if *mj == 0.0 { prop_assert_eq!(*s, 0.0); }
        }
    }
}
