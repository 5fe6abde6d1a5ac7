//! Message tracking in the store: every processed message id's timeline, written in the same
//! transaction as the commit that processed it (`bodflow track`, `GET /messages/{id}`).
//!
//! | prefix | key | value |
//! | --- | --- | --- |
//! | `t` | big-endian ms of the entry's latest processing, message id | [`Track`]: a version byte, then postcard |
//! | `b` | BODID, `0x1f`, big-endian ms, message id | empty: a BODID's messages in time order |
//!
//! The message id's marker names its entry's time ([`Marker::tracked`](super::Marker)), so a
//! lookup by message id is two point reads and a lookup by BODID a prefix scan plus a read per
//! match, whatever the number of tracked messages. BODIDs are not unique (LN and CSI reuse
//! one per record), hence an index rather than a key. Time-ordered `t` keys make the retention
//! purge a range scan from the start that stops at the first young entry.
//!
//! One entry per message id: the first processing writes it (two keys per message); a
//! redelivery found duplicate adds a run where the entry is; a deliberate re-run (a released
//! parked document, a replayed dead letter) adds a run and moves the entry to its time, so
//! retention counts from the latest processing. At most [`MAX_RUNS`] runs are kept, the first
//! always. Publish confirm times are filled in later, in batches, by the outbox publisher
//! ([`Store::track_confirms`]).
//!
//! Entries live for `tracking.retention` only, so the encoding may change between versions:
//! an entry of another version reads as [`StoreError::Corrupt`] naming it, never as garbage.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Store, StoreError, Tx, TxResult, SEP};

/// Runs kept per message: the first and the latest ones (a redelivery storm cannot grow an
/// entry without bound).
pub const MAX_RUNS: usize = 16;

/// First byte of every entry.
const VERSION: u8 = 1;

/// Milliseconds since the Unix epoch: a varint in the store, RFC 3339 text in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    pub fn now() -> Millis {
        Millis::from_datetime(Utc::now())
    }

    pub fn from_datetime(t: DateTime<Utc>) -> Millis {
        Millis(u64::try_from(t.timestamp_millis()).unwrap_or(0))
    }

    pub fn to_datetime(self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_millis(i64::try_from(self.0).ok()?)
    }

    /// `2024-05-01T12:00:00.123Z`.
    pub fn rfc3339(self) -> String {
        self.to_datetime()
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
            .unwrap_or_else(|| self.0.to_string())
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.rfc3339())
        } else {
            serializer.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Millis, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            DateTime::parse_from_rfc3339(&text)
                .map(|t| Millis::from_datetime(t.with_timezone(&Utc)))
                .map_err(serde::de::Error::custom)
        } else {
            u64::deserialize(deserializer).map(Millis)
        }
    }
}

/// One message id's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Track {
    pub message_id: String,
    /// Every processing of this message id, oldest first.
    pub runs: Vec<Run>,
}

/// Why the message went through the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A delivery (or a replayed file); a redelivery of a processed message id is one too,
    /// with outcome `duplicate`.
    Received,
    /// A deliberate retry: a dead letter replayed with `x-bodflow-retry`.
    Retry,
    /// A parked document released (`bodflow parked release`, an application re-activated).
    Release,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Received => "received",
            Trigger::Retry => "retry",
            Trigger::Release => "release",
        }
    }
}

/// One processing of a message: what came in, what each stage decided, what went out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub received_at: Millis,
    pub trigger: Trigger,
    /// A file path (`replay`) or `amqp`.
    pub source: String,
    /// Sender/LogicalID as the document gives it.
    pub sender: Option<String>,
    /// Payload size in bytes.
    pub size: u64,
    /// The delivery's `reply_to`, where replies went instead of the sender's queue.
    pub reply_to: Option<String>,
    pub bod_id: Option<String>,
    pub verb: Option<String>,
    pub noun: Option<String>,
    /// Each stage's decision, in order.
    pub stages: Vec<StageDecision>,
    pub outcome: String,
    pub action: Option<String>,
    pub record: Option<String>,
    pub error: Option<TrackedError>,
    pub parked: Option<TrackedPark>,
    pub outputs: Vec<TrackedOutput>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageDecision {
    pub stage: String,
    pub decision: String,
}

/// A rejection: stage, stable code, message, XML path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedError {
    pub stage: String,
    pub code: String,
    pub message: String,
    pub path: Option<String>,
}

/// Where a parked document waits: its reason and the sequence `bodflow parked` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedPark {
    pub reason: String,
    pub seq: u64,
}

/// An emitted document and, once the broker confirmed its publish, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedOutput {
    pub kind: String,
    /// Receiving logical ID, or the `reply_to` queue.
    pub to: String,
    pub bod_id: String,
    pub confirmed_at: Option<Millis>,
}

/// A broker confirm of an output, as the publisher saw it.
#[derive(Debug, Clone, Copy)]
pub struct Confirmed<'a> {
    /// The inbound message id the output answers (its `correlation_id`).
    pub message_id: &'a str,
    pub bod_id: &'a str,
    pub at: Millis,
}

fn entry_key(at: u64, message_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + message_id.len());
    k.push(b't');
    k.extend_from_slice(&at.to_be_bytes());
    k.extend_from_slice(message_id.as_bytes());
    k
}

fn bod_prefix(bod_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + bod_id.len() + 8 + 32);
    k.push(b'b');
    k.extend_from_slice(bod_id.as_bytes());
    k.push(SEP);
    k
}

fn bod_key(bod_id: &str, at: u64, message_id: &str) -> Vec<u8> {
    let mut k = bod_prefix(bod_id);
    k.extend_from_slice(&at.to_be_bytes());
    k.extend_from_slice(message_id.as_bytes());
    k
}

/// (time, message id) from the tail of a `t` key or a `b` key after its prefix.
fn split_tail(tail: &[u8]) -> Option<(u64, &str)> {
    let at = u64::from_be_bytes(tail.get(..8)?.try_into().ok()?);
    let message_id = std::str::from_utf8(tail.get(8..)?).ok()?;
    Some((at, message_id))
}

fn corrupt(k: &[u8], message: String) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        message,
    }
}

fn encode_track(k: &[u8], track: &Track) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(track, vec![VERSION]).map_err(|e| corrupt(k, e.to_string()))
}

fn decode_track(k: &[u8], bytes: &[u8]) -> Result<Track, StoreError> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| corrupt(k, format!("tracking entry: {e}")))
        }
        Some((v, _)) => Err(corrupt(k, format!("tracking entry of format version {v}"))),
        None => Err(corrupt(k, "empty tracking entry".into())),
    }
}

/// The distinct BODIDs an entry is indexed under.
fn bod_ids(track: &Track) -> Vec<&str> {
    let mut ids: Vec<&str> = track
        .runs
        .iter()
        .filter_map(|r| r.bod_id.as_deref())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

impl Tx<'_> {
    /// Adds `run` to `message_id`'s entry and returns the time the entry is now kept under.
    /// `before` is the time the message's marker named before this commit. With `in_place`
    /// (a duplicate delivery) an existing entry keeps its time; otherwise the entry is (re)written
    /// at the run's time.
    pub fn track(
        &self,
        message_id: &str,
        before: Option<u64>,
        run: Run,
        in_place: bool,
    ) -> TxResult<u64> {
        let existing = match before {
            Some(at) => {
                let k = entry_key(at, message_id);
                match self.raw_get(&k)? {
                    Some(v) => Some((at, decode_track(&k, &v)?)),
                    None => None,
                }
            }
            None => None,
        };
        let new_bod_id = run.bod_id.clone();
        let (at, track) = match existing {
            Some((old, mut track)) => {
                let at = if in_place { old } else { run.received_at.0 };
                if at != old {
                    self.raw_remove(entry_key(old, message_id));
                    for b in bod_ids(&track) {
                        self.raw_remove(bod_key(b, old, message_id));
                    }
                }
                track.runs.push(run);
                if track.runs.len() > MAX_RUNS {
                    track.runs.remove(1);
                }
                if at != old {
                    for b in bod_ids(&track) {
                        self.raw_insert(bod_key(b, at, message_id), sled::IVec::default());
                    }
                }
                (at, track)
            }
            None => (
                run.received_at.0,
                Track {
                    message_id: message_id.to_string(),
                    runs: vec![run],
                },
            ),
        };
        if let Some(b) = new_bod_id {
            self.raw_insert(bod_key(&b, at, message_id), sled::IVec::default());
        }
        let k = entry_key(at, message_id);
        let v = encode_track(&k, &track)?;
        self.raw_insert(k, v);
        Ok(at)
    }

    fn tracked_entry(&self, message_id: &str) -> TxResult<Option<(Vec<u8>, Track)>> {
        let Some(at) = self.marker(message_id)?.and_then(|m| m.tracked) else {
            return Ok(None);
        };
        let k = entry_key(at, message_id);
        match self.raw_get(&k)? {
            Some(v) => {
                let track = decode_track(&k, &v)?;
                Ok(Some((k, track)))
            }
            None => Ok(None),
        }
    }
}

impl Store {
    /// The timeline of a message id (`None`: never processed with tracking on, or purged).
    pub fn tracked(&self, message_id: &str) -> Result<Option<Track>, StoreError> {
        let Some(at) = self.marker(message_id)?.and_then(|m| m.tracked) else {
            return Ok(None);
        };
        let k = entry_key(at, message_id);
        self.hub.get(&k)?.map(|v| decode_track(&k, &v)).transpose()
    }

    /// The timelines of the messages that carried `bod_id`, newest first, at most `limit`.
    pub fn tracked_by_bod_id(&self, bod_id: &str, limit: usize) -> Result<Vec<Track>, StoreError> {
        let prefix = bod_prefix(bod_id);
        let mut out = Vec::new();
        for item in self.hub.scan_prefix(&prefix).rev() {
            if out.len() >= limit {
                break;
            }
            let (k, _) = item?;
            let Some((at, message_id)) = k.get(prefix.len()..).and_then(split_tail) else {
                continue;
            };
            let ek = entry_key(at, message_id);
            let Some(v) = self.hub.get(&ek)? else {
                continue;
            };
            let track = decode_track(&ek, &v)?;
            // A BODID holding the separator could match a longer one's prefix: check.
            if track
                .runs
                .iter()
                .any(|r| r.bod_id.as_deref() == Some(bod_id))
            {
                out.push(track);
            }
        }
        Ok(out)
    }

    /// Everything tracked under `id` as a message id and as a BODID: the message first, then
    /// the BODID's messages newest first, at most `limit` in all.
    pub fn lookup_tracked(&self, id: &str, limit: usize) -> Result<Vec<Track>, StoreError> {
        let mut out: Vec<Track> = self.tracked(id)?.into_iter().collect();
        for t in self.tracked_by_bod_id(id, limit)? {
            if out.len() >= limit {
                break;
            }
            if !out.iter().any(|o| o.message_id == t.message_id) {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Removes up to `max` entries whose latest processing is older than `before`, with their
    /// BODID index keys; returns how many went. Call again while it returns `max`.
    pub fn purge_tracked(&self, before: Millis, max: usize) -> Result<usize, StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for item in self
            .hub
            .range(vec![b't']..entry_key(before.0, ""))
            .take(max)
        {
            let (k, v) = item?;
            if let (Some((at, message_id)), Ok(track)) =
                (k.get(1..).and_then(split_tail), decode_track(&k, &v))
            {
                for b in bod_ids(&track) {
                    batch.remove(bod_key(b, at, message_id));
                }
            }
            // An unreadable entry goes too; its index keys, if any, lead nowhere and are skipped.
            batch.remove(k);
            removed += 1;
        }
        self.hub.apply_batch(batch)?;
        Ok(removed)
    }

    /// Records broker confirms of published outputs on their messages' entries, in one batch;
    /// returns how many outputs were found. Outputs of purged or untracked messages are
    /// skipped.
    pub fn track_confirms(&self, confirms: &[Confirmed<'_>]) -> Result<usize, StoreError> {
        let mut by_message: BTreeMap<&str, Vec<&Confirmed<'_>>> = BTreeMap::new();
        for c in confirms {
            by_message.entry(c.message_id).or_default().push(c);
        }
        self.transact(|tx| {
            let mut found = 0;
            for (message_id, confirms) in &by_message {
                let Some((k, mut track)) = tx.tracked_entry(message_id)? else {
                    continue;
                };
                let mut changed = false;
                for c in confirms {
                    let output = track
                        .runs
                        .iter_mut()
                        .rev()
                        .flat_map(|r| r.outputs.iter_mut())
                        .find(|o| o.bod_id == c.bod_id && o.confirmed_at.is_none());
                    if let Some(o) = output {
                        o.confirmed_at = Some(c.at);
                        changed = true;
                        found += 1;
                    }
                }
                if changed {
                    let v = encode_track(&k, &track)?;
                    tx.raw_insert(k, v);
                }
            }
            Ok(found)
        })
    }

    /// Number of tracking entries (a full scan of the `t` keys: for tests and tools).
    pub fn tracked_len(&self) -> usize {
        self.hub.scan_prefix([b't']).keys().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Marker;

    fn run(at: u64, bod_id: &str, outcome: &str) -> Run {
        Run {
            received_at: Millis(at),
            trigger: Trigger::Received,
            source: "amqp".into(),
            sender: Some("lid://a".into()),
            size: 1234,
            reply_to: None,
            bod_id: Some(bod_id.into()),
            verb: Some("Sync".into()),
            noun: Some("CustomerPartyMaster".into()),
            stages: vec![StageDecision {
                stage: "country".into(),
                decision: "country DEU→DE (iso3)".into(),
            }],
            outcome: outcome.into(),
            action: None,
            record: Some("ACC-000001".into()),
            error: None,
            parked: None,
            outputs: vec![TrackedOutput {
                kind: "SyncCustomerPartyMaster".into(),
                to: "lid://b".into(),
                bod_id: format!("out-{at}"),
                confirmed_at: None,
            }],
        }
    }

    /// Commits a first processing the way the pipeline does: marker and entry together.
    fn first(store: &Store, message_id: &str, at: u64, bod_id: &str) {
        store
            .transact(|tx| {
                tx.put_marker(
                    message_id,
                    &Marker {
                        outcome: "applied".into(),
                        record: None,
                        bod_id: Some(bod_id.into()),
                        tracked: Some(at),
                    },
                )?;
                tx.track(message_id, None, run(at, bod_id, "applied"), false)
            })
            .unwrap();
    }

    #[test]
    fn an_entry_round_trips_and_is_found_by_message_id_and_by_bod_id_newest_first() {
        let store = Store::temporary().unwrap();
        first(&store, "m1", 1_000, "B");
        first(&store, "m2", 3_000, "B");
        first(&store, "m3", 2_000, "B");
        first(&store, "m4", 2_500, "other");
        let t = store.tracked("m1").unwrap().unwrap();
        assert_eq!(t.runs, vec![run(1_000, "B", "applied")]);
        let by_bod: Vec<String> = store
            .tracked_by_bod_id("B", 10)
            .unwrap()
            .into_iter()
            .map(|t| t.message_id)
            .collect();
        assert_eq!(by_bod, ["m2", "m3", "m1"]);
        assert_eq!(store.tracked_by_bod_id("B", 2).unwrap().len(), 2);
        assert!(store.tracked_by_bod_id("", 10).unwrap().is_empty());
        assert!(store.tracked("nope").unwrap().is_none());
        let both = store.lookup_tracked("m4", 10).unwrap();
        assert_eq!(both.len(), 1);
        assert_eq!(both[0].message_id, "m4");
    }

    #[test]
    fn a_duplicate_stays_in_place_a_rerun_moves_the_entry_and_its_index() {
        let store = Store::temporary().unwrap();
        first(&store, "m1", 1_000, "B");
        let at = store
            .transact(|tx| tx.track("m1", Some(1_000), run(5_000, "B", "duplicate"), true))
            .unwrap();
        assert_eq!(at, 1_000, "a duplicate keeps the entry's time");
        let at = store
            .transact(|tx| {
                let at = tx.track("m1", Some(1_000), run(9_000, "B2", "applied"), false)?;
                tx.put_marker(
                    "m1",
                    &Marker {
                        outcome: "applied".into(),
                        record: None,
                        bod_id: None,
                        tracked: Some(at),
                    },
                )?;
                Ok(at)
            })
            .unwrap();
        assert_eq!(at, 9_000);
        assert_eq!(store.tracked_len(), 1, "moved, not copied");
        let t = store.tracked("m1").unwrap().unwrap();
        let outcomes: Vec<&str> = t.runs.iter().map(|r| r.outcome.as_str()).collect();
        assert_eq!(outcomes, ["applied", "duplicate", "applied"]);
        assert_eq!(store.tracked_by_bod_id("B", 10).unwrap().len(), 1);
        assert_eq!(store.tracked_by_bod_id("B2", 10).unwrap().len(), 1);
        assert_eq!(
            store.hub.scan_prefix([b'b']).count(),
            2,
            "old index keys were removed"
        );
        // Purging before the new time removes everything, index included.
        assert_eq!(store.purge_tracked(Millis(9_001), 100).unwrap(), 1);
        assert_eq!(store.hub.scan_prefix([b'b']).count(), 0);
    }

    #[test]
    fn runs_are_capped_keeping_the_first() {
        let store = Store::temporary().unwrap();
        first(&store, "m1", 1_000, "B");
        for i in 0..40 {
            store
                .transact(|tx| tx.track("m1", Some(1_000), run(2_000 + i, "B", "duplicate"), true))
                .unwrap();
        }
        let t = store.tracked("m1").unwrap().unwrap();
        assert_eq!(t.runs.len(), MAX_RUNS);
        assert_eq!(t.runs[0].outcome, "applied");
        assert_eq!(t.runs[MAX_RUNS - 1].received_at, Millis(2_039));
    }

    #[test]
    fn purge_removes_old_entries_only_in_chunks() {
        let store = Store::temporary().unwrap();
        for i in 0..10u64 {
            first(&store, &format!("old{i}"), 1_000 + i, "B");
        }
        first(&store, "young", 50_000, "B");
        assert_eq!(store.purge_tracked(Millis(50_000), 4).unwrap(), 4);
        assert_eq!(store.purge_tracked(Millis(50_000), 4).unwrap(), 4);
        assert_eq!(store.purge_tracked(Millis(50_000), 4).unwrap(), 2);
        assert_eq!(store.purge_tracked(Millis(50_000), 4).unwrap(), 0);
        assert!(store.tracked("old3").unwrap().is_none());
        assert!(store.tracked("young").unwrap().is_some());
        let left: Vec<String> = store
            .tracked_by_bod_id("B", 100)
            .unwrap()
            .into_iter()
            .map(|t| t.message_id)
            .collect();
        assert_eq!(left, ["young"]);
        assert_eq!(store.hub.scan_prefix([b'b']).count(), 1);
    }

    #[test]
    fn confirms_fill_in_the_matching_outputs_once() {
        let store = Store::temporary().unwrap();
        first(&store, "m1", 1_000, "B");
        let confirms = [
            Confirmed {
                message_id: "m1",
                bod_id: "out-1000",
                at: Millis(1_500),
            },
            Confirmed {
                message_id: "m1",
                bod_id: "not-an-output",
                at: Millis(1_500),
            },
            Confirmed {
                message_id: "gone",
                bod_id: "x",
                at: Millis(1_500),
            },
        ];
        assert_eq!(store.track_confirms(&confirms).unwrap(), 1);
        let t = store.tracked("m1").unwrap().unwrap();
        assert_eq!(t.runs[0].outputs[0].confirmed_at, Some(Millis(1_500)));
        // A second confirm of the same output (a re-publish) keeps the first time.
        let again = [Confirmed {
            at: Millis(2_000),
            ..confirms[0]
        }];
        assert_eq!(store.track_confirms(&again).unwrap(), 0);
    }

    #[test]
    fn json_shows_times_as_rfc3339_and_reads_them_back() {
        let t = Track {
            message_id: "m1".into(),
            runs: vec![run(1_714_564_800_123, "B", "applied")],
        };
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["runs"][0]["received_at"], "2024-05-01T12:00:00.123Z");
        assert_eq!(json["runs"][0]["trigger"], "received");
        let back: Track = serde_json::from_value(json).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn an_entry_of_another_version_is_a_named_error() {
        let k = entry_key(1, "m");
        let mut bytes = encode_track(
            &k,
            &Track {
                message_id: "m".into(),
                runs: vec![],
            },
        )
        .unwrap();
        assert!(decode_track(&k, &bytes).is_ok());
        bytes[0] = 9;
        let e = decode_track(&k, &bytes).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
        assert!(decode_track(&k, &[]).is_err());
        assert!(decode_track(&k, &[VERSION, 0xff, 0xff]).is_err());
    }
}
