//! # dp-data: datasets, Poisson sampling and batching for differentially private training
//!
//! This crate loads data into plain contiguous `f32` buffers ([`Dataset`], [`Batch`]) and
//! produces the index sets of logical and physical batches. It deliberately has no deep
//! learning framework dependency: the trainer turns a [`Batch`] into a tensor with one
//! copy (`Batch::features` with shape `Batch::shape()`).
//!
//! ## Datasets
//!
//! | dataset | function | size (train/test) | example shape |
//! |---|---|---|---|
//! | bundled MNIST subset (compiled in, no download) | [`load_bundled_mnist`] | 4,000 / 1,000 | `[1, 28, 28]` |
//! | MNIST (IDX, `.gz` or raw) | [`load_mnist_idx`] | 60,000 / 10,000 | `[1, 28, 28]` |
//! | FashionMNIST (IDX) | [`load_fashion_mnist`] | 60,000 / 10,000 | `[1, 28, 28]` |
//! | CIFAR-10 (binary batches) | [`load_cifar10`] | 50,000 / 10,000 | `[3, 32, 32]` |
//! | tabular CSV, e.g. Adult | [`load_csv_split`], [`load_csv`] | as in the files | `[d]` |
//!
//! Image pixels are scaled to `[0, 1]` on load and **not** normalised; apply
//! [`Normalize`] with the stated constants ([`MNIST_MEAN`]/[`MNIST_STD`], ...).
//!
//! [`load`] finds a dataset by name in this order: explicit `--data-dir`, the
//! `DP_LAB_DATA` environment variable, the system location `/usr/share/datasets/<name>/`
//! (e.g. `apt-get install dataset-fashion-mnist`), and finally — for MNIST only — the
//! bundled subset. It returns the [`DataSource`] used so runs can log their provenance.
//! Corrupt or missing files give a [`DataError`] naming the file and the problem (bad
//! magic number, truncated file, count or dimension mismatch, bad gzip), never a panic and
//! never silently fewer examples. This crate never downloads anything; users who want
//! automatic downloads from the Hugging Face hub can use the `candle-datasets` crate and
//! copy the tensors into a [`Dataset`] with [`Dataset::new`].
//!
//! ## Sampling
//!
//! [`PoissonSampler`] implements the sampling the DP-SGD accountant assumes (each example
//! independently with probability `q`, exact and fast via geometric skipping).
//! [`ShuffledSampler`] and [`FixedSizeSampler`] exist for comparison; every sampler
//! reports its [`SamplingScheme`] so the trainer can refuse Poisson accounting for the
//! others. Sampler state is serialisable ([`SamplerState`]) for exact checkpoint resume.
//! [`physical_batches`] splits a logical batch into memory-sized chunks.
//!
//! ```
//! use dp_data::{load_bundled_mnist, physical_batches, Normalize, PoissonSampler};
//! let mut data = load_bundled_mnist()?;
//! Normalize::mnist().apply_dataset(&mut data.train)?;
//! let mut sampler = PoissonSampler::new(data.train.len(), 0.01, Some(0))?;
//! for _step in 0..3 {
//!     let logical = sampler.next_batch(); // may be empty: still a step
//!     for chunk in physical_batches(&logical, 16) {
//!         let batch = data.train.gather(chunk);
//!         assert_eq!(batch.shape()[1..], [1, 28, 28]);
//!         // trainer: per-sample grads, clip, accumulate the clipped sum
//!     }
//!     // trainer: add noise once, divide by sampler.expected_batch_size()
//! }
//! # Ok::<(), dp_data::DataError>(())
//! ```

#![deny(missing_docs)]

pub mod bundled;
pub mod cifar;
pub mod csv;
pub mod dataset;
pub mod error;
mod fileio;
pub mod idx;
mod rng;
pub mod sampling;
pub mod scattering;
pub mod source;
pub mod subsets;
pub mod transforms;

pub use bundled::{load_bundled_mnist, load_bundled_mnist_all, BUNDLED_SPLIT_SEED};
pub use cifar::{load_cifar10, load_cifar10_with_records};
pub use csv::{
    load_csv, load_csv_split, read_csv_rows, ColumnKind, CsvRow, CsvSpec, TabularEncoder,
};
pub use dataset::{Batch, Dataset, TrainTest};
pub use error::DataError;
pub use idx::load_mnist_idx;
pub use sampling::{
    num_physical_batches, physical_batches, BatchSampler, FixedSizeSampler, PhysicalBatches,
    PoissonSampler, SamplerState, SamplingScheme, ShuffledSampler,
};
pub use scattering::Scattering2D;
pub use source::{load, load_fashion_mnist, resolve, DataSource, DatasetName, DATA_ENV_VAR};
pub use subsets::{
    esipova_imbalanced_mnist, fixed_size_subset, imbalanced_indices, imbalanced_subset,
    random_split,
};
pub use transforms::{
    augment_multiplicity, Augmentation, GroupNormalize, Normalize, CIFAR10_MEAN, CIFAR10_STD,
    FASHION_MNIST_MEAN, FASHION_MNIST_STD, MNIST_MEAN, MNIST_STD,
};
