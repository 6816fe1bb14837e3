//! `dp_core::host::map_elementwise` against hand-written fused kernels: one SGD-with-
//! momentum and one Adam step, written the way dp-optim's `fused.rs` writes them (host
//! slices, chunks of 2¹⁴ on rayon, loop-invariant branches), and the same arithmetic as a
//! scalar closure through `map_elementwise`. Both run interleaved in one process, on the
//! 784-256-256-10 MLP's 269,322 parameters and on 2.5M; the median of several rounds is
//! reported, with the ratio primitive / hand-written (1.00 = as fast), after checking that
//! the two give the same bits.
//!
//! ```text
//! cargo run --release -p dp-core --example elementwise_throughput -- [rounds] [reps]
//! ```
use candle_core::{Device, Tensor};
use dp_core::host::{map_elementwise, with_host_f32};
use rayon::prelude::*;
use std::time::Instant;

const CHUNK: usize = 1 << 14;

/// Runtime hyper-parameters (not constants, so that neither side gets them folded in).
struct Rule {
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    nesterov: bool,
    beta1: f32,
    beta2: f32,
    eps: f32,
    decoupled: bool,
    bc1: f32,
    bc2: f32,
}

fn tensor(v: Vec<f32>, like: &Tensor) -> Tensor {
    Tensor::from_vec(v, like.dims(), &Device::Cpu).unwrap()
}

/// fused.rs's SGD with momentum, the state present (read in place: fused.rs today copies
/// it first, which this hand-written loop does not, to be the stricter baseline).
fn sgd_hand(p: &Tensor, g: &Tensor, v: &Tensor, r: &Rule) -> (Tensor, Tensor) {
    let n = p.elem_count();
    let mut pn = vec![0f32; n];
    let mut vn = vec![0f32; n];
    with_host_f32(p, |pv| {
        with_host_f32(g, |gv| {
            with_host_f32(v, |vold| {
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
                    let vs = &vold[o..o + len];
                    for j in 0..len {
                        let gi = grad(j);
                        let vi = vs[j] * r.momentum + gi;
                        vo[j] = vi;
                        let d = if r.nesterov { gi + vi * r.momentum } else { vi };
                        po[j] = ps[j] - d * r.lr;
                    }
                };
                pn.par_chunks_mut(CHUNK)
                    .zip(vn.par_chunks_mut(CHUNK))
                    .enumerate()
                    .for_each(|(k, (po, vo))| kernel(k * CHUNK, po, vo));
            })
        })
    })
    .unwrap()
    .unwrap()
    .unwrap();
    (tensor(pn, p), tensor(vn, p))
}

fn sgd_prim(p: &Tensor, g: &Tensor, v: &Tensor, r: &Rule) -> (Tensor, Tensor) {
    let [p, v] = map_elementwise([p, g, v], |[p, g, v]| {
        let gi = if r.weight_decay != 0.0 {
            g + p * r.weight_decay
        } else {
            g
        };
        let vi = v * r.momentum + gi;
        let d = if r.nesterov { gi + vi * r.momentum } else { vi };
        [p - d * r.lr, vi]
    })
    .unwrap()
    .unwrap();
    (p, v)
}

/// fused.rs's Adam, the state present (read in place, as for SGD).
fn adam_hand(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, r: &Rule) -> [Tensor; 3] {
    let n = p.elem_count();
    let mut pn = vec![0f32; n];
    let mut mn = vec![0f32; n];
    let mut vn = vec![0f32; n];
    with_host_f32(p, |pv| {
        with_host_f32(g, |gv| {
            with_host_f32(m, |mold| {
                with_host_f32(v, |vold| {
                    pn.par_chunks_mut(CHUNK)
                        .zip(mn.par_chunks_mut(CHUNK))
                        .zip(vn.par_chunks_mut(CHUNK))
                        .enumerate()
                        .for_each(|(k, ((po, mo), vo))| {
                            let (o, len) = (k * CHUNK, po.len());
                            let (ps, gs) = (&pv[o..o + len], &gv[o..o + len]);
                            let (ms, vs) = (&mold[o..o + len], &vold[o..o + len]);
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
                                let mi = ms[j] * r.beta1 + gi * (1.0 - r.beta1);
                                let vi = vs[j] * r.beta2 + gi * gi * (1.0 - r.beta2);
                                let upd = (mi / r.bc1) / ((vi / r.bc2).sqrt() + r.eps);
                                po[j] = pi - upd * r.lr;
                                mo[j] = mi;
                                vo[j] = vi;
                            }
                        });
                })
            })
        })
    })
    .unwrap()
    .unwrap()
    .unwrap()
    .unwrap();
    [tensor(pn, p), tensor(mn, p), tensor(vn, p)]
}

fn adam_prim(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, r: &Rule) -> [Tensor; 3] {
    map_elementwise([p, g, m, v], |[mut pi, mut gi, m, v]| {
        if r.weight_decay != 0.0 {
            if r.decoupled {
                pi -= pi * (r.lr * r.weight_decay);
            } else {
                gi += pi * r.weight_decay;
            }
        }
        let mi = m * r.beta1 + gi * (1.0 - r.beta1);
        let vi = v * r.beta2 + gi * gi * (1.0 - r.beta2);
        let upd = (mi / r.bc1) / ((vi / r.bc2).sqrt() + r.eps);
        [pi - upd * r.lr, mi, vi]
    })
    .unwrap()
    .unwrap()
}

fn bits(ts: &[Tensor]) -> Vec<u32> {
    ts.iter()
        .flat_map(|t| with_host_f32(t, |v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()))
        .flatten()
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds per call of `f`, `reps` calls timed together.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(15);
    let reps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    // Weight decay on, so the branch a real rule has is there on both sides.
    let r = Rule {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 1e-4,
        nesterov: false,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        decoupled: false,
        bc1: 0.1,
        bc2: 0.001,
    };
    println!(
        "{} threads, median of {rounds} rounds of {reps} calls",
        rayon::current_num_threads()
    );
    for n in [269_322usize, 2_500_000] {
        let init = |seed: u64| {
            dp_core::Init::seeded(seed)
                .normal(&[n], 1.0, &Device::Cpu)
                .unwrap()
        };
        let (p, g, m, v) = (init(1), init(2), init(3), init(4));
        let v2 = (v.sqr().unwrap() * 0.01).unwrap(); // Adam's second moment is ≥ 0
        let (a, b) = (sgd_hand(&p, &g, &m, &r), sgd_prim(&p, &g, &m, &r));
        assert_eq!(bits(&[a.0, a.1]), bits(&[b.0, b.1]), "sgd: results differ");
        let (a, b) = (
            adam_hand(&p, &g, &m, &v2, &r),
            adam_prim(&p, &g, &m, &v2, &r),
        );
        assert_eq!(bits(&a), bits(&b), "adam: results differ");

        let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for round in 0..rounds {
            // Alternate which side runs first, so neither always finds warm caches.
            let mut run = |k: usize| {
                let s = match k {
                    0 => time(reps, || drop(sgd_hand(&p, &g, &m, &r))),
                    1 => time(reps, || drop(sgd_prim(&p, &g, &m, &r))),
                    2 => time(reps, || drop(adam_hand(&p, &g, &m, &v2, &r))),
                    _ => time(reps, || drop(adam_prim(&p, &g, &m, &v2, &r))),
                };
                t[k].push(s);
            };
            let order = if round % 2 == 0 {
                [0, 1, 2, 3]
            } else {
                [1, 0, 3, 2]
            };
            order.into_iter().for_each(&mut run);
        }
        let [sh, sp, ah, ap] = t.map(median);
        println!(
            "n = {n:>9}: sgd+momentum hand {:.3} ms, map_elementwise {:.3} ms, ratio {:.3}; \
             adam hand {:.3} ms, map_elementwise {:.3} ms, ratio {:.3}",
            sh * 1e3,
            sp * 1e3,
            sp / sh,
            ah * 1e3,
            ap * 1e3,
            ap / ah
        );
    }
}
