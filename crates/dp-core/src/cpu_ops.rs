//! Fused CPU kernels for the hot path, as candle custom ops.
//!
//! candle's generic CPU ops pay per-element overheads where these layers need tight loops:
//! `tanh` goes through libm (≈4× slower than the rational approximation below), `index_select`
//! / `index_add` gather and scatter one element at a time, and max pooling needs a max and an
//! argmax pass. These kernels work on contiguous f32 host buffers and split large jobs over
//! the available cores. Other dtypes and devices (CUDA) take the generic candle path, so
//! results never depend on whether a kernel exists — only the speed does. Every kernel is
//! tested against the generic path.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Whether `t` can use the CPU kernels (f32 on the host).
pub(crate) fn fast_path(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    match s {
        CpuStorage::F32(v) => match l.contiguous_offsets() {
            Some((a, b)) => Ok(&v[a..b]),
            None => candle_core::bail!("{op}: input must be contiguous"),
        },
        _ => candle_core::bail!("{op}: f32 only"),
    }
}

fn threads_for(work: usize) -> usize {
    if work < 1 << 16 {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// Runs `f(chunk_index, chunk)` over `out` split into `rows` equal rows, in parallel on
/// rayon's pool (the one the matrix products use, so the two never oversubscribe the cores).
fn par_rows<F>(out: &mut [f32], rows: usize, work: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    if rows == 0 || out.is_empty() {
        return;
    }
    let row_len = out.len() / rows;
    let threads = threads_for(work).min(rows);
    if threads <= 1 {
        for (r, chunk) in out.chunks_mut(row_len).enumerate() {
            f(r, chunk);
        }
        return;
    }
    let per = rows.div_ceil(threads);
    out.par_chunks_mut(per * row_len)
        .enumerate()
        .for_each(|(t, block)| {
            for (k, chunk) in block.chunks_mut(row_len).enumerate() {
                f(t * per + k, chunk);
            }
        });
}

/// `tanh` by a [13/6] rational approximation on `[-7.9, 7.9]` (saturating outside), max
/// absolute error below 5e-7 against f64 `tanh` (tested). Written so the compiler
/// vectorises the loop.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub(crate) fn tanh_approx(x: f32) -> f32 {
    let x = x.clamp(-7.905_311, 7.905_311);
    let x2 = x * x;
    let mut p = -2.760_768_5e-16f32;
    p = p * x2 + 2.000_187_9e-13;
    p = p * x2 - 8.604_671_5e-11;
    p = p * x2 + 5.122_297e-8;
    p = p * x2 + 1.485_722_4e-5;
    p = p * x2 + 6.372_619_3e-4;
    p = p * x2 + 4.893_524_6e-3;
    p *= x;
    let mut q = 1.198_258_4e-6f32;
    q = q * x2 + 1.185_347_1e-4;
    q = q * x2 + 2.268_434_6e-3;
    q = q * x2 + 4.893_525_2e-3;
    p / q
}

struct TanhOp;

impl CustomOp1 for TanhOp {
    fn name(&self) -> &'static str {
        "dp-tanh"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "dp-tanh")?;
        let mut out = vec![0f32; x.len()];
        let rows = threads_for(x.len()).max(1);
        if x.len() % rows == 0 {
            par_rows(&mut out, rows, x.len(), |r, o| {
                let n = o.len();
                for (y, &v) in o.iter_mut().zip(&x[r * n..(r + 1) * n]) {
                    *y = tanh_approx(v);
                }
            });
        } else {
            for (y, &v) in out.iter_mut().zip(x) {
                *y = tanh_approx(v);
            }
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// `tanh(x)`: the fast kernel on f32 host tensors, candle's `tanh` elsewhere.
pub(crate) fn tanh(x: &Tensor) -> candle_core::Result<Tensor> {
    if fast_path(x) {
        x.contiguous()?.apply_op1_no_bwd(&TanhOp)
    } else {
        x.tanh()
    }
}

/// `f(x)` element-wise on a host f32 tensor, in parallel chunks above 64k elements (on
/// rayon's pool, not candle's spinning element-wise pool).
pub(crate) fn map1(x: &Tensor, f: impl Fn(f32) -> f32 + Sync) -> candle_core::Result<Tensor> {
    let mut out = vec![0f32; x.elem_count()];
    crate::host_gemm::with_host(x, |xv| {
        let run = |o: &mut [f32], i: &[f32]| o.iter_mut().zip(i).for_each(|(y, &v)| *y = f(v));
        if xv.len() < 1 << 16 {
            run(&mut out, xv);
        } else {
            out.par_chunks_mut(1 << 14)
                .zip(xv.par_chunks(1 << 14))
                .for_each(|(o, i)| run(o, i));
        }
    })?;
    Tensor::from_vec(out, x.dims(), x.device())
}

/// `f(a, b)` element-wise on two host f32 tensors of one shape.
pub(crate) fn map2(
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> candle_core::Result<Tensor> {
    if a.dims() != b.dims() {
        candle_core::bail!("map2: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    let mut out = vec![0f32; a.elem_count()];
    crate::host_gemm::with_host(a, |av| {
        crate::host_gemm::with_host(b, |bv| {
            let run = |o: &mut [f32], x: &[f32], y: &[f32]| {
                for ((r, &u), &v) in o.iter_mut().zip(x).zip(y) {
                    *r = f(u, v);
                }
            };
            if av.len() < 1 << 16 {
                run(&mut out, av, bv);
            } else {
                out.par_chunks_mut(1 << 14)
                    .zip(av.par_chunks(1 << 14))
                    .zip(bv.par_chunks(1 << 14))
                    .for_each(|((o, x), y)| run(o, x, y));
            }
        })
    })??;
    Tensor::from_vec(out, a.dims(), a.device())
}

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
                    let row = &img[p as usize * c..(p as usize + 1) * c];
                    for ((b, a), &v) in best.iter_mut().zip(at.iter_mut()).zip(row) {
                        // `>`: the first maximum wins, like PyTorch; the first NaN wins
                        // over everything (NaN propagates).
                        let take = v > *b || (v.is_nan() && !b.is_nan());
                        *b = if take { v } else { *b };
                        *a = if take { p } else { *a };
                    }
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
        let mut out = vec![0f32; batch * hw * c];
        par_rows(&mut out, batch, g.len(), |i, img| {
            let gs = &g[i * per_ex..(i + 1) * per_ex];
            let ar = &self.arg[i * per_ex..(i + 1) * per_ex];
            for (j, (&v, &p)) in gs.iter().zip(ar).enumerate() {
                img[p as usize * c + j % c] += v;
            }
        });
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
            let mut out = vec![0f32; b * hw * c];
            par_rows(&mut out, b, src.len() * k, |i, img| {
                let gs = &src[i * positions * c..(i + 1) * positions * c];
                for (pos, grow) in gs.chunks(c).enumerate() {
                    for p in windows(pos) {
                        for (d, &v) in img[p * c..(p + 1) * c].iter_mut().zip(grow) {
                            *d += v * inv;
                        }
                    }
                }
            });
            Ok((CpuStorage::F32(out), Shape::from((b, hw, c))))
        } else {
            let b = src.len() / (hw * c);
            let mut out = vec![0f32; b * positions * c];
            par_rows(&mut out, b, b * positions * c * k, |i, o| {
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
            Ok((CpuStorage::F32(out), Shape::from((b, positions, c))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{MaxPool2d, Tanh};
    use crate::patches::{PatchIndex, Window2d};
    use crate::Layer;
    use candle_core::{DType, Device};

    #[test]
    fn tanh_approximation_error_is_below_5e_7() {
        let mut worst = 0f64;
        for i in 0..=400_000 {
            let x = -12.0 + 24.0 * i as f64 / 400_000.0;
            worst = worst.max((tanh_approx(x as f32) as f64 - x.tanh()).abs());
        }
        assert!(worst < 5e-7, "{worst}");
        assert_eq!(tanh_approx(0.0), 0.0);
    }

    /// Seeded inputs (candle's CPU RNG cannot be seeded): the test is deterministic.
    fn rand(shape: &[usize]) -> Tensor {
        crate::test_util::seeded_normal(shape, shape.iter().product::<usize>() as u64)
    }

    fn close(a: &Tensor, b: &Tensor, tol: f64) {
        let (a, b) = (
            crate::test_util::f64_values(a),
            crate::test_util::f64_values(b),
        );
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= tol, "{x} vs {y}");
        }
    }

    /// ReLU and tanh backward on the host equal the candle expressions (f64 path), NaN
    /// included.
    #[test]
    fn activation_kernels_match_the_generic_path() {
        use crate::layers::Relu;
        for n in [10usize, 70_000] {
            let mut xv: Vec<f32> = crate::test_util::f64_values(&rand(&[n]))
                .iter()
                .map(|&v| v as f32)
                .collect();
            xv[3] = f32::NAN;
            let x = Tensor::from_vec(xv, n, &Device::Cpu).unwrap();
            let mut gv: Vec<f32> = crate::test_util::f64_values(&rand(&[n, 1]))
                .iter()
                .map(|&v| v as f32)
                .collect();
            gv[5] = f32::NAN;
            let g = Tensor::from_vec(gv, n, &Device::Cpu).unwrap();
            let to64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            let same = |a: &Tensor, b: &Tensor, tol: f64| {
                let (a, b) = (
                    crate::test_util::f64_values(a),
                    crate::test_util::f64_values(b),
                );
                for (x, y) in a.iter().zip(&b) {
                    assert!(
                        x.is_nan() == y.is_nan() && (x.is_nan() || (x - y).abs() <= tol),
                        "{x} vs {y}"
                    );
                }
            };
            let (mut fast, mut slow) = (Relu::default(), Relu::default());
            same(
                &fast.forward(&x, true).unwrap(),
                &slow.forward(&to64(&x), true).unwrap(),
                0.0,
            );
            same(
                &fast.backward(&g, true).unwrap().unwrap(),
                &slow.backward(&to64(&g), true).unwrap().unwrap(),
                0.0,
            );
            let (mut fast, mut slow) = (Tanh::default(), Tanh::default());
            fast.forward(&x, true).unwrap();
            slow.forward(&to64(&x), true).unwrap();
            same(
                &fast.backward(&g, true).unwrap().unwrap(),
                &slow.backward(&to64(&g), true).unwrap().unwrap(),
                1e-5, // the rational tanh is within 5e-7 of libm's
            );
        }
    }

    /// Ties go to the first maximum of the window and a NaN wins over every number.
    #[test]
    fn max_pool_kernel_ties_and_nan() {
        let run = |vals: [f32; 4]| {
            let x = Tensor::from_vec(vals.to_vec(), (1, 2, 2, 1), &Device::Cpu).unwrap();
            let mut pool = MaxPool2d::new(2, 1);
            let y: Vec<f32> = pool
                .forward(&x, true)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let g = Tensor::ones((1, 1, 1, 1), DType::F32, &Device::Cpu).unwrap();
            let dx: Vec<f32> = pool
                .backward(&g, true)
                .unwrap()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
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

    /// The f32 host kernels against the generic candle path (taken for f64).
    #[test]
    fn kernels_match_the_generic_path() {
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
        let x = rand(&[4, 9, 7, 5]);
        let g = rand(&[4, 8, 6, 5]);
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
        let y = Tanh::default()
            .forward(&(x.clone() * 3.0).unwrap(), false)
            .unwrap();
        let z = Tanh::default()
            .forward(&(x.to_dtype(DType::F64).unwrap() * 3.0).unwrap(), false)
            .unwrap();
        // 5e-7 approximation error plus the f32 rounding of the input 3x.
        close(&y, &z, 1e-6);
    }
}
