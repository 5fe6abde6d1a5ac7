//! Operator linking (`bodflow link` / `bodflow unlink`, DESIGN §3 "upsert" identity).
//!
//! - [`Pipeline::link`] gives a hub record an application's ID (its cross-reference) in one
//!   store transaction, which also moves contacts that were waiting for that account, runs
//!   the documents parked for that key (`manual_link`, `no_match`, `ambiguous_match`) through
//!   the pipeline — they now find the record through the cross-reference — and appends an
//!   [`AuditEntry`] to the record's trail.
//! - [`Pipeline::unlink`] removes an application's cross-references from a record but keeps
//!   the record: the application no longer masters any of its fields (its next document for
//!   that ID follows its create policy again) and receives no outbound Syncs for it until it
//!   is linked again. Audited the same way.
//!
//! Refusals are [`Refused`] values with stable codes (the CLI prints them and exits 1); the
//! only `Err` is a store failure.

use chrono::{DateTime, Utc};

use crate::store::{AuditEntry, Kind, ParkReason, Parked, StoreError, Xref, XrefKey};

use super::emit::Emitter;
use super::{release, upsert, Context, Decision, Outcome, Pipeline, Report, Stage};

/// What `bodflow link` asks for.
#[derive(Debug, Clone)]
pub struct LinkRequest<'a> {
    /// The application's logical ID (a configured one; a `/suffix` form is accepted).
    pub application: &'a str,
    pub accounting_entity: &'a str,
    /// The application's ID for the record.
    pub id: &'a str,
    /// The hub record.
    pub record: &'a str,
    /// The noun, when given: it must be the record's.
    pub kind: Option<Kind>,
    pub operator: &'a str,
    pub now: DateTime<Utc>,
}

/// What `bodflow unlink` asks for.
#[derive(Debug, Clone)]
pub struct UnlinkRequest<'a> {
    pub application: &'a str,
    pub record: &'a str,
    pub operator: &'a str,
    pub now: DateTime<Utc>,
}

/// Why a link or unlink was not done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0:?} is not a configured application")]
    UnknownApplication(String),
    #[error("no hub record {0}")]
    RecordNotFound(String),
    #[error("{record} is a {actual:?} record, not a {asked:?}")]
    KindMismatch {
        record: String,
        actual: Kind,
        asked: Kind,
    },
    #[error("{key} is already linked to {record}")]
    IdLinkedElsewhere { key: String, record: String },
    #[error("{record} is already linked to {application} as {id:?} (unlink it first)")]
    RecordAlreadyLinked {
        record: String,
        application: String,
        id: String,
    },
    #[error("{record} has no cross-reference for {application}")]
    NotLinked { record: String, application: String },
    #[error("an application ID must not be empty")]
    EmptyId,
    #[error("{0} is deleted")]
    RecordDeleted(String),
}

impl Refused {
    pub fn code(&self) -> &'static str {
        match self {
            Refused::UnknownApplication(_) => "unknown_application",
            Refused::RecordNotFound(_) => "record_not_found",
            Refused::KindMismatch { .. } => "kind_mismatch",
            Refused::IdLinkedElsewhere { .. } => "id_linked_elsewhere",
            Refused::RecordAlreadyLinked { .. } => "record_already_linked",
            Refused::NotLinked { .. } => "not_linked",
            Refused::EmptyId => "empty_id",
            Refused::RecordDeleted(_) => "record_deleted",
        }
    }
}

/// A done link or unlink: its audit entry and, for a link, the report of the action with the
/// parked documents it released in [`Report::released`] and what it emitted in
/// [`Report::outputs`] (Syncs of contacts that were waiting for the account).
#[derive(Debug, Clone)]
pub struct Done {
    pub audit: AuditEntry,
    pub report: Report,
}

/// A decision of an operator action (stage `upsert`: it changes a record's cross-references).
fn upsert_note(text: String) -> Decision {
    Decision::new(Stage::Upsert, text)
}

/// The context of an operator action: emitted BODIDs derive from `message_id`. Recorded in the
/// record's audit, not tracked (the documents it releases are tracked as theirs).
pub(super) fn operator_context(action: &str, message_id: String, now: DateTime<Utc>) -> Context {
    Context {
        // An operator action starts a trace of its own for what it emits.
        trace: Some(crate::telemetry::trace::TraceContext::root()),
        ..Context::internal(format!("bodflow {action}"), message_id, now)
    }
}

impl Pipeline {
    /// Links `request.record` to the application's ID, then applies the documents parked for
    /// that key, all in one transaction (see the module docs).
    pub fn link(&self, request: &LinkRequest<'_>) -> Result<Result<Done, Refused>, StoreError> {
        let config = &self.config;
        let Some((app_index, app)) = config.application(request.application) else {
            return Ok(Err(Refused::UnknownApplication(
                request.application.to_string(),
            )));
        };
        if request.id.trim().is_empty() {
            return Ok(Err(Refused::EmptyId));
        }
        let Some(current) = self.store.record(request.record)? else {
            return Ok(Err(Refused::RecordNotFound(request.record.to_string())));
        };
        let kind = current.kind;
        if let Some(asked) = request.kind.filter(|k| *k != kind) {
            return Ok(Err(Refused::KindMismatch {
                record: current.id,
                actual: kind,
                asked,
            }));
        }
        let key = XrefKey {
            kind,
            application: app.logical_id.clone(),
            accounting_entity: request.accounting_entity.trim().to_string(),
            id: request.id.trim().to_string(),
        };
        // Documents parked for exactly this key; read before the transaction (the writer
        // lock is not held for a scan), without their payloads, re-read by sequence inside
        // it. A row that cannot be read is no other key's concern.
        let waiting: Vec<u64> = self
            .store
            .parked_rows()
            .filter_map(|p| match p {
                Ok(p) if waits_for(&p, &key) => Some(Ok(p.seq)),
                Ok(_) => None,
                Err(e @ crate::store::StoreError::Corrupt { .. }) => {
                    tracing::warn!(error = %e, "A parked row that cannot be read is left out");
                    None
                }
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()?;
        let ctx = operator_context(
            "link",
            format!(
                "link:{}:{}:{}",
                key.display(),
                request.record,
                request.now.timestamp_millis()
            ),
            request.now,
        );
        self.store.transact(|tx| {
            let Some(mut record) = tx.record(request.record)? else {
                return Ok(Err(Refused::RecordNotFound(request.record.to_string())));
            };
            if record.deleted {
                return Ok(Err(Refused::RecordDeleted(record.id)));
            }
            if let Some(other) = tx.xref(&key)? {
                return Ok(Err(Refused::IdLinkedElsewhere {
                    key: key.display(),
                    record: other,
                }));
            }
            if let Some(x) = record.xref_for(&app.logical_id) {
                return Ok(Err(Refused::RecordAlreadyLinked {
                    record: record.id.clone(),
                    application: app.logical_id.clone(),
                    id: x.id.clone(),
                }));
            }
            record.xrefs.push(Xref {
                application: key.application.clone(),
                accounting_entity: key.accounting_entity.clone(),
                id: key.id.clone(),
                variation: String::new(),
            });
            record.unlinked.retain(|a| *a != app.logical_id);
            let mut notes = vec![format!(
                "linked {} to {} by {}",
                key.display(),
                record.id,
                request.operator
            )];
            upsert::take_over_placeholder(&mut record, app, &key, &mut notes);
            record.revision += 1;
            tx.put_record(&record)?;
            tx.put_xref(&key, &record.id)?;

            let mut report = super::base_report(&ctx, Outcome::Applied);
            report.action = Some(super::Action::Linked);
            report.record = Some(record.id.clone());
            let mut em = Emitter::new(config, &ctx);
            if kind == Kind::Account {
                upsert::relink_waiting(tx, app_index, &key, &record.id, &mut em, &mut notes)?;
            }
            report
                .decisions
                .extend(notes.into_iter().map(|n| Decision::new(Stage::Upsert, n)));
            let emitted;
            (report.outputs, emitted) = em.finish();
            report.decisions.extend(emitted);
            for seq in &waiting {
                let Some(parked) = release::woken_row(tx, *seq, &mut report)? else {
                    continue;
                };
                let mut released = release::rerun(tx, config, &parked, request.now)?;
                report.decisions.push(upsert_note(format!(
                    "released parked message {} ({}, {}): {}",
                    parked.message_id,
                    parked.source,
                    parked.reason.code(),
                    released.outcome.as_str()
                )));
                released.released_by = Some(ctx.message_id.clone());
                report.released.push(released);
            }
            release::release_woken(tx, config, &ctx, &mut report)?;
            let audit = AuditEntry {
                at: ctx.now.clone(),
                operator: request.operator.to_string(),
                action: "link".into(),
                application: app.logical_id.clone(),
                accounting_entity: key.accounting_entity.clone(),
                app_id: key.id.clone(),
                record: record.id.clone(),
                released: report
                    .released
                    .iter()
                    .map(|r| r.message_id.clone())
                    .collect(),
            };
            tx.put_audit(&audit)?;
            Ok(Ok(Done { audit, report }))
        })
    }

    /// Removes the application's cross-references from the record (see the module docs).
    pub fn unlink(&self, request: &UnlinkRequest<'_>) -> Result<Result<Done, Refused>, StoreError> {
        let config = &self.config;
        let Some((_, app)) = config.application(request.application) else {
            return Ok(Err(Refused::UnknownApplication(
                request.application.to_string(),
            )));
        };
        let ctx = operator_context(
            "unlink",
            format!(
                "unlink:{}:{}:{}",
                app.logical_id,
                request.record,
                request.now.timestamp_millis()
            ),
            request.now,
        );
        self.store.transact(|tx| {
            let Some(mut record) = tx.record(request.record)? else {
                return Ok(Err(Refused::RecordNotFound(request.record.to_string())));
            };
            let (removed, kept): (Vec<Xref>, Vec<Xref>) = record
                .xrefs
                .drain(..)
                .partition(|x| x.application == app.logical_id);
            record.xrefs = kept;
            if removed.is_empty() {
                return Ok(Err(Refused::NotLinked {
                    record: record.id.clone(),
                    application: app.logical_id.clone(),
                }));
            }
            for x in &removed {
                tx.remove_xref(&x.key(record.kind))?;
            }
            if !record.unlinked.contains(&app.logical_id) {
                record.unlinked.push(app.logical_id.clone());
            }
            record.revision += 1;
            tx.put_record(&record)?;
            let mut report = super::base_report(&ctx, Outcome::Applied);
            report.action = Some(super::Action::Updated);
            report.record = Some(record.id.clone());
            let ids: Vec<String> = removed.iter().map(|x| x.key(record.kind).display()).collect();
            report.decisions.push(upsert_note(format!(
                "unlinked {} from {} by {}: no more Syncs to {}, its next document follows its create policy",
                ids.join(", "),
                record.id,
                request.operator,
                app.name
            )));
            let audit = AuditEntry {
                at: ctx.now.clone(),
                operator: request.operator.to_string(),
                action: "unlink".into(),
                application: app.logical_id.clone(),
                accounting_entity: removed
                    .first()
                    .map(|x| x.accounting_entity.clone())
                    .unwrap_or_default(),
                app_id: removed
                    .iter()
                    .map(|x| x.id.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                record: record.id.clone(),
                released: Vec::new(),
            };
            tx.put_audit(&audit)?;
            Ok(Ok(Done { audit, report }))
        })
    }
}

/// Whether a parked document waits for an operator's link of `key`.
fn waits_for(parked: &Parked, key: &XrefKey) -> bool {
    matches!(
        parked.reason,
        ParkReason::ManualLink | ParkReason::NoMatch | ParkReason::AmbiguousMatch
    ) && parked.key.as_ref() == Some(key)
}
