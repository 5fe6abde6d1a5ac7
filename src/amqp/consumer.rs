//! Consumes `bodflow.inbound` and runs every delivery through the same [`Pipeline`] as
//! `replay`.
//!
//! # Flow
//!
//! Deliveries are handed to the prepare lanes ([`super::lanes`]) as they arrive (decode and the
//! stateless stages, in parallel on `amqp.lanes` threads). One committer takes what the
//! [`Sequencer`] releases — prepared documents in arrival order, up to
//! [`RunOptions::group_max`] — and commits them in ONE store transaction
//! ([`Pipeline::commit_batch`]: records, message-id markers, outbox rows); while a commit
//! runs, the next documents are prepared and queue up behind it, so groups grow with load
//! and stay small (low latency) when the queue is quiet. An acker task flushes the store
//! once for everything committed so far (group commit), then wakes the outbox publisher,
//! and acks.
//!
//! # Ack discipline
//!
//! - **Ack only what is durable.** A delivery is acked after the flush that follows its
//!   commit, never before. The acker acks with one `basic.ack(tag, multiple)` the deliveries
//!   below the *low-water mark* — the oldest delivery of the session not finished yet
//!   (still preparing, committing, or waiting for a retry) — since every delivery below it
//!   is committed and flushed; finished deliveries above the mark (they overtook a slow or
//!   failing document of another key) are acked one by one, so they do not hold prefetch
//!   slots. A `multiple` ack therefore never covers a delivery whose commit is not durable.
//! - **Order.** Commits follow arrival order, so deliveries for one document key are applied
//!   in the order the queue gave them, and normally the whole stream is applied exactly as
//!   `replay` applies the same inputs. Only a large document still being prepared, or one
//!   whose commit failed and waits for its retry, is stepped over — by documents of *other*
//!   keys only ([`super::lanes`]).
//! - **Permanent failures** (the pipeline rejects the document): the delivery is
//!   dead-lettered *through the outbox*. The transaction that records the rejection (its
//!   message-id marker, its ConfirmBOD) also writes an outbox row holding the delivery as it
//!   came — payload, routing key, properties — and the rejection; the outbox publisher
//!   publishes it to `bodflow.dlx` with headers `x-bodflow-stage`, `x-bodflow-code`,
//!   `x-bodflow-reason` (and `x-bodflow-path`) on its confirm-mode channel, and removes the
//!   row after the broker's confirm ([`super::dead_letter`]). The delivery itself is acked
//!   like any other, after the flush that makes its transaction durable. So a delivery is in
//!   `bodflow.dead` exactly when its rejection is recorded, however the process stops in
//!   between: a crash before the flush brings it back to be rejected again, one after it
//!   leaves the row for the next start (at least once, like every row). This holds for the
//!   rejections `prepare` decides and for the few only the commit can decide (an Acknowledge
//!   with an unknown correlation), and a `bodflow.dead` that refuses messages (a
//!   `reject-publish` policy, a full queue) holds up its own rows only, retried with
//!   backoff, not the stream. A broker dead-letter (`basic.reject`, no requeue) cannot add
//!   headers, so we do not use it; the queue's `x-dead-letter-exchange` remains as the
//!   broker's safety net (TTL, length limits, an operator's reject). The row holds the
//!   whole payload, also of a delivery rejected `too_large`: the broker's own
//!   `max_message_size` bounds what a sender can make the store keep.
//! - **Replays** (`bodflow dlq replay`, [`super::dlq`]) carry header `x-bodflow-retry: true`
//!   (bool or `"true"`): the delivery runs with [`Input::retry`], so a message id whose
//!   marker is `rejected` or `parked` is processed again (a fixed document is applied once;
//!   an unchanged one is rejected and dead-lettered again), while an applied one stays a
//!   duplicate.
//! - **Transient failures** (store errors): nothing is acked. When a group's transaction
//!   fails, its documents are committed one by one in order; those that still fail wait for
//!   a retry (alone, doubling backoff from [`RunOptions::retry_base`]) and hold back later
//!   deliveries of their own key only. After [`RunOptions::store_attempts`] failed attempts a
//!   delivery is dead-lettered with code `retries_exhausted` and acked. Never dropped. That
//!   copy has no transaction to go in: the acker publishes it itself, on a confirm-mode
//!   channel of its own, after the round's flush, and acks after its confirm. When
//!   every document of a group fails (the store itself is failing), the committer also
//!   pauses before the next group. **A store that cannot write at all is not a document's
//!   failure:** before giving a delivery up, the commit probes the store with a small
//!   flushed write ([`Store::probe`]); if that fails too (sled writes nothing more after an
//!   I/O error, a full disk say, until it is opened again), nothing is dead-lettered or acked:
//!   the session ends with the store error, and `serve` — probing once more — returns
//!   [`Error::StoreDown`], on which `bodflow run` lets go of the store and opens it again,
//!   in the same process, until it can write. The deliveries go back to the queue
//!   meanwhile.
//! - **Broker failures** (a failed ack, dead-letter publish or a closed channel) end the
//!   session: unacked deliveries are redelivered on the next session and the message-id
//!   markers make them duplicates. Ackers of a dead channel are never used again: the
//!   sequencer and everything in it are local to one session.
//! - **Shutdown** stops taking deliveries, finishes (prepares, commits, flushes, acks) the
//!   ones taken, except those waiting for a retry, and cancels the consumer; what is not
//!   acked goes back to the queue when the channel closes.
//! - **Reload** ([`crate::reload`]): every commit holds [`Live::read`] until it is
//!   committed, so a reload swaps between commits, never during one. Lanes prepare with the
//!   pipeline in force when the delivery arrived; a document prepared under a configuration
//!   that a reload has replaced since is prepared again under the new one inside the commit,
//!   so each document is prepared and committed under one configuration. Acks are
//!   unaffected.
//!
//! # Tracing
//!
//! Every delivery gets an INFO span `delivery` (message id, redelivered, W3C trace and span
//! ids; BODID, noun, verb, sender once prepared; outcome once committed) entered for its
//! prepare, its commit report and (one given up) its dead-letter. Its trace continues the delivery's
//! `traceparent` header when that is valid, else starts a new one; the outbox rows of the
//! document carry it on ([`crate::telemetry::trace`]).

use std::sync::Arc;

use chrono::Utc;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::{mpsc, Notify, RwLockReadGuard};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::Instrument as _;

use super::lanes::{self, Job, Lanes, Sequencer};
use super::{all_in_order, confirmed, dead_letter, header_str, short, topology, Error, RunOptions};
use crate::pipeline::{Input, Outcome, Pipeline, Prepared, Report, State, Verb};
use crate::reload::Live;
use crate::store::{Store, StoreError};
use crate::telemetry::events::{
    emit, BodAcked, BodProcessed, BodReceived, BodRejected, DeadLettered, GroupCommitted,
    ParkedReleased, Promotion, StageTimed, StoreCommitRetried, StoreFlushed, TraceparentIgnored,
};
use crate::telemetry::trace::TraceContext;
use crate::telemetry::Readiness;

const CONSUMER_TAG: &str = "bodflow";

/// Commit retries never wait longer than this.
const MAX_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(5);

/// What the consumer works with during one session.
pub(super) struct Consumer<'a> {
    /// The pipeline in force, held by each commit (see the module docs).
    pub live: &'a Live,
    pub options: &'a RunOptions,
    /// Confirm-mode channel for the dead-letters of deliveries the store could not commit
    /// (`retries_exhausted`); rejected ones go through the outbox.
    pub dead_letters: &'a Channel,
    /// What those copies must fit in.
    pub frames: super::FrameLimit,
    /// Woken after each flush: there are outbox rows to publish.
    pub wake: &'a Arc<Notify>,
    /// Set once consuming has started (the session clears it when it ends).
    pub readiness: &'a Readiness,
}

/// What the consumer keeps beside each delivery.
struct Tracked {
    /// When it was taken (end-to-end latency at ack).
    arrived: Instant,
    /// The `delivery` span (module docs).
    span: tracing::Span,
    /// bodflow's place in the delivery's trace: its trace id, our span id.
    trace: TraceContext,
}

/// A delivery on its way to a lane, with the pipeline in force when it arrived.
struct Inbound {
    delivery: Delivery,
    tracked: Tracked,
    pipeline: Pipeline,
}

/// A prepared delivery, waiting in the sequencer or being committed.
struct Work {
    delivery: Delivery,
    tracked: Tracked,
    /// The configuration it was prepared under.
    config: Arc<crate::config::Config>,
    prepared: Prepared,
    /// Failed commit attempts so far.
    attempts: u32,
}

/// A delivery that is committed (or given up), for the acker.
struct Finished {
    delivery: Delivery,
    tracked: Tracked,
    /// A dead-letter copy the acker publishes itself ([`Direct`]).
    direct: Option<Direct>,
}

/// A dead-letter copy with no outbox row: of a delivery the store could not commit
/// (`retries_exhausted`: no transaction to go in). The acker publishes it after the round's
/// flush and acks the delivery after its confirm (after a crash in between, the delivery
/// comes back and is retried).
struct Direct {
    stage: &'static str,
    code: &'static str,
    reason: String,
    path: Option<String>,
}

/// What the committer hands the acker after each commit.
struct Done {
    finished: Vec<Finished>,
    /// Whether anything was written (a flush is needed before acking).
    wrote: bool,
    /// The oldest delivery tag of the session not finished yet (`None`: all are): the
    /// `multiple` ack stays below it.
    low: Option<u64>,
}

/// Done batches waiting for the acker (bounded: backpressure on the committer).
const ACK_QUEUE: usize = 8;

/// How one document of a group came out of its commit.
enum Committed {
    Applied(Box<Report>),
    Failed(StoreError),
    /// Not tried: an earlier document of its key (or a barrier) failed in the same group.
    Skipped,
}

/// What a commit gives back: the group's sequence numbers and work (without their prepared
/// documents), the prepared documents, how each came out, the seconds it took, and — when a
/// document failed its last attempt — whether the store failed a probe write too
/// ([`Store::probe`]: then the store as a whole cannot write, and that is no reason to
/// dead-letter anything).
type CommitResult = (
    Vec<(u64, Shell)>,
    Vec<Prepared>,
    Vec<Committed>,
    f64,
    Option<StoreError>,
);

/// A commit running on the blocking pool.
type CommitTask = JoinHandle<CommitResult>;

/// A [`Work`] whose prepared document is in the commit.
struct Shell {
    delivery: Delivery,
    tracked: Tracked,
    config: Arc<crate::config::Config>,
    attempts: u32,
}

/// Consumes until `stop` (then finishes what it has taken) or the first broker failure.
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
    let (prepared_tx, mut prepared_rx) = mpsc::unbounded_channel();
    // Lanes prepare with the pipeline in force when a delivery arrives; refreshed from
    // `live` whenever a commit takes it (never while one is held: see `Live::read`).
    let mut snapshot = consumer.live.current().await;
    let lanes = Lanes::start(snapshot.config.amqp.lanes, prepare, prepared_tx);
    let (to_acker, committed) = mpsc::channel::<Done>(ACK_QUEUE);
    let options = consumer.options;
    let committer = async {
        let mut sequencer: Sequencer<Work> = Sequencer::default();
        // The commit in flight and the configuration it holds.
        let mut commit: Option<(CommitTask, RwLockReadGuard<'_, Pipeline>)> = None;
        let mut stopping = false;
        // Set when a whole group failed: the store itself is in trouble.
        let mut paused_until: Option<Instant> = None;
        let mut store_failures = 0u32;
        loop {
            let now = Instant::now();
            if commit.is_none() && paused_until.is_none_or(|t| t <= now) {
                paused_until = None;
                let group = sequencer.take_group(now.into_std(), options.group_max, !stopping);
                if !group.is_empty() {
                    // Held until this commit is done: a reload waits for it.
                    let guard = consumer.live.read().await;
                    snapshot = guard.clone();
                    commit = Some((start_commit(&guard, group, options.store_attempts), guard));
                } else if stopping && !sequencer.preparing() {
                    break;
                }
            }
            // Never in the past: a retry that is due but still held back must not spin.
            let wake_at = match commit {
                Some(_) => None,
                None => [paused_until, sequencer.next_due().map(Instant::from_std)]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|t| t.max(Instant::now() + std::time::Duration::from_millis(1))),
            };
            tokio::select! {
                biased;
                joined = join(&mut commit) => {
                    // Drops the guard: a waiting reload may swap now.
                    commit = None;
                    let (shells, prepared, results, seconds, store_down) = joined?;
                    if let Some(e) = store_down {
                        // Nothing of this group is acked or dead-lettered: the session ends,
                        // the deliveries go back to the queue, and `serve` returns
                        // `StoreDown` (the store is opened again).
                        tracing::error!(error = %e, code = e.code(), "A delivery failed its last commit attempt and the store fails a probe write too: the store cannot write");
                        return Err(Error::Store(e));
                    }
                    let outcome = finish_commit(
                        &mut sequencer,
                        options,
                        shells,
                        prepared,
                        results,
                        seconds,
                    );
                    if outcome.all_failed {
                        store_failures += 1;
                        paused_until = Some(Instant::now() + backoff(options, store_failures));
                    } else {
                        store_failures = 0;
                    }
                    if !outcome.done.finished.is_empty()
                        && to_acker.send(outcome.done).await.is_err()
                    {
                        // The acker has stopped; its error ends the session.
                        break;
                    }
                }
                Some((seq, work)) = prepared_rx.recv() => match work {
                    Some(work) => sequencer.ready(seq, work),
                    None => return Err(Error::LaneFailed),
                },
                () = stop.cancelled(), if !stopping => stopping = true,
                next = deliveries.next(), if !stopping => {
                    let Some(delivery) = next else {
                        return Err(Error::ConsumerCancelled);
                    };
                    let delivery = delivery?;
                    let tracked = received(&delivery);
                    let seq = delivery.delivery_tag;
                    let size = delivery.data.len();
                    sequencer.push(
                        seq,
                        lanes::document_key(&delivery.data),
                        size > options.large_bytes,
                    );
                    let job = Job {
                        seq,
                        weight: size,
                        input: Inbound {
                            delivery,
                            tracked,
                            pipeline: snapshot.clone(),
                        },
                    };
                    if !lanes.dispatch(job) {
                        return Err(Error::LaneFailed);
                    }
                }
                () = sleep_until(wake_at), if wake_at.is_some() => {}
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

async fn join<G>(commit: &mut Option<(CommitTask, G)>) -> Result<CommitResult, Error> {
    match commit {
        Some((task, _)) => Ok(task.await?),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn backoff(options: &RunOptions, attempt: u32) -> std::time::Duration {
    (options.retry_base * (1u32 << attempt.min(10))).min(MAX_RETRY_DELAY)
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

/// A lane's work: the stateless stages of one delivery.
fn prepare(inbound: Inbound) -> Work {
    let prepared = prepare_in(&inbound.pipeline, &inbound.delivery, &inbound.tracked);
    Work {
        delivery: inbound.delivery,
        tracked: inbound.tracked,
        config: inbound.pipeline.config,
        prepared,
        attempts: 0,
    }
}

/// [`Pipeline::prepare`] in the delivery's span, carrying its trace.
fn prepare_in(pipeline: &Pipeline, d: &Delivery, t: &Tracked) -> Prepared {
    let _span = t.span.enter();
    let started = std::time::Instant::now();
    let envelope = envelope(d);
    let mut p = pipeline.prepare(&input(d, &envelope));
    emit(StageTimed {
        stage: "prepare",
        seconds: started.elapsed().as_secs_f64(),
    });
    p.ctx.trace = Some(t.trace.clone());
    // Kept for the outbox row that dead-letters it, should it be rejected: by `prepare`, or
    // by the commit (an Acknowledge whose correlation is unknown).
    let may_be_rejected = match &p.state {
        State::Rejected { .. } => true,
        State::Ready(doc) => doc.verb == Verb::Acknowledge,
        State::Inactive { .. } => false,
    };
    if may_be_rejected {
        p.ctx.delivered = Some(Arc::new(crate::store::Delivered {
            routing_key: d.routing_key.to_string(),
            properties: dead_letter::encode(&dead_letter::as_sent(&d.properties)),
            payload: d.data.clone(),
        }));
    }
    record_prepared(&t.span, &p, d.properties.message_id().is_some());
    p
}

/// Commits a group on the blocking pool: in one transaction, or — when that fails — one by
/// one in order, not trying a document after a failed one of the same key (nor anything
/// after a failed barrier).
fn start_commit(pipeline: &Pipeline, group: Vec<(u64, Work)>, store_attempts: u32) -> CommitTask {
    let mut shells = Vec::with_capacity(group.len());
    let mut prepared = Vec::with_capacity(group.len());
    for (seq, w) in group {
        shells.push((
            seq,
            Shell {
                delivery: w.delivery,
                tracked: w.tracked,
                config: w.config,
                attempts: w.attempts,
            },
        ));
        prepared.push(w.prepared);
    }
    let pipeline = pipeline.clone();
    tokio::task::spawn_blocking(move || {
        // Prepared under a configuration a reload has replaced since: again, under this one.
        for ((_, shell), p) in shells.iter_mut().zip(prepared.iter_mut()) {
            if !Arc::ptr_eq(&shell.config, &pipeline.config) {
                *p = prepare_in(&pipeline, &shell.delivery, &shell.tracked);
                shell.config = pipeline.config.clone();
            }
        }
        let started = std::time::Instant::now();
        let results = match pipeline.commit_batch(&prepared) {
            Ok(reports) => reports
                .into_iter()
                .map(|r| Committed::Applied(Box::new(r)))
                .collect(),
            Err(e) if prepared.len() == 1 => vec![Committed::Failed(e)],
            Err(e) => {
                tracing::warn!(error = %e, code = e.code(), deliveries = prepared.len(), "Group commit failed; committing one by one");
                let mut held = Held::default();
                let mut results = Vec::with_capacity(prepared.len());
                for (i, (_, shell)) in shells.iter().enumerate() {
                    let _span = shell.tracked.span.enter();
                    let key = lanes::document_key(&shell.delivery.data);
                    if !held.admits(key) {
                        results.push(Committed::Skipped);
                        continue;
                    }
                    match pipeline.commit_batch(prepared.get(i..=i).unwrap_or_default()) {
                        Ok(mut reports) => match reports.pop() {
                            Some(report) => results.push(Committed::Applied(Box::new(report))),
                            None => results.push(Committed::Skipped),
                        },
                        Err(e) => {
                            held.failed(key);
                            results.push(Committed::Failed(e));
                        }
                    }
                }
                results
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        // A document about to be given up: is it this document, or the store?
        let last_attempt = shells.iter().zip(&results).any(|((_, shell), result)| {
            matches!(result, Committed::Failed(_)) && shell.attempts + 1 >= store_attempts
        });
        let store_down = if last_attempt {
            pipeline.store.probe().err()
        } else {
            None
        };
        (shells, prepared, results, seconds, store_down)
    })
}

/// What [`finish_commit`] decided.
struct CommitOutcome {
    done: Done,
    /// Every document of a group of several failed.
    all_failed: bool,
}

/// Puts a commit's results back into the sequencer: applied ones are finished, failed ones
/// wait for a retry (or are given up), skipped ones go back in line.
fn finish_commit(
    sequencer: &mut Sequencer<Work>,
    options: &RunOptions,
    shells: Vec<(u64, Shell)>,
    prepared: Vec<Prepared>,
    results: Vec<Committed>,
    seconds: f64,
) -> CommitOutcome {
    let size = shells.len();
    let mut finished = Vec::new();
    // The applied documents' parsed trees and reports, freed off this thread (below).
    let mut spent = Vec::with_capacity(size);
    let mut applied = 0;
    let mut failed = 0;
    let now = std::time::Instant::now();
    for (((seq, shell), prepared), result) in shells.into_iter().zip(prepared).zip(results) {
        let mut work = Work {
            delivery: shell.delivery,
            tracked: shell.tracked,
            config: shell.config,
            prepared,
            attempts: shell.attempts,
        };
        match result {
            Committed::Applied(report) => {
                applied += 1;
                trace_delivery(&work.tracked, &report);
                sequencer.done(seq);
                finished.push(Finished {
                    delivery: work.delivery,
                    tracked: work.tracked,
                    direct: None,
                });
                spent.push((work.prepared, report));
            }
            Committed::Failed(e) => {
                failed += 1;
                work.attempts += 1;
                let message_id = work.delivery.properties.message_id().clone();
                let span = work.tracked.span.clone();
                let _span = span.enter();
                if work.attempts >= options.store_attempts {
                    tracing::error!(error = %e, code = e.code(), message_id = ?message_id, attempts = work.attempts, "Delivery could not be committed; dead-lettering it");
                    sequencer.done(seq);
                    finished.push(Finished {
                        delivery: work.delivery,
                        tracked: work.tracked,
                        direct: Some(Direct {
                            stage: "upsert",
                            code: "retries_exhausted",
                            reason: format!("store commit failed {} times: {e}", work.attempts),
                            path: None,
                        }),
                    });
                } else {
                    let delay = backoff(options, work.attempts);
                    emit(StoreCommitRetried {
                        attempt: work.attempts,
                        delay_ms: delay.as_millis() as u64,
                        code: e.code(),
                        error: &e,
                    });
                    sequencer.wait(seq, work, now + delay);
                }
            }
            Committed::Skipped => sequencer.ready(seq, work),
        }
    }
    if applied > 0 {
        emit(GroupCommitted {
            docs: applied,
            seconds,
        });
    }
    // Freeing a group's documents (their element trees, records and reports: thousands of
    // allocations) took a third of this thread's CPU, and this thread is in every
    // delivery's path; a blocking thread frees them instead.
    if !spent.is_empty() {
        tokio::task::spawn_blocking(move || drop(spent));
    }
    CommitOutcome {
        done: Done {
            wrote: applied > 0,
            finished,
            low: sequencer.low(),
        },
        all_failed: size > 1 && failed == size,
    }
}

impl Consumer<'_> {
    /// Flush → wake the outbox publisher → dead-letter what has no outbox row ([`Direct`]) →
    /// await those dead-letter confirms → ack, for everything finished since the last round
    /// (one flush covers it all: group commit). Nothing is acked before the flush that makes
    /// its commit durable — a rejected delivery's dead-letter row included — and nothing is
    /// given up (`retries_exhausted`) by a round whose flush failed (module docs).
    async fn acknowledge(&self, mut done: mpsc::Receiver<Done>) -> Result<(), Error> {
        while let Some(first) = done.recv().await {
            let mut wrote = first.wrote;
            let mut low = first.low;
            let mut finished = first.finished;
            while let Ok(more) = done.try_recv() {
                wrote |= more.wrote;
                low = more.low;
                finished.extend(more.finished);
            }
            // The flush first: a store that fails it ends the session before a delivery
            // given up (below) is dead-lettered — its failure may have been the store's.
            if wrote {
                let started = Instant::now();
                flush(self.live.store()).await?;
                emit(StoreFlushed {
                    seconds: started.elapsed().as_secs_f64(),
                });
                self.wake.notify_one();
            }
            let direct: Vec<(&Finished, &Direct)> = finished
                .iter()
                .filter_map(|f| Some((f, f.direct.as_ref()?)))
                .collect();
            let published = all_in_order(direct.iter().map(|(f, d)| {
                let why = dead_letter::Why {
                    stage: d.stage,
                    code: d.code,
                    reason: &d.reason,
                    path: d.path.as_deref(),
                };
                let sent = dead_letter::as_sent(&f.delivery.properties);
                let properties = dead_letter::properties(&sent, &why);
                dead_letter::publish(
                    self.dead_letters,
                    self.frames,
                    f.delivery.routing_key.as_str(),
                    &f.delivery.data,
                    properties,
                )
                .instrument(f.tracked.span.clone())
            }))
            .await;
            let mut confirms = Vec::with_capacity(direct.len());
            for ((f, d), confirm) in direct.into_iter().zip(published) {
                confirms.push((f, d, confirm?));
            }
            for (f, d, confirm) in confirms {
                confirmed(confirm, topology::DLX).await?;
                let _span = f.tracked.span.enter();
                emit(DeadLettered {
                    stage: d.stage,
                    code: d.code,
                    message_id: f
                        .delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|m| m.as_str()),
                });
            }
            finished.sort_by_key(|f| f.delivery.delivery_tag);
            ack(&finished, low).await?;
            for f in &finished {
                emit(BodAcked {
                    seconds: f.tracked.arrived.elapsed().as_secs_f64(),
                });
            }
        }
        Ok(())
    }
}

/// Makes everything committed so far durable.
async fn flush(store: &Arc<Store>) -> Result<(), Error> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.flush().map(|_| ()))
        .await?
        .map_err(Error::from)
}

/// The delivery's `correlation_id` and ION headers (DESIGN §5.3).
fn envelope(d: &Delivery) -> crate::store::Envelope {
    let headers = d.properties.headers().as_ref();
    crate::store::Envelope {
        correlation_id: d
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_string()),
        from_logical_id: header_str(headers, "fromLogicalId"),
        to_logical_id: header_str(headers, "toLogicalId"),
        tenant_id: header_str(headers, "tenantId"),
        variation_id: header_str(headers, "variationId"),
        retry: super::dlq::retry_of(headers),
        // Honoured only on a deliberate retry: a plain delivery runs its whole document.
        noun: super::dlq::is_retry(headers)
            .then(|| header_str(headers, super::dlq::NOUN_HEADER))
            .flatten(),
    }
}

fn input<'d>(d: &'d Delivery, envelope: &'d crate::store::Envelope) -> Input<'d> {
    Input {
        envelope: Some(envelope),
        bytes: &d.data,
        source: super::SOURCE,
        message_id: d.properties.message_id().as_ref().map(|m| m.as_str()),
        reply_to: d.properties.reply_to().as_ref().map(|r| r.as_str()),
        received_at: Utc::now(),
        // `bodflow dlq replay` marks its re-publishes: a rejected message id runs again.
        retry: super::dlq::is_retry(d.properties.headers().as_ref()),
    }
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

/// The keys the one-by-one fallback holds back: those of the documents that failed and of
/// those skipped behind them (`None`: a barrier, a document without a key).
#[derive(Default)]
struct Held(Vec<Option<u64>>);

impl Held {
    /// Whether a document of `key` may be committed now. As in `take_group`: a document waits
    /// for a held one of its key, a barrier for any held one, and everything for a held
    /// barrier. One that must wait is held itself, so nothing overtakes it either: a skipped
    /// barrier holds back every document after it.
    fn admits(&mut self, key: Option<u64>) -> bool {
        let held = &self.0;
        let waits = held.contains(&None)
            || match key {
                Some(_) => held.contains(&key),
                None => !held.is_empty(),
            };
        if waits {
            self.0.push(key);
        }
        !waits
    }

    fn failed(&mut self, key: Option<u64>) {
        self.0.push(key);
    }
}

/// Acks finished deliveries (sorted by tag): one `multiple` ack for those below `low` (every
/// delivery below it is finished), one ack each for the rest. An acker of a closed channel
/// refuses (`Ok(false)`): that ends the session, and the broker redelivers.
async fn ack(finished: &[Finished], low: Option<u64>) -> Result<(), Error> {
    let below = finished.partition_point(|f| low.is_none_or(|low| f.delivery.delivery_tag < low));
    let (prefix, rest) = finished.split_at(below);
    let mut ok = true;
    if let Some(last) = prefix.last() {
        ok &= last
            .delivery
            .acker
            .ack(BasicAckOptions { multiple: true })
            .await?;
    }
    for acked in all_in_order(
        rest.iter()
            .map(|f| f.delivery.acker.ack(BasicAckOptions::default())),
    )
    .await
    {
        ok &= acked?;
    }
    if ok {
        Ok(())
    } else {
        Err(Error::AckRefused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldTable};

    /// `x-bodflow-noun` restricts a run to one noun only on a deliberate retry (a replayed
    /// dead letter); on any other delivery the whole document runs.
    #[test]
    fn the_noun_header_counts_only_on_a_retry() {
        let delivered = |retry: bool| {
            let mut headers = FieldTable::default();
            headers.insert(
                super::super::dlq::NOUN_HEADER.into(),
                AMQPValue::LongString("Sync/DataArea/CustomerPartyMaster[2]".into()),
            );
            if retry {
                headers.insert(
                    super::super::dlq::RETRY_HEADER.into(),
                    AMQPValue::LongString("token-1".into()),
                );
            }
            let mut d = Delivery::mock(0, "bodflow.in".into(), "".into(), false, b"<x/>".to_vec());
            d.properties = lapin::BasicProperties::default().with_headers(headers);
            d
        };
        let replayed = delivered(true);
        let e = envelope(&replayed);
        assert_eq!(
            e.noun.as_deref(),
            Some("Sync/DataArea/CustomerPartyMaster[2]")
        );
        assert!(input(&replayed, &e).retry);
        let sent = delivered(false);
        let e = envelope(&sent);
        assert_eq!(e.noun, None, "a sender's own header runs nothing less");
        assert!(!input(&sent, &e).retry);
    }

    #[test]
    fn in_the_fallback_a_barrier_waits_for_any_failed_document_and_keys_for_their_own() {
        let held = |failed: &[Option<u64>], key| {
            let mut held = Held::default();
            failed.iter().for_each(|&k| held.failed(k));
            !held.admits(key)
        };
        assert!(!held(&[], None));
        assert!(!held(&[], Some(1)));
        assert!(held(&[Some(1)], Some(1)));
        assert!(!held(&[Some(1)], Some(2)));
        assert!(held(&[Some(1)], None));
        assert!(held(&[None], Some(2)));
        assert!(held(&[None], None));
    }

    /// A group [A (key 1), B (no key), C (key 2)] whose transaction failed, A failing again
    /// alone: B waits for A, and C for B — a later document never overtakes a barrier.
    #[test]
    fn in_the_fallback_nothing_overtakes_a_skipped_barrier() {
        let mut held = Held::default();
        assert!(held.admits(Some(1)));
        held.failed(Some(1));
        assert!(!held.admits(None));
        assert!(!held.admits(Some(2)));
        // A document of another key waits behind a skipped keyed one only for its own key.
        let mut held = Held::default();
        held.failed(Some(1));
        assert!(!held.admits(Some(1)));
        assert!(held.admits(Some(3)));
    }
}
