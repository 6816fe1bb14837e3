//! The default Hessian-vector-product step is unbiased on a ReLU model: checked against the
//! exact Hessian (of the smooth function that agrees with the network where no activation
//! changes sign) on a small MLP with a pre-activation placed just off its kink, where the
//! step §14.2 suggests (1e-3) crosses the kink and is badly biased.

use candle_core::{DType, Device, Tensor};
use dp_core::{models, Model};
use dp_metrics::{
    flatten_params, hessian_vector_product, CoreModelSurface, LossSurface, DEFAULT_HVP_EPS_SCALE,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const IN: usize = 4;
const HID: usize = 6;
const OUT: usize = 3;

/// Mean cross-entropy of the 1-hidden-layer net at flat parameters `p` (weight [HID, IN],
/// bias, weight [OUT, HID], bias) with the ReLU pattern `pattern` held fixed: the smooth
/// function equal to the network near the centre.
fn frozen_loss(p: &[f64], xs: &[Vec<f64>], ys: &[usize], pattern: &[Vec<bool>]) -> f64 {
    let (w1, rest) = p.split_at(HID * IN);
    let (b1, rest) = rest.split_at(HID);
    let (w2, b2) = rest.split_at(OUT * HID);
    let mut total = 0.0;
    for ((x, &y), on) in xs.iter().zip(ys).zip(pattern) {
        let h: Vec<f64> = (0..HID)
            .map(|j| {
                let z = (0..IN).map(|k| w1[j * IN + k] * x[k]).sum::<f64>() + b1[j];
                if on[j] {
                    z
                } else {
                    0.0
                }
            })
            .collect();
        let o: Vec<f64> = (0..OUT)
            .map(|c| (0..HID).map(|j| w2[c * HID + j] * h[j]).sum::<f64>() + b2[c])
            .collect();
        let m = o.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + o.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        total += lse - o[y];
    }
    total / xs.len() as f64
}

#[test]
fn the_default_hvp_step_matches_the_exact_hessian_on_a_relu_mlp() {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let n = 30;
    let xs: Vec<Vec<f64>> = (0..n)
        .map(|_| (0..IN).map(|_| rng.gen_range(-1.0..1.0)).collect())
        .collect();
    let ys: Vec<usize> = (0..n).map(|i| i % OUT).collect();
    let mut model = models::mlp(&[IN, HID, OUT], &dev, 2).unwrap();
    let mut theta = flatten_params(&model.param_tensors()).unwrap();
    // Example 0's first hidden pre-activation sits 2e-5 from the kink.
    let z00: f64 = (0..IN).map(|k| theta[k] * xs[0][k]).sum();
    theta[HID * IN] = 2e-5 - z00;
    let shapes: Vec<Vec<usize>> = model
        .param_tensors()
        .iter()
        .map(|t| t.dims().to_vec())
        .collect();
    let mut off = 0;
    let params: Vec<Tensor> = shapes
        .iter()
        .map(|s| {
            let k: usize = s.iter().product();
            let t = Tensor::from_vec(theta[off..off + k].to_vec(), s.as_slice(), &dev).unwrap();
            off += k;
            t
        })
        .collect();
    model.set_param_tensors(&params).unwrap();
    let pattern: Vec<Vec<bool>> = xs
        .iter()
        .map(|x| {
            (0..HID)
                .map(|j| {
                    (0..IN).map(|k| theta[j * IN + k] * x[k]).sum::<f64>() + theta[HID * IN + j]
                        > 0.0
                })
                .collect()
        })
        .collect();
    assert!(pattern[0][0]);

    // The exact Hessian of the frozen-pattern function (smooth: second differences at h =
    // 1e-4 are accurate to ~1e-8).
    let d = theta.len();
    let h = 1e-4;
    let f = |p: &[f64]| frozen_loss(p, &xs, &ys, &pattern);
    let mut hess = vec![0.0; d * d];
    for i in 0..d {
        for j in i..d {
            let mut v = theta.clone();
            let mut at = |si: f64, sj: f64| {
                v.copy_from_slice(&theta);
                v[i] += si * h;
                v[j] += sj * h;
                f(&v)
            };
            let hij =
                (at(1.0, 1.0) - at(1.0, -1.0) - at(-1.0, 1.0) + at(-1.0, -1.0)) / (4.0 * h * h);
            hess[i * d + j] = hij;
            hess[j * d + i] = hij;
        }
    }

    let xt = Tensor::from_vec(xs.concat(), (n, IN), &dev).unwrap();
    let yt = Tensor::from_vec(ys.iter().map(|&y| y as u32).collect::<Vec<_>>(), n, &dev).unwrap();
    let mut surface = CoreModelSurface::new(&mut model, xt, yt).unwrap();
    let center = surface.parameters();
    assert!(center.iter().all(|t| t.dtype() == DType::F64));
    // The network and its frozen twin agree at the centre.
    assert!((surface.loss_at(&center).unwrap() - f(&theta)).abs() < 1e-12);

    let rel_err = |surface: &mut CoreModelSurface<'_, _>, eps: f64, seed: u64| -> f64 {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f64> = (0..d).map(|_| r.gen_range(-1.0..1.0)).collect();
        let want: Vec<f64> = (0..d)
            .map(|i| (0..d).map(|j| hess[i * d + j] * v[j]).sum())
            .collect();
        let mut off = 0;
        let vt: Vec<Tensor> = shapes
            .iter()
            .map(|s| {
                let k: usize = s.iter().product();
                let t =
                    Tensor::from_vec(v[off..off + k].to_vec(), s.as_slice(), &Device::Cpu).unwrap();
                off += k;
                t
            })
            .collect();
        let got =
            flatten_params(&hessian_vector_product(surface, &center, &vt, eps).unwrap()).unwrap();
        let num: f64 = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        let den: f64 = want.iter().map(|b| b * b).sum::<f64>().sqrt();
        num / den
    };
    for seed in 0..5 {
        let good = rel_err(&mut surface, DEFAULT_HVP_EPS_SCALE, seed);
        assert!(good < 1e-4, "default step: relative error {good}");
        // The step §14.2 suggests crosses the kink: the check above can fail.
        let bad = rel_err(&mut surface, 1e-3, seed);
        assert!(bad > 1e-2, "1e-3 step: relative error only {bad}");
    }
}

#[test]
fn short_steps_on_f32_parameters_are_refused() {
    let dev = Device::Cpu;
    let mut model = models::mlp(&[IN, HID, OUT], &dev, 2).unwrap();
    let x = Tensor::ones((5, IN), DType::F32, &dev).unwrap();
    let y = Tensor::zeros(5, DType::U32, &dev).unwrap();
    let mut s = CoreModelSurface::new(&mut model, x, y).unwrap();
    let c = s.parameters();
    assert!(hessian_vector_product(&mut s, &c, &c, DEFAULT_HVP_EPS_SCALE).is_err());
    assert!(hessian_vector_product(&mut s, &c, &c, 1e-4).is_ok());
}
