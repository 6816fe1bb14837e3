//! Output buffers that a kernel writes in full, allocated without zeroing them first.
//!
//! `vec![0f32; n]` costs a `memset` of the whole buffer (and, for a fresh page, the
//! kernel's own clearing) before the kernel overwrites every element anyway: on the CIFAR
//! CNN's step that was a tenth of the time. A [`Fresh`] buffer hands its kernel the slots
//! as `MaybeUninit<f32>`, which can only be written; the kernel then vouches, in one
//! `unsafe` call with the reason beside it, that it wrote them all. Kernels that
//! accumulate into their output zero one row at a time with [`zeroed`], right before
//! they use it, while the row is in cache.

use std::mem::MaybeUninit;

/// `n` f32 slots, none written yet.
pub(crate) struct Fresh {
    buf: Vec<f32>,
    n: usize,
}

impl Fresh {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
            n,
        }
    }

    /// The slots, to be written.
    pub(crate) fn slots(&mut self) -> &mut [MaybeUninit<f32>] {
        &mut self.buf.spare_capacity_mut()[..self.n]
    }

    /// The written buffer.
    ///
    /// # Safety
    /// Every slot of [`Fresh::slots`] has been written.
    pub(crate) unsafe fn assume_init(mut self) -> Vec<f32> {
        // SAFETY: the capacity is at least `n`, and the caller vouches for the writes.
        unsafe { self.buf.set_len(self.n) };
        self.buf
    }
}

/// Writes 0 to every slot of `s` and returns it as initialised floats.
pub(crate) fn zeroed(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    s.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was just written, and `MaybeUninit<f32>` has the layout of
    // `f32`.
    unsafe { &mut *(s as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Writes `f(x[j])` to slot `j` of `s` for every `j` (the lengths must be equal).
#[inline(always)]
pub(crate) fn write_map(s: &mut [MaybeUninit<f32>], x: &[f32], f: impl Fn(f32) -> f32) {
    assert_eq!(
        s.len(),
        x.len(),
        "write_map: slots and input differ in length"
    );
    for (o, &v) in s.iter_mut().zip(x) {
        o.write(f(v));
    }
}

/// Writes `f(x[j], y[j])` to slot `j` of `s` for every `j` (the lengths must be equal).
#[inline(always)]
pub(crate) fn write_map2(
    s: &mut [MaybeUninit<f32>],
    x: &[f32],
    y: &[f32],
    f: impl Fn(f32, f32) -> f32,
) {
    assert!(
        s.len() == x.len() && s.len() == y.len(),
        "write_map2: slots and inputs differ in length"
    );
    for ((o, &u), &v) in s.iter_mut().zip(x).zip(y) {
        o.write(f(u, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_slots_come_back_in_order() {
        let mut f = Fresh::new(5);
        write_map(f.slots(), &[0.0, 1.0, 2.0, 3.0, 4.0], |v| v * 2.0);
        // SAFETY: `write_map` wrote all five slots.
        let v = unsafe { f.assume_init() };
        assert_eq!(v, vec![0.0, 2.0, 4.0, 6.0, 8.0]);
        let mut h = Fresh::new(2);
        write_map2(h.slots(), &[1.0, 2.0], &[3.0, 5.0], |a, b| a * b);
        // SAFETY: `write_map2` wrote both slots.
        assert_eq!(unsafe { h.assume_init() }, vec![3.0, 10.0]);
        let mut g = Fresh::new(3);
        assert_eq!(zeroed(g.slots()), &mut [0.0f32; 3]);
        // SAFETY: `zeroed` wrote all three slots.
        assert_eq!(unsafe { g.assume_init() }, vec![0.0; 3]);
    }

    #[test]
    #[should_panic(expected = "differ in length")]
    fn a_short_input_panics_instead_of_leaving_slots_unwritten() {
        let mut f = Fresh::new(3);
        write_map(f.slots(), &[1.0, 2.0], |v| v);
    }
}
