//! Privacy budget calculator for DP-SGD with Poisson sampling (the same as `dp-lab budget`).
//!
//! ε for a run:
//!   cargo run --release --example privacy_budget -- --sampling-rate 0.004267 \
//!       --noise-multiplier 1.1 --steps 14062 --delta 1e-5 --accountant rdp
//! σ for a target ε (smallest noise multiplier meeting it):
//!   cargo run --release --example privacy_budget -- --sampling-rate 0.004267 \
//!       --target-epsilon 3 --epochs 60 --delta 1e-5 --accountant prv --json

use clap::Parser;
use dp_lab::pipeline::{budget, BudgetArgs};

/// Compute ε for a DP-SGD run, or calibrate the noise multiplier for a target ε.
#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: BudgetArgs,
}

fn main() {
    let cli = Cli::parse();
    match budget(&cli.args) {
        Ok((json, text)) => {
            if cli.args.json {
                println!("{json}");
            } else {
                println!("{text}");
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
