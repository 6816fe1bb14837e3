//! The RDP accountant: per-order RDP of every event, summed, converted to (ε, δ).

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::accountant::{gaussian_only, unsupported, Accountant};
use crate::error::AccountingError;
use crate::event::{push_merged, DpEvent};
use crate::rdp::{check_orders, default_orders, rdp_poisson_gaussian_orders};
use crate::rdp_conversion::{
    delta_from_rdp, epsilon_from_rdp, Conversion, DeltaReport, EpsilonReport,
};

/// Rényi-DP accountant (Mironov 2017; subsampled Gaussian per Mironov, Talwar & Zhang 2019).
///
/// RDP composes by adding per-order values, so heterogeneous runs (noise schedules, extra
/// count queries) are exact sums. One step's RDP vector is computed once per distinct (q, σ)
/// and multiplied by its count, which makes 10⁵ identical `compose` calls cost 10⁵ vector adds.
///
/// The serialised form is the configuration plus the event history; the per-order totals are
/// recomputed on deserialisation.
///
/// ```
/// use dp_accounting::{Accountant, DpEvent, RdpAccountant};
/// // Tramèr & Boneh MNIST: q = 512/60000, σ = 1.23, 4687 steps, δ = 1e-5 → ε ≈ 2.581 (α = 8.1).
/// let mut acc = RdpAccountant::new();
/// acc.compose(&DpEvent::poisson_gaussian(512.0 / 60000.0, 1.23).unwrap().repeated(4687)).unwrap();
/// let r = acc.epsilon_with_order(1e-5).unwrap();
/// assert!((r.epsilon - 2.581).abs() < 1e-3);
/// assert!((r.optimal_order - 8.1).abs() < 1e-9 && !r.on_grid_edge);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "RdpAccountantState", into = "RdpAccountantState")]
pub struct RdpAccountant {
    orders: Vec<f64>,
    conversion: Conversion,
    history: Vec<DpEvent>,
    /// Σ over the history of count × per-step RDP, per order.
    total: Vec<f64>,
    /// Per-step RDP vectors keyed by (q, σ) bit patterns; shared between clones.
    cache: Arc<StepCache>,
}

/// Per-step RDP vectors keyed by the bit patterns of (q, σ).
type StepCache = HashMap<(u64, u64), Arc<Vec<f64>>>;

/// Serialised form of [`RdpAccountant`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RdpAccountantState {
    orders: Vec<f64>,
    conversion: Conversion,
    history: Vec<DpEvent>,
}

impl From<RdpAccountant> for RdpAccountantState {
    fn from(a: RdpAccountant) -> Self {
        RdpAccountantState {
            orders: a.orders,
            conversion: a.conversion,
            history: a.history,
        }
    }
}

impl TryFrom<RdpAccountantState> for RdpAccountant {
    type Error = AccountingError;
    fn try_from(s: RdpAccountantState) -> Result<Self, Self::Error> {
        check_orders(&s.orders)?;
        let mut acc = RdpAccountant::new()
            .with_orders(s.orders)
            .with_conversion(s.conversion);
        for e in &s.history {
            acc.compose(e)?;
        }
        Ok(acc)
    }
}

impl Default for RdpAccountant {
    fn default() -> Self {
        Self::new()
    }
}

impl RdpAccountant {
    /// Empty accountant with Opacus's default orders and the Balle et al. conversion.
    ///
    /// ```
    /// let acc = dp_accounting::RdpAccountant::new();
    /// assert_eq!(acc.orders().len(), 151);
    /// ```
    pub fn new() -> Self {
        let orders = default_orders();
        let n = orders.len();
        RdpAccountant {
            orders,
            conversion: Conversion::Balle,
            history: Vec::new(),
            total: vec![0.0; n],
            cache: Arc::new(HashMap::new()),
        }
    }

    /// Uses `orders` as the RDP order grid (each finite, > 1). An invalid grid is reported by
    /// the next `compose`/`epsilon` call as [`AccountingError::InvalidOrders`].
    ///
    /// ```
    /// use dp_accounting::{Accountant, DpEvent, RdpAccountant};
    /// let mut acc = RdpAccountant::new().with_orders(vec![2.0, 4.0, 8.0, 16.0, 32.0]);
    /// acc.compose(&DpEvent::gaussian(4.0).unwrap()).unwrap();
    /// assert!(acc.epsilon(1e-5).unwrap() > 0.0);
    /// assert!(RdpAccountant::new().with_orders(vec![0.5]).epsilon(1e-5).is_err());
    /// ```
    pub fn with_orders(mut self, orders: Vec<f64>) -> Self {
        self.orders = orders;
        self.cache = Arc::new(HashMap::new());
        self.total = vec![0.0; self.orders.len()];
        let history = std::mem::take(&mut self.history);
        if check_orders(&self.orders).is_ok() {
            for e in &history {
                // Events were validated when first composed; only the orders changed.
                if self.add_to_total(e).is_err() {
                    break;
                }
            }
        }
        self.history = history;
        self
    }

    /// Selects the RDP → (ε, δ) conversion.
    ///
    /// ```
    /// use dp_accounting::{Accountant, Conversion, DpEvent, RdpAccountant};
    /// let e = DpEvent::poisson_gaussian(512.0 / 60000.0, 1.23).unwrap().repeated(4687);
    /// let mut acc = RdpAccountant::new().with_conversion(Conversion::Classic);
    /// acc.compose(&e).unwrap();
    /// assert!((acc.epsilon(1e-5).unwrap() - 2.995).abs() < 1e-3);
    /// ```
    pub fn with_conversion(mut self, conversion: Conversion) -> Self {
        self.conversion = conversion;
        self
    }

    /// The order grid.
    pub fn orders(&self) -> &[f64] {
        &self.orders
    }

    /// The conversion in use.
    ///
    /// ```
    /// use dp_accounting::{Conversion, RdpAccountant};
    /// assert_eq!(RdpAccountant::new().conversion(), Conversion::Balle);
    /// ```
    pub fn conversion(&self) -> Conversion {
        self.conversion
    }

    /// Total RDP per order of everything composed so far.
    ///
    /// ```
    /// use dp_accounting::{Accountant, DpEvent, RdpAccountant};
    /// let mut acc = RdpAccountant::new().with_orders(vec![2.0]);
    /// acc.compose(&DpEvent::gaussian(1.0).unwrap().repeated(3)).unwrap();
    /// assert!((acc.rdp()[0] - 3.0).abs() < 1e-12);
    /// ```
    pub fn rdp(&self) -> &[f64] {
        &self.total
    }

    /// ε at `delta` with the optimal order and a flag for an optimum on the grid's edge.
    ///
    /// ```
    /// use dp_accounting::{Accountant, DpEvent, RdpAccountant};
    /// let mut acc = RdpAccountant::new();
    /// acc.compose(&DpEvent::poisson_gaussian(1.0 / 214.0, 0.8).unwrap().repeated(12840)).unwrap();
    /// let r = acc.epsilon_with_order(1e-6).unwrap();
    /// assert!((r.epsilon - 5.903).abs() < 1e-3 && (r.optimal_order - 4.8).abs() < 1e-9);
    /// ```
    pub fn epsilon_with_order(&self, delta: f64) -> Result<EpsilonReport, AccountingError> {
        check_orders(&self.orders)?;
        crate::error::check_delta(delta)?;
        if self.history.is_empty() {
            return Err(AccountingError::EmptyHistory);
        }
        epsilon_from_rdp(&self.orders, &self.total, delta, self.conversion)
    }

    /// δ at `epsilon` with the optimal order.
    ///
    /// ```
    /// use dp_accounting::{Accountant, DpEvent, RdpAccountant};
    /// let mut acc = RdpAccountant::new();
    /// acc.compose(&DpEvent::poisson_gaussian(0.01, 1.0).unwrap().repeated(1000)).unwrap();
    /// let eps = acc.epsilon(1e-5).unwrap();
    /// let d = acc.delta_with_order(eps).unwrap().delta;
    /// assert!((d - 1e-5).abs() < 1e-9);
    /// ```
    pub fn delta_with_order(&self, epsilon: f64) -> Result<DeltaReport, AccountingError> {
        check_orders(&self.orders)?;
        crate::error::check_epsilon(epsilon)?;
        if self.history.is_empty() {
            return Err(AccountingError::EmptyHistory);
        }
        delta_from_rdp(&self.orders, &self.total, epsilon, self.conversion)
    }

    fn step_rdp(&mut self, q: f64, sigma: f64) -> Result<Arc<Vec<f64>>, AccountingError> {
        let key = (q.to_bits(), sigma.to_bits());
        if let Some(v) = self.cache.get(&key) {
            return Ok(Arc::clone(v));
        }
        let v = Arc::new(rdp_poisson_gaussian_orders(q, sigma, &self.orders)?);
        Arc::make_mut(&mut self.cache).insert(key, Arc::clone(&v));
        Ok(v)
    }

    /// Adds the event's RDP to `total` (all-or-nothing).
    fn add_to_total(&mut self, event: &DpEvent) -> Result<(), AccountingError> {
        let add = self.event_rdp(event)?;
        for (t, a) in self.total.iter_mut().zip(add) {
            *t += a;
        }
        Ok(())
    }

    /// Per-order RDP of `event`; fills the per-(q, σ) cache but changes nothing else.
    fn event_rdp(&mut self, event: &DpEvent) -> Result<Vec<f64>, AccountingError> {
        let blocks = event.gaussian_blocks()?;
        let mut add = vec![0.0; self.orders.len()];
        for b in blocks {
            let v = self.step_rdp(b.q, b.sigma)?;
            let c = b.count as f64;
            for (a, r) in add.iter_mut().zip(v.iter()) {
                *a += c * r;
            }
        }
        Ok(add)
    }
}

impl Accountant for RdpAccountant {
    /// ```
    /// use dp_accounting::{Accountant, DpEvent, RdpAccountant};
    /// let mut acc = RdpAccountant::new();
    /// let step = DpEvent::poisson_gaussian(0.01, 1.0).unwrap();
    /// for _ in 0..1000 { acc.compose(&step).unwrap(); }
    /// assert_eq!(acc.history(), &[step.repeated(1000)]);
    /// ```
    fn compose(&mut self, event: &DpEvent) -> Result<(), AccountingError> {
        if !self.supports(event) {
            return Err(unsupported(self.name(), event));
        }
        check_orders(&self.orders)?;
        // Compute first, then record: on any error the accountant is unchanged.
        let add = self.event_rdp(event)?;
        push_merged(&mut self.history, event)?;
        for (t, a) in self.total.iter_mut().zip(add) {
            *t += a;
        }
        Ok(())
    }

    fn epsilon(&self, delta: f64) -> Result<f64, AccountingError> {
        Ok(self.epsilon_with_order(delta)?.epsilon)
    }

    fn delta(&self, epsilon: f64) -> Result<f64, AccountingError> {
        Ok(self.delta_with_order(epsilon)?.delta)
    }

    fn history(&self) -> &[DpEvent] {
        &self.history
    }

    /// The subsampled and plain Gaussian, in any nesting (Mironov, Talwar & Zhang 2019 give
    /// their RDP; repetitions and compositions add).
    fn supports(&self, event: &DpEvent) -> bool {
        gaussian_only(event)
    }

    /// Same orders and conversion; the per-(q, σ) RDP cache is shared, since it depends on
    /// the orders only.
    ///
    /// ```
    /// use dp_accounting::{Accountant, Conversion, DpEvent, RdpAccountant};
    /// let mut a = RdpAccountant::new().with_conversion(Conversion::Classic);
    /// a.compose(&DpEvent::gaussian(1.0).unwrap()).unwrap();
    /// let f = a.fresh();
    /// assert!(f.history().is_empty() && f.rdp().iter().all(|&r| r == 0.0));
    /// assert_eq!(f.conversion(), Conversion::Classic);
    /// ```
    fn fresh(&self) -> Self {
        RdpAccountant {
            orders: self.orders.clone(),
            conversion: self.conversion,
            history: Vec::new(),
            total: vec![0.0; self.orders.len()],
            cache: Arc::clone(&self.cache),
        }
    }

    fn name(&self) -> &'static str {
        "rdp"
    }
}
