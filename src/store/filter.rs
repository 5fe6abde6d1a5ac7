//! An in-memory filter of the message-id markers in the store, so that the commit's
//! duplicate check does not read sled for a message id it has never seen.
//!
//! Every delivery's commit looks up its message id's marker. Almost every message id is new,
//! and a lookup of a key that is not there still descends sled's tree to the leaf where it
//! would be: message ids are spread over the whole key space, so that leaf is rarely in the
//! page cache and is read back from the log. That lookup was the largest single read of the
//! commit (about 8 % of the service's CPU in the load benchmark).
//!
//! The filter is a Bloom filter that grows by layers (each twice the capacity of the one
//! before, ~1 % false positives each), so it needs no size up front. It answers "certainly
//! not there" or "maybe": a "maybe" is looked up in sled as before. It never forgets a key:
//! markers are never removed, and a key a failed transaction added only costs a lookup.
//!
//! **No false negatives**, which is what makes it safe to skip the read:
//! - every marker a transaction writes is added *before* its batch is applied, so a key in
//!   sled is in the filter;
//! - the markers already in the store when it is opened are added by a background scan
//!   ([`Store`](super::Store) starts it); until the scan has finished, the filter answers
//!   "maybe" to everything. A scan that fails or cannot start leaves it so: slower, never
//!   wrong.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

/// The first layer is sized for at least this many keys (it gets 512 KiB of bits, which
/// hold ~419,000 keys at [`BITS_PER_KEY`]); each next layer for twice the one before.
const FIRST_CAPACITY: usize = 1 << 18;

/// Bits a key, and bits set a key: about 0.8 % false positives in a full layer.
const BITS_PER_KEY: usize = 10;
const HASHES: u64 = 7;

struct Layer {
    bits: Vec<AtomicU64>,
    /// The number of bits minus one (a power of two minus one).
    mask: u64,
    capacity: usize,
    count: AtomicUsize,
}

impl Layer {
    /// A layer of a power of two of bits, for at least `keys` keys.
    fn new(keys: usize) -> Layer {
        let bits = (keys * BITS_PER_KEY).next_power_of_two().max(64);
        Layer {
            bits: (0..bits / 64).map(|_| AtomicU64::new(0)).collect(),
            mask: bits as u64 - 1,
            capacity: bits / BITS_PER_KEY,
            count: AtomicUsize::new(0),
        }
    }

    fn positions(&self, (h1, h2): (u64, u64)) -> impl Iterator<Item = (usize, u64)> + '_ {
        (0..HASHES).map(move |i| {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) & self.mask;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    fn insert(&self, h: (u64, u64)) {
        for (word, bit) in self.positions(h) {
            if let Some(w) = self.bits.get(word) {
                w.fetch_or(bit, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn may_contain(&self, h: (u64, u64)) -> bool {
        self.positions(h).all(|(word, bit)| {
            self.bits
                .get(word)
                .is_some_and(|w| w.load(Ordering::Relaxed) & bit != 0)
        })
    }
}

/// Two independent 64-bit hashes of a key (double hashing makes the others).
fn hashes(key: &[u8]) -> (u64, u64) {
    let mut a = DefaultHasher::new();
    key.hash(&mut a);
    let mut b = DefaultHasher::new();
    (0x5bd1_e995u32, key).hash(&mut b);
    // Odd, so that the positions of one key are all different.
    (a.finish(), b.finish() | 1)
}

/// The filter (module docs).
pub(super) struct MarkerFilter {
    layers: RwLock<Vec<Layer>>,
    /// Every marker of the store is in the filter: the scan at open has finished.
    complete: AtomicBool,
    /// Asks the scan to stop (the store is being closed).
    stop: AtomicBool,
}

impl MarkerFilter {
    pub(super) fn new() -> MarkerFilter {
        MarkerFilter {
            layers: RwLock::new(vec![Layer::new(FIRST_CAPACITY)]),
            complete: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Vec<Layer>> {
        self.layers.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a key (before it is written to sled).
    pub(super) fn insert(&self, key: &[u8]) {
        let h = hashes(key);
        {
            let layers = self.read();
            if let Some(last) = layers.last() {
                if last.count.load(Ordering::Relaxed) < last.capacity {
                    last.insert(h);
                    return;
                }
            }
        }
        let mut layers = self.layers.write().unwrap_or_else(|p| p.into_inner());
        let full = layers
            .last()
            .is_none_or(|l| l.count.load(Ordering::Relaxed) >= l.capacity);
        if full {
            let capacity = layers.last().map_or(FIRST_CAPACITY, |l| l.capacity * 2);
            layers.push(Layer::new(capacity));
        }
        if let Some(last) = layers.last() {
            last.insert(h);
        }
    }

    /// `false` only if the key is certainly not in the store.
    pub(super) fn may_contain(&self, key: &[u8]) -> bool {
        if !self.complete.load(Ordering::Acquire) {
            return true;
        }
        let h = hashes(key);
        self.read().iter().any(|l| l.may_contain(h))
    }

    /// The scan at open has added every marker that was there.
    pub(super) fn set_complete(&self) {
        self.complete.store(true, Ordering::Release);
    }

    #[cfg(test)]
    pub(super) fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub(super) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Bytes of bits held (all layers).
    pub(super) fn bytes(&self) -> usize {
        self.read().iter().map(|l| l.bits.len() * 8).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_complete_everything_may_be_there() {
        let f = MarkerFilter::new();
        assert!(f.may_contain(b"mnever-added"));
        f.set_complete();
        assert!(!f.may_contain(b"mnever-added"));
    }

    #[test]
    fn no_false_negatives_across_layers_and_few_false_positives() {
        let f = MarkerFilter::new();
        f.set_complete();
        // Until a third layer is in use, and some more.
        let mut n = 0;
        while f.read().len() < 3 {
            f.insert(format!("mmsg-{n}").as_bytes());
            n += 1;
        }
        for _ in 0..1_000 {
            f.insert(format!("mmsg-{n}").as_bytes());
            n += 1;
        }
        let capacities: Vec<usize> = f.read().iter().map(|l| l.capacity).collect();
        // The key that opened the third layer, then 1,000 more.
        assert_eq!(
            n,
            capacities[0] + capacities[1] + 1 + 1_000,
            "{capacities:?}"
        );
        for i in 0..n {
            assert!(
                f.may_contain(format!("mmsg-{i}").as_bytes()),
                "lost key {i}"
            );
        }
        let probes = 200_000;
        let false_positives = (0..probes)
            .filter(|i| f.may_contain(format!("mother-{i}").as_bytes()))
            .count();
        // ~0.8 % a full layer, three layers (the last one little used).
        assert!(
            false_positives < probes * 3 / 100,
            "{false_positives} false positives in {probes}"
        );
        // 512 KiB, then 1 and 2 MiB of bits.
        assert_eq!(f.bytes(), 7 << 19);
    }
}
