//! The dedup window: message-id markers expire (`hub.dedup_window`, default 7 days or the
//! tracking retention if longer).
//!
//! Every delivery leaves a marker under its message id, and the duplicate check reads it, so
//! without an end the store — and the in-memory marker filter ([`super::filter`]) — would
//! grow with every message ever seen. A marker not written again within the window is
//! removed by the service's purge ([`Store::expire_markers`]); a delivery of that message id
//! after it is processed as a new message (the record's variationID guard still refuses an
//! older change).
//!
//! Markers are keyed by message id, spread over the whole key space, so a transaction that
//! writes markers also writes one **marker list**: `w`, a big-endian number from sled's ID
//! generator (increasing), holding the latest time its markers were written at (the
//! pipeline's clock: a document's receipt, `replay --now`) and the message ids of the
//! markers it wrote — one key a transaction, appended at the end of the tree. The purge
//! reads the lists oldest first and stops at the first one inside the window (a list is
//! taken once its newest marker is outside it). A marker
//! written again since (a release from parking, a retry, a tracked run) carries the time of
//! its last write ([`Marker::at`]) and is in a later list: an older list leaves it alone.
//!
//! Markers that still have work attached stay whatever their age: a document parked whole
//! (`outcome` `parked`), with nouns parked ([`Marker::parked`]), or with any parked row left
//! under its message id (a retry applied it meanwhile: the row's release is a duplicate only
//! while the marker is there); the purge lists such a marker again, dated as the newest list,
//! and looks at it a window of processing later (a release may or may not write it again).
//!
//! The service measures the window up to the newest list ([`Store::marker_cutoff`]): the time
//! it was stopped or idle does not count, so deliveries committed but not acked before a stop
//! still find their markers when they come back.
//!
//! Markers are dated by the pipeline's clock but never later than the wall clock when written,
//! so a `replay --now` ahead of the clock cannot hold a window open. Lists are taken in the
//! order they were written: one dated later than those after it (a replay with an old
//! `--now` after newer documents) holds them up until it is due itself — late, never early.
//!
//! A list is `at` (u64, big-endian milliseconds since the Unix epoch), then for each message
//! id its length (u16, big-endian) and its bytes.

use std::collections::HashSet;

use super::track::Millis;
use super::{decode, key, locked, seq_key, Marker, Store, StoreError, Tx, TxResult};

/// Key prefix of the marker lists.
const LIST: u8 = b'w';

/// Store meta entry set once every marker of a store written before the lists is in one.
const LISTS_META: &str = "index.marker_lists";

/// Markers checked again and removed per store batch, each holding the writer lock (a
/// commit waits for at most one).
const REMOVE_BATCH: usize = 64;

/// Message ids a list written by the migration or the purge (held markers listed again)
/// holds: a commit's worth, so that 16 lists are about as many markers as 16 commits'.
const LIST_IDS: usize = 64;

fn encode_list<'k>(at: u64, ids: impl Iterator<Item = &'k [u8]>) -> Vec<u8> {
    let mut v = at.to_be_bytes().to_vec();
    for id in ids {
        // A message id is at most 255 bytes (an AMQP short string) or a digest; a longer one
        // is left out of the list and never expires rather than cut.
        let Ok(len) = u16::try_from(id.len()) else {
            continue;
        };
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(id);
    }
    v
}

/// A list's time and message ids.
fn decode_list<'v>(k: &[u8], v: &'v [u8]) -> Result<(u64, Vec<&'v [u8]>), StoreError> {
    let corrupt = |message: &str| StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        message: message.into(),
    };
    let (at, mut rest) = v
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("marker list shorter than its time"))?;
    let mut ids = Vec::new();
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len));
        let (id, tail) = tail
            .split_at_checked(len)
            .ok_or_else(|| corrupt("marker list cut inside a message id"))?;
        ids.push(id);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(corrupt("marker list cut inside a length"));
    }
    Ok((u64::from_be_bytes(*at), ids))
}

fn marker_key(id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(b'm');
    k.extend_from_slice(id);
    k
}

/// Whether a marker must stay whatever its age: its document, or some of its nouns, wait
/// parked — as the marker says, or as a parked row of its message id says (a row its marker
/// no longer lists is a duplicate when released, because the marker is there).
fn holds_parked(k: &[u8], m: &Marker, parked: &HashSet<Vec<u8>>) -> bool {
    m.outcome == "parked" || !m.parked.is_empty() || parked.contains(k)
}

impl Tx<'_> {
    /// Writes this transaction's marker list (module docs), if it writes markers.
    pub(super) fn write_marker_list(&self) -> TxResult<()> {
        let list = {
            let writes = self.writes.borrow();
            let mut ids = writes
                .range(vec![b'm']..vec![b'm' + 1])
                .filter(|(_, v)| v.is_some())
                .map(|(k, _)| &k[1..])
                .peekable();
            if ids.peek().is_none() {
                return Ok(());
            }
            // Markers written without [`Tx::put_marker`] (tests) are dated by the transaction.
            let at = self.latest.get().max(self.now.get().min(self.wall));
            encode_list(at.0, ids)
        };
        self.raw_insert(seq_key(LIST, self.db.generate_id()?).to_vec(), list);
        Ok(())
    }
}

/// A listed marker against the window.
enum Standing {
    /// Not in the store (expired before, or never applied).
    Gone,
    /// Written within the window (again, since the list).
    Young,
    /// Outside the window but held: a parked document needs it, or it cannot be read.
    Held,
    /// Outside the window: it goes.
    Expired,
}

/// What one [`Store::expire_markers`] call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// Marker lists gone through (and removed).
    pub lists: usize,
    /// Markers removed.
    pub markers: usize,
}

impl Store {
    /// Stops the store's background scans (a marker filter rebuild, the scan at open) where
    /// they are: for a store that is being let go (it could not write), whose filter goes
    /// with it. Lookups stay correct (an unfinished scan leaves the filter answering "maybe").
    pub fn interrupt(&self) {
        self.markers.stop();
    }

    /// Bytes of the in-memory marker filter (during a rebuild, of both filters).
    pub fn marker_filter_bytes(&self) -> usize {
        self.markers.bytes()
    }

    /// The marker keys of the message ids that have parked rows: markers
    /// [`Store::expire_markers`] keeps. Read once for a purge round (a row parked later comes
    /// with a fresh marker).
    ///
    /// Read from the parked documents' message-id index (`u`), not from the rows: a large
    /// parked backlog (each row holds its whole document) costs its keys a round, not its
    /// payloads.
    pub fn parked_marker_keys(&self) -> Result<HashSet<Vec<u8>>, StoreError> {
        let mut keys = HashSet::new();
        for k in self.hub.scan_prefix([b'u']).keys() {
            if let Some(id) = super::parked_id_of(&k?) {
                keys.insert(marker_key(id));
            }
        }
        Ok(keys)
    }

    /// Goes through up to `max_lists` marker lists, oldest first, written before `before`,
    /// removing them and the markers they list that were last written before `before` and
    /// hold nothing parked (`parked`: [`Store::parked_marker_keys`]). Call again while it
    /// goes through `max_lists`. The markers are read first without the writer lock, then
    /// checked again and removed under it, [`REMOVE_BATCH`] at a time, so no transaction
    /// writes a marker between its last check and its removal. A list that cannot be read
    /// is removed (its markers stay: they cannot be named); a marker that cannot be read, or
    /// that a parked document holds, stays and is listed again.
    pub fn expire_markers(
        &self,
        before: Millis,
        max_lists: usize,
        parked: &HashSet<Vec<u8>>,
    ) -> Result<Expired, StoreError> {
        // First without the writer lock: reading the markers (a leaf each, rarely cached) is
        // most of the work, and commits go on meanwhile.
        let mut lists = Vec::new();
        let mut candidates: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut held = Vec::new();
        let mut seen = HashSet::new();
        for item in self.hub.scan_prefix([LIST]).take(max_lists) {
            let (k, v) = item?;
            let (at, ids) = match decode_list(&k, &v) {
                Ok((at, _)) if at >= before.0 => break,
                Ok(list) => list,
                Err(e) => {
                    tracing::warn!(error = %e, "An unreadable marker list removed");
                    (0, Vec::new())
                }
            };
            for id in ids {
                let mk = marker_key(id);
                if !seen.insert(mk.clone()) {
                    continue;
                }
                match self.standing(&mk, at, before, parked)? {
                    Standing::Expired => candidates.push((mk, at)),
                    Standing::Held => held.push(mk),
                    Standing::Gone | Standing::Young => {}
                }
            }
            lists.push(k);
        }
        // Then under it, a few at a time, each candidate checked again: a commit since may
        // have written it again.
        let mut expired = Expired {
            lists: lists.len(),
            markers: 0,
        };
        for chunk in candidates.chunks(REMOVE_BATCH) {
            let _writer = locked(&self.writer);
            let mut batch = sled::Batch::default();
            let mut removed = 0;
            for (mk, at) in chunk {
                match self.standing(mk, *at, before, parked)? {
                    Standing::Expired => {
                        batch.remove(mk.as_slice());
                        removed += 1;
                    }
                    Standing::Held => held.push(mk.clone()),
                    Standing::Gone | Standing::Young => {}
                }
            }
            self.hub.apply_batch(batch)?;
            expired.markers += removed;
            self.markers.note_expired(removed);
        }
        // The lists go last (a crash before leaves them to the next round, whose markers are
        // gone or young). A marker held (parked, or unreadable) goes into a list dated as the
        // newest one (the last processing, not the clock: a list of now would end the idle
        // time [`Store::marker_cutoff`] leaves out): it is looked at again a window of
        // processing later, whether or not its release writes it again.
        let mut batch = sled::Batch::default();
        for k in lists {
            batch.remove(k);
        }
        if !held.is_empty() {
            let at = self.newest_list_at()?.unwrap_or(Millis::now());
            for ids in held.chunks(LIST_IDS) {
                let list = encode_list(at.0, ids.iter().map(|k| &k[1..]));
                batch.insert(seq_key(LIST, self.db.generate_id()?).to_vec(), list);
            }
        }
        self.hub.apply_batch(batch)?;
        Ok(expired)
    }

    /// Where the marker `mk`, listed at `at`, stands against the cut-off `before` (a marker
    /// of an earlier version has no time: its list's is its own).
    fn standing(
        &self,
        mk: &[u8],
        at: u64,
        before: Millis,
        parked: &HashSet<Vec<u8>>,
    ) -> Result<Standing, StoreError> {
        let Some(mv) = self.hub.get(mk)? else {
            return Ok(Standing::Gone);
        };
        Ok(match decode::<Marker>(mk, &mv) {
            Ok(m) if m.at.unwrap_or(at) >= before.0 => Standing::Young,
            Ok(m) if holds_parked(mk, &m, parked) => Standing::Held,
            Ok(_) => Standing::Expired,
            Err(e) => {
                tracing::warn!(error = %e, "An unreadable marker kept");
                Standing::Held
            }
        })
    }

    /// The cut-off "`before` as of `now`" moved back by the time since markers were last
    /// written (the newest list): the window counts only up to the last processing, so the
    /// time a service was stopped (or idle) does not expire the markers of deliveries it
    /// committed but had not acked — they come back when it starts.
    pub fn marker_cutoff(&self, before: Millis, now: Millis) -> Result<Millis, StoreError> {
        let idle = self
            .newest_list_at()?
            .map_or(0, |newest| now.0.saturating_sub(newest.0));
        Ok(Millis(before.0.saturating_sub(idle)))
    }

    /// The time of the newest readable marker list.
    fn newest_list_at(&self) -> Result<Option<Millis>, StoreError> {
        for item in self.hub.scan_prefix([LIST]).rev() {
            let (k, v) = item?;
            if let Ok((at, _)) = decode_list(&k, &v) {
                return Ok(Some(Millis(at)));
            }
        }
        Ok(None)
    }

    /// Rebuilds the marker filter from the markers in the store when about half of what it
    /// holds has expired ([`super::filter`]); returns the new filter's bytes, or `None` when
    /// no rebuild was due (or another one is under way). The old filter answers meanwhile.
    pub fn rebuild_marker_filter_if_due(&self) -> Result<Option<usize>, StoreError> {
        if !self.markers.wants_rebuild() {
            return Ok(None);
        }
        self.rebuild_marker_filter()
    }

    /// [`Store::rebuild_marker_filter_if_due`] without the "due".
    fn rebuild_marker_filter(&self) -> Result<Option<usize>, StoreError> {
        {
            // No transaction between noting its markers and applying them.
            let _writer = locked(&self.writer);
            let _confirms = locked(&self.confirms);
            if !self.markers.begin_rebuild() {
                return Ok(None);
            }
        }
        for item in self.hub.scan_prefix([b'm']).keys() {
            if self.markers.stopped() {
                self.markers.finish_rebuild(false);
                return Ok(None);
            }
            match item {
                Ok(k) => self.markers.rebuild_insert(&k),
                Err(e) => {
                    self.markers.finish_rebuild(false);
                    return Err(e.into());
                }
            }
        }
        self.markers.finish_rebuild(true);
        Ok(Some(self.markers.bytes()))
    }
}

/// Puts every marker of a store written before the lists existed into lists dated `now`,
/// once, at its first open: they expire one window after the upgrade. Interrupted, it starts
/// again at the next open (a marker in two lists is harmless).
pub(super) fn list_old_markers(
    db: &sled::Db,
    hub: &sled::Tree,
    now: Millis,
) -> Result<usize, StoreError> {
    let done = key(b's', &["meta", LISTS_META]);
    if hub.contains_key(&done)? {
        return Ok(0);
    }
    let mut listed = 0;
    let mut ids: Vec<sled::IVec> = Vec::with_capacity(LIST_IDS);
    let mut write = |ids: &mut Vec<sled::IVec>| -> Result<(), StoreError> {
        let list = encode_list(now.0, ids.iter().map(|k| &k[1..]));
        hub.insert(seq_key(LIST, db.generate_id()?), list)?;
        listed += ids.len();
        ids.clear();
        Ok(())
    };
    for k in hub.scan_prefix([b'm']).keys() {
        ids.push(k?);
        if ids.len() == LIST_IDS {
            write(&mut ids)?;
        }
    }
    if !ids.is_empty() {
        write(&mut ids)?;
    }
    hub.insert(done, super::encode(&"1"))?;
    if listed > 0 {
        tracing::info!(
            markers = listed,
            "Dated the message-id markers of an earlier version: they expire one hub.dedup_window from now"
        );
    }
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{reopen, wait_for_marker_filter};

    /// Writes `ids`' markers in one transaction dated `at` (`outcome`, `parked` nouns).
    fn mark(store: &Store, at: u64, ids: &[&str], outcome: &str, parked: &[&str]) {
        store
            .transact(|tx| {
                tx.set_clock(Millis(at));
                for id in ids {
                    let marker = Marker {
                        outcome: outcome.into(),
                        parked: parked.iter().map(|p| p.to_string()).collect(),
                        ..Marker::applied()
                    };
                    tx.put_marker(id, &marker)?;
                }
                Ok(())
            })
            .unwrap();
    }

    fn lists(store: &Store) -> Vec<(u64, Vec<String>)> {
        store
            .hub
            .scan_prefix([LIST])
            .map(|item| {
                let (k, v) = item.unwrap();
                let (at, ids) = decode_list(&k, &v).unwrap();
                let ids = ids
                    .iter()
                    .map(|id| String::from_utf8(id.to_vec()).unwrap())
                    .collect();
                (at, ids)
            })
            .collect()
    }

    /// One purge call as the service makes it (the parked rows' markers kept).
    fn expire(store: &Store, before: Millis, max_lists: usize) -> Result<Expired, StoreError> {
        store.expire_markers(before, max_lists, &store.parked_marker_keys()?)
    }

    fn expired(lists: usize, markers: usize) -> Expired {
        Expired { lists, markers }
    }

    fn kept(store: &Store, ids: &[&str]) -> Vec<bool> {
        ids.iter()
            .map(|id| store.marker(id).unwrap().is_some())
            .collect()
    }

    #[test]
    fn a_transaction_lists_its_markers_dated_by_the_pipelines_clock() {
        let store = Store::temporary().unwrap();
        mark(&store, 1_000, &["b", "a"], "applied", &[]);
        // A transaction without markers writes no list.
        store
            .transact(|tx| tx.put_xref(&crate::store::tests::xref("1"), "ACC-1"))
            .unwrap();
        mark(&store, 2_000, &["a"], "rejected", &[]);
        assert_eq!(
            lists(&store),
            [
                (1_000, vec!["a".to_string(), "b".to_string()]),
                (2_000, vec!["a".to_string()])
            ]
        );
        assert_eq!(store.marker("a").unwrap().unwrap().at, Some(2_000));
        assert_eq!(store.marker("b").unwrap().unwrap().at, Some(1_000));
    }

    #[test]
    fn markers_last_written_before_the_window_expire_oldest_lists_first() {
        let store = Store::temporary().unwrap();
        mark(&store, 1_000, &["old", "again"], "applied", &[]);
        mark(&store, 2_000, &["other"], "rejected", &[]);
        // Written again later: only its latest list decides.
        mark(&store, 5_000, &["again"], "applied", &[]);
        mark(&store, 6_000, &["young"], "applied", &[]);
        let all = ["old", "again", "other", "young"];

        // Before the first list: nothing to do.
        assert_eq!(
            expire(&store, Millis(1_000), 16).unwrap(),
            Expired::default()
        );
        // One list a call.
        assert_eq!(expire(&store, Millis(3_000), 1).unwrap(), expired(1, 1));
        assert_eq!(kept(&store, &all), [false, true, true, true]);
        assert_eq!(expire(&store, Millis(3_000), 16).unwrap(), expired(1, 1));
        assert_eq!(kept(&store, &all), [false, true, false, true]);
        assert_eq!(lists(&store).len(), 2);
        // "again"'s own list, and both of its lists in one call are one marker.
        mark(&store, 7_000, &["x"], "applied", &[]);
        mark(&store, 7_500, &["x"], "applied", &[]);
        assert_eq!(expire(&store, Millis(8_000), 16).unwrap(), expired(4, 3));
        assert_eq!(kept(&store, &all), [false, false, false, false]);
        assert!(lists(&store).is_empty());
        // An expired id is new again: the filter may say "maybe", sled says no.
        store
            .transact(|tx| {
                assert_eq!(tx.marker("old")?, None);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn markers_of_parked_documents_stay_whatever_their_age() {
        let store = Store::temporary().unwrap();
        mark(&store, 1_000, &["parked"], "parked", &[]);
        mark(
            &store,
            1_000,
            &["noun-parked"],
            "applied",
            &["/Sync/DataArea/X[2]"],
        );
        mark(&store, 1_000, &["done"], "applied", &[]);
        assert_eq!(expire(&store, Millis(9_000), 16).unwrap(), expired(3, 1));
        assert_eq!(
            kept(&store, &["parked", "noun-parked", "done"]),
            [true, true, false]
        );
        // The held ones are listed again, dated as the newest list (the last processing):
        // looked at again a window of processing later.
        let relisted = lists(&store);
        assert_eq!(
            relisted,
            [(1_000, vec!["parked".to_string(), "noun-parked".to_string()])]
        );
        // Released later: written again, listed again, and then it expires.
        mark(&store, 10_000, &["parked"], "applied", &[]);
        assert_eq!(expire(&store, Millis(20_000), 16).unwrap(), expired(2, 1));
        assert_eq!(kept(&store, &["parked", "noun-parked"]), [false, true]);
        assert_eq!(
            lists(&store),
            [(10_000, vec!["noun-parked".to_string()])],
            "dated as the newest list, which went"
        );
    }

    #[test]
    fn held_markers_listed_again_leave_the_cutoff_where_it_was() {
        let store = Store::temporary().unwrap();
        mark(&store, 1_000, &["parked"], "parked", &[]);
        mark(&store, 5_000, &["other"], "applied", &[]);
        // As the service computes it at 6_000 with a window of 0 (the last processing 5_000).
        let cutoff = store.marker_cutoff(Millis(6_000), Millis(6_000)).unwrap();
        assert_eq!(cutoff, Millis(5_000));
        assert_eq!(expire(&store, cutoff, 16).unwrap(), expired(1, 0));
        assert_eq!(
            lists(&store),
            [
                (5_000, vec!["other".to_string()]),
                (5_000, vec!["parked".to_string()])
            ]
        );
        assert_eq!(
            store.marker_cutoff(Millis(6_000), Millis(6_000)).unwrap(),
            cutoff
        );
        // Held markers beyond a list's worth go into several lists.
        let many: Vec<String> = (0..LIST_IDS + 1).map(|i| format!("p{i:03}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        mark(&store, 5_500, &many, "parked", &[]);
        mark(&store, 9_000, &["last"], "applied", &[]);
        expire(&store, Millis(8_000), 16).unwrap();
        let sizes: Vec<usize> = lists(&store).iter().map(|(_, ids)| ids.len()).collect();
        assert_eq!(sizes, [1, LIST_IDS, 2]);
    }

    #[test]
    fn the_cutoff_does_not_count_the_time_since_markers_were_last_written() {
        let store = Store::temporary().unwrap();
        let (before, now) = (Millis(6_000), Millis(8_000));
        assert_eq!(
            store.marker_cutoff(before, now).unwrap(),
            before,
            "no lists"
        );
        mark(&store, 5_000, &["a"], "applied", &[]);
        // Idle (or stopped) for 3 s: the cut-off moves back 3 s.
        assert_eq!(store.marker_cutoff(before, now).unwrap(), Millis(3_000));
        mark(&store, 8_000, &["b"], "applied", &[]);
        assert_eq!(store.marker_cutoff(before, now).unwrap(), before);
    }

    #[test]
    fn a_marker_is_never_dated_after_the_clock_of_its_transaction() {
        let store = Store::temporary().unwrap();
        let before = Millis::now();
        mark(&store, before.0 + 86_400_000, &["ahead"], "applied", &[]);
        let at = store.marker("ahead").unwrap().unwrap().at.unwrap();
        assert!(at >= before.0 && at <= Millis::now().0, "{at}");
        assert_eq!(lists(&store)[0].0, at);
    }

    #[test]
    fn markers_committed_during_a_rebuild_are_in_the_new_filter() {
        let store = std::sync::Arc::new(Store::temporary().unwrap());
        wait_for_marker_filter(&store);
        // Markers for the rebuilds' scans to go through while another thread commits.
        let ids: Vec<String> = (0..5_000).map(|i| format!("kept-{i}")).collect();
        for chunk in ids.chunks(64) {
            let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
            mark(&store, 1_000, &chunk, "applied", &[]);
        }
        // Commits, one marker each, until five rebuilds have run meanwhile.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = std::thread::spawn({
            let (store, done) = (store.clone(), done.clone());
            move || {
                let mut n = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    mark(&store, 2_000, &[&format!("during-{n}")], "applied", &[]);
                    n += 1;
                }
                n
            }
        });
        for _ in 0..5 {
            assert!(store.rebuild_marker_filter().unwrap().is_some());
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let written = writer.join().unwrap();
        assert!(written > 5, "only {written} commits");
        let missing: Vec<String> = ids
            .iter()
            .cloned()
            .chain((0..written).map(|i| format!("during-{i}")))
            .filter(|id| !store.markers.may_contain(&marker_key(id.as_bytes())))
            .collect();
        assert!(missing.is_empty(), "lost from the filter: {missing:?}");
    }

    #[test]
    fn a_marker_stays_while_a_parked_row_of_its_message_id_is_left() {
        let store = Store::temporary().unwrap();
        // Parked, then applied by a retry: the marker no longer says parked, the row stays
        // (its release is a duplicate while the marker is there).
        store
            .transact(|tx| {
                tx.park(crate::store::Parked::for_test(
                    "retried",
                    crate::store::ParkReason::InactiveApplication,
                    None,
                ))
            })
            .unwrap();
        mark(&store, 1_000, &["retried", "done"], "applied", &[]);
        assert_eq!(
            store.parked_marker_keys().unwrap(),
            HashSet::from([marker_key(b"retried")])
        );
        assert_eq!(expire(&store, Millis(9_000), 16).unwrap(), expired(1, 1));
        assert_eq!(kept(&store, &["retried", "done"]), [true, false]);
    }

    #[test]
    fn an_unreadable_list_is_removed_and_its_neighbours_expire() {
        let store = Store::temporary().unwrap();
        mark(&store, 1_000, &["a"], "applied", &[]);
        let damaged = seq_key(LIST, store.db.generate_id().unwrap());
        let mut bad = 500u64.to_be_bytes().to_vec();
        bad.extend_from_slice(&[0, 9, b'x']);
        store.hub.insert(&damaged, bad).unwrap();
        mark(&store, 1_500, &["b"], "applied", &[]);
        assert!(decode_list(&damaged, &store.hub.get(&damaged).unwrap().unwrap()).is_err());
        assert!(decode_list(b"w", &[1, 2]).is_err());
        assert!(decode_list(b"w", &[0, 0, 0, 0, 0, 0, 0, 1, 0]).is_err());
        assert_eq!(expire(&store, Millis(2_000), 16).unwrap(), expired(3, 2));
        assert!(lists(&store).is_empty() && store.hub.get(&damaged).unwrap().is_none());
    }

    #[test]
    fn markers_of_an_earlier_version_are_listed_at_the_first_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            mark(&store, 1_000, &["a", "b"], "applied", &[]);
            // As an earlier version left it: no lists, no `at`, no meta entry.
            for item in store.hub.scan_prefix([LIST]).keys() {
                store.hub.remove(item.unwrap()).unwrap();
            }
            for id in ["a", "b"] {
                let old = br#"{"outcome":"applied"}"#.to_vec();
                store.hub.insert(marker_key(id.as_bytes()), old).unwrap();
            }
            store.hub.remove(key(b's', &["meta", LISTS_META])).unwrap();
            store.flush().unwrap();
        }
        let before_open = Millis::now();
        let store = reopen(dir.path());
        let listed = lists(&store);
        assert_eq!(listed.len(), 1);
        assert!(listed[0].0 >= before_open.0, "dated at the upgrade");
        assert_eq!(listed[0].1, ["a", "b"]);
        // Young: kept; one window later (here: past the list's time) they go.
        expire(&store, before_open, 16).unwrap();
        assert_eq!(kept(&store, &["a", "b"]), [true, true]);
        let gone = expire(&store, Millis(listed[0].0 + 1), 16).unwrap();
        assert_eq!(gone.markers, 2);
        drop(store);
        // Listed once.
        let store = reopen(dir.path());
        assert!(lists(&store).is_empty());
    }

    #[test]
    fn the_filter_is_rebuilt_without_expired_markers_once_half_has_expired() {
        let store = Store::temporary().unwrap();
        wait_for_marker_filter(&store);
        assert_eq!(store.rebuild_marker_filter_if_due().unwrap(), None);
        // Two layers of keys the filter was given, of markers since expired (only
        // the filter is fed: writing 450,000 markers would take a debug build too long).
        for i in 0..450_000 {
            store
                .markers
                .insert(&marker_key(format!("gone-{i}").as_bytes()));
        }
        mark(&store, 1_000, &["live-1", "live-2"], "applied", &[]);
        let before = store.marker_filter_bytes();
        assert_eq!(before, 3 << 19, "512 KiB and 1 MiB");
        store.markers.note_expired(220_000);
        assert_eq!(
            store.rebuild_marker_filter_if_due().unwrap(),
            None,
            "under half"
        );
        store.markers.note_expired(5_001);
        let after = store.rebuild_marker_filter_if_due().unwrap().unwrap();
        assert!(after < before, "{after} of {before}");
        assert_eq!(after, store.marker_filter_bytes());
        // The live markers are found through it; nearly every expired id skips sled.
        assert_eq!(kept(&store, &["live-1", "live-2"]), [true, true]);
        let maybe = (0..10_000)
            .filter(|i| {
                store
                    .markers
                    .may_contain(&marker_key(format!("gone-{i}").as_bytes()))
            })
            .count();
        assert!(maybe < 200, "{maybe} of 10,000 expired ids still 'maybe'");
        // The count starts over.
        assert_eq!(store.rebuild_marker_filter_if_due().unwrap(), None);
    }
}
