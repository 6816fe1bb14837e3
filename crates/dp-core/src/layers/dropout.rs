//! Dropout with its mask drawn from a seeded ChaCha20 generator.

use crate::error::{CoreError, Result};
use crate::layer::Layer;
use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Zeroes each activation with probability `p` during training and scales the rest by
/// `1/(1−p)`; the identity in evaluation. Per-example masks never mix examples, so
/// dropout needs no per-sample rule.
///
/// ```
/// use dp_core::{layers::Dropout, Layer};
/// use candle_core::{DType, Device, Tensor};
/// let mut d = Dropout::new(0.5, 0).unwrap();
/// let x = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
/// assert_eq!(d.forward(&x, false).unwrap().to_vec1::<f32>().unwrap(), vec![1.; 4]);
/// ```
pub struct Dropout {
    p: f64,
    rng: ChaCha20Rng,
    mask: Option<Tensor>,
}

impl Dropout {
    /// Drop probability `p` in `[0, 1)`; masks from a ChaCha20 generator seeded with `seed`.
    pub fn new(p: f64, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(CoreError::InvalidArgument(format!(
                "dropout probability {p} outside [0, 1)"
            )));
        }
        Ok(Self {
            p,
            rng: ChaCha20Rng::seed_from_u64(seed),
            mask: None,
        })
    }
}

impl Layer for Dropout {
    fn name(&self) -> String {
        format!("Dropout({})", self.p)
    }
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            self.mask = None;
            return Ok(x.clone());
        }
        let scale = (1.0 / (1.0 - self.p)) as f32;
        let n = x.elem_count();
        let m: Vec<f32> = (0..n)
            .map(|_| {
                if self.rng.gen::<f64>() < self.p {
                    0.0
                } else {
                    scale
                }
            })
            .collect();
        let mask = Tensor::from_vec(m, x.dims(), x.device())?.to_dtype(x.dtype())?;
        let y = (x * &mask)?;
        self.mask = Some(mask);
        Ok(y)
    }
    fn backward(&mut self, g: &Tensor, need: bool) -> Result<Option<Tensor>> {
        if !need {
            return Ok(None);
        }
        Ok(Some(match &self.mask {
            Some(m) => (g * m)?,
            None => g.clone(),
        }))
    }
    fn clear(&mut self) {
        self.mask = None;
    }
}
