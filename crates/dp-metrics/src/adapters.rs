//! Adapters from dp-core models to the metrics of this crate.
//!
//! The landscape, sharpness and Hessian metrics only see the small [`LossSurface`] trait, so
//! that they stay independent of any training code. [`CoreModelSurface`] is the bridge for
//! dp-core: it wraps a [`dp_core::Model`] and a **fixed** probe set and exposes the mean
//! cross-entropy on that set (and its gradient) as a function of the parameters.
//! [`layer_activations`] extracts the hidden representation of a [`Sequential`] model for
//! [`linear_cka`](crate::linear_cka).
//!
//! Everything here runs the model in eval mode (`forward(x, train = false)`) except the
//! gradient, which needs dp-core's training record; dp-core's gradient engine has no
//! train/eval difference for the layers without dropout or batch statistics, which are the
//! only ones a DP model may contain (BatchNorm is refused by dp-core). Like every metric of
//! this crate, the values are analysis only: see the crate-level contract.

use candle_core::{DType, Tensor};
use dp_core::{batch_gradient, CoreError, CrossEntropy, Loss, Model, Sequential};

use crate::error::{MetricsError, Result};
use crate::surface::{LossSurface, ParamLayout};

/// Default number of probe examples per forward/backward pass: bounds the memory of the
/// recorded activations (a CNN's im2col patches grow with the batch) without making the many
/// loss evaluations of a 2-D landscape slower.
pub const DEFAULT_PROBE_CHUNK: usize = 256;

/// Converts a dp-core error, keeping candle errors and shape mismatches recognisable.
fn core_err(e: CoreError) -> MetricsError {
    match e {
        CoreError::Candle(c) => MetricsError::Candle(c),
        CoreError::Shape { .. } => MetricsError::ShapeMismatch(e.to_string()),
        CoreError::NonFiniteGradient { .. } => MetricsError::NonFinite(e.to_string()),
        other => MetricsError::InvalidArgument(format!("dp-core: {other}")),
    }
}

/// A dp-core model plus a fixed probe set, seen as a [`LossSurface`]: the mean softmax
/// cross-entropy over the probe examples as a function of the model's parameters.
///
/// * [`LossSurface::parameters`] is `model.param_tensors()` (the measurement point).
/// * [`LossSurface::loss_at`] swaps the given parameters in, evaluates
///   (1/n) Σ_i ℓ_i with `forward(train = false)` in chunks of `chunk_size` examples
///   (accumulated in `f64`), and puts the original parameters back.
/// * [`LossSurface::grad_at`] does the same with [`dp_core::batch_gradient`] (the gradient
///   of the *summed* loss per chunk), summed over chunks and divided by n, so it is the
///   gradient of exactly the function `loss_at` evaluates.
///
/// The original parameters are restored even when an evaluation fails, so the wrapped model
/// is unchanged after any call. The probe set should be fixed for the whole analysis (e.g.
/// 1,000 training examples): the surface must be a deterministic function of θ.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_core::{models, Model};
/// use dp_metrics::adapters::CoreModelSurface;
/// use dp_metrics::{random_slice_1d, linspace, BiasHandling, LossSurface};
/// let dev = Device::Cpu;
/// let mut model = models::mlp(&[6, 8, 3], &dev, 0).unwrap();
/// let x = Tensor::randn(0f32, 1., (20, 6), &dev)?;
/// let y = Tensor::from_vec((0..20u32).map(|i| i % 3).collect::<Vec<_>>(), 20, &dev)?;
/// let mut surface = CoreModelSurface::new(&mut model, x, y)?.with_chunk_size(7)?;
/// let theta = surface.parameters();
/// let l0 = surface.loss_at(&theta)?;
/// assert!(l0.is_finite() && l0 > 0.0);
/// // A filter-normalised 1-D slice through the current parameters: its centre is L(θ).
/// let s = random_slice_1d(&mut surface, &theta, 0, BiasHandling::Zero, &linspace(-1.0, 1.0, 5))?;
/// assert!((s.losses[2] - l0).abs() < 1e-6);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub struct CoreModelSurface<'a, M: Model + ?Sized> {
    model: &'a mut M,
    x: Tensor,
    y: Tensor,
    n: usize,
    chunk_size: usize,
}

impl<'a, M: Model + ?Sized> CoreModelSurface<'a, M> {
    /// Wraps `model` with the probe inputs `x` (`[n, ...]`, any shape the model accepts) and
    /// class ids `y` (`[n]`, integer). Errors if the probe set is empty or the counts differ.
    pub fn new(model: &'a mut M, x: Tensor, y: Tensor) -> Result<Self> {
        let n = x.dim(0)?;
        if n == 0 {
            return Err(MetricsError::EmptyInput("probe set has no examples".into()));
        }
        if y.dims() != [n] {
            return Err(MetricsError::ShapeMismatch(format!(
                "probe labels must have shape [{n}], got {:?}",
                y.dims()
            )));
        }
        let y = y.to_dtype(DType::U32)?;
        Ok(Self {
            model,
            x,
            y,
            n,
            chunk_size: DEFAULT_PROBE_CHUNK,
        })
    }

    /// Sets the number of probe examples per pass (≥ 1; default [`DEFAULT_PROBE_CHUNK`]).
    /// The values do not depend on it beyond floating-point rounding.
    pub fn with_chunk_size(mut self, chunk_size: usize) -> Result<Self> {
        if chunk_size == 0 {
            return Err(MetricsError::InvalidArgument(
                "chunk size must be at least 1".into(),
            ));
        }
        self.chunk_size = chunk_size;
        Ok(self)
    }

    /// Number of probe examples n.
    pub fn num_examples(&self) -> usize {
        self.n
    }

    /// The probe chunks as (start, length) pairs.
    fn chunks(&self) -> impl Iterator<Item = (usize, usize)> {
        let (n, c) = (self.n, self.chunk_size);
        (0..n).step_by(c).map(move |s| (s, c.min(n - s)))
    }

    /// Runs `f` with `params` swapped into the model and always restores the originals.
    fn with_params<T>(
        &mut self,
        params: &[Tensor],
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let original = self.model.param_tensors();
        ParamLayout::of(&original).check(params)?;
        self.model.set_param_tensors(params).map_err(core_err)?;
        let out = f(self);
        // Drop any training record a failed gradient pass left behind, then restore.
        self.model.clear();
        self.model.set_param_tensors(&original).map_err(core_err)?;
        out
    }

    /// Mean loss with the model's current parameters.
    fn mean_loss(&mut self) -> Result<f64> {
        let mut total = 0.0;
        for (start, len) in self.chunks().collect::<Vec<_>>() {
            let xc = self.x.narrow(0, start, len)?;
            let yc = self.y.narrow(0, start, len)?;
            let logits = self.model.forward(&xc, false).map_err(core_err)?;
            let per_example = CrossEntropy.loss(&logits, &yc).map_err(core_err)?;
            total += per_example
                .to_dtype(DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
        // A NaN or ∞ feature (or parameters that overflow the logits) gives a NaN loss that
        // would pass for a point of the landscape: refused, as `grad_flat` refuses gradients.
        if !total.is_finite() {
            return Err(MetricsError::NonFinite("probe-set loss".into()));
        }
        Ok(total / self.n as f64)
    }

    /// Gradient of the mean loss with the model's current parameters.
    fn mean_grad(&mut self) -> Result<Vec<Tensor>> {
        let mut sum: Option<Vec<Tensor>> = None;
        for (start, len) in self.chunks().collect::<Vec<_>>() {
            let xc = self.x.narrow(0, start, len)?;
            let yc = self.y.narrow(0, start, len)?;
            let (g, _) =
                batch_gradient(&mut *self.model, &xc, &yc, &CrossEntropy).map_err(core_err)?;
            sum = Some(match sum {
                None => g,
                Some(acc) => acc
                    .iter()
                    .zip(&g)
                    .map(|(a, b)| a + b)
                    .collect::<candle_core::Result<Vec<_>>>()?,
            });
        }
        let sum = sum.ok_or_else(|| MetricsError::EmptyInput("probe set".into()))?;
        let scale = 1.0 / self.n as f64;
        Ok(sum
            .iter()
            .map(|t| t.affine(scale, 0.0))
            .collect::<candle_core::Result<Vec<_>>>()?)
    }
}

impl<M: Model + ?Sized> LossSurface for CoreModelSurface<'_, M> {
    fn parameters(&self) -> Vec<Tensor> {
        self.model.param_tensors()
    }

    fn loss_at(&mut self, params: &[Tensor]) -> Result<f64> {
        self.with_params(params, |s| s.mean_loss())
    }

    fn grad_at(&mut self, params: &[Tensor]) -> Result<Vec<Tensor>> {
        self.with_params(params, |s| s.mean_grad())
    }
}

/// The output of layers `0..=layer_index` of a [`Sequential`] model on `x` (eval mode,
/// `train = false`), flattened to `[n, features]`: the representation to compare with
/// [`linear_cka`](crate::linear_cka) across models (e.g. the penultimate layer, index
/// `model.len() - 2`, of a DP model and of its non-private reference on the same inputs).
///
/// Layers after `layer_index` are not run. Errors if `layer_index` is out of range.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_core::models;
/// use dp_metrics::adapters::layer_activations;
/// let dev = Device::Cpu;
/// // mlp = Reshape, Linear(6→8), ReLU, Linear(8→3): index 2 is the hidden ReLU output.
/// let mut a = models::mlp(&[6, 8, 3], &dev, 0).unwrap();
/// let mut b = models::mlp(&[6, 8, 3], &dev, 1).unwrap();
/// let x = Tensor::randn(0f32, 1., (16, 6), &dev)?;
/// let ha = layer_activations(&mut a, &x, 2)?;
/// assert_eq!(ha.dims(), &[16, 8]);
/// let cka = dp_metrics::linear_cka(&ha, &layer_activations(&mut b, &x, 2)?)?;
/// assert!((0.0..=1.0).contains(&cka));
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn layer_activations(model: &mut Sequential, x: &Tensor, layer_index: usize) -> Result<Tensor> {
    let num_layers = model.len();
    if layer_index >= num_layers {
        return Err(MetricsError::InvalidArgument(format!(
            "layer index {layer_index} out of range for a model with {num_layers} layers"
        )));
    }
    let n = x.dim(0)?;
    let mut h = x.clone();
    for layer in model.layers_mut().into_iter().take(layer_index + 1) {
        h = layer.forward(&h, false).map_err(core_err)?;
    }
    Ok(h.reshape((n, ()))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hessian::{top_eigenvalue, PowerIterationConfig};
    use crate::surface::flatten_params;
    use candle_core::Device;
    use dp_core::models;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A tiny MLP with its parameters and probe set in `f64`, so that finite differences of
    /// the loss are accurate to ~1e-8 and can check the hand-written gradients.
    fn tiny_f64(seed: u64, n: usize) -> (Sequential, Tensor, Tensor) {
        let dev = Device::Cpu;
        let mut model = models::mlp(&[5, 7, 3], &dev, seed).unwrap();
        let p64: Vec<Tensor> = model
            .param_tensors()
            .iter()
            .map(|t| t.to_dtype(DType::F64).unwrap())
            .collect();
        model.set_param_tensors(&p64).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
        let xs: Vec<f64> = (0..n * 5).map(|_| rng.gen_range(-1.5..1.5)).collect();
        let ys: Vec<u32> = (0..n).map(|_| rng.gen_range(0..3)).collect();
        let x = Tensor::from_vec(xs, (n, 5), &dev).unwrap();
        let y = Tensor::from_vec(ys, n, &dev).unwrap();
        (model, x, y)
    }

    #[test]
    fn grad_matches_central_finite_differences() {
        let (mut model, x, y) = tiny_f64(3, 23);
        // A chunk size that does not divide n exercises the chunked sums.
        let mut s = CoreModelSurface::new(&mut model, x, y)
            .unwrap()
            .with_chunk_size(5)
            .unwrap();
        let theta = s.parameters();
        let layout = ParamLayout::of(&theta);
        let flat = layout.flatten(&theta).unwrap();
        let grad = flatten_params(&s.grad_at(&theta).unwrap()).unwrap();
        assert_eq!(grad.len(), flat.len());
        let h = 1e-5;
        let mut max_err: f64 = 0.0;
        for i in 0..flat.len() {
            let mut p = flat.clone();
            p[i] += h;
            let lp = s.loss_at(&layout.unflatten(&p).unwrap()).unwrap();
            p[i] -= 2.0 * h;
            let lm = s.loss_at(&layout.unflatten(&p).unwrap()).unwrap();
            let fd = (lp - lm) / (2.0 * h);
            max_err = max_err.max((fd - grad[i]).abs() / (1e-6 + fd.abs().max(grad[i].abs())));
        }
        assert!(max_err < 1e-5, "max relative error {max_err}");
        // The model is left at its original parameters.
        let after = flatten_params(&s.parameters()).unwrap();
        assert_eq!(after, flat);
    }

    /// In `f32`, compares the directional derivative along the gradient itself (large and
    /// well conditioned) with a central difference of the loss.
    fn check_f32_directional<M: Model>(model: &mut M, x: Tensor, y: Tensor, chunk: usize) {
        let mut s = CoreModelSurface::new(model, x, y)
            .unwrap()
            .with_chunk_size(chunk)
            .unwrap();
        let theta = s.parameters();
        let layout = ParamLayout::of(&theta);
        let flat = layout.flatten(&theta).unwrap();
        let grad = flatten_params(&s.grad_at(&theta).unwrap()).unwrap();
        let gnorm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
        let h = 1e-2 / gnorm;
        let step = |sign: f64| -> Vec<f64> {
            flat.iter()
                .zip(&grad)
                .map(|(t, g)| t + sign * h * g)
                .collect()
        };
        let lp = s.loss_at(&layout.unflatten(&step(1.0)).unwrap()).unwrap();
        let lm = s.loss_at(&layout.unflatten(&step(-1.0)).unwrap()).unwrap();
        let fd = (lp - lm) / (2.0 * h);
        let exact = gnorm * gnorm;
        assert!((fd - exact).abs() < 2e-2 * exact, "fd {fd} vs {exact}");
    }

    #[test]
    fn f32_mlp_grad_matches_finite_differences_loosely() {
        let dev = Device::Cpu;
        let mut model = models::mlp(&[4, 6, 3], &dev, 9).unwrap();
        // Seeded (candle's CPU RNG cannot be seeded): the test is deterministic.
        let x = dp_core::Init::seeded(17)
            .normal(&[17, 4], 1.0, &dev)
            .unwrap();
        let y = Tensor::from_vec((0..17u32).map(|i| i % 3).collect::<Vec<_>>(), 17, &dev).unwrap();
        check_f32_directional(&mut model, x, y, 256);
    }

    #[test]
    fn f32_cnn_grad_matches_finite_differences_loosely() {
        // Conv, tanh, max-pool and linear layers: the gradient order must match the
        // parameter order for every layer type the example uses.
        let dev = Device::Cpu;
        let mut model = models::mnist_cnn(&dev, 4).unwrap();
        let x = dp_core::Init::seeded(6)
            .uniform(&[6, 1, 28, 28], 0.5, &dev)
            .unwrap()
            .affine(1.0, 0.5)
            .unwrap();
        let y = Tensor::new(&[0u32, 3, 5, 7, 9, 1], &dev).unwrap();
        check_f32_directional(&mut model, x, y, 4);
    }

    #[test]
    fn loss_matches_direct_evaluation_and_restores_params() {
        let (mut model, x, y) = tiny_f64(1, 10);
        let logits = model.forward(&x, false).unwrap();
        let direct = CrossEntropy
            .loss(&logits, &y)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let before = flatten_params(&model.param_tensors()).unwrap();
        let mut s = CoreModelSurface::new(&mut model, x, y)
            .unwrap()
            .with_chunk_size(3)
            .unwrap();
        let theta = s.parameters();
        assert!((s.loss_at(&theta).unwrap() - direct).abs() < 1e-12);
        // Evaluating elsewhere changes the loss but not the model.
        let zeros: Vec<Tensor> = theta.iter().map(|t| t.zeros_like().unwrap()).collect();
        let l0 = s.loss_at(&zeros).unwrap();
        assert!((l0 - 3f64.ln()).abs() < 1e-12); // all-zero logits: uniform over 3 classes
        assert_eq!(flatten_params(&model.param_tensors()).unwrap(), before);
    }

    #[test]
    fn top_eigenvalue_is_positive_and_finite() {
        let (mut model, x, y) = tiny_f64(5, 40);
        let mut s = CoreModelSurface::new(&mut model, x, y).unwrap();
        let theta = s.parameters();
        let cfg = PowerIterationConfig {
            max_iter: 50,
            tol: 1e-6,
            seed: 2,
            eps_scale: 1e-4,
        };
        let e = top_eigenvalue(&mut s, &theta, &cfg).unwrap();
        assert!(
            e.eigenvalue.is_finite() && e.eigenvalue > 0.0,
            "{}",
            e.eigenvalue
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let dev = Device::Cpu;
        let mut model = models::mlp(&[4, 3], &dev, 0).unwrap();
        let x = Tensor::zeros((5, 4), DType::F32, &dev).unwrap();
        let y3 = Tensor::zeros(3, DType::U32, &dev).unwrap();
        assert!(CoreModelSurface::new(&mut model, x.clone(), y3).is_err());
        let empty = Tensor::zeros((0, 4), DType::F32, &dev).unwrap();
        let y0 = Tensor::zeros(0, DType::U32, &dev).unwrap();
        assert!(CoreModelSurface::new(&mut model, empty, y0).is_err());
        let y5 = Tensor::zeros(5, DType::U32, &dev).unwrap();
        let mut s = CoreModelSurface::new(&mut model, x.clone(), y5).unwrap();
        assert!(s.loss_at(&[]).is_err());
        assert!(layer_activations(&mut model, &x, 2).is_err());
        assert_eq!(
            layer_activations(&mut model, &x, 1).unwrap().dims(),
            &[5, 3]
        );
    }
}
