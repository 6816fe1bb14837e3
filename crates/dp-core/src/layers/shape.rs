//! Layers that only move data around: flattening and layout changes.

use crate::error::{shape_err, CoreError, Result};
use crate::layer::Layer;
use candle_core::Tensor;

/// `[B, ...]` → `[B, prod(...)]`.
///
/// The default keeps dp-core's memory order: a channels-last image `[B, H, W, C]` becomes
/// `(h, w, c)`-ordered features. PyTorch's `nn.Flatten` on `[B, C, H, W]` orders them
/// `(c, h, w)`, so a linear layer after it has its weight columns in another order:
/// [`Flatten::channels_first`] flattens images in PyTorch's order (one permute per batch),
/// which a model built to hold PyTorch weights needs ([`crate::weights`] refuses the
/// default there rather than load weights that would be silently wrong).
///
/// ```
/// use dp_core::{layers::Flatten, Layer};
/// use candle_core::{DType, Device, Tensor};
/// let x = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
/// assert_eq!(Flatten::default().forward(&x, false).unwrap().dims(), &[2, 12]);
/// // An image [B, H=1, W=2, C=2] with values (h, w, c) → 10h + 4w + c:
/// let img = Tensor::new(&[[[[0f32, 1.], [4., 5.]]]], &Device::Cpu).unwrap();
/// let last = Flatten::default().forward(&img, false).unwrap();
/// let first = Flatten::channels_first().forward(&img, false).unwrap();
/// assert_eq!(last.to_vec2::<f32>().unwrap(), [[0., 1., 4., 5.]]);
/// assert_eq!(first.to_vec2::<f32>().unwrap(), [[0., 4., 1., 5.]]); // (c, h, w)
/// ```
#[derive(Default)]
pub struct Flatten {
    shape: Option<Vec<usize>>,
    channels_first: bool,
}

impl Flatten {
    /// Flattens `[B, H, W, C]` images in PyTorch's `(c, h, w)` order (inputs of another
    /// rank are flattened as they are).
    pub fn channels_first() -> Self {
        Self {
            shape: None,
            channels_first: true,
        }
    }

    /// Whether images are permuted to `[B, C, H, W]` before flattening.
    fn permutes(&self, rank: usize) -> bool {
        self.channels_first && rank == 4
    }
}

impl Layer for Flatten {
    fn torch_layout(&self) -> crate::layer::TorchLayout {
        if self.channels_first {
            crate::layer::TorchLayout::Vector
        } else {
            crate::layer::TorchLayout::FlattenChannelsLast
        }
    }
    fn name(&self) -> String {
        if self.channels_first {
            "Flatten(channels first)".into()
        } else {
            "Flatten".into()
        }
    }
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        if x.rank() == 0 {
            return Err(shape_err("Flatten", "[B, ...]", x.dims()));
        }
        if train {
            self.shape = Some(x.dims().to_vec());
        }
        if self.permutes(x.rank()) {
            return Ok(x.permute((0, 3, 1, 2))?.contiguous()?.flatten_from(1)?);
        }
        Ok(x.flatten_from(1)?)
    }
    fn backward(&mut self, g: &Tensor, need: bool) -> Result<Option<Tensor>> {
        let s = self.shape.clone().ok_or_else(|| CoreError::MissingRecord {
            layer: "Flatten".into(),
            what: "backward before forward(train=true)".into(),
        })?;
        if !need {
            return Ok(None);
        }
        if self.permutes(s.len()) {
            let g = g.reshape((s[0], s[3], s[1], s[2]))?;
            return Ok(Some(g.permute((0, 2, 3, 1))?.contiguous()?));
        }
        Ok(Some(g.reshape(s)?))
    }
    fn clear(&mut self) {
        self.shape = None;
    }
}

/// Converts PyTorch-layout images `[B, C, H, W]` to dp-core's channels-last `[B, H, W, C]`.
///
/// ```
/// use dp_core::{layers::ChannelsLast, Layer};
/// use candle_core::{DType, Device, Tensor};
/// let x = Tensor::zeros((2, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
/// assert_eq!(ChannelsLast.forward(&x, false).unwrap().dims(), &[2, 8, 8, 3]);
/// ```
pub struct ChannelsLast;

impl Layer for ChannelsLast {
    fn torch_layout(&self) -> crate::layer::TorchLayout {
        crate::layer::TorchLayout::Images
    }
    fn name(&self) -> String {
        "ChannelsLast".into()
    }
    fn forward(&mut self, x: &Tensor, _train: bool) -> Result<Tensor> {
        if x.rank() != 4 {
            return Err(shape_err("ChannelsLast", "[B, C, H, W]", x.dims()));
        }
        Ok(x.permute((0, 2, 3, 1))?.contiguous()?)
    }
    fn backward(&mut self, g: &Tensor, need: bool) -> Result<Option<Tensor>> {
        Ok(if need {
            Some(g.permute((0, 3, 1, 2))?.contiguous()?)
        } else {
            None
        })
    }
}

/// `[B, ...]` → `[B, dims...]` (same number of elements per example). Used e.g. to view
/// flat or `[B, 1, 28, 28]` MNIST batches as channels-last `[B, 28, 28, 1]` (for one
/// channel the two layouts coincide).
///
/// ```
/// use dp_core::{layers::Reshape, Layer};
/// use candle_core::{DType, Device, Tensor};
/// let x = Tensor::zeros((2, 784), DType::F32, &Device::Cpu).unwrap();
/// assert_eq!(Reshape::new(&[28, 28, 1]).forward(&x, false).unwrap().dims(), &[2, 28, 28, 1]);
/// ```
pub struct Reshape {
    dims: Vec<usize>,
    input: Option<Vec<usize>>,
}

impl Reshape {
    /// Reshape each example to `dims`.
    pub fn new(dims: &[usize]) -> Self {
        Self {
            dims: dims.to_vec(),
            input: None,
        }
    }
}

impl Layer for Reshape {
    fn torch_layout(&self) -> crate::layer::TorchLayout {
        match self.dims.len() {
            1 => crate::layer::TorchLayout::FlattenChannelsLast,
            3 => crate::layer::TorchLayout::Images,
            _ => crate::layer::TorchLayout::Same,
        }
    }
    fn name(&self) -> String {
        format!("Reshape({:?})", self.dims)
    }
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let b = x
            .dim(0)
            .map_err(|_| shape_err("Reshape", "[B, ...]", x.dims()))?;
        let per: usize = self.dims.iter().product();
        if b * per != x.elem_count() {
            return Err(shape_err(
                &self.name(),
                &format!("[B, ..] with {per} values per example"),
                x.dims(),
            ));
        }
        if train {
            self.input = Some(x.dims().to_vec());
        }
        let mut d = vec![b];
        d.extend_from_slice(&self.dims);
        Ok(x.reshape(d)?)
    }
    fn backward(&mut self, g: &Tensor, need: bool) -> Result<Option<Tensor>> {
        let s = self.input.clone().ok_or_else(|| CoreError::MissingRecord {
            layer: "Reshape".into(),
            what: "backward before forward(train=true)".into(),
        })?;
        Ok(if need { Some(g.reshape(s)?) } else { None })
    }
    fn clear(&mut self) {
        self.input = None;
    }
}
