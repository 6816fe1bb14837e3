//! Speed targets: RDP ε for 1e5 homogeneous steps < 1 ms; PRV ε for 14062 steps < 100 ms;
//! σ calibration < 50 ms (RDP) and < 1 s (PRV).

use criterion::{criterion_group, criterion_main, Criterion};
use dp_accounting::{
    calibrate_noise_multiplier, Accountant, AccountantKind, DpEvent, PrvAccountant, RdpAccountant,
};
use std::hint::black_box;

const Q: f64 = 256.0 / 60000.0;

fn bench(c: &mut Criterion) {
    let step = DpEvent::poisson_gaussian(Q, 1.1).unwrap();

    c.bench_function("rdp_epsilon_1e5_steps_fresh", |b| {
        b.iter(|| {
            let mut acc = RdpAccountant::new();
            acc.compose(&step.clone().repeated(100_000)).unwrap();
            black_box(acc.epsilon(1e-5).unwrap())
        })
    });

    let mut warm = RdpAccountant::new();
    warm.compose(&step).unwrap();
    c.bench_function("rdp_compose_one_step_and_epsilon_cached", |b| {
        b.iter(|| {
            let mut acc = warm.clone();
            acc.compose(&step).unwrap();
            black_box(acc.epsilon(1e-5).unwrap())
        })
    });

    let mut g = c.benchmark_group("slow");
    g.sample_size(10);
    g.bench_function("prv_epsilon_14062_steps", |b| {
        b.iter(|| {
            let mut acc = PrvAccountant::new();
            acc.compose(&step.clone().repeated(14062)).unwrap();
            black_box(acc.epsilon_bounds(1e-5).unwrap())
        })
    });
    g.bench_function("calibrate_rdp_14062_steps", |b| {
        b.iter(|| {
            black_box(calibrate_noise_multiplier(3.0, 1e-5, Q, 14062, AccountantKind::Rdp).unwrap())
        })
    });
    g.bench_function("calibrate_prv_14062_steps", |b| {
        b.iter(|| {
            black_box(calibrate_noise_multiplier(3.0, 1e-5, Q, 14062, AccountantKind::Prv).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
