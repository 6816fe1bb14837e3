//! im2col and col2im on f32 host tensors, channels-last: the custom ops behind
//! [`crate::patches::PatchIndex`]'s `unfold` / `fold`.
//!
//! candle's `index_select` / `index_add` gather and scatter one element at a time; these
//! copy whole channel rows and split the batch over the cores. Tested against the generic
//! candle path (`PatchIndex` on f64).

use super::dispatch::f32_slice;
use super::fresh::{zeroed, Fresh};
use super::parallel::par_rows;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use std::mem::MaybeUninit;
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
        let mut out = Fresh::new(b * n * c);
        par_rows(out.slots(), b, b * n * c, |i, o| {
            let img = &x[i * hw * c..(i + 1) * hw * c];
            if c == 1 {
                for (y, &p) in o.iter_mut().zip(self.idx.iter()) {
                    y.write(img.get(p as usize).copied().unwrap_or(0.0));
                }
            } else {
                for (row, &p) in o.chunks_mut(c).zip(self.idx.iter()) {
                    let p = p as usize;
                    if p < hw {
                        copy_row(row, &img[p * c..(p + 1) * c]);
                    } else {
                        zeroed(row);
                    }
                }
            }
        });
        // SAFETY: `idx` has `n` entries, so the `n` rows of `c` slots of every example were
        // each written above, by a copy or (padding) zeros.
        let out = unsafe { out.assume_init() };
        Ok((CpuStorage::F32(out), Shape::from((b, n, c))))
    }
}

/// Copies `src` into the slots `dst` (as `copy_from_slice` would).
#[inline]
fn copy_row(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    // SAFETY: equal lengths (checked), `MaybeUninit<f32>` has the layout of `f32`, and a
    // shared source cannot overlap an exclusively borrowed destination.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr() as *mut f32, src.len()) };
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
        let mut out = Fresh::new(b * hw * c);
        par_rows(out.slots(), b, b * n * c, |i, img| {
            let img = zeroed(img);
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
        // SAFETY: every example's image was zeroed (then accumulated into) above.
        let out = unsafe { out.assume_init() };
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
