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
//! not there" or "maybe": a "maybe" is looked up in sled as before. It cannot forget a key:
//! a key a failed transaction added, or a marker the dedup window expired
//! ([`super::expire`]), only costs a lookup — until the filter is **rebuilt**: once about
//! half of what it holds has expired, the service builds a new one from the markers in the
//! store ([`MarkerFilter::begin_rebuild`]) while the old one goes on answering, so that its
//! memory follows the markers kept, not every message ever seen.
//!
//! **No false negatives**, which is what makes it safe to skip the read:
//! - every marker a transaction writes is added *before* its batch is applied, so a key in
//!   sled is in the filter;
//! - the markers already in the store when it is opened are added by a background scan
//!   ([`Store`](super::Store) starts it); until the scan has finished, the filter answers
//!   "maybe" to everything. A scan that fails or cannot start leaves it so: slower, never
//!   wrong.
//! - a rebuild starts while no transaction is between adding its markers and applying its
//!   batch (the caller holds the store's writer and confirm locks), every marker added from
//!   then on goes into both filters, and the scan adds every marker in the store; the new
//!   filter replaces the old one only when the scan has finished.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

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

/// Layers of a filter, the last one taking new keys.
struct Layers(Vec<Layer>);

impl Layers {
    /// One layer for at least `keys` keys (at least [`FIRST_CAPACITY`]).
    fn new(keys: usize) -> Layers {
        Layers(vec![Layer::new(keys.max(FIRST_CAPACITY))])
    }

    /// Adds a key unless the last layer is full; `false`: it is, and a new layer is needed.
    /// A key the filter may hold already is not added again: a marker written again (a
    /// duplicate delivery with tracking on, a release) would otherwise count as one more key,
    /// open layers for no key more, and hold off the rebuild, whose trigger compares the
    /// markers expired with the keys counted. (A false positive left out is no false
    /// negative: the filter answers "maybe" for it, and a rebuild's scan adds it.)
    fn try_insert(&self, h: (u64, u64)) -> bool {
        if self.may_contain(h) {
            return true;
        }
        match self.0.last() {
            Some(last) if last.count.load(Ordering::Relaxed) < last.capacity => {
                last.insert(h);
                true
            }
            _ => false,
        }
    }

    /// Adds a key, opening a layer of twice the last one's capacity when it is full.
    fn insert(&mut self, h: (u64, u64)) {
        if !self.try_insert(h) {
            let capacity = self.0.last().map_or(FIRST_CAPACITY, |l| l.capacity * 2);
            self.0.push(Layer::new(capacity));
            self.try_insert(h);
        }
    }

    fn may_contain(&self, h: (u64, u64)) -> bool {
        self.0.iter().any(|l| l.may_contain(h))
    }

    fn keys(&self) -> usize {
        self.0.iter().map(|l| l.count.load(Ordering::Relaxed)).sum()
    }

    fn bytes(&self) -> usize {
        self.0.iter().map(|l| l.bits.len() * 8).sum()
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
    layers: RwLock<Layers>,
    /// The filter being rebuilt: fed with every key added meanwhile, and by the scan.
    next: RwLock<Option<Layers>>,
    /// A rebuild is under way: `insert` feeds `next` too.
    rebuilding: AtomicBool,
    /// Markers expired since the filter was built (they still set its bits).
    expired: AtomicUsize,
    /// Every marker of the store is in the filter: the scan at open has finished.
    complete: AtomicBool,
    /// Asks the scan to stop (the store is being closed).
    stop: AtomicBool,
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

impl MarkerFilter {
    pub(super) fn new() -> MarkerFilter {
        MarkerFilter {
            layers: RwLock::new(Layers::new(FIRST_CAPACITY)),
            next: RwLock::new(None),
            rebuilding: AtomicBool::new(false),
            expired: AtomicUsize::new(0),
            complete: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        }
    }

    /// Adds a key (before it is written to sled).
    pub(super) fn insert(&self, key: &[u8]) {
        let h = hashes(key);
        if self.rebuilding.load(Ordering::Acquire) {
            if let Some(next) = write(&self.next).as_mut() {
                next.insert(h);
            }
        }
        if !read(&self.layers).try_insert(h) {
            write(&self.layers).insert(h);
        }
    }

    /// `false` only if the key is certainly not in the store.
    pub(super) fn may_contain(&self, key: &[u8]) -> bool {
        if !self.complete.load(Ordering::Acquire) {
            return true;
        }
        read(&self.layers).may_contain(hashes(key))
    }

    /// The scan at open has added every marker that was there.
    pub(super) fn set_complete(&self) {
        self.complete.store(true, Ordering::Release);
    }

    pub(super) fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub(super) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Bytes of bits held (all layers; during a rebuild, of both filters).
    pub(super) fn bytes(&self) -> usize {
        read(&self.layers).bytes() + read(&self.next).as_ref().map_or(0, Layers::bytes)
    }

    /// Notes markers removed from the store.
    pub(super) fn note_expired(&self, n: usize) {
        self.expired.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether a rebuild would pay: the filter is complete, has grown beyond one layer, and
    /// at least half of the keys it was given have expired since it was built.
    pub(super) fn wants_rebuild(&self) -> bool {
        let layers = read(&self.layers);
        self.is_complete()
            && layers.0.len() > 1
            && self.expired.load(Ordering::Relaxed) * 2 >= layers.keys()
    }

    /// Starts a rebuild, unless one is under way (`false`): from now on every key added also
    /// goes into a new filter, sized for the keys the old one holds minus those expired. The
    /// caller must hold off every writer between this call and its scan's start (module
    /// docs), feed the scan's keys through [`MarkerFilter::rebuild_insert`] and end with
    /// [`MarkerFilter::finish_rebuild`].
    pub(super) fn begin_rebuild(&self) -> bool {
        let mut next = write(&self.next);
        if next.is_some() {
            return false;
        }
        let live = read(&self.layers)
            .keys()
            .saturating_sub(self.expired.load(Ordering::Relaxed));
        // Room for a quarter more than the markers kept before a second layer opens.
        *next = Some(Layers::new(live + live / 4));
        self.rebuilding.store(true, Ordering::Release);
        true
    }

    /// Adds a key the rebuild's scan found.
    pub(super) fn rebuild_insert(&self, key: &[u8]) {
        if let Some(next) = write(&self.next).as_mut() {
            next.insert(hashes(key));
        }
    }

    /// Ends a rebuild: with `done` (the scan went through every marker) the new filter
    /// replaces the old one; otherwise it is dropped and the old one stays.
    pub(super) fn finish_rebuild(&self, done: bool) {
        let mut next = write(&self.next);
        if let (true, Some(fresh)) = (done, next.take()) {
            // The new filter is in place before inserts stop feeding it: an insert that finds
            // `rebuilding` off goes into it. (Turning the flag off first let an insert that
            // saw it off land in the old filter just before the swap: caught by
            // `markers_committed_during_a_rebuild_are_in_the_new_filter`.)
            *write(&self.layers) = fresh;
            self.expired.store(0, Ordering::Relaxed);
        }
        self.rebuilding.store(false, Ordering::Release);
        *next = None;
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
        while read(&f.layers).0.len() < 3 {
            f.insert(format!("mmsg-{n}").as_bytes());
            n += 1;
        }
        for _ in 0..1_000 {
            f.insert(format!("mmsg-{n}").as_bytes());
            n += 1;
        }
        let capacities: Vec<usize> = read(&f.layers).0.iter().map(|l| l.capacity).collect();
        // The key that opened the third layer, then 1,000 more; keys the filter already
        // answered "maybe" for (false positives, ~1 %) were not counted.
        let counted = capacities[0] + capacities[1] + 1 + 1_000;
        assert!(
            n >= counted && n < counted + counted * 3 / 100,
            "{n} keys for {capacities:?}"
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

    #[test]
    fn a_marker_written_again_is_one_key_and_does_not_hold_off_the_rebuild() {
        let f = MarkerFilter::new();
        f.set_complete();
        // Distinct markers into a second layer, each written a second time (a duplicate
        // delivery rewrites its marker).
        let n = 2 * FIRST_CAPACITY;
        for round in 0..2 {
            for i in 0..n {
                f.insert(format!("mmsg-{i}").as_bytes());
            }
            // Rewriting one key over and over opens no layer.
            for _ in 0..FIRST_CAPACITY {
                f.insert(b"mhot");
            }
            let layers = read(&f.layers);
            assert_eq!(layers.0.len(), 2, "round {round}");
            // False positives among the new keys are not counted: at most ~1 % of them.
            let keys = layers.keys();
            assert!(keys <= n + 1 && keys > n - n / 50, "{keys} keys for {n}");
        }
        // Half of the markers expire: that is half of the keys, so the rebuild is due.
        f.note_expired(n / 2 + 1);
        assert!(f.wants_rebuild());
    }

    #[test]
    fn a_rebuild_keeps_what_is_added_meanwhile_and_replaces_the_filter_only_when_done() {
        let f = MarkerFilter::new();
        f.set_complete();
        f.insert(b"mold");
        assert!(f.begin_rebuild());
        assert!(!f.begin_rebuild(), "one at a time");
        // Added while the scan runs (a transaction's markers): in both filters.
        f.insert(b"mduring");
        f.rebuild_insert(b"mscanned");
        assert!(f.bytes() > 512 * 1024, "both filters held meanwhile");
        // Until the scan is done, the old filter answers.
        assert!(f.may_contain(b"mold") && !f.may_contain(b"mscanned"));
        f.finish_rebuild(true);
        assert!(f.may_contain(b"mduring") && f.may_contain(b"mscanned"));
        assert!(!f.may_contain(b"mold"), "not scanned: gone");
        assert_eq!(f.bytes(), 512 * 1024);
        // An interrupted rebuild leaves the filter as it was.
        assert!(f.begin_rebuild());
        f.insert(b"mlater");
        f.finish_rebuild(false);
        assert!(f.may_contain(b"mscanned") && f.may_contain(b"mlater"));
        f.insert(b"mafter");
        assert!(f.may_contain(b"mafter"));
        assert_eq!(f.bytes(), 512 * 1024);
    }
}
