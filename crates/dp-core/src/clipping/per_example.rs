use super::{check_norm, ClipFactors, ClipStrategy, LayerSqNorms};
use crate::error::{CoreError, Result};

type FactorFn = dyn FnMut(&[f64]) -> Vec<f64> + Send;

/// Caller-supplied per-example weights, for methods that scale rather than clip
/// (e.g. DPSGD-Global-Adapt, Esipova et al. 2023, Alg. 1: `c_i = C/Z` if `‖g_i‖ ≤ Z`,
/// else `C/‖g_i‖`).
///
/// The closure receives the flat norms `‖g_i‖` and returns one weight per example. The
/// declared `bound` is the sensitivity: the engine shrinks any example whose weighted
/// norm would exceed it, so a wrong closure cannot break the guarantee.
///
/// ```
/// use dp_core::clipping::{ClipStrategy, PerExampleFactor, LayerSqNorms, ClipFactors};
/// let (c, z) = (1.0, 5.0);
/// let mut s = PerExampleFactor::new(c, move |n: &[f64]| {
///     n.iter().map(|&n| if n <= z { c / z } else { c / n }).collect()
/// }).unwrap();
/// let ClipFactors::Flat(f) = s.factors(&LayerSqNorms { per_layer: vec![vec![1.0, 100.0]] }).unwrap() else { unreachable!() };
/// assert_eq!(f, vec![0.2, 0.1]);
/// ```
pub struct PerExampleFactor {
    bound: f64,
    f: Box<FactorFn>,
}

impl PerExampleFactor {
    /// Weights from `f`, with declared sensitivity `bound`.
    pub fn new(bound: f64, f: impl FnMut(&[f64]) -> Vec<f64> + Send + 'static) -> Result<Self> {
        Ok(Self {
            bound: check_norm(bound)?,
            f: Box::new(f),
        })
    }
}

impl ClipStrategy for PerExampleFactor {
    fn factors(&mut self, sq: &LayerSqNorms) -> Result<ClipFactors> {
        let norms = sq.total_norms();
        let w = (self.f)(&norms);
        if w.len() != norms.len() {
            return Err(CoreError::InvalidArgument(format!(
                "per-example factor function returned {} weights for {} examples",
                w.len(),
                norms.len()
            )));
        }
        // The weights are applied in f32: one beyond f32::MAX would become ∞ there (and ∞·0
        // a NaN in the weighted sum), so it is refused like a non-finite one.
        if let Some(bad) = w
            .iter()
            .find(|x| !x.is_finite() || **x < 0.0 || **x > f32::MAX as f64)
        {
            return Err(CoreError::InvalidArgument(format!(
                "per-example weight {bad} is not a finite non-negative f32 number"
            )));
        }
        Ok(ClipFactors::Flat(w.into_iter().map(|x| x as f32).collect()))
    }
    fn sensitivity(&self) -> f64 {
        self.bound
    }
}
