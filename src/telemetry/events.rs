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
pub struct BodReceived<'a> {
    pub bytes: usize,
    pub redelivered: bool,
    /// Noun and verb as the delivery announces them (`documentName` header, else the root
    /// element's name); bounded into labels.
    pub noun: Option<&'a str>,
    pub verb: Option<&'a str>,
}

impl Event for BodReceived<'_> {
    fn emit(self) {
        tracing::trace!(
            bytes = self.bytes,
            redelivered = self.redelivered,
            noun = self.noun.unwrap_or(""),
            verb = self.verb.unwrap_or(""),
            "Delivery received"
        );
        metrics()
            .bods_received
            .with_label_values(&[bounded(self.noun, &NOUNS), bounded(self.verb, &VERBS)])
            .inc();
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

/// A change released a parked `no_match` document, which ran through the pipeline again in
/// the same transaction (`bodflow_parked_released_total{outcome}`).
pub struct ParkedReleased<'a> {
    pub message_id: &'a str,
    pub released_by: &'a str,
    pub outcome: Outcome,
    pub record: Option<&'a str>,
}

impl Event for ParkedReleased<'_> {
    fn emit(self) {
        let outcome = self.outcome.as_str();
        tracing::debug!(
            message_id = self.message_id,
            released_by = self.released_by,
            outcome,
            record = self.record.unwrap_or(""),
            "Parked document released"
        );
        metrics()
            .parked_released
            .with_label_values(&[outcome])
            .inc();
    }
}

/// A step of an account's promotion (`bodflow_promotions_total{event}`): `sent` (a
/// ProcessCustomerPartyMaster went to the system of record), `promoted` or
/// `promotion_rejected` (its Acknowledge was correlated).
pub struct Promotion<'a> {
    pub event: &'static str,
    pub record: Option<&'a str>,
}

impl Event for Promotion<'_> {
    fn emit(self) {
        tracing::debug!(
            event = self.event,
            record = self.record.unwrap_or(""),
            "Promotion"
        );
        metrics().promotions.with_label_values(&[self.event]).inc();
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
    pub stage: &'a str,
    pub code: &'a str,
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

/// How long one stage took (see [`super::STAGES`]: per document `decode`, `validate`,
/// `country`, `owner`, `prepare`, `upsert`; per group `commit`, `flush`).
pub struct StageTimed {
    pub stage: &'static str,
    pub seconds: f64,
}

impl Event for StageTimed {
    fn emit(self) {
        tracing::trace!(stage = self.stage, seconds = self.seconds, "Stage timed");
        metrics().observe_stage(self.stage, self.seconds);
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
        m.observe_stage("commit", self.seconds);
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
        m.observe_stage("flush", self.seconds);
    }
}

/// The store could not write (a probe write failed after a store error): the service let go
/// of it and opens it again ([`StoreReopened`] when it can write).
pub struct StoreDown<'a> {
    pub error: &'a dyn std::fmt::Display,
    pub code: &'static str,
    pub store: &'a std::path::Path,
}

impl Event for StoreDown<'_> {
    fn emit(self) {
        tracing::error!(error = %self.error, code = self.code, store = %self.store.display(), "The store cannot write (a full disk, a failing device?): consuming stopped, and bodflow opens the store again until it can write. Nothing that was not durable was acked; those deliveries are back in the queue");
        metrics().store_down.set(1);
    }
}

/// An attempt to open the store again failed (it is tried again after `retry_s`).
pub struct StoreReopenFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
    pub code: &'static str,
    pub retry_s: f64,
}

impl Event for StoreReopenFailed<'_> {
    fn emit(self) {
        tracing::warn!(error = %self.error, code = self.code, retry_s = self.retry_s, "The store still cannot be opened or written");
    }
}

/// The store opened again and took a flushed write: the service resumes.
pub struct StoreReopened {
    pub attempts: u32,
    pub seconds: f64,
}

impl Event for StoreReopened {
    fn emit(self) {
        tracing::warn!(
            attempts = self.attempts,
            down_s = self.seconds,
            "The store can write again: resuming"
        );
        let m = metrics();
        m.store_down.set(0);
        m.store_reopens.inc();
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

/// A prepare lane got work (`busy`) or ran out of it.
pub struct LaneActivity {
    pub lane: usize,
    pub busy: bool,
}

impl Event for LaneActivity {
    fn emit(self) {
        tracing::trace!(lane = self.lane, busy = self.busy, "Lane activity");
        let gauge = &metrics().lanes_busy;
        if self.busy {
            gauge.inc();
        } else {
            gauge.dec();
        }
    }
}

/// Periodic sample of what is too costly to count per message.
pub struct StoreSampled {
    /// `None` when the size could not be read (the gauge keeps its last value).
    pub size_bytes: Option<u64>,
    pub outbox_pending: usize,
    pub marker_filter_bytes: usize,
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
        m.marker_filter_bytes
            .set(i64::try_from(self.marker_filter_bytes).unwrap_or(i64::MAX));
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

/// The tombstones of hard deletes older than `hub.tombstone_retention` were removed.
pub struct TombstonesPurged {
    pub removed: usize,
}

impl Event for TombstonesPurged {
    fn emit(self) {
        if self.removed > 0 {
            tracing::info!(
                removed = self.removed,
                "Removed the tombstones of hard deletes older than hub.tombstone_retention"
            );
        }
        metrics().tombstones_purged.inc_by(self.removed as u64);
    }
}

/// The markers last written before `hub.dedup_window` were removed (and the marker filter
/// rebuilt, when enough of it had expired).
pub struct MarkersExpired {
    pub removed: usize,
    /// Message ids with a parked document (whose markers stay whatever their age).
    pub parked: usize,
    /// The rebuilt filter's bytes; `None`: no rebuild this round.
    pub filter_bytes: Option<usize>,
    pub seconds: f64,
}

impl Event for MarkersExpired {
    fn emit(self) {
        if self.removed > 0 {
            tracing::info!(
                removed = self.removed,
                seconds = self.seconds,
                "Removed the message-id markers older than hub.dedup_window"
            );
        }
        if let Some(bytes) = self.filter_bytes {
            tracing::info!(
                bytes,
                "Rebuilt the message-id marker filter without the expired markers"
            );
            metrics()
                .marker_filter_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let m = metrics();
        m.markers_expired.inc_by(self.removed as u64);
        m.parked_messages
            .set(i64::try_from(self.parked).unwrap_or(i64::MAX));
    }
}

/// Expiring markers failed; the next round tries again.
pub struct MarkersFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
}

impl Event for MarkersFailed<'_> {
    fn emit(self) {
        tracing::warn!(error = %self.error, "Expiring message-id markers failed; the next round tries again");
    }
}

/// A tombstone purge failed; the next round tries again.
pub struct TombstonesFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
}

impl Event for TombstonesFailed<'_> {
    fn emit(self) {
        tracing::warn!(error = %self.error, "Purging tombstones failed; the next round tries again");
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

/// A group commit failed on a store error and is retried after `delay_ms`.
pub struct StoreCommitRetried<'a> {
    pub attempt: u32,
    pub delay_ms: u64,
    pub code: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl Event for StoreCommitRetried<'_> {
    fn emit(self) {
        tracing::warn!(
            error = %self.error,
            code = self.code,
            attempt = self.attempt,
            delay_ms = self.delay_ms,
            "Store commit failed, retrying"
        );
        metrics().store_retries.inc();
    }
}

/// Connecting to the broker failed; the next attempt follows after `delay_ms`.
pub struct AmqpConnectFailed<'a> {
    pub code: &'static str,
    pub error: &'a dyn std::fmt::Display,
    pub delay_ms: u64,
}

impl Event for AmqpConnectFailed<'_> {
    fn emit(self) {
        tracing::warn!(
            error = %self.error,
            code = self.code,
            delay_ms = self.delay_ms,
            "Cannot connect to the broker"
        );
        metrics().amqp_connect_failures.inc();
    }
}

/// The broker did not accept an outbox row (Nack, returned unroutable, no confirm); the row
/// is kept and published again later — to `bodflow.out` instead of its `reply_to` queue when
/// that queue does not exist (`rerouted`).
pub struct OutboxRowRefused<'a> {
    pub code: &'static str,
    pub error: &'a dyn std::fmt::Display,
    pub bod_id: &'a str,
    pub to: &'a str,
    pub reply_to: Option<&'a str>,
    pub next: Next,
}

/// What becomes of a refused outbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Published again where it went, after its backoff.
    Again,
    /// Its `reply_to` queue does not exist: published to `bodflow.out` instead.
    Out,
    /// No queue takes it: published to `bodflow.dead` instead.
    Dead,
}

impl Event for OutboxRowRefused<'_> {
    fn emit(self) {
        let message = match self.next {
            Next::Out => "Reply queue does not exist; the reply goes to the receiver's application queue instead",
            Next::Dead => "No queue is bound for the receiver of this outbox row; it goes to bodflow.dead instead",
            Next::Again => "Outbox row not accepted by the broker; kept for retry",
        };
        tracing::warn!(
            error = %self.error,
            code = self.code,
            bod_id = self.bod_id,
            to = self.to,
            reply_to = self.reply_to.unwrap_or(""),
            "{message}"
        );
        metrics()
            .publish_failures
            .with_label_values(&[self.code])
            .inc();
    }
}

/// An inbound `traceparent` was malformed and ignored; the delivery starts a new trace.
pub struct TraceparentIgnored<'a> {
    pub code: &'static str,
    pub value: &'a str,
}

impl Event for TraceparentIgnored<'_> {
    fn emit(self) {
        let value: String = self.value.chars().take(64).collect();
        tracing::debug!(code = self.code, value, "Malformed traceparent ignored");
        metrics()
            .traceparent_ignored
            .with_label_values(&[self.code])
            .inc();
    }
}

/// A new configuration is in force (SIGHUP). `restart_needed` names changed settings that
/// keep their running value until a restart.
pub struct ConfigReloaded<'a> {
    pub path: &'a str,
    pub applications: usize,
    pub restart_needed: &'a [&'static str],
    /// Documents of re-activated applications released from parking.
    pub released: usize,
}

impl Event for ConfigReloaded<'_> {
    fn emit(self) {
        tracing::info!(
            path = self.path,
            applications = self.applications,
            released = self.released,
            "Configuration reloaded"
        );
        if !self.restart_needed.is_empty() {
            tracing::warn!(
                settings = ?self.restart_needed,
                "Changed settings need a restart; they keep their running value until then"
            );
        }
        let m = metrics();
        m.config_reloads.with_label_values(&["applied"]).inc();
        m.config_restart_required
            .set(i64::from(!self.restart_needed.is_empty()));
    }
}

/// A reload was refused (`result` = `invalid`: the file does not load or check; `failed`:
/// applying it failed, e.g. the broker could not declare the new topology). The running
/// configuration stays.
pub struct ConfigReloadRefused<'a> {
    pub path: &'a str,
    pub result: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl Event for ConfigReloadRefused<'_> {
    fn emit(self) {
        tracing::error!(
            path = self.path,
            result = self.result,
            error = %self.error,
            "Configuration reload refused; the running configuration stays"
        );
        metrics()
            .config_reloads
            .with_label_values(&[self.result])
            .inc();
    }
}

/// A resync ("Run Now") finished: INFO, since an operator or a schedule asked for it.
pub struct ResyncFinished<'a> {
    pub summary: &'a crate::pipeline::resync::Summary,
}

impl Event for ResyncFinished<'_> {
    fn emit(self) {
        let s = self.summary;
        tracing::info!(
            application = %s.application,
            run = %s.run,
            trigger = s.trigger.as_str(),
            accounts_sent = s.accounts.sent,
            contacts_sent = s.contacts.sent,
            added = s.accounts.added + s.contacts.added,
            skipped = s.accounts.skipped_deleted
                + s.accounts.skipped_flow
                + s.contacts.skipped_deleted
                + s.contacts.skipped_flow,
            seconds = s.seconds,
            "Resync finished"
        );
        let m = metrics();
        m.resync_runs
            .with_label_values(&[&s.application, s.trigger.as_str(), "finished"])
            .inc();
        m.resync_syncs
            .with_label_values(&[&s.application])
            .inc_by(s.sent());
    }
}

/// A resync could not start or stopped on an error (WARN).
pub struct ResyncFailed<'a> {
    /// The application's logical ID as configured; `other` for one that is not.
    pub application: &'a str,
    pub trigger: &'static str,
    pub code: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl Event for ResyncFailed<'_> {
    fn emit(self) {
        tracing::warn!(
            application = self.application,
            trigger = self.trigger,
            code = self.code,
            error = %self.error,
            "Resync failed"
        );
        metrics()
            .resync_runs
            .with_label_values(&[self.application, self.trigger, self.code])
            .inc();
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
    fn rule_events_count_releases_and_promotions() {
        let m = metrics();
        let released = || m.parked_released.with_label_values(&["applied"]).get();
        let sent = || m.promotions.with_label_values(&["sent"]).get();
        let (r0, s0) = (released(), sent());
        emit(ParkedReleased {
            message_id: "m-parked",
            released_by: "m-trigger",
            outcome: Outcome::Applied,
            record: Some("ACC-000001"),
        });
        emit(Promotion {
            event: "sent",
            record: Some("ACC-000001"),
        });
        assert_eq!((released(), sent()), (r0 + 1, s0 + 1));
        let text = crate::telemetry::encode();
        assert!(text.contains("bodflow_parked_released_total{outcome=\"applied\"}"));
        assert!(text.contains("bodflow_promotions_total{event=\"sent\"}"));
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
