//! Decisions and message tracking: what each stage decided about a document, and the entry
//! the commit keeps of it (`bodflow track`, `GET /messages/{id}`).
//!
//! [`record`] runs inside the commit's transaction, after the document's effects: it turns
//! the [`Report`] and the delivery facts into a [`Run`] (received, each stage's decision,
//! outcome, outputs) and adds it to the store's tracking ([`crate::store::track`]); the
//! message id's marker lists it. A message id seen before (a redelivery found duplicate, a
//! released parked document, a replayed dead letter) gets another run on its timeline.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

use serde::{Serialize, Serializer};

use super::{upsert, Context, Report, Stage};
use crate::store::track::{Millis, Run, StageDecision, Trigger};
use crate::store::{Marker, Tx, TxResult};

/// One stage's decision and why, in words (`country DEU→DE (iso3)`). Serialized as its text
/// (the replay line's `decisions`); tracking keeps the stage with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub stage: Stage,
    pub text: String,
}

impl Decision {
    pub fn new(stage: Stage, text: impl Into<String>) -> Decision {
        Decision {
            stage,
            text: text.into(),
        }
    }
}

impl Deref for Decision {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

/// A decision compares with its text (`report.decisions.iter().any(|d| d == "...")`).
impl PartialEq<str> for Decision {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for Decision {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Decision {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

/// Records this processing of the message, after [`Tx::begin_run`] and the document's
/// effects: its run goes into the transaction's tracking group. The marker the commit wrote
/// already lists it; a delivery the marker made a duplicate writes no marker of its own, so
/// its `previous` marker is written again, now listing this run too.
pub fn record(
    tx: &Tx<'_>,
    ctx: &Context,
    report: &Report,
    previous: Option<Marker>,
) -> TxResult<()> {
    if let Some(marker) = previous.filter(|m| upsert::blocks(m, ctx)) {
        tx.put_marker(&ctx.message_id, &marker)?;
    }
    tx.track_run(&ctx.message_id, &run(ctx, report))?;
    Ok(())
}

/// The tracked form of one processing, borrowing the report's text.
fn run<'a>(ctx: &'a Context, report: &'a Report) -> Run<'a> {
    use crate::store::track::{TrackedError, TrackedOutput, TrackedPark};
    let text = |s: &'a Option<String>| s.as_deref().map(Cow::Borrowed);
    Run {
        received_at: Millis(ctx.received_ms),
        trigger: if ctx.unpark.is_some() {
            Trigger::Release
        } else if ctx.retry {
            Trigger::Retry
        } else {
            Trigger::Received
        },
        source: Cow::Borrowed(&ctx.source),
        sender: text(&report.sender),
        size: ctx.size as u64,
        reply_to: text(&ctx.reply_to),
        bod_id: text(&report.bod_id),
        verb: text(&report.verb),
        noun: text(&report.noun),
        stages: report
            .decisions
            .iter()
            .map(|d| StageDecision {
                stage: Cow::Borrowed(d.stage.as_str()),
                decision: Cow::Borrowed(&d.text),
            })
            .collect(),
        outcome: Cow::Borrowed(report.outcome.as_str()),
        action: report.action.map(|a| Cow::Borrowed(a.as_str())),
        record: text(&report.record),
        error: report.error.as_ref().map(|e| TrackedError {
            stage: Cow::Borrowed(e.stage.as_str()),
            code: Cow::Borrowed(e.code),
            message: Cow::Borrowed(&e.message),
            path: text(&e.path),
        }),
        parked: report.parked.map(|p| TrackedPark {
            reason: Cow::Borrowed(p.reason.code()),
            seq: p.seq,
        }),
        outputs: report
            .outputs
            .iter()
            .map(|o| TrackedOutput {
                kind: Cow::Borrowed(&o.kind),
                to: Cow::Borrowed(&o.to),
                bod_id: Cow::Borrowed(&o.bod_id),
                confirmed_at: None,
                dead_lettered_at: None,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_serializes_as_its_text_and_reads_as_a_str() {
        let d = Decision::new(Stage::Country, "country DEU→DE (iso3)");
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            "\"country DEU→DE (iso3)\""
        );
        assert!(d.contains("DEU"));
        assert_eq!(d.to_string(), "country DEU→DE (iso3)");
    }
}
