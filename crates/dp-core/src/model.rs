//! Models: a trait over "layers plus a forward/backward order", and `Sequential`.

use crate::error::{shape_err, CoreError, Result};
use crate::layer::{Layer, Param};
use candle_core::{Device, Tensor};

/// A network built from dp-core layers.
///
/// [`Sequential`] covers chains of layers. For other architectures (residual blocks,
/// two-tower models, ...) implement this trait: `forward` calls the layers' `forward` in
/// any order, `backward` calls their `backward` in reverse and routes gradients (e.g. adds
/// the two branch gradients of a residual connection), and `layers`/`layers_mut` list
/// every layer once, which fixes the parameter order.
///
/// The per-sample rules, clipping and noise then work unchanged, and
/// [`crate::check_per_sample_gradients`] verifies the hand-written backward in one call.
/// (To write only the forward and let candle's autograd do the glue, see
/// [`crate::graph::GraphModel`].) A residual MLP, `y = head(x + tanh(body(x)))`:
///
/// ```
/// use dp_core::layers::{Linear, Tanh};
/// use dp_core::{check_per_sample_gradients, clipped_gradient, CoreError, CrossEntropy};
/// use dp_core::{GradOptions, Init, Layer, Model, Result};
/// use dp_core::clipping::FlatClip;
/// use candle_core::{Device, Tensor};
///
/// struct ResMlp { body: Linear, act: Tanh, head: Linear }
///
/// impl Model for ResMlp {
///     fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
///         let h = self.act.forward(&self.body.forward(x, train)?, train)?;
///         self.head.forward(&(x + h)?, train)
///     }
///     fn backward(&mut self, g: &Tensor) -> Result<()> {
///         let missing = || CoreError::InvalidArgument("no input gradient".into());
///         // dL/d(x + h): the skip ends at the input (nothing to train there), the branch
///         // goes back through tanh and `body`, which needs no dL/dx (it is first).
///         let g_sum = self.head.backward(g, true)?.ok_or_else(missing)?;
///         let g_h = self.act.backward(&g_sum, true)?.ok_or_else(missing)?;
///         self.body.backward(&g_h, false)?;
///         Ok(())
///     }
///     fn layers(&self) -> Vec<&dyn Layer> { vec![&self.body, &self.act, &self.head] }
///     fn layers_mut(&mut self) -> Vec<&mut dyn Layer> {
///         vec![&mut self.body, &mut self.act, &mut self.head]
///     }
/// }
///
/// let dev = Device::Cpu;
/// let mut init = Init::seeded(0);
/// let mut m = ResMlp {
///     body: Linear::new(4, 4, true, &mut init, &dev)?,
///     act: Tanh::default(),
///     head: Linear::new(4, 3, true, &mut init, &dev)?,
/// };
/// let x = init.normal(&[6, 4], 1.0, &dev)?;
/// let y = Tensor::new(&[0u32, 1, 2, 0, 1, 2], &dev)?;
/// // The backward above agrees with one backward pass per example.
/// let report = check_per_sample_gradients(&mut m, &x, &y, &CrossEntropy, 1e-3)?;
/// assert!(report.passed, "{report:?}");
/// // ... so the model trains privately like any other.
/// let batch = clipped_gradient(&mut m, &x, &y, &CrossEntropy, &mut FlatClip::new(1.0)?, &GradOptions::default())?;
/// assert_eq!((batch.sum.len(), batch.examples), (4, 6)); // 2 weights, 2 biases; 6 examples
/// # Ok::<(), CoreError>(())
/// ```
pub trait Model {
    /// Forward pass; `train = true` records what the backward and per-sample rules need.
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor>;
    /// Backward pass of the summed per-example loss, given dL/d(output).
    fn backward(&mut self, grad_output: &Tensor) -> Result<()>;
    /// Every layer, once, in parameter order.
    fn layers(&self) -> Vec<&dyn Layer>;
    /// Mutable access to every layer, in the same order as [`Model::layers`].
    fn layers_mut(&mut self) -> Vec<&mut dyn Layer>;

    /// All parameters, in order, with model-unique names `"{k}.{param}"`, where `k` counts
    /// the layers **that have parameters**: adding or removing an activation, a pooling or
    /// a reshape renames nothing (checkpoints and [`crate::weights`] files stay loadable).
    fn named_params(&self) -> Vec<(String, &Param)> {
        self.layers()
            .into_iter()
            .filter(|l| !l.params().is_empty())
            .enumerate()
            .flat_map(|(k, l)| {
                l.params()
                    .into_iter()
                    .map(move |p| (format!("{k}.{}", p.name), p))
            })
            .collect()
    }

    /// Current parameter values, in order (cheap: tensors are reference counted).
    fn param_tensors(&self) -> Vec<Tensor> {
        self.layers()
            .into_iter()
            .flat_map(|l| l.params().into_iter().map(|p| p.value.clone()))
            .collect()
    }

    /// Replaces the parameter values (same order and shapes as [`Model::param_tensors`]).
    fn set_param_tensors(&mut self, values: &[Tensor]) -> Result<()> {
        // Checked in full before anything is replaced: a refused call leaves the model as it
        // was, never with only some of its parameters replaced.
        let current: Vec<(String, Vec<usize>)> = self
            .named_params()
            .into_iter()
            .map(|(name, p)| (name, p.value.dims().to_vec()))
            .collect();
        if values.len() < current.len() {
            return Err(CoreError::InvalidArgument(
                "too few tensors for the model's parameters".into(),
            ));
        }
        if values.len() > current.len() {
            return Err(CoreError::InvalidArgument(format!(
                "too many tensors: the model has {} parameters",
                current.len()
            )));
        }
        for (v, (name, dims)) in values.iter().zip(&current) {
            if v.dims() != dims.as_slice() {
                return Err(shape_err(name, &format!("{dims:?}"), v.dims()));
            }
        }
        let mut it = values.iter();
        for layer in self.layers_mut() {
            for (p, v) in layer.params_mut().into_iter().zip(&mut it) {
                p.value = v.clone();
            }
        }
        Ok(())
    }

    /// Total number of scalar parameters `d`.
    fn num_params(&self) -> usize {
        self.param_tensors().iter().map(|t| t.elem_count()).sum()
    }

    /// Drops every layer's recorded activations and gradients.
    fn clear(&mut self) {
        for l in self.layers_mut() {
            l.clear();
        }
    }
}

/// A chain of layers applied in order.
///
/// ```
/// use dp_core::layers::{Linear, Relu};
/// use dp_core::{Init, Model, Sequential};
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let mut init = Init::seeded(0);
/// let mut m = Sequential::new(&dev)
///     .push(Linear::new(4, 8, true, &mut init, &dev).unwrap())
///     .push(Relu::default())
///     .push(Linear::new(8, 2, true, &mut init, &dev).unwrap());
/// let x = Tensor::zeros((3, 4), DType::F32, &dev).unwrap();
/// assert_eq!(m.forward(&x, false).unwrap().dims(), &[3, 2]);
/// assert_eq!(m.num_params(), 4 * 8 + 8 + 8 * 2 + 2);
/// ```
pub struct Sequential {
    layers: Vec<Box<dyn Layer>>,
    device: Device,
}

impl Sequential {
    /// An empty chain whose parameters live on `device`.
    pub fn new(device: &Device) -> Self {
        Self {
            layers: Vec::new(),
            device: device.clone(),
        }
    }

    /// Appends a layer (builder style).
    pub fn push(mut self, layer: impl Layer + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self
    }

    /// Appends a boxed layer.
    pub fn add(&mut self, layer: Box<dyn Layer>) {
        self.layers.push(layer);
    }

    /// The device of the model's parameters.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The layers, in order (to call them from a [`crate::graph::GraphModel`], or to move a
    /// chain into another model such as a residual block).
    ///
    /// ```
    /// let m = dp_core::models::mlp(&[4, 8, 3], &candle_core::Device::Cpu, 0).unwrap();
    /// let names: Vec<String> = m.into_layers().iter().map(|l| l.name()).collect();
    /// assert_eq!(names.len(), 4); // Reshape, Linear, Relu, Linear
    /// ```
    pub fn into_layers(self) -> Vec<Box<dyn Layer>> {
        self.layers
    }
}

impl Model for Sequential {
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        for l in self.layers.iter_mut() {
            h = l.forward(&h, train)?;
        }
        Ok(h)
    }

    fn backward(&mut self, grad_output: &Tensor) -> Result<()> {
        let mut g = grad_output.clone();
        let n = self.layers.len();
        // Gradients flow only as far back as the first layer with parameters: that layer
        // needs no dL/dx (for a first convolution, the input-gradient product and col2im
        // were ~20% of an MNIST-CNN step), and the parameter-free layers before it (reshape,
        // channels-last) need no backward at all.
        let Some(first) = self.layers.iter().position(|l| !l.params().is_empty()) else {
            return Ok(());
        };
        for (k, l) in self.layers.iter_mut().enumerate().rev() {
            if k < first {
                break;
            }
            let need = k > first;
            match l.backward(&g, need)? {
                Some(dx) => g = dx,
                None if need => {
                    // A layer with a non-differentiable input (e.g. Embedding) in the
                    // middle of a chain: nothing before it can be trained.
                    return Err(CoreError::InvalidArgument(format!(
                        "layer {k} of {n} returned no input gradient but is not the first layer"
                    )));
                }
                None => {}
            }
        }
        Ok(())
    }

    fn layers(&self) -> Vec<&dyn Layer> {
        self.layers
            .iter()
            .map(|l| l.as_ref() as &dyn Layer)
            .collect()
    }

    fn layers_mut(&mut self) -> Vec<&mut dyn Layer> {
        self.layers
            .iter_mut()
            .map(|l| l.as_mut() as &mut dyn Layer)
            .collect()
    }
}
