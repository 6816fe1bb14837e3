//! Helpers shared by the unit tests of the host kernels.

use candle_core::{DType, Device, Tensor};

/// Seeded standard normals of `shape` (candle's own CPU RNG cannot be seeded).
pub(crate) fn seeded_normal(shape: &[usize], seed: u64) -> Tensor {
    crate::Init::seeded(seed)
        .normal(shape, 1.0, &Device::Cpu)
        .unwrap()
}

/// All values of `t` as f64, flattened.
pub(crate) fn f64_values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Asserts that `a` and `b` hold the same number of values, each pair within `tol`.
pub(crate) fn assert_close(a: &Tensor, b: &Tensor, tol: f64) {
    let (a, b) = (f64_values(a), f64_values(b));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= tol, "{x} vs {y}");
    }
}
