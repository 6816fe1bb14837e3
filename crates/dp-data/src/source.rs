//! Where data comes from: explicit directory, `DP_LAB_DATA`, system location, bundled.
//!
//! Resolution order for [`load`] / [`resolve`]:
//!
//! 1. an explicit directory (the CLI's `--data-dir`) — used as is; if the files are not
//!    there this is an error, never a silent fallback;
//! 2. the environment variable [`DATA_ENV_VAR`] (`DP_LAB_DATA`), a root directory that
//!    holds one sub-directory per dataset (`$DP_LAB_DATA/mnist`, `.../fashion-mnist`,
//!    `.../cifar-10-batches-bin` or `.../cifar-10`); a value naming a directory that does
//!    not exist is an error;
//! 3. the standard system location `/usr/share/datasets/<name>/` (where e.g. the Debian
//!    package `dataset-fashion-mnist` installs FashionMNIST);
//! 4. the bundled default — only for MNIST, and only when neither 1 nor 2 was given (a
//!    user who named a data root asked for real data, so not finding it is an error): the
//!    5,000-digit subset compiled into the library ([`crate::load_bundled_mnist`]); reported as
//!    [`DataSource::BundledFallback`] so the trainer can print that it is *not* full MNIST.
//!
//! For 1 and 2 a directory may hold the files directly or in the dataset's sub-directory.
//! Users who want automatic downloads from the Hugging Face hub can use the
//! `candle-datasets` crate instead; dp-data deliberately stays free of network access.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::TrainTest;
use crate::error::DataError;
use crate::fileio::find_file;

/// Environment variable naming a root directory of datasets.
pub const DATA_ENV_VAR: &str = "DP_LAB_DATA";
/// Root of the standard system dataset location.
pub const SYSTEM_DATA_ROOT: &str = "/usr/share/datasets";

/// The datasets [`load`] knows about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DatasetName {
    /// The bundled 5,000-digit MNIST subset (4,000 train / 1,000 test).
    BundledMnist,
    /// Full MNIST (60,000 / 10,000), IDX files.
    Mnist,
    /// FashionMNIST (60,000 / 10,000), IDX files.
    FashionMnist,
    /// CIFAR-10 (50,000 / 10,000), binary batches.
    Cifar10,
}

impl DatasetName {
    /// Directory names looked for under a data root, preferred first.
    pub fn dir_names(self) -> &'static [&'static str] {
        match self {
            DatasetName::BundledMnist => &[],
            DatasetName::Mnist => &["mnist", "MNIST"],
            DatasetName::FashionMnist => &["fashion-mnist", "fashion_mnist", "FashionMNIST"],
            DatasetName::Cifar10 => &["cifar-10-batches-bin", "cifar-10", "cifar10"],
        }
    }

    /// The canonical short name (`"mnist"`, `"fashion-mnist"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::BundledMnist => "bundled-mnist",
            DatasetName::Mnist => "mnist",
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Cifar10 => "cifar10",
        }
    }

    /// Whether `dir` itself holds this dataset's files.
    fn present_in(self, dir: &Path) -> bool {
        match self {
            DatasetName::BundledMnist => false,
            DatasetName::Mnist | DatasetName::FashionMnist => {
                find_file(dir, crate::idx::TRAIN_IMAGES).is_some()
            }
            DatasetName::Cifar10 => find_file(dir, &[crate::cifar::CIFAR10_TEST_FILE]).is_some(),
        }
    }

    /// `dir` if it holds the files, else the first `dir/<dir_name>` that does.
    fn locate_under(self, dir: &Path) -> Option<PathBuf> {
        if self.present_in(dir) {
            return Some(dir.to_path_buf());
        }
        self.dir_names()
            .iter()
            .map(|n| dir.join(n))
            .find(|d| self.present_in(d))
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DatasetName {
    type Err = DataError;

    /// Parses `bundled-mnist`, `mnist`, `fashion-mnist` (or `fashion_mnist`,
    /// `fashionmnist`), `cifar10` (or `cifar-10`), case-insensitively.
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "bundled-mnist" | "bundled" | "mnist-5k" => Ok(DatasetName::BundledMnist),
            "mnist" => Ok(DatasetName::Mnist),
            "fashion-mnist" | "fashionmnist" => Ok(DatasetName::FashionMnist),
            "cifar10" | "cifar-10" => Ok(DatasetName::Cifar10),
            other => Err(DataError::InvalidArgument(format!(
                "unknown dataset {other:?} (expected bundled-mnist, mnist, fashion-mnist or cifar10)"
            ))),
        }
    }
}

/// Where a dataset was loaded from; print it so every run records its data provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataSource {
    /// The directory given explicitly (`--data-dir`).
    ExplicitDir(PathBuf),
    /// A directory found through `DP_LAB_DATA`.
    EnvVar(PathBuf),
    /// The standard system location.
    System(PathBuf),
    /// The bundled 5k MNIST subset, requested explicitly.
    Bundled,
    /// The bundled 5k MNIST subset used because full MNIST was not found anywhere.
    BundledFallback {
        /// Locations searched before falling back.
        searched: Vec<PathBuf>,
    },
}

impl DataSource {
    /// The directory read, if any.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            DataSource::ExplicitDir(p) | DataSource::EnvVar(p) | DataSource::System(p) => Some(p),
            DataSource::Bundled | DataSource::BundledFallback { .. } => None,
        }
    }
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSource::ExplicitDir(p) => write!(f, "directory {} (--data-dir)", p.display()),
            DataSource::EnvVar(p) => write!(f, "directory {} (via ${DATA_ENV_VAR})", p.display()),
            DataSource::System(p) => write!(f, "system location {}", p.display()),
            DataSource::Bundled => f.write_str("bundled MNIST subset (5,000 digits, compiled in)"),
            DataSource::BundledFallback { searched } => {
                write!(
                    f,
                    "bundled MNIST subset (5,000 digits, compiled in) — full MNIST NOT found in: "
                )?;
                let list: Vec<String> = searched.iter().map(|p| p.display().to_string()).collect();
                if list.is_empty() {
                    f.write_str("(nowhere searched)")
                } else {
                    f.write_str(&list.join(", "))
                }
            }
        }
    }
}

/// Resolves where `name` would be loaded from, without loading it; `data_dir` is the
/// explicit directory, if any. See the module docs for the order.
///
/// ```
/// use dp_data::{resolve, DataSource, DatasetName};
/// assert_eq!(resolve(DatasetName::BundledMnist, None)?, DataSource::Bundled);
/// // An explicit directory without the files is an error naming it, not a fallback.
/// assert!(resolve(DatasetName::Mnist, Some(std::path::Path::new("/nonexistent"))).is_err());
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub fn resolve(name: DatasetName, data_dir: Option<&Path>) -> Result<DataSource, DataError> {
    let env = std::env::var_os(DATA_ENV_VAR).map(PathBuf::from);
    resolve_with(name, data_dir, env.as_deref(), Path::new(SYSTEM_DATA_ROOT))
}

/// [`resolve`] with the environment directory and system root passed in (for tests and
/// for callers that manage their own configuration).
///
/// ```
/// use dp_data::{source::resolve_with, DataSource, DatasetName};
/// use std::path::Path;
/// let src = resolve_with(DatasetName::Mnist, None, None, Path::new("/nonexistent"))?;
/// assert!(matches!(src, DataSource::BundledFallback { .. }));
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub fn resolve_with(
    name: DatasetName,
    data_dir: Option<&Path>,
    env_dir: Option<&Path>,
    system_root: &Path,
) -> Result<DataSource, DataError> {
    if name == DatasetName::BundledMnist {
        return Ok(DataSource::Bundled);
    }
    if let Some(dir) = data_dir {
        return match name.locate_under(dir) {
            Some(d) => Ok(DataSource::ExplicitDir(d)),
            None => Err(DataError::NotFound {
                name: name.to_string(),
                searched: std::iter::once(dir.to_path_buf())
                    .chain(name.dir_names().iter().map(|n| dir.join(n)))
                    .collect(),
            }),
        };
    }
    // A root the user named through the environment (an empty value counts as unset) rules
    // out the silent fallback to the 4,000 bundled digits: the user asked for real data. A
    // root that does not exist is an error at once; a root without this dataset is
    // searched past (the system location may have it), but never falls back to the bundle.
    let env_dir = env_dir.filter(|d| !d.as_os_str().is_empty());
    let mut searched = Vec::new();
    if let Some(env_dir) = env_dir {
        if !env_dir.is_dir() {
            return Err(DataError::NotFound {
                name: format!("{name} (${DATA_ENV_VAR} names a directory that does not exist)"),
                searched: vec![env_dir.to_path_buf()],
            });
        }
        if let Some(d) = name.locate_under(env_dir) {
            return Ok(DataSource::EnvVar(d));
        }
        searched.push(env_dir.to_path_buf());
        searched.extend(name.dir_names().iter().map(|n| env_dir.join(n)));
    }
    for n in name.dir_names() {
        let d = system_root.join(n);
        if name.present_in(&d) {
            return Ok(DataSource::System(d));
        }
        searched.push(d);
    }
    if name == DatasetName::Mnist && env_dir.is_none() {
        return Ok(DataSource::BundledFallback { searched });
    }
    Err(DataError::NotFound {
        name: name.to_string(),
        searched,
    })
}

/// Loads `name` from the given source (as returned by [`resolve`]).
///
/// ```
/// use dp_data::{source::load_from, DataSource, DatasetName};
/// let data = load_from(DatasetName::BundledMnist, &DataSource::Bundled)?;
/// assert_eq!(data.test.len(), 1000);
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub fn load_from(name: DatasetName, source: &DataSource) -> Result<TrainTest, DataError> {
    match (source, name) {
        (DataSource::Bundled | DataSource::BundledFallback { .. }, _) => {
            crate::bundled::load_bundled_mnist()
        }
        (_, DatasetName::BundledMnist) => crate::bundled::load_bundled_mnist(),
        (src, name) => {
            let dir = src.dir().ok_or_else(|| {
                DataError::InvalidArgument(format!("source {src} has no directory"))
            })?;
            match name {
                DatasetName::Mnist => crate::idx::load_mnist_idx(dir),
                DatasetName::FashionMnist => crate::idx::load_fashion_mnist_dir(dir),
                DatasetName::Cifar10 => crate::cifar::load_cifar10(dir),
                DatasetName::BundledMnist => crate::bundled::load_bundled_mnist(),
            }
        }
    }
}

/// Resolves (see [`resolve`]) and loads a dataset, returning it with its source.
///
/// Pixels are scaled to `[0, 1]`, not normalised; apply [`crate::Normalize`] as needed.
///
/// ```
/// use dp_data::{load, DatasetName};
/// let (data, source) = load(DatasetName::BundledMnist, None)?;
/// println!("loaded {} training examples from {source}", data.train.len());
/// assert_eq!(data.train.len(), 4000);
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub fn load(
    name: DatasetName,
    data_dir: Option<&Path>,
) -> Result<(TrainTest, DataSource), DataError> {
    let source = resolve(name, data_dir)?;
    let data = load_from(name, &source)?;
    Ok((data, source))
}

/// Loads FashionMNIST (same IDX format and file names as MNIST).
///
/// With `dir = None` the files are looked up the same way as [`load`] does
/// (`DP_LAB_DATA`, then the system location [`crate::idx::FASHION_MNIST_SYSTEM_DIR`] installed by
/// `apt-get install dataset-fashion-mnist`). Returns 60,000 training and 10,000 test
/// examples of shape `[1, 28, 28]`, pixels in `[0, 1]`.
///
/// ```no_run
/// let data = dp_data::load_fashion_mnist(None)?;
/// assert_eq!(data.test.len(), 10_000);
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub fn load_fashion_mnist(dir: Option<&Path>) -> Result<TrainTest, DataError> {
    match dir {
        Some(d) => crate::idx::load_fashion_mnist_dir(d),
        None => load(DatasetName::FashionMnist, None).map(|(d, _)| d),
    }
}
