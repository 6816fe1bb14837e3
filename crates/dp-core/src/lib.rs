//! # dp-core: per-sample gradients, clipping and noise
//!
//! The engine that turns a batch into a privatised gradient, on candle tensors (CPU; CUDA
//! with the `cuda` feature, which forwards to candle's).
//!
//! ```text
//! batch ──forward(train)──▶ logits ──Loss──▶ ∂ℓ_i/∂logits
//!       ◀──backward──────── every private layer records (activations, output grads)
//! PerSampleGrad::sq_norms   ‖g_i‖² per layer: ghost norm or materialised (GradMode)
//! ClipStrategy::factors     c_i (flat, per-layer, AUTO-S, caller-supplied)
//! engine                    checks ‖c_i g_i‖ ≤ S for every i (coupling, not care)
//! PerSampleGrad::weighted_sum  Σ_i c_i g_i, one GEMM per layer (book-keeping)
//! privatize                 + N(0, σ²S²) once, from ChaCha20  → NoisyGradient
//! NoisyGradient::normalized ÷ expected batch size (a public constant)
//! ```
//!
//! Why not candle's autograd: it keeps gradients for leaves only, has a wrong
//! `max_pool2d` backward and silently missing LayerNorm gradients (see
//! `shared/docs/candle-notes.md`). Each dp-core layer writes its own forward and backward,
//! which gives the per-sample rules the output gradients they need from **one** backward
//! pass of the summed loss, with no second backward (book-keeping, Bu et al. 2022).
//!
//! Images are channels-last (`[B, H, W, C]`); [`weights`] loads and saves parameters by
//! name in PyTorch's layouts too.
//!
//! Speed on the CPU: f32 layers run on fused host kernels (matrix products through the
//! `gemm` crate's AVX-512 kernels, single-pass normalisation, AVX-512 noise), and a
//! training binary should call [`configure_cpu_threads`] first thing in `main` so that
//! candle's element-wise pool does not spin on the cores the products use.
//!
//! ```
//! use dp_core::{clipped_gradient, privatize, models, CrossEntropy, GaussianNoise, GradOptions};
//! use dp_core::clipping::FlatClip;
//! use candle_core::{Device, Tensor};
//! let dev = Device::Cpu;
//! let mut model = models::mlp(&[20, 16, 4], &dev, 0).unwrap();
//! let x = Tensor::randn(0f32, 1., (32, 20), &dev).unwrap();
//! let y = Tensor::from_vec((0..32u32).map(|i| i % 4).collect::<Vec<_>>(), 32, &dev).unwrap();
//! let mut clip = FlatClip::new(1.0).unwrap();
//! let clipped = clipped_gradient(&mut model, &x, &y, &CrossEntropy, &mut clip, &GradOptions::default()).unwrap();
//! let noisy = privatize(clipped, 1.1, &mut GaussianNoise::seeded(42)).unwrap();
//! let grad = noisy.normalized(32.0).unwrap(); // divide by the *expected* batch size
//! assert_eq!(grad.len(), 4);
//! ```

mod bam;
mod check;
pub mod clipping;
mod engine;
mod error;
pub mod graph;
pub mod host;
mod init;
mod kernels;
mod layer;
pub mod layers;
mod loss;
mod mask;
mod model;
pub mod models;
mod noise;
pub mod patches;
mod residual;
mod runtime;
#[cfg(test)]
mod test_util;
pub mod weights;

pub use bam::{bam_clipped_gradient, per_example_ascent_gradients, BamConfig};
pub use candle_core;
pub use check::{check_per_sample_gradients, CheckReport};
pub use clipping::{ClipStrategy, LayerSqNorms};
pub use engine::{
    batch_gradient, clipped_gradient, layer_sq_norms, named_per_example_gradients,
    per_example_gradients, privatize, ClipStats, ClippedBatch, GradOptions, NamedLayerSqNorms,
    NoisyGradient, NonFinitePolicy,
};
pub use error::{CoreError, Result};
pub use init::Init;
pub use layer::{GradMode, Layer, Param, PerSampleGrad, TorchLayout};
pub use loss::{accuracy, CrossEntropy, HalfSquaredError, Loss};
pub use mask::{magnitude_keep, GradientMask, Prunable, PruneScope};
pub use model::{Model, Sequential};
pub use noise::{GaussianNoise, NoiseState};
pub use residual::{Residual, Shortcut};
pub use runtime::configure_cpu_threads;
