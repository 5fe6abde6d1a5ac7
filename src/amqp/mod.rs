//! The broker edge: the only code that knows lapin (DESIGN §4, §5.3).
//!
//! - [`topology`]: the exchanges and queues, declared on every (re)connect.
//! - [`consumer`]: consumes `bodflow.inbound`, runs the [`Pipeline`] with group commit and
//!   acks only what is durable. Its module docs are the ack discipline.
//! - [`lanes`]: parallel prepare lanes and the sequencer that keeps each document key in
//!   arrival order.
//! - [`publisher`]: drains the store's outbox on a confirm-mode channel.
//! - [`dlq`]: reads, replays and discards the dead letters in `bodflow.dead`.
//! - [`Sender`]: publishes inbound documents (`bodflow publish`, tests).
//!
//! [`run`] is the service: one cancellation tree (`shutdown` → stop consuming → finish the
//! deliveries taken → drain the outbox within [`RunOptions::drain_timeout`], all of it within
//! [`RunOptions::stop_timeout`] → close the connection → flush the store), and a reconnect
//! loop around one broker *session* (connection, topology, channels). A session that fails is
//! dropped whole, with its channels and ackers: nothing is ever acked with a tag of a dead
//! channel; unacked deliveries come back and the message-id markers make them duplicates.

pub mod consumer;
mod dead_letter;
pub(crate) use dead_letter::parked_delivery;

/// The `source` of a document that came as a delivery (in reports, parked rows, timelines).
pub const SOURCE: &str = "amqp";
pub mod dlq;
pub mod lanes;
pub mod publisher;
pub mod topology;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{redact_url, Config};
use crate::pipeline::Pipeline;
use crate::reload::Live;
use crate::store::StoreError;
use crate::telemetry::events::{
    emit, AmqpConnectFailed, AmqpConnected, AmqpDisconnected, StoreFlushed,
};
use crate::telemetry::Readiness;

/// Broker-side failures. All are transient for the service: the session is dropped and
/// re-established; nothing unconfirmed is acked or deleted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("{0:?} is longer than AMQP's 255-byte short string")]
    TooLong(String),
    #[error("broker refused (nack) a message for {0}")]
    Nacked(String),
    #[error("message for {0} was returned unroutable")]
    Returned(String),
    #[error("broker did not confirm a message (confirm mode is off)")]
    NotConfirmed,
    #[error("the channel refused an ack (it was closed)")]
    AckRefused,
    #[error("the broker cancelled the consumer")]
    ConsumerCancelled,
    #[error("a prepare lane failed (panicked)")]
    LaneFailed,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store fails even a probe write after a store error ended a session: sled writes
    /// nothing more until it is opened again, so the service returns this instead of
    /// retrying on the same store (`bodflow run` opens it again and goes on).
    #[error("the store cannot write: {0}")]
    StoreDown(StoreError),
    #[error("worker task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(
        "a dead-letter copy needs a {0}-byte header frame, more than the connection's frame_max"
    )]
    FrameTooSmall(usize),
    #[error("the broker did not complete the connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("{0}")]
    Url(String),
    #[error("{0}")]
    Tls(String),
}

impl Error {
    /// Stable code for logs and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Broker(_) => "broker",
            Error::TooLong(_) => "too_long",
            Error::Nacked(_) => "nacked",
            Error::Returned(_) => "unroutable",
            Error::NotConfirmed => "not_confirmed",
            Error::AckRefused => "ack_refused",
            Error::ConsumerCancelled => "consumer_cancelled",
            Error::LaneFailed => "lane_failed",
            Error::Store(e) => e.code(),
            Error::StoreDown(_) => "store_down",
            Error::Task(_) => "task",
            Error::ConnectTimeout(_) => "connect_timeout",
            Error::FrameTooSmall(_) => "frame_too_small",
            Error::Url(_) => "bad_url",
            Error::Tls(_) => "bad_tls",
        }
    }
}

/// A short string, refusing (rather than panicking on) anything over 255 bytes.
pub(crate) fn short(s: &str) -> Result<ShortString, Error> {
    ShortString::try_new(s).map_err(|_| Error::TooLong(s.chars().take(64).collect()))
}

/// An id bodflow derives (a BODID, a correlation id) as a short string, whatever its length:
/// as it is when it fits 255 bytes, else its first bytes (cut at a character boundary), `~`
/// and 16 hex digits of its BLAKE3 hash — 255 bytes in all, the same for the same id and
/// distinct for distinct ones. A longer one (made of configured logical IDs of up to 255
/// characters and a sender's IDs) would otherwise fail its row's publish at every attempt,
/// and the rows behind it with it.
pub(crate) fn short_id(s: &str) -> ShortString {
    const MAX: usize = 255;
    if s.len() <= MAX {
        return ShortString::from(s);
    }
    let hash = blake3::hash(s.as_bytes()).to_hex();
    let mut end = MAX - 17;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(format!("{}~{}", &s[..end], &hash[..16]))
}

/// A header value as text (ION sends long strings; short strings are accepted too).
pub(crate) fn header_str(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn put_header(headers: &mut FieldTable, name: &str, value: &str) {
    headers.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
}

/// Runs `futures` together and returns their outputs in the order given. Each is first
/// polled in that order, so lapin calls (publish, ack) enqueue their frames — and publishes
/// take their confirm tags — in that order. Awaiting them one by one instead waits for
/// lapin's I/O thread to write each message before handing over the next: a round trip
/// between two threads, with its context switches, per message.
pub(crate) async fn all_in_order<F: Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut pending: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (future, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => all = false,
                }
            }
        }
        if all {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Waits for one publisher confirm: only an Ack without a returned message is a success.
pub(crate) async fn confirmed(confirm: lapin::PublisherConfirm, what: &str) -> Result<(), Error> {
    confirmation(confirm.await?, what)
}

/// A confirm of the message `what` as a result.
fn confirmation(confirmation: Confirmation, what: &str) -> Result<(), Error> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(Error::Returned(what.to_string())),
        Confirmation::Nack(_) => Err(Error::Nacked(what.to_string())),
        Confirmation::NotRequested => Err(Error::NotConfirmed),
    }
}

/// The confirm of a message sent with many in flight ([`Sender`]), named by message id. A
/// returned message is named by its own: lapin hands a return to whichever confirm completes
/// next, which may be another message's.
fn sent_confirmation(confirmation: Confirmation, message_id: &str) -> Result<(), Error> {
    match confirmation {
        Confirmation::Ack(Some(returned)) => Err(Error::Returned(
            returned_id(&returned).unwrap_or(message_id).to_string(),
        )),
        other => self::confirmation(other, message_id),
    }
}

fn returned_id(returned: &lapin::message::BasicReturnMessage) -> Option<&str> {
    returned
        .delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str())
}

/// Connects, declares the topology of `config` (new applications' queues), disconnects.
pub async fn declare_topology(config: &Config) -> Result<(), Error> {
    let (connection, declared) = connect_with(&config.amqp, Frames::SMALL, async |c| {
        let admin = c.create_channel().await?;
        Ok(topology::declare(&admin, config).await)
    })
    .await?;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "declared".into())).await;
    declared
}

/// Declares the topology of `config` on a channel of its own, closed afterwards.
async fn declare_on(connection: &Connection, config: &Config) -> Result<(), Error> {
    let admin = connection.create_channel().await?;
    topology::declare(&admin, config).await?;
    let _ = admin.close(200, "declared".into()).await;
    Ok(())
}

/// How long closing a connection may take before it is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Closes `connection` (within [`CLOSE_TIMEOUT`]); whether it closed cleanly.
async fn close_connection(connection: &Connection) -> bool {
    matches!(
        tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "bye".into())).await,
        Ok(Ok(()))
    )
}

/// How long [`release_channels`] waits for lapin to be done with a connection, and the grace
/// after it is.
const RELEASE_WAIT: Duration = Duration::from_secs(5);
const RELEASE_GRACE: Duration = Duration::from_millis(100);

/// Lets go of `held`, handles of `connection`'s channels, once lapin is done with the
/// connection (closed, or failed after a close that did not complete and the socket was shut
/// down).
///
/// lapin 4.12 deadlocks when the last handle of a consuming channel is gone as the connection
/// closes or fails with deliveries still arriving: its I/O thread, holding the channel's state
/// to take in a delivery, waits for the consumers, while the connection's handler, holding the
/// consumers to fail or cancel them, drops its copy of the consumer, whose last channel handle
/// waits for the channel's state to close the channel. Both stay stuck for good (a runtime
/// worker and the I/O thread; seen once in the disk-full test, and within 60 closes every
/// time in a loop). So the handles are held until lapin says the connection is closed or
/// failed — it fails the consumers right after, in the same call, hence the grace — and a
/// connection lapin never lets go of within [`RELEASE_WAIT`] keeps them: a few handles
/// leaked rather than a worker lost (`tests/amqp.rs`,
/// `closing_with_deliveries_in_flight_never_deadlocks`).
pub async fn release_channels(connection: &Connection, held: Vec<lapin::Channel>) {
    if held.is_empty() {
        return;
    }
    let start = Instant::now();
    while !(connection.status().closed() || connection.status().errored()) {
        if start.elapsed() > RELEASE_WAIT {
            tracing::debug!("lapin has not let go of a connection: keeping its channels' handles");
            std::mem::forget(held);
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(RELEASE_GRACE).await;
    drop(held);
}

/// Frames bodflow asks for unless the URL sets `frame_max`. lapin keeps 32 frames of buffer
/// each way per connection, resident from the start: 8 MiB at RabbitMQ's default of 128 KiB,
/// 2 MiB at this size, which still carries a typical BOD in one frame.
///
/// A delivery's properties travel in one frame, which the broker does not split: a sender's
/// headers over this size (the broker took them under its own, larger `frame_max`) arrive in
/// a frame lapin refuses, closing the connection — and the redelivered message would close
/// every next one. After such a failure — or before publishing a dead-letter copy whose
/// headers (the sender's and ours) would not fit — the service connects with larger frames
/// ([`Frames::grown`]), and keeps doing so after restarts (store meta [`FRAMES_META`]).
const FRAME_MAX: u32 = 32 * 1024;

/// The largest frames the service grows to, asked for explicitly: a broker without a limit
/// would otherwise make lapin size its buffers for 4 GiB frames. RabbitMQ's default is
/// 128 KiB; a broker configured above this can deliver headers bodflow cannot take.
const FRAME_MAX_CEILING: u32 = 1024 * 1024;

/// Store meta key: the frame size the service last grew to.
const FRAMES_META: &str = "amqp.frames";

/// The frame size a connection asks for (the URL's `frame_max` wins; the broker lowers it to
/// its own if that is smaller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frames(u32);

impl Frames {
    /// The service's start: [`FRAME_MAX`].
    pub(crate) const SMALL: Frames = Frames(FRAME_MAX);
    /// For commands, whose memory matters less than taking whatever a queue holds.
    pub(crate) const LARGEST: Frames = Frames(FRAME_MAX_CEILING);

    /// The next size after a frame of `needed` bytes did not fit: four times larger, at least
    /// `needed`, at most [`FRAME_MAX_CEILING`]; `None` at the ceiling.
    fn grown(self, needed: usize) -> Option<Frames> {
        if self.0 >= FRAME_MAX_CEILING {
            return None;
        }
        let mut next = self.0.saturating_mul(4);
        while (next as usize) < needed && next < FRAME_MAX_CEILING {
            next = next.saturating_mul(4);
        }
        Some(Frames(next.min(FRAME_MAX_CEILING)))
    }

    /// The size the store notes for the next start, if any and within bounds.
    fn stored(store: &crate::store::Store) -> Frames {
        match store.meta(FRAMES_META) {
            Ok(Some(v)) => match v.parse::<u32>() {
                Ok(n) if (FRAME_MAX..=FRAME_MAX_CEILING).contains(&n) => Frames(n),
                _ => Frames::SMALL,
            },
            _ => Frames::SMALL,
        }
    }
}

/// What a session's dead-letter copies must fit in: the connection's negotiated
/// `frame_max`, and whether a larger one could be asked for ([`dead_letter::fit`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameLimit {
    pub max: usize,
    pub can_grow: bool,
}

impl FrameLimit {
    fn of(connection: &Connection, frames: Frames) -> FrameLimit {
        FrameLimit {
            max: connection.configuration().frame_max() as usize,
            can_grow: frames.0 < FRAME_MAX_CEILING,
        }
    }
}

/// Whether the connection whose `events` these are failed on a frame larger than the
/// `frame_max` it had negotiated.
async fn failed_on_large_frame(
    events: &mut (impl futures_lite::Stream<Item = lapin::Event> + Unpin),
) -> bool {
    use futures_lite::StreamExt as _;
    use lapin::protocol::{AMQPErrorKind, AMQPHardError};
    let mut large = false;
    while let Some(Some(event)) = futures_lite::future::poll_once(events.next()).await {
        if let lapin::Event::Error(e) = event {
            if let lapin::ErrorKind::ProtocolError(amqp) = e.kind() {
                large |= *amqp.kind() == AMQPErrorKind::Hard(AMQPHardError::FRAMEERROR);
            }
        }
    }
    large
}

/// Where the broker is and how to reach it: `amqp.url` as lapin reads it and, for `amqps`,
/// the TLS client built from the system's CA certificates and `[amqp.tls]`.
#[derive(Clone)]
pub struct Endpoint {
    uri: lapin::uri::AMQPUri,
    /// `amqps` only.
    tls: Option<lapin::tcp::RustlsConnector>,
}

impl Endpoint {
    /// Whether connections use TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// Checks `[amqp]` before any connection, so that what no connection could honour is a
/// configuration error rather than a broker to wait for: a URL lapin cannot read,
/// `[amqp.tls]` set for a plain `amqp://` URL (it would not be used), and for `amqps` no CA
/// certificate to trust, TLS files that cannot be read or parsed, a key that does not match
/// its certificate. Builds the TLS client from the files as they are now. The error names the
/// setting and what is wrong, never the URL (it may hold a password).
pub fn endpoint(amqp: &crate::config::Amqp) -> Result<Endpoint, Error> {
    let uri = check_url(&amqp.url)?;
    if uri.scheme != lapin::uri::AMQPScheme::AMQPS {
        if amqp.tls.is_set() {
            return Err(Error::Url(format!(
                "[amqp.tls] is set, but {} is not an amqps:// URL: the connection would not \
                 use TLS",
                url_source()
            )));
        }
        return Ok(Endpoint { uri, tls: None });
    }
    Ok(Endpoint {
        uri,
        tls: Some(tls_client(&amqp.tls)?),
    })
}

/// The TLS client of an `amqps` connection: rustls with *ring*, trusting the system's CA
/// certificates (as rustls-native-certs finds them: `SSL_CERT_FILE`, `SSL_CERT_DIR`, else the
/// system's store) and `ca_file`, presenting `cert_file` when given.
fn tls_client(tls: &crate::config::Tls) -> Result<lapin::tcp::RustlsConnector, Error> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let fail = |key: &str, path: &std::path::Path, why: String| {
        Error::Tls(format!("amqp.tls.{key}: {}: {why}", path.display()))
    };
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| fail(key, path, format!("cannot read it: {e}")))
    };
    let certificates = |key: &str, path: &std::path::Path| {
        let found = CertificateDer::pem_slice_iter(&read(key, path)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(key, path, format!("not PEM: {e}")))?;
        if found.is_empty() {
            return Err(fail(
                key,
                path,
                "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
            ));
        }
        Ok(found)
    };
    // The files first: what is wrong with them does not depend on the machine.
    let cas = match &tls.ca_file {
        Some(path) => Some((path, certificates("ca_file", path)?)),
        None => None,
    };
    let identity = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certificates("cert_file", cert)?;
            let key_der = PrivateKeyDer::from_pem_slice(&read("key_file", key)?).map_err(|e| {
                fail(
                    "key_file",
                    key,
                    format!("no unencrypted PEM private key in it ({e})"),
                )
            })?;
            Some((cert, key, chain, key_der))
        }
        (None, None) => None,
        _ => {
            return Err(Error::Tls(
                "amqp.tls: cert_file and key_file go together (the client certificate and its \
                 key)"
                    .into(),
            ))
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    for e in &system.errors {
        tracing::warn!(error = %e, "Could not read some of the system's CA certificates (SSL_CERT_FILE, SSL_CERT_DIR or the system's store)");
    }
    // Certificates of the system's store that cannot be parsed are skipped, as rustls does.
    roots.add_parsable_certificates(system.certs);
    if let Some((path, cas)) = cas {
        let total = cas.len();
        let (_, unusable) = roots.add_parsable_certificates(cas);
        if unusable > 0 {
            return Err(fail(
                "ca_file",
                path,
                format!("{unusable} of its {total} certificates cannot be parsed"),
            ));
        }
    }
    if roots.is_empty() {
        let why = system
            .errors
            .first()
            .map_or_else(|| "the system has none".to_string(), |e| e.to_string());
        return Err(Error::Tls(format!(
            "amqps: no CA certificate to check the broker's against ({why}; install \
             ca-certificates, or point SSL_CERT_FILE at a bundle) and amqp.tls.ca_file is not set"
        )));
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Tls(format!("amqps: {e}")))?
    .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key, chain, key_der)) => {
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                Error::Tls(format!(
                    "amqp.tls: the key of key_file ({}) cannot be used with the certificate of \
                     cert_file ({}): {e}",
                    key.display(),
                    cert.display()
                ))
            })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config.into())
}

/// Names the setting the broker URL came from.
fn url_source() -> &'static str {
    match std::env::var(crate::config::AMQP_URL_ENV) {
        Ok(env) if !env.is_empty() => "BODFLOW_AMQP_URL (which overrides amqp.url)",
        _ => "amqp.url",
    }
}

/// `amqp.url` as lapin reads it, refused when lapin cannot read it. An IPv6 address as the
/// host (`[::1]`), which lapin reads as `localhost`, is put right. The error names where the
/// URL came from and what is wrong with it, never the URL (it may hold a password).
pub fn check_url(url: &str) -> Result<lapin::uri::AMQPUri, Error> {
    let refuse = |why: String| Error::Url(format!("{}: {why}", url_source()));
    let mut uri = url.parse::<lapin::uri::AMQPUri>().map_err(|e| {
        // lapin quotes a URL it cannot take as a base, password and all.
        refuse(format!("not an AMQP URL ({})", e.replace(url, "…")))
    })?;
    // The host as the URL writes it: after the user info (which ends at the last `@`).
    let authority = url.trim().split_once("://").map_or("", |(_, rest)| {
        rest.split(['/', '?', '#']).next().unwrap_or_default()
    });
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if let Some(literal) = host.strip_prefix('[') {
        let address = literal
            .split_once(']')
            .and_then(|(address, _)| address.parse::<std::net::Ipv6Addr>().ok())
            .ok_or_else(|| refuse("the host is not an IPv6 address in brackets".into()))?;
        uri.authority.host = address.to_string();
    }
    Ok(uri)
}

/// How long a connection attempt (TCP, TLS, the AMQP handshake) may take by default.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// One connection for a command (`publish`, `dlq`, `resync`, a reload's topology), with
/// `setup` run on it (declarations, channels): the two together are given up, with the socket
/// shut down, after [`CONNECT_TIMEOUT`] — a peer that accepts and says nothing, or a broker
/// that stops answering during the setup, would otherwise hold the command for ever.
async fn connect_with<T>(
    amqp: &crate::config::Amqp,
    frames: Frames,
    setup: impl AsyncFnOnce(&Connection) -> Result<T, Error>,
) -> Result<(Connection, T), Error> {
    let endpoint = endpoint(amqp)?;
    let socket = Socket::default();
    let attempt = async {
        let connection = connect_keeping(&endpoint, frames, Some(&socket)).await?;
        let value = setup(&connection).await?;
        Ok((connection, value))
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(connected)) => {
            socket.release();
            Ok(connected)
        }
        Ok(Err(e)) => {
            socket.shut_down();
            Err(e)
        }
        Err(_) => {
            socket.shut_down();
            Err(Error::ConnectTimeout(CONNECT_TIMEOUT))
        }
    }
}

/// [`connect`], keeping the connection's TCP socket in `socket` when given.
async fn connect_keeping(
    endpoint: &Endpoint,
    frames: Frames,
    socket: Option<&Socket>,
) -> Result<Connection, Error> {
    let properties = ConnectionProperties::default().with_connection_name("bodflow".into());
    let mut uri = endpoint.uri.clone();
    uri.query.frame_max.get_or_insert(frames.0);
    let runtime = lapin::runtime::default_runtime()?;
    let socket = socket.cloned();
    let tls = endpoint.tls.clone();
    // What lapin's own `connect_uri_with_config` does, keeping a handle on the socket: the
    // TCP connection first, then (amqps) the TLS handshake over it.
    let connection = Connection::connector(
        uri,
        runtime,
        async move |uri, runtime| {
            let plain = lapin::uri::AMQPUri {
                scheme: lapin::uri::AMQPScheme::AMQP,
                ..uri.clone()
            };
            let stream = lapin::tcp::AMQPUriTcpExt::connect_async(&plain, &runtime).await?;
            #[cfg(unix)]
            if let (Some(socket), lapin::AsyncTcpStream::Plain(tcp)) = (&socket, &stream) {
                socket.keep(std::os::fd::AsFd::as_fd(tcp.get_ref()));
            }
            #[cfg(not(unix))]
            let _ = &socket;
            Ok(match &tls {
                None => stream,
                Some(tls) => stream.into_rustls(tls, &uri.authority.host).await?,
            })
        },
        properties,
    );
    Ok(connection.await?)
}

/// The TCP socket of one connection (a duplicate of its descriptor), so that a connection
/// bodflow gives up on can be shut down. lapin gives no way to stop a connection's I/O thread:
/// one whose peer says nothing more (an attempt that timed out, a close that was never
/// answered) would otherwise wait on it, with its socket, until the peer closes.
#[derive(Clone, Default)]
struct Socket(Arc<std::sync::Mutex<Slot>>);

#[derive(Default)]
enum Slot {
    /// Not connected yet.
    #[default]
    Empty,
    Kept(std::net::TcpStream),
    /// Given up, or closed cleanly: a socket that connects only now (lapin's I/O thread was
    /// still in the TCP connect) is shut down at once.
    Done,
}

impl Socket {
    #[cfg(unix)]
    fn keep(&self, fd: std::os::fd::BorrowedFd<'_>) {
        let socket = match fd.try_clone_to_owned() {
            Ok(fd) => std::net::TcpStream::from(fd),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot keep the connection's socket: if bodflow gives this connection up, its I/O thread waits until the broker closes it");
                return;
            }
        };
        let mut slot = self.slot();
        match *slot {
            Slot::Done => {
                let _ = socket.shutdown(std::net::Shutdown::Both);
            }
            _ => *slot = Slot::Kept(socket),
        }
    }

    /// Shuts the socket down, now or as soon as it connects: the connection's I/O thread sees
    /// the end of it and stops.
    fn shut_down(&self) {
        if let Slot::Kept(socket) = std::mem::replace(&mut *self.slot(), Slot::Done) {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Lets go of the socket of a connection that connected, or closed cleanly (lapin closes
    /// its own).
    fn release(&self) {
        *self.slot() = Slot::Done;
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn confirm_channel(connection: &Connection) -> Result<Channel, Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Runtime knobs of the service; every field has a sensible default.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Most deliveries committed in one store transaction. A group is whatever is prepared
    /// and in line when the previous commit ends, so it grows with the load.
    pub group_max: usize,
    /// Documents larger than this (bytes) do not hold back other document keys while they
    /// are being prepared ([`lanes`]).
    pub large_bytes: usize,
    /// Commit attempts of a delivery on store errors before it is dead-lettered
    /// `retries_exhausted`.
    pub store_attempts: u32,
    /// First retry delay of a failed commit or publish; doubles per attempt (at most 5 s).
    pub retry_base: Duration,
    /// Outbox rows published per confirm round.
    pub outbox_batch: usize,
    /// The outbox is scanned at least this often (it is also woken after every commit).
    pub outbox_poll: Duration,
    /// On shutdown, how long the outbox may keep publishing before the service stops anyway
    /// (what is left is published on the next start).
    pub drain_timeout: Duration,
    /// On shutdown, how long the session may take in all — finishing the deliveries taken,
    /// settling published rows, draining the outbox (`drain_timeout` of it) — before it is
    /// dropped anyway: a broker that blocks the connection (a memory or disk alarm) stops
    /// every frame, acks and confirms included, until the alarm clears. What a dropped session
    /// had not acked goes back to the queue; unpublished rows stay in the outbox.
    pub stop_timeout: Duration,
    /// Reconnect backoff, doubling from `reconnect_min` up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How long one connection attempt (TCP and the AMQP handshake), and then the session's
    /// setup (topology, prefetch, channels), may each take before the attempt is abandoned
    /// and retried with the backoff: a broker still starting, or a peer that accepts TCP and
    /// then says nothing, would otherwise hold the service for ever.
    pub connect_timeout: Duration,
    /// Times in a row `bodflow.out` may return an outbox row (no queue bound for its
    /// receiver) before the row goes to `bodflow.dead` instead ([`publisher`]); at least 1.
    /// At the default retry backoff, 10 returns take about 20 s (more for a row that was
    /// refused before: its backoff has grown), counted again by each new session.
    pub unroutable_attempts: u32,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            group_max: 64,
            large_bytes: 64 * 1024,
            store_attempts: 5,
            retry_base: Duration::from_millis(50),
            outbox_batch: 512,
            outbox_poll: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(20),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
            connect_timeout: CONNECT_TIMEOUT,
            unroutable_attempts: 10,
        }
    }
}

/// The service: runs until `shutdown` completes, then stops in order (module docs). Broker
/// failures are retried forever with backoff; the only `Err`s are a store that cannot write
/// ([`Error::StoreDown`]: open it again) and one that cannot flush at the end.
pub async fn run(
    pipeline: Pipeline,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    run_with(pipeline, options, Readiness::default(), shutdown).await
}

/// [`run`], reporting in `readiness` whether a session is connected and consuming (cleared
/// when a session ends and as soon as shutdown is requested).
pub async fn run_with(
    pipeline: Pipeline,
    options: RunOptions,
    readiness: Readiness,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    run_live(Live::new(pipeline), options, readiness, shutdown).await
}

/// [`run_with`] on a [`Live`] pipeline, which [`crate::reload::reload`] may swap while the
/// service runs (between commit groups; a new session declares the topology of the
/// configuration in force).
pub async fn run_live(
    live: Live,
    options: RunOptions,
    readiness: Readiness,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let token = CancellationToken::new();
    let service = serve(&live, options, token.clone(), &readiness);
    tokio::pin!(service);
    tokio::select! {
        result = &mut service => return result,
        () = shutdown => {
            tracing::info!("Shutdown requested: finishing in-flight work");
            readiness.set_consuming(false);
            token.cancel();
        }
    }
    service.await
}

async fn serve(
    live: &Live,
    options: RunOptions,
    token: CancellationToken,
    readiness: &Readiness,
) -> Result<(), Error> {
    // Restart-only (a reload keeps it). The TLS files are read again at every connection.
    let amqp = live.current().await.config.amqp.clone();
    let url = &amqp.url;
    let wake = Arc::new(Notify::new());
    let mut delay = options.reconnect_min;
    let mut reconnect = false;
    let mut frames = Frames::stored(live.store());
    while !token.is_cancelled() {
        let socket = Socket::default();
        let connection = tokio::select! {
            () = token.cancelled() => {
                socket.shut_down();
                break;
            }
            c = tokio::time::timeout(options.connect_timeout, async {
                connect_keeping(&endpoint(&amqp)?, frames, Some(&socket)).await
            }) => {
                c.unwrap_or(Err(Error::ConnectTimeout(options.connect_timeout)))
            }
        };
        match connection {
            Ok(connection) => {
                let mut events = Box::pin(connection.events_listener());
                emit(AmqpConnected {
                    url: &redact_url(url),
                    reconnect,
                });
                reconnect = true;
                readiness.set_connected(true);
                let started = Instant::now();
                // The session's channels, held until lapin is done with the connection
                // ([`release_channels`]).
                let mut held = Vec::new();
                let result = tokio::select! {
                    result = session(&connection, frames, live, &options, &token, &wake, readiness, &mut held) => result,
                    () = async {
                        token.cancelled().await;
                        tokio::time::sleep(options.stop_timeout).await;
                    } => {
                        tracing::warn!(timeout_s = options.stop_timeout.as_secs_f64(), "The session did not finish within the stop timeout (is the broker blocking the connection?): dropped; what it had not acked goes back to the queue, unpublished rows stay in the outbox");
                        Ok(())
                    }
                };
                readiness.set_connected(false);
                // A broker that did not answer the setup would not answer a close; a blocked
                // connection would not send it either.
                let silent = matches!(result, Err(Error::ConnectTimeout(_)));
                let closed = !silent && close_connection(&connection).await;
                let shutdown = token.is_cancelled();
                emit(AmqpDisconnected {
                    error: result
                        .as_ref()
                        .err()
                        .map(|e| (e.code(), e as &dyn std::fmt::Display)),
                    shutdown,
                });
                if closed {
                    socket.release();
                } else {
                    socket.shut_down();
                }
                release_channels(&connection, held).await;
                if result.is_ok() && shutdown {
                    break;
                }
                if let Err(Error::Store(cause)) = &result {
                    let store = live.store().clone();
                    if let Err(down) = tokio::task::spawn_blocking(move || store.probe()).await? {
                        // sled writes nothing more until it is opened again: the caller
                        // (`bodflow run`) lets go of this store and opens it again.
                        tracing::debug!(error = %down, %cause, "The store fails a probe write");
                        return Err(Error::StoreDown(down));
                    }
                }
                let needed = match result {
                    Err(Error::FrameTooSmall(needed)) => Some(needed),
                    _ if failed_on_large_frame(&mut events).await => Some(0),
                    _ => None,
                };
                if let Some(needed) = needed {
                    match frames.grown(needed) {
                        Some(grown) => {
                            tracing::warn!(frame_max = frames.0, next = grown.0, "A sender's headers do not fit bodflow's frames: reconnecting with larger ones from now on (lapin keeps 64 of them as buffers)");
                            frames = grown;
                            if let Err(e) = live.store().set_meta(FRAMES_META, &grown.0.to_string()) {
                                tracing::warn!(error = %e, "Could not note the larger frames in the store; the next start begins with small ones again");
                            }
                        }
                        None => tracing::error!(frame_max = frames.0, "A delivery's headers exceed the largest frames bodflow asks for: lower the broker's frame_max (RabbitMQ's default is 128 KiB) or set frame_max in amqp.url"),
                    }
                }
                // A session that ran a while starts the backoff again; one whose setup the
                // broker never answered did not run, however long it waited.
                if !silent && started.elapsed() > options.reconnect_max {
                    delay = options.reconnect_min;
                }
            }
            Err(e) => {
                emit(AmqpConnectFailed {
                    code: e.code(),
                    error: &e,
                    delay_ms: delay.as_millis() as u64,
                });
                socket.shut_down();
            }
        }
        tokio::select! {
            () = token.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(options.reconnect_max);
    }
    let store = live.store().clone();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || store.flush()).await??;
    emit(StoreFlushed {
        seconds: started.elapsed().as_secs_f64(),
    });
    tracing::info!("Stopped");
    Ok(())
}

/// One connection's worth of work: topology, then the consumer and the outbox publisher
/// side by side until shutdown or the first failure of either.
///
/// `held` gets a handle of each channel, for the caller to let go of only once lapin is done
/// with the connection ([`release_channels`]).
#[allow(clippy::too_many_arguments)]
async fn session(
    connection: &Connection,
    frames: Frames,
    live: &Live,
    options: &RunOptions,
    shutdown: &CancellationToken,
    wake: &Arc<Notify>,
    readiness: &Readiness,
    held: &mut Vec<lapin::Channel>,
) -> Result<(), Error> {
    // The configuration in force now: reloaded applications get their queues; the consumer
    // reads `live` per group, the publisher needs only restart-only settings.
    let pipeline = &live.current().await;
    // Bounded like the connection itself: a broker that stops answering here would
    // otherwise hold the session before it consumes anything.
    let setup = async {
        declare_on(connection, &pipeline.config).await?;
        let inbound = connection.create_channel().await?;
        inbound
            .basic_qos(pipeline.config.amqp.prefetch, BasicQosOptions::default())
            .await?;
        let dead_letters = confirm_channel(connection).await?;
        let outbound = confirm_channel(connection).await?;
        Ok::<_, Error>((inbound, dead_letters, outbound))
    };
    let (inbound, dead_letters, outbound) = tokio::time::timeout(options.connect_timeout, setup)
        .await
        .unwrap_or(Err(Error::ConnectTimeout(options.connect_timeout)))?;
    held.extend([inbound.clone(), dead_letters.clone(), outbound.clone()]);

    let session = shutdown.child_token();
    let stop_publisher = CancellationToken::new();
    let frames = FrameLimit::of(connection, frames);
    let publisher = tokio::spawn(publisher::run(publisher::Publisher {
        channel: outbound,
        frames,
        pipeline: pipeline.clone(),
        options: options.clone(),
        wake: wake.clone(),
        stop: stop_publisher.clone(),
        shutdown: shutdown.clone(),
        session: session.clone(),
    }));
    let consumed = consumer::run(
        &inbound,
        &consumer::Consumer {
            live,
            options,
            dead_letters: &dead_letters,
            frames,
            wake,
            readiness,
        },
        &session,
    )
    .await;
    stop_publisher.cancel();
    if consumed.is_err() {
        session.cancel();
    }
    let published = publisher.await?;
    consumed?;
    published?;
    for channel in [&inbound, &dead_letters] {
        let _ = channel.close(200, "bye".into()).await;
    }
    Ok(())
}

/// Publishes every durable outbox row with publisher confirms, as the service's publisher
/// would, and returns how many: for a command that holds the store while no service runs
/// (`bodflow resync`). Declares the topology first, so every application queue exists.
pub async fn publish_outbox(pipeline: Pipeline, options: RunOptions) -> Result<usize, Error> {
    // Dead-letter rows may carry a sender's large headers; memory does not matter here.
    let (connection, channel) = connect_with(&pipeline.config.amqp, Frames::LARGEST, async |c| {
        declare_on(c, &pipeline.config).await?;
        confirm_channel(c).await
    })
    .await?;
    let token = CancellationToken::new();
    let publisher = publisher::Publisher {
        channel,
        frames: FrameLimit::of(&connection, Frames::LARGEST),
        pipeline,
        options,
        wake: Arc::new(Notify::new()),
        stop: token.clone(),
        shutdown: token.clone(),
        session: token,
    };
    let published = publisher.drain_counting(5).await;
    let _ = connection.close(200, "done".into()).await;
    published
}

/// An inbound document to send to `bodflow.in` (what ION would send).
#[derive(Debug, Clone, Default)]
pub struct InboundMessage<'a> {
    pub bytes: &'a [u8],
    pub message_id: &'a str,
    /// ION `documentName`, `Verb.Noun`.
    pub document_name: Option<&'a str>,
    pub from_logical_id: Option<&'a str>,
    /// ION `toLogicalId`, `tenantId` and `variationId`.
    pub to_logical_id: Option<&'a str>,
    pub tenant_id: Option<&'a str>,
    pub variation_id: Option<&'a str>,
    pub reply_to: Option<&'a str>,
    /// AMQP `correlation_id`: a reply to this message carries it.
    pub correlation_id: Option<&'a str>,
    /// Routing key on the topic exchange (default: `document_name`, else `bod`).
    pub routing_key: Option<&'a str>,
    /// W3C `traceparent` / `tracestate` headers, sent as given.
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
}

/// Publishes inbound documents with publisher confirms (`bodflow publish`, tests).
pub struct Sender {
    connection: Connection,
    channel: Channel,
}

/// A sent message whose confirm is still to come.
pub struct Pending {
    confirm: lapin::PublisherConfirm,
    message_id: String,
}

impl Pending {
    /// Waits for the broker's confirm; a Nack or a return is an error.
    pub async fn confirmed(self) -> Result<(), Error> {
        sent_confirmation(self.confirm.await?, &self.message_id)
    }
}

impl Sender {
    /// Connects and declares the topology, so that messages sent before the service starts
    /// wait in `bodflow.inbound`.
    pub async fn connect(config: &Config) -> Result<Sender, Error> {
        let (connection, channel) = connect_with(&config.amqp, Frames::SMALL, async |c| {
            declare_on(c, config).await?;
            confirm_channel(c).await
        })
        .await?;
        Ok(Sender {
            connection,
            channel,
        })
    }

    /// Sends one document, persistent and mandatory; await [`Pending::confirmed`] later to
    /// keep many in flight.
    pub async fn send(&self, message: &InboundMessage<'_>) -> Result<Pending, Error> {
        let mut headers = FieldTable::default();
        if let Some(name) = message.document_name {
            put_header(&mut headers, "documentName", name);
        }
        for (name, value) in [
            ("fromLogicalId", message.from_logical_id),
            ("toLogicalId", message.to_logical_id),
            ("tenantId", message.tenant_id),
            ("variationId", message.variation_id),
        ] {
            if let Some(value) = value {
                put_header(&mut headers, name, value);
            }
        }
        if let Some(traceparent) = message.traceparent {
            put_header(&mut headers, "traceparent", traceparent);
        }
        if let Some(tracestate) = message.tracestate {
            put_header(&mut headers, "tracestate", tracestate);
        }
        let mut properties = BasicProperties::default()
            .with_content_type("application/xml".into())
            .with_delivery_mode(2)
            .with_message_id(short(message.message_id)?)
            .with_headers(headers);
        if let Some(reply_to) = message.reply_to {
            properties = properties.with_reply_to(short(reply_to)?);
        }
        if let Some(correlation_id) = message.correlation_id {
            properties = properties.with_correlation_id(short(correlation_id)?);
        }
        let routing_key = message
            .routing_key
            .or(message.document_name)
            .unwrap_or("bod");
        let confirm = self
            .channel
            .basic_publish(
                short(topology::IN_EXCHANGE)?,
                short(routing_key)?,
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                message.bytes,
                properties,
            )
            .await?;
        Ok(Pending {
            confirm,
            message_id: message.message_id.to_string(),
        })
    }

    /// Waits for every outstanding confirm, then closes the connection.
    pub async fn close(self) -> Result<(), Error> {
        let returned = self.channel.wait_for_confirms().await?;
        if let Some(r) = returned.first() {
            return Err(Error::Returned(
                returned_id(r).unwrap_or_default().to_string(),
            ));
        }
        self.connection.close(200, "done".into()).await?;
        Ok(())
    }
}

/// `SyncCustomerPartyMaster` → `Sync.CustomerPartyMaster`, read cheaply from the root
/// element's name (no parse); `None` when the document does not start like a BOD.
pub fn document_name(bytes: &[u8]) -> Option<String> {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    let mut rest: &str = &head;
    let name = loop {
        let start = rest.find('<')?;
        rest = &rest[start + 1..];
        if rest.starts_with('?') || rest.starts_with('!') {
            continue;
        }
        let end = rest.find(|c: char| c.is_whitespace() || c == '>' || c == '/')?;
        break &rest[..end];
    };
    let local = name.rsplit(':').next()?;
    let split = local
        .char_indices()
        .skip(1)
        .find(|(_, c)| c.is_ascii_uppercase())
        .map(|(i, _)| i)?;
    let (verb, noun) = local.split_at(split);
    Some(format!("{verb}.{noun}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lapin_cannot_read_are_refused_without_their_password() {
        let refused = |url: &str| match check_url(url) {
            Err(e @ Error::Url(_)) => {
                assert_eq!(e.code(), "bad_url");
                let message = e.to_string();
                assert!(!message.contains("s3cret"), "{message}");
                message
            }
            other => panic!("{url}: {other:?}"),
        };
        assert!(refused("garbage").contains("not an AMQP URL"));
        assert!(refused("amqp:guest:s3cret@rabbit.example").contains("not an AMQP URL"));
        assert!(refused("http://rabbit.example/").contains("not an AMQP URL"));
        assert!(refused("amqp://guest:s3cret@[::1x]:5672/%2f").contains("not an AMQP URL"));
        assert!(refused("amqp://s3cret@[x]/").contains("amqp.url"));

        // An IPv6 host is read as written (lapin alone reads `localhost`).
        let uri = check_url("amqp://guest:s3cret@[::1]:5672/%2f").unwrap();
        assert_eq!(
            (uri.authority.host.as_str(), uri.authority.port),
            ("::1", 5672)
        );
        let uri = check_url("amqp://[fd00::5]/ion").unwrap();
        assert_eq!(
            (uri.authority.host.as_str(), uri.authority.port),
            ("fd00::5", 5672)
        );
        // Brackets in a password are a password's.
        let uri = check_url("amqp://bodflow:pa[ss]@mq.example:5672/%2f").unwrap();
        assert_eq!(uri.authority.host, "mq.example");
        assert_eq!(uri.authority.userinfo.password, "pa[ss]");

        let uri = check_url("amqp://bodflow:s3cret@10.1.2.3:5673/erp?frame_max=65536").unwrap();
        assert_eq!(
            (
                uri.authority.host.as_str(),
                uri.authority.port,
                uri.vhost.as_str()
            ),
            ("10.1.2.3", 5673, "erp")
        );
        assert_eq!(uri.query.frame_max, Some(65536));
        check_url("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        check_url("amqp://rabbit.example").unwrap();
        let uri = check_url("amqps://bodflow:s3cret@rabbit.example/ion").unwrap();
        assert_eq!(uri.authority.port, 5671, "the amqps port");
    }

    #[test]
    fn amqps_reads_its_tls_files_and_what_it_could_not_use_is_refused() {
        use crate::config::{Amqp, Tls};
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            Some(path)
        };
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["bodflow".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let ca = file("ca.pem", &cert.pem());
        let cert_file = file("client.pem", &cert.pem());
        let key_file = file("client.key", &key.serialize_pem());
        let garbage = file("garbage.pem", "not a certificate\n");
        let amqp = |url: &str, tls: Tls| Amqp {
            url: url.into(),
            tls,
            ..Amqp::default()
        };
        let refused = |amqp: Amqp| match endpoint(&amqp) {
            Ok(_) => panic!("{amqp:?} accepted"),
            Err(e) => (e.code(), e.to_string()),
        };

        let plain = endpoint(&amqp("amqp://guest:s3cret@h/%2f", Tls::default())).unwrap();
        assert!(!plain.tls());
        // (The system's CA certificates alone: tests/cli.rs, with SSL_CERT_FILE.)
        let full = Tls {
            ca_file: ca.clone(),
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        };
        assert!(endpoint(&amqp("amqps://h", full.clone())).unwrap().tls());

        let (code, message) = refused(amqp("amqp://guest:s3cret@h", full.clone()));
        assert_eq!(code, "bad_url");
        assert!(message.contains("is not an amqps:// URL"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
        let missing = Tls {
            ca_file: Some(dir.path().join("nowhere.pem")),
            ..Tls::default()
        };
        let (code, message) = refused(amqp("amqps://h", missing));
        assert_eq!(code, "bad_tls");
        assert!(
            message.starts_with("amqp.tls.ca_file: ") && message.contains("cannot read it"),
            "{message}"
        );
        let unparsable = Tls {
            ca_file: file(
                "unparsable.pem",
                &format!(
                    "{}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                    cert.pem()
                ),
            ),
            ..Tls::default()
        };
        let (_, message) = refused(amqp("amqps://h", unparsable));
        assert!(
            message.contains("1 of its 2 certificates cannot be parsed"),
            "{message}"
        );
        let not_pem = Tls {
            ca_file: garbage.clone(),
            ..Tls::default()
        };
        let (_, message) = refused(amqp("amqps://h", not_pem));
        assert!(message.contains("amqp.tls.ca_file") && message.contains("no PEM certificate"));
        let key_is_a_certificate = Tls {
            key_file: cert_file.clone(),
            ..full.clone()
        };
        let (_, message) = refused(amqp("amqps://h", key_is_a_certificate));
        assert!(message.contains("amqp.tls.key_file"), "{message}");
        let other_key = file(
            "other.key",
            &rcgen::KeyPair::generate().unwrap().serialize_pem(),
        );
        let mismatched = Tls {
            key_file: other_key,
            ..full.clone()
        };
        let (_, message) = refused(amqp("amqps://h", mismatched));
        assert!(
            message.contains("cannot be used with the certificate"),
            "{message}"
        );
        let no_key = Tls {
            key_file: None,
            ..full
        };
        let (_, message) = refused(amqp("amqps://h", no_key));
        assert!(message.contains("go together"), "{message}");
    }

    #[test]
    fn a_returned_message_is_named_by_its_own_message_id_whichever_confirm_carries_it() {
        let returned = |message_id: Option<&str>| {
            let mut delivery = lapin::message::Delivery::mock(
                0,
                "bodflow.in".into(),
                "Sync.CustomerPartyMaster".into(),
                false,
                b"<x/>".to_vec(),
            );
            if let Some(id) = message_id {
                delivery.properties = BasicProperties::default().with_message_id(id.into());
            }
            Confirmation::Ack(Some(lapin::message::BasicReturnMessage {
                delivery,
                reply_code: 312,
                reply_text: "NO_ROUTE".into(),
            }))
        };
        let named = |c| match super::sent_confirmation(c, "m-1") {
            Err(Error::Returned(id)) => id,
            other => panic!("{other:?}"),
        };
        // The confirm of m-1 carries the return of m-2.
        assert_eq!(named(returned(Some("m-2"))), "m-2");
        assert_eq!(named(returned(None)), "m-1");
        assert!(super::sent_confirmation(Confirmation::Ack(None), "m-1").is_ok());
        assert!(matches!(
            super::sent_confirmation(Confirmation::Nack(None), "m-1"),
            Err(Error::Nacked(id)) if id == "m-1"
        ));
    }

    #[test]
    fn frames_grow_fourfold_or_to_what_was_needed_up_to_the_ceiling() {
        assert_eq!(Frames::SMALL.grown(0), Some(Frames(128 * 1024)));
        assert_eq!(Frames::SMALL.grown(40_000), Some(Frames(128 * 1024)));
        assert_eq!(Frames::SMALL.grown(200_000), Some(Frames(512 * 1024)));
        assert_eq!(Frames(512 * 1024).grown(0), Some(Frames::LARGEST));
        assert_eq!(Frames::SMALL.grown(usize::MAX), Some(Frames::LARGEST));
        assert_eq!(Frames::LARGEST.grown(0), None);
    }

    #[tokio::test]
    async fn all_in_order_starts_every_future_in_order_and_keeps_their_order() {
        let events = std::sync::Mutex::new(Vec::new());
        // Each notes its first poll, yields a different number of times (the last one ends
        // first) and notes its end.
        let futures = (0..5u32).map(|i| {
            let events = &events;
            async move {
                events.lock().unwrap().push(format!("start {i}"));
                for _ in 0..(5 - i) {
                    tokio::task::yield_now().await;
                }
                events.lock().unwrap().push(format!("end {i}"));
                i * 10
            }
        });
        let outputs = all_in_order(futures).await;
        assert_eq!(outputs, vec![0, 10, 20, 30, 40]);
        let events = events.into_inner().unwrap();
        // Every one started, in the order given, before any ended; they ended last first.
        assert_eq!(
            events,
            ["start 0", "start 1", "start 2", "start 3", "start 4"]
                .into_iter()
                .chain(["end 4", "end 3", "end 2", "end 1", "end 0"])
                .collect::<Vec<_>>()
        );
        assert!(all_in_order(Vec::<std::future::Ready<()>>::new())
            .await
            .is_empty());
    }

    #[test]
    fn document_name_from_root_element() {
        let xml = br#"<?xml version="1.0"?><!-- c --><SyncCustomerPartyMaster releaseID="9.2">"#;
        assert_eq!(
            document_name(xml).as_deref(),
            Some("Sync.CustomerPartyMaster")
        );
        assert_eq!(
            document_name(b"<oa:ProcessContact xmlns:oa='x'/>").as_deref(),
            Some("Process.Contact")
        );
        assert_eq!(document_name(b"not xml"), None);
        assert_eq!(document_name(b"<html>"), None);
    }

    #[test]
    fn overlong_short_strings_are_errors_not_panics() {
        assert!(short(&"x".repeat(256)).is_err());
        assert!(short("bodflow.in").is_ok());
    }

    #[test]
    fn a_derived_id_longer_than_a_short_string_is_cut_and_stays_distinct() {
        let fits = "é".repeat(127);
        assert_eq!(short_id(&fits).as_str(), fits);
        let long = |tail: &str| format!("link:lid://{}|{tail}", "é".repeat(150));
        let (a, b) = (short_id(&long("A")), short_id(&long("B")));
        assert!(a.as_str().len() <= 255 && b.as_str().len() <= 255);
        assert_ne!(a, b);
        assert_eq!(a, short_id(&long("A")));
        assert!(long("A").starts_with(a.as_str().split('~').next().unwrap()));
    }
}
