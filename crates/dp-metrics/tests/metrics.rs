//! Integration tests for dp-metrics. Every test checks a value that a wrong implementation
//! would get wrong; the whole file runs in a few seconds.
#![allow(clippy::needless_range_loop)]

use approx::assert_relative_eq;
use candle_core::{DType, Device, Tensor, Var};
use dp_metrics::plot::{self, LinePlot, Series, SurfaceOptions, SurfaceStyle};
use dp_metrics::*;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type R<T> = std::result::Result<T, MetricsError>;

fn cpu() -> Device {
    Device::Cpu
}

fn gauss(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn randn(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> Vec<f64> {
    (0..rows * cols).map(|_| gauss(rng)).collect()
}

/// A random orthogonal matrix (Gram–Schmidt on a Gaussian matrix), row-major d×d.
fn random_orthogonal(rng: &mut ChaCha8Rng, d: usize) -> Vec<f64> {
    let mut q: Vec<Vec<f64>> = Vec::new();
    while q.len() < d {
        let mut v: Vec<f64> = (0..d).map(|_| gauss(rng)).collect();
        for u in &q {
            let p: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= p * b);
        }
        let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if n > 1e-6 {
            q.push(v.into_iter().map(|a| a / n).collect());
        }
    }
    q.concat()
}

/// H = Q diag(eigs) Qᵀ.
fn hessian_with_spectrum(rng: &mut ChaCha8Rng, eigs: &[f64]) -> Vec<f64> {
    let d = eigs.len();
    let q = random_orthogonal(rng, d);
    let mut h = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            h[i * d + j] = (0..d).map(|k| q[k * d + i] * eigs[k] * q[k * d + j]).sum();
        }
    }
    // exact symmetry
    for i in 0..d {
        for j in 0..i {
            let m = 0.5 * (h[i * d + j] + h[j * d + i]);
            h[i * d + j] = m;
            h[j * d + i] = m;
        }
    }
    h
}

/// Parameters: a [3, 4] weight and a [3] bias (d = 15).
fn small_params(dtype: DType, seed: u64) -> R<Vec<Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w = Tensor::from_vec(randn(&mut rng, 3, 4), (3, 4), &cpu())?.to_dtype(dtype)?;
    let b = Tensor::from_vec(randn(&mut rng, 1, 3), 3, &cpu())?.to_dtype(dtype)?;
    Ok(vec![w, b])
}

// ------------------------------------------------------------------ total variation

#[test]
fn tv_of_constant_grid_is_zero() -> R<()> {
    let g = Grid2d::from_fn(17, 9, |_, _| 3.25)?;
    assert_eq!(tv_2d_anisotropic(&g)?, 0.0);
    assert_eq!(tv_2d_isotropic(&g)?, 0.0);
    assert_eq!(tv_1d(&[2.0; 10])?, 0.0);
    let s = tv_summary_2d(&g, 0.1)?;
    assert_eq!(s.tv_isotropic_normalized, None);
    Ok(())
}

#[test]
fn tv_matches_analytic_value_on_fine_grid() -> R<()> {
    // 1-D: TV of sin(2πx) on [0, 1] is 4.
    let x = linspace(0.0, 1.0, 2001);
    let f: Vec<f64> = x
        .iter()
        .map(|t| (std::f64::consts::TAU * t).sin())
        .collect();
    assert_relative_eq!(tv_1d(&f)?, 4.0, max_relative = 1e-5);

    // 2-D: f = x² + y on [0, 1]²:
    //   ∫∫ |f_x| + |f_y| = ∫ 2x dx + 1 = 2,
    //   ∫∫ √(4x² + 1) = √5/2 + asinh(2)/4.
    let n = 801;
    let c = linspace(0.0, 1.0, n);
    let h = 1.0 / (n - 1) as f64;
    let g = Grid2d::from_fn(n, n, |i, j| c[i] * c[i] + c[j])?;
    let s = tv_summary_2d(&g, h)?;
    let iso = 5f64.sqrt() / 2.0 + 2f64.asinh() / 4.0;
    assert_relative_eq!(s.tv_anisotropic_integral, 2.0, max_relative = 5e-3);
    assert_relative_eq!(s.tv_isotropic_integral, iso, max_relative = 5e-3);
    // range-normalised: range = 2
    assert_relative_eq!(
        s.tv_isotropic_normalized.unwrap(),
        s.tv_isotropic / 2.0,
        max_relative = 1e-12
    );
    Ok(())
}

#[test]
fn roughness_is_one_on_unimodal_and_above_one_with_oscillation() -> R<()> {
    let x = linspace(-1.0, 1.0, 201);
    let bowl: Vec<f64> = x.iter().map(|t| (t - 0.3).powi(2) + 0.1 * t).collect();
    assert_relative_eq!(roughness_1d(&bowl)?, 1.0, epsilon = 1e-12);
    // monotone is unimodal too
    assert_relative_eq!(roughness_1d(&x)?, 1.0, epsilon = 1e-12);
    let wiggly: Vec<f64> = x
        .iter()
        .zip(&bowl)
        .map(|(t, b)| b + 0.05 * (40.0 * t).sin())
        .collect();
    let r = roughness_1d(&wiggly)?;
    assert!(r > 1.2, "oscillation must raise roughness, got {r}");
    // log-f versions exist for positive curves
    let s = tv_summary_1d(&bowl.iter().map(|v| v + 1.0).collect::<Vec<_>>())?;
    assert_relative_eq!(s.log_roughness.unwrap(), 1.0, epsilon = 1e-12);
    Ok(())
}

#[test]
fn temporal_tv_is_one_for_monotone_curves() -> R<()> {
    assert_eq!(temporal_tv(&[5.0, 4.0, 2.0, 1.0])?, 1.0);
    assert!(temporal_tv(&[5.0, 3.0, 4.0, 1.0])? > 1.0);
    assert!(temporal_tv(&[1.0, 2.0]).is_err());
    Ok(())
}

fn rof_energy(u: &Grid2d, f: &Grid2d, lambda: f64) -> f64 {
    0.5 * u
        .values
        .iter()
        .zip(&f.values)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        + lambda * tv_2d_isotropic(u).unwrap()
}

#[test]
fn rof_minimises_its_energy_and_scores_roughness() -> R<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let n = 25;
    let c = linspace(-1.0, 1.0, n);
    let smooth = Grid2d::from_fn(n, n, |i, j| c[i] * c[i] + 0.5 * c[j] * c[j])?;
    let noisy = Grid2d::from_fn(n, n, |i, j| smooth.get(i, j) + 0.1 * gauss(&mut rng))?;
    let lambda = 0.05;
    let sol = rof_denoise(&noisy, lambda, 50_000, 1e-7, 0.125)?;
    assert!(sol.converged);
    let e_star = rof_energy(&sol.denoised, &noisy, lambda);
    assert!(e_star < rof_energy(&noisy, &noisy, lambda));
    for _ in 0..20 {
        let pert = sol.denoised.map(|v| v + 1e-3 * gauss(&mut rng));
        assert!(
            e_star <= rof_energy(&pert, &noisy, lambda) + 1e-9,
            "u* is not a minimiser"
        );
    }
    let rs = rof_roughness(&smooth, &RofConfig::default())?;
    let rn = rof_roughness(&noisy, &RofConfig::default())?;
    assert!(rn.hf_energy.unwrap() > 2.0 * rs.hf_energy.unwrap());
    assert!(rn.tv_drop.unwrap() > rs.tv_drop.unwrap());
    assert!(rs.tv_drop.unwrap() >= 0.0);
    Ok(())
}

// ------------------------------------------------------------------ directions and slices

#[test]
fn filter_normalisation_gives_each_filter_the_weight_filter_norm() -> R<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let conv =
        Tensor::from_vec(randn(&mut rng, 8, 27), (8, 3, 3, 3), &cpu())?.to_dtype(DType::F32)?;
    let lin = Tensor::from_vec(randn(&mut rng, 10, 5), (10, 5), &cpu())?.to_dtype(DType::F32)?;
    let bias = Tensor::from_vec(randn(&mut rng, 1, 10), 10, &cpu())?.to_dtype(DType::F32)?;
    let params = vec![conv, lin, bias.clone()];
    for (seed, mode) in [
        (0, BiasHandling::Zero),
        (1, BiasHandling::CopyWeights),
        (2, BiasHandling::Normalize),
    ] {
        let d = filter_normalized_direction(&params, seed, mode)?;
        for (w, dir) in params.iter().zip(&d).take(2) {
            let rows = w.dim(0)?;
            let wf = w
                .reshape((rows, ()))?
                .to_dtype(DType::F64)?
                .to_vec2::<f64>()?;
            let df = dir
                .reshape((rows, ()))?
                .to_dtype(DType::F64)?
                .to_vec2::<f64>()?;
            for (a, b) in wf.iter().zip(&df) {
                let na = a.iter().map(|v| v * v).sum::<f64>().sqrt();
                let nb = b.iter().map(|v| v * v).sum::<f64>().sqrt();
                assert_relative_eq!(na, nb, max_relative = 1e-5);
                // direction is random, not the weights themselves
                assert!(a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-3));
            }
        }
        let db = d[2].to_vec1::<f32>()?;
        let wb = bias.to_vec1::<f32>()?;
        match mode {
            BiasHandling::Zero => assert!(db.iter().all(|v| *v == 0.0)),
            BiasHandling::CopyWeights => assert_eq!(db, wb),
            BiasHandling::Normalize => {
                let n1 = db.iter().map(|v| v * v).sum::<f32>().sqrt();
                let n2 = wb.iter().map(|v| v * v).sum::<f32>().sqrt();
                assert_relative_eq!(n1, n2, max_relative = 1e-5);
            }
        }
        assert_eq!(d[0].dtype(), DType::F32);
    }
    // seeds give different directions, the same seed the same one
    let a = flatten_params(&filter_normalized_direction(
        &params,
        3,
        BiasHandling::Zero,
    )?)?;
    let b = flatten_params(&filter_normalized_direction(
        &params,
        3,
        BiasHandling::Zero,
    )?)?;
    let c = flatten_params(&filter_normalized_direction(
        &params,
        4,
        BiasHandling::Zero,
    )?)?;
    assert_eq!(a, b);
    assert_ne!(a, c);
    Ok(())
}

/// L(θ) = (θ² − 1)² summed over coordinates: two minima at ±1 with a barrier of height 1.
struct DoubleWell {
    p: Vec<Tensor>,
}

impl LossSurface for DoubleWell {
    fn parameters(&self) -> Vec<Tensor> {
        self.p.clone()
    }
    fn loss_at(&mut self, params: &[Tensor]) -> R<f64> {
        Ok(flatten_params(params)?
            .iter()
            .map(|t| (t * t - 1.0).powi(2))
            .sum())
    }
    fn grad_at(&mut self, params: &[Tensor]) -> R<Vec<Tensor>> {
        let layout = ParamLayout::of(params);
        let g: Vec<f64> = layout
            .flatten(params)?
            .iter()
            .map(|t| 4.0 * t * (t * t - 1.0))
            .collect();
        layout.unflatten(&g)
    }
}

#[test]
fn interpolation_barrier_of_double_well() -> R<()> {
    let a = vec![Tensor::new(&[-1f64], &cpu())?];
    let b = vec![Tensor::new(&[1f64], &cpu())?];
    let mut s = DoubleWell { p: a.clone() };
    let it = interpolate(&mut s, &a, &b, &linspace(-0.5, 1.5, 81))?;
    assert_relative_eq!(it.barrier, 1.0, epsilon = 1e-12);
    assert_eq!(it.losses.len(), 81);
    // a grid without λ = 1 is rejected
    assert!(barrier_height(&[0.0, 0.5], &[1.0, 2.0]).is_err());
    Ok(())
}

#[test]
fn slices_sharpness_and_flatness_on_a_quadratic() -> R<()> {
    // H = c·I minimised at θ*: f(α) = ½ c α² ‖d‖² with ‖d‖ = ‖W*‖ (biases zeroed).
    let c = 3.0;
    let params = small_params(DType::F64, 1)?;
    let theta = flatten_params(&params)?;
    let d = theta.len();
    let mut h = vec![0.0; d * d];
    (0..d).for_each(|i| h[i * d + i] = c);
    let mut q = QuadraticSurface::new(params.clone(), h, theta.clone(), 0.7)?;
    let w2: f64 = theta[..12].iter().map(|v| v * v).sum();
    let alphas = linspace(-1.0, 1.0, 401);
    let s = random_slice_1d(&mut q, &params, 9, BiasHandling::Zero, &alphas)?;
    for (a, f) in s.alphas.iter().zip(&s.losses) {
        assert_relative_eq!(*f, 0.7 + 0.5 * c * a * a * w2, max_relative = 1e-10);
    }
    assert_relative_eq!(s.curvature_at_center()?, c * w2, max_relative = 1e-6);
    let kappa = 0.1;
    let width = flatness_width_1d(&s, Kappa::Absolute(kappa))?;
    let exact = 2.0 * (2.0 * kappa / (c * w2)).sqrt();
    assert!(
        (width - exact).abs() <= 2.0 * (alphas[1] - alphas[0]),
        "{width} vs {exact}"
    );
    let rel = flatness_width_1d(&s, Kappa::Relative(0.1))?;
    let exact_rel = 2.0 * (2.0 * 0.07 / (c * w2)).sqrt();
    assert!((rel - exact_rel).abs() <= 2.0 * (alphas[1] - alphas[0]));

    let cfg = SharpnessConfig {
        radii: vec![0.05, 0.1, 0.25],
        num_directions: 5,
        seed: 0,
        bias: BiasHandling::Zero,
    };
    let sh = random_direction_sharpness(&mut q, &params, &cfg)?;
    assert_relative_eq!(sh.base_loss, 0.7, epsilon = 1e-12);
    for r in &sh.radii {
        assert_relative_eq!(
            r.sharpness,
            0.5 * c * r.rho * r.rho * w2,
            max_relative = 1e-9
        );
        assert!(r.sd < 1e-9);
    }

    // 2-D slice: a paraboloid; area fraction below f(0) + κ approaches the disc area.
    let g = linspace(-1.0, 1.0, 41);
    let s2 = random_slice_2d(&mut q, &params, 9, BiasHandling::Zero, &g, &g)?;
    let (ci, cj) = s2.center_index();
    assert_relative_eq!(s2.losses.get(ci, cj), 0.7, epsilon = 1e-12);
    let fa = flatness_area_2d(&s2, Kappa::Absolute(1e9))?;
    assert_eq!((fa.fraction, fa.connected_fraction), (1.0, 1.0));
    // the first direction equals the 1-D slice's direction
    for (i, a) in g.iter().enumerate() {
        let expected = 0.7 + 0.5 * c * a * a * w2;
        assert_relative_eq!(s2.losses.get(i, cj), expected, max_relative = 1e-9);
    }
    Ok(())
}

// ------------------------------------------------------------------ Hessian

#[test]
fn power_iteration_recovers_lambda_max_and_min() -> R<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let eigs: Vec<f64> = (0..15)
        .map(|i| {
            if i == 0 {
                10.0
            } else if i == 1 {
                -3.0
            } else {
                0.2 * i as f64
            }
        })
        .collect();
    let h = hessian_with_spectrum(&mut rng, &eigs);
    for dtype in [DType::F64, DType::F32] {
        let params = small_params(dtype, 3)?;
        let mut q = QuadraticSurface::new(params.clone(), h.clone(), vec![0.1; 15], 0.0)?;
        let cfg = PowerIterationConfig {
            max_iter: 200,
            tol: 1e-6,
            seed: 1,
            eps_scale: 1e-3,
        };
        let top = top_eigenvalue(&mut q, &params, &cfg)?;
        let tol = if dtype == DType::F64 { 1e-5 } else { 2e-3 };
        assert_relative_eq!(top.eigenvalue, 10.0, max_relative = tol);
        assert!(top.converged && top.iterations < 200);
        let low = min_eigenvalue(
            &mut q,
            &params,
            top.eigenvalue,
            &PowerIterationConfig {
                max_iter: 500,
                ..cfg
            },
        )?;
        assert_relative_eq!(low.eigenvalue, -3.0, max_relative = 10.0 * tol);
    }
    Ok(())
}

/// A saddle whose negative curvature dominates: power iteration alone reports the negative
/// eigenvalue; `max_eigenvalue` must find the algebraically largest one, and must equal
/// `top_eigenvalue` where the dominant eigenvalue is positive.
#[test]
fn max_eigenvalue_is_the_largest_not_the_largest_magnitude() -> R<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let saddle: Vec<f64> = (0..15)
        .map(|i| match i {
            0 => -40.0,
            1 => 7.0,
            _ => 0.3 * i as f64 - 1.5,
        })
        .collect();
    let h = hessian_with_spectrum(&mut rng, &saddle);
    let params = small_params(DType::F64, 3)?;
    let cfg = PowerIterationConfig {
        max_iter: 2000,
        tol: 1e-9,
        seed: 3,
        eps_scale: 1e-3,
    };
    let mut q = QuadraticSurface::new(params.clone(), h, vec![0.1; 15], 0.0)?;
    let top = top_eigenvalue(&mut q, &params, &cfg)?;
    assert_relative_eq!(top.eigenvalue, -40.0, max_relative = 1e-5);
    let max = max_eigenvalue(&mut q, &params, &cfg)?;
    assert_relative_eq!(max.eigenvalue, 7.0, max_relative = 1e-4);
    assert!(max.converged && max.iterations > top.iterations);
    assert_eq!(max.history.len(), max.iterations);

    let bowl: Vec<f64> = (0..15).map(|i| 0.5 + i as f64).collect();
    let h = hessian_with_spectrum(&mut rng, &bowl);
    let mut q = QuadraticSurface::new(params.clone(), h, vec![0.1; 15], 0.0)?;
    assert_eq!(
        max_eigenvalue(&mut q, &params, &cfg)?,
        top_eigenvalue(&mut q, &params, &cfg)?
    );
    Ok(())
}

#[test]
fn hutchinson_converges_to_the_trace() -> R<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let eigs: Vec<f64> = (0..15).map(|i| 0.5 + i as f64).collect();
    let trace: f64 = eigs.iter().sum();
    let h = hessian_with_spectrum(&mut rng, &eigs);
    let params = small_params(DType::F64, 3)?;
    let mut q = QuadraticSurface::new(params.clone(), h, vec![0.0; 15], 0.0)?;
    let small = hutchinson_trace(
        &mut q,
        &params,
        &HutchinsonConfig {
            max_probes: 20,
            ..Default::default()
        },
    )?;
    let big = hutchinson_trace(
        &mut q,
        &params,
        &HutchinsonConfig {
            max_probes: 4000,
            seed: 9,
            ..Default::default()
        },
    )?;
    assert_eq!(big.num_probes, 4000);
    assert!(
        (big.trace - trace).abs() < 4.0 * big.std_error + 1e-9,
        "{} vs {trace} ± {}",
        big.trace,
        big.std_error
    );
    assert!((big.trace - trace).abs() / trace < 0.02);
    assert!(big.std_error < small.std_error);
    // the stop rule fires
    let early = hutchinson_trace(
        &mut q,
        &params,
        &HutchinsonConfig {
            max_probes: 100_000,
            rel_tol: 0.01,
            min_probes: 10,
            ..Default::default()
        },
    )?;
    assert!(early.converged && early.num_probes < 100_000);
    Ok(())
}

/// Softmax regression on a fixed probe set, gradients from candle's autograd.
struct SoftmaxRegression {
    x: Tensor,
    y: Tensor,
    params: Vec<Tensor>,
}

impl SoftmaxRegression {
    fn new(n: usize, p: usize, k: usize, seed: u64) -> R<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let xs = randn(&mut rng, n, p);
        let ys: Vec<u32> = (0..n)
            .map(|i| ((xs[i * p] > 0.0) as u32 + (xs[i * p + 1] > 0.5) as u32) % k as u32)
            .collect();
        let x = Tensor::from_vec(xs, (n, p), &cpu())?.to_dtype(DType::F32)?;
        let y = Tensor::from_vec(ys, (n, 1), &cpu())?;
        let w = Tensor::from_vec(randn(&mut rng, k, p), (k, p), &cpu())?
            .to_dtype(DType::F32)?
            .affine(0.1, 0.0)?;
        let b = Tensor::zeros(k, DType::F32, &cpu())?;
        Ok(Self {
            x,
            y,
            params: vec![w, b],
        })
    }

    fn loss_tensor(&self, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        let logits = self.x.matmul(&w.t()?)?.broadcast_add(b)?;
        let m = logits.max_keepdim(1)?;
        let lse = logits
            .broadcast_sub(&m)?
            .exp()?
            .sum_keepdim(1)?
            .log()?
            .add(&m)?;
        let picked = logits.gather(&self.y, 1)?;
        lse.sub(&picked)?.mean_all()
    }
}

impl LossSurface for SoftmaxRegression {
    fn parameters(&self) -> Vec<Tensor> {
        self.params.clone()
    }
    fn loss_at(&mut self, params: &[Tensor]) -> R<f64> {
        Ok(self
            .loss_tensor(&params[0], &params[1])?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?)
    }
    fn grad_at(&mut self, params: &[Tensor]) -> R<Vec<Tensor>> {
        let w = Var::from_tensor(&params[0])?;
        let b = Var::from_tensor(&params[1])?;
        let l = self.loss_tensor(w.as_tensor(), b.as_tensor())?;
        let g = l.backward()?;
        let gw = g
            .get(w.as_tensor())
            .ok_or_else(|| MetricsError::InvalidArgument("no grad".into()))?
            .clone();
        let gb = g
            .get(b.as_tensor())
            .ok_or_else(|| MetricsError::InvalidArgument("no grad".into()))?
            .clone();
        Ok(vec![gw, gb])
    }
}

#[test]
fn softmax_regression_surface_hessian_and_landscape() -> R<()> {
    let mut m = SoftmaxRegression::new(200, 4, 3, 1)?;
    // a few gradient steps towards the minimum
    let layout = ParamLayout::of(&m.params);
    let mut theta = layout.flatten(&m.params)?;
    for _ in 0..100 {
        let g = layout.flatten(&m.grad_at(&layout.unflatten(&theta)?)?)?;
        theta.iter_mut().zip(&g).for_each(|(t, gi)| *t -= 1.0 * gi);
    }
    let center = layout.unflatten(&theta)?;
    m.params = center.clone();
    let d = layout.numel();
    // explicit Hessian from HVPs with unit vectors
    let mut diag = Vec::with_capacity(d);
    let mut cols = Vec::with_capacity(d);
    for i in 0..d {
        let mut e = vec![0.0; d];
        e[i] = 1.0;
        let hv = flatten_params(&hessian_vector_product(
            &mut m,
            &center,
            &layout.unflatten(&e)?,
            1e-2,
        )?)?;
        diag.push(hv[i]);
        cols.push(hv);
    }
    // symmetric up to finite-difference error
    for i in 0..d {
        for j in 0..d {
            assert!(
                (cols[i][j] - cols[j][i]).abs() < 2e-3,
                "H not symmetric at {i},{j}"
            );
        }
    }
    let trace: f64 = diag.iter().sum();
    let t = hutchinson_trace(
        &mut m,
        &center,
        &HutchinsonConfig {
            max_probes: 300,
            eps_scale: 1e-2,
            ..Default::default()
        },
    )?;
    assert!(
        (t.trace - trace).abs() < 4.0 * t.std_error + 1e-3 * trace.abs(),
        "{} vs {trace}",
        t.trace
    );
    let top = top_eigenvalue(
        &mut m,
        &center,
        &PowerIterationConfig {
            eps_scale: 1e-2,
            tol: 1e-5,
            ..Default::default()
        },
    )?;
    let max_diag = diag.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    assert!(top.eigenvalue >= max_diag - 1e-3 && top.eigenvalue <= trace + 1e-3);
    // a cross-entropy Hessian is PSD: every diagonal ≥ 0 and the slice is convex-ish near 0
    assert!(diag.iter().all(|v| *v > -1e-3));
    let s = random_slice_1d(
        &mut m,
        &center,
        0,
        BiasHandling::Zero,
        &linspace(-1.0, 1.0, 21),
    )?;
    assert!(s.curvature_at_center()? > 0.0);
    assert_relative_eq!(roughness_1d(&s.losses)?, 1.0, epsilon = 1e-6);
    Ok(())
}

// ------------------------------------------------------------------ clipping and misalignment

fn grads_tensor(rows: &[Vec<f64>]) -> R<Tensor> {
    let n = rows.len();
    let d = rows[0].len();
    Ok(Tensor::from_vec(rows.concat(), (n, d), &cpu())?.to_dtype(DType::F32)?)
}

#[test]
fn clipping_bias_is_zero_without_clipping() -> R<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let rows: Vec<Vec<f64>> = (0..64)
        .map(|_| (0..30).map(|_| gauss(&mut rng)).collect())
        .collect();
    let g = grads_tensor(&rows)?;
    let max_norm = per_example_norms(&g)?.into_iter().fold(0.0, f64::max);
    let b = clipping_bias_vector(&g, max_norm * 1.01)?;
    assert!(b.iter().all(|v| *v == 0.0));
    let s = clipping_stats(&g, max_norm * 1.01, Some(1.0), &[])?;
    assert_eq!(s.clipped_fraction, 0.0);
    assert_eq!(s.bias.bias_norm, 0.0);
    assert_relative_eq!(s.bias.cosine.unwrap(), 1.0, epsilon = 1e-12);
    // clipping everything does introduce bias
    let s2 = clipping_stats(&g, 0.1, Some(1.0), &[])?;
    assert_eq!(s2.clipped_fraction, 1.0);
    assert!(s2.bias.bias_norm > 0.0 && s2.bias.relative_bias.unwrap() > 0.5);
    Ok(())
}

#[test]
fn clipping_stats_match_direct_computation() -> R<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (n, d) = (40, 12);
    let rows: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            (0..d)
                .map(|_| gauss(&mut rng) * (1.0 + i as f64 / 10.0) + 0.3)
                .collect()
        })
        .collect();
    let g = grads_tensor(&rows)?;
    let rows: Vec<Vec<f64>> = g.to_dtype(DType::F64)?.to_vec2::<f64>()?; // f32-rounded values
    let (c, sigma) = (3.0, 0.8);
    let layers = vec![("a".to_string(), 0..5), ("b".to_string(), 5..12)];
    let s = clipping_stats(&g, c, Some(sigma), &layers)?;
    let norms: Vec<f64> = rows
        .iter()
        .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt())
        .collect();
    let mean: Vec<f64> = (0..d)
        .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n as f64)
        .collect();
    let clipped_sum: Vec<f64> = (0..d)
        .map(|j| {
            rows.iter()
                .zip(&norms)
                .map(|(r, nn)| r[j] * (c / nn).min(1.0))
                .sum::<f64>()
        })
        .collect();
    let gc: Vec<f64> = clipped_sum.iter().map(|v| v / n as f64).collect();
    let l2 = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let bias: Vec<f64> = gc.iter().zip(&mean).map(|(a, b)| a - b).collect();
    let disp = rows
        .iter()
        .map(|r| {
            r.iter()
                .zip(&mean)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
        })
        .sum::<f64>()
        / n as f64;
    assert_eq!(
        s.clipped_fraction,
        norms.iter().filter(|x| **x > c).count() as f64 / n as f64
    );
    assert!(s.clipped_fraction > 0.2 && s.clipped_fraction < 1.0);
    assert_relative_eq!(s.bias.bias_norm, l2(&bias), max_relative = 1e-9);
    assert_relative_eq!(s.bias.mean_grad_norm, l2(&mean), max_relative = 1e-9);
    assert_relative_eq!(s.dispersion, disp, max_relative = 1e-9);
    assert_relative_eq!(
        s.snr.unwrap(),
        l2(&clipped_sum) / (sigma * c * (d as f64).sqrt()),
        max_relative = 1e-9
    );
    assert_relative_eq!(
        s.layers[1].snr.unwrap(),
        l2(&clipped_sum[5..]) / (sigma * c * 7f64.sqrt()),
        max_relative = 1e-9
    );
    let rho = l2(&gc) / l2(&mean);
    let dir: Vec<f64> = gc.iter().zip(&mean).map(|(a, b)| a - rho * b).collect();
    assert_relative_eq!(
        s.bias.direction_bias.unwrap(),
        l2(&dir),
        max_relative = 1e-9
    );
    // quantiles
    let mut sorted = norms.clone();
    sorted.sort_by(f64::total_cmp);
    assert_relative_eq!(s.norm_quantiles.max, sorted[n - 1], max_relative = 1e-12);
    assert!(
        s.norm_quantiles.p10 <= s.norm_quantiles.p50
            && s.norm_quantiles.p50 <= s.norm_quantiles.p90
    );
    // bad layer ranges are rejected
    assert!(clipping_stats(&g, c, None, &[("x".into(), 10..20)]).is_err());
    assert!(clipping_stats(&g, -1.0, None, &[]).is_err());
    Ok(())
}

#[test]
fn misalignment_uses_group_means() -> R<()> {
    let batch = grads_tensor(&[vec![1.0, 0.0], vec![0.0, 10.0], vec![0.5, 0.5]])?;
    let groups = group_mean_gradients(&batch, &[0, 1, 0])?;
    assert_eq!(groups[&0], vec![0.75, 0.25]);
    let r = gradient_misalignment(&groups, &batch, 1.0)?;
    let g1 = r.groups.iter().find(|g| g.group == 1).unwrap();
    // the large group-1 gradient dominates g_B; clipping shrinks it, so group 1 loses alignment
    assert!(g1.misalignment.unwrap() > 0.0);
    let g0 = r.groups.iter().find(|g| g.group == 0).unwrap();
    assert!(g0.misalignment.unwrap() < 0.0);
    // identity transform: no misalignment
    let id = gradient_misalignment_with_factors(&groups, &batch, &[1.0; 3])?;
    assert!(id
        .groups
        .iter()
        .all(|g| g.misalignment.unwrap().abs() < 1e-12));
    Ok(())
}

// ------------------------------------------------------------------ CKA

fn tensor2(v: Vec<f64>, r: usize, c: usize) -> R<Tensor> {
    Ok(Tensor::from_vec(v, (r, c), &cpu())?.to_dtype(DType::F32)?)
}

#[test]
fn cka_properties() -> R<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let n = 300;
    let x = tensor2(randn(&mut rng, n, 10), n, 10)?;
    assert_relative_eq!(linear_cka(&x, &x)?, 1.0, epsilon = 1e-9);
    // orthogonal transform + isotropic scaling + a shift
    let q = tensor2(random_orthogonal(&mut rng, 10), 10, 10)?;
    let y = (x.matmul(&q)?.affine(3.5, 0.0)? + 2.0)?;
    assert_relative_eq!(linear_cka(&x, &y)?, 1.0, epsilon = 1e-5);
    // unrelated representations
    let z = tensor2(randn(&mut rng, n, 10), n, 10)?;
    let c = linear_cka(&x, &z)?;
    assert!(c < 0.2, "unrelated CKA {c}");
    // a non-isotropic scaling is not an invariance
    let s = tensor2(
        (0..10)
            .flat_map(|i| (0..10).map(move |j| if i == j { (i + 1) as f64 } else { 0.0 }))
            .collect(),
        10,
        10,
    )?;
    assert!(linear_cka(&x, &x.matmul(&s)?)? < 0.95);
    // feature and Gram forms agree; p > n uses the Gram form
    assert_relative_eq!(
        linear_cka_features(&x, &z)?,
        linear_cka_gram(&x, &z)?,
        max_relative = 1e-9
    );
    let wide = tensor2(randn(&mut rng, 20, 50), 20, 50)?;
    let wide2 = tensor2(randn(&mut rng, 20, 30), 20, 30)?;
    let cw = linear_cka(&wide, &wide2)?;
    assert!((0.0..1.0).contains(&cw));
    assert_relative_eq!(cw, linear_cka_features(&wide, &wide2)?, max_relative = 1e-9);
    assert!(linear_cka(&x, &wide).is_err());
    Ok(())
}

// ------------------------------------------------------------------ sparsity

#[test]
fn sparsity_masks_and_jaccard() -> R<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let p = vec![
        ("w1".to_string(), tensor2(randn(&mut rng, 20, 10), 20, 10)?),
        ("w2".to_string(), tensor2(randn(&mut rng, 10, 5), 10, 5)?),
    ];
    let m = magnitude_pruning_mask(&p, 0.8, PruneScope::Global)?;
    assert_eq!(m.num_active(), 50);
    assert_eq!(m.total(), 250);
    let pruned = m.apply(&p)?;
    let r = sparsity_report(&pruned, Threshold::Absolute(0.0))?;
    assert_eq!((r.num_active, r.global_sparsity), (50, 0.8));
    // kept weights are the largest ones
    let all: Vec<f64> = p
        .iter()
        .flat_map(|(_, t)| flatten_params(std::slice::from_ref(t)).unwrap())
        .collect();
    let mut mags: Vec<f64> = all.iter().map(|v| v.abs()).collect();
    mags.sort_by(f64::total_cmp);
    let cut = mags[199];
    let kept: Vec<f64> = pruned
        .iter()
        .flat_map(|(_, t)| flatten_params(std::slice::from_ref(t)).unwrap())
        .collect();
    assert!(kept
        .iter()
        .filter(|v| **v != 0.0)
        .all(|v| v.abs() > cut - 1e-7));
    assert!(r.layers.iter().all(|l| l.hoyer.unwrap() > 0.0));
    let per = magnitude_pruning_mask(&p, 0.5, PruneScope::PerLayer)?;
    assert_eq!(per.layers[0].keep.iter().filter(|k| **k).count(), 100);
    assert_eq!(per.layers[1].keep.iter().filter(|k| **k).count(), 25);
    assert_eq!(mask_jaccard(&m, &m)?, 1.0);
    let r1 = random_pruning_mask(&p, 0.8, PruneScope::Global, 1)?;
    let r2 = random_pruning_mask(&p, 0.8, PruneScope::Global, 2)?;
    assert_eq!(r1.num_active(), 50);
    let j = mask_jaccard(&r1, &r2)?;
    // two independent 20% masks overlap ≈ 0.2·0.2/(0.4 − 0.04) ≈ 0.11
    assert!(j > 0.0 && j < 0.3, "{j}");
    // relative threshold
    let dense = sparsity_report(&p, Threshold::RelativeToMax(1e-3))?;
    assert!(dense.global_sparsity < 0.05);
    assert_eq!(hoyer_sparsity(&[1.0, 0.0, 0.0]), Some(1.0));
    Ok(())
}

// ------------------------------------------------------------------ accuracy

#[test]
fn group_accuracy_and_disparate_impact() -> R<()> {
    let logits = Tensor::new(
        &[[2f32, 0.], [0., 1.], [3., 0.], [0., 5.], [1., 0.], [1., 0.]],
        &cpu(),
    )?;
    let preds = predictions_from_logits(&logits)?;
    assert_eq!(preds, vec![0, 1, 0, 1, 0, 0]);
    let labels = [0, 1, 0, 1, 1, 1];
    let np = accuracy_by_class(&[0, 1, 0, 1, 1, 1], &labels)?;
    let p = accuracy_by_class(&preds, &labels)?;
    assert_eq!(p.groups[1].accuracy, 0.5);
    let di = disparate_impact(&np, &p)?;
    assert_eq!(di.disparity(1, 0)?, 0.5);
    assert_eq!(di.worst_group, 1);
    assert_relative_eq!(di.overall_cost, 2.0 / 6.0, epsilon = 1e-12);
    assert!(di.disparity(1, 7).is_err());
    assert!(accuracy_by_group(&[1], &[1, 2], &[0]).is_err());
    Ok(())
}

// ------------------------------------------------------------------ membership inference

#[test]
fn membership_auc_is_half_on_identical_distributions() -> R<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let a: Vec<f64> = (0..5000).map(|_| gauss(&mut rng).abs()).collect();
    let b: Vec<f64> = (0..5000).map(|_| gauss(&mut rng).abs()).collect();
    let r = loss_threshold_attack(&a, &b, &DEFAULT_FPR_LEVELS)?;
    assert!((r.auc - 0.5).abs() < 0.03, "AUC {}", r.auc);
    // with FPR ≤ α, a random attack has TPR ≈ α
    assert!(r.tpr_at_fpr[2].tpr < 0.2 && r.tpr_at_fpr[2].fpr <= 0.1);
    assert!(r.advantage < 0.06);
    // members with lower losses are detected
    let members: Vec<f32> = a.iter().map(|v| (*v * 0.5) as f32).collect();
    let non: Vec<f32> = b.iter().map(|v| *v as f32).collect();
    let r2 = loss_threshold_attack(&members, &non, &DEFAULT_FPR_LEVELS)?;
    assert!(r2.auc > 0.65);
    Ok(())
}

fn brute_auc(m: &[f64], n: &[f64]) -> f64 {
    let mut s = 0.0;
    for a in m {
        for b in n {
            s += if a < b {
                1.0
            } else if a == b {
                0.5
            } else {
                0.0
            };
        }
    }
    s / (m.len() * n.len()) as f64
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn auc_equals_mann_whitney(m in prop::collection::vec(0u8..6, 1..30), n in prop::collection::vec(0u8..6, 1..30)) {
        let mf: Vec<f64> = m.iter().map(|v| *v as f64).collect();
        let nf: Vec<f64> = n.iter().map(|v| *v as f64).collect();
        let r = loss_threshold_attack(&mf, &nf, &[0.0, 0.5, 1.0]).unwrap();
        prop_assert!((r.auc - brute_auc(&mf, &nf)).abs() < 1e-12);
        prop_assert!(r.tpr_at_fpr[2].tpr == 1.0);
    }

    #[test]
    fn roughness_at_least_one(v in prop::collection::vec(-10.0f64..10.0, 2..40)) {
        let r = roughness_1d(&v).unwrap();
        prop_assert!(r >= 1.0 - 1e-12);
    }
}

// ------------------------------------------------------------------ logging and output

#[test]
fn logger_round_trips_metric_structs() -> R<()> {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dp-metrics-log");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("metrics.jsonl");
    let g = grads_tensor(&[vec![3.0, 4.0], vec![0.0, 1.0]])?;
    let stats = clipping_stats(&g, 1.0, Some(1.0), &[])?;
    {
        let mut log = MetricsLogger::create(&path)?;
        log.log(0, "clipping", &stats)?;
        log.log(1, "auc", &0.5)?;
    }
    let mut log = MetricsLogger::append(&path)?;
    log.log(2, "auc", &0.6)?;
    let recs = read_log(&path)?;
    assert_eq!(recs.len(), 3);
    // serde_json may differ in the last bit of an f64, so compare with a tolerance
    let back: ClippingStats = serde_json::from_value(recs[0].value.clone())?;
    assert_eq!(
        (back.n, back.d, back.clipped_fraction),
        (stats.n, stats.d, stats.clipped_fraction)
    );
    assert_relative_eq!(
        back.bias.bias_norm,
        stats.bias.bias_norm,
        max_relative = 1e-14
    );
    assert_relative_eq!(back.snr.unwrap(), stats.snr.unwrap(), max_relative = 1e-14);
    assert_eq!(recs[0].metric, "clipping");
    assert_eq!(recs[2].value.as_f64(), Some(0.6));
    Ok(())
}

#[test]
fn plots_and_tables_are_written() -> R<()> {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dp-metrics-plots");
    std::fs::create_dir_all(&dir)?;
    let a = linspace(-1.0, 1.0, 41);
    let grid = Grid2d::from_fn(41, 41, |i, j| {
        let (x, y) = (a[i], a[j]);
        1.0 + x * x + 2.0 * y * y + 0.3 * (6.0 * x).sin() * (5.0 * y).cos()
    })?;
    let s2 = Slice2d {
        alphas: a.clone(),
        betas: a.clone(),
        losses: grid,
    };
    for (name, style) in [
        ("heatmap", SurfaceStyle::HeatmapWithContours),
        ("contour", SurfaceStyle::Contour),
        ("heatmap_plain", SurfaceStyle::Heatmap),
    ] {
        for ext in ["png", "svg"] {
            let p = dir.join(format!("landscape_{name}.{ext}"));
            let opts = SurfaceOptions {
                title: format!("2-D slice ({name})"),
                style,
                ..Default::default()
            };
            plot::plot_slice_2d(&p, &s2, &opts)?;
            let bytes = std::fs::read(&p)?;
            if ext == "png" {
                assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 5000);
            } else {
                let text = String::from_utf8_lossy(&bytes);
                assert!(
                    text.contains("2-D slice")
                        && text.contains("α")
                        && text.contains("β")
                        && text.contains("loss")
                );
            }
        }
    }
    let s1: Vec<Slice1d> = (0..3)
        .map(|k| Slice1d {
            alphas: a.clone(),
            losses: a.iter().map(|x| 1.0 + (k + 1) as f64 * x * x).collect(),
        })
        .collect();
    let named: Vec<(String, &Slice1d)> = s1
        .iter()
        .enumerate()
        .map(|(k, s)| (format!("seed {k}"), s))
        .collect();
    let refs: Vec<(&str, &Slice1d)> = named.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    plot::plot_slices_1d(dir.join("slices_1d.png"), "1-D slices", &refs)?;
    let lp = LinePlot::new("Training loss", "step", "loss")
        .with_series(Series::new(
            "non-DP",
            (0..50).map(f64::from).collect(),
            (0..50).map(|t| 2.0 / (1.0 + t as f64)).collect(),
        ))
        .with_series(Series::new(
            "DP-SGD",
            (0..50).map(f64::from).collect(),
            (0..50).map(|t| 2.5 / (1.0 + 0.5 * t as f64)).collect(),
        ));
    plot::line_plot(dir.join("curves.svg"), &lp)?;
    plot::line_plot(dir.join("curves.png"), &lp)?;
    let svg = std::fs::read_to_string(dir.join("curves.svg"))?;
    assert!(svg.contains("Training loss") && svg.contains("DP-SGD") && svg.contains("step"));
    plot::line_plot(
        dir.join("curves_log.png"),
        &LinePlot {
            log_y: true,
            ..lp.clone()
        },
    )?;
    plot::write_slice_2d_csv(dir.join("landscape.csv"), &s2)?;
    let csv = std::fs::read_to_string(dir.join("landscape.csv"))?;
    assert_eq!(csv.lines().count(), 1 + 41 * 41);
    plot::write_json(dir.join("landscape.json"), &s2)?;
    let back: Slice2d =
        serde_json::from_str(&std::fs::read_to_string(dir.join("landscape.json"))?)?;
    assert_eq!(
        (back.losses.rows, back.losses.cols, back.alphas.len()),
        (41, 41, 41)
    );
    for (x, y) in back.losses.values.iter().zip(&s2.losses.values) {
        assert_relative_eq!(*x, *y, max_relative = 1e-14);
    }
    // bad inputs are errors, not panics
    assert!(plot::line_plot(dir.join("x.gif"), &lp).is_err());
    let bad = LinePlot::new("t", "x", "y").with_series(Series::new("s", vec![0.0], vec![]));
    assert!(plot::line_plot(dir.join("bad.png"), &bad).is_err());
    Ok(())
}
