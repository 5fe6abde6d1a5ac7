//! The staged pipeline: decode → validate → map country codes → assign owner → upsert → emit.
//!
//! `replay` and `run` both call [`Pipeline::prepare`] (pure: decode and the three stateless
//! stages, safe to run on any thread) and then [`Pipeline::commit_batch`] (one store
//! transaction over a group of documents: each one's change, message-id marker and every outbox
//! row it emits; [`Pipeline::commit`] is a group of one). A [`Report`] describes each result;
//! it is the replay JSON line (DESIGN §5.4).
//!
//! Every stage states what it decided and why as a [`Decision`]; the report lists them in
//! order and message tracking keeps them with the message's timeline ([`track`]: the commit
//! writes the timeline entry in the same transaction).
//!
//! Errors: every rejection is a [`Rejection`] (stage, stable code, message, XML path) and is a
//! *result*, not a failure. The only `Err` is a [`StoreError`]: transient, retried by callers.

pub mod country;
pub mod emit;
pub mod link;
pub mod owner;
pub mod promote;
pub mod release;
pub mod resync;
pub mod track;
pub mod upsert;
pub mod validate;

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::bod::{self, clipped, ApplicationArea, Bod, DecodeError, MAX_MESSAGE};
use crate::config::Config;
use crate::store::{
    Fields, Kind, Marker, Owner, ParkReason, Parked, Store, StoreError, Tx, TxResult, XrefKey,
};
use crate::telemetry::events::{emit, StageTimed};
use crate::telemetry::trace::TraceContext;

pub use track::Decision;

/// Where a document stopped or was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Decode,
    Validate,
    Country,
    Owner,
    Upsert,
    /// Writing the outputs; it never rejects, it only explains what it did not send.
    Emit,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Validate => "validate",
            Stage::Country => "country",
            Stage::Owner => "owner",
            Stage::Upsert => "upsert",
            Stage::Emit => "emit",
        }
    }
}

/// A coded refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub stage: Stage,
    pub code: &'static str,
    pub message: String,
    pub path: Option<String>,
}

impl Rejection {
    /// `[stage/code] message`, then ` at PATH` when the message does not name its path: how
    /// a text line shows a rejection (the JSON carries the path on its own).
    pub fn summary(&self) -> String {
        let mut s = format!("[{}/{}] {}", self.stage.as_str(), self.code, self.message);
        if let Some(path) = self.path.as_deref().filter(|p| !self.message.contains(p)) {
            s.push_str(" at ");
            s.push_str(path);
        }
        s
    }
}

impl From<DecodeError> for Rejection {
    fn from(e: DecodeError) -> Rejection {
        Rejection {
            stage: Stage::Decode,
            code: e.code(),
            message: clipped(&e.to_string(), MAX_MESSAGE).into_owned(),
            path: e.path().map(str::to_string),
        }
    }
}

/// What became of a document (DESIGN §5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    Duplicate,
    Stale,
    Rejected,
    Parked,
    Filtered,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Stale => "stale",
            Outcome::Rejected => "rejected",
            Outcome::Parked => "parked",
            Outcome::Filtered => "filtered",
        }
    }

    /// Precedence when a document's nouns end differently: the most telling wins.
    fn rank(self) -> u8 {
        match self {
            Outcome::Rejected => 5,
            Outcome::Parked => 4,
            Outcome::Applied => 3,
            Outcome::Stale => 2,
            Outcome::Duplicate => 1,
            Outcome::Filtered => 0,
        }
    }
}

/// What an applied document did to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Created,
    Updated,
    Linked,
    Deleted,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Linked => "linked",
            Action::Deleted => "deleted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Sync,
    Process,
    Acknowledge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    Upsert,
    Delete,
}

/// A validated document on its way through the stages.
#[derive(Debug)]
pub struct Doc {
    pub bod: Bod,
    /// Index of the sender's application in `config.applications`.
    pub app: usize,
    pub verb: Verb,
    pub items: Vec<Item>,
    /// Document-level decisions (validate), before the items' own.
    pub notes: Vec<Decision>,
}

/// One noun instance in hub terms.
#[derive(Debug, Clone)]
pub struct Item {
    pub kind: Kind,
    pub path: String,
    /// The sender's key; `id` is empty for a Process asking bodflow to assign one.
    pub key: XrefKey,
    /// Normalised variationID (digits, no leading zeros), if sent.
    pub variation: Option<String>,
    pub intent: Intent,
    pub fields: Fields,
    /// Country code as sent; the country stage maps it into `fields.address.country`.
    pub raw_country: Option<String>,
    pub country_path: String,
    /// Contacts: the sender's key of the account.
    pub employer: Option<XrefKey>,
    pub sales_persons: Vec<bod::SalesPerson>,
    pub match_values: Vec<(crate::config::MatchKey, String)>,
    /// Set by the owner stage.
    pub owner: Owner,
    /// Decisions and why, in stage order (shown by replay and tracking).
    pub notes: Vec<Decision>,
}

/// One inbound document and its delivery metadata.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub bytes: &'a [u8],
    /// File path or `amqp`.
    pub source: &'a str,
    /// AMQP `message_id`; a payload digest when absent.
    pub message_id: Option<&'a str>,
    /// AMQP `reply_to`: replies go there instead of the sender's queue.
    pub reply_to: Option<&'a str>,
    pub received_at: DateTime<Utc>,
    /// Set by operator actions that re-run a message id on purpose (releasing a parked
    /// document, replaying a dead letter): a `parked` or `rejected` marker of that id does not
    /// make it a duplicate. Plain redeliveries leave it false.
    pub retry: bool,
    /// The delivery's `correlation_id` and ION headers; `None` for files.
    pub envelope: Option<&'a crate::store::Envelope>,
}

impl<'a> Input<'a> {
    /// A file's document (`replay`, `check`): named by its payload digest, no `reply_to`, no
    /// envelope, not a retry. Set the other fields with struct update syntax.
    pub fn file(bytes: &'a [u8], source: &'a str, received_at: DateTime<Utc>) -> Input<'a> {
        Input {
            bytes,
            source,
            message_id: None,
            reply_to: None,
            received_at,
            retry: false,
            envelope: None,
        }
    }
}

/// The digest used as message id when a delivery has none (DESIGN §2).
pub fn payload_digest(bytes: &[u8]) -> String {
    let hash = blake3::hash(bytes);
    hash.to_hex()[..32].to_string()
}

/// Everything known about a document after the stateless stages.
#[derive(Debug)]
pub struct Prepared {
    pub ctx: Context,
    pub state: State,
}

impl Prepared {
    /// The report of a document whose transaction failed with `e` and was given up: nothing of
    /// it is stored; `rejected` with the store error's code.
    pub fn failed_commit(&self, e: &StoreError) -> Report {
        Report {
            error: Some(Rejection {
                stage: Stage::Upsert,
                code: e.code(),
                message: format!("{e}; nothing of the document was stored"),
                path: None,
            }),
            ..base_report(&self.ctx, Outcome::Rejected)
        }
    }
}

/// Delivery facts carried to commit and the report.
#[derive(Debug, Clone)]
pub struct Context {
    pub source: String,
    pub message_id: String,
    pub reply_to: Option<String>,
    pub now: String,
    /// [`Input::received_at`] in milliseconds since the Unix epoch (the tracking time).
    pub received_ms: u64,
    /// Payload size in bytes.
    pub size: usize,
    /// Message tracking is on (`tracking.enabled`): the commit records the timeline.
    pub track: bool,
    /// See [`Input::retry`].
    pub retry: bool,
    /// The parked row this run releases: removed in the same transaction (a document that
    /// parks again gets a new row).
    pub unpark: Option<u64>,
    /// The noun (its path) that parked row waits for, when the release runs that noun only
    /// ([`release::prepare`]), or that a replay of the row's dead letter runs
    /// ([`crate::store::Envelope::noun`]).
    pub released_noun: Option<String>,
    /// The sender's ApplicationArea when it could be read (decoded, or sniffed from a broken
    /// document) — needed to answer with a ConfirmBOD.
    pub area: Option<ApplicationArea>,
    pub verb: Option<String>,
    pub noun: Option<String>,
    pub tenant: Option<String>,
    /// The document's bytes, kept for parking.
    pub payload: crate::store::Payload,
    /// The delivery's `correlation_id` and ION headers (empty for files).
    pub envelope: crate::store::Envelope,
    /// Which run of the message id this is ([`Marker::run`]): set by the commit.
    pub run: u32,
    /// The trace this document's processing belongs to (set by the consumer from the
    /// delivery's `traceparent`; `None` offline): outbox rows carry it on.
    pub trace: Option<TraceContext>,
    /// The delivery as it came (set by the consumer for a document that is or may be
    /// rejected; `None` offline): a rejection dead-letters it through the outbox, in the
    /// transaction that records the rejection ([`dead_letter`]).
    pub delivered: Option<Arc<crate::store::Delivered>>,
}

impl Context {
    /// The context of work bodflow starts itself (an operator action, a resync) rather than a
    /// delivered document: no payload, no reply_to, not tracked as a message; emitted BODIDs
    /// derive from `message_id`. A delivered document's context is this one with its
    /// reply_to, size, tracking and retry added ([`prepare`]).
    pub(crate) fn internal(source: String, message_id: String, now: DateTime<Utc>) -> Context {
        Context {
            source,
            message_id,
            reply_to: None,
            now: now.to_rfc3339_opts(SecondsFormat::Secs, true),
            received_ms: u64::try_from(now.timestamp_millis()).unwrap_or(0),
            size: 0,
            track: false,
            retry: false,
            unpark: None,
            released_noun: None,
            area: None,
            verb: None,
            noun: None,
            tenant: None,
            payload: Default::default(),
            envelope: Default::default(),
            run: 0,
            trace: None,
            delivered: None,
        }
    }
}

#[derive(Debug)]
pub enum State {
    Rejected {
        rejection: Rejection,
        /// The sender's application, when known (ConfirmBOD goes to it).
        app: Option<usize>,
        /// Process documents also get an `Acknowledge<Noun>` Rejected.
        process: Option<RejectedProcess>,
    },
    Inactive {
        app: usize,
    },
    Ready(Box<Doc>),
}

/// What an `Acknowledge<Noun>` Rejected needs of the Process it answers.
#[derive(Debug, Clone)]
pub struct RejectedProcess {
    pub kind: Kind,
    /// `Process/@acknowledgeCode` (Never suppresses the Acknowledge).
    pub acknowledge_code: Option<String>,
    /// The first noun's IDs as sent.
    pub ids: Vec<bod::Id>,
}

/// One output of a document, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct OutputReport {
    pub kind: String,
    pub to: String,
    pub file: Option<String>,
    #[serde(skip)]
    pub seq: u64,
    /// The emitted document's BODID (tracking shows it; not part of the replay line).
    #[serde(skip)]
    pub bod_id: String,
}

/// The result of one document (DESIGN §5.4 replay line).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub source: String,
    pub message_id: String,
    pub bod_id: Option<String>,
    pub verb: Option<String>,
    pub noun: Option<String>,
    pub sender: Option<String>,
    pub outcome: Outcome,
    pub action: Option<Action>,
    pub record: Option<String>,
    pub owner: Option<String>,
    pub country: Option<String>,
    pub error: Option<Rejection>,
    pub outputs: Vec<OutputReport>,
    /// Every noun's result when a document carries more than one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nouns: Vec<NounReport>,
    /// Why: each stage's decision in order ("country DEU→DE (iso3)", "owner U-JSMITH: ..."),
    /// serialized as their text.
    pub decisions: Vec<Decision>,
    /// A parked document this one's change released: the message id of that change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released_by: Option<String>,
    /// Parked documents this document's change released in its transaction, in order (each
    /// has its own report line; see [`release`]).
    #[serde(skip)]
    pub released: Vec<Report>,
    /// Where a parked document waits (tracking shows it; `bodflow parked list` lists it).
    #[serde(skip)]
    pub parked: Option<ParkedAs>,
}

/// The parked row a document was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParkedAs {
    pub reason: ParkReason,
    pub seq: u64,
}

/// Result for one noun instance.
#[derive(Debug, Clone, Serialize)]
pub struct NounReport {
    pub path: String,
    pub outcome: Outcome,
    pub action: Option<Action>,
    pub record: Option<String>,
}

/// The pipeline: configuration plus store.
#[derive(Clone)]
pub struct Pipeline {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
}

impl Pipeline {
    /// A pipeline over a store; brings the store's match indexes in line with the
    /// configuration first.
    pub fn new(config: Arc<Config>, store: Arc<Store>) -> Result<Pipeline, StoreError> {
        store.ensure_indexes(&config.indexed_keys())?;
        Ok(Pipeline { config, store })
    }

    /// Decode, validate, map country codes, assign owner. Pure; never touches the store.
    pub fn prepare(&self, input: &Input<'_>) -> Prepared {
        prepare(&self.config, input)
    }

    /// Applies a prepared document in one store transaction.
    pub fn commit(&self, prepared: &Prepared) -> Result<Report, StoreError> {
        let config = &self.config;
        self.store.transact(|tx| timed_commit(tx, config, prepared))
    }

    /// Applies documents in order in one store transaction (group commit): each document's
    /// effects are still all-or-nothing, and later documents see earlier ones. Fewer, larger
    /// transactions are what makes the store keep up.
    pub fn commit_batch(&self, batch: &[Prepared]) -> Result<Vec<Report>, StoreError> {
        let config = &self.config;
        self.store.transact(|tx| {
            batch
                .iter()
                .map(|p| timed_commit(tx, config, p))
                .collect::<TxResult<Vec<_>>>()
        })
    }

    /// prepare + commit.
    pub fn process(&self, input: &Input<'_>) -> Result<Report, StoreError> {
        let prepared = self.prepare(input);
        self.commit(&prepared)
    }

    /// Re-runs a parked document through the whole pipeline under the current configuration,
    /// as a deliberate retry of its message id — only the noun the row waits for, when one
    /// noun parked it ([`release::prepare`]). Its parked row goes in the same transaction;
    /// if it parks again (its application is still inactive, still no match), it gets a new
    /// row. Its replies and Syncs go to the outbox like any other document's.
    pub fn release(&self, parked: &Parked, now: DateTime<Utc>) -> Result<Report, StoreError> {
        let mut prepared = release::prepare(&self.config, parked, now, None);
        // Its delivery's trace is not kept with it: the release starts a trace of its own.
        prepared.ctx.trace = Some(TraceContext::root());
        self.commit(&prepared)
    }

    /// Refuses a parked document for an operator (`bodflow parked reject`): in one
    /// transaction its row goes, and it is refused like any document bodflow cannot take —
    /// stage `upsert`, code [`REJECTED_BY_OPERATOR`], `note` in the reason — as a deliberate
    /// retry of its message id: the sender gets its ConfirmBOD as it asked (a `Process`, its
    /// `Acknowledge` Rejected), a delivered document's copy goes to `bodflow.dead` (so
    /// `bodflow dlq replay` can bring it back), and its marker says `rejected`. For the
    /// documents no release can place (a `Process` without an ID under `manual`) or that
    /// should never be (test data).
    ///
    /// A refusal is of a whole document, so the row of one noun of a document that has others
    /// is not refused (`Ok(Err(..))`): they were applied or wait in rows of their own, and a
    /// refusal would answer for them too (and a replay of its dead letter run them again).
    pub fn reject_parked(
        &self,
        parked: &Parked,
        operator: &str,
        note: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Result<Report, String>, StoreError> {
        if parked.noun.is_some() {
            let nouns = bod::parse(&parked.payload.0, self.config.limits.into())
                .map_or(1, |bod| bod.nouns.len());
            if nouns > 1 {
                return Ok(Err(format!(
                    "row {} is one of the {nouns} nouns of message {}: the others were applied \
                     or wait in rows of their own, so it cannot be refused alone (link or \
                     release it)",
                    parked.seq, parked.message_id
                )));
            }
        }
        let refusal = Rejection {
            stage: Stage::Upsert,
            code: REJECTED_BY_OPERATOR,
            message: clipped(
                &format!(
                    "rejected by operator {operator} while parked ({}){}",
                    parked.reason.code(),
                    note.map(|n| format!(": {n}")).unwrap_or_default()
                ),
                MAX_MESSAGE,
            )
            .into_owned(),
            path: None,
        };
        let mut prepared = release::prepare(&self.config, parked, now, Some(&refusal));
        prepared.ctx.trace = Some(TraceContext::root());
        self.commit(&prepared).map(Ok)
    }

    /// Releases every document parked because its application was inactive, for the
    /// applications active now (after a configuration change). A row that cannot be read or
    /// released stays parked, with a warning, and the others go on: one bad row must not keep
    /// the service from starting. Returns the reports and how many rows failed.
    pub fn release_reactivated(&self, now: DateTime<Utc>) -> (Vec<Report>, usize) {
        let mut failed = 0;
        let mut reports = Vec::new();
        for parked in self.store.parked() {
            let parked = match parked {
                Ok(p) => p,
                Err(e) => {
                    failed += 1;
                    tracing::warn!(error = %e, code = e.code(), "A parked row cannot be read; it stays in the store");
                    continue;
                }
            };
            let reactivated = parked.reason == ParkReason::InactiveApplication
                && self
                    .config
                    .application(&parked.application)
                    .is_some_and(|(_, a)| a.active);
            if !reactivated {
                continue;
            }
            match self.release(&parked, now) {
                Ok(report) => reports.push(report),
                Err(e) => {
                    failed += 1;
                    tracing::warn!(seq = parked.seq, message_id = %parked.message_id, error = %e, code = e.code(), "A parked document could not be released; it stays parked");
                }
            }
        }
        (reports, failed)
    }
}

/// [`commit_in`], timed as stage `upsert`.
fn timed_commit(tx: &Tx<'_>, config: &Config, prepared: &Prepared) -> TxResult<Report> {
    let started = Instant::now();
    let report = commit_in(tx, config, prepared);
    emit(StageTimed {
        stage: Stage::Upsert.as_str(),
        seconds: started.elapsed().as_secs_f64(),
    });
    report
}

/// Emits the time since `since` as `stage` and restarts the clock.
fn lap(stage: Stage, since: &mut Instant) {
    let now = Instant::now();
    emit(StageTimed {
        stage: stage.as_str(),
        seconds: now.duration_since(*since).as_secs_f64(),
    });
    *since = now;
}

/// One document's effects inside a transaction, then the parked documents its change released.
fn commit_in(tx: &Tx<'_>, config: &Config, prepared: &Prepared) -> TxResult<Report> {
    let mut report = commit_one(tx, config, prepared)?;
    release::release_woken(tx, config, &prepared.ctx, &mut report)?;
    Ok(report)
}

/// One document's effects inside a transaction.
fn commit_one(tx: &Tx<'_>, config: &Config, prepared: &Prepared) -> TxResult<Report> {
    let ctx = &prepared.ctx;
    // The markers it writes are dated by the pipeline's clock (`replay --now` included).
    tx.set_clock(crate::store::track::Millis(ctx.received_ms));
    if let Some(seq) = ctx.unpark {
        // Released already (an operator's list read before an automatic release took it):
        // nothing left to do.
        if !tx.is_parked(seq)? {
            let mut report = base_report(ctx, Outcome::Duplicate);
            report.decisions.push(Decision::new(
                Stage::Upsert,
                format!("parked row {seq} was released already"),
            ));
            return Ok(report);
        }
        // bodflow failed on the released document (a bug): its parked row is its only copy
        // (a release has no delivery to dead-letter), so it stays parked.
        if let State::Rejected { rejection, .. } = &prepared.state {
            if rejection.code == INTERNAL_ERROR {
                let mut report = base_report(ctx, Outcome::Parked);
                report.error = Some(rejection.clone());
                report.decisions.push(Decision::new(
                    rejection.stage,
                    format!("kept parked (row {seq}): bodflow failed on it"),
                ));
                return Ok(report);
            }
        }
        tx.unpark(seq)?;
    }
    let previous = tx.marker(&ctx.message_id)?;
    // The marker that makes this a duplicate, if it does.
    let blocking = previous.as_ref().filter(|m| upsert::blocks(m, ctx));
    // A deliberate retry of a message id is its next run: its outputs get BODIDs of their own.
    let retry;
    let ctx = match &previous {
        Some(m) if blocking.is_none() => {
            retry = Context {
                run: m.run + 1,
                ..ctx.clone()
            };
            &retry
        }
        _ => ctx,
    };
    if ctx.track {
        let runs = previous.as_ref().map(|m| m.tracked.as_slice());
        tx.begin_run(&ctx.message_id, runs.unwrap_or_default(), ctx.received_ms)?;
    }
    let report = apply_in(tx, config, ctx, &prepared.state, blocking)?;
    if blocking.is_none() {
        note_parked_nouns(tx, ctx, &prepared.state, &report, previous.as_ref())?;
    }
    dead_letter(tx, ctx, &report)?;
    if ctx.track {
        track::record(tx, ctx, &report, previous)?;
    }
    Ok(report)
}

/// Keeps [`Marker::parked`] of a run that wrote its marker: the nouns parked before that still
/// wait (a noun's release takes its own off; a run of the whole document starts afresh), plus
/// those this run parked.
fn note_parked_nouns(
    tx: &Tx<'_>,
    ctx: &Context,
    state: &State,
    report: &Report,
    previous: Option<&Marker>,
) -> TxResult<()> {
    // A run of one noun (its row's release, a replay of that row's dead letter) keeps the
    // others listed; a run of the whole document lists afresh.
    let mut parked: Vec<String> = match (&ctx.released_noun, previous) {
        (Some(noun), Some(m)) => m.parked.iter().filter(|p| *p != noun).cloned().collect(),
        _ => Vec::new(),
    };
    let now_parked: Vec<&str> = match state {
        State::Ready(doc) => match doc.items.as_slice() {
            [item] if report.parked.is_some() => vec![item.path.as_str()],
            _ => report
                .nouns
                .iter()
                .filter(|n| n.outcome == Outcome::Parked)
                .map(|n| n.path.as_str())
                .collect(),
        },
        // A noun's row parked again for an inactive application.
        State::Inactive { .. } => ctx.released_noun.as_deref().into_iter().collect(),
        State::Rejected { .. } => Vec::new(),
    };
    for path in now_parked {
        if !parked.iter().any(|p| p == path) {
            parked.push(path.to_string());
        }
    }
    // The nouns whose rows a release refused and dead-lettered ([`Marker::refused`]): a run of
    // one noun takes it off, and adds it again when refused with a dead letter; a run of the
    // whole document ran them all, and starts afresh (a replay of such a noun's dead letter
    // is then a duplicate).
    let mut refused: Vec<String> = match (&ctx.released_noun, previous) {
        (Some(_), Some(m)) => m.refused.clone(),
        _ => Vec::new(),
    };
    if let Some(noun) = &ctx.released_noun {
        refused.retain(|n| n != noun);
        if report.outcome == Outcome::Rejected && ctx.delivered.is_some() {
            refused.push(noun.clone());
        }
    }
    if parked.is_empty()
        && refused.is_empty()
        && previous.is_none_or(|m| m.parked.is_empty() && m.refused.is_empty())
    {
        return Ok(());
    }
    if let Some(mut marker) = tx.marker(&ctx.message_id)? {
        if marker.parked != parked || marker.refused != refused {
            marker.parked = parked;
            marker.refused = refused;
            tx.put_marker(&ctx.message_id, &marker)?;
        }
    }
    Ok(())
}

/// A rejected delivery goes to the dead-letter queue through the outbox: a row holding the
/// delivery as it came and the rejection, written with the rejection's marker and ConfirmBOD
/// — so a delivery is dead-lettered exactly when its rejection is recorded, whether that was
/// decided by `prepare` or by the commit (an Acknowledge with an unknown correlation), and a
/// dead-letter queue that refuses messages holds up nothing but its own rows.
fn dead_letter(tx: &Tx<'_>, ctx: &Context, report: &Report) -> TxResult<()> {
    let (Some(delivered), Some(e)) = (&ctx.delivered, &report.error) else {
        return Ok(());
    };
    if report.outcome != Outcome::Rejected {
        return Ok(());
    }
    tx.push_outbox(&crate::store::OutboxRow {
        kind: DEAD_LETTER.into(),
        to: crate::amqp::topology::DEAD_QUEUE.into(),
        reply_to: None,
        bod_id: ctx.message_id.clone(),
        correlation_id: ctx.message_id.clone(),
        reply_correlation_id: None,
        document_name: String::new(),
        tenant: None,
        // The copy keeps the delivery's own headers, its trace's among them.
        traceparent: None,
        tracestate: None,
        tracked: None,
        variation: None,
        xml: String::new(),
        dead_letter: Some(Box::new(crate::store::DeadLetterRow {
            delivered: (**delivered).clone(),
            stage: e.stage.as_str().into(),
            code: e.code.into(),
            reason: e.message.clone(),
            path: e.path.clone(),
        })),
    })?;
    Ok(())
}

/// The `kind` of an outbox row that dead-letters a delivery.
pub const DEAD_LETTER: &str = "DeadLetter";

/// One document's effects; a duplicate's report when `blocking` (its message id's marker) says
/// it was processed before.
fn apply_in(
    tx: &Tx<'_>,
    config: &Config,
    ctx: &Context,
    state: &State,
    blocking: Option<&Marker>,
) -> TxResult<Report> {
    if let Some(m) = blocking {
        return Ok(upsert::duplicate_message(ctx, m).into_report(ctx, None));
    }
    match state {
        State::Rejected {
            rejection,
            app,
            process,
        } => {
            let mut em = emit::Emitter::new(config, ctx);
            em.rejection(tx, *app, rejection, process.as_ref())?;
            upsert::put_marker(tx, ctx, Outcome::Rejected, None)?;
            let mut report = base_report(ctx, Outcome::Rejected);
            report.error = Some(rejection.clone());
            (report.outputs, report.decisions) = em.finish();
            Ok(report)
        }
        State::Inactive { app } => {
            let application = &config.applications[*app];
            let seq = tx.park(Parked {
                seq: 0,
                message_id: ctx.message_id.clone(),
                reason: ParkReason::InactiveApplication,
                application: application.logical_id.clone(),
                key: None,
                source: ctx.source.clone(),
                payload: ctx.payload.clone(),
                payload_ref: None,
                envelope: ctx.envelope.clone(),
                reply_to: ctx.reply_to.clone(),
                match_values: Vec::new(),
                // A noun's row stays that noun's row.
                noun: ctx.released_noun.clone(),
            })?;
            upsert::put_marker(tx, ctx, Outcome::Parked, None)?;
            let mut report = base_report(ctx, Outcome::Parked);
            report.decisions.push(Decision::new(
                Stage::Validate,
                format!(
                    "parked: application {:?} is inactive (released on re-activation)",
                    application.name
                ),
            ));
            report.parked = Some(ParkedAs {
                reason: ParkReason::InactiveApplication,
                seq,
            });
            Ok(report)
        }
        State::Ready(doc) => {
            let applied = upsert::apply(tx, config, ctx, doc)?;
            Ok(applied.into_report(ctx, Some(doc)))
        }
    }
}

fn base_report(ctx: &Context, outcome: Outcome) -> Report {
    Report {
        source: ctx.source.clone(),
        message_id: ctx.message_id.clone(),
        bod_id: ctx.area.as_ref().and_then(|a| a.bod_id.clone()),
        verb: ctx.verb.clone(),
        noun: ctx.noun.clone(),
        sender: ctx.area.as_ref().and_then(|a| a.logical_id.clone()),
        outcome,
        action: None,
        record: None,
        owner: None,
        country: None,
        error: None,
        outputs: Vec::new(),
        nouns: Vec::new(),
        decisions: Vec::new(),
        released_by: None,
        released: Vec::new(),
        parked: None,
    }
}

/// The stateless stages.
pub fn prepare(config: &Config, input: &Input<'_>) -> Prepared {
    prepare_refusing(config, input, None)
}

/// [`prepare`]; with `refusal`, the document is refused with it once its header is read (an
/// operator's refusal of a parked document: [`release::prepare`]).
fn prepare_refusing(config: &Config, input: &Input<'_>, refusal: Option<&Rejection>) -> Prepared {
    // A panic here is a bug of bodflow's that this document triggers. Left to unwind, it would
    // end the service's session, and the redelivered document would end the next one, for
    // ever. It is refused instead, like any document bodflow cannot take, under the stage it
    // was in and code `internal_error`: the sender gets its ConfirmBOD, the document goes to
    // the dead-letter queue, and the others go on.
    let mut prepared = guarded(config, input, |stage| {
        prepare_unguarded(config, input, refusal, stage)
    });
    // A replay of a noun's dead letter (`x-bodflow-noun`) runs that noun, as its row would.
    if let Some(noun) = input.envelope.and_then(|e| e.noun.as_deref()) {
        if input.retry {
            only_noun(&mut prepared, noun);
        }
    }
    prepared
}

/// Restricts a document to its noun at `path` (the row of one noun, released or replayed) and
/// notes it in [`Context::released_noun`]. Should the document have no such noun (a row of a
/// version whose paths differed, a replay with another body), it runs whole. A document
/// refused before its nouns were read, or parked again for an inactive application, is still
/// that noun's.
fn only_noun(prepared: &mut Prepared, path: &str) {
    match &mut prepared.state {
        State::Ready(doc) => {
            if let Some(at) = doc.items.iter().position(|item| item.path == path) {
                doc.items = vec![doc.items.swap_remove(at)];
                prepared.ctx.released_noun = Some(path.to_string());
            }
        }
        State::Rejected { .. } | State::Inactive { .. } => {
            prepared.ctx.released_noun = Some(path.to_string());
        }
    }
}

/// Runs `work` (a prepare that sets the stage it is in), turning its panic into the refusal
/// [`prepare`] describes.
fn guarded(
    config: &Config,
    input: &Input<'_>,
    work: impl FnOnce(&std::cell::Cell<Stage>) -> Prepared,
) -> Prepared {
    let stage = std::cell::Cell::new(Stage::Decode);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&stage)));
    result.unwrap_or_else(|panic| {
        let what = crate::panic_message(&*panic);
        let mut ctx = context(config, input);
        tracing::error!(stage = stage.get().as_str(), message_id = %ctx.message_id, panic = %what, "bodflow failed on a document (a bug); it is refused with internal_error");
        ctx.area = emit::sniff_area(input.bytes);
        let app = sender_app(config, ctx.area.as_ref());
        Prepared {
            ctx,
            state: State::Rejected {
                rejection: Rejection {
                    stage: stage.get(),
                    code: INTERNAL_ERROR,
                    message: format!("bodflow failed on this document (a bug, please report it): {what}"),
                    path: None,
                },
                app,
                process: None,
            },
        }
    })
}

/// The code of a document bodflow failed on (a panic: a bug).
pub const INTERNAL_ERROR: &str = "internal_error";

/// The code of a parked document an operator refused ([`Pipeline::reject_parked`]).
pub const REJECTED_BY_OPERATOR: &str = "rejected_by_operator";

/// The context every prepared document starts from.
fn context(config: &Config, input: &Input<'_>) -> Context {
    let message_id = input
        .message_id
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| payload_digest(input.bytes));
    Context {
        reply_to: input.reply_to.map(str::to_string),
        envelope: input.envelope.cloned().unwrap_or_default(),
        size: input.bytes.len(),
        track: config.tracking.enabled,
        retry: input.retry,
        ..Context::internal(input.source.to_string(), message_id, input.received_at)
    }
}

/// [`prepare`]'s work; `stage` follows the stage it is in.
fn prepare_unguarded(
    config: &Config,
    input: &Input<'_>,
    refusal: Option<&Rejection>,
    stage: &std::cell::Cell<Stage>,
) -> Prepared {
    let mut ctx = context(config, input);
    let reject = |ctx: Context, rejection: Rejection, app, process| Prepared {
        ctx,
        state: State::Rejected {
            rejection,
            app,
            process,
        },
    };

    let mut clock = Instant::now();
    let parsed = bod::parse(input.bytes, config.limits.into());
    lap(Stage::Decode, &mut clock);
    stage.set(Stage::Validate);
    let mut bod = match parsed {
        Ok(bod) => bod,
        Err(e) => {
            // Best effort: a broken document may still name its sender, who asked for a
            // ConfirmBOD.
            ctx.area = emit::sniff_area(input.bytes);
            // As `fill_from_envelope` takes it: only a value a document could carry.
            if let Some(from) = ctx
                .envelope
                .from_logical_id
                .as_deref()
                .map(str::trim)
                .filter(|v| bod::is_plain_logical_id(v))
            {
                let area = ctx.area.get_or_insert_with(Default::default);
                area.logical_id.get_or_insert_with(|| from.to_string());
            }
            let app = sender_app(config, ctx.area.as_ref());
            // An operator's refusal stands even when the bytes no longer parse (limits
            // lowered since the document was parked).
            let rejection = refusal.cloned().unwrap_or_else(|| e.into());
            return reject(ctx, rejection, app, None);
        }
    };
    fill_from_envelope(&mut bod, &ctx.envelope);
    ctx.area = Some(bod.area.clone());
    ctx.verb = Some(bod.verb.clone());
    ctx.noun = Some(bod.noun.clone());
    // Echoed on every reply (element and `tenantId` header) only when validation would take
    // it: an over-long value must not reach a header or the ConfirmBOD that refuses it.
    ctx.tenant = bod
        .header
        .tenant_id
        .clone()
        .filter(|t| t.chars().count() <= validate::MAX_ENTITY);
    let app = sender_app(config, ctx.area.as_ref());
    let process = (bod.verb == "Process")
        .then(|| Kind::from_noun(&bod.noun))
        .flatten()
        .map(|kind| RejectedProcess {
            kind,
            acknowledge_code: bod.header.acknowledge_code.clone(),
            ids: match bod.nouns.first() {
                Some(bod::Noun::Account(p)) => p.ids.clone(),
                Some(bod::Noun::Contact(c)) => c.ids.clone(),
                _ => Vec::new(),
            },
        });
    if let Some(refusal) = refusal {
        return reject(ctx, refusal.clone(), app, process);
    }

    let checked = validate::validate(bod, config);
    lap(Stage::Validate, &mut clock);
    stage.set(Stage::Country);
    let mut doc = match checked {
        Ok(validate::Checked::Doc(doc)) => doc,
        Ok(validate::Checked::Inactive { app }) => {
            ctx.payload = crate::store::Payload(input.bytes.to_vec());
            return Prepared {
                ctx,
                state: State::Inactive { app },
            };
        }
        Err(e) => return reject(ctx, e.into(), app, process),
    };
    let application = &config.applications[doc.app];
    let mapped = country::map_inbound(&mut doc, application);
    lap(Stage::Country, &mut clock);
    stage.set(Stage::Owner);
    if let Err(e) = mapped {
        return reject(ctx, e.into(), app, process);
    }
    owner::assign(&mut doc, application, config);
    lap(Stage::Owner, &mut clock);
    if needs_payload(application) {
        ctx.payload = crate::store::Payload(input.bytes.to_vec());
    }
    Prepared {
        ctx,
        state: State::Ready(doc),
    }
}

/// What the document leaves out and its ION envelope says (DESIGN §5.3): the sender
/// (`fromLogicalId`), the tenant (`tenantId`) and, for a document of one noun, that noun's
/// variation (`variationId`). The document's own values always win; ION stamps the headers
/// from the same document, so they only ever fill gaps (a sender that leaves
/// `Sender/LogicalID` to the bus, say). A header value the document's own element would be
/// refused for is ignored, as if absent: a refusal would name a path the document does not
/// have.
fn fill_from_envelope(bod: &mut Bod, envelope: &crate::store::Envelope) {
    /// Whether it filled the slot.
    fn fill(
        slot: &mut Option<String>,
        value: &Option<String>,
        takes: impl Fn(&str) -> bool,
    ) -> bool {
        if slot.as_deref().is_none_or(|s| s.trim().is_empty()) {
            if let Some(v) = value.as_deref().map(str::trim).filter(|v| takes(v)) {
                *slot = Some(v.to_string());
                return true;
            }
        }
        false
    }
    bod.from_envelope.sender = fill(&mut bod.area.logical_id, &envelope.from_logical_id, |v| {
        bod::is_plain_logical_id(v)
    });
    bod.from_envelope.tenant = fill(&mut bod.header.tenant_id, &envelope.tenant_id, |v| {
        !v.is_empty() && v.chars().count() <= validate::MAX_ENTITY
    });
    if let [noun] = bod.nouns.as_mut_slice() {
        let ids = match noun {
            bod::Noun::Account(p) => &mut p.ids,
            bod::Noun::Contact(c) => &mut c.ids,
            bod::Noun::Other { .. } => return,
        };
        if let Some(id) = ids.first_mut() {
            fill(&mut id.variation, &envelope.variation_id, |v| {
                !v.is_empty() && v.len() <= 38 && v.bytes().all(|b| b.is_ascii_digit())
            });
        }
    }
}

/// Policies that may park a document need its bytes in the transaction.
fn needs_payload(app: &crate::config::Application) -> bool {
    use crate::config::CreatePolicy::*;
    matches!(app.create_policy, MatchOrCreate | MatchOnly | Manual)
}

fn sender_app(config: &Config, area: Option<&ApplicationArea>) -> Option<usize> {
    area.and_then(|a| a.logical_id.as_deref())
        .and_then(|lid| config.application(lid))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_line_names_the_path_a_message_leaves_out() {
        let rejection = |message: &str, path: Option<&str>| Rejection {
            stage: Stage::Validate,
            code: "wrong_tenant",
            message: message.into(),
            path: path.map(str::to_string),
        };
        let at = "/SyncCustomerPartyMaster/DataArea/Sync/TenantID";
        assert_eq!(
            rejection("TenantID \"X\" is not hub.tenant", Some(at)).summary(),
            format!("[validate/wrong_tenant] TenantID \"X\" is not hub.tenant at {at}")
        );
        assert_eq!(
            rejection(&format!("{at}: required"), Some(at)).summary(),
            format!("[validate/wrong_tenant] {at}: required")
        );
        assert_eq!(
            rejection("not XML", None).summary(),
            "[validate/wrong_tenant] not XML"
        );
    }

    #[test]
    fn the_ion_envelope_fills_what_the_document_leaves_out_and_never_overrides_it() {
        let config = Config::from_toml(
            "[[applications]]\nname = \"ln\"\nlogical_id = \"lid://ln\"\n",
            "t",
        )
        .unwrap();
        let doc = |sender: &str, tenant: &str, variation: &str| {
            format!(
                "<SyncCustomerPartyMaster><ApplicationArea>{sender}<BODID>b-1</BODID></ApplicationArea>\
                 <DataArea><Sync>{tenant}</Sync><CustomerPartyMaster><PartyIDs><ID{variation}>C1</ID></PartyIDs>\
                 <Name>Acme</Name></CustomerPartyMaster></DataArea></SyncCustomerPartyMaster>"
            )
        };
        let envelope = crate::store::Envelope {
            correlation_id: Some("rpc-7".into()),
            from_logical_id: Some("lid://ln".into()),
            to_logical_id: Some("lid://bodflow".into()),
            tenant_id: Some("T1".into()),
            variation_id: Some("42".into()),
            retry: None,
            noun: None,
        };
        let run = |bytes: &str, envelope: Option<&crate::store::Envelope>| {
            prepare(
                &config,
                &Input {
                    message_id: Some("m-1"),
                    envelope,
                    ..Input::file(bytes.as_bytes(), "test", Utc::now())
                },
            )
        };
        let bare = doc("", "", "");
        let without = run(&bare, None);
        assert!(
            matches!(&without.state, State::Rejected { rejection, .. } if rejection.code == "missing_field" || rejection.code == "unknown_sender"),
            "{:?}",
            without.state
        );
        let filled = run(&bare, Some(&envelope));
        let State::Ready(d) = &filled.state else {
            panic!("{:?}", filled.state)
        };
        assert_eq!(d.items[0].variation.as_deref(), Some("42"));
        assert_eq!(filled.ctx.tenant.as_deref(), Some("T1"));
        assert_eq!(filled.ctx.envelope.correlation_id.as_deref(), Some("rpc-7"));
        // Header values the document's elements would be refused for are ignored.
        let odd = run(
            &bare,
            Some(&crate::store::Envelope {
                tenant_id: Some("T".repeat(40)),
                variation_id: Some("abc".into()),
                ..envelope.clone()
            }),
        );
        let State::Ready(d) = &odd.state else {
            panic!("{:?}", odd.state)
        };
        assert_eq!(d.items[0].variation, None);
        assert_eq!(odd.ctx.tenant, None);
        // The document's own values win.
        let own = run(
            &doc(
                "<Sender><LogicalID>lid://ln</LogicalID></Sender>",
                "<TenantID>T9</TenantID>",
                " variationID=\"5\"",
            ),
            Some(&crate::store::Envelope {
                from_logical_id: Some("lid://other".into()),
                ..envelope.clone()
            }),
        );
        let State::Ready(d) = &own.state else {
            panic!("{:?}", own.state)
        };
        assert_eq!(d.items[0].variation.as_deref(), Some("5"));
        assert_eq!(own.ctx.tenant.as_deref(), Some("T9"));
        assert_eq!(
            own.ctx.area.as_ref().and_then(|a| a.logical_id.as_deref()),
            Some("lid://ln")
        );
        // A header value refused for what it says names the header, under the path where the
        // document would have carried it; the document's own value is refused without the
        // note.
        let tenanted = Config::from_toml(
            "[hub]\ntenant = \"T1\"\n[[applications]]\nname = \"ln\"\nlogical_id = \"lid://ln\"\n",
            "t",
        )
        .unwrap();
        let own_tenant = doc("", "<TenantID>OTHER</TenantID>", "");
        let tenant: fn(&mut crate::store::Envelope) = |e| e.tenant_id = Some("OTHER".into());
        let sender: fn(&mut crate::store::Envelope) =
            |e| e.from_logical_id = Some("lid://nobody".into());
        let cases = [
            (
                &bare,
                tenant,
                "wrong_tenant",
                "DataArea/Sync/TenantID",
                Some("tenantId"),
            ),
            (
                &bare,
                sender,
                "unknown_sender",
                "ApplicationArea/Sender/LogicalID",
                Some("fromLogicalId"),
            ),
            (
                &own_tenant,
                tenant,
                "wrong_tenant",
                "DataArea/Sync/TenantID",
                None,
            ),
        ];
        for (bytes, set, code, path, header) in cases {
            let mut sent = envelope.clone();
            set(&mut sent);
            let prepared = prepare(
                &tenanted,
                &Input {
                    message_id: Some("m-2"),
                    envelope: Some(&sent),
                    ..Input::file(bytes.as_bytes(), "test", Utc::now())
                },
            );
            let State::Rejected { rejection: r, .. } = prepared.state else {
                panic!("{code}: {:?}", prepared.state)
            };
            assert_eq!(r.code, code);
            assert_eq!(
                r.path.as_deref(),
                Some(format!("/SyncCustomerPartyMaster/{path}").as_str())
            );
            match header {
                Some(h) => assert!(
                    r.message.contains(&format!("AMQP header {h}")),
                    "{}",
                    r.message
                ),
                None => assert!(!r.message.contains("AMQP header"), "{}", r.message),
            }
        }
        // A document that cannot be read takes its sender from the header only when it could
        // be a logical ID.
        let broken = |from: &str| {
            let prepared = run(
                "<SyncCustomerPartyMaster><Broken",
                Some(&crate::store::Envelope {
                    from_logical_id: Some(from.into()),
                    ..envelope.clone()
                }),
            );
            prepared.ctx.area.and_then(|a| a.logical_id)
        };
        assert_eq!(broken("lid://ln").as_deref(), Some("lid://ln"));
        assert_eq!(broken(&"x".repeat(4000)), None);
    }

    #[test]
    fn a_rejected_delivery_gets_one_dead_letter_row_a_run_beside_its_confirm() {
        let config = Config::from_toml(
            "[[applications]]\nname = \"ln\"\nlogical_id = \"lid://ln\"\n",
            "t",
        )
        .unwrap();
        assert!(config.tracking.enabled);
        let store = Arc::new(Store::temporary().unwrap());
        let pipeline = Pipeline::new(Arc::new(config), store.clone()).unwrap();
        // No Name: rejected by validation.
        let bytes = b"<SyncCustomerPartyMaster><ApplicationArea><Sender><LogicalID>lid://ln</LogicalID>\
            </Sender><BODID>b-1</BODID></ApplicationArea><DataArea><Sync/><CustomerPartyMaster>\
            <PartyIDs><ID>C1</ID></PartyIDs></CustomerPartyMaster></DataArea></SyncCustomerPartyMaster>";
        let delivered = Arc::new(crate::store::Delivered {
            routing_key: "Sync.CustomerPartyMaster".into(),
            properties: vec![7, 8],
            payload: bytes.to_vec(),
        });
        let run =
            |message_id: &str, retry: bool, delivered: Option<Arc<crate::store::Delivered>>| {
                let mut prepared = pipeline.prepare(&Input {
                    message_id: Some(message_id),
                    retry,
                    ..Input::file(bytes, "test", Utc::now())
                });
                prepared.ctx.delivered = delivered;
                pipeline.commit(&prepared).unwrap()
            };
        let rows =
            || -> Vec<crate::store::OutboxRow> { store.outbox().map(|r| r.unwrap().1).collect() };
        let dead = || {
            rows()
                .into_iter()
                .filter_map(|r| r.dead_letter)
                .collect::<Vec<_>>()
        };

        let first = run("m-1", false, Some(delivered.clone()));
        assert_eq!(first.outcome, Outcome::Rejected);
        let error = first.error.clone().unwrap();
        let copies = dead();
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].delivered, *delivered);
        assert_eq!(
            (
                copies[0].stage.as_str(),
                copies[0].code.as_str(),
                &copies[0].reason
            ),
            (error.stage.as_str(), error.code, &error.message)
        );
        assert_eq!(copies[0].path, error.path);
        let all = rows();
        let confirm = all.iter().find(|r| r.kind == "ConfirmBOD").unwrap();
        assert!(
            confirm.tracked.is_some(),
            "the ConfirmBOD keeps its place on the timeline"
        );
        let copy = all.iter().find(|r| r.dead_letter.is_some()).unwrap();
        assert_eq!((copy.kind.as_str(), copy.tracked), (DEAD_LETTER, None));

        // A redelivery is a duplicate: no second copy.
        assert_eq!(
            run("m-1", false, Some(delivered.clone())).outcome,
            Outcome::Duplicate
        );
        assert_eq!(dead().len(), 1);
        // A deliberate retry is rejected again and dead-lettered again.
        assert_eq!(
            run("m-1", true, Some(delivered.clone())).outcome,
            Outcome::Rejected
        );
        assert_eq!(dead().len(), 2);
        // A file (no delivery) has nothing to dead-letter.
        assert_eq!(run("m-2", false, None).outcome, Outcome::Rejected);
        assert_eq!(dead().len(), 2);

        // A dead-letter replay names itself (`x-bodflow-retry`): the same replay delivered
        // again (a crash after its commit, before its ack) is a duplicate, another replay runs.
        let replay = |token: &str| {
            let envelope = crate::store::Envelope {
                retry: Some(token.into()),
                ..Default::default()
            };
            let mut prepared = pipeline.prepare(&Input {
                message_id: Some("m-1"),
                retry: true,
                envelope: Some(&envelope),
                ..Input::file(bytes, "test", Utc::now())
            });
            prepared.ctx.delivered = Some(delivered.clone());
            pipeline.commit(&prepared).unwrap()
        };
        assert_eq!(replay("r-1").outcome, Outcome::Rejected);
        assert_eq!(dead().len(), 3);
        let again = replay("r-1");
        assert_eq!(again.outcome, Outcome::Duplicate);
        assert!(again.outputs.is_empty());
        assert_eq!(dead().len(), 3, "no second copy of the same replay");
        assert_eq!(replay("r-2").outcome, Outcome::Rejected);
        assert_eq!(dead().len(), 4);
        assert_eq!(
            store.marker("m-1").unwrap().unwrap().retry.as_deref(),
            Some("r-2")
        );
    }

    #[test]
    fn a_panic_while_preparing_refuses_the_document_under_its_stage() {
        let config = Config::from_toml(
            r#"
[[applications]]
name = "ln"
logical_id = "lid://ln"
"#,
            "t",
        )
        .unwrap();
        let bytes = br#"<SyncCustomerPartyMaster><ApplicationArea><Sender><LogicalID>lid://ln</LogicalID></Sender><BODID>b-1</BODID></ApplicationArea><DataArea/></SyncCustomerPartyMaster>"#;
        let input = Input {
            message_id: Some("m-1"),
            ..Input::file(bytes, "test", Utc::now())
        };
        let prepared = guarded(&config, &input, |stage| {
            stage.set(Stage::Country);
            panic!("boom at {}", 42)
        });
        let State::Rejected { rejection, app, .. } = &prepared.state else {
            panic!("not rejected: {:?}", prepared.state)
        };
        assert_eq!(rejection.stage, Stage::Country);
        assert_eq!(rejection.code, "internal_error");
        assert!(
            rejection.message.contains("boom at 42"),
            "{}",
            rejection.message
        );
        // The sender is still named, so it gets the ConfirmBOD it asks for.
        assert_eq!(*app, Some(0));
        assert_eq!(prepared.ctx.message_id, "m-1");
        // Released from parking, it stays parked: the row is its only copy.
        let store = Arc::new(Store::temporary().unwrap());
        let seq = store
            .transact(|tx| {
                tx.park(Parked {
                    seq: 0,
                    message_id: "m-1".into(),
                    reason: ParkReason::InactiveApplication,
                    application: "lid://ln".into(),
                    key: None,
                    source: "test".into(),
                    payload: crate::store::Payload(bytes.to_vec()),
                    payload_ref: None,
                    envelope: Default::default(),
                    reply_to: None,
                    match_values: Vec::new(),
                    noun: None,
                })
            })
            .unwrap();
        let pipeline = Pipeline::new(Arc::new(config.clone()), store.clone()).unwrap();
        let mut released = guarded(&config, &input, |_| panic!("boom"));
        released.ctx.unpark = Some(seq);
        let report = pipeline.commit(&released).unwrap();
        assert_eq!(report.outcome, Outcome::Parked);
        assert_eq!(report.error.map(|e| e.code), Some(INTERNAL_ERROR));
        assert_eq!(store.parked().count(), 1);
        assert!(store.marker("m-1").unwrap().is_none());
        // Without a panic, the work's own result.
        let fine = guarded(&config, &input, |_| prepare(&config, &input));
        assert!(!matches!(
            &fine.state,
            State::Rejected { rejection, .. } if rejection.code == "internal_error"
        ));
    }
}
