//! Residual networks as a [`Model`]: chains of layers and blocks `y = f(x) + s(x)`, with a
//! hand-written backward that adds the two branches' input gradients.

use crate::error::{shape_err, CoreError, Result};
use crate::layer::Layer;
use crate::model::{Model, Sequential};
use candle_core::{Device, Tensor};

/// The skip branch `s(x)` of a residual block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortcut {
    /// `s(x) = x`.
    Identity,
    /// He et al. 2016's "option A" (the CIFAR ResNets, and the official code of Xiao et al.,
    /// S&P 2023): keep every `stride`-th row and column of a channels-last image and pad the
    /// channels with `left` and `right` zero channels. No parameters.
    SubsamplePad {
        /// Spatial stride.
        stride: usize,
        /// Zero channels before the input's.
        left: usize,
        /// Zero channels after them.
        right: usize,
    },
}

impl Shortcut {
    /// Option A from `in_channels` to `out_channels ≥ in_channels` at `stride`, the zero
    /// channels split evenly (`(out − in)/2` on each side, the extra one on the right).
    pub fn subsample_pad(stride: usize, in_channels: usize, out_channels: usize) -> Result<Self> {
        if stride == 0 || out_channels < in_channels {
            return Err(CoreError::InvalidArgument(format!(
                "option-A shortcut needs stride ≥ 1 and out ≥ in channels (got stride {stride}, \
                 {in_channels} → {out_channels})"
            )));
        }
        let extra = out_channels - in_channels;
        Ok(Shortcut::SubsamplePad {
            stride,
            left: extra / 2,
            right: extra - extra / 2,
        })
    }

    fn indices(stride: usize, n: usize, device: &Device) -> Result<Tensor> {
        let v: Vec<u32> = (0..n).step_by(stride).map(|i| i as u32).collect();
        let len = v.len();
        Ok(Tensor::from_vec(v, len, device)?)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match *self {
            Shortcut::Identity => Ok(x.clone()),
            Shortcut::SubsamplePad {
                stride,
                left,
                right,
            } => {
                let (_, h, w, _) = x
                    .dims4()
                    .map_err(|_| shape_err("option-A shortcut", "[B, H, W, C]", x.dims()))?;
                let rows = Self::indices(stride, h, x.device())?;
                let cols = Self::indices(stride, w, x.device())?;
                let y = x.index_select(&rows, 1)?.index_select(&cols, 2)?;
                Ok(y.pad_with_zeros(3, left, right)?)
            }
        }
    }

    /// dL/dx from dL/ds for an input of shape `input`.
    fn backward(&self, g: &Tensor, input: &[usize]) -> Result<Tensor> {
        match *self {
            Shortcut::Identity => Ok(g.clone()),
            Shortcut::SubsamplePad { stride, left, .. } => {
                let [b, h, w, c] = input else {
                    return Err(shape_err("option-A shortcut", "[B, H, W, C]", input));
                };
                let (b, h, w, c) = (*b, *h, *w, *c);
                let g = g.narrow(3, left, c)?.contiguous()?;
                let ho = g.dim(1)?;
                let dev = g.device();
                let rows = Self::indices(stride, h, dev)?;
                let cols = Self::indices(stride, w, dev)?;
                let z1 = Tensor::zeros((b, ho, w, c), g.dtype(), dev)?.index_add(&cols, &g, 2)?;
                Ok(Tensor::zeros((b, h, w, c), g.dtype(), dev)?.index_add(&rows, &z1, 1)?)
            }
        }
    }
}

enum Stage {
    Layer(Box<dyn Layer>),
    Block {
        body: Vec<Box<dyn Layer>>,
        shortcut: Shortcut,
        /// The block's input shape in the last training pass.
        input: Option<Vec<usize>>,
    },
}

/// A network of layers and residual blocks `y = f(x) + s(x)`, `f` a chain of dp-core layers
/// and `s` a [`Shortcut`].
///
/// Why its own model: [`Sequential`] is a chain; a residual connection needs the backward
/// to send dL/dy down both branches and add what comes back,
/// `dL/dx = J_fᵀ dL/dy + J_sᵀ dL/dy`. The per-sample rules of the layers inside `f` are
/// unchanged: each still sees its own input and output gradient of the one backward pass,
/// which is all a per-sample rule needs.
///
/// ```
/// use dp_core::layers::{Linear, Relu};
/// use dp_core::{Init, Model, Residual, Sequential, Shortcut};
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let mut init = Init::seeded(0);
/// let body = Sequential::new(&dev)
///     .push(Linear::new(4, 4, true, &mut init, &dev).unwrap())
///     .push(Relu::default());
/// let mut m = Residual::new(&dev)
///     .push(Linear::new(3, 4, true, &mut init, &dev).unwrap())
///     .push_block(body, Shortcut::Identity)
///     .push(Linear::new(4, 2, true, &mut init, &dev).unwrap());
/// let x = Tensor::zeros((5, 3), DType::F32, &dev).unwrap();
/// assert_eq!(m.forward(&x, false).unwrap().dims(), &[5, 2]);
/// assert_eq!(m.layers().len(), 4);
/// ```
pub struct Residual {
    stages: Vec<Stage>,
    device: Device,
}

impl Residual {
    /// An empty network whose parameters live on `device`.
    pub fn new(device: &Device) -> Self {
        Self {
            stages: Vec::new(),
            device: device.clone(),
        }
    }

    /// Appends a layer.
    pub fn push(mut self, layer: impl Layer + 'static) -> Self {
        self.stages.push(Stage::Layer(Box::new(layer)));
        self
    }

    /// Appends a boxed layer.
    pub fn push_boxed(mut self, layer: Box<dyn Layer>) -> Self {
        self.stages.push(Stage::Layer(layer));
        self
    }

    /// Appends the residual block `y = body(x) + shortcut(x)`.
    pub fn push_block(mut self, body: Sequential, shortcut: Shortcut) -> Self {
        self.stages.push(Stage::Block {
            body: body.into_layers(),
            shortcut,
            input: None,
        });
        self
    }

    /// The device of the parameters.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of residual blocks.
    pub fn num_blocks(&self) -> usize {
        self.stages
            .iter()
            .filter(|s| matches!(s, Stage::Block { .. }))
            .count()
    }
}

fn has_params(stage: &Stage) -> bool {
    match stage {
        Stage::Layer(l) => !l.params().is_empty(),
        Stage::Block { body, .. } => body.iter().any(|l| !l.params().is_empty()),
    }
}

impl Model for Residual {
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        for stage in self.stages.iter_mut() {
            h = match stage {
                Stage::Layer(l) => l.forward(&h, train)?,
                Stage::Block {
                    body,
                    shortcut,
                    input,
                } => {
                    let skip = shortcut.forward(&h)?;
                    if train {
                        *input = Some(h.dims().to_vec());
                    }
                    let mut f = h;
                    for l in body.iter_mut() {
                        f = l.forward(&f, train)?;
                    }
                    if f.dims() != skip.dims() {
                        return Err(shape_err(
                            "residual block",
                            &format!("a body output of the shortcut's shape {:?}", skip.dims()),
                            f.dims(),
                        ));
                    }
                    (f + skip)?
                }
            };
        }
        Ok(h)
    }

    fn backward(&mut self, grad_output: &Tensor) -> Result<()> {
        // As in `Sequential`: nothing before the first stage with parameters needs a
        // gradient, and that stage needs no input gradient if it is a plain layer.
        let Some(first) = self.stages.iter().position(has_params) else {
            return Ok(());
        };
        let mut g = grad_output.clone();
        for (k, stage) in self.stages.iter_mut().enumerate().rev() {
            if k < first {
                break;
            }
            let need = k > first;
            match stage {
                Stage::Layer(l) => match l.backward(&g, need)? {
                    Some(dx) => g = dx,
                    None if need => {
                        return Err(CoreError::InvalidArgument(format!(
                            "layer {} returned no input gradient but is not the first layer",
                            l.name()
                        )))
                    }
                    None => {}
                },
                Stage::Block {
                    body,
                    shortcut,
                    input,
                } => {
                    let dims = input.clone().ok_or_else(|| CoreError::MissingRecord {
                        layer: "residual block".into(),
                        what: "backward before forward(train=true)".into(),
                    })?;
                    let skip = shortcut.backward(&g, &dims)?;
                    let mut gb = g.clone();
                    for l in body.iter_mut().rev() {
                        gb = l.backward(&gb, true)?.ok_or_else(|| {
                            CoreError::InvalidArgument(format!(
                                "layer {} inside a residual block returned no input gradient",
                                l.name()
                            ))
                        })?;
                    }
                    g = (gb + skip)?;
                }
            }
        }
        Ok(())
    }

    fn layers(&self) -> Vec<&dyn Layer> {
        let mut v: Vec<&dyn Layer> = Vec::new();
        for s in &self.stages {
            match s {
                Stage::Layer(l) => v.push(l.as_ref()),
                Stage::Block { body, .. } => v.extend(body.iter().map(|l| l.as_ref())),
            }
        }
        v
    }

    fn layers_mut(&mut self) -> Vec<&mut dyn Layer> {
        let mut v: Vec<&mut dyn Layer> = Vec::new();
        for s in self.stages.iter_mut() {
            match s {
                Stage::Layer(l) => v.push(l.as_mut() as &mut dyn Layer),
                Stage::Block { body, .. } => {
                    v.extend(body.iter_mut().map(|l| l.as_mut() as &mut dyn Layer))
                }
            }
        }
        v
    }

    fn clear(&mut self) {
        for s in self.stages.iter_mut() {
            match s {
                Stage::Layer(l) => l.clear(),
                Stage::Block { body, input, .. } => {
                    *input = None;
                    body.iter_mut().for_each(|l| l.clear());
                }
            }
        }
    }
}
