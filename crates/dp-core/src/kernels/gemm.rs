//! Matrix products of the linear-type layers on f32 host tensors, calling the `gemm` crate
//! (the kernels behind candle's CPU matmul) directly.
//!
//! Why not `Tensor::matmul`: on the CPU candle asks for the thread count on every product,
//! which on Linux re-reads `/proc/cpuinfo` (measured at 3% of an MNIST-CNN step), and it has
//! no way to fuse what DP-SGD needs around a product: the bias of a forward pass, the
//! per-example gradients *and* their norms in one pass over the batch, the Gram matrices of
//! the ghost norm without a `[B, T, T]` tensor, or a weighted batch reduction split across
//! cores. Each function here computes exactly what the generic candle expression in
//! `layers::seq_linear` / the layers computes (tested against it); other devices and
//! dtypes keep the candle path (the layers decide, through `kernels::dispatch`).
//!
//! Parallelism is over examples (rayon, the pool `gemm` itself uses) with single-threaded
//! products inside, or — for one large product — the `gemm` crate's own splitting.

use super::dispatch::with_host;
use super::fresh::Fresh;
use candle_core::{Device, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;
use std::mem::MaybeUninit;

fn host_tensor(v: Vec<f32>, shape: &[usize]) -> candle_core::Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// A matrix operand: row-major storage, read transposed if `t`.
#[derive(Clone, Copy)]
struct Op<'a> {
    data: &'a [f32],
    /// Stored shape (rows, cols) before the optional transpose.
    rows: usize,
    cols: usize,
    t: bool,
}

impl<'a> Op<'a> {
    fn n(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Op {
            data,
            rows,
            cols,
            t: false,
        }
    }
    fn t(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Op {
            data,
            rows,
            cols,
            t: true,
        }
    }
    /// (rows, cols) as used in the product.
    fn shape(&self) -> (usize, usize) {
        if self.t {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }
    /// (row stride, column stride) as used in the product.
    fn strides(&self) -> (isize, isize) {
        if self.t {
            (1, self.cols as isize)
        } else {
            (self.cols as isize, 1)
        }
    }
}

fn threads() -> usize {
    rayon::current_num_threads()
}

/// `gemm`'s own multi-threading pays off only above a few hundred thousand multiply-adds.
fn auto_par(m: usize, n: usize, k: usize) -> Parallelism {
    let t = threads();
    if t > 1 && m * n * k >= 1 << 18 {
        Parallelism::Rayon(t)
    } else {
        Parallelism::None
    }
}

/// `dst[m×n] (row-major) = (accumulate ? dst : 0) + scale · lhs · rhs`.
fn gemm_into(
    dst: &mut [f32],
    accumulate: bool,
    lhs: Op,
    rhs: Op,
    scale: f32,
    par: Parallelism,
) -> candle_core::Result<()> {
    // SAFETY: `dst` is initialised, so reading it (accumulate) is sound either way.
    unsafe {
        gemm_raw(
            dst.as_mut_ptr(),
            dst.len(),
            accumulate,
            lhs,
            rhs,
            scale,
            par,
        )
    }
}

/// [`gemm_into`] into unwritten slots (`dst = scale · lhs · rhs`, nothing read), for an
/// output buffer allocated without zeroing ([`Fresh`]). On `Ok`, the first `m·n` slots
/// are written.
fn gemm_into_slots(
    dst: &mut [MaybeUninit<f32>],
    lhs: Op,
    rhs: Op,
    scale: f32,
    par: Parallelism,
) -> candle_core::Result<()> {
    // SAFETY: without `accumulate`, `gemm_raw` only writes `dst` (the `gemm` crate's
    // `read_dst = false` sets its α to 0 and never loads the destination), and
    // `MaybeUninit<f32>` has the layout of `f32`.
    unsafe {
        gemm_raw(
            dst.as_mut_ptr() as *mut f32,
            dst.len(),
            false,
            lhs,
            rhs,
            scale,
            par,
        )
    }
}

/// # Safety
/// `dst` points to `dst_len` writable floats, initialised if `accumulate`.
unsafe fn gemm_raw(
    dst: *mut f32,
    dst_len: usize,
    accumulate: bool,
    lhs: Op,
    rhs: Op,
    scale: f32,
    par: Parallelism,
) -> candle_core::Result<()> {
    let (m, k) = lhs.shape();
    let (k2, n) = rhs.shape();
    if k != k2
        || lhs.data.len() < lhs.rows * lhs.cols
        || rhs.data.len() < rhs.rows * rhs.cols
        || dst_len < m * n
    {
        candle_core::bail!("host gemm: inconsistent operand sizes ({m}×{k} · {k2}×{n})");
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            for j in 0..m * n {
                // SAFETY: `j < m·n ≤ dst_len`.
                unsafe { dst.add(j).write(0.0) };
            }
        }
        return Ok(());
    }
    let (lrs, lcs) = lhs.strides();
    let (rrs, rcs) = rhs.strides();
    // SAFETY: the bounds of all three operands were checked above against the strides
    // `Op` reports for its stored (row-major) shape; the caller vouches for `dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lcs,
            lrs,
            rhs.data.as_ptr(),
            rcs,
            rrs,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}

/// `x [n, p] · wᵀ (w [r, p]) + bias [r]` → `[n, r]`: the forward product of a linear layer.
pub(crate) fn linear_forward(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let (n, p) = x.dims2()?;
    let (r, p2) = w.dims2()?;
    if p != p2 {
        candle_core::bail!("linear_forward: input has {p} features, weight expects {p2}");
    }
    let par = auto_par(n, r, p);
    let out = match bias {
        Some(b) => {
            let mut out = with_host(b, |bv| {
                if bv.len() != r {
                    candle_core::bail!(
                        "linear_forward: bias of {} values for {r} outputs",
                        bv.len()
                    );
                }
                Ok(bv.repeat(n))
            })??;
            with_host(x, |xv| {
                with_host(w, |wv| {
                    gemm_into(&mut out, true, Op::n(xv, n, p), Op::t(wv, r, p), 1.0, par)
                })
            })???;
            out
        }
        None => {
            let mut out = Fresh::new(n * r);
            with_host(x, |xv| {
                with_host(w, |wv| {
                    gemm_into_slots(out.slots(), Op::n(xv, n, p), Op::t(wv, r, p), 1.0, par)
                })
            })???;
            // SAFETY: the product returned `Ok`, so it wrote all `n·r` slots.
            unsafe { out.assume_init() }
        }
    };
    host_tensor(out, &[n, r])
}

/// `g [n, r] · w [r, p]` → `[n, p]`: the input gradient of a linear layer.
pub(crate) fn input_grad(g: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let (n, r) = g.dims2()?;
    let (r2, p) = w.dims2()?;
    if r != r2 {
        candle_core::bail!("input_grad: gradient has {r} features, weight has {r2} rows");
    }
    let mut out = Fresh::new(n * p);
    with_host(g, |gv| {
        with_host(w, |wv| {
            gemm_into_slots(
                out.slots(),
                Op::n(gv, n, r),
                Op::n(wv, r, p),
                1.0,
                auto_par(n, p, r),
            )
        })
    })???;
    // SAFETY: the product returned `Ok`, so it wrote all `n·p` slots.
    let out = unsafe { out.assume_init() };
    host_tensor(out, &[n, p])
}

/// Per-example squared norms `‖G_iᵀA_i‖²_F (+ ‖Σ_t G_{i,t}‖²)` by the ghost-norm identity
/// (Li et al. 2021, §4): `⟨A_iA_iᵀ, G_iG_iᵀ⟩_F`, with the two `T×T` Gram matrices formed per
/// example in a per-thread scratch buffer (no `[B, T, T]` tensor); for `T = 1`,
/// `‖a_i‖²‖g_i‖²`.
pub(crate) fn ghost_sq_norms(a: &Tensor, g: &Tensor, bias: bool) -> candle_core::Result<Tensor> {
    let (b, t, p) = a.dims3()?;
    let r = g.dim(2)?;
    let mut norms = vec![0f32; b];
    with_host(a, |av| {
        with_host(g, |gv| -> candle_core::Result<()> {
            let (sa, sg) = (t * p, t * r);
            norms.par_iter_mut().enumerate().try_for_each_init(
                || (vec![0f32; t * t], vec![0f32; t * t]),
                |(ga, gg), (i, out)| -> candle_core::Result<()> {
                    let ai = &av[i * sa..(i + 1) * sa];
                    let gi = &gv[i * sg..(i + 1) * sg];
                    let mut w = if t == 1 {
                        dot(ai, ai) * dot(gi, gi)
                    } else {
                        gemm_into(
                            ga,
                            false,
                            Op::n(ai, t, p),
                            Op::t(ai, t, p),
                            1.0,
                            Parallelism::None,
                        )?;
                        gemm_into(
                            gg,
                            false,
                            Op::n(gi, t, r),
                            Op::t(gi, t, r),
                            1.0,
                            Parallelism::None,
                        )?;
                        dot(ga, gg)
                    };
                    if bias {
                        w += bias_sq_norm(gi, t, r);
                    }
                    *out = w;
                    Ok(())
                },
            )
        })
    })???;
    host_tensor(norms, &[b])
}

/// [`ghost_sq_norms`] of a record whose positions come in two halves, `[A₁; A₂]` and
/// `[G₁; G₂]` (BAM's mixed record), without concatenating them: per example
/// `⟨A₁A₁ᵀ, G₁G₁ᵀ⟩ + ⟨A₂A₂ᵀ, G₂G₂ᵀ⟩ + 2⟨A₁A₂ᵀ, G₁G₂ᵀ⟩` (the blocks of the `2T×2T` Grams),
/// plus `‖Σ_t G₁ + Σ_t G₂‖²` for the bias.
pub(crate) fn ghost_sq_norms_split(
    a1: &Tensor,
    g1: &Tensor,
    a2: &Tensor,
    g2: &Tensor,
    bias: bool,
) -> candle_core::Result<Tensor> {
    let (b, t1, p) = a1.dims3()?;
    let r = g1.dim(2)?;
    let (b2, t2, p2) = a2.dims3()?;
    if b != b2 || p != p2 || g1.dims() != [b, t1, r] || g2.dims() != [b, t2, r] {
        candle_core::bail!("ghost_sq_norms_split: inconsistent halves");
    }
    let mut norms = vec![0f32; b];
    with_host(a1, |a1v| {
        with_host(g1, |g1v| {
            with_host(a2, |a2v| {
                with_host(g2, |g2v| -> candle_core::Result<()> {
                    norms.par_iter_mut().enumerate().try_for_each_init(
                        || {
                            (
                                vec![0f32; t1.max(t2) * t1.max(t2)],
                                vec![0f32; t1.max(t2) * t1.max(t2)],
                                vec![0f32; r],
                            )
                        },
                        |(ga, gg, bs), (i, out)| -> candle_core::Result<()> {
                            let a1i = &a1v[i * t1 * p..(i + 1) * t1 * p];
                            let g1i = &g1v[i * t1 * r..(i + 1) * t1 * r];
                            let a2i = &a2v[i * t2 * p..(i + 1) * t2 * p];
                            let g2i = &g2v[i * t2 * r..(i + 1) * t2 * r];
                            let mut w = 0f32;
                            if t1 == 1 && t2 == 1 {
                                w += dot(a1i, a1i) * dot(g1i, g1i);
                                w += dot(a2i, a2i) * dot(g2i, g2i);
                                w += 2.0 * dot(a1i, a2i) * dot(g1i, g2i);
                            } else {
                                for (x, tx, y, ty, gx, gy, c) in [
                                    (a1i, t1, a1i, t1, g1i, g1i, 1f32),
                                    (a2i, t2, a2i, t2, g2i, g2i, 1.0),
                                    (a1i, t1, a2i, t2, g1i, g2i, 2.0),
                                ] {
                                    let n = tx * ty;
                                    gemm_into(
                                        &mut ga[..n],
                                        false,
                                        Op::n(x, tx, p),
                                        Op::t(y, ty, p),
                                        1.0,
                                        Parallelism::None,
                                    )?;
                                    gemm_into(
                                        &mut gg[..n],
                                        false,
                                        Op::n(gx, tx, r),
                                        Op::t(gy, ty, r),
                                        1.0,
                                        Parallelism::None,
                                    )?;
                                    w += c * dot(&ga[..n], &gg[..n]);
                                }
                            }
                            if bias {
                                column_sums(g1i, t1, r, bs);
                                add_column_sums(g2i, t2, r, bs);
                                w += dot(bs, bs);
                            }
                            *out = w;
                            Ok(())
                        },
                    )
                })
            })
        })
    })?????;
    host_tensor(norms, &[b])
}

/// The first half of a split record for [`per_sample_split_with_norms`]: its activations
/// and output gradients, or its per-example gradients already materialised (weight
/// `[B, r, p]`, bias `[B, r]`) and a factor to scale them by.
pub(crate) enum FirstHalf<'a> {
    Record {
        a: &'a Tensor,
        g: &'a Tensor,
    },
    Materialized {
        w: &'a Tensor,
        b: Option<&'a Tensor>,
        scale: f32,
    },
}

/// [`per_sample_with_norms`] of a record split into two halves of positions: per example
/// `G₁ᵀA₁ + G₂ᵀA₂` (or `c·W₁ + G₂ᵀA₂` where the first half's gradients are materialised),
/// accumulated in one output buffer instead of over a concatenated record.
pub(crate) fn per_sample_split_with_norms(
    first: FirstHalf<'_>,
    a2: &Tensor,
    g2: &Tensor,
    bias: bool,
) -> candle_core::Result<(Tensor, Option<Tensor>, Tensor)> {
    let (b, t2, p) = a2.dims3()?;
    let r = g2.dim(2)?;
    let (sw, sg2) = (r * p, t2 * r);
    let mut w: Vec<f32>;
    let mut bs = vec![0f32; if bias { b * r } else { 0 }];
    let mut norms = vec![0f32; b];
    // The first half into the output buffers.
    match first {
        FirstHalf::Record { a: a1, g: g1 } => {
            let (b1, t1, p1) = a1.dims3()?;
            if b1 != b || p1 != p || g1.dims() != [b, t1, r] {
                candle_core::bail!("per_sample_split_with_norms: inconsistent halves");
            }
            w = vec![0f32; b * sw];
            with_host(a1, |av| {
                with_host(g1, |gv| -> candle_core::Result<()> {
                    w.par_chunks_mut(sw.max(1))
                        .enumerate()
                        .try_for_each(|(i, wi)| {
                            gemm_into(
                                wi,
                                false,
                                Op::t(&gv[i * t1 * r..(i + 1) * t1 * r], t1, r),
                                Op::n(&av[i * t1 * p..(i + 1) * t1 * p], t1, p),
                                1.0,
                                Parallelism::None,
                            )
                        })?;
                    if bias {
                        bs.par_chunks_mut(r.max(1)).enumerate().for_each(|(i, bi)| {
                            column_sums(&gv[i * t1 * r..(i + 1) * t1 * r], t1, r, bi)
                        });
                    }
                    Ok(())
                })
            })???;
        }
        FirstHalf::Materialized {
            w: w1,
            b: b1,
            scale,
        } => {
            if w1.dims() != [b, r, p] || bias != b1.is_some() {
                candle_core::bail!("per_sample_split_with_norms: inconsistent halves");
            }
            // Written once, without zeroing a fresh buffer first.
            w = with_host(w1, |v| v.par_iter().map(|s| scale * s).collect())?;
            if let Some(b1) = b1 {
                if b1.dims() != [b, r] {
                    candle_core::bail!("per_sample_split_with_norms: inconsistent bias");
                }
                with_host(b1, |v| {
                    bs.iter_mut().zip(v).for_each(|(d, s)| *d = scale * s)
                })?;
            }
        }
    }
    with_host(a2, |av| {
        with_host(g2, |gv| -> candle_core::Result<()> {
            let work = |i: usize, wi: &mut [f32], bi: &mut [f32], n: &mut f32| {
                let ai = &av[i * t2 * p..(i + 1) * t2 * p];
                let gi = &gv[i * sg2..(i + 1) * sg2];
                *n = example_gradient(wi, bi, ai, gi, (t2, r, p), bias, true)?;
                Ok(())
            };
            for_each_example(&mut w, &mut bs, &mut norms, sw, r, bias, work)
        })
    })???;
    per_example_tensors(w, bs, norms, (b, r, p), bias)
}

/// `(X_i Y_iᵀ + c·11ᵀ) Z_i` for every example `i` (`c = 1` if `ones`, else 0), with
/// `X [B, T, m]`, `Y [B, S, m]`, `Z [B, S, n]` → `[B, T, n]`: a position Gram matrix applied
/// to a third operand, per example, with the `T×S` Gram in a per-thread scratch buffer.
///
/// This is how a per-example parameter offset of rank `S` acts without being formed (BAM's
/// ascent offsets `Δ_i = s_i G_iᵀA_i`, Knolle et al. 2023): the extra forward output
/// `A′_i Δ_iᵀ + 1·δb_iᵀ = (A′_i A_iᵀ + 11ᵀ)(s_i G_i)` and the extra input gradient
/// `G′_i Δ_i = (G′_i (s_i G_i)ᵀ) A_i`, at `T·S·(m+n)` multiply-adds instead of `T·m·n`.
pub(crate) fn gram_apply(
    x: &Tensor,
    y: &Tensor,
    z: &Tensor,
    ones: bool,
) -> candle_core::Result<Tensor> {
    let (b, t, m) = x.dims3()?;
    let (b2, s, m2) = y.dims3()?;
    let (b3, s2, n) = z.dims3()?;
    if b != b2 || b != b3 || m != m2 || s != s2 {
        candle_core::bail!(
            "gram_apply: inconsistent shapes [{b}, {t}, {m}] · [{b2}, {s}, {m2}]ᵀ · [{b3}, {s2}, {n}]"
        );
    }
    let mut out = vec![0f32; b * t * n];
    with_host(x, |xv| {
        with_host(y, |yv| {
            with_host(z, |zv| -> candle_core::Result<()> {
                out.par_chunks_mut((t * n).max(1))
                    .enumerate()
                    .try_for_each_init(
                        || vec![0f32; t * s],
                        |gram, (i, oi)| -> candle_core::Result<()> {
                            let xi = &xv[i * t * m..(i + 1) * t * m];
                            let yi = &yv[i * s * m..(i + 1) * s * m];
                            let zi = &zv[i * s * n..(i + 1) * s * n];
                            gemm_into(
                                gram,
                                false,
                                Op::n(xi, t, m),
                                Op::t(yi, s, m),
                                1.0,
                                Parallelism::None,
                            )?;
                            if ones {
                                gram.iter_mut().for_each(|v| *v += 1.0);
                            }
                            gemm_into(
                                oi,
                                false,
                                Op::n(gram, t, s),
                                Op::n(zi, s, n),
                                1.0,
                                Parallelism::None,
                            )
                        },
                    )
            })
        })
    })????;
    host_tensor(out, &[b, t, n])
}

/// `X_i W_iᵀ` (`transpose`) or `X_i W_i` for every example `i`, with `X [B, T, k]` and
/// `W [B, r, k]` resp. `W [B, k, r]` → `[B, T, r]`: per-example matrices applied to each
/// example's positions, one single-threaded product per example, examples in parallel
/// (candle's batched CPU matmul runs the batch one product at a time).
pub(crate) fn batched_apply(
    x: &Tensor,
    w: &Tensor,
    transpose: bool,
) -> candle_core::Result<Tensor> {
    let (b, t, k) = x.dims3()?;
    let (b2, w0, w1) = w.dims3()?;
    let (wk, r) = if transpose { (w1, w0) } else { (w0, w1) };
    if b != b2 || k != wk {
        candle_core::bail!(
            "batched_apply: inconsistent shapes [{b}, {t}, {k}] and [{b2}, {w0}, {w1}]"
        );
    }
    let mut out = vec![0f32; b * t * r];
    with_host(x, |xv| {
        with_host(w, |wv| -> candle_core::Result<()> {
            out.par_chunks_mut((t * r).max(1))
                .enumerate()
                .try_for_each(|(i, oi)| {
                    let xi = &xv[i * t * k..(i + 1) * t * k];
                    let wi = &wv[i * w0 * w1..(i + 1) * w0 * w1];
                    let rhs = if transpose {
                        Op::t(wi, w0, w1)
                    } else {
                        Op::n(wi, w0, w1)
                    };
                    gemm_into(oi, false, Op::n(xi, t, k), rhs, 1.0, Parallelism::None)
                })
        })
    })???;
    host_tensor(out, &[b, t, r])
}

/// Materialised per-example gradients `G_iᵀA_i` (`[B, r, p]`) and `Σ_t G_{i,t}` (`[B, r]`),
/// together with their squared norms (`[B]`), in one parallel pass over the examples.
pub(crate) fn per_sample_with_norms(
    a: &Tensor,
    g: &Tensor,
    bias: bool,
) -> candle_core::Result<(Tensor, Option<Tensor>, Tensor)> {
    let (b, t, p) = a.dims3()?;
    let r = g.dim(2)?;
    let mut w = vec![0f32; b * r * p];
    let mut bs = vec![0f32; if bias { b * r } else { 0 }];
    let mut norms = vec![0f32; b];
    with_host(a, |av| {
        with_host(g, |gv| -> candle_core::Result<()> {
            let (sa, sg, sw) = (t * p, t * r, r * p);
            let work = |i: usize, wi: &mut [f32], bi: &mut [f32], n: &mut f32| {
                let ai = &av[i * sa..(i + 1) * sa];
                let gi = &gv[i * sg..(i + 1) * sg];
                *n = example_gradient(wi, bi, ai, gi, (t, r, p), bias, false)?;
                Ok(())
            };
            for_each_example(&mut w, &mut bs, &mut norms, sw, r, bias, work)
        })
    })???;
    per_example_tensors(w, bs, norms, (b, r, p), bias)
}

/// `Σ_i w_i G_iᵀA_i` (`[r, p]`) and `Σ_i w_i Σ_t G_{i,t}` (`[r]`) without per-example
/// tensors (book-keeping, Bu et al. 2022). The batch is split into one contiguous block of
/// examples per core; each block is one product with a `(block·T)`-long reduction, and the
/// per-core partial sums are added. (A single product over all `B·T` rows would run on one
/// core when `r×p` is small, as for early convolutions.)
pub(crate) fn weighted_sum(
    a: &Tensor,
    g: &Tensor,
    weights: &Tensor,
    bias: bool,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let (b, t, p) = a.dims3()?;
    let r = g.dim(2)?;
    let wts: Vec<f32> = weights.to_dtype(candle_core::DType::F32)?.to_vec1()?;
    if wts.len() != b {
        candle_core::bail!("weighted_sum: {} weights for {b} examples", wts.len());
    }
    let blocks = threads().min(b).max(1);
    let per = b.div_ceil(blocks).max(1);
    let partials: Vec<(Vec<f32>, Vec<f32>)> = with_host(a, |av| {
        with_host(g, |gv| {
            (0..b.div_ceil(per))
                .into_par_iter()
                .map(|blk| -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
                    let lo = blk * per;
                    let hi = (lo + per).min(b);
                    let rows = (hi - lo) * t;
                    // Rows of G scaled by their example's weight.
                    let mut gw = gv[lo * t * r..hi * t * r].to_vec();
                    for (i, ex) in gw.chunks_mut(t * r).enumerate() {
                        let c = wts[lo + i];
                        ex.iter_mut().for_each(|v| *v *= c);
                    }
                    let mut dw = vec![0f32; r * p];
                    gemm_into(
                        &mut dw,
                        false,
                        Op::t(&gw, rows, r),
                        Op::n(&av[lo * t * p..hi * t * p], rows, p),
                        1.0,
                        Parallelism::None,
                    )?;
                    let mut db = vec![0f32; if bias { r } else { 0 }];
                    if bias {
                        column_sums(&gw, rows, r, &mut db);
                    }
                    Ok((dw, db))
                })
                .collect::<candle_core::Result<Vec<_>>>()
        })
    })???;
    let mut it = partials.into_iter();
    let (mut dw, mut db) = it
        .next()
        .unwrap_or_else(|| (vec![0f32; r * p], vec![0f32; r]));
    for (pw, pb) in it {
        dw.iter_mut().zip(&pw).for_each(|(x, y)| *x += y);
        db.iter_mut().zip(&pb).for_each(|(x, y)| *x += y);
    }
    let dwt = host_tensor(dw, &[r, p])?;
    let dbt = if bias {
        db.resize(r, 0.0);
        Some(host_tensor(db, &[r])?)
    } else {
        None
    };
    Ok((dwt, dbt))
}

/// `Σ_i w_i X_i` for per-example tensors `X` of shape `[B, ...]`: a `[1, B] · [B, n]`
/// product, split over the columns.
pub(crate) fn weighted_sum_materialized(
    x: &Tensor,
    weights: &Tensor,
) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let b = dims[0];
    let n: usize = dims[1..].iter().product();
    let wts: Vec<f32> = weights.to_dtype(candle_core::DType::F32)?.to_vec1()?;
    if wts.len() != b {
        candle_core::bail!("weighted_sum: {} weights for {b} examples", wts.len());
    }
    let mut out = vec![0f32; n];
    with_host(x, |xv| {
        let chunk = n.div_ceil(threads()).max(1);
        out.par_chunks_mut(chunk).enumerate().for_each(|(c, o)| {
            let lo = c * chunk;
            for (i, &wi) in wts.iter().enumerate() {
                let row = &xv[i * n + lo..i * n + lo + o.len()];
                o.iter_mut().zip(row).for_each(|(s, v)| *s += wi * v);
            }
        })
    })?;
    host_tensor(out, &dims[1..])
}

/// Each example's squared norm over several materialised per-example tensors `[B, ...]`
/// (one layer's weight and bias gradients, say): `Σ_parts ‖X_i‖²`, accumulated part by part
/// in the order and with the dot product of [`per_sample_with_norms`], so that the norms of
/// the same gradients agree to the bit whichever function formed them.
pub(crate) fn materialized_sq_norms(parts: &[&Tensor]) -> candle_core::Result<Tensor> {
    let b = match parts.first() {
        Some(t) => t.dim(0)?,
        None => candle_core::bail!("materialized_sq_norms: no tensors"),
    };
    let mut norms = vec![0f32; b];
    for (k, part) in parts.iter().enumerate() {
        if part.dim(0)? != b {
            candle_core::bail!("materialized_sq_norms: tensors for different batch sizes");
        }
        let n = part.elem_count() / b.max(1);
        with_host(part, |v| {
            norms.par_iter_mut().enumerate().for_each(|(i, s)| {
                let row = &v[i * n..(i + 1) * n];
                if k == 0 {
                    *s = dot(row, row);
                } else {
                    *s += dot(row, row);
                }
            })
        })?;
    }
    host_tensor(norms, &[b])
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums so the loop vectorises (f32 addition is not associative, so the
    // compiler will not reorder a single running sum).
    let mut acc = [0f32; 8];
    let (ca, ra) = a.split_at(a.len() - a.len() % 8);
    let (cb, rb) = b.split_at(ca.len());
    for (x, y) in ca.chunks_exact(8).zip(cb.chunks_exact(8)) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Runs `work(i, w_i, b_i, norm_i)` for every example `i` in parallel, over the example's
/// `sw` floats of `w`, `r` floats of `bs` (an empty slice without bias) and its norm.
fn for_each_example<F>(
    w: &mut [f32],
    bs: &mut [f32],
    norms: &mut [f32],
    sw: usize,
    r: usize,
    bias: bool,
    work: F,
) -> candle_core::Result<()>
where
    F: Fn(usize, &mut [f32], &mut [f32], &mut f32) -> candle_core::Result<()> + Sync,
{
    if bias {
        w.par_chunks_mut(sw.max(1))
            .zip(bs.par_chunks_mut(r.max(1)))
            .zip(norms.par_iter_mut())
            .enumerate()
            .try_for_each(|(i, ((wi, bi), n))| work(i, wi, bi, n))
    } else {
        w.par_chunks_mut(sw.max(1))
            .zip(norms.par_iter_mut())
            .enumerate()
            .try_for_each(|(i, (wi, n))| work(i, wi, &mut [], n))
    }
}

/// One example's weight gradient `G_iᵀA_i` (`a_i [t, p]`, `g_i [t, r]`) into `wi` and, with
/// `bias`, its bias gradient (the column sums of `G_i`) into `bi` — written, or with
/// `accumulate` added to what they hold — and the squared norm of the result.
fn example_gradient(
    wi: &mut [f32],
    bi: &mut [f32],
    ai: &[f32],
    gi: &[f32],
    (t, r, p): (usize, usize, usize),
    bias: bool,
    accumulate: bool,
) -> candle_core::Result<f32> {
    gemm_into(
        wi,
        accumulate,
        Op::t(gi, t, r),
        Op::n(ai, t, p),
        1.0,
        Parallelism::None,
    )?;
    let mut s = dot(wi, wi);
    if bias {
        if accumulate {
            add_column_sums(gi, t, r, bi);
        } else {
            column_sums(gi, t, r, bi);
        }
        s += dot(bi, bi);
    }
    Ok(s)
}

/// The per-example gradients `[B, r, p]`, bias gradients `[B, r]` (with bias) and squared
/// norms `[B]` as tensors.
fn per_example_tensors(
    w: Vec<f32>,
    bs: Vec<f32>,
    norms: Vec<f32>,
    (b, r, p): (usize, usize, usize),
    bias: bool,
) -> candle_core::Result<(Tensor, Option<Tensor>, Tensor)> {
    let bt = if bias {
        Some(host_tensor(bs, &[b, r])?)
    } else {
        None
    };
    Ok((host_tensor(w, &[b, r, p])?, bt, host_tensor(norms, &[b])?))
}

/// Column sums of a row-major `[rows, cols]` matrix into `out` (`cols` long).
fn column_sums(m: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    out.fill(0.0);
    add_column_sums(m, rows, cols, out);
}

/// Adds the column sums of the row-major `rows × cols` matrix `m` to `out`.
fn add_column_sums(m: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    for row in m[..rows * cols].chunks_exact(cols.max(1)) {
        out.iter_mut().zip(row).for_each(|(s, v)| *s += v);
    }
}

fn bias_sq_norm(gi: &[f32], t: usize, r: usize) -> f32 {
    let mut s = vec![0f32; r];
    column_sums(gi, t, r, &mut s);
    dot(&s, &s)
}

#[cfg(test)]
mod tests {
    //! Every host kernel against the generic candle expression it replaces.
    use super::*;
    use proptest::prelude::*;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / scale)
            .fold(0.0, f32::max)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn kernels_match_candle(b in 1usize..7, t in 1usize..6, p in 1usize..40, r in 1usize..30,
                                bias in any::<bool>(), seed in 0u64..1000) {
            let a = rand(&[b, t, p], seed);
            let g = rand(&[b, t, r], seed + 1);
            let w = rand(&[r, p], seed + 2);
            let bv = rand(&[r], seed + 3);
            let wts = rand(&[b], seed + 4);
            let tol = 2e-5;

            // Forward and input gradient.
            let a2 = a.reshape((b * t, p)).unwrap();
            let want = a2.matmul(&w.t().unwrap()).unwrap().broadcast_add(&bv).unwrap();
            prop_assert!(max_rel_diff(&linear_forward(&a2, &w, Some(&bv)).unwrap(), &want) < tol);
            let want = a2.matmul(&w.t().unwrap()).unwrap();
            prop_assert!(max_rel_diff(&linear_forward(&a2, &w, None).unwrap(), &want) < tol);
            let g2 = g.reshape((b * t, r)).unwrap();
            prop_assert!(max_rel_diff(&input_grad(&g2, &w).unwrap(), &g2.matmul(&w).unwrap()) < tol);

            // Per-example gradients and their norms.
            let pw = g.t().unwrap().matmul(&a).unwrap();
            let pb = g.sum(1).unwrap();
            let mut pn = pw.sqr().unwrap().flatten_from(1).unwrap().sum(1).unwrap();
            if bias {
                pn = (pn + pb.sqr().unwrap().sum(1).unwrap()).unwrap();
            }
            let (hw, hb, hn) = per_sample_with_norms(&a, &g, bias).unwrap();
            prop_assert!(max_rel_diff(&hw, &pw) < tol);
            prop_assert_eq!(hb.is_some(), bias);
            if let Some(hb) = hb {
                prop_assert!(max_rel_diff(&hb, &pb) < tol);
            }
            prop_assert!(max_rel_diff(&hn, &pn) < tol);
            prop_assert!(max_rel_diff(&ghost_sq_norms(&a, &g, bias).unwrap(), &pn) < tol);

            // Weighted sums, with and without materialised per-example gradients.
            let wb = wts.reshape((b, 1, 1)).unwrap();
            let want_w = pw.broadcast_mul(&wb).unwrap().sum(0).unwrap();
            let want_b = pb.broadcast_mul(&wts.reshape((b, 1)).unwrap()).unwrap().sum(0).unwrap();
            let (dw, db) = weighted_sum(&a, &g, &wts, bias).unwrap();
            prop_assert!(max_rel_diff(&dw, &want_w) < tol);
            if let Some(db) = db {
                prop_assert!(max_rel_diff(&db, &want_b) < tol);
            }
            prop_assert!(max_rel_diff(&weighted_sum_materialized(&pw, &wts).unwrap(), &want_w) < tol);
            prop_assert!(max_rel_diff(&weighted_sum_materialized(&pb, &wts).unwrap(), &want_b) < tol);

            // Position Gram applied to a third operand, and per-example products.
            let y = rand(&[b, t + 1, p], seed + 5);
            let z = rand(&[b, t + 1, r], seed + 6);
            let gram = a.matmul(&y.t().unwrap()).unwrap();
            prop_assert!(max_rel_diff(&gram_apply(&a, &y, &z, false).unwrap(), &gram.matmul(&z).unwrap()) < tol);
            let want = (gram + 1.0).unwrap().matmul(&z).unwrap();
            prop_assert!(max_rel_diff(&gram_apply(&a, &y, &z, true).unwrap(), &want) < tol);
            let wr = rand(&[b, r, p], seed + 7);
            let want = a.matmul(&wr.t().unwrap()).unwrap();
            prop_assert!(max_rel_diff(&batched_apply(&a, &wr, true).unwrap(), &want) < tol);
            let want = g.matmul(&wr).unwrap();
            prop_assert!(max_rel_diff(&batched_apply(&g, &wr, false).unwrap(), &want) < tol);
        }
    }

    #[test]
    fn large_products_use_the_threaded_path_and_still_match() {
        // Above the `auto_par` threshold and with several example blocks per core.
        let (b, t, p, r) = (64, 9, 70, 50);
        let a = rand(&[b, t, p], 1);
        let g = rand(&[b, t, r], 2);
        let w = rand(&[r, p], 3);
        let a2 = a.reshape((b * t, p)).unwrap();
        let want = a2.matmul(&w.t().unwrap()).unwrap();
        assert!(max_rel_diff(&linear_forward(&a2, &w, None).unwrap(), &want) < 2e-5);
        let wts = Tensor::ones(b, candle_core::DType::F32, &Device::Cpu).unwrap();
        let want = g
            .reshape((b * t, r))
            .unwrap()
            .t()
            .unwrap()
            .matmul(&a2)
            .unwrap();
        let (dw, db) = weighted_sum(&a, &g, &wts, true).unwrap();
        assert!(max_rel_diff(&dw, &want) < 2e-5);
        let want_b = g.sum(1).unwrap().sum(0).unwrap();
        assert!(max_rel_diff(&db.unwrap(), &want_b) < 2e-5);
    }

    #[test]
    fn mismatched_shapes_are_errors_not_panics() {
        let x = rand(&[3, 4], 0);
        let w = rand(&[5, 6], 1);
        assert!(linear_forward(&x, &w, None).is_err());
        assert!(input_grad(&x, &w).is_err());
        let w = rand(&[5, 4], 1);
        assert!(linear_forward(&x, &w, Some(&rand(&[4], 2))).is_err());
        let a = rand(&[2, 1, 4], 0);
        let g = rand(&[2, 1, 3], 1);
        assert!(weighted_sum(&a, &g, &rand(&[3], 2), false).is_err());
        assert!(gram_apply(&a, &rand(&[2, 1, 5], 3), &g, false).is_err());
        assert!(gram_apply(&a, &a, &rand(&[3, 1, 3], 4), false).is_err());
        assert!(batched_apply(&a, &rand(&[2, 3, 5], 5), true).is_err());
        assert!(batched_apply(&a, &rand(&[2, 5, 3], 6), false).is_err());
    }

    #[test]
    fn empty_batch_gives_zero_sums() {
        let a = rand(&[0, 2, 4], 0);
        let g = rand(&[0, 2, 3], 1);
        let wts = rand(&[0], 2);
        let (dw, db) = weighted_sum(&a, &g, &wts, true).unwrap();
        assert_eq!(dw.dims(), &[3, 4]);
        assert_eq!(db.unwrap().dims(), &[3]);
        assert_eq!(
            dw.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }
}
