//! 2-D convolution (channels-last) with a per-sample rule.

use super::seq_linear::{self, AscentOffsets, ExampleOffsets, SeqLinearRecord};
use crate::error::{shape_err, CoreError, Result};
use crate::init::Init;
use crate::layer::{GradMode, Layer, Param, PerSampleGrad};
use crate::patches::{PatchCache, PatchIndex, Window2d};
use candle_core::{Device, Tensor};

/// Hyper-parameters of a [`Conv2d`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel (height, width).
    pub kernel: (usize, usize),
    /// Stride (rows, cols).
    pub stride: (usize, usize),
    /// Zero padding (rows, cols).
    pub padding: (usize, usize),
    /// Dilation (rows, cols).
    pub dilation: (usize, usize),
    /// Channel groups (`in_channels` and `out_channels` must be divisible by it).
    pub groups: usize,
    /// Whether the layer has a bias.
    pub bias: bool,
}

impl Conv2dConfig {
    /// A square `k×k` convolution with stride 1, no padding, no dilation, one group, bias.
    pub fn new(in_channels: usize, out_channels: usize, k: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel: (k, k),
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
            bias: true,
        }
    }
    /// Sets a square stride.
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = (s, s);
        self
    }
    /// Sets a square padding.
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = (p, p);
        self
    }
    /// Sets a square dilation.
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = (d, d);
        self
    }
    /// Sets the number of groups.
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    /// Sets whether there is a bias.
    pub fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
    fn window(&self) -> Window2d {
        Window2d {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
        }
    }
}

/// Convolution on channels-last images `[B, H, W, C_in]` → `[B, H_out, W_out, C_out]`.
///
/// The weight has shape `[C_out, kh, kw, C_in/groups]` (channels-last kernel; a PyTorch
/// kernel `[C_out, C_in/g, kh, kw]` maps to it by `permute(0, 2, 3, 1)`).
///
/// The layer unfolds its input into patches `A_i` (`L × kh·kw·C_in/g` per example) and is
/// then a linear layer over a sequence of `L` positions: the per-example gradient is
/// `G_iᵀ A_i` (Opacus's conv grad sampler) and its ghost norm `⟨A_iA_iᵀ, G_iG_iᵀ⟩`; the
/// cheaper form is chosen per layer (Bu et al. 2022).
///
/// ```
/// use dp_core::layers::{Conv2d, Conv2dConfig};
/// use dp_core::{Init, Layer};
/// use candle_core::{DType, Device, Tensor};
/// let mut conv = Conv2d::new(Conv2dConfig::new(1, 4, 3).padding(1), &mut Init::seeded(0), &Device::Cpu).unwrap();
/// let x = Tensor::zeros((2, 8, 8, 1), DType::F32, &Device::Cpu).unwrap();
/// assert_eq!(conv.forward(&x, false).unwrap().dims(), &[2, 8, 8, 4]);
/// ```
pub struct Conv2d {
    cfg: Conv2dConfig,
    weight: Param,
    bias: Option<Param>,
    cache: PatchCache,
    index: Option<PatchIndex>,
    recs: Vec<SeqLinearRecord>,
    offsets: Option<ExampleOffsets>,
    /// BAM's factored ascent offsets, one per channel group.
    ascent: Option<Vec<AscentOffsets>>,
}

impl Conv2d {
    /// A convolution with PyTorch's default initialisation `U(±1/√fan_in)`.
    pub fn new(cfg: Conv2dConfig, init: &mut Init, device: &Device) -> Result<Self> {
        validate(&cfg)?;
        let cg = cfg.in_channels / cfg.groups;
        let fan_in = cg * cfg.kernel.0 * cfg.kernel.1;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let w = init.uniform(
            &[cfg.out_channels, cfg.kernel.0, cfg.kernel.1, cg],
            bound,
            device,
        )?;
        let b = if cfg.bias {
            Some(init.uniform(&[cfg.out_channels], bound, device)?)
        } else {
            None
        };
        Self::from_tensors(cfg, w, b)
    }

    /// A convolution with the given channels-last weight `[C_out, kh, kw, C_in/g]` and
    /// bias `[C_out]`, present exactly when `cfg.bias` is; a typed error otherwise. A
    /// PyTorch kernel `[C_out, C_in/g, kh, kw]` becomes this layout by `permute((0, 2, 3, 1))`.
    ///
    /// ```
    /// use dp_core::layers::{Conv2d, Conv2dConfig};
    /// use dp_core::CoreError;
    /// use candle_core::{DType, Device, Tensor};
    /// let dev = Device::Cpu;
    /// let cfg = Conv2dConfig::new(3, 8, 5).bias(false);
    /// let torch_w = Tensor::zeros((8, 3, 5, 5), DType::F32, &dev).unwrap(); // [O, I, kh, kw]
    /// let w = torch_w.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
    /// assert!(Conv2d::from_tensors(cfg, w.clone(), None).is_ok());
    /// assert!(matches!(Conv2d::from_tensors(cfg, torch_w, None), Err(CoreError::Shape { .. })));
    /// let b = Tensor::zeros(8, DType::F32, &dev).unwrap();
    /// assert!(Conv2d::from_tensors(cfg, w, Some(b)).is_err()); // cfg says no bias
    /// ```
    pub fn from_tensors(cfg: Conv2dConfig, weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        validate(&cfg)?;
        if cfg.bias != bias.is_some() {
            return Err(CoreError::InvalidArgument(format!(
                "Conv2d: the configuration says bias = {}, but a bias was {}given",
                cfg.bias,
                if bias.is_some() { "" } else { "not " }
            )));
        }
        let want = [
            cfg.out_channels,
            cfg.kernel.0,
            cfg.kernel.1,
            cfg.in_channels / cfg.groups,
        ];
        if weight.dims() != want {
            return Err(shape_err(
                "Conv2d weight",
                &format!("{want:?}"),
                weight.dims(),
            ));
        }
        if let Some(b) = &bias {
            if b.dims() != [cfg.out_channels] {
                return Err(shape_err(
                    "Conv2d bias",
                    &format!("[{}]", cfg.out_channels),
                    b.dims(),
                ));
            }
        }
        Ok(Self {
            cfg,
            weight: Param::new("weight", weight),
            bias: bias.map(|b| Param::new("bias", b)),
            cache: PatchCache::default(),
            index: None,
            recs: (0..cfg.groups)
                .map(|_| SeqLinearRecord::default())
                .collect(),
            offsets: None,
            ascent: None,
        })
    }

    /// The layer's configuration.
    pub fn config(&self) -> &Conv2dConfig {
        &self.cfg
    }

    fn group_weight(&self, g: usize) -> Result<Tensor> {
        let og = self.cfg.out_channels / self.cfg.groups;
        let w = self.weight.value.narrow(0, g * og, og)?;
        Ok(w.reshape((og, ()))?)
    }

    fn group_bias(&self, g: usize) -> Result<Option<Tensor>> {
        let og = self.cfg.out_channels / self.cfg.groups;
        Ok(match &self.bias {
            Some(b) => Some(b.value.narrow(0, g * og, og)?),
            None => None,
        })
    }
}

fn missing_weight_grad(layer: &str) -> CoreError {
    CoreError::MissingRecord {
        layer: layer.to_string(),
        what: "no weight gradient from the per-sample rule".into(),
    }
}

fn validate(cfg: &Conv2dConfig) -> Result<()> {
    // Zero channels would give fan-in 0, an infinite initialisation bound and an image
    // with rows of zero length.
    let bad = cfg.groups == 0
        || cfg.in_channels == 0
        || cfg.out_channels == 0
        || !cfg.in_channels.is_multiple_of(cfg.groups)
        || !cfg.out_channels.is_multiple_of(cfg.groups)
        || cfg.kernel.0 == 0
        || cfg.kernel.1 == 0
        || cfg.stride.0 == 0
        || cfg.stride.1 == 0
        || cfg.dilation.0 == 0
        || cfg.dilation.1 == 0;
    if bad {
        return Err(CoreError::InvalidArgument(format!(
            "invalid Conv2d configuration {cfg:?}: channels, kernel, stride, dilation and groups \
             must be positive and groups must divide both channel counts"
        )));
    }
    Ok(())
}

impl Layer for Conv2d {
    fn torch_layout(&self) -> crate::layer::TorchLayout {
        crate::layer::TorchLayout::ConvKernel
    }
    fn name(&self) -> String {
        format!(
            "Conv2d({}→{}, {}×{})",
            self.cfg.in_channels, self.cfg.out_channels, self.cfg.kernel.0, self.cfg.kernel.1
        )
    }

    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, h, w, c) = match x.dims() {
            [b, h, w, c] if *c == self.cfg.in_channels => (*b, *h, *w, *c),
            d => {
                return Err(shape_err(
                    &self.name(),
                    &format!("[B, H, W, {}] (channels-last)", self.cfg.in_channels),
                    d,
                ))
            }
        };
        let idx = self.cache.get(self.cfg.window(), h, w, x.device())?;
        let l = idx.positions();
        let k = idx.kernel_len;
        let cols = idx.unfold(x)?; // [B, L, k, C]
        let groups = self.cfg.groups;
        let cg = c / groups;
        if let Some(off) = &self.offsets {
            off.check_examples(b, &self.name())?;
        }
        if let Some(asc) = &self.ascent {
            for a in asc {
                a.check_examples(b, &self.name())?;
            }
        }
        let mut outs = Vec::with_capacity(groups);
        for g in 0..groups {
            let a = if groups == 1 {
                cols.reshape((b, l, k * c))?
            } else {
                cols.narrow(3, g * cg, cg)?
                    .contiguous()?
                    .reshape((b, l, k * cg))?
            };
            let wg = self.group_weight(g)?;
            let a2 = a.reshape((b * l, k * cg))?;
            let bias = self.group_bias(g)?;
            let y = if crate::kernels::dispatch::applies(&[&a2, &wg]) {
                crate::kernels::gemm::linear_forward(&a2, &wg, bias.as_ref())?
            } else {
                let y = a2.matmul(&wg.t()?)?;
                match &bias {
                    Some(bias) => y.broadcast_add(bias)?,
                    None => y,
                }
            };
            let y = match &self.offsets {
                Some(off) => {
                    let og = self.cfg.out_channels / groups;
                    let dy = off.narrow_outputs(g * og, og)?.forward(&a)?;
                    (y + dy.reshape((b * l, og))?)?
                }
                None => y,
            };
            let y = match &self.ascent {
                Some(asc) => {
                    let og = self.cfg.out_channels / groups;
                    (y + asc[g].forward(&a)?.reshape((b * l, og))?)?
                }
                None => y,
            };
            outs.push(y);
            if train {
                self.recs[g].clear();
                self.recs[g].a = Some(a);
            }
        }
        let y = if groups == 1 {
            outs.pop()
                .ok_or_else(|| CoreError::InvalidArgument("Conv2d with zero groups".into()))?
        } else {
            Tensor::cat(&outs, 1)?
        };
        if train {
            self.index = Some(idx.clone());
        }
        let (ho, wo) = idx.output;
        Ok(y.reshape((b, ho, wo, self.cfg.out_channels))?)
    }

    fn backward(&mut self, grad_out: &Tensor, need_input_grad: bool) -> Result<Option<Tensor>> {
        let idx = self.index.clone().ok_or_else(|| CoreError::MissingRecord {
            layer: self.name(),
            what: "backward before forward(train=true)".into(),
        })?;
        let b = grad_out.dim(0)?;
        let l = idx.positions();
        let k = idx.kernel_len;
        let groups = self.cfg.groups;
        let og = self.cfg.out_channels / groups;
        let cg = self.cfg.in_channels / groups;
        let g3 = grad_out.reshape((b, l, self.cfg.out_channels))?;
        let mut dcols = Vec::with_capacity(groups);
        for g in 0..groups {
            let gg = if groups == 1 {
                g3.clone()
            } else {
                g3.narrow(2, g * og, og)?.contiguous()?
            };
            self.recs[g].g = Some(gg.clone());
            self.recs[g].materialized = None;
            if need_input_grad {
                let wg = self.group_weight(g)?;
                let g2 = gg.reshape((b * l, og))?;
                let d = if crate::kernels::dispatch::applies(&[&g2, &wg]) {
                    crate::kernels::gemm::input_grad(&g2, &wg)?
                } else {
                    g2.matmul(&wg)?
                };
                let d = match &self.offsets {
                    Some(off) => {
                        let dd = off.narrow_outputs(g * og, og)?.input_grad(&gg)?;
                        (d.reshape((b, l, k * cg))? + dd)?
                    }
                    None => d,
                };
                let d = match &self.ascent {
                    Some(asc) => (d.reshape((b, l, k * cg))? + asc[g].input_grad(&gg)?)?,
                    None => d,
                };
                dcols.push(d.reshape((b, l, k, cg))?);
            }
        }
        if !need_input_grad {
            return Ok(None);
        }
        let d = if groups == 1 {
            dcols
                .pop()
                .ok_or_else(|| CoreError::InvalidArgument("Conv2d with zero groups".into()))?
        } else {
            Tensor::cat(&dcols, 3)?
        };
        Ok(Some(idx.fold(&d)?))
    }

    fn params(&self) -> Vec<&Param> {
        let mut v = vec![&self.weight];
        v.extend(self.bias.as_ref());
        v
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = vec![&mut self.weight];
        v.extend(self.bias.as_mut());
        v
    }

    fn per_sample(&mut self) -> Option<&mut dyn PerSampleGrad> {
        Some(self)
    }

    fn clear(&mut self) {
        self.index = None;
        self.recs.iter_mut().for_each(|r| r.clear());
        self.offsets = None;
        self.ascent = None;
    }
}

impl PerSampleGrad for Conv2d {
    fn sq_norms(&mut self, mode: GradMode) -> Result<Tensor> {
        let name = self.name();
        let bias = self.bias.is_some();
        let mut total: Option<Tensor> = None;
        for rec in self.recs.iter_mut() {
            let n = seq_linear::rule_sq_norms(rec, &name, mode, bias)?;
            total = Some(match total {
                Some(t) => (t + n)?,
                None => n,
            });
        }
        total.ok_or_else(|| CoreError::InvalidArgument("Conv2d with zero groups".into()))
    }

    fn per_sample_grads(&mut self) -> Result<Vec<Tensor>> {
        let name = self.name();
        let bias = self.bias.is_some();
        let mut ws = Vec::new();
        let mut bs = Vec::new();
        for rec in self.recs.iter_mut() {
            let mut v = seq_linear::rule_per_sample(rec, &name, bias)?.into_iter();
            ws.push(v.next().ok_or_else(|| missing_weight_grad(&name))?);
            bs.extend(v);
        }
        let w = Tensor::cat(&ws, 1)?; // [B, C_out, k·cg]
        let bsz = w.dim(0)?;
        let wd = self.weight.value.dims();
        let mut out = vec![w.reshape((bsz, wd[0], wd[1], wd[2], wd[3]))?];
        if bias {
            out.push(Tensor::cat(&bs, 1)?);
        }
        Ok(out)
    }

    fn weighted_sum(&mut self, weights: &Tensor) -> Result<Vec<Tensor>> {
        let name = self.name();
        let bias = self.bias.is_some();
        let mut ws = Vec::new();
        let mut bs = Vec::new();
        for rec in self.recs.iter_mut() {
            let mut v = seq_linear::rule_weighted_sum(rec, &name, weights, bias)?.into_iter();
            ws.push(v.next().ok_or_else(|| missing_weight_grad(&name))?);
            bs.extend(v);
        }
        let w = Tensor::cat(&ws, 0)?.reshape(self.weight.value.dims())?;
        let mut out = vec![w];
        if bias {
            out.push(Tensor::cat(&bs, 0)?);
        }
        Ok(out)
    }

    fn group_examples(&mut self, k: usize) -> Result<()> {
        self.recs.iter_mut().try_for_each(|r| r.group(k))
    }

    /// Offsets in the weight's channels-last layout `[B, C_out, kh, kw, C_in/g]` (what
    /// [`PerSampleGrad::per_sample_grads`] returns) and `[B, C_out]` for the bias.
    fn set_example_offsets(&mut self, offsets: Vec<Tensor>) -> Result<()> {
        let name = self.name();
        self.offsets = Some(ExampleOffsets::new(
            offsets,
            self.weight.value.dims(),
            self.bias.is_some(),
            &name,
        )?);
        self.ascent = None;
        Ok(())
    }

    fn supports_factored_ascent(&self) -> bool {
        true
    }

    fn begin_factored_ascent(&mut self, scales: &Tensor) -> Result<()> {
        let name = self.name();
        let bias = self.bias.is_some();
        let asc = self
            .recs
            .iter()
            .map(|rec| AscentOffsets::new(rec, &name, scales, bias, None))
            .collect::<Result<Vec<_>>>()?;
        self.ascent = Some(asc);
        self.offsets = None;
        Ok(())
    }

    fn mix_factored_ascent(&mut self, alpha: f64) -> Result<()> {
        let name = self.name();
        let asc = self.ascent.take().ok_or_else(|| CoreError::MissingRecord {
            layer: name.clone(),
            what: "no ascent offsets to mix (begin_factored_ascent first)".into(),
        })?;
        for (a, rec) in asc.into_iter().zip(self.recs.iter_mut()) {
            a.mix(rec, &name, alpha)?;
        }
        Ok(())
    }
}
