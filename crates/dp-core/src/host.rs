//! Direct access to f32 host data, for CPU kernels written outside dp-core (an optimiser's
//! fused update, a new layer's per-sample rule).
//!
//! candle's element-wise ops allocate one tensor per op and, above 64k elements, hand the
//! work to a spinning thread pool (see [`crate::configure_cpu_threads`]); a kernel that reads
//! its inputs once and writes its outputs once is several times faster on the CPU. For an
//! element-wise update, write the arithmetic as a scalar closure and call
//! [`map_elementwise`]: it owns the host slices, the chunking and the threads, and says
//! (`None`) when the caller must keep its candle expression. For anything else, use
//! [`is_host_f32`] to decide and [`with_host_f32`] to read the values.
//!
//! The decision itself lives in dp-core's kernel dispatch module, which every host kernel
//! and layer of dp-core uses too; these functions are its public face.

use candle_core::Tensor;

pub use crate::kernels::elementwise::map_elementwise;

/// Whether every tensor is f32 on the CPU.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let t = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
/// assert!(dp_core::host::is_host_f32(&[&t]));
/// ```
pub fn is_host_f32(tensors: &[&Tensor]) -> bool {
    crate::kernels::dispatch::applies(tensors)
}

/// Runs `f` on the contiguous f32 values of `t` (copied only if `t` is not contiguous).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let t = Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap();
/// let s = dp_core::host::with_host_f32(&t, |v| v.iter().sum::<f32>()).unwrap();
/// assert_eq!(s, 6.0);
/// ```
pub fn with_host_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    crate::kernels::dispatch::with_host(t, f)
}
