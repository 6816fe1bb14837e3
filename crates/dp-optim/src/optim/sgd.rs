//! SGD (with momentum, Nesterov and weight decay) and its fused update.

use super::{
    check, check_lengths, load, save, tensor, values, BaseOptimizer, OptimizerState, CHUNK,
};
use crate::error::{Result, TrainError};
use candle_core::{Device, Tensor};
use dp_core::host::with_host_f32;
use rayon::prelude::*;

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
    /// Plain SGD with learning rate `lr`, checked: NaN, ±∞, 0 and negative rates are
    /// refused with [`TrainError::InvalidLearningRate`](crate::TrainError::InvalidLearningRate).
    ///
    /// ```
    /// assert!(dp_optim::Sgd::try_new(0.1).is_ok());
    /// assert!(dp_optim::Sgd::try_new(f64::NAN).is_err());
    /// ```
    pub fn try_new(lr: f64) -> crate::Result<Self> {
        super::check_learning_rate(lr)?;
        Ok(Self::new(lr))
    }
    /// Plain SGD with learning rate `lr`. The rate is checked when the optimiser is used by
    /// [`crate::PrivateTrainer`] (at build) or [`crate::take_step`]; [`Sgd::try_new`] checks
    /// it at once.
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
        let rule = SgdRule {
            lr: self.lr as f32,
            momentum: self.momentum as f32,
            weight_decay: self.weight_decay as f32,
            nesterov: self.nesterov,
        };
        for (k, (p, g)) in params.iter().zip(grads).enumerate() {
            let state: Vec<&Tensor> = self.velocity[k].iter().collect();
            if dp_core::host::is_host_f32(&[&[p, g][..], &state].concat()) {
                let (pn, vn) = fused_update(p, g, self.velocity[k].as_ref(), &rule)?;
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

/// SGD hyper-parameters.
struct SgdRule {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// `(p', v')`: `g ← g + λp`; `v ← μv + g` (or `g` on the first step); `d = g + μv`
/// (Nesterov) or `v`; `p ← p − η·d`. Without momentum `d = g` and no `v` is kept.
fn fused_update(
    p: &Tensor,
    g: &Tensor,
    v: Option<&Tensor>,
    r: &SgdRule,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let n = p.elem_count();
    let vold = values(v)?;
    let momentum = r.momentum != 0.0;
    let mut pn = vec![0f32; n];
    let mut vn = vec![0f32; if momentum { n } else { 0 }];
    with_host_f32(p, |pv| {
        with_host_f32(g, |gv| {
            check(n, &[pv.len(), gv.len(), vold.len()])?;
            // Slices per chunk and loop-invariant branches, so that the loops vectorise.
            let kernel = |o: usize, po: &mut [f32], vo: &mut [f32]| {
                let len = po.len();
                let (ps, gs) = (&pv[o..o + len], &gv[o..o + len]);
                let grad = |j: usize| {
                    if r.weight_decay != 0.0 {
                        gs[j] + ps[j] * r.weight_decay
                    } else {
                        gs[j]
                    }
                };
                if !momentum {
                    for (j, (y, &pj)) in po.iter_mut().zip(ps).enumerate() {
                        *y = pj - grad(j) * r.lr;
                    }
                    return;
                }
                let vs = if vold.is_empty() {
                    None
                } else {
                    Some(&vold[o..o + len])
                };
                for j in 0..len {
                    let gi = grad(j);
                    let vi = match vs {
                        Some(vs) => vs[j] * r.momentum + gi,
                        None => gi,
                    };
                    vo[j] = vi;
                    let d = if r.nesterov { gi + vi * r.momentum } else { vi };
                    po[j] = ps[j] - d * r.lr;
                }
            };
            if momentum {
                pn.par_chunks_mut(CHUNK)
                    .zip(vn.par_chunks_mut(CHUNK))
                    .enumerate()
                    .for_each(|(k, (po, vo))| kernel(k * CHUNK, po, vo));
            } else {
                pn.par_chunks_mut(CHUNK)
                    .enumerate()
                    .for_each(|(k, po)| kernel(k * CHUNK, po, &mut []));
            }
            Ok::<(), candle_core::Error>(())
        })
    })???;
    let vt = if momentum { Some(tensor(vn, p)?) } else { None };
    Ok((tensor(pn, p)?, vt))
}
