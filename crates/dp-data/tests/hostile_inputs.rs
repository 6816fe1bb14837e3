//! Hostile-input sweep of dp-data's constructors and entry points: mismatched lengths, empty
//! shapes, out-of-range labels and indices, sampling rates of NaN, ±∞, 0, negative and > 1,
//! zero and oversized batch sizes, and non-finite normalisation constants. Each must give a
//! typed error or a documented result — never a panic.
//!
//! Entry points (9): Dataset::new, Dataset::try_gather, Dataset::try_subset,
//! PoissonSampler::new, ShuffledSampler::new, FixedSizeSampler::new, physical_batches,
//! num_physical_batches, Normalize::apply.

use dp_data::{
    num_physical_batches, physical_batches, Dataset, FixedSizeSampler, Normalize, PoissonSampler,
    ShuffledSampler,
};
use proptest::prelude::*;

fn hostile_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::sample::select(vec![
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            -1.0,
            1e-300,
            1.0,
            1.0 + 1e-12,
            2.0,
            1e300,
        ]),
        -1.0f64..2.0,
    ]
}

fn small() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0usize), Just(1), 2usize..40, Just(usize::MAX)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn datasets(n_feat in 0usize..40, n_lab in 0usize..10, shape in prop::collection::vec(0usize..5, 0..3),
                classes in 0usize..4, idx in prop::collection::vec(0usize..20, 0..6)) {
        let feats = vec![0.5f32; n_feat];
        let labels: Vec<u32> = (0..n_lab as u32).collect();
        if let Ok(d) = Dataset::new("h", feats, labels, shape, classes) {
            prop_assert_eq!(d.features().len(), d.len() * d.example_len());
            prop_assert!(d.labels().iter().all(|&l| (l as usize) < d.num_classes()));
            if let Ok(b) = d.try_gather(&idx) {
                prop_assert!(idx.iter().all(|&i| i < d.len()));
                prop_assert_eq!(b.labels.len(), idx.len());
            }
            if d.try_subset(&idx).is_ok() {
                prop_assert!(idx.iter().all(|&i| i < d.len()));
            }
        }
    }

    #[test]
    fn samplers(n in small(), q in hostile_f64(), b in small(), seed in any::<u64>()) {
        let n = n.min(1 << 20);
        if let Ok(mut s) = PoissonSampler::new(n, q, Some(seed)) {
            // Documented: q ∈ (0, 1]; an empty population gives empty batches.
            prop_assert!(q > 0.0 && q <= 1.0);
            prop_assert!(s.next_batch().iter().all(|&i| i < n));
        }
        if let Ok(mut s) = ShuffledSampler::new(n, b, Some(seed)) {
            prop_assert!(b > 0 && b <= n);
            prop_assert!(s.next_batch().iter().all(|&i| i < n));
        }
        if let Ok(mut s) = FixedSizeSampler::new(n, b, Some(seed)) {
            prop_assert!(b > 0 && b <= n);
            prop_assert_eq!(s.next_batch().len(), b);
        }
        let idx: Vec<usize> = (0..n.min(50)).collect();
        let total: usize = physical_batches(&idx, b).map(|c| c.len()).sum();
        prop_assert_eq!(total, idx.len());
        prop_assert_eq!(physical_batches(&idx, b).count(), num_physical_batches(idx.len(), b));
    }

    #[test]
    fn normalisation(mean in hostile_f64(), std in hostile_f64(), len in 0usize..8) {
        let mut x = vec![0.25f32; len];
        let norm = Normalize { mean: vec![mean as f32], std: vec![std as f32] };
        // Documented: std must be positive (and both finite); apply refuses the rest.
        if norm.apply(&mut x, &[len.max(1)]).is_ok() && len > 0 {
            prop_assert!(x.iter().all(|v| v.is_finite()), "mean {mean} std {std}: {x:?}");
        }
    }
}
