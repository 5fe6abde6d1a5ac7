//! Dead-letter copies: a delivery as it came — payload, routing key, properties — published
//! to `bodflow.dlx` with headers `x-bodflow-stage`, `x-bodflow-code`, `x-bodflow-reason` (and
//! `x-bodflow-path` when the rejection names one).
//!
//! A rejected delivery's copy is an outbox row ([`crate::store::DeadLetterRow`]), written in
//! the transaction that records the rejection and published by the outbox publisher like any
//! row; its properties are stored as [`encode`] writes them. A delivery the store could not
//! commit at all (`retries_exhausted`) has no transaction to go in: the consumer publishes
//! its copy itself.

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};

use super::{put_header, short, topology, Error, FrameLimit};

/// Reasons (and paths) longer than this are cut in the headers.
pub(super) const MAX_REASON: usize = 1024;

/// Why a delivery goes to `bodflow.dead`.
pub(super) struct Why<'a> {
    pub stage: &'a str,
    pub code: &'a str,
    pub reason: &'a str,
    /// The XML path the rejection names, if any.
    pub path: Option<&'a str>,
}

/// The delivery's properties as the store keeps them for its copy.
pub(crate) fn encode(properties: &BasicProperties) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    postcard::to_stdvec(properties).unwrap_or_default()
}

/// A delivery's properties as its dead-letter copy keeps them: without a sender's own
/// [`super::dlq::NOUN_HEADER`] when the delivery was not a deliberate retry. The consumer ran
/// the whole document, and a replay of the copy must too.
pub(crate) fn as_sent(p: &BasicProperties) -> std::borrow::Cow<'_, BasicProperties> {
    let headers = p.headers().as_ref();
    let foreign = headers.is_some_and(|h| h.inner().contains_key(super::dlq::NOUN_HEADER))
        && !super::dlq::is_retry(headers);
    if !foreign {
        return std::borrow::Cow::Borrowed(p);
    }
    let kept = headers_without(p, super::dlq::NOUN_HEADER);
    std::borrow::Cow::Owned(p.clone().with_headers(kept))
}

/// The headers of `p` but `name`.
fn headers_without(p: &BasicProperties, name: &str) -> FieldTable {
    p.headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.as_str() != name)
        .collect::<std::collections::BTreeMap<_, _>>()
        .into()
}

/// What a parked document's delivery is rebuilt as, for its copy should its release reject it
/// (its parked row is its only copy): a parked row keeps the bytes, the message id, the
/// envelope (`correlation_id`, ION headers) and the `reply_to`, not the delivery's routing key
/// or its other properties. An empty routing key is routed by `bodflow dlq replay` as a
/// delivery without one. The row of one noun names it in [`super::dlq::NOUN_HEADER`], so that
/// a replay runs that noun only.
pub(crate) fn parked_delivery(
    message_id: &str,
    envelope: &crate::store::Envelope,
    reply_to: Option<&str>,
    payload: &[u8],
    noun: Option<&str>,
) -> crate::store::Delivered {
    let mut headers = FieldTable::default();
    if let Some(name) = super::document_name(payload) {
        put_header(&mut headers, "documentName", &name);
    }
    if let Some(noun) = noun {
        put_header(&mut headers, super::dlq::NOUN_HEADER, noun);
    }
    for (name, value) in [
        ("fromLogicalId", &envelope.from_logical_id),
        ("toLogicalId", &envelope.to_logical_id),
        ("tenantId", &envelope.tenant_id),
        ("variationId", &envelope.variation_id),
    ] {
        if let Some(value) = value {
            put_header(&mut headers, name, value);
        }
    }
    let mut properties = BasicProperties::default()
        .with_content_type("application/xml".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    // Both came in a delivery's properties, so they fit in them again.
    if let Ok(id) = short(message_id) {
        properties = properties.with_message_id(id);
    }
    if let Some(Ok(id)) = envelope.correlation_id.as_deref().map(short) {
        properties = properties.with_correlation_id(id);
    }
    if let Some(Ok(queue)) = reply_to.map(short) {
        properties = properties.with_reply_to(queue);
    }
    crate::store::Delivered {
        routing_key: String::new(),
        properties: encode(&properties),
        payload: payload.to_vec(),
    }
}

/// Properties written by [`encode`]; a row the store could not keep intact gets none (its
/// copy still carries the payload and our headers).
pub(super) fn decode(bytes: &[u8]) -> BasicProperties {
    postcard::from_bytes(bytes).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "A dead-letter row's properties could not be read; the copy goes without them");
        BasicProperties::default()
    })
}

/// The copy's properties: the delivery's, persistent, with its headers plus ours.
pub(super) fn properties(original: &BasicProperties, why: &Why<'_>) -> BasicProperties {
    // The delivery's own headers, without a path it may carry from an earlier dead-lettering.
    let mut headers = headers_without(original, super::dlq::PATH_HEADER);
    let cut = |s: &str| s.chars().take(MAX_REASON).collect::<String>();
    put_header(&mut headers, "x-bodflow-stage", why.stage);
    put_header(&mut headers, "x-bodflow-code", why.code);
    put_header(&mut headers, "x-bodflow-reason", &cut(why.reason));
    if let Some(path) = why.path {
        put_header(&mut headers, super::dlq::PATH_HEADER, &cut(path));
    }
    kept(original).with_headers(headers).with_delivery_mode(2)
}

/// The properties a copy keeps (a dead-letter copy, and a replay of one): all but
/// `expiration` (the copy would expire in `bodflow.dead`, which has no dead-letter exchange,
/// and a replay again on its way) and `user_id` (RabbitMQ refuses a publish whose user is not
/// the connection's: a message the broker dead-lettered keeps its sender's).
pub(super) fn kept(p: &BasicProperties) -> BasicProperties {
    let mut out = BasicProperties::default();
    macro_rules! copy {
        ($($get:ident => $with:ident),*) => {
            $(if let Some(v) = p.$get().clone() {
                out = out.$with(v);
            })*
        };
    }
    copy!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        headers => with_headers,
        delivery_mode => with_delivery_mode,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        app_id => with_app_id,
        cluster_id => with_cluster_id
    );
    out
}

/// The headers a copy keeps when the sender's do not fit, less and less of them until it
/// does: ours and ION's, then ours, then the stage and code alone.
const KEPT_HEADERS: [&[&str]; 3] = [
    &[
        "x-bodflow-stage",
        "x-bodflow-code",
        "x-bodflow-reason",
        super::dlq::PATH_HEADER,
        "documentName",
        "fromLogicalId",
        "toLogicalId",
        "tenantId",
        "variationId",
    ],
    &[
        "x-bodflow-stage",
        "x-bodflow-code",
        "x-bodflow-reason",
        super::dlq::PATH_HEADER,
    ],
    &["x-bodflow-stage", "x-bodflow-code"],
];

/// Header naming why a copy's headers were left out ([`fit`]).
pub(super) const HEADERS_DROPPED: &str = "x-bodflow-headers-dropped";

/// The copy's properties as they fit in one frame of `limit`. A copy carries the sender's
/// headers and ours, so it can outgrow the frame its delivery came in; the broker would close
/// the connection over it (and again for the same row after every reconnect). When a larger
/// frame can be asked for, the session ends with [`Error::FrameTooSmall`] and the next one
/// asks for it; else headers are left out ([`KEPT_HEADERS`], noted in
/// `x-bodflow-headers-dropped`) rather than lose the copy. The stage and code with the other
/// properties (short strings, 2.6 KiB at most) fit any frame AMQP allows (4 KiB at least).
pub(super) fn fit(
    properties: BasicProperties,
    limit: FrameLimit,
) -> Result<BasicProperties, Error> {
    let needed = header_frame_len(&properties);
    if needed <= limit.max {
        return Ok(properties);
    }
    if limit.can_grow {
        return Err(Error::FrameTooSmall(needed));
    }
    let all = properties.headers().clone().unwrap_or_default();
    let mut fitted = properties;
    for keep in KEPT_HEADERS {
        let mut headers: FieldTable = all
            .inner()
            .iter()
            .filter(|(k, _)| keep.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into();
        put_header(
            &mut headers,
            HEADERS_DROPPED,
            &format!(
                "the headers needed a {needed}-byte frame; frame_max is {}",
                limit.max
            ),
        );
        fitted = fitted.with_headers(headers);
        if header_frame_len(&fitted) <= limit.max {
            break;
        }
    }
    tracing::warn!(
        needed,
        frame_max = limit.max,
        "A dead-letter copy's headers do not fit a frame: the sender's own headers are left out"
    );
    Ok(fitted)
}

/// At least the bytes of the content header frame that carries `p` (AMQP 0-9-1 §4.2.6):
/// frame and class overhead, each short string property, the headers table.
fn header_frame_len(p: &BasicProperties) -> usize {
    let shorts = [
        p.content_type(),
        p.content_encoding(),
        p.correlation_id(),
        p.reply_to(),
        p.expiration(),
        p.message_id(),
        p.kind(),
        p.user_id(),
        p.app_id(),
        p.cluster_id(),
    ];
    let strings: usize = shorts
        .iter()
        .map(|s| s.as_ref().map_or(0, |s| 1 + s.as_str().len()))
        .sum();
    64 + strings + p.headers().as_ref().map_or(0, table_len)
}

fn table_len(table: &FieldTable) -> usize {
    4 + table
        .inner()
        .iter()
        .map(|(k, v)| 1 + k.as_str().len() + value_len(v))
        .sum::<usize>()
}

fn value_len(v: &AMQPValue) -> usize {
    1 + match v {
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::LongString(s) => 4 + s.len(),
        AMQPValue::ByteArray(b) => 4 + b.as_slice().len(),
        AMQPValue::FieldArray(a) => 4 + a.as_slice().iter().map(value_len).sum::<usize>(),
        AMQPValue::FieldTable(t) => table_len(t),
        // Scalars: at most 9 bytes (a decimal is 5, a long long or timestamp 8).
        _ => 9,
    }
}

/// Publishes a copy to `bodflow.dlx` (mandatory: `bodflow.dead` missing is a return), fitted
/// to the connection's frames ([`fit`]); the caller awaits the confirm.
pub(super) async fn publish(
    channel: &Channel,
    limit: FrameLimit,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<lapin::PublisherConfirm, Error> {
    let properties = fit(properties, limit)?;
    Ok(channel
        .basic_publish(
            short(topology::DLX)?,
            short(routing_key)?,
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            payload,
            properties,
        )
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldArray};

    #[test]
    fn a_parked_delivery_is_rebuilt_with_its_message_id_and_envelope() {
        let envelope = crate::store::Envelope {
            correlation_id: Some("c-1".into()),
            from_logical_id: Some("lid://ln".into()),
            tenant_id: Some("ACME".into()),
            variation_id: Some("7".into()),
            ..Default::default()
        };
        let d = parked_delivery("m-1", &envelope, Some("amq.gen-reply"), b"<x/>", None);
        assert_eq!(
            (d.routing_key.as_str(), d.payload.as_slice()),
            ("", b"<x/>".as_slice())
        );
        let p = decode(&d.properties);
        assert_eq!(p.message_id().as_ref().map(|m| m.as_str()), Some("m-1"));
        assert_eq!(p.correlation_id().as_ref().map(|m| m.as_str()), Some("c-1"));
        assert_eq!(
            p.reply_to().as_ref().map(|m| m.as_str()),
            Some("amq.gen-reply")
        );
        assert_eq!(p.delivery_mode(), &Some(2));
        let headers = p.headers().as_ref().unwrap().inner();
        let header = |name: &str| match headers.get(name) {
            Some(AMQPValue::LongString(v)) => Some(v.to_string()),
            _ => None,
        };
        assert_eq!(header("fromLogicalId").as_deref(), Some("lid://ln"));
        assert_eq!(header("tenantId").as_deref(), Some("ACME"));
        assert_eq!(header("variationId").as_deref(), Some("7"));
        assert_eq!(header("toLogicalId"), None);
        assert_eq!(
            header(super::super::dlq::NOUN_HEADER),
            None,
            "a whole document's row"
        );
        let noun = "SyncCustomerPartyMaster/DataArea/CustomerPartyMaster[2]";
        let d = parked_delivery(
            "m-1",
            &envelope,
            None,
            b"<SyncCustomerPartyMaster/>",
            Some(noun),
        );
        let p = decode(&d.properties);
        assert_eq!(p.reply_to(), &None);
        let headers = p.headers().as_ref().unwrap().inner();
        assert_eq!(
            headers.get("documentName"),
            Some(&AMQPValue::LongString("Sync.CustomerPartyMaster".into()))
        );
        assert_eq!(
            headers.get(super::super::dlq::NOUN_HEADER),
            Some(&AMQPValue::LongString(noun.into())),
            "a noun's row names its noun"
        );
        // A sender's own header is not kept on its delivery's copy; a replay's is.
        let with = |retry: bool| {
            let mut h = FieldTable::default();
            h.insert(
                super::super::dlq::NOUN_HEADER.into(),
                AMQPValue::LongString(noun.into()),
            );
            if retry {
                h.insert(
                    super::super::dlq::RETRY_HEADER.into(),
                    AMQPValue::Boolean(true),
                );
            }
            BasicProperties::default().with_headers(h)
        };
        let kept = |p: &BasicProperties| {
            as_sent(p)
                .headers()
                .as_ref()
                .is_some_and(|h| h.inner().contains_key(super::super::dlq::NOUN_HEADER))
        };
        assert!(!kept(&with(false)));
        assert!(kept(&with(true)));
    }

    fn sent() -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            "documentName".into(),
            AMQPValue::LongString("Sync.X".into()),
        );
        headers.insert(
            "x-bodflow-path".into(),
            AMQPValue::LongString("/old".into()),
        );
        headers.insert("n".into(), AMQPValue::LongLongInt(-7));
        headers.insert("f".into(), AMQPValue::Double(f64::NAN));
        headers.insert("b".into(), AMQPValue::Boolean(true));
        headers.insert(
            "a".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::ShortInt(3)])),
        );
        headers.insert(
            "bytes".into(),
            AMQPValue::ByteArray(vec![0, 255, 10].into()),
        );
        BasicProperties::default()
            .with_content_type("application/xml".into())
            .with_message_id("m-1".into())
            .with_correlation_id("c-1".into())
            .with_reply_to("replies".into())
            .with_expiration("60000".into())
            .with_priority(3)
            .with_timestamp(1_700_000_000)
            .with_type("SyncCustomerPartyMaster".into())
            .with_app_id("ln".into())
            .with_user_id("ln-publisher".into())
            .with_headers(headers)
    }

    #[test]
    fn stored_properties_read_back_as_they_were() {
        let sent = sent();
        let back = decode(&encode(&sent));
        // NaN is not equal to itself: compare the rest, and that one by its bits.
        let nan = |p: &BasicProperties| match p.headers().as_ref().unwrap().inner().get("f") {
            Some(AMQPValue::Double(f)) => f.to_bits(),
            other => panic!("{other:?}"),
        };
        assert_eq!(nan(&back), nan(&sent));
        let without_nan = |p: &BasicProperties| {
            let mut h = p.headers().clone().unwrap();
            h.insert("f".into(), AMQPValue::Void);
            p.clone().with_headers(h)
        };
        assert_eq!(without_nan(&back), without_nan(&sent));
        assert_eq!(
            decode(b"\xff\xff not properties"),
            BasicProperties::default()
        );
    }

    #[test]
    fn a_copy_that_outgrows_the_frame_asks_for_larger_ones_else_leaves_the_senders_headers_out() {
        let mut headers = FieldTable::default();
        headers.insert(
            "note".into(),
            AMQPValue::LongString("x".repeat(40_000).into()),
        );
        headers.insert(
            "documentName".into(),
            AMQPValue::LongString("Sync.X".into()),
        );
        let why = Why {
            stage: "validate",
            code: "missing_field",
            reason: "Name: required",
            path: None,
        };
        let copy = properties(&sent().with_headers(headers), &why);
        let needed = header_frame_len(&copy);
        assert!(needed > 40_000 && needed < 41_000, "{needed}");
        let small = |can_grow| FrameLimit {
            max: 32 * 1024,
            can_grow,
        };
        assert_eq!(
            fit(
                copy.clone(),
                FrameLimit {
                    max: 128 * 1024,
                    can_grow: true
                }
            )
            .unwrap(),
            copy
        );
        assert!(
            matches!(fit(copy.clone(), small(true)), Err(Error::FrameTooSmall(n)) if n == needed)
        );
        let trimmed = fit(copy.clone(), small(false)).unwrap();
        assert!(header_frame_len(&trimmed) < 32 * 1024);
        let names: Vec<&str> = trimmed
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "documentName",
                "x-bodflow-code",
                "x-bodflow-headers-dropped",
                "x-bodflow-reason",
                "x-bodflow-stage"
            ]
        );
        assert_eq!(trimmed.message_id(), copy.message_id());

        // A large ION header goes too; ours stay.
        let mut headers = FieldTable::default();
        headers.insert(
            "tenantId".into(),
            AMQPValue::LongString("t".repeat(40_000).into()),
        );
        let copy = properties(&sent().with_headers(headers), &why);
        let trimmed = fit(copy, small(false)).unwrap();
        assert!(header_frame_len(&trimmed) < 32 * 1024);
        let headers = trimmed.headers().as_ref().unwrap().inner();
        assert!(headers.get("tenantId").is_none());
        assert!(headers.get("x-bodflow-reason").is_some());
    }

    #[test]
    fn a_copy_keeps_the_properties_but_the_expiration_and_user_and_adds_why() {
        let sent = sent();
        let copy = properties(
            &sent,
            &Why {
                stage: "validate",
                code: "missing_field",
                reason: &"r".repeat(5000),
                path: Some("/SyncX/DataArea"),
            },
        );
        assert_eq!(copy.expiration(), &None);
        assert_eq!(copy.user_id(), &None);
        assert_eq!(copy.delivery_mode(), &Some(2));
        let headers = copy.headers().as_ref().unwrap().inner();
        let text = |name: &str| match headers.get(name) {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(text("x-bodflow-stage"), "validate");
        assert_eq!(text("x-bodflow-code"), "missing_field");
        assert_eq!(text("x-bodflow-reason").len(), MAX_REASON);
        assert_eq!(text("x-bodflow-path"), "/SyncX/DataArea");
        assert_eq!(text("documentName"), "Sync.X");
        assert!(matches!(headers.get("n"), Some(AMQPValue::LongLongInt(-7))));
        assert_eq!(copy.message_id(), sent.message_id());
        assert_eq!(copy.reply_to(), sent.reply_to());
    }
}
