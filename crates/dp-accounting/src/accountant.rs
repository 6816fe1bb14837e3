//! The one trait every accountant implements.
//!
//! The trait is open: calibration ([`crate::calibrate_noise`], [`crate::max_count`]) and the
//! budget guard ([`crate::BudgetGuard`]) are generic over it and never ask *which* accountant
//! they hold, only what it [`supports`](Accountant::supports) and whether its ε is
//! [cheap](Accountant::epsilon_is_cheap). A new accountant is one type implementing this
//! trait; [`crate::AnyAccountant`] is only needed to select one by name at run time.

use crate::error::AccountingError;
use crate::event::DpEvent;

pub use crate::any::AccountantKind;

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
/// assert!(acc.supports(&step) && acc.fresh().history().is_empty());
/// ```
pub trait Accountant: Clone + Send {
    /// Records `event` (validated first; on error the accountant is unchanged). An event the
    /// accountant does not [`supports`](Accountant::supports) is refused with
    /// [`AccountingError::UnsupportedEvent`].
    fn compose(&mut self, event: &DpEvent) -> Result<(), AccountingError>;
    /// Smallest ε this accountant can certify at `delta`.
    fn epsilon(&self, delta: f64) -> Result<f64, AccountingError>;
    /// Smallest δ this accountant can certify at `epsilon`.
    fn delta(&self, epsilon: f64) -> Result<f64, AccountingError>;
    /// Events composed so far (consecutive repeats merged into one `SelfComposed`).
    fn history(&self) -> &[DpEvent];
    /// Whether this accountant can interpret `event`, including every event nested in
    /// `SelfComposed` and `Composed`. Asked before composing, so that a mechanism an
    /// accountant has no analysis for is refused instead of mis-accounted; parameters are not
    /// checked here (that is [`DpEvent::validate`]).
    fn supports(&self, event: &DpEvent) -> bool;
    /// The same configuration with an empty history: a factory built from a prototype, so
    /// generic searches can make as many fresh accountants as they probe.
    fn fresh(&self) -> Self;
    /// A short name ("rdp", "prv") for logs and records. Never dispatch on it: ask
    /// [`supports`](Accountant::supports) or [`epsilon_is_cheap`](Accountant::epsilon_is_cheap).
    fn name(&self) -> &'static str;
    /// Whether an ε query is cheap enough to make every step. PRV answers `false` (each
    /// query after a compose runs an FFT composition), which tells callers to report ε at
    /// epoch ends only and that caching a step limit pays.
    fn epsilon_is_cheap(&self) -> bool {
        true
    }
}

/// The elementary events every built-in accountant has an analysis for: the Poisson-subsampled
/// Gaussian and the plain Gaussian, nested in any repetitions and compositions. An elementary
/// event the analyses do not cover (a future variant) is refused.
pub(crate) fn gaussian_only(event: &DpEvent) -> bool {
    event.all_elementary(&|e| {
        matches!(
            e,
            DpEvent::PoissonSampledGaussian { .. } | DpEvent::Gaussian { .. }
        )
    })
}

/// The error for an event `acc` does not support.
pub(crate) fn unsupported(name: &str, event: &DpEvent) -> AccountingError {
    AccountingError::UnsupportedEvent(format!("{event:?} (accountant '{name}')"))
}
