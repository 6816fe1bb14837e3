//! Element-wise activation kernels: the fast `tanh` and the one- and two-input maps the
//! ReLU / tanh / sigmoid layers use on f32 host tensors.
//!
//! candle's `tanh` goes through libm (≈4× slower than the rational approximation below),
//! and each candle element-wise op allocates and, above 64k elements, runs on candle's
//! spinning pool; these run on rayon's. Other dtypes and devices take the candle path, so
//! results never depend on whether a kernel exists — only the speed does.

use super::dispatch::{f32_slice, fast_path, with_host};
use super::fresh::{write_map, write_map2, Fresh};
use super::parallel::{par_rows, threads_for};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

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
        let mut out = Fresh::new(x.len());
        let rows = threads_for(x.len()).max(1);
        if x.len() % rows == 0 {
            par_rows(out.slots(), rows, x.len(), |r, o| {
                let n = o.len();
                write_map(o, &x[r * n..(r + 1) * n], tanh_approx);
            });
        } else {
            write_map(out.slots(), x, tanh_approx);
        }
        // SAFETY: every slot was written, by rows of equal length or in one pass.
        let out = unsafe { out.assume_init() };
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
    let mut out = Fresh::new(x.elem_count());
    with_host(x, |xv| {
        let run = |o: &mut [MaybeUninit<f32>], i: &[f32]| write_map(o, i, &f);
        let o = out.slots();
        // The parallel zip below would stop at the shorter side: the lengths must agree.
        assert_eq!(
            xv.len(),
            o.len(),
            "map1: host data and element count differ"
        );
        if xv.len() < 1 << 16 {
            run(o, xv);
        } else {
            o.par_chunks_mut(1 << 14)
                .zip(xv.par_chunks(1 << 14))
                .for_each(|(o, i)| run(o, i));
        }
    })?;
    // SAFETY: `with_host` gives the `elem_count` values of `x`, and each chunk of slots was
    // written from its equally long chunk of them.
    let out = unsafe { out.assume_init() };
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
    let mut out = Fresh::new(a.elem_count());
    with_host(a, |av| {
        with_host(b, |bv| {
            let run = |o: &mut [MaybeUninit<f32>], x: &[f32], y: &[f32]| write_map2(o, x, y, &f);
            let o = out.slots();
            // The parallel zip below would stop at the shortest side: the lengths must agree.
            assert!(
                av.len() == o.len() && bv.len() == o.len(),
                "map2: host data and element count differ"
            );
            if av.len() < 1 << 16 {
                run(o, av, bv);
            } else {
                o.par_chunks_mut(1 << 14)
                    .zip(av.par_chunks(1 << 14))
                    .zip(bv.par_chunks(1 << 14))
                    .for_each(|((o, x), y)| run(o, x, y));
            }
        })
    })??;
    // SAFETY: the shapes are equal (checked), and each chunk of slots was written from its
    // equally long chunks of `a` and `b` (`write_map2` checks the lengths).
    let out = unsafe { out.assume_init() };
    Tensor::from_vec(out, a.dims(), a.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Tanh;
    use crate::test_util::assert_close as close;
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

    /// The tanh kernel against candle's `tanh` (taken for f64).
    #[test]
    fn tanh_kernel_matches_the_generic_path() {
        let x = rand(&[4, 9, 7, 5]);
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
