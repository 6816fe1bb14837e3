//! Shared helpers for dp-core's integration tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use dp_core::{batch_gradient, Loss, Model};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub fn randn(rng: &mut ChaCha20Rng, shape: &[usize], dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| rng.sample::<f64, _>(rand_distr::StandardNormal))
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

pub fn labels(rng: &mut ChaCha20Rng, b: usize, k: usize) -> Tensor {
    let v: Vec<u32> = (0..b).map(|_| rng.gen_range(0..k as u32)).collect();
    Tensor::from_vec(v, b, &Device::Cpu).unwrap()
}

/// Converts every parameter of the model to f64 (for finite differences).
pub fn to_f64<M: Model + ?Sized>(m: &mut M) {
    let p: Vec<Tensor> = m
        .param_tensors()
        .iter()
        .map(|t| t.to_dtype(DType::F64).unwrap())
        .collect();
    m.set_param_tensors(&p).unwrap();
}

pub fn flat(ts: &[Tensor]) -> Vec<f64> {
    ts.iter()
        .flat_map(|t| {
            t.flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        })
        .collect()
}

pub fn loss_sum<M: Model + ?Sized>(m: &mut M, x: &Tensor, y: &Tensor, loss: &dyn Loss) -> f64 {
    let out = m.forward(x, false).unwrap();
    loss.loss(&out, y)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Checks the analytic batch gradient against central finite differences on `probes`
/// random coordinates (f64 model and inputs). Returns the worst relative error.
pub fn gradcheck<M: Model + ?Sized>(
    m: &mut M,
    x: &Tensor,
    y: &Tensor,
    loss: &dyn Loss,
    probes: usize,
    seed: u64,
) -> f64 {
    let (g, _) = batch_gradient(m, x, y, loss).unwrap();
    let analytic = flat(&g);
    let params = m.param_tensors();
    let shapes: Vec<Vec<usize>> = params.iter().map(|t| t.dims().to_vec()).collect();
    let mut values = flat(&params);
    assert_eq!(values.len(), analytic.len());
    let mut r = rng(seed);
    let h = 1e-5;
    let mut worst: f64 = 0.0;
    let rebuild = |v: &[f64]| -> Vec<Tensor> {
        let mut off = 0;
        shapes
            .iter()
            .map(|s| {
                let n: usize = s.iter().product();
                let t =
                    Tensor::from_vec(v[off..off + n].to_vec(), s.as_slice(), &Device::Cpu).unwrap();
                off += n;
                t
            })
            .collect()
    };
    for _ in 0..probes {
        let j = r.gen_range(0..values.len());
        let orig = values[j];
        values[j] = orig + h;
        m.set_param_tensors(&rebuild(&values)).unwrap();
        let lp = loss_sum(m, x, y, loss);
        values[j] = orig - h;
        m.set_param_tensors(&rebuild(&values)).unwrap();
        let lm = loss_sum(m, x, y, loss);
        values[j] = orig;
        let fd = (lp - lm) / (2.0 * h);
        let err = (fd - analytic[j]).abs() / (1e-6 + fd.abs().max(analytic[j].abs()));
        worst = worst.max(err.min((fd - analytic[j]).abs() / 1e-4));
    }
    m.set_param_tensors(&rebuild(&values)).unwrap();
    worst
}
