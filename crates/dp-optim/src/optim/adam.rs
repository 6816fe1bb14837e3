//! Adam / AdamW and its fused update.

use super::{
    check, check_lengths, load, save, tensor, values, BaseOptimizer, OptimizerState, CHUNK,
};
use crate::error::{Result, TrainError};
use candle_core::{Device, Tensor};
use dp_core::host::with_host_f32;
use rayon::prelude::*;

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
    /// DP-AdamBC's floor `γ′` when the noise variance is subtracted (see [`super::AdamBc`]).
    noise_floor: Option<f64>,
    /// Per-coordinate variance `Φ` of the noise in the next gradient.
    noise_var: f64,
    /// Fraction of coordinates whose `v̂` was at most `Φ` (+ `γ′` when corrected) at the
    /// last step.
    noise_dominated: Option<f64>,
}

impl Adam {
    /// [`Adam::new`], with the learning rate checked at once (finite and > 0).
    ///
    /// ```
    /// assert!(dp_optim::Adam::try_new(1e-3).is_ok());
    /// assert!(dp_optim::Adam::try_new(f64::NAN).is_err());
    /// assert!(dp_optim::Adam::try_new(0.0).is_err());
    /// ```
    pub fn try_new(lr: f64) -> crate::Result<Self> {
        super::check_learning_rate(lr)?;
        Ok(Self::new(lr))
    }
    /// Adam with `β = (0.9, 0.999)`, `ε = 1e-8`. The rate is checked when the optimiser is
    /// used by [`crate::PrivateTrainer`] (at build) or [`crate::take_step`];
    /// [`Adam::try_new`] checks it at once.
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
            noise_floor: None,
            noise_var: 0.0,
            noise_dominated: None,
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
    /// DP-AdamBC's denominator `√max(v̂ − Φ, γ′)` instead of `√v̂ + ε`.
    pub(crate) fn with_noise_correction(mut self, floor: f64) -> Self {
        self.noise_floor = Some(floor);
        self
    }
    pub(crate) fn noise_floor(&self) -> Option<f64> {
        self.noise_floor
    }
    /// The noise variance `Φ` the next step assumes.
    pub(crate) fn noise_variance(&self) -> f64 {
        self.noise_var
    }
    /// At the last step, the fraction of coordinates with `v̂ ≤ Φ` (plain Adam) or
    /// `v̂ − Φ ≤ γ′` (corrected: where the floor is active). `None` before the first step.
    pub fn noise_dominated_fraction(&self) -> Option<f64> {
        self.noise_dominated
    }
    fn kind(&self) -> &'static str {
        match (self.noise_floor.is_some(), self.decoupled) {
            (true, true) => "adamw_bc",
            (true, false) => "adam_bc",
            (false, true) => "adamw",
            (false, false) => "adam",
        }
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
        let rule = AdamRule {
            lr: self.lr as f32,
            beta1: self.beta1 as f32,
            beta2: self.beta2 as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            decoupled: self.decoupled,
            bc1: bc1 as f32,
            bc2: bc2 as f32,
            noise_var: self.noise_var as f32,
            floor: self.noise_floor.map(|f| f as f32),
        };
        // `v̂` at most this counts as noise-dominated.
        let level = self.noise_var + self.noise_floor.unwrap_or(0.0);
        let (mut dominated, mut coords) = (0usize, 0usize);
        for (k, (p, g)) in params.iter().zip(grads).enumerate() {
            let state: Vec<&Tensor> = self.m[k].iter().chain(self.v[k].iter()).collect();
            if dp_core::host::is_host_f32(&[&[p, g][..], &state].concat()) {
                let (pn, mn, vn, d) =
                    fused_update(p, g, self.m[k].as_ref(), self.v[k].as_ref(), &rule)?;
                dominated += d;
                coords += p.elem_count();
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
            dominated += vhat
                .le(level)?
                .to_dtype(candle_core::DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()? as usize;
            coords += p.elem_count();
            let denom = match self.noise_floor {
                Some(floor) => (vhat - self.noise_var)?.maximum(floor)?.sqrt()?,
                None => (vhat.sqrt()? + self.eps)?,
            };
            let upd = (mhat / denom)?;
            out.push((p - (upd * self.lr)?)?);
            self.m[k] = Some(m);
            self.v[k] = Some(v);
        }
        self.noise_dominated = Some(dominated as f64 / coords.max(1) as f64);
        Ok(out)
    }
    fn learning_rate(&self) -> f64 {
        self.lr
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn set_gradient_noise_std(&mut self, std: f64) {
        self.noise_var = std * std;
    }
    /// `noise_variance` (`Φ` of the last step) and `noise_dominated_fraction` (see
    /// [`Adam::noise_dominated_fraction`]), once a step has been taken.
    fn diagnostics(&self) -> Vec<(&'static str, f64)> {
        self.noise_dominated
            .map(|f| {
                vec![
                    ("noise_variance", self.noise_var),
                    ("noise_dominated_fraction", f),
                ]
            })
            .unwrap_or_default()
    }
    fn state(&self) -> Result<OptimizerState> {
        Ok(OptimizerState {
            kind: self.kind().into(),
            step: self.step,
            buffers: vec![save(&self.m)?, save(&self.v)?],
        })
    }
    fn load_state(&mut self, state: &OptimizerState, device: &Device) -> Result<()> {
        let want = self.kind();
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

/// Adam hyper-parameters for one step (`bc1, bc2` the bias corrections `1 − βᵗ`).
struct AdamRule {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub decoupled: bool,
    pub bc1: f32,
    pub bc2: f32,
    /// `Φ`, and `γ′` when it is subtracted (DP-AdamBC).
    pub noise_var: f32,
    pub floor: Option<f32>,
}

/// `(p', m', v', noise-dominated coordinates)` of one Adam / AdamW step.
fn fused_update(
    p: &Tensor,
    g: &Tensor,
    m: Option<&Tensor>,
    v: Option<&Tensor>,
    r: &AdamRule,
) -> candle_core::Result<(Tensor, Tensor, Tensor, usize)> {
    let n = p.elem_count();
    let (mold, vold) = (values(m)?, values(v)?);
    let mut pn = vec![0f32; n];
    let mut mn = vec![0f32; n];
    let mut vn = vec![0f32; n];
    let level = r.noise_var + r.floor.unwrap_or(0.0);
    let dominated = with_host_f32(p, |pv| {
        with_host_f32(g, |gv| {
            check(n, &[pv.len(), gv.len(), mold.len(), vold.len()])?;
            let dominated = pn
                .par_chunks_mut(CHUNK)
                .zip(mn.par_chunks_mut(CHUNK))
                .zip(vn.par_chunks_mut(CHUNK))
                .enumerate()
                .map(|(k, ((po, mo), vo))| {
                    let (o, len) = (k * CHUNK, po.len());
                    let (ps, gs) = (&pv[o..o + len], &gv[o..o + len]);
                    let ms = (!mold.is_empty()).then(|| &mold[o..o + len]);
                    let vs = (!vold.is_empty()).then(|| &vold[o..o + len]);
                    let mut dominated = 0usize;
                    for j in 0..len {
                        let mut pi = ps[j];
                        let mut gi = gs[j];
                        if r.weight_decay != 0.0 {
                            if r.decoupled {
                                pi -= pi * (r.lr * r.weight_decay);
                            } else {
                                gi += pi * r.weight_decay;
                            }
                        }
                        let mi = match ms {
                            Some(ms) => ms[j] * r.beta1 + gi * (1.0 - r.beta1),
                            None => gi * (1.0 - r.beta1),
                        };
                        let vi = match vs {
                            Some(vs) => vs[j] * r.beta2 + gi * gi * (1.0 - r.beta2),
                            None => gi * gi * (1.0 - r.beta2),
                        };
                        let vhat = vi / r.bc2;
                        dominated += usize::from(vhat <= level);
                        let denom = match r.floor {
                            Some(floor) => (vhat - r.noise_var).max(floor).sqrt(),
                            None => vhat.sqrt() + r.eps,
                        };
                        po[j] = pi - (mi / r.bc1) / denom * r.lr;
                        mo[j] = mi;
                        vo[j] = vi;
                    }
                    dominated
                })
                .sum::<usize>();
            Ok::<usize, candle_core::Error>(dominated)
        })
    })???;
    Ok((tensor(pn, p)?, tensor(mn, p)?, tensor(vn, p)?, dominated))
}
