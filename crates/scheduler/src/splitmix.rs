//! A tiny seeded PRNG (SplitMix64) for the strategies that draw: least-request and random.
//!
//! Why not the `rand` crate: the scheduler is pure, and everything it remembers between calls
//! must be a value the caller holds ([`crate::SchedulerState::rng_state`]). SplitMix64's whole
//! state is one `u64`, its output passes BigCrush, and it fits in ten lines, so the crate stays
//! free of dependencies and every placement can be replayed from the seed.

/// SplitMix64 (Steele, Lea and Flood, 2014), as in the reference `splitmix64.c`.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) fn new(state: u64) -> SplitMix64 {
        SplitMix64 { state }
    }

    /// The state to hand back to the caller; `new(state())` continues the same sequence.
    pub(crate) fn state(&self) -> u64 {
        self.state
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform index in `0..len`, by multiply-and-shift (Lemire). Its bias is below
    /// `len / 2^64`, far under anything a placement could show, and it needs no retry loop.
    pub(crate) fn below(&mut self, len: usize) -> usize {
        assert!(len > 0, "drawing from an empty range");
        ((u128::from(self.next_u64()) * len as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::SplitMix64;

    #[test]
    fn matches_the_reference_sequence() {
        // First outputs of the reference implementation seeded with 0.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let resumed = SplitMix64::new(rng.state()).next_u64();
        assert_eq!(resumed, rng.next_u64());
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = SplitMix64::new(7);
        assert!((0..10_000).all(|_| rng.below(3) < 3));
        assert_eq!(rng.below(1), 0);
    }
}
