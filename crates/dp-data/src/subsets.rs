//! Subsets: class-imbalanced subsampling, fixed-size subsets and stratified splits.
//!
//! All functions take an explicit `u64` seed (ChaCha20) so an experiment's data is
//! reproducible from its config file. Returned index lists are sorted ascending, so the
//! subset keeps the original example order.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::dataset::{Dataset, TrainTest};
use crate::error::DataError;
use crate::rng;

/// Class kept at reduced rate in the MNIST imbalance experiment of Esipova et al. (2023).
pub const ESIPOVA_IMBALANCED_CLASS: u32 = 8;
/// Keep probability for [`ESIPOVA_IMBALANCED_CLASS`] (Esipova et al. 2023, following
/// Bagdasaryan et al. 2019's under-represented class setup).
pub const ESIPOVA_KEEP_PROBABILITY: f64 = 0.09;

/// Indices kept when each example of class `c` is kept independently with probability
/// `keep[c]` (classes absent from `keep` are always kept).
///
/// Independent Bernoulli keeping (rather than keeping exactly `round(p·n_c)`) matches
/// Esipova et al.'s description; the kept count is Binomial(`n_c`, `p`).
///
/// ```
/// let labels = vec![8u32; 1000];
/// let kept = dp_data::imbalanced_indices(&labels, &[(8, 0.09)], 42)?;
/// assert!(kept.len() > 40 && kept.len() < 140);
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub fn imbalanced_indices(
    labels: &[u32],
    keep: &[(u32, f64)],
    seed: u64,
) -> Result<Vec<usize>, DataError> {
    for &(c, p) in keep {
        if !(0.0..=1.0).contains(&p) {
            return Err(DataError::InvalidArgument(format!(
                "keep probability {p} for class {c} is outside [0, 1]"
            )));
        }
    }
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(labels.len());
    for (i, &l) in labels.iter().enumerate() {
        match keep.iter().find(|(c, _)| *c == l) {
            // One draw per example of an affected class only, so adding an unaffected
            // class never changes which examples of affected classes are kept.
            Some(&(_, p)) => {
                if rng::bernoulli(&mut rng, p) {
                    out.push(i);
                }
            }
            None => out.push(i),
        }
    }
    Ok(out)
}

/// Class-imbalanced subset: see [`imbalanced_indices`].
///
/// ```
/// let ds = dp_data::load_bundled_mnist()?.train;
/// let sub = dp_data::imbalanced_subset(&ds, &[(8, 0.09)], 1)?;
/// assert!(sub.class_counts()[8] < 100);
/// assert_eq!(sub.class_counts()[0], 400);
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub fn imbalanced_subset(
    ds: &Dataset,
    keep: &[(u32, f64)],
    seed: u64,
) -> Result<Dataset, DataError> {
    let idx = imbalanced_indices(ds.labels(), keep, seed)?;
    ds.try_subset(&idx)
}

/// The Esipova et al. (2023) MNIST imbalance: class 8 kept with probability 0.09.
///
/// ```
/// let ds = dp_data::load_bundled_mnist()?.train;
/// let sub = dp_data::esipova_imbalanced_mnist(&ds, 7)?;
/// assert!(sub.len() < ds.len());
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub fn esipova_imbalanced_mnist(ds: &Dataset, seed: u64) -> Result<Dataset, DataError> {
    imbalanced_subset(
        ds,
        &[(ESIPOVA_IMBALANCED_CLASS, ESIPOVA_KEEP_PROBABILITY)],
        seed,
    )
}

/// A uniformly random subset of exactly `size` examples (without replacement), in
/// original order.
///
/// ```
/// let ds = dp_data::load_bundled_mnist()?.train;
/// let small = dp_data::fixed_size_subset(&ds, 256, 3)?;
/// assert_eq!(small.len(), 256);
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub fn fixed_size_subset(ds: &Dataset, size: usize, seed: u64) -> Result<Dataset, DataError> {
    if size > ds.len() {
        return Err(DataError::InvalidBatchSize {
            batch_size: size,
            n: ds.len(),
        });
    }
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let idx = rng::sample_without_replacement(&mut rng, ds.len(), size);
    ds.try_subset(&idx)
}

/// A stratified split: for each class, a uniformly random `test_per_class` examples go to
/// the test side, the rest to the train side. Both index lists are sorted ascending.
/// Errors if a class has fewer than `test_per_class` examples.
///
/// ```
/// let labels = [0, 0, 0, 1, 1, 1];
/// let (train, test) = dp_data::subsets::stratified_split_indices(&labels, 2, 1, 0)?;
/// assert_eq!((train.len(), test.len()), (4, 2));
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub fn stratified_split_indices(
    labels: &[u32],
    num_classes: usize,
    test_per_class: usize,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), DataError> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (i, &l) in labels.iter().enumerate() {
        match by_class.get_mut(l as usize) {
            Some(v) => v.push(i),
            None => {
                return Err(DataError::InvalidArgument(format!(
                    "label {l} of example {i} is outside 0..{num_classes}"
                )))
            }
        }
    }
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (c, mut members) in by_class.into_iter().enumerate() {
        if members.len() < test_per_class {
            return Err(DataError::InvalidArgument(format!(
                "class {c} has {} examples, fewer than the {test_per_class} requested for test",
                members.len()
            )));
        }
        rng::shuffle(&mut rng, &mut members);
        test.extend_from_slice(&members[..test_per_class]);
        train.extend_from_slice(&members[test_per_class..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    Ok((train, test))
}

/// A seeded random split with a fraction `test_fraction` (rounded) of examples in test,
/// stratified by class when `stratify` is true (each class contributes
/// `round(test_fraction · n_c)` examples).
///
/// ```
/// let all = dp_data::load_bundled_mnist()?.train;
/// let tt = dp_data::random_split(&all, 0.25, true, 9)?;
/// assert_eq!(tt.test.len(), 1000);
/// # Ok::<(), dp_data::DataError>(())
/// ```
pub fn random_split(
    ds: &Dataset,
    test_fraction: f64,
    stratify: bool,
    seed: u64,
) -> Result<TrainTest, DataError> {
    let (train, test) =
        random_split_indices(ds.labels(), ds.num_classes(), test_fraction, stratify, seed)?;
    let mut tr = ds.try_subset(&train)?;
    let mut te = ds.try_subset(&test)?;
    tr.set_name(format!("{}/train", ds.name()));
    te.set_name(format!("{}/test", ds.name()));
    Ok(TrainTest {
        train: tr,
        test: te,
    })
}

/// Index version of [`random_split`].
pub fn random_split_indices(
    labels: &[u32],
    num_classes: usize,
    test_fraction: f64,
    stratify: bool,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), DataError> {
    if !(0.0..=1.0).contains(&test_fraction) {
        return Err(DataError::InvalidArgument(format!(
            "test fraction {test_fraction} is outside [0, 1]"
        )));
    }
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let groups: Vec<Vec<usize>> = if stratify {
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
        for (i, &l) in labels.iter().enumerate() {
            match by_class.get_mut(l as usize) {
                Some(v) => v.push(i),
                None => {
                    return Err(DataError::InvalidArgument(format!(
                        "label {l} of example {i} is outside 0..{num_classes}"
                    )))
                }
            }
        }
        by_class
    } else {
        vec![(0..labels.len()).collect()]
    };
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for mut members in groups {
        let k = (test_fraction * members.len() as f64).round() as usize;
        rng::shuffle(&mut rng, &mut members);
        test.extend_from_slice(&members[..k.min(members.len())]);
        train.extend_from_slice(&members[k.min(members.len())..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    Ok((train, test))
}
