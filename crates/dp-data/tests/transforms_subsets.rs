//! Transforms (normalisation, crop/flip, augmentation multiplicity), subsets and the
//! dataset type.

use dp_data::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn image_ds(n: usize, shape: [usize; 3]) -> Dataset {
    let d: usize = shape.iter().product();
    let features = (0..n * d).map(|i| (i % 251) as f32 / 250.0).collect();
    let labels = (0..n as u32).map(|i| i % 10).collect();
    Dataset::new("img", features, labels, shape.to_vec(), 10).unwrap()
}

#[test]
fn normalize_per_channel_constants() {
    let mut ds = image_ds(3, [3, 4, 4]);
    let orig = ds.clone();
    Normalize::cifar10().apply_dataset(&mut ds).unwrap();
    for (i, (&x, &o)) in ds.features().iter().zip(orig.features()).enumerate() {
        let c = (i % 48) / 16;
        let want = (o - CIFAR10_MEAN[c]) / CIFAR10_STD[c];
        assert!((x - want).abs() < 1e-5, "value {i}");
    }
    let mut m = image_ds(2, [1, 28, 28]);
    Normalize::mnist().apply_dataset(&mut m).unwrap();
    assert!((m.features()[0] - (-MNIST_MEAN / MNIST_STD)).abs() < 1e-6);
    let mut f = image_ds(1, [1, 2, 2]);
    Normalize::fashion_mnist().apply_dataset(&mut f).unwrap();
    assert!((f.features()[0] + FASHION_MNIST_MEAN / FASHION_MNIST_STD).abs() < 1e-6);
    // Bad configurations are errors, not panics.
    let bad = Normalize {
        mean: vec![0.0, 0.0],
        std: vec![1.0, 1.0],
    };
    assert!(bad.apply_dataset(&mut image_ds(1, [3, 2, 2])).is_err());
    let zero = Normalize {
        mean: vec![0.0],
        std: vec![0.0],
    };
    assert!(zero.apply_dataset(&mut image_ds(1, [1, 2, 2])).is_err());
    let mut b = image_ds(4, [3, 2, 2]).gather(&[0, 3]);
    Normalize::cifar10().apply_batch(&mut b).unwrap();
}

#[test]
fn crop_and_flip_are_exact() {
    // 1 channel 3x3 image 1..9.
    let src: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let shape = [1, 3, 3];
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    let flip_only = Augmentation {
        crop_padding: 0,
        flip: true,
        pad_value: 0.0,
    };
    let mirrored = vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0, 9.0, 8.0, 7.0];
    let (mut flips, mut keeps) = (0, 0);
    for _ in 0..400 {
        let mut dst = vec![0.0; 9];
        flip_only
            .apply_one(&src, &shape, &mut rng, &mut dst)
            .unwrap();
        if dst == mirrored {
            flips += 1;
        } else {
            assert_eq!(dst, src);
            keeps += 1;
        }
    }
    // Binomial(400, 1/2): sd 10, bound z = 5.
    assert!((flips - 200i32).abs() < 50 && flips + keeps == 400);

    // Every padded crop is a shifted copy with pad_value outside; all 25 offsets occur.
    let crop = Augmentation {
        crop_padding: 2,
        flip: false,
        pad_value: -1.0,
    };
    let mut seen = std::collections::HashSet::new();
    for _ in 0..2000 {
        let mut dst = vec![0.0; 9];
        crop.apply_one(&src, &shape, &mut rng, &mut dst).unwrap();
        // Recover the shift from the content and check every pixel.
        let mut found = None;
        for dy in -2i32..=2 {
            for dx in -2i32..=2 {
                let ok = (0..3).all(|y| {
                    (0..3).all(|x| {
                        let (sy, sx) = (y + dy, x + dx);
                        let want = if (0..3).contains(&sy) && (0..3).contains(&sx) {
                            src[(sy * 3 + sx) as usize]
                        } else {
                            -1.0
                        };
                        dst[(y * 3 + x) as usize] == want
                    })
                });
                if ok && found.is_none() {
                    found = Some((dy, dx));
                }
            }
        }
        seen.insert(found.expect("crop is a shifted copy"));
    }
    assert_eq!(seen.len(), 25);
    // Wrong shapes are errors.
    let mut dst = vec![0.0; 9];
    assert!(crop.apply_one(&src, &[9], &mut rng, &mut dst).is_err());
    assert!(crop
        .apply_one(&src, &[1, 3, 2], &mut rng, &mut dst)
        .is_err());
}

#[test]
fn augmentation_multiplicity_layout() {
    let ds = image_ds(5, [3, 8, 8]).with_class_groups();
    let batch = ds.gather(&[4, 1, 2]);
    let k = 3;
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let identity = Augmentation {
        crop_padding: 0,
        flip: false,
        pad_value: 0.0,
    };
    let big = augment_multiplicity(&batch, k, &identity, &mut rng).unwrap();
    assert_eq!(big.shape(), vec![9, 3, 8, 8]);
    assert_eq!(big.indices, vec![4, 4, 4, 1, 1, 1, 2, 2, 2]);
    assert_eq!(big.labels, vec![4, 4, 4, 1, 1, 1, 2, 2, 2]);
    assert_eq!(big.groups.as_ref().unwrap(), &big.labels);
    let d = 3 * 8 * 8;
    for (row, chunk) in big.features.chunks(d).enumerate() {
        assert_eq!(chunk, &batch.features[(row / k) * d..(row / k + 1) * d]);
    }
    // With real augmentation the copies differ but stay copies of the same example.
    let big = augment_multiplicity(&batch, 8, &Augmentation::cifar10(), &mut rng).unwrap();
    let copies: Vec<&[f32]> = big.features.chunks(d).take(8).collect();
    assert!(copies.windows(2).any(|w| w[0] != w[1]));
    assert!(augment_multiplicity(&batch, 0, &identity, &mut rng).is_err());
    // Seeded augmentation reproduces.
    let a = augment_multiplicity(
        &batch,
        4,
        &Augmentation::cifar10(),
        &mut ChaCha20Rng::seed_from_u64(9),
    );
    let b = augment_multiplicity(
        &batch,
        4,
        &Augmentation::cifar10(),
        &mut ChaCha20Rng::seed_from_u64(9),
    );
    assert_eq!(a.unwrap(), b.unwrap());
    let mut single = batch.clone();
    Augmentation::cifar10()
        .apply_batch(&mut single, &mut rng)
        .unwrap();
    assert_eq!(single.len(), 3);
}

/// The imbalanced subset keeps class 8 with probability 0.09: the kept count is
/// Binomial(n8, 0.09), checked at z = 5 (false-alarm ≈ 6e-7); other classes are intact.
#[test]
fn imbalanced_subset_keeps_stated_fraction() {
    let labels: Vec<u32> = (0..100_000u32).map(|i| i % 10).collect();
    let kept = imbalanced_indices(&labels, &[(8, 0.09)], 2023).unwrap();
    let n8 = 10_000f64;
    let k8 = kept.iter().filter(|&&i| labels[i] == 8).count() as f64;
    let sd = (n8 * 0.09 * 0.91).sqrt();
    assert!((k8 - n8 * 0.09).abs() < 5.0 * sd, "kept {k8} of class 8");
    assert_eq!(kept.len() as f64 - k8, 90_000.0);
    assert!(kept.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        kept,
        imbalanced_indices(&labels, &[(8, 0.09)], 2023).unwrap()
    );
    assert!(imbalanced_indices(&labels, &[(8, 1.5)], 0).is_err());

    let train = load_bundled_mnist().unwrap().train;
    let sub = esipova_imbalanced_mnist(&train, 5).unwrap();
    let c = sub.class_counts();
    let sd = (400.0f64 * 0.09 * 0.91).sqrt();
    assert!((c[8] as f64 - 36.0).abs() < 5.0 * sd, "{c:?}");
    assert!(c.iter().enumerate().all(|(k, &v)| k == 8 || v == 400));
}

#[test]
fn fixed_size_subsets_groups_and_dataset_api() {
    let ds = image_ds(50, [1, 2, 2]);
    let sub = fixed_size_subset(&ds, 20, 1).unwrap();
    assert_eq!(sub.len(), 20);
    assert_eq!(sub, fixed_size_subset(&ds, 20, 1).unwrap());
    assert!(fixed_size_subset(&ds, 51, 1).is_err());
    assert_eq!(fixed_size_subset(&ds, 50, 1).unwrap(), ds);

    let g = ds
        .clone()
        .with_groups((0..50).map(|i| i / 25).collect())
        .unwrap();
    assert!(ds.clone().with_groups(vec![0; 3]).is_err());
    let b = g.gather(&[30, 2]);
    assert_eq!(b.groups, Some(vec![1, 0]));
    assert_eq!(
        b.features,
        [&ds.features()[120..124], &ds.features()[8..12]].concat()
    );
    assert_eq!(g.subset(&[30]).groups(), Some(&[1u32][..]));
    assert!(g.try_gather(&[50]).is_err());
    assert_eq!(g.example(49).unwrap().len(), 4);
    assert!(g.example(50).is_none());
    assert_eq!(g.as_batch().len(), 50);
    assert!(g.clone().without_groups().groups().is_none());
    assert_eq!(g.with_class_groups().groups().unwrap()[13], 3);
    assert!(Dataset::new("x", vec![0.0; 5], vec![0, 0], vec![2], 1).is_err());
    assert!(Dataset::new("x", vec![0.0; 4], vec![0, 1], vec![2], 1).is_err());

    let split = random_split(&ds, 0.2, true, 3).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (40, 10));
    assert_eq!(split.test.class_counts(), vec![1; 10]);
}
