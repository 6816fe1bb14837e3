//! AnyAccountant: selection by kind, the checkpoint format, and `fresh`.

use dp_accounting::{
    Accountant, AccountantKind, AnyAccountant, Conversion, DpEvent, PrvAccountant, RdpAccountant,
};

#[test]
fn serde_format_is_externally_tagged() {
    let step = DpEvent::poisson_gaussian(0.01, 1.0).unwrap().repeated(100);
    for kind in [AccountantKind::Rdp, AccountantKind::Prv] {
        let mut a = AnyAccountant::new(kind);
        a.compose(&step).unwrap();
        let v = serde_json::to_value(&a).unwrap();
        let tag = match kind {
            AccountantKind::Rdp => "Rdp",
            AccountantKind::Prv => "Prv",
        };
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 1);
        assert!(obj.contains_key(tag), "{v}");
        let back: AnyAccountant = serde_json::from_value(v).unwrap();
        assert_eq!(back.kind(), kind);
        assert_eq!(back.history(), a.history());
        assert_eq!(back.epsilon(1e-5).unwrap(), a.epsilon(1e-5).unwrap());
    }
    // A checkpoint written by hand in the old format (an inner accountant under its tag) loads.
    let inner =
        serde_json::to_value(RdpAccountant::new().with_conversion(Conversion::Classic)).unwrap();
    let old = serde_json::json!({ "Rdp": inner });
    let a: AnyAccountant = serde_json::from_value(old).unwrap();
    match a {
        AnyAccountant::Rdp(r) => assert_eq!(r.conversion(), Conversion::Classic),
        AnyAccountant::Prv(_) => panic!("wrong variant"),
    }
}

#[test]
fn fresh_keeps_kind_and_configuration() {
    let step = DpEvent::gaussian(2.0).unwrap();
    let mut a = AnyAccountant::from(PrvAccountant::new().with_eps_error(0.05));
    a.compose(&step).unwrap();
    let f = a.fresh();
    assert!(f.history().is_empty());
    match &f {
        AnyAccountant::Prv(p) => assert_eq!(p.eps_error(), 0.05),
        AnyAccountant::Rdp(_) => panic!("wrong variant"),
    }
    assert_eq!(
        (f.kind(), f.name(), f.epsilon_is_cheap()),
        (AccountantKind::Prv, "prv", false)
    );
    let r = AnyAccountant::new(AccountantKind::Rdp);
    assert_eq!((r.name(), r.epsilon_is_cheap()), ("rdp", true));
    assert_eq!(AnyAccountant::default().kind(), AccountantKind::default());
    // A fresh RDP accountant composes to the same ε as a new one.
    let mut x = AnyAccountant::from(RdpAccountant::new().with_orders(vec![2.0, 8.0, 32.0]));
    x.compose(&step.clone().repeated(7)).unwrap();
    let mut y = x.fresh();
    y.compose(&step).unwrap();
    let mut z = AnyAccountant::from(RdpAccountant::new().with_orders(vec![2.0, 8.0, 32.0]));
    z.compose(&step).unwrap();
    assert_eq!(y.epsilon(1e-5).unwrap(), z.epsilon(1e-5).unwrap());
}
