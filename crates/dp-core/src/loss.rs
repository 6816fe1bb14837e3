//! Per-example losses with hand-written gradients.

use crate::error::{shape_err, CoreError, Result};
use candle_core::{DType, Tensor, D};

/// A loss that returns each example's value and the gradient of their **sum** with
/// respect to the model output (so row `i` of the gradient is `∂ℓ_i/∂output_i`: the
/// per-example convention of DP-SGD, not the gradient of the mean).
pub trait Loss {
    /// Per-example losses `[B]` and `∂(Σ_i ℓ_i)/∂output`.
    fn loss_and_grad(&self, output: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)>;
    /// Per-example losses `[B]` only.
    fn loss(&self, output: &Tensor, targets: &Tensor) -> Result<Tensor> {
        Ok(self.loss_and_grad(output, targets)?.0)
    }
    /// The model output width this loss needs for a dataset of `num_classes` classes, if it
    /// fixes one (cross-entropy: one logit per class). Trainers check it when they are built,
    /// so a model of the wrong width fails at once instead of training silently (or failing
    /// at the first label beyond its width). `None` (the default): no constraint.
    fn output_width(&self, num_classes: usize) -> Option<usize> {
        let _ = num_classes;
        None
    }
}

/// Softmax cross-entropy on logits `[B, K]` with class ids `[B]` (u32).
///
/// ```
/// use dp_core::{CrossEntropy, Loss};
/// use candle_core::{Device, Tensor};
/// let logits = Tensor::new(&[[0f32, 0.]], &Device::Cpu).unwrap();
/// let y = Tensor::new(&[1u32], &Device::Cpu).unwrap();
/// let l = CrossEntropy.loss(&logits, &y).unwrap().to_vec1::<f32>().unwrap();
/// assert!((l[0] - 2f32.ln()).abs() < 1e-6);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CrossEntropy;

impl Loss for CrossEntropy {
    fn loss_and_grad(&self, logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, k) = logits
            .dims2()
            .map_err(|_| shape_err("CrossEntropy logits", "[B, K]", logits.dims()))?;
        if targets.dims() != [b] {
            return Err(shape_err(
                "CrossEntropy targets",
                &format!("[{b}]"),
                targets.dims(),
            ));
        }
        let targets = targets.to_dtype(DType::U32)?;
        // A label ≥ K would make `gather` fail with an opaque index error (or, on some
        // backends, read out of bounds): refuse it by name.
        if b > 0 {
            let top = targets.max(0)?.to_scalar::<u32>()?;
            if top as usize >= k {
                return Err(CoreError::InvalidLabel {
                    label: top as u64,
                    classes: k,
                });
            }
        }
        let max = logits.max_keepdim(D::Minus1)?;
        let z = logits.broadcast_sub(&max)?;
        let e = z.exp()?;
        let s = e.sum_keepdim(D::Minus1)?;
        let logp = z.broadcast_sub(&s.log()?)?;
        let picked = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
        let loss = picked.neg()?;
        let p = e.broadcast_div(&s)?;
        let classes = Tensor::arange(0u32, k as u32, logits.device())?.unsqueeze(0)?;
        let onehot = classes
            .broadcast_eq(&targets.unsqueeze(1)?)?
            .to_dtype(logits.dtype())?;
        Ok((loss, (p - onehot)?))
    }
    fn output_width(&self, num_classes: usize) -> Option<usize> {
        Some(num_classes)
    }
}

/// Half squared error `½‖output_i − target_i‖²` on `[B, K]` outputs and targets.
///
/// ```
/// use dp_core::{HalfSquaredError, Loss};
/// use candle_core::{Device, Tensor};
/// let o = Tensor::new(&[[1f32, 2.]], &Device::Cpu).unwrap();
/// let t = Tensor::new(&[[0f32, 0.]], &Device::Cpu).unwrap();
/// assert_eq!(HalfSquaredError.loss(&o, &t).unwrap().to_vec1::<f32>().unwrap(), vec![2.5]);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct HalfSquaredError;

impl Loss for HalfSquaredError {
    fn loss_and_grad(&self, output: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
        if output.dims() != targets.dims() || output.rank() != 2 {
            return Err(shape_err(
                "HalfSquaredError",
                "[B, K] outputs and targets",
                targets.dims(),
            ));
        }
        let diff = (output - targets.to_dtype(output.dtype())?)?;
        let loss = (diff.sqr()?.sum(1)? * 0.5)?;
        Ok((loss, diff))
    }
}

/// Fraction of rows whose arg-max equals the class id.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let logits = Tensor::new(&[[0f32, 1.], [1., 0.]], &Device::Cpu).unwrap();
/// let y = Tensor::new(&[1u32, 1], &Device::Cpu).unwrap();
/// assert_eq!(dp_core::accuracy(&logits, &y).unwrap(), 0.5);
/// ```
pub fn accuracy(logits: &Tensor, targets: &Tensor) -> Result<f64> {
    let b = logits.dim(0)?;
    if b == 0 {
        return Ok(0.0);
    }
    let pred = logits.argmax(D::Minus1)?;
    let correct = pred
        .eq(&targets.to_dtype(DType::U32)?)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(correct as f64 / b as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_refuses_a_label_beyond_the_logits() {
        let logits = Tensor::new(&[[0f32, 0., 1.], [1., 2., 3.]], &Device::Cpu).unwrap();
        for (labels, bad) in [([0u32, 3], 3u64), ([7, 1], 7)] {
            let y = Tensor::new(&labels, &Device::Cpu).unwrap();
            match CrossEntropy.loss_and_grad(&logits, &y) {
                Err(CoreError::InvalidLabel { label, classes }) => {
                    assert_eq!((label, classes), (bad, 3))
                }
                other => panic!("{labels:?}: {other:?}"),
            }
        }
        let ok = Tensor::new(&[2u32, 0], &Device::Cpu).unwrap();
        assert!(CrossEntropy.loss_and_grad(&logits, &ok).is_ok());
        assert_eq!(CrossEntropy.output_width(10), Some(10));
        assert_eq!(HalfSquaredError.output_width(10), None);
    }
}
