//! The public element-wise primitive: `I` f32 host tensors in, `O` new ones out, one pass.
//!
//! It exists so that code outside dp-core (dp-optim's fused optimiser updates, a new
//! layer's rule) can write a fused update as a scalar closure and never handle host
//! slices, storage guards, chunking or threads itself. The loop is the one a hand-written
//! kernel uses: the elements are split into chunks of 2¹⁴ on rayon's pool (the pool the
//! matrix products use, not candle's spinning element-wise pool), each chunk re-slices
//! its inputs and outputs to the chunk's length so that the bounds checks leave the
//! inner loop and it vectorises, and the closure is inlined into it. Measured against
//! hand-written SGD-with-momentum and Adam kernels with `examples/elementwise_throughput`.

use super::dispatch::applies;
use candle_core::{CpuStorage, Device, Storage, Tensor};
use rayon::prelude::*;

/// Elements per parallel task, as in dp-optim's fused updates: large enough to amortise
/// the task, small enough to keep every core busy on a 269k-parameter model.
const CHUNK: usize = 1 << 14;

/// `O` new tensors, shaped like `inputs[0]`, whose element `j` is `f([x_0[j], …, x_{I-1}[j]])`
/// — or `None` when not every input is f32 on the CPU, in which case the caller runs its
/// candle expression instead.
///
/// All inputs must hold the same number of elements (their shapes may differ; they are
/// read in row-major order); otherwise the result is
/// `Some(Err(candle_core::Error::ShapeMismatchBinaryOp { .. }))`, never a panic. `f` is
/// called once per element, from several threads for inputs above 2¹⁴ elements, and must
/// be pure for the result not to depend on the thread count. `I` must be at least 1
/// (checked at compile time).
///
/// **Optional state** (a momentum buffer that does not exist before the first step, or
/// not at all for SGD without momentum): pass fewer inputs rather than a zeros tensor.
/// Write the update once as an `#[inline(always)]` function of `Option<f32>` and call it
/// with `Some(v)` from the closure over `[p, g, v]` and with `None` from the one over
/// `[p, g]`; each closure is compiled into its own loop, with the `Option` folded away, so
/// neither path reads or allocates a buffer it does not need:
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dp_core::host::map_elementwise;
///
/// /// One SGD-with-momentum coordinate: `v ← μv + g` (`g` on the first step), `p ← p − ηv`.
/// #[inline(always)]
/// fn sgd(p: f32, g: f32, v: Option<f32>, lr: f32, mu: f32) -> [f32; 2] {
///     let v = match v {
///         Some(v) => v * mu + g,
///         None => g,
///     };
///     [p - v * lr, v]
/// }
///
/// let dev = Device::Cpu;
/// let p = Tensor::new(&[1f32, 2., 3.], &dev).unwrap();
/// let g = Tensor::new(&[0.5f32, -1., 0.], &dev).unwrap();
/// let (lr, mu) = (0.1, 0.9);
/// let step = |v: Option<&Tensor>| match v {
///     Some(v) => map_elementwise([&p, &g, v], |[p, g, v]| sgd(p, g, Some(v), lr, mu)),
///     None => map_elementwise([&p, &g], |[p, g]| sgd(p, g, None, lr, mu)),
/// };
/// // f32 on the CPU: the host loop ran (for any other dtype or device: `None`).
/// let [p1, v1] = step(None).unwrap().unwrap();
/// assert_eq!(v1.to_vec1::<f32>().unwrap(), vec![0.5, -1., 0.]);
/// assert_eq!(p1.to_vec1::<f32>().unwrap(), vec![1. - 0.5 * 0.1, 2. + 0.1, 3.]);
/// let [_, v2] = step(Some(&v1)).unwrap().unwrap();
/// assert_eq!(v2.to_vec1::<f32>().unwrap(), vec![0.5 * 0.9 + 0.5, -0.9 - 1., 0.]);
///
/// // Mismatched sizes are an error, not a panic.
/// let short = Tensor::new(&[1f32], &dev).unwrap();
/// assert!(map_elementwise([&p, &short], |[a, b]| [a + b]).unwrap().is_err());
/// ```
pub fn map_elementwise<const I: usize, const O: usize, F>(
    inputs: [&Tensor; I],
    f: F,
) -> Option<candle_core::Result<[Tensor; O]>>
where
    F: Fn([f32; I]) -> [f32; O] + Sync,
{
    const { assert!(I > 0, "map_elementwise needs at least one input") };
    if !applies(&inputs) {
        return None;
    }
    Some(run(inputs, &f))
}

fn run<const I: usize, const O: usize, F>(
    inputs: [&Tensor; I],
    f: &F,
) -> candle_core::Result<[Tensor; O]>
where
    F: Fn([f32; I]) -> [f32; O] + Sync,
{
    let first = inputs[0];
    let n = first.elem_count();
    if let Some(other) = inputs.iter().find(|t| t.elem_count() != n) {
        return Err(candle_core::Error::ShapeMismatchBinaryOp {
            lhs: first.shape().clone(),
            rhs: other.shape().clone(),
            op: "map_elementwise",
        });
    }
    // Contiguous copies only where needed, then one read guard per input for the pass.
    let contiguous = inputs
        .iter()
        .map(|t| t.contiguous())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let guards: Vec<_> = contiguous.iter().map(|t| t.storage_and_layout()).collect();
    let mut ins: [&[f32]; I] = [&[]; I];
    for (slot, (storage, layout)) in ins.iter_mut().zip(&guards) {
        let Storage::Cpu(CpuStorage::F32(v)) = &**storage else {
            candle_core::bail!("map_elementwise: inputs must be f32 CPU tensors")
        };
        let (a, b) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("map_elementwise: inputs must be contiguous".into())
        })?;
        *slot = &v[a..b];
    }

    let mut outs: [Vec<f32>; O] = std::array::from_fn(|_| vec![0f32; n]);
    if n <= CHUNK {
        let mut chunk: [&mut [f32]; O] = outs.each_mut().map(|o| o.as_mut_slice());
        kernel(&ins, 0, &mut chunk, n, f);
    } else {
        // One `[&mut [f32]; O]` per chunk: the outputs' chunks, zipped for any `O`.
        let mut split = outs.each_mut().map(|o| o.chunks_mut(CHUNK));
        let jobs: Vec<[&mut [f32]; O]> = (0..n.div_ceil(CHUNK))
            .map(|_| std::array::from_fn(|k| split[k].next().unwrap_or_default()))
            .collect();
        jobs.into_par_iter().enumerate().for_each(|(c, mut chunk)| {
            let start = c * CHUNK;
            kernel(&ins, start, &mut chunk, CHUNK.min(n - start), f);
        });
    }
    let mut tensors = Vec::with_capacity(O);
    for v in outs {
        tensors.push(Tensor::from_vec(v, first.dims(), &Device::Cpu)?);
    }
    tensors
        .try_into()
        .map_err(|_| candle_core::Error::Msg("map_elementwise: output count".into()))
}

/// Elements `start .. start + len` of every input through `f` into `outs` (each at least
/// `len` long). Every slice is cut to exactly `len` first, which lets the compiler drop the
/// bounds checks of the inner loop and vectorise it across elements.
#[inline(always)]
fn kernel<const I: usize, const O: usize, F>(
    ins: &[&[f32]; I],
    start: usize,
    outs: &mut [&mut [f32]; O],
    len: usize,
    f: &F,
) where
    F: Fn([f32; I]) -> [f32; O],
{
    let xs: [&[f32]; I] = std::array::from_fn(|k| &ins[k][start..start + len]);
    let mut ys: [&mut [f32]; O] = outs.each_mut().map(|o| &mut o[..len]);
    for j in 0..len {
        let y = f(std::array::from_fn(|k| xs[k][j]));
        for (o, y) in ys.iter_mut().zip(y) {
            o[j] = y;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::test_util::f64_values(&crate::test_util::seeded_normal(&[n], seed))
            .iter()
            .map(|&v| v as f32)
            .collect()
    }

    fn host(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn out(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Adam-like arithmetic (three inputs, three outputs, a square root and divisions)
    /// equals the same scalar loop bit for bit, below, at and across chunk boundaries.
    #[test]
    fn matches_a_scalar_loop_bit_for_bit() {
        let rule = |[p, g, m]: [f32; 3]| {
            let m = m * 0.9 + g * 0.1;
            let v = g * g * 0.001;
            [p - 0.01 * m / (v.sqrt() + 1e-8), m, v]
        };
        for n in [0usize, 1, 7, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 3] {
            let (p, g, m) = (values(n, 1), values(n, 2), values(n, 3));
            let [a, b, c] =
                map_elementwise([&host(&p, &[n]), &host(&g, &[n]), &host(&m, &[n])], rule)
                    .unwrap()
                    .unwrap();
            let mut want = [Vec::new(), Vec::new(), Vec::new()];
            for j in 0..n {
                for (w, y) in want.iter_mut().zip(rule([p[j], g[j], m[j]])) {
                    w.push(y);
                }
            }
            for (got, want) in [a, b, c].iter().zip(&want) {
                assert_eq!(got.dims(), &[n]);
                let got = out(got);
                assert!(got
                    .iter()
                    .zip(want)
                    .all(|(x, y)| x.to_bits() == y.to_bits()));
            }
        }
    }

    /// Outputs take the first input's shape; later inputs need only the same element
    /// count, and non-contiguous inputs are read in row-major order.
    #[test]
    fn shapes_and_layouts() {
        let a = host(&values(6, 4), &[2, 3]);
        let b = host(&values(6, 5), &[3, 2]).t().unwrap(); // [2, 3], not contiguous
        let [s] = map_elementwise([&a, &b], |[x, y]| [x + y])
            .unwrap()
            .unwrap();
        assert_eq!(s.dims(), &[2, 3]);
        let want: Vec<f32> = out(&a).iter().zip(out(&b)).map(|(x, y)| x + y).collect();
        assert_eq!(out(&s), want);
        let [] = map_elementwise([&a], |_| []).unwrap().unwrap();
    }

    #[test]
    fn mismatched_sizes_are_a_typed_error() {
        let a = host(&[1.0; 4], &[4]);
        let b = host(&[1.0; 5], &[5]);
        let r = map_elementwise([&a, &a, &b], |[x, y, z]| [x + y + z]).unwrap();
        assert!(matches!(
            r,
            Err(candle_core::Error::ShapeMismatchBinaryOp { .. })
        ));
    }

    /// Any input that is not f32 on the CPU sends the caller to its candle expression.
    #[test]
    fn other_dtypes_are_declined() {
        let a = host(&[1.0; 4], &[4]);
        let b = a.to_dtype(DType::F64).unwrap();
        assert!(map_elementwise([&a, &b], |[x, y]| [x + y]).is_none());
        assert!(map_elementwise([&b], |[x]| [x]).is_none());
    }
}
