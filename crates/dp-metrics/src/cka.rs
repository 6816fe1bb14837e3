//! Linear centred kernel alignment (Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of
//! Neural Network Representations Revisited", ICML, eq. (4) / §3; algorithms.md §12.8).
//!
//! With column-centred X ∈ ℝ^{n×p₁}, Y ∈ ℝ^{n×p₂} (activations of the same n probe examples),
//! CKA = ‖YᵀX‖²_F / (‖XᵀX‖_F · ‖YᵀY‖_F) (feature form), or equivalently
//! tr(KHLH)/√(tr(KHKH)·tr(LHLH)) with K = XXᵀ, L = YYᵀ (Gram form). The feature form is used
//! when max(p₁, p₂) < n, the Gram form otherwise. Computed in f64 with matmuls.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{MetricsError, Result};

fn centred(x: &Tensor, n: usize) -> Result<Tensor> {
    let x = x.to_dtype(DType::F64)?;
    // Column means via a [1, n] × [n, p] matmul (avoids the slow sum(0)).
    let ones = Tensor::full(1.0 / n as f64, (1, n), x.device())?;
    let mean = ones.matmul(&x)?;
    let c = x.broadcast_sub(&mean)?;
    let v = c.sqr()?.sum_all()?.to_scalar::<f64>()?;
    if !v.is_finite() {
        return Err(MetricsError::NonFinite("activations".into()));
    }
    Ok(c)
}

fn frob2(t: &Tensor) -> Result<f64> {
    Ok(t.sqr()?.sum_all()?.to_scalar::<f64>()?)
}

fn dims(x: &Tensor, y: &Tensor) -> Result<(usize, usize, usize)> {
    let (n1, p1) = x.dims2().map_err(|_| {
        MetricsError::ShapeMismatch(format!("X must be [n, p], got {:?}", x.dims()))
    })?;
    let (n2, p2) = y.dims2().map_err(|_| {
        MetricsError::ShapeMismatch(format!("Y must be [n, p], got {:?}", y.dims()))
    })?;
    if n1 != n2 {
        return Err(MetricsError::ShapeMismatch(format!(
            "X has {n1} examples, Y has {n2}"
        )));
    }
    if n1 < 2 || p1 == 0 || p2 == 0 {
        return Err(MetricsError::EmptyInput(
            "CKA needs n ≥ 2 examples and ≥ 1 feature".into(),
        ));
    }
    Ok((n1, p1, p2))
}

fn finish(num: f64, dx: f64, dy: f64) -> Result<f64> {
    if dx <= 0.0 || dy <= 0.0 {
        return Err(MetricsError::InvalidArgument(
            "CKA undefined: a representation is constant".into(),
        ));
    }
    Ok((num / (dx * dy)).clamp(0.0, 1.0))
}

/// Linear CKA in feature form, ‖YᵀX‖²_F / (‖XᵀX‖_F‖YᵀY‖_F), after centring.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 1.], [2., 0.5]], &Device::Cpu)?;
/// assert!((dp_metrics::linear_cka_features(&x, &x)? - 1.0).abs() < 1e-12);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn linear_cka_features(x: &Tensor, y: &Tensor) -> Result<f64> {
    let (n, _, _) = dims(x, y)?;
    let xc = centred(x, n)?;
    let yc = centred(y, n)?;
    let num = frob2(&yc.t()?.matmul(&xc)?)?;
    let dx = frob2(&xc.t()?.matmul(&xc)?)?.sqrt();
    let dy = frob2(&yc.t()?.matmul(&yc)?)?.sqrt();
    finish(num, dx, dy)
}

/// Linear CKA in Gram form, tr(KHLH)/√(tr(KHKH)·tr(LHLH)).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[1f32, 0., 3.], [0., 1., 1.], [1., 1., 0.]], &Device::Cpu)?;
/// let y = (x.clone() * 3.0)?;
/// assert!((dp_metrics::linear_cka_gram(&x, &y)? - 1.0).abs() < 1e-12);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn linear_cka_gram(x: &Tensor, y: &Tensor) -> Result<f64> {
    let (n, _, _) = dims(x, y)?;
    let xc = centred(x, n)?;
    let yc = centred(y, n)?;
    // With centred columns, HKH = XcXcᵀ.
    let k = xc.matmul(&xc.t()?)?;
    let l = yc.matmul(&yc.t()?)?;
    let num = (&k * &l)?.sum_all()?.to_scalar::<f64>()?;
    finish(num, frob2(&k)?.sqrt(), frob2(&l)?.sqrt())
}

/// Linear CKA between two representations of the same n examples (§12.8): 1 for identical
/// representations, invariant to orthogonal transforms and isotropic scaling, in [0, 1].
/// Picks the feature form when max(p₁, p₂) < n, the Gram form otherwise.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[1f32, 2.], [3., 1.], [0., 1.], [2., 2.]], &Device::Cpu)?;
/// // Rotate by 90° and scale by 2: CKA stays 1.
/// let r = Tensor::new(&[[0f32, 2.], [-2., 0.]], &Device::Cpu)?;
/// assert!((dp_metrics::linear_cka(&x, &x.matmul(&r)?)? - 1.0).abs() < 1e-9);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn linear_cka(x: &Tensor, y: &Tensor) -> Result<f64> {
    let (n, p1, p2) = dims(x, y)?;
    if p1.max(p2) < n {
        linear_cka_features(x, y)
    } else {
        linear_cka_gram(x, y)
    }
}

/// CKA of one layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerCka {
    /// Layer name.
    pub name: String,
    /// Linear CKA.
    pub cka: f64,
}

/// Per-layer linear CKA between two models' activations on the same probe set (§14.6), e.g.
/// a DP model against the non-DP reference, against its initialisation, or across time.
/// Layers are matched by position; names come from `a`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[1f32, 2.], [3., 1.], [0., 1.]], &Device::Cpu)?;
/// let a = vec![("fc1".to_string(), x.clone())];
/// let r = dp_metrics::cka_by_layer(&a, &a)?;
/// assert!((r[0].cka - 1.0).abs() < 1e-9);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn cka_by_layer(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> Result<Vec<LayerCka>> {
    if a.len() != b.len() {
        return Err(MetricsError::ShapeMismatch(format!(
            "{} layers vs {}",
            a.len(),
            b.len()
        )));
    }
    a.iter()
        .zip(b)
        .map(|((name, x), (_, y))| {
            Ok(LayerCka {
                name: name.clone(),
                cka: linear_cka(x, y)?,
            })
        })
        .collect()
}
