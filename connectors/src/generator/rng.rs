//! A tiny seeded PRNG (SplitMix64) and the distributions the generators need. Not for
//! cryptography; chosen because it is fast, has a 64-bit state and is trivially seeded.

#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.state)
    }

    /// Uniform in `[0, 1)`.
    #[inline]
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift.
    #[inline]
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Roughly standard normal: the Irwin-Hall sum of four 16-bit uniforms from one draw,
    /// centred and scaled. Tails stop at about ±3.5, which suits synthetic data.
    #[inline]
    pub(crate) fn normal(&mut self) -> f64 {
        let x = self.next_u64();
        let sum = (x & 0xFFFF) + ((x >> 16) & 0xFFFF) + ((x >> 32) & 0xFFFF) + (x >> 48);
        (sum as f64 / 65536.0 - 2.0) * 1.732_050_807_568_877_2
    }

    /// Index into `cumulative` (ascending running totals of weights) picked by weight.
    #[inline]
    pub(crate) fn weighted(&mut self, cumulative: &[u32]) -> usize {
        let total = cumulative.last().copied().unwrap_or(1).max(1);
        let x = self.below(u64::from(total)) as u32;
        cumulative
            .iter()
            .position(|c| x < *c)
            .unwrap_or(cumulative.len().saturating_sub(1))
    }
}

/// The SplitMix64 finaliser: a good stateless 64-bit hash.
#[inline]
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Running totals of `weights`, for [`SplitMix64::weighted`].
pub(crate) fn cumulative(weights: &[u32]) -> Vec<u32> {
    weights
        .iter()
        .scan(0u32, |acc, w| {
            *acc += w;
            Some(*acc)
        })
        .collect()
}
