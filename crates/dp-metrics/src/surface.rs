//! The model abstraction used by the landscape, sharpness and Hessian metrics.
//!
//! [`LossSurface`] is deliberately tiny and independent of any training crate: anything that
//! can evaluate a mean loss (and its gradient) on a fixed probe set at given parameters can be
//! measured. [`ParamLayout`] converts between a parameter list and one flat `f64` vector, which
//! is how the metrics do their arithmetic (accumulation in `f64`). [`QuadraticSurface`] is a
//! reference implementation with a known Hessian, used in tests and examples.

use std::ops::Range;

use candle_core::{DType, Device, Tensor};

use crate::error::{MetricsError, Result};

/// A loss evaluated on a fixed probe set as a function of the model parameters.
///
/// Implementations must evaluate in eval mode (no dropout, frozen normalisation statistics) on
/// the *same* probe examples for every call, so that the surface is a deterministic function.
pub trait LossSurface {
    /// The parameters around which to measure, in a stable order (weights as candle Tensors;
    /// rank ≥ 2 tensors have "filters" along dim 0; rank-1 tensors are biases/gains).
    fn parameters(&self) -> Vec<Tensor>;
    /// Mean loss on the fixed probe set at the given parameters (same shapes/order).
    fn loss_at(&mut self, params: &[Tensor]) -> std::result::Result<f64, MetricsError>;
    /// Gradient of that mean loss at the given parameters.
    fn grad_at(&mut self, params: &[Tensor]) -> std::result::Result<Vec<Tensor>, MetricsError>;
}

/// Shapes, dtypes and device of a parameter list, for flattening to one `f64` vector and back.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_metrics::ParamLayout;
/// let p = vec![
///     Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?,
///     Tensor::new(&[5f32], &Device::Cpu)?,
/// ];
/// let layout = ParamLayout::of(&p);
/// assert_eq!(layout.numel(), 5);
/// let flat = layout.flatten(&p)?;
/// assert_eq!(flat, vec![1., 2., 3., 4., 5.]);
/// let back = layout.unflatten(&flat)?;
/// assert_eq!(back[0].dims(), &[2, 2]);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ParamLayout {
    shapes: Vec<Vec<usize>>,
    dtypes: Vec<DType>,
    devices: Vec<Device>,
}

impl ParamLayout {
    /// The layout of `params`.
    pub fn of(params: &[Tensor]) -> Self {
        Self {
            shapes: params.iter().map(|t| t.dims().to_vec()).collect(),
            dtypes: params.iter().map(|t| t.dtype()).collect(),
            devices: params.iter().map(|t| t.device().clone()).collect(),
        }
    }

    /// Shapes of the tensors.
    pub fn shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }

    /// The parameters' dtypes.
    pub fn dtypes(&self) -> &[DType] {
        &self.dtypes
    }

    /// Total number of scalar parameters.
    pub fn numel(&self) -> usize {
        self.shapes
            .iter()
            .map(|s| s.iter().product::<usize>())
            .sum()
    }

    /// The range of each tensor inside the flat vector.
    pub fn ranges(&self) -> Vec<Range<usize>> {
        let mut start = 0;
        self.shapes
            .iter()
            .map(|s| {
                let n: usize = s.iter().product();
                let r = start..start + n;
                start += n;
                r
            })
            .collect()
    }

    /// Checks that `params` has this layout's count and shapes.
    pub fn check(&self, params: &[Tensor]) -> Result<()> {
        if params.len() != self.shapes.len() {
            return Err(MetricsError::ShapeMismatch(format!(
                "expected {} parameter tensors, got {}",
                self.shapes.len(),
                params.len()
            )));
        }
        for (i, (t, s)) in params.iter().zip(&self.shapes).enumerate() {
            if t.dims() != s.as_slice() {
                return Err(MetricsError::ShapeMismatch(format!(
                    "parameter {i}: expected shape {s:?}, got {:?}",
                    t.dims()
                )));
            }
        }
        Ok(())
    }

    /// Concatenates `params` (row-major) into one `f64` vector, checking the layout.
    pub fn flatten(&self, params: &[Tensor]) -> Result<Vec<f64>> {
        self.check(params)?;
        let mut out = Vec::with_capacity(self.numel());
        for t in params {
            out.extend(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?);
        }
        Ok(out)
    }

    /// Splits a flat vector back into tensors of this layout's shapes, dtypes and devices.
    pub fn unflatten(&self, flat: &[f64]) -> Result<Vec<Tensor>> {
        if flat.len() != self.numel() {
            return Err(MetricsError::ShapeMismatch(format!(
                "flat vector has {} entries, layout needs {}",
                flat.len(),
                self.numel()
            )));
        }
        self.ranges()
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let t =
                    Tensor::from_vec(flat[r].to_vec(), self.shapes[i].as_slice(), &Device::Cpu)?
                        .to_dtype(self.dtypes[i])?
                        .to_device(&self.devices[i])?;
                Ok(t)
            })
            .collect()
    }
}

/// Flattens a parameter (or gradient, or direction) list into one `f64` vector.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let v = dp_metrics::flatten_params(&[Tensor::new(&[1f32, 2.], &Device::Cpu)?])?;
/// assert_eq!(v, vec![1.0, 2.0]);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn flatten_params(params: &[Tensor]) -> Result<Vec<f64>> {
    ParamLayout::of(params).flatten(params)
}

/// Evaluates the loss at flat parameters `theta` (converted with `layout`).
pub(crate) fn loss_flat<S: LossSurface + ?Sized>(
    surface: &mut S,
    layout: &ParamLayout,
    theta: &[f64],
) -> Result<f64> {
    let params = layout.unflatten(theta)?;
    let l = surface.loss_at(&params)?;
    if !l.is_finite() {
        return Err(MetricsError::NonFinite(format!("loss {l}")));
    }
    Ok(l)
}

/// Evaluates the gradient at flat parameters `theta`, returned flat.
pub(crate) fn grad_flat<S: LossSurface + ?Sized>(
    surface: &mut S,
    layout: &ParamLayout,
    theta: &[f64],
) -> Result<Vec<f64>> {
    let params = layout.unflatten(theta)?;
    let g = surface.grad_at(&params)?;
    let flat = layout.flatten(&g)?;
    crate::error::ensure_finite(&flat, "gradient")?;
    Ok(flat)
}

/// A quadratic loss L(θ) = c + ½ (θ − m)ᵀ A (θ − m) with a known, symmetric Hessian A.
///
/// A reference [`LossSurface`] for tests and examples: its Hessian spectrum and trace are known
/// exactly, and its landscape slices are parabolas.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_metrics::{LossSurface, QuadraticSurface};
/// let theta = vec![Tensor::new(&[1f64, 1.], &Device::Cpu)?];
/// // A = diag(2, 4), minimum at 0, offset 0: L(1, 1) = ½(2 + 4) = 3.
/// let mut q = QuadraticSurface::diagonal(theta.clone(), &[2.0, 4.0])?;
/// assert!((q.loss_at(&theta)? - 3.0).abs() < 1e-12);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
#[derive(Clone, Debug)]
pub struct QuadraticSurface {
    params: Vec<Tensor>,
    layout: ParamLayout,
    hessian: Vec<f64>,
    minimum: Vec<f64>,
    offset: f64,
}

impl QuadraticSurface {
    /// A quadratic with dense Hessian `hessian` (d×d, row-major, must be symmetric), minimiser
    /// `minimum` (length d) and minimum value `offset`; `params` is the measurement point.
    pub fn new(
        params: Vec<Tensor>,
        hessian: Vec<f64>,
        minimum: Vec<f64>,
        offset: f64,
    ) -> Result<Self> {
        let layout = ParamLayout::of(&params);
        let d = layout.numel();
        if hessian.len() != d * d || minimum.len() != d {
            return Err(MetricsError::ShapeMismatch(format!(
                "quadratic with d = {d} needs a {d}x{d} Hessian and a length-{d} minimum"
            )));
        }
        for i in 0..d {
            for j in 0..i {
                if (hessian[i * d + j] - hessian[j * d + i]).abs()
                    > 1e-12 * (1.0 + hessian[i * d + j].abs())
                {
                    return Err(MetricsError::InvalidArgument(
                        "Hessian is not symmetric".into(),
                    ));
                }
            }
        }
        Ok(Self {
            params,
            layout,
            hessian,
            minimum,
            offset,
        })
    }

    /// A quadratic with diagonal Hessian `diag`, minimised at 0 with value 0.
    pub fn diagonal(params: Vec<Tensor>, diag: &[f64]) -> Result<Self> {
        let d = diag.len();
        let mut h = vec![0.0; d * d];
        for (i, v) in diag.iter().enumerate() {
            h[i * d + i] = *v;
        }
        Self::new(params, h, vec![0.0; d], 0.0)
    }

    /// The Hessian (row-major).
    pub fn hessian(&self) -> &[f64] {
        &self.hessian
    }

    fn residual_and_hr(&self, params: &[Tensor]) -> Result<(Vec<f64>, Vec<f64>)> {
        let theta = self.layout.flatten(params)?;
        let d = theta.len();
        let r: Vec<f64> = theta
            .iter()
            .zip(&self.minimum)
            .map(|(t, m)| t - m)
            .collect();
        let hr: Vec<f64> = (0..d)
            .map(|i| {
                self.hessian[i * d..(i + 1) * d]
                    .iter()
                    .zip(&r)
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect();
        Ok((r, hr))
    }
}

impl LossSurface for QuadraticSurface {
    fn parameters(&self) -> Vec<Tensor> {
        self.params.clone()
    }

    fn loss_at(&mut self, params: &[Tensor]) -> Result<f64> {
        let (r, hr) = self.residual_and_hr(params)?;
        Ok(self.offset + 0.5 * r.iter().zip(&hr).map(|(a, b)| a * b).sum::<f64>())
    }

    fn grad_at(&mut self, params: &[Tensor]) -> Result<Vec<Tensor>> {
        let (_, hr) = self.residual_and_hr(params)?;
        self.layout.unflatten(&hr)
    }
}

// ---- small f64 vector helpers shared by the crate ----

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub(crate) fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// `a + s·b`.
pub(crate) fn axpy(a: &[f64], s: f64, b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + s * y).collect()
}

/// Cosine similarity; `None` if either vector is zero.
pub(crate) fn cosine(a: &[f64], b: &[f64]) -> Option<f64> {
    let na = norm(a);
    let nb = norm(b);
    if na > 0.0 && nb > 0.0 {
        Some((dot(a, b) / (na * nb)).clamp(-1.0, 1.0))
    } else {
        None
    }
}
