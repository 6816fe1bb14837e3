//! Hostile-input sweep of dp-metrics' public entry points: NaN, ±∞, 0, −0, negative, tiny
//! (1e-300) and huge (1e300, f64::MAX) values, empty and mismatched inputs, grids whose
//! fields disagree, hostile solver and estimator configurations. Each call must return a
//! typed [`dp_metrics::MetricsError`] or a sane value (finite, in the documented range) —
//! never a panic, and never a NaN or ∞ the documentation does not promise: a metric that
//! silently reads NaN is logged and plotted as if it meant something.
//!
//! Entry points (27): quantile, norm_quantiles, clip_factors, bias_stats, clipping_stats,
//! hoyer_sparsity, magnitude_pruning_mask, random_pruning_mask, mask_jaccard, linspace,
//! mean_sd, tv_1d, roughness_1d, temporal_tv, Grid2d::new, tv_2d_anisotropic,
//! tv_summary_2d, rof_denoise, linear_cka, roc_curve, loss_threshold_attack,
//! QuadraticSurface::new, hessian_vector_product, top_eigenvalue, hutchinson_trace,
//! loss_change_decomposition, CoreModelSurface::new + with_chunk_size.

use candle_core::{DType, Device, Tensor};
use dp_metrics::{
    bias_stats, clip_factors, clipping_stats, hessian_vector_product, hoyer_sparsity,
    hutchinson_trace, linear_cka, linspace, loss_change_decomposition, loss_threshold_attack,
    magnitude_pruning_mask, mask_jaccard, mean_sd, norm_quantiles, quantile, random_pruning_mask,
    roc_curve, rof_denoise, roughness_1d, temporal_tv, top_eigenvalue, tv_1d, tv_2d_anisotropic,
    tv_summary_2d, CoreModelSurface, Grid2d, HutchinsonConfig, LossSurface, PowerIterationConfig,
    PruneScope, QuadraticSurface, StepGradients,
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
            1e300,
            -1e300,
            f64::MAX,
            0.5,
            1.0,
        ]),
        -10.0f64..10.0,
    ]
}

fn values(max: usize) -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(hostile(), 0..max)
}

fn finite(v: &[f64]) -> bool {
    v.iter().all(|x| x.is_finite())
}

fn finite_opt(v: &[Option<f64>]) -> bool {
    v.iter().flatten().all(|x| x.is_finite())
}

fn cpu() -> Device {
    Device::Cpu
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Order statistics, clip factors and bias statistics.
    #[test]
    fn statistics(v in values(6), w in values(6), q in hostile(), c in hostile()) {
        if let Ok(x) = quantile(&v, q) {
            prop_assert!((0.0..=1.0).contains(&q) && finite(&v));
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            prop_assert!(x >= lo && x <= hi, "quantile {q} of {v:?} = {x}");
        }
        if let Ok(s) = norm_quantiles(&v) {
            prop_assert!(s.min <= s.p10 && s.p10 <= s.p50 && s.p50 <= s.p90 && s.p90 <= s.max);
            prop_assert!(s.mean.is_finite(), "mean of {v:?} = {}", s.mean);
        }
        // A norm is finite and ≥ 0: a NaN or negative one is refused, not given factor 1.
        let norms_ok = v.iter().all(|n| n.is_finite() && *n >= 0.0);
        match clip_factors(&v, c) {
            Ok(f) => {
                prop_assert!(c.is_finite() && c > 0.0 && norms_ok, "norms {v:?} accepted");
                prop_assert_eq!(f.len(), v.len());
                prop_assert!(f.iter().all(|x| (0.0..=1.0).contains(x)), "factors of {v:?} at {c}: {f:?}");
            }
            Err(_) => prop_assert!(!(c.is_finite() && c > 0.0 && norms_ok)),
        }
        if let Ok(b) = bias_stats(&v, &w) {
            prop_assert_eq!(v.len(), w.len());
            prop_assert!(finite(&[b.mean_grad_norm, b.transformed_mean_norm, b.bias_norm]), "{v:?} {w:?}: {b:?}");
            prop_assert!(finite_opt(&[b.relative_bias, b.magnitude_ratio, b.direction_bias, b.cosine]), "{v:?} {w:?}: {b:?}");
            if let Some(cos) = b.cosine {
                prop_assert!((-1.0..=1.0).contains(&cos));
            }
        }
        let n = v.len().max(1);
        let g = Tensor::from_vec(
            (0..n * 2).map(|i| v.get(i % v.len().max(1)).copied().unwrap_or(1.0) as f32).collect::<Vec<_>>(),
            (n, 2), &cpu()).unwrap();
        let layers = vec![("a".to_string(), 0..1), ("b".to_string(), 1..3)];
        prop_assert!(clipping_stats(&g, 1.0, None, &layers).is_err(), "a layer past d accepted");
        if let Ok(s) = clipping_stats(&g, c, Some(q), &layers[..1]) {
            prop_assert!(s.clipped_fraction >= 0.0 && s.clipped_fraction <= 1.0);
            prop_assert!(s.dispersion.is_finite() && s.dispersion >= 0.0, "{s:?}");
            prop_assert!(finite_opt(&[s.snr, s.relative_dispersion]), "{s:?}");
        }
    }

    /// Sparsity and pruning masks.
    #[test]
    fn sparsity_and_masks(v in values(6), f in hostile(), seed in any::<u64>(), per_layer in any::<bool>()) {
        if let Some(h) = hoyer_sparsity(&v) {
            prop_assert!((0.0..=1.0).contains(&h), "hoyer {v:?} = {h}");
        }
        let scope = if per_layer { PruneScope::PerLayer } else { PruneScope::Global };
        let t = Tensor::from_vec(v.iter().map(|x| *x as f32).collect::<Vec<_>>(), v.len(), &cpu()).unwrap();
        let params = vec![("w".to_string(), t), ("b".to_string(), Tensor::ones(2, DType::F32, &cpu()).unwrap())];
        let m = magnitude_pruning_mask(&params, f, scope);
        let r = random_pruning_mask(&params, f, scope, seed);
        for mask in [&m, &r].into_iter().flatten() {
            prop_assert!((0.0..=1.0).contains(&f));
            prop_assert_eq!(mask.total(), v.len() + 2);
            prop_assert!(mask.num_active() <= mask.total());
            let j = mask_jaccard(mask, mask).unwrap();
            prop_assert_eq!(j, 1.0);
        }
        if let (Ok(a), Ok(b)) = (&m, &r) {
            let j = mask_jaccard(a, b).unwrap();
            prop_assert!((0.0..=1.0).contains(&j));
            let mut short = b.clone();
            short.layers.pop();
            prop_assert!(mask_jaccard(a, &short).is_err());
            if !short.layers.is_empty() {
                short.layers[0].keep.push(true);
                prop_assert!(mask_jaccard(&short, &short).is_ok());
                let mut other = a.clone();
                other.layers.truncate(1);
                prop_assert!(mask_jaccard(&other, &short).is_err());
            }
        }
        prop_assert!(magnitude_pruning_mask(&[], 0.5, scope).is_err());
    }

    /// Landscape curves and grids: total variation, roughness, ROF denoising.
    #[test]
    fn curves_and_grids(v in values(7), a in hostile(), b in hostile(), n in 0usize..6,
                        rows in 0usize..4, cols in 0usize..4, lambda in hostile(), tau in hostile(),
                        tol in hostile(), iters in 0usize..30) {
        let l = linspace(a, b, n);
        prop_assert_eq!(l.len(), n);
        if n > 0 && a.is_finite() && b.is_finite() {
            prop_assert_eq!(l[0], a);
            prop_assert_eq!(l[n - 1], if n == 1 { a } else { b });
        }
        if let Ok(m) = mean_sd(&v) {
            prop_assert_eq!(m.n, v.len());
            prop_assert!(m.mean.is_finite() && m.sd.is_finite() && m.sd >= 0.0, "mean_sd {v:?} = {m:?}");
        }
        if let Ok(t) = tv_1d(&v) {
            prop_assert!(t.is_finite() && t >= 0.0, "tv {v:?} = {t}");
        }
        if let Ok(r) = roughness_1d(&v) {
            // Documented: R ≥ 1, and +∞ only when both ends sit at the minimum.
            prop_assert!(r >= 1.0 - 1e-12, "roughness {v:?} = {r}");
        }
        if let Ok(t) = temporal_tv(&v) {
            prop_assert!(t.is_finite() && t >= 1.0 - 1e-12, "temporal tv {v:?} = {t}");
        }
        let cells: Vec<f64> = (0..rows * cols).map(|k| v.get(k).copied().unwrap_or(0.25 * k as f64)).collect();
        prop_assert!(Grid2d::new(rows, cols + 1, cells.clone()).is_err() || rows == 0 || cells.len() == rows * (cols + 1));
        // The fields are public: a grid whose sizes disagree with its values, or overflow.
        let broken = Grid2d { rows: usize::MAX, cols: 2, values: vec![1.0; 4] };
        prop_assert!(tv_2d_anisotropic(&broken).is_err());
        prop_assert!(tv_summary_2d(&broken, 1.0).is_err());
        if let Ok(g) = Grid2d::new(rows, cols, cells) {
            prop_assert!(rows > 0 && cols > 0);
            if let Ok(s) = tv_summary_2d(&g, a) {
                prop_assert!(a.is_finite() && a > 0.0);
                prop_assert!(finite(&[s.tv_anisotropic, s.tv_isotropic, s.range,
                                      s.tv_anisotropic_integral, s.tv_isotropic_integral]), "{g:?} h {a}: {s:?}");
                prop_assert!(finite_opt(&[s.tv_anisotropic_normalized, s.tv_isotropic_normalized,
                                          s.log_tv_anisotropic_normalized, s.log_tv_isotropic_normalized]), "{g:?}: {s:?}");
            }
            if let Ok(sol) = rof_denoise(&g, lambda, iters, tol, tau) {
                prop_assert!(lambda.is_finite() && lambda >= 0.0 && tau > 0.0 && tau <= 0.25);
                prop_assert!(sol.iterations <= iters);
                prop_assert!(finite(&sol.denoised.values), "ROF λ {lambda} τ {tau} of {g:?}: {:?}", sol.denoised);
            }
        }
    }

    /// Representations and membership inference.
    #[test]
    fn cka_and_membership(v in values(8), w in values(8), n in 0usize..4, p in 0usize..3,
                          fpr in prop::collection::vec(hostile(), 0..3)) {
        let take = |src: &[f64], k: usize| -> Vec<f64> {
            (0..k).map(|i| src.get(i).copied().unwrap_or(i as f64 * 0.5)).collect()
        };
        let x = Tensor::from_vec(take(&v, n * p), (n, p), &cpu()).unwrap();
        let y = Tensor::from_vec(take(&w, n * 2), (n, 2), &cpu()).unwrap();
        if let Ok(c) = linear_cka(&x, &y) {
            prop_assert!((0.0..=1.0).contains(&c), "CKA = {c}");
        }
        let wrong = Tensor::from_vec(take(&w, (n + 1) * 2), (n + 1, 2), &cpu()).unwrap();
        prop_assert!(linear_cka(&x, &wrong).is_err());
        if let Ok(roc) = roc_curve(&v, &w) {
            prop_assert!(roc.iter().all(|(f, t)| (0.0..=1.0).contains(f) && (0.0..=1.0).contains(t)), "{roc:?}");
        }
        if let Ok(r) = loss_threshold_attack(&v, &w, &fpr) {
            prop_assert!((0.0..=1.0).contains(&r.auc) && (0.0..=1.0).contains(&r.advantage), "{r:?}");
            prop_assert!(r.tpr_at_fpr.iter().all(|t| (0.0..=1.0).contains(&t.tpr)));
        }
    }

    /// Curvature estimators on a quadratic with hostile Hessians, points and configurations.
    #[test]
    fn curvature(h in values(5), theta in values(3), eps in hostile(), tol in hostile(),
                 iters in 0usize..6, probes in 0usize..6, min_probes in 0usize..4, rel in hostile(),
                 lr in hostile(), noise in hostile(), trace in hostile()) {
        let d = 2;
        let t: Vec<f64> = (0..d).map(|i| theta.get(i).copied().unwrap_or(0.5)).collect();
        let center = vec![Tensor::from_vec(t.clone(), d, &cpu()).unwrap()];
        // Symmetric by construction (h[1] off the diagonal), or not at all (h[3]).
        let hh = |i: usize, dflt: f64| h.get(i).copied().unwrap_or(dflt);
        let hess = vec![hh(0, 2.0), hh(1, 0.0), hh(3, hh(1, 0.0)), hh(2, 1.0)];
        let Ok(mut q) = QuadraticSurface::new(center.clone(), hess, vec![0.0; d], hh(4, 0.0)) else {
            return Ok(());
        };
        prop_assert!(QuadraticSurface::new(center.clone(), vec![1.0; 3], vec![0.0; d], 0.0).is_err());
        let v = vec![Tensor::from_vec(vec![1.0f64, -1.0], d, &cpu()).unwrap()];
        if let Ok(hv) = hessian_vector_product(&mut q, &center, &v, eps) {
            prop_assert!(eps.is_finite() && eps > 0.0);
            let hv = hv[0].to_vec1::<f64>().unwrap();
            prop_assert!(finite(&hv), "Hv at eps {eps}: {hv:?}");
        }
        let wrong_v = vec![Tensor::from_vec(vec![1.0f64; 3], 3, &cpu()).unwrap()];
        prop_assert!(hessian_vector_product(&mut q, &center, &wrong_v, 1e-3).is_err());
        let pcfg = PowerIterationConfig { max_iter: iters, tol, seed: 1, eps_scale: eps };
        if let Ok(e) = top_eigenvalue(&mut q, &center, &pcfg) {
            prop_assert!(iters > 0 && e.iterations <= iters);
            prop_assert!(e.eigenvalue.is_finite(), "λ = {} ({pcfg:?})", e.eigenvalue);
        }
        let hcfg = HutchinsonConfig { max_probes: probes, min_probes, rel_tol: rel, seed: 2, eps_scale: eps };
        if let Ok(tr) = hutchinson_trace(&mut q, &center, &hcfg) {
            prop_assert!(probes > 0 && tr.num_probes <= probes);
            prop_assert!(tr.trace.is_finite(), "trace = {} ({hcfg:?})", tr.trace);
            prop_assert!(!tr.std_error.is_nan());
        }
        let g: Vec<f64> = (0..d).map(|i| theta.get(i + 1).copied().unwrap_or(0.1)).collect();
        let grads = StepGradients { full: &g, batch: &g, clipped: &t };
        if let Ok(dec) = loss_change_decomposition(&mut q, &center, grads, lr, noise, trace, 1e-3) {
            prop_assert!(lr.is_finite() && lr >= 0.0 && noise.is_finite() && noise >= 0.0);
            prop_assert!(finite(&[dec.loss, dec.non_private, dec.clip, dec.clip_magnitude,
                                  dec.clip_direction, dec.noise, dec.predicted_change]), "{dec:?}");
        }
        let short = StepGradients { full: &g[..1], batch: &g, clipped: &t };
        prop_assert!(loss_change_decomposition(&mut q, &center, short, 0.1, 0.1, 1.0, 1e-3).is_err());
    }

    /// The dp-core adapter: empty probe sets, label counts that disagree, chunk sizes of 0.
    #[test]
    fn core_model_surface(n in 0usize..4, extra in 0usize..2, chunk in 0usize..4, v in hostile()) {
        let mut model = dp_core::models::mlp(&[3, 2], &cpu(), 0).unwrap();
        let mut xs = vec![0.5f32; n * 3];
        if let Some(x0) = xs.first_mut() {
            *x0 = v as f32;
        }
        let x = Tensor::from_vec(xs, (n, 3), &cpu()).unwrap();
        let y = Tensor::from_vec((0..(n + extra) as u32).map(|i| i % 2).collect::<Vec<_>>(), n + extra, &cpu()).unwrap();
        let Ok(s) = CoreModelSurface::new(&mut model, x, y) else {
            prop_assert!(n == 0 || extra > 0);
            return Ok(());
        };
        prop_assert!(n > 0 && extra == 0);
        match s.with_chunk_size(chunk) {
            Ok(mut s) => {
                prop_assert!(chunk > 0);
                let theta = s.parameters();
                if let Ok(l) = s.loss_at(&theta) {
                    prop_assert!(l.is_finite(), "loss {l} with feature {v}");
                }
                let wrong = vec![Tensor::ones(1, DType::F32, &cpu()).unwrap()];
                prop_assert!(s.loss_at(&wrong).is_err());
                // A refused evaluation leaves the model's parameters in place.
                let after = s.parameters();
                prop_assert_eq!(after.len(), theta.len());
            }
            Err(_) => prop_assert_eq!(chunk, 0),
        }
    }
}
