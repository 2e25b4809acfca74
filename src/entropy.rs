//! What must differ between execution environments: an id that names what this process writes,
//! and the random draws that sample backtests.
//!
//! Both come from the operating system's entropy, never from a value captured at start-up:
//! SnapStart starts every environment of a version from one memory image, so anything drawn
//! before the snapshot is shared by all of them (two environments would write forecast-log objects
//! under one name and backtest the same series). [`renew`] draws again after a restore. The
//! process id cannot serve as the id for the same reason: a restored process keeps the pid of the
//! one that was snapshotted.

use std::sync::atomic::{AtomicU64, Ordering};

/// This environment's id; 0 until first asked for.
static ID: AtomicU64 = AtomicU64::new(0);

/// 64 bits from the operating system (`getrandom(2)`).
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // getrandom fails only where the kernel has no entropy source at all; the wall clock and the
    // stack's address are then the best left, and still differ between environments.
    if getrandom::getrandom(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return nanos ^ (&bytes as *const _ as u64).rotate_left(32);
    }
    u64::from_le_bytes(bytes)
}

/// This environment's id: random, non-zero, stable until [`renew`].
pub fn id() -> u64 {
    let current = ID.load(Ordering::Relaxed);
    if current != 0 {
        return current;
    }
    let drawn = random_u64() | 1;
    match ID.compare_exchange(0, drawn, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => drawn,
        Err(other) => other,
    }
}

/// Draws a new id (after a SnapStart restore); returns the old one and the new one.
pub fn renew() -> (u64, u64) {
    let drawn = random_u64() | 1;
    (ID.swap(drawn, Ordering::Relaxed), drawn)
}

/// A lock-free stream of uniform draws in [0, 1) (SplitMix64), for sampling at a rate.
///
/// A rate applied as "every 1/rate-th" would need no randomness, but every environment would then
/// pick the same positions; a seeded stream picks differently per seed and hits the rate on
/// average.
#[derive(Debug)]
pub struct Sampler {
    state: AtomicU64,
}

impl Sampler {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    pub fn new(seed: u64) -> Self {
        Sampler {
            state: AtomicU64::new(seed),
        }
    }

    /// Starts the stream again from `seed`.
    pub fn reseed(&self, seed: u64) {
        self.state.store(seed, Ordering::Relaxed);
    }

    /// The next draw in [0, 1).
    pub fn next_unit(&self) -> f64 {
        let mut z = self
            .state
            .fetch_add(Self::GAMMA, Ordering::Relaxed)
            .wrapping_add(Self::GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether the next draw falls under `rate` (never for 0, always for 1).
    pub fn sample(&self, rate: f64) -> bool {
        rate > 0.0 && self.next_unit() < rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewed_id_differs_and_is_then_stable() {
        let before = id();
        let (old, new) = renew();
        assert_eq!(old, before);
        assert_ne!(new, before);
        assert_eq!(id(), new);
    }

    #[test]
    fn sampling_hits_the_rate_and_depends_on_the_seed() {
        let sampler = Sampler::new(7);
        let hits = (0..100_000).filter(|_| sampler.sample(0.1)).count();
        assert!((9_500..10_500).contains(&hits), "{hits}");
        assert!((0..1000).all(|_| Sampler::new(1).sample(1.0)));
        assert!((0..1000).all(|_| !Sampler::new(1).sample(0.0)));
        let picks = |seed| {
            let s = Sampler::new(seed);
            (0..64).map(|_| s.sample(0.5)).collect::<Vec<_>>()
        };
        assert_eq!(picks(3), picks(3), "one seed, one sequence");
        assert_ne!(picks(3), picks(4));
        sampler.reseed(7);
        let again = Sampler::new(7);
        assert_eq!(sampler.next_unit(), again.next_unit());
    }
}
