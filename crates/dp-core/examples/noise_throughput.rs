//! Gaussian noise throughput: how long one DP step's noise takes for a model of a given
//! size (default: the 784-256-256-10 MLP's 269,322 parameters).
//!
//! ```text
//! cargo run --release -p dp-core --example noise_throughput -- [parameters] [draws]
//! RAYON_NUM_THREADS=1 cargo run --release -p dp-core --example noise_throughput
//! ```
use std::time::Instant;

fn main() -> dp_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(269_322);
    let reps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let mut noise = dp_core::GaussianNoise::seeded(1);
    let _ = noise.sample(n, 1.0)?; // warm-up: tables, thread pool
    let start = Instant::now();
    let mut check = 0f32;
    for _ in 0..reps {
        check += noise.sample(n, 1.0)?[0];
    }
    let s = start.elapsed().as_secs_f64() / reps as f64;
    println!(
        "{n} normals: {:.3} ms per draw, {:.1} M normals/s on {} threads (checksum {check:.4})",
        s * 1e3,
        n as f64 / s / 1e6,
        rayon::current_num_threads()
    );
    Ok(())
}
