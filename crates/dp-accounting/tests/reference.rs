//! Per-order RDP against a high-precision reference: mpmath (40 digits) quadrature of the
//! definition A_α = E_{x∼N(0,σ²)}[(1 − q + q e^{(2x−1)/(2σ²)})^α], ε(α) = ln A_α/(α − 1),
//! independent of both series used by the crate (cf. dp_accounting's mpmath test).

// The reference digits are printed by mpmath to 17 significant figures on purpose.
#![allow(clippy::excessive_precision)]

use dp_accounting::rdp::rdp_poisson_gaussian;

const MPMATH: [(f64, f64, f64, f64); 12] = [
    (1e-6, 1.0, 2.0, 1.7182818284575688e-12),
    (1e-6, 0.5, 7.5, 0.00033910705185997188),
    (1e-4, 0.5, 3.3, 1.0352835816832366e-6),
    (1e-4, 10.0, 32.0, 1.6080753756715065e-9),
    (1e-2, 1.0, 1.5, 0.00012725374332744984),
    (1e-2, 0.3, 12.0, 61.642844645588754),
    (5e-2, 2.0, 10.9, 0.0044835821985611217),
    (0.3, 0.7, 2.5, 0.83272233646492605),
    (0.5, 1.0, 1.1, 0.15613047568549298),
    (0.9, 3.0, 5.0, 0.23343013064491406),
    (0.999, 1.0, 20.0, 9.9989468417600262),
    (0.2, 100.0, 63.0, 0.000126129187894209),
];

#[test]
fn rdp_matches_mpmath_quadrature() {
    for (q, s, a, want) in MPMATH {
        let got = rdp_poisson_gaussian(q, s, a).unwrap();
        let rel = ((got - want) / want).abs();
        assert!(
            rel < 1e-7,
            "q={q} σ={s} α={a}: {got:e} vs {want:e} (rel {rel:e})"
        );
    }
}
