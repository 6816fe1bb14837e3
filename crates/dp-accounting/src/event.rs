//! What happened, recorded separately from how it is interpreted.
//!
//! Following Google's `dp_accounting` design, a training run emits [`DpEvent`]s (a
//! Poisson-subsampled Gaussian step, a plain Gaussian release, repetitions and compositions of
//! those) and any [`crate::Accountant`] turns the same history into (ε, δ). Keeping the event
//! separate means a checkpoint can carry the history and a different accountant can re-read it.

use serde::{Deserialize, Serialize};

use crate::error::{check_noise_multiplier, check_sampling_rate, AccountingError};

/// A differentially private operation, described by its parameters only.
///
/// All Gaussian mechanisms have L2 sensitivity 1 under add/remove-one adjacency; the noise
/// standard deviation is `noise_multiplier` times the sensitivity.
///
/// ```
/// use dp_accounting::DpEvent;
/// let step = DpEvent::poisson_gaussian(256.0 / 60000.0, 1.1).unwrap();
/// let run = step.repeated(14062);
/// assert!(run.validate().is_ok());
/// assert_eq!(run.total_count(), 14062);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DpEvent {
    /// One DP-SGD step: each record joins the batch independently with probability
    /// `sampling_rate`, the clipped sum gets N(0, σ²) noise (Mironov, Talwar, Zhang 2019).
    PoissonSampledGaussian {
        /// Poisson inclusion probability q ∈ (0, 1].
        sampling_rate: f64,
        /// Noise multiplier σ > 0.
        noise_multiplier: f64,
    },
    /// A sensitivity-1 Gaussian release without subsampling (the q = 1 case).
    Gaussian {
        /// Noise multiplier σ > 0.
        noise_multiplier: f64,
    },
    /// `event` repeated `count` times (adaptive composition).
    SelfComposed {
        /// The repeated event.
        event: Box<DpEvent>,
        /// Number of repetitions (0 is a no-op).
        count: u64,
    },
    /// Several (possibly different) events composed in sequence.
    Composed(Vec<DpEvent>),
}

/// One homogeneous block of subsampled Gaussian steps: (q, σ, count).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct GaussianBlock {
    pub q: f64,
    pub sigma: f64,
    pub count: u64,
}

impl DpEvent {
    /// A validated Poisson-subsampled Gaussian step.
    ///
    /// ```
    /// use dp_accounting::{AccountingError, DpEvent};
    /// assert!(DpEvent::poisson_gaussian(0.01, 1.0).is_ok());
    /// assert_eq!(
    ///     DpEvent::poisson_gaussian(1.5, 1.0),
    ///     Err(AccountingError::InvalidSamplingRate(1.5))
    /// );
    /// ```
    pub fn poisson_gaussian(
        sampling_rate: f64,
        noise_multiplier: f64,
    ) -> Result<Self, AccountingError> {
        let e = DpEvent::PoissonSampledGaussian {
            sampling_rate,
            noise_multiplier,
        };
        e.validate()?;
        Ok(e)
    }

    /// A validated sensitivity-1 Gaussian release.
    ///
    /// ```
    /// use dp_accounting::DpEvent;
    /// assert!(DpEvent::gaussian(2.0).is_ok());
    /// assert!(DpEvent::gaussian(0.0).is_err());
    /// ```
    pub fn gaussian(noise_multiplier: f64) -> Result<Self, AccountingError> {
        let e = DpEvent::Gaussian { noise_multiplier };
        e.validate()?;
        Ok(e)
    }

    /// This event repeated `count` times.
    ///
    /// ```
    /// use dp_accounting::DpEvent;
    /// let e = DpEvent::gaussian(1.0).unwrap().repeated(3).repeated(2);
    /// assert_eq!(e.total_count(), 6);
    /// ```
    pub fn repeated(self, count: u64) -> Self {
        DpEvent::SelfComposed {
            event: Box::new(self),
            count,
        }
    }

    /// Checks every parameter: q ∈ (0, 1], σ finite and > 0, counts that multiply without
    /// overflow.
    ///
    /// ```
    /// use dp_accounting::DpEvent;
    /// let bad = DpEvent::Gaussian { noise_multiplier: f64::NAN };
    /// assert!(bad.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), AccountingError> {
        self.gaussian_blocks().map(|_| ())
    }

    /// Whether `pred` holds for every elementary event (everything that is not a
    /// `SelfComposed` or `Composed`) inside this one. Accountants build
    /// [`crate::Accountant::supports`] on it, so that the structure is walked in one place and
    /// each accountant only lists the mechanisms it can analyse.
    ///
    /// ```
    /// use dp_accounting::DpEvent;
    /// let e = DpEvent::Composed(vec![DpEvent::gaussian(1.0).unwrap().repeated(3)]);
    /// assert!(e.all_elementary(&|x| matches!(x, DpEvent::Gaussian { .. })));
    /// assert!(!e.all_elementary(&|x| matches!(x, DpEvent::PoissonSampledGaussian { .. })));
    /// ```
    pub fn all_elementary(&self, pred: &impl Fn(&DpEvent) -> bool) -> bool {
        match self {
            DpEvent::SelfComposed { event, .. } => event.all_elementary(pred),
            DpEvent::Composed(v) => v.iter().all(|e| e.all_elementary(pred)),
            DpEvent::PoissonSampledGaussian { .. } | DpEvent::Gaussian { .. } => pred(self),
        }
    }

    /// Total number of elementary mechanism invocations (saturating).
    ///
    /// ```
    /// use dp_accounting::DpEvent;
    /// let g = DpEvent::gaussian(1.0).unwrap();
    /// assert_eq!(DpEvent::Composed(vec![g.clone(), g.repeated(4)]).total_count(), 5);
    /// ```
    pub fn total_count(&self) -> u64 {
        match self {
            DpEvent::PoissonSampledGaussian { .. } | DpEvent::Gaussian { .. } => 1,
            DpEvent::SelfComposed { event, count } => event.total_count().saturating_mul(*count),
            DpEvent::Composed(v) => v
                .iter()
                .fold(0u64, |a, e| a.saturating_add(e.total_count())),
        }
    }

    /// Flattens into homogeneous blocks, merging identical (q, σ) pairs; validates on the way.
    pub(crate) fn gaussian_blocks(&self) -> Result<Vec<GaussianBlock>, AccountingError> {
        let mut out = Vec::new();
        self.collect_blocks(1, &mut out)?;
        Ok(out)
    }

    fn collect_blocks(
        &self,
        mult: u64,
        out: &mut Vec<GaussianBlock>,
    ) -> Result<(), AccountingError> {
        match self {
            DpEvent::PoissonSampledGaussian {
                sampling_rate,
                noise_multiplier,
            } => {
                check_sampling_rate(*sampling_rate)?;
                check_noise_multiplier(*noise_multiplier)?;
                push_block(out, *sampling_rate, *noise_multiplier, mult)
            }
            DpEvent::Gaussian { noise_multiplier } => {
                check_noise_multiplier(*noise_multiplier)?;
                push_block(out, 1.0, *noise_multiplier, mult)
            }
            DpEvent::SelfComposed { event, count } => {
                let m = mult
                    .checked_mul(*count)
                    .ok_or(AccountingError::CountOverflow)?;
                if m == 0 {
                    // Still validate the parameters of a zero-count repetition.
                    let mut scratch = Vec::new();
                    return event.collect_blocks(1, &mut scratch);
                }
                event.collect_blocks(m, out)
            }
            DpEvent::Composed(events) => {
                for e in events {
                    e.collect_blocks(mult, out)?;
                }
                Ok(())
            }
        }
    }

    /// Splits `SelfComposed` layers off: the innermost non-repeated event and its multiplicity.
    pub(crate) fn base_and_count(&self) -> Option<(&DpEvent, u64)> {
        match self {
            DpEvent::SelfComposed { event, count } => {
                let (b, c) = event.base_and_count()?;
                Some((b, c.checked_mul(*count)?))
            }
            other => Some((other, 1)),
        }
    }
}

fn push_block(
    out: &mut Vec<GaussianBlock>,
    q: f64,
    sigma: f64,
    count: u64,
) -> Result<(), AccountingError> {
    if count == 0 {
        return Ok(());
    }
    if let Some(b) = out.iter_mut().find(|b| b.q == q && b.sigma == sigma) {
        b.count = b
            .count
            .checked_add(count)
            .ok_or(AccountingError::CountOverflow)?;
    } else {
        out.push(GaussianBlock { q, sigma, count });
    }
    Ok(())
}

/// Appends `event` to `history`, merging it into the last entry when both are repetitions of the
/// same base event, so that a training loop composing one step at a time keeps a one-entry
/// history. Events with zero total count are not recorded.
pub(crate) fn push_merged(
    history: &mut Vec<DpEvent>,
    event: &DpEvent,
) -> Result<(), AccountingError> {
    if event.total_count() == 0 {
        return Ok(());
    }
    let Some((base, count)) = event.base_and_count() else {
        return Err(AccountingError::CountOverflow);
    };
    if let Some(last) = history.last_mut() {
        if let Some((lbase, lcount)) = last.base_and_count() {
            if lbase == base {
                let total = lcount
                    .checked_add(count)
                    .ok_or(AccountingError::CountOverflow)?;
                let merged = base.clone().repeated(total);
                *last = merged;
                return Ok(());
            }
        }
    }
    if count == 1 {
        history.push(base.clone());
    } else {
        history.push(base.clone().repeated(count));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_merge_identical_parameters() {
        let a = DpEvent::poisson_gaussian(0.1, 1.0).unwrap();
        let b = DpEvent::gaussian(2.0).unwrap();
        let e = DpEvent::Composed(vec![
            a.clone().repeated(3),
            b.clone(),
            a.clone().repeated(2).repeated(2),
        ]);
        let blocks = e.gaussian_blocks().unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].count, 7);
        assert_eq!(blocks[1].q, 1.0);
        assert_eq!(e.total_count(), 8);
    }

    #[test]
    fn overflow_is_an_error() {
        let e = DpEvent::gaussian(1.0)
            .unwrap()
            .repeated(u64::MAX)
            .repeated(2);
        assert_eq!(e.validate(), Err(AccountingError::CountOverflow));
    }

    #[test]
    fn invalid_parameters_rejected() {
        for (q, s) in [
            (0.0, 1.0),
            (-0.1, 1.0),
            (1.0001, 1.0),
            (f64::NAN, 1.0),
            (0.5, 0.0),
            (0.5, -1.0),
            (0.5, f64::INFINITY),
        ] {
            assert!(DpEvent::poisson_gaussian(q, s).is_err(), "q={q} s={s}");
        }
        let nested = DpEvent::Composed(vec![DpEvent::Gaussian {
            noise_multiplier: -1.0,
        }
        .repeated(0)]);
        assert!(nested.validate().is_err());
    }

    #[test]
    fn push_merged_collapses_runs() {
        let a = DpEvent::poisson_gaussian(0.1, 1.0).unwrap();
        let b = DpEvent::gaussian(2.0).unwrap();
        let mut h = Vec::new();
        for _ in 0..1000 {
            push_merged(&mut h, &a).unwrap();
        }
        push_merged(&mut h, &a.clone().repeated(5)).unwrap();
        assert_eq!(h, vec![a.clone().repeated(1005)]);
        push_merged(&mut h, &b).unwrap();
        push_merged(&mut h, &a.clone().repeated(0)).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1], b);
    }
}
