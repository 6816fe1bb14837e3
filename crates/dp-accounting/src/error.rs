//! Typed errors for every way an accounting request can be malformed or fail numerically.
//!
//! Accountants that panic or silently return `inf`/`NaN` at edge parameters have shipped
//! privacy bugs (tensorflow/privacy#166, microsoft/prv_accountant#17); every failure here is a
//! value the caller can match on instead.

use thiserror::Error;

/// Everything that can go wrong while recording events or converting them to (ε, δ).
#[derive(Debug, Clone, PartialEq, Error)]
pub enum AccountingError {
    /// Poisson sampling rate outside (0, 1] or not finite.
    #[error("sampling rate q = {0} must be finite and in (0, 1]")]
    InvalidSamplingRate(f64),
    /// Noise multiplier σ ≤ 0 or not finite.
    #[error("noise multiplier σ = {0} must be finite and > 0")]
    InvalidNoiseMultiplier(f64),
    /// δ outside the open interval (0, 1).
    #[error("δ = {0} must be finite and in (0, 1)")]
    InvalidDelta(f64),
    /// ε negative or not finite.
    #[error("ε = {0} must be finite and ≥ 0")]
    InvalidEpsilon(f64),
    /// A query was made before any event was composed.
    #[error("no privacy event has been composed yet")]
    EmptyHistory,
    /// The step count is zero where at least one step is required.
    #[error("number of steps must be at least 1")]
    InvalidSteps,
    /// The RDP order grid is empty or contains an order that is not finite and > 1.
    #[error("invalid RDP orders: {0}")]
    InvalidOrders(String),
    /// An accountant configuration value (error budget, …) is out of range.
    #[error("invalid accountant configuration: {0}")]
    InvalidConfig(String),
    /// Composition counts overflowed `u64`.
    #[error("composition count overflows u64")]
    CountOverflow,
    /// The PRV discretisation would need more grid points than the configured maximum.
    #[error(
        "PRV grid needs {needed} points, more than the maximum {max}; raise eps_error or use RDP"
    )]
    DomainTooLarge {
        /// Points the requested error budget needs.
        needed: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A numerical procedure failed (series did not converge, PRV mean shift too large, …).
    #[error("numerical failure: {0}")]
    Numerical(String),
    /// Noise calibration or step search could not meet the request.
    #[error("calibration failed: {0}")]
    CalibrationFailed(String),
    /// The accountant cannot interpret this event (see [`crate::Accountant::supports`]); it was
    /// not composed. Refusing is the only safe answer: an accountant that guessed would report
    /// an ε that certifies nothing.
    #[error("the accountant cannot interpret event {0}")]
    UnsupportedEvent(String),
    /// A mechanism description is malformed (for instance no queries at all).
    #[error("invalid mechanism: {0}")]
    InvalidMechanism(String),
}

/// Checks δ ∈ (0, 1).
pub(crate) fn check_delta(delta: f64) -> Result<(), AccountingError> {
    if delta.is_finite() && delta > 0.0 && delta < 1.0 {
        Ok(())
    } else {
        Err(AccountingError::InvalidDelta(delta))
    }
}

/// Checks ε ≥ 0 and finite.
pub(crate) fn check_epsilon(epsilon: f64) -> Result<(), AccountingError> {
    if epsilon.is_finite() && epsilon >= 0.0 {
        Ok(())
    } else {
        Err(AccountingError::InvalidEpsilon(epsilon))
    }
}

/// Checks q ∈ (0, 1].
pub(crate) fn check_sampling_rate(q: f64) -> Result<(), AccountingError> {
    if q.is_finite() && q > 0.0 && q <= 1.0 {
        Ok(())
    } else {
        Err(AccountingError::InvalidSamplingRate(q))
    }
}

/// Checks σ > 0 and finite.
pub(crate) fn check_noise_multiplier(sigma: f64) -> Result<(), AccountingError> {
    if sigma.is_finite() && sigma > 0.0 {
        Ok(())
    } else {
        Err(AccountingError::InvalidNoiseMultiplier(sigma))
    }
}
