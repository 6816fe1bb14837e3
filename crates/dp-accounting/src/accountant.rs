//! The one trait every accountant implements.

use serde::{Deserialize, Serialize};

use crate::error::AccountingError;
use crate::event::DpEvent;

/// Records [`DpEvent`]s and reports (ε, δ) guarantees for their composition.
///
/// Accountants are cheap to clone, so a trainer can ask "what would ε be after one more step?"
/// on a copy. `epsilon` returns a value that is a valid (upper) bound: for PRV, the certified
/// upper bound of Gopi et al. 2021.
///
/// ```
/// use dp_accounting::{Accountant, DpEvent, RdpAccountant};
/// fn eps_after<A: Accountant>(acc: &A, extra: &DpEvent) -> f64 {
///     let mut next = acc.clone();
///     next.compose(extra).unwrap();
///     next.epsilon(1e-5).unwrap()
/// }
/// let mut acc = RdpAccountant::new();
/// let step = DpEvent::poisson_gaussian(0.01, 1.0).unwrap();
/// acc.compose(&step.clone().repeated(100)).unwrap();
/// assert!(eps_after(&acc, &step) > acc.epsilon(1e-5).unwrap());
/// ```
pub trait Accountant: Clone + Send {
    /// Records `event` (validated first; on error the accountant is unchanged).
    fn compose(&mut self, event: &DpEvent) -> Result<(), AccountingError>;
    /// Smallest ε this accountant can certify at `delta`.
    fn epsilon(&self, delta: f64) -> Result<f64, AccountingError>;
    /// Smallest δ this accountant can certify at `epsilon`.
    fn delta(&self, epsilon: f64) -> Result<f64, AccountingError>;
    /// Events composed so far (consecutive repeats merged into one `SelfComposed`).
    fn history(&self) -> &[DpEvent];
    /// Which kind of accountant this is.
    fn kind(&self) -> AccountantKind;
}

/// Selects an accountant in calibration helpers and CLIs.
///
/// ```
/// use dp_accounting::AccountantKind;
/// assert_eq!("PRV".parse::<AccountantKind>(), Ok(AccountantKind::Prv));
/// assert!("gdp".parse::<AccountantKind>().is_err());
/// assert_eq!(AccountantKind::Rdp.to_string(), "rdp");
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
