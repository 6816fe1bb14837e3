//! Small, version-stable random helpers on top of a raw `RngCore` stream.
//!
//! Only `next_u64` of the generator is used, so results depend on the ChaCha20 keystream
//! alone (which is fixed by its specification) and not on the distribution code of a
//! particular `rand` release: a seeded run reproduces exactly across `rand` upgrades.

use rand::RngCore;

/// A uniform `f64` in `(0, 1]` with 53 random bits (never 0, so `ln` is finite).
pub(crate) fn unit_open0<R: RngCore + ?Sized>(rng: &mut R) -> f64 {
    ((rng.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A uniform `f64` in `[0, 1)` with 53 random bits.
pub(crate) fn unit<R: RngCore + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A uniform integer in `0..n` (`n > 0`), exactly uniform (Lemire's method with
/// rejection).
pub(crate) fn below<R: RngCore + ?Sized>(rng: &mut R, n: usize) -> usize {
    debug_assert!(n > 0);
    let n = n as u64;
    if n <= 1 {
        return 0;
    }
    let threshold = n.wrapping_neg() % n;
    loop {
        let m = (rng.next_u64() as u128) * (n as u128);
        if (m as u64) >= threshold {
            return (m >> 64) as usize;
        }
    }
}

/// Bernoulli(`p`) trial.
pub(crate) fn bernoulli<R: RngCore + ?Sized>(rng: &mut R, p: f64) -> bool {
    unit(rng) < p
}

/// In-place Fisher–Yates shuffle.
pub(crate) fn shuffle<T, R: RngCore + ?Sized>(rng: &mut R, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = below(rng, i + 1);
        v.swap(i, j);
    }
}

/// `k` distinct indices drawn uniformly from `0..n` (`k <= n`), sorted ascending
/// (Floyd's algorithm: `O(k)` draws, no `O(n)` permutation).
pub(crate) fn sample_without_replacement<R: RngCore + ?Sized>(
    rng: &mut R,
    n: usize,
    k: usize,
) -> Vec<usize> {
    debug_assert!(k <= n);
    if k * 4 >= n {
        // Dense case: a partial Fisher-Yates over 0..n is cheaper than hashing.
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + below(rng, n - i);
            all.swap(i, j);
        }
        all.truncate(k);
        all.sort_unstable();
        return all;
    }
    let mut chosen = std::collections::HashSet::with_capacity(k);
    let mut out = Vec::with_capacity(k);
    for j in (n - k)..n {
        let t = below(rng, j + 1);
        let pick = if chosen.contains(&t) { j } else { t };
        chosen.insert(pick);
        out.push(pick);
    }
    out.sort_unstable();
    out
}
