//! The ChaCha20 keystream of `rand_chacha::ChaCha20Rng`, sixteen blocks at a time with
//! AVX-512.
//!
//! The noise of a DP step needs one 64-bit word per coordinate (the ziggurat of
//! `rand_distr`): 2 MB of keystream per step for a 270k-parameter model. `rand_chacha`
//! computes four blocks at a time with AVX2 (≈1.7 cycles/byte here, 1.4 ms per MLP step);
//! with sixteen 32-bit lanes per register and AVX-512's rotate instruction one pass of the
//! twenty rounds yields sixteen blocks (≈3× faster). The output is the same stream, word
//! for word — same key layout, 64-bit block counter, 64-bit stream id (tested against
//! `rand_chacha` on every run of the test suite), so a seed gives the same noise whichever
//! implementation a machine uses. [`KeyStream::new`] returns `None` where AVX-512F is not
//! available; callers then use `rand_chacha` itself.

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
}

impl KeyStream {
    /// `None` if this CPU lacks AVX-512F.
    pub(crate) fn new(seed: [u8; 32], stream: u64) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
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
                });
            }
        }
        let _ = (seed, stream);
        None
    }

    fn refill(&mut self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a `KeyStream` exists only if AVX-512F was detected at run time.
        unsafe {
            blocks16(&self.key, self.stream, self.counter, &mut self.buf);
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
    let mut lo = [0u32; 16];
    let mut hi = [0u32; 16];
    for (b, (l, h)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
        let c = counter.wrapping_add(b as u64);
        *l = c as u32;
        *h = (c >> 32) as u32;
    }
    let init: [__m512i; 16] = [
        splat(0x6170_7865),
        splat(0x3320_646e),
        splat(0x7962_2d32),
        splat(0x6b20_6574),
        splat(key[0]),
        splat(key[1]),
        splat(key[2]),
        splat(key[3]),
        splat(key[4]),
        splat(key[5]),
        splat(key[6]),
        splat(key[7]),
        _mm512_loadu_si512(lo.as_ptr() as *const _),
        _mm512_loadu_si512(hi.as_ptr() as *const _),
        splat(stream as u32),
        splat((stream >> 32) as u32),
    ];
    let mut x = init;
    for _ in 0..10 {
        qr(&mut x, 0, 4, 8, 12);
        qr(&mut x, 1, 5, 9, 13);
        qr(&mut x, 2, 6, 10, 14);
        qr(&mut x, 3, 7, 11, 15);
        qr(&mut x, 0, 5, 10, 15);
        qr(&mut x, 1, 6, 11, 12);
        qr(&mut x, 2, 7, 8, 13);
        qr(&mut x, 3, 4, 9, 14);
    }
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
        let Some(_) = KeyStream::new([0; 32], 0) else {
            eprintln!("no AVX-512F on this CPU: the rand_chacha path is used; nothing to compare");
            return;
        };
        let mut seeds = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for stream in [0u64, 1, 7, 1 << 33, u64::MAX] {
            let seed: [u8; 32] = seeds.gen();
            let mut fast = KeyStream::new(seed, stream).unwrap();
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
        let Some(mut fast) = KeyStream::new([9; 32], 5) else {
            return;
        };
        let mut slow = reference([9; 32], 5);
        let start = (u32::MAX as u64 - 3) * 16; // a few blocks before the 2^32 boundary
        fast.counter = start / 16;
        slow.set_word_pos(start as u128);
        for _ in 0..BUF_WORDS * 2 {
            assert_eq!(fast.next_u32(), slow.next_u32());
        }
    }
}
