//! From what a step released to the event an accountant reads: the sampler declares its
//! scheme, the plan its Gaussian queries, and this module turns the pair into a `DpEvent`
//! (refusing a scheme the accountant's events do not describe unless the user opts in).

use crate::error::{Result, TrainError};
use crate::methods::PrivacyMethod;
use crate::plan::Regime;
use crate::records::Guarantee;
use dp_accounting::{combined_noise_multiplier, DpEvent};
use dp_data::SamplingScheme;
use serde::{Deserialize, Serialize};

/// How the batches of a run are accounted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SampleAccounting {
    /// The Poisson rate the events carry.
    pub q: f64,
    /// `Some(scheme)` when the sampler is not Poisson and the user opted in to Poisson
    /// accounting anyway.
    pub assumed_for: Option<SamplingScheme>,
}

impl SampleAccounting {
    /// The accounting implied by `scheme` for a dataset of `n` examples.
    pub fn from_scheme(scheme: SamplingScheme, n: usize, assume_poisson: bool) -> Result<Self> {
        match scheme {
            SamplingScheme::Poisson { sampling_rate } => Ok(Self {
                q: sampling_rate,
                assumed_for: None,
            }),
            SamplingScheme::Shuffled { batch_size }
            | SamplingScheme::FixedSizeWithoutReplacement { batch_size } => {
                if !assume_poisson {
                    return Err(TrainError::SamplingMismatch(format!(
                        "the sampler draws {scheme}, but the accountant's events describe \
                         Poisson sampling; use a PoissonSampler, or opt in with \
                         TrainerConfig::assume_poisson_accounting(true) and every record will \
                         say that ε holds only under that assumption"
                    )));
                }
                Ok(Self {
                    q: batch_size as f64 / n as f64,
                    assumed_for: Some(scheme),
                })
            }
        }
    }

    /// What the ε of a run in `regime` certifies.
    pub fn guarantee(&self, regime: Regime) -> Guarantee {
        if !regime.is_private() {
            return Guarantee::NotPrivate { regime };
        }
        match &self.assumed_for {
            None => Guarantee::Dp,
            Some(s) => Guarantee::DpAssumingPoisson {
                sampler: s.to_string(),
            },
        }
    }

    /// One step's event: the Gaussian queries on the step's sample (each multiplier relative
    /// to its sensitivity) are one Gaussian mechanism with the combined multiplier, sampled
    /// as the scheme says; `extra` releases are composed after it.
    pub fn step_event(&self, multipliers: &[f64], extra: &[DpEvent]) -> Result<DpEvent> {
        let sigma = combined_noise_multiplier(multipliers)?;
        let sampled = DpEvent::poisson_gaussian(self.q, sigma)?;
        Ok(if extra.is_empty() {
            sampled
        } else {
            let mut all = vec![sampled];
            all.extend_from_slice(extra);
            DpEvent::Composed(all)
        })
    }

    /// The σ schedule of a whole run of `steps` steps of `method` at budgeted multiplier
    /// `sigma` (the calibration's event factory, for `dp_accounting::schedule_event`): each
    /// step's queries combined, consecutive equal steps as one `(σ, count)` block.
    pub fn run_blocks(
        &self,
        method: &dyn PrivacyMethod,
        sigma: f64,
        steps: u64,
    ) -> Result<Vec<(f64, u64)>> {
        let mut blocks: Vec<(f64, u64)> = Vec::new();
        for t in 0..steps {
            let s = combined_noise_multiplier(&method.calibration_multipliers(sigma, t)?)?;
            match blocks.last_mut() {
                Some((last, count)) if *last == s => *count += 1,
                _ => blocks.push((s, 1)),
            }
        }
        Ok(blocks)
    }
}
