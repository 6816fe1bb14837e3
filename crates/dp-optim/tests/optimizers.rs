//! Update rules against hand-computed values.

use candle_core::{Device, Tensor};
use dp_optim::{Adam, BaseOptimizer, Sgd};

fn t(v: &[f32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap()
}
fn v(t: &Tensor) -> Vec<f32> {
    t.to_vec1().unwrap()
}
fn close(a: &[f32], b: &[f64]) {
    for (x, y) in a.iter().zip(b) {
        assert!((*x as f64 - y).abs() < 1e-6, "{a:?} vs {b:?}");
    }
}

#[test]
fn sgd_with_momentum_and_weight_decay() {
    // θ=1, g=0.5, λ=0.1, μ=0.9, η=0.1
    // step 1: g' = 0.5 + 0.1 = 0.6; v = 0.6; θ = 1 − 0.06 = 0.94
    // step 2: g' = 0.5 + 0.094 = 0.594; v = 0.54 + 0.594 = 1.134; θ = 0.94 − 0.1134 = 0.8266
    let mut o = Sgd::new(0.1).with_momentum(0.9).with_weight_decay(0.1);
    let p = o.step(&[t(&[1.0])], &[t(&[0.5])]).unwrap();
    close(&v(&p[0]), &[0.94]);
    let p = o.step(&p, &[t(&[0.5])]).unwrap();
    close(&v(&p[0]), &[0.8266]);
}

#[test]
fn sgd_nesterov() {
    // θ=0, g=1, μ=0.5, η=1: v=1, d = g + μv = 1.5 → θ=−1.5; then v = 1.5, d = 1 + 0.75 → θ = −3.25
    let mut o = Sgd::new(1.0).with_momentum(0.5).with_nesterov(true);
    let p = o.step(&[t(&[0.0])], &[t(&[1.0])]).unwrap();
    close(&v(&p[0]), &[-1.5]);
    let p = o.step(&p, &[t(&[1.0])]).unwrap();
    close(&v(&p[0]), &[-3.25]);
}

#[test]
fn adam_two_steps() {
    // η=0.1, β=(0.9, 0.999), ε=1e-8, θ=1, g1=0.5, g2=-1
    let (b1, b2, eps, lr) = (0.9f64, 0.999f64, 1e-8, 0.1);
    let mut o = Adam::new(lr);
    let p = o.step(&[t(&[1.0])], &[t(&[0.5])]).unwrap();
    let (mut m, mut s, mut th) = (0.0f64, 0.0f64, 1.0f64);
    for (k, g) in [0.5f64, -1.0].iter().enumerate() {
        m = b1 * m + (1.0 - b1) * g;
        s = b2 * s + (1.0 - b2) * g * g;
        let mh = m / (1.0 - b1.powi(k as i32 + 1));
        let sh = s / (1.0 - b2.powi(k as i32 + 1));
        th -= lr * mh / (sh.sqrt() + eps);
        if k == 0 {
            close(&v(&p[0]), &[th]);
        }
    }
    let p = o.step(&p, &[t(&[-1.0])]).unwrap();
    close(&v(&p[0]), &[th]);
}

#[test]
fn adamw_decouples_weight_decay() {
    // With g = 0 Adam's update is 0, so AdamW only shrinks: θ ← θ(1 − ηλ).
    let mut o = Adam::adamw(0.1, 0.5);
    let p = o.step(&[t(&[2.0, -4.0])], &[t(&[0.0, 0.0])]).unwrap();
    close(&v(&p[0]), &[1.9, -3.8]);
    // L2 Adam with g = 0 moves by ≈ η·sign(λθ) instead.
    let mut o = Adam::new(0.1).with_weight_decay(0.5);
    let p = o.step(&[t(&[2.0])], &[t(&[0.0])]).unwrap();
    close(&v(&p[0]), &[1.9]);
}

#[test]
fn optimizer_state_round_trips() {
    let mut a = Adam::new(0.01);
    let p = a.step(&[t(&[1.0, 2.0])], &[t(&[0.3, -0.2])]).unwrap();
    let state = a.state().unwrap();
    let json = serde_json::to_string(&state).unwrap();
    let mut b = Adam::new(0.01);
    b.load_state(&serde_json::from_str(&json).unwrap(), &Device::Cpu)
        .unwrap();
    let pa = a.step(&p, &[t(&[0.1, 0.1])]).unwrap();
    let pb = b.step(&p, &[t(&[0.1, 0.1])]).unwrap();
    assert_eq!(v(&pa[0]), v(&pb[0]));
    assert!(Sgd::new(0.1).load_state(&state, &Device::Cpu).is_err());
    assert!(Sgd::new(0.1).step(&[t(&[1.0])], &[]).is_err());
}
