//! Pooling on channels-last images (no parameters).
//!
//! candle's `max_pool2d` backward is wrong (a 2×2 max gets gradient 0.25) and rejects
//! kernel ≠ stride, which the DP-literature MNIST CNN needs (MaxPool(2, stride 1)); these
//! layers use the patch gather of [`crate::patches`] and are tested by finite differences.

use crate::error::{shape_err, CoreError, Result};
use crate::kernels::dispatch::fast_path_rows as fast_path;
use crate::kernels::pool::{AvgPool, MaxPoolBwd, MaxPoolFwd};
use crate::layer::Layer;
use crate::patches::{PatchCache, PatchIndex, Window2d};
use candle_core::Tensor;
use std::sync::{Arc, Mutex};

fn window(k: usize, s: usize) -> Window2d {
    Window2d {
        kernel: (k, k),
        stride: (s, s),
        padding: (0, 0),
        dilation: (1, 1),
    }
}

fn missing(layer: &str) -> CoreError {
    CoreError::MissingRecord {
        layer: layer.into(),
        what: "backward before forward(train=true)".into(),
    }
}

/// Max pooling with a `k×k` window and stride `s` on `[B, H, W, C]`.
///
/// ```
/// use dp_core::{layers::MaxPool2d, Layer};
/// use candle_core::{Device, Tensor};
/// let x = Tensor::arange(0f32, 9., &Device::Cpu).unwrap().reshape((1, 3, 3, 1)).unwrap();
/// let y = MaxPool2d::new(2, 1).forward(&x, false).unwrap();
/// assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![4., 5., 7., 8.]);
/// ```
pub struct MaxPool2d {
    win: Window2d,
    cache: PatchCache,
    rec: Option<MaxRecord>,
}

enum MaxRecord {
    /// Generic candle ops (any device): the patch index and the argmax within each window.
    Generic(PatchIndex, Tensor),
    /// CPU kernel: flat argmax pixel per output entry, batch, `H·W`, `C`, `(H, W)`.
    Fast(Arc<Vec<u32>>, usize, usize, usize, (usize, usize)),
}

impl MaxPool2d {
    /// A `k×k` window moved by `stride`.
    pub fn new(k: usize, stride: usize) -> Self {
        Self {
            win: window(k, stride),
            cache: PatchCache::default(),
            rec: None,
        }
    }
}

impl Layer for MaxPool2d {
    fn torch_layout(&self) -> crate::layer::TorchLayout {
        crate::layer::TorchLayout::Images
    }
    fn name(&self) -> String {
        format!(
            "MaxPool2d({}, stride {})",
            self.win.kernel.0, self.win.stride.0
        )
    }
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, h, w, c) = x
            .dims4()
            .map_err(|_| shape_err(&self.name(), "[B, H, W, C]", x.dims()))?;
        let idx = self.cache.get(self.win, h, w, x.device())?;
        let (ho, wo) = idx.output;
        if fast_path(x) {
            let op = MaxPoolFwd {
                idx: idx.host_index(),
                hw: h * w,
                c,
                k: idx.kernel_len,
                arg: Mutex::new(Vec::new()),
            };
            let y = x.contiguous()?.apply_op1_no_bwd(&op)?;
            if train {
                let arg = op
                    .arg
                    .into_inner()
                    .map_err(|_| CoreError::InvalidArgument("max-pool kernel failed".into()))?;
                self.rec = Some(MaxRecord::Fast(Arc::new(arg), b, h * w, c, (h, w)));
            }
            return Ok(y.reshape((b, ho, wo, c))?);
        }
        let cols = idx.unfold(x)?; // [B, L, k, C]
        let y = cols.max_keepdim(2)?;
        if train {
            let arg = cols.argmax_keepdim(2)?; // [B, L, 1, C]
            self.rec = Some(MaxRecord::Generic(idx.clone(), arg));
        }
        Ok(y.reshape((b, ho, wo, c))?)
    }
    fn backward(&mut self, g: &Tensor, need: bool) -> Result<Option<Tensor>> {
        let rec = self.rec.as_ref().ok_or_else(|| missing("MaxPool2d"))?;
        if !need {
            return Ok(None);
        }
        let (idx, arg) = match rec {
            MaxRecord::Fast(arg, b, hw, c, (h, w)) => {
                let op = MaxPoolBwd {
                    arg: arg.clone(),
                    batch: *b,
                    hw: *hw,
                    c: *c,
                };
                let dx = g.contiguous()?.apply_op1_no_bwd(&op)?;
                return Ok(Some(dx.reshape((*b, *h, *w, *c))?));
            }
            MaxRecord::Generic(idx, arg) => (idx, arg),
        };
        let (b, l, _, c) = arg.dims4()?;
        let g4 = g.reshape((b, l, 1, c))?;
        let z = Tensor::zeros((b, l, idx.kernel_len, c), g.dtype(), g.device())?;
        let cols = z.scatter_add(arg, &g4, 2)?;
        Ok(Some(idx.fold(&cols)?))
    }
    fn clear(&mut self) {
        self.rec = None;
    }
}

/// Average pooling with a `k×k` window and stride `s` on `[B, H, W, C]`.
///
/// ```
/// use dp_core::{layers::AvgPool2d, Layer};
/// use candle_core::{Device, Tensor};
/// let x = Tensor::arange(0f32, 4., &Device::Cpu).unwrap().reshape((1, 2, 2, 1)).unwrap();
/// let y = AvgPool2d::new(2, 2).forward(&x, false).unwrap();
/// assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1.5]);
/// ```
pub struct AvgPool2d {
    win: Window2d,
    cache: PatchCache,
    rec: Option<PatchIndex>,
}

impl AvgPool2d {
    /// A `k×k` window moved by `stride`.
    pub fn new(k: usize, stride: usize) -> Self {
        Self {
            win: window(k, stride),
            cache: PatchCache::default(),
            rec: None,
        }
    }
}

impl Layer for AvgPool2d {
    fn torch_layout(&self) -> crate::layer::TorchLayout {
        crate::layer::TorchLayout::Images
    }
    fn name(&self) -> String {
        format!(
            "AvgPool2d({}, stride {})",
            self.win.kernel.0, self.win.stride.0
        )
    }
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, h, w, c) = x
            .dims4()
            .map_err(|_| shape_err(&self.name(), "[B, H, W, C]", x.dims()))?;
        let idx = self.cache.get(self.win, h, w, x.device())?;
        let y = if fast_path(x) {
            let op = AvgPool {
                idx: idx.host_index(),
                hw: h * w,
                c,
                k: idx.kernel_len,
                backward: false,
            };
            x.contiguous()?.apply_op1_no_bwd(&op)?
        } else {
            idx.unfold(x)?.mean(2)?
        };
        if train {
            self.rec = Some(idx.clone());
        }
        let (ho, wo) = idx.output;
        Ok(y.reshape((b, ho, wo, c))?)
    }
    fn backward(&mut self, g: &Tensor, need: bool) -> Result<Option<Tensor>> {
        let idx = self.rec.as_ref().ok_or_else(|| missing("AvgPool2d"))?;
        if !need {
            return Ok(None);
        }
        let (b, ho, wo, c) = g.dims4()?;
        let k = idx.kernel_len;
        if fast_path(g) {
            let op = AvgPool {
                idx: idx.host_index(),
                hw: idx.input.0 * idx.input.1,
                c,
                k,
                backward: true,
            };
            let dx = g.contiguous()?.apply_op1_no_bwd(&op)?;
            return Ok(Some(dx.reshape((b, idx.input.0, idx.input.1, c))?));
        }
        let g4 = (g.reshape((b, ho * wo, 1, c))? / k as f64)?;
        let cols = g4.broadcast_as((b, ho * wo, k, c))?.contiguous()?;
        Ok(Some(idx.fold(&cols)?))
    }
    fn clear(&mut self) {
        self.rec = None;
    }
}

/// Mean over all spatial positions: `[B, H, W, C]` → `[B, C]`.
///
/// ```
/// use dp_core::{layers::GlobalAvgPool, Layer};
/// use candle_core::{Device, Tensor};
/// let x = Tensor::arange(0f32, 4., &Device::Cpu).unwrap().reshape((1, 2, 2, 1)).unwrap();
/// let y = GlobalAvgPool::default().forward(&x, false).unwrap();
/// assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![1.5]]);
/// ```
#[derive(Default)]
pub struct GlobalAvgPool {
    shape: Option<(usize, usize, usize, usize)>,
}

impl Layer for GlobalAvgPool {
    fn torch_layout(&self) -> crate::layer::TorchLayout {
        crate::layer::TorchLayout::Vector
    }
    fn name(&self) -> String {
        "GlobalAvgPool".into()
    }
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, h, w, c) = x
            .dims4()
            .map_err(|_| shape_err(&self.name(), "[B, H, W, C]", x.dims()))?;
        if train {
            self.shape = Some((b, h, w, c));
        }
        Ok(x.reshape((b, h * w, c))?.mean(1)?)
    }
    fn backward(&mut self, g: &Tensor, need: bool) -> Result<Option<Tensor>> {
        let (b, h, w, c) = self.shape.ok_or_else(|| missing("GlobalAvgPool"))?;
        if !need {
            return Ok(None);
        }
        let g = (g.reshape((b, 1, c))? / (h * w) as f64)?;
        Ok(Some(
            g.broadcast_as((b, h * w, c))?
                .contiguous()?
                .reshape((b, h, w, c))?,
        ))
    }
    fn clear(&mut self) {
        self.shape = None;
    }
}
