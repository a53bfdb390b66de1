//! Injected randomness.
//!
//! Protocol state machines never read the operating system's RNG (architecture.md house rule 1).
//! They own a [`FerryRng`] — ChaCha20 seeded with 32 bytes — that the I/O layer seeds from the OS
//! and the simulator seeds from its run seed, so a simulated run replays bit for bit.
//! This module is the only place that names a `rand_core` version.

pub use rand_core::{CryptoRng as CryptoRngMarker, RngCore};

/// A cryptographically secure RNG (`RngCore + CryptoRng` of `rand_core` 0.6).
pub trait CryptoRng: RngCore + CryptoRngMarker {}
impl<T: RngCore + CryptoRngMarker> CryptoRng for T {}

/// ChaCha20 seeded from 32 bytes: the RNG every protocol state machine owns.
#[derive(Clone, Debug)]
pub struct FerryRng(rand_chacha::ChaCha20Rng);

impl FerryRng {
    /// Seeds from 32 bytes (OS randomness in production, a run seed in tests and the simulator).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        use rand_core::SeedableRng;
        Self(rand_chacha::ChaCha20Rng::from_seed(seed))
    }

    /// Seeds from a `u64` (simulator runs and tests; expanded with ChaCha's `seed_from_u64`).
    pub fn from_u64(seed: u64) -> Self {
        use rand_core::SeedableRng;
        Self(rand_chacha::ChaCha20Rng::seed_from_u64(seed))
    }

    /// A uniformly random index in `0..n`; `0` when `n == 0`.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        // Rejection sampling keeps the distribution uniform.
        let n64 = n as u64;
        let zone = u64::MAX - (u64::MAX % n64);
        loop {
            let v = self.0.next_u64();
            if v < zone {
                return (v % n64) as usize;
            }
        }
    }

    /// A random array of `N` bytes.
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        self.0.fill_bytes(&mut b);
        b
    }

    /// A child RNG seeded from this one (one independent stream per node in a simulation).
    pub fn fork(&mut self) -> Self {
        Self::from_seed(self.bytes())
    }
}

impl RngCore for FerryRng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.try_fill_bytes(dest)
    }
}

impl CryptoRngMarker for FerryRng {}

/// 32 bytes from the operating system's RNG, to seed a [`FerryRng`] in the I/O layer.
///
/// Only the driver layer (ferry-net, ferry-daemon) calls this; protocol crates forbid it.
///
/// # Errors
/// When the OS RNG is unavailable (`getrandom` failed).
#[allow(clippy::disallowed_types, clippy::disallowed_methods)]
pub fn os_seed() -> Result<[u8; 32], rand_core::Error> {
    let mut seed = [0u8; 32];
    rand_core::OsRng.try_fill_bytes(&mut seed)?;
    Ok(seed)
}
