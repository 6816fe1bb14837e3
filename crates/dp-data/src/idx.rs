//! MNIST-family loaders for the IDX format (gzip-compressed or raw): parsing IDX files and
//! reading a directory of the four standard files. Finding that directory (`DP_LAB_DATA`,
//! the system location, ...) is [`crate::source`]'s job; this module depends on it only
//! for the compatibility re-export of [`load_fashion_mnist`].
//!
//! IDX layout (big-endian): a 4-byte magic `0x0000TTDD` (`TT` = element type, `0x08` for
//! unsigned bytes; `DD` = number of dimensions), then one `u32` per dimension, then the
//! data. Image files are `0x00000803` (`[n, rows, cols]`), label files `0x00000801`
//! (`[n]`). Every byte of the file is checked: a short file is reported as truncated, a
//! long one as malformed, so a damaged download can never yield silently fewer examples.

use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, TrainTest};
use crate::error::DataError;
use crate::fileio::{read_maybe_gz, require_file};

/// Magic number of an IDX file of unsigned bytes with 3 dimensions (images).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with 1 dimension (labels).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// A parsed IDX file of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimensions from the header, e.g. `[60000, 28, 28]`.
    pub dims: Vec<usize>,
    /// The raw bytes, row-major.
    pub data: Vec<u8>,
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Parses the (already decompressed) bytes of an IDX file, checking the magic number and
/// that the data length is exactly what the header declares.
///
/// ```
/// use dp_data::idx::{parse_idx, IDX_LABELS_MAGIC};
/// let mut bytes = IDX_LABELS_MAGIC.to_be_bytes().to_vec();
/// bytes.extend_from_slice(&3u32.to_be_bytes());
/// bytes.extend_from_slice(&[7, 2, 1]);
/// let arr = parse_idx(std::path::Path::new("labels"), &bytes, IDX_LABELS_MAGIC)?;
/// assert_eq!(arr.dims, vec![3]);
/// assert_eq!(arr.data, vec![7, 2, 1]);
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub fn parse_idx(path: &Path, bytes: &[u8], expected_magic: u32) -> Result<IdxArray, DataError> {
    let truncated = |expected: u64| DataError::Truncated {
        path: path.to_path_buf(),
        expected,
        found: bytes.len() as u64,
    };
    let magic = be_u32(bytes, 0).ok_or_else(|| truncated(4))?;
    if magic != expected_magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found: magic,
            expected: expected_magic,
        });
    }
    let ndims = (expected_magic & 0xff) as usize;
    let header_len = 4 + 4 * ndims;
    let mut dims = Vec::with_capacity(ndims);
    for k in 0..ndims {
        let d = be_u32(bytes, 4 + 4 * k).ok_or_else(|| truncated(header_len as u64))?;
        dims.push(d as usize);
    }
    let data_len = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| DataError::Malformed {
            path: path.to_path_buf(),
            reason: format!("header dimensions {dims:?} overflow"),
        })?;
    let expected = header_len as u64 + data_len;
    let found = bytes.len() as u64;
    if found < expected {
        return Err(truncated(expected));
    }
    if found > expected {
        return Err(DataError::Malformed {
            path: path.to_path_buf(),
            reason: format!(
                "{} trailing bytes after the {expected} bytes the header {dims:?} declares",
                found - expected
            ),
        });
    }
    Ok(IdxArray {
        dims,
        data: bytes[header_len..].to_vec(),
    })
}

/// Reads and parses an IDX file from disk (gzip or raw).
///
/// ```no_run
/// use dp_data::idx::{read_idx, IDX_LABELS_MAGIC};
/// let labels = read_idx(std::path::Path::new("mnist/t10k-labels-idx1-ubyte.gz"), IDX_LABELS_MAGIC)?;
/// assert_eq!(labels.dims, vec![10_000]);
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub fn read_idx(path: &Path, expected_magic: u32) -> Result<IdxArray, DataError> {
    let bytes = read_maybe_gz(path)?;
    parse_idx(path, &bytes, expected_magic)
}

/// Maps a byte 0..=255 to `b / 255` without a division per pixel.
pub(crate) fn byte_to_unit_table() -> [f32; 256] {
    let mut t = [0f32; 256];
    for (i, v) in t.iter_mut().enumerate() {
        *v = i as f32 / 255.0;
    }
    t
}

/// Loads one (images, labels) IDX pair as a dataset of `[1, rows, cols]` examples with
/// pixels scaled to `[0, 1]`.
///
/// `expected_hw` pins the image size (28×28 for the MNIST family); labels must lie in
/// `0..num_classes`.
///
/// ```no_run
/// use std::path::Path;
/// let test = dp_data::idx::load_idx_pair(
///     Path::new("mnist/t10k-images-idx3-ubyte.gz"),
///     Path::new("mnist/t10k-labels-idx1-ubyte.gz"),
///     (28, 28), 10, "mnist/test",
/// )?;
/// assert_eq!(test.example_shape(), &[1, 28, 28]);
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub fn load_idx_pair(
    images_path: &Path,
    labels_path: &Path,
    expected_hw: (usize, usize),
    num_classes: usize,
    name: &str,
) -> Result<Dataset, DataError> {
    let images = read_idx(images_path, IDX_IMAGES_MAGIC)?;
    let labels = read_idx(labels_path, IDX_LABELS_MAGIC)?;
    let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
    if (h, w) != expected_hw {
        return Err(DataError::DimsMismatch {
            path: images_path.to_path_buf(),
            found: vec![h, w],
            expected: vec![expected_hw.0, expected_hw.1],
        });
    }
    if labels.dims[0] != n {
        return Err(DataError::CountMismatch {
            images_path: images_path.to_path_buf(),
            images: n,
            labels_path: labels_path.to_path_buf(),
            labels: labels.dims[0],
        });
    }
    if let Some((index, &label)) = labels
        .data
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= num_classes)
    {
        return Err(DataError::LabelOutOfRange {
            path: labels_path.to_path_buf(),
            index,
            label: label as u32,
            num_classes,
        });
    }
    let table = byte_to_unit_table();
    let features: Vec<f32> = images.data.iter().map(|&b| table[b as usize]).collect();
    let labels: Vec<u32> = labels.data.iter().map(|&l| l as u32).collect();
    Dataset::new(name, features, labels, vec![1, h, w], num_classes)
}

/// Standard spellings of the four MNIST-family files (the second spelling is the one used
/// on Yann LeCun's original page after decompression by some tools).
pub(crate) const TRAIN_IMAGES: &[&str] = &["train-images-idx3-ubyte", "train-images.idx3-ubyte"];
pub(crate) const TRAIN_LABELS: &[&str] = &["train-labels-idx1-ubyte", "train-labels.idx1-ubyte"];
pub(crate) const TEST_IMAGES: &[&str] = &["t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"];
pub(crate) const TEST_LABELS: &[&str] = &["t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"];

/// Paths of the four files of an MNIST-family directory, or an error naming the first
/// missing one.
pub(crate) fn idx_paths(dir: &Path) -> Result<[PathBuf; 4], DataError> {
    Ok([
        require_file(dir, TRAIN_IMAGES)?,
        require_file(dir, TRAIN_LABELS)?,
        require_file(dir, TEST_IMAGES)?,
        require_file(dir, TEST_LABELS)?,
    ])
}

fn load_idx_dir(dir: &Path, name: &str) -> Result<TrainTest, DataError> {
    let [tri, trl, tei, tel] = idx_paths(dir)?;
    Ok(TrainTest {
        train: load_idx_pair(&tri, &trl, (28, 28), 10, &format!("{name}/train"))?,
        test: load_idx_pair(&tei, &tel, (28, 28), 10, &format!("{name}/test"))?,
    })
}

/// Loads MNIST from a directory holding the four standard IDX files
/// (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
/// `t10k-labels-idx1-ubyte`, each optionally with `.gz`).
///
/// Returns 60,000 training and 10,000 test examples of shape `[1, 28, 28]` with pixels
/// scaled to `[0, 1]` (not normalised: apply [`crate::Normalize::mnist`] if wanted).
///
/// ```no_run
/// let data = dp_data::load_mnist_idx(std::path::Path::new("data/mnist"))?;
/// assert_eq!(data.train.len(), 60_000);
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub fn load_mnist_idx(dir: &Path) -> Result<TrainTest, DataError> {
    load_idx_dir(dir, "mnist")
}

/// Standard system location of the Debian/Ubuntu `dataset-fashion-mnist` package.
pub const FASHION_MNIST_SYSTEM_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Kept at this path for compatibility: the loader that looks the files up lives in
/// [`crate::source`], since finding a dataset is not IDX parsing.
#[doc(no_inline)]
pub use crate::source::load_fashion_mnist;

/// Loads FashionMNIST from an explicit directory (used by the resolver and by
/// [`crate::load_fashion_mnist`]).
pub(crate) fn load_fashion_mnist_dir(dir: &Path) -> Result<TrainTest, DataError> {
    load_idx_dir(dir, "fashion-mnist")
}
