//! CIFAR-10 loader for the "binary version" (`cifar-10-batches-bin`).
//!
//! Each of `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin` holds 10,000
//! records of 3,073 bytes: one label byte (0-9) then 3,072 pixel bytes — the 1,024 red
//! values of the 32×32 image row-major, then the green, then the blue. That is already the
//! channels-first `[3, 32, 32]` layout, so records are copied straight through.
//! CIFAR-10 cannot be downloaded by this crate; point `--data-dir` at your copy.

use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, TrainTest};
use crate::error::DataError;
use crate::fileio::{read_maybe_gz, require_file};
use crate::idx::byte_to_unit_table;

/// Bytes of one CIFAR-10 record (1 label + 3×32×32 pixels).
pub const CIFAR10_RECORD_BYTES: usize = 1 + 3 * 32 * 32;
/// Records per standard CIFAR-10 batch file.
pub const CIFAR10_RECORDS_PER_FILE: usize = 10_000;
/// Training batch file names, in load order.
pub const CIFAR10_TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// Test batch file name.
pub const CIFAR10_TEST_FILE: &str = "test_batch.bin";
/// Name of the directory the official archive unpacks to.
pub const CIFAR10_ARCHIVE_DIR: &str = "cifar-10-batches-bin";

/// Returns `dir` or `dir/cifar-10-batches-bin`, whichever holds `test_batch.bin`.
pub(crate) fn cifar_dir(dir: &Path) -> PathBuf {
    let nested = dir.join(CIFAR10_ARCHIVE_DIR);
    if crate::fileio::find_file(dir, &[CIFAR10_TEST_FILE]).is_none()
        && crate::fileio::find_file(&nested, &[CIFAR10_TEST_FILE]).is_some()
    {
        nested
    } else {
        dir.to_path_buf()
    }
}

fn append_batch(
    path: &Path,
    records_per_file: usize,
    table: &[f32; 256],
    features: &mut Vec<f32>,
    labels: &mut Vec<u32>,
) -> Result<(), DataError> {
    let bytes = read_maybe_gz(path)?;
    let expected = (records_per_file * CIFAR10_RECORD_BYTES) as u64;
    let found = bytes.len() as u64;
    if found < expected {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }
    if found > expected {
        return Err(DataError::Malformed {
            path: path.to_path_buf(),
            reason: format!(
                "{found} bytes but {records_per_file} records of {CIFAR10_RECORD_BYTES} bytes \
                 make {expected}"
            ),
        });
    }
    for (index, rec) in bytes.chunks_exact(CIFAR10_RECORD_BYTES).enumerate() {
        let label = rec[0];
        if label >= 10 {
            return Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                index,
                label: label as u32,
                num_classes: 10,
            });
        }
        labels.push(label as u32);
        features.extend(rec[1..].iter().map(|&b| table[b as usize]));
    }
    Ok(())
}

/// Loads CIFAR-10 from its binary batches, requiring the standard 10,000 records per file.
///
/// `dir` may be the `cifar-10-batches-bin` directory itself or its parent. Files may be
/// raw or gzip-compressed. Returns 50,000 training and 10,000 test examples of shape
/// `[3, 32, 32]` with pixels in `[0, 1]` (apply [`crate::Normalize::cifar10`] if wanted).
///
/// ```no_run
/// let data = dp_data::load_cifar10(std::path::Path::new("data/cifar-10-batches-bin"))?;
/// assert_eq!(data.train.example_shape(), &[3, 32, 32]);
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub fn load_cifar10(dir: &Path) -> Result<TrainTest, DataError> {
    load_cifar10_with_records(dir, CIFAR10_RECORDS_PER_FILE)
}

/// Like [`load_cifar10`] but with a non-standard number of records per file (every file
/// must hold exactly that many). Useful for test fixtures and reduced copies.
///
/// ```no_run
/// let small = dp_data::load_cifar10_with_records(std::path::Path::new("cifar-small"), 100)?;
/// assert_eq!(small.train.len(), 500);
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub fn load_cifar10_with_records(
    dir: &Path,
    records_per_file: usize,
) -> Result<TrainTest, DataError> {
    if records_per_file == 0 {
        return Err(DataError::InvalidArgument(
            "records_per_file must be positive".into(),
        ));
    }
    let dir = cifar_dir(dir);
    let table = byte_to_unit_table();
    let d = CIFAR10_RECORD_BYTES - 1;

    let mut features = Vec::with_capacity(5 * records_per_file * d);
    let mut labels = Vec::with_capacity(5 * records_per_file);
    for name in CIFAR10_TRAIN_FILES {
        let path = require_file(&dir, &[name])?;
        append_batch(&path, records_per_file, &table, &mut features, &mut labels)?;
    }
    let train = Dataset::new("cifar10/train", features, labels, vec![3, 32, 32], 10)?;

    let mut features = Vec::with_capacity(records_per_file * d);
    let mut labels = Vec::with_capacity(records_per_file);
    let path = require_file(&dir, &[CIFAR10_TEST_FILE])?;
    append_batch(&path, records_per_file, &table, &mut features, &mut labels)?;
    let test = Dataset::new("cifar10/test", features, labels, vec![3, 32, 32], 10)?;
    Ok(TrainTest { train, test })
}
