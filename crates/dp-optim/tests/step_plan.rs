//! The step plan: every clip strategy through the trainer, the four regimes, the sampler's
//! accounting, calibration of schedules and two-query steps, and methods and objectives
//! defined outside the crate.

use candle_core::{Device, Tensor};
use dp_accounting::{
    combined_noise_multiplier, schedule_event, Accountant, AccountantKind, AccountingError,
    AnyAccountant, DpEvent,
};
use dp_core::clipping::{
    AutoClip, ClipFactors, FlatClip, LayerSqNorms, PerExampleFactor, PerLayerClip,
};
use dp_core::{
    batch_gradient, clipped_gradient, models, ClipStrategy, ClippedBatch, CrossEntropy,
    GaussianNoise, GradOptions, Loss, Model, Sequential,
};
use dp_optim::{
    take_step, BatchSize, ClipWith, Delta, Epochs, FixedClip, Guarantee, PerExampleObjective,
    PlanContext, PrivacyMethod, PrivateTrainer, Regime, Sgd, StatisticQuery, StepEnv, StepOutcome,
    StepPlan, TrainError, TrainerConfig,
};

fn data() -> dp_data::TrainTest {
    let mut d = dp_data::load_bundled_mnist().unwrap();
    dp_data::Normalize::mnist()
        .apply_dataset(&mut d.train)
        .unwrap();
    d
}

fn flat(m: &impl Model) -> Vec<f32> {
    m.param_tensors()
        .iter()
        .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

fn vec_of(ts: &[Tensor]) -> Vec<f64> {
    ts.iter()
        .flat_map(|t| {
            t.flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        })
        .collect()
}

fn mlp() -> Sequential {
    models::mlp(&[784, 12, 10], &Device::Cpu, 3).unwrap()
}

/// A user's own strategy: clip each example to 0.3, then halve it (sensitivity 0.15).
struct HalfClip;
impl ClipStrategy for HalfClip {
    fn factors(&mut self, sq: &LayerSqNorms) -> dp_core::Result<ClipFactors> {
        Ok(ClipFactors::Flat(
            sq.total_norms()
                .iter()
                .map(|n| (0.5 * (0.3 / (n + 1e-6)).min(1.0)) as f32)
                .collect(),
        ))
    }
    fn sensitivity(&self) -> f64 {
        0.15
    }
}

type MakeClip = fn() -> dp_optim::Result<Box<dyn ClipStrategy>>;

fn strategies() -> Vec<(&'static str, MakeClip)> {
    vec![
        ("flat", || Ok(Box::new(FlatClip::new(0.5)?))),
        ("per_layer", || Ok(Box::new(PerLayerClip::equal(0.5)?))),
        ("auto_s", || Ok(Box::new(AutoClip::new(0.5, 0.01)?))),
        ("per_example", || {
            Ok(Box::new(PerExampleFactor::new(0.5, |norms: &[f64]| {
                norms.iter().map(|n| 0.25 / (n + 1e-6)).collect()
            })?))
        }),
        ("user", || Ok(Box::new(HalfClip))),
    ]
}

#[test]
fn every_clip_strategy_trains_with_noise_of_sigma_times_its_sensitivity() {
    let d = data();
    let sigma = 1.3;
    for (name, make) in strategies() {
        let sens = make().unwrap().sensitivity();
        let method = ClipWith::new(name, sigma, make).unwrap();
        let cfg = TrainerConfig::new(Epochs(0.1), BatchSize(100.0), Delta(1e-5)).with_seed(5);
        let mut t = PrivateTrainer::new(
            mlp(),
            Box::new(Sgd::new(0.1)),
            Box::new(method),
            cfg,
            &d.train,
        )
        .unwrap();
        let before = flat(t.model());
        let r = t.train(&d.train, None).unwrap();
        assert_eq!(r.steps, 4, "{name}");
        assert_ne!(before, flat(t.model()), "{name}: the model moved");
        for rec in t.records() {
            assert_eq!(rec.sensitivity, sens, "{name}");
            assert!(
                (rec.noise_std - sigma * sens).abs() < 1e-12,
                "{name}: std {} vs σS {}",
                rec.noise_std,
                sigma * sens
            );
            assert_eq!(rec.guarantee, Guarantee::Dp);
        }
        let q = 100.0 / d.train.len() as f64;
        let expected =
            dp_accounting::calibration::epsilon_for(q, sigma, 4, 1e-5, AccountantKind::Rdp)
                .unwrap();
        assert!((r.epsilon - expected).abs() < 1e-12, "{name}");
    }
}

/// The clipped sum of `rows` of a batch through the public step (clip-only, divisor 1, no
/// update), from a fresh copy of the same model.
fn clipped_sum_via_step(make: MakeClip, x: &Tensor, y: &Tensor, rows: &[u32]) -> Vec<f64> {
    let mut model = mlp();
    let idx = Tensor::new(rows, &Device::Cpu).unwrap();
    let (xs, ys) = (
        x.index_select(&idx, 0).unwrap(),
        y.index_select(&idx, 0).unwrap(),
    );
    let mut plan = StepPlan::new(make().unwrap(), 1.0, 1.0).unwrap();
    let env = StepEnv {
        regime: Regime::ClipOnly,
        loss: &CrossEntropy,
        grad_options: &GradOptions::default(),
    };
    let r = take_step(
        &mut model,
        &mut std::iter::once(Ok((xs, ys))),
        &mut plan,
        &env,
        &mut GaussianNoise::seeded(0),
        &mut Sgd::new(0.0),
    )
    .unwrap();
    assert_eq!(r.noise_std, 0.0);
    vec_of(&r.gradient)
}

#[test]
fn removing_one_example_moves_every_strategys_sum_by_at_most_its_sensitivity() {
    let d = data();
    let idx: Vec<usize> = (0..24).collect();
    let (x, y) = dp_optim::batch_tensors(&d.train, &idx, &Device::Cpu).unwrap();
    // Scale the inputs up so that most examples exceed every bound.
    let x = (x * 5.0).unwrap();
    let all: Vec<u32> = (0..24).collect();
    for (name, make) in strategies() {
        let sens = make().unwrap().sensitivity();
        let full = clipped_sum_via_step(make, &x, &y, &all);
        for drop in [0u32, 7, 23] {
            let rest: Vec<u32> = all.iter().copied().filter(|&i| i != drop).collect();
            let part = clipped_sum_via_step(make, &x, &y, &rest);
            let dist = full
                .iter()
                .zip(&part)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(
                dist <= sens * (1.0 + 1e-5),
                "{name}: removing {drop} moved the sum by {dist} > {sens}"
            );
            assert!(dist > 0.0, "{name}: the example contributed nothing");
        }
    }
}

fn regime_run(regime: Regime, seed: u64) -> (PrivateTrainer<Sequential>, dp_optim::TrainReport) {
    let d = data();
    let cfg = TrainerConfig::new(Epochs(0.1), BatchSize(100.0), Delta(1e-5))
        .with_seed(seed)
        .with_regime(regime);
    let mut t = PrivateTrainer::new(
        mlp(),
        Box::new(Sgd::new(0.2)),
        Box::new(FixedClip::new(0.1, 2.0).unwrap()),
        cfg,
        &d.train,
    )
    .unwrap();
    let r = t.train(&d.train, None).unwrap();
    (t, r)
}

#[test]
fn non_private_equals_plain_sgd_on_the_same_batches_bit_for_bit() {
    let d = data();
    let (t, r) = regime_run(Regime::NonPrivate, 11);
    // Plain SGD by hand: the same Poisson batches (same seed), the ordinary gradient of the
    // summed loss divided by the expected batch size.
    let mut model = mlp();
    let mut sampler =
        dp_data::PoissonSampler::new(d.train.len(), 100.0 / 4000.0, Some(11)).unwrap();
    let mut opt = Sgd::new(0.2);
    for _ in 0..r.steps {
        let idx = sampler.next_batch();
        let (x, y) = dp_optim::batch_tensors(&d.train, &idx, &Device::Cpu).unwrap();
        let (sum, _) = batch_gradient(&mut model, &x, &y, &CrossEntropy).unwrap();
        let g: Vec<Tensor> = sum.iter().map(|t| (t / 100.0).unwrap()).collect();
        let new = dp_optim::BaseOptimizer::step(&mut opt, &model.param_tensors(), &g).unwrap();
        model.set_param_tensors(&new).unwrap();
    }
    assert_eq!(flat(t.model()), flat(&model));
}

#[test]
fn clip_only_equals_clipped_sgd_without_noise_bit_for_bit() {
    let d = data();
    let (t, r) = regime_run(Regime::ClipOnly, 12);
    let mut model = mlp();
    let mut sampler =
        dp_data::PoissonSampler::new(d.train.len(), 100.0 / 4000.0, Some(12)).unwrap();
    let mut opt = Sgd::new(0.2);
    let mut clip = FlatClip::new(0.1).unwrap();
    for _ in 0..r.steps {
        let idx = sampler.next_batch();
        let (x, y) = dp_optim::batch_tensors(&d.train, &idx, &Device::Cpu).unwrap();
        let c = clipped_gradient(
            &mut model,
            &x,
            &y,
            &CrossEntropy,
            &mut clip,
            &GradOptions::default(),
        )
        .unwrap();
        let g: Vec<Tensor> = c.sum.iter().map(|t| (t / 100.0).unwrap()).collect();
        let new = dp_optim::BaseOptimizer::step(&mut opt, &model.param_tensors(), &g).unwrap();
        model.set_param_tensors(&new).unwrap();
    }
    assert_eq!(flat(t.model()), flat(&model));
}

#[test]
fn regimes_do_what_they_say_and_only_dp_reports_a_finite_epsilon() {
    let (private, rp) = regime_run(Regime::Private, 4);
    assert!(rp.epsilon.is_finite() && rp.epsilon > 0.0);
    assert!(private
        .records()
        .iter()
        .all(|r| r.noise_std > 0.0 && r.fraction_clipped > 0.0));

    let (clip_only, rc) = regime_run(Regime::ClipOnly, 4);
    assert!(clip_only
        .records()
        .iter()
        .all(|r| r.noise_std == 0.0 && r.fraction_clipped > 0.0 && r.sensitivity == 0.1));

    let (noise_only, rn) = regime_run(Regime::NoiseOnly, 4);
    assert!(noise_only.records().iter().all(|r| {
        // σ·C of the clip bound a private run would use; nothing clipped.
        (r.noise_std - 0.2).abs() < 1e-12
            && r.fraction_clipped == 0.0
            && r.sensitivity.is_infinite()
    }));

    let (non_private, rnp) = regime_run(Regime::NonPrivate, 4);
    assert!(non_private.records().iter().all(|r| r.noise_std == 0.0));

    for (t, r, regime) in [
        (&clip_only, &rc, Regime::ClipOnly),
        (&noise_only, &rn, Regime::NoiseOnly),
        (&non_private, &rnp, Regime::NonPrivate),
    ] {
        assert_eq!(r.epsilon, f64::INFINITY);
        assert_eq!(r.guarantee, Guarantee::NotPrivate { regime });
        assert!(t
            .records()
            .iter()
            .all(|s| s.epsilon == Some(f64::INFINITY) && !s.guarantee.is_private()));
        assert!(t.epoch_records().iter().all(|e| e.epsilon.is_infinite()));
        // In JSON too: "inf", never a number or null.
        let json = serde_json::to_string(r).unwrap();
        assert!(json.contains(r#""epsilon":"inf""#), "{json}");
        let back: dp_optim::TrainReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back.epsilon, f64::INFINITY);
        assert_eq!(t.accountant().history().len(), 0, "nothing accounted");
    }
}

#[test]
fn noise_only_adds_the_private_runs_noise_to_the_unclipped_gradient() {
    // One step from the same model and batch: noise-only minus non-private is the noise,
    // whose std per coordinate is σ·C / B.
    let d = data();
    let idx: Vec<usize> = (0..100).collect();
    let (x, y) = dp_optim::batch_tensors(&d.train, &idx, &Device::Cpu).unwrap();
    let grad = |regime: Regime| {
        let mut model = models::mlp(&[784, 64, 10], &Device::Cpu, 1).unwrap();
        let mut plan = StepPlan::new(Box::new(FlatClip::new(0.5).unwrap()), 3.0, 100.0).unwrap();
        let env = StepEnv {
            regime,
            loss: &CrossEntropy,
            grad_options: &GradOptions::default(),
        };
        let r = take_step(
            &mut model,
            &mut std::iter::once(Ok((x.clone(), y.clone()))),
            &mut plan,
            &env,
            &mut GaussianNoise::seeded(8),
            &mut Sgd::new(0.0),
        )
        .unwrap();
        (vec_of(&r.gradient), r.noise_std)
    };
    let (noisy, std) = grad(Regime::NoiseOnly);
    let (plain, zero) = grad(Regime::NonPrivate);
    assert_eq!(zero, 0.0);
    assert!((std - 3.0 * 0.5 / 100.0).abs() < 1e-15);
    let diff: Vec<f64> = noisy.iter().zip(&plain).map(|(a, b)| a - b).collect();
    let n = diff.len() as f64;
    let mean = diff.iter().sum::<f64>() / n;
    let sd = (diff.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    // 50k draws: the sample std is within 2% of the true one with overwhelming probability.
    assert!((sd / std - 1.0).abs() < 0.02, "sd {sd} vs {std}");
    assert!(mean.abs() < 5.0 * std / n.sqrt(), "mean {mean}");
}

#[test]
fn a_shuffled_sampler_is_refused_unless_the_user_opts_in_and_then_every_record_says_so() {
    let d = data();
    let n = d.train.len();
    let make = |cfg: TrainerConfig| {
        PrivateTrainer::builder(
            mlp(),
            Box::new(Sgd::new(0.1)),
            Box::new(FixedClip::new(1.0, 1.0).unwrap()),
            cfg,
        )
        .sampler(dp_data::ShuffledSampler::new(n, 100, Some(2)).unwrap())
        .build(&d.train)
    };
    let cfg = TrainerConfig::new(Epochs(0.1), BatchSize(100.0), Delta(1e-5)).with_seed(2);
    assert!(matches!(
        make(cfg.clone()),
        Err(TrainError::SamplingMismatch(_))
    ));
    let fixed = PrivateTrainer::builder(
        mlp(),
        Box::new(Sgd::new(0.1)),
        Box::new(FixedClip::new(1.0, 1.0).unwrap()),
        cfg.clone(),
    )
    .sampler(dp_data::FixedSizeSampler::new(n, 100, Some(2)).unwrap())
    .build(&d.train);
    assert!(matches!(fixed, Err(TrainError::SamplingMismatch(_))));

    let mut t = make(cfg.clone().assume_poisson_accounting(true)).unwrap();
    let r = t.train(&d.train, None).unwrap();
    assert_eq!(r.steps, 4);
    assert!(r.epsilon.is_finite());
    let said = |g: &Guarantee| matches!(g, Guarantee::DpAssumingPoisson { sampler } if sampler.contains("shuffled"));
    assert!(said(&r.guarantee));
    assert!(t.records().iter().all(|s| said(&s.guarantee)));
    assert!(t.records().iter().all(|s| s.batch_size == 100));

    // A run that is not DP accounts nothing: any sampler, no opt-in, ε = ∞.
    let mut t = make(cfg.with_regime(Regime::NonPrivate)).unwrap();
    let r = t.train(&d.train, None).unwrap();
    assert_eq!(r.epsilon, f64::INFINITY);
    assert_eq!(
        r.guarantee,
        Guarantee::NotPrivate {
            regime: Regime::NonPrivate
        }
    );
}

/// A toy method with a public σ schedule: σ for the first half of the run, 1.5σ after.
struct Schedule {
    sigma: f64,
    half: u64,
}

impl PrivacyMethod for Schedule {
    fn name(&self) -> String {
        "schedule".into()
    }
    fn noise_multiplier(&self) -> f64 {
        self.sigma
    }
    fn set_noise_multiplier(&mut self, s: f64) -> dp_optim::Result<()> {
        self.sigma = s;
        Ok(())
    }
    fn plan(&mut self, ctx: &PlanContext) -> dp_optim::Result<StepPlan> {
        let s = self.calibration_multipliers(self.sigma, ctx.step)?[0];
        StepPlan::new(Box::new(FlatClip::new(1.0)?), s, ctx.expected_batch_size)
    }
    fn calibration_multipliers(&self, sigma: f64, step: u64) -> dp_optim::Result<Vec<f64>> {
        Ok(vec![if step < self.half { sigma } else { 1.5 * sigma }])
    }
    fn after_step(&mut self, _: &StepOutcome) -> dp_optim::Result<()> {
        Ok(())
    }
    fn state(&self) -> dp_optim::Result<serde_json::Value> {
        Ok(serde_json::json!(self.sigma))
    }
    fn load_state(&mut self, v: &serde_json::Value) -> dp_optim::Result<()> {
        self.sigma = serde_json::from_value(v.clone())?;
        Ok(())
    }
}

/// A toy method releasing a noisy count (fixed σ_b, sensitivity 1) besides the gradient, as
/// Global-Adapt does.
struct WithCount {
    sigma: f64,
    count_std: f64,
    seen: Vec<f64>,
}

impl PrivacyMethod for WithCount {
    fn name(&self) -> String {
        "with_count".into()
    }
    fn noise_multiplier(&self) -> f64 {
        self.sigma
    }
    fn set_noise_multiplier(&mut self, s: f64) -> dp_optim::Result<()> {
        self.sigma = s;
        Ok(())
    }
    fn plan(&mut self, ctx: &PlanContext) -> dp_optim::Result<StepPlan> {
        let count = StatisticQuery::new("above", 1.0, self.count_std, |n| (n > 0.5) as u8 as f64)?;
        Ok(StepPlan::new(
            Box::new(FlatClip::new(1.0)?),
            self.sigma,
            ctx.expected_batch_size,
        )?
        .with_statistic(count))
    }
    fn calibration_multipliers(&self, sigma: f64, _: u64) -> dp_optim::Result<Vec<f64>> {
        Ok(vec![sigma, self.count_std])
    }
    fn after_step(&mut self, o: &StepOutcome) -> dp_optim::Result<()> {
        self.seen.push(o.statistics[0]);
        Ok(())
    }
    fn state(&self) -> dp_optim::Result<serde_json::Value> {
        Ok(serde_json::json!(self.sigma))
    }
    fn load_state(&mut self, v: &serde_json::Value) -> dp_optim::Result<()> {
        self.sigma = serde_json::from_value(v.clone())?;
        Ok(())
    }
}

fn calibrated(method: Box<dyn PrivacyMethod>, kind: AccountantKind) -> PrivateTrainer<Sequential> {
    let d = data();
    let cfg = TrainerConfig::new(Epochs(2.0), BatchSize(200.0), Delta(1e-5))
        .with_budget(2.0)
        .calibrate_noise_from_budget()
        .with_accountant(kind)
        .with_seed(1);
    PrivateTrainer::new(mlp(), Box::new(Sgd::new(0.1)), method, cfg, &d.train).unwrap()
}

fn eps_of(event: DpEvent, kind: AccountantKind) -> f64 {
    let mut a = AnyAccountant::new(kind);
    a.compose(&event).unwrap();
    a.epsilon(1e-5).unwrap()
}

#[test]
fn a_sigma_schedule_calibrates_and_the_run_spends_what_the_accountant_says() {
    let q = 200.0 / 4000.0;
    for kind in [AccountantKind::Rdp, AccountantKind::Prv] {
        let t = calibrated(
            Box::new(Schedule {
                sigma: 1.0,
                half: 20,
            }),
            kind,
        );
        let steps = t.total_steps();
        assert_eq!(steps, 40);
        let s = t.method().noise_multiplier();
        let sched = |s: f64| schedule_event(q, &[(s, 20), (1.5 * s, 20)]).unwrap();
        let e = eps_of(sched(s), kind);
        assert!(e <= 2.0, "{kind}: ε {e}");
        assert!(
            eps_of(sched(s * 0.995), kind) > 2.0,
            "{kind}: σ is not the smallest"
        );
        // The run spends exactly that.
        let mut t = t;
        let d = data();
        let r = t.train(&d.train, None).unwrap();
        assert_eq!(r.steps, 40);
        assert!(
            (r.epsilon - e).abs() < 1e-9 * e.max(1.0),
            "{kind}: {} vs {e}",
            r.epsilon
        );
        assert!(t.records()[0].noise_std == s && t.records()[39].noise_std == 1.5 * s);
    }
}

#[test]
fn a_two_query_step_calibrates_to_one_combined_gaussian_and_releases_its_count() {
    let q = 200.0 / 4000.0;
    let mut t = calibrated(
        Box::new(WithCount {
            sigma: 1.0,
            count_std: 8.0,
            seen: vec![],
        }),
        AccountantKind::Rdp,
    );
    let s = t.method().noise_multiplier();
    let combined = combined_noise_multiplier(&[s, 8.0]).unwrap();
    assert!(combined < s);
    let event = |c: f64| DpEvent::poisson_gaussian(q, c).unwrap().repeated(40);
    let e = eps_of(event(combined), AccountantKind::Rdp);
    assert!(e <= 2.0 && e > 1.95, "{e}");
    let d = data();
    let r = t.train(&d.train, None).unwrap();
    assert!((r.epsilon - e).abs() < 1e-9, "{} vs {e}", r.epsilon);
    // Each step released one noisy count (std 8) of a batch of ~200.
    assert!(t
        .records()
        .iter()
        .all(|rec| rec.statistics.len() == 1 && rec.statistics[0].abs() < 300.0));
}

#[test]
fn the_prv_step_limit_is_capped_at_the_planned_steps() {
    // A budget that allows far more steps than the run needs: the guard's step-limit
    // search must stop at the plan instead of failing.
    let d = data();
    let cfg = TrainerConfig::new(Epochs(0.25), BatchSize(100.0), Delta(1e-5))
        .with_budget(30.0)
        .with_accountant(AccountantKind::Prv)
        .with_seed(3);
    let mut t = PrivateTrainer::new(
        mlp(),
        Box::new(Sgd::new(0.1)),
        Box::new(FixedClip::new(1.0, 5.0).unwrap()),
        cfg,
        &d.train,
    )
    .unwrap();
    let r = t.train(&d.train, None).unwrap();
    assert_eq!(r.stop, dp_optim::StopReason::Completed);
    assert_eq!(r.steps, 10);
    assert!(r.epsilon < 30.0);
    // PRV is not evaluated per step.
    assert!(t.records().iter().all(|s| s.epsilon.is_none()));
}

/// An objective defined outside dp-core: the plain gradient of twice the loss, clipped by
/// the engine (what a BAM-like method plugs in).
struct DoubledLoss;
struct Twice;
impl Loss for Twice {
    fn loss_and_grad(&self, out: &Tensor, y: &Tensor) -> dp_core::Result<(Tensor, Tensor)> {
        let (l, g) = CrossEntropy.loss_and_grad(out, y)?;
        Ok(((l * 2.0)?, (g * 2.0)?))
    }
}
impl PerExampleObjective for DoubledLoss {
    fn name(&self) -> String {
        "doubled".into()
    }
    fn clipped_sum(
        &mut self,
        model: &mut dyn Model,
        x: &Tensor,
        y: &Tensor,
        _loss: &dyn Loss,
        clip: &mut dyn ClipStrategy,
        opts: &GradOptions,
    ) -> dp_optim::Result<ClippedBatch> {
        Ok(clipped_gradient(model, x, y, &Twice, clip, opts)?)
    }
}

/// An objective that states the wrong sensitivity.
struct Liar;
impl PerExampleObjective for Liar {
    fn name(&self) -> String {
        "liar".into()
    }
    fn clipped_sum(
        &mut self,
        model: &mut dyn Model,
        x: &Tensor,
        y: &Tensor,
        loss: &dyn Loss,
        _clip: &mut dyn ClipStrategy,
        opts: &GradOptions,
    ) -> dp_optim::Result<ClippedBatch> {
        Ok(clipped_gradient(
            model,
            x,
            y,
            loss,
            &mut FlatClip::new(100.0)?,
            opts,
        )?)
    }
}

#[test]
fn a_per_example_objective_replaces_the_gradient_and_cannot_change_the_sensitivity() {
    let d = data();
    let idx: Vec<usize> = (0..32).collect();
    let (x, y) = dp_optim::batch_tensors(&d.train, &idx, &Device::Cpu).unwrap();
    let run = |objective: Option<Box<dyn PerExampleObjective>>, loss: &dyn Loss| {
        let mut model = mlp();
        let mut plan = StepPlan::new(Box::new(FlatClip::new(1e3).unwrap()), 1.0, 1.0).unwrap();
        plan.objective = objective;
        let env = StepEnv {
            regime: Regime::ClipOnly,
            loss,
            grad_options: &GradOptions::default(),
        };
        take_step(
            &mut model,
            &mut std::iter::once(Ok((x.clone(), y.clone()))),
            &mut plan,
            &env,
            &mut GaussianNoise::seeded(0),
            &mut Sgd::new(0.0),
        )
        .map(|r| vec_of(&r.gradient))
    };
    let via_objective = run(Some(Box::new(DoubledLoss)), &CrossEntropy).unwrap();
    let via_loss = run(None, &Twice).unwrap();
    assert_eq!(via_objective, via_loss);
    assert!(matches!(
        run(Some(Box::new(Liar)), &CrossEntropy),
        Err(TrainError::InvalidConfig(_))
    ));
}

#[test]
fn the_loss_is_a_parameter_of_the_trainer() {
    let d = data();
    let run = |twice: bool| {
        let cfg = TrainerConfig::new(Epochs(0.05), BatchSize(100.0), Delta(1e-5))
            .with_seed(6)
            .with_regime(Regime::NonPrivate);
        let b = PrivateTrainer::builder(
            mlp(),
            Box::new(Sgd::new(0.1)),
            Box::new(FixedClip::new(1.0, 1.0).unwrap()),
            cfg,
        );
        let b = if twice { b.loss(Twice) } else { b };
        let mut t = b.build(&d.train).unwrap();
        t.train(&d.train, None).unwrap();
        t.records()[0].loss
    };
    let (one, two) = (run(false), run(true));
    assert!((two - 2.0 * one).abs() < 1e-4 * one, "{one} {two}");
}

#[test]
fn bad_budgets_and_budgets_on_non_private_runs_are_refused() {
    let d = data();
    let make = |cfg: TrainerConfig| {
        PrivateTrainer::new(
            mlp(),
            Box::new(Sgd::new(0.1)),
            Box::new(FixedClip::new(1.0, 1.0).unwrap()),
            cfg,
            &d.train,
        )
    };
    // A NaN or infinite budget would compare as "never exceeded" and switch the budget off;
    // ε = 0 would plan a run of zero steps and report success. All are refused with the
    // typed error, with and without calibration.
    for eps in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, -1.0] {
        for calibrate in [false, true] {
            let mut cfg =
                TrainerConfig::new(Epochs(0.1), BatchSize(100.0), Delta(1e-5)).with_budget(eps);
            if calibrate {
                cfg = cfg.calibrate_noise_from_budget();
            }
            assert!(
                matches!(
                    make(cfg),
                    Err(TrainError::Accounting(AccountingError::InvalidEpsilon(_)))
                ),
                "ε = {eps}, calibrate = {calibrate}"
            );
        }
    }
    assert!(make(
        TrainerConfig::new(Epochs(0.1), BatchSize(100.0), Delta(1e-5))
            .with_budget(3.0)
            .with_regime(Regime::ClipOnly)
    )
    .is_err());
    // A noise-only run may calibrate its σ as a private run would.
    let t = make(
        TrainerConfig::new(Epochs(0.1), BatchSize(100.0), Delta(1e-5))
            .with_budget(3.0)
            .calibrate_noise_from_budget()
            .with_regime(Regime::NoiseOnly),
    )
    .unwrap();
    assert!(t.method().noise_multiplier() < 1.0);
    assert_eq!(t.epsilon().unwrap(), f64::INFINITY);
}
