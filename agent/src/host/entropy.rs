//! Random numbers for jitter, from the standard library's per-process
//! random hash keys: no dependency, and different on every instance.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// A uniformly distributed number, different at every call.
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_differ_from_call_to_call() {
        let seen: std::collections::BTreeSet<u64> = (0..100).map(|_| random_u64()).collect();
        assert_eq!(seen.len(), 100);
    }
}
