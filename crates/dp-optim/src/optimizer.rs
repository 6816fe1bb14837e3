//! Base optimisers: what happens to a gradient once it is private.
//!
//! They know nothing of privacy: the trainer hands them the privatised, normalised
//! gradient. Every adaptive *privacy* method lives in [`crate::methods`] instead, so that
//! DP-SGD = `Sgd` + `FixedClip`, DP-Adam = `Adam` + `FixedClip`, and so on.

use crate::error::{Result, TrainError};
use crate::tensor_state::TensorState;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

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
}

fn check_lengths(params: &[Tensor], grads: &[Tensor]) -> Result<()> {
    if params.len() != grads.len() {
        return Err(TrainError::InvalidConfig(format!(
            "{} gradients for {} parameters",
            grads.len(),
            params.len()
        )));
    }
    Ok(())
}

fn save(bufs: &[Option<Tensor>]) -> Result<Vec<TensorState>> {
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

fn load(states: &[TensorState], device: &Device) -> Result<Vec<Option<Tensor>>> {
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

/// SGD with momentum, Nesterov momentum and L2 weight decay, with PyTorch's semantics:
/// `g ← g + λθ`, `v ← μv + g`, `θ ← θ − η·(g + μv if nesterov else v)`.
///
/// ```
/// use dp_optim::{BaseOptimizer, Sgd};
/// use candle_core::{Device, Tensor};
/// let mut opt = Sgd::new(0.1).with_momentum(0.9);
/// let p = vec![Tensor::new(&[1f32], &Device::Cpu).unwrap()];
/// let g = vec![Tensor::new(&[1f32], &Device::Cpu).unwrap()];
/// let p = opt.step(&p, &g).unwrap();                  // v = 1,   θ = 0.9
/// let p = opt.step(&p, &g).unwrap();                  // v = 1.9, θ = 0.71
/// assert!((p[0].to_vec1::<f32>().unwrap()[0] - 0.71).abs() < 1e-6);
/// ```
#[derive(Debug, Clone)]
pub struct Sgd {
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    nesterov: bool,
    velocity: Vec<Option<Tensor>>,
    step: u64,
}

impl Sgd {
    /// Plain SGD with learning rate `lr`.
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            velocity: Vec::new(),
            step: 0,
        }
    }
    /// Heavy-ball momentum `μ`.
    pub fn with_momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }
    /// Nesterov momentum.
    pub fn with_nesterov(mut self, nesterov: bool) -> Self {
        self.nesterov = nesterov;
        self
    }
    /// L2 weight decay `λ` (added to the gradient).
    pub fn with_weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }
}

impl BaseOptimizer for Sgd {
    fn step(&mut self, params: &[Tensor], grads: &[Tensor]) -> Result<Vec<Tensor>> {
        check_lengths(params, grads)?;
        if self.velocity.len() != params.len() {
            self.velocity = vec![None; params.len()];
        }
        self.step += 1;
        let mut out = Vec::with_capacity(params.len());
        let rule = crate::fused::SgdRule {
            lr: self.lr as f32,
            momentum: self.momentum as f32,
            weight_decay: self.weight_decay as f32,
            nesterov: self.nesterov,
        };
        for (k, (p, g)) in params.iter().zip(grads).enumerate() {
            let state: Vec<&Tensor> = self.velocity[k].iter().collect();
            if dp_core::host::is_host_f32(&[&[p, g][..], &state].concat()) {
                let (pn, vn) = crate::fused::sgd(p, g, self.velocity[k].as_ref(), &rule)?;
                self.velocity[k] = vn;
                out.push(pn);
                continue;
            }
            let mut g = g.clone();
            if self.weight_decay != 0.0 {
                g = (g + (p * self.weight_decay)?)?;
            }
            let d = if self.momentum != 0.0 {
                let v = match &self.velocity[k] {
                    Some(v) => ((v * self.momentum)? + &g)?,
                    None => g.clone(),
                };
                self.velocity[k] = Some(v.clone());
                if self.nesterov {
                    (g + (v * self.momentum)?)?
                } else {
                    v
                }
            } else {
                g
            };
            out.push((p - (d * self.lr)?)?);
        }
        Ok(out)
    }
    fn learning_rate(&self) -> f64 {
        self.lr
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn state(&self) -> Result<OptimizerState> {
        Ok(OptimizerState {
            kind: "sgd".into(),
            step: self.step,
            buffers: vec![save(&self.velocity)?],
        })
    }
    fn load_state(&mut self, state: &OptimizerState, device: &Device) -> Result<()> {
        if state.kind != "sgd" || state.buffers.len() != 1 {
            return Err(TrainError::InvalidConfig(format!(
                "cannot load a '{}' state into SGD",
                state.kind
            )));
        }
        self.step = state.step;
        self.velocity = load(&state.buffers[0], device)?;
        Ok(())
    }
}

/// Adam (Kingma & Ba 2015, Alg. 1) and AdamW (Loshchilov & Hutter 2019, Alg. 2):
/// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `θ ← θ − η·m̂/(√v̂ + ε)` with bias-corrected
/// `m̂ = m/(1−β₁ᵗ)`, `v̂ = v/(1−β₂ᵗ)`. Weight decay is L2 (added to `g`) for Adam and
/// decoupled (`θ ← θ − ηλθ`) for AdamW.
///
/// With DP noise, `v̂` is dominated by the noise variance `(σC/B)²`; DP-AdamBC (Tang et al.
/// 2024) corrects for that and is a separate method.
///
/// ```
/// use dp_optim::{Adam, BaseOptimizer};
/// use candle_core::{Device, Tensor};
/// let mut opt = Adam::new(0.1);
/// let p = vec![Tensor::new(&[1f32], &Device::Cpu).unwrap()];
/// let g = vec![Tensor::new(&[0.5f32], &Device::Cpu).unwrap()];
/// // First step: m̂ = g, v̂ = g², so θ moves by η·g/(|g| + ε) ≈ η.
/// let p = opt.step(&p, &g).unwrap();
/// assert!((p[0].to_vec1::<f32>().unwrap()[0] - 0.9).abs() < 1e-6);
/// ```
#[derive(Debug, Clone)]
pub struct Adam {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
    m: Vec<Option<Tensor>>,
    v: Vec<Option<Tensor>>,
    step: u64,
}

impl Adam {
    /// Adam with `β = (0.9, 0.999)`, `ε = 1e-8`.
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            m: Vec::new(),
            v: Vec::new(),
            step: 0,
        }
    }
    /// AdamW: decoupled weight decay `λ`.
    pub fn adamw(lr: f64, weight_decay: f64) -> Self {
        Self {
            weight_decay,
            decoupled: true,
            ..Self::new(lr)
        }
    }
    /// Sets `β₁, β₂`.
    pub fn with_betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.beta1 = beta1;
        self.beta2 = beta2;
        self
    }
    /// Sets `ε`.
    pub fn with_eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
    /// L2 weight decay (Adam) — use [`Adam::adamw`] for the decoupled form.
    pub fn with_weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }
}

impl BaseOptimizer for Adam {
    fn step(&mut self, params: &[Tensor], grads: &[Tensor]) -> Result<Vec<Tensor>> {
        check_lengths(params, grads)?;
        if self.m.len() != params.len() {
            self.m = vec![None; params.len()];
            self.v = vec![None; params.len()];
        }
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        let mut out = Vec::with_capacity(params.len());
        let rule = crate::fused::AdamRule {
            lr: self.lr as f32,
            beta1: self.beta1 as f32,
            beta2: self.beta2 as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            decoupled: self.decoupled,
            bc1: bc1 as f32,
            bc2: bc2 as f32,
        };
        for (k, (p, g)) in params.iter().zip(grads).enumerate() {
            let state: Vec<&Tensor> = self.m[k].iter().chain(self.v[k].iter()).collect();
            if dp_core::host::is_host_f32(&[&[p, g][..], &state].concat()) {
                let (pn, mn, vn) =
                    crate::fused::adam(p, g, self.m[k].as_ref(), self.v[k].as_ref(), &rule)?;
                self.m[k] = Some(mn);
                self.v[k] = Some(vn);
                out.push(pn);
                continue;
            }
            let mut p = p.clone();
            let mut g = g.clone();
            if self.weight_decay != 0.0 {
                if self.decoupled {
                    p = (&p - (&p * (self.lr * self.weight_decay))?)?;
                } else {
                    g = (g + (&p * self.weight_decay)?)?;
                }
            }
            let m = match &self.m[k] {
                Some(m) => ((m * self.beta1)? + (&g * (1.0 - self.beta1))?)?,
                None => (&g * (1.0 - self.beta1))?,
            };
            let v = match &self.v[k] {
                Some(v) => ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?,
                None => (g.sqr()? * (1.0 - self.beta2))?,
            };
            let mhat = (&m / bc1)?;
            let vhat = (&v / bc2)?;
            let upd = (mhat / (vhat.sqrt()? + self.eps)?)?;
            out.push((p - (upd * self.lr)?)?);
            self.m[k] = Some(m);
            self.v[k] = Some(v);
        }
        Ok(out)
    }
    fn learning_rate(&self) -> f64 {
        self.lr
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn state(&self) -> Result<OptimizerState> {
        Ok(OptimizerState {
            kind: if self.decoupled { "adamw" } else { "adam" }.into(),
            step: self.step,
            buffers: vec![save(&self.m)?, save(&self.v)?],
        })
    }
    fn load_state(&mut self, state: &OptimizerState, device: &Device) -> Result<()> {
        let want = if self.decoupled { "adamw" } else { "adam" };
        if state.kind != want || state.buffers.len() != 2 {
            return Err(TrainError::InvalidConfig(format!(
                "cannot load a '{}' state into {want}",
                state.kind
            )));
        }
        self.step = state.step;
        self.m = load(&state.buffers[0], device)?;
        self.v = load(&state.buffers[1], device)?;
        Ok(())
    }
}
