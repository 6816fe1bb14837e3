//! Group normalisation (Wu & He 2018), channels-last, with hand-written backward.

use super::affine_norm::AffineRecord;
use super::norm_common::{normalize_last, normalize_last_backward};
use crate::error::{shape_err, CoreError, Result};
use crate::layer::{GradMode, Layer, Param, PerSampleGrad};
use candle_core::{DType, Device, Tensor};

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
    gamma: Param,
    beta: Param,
    eps: f64,
    rstd: Option<Tensor>,
    shape: Vec<usize>,
    rec: AffineRecord,
}

impl GroupNorm {
    /// Gain 1, bias 0; `channels` must be divisible by `groups`.
    pub fn new(groups: usize, channels: usize, eps: f64, device: &Device) -> Result<Self> {
        if groups == 0 || channels % groups != 0 {
            return Err(CoreError::InvalidArgument(format!(
                "GroupNorm: {channels} channels cannot be split into {groups} groups"
            )));
        }
        Ok(Self {
            groups,
            gamma: Param::new("weight", Tensor::ones(channels, DType::F32, device)?),
            beta: Param::new("bias", Tensor::zeros(channels, DType::F32, device)?),
            eps,
            rstd: None,
            shape: Vec::new(),
            rec: AffineRecord::default(),
        })
    }

    /// Replaces the gain and bias (each `[C]`).
    pub fn with_affine(mut self, gamma: Tensor, beta: Tensor) -> Result<Self> {
        let d = self.gamma.value.dims().to_vec();
        if gamma.dims() != d.as_slice() || beta.dims() != d.as_slice() {
            return Err(shape_err(
                "GroupNorm affine",
                &format!("{d:?}"),
                gamma.dims(),
            ));
        }
        self.gamma.value = gamma;
        self.beta.value = beta;
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
        format!("GroupNorm({}, {})", self.groups, self.gamma.value.dims()[0])
    }

    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let c = self.gamma.value.dims()[0];
        let dims = x.dims().to_vec();
        if dims.len() < 2 || dims[dims.len() - 1] != c {
            return Err(shape_err(
                &self.name(),
                &format!("[B, ..., {c}] (channels-last)"),
                &dims,
            ));
        }
        let b = dims[0];
        let x3 = x.reshape((b, (), c))?;
        let s = x3.dim(1)?;
        let (xg, rstd) = normalize_last(&self.to_groups(&x3)?, self.eps)?;
        let xhat = self.ungroup(&xg, b, s, c)?;
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
        let (b, s, c) = xhat.dims3()?;
        let g = grad_out.reshape((b, s, c))?;
        self.rec.g = Some(g.clone());
        if !need_input_grad {
            return Ok(None);
        }
        let dxhat = self.to_groups(&g.broadcast_mul(&self.gamma.value)?)?;
        let dx = normalize_last_backward(&self.to_groups(&xhat)?, &rstd, &dxhat)?;
        Ok(Some(
            self.ungroup(&dx, b, s, c)?.reshape(self.shape.clone())?,
        ))
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

impl PerSampleGrad for GroupNorm {
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
