//! Evaluation and the one conversion of dataset rows into tensors.

use crate::error::{Result, TrainError};
use candle_core::{Device, Tensor};
use dp_core::{CrossEntropy, Loss, Model};
use dp_data::Dataset;

/// The rows `idx` of `data` as `(inputs, labels)` tensors on `device`: inputs shaped
/// `[rows, example_shape...]`, labels `[rows]`.
///
/// ```
/// let data = dp_data::load_bundled_mnist().unwrap();
/// let (x, y) = dp_optim::batch_tensors(&data.test, &[0, 1, 2], &candle_core::Device::Cpu).unwrap();
/// assert_eq!(x.dims()[0], 3);
/// assert_eq!(y.dims(), &[3]);
/// ```
pub fn batch_tensors(data: &Dataset, idx: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
    rows_to_tensors(data.try_gather(idx)?, data.example_shape(), device)
}

/// A gathered batch (features and labels, possibly augmented) as tensors.
pub(crate) fn rows_to_tensors(
    batch: dp_data::Batch,
    example_shape: &[usize],
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let rows = batch.labels.len();
    let mut shape = vec![rows];
    shape.extend_from_slice(example_shape);
    let x = Tensor::from_vec(batch.features, shape, device)?;
    let y = Tensor::from_vec(batch.labels, rows, device)?;
    Ok((x, y))
}

/// Mean cross-entropy and accuracy of `model` on `data`, in chunks of `batch`.
///
/// An example with a NaN or infinite feature is refused with
/// [`TrainError::NonFiniteExamples`] naming its index (ReLU would map NaN to 0 and report a
/// finite accuracy for data that is broken). If the model's outputs are non-finite (a
/// diverged model), the accuracy is NaN rather than the arg-max of NaNs.
///
/// ```
/// let data = dp_data::load_bundled_mnist().unwrap();
/// let mut m = dp_core::models::mlp(&[784, 8, 10], &candle_core::Device::Cpu, 0).unwrap();
/// let (_loss, acc) = dp_optim::evaluate(&mut m, &data.test, &candle_core::Device::Cpu, 500).unwrap();
/// assert!((0.0..=1.0).contains(&acc));
/// ```
pub fn evaluate<M: Model + ?Sized>(
    model: &mut M,
    data: &Dataset,
    device: &Device,
    batch: usize,
) -> Result<(f64, f64)> {
    evaluate_with(model, data, device, batch, &CrossEntropy)
}

/// [`evaluate`] with another loss (accuracy is the arg-max accuracy of the outputs).
///
/// ```
/// let data = dp_data::load_bundled_mnist().unwrap();
/// let mut m = dp_core::models::mlp(&[784, 8, 10], &candle_core::Device::Cpu, 0).unwrap();
/// let (l, _) = dp_optim::evaluate_with(&mut m, &data.test, &candle_core::Device::Cpu, 500, &dp_core::CrossEntropy).unwrap();
/// assert!(l > 0.0);
/// ```
pub fn evaluate_with<M: Model + ?Sized>(
    model: &mut M,
    data: &Dataset,
    device: &Device,
    batch: usize,
    loss_fn: &dyn Loss,
) -> Result<(f64, f64)> {
    let n = data.len();
    if n == 0 {
        return Err(TrainError::InvalidConfig("empty evaluation set".into()));
    }
    let batch = batch.max(1);
    let (mut loss, mut correct) = (0.0, 0.0);
    let idx: Vec<usize> = (0..n).collect();
    let bad = crate::trainer::non_finite_examples(data, &idx);
    if !bad.is_empty() {
        return Err(TrainError::NonFiniteExamples {
            set: "evaluation".into(),
            indices: bad,
        });
    }
    let mut finite_outputs = true;
    for chunk in idx.chunks(batch) {
        let (x, y) = batch_tensors(data, chunk, device)?;
        let logits = model.forward(&x, false)?;
        finite_outputs &= logits
            .to_dtype(candle_core::DType::F64)?
            .abs()?
            .sum_all()?
            .to_scalar::<f64>()?
            .is_finite();
        loss += loss_fn
            .loss(&logits, &y)?
            .to_dtype(candle_core::DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
        correct += dp_core::accuracy(&logits, &y)? * chunk.len() as f64;
    }
    let accuracy = if finite_outputs {
        correct / n as f64
    } else {
        f64::NAN
    };
    Ok((loss / n as f64, accuracy))
}

/// The arg-max class `model` predicts for every example of `data`, in order, evaluated in
/// chunks of `batch`: what per-class and per-group accuracies
/// (`dp_metrics::accuracy_by_class`) are computed from. A non-finite output row gives class
/// 0 rather than an error (as `argmax` does); [`evaluate`] reports such a model as NaN.
///
/// ```
/// let data = dp_data::load_bundled_mnist().unwrap();
/// let mut m = dp_core::models::mlp(&[784, 8, 10], &candle_core::Device::Cpu, 0).unwrap();
/// let p = dp_optim::predicted_classes(&mut m, &data.test, &candle_core::Device::Cpu, 500).unwrap();
/// assert_eq!(p.len(), data.test.len());
/// assert!(p.iter().all(|&c| c < 10));
/// ```
pub fn predicted_classes<M: Model + ?Sized>(
    model: &mut M,
    data: &Dataset,
    device: &Device,
    batch: usize,
) -> Result<Vec<usize>> {
    let idx: Vec<usize> = (0..data.len()).collect();
    let mut out = Vec::with_capacity(data.len());
    for chunk in idx.chunks(batch.max(1)) {
        let (x, _) = batch_tensors(data, chunk, device)?;
        let logits = model.forward(&x, false)?;
        let classes = logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
        out.extend(classes.into_iter().map(|c| c as usize));
    }
    Ok(out)
}
