//! What the examples share: the dataset choice of their command lines.

use anyhow::{Context, Result};
use dp_lab::data::{load, DatasetName, Normalize, TrainTest};
use std::path::Path;

/// `--dataset`: the real datasets every example runs on.
#[derive(Clone, Copy, clap::ValueEnum, Debug, PartialEq, Eq)]
pub enum Data {
    /// 5,000 real MNIST digits compiled into dp-data (4,000 train / 1,000 test).
    Bundled,
    /// Full MNIST from --data-dir, DP_LAB_DATA or /usr/share/datasets/mnist.
    Mnist,
    /// Full FashionMNIST (apt-get install dataset-fashion-mnist).
    FashionMnist,
}

/// A loaded dataset, normalised with its own per-pixel mean and std.
pub struct Loaded {
    pub data: TrainTest,
    /// The name in the examples' JSON lines.
    pub label: &'static str,
    /// Where it was read from.
    pub source: String,
}

impl Data {
    /// Loads the dataset (from `dir` if given) and normalises both splits.
    pub fn load(self, dir: Option<&Path>) -> Result<Loaded> {
        let (mut l, norm) = self.load_raw(dir)?;
        norm.apply_dataset(&mut l.data.train)?;
        norm.apply_dataset(&mut l.data.test)?;
        Ok(l)
    }

    /// The dataset with pixels in `[0, 1]` (not normalised), and the normalisation
    /// [`Data::load`] would apply (for features computed from raw pixels, e.g. scattering).
    pub fn load_raw(self, dir: Option<&Path>) -> Result<(Loaded, Normalize)> {
        let (name, norm, label) = match self {
            Data::Bundled => (
                DatasetName::BundledMnist,
                Normalize::mnist(),
                "bundled-mnist-5k",
            ),
            Data::Mnist => (DatasetName::Mnist, Normalize::mnist(), "mnist"),
            Data::FashionMnist => (
                DatasetName::FashionMnist,
                Normalize::fashion_mnist(),
                "fashion-mnist",
            ),
        };
        let (data, source) = load(name, dir).context("loading the dataset")?;
        Ok((
            Loaded {
                data,
                label,
                source: source.to_string(),
            },
            norm,
        ))
    }

    /// [`Data::load`], then says on stderr what was loaded from where.
    #[allow(dead_code)] // each example compiles this module; not all of them call this
    pub fn load_reported(self, dir: Option<&Path>) -> Result<Loaded> {
        let l = self.load(dir)?;
        eprintln!(
            "{}: {} train / {} test examples from {}",
            l.label,
            l.data.train.len(),
            l.data.test.len(),
            l.source
        );
        Ok(l)
    }
}

/// Refuses a command-line value that must be finite and > 0, naming the flag: checked before
/// any work starts, so a typo fails at once instead of after the runs that do not use it.
#[allow(dead_code)] // each example compiles this module; not all of them call this
pub fn positive(flag: &str, value: f64) -> Result<f64> {
    anyhow::ensure!(
        value.is_finite() && value > 0.0,
        "{flag} = {value}: must be finite and > 0"
    );
    Ok(value)
}
