//! The metrics a run computes on its model, by name (`RunConfig::metrics`). Analysis only:
//! computed without noise on fixed probe sets and never fed back into training, so they cost
//! no privacy only because they are not released (dp-metrics' contract). Every value is a
//! scalar under a dotted name (`per_class_accuracy.3`, `membership_auc`), so results merge
//! into one table.

use super::config::RunConfig;
use super::error::Result;
use candle_core::Device;
use dp_core::{CrossEntropy, Loss, Model, Sequential};
use dp_data::{Dataset, TrainTest};
use dp_metrics::{
    accuracy_by_class, hutchinson_trace, layer_activations, linear_cka, linspace,
    loss_threshold_attack, max_eigenvalue, name_params, random_direction_sharpness,
    random_slice_1d, sparsity_report, tv_summary_1d, BiasHandling, CoreModelSurface,
    HutchinsonConfig, PowerIterationConfig, SharpnessConfig, Threshold, DEFAULT_FPR_LEVELS,
};
use dp_optim::{batch_tensors, predicted_classes, PrivateTrainer};
use std::collections::BTreeMap;

/// Scalar metrics by name.
pub type Metrics = BTreeMap<String, f64>;

/// Finite-difference step of the HVPs on f32 parameters (dp-metrics refuses shorter ones).
const HVP_EPS_F32: f64 = 1e-4;
/// Sharpness radius ρ (filter-normalised directions).
const SHARPNESS_RADIUS: f64 = 0.05;
/// Examples per side of the membership-inference attack.
const MIA_EXAMPLES: usize = 1000;

/// `k` indices spread evenly over `0..n` (a fixed, data-independent probe choice).
fn spread(n: usize, k: usize) -> Vec<usize> {
    let k = k.min(n);
    (0..k).map(|i| i * n / k).collect()
}

fn losses(model: &mut Sequential, data: &Dataset, idx: &[usize], dev: &Device) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(idx.len());
    for chunk in idx.chunks(500) {
        let (x, y) = batch_tensors(data, chunk, dev)?;
        let logits = model.forward(&x, false)?;
        out.extend(CrossEntropy.loss(&logits, &y)?.to_vec1::<f32>()?);
    }
    Ok(out)
}

fn per_class(
    model: &mut Sequential,
    test: &Dataset,
    dev: &Device,
    out: &mut Metrics,
) -> Result<()> {
    let preds = predicted_classes(model, test, dev, 1000)?;
    let labels: Vec<usize> = test.labels().iter().map(|&l| l as usize).collect();
    let r = accuracy_by_class(&preds, &labels)?;
    for g in &r.groups {
        out.insert(format!("per_class_accuracy.{}", g.group), g.accuracy);
    }
    let worst = r
        .groups
        .iter()
        .map(|g| g.accuracy)
        .fold(f64::INFINITY, f64::min);
    out.insert("per_class_accuracy.worst".into(), worst);
    Ok(())
}

/// Computes `cfg.metrics` on the trainer's current model.
pub fn compute_metrics(
    cfg: &RunConfig,
    trainer: &mut PrivateTrainer<Sequential>,
    data: &TrainTest,
    dev: &Device,
) -> Result<Metrics> {
    let mut out = Metrics::new();
    let wants = |m: &str| cfg.metrics.iter().any(|x| x == m);
    if wants("clipping_bias") {
        let recs = trainer.records();
        let mean = |f: &dyn Fn(&dp_optim::StepRecord) -> Option<f64>| {
            let v: Vec<f64> = recs
                .iter()
                .filter_map(f)
                .filter(|x| x.is_finite())
                .collect();
            if v.is_empty() {
                f64::NAN
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        out.insert(
            "clipping_bias".into(),
            mean(&|r| r.clipping_bias.map(|b| b.l2)),
        );
        out.insert(
            "clip_cosine".into(),
            mean(&|r| r.clipping_bias.map(|b| b.cosine)),
        );
        out.insert(
            "fraction_clipped".into(),
            mean(&|r| Some(r.fraction_clipped)),
        );
    }
    let model = trainer.model_mut();
    if wants("per_class_accuracy") {
        per_class(model, &data.test, dev, &mut out)?;
    }
    if wants("membership_auc") {
        let k = MIA_EXAMPLES.min(data.train.len()).min(data.test.len());
        let members = losses(model, &data.train, &spread(data.train.len(), k), dev)?;
        let non = losses(model, &data.test, &spread(data.test.len(), k), dev)?;
        let r = loss_threshold_attack(&members, &non, &DEFAULT_FPR_LEVELS)?;
        out.insert("membership_auc".into(), r.auc);
        out.insert("membership_advantage".into(), r.advantage);
    }
    if wants("sparsity") {
        let r = sparsity_report(
            &name_params(&model.param_tensors()),
            Threshold::Absolute(0.0),
        )?;
        out.insert("sparsity".into(), r.global_sparsity);
    }
    let landscape = ["sharpness", "lambda_max", "hessian_trace", "landscape_tv"];
    if landscape.iter().any(|m| wants(m)) {
        let (x, y) = batch_tensors(&data.train, &spread(data.train.len(), cfg.probe_size), dev)?;
        let mut surface = CoreModelSurface::new(model, x, y)?;
        let theta = dp_metrics::LossSurface::parameters(&surface);
        let seed = cfg.seed ^ 0x006d_6574_7269_6373;
        if wants("sharpness") {
            let r = random_direction_sharpness(
                &mut surface,
                &theta,
                &SharpnessConfig {
                    radii: vec![SHARPNESS_RADIUS],
                    num_directions: 5,
                    seed,
                    bias: BiasHandling::Zero,
                },
            )?;
            out.insert("sharpness".into(), r.radii[0].sharpness);
        }
        if wants("lambda_max") {
            let r = max_eigenvalue(
                &mut surface,
                &theta,
                &PowerIterationConfig {
                    max_iter: 20,
                    tol: 1e-3,
                    seed,
                    eps_scale: HVP_EPS_F32,
                },
            )?;
            out.insert("lambda_max".into(), r.eigenvalue);
        }
        if wants("hessian_trace") {
            let r = hutchinson_trace(
                &mut surface,
                &theta,
                &HutchinsonConfig {
                    max_probes: 10,
                    min_probes: 10,
                    rel_tol: 0.0,
                    seed,
                    eps_scale: HVP_EPS_F32,
                },
            )?;
            out.insert("hessian_trace".into(), r.trace);
        }
        if wants("landscape_tv") {
            let s = random_slice_1d(
                &mut surface,
                &theta,
                seed,
                BiasHandling::Zero,
                &linspace(-1.0, 1.0, 21),
            )?;
            let tv = tv_summary_1d(&s.losses)?;
            out.insert("landscape_tv".into(), tv.tv);
            out.insert("landscape_roughness".into(), tv.roughness);
        }
    }
    Ok(out)
}

/// Linear CKA (Kornblith et al. 2019) between the penultimate-layer representations of two
/// models of one architecture on `k` test examples spread over the test set: how far private
/// training moved the representation from the non-private one (1 = the same up to rotation
/// and scale). Analysis only.
pub fn penultimate_cka(
    a: &mut Sequential,
    b: &mut Sequential,
    test: &Dataset,
    k: usize,
    dev: &Device,
) -> Result<f64> {
    let layer = a.len().saturating_sub(2);
    let (x, _) = batch_tensors(test, &spread(test.len(), k), dev)?;
    Ok(linear_cka(
        &layer_activations(a, &x, layer)?,
        &layer_activations(b, &x, layer)?,
    )?)
}
