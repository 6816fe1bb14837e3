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
    /// The name within its layer (`"weight"`, `"bias"`, as PyTorch names them);
    /// [`crate::Model::named_params`] prefixes it with the layer (`"2.weight"`).
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
/// type; nothing else in dp-core has to change. A learned per-feature scale
/// `y = x ⊙ s` on inputs `[B, D]`, whose example `i` has the gradient `∂ℓ_i/∂s = g_i ⊙ x_i`
/// (`g_i` its row of the output gradient), checked against one backward per example:
///
/// ```
/// use dp_core::layers::Linear;
/// use dp_core::{check_per_sample_gradients, CoreError, CrossEntropy, GradMode, Init};
/// use dp_core::{Layer, Param, PerSampleGrad, Result, Sequential};
/// use candle_core::{Device, Tensor};
///
/// struct Scale { s: Param, x: Option<Tensor>, g: Option<Tensor> }
///
/// impl Scale {
///     /// `[B, D]`: row `i` is example `i`'s gradient.
///     fn grads(&self) -> Result<Tensor> {
///         match (&self.x, &self.g) {
///             (Some(x), Some(g)) => Ok((x * g)?),
///             _ => Err(CoreError::MissingRecord { layer: self.name(), what: "no record".into() }),
///         }
///     }
/// }
///
/// impl Layer for Scale {
///     fn name(&self) -> String { "Scale".into() }
///     fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
///         if train { self.x = Some(x.clone()); }
///         Ok(x.broadcast_mul(&self.s.value)?)
///     }
///     fn backward(&mut self, g: &Tensor, need_input_grad: bool) -> Result<Option<Tensor>> {
///         self.g = Some(g.clone()); // the per-sample rule's input
///         Ok(if need_input_grad { Some(g.broadcast_mul(&self.s.value)?) } else { None })
///     }
///     fn params(&self) -> Vec<&Param> { vec![&self.s] }
///     fn params_mut(&mut self) -> Vec<&mut Param> { vec![&mut self.s] }
///     fn per_sample(&mut self) -> Option<&mut dyn PerSampleGrad> { Some(self) }
///     fn clear(&mut self) { self.x = None; self.g = None; }
/// }
///
/// impl PerSampleGrad for Scale {
///     fn sq_norms(&mut self, _: GradMode) -> Result<Tensor> { Ok(self.grads()?.sqr()?.sum(1)?) }
///     fn per_sample_grads(&mut self) -> Result<Vec<Tensor>> { Ok(vec![self.grads()?]) }
///     fn weighted_sum(&mut self, w: &Tensor) -> Result<Vec<Tensor>> {
///         let g = self.grads()?; // Σ_i w_i g_i = wᵀ G
///         Ok(vec![w.to_dtype(g.dtype())?.unsqueeze(0)?.matmul(&g)?.squeeze(0)?])
///     }
/// }
///
/// let dev = Device::Cpu;
/// let mut init = Init::seeded(0);
/// let scale = Scale { s: Param::new("scale", init.normal(&[4], 1.0, &dev)?), x: None, g: None };
/// let mut m = Sequential::new(&dev)
///     .push(scale)
///     .push(Linear::new(4, 3, true, &mut init, &dev)?);
/// let x = init.normal(&[5, 4], 1.0, &dev)?;
/// let y = Tensor::new(&[0u32, 1, 2, 0, 1], &dev)?;
/// let report = check_per_sample_gradients(&mut m, &x, &y, &CrossEntropy, 1e-3)?;
/// assert!(report.passed, "{report:?}");
/// # Ok::<(), CoreError>(())
/// ```
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

    /// How the layer's parameters and output differ from PyTorch's layouts, for loading
    /// and saving PyTorch weights ([`crate::weights`]). The default, [`TorchLayout::Same`],
    /// is right for a layer whose parameters PyTorch stores alike and that does not change
    /// whether its output is a channels-last image.
    fn torch_layout(&self) -> TorchLayout {
        TorchLayout::Same
    }
}

/// What a layer does to PyTorch compatibility of weights ([`Layer::torch_layout`]).
///
/// dp-core's images are channels-last `[B, H, W, C]`, PyTorch's `[B, C, H, W]`: a
/// convolution kernel is laid out differently, and flattening an image orders its values
/// differently, which changes the meaning of the next linear layer's weight columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchLayout {
    /// Parameters as PyTorch lays them out; the output is an image iff the input was.
    Same,
    /// A convolution: the `weight` is `[C_out, kh, kw, C_in/g]` here and
    /// `[C_out, C_in/g, kh, kw]` in PyTorch; the output is a channels-last image.
    ConvKernel,
    /// No parameters; the output is a channels-last image (pooling, `ChannelsLast`).
    Images,
    /// The output is a vector in the order PyTorch's would have (global pooling, a
    /// channels-first flatten).
    Vector,
    /// Flattens a channels-last image in `(h, w, c)` order, where PyTorch's flatten of
    /// `[B, C, H, W]` gives `(c, h, w)`: PyTorch weights of the next linear layer would be
    /// wrong, so loading them is refused.
    FlattenChannelsLast,
}

/// A layer's per-sample gradient rule (Opacus's "grad sampler", one per layer type).
///
/// All three methods work from the record of the last `forward(train=true)` + `backward`.
/// Gradients are those of each example's own loss `ℓ_i` (the backward pass ran on `Σ_i ℓ_i`).
/// The engine calls them; a caller can too (an example implementation is on [`Layer`]):
///
/// ```
/// use dp_core::layers::Linear;
/// use dp_core::{CoreError, GradMode, Init, Layer};
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let mut lin = Linear::new(3, 2, true, &mut Init::seeded(0), &dev)?;
/// lin.forward(&Tensor::new(&[[1f32, 2., 3.], [0., 1., 0.]], &dev)?, true)?;
/// lin.backward(&Tensor::new(&[[1f32, -1.], [0.5, 0.]], &dev)?, false)?;
/// let rule = lin.per_sample().ok_or(CoreError::InvalidArgument("no rule".into()))?;
/// // ‖g_i‖² without forming g_i (Li et al. 2021) ...
/// let ghost: Vec<f32> = rule.sq_norms(GradMode::Ghost)?.to_vec1()?;
/// // ... equals the norm of the materialised gradients, `[B, 2, 3]` and `[B, 2]`.
/// let g = rule.per_sample_grads()?;
/// let direct: Vec<f32> = (g[0].sqr()?.sum((1, 2))? + g[1].sqr()?.sum(1)?)?.to_vec1()?;
/// assert!(ghost.iter().zip(&direct).all(|(a, b)| (a - b).abs() < 1e-5));
/// // Clipping weights c_i give Σ_i c_i g_i in one product (book-keeping).
/// let c = Tensor::new(&[0.5f32, 1.0], &dev)?;
/// let sum = rule.weighted_sum(&c)?;
/// let want = ((&g[0].get(0)? * 0.5)? + g[0].get(1)?)?;
/// let err: f32 = (&sum[0] - want)?.abs()?.max_all()?.to_scalar()?;
/// assert!(err < 1e-6);
/// # Ok::<(), CoreError>(())
/// ```
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

    /// Whether the layer implements [`PerSampleGrad::begin_factored_ascent`] and
    /// [`PerSampleGrad::mix_factored_ascent`] (Linear and Conv2d do). BAM takes its fast
    /// path only when every private layer does, and otherwise materialises.
    fn supports_factored_ascent(&self) -> bool {
        false
    }

    /// Per-example offsets `Δ_i = s_i·g_i` along each example's **own recorded gradient**
    /// (`scales` = `s`, shape `[B]`), for the next `forward(train=true)` + `backward`, as
    /// [`PerSampleGrad::set_example_offsets`] with `offsets = s_i·per_sample_grads()` — but
    /// without materialising `g_i` where it has a cheaper form. A linear-type layer's
    /// per-example gradient is `G_iᵀA_i` over the example's `T` positions, so the extra
    /// forward output `A′_iΔ_iᵀ = s_i(A′_iA_iᵀ)G_i` and the extra input gradient
    /// `G′_iΔ_i = s_i(G′_iG_iᵀ)A_i` are position Gram matrices applied (BAM's ascent points,
    /// Knolle et al. 2023). Call it after the plain pass's backward (and its norms); the
    /// layer keeps that pass's record for [`PerSampleGrad::mix_factored_ascent`].
    /// [`Layer::clear`] drops both.
    ///
    /// ```
    /// use dp_core::layers::Linear;
    /// use dp_core::{Init, Layer};
    /// use candle_core::{Device, Tensor};
    /// let dev = Device::Cpu;
    /// let mut lin = Linear::new(3, 2, true, &mut Init::seeded(0), &dev).unwrap();
    /// let x = Tensor::new(&[[1f32, 2., 3.], [0., 1., 0.]], &dev).unwrap();
    /// let gy = Tensor::new(&[[1f32, -1.], [0.5, 0.]], &dev).unwrap();
    /// lin.forward(&x, true).unwrap();
    /// lin.backward(&gy, false).unwrap();
    /// let rule = lin.per_sample().unwrap();
    /// let g = rule.per_sample_grads().unwrap(); // the plain gradients
    /// rule.begin_factored_ascent(&Tensor::new(&[0.1f32, 0.0], &dev).unwrap()).unwrap();
    /// // The second pass evaluates example 0 at θ + 0.1·g_0 and example 1 at θ.
    /// lin.forward(&x, true).unwrap();
    /// lin.backward(&gy, false).unwrap();
    /// let rule = lin.per_sample().unwrap();
    /// rule.mix_factored_ascent(0.5).unwrap();
    /// // The mixed gradient h_i = ½g_i + ½g′_i; here g′_i = g_i (the output gradient was fixed).
    /// let h = rule.per_sample_grads().unwrap();
    /// let d = (&h[0] - &g[0]).unwrap().abs().unwrap().sum_all().unwrap();
    /// assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
    /// ```
    fn begin_factored_ascent(&mut self, scales: &Tensor) -> Result<()> {
        let _ = scales;
        Err(crate::CoreError::InvalidArgument(
            "this layer does not support factored ascent offsets".into(),
        ))
    }

    /// After the pass at the ascent points of [`PerSampleGrad::begin_factored_ascent`]:
    /// replaces the layer's record by that of the mixed gradient
    /// `h_i = (1 − α)·g_i + α·g′_i`, so that [`PerSampleGrad::sq_norms`],
    /// [`PerSampleGrad::weighted_sum`] and [`PerSampleGrad::per_sample_grads`] then give
    /// `h_i`'s norms, clipped sum and values. For a linear-type layer the mix is the record of
    /// `2T` positions `[A_i; A′_i]`, `[(1−α)G_i; αG′_i]`, so its ghost norm and
    /// book-keeping sum form no per-example gradient. Drops the ascent offsets.
    fn mix_factored_ascent(&mut self, alpha: f64) -> Result<()> {
        let _ = alpha;
        Err(crate::CoreError::InvalidArgument(
            "this layer does not support factored ascent offsets".into(),
        ))
    }
}
