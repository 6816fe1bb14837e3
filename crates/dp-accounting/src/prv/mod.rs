//! The PRV accountant of Gopi, Lee & Wutschitz (2021), "Numerical Composition of Differential
//! Privacy".
//!
//! Each mechanism's privacy loss random variable is discretised on a common mesh, the
//! composition is a convolution computed by FFT, and (ε, δ) is read off the composed
//! distribution. Their Theorem 5.5 bounds the discretisation and truncation error by an
//! additive `eps_error` in ε and `delta_error` in δ, which yields a certified upper bound and a
//! lower bound around the estimate.

mod compose;
mod discretise;
mod grid;

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::accountant::{gaussian_only, unsupported, Accountant};
use crate::error::{check_delta, check_epsilon, AccountingError};
use crate::event::{push_merged, DpEvent, GaussianBlock};
use compose::{compose_blocks, ComposedPrv};

/// Default additive ε error budget (Opacus and Gopi et al. use 0.01).
pub const DEFAULT_EPS_ERROR: f64 = 0.01;
/// δ error budget used for `delta(ε)` queries when none is configured (for `epsilon(δ)` the
/// default is δ/1000).
pub const DEFAULT_DELTA_ERROR_FOR_DELTA_QUERIES: f64 = 1e-9;
/// Default cap on grid points (2^24 ≈ 16.8 M, about 270 MB of complex buffers).
pub const DEFAULT_MAX_POINTS: usize = 1 << 24;

/// ε bounds reported by the PRV accountant at a fixed δ.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrvEpsilon {
    /// ε(δ + δ_err) − ε_err: the true ε is at least this.
    pub lower: f64,
    /// ε of the discretised composition at δ.
    pub estimate: f64,
    /// ε(δ − δ_err) + ε_err: a certified (ε, δ) guarantee.
    pub upper: f64,
}

/// δ bounds reported by the PRV accountant at a fixed ε.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrvDelta {
    /// δ(ε + ε_err) − δ_err.
    pub lower: f64,
    /// δ of the discretised composition at ε.
    pub estimate: f64,
    /// δ(ε − ε_err) + δ_err: a certified (ε, δ) guarantee.
    pub upper: f64,
}

type CacheKey = (u64, u64);

/// Composed distribution for the current history, shared by clones until one of them composes.
#[derive(Debug, Default)]
struct Cache(Mutex<Option<(CacheKey, Arc<ComposedPrv>)>>);

/// Privacy-loss-random-variable accountant (Gopi, Lee & Wutschitz 2021).
///
/// `compose` only records events (merging repeats); the FFT composition is computed lazily on
/// the first query and cached for that (ε_err, δ_err). The serialised state is the
/// configuration and the history.
///
/// ```
/// use dp_accounting::{Accountant, DpEvent, PrvAccountant};
/// let mut acc = PrvAccountant::new();
/// acc.compose(&DpEvent::poisson_gaussian(256.0 / 60000.0, 1.1).unwrap().repeated(14062)).unwrap();
/// let b = acc.epsilon_bounds(1e-5).unwrap();
/// assert!(b.lower < b.estimate && b.estimate < b.upper && b.upper - b.lower < 0.03);
/// assert!((b.estimate - 2.39).abs() < 0.01);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrvAccountant {
    eps_error: f64,
    delta_error: Option<f64>,
    #[serde(default = "default_max_points")]
    max_points: usize,
    history: Vec<DpEvent>,
    #[serde(skip)]
    cache: Arc<Cache>,
}

fn default_max_points() -> usize {
    DEFAULT_MAX_POINTS
}

impl Default for PrvAccountant {
    fn default() -> Self {
        Self::new()
    }
}

impl PrvAccountant {
    /// Empty accountant with ε_err = 0.01 and δ_err = δ/1000.
    ///
    /// ```
    /// use dp_accounting::{Accountant, PrvAccountant};
    /// assert!(PrvAccountant::new().history().is_empty());
    /// ```
    pub fn new() -> Self {
        PrvAccountant {
            eps_error: DEFAULT_EPS_ERROR,
            delta_error: None,
            max_points: DEFAULT_MAX_POINTS,
            history: Vec::new(),
            cache: Arc::new(Cache::default()),
        }
    }

    /// Sets the additive ε error budget (> 0). Smaller budgets need finer meshes (∝ 1/ε_err).
    ///
    /// ```
    /// use dp_accounting::{Accountant, DpEvent, PrvAccountant};
    /// let mut acc = PrvAccountant::new().with_eps_error(0.05);
    /// acc.compose(&DpEvent::gaussian(2.0).unwrap()).unwrap();
    /// let b = acc.epsilon_bounds(1e-5).unwrap();
    /// assert!(b.upper - b.estimate <= 0.05 + 1e-3);
    /// ```
    pub fn with_eps_error(mut self, eps_error: f64) -> Self {
        self.eps_error = eps_error;
        self.cache = Arc::new(Cache::default());
        self
    }

    /// Sets a fixed additive δ error budget (> 0, below the δ queried) instead of δ/1000.
    ///
    /// ```
    /// use dp_accounting::{Accountant, DpEvent, PrvAccountant};
    /// let mut acc = PrvAccountant::new().with_delta_error(1e-10);
    /// acc.compose(&DpEvent::gaussian(2.0).unwrap()).unwrap();
    /// assert!(acc.epsilon(1e-5).is_ok());
    /// ```
    pub fn with_delta_error(mut self, delta_error: f64) -> Self {
        self.delta_error = Some(delta_error);
        self.cache = Arc::new(Cache::default());
        self
    }

    /// Caps the number of grid points (memory guard); larger problems return
    /// [`AccountingError::DomainTooLarge`].
    ///
    /// ```
    /// use dp_accounting::{Accountant, AccountingError, DpEvent, PrvAccountant};
    /// let mut acc = PrvAccountant::new().with_max_points(1000);
    /// acc.compose(&DpEvent::poisson_gaussian(0.01, 1.0).unwrap().repeated(1000)).unwrap();
    /// assert!(matches!(acc.epsilon(1e-5), Err(AccountingError::DomainTooLarge { .. })));
    /// ```
    pub fn with_max_points(mut self, max_points: usize) -> Self {
        self.max_points = max_points;
        self.cache = Arc::new(Cache::default());
        self
    }

    /// The ε error budget.
    ///
    /// ```
    /// assert_eq!(dp_accounting::PrvAccountant::new().eps_error(), 0.01);
    /// ```
    pub fn eps_error(&self) -> f64 {
        self.eps_error
    }

    /// Lower bound, estimate and certified upper bound on ε at `delta`.
    ///
    /// ```
    /// use dp_accounting::{Accountant, DpEvent, PrvAccountant};
    /// use dp_accounting::special::analytic_gaussian_delta;
    /// let mut acc = PrvAccountant::new();
    /// acc.compose(&DpEvent::gaussian(1.0).unwrap()).unwrap();
    /// let b = acc.epsilon_bounds(1e-5).unwrap();
    /// // The exact Gaussian curve passes between the bounds.
    /// assert!(analytic_gaussian_delta(1.0, b.upper) <= 1e-5);
    /// assert!(analytic_gaussian_delta(1.0, b.lower) >= 1e-5);
    /// ```
    pub fn epsilon_bounds(&self, delta: f64) -> Result<PrvEpsilon, AccountingError> {
        check_delta(delta)?;
        let delta_error = self.delta_error.unwrap_or(delta / 1000.0);
        if !(delta_error > 0.0 && delta_error < delta) {
            return Err(AccountingError::InvalidConfig(format!(
                "delta_error {delta_error} must be in (0, δ = {delta})"
            )));
        }
        let c = self.composed(delta_error)?;
        let lower = (c.epsilon_at(delta + delta_error)? - self.eps_error).max(0.0);
        let estimate = c.epsilon_at(delta)?;
        let upper = c.epsilon_at(delta - delta_error)? + self.eps_error;
        Ok(PrvEpsilon {
            lower,
            estimate,
            upper,
        })
    }

    /// Lower bound, estimate and certified upper bound on δ at `epsilon`.
    ///
    /// ```
    /// use dp_accounting::{Accountant, DpEvent, PrvAccountant};
    /// use dp_accounting::special::analytic_gaussian_delta;
    /// let mut acc = PrvAccountant::new();
    /// acc.compose(&DpEvent::gaussian(1.0).unwrap()).unwrap();
    /// let b = acc.delta_bounds(3.0).unwrap();
    /// let exact = analytic_gaussian_delta(1.0, 3.0);
    /// assert!(b.lower <= exact && exact <= b.upper);
    /// ```
    pub fn delta_bounds(&self, epsilon: f64) -> Result<PrvDelta, AccountingError> {
        check_epsilon(epsilon)?;
        let delta_error = self
            .delta_error
            .unwrap_or(DEFAULT_DELTA_ERROR_FOR_DELTA_QUERIES);
        if !(delta_error > 0.0 && delta_error < 1.0) {
            return Err(AccountingError::InvalidConfig(format!(
                "delta_error {delta_error} must be in (0, 1)"
            )));
        }
        let c = self.composed(delta_error)?;
        Ok(PrvDelta {
            lower: (c.delta_at(epsilon + self.eps_error) - delta_error).max(0.0),
            estimate: c.delta_at(epsilon),
            upper: (c.delta_at(epsilon - self.eps_error) + delta_error).min(1.0),
        })
    }

    fn blocks(&self) -> Result<Vec<GaussianBlock>, AccountingError> {
        DpEvent::Composed(self.history.clone()).gaussian_blocks()
    }

    fn composed(&self, delta_error: f64) -> Result<Arc<ComposedPrv>, AccountingError> {
        if !(self.eps_error.is_finite() && self.eps_error > 0.0) {
            return Err(AccountingError::InvalidConfig(format!(
                "eps_error {} must be > 0",
                self.eps_error
            )));
        }
        if self.history.is_empty() {
            return Err(AccountingError::EmptyHistory);
        }
        let key = (self.eps_error.to_bits(), delta_error.to_bits());
        if let Ok(guard) = self.cache.0.lock() {
            if let Some((k, c)) = guard.as_ref() {
                if *k == key {
                    return Ok(Arc::clone(c));
                }
            }
        }
        let blocks = self.blocks()?;
        let c = Arc::new(compose_blocks(
            &blocks,
            self.eps_error,
            delta_error,
            self.max_points,
        )?);
        if let Ok(mut guard) = self.cache.0.lock() {
            *guard = Some((key, Arc::clone(&c)));
        }
        Ok(c)
    }
}

impl Accountant for PrvAccountant {
    fn compose(&mut self, event: &DpEvent) -> Result<(), AccountingError> {
        if !self.supports(event) {
            return Err(unsupported(self.name(), event));
        }
        event.validate()?;
        push_merged(&mut self.history, event)?;
        if event.total_count() > 0 {
            // New history: stop sharing the old composed distribution (clones keep theirs).
            self.cache = Arc::new(Cache::default());
        }
        Ok(())
    }

    /// Certified upper bound on ε (see [`PrvAccountant::epsilon_bounds`]).
    fn epsilon(&self, delta: f64) -> Result<f64, AccountingError> {
        Ok(self.epsilon_bounds(delta)?.upper)
    }

    /// Certified upper bound on δ (see [`PrvAccountant::delta_bounds`]).
    fn delta(&self, epsilon: f64) -> Result<f64, AccountingError> {
        Ok(self.delta_bounds(epsilon)?.upper)
    }

    fn history(&self) -> &[DpEvent] {
        &self.history
    }

    /// The subsampled and plain Gaussian, in any nesting: the only PRVs discretised here
    /// (Gopi et al. 2021 compose any PRV; a new mechanism needs its CDF and mean first).
    fn supports(&self, event: &DpEvent) -> bool {
        gaussian_only(event)
    }

    /// Same error budgets and grid cap, empty history and cache.
    ///
    /// ```
    /// use dp_accounting::{Accountant, DpEvent, PrvAccountant};
    /// let mut a = PrvAccountant::new().with_eps_error(0.05);
    /// a.compose(&DpEvent::gaussian(1.0).unwrap()).unwrap();
    /// let f = a.fresh();
    /// assert!(f.history().is_empty() && f.eps_error() == 0.05);
    /// ```
    fn fresh(&self) -> Self {
        PrvAccountant {
            eps_error: self.eps_error,
            delta_error: self.delta_error,
            max_points: self.max_points,
            history: Vec::new(),
            cache: Arc::new(Cache::default()),
        }
    }

    fn name(&self) -> &'static str {
        "prv"
    }

    /// `false`: the first query after a compose runs an FFT composition of the whole
    /// history (tens of milliseconds for 10⁴ steps).
    fn epsilon_is_cheap(&self) -> bool {
        false
    }
}
