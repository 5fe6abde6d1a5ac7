//! The outbox publisher: publishes the store's outbox rows on a confirm-mode channel and
//! deletes a row only after the broker's Ack (DESIGN §4).
//!
//! A round reads up to [`RunOptions::outbox_batch`] durable rows in order, after the last row
//! it has taken, and publishes them all (persistent, `mandatory`, `application/xml`,
//! `message_id` = BODID, `correlation_id` = inbound message id (an RPC request's own for its
//! reply), ION headers, W3C
//! `traceparent`/`tracestate` continuing the inbound delivery's trace); the round is
//! then *settled*: its confirms awaited and the acked rows removed. Two rounds are in flight,
//! so the next round is published while the previous one's confirms come in. A Nack or a
//! returned (unroutable) message keeps its row, and that row alone is published again after a
//! doubling backoff of its own (100 ms to 5 s) while the rows after it go on, and refused rows
//! due again take at most half of a round while new rows wait: a receiver whose queue refuses
//! messages, however many, does not hold up the others. Rows go to their `reply_to`
//! queue through the default exchange when the inbound named one, else to `bodflow.out` with
//! the receiver's logical ID. A reply returned because its `reply_to` queue does not exist
//! (an RPC client's exclusive queue goes with its connection) is published again to
//! `bodflow.out` with the receiver's logical ID, as if the sender had named no queue: kept
//! for ever, it would be refused for ever. A row that `bodflow.out` returns
//! [`RunOptions::unroutable_attempts`] times in a row (no queue is bound for its receiver: its
//! queue was deleted or unbound, or it is a reply to a sender that is no application) goes to
//! `bodflow.dead` instead, as the message it would have been, with `x-bodflow-stage: publish`,
//! `x-bodflow-code: unroutable` and a reason naming the receiver, and is removed once that is
//! confirmed: never dropped, and not retried for ever (`bodflow dlq replay` sends it to
//! `bodflow.out` again). A row that dead-letters a rejected delivery goes to
//! `bodflow.dlx` as the delivery came, with the `x-bodflow-*` headers
//! ([`super::dead_letter`]); both are counted in `bodflow_dead_lettered_total` once confirmed.
//!
//! Rounds run when the consumer commits (woken), at least every [`RunOptions::outbox_poll`],
//! and — on shutdown — until the outbox is empty or [`RunOptions::drain_timeout`] passes.
//! With `tracking.enabled`, each round also writes the confirm times of the rows it removed
//! on their messages' timelines; a failure there is logged and does not fail the round.
//! Neither the removal nor the confirm times wait for the store's writer or go through a
//! sled batch (each costs two log-buffer writes): a round never holds up a commit.
//!
//! **Which row a returned message belongs to** is read from the message itself, not from the
//! confirm lapin hands it with: lapin gives a `basic.return` to whichever confirm it completes
//! next, and the broker may ack other publishes between a return and the ack of the message it
//! returned (a `multiple` ack completes its confirms in no particular order, possibly those of
//! the next round). So every published row keeps a fingerprint of its exchange, routing key
//! and payload; the returns that confirms carry are collected (from the round being settled
//! and from whatever of the next round has already been confirmed), and a row is returned when
//! a collected return has its fingerprint. A return always comes before the ack of its own
//! message, so by the time a row's confirm is in, its return has been collected.
//!
//! Rows left over are published by the next start; a row published but not yet removed when
//! the process dies is published again (at least once; receivers dedupe by BODID).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use lapin::message::BasicReturnMessage;
use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{all_in_order, dead_letter, put_header, short, short_id, topology, Error, RunOptions};
use crate::pipeline::Pipeline;
use crate::store::track::{Confirmed, Millis, OutputAt};
use crate::store::OutboxRow;
use crate::telemetry::events::{
    emit, DeadLettered, Next, OutboxPublished, OutboxRowRefused, TrackingConfirmed, TrackingFailed,
};

/// Everything the publisher task owns for one session.
pub(super) struct Publisher {
    pub channel: Channel,
    /// What dead-letter copies must fit in.
    pub frames: super::FrameLimit,
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

/// Rounds published and not yet settled (confirmed and removed). Two: one round's confirms
/// are awaited while the next one is being published.
const ROUNDS_IN_FLIGHT: usize = 2;

/// A published round, awaiting its confirms.
struct Round {
    started: std::time::Instant,
    rows: Vec<Sent>,
}

/// A published row: what its confirm settles, and what a failure log names.
struct Sent {
    seq: u64,
    bod_id: String,
    /// The message id of the inbound document that caused it (its timeline's key).
    correlation_id: String,
    to: String,
    reply_to: Option<String>,
    /// Its place on the timeline ([`OutboxRow::tracked`]).
    tracked: Option<OutputAt>,
    /// Where it went.
    via: Via,
    /// A dead-letter row's stage and code, or those of a row sent to `bodflow.dead` because
    /// no queue takes it (counted once confirmed).
    dead: Option<(String, String)>,
    /// How often the broker refused it before.
    attempts: u32,
    /// Its exchange, routing key and payload, to recognise it when it is returned.
    fingerprint: u64,
    confirm: Confirm,
}

/// A publish's confirm, awaited or already in.
enum Confirm {
    Waiting(lapin::PublisherConfirm),
    In(Box<lapin::Result<Confirmation>>),
}

impl Confirm {
    /// The confirm, once in; a returned message it carries goes to `returned` (it may be
    /// another row's).
    async fn wait(&mut self, returned: &mut Returned) {
        if let Confirm::Waiting(confirm) = self {
            let outcome = confirm.await;
            *self = Confirm::In(Box::new(outcome));
        }
        self.take_return(returned);
    }

    /// Like [`Confirm::wait`], if the confirm is already in.
    async fn peek(&mut self, returned: &mut Returned) {
        if let Confirm::Waiting(confirm) = self {
            if let Some(outcome) = futures_lite::future::poll_once(confirm).await {
                *self = Confirm::In(Box::new(outcome));
            }
        }
        self.take_return(returned);
    }

    fn take_return(&mut self, returned: &mut Returned) {
        let Confirm::In(outcome) = self else {
            return;
        };
        if let Ok(Confirmation::Ack(message) | Confirmation::Nack(message)) = outcome.as_mut() {
            if let Some(message) = message.take() {
                returned.add(&message);
            }
        }
    }
}

/// Returned messages not yet matched to their row, by fingerprint.
#[derive(Default)]
struct Returned(HashMap<u64, usize>);

impl Returned {
    fn add(&mut self, message: &BasicReturnMessage) {
        let d = &message.delivery;
        *self
            .0
            .entry(fingerprint(
                d.exchange.as_str(),
                d.routing_key.as_str(),
                &d.data,
            ))
            .or_default() += 1;
    }

    /// Whether a message with this fingerprint was returned (matching it to one row).
    fn take(&mut self, fingerprint: u64) -> bool {
        match self.0.get_mut(&fingerprint) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.0.remove(&fingerprint);
                true
            }
            None => false,
        }
    }
}

/// What identifies a published message among those in flight.
fn fingerprint(exchange: &str, routing_key: &str, payload: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    exchange.hash(&mut h);
    routing_key.hash(&mut h);
    payload.hash(&mut h);
    h.finish()
}

/// Where a row is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The default exchange, to the `reply_to` queue the inbound delivery named.
    ReplyTo,
    /// `bodflow.out`, routed by the receiver's logical ID.
    Out,
    /// `bodflow.dlx`: a rejected delivery's copy, or a row no queue takes.
    Dead,
}

/// Where a returned row goes from now on. Kept for the session: a new session (a restart, a
/// reconnect) counts a row's returns from the start again.
#[derive(Debug, Default, Clone, Copy)]
struct Unroutable {
    /// Its `reply_to` queue was missing: published to `bodflow.out` instead.
    rerouted: bool,
    /// Times in a row `bodflow.out` returned it.
    returns: u32,
}

impl Unroutable {
    /// Notes that the broker refused the row published `via` with `e`, and tells where it
    /// goes next: a missing `reply_to` queue sends it to `bodflow.out`, and `limit` returns
    /// in a row from `bodflow.out` to `bodflow.dead`. A Nack from `bodflow.out` means a queue
    /// took the route (and refused the message): the returns start again.
    fn refused(&mut self, via: Via, e: &Error, limit: u32) -> Next {
        match (e, via) {
            (Error::Returned(_), Via::ReplyTo) => {
                self.rerouted = true;
                Next::Out
            }
            (Error::Returned(_), Via::Out) => {
                self.returns += 1;
                if self.returns >= limit {
                    Next::Dead
                } else {
                    Next::Again
                }
            }
            (Error::Nacked(_), Via::Out) => {
                self.returns = 0;
                Next::Again
            }
            _ => Next::Again,
        }
    }
}

/// A refused row waiting for its next attempt.
struct Retry {
    attempts: u32,
    due: std::time::Instant,
}

/// Where the publisher is in the outbox.
#[derive(Default)]
struct Progress {
    /// The next row sequence to read: rows below it are published (in flight, settled, or
    /// refused and waiting in `refused`).
    cursor: u64,
    rounds: VecDeque<Round>,
    /// Refused rows (below the cursor, not in flight), each published again when it is due.
    refused: BTreeMap<u64, Retry>,
    /// Rows published and confirmed so far.
    published: usize,
    /// Rows the broker returned, by sequence.
    unroutable: HashMap<u64, Unroutable>,
    /// Returns collected from confirms, not yet matched to their rows (module docs).
    returned: Returned,
}

/// What one [`Publisher::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Published,
    Settled,
    /// A round was settled and the broker refused rows of it (kept for a retry).
    Refused,
    /// Nothing in flight and nothing to read.
    Idle,
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
        let mut progress = Progress::default();
        while !self.stop.is_cancelled() {
            match self.step(&mut progress).await? {
                Step::Published | Step::Settled | Step::Refused => {}
                Step::Idle => {
                    let poll = until_due(&progress).map_or(self.options.outbox_poll, |due| {
                        due.min(self.options.outbox_poll)
                    });
                    tokio::select! {
                        () = self.stop.cancelled() => {}
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(poll) => {}
                    }
                }
            }
        }
        while let Some(round) = progress.rounds.pop_front() {
            self.settle(round, &mut progress).await?;
        }
        if self.shutdown.is_cancelled() {
            match tokio::time::timeout(self.options.drain_timeout, self.drain(&mut progress)).await
            {
                Ok(result) => result?,
                Err(_) => {
                    tracing::warn!(timeout_s = self.options.drain_timeout.as_secs_f64(), "Outbox not drained before the timeout; the rest is published on the next start")
                }
            }
        }
        Ok(())
    }

    /// [`RunOptions::unroutable_attempts`], at least 1 (0 would send every row to
    /// `bodflow.dead`).
    fn unroutable_attempts(&self) -> u32 {
        self.options.unroutable_attempts.max(1)
    }

    fn backoff(&self, failures: u32) -> Duration {
        (self.options.retry_base * (1 << failures.min(7))).min(Duration::from_secs(5))
    }

    /// Steps until the outbox is empty, giving up when a row was refused `max_failures` times
    /// (rows the broker did not accept stay in the outbox); returns the rows published.
    pub(super) async fn drain_counting(&self, max_failures: u32) -> Result<usize, Error> {
        let mut progress = Progress::default();
        loop {
            match self.step(&mut progress).await? {
                Step::Published | Step::Settled => {}
                Step::Refused => {
                    let most = progress.refused.values().map(|r| r.attempts).max();
                    if let Some(most) = most.filter(|&m| m >= max_failures) {
                        return Err(Error::Nacked(format!(
                            "outbox rows still refused after {most} attempts"
                        )));
                    }
                }
                Step::Idle => match until_due(&progress) {
                    Some(due) => tokio::time::sleep(due).await,
                    None => return Ok(progress.published),
                },
            }
        }
    }

    /// Steps until the outbox is empty (refused rows included: they are retried when due).
    async fn drain(&self, progress: &mut Progress) -> Result<(), Error> {
        loop {
            match self.step(progress).await? {
                Step::Published | Step::Settled | Step::Refused => {}
                Step::Idle => match until_due(progress) {
                    Some(due) => tokio::time::sleep(due).await,
                    None => return Ok(()),
                },
            }
        }
    }

    /// The rows to publish next: refused rows that are due again (with their attempts so
    /// far), then the next durable rows after the cursor, shared as [`fresh_room`] says: a
    /// backlog of refused rows (a receiver's queue full for hours) never keeps new rows — the
    /// other receivers' BODs, the replies — from going out.
    async fn next_rows(
        &self,
        progress: &mut Progress,
    ) -> Result<Vec<(u64, OutboxRow, u32)>, Error> {
        let store = self.pipeline.store.clone();
        let batch = self.options.outbox_batch.max(1);
        let now = std::time::Instant::now();
        let mut due: Vec<(u64, u32)> = progress
            .refused
            .iter()
            .filter(|(_, r)| r.due <= now)
            .map(|(seq, r)| (*seq, r.attempts))
            .take(batch)
            .collect();
        let room = fresh_room(batch, due.len());
        let from = progress.cursor;
        let fresh = if room == 0 {
            Vec::new()
        } else {
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                store
                    .durable_outbox_from(from)
                    .take(room)
                    .collect::<Result<Vec<_>, _>>()
            })
            .await??
        };
        if let Some((last, _)) = fresh.last() {
            progress.cursor = last + 1;
        }
        due.truncate(batch - fresh.len());
        for (seq, _) in &due {
            progress.refused.remove(seq);
        }
        // A row no longer there (nothing else removes rows, but a missing one is no reason to
        // stop) is dropped.
        let mut rows = tokio::task::spawn_blocking(move || {
            due.into_iter()
                .filter_map(|(seq, attempts)| {
                    store
                        .outbox_row(seq)
                        .transpose()
                        .map(|row| row.map(|row| (seq, row, attempts)))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await??;
        rows.extend(fresh.into_iter().map(|(seq, row)| (seq, row, 0)));
        Ok(rows)
    }

    /// Publishes the next durable rows when fewer than [`ROUNDS_IN_FLIGHT`] rounds are out,
    /// else settles the oldest round.
    async fn step(&self, progress: &mut Progress) -> Result<Step, Error> {
        if progress.rounds.len() < ROUNDS_IN_FLIGHT {
            let rows = self.next_rows(progress).await?;
            if !rows.is_empty() {
                let started = std::time::Instant::now();
                let mut sent = Vec::with_capacity(rows.len());
                // Handed to lapin all at once (in order), not one write at a time.
                let confirms = all_in_order(rows.iter().map(|(seq, row, _)| {
                    let unroutable = progress.unroutable.get(seq).copied().unwrap_or_default();
                    self.publish(row, unroutable)
                }))
                .await;
                for ((seq, row, attempts), published) in rows.into_iter().zip(confirms) {
                    let (via, fingerprint, confirm) = published?;
                    let dead = match row.dead_letter {
                        Some(d) => Some((d.stage, d.code)),
                        None if via == Via::Dead => {
                            Some((UNROUTABLE_STAGE.to_string(), UNROUTABLE.to_string()))
                        }
                        None => None,
                    };
                    sent.push(Sent {
                        seq,
                        bod_id: row.bod_id,
                        correlation_id: row.correlation_id,
                        to: row.to,
                        reply_to: row.reply_to,
                        tracked: row.tracked,
                        via,
                        dead,
                        attempts,
                        fingerprint,
                        confirm: Confirm::Waiting(confirm),
                    });
                }
                progress.rounds.push_back(Round {
                    started,
                    rows: sent,
                });
                return Ok(Step::Published);
            }
        }
        let Some(round) = progress.rounds.pop_front() else {
            return Ok(Step::Idle);
        };
        Ok(if self.settle(round, progress).await? == 0 {
            Step::Settled
        } else {
            Step::Refused
        })
    }

    /// Awaits a round's confirms and removes the rows the broker acked, noting their confirm
    /// times in their messages' timelines; returns how many it refused (kept for the retry).
    async fn settle(&self, round: Round, progress: &mut Progress) -> Result<usize, Error> {
        let judged = verdicts(round.rows, &mut progress.rounds, &mut progress.returned).await;
        let mut done = Vec::with_capacity(judged.len());
        let track = self.pipeline.config.tracking.enabled;
        // The confirmed rows that are tracked outputs (or their dead letters), for timelines.
        let mut confirms: Vec<TrackedConfirm> = Vec::new();
        let mut failed = 0;
        // A channel error (the connection dropped mid-round) ends the session, but only after
        // the rows acked before it are removed: else the next session publishes them again.
        let mut fatal = None;
        for (row, verdict) in judged {
            match verdict {
                Ok(()) => {
                    progress.unroutable.remove(&row.seq);
                    done.push(row.seq);
                    // An output no queue took (its timeline says where it went), not a
                    // rejected delivery's copy.
                    let outbound = row.dead.as_ref().is_none_or(|(s, _)| s == UNROUTABLE_STAGE);
                    if let Some((stage, code)) = &row.dead {
                        // The dead letter's own message id: the BODID for an outbound
                        // message (as published: `short_id`), the delivery's for a rejected
                        // delivery's copy.
                        let bod_id = short_id(&row.bod_id);
                        emit(DeadLettered {
                            stage,
                            code,
                            message_id: Some(if outbound {
                                bod_id.as_str()
                            } else {
                                &row.correlation_id
                            }),
                        });
                    }
                    if track && outbound {
                        confirms.push(TrackedConfirm {
                            message_id: row.correlation_id,
                            bod_id: row.bod_id,
                            at: Millis::now(),
                            output: row.tracked,
                            dead_lettered: row.dead.is_some(),
                        });
                    }
                }
                Err(e @ (Error::Nacked(_) | Error::Returned(_) | Error::NotConfirmed)) => {
                    failed += 1;
                    let unroutable = progress.unroutable.entry(row.seq).or_default();
                    let next = unroutable.refused(row.via, &e, self.unroutable_attempts());
                    if !unroutable.rerouted && unroutable.returns == 0 {
                        progress.unroutable.remove(&row.seq);
                    }
                    let attempts = row.attempts + 1;
                    // Off to bodflow.dead at once: its backoff was waited out between returns.
                    let wait = match next {
                        Next::Dead => Duration::ZERO,
                        Next::Again | Next::Out => self.backoff(attempts),
                    };
                    progress.refused.insert(
                        row.seq,
                        Retry {
                            attempts,
                            due: std::time::Instant::now() + wait,
                        },
                    );
                    emit(OutboxRowRefused {
                        code: e.code(),
                        error: &e,
                        bod_id: &row.bod_id,
                        to: &row.to,
                        reply_to: row.reply_to.as_deref(),
                        next,
                    });
                }
                Err(e) => {
                    fatal.get_or_insert(e);
                }
            }
        }
        progress.published += done.len();
        if !done.is_empty() {
            emit(OutboxPublished {
                rows: done.len(),
                confirm_seconds: round.started.elapsed().as_secs_f64(),
            });
            let store = self.pipeline.store.clone();
            tokio::task::spawn_blocking(move || {
                store.remove_outbox(&done)?;
                track_confirms(&store, &confirms);
                Ok::<_, crate::store::StoreError>(())
            })
            .await??;
        }
        match fatal {
            Some(e) => Err(e),
            None => Ok(failed),
        }
    }

    /// Publishes `row` where it goes after the returns so far (module docs). Returns where it
    /// went and the message's fingerprint with its confirm.
    async fn publish(
        &self,
        row: &OutboxRow,
        unroutable: Unroutable,
    ) -> Result<(Via, u64, lapin::PublisherConfirm), Error> {
        if let Some(dead) = &row.dead_letter {
            let why = dead_letter::Why {
                stage: &dead.stage,
                code: &dead.code,
                reason: &dead.reason,
                path: dead.path.as_deref(),
            };
            let delivered = &dead.delivered;
            let properties =
                dead_letter::properties(&dead_letter::decode(&delivered.properties), &why);
            let confirm = dead_letter::publish(
                &self.channel,
                self.frames,
                &delivered.routing_key,
                &delivered.payload,
                properties,
            )
            .await?;
            let published = fingerprint(topology::DLX, &delivered.routing_key, &delivered.payload);
            return Ok((Via::Dead, published, confirm));
        }
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
        if let Some(variation) = &row.variation {
            put_header(&mut headers, "variationId", variation);
        }
        if let Some(traceparent) = &row.traceparent {
            put_header(&mut headers, "traceparent", traceparent);
        }
        if let Some(tracestate) = &row.tracestate {
            put_header(&mut headers, "tracestate", tracestate);
        }
        let properties = BasicProperties::default()
            .with_content_type("application/xml".into())
            .with_delivery_mode(2)
            .with_message_id(short_id(&row.bod_id))
            .with_correlation_id(short_id(
                row.reply_correlation_id
                    .as_deref()
                    .unwrap_or(&row.correlation_id),
            ))
            .with_headers(headers);
        if unroutable.returns >= self.unroutable_attempts() {
            let reason = unroutable_reason(row, unroutable);
            let why = dead_letter::Why {
                stage: UNROUTABLE_STAGE,
                code: UNROUTABLE,
                reason: &reason,
                path: None,
            };
            let properties = dead_letter::properties(&properties, &why);
            let payload = row.xml.as_bytes();
            let confirm =
                dead_letter::publish(&self.channel, self.frames, &row.to, payload, properties)
                    .await?;
            let published = fingerprint(topology::DLX, &row.to, payload);
            return Ok((Via::Dead, published, confirm));
        }
        let (via, exchange, routing_key) = match &row.reply_to {
            Some(queue) if !unroutable.rerouted => (Via::ReplyTo, "", queue.as_str()),
            _ => (Via::Out, topology::OUT_EXCHANGE, row.to.as_str()),
        };
        let confirm = self
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
            .await?;
        Ok((
            via,
            fingerprint(exchange, routing_key, row.xml.as_bytes()),
            confirm,
        ))
    }
}

/// `x-bodflow-stage` and `x-bodflow-code` of a row no queue takes.
const UNROUTABLE_STAGE: &str = super::dlq::OUTBOUND_STAGE;
const UNROUTABLE: &str = "unroutable";

/// `x-bodflow-reason` of a row no queue takes.
fn unroutable_reason(row: &OutboxRow, unroutable: Unroutable) -> String {
    let receiver = if row.to.is_empty() {
        "the sender, which is not a configured application".to_string()
    } else {
        format!("{:?}", row.to)
    };
    let gone = match &row.reply_to {
        Some(queue) if unroutable.rerouted => {
            format!("its reply_to queue {queue:?} does not exist and ")
        }
        _ => String::new(),
    };
    format!(
        "{} {}: {gone}bodflow.out returned it {} times in a row (no queue is bound for {receiver})",
        row.kind, row.bod_id, unroutable.returns
    )
}

/// Awaits the confirms of a round's rows, collecting the returns they carry and those that
/// came with confirms of the `later` rounds already in, and gives each row its verdict: only
/// an Ack for a message that was not returned is a success (module docs).
async fn verdicts(
    mut rows: Vec<Sent>,
    later: &mut VecDeque<Round>,
    returned: &mut Returned,
) -> Vec<(Sent, Result<(), Error>)> {
    for row in &mut rows {
        row.confirm.wait(returned).await;
    }
    for round in later.iter_mut() {
        for row in &mut round.rows {
            row.confirm.peek(returned).await;
        }
    }
    rows.into_iter()
        .map(|row| {
            let verdict = match &row.confirm {
                Confirm::In(outcome) => match outcome.as_ref() {
                    Ok(Confirmation::Ack(_)) if returned.take(row.fingerprint) => {
                        Err(Error::Returned(row.bod_id.clone()))
                    }
                    Ok(Confirmation::Ack(_)) => Ok(()),
                    Ok(Confirmation::Nack(_)) => {
                        // Returned and then nacked: refused either way.
                        returned.take(row.fingerprint);
                        Err(Error::Nacked(row.bod_id.clone()))
                    }
                    Ok(Confirmation::NotRequested) => Err(Error::NotConfirmed),
                    Err(e) => Err(e.clone().into()),
                },
                Confirm::Waiting(_) => Err(Error::NotConfirmed),
            };
            (row, verdict)
        })
        .collect()
}

/// How many new rows a round of `batch` takes when `due` refused rows are due again: the
/// retries get at most half of it (rounded up) while new rows wait, and whatever the new rows
/// leave.
fn fresh_room(batch: usize, due: usize) -> usize {
    batch - due.min(batch.div_ceil(2))
}

/// How long until the first refused row is due again; `None` when none waits.
fn until_due(progress: &Progress) -> Option<Duration> {
    let first = progress.refused.values().map(|r| r.due).min()?;
    Some(first.saturating_duration_since(std::time::Instant::now()))
}

/// A broker confirm of an outbox row that is a tracked output (or its dead letter), kept until
/// the round's rows are removed.
struct TrackedConfirm {
    message_id: String,
    bod_id: String,
    at: Millis,
    output: Option<OutputAt>,
    dead_lettered: bool,
}

/// Notes publish confirm times in the messages' timelines; a failure only costs the timeline
/// its confirm times (the rows are published and removed either way).
fn track_confirms(store: &crate::store::Store, confirms: &[TrackedConfirm]) {
    if confirms.is_empty() {
        return;
    }
    let confirms: Vec<Confirmed<'_>> = confirms
        .iter()
        .map(|c| Confirmed {
            message_id: &c.message_id,
            bod_id: &c.bod_id,
            at: c.at,
            output: c.output,
            dead_lettered: c.dead_lettered,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(seq: u64, exchange: &str, queue: &str, confirm: Confirmation) -> Sent {
        Sent {
            seq,
            bod_id: format!("bod-{seq}"),
            correlation_id: format!("m-{seq}"),
            to: "lid://app".into(),
            reply_to: None,
            tracked: None,
            via: Via::Out,
            dead: None,
            attempts: 0,
            fingerprint: fingerprint(exchange, queue, format!("<x>{seq}</x>").as_bytes()),
            confirm: Confirm::In(Box::new(Ok(confirm))),
        }
    }

    /// What the broker gives back for the row `seq` of [`sent`].
    fn returned(seq: u64, exchange: &str, queue: &str) -> Option<BasicReturnMessage> {
        Some(BasicReturnMessage {
            delivery: lapin::message::Delivery::mock(
                0,
                exchange.into(),
                queue.into(),
                false,
                format!("<x>{seq}</x>").into_bytes(),
            ),
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
        })
    }

    fn outcomes(verdicts: &[(Sent, Result<(), Error>)]) -> Vec<(u64, &'static str)> {
        verdicts
            .iter()
            .map(|(row, v)| (row.seq, v.as_ref().err().map_or("ok", Error::code)))
            .collect()
    }

    #[tokio::test]
    async fn a_return_belongs_to_the_message_it_carries_not_to_the_confirm_it_came_with() {
        // Row 3 was returned, but lapin handed its return to the confirm of row 1 (the
        // broker acked 1 and 2 between the return and 3's ack).
        let round = vec![
            sent(1, "", "reply.a", Confirmation::Ack(returned(3, "", "gone"))),
            sent(2, "", "reply.b", Confirmation::Ack(None)),
            sent(3, "", "gone", Confirmation::Ack(None)),
        ];
        let mut returned_ = Returned::default();
        let judged = verdicts(round, &mut VecDeque::new(), &mut returned_).await;
        assert_eq!(outcomes(&judged), [(1, "ok"), (2, "ok"), (3, "unroutable")]);
        assert!(returned_.0.is_empty());
    }

    #[tokio::test]
    async fn a_return_that_came_with_the_next_rounds_confirm_is_found() {
        let round = vec![
            sent(1, "", "reply.a", Confirmation::Ack(None)),
            sent(2, "bodflow.out", "lid://crm", Confirmation::Ack(None)),
        ];
        let mut later = VecDeque::from([Round {
            started: std::time::Instant::now(),
            rows: vec![sent(
                3,
                "",
                "reply.c",
                Confirmation::Ack(returned(2, "bodflow.out", "lid://crm")),
            )],
        }]);
        let mut returned_ = Returned::default();
        let judged = verdicts(round, &mut later, &mut returned_).await;
        assert_eq!(outcomes(&judged), [(1, "ok"), (2, "unroutable")]);
        // Row 3's own confirm is kept, without the return it carried.
        let next = later.pop_front().unwrap().rows;
        let judged = verdicts(next, &mut later, &mut returned_).await;
        assert_eq!(outcomes(&judged), [(3, "ok")]);
    }

    #[test]
    fn refused_rows_due_again_take_at_most_half_a_round_from_new_ones() {
        assert_eq!(fresh_room(512, 0), 512);
        assert_eq!(fresh_room(512, 100), 412);
        assert_eq!(fresh_room(512, 512), 256);
        assert_eq!(fresh_room(4, 9), 2);
        assert_eq!(fresh_room(5, 9), 2);
        assert_eq!(fresh_room(1, 1), 0);
    }

    #[test]
    fn a_row_bodflow_out_returns_in_a_row_goes_to_bodflow_dead() {
        let returned = || Error::Returned("x".into());
        let nacked = || Error::Nacked("x".into());
        // A reply whose queue is gone goes to bodflow.out, then to bodflow.dead after three
        // returns there; a Nack in between (a queue took the route) starts them again.
        let mut u = Unroutable::default();
        assert_eq!(u.refused(Via::ReplyTo, &returned(), 3), Next::Out);
        assert!(u.rerouted);
        assert_eq!(u.refused(Via::Out, &returned(), 3), Next::Again);
        assert_eq!(u.refused(Via::Out, &returned(), 3), Next::Again);
        assert_eq!(u.refused(Via::Out, &nacked(), 3), Next::Again);
        assert_eq!(u.returns, 0);
        assert_eq!(u.refused(Via::Out, &returned(), 3), Next::Again);
        assert_eq!(u.refused(Via::Out, &returned(), 3), Next::Again);
        assert_eq!(u.refused(Via::Out, &returned(), 3), Next::Dead);
        // Refused on its way to bodflow.dead (a full queue): it stays on that way.
        assert_eq!(u.refused(Via::Dead, &nacked(), 3), Next::Again);
        assert_eq!(u.returns, 3);
        // A Nack from a reply queue, a lost confirm: nothing changes.
        let mut u = Unroutable::default();
        assert_eq!(u.refused(Via::ReplyTo, &nacked(), 3), Next::Again);
        assert_eq!(u.refused(Via::Out, &Error::NotConfirmed, 3), Next::Again);
        assert!(!u.rerouted);
        assert_eq!(u.returns, 0);
    }

    #[test]
    fn the_reason_of_an_unroutable_row_names_its_receiver_and_its_gone_queue() {
        let mut row = OutboxRow::confirm("B-1", "lid://crm", "m-1");
        let plain = Unroutable {
            rerouted: false,
            returns: 10,
        };
        assert_eq!(
            unroutable_reason(&row, plain),
            "ConfirmBOD B-1: bodflow.out returned it 10 times in a row \
             (no queue is bound for \"lid://crm\")"
        );
        row.to.clear();
        row.reply_to = Some("amq.gen-x".into());
        let rerouted = Unroutable {
            rerouted: true,
            ..plain
        };
        assert_eq!(
            unroutable_reason(&row, rerouted),
            "ConfirmBOD B-1: its reply_to queue \"amq.gen-x\" does not exist and bodflow.out \
             returned it 10 times in a row (no queue is bound for the sender, which is not a \
             configured application)"
        );
    }

    #[tokio::test]
    async fn a_return_matches_its_route_as_well_as_its_payload_and_one_row_only() {
        // The same payload to two queues, one of them returned; and two identical rows of
        // which one was returned: one retry, not two.
        let round = vec![
            sent(1, "", "kept", Confirmation::Ack(returned(1, "", "gone"))),
            sent(2, "", "same", Confirmation::Nack(None)),
            sent(4, "", "same", Confirmation::Ack(returned(4, "", "same"))),
            sent(4, "", "same", Confirmation::Ack(None)),
        ];
        let judged = verdicts(round, &mut VecDeque::new(), &mut Returned::default()).await;
        assert_eq!(
            outcomes(&judged),
            [(1, "ok"), (2, "nacked"), (4, "unroutable"), (4, "ok")]
        );
    }
}
