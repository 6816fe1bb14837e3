//! Bring your own forward: dp-core's private layers with **any** candle ops between them,
//! the glue differentiated by candle's autograd.
//!
//! A [`GraphModel`] holds dp-core layers (the ones with parameters are the private ones)
//! and a forward closure that calls them through [`GraphCtx::layer`] and combines their
//! outputs with ordinary candle ops: residual adds, concatenation, attention-style
//! products, pooling over a sequence, custom activations. Nobody writes a backward pass.
//!
//! # How the gradients flow
//!
//! In a training forward each layer runs on a detached copy of its input (so its own
//! hand-written forward, backward and per-sample rule are untouched), and its output is
//! handed to the glue as a fresh candle `Var` — a "probe" whose gradient is exactly
//! `∂(Σ_i ℓ_i)/∂(layer output)` (`shared/docs/candle-notes.md`: the probe gradient of a
//! Linear reproduced its weight gradient to 5e-8). [`Model::backward`] then runs the
//! reverse sweep of the **summed** loss in reverse call order: candle's tape from the
//! model output to the probes, and for each layer in turn (its output gradient is then
//! complete, because only layers called *after* it can depend on it) the layer's own
//! backward, whose input gradient candle carries on through the glue to the earlier
//! probes. Every private layer thus records the same output gradient it would get in a
//! hand-written backward, and the per-sample rules (materialised or ghost norms,
//! book-keeping sums, clipping in [`crate::clipped_gradient`]) work unchanged. Where a
//! layer's input is directly another layer's output (a plain chain) the gradient is
//! routed without touching candle's tape; a plain chain is bit-for-bit the
//! [`crate::Sequential`] model.
//!
//! # What is safe in the glue
//!
//! candle's autograd is correct (checked against finite differences in candle-notes and in
//! this crate's `tests/graph.rs`) for: element-wise arithmetic and broadcasting (`+ − × ÷`,
//! `affine`, `sqr`, `sqrt`, `exp`, `log`, `tanh`, `relu`, `neg`, `powf`), `matmul`,
//! `transpose`/`t`, `reshape`, `narrow`, `cat`, `index_select`, `sum`/`mean`/`max` over
//! axes **other than the batch axis**, and candle's own `conv2d`/`avg_pool2d`/embedding
//! (but a parameterised op belongs in a dp-core layer, see below).
//!
//! Replace, because candle's backward is wrong or silently missing:
//!
//! | candle | problem | use instead |
//! |---|---|---|
//! | `max_pool2d` | gradient 0.25 for a 2×2 max, kernel ≠ stride errors | [`crate::layers::MaxPool2d`] through `ctx.layer` |
//! | `candle_nn::LayerNorm`, `ops::layer_norm`, `rms_norm` | input/weight gradients silently `None` | [`crate::layers::LayerNorm`] through `ctx.layer` |
//! | `candle_nn::ops::softmax_last_dim` | gradient silently `None` | [`softmax`] (exp / sum, correct backward) |
//! | batch norm, anything reducing over axis 0 | mixes examples: no per-example gradient exists | [`crate::layers::GroupNorm`] / [`crate::layers::LayerNorm`] |
//!
//! # Rules
//!
//! - **Trainable weights live in dp-core layers.** A tensor used in the glue is a
//!   constant: it is neither trained nor clipped. (A `Var` of your own in the glue would
//!   get a gradient from candle, but nothing clips or noises it: never train on it.)
//! - **Each layer is called at most once per training forward** (no weight sharing: a
//!   layer records one input and one output gradient).
//! - **No example may see another.** Reducing over the batch axis, batch statistics or
//!   anything else that mixes rows makes "the gradient of example i" depend on the other
//!   examples, and per-example clipping no longer bounds one example's influence.
//!   [`crate::check_per_sample_gradients`] detects it: run it once on a real batch before
//!   training a new model.
//!
//! Cost: one extra copy of each layer output (the probe) and candle's tape over the glue.
//! `examples/bench_step.rs --graph` measures it against the hand-written [`crate::Sequential`]
//! (DP step, B = 256, 2 cores): the same layers through a `GraphModel` 1.03× (MLP) and
//! 1.18× (MNIST CNN); with the activations as candle ops in the glue 1.70× and 2.25×, the
//! price of candle's unfused element-wise ops and tape. Activations that matter for speed
//! are cheaper as dp-core layers (`Relu`, `Tanh`) called through `ctx.layer`.

use crate::error::{CoreError, Result};
use crate::layer::Layer;
use crate::model::Model;
use candle_core::{shape::Dim, Device, Tensor, TensorId, Var};
use std::collections::HashMap;

/// The forward closure of a [`GraphModel`].
pub type GraphForward = Box<dyn Fn(&mut GraphCtx<'_>, &Tensor) -> Result<Tensor> + Send + Sync>;

/// One layer call of a training forward.
struct Node {
    /// Index of the layer in the model.
    layer: usize,
    /// The input as the glue produced it (tracked by candle when it depends on a probe).
    input: Tensor,
    /// Whether the input depends on an earlier layer (so the layer must pass a gradient back).
    input_tracked: bool,
    /// The probe: the layer's output as a candle `Var`.
    output: Var,
}

/// The record of the last training forward.
struct Tape {
    nodes: Vec<Node>,
    output: Tensor,
}

/// What the forward closure of a [`GraphModel`] calls its layers through.
pub struct GraphCtx<'a> {
    layers: &'a mut [Box<dyn Layer>],
    train: bool,
    nodes: &'a mut Vec<Node>,
    called: Vec<bool>,
}

impl GraphCtx<'_> {
    /// Applies layer `i` (its index in [`GraphModel::push`] order) to `x`. In a training
    /// forward the result is tracked by candle's autograd, so any candle op may consume it.
    ///
    /// Errors: `i` out of range, or layer `i` called a second time in one training forward.
    pub fn layer(&mut self, i: usize, x: &Tensor) -> Result<Tensor> {
        let n = self.layers.len();
        let layer = self.layers.get_mut(i).ok_or_else(|| {
            CoreError::InvalidArgument(format!("layer {i} does not exist (the model has {n})"))
        })?;
        if !self.train {
            return layer.forward(x, false);
        }
        if std::mem::replace(&mut self.called[i], true) {
            return Err(CoreError::InvalidArgument(format!(
                "layer {i} ({}) called twice in one training forward: a layer records one \
                 input and one output gradient, so weights cannot be shared",
                layer.name()
            )));
        }
        let input_tracked = x.track_op();
        let y = layer.forward(&x.detach(), true)?;
        if !input_tracked && layer.params().is_empty() {
            // Nothing before it is trainable and it has nothing to train: no gradient needed.
            return Ok(y);
        }
        let output = Var::from_tensor(&y)?;
        let out = output.as_tensor().clone();
        self.nodes.push(Node {
            layer: i,
            input: x.clone(),
            input_tracked,
            output,
        });
        Ok(out)
    }

    /// Whether this is a training forward (`Model::forward(.., train = true)`).
    pub fn train(&self) -> bool {
        self.train
    }

    /// Number of layers in the model.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}

/// A model whose forward is any closure over dp-core layers and candle ops; the glue's
/// backward comes from candle's autograd (see the [module docs](self) for what is safe).
///
/// ```
/// use dp_core::graph::{GraphModel, softmax};
/// use dp_core::layers::Linear;
/// use dp_core::{check_per_sample_gradients, CrossEntropy, Init, Model};
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let mut init = Init::seeded(0);
/// // A residual MLP: h = relu(W0 x); h = h + tanh(W1 h); logits = W2 h.
/// let mut model = GraphModel::new(&dev, |g, x| {
///     let h = g.layer(0, x)?.relu()?;
///     let h = (&h + g.layer(1, &h)?.tanh()?)?;
///     g.layer(2, &h)
/// })
/// .push(Linear::new(5, 8, true, &mut init, &dev).unwrap())
/// .push(Linear::new(8, 8, true, &mut init, &dev).unwrap())
/// .push(Linear::new(8, 3, true, &mut init, &dev).unwrap());
/// let x = Tensor::randn(0f64, 1., (6, 5), &dev).unwrap();
/// let y = Tensor::new(&[0u32, 1, 2, 0, 1, 2], &dev).unwrap();
/// model.set_param_tensors(&model.param_tensors().iter().map(|t| t.to_dtype(DType::F64).unwrap()).collect::<Vec<_>>()).unwrap();
/// let report = check_per_sample_gradients(&mut model, &x, &y, &CrossEntropy, 1e-8).unwrap();
/// assert!(report.passed, "{report:?}");
/// ```
pub struct GraphModel {
    layers: Vec<Box<dyn Layer>>,
    forward: GraphForward,
    device: Device,
    tape: Option<Tape>,
}

impl GraphModel {
    /// A model with no layers yet whose forward is `forward`; add the layers with
    /// [`GraphModel::push`] (their order is the parameter order and the indices
    /// [`GraphCtx::layer`] takes).
    pub fn new(
        device: &Device,
        forward: impl Fn(&mut GraphCtx<'_>, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
    ) -> Self {
        Self {
            layers: Vec::new(),
            forward: Box::new(forward),
            device: device.clone(),
            tape: None,
        }
    }

    /// The layers of `seq` called in order: the same model, through the graph path (a
    /// starting point for adding glue, and the reference that the graph path costs little).
    ///
    /// ```
    /// use dp_core::{graph::GraphModel, models, Model};
    /// use candle_core::{Device, Tensor};
    /// let dev = Device::Cpu;
    /// let mut seq = models::mlp(&[4, 8, 3], &dev, 0).unwrap();
    /// let mut graph = GraphModel::chain(models::mlp(&[4, 8, 3], &dev, 0).unwrap());
    /// let x = Tensor::randn(0f32, 1., (2, 4), &dev).unwrap();
    /// let (a, b) = (seq.forward(&x, false).unwrap(), graph.forward(&x, false).unwrap());
    /// assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    /// ```
    pub fn chain(seq: crate::model::Sequential) -> Self {
        let device = seq.device().clone();
        let mut m = Self::new(&device, |g, x| {
            let mut h = x.clone();
            for i in 0..g.num_layers() {
                h = g.layer(i, &h)?;
            }
            Ok(h)
        });
        m.layers = seq.into_layers();
        m
    }

    /// Appends a layer (builder style); it gets the next index.
    pub fn push(mut self, layer: impl Layer + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self
    }

    /// Appends a boxed layer and returns its index.
    pub fn add(&mut self, layer: Box<dyn Layer>) -> usize {
        self.layers.push(layer);
        self.layers.len() - 1
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
}

/// Adds `g` to the running gradient of a node.
fn accumulate(slot: &mut Option<Tensor>, g: &Tensor) -> Result<()> {
    *slot = Some(match slot.take() {
        Some(s) => (s + g)?,
        None => g.clone(),
    });
    Ok(())
}

impl Model for GraphModel {
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.tape = None;
        let x = x.detach();
        let mut nodes = Vec::new();
        let n = self.layers.len();
        let mut ctx = GraphCtx {
            layers: &mut self.layers,
            train,
            nodes: &mut nodes,
            called: vec![false; n],
        };
        let out = (self.forward)(&mut ctx, &x)?;
        let detached = out.detach();
        if train {
            self.tape = Some(Tape { nodes, output: out });
        }
        Ok(detached)
    }

    fn backward(&mut self, grad_output: &Tensor) -> Result<()> {
        let Tape { nodes, output } = self.tape.take().ok_or_else(|| CoreError::MissingRecord {
            layer: "GraphModel".into(),
            what: "backward without a recorded forward".into(),
        })?;
        if grad_output.dims() != output.dims() {
            return Err(crate::error::shape_err(
                "GraphModel::backward gradient",
                &format!("{:?} (the output's shape)", output.dims()),
                grad_output.dims(),
            ));
        }
        let by_id: HashMap<TensorId, usize> = nodes
            .iter()
            .enumerate()
            .map(|(k, n)| (n.output.as_tensor().id(), k))
            .collect();
        let mut grads: Vec<Option<Tensor>> = vec![None; nodes.len()];
        // Sends `g = ∂L/∂t` from a glue tensor `t` to every probe with index < `limit`:
        // directly when `t` is a probe, else through candle's tape of `Σ t ⊙ g`.
        let send = |t: &Tensor, g: &Tensor, limit: usize, grads: &mut Vec<Option<Tensor>>| {
            if let Some(&k) = by_id.get(&t.id()) {
                if k < limit {
                    return accumulate(&mut grads[k], g);
                }
            }
            if !t.track_op() {
                return Ok(());
            }
            let store = (t * g.detach())?.sum_all()?.backward()?;
            for (k, node) in nodes.iter().enumerate().take(limit) {
                if let Some(gk) = store.get(node.output.as_tensor()) {
                    accumulate(&mut grads[k], gk)?;
                }
            }
            Ok::<(), CoreError>(())
        };
        send(&output, grad_output, nodes.len(), &mut grads)?;
        // Reverse call order: a layer's output gradient is complete once every layer
        // called after it has passed its input gradient back.
        for k in (0..nodes.len()).rev() {
            let node = &nodes[k];
            let g = match grads[k].take() {
                Some(g) => g,
                // The output does not reach the loss: its gradient is zero.
                None => node.output.as_tensor().zeros_like()?,
            };
            let layer = &mut self.layers[node.layer];
            match layer.backward(&g, node.input_tracked)? {
                Some(dx) if node.input_tracked => send(&node.input, &dx, k, &mut grads)?,
                None if node.input_tracked => {
                    return Err(CoreError::InvalidArgument(format!(
                        "layer {} ({}) returned no input gradient, but its input depends on \
                         earlier layers",
                        node.layer,
                        layer.name()
                    )))
                }
                _ => {}
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

    fn clear(&mut self) {
        self.tape = None;
        for l in self.layers.iter_mut() {
            l.clear();
        }
    }
}

/// Softmax along `dim`, from `exp` and `sum` so that candle's autograd differentiates it
/// correctly (candle-nn's fused `softmax_last_dim` returns no gradient). The row maximum
/// is subtracted, detached, for stability: softmax is shift-invariant, so the gradient
/// through the shift is zero and dropping it is exact.
///
/// ```
/// use dp_core::graph::softmax;
/// use candle_core::{Device, Tensor, D};
/// let p = softmax(&Tensor::new(&[[1f32, 2., 3.]], &Device::Cpu).unwrap(), D::Minus1).unwrap();
/// let s: f32 = p.to_vec2::<f32>().unwrap()[0].iter().sum();
/// assert!((s - 1.0).abs() < 1e-6);
/// ```
pub fn softmax<D: Dim + Copy>(x: &Tensor, dim: D) -> Result<Tensor> {
    let m = x.max_keepdim(dim)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    let s = e.sum_keepdim(dim)?;
    Ok(e.broadcast_div(&s)?)
}
