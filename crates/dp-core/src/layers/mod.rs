//! The layers dp-core can train privately, one file per layer type.
//!
//! Images are channels-last (`[B, H, W, C]`); use [`ChannelsLast`] first to feed PyTorch-
//! layout `[B, C, H, W]` batches. Layers with parameters implement
//! [`crate::PerSampleGrad`]; activations, pooling, flattening and dropout need no rule.
//!
//! Every layer with parameters is built one of two ways: `new(shape…, init, device)` draws
//! PyTorch's default initialisation (norm layers start at gain 1, bias 0 and need only the
//! device), and `from_tensors(config…, tensors…)` takes given weights (PyTorch's names:
//! `weight`, `bias`), checking their shapes with a typed [`crate::CoreError::Shape`]
//! instead of failing later inside an op. The norm layers use PyTorch's default
//! ε = [`NORM_EPS`] (1e-5); `.with_eps(ε)` sets another.
//!
//! | layer | fresh | from given tensors |
//! |---|---|---|
//! | [`Linear`] | `new(in, out, bias, init, device)` | `from_tensors(weight [out, in], Option<bias [out]>)` |
//! | [`Conv2d`] | `new(cfg, init, device)` | `from_tensors(cfg, weight [C_out, kh, kw, C_in/g], Option<bias [C_out]>)` |
//! | [`WsConv2d`] | `new(cfg, init, device)` | `from_tensors(cfg, raw weight, Option<bias>)` |
//! | [`Embedding`] | `new(vocab, dim, init, device)` | `from_tensors(weight [V, D])` |
//! | [`LayerNorm`] | `new(dim, device)` | `from_tensors(gamma [D], beta [D])` |
//! | [`GroupNorm`] | `new(groups, channels, device)` | `from_tensors(groups, gamma [C], beta [C])` |
//! | [`NonAffineGroupNorm`] | `new(groups, channels)` (no parameters) | — |
//!
//! Besides the layers, this folder holds the rules they share: `seq_linear` (the
//! per-sample rule of every linear-type layer: Linear, Conv2d, Embedding's weighted sum)
//! and `norm_common` / `affine_norm` (GroupNorm and LayerNorm). Layers call the host
//! kernels of `crate::kernels` for f32 CPU tensors, deciding through
//! `crate::kernels::dispatch`; the kernels never call back into a layer.

mod activation;
mod affine_norm;
mod batch_norm;
mod conv2d;
mod dropout;
mod embedding;
mod group_norm;
mod layer_norm;
mod linear;
mod norm_common;
mod pool;
pub(crate) mod seq_linear;
mod shape;
mod ws_conv2d;

pub use activation::{Relu, Sigmoid, Tanh};
pub use batch_norm::batch_norm;
pub use conv2d::{Conv2d, Conv2dConfig};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use group_norm::{GroupNorm, NonAffineGroupNorm};
pub use layer_norm::LayerNorm;
pub use linear::Linear;
pub use norm_common::NORM_EPS;
pub use pool::{AvgPool2d, GlobalAvgPool, MaxPool2d};
pub use shape::{ChannelsLast, Flatten, Reshape};
pub use ws_conv2d::{WsConv2d, WS_EPS};
