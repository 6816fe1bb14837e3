//! The scattering transform against kymatio 0.3.0's NumPy frontend on real digits (values
//! stored by `scripts/kymatio_reference.py`; CI does not run Python), its output shape,
//! and two properties of the cascade on known images.

use dp_data::{load_bundled_mnist_all, Scattering2D};
use serde_json::Value;

const REFERENCE: &str = include_str!("data/kymatio_scattering.json");

/// Tolerance against kymatio, relative to the largest coefficient of the image: kymatio
/// builds its filters in complex64 (≈ 6e-8 relative rounding per filter value, a few
/// filters composed), this crate in f64, and the features are stored as f32. Measured
/// agreement is 1.2e-7 (printed with --nocapture); kymatio's constant 3.1415 replaced by π
/// would already give 3e-5, a wrong angle, scale, padding or channel order errors of order
/// 1e-1.
const REL_TOL: f64 = 1e-6;

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

#[test]
fn agrees_with_kymatio_on_real_digits() {
    let doc: Value = serde_json::from_str(REFERENCE).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    let all = load_bundled_mnist_all().unwrap();
    let mut worst_rel = 0f64;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (j, l) = (case["J"].as_u64().unwrap(), case["L"].as_u64().unwrap());
        let (h, w) = (
            case["height"].as_u64().unwrap() as usize,
            case["width"].as_u64().unwrap() as usize,
        );
        let image: Vec<f32> = f64s(&case["image"]).iter().map(|&v| v as f32).collect();
        // The stored inputs are the bundled file's first digits (the 28×28 cases in full).
        if (h, w) == (28, 28) {
            let i: usize = name.trim_start_matches("digit").parse().unwrap();
            for (a, b) in image.iter().zip(all.example(i).unwrap()) {
                assert!(
                    (a - b).abs() < 1e-6,
                    "{name}: stored input is not digit {i}"
                );
            }
        }
        let expected = f64s(&case["coefficients"]);
        let shape: Vec<usize> = f64s(&case["shape"]).iter().map(|&v| v as usize).collect();
        let s = Scattering2D::new(h, w, j as usize, l as usize).unwrap();
        let (oh, ow) = s.output_size();
        assert_eq!(shape, [s.channels(), oh, ow], "{name}: shape");
        let got = s.transform_image(&image).unwrap();
        assert_eq!(got.len(), expected.len());
        let scale = expected.iter().fold(0f64, |m, v| m.max(v.abs()));
        let (mut max_abs, mut at) = (0f64, 0usize);
        for (k, (g, e)) in got.iter().zip(&expected).enumerate() {
            let d = (*g as f64 - e).abs();
            if d > max_abs {
                (max_abs, at) = (d, k);
            }
        }
        let rel = max_abs / scale;
        worst_rel = worst_rel.max(rel);
        eprintln!(
            "{name}: J={j} L={l} {shape:?}: max |ours − kymatio| = {max_abs:.3e} \
             (coefficient {at}), max |S| = {scale:.4}, relative {rel:.3e}"
        );
        assert!(
            rel < REL_TOL,
            "{name}: max abs error {max_abs:.3e} at coefficient {at} (channel {}), \
             {rel:.3e} of max |S| = {scale:.4}",
            at / (oh * ow)
        );
    }
    eprintln!("worst relative error over all cases: {worst_rel:.3e}");
}

#[test]
fn dataset_transform_matches_per_image_and_keeps_labels() {
    let all = load_bundled_mnist_all().unwrap();
    let few = all.subset(&[0, 7, 42]);
    let s = Scattering2D::tramer_boneh(28, 28).unwrap();
    let feats = s.transform_dataset(&few).unwrap();
    assert_eq!(feats.example_shape(), &[81, 7, 7]);
    assert_eq!(feats.labels(), few.labels());
    for i in 0..few.len() {
        let one = s.transform_image(few.example(i).unwrap()).unwrap();
        assert_eq!(feats.example(i).unwrap(), &one[..]);
    }
}

#[test]
fn constant_image_has_only_the_low_pass_channel() {
    // Morlet wavelets have zero mean, so |c ⋆ ψ| = 0 and every order-1/2 path vanishes; the
    // low-pass has gain 2π/(2·3.1415) at frequency 0 (kymatio's normalisation constant).
    let s = Scattering2D::tramer_boneh(28, 28).unwrap();
    let c = 0.7f32;
    let out = s.transform_image(&vec![c; 784]).unwrap();
    #[allow(clippy::approx_constant)] // kymatio's literal constant
    let gain = std::f64::consts::PI / 3.1415;
    for v in &out[..49] {
        approx::assert_relative_eq!(*v as f64, c as f64 * gain, max_relative = 1e-5);
    }
    for v in &out[49..] {
        assert!(
            v.abs() < 1e-5,
            "order 1/2 coefficient {v} on a constant image"
        );
    }
}

#[test]
fn energy_is_nearly_conserved_on_a_digit() {
    // The scattering of a digit keeps most of its energy in orders 0–2 and never creates
    // energy: with each coefficient standing for a 2^J × 2^J block of pixels,
    // 4^J·‖Sx‖² ≈ ‖x‖² from below (Mallat 2012, Thm 2.6: S is non-expansive; Bruna & Mallat
    // 2013: the energy left after order 2 is small). Measured on these digits: 0.81–0.85
    // (Morlet filters are not a tight frame, and the one-pixel crop drops a border).
    let all = load_bundled_mnist_all().unwrap();
    let s = Scattering2D::tramer_boneh(28, 28).unwrap();
    for i in [0, 1, 2, 3] {
        let x = all.example(i).unwrap();
        let ex: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum();
        let out = s.transform_image(x).unwrap();
        let es: f64 = out.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() * 16.0;
        let order0: f64 = out[..49].iter().map(|&v| (v as f64).powi(2)).sum::<f64>() * 16.0;
        let ratio = es / ex;
        eprintln!(
            "digit {i}: 4^J‖Sx‖²/‖x‖² = {ratio:.4}, order 0 alone {:.4}",
            order0 / ex
        );
        assert!(
            (0.7..=1.0).contains(&ratio),
            "digit {i}: energy ratio {ratio}"
        );
        // Orders 1 and 2 carry a real share of a digit's energy (its edges).
        assert!(order0 / ex < 0.9 * ratio);
    }
}

#[test]
fn bad_settings_and_images_are_refused() {
    assert!(Scattering2D::new(28, 28, 0, 8).is_err());
    assert!(Scattering2D::new(28, 28, 2, 0).is_err());
    assert!(Scattering2D::new(30, 28, 2, 8).is_err());
    assert!(Scattering2D::new(28, 0, 2, 8).is_err());
    assert!(Scattering2D::new(28, 28, 64, 8).is_err());
    let s = Scattering2D::tramer_boneh(28, 28).unwrap();
    assert!(s.transform_image(&[0.0; 783]).is_err());
    let mut img = vec![0.0f32; 784];
    img[100] = f32::INFINITY;
    assert!(s.transform_image(&img).is_err());
    // A dataset of another image size is refused, not silently misread.
    let other =
        dp_data::Dataset::new("x", vec![0.0; 2 * 32 * 32], vec![0, 1], vec![1, 32, 32], 2).unwrap();
    assert!(s.transform_dataset(&other).is_err());
}

#[test]
fn group_norm_of_features_is_per_example() {
    // Tramèr & Boneh's GroupNorm(27, 81): each example's groups of 3 channels get mean 0 and
    // variance 1 from that example alone — so the normalised features of one example do not
    // change when the other examples do (no privacy cost).
    let all = load_bundled_mnist_all().unwrap();
    let s = Scattering2D::tramer_boneh(28, 28).unwrap();
    let norm = dp_data::GroupNormalize::new(27, 1e-5).unwrap();
    let mut a = s.transform_dataset(&all.subset(&[0, 1, 2])).unwrap();
    let raw = a.example(1).unwrap().to_vec();
    let mut b = s.transform_dataset(&all.subset(&[0, 9, 10])).unwrap();
    norm.apply_dataset(&mut a).unwrap();
    norm.apply_dataset(&mut b).unwrap();
    assert_eq!(a.example(0).unwrap(), b.example(0).unwrap());
    let moments = |g: &[f32]| {
        let n = g.len() as f64;
        let mean = g.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = g.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var)
    };
    for (group, before) in a.example(1).unwrap().chunks(3 * 49).zip(raw.chunks(3 * 49)) {
        let (mean, var) = moments(group);
        let (_, v0) = moments(before);
        assert!(mean.abs() < 1e-5, "group mean {mean}");
        // (x − μ)/√(v + ε) has variance v/(v + ε): ε matters for the small order-2 paths.
        approx::assert_relative_eq!(var, v0 / (v0 + 1e-5), max_relative = 1e-4);
    }
    assert!(dp_data::GroupNormalize::new(25, 1e-5)
        .unwrap()
        .apply_dataset(&mut a)
        .is_err());
    assert!(dp_data::GroupNormalize::new(3, f32::NAN).is_err());
}
