//! Loads every dataset that can be found, printing its source, size and load time.
//!
//! `cargo run -p dp-data --release --example load_all [-- <mnist-dir>]`
//! (the full-MNIST directory defaults to the development copy at `../shared/data/mnist`).

use std::path::PathBuf;
use std::time::Instant;

use dp_data::{load, load_mnist_idx, DatasetName, PoissonSampler};

fn main() -> Result<(), dp_data::DataError> {
    let t = Instant::now();
    let (d, src) = load(DatasetName::BundledMnist, None)?;
    println!(
        "bundled MNIST: {} train / {} test from {src} in {:.1?}",
        d.train.len(),
        d.test.len(),
        t.elapsed()
    );

    let t = Instant::now();
    match load(DatasetName::FashionMnist, None) {
        Ok((d, src)) => println!(
            "FashionMNIST: {} train / {} test from {src} in {:.1?}",
            d.train.len(),
            d.test.len(),
            t.elapsed()
        ),
        Err(e) => println!("FashionMNIST: not loaded: {e}"),
    }

    let mnist_dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist")
        });
    let t = Instant::now();
    match load_mnist_idx(&mnist_dir) {
        Ok(d) => println!(
            "MNIST: {} train / {} test from {} in {:.1?}",
            d.train.len(),
            d.test.len(),
            mnist_dir.display(),
            t.elapsed()
        ),
        Err(e) => println!("MNIST: not loaded: {e}"),
    }

    let mut s = PoissonSampler::new(60_000, 256.0 / 60_000.0, Some(0))?;
    let t = Instant::now();
    let total: usize = (0..s.steps_per_epoch()).map(|_| s.next_batch().len()).sum();
    println!(
        "one epoch of Poisson batches (N = 60000, q = 256/60000): {total} indices in {:.1?}",
        t.elapsed()
    );
    Ok(())
}
