//! Augmentation multiplicity (De et al. 2022): K copies per example are averaged before
//! clipping, so each example still contributes at most C.

mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use dp_core::clipping::{FlatClip, NoClip};
use dp_core::layers::*;
use dp_core::{
    batch_gradient, clipped_gradient, CrossEntropy, GradMode, GradOptions, Init, Sequential,
};

fn model(seed: u64) -> Sequential {
    let d = Device::Cpu;
    let mut i = Init::seeded(seed);
    Sequential::new(&d)
        .push(Reshape::new(&[6, 6, 1]))
        .push(Conv2d::new(Conv2dConfig::new(1, 4, 3), &mut i, &d).unwrap())
        .push(GroupNorm::new(2, 4, &d).unwrap())
        .push(Tanh::default())
        .push(Flatten::default())
        .push(Linear::new(64, 8, true, &mut i, &d).unwrap())
        .push(LayerNorm::new(8, &d).unwrap())
        .push(Linear::new(8, 3, true, &mut i, &d).unwrap())
}

#[test]
fn clipping_bounds_the_mean_over_copies() {
    let (b, k, c) = (4, 3, 0.2);
    let mut m = model(1);
    let mut r = rng(1);
    let x = (randn(&mut r, &[b * k, 36], DType::F32) * 3.0).unwrap();
    // Copies of one example share its label.
    let y: Vec<u32> = (0..b)
        .flat_map(|i| std::iter::repeat_n((i % 3) as u32, k))
        .collect();
    let y = Tensor::from_vec(y, b * k, &Device::Cpu).unwrap();
    // Reference: each example's gradient is the mean of its copies', clipped to C.
    let mut expected: Option<Vec<f64>> = None;
    let mut expected_unclipped: Option<Vec<f64>> = None;
    for i in 0..b {
        let g = flat(
            &batch_gradient(
                &mut m,
                &x.narrow(0, i * k, k).unwrap(),
                &y.narrow(0, i * k, k).unwrap(),
                &CrossEntropy,
            )
            .unwrap()
            .0,
        );
        let g: Vec<f64> = g.iter().map(|v| v / k as f64).collect();
        let n = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        let f = (c / (n + 1e-6)).min(1.0);
        let add = |acc: &mut Option<Vec<f64>>, s: f64| {
            let v = acc.get_or_insert_with(|| vec![0.0; g.len()]);
            for (a, gi) in v.iter_mut().zip(&g) {
                *a += s * gi;
            }
        };
        add(&mut expected, f);
        add(&mut expected_unclipped, 1.0);
    }
    for mode in [GradMode::Ghost, GradMode::Materialize, GradMode::Auto] {
        let opts = GradOptions {
            mode,
            augmentation_multiplicity: k,
            ..GradOptions::default()
        };
        let out = clipped_gradient(
            &mut m,
            &x,
            &y,
            &CrossEntropy,
            &mut FlatClip::new(c).unwrap(),
            &opts,
        )
        .unwrap();
        assert_eq!(out.examples, b);
        assert_eq!(out.stats.norms.len(), b);
        let got = flat(&out.sum);
        let e = expected.as_ref().unwrap();
        let scale = e.iter().fold(1e-6f64, |a, v| a.max(v.abs()));
        for (a, want) in got.iter().zip(e) {
            assert!((a - want).abs() < 1e-4 * scale, "{mode:?}: {a} vs {want}");
        }
        let out = clipped_gradient(&mut m, &x, &y, &CrossEntropy, &mut NoClip, &opts).unwrap();
        for (a, want) in flat(&out.sum)
            .iter()
            .zip(expected_unclipped.as_ref().unwrap())
        {
            assert!(
                (a - want).abs() < 1e-4 * scale.max(1.0),
                "{mode:?} unclipped: {a} vs {want}"
            );
        }
    }
    // A batch that is not a whole number of groups is refused.
    let opts = GradOptions {
        augmentation_multiplicity: 5,
        ..GradOptions::default()
    };
    assert!(clipped_gradient(&mut m, &x, &y, &CrossEntropy, &mut NoClip, &opts).is_err());
}
