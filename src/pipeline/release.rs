//! Automatic release of parked `no_match` documents (DESIGN §3 "upsert", `match_only`).
//!
//! A `match_only` document that finds no record is parked `no_match` and indexed in the store
//! under the values it matches on (its application's `match_on` keys: account number,
//! external number, e-mail, normalised like [`crate::store::normalize_match`]). Whenever a
//! change puts one of those values on a record of the same kind — a record is created, or
//! updated so that it now carries it (the CRM user types the ERP account number on the CRM
//! account; the CRM's Sync arrives) — the upsert stage wakes the documents parked under it
//! ([`crate::store::Tx::wake_parked`]), and `release_woken` re-runs them through the whole
//! pipeline **in the same store transaction**, right after the document that woke them.
//!
//! Why the same transaction: the change that makes a parked document placeable and that
//! document's release commit together or not at all, so a crash can neither lose a release
//! (no "ready" state to recover on start-up) nor apply one twice (the parked row, its index
//! entries and its message-id marker change in the same write set). Each released document
//! is a deliberate retry of its own message id: it is applied and linked, or parked again
//! with its current reason (a new parked row); its replies and Syncs go to the outbox like
//! any document's.
//!
//! The triggering document's report says which parked messages it released (`decisions`),
//! and each released document gets its own [`Report`] in [`Report::released`] (with
//! [`Report::released_by`] naming the trigger), which `replay` prints as its own line.

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::store::{Parked, Tx, TxResult};

use super::{Context, Decision, Input, Prepared, Rejection, Report, Stage};

/// Rounds of releases one document may cause (a released document's change may release
/// others). Bounds the work of one transaction; documents left over stay parked and indexed
/// and are released by the next change that carries their value, or by an operator.
const MAX_ROUNDS: usize = 16;

/// Re-runs the parked documents the transaction's changes so far have woken, attaching their
/// reports to `report` (the document whose change woke them).
pub(super) fn release_woken(
    tx: &Tx<'_>,
    config: &Config,
    trigger: &Context,
    report: &mut Report,
) -> TxResult<()> {
    for _ in 0..MAX_ROUNDS {
        let woken = tx.take_woken();
        if woken.is_empty() {
            return Ok(());
        }
        for seq in woken {
            let Some(parked) = woken_row(tx, seq, report)? else {
                continue;
            };
            let mut released = rerun(tx, config, &parked, received_at(trigger))?;
            report.decisions.push(Decision::new(
                Stage::Upsert,
                format!(
                    "released parked message {} ({}, {}): {}{}",
                    parked.message_id,
                    parked.source,
                    parked.reason.code(),
                    released.outcome.as_str(),
                    released
                        .record
                        .as_deref()
                        .map(|r| format!(" {r}"))
                        .unwrap_or_default()
                ),
            ));
            released.released_by = Some(trigger.message_id.clone());
            report.released.push(released);
        }
    }
    let left = tx.take_woken();
    if !left.is_empty() {
        tracing::warn!(
            message_id = %trigger.message_id,
            left = left.len(),
            "Release chain too long; the remaining documents stay parked"
        );
    }
    Ok(())
}

/// A parked row a change woke, to release in this transaction: `None` when it was released
/// (or re-parked under a new sequence) earlier in it, or cannot be read — that row stays
/// parked, named in `report`'s decisions and a warning, and holds up neither the change that
/// woke it nor the other rows (`bodflow parked list` names it too).
pub(super) fn woken_row(tx: &Tx<'_>, seq: u64, report: &mut Report) -> TxResult<Option<Parked>> {
    match tx.parked(seq) {
        Ok(row) => Ok(row),
        Err(e @ crate::store::StoreError::Corrupt { .. }) => {
            tracing::warn!(seq, error = %e, "A parked row that cannot be read stays parked");
            report.decisions.push(Decision::new(
                Stage::Upsert,
                format!("parked row {seq} cannot be read and stays parked: {e}"),
            ));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Runs a parked document through the pipeline inside `tx`, as a deliberate retry of its
/// message id ([`prepare`]); its parked row (and index entries) go in the same transaction.
pub(super) fn rerun(
    tx: &Tx<'_>,
    config: &Config,
    parked: &Parked,
    received_at: DateTime<Utc>,
) -> TxResult<Report> {
    super::commit_one(tx, config, &prepare(config, parked, received_at, None))
}

/// A parked row's document prepared for its release: the whole pipeline again, under the
/// current configuration, as a deliberate retry of its message id that removes the row in
/// its transaction.
///
/// A row that one noun's upsert parked ([`Parked::noun`]) runs that noun only. The
/// document's other nouns were applied when it came (again, a `Process` noun without an ID
/// would create a second record) or wait in rows of their own (again, they would park
/// twice). Should the noun not be found (the row of a version whose paths differed), the
/// whole document runs, as it did before rows named their noun. A row whose noun was
/// released since it was read, or that a retry of the document made redundant, is a
/// duplicate ([`crate::store::Marker::parked`]).
///
/// With `refusal` (an operator's), the document is refused with it as soon as its header is
/// read, instead of being checked and placed: answered, recorded and dead-lettered like any
/// refusal ([`super::Pipeline::reject_parked`]).
pub(super) fn prepare(
    config: &Config,
    parked: &Parked,
    received_at: DateTime<Utc>,
    refusal: Option<&Rejection>,
) -> Prepared {
    let input = Input {
        bytes: &parked.payload.0,
        envelope: Some(&parked.envelope),
        source: &parked.source,
        message_id: Some(&parked.message_id),
        reply_to: parked.reply_to.as_deref(),
        received_at,
        retry: true,
    };
    let mut prepared = super::prepare_refusing(config, &input, refusal);
    prepared.ctx.unpark = Some(parked.seq);
    // A delivery's row is its only copy (the delivery was acked when it parked), so a release
    // that rejects it dead-letters it as its delivery would have been (a file's document is
    // still its file). A noun's row is dead-lettered with the whole document and the noun's
    // path in `x-bodflow-noun`: a replay of it runs that noun only, as the release did — the
    // document's other nouns were applied when it came (a `Process` noun without an ID would
    // create a second record) or wait in rows of their own.
    if parked.source == crate::amqp::SOURCE {
        prepared.ctx.delivered = Some(std::sync::Arc::new(crate::amqp::parked_delivery(
            &parked.message_id,
            &parked.envelope,
            parked.reply_to.as_deref(),
            &parked.payload.0,
            parked.noun.as_deref(),
        )));
    }
    if let Some(path) = &parked.noun {
        super::only_noun(&mut prepared, path);
    }
    prepared
}

/// The trigger's processing time, so a released document's replies carry the same time as
/// the change that released it (and replay output stays reproducible).
fn received_at(ctx: &Context) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&ctx.now)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now())
}
