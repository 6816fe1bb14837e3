//! Base optimisers: what happens to a gradient once it is private. One file per optimiser,
//! holding its update rule and its fused single-pass form for f32 CPU tensors.
//!
//! They know nothing of privacy: the step hands them the privatised, normalised gradient
//! and the standard deviation of the noise in it. Every adaptive *privacy* method lives in
//! [`crate::methods`] instead, so that DP-SGD = `Sgd` + `FixedClip`, DP-Adam = `Adam` +
//! `FixedClip`, and so on.

mod adam;
mod adam_bc;
mod sgd;

pub use adam::Adam;
pub use adam_bc::AdamBc;
pub use sgd::Sgd;

use crate::error::{Result, TrainError};
use crate::tensor_state::TensorState;
use candle_core::{Device, Tensor};
use dp_core::host::with_host_f32;
use serde::{Deserialize, Serialize};

/// Refuses a learning rate that is NaN, infinite, zero or negative with
/// [`TrainError::InvalidLearningRate`]. Every optimiser the trainer or [`crate::take_step`]
/// drives is checked with it, whatever its constructor accepted.
///
/// ```
/// assert!(dp_optim::optim::check_learning_rate(0.1).is_ok());
/// for bad in [f64::NAN, f64::INFINITY, 0.0, -0.1] {
///     assert!(matches!(dp_optim::optim::check_learning_rate(bad),
///         Err(dp_optim::TrainError::InvalidLearningRate(_))));
/// }
/// ```
pub fn check_learning_rate(lr: f64) -> Result<()> {
    if lr.is_finite() && lr > 0.0 {
        Ok(())
    } else {
        Err(TrainError::InvalidLearningRate(lr))
    }
}

/// Serialisable optimiser state (hyper-parameters, step count and buffers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerState {
    /// Which optimiser wrote it.
    pub kind: String,
    /// Updates taken.
    pub step: u64,
    /// Buffers (momentum, first/second moments), each one tensor per parameter.
    pub buffers: Vec<Vec<TensorState>>,
}

/// One update rule: new parameters from parameters and a gradient.
///
/// The gradient it receives is already private, so any rule is post-processing and costs
/// no privacy; the trainer calls [`BaseOptimizer::step`] once per step and saves
/// [`BaseOptimizer::state`] in checkpoints. A rule written outside dp-optim, signSGD
/// (Bernstein et al. 2018) `θ ← θ − lr·sign(g)`, driving a private run:
///
/// ```
/// use dp_optim::{BaseOptimizer, BatchSize, Delta, Epochs, FixedClip, OptimizerState, PrivateTrainer, TrainError, TrainerConfig};
/// use candle_core::{Device, Tensor};
///
/// struct SignSgd { lr: f64, steps: u64 }
///
/// impl BaseOptimizer for SignSgd {
///     fn step(&mut self, params: &[Tensor], grads: &[Tensor]) -> dp_optim::Result<Vec<Tensor>> {
///         if params.len() != grads.len() {
///             return Err(TrainError::InvalidConfig("one gradient per parameter".into()));
///         }
///         self.steps += 1;
///         let update = |(p, g): (&Tensor, &Tensor)| -> dp_optim::Result<Tensor> {
///             Ok((p - (g.sign()? * self.lr)?)?)
///         };
///         params.iter().zip(grads).map(update).collect()
///     }
///     fn learning_rate(&self) -> f64 { self.lr }
///     fn set_learning_rate(&mut self, lr: f64) { self.lr = lr; }
///     fn state(&self) -> dp_optim::Result<OptimizerState> {
///         Ok(OptimizerState { kind: "sign_sgd".into(), step: self.steps, buffers: vec![] })
///     }
///     fn load_state(&mut self, s: &OptimizerState, _: &Device) -> dp_optim::Result<()> {
///         if s.kind != "sign_sgd" {
///             return Err(TrainError::InvalidConfig(format!("cannot load a '{}' state", s.kind)));
///         }
///         self.steps = s.step;
///         Ok(())
///     }
/// }
///
/// let dev = Device::Cpu;
/// let mut opt = SignSgd { lr: 0.1, steps: 0 };
/// let p = [Tensor::new(&[1f32, -1.], &dev).unwrap()];
/// let g = [Tensor::new(&[0.3f32, -2.], &dev).unwrap()];
/// let v: Vec<f32> = opt.step(&p, &g).unwrap()[0].to_vec1().unwrap();
/// assert!((v[0] - 0.9).abs() < 1e-6 && (v[1] + 0.9).abs() < 1e-6);
///
/// // DP-signSGD: the trainer privatises the gradient, the rule above only uses it.
/// let data = dp_data::load_bundled_mnist().unwrap();
/// let model = dp_core::models::mlp(&[784, 8, 10], &dev, 0).unwrap();
/// let cfg = TrainerConfig::new(Epochs(0.1), BatchSize(100.0), Delta(1e-5)).with_seed(0);
/// let method = FixedClip::new(1.0, 1.0).unwrap();
/// let sign_sgd = SignSgd { lr: 0.01, steps: 0 };
/// let mut t = PrivateTrainer::new(model, Box::new(sign_sgd), Box::new(method), cfg, &data.train).unwrap();
/// let report = t.train(&data.train, None).unwrap();
/// assert_eq!(t.optimizer().state().unwrap().step, report.steps);
/// assert!(report.epsilon.is_finite());
/// ```
pub trait BaseOptimizer: Send {
    /// Returns the updated parameters (same order and shapes as `params`).
    fn step(&mut self, params: &[Tensor], grads: &[Tensor]) -> Result<Vec<Tensor>>;
    /// The current learning rate.
    fn learning_rate(&self) -> f64;
    /// Changes the learning rate (schedules).
    fn set_learning_rate(&mut self, lr: f64);
    /// State for checkpoints.
    fn state(&self) -> Result<OptimizerState>;
    /// Restores [`BaseOptimizer::state`].
    fn load_state(&mut self, state: &OptimizerState, device: &Device) -> Result<()>;
    /// Told before each [`BaseOptimizer::step`]: the standard deviation of the Gaussian
    /// noise in each coordinate of the gradient it is about to receive (0 when the run adds
    /// none). Optimisers that correct for the noise (DP-AdamBC subtracts its variance from
    /// Adam's second moment) use it; the others ignore it.
    fn set_gradient_noise_std(&mut self, _std: f64) {}
    /// Named values of the last step for logging (e.g. Adam's fraction of coordinates whose
    /// second moment is no more than the noise variance). Computed from the privatised
    /// gradients only, so they are post-processing; empty by default.
    fn diagnostics(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }
}

pub(crate) fn check_lengths(params: &[Tensor], grads: &[Tensor]) -> Result<()> {
    if params.len() != grads.len() {
        return Err(TrainError::InvalidConfig(format!(
            "{} gradients for {} parameters",
            grads.len(),
            params.len()
        )));
    }
    Ok(())
}

pub(crate) fn save(bufs: &[Option<Tensor>]) -> Result<Vec<TensorState>> {
    bufs.iter()
        .map(|b| match b {
            Some(t) => TensorState::from_tensor(t),
            None => Ok(TensorState {
                shape: vec![],
                data: vec![],
            }),
        })
        .collect()
}

pub(crate) fn load(states: &[TensorState], device: &Device) -> Result<Vec<Option<Tensor>>> {
    states
        .iter()
        .map(|s| {
            if s.shape.is_empty() && s.data.is_empty() {
                Ok(None)
            } else {
                s.to_tensor(device).map(Some)
            }
        })
        .collect()
}

// Helpers of the fused updates (f32 CPU tensors).
pub(crate) const CHUNK: usize = 1 << 14;

pub(crate) fn tensor(v: Vec<f32>, like: &Tensor) -> candle_core::Result<Tensor> {
    Tensor::from_vec(v, like.dims(), &Device::Cpu)
}

/// Values of an optional state buffer (empty when absent).
pub(crate) fn values(t: Option<&Tensor>) -> candle_core::Result<Vec<f32>> {
    match t {
        Some(t) => with_host_f32(t, |v| v.to_vec()),
        None => Ok(Vec::new()),
    }
}

pub(crate) fn check(n: usize, others: &[usize]) -> candle_core::Result<()> {
    if others.iter().any(|&m| m != n && m != 0) {
        candle_core::bail!("fused update: parameter, gradient and state sizes differ");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The fused updates against the candle expressions (taken for f64 tensors).
    use super::{Adam, BaseOptimizer, Sgd};
    use candle_core::{DType, Device, Tensor};

    fn tensors(seed: u64, dtype: DType) -> Vec<Tensor> {
        // Sizes below and above one chunk, and a matrix.
        [vec![7usize], vec![3, 40_000], vec![5, 5]]
            .iter()
            .enumerate()
            .map(|(k, shape)| {
                dp_core::Init::seeded(seed + k as u64)
                    .normal(shape, 1.0, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            })
            .collect()
    }

    fn run(opt: &mut dyn BaseOptimizer, dtype: DType) -> Vec<Vec<f64>> {
        let mut p = tensors(1, dtype);
        for step in 0..4 {
            let g = tensors(10 + step, dtype);
            p = opt.step(&p, &g).unwrap();
        }
        p.iter()
            .map(|t| {
                t.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect()
    }

    fn agree(make: &dyn Fn() -> Box<dyn BaseOptimizer>) {
        let fast = run(make().as_mut(), DType::F32);
        let slow = run(make().as_mut(), DType::F64);
        for (a, b) in fast.iter().zip(&slow) {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn sgd_variants_match_the_candle_path() {
        agree(&|| Box::new(Sgd::new(0.1)));
        agree(&|| Box::new(Sgd::new(0.1).with_momentum(0.9)));
        agree(&|| Box::new(Sgd::new(0.1).with_momentum(0.9).with_nesterov(true)));
        agree(&|| Box::new(Sgd::new(0.1).with_momentum(0.5).with_weight_decay(0.01)));
    }

    #[test]
    fn adam_variants_match_the_candle_path() {
        agree(&|| Box::new(Adam::new(0.01)));
        agree(&|| Box::new(Adam::new(0.01).with_weight_decay(0.1)));
        agree(&|| Box::new(Adam::adamw(0.01, 0.1)));
        agree(&|| Box::new(Adam::new(0.01).with_betas(0.5, 0.9).with_eps(1e-6)));
    }

    #[test]
    fn adam_bc_matches_the_candle_path() {
        // Floors well above f32 rounding of v̂: near v̂ − Φ ≈ γ′ the step is ill-conditioned
        // (1/√γ′), and f32 and f64 then differ by more than rounding, legitimately. The
        // floored branch is exercised (N(0, 1) gradients put many v̂ below Φ + γ′).
        use super::AdamBc;
        agree(&|| {
            let mut o = AdamBc::new(0.01).with_floor(0.05).unwrap();
            o.set_gradient_noise_std(0.1);
            Box::new(o)
        });
        agree(&|| {
            let mut o = AdamBc::new(0.01).with_floor(0.1).unwrap();
            o.set_gradient_noise_std(0.5);
            Box::new(o)
        });
    }

    #[test]
    fn mismatched_state_is_an_error() {
        let p = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let g = Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap();
        assert!(Sgd::new(0.1)
            .step(std::slice::from_ref(&p), std::slice::from_ref(&g))
            .is_err());
        assert!(Adam::new(0.1).step(&[p], &[g]).is_err());
    }
}
