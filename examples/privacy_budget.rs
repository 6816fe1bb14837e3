//! Privacy budget calculator for DP-SGD with Poisson sampling.
//!
//! ε for a run:
//!   cargo run --release --example privacy_budget -- --sampling-rate 0.004267 \
//!       --noise-multiplier 1.1 --steps 14062 --delta 1e-5 --accountant rdp
//! σ for a target ε (smallest noise multiplier meeting it):
//!   cargo run --release --example privacy_budget -- --sampling-rate 0.004267 \
//!       --target-epsilon 3 --epochs 60 --delta 1e-5 --accountant prv --json

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Parser, ValueEnum};
use dp_lab::accounting::calibration::{calibrate_noise_multiplier_with, epsilon_with};
use dp_lab::accounting::{
    steps_for_epochs, Accountant, AccountantKind, AnyAccountant, Conversion, DpEvent,
};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ConversionArg {
    Balle,
    Classic,
}

/// Compute ε for a DP-SGD run, or calibrate the noise multiplier for a target ε.
#[derive(Debug, Parser)]
#[command(group(ArgGroup::new("noise").required(true).args(["noise_multiplier", "target_epsilon"])))]
#[command(group(ArgGroup::new("length").required(true).args(["steps", "epochs"])))]
struct Args {
    /// Poisson sampling rate q = expected batch size / dataset size, in (0, 1].
    #[arg(long)]
    sampling_rate: f64,
    /// Noise multiplier σ (noise std / clipping norm).
    #[arg(long)]
    noise_multiplier: Option<f64>,
    /// Target ε: print the smallest σ that meets it instead of ε.
    #[arg(long)]
    target_epsilon: Option<f64>,
    /// Number of training steps.
    #[arg(long)]
    steps: Option<u64>,
    /// Number of epochs (steps = ⌈epochs / q⌉).
    #[arg(long)]
    epochs: Option<f64>,
    /// Target δ, in (0, 1).
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// Accountant: rdp or prv.
    #[arg(long, default_value_t = AccountantKind::default())]
    accountant: AccountantKind,
    /// RDP → (ε, δ) conversion (RDP only).
    #[arg(long, value_enum, default_value_t = ConversionArg::Balle)]
    conversion: ConversionArg,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let steps = match (args.steps, args.epochs) {
        (Some(0), _) => bail!("--steps must be at least 1"),
        (Some(s), _) => s,
        (None, Some(e)) => {
            steps_for_epochs(e, args.sampling_rate).context("invalid --epochs / --sampling-rate")?
        }
        (None, None) => bail!("one of --steps or --epochs is required"),
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
                .context("noise calibration failed")?
        }
        _ => bail!("give exactly one of --noise-multiplier or --target-epsilon"),
    };
    let event = DpEvent::poisson_gaussian(args.sampling_rate, sigma)
        .context("invalid mechanism parameters")?
        .repeated(steps);

    let mut out = serde_json::json!({
        "noise_multiplier": sigma,
        "delta": args.delta,
        "steps": steps,
        "sampling_rate": args.sampling_rate,
    });
    let mut acc = proto.fresh();
    acc.compose(&event)?;
    out["accountant"] = acc.name().into();
    // Accountant-specific reports: the optimal RDP order, or PRV's bounds.
    let text = match &acc {
        AnyAccountant::Rdp(acc) => {
            let r = acc
                .epsilon_with_order(args.delta)
                .context("ε computation failed")?;
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
                .context("ε computation failed")?;
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
        let eps = epsilon_with(&proto, args.sampling_rate, sigma, steps, args.delta)?;
        out["target_epsilon"] = target.into();
        if eps > target {
            bail!("internal error: calibrated σ = {sigma} gives ε = {eps} > target {target}");
        }
    }
    if args.json {
        println!("{out}");
    } else if args.target_epsilon.is_some() {
        println!(
            "σ = {sigma:.4} for q = {}, {steps} steps, δ = {}: {text}",
            args.sampling_rate, args.delta
        );
    } else {
        println!("{text}");
    }
    Ok(())
}
