//! Message tracking in the store: every processing of a message (its *run*: received, each
//! stage's decision, outcome, outputs), written in the same transaction as the commit that
//! processed it (`bodflow track`, `GET /messages/{id}`).
//!
//! | prefix | key | value |
//! | --- | --- | --- |
//! | `t` | big-endian group number | the runs one transaction committed: a version byte, the big-endian ms of its first run, then LZ4 of the length-prefixed postcard slots (message id, [`Run`]) |
//! | `k` | big-endian group number | publish confirms of that group's outputs: 12-byte records (slot, output index — its top bit set when the output went to `bodflow.dead` instead —, ms) |
//! | `j` | bucket (the top 4 bits of a BODID's hash), big-endian number of the first group it covers | a BODID index block: the version, the last group it covers, then per group its number, its run count and (slot, 4 bytes of the BODID's hash) per run of the bucket |
//!
//! The commit path writes one key per transaction, the group: sled's cost is per key, and a
//! key per run would double what tracking costs (the outbox groups its rows the same way).
//! Groups are compressed (runs of one commit repeat one another's decisions, about 5:1): sled
//! rewrites a leaf with all its values each time the leaf changes, so every byte stored costs
//! several times over. Group numbers come from sled's persistent ID generator: increasing, in
//! commit order.
//!
//! The BODID index is written [`INDEX_BLOCK`] runs at a time, as one block per bucket, not a
//! key per run: a key per run, at a random place in the tree (a hash), was a leaf rewrite per
//! message (benches/README.md has what it cost). The runs committed since the newest blocks
//! (the *tail*) are held in memory ([`BodIndex`]); a commit that fills the tail writes it as
//! blocks, in one batch after the groups they cover, and opening the store rebuilds the tail
//! from the groups after the newest blocks — the groups are the truth, so a crash between the
//! two loses nothing. A lookup checks the run's BODID, so a collision of the 4-byte hashes
//! costs a read, never a wrong answer.
//!
//! The message id's marker lists where its runs are ([`TrackAt`] in
//! [`Marker::tracked`](super::Marker)), so a lookup by message id is a marker read plus a
//! group read per run. A lookup by BODID goes through the tail and its bucket's blocks newest
//! first (a sixteenth of the index: 6 bytes a run, plus 10 a group that has runs in the
//! bucket) and reads the runs whose hash matches until it has enough. BODIDs are not unique
//! (LN and CSI reuse one per record), hence an index rather than a key.
//!
//! A message id that comes back (a redelivery found duplicate, a released parked document, a
//! replayed dead letter) gets a new run in its commit's group and its marker lists it too; at
//! most [`MAX_RUNS`] are listed (the first always). Groups are in commit order, so the
//! retention purge reads them from the start and stops at the first group whose first run is
//! younger than the retention (a group committed after it waits for it: with real clocks they
//! are in time order too); a purged run drops out of its message's timeline (the marker itself
//! stays: idempotency needs it). Publish confirm times arrive later, in batches, from the outbox
//! publisher ([`Store::track_confirms`]): one small key per group, not a rewrite of the runs.
//!
//! Runs live for `tracking.retention` only, so their encoding may change between versions: a
//! group of another version reads as [`StoreError::Corrupt`] naming it, never as garbage.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Store, StoreError, Tx, TxResult};

/// Runs listed per message: the first and the latest ones (a redelivery storm cannot grow a
/// marker without bound).
pub const MAX_RUNS: usize = 16;

/// First byte of every group.
const VERSION: u8 = 1;

/// Most runs in one group (slots are 16-bit); a bigger transaction starts another group.
const GROUP_SLOTS: usize = 1 << 16;

fn slot_index(slots: usize) -> u16 {
    u16::try_from(slots).unwrap_or(u16::MAX)
}

/// Where a run is: its group number and its slot in the group. JSON (in the marker):
/// `[group, slot]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TrackAt(pub u64, pub u16);

/// Where an output is: its run's group and slot, and its index among the run's outputs. In
/// the outbox row's JSON head: `[group, slot, output]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OutputAt(pub u64, pub u16, pub u16);

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

/// One message id's timeline, as lookups return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Track {
    pub message_id: String,
    /// Every processing of this message id still within the retention, oldest first.
    pub runs: Vec<Run<'static>>,
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

/// Text of a run: borrowed from the commit's report while it is written (no copies on the
/// commit path), owned once read back.
pub type Text<'a> = Cow<'a, str>;

/// One processing of a message: what came in, what each stage decided, what went out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run<'a> {
    pub received_at: Millis,
    pub trigger: Trigger,
    /// A file path (`replay`) or `amqp`.
    pub source: Text<'a>,
    /// Sender/LogicalID as the document gives it.
    pub sender: Option<Text<'a>>,
    /// Payload size in bytes.
    pub size: u64,
    /// The delivery's `reply_to`, where replies went instead of the sender's queue.
    pub reply_to: Option<Text<'a>>,
    pub bod_id: Option<Text<'a>>,
    pub verb: Option<Text<'a>>,
    pub noun: Option<Text<'a>>,
    /// Each stage's decision, in order.
    pub stages: Vec<StageDecision<'a>>,
    pub outcome: Text<'a>,
    pub action: Option<Text<'a>>,
    pub record: Option<Text<'a>>,
    pub error: Option<TrackedError<'a>>,
    pub parked: Option<TrackedPark<'a>>,
    pub outputs: Vec<TrackedOutput<'a>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageDecision<'a> {
    pub stage: Text<'a>,
    pub decision: Text<'a>,
}

/// A rejection: stage, stable code, message, XML path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedError<'a> {
    pub stage: Text<'a>,
    pub code: Text<'a>,
    pub message: Text<'a>,
    pub path: Option<Text<'a>>,
}

/// Where a parked document waits: its reason and the sequence `bodflow parked` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedPark<'a> {
    pub reason: Text<'a>,
    pub seq: u64,
}

/// An emitted document and, once the broker confirmed its publish, when; or, when no queue
/// took it and it went to `bodflow.dead` instead (`unroutable`), when that was confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedOutput<'a> {
    pub kind: Text<'a>,
    /// Receiving logical ID, or the `reply_to` queue.
    pub to: Text<'a>,
    pub bod_id: Text<'a>,
    pub confirmed_at: Option<Millis>,
    /// Known only from the group's confirm records, never stored in the run: in JSON when set,
    /// nothing at all in the store's encoding (runs written before it read as they are).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "read_only")]
    pub dead_lettered_at: Option<Millis>,
}

/// A field that exists in human-readable forms (JSON) only: the store's binary encoding
/// writes and reads it as nothing (a unit, zero bytes in postcard).
mod read_only {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            v.serialize(s)
        } else {
            s.serialize_unit()
        }
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        if d.is_human_readable() {
            Option::<T>::deserialize(d)
        } else {
            <()>::deserialize(d).map(|()| None)
        }
    }
}

/// The flag on a confirm record's output index: the output went to `bodflow.dead`.
const DEAD_LETTERED: u16 = 0x8000;

/// A confirm record's output field: the output's index, flagged when dead-lettered (`None`
/// for an index the flag would hide; no run has 32,768 outputs).
fn record_output(index: u16, dead_lettered: bool) -> Option<u16> {
    (index < DEAD_LETTERED).then_some(if dead_lettered {
        index | DEAD_LETTERED
    } else {
        index
    })
}

/// A broker confirm of an output, as the publisher saw it.
#[derive(Debug, Clone, Copy)]
pub struct Confirmed<'a> {
    /// The inbound message id the output answers (its `correlation_id`).
    pub message_id: &'a str,
    pub bod_id: &'a str,
    pub at: Millis,
    /// Where the output is, when its outbox row says ([`OutputAt`]); else it is looked up
    /// through the message's marker.
    pub output: Option<OutputAt>,
    /// The confirm is of the output's copy in `bodflow.dead` (no queue took it).
    pub dead_lettered: bool,
}

#[cfg(test)]
impl<'a> Confirmed<'a> {
    /// A confirm without a place, found through `message_id`'s marker (for store tests).
    pub(crate) fn by_marker(message_id: &'a str, bod_id: &'a str, at: u64) -> Confirmed<'a> {
        Confirmed {
            message_id,
            bod_id,
            at: Millis(at),
            output: None,
            dead_lettered: false,
        }
    }
}

/// What one purge call removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub groups: usize,
    pub runs: usize,
}

/// A transaction's tracking group while it is being filled: its number, the time of its first
/// run, and its slots so far (compressed when written).
pub(super) struct Group {
    number: u64,
    ms: u64,
    slots: usize,
    bytes: Vec<u8>,
}

/// One slot as written (borrowed) and read (owned): postcard writes both alike.
#[derive(Serialize)]
struct SlotRef<'a> {
    message_id: &'a str,
    run: &'a Run<'a>,
}

#[derive(Deserialize)]
struct Slot {
    message_id: String,
    run: Run<'static>,
}

fn group_key(prefix: u8, number: u64) -> [u8; 9] {
    let mut k = [prefix; 9];
    k[1..].copy_from_slice(&number.to_be_bytes());
    k
}

/// Runs the BODID index writes as blocks at a time: the commit that brings the tail in memory
/// to this many or more writes it.
pub const INDEX_BLOCK: usize = 4_096;

/// The index is split by the top 4 bits of the BODID's hash into this many buckets, each
/// with its own blocks: a lookup reads one of them.
const BUCKETS: u8 = 16;

/// First byte of every BODID index block.
const INDEX_VERSION: u8 = 1;

/// 4 bytes of the BODID's hash, as the index keeps it.
fn bod_hash(bod_id: &str) -> u32 {
    let h = blake3::hash(bod_id.as_bytes());
    u32::from_be_bytes([
        h.as_bytes()[0],
        h.as_bytes()[1],
        h.as_bytes()[2],
        h.as_bytes()[3],
    ])
}

/// The bucket of a hash: its top 4 bits.
fn bucket(hash: u32) -> u8 {
    (hash >> 28) as u8
}

/// `j`, the bucket, the big-endian number of the first group the block covers.
fn block_key(bucket: u8, first: u64) -> [u8; 10] {
    let mut k = [b'j'; 10];
    k[1] = bucket;
    k[2..].copy_from_slice(&first.to_be_bytes());
    k
}

/// The first group a block covers, from its key.
fn block_first(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(2..10)?.try_into().ok()?))
}

/// The BODID index of the runs committed since the newest blocks, in commit order (see the
/// module documentation).
#[derive(Debug)]
pub(super) struct BodIndex {
    tail: Vec<(TrackAt, u32)>,
    /// Runs the tail holds before it is written: [`INDEX_BLOCK`], fewer in tests.
    block: usize,
}

impl BodIndex {
    pub(super) fn new(block: usize) -> BodIndex {
        BodIndex {
            tail: Vec::new(),
            block: block.max(1),
        }
    }
}

/// The blocks of index entries (in commit order), one per bucket that has any, as stored
/// under their `j` keys: each covers the entries' first group to their last, so the newest
/// blocks of all buckets say together how far the index goes.
fn encode_blocks(entries: &[(TrackAt, u32)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Vec::new();
    };
    let (first, last) = (first.0 .0, last.0 .0);
    let mut sorted = entries.to_vec();
    // Stable: commit order within a bucket.
    sorted.sort_by_key(|(_, hash)| bucket(*hash));
    sorted
        .chunk_by(|a, b| bucket(a.1) == bucket(b.1))
        .map(|entries| {
            let mut v = Vec::with_capacity(9 + entries.len() * 8);
            v.push(INDEX_VERSION);
            v.extend_from_slice(&last.to_be_bytes());
            // A group's runs under one head (a group of 65,536 runs takes two).
            for runs in entries
                .chunk_by(|a, b| a.0 .0 == b.0 .0)
                .flat_map(|g| g.chunks(usize::from(u16::MAX)))
            {
                v.extend_from_slice(&runs[0].0 .0.to_be_bytes());
                v.extend_from_slice(&slot_index(runs.len()).to_be_bytes());
                for (at, hash) in runs {
                    v.extend_from_slice(&at.1.to_be_bytes());
                    v.extend_from_slice(&hash.to_be_bytes());
                }
            }
            (block_key(bucket(entries[0].1), first).to_vec(), v)
        })
        .collect()
}

/// The last group a block covers, from its header.
fn block_last(k: &[u8], v: &[u8]) -> Result<u64, StoreError> {
    match v.split_first() {
        Some((&INDEX_VERSION, rest)) => rest
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| corrupt(k, "truncated BODID index block".into())),
        Some((v, _)) => Err(corrupt(
            k,
            format!("BODID index block of format version {v}"),
        )),
        None => Err(corrupt(k, "empty BODID index block".into())),
    }
}

/// The places in a block whose hash is `hash`, in commit order.
/// A block whose groups are not all within the ones its key and header say it covers is
/// damaged.
fn block_matches(k: &[u8], v: &[u8], hash: u32) -> Result<Vec<TrackAt>, StoreError> {
    let covered = block_first(k).unwrap_or(u64::MAX)..=block_last(k, v)?;
    let truncated = || corrupt(k, "truncated BODID index block".into());
    let mut found = Vec::new();
    let mut rest = v.get(9..).unwrap_or_default();
    while !rest.is_empty() {
        let head = rest.get(..10).ok_or_else(truncated)?;
        let group = u64::from_be_bytes(head[..8].try_into().map_err(|_| truncated())?);
        if !covered.contains(&group) {
            return Err(corrupt(
                k,
                format!("BODID index block lists group {group} outside {covered:?}"),
            ));
        }
        let count = usize::from(u16::from_be_bytes([head[8], head[9]]));
        let runs = rest.get(10..10 + count * 6).ok_or_else(truncated)?;
        for e in runs.chunks_exact(6) {
            if u32::from_be_bytes([e[2], e[3], e[4], e[5]]) == hash {
                found.push(TrackAt(group, u16::from_be_bytes([e[0], e[1]])));
            }
        }
        rest = &rest[10 + count * 6..];
    }
    Ok(found)
}

/// Store meta entry set once a store's per-run BODID index keys (`d`, before blocks) are gone.
const BOD_BLOCKS_META: &str = "index.bodid-blocks";

/// The BODID index as the store holds it: the tail rebuilt from the groups after the newest
/// blocks, written as blocks while it fills them. A store whose runs were indexed a key per
/// run gets its blocks so at its first open (every retained run is read once), and then loses
/// those keys. A damaged newest block is removed and the runs of its write indexed again
/// (under the same keys: a lookup counts a run found twice once).
pub(super) fn load_bod_index(hub: &sled::Tree, block: usize) -> Result<BodIndex, StoreError> {
    let mut index = BodIndex::new(block);
    let upgrade = !hub.contains_key(super::key(b's', &["meta", BOD_BLOCKS_META]))?;
    let (mut from, mut damaged) = (0, u64::MAX);
    for bucket in 0..BUCKETS {
        let Some(item) = hub.scan_prefix([b'j', bucket]).next_back() else {
            continue;
        };
        let (k, v) = item?;
        match block_matches(&k, &v, 0).and_then(|_| block_last(&k, &v)) {
            Ok(last) => from = from.max(last.saturating_add(1)),
            Err(e) => {
                tracing::warn!(error = %e, "A damaged BODID index block is indexed again");
                damaged = damaged.min(block_first(&k).unwrap_or(0));
                hub.remove(k)?;
            }
        }
    }
    let from = from.min(damaged);
    if upgrade && hub.scan_prefix([b'd']).next().is_some() {
        tracing::info!("Indexing the tracked runs by BODID in blocks (once, after an upgrade)");
    }
    for item in hub.range(group_key(b't', from).to_vec()..vec![b't' + 1]) {
        let (k, v) = item?;
        let Some(number) = group_of(&k) else {
            continue;
        };
        let runs = group_body(&k, &v).and_then(|body| {
            group_slots(&k, &body)?
                .iter()
                .map(|bytes| decode_slot(&k, bytes).map(|slot| slot.run.bod_id))
                .collect::<Result<Vec<_>, _>>()
        });
        match runs {
            Ok(runs) => {
                for (slot, bod_id) in runs.iter().enumerate() {
                    if let Some(b) = bod_id {
                        index
                            .tail
                            .push((TrackAt(number, slot_index(slot)), bod_hash(b)));
                    }
                }
            }
            // Its runs cannot be read, so they cannot be found either.
            Err(e) => tracing::warn!(error = %e, "A tracking group left out of the BODID index"),
        }
        if index.tail.len() >= index.block {
            write_blocks(hub, &mut index)?;
        }
    }
    let removed = super::migrate_once(hub, BOD_BLOCKS_META, b"d", |k, _, batch| {
        batch.remove(k);
        true
    })?;
    if removed > 0 {
        tracing::info!(removed, "BODID index keys replaced by index blocks");
    }
    Ok(index)
}

/// Writes the index's tail as blocks, in one batch, and empties it.
fn write_blocks(hub: &sled::Tree, index: &mut BodIndex) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    for (k, v) in encode_blocks(&index.tail) {
        batch.insert(k, v);
    }
    hub.apply_batch(batch)?;
    index.tail.clear();
    Ok(())
}

/// The group number of a `t` or `k` key.
fn group_of(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(1..9)?.try_into().ok()?))
}

fn corrupt(k: &[u8], message: String) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        message,
    }
}

/// A group's value: the version, the time of its first run, the compressed slots.
fn encode_group(ms: u64, slots: &[u8]) -> Vec<u8> {
    let compressed = lz4_flex::block::compress_prepend_size(slots);
    let mut out = Vec::with_capacity(9 + compressed.len());
    out.push(VERSION);
    out.extend_from_slice(&ms.to_be_bytes());
    out.extend_from_slice(&compressed);
    out
}

/// Appends one slot (length-prefixed) to a group's bytes.
fn push_slot(bytes: Vec<u8>, message_id: &str, run: &Run<'_>) -> Result<Vec<u8>, StoreError> {
    let at = bytes.len();
    let mut bytes = bytes;
    bytes.extend_from_slice(&[0; 4]);
    let mut bytes = postcard::to_extend(&SlotRef { message_id, run }, bytes).map_err(|e| {
        StoreError::Corrupt {
            key: message_id.to_string(),
            message: format!("encoding a tracked run: {e}"),
        }
    })?;
    let len = u32::try_from(bytes.len() - at - 4).map_err(|_| StoreError::Corrupt {
        key: message_id.to_string(),
        message: "tracked run over 4 GiB".into(),
    })?;
    if let Some(prefix) = bytes.get_mut(at..at + 4) {
        prefix.copy_from_slice(&len.to_be_bytes());
    }
    Ok(bytes)
}

/// The time of a group's first run (ms), from its header.
fn group_ms(k: &[u8], bytes: &[u8]) -> Result<u64, StoreError> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => rest
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| corrupt(k, "truncated tracking group".into())),
        Some((v, _)) => Err(corrupt(k, format!("tracking group of format version {v}"))),
        None => Err(corrupt(k, "empty tracking group".into())),
    }
}

/// A group's slots, decompressed.
fn group_body(k: &[u8], bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    group_ms(k, bytes)?;
    lz4_flex::block::decompress_size_prepended(bytes.get(9..).unwrap_or_default())
        .map_err(|e| corrupt(k, format!("tracking group: {e}")))
}

/// The encoded slots in a group's body, in order.
fn group_slots<'v>(k: &[u8], body: &'v [u8]) -> Result<Vec<&'v [u8]>, StoreError> {
    let mut slots = Vec::new();
    let mut at = 0usize;
    while at < body.len() {
        let len =
            body.get(at..at + 4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| corrupt(k, "truncated tracking group".into()))? as usize;
        let slot = body
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| corrupt(k, "truncated tracking slot".into()))?;
        slots.push(slot);
        at += 4 + len;
    }
    Ok(slots)
}

fn decode_slot(k: &[u8], bytes: &[u8]) -> Result<Slot, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| corrupt(k, format!("tracked run: {e}")))
}

/// Confirm records: (slot, output index, ms).
fn decode_confirms(bytes: &[u8]) -> impl Iterator<Item = (u16, u16, Millis)> + '_ {
    bytes.chunks_exact(12).filter_map(|r| {
        Some((
            u16::from_be_bytes(r.get(..2)?.try_into().ok()?),
            u16::from_be_bytes(r.get(2..4)?.try_into().ok()?),
            Millis(u64::from_be_bytes(r.get(4..)?.try_into().ok()?)),
        ))
    })
}

impl Tx<'_> {
    /// Starts tracking one processing of `message_id`, whose marker listed `previous` runs:
    /// from now until [`Tx::track_run`], every marker of that message written in this
    /// transaction lists the previous runs and this one (at most [`MAX_RUNS`], the first kept)
    /// — the commit writes its marker once, with the run in it.
    pub fn begin_run(&self, message_id: &str, previous: &[TrackAt], ms: u64) -> TxResult<()> {
        let at = self.with_group(ms, |g| Ok(TrackAt(g.number, slot_index(g.slots))))?;
        let mut tracked = Vec::with_capacity(previous.len() + 1);
        tracked.extend_from_slice(previous);
        tracked.push(at);
        if tracked.len() > MAX_RUNS {
            tracked.remove(1);
        }
        *self.tracked_runs.borrow_mut() = Some((message_id.to_string(), tracked));
        self.run_outputs.borrow_mut().clear();
        Ok(())
    }

    /// The place of an outbox row `seq` with BODID `bod_id` being pushed now: the next output
    /// of the run being tracked, if any.
    pub(super) fn output_at(&self, seq: u64, bod_id: &str) -> Option<OutputAt> {
        let runs = self.tracked_runs.borrow();
        let at = *runs.as_ref()?.1.last()?;
        let mut outputs = self.run_outputs.borrow_mut();
        let index = u16::try_from(outputs.len()).ok()?;
        outputs.push((seq, bod_id.to_string()));
        Some(OutputAt(at.0, at.1, index))
    }

    /// The runs a marker of `message_id` lists while one of its runs is being tracked.
    pub(super) fn runs_of(&self, message_id: &str) -> Option<Vec<TrackAt>> {
        match &*self.tracked_runs.borrow() {
            Some((id, tracked)) if id == message_id => Some(tracked.clone()),
            _ => None,
        }
    }

    /// This transaction's tracking group (started at `ms` if there is none yet, or a new one
    /// when it is full).
    fn with_group<T>(&self, ms: u64, f: impl FnOnce(&mut Group) -> TxResult<T>) -> TxResult<T> {
        if self
            .tracking
            .borrow()
            .as_ref()
            .is_some_and(|g| g.slots >= GROUP_SLOTS)
        {
            self.write_tracking_group()?;
        }
        let mut pending = self.tracking.borrow_mut();
        let group = match pending.as_mut() {
            Some(g) => g,
            None => pending.insert(Group {
                number: self.db.generate_id()?,
                ms,
                slots: 0,
                bytes: Vec::with_capacity(64 * 1024),
            }),
        };
        f(group)
    }

    /// Adds `run` of `message_id` to this transaction's tracking group, to be indexed under
    /// its BODID once applied, and ends [`Tx::begin_run`]; returns where the run is.
    pub fn track_run(&self, message_id: &str, run: &Run<'_>) -> TxResult<TrackAt> {
        let at = self.with_group(run.received_at.0, |group| {
            let at = TrackAt(group.number, slot_index(group.slots));
            group.bytes = push_slot(std::mem::take(&mut group.bytes), message_id, run)?;
            group.slots += 1;
            Ok(at)
        })?;
        self.tracked_runs.borrow_mut().take();
        self.unplace_unless_outputs(run)?;
        if let Some(b) = &run.bod_id {
            self.indexed.borrow_mut().push((at, bod_hash(b)));
        }
        Ok(at)
    }

    /// The rows [`Tx::output_at`] placed are the run's outputs in order, as the pipeline
    /// emits them. Should a run ever list other outputs, its rows still in this transaction's
    /// outbox group lose their places (their confirms are then looked up by message) rather
    /// than note a confirm on the wrong output.
    fn unplace_unless_outputs(&self, run: &Run<'_>) -> TxResult<()> {
        let placed = std::mem::take(&mut *self.run_outputs.borrow_mut());
        let same = placed.len() == run.outputs.len()
            && placed
                .iter()
                .zip(&run.outputs)
                .all(|((_, b), o)| *b == *o.bod_id);
        if !same {
            self.unplace_outbox_rows(placed.iter().map(|(seq, _)| *seq))?;
        }
        Ok(())
    }

    pub(super) fn write_tracking_group(&self) -> TxResult<()> {
        if let Some(g) = self.tracking.borrow_mut().take() {
            self.raw_insert(
                group_key(b't', g.number).to_vec(),
                encode_group(g.ms, &g.bytes),
            );
        }
        Ok(())
    }

    /// The decompressed slots of group `number`, as this transaction sees the store.
    fn group_body(&self, number: u64) -> TxResult<Option<Vec<u8>>> {
        let k = group_key(b't', number);
        self.raw_get(&k)?.map(|v| group_body(&k, &v)).transpose()
    }
}

impl Store {
    /// The run at `at` and the message id it belongs to; with `confirms`, its outputs' confirm
    /// times filled in.
    fn run_at(
        &self,
        at: TrackAt,
        confirms: bool,
    ) -> Result<Option<(String, Run<'static>)>, StoreError> {
        let k = group_key(b't', at.0);
        let Some(v) = self.hub.get(k)? else {
            return Ok(None);
        };
        let body = group_body(&k, &v)?;
        let Some(bytes) = group_slots(&k, &body)?.get(usize::from(at.1)).copied() else {
            return Ok(None);
        };
        let Slot {
            message_id,
            mut run,
        } = decode_slot(&k, bytes)?;
        if !confirms {
            return Ok(Some((message_id, run)));
        }
        if let Some(confirmed) = self.hub.get(group_key(b'k', at.0))? {
            for (slot, output, ms) in decode_confirms(&confirmed) {
                if slot != at.1 {
                    continue;
                }
                let index = usize::from(output & !DEAD_LETTERED);
                if let Some(o) = run.outputs.get_mut(index) {
                    if output & DEAD_LETTERED == 0 {
                        o.confirmed_at.get_or_insert(ms);
                    } else {
                        o.dead_lettered_at.get_or_insert(ms);
                    }
                }
            }
        }
        Ok(Some((message_id, run)))
    }

    /// The timeline of a message id (`None`: never processed with tracking on, or purged).
    pub fn tracked(&self, message_id: &str) -> Result<Option<Track>, StoreError> {
        let Some(marker) = self.marker(message_id)? else {
            return Ok(None);
        };
        let mut runs = Vec::with_capacity(marker.tracked.len());
        for at in marker.tracked {
            if let Some((id, run)) = self.run_at(at, true)? {
                if id == message_id {
                    runs.push(run);
                }
            }
        }
        Ok((!runs.is_empty()).then(|| Track {
            message_id: message_id.to_string(),
            runs,
        }))
    }

    /// Adds the runs of a transaction just applied to the BODID index; writes a block when the
    /// tail is full. Called under the writer lock, so blocks follow the commits they cover. A
    /// block that cannot be written stays in the tail (tried again at the next commit that
    /// tracks a run with a BODID; the groups are the truth, and the next open rebuilds it).
    pub(super) fn index_bod_ids(&self, runs: Vec<(TrackAt, u32)>) {
        if runs.is_empty() {
            return;
        }
        let mut index = super::locked(&self.bod_index);
        index.tail.extend(runs);
        if index.tail.len() >= index.block {
            if let Err(e) = write_blocks(&self.hub, &mut index) {
                tracing::warn!(error = %e, "Cannot write BODID index blocks; they are tried again");
            }
        }
    }

    /// The timelines of the messages that carried `bod_id`, newest first, at most `limit`.
    pub fn tracked_by_bod_id(&self, bod_id: &str, limit: usize) -> Result<Vec<Track>, StoreError> {
        let hash = bod_hash(bod_id);
        // The tail before the blocks: a run that moves into a block meanwhile is seen twice
        // (and counted once), never missed; a commit running meanwhile may list a newer run
        // after older ones. A run is indexed just after its batch is applied: a lookup at that
        // moment finds it by message id only.
        let tail: Vec<TrackAt> = super::locked(&self.bod_index)
            .tail
            .iter()
            .filter(|(_, h)| *h == hash)
            .map(|(at, _)| *at)
            .collect();
        let mut ids: Vec<String> = Vec::new();
        let mut take = |at: TrackAt| -> Result<bool, StoreError> {
            if ids.len() >= limit {
                return Ok(false);
            }
            if let Some((id, run)) = self.run_at(at, false)? {
                if run.bod_id.as_deref() == Some(bod_id) && !ids.contains(&id) {
                    ids.push(id);
                }
            }
            Ok(true)
        };
        let mut more = true;
        for at in tail.into_iter().rev() {
            more = take(at)?;
            if !more {
                break;
            }
        }
        if more {
            'blocks: for item in self.hub.scan_prefix([b'j', bucket(hash)]).rev() {
                let (k, v) = item?;
                let found = block_matches(&k, &v, hash).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "A BODID index block is skipped");
                    Vec::new()
                });
                for at in found.into_iter().rev() {
                    if !take(at)? {
                        break 'blocks;
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.tracked(&id)?);
        }
        Ok(out)
    }

    /// Everything tracked under `id` as a message id and as a BODID: the message first, then
    /// the BODID's messages newest first, at most `limit` in all.
    pub fn lookup_tracked(&self, id: &str, limit: usize) -> Result<Vec<Track>, StoreError> {
        let mut out: Vec<Track> = self.tracked(id)?.into_iter().collect();
        if out.len() >= limit {
            return Ok(out);
        }
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

    /// Removes up to `max_groups` tracking groups, oldest first, as long as their first run
    /// is older than `before`, with their confirms and the BODID index blocks that cover only
    /// them. Call again while it removes `max_groups`.
    pub fn purge_tracked(&self, before: Millis, max_groups: usize) -> Result<Purged, StoreError> {
        let _writer = super::locked(&self.writer);
        // A confirm time must not land in a group's confirms as the group goes.
        let _confirms = super::locked(&self.confirms);
        let mut batch = sled::Batch::default();
        let mut purged = Purged::default();
        let mut last = None;
        for item in self.hub.scan_prefix([b't']).take(max_groups) {
            let (k, v) = item?;
            // An unreadable group goes too (its runs in index blocks, if any, lead nowhere).
            if group_ms(&k, &v).is_ok_and(|ms| ms >= before.0) {
                break;
            }
            let body = group_body(&k, &v);
            let slots = body.as_ref().map(|b| group_slots(&k, b));
            // Its confirms go with it, readable or not (their key is the group's number).
            let number = group_of(&k);
            if let Some(number) = number {
                batch.remove(&group_key(b'k', number));
            }
            if let Ok(Ok(slots)) = slots {
                purged.runs += slots.len();
            }
            last = number.or(last);
            batch.remove(k);
            purged.groups += 1;
        }
        // Index blocks go with the last group they cover.
        if let Some(last) = last {
            for bucket in 0..BUCKETS {
                for item in self.hub.scan_prefix([b'j', bucket]) {
                    let (k, v) = item?;
                    // An unreadable block goes once its first group has.
                    let first = block_first(&k).unwrap_or(0);
                    if block_last(&k, &v).unwrap_or(0) > last || first > last {
                        break;
                    }
                    batch.remove(k);
                }
            }
        }
        self.hub.apply_batch(batch)?;
        Ok(purged)
    }

    /// Bytes of all tracking groups (the runs as stored): for benchmarks and tools.
    pub fn tracked_bytes(&self) -> Result<usize, StoreError> {
        self.hub
            .scan_prefix([b't'])
            .values()
            .try_fold(0, |sum, v| Ok(sum + v?.len()))
    }

    /// Records broker confirms of published outputs and of outputs dead-lettered instead (the
    /// first of each for an output wins);
    /// returns how many outputs were found. Outputs of purged or untracked messages are
    /// skipped. It does not hold up commits: confirm times are written key by key under
    /// their own lock, which the purge also takes (a crash half-way loses some confirm
    /// times, never a run). A confirm that knows its output's place costs no lookup; the
    /// others are found through their message's marker and run.
    pub fn track_confirms(&self, confirms: &[Confirmed<'_>]) -> Result<usize, StoreError> {
        let mut by_message: BTreeMap<&str, Vec<&Confirmed<'_>>> = BTreeMap::new();
        let mut by_group: BTreeMap<u64, Vec<(u16, u16, Millis)>> = BTreeMap::new();
        for c in confirms {
            match c.output {
                Some(OutputAt(group, slot, output)) => {
                    if let Some(output) = record_output(output, c.dead_lettered) {
                        by_group
                            .entry(group)
                            .or_default()
                            .push((slot, output, c.at));
                    }
                }
                None => by_message.entry(c.message_id).or_default().push(c),
            }
        }
        self.transact_loose(move |tx| {
            // Decompressed groups: a publisher round confirms the outputs of a few commits.
            let mut bodies: BTreeMap<u64, Option<Vec<u8>>> = BTreeMap::new();
            for (message_id, mut waiting) in by_message.clone() {
                let Some(marker) = tx.marker(message_id)? else {
                    continue;
                };
                // Outputs are re-emitted only by a new run: look at the newest first.
                for at in marker.tracked.iter().rev() {
                    if waiting.is_empty() {
                        break;
                    }
                    let body = match bodies.entry(at.0) {
                        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::btree_map::Entry::Vacant(e) => {
                            e.insert(tx.group_body(at.0)?)
                        }
                    };
                    let Some(body) = body else {
                        continue;
                    };
                    let k = group_key(b't', at.0);
                    let Some(bytes) = group_slots(&k, body)?.get(usize::from(at.1)).copied() else {
                        continue;
                    };
                    let run = decode_slot(&k, bytes)?.run;
                    waiting.retain(|c| {
                        match run.outputs.iter().position(|o| o.bod_id == c.bod_id) {
                            Some(i) => {
                                let output = u16::try_from(i).unwrap_or(u16::MAX);
                                if let Some(output) = record_output(output, c.dead_lettered) {
                                    by_group.entry(at.0).or_default().push((at.1, output, c.at));
                                }
                                false
                            }
                            None => true,
                        }
                    });
                }
            }
            let mut found = 0;
            for (number, records) in by_group {
                // A purged group's confirms went with it.
                if !tx.raw_contains(&group_key(b't', number))? {
                    continue;
                }
                let k = group_key(b'k', number).to_vec();
                let mut bytes = tx.raw_get(&k)?.map(|v| v.to_vec()).unwrap_or_default();
                let known: Vec<(u16, u16)> =
                    decode_confirms(&bytes).map(|(s, o, _)| (s, o)).collect();
                for (slot, output, at) in records {
                    if known.contains(&(slot, output)) {
                        continue;
                    }
                    bytes.extend_from_slice(&slot.to_be_bytes());
                    bytes.extend_from_slice(&output.to_be_bytes());
                    bytes.extend_from_slice(&at.0.to_be_bytes());
                    found += 1;
                }
                tx.raw_insert(k, bytes);
            }
            Ok(found)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Marker;

    fn run(at: u64, bod_id: &str, outcome: &str) -> Run<'static> {
        Run {
            received_at: Millis(at),
            trigger: Trigger::Received,
            source: "amqp".into(),
            sender: Some("lid://a".into()),
            size: 1234,
            reply_to: None,
            bod_id: Some(bod_id.to_string().into()),
            verb: Some("Sync".into()),
            noun: Some("CustomerPartyMaster".into()),
            stages: vec![StageDecision {
                stage: "country".into(),
                decision: "country DEU→DE (iso3)".into(),
            }],
            outcome: outcome.to_string().into(),
            action: None,
            record: Some("ACC-000001".into()),
            error: None,
            parked: None,
            outputs: vec![TrackedOutput {
                kind: "SyncCustomerPartyMaster".into(),
                to: "lid://b".into(),
                bod_id: format!("out-{at}").into(),
                confirmed_at: None,
                dead_lettered_at: None,
            }],
        }
    }

    /// Tracks runs as the pipeline does: begin, write the marker, add the run.
    fn commit(store: &Store, runs: &[(&str, Run<'_>)]) {
        store
            .transact(|tx| {
                for (message_id, run) in runs {
                    let previous = tx.marker(message_id)?;
                    let runs = previous.as_ref().map(|m| m.tracked.as_slice());
                    tx.begin_run(message_id, runs.unwrap_or_default(), run.received_at.0)?;
                    let marker = previous.unwrap_or(Marker {
                        outcome: run.outcome.to_string(),
                        record: None,
                        bod_id: run.bod_id.as_ref().map(|b| b.to_string()),
                        tracked: Vec::new(),
                        run: 0,
                        parked: Vec::new(),
                        refused: Vec::new(),
                        retry: None,
                        at: None,
                    });
                    tx.put_marker(message_id, &marker)?;
                    let at = tx.track_run(message_id, run)?;
                    assert_eq!(tx.marker(message_id)?.unwrap().tracked.last(), Some(&at));
                }
                Ok(())
            })
            .unwrap();
    }

    fn ids(tracks: Vec<Track>) -> Vec<String> {
        tracks.into_iter().map(|t| t.message_id).collect()
    }

    /// A temporary store whose BODID index blocks take `block` runs.
    fn store_with_blocks(block: usize) -> Store {
        let store = Store::temporary().unwrap();
        super::super::locked(&store.bod_index).block = block;
        store
    }

    /// How many times the index's tail was written as blocks: distinct first groups.
    fn blocks(store: &Store) -> usize {
        let firsts: std::collections::BTreeSet<u64> = store
            .hub
            .scan_prefix([b'j'])
            .keys()
            .map(|k| block_first(&k.unwrap()).unwrap())
            .collect();
        firsts.len()
    }

    #[test]
    fn runs_are_found_by_message_id_and_by_bod_id_newest_first() {
        // All in the tail, all in blocks, and a mix of both.
        for (block, written) in [(INDEX_BLOCK, 0), (1, 3), (2, 2), (3, 1)] {
            let store = store_with_blocks(block);
            commit(
                &store,
                &[
                    ("m1", run(1_000, "B", "applied")),
                    ("m4", run(1_000, "other", "applied")),
                ],
            );
            commit(&store, &[("m3", run(2_000, "B", "applied"))]);
            commit(&store, &[("m2", run(3_000, "B", "applied"))]);
            let t = store.tracked("m1").unwrap().unwrap();
            assert_eq!(t.runs, vec![run(1_000, "B", "applied")]);
            assert_eq!(
                ids(store.tracked_by_bod_id("B", 10).unwrap()),
                ["m2", "m3", "m1"],
                "blocks of {block}"
            );
            assert_eq!(store.tracked_by_bod_id("B", 2).unwrap().len(), 2);
            assert!(store.tracked_by_bod_id("", 10).unwrap().is_empty());
            assert!(store.tracked("nope").unwrap().is_none());
            assert_eq!(ids(store.lookup_tracked("m4", 10).unwrap()), ["m4"]);
            // One group key per transaction; a block when a commit fills the tail.
            assert_eq!(store.hub.scan_prefix([b't']).count(), 3);
            assert_eq!(blocks(&store), written, "blocks of {block}");
        }
    }

    #[test]
    fn the_dead_lettered_time_is_not_part_of_a_stored_run() {
        let mut r = run(1_000, "B", "applied");
        let stored = postcard::to_allocvec(&r).unwrap();
        r.outputs[0].dead_lettered_at = Some(Millis(5));
        assert_eq!(postcard::to_allocvec(&r).unwrap(), stored);
        let read: Run<'static> = postcard::from_bytes(&stored).unwrap();
        assert_eq!(read.outputs[0].dead_lettered_at, None);
        let json = serde_json::to_string(&r).unwrap();
        let back: Run<'static> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.outputs[0].dead_lettered_at, Some(Millis(5)));
        assert_eq!(record_output(3, true), Some(0x8003));
        assert_eq!(record_output(0x8000, false), None);
    }

    #[test]
    fn index_entries_are_short_whatever_the_bod_id() {
        let store = store_with_blocks(1);
        let long = format!(
            "infor-nid:ACME_PRD:3555::{}:?CustomerPartyMaster",
            "X".repeat(200)
        );
        commit(&store, &[("m1", run(1_000, &long, "applied"))]);
        let sizes: Vec<usize> = store
            .hub
            .scan_prefix([b'j'])
            .values()
            .map(|v| v.unwrap().len())
            .collect();
        // Version and last group; the group's number and run count; slot and hash.
        assert_eq!(sizes, [9 + 10 + 6]);
        assert_eq!(ids(store.tracked_by_bod_id(&long, 10).unwrap()), ["m1"]);
        assert!(store.tracked_by_bod_id(&long[1..], 10).unwrap().is_empty());
    }

    #[test]
    fn a_block_reads_back_what_was_written_even_past_65535_runs_of_a_group() {
        let mut entries: Vec<(TrackAt, u32)> = (0..=u16::MAX)
            .map(|slot| (TrackAt(7, slot), u32::from(slot % 3)))
            .collect();
        entries.push((TrackAt(9, 0), 2));
        let blocks = encode_blocks(&entries);
        assert_eq!(blocks.len(), 1, "all in bucket 0");
        let (k, v) = &blocks[0];
        assert_eq!(block_first(k), Some(7));
        assert_eq!(block_last(k, v).unwrap(), 9);
        let found = block_matches(k, v, 2).unwrap();
        assert_eq!(found.len(), 65_536 / 3 + 1);
        assert_eq!(found.first(), Some(&TrackAt(7, 2)));
        assert_eq!(found.last(), Some(&TrackAt(9, 0)));
        assert!(block_matches(k, &v[..v.len() - 1], 2).is_err());
        assert!(block_matches(k, &[2], 2).is_err());
    }

    #[test]
    fn blocks_are_split_by_bucket_and_cover_the_same_groups() {
        let entries = [
            (TrackAt(3, 0), 0xf000_0001),
            (TrackAt(3, 1), 0x1000_0001),
            (TrackAt(4, 0), 0xf000_0002),
            (TrackAt(5, 0), 0xf000_0001),
        ];
        let blocks = encode_blocks(&entries);
        let keys: Vec<(u8, Option<u64>)> =
            blocks.iter().map(|(k, _)| (k[1], block_first(k))).collect();
        assert_eq!(keys, [(1, Some(3)), (15, Some(3))]);
        for (k, v) in &blocks {
            assert_eq!(block_last(k, v).unwrap(), 5);
        }
        let (k, v) = &blocks[1];
        assert_eq!(
            block_matches(k, v, 0xf000_0001).unwrap(),
            [TrackAt(3, 0), TrackAt(5, 0)]
        );
        assert!(block_matches(k, v, 0x1000_0001).unwrap().is_empty());
    }

    #[test]
    fn the_index_tail_is_rebuilt_from_the_groups_when_the_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            super::super::locked(&store.bod_index).block = 2;
            for i in 0..5u64 {
                commit(
                    &store,
                    &[(&format!("m{i}"), run(1_000 + i, "B", "applied"))],
                );
            }
            assert_eq!(blocks(&store), 2);
            // A crash after the groups of the newest blocks, before the blocks.
            let newest = store
                .hub
                .scan_prefix([b'j'])
                .keys()
                .map(|k| block_first(&k.unwrap()).unwrap())
                .max()
                .unwrap();
            for k in store.hub.scan_prefix([b'j']).keys() {
                let k = k.unwrap();
                if block_first(&k) == Some(newest) {
                    store.hub.remove(k).unwrap();
                }
            }
            store.flush().unwrap();
        }
        let store = crate::store::tests::reopen(dir.path());
        assert_eq!(blocks(&store), 1);
        assert_eq!(super::super::locked(&store.bod_index).tail.len(), 3);
        assert_eq!(
            ids(store.tracked_by_bod_id("B", 10).unwrap()),
            ["m4", "m3", "m2", "m1", "m0"]
        );
    }

    #[test]
    fn a_damaged_newest_block_is_removed_and_its_runs_indexed_again_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let other = {
            let store = Store::open(dir.path()).unwrap();
            super::super::locked(&store.bod_index).block = 1;
            commit(&store, &[("m1", run(1_000, "B1", "applied"))]);
            // One write across two buckets.
            let other = (0..)
                .map(|i| format!("C{i}"))
                .find(|c| bucket(bod_hash(c)) != bucket(bod_hash("B2")))
                .unwrap();
            commit(
                &store,
                &[
                    ("m2", run(2_000, "B2", "applied")),
                    ("m3", run(2_000, &other, "applied")),
                ],
            );
            let group = store.marker("m2").unwrap().unwrap().tracked[0].0;
            let newest = block_key(bucket(bod_hash("B2")), group);
            // A header that reads, entries that do not.
            let v = store.hub.get(newest).unwrap().unwrap();
            let damaged = [&v[..9], &[0, 0, 0][..]].concat();
            store.hub.insert(newest, damaged).unwrap();
            store.flush().unwrap();
            other
        };
        let store = crate::store::tests::reopen(dir.path());
        for item in store.hub.scan_prefix([b'j']) {
            let (k, v) = item.unwrap();
            block_matches(&k, &v, 0).unwrap();
        }
        assert_eq!(ids(store.tracked_by_bod_id("B2", 10).unwrap()), ["m2"]);
        assert_eq!(ids(store.tracked_by_bod_id(&other, 10).unwrap()), ["m3"]);
        assert_eq!(ids(store.tracked_by_bod_id("B1", 10).unwrap()), ["m1"]);
    }

    #[test]
    fn a_store_indexed_a_key_per_run_gets_blocks_and_loses_the_keys() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            for i in 0..(INDEX_BLOCK as u64 + 3) {
                let id = format!("m{i}");
                commit(
                    &store,
                    &[(&id, run(1_000 + i, &format!("B{}", i % 2), "applied"))],
                );
            }
            // The store as an earlier version left it: a key per run, no blocks.
            let old = [b'd'; 19];
            store.hub.insert(old, &[] as &[u8]).unwrap();
            for k in store.hub.scan_prefix([b'j']).keys() {
                store.hub.remove(k.unwrap()).unwrap();
            }
            store
                .hub
                .remove(super::super::key(b's', &["meta", BOD_BLOCKS_META]))
                .unwrap();
            store.flush().unwrap();
        }
        let store = crate::store::tests::reopen(dir.path());
        assert_eq!(store.hub.scan_prefix([b'd']).count(), 0);
        assert_eq!(blocks(&store), 1);
        assert_eq!(super::super::locked(&store.bod_index).tail.len(), 3);
        let newest = format!("m{}", INDEX_BLOCK + 2);
        let found = ids(store.tracked_by_bod_id("B0", INDEX_BLOCK).unwrap());
        assert_eq!(found.len(), INDEX_BLOCK / 2 + 2);
        assert_eq!(found[0], newest);
        assert_eq!(found.last().map(String::as_str), Some("m0"));
    }

    #[test]
    fn a_message_that_comes_back_gets_another_run_on_its_timeline() {
        let store = Store::temporary().unwrap();
        commit(&store, &[("m1", run(1_000, "B", "applied"))]);
        commit(
            &store,
            &[
                ("m1", run(5_000, "B", "duplicate")),
                ("m1", run(5_000, "B2", "applied")),
            ],
        );
        let outcomes: Vec<String> = store
            .tracked("m1")
            .unwrap()
            .unwrap()
            .runs
            .into_iter()
            .map(|r| r.outcome.into_owned())
            .collect();
        assert_eq!(outcomes, ["applied", "duplicate", "applied"]);
        assert_eq!(ids(store.tracked_by_bod_id("B", 10).unwrap()), ["m1"]);
        assert_eq!(ids(store.tracked_by_bod_id("B2", 10).unwrap()), ["m1"]);
    }

    #[test]
    fn a_marker_lists_at_most_max_runs_keeping_the_first() {
        let store = Store::temporary().unwrap();
        commit(&store, &[("m1", run(1_000, "B", "applied"))]);
        for i in 0..40 {
            commit(&store, &[("m1", run(2_000 + i, "B", "duplicate"))]);
        }
        assert_eq!(store.marker("m1").unwrap().unwrap().tracked.len(), MAX_RUNS);
        let runs = store.tracked("m1").unwrap().unwrap().runs;
        assert_eq!(runs.len(), MAX_RUNS);
        assert_eq!(runs[0].outcome, "applied");
        assert_eq!(runs[MAX_RUNS - 1].received_at, Millis(2_039));
    }

    #[test]
    fn purge_removes_old_groups_with_their_index_and_confirms_in_chunks() {
        let store = store_with_blocks(21);
        for i in 0..10u64 {
            commit(
                &store,
                &[
                    (format!("old{i}a").as_str(), run(1_000 + i, "B", "applied")),
                    (format!("old{i}b").as_str(), run(1_000 + i, "C", "applied")),
                ],
            );
        }
        commit(&store, &[("young", run(50_000, "B", "applied"))]);
        let confirm = Confirmed::by_marker("old3a", "out-1003", 1_100);
        assert_eq!(store.track_confirms(&[confirm]).unwrap(), 1);
        assert_eq!(
            store.purge_tracked(Millis(50_000), 4).unwrap(),
            Purged { groups: 4, runs: 8 }
        );
        assert_eq!(store.purge_tracked(Millis(50_000), 4).unwrap().groups, 4);
        assert_eq!(store.purge_tracked(Millis(50_000), 4).unwrap().groups, 2);
        assert_eq!(store.purge_tracked(Millis(50_000), 4).unwrap().groups, 0);
        assert!(store.tracked("old3a").unwrap().is_none());
        assert!(store.marker("old3a").unwrap().is_some(), "markers stay");
        assert_eq!(ids(store.tracked_by_bod_id("B", 100).unwrap()), ["young"]);
        // One block of all 21 runs: it covers the young group too, so it stays.
        assert_eq!(blocks(&store), 1);
        assert_eq!(store.hub.scan_prefix([b'k']).count(), 0);
        assert_eq!(store.hub.scan_prefix([b't']).count(), 1);
    }

    #[test]
    fn purge_removes_the_blocks_of_purged_groups_only() {
        let store = store_with_blocks(2);
        for i in 0..3u64 {
            commit(
                &store,
                &[
                    (format!("old{i}").as_str(), run(1_000 + i, "B", "applied")),
                    (format!("old{i}x").as_str(), run(1_000 + i, "C", "applied")),
                ],
            );
        }
        commit(
            &store,
            &[
                ("young", run(50_000, "B", "applied")),
                ("young2", run(50_000, "B", "applied")),
            ],
        );
        assert_eq!(blocks(&store), 4);
        assert_eq!(store.purge_tracked(Millis(50_000), 100).unwrap().groups, 3);
        assert_eq!(blocks(&store), 1);
        assert_eq!(
            ids(store.tracked_by_bod_id("B", 10).unwrap()),
            ["young2", "young"]
        );
    }

    /// One tracked run of `message_id` that pushes an outbox row per BODID in `pushed` and
    /// lists `listed` as its outputs; returns the rows as stored.
    fn commit_with_rows(
        store: &Store,
        message_id: &str,
        at: u64,
        pushed: &[&str],
        listed: &[&str],
    ) -> Vec<crate::store::OutboxRow> {
        store
            .transact(|tx| {
                tx.begin_run(message_id, &[], at)?;
                for bod_id in pushed {
                    tx.push_outbox(&crate::store::OutboxRow::confirm(
                        bod_id, "lid://b", message_id,
                    ))?;
                }
                tx.put_marker(message_id, &Marker::applied())?;
                let mut r = run(at, "B", "applied");
                r.outputs = listed
                    .iter()
                    .map(|b| TrackedOutput {
                        kind: "ConfirmBOD".into(),
                        to: "lid://b".into(),
                        bod_id: b.to_string().into(),
                        confirmed_at: None,
                        dead_lettered_at: None,
                    })
                    .collect();
                tx.track_run(message_id, &r)?;
                Ok(())
            })
            .unwrap();
        let rows: Vec<_> = store.outbox().map(|r| r.unwrap().1).collect();
        store
            .remove_outbox(&store.outbox().map(|r| r.unwrap().0).collect::<Vec<_>>())
            .unwrap();
        rows
    }

    #[test]
    fn outbox_rows_know_their_output_and_confirms_through_it_need_no_marker() {
        let store = Store::temporary().unwrap();
        let rows = commit_with_rows(&store, "m1", 1_000, &["o-1", "o-2"], &["o-1", "o-2"]);
        let places: Vec<_> = rows.iter().map(|r| r.tracked).collect();
        let at = store.marker("m1").unwrap().unwrap().tracked[0];
        assert_eq!(
            places,
            [Some(OutputAt(at.0, at.1, 0)), Some(OutputAt(at.0, at.1, 1))]
        );
        // The message id is not needed (nor read): the place says where the output is.
        let confirm = Confirmed {
            message_id: "not-looked-up",
            bod_id: "o-2",
            at: Millis(1_700),
            output: places[1],
            dead_lettered: false,
        };
        assert_eq!(store.track_confirms(&[confirm]).unwrap(), 1);
        assert_eq!(store.track_confirms(&[confirm]).unwrap(), 0, "first wins");
        // The other output went to bodflow.dead (by place, and once more through the marker).
        let dead = Confirmed {
            bod_id: "o-1",
            at: Millis(1_800),
            output: places[0],
            dead_lettered: true,
            ..confirm
        };
        assert_eq!(store.track_confirms(&[dead]).unwrap(), 1);
        let by_marker = Confirmed {
            dead_lettered: true,
            ..Confirmed::by_marker("m1", "o-1", 1_900)
        };
        assert_eq!(store.track_confirms(&[by_marker]).unwrap(), 0, "first wins");
        let t = store.tracked("m1").unwrap().unwrap();
        let confirmed: Vec<_> = t.runs[0].outputs.iter().map(|o| o.confirmed_at).collect();
        assert_eq!(confirmed, [None, Some(Millis(1_700))]);
        let dead: Vec<_> = t.runs[0]
            .outputs
            .iter()
            .map(|o| o.dead_lettered_at)
            .collect();
        assert_eq!(dead, [Some(Millis(1_800)), None]);
        let json = serde_json::to_value(&t.runs[0].outputs).unwrap();
        assert_eq!(json[0]["dead_lettered_at"], "1970-01-01T00:00:01.800Z");
        assert!(json[1].get("dead_lettered_at").is_none(), "{json}");
        // A place in a purged group notes nothing; a group whose runs cannot be read (of
        // another version, say) goes with its confirms all the same.
        let (k, v) = store.hub.scan_prefix([b't']).next().unwrap().unwrap();
        let mut damaged = v[..9].to_vec();
        damaged.extend_from_slice(b"not lz4");
        store.hub.insert(k, damaged).unwrap();
        assert_eq!(store.hub.scan_prefix([b'k']).count(), 1);
        store.purge_tracked(Millis(5_000), 10).unwrap();
        assert_eq!(store.track_confirms(&[confirm]).unwrap(), 0);
        assert_eq!(store.hub.scan_prefix([b'k']).count(), 0);
    }

    #[test]
    fn rows_that_are_not_the_runs_outputs_get_no_place() {
        let store = Store::temporary().unwrap();
        let rows = commit_with_rows(&store, "m1", 1_000, &["o-1", "o-2"], &["o-2", "o-1"]);
        assert!(rows.iter().all(|r| r.tracked.is_none()));
        // Found through the marker instead.
        let confirm = Confirmed::by_marker("m1", "o-1", 1_200);
        assert_eq!(store.track_confirms(&[confirm]).unwrap(), 1);
        let t = store.tracked("m1").unwrap().unwrap();
        assert_eq!(t.runs[0].outputs[1].confirmed_at, Some(Millis(1_200)));
    }

    #[test]
    fn confirms_fill_in_the_matching_outputs_once() {
        let store = Store::temporary().unwrap();
        commit(&store, &[("m1", run(1_000, "B", "applied"))]);
        commit(&store, &[("m1", run(2_000, "B", "applied"))]);
        let c = |bod_id, at| Confirmed::by_marker("m1", bod_id, at);
        let confirms = [
            c("out-1000", 1_500),
            c("out-2000", 2_500),
            c("not-an-output", 1_500),
            Confirmed::by_marker("gone", "x", 1_500),
        ];
        assert_eq!(store.track_confirms(&confirms).unwrap(), 2);
        let t = store.tracked("m1").unwrap().unwrap();
        assert_eq!(t.runs[0].outputs[0].confirmed_at, Some(Millis(1_500)));
        assert_eq!(t.runs[1].outputs[0].confirmed_at, Some(Millis(2_500)));
        // A second confirm of the same output (a re-publish) keeps the first time.
        assert_eq!(store.track_confirms(&[c("out-1000", 9_000)]).unwrap(), 0);
        let t = store.tracked("m1").unwrap().unwrap();
        assert_eq!(t.runs[0].outputs[0].confirmed_at, Some(Millis(1_500)));
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
        let at = serde_json::to_string(&TrackAt(1, 2)).unwrap();
        assert_eq!(at, "[1,2]");
    }

    #[test]
    fn a_group_of_another_version_or_truncated_is_a_named_error() {
        let k = group_key(b't', 1);
        let body = push_slot(Vec::new(), "m", &run(1, "B", "applied")).unwrap();
        let mut bytes = encode_group(1, &body);
        assert_eq!(group_ms(&k, &bytes).unwrap(), 1);
        let read = group_body(&k, &bytes).unwrap();
        let slots = group_slots(&k, &read).unwrap();
        assert_eq!(decode_slot(&k, slots[0]).unwrap().message_id, "m");
        bytes[0] = 9;
        let e = group_body(&k, &bytes).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
        assert!(group_body(&k, &[]).is_err());
        assert!(group_body(&k, &[VERSION, 0, 0, 0]).is_err());
        let mut garbled = encode_group(1, &body);
        garbled.truncate(garbled.len() / 2);
        assert!(group_body(&k, &garbled).is_err(), "truncated LZ4");
        assert!(group_slots(&k, &[0, 0, 0, 9, 1]).is_err(), "truncated slot");
        assert!(decode_slot(&k, &[0xff, 0xff]).is_err());
    }
}
