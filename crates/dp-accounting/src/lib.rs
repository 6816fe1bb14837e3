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
//! [`calibrate_noise_multiplier`] finds the smallest σ meeting a target ε, and [`max_steps`]
//! the number of steps a budget allows. Both accountants serialise (configuration + history)
//! so a checkpoint can carry them.
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
pub mod calibration;
pub mod error;
pub mod event;
pub mod prv;
pub mod rdp;
pub mod rdp_accountant;
pub mod rdp_conversion;
pub mod special;

pub use accountant::{Accountant, AccountantKind};
pub use calibration::{calibrate_noise_multiplier, max_steps, steps_for_epochs};
pub use error::AccountingError;
pub use event::DpEvent;
pub use prv::{PrvAccountant, PrvDelta, PrvEpsilon};
pub use rdp_accountant::RdpAccountant;
pub use rdp_conversion::{Conversion, DeltaReport, EpsilonReport};
