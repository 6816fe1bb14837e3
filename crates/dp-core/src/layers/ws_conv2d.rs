//! Weight-standardised 2-D convolution (Qiao et al. 2019's weight standardisation, as the
//! official code of Xiao et al., S&P 2023, defines it) with a per-sample rule.

use super::conv2d::{Conv2d, Conv2dConfig};
use crate::error::{CoreError, Result};
use crate::init::Init;
use crate::layer::{GradMode, Layer, Param, PerSampleGrad};
use candle_core::{Device, Tensor, D};

/// The stabiliser added to each filter's standard deviation (the official code's `1e-6`).
pub const WS_EPS: f64 = 1e-6;

/// A [`Conv2d`] whose kernel is standardised per output filter before every use:
/// `Ŵ_o = (W_o − mean(W_o)) / ((std(W_o) + 1e-6)·√n)`, with `n = kh·kw·C_in/g` the filter's
/// size and `std` the unbiased (`n − 1`) standard deviation — the definition of
/// `datasets/norm_layer.py::Conv2d` in the official code of Xiao et al. (S&P 2023), whose
/// theory asks for stronger normalisation inside the model. The trainable parameter is the
/// raw `W` (the bias, if any, is not standardised).
///
/// **Per-sample rule.** `Ŵ` is a function of the public `W` alone, so its Jacobian `J` is
/// shared by all examples and `∇_W ℓ_i = Jᵀ ∇_Ŵ ℓ_i`: the inner convolution's per-example
/// gradient with respect to `Ŵ`, mapped filter by filter through
/// `Jᵀg = a(g − mean(g)) − c·u·⟨g, u⟩`, where `u = W_o − mean(W_o)`, `a = 1/((s+ε)√n)` and
/// `c = a/((s+ε)(n−1)s)`. Norms need the mapped gradients (no ghost norm through `J`),
/// so they are materialised; the clipped sum uses linearity, `Σ_i w_i Jᵀg_i = Jᵀ Σ_i w_i g_i`
/// (book-keeping through the inner layer, one `Jᵀ` per step).
///
/// ```
/// use dp_core::layers::{Conv2dConfig, WsConv2d};
/// use dp_core::{Init, Layer};
/// use candle_core::{DType, Device, Tensor};
/// let mut conv = WsConv2d::new(Conv2dConfig::new(1, 4, 3).padding(1).bias(false), &mut Init::seeded(0), &Device::Cpu).unwrap();
/// let x = Tensor::ones((2, 8, 8, 1), DType::F32, &Device::Cpu).unwrap();
/// assert_eq!(conv.forward(&x, false).unwrap().dims(), &[2, 8, 8, 4]);
/// // Each standardised filter has mean 0 and ‖Ŵ_o‖² = (n−1)/n·s²/(s+ε)² ≈ 8/9.
/// let w = conv.standardized_weight().unwrap().reshape((4, 9)).unwrap();
/// let sq: Vec<f32> = w.sqr().unwrap().sum(1).unwrap().to_vec1().unwrap();
/// assert!(sq.iter().all(|v| (v - 8.0 / 9.0).abs() < 1e-4));
/// ```
pub struct WsConv2d {
    weight: Param,
    inner: Conv2d,
    /// `(u, a, c)` of the last training forward pass (`[C_out, n]`, `[C_out, 1]` twice).
    jac: Option<(Tensor, Tensor, Tensor)>,
}

impl WsConv2d {
    /// A standardised convolution with PyTorch's default initialisation of the raw `W`.
    pub fn new(cfg: Conv2dConfig, init: &mut Init, device: &Device) -> Result<Self> {
        Self::standardizing(Conv2d::new(cfg, init, device)?)
    }

    /// A standardised convolution whose raw (unstandardised) weight is `weight`, in
    /// [`Conv2d::from_tensors`]'s layout `[C_out, kh, kw, C_in/g]`, with bias `[C_out]`
    /// present exactly when `cfg.bias` is; a typed error otherwise, or if a filter has
    /// fewer than 2 values (its standard deviation would be undefined).
    ///
    /// ```
    /// use dp_core::layers::{Conv2dConfig, WsConv2d};
    /// use candle_core::{Device, Tensor};
    /// let cfg = Conv2dConfig::new(1, 2, 2).bias(false);
    /// let w = Tensor::new(&[1f32, 2., 3., 4., 0., 0., 0., 1.], &Device::Cpu).unwrap().reshape((2, 2, 2, 1)).unwrap();
    /// let ws = WsConv2d::from_tensors(cfg, w, None).unwrap();
    /// let m: Vec<f32> = ws.standardized_weight().unwrap().reshape((2, 4)).unwrap().mean(1).unwrap().to_vec1().unwrap();
    /// assert!(m.iter().all(|v| v.abs() < 1e-6)); // every standardised filter has mean 0
    /// ```
    pub fn from_tensors(cfg: Conv2dConfig, weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Self::standardizing(Conv2d::from_tensors(cfg, weight, bias)?)
    }

    /// Standardises the kernel of `conv` (its weight becomes the raw `W`).
    fn standardizing(conv: Conv2d) -> Result<Self> {
        let w = conv.params()[0].value.clone();
        let n: usize = w.dims()[1..].iter().product();
        if n < 2 {
            return Err(CoreError::InvalidArgument(format!(
                "weight standardisation needs filters of at least 2 values, got {n}"
            )));
        }
        Ok(Self {
            weight: Param::new("weight", w),
            inner: conv,
            jac: None,
        })
    }

    /// The layer's configuration.
    pub fn config(&self) -> &Conv2dConfig {
        self.inner.config()
    }

    /// `Ŵ` for the current raw weight, in the kernel layout `[C_out, kh, kw, C_in/g]`.
    pub fn standardized_weight(&self) -> Result<Tensor> {
        Ok(self.standardize()?.0)
    }

    /// `(Ŵ, u, a, c)`.
    fn standardize(&self) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let w = &self.weight.value;
        let o = w.dims()[0];
        let w2 = w.reshape((o, ()))?;
        let n = w2.dim(1)? as f64;
        let u = w2.broadcast_sub(&w2.mean_keepdim(D::Minus1)?)?;
        let s = (u.sqr()?.sum_keepdim(D::Minus1)? / (n - 1.0))?.sqrt()?;
        let s_eps = (&s + WS_EPS)?;
        let a = (s_eps.clone() * n.sqrt())?.recip()?;
        // A constant filter (s = 0) has no derivative of s; the floor keeps c finite.
        let s_floor = s.maximum(1e-30)?;
        let c = a.div(&((s_eps * (n - 1.0))? * s_floor)?)?;
        let what = u.broadcast_mul(&a)?.reshape(w.dims())?;
        Ok((what, u, a, c))
    }

    /// `Jᵀ g` for gradients `g` with respect to `Ŵ`, shape `[..., C_out, kh, kw, C_in/g]`.
    fn jacobian_t(&self, g: &Tensor) -> Result<Tensor> {
        let (u, a, c) = self.jac.as_ref().ok_or_else(|| CoreError::MissingRecord {
            layer: self.name(),
            what: "per-sample rule before forward(train=true)".into(),
        })?;
        let dims = g.dims().to_vec();
        let lead = dims.len() - 3;
        // `[..., C_out, n]`.
        let mut shape = dims[..lead - 1].to_vec();
        shape.push(u.dim(0)?);
        shape.push(u.dim(1)?);
        let g = g.reshape(shape)?;
        let gm = g.mean_keepdim(D::Minus1)?;
        let gu = g.broadcast_mul(u)?.sum_keepdim(D::Minus1)?;
        let first = g.broadcast_sub(&gm)?.broadcast_mul(a)?;
        let second = u.broadcast_mul(c)?.broadcast_mul(&gu)?;
        Ok((first - second)?.reshape(dims)?)
    }
}

impl Layer for WsConv2d {
    fn torch_layout(&self) -> crate::layer::TorchLayout {
        crate::layer::TorchLayout::ConvKernel
    }
    fn name(&self) -> String {
        let c = self.inner.config();
        format!(
            "WsConv2d({}→{}, {}×{})",
            c.in_channels, c.out_channels, c.kernel.0, c.kernel.1
        )
    }

    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (what, u, a, c) = self.standardize()?;
        self.inner.params_mut()[0].value = what;
        if train {
            self.jac = Some((u, a, c));
        }
        self.inner.forward(x, train)
    }

    fn backward(&mut self, grad_out: &Tensor, need_input_grad: bool) -> Result<Option<Tensor>> {
        self.inner.backward(grad_out, need_input_grad)
    }

    fn params(&self) -> Vec<&Param> {
        let mut v = vec![&self.weight];
        v.extend(self.inner.params().into_iter().skip(1));
        v
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = vec![&mut self.weight];
        v.extend(self.inner.params_mut().into_iter().skip(1));
        v
    }

    fn per_sample(&mut self) -> Option<&mut dyn PerSampleGrad> {
        Some(self)
    }

    fn clear(&mut self) {
        self.inner.clear();
        self.jac = None;
    }
}

impl PerSampleGrad for WsConv2d {
    fn sq_norms(&mut self, _mode: GradMode) -> Result<Tensor> {
        let grads = self.per_sample_grads()?;
        let mut total: Option<Tensor> = None;
        for g in grads {
            let b = g.dim(0)?;
            let n = g.reshape((b, ()))?.sqr()?.sum(1)?;
            total = Some(match total {
                Some(t) => (t + n)?,
                None => n,
            });
        }
        total.ok_or_else(|| CoreError::InvalidArgument("WsConv2d without parameters".into()))
    }

    fn per_sample_grads(&mut self) -> Result<Vec<Tensor>> {
        let mut v = self.inner.per_sample_grads()?;
        v[0] = self.jacobian_t(&v[0])?;
        Ok(v)
    }

    fn weighted_sum(&mut self, weights: &Tensor) -> Result<Vec<Tensor>> {
        let mut v = self.inner.weighted_sum(weights)?;
        v[0] = self.jacobian_t(&v[0])?;
        Ok(v)
    }

    fn group_examples(&mut self, k: usize) -> Result<()> {
        // J is shared, so the mean of Jᵀg over a group is Jᵀ of the inner mean.
        self.inner.group_examples(k)
    }
}
