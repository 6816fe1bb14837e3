//! `dp-lab budget`: ε of a DP-SGD run with Poisson sampling, or the noise multiplier σ for
//! a target ε (also `examples/privacy_budget.rs`).

use super::error::{PipelineError, Result};
use clap::{ArgGroup, ValueEnum};
use dp_accounting::calibration::{calibrate_noise_multiplier_with, epsilon_with};
use dp_accounting::{
    steps_for_epochs, Accountant, AccountantKind, AnyAccountant, Conversion, DpEvent,
};

fn other(m: impl Into<String>) -> PipelineError {
    PipelineError::Other(m.into())
}

fn ctx<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> PipelineError {
    move |e| PipelineError::Other(format!("{what}: {e}"))
}

/// The RDP → (ε, δ) conversion.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ConversionArg {
    /// Balle et al. 2020 (tighter).
    Balle,
    /// The classic conversion (Mironov 2017).
    Classic,
}

/// Compute ε for a DP-SGD run, or calibrate the noise multiplier for a target ε.
///
/// ```
/// use clap::Parser;
/// #[derive(Parser)]
/// struct Cli { #[command(flatten)] b: dp_lab::pipeline::BudgetArgs }
/// let cli = Cli::parse_from(["x", "--sampling-rate", "0.004266", "--noise-multiplier", "1.1", "--steps", "14062"]);
/// let (json, _) = dp_lab::pipeline::budget(&cli.b).unwrap();
/// let eps = json["epsilon"].as_f64().unwrap();
/// assert!(eps > 1.0 && eps < 10.0);
/// ```
#[derive(Debug, Clone, clap::Args)]
#[command(group(ArgGroup::new("noise").required(true).args(["noise_multiplier", "target_epsilon"])))]
#[command(group(ArgGroup::new("length").required(true).args(["steps", "epochs"])))]
pub struct BudgetArgs {
    /// Poisson sampling rate q = expected batch size / dataset size, in (0, 1].
    #[arg(long)]
    pub sampling_rate: f64,
    /// Noise multiplier σ (noise std / clipping norm).
    #[arg(long)]
    pub noise_multiplier: Option<f64>,
    /// Target ε: print the smallest σ that meets it instead of ε.
    #[arg(long)]
    pub target_epsilon: Option<f64>,
    /// Number of training steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Number of epochs (steps = ⌈epochs / q⌉).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Target δ, in (0, 1).
    #[arg(long, default_value_t = 1e-5)]
    pub delta: f64,
    /// Accountant: rdp or prv.
    #[arg(long, default_value_t = AccountantKind::default())]
    pub accountant: AccountantKind,
    /// RDP → (ε, δ) conversion (RDP only).
    #[arg(long, value_enum, default_value_t = ConversionArg::Balle)]
    pub conversion: ConversionArg,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Computes ε (or calibrates σ) as `args` asks; returns the JSON object and the text line.
pub fn budget(args: &BudgetArgs) -> Result<(serde_json::Value, String)> {
    let steps = match (args.steps, args.epochs) {
        (Some(0), _) => return Err(other("--steps must be at least 1")),
        (Some(s), _) => s,
        (None, Some(e)) => steps_for_epochs(e, args.sampling_rate)
            .map_err(ctx("invalid --epochs / --sampling-rate"))?,
        (None, None) => return Err(other("one of --steps or --epochs is required")),
    };
    let conversion = match args.conversion {
        ConversionArg::Balle => Conversion::Balle,
        ConversionArg::Classic => Conversion::Classic,
    };
    // The selected accountant's prototype; the RDP conversion is its only option here.
    let mut proto = AnyAccountant::new(args.accountant);
    if let AnyAccountant::Rdp(rdp) = &mut proto {
        *rdp = rdp.clone().with_conversion(conversion);
    }

    let sigma = match (args.noise_multiplier, args.target_epsilon) {
        (Some(s), None) => s,
        (None, Some(target)) => {
            calibrate_noise_multiplier_with(&proto, target, args.delta, args.sampling_rate, steps)
                .map_err(ctx("noise calibration failed"))?
        }
        _ => {
            return Err(other(
                "give exactly one of --noise-multiplier or --target-epsilon",
            ))
        }
    };
    let event = DpEvent::poisson_gaussian(args.sampling_rate, sigma)
        .map_err(ctx("invalid mechanism parameters"))?
        .repeated(steps);

    let mut out = serde_json::json!({
        "noise_multiplier": sigma,
        "delta": args.delta,
        "steps": steps,
        "sampling_rate": args.sampling_rate,
    });
    let mut acc = proto.fresh();
    acc.compose(&event).map_err(ctx("composition failed"))?;
    out["accountant"] = acc.name().into();
    // Accountant-specific reports: the optimal RDP order, or PRV's bounds.
    let text = match &acc {
        AnyAccountant::Rdp(acc) => {
            let r = acc
                .epsilon_with_order(args.delta)
                .map_err(ctx("ε computation failed"))?;
            out["conversion"] = format!("{conversion:?}").to_lowercase().into();
            out["epsilon"] = r.epsilon.into();
            out["optimal_order"] = r.optimal_order.into();
            out["order_on_grid_edge"] = r.on_grid_edge.into();
            format!(
                "ε = {:.4} (RDP, {} conversion, optimal order α = {}){}",
                r.epsilon,
                format!("{conversion:?}").to_lowercase(),
                r.optimal_order,
                if r.on_grid_edge {
                    " — warning: optimum on the edge of the order grid"
                } else {
                    ""
                }
            )
        }
        AnyAccountant::Prv(acc) => {
            let b = acc
                .epsilon_bounds(args.delta)
                .map_err(ctx("ε computation failed"))?;
            out["epsilon"] = b.upper.into();
            out["epsilon_lower"] = b.lower.into();
            out["epsilon_estimate"] = b.estimate.into();
            out["eps_error"] = acc.eps_error().into();
            format!(
                "ε ≤ {:.4} (PRV certified upper bound; estimate {:.4}, lower bound {:.4})",
                b.upper, b.estimate, b.lower
            )
        }
    };
    // Sanity check that the calibrated σ really meets the target with the same accountant.
    if let Some(target) = args.target_epsilon {
        let eps = epsilon_with(&proto, args.sampling_rate, sigma, steps, args.delta)
            .map_err(ctx("ε computation failed"))?;
        out["target_epsilon"] = target.into();
        if eps > target {
            return Err(other(format!(
                "internal error: calibrated σ = {sigma} gives ε = {eps} > target {target}"
            )));
        }
    }
    let text = if args.target_epsilon.is_some() {
        format!(
            "σ = {sigma:.4} for q = {}, {steps} steps, δ = {}: {text}",
            args.sampling_rate, args.delta
        )
    } else {
        text
    };
    Ok((out, text))
}
