//! The trainer's accountant: RDP or PRV behind one serialisable type.

use dp_accounting::{
    Accountant, AccountantKind, AccountingError, DpEvent, PrvAccountant, RdpAccountant,
};
use serde::{Deserialize, Serialize};

/// Either accountant, chosen at run time and stored in checkpoints.
///
/// ```
/// use dp_optim::AnyAccountant;
/// use dp_accounting::{Accountant, AccountantKind, DpEvent};
/// let mut a = AnyAccountant::new(AccountantKind::Rdp);
/// a.compose(&DpEvent::poisson_gaussian(0.01, 1.0).unwrap().repeated(100)).unwrap();
/// assert!(a.epsilon(1e-5).unwrap() > 0.0);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AnyAccountant {
    /// Rényi DP (Balle et al. 2020 conversion).
    Rdp(RdpAccountant),
    /// Privacy-loss random variable (certified upper bound).
    Prv(PrvAccountant),
}

impl AnyAccountant {
    /// A fresh accountant of the given kind.
    pub fn new(kind: AccountantKind) -> Self {
        match kind {
            AccountantKind::Rdp => AnyAccountant::Rdp(RdpAccountant::new()),
            AccountantKind::Prv => AnyAccountant::Prv(PrvAccountant::new()),
        }
    }
}

impl Accountant for AnyAccountant {
    fn compose(&mut self, event: &DpEvent) -> Result<(), AccountingError> {
        match self {
            AnyAccountant::Rdp(a) => a.compose(event),
            AnyAccountant::Prv(a) => a.compose(event),
        }
    }
    fn epsilon(&self, delta: f64) -> Result<f64, AccountingError> {
        match self {
            AnyAccountant::Rdp(a) => a.epsilon(delta),
            AnyAccountant::Prv(a) => a.epsilon(delta),
        }
    }
    fn delta(&self, epsilon: f64) -> Result<f64, AccountingError> {
        match self {
            AnyAccountant::Rdp(a) => a.delta(epsilon),
            AnyAccountant::Prv(a) => a.delta(epsilon),
        }
    }
    fn history(&self) -> &[DpEvent] {
        match self {
            AnyAccountant::Rdp(a) => a.history(),
            AnyAccountant::Prv(a) => a.history(),
        }
    }
    fn kind(&self) -> AccountantKind {
        match self {
            AnyAccountant::Rdp(a) => a.kind(),
            AnyAccountant::Prv(a) => a.kind(),
        }
    }
}
