//! im2col and col2im on f32 host tensors, channels-last: the custom ops behind
//! [`crate::patches::PatchIndex`]'s `unfold` / `fold`.
//!
//! candle's `index_select` / `index_add` gather and scatter one element at a time; these
//! copy whole channel rows and split the batch over the cores. Tested against the generic
//! candle path (`PatchIndex` on f64).

use super::dispatch::f32_slice;
use super::parallel::par_rows;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use std::sync::Arc;

/// im2col: `[B, H·W·C]` image rows → `[B, L·k, C]` patch rows, `idx` giving the source
/// pixel of each patch entry (`H·W` = padding, read as zero).
pub(crate) struct Unfold {
    pub idx: Arc<Vec<u32>>,
    pub hw: usize,
    pub c: usize,
}

impl CustomOp1 for Unfold {
    fn name(&self) -> &'static str {
        "dp-unfold"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "dp-unfold")?;
        let (c, hw, n) = (self.c, self.hw, self.idx.len());
        let b = x.len() / (hw * c);
        let mut out = vec![0f32; b * n * c];
        par_rows(&mut out, b, b * n * c, |i, o| {
            let img = &x[i * hw * c..(i + 1) * hw * c];
            if c == 1 {
                for (y, &p) in o.iter_mut().zip(self.idx.iter()) {
                    if (p as usize) < hw {
                        *y = img[p as usize];
                    }
                }
            } else {
                for (row, &p) in o.chunks_mut(c).zip(self.idx.iter()) {
                    let p = p as usize;
                    if p < hw {
                        row.copy_from_slice(&img[p * c..(p + 1) * c]);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, n, c))))
    }
}

/// col2im, the adjoint of [`Unfold`]: `[B, L·k, C]` → `[B, H·W, C]`, summing overlaps.
pub(crate) struct Fold {
    pub idx: Arc<Vec<u32>>,
    pub hw: usize,
    pub c: usize,
}

impl CustomOp1 for Fold {
    fn name(&self) -> &'static str {
        "dp-fold"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let cols = f32_slice(s, l, "dp-fold")?;
        let (c, hw, n) = (self.c, self.hw, self.idx.len());
        let b = cols.len() / (n * c);
        let mut out = vec![0f32; b * hw * c];
        par_rows(&mut out, b, b * n * c, |i, img| {
            let src = &cols[i * n * c..(i + 1) * n * c];
            for (row, &p) in src.chunks(c).zip(self.idx.iter()) {
                let p = p as usize;
                if p < hw {
                    for (d, &v) in img[p * c..(p + 1) * c].iter_mut().zip(row) {
                        *d += v;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, hw, c))))
    }
}

#[cfg(test)]
mod tests {
    use crate::patches::{PatchIndex, Window2d};
    use crate::test_util::assert_close as close;
    use candle_core::{DType, Device, Tensor};

    /// Seeded inputs (candle's CPU RNG cannot be seeded): the test is deterministic.
    fn rand(shape: &[usize]) -> Tensor {
        crate::test_util::seeded_normal(shape, shape.iter().product::<usize>() as u64)
    }

    /// im2col and col2im on the host against the generic candle path (taken for f64).
    #[test]
    fn unfold_and_fold_match_the_generic_path() {
        for (c, k, s, p, d) in [(1, 8, 2, 3, 1), (3, 3, 1, 1, 2), (16, 4, 2, 0, 1)] {
            let win = Window2d {
                kernel: (k, k),
                stride: (s, s),
                padding: (p, p),
                dilation: (d, d),
            };
            let idx = PatchIndex::new(win, 11, 13, &Device::Cpu).unwrap();
            let x = rand(&[3, 11, 13, c]);
            let fast = idx.unfold(&x).unwrap();
            let slow = idx.unfold(&x.to_dtype(DType::F64).unwrap()).unwrap();
            close(&fast, &slow, 0.0);
            let fast = idx.fold(&fast).unwrap();
            let slow = idx.fold(&slow).unwrap();
            close(&fast, &slow, 1e-5);
        }
    }
}
