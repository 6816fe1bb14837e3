//! The loss-change decomposition (algorithms.md §14.4) sums to the measured expected loss
//! change of a noisy clipped step on a quadratic, where the second-order expansion is exact.

use candle_core::{Device, Tensor};
use dp_metrics::{
    hutchinson_trace, loss_change_decomposition, HutchinsonConfig, LossSurface, QuadraticSurface,
    StepGradients,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn quadratic(d: usize, seed: u64) -> (QuadraticSurface, Vec<f64>, Vec<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut n = || -> f64 { StandardNormal.sample(&mut rng) };
    // A = MᵀM + 0.5 I: symmetric positive definite.
    let m: Vec<f64> = (0..d * d).map(|_| n()).collect();
    let mut a = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            a[i * d + j] = (0..d).map(|k| m[k * d + i] * m[k * d + j]).sum::<f64>()
                + if i == j { 0.5 } else { 0.0 };
        }
    }
    let minimum: Vec<f64> = (0..d).map(|_| n()).collect();
    // Near the minimum, where a step's noise matters next to its signal.
    let theta: Vec<f64> = minimum.iter().map(|m| m + 0.2 * n()).collect();
    let c = vec![Tensor::new(theta.as_slice(), &Device::Cpu).unwrap()];
    (
        QuadraticSurface::new(c, a.clone(), minimum, 0.7).unwrap(),
        theta,
        a,
    )
}

#[test]
fn the_terms_sum_to_the_measured_expected_loss_change() {
    let d = 6;
    for seed in 0..3 {
        let (mut q, theta, a) = quadratic(d, seed);
        let center = q.parameters();
        let g_d: Vec<f64> = q.grad_at(&center).unwrap()[0].to_vec1().unwrap();
        // A batch mean near the full gradient, and a clipped mean that is shorter and turned.
        let g_b: Vec<f64> = g_d
            .iter()
            .enumerate()
            .map(|(i, g)| g + 0.1 * (i as f64 - 2.0))
            .collect();
        let g_c: Vec<f64> = g_b
            .iter()
            .enumerate()
            .map(|(i, g)| 0.4 * g + 0.05 * i as f64)
            .collect();
        let (lr, s) = (0.03, 1.0);
        let trace: f64 = (0..d).map(|i| a[i * d + i]).sum();
        let grads = StepGradients {
            full: &g_d,
            batch: &g_b,
            clipped: &g_c,
        };
        let dec = loss_change_decomposition(&mut q, &center, grads, lr, s, trace, 1e-5).unwrap();
        assert!((dec.clip_magnitude + dec.clip_direction - dec.clip).abs() < 1e-12);

        // Exact expectation: L(θ − ηḡ) − L(θ) + (η²/2)s²Tr(A).
        let l0 = q.loss_at(&center).unwrap();
        let step = |xi: &[f64]| -> Vec<Tensor> {
            let v: Vec<f64> = (0..d).map(|i| theta[i] - lr * (g_c[i] + xi[i])).collect();
            vec![Tensor::new(v.as_slice(), &Device::Cpu).unwrap()]
        };
        let exact = q.loss_at(&step(&vec![0.0; d])).unwrap() - l0 + 0.5 * lr * lr * s * s * trace;
        assert!(
            (dec.predicted_change - exact).abs() < 1e-7 * (1.0 + exact.abs()),
            "predicted {} vs exact {exact}",
            dec.predicted_change
        );

        // Measured: the mean change over seeded noise draws, within four standard errors.
        let mut rng = ChaCha8Rng::seed_from_u64(100 + seed);
        let n = 20_000;
        let changes: Vec<f64> = (0..n)
            .map(|_| {
                let xi: Vec<f64> = (0..d)
                    .map(|_| {
                        let z: f64 = StandardNormal.sample(&mut rng);
                        s * z
                    })
                    .collect();
                q.loss_at(&step(&xi)).unwrap() - l0
            })
            .collect();
        let mean = changes.iter().sum::<f64>() / n as f64;
        let se = (changes.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0))
            .sqrt()
            / (n as f64).sqrt();
        assert!(
            (mean - dec.predicted_change).abs() < 4.0 * se + 1e-12,
            "measured {mean} ± {se}, predicted {}",
            dec.predicted_change
        );
        // The noise term is what separates the noisy from the noiseless step.
        assert!(
            dec.noise > 0.0 && dec.noise > 10.0 * se,
            "noise term {} vs se {se}",
            dec.noise
        );

        // Hutchinson's trace serves as the trace input.
        let t = hutchinson_trace(
            &mut q,
            &center,
            &HutchinsonConfig {
                max_probes: 200,
                ..HutchinsonConfig::default()
            },
        )
        .unwrap();
        assert!((t.trace - trace).abs() < 4.0 * t.std_error + 1e-9);
    }
}

#[test]
fn bad_inputs_are_errors() {
    let (mut q, _, _) = quadratic(3, 9);
    let c = q.parameters();
    let ok = [0.0; 3];
    let g = StepGradients {
        full: &ok,
        batch: &ok,
        clipped: &[0.0; 2],
    };
    assert!(loss_change_decomposition(&mut q, &c, g, 0.1, 0.1, 1.0, 1e-5).is_err());
    let g = StepGradients {
        full: &ok,
        batch: &ok,
        clipped: &ok,
    };
    assert!(loss_change_decomposition(&mut q, &c, g, -0.1, 0.1, 1.0, 1e-5).is_err());
    assert!(loss_change_decomposition(&mut q, &c, g, 0.1, f64::NAN, 1.0, 1e-5).is_err());
    let nan = [f64::NAN, 0.0, 0.0];
    let g = StepGradients {
        full: &nan,
        batch: &ok,
        clipped: &ok,
    };
    assert!(loss_change_decomposition(&mut q, &c, g, 0.1, 0.1, 1.0, 1e-5).is_err());
}
