//! The embedded hub store: the only code that knows sled.
//!
//! Everything that must change together lives in one sled tree (`hub`) under key prefixes, so
//! one transaction covers a record change, its cross-references and match indexes, the
//! message-id marker and the outbox rows it emits (DESIGN §4):
//!
//! | prefix | key | value |
//! | --- | --- | --- |
//! | `r` | hub ID | [`HubRecord`] |
//! | `x` | kind, application, accounting entity, application ID | hub ID |
//! | `g` | the same as `x`, of a hard-deleted record | [`Tombstone`]: its last variationID |
//! | `h` | big-endian time of the delete, then the `g` key | nothing: tombstones by age ([`Store::purge_tombstones`]) |
//! | `i` | match key, normalised value | hub IDs |
//! | `m` | message id | [`Marker`] |
//! | `o` | big-endian group sequence | the [`OutboxRow`]s one transaction emitted, LZ4-compressed |
//! | `p` | big-endian sequence | [`Parked`] (its payload in `v`) |
//! | `v` | BLAKE3 digest (hex) of a parked document's bytes | the bytes, once however many rows share them ([`Parked::payload_ref`]) |
//! | `f` | that digest, big-endian sequence | nothing: the parked rows that share the `v` value (it goes with the last) |
//! | `n` | kind, match key, normalised value | sequences of `no_match` parked documents carrying it |
//! | `q` | the `x` key a parked document waits to be linked, big-endian sequence | nothing: `no_match` and `ambiguous_match` documents by their key ([`Tx::wake_parked_for`]) |
//! | `u` | message id, a separator, big-endian sequence | nothing: parked documents by message id (the markers they hold, [`Store::parked_marker_keys`]) |
//! | `c` | parent xref key | contact hub IDs waiting for that account |
//! | `e` | account hub ID, contact hub ID | nothing: the account's contacts ([`Tx::contacts_of`]) |
//! | `s` | counter name | big-endian u64 |
//! | `a` | hub ID, big-endian sequence | [`AuditEntry`] of an operator action on the record |
//! | `b` | BODID of a Process bodflow sent | [`Correlation`]: what its Acknowledge answers |
//! | `t`, `k`, `j` | message tracking: runs per commit, their confirms, the BODID index | see [`track`] |
//! | `w` | big-endian number from sled's ID generator | the time and message ids of the markers one transaction wrote: markers by age ([`expire`]) |
//!
//! A transaction ([`Store::transact`]) is a write set applied as one atomic sled batch, with
//! writers serialized: bodflow has one committer, and sled's optimistic transactions cost a
//! third of the commit time for conflicts that cannot happen. Lookups are by key, which
//! is why cross-references are also kept on the record and waiting contacts are a list under
//! their parent's key; the one prefix a transaction walks is an account's contacts (`e`, one
//! key a contact, so linking one writes one key however many the account has).
//!
//! Durability: sled writes go to its log and are flushed by [`Store::flush`] (group commit by
//! the caller) and by sled's background flusher; nothing is durable before a flush.

pub mod expire;
mod filter;
pub mod model;
pub mod track;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::MatchKey;
use filter::MarkerFilter;
pub use model::*;

/// Store failures are transient from a message's point of view: the message is not acked and
/// is retried (DESIGN §4), except `Corrupt`, which needs an operator.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O: {0}")]
    Io(#[from] sled::Error),
    #[error("store value under {key:?} is unreadable: {message}")]
    Corrupt { key: String, message: String },
    /// bodflow failed (panicked) inside a transaction: a bug. Nothing of the transaction was
    /// written; to a message it is a failure like the others (retried, then dead-lettered).
    #[error("bodflow failed inside a store transaction (a bug, please report it): {0}")]
    Internal(String),
    /// Another process (usually the running service) holds the store's lock.
    #[error("the store is in use by another process ({0})")]
    Locked(String),
}

impl StoreError {
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Io(_) => "store_io",
            StoreError::Corrupt { .. } => "store_corrupt",
            StoreError::Locked(_) => "store_locked",
            StoreError::Internal(_) => "internal_error",
        }
    }

    /// The store is held by another process (sled allows one per store: a running service).
    pub fn is_locked(&self) -> bool {
        matches!(self, StoreError::Locked(_))
    }
}

/// Result inside a transaction.
pub type TxResult<T> = Result<T, StoreError>;

const SEP: u8 = 0x1f;

fn key(prefix: u8, parts: &[&str]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len() + 1).sum::<usize>());
    k.push(prefix);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(SEP);
        }
        k.extend_from_slice(p.as_bytes());
    }
    k
}

fn xref_key(x: &XrefKey) -> Vec<u8> {
    key(
        b'x',
        &[x.kind.prefix(), &x.application, &x.accounting_entity, &x.id],
    )
}

fn tombstone_key(x: &XrefKey) -> Vec<u8> {
    let mut k = xref_key(x);
    k[0] = b'g';
    k
}

/// A tombstone's place among the tombstones by age: `h`, the time of the delete, its `g` key.
fn tombstone_age_key(deleted_at: u64, gone: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + gone.len());
    k.push(b'h');
    k.extend_from_slice(&deleted_at.to_be_bytes());
    k.extend_from_slice(gone);
    k
}

fn seq_key(prefix: u8, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(prefix);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Hands the calling thread's deferred frees to sled's memory reclamation, and reclaims what
/// no reader can still see. Called at the end of the writes the service makes all the time:
/// transactions, flushes and the publisher's rounds (the retention purge and index rebuilds
/// are rare and leave it to sled).
///
/// sled 0.34 never frees a replaced tree node or a written log buffer (512 KiB) at once: it
/// defers the free through crossbeam-epoch, into a bag local to the thread that replaced it.
/// A bag is handed over for reclamation only when it holds 64 frees, and reclamation runs
/// every 128 pins of a thread, 8 bags at a time. The service writes from a few threads (the
/// committer, the acker's flush, the publisher) on tokio's blocking pool, so bags sat
/// half-full on threads that did little else, holding old nodes and buffers: with a
/// 200,000-document backlog, peak RSS is ~5 MB lower with this call (benches/README.md).
///
/// `crossbeam_epoch::pin` reaches sled's collector only while both use the same
/// crossbeam-epoch: `one_crossbeam_epoch_in_the_lock_file` checks that.
fn release_deferred() {
    crossbeam_epoch::pin().flush();
}

/// Locks `m`, taking it over when a panic poisoned it: the writer and confirm locks guard no
/// data (they order writers), and a panic half-way through the in-memory outbox leaves at
/// worst some rows of a group cleared, which is what a finished removal does too.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain structs to JSON cannot fail (no maps with non-string keys).
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(k: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        message: e.to_string(),
    })
}

/// Outbox rows: the metadata as one JSON line, then the document's bytes as they are (JSON
/// would escape every quote of the XML, and rows are the largest values written).
fn encode_outbox(row: &OutboxRow, tracked: Option<track::OutputAt>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Head<'a> {
        kind: &'a str,
        to: &'a str,
        reply_to: &'a Option<String>,
        bod_id: &'a str,
        correlation_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reply_correlation_id: &'a Option<String>,
        document_name: &'a str,
        tenant: &'a Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        traceparent: &'a Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tracestate: &'a Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tracked: Option<track::OutputAt>,
        #[serde(skip_serializing_if = "Option::is_none")]
        variation: &'a Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        dead: Option<DeadHead<'a>>,
    }
    /// A dead-letter row: the body is the delivery's properties (`properties` bytes), then
    /// its payload.
    #[derive(Serialize)]
    struct DeadHead<'a> {
        routing_key: &'a str,
        stage: &'a str,
        code: &'a str,
        reason: &'a str,
        path: &'a Option<String>,
        properties: usize,
    }
    let dead = row.dead_letter.as_deref();
    let body: [&[u8]; 2] = match dead {
        Some(d) => [&d.delivered.properties, &d.delivered.payload],
        None => [row.xml.as_bytes(), &[]],
    };
    // Head and document in one allocation (the document is most of the row).
    let mut out = Vec::with_capacity(256 + body[0].len() + body[1].len());
    // Serializing plain strings into a Vec cannot fail.
    let _ = serde_json::to_writer(
        &mut out,
        &Head {
            kind: &row.kind,
            to: &row.to,
            reply_to: &row.reply_to,
            bod_id: &row.bod_id,
            correlation_id: &row.correlation_id,
            reply_correlation_id: &row.reply_correlation_id,
            document_name: &row.document_name,
            tenant: &row.tenant,
            traceparent: &row.traceparent,
            tracestate: &row.tracestate,
            tracked,
            variation: &row.variation,
            dead: dead.map(|d| DeadHead {
                routing_key: &d.delivered.routing_key,
                stage: &d.stage,
                code: &d.code,
                reason: &d.reason,
                path: &d.path,
                properties: d.delivered.properties.len(),
            }),
        },
    );
    out.push(b'\n');
    for part in body {
        out.extend_from_slice(part);
    }
    out
}

fn decode_outbox(k: &[u8], bytes: &[u8]) -> Result<OutboxRow, StoreError> {
    #[derive(serde::Deserialize)]
    struct Head {
        kind: String,
        to: String,
        reply_to: Option<String>,
        bod_id: String,
        correlation_id: String,
        #[serde(default)]
        reply_correlation_id: Option<String>,
        document_name: String,
        tenant: Option<String>,
        #[serde(default)]
        traceparent: Option<String>,
        #[serde(default)]
        tracestate: Option<String>,
        #[serde(default)]
        tracked: Option<track::OutputAt>,
        #[serde(default)]
        variation: Option<String>,
        #[serde(default)]
        dead: Option<DeadHead>,
    }
    #[derive(serde::Deserialize)]
    struct DeadHead {
        routing_key: String,
        stage: String,
        code: String,
        reason: String,
        path: Option<String>,
        properties: usize,
    }
    let corrupt = |message: String| StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        message,
    };
    let split = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("outbox row without header".into()))?;
    let head: Head = decode(k, &bytes[..split])?;
    let body = &bytes[split + 1..];
    let (xml, dead_letter) = match head.dead {
        Some(d) => {
            let (properties, payload) = body
                .split_at_checked(d.properties)
                .ok_or_else(|| corrupt("dead-letter row shorter than its properties".into()))?;
            let delivered = Delivered {
                routing_key: d.routing_key,
                properties: properties.to_vec(),
                payload: payload.to_vec(),
            };
            let row = DeadLetterRow {
                delivered,
                stage: d.stage,
                code: d.code,
                reason: d.reason,
                path: d.path,
            };
            (String::new(), Some(Box::new(row)))
        }
        None => {
            let xml = std::str::from_utf8(body).map_err(|e| corrupt(e.to_string()))?;
            (xml.to_string(), None)
        }
    };
    Ok(OutboxRow {
        kind: head.kind,
        to: head.to,
        reply_to: head.reply_to,
        bod_id: head.bod_id,
        correlation_id: head.correlation_id,
        reply_correlation_id: head.reply_correlation_id,
        document_name: head.document_name,
        tenant: head.tenant,
        traceparent: head.traceparent,
        tracestate: head.tracestate,
        tracked: head.tracked,
        variation: head.variation,
        xml,
        dead_letter,
    })
}

/// Rows per outbox group; a row's sequence is `group << ROW_BITS | index`.
const ROW_BITS: u32 = 16;

/// A transaction starts a new outbox group once its current one holds this many bytes. sled
/// writes a page over 128 KiB (a quarter of its 512 KiB segment) as a separate blob file,
/// created, read back and deleted for every group: whole transactions' worth of documents
/// in one value made the outbox the costliest (and largest) thing in the store.
const GROUP_BYTES: usize = 24 * 1024;

/// An outbox group: each row as a length-prefixed encoded row; a published row becomes an
/// empty slot so the others keep their index, and the group goes when every slot is empty.
/// One key per transaction instead of one per row: the outbox is the hottest write path.
///
/// Stored LZ4-compressed (a size-prepended block, as tracking groups are): the Syncs one
/// change sends to several receivers repeat most of their bytes, and sled rewrites a leaf with
/// all its values every time the leaf changes, so every byte stored costs several times over.
fn encode_group(rows: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.iter().map(|r| r.len() + 4).sum());
    for r in rows {
        out.extend_from_slice(&(r.len() as u32).to_be_bytes());
        out.extend_from_slice(r);
    }
    lz4_flex::block::compress_prepend_size(&out)
}

fn decode_group(k: &[u8], bytes: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        message,
    };
    let bytes = lz4_flex::block::decompress_size_prepended(bytes)
        .map_err(|e| corrupt(format!("outbox group: {e}")))?;
    let mut rows = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let len = bytes
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| corrupt("truncated outbox group".into()))? as usize;
        let row = bytes
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| corrupt("truncated outbox row".into()))?;
        rows.push(row.to_vec());
        at += 4 + len;
    }
    Ok(rows)
}

/// Normalises a match value: trimmed, case-folded (e-mail addresses and account numbers are
/// compared case-insensitively).
pub fn normalize_match(value: &str) -> String {
    value.trim().to_lowercase()
}

fn match_tag(k: MatchKey) -> &'static str {
    match k {
        MatchKey::AccountNumber => "account_number",
        MatchKey::ExternalNumber => "external_number",
        MatchKey::Email => "email",
    }
}

/// sled's page cache for the service and the operator commands, unless `hub.store_cache_mb`
/// sets one. Bounded so the service stays within its memory budget (≤ 64 MB with a backlog of
/// 200,000): sled's resident memory grows by more than the cache itself. A larger cache
/// halves the service's reads of the log at 16 MiB (50,000 waiting documents), but the
/// records, markers and cross-references it touches are spread over the whole store, so time
/// and CPU gained only 5–7 % on average, inside this machine's noise (`benches/README.md`).
const CACHE_BYTES: u64 = 4 * 1024 * 1024;

/// sled's page cache for `bodflow replay`, which writes a whole store in one go. With 4 MiB,
/// a 50,000-document replay (a 155 MB store) keeps evicting the leaves it is about to change
/// and reading them back from the log; with 32 MiB it needs about 15 % less CPU and runs about
/// a third faster, for a peak RSS of 80–87 MB instead of 55 MB (the budget is 100 MB; 16 MiB
/// gave 64 MB and about half the gain).
pub const REPLAY_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// The open store. Open once per process (sled holds a file lock).
pub struct Store {
    db: sled::Db,
    hub: sled::Tree,
    seqs: Sequences,
    /// One writer at a time (see [`Store::transact`]). A std mutex: it is held only for a
    /// group's synchronous work, never across an await.
    writer: Mutex<()>,
    /// Held by [`Store::transact_loose`] callers that must not interleave (tracking's
    /// confirm times against its purge), without holding up the writer.
    confirms: Mutex<()>,
    /// Outbox groups kept in memory instead of sled ([`Store::keep_outbox_in_memory`]).
    memory_outbox: Option<Mutex<BTreeMap<u64, Vec<Vec<u8>>>>>,
    /// sled's page cache, as opened.
    cache_bytes: u64,
    /// Which message ids certainly have no marker ([`filter`]).
    markers: Arc<MarkerFilter>,
    /// The scan that adds the markers present at open to `markers`; stopped and joined when
    /// the store is dropped (it holds the tree).
    marker_scan: Option<std::thread::JoinHandle<()>>,
    /// The BODID index's runs not yet in a block ([`track`]).
    bod_index: Mutex<track::BodIndex>,
}

impl Drop for Store {
    fn drop(&mut self) {
        self.markers.stop();
        if let Some(scan) = self.marker_scan.take() {
            let _ = scan.join();
        }
    }
}

/// Adds the markers in `hub` to `filter`, then marks it complete; stops early (leaving it
/// incomplete: every lookup goes to sled) when asked to or when sled fails.
fn scan_markers(hub: &sled::Tree, filter: &MarkerFilter) {
    for item in hub.scan_prefix([b'm']) {
        if filter.stopped() {
            return;
        }
        match item {
            Ok((k, _)) => filter.insert(&k),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read the message-id markers; duplicate checks read the store");
                return;
            }
        }
    }
    filter.set_complete();
    tracing::debug!(bytes = filter.bytes(), "Message-id marker filter ready");
}

/// A one-off pass over the values under `prefix`, for a store written before meta entry
/// `meta` existed: `each` adds what a value needs to the batch and says whether it needed
/// anything. Applied in batches; the writes must be idempotent, since the meta entry goes
/// last and an interrupted pass starts again. Returns how many values needed writes.
fn migrate_once(
    hub: &sled::Tree,
    meta: &str,
    prefix: &[u8],
    mut each: impl FnMut(&[u8], &[u8], &mut sled::Batch) -> bool,
) -> Result<usize, StoreError> {
    const BATCH: usize = 4_096;
    let done = key(b's', &["meta", meta]);
    if hub.contains_key(&done)? {
        return Ok(0);
    }
    let mut batch = sled::Batch::default();
    let (mut changed, mut pending) = (0usize, 0usize);
    for item in hub.scan_prefix(prefix) {
        let (k, v) = item?;
        if each(&k, &v, &mut batch) {
            changed += 1;
            pending += 1;
            if pending == BATCH {
                hub.apply_batch(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
    }
    batch.insert(done, encode(&"1"));
    hub.apply_batch(batch)?;
    Ok(changed)
}

/// Store meta entry set once the account→contacts index (`e`) is complete.
const CONTACT_INDEX_META: &str = "index.contacts";

/// Builds the account→contacts index (`e`) of a store written before it existed, once, at
/// its first open ([`migrate_once`]). Every transaction since keeps it. A contact that
/// cannot be read is left out with a warning: the store must still open for an operator to
/// look at it.
fn index_contacts(hub: &sled::Tree) -> Result<(), StoreError> {
    let prefix = key(b'r', &[&format!("{}-", Kind::Contact.prefix())]);
    let contacts = migrate_once(
        hub,
        CONTACT_INDEX_META,
        &prefix,
        |k, v, batch| match decode::<HubRecord>(k, v) {
            Ok(HubRecord {
                id,
                account: Some(account),
                ..
            }) => {
                batch.insert(employee_key(&account, &id), &[] as &[u8]);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(error = %e, "A contact left out of the account index");
                false
            }
        },
    )?;
    if contacts > 0 {
        tracing::info!(
            contacts,
            "Indexed the contacts of every account (once, for hard deletes)"
        );
    }
    Ok(())
}

/// Store meta entry set once every tombstone has a time ([`Tombstone::deleted_at`]).
const TOMBSTONE_DATES_META: &str = "index.tombstones";

/// Gives the tombstones of a store written before they expired the time of this first open,
/// so that they expire `hub.tombstone_retention` from now, and lists them by age; once
/// ([`migrate_once`]).
fn date_tombstones(hub: &sled::Tree) -> Result<(), StoreError> {
    let now = track::Millis::now().0;
    let dated = migrate_once(
        hub,
        TOMBSTONE_DATES_META,
        b"g",
        |k, v, batch| match decode::<Tombstone>(k, v) {
            Ok(mut tombstone) if tombstone.deleted_at.is_none() => {
                tombstone.deleted_at = Some(now);
                batch.insert(tombstone_age_key(now, k), &[] as &[u8]);
                batch.insert(k, encode(&tombstone));
                true
            }
            _ => false,
        },
    )?;
    if dated > 0 {
        tracing::info!(dated, "Dated the tombstones of hard deletes (once): they expire after hub.tombstone_retention from now");
    }
    Ok(())
}

/// Store meta entry set once the parked documents' key index (`q`) is complete.
const PARKED_KEYS_META: &str = "index.parked_keys";

/// Lists the waiting parked documents of a store written before `q` existed by their key,
/// once ([`migrate_once`]).
fn index_parked_keys(hub: &sled::Tree) -> Result<(), StoreError> {
    let indexed = migrate_once(hub, PARKED_KEYS_META, b"p", |k, v, batch| {
        match decode::<Parked>(k, v) {
            Ok(parked) => match parked_key_key(&parked) {
                Some(q) => {
                    batch.insert(q, &[] as &[u8]);
                    true
                }
                None => false,
            },
            Err(e) => {
                tracing::warn!(error = %e, "A parked row left out of the key index");
                false
            }
        }
    })?;
    if indexed > 0 {
        tracing::info!(
            indexed,
            "Indexed the parked documents waiting for their key (once)"
        );
    }
    Ok(())
}

/// Store meta entry set once every parked document has its `u` entry.
const PARKED_IDS_META: &str = "index.parked_ids";

/// Lists the parked documents of a store written before `u` existed by their message id,
/// once ([`migrate_once`]).
fn index_parked_ids(hub: &sled::Tree) -> Result<(), StoreError> {
    /// Only what the entry needs: a row the current model could not read in full keeps its
    /// marker as long as before.
    #[derive(serde::Deserialize)]
    struct Ids {
        message_id: String,
    }
    let indexed = migrate_once(hub, PARKED_IDS_META, b"p", |k, v, batch| {
        let seq = k
            .get(1..9)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes);
        match (decode::<Ids>(k, v), seq) {
            (Ok(ids), Some(seq)) => {
                batch.insert(parked_id_key(&ids.message_id, seq), &[] as &[u8]);
                true
            }
            (_, None) => false,
            (Err(e), _) => {
                tracing::warn!(error = %e, "A parked row left out of the message-id index");
                false
            }
        }
    })?;
    if indexed > 0 {
        tracing::info!(indexed, "Indexed the parked documents by message id (once)");
    }
    Ok(())
}

/// The `u` entry of a parked document: its message id, [`SEP`], its sequence (the last nine
/// bytes are always those two, whatever bytes the message id holds).
fn parked_id_key(message_id: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + message_id.len());
    k.push(b'u');
    k.extend_from_slice(message_id.as_bytes());
    k.push(SEP);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Where the bytes with this digest are kept (`v`).
fn payload_key(digest: &str) -> Vec<u8> {
    key(b'v', &[digest])
}

/// `f`, the digest, a separator: where the rows sharing those bytes are listed.
fn payload_refs_prefix(digest: &str) -> Vec<u8> {
    let mut k = key(b'f', &[digest]);
    k.push(SEP);
    k
}

/// A parked row's payload as read, or the error that names the row whose payload is gone.
fn payload_or_missing(row: &[u8], bytes: Option<sled::IVec>) -> Result<Vec<u8>, StoreError> {
    bytes
        .map(|b| b.to_vec())
        .ok_or_else(|| missing_payload(row))
}

fn missing_payload(row: &[u8]) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(row).into_owned(),
        message: "its payload is missing".into(),
    }
}

/// The message id of a `u` entry.
fn parked_id_of(k: &[u8]) -> Option<&[u8]> {
    k.get(1..k.len().checked_sub(9)?)
}

/// The `q` entry of a parked document that waits for its key to be linked (`no_match`,
/// `ambiguous_match`, with an ID); `None` for the others.
fn parked_key_key(parked: &Parked) -> Option<Vec<u8>> {
    let key = parked.key.as_ref().filter(|k| !k.id.is_empty())?;
    if !matches!(
        parked.reason,
        ParkReason::NoMatch | ParkReason::AmbiguousMatch
    ) {
        return None;
    }
    let mut k = parked_key_prefix(key);
    k.extend_from_slice(&parked.seq.to_be_bytes());
    Some(k)
}

/// `q`, the `x` key, a separator: where the parked documents waiting for `key` are listed.
fn parked_key_prefix(key: &XrefKey) -> Vec<u8> {
    let mut k = xref_key(key);
    k[0] = b'q';
    k.push(SEP);
    k
}

fn employee_key(account: &str, contact: &str) -> Vec<u8> {
    key(b'e', &[account, contact])
}

/// An outbox group: its sequence and its encoded rows (an empty row has been published).
type OutboxGroup = (u64, Vec<Vec<u8>>);

/// Sequence numbers of outbox and parked rows, kept in memory rather than in a counter key so
/// that a transaction does not read-modify-write a hot key for every row. Seeded past the
/// highest stored key at open; the process holds sled's lock, so nobody else writes. Gaps
/// (a failed transaction, a crash) are harmless: rows are ordered, not counted.
struct Sequences {
    outbox: AtomicU64,
    parked: AtomicU64,
    /// Outbox groups below this number are applied: set at the end of every transaction,
    /// under the writer lock, to the next group number then.
    applied_outbox: AtomicU64,
    /// Outbox groups below this number are durable (everything on disk at open is).
    durable_outbox: AtomicU64,
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with_cache(path, CACHE_BYTES)
    }

    /// [`Store::open`] with the page cache `hub.store_cache_mb` sets, if it does: how the
    /// service and the operator commands open the configured store.
    pub fn open_configured(path: &Path, hub: &crate::config::Hub) -> Result<Store, StoreError> {
        Store::open_with_cache(path, hub.store_cache_bytes(CACHE_BYTES))
    }

    /// [`Store::open`] with a page cache of `cache_bytes` (see [`REPLAY_CACHE_BYTES`]).
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| match e {
                // sled reports its file lock held elsewhere only as this I/O error text.
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    StoreError::Locked(io.to_string())
                }
                e => StoreError::Io(e),
            })?;
        Store::from_db(db, cache_bytes)
    }

    /// A store in a temporary folder, removed when dropped.
    pub fn temporary() -> Result<Store, StoreError> {
        Store::temporary_with_cache(CACHE_BYTES)
    }

    /// [`Store::temporary`] with a page cache of `cache_bytes`.
    pub fn temporary_with_cache(cache_bytes: u64) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        Store::from_db(db, cache_bytes)
    }

    fn from_db(db: sled::Db, cache_bytes: u64) -> Result<Store, StoreError> {
        let hub = db.open_tree("hub")?;
        let next_after = |prefix: u8| -> Result<u64, StoreError> {
            Ok(match hub.scan_prefix([prefix]).next_back() {
                Some(item) => seq_of(&item?.0) + 1,
                None => 1,
            })
        };
        let outbox = next_after(b'o')?;
        let seqs = Sequences {
            outbox: AtomicU64::new(outbox),
            parked: AtomicU64::new(next_after(b'p')?),
            applied_outbox: AtomicU64::new(outbox),
            durable_outbox: AtomicU64::new(outbox),
        };
        index_contacts(&hub)?;
        date_tombstones(&hub)?;
        index_parked_keys(&hub)?;
        index_parked_ids(&hub)?;
        expire::list_old_markers(&db, &hub, track::Millis::now())?;
        let bod_index = Mutex::new(track::load_bod_index(&hub, track::INDEX_BLOCK)?);
        let markers = Arc::new(MarkerFilter::new());
        let marker_scan = {
            let (hub, markers) = (hub.clone(), markers.clone());
            std::thread::Builder::new()
                .name("bodflow-markers".into())
                .spawn(move || scan_markers(&hub, &markers))
                .map_err(|e| tracing::warn!(error = %e, "Cannot start the marker scan; duplicate checks read the store"))
                .ok()
        };
        Ok(Store {
            db,
            hub,
            seqs,
            writer: Mutex::new(()),
            confirms: Mutex::new(()),
            memory_outbox: None,
            cache_bytes,
            markers,
            marker_scan,
            bod_index,
        })
    }

    /// sled's page cache the store was opened with, in bytes.
    pub fn cache_bytes(&self) -> u64 {
        self.cache_bytes
    }

    /// Keeps the outbox rows of later transactions in memory instead of writing them to sled.
    /// For `replay`, which drains every row into files right after its commit and has no
    /// publisher: the rows never need to survive the process, and writing them (several KB a
    /// document) and removing them again is most of the store's write volume.
    pub fn keep_outbox_in_memory(&mut self) {
        self.memory_outbox = Some(Mutex::new(BTreeMap::new()));
    }

    fn memory_outbox(&self) -> Option<MutexGuard<'_, BTreeMap<u64, Vec<Vec<u8>>>>> {
        self.memory_outbox.as_ref().map(locked)
    }

    /// Runs `f` atomically: its writes collect in a write set (its own reads see them) and
    /// are applied as one sled batch when it returns `Ok`, or dropped when it returns `Err`.
    /// Writers are serialized by a lock, so `f` never sees another writer's half-done work
    /// and never needs re-running; readers outside see all of a batch or none of it.
    pub fn transact<T>(&self, f: impl FnOnce(&Tx<'_>) -> TxResult<T>) -> Result<T, StoreError> {
        let writer = locked(&self.writer);
        let tx = self.new_tx();
        // A panic in `f` drops the write set like an error: nothing is applied, and the
        // caller sees a failure instead of an unwinding that would end the service's session
        // (and every later one, for the redelivered document). Sequence numbers it took are
        // gaps; markers it looked up enter the filter only when applied.
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&tx)))
            .map_err(|panic| StoreError::Internal(crate::panic_message(&*panic)))??;
        tx.write_records()?;
        tx.write_outbox_group()?;
        tx.write_tracking_group()?;
        tx.write_marker_list()?;
        tx.note_markers();
        let indexed = tx.indexed.take();
        let mut batch = sled::Batch::default();
        for (k, v) in tx.writes.into_inner() {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.hub.apply_batch(batch)?;
        // Group numbers are only taken under the writer lock, which is still held: every
        // group numbered below the next one is applied (or belongs to a failed transaction
        // and does not exist).
        self.seqs
            .applied_outbox
            .store(self.seqs.outbox.load(Ordering::Relaxed), Ordering::Release);
        if let (Some(groups), Some(mut memory)) = (tx.detached, self.memory_outbox()) {
            memory.extend(groups.into_inner());
        }
        // Under the writer lock: blocks are written in commit order.
        self.index_bod_ids(indexed);
        // Outside the lock: reclaiming may free hundreds of nodes.
        drop(writer);
        release_deferred();
        Ok(out)
    }

    /// Runs `f` with a [`Tx`] whose writes are applied key by key when it returns `Ok`, not
    /// as one atomic batch, and without the writer lock (it holds [`Store::confirms`]
    /// instead): for small writes that need neither, so they never hold up a commit. `f`
    /// must not write outbox rows, tracking runs or markers.
    fn transact_loose<T>(&self, f: impl FnOnce(&Tx<'_>) -> TxResult<T>) -> Result<T, StoreError> {
        let _confirms = locked(&self.confirms);
        let tx = self.new_tx();
        let out = f(&tx)?;
        tx.write_records()?;
        debug_assert!(tx.outbox.borrow().is_none() && tx.tracking.borrow().is_none());
        // Markers are written only under the writer lock, with their list ([`expire`]).
        debug_assert!(tx
            .writes
            .borrow()
            .range(vec![b'm']..vec![b'm' + 1])
            .next()
            .is_none());
        for (k, v) in tx.writes.into_inner() {
            match v {
                Some(v) => self.hub.insert(k, v)?,
                None => self.hub.remove(k)?,
            };
        }
        release_deferred();
        Ok(out)
    }

    fn new_tx(&self) -> Tx<'_> {
        let wall = track::Millis::now();
        Tx {
            tree: &self.hub,
            writes: RefCell::new(BTreeMap::new()),
            records: RefCell::new(HashMap::new()),
            seqs: &self.seqs,
            outbox: RefCell::new(None),
            detached: self
                .memory_outbox
                .as_ref()
                .map(|_| RefCell::new(Vec::new())),
            woken: RefCell::new(Vec::new()),
            db: &self.db,
            markers: &self.markers,
            tracking: RefCell::new(None),
            tracked_runs: RefCell::new(None),
            run_outputs: RefCell::new(Vec::new()),
            indexed: RefCell::new(Vec::new()),
            wall,
            now: Cell::new(wall),
            latest: Cell::new(track::Millis(0)),
        }
    }

    /// Makes everything applied before it began durable; returns the bytes flushed.
    /// Afterwards the outbox groups of those transactions are durable, and
    /// [`Store::durable_outbox`] yields them.
    ///
    /// It does not wait for the writer: a transaction still running is not covered (sled's
    /// flush covers what was applied before it began), so the flush that follows a commit
    /// overlaps the next transaction's reads instead of waiting for its end.
    pub fn flush(&self) -> Result<usize, StoreError> {
        let covered = self.seqs.applied_outbox.load(Ordering::Acquire);
        let bytes = self.db.flush()?;
        release_deferred();
        self.seqs
            .durable_outbox
            .fetch_max(covered, Ordering::Relaxed);
        Ok(bytes)
    }

    /// Outbox rows whose transaction is durable (flushed), in order: what may be published.
    /// A row of a commit not yet flushed could describe a change a crash would undo.
    pub fn durable_outbox(
        &self,
    ) -> impl Iterator<Item = Result<(u64, OutboxRow), StoreError>> + '_ {
        self.durable_outbox_from(0)
    }

    /// [`Store::durable_outbox`] from row sequence `from` on: a publisher that remembers
    /// what it has taken reads only the rows after it.
    pub fn durable_outbox_from(
        &self,
        from: u64,
    ) -> impl Iterator<Item = Result<(u64, OutboxRow), StoreError>> + '_ {
        let durable = self.seqs.durable_outbox.load(Ordering::Relaxed);
        self.outbox_from(from).take_while(move |r| {
            r.as_ref()
                .map_or(true, |(seq, _)| seq >> ROW_BITS < durable)
        })
    }

    /// On-disk size in bytes.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    fn scan<T: DeserializeOwned>(
        &self,
        prefix: u8,
    ) -> impl Iterator<Item = Result<(Vec<u8>, T), StoreError>> + '_ {
        self.hub.scan_prefix([prefix]).map(|item| {
            let (k, v) = item?;
            let value = decode(&k, &v)?;
            Ok((k.to_vec(), value))
        })
    }

    /// All hub records in hub-ID order (accounts, then contacts).
    pub fn records(&self) -> impl Iterator<Item = Result<HubRecord, StoreError>> + '_ {
        self.scan::<HubRecord>(b'r').map(|r| r.map(|(_, v)| v))
    }

    pub fn record(&self, id: &str) -> Result<Option<HubRecord>, StoreError> {
        let k = key(b'r', &[id]);
        self.hub.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// The hub ID an application's key points at.
    pub fn resolve(&self, x: &XrefKey) -> Result<Option<String>, StoreError> {
        let k = xref_key(x);
        self.hub.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    pub fn marker(&self, message_id: &str) -> Result<Option<Marker>, StoreError> {
        let k = key(b'm', &[message_id]);
        if !self.markers.may_contain(&k) {
            return Ok(None);
        }
        self.hub.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// Pending outbox rows in the order they were written.
    pub fn outbox(&self) -> impl Iterator<Item = Result<(u64, OutboxRow), StoreError>> + '_ {
        self.outbox_from(0)
    }

    /// Pending outbox rows with a sequence of at least `from`, in order.
    pub fn outbox_from(
        &self,
        from: u64,
    ) -> impl Iterator<Item = Result<(u64, OutboxRow), StoreError>> + '_ {
        let start = seq_key(b'o', from >> ROW_BITS);
        let first_row = from & ((1 << ROW_BITS) - 1);
        let first_group = from >> ROW_BITS;
        let in_memory: Vec<Result<(u64, OutboxRow), StoreError>> = self
            .memory_outbox()
            .map(|memory| {
                memory
                    .range(first_group..)
                    .flat_map(|(group, rows)| {
                        let k = seq_key(b'o', *group);
                        let skip = if *group == first_group { first_row } else { 0 };
                        rows.iter()
                            .enumerate()
                            .skip(skip as usize)
                            .filter(|(_, r)| !r.is_empty())
                            .map(move |(i, r)| {
                                Ok(((group << ROW_BITS) | i as u64, decode_outbox(&k, r)?))
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let stored = self.hub.range(start..vec![b'o' + 1]).flat_map(move |item| {
            let rows: Vec<Result<(u64, OutboxRow), StoreError>> = match item {
                Err(e) => vec![Err(e.into())],
                Ok((k, v)) => match decode_group(&k, &v) {
                    Err(e) => vec![Err(e)],
                    Ok(rows) => {
                        let group = seq_of(&k);
                        let skip = if group == first_group { first_row } else { 0 };
                        rows.iter()
                            .enumerate()
                            .skip(skip as usize)
                            .filter(|(_, r)| !r.is_empty())
                            .map(|(i, r)| {
                                Ok(((group << ROW_BITS) | i as u64, decode_outbox(&k, r)?))
                            })
                            .collect()
                    }
                },
            };
            rows
        });
        stored.chain(in_memory)
    }

    pub fn outbox_row(&self, seq: u64) -> Result<Option<OutboxRow>, StoreError> {
        let k = seq_key(b'o', seq >> ROW_BITS);
        if let Some(memory) = self.memory_outbox() {
            let row = memory
                .get(&(seq >> ROW_BITS))
                .and_then(|rows| rows.get((seq & ((1 << ROW_BITS) - 1)) as usize))
                .filter(|r| !r.is_empty());
            return row.map(|r| decode_outbox(&k, r)).transpose();
        }
        let Some(v) = self.hub.get(&k)? else {
            return Ok(None);
        };
        let rows = decode_group(&k, &v)?;
        match rows.get((seq & ((1 << ROW_BITS) - 1)) as usize) {
            Some(r) if !r.is_empty() => decode_outbox(&k, r).map(Some),
            _ => Ok(None),
        }
    }

    /// Removes published rows (after their confirm); a group goes with its last row.
    pub fn remove_outbox(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let mut by_group: std::collections::BTreeMap<u64, Vec<usize>> = Default::default();
        for &s in seqs {
            by_group
                .entry(s >> ROW_BITS)
                .or_default()
                .push((s & ((1 << ROW_BITS) - 1)) as usize);
        }
        if let Some(mut memory) = self.memory_outbox() {
            for (group, rows) in by_group {
                if let Some(slots) = memory.get_mut(&group) {
                    for i in rows {
                        if let Some(slot) = slots.get_mut(i) {
                            *slot = Vec::new();
                        }
                    }
                    if slots.iter().all(Vec::is_empty) {
                        memory.remove(&group);
                    }
                }
            }
            return Ok(());
        }
        // Key by key, not as one batch: each group stands alone (a crash half-way only
        // publishes the rest again), and every sled batch costs two log-buffer writes.
        for (group, rows) in by_group {
            let k = seq_key(b'o', group);
            let Some(v) = self.hub.get(&k)? else {
                continue;
            };
            let mut slots = decode_group(&k, &v)?;
            for i in rows {
                if let Some(slot) = slots.get_mut(i) {
                    slot.clear();
                }
            }
            if slots.iter().all(Vec::is_empty) {
                self.hub.remove(k)?;
            } else {
                self.hub.insert(k, encode_group(&slots))?;
            }
        }
        release_deferred();
        Ok(())
    }

    pub fn outbox_len(&self) -> usize {
        self.outbox().count()
    }

    /// Makes the match indexes cover exactly `keys`: builds the missing ones from the records
    /// and drops the ones no longer used (they are not maintained while unused, so keeping
    /// them would leave them stale). Indexes cost writes on every change, so only the keys
    /// some application matches on are kept.
    pub fn ensure_indexes(&self, keys: &[MatchKey]) -> Result<(), StoreError> {
        let list_key = key(b's', &["indexes"]);
        let current: Vec<MatchKey> = match self.hub.get(&list_key)? {
            Some(v) => decode(&list_key, &v)?,
            None => Vec::new(),
        };
        let missing: Vec<MatchKey> = keys
            .iter()
            .copied()
            .filter(|k| !current.contains(k))
            .collect();
        let unused: Vec<MatchKey> = current
            .iter()
            .copied()
            .filter(|k| !keys.contains(k))
            .collect();
        if missing.is_empty() && unused.is_empty() {
            return Ok(());
        }
        // The stored list only ever names complete indexes, whatever step fails or a crash
        // interrupts: the unused ones leave it before their entries go, the missing ones join
        // it once built. Entries of a key not in the list are leftovers (of a drop that
        // stopped half-way, or of the time it was last used), cleared before it is built.
        if !unused.is_empty() {
            let kept: Vec<MatchKey> = current
                .iter()
                .copied()
                .filter(|k| keys.contains(k))
                .collect();
            self.hub.insert(&list_key, encode(&kept))?;
        }
        for k in unused.iter().chain(&missing) {
            for kind in [Kind::Account, Kind::Contact] {
                let prefix = key(b'i', &[kind.prefix(), match_tag(*k), ""]);
                let mut batch = sled::Batch::default();
                for item in self.hub.scan_prefix(&prefix).keys() {
                    batch.remove(item?);
                }
                self.hub.apply_batch(batch)?;
            }
        }
        if !missing.is_empty() {
            let records: Vec<HubRecord> = self.records().collect::<Result<_, _>>()?;
            for chunk in records.chunks(256) {
                self.transact(|tx| {
                    for r in chunk {
                        for (k, value) in r.match_values() {
                            if missing.contains(&k) {
                                if let Some(v) = value {
                                    tx.index(r.kind, k, v, &r.id, true)?;
                                }
                            }
                        }
                    }
                    Ok(())
                })?;
            }
        }
        self.hub.insert(list_key, encode(&keys))?;
        tracing::info!(built = ?missing, dropped = ?unused, "Match indexes updated");
        Ok(())
    }

    /// Parked rows in parking order without their payloads (rows of earlier versions hold
    /// theirs inline): for scans that look at the reason and the key.
    pub fn parked_rows(&self) -> impl Iterator<Item = Result<Parked, StoreError>> + '_ {
        self.scan::<Parked>(b'p').map(|r| r.map(|(_, v)| v))
    }

    /// Parked documents in parking order, with their payloads.
    pub fn parked(&self) -> impl Iterator<Item = Result<Parked, StoreError>> + '_ {
        self.scan::<Parked>(b'p').filter_map(|r| {
            let (k, mut parked) = match r {
                Ok(row) => row,
                Err(e) => return Some(Err(e)),
            };
            if let Some(digest) = &parked.payload_ref {
                match self.hub.get(payload_key(digest)) {
                    Ok(Some(bytes)) => parked.payload = Payload(bytes.to_vec()),
                    // Released by a commit since the scan read the row (the bytes went with
                    // its last row): no longer parked.
                    Ok(None) => {
                        return match self.hub.contains_key(&k) {
                            Ok(false) => None,
                            Ok(true) => Some(Err(missing_payload(&k))),
                            Err(e) => Some(Err(e.into())),
                        }
                    }
                    Err(e) => return Some(Err(e.into())),
                }
            }
            Some(Ok(parked))
        })
    }

    /// Hub IDs of the records of one kind, in hub-ID order (keys only: cheap to count and to
    /// walk while records change underneath).
    pub fn record_ids(&self, kind: Kind) -> impl Iterator<Item = Result<String, StoreError>> + '_ {
        let prefix = key(b'r', &[&format!("{}-", kind.prefix())]);
        self.hub.scan_prefix(prefix).keys().map(|k| {
            let k = k?;
            Ok(String::from_utf8_lossy(k.get(1..).unwrap_or_default()).into_owned())
        })
    }

    /// Whether the store can still write: a small write, flushed. sled stops writing for good
    /// after an I/O error (a full disk, say) until the store is opened again, so a failure
    /// here means no commit can succeed in this process.
    pub fn probe(&self) -> Result<(), StoreError> {
        let now = chrono::Utc::now().timestamp_millis().to_string();
        self.set_meta("probe", &now)?;
        self.db.flush()?;
        Ok(())
    }

    /// A small named value kept beside the data (e.g. when a resync last ran).
    pub fn meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        let k = key(b's', &["meta", name]);
        self.hub.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    pub fn set_meta(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.hub
            .insert(key(b's', &["meta", name]), encode(&value))?;
        Ok(())
    }

    /// Goes through up to `max` entries of the tombstones by age, oldest first, removing the
    /// tombstones of deletes before `before` (milliseconds since the Unix epoch); returns
    /// the entries gone through and the tombstones removed. Call again while the first is
    /// `max`. Holds the writer lock for the batch, so a transaction never sees half of it. An
    /// entry whose tombstone is gone or cannot be read is removed (with that tombstone).
    pub fn purge_tombstones(&self, before: u64, max: usize) -> Result<(usize, usize), StoreError> {
        let _writer = locked(&self.writer);
        let mut batch = sled::Batch::default();
        let (mut scanned, mut removed) = (0, 0);
        for item in self.hub.scan_prefix([b'h']).keys().take(max) {
            let k = item?;
            let at = k
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            let gone = k.get(9..).filter(|g| g.first() == Some(&b'g'));
            let (Some(at), Some(gone)) = (at, gone) else {
                batch.remove(k);
                scanned += 1;
                continue;
            };
            if at >= before {
                break;
            }
            scanned += 1;
            batch.remove(&k);
            // Only the tombstone of that delete: one its key got since has an entry of its own.
            match self.hub.get(gone)? {
                Some(v) => match decode::<Tombstone>(gone, &v) {
                    Ok(t) if t.deleted_at != Some(at) => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "An unreadable tombstone removed"),
                },
                None => continue,
            }
            batch.remove(gone);
            removed += 1;
        }
        self.hub.apply_batch(batch)?;
        Ok((scanned, removed))
    }

    /// The audit trail of a record (operator links and unlinks), oldest first.
    pub fn audit_for(&self, record: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let mut prefix = key(b'a', &[record]);
        prefix.push(SEP);
        self.hub
            .scan_prefix(prefix)
            .map(|item| {
                let (k, v) = item?;
                decode(&k, &v)
            })
            .collect()
    }
}

fn seq_of(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if let Some(tail) = k.get(1..9) {
        b.copy_from_slice(tail);
    }
    u64::from_be_bytes(b)
}

/// Typed access inside a transaction.
pub struct Tx<'a> {
    tree: &'a sled::Tree,
    /// Pending writes (`None`: removal), applied atomically by [`Store::transact`].
    writes: RefCell<BTreeMap<Vec<u8>, Option<sled::IVec>>>,
    /// The large records it wrote ([`LARGE_RECORD`]), by hub ID, kept decoded and encoded
    /// into [`Self::writes`] once, at its end: a document of many nouns of one key reads and
    /// writes that record once a noun, and a record may hold a MiB of UserArea values. The
    /// others are encoded as they are written (a copy would cost more than it saves).
    records: RefCell<HashMap<String, HubRecord>>,
    seqs: &'a Sequences,
    /// This transaction's outbox group: its sequence and encoded rows, written at the end.
    outbox: RefCell<Option<(u64, Vec<Vec<u8>>)>>,
    /// With the outbox in memory: the finished groups, handed over once the batch applied.
    detached: Option<RefCell<Vec<OutboxGroup>>>,
    /// Parked documents a change in this transaction made matchable ([`Tx::wake_parked`]),
    /// for the pipeline to re-run before the transaction ends.
    woken: RefCell<Vec<u64>>,
    /// For sled's persistent ID generator (tracking group numbers).
    db: &'a sled::Db,
    /// The store's marker filter: read by [`Tx::marker`], fed with the markers this
    /// transaction writes before they are applied ([`Tx::note_markers`]).
    markers: &'a MarkerFilter,
    /// This transaction's tracking group, written at the end (see [`track`]).
    tracking: RefCell<Option<track::Group>>,
    /// The message whose run is being tracked and the runs its marker lists.
    tracked_runs: RefCell<Option<(String, Vec<track::TrackAt>)>>,
    /// The outbox rows pushed since [`Tx::begin_run`] (sequence, BODID): the outputs of the
    /// run being tracked, in order.
    run_outputs: RefCell<Vec<(u64, String)>>,
    /// The runs tracked in this transaction with a BODID: where, and the BODID's hash; added
    /// to the BODID index once applied ([`Store::index_bod_ids`]).
    indexed: RefCell<Vec<(track::TrackAt, u32)>>,
    /// The time of the markers it writes ([`expire`]): when it began, or what the pipeline
    /// set for the document it is processing ([`Tx::set_clock`]).
    now: Cell<track::Millis>,
    /// The latest time its markers were written at: its marker list's time.
    latest: Cell<track::Millis>,
    /// The clock when it began: no marker is dated later.
    wall: track::Millis,
}

impl Tx<'_> {
    fn raw_contains(&self, k: &[u8]) -> TxResult<bool> {
        if let Some(pending) = self.writes.borrow().get(k) {
            return Ok(pending.is_some());
        }
        Ok(self.tree.contains_key(k)?)
    }

    /// Adds the markers this transaction writes to the filter, before they reach sled: the
    /// filter must know every marker sled has.
    fn note_markers(&self) {
        for (k, v) in self.writes.borrow().range(vec![b'm']..vec![b'm' + 1]) {
            if v.is_some() {
                self.markers.insert(k);
            }
        }
    }

    fn raw_get(&self, k: &[u8]) -> TxResult<Option<sled::IVec>> {
        if let Some(pending) = self.writes.borrow().get(k) {
            return Ok(pending.clone());
        }
        Ok(self.tree.get(k)?)
    }

    fn raw_insert(&self, k: Vec<u8>, v: impl Into<sled::IVec>) {
        self.writes.borrow_mut().insert(k, Some(v.into()));
    }

    fn raw_remove(&self, k: Vec<u8>) {
        self.writes.borrow_mut().insert(k, None);
    }

    fn get<T: DeserializeOwned>(&self, k: &[u8]) -> TxResult<Option<T>> {
        match self.raw_get(k)? {
            Some(v) => decode(k, &v).map(Some),
            None => Ok(None),
        }
    }

    fn put<T: Serialize>(&self, k: Vec<u8>, value: &T) -> TxResult<()> {
        self.raw_insert(k, encode(value));
        Ok(())
    }

    pub fn record(&self, id: &str) -> TxResult<Option<HubRecord>> {
        {
            let large = self.records.borrow();
            if let Some(written) = large.get(id) {
                return Ok(Some(written.clone()));
            }
        }
        self.get(&key(b'r', &[id]))
    }

    pub fn put_record(&self, record: &HubRecord) -> TxResult<()> {
        let k = key(b'r', &[&record.id]);
        if record.fields.user_area_bytes() > LARGE_RECORD {
            // Its bytes are written at the end; until then the tree's are stale.
            self.raw_remove(k);
            self.records
                .borrow_mut()
                .insert(record.id.clone(), record.clone());
            return Ok(());
        }
        self.forget_large(&record.id);
        self.put(k, record)
    }

    pub fn remove_record(&self, id: &str) -> TxResult<()> {
        self.forget_large(id);
        self.raw_remove(key(b'r', &[id]));
        Ok(())
    }

    fn forget_large(&self, id: &str) {
        let mut large = self.records.borrow_mut();
        if !large.is_empty() {
            large.remove(id);
        }
    }

    /// Encodes the large records it wrote into its writes (at its end).
    fn write_records(&self) -> TxResult<()> {
        for (id, record) in self.records.take() {
            self.put(key(b'r', &[&id]), &record)?;
        }
        Ok(())
    }

    pub fn xref(&self, x: &XrefKey) -> TxResult<Option<String>> {
        self.get(&xref_key(x))
    }

    /// Puts a cross-reference; a tombstone of its key (a hard delete) goes, whichever way the
    /// key comes back (a newer document, an operator's link, an assigned ID).
    pub fn put_xref(&self, x: &XrefKey, hub_id: &str) -> TxResult<()> {
        self.remove_tombstone(x)?;
        self.put(xref_key(x), &hub_id)
    }

    /// What is left of a hard-deleted record's cross-reference.
    pub fn tombstone(&self, x: &XrefKey) -> TxResult<Option<Tombstone>> {
        self.get(&tombstone_key(x))
    }

    /// Puts a tombstone, listed by its age when it has one (see [`Store::purge_tombstones`]).
    pub fn put_tombstone(&self, x: &XrefKey, t: &Tombstone) -> TxResult<()> {
        self.remove_tombstone(x)?;
        let gone = tombstone_key(x);
        if let Some(at) = t.deleted_at {
            self.raw_insert(tombstone_age_key(at, &gone), sled::IVec::default());
        }
        self.put(gone, t)
    }

    /// Removes the tombstone of `x`, if there is one, with its place among them by age.
    /// An unreadable tombstone goes too (its entry by age, if any, is dropped by the purge).
    fn remove_tombstone(&self, x: &XrefKey) -> TxResult<()> {
        let gone = tombstone_key(x);
        if let Some(v) = self.raw_get(&gone)? {
            if let Ok(Tombstone {
                deleted_at: Some(at),
                ..
            }) = decode::<Tombstone>(&gone, &v)
            {
                self.raw_remove(tombstone_age_key(at, &gone));
            }
            self.raw_remove(gone);
        }
        Ok(())
    }

    pub fn remove_xref(&self, x: &XrefKey) -> TxResult<()> {
        self.raw_remove(xref_key(x));
        Ok(())
    }

    /// Hub IDs indexed under a match key and value.
    pub fn matches(&self, kind: Kind, k: MatchKey, value: &str) -> TxResult<Vec<String>> {
        let ik = key(
            b'i',
            &[kind.prefix(), match_tag(k), &normalize_match(value)],
        );
        Ok(self.get::<Vec<String>>(&ik)?.unwrap_or_default())
    }

    /// Adds (`add = true`) or removes a hub ID under a match key and value.
    pub fn index(
        &self,
        kind: Kind,
        k: MatchKey,
        value: &str,
        hub_id: &str,
        add: bool,
    ) -> TxResult<()> {
        let norm = normalize_match(value);
        if norm.is_empty() {
            return Ok(());
        }
        let ik = key(b'i', &[kind.prefix(), match_tag(k), &norm]);
        let mut ids = self.get::<Vec<String>>(&ik)?.unwrap_or_default();
        let present = ids.iter().any(|i| i == hub_id);
        match (add, present) {
            (true, false) => ids.push(hub_id.to_string()),
            (false, true) => ids.retain(|i| i != hub_id),
            _ => return Ok(()),
        }
        if ids.is_empty() {
            self.raw_remove(ik);
            Ok(())
        } else {
            self.put(ik, &ids)
        }
    }

    pub fn marker(&self, message_id: &str) -> TxResult<Option<Marker>> {
        let k = key(b'm', &[message_id]);
        // Certainly not in sled, and not written by this transaction: no read.
        if !self.markers.may_contain(&k) && !self.writes.borrow().contains_key(&k) {
            return Ok(None);
        }
        self.get(&k)
    }

    /// Dates the markers written from now on (the document being processed was received at
    /// `at`).
    pub fn set_clock(&self, at: track::Millis) {
        self.now.set(at);
    }

    /// Writes a message id's marker, dated now (the dedup window starts again: [`expire`]);
    /// while a run of that message is being tracked ([`Tx::begin_run`]), the marker lists its
    /// runs.
    pub fn put_marker(&self, message_id: &str, marker: &Marker) -> TxResult<()> {
        let mut marker = marker.clone();
        if let Some(tracked) = self.runs_of(message_id) {
            marker.tracked = tracked;
        }
        // Never in the future (`replay --now` ahead of the clock): a marker's window cannot
        // start after the purge's clock.
        let now = self.now.get().min(self.wall);
        marker.at = Some(now.0);
        self.latest.set(self.latest.get().max(now));
        self.put(key(b'm', &[message_id]), &marker)
    }

    /// Increments and returns a named counter (first value 1).
    pub fn next(&self, counter: &str) -> TxResult<u64> {
        let k = key(b's', &[counter]);
        // A value that is not 8 bytes is an error, not a first value: starting again at 1
        // would hand out hub IDs that records already have.
        let current = match self.raw_get(&k)? {
            None => 0,
            Some(v) => u64::from_be_bytes(<[u8; 8]>::try_from(v.as_ref()).map_err(|_| {
                StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    message: format!("a counter of {} bytes (8 expected)", v.len()),
                }
            })?),
        };
        let next = current + 1;
        self.raw_insert(k, next.to_be_bytes().to_vec());
        Ok(next)
    }

    /// Adds an outbox row to this transaction's group; returns the row's sequence.
    pub fn push_outbox(&self, row: &OutboxRow) -> TxResult<u64> {
        let mut pending = self.outbox.borrow_mut();
        if pending.as_ref().is_some_and(|(_, rows)| {
            rows.len() >= 1 << ROW_BITS || rows.iter().map(Vec::len).sum::<usize>() >= GROUP_BYTES
        }) {
            drop(pending);
            self.write_outbox_group()?;
            pending = self.outbox.borrow_mut();
        }
        let (group, rows) = pending
            .get_or_insert_with(|| (self.seqs.outbox.fetch_add(1, Ordering::Relaxed), Vec::new()));
        let seq = (*group << ROW_BITS) | rows.len() as u64;
        // A dead-letter row is not one of the run's outputs (they are BODs of ours).
        let tracked = match row.dead_letter {
            Some(_) => None,
            None => self.output_at(seq, &row.bod_id),
        };
        rows.push(encode_outbox(row, tracked));
        Ok(seq)
    }

    /// Rewrites rows `seqs` of this transaction's pending outbox group without their
    /// [`OutboxRow::tracked`] place (rows of groups already written keep theirs).
    pub(super) fn unplace_outbox_rows(&self, seqs: impl Iterator<Item = u64>) -> TxResult<()> {
        let mut pending = self.outbox.borrow_mut();
        let Some((group, rows)) = pending.as_mut() else {
            return Ok(());
        };
        let k = seq_key(b'o', *group);
        for seq in seqs.filter(|s| s >> ROW_BITS == *group) {
            if let Some(bytes) = rows.get_mut((seq & ((1 << ROW_BITS) - 1)) as usize) {
                *bytes = encode_outbox(&decode_outbox(&k, bytes)?, None);
            }
        }
        Ok(())
    }

    fn write_outbox_group(&self) -> TxResult<()> {
        if let Some((group, rows)) = self.outbox.borrow_mut().take() {
            match &self.detached {
                Some(groups) => groups.borrow_mut().push((group, rows)),
                None => self.raw_insert(seq_key(b'o', group), encode_group(&rows)),
            }
        }
        Ok(())
    }

    /// Removes a parked document (it is being released), with its index entries, and its
    /// payload when no other row shares it.
    pub fn unpark(&self, seq: u64) -> TxResult<()> {
        // The row alone: its payload is not needed to remove it.
        if let Some(parked) = self.get::<Parked>(&seq_key(b'p', seq))? {
            self.index_parked(&parked, false)?;
            if let Some(digest) = &parked.payload_ref {
                let mut refs = payload_refs_prefix(digest);
                refs.extend_from_slice(&seq.to_be_bytes());
                self.raw_remove(refs);
                if !self.any_key_under(&payload_refs_prefix(digest))? {
                    self.raw_remove(payload_key(digest));
                }
            }
        }
        self.raw_remove(seq_key(b'p', seq));
        Ok(())
    }

    /// Parks a document; a `no_match` document is indexed under its match values. Its bytes
    /// are stored once, under their digest, however many of the document's nouns park: a
    /// bulk Sync of a thousand nouns of a 4 MiB document would otherwise write a thousand
    /// copies in one transaction.
    pub fn park(&self, mut parked: Parked) -> TxResult<u64> {
        let seq = self.seqs.parked.fetch_add(1, Ordering::Relaxed);
        parked.seq = seq;
        self.index_parked(&parked, true)?;
        let payload = std::mem::take(&mut parked.payload);
        let digest = blake3::hash(&payload.0).to_hex().to_string();
        let at = payload_key(&digest);
        if !self.raw_contains(&at)? {
            self.raw_insert(at, payload.0);
        }
        let mut refs = payload_refs_prefix(&digest);
        refs.extend_from_slice(&seq.to_be_bytes());
        self.raw_insert(refs, &[] as &[u8]);
        parked.payload_ref = Some(digest);
        self.put(seq_key(b'p', seq), &parked)?;
        Ok(seq)
    }

    /// Whether the row with this sequence is still parked (without reading it).
    pub fn is_parked(&self, seq: u64) -> TxResult<bool> {
        self.raw_contains(&seq_key(b'p', seq))
    }

    /// The parked document with this sequence, if still parked, with its payload.
    pub fn parked(&self, seq: u64) -> TxResult<Option<Parked>> {
        let k = seq_key(b'p', seq);
        let Some(mut parked) = self.get::<Parked>(&k)? else {
            return Ok(None);
        };
        if let Some(digest) = &parked.payload_ref {
            let bytes = self.raw_get(&payload_key(digest))?;
            parked.payload = Payload(payload_or_missing(&k, bytes)?);
        }
        Ok(Some(parked))
    }

    fn index_parked(&self, parked: &Parked, add: bool) -> TxResult<()> {
        let id_key = parked_id_key(&parked.message_id, parked.seq);
        if add {
            self.raw_insert(id_key, &[] as &[u8]);
        } else {
            self.raw_remove(id_key);
        }
        if let Some(q) = parked_key_key(parked) {
            if add {
                self.raw_insert(q, &[] as &[u8]);
            } else {
                self.raw_remove(q);
            }
        }
        let Some(kind) = parked.key.as_ref().map(|k| k.kind) else {
            return Ok(());
        };
        for (k, value) in &parked.match_values {
            let norm = normalize_match(value);
            if norm.is_empty() {
                continue;
            }
            let ik = key(b'n', &[kind.prefix(), match_tag(*k), &norm]);
            let mut seqs = self.get::<Vec<u64>>(&ik)?.unwrap_or_default();
            let present = seqs.contains(&parked.seq);
            match (add, present) {
                (true, false) => seqs.push(parked.seq),
                (false, true) => seqs.retain(|s| *s != parked.seq),
                _ => continue,
            }
            if seqs.is_empty() {
                self.raw_remove(ik);
            } else {
                self.put(ik, &seqs)?;
            }
        }
        Ok(())
    }

    /// A record of `kind` now carries `value` under match key `k`: the `no_match` documents
    /// parked with that value are noted for release in this transaction ([`Tx::take_woken`]).
    /// Returns how many were found.
    pub fn wake_parked(&self, kind: Kind, k: MatchKey, value: &str) -> TxResult<usize> {
        let norm = normalize_match(value);
        if norm.is_empty() {
            return Ok(0);
        }
        let seqs = self
            .get::<Vec<u64>>(&key(b'n', &[kind.prefix(), match_tag(k), &norm]))?
            .unwrap_or_default();
        Ok(self.wake(&seqs))
    }

    /// Notes parked sequences for release in this transaction (each once); returns how many.
    fn wake(&self, seqs: &[u64]) -> usize {
        let mut woken = self.woken.borrow_mut();
        for s in seqs {
            if !woken.contains(s) {
                woken.push(*s);
            }
        }
        seqs.len()
    }

    /// `key` was just linked to a record (created or matched): the `no_match` and
    /// `ambiguous_match` documents parked for it are noted for release in this transaction —
    /// they are now updates of that record. Returns how many were found.
    pub fn wake_parked_for(&self, key: &XrefKey) -> TxResult<usize> {
        let prefix = parked_key_prefix(key);
        let seqs: Vec<u64> = self
            .keys_under(&prefix)?
            .iter()
            .filter_map(|k| Some(u64::from_be_bytes(k.get(prefix.len()..)?.try_into().ok()?)))
            .collect();
        Ok(self.wake(&seqs))
    }

    /// The parked documents woken so far (in parking order), emptying the list.
    pub fn take_woken(&self) -> Vec<u64> {
        let mut woken = std::mem::take(&mut *self.woken.borrow_mut());
        woken.sort_unstable();
        woken
    }

    /// The Process bodflow sent with this BODID, if any.
    pub fn correlation(&self, bod_id: &str) -> TxResult<Option<Correlation>> {
        self.get(&key(b'b', &[bod_id]))
    }

    /// Remembers a Process bodflow sends, for its Acknowledge.
    pub fn put_correlation(&self, bod_id: &str, c: &Correlation) -> TxResult<()> {
        self.put(key(b'b', &[bod_id]), c)
    }

    /// Forgets a Process (one a newer Process of the same record replaces): its Acknowledge
    /// is then `unknown_correlation`.
    pub fn remove_correlation(&self, bod_id: &str) -> TxResult<()> {
        self.raw_remove(key(b'b', &[bod_id]));
        Ok(())
    }

    /// Appends an entry to the record's audit trail.
    pub fn put_audit(&self, entry: &AuditEntry) -> TxResult<()> {
        let seq = self.next("audit")?;
        let mut k = key(b'a', &[&entry.record]);
        k.push(SEP);
        k.extend_from_slice(&seq.to_be_bytes());
        self.put(k, entry)
    }

    /// Contacts waiting for the account an application knows as `parent`.
    pub fn waiting_children(&self, parent: &XrefKey) -> TxResult<Vec<String>> {
        Ok(self.get(&waiting_key(parent))?.unwrap_or_default())
    }

    pub fn set_waiting_children(&self, parent: &XrefKey, ids: &[String]) -> TxResult<()> {
        if ids.is_empty() {
            self.raw_remove(waiting_key(parent));
            Ok(())
        } else {
            self.put(waiting_key(parent), &ids)
        }
    }

    /// Keeps the account→contacts index in step with a contact's account changing from
    /// `from` to `to` (`None`: none; a new contact comes from `None`, a removed one goes to it).
    pub fn move_contact(&self, contact: &str, from: Option<&str>, to: Option<&str>) {
        if from == to {
            return;
        }
        if let Some(from) = from {
            self.raw_remove(employee_key(from, contact));
        }
        if let Some(to) = to {
            self.raw_insert(employee_key(to, contact), sled::IVec::default());
        }
    }

    /// Hub IDs of the contacts whose account is `account`, in hub-ID order, this
    /// transaction's own changes included.
    pub fn contacts_of(&self, account: &str) -> TxResult<Vec<String>> {
        let mut prefix = key(b'e', &[account]);
        prefix.push(SEP);
        Ok(self
            .keys_under(&prefix)?
            .iter()
            .map(|k| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
            .collect())
    }

    /// Whether any key under `prefix` is there as this transaction sees it (stops at the
    /// first).
    fn any_key_under(&self, prefix: &[u8]) -> TxResult<bool> {
        let writes = self.writes.borrow();
        let written = writes
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .any(|(_, v)| v.is_some());
        if written {
            return Ok(true);
        }
        for k in self.tree.scan_prefix(prefix).keys() {
            let k = k?;
            if !matches!(writes.get(k.as_ref()), Some(None)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The keys under `prefix` as this transaction sees them: the tree's, with those it
    /// wrote and without those it removed, in order.
    fn keys_under(&self, prefix: &[u8]) -> TxResult<Vec<Vec<u8>>> {
        let mut found = BTreeMap::new();
        for item in self.tree.scan_prefix(prefix) {
            let (k, _) = item?;
            found.insert(k.to_vec(), true);
        }
        let mut end = prefix.to_vec();
        end.push(0xff);
        for (k, v) in self.writes.borrow().range(prefix.to_vec()..end) {
            found.insert(k.clone(), v.is_some());
        }
        Ok(found
            .into_iter()
            .filter_map(|(k, live)| live.then_some(k))
            .collect())
    }
}

/// A record whose UserArea values take more bytes than this is kept decoded by the
/// transaction that writes it ([`Tx::put_record`]).
const LARGE_RECORD: usize = 64 * 1024;

fn waiting_key(parent: &XrefKey) -> Vec<u8> {
    let mut k = xref_key(parent);
    k[0] = b'c';
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> HubRecord {
        HubRecord {
            id: id.into(),
            kind: Kind::Account,
            deleted: false,
            placeholder: false,
            fields: Fields::default(),
            owner: Owner::default(),
            account: None,
            intended_parent: None,
            xrefs: vec![],
            unlinked: vec![],
            promotion: None,
            created_by: "lid://a".into(),
            revision: 1,
        }
    }

    /// A large record (its UserArea over [`LARGE_RECORD`]) is kept decoded until its
    /// transaction ends, a small one written as it comes; either way a read in the same
    /// transaction sees the last write, a removal included, and the store the last one.
    #[test]
    fn records_written_in_a_transaction_read_back_as_last_written() {
        let store = Store::temporary().unwrap();
        let large = |revision| {
            let mut r = record("ACC-1");
            r.revision = revision;
            r.fields.user_area = vec![crate::bod::NameValue {
                name: "big".into(),
                kind: None,
                value: "x".repeat(LARGE_RECORD + 1),
            }];
            r
        };
        let small = |revision| HubRecord {
            revision,
            ..record("ACC-1")
        };
        store
            .transact(|tx| {
                tx.put_record(&large(1))?;
                assert_eq!(tx.record("ACC-1")?, Some(large(1)));
                tx.put_record(&small(2))?;
                assert_eq!(
                    tx.record("ACC-1")?,
                    Some(small(2)),
                    "the large copy forgotten"
                );
                tx.put_record(&large(3))?;
                assert_eq!(tx.record("ACC-1")?, Some(large(3)));
                Ok(())
            })
            .unwrap();
        assert_eq!(store.record("ACC-1").unwrap(), Some(large(3)));
        store
            .transact(|tx| {
                tx.put_record(&large(4))?;
                tx.remove_record("ACC-1")?;
                assert_eq!(tx.record("ACC-1")?, None);
                Ok(())
            })
            .unwrap();
        assert_eq!(store.record("ACC-1").unwrap(), None);
        store
            .transact(|tx| {
                tx.put_record(&small(5))?;
                tx.put_record(&large(6))
            })
            .unwrap();
        assert_eq!(store.record("ACC-1").unwrap(), Some(large(6)));
    }

    fn contact(id: &str, account: &str) -> HubRecord {
        HubRecord {
            kind: Kind::Contact,
            account: Some(account.into()),
            ..record(id)
        }
    }

    #[test]
    fn an_accounts_contacts_are_listed_with_the_transactions_own_changes() {
        let store = Store::temporary().unwrap();
        store
            .transact(|tx| {
                tx.move_contact("CON-1", None, Some("ACC-1"));
                tx.move_contact("CON-2", None, Some("ACC-1"));
                tx.move_contact("CON-3", None, Some("ACC-10"));
                assert_eq!(
                    tx.contacts_of("ACC-1")?,
                    ["CON-1", "CON-2"],
                    "its own writes"
                );
                Ok(())
            })
            .unwrap();
        store
            .transact(|tx| {
                tx.move_contact("CON-1", Some("ACC-1"), Some("ACC-10"));
                assert_eq!(tx.contacts_of("ACC-1")?, ["CON-2"], "a removal it made");
                assert_eq!(tx.contacts_of("ACC-10")?, ["CON-1", "CON-3"]);
                tx.move_contact("CON-2", Some("ACC-1"), None);
                Ok(())
            })
            .unwrap();
        store
            .transact(|tx| {
                assert!(tx.contacts_of("ACC-1")?.is_empty());
                assert_eq!(tx.contacts_of("ACC-10")?, ["CON-1", "CON-3"], "applied");
                assert!(
                    tx.contacts_of("ACC")?.is_empty(),
                    "a prefix of an ID is another ID"
                );
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_store_of_before_the_contact_index_is_indexed_at_its_first_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            // Records as an earlier version wrote them: no index keys, no meta entry.
            store
                .transact(|tx| {
                    tx.put_record(&record("ACC-1"))?;
                    tx.put_record(&contact("CON-1", "ACC-1"))?;
                    tx.put_record(&contact("CON-2", "ACC-2"))?;
                    tx.put_record(&HubRecord {
                        account: None,
                        ..contact("CON-3", "")
                    })
                })
                .unwrap();
            store
                .hub
                .remove(key(b's', &["meta", CONTACT_INDEX_META]))
                .unwrap();
            store
                .transact(|tx| {
                    assert!(tx.contacts_of("ACC-1")?.is_empty());
                    Ok(())
                })
                .unwrap();
            store.flush().unwrap();
        }
        let store = reopen(dir.path());
        store
            .transact(|tx| {
                assert_eq!(tx.contacts_of("ACC-1")?, ["CON-1"]);
                assert_eq!(tx.contacts_of("ACC-2")?, ["CON-2"]);
                Ok(())
            })
            .unwrap();
        assert_eq!(
            store.meta(CONTACT_INDEX_META).unwrap().as_deref(),
            Some("1")
        );
    }

    #[test]
    fn a_store_of_before_the_parked_key_index_is_indexed_at_its_first_open() {
        let dir = tempfile::tempdir().unwrap();
        let waiting = XrefKey {
            kind: Kind::Account,
            application: "lid://erp".into(),
            accounting_entity: String::new(),
            id: "E-1".into(),
        };
        let seq = {
            let store = Store::open(dir.path()).unwrap();
            let seq = store
                .transact(|tx| {
                    tx.park(Parked::for_test(
                        "m-1",
                        ParkReason::NoMatch,
                        Some(waiting.clone()),
                    ))
                })
                .unwrap();
            // As an earlier version left it: no `q` entry, no meta entry.
            for k in store.hub.scan_prefix([b'q']).keys() {
                store.hub.remove(k.unwrap()).unwrap();
            }
            store
                .hub
                .remove(key(b's', &["meta", PARKED_KEYS_META]))
                .unwrap();
            store.flush().unwrap();
            seq
        };
        let store = reopen(dir.path());
        let woken = store
            .transact(|tx| {
                tx.wake_parked_for(&waiting)?;
                Ok(tx.take_woken())
            })
            .unwrap();
        assert_eq!(woken, vec![seq]);
        assert_eq!(store.meta(PARKED_KEYS_META).unwrap().as_deref(), Some("1"));
    }

    #[test]
    fn a_store_of_before_the_parked_id_index_is_indexed_at_its_first_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            for id in ["m-1", "m\u{1f}2"] {
                store
                    .transact(|tx| {
                        tx.park(Parked::for_test(id, ParkReason::InactiveApplication, None))
                    })
                    .unwrap();
            }
            // As an earlier version left it: no `u` entries, no meta entry.
            for k in store.hub.scan_prefix([b'u']).keys() {
                store.hub.remove(k.unwrap()).unwrap();
            }
            store
                .hub
                .remove(key(b's', &["meta", PARKED_IDS_META]))
                .unwrap();
            store.flush().unwrap();
            assert!(store.parked_marker_keys().unwrap().is_empty());
        }
        let store = reopen(dir.path());
        let held = store.parked_marker_keys().unwrap();
        assert_eq!(
            held,
            std::collections::HashSet::from([b"mm-1".to_vec(), b"mm\x1f2".to_vec()])
        );
        assert_eq!(store.meta(PARKED_IDS_META).unwrap().as_deref(), Some("1"));
        // Released: its entry goes with it.
        let seq = store.parked().next().unwrap().unwrap().seq;
        store.transact(|tx| tx.unpark(seq)).unwrap();
        assert_eq!(store.parked_marker_keys().unwrap().len(), 1);
    }

    #[test]
    fn a_panic_inside_a_transaction_is_a_failure_that_writes_nothing() {
        let store = Store::temporary().unwrap();
        let failed = store.transact(|tx| -> TxResult<()> {
            tx.put_record(&record("ACC-1"))?;
            tx.push_outbox(&row(1))?;
            panic!("boom {}", 7)
        });
        match failed {
            Err(e @ StoreError::Internal(_)) => {
                assert_eq!(e.code(), "internal_error");
                assert!(e.to_string().contains("boom 7"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(store.record("ACC-1").unwrap().is_none());
        assert_eq!(store.outbox_len(), 0);
        // The writer lock is not poisoned: the next transaction goes through.
        store
            .transact(|tx| tx.put_record(&record("ACC-2")))
            .unwrap();
        assert!(store.record("ACC-2").unwrap().is_some());
    }

    #[test]
    fn a_transaction_writes_all_or_nothing() {
        let store = Store::temporary().unwrap();
        let failed = store.transact(|tx| {
            tx.put_record(&record("ACC-000001"))?;
            tx.put_marker("m1", &Marker::applied())?;
            Err::<(), _>(StoreError::Corrupt {
                key: "k".into(),
                message: "boom".into(),
            })
        });
        assert!(failed.is_err());
        assert_eq!(store.record("ACC-000001").unwrap(), None);
        assert_eq!(store.marker("m1").unwrap(), None);

        store
            .transact(|tx| {
                tx.put_record(&record("ACC-000001"))?;
                tx.push_outbox(&OutboxRow::confirm("b", "lid://a", "m1"))
            })
            .unwrap();
        assert!(store.record("ACC-000001").unwrap().is_some());
        assert_eq!(store.outbox().count(), 1);
    }

    pub(super) fn wait_for_marker_filter(store: &Store) {
        let started = std::time::Instant::now();
        while !store.markers.is_complete() {
            assert!(started.elapsed() < std::time::Duration::from_secs(30));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn markers_are_found_through_the_filter_before_and_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..3_000).map(|i| format!("msg-{i}")).collect();
        {
            let store = Store::open(dir.path()).unwrap();
            wait_for_marker_filter(&store);
            for chunk in ids.chunks(100) {
                store
                    .transact(|tx| {
                        for id in chunk {
                            // Read first, as the commit does: absent, then written.
                            assert_eq!(tx.marker(id)?, None);
                            tx.put_marker(id, &Marker::applied())?;
                            assert!(tx.marker(id)?.is_some(), "{id} in its own transaction");
                        }
                        Ok(())
                    })
                    .unwrap();
            }
            // A failed transaction's marker is not there (the filter may say "maybe").
            let _ = store.transact(|tx| {
                tx.put_marker("failed", &Marker::applied())?;
                Err::<(), _>(StoreError::Corrupt {
                    key: "k".into(),
                    message: "boom".into(),
                })
            });
            assert_eq!(store.marker("failed").unwrap(), None);
            assert!(ids.iter().all(|id| store.marker(id).unwrap().is_some()));
            store.flush().unwrap();
        }
        // Reopened: the markers on disk are scanned into a new filter; a lookup before the
        // scan has finished reads sled, after it the filter.
        let store = reopen(dir.path());
        assert!(store.marker("msg-17").unwrap().is_some());
        wait_for_marker_filter(&store);
        assert!(ids.iter().all(|id| store.marker(id).unwrap().is_some()));
        assert!(store.markers.bytes() > 0);
        let unknown = (0..3_000)
            .filter(|i| {
                !store
                    .markers
                    .may_contain(&key(b'm', &[&format!("new-{i}")]))
            })
            .count();
        assert!(
            unknown > 2_900,
            "only {unknown} of 3,000 new ids skipped sled"
        );
        store
            .transact(|tx| {
                assert_eq!(tx.marker("new-1")?, None);
                assert!(tx.marker("msg-2999")?.is_some());
                Ok(())
            })
            .unwrap();
    }

    /// Opens a store that was just dropped: sled's own background threads may hold its file
    /// (and lock) a moment longer (seen in CI, whatever bodflow's threads do).
    pub(super) fn reopen(dir: &Path) -> Store {
        reopen_with(|| Store::open(dir))
    }

    /// [`reopen`] with `open`.
    fn reopen_with(open: impl Fn() -> Result<Store, StoreError>) -> Store {
        let started = std::time::Instant::now();
        loop {
            match open() {
                Err(StoreError::Locked(_)) if started.elapsed().as_secs() < 10 => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other.unwrap(),
            }
        }
    }

    #[test]
    fn a_store_waits_for_its_marker_scan_when_dropped_and_a_stopped_scan_stays_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .transact(|tx| {
                    for i in 0..20_000 {
                        tx.put_marker(&format!("m-{i}"), &Marker::applied())?;
                    }
                    Ok(())
                })
                .unwrap();
            store.flush().unwrap();
        }
        {
            let store = reopen(dir.path());
            // Asked to stop: the filter stays incomplete (every lookup reads sled).
            let stopped = MarkerFilter::new();
            stopped.stop();
            scan_markers(&store.hub, &stopped);
            assert!(!stopped.is_complete());
            assert!(stopped.may_contain(&key(b'm', &["m-19999"])));
            // Not stopped: complete, with every marker.
            let full = MarkerFilter::new();
            scan_markers(&store.hub, &full);
            assert!(full.is_complete());
            assert!((0..20_000).all(|i| full.may_contain(&key(b'm', &[&format!("m-{i}")]))));
        }
        // Dropped at once, scan or not: the drop stops the scan and waits for its thread, so
        // nothing of it (it holds sled's tree) outlives the store.
        for _ in 0..3 {
            let store = reopen(dir.path());
            let markers = store.markers.clone();
            drop(store);
            assert!(markers.stopped());
            assert_eq!(Arc::strong_count(&markers), 1, "the scan still runs");
        }
        let store = reopen(dir.path());
        wait_for_marker_filter(&store);
        assert!(store.marker("m-19999").unwrap().is_some());
    }

    fn row(n: u32) -> OutboxRow {
        OutboxRow {
            kind: "ConfirmBOD".into(),
            to: "lid://a".into(),
            reply_to: None,
            bod_id: format!("b{n}"),
            correlation_id: "m".into(),
            reply_correlation_id: None,
            document_name: "Confirm.BOD".into(),
            tenant: None,
            traceparent: (n % 2 == 1)
                .then(|| format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902{n:02x}-01")),
            tracestate: (n == 1).then(|| "rojo=1".to_string()),
            tracked: None,
            variation: n.is_multiple_of(3).then(|| n.to_string()),
            xml: format!("<x n=\"{n}\">\n</x>"),
            dead_letter: None,
        }
    }

    #[test]
    fn a_dead_letter_row_keeps_the_delivery_byte_for_byte() {
        let store = Store::temporary().unwrap();
        let dead = OutboxRow {
            kind: "DeadLetter".into(),
            xml: String::new(),
            dead_letter: Some(Box::new(DeadLetterRow {
                delivered: Delivered {
                    routing_key: "Sync.CustomerPartyMaster".into(),
                    properties: vec![1, b'\n', 0, 255],
                    payload: b"<x>M\xfcnchen\n</x>".to_vec(),
                },
                stage: "validate".into(),
                code: "not_well_formed".into(),
                reason: "line 1: \"bad\"\nthing".into(),
                path: Some("/x".into()),
            })),
            ..row(1)
        };
        store
            .transact(|tx| {
                tx.push_outbox(&row(0))?;
                tx.push_outbox(&dead)?;
                tx.push_outbox(&row(2))
            })
            .unwrap();
        let rows: Vec<OutboxRow> = store.outbox().map(|r| r.unwrap().1).collect();
        assert_eq!(rows, [row(0), dead, row(2)]);
    }

    #[test]
    fn outbox_rows_of_a_transaction_share_a_group_and_leave_one_by_one() {
        let store = Store::temporary().unwrap();
        let seqs = store
            .transact(|tx| {
                (0..3)
                    .map(|n| tx.push_outbox(&row(n)))
                    .collect::<TxResult<Vec<u64>>>()
            })
            .unwrap();
        let later = store.transact(|tx| tx.push_outbox(&row(9))).unwrap();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1) && later > seqs[2]);
        let listed: Vec<(u64, String)> = store
            .outbox()
            .map(|r| r.map(|(s, row)| (s, row.bod_id)))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(listed.len(), 4);
        assert_eq!(
            store.outbox_row(seqs[1]).unwrap().unwrap(),
            row(1),
            "rows read back whole, trace context included"
        );
        assert_eq!(store.outbox_row(seqs[0]).unwrap().unwrap(), row(0));

        let from: Vec<String> = store
            .outbox_from(seqs[1])
            .map(|r| r.map(|(_, row)| row.bod_id))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(from, ["b1", "b2", "b9"]);
        assert_eq!(store.outbox_from(later + 1).count(), 0);

        store.remove_outbox(&[seqs[0], seqs[2]]).unwrap();
        let left: Vec<String> = store
            .outbox()
            .map(|r| r.map(|(_, row)| row.bod_id))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, vec!["b1".to_string(), "b9".to_string()]);
        assert!(store.outbox_row(seqs[0]).unwrap().is_none());
        store.remove_outbox(&[seqs[1], later]).unwrap();
        assert_eq!(store.outbox_len(), 0);
        assert_eq!(
            store.hub.scan_prefix([b'o']).count(),
            0,
            "empty groups are deleted"
        );
    }

    #[test]
    fn a_large_transaction_spreads_its_outbox_rows_over_small_groups() {
        let store = Store::temporary().unwrap();
        let big = |n: u32| OutboxRow {
            tracked: None,
            xml: format!("<x n=\"{n}\">{}</x>", "y".repeat(3000)),
            ..row(n)
        };
        let seqs = store
            .transact(|tx| {
                (0..40)
                    .map(|n| tx.push_outbox(&big(n)))
                    .collect::<TxResult<Vec<u64>>>()
            })
            .unwrap();
        assert!(seqs.windows(2).all(|w| w[1] > w[0]), "in order");
        let groups = store.hub.scan_prefix([b'o']).count();
        assert!(groups >= 4, "{groups} groups for 120 KB of rows");
        for item in store.hub.scan_prefix([b'o']) {
            assert!(item.unwrap().1.len() < GROUP_BYTES + 4096);
        }
        let listed: Vec<u64> = store.outbox().map(|r| r.unwrap().0).collect();
        assert_eq!(listed, seqs);
        let from: Vec<u64> = store.outbox_from(seqs[17]).map(|r| r.unwrap().0).collect();
        assert_eq!(from, seqs[17..]);
    }

    #[test]
    fn outbox_groups_are_stored_compressed_and_a_damaged_one_is_a_named_error() {
        let store = Store::temporary().unwrap();
        let sync = |n: u32| OutboxRow {
            tracked: None,
            xml: format!("<Sync n=\"{n}\">{}</Sync>", "<Name>Acme</Name>".repeat(100)),
            ..row(n)
        };
        let seqs = store
            .transact(|tx| {
                (0..4)
                    .map(|n| tx.push_outbox(&sync(n)))
                    .collect::<TxResult<Vec<u64>>>()
            })
            .unwrap();
        let (k, stored) = store.hub.scan_prefix([b'o']).next().unwrap().unwrap();
        let raw: usize = (0..4)
            .map(|n| encode_outbox(&sync(n), None).len() + 4)
            .sum();
        assert!(stored.len() * 4 < raw, "{} of {raw} bytes", stored.len());
        assert_eq!(store.outbox_row(seqs[3]).unwrap().unwrap(), sync(3));

        store.hub.insert(&k, &stored[..stored.len() / 2]).unwrap();
        let err = store.outbox_row(seqs[0]).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { message, .. } if message.starts_with("outbox group")),
            "{err}"
        );
    }

    #[test]
    fn only_flushed_outbox_rows_are_offered_for_publishing() {
        let store = Store::temporary().unwrap();
        store.transact(|tx| tx.push_outbox(&row(1))).unwrap();
        assert_eq!(store.durable_outbox().count(), 0, "not flushed yet");
        store.flush().unwrap();
        store.transact(|tx| tx.push_outbox(&row(2))).unwrap();
        let durable: Vec<String> = store
            .durable_outbox()
            .map(|r| r.map(|(_, row)| row.bod_id))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(durable, vec!["b1".to_string()]);
        assert_eq!(store.outbox().count(), 2);
        store.flush().unwrap();
        assert_eq!(store.durable_outbox().count(), 2);
    }

    #[test]
    fn the_configured_store_opens_with_hub_store_cache_mb() {
        let dir = tempfile::tempdir().unwrap();
        let mut hub = crate::config::Hub::default();
        let path = dir.path().join("store");
        let store = Store::open_configured(&path, &hub).unwrap();
        assert_eq!(store.cache_bytes(), CACHE_BYTES);
        drop(store);
        hub.store_cache_mb = Some(16);
        let store = reopen_with(|| Store::open_configured(&path, &hub));
        assert_eq!(store.cache_bytes(), 16 * 1024 * 1024);
    }

    /// `release_deferred` pins crossbeam-epoch's default collector; it reaches sled's
    /// deferred frees only if sled uses the same crossbeam-epoch (one in the lock file).
    #[test]
    fn one_crossbeam_epoch_in_the_lock_file() {
        let lock =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
        let packages: Vec<&str> = lock.split("[[package]]").collect();
        let epochs = packages
            .iter()
            .filter(|p| p.contains("name = \"crossbeam-epoch\""))
            .count();
        assert_eq!(epochs, 1, "sled and bodflow must share one crossbeam-epoch");
        let sled = packages
            .iter()
            .find(|p| p.contains("name = \"sled\""))
            .unwrap();
        assert!(sled.contains("\"crossbeam-epoch\""), "{sled}");
    }

    #[test]
    fn a_flush_does_not_wait_for_a_running_transaction_nor_cover_it() {
        let store = std::sync::Arc::new(Store::temporary().unwrap());
        store.transact(|tx| tx.push_outbox(&row(1))).unwrap();
        let (inside, inside_rx) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                store
                    .transact(|tx| {
                        tx.push_outbox(&row(2))?;
                        inside.send(()).unwrap();
                        release_rx.recv().unwrap();
                        Ok(())
                    })
                    .unwrap()
            })
        };
        inside_rx.recv().unwrap();
        let (flushed, flushed_rx) = std::sync::mpsc::channel();
        {
            let store = store.clone();
            std::thread::spawn(move || flushed.send(store.flush().map(|_| ())).unwrap());
        }
        flushed_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the flush waited for the running transaction")
            .unwrap();
        let durable = |store: &Store| -> Vec<String> {
            store
                .durable_outbox()
                .map(|r| r.map(|(_, row)| row.bod_id))
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(
            durable(&store),
            ["b1"],
            "the running transaction is not covered"
        );
        release.send(()).unwrap();
        writer.join().unwrap();
        store.flush().unwrap();
        assert_eq!(durable(&store), ["b1", "b2"]);
    }

    #[test]
    fn rows_of_one_document_share_its_payload_which_goes_with_the_last_of_them() {
        let store = Store::temporary().unwrap();
        let big = format!("<x>{}</x>", "y".repeat(100_000));
        let row = |id: &str, payload: &str| Parked {
            payload: payload.into(),
            ..Parked::for_test(id, ParkReason::ManualLink, None)
        };
        let count = |prefix: u8| store.hub.scan_prefix([prefix]).count();
        let (a, b, c) = store
            .transact(|tx| {
                let a = tx.park(row("m-1", &big))?;
                let b = tx.park(row("m-1", &big))?;
                // Read back in the transaction that wrote it.
                assert_eq!(tx.parked(b)?.unwrap().payload.0, big.as_bytes());
                Ok((a, b, tx.park(row("m-2", "<other/>"))?))
            })
            .unwrap();
        assert_eq!(count(b'v'), 2, "one copy of each document's bytes");
        assert_eq!(count(b'f'), 3);
        let stored = store.hub.get(seq_key(b'p', a)).unwrap().unwrap();
        assert!(
            stored.len() < 1_000,
            "the row holds no copy: {} bytes",
            stored.len()
        );
        let payloads: Vec<Vec<u8>> = store.parked().map(|p| p.unwrap().payload.0).collect();
        assert_eq!(
            payloads,
            [big.as_bytes(), big.as_bytes(), b"<other/>".as_slice()]
        );

        store.transact(|tx| tx.unpark(a)).unwrap();
        assert_eq!(count(b'v'), 2, "the other row still needs it");
        assert_eq!(
            store
                .transact(|tx| tx.parked(b))
                .unwrap()
                .unwrap()
                .payload
                .0,
            big.as_bytes()
        );
        // The last row and the one of other bytes, in one transaction.
        store
            .transact(|tx| {
                tx.unpark(b)?;
                tx.unpark(c)
            })
            .unwrap();
        assert_eq!((count(b'v'), count(b'f'), count(b'p')), (0, 0, 0));

        // A row of an earlier version holds its payload inline, and is read as it was.
        let old = Parked {
            seq: 9,
            ..row("m-3", "<inline/>")
        };
        store
            .hub
            .insert(seq_key(b'p', 9), serde_json::to_vec(&old).unwrap())
            .unwrap();
        assert_eq!(store.parked().next().unwrap().unwrap(), old);
        store.transact(|tx| tx.unpark(9)).unwrap();
        assert_eq!(count(b'p'), 0);

        // A row whose payload is gone is a named error, not an empty document.
        let lost = store.transact(|tx| tx.park(row("m-4", "<lost/>"))).unwrap();
        let digest = blake3::hash(b"<lost/>").to_hex().to_string();
        store.hub.remove(payload_key(&digest)).unwrap();
        let e = store.parked().next().unwrap().unwrap_err();
        assert!(e.to_string().contains("payload is missing"), "{e}");
        assert!(store.transact(|tx| tx.parked(lost)).is_err());
    }

    #[test]
    fn no_match_parked_rows_are_indexed_woken_once_and_unindexed_on_release() {
        let store = Store::temporary().unwrap();
        let parked = |id: &str, reason, values: Vec<(MatchKey, String)>| Parked {
            seq: 0,
            message_id: format!("m-{id}"),
            reason,
            application: "lid://erp".into(),
            key: Some(XrefKey {
                kind: Kind::Account,
                application: "lid://erp".into(),
                accounting_entity: String::new(),
                id: id.into(),
            }),
            source: "s".into(),
            payload: "<x/>".into(),
            payload_ref: None,
            envelope: Default::default(),
            reply_to: None,
            match_values: values,
            noun: None,
        };
        let (a, b, c) = store
            .transact(|tx| {
                Ok((
                    tx.park(parked(
                        "A",
                        ParkReason::NoMatch,
                        vec![(MatchKey::AccountNumber, " E-1 ".into())],
                    ))?,
                    tx.park(parked(
                        "B",
                        ParkReason::NoMatch,
                        vec![
                            (MatchKey::AccountNumber, "e-1".into()),
                            (MatchKey::Email, "b@x.example".into()),
                        ],
                    ))?,
                    tx.park(parked("C", ParkReason::ManualLink, Vec::new()))?,
                ))
            })
            .unwrap();
        let woken = store
            .transact(|tx| {
                assert_eq!(
                    tx.wake_parked(Kind::Account, MatchKey::AccountNumber, "E-1")?,
                    2
                );
                assert_eq!(
                    tx.wake_parked(Kind::Account, MatchKey::Email, "B@x.example")?,
                    1
                );
                assert_eq!(
                    tx.wake_parked(Kind::Contact, MatchKey::AccountNumber, "E-1")?,
                    0
                );
                let woken = tx.take_woken();
                assert!(tx.take_woken().is_empty(), "taken once");
                Ok(woken)
            })
            .unwrap();
        assert_eq!(woken, vec![a, b], "each once, in parking order");
        // By their key too: a `no_match` row waits for its key to be linked; a
        // `manual_link` one for an operator (`bodflow link` finds it).
        let key_of = |id: &str| XrefKey {
            kind: Kind::Account,
            application: "lid://erp".into(),
            accounting_entity: String::new(),
            id: id.into(),
        };
        let by_key = store
            .transact(|tx| {
                assert_eq!(tx.wake_parked_for(&key_of("C"))?, 0);
                assert_eq!(tx.wake_parked_for(&key_of(""))?, 0, "a prefix of every key");
                tx.wake_parked_for(&key_of("A"))?;
                Ok(tx.take_woken())
            })
            .unwrap();
        assert_eq!(by_key, vec![a]);
        store.transact(|tx| tx.unpark(b)).unwrap();
        let left = store
            .transact(|tx| {
                tx.wake_parked(Kind::Account, MatchKey::AccountNumber, "e-1")?;
                tx.wake_parked(Kind::Account, MatchKey::Email, "b@x.example")?;
                Ok(tx.take_woken())
            })
            .unwrap();
        assert_eq!(left, vec![a], "a released row leaves every index entry");
        store.transact(|tx| tx.unpark(a)).unwrap();
        assert_eq!(store.hub.scan_prefix([b'n']).count(), 0);
        assert_eq!(store.hub.scan_prefix([b'q']).count(), 0);
        assert_eq!(store.parked().count(), 1);
        assert!(store.transact(|tx| tx.parked(c)).unwrap().is_some());
    }

    #[test]
    fn an_index_is_built_clean_and_the_list_names_only_complete_ones() {
        let store = Store::temporary().unwrap();
        let mut r = record("ACC-1");
        r.fields.communication.emails = vec!["new@acme.example".into()];
        store.transact(|tx| tx.put_record(&r)).unwrap();
        let list = || {
            let v = store.hub.get(key(b's', &["indexes"])).unwrap().unwrap();
            String::from_utf8(v.to_vec()).unwrap()
        };
        let matches = |value: &str| {
            store
                .transact(|tx| tx.matches(Kind::Account, MatchKey::Email, value))
                .unwrap()
        };
        store.ensure_indexes(&[MatchKey::Email]).unwrap();
        assert_eq!(matches("new@acme.example"), vec!["ACC-1".to_string()]);
        store.ensure_indexes(&[MatchKey::AccountNumber]).unwrap();
        assert!(matches("new@acme.example").is_empty(), "dropped");
        assert_eq!(list(), r#"["account_number"]"#);
        // What a drop that stopped half-way leaves: an entry of a key not in the list, for a
        // value no record has any more. Building the index again does not keep it.
        store
            .transact(|tx| {
                tx.index(
                    Kind::Account,
                    MatchKey::Email,
                    "old@acme.example",
                    "ACC-1",
                    true,
                )
            })
            .unwrap();
        store
            .ensure_indexes(&[MatchKey::AccountNumber, MatchKey::Email])
            .unwrap();
        assert!(matches("old@acme.example").is_empty());
        assert_eq!(matches("new@acme.example"), vec!["ACC-1".to_string()]);
    }

    #[test]
    fn a_tombstone_goes_when_its_key_gets_a_cross_reference_again() {
        let store = Store::temporary().unwrap();
        let key = XrefKey {
            kind: Kind::Account,
            application: "lid://a".into(),
            accounting_entity: "1".into(),
            id: "C1".into(),
        };
        let gone = Tombstone {
            record: "ACC-1".into(),
            variation: "7".into(),
            deleted_at: Some(1_000),
        };
        store.transact(|tx| tx.put_tombstone(&key, &gone)).unwrap();
        assert_eq!(
            store.transact(|tx| tx.tombstone(&key)).unwrap(),
            Some(gone.clone())
        );
        // In the same transaction as the tombstone, and in a later one.
        for _ in 0..2 {
            store
                .transact(|tx| {
                    tx.put_tombstone(&key, &gone)?;
                    tx.put_xref(&key, "ACC-2")?;
                    assert_eq!(tx.tombstone(&key)?, None);
                    Ok(())
                })
                .unwrap();
            assert_eq!(store.transact(|tx| tx.tombstone(&key)).unwrap(), None);
        }
        store.transact(|tx| tx.put_tombstone(&key, &gone)).unwrap();
        store.transact(|tx| tx.put_xref(&key, "ACC-3")).unwrap();
        assert_eq!(store.transact(|tx| tx.tombstone(&key)).unwrap(), None);
        assert_eq!(store.resolve(&key).unwrap().as_deref(), Some("ACC-3"));
        assert_eq!(
            store.hub.scan_prefix([b'h']).count(),
            0,
            "its place by age goes with it"
        );
    }

    pub(super) fn xref(id: &str) -> XrefKey {
        XrefKey {
            kind: Kind::Account,
            application: "lid://a".into(),
            accounting_entity: "1".into(),
            id: id.into(),
        }
    }

    fn deleted_at(at: u64) -> Tombstone {
        Tombstone {
            record: "ACC-1".into(),
            variation: "7".into(),
            deleted_at: Some(at),
        }
    }

    #[test]
    fn tombstones_older_than_the_retention_are_purged_oldest_first_in_chunks() {
        let store = Store::temporary().unwrap();
        store
            .transact(|tx| {
                for (id, at) in [("C3", 3_000), ("C1", 1_000), ("C2", 2_000), ("C9", 9_000)] {
                    tx.put_tombstone(&xref(id), &deleted_at(at))?;
                }
                Ok(())
            })
            .unwrap();
        // C2 came back (a newer document) and was deleted again later.
        store
            .transact(|tx| {
                tx.put_xref(&xref("C2"), "ACC-2")?;
                tx.put_tombstone(&xref("C2"), &deleted_at(8_000))
            })
            .unwrap();
        let left = |store: &Store| -> Vec<String> {
            ["C1", "C2", "C3", "C9"]
                .into_iter()
                .filter(|id| {
                    store
                        .transact(|tx| tx.tombstone(&xref(id)))
                        .unwrap()
                        .is_some()
                })
                .map(str::to_string)
                .collect()
        };
        assert_eq!(store.purge_tombstones(5_000, 1).unwrap(), (1, 1));
        assert_eq!(left(&store), ["C2", "C3", "C9"], "the oldest first");
        assert_eq!(store.purge_tombstones(5_000, 10).unwrap(), (1, 1));
        assert_eq!(left(&store), ["C2", "C9"], "C2's delete is younger");
        assert_eq!(store.purge_tombstones(5_000, 10).unwrap(), (0, 0));
        assert_eq!(store.purge_tombstones(8_001, 10).unwrap(), (1, 1));
        assert_eq!(left(&store), ["C9"]);
        assert_eq!(store.hub.scan_prefix([b'h']).count(), 1);

        // An unreadable tombstone neither stops the purge nor the key coming back.
        store
            .transact(|tx| tx.put_tombstone(&xref("C4"), &deleted_at(4_000)))
            .unwrap();
        store
            .transact(|tx| tx.put_tombstone(&xref("C5"), &deleted_at(4_500)))
            .unwrap();
        store
            .hub
            .insert(tombstone_key(&xref("C4")), b"{broken".to_vec())
            .unwrap();
        assert_eq!(store.purge_tombstones(5_000, 10).unwrap(), (2, 2));
        assert_eq!(left(&store), ["C9"]);
        store
            .hub
            .insert(tombstone_key(&xref("C6")), b"{broken".to_vec())
            .unwrap();
        store
            .transact(|tx| tx.put_xref(&xref("C6"), "ACC-6"))
            .unwrap();
        assert!(store.hub.get(tombstone_key(&xref("C6"))).unwrap().is_none());
    }

    #[test]
    fn tombstones_of_an_earlier_version_are_dated_at_the_first_open() {
        let dir = tempfile::tempdir().unwrap();
        let before = track::Millis::now().0;
        {
            let store = Store::open(dir.path()).unwrap();
            // As an earlier version wrote it: no time, no place by age, no meta entry.
            store
                .hub
                .insert(
                    tombstone_key(&xref("C1")),
                    encode(&Tombstone {
                        deleted_at: None,
                        ..deleted_at(0)
                    }),
                )
                .unwrap();
            store
                .hub
                .remove(key(b's', &["meta", TOMBSTONE_DATES_META]))
                .unwrap();
            store.flush().unwrap();
        }
        let store = reopen(dir.path());
        let dated = store
            .transact(|tx| tx.tombstone(&xref("C1")))
            .unwrap()
            .unwrap();
        let at = dated.deleted_at.expect("dated");
        assert!(at >= before, "{at} {before}");
        assert_eq!(
            store.purge_tombstones(at, 10).unwrap(),
            (0, 0),
            "not expired yet"
        );
        assert_eq!(store.purge_tombstones(at + 1, 10).unwrap(), (1, 1));
        assert!(store
            .transact(|tx| tx.tombstone(&xref("C1")))
            .unwrap()
            .is_none());
    }

    #[test]
    fn counters_indexes_and_waiting_children() {
        let store = Store::temporary().unwrap();
        let (a, b) = store
            .transact(|tx| Ok((tx.next("acc")?, tx.next("acc")?)))
            .unwrap();
        assert_eq!((a, b), (1, 2));
        // A damaged counter is an error, never a first value again.
        store.hub.insert(key(b's', &["acc"]), &b"\x01"[..]).unwrap();
        let e = store.transact(|tx| tx.next("acc")).unwrap_err();
        assert_eq!(e.code(), "store_corrupt", "{e}");
        store
            .hub
            .insert(key(b's', &["acc"]), &2u64.to_be_bytes()[..])
            .unwrap();
        store
            .transact(|tx| {
                tx.index(
                    Kind::Account,
                    MatchKey::Email,
                    " Info@Acme.example ",
                    "ACC-1",
                    true,
                )?;
                tx.index(
                    Kind::Account,
                    MatchKey::Email,
                    "info@acme.example",
                    "ACC-2",
                    true,
                )?;
                tx.index(
                    Kind::Account,
                    MatchKey::Email,
                    "info@acme.example",
                    "ACC-1",
                    false,
                )
            })
            .unwrap();
        let m = store
            .transact(|tx| tx.matches(Kind::Account, MatchKey::Email, "INFO@acme.example"))
            .unwrap();
        assert_eq!(m, vec!["ACC-2".to_string()]);
        let parent = XrefKey {
            kind: Kind::Account,
            application: "lid://a".into(),
            accounting_entity: "1".into(),
            id: "C9".into(),
        };
        store
            .transact(|tx| tx.set_waiting_children(&parent, &["CON-1".into()]))
            .unwrap();
        let w = store.transact(|tx| tx.waiting_children(&parent)).unwrap();
        assert_eq!(w, vec!["CON-1".to_string()]);
    }
}
