//! Consumes `bodflow.inbound` and runs every delivery through the same [`Pipeline`] as
//! `replay`.
//!
//! # Ack discipline
//!
//! - **Ack only what is durable.** Deliveries are taken in groups (up to
//!   [`RunOptions::group_max`], or what arrives within [`RunOptions::group_window`] of the
//!   first), prepared off the runtime threads, committed in ONE store transaction
//!   ([`Pipeline::commit_batch`]: records, message-id markers, outbox rows). An acker task
//!   then flushes the store once for every group committed so far (group commit; the
//!   committer goes on with the next group meanwhile), and only after that flush wakes the
//!   outbox publisher and acks the groups in order: one `basic.ack(last_tag, multiple)` when
//!   a group's tags are contiguous, else one ack per delivery.
//! - **Order.** One committer per process: commit order is arrival order, so deliveries for
//!   the same document key are applied in the order the queue gave them. (Parallel lanes by
//!   document key are the next step of issue 3.)
//! - **Permanent failures** (the pipeline rejects the document): the ConfirmBOD is already in
//!   the outbox (same transaction). The delivery is then dead-lettered *by us*: the original
//!   payload and properties plus headers `x-bodflow-stage`, `x-bodflow-code`,
//!   `x-bodflow-reason` are published to `bodflow.dlx` on a confirm-mode channel, and the
//!   delivery is acked after that confirm. Most rejections are decided by `prepare`; the
//!   few only the commit can decide (an Acknowledge with an unknown correlation) come from
//!   the commit's report. A broker dead-letter (`basic.reject`, no requeue)
//!   cannot add headers, so we do not use it; the queue's `x-dead-letter-exchange` remains
//!   as the broker's safety net (TTL, length limits, an operator's reject). Whether a
//!   delivery is dead-lettered is decided from the *prepared* document (pure, the same on
//!   every redelivery), not from the commit's outcome — so a crash between commit and
//!   dead-letter still dead-letters it on redelivery (at least once in `bodflow.dead`). A
//!   commit-time rejection redelivered after such a crash is a duplicate and is not
//!   dead-lettered again (its ConfirmBOD was written and is published).
//! - **Replays** (`bodflow dlq replay`, [`super::dlq`]) carry header `x-bodflow-retry: true`
//!   (bool or `"true"`): the delivery runs with [`Input::retry`], so a message id whose
//!   marker is `rejected` or `parked` is processed again (a fixed document is applied once;
//!   an unchanged one is rejected and dead-lettered again), while an applied one stays a
//!   duplicate.
//! - **Transient failures** (store errors): nothing is acked; the group's commit is retried
//!   with doubling backoff. After [`RunOptions::store_attempts`] each delivery is tried once
//!   on its own; those that still fail are dead-lettered with code `retries_exhausted` and
//!   acked. Never dropped.
//! - **Broker failures** (a failed ack, dead-letter publish or a closed channel) end the
//!   session: unacked deliveries are redelivered on the next session and the message-id
//!   markers make them duplicates. Ackers of a dead channel are never used again: a group is
//!   local to one session.
//! - **Shutdown** stops taking new groups, finishes (commits, flushes, acks) the group in
//!   flight and cancels the consumer; prefetched deliveries not yet taken go back to the
//!   queue when the channel closes.
//! - **Reload** ([`crate::reload`]): a group is prepared and committed under one
//!   configuration, read from [`Live`] when the group starts and held until it is committed;
//!   a reload swaps between groups. Acks are unaffected.
//!
//! # Tracing
//!
//! Every delivery gets an INFO span `delivery` (message id, redelivered, W3C trace and span
//! ids; BODID, noun, verb, sender once prepared; outcome once committed) entered for its
//! prepare, its commit report and its dead-letter. Its trace continues the delivery's
//! `traceparent` header when that is valid, else starts a new one; the outbox rows of the
//! document carry it on ([`crate::telemetry::trace`]).

use std::sync::Arc;

use chrono::Utc;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions,
};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::Instrument as _;

use super::{confirmed, header_str, put_header, short, topology, Error, RunOptions};
use crate::pipeline::{Input, Outcome, Pipeline, Prepared, Report, State};
use crate::reload::Live;
use crate::store::{Store, StoreError};
use crate::telemetry::events::{
    emit, BodAcked, BodProcessed, BodReceived, BodRejected, DeadLettered, GroupCommitted,
    ParkedReleased, Promotion, StageTimed, StoreCommitRetried, StoreFlushed, TraceparentIgnored,
};
use crate::telemetry::trace::TraceContext;
use crate::telemetry::Readiness;

const CONSUMER_TAG: &str = "bodflow";

/// Reasons longer than this are cut in the `x-bodflow-reason` header.
const MAX_REASON: usize = 1024;

/// What the consumer works with during one session.
pub(super) struct Consumer<'a> {
    /// The pipeline in force, read once per group (see the module docs).
    pub live: &'a Live,
    pub options: &'a RunOptions,
    /// Confirm-mode channel for our own dead-letters.
    pub dead_letters: &'a Channel,
    /// Woken after each commit: there are outbox rows to publish.
    pub wake: &'a Arc<Notify>,
    /// Set once consuming has started (the session clears it when it ends).
    pub readiness: &'a Readiness,
}

/// Why a delivery goes to `bodflow.dead`.
struct DeadLetter {
    stage: &'static str,
    code: &'static str,
    reason: String,
}

/// Consumes until `stop` (then finishes the group in flight) or the first broker failure.
pub(super) async fn run(
    channel: &Channel,
    consumer: &Consumer<'_>,
    stop: &CancellationToken,
) -> Result<(), Error> {
    let mut deliveries = channel
        .basic_consume(
            short(topology::INBOUND_QUEUE)?,
            short(CONSUMER_TAG)?,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    if !stop.is_cancelled() {
        consumer.readiness.set_consuming(true);
    }
    // The committer takes groups and commits them (not yet durable); the acker flushes once
    // for every group committed so far, then dead-letters and acks them in order. While a
    // flush waits on the disk, the next group is already being prepared and committed.
    let (to_acker, committed) = tokio::sync::mpsc::channel::<Committed>(ACK_QUEUE);
    let committer = async {
        loop {
            let first = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                next = deliveries.next() => next,
            };
            let Some(first) = first else {
                return Err(Error::ConsumerCancelled);
            };
            let first = first?;
            let mut tracked = vec![received(&first)];
            let mut group = vec![first];
            let deadline = Instant::now() + consumer.options.group_window;
            while group.len() < consumer.options.group_max {
                match tokio::time::timeout_at(deadline, deliveries.next()).await {
                    Ok(Some(delivery)) => {
                        let delivery = delivery?;
                        tracked.push(received(&delivery));
                        group.push(delivery);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let done = consumer.commit_group(group, tracked).await?;
            if to_acker.send(done).await.is_err() {
                // The acker has stopped; its error ends the session.
                break;
            }
        }
        drop(to_acker);
        Ok(())
    };
    tokio::try_join!(committer, consumer.acknowledge(committed))?;
    let _ = channel
        .basic_cancel(short(CONSUMER_TAG)?, BasicCancelOptions::default())
        .await;
    Ok(())
}

/// Groups committed and waiting for the acker (bounded: backpressure on the committer).
const ACK_QUEUE: usize = 8;

/// A committed group, not yet durable: what the acker needs to finish it.
struct Committed {
    group: Vec<Delivery>,
    dead: Vec<Option<DeadLetter>>,
    /// Per delivery: arrival (end-to-end latency at ack) and span.
    tracked: Vec<Tracked>,
}

/// What the consumer keeps beside each delivery.
struct Tracked {
    /// When it was taken.
    arrived: Instant,
    /// The `delivery` span (module docs).
    span: tracing::Span,
    /// bodflow's place in the delivery's trace: its trace id, our span id.
    trace: TraceContext,
}

/// Counts a delivery as received and opens its span and trace.
fn received(d: &Delivery) -> Tracked {
    let arrived = Instant::now();
    let headers = d.properties.headers().as_ref();
    let announced = header_str(headers, "documentName").or_else(|| super::document_name(&d.data));
    let (verb, noun) = match announced.as_deref().and_then(|n| n.split_once('.')) {
        Some((verb, noun)) => (Some(verb), Some(noun)),
        None => (None, None),
    };
    emit(BodReceived {
        bytes: d.data.len(),
        redelivered: d.redelivered,
        noun,
        verb,
    });
    let inbound = header_str(headers, "traceparent").and_then(|value| {
        TraceContext::parse(&value, header_str(headers, "tracestate").as_deref())
            .map_err(|e| {
                emit(TraceparentIgnored {
                    code: e.code(),
                    value: &value,
                })
            })
            .ok()
    });
    let trace = match &inbound {
        Some(parent) => parent.child(),
        None => TraceContext::root(),
    };
    let message_id = d.properties.message_id().as_ref().map(|m| m.as_str());
    let parent_span_id = inbound.as_ref().map(TraceContext::span_id_hex);
    let span = tracing::info_span!(
        "delivery",
        message_id = message_id.map(tracing::field::display),
        redelivered = d.redelivered,
        trace_id = %format_args!("{:032x}", trace.trace_id),
        span_id = %format_args!("{:016x}", trace.span_id),
        parent_span_id = parent_span_id.as_deref(),
        bod_id = Empty,
        noun = Empty,
        verb = Empty,
        sender = Empty,
        outcome = Empty,
    );
    Tracked {
        arrived,
        span,
        trace,
    }
}

/// Fills the span fields known once the document is prepared.
fn record_prepared(span: &tracing::Span, p: &Prepared, had_message_id: bool) {
    let ctx = &p.ctx;
    if !had_message_id {
        span.record("message_id", ctx.message_id.as_str());
    }
    if let Some(area) = &ctx.area {
        if let Some(bod_id) = &area.bod_id {
            span.record("bod_id", bod_id.as_str());
        }
        if let Some(sender) = &area.logical_id {
            span.record("sender", sender.as_str());
        }
    }
    if let Some(noun) = &ctx.noun {
        span.record("noun", noun.as_str());
    }
    if let Some(verb) = &ctx.verb {
        span.record("verb", verb.as_str());
    }
}

impl Consumer<'_> {
    /// Prepare → commit (with retries). Durability, dead-letters and acks are the acker's.
    async fn commit_group(
        &self,
        group: Vec<Delivery>,
        tracked: Vec<Tracked>,
    ) -> Result<Committed, Error> {
        // One configuration for the whole group: a reload waits for this guard.
        let config = self.live.read().await;
        let pipeline = config.clone();
        let (group, tracked, prepared) = tokio::task::spawn_blocking(move || {
            let prepared: Vec<Prepared> = group
                .iter()
                .zip(&tracked)
                .map(|(d, t)| {
                    let _span = t.span.enter();
                    let started = std::time::Instant::now();
                    let mut p = pipeline.prepare(&input(d));
                    emit(StageTimed {
                        stage: "prepare",
                        seconds: started.elapsed().as_secs_f64(),
                    });
                    p.ctx.trace = Some(t.trace.clone());
                    record_prepared(&t.span, &p, d.properties.message_id().is_some());
                    p
                })
                .collect();
            (group, tracked, prepared)
        })
        .await?;
        let prepared = Arc::new(prepared);

        let mut dead: Vec<Option<DeadLetter>> = prepared.iter().map(rejected).collect();
        let started = Instant::now();
        match self.commit_with_retry(&config, &prepared).await {
            Ok(reports) => {
                emit(GroupCommitted {
                    docs: group.len(),
                    seconds: started.elapsed().as_secs_f64(),
                });
                for ((t, r), slot) in tracked.iter().zip(&reports).zip(dead.iter_mut()) {
                    trace_delivery(t, r);
                    if slot.is_none() {
                        *slot = rejected_at_commit(r);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, code = e.code(), deliveries = group.len(), "Group commit failed after retries; committing one by one");
                self.commit_singly(&config, &group, &tracked, &prepared, &mut dead)
                    .await?;
            }
        }
        drop(config);
        Ok(Committed {
            group,
            dead,
            tracked,
        })
    }

    /// Flush → wake the outbox publisher → dead-letter the rejected → ack, for every group
    /// committed since the last flush (one flush covers them all: group commit). Nothing is
    /// published or acked before the flush that makes it durable.
    async fn acknowledge(&self, mut committed: mpsc::Receiver<Committed>) -> Result<(), Error> {
        while let Some(first) = committed.recv().await {
            let mut ready = vec![first];
            while let Ok(more) = committed.try_recv() {
                ready.push(more);
            }
            let started = Instant::now();
            flush(self.live.store()).await?;
            emit(StoreFlushed {
                seconds: started.elapsed().as_secs_f64(),
            });
            self.wake.notify_one();
            for c in &ready {
                for ((d, dl), t) in c.group.iter().zip(&c.dead).zip(&c.tracked) {
                    if let Some(dl) = dl {
                        dead_letter(self.dead_letters, d, dl)
                            .instrument(t.span.clone())
                            .await?;
                    }
                }
                ack(&c.group).await?;
                for t in &c.tracked {
                    emit(BodAcked {
                        seconds: t.arrived.elapsed().as_secs_f64(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Commits the group in one transaction; retries store errors with backoff.
    async fn commit_with_retry(
        &self,
        pipeline: &Pipeline,
        prepared: &Arc<Vec<Prepared>>,
    ) -> Result<Vec<Report>, StoreError> {
        let mut attempt = 0;
        loop {
            match commit(pipeline, prepared.clone(), None).await {
                Ok(reports) => return Ok(reports),
                Err(e) => {
                    attempt += 1;
                    if attempt >= self.options.store_attempts {
                        return Err(e);
                    }
                    let delay = self.options.retry_base * (1 << attempt.min(10));
                    emit(StoreCommitRetried {
                        attempt,
                        delay_ms: delay.as_millis() as u64,
                        code: e.code(),
                        error: &e,
                    });
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// After the group kept failing: each delivery once on its own; the ones that still fail
    /// are dead-lettered `retries_exhausted`.
    async fn commit_singly(
        &self,
        pipeline: &Pipeline,
        group: &[Delivery],
        tracked: &[Tracked],
        prepared: &Arc<Vec<Prepared>>,
        dead: &mut [Option<DeadLetter>],
    ) -> Result<(), Error> {
        for (i, ((d, t), slot)) in group.iter().zip(tracked).zip(dead.iter_mut()).enumerate() {
            match commit(pipeline, prepared.clone(), Some(i)).await {
                Ok(reports) => {
                    for r in &reports {
                        trace_delivery(t, r);
                        if slot.is_none() {
                            *slot = rejected_at_commit(r);
                        }
                    }
                }
                Err(e) => {
                    let _span = t.span.enter();
                    tracing::error!(error = %e, code = e.code(), message_id = ?d.properties.message_id(), "Delivery could not be committed; dead-lettering it");
                    *slot = Some(DeadLetter {
                        stage: "upsert",
                        code: "retries_exhausted",
                        reason: format!(
                            "store commit failed {} times: {e}",
                            self.options.store_attempts + 1
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

/// One transaction over the whole group (or only document `only`); not yet durable.
async fn commit(
    pipeline: &Pipeline,
    prepared: Arc<Vec<Prepared>>,
    only: Option<usize>,
) -> Result<Vec<Report>, StoreError> {
    let pipeline = pipeline.clone();
    tokio::task::spawn_blocking(move || {
        let batch = match only {
            Some(i) => prepared.get(i..=i).unwrap_or_default(),
            None => &prepared[..],
        };
        pipeline.commit_batch(batch)
    })
    .await
    .unwrap_or_else(|e| {
        Err(StoreError::Corrupt {
            key: String::new(),
            message: format!("commit task failed: {e}"),
        })
    })
}

/// Makes everything committed so far durable.
async fn flush(store: &Arc<Store>) -> Result<(), Error> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.flush().map(|_| ()))
        .await?
        .map_err(Error::from)
}

fn input(d: &Delivery) -> Input<'_> {
    Input {
        bytes: &d.data,
        source: "amqp",
        message_id: d.properties.message_id().as_ref().map(|m| m.as_str()),
        reply_to: d.properties.reply_to().as_ref().map(|r| r.as_str()),
        received_at: Utc::now(),
        // `bodflow dlq replay` marks its re-publishes: a rejected message id runs again.
        retry: super::dlq::is_retry(d.properties.headers().as_ref()),
    }
}

fn rejected(p: &Prepared) -> Option<DeadLetter> {
    match &p.state {
        State::Rejected { rejection, .. } => Some(DeadLetter {
            stage: rejection.stage.as_str(),
            code: rejection.code,
            reason: rejection.message.chars().take(MAX_REASON).collect(),
        }),
        _ => None,
    }
}

/// Rejections only the commit can decide (an Acknowledge whose correlation is unknown).
fn rejected_at_commit(r: &Report) -> Option<DeadLetter> {
    let e = r
        .error
        .as_ref()
        .filter(|_| r.outcome == Outcome::Rejected)?;
    Some(DeadLetter {
        stage: e.stage.as_str(),
        code: e.code,
        reason: e.message.chars().take(MAX_REASON).collect(),
    })
}

/// Reports a committed delivery in its span (which gets the outcome).
fn trace_delivery(t: &Tracked, r: &Report) {
    t.span.record("outcome", r.outcome.as_str());
    let _guard = t.span.enter();
    emit(BodProcessed {
        noun: r.noun.as_deref(),
        verb: r.verb.as_deref(),
        outcome: r.outcome,
        record: r.record.as_deref(),
        outputs: r.outputs.len(),
    });
    if let Some(e) = &r.error {
        emit(BodRejected {
            stage: e.stage.as_str(),
            code: e.code,
            message: &e.message,
        });
    }
    promotion_events(r);
    // Parked documents this delivery's change released, in the same transaction.
    for released in &r.released {
        promotion_events(released);
        emit(ParkedReleased {
            message_id: &released.message_id,
            released_by: &r.message_id,
            outcome: released.outcome,
            record: released.record.as_deref(),
        });
        emit(BodProcessed {
            noun: released.noun.as_deref(),
            verb: released.verb.as_deref(),
            outcome: released.outcome,
            record: released.record.as_deref(),
            outputs: released.outputs.len(),
        });
    }
}

/// Promotion steps a report shows: a Process sent, an Acknowledge that linked the system of
/// record's ID (`promoted`) or recorded its refusal (`promotion_rejected`).
fn promotion_events(r: &Report) {
    let sent = r
        .outputs
        .iter()
        .filter(|o| o.kind == "ProcessCustomerPartyMaster")
        .count();
    for _ in 0..sent {
        emit(Promotion {
            event: "sent",
            record: r.record.as_deref(),
        });
    }
    if r.verb.as_deref() == Some("Acknowledge") && r.outcome == Outcome::Applied {
        emit(Promotion {
            event: if r.action == Some(crate::pipeline::Action::Linked) {
                "promoted"
            } else {
                "promotion_rejected"
            },
            record: r.record.as_deref(),
        });
    }
}

/// Publishes the delivery as it came, plus our three headers, to `bodflow.dlx`, and waits
/// for the confirm.
async fn dead_letter(channel: &Channel, d: &Delivery, dl: &DeadLetter) -> Result<(), Error> {
    let mut headers = d.properties.headers().clone().unwrap_or_default();
    put_header(&mut headers, "x-bodflow-stage", dl.stage);
    put_header(&mut headers, "x-bodflow-code", dl.code);
    put_header(&mut headers, "x-bodflow-reason", &dl.reason);
    let properties = d
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    let confirm = channel
        .basic_publish(
            short(topology::DLX)?,
            d.routing_key.clone(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &d.data,
            properties,
        )
        .await?;
    confirmed(confirm, topology::DLX).await?;
    emit(DeadLettered {
        stage: dl.stage,
        code: dl.code,
        message_id: d.properties.message_id().as_ref().map(|m| m.as_str()),
    });
    Ok(())
}

/// Acks a processed group: one `multiple` ack when its tags are contiguous. An acker of a
/// closed channel refuses (`Ok(false)`): that ends the session, and the broker redelivers.
async fn ack(group: &[Delivery]) -> Result<(), Error> {
    let Some(last) = group.last() else {
        return Ok(());
    };
    let contiguous = group
        .windows(2)
        .all(|w| matches!(w, [a, b] if b.delivery_tag == a.delivery_tag + 1));
    let ok = if contiguous {
        last.acker.ack(BasicAckOptions { multiple: true }).await?
    } else {
        let mut all = true;
        for d in group {
            all &= d.acker.ack(BasicAckOptions::default()).await?;
        }
        all
    };
    if ok {
        Ok(())
    } else {
        Err(Error::AckRefused)
    }
}
