//! Unfolding images into patches (im2col) and folding them back, channels-last.
//!
//! candle has no public im2col. Here a patch matrix is one `index_select` from the image
//! (flattened to `[B, H·W, C]` plus one appended zero row that padded positions point at),
//! and folding is the adjoint: one `index_add` into a zero image. Both are plain candle
//! ops, so they run unchanged on CUDA.

use crate::error::{CoreError, Result};
use crate::kernels::dispatch::fast_path_rows as fast_path;
use crate::kernels::im2col::{Fold, Unfold};
use candle_core::{Device, Tensor};
use std::sync::Arc;

/// Output geometry of a 2-D window operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window2d {
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Stride (rows, cols).
    pub stride: (usize, usize),
    /// Zero padding (rows, cols), applied on both sides.
    pub padding: (usize, usize),
    /// Dilation (rows, cols).
    pub dilation: (usize, usize),
}

impl Window2d {
    /// Output size for an input of `h × w`, or an error if the window does not fit.
    pub fn output_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let f = |n: usize, k: usize, s: usize, p: usize, d: usize| -> Option<usize> {
            // k = 0 is refused before `k - 1` is formed (it would underflow).
            if k == 0 || s == 0 || d == 0 {
                return None;
            }
            let span = d.checked_mul(k - 1)?.checked_add(1)?;
            let padded = n.checked_add(p.checked_mul(2)?)?;
            if padded < span {
                None
            } else {
                Some((padded - span) / s + 1)
            }
        };
        match (
            f(
                h,
                self.kernel.0,
                self.stride.0,
                self.padding.0,
                self.dilation.0,
            ),
            f(
                w,
                self.kernel.1,
                self.stride.1,
                self.padding.1,
                self.dilation.1,
            ),
        ) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => Err(CoreError::InvalidArgument(format!(
                "window {:?} does not fit an input of {h}×{w}",
                self
            ))),
        }
    }
}

/// The gather index of a window operation for one input size.
#[derive(Debug, Clone)]
pub struct PatchIndex {
    /// Input height and width.
    pub input: (usize, usize),
    /// Output height and width.
    pub output: (usize, usize),
    /// `kh·kw`.
    pub kernel_len: usize,
    idx: Tensor,
    host: Arc<Vec<u32>>,
}

impl PatchIndex {
    /// Builds the index on `device`.
    pub fn new(win: Window2d, h: usize, w: usize, device: &Device) -> Result<Self> {
        let (ho, wo) = win.output_size(h, w)?;
        let (kh, kw) = win.kernel;
        let zero_row = (h * w) as u32;
        let mut idx = Vec::with_capacity(ho * wo * kh * kw);
        for oh in 0..ho {
            for ow in 0..wo {
                for ki in 0..kh {
                    for kj in 0..kw {
                        let ih = (oh * win.stride.0 + ki * win.dilation.0) as isize
                            - win.padding.0 as isize;
                        let iw = (ow * win.stride.1 + kj * win.dilation.1) as isize
                            - win.padding.1 as isize;
                        if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < w {
                            idx.push((ih as usize * w + iw as usize) as u32);
                        } else {
                            idx.push(zero_row);
                        }
                    }
                }
            }
        }
        let n = idx.len();
        Ok(Self {
            input: (h, w),
            output: (ho, wo),
            kernel_len: kh * kw,
            idx: Tensor::from_slice(&idx, n, device)?,
            host: Arc::new(idx),
        })
    }

    /// The gather index on the host (`H·W` marks padding).
    pub(crate) fn host_index(&self) -> Arc<Vec<u32>> {
        self.host.clone()
    }

    /// Number of output positions `L = Ho·Wo`.
    pub fn positions(&self) -> usize {
        self.output.0 * self.output.1
    }

    /// `[B, H, W, C]` → patches `[B, L, kh·kw, C]` (zeros where the window is padded).
    pub fn unfold(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        if fast_path(x) {
            let op = Unfold {
                idx: self.host.clone(),
                hw: h * w,
                c,
            };
            let cols = x.contiguous()?.apply_op1_no_bwd(&op)?;
            return Ok(cols.reshape((b, self.positions(), self.kernel_len, c))?);
        }
        let flat = x.reshape((b, h * w, c))?;
        let zero = Tensor::zeros((b, 1, c), x.dtype(), x.device())?;
        let ext = Tensor::cat(&[&flat, &zero], 1)?;
        let cols = ext.index_select(&self.idx, 1)?;
        Ok(cols.reshape((b, self.positions(), self.kernel_len, c))?)
    }

    /// The adjoint of [`PatchIndex::unfold`]: sums patch entries back into an image
    /// `[B, H, W, C]` (contributions to padded positions are dropped).
    pub fn fold(&self, cols: &Tensor) -> Result<Tensor> {
        let (b, _l, _k, c) = cols.dims4()?;
        let (h, w) = self.input;
        if fast_path(cols) {
            let op = Fold {
                idx: self.host.clone(),
                hw: h * w,
                c,
            };
            let img = cols.contiguous()?.apply_op1_no_bwd(&op)?;
            return Ok(img.reshape((b, h, w, c))?);
        }
        let src = cols.reshape((b, self.positions() * self.kernel_len, c))?;
        let acc = Tensor::zeros((b, h * w + 1, c), cols.dtype(), cols.device())?;
        let img = acc.index_add(&self.idx, &src, 1)?;
        Ok(img.narrow(1, 0, h * w)?.reshape((b, h, w, c))?)
    }
}

/// A small cache of patch indices keyed by input size (images of one size per layer is
/// the common case; the cache keeps the last one).
#[derive(Debug, Default, Clone)]
pub(crate) struct PatchCache {
    last: Option<PatchIndex>,
}

impl PatchCache {
    pub fn get(
        &mut self,
        win: Window2d,
        h: usize,
        w: usize,
        device: &Device,
    ) -> Result<PatchIndex> {
        if let Some(p) = &self.last {
            if p.input == (h, w) && p.idx.device().same_device(device) {
                return Ok(p.clone());
            }
        }
        let p = PatchIndex::new(win, h, w, device)?;
        self.last = Some(p.clone());
        Ok(p)
    }
}
