//! Fully connected layer with a per-sample rule (ghost norm or materialised).

use super::seq_linear::{self, AscentOffsets, ExampleOffsets, SeqLinearRecord};
use crate::error::{shape_err, Result};
use crate::init::Init;
use crate::layer::{GradMode, Layer, Param, PerSampleGrad};
use candle_core::{Device, Tensor};

/// `y = x Wᵀ + b` on inputs `[B, in]` or `[B, T, in]` (a sequence of `T` positions per
/// example; the per-example gradient sums over positions).
///
/// ```
/// use dp_core::layers::Linear;
/// use dp_core::{Init, Layer};
/// use candle_core::{Device, Tensor};
/// let mut init = Init::seeded(0);
/// let mut lin = Linear::new(3, 2, true, &mut init, &Device::Cpu).unwrap();
/// let x = Tensor::ones((4, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
/// let y = lin.forward(&x, false).unwrap();
/// assert_eq!(y.dims(), &[4, 2]);
/// ```
pub struct Linear {
    weight: Param,
    bias: Option<Param>,
    rec: SeqLinearRecord,
    input_rank: usize,
    offsets: Option<ExampleOffsets>,
    ascent: Option<AscentOffsets>,
}

impl Linear {
    /// A layer with PyTorch's default initialisation `U(±1/√in)`; both sizes must be ≥ 1.
    pub fn new(
        in_features: usize,
        out_features: usize,
        bias: bool,
        init: &mut Init,
        device: &Device,
    ) -> Result<Self> {
        // No inputs would make the bound 1/√0 = ∞ (rand panics on it), no outputs a layer
        // with nothing to train: both are refused.
        if in_features == 0 || out_features == 0 {
            return Err(crate::error::CoreError::InvalidArgument(format!(
                "Linear({in_features}→{out_features}): both sizes must be ≥ 1"
            )));
        }
        let bound = 1.0 / (in_features as f64).sqrt();
        let w = init.uniform(&[out_features, in_features], bound, device)?;
        let b = if bias {
            Some(init.uniform(&[out_features], bound, device)?)
        } else {
            None
        };
        Self::from_tensors(w, b)
    }

    /// A layer with the given weight `[out, in]` (both ≥ 1; PyTorch's `nn.Linear.weight`
    /// has this layout) and optional bias `[out]`; a typed shape error otherwise.
    ///
    /// ```
    /// use dp_core::layers::Linear;
    /// use dp_core::{CoreError, Layer};
    /// use candle_core::{DType, Device, Tensor};
    /// let dev = Device::Cpu;
    /// let w = Tensor::new(&[[1f32, 0., 0.], [0., 1., 1.]], &dev).unwrap();
    /// let b = Tensor::new(&[0.5f32, -0.5], &dev).unwrap();
    /// let mut lin = Linear::from_tensors(w.clone(), Some(b)).unwrap();
    /// let y = lin.forward(&Tensor::new(&[[1f32, 2., 3.]], &dev).unwrap(), false).unwrap();
    /// assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![1.5, 4.5]]);
    /// let short = Tensor::zeros(3, DType::F32, &dev).unwrap(); // needs [2]
    /// assert!(matches!(Linear::from_tensors(w, Some(short)), Err(CoreError::Shape { .. })));
    /// ```
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let d = weight.dims();
        if d.len() != 2 || d[0] == 0 || d[1] == 0 {
            return Err(shape_err("Linear weight", "[out, in] with out, in ≥ 1", d));
        }
        let out = d[0];
        if let Some(b) = &bias {
            if b.dims() != [out] {
                return Err(shape_err("Linear bias", &format!("[{out}]"), b.dims()));
            }
        }
        Ok(Self {
            weight: Param::new("weight", weight),
            bias: bias.map(|b| Param::new("bias", b)),
            rec: SeqLinearRecord::default(),
            input_rank: 2,
            offsets: None,
            ascent: None,
        })
    }

    fn in_features(&self) -> usize {
        self.weight.value.dims()[1]
    }
}

impl Layer for Linear {
    fn name(&self) -> String {
        let d = self.weight.value.dims();
        format!("Linear({}→{})", d[1], d[0])
    }

    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let p = self.in_features();
        let (b, t) = match x.dims() {
            [b, i] if *i == p => (*b, 1),
            [b, t, i] if *i == p => (*b, *t),
            d => {
                return Err(shape_err(
                    &self.name(),
                    &format!("[B, {p}] or [B, T, {p}]"),
                    d,
                ))
            }
        };
        self.input_rank = x.rank();
        let x3 = x.reshape((b, t, p))?;
        let x2 = x3.reshape((b * t, p))?;
        let bias = self.bias.as_ref().map(|b| &b.value);
        let y = if crate::kernels::dispatch::applies(&[&x2, &self.weight.value]) {
            crate::kernels::gemm::linear_forward(&x2, &self.weight.value, bias)?
        } else {
            let y = x2.matmul(&self.weight.value.t()?)?;
            match bias {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            }
        };
        let r = self.weight.value.dims()[0];
        let y = match &self.offsets {
            Some(off) => {
                off.check_examples(b, &self.name())?;
                (y.reshape((b, t, r))? + off.forward(&x3)?)?.reshape((b * t, r))?
            }
            None => y,
        };
        let y = match &self.ascent {
            Some(asc) => {
                asc.check_examples(b, &self.name())?;
                (y.reshape((b, t, r))? + asc.forward(&x3)?)?.reshape((b * t, r))?
            }
            None => y,
        };
        if train {
            self.rec.clear();
            self.rec.a = Some(x3);
        }
        Ok(if self.input_rank == 2 {
            y
        } else {
            y.reshape((b, t, r))?
        })
    }

    fn backward(&mut self, grad_out: &Tensor, need_input_grad: bool) -> Result<Option<Tensor>> {
        let a = self
            .rec
            .a
            .as_ref()
            .ok_or_else(|| crate::CoreError::MissingRecord {
                layer: self.name(),
                what: "backward before forward(train=true)".into(),
            })?;
        let (b, t, p) = a.dims3()?;
        let r = self.weight.value.dims()[0];
        let g3 = grad_out.reshape((b, t, r))?;
        self.rec.g = Some(g3.clone());
        self.rec.materialized = None;
        if !need_input_grad {
            return Ok(None);
        }
        let g2 = g3.reshape((b * t, r))?;
        let dx = if crate::kernels::dispatch::applies(&[&g2, &self.weight.value]) {
            crate::kernels::gemm::input_grad(&g2, &self.weight.value)?
        } else {
            g2.matmul(&self.weight.value)?
        };
        let dx = match &self.offsets {
            Some(off) => (dx.reshape((b, t, p))? + off.input_grad(&g3)?)?.reshape((b * t, p))?,
            None => dx,
        };
        let dx = match &self.ascent {
            Some(asc) => (dx.reshape((b, t, p))? + asc.input_grad(&g3)?)?.reshape((b * t, p))?,
            None => dx,
        };
        Ok(Some(if self.input_rank == 2 {
            dx
        } else {
            dx.reshape((b, t, p))?
        }))
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
        self.rec.clear();
        self.offsets = None;
        self.ascent = None;
    }
}

impl PerSampleGrad for Linear {
    fn sq_norms(&mut self, mode: GradMode) -> Result<Tensor> {
        let name = self.name();
        seq_linear::rule_sq_norms(&mut self.rec, &name, mode, self.bias.is_some())
    }

    fn per_sample_grads(&mut self) -> Result<Vec<Tensor>> {
        let name = self.name();
        seq_linear::rule_per_sample(&mut self.rec, &name, self.bias.is_some())
    }

    fn weighted_sum(&mut self, weights: &Tensor) -> Result<Vec<Tensor>> {
        let name = self.name();
        seq_linear::rule_weighted_sum(&mut self.rec, &name, weights, self.bias.is_some())
    }

    fn masked_sq_norms(&mut self, masks: &[Option<Tensor>]) -> Result<Tensor> {
        let name = self.name();
        seq_linear::rule_masked_sq_norms(&mut self.rec, &name, self.bias.is_some(), masks)
    }

    fn group_examples(&mut self, k: usize) -> Result<()> {
        self.rec.group(k)
    }

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
        self.ascent = Some(AscentOffsets::new(
            &self.rec,
            &name,
            scales,
            self.bias.is_some(),
            None,
        )?);
        self.offsets = None;
        Ok(())
    }

    fn mix_factored_ascent(&mut self, alpha: f64) -> Result<()> {
        let name = self.name();
        let asc = self
            .ascent
            .take()
            .ok_or_else(|| crate::CoreError::MissingRecord {
                layer: name.clone(),
                what: "no ascent offsets to mix (begin_factored_ascent first)".into(),
            })?;
        asc.mix(&mut self.rec, &name, alpha)
    }
}
