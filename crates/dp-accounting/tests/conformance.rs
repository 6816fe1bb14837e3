//! A conformance suite every accountant must pass (after dp_accounting's
//! `privacy_accountant_test.py` base class), run here for RDP and PRV.

use dp_accounting::{Accountant, AccountingError, DpEvent, PrvAccountant, RdpAccountant};
use serde::{de::DeserializeOwned, Serialize};

fn step(q: f64, s: f64) -> DpEvent {
    DpEvent::poisson_gaussian(q, s).unwrap()
}

fn conformance<A>(make: impl Fn() -> A)
where
    A: Accountant + Serialize + DeserializeOwned + std::fmt::Debug + 'static,
{
    // Empty history is an error, not ε = 0 or a panic.
    let empty = make();
    assert_eq!(empty.epsilon(1e-5), Err(AccountingError::EmptyHistory));
    assert_eq!(empty.delta(1.0), Err(AccountingError::EmptyHistory));
    assert!(empty.history().is_empty());

    let mut acc = make();
    // Invalid events are rejected and leave the accountant unchanged.
    for bad in [
        DpEvent::PoissonSampledGaussian {
            sampling_rate: 0.0,
            noise_multiplier: 1.0,
        },
        DpEvent::PoissonSampledGaussian {
            sampling_rate: 1.1,
            noise_multiplier: 1.0,
        },
        DpEvent::PoissonSampledGaussian {
            sampling_rate: 0.1,
            noise_multiplier: 0.0,
        },
        DpEvent::Gaussian {
            noise_multiplier: f64::NAN,
        },
        DpEvent::Composed(vec![
            step(0.1, 1.0),
            DpEvent::Gaussian {
                noise_multiplier: -1.0,
            },
        ]),
    ] {
        assert!(acc.compose(&bad).is_err(), "{bad:?}");
        assert!(acc.history().is_empty());
    }
    // Zero-count events are no-ops.
    acc.compose(&step(0.1, 1.0).repeated(0)).unwrap();
    acc.compose(&DpEvent::Composed(vec![])).unwrap();
    assert!(acc.history().is_empty());

    // One step at a time equals one repeated event, and the history stays one entry.
    let e = step(0.02, 1.0);
    for _ in 0..200 {
        acc.compose(&e).unwrap();
    }
    assert_eq!(acc.history().len(), 1);
    let mut block = make();
    block.compose(&e.clone().repeated(200)).unwrap();
    let (a, b) = (acc.epsilon(1e-5).unwrap(), block.epsilon(1e-5).unwrap());
    assert!((a - b).abs() <= 1e-9 * b, "{a} vs {b}");

    // Invalid queries.
    for d in [0.0, 1.0, -1e-5, f64::NAN, 2.0] {
        assert!(
            matches!(acc.epsilon(d), Err(AccountingError::InvalidDelta(_))),
            "δ = {d}"
        );
    }
    assert!(matches!(
        acc.delta(-0.5),
        Err(AccountingError::InvalidEpsilon(_))
    ));
    assert!(acc.delta(f64::INFINITY).is_err());

    // ε decreases in δ, δ decreases in ε, and the two are inverse within tolerance.
    let e3 = acc.epsilon(1e-3).unwrap();
    let e6 = acc.epsilon(1e-6).unwrap();
    assert!(e3 < e6, "{e3} {e6}");
    assert!(acc.delta(0.5).unwrap() >= acc.delta(1.0).unwrap());
    let back = acc.delta(e6).unwrap();
    assert!((back - 1e-6).abs() < 0.02e-6 + 1e-9, "δ(ε(1e-6)) = {back}");

    // Composing more never lowers ε; clones are independent.
    let before = acc.epsilon(1e-5).unwrap();
    let mut more = acc.clone();
    more.compose(&step(0.05, 2.0).repeated(10)).unwrap();
    assert!(more.epsilon(1e-5).unwrap() > before);
    assert_eq!(acc.epsilon(1e-5).unwrap(), before);
    assert_eq!(acc.history().len(), 1);
    assert_eq!(more.history().len(), 2);

    // Composed([a, b]) equals composing a then b, in any order.
    let (x, y) = (
        step(0.01, 0.9).repeated(30),
        DpEvent::gaussian(8.0).unwrap(),
    );
    let mut seq = make();
    seq.compose(&x).unwrap();
    seq.compose(&y).unwrap();
    let mut comp = make();
    comp.compose(&DpEvent::Composed(vec![y.clone(), x.clone()]))
        .unwrap();
    let (s1, s2) = (seq.epsilon(1e-5).unwrap(), comp.epsilon(1e-5).unwrap());
    assert!((s1 - s2).abs() <= 1e-9 * s1, "{s1} vs {s2}");

    // Serde round trip: same history, same answers, and the restored accountant continues.
    let json = serde_json::to_string(&more).unwrap();
    let mut restored: A = serde_json::from_str(&json).unwrap();
    assert_eq!(restored.history(), more.history());
    let (r, m) = (restored.epsilon(1e-5).unwrap(), more.epsilon(1e-5).unwrap());
    assert!((r - m).abs() <= 1e-9 * m);
    restored.compose(&e).unwrap();
    more.compose(&e).unwrap();
    let (r, m) = (restored.epsilon(1e-5).unwrap(), more.epsilon(1e-5).unwrap());
    assert!((r - m).abs() <= 1e-9 * m);

    // Accountants are Send: usable from another thread.
    let moved = acc.clone();
    let h = std::thread::spawn(move || moved.epsilon(1e-5).unwrap());
    assert_eq!(h.join().unwrap(), before);
}

#[test]
fn rdp_conforms() {
    conformance(RdpAccountant::new);
}

#[test]
fn prv_conforms() {
    conformance(PrvAccountant::new);
}

#[test]
fn corrupt_checkpoint_is_an_error() {
    let bad = r#"{"orders":[2.0],"conversion":"Balle","history":[{"Gaussian":{"noise_multiplier":-1.0}}]}"#;
    assert!(serde_json::from_str::<RdpAccountant>(bad).is_err());
    let bad_orders = r#"{"orders":[0.5],"conversion":"Balle","history":[]}"#;
    assert!(serde_json::from_str::<RdpAccountant>(bad_orders).is_err());
}
