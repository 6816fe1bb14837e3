//! The layers dp-core can train privately, one file per layer type.
//!
//! Images are channels-last (`[B, H, W, C]`); use [`ChannelsLast`] first to feed PyTorch-
//! layout `[B, C, H, W]` batches. Layers with parameters implement
//! [`crate::PerSampleGrad`]; activations, pooling, flattening and dropout need no rule.

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
mod shape;

pub use activation::{Relu, Sigmoid, Tanh};
pub use batch_norm::batch_norm;
pub use conv2d::{Conv2d, Conv2dConfig};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use group_norm::GroupNorm;
pub use layer_norm::LayerNorm;
pub use linear::Linear;
pub use pool::{AvgPool2d, GlobalAvgPool, MaxPool2d};
pub use shape::{ChannelsLast, Flatten, Reshape};
