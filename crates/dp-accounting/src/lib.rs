//! Privacy accountants for differentially private training, without any ML framework.
//!
//! A training run records *what happened* as [`DpEvent`]s — Poisson-subsampled Gaussian steps,
//! plain Gaussian releases, their repetitions and compositions — and an [`Accountant`] says
//! *what it means* as an (ε, δ) guarantee. Two accountants are provided:
//!
//! * [`RdpAccountant`]: Rényi DP of the subsampled Gaussian (Mironov, Talwar & Zhang 2019),
//!   converted with the improved bound of Balle et al. 2020 (Theorem 21) or the classic one
//!   (Mironov 2017). Fast and simple; slightly loose.
//! * [`PrvAccountant`]: the privacy-loss-random-variable accountant of Gopi, Lee & Wutschitz
//!   2021, which composes the discretised PRV by FFT and reports a lower bound, an estimate
//!   and a certified upper bound on ε. Nearly tight.
//!
//! Everything downstream of the events is generic over [`Accountant`]:
//!
//! * [`calibrate_noise`] finds the smallest noise parameter meeting a target ε and
//!   [`max_count`] the largest count a budget allows, for any accountant factory and any
//!   event factory (in the manner of `calibrate_dp_mechanism` in Google's `dp_accounting`),
//!   so σ schedules ([`schedule_event`]) and steps that release several queries on one sample
//!   ([`combined_noise_multiplier`]) calibrate like a constant σ. [`calibrate_noise_multiplier`]
//!   and [`max_steps`] are the constant-σ DP-SGD shortcuts.
//! * [`BudgetGuard`] owns an accountant and refuses a step that would exceed a
//!   [`PrivacyBudget`], without an FFT per step for PRV.
//! * [`AnyAccountant`] holds either built-in accountant, selected by [`AccountantKind`] at run
//!   time; it and `AccountantKind` are the only places that list them.
//!
//! All accountants serialise (configuration + history) so a checkpoint can carry them.
//!
//! ```
//! use dp_accounting::{Accountant, DpEvent, PrvAccountant, RdpAccountant};
//! let steps = DpEvent::poisson_gaussian(256.0 / 60000.0, 1.1).unwrap().repeated(14062);
//! let mut rdp = RdpAccountant::new();
//! rdp.compose(&steps).unwrap();
//! let mut prv = PrvAccountant::new();
//! prv.compose(&steps).unwrap();
//! let (e_rdp, e_prv) = (rdp.epsilon(1e-5).unwrap(), prv.epsilon_bounds(1e-5).unwrap());
//! assert!((e_rdp - 2.597).abs() < 2e-3);
//! assert!(e_prv.lower <= 2.39 && 2.39 <= e_prv.upper && e_prv.upper < e_rdp);
//! ```

#![warn(missing_docs)]

pub mod accountant;
pub mod any;
pub mod budget;
pub mod calibration;
pub mod error;
pub mod event;
pub mod mechanisms;
pub mod prv;
pub mod rdp;
pub mod rdp_accountant;
pub mod rdp_conversion;
pub mod special;

pub use accountant::Accountant;
pub use any::{AccountantKind, AnyAccountant};
pub use budget::{BudgetCheck, BudgetGuard, PrivacyBudget};
pub use calibration::{
    calibrate_noise, calibrate_noise_multiplier, max_count, max_steps, steps_for_epochs,
    NoiseSearch,
};
pub use error::AccountingError;
pub use event::DpEvent;
pub use mechanisms::{combined_noise_multiplier, schedule_event};
pub use prv::{PrvAccountant, PrvDelta, PrvEpsilon};
pub use rdp_accountant::RdpAccountant;
pub use rdp_conversion::{Conversion, DeltaReport, EpsilonReport};
