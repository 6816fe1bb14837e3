//! Loader tests: round trips on files written in the exact formats, byte-level corruption,
//! the bundled data's exact counts, and the full datasets when present.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use dp_data::idx::{IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC};
use dp_data::source::resolve_with;
use dp_data::*;

/// A fresh, empty temporary directory unique to this test.
fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dp-data-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn idx_images(n: usize, h: usize, w: usize, seed: u8) -> Vec<u8> {
    let mut b = IDX_IMAGES_MAGIC.to_be_bytes().to_vec();
    for d in [n, h, w] {
        b.extend_from_slice(&(d as u32).to_be_bytes());
    }
    b.extend((0..n * h * w).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    b
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = IDX_LABELS_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    b.extend_from_slice(labels);
    b
}

/// Writes a small MNIST-format directory (train 12, test 5), gzipped or raw.
fn write_idx_dir(dir: &Path, gz: bool) {
    let files: [(&str, Vec<u8>); 4] = [
        ("train-images-idx3-ubyte", idx_images(12, 28, 28, 1)),
        (
            "train-labels-idx1-ubyte",
            idx_labels(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]),
        ),
        ("t10k-images-idx3-ubyte", idx_images(5, 28, 28, 2)),
        ("t10k-labels-idx1-ubyte", idx_labels(&[9, 8, 7, 6, 5])),
    ];
    for (name, bytes) in files {
        if gz {
            std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

#[test]
fn idx_round_trip_gz_and_raw() {
    for gz in [true, false] {
        let dir = tmpdir(&format!("idx-rt-{gz}"));
        write_idx_dir(&dir, gz);
        let d = load_mnist_idx(&dir).unwrap();
        assert_eq!((d.train.len(), d.test.len()), (12, 5));
        assert_eq!(d.train.example_shape(), &[1, 28, 28]);
        assert_eq!(d.train.labels(), &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
        assert_eq!(d.test.labels(), &[9, 8, 7, 6, 5]);
        // Exact pixel values: byte b becomes b / 255.
        let raw = idx_images(5, 28, 28, 2);
        for (x, &b) in d.test.features().iter().zip(&raw[16..]) {
            assert_eq!(*x, b as f32 / 255.0);
        }
        let f = load_fashion_mnist(Some(&dir)).unwrap();
        assert_eq!(f.train.features(), d.train.features());
        std::fs::remove_dir_all(&dir).ok();
    }
}

fn expect_err(dir: &Path) -> DataError {
    match load_mnist_idx(dir) {
        Ok(_) => panic!("corrupt data in {} loaded without error", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn idx_corruption_is_reported_with_file_names() {
    // Bad magic: a label file where the image file should be.
    let dir = tmpdir("idx-magic");
    write_idx_dir(&dir, false);
    std::fs::write(dir.join("train-images-idx3-ubyte"), idx_labels(&[1, 2])).unwrap();
    let e = expect_err(&dir);
    assert!(
        matches!(
            e,
            DataError::BadMagic {
                found: 0x801,
                expected: 0x803,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("train-images-idx3-ubyte"), "{e}");

    // Truncated: the image file loses its last 10 bytes.
    let dir = tmpdir("idx-trunc");
    write_idx_dir(&dir, false);
    let mut b = idx_images(12, 28, 28, 1);
    b.truncate(b.len() - 10);
    std::fs::write(dir.join("train-images-idx3-ubyte"), b).unwrap();
    let e = expect_err(&dir);
    assert!(
        matches!(e, DataError::Truncated { expected, found, .. } if expected == found + 10),
        "{e}"
    );
    assert!(e.to_string().contains("truncated"), "{e}");

    // Truncated header.
    std::fs::write(
        dir.join("train-images-idx3-ubyte"),
        &IDX_IMAGES_MAGIC.to_be_bytes()[..3],
    )
    .unwrap();
    assert!(matches!(
        expect_err(&dir),
        DataError::Truncated {
            expected: 4,
            found: 3,
            ..
        }
    ));

    // Trailing garbage.
    let dir = tmpdir("idx-trailing");
    write_idx_dir(&dir, false);
    let mut b = idx_labels(&[9, 8, 7, 6, 5]);
    b.push(0);
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), b).unwrap();
    let e = expect_err(&dir);
    assert!(matches!(e, DataError::Malformed { .. }), "{e}");
    assert!(e.to_string().contains("t10k-labels-idx1-ubyte"), "{e}");

    // Count mismatch between images and labels.
    let dir = tmpdir("idx-count");
    write_idx_dir(&dir, true);
    std::fs::write(
        dir.join("t10k-labels-idx1-ubyte.gz"),
        gzip(&idx_labels(&[1, 2, 3, 4])),
    )
    .unwrap();
    let e = expect_err(&dir);
    assert!(
        matches!(
            e,
            DataError::CountMismatch {
                images: 5,
                labels: 4,
                ..
            }
        ),
        "{e}"
    );

    // Dims mismatch (27x28 images).
    let dir = tmpdir("idx-dims");
    write_idx_dir(&dir, false);
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), idx_images(5, 27, 28, 0)).unwrap();
    let e = expect_err(&dir);
    assert!(matches!(e, DataError::DimsMismatch { .. }), "{e}");

    // Label out of range.
    let dir = tmpdir("idx-label");
    write_idx_dir(&dir, false);
    std::fs::write(
        dir.join("t10k-labels-idx1-ubyte"),
        idx_labels(&[1, 2, 10, 4, 5]),
    )
    .unwrap();
    let e = expect_err(&dir);
    assert!(
        matches!(
            e,
            DataError::LabelOutOfRange {
                index: 2,
                label: 10,
                ..
            }
        ),
        "{e}"
    );

    // Bad gzip: valid header bytes followed by garbage.
    let dir = tmpdir("idx-gzip");
    write_idx_dir(&dir, true);
    let mut junk = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    junk.extend_from_slice(b"this is not deflate data at all");
    std::fs::write(dir.join("train-labels-idx1-ubyte.gz"), junk).unwrap();
    let e = expect_err(&dir);
    assert!(matches!(e, DataError::Gzip { .. }), "{e}");
    assert!(e.to_string().contains("train-labels-idx1-ubyte.gz"), "{e}");

    // Truncated gzip stream (half a file).
    let dir = tmpdir("idx-gzip-trunc");
    write_idx_dir(&dir, true);
    let gz = gzip(&idx_images(12, 28, 28, 1));
    std::fs::write(dir.join("train-images-idx3-ubyte.gz"), &gz[..gz.len() / 2]).unwrap();
    let e = expect_err(&dir);
    assert!(matches!(e, DataError::Gzip { .. }), "{e}");

    // Missing file.
    let dir = tmpdir("idx-missing");
    write_idx_dir(&dir, true);
    std::fs::remove_file(dir.join("t10k-images-idx3-ubyte.gz")).unwrap();
    let e = expect_err(&dir);
    assert!(matches!(e, DataError::Io { .. }), "{e}");
    assert!(e.to_string().contains("t10k-images-idx3-ubyte"), "{e}");
}

fn cifar_record(label: u8, seed: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend((0..3072).map(|i| (i as u8) ^ seed));
    r
}

fn write_cifar_dir(dir: &Path, per_file: usize) {
    for (f, name) in cifar::CIFAR10_TRAIN_FILES.iter().enumerate() {
        let bytes: Vec<u8> = (0..per_file)
            .flat_map(|i| cifar_record(((f * per_file + i) % 10) as u8, f as u8))
            .collect();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let bytes: Vec<u8> = (0..per_file)
        .flat_map(|i| cifar_record((9 - i % 10) as u8, 77))
        .collect();
    std::fs::write(dir.join(cifar::CIFAR10_TEST_FILE), gzip(&bytes)).unwrap();
}

#[test]
fn cifar_round_trip_and_corruption() {
    let root = tmpdir("cifar");
    let dir = root.join(cifar::CIFAR10_ARCHIVE_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    write_cifar_dir(&dir, 3);
    // The parent directory works too.
    let d = load_cifar10_with_records(&root, 3).unwrap();
    assert_eq!((d.train.len(), d.test.len()), (15, 3));
    assert_eq!(d.train.example_shape(), &[3, 32, 32]);
    assert_eq!(d.train.labels()[..12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
    assert_eq!(d.test.labels(), &[9, 8, 7]);
    // Record layout: the 3072 pixel bytes are copied in order (R plane, G plane, B plane).
    let rec = cifar_record(0, 1);
    let ex = d.train.example(3).unwrap(); // file 1 (seed 1), record 0
    for (x, &b) in ex.iter().zip(&rec[1..]) {
        assert_eq!(*x, b as f32 / 255.0);
    }

    // The standard loader insists on 10,000 records per file.
    let e = load_cifar10(&dir).unwrap_err();
    assert!(matches!(e, DataError::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("data_batch_1.bin"), "{e}");

    // A partial record is reported as truncated.
    let mut b = std::fs::read(dir.join("data_batch_4.bin")).unwrap();
    b.truncate(b.len() - 1);
    std::fs::write(dir.join("data_batch_4.bin"), &b).unwrap();
    let e = load_cifar10_with_records(&dir, 3).unwrap_err();
    assert!(e.to_string().contains("data_batch_4.bin"), "{e}");
    assert!(matches!(e, DataError::Truncated { .. }), "{e}");

    // An extra record is malformed (never silently ignored).
    b.extend(cifar_record(0, 0));
    b.push(0);
    std::fs::write(dir.join("data_batch_4.bin"), &b).unwrap();
    assert!(matches!(
        load_cifar10_with_records(&dir, 3).unwrap_err(),
        DataError::Malformed { .. }
    ));

    // A label byte of 10.
    write_cifar_dir(&dir, 3);
    let mut b = std::fs::read(dir.join("data_batch_2.bin")).unwrap();
    b[3073] = 10;
    std::fs::write(dir.join("data_batch_2.bin"), &b).unwrap();
    let e = load_cifar10_with_records(&dir, 3).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::LabelOutOfRange {
                index: 1,
                label: 10,
                ..
            }
        ),
        "{e}"
    );

    // Missing test batch.
    write_cifar_dir(&dir, 3);
    std::fs::remove_file(dir.join("test_batch.bin")).unwrap();
    let e = load_cifar10_with_records(&dir, 3).unwrap_err();
    assert!(e.to_string().contains("test_batch.bin"), "{e}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn bundled_mnist_exact_counts_and_split() {
    let t = Instant::now();
    let all = load_bundled_mnist_all().unwrap();
    assert_eq!(all.len(), 5000);
    assert_eq!(all.class_counts(), vec![500; 10]);
    assert!(all.features().iter().all(|&x| (0.0..=1.0).contains(&x)));
    let d = load_bundled_mnist().unwrap();
    println!("bundled load: {:?} (test profile)", t.elapsed());
    assert_eq!((d.train.len(), d.test.len()), (4000, 1000));
    assert_eq!(d.train.class_counts(), vec![400; 10]);
    assert_eq!(d.test.class_counts(), vec![100; 10]);
    assert!(d.train.labels().iter().all(|&l| l < 10));
    // The split is a partition of the 5,000 images.
    let rows = |ds: &Dataset| -> Vec<Vec<u32>> {
        ds.features()
            .chunks(784)
            .map(|r| r.iter().map(|x| x.to_bits()).collect())
            .collect()
    };
    let mut parts = rows(&d.train);
    parts.extend(rows(&d.test));
    parts.sort();
    let mut whole = rows(&all);
    whole.sort();
    assert_eq!(parts, whole);
    // Deterministic.
    assert_eq!(load_bundled_mnist().unwrap(), d);
    let (d2, src) = load(DatasetName::BundledMnist, None).unwrap();
    assert_eq!(src, DataSource::Bundled);
    assert_eq!(d2.test, d.test);
}

#[test]
fn csv_adult_like_fit_on_train_only() {
    let dir = tmpdir("csv");
    let train = "\
39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K
50, Self-emp-not-inc, 83311, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, White, Male, 0, 0, 13, United-States, <=50K
38, Private, 215646, HS-grad, 9, Divorced, Handlers-cleaners, Not-in-family, White, Female, 0, 0, 40, ?, >50K
";
    let test = "\
|1x3 Cross validator
25, Private, 226802, 11th, 7, Never-married, Machine-op-inspct, Own-child, Black, Male, 0, 0, 40, United-States, <=50K.
38, Never-worked, 89814, HS-grad, 9, Married-civ-spouse, Farming-fishing, Husband, White, Female, 0, 0, 50, United-States, >50K.
";
    std::fs::write(dir.join("adult.data"), train).unwrap();
    std::fs::write(dir.join("adult.test"), gzip(test.as_bytes())).unwrap();
    let spec = CsvSpec::adult();
    let (d, enc) = load_csv_split(&dir.join("adult.data"), &dir.join("adult.test"), &spec).unwrap();
    assert_eq!((d.train.len(), d.test.len()), (3, 2));
    assert_eq!(
        enc.label_classes(),
        &["<=50K".to_string(), ">50K".to_string()]
    );
    assert_eq!(d.train.labels(), &[0, 0, 1]);
    assert_eq!(d.test.labels(), &[0, 1]);
    assert_eq!(
        enc.group_values().unwrap(),
        &["Female".to_string(), "Male".to_string()]
    );
    assert_eq!(d.train.groups().unwrap(), &[1, 1, 0]);
    assert_eq!(d.test.groups().unwrap(), &[1, 0]);
    let names = enc.feature_names();
    assert_eq!(names.len(), enc.num_features());
    assert_eq!(d.train.example_shape(), &[enc.num_features()]);
    // Numeric columns are standardised with train statistics: train mean 0, std 1.
    let dim = enc.num_features();
    let age = names.iter().position(|n| n == "age").unwrap();
    let col: Vec<f32> = d.train.features().chunks(dim).map(|r| r[age]).collect();
    let mean: f32 = col.iter().sum::<f32>() / 3.0;
    let var: f32 = col.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / 3.0;
    assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4);
    // Test age 25 encodes with the *train* mean 42.33 and std 5.44.
    let m = (39.0 + 50.0 + 38.0) / 3.0;
    let s = (((39.0f64 - m).powi(2) + (50.0 - m).powi(2) + (38.0 - m).powi(2)) / 3.0).sqrt();
    approx::assert_abs_diff_eq!(
        d.test.features()[age] as f64,
        (25.0 - m) / s,
        epsilon = 1e-5
    );
    // Unseen categories (workclass=Never-worked, education=11th) encode as all zeros; the
    // "?" country is missing, not a category.
    assert!(!names
        .iter()
        .any(|n| n.contains("Never-worked") || n.contains("=?")));
    let wc: Vec<usize> = (0..dim)
        .filter(|&k| names[k].starts_with("workclass="))
        .collect();
    assert_eq!(wc.len(), 3);
    let test_row1 = &d.test.features()[dim..2 * dim];
    assert!(wc.iter().all(|&k| test_row1[k] == 0.0));
    let row0 = &d.train.features()[..dim];
    assert_eq!(wc.iter().map(|&k| row0[k]).sum::<f32>(), 1.0);

    // Errors name file and line.
    std::fs::write(
        dir.join("bad.csv"),
        "1, a, 2, b, 3, c, d, e, f, Male, 0, 0, 40, US\n",
    )
    .unwrap();
    let e = load_csv(&dir.join("bad.csv"), &spec, 0.5, 0).unwrap_err();
    assert!(e.to_string().contains("bad.csv:1"), "{e}");
    std::fs::write(dir.join("bad2.csv"), train.replace("77516", "seventy")).unwrap();
    let e = load_csv(&dir.join("bad2.csv"), &spec, 0.0, 0).unwrap_err();
    assert!(
        e.to_string().contains("bad2.csv:1") && e.to_string().contains("seventy"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn csv_single_file_split_is_stratified_and_seeded() {
    let dir = tmpdir("csv-split");
    let mut text = String::from("x,y\n");
    for i in 0..100 {
        text.push_str(&format!("{i},{}\n", if i % 4 == 0 { "pos" } else { "neg" }));
    }
    std::fs::write(dir.join("t.csv"), &text).unwrap();
    let spec = CsvSpec {
        has_header: true,
        delimiter: ',',
        columns: vec![ColumnKind::Numeric, ColumnKind::Categorical],
        column_names: None,
        label_column: 1,
        group_column: None,
        missing_values: vec![],
        comment_prefix: None,
        strip_label_period: false,
    };
    let (d, _) = load_csv(&dir.join("t.csv"), &spec, 0.2, 5).unwrap();
    assert_eq!((d.train.len(), d.test.len()), (80, 20));
    assert_eq!(d.test.class_counts(), vec![15, 5]);
    let (d2, _) = load_csv(&dir.join("t.csv"), &spec, 0.2, 5).unwrap();
    assert_eq!(d, d2);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn csv_quoted_fields_other_delimiters_and_bad_delimiters() {
    let dir = tmpdir("csv-quoted");
    // Tab-separated, a quoted field spanning two lines and holding the delimiter and an
    // escaped quote, a comment line and a blank line.
    let text = "# made by hand\nx\tnote\ty\n1\t\"a\tb\n\"\"c\"\"\"\tpos\n\n  2 \tplain\tneg\n";
    std::fs::write(dir.join("t.tsv"), text).unwrap();
    let spec = CsvSpec {
        has_header: true,
        delimiter: '\t',
        columns: vec![
            ColumnKind::Numeric,
            ColumnKind::Ignore,
            ColumnKind::Categorical,
        ],
        column_names: None,
        label_column: 2,
        group_column: None,
        missing_values: vec![],
        comment_prefix: Some("#".into()),
        strip_label_period: false,
    };
    let rows = dp_data::read_csv_rows(&dir.join("t.tsv"), &spec).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].fields, ["1", "a\tb\n\"c\"", "pos"]);
    assert_eq!(rows[0].line, 3);
    assert_eq!(rows[1].fields, ["2", "plain", "neg"]);
    assert_eq!(
        rows[1].line, 6,
        "the record after the two-line one and the blank line"
    );
    // A record with a missing field names its line.
    std::fs::write(dir.join("short.tsv"), "x\tnote\ty\n1\tpos\n").unwrap();
    let e = dp_data::read_csv_rows(&dir.join("short.tsv"), &spec).unwrap_err();
    assert!(
        e.to_string().contains("short.tsv:2") && e.to_string().contains("2 fields"),
        "{e}"
    );
    let e = dp_data::read_csv_rows(
        &dir.join("t.tsv"),
        &CsvSpec {
            delimiter: '§',
            ..spec
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("ASCII"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn source_resolution_order() {
    let root = tmpdir("resolve");
    let explicit = root.join("explicit");
    let env = root.join("env");
    let system = root.join("system");
    for d in [&explicit, &env.join("mnist"), &system.join("fashion-mnist")] {
        std::fs::create_dir_all(d).unwrap();
        write_idx_dir(d, true);
    }
    let r = |name, dir: Option<&Path>, env: Option<&Path>| resolve_with(name, dir, env, &system);
    use DatasetName::*;
    assert_eq!(
        r(Mnist, Some(&explicit), Some(&env)).unwrap(),
        DataSource::ExplicitDir(explicit.clone())
    );
    // An explicit root with a dataset sub-directory is accepted too.
    assert_eq!(
        r(Mnist, Some(&env), None).unwrap(),
        DataSource::ExplicitDir(env.join("mnist"))
    );
    assert_eq!(
        r(Mnist, None, Some(&env)).unwrap(),
        DataSource::EnvVar(env.join("mnist"))
    );
    assert_eq!(
        r(FashionMnist, None, Some(&env)).unwrap(),
        DataSource::System(system.join("fashion-mnist"))
    );
    // Explicit directories never fall back.
    let e = r(FashionMnist, Some(&root.join("nope")), Some(&env)).unwrap_err();
    assert!(
        matches!(e, DataError::NotFound { .. }) && e.to_string().contains("nope"),
        "{e}"
    );
    // A data root named through DP_LAB_DATA rules out the bundled fallback: a root that
    // does not exist is an error naming it, and so is a root (and system location) without
    // MNIST.
    let e = r(Mnist, None, Some(&root.join("typo"))).unwrap_err();
    assert!(
        matches!(e, DataError::NotFound { .. }) && e.to_string().contains("typo"),
        "{e}"
    );
    let e = r(Mnist, None, Some(&system)).unwrap_err();
    assert!(matches!(e, DataError::NotFound { .. }), "{e}");
    // An empty value counts as unset.
    assert!(matches!(
        r(Mnist, None, Some(Path::new(""))).unwrap(),
        DataSource::BundledFallback { .. }
    ));
    // With nothing specified, MNIST falls back to the bundled subset, and says so.
    let src = r(Mnist, None, None).unwrap();
    assert!(matches!(src, DataSource::BundledFallback { .. }));
    assert!(src.to_string().contains("NOT found"), "{src}");
    assert!(matches!(
        r(Cifar10, None, Some(&env)),
        Err(DataError::NotFound { .. })
    ));
    assert_eq!(
        r(BundledMnist, Some(&explicit), None).unwrap(),
        DataSource::Bundled
    );
    // Loading through a source.
    let d = source::load_from(Mnist, &DataSource::ExplicitDir(explicit.clone())).unwrap();
    assert_eq!(d.train.len(), 12);
    let (d, src) = load(Mnist, Some(&explicit)).unwrap();
    assert_eq!(
        (d.test.len(), src),
        (5, DataSource::ExplicitDir(explicit.clone()))
    );
    assert_eq!(
        "Fashion_MNIST".parse::<DatasetName>().unwrap(),
        FashionMnist
    );
    std::fs::remove_dir_all(&root).ok();
}

/// Directory of a full dataset for dev/CI: skip with a message when absent, but fail
/// loudly when `CI` is set.
fn full_data_dir(dir: PathBuf, what: &str) -> Option<PathBuf> {
    if dir.join("train-images-idx3-ubyte.gz").is_file() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but {what} is missing at {}", dir.display());
    }
    println!("SKIPPED: {what} not found at {}", dir.display());
    None
}

fn check_full(d: &TrainTest, name: &str, t: Instant) {
    println!("{name}: loaded in {:?} (test profile)", t.elapsed());
    assert_eq!((d.train.len(), d.test.len()), (60_000, 10_000));
    assert_eq!(d.train.features().len(), 60_000 * 784);
    assert!(d.train.labels().iter().all(|&l| l < 10));
    assert!(d.train.class_counts().iter().all(|&c| c > 5000));
    assert!(d.test.class_counts().iter().all(|&c| c >= 800));
    assert!(d.train.features().iter().all(|&x| (0.0..=1.0).contains(&x)));
}

#[test]
fn full_mnist_from_shared_data() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist");
    let Some(dir) = full_data_dir(dir, "full MNIST") else {
        return;
    };
    let t = Instant::now();
    let d = load_mnist_idx(&dir).unwrap();
    check_full(&d, "MNIST", t);
    // Sanity check of the pixel statistics behind MNIST_MEAN / MNIST_STD.
    let n = d.train.features().len() as f64;
    let mean = d.train.features().iter().map(|&x| x as f64).sum::<f64>() / n;
    assert!((mean - MNIST_MEAN as f64).abs() < 1e-3, "mean {mean}");
}

#[test]
fn full_fashion_mnist_from_system_location() {
    let dir = PathBuf::from(idx::FASHION_MNIST_SYSTEM_DIR);
    let Some(dir) = full_data_dir(dir, "FashionMNIST (apt-get install dataset-fashion-mnist)")
    else {
        return;
    };
    let t = Instant::now();
    let d = load_fashion_mnist(Some(&dir)).unwrap();
    check_full(&d, "FashionMNIST", t);
    assert_eq!(d.train.class_counts(), vec![6000; 10]);
    assert_eq!(d.test.class_counts(), vec![1000; 10]);
    let n = d.train.features().len() as f64;
    let mean = d.train.features().iter().map(|&x| x as f64).sum::<f64>() / n;
    assert!(
        (mean - FASHION_MNIST_MEAN as f64).abs() < 1e-3,
        "mean {mean}"
    );
}
