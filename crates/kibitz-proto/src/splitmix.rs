//! SplitMix64 (Steele, Lea and Flood, 2014): a tiny deterministic generator for seeded ids,
//! simulations and test data. Not for secrets: anything security-bearing takes a
//! `rand_core::CryptoRng`.

/// The SplitMix64 generator: the state advances by [`SplitMix64::GAMMA`] per draw and each
/// draw is the state through [`SplitMix64::mix`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// The per-draw increment (the golden ratio in 64-bit fixed point).
    pub const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    /// A generator whose first draw is `mix(seed + GAMMA)`.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next number of the stream.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GAMMA);
        Self::mix(self.state)
    }

    /// SplitMix64's finalizer: a bijection that scatters nearby inputs, usable on its own to
    /// hash a counter.
    pub const fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::SplitMix64;

    #[test]
    fn matches_the_reference_stream() {
        // The reference implementation's first outputs for seed 0, and for 42.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(r.next_u64(), 0x06c4_5d18_8009_454f);
        let mut r = SplitMix64::new(42);
        assert_eq!(r.next_u64(), 0xbdd7_3226_2feb_6e95);
        assert_eq!(r.next_u64(), 0x28ef_e333_b266_f103);
    }

    #[test]
    fn mix_hashes_a_counter() {
        // (seed + n) * GAMMA through the finalizer, as the e2e harness picks cluster nodes.
        let pick = |seed: u64, n: u64| {
            SplitMix64::mix(seed.wrapping_add(n).wrapping_mul(SplitMix64::GAMMA))
        };
        assert_eq!(pick(7, 0), 0x2c82_9abe_1f45_32e1);
        assert_eq!(pick(7, 1), 0xc584_133a_c916_ab3c);
    }
}
