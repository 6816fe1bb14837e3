//! DP-AdamBC: Adam with the noise variance removed from its second moment.

use super::{Adam, BaseOptimizer, OptimizerState};
use crate::error::{Result, TrainError};
use candle_core::{Device, Tensor};

/// DP-AdamBC (Tang, Shpilevskiy, Lécuyer, "DP-AdamBC: Your DP-Adam Is Actually DP-SGD
/// (Unless You Apply Bias Correction)", AAAI 2024, Alg. 1; official code
/// `ubc-systopia/DP-AdamBC`, `adam_corr.py`).
///
/// The private gradient is `g̃ = ḡ + ξ` with `ξ ~ N(0, Φ·I)`, so Adam's second moment
/// estimates `E[ḡ²] + Φ`. Where `Φ` dominates, Adam's step is `m̂/√Φ`: SGD with momentum
/// and a rescaled learning rate ("DP-Adam is DP-SGD"). DP-AdamBC subtracts it:
///
/// `θ ← θ − η · m̂_t / √max(v̂_t − Φ, γ′)`
///
/// with the **bias-corrected** `v̂_t` (as in the official code), no `ε` in the denominator
/// and `γ′ = 10⁻⁸` by default (the code's `eps_root`; its CIFAR-10 run uses `10⁻⁹`).
/// Because `1/√γ′` can reach `10⁴`, learning rates are orders of magnitude below DP-Adam's.
///
/// `Φ` is the per-coordinate variance of the noise in the gradient this optimiser receives
/// (`(σS/divisor)²`: `(σC/B)²` for DP-SGD's sum divided by `B`). The step tells it before
/// every update ([`BaseOptimizer::set_gradient_noise_std`]), so it follows `C` when the
/// clip bound adapts and is never recomputed by hand. It is 0 in a run without noise, and
/// then DP-AdamBC is Adam with `ε = 0` guarded by `γ′`. No privacy cost: the correction is
/// post-processing of the noisy gradient.
///
/// ```
/// use dp_optim::{AdamBc, BaseOptimizer};
/// use candle_core::{Device, Tensor};
/// let mut opt = AdamBc::new(0.1);
/// opt.set_gradient_noise_std(0.3); // Φ = 0.09
/// let p = vec![Tensor::new(&[1f32], &Device::Cpu).unwrap()];
/// let g = vec![Tensor::new(&[0.5f32], &Device::Cpu).unwrap()];
/// // First step: m̂ = 0.5, v̂ = 0.25, so θ moves by 0.1·0.5/√(0.25 − 0.09) = 0.125.
/// let p = opt.step(&p, &g).unwrap();
/// assert!((p[0].to_vec1::<f32>().unwrap()[0] - 0.875).abs() < 1e-5); // f32 rounding of 1 − β₂
/// assert_eq!(opt.noise_dominated_fraction(), Some(0.0));
/// ```
#[derive(Debug, Clone)]
pub struct AdamBc {
    inner: Adam,
}

/// The official code's default `γ′`.
pub const DEFAULT_FLOOR: f64 = 1e-8;

impl AdamBc {
    /// DP-AdamBC with `β = (0.9, 0.999)` and `γ′ = 10⁻⁸`.
    pub fn new(lr: f64) -> Self {
        Self {
            inner: Adam::new(lr).with_noise_correction(DEFAULT_FLOOR),
        }
    }
    /// Sets `β₁, β₂`.
    pub fn with_betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.inner = self.inner.with_betas(beta1, beta2);
        self
    }
    /// Sets the floor `γ′ > 0` on the corrected second moment (variance scale).
    pub fn with_floor(mut self, floor: f64) -> Result<Self> {
        if !(floor.is_finite() && floor > 0.0) {
            return Err(TrainError::InvalidConfig(format!(
                "DP-AdamBC floor γ′ = {floor} must be finite and > 0 (it replaces Adam's ε)"
            )));
        }
        self.inner = self.inner.with_noise_correction(floor);
        Ok(self)
    }
    /// The floor `γ′`.
    pub fn floor(&self) -> f64 {
        self.inner.noise_floor().unwrap_or(DEFAULT_FLOOR)
    }
    /// The noise variance `Φ` the next step subtracts.
    pub fn noise_variance(&self) -> f64 {
        self.inner.noise_variance()
    }
    /// At the last step, the fraction of coordinates where `v̂ − Φ ≤ γ′`: the second moment
    /// there is no more than the noise variance, and the floor sets the step size.
    pub fn noise_dominated_fraction(&self) -> Option<f64> {
        self.inner.noise_dominated_fraction()
    }
}

impl BaseOptimizer for AdamBc {
    fn step(&mut self, params: &[Tensor], grads: &[Tensor]) -> Result<Vec<Tensor>> {
        self.inner.step(params, grads)
    }
    fn learning_rate(&self) -> f64 {
        self.inner.learning_rate()
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.inner.set_learning_rate(lr)
    }
    fn state(&self) -> Result<OptimizerState> {
        self.inner.state()
    }
    fn load_state(&mut self, state: &OptimizerState, device: &Device) -> Result<()> {
        self.inner.load_state(state, device)
    }
    fn set_gradient_noise_std(&mut self, std: f64) {
        self.inner.set_gradient_noise_std(std)
    }
    fn diagnostics(&self) -> Vec<(&'static str, f64)> {
        self.inner.diagnostics()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Vec<Tensor> {
        vec![Tensor::new(v, &Device::Cpu).unwrap()]
    }
    fn vals(p: &[Tensor]) -> Vec<f32> {
        p[0].to_vec1::<f32>().unwrap()
    }

    /// A scalar reference of Alg. 1 in f64.
    struct Reference {
        m: Vec<f64>,
        v: Vec<f64>,
        t: i32,
    }
    impl Reference {
        fn step(&mut self, p: &mut [f64], g: &[f32], lr: f64, phi: f64, floor: f64) {
            self.t += 1;
            let (b1, b2) = (0.9f64, 0.999f64);
            for j in 0..p.len() {
                let gj = g[j] as f64;
                self.m[j] = b1 * self.m[j] + (1.0 - b1) * gj;
                self.v[j] = b2 * self.v[j] + (1.0 - b2) * gj * gj;
                let mhat = self.m[j] / (1.0 - b1.powi(self.t));
                let vhat = self.v[j] / (1.0 - b2.powi(self.t));
                p[j] -= lr * mhat / (vhat - phi).max(floor).sqrt();
            }
        }
    }

    #[test]
    fn several_steps_match_a_hand_computed_update_including_the_clamp() {
        // Φ = 0.04; the last coordinate's gradients are small, so v̂ − Φ < 0 and the floor
        // 1e-4 sets its step. Φ changes at step 3 (the clip bound adapted).
        let (lr, floor) = (0.01, 1e-4);
        let mut opt = AdamBc::new(lr).with_floor(floor).unwrap();
        let mut p = t(&[1.0, -2.0, 0.5]);
        let mut want = vec![1.0f64, -2.0, 0.5];
        let mut r = Reference {
            m: vec![0.0; 3],
            v: vec![0.0; 3],
            t: 0,
        };
        let grads = [
            [0.9f32, -0.7, 0.01],
            [1.1, 0.3, -0.02],
            [0.8, -1.2, 0.015],
            [1.0, 0.9, 0.0],
        ];
        for (k, g) in grads.iter().enumerate() {
            let std = if k < 2 { 0.2 } else { 0.25 };
            opt.set_gradient_noise_std(std);
            assert!((opt.noise_variance() - std * std).abs() < 1e-15);
            r.step(&mut want, g, lr, std * std, floor);
            p = opt.step(&p, &t(g)).unwrap();
            for (a, b) in vals(&p).iter().zip(&want) {
                assert!((*a as f64 - b).abs() < 1e-6, "step {k}: {a} vs {b}");
            }
            // The third coordinate is always floored; the others never are.
            assert_eq!(opt.noise_dominated_fraction(), Some(1.0 / 3.0), "step {k}");
        }
    }

    #[test]
    fn without_noise_it_is_adam_with_no_epsilon() {
        // Φ = 0 and v̂ ≥ γ′ everywhere: √max(v̂, γ′) = √v̂ exactly, bit for bit.
        let mut bc = AdamBc::new(0.05);
        bc.set_gradient_noise_std(0.0);
        let mut adam = Adam::new(0.05).with_eps(0.0);
        let (mut p1, mut p2) = (t(&[0.3, -1.0]), t(&[0.3, -1.0]));
        for g in [[0.5f32, -0.25], [0.4, 0.1], [-0.3, 0.6]] {
            p1 = bc.step(&p1, &t(&g)).unwrap();
            p2 = adam.step(&p2, &t(&g)).unwrap();
            assert_eq!(vals(&p1), vals(&p2));
        }
        // A zero gradient: Adam with ε = 0 divides 0 by 0; the floor keeps DP-AdamBC finite.
        let mut bc = AdamBc::new(0.05);
        let p = bc.step(&t(&[1.0]), &t(&[0.0])).unwrap();
        assert_eq!(vals(&p), vec![1.0]);
    }

    #[test]
    fn state_round_trips_and_refuses_plain_adam() {
        let mut a = AdamBc::new(0.01);
        a.set_gradient_noise_std(0.1);
        let p = a.step(&t(&[1.0, 2.0]), &t(&[0.5, 0.5])).unwrap();
        let s = a.state().unwrap();
        assert_eq!(s.kind, "adam_bc");
        let mut b = AdamBc::new(0.01);
        b.load_state(&s, &Device::Cpu).unwrap();
        b.set_gradient_noise_std(0.1);
        let g = t(&[0.1, -0.3]);
        assert_eq!(
            vals(&a.step(&p, &g).unwrap()),
            vals(&b.step(&p, &g).unwrap())
        );
        assert!(Adam::new(0.01).load_state(&s, &Device::Cpu).is_err());
        assert!(AdamBc::new(0.01).with_floor(0.0).is_err());
        assert!(AdamBc::new(0.01).with_floor(f64::NAN).is_err());
    }
}
