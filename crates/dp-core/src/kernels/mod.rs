//! dp-core's CPU host kernels: fused loops on contiguous f32 host buffers that replace
//! candle ops on the hot path, one module per kind of work.
//!
//! | module | holds |
//! |---|---|
//! | [`dispatch`] | the host-kernel-or-candle decision (`fast_path`, `applies`) and host data access (`with_host`, `f32_slice`); depends on no kernel |
//! | `parallel` | how row-wise kernels split work over rayon's pool |
//! | `fresh` | output buffers written in full without zeroing them first |
//! | [`gemm`] | matrix products of the linear-type layers (forward, input gradient, ghost norms, per-example gradients, weighted sums), on the `gemm` crate |
//! | [`norm`] | single-pass group/layer normalisation forward, backward and per-example affine gradients |
//! | [`elementwise`] | the public `map_elementwise` (re-exported as `dp_core::host::map_elementwise`): any fused f32 update as a scalar closure |
//! | [`activation`] | fast `tanh`, one- and two-input element-wise maps |
//! | [`im2col`] | unfold (im2col) and fold (col2im) |
//! | [`pool`] | max and average pooling, forward and backward |
//!
//! The dependency rule: kernels use [`dispatch`] (and `parallel`, `fresh`), never each other and
//! never the layers; the layers (`crate::layers`), `crate::patches` and the noise use the
//! kernels and [`dispatch`]. Each kernel computes exactly what the candle expression it
//! replaces computes (tested against it), so results never depend on whether a kernel
//! exists for a dtype or device — only the speed does.

pub(crate) mod activation;
pub(crate) mod dispatch;
pub(crate) mod elementwise;
mod fresh;
pub(crate) mod gemm;
pub(crate) mod im2col;
pub(crate) mod norm;
mod parallel;
pub(crate) mod pool;
