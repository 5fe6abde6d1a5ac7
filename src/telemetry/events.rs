//! Named events: one struct per thing that happens, whose `emit()` writes the log line and
//! updates the metric together (the vector `internal_events` idea, STYLE habit 8). Per-message
//! events log at DEBUG; lifecycle at INFO, trouble at WARN (habit 9).

use crate::pipeline::Outcome;

use super::metrics;

/// Something worth a log line and a metric.
pub trait Event {
    fn emit(self);
}

/// Emits `event` (reads better at call sites than `event.emit()`).
pub fn emit(event: impl Event) {
    event.emit();
}

/// Nouns used as label values; anything else is `other`, no noun at all (not a BOD) `none`.
const NOUNS: [&str; 3] = ["CustomerPartyMaster", "ContactMaster", "BOD"];
/// Verbs used as label values; anything else is `other`.
const VERBS: [&str; 7] = [
    "Sync",
    "Process",
    "Acknowledge",
    "Confirm",
    "Get",
    "Show",
    "Notify",
];

/// `value` when it is in `known`, else `other` (`none` when absent): labels stay bounded
/// whatever the senders put in their documents.
pub fn bounded(value: Option<&str>, known: &[&'static str]) -> &'static str {
    match value {
        None | Some("") => "none",
        Some(v) => known.iter().find(|k| **k == v).copied().unwrap_or("other"),
    }
}

/// A delivery was taken from the inbound queue.
pub struct BodReceived {
    pub bytes: usize,
    pub redelivered: bool,
}

impl Event for BodReceived {
    fn emit(self) {
        tracing::trace!(
            bytes = self.bytes,
            redelivered = self.redelivered,
            "Delivery received"
        );
        metrics().bods_received.inc();
        if self.redelivered {
            emit(Redelivered);
        }
    }
}

/// The broker marked a delivery redelivered (a previous session did not ack it).
pub struct Redelivered;

impl Event for Redelivered {
    fn emit(self) {
        tracing::debug!("Delivery is a redelivery");
        metrics().redeliveries.inc();
    }
}

/// A document went through the pipeline (any outcome, rejected included).
pub struct BodProcessed<'a> {
    pub noun: Option<&'a str>,
    pub verb: Option<&'a str>,
    pub outcome: Outcome,
    pub record: Option<&'a str>,
    pub outputs: usize,
}

impl Event for BodProcessed<'_> {
    fn emit(self) {
        let noun = bounded(self.noun, &NOUNS);
        let verb = bounded(self.verb, &VERBS);
        let outcome = self.outcome.as_str();
        tracing::debug!(
            noun = self.noun.unwrap_or(""),
            verb = self.verb.unwrap_or(""),
            outcome,
            record = self.record.unwrap_or(""),
            outputs = self.outputs,
            "Delivery processed"
        );
        metrics()
            .bods_processed
            .with_label_values(&[noun, verb, outcome])
            .inc();
    }
}

/// The pipeline refused a document (a ConfirmBOD goes back to the sender).
pub struct BodRejected<'a> {
    pub stage: &'static str,
    pub code: &'static str,
    pub message: &'a str,
}

impl Event for BodRejected<'_> {
    fn emit(self) {
        tracing::debug!(
            stage = self.stage,
            code = self.code,
            reason = self.message,
            "Delivery rejected"
        );
        metrics()
            .rejections
            .with_label_values(&[self.stage, self.code])
            .inc();
    }
}

/// A delivery was published to `bodflow.dead` (and confirmed).
pub struct DeadLettered<'a> {
    pub stage: &'static str,
    pub code: &'static str,
    pub message_id: Option<&'a str>,
}

impl Event for DeadLettered<'_> {
    fn emit(self) {
        tracing::debug!(
            code = self.code,
            stage = self.stage,
            message_id = self.message_id.unwrap_or(""),
            "Delivery dead-lettered"
        );
        metrics()
            .dead_lettered
            .with_label_values(&[self.code])
            .inc();
    }
}

/// How long one stage took (`prepare` per document; `commit`, `flush` per group).
pub struct StageTimed {
    pub stage: &'static str,
    pub seconds: f64,
}

impl Event for StageTimed {
    fn emit(self) {
        tracing::trace!(stage = self.stage, seconds = self.seconds, "Stage timed");
        metrics()
            .stage_duration
            .with_label_values(&[self.stage])
            .observe(self.seconds);
    }
}

/// A group of documents was committed in one store transaction (not yet flushed).
pub struct GroupCommitted {
    pub docs: usize,
    pub seconds: f64,
}

impl Event for GroupCommitted {
    fn emit(self) {
        tracing::debug!(docs = self.docs, seconds = self.seconds, "Group committed");
        let m = metrics();
        m.group_documents.observe(self.docs as f64);
        m.stage_duration
            .with_label_values(&["commit"])
            .observe(self.seconds);
    }
}

/// The store was flushed: everything committed so far is durable.
pub struct StoreFlushed {
    pub seconds: f64,
}

impl Event for StoreFlushed {
    fn emit(self) {
        tracing::trace!(seconds = self.seconds, "Store flushed");
        let m = metrics();
        m.store_flush.observe(self.seconds);
        m.stage_duration
            .with_label_values(&["flush"])
            .observe(self.seconds);
    }
}

/// A delivery was acked, `seconds` after it was received (end-to-end latency).
pub struct BodAcked {
    pub seconds: f64,
}

impl Event for BodAcked {
    fn emit(self) {
        metrics().end_to_end.observe(self.seconds);
    }
}

/// An outbox round published `rows` rows, all confirmed `confirm_seconds` after the first
/// publish.
pub struct OutboxPublished {
    pub rows: usize,
    pub confirm_seconds: f64,
}

impl Event for OutboxPublished {
    fn emit(self) {
        tracing::debug!(
            rows = self.rows,
            confirm_seconds = self.confirm_seconds,
            "Outbox rows published"
        );
        let m = metrics();
        m.outbox_published.inc_by(self.rows as u64);
        m.publish_confirm.observe(self.confirm_seconds);
    }
}

/// Periodic sample of what is too costly to count per message.
pub struct StoreSampled {
    /// `None` when the size could not be read (the gauge keeps its last value).
    pub size_bytes: Option<u64>,
    pub outbox_pending: usize,
}

impl Event for StoreSampled {
    fn emit(self) {
        tracing::trace!(
            size_bytes = self.size_bytes,
            outbox_pending = self.outbox_pending,
            "Store sampled"
        );
        let m = metrics();
        if let Some(size) = self.size_bytes {
            m.store_size.set(i64::try_from(size).unwrap_or(i64::MAX));
        }
        m.outbox_pending
            .set(i64::try_from(self.outbox_pending).unwrap_or(i64::MAX));
    }
}

/// The tracking purge removed the runs older than the retention.
pub struct TrackingPurged {
    /// Runs (one processing of a message each) removed.
    pub removed: usize,
    pub seconds: f64,
}

impl Event for TrackingPurged {
    fn emit(self) {
        if self.removed > 0 {
            tracing::debug!(
                removed = self.removed,
                seconds = self.seconds,
                "Expired tracked runs purged"
            );
        }
        metrics().tracking_purged.inc_by(self.removed as u64);
    }
}

/// Broker confirm times were written on the messages' timelines.
pub struct TrackingConfirmed {
    pub outputs: usize,
}

impl Event for TrackingConfirmed {
    fn emit(self) {
        tracing::trace!(outputs = self.outputs, "Publish confirms tracked");
    }
}

/// A tracking write or lookup failed (`action`: `confirm`, `purge`, `lookup`). Tracking is
/// information: the message itself is unaffected.
pub struct TrackingFailed<'a> {
    pub action: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl Event for TrackingFailed<'_> {
    fn emit(self) {
        tracing::warn!(action = self.action, error = %self.error, "Message tracking failed");
        metrics()
            .tracking_errors
            .with_label_values(&[self.action])
            .inc();
    }
}

/// A broker session is up (the topology is about to be declared).
pub struct AmqpConnected<'a> {
    /// The URL, credentials redacted.
    pub url: &'a str,
    /// Not the first connection of the process.
    pub reconnect: bool,
}

impl Event for AmqpConnected<'_> {
    fn emit(self) {
        tracing::info!(
            url = self.url,
            reconnect = self.reconnect,
            "Connected to the broker"
        );
        let m = metrics();
        m.amqp_connected.set(1);
        if self.reconnect {
            m.amqp_reconnects.inc();
        }
    }
}

/// A broker session ended: on shutdown (`error: None`, INFO) or on failure (WARN).
pub struct AmqpDisconnected<'a> {
    pub error: Option<(&'static str, &'a dyn std::fmt::Display)>,
    pub shutdown: bool,
}

impl Event for AmqpDisconnected<'_> {
    fn emit(self) {
        metrics().amqp_connected.set(0);
        match (self.error, self.shutdown) {
            (Some((code, error)), _) => {
                tracing::warn!(error = %error, code, "Broker session failed; reconnecting")
            }
            (None, true) => tracing::info!("Broker session closed"),
            (None, false) => tracing::warn!("Broker session ended; reconnecting"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_nouns_and_verbs_become_other() {
        assert_eq!(
            bounded(Some("CustomerPartyMaster"), &NOUNS),
            "CustomerPartyMaster"
        );
        assert_eq!(bounded(Some("WooSalesOrder"), &NOUNS), "other");
        assert_eq!(bounded(Some("x".repeat(300).as_str()), &VERBS), "other");
        assert_eq!(bounded(None, &VERBS), "none");
        assert_eq!(bounded(Some(""), &VERBS), "none");
    }

    #[test]
    fn bod_processed_counts_by_bounded_labels() {
        let counter = || {
            metrics()
                .bods_processed
                .with_label_values(&["other", "Sync", "parked"])
                .get()
        };
        let before = counter();
        emit(BodProcessed {
            noun: Some("SalesOrder-unit-test"),
            verb: Some("Sync"),
            outcome: Outcome::Parked,
            record: None,
            outputs: 0,
        });
        assert_eq!(counter(), before + 1);
    }

    #[test]
    fn amqp_connection_events_move_the_gauge_and_reconnects() {
        let m = metrics();
        let reconnects = m.amqp_reconnects.get();
        emit(AmqpConnected {
            url: "amqp://127.0.0.1",
            reconnect: true,
        });
        assert_eq!(m.amqp_reconnects.get(), reconnects + 1);
        assert_eq!(m.amqp_connected.get(), 1);
        emit(AmqpDisconnected {
            error: None,
            shutdown: true,
        });
        assert_eq!(m.amqp_connected.get(), 0);
    }
}
