//! The outbox publisher: publishes the store's outbox rows on a confirm-mode channel and
//! deletes a row only after the broker's Ack (DESIGN §4).
//!
//! A round reads up to [`RunOptions::outbox_batch`] rows in order, publishes them all
//! (persistent, `mandatory`, `application/xml`, `message_id` = BODID, `correlation_id` =
//! inbound message id, ION headers), then awaits their confirms and removes the acked rows.
//! A Nack or a returned (unroutable) message keeps its row: the round counts as failed and the
//! next one follows after a doubling backoff. Rows go to their `reply_to` queue through the
//! default exchange when the inbound named one, else to `bodflow.out` with the receiver's
//! logical ID.
//!
//! Rounds run when the consumer commits (woken), at least every [`RunOptions::outbox_poll`],
//! and — on shutdown — until the outbox is empty or [`RunOptions::drain_timeout`] passes.
//! With `tracking.enabled`, each round also writes the confirm times of the rows it removed
//! on their messages' timelines (one store batch per round); a failure there is logged and
//! does not fail the round.
//!
//! Rows left over are published by the next start; a row published but not yet removed when
//! the process dies is published again (at least once; receivers dedupe by BODID).

use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{confirmed, put_header, short, topology, Error, RunOptions};
use crate::pipeline::Pipeline;
use crate::store::track::{Confirmed, Millis};
use crate::store::OutboxRow;
use crate::telemetry::events::{emit, OutboxPublished, TrackingConfirmed, TrackingFailed};

/// Everything the publisher task owns for one session.
pub(super) struct Publisher {
    pub channel: Channel,
    pub pipeline: Pipeline,
    pub options: RunOptions,
    pub wake: Arc<Notify>,
    /// Stops the publisher (after the consumer has finished).
    pub stop: CancellationToken,
    /// Root of the tree: when cancelled, `stop` means "drain, then stop".
    pub shutdown: CancellationToken,
    /// Cancelled by the publisher when it fails, so the consumer ends the session too.
    pub session: CancellationToken,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy)]
struct Round {
    published: usize,
    failed: usize,
}

pub(super) async fn run(publisher: Publisher) -> Result<(), Error> {
    let result = publisher.run_inner().await;
    if result.is_err() {
        publisher.session.cancel();
    }
    result
}

impl Publisher {
    async fn run_inner(&self) -> Result<(), Error> {
        let mut failures = 0u32;
        while !self.stop.is_cancelled() {
            let round = self.round().await?;
            if round.failed > 0 {
                failures += 1;
                tokio::select! {
                    () = self.stop.cancelled() => {}
                    () = tokio::time::sleep(self.backoff(failures)) => {}
                }
            } else if round.published == 0 {
                failures = 0;
                tokio::select! {
                    () = self.stop.cancelled() => {}
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(self.options.outbox_poll) => {}
                }
            } else {
                failures = 0;
            }
        }
        if self.shutdown.is_cancelled() {
            match tokio::time::timeout(self.options.drain_timeout, self.drain()).await {
                Ok(result) => result?,
                Err(_) => {
                    tracing::warn!(timeout_s = self.options.drain_timeout.as_secs_f64(), "Outbox not drained before the timeout; the rest is published on the next start")
                }
            }
        }
        Ok(())
    }

    fn backoff(&self, failures: u32) -> Duration {
        (self.options.retry_base * (1 << failures.min(7))).min(Duration::from_secs(5))
    }

    /// Rounds until the outbox is empty.
    async fn drain(&self) -> Result<(), Error> {
        let mut failures = 0;
        loop {
            let round = self.round().await?;
            if round.failed > 0 {
                failures += 1;
                tokio::time::sleep(self.backoff(failures)).await;
            } else if round.published == 0 {
                return Ok(());
            }
        }
    }

    /// Publishes one batch of rows and removes those the broker acked.
    async fn round(&self) -> Result<Round, Error> {
        let store = self.pipeline.store.clone();
        let batch = self.options.outbox_batch;
        let rows = tokio::task::spawn_blocking(move || {
            store
                .durable_outbox()
                .take(batch)
                .collect::<Result<Vec<_>, _>>()
        })
        .await??;
        if rows.is_empty() {
            return Ok(Round::default());
        }
        let started = std::time::Instant::now();
        let mut pending = Vec::with_capacity(rows.len());
        for (seq, row) in &rows {
            let confirm = self.publish(row).await?;
            pending.push((*seq, row, confirm));
        }
        let mut done = Vec::with_capacity(rows.len());
        let track = self.pipeline.config.tracking.enabled;
        // (message id, BODID, confirm time) of the confirmed rows, for their timelines.
        let mut confirms: Vec<(String, String, Millis)> = Vec::new();
        let mut round = Round::default();
        for (seq, row, confirm) in pending {
            match confirmed(confirm, &row.bod_id).await {
                Ok(()) => {
                    done.push(seq);
                    if track {
                        confirms.push((
                            row.correlation_id.clone(),
                            row.bod_id.clone(),
                            Millis::now(),
                        ));
                    }
                }
                Err(e @ (Error::Nacked(_) | Error::Returned(_) | Error::NotConfirmed)) => {
                    round.failed += 1;
                    tracing::warn!(error = %e, code = e.code(), bod_id = %row.bod_id, to = %row.to, reply_to = row.reply_to.as_deref().unwrap_or(""), "Outbox row not accepted by the broker; kept for retry");
                }
                Err(e) => return Err(e),
            }
        }
        round.published = done.len();
        if round.published > 0 {
            emit(OutboxPublished {
                rows: round.published,
                confirm_seconds: started.elapsed().as_secs_f64(),
            });
        }
        let store = self.pipeline.store.clone();
        tokio::task::spawn_blocking(move || {
            store.remove_outbox(&done)?;
            if !confirms.is_empty() {
                let confirms: Vec<Confirmed<'_>> = confirms
                    .iter()
                    .map(|(message_id, bod_id, at)| Confirmed {
                        message_id,
                        bod_id,
                        at: *at,
                    })
                    .collect();
                match store.track_confirms(&confirms) {
                    Ok(outputs) => emit(TrackingConfirmed { outputs }),
                    Err(e) => emit(TrackingFailed {
                        action: "confirm",
                        error: &e,
                    }),
                }
            }
            Ok::<_, crate::store::StoreError>(())
        })
        .await??;
        Ok(round)
    }

    async fn publish(&self, row: &OutboxRow) -> Result<lapin::PublisherConfirm, Error> {
        let mut headers = FieldTable::default();
        put_header(&mut headers, "documentName", &row.document_name);
        put_header(
            &mut headers,
            "fromLogicalId",
            &self.pipeline.config.hub.logical_id,
        );
        put_header(&mut headers, "toLogicalId", &row.to);
        if let Some(tenant) = &row.tenant {
            put_header(&mut headers, "tenantId", tenant);
        }
        let properties = BasicProperties::default()
            .with_content_type("application/xml".into())
            .with_delivery_mode(2)
            .with_message_id(short(&row.bod_id)?)
            .with_correlation_id(short(&row.correlation_id)?)
            .with_headers(headers);
        let (exchange, routing_key) = match &row.reply_to {
            Some(queue) => ("", queue.as_str()),
            None => (topology::OUT_EXCHANGE, row.to.as_str()),
        };
        Ok(self
            .channel
            .basic_publish(
                short(exchange)?,
                short(routing_key)?,
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                row.xml.as_bytes(),
                properties,
            )
            .await?)
    }
}
