//! Standard normal draws by the ziggurat method (Marsaglia & Tsang, "The Ziggurat Method
//! for Generating Random Variables", J. Stat. Softw. 2000; 256 layers, the ZIGNOR variant
//! of Doornik 2005 that takes the layer index and the uniform from one 64-bit word), with a
//! fast path that tests eight words at once.
//!
//! This is the algorithm of `rand_distr::StandardNormal`, step for step: the same word
//! layout (low 8 bits: layer; high 52 bits: the uniform in `[-1, 1)`), the same wedge test
//! and the same tail method, on tables computed by the same recurrence; it is tested
//! to reproduce `rand_distr`'s draws exactly from the same words. Where it differs is
//! speed: DP noise needs one draw per model coordinate, and the per-call path through
//! `Rng::sample` was half of the noise cost. Here, eight words are read from the key
//! stream's buffer without consuming them, the (vectorisable) first test decides all eight,
//! and the accepted prefix is kept; the first rejected word goes through the exact scalar
//! algorithm, which draws any further words from the stream in order. Every draw is thus
//! the one the scalar algorithm would make from the same stream position.

use std::sync::OnceLock;

/// Right edge of the base layer (Marsaglia & Tsang, 256 layers), as published.
#[allow(clippy::excessive_precision)]
const R: f64 = 3.654_152_885_361_008_8;
/// Area of every layer.
const V: f64 = 0.004_928_673_233_99;

struct Tables {
    /// Layer edges: `x[0] = V / f(R)` (the base layer's virtual width), `x[1] = R`, …,
    /// `x[256] = 0`.
    x: [f64; 257],
    /// `f(x[i]) = exp(-x[i]²/2)`.
    f: [f64; 257],
}

fn pdf(x: f64) -> f64 {
    (-x * x / 2.0).exp()
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let mut x = [0f64; 257];
        x[0] = V / pdf(R);
        x[1] = R;
        for i in 2..256 {
            // Equal areas: x[i]·(f(x[i]) − f(x[i−1])) … solved for the next edge.
            x[i] = (-2.0 * (V / x[i - 1] + pdf(x[i - 1])).ln()).sqrt();
        }
        x[256] = 0.0;
        let mut f = [0f64; 257];
        for (fi, xi) in f.iter_mut().zip(&x) {
            *fi = pdf(*xi);
        }
        Tables { x, f }
    })
}

/// A source of 64-bit words that may let the caller look ahead.
pub(crate) trait WordSource {
    fn next_u64(&mut self) -> u64;
    /// The next eight words without consuming them, if cheaply available.
    fn peek8(&mut self) -> Option<[u64; 8]>;
    /// Consumes `n ≤ 8` words after a successful [`WordSource::peek8`].
    fn skip(&mut self, n: usize);
}

/// `2^52 · m`-scaled mantissa bits with a given exponent (rand's `into_float_with_exponent`).
#[inline(always)]
fn with_exponent(m: u64, exponent: i32) -> f64 {
    f64::from_bits(m | (((1023 + exponent) as u64) << 52))
}

#[inline(always)]
fn uniform_pm1(bits: u64) -> f64 {
    // [2, 4) − 3 = [−1, 1), exactly as rand_distr.
    with_exponent(bits >> 12, 1) - 3.0
}

/// rand's `Standard` f64: 53 high bits, `[0, 1)`.
#[inline(always)]
fn standard_f64(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// rand's `Open01` f64: `(0, 1)`.
#[inline(always)]
fn open01(bits: u64) -> f64 {
    with_exponent(bits >> 12, 0) - (1.0 - f64::EPSILON / 2.0)
}

/// The scalar algorithm, starting from an already drawn word.
#[cold]
fn sample_from<S: WordSource>(mut bits: u64, src: &mut S, t: &Tables) -> f64 {
    loop {
        let i = (bits & 0xff) as usize;
        let u = uniform_pm1(bits);
        let x = u * t.x[i];
        if x.abs() < t.x[i + 1] {
            return x;
        }
        if i == 0 {
            // The tail beyond R (Marsaglia 1964).
            let (mut tx, mut ty) = (1.0f64, 0.0f64);
            while -2.0 * ty < tx * tx {
                tx = open01(src.next_u64()).ln() / R;
                ty = open01(src.next_u64()).ln();
            }
            return if u < 0.0 { tx - R } else { R - tx };
        }
        if t.f[i + 1] + (t.f[i] - t.f[i + 1]) * standard_f64(src.next_u64()) < pdf(x) {
            return x;
        }
        bits = src.next_u64();
    }
}

/// The first test of the algorithm on eight words: the candidate draws `(x as f32) · std`
/// and a bit mask of the words that pass (`|x| < x[i+1]`).
#[inline(always)]
fn test8_portable(w: &[u64; 8], t: &Tables, std: f32) -> ([f32; 8], u8) {
    let mut ys = [0f32; 8];
    let mut ok = 0u8;
    for l in 0..8 {
        let i = (w[l] & 0xff) as usize;
        let x = uniform_pm1(w[l]) * t.x[i];
        ys[l] = x as f32 * std;
        ok |= u8::from(x.abs() < t.x[i + 1]) << l;
    }
    (ys, ok)
}

/// [`test8_portable`] with AVX-512 arithmetic and compares: the same IEEE operations in the
/// same order (multiply, absolute value, compare, round to f32, multiply), so the same
/// results bit for bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn test8_avx512(w: &[u64; 8], t: &Tables, std: f32) -> ([f32; 8], u8) {
    use std::arch::x86_64::*;
    let wv = _mm512_loadu_si512(w.as_ptr() as *const _);
    let mant = _mm512_srli_epi64::<12>(wv);
    let two_to_four = _mm512_or_si512(mant, _mm512_set1_epi64((1024i64) << 52));
    let u = _mm512_sub_pd(_mm512_castsi512_pd(two_to_four), _mm512_set1_pd(3.0));
    // Table reads as scalar loads: AVX-512 gathers were slower here (AMD Zen).
    let mut a = [0f64; 8];
    let mut b = [0f64; 8];
    for l in 0..8 {
        let i = (w[l] & 0xff) as usize;
        a[l] = t.x[i];
        b[l] = t.x[i + 1];
    }
    let xi = _mm512_loadu_pd(a.as_ptr());
    let xi1 = _mm512_loadu_pd(b.as_ptr());
    let x = _mm512_mul_pd(u, xi);
    let ok = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(_mm512_abs_pd(x), xi1);
    let y = _mm256_mul_ps(_mm512_cvtpd_ps(x), _mm256_set1_ps(std));
    let mut ys = [0f32; 8];
    _mm256_storeu_ps(ys.as_mut_ptr(), y);
    (ys, ok)
}

/// Fills `out` with standard normals times `std` (as f32: `(z as f32) * std`).
pub(crate) fn fill<S: WordSource>(src: &mut S, out: &mut [f32], std: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected at run time.
        unsafe { fill_avx512(src, out, std) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected at run time.
        unsafe { fill_avx2(src, out, std) };
        return;
    }
    fill_with(src, out, std, test8_portable);
}

/// The whole loop compiled for AVX2: the portable eight-word test, which the compiler
/// vectorises there (the same IEEE operations, so the same draws).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fill_avx2<S: WordSource>(src: &mut S, out: &mut [f32], std: f32) {
    fill_with(src, out, std, test8_portable);
}

/// The whole loop compiled for AVX-512, so that the eight-word test inlines into it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fill_avx512<S: WordSource>(src: &mut S, out: &mut [f32], std: f32) {
    fill_with(src, out, std, |w, t, s| unsafe { test8_avx512(w, t, s) });
}

#[inline(always)]
fn fill_with<S: WordSource>(
    src: &mut S,
    out: &mut [f32],
    std: f32,
    test8: impl Fn(&[u64; 8], &Tables, f32) -> ([f32; 8], u8),
) {
    let t = tables();
    let mut k = 0;
    while k < out.len() {
        if out.len() - k >= 8 {
            if let Some(w) = src.peek8() {
                let (ys, ok) = test8(&w, t, std);
                if ok == 0xff {
                    out[k..k + 8].copy_from_slice(&ys);
                    src.skip(8);
                    k += 8;
                    continue;
                }
                // Keep the draws before the first word that fails the test.
                let accepted = (!ok).trailing_zeros() as usize;
                for (o, y) in out[k..k + accepted].iter_mut().zip(&ys) {
                    *o = *y;
                }
                src.skip(accepted);
                k += accepted;
            }
        }
        let bits = src.next_u64();
        out[k] = sample_from(bits, src, t) as f32 * std;
        k += 1;
    }
}

/// Any `RngCore` as a word source without look-ahead (the scalar path only).
pub(crate) struct Scalar<'a, R: rand::RngCore>(pub &'a mut R);

impl<R: rand::RngCore> WordSource for Scalar<'_, R> {
    #[inline]
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn peek8(&mut self) -> Option<[u64; 8]> {
        None
    }
    fn skip(&mut self, _n: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};
    use rand_chacha::ChaCha20Rng;
    use rand_distr::StandardNormal;

    /// A word source with look-ahead on any CPU (the fast path without KeyStream).
    struct Ahead(ChaCha20Rng, std::collections::VecDeque<u64>);

    impl WordSource for Ahead {
        fn next_u64(&mut self) -> u64 {
            self.1.pop_front().unwrap_or_else(|| self.0.next_u64())
        }
        fn peek8(&mut self) -> Option<[u64; 8]> {
            while self.1.len() < 8 {
                let w = self.0.next_u64();
                self.1.push_back(w);
            }
            Some(std::array::from_fn(|j| self.1[j]))
        }
        fn skip(&mut self, n: usize) {
            self.1.drain(..n);
        }
    }

    #[test]
    fn the_look_ahead_path_draws_what_rand_distr_draws() {
        let mut src = Ahead(ChaCha20Rng::seed_from_u64(5), Default::default());
        let mut reference = ChaCha20Rng::seed_from_u64(5);
        let mut ours = vec![0f32; 100_003];
        fill(&mut src, &mut ours, 1.5);
        for (j, z) in ours.iter().enumerate() {
            let want = reference.sample::<f32, _>(StandardNormal) * 1.5;
            assert_eq!(z.to_bits(), want.to_bits(), "draw {j}");
        }
    }

    #[test]
    fn the_eight_word_tests_agree() {
        let t = tables();
        let mut r = ChaCha20Rng::seed_from_u64(11);
        for _ in 0..20_000 {
            let w: [u64; 8] = std::array::from_fn(|_| r.next_u64());
            let a = test8_portable(&w, t, 0.7);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                let b = unsafe { test8_avx512(&w, t, 0.7) };
                assert_eq!(a.1, b.1);
                for (x, y) in a.0.iter().zip(&b.0) {
                    assert_eq!(x.to_bits(), y.to_bits());
                }
            }
        }
    }

    #[test]
    fn tables_describe_a_ziggurat() {
        let t = tables();
        assert!((t.x[0] - 3.910_757_959_537_09).abs() < 1e-12);
        for i in 1..255 {
            assert!(t.x[i] > t.x[i + 1], "edges decrease at {i}");
            // Equal areas: each layer above the base has area V.
            let area = t.x[i] * (t.f[i + 1] - t.f[i]);
            assert!((area - V).abs() < 1e-9, "layer {i}: area {area}");
        }
        // The top layer closes at 0 with the same area (up to the rounding of R and V).
        assert!((t.x[255] * (1.0 - t.f[255]) - V).abs() < 1e-9);
    }

    #[test]
    fn same_draws_as_rand_distr_from_the_same_words() {
        for seed in 0..4u64 {
            let mut a = ChaCha20Rng::seed_from_u64(seed);
            let mut b = ChaCha20Rng::seed_from_u64(seed);
            let mut ours = vec![0f32; 200_000];
            fill(&mut Scalar(&mut a), &mut ours, 1.0);
            for (j, z) in ours.iter().enumerate() {
                let want = b.sample::<f32, _>(StandardNormal);
                assert_eq!(z.to_bits(), want.to_bits(), "seed {seed}, draw {j}");
            }
            assert_eq!(a.get_word_pos(), b.get_word_pos());
        }
    }
}
