//! What LayerNorm and GroupNorm share: the learned per-channel affine map
//! `y = x̂ ⊙ γ + β` over the last (channel) axis, its record, and its per-sample rule.
//! The two layers differ only in which values `x̂` is normalised over.
//!
//! Per-example gradients are small (`[B, C]` each), so they are always materialised:
//! `∂γ_i = Σ_s G_{i,s} ⊙ x̂_{i,s}`, `∂β_i = Σ_s G_{i,s}`.

use super::norm_common::{check_eps, NORM_EPS};
use super::seq_linear::weighted_sum_materialized;
use crate::error::{shape_err, CoreError, Result};
use crate::layer::Param;
use candle_core::{DType, Device, Tensor};

pub(crate) struct AffineNorm {
    pub gamma: Param,
    pub beta: Param,
    pub eps: f64,
    /// Normalised input `[B, S, C]`.
    xhat: Option<Tensor>,
    /// Output gradient `[B, S, C]`.
    g: Option<Tensor>,
    /// `1/σ` of each normalisation group.
    rstd: Option<Tensor>,
    /// The input's shape.
    shape: Vec<usize>,
    /// Per-example `(∂γ, ∂β, squared norms)` once computed (host path), reused by
    /// `sq_norms` and `weighted_sum`.
    materialized: Option<(Tensor, Tensor, Tensor)>,
}

impl AffineNorm {
    /// Gain 1, bias 0 over `channels` (≥ 1), ε = [`NORM_EPS`].
    pub fn new(channels: usize, device: &Device, layer: &str) -> Result<Self> {
        if channels == 0 {
            return Err(CoreError::InvalidArgument(format!(
                "{layer}: the normalised axis must have at least one channel"
            )));
        }
        Self::from_tensors(
            Tensor::ones(channels, DType::F32, device)?,
            Tensor::zeros(channels, DType::F32, device)?,
            layer,
        )
    }

    /// The given gain and bias, both `[C]` with `C ≥ 1`, ε = [`NORM_EPS`].
    pub fn from_tensors(gamma: Tensor, beta: Tensor, layer: &str) -> Result<Self> {
        let g = gamma.dims();
        if g.len() != 1 || g[0] == 0 {
            return Err(shape_err(&format!("{layer} gain"), "[C] with C ≥ 1", g));
        }
        if beta.dims() != g {
            return Err(shape_err(
                &format!("{layer} bias"),
                &format!("{g:?} (the gain's shape)"),
                beta.dims(),
            ));
        }
        Ok(Self {
            gamma: Param::new("weight", gamma),
            beta: Param::new("bias", beta),
            eps: NORM_EPS,
            xhat: None,
            g: None,
            rstd: None,
            shape: Vec::new(),
            materialized: None,
        })
    }

    /// Sets ε after [`check_eps`].
    pub fn set_eps(&mut self, eps: f64) -> Result<()> {
        self.eps = check_eps(eps)?;
        Ok(())
    }

    pub fn channels(&self) -> usize {
        self.gamma.value.dims()[0]
    }

    /// Checks an input `[B, ..., C]` and views it as `[B, S, C]`.
    pub fn input(&self, x: &Tensor, layer: &str) -> Result<Tensor> {
        let c = self.channels();
        let dims = x.dims();
        if dims.len() < 2 || dims[dims.len() - 1] != c {
            return Err(shape_err(
                layer,
                &format!("[B, ..., {c}] (channels last)"),
                dims,
            ));
        }
        Ok(x.reshape((dims[0], (), c))?)
    }

    /// Applies the affine map to `x̂` (`[B, S, C]`), records for backward, and restores
    /// the input's shape.
    pub fn output(
        &mut self,
        xhat: Tensor,
        rstd: Tensor,
        x: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let y = xhat
            .broadcast_mul(&self.gamma.value)?
            .broadcast_add(&self.beta.value)?;
        self.record(xhat, rstd, x, train);
        Ok(y.reshape(x.dims())?)
    }

    /// Whether the fused host kernels (`kernels::norm`) apply to input `x`.
    pub fn host(&self, x: &Tensor) -> bool {
        crate::kernels::dispatch::applies(&[x, &self.gamma.value, &self.beta.value])
    }

    /// The forward pass on the host: `x3` is `[N, S, C]` normalised per (row, group).
    pub fn forward_host(
        &mut self,
        x3: &Tensor,
        groups: usize,
        x: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let (y, xhat, rstd) = crate::kernels::norm::forward(
            x3,
            groups,
            self.eps,
            &self.gamma.value,
            &self.beta.value,
        )?;
        let (b, _, c) = x3.dims3()?;
        let xhat = if x.dims()[0] == b {
            xhat
        } else {
            xhat.reshape((x.dims()[0], (), c))?
        };
        self.record(xhat, rstd, x, train);
        Ok(y.reshape(x.dims())?)
    }

    /// The backward pass on the host. `groups` as in [`AffineNorm::forward_host`];
    /// `per_position`: every position is its own normalisation row (LayerNorm, the
    /// `[B·S, 1, C]` view) rather than every example (GroupNorm, `[B, S, C]`).
    pub fn backward_host(
        &mut self,
        grad_out: &Tensor,
        groups: usize,
        per_position: bool,
        need_input_grad: bool,
        layer: &str,
    ) -> Result<Option<Tensor>> {
        let (xhat, rstd, g) = self.backward_record(grad_out, layer)?;
        if !need_input_grad {
            return Ok(None);
        }
        let (b, s, c) = xhat.dims3()?;
        let view = if per_position {
            (b * s, 1, c)
        } else {
            (b, s, c)
        };
        let dx = crate::kernels::norm::backward(
            &xhat.reshape(view)?,
            &rstd,
            &g.reshape(view)?,
            &self.gamma.value,
            groups,
        )?;
        Ok(Some(dx.reshape(self.input_shape())?))
    }

    fn record(&mut self, xhat: Tensor, rstd: Tensor, x: &Tensor, train: bool) {
        if train {
            self.xhat = Some(xhat);
            self.g = None;
            self.rstd = Some(rstd);
            self.shape = x.dims().to_vec();
            self.materialized = None;
        }
    }

    /// Records the output gradient; returns `(x̂, rstd, ∂L/∂x̂ = G ⊙ γ)`, all `[B, S, C]`
    /// except `rstd`.
    pub fn backward(&mut self, grad_out: &Tensor, layer: &str) -> Result<(Tensor, Tensor, Tensor)> {
        let (xhat, rstd, g) = self.backward_record(grad_out, layer)?;
        let dxhat = g.broadcast_mul(&self.gamma.value)?;
        Ok((xhat, rstd, dxhat))
    }

    /// Records the output gradient (as `[B, S, C]`); returns `(x̂, rstd, G)`.
    fn backward_record(
        &mut self,
        grad_out: &Tensor,
        layer: &str,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (xhat, rstd) = match (&self.xhat, &self.rstd) {
            (Some(x), Some(r)) => (x.clone(), r.clone()),
            _ => {
                return Err(CoreError::MissingRecord {
                    layer: layer.to_string(),
                    what: "backward before forward(train=true)".into(),
                })
            }
        };
        let (b, s, c) = xhat.dims3()?;
        let g = grad_out.reshape((b, s, c))?;
        self.g = Some(g.clone());
        self.materialized = None;
        Ok((xhat, rstd, g))
    }

    /// The input's shape recorded by the last training forward pass.
    pub fn input_shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn params(&self) -> Vec<&Param> {
        vec![&self.gamma, &self.beta]
    }

    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        vec![&mut self.gamma, &mut self.beta]
    }

    pub fn clear(&mut self) {
        self.xhat = None;
        self.g = None;
        self.rstd = None;
        self.materialized = None;
    }

    /// Augmentation multiplicity: see `seq_linear::fold_examples`.
    pub fn group(&mut self, k: usize) -> Result<()> {
        if let (Some(x), Some(g)) = (&self.xhat, &self.g) {
            self.xhat = Some(super::seq_linear::fold_examples(x, k, false)?);
            self.g = Some(super::seq_linear::fold_examples(g, k, true)?);
        }
        self.materialized = None;
        Ok(())
    }

    /// The recorded `(x̂, G)` of the last training forward/backward pass.
    fn records(&self, layer: &str) -> Result<(Tensor, Tensor)> {
        let missing = |w: &str| CoreError::MissingRecord {
            layer: layer.to_string(),
            what: w.into(),
        };
        let xhat = self
            .xhat
            .clone()
            .ok_or_else(|| missing("no recorded input"))?;
        let g = self
            .g
            .clone()
            .ok_or_else(|| missing("no recorded output gradient"))?;
        Ok((xhat, g))
    }

    /// Per-example `(∂γ, ∂β, squared norms)` from the host kernel, or its cached result.
    fn host_materialized(&self, xhat: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        match &self.materialized {
            Some(m) => Ok(m.clone()),
            None => Ok(crate::kernels::norm::affine_per_sample(xhat, g)?),
        }
    }

    pub fn per_sample(&self, layer: &str) -> Result<Vec<Tensor>> {
        let (xhat, g) = self.records(layer)?;
        if crate::kernels::dispatch::applies(&[&xhat, &g]) {
            let (dg, db, _) = self.host_materialized(&xhat, &g)?;
            return Ok(vec![dg, db]);
        }
        Ok(vec![(&g * &xhat)?.sum(1)?, g.sum(1)?])
    }

    pub fn sq_norms(&mut self, layer: &str) -> Result<Tensor> {
        let (xhat, g) = self.records(layer)?;
        if crate::kernels::dispatch::applies(&[&xhat, &g]) {
            // Kept for the `weighted_sum` that follows.
            let m = self.host_materialized(&xhat, &g)?;
            let n = m.2.clone();
            self.materialized = Some(m);
            return Ok(n);
        }
        let v = self.per_sample(layer)?;
        Ok((v[0].sqr()?.sum(1)? + v[1].sqr()?.sum(1)?)?)
    }

    pub fn weighted_sum(&self, layer: &str, w: &Tensor) -> Result<Vec<Tensor>> {
        self.per_sample(layer)?
            .iter()
            .map(|t| weighted_sum_materialized(t, w))
            .collect()
    }
}

/// Implements `Layer::{params, params_mut, per_sample, clear}` and `PerSampleGrad` for a
/// normalisation layer whose `AffineNorm` is the field `norm`.
macro_rules! affine_norm_layer_impls {
    () => {
        fn params(&self) -> Vec<&Param> {
            self.norm.params()
        }
        fn params_mut(&mut self) -> Vec<&mut Param> {
            self.norm.params_mut()
        }
        fn per_sample(&mut self) -> Option<&mut dyn PerSampleGrad> {
            Some(self)
        }
        fn clear(&mut self) {
            self.norm.clear();
        }
    };
}

macro_rules! affine_norm_per_sample {
    ($t:ty) => {
        impl PerSampleGrad for $t {
            fn sq_norms(&mut self, _mode: GradMode) -> Result<Tensor> {
                self.norm.sq_norms(&self.name())
            }
            fn per_sample_grads(&mut self) -> Result<Vec<Tensor>> {
                self.norm.per_sample(&self.name())
            }
            fn weighted_sum(&mut self, weights: &Tensor) -> Result<Vec<Tensor>> {
                self.norm.weighted_sum(&self.name(), weights)
            }
            fn group_examples(&mut self, k: usize) -> Result<()> {
                self.norm.group(k)
            }
        }
    };
}

pub(crate) use {affine_norm_layer_impls, affine_norm_per_sample};
