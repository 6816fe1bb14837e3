//! The built-in accountants behind one serialisable type, selected by name at run time.
//!
//! This module and [`AccountantKind`] are the only places that list the built-in
//! accountants. Everything else (calibration, the budget guard) is generic over
//! [`Accountant`], so adding an accountant is one type implementing the trait, plus a variant
//! here only if it should be selectable by name from a CLI or config file.

use serde::{Deserialize, Serialize};

use crate::accountant::Accountant;
use crate::error::AccountingError;
use crate::event::DpEvent;
use crate::prv::PrvAccountant;
use crate::rdp_accountant::RdpAccountant;

/// Selects a built-in accountant in CLIs, configs and the kind-based calibration helpers.
///
/// ```
/// use dp_accounting::AccountantKind;
/// assert_eq!("PRV".parse::<AccountantKind>(), Ok(AccountantKind::Prv));
/// assert!("gdp".parse::<AccountantKind>().is_err());
/// assert_eq!(AccountantKind::Rdp.to_string(), "rdp");
/// assert_eq!(AccountantKind::default(), AccountantKind::Rdp);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum AccountantKind {
    /// [`crate::RdpAccountant`] with the Balle et al. conversion.
    #[default]
    Rdp,
    /// [`crate::PrvAccountant`] (certified upper bound).
    Prv,
}

impl std::str::FromStr for AccountantKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "rdp" => Ok(AccountantKind::Rdp),
            "prv" => Ok(AccountantKind::Prv),
            other => Err(format!(
                "unknown accountant '{other}' (expected 'rdp' or 'prv')"
            )),
        }
    }
}

impl std::fmt::Display for AccountantKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AccountantKind::Rdp => "rdp",
            AccountantKind::Prv => "prv",
        })
    }
}

/// Either built-in accountant, chosen at run time and stored in checkpoints.
///
/// The serialised form is serde's default externally tagged enum (`{"Rdp": {...}}`), the
/// format checkpoints written before this type moved here already use.
///
/// ```
/// use dp_accounting::{Accountant, AccountantKind, AnyAccountant, DpEvent};
/// let mut a = AnyAccountant::new(AccountantKind::Rdp);
/// a.compose(&DpEvent::poisson_gaussian(0.01, 1.0).unwrap().repeated(100)).unwrap();
/// assert!(a.epsilon(1e-5).unwrap() > 0.0);
/// assert_eq!((a.kind(), a.name()), (AccountantKind::Rdp, "rdp"));
/// assert!(!AnyAccountant::new(AccountantKind::Prv).epsilon_is_cheap());
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AnyAccountant {
    /// Rényi DP (Balle et al. 2020 conversion unless configured otherwise).
    Rdp(RdpAccountant),
    /// Privacy-loss random variable (certified upper bound).
    Prv(PrvAccountant),
}

/// Forwards a method call to whichever accountant `self` holds.
macro_rules! forward {
    ($self:expr, $a:ident => $call:expr) => {
        match $self {
            AnyAccountant::Rdp($a) => $call,
            AnyAccountant::Prv($a) => $call,
        }
    };
}

impl AnyAccountant {
    /// A fresh accountant of the given kind, with its default configuration.
    ///
    /// ```
    /// use dp_accounting::{Accountant, AccountantKind, AnyAccountant};
    /// let a = AnyAccountant::new(AccountantKind::Prv);
    /// assert!(a.history().is_empty() && matches!(a, AnyAccountant::Prv(_)));
    /// ```
    pub fn new(kind: AccountantKind) -> Self {
        match kind {
            AccountantKind::Rdp => AnyAccountant::Rdp(RdpAccountant::new()),
            AccountantKind::Prv => AnyAccountant::Prv(PrvAccountant::new()),
        }
    }

    /// Which built-in accountant this is (for selection and records; generic code asks
    /// [`Accountant::supports`] and [`Accountant::epsilon_is_cheap`] instead).
    ///
    /// ```
    /// use dp_accounting::{AccountantKind, AnyAccountant, PrvAccountant};
    /// assert_eq!(AnyAccountant::from(PrvAccountant::new()).kind(), AccountantKind::Prv);
    /// ```
    pub fn kind(&self) -> AccountantKind {
        match self {
            AnyAccountant::Rdp(_) => AccountantKind::Rdp,
            AnyAccountant::Prv(_) => AccountantKind::Prv,
        }
    }
}

impl Default for AnyAccountant {
    fn default() -> Self {
        AnyAccountant::new(AccountantKind::default())
    }
}

impl From<RdpAccountant> for AnyAccountant {
    fn from(a: RdpAccountant) -> Self {
        AnyAccountant::Rdp(a)
    }
}

impl From<PrvAccountant> for AnyAccountant {
    fn from(a: PrvAccountant) -> Self {
        AnyAccountant::Prv(a)
    }
}

impl Accountant for AnyAccountant {
    fn compose(&mut self, event: &DpEvent) -> Result<(), AccountingError> {
        forward!(self, a => a.compose(event))
    }
    fn epsilon(&self, delta: f64) -> Result<f64, AccountingError> {
        forward!(self, a => a.epsilon(delta))
    }
    fn delta(&self, epsilon: f64) -> Result<f64, AccountingError> {
        forward!(self, a => a.delta(epsilon))
    }
    fn history(&self) -> &[DpEvent] {
        forward!(self, a => a.history())
    }
    fn supports(&self, event: &DpEvent) -> bool {
        forward!(self, a => a.supports(event))
    }
    fn fresh(&self) -> Self {
        forward!(self, a => a.fresh().into())
    }
    fn name(&self) -> &'static str {
        forward!(self, a => a.name())
    }
    fn epsilon_is_cheap(&self) -> bool {
        forward!(self, a => a.epsilon_is_cheap())
    }
}
