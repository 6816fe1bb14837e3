//! Layer normalisation (Ba et al. 2016) with hand-written backward.

use super::affine_norm::AffineRecord;
use super::norm_common::{normalize_last, normalize_last_backward};
use crate::error::{shape_err, CoreError, Result};
use crate::layer::{GradMode, Layer, Param, PerSampleGrad};
use candle_core::{DType, Device, Tensor};

/// Normalises each position's last axis (size `D`) to zero mean and unit variance, then
/// applies a learned gain and bias. Inputs `[B, D]` or `[B, ..., D]`.
///
/// candle's own `LayerNorm` silently returns no gradients on contiguous inputs (see
/// `shared/docs/candle-notes.md`); this layer computes them by hand and is tested
/// against finite differences.
///
/// ```
/// use dp_core::layers::LayerNorm;
/// use dp_core::Layer;
/// use candle_core::{Device, Tensor};
/// let mut ln = LayerNorm::new(4, 1e-5, &Device::Cpu).unwrap();
/// let x = Tensor::new(&[[1f32, 2., 3., 4.]], &Device::Cpu).unwrap();
/// let y = ln.forward(&x, false).unwrap().to_vec2::<f32>().unwrap();
/// assert!((y[0].iter().sum::<f32>()).abs() < 1e-5);
/// ```
pub struct LayerNorm {
    gamma: Param,
    beta: Param,
    eps: f64,
    rstd: Option<Tensor>,
    shape: Vec<usize>,
    rec: AffineRecord,
}

impl LayerNorm {
    /// Gain 1, bias 0.
    pub fn new(dim: usize, eps: f64, device: &Device) -> Result<Self> {
        Ok(Self {
            gamma: Param::new("weight", Tensor::ones(dim, DType::F32, device)?),
            beta: Param::new("bias", Tensor::zeros(dim, DType::F32, device)?),
            eps,
            rstd: None,
            shape: Vec::new(),
            rec: AffineRecord::default(),
        })
    }

    /// Replaces the gain and bias (each `[D]`).
    pub fn with_affine(mut self, gamma: Tensor, beta: Tensor) -> Result<Self> {
        let d = self.gamma.value.dims().to_vec();
        if gamma.dims() != d.as_slice() || beta.dims() != d.as_slice() {
            return Err(shape_err(
                "LayerNorm affine",
                &format!("{d:?}"),
                gamma.dims(),
            ));
        }
        self.gamma.value = gamma;
        self.beta.value = beta;
        Ok(self)
    }
}

impl Layer for LayerNorm {
    fn name(&self) -> String {
        format!("LayerNorm({})", self.gamma.value.dims()[0])
    }

    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let d = self.gamma.value.dims()[0];
        let dims = x.dims().to_vec();
        if dims.len() < 2 || dims[dims.len() - 1] != d {
            return Err(shape_err(&self.name(), &format!("[B, ..., {d}]"), &dims));
        }
        let b = dims[0];
        let x3 = x.reshape((b, (), d))?;
        let s = x3.dim(1)?;
        let (xhat, rstd) = normalize_last(&x3.reshape((b * s, d))?, self.eps)?;
        let xhat = xhat.reshape((b, s, d))?;
        let y = xhat
            .broadcast_mul(&self.gamma.value)?
            .broadcast_add(&self.beta.value)?;
        if train {
            self.rec.clear();
            self.rec.xhat = Some(xhat);
            self.rstd = Some(rstd);
            self.shape = dims.clone();
        }
        Ok(y.reshape(dims)?)
    }

    fn backward(&mut self, grad_out: &Tensor, need_input_grad: bool) -> Result<Option<Tensor>> {
        let (xhat, rstd) = match (&self.rec.xhat, &self.rstd) {
            (Some(x), Some(r)) => (x.clone(), r.clone()),
            _ => {
                return Err(CoreError::MissingRecord {
                    layer: self.name(),
                    what: "backward before forward(train=true)".into(),
                })
            }
        };
        let (b, s, d) = xhat.dims3()?;
        let g = grad_out.reshape((b, s, d))?;
        self.rec.g = Some(g.clone());
        if !need_input_grad {
            return Ok(None);
        }
        let dxhat = g.broadcast_mul(&self.gamma.value)?.reshape((b * s, d))?;
        let dx = normalize_last_backward(&xhat.reshape((b * s, d))?, &rstd, &dxhat)?;
        Ok(Some(dx.reshape(self.shape.clone())?))
    }

    fn params(&self) -> Vec<&Param> {
        vec![&self.gamma, &self.beta]
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        vec![&mut self.gamma, &mut self.beta]
    }

    fn per_sample(&mut self) -> Option<&mut dyn PerSampleGrad> {
        Some(self)
    }

    fn clear(&mut self) {
        self.rec.clear();
        self.rstd = None;
    }
}

impl PerSampleGrad for LayerNorm {
    fn sq_norms(&mut self, _mode: GradMode) -> Result<Tensor> {
        self.rec.sq_norms(&self.name())
    }
    fn per_sample_grads(&mut self) -> Result<Vec<Tensor>> {
        self.rec.per_sample(&self.name())
    }
    fn weighted_sum(&mut self, weights: &Tensor) -> Result<Vec<Tensor>> {
        self.rec.weighted_sum(&self.name(), weights)
    }
}
