//! Fused optimiser updates on f32 host tensors: one pass that reads the parameter, the
//! gradient and the state once and writes the new values once, instead of one candle op
//! (and one allocation) per term of the update rule. The arithmetic is that of the candle
//! expressions in `optimizer.rs`, in f32 and in the same order (tested against them).

use candle_core::{Device, Tensor};
use dp_core::host::with_host_f32;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

fn tensor(v: Vec<f32>, like: &Tensor) -> candle_core::Result<Tensor> {
    Tensor::from_vec(v, like.dims(), &Device::Cpu)
}

/// Values of an optional state buffer (empty when absent).
fn values(t: Option<&Tensor>) -> candle_core::Result<Vec<f32>> {
    match t {
        Some(t) => with_host_f32(t, |v| v.to_vec()),
        None => Ok(Vec::new()),
    }
}

fn check(n: usize, others: &[usize]) -> candle_core::Result<()> {
    if others.iter().any(|&m| m != n && m != 0) {
        candle_core::bail!("fused update: parameter, gradient and state sizes differ");
    }
    Ok(())
}

/// SGD hyper-parameters.
pub(crate) struct SgdRule {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// `(p', v')`: `g ← g + λp`; `v ← μv + g` (or `g` on the first step); `d = g + μv`
/// (Nesterov) or `v`; `p ← p − η·d`. Without momentum `d = g` and no `v` is kept.
pub(crate) fn sgd(
    p: &Tensor,
    g: &Tensor,
    v: Option<&Tensor>,
    r: &SgdRule,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let n = p.elem_count();
    let vold = values(v)?;
    let momentum = r.momentum != 0.0;
    let mut pn = vec![0f32; n];
    let mut vn = vec![0f32; if momentum { n } else { 0 }];
    with_host_f32(p, |pv| {
        with_host_f32(g, |gv| {
            check(n, &[pv.len(), gv.len(), vold.len()])?;
            // Slices per chunk and loop-invariant branches, so that the loops vectorise.
            let kernel = |o: usize, po: &mut [f32], vo: &mut [f32]| {
                let len = po.len();
                let (ps, gs) = (&pv[o..o + len], &gv[o..o + len]);
                let grad = |j: usize| {
                    if r.weight_decay != 0.0 {
                        gs[j] + ps[j] * r.weight_decay
                    } else {
                        gs[j]
                    }
                };
                if !momentum {
                    for (j, (y, &pj)) in po.iter_mut().zip(ps).enumerate() {
                        *y = pj - grad(j) * r.lr;
                    }
                    return;
                }
                let vs = if vold.is_empty() {
                    None
                } else {
                    Some(&vold[o..o + len])
                };
                for j in 0..len {
                    let gi = grad(j);
                    let vi = match vs {
                        Some(vs) => vs[j] * r.momentum + gi,
                        None => gi,
                    };
                    vo[j] = vi;
                    let d = if r.nesterov { gi + vi * r.momentum } else { vi };
                    po[j] = ps[j] - d * r.lr;
                }
            };
            if momentum {
                pn.par_chunks_mut(CHUNK)
                    .zip(vn.par_chunks_mut(CHUNK))
                    .enumerate()
                    .for_each(|(k, (po, vo))| kernel(k * CHUNK, po, vo));
            } else {
                pn.par_chunks_mut(CHUNK)
                    .enumerate()
                    .for_each(|(k, po)| kernel(k * CHUNK, po, &mut []));
            }
            Ok::<(), candle_core::Error>(())
        })
    })???;
    let vt = if momentum { Some(tensor(vn, p)?) } else { None };
    Ok((tensor(pn, p)?, vt))
}

/// Adam hyper-parameters for one step (`bc1, bc2` the bias corrections `1 − βᵗ`).
pub(crate) struct AdamRule {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub decoupled: bool,
    pub bc1: f32,
    pub bc2: f32,
}

/// `(p', m', v')` of one Adam / AdamW step.
pub(crate) fn adam(
    p: &Tensor,
    g: &Tensor,
    m: Option<&Tensor>,
    v: Option<&Tensor>,
    r: &AdamRule,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let n = p.elem_count();
    let (mold, vold) = (values(m)?, values(v)?);
    let mut pn = vec![0f32; n];
    let mut mn = vec![0f32; n];
    let mut vn = vec![0f32; n];
    with_host_f32(p, |pv| {
        with_host_f32(g, |gv| {
            check(n, &[pv.len(), gv.len(), mold.len(), vold.len()])?;
            pn.par_chunks_mut(CHUNK)
                .zip(mn.par_chunks_mut(CHUNK))
                .zip(vn.par_chunks_mut(CHUNK))
                .enumerate()
                .for_each(|(k, ((po, mo), vo))| {
                    let (o, len) = (k * CHUNK, po.len());
                    let (ps, gs) = (&pv[o..o + len], &gv[o..o + len]);
                    let ms = (!mold.is_empty()).then(|| &mold[o..o + len]);
                    let vs = (!vold.is_empty()).then(|| &vold[o..o + len]);
                    for j in 0..len {
                        let mut pi = ps[j];
                        let mut gi = gs[j];
                        if r.weight_decay != 0.0 {
                            if r.decoupled {
                                pi -= pi * (r.lr * r.weight_decay);
                            } else {
                                gi += pi * r.weight_decay;
                            }
                        }
                        let mi = match ms {
                            Some(ms) => ms[j] * r.beta1 + gi * (1.0 - r.beta1),
                            None => gi * (1.0 - r.beta1),
                        };
                        let vi = match vs {
                            Some(vs) => vs[j] * r.beta2 + gi * gi * (1.0 - r.beta2),
                            None => gi * gi * (1.0 - r.beta2),
                        };
                        let upd = (mi / r.bc1) / ((vi / r.bc2).sqrt() + r.eps);
                        po[j] = pi - upd * r.lr;
                        mo[j] = mi;
                        vo[j] = vi;
                    }
                });
            Ok::<(), candle_core::Error>(())
        })
    })???;
    Ok((tensor(pn, p)?, tensor(mn, p)?, tensor(vn, p)?))
}

#[cfg(test)]
mod tests {
    //! The fused updates against the candle expressions (taken for f64 tensors).
    use crate::{Adam, BaseOptimizer, Sgd};
    use candle_core::{DType, Device, Tensor};

    fn tensors(seed: u64, dtype: DType) -> Vec<Tensor> {
        // Sizes below and above one chunk, and a matrix.
        [vec![7usize], vec![3, 40_000], vec![5, 5]]
            .iter()
            .enumerate()
            .map(|(k, shape)| {
                dp_core::Init::seeded(seed + k as u64)
                    .normal(shape, 1.0, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            })
            .collect()
    }

    fn run(opt: &mut dyn BaseOptimizer, dtype: DType) -> Vec<Vec<f64>> {
        let mut p = tensors(1, dtype);
        for step in 0..4 {
            let g = tensors(10 + step, dtype);
            p = opt.step(&p, &g).unwrap();
        }
        p.iter()
            .map(|t| {
                t.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect()
    }

    fn agree(make: &dyn Fn() -> Box<dyn BaseOptimizer>) {
        let fast = run(make().as_mut(), DType::F32);
        let slow = run(make().as_mut(), DType::F64);
        for (a, b) in fast.iter().zip(&slow) {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn sgd_variants_match_the_candle_path() {
        agree(&|| Box::new(Sgd::new(0.1)));
        agree(&|| Box::new(Sgd::new(0.1).with_momentum(0.9)));
        agree(&|| Box::new(Sgd::new(0.1).with_momentum(0.9).with_nesterov(true)));
        agree(&|| Box::new(Sgd::new(0.1).with_momentum(0.5).with_weight_decay(0.01)));
    }

    #[test]
    fn adam_variants_match_the_candle_path() {
        agree(&|| Box::new(Adam::new(0.01)));
        agree(&|| Box::new(Adam::new(0.01).with_weight_decay(0.1)));
        agree(&|| Box::new(Adam::adamw(0.01, 0.1)));
        agree(&|| Box::new(Adam::new(0.01).with_betas(0.5, 0.9).with_eps(1e-6)));
    }

    #[test]
    fn mismatched_state_is_an_error() {
        let p = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let g = Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap();
        assert!(Sgd::new(0.1)
            .step(std::slice::from_ref(&p), std::slice::from_ref(&g))
            .is_err());
        assert!(Adam::new(0.1).step(&[p], &[g]).is_err());
    }
}
