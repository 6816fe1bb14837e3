//! Layer normalisation (Ba et al. 2016) with hand-written backward.

use super::affine_norm::{affine_norm_layer_impls, affine_norm_per_sample, AffineNorm};
use super::norm_common::{normalize_last, normalize_last_backward};
use crate::error::Result;
use crate::layer::{GradMode, Layer, Param, PerSampleGrad};
use candle_core::{Device, Tensor};

/// Normalises each position's last axis (size `D`) to zero mean and unit variance, then
/// applies a learned gain and bias. Inputs `[B, D]` or `[B, ..., D]`.
///
/// candle's own `LayerNorm` silently returns no gradients on contiguous inputs (see
/// `shared/docs/candle-notes.md`); this layer computes them by hand and is tested
/// against finite differences.
///
/// ε is PyTorch's default, [`NORM_EPS`](crate::layers::NORM_EPS) = 1e-5, unless [`LayerNorm::with_eps`] sets
/// another; [`LayerNorm::from_tensors`] takes a trained gain and bias.
///
/// ```
/// use dp_core::layers::LayerNorm;
/// use dp_core::Layer;
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let mut ln = LayerNorm::new(4, &dev).unwrap();
/// let x = Tensor::new(&[[1f32, 2., 3., 4.]], &dev).unwrap();
/// let y = ln.forward(&x, false).unwrap().to_vec2::<f32>().unwrap();
/// assert!((y[0].iter().sum::<f32>()).abs() < 1e-5);
///
/// // A trained gain and bias, and a non-default ε.
/// let gamma = Tensor::new(&[2f32, 2., 2., 2.], &dev).unwrap();
/// let beta = Tensor::new(&[1f32, 1., 1., 1.], &dev).unwrap();
/// let mut ln = LayerNorm::from_tensors(gamma, beta).unwrap().with_eps(1e-6).unwrap();
/// let y = ln.forward(&x, false).unwrap().to_vec2::<f32>().unwrap();
/// assert!((y[0].iter().sum::<f32>() - 4.0).abs() < 1e-4); // Σ(2x̂ + 1) = 4
/// // Shapes and ε are checked.
/// assert!(LayerNorm::from_tensors(Tensor::ones(4, candle_core::DType::F32, &dev).unwrap(),
///     Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap()).is_err());
/// assert!(LayerNorm::new(4, &dev).unwrap().with_eps(0.0).is_err());
/// ```
pub struct LayerNorm {
    norm: AffineNorm,
}

impl LayerNorm {
    /// Normalises a last axis of `dim ≥ 1` values; gain 1, bias 0 (f32, on `device`).
    pub fn new(dim: usize, device: &Device) -> Result<Self> {
        Ok(Self {
            norm: AffineNorm::new(dim, device, &format!("LayerNorm({dim})"))?,
        })
    }

    /// The given gain `gamma` and bias `beta`, both `[D]` with `D ≥ 1` (PyTorch's
    /// `weight` and `bias`); a typed shape error otherwise.
    pub fn from_tensors(gamma: Tensor, beta: Tensor) -> Result<Self> {
        Ok(Self {
            norm: AffineNorm::from_tensors(gamma, beta, "LayerNorm")?,
        })
    }

    /// Sets ε (default [`NORM_EPS`](crate::layers::NORM_EPS)); it must be finite and > 0, also once rounded to f32.
    pub fn with_eps(mut self, eps: f64) -> Result<Self> {
        self.norm.set_eps(eps)?;
        Ok(self)
    }
}

impl Layer for LayerNorm {
    fn name(&self) -> String {
        format!("LayerNorm({})", self.norm.channels())
    }

    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x3 = self.norm.input(x, &self.name())?;
        let (b, s, d) = x3.dims3()?;
        if self.norm.host(&x3) {
            // Every position is its own normalisation row: [B·S, 1, D], one group.
            return self
                .norm
                .forward_host(&x3.reshape((b * s, 1, d))?, 1, x, train);
        }
        let (xhat, rstd) = normalize_last(&x3.reshape((b * s, d))?, self.norm.eps)?;
        self.norm.output(xhat.reshape((b, s, d))?, rstd, x, train)
    }

    fn backward(&mut self, grad_out: &Tensor, need_input_grad: bool) -> Result<Option<Tensor>> {
        let name = self.name();
        if self.norm.host(grad_out) {
            return self
                .norm
                .backward_host(grad_out, 1, true, need_input_grad, &name);
        }
        let (xhat, rstd, dxhat) = self.norm.backward(grad_out, &name)?;
        if !need_input_grad {
            return Ok(None);
        }
        let (b, s, d) = xhat.dims3()?;
        let dx = normalize_last_backward(
            &xhat.reshape((b * s, d))?,
            &rstd,
            &dxhat.reshape((b * s, d))?,
        )?;
        Ok(Some(dx.reshape(self.norm.input_shape())?))
    }

    affine_norm_layer_impls!();
}

affine_norm_per_sample!(LayerNorm);
