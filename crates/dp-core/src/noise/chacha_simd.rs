//! The ChaCha20 keystream of `rand_chacha::ChaCha20Rng`, sixteen blocks per refill: one
//! AVX-512 pass or two AVX2 passes of eight.
//!
//! The noise of a DP step needs one 64-bit word per coordinate (the ziggurat of
//! `rand_distr`): 2 MB of keystream per step for a 270k-parameter model. `rand_chacha`
//! computes four blocks at a time with AVX2 and hands them out through `BlockRng`, with
//! no way to look ahead at the next eight words, which the ziggurat's eight-word first test
//! needs. Here, lane `b` of every register holds block `b`, so one pass of the twenty rounds
//! yields as many blocks as the register has 32-bit lanes: sixteen with AVX-512 (and its
//! rotate instruction), eight with AVX2 (rotations by byte shuffles and shift pairs). The
//! output is the same stream, word for word — same key layout, 64-bit block counter, 64-bit
//! stream id (tested against `rand_chacha` on every run of the test suite), so a seed gives
//! the same noise whichever implementation a machine uses. [`KeyStream::new`] returns `None`
//! where neither AVX-512F nor AVX2 is available; callers then use `rand_chacha` itself.

use rand::RngCore;

/// Words per refill: sixteen 64-byte blocks.
const BUF_WORDS: usize = 256;

/// A ChaCha20 generator for one (key, stream) pair from block 0, equal to
/// `ChaCha20Rng::from_seed(key)` after `set_stream(stream)`.
pub(crate) struct KeyStream {
    key: [u32; 8],
    stream: u64,
    /// Block counter of the next refill.
    counter: u64,
    buf: [u32; BUF_WORDS],
    /// Next unread word of `buf` (`BUF_WORDS` = empty).
    idx: usize,
    simd: Simd,
}

/// The instruction set a [`KeyStream`] computes its blocks with, detected once at
/// construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Simd {
    Avx512,
    Avx2,
}

impl KeyStream {
    /// `None` if this CPU has neither AVX-512F nor AVX2.
    pub(crate) fn new(seed: [u8; 32], stream: u64) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            let simd = if std::arch::is_x86_feature_detected!("avx512f") {
                Some(Simd::Avx512)
            } else if std::arch::is_x86_feature_detected!("avx2") {
                Some(Simd::Avx2)
            } else {
                None
            };
            if let Some(simd) = simd {
                let mut key = [0u32; 8];
                for (k, b) in key.iter_mut().zip(seed.chunks_exact(4)) {
                    *k = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
                return Some(Self {
                    key,
                    stream,
                    counter: 0,
                    buf: [0; BUF_WORDS],
                    idx: BUF_WORDS,
                    simd,
                });
            }
        }
        let _ = (seed, stream);
        None
    }

    fn refill(&mut self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a `KeyStream` exists only with `simd` detected at run time.
        unsafe {
            match self.simd {
                Simd::Avx512 => blocks16(&self.key, self.stream, self.counter, &mut self.buf),
                Simd::Avx2 => {
                    let (first, second) = self.buf.split_at_mut(BUF_WORDS / 2);
                    blocks8(&self.key, self.stream, self.counter, first);
                    blocks8(&self.key, self.stream, self.counter.wrapping_add(8), second);
                }
            }
        }
        self.counter = self.counter.wrapping_add(16);
        self.idx = 0;
    }
}

impl RngCore for KeyStream {
    #[inline]
    fn next_u32(&mut self) -> u32 {
        if self.idx >= BUF_WORDS {
            self.refill();
        }
        let v = self.buf[self.idx];
        self.idx += 1;
        v
    }

    /// Two consecutive words, the first in the low half — including across a refill, as
    /// `rand_core::block::BlockRng` does.
    #[inline]
    fn next_u64(&mut self) -> u64 {
        if self.idx + 1 < BUF_WORDS {
            let (lo, hi) = (self.buf[self.idx], self.buf[self.idx + 1]);
            self.idx += 2;
            (u64::from(hi) << 32) | u64::from(lo)
        } else {
            let lo = self.next_u32();
            let hi = self.next_u32();
            (u64::from(hi) << 32) | u64::from(lo)
        }
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(4) {
            let w = self.next_u32().to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl super::ziggurat::WordSource for KeyStream {
    #[inline]
    fn next_u64(&mut self) -> u64 {
        RngCore::next_u64(self)
    }

    /// Eight words from the buffer when they do not straddle a refill.
    #[inline]
    fn peek8(&mut self) -> Option<[u64; 8]> {
        if self.idx + 16 > BUF_WORDS {
            return None;
        }
        let b = &self.buf[self.idx..self.idx + 16];
        let mut w = [0u64; 8];
        for (j, v) in w.iter_mut().enumerate() {
            *v = (u64::from(b[2 * j + 1]) << 32) | u64::from(b[2 * j]);
        }
        Some(w)
    }

    #[inline]
    fn skip(&mut self, n: usize) {
        self.idx += 2 * n;
    }
}

/// The ChaCha20 input words for (key, stream): constants, key, block counter (words 12
/// and 13, left 0 here: each SIMD lane sets its own), stream id.
#[cfg(target_arch = "x86_64")]
fn state_words(key: &[u32; 8], stream: u64) -> [u32; 16] {
    let mut w = [0u32; 16];
    w[..4].copy_from_slice(&[0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574]);
    w[4..12].copy_from_slice(key);
    w[14] = stream as u32;
    w[15] = (stream >> 32) as u32;
    w
}

/// The low and high words of the block counters `counter..counter+N`, one per lane.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lane_counters<const N: usize>(counter: u64) -> ([u32; N], [u32; N]) {
    let c = |b: usize| counter.wrapping_add(b as u64);
    (
        std::array::from_fn(|b| c(b) as u32),
        std::array::from_fn(|b| (c(b) >> 32) as u32),
    )
}

/// ChaCha20's ten double rounds (column then diagonal quarter rounds) over the sixteen
/// state registers, with the backend's quarter round.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn twenty_rounds<T>(x: &mut [T; 16], qr: impl Fn(&mut [T; 16], usize, usize, usize, usize)) {
    for _ in 0..10 {
        qr(x, 0, 4, 8, 12);
        qr(x, 1, 5, 9, 13);
        qr(x, 2, 6, 10, 14);
        qr(x, 3, 7, 11, 15);
        qr(x, 0, 5, 10, 15);
        qr(x, 1, 6, 11, 12);
        qr(x, 2, 7, 8, 13);
        qr(x, 3, 4, 9, 14);
    }
}

/// Sixteen consecutive ChaCha20 blocks (counters `counter..counter+16`), lane `b` of
/// every register holding block `b`; written out block after block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn blocks16(key: &[u32; 8], stream: u64, counter: u64, out: &mut [u32; BUF_WORDS]) {
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn qr(x: &mut [__m512i; 16], a: usize, b: usize, c: usize, d: usize) {
        x[a] = _mm512_add_epi32(x[a], x[b]);
        x[d] = _mm512_rol_epi32::<16>(_mm512_xor_si512(x[d], x[a]));
        x[c] = _mm512_add_epi32(x[c], x[d]);
        x[b] = _mm512_rol_epi32::<12>(_mm512_xor_si512(x[b], x[c]));
        x[a] = _mm512_add_epi32(x[a], x[b]);
        x[d] = _mm512_rol_epi32::<8>(_mm512_xor_si512(x[d], x[a]));
        x[c] = _mm512_add_epi32(x[c], x[d]);
        x[b] = _mm512_rol_epi32::<7>(_mm512_xor_si512(x[b], x[c]));
    }

    let splat = |w: u32| _mm512_set1_epi32(w as i32);
    let (lo, hi) = lane_counters::<16>(counter);
    let words = state_words(key, stream);
    let init: [__m512i; 16] = std::array::from_fn(|j| match j {
        12 => _mm512_loadu_si512(lo.as_ptr() as *const _),
        13 => _mm512_loadu_si512(hi.as_ptr() as *const _),
        _ => splat(words[j]),
    });
    let mut x = init;
    twenty_rounds(&mut x, |x, a, b, c, d| qr(x, a, b, c, d));
    let mut r = [_mm512_setzero_si512(); 16];
    for j in 0..16 {
        r[j] = _mm512_add_epi32(x[j], init[j]);
    }
    // Transpose (register j = word j of blocks 0..16 → block b's 16 words): 32-bit and
    // 64-bit interleaves leave, in 128-bit lane L of u[4k+m], words 4k..4k+3 of block
    // 4L+m; two rounds of 128-bit lane shuffles gather each block's four quarters.
    let mut t = [_mm512_setzero_si512(); 16];
    for k in 0..8 {
        t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
    }
    let mut u = [_mm512_setzero_si512(); 16];
    for k in 0..4 {
        u[4 * k] = _mm512_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
        u[4 * k + 1] = _mm512_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
        u[4 * k + 2] = _mm512_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
        u[4 * k + 3] = _mm512_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
    }
    let dst = out.as_mut_ptr();
    for m in 0..4 {
        let (a, b, c, d) = (u[m], u[4 + m], u[8 + m], u[12 + m]);
        let v0 = _mm512_shuffle_i32x4::<0x44>(a, b);
        let v1 = _mm512_shuffle_i32x4::<0x44>(c, d);
        let v2 = _mm512_shuffle_i32x4::<0xEE>(a, b);
        let v3 = _mm512_shuffle_i32x4::<0xEE>(c, d);
        let blocks = [
            _mm512_shuffle_i32x4::<0x88>(v0, v1),
            _mm512_shuffle_i32x4::<0xDD>(v0, v1),
            _mm512_shuffle_i32x4::<0x88>(v2, v3),
            _mm512_shuffle_i32x4::<0xDD>(v2, v3),
        ];
        for (l, blk) in blocks.iter().enumerate() {
            // SAFETY: block 4l+m of 16, inside the 256-word buffer.
            _mm512_storeu_si512(dst.add((4 * l + m) * 16) as *mut _, *blk);
        }
    }
}

/// Eight consecutive ChaCha20 blocks (counters `counter..counter+8`) with AVX2, lane `b`
/// of every register holding block `b`; written out block after block into `out`
/// (128 words).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn blocks8(key: &[u32; 8], stream: u64, counter: u64, out: &mut [u32]) {
    use std::arch::x86_64::*;
    assert_eq!(out.len(), 128);

    #[inline(always)]
    unsafe fn rol<const L: i32, const R: i32>(v: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_slli_epi32::<L>(v), _mm256_srli_epi32::<R>(v))
    }
    // Rotations by whole bytes as byte shuffles within each 32-bit word.
    let rot16 = _mm256_setr_epi8(
        2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9,
        14, 15, 12, 13,
    );
    let rot8 = _mm256_setr_epi8(
        3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14, 3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10,
        15, 12, 13, 14,
    );
    let qr = |x: &mut [__m256i; 16], a: usize, b: usize, c: usize, d: usize| {
        x[a] = _mm256_add_epi32(x[a], x[b]);
        x[d] = _mm256_shuffle_epi8(_mm256_xor_si256(x[d], x[a]), rot16);
        x[c] = _mm256_add_epi32(x[c], x[d]);
        x[b] = rol::<12, 20>(_mm256_xor_si256(x[b], x[c]));
        x[a] = _mm256_add_epi32(x[a], x[b]);
        x[d] = _mm256_shuffle_epi8(_mm256_xor_si256(x[d], x[a]), rot8);
        x[c] = _mm256_add_epi32(x[c], x[d]);
        x[b] = rol::<7, 25>(_mm256_xor_si256(x[b], x[c]));
    };

    let splat = |w: u32| _mm256_set1_epi32(w as i32);
    let (lo, hi) = lane_counters::<8>(counter);
    let words = state_words(key, stream);
    let init: [__m256i; 16] = std::array::from_fn(|j| match j {
        12 => _mm256_loadu_si256(lo.as_ptr() as *const _),
        13 => _mm256_loadu_si256(hi.as_ptr() as *const _),
        _ => splat(words[j]),
    });
    let mut x = init;
    twenty_rounds(&mut x, qr);
    let dst = out.as_mut_ptr();
    // Two 8×8 transposes (words 0..8 and 8..16 of the eight blocks): 32-bit and 64-bit
    // interleaves leave, in 128-bit half h of u[m], words 4k..4k+3 of block 4h+m for the
    // first and second four registers; 128-bit permutes pair the halves into blocks.
    for half in 0..2 {
        let r: [__m256i; 8] =
            std::array::from_fn(|j| _mm256_add_epi32(x[8 * half + j], init[8 * half + j]));
        let t: [__m256i; 8] = std::array::from_fn(|j| {
            let (a, b) = (r[2 * (j / 2)], r[2 * (j / 2) + 1]);
            if j % 2 == 0 {
                _mm256_unpacklo_epi32(a, b)
            } else {
                _mm256_unpackhi_epi32(a, b)
            }
        });
        let u: [__m256i; 8] = std::array::from_fn(|j| {
            let base = 4 * (j / 4);
            let (a, b) = match j % 4 {
                0 | 1 => (t[base], t[base + 2]),
                _ => (t[base + 1], t[base + 3]),
            };
            if j % 2 == 0 {
                _mm256_unpacklo_epi64(a, b)
            } else {
                _mm256_unpackhi_epi64(a, b)
            }
        });
        for m in 0..4 {
            let low = _mm256_permute2x128_si256::<0x20>(u[m], u[4 + m]);
            let high = _mm256_permute2x128_si256::<0x31>(u[m], u[4 + m]);
            // SAFETY: blocks m and 4+m of 8, words 8·half..8·half+8, inside `out` (128).
            _mm256_storeu_si256(dst.add(m * 16 + 8 * half) as *mut _, low);
            _mm256_storeu_si256(dst.add((4 + m) * 16 + 8 * half) as *mut _, high);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    fn reference(seed: [u8; 32], stream: u64) -> ChaCha20Rng {
        let mut r = ChaCha20Rng::from_seed(seed);
        r.set_stream(stream);
        r
    }

    #[test]
    fn same_words_as_rand_chacha() {
        let Some(probe) = KeyStream::new([0; 32], 0) else {
            eprintln!("neither AVX-512F nor AVX2 on this CPU: the rand_chacha path is used");
            return;
        };
        same_words_with(probe.simd);
        // Where the CPU has AVX-512F, the AVX2 blocks are checked as well.
        if probe.simd == Simd::Avx512 && std::arch::is_x86_feature_detected!("avx2") {
            same_words_with(Simd::Avx2);
        }
    }

    fn with_simd(seed: [u8; 32], stream: u64, simd: Simd) -> KeyStream {
        let mut k = KeyStream::new(seed, stream).unwrap();
        k.simd = simd;
        k
    }

    fn same_words_with(simd: Simd) {
        let mut seeds = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for stream in [0u64, 1, 7, 1 << 33, u64::MAX] {
            let seed: [u8; 32] = seeds.gen();
            let mut fast = with_simd(seed, stream, simd);
            let mut slow = reference(seed, stream);
            // 3 refills of u32s, then u64s starting at an odd word (crossing refills).
            for i in 0..3 * BUF_WORDS + 1 {
                assert_eq!(
                    fast.next_u32(),
                    slow.next_u32(),
                    "stream {stream}, word {i}"
                );
            }
            for i in 0..2000 {
                assert_eq!(fast.next_u64(), slow.next_u64(), "stream {stream}, u64 {i}");
            }
            let (mut a, mut b) = ([0u8; 37], [0u8; 37]);
            fast.fill_bytes(&mut a);
            slow.fill_bytes(&mut b);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn the_block_counter_carries_into_the_high_word() {
        let Some(probe) = KeyStream::new([9; 32], 5) else {
            return;
        };
        for simd in [probe.simd, Simd::Avx2] {
            if simd == Simd::Avx2 && !std::arch::is_x86_feature_detected!("avx2") {
                continue;
            }
            let mut fast = with_simd([9; 32], 5, simd);
            let mut slow = reference([9; 32], 5);
            // A few blocks before the 2^32 boundary, and (AVX2) a boundary inside a pass.
            let start = (u32::MAX as u64 - 11) * 16;
            fast.counter = start / 16;
            slow.set_word_pos(start as u128);
            for _ in 0..BUF_WORDS * 2 {
                assert_eq!(fast.next_u32(), slow.next_u32(), "{simd:?}");
            }
        }
    }
}
