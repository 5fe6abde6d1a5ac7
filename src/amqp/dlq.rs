//! The broker side of `bodflow dlq`: reading, replaying and discarding the messages in
//! [`DEAD_QUEUE`] (DESIGN §5.3).
//!
//! # How the queue is read without disturbing it
//!
//! [`DeadQueue::open`] asks the queue's ready count `n` (passive declare), sets the channel's
//! prefetch to `n` and consumes with manual acks: the broker hands over exactly the first `n`
//! messages, in queue order, and keeps them *unacked* while the command runs (dead letters
//! arriving meanwhile stay behind them in the queue). Selected messages are then acked
//! (`discard`, or `replay` after the re-publish is confirmed); everything else is given back
//! with one `basic.nack(multiple, requeue)` in [`DeadQueue::release`] — and, should the
//! command die, by the broker when the connection closes. Requeued messages go back to their
//! original positions; their only trace is the `redelivered` flag. Another consumer of
//! `bodflow.dead` would see fewer messages while a command runs: run one at a time.
//!
//! # Replay
//!
//! A replayed message is published to [`IN_EXCHANGE`] with its original routing key, body (or
//! the operator's fixed body), message id, correlation id, reply-to and headers — minus ours
//! (`x-bodflow-stage|code|reason`) and the broker's `x-death` — plus
//! [`RETRY_HEADER`] with a token naming this replay: the consumer then runs it as a deliberate
//! retry, so a message id whose marker is `rejected` (or `parked`) is processed again, while one
//! that was applied is still a duplicate. The token is derived from the dead message (its
//! message id, the body published, and the token of the replay it came from, if it did), and
//! the marker keeps the token of the replay that ran: the same replay delivered twice, or the
//! same dead message replayed twice, runs once. The dead message is acked only after the
//! publisher confirm: a crash in between leaves it in `bodflow.dead` (at least once), and
//! replaying it again is a duplicate. A dead letter of that replay (rejected again) carries
//! its token, so replaying it is a new run; so is a replay with a fixed body.
//!
//! A dead letter of an *outbound* message (`x-bodflow-stage: publish`, code `unroutable`: no
//! queue was bound for its receiver, see [`super::publisher`]) is not an input: its replay
//! publishes it to [`OUT_EXCHANGE`] again, with its routing key (the receiver's logical ID)
//! and properties minus our headers, and no retry token. Once the receiver's queue exists (the
//! application is configured again), it arrives there; until then the broker returns it and it
//! stays in `bodflow.dead`.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use super::topology::{DEAD_QUEUE, IN_EXCHANGE, OUT_EXCHANGE};
use super::{
    confirm_channel, confirmed, connect_with, declare_on, header_str, short, Error, Frames,
};
use crate::config::Config;

/// Header that marks an inbound message as a deliberate retry of its message id.
pub const RETRY_HEADER: &str = "x-bodflow-retry";

/// Header with the XML path a rejection names, when it names one.
pub const PATH_HEADER: &str = "x-bodflow-path";

/// Header naming the one noun (its XML path) of a document a replay runs: set on the dead
/// letter of a parked noun's row whose release was refused, kept on replay. The document's
/// other nouns were applied when it came, or wait in rows of their own; a retry runs the
/// named noun only (`crate::pipeline::Input::retry`), as the row's release did.
pub const NOUN_HEADER: &str = "x-bodflow-noun";

/// Headers the consumer adds when it dead-letters (removed on replay).
const OUR_HEADERS: [&str; 5] = [
    "x-bodflow-stage",
    "x-bodflow-code",
    "x-bodflow-reason",
    PATH_HEADER,
    super::dead_letter::HEADERS_DROPPED,
];

/// `x-bodflow-stage` of an outbound message no queue took (module docs).
pub const OUTBOUND_STAGE: &str = "publish";

const CONSUMER_TAG: &str = "bodflow-dlq";

/// How long to wait for the broker to hand over the counted messages.
const TAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a delivery asks for a retry: header [`RETRY_HEADER`] true (bool or `"true"`), or
/// the token of one replay ([`retry_of`]).
pub fn is_retry(headers: Option<&FieldTable>) -> bool {
    match headers.and_then(|h| h.inner().get(RETRY_HEADER)) {
        Some(AMQPValue::Boolean(b)) => *b,
        Some(_) => header_str(headers, RETRY_HEADER)
            .is_some_and(|s| !s.is_empty() && !s.eq_ignore_ascii_case("false")),
        None => false,
    }
}

/// The token naming one replay of a dead letter ([`RETRY_HEADER`]'s value, when it is not
/// plain `true`): the broker may deliver that replay again (a crash after its commit, before
/// its ack), and the message id's marker keeps the token of the replay that ran, so the
/// redelivery is a duplicate rather than a second run.
pub fn retry_of(headers: Option<&FieldTable>) -> Option<String> {
    header_str(headers, RETRY_HEADER).filter(|s| {
        !s.is_empty() && !s.eq_ignore_ascii_case("true") && !s.eq_ignore_ascii_case("false")
    })
}

/// The token of a replay of a dead message: a digest of its message id, the body published
/// and the token of the replay the dead message came from (module docs).
fn retry_token(message_id: Option<&str>, body: &[u8], came_from: Option<&str>) -> String {
    let mut h = blake3::Hasher::new();
    for part in [
        message_id.unwrap_or("").as_bytes(),
        came_from.unwrap_or("").as_bytes(),
    ] {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(body);
    h.finalize().to_hex()[..32].to_string()
}

/// One message of `bodflow.dead`, held unacked.
pub struct DeadMessage {
    /// 1-based position in the queue when it was read.
    pub position: usize,
    delivery: Delivery,
}

impl DeadMessage {
    pub fn message_id(&self) -> &str {
        self.delivery
            .properties
            .message_id()
            .as_ref()
            .map_or("", |m| m.as_str())
    }

    pub fn correlation_id(&self) -> Option<&str> {
        self.delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str())
    }

    pub fn reply_to(&self) -> Option<&str> {
        self.delivery
            .properties
            .reply_to()
            .as_ref()
            .map(|c| c.as_str())
    }

    pub fn routing_key(&self) -> &str {
        self.delivery.routing_key.as_str()
    }

    /// A header as text (strings as they are, other values in their debug form).
    pub fn header(&self, name: &str) -> Option<String> {
        header_str(self.delivery.properties.headers().as_ref(), name)
    }

    /// Every header as `(name, text)`, in name order.
    pub fn headers(&self) -> Vec<(String, String)> {
        let Some(headers) = self.delivery.properties.headers().as_ref() else {
            return Vec::new();
        };
        headers
            .inner()
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                    AMQPValue::ShortString(s) => s.as_str().to_string(),
                    AMQPValue::Boolean(b) => b.to_string(),
                    other => format!("{other:?}"),
                };
                (k.as_str().to_string(), text)
            })
            .collect()
    }

    pub fn stage(&self) -> Option<String> {
        self.header("x-bodflow-stage")
    }

    pub fn code(&self) -> Option<String> {
        self.header("x-bodflow-code")
    }

    pub fn reason(&self) -> Option<String> {
        self.header("x-bodflow-reason")
    }

    /// The XML path the rejection names (absent for whole-document problems).
    pub fn path(&self) -> Option<String> {
        self.header(PATH_HEADER)
    }

    /// Whether it is an outbound message bodflow could not deliver (stage `publish`), not a
    /// delivery it rejected: a replay sends it to `bodflow.out`.
    pub fn outbound(&self) -> bool {
        self.stage().as_deref() == Some(OUTBOUND_STAGE)
    }

    /// Where a replay publishes it.
    pub fn replay_exchange(&self) -> &'static str {
        if self.outbound() {
            OUT_EXCHANGE
        } else {
            IN_EXCHANGE
        }
    }

    /// Whether it was dead-lettered from a replay (it carries [`RETRY_HEADER`]).
    pub fn replayed(&self) -> bool {
        is_retry(self.delivery.properties.headers().as_ref())
    }

    pub fn redelivered(&self) -> bool {
        self.delivery.redelivered
    }

    pub fn payload(&self) -> &[u8] {
        &self.delivery.data
    }
}

/// An open view of `bodflow.dead`: its messages, held until [`DeadQueue::release`].
pub struct DeadQueue {
    connection: Connection,
    channel: Channel,
    publish: Channel,
    consuming: bool,
    /// Delivery tags acked so far (not to be nacked at the end).
    removed: std::sync::Mutex<std::collections::BTreeSet<u64>>,
    pub messages: Vec<DeadMessage>,
}

impl DeadQueue {
    /// Connects, declares the topology and takes every message now ready in `bodflow.dead`
    /// (unacked, in queue order; see the module docs).
    pub async fn open(config: &Config) -> Result<DeadQueue, Error> {
        // Dead letters keep their senders' headers, whatever their size.
        let (connection, (channel, count, publish)) =
            connect_with(&config.amqp, Frames::LARGEST, async |c| {
                declare_on(c, config).await?;
                let channel = c.create_channel().await?;
                let count = channel
                    .queue_declare(
                        short(DEAD_QUEUE)?,
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await?
                    .message_count() as usize;
                Ok((channel, count, confirm_channel(c).await?))
            })
            .await?;
        let count = count.min(usize::from(u16::MAX));
        let mut queue = DeadQueue {
            connection,
            channel,
            publish,
            consuming: false,
            removed: Default::default(),
            messages: Vec::with_capacity(count),
        };
        if count == 0 {
            return Ok(queue);
        }
        queue
            .channel
            .basic_qos(count as u16, BasicQosOptions::default())
            .await?;
        let mut deliveries = queue
            .channel
            .basic_consume(
                short(DEAD_QUEUE)?,
                short(CONSUMER_TAG)?,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        queue.consuming = true;
        while queue.messages.len() < count {
            match tokio::time::timeout(TAKE_TIMEOUT, deliveries.next()).await {
                Ok(Some(d)) => {
                    let position = queue.messages.len() + 1;
                    queue.messages.push(DeadMessage {
                        position,
                        delivery: d?,
                    });
                }
                // Fewer than counted (another consumer took some): list what we have.
                Ok(None) | Err(_) => break,
            }
        }
        Ok(queue)
    }

    /// Re-publishes a message to `bodflow.in` as a retry (module docs) — an outbound one to
    /// `bodflow.out` — with `payload` instead of its body when given, waits for the confirm,
    /// then removes it from `bodflow.dead`.
    pub async fn replay(&self, message: &DeadMessage, payload: Option<&[u8]>) -> Result<(), Error> {
        let d = &message.delivery;
        let mut headers = FieldTable::default();
        if let Some(original) = d.properties.headers().as_ref() {
            for (k, v) in original.inner() {
                if !OUR_HEADERS.contains(&k.as_str()) && k.as_str() != "x-death" {
                    headers.insert(k.clone(), v.clone());
                }
            }
        }
        let body = payload.unwrap_or(&d.data);
        let exchange = message.replay_exchange();
        if !message.outbound() {
            let token = retry_token(
                d.properties.message_id().as_ref().map(|m| m.as_str()),
                body,
                retry_of(d.properties.headers().as_ref()).as_deref(),
            );
            headers.insert(
                ShortString::from(RETRY_HEADER),
                AMQPValue::LongString(token.into()),
            );
        }
        let properties: BasicProperties = super::dead_letter::kept(&d.properties)
            .with_headers(headers)
            .with_delivery_mode(2);
        let routing_key = if d.routing_key.as_str().is_empty() && !message.outbound() {
            message
                .header("documentName")
                .unwrap_or_else(|| "bod".to_string())
        } else {
            d.routing_key.as_str().to_string()
        };
        let confirm = self
            .publish
            .basic_publish(
                short(exchange)?,
                short(&routing_key)?,
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await?;
        confirmed(confirm, exchange).await?;
        self.remove(message).await
    }

    /// Removes (acks) a message from `bodflow.dead`.
    pub async fn remove(&self, message: &DeadMessage) -> Result<(), Error> {
        if message
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await?
        {
            if let Ok(mut removed) = self.removed.lock() {
                removed.insert(message.delivery.delivery_tag);
            }
            Ok(())
        } else {
            Err(Error::AckRefused)
        }
    }

    /// Gives every message not removed back to the queue (original positions) and closes.
    pub async fn release(self) -> Result<(), Error> {
        if self.consuming {
            // Stop deliveries first, so requeued messages are not handed back to us.
            self.channel
                .basic_cancel(short(CONSUMER_TAG)?, BasicCancelOptions::default())
                .await?;
        }
        let removed = self.removed.lock().map(|r| r.clone()).unwrap_or_default();
        let last_kept = self
            .messages
            .iter()
            .map(|m| m.delivery.delivery_tag)
            .filter(|t| !removed.contains(t))
            .max();
        if let Some(tag) = last_kept {
            self.channel
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await?;
        }
        let _ = self.channel.close(200, "bye".into()).await;
        let _ = self.publish.close(200, "bye".into()).await;
        self.connection.close(200, "bye".into()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: AMQPValue) -> FieldTable {
        let mut h = FieldTable::default();
        h.insert(ShortString::from(RETRY_HEADER), value);
        h
    }

    #[test]
    fn a_replay_token_asks_for_a_retry_and_names_it() {
        let token = retry_token(Some("m-1"), b"<x/>", None);
        // The same dead message replayed twice: one replay.
        assert_eq!(token, retry_token(Some("m-1"), b"<x/>", None));
        // A fixed body, the dead letter of an earlier replay, another message: new runs.
        for other in [
            retry_token(Some("m-1"), b"<y/>", None),
            retry_token(Some("m-1"), b"<x/>", Some(&token)),
            retry_token(Some("m-2"), b"<x/>", None),
        ] {
            assert_ne!(token, other);
        }
        let named = with(AMQPValue::LongString(token.clone().into()));
        assert!(is_retry(Some(&named)));
        assert_eq!(retry_of(Some(&named)), Some(token));
        for (value, retry) in [
            (AMQPValue::Boolean(true), true),
            (AMQPValue::LongString("true".into()), true),
            (AMQPValue::LongString("false".into()), false),
            (AMQPValue::Boolean(false), false),
        ] {
            let h = with(value);
            assert_eq!(is_retry(Some(&h)), retry);
            assert_eq!(retry_of(Some(&h)), None, "no token");
        }
        assert!(!is_retry(None));
    }
}
