//! Embedding table with a per-sample rule.

use super::seq_linear::weighted_sum_materialized;
use crate::error::{shape_err, CoreError, Result};
use crate::init::Init;
use crate::layer::{GradMode, Layer, Param, PerSampleGrad};
use candle_core::{DType, Device, Tensor};

/// Looks up rows of a `[V, D]` table for token ids `[B]` or `[B, T]` (u32, as f32-free
/// index tensors), giving `[B, D]` or `[B, T, D]`.
///
/// Per-example gradient: `Σ_t onehot(x_{i,t}) G_{i,t}ᵀ`. Its ghost norm is
/// `Σ_{t,t'} 1[x_{i,t} = x_{i,t'}] ⟨G_{i,t}, G_{i,t'}⟩` (Li et al. 2021, App. for
/// embeddings), which never forms the `[B, V, D]` tensor; the clipped sum is one
/// `index_add` of the weighted output gradients.
///
/// ```
/// use dp_core::layers::Embedding;
/// use dp_core::{Init, Layer};
/// use candle_core::{Device, Tensor};
/// let mut emb = Embedding::new(10, 4, &mut Init::seeded(0), &Device::Cpu).unwrap();
/// let ids = Tensor::new(&[[1u32, 2], [3, 3]], &Device::Cpu).unwrap();
/// assert_eq!(emb.forward(&ids, false).unwrap().dims(), &[2, 2, 4]);
/// ```
pub struct Embedding {
    weight: Param,
    ids: Option<Tensor>,
    g: Option<Tensor>,
    materialized: Option<Tensor>,
}

impl Embedding {
    /// A `vocab × dim` table (both ≥ 1) initialised `N(0, 1)` (PyTorch's default).
    pub fn new(vocab: usize, dim: usize, init: &mut Init, device: &Device) -> Result<Self> {
        // Checked before drawing: an empty table has no row to look up.
        if vocab == 0 || dim == 0 {
            return Err(CoreError::InvalidArgument(format!(
                "Embedding({vocab}×{dim}): vocabulary and dimension must be ≥ 1"
            )));
        }
        Self::from_tensors(init.normal(&[vocab, dim], 1.0, device)?)
    }

    /// A table with the given weight `[V, D]` (both ≥ 1; PyTorch's `nn.Embedding.weight`
    /// has this layout); a typed shape error otherwise.
    ///
    /// ```
    /// use dp_core::layers::Embedding;
    /// use candle_core::{DType, Device, Tensor};
    /// let w = Tensor::zeros((10, 4), DType::F32, &Device::Cpu).unwrap();
    /// assert!(Embedding::from_tensors(w).is_ok());
    /// let flat = Tensor::zeros(40, DType::F32, &Device::Cpu).unwrap();
    /// assert!(matches!(Embedding::from_tensors(flat), Err(dp_core::CoreError::Shape { .. })));
    /// ```
    pub fn from_tensors(weight: Tensor) -> Result<Self> {
        let d = weight.dims();
        if d.len() != 2 || d[0] == 0 || d[1] == 0 {
            return Err(shape_err("Embedding weight", "[V, D] with V, D ≥ 1", d));
        }
        Ok(Self {
            weight: Param::new("weight", weight),
            ids: None,
            g: None,
            materialized: None,
        })
    }

    fn record(&self) -> Result<(Tensor, Tensor)> {
        let missing = |w: &str| CoreError::MissingRecord {
            layer: self.name(),
            what: w.into(),
        };
        Ok((
            self.ids.clone().ok_or_else(|| missing("no recorded ids"))?,
            self.g
                .clone()
                .ok_or_else(|| missing("no recorded output gradient"))?,
        ))
    }
}

impl Layer for Embedding {
    fn name(&self) -> String {
        let d = self.weight.value.dims();
        format!("Embedding({}×{})", d[0], d[1])
    }

    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, t) = match x.dims() {
            [b] => (*b, 1),
            [b, t] => (*b, *t),
            d => return Err(shape_err(&self.name(), "[B] or [B, T] token ids", d)),
        };
        let ids = x.to_dtype(DType::U32)?.reshape((b, t))?;
        let v = self.weight.value.dim(0)? as u32;
        let max = ids
            .max_keepdim(1)?
            .max_keepdim(0)?
            .flatten_all()?
            .to_vec1::<u32>()?;
        if b > 0 && max.first().is_some_and(|m| *m >= v) {
            return Err(CoreError::InvalidArgument(format!(
                "token id {} out of range for a vocabulary of {v}",
                max[0]
            )));
        }
        let dim = self.weight.value.dim(1)?;
        let out = self.weight.value.index_select(&ids.flatten_all()?, 0)?;
        if train {
            self.ids = Some(ids);
            self.g = None;
            self.materialized = None;
        }
        Ok(if x.rank() == 1 {
            out.reshape((b, dim))?
        } else {
            out.reshape((b, t, dim))?
        })
    }

    fn backward(&mut self, grad_out: &Tensor, _need_input_grad: bool) -> Result<Option<Tensor>> {
        let ids = self.ids.as_ref().ok_or_else(|| CoreError::MissingRecord {
            layer: self.name(),
            what: "backward before forward(train=true)".into(),
        })?;
        let (b, t) = ids.dims2()?;
        let dim = self.weight.value.dim(1)?;
        self.g = Some(grad_out.reshape((b, t, dim))?);
        self.materialized = None;
        // Token ids are not differentiable.
        Ok(None)
    }

    fn params(&self) -> Vec<&Param> {
        vec![&self.weight]
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        vec![&mut self.weight]
    }

    fn per_sample(&mut self) -> Option<&mut dyn PerSampleGrad> {
        Some(self)
    }

    fn clear(&mut self) {
        self.ids = None;
        self.g = None;
        self.materialized = None;
    }
}

impl PerSampleGrad for Embedding {
    fn sq_norms(&mut self, mode: GradMode) -> Result<Tensor> {
        let (ids, g) = self.record()?;
        let (_b, t) = ids.dims2()?;
        let v = self.weight.value.dim(0)?;
        let ghost = match mode {
            GradMode::Ghost => true,
            GradMode::Materialize => false,
            // Materialising costs B·V·D memory; the ghost norm B·T²·D.
            GradMode::Auto => t * t < v,
        };
        if ghost {
            self.materialized = None;
            let gram = g.matmul(&g.t()?)?; // [B, T, T]
            let same = ids
                .unsqueeze(2)?
                .broadcast_eq(&ids.unsqueeze(1)?)?
                .to_dtype(gram.dtype())?;
            Ok((gram * same)?.sum((1, 2))?)
        } else {
            let m = self.per_sample_grads()?.remove(0);
            let n = m.sqr()?.flatten_from(1)?.sum(1)?;
            self.materialized = Some(m);
            Ok(n)
        }
    }

    fn per_sample_grads(&mut self) -> Result<Vec<Tensor>> {
        if let Some(m) = &self.materialized {
            return Ok(vec![m.clone()]);
        }
        let (ids, g) = self.record()?;
        let (b, t) = ids.dims2()?;
        let (v, dim) = self.weight.value.dims2()?;
        let offs: Vec<u32> = (0..b)
            .flat_map(|i| std::iter::repeat_n((i * v) as u32, t))
            .collect();
        let offs = Tensor::from_vec(offs, (b, t), ids.device())?;
        let rows = (ids + offs)?.flatten_all()?;
        let acc = Tensor::zeros((b * v, dim), g.dtype(), g.device())?;
        let m = acc.index_add(&rows, &g.reshape((b * t, dim))?, 0)?;
        Ok(vec![m.reshape((b, v, dim))?])
    }

    fn weighted_sum(&mut self, weights: &Tensor) -> Result<Vec<Tensor>> {
        if let Some(m) = &self.materialized {
            return Ok(vec![weighted_sum_materialized(m, weights)?]);
        }
        let (ids, g) = self.record()?;
        let (b, t) = ids.dims2()?;
        let (v, dim) = self.weight.value.dims2()?;
        let gw = g
            .broadcast_mul(&weights.to_dtype(g.dtype())?.reshape((b, 1, 1))?)?
            .reshape((b * t, dim))?;
        let acc = Tensor::zeros((v, dim), g.dtype(), g.device())?;
        Ok(vec![acc.index_add(&ids.flatten_all()?, &gw, 0)?])
    }

    fn group_examples(&mut self, k: usize) -> Result<()> {
        if let (Some(ids), Some(g)) = (&self.ids, &self.g) {
            self.ids = Some(super::seq_linear::fold_examples(ids, k, false)?);
            self.g = Some(super::seq_linear::fold_examples(g, k, true)?);
        }
        self.materialized = None;
        Ok(())
    }
}
