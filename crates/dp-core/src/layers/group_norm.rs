//! Group normalisation (Wu & He 2018), channels-last, with hand-written backward.

use super::affine_norm::{affine_norm_layer_impls, affine_norm_per_sample, AffineNorm};
use super::norm_common::{normalize_last, normalize_last_backward};
use crate::error::{CoreError, Result};
use crate::layer::{GradMode, Layer, Param, PerSampleGrad};
use candle_core::{Device, Tensor};

/// Splits the channel (last) axis into `groups` groups and normalises each example's
/// group over all its positions and channels, then applies a per-channel gain and bias.
/// Inputs `[B, C]`, `[B, T, C]` or `[B, H, W, C]`. Unlike BatchNorm it never mixes
/// examples, which is why DP models use it (Opacus replaces BatchNorm by it).
///
/// ```
/// use dp_core::layers::GroupNorm;
/// use dp_core::Layer;
/// use candle_core::{DType, Device, Tensor};
/// let mut gn = GroupNorm::new(2, 4, 1e-5, &Device::Cpu).unwrap();
/// let x = Tensor::rand(0f32, 1., (3, 5, 5, 4), &Device::Cpu).unwrap();
/// assert_eq!(gn.forward(&x, false).unwrap().dims(), &[3, 5, 5, 4]);
/// ```
pub struct GroupNorm {
    groups: usize,
    norm: AffineNorm,
}

impl GroupNorm {
    /// Gain 1, bias 0; `channels` must be divisible by `groups`, and `eps` finite and > 0
    /// (also once rounded to f32).
    pub fn new(groups: usize, channels: usize, eps: f64, device: &Device) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(CoreError::InvalidArgument(format!(
                "GroupNorm: {channels} channels cannot be split into {groups} groups"
            )));
        }
        Ok(Self {
            groups,
            norm: AffineNorm::new(channels, eps, device)?,
        })
    }

    /// Replaces the gain and bias (each `[C]`).
    pub fn with_affine(mut self, gamma: Tensor, beta: Tensor) -> Result<Self> {
        let name = self.name();
        self.norm.set_affine(gamma, beta, &name)?;
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
/// ```
/// use dp_core::layers::NonAffineGroupNorm;
/// use dp_core::Layer;
/// use candle_core::{Device, Tensor};
/// let mut gn = NonAffineGroupNorm::new(2, 4, 1e-5).unwrap();
/// let x = Tensor::rand(0f32, 1., (3, 5, 5, 4), &Device::Cpu).unwrap();
/// assert_eq!(gn.forward(&x, false).unwrap().dims(), &[3, 5, 5, 4]);
/// assert!(gn.params().is_empty());
/// ```
pub struct NonAffineGroupNorm {
    groups: usize,
    channels: usize,
    eps: f64,
    /// `(x̂ grouped [B·G, S·C/G], rstd, input shape)` of the last training pass.
    record: Option<(Tensor, Tensor, Vec<usize>)>,
}

impl NonAffineGroupNorm {
    /// `channels` must be divisible by `groups`; `eps` finite and > 0 (also in f32).
    pub fn new(groups: usize, channels: usize, eps: f64) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(CoreError::InvalidArgument(format!(
                "GroupNorm: {channels} channels cannot be split into {groups} groups"
            )));
        }
        let e = eps as f32;
        if !(eps.is_finite() && e > 0.0 && e.is_finite()) {
            return Err(CoreError::InvalidArgument(format!(
                "normalisation eps {eps} must be finite and > 0 (in f32 too)"
            )));
        }
        Ok(Self {
            groups,
            channels,
            eps,
            record: None,
        })
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
