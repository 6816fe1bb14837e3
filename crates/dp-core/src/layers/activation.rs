//! Elementwise activations (no parameters, so no per-sample rule).

use crate::error::{CoreError, Result};
use crate::kernels::{activation, dispatch};
use crate::layer::Layer;
use candle_core::Tensor;

fn missing(layer: &str) -> CoreError {
    CoreError::MissingRecord {
        layer: layer.into(),
        what: "backward before forward(train=true)".into(),
    }
}

/// `max(x, 0)`.
///
/// ```
/// use dp_core::{layers::Relu, Layer};
/// use candle_core::{Device, Tensor};
/// let y = Relu::default().forward(&Tensor::new(&[-1f32, 2.], &Device::Cpu).unwrap(), false).unwrap();
/// assert_eq!(y.to_vec1::<f32>().unwrap(), vec![0., 2.]);
/// ```
#[derive(Default)]
pub struct Relu {
    mask: Option<Tensor>,
}

impl Layer for Relu {
    fn name(&self) -> String {
        "ReLU".into()
    }
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = if dispatch::fast_path(x) {
            activation::map1(x, |v| v.max(0.0))?
        } else {
            x.relu()?
        };
        if train {
            // The output is kept; the 0/1 mask is derived in backward only when needed.
            self.mask = Some(y.clone());
        }
        Ok(y)
    }
    fn backward(&mut self, g: &Tensor, need: bool) -> Result<Option<Tensor>> {
        let y = self.mask.as_ref().ok_or_else(|| missing("ReLU"))?;
        if !need {
            return Ok(None);
        }
        if dispatch::fast_path(g) && dispatch::fast_path(y) {
            // g·1[y > 0] in one pass, the same products as below (NaN·0 stays NaN).
            return Ok(Some(activation::map2(g, y, |gi, yi| {
                gi * if yi > 0.0 { 1.0 } else { 0.0 }
            })?));
        }
        let m = y.gt(0f64)?.to_dtype(g.dtype())?;
        Ok(Some((g * m)?))
    }
    fn clear(&mut self) {
        self.mask = None;
    }
}

/// `tanh(x)` (the activation of Papernot et al. 2021 / Tramèr & Boneh 2021 DP CNNs).
///
/// ```
/// use dp_core::{layers::Tanh, Layer};
/// use candle_core::{Device, Tensor};
/// let y = Tanh::default().forward(&Tensor::new(&[0f32], &Device::Cpu).unwrap(), false).unwrap();
/// assert_eq!(y.to_vec1::<f32>().unwrap(), vec![0.]);
/// ```
#[derive(Default)]
pub struct Tanh {
    y: Option<Tensor>,
}

impl Layer for Tanh {
    fn name(&self) -> String {
        "Tanh".into()
    }
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = activation::tanh(x)?;
        if train {
            self.y = Some(y.clone());
        }
        Ok(y)
    }
    fn backward(&mut self, g: &Tensor, need: bool) -> Result<Option<Tensor>> {
        let y = self.y.as_ref().ok_or_else(|| missing("Tanh"))?;
        if !need {
            return Ok(None);
        }
        if dispatch::fast_path(g) && dispatch::fast_path(y) {
            // The same f32 operations as below, in one pass.
            return Ok(Some(activation::map2(g, y, |gi, yi| gi * (1.0 - yi * yi))?));
        }
        // d tanh = 1 − y²
        let d = y.sqr()?.affine(-1.0, 1.0)?;
        Ok(Some((g * d)?))
    }
    fn clear(&mut self) {
        self.y = None;
    }
}

/// The logistic function `1/(1 + e^{−x})`.
///
/// ```
/// use dp_core::{layers::Sigmoid, Layer};
/// use candle_core::{Device, Tensor};
/// let y = Sigmoid::default().forward(&Tensor::new(&[0f32], &Device::Cpu).unwrap(), false).unwrap();
/// assert_eq!(y.to_vec1::<f32>().unwrap(), vec![0.5]);
/// ```
#[derive(Default)]
pub struct Sigmoid {
    y: Option<Tensor>,
}

impl Layer for Sigmoid {
    fn name(&self) -> String {
        "Sigmoid".into()
    }
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        // σ(x) = (1 + tanh(x/2))/2: one fast tanh instead of exp + division.
        let y = activation::tanh(&(x * 0.5)?)?.affine(0.5, 0.5)?;
        if train {
            self.y = Some(y.clone());
        }
        Ok(y)
    }
    fn backward(&mut self, g: &Tensor, need: bool) -> Result<Option<Tensor>> {
        let y = self.y.as_ref().ok_or_else(|| missing("Sigmoid"))?;
        if !need {
            return Ok(None);
        }
        let d = (y * y.affine(-1.0, 1.0)?)?;
        Ok(Some((g * d)?))
    }
    fn clear(&mut self) {
        self.y = None;
    }
}
