//! Resync ("Run Now"): send one application every record it may receive, as `Sync<Noun>`, for
//! an initial load or to repair drift.
//!
//! Input: an application's logical ID and the nouns to send (both by default: accounts
//! first, then contacts, so a receiver meets each account before its contacts). Output: outbox
//! rows, written through the store like every other emitted BOD, so whoever drains the outbox
//! publishes them — the running service's publisher, `bodflow resync` itself when it runs
//! offline, or `--out` files. Each row is built by [`Emitter::sync_to`], the code the fan-out
//! uses: the receiver's cross-reference ID (`Change`), or an empty ID with `actionCode="Add"`
//! for a record it has never seen, its country format and language, its outbound `fields`.
//!
//! Eligible: records that are neither deleted nor placeholders (a default account exists only
//! in the hub), whose noun's outbound flow for the application takes them (`update` for
//! records it knows, `create` for the others) and that the fan-out's rules let through
//! (unlinked, `require_classification`, the system of record's promotion). Records are read inside the transaction that
//! sends them, in chunks of [`CHUNK`], so a resync running beside the service's committer
//! sends each record as it is at that moment and holds the store's writer briefly.
//!
//! Each resync gets a run number from the store; its message id `resync:<n>:<logical ID>` is
//! the correlation id of every row it writes and the seed of their BODIDs. Failure modes: an
//! unknown or inactive application is refused before anything is written; a store error ends
//! the run (chunks already committed stay sent; a new run sends everything again, which
//! receivers take as an unchanged record — the variationID is the record's revision).

use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{Kind, StoreError};
use crate::telemetry::events::{emit, ResyncFinished};

use super::emit::Emitter;
use super::{Context, OutputReport, Pipeline};

/// Records per store transaction.
pub const CHUNK: usize = 256;

/// Who asked for a resync (a metric label and a log field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// `bodflow resync` on the store.
    Cli,
    /// `POST /resync` on the running service (also what `bodflow resync` uses then).
    Http,
    /// `resync_every` / `resync_at` in `bodflow run`.
    Schedule,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Cli => "cli",
            Trigger::Http => "http",
            Trigger::Schedule => "schedule",
        }
    }
}

/// What to resync.
#[derive(Debug, Clone)]
pub struct Request {
    /// The receiving application's logical ID.
    pub application: String,
    /// Nouns to send, in this order; empty = accounts, then contacts.
    pub nouns: Vec<Kind>,
    pub trigger: Trigger,
}

/// A resync that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error("{0:?} is not a configured application")]
    UnknownApplication(String),
    #[error("application {0:?} is inactive: nothing is sent to it (set active = true first)")]
    Inactive(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The service's blocking task running the resync failed (a panic, or shutdown).
    #[error("the resync task failed: {0}")]
    Task(String),
    /// The service is opening its store again after it could not write.
    #[error("the store is being opened again (it could not write); try again shortly")]
    StoreReopening,
}

impl ResyncError {
    pub fn code(&self) -> &'static str {
        match self {
            ResyncError::UnknownApplication(_) => "unknown_application",
            ResyncError::Inactive(_) => "inactive_application",
            ResyncError::Store(e) => e.code(),
            ResyncError::Task(_) => "resync_task_failed",
            ResyncError::StoreReopening => "store_reopening",
        }
    }
}

/// Counts for one noun.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NounCount {
    /// Records looked at.
    pub records: u64,
    /// `Sync<Noun>` written (`Add` + `Change`).
    pub sent: u64,
    /// Of those, `Add`s: records the application has no cross-reference for.
    pub added: u64,
    /// Deleted records and placeholders.
    pub skipped_deleted: u64,
    /// Records its outbound flow does not take (`create` / `update` off) or the rules keep
    /// from it (unlinked by an operator, a contact without its `require_classification`, an
    /// account Add to the promotion's system of record).
    pub skipped_flow: u64,
}

/// The result of a resync (also the JSON of `bodflow resync --json` and `POST /resync`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub application: String,
    /// The run's message id (correlation id of every row it wrote).
    pub run: String,
    pub trigger: Trigger,
    pub accounts: NounCount,
    pub contacts: NounCount,
    pub seconds: f64,
}

impl Summary {
    pub fn sent(&self) -> u64 {
        self.accounts.sent + self.contacts.sent
    }

    fn count_mut(&mut self, kind: Kind) -> &mut NounCount {
        match kind {
            Kind::Account => &mut self.accounts,
            Kind::Contact => &mut self.contacts,
        }
    }
}

type Ids<'p> = Box<dyn Iterator<Item = Result<(Kind, String), StoreError>> + 'p>;

/// A resync in progress: [`Resync::next_chunk`] until it returns `None`, then
/// [`Resync::finish`]. [`Pipeline::resync`] does all of it.
pub struct Resync<'p> {
    pipeline: &'p Pipeline,
    app: usize,
    ctx: Context,
    ids: Ids<'p>,
    total: u64,
    done: u64,
    /// BODIDs numbered so far (rows of later chunks continue the count).
    emitted: u32,
    started: Instant,
    started_at: DateTime<Utc>,
    summary: Summary,
}

/// Store meta key of an application's last resync (RFC 3339, UTC).
pub fn last_run_key(logical_id: &str) -> String {
    format!("resync.last.{logical_id}")
}

impl Pipeline {
    /// Starts a resync: checks the application, counts the records, takes a run number.
    pub fn start_resync(
        &self,
        request: &Request,
        now: DateTime<Utc>,
    ) -> Result<Resync<'_>, ResyncError> {
        let (app, application) = self
            .config
            .applications
            .iter()
            .enumerate()
            .find(|(_, a)| a.logical_id == request.application)
            .ok_or_else(|| ResyncError::UnknownApplication(request.application.clone()))?;
        if !application.active {
            return Err(ResyncError::Inactive(request.application.clone()));
        }
        let nouns = if request.nouns.is_empty() {
            vec![Kind::Account, Kind::Contact]
        } else {
            request.nouns.clone()
        };
        let mut total = 0;
        for kind in &nouns {
            for id in self.store.record_ids(*kind) {
                id?;
                total += 1;
            }
        }
        let n = self.store.transact(|tx| tx.next("resync"))?;
        let run = format!("resync:{n}:{}", application.logical_id);
        let store = &self.store;
        let ids: Ids<'_> = Box::new(nouns.into_iter().flat_map(move |kind| {
            store
                .record_ids(kind)
                .map(move |id| id.map(|id| (kind, id)))
        }));
        // A resync is not a message: its Syncs carry its run as correlation id.
        let ctx = Context::internal(
            format!("resync {}", application.logical_id),
            run.clone(),
            now,
        );
        Ok(Resync {
            pipeline: self,
            app,
            ctx,
            ids,
            total,
            done: 0,
            emitted: 0,
            started: Instant::now(),
            started_at: now,
            summary: Summary {
                application: application.logical_id.clone(),
                run,
                trigger: request.trigger,
                accounts: NounCount::default(),
                contacts: NounCount::default(),
                seconds: 0.0,
            },
        })
    }

    /// A whole resync; rows stay in the outbox for the publisher (flushed, so it may take
    /// them chunk by chunk while the resync goes on).
    pub fn resync(&self, request: &Request, now: DateTime<Utc>) -> Result<Summary, ResyncError> {
        let mut run = self.start_resync(request, now)?;
        while run.next_chunk()?.is_some() {}
        Ok(run.finish()?)
    }
}

impl Resync<'_> {
    /// Records to look at (counted when the resync started).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Records looked at so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Sends the next [`CHUNK`] records in one transaction, then flushes so the publisher may
    /// take the rows; returns the rows written (empty when none of them was eligible), or
    /// `None` when every record has been looked at.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<OutputReport>>, StoreError> {
        let ids: Vec<(Kind, String)> = self.ids.by_ref().take(CHUNK).collect::<Result<_, _>>()?;
        if ids.is_empty() {
            return Ok(None);
        }
        let config = &self.pipeline.config;
        let application = &config.applications[self.app];
        let ctx = &self.ctx;
        let first = self.emitted;
        let (outputs, counts, emitted) = self.pipeline.store.transact(|tx| {
            let mut em = Emitter::new(config, ctx).numbered_from(first);
            let mut counts: Vec<(Kind, NounCount)> = Vec::with_capacity(ids.len());
            for (kind, id) in &ids {
                let mut count = NounCount {
                    records: 1,
                    ..Default::default()
                };
                // Gone since the IDs were read (a hard delete in the meantime): nothing to send.
                let Some(record) = tx.record(id)? else {
                    count.skipped_deleted = 1;
                    counts.push((*kind, count));
                    continue;
                };
                if record.deleted || record.placeholder {
                    count.skipped_deleted = 1;
                } else {
                    let employer = em.employer_of(tx, &record)?;
                    let add = record.xref_for(&application.logical_id).is_none();
                    let mut shared = crate::bod::write::Shared::new();
                    let sent = em.sync_to(
                        tx,
                        application,
                        &record,
                        employer.as_ref(),
                        false,
                        &mut shared,
                    )?;
                    if sent {
                        count.sent = 1;
                        count.added = u64::from(add);
                    } else {
                        count.skipped_flow = 1;
                    }
                }
                counts.push((*kind, count));
            }
            let emitted = em.emitted();
            Ok((em.finish().0, counts, emitted))
        })?;
        self.pipeline.store.flush()?;
        self.emitted = emitted;
        for (kind, c) in counts {
            let total = self.summary.count_mut(kind);
            total.records += c.records;
            total.sent += c.sent;
            total.added += c.added;
            total.skipped_deleted += c.skipped_deleted;
            total.skipped_flow += c.skipped_flow;
        }
        self.done += ids.len() as u64;
        Ok(Some(outputs))
    }

    /// Records when the application was last resynced (for `resync_every`), reports the
    /// run, and returns its summary.
    pub fn finish(mut self) -> Result<Summary, StoreError> {
        self.pipeline.store.set_meta(
            &last_run_key(&self.summary.application),
            &self.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        )?;
        self.pipeline.store.flush()?;
        self.summary.seconds = self.started.elapsed().as_secs_f64();
        emit(ResyncFinished {
            summary: &self.summary,
        });
        Ok(self.summary)
    }
}

/// When the application was last resynced, if ever.
pub fn last_run(
    pipeline: &Pipeline,
    logical_id: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(pipeline
        .store
        .meta(&last_run_key(logical_id))?
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc)))
}
