//! Parameter initialisation from a seeded ChaCha20 generator.
//!
//! candle's CPU device RNG cannot be seeded (`Device::Cpu.set_seed` errors), so every
//! random initial weight is drawn here and copied to the target device: a model built
//! with the same seed is bit-for-bit the same on every run and device.

use crate::error::Result;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// A seeded source of initial weights.
#[derive(Debug, Clone)]
pub struct Init {
    rng: ChaCha20Rng,
}

impl Init {
    /// A generator seeded with `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
        }
    }

    /// A generator seeded from the operating system.
    pub fn from_entropy() -> Self {
        Self {
            rng: ChaCha20Rng::from_entropy(),
        }
    }

    /// `U(-bound, bound)` values of the given shape (PyTorch's default for Linear/Conv is
    /// `bound = 1/sqrt(fan_in)`, Kaiming-uniform with `a = √5`).
    pub fn uniform(&mut self, shape: &[usize], bound: f64, device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let b = bound as f32;
        let v: Vec<f32> = (0..n).map(|_| self.rng.gen_range(-b..=b)).collect();
        Ok(Tensor::from_vec(v, shape, device)?)
    }

    /// `N(0, std²)` values of the given shape.
    pub fn normal(&mut self, shape: &[usize], std: f64, device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let z: f64 = self.rng.sample(rand_distr::StandardNormal);
                (z * std) as f32
            })
            .collect();
        Ok(Tensor::from_vec(v, shape, device)?)
    }
}
