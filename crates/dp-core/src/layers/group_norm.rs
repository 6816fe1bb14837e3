//! Group normalisation (Wu & He 2018), channels-last, with hand-written backward.

use super::affine_norm::{affine_norm_layer_impls, affine_norm_per_sample, AffineNorm};
use super::norm_common::{
    check_eps, check_groups, normalize_last, normalize_last_backward, NORM_EPS,
};
use crate::error::{CoreError, Result};
use crate::layer::{GradMode, Layer, Param, PerSampleGrad};
use candle_core::{Device, Tensor};

/// Splits the channel (last) axis into `groups` groups and normalises each example's
/// group over all its positions and channels, then applies a per-channel gain and bias.
/// Inputs `[B, C]`, `[B, T, C]` or `[B, H, W, C]`. Unlike BatchNorm it never mixes
/// examples, which is why DP models use it (Opacus replaces BatchNorm by it).
///
/// ε is PyTorch's default, [`NORM_EPS`](crate::layers::NORM_EPS) = 1e-5, unless
/// [`GroupNorm::with_eps`] sets another; [`GroupNorm::from_tensors`] takes a trained gain
/// and bias.
///
/// ```
/// use dp_core::layers::GroupNorm;
/// use dp_core::Layer;
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let mut gn = GroupNorm::new(2, 4, &dev).unwrap();
/// let x = Tensor::rand(0f32, 1., (3, 5, 5, 4), &dev).unwrap();
/// assert_eq!(gn.forward(&x, false).unwrap().dims(), &[3, 5, 5, 4]);
///
/// // PyTorch's `nn.GroupNorm(2, 4, eps=1e-6)` with its trained `weight` and `bias`:
/// let (gamma, beta) = (Tensor::ones(4, DType::F32, &dev).unwrap(), Tensor::zeros(4, DType::F32, &dev).unwrap());
/// let gn = GroupNorm::from_tensors(2, gamma.clone(), beta.clone()).unwrap().with_eps(1e-6).unwrap();
/// assert_eq!(gn.params().len(), 2);
/// assert!(GroupNorm::from_tensors(3, gamma, beta).is_err()); // 4 channels, 3 groups
/// ```
pub struct GroupNorm {
    groups: usize,
    norm: AffineNorm,
}

impl GroupNorm {
    /// `channels` (≥ 1) split into `groups` equal groups; gain 1, bias 0 (f32, on
    /// `device`).
    pub fn new(groups: usize, channels: usize, device: &Device) -> Result<Self> {
        check_groups(groups, channels)?;
        Ok(Self {
            groups,
            norm: AffineNorm::new(
                channels,
                device,
                &format!("GroupNorm({groups}, {channels})"),
            )?,
        })
    }

    /// `groups` groups over the channels of the given gain `gamma` and bias `beta`, both
    /// `[C]` (PyTorch's `weight` and `bias`); `groups` must divide `C`. A typed error
    /// otherwise.
    pub fn from_tensors(groups: usize, gamma: Tensor, beta: Tensor) -> Result<Self> {
        let norm = AffineNorm::from_tensors(gamma, beta, "GroupNorm")?;
        check_groups(groups, norm.channels())?;
        Ok(Self { groups, norm })
    }

    /// Sets ε (default [`NORM_EPS`](crate::layers::NORM_EPS)); it must be finite and > 0,
    /// also once rounded to f32.
    pub fn with_eps(mut self, eps: f64) -> Result<Self> {
        self.norm.set_eps(eps)?;
        Ok(self)
    }

    /// `[B, S, C]` → `[B·G, S·C/G]` (one row per example and group).
    fn to_groups(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s, c) = x.dims3()?;
        let cg = c / self.groups;
        Ok(x.reshape((b, s, self.groups, cg))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * self.groups, s * cg))?)
    }

    /// The inverse of [`GroupNorm::to_groups`].
    fn ungroup(&self, x: &Tensor, b: usize, s: usize, c: usize) -> Result<Tensor> {
        let cg = c / self.groups;
        Ok(x.reshape((b, self.groups, s, cg))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, s, c))?)
    }
}

impl Layer for GroupNorm {
    fn name(&self) -> String {
        format!("GroupNorm({}, {})", self.groups, self.norm.channels())
    }

    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x3 = self.norm.input(x, &self.name())?;
        if self.norm.host(&x3) {
            return self.norm.forward_host(&x3, self.groups, x, train);
        }
        let (b, s, c) = x3.dims3()?;
        let (xg, rstd) = normalize_last(&self.to_groups(&x3)?, self.norm.eps)?;
        let xhat = self.ungroup(&xg, b, s, c)?;
        self.norm.output(xhat, rstd, x, train)
    }

    fn backward(&mut self, grad_out: &Tensor, need_input_grad: bool) -> Result<Option<Tensor>> {
        let name = self.name();
        if self.norm.host(grad_out) {
            return self
                .norm
                .backward_host(grad_out, self.groups, false, need_input_grad, &name);
        }
        let (xhat, rstd, dxhat) = self.norm.backward(grad_out, &name)?;
        if !need_input_grad {
            return Ok(None);
        }
        let (b, s, c) = xhat.dims3()?;
        let dx = normalize_last_backward(&self.to_groups(&xhat)?, &rstd, &self.to_groups(&dxhat)?)?;
        Ok(Some(
            self.ungroup(&dx, b, s, c)?
                .reshape(self.norm.input_shape())?,
        ))
    }

    affine_norm_layer_impls!();
}

affine_norm_per_sample!(GroupNorm);

/// GroupNorm **without** the learned gain and bias (PyTorch's `affine=False`): each
/// example's group is normalised over its positions and channels and nothing else, so the
/// layer has no parameters and needs no per-sample rule. The official code of Xiao et al.
/// (S&P 2023) uses it in its ResNet-20 (`nn.GroupNorm(min(4, C), C, affine=False)`).
/// Inputs `[B, C]`, `[B, T, C]` or `[B, H, W, C]`.
///
/// ε is [`NORM_EPS`](crate::layers::NORM_EPS) unless [`NonAffineGroupNorm::with_eps`]
/// sets another.
///
/// ```
/// use dp_core::layers::NonAffineGroupNorm;
/// use dp_core::Layer;
/// use candle_core::{Device, Tensor};
/// let mut gn = NonAffineGroupNorm::new(2, 4).unwrap();
/// let x = Tensor::rand(0f32, 1., (3, 5, 5, 4), &Device::Cpu).unwrap();
/// assert_eq!(gn.forward(&x, false).unwrap().dims(), &[3, 5, 5, 4]);
/// assert!(gn.params().is_empty());
/// assert!(NonAffineGroupNorm::new(2, 4).unwrap().with_eps(f64::NAN).is_err());
/// ```
pub struct NonAffineGroupNorm {
    groups: usize,
    channels: usize,
    eps: f64,
    /// `(x̂ grouped [B·G, S·C/G], rstd, input shape)` of the last training pass.
    record: Option<(Tensor, Tensor, Vec<usize>)>,
}

impl NonAffineGroupNorm {
    /// `channels` (≥ 1) split into `groups` equal groups. No parameters, so no device.
    pub fn new(groups: usize, channels: usize) -> Result<Self> {
        check_groups(groups, channels)?;
        Ok(Self {
            groups,
            channels,
            eps: NORM_EPS,
            record: None,
        })
    }

    /// Sets ε (default [`NORM_EPS`]); it must be finite and > 0, also once rounded to f32.
    pub fn with_eps(mut self, eps: f64) -> Result<Self> {
        self.eps = check_eps(eps)?;
        Ok(self)
    }

    /// `[B, S, C]` → `[B·G, S·C/G]`.
    fn to_groups(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s, c) = x.dims3()?;
        let cg = c / self.groups;
        Ok(x.reshape((b, s, self.groups, cg))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * self.groups, s * cg))?)
    }

    /// `[B·G, S·C/G]` → the input's shape.
    fn ungroup(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        let b = shape[0];
        let c = self.channels;
        let cg = c / self.groups;
        let s = x.elem_count() / (b * c);
        Ok(x.reshape((b, self.groups, s, cg))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape(shape)?)
    }
}

impl Layer for NonAffineGroupNorm {
    fn name(&self) -> String {
        format!("NonAffineGroupNorm({}, {})", self.groups, self.channels)
    }

    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        if dims.len() < 2 || dims[dims.len() - 1] != self.channels {
            return Err(crate::error::shape_err(
                &self.name(),
                &format!("[B, ..., {}] (channels last)", self.channels),
                &dims,
            ));
        }
        let x3 = x.reshape((dims[0], (), self.channels))?;
        let (xg, rstd) = normalize_last(&self.to_groups(&x3)?, self.eps)?;
        let y = self.ungroup(&xg, &dims)?;
        if train {
            self.record = Some((xg, rstd, dims));
        }
        Ok(y)
    }

    fn backward(&mut self, grad_out: &Tensor, need_input_grad: bool) -> Result<Option<Tensor>> {
        let (xg, rstd, dims) = self
            .record
            .clone()
            .ok_or_else(|| CoreError::MissingRecord {
                layer: self.name(),
                what: "backward before forward(train=true)".into(),
            })?;
        if !need_input_grad {
            return Ok(None);
        }
        let g3 = grad_out.reshape((dims[0], (), self.channels))?;
        let dx = normalize_last_backward(&xg, &rstd, &self.to_groups(&g3)?)?;
        Ok(Some(self.ungroup(&dx, &dims)?))
    }

    fn clear(&mut self) {
        self.record = None;
    }
}
