//! The two small traits every layer implements.
//!
//! dp-core does not use candle's autograd for training: each layer writes its own forward
//! and backward pass. That gives three things candle's tape cannot: the gradient of every
//! layer's *output* (needed by per-sample rules; candle keeps gradients for leaves only),
//! correct gradients where candle's are wrong or missing (`max_pool2d`, `layer_norm`), and
//! a hot path with no tape overhead.

use crate::error::Result;
use candle_core::Tensor;

/// A named trainable tensor.
///
/// Parameters are plain tensors (not `Var`s): optimisers replace `value` with the updated
/// tensor. The order in which a model lists its parameters is the order of every gradient
/// vector dp-core returns.
#[derive(Debug, Clone)]
pub struct Param {
    /// A name unique within the model, e.g. `"2.weight"`.
    pub name: String,
    /// The current value.
    pub value: Tensor,
}

impl Param {
    /// A parameter with the given name and value.
    pub fn new(name: impl Into<String>, value: Tensor) -> Self {
        Self {
            name: name.into(),
            value,
        }
    }
}

/// How a layer obtains its per-example gradient norms and its clipped sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum GradMode {
    /// Let each layer pick the cheaper of the two below (Bu et al. 2022's mixed
    /// strategy; for linear-type layers: ghost when `T·(p+r) ≤ p·r`).
    #[default]
    Auto,
    /// Ghost norms (Li et al. 2021) and book-keeping (Bu et al. 2022): norms from
    /// activations and output gradients without materialising per-example gradients,
    /// then `Σ_i c_i g_i` as one weighted product.
    Ghost,
    /// Materialise per-example gradients, take their norms, and sum the clipped ones.
    Materialize,
}

/// A layer: a forward pass that records what its backward needs, and a backward pass.
///
/// Implement this (and, if the layer has parameters, [`PerSampleGrad`]) to add a layer
/// type; nothing else in dp-core has to change.
pub trait Layer: Send {
    /// A short human-readable name (used in errors and parameter names).
    fn name(&self) -> String;

    /// Computes the output. With `train = true` the layer records the activations its
    /// backward pass and per-sample rule need; with `train = false` it records nothing.
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor>;

    /// Receives dL/d(output) for the *summed* per-example loss and returns dL/d(input)
    /// (or `None` when `need_input_grad` is false, e.g. for the first layer). Layers with
    /// parameters keep `grad_out` for their per-sample rule.
    fn backward(&mut self, grad_out: &Tensor, need_input_grad: bool) -> Result<Option<Tensor>>;

    /// The layer's parameters (empty for activations, pooling, ...).
    fn params(&self) -> Vec<&Param> {
        Vec::new()
    }

    /// Mutable access to the parameters, in the same order as [`Layer::params`].
    fn params_mut(&mut self) -> Vec<&mut Param> {
        Vec::new()
    }

    /// The layer's per-sample gradient rule, if it has parameters.
    fn per_sample(&mut self) -> Option<&mut dyn PerSampleGrad> {
        None
    }

    /// Drops recorded activations and gradients (frees memory between steps).
    fn clear(&mut self) {}
}

/// A layer's per-sample gradient rule (Opacus's "grad sampler", one per layer type).
///
/// All three methods work from the record of the last `forward(train=true)` + `backward`.
/// Gradients are those of each example's own loss `ℓ_i` (the backward pass ran on `Σ_i ℓ_i`).
pub trait PerSampleGrad {
    /// Squared norm of each example's gradient over this layer's parameters, shape `[B]`.
    fn sq_norms(&mut self, mode: GradMode) -> Result<Tensor>;

    /// Materialised per-example gradients, one tensor `[B, ..param shape]` per parameter.
    fn per_sample_grads(&mut self) -> Result<Vec<Tensor>>;

    /// `Σ_i w_i g_i` for the given per-example weights `w` (shape `[B]`), one tensor per
    /// parameter with the parameter's shape. Book-keeping: no per-example tensor is formed
    /// unless the layer already materialised them in [`PerSampleGrad::sq_norms`].
    fn weighted_sum(&mut self, weights: &Tensor) -> Result<Vec<Tensor>>;

    /// Squared norm of each example's gradient over the coordinates `masks` keeps (one
    /// 0/1 tensor per parameter in [`Layer::params`] order, `None` for a dense one), shape
    /// `[B]`: what clipping bounds when pruned coordinates are not trained. The default
    /// materialises the per-example gradients; layers with a cheaper identity override it.
    fn masked_sq_norms(&mut self, masks: &[Option<Tensor>]) -> Result<Tensor> {
        let grads = self.per_sample_grads()?;
        crate::mask::masked_sq_norms_of(&grads, masks)
    }

    /// Augmentation multiplicity (De et al. 2022, §3.1): the batch held `K` augmented
    /// copies of each example in consecutive rows; afterwards the rule treats each group
    /// of `K` rows as one example whose gradient is the **mean** of the copies' gradients,
    /// so that clipping bounds the average (the sensitivity stays `C`). Called by the
    /// engine after the backward pass; a layer that cannot do it returns an error.
    fn group_examples(&mut self, k: usize) -> Result<()> {
        let _ = k;
        Err(crate::CoreError::InvalidArgument(
            "this layer does not support augmentation multiplicity".into(),
        ))
    }

    /// Per-example parameters for the next `forward(train=true)` + `backward`: example `i`
    /// is evaluated at `θ + Δ_i`, where `offsets` holds one tensor `[B, ..param shape]` per
    /// parameter (in [`Layer::params`] order). The per-sample rule is unchanged — it then
    /// yields `∇ℓ_i(θ + Δ_i)` — and the input gradient passed back is the one at the
    /// perturbed parameters. This is what a per-example objective evaluated away from `θ`
    /// needs (BAM's ascent points, Knolle et al. 2023) without running `B` models.
    /// [`Layer::clear`] drops the offsets. A layer that cannot do it returns an error (the
    /// default), so an objective that needs it refuses the model instead of ignoring the
    /// offsets.
    fn set_example_offsets(&mut self, offsets: Vec<Tensor>) -> Result<()> {
        let _ = offsets;
        Err(crate::CoreError::InvalidArgument(
            "this layer does not support per-example parameter offsets".into(),
        ))
    }
}
