//! Privacy budgets and the guard that keeps a run within one.
//!
//! A trainer asks [`BudgetGuard::check`] before every step and [`BudgetGuard::record`]s the
//! step only if it is [`BudgetCheck::Within`]; the guard owns the accountant, so the ε it
//! certifies is the ε of exactly the steps that ran. The guard is generic over
//! [`Accountant`] and asks it only [`Accountant::supports`] and
//! [`Accountant::epsilon_is_cheap`], so a new accountant needs no change here.

use serde::{Deserialize, Serialize};

use crate::accountant::{unsupported, Accountant};
use crate::any::AnyAccountant;
use crate::calibration::max_count;
use crate::error::{check_delta, AccountingError};
use crate::event::DpEvent;

/// Step-limit searches without planned steps stop here (2⁴⁰ steps); beyond it every check is
/// exact.
const UNPLANNED_CAP: u64 = 1 << 40;

/// A validated (ε, δ) budget: ε finite and > 0, δ in (0, 1).
///
/// Deserialisation validates too, so a hand-edited config or checkpoint cannot smuggle in a
/// budget of NaN (which every comparison would treat as "not exceeded").
///
/// ```
/// use dp_accounting::{AccountingError, PrivacyBudget};
/// let b = PrivacyBudget::new(3.0, 1e-5).unwrap();
/// assert_eq!((b.epsilon(), b.delta()), (3.0, 1e-5));
/// assert!(matches!(PrivacyBudget::new(f64::NAN, 1e-5), Err(AccountingError::InvalidEpsilon(_))));
/// let back: Result<PrivacyBudget, _> = serde_json::from_str(r#"{"epsilon": -1.0, "delta": 1e-5}"#);
/// assert!(back.is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "BudgetRepr", into = "BudgetRepr")]
pub struct PrivacyBudget {
    epsilon: f64,
    delta: f64,
}

/// Unvalidated serialised form of [`PrivacyBudget`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct BudgetRepr {
    epsilon: f64,
    delta: f64,
}

impl From<PrivacyBudget> for BudgetRepr {
    fn from(b: PrivacyBudget) -> Self {
        BudgetRepr {
            epsilon: b.epsilon,
            delta: b.delta,
        }
    }
}

impl TryFrom<BudgetRepr> for PrivacyBudget {
    type Error = AccountingError;
    fn try_from(r: BudgetRepr) -> Result<Self, Self::Error> {
        PrivacyBudget::new(r.epsilon, r.delta)
    }
}

impl PrivacyBudget {
    /// A budget of (epsilon, delta). Errors: [`AccountingError::InvalidEpsilon`] unless ε is
    /// finite and > 0 (a zero budget allows nothing and is a configuration mistake),
    /// [`AccountingError::InvalidDelta`] unless δ ∈ (0, 1).
    ///
    /// ```
    /// use dp_accounting::{AccountingError, PrivacyBudget};
    /// assert!(PrivacyBudget::new(1.0, 1e-6).is_ok());
    /// assert_eq!(PrivacyBudget::new(0.0, 1e-5), Err(AccountingError::InvalidEpsilon(0.0)));
    /// assert_eq!(PrivacyBudget::new(1.0, 1.0), Err(AccountingError::InvalidDelta(1.0)));
    /// ```
    pub fn new(epsilon: f64, delta: f64) -> Result<Self, AccountingError> {
        if !(epsilon.is_finite() && epsilon > 0.0) {
            return Err(AccountingError::InvalidEpsilon(epsilon));
        }
        check_delta(delta)?;
        Ok(PrivacyBudget { epsilon, delta })
    }

    /// The ε that must not be exceeded.
    ///
    /// ```
    /// assert_eq!(dp_accounting::PrivacyBudget::new(2.0, 1e-5).unwrap().epsilon(), 2.0);
    /// ```
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }

    /// The δ at which ε is measured.
    ///
    /// ```
    /// assert_eq!(dp_accounting::PrivacyBudget::new(2.0, 1e-5).unwrap().delta(), 1e-5);
    /// ```
    pub fn delta(&self) -> f64 {
        self.delta
    }
}

/// The answer of [`BudgetGuard::check`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BudgetCheck {
    /// Composing the step keeps ε within the budget (or there is no budget).
    Within,
    /// Composing the step would take ε to `would_reach` > `budget`.
    Exceeds {
        /// ε after the step (at the guard's δ).
        would_reach: f64,
        /// The budget's ε.
        budget: f64,
    },
}

/// Owns an accountant and refuses steps that would exceed a privacy budget.
///
/// For accountants whose ε is cheap, every [`check`](BudgetGuard::check) composes the step
/// onto a clone and compares. For costly ones (PRV) a run of identical steps is the common
/// case, and there the guard computes once the number L of such steps the budget allows
/// ([`max_count`], capped at the planned steps so that it never fails on a budget that
/// allows more than the run needs) and answers without any composition while fewer than L
/// steps were recorded; from L on (or past the plan) every check is exact again. The true ε
/// is monotone in the number of steps and the accountant's ε at L is a certified bound, so
/// every step the shortcut admits is within the budget; the step it first refuses is the
/// (L+1)-th, the same one an exact check refuses when the reported ε is monotone too. If
/// the step-limit search itself fails (PRV cannot evaluate some count), the guard falls back
/// to exact checks for that step.
///
/// Serialises (for checkpoints) with the accountant; the step-limit cache is recomputed.
///
/// ```
/// use dp_accounting::{AccountantKind, AnyAccountant, BudgetCheck, BudgetGuard, DpEvent, PrivacyBudget};
/// let budget = PrivacyBudget::new(1.0, 1e-5).unwrap();
/// let mut guard = BudgetGuard::new(AnyAccountant::new(AccountantKind::Rdp), 1e-5, Some(budget)).unwrap();
/// let step = DpEvent::poisson_gaussian(0.01, 1.0).unwrap();
/// while guard.check(&step).unwrap() == BudgetCheck::Within {
///     guard.record(&step).unwrap();
/// }
/// assert!(guard.steps_recorded() > 0 && guard.epsilon().unwrap() <= 1.0);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(
    try_from = "GuardState<A>",
    into = "GuardState<A>",
    bound(
        serialize = "A: Serialize + Clone",
        deserialize = "A: Deserialize<'de> + Accountant"
    )
)]
pub struct BudgetGuard<A: Accountant = AnyAccountant> {
    accountant: A,
    delta: f64,
    budget: Option<PrivacyBudget>,
    planned_steps: Option<u64>,
    /// (step, L): the budget allows L repetitions of `step` from an empty history.
    limit: Option<(DpEvent, u64)>,
}

/// Serialised form of [`BudgetGuard`]: everything but the cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GuardState<A> {
    accountant: A,
    delta: f64,
    budget: Option<PrivacyBudget>,
    #[serde(default)]
    planned_steps: Option<u64>,
}

impl<A: Accountant> From<BudgetGuard<A>> for GuardState<A> {
    fn from(g: BudgetGuard<A>) -> Self {
        GuardState {
            accountant: g.accountant,
            delta: g.delta,
            budget: g.budget,
            planned_steps: g.planned_steps,
        }
    }
}

impl<A: Accountant> TryFrom<GuardState<A>> for BudgetGuard<A> {
    type Error = AccountingError;
    fn try_from(s: GuardState<A>) -> Result<Self, Self::Error> {
        // The same validation as a new guard: δ checked, the budget's δ wins, and the budget
        // itself was validated by its own deserialisation.
        let guard = BudgetGuard::new(s.accountant, s.delta, s.budget)?;
        Ok(match s.planned_steps {
            Some(n) => guard.with_planned_steps(n),
            None => guard,
        })
    }
}

impl<A: Accountant> BudgetGuard<A> {
    /// A guard over `accountant` reporting ε at `delta` (validated: in (0, 1)); `budget =
    /// None` never refuses (the guard then only tracks ε). If a budget is given, its δ is the
    /// one used for everything, whatever `delta` says, so that ε is never compared to a
    /// budget measured at another δ.
    ///
    /// ```
    /// use dp_accounting::{AccountingError, BudgetGuard, PrivacyBudget, RdpAccountant};
    /// let b = PrivacyBudget::new(3.0, 1e-5).unwrap();
    /// let g = BudgetGuard::new(RdpAccountant::new(), 1e-6, Some(b)).unwrap();
    /// assert_eq!(g.delta(), 1e-5);
    /// let bad = BudgetGuard::new(RdpAccountant::new(), 0.0, None);
    /// assert_eq!(bad.unwrap_err(), AccountingError::InvalidDelta(0.0));
    /// ```
    pub fn new(
        accountant: A,
        delta: f64,
        budget: Option<PrivacyBudget>,
    ) -> Result<Self, AccountingError> {
        check_delta(delta)?;
        Ok(BudgetGuard {
            accountant,
            delta: budget.map_or(delta, |b| b.delta()),
            budget,
            planned_steps: None,
            limit: None,
        })
    }

    /// The number of steps the run plans; step-limit searches are capped there, so a budget
    /// that allows more never makes them fail, and a run extended beyond the plan falls back
    /// to exact checks.
    ///
    /// ```
    /// use dp_accounting::{BudgetGuard, RdpAccountant};
    /// let g = BudgetGuard::new(RdpAccountant::new(), 1e-5, None).unwrap().with_planned_steps(100);
    /// assert_eq!(g.planned_steps(), Some(100));
    /// ```
    pub fn with_planned_steps(mut self, n: u64) -> Self {
        self.planned_steps = Some(n);
        self.limit = None;
        self
    }

    /// Would composing `step` onto the history keep ε ≤ the budget's ε?
    ///
    /// Errors: [`AccountingError::UnsupportedEvent`] if the accountant cannot interpret
    /// `step`, validation errors of `step`, and the accountant's errors. A step with zero
    /// count spends nothing and is always within.
    ///
    /// ```
    /// use dp_accounting::{BudgetCheck, BudgetGuard, DpEvent, PrivacyBudget, PrvAccountant};
    /// let b = PrivacyBudget::new(1.0, 1e-5).unwrap();
    /// let mut g = BudgetGuard::new(PrvAccountant::new(), 1e-5, Some(b)).unwrap();
    /// let step = DpEvent::gaussian(10.0).unwrap();
    /// assert_eq!(g.check(&step).unwrap(), BudgetCheck::Within);
    /// g.record(&step).unwrap();
    /// assert!(matches!(g.check(&step.repeated(50)).unwrap(), BudgetCheck::Exceeds { .. }));
    /// ```
    pub fn check(&mut self, step: &DpEvent) -> Result<BudgetCheck, AccountingError> {
        if !self.accountant.supports(step) {
            return Err(unsupported(self.accountant.name(), step));
        }
        step.validate()?;
        let Some(budget) = self.budget else {
            return Ok(BudgetCheck::Within);
        };
        if step.total_count() == 0 {
            return Ok(BudgetCheck::Within);
        }
        if !self.accountant.epsilon_is_cheap() {
            if let Some(done) = self.homogeneous_count(step) {
                let limit = self.step_limit(step, budget.epsilon());
                if done < limit {
                    // done + 1 ≤ L repetitions: ε ≤ ε(L) ≤ budget by monotonicity.
                    return Ok(BudgetCheck::Within);
                }
            }
        }
        let mut trial = self.accountant.clone();
        trial.compose(step)?;
        let eps = trial.epsilon(self.delta)?;
        Ok(if eps <= budget.epsilon() {
            BudgetCheck::Within
        } else {
            BudgetCheck::Exceeds {
                would_reach: eps,
                budget: budget.epsilon(),
            }
        })
    }

    /// Composes `step` (whether or not it was checked: the caller decides; an unchecked step
    /// is still accounted, never lost).
    ///
    /// ```
    /// use dp_accounting::{BudgetGuard, DpEvent, RdpAccountant};
    /// let mut g = BudgetGuard::new(RdpAccountant::new(), 1e-5, None).unwrap();
    /// g.record(&DpEvent::poisson_gaussian(0.01, 1.0).unwrap().repeated(10)).unwrap();
    /// assert_eq!(g.steps_recorded(), 10);
    /// ```
    pub fn record(&mut self, step: &DpEvent) -> Result<(), AccountingError> {
        self.accountant.compose(step)
    }

    /// ε spent so far at the guard's δ. Defined as 0.0 for an empty history (nothing was
    /// released, so the run is (0, 0)-DP), where accountants themselves report
    /// [`AccountingError::EmptyHistory`].
    ///
    /// ```
    /// use dp_accounting::{BudgetGuard, RdpAccountant};
    /// assert_eq!(BudgetGuard::new(RdpAccountant::new(), 1e-5, None).unwrap().epsilon(), Ok(0.0));
    /// ```
    pub fn epsilon(&self) -> Result<f64, AccountingError> {
        if self.accountant.history().is_empty() {
            return Ok(0.0);
        }
        self.accountant.epsilon(self.delta)
    }

    /// The accountant (for its history or accountant-specific reports).
    ///
    /// ```
    /// use dp_accounting::{Accountant, BudgetGuard, RdpAccountant};
    /// let g = BudgetGuard::new(RdpAccountant::new(), 1e-5, None).unwrap();
    /// assert_eq!(g.accountant().name(), "rdp");
    /// ```
    pub fn accountant(&self) -> &A {
        &self.accountant
    }

    /// The budget, if any.
    ///
    /// ```
    /// use dp_accounting::{BudgetGuard, RdpAccountant};
    /// assert!(BudgetGuard::new(RdpAccountant::new(), 1e-5, None).unwrap().budget().is_none());
    /// ```
    pub fn budget(&self) -> Option<&PrivacyBudget> {
        self.budget.as_ref()
    }

    /// The δ at which ε is reported (the budget's δ when there is a budget).
    ///
    /// ```
    /// use dp_accounting::{BudgetGuard, RdpAccountant};
    /// assert_eq!(BudgetGuard::new(RdpAccountant::new(), 1e-6, None).unwrap().delta(), 1e-6);
    /// ```
    pub fn delta(&self) -> f64 {
        self.delta
    }

    /// The planned number of steps, if set.
    ///
    /// ```
    /// use dp_accounting::{BudgetGuard, RdpAccountant};
    /// assert_eq!(BudgetGuard::new(RdpAccountant::new(), 1e-5, None).unwrap().planned_steps(), None);
    /// ```
    pub fn planned_steps(&self) -> Option<u64> {
        self.planned_steps
    }

    /// Elementary mechanism invocations recorded: Σ `total_count` over the history.
    ///
    /// ```
    /// use dp_accounting::{BudgetGuard, DpEvent, RdpAccountant};
    /// let mut g = BudgetGuard::new(RdpAccountant::new(), 1e-5, None).unwrap();
    /// g.record(&DpEvent::gaussian(1.0).unwrap()).unwrap();
    /// assert_eq!(g.steps_recorded(), 1);
    /// ```
    pub fn steps_recorded(&self) -> u64 {
        self.accountant
            .history()
            .iter()
            .fold(0u64, |a, e| a.saturating_add(e.total_count()))
    }

    /// If every event in the history is a repetition of `step` (so the history is exactly
    /// `step.repeated(n)`), that n; `None` otherwise.
    fn homogeneous_count(&self, step: &DpEvent) -> Option<u64> {
        let (base, per_step) = step.base_and_count()?;
        if per_step == 0 {
            return None;
        }
        let mut total: u64 = 0;
        for h in self.accountant.history() {
            let (hb, hc) = h.base_and_count()?;
            if hb != base || hc % per_step != 0 {
                return None;
            }
            total = total.checked_add(hc / per_step)?;
        }
        Some(total)
    }

    /// L = the number of repetitions of `step` the budget allows from an empty history,
    /// capped at the planned steps; computed once per step event.
    /// A search that fails is cached as L = 0, which makes every check exact.
    fn step_limit(&mut self, step: &DpEvent, budget: f64) -> u64 {
        if let Some((e, l)) = &self.limit {
            if e == step {
                return *l;
            }
        }
        let cap = self.planned_steps.unwrap_or(UNPLANNED_CAP);
        let proto = &self.accountant;
        let l = max_count(
            || proto.fresh(),
            |n| Ok(step.clone().repeated(n)),
            budget,
            self.delta,
            cap,
        )
        .unwrap_or(0);
        self.limit = Some((step.clone(), l));
        l
    }
}
