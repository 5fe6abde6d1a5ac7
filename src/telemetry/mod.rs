//! Metrics, readiness and the HTTP endpoint (DESIGN §5.5).
//!
//! - [`Metrics`]: every Prometheus metric of the process, created once in one
//!   [`prometheus::Registry`] ([`metrics`]). Names are `bodflow_<name>_<unit>[_total]`;
//!   labels only take values from bounded sets (stage and code are `&'static str` from the
//!   code; nouns and verbs outside the known ones become `other`).
//! - [`events`]: the only way code reports what happened — one struct per event whose
//!   `emit()` writes the log line and updates the metric together, so they never drift.
//! - [`Readiness`]: what `/readyz` answers — store open and broker session consuming.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`trace`]: W3C Trace Context (`traceparent`) read from deliveries and propagated on what
//!   they cause.
//! - [`sample`]: gauges that are too costly per message (store size, outbox length),
//!   refreshed periodically.

pub mod events;
pub mod http;
pub mod trace;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Every metric of the process, registered in [`Metrics::registry`].
pub struct Metrics {
    pub registry: Registry,
    pub(crate) bods_received: IntCounterVec,
    pub(crate) bods_processed: IntCounterVec,
    pub(crate) rejections: IntCounterVec,
    pub(crate) dead_lettered: IntCounterVec,
    pub(crate) stage_duration: HistogramVec,
    /// The children of `stage_duration` for [`STAGES`], resolved once: a stage is timed per
    /// document, and a label lookup per observation would cost more than the timing.
    stages: Vec<(&'static str, Histogram)>,
    pub(crate) group_documents: Histogram,
    pub(crate) end_to_end: Histogram,
    pub(crate) outbox_pending: IntGauge,
    pub(crate) outbox_published: IntCounter,
    pub(crate) publish_confirm: Histogram,
    pub(crate) amqp_connected: IntGauge,
    pub(crate) amqp_reconnects: IntCounter,
    pub(crate) redeliveries: IntCounter,
    pub(crate) store_flush: Histogram,
    pub(crate) store_size: IntGauge,
    pub(crate) store_retries: IntCounter,
    pub(crate) store_down: IntGauge,
    pub(crate) store_reopens: IntCounter,
    pub(crate) amqp_connect_failures: IntCounter,
    pub(crate) publish_failures: IntCounterVec,
    pub(crate) traceparent_ignored: IntCounterVec,
    pub(crate) config_reloads: IntCounterVec,
    pub(crate) config_restart_required: IntGauge,
    pub(crate) resync_runs: IntCounterVec,
    pub(crate) resync_syncs: IntCounterVec,
    pub(crate) parked_released: IntCounterVec,
    pub(crate) promotions: IntCounterVec,
    pub(crate) lanes_busy: IntGauge,
    pub(crate) tracking_purged: IntCounter,
    pub(crate) tombstones_purged: IntCounter,
    pub(crate) markers_expired: IntCounter,
    pub(crate) marker_filter_bytes: IntGauge,
    pub(crate) parked_messages: IntGauge,
    pub(crate) tracking_errors: IntCounterVec,
}

/// The stages timed into `bodflow_stage_duration_seconds`: per document `decode`, `validate`,
/// `country`, `owner` (and their sum `prepare`) and `upsert` (inside the group transaction);
/// per group `commit` (the whole transaction) and `flush`.
pub const STAGES: [&str; 8] = [
    "decode", "validate", "country", "owner", "prepare", "upsert", "commit", "flush",
];

/// Latency buckets from 100 µs to ~13 s (×2.2 per bucket).
fn seconds_buckets() -> Vec<f64> {
    exponential_buckets(0.0001, 2.2, 16).unwrap_or_default()
}

impl Metrics {
    fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        build_info(&registry)?;
        fn reg<T: prometheus::core::Collector + Clone + 'static>(
            registry: &Registry,
            metric: T,
        ) -> Result<T, prometheus::Error> {
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        }
        let histogram = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(seconds_buckets()))
        };
        Ok(Metrics {
            bods_received: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "bodflow_bods_received_total",
                        "Deliveries taken from the inbound queue, by noun and verb (from the documentName header, else the root element).",
                    ),
                    &["noun", "verb"],
                )?,
            )?,
            bods_processed: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("bodflow_bods_processed_total", "Documents processed, by noun, verb and outcome."),
                    &["noun", "verb", "outcome"],
                )?,
            )?,
            rejections: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("bodflow_rejections_total", "Documents rejected, by stage and code."),
                    &["stage", "code"],
                )?,
            )?,
            dead_lettered: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("bodflow_dead_lettered_total", "Deliveries published to bodflow.dead, by code."),
                    &["code"],
                )?,
            )?,
            stage_duration: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "bodflow_stage_duration_seconds",
                        "Time per stage: decode, validate, country, owner, prepare (their sum) and upsert per document; commit and flush per group.",
                    )
                    .buckets(seconds_buckets()),
                    &["stage"],
                )?,
            )?,
            group_documents: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("bodflow_group_documents", "Documents per group commit.")
                        .buckets(exponential_buckets(1.0, 2.0, 11)?),
                )?,
            )?,
            end_to_end: reg(
                &registry,
                histogram("bodflow_end_to_end_seconds", "Delivery received to acked.")?,
            )?,
            outbox_pending: reg(
                &registry,
                IntGauge::new("bodflow_outbox_pending", "Outbox rows waiting to be published (sampled).")?,
            )?,
            outbox_published: reg(
                &registry,
                IntCounter::new("bodflow_outbox_published_total", "Outbox rows published and confirmed by the broker.")?,
            )?,
            publish_confirm: reg(
                &registry,
                histogram(
                    "bodflow_publish_confirm_seconds",
                    "Outbox round: first publish to last broker confirm.",
                )?,
            )?,
            amqp_connected: reg(
                &registry,
                IntGauge::new("bodflow_amqp_connected", "1 while a broker session is up, else 0.")?,
            )?,
            amqp_reconnects: reg(
                &registry,
                IntCounter::new("bodflow_amqp_reconnects_total", "Broker connections after the first.")?,
            )?,
            redeliveries: reg(
                &registry,
                IntCounter::new("bodflow_redeliveries_total", "Deliveries the broker marked redelivered.")?,
            )?,
            store_flush: reg(
                &registry,
                histogram("bodflow_store_flush_seconds", "Store flushes (group commit durability).")?,
            )?,
            store_size: reg(
                &registry,
                IntGauge::new("bodflow_store_size_bytes", "Store size on disk (sampled).")?,
            )?,
            store_retries: reg(
                &registry,
                IntCounter::new("bodflow_store_commit_retries_total", "Group commits retried after a store error.")?,
            )?,
            store_down: reg(
                &registry,
                IntGauge::new(
                    "bodflow_store_down",
                    "1 while the store cannot write and the service is opening it again (nothing is consumed meanwhile).",
                )?,
            )?,
            store_reopens: reg(
                &registry,
                IntCounter::new(
                    "bodflow_store_reopens_total",
                    "Times the service opened its store again after it could not write.",
                )?,
            )?,
            amqp_connect_failures: reg(
                &registry,
                IntCounter::new("bodflow_amqp_connect_failures_total", "Failed attempts to connect to the broker.")?,
            )?,
            publish_failures: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "bodflow_outbox_publish_failures_total",
                        "Outbox rows the broker did not accept (kept and retried), by code.",
                    ),
                    &["code"],
                )?,
            )?,
            traceparent_ignored: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "bodflow_traceparent_ignored_total",
                        "Inbound traceparent headers ignored as malformed (a new trace is started), by code.",
                    ),
                    &["code"],
                )?,
            )?,
            config_reloads: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "bodflow_config_reloads_total",
                        "Configuration reloads (SIGHUP), by result: applied, invalid (refused), failed.",
                    ),
                    &["result"],
                )?,
            )?,
            config_restart_required: reg(
                &registry,
                IntGauge::new(
                    "bodflow_config_restart_required",
                    "1 when the configuration file changes settings that only a restart applies.",
                )?,
            )?,
            resync_runs: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "bodflow_resync_runs_total",
                        "Resyncs, by application (logical ID), trigger (cli, http, schedule) and outcome (finished or an error code).",
                    ),
                    &["application", "trigger", "outcome"],
                )?,
            )?,
            resync_syncs: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "bodflow_resync_syncs_total",
                        "Sync<Noun> documents written by resyncs, by application (logical ID).",
                    ),
                    &["application"],
                )?,
            )?,
            stages: Vec::new(),
            parked_released: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "bodflow_parked_released_total",
                        "Parked no_match documents released by a change that made them match, by the outcome of their re-run.",
                    ),
                    &["outcome"],
                )?,
            )?,
            promotions: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "bodflow_promotions_total",
                        "Account promotions to the system of record: Process sent, then promoted or promotion_rejected by its Acknowledge.",
                    ),
                    &["event"],
                )?,
            )?,
            lanes_busy: reg(
                &registry,
                IntGauge::new("bodflow_lanes_busy", "Lanes preparing documents or with documents queued (of amqp.lanes).")?,
            )?,
            tracking_purged: reg(
                &registry,
                IntCounter::new(
                    "bodflow_tracking_purged_total",
                    "Tracked runs (one processing of a message each) removed after tracking.retention.",
                )?,
            )?,
            tombstones_purged: reg(
                &registry,
                IntCounter::new(
                    "bodflow_tombstones_purged_total",
                    "Tombstones of hard-deleted cross-references removed after hub.tombstone_retention.",
                )?,
            )?,
            markers_expired: reg(
                &registry,
                IntCounter::new(
                    "bodflow_markers_expired_total",
                    "Message-id markers removed after hub.dedup_window (their message ids are no longer duplicates).",
                )?,
            )?,
            marker_filter_bytes: reg(
                &registry,
                IntGauge::new(
                    "bodflow_marker_filter_bytes",
                    "Memory of the in-memory message-id marker filter (sampled; shrinks when it is rebuilt after markers expire).",
                )?,
            )?,
            parked_messages: reg(
                &registry,
                IntGauge::new(
                    "bodflow_parked_messages",
                    "Messages with a document (or some of its nouns) waiting parked, counted by the marker purge once a minute.",
                )?,
            )?,
            tracking_errors: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "bodflow_tracking_errors_total",
                        "Failed tracking writes and lookups, by action (confirm, purge, lookup).",
                    ),
                    &["action"],
                )?,
            )?,
            registry,
        }
        .with_known_series())
    }

    /// Creates the series of every known label value at zero, so a counter's first increase
    /// is visible to `rate()`/`increase()` and dashboards show zero rather than no data.
    fn with_known_series(mut self) -> Metrics {
        self.stages = STAGES
            .iter()
            .map(|s| (*s, self.stage_duration.with_label_values(&[*s])))
            .collect();
        let known: [(&IntCounterVec, &[&str]); 6] = [
            (&self.config_reloads, &["applied", "invalid", "failed"]),
            (
                &self.promotions,
                &["sent", "promoted", "promotion_rejected"],
            ),
            (
                &self.parked_released,
                &[
                    "applied",
                    "duplicate",
                    "stale",
                    "rejected",
                    "parked",
                    "filtered",
                ],
            ),
            (
                &self.publish_failures,
                &["nacked", "unroutable", "not_confirmed"],
            ),
            (
                &self.traceparent_ignored,
                &["shape", "hex", "version", "zero_id"],
            ),
            (&self.tracking_errors, &["confirm", "purge", "lookup"]),
        ];
        for (vec, values) in known {
            for v in values {
                vec.with_label_values(&[*v]);
            }
        }
        // The documents bodflow handles: a service that has received nothing since it started
        // shows zero (what the alert on a queue nobody consumes compares with), not no data.
        for noun in ["CustomerPartyMaster", "ContactMaster"] {
            for verb in ["Sync", "Process", "Acknowledge"] {
                self.bods_received.with_label_values(&[noun, verb]);
            }
        }
        self
    }

    /// Observes `seconds` in the duration histogram of `stage`.
    pub(crate) fn observe_stage(&self, stage: &'static str, seconds: f64) {
        match self.stages.iter().find(|(s, _)| *s == stage) {
            Some((_, h)) => h.observe(seconds),
            None => self
                .stage_duration
                .with_label_values(&[stage])
                .observe(seconds),
        }
    }
}

/// `bodflow_build_info{version}` = 1, registered with the other metrics.
fn build_info(registry: &Registry) -> Result<(), prometheus::Error> {
    let info = IntGaugeVec::new(
        Opts::new(
            "bodflow_build_info",
            "The running bodflow version (value 1).",
        ),
        &["version"],
    )?;
    info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    registry.register(Box::new(info))
}

/// The process's metrics, created on first use.
#[allow(clippy::expect_used)]
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    // Static names and help texts: a failure here is a programming error caught by the
    // unit tests, not something input can cause.
    METRICS.get_or_init(|| Metrics::new().expect("metric definitions are valid"))
}

/// The registry in the Prometheus text exposition format.
pub fn encode() -> String {
    let families = metrics().registry.gather();
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .unwrap_or_else(|e| format!("# encoding metrics failed: {e}\n"))
}

/// Whether the service can take traffic: the store is open and the broker session is
/// connected and consuming. Shared (cheap clone) between `bodflow run`, the AMQP session and
/// `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<ReadinessState>);

#[derive(Debug, Default)]
struct ReadinessState {
    store_open: AtomicBool,
    connected: AtomicBool,
    consuming: AtomicBool,
}

impl Readiness {
    pub fn set_store_open(&self, open: bool) {
        self.0.store_open.store(open, Ordering::SeqCst);
    }

    /// A broker session is (or is no longer) up; going down also clears consuming.
    pub fn set_connected(&self, connected: bool) {
        self.0.connected.store(connected, Ordering::SeqCst);
        if !connected {
            self.0.consuming.store(false, Ordering::SeqCst);
        }
    }

    pub fn set_consuming(&self, consuming: bool) {
        self.0.consuming.store(consuming, Ordering::SeqCst);
    }

    /// `Ok` when ready, else the first reason why not.
    pub fn check(&self) -> Result<(), &'static str> {
        if !self.0.store_open.load(Ordering::SeqCst) {
            Err("store not open")
        } else if !self.0.connected.load(Ordering::SeqCst) {
            Err("broker not connected")
        } else if !self.0.consuming.load(Ordering::SeqCst) {
            Err("not consuming")
        } else {
            Ok(())
        }
    }
}

/// Refreshes the sampled gauges (store size, outbox pending, marker filter) now and every `every` until
/// `stop`. Errors are logged and the gauges keep their last value.
pub async fn sample(store: Arc<Store>, every: Duration, stop: CancellationToken) {
    loop {
        let s = store.clone();
        let sampled = tokio::task::spawn_blocking(move || {
            (s.size_on_disk(), s.outbox_len(), s.marker_filter_bytes())
        });
        match sampled.await {
            Ok((size, pending, filter)) => events::emit(events::StoreSampled {
                size_bytes: size.ok(),
                outbox_pending: pending,
                marker_filter_bytes: filter,
            }),
            Err(e) => tracing::warn!(error = %e, "Sampling the store failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_registered_under_its_documented_name_and_stages_are_preresolved() {
        let m = metrics();
        // Vectors only appear once they have a child.
        m.bods_processed
            .with_label_values(&["other", "other", "applied"]);
        m.rejections
            .with_label_values(&["decode", "not_well_formed"]);
        m.dead_lettered.with_label_values(&["not_well_formed"]);
        m.bods_received.with_label_values(&["none", "none"]);
        m.publish_failures.with_label_values(&["nacked"]);
        m.traceparent_ignored.with_label_values(&["shape"]);
        m.config_reloads.with_label_values(&["applied"]);
        let text = encode();
        assert!(
            text.contains(
                "bodflow_bods_received_total{noun=\"ContactMaster\",verb=\"Acknowledge\"}"
            ),
            "known documents' series exist from the start:\n{text}"
        );
        for stage in STAGES {
            let line = format!("bodflow_stage_duration_seconds_count{{stage=\"{stage}\"}}");
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
        for name in [
            "bodflow_build_info{version=",
            "bodflow_store_commit_retries_total",
            "bodflow_amqp_connect_failures_total",
            "bodflow_outbox_publish_failures_total",
            "bodflow_traceparent_ignored_total",
            "bodflow_config_reloads_total",
            "bodflow_config_restart_required",
            "bodflow_bods_received_total",
            "bodflow_bods_processed_total",
            "bodflow_rejections_total",
            "bodflow_dead_lettered_total",
            "bodflow_stage_duration_seconds_bucket",
            "bodflow_group_documents_bucket",
            "bodflow_end_to_end_seconds_bucket",
            "bodflow_outbox_pending",
            "bodflow_outbox_published_total",
            "bodflow_publish_confirm_seconds_bucket",
            "bodflow_amqp_connected",
            "bodflow_amqp_reconnects_total",
            "bodflow_redeliveries_total",
            "bodflow_store_flush_seconds_bucket",
            "bodflow_store_size_bytes",
            "bodflow_tracking_purged_total",
            "bodflow_tombstones_purged_total",
            "bodflow_markers_expired_total",
            "bodflow_marker_filter_bytes",
            "bodflow_parked_messages",
            "bodflow_tracking_errors_total",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    #[test]
    fn readiness_needs_store_connection_and_consumer() {
        let r = Readiness::default();
        assert_eq!(r.check(), Err("store not open"));
        r.set_store_open(true);
        assert_eq!(r.check(), Err("broker not connected"));
        r.set_connected(true);
        assert_eq!(r.check(), Err("not consuming"));
        r.set_consuming(true);
        assert_eq!(r.check(), Ok(()));
        r.set_connected(false);
        r.set_connected(true);
        assert_eq!(
            r.check(),
            Err("not consuming"),
            "a new session must consume again"
        );
    }
}
