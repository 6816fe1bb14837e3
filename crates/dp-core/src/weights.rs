//! A model's weights by name, in dp-core's layouts or in PyTorch's, to and from
//! safetensors files.
//!
//! dp-core names a parameter `"{k}.{param}"` where `k` counts the layers **that have
//! parameters** (activations, pooling, reshapes and dropout are skipped), so inserting a
//! ReLU does not rename anything. A PyTorch `nn.Sequential`'s `state_dict` counts every
//! module instead (`"0.weight"`, `"3.weight"`, …), and other models use module names
//! (`"conv1.weight"`); [`Names`] says how the file's names map to the model's layers.
//!
//! Layouts ([`Layout::PyTorch`]): linear, embedding and normalisation parameters are
//! stored as PyTorch stores them; a convolution kernel is `[C_out, kh, kw, C_in/g]` here
//! (channels-last) and `[C_out, C_in/g, kh, kw]` in PyTorch, and is permuted on the way in
//! and out. The one difference the weights cannot carry is the **flatten order**: dp-core's
//! images are channels-last, so its default [`crate::layers::Flatten`] orders a feature
//! map `(h, w, c)` where PyTorch's `nn.Flatten` on `[B, C, H, W]` orders it `(c, h, w)`.
//! The linear layer after the flatten then sees its inputs in another order, and PyTorch
//! weights loaded into it give wrong outputs without any error. Build a model meant to hold
//! PyTorch weights with [`crate::layers::Flatten::channels_first`]; loading PyTorch weights
//! into a model that flattens channels-last images is refused with an error that says so.
//! (A [`crate::graph::GraphModel`] that flattens in its glue is not seen by this check:
//! flatten there with `permute((0, 3, 1, 2))` first.)
//!
//! ```
//! use dp_core::layers::{Conv2d, Conv2dConfig, Flatten, Linear, Relu};
//! use dp_core::weights::{load_weights, save_weights, Layout, Names, WeightFormat};
//! use dp_core::{Init, Model, Sequential};
//! use candle_core::{DType, Device, Tensor};
//! let dev = Device::Cpu;
//! let build = |seed| -> dp_core::Result<Sequential> {
//!     let mut init = Init::seeded(seed);
//!     Ok(Sequential::new(&dev)
//!         .push(Conv2d::new(Conv2dConfig::new(1, 4, 3), &mut init, &dev)?)
//!         .push(Relu::default())
//!         .push(Flatten::channels_first())
//!         .push(Linear::new(4 * 6 * 6, 10, true, &mut init, &dev)?))
//! };
//! let path = std::env::temp_dir().join(format!("dp-core-doc-{}.safetensors", std::process::id()));
//! // PyTorch's layout and nn.Sequential's names: "0.weight", "0.bias", "3.weight", "3.bias".
//! let torch = WeightFormat::new(Layout::PyTorch, Names::Modules(vec!["0".into(), "3".into()]));
//! save_weights(&build(0)?, &path, &torch)?;
//! let mut copy = build(1)?;
//! load_weights(&mut copy, &path, &torch)?;
//! let x = Tensor::ones((2, 8, 8, 1), DType::F32, &dev)?;
//! let (a, b) = (build(0)?.forward(&x, false)?, copy.forward(&x, false)?);
//! assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
//! std::fs::remove_file(&path).ok();
//! # Ok::<(), dp_core::CoreError>(())
//! ```

use crate::error::{CoreError, Result};
use crate::layer::TorchLayout;
use crate::model::Model;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// The tensor layout of a weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// dp-core's own (what [`Model::param_tensors`] holds; checkpoints use it).
    #[default]
    DpCore,
    /// PyTorch's (`nn.Conv2d` kernels `[C_out, C_in/g, kh, kw]`, `nn.Linear` `[out, in]`);
    /// also candle-nn's, whose `conv2d` and `linear` follow PyTorch.
    PyTorch,
}

/// How the names in a weights file map to the model's parameterised layers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Names {
    /// dp-core's names, `"{k}.{param}"` with `k` counting the layers that have parameters
    /// (those of [`Model::named_params`]).
    #[default]
    DpCore,
    /// One module path per parameterised layer, in the model's layer order: the file's
    /// names are `"{path}.{param}"` (`Modules(vec!["features.0".into(), "fc".into()])`
    /// reads `features.0.weight`, `fc.bias`, …). PyTorch names a module's parameters
    /// `weight` and `bias`, as dp-core does (normalisation layers' γ and β included).
    Modules(Vec<String>),
}

/// A file's layout and names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WeightFormat {
    /// The tensors' layout.
    pub layout: Layout,
    /// The tensors' names.
    pub names: Names,
}

impl WeightFormat {
    /// A format from its layout and names.
    pub fn new(layout: Layout, names: Names) -> Self {
        Self { layout, names }
    }
}

/// One parameter of the model as the file names and lays it out.
struct Slot {
    /// The model's own name (`"{k}.{param}"`).
    ours: String,
    /// The name in the file.
    file: String,
    /// Whether the tensor is a convolution kernel to permute between layouts.
    conv_kernel: bool,
}

/// The model's parameters, in order, with their names in `format` (checked: a module list
/// of the wrong length, or PyTorch weights for a model that flattens channels-last images,
/// are refused).
fn slots<M: Model + ?Sized>(model: &M, format: &WeightFormat) -> Result<Vec<Slot>> {
    let layers = model.layers();
    if format.layout == Layout::PyTorch {
        check_flatten_order(&layers)?;
    }
    let with_params: Vec<_> = layers.iter().filter(|l| !l.params().is_empty()).collect();
    if let Names::Modules(paths) = &format.names {
        if paths.len() != with_params.len() {
            return Err(CoreError::InvalidArgument(format!(
                "{} module paths for a model with {} layers that have parameters ({})",
                paths.len(),
                with_params.len(),
                with_params
                    .iter()
                    .map(|l| l.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let mut out = Vec::new();
    for (k, layer) in with_params.iter().enumerate() {
        let conv = layer.torch_layout() == TorchLayout::ConvKernel;
        for p in layer.params() {
            let file = match &format.names {
                Names::DpCore => format!("{k}.{}", p.name),
                Names::Modules(paths) => format!("{}.{}", paths[k], p.name),
            };
            out.push(Slot {
                ours: format!("{k}.{}", p.name),
                file,
                conv_kernel: conv && p.name == "weight" && format.layout == Layout::PyTorch,
            });
        }
    }
    Ok(out)
}

/// Refuses a model whose default (channels-last) flatten follows a layer that outputs
/// channels-last images: PyTorch weights of the next linear layer would be silently wrong.
fn check_flatten_order(layers: &[&dyn crate::layer::Layer]) -> Result<()> {
    let mut images = false;
    for (i, l) in layers.iter().enumerate() {
        match l.torch_layout() {
            TorchLayout::ConvKernel | TorchLayout::Images => images = true,
            TorchLayout::Vector => images = false,
            TorchLayout::FlattenChannelsLast if images => {
                return Err(CoreError::InvalidArgument(format!(
                    "layer {i} ({}) flattens channels-last images in (h, w, c) order, PyTorch's \
                     flatten of [B, C, H, W] in (c, h, w) order: the next linear layer's \
                     PyTorch weights would be silently wrong. Build the model with \
                     Flatten::channels_first() to hold PyTorch weights",
                    l.name()
                )))
            }
            TorchLayout::FlattenChannelsLast | TorchLayout::Same => {}
        }
    }
    Ok(())
}

/// The model's parameters as named tensors in `format` (what [`save_weights`] writes).
pub fn weights_to_tensors<M: Model + ?Sized>(
    model: &M,
    format: &WeightFormat,
) -> Result<HashMap<String, Tensor>> {
    let slots = slots(model, format)?;
    let mut out = HashMap::with_capacity(slots.len());
    for (slot, value) in slots.into_iter().zip(model.param_tensors()) {
        let v = if slot.conv_kernel {
            value.permute((0, 3, 1, 2))?.contiguous()?
        } else {
            value
        };
        out.insert(slot.file, v);
    }
    Ok(out)
}

/// Sets the model's parameters from named tensors in `format`. Every parameter must be
/// present with its shape (after the layout change); a tensor the model has no parameter
/// for is an error too (a file for another model must not half-load). Floating-point
/// tensors of any precision are converted to f32 and moved to the model's parameter device.
/// Nothing is replaced unless everything matches.
pub fn weights_from_tensors<M: Model + ?Sized>(
    model: &mut M,
    mut tensors: HashMap<String, Tensor>,
    format: &WeightFormat,
) -> Result<()> {
    let slots = slots(model, format)?;
    let current = model.param_tensors();
    let mut values = Vec::with_capacity(slots.len());
    let mut missing = Vec::new();
    for (slot, cur) in slots.iter().zip(&current) {
        let Some(t) = tensors.remove(&slot.file) else {
            missing.push(slot.file.clone());
            continue;
        };
        let t = as_f32(t, &slot.file, cur.device())?;
        // Checked in the file's layout, so the error shows the shape the file should hold.
        let d = cur.dims();
        let (want, layout) = if slot.conv_kernel {
            (vec![d[0], d[3], d[1], d[2]], " (PyTorch layout)")
        } else {
            (d.to_vec(), "")
        };
        if t.dims() != want.as_slice() {
            return Err(crate::error::shape_err(
                &format!("{} (the model's {})", slot.file, slot.ours),
                &format!("{want:?}{layout}"),
                t.dims(),
            ));
        }
        let t = if slot.conv_kernel {
            t.permute((0, 2, 3, 1))?.contiguous()?
        } else {
            t
        };
        values.push(t);
    }
    if !missing.is_empty() {
        return Err(CoreError::InvalidArgument(format!(
            "the weights have no tensor named {}",
            missing.join(", ")
        )));
    }
    if !tensors.is_empty() {
        let mut extra: Vec<_> = tensors.into_keys().collect();
        extra.sort();
        return Err(CoreError::InvalidArgument(format!(
            "the weights hold tensors the model has no parameter for: {}",
            extra.join(", ")
        )));
    }
    model.set_param_tensors(&values)
}

fn as_f32(t: Tensor, name: &str, device: &Device) -> Result<Tensor> {
    if !matches!(
        t.dtype(),
        DType::F32 | DType::F64 | DType::F16 | DType::BF16
    ) {
        return Err(CoreError::InvalidArgument(format!(
            "tensor {name} is {:?}, not a floating-point parameter",
            t.dtype()
        )));
    }
    Ok(t.to_dtype(DType::F32)?.to_device(device)?)
}

/// Writes the model's parameters to a safetensors file at `path` in `format`.
pub fn save_weights<M: Model + ?Sized>(
    model: &M,
    path: impl AsRef<Path>,
    format: &WeightFormat,
) -> Result<()> {
    let tensors = weights_to_tensors(model, format)?;
    candle_core::safetensors::save(&tensors, path.as_ref())?;
    Ok(())
}

/// Loads the model's parameters from a safetensors file at `path` in `format` (see
/// [`weights_from_tensors`] for what is checked).
pub fn load_weights<M: Model + ?Sized>(
    model: &mut M,
    path: impl AsRef<Path>,
    format: &WeightFormat,
) -> Result<()> {
    let path = path.as_ref();
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        CoreError::InvalidArgument(format!("cannot read weights {}: {e}", path.display()))
    })?;
    weights_from_tensors(model, tensors, format).map_err(|e| match e {
        CoreError::InvalidArgument(m) => {
            CoreError::InvalidArgument(format!("{}: {m}", path.display()))
        }
        other => other,
    })
}
