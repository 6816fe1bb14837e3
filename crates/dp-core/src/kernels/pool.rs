//! Max and average pooling on f32 host tensors, channels-last: the custom ops behind the
//! pooling layers.
//!
//! Max pooling computes the max and the argmax in one vectorised pass (candle needs two),
//! and the backward passes scatter whole channel rows. Tested against the generic candle
//! path (the layers on f64).

use super::dispatch::f32_slice;
use super::fresh::{zeroed, Fresh};
use super::parallel::{par_rows, threads_for};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;
use std::sync::Arc;

/// Max pooling forward on `[B, H·W·C]`: for each output position and channel, the max
/// over the window; the argmax (flat pixel index within the image) is written to `arg`.
pub(crate) struct MaxPoolFwd {
    pub idx: Arc<Vec<u32>>,
    pub hw: usize,
    pub c: usize,
    pub k: usize,
    pub arg: std::sync::Mutex<Vec<u32>>,
}

impl CustomOp1 for MaxPoolFwd {
    fn name(&self) -> &'static str {
        "dp-maxpool"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "dp-maxpool")?;
        let (c, hw, k) = (self.c, self.hw, self.k);
        let positions = self.idx.len() / k;
        let b = x.len() / (hw * c);
        let mut out = vec![0f32; b * positions * c];
        let mut arg = vec![0u32; b * positions * c];
        // Values and argmax are computed together, one example per row. The loop runs
        // over window pixels outside and channels inside, with selects instead of
        // branches, so it vectorises over channels (a branch per comparison mispredicts
        // on real data: the channel-inner-loop version was a third of an MNIST-CNN step).
        let compute = |i: usize, o: &mut [f32], a: &mut [u32]| {
            let img = &x[i * hw * c..(i + 1) * hw * c];
            for ((win, best), at) in self
                .idx
                .chunks_exact(k)
                .zip(o.chunks_exact_mut(c))
                .zip(a.chunks_exact_mut(c))
            {
                let p0 = win[0] as usize;
                best.copy_from_slice(&img[p0 * c..(p0 + 1) * c]);
                at.fill(win[0]);
                for &p in &win[1..] {
                    max_update(best, at, &img[p as usize * c..(p as usize + 1) * c], p);
                }
            }
        };
        let row = positions * c;
        let threads = threads_for(b * row * k).min(b.max(1));
        if threads <= 1 {
            for i in 0..b {
                let (o, a) = (
                    &mut out[i * row..(i + 1) * row],
                    &mut arg[i * row..(i + 1) * row],
                );
                compute(i, o, a);
            }
        } else {
            let per = b.div_ceil(threads);
            out.par_chunks_mut(per * row)
                .zip(arg.par_chunks_mut(per * row))
                .enumerate()
                .for_each(|(t, (ob, ab))| {
                    for (j, (o, a)) in ob.chunks_mut(row).zip(ab.chunks_mut(row)).enumerate() {
                        compute(t * per + j, o, a);
                    }
                });
        }
        *self
            .arg
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))? = arg;
        Ok((CpuStorage::F32(out), Shape::from((b, positions, c))))
    }
}

/// Lanes of [`max_update`]'s fixed-width blocks (one AVX register of f32).
const LANES: usize = 8;

/// `best = max(best, row)` channel by channel, `at = p` where `row` won. `>`: the first
/// maximum wins, like PyTorch; the first NaN wins over everything (NaN propagates). Written
/// as fixed-width blocks of bit masks, not `if`: LLVM keeps the generic loop scalar with a
/// branch per channel (mispredicted on real data), and these blocks become vector compares
/// and blends.
#[inline(always)]
fn max_update(best: &mut [f32], at: &mut [u32], row: &[f32], p: u32) {
    #[inline(always)]
    fn one(b: &mut f32, a: &mut u32, v: f32, p: u32) {
        let take = (v > *b) | (v.is_nan() & !b.is_nan());
        let mask = 0u32.wrapping_sub(take as u32);
        *b = f32::from_bits((v.to_bits() & mask) | (b.to_bits() & !mask));
        *a = (p & mask) | (*a & !mask);
    }
    let mut bs = best.chunks_exact_mut(LANES);
    let mut as_ = at.chunks_exact_mut(LANES);
    let mut rs = row.chunks_exact(LANES);
    for ((b, a), r) in (&mut bs).zip(&mut as_).zip(&mut rs) {
        let b: &mut [f32; LANES] = b.try_into().expect("chunk of LANES");
        let a: &mut [u32; LANES] = a.try_into().expect("chunk of LANES");
        let r: &[f32; LANES] = r.try_into().expect("chunk of LANES");
        for j in 0..LANES {
            one(&mut b[j], &mut a[j], r[j], p);
        }
    }
    for ((b, a), &v) in bs
        .into_remainder()
        .iter_mut()
        .zip(as_.into_remainder())
        .zip(rs.remainder())
    {
        one(b, a, v, p);
    }
}

/// Max pooling backward: routes each output gradient to its argmax pixel.
pub(crate) struct MaxPoolBwd {
    pub arg: Arc<Vec<u32>>,
    pub batch: usize,
    pub hw: usize,
    pub c: usize,
}

impl CustomOp1 for MaxPoolBwd {
    fn name(&self) -> &'static str {
        "dp-maxpool-bwd"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = f32_slice(s, l, "dp-maxpool-bwd")?;
        let (c, hw, batch) = (self.c, self.hw, self.batch);
        if g.len() != self.arg.len() || batch == 0 || g.len() % batch != 0 {
            candle_core::bail!("dp-maxpool-bwd: gradient does not match the forward pass");
        }
        let per_ex = g.len() / batch;
        let mut out = Fresh::new(batch * hw * c);
        par_rows(out.slots(), batch, g.len(), |i, img| {
            let img = zeroed(img);
            let gs = &g[i * per_ex..(i + 1) * per_ex];
            let ar = &self.arg[i * per_ex..(i + 1) * per_ex];
            for (j, (&v, &p)) in gs.iter().zip(ar).enumerate() {
                img[p as usize * c + j % c] += v;
            }
        });
        // SAFETY: every example's image was zeroed (then accumulated into) above.
        let out = unsafe { out.assume_init() };
        Ok((CpuStorage::F32(out), Shape::from((batch, hw, c))))
    }
}

/// Average pooling on `[B, H·W·C]` (padding counts as 0): forward takes the mean of each
/// window; backward (`backward = true`, input `[B, L·C]` output gradients) spreads each
/// gradient evenly over its window.
pub(crate) struct AvgPool {
    pub idx: Arc<Vec<u32>>,
    pub hw: usize,
    pub c: usize,
    pub k: usize,
    pub backward: bool,
}

impl CustomOp1 for AvgPool {
    fn name(&self) -> &'static str {
        if self.backward {
            "dp-avgpool-bwd"
        } else {
            "dp-avgpool"
        }
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = f32_slice(s, l, self.name())?;
        let (c, hw, k) = (self.c, self.hw, self.k);
        let positions = self.idx.len() / k;
        let inv = 1.0 / k as f32;
        let windows = |pos: usize| {
            self.idx[pos * k..(pos + 1) * k]
                .iter()
                .map(|&p| p as usize)
                .filter(move |&p| p < hw)
        };
        if self.backward {
            let b = src.len() / (positions * c).max(1);
            let mut out = Fresh::new(b * hw * c);
            par_rows(out.slots(), b, src.len() * k, |i, img| {
                let img = zeroed(img);
                let gs = &src[i * positions * c..(i + 1) * positions * c];
                for (pos, grow) in gs.chunks(c).enumerate() {
                    for p in windows(pos) {
                        for (d, &v) in img[p * c..(p + 1) * c].iter_mut().zip(grow) {
                            *d += v * inv;
                        }
                    }
                }
            });
            // SAFETY: every example's image was zeroed (then accumulated into) above.
            let out = unsafe { out.assume_init() };
            Ok((CpuStorage::F32(out), Shape::from((b, hw, c))))
        } else {
            let b = src.len() / (hw * c);
            let mut out = Fresh::new(b * positions * c);
            par_rows(out.slots(), b, b * positions * c * k, |i, o| {
                let o = zeroed(o);
                let img = &src[i * hw * c..(i + 1) * hw * c];
                for (pos, orow) in o.chunks_mut(c).enumerate() {
                    for p in windows(pos) {
                        for (d, &v) in orow.iter_mut().zip(&img[p * c..(p + 1) * c]) {
                            *d += v;
                        }
                    }
                    for d in orow.iter_mut() {
                        *d *= inv;
                    }
                }
            });
            // SAFETY: every example's output row was zeroed (then accumulated into) above.
            let out = unsafe { out.assume_init() };
            Ok((CpuStorage::F32(out), Shape::from((b, positions, c))))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::layers::MaxPool2d;
    use crate::test_util::assert_close as close;
    use crate::Layer;
    use candle_core::{DType, Device, Tensor};

    /// Seeded inputs (candle's CPU RNG cannot be seeded): the test is deterministic.
    fn rand(shape: &[usize]) -> Tensor {
        crate::test_util::seeded_normal(shape, shape.iter().product::<usize>() as u64)
    }

    /// A 2×2 max-pool over one 2×2 image of `c` channels (`vals` channels-last): its
    /// output and the input gradient of an all-ones output gradient.
    fn pool_2x2_once(vals: Vec<f32>, c: usize) -> (Vec<f32>, Vec<f32>) {
        let x = Tensor::from_vec(vals, (1, 2, 2, c), &Device::Cpu).unwrap();
        let mut pool = MaxPool2d::new(2, 1);
        let y = pool.forward(&x, true).unwrap();
        let g = Tensor::ones((1, 1, 1, c), DType::F32, &Device::Cpu).unwrap();
        let dx = pool.backward(&g, true).unwrap().unwrap();
        let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (flat(y), flat(dx))
    }

    /// Ties go to the first maximum of the window and a NaN wins over every number.
    #[test]
    fn max_pool_kernel_ties_and_nan() {
        let run = |vals: [f32; 4]| {
            let (y, dx) = pool_2x2_once(vals.to_vec(), 1);
            (y[0], dx)
        };
        let (y, dx) = run([1.0, 2.0, 2.0, 0.0]);
        assert_eq!((y, dx), (2.0, vec![0.0, 1.0, 0.0, 0.0]));
        let (y, dx) = run([1.0, f32::NAN, 3.0, f32::NAN]);
        assert!(y.is_nan());
        assert_eq!(dx, vec![0.0, 1.0, 0.0, 0.0]);
        let (y, dx) = run([f32::NEG_INFINITY; 4]);
        assert_eq!((y, dx), (f32::NEG_INFINITY, vec![1.0, 0.0, 0.0, 0.0]));
    }

    /// The same rules in the vector blocks and their scalar tail: 19 channels (two blocks
    /// of 8 and 3 more), channel `j` holding the `j % 3`-th window of the test above.
    #[test]
    fn max_pool_kernel_ties_and_nan_in_every_lane() {
        let windows = [
            [1.0, 2.0, 2.0, 0.0],
            [1.0, f32::NAN, 3.0, f32::NAN],
            [f32::NEG_INFINITY; 4],
        ];
        let (want_y, want_at) = ([2.0, f32::NAN, f32::NEG_INFINITY], [1, 1, 0]);
        let c = 19;
        let mut vals = vec![0f32; 4 * c];
        for p in 0..4 {
            for j in 0..c {
                vals[p * c + j] = windows[j % 3][p];
            }
        }
        let (y, dx) = pool_2x2_once(vals, c);
        for j in 0..c {
            let w = want_y[j % 3];
            assert!(
                y[j] == w || (w.is_nan() && y[j].is_nan()),
                "channel {j}: {}",
                y[j]
            );
            for p in 0..4 {
                let expect = if p == want_at[j % 3] { 1.0 } else { 0.0 };
                assert_eq!(dx[p * c + j], expect, "channel {j}, pixel {p}");
            }
        }
    }

    /// The max-pool kernels against the generic candle path (taken for f64).
    #[test]
    fn max_pool_kernels_match_the_generic_path() {
        let x = rand(&[4, 9, 7, 21]);
        let g = rand(&[4, 8, 6, 21]);
        let mut fast = MaxPool2d::new(2, 1);
        let mut slow = MaxPool2d::new(2, 1);
        close(
            &fast.forward(&x, true).unwrap(),
            &slow
                .forward(&x.to_dtype(DType::F64).unwrap(), true)
                .unwrap(),
            0.0,
        );
        let a = fast.backward(&g, true).unwrap().unwrap();
        let b = slow
            .backward(&g.to_dtype(DType::F64).unwrap(), true)
            .unwrap()
            .unwrap();
        close(&a, &b, 1e-6);
    }
}
