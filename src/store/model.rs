//! What the hub store holds: golden records with their cross-references, the message-id
//! markers, outbox rows and parked documents. Serialized as JSON so a store stays readable
//! with `bodflow records --json` and new optional fields do not break old stores.

use serde::{Deserialize, Serialize};

use crate::bod::NameValue;

/// Account or contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Account,
    Contact,
}

impl Kind {
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Account => "CustomerPartyMaster",
            Kind::Contact => "ContactMaster",
        }
    }

    pub fn from_noun(noun: &str) -> Option<Kind> {
        match noun {
            "CustomerPartyMaster" => Some(Kind::Account),
            "ContactMaster" => Some(Kind::Contact),
            _ => None,
        }
    }

    /// Hub ID prefix: `ACC-000042`, `CON-000007`.
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Account => "ACC",
            Kind::Contact => "CON",
        }
    }
}

/// One application's key for a record: (logical ID, accounting entity, application ID).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct XrefKey {
    pub kind: Kind,
    /// The configured application's logical ID (not a sender's `/suffix` variant).
    pub application: String,
    #[serde(default)]
    pub accounting_entity: String,
    pub id: String,
}

impl XrefKey {
    /// Readable form for messages and tracking: `lid://a|3555|C1`.
    pub fn display(&self) -> String {
        if self.accounting_entity.is_empty() {
            format!("{}|{}", self.application, self.id)
        } else {
            format!(
                "{}|{}|{}",
                self.application, self.accounting_entity, self.id
            )
        }
    }
}

/// A cross-reference as kept on the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xref {
    pub application: String,
    #[serde(default)]
    pub accounting_entity: String,
    pub id: String,
    /// Last applied variationID ("" when the sender sends none).
    #[serde(default)]
    pub variation: String,
}

impl Xref {
    pub fn key(&self, kind: Kind) -> XrefKey {
        XrefKey {
            kind,
            application: self.application.clone(),
            accounting_entity: self.accounting_entity.clone(),
            id: self.id.clone(),
        }
    }
}

/// Names, numbers and status: field group `identity`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Contacts: how the person relates to their account (`employee` for contacts imported
    /// from an application that stamps a classification); `ContactMaster/@type` in BODs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relationship: Option<String>,
}

/// Field group `address`; the country is always ISO 3166-1 alpha-2 in the hub.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubAddress {
    /// `AttentionOfName`: the person or department the post is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdivision: Option<String>,
    /// `CountrySubDivision2Code` (county), below `subdivision` (state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdivision2: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

/// A phone-like channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phone {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_code: Option<String>,
    pub number: String,
}

/// Field group `communication`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Communication {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phones: Vec<Phone>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emails: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<String>,
}

/// Field group `commercial`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commercial {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_term: Option<String>,
    /// Accounts: their type (`Customer`, `Prospect`, ...), as the senders' `@role` or
    /// account-type classification carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_type: Option<String>,
}

/// Field group `owner`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_manager: Option<String>,
}

/// The content an application may send, grouped by field group so mastership and outbound
/// field selection work group by group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fields {
    #[serde(default)]
    pub identity: Identity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<HubAddress>,
    #[serde(default)]
    pub communication: Communication,
    #[serde(default)]
    pub commercial: Commercial,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classification: Vec<String>,
    /// The sender's `UserArea` content, kept on the record (never interpreted, and not sent to
    /// other applications: it holds the sender's private extensions); merged by name, at most
    /// [`crate::bod::read::MAX_USER_AREA_VALUES`] (the upsert stage drops the oldest names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_area: Vec<NameValue>,
}

impl Fields {
    /// The bytes of its UserArea values: what may make a record large (the other fields are a
    /// few hundred bytes).
    pub fn user_area_bytes(&self) -> usize {
        self.user_area.iter().map(NameValue::size).sum()
    }
}

/// A golden record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubRecord {
    pub id: String,
    pub kind: Kind,
    #[serde(default)]
    pub deleted: bool,
    /// Created by bodflow as an application's `default_account`, not by a sender.
    #[serde(default)]
    pub placeholder: bool,
    pub fields: Fields,
    #[serde(default)]
    pub owner: Owner,
    /// Contact → its account's hub ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Contact whose account was unknown on arrival: the account it names, re-linked when
    /// that account arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intended_parent: Option<XrefKey>,
    pub xrefs: Vec<Xref>,
    /// Applications an operator unlinked from this record (`bodflow unlink`): they receive no
    /// outbound Syncs for it until it is linked to them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unlinked: Vec<String>,
    /// Accounts: where their promotion to the system of record stands (`[hub.promotion]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<PromotionState>,
    /// Logical ID of the application whose document created it (empty for placeholders).
    #[serde(default)]
    pub created_by: String,
    /// Incremented on every applied change.
    pub revision: u64,
}

impl HubRecord {
    pub fn xref_for(&self, application: &str) -> Option<&Xref> {
        self.xrefs.iter().find(|x| x.application == application)
    }

    /// The values this record is findable by, per match key.
    pub fn match_values(&self) -> [(crate::config::MatchKey, Option<&str>); 3] {
        use crate::config::MatchKey;
        let f = &self.fields;
        [
            (
                MatchKey::AccountNumber,
                f.identity.account_number.as_deref(),
            ),
            (
                MatchKey::ExternalNumber,
                f.identity.external_number.as_deref(),
            ),
            (
                MatchKey::Email,
                f.communication.emails.first().map(String::as_str),
            ),
        ]
    }

    /// Display name for lists: name, else given + family name.
    pub fn display_name(&self) -> String {
        let id = &self.fields.identity;
        if let Some(n) = &id.name {
            return n.clone();
        }
        [id.given_name.as_deref(), id.family_name.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What became of a message id; written with the change it caused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bod_id: Option<String>,
    /// Where this message's tracked runs are, oldest first (see [`super::track`]); empty when
    /// tracking was off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracked: Vec<super::track::TrackAt>,
    /// Which run of the message id wrote it: 0 the first, n the nth deliberate retry (a
    /// release from parking, a dead-letter replay). A retry's BODIDs derive from it, so that
    /// every run's outputs have BODIDs of their own.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub run: u32,
    /// The nouns of this message's document (their paths) that wait in parked rows of their
    /// own ([`Parked::noun`]): the release of such a row runs while its noun is listed here,
    /// and takes it off. A row whose noun is no longer listed is stale — its noun was
    /// released already, by another row of the same noun (a retry parks the document again)
    /// or by a release that read the row before — and its release is a duplicate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parked: Vec<String>,
    /// The nouns (their paths) whose parked rows a release refused and dead-lettered with
    /// `x-bodflow-noun`: a replay of such a dead letter runs that noun even after other nouns
    /// of the document were applied since (which made the marker's outcome `applied`), and
    /// takes it off once it ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// The token of the dead-letter replay whose run wrote it ([`Envelope::retry`]): the same
    /// replay delivered again is a duplicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<String>,
    /// When it was last written (milliseconds since the Unix epoch; set by
    /// [`super::Tx::put_marker`]): the dedup window runs from here ([`super::expire`]).
    /// `None` in markers of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
impl Parked {
    /// A parked row of `message_id` with a small payload (for store tests).
    pub(crate) fn for_test(message_id: &str, reason: ParkReason, key: Option<XrefKey>) -> Parked {
        Parked {
            seq: 0,
            message_id: message_id.into(),
            reason,
            application: "lid://erp".into(),
            key,
            source: "s".into(),
            payload: "<x/>".into(),
            payload_ref: None,
            envelope: Default::default(),
            reply_to: None,
            match_values: Vec::new(),
            noun: None,
        }
    }
}

#[cfg(test)]
impl Marker {
    /// An `applied` marker with nothing else in it (for store tests).
    pub(crate) fn applied() -> Marker {
        Marker {
            retry: None,
            outcome: "applied".into(),
            record: None,
            bod_id: None,
            tracked: Vec::new(),
            run: 0,
            parked: Vec::new(),
            refused: Vec::new(),
            at: None,
        }
    }
}

/// A document to publish, written in the same transaction as the change that caused it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRow {
    /// Root name of the emitted BOD (`SyncCustomerPartyMaster`, `ConfirmBOD`).
    pub kind: String,
    /// Receiving application's logical ID (the routing key on `bodflow.out`).
    pub to: String,
    /// Explicit reply destination from the inbound `reply_to` (a queue), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Its BODID, also the AMQP `message_id`.
    pub bod_id: String,
    /// The inbound message id it answers (AMQP `correlation_id`, and the key of its
    /// timeline).
    pub correlation_id: String,
    /// A reply to an RPC request (one with `reply_to` and its own `correlation_id`): the AMQP
    /// `correlation_id` to send instead, the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_correlation_id: Option<String>,
    /// ION `documentName` (`Sync.CustomerPartyMaster`).
    pub document_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// W3C `traceparent` of the processing that emitted it (same trace as the inbound
    /// delivery, bodflow's span as parent), published as the `traceparent` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// W3C `tracestate` of the inbound delivery, passed on unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// Where its output is on the timeline of the run that emitted it (set by
    /// [`super::Tx::push_outbox`] while a run is tracked): the publisher notes its confirm
    /// there without looking the message up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracked: Option<super::track::OutputAt>,
    /// The variationID of the noun it carries (a Sync's or Process's record revision), sent
    /// as the ION header `variationId`; replies have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variation: Option<String>,
    pub xml: String,
    /// Set on a row that dead-letters a delivery rather than carrying a BOD of ours: the
    /// delivery as it came, published to `bodflow.dlx` with headers naming why (`xml` is
    /// empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<Box<DeadLetterRow>>,
}

/// A delivery as it came off the broker, kept with its document so that a rejection can
/// dead-letter it through the outbox, in the transaction that records the rejection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    pub routing_key: String,
    /// Its AMQP properties, encoded by the AMQP side ([`crate::amqp`]); opaque to the store.
    pub properties: Vec<u8>,
    pub payload: Vec<u8>,
}

/// What an outbox row that dead-letters a delivery holds: the delivery, and the rejection
/// its `x-bodflow-*` headers name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterRow {
    pub delivered: Delivered,
    pub stage: String,
    pub code: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[cfg(test)]
impl OutboxRow {
    /// A ConfirmBOD `<x/>` with BODID `bod_id` to `to`, answering `correlation_id` (for
    /// tests).
    pub(crate) fn confirm(bod_id: &str, to: &str, correlation_id: &str) -> OutboxRow {
        OutboxRow {
            kind: "ConfirmBOD".into(),
            to: to.into(),
            reply_to: None,
            bod_id: bod_id.into(),
            correlation_id: correlation_id.into(),
            reply_correlation_id: None,
            document_name: "Confirm.BOD".into(),
            tenant: None,
            traceparent: None,
            tracestate: None,
            tracked: None,
            variation: None,
            xml: "<x/>".into(),
            dead_letter: None,
        }
    }
}

/// Why a document is parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParkReason {
    /// Its application is inactive; released on re-activation.
    InactiveApplication,
    /// `match_only` found no record to link to.
    NoMatch,
    /// More than one hub record matches its keys.
    AmbiguousMatch,
    /// `manual` policy: an operator links it.
    ManualLink,
}

impl ParkReason {
    pub fn code(self) -> &'static str {
        match self {
            ParkReason::InactiveApplication => "inactive_application",
            ParkReason::NoMatch => "no_match",
            ParkReason::AmbiguousMatch => "ambiguous_match",
            ParkReason::ManualLink => "manual_link",
        }
    }
}

/// What the transport says about a delivered document beside its bytes (DESIGN §5.3): the
/// AMQP `correlation_id` and ION's envelope headers. Empty for files. Kept with a parked
/// document, so that its release reads it as it was delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_logical_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_logical_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variation_id: Option<String>,
    /// The token of the dead-letter replay this delivery is (`x-bodflow-retry`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<String>,
    /// The one noun (its XML path) a deliberate retry runs (`x-bodflow-noun`): the dead letter
    /// of a parked noun's row whose release was refused. Only read with [`Self::retry`]'s
    /// header (`crate::pipeline::Input::retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noun: Option<String>,
}

impl Envelope {
    pub fn is_empty(&self) -> bool {
        *self == Envelope::default()
    }
}

/// A hard-deleted record's cross-reference, kept so that the variationID guard still works
/// for its key: a document older than the delete (out of order, or replayed from the
/// dead-letter queue) would otherwise find no record and create it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The hub ID the key had.
    pub record: String,
    /// The last variationID applied for the key (the delete's, when it carried one).
    pub variation: String,
    /// When the delete came (milliseconds since the Unix epoch): the service removes the
    /// tombstone `hub.tombstone_retention` later. A tombstone of an earlier version gets the
    /// time the store is first opened by this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<u64>,
}

/// A document's bytes, kept exactly. Stored as text when they are UTF-8 (nearly every
/// document), else as `{"hex": …}`: a sender's iso-8859-1 document must come back as the same
/// bytes, since its declaration decodes them again (a lossy UTF-8 copy would turn `ü` into
/// `ï¿½`, and a UTF-16 one would not parse at all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload(pub Vec<u8>);

impl Payload {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Payload {
    fn from(text: &str) -> Payload {
        Payload(text.as_bytes().to_vec())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum StoredPayload<'a> {
    Text(std::borrow::Cow<'a, str>),
    Hex { hex: String },
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => StoredPayload::Text(text.into()),
            Err(_) => StoredPayload::Hex {
                hex: self.0.iter().map(|b| format!("{b:02x}")).collect(),
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        match StoredPayload::deserialize(d)? {
            StoredPayload::Text(text) => Ok(Payload(text.into_owned().into_bytes())),
            StoredPayload::Hex { hex } => {
                let digits = hex.as_bytes();
                if digits.len() % 2 != 0 {
                    return Err(serde::de::Error::custom("odd number of hex digits"));
                }
                digits
                    .chunks(2)
                    .map(|pair| {
                        std::str::from_utf8(pair)
                            .ok()
                            .and_then(|p| u8::from_str_radix(p, 16).ok())
                            .ok_or_else(|| serde::de::Error::custom("not hex"))
                    })
                    .collect::<Result<Vec<u8>, D::Error>>()
                    .map(Payload)
            }
        }
    }
}

/// A parked document: kept whole so releasing it re-runs the very same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    pub seq: u64,
    pub message_id: String,
    pub reason: ParkReason,
    pub application: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<XrefKey>,
    pub source: String,
    /// The document's bytes. Stored once per document ([`Self::payload_ref`]) however many of
    /// its nouns park: a row holds it inline only when an earlier version wrote it.
    #[serde(default, skip_serializing_if = "Payload::is_empty")]
    pub payload: Payload,
    /// Where the store keeps [`Self::payload`]: the BLAKE3 digest of the bytes (hex), the key
    /// of one copy that every row of the same bytes shares. Filled in by the store; a row
    /// without it (an earlier version's) holds its payload inline. A version before this
    /// field finds no `payload` in such a row and leaves it parked as unreadable, never
    /// releasing an empty document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_ref: Option<String>,
    /// The delivery's envelope (its ION headers).
    #[serde(default, skip_serializing_if = "Envelope::is_empty")]
    pub envelope: Envelope,
    /// The delivery's AMQP `reply_to`: a released document's replies go there, as they would
    /// have when it came (rows of versions before 2026-11-24 have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// `no_match` documents: the values they match on (the sender's `match_on` keys), under
    /// which the store indexes them so a record that comes to carry one releases them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_values: Vec<(crate::config::MatchKey, String)>,
    /// The noun this row waits for (its path in the document), when the upsert of one noun
    /// parked it: its release runs that noun only, as the document's other nouns were
    /// applied, or wait in rows of their own. `None`: the whole document (an inactive
    /// application's, or a row of a version before 2026-11-23).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noun: Option<String>,
}

/// One operator action on a record (`bodflow link` / `unlink`), written in the action's
/// transaction and listed by [`crate::store::Store::audit_for`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// RFC 3339 UTC.
    pub at: String,
    /// Who did it (`--by`, else `$USER`).
    pub operator: String,
    /// `link` or `unlink`.
    pub action: String,
    /// The application's logical ID.
    pub application: String,
    #[serde(default)]
    pub accounting_entity: String,
    /// The application's ID for the record (the IDs removed, for an unlink).
    pub app_id: String,
    /// The hub record.
    pub record: String,
    /// Message ids of the parked documents the action released.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<String>,
}

/// The sync status of a promoted account (CRM's "Awaiting Acknowledgment" → "Promoted").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncStatus {
    /// `ProcessCustomerPartyMaster` sent; no Acknowledge yet. Not promoted again meanwhile.
    AwaitingAcknowledgement,
    /// Accepted (or Modified): the system of record's ID is the record's cross-reference.
    Promoted,
    /// Rejected: promoted again by the next change that still meets the condition.
    PromotionRejected,
}

impl SyncStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncStatus::AwaitingAcknowledgement => "awaiting_acknowledgement",
            SyncStatus::Promoted => "promoted",
            SyncStatus::PromotionRejected => "promotion_rejected",
        }
    }
}

/// A record's promotion: status, to whom, by which Process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionState {
    pub status: SyncStatus,
    /// The system of record's logical ID.
    pub application: String,
    /// BODID of the `ProcessCustomerPartyMaster` bodflow sent.
    pub bod_id: String,
    /// When the status last changed (RFC 3339).
    pub at: String,
    /// Why the system of record rejected it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A Process bodflow sent and expects an `Acknowledge<Noun>` for, keyed by its BODID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Correlation {
    pub kind: Kind,
    /// The hub record it promotes.
    pub record: String,
    /// The application it was sent to (the only one whose Acknowledge correlates).
    pub application: String,
    /// When it was sent (RFC 3339).
    pub sent_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_keep_their_bytes_as_text_or_hex_and_old_text_rows_still_read() {
        for bytes in [
            &b"<A>M\xc3\xbcnchen</A>"[..],
            b"<A>M\xfcnchen</A>",
            b"\xff\xfe<\x00",
            b"",
        ] {
            let json = serde_json::to_string(&Payload(bytes.to_vec())).unwrap();
            assert_eq!(
                json.starts_with('"'),
                std::str::from_utf8(bytes).is_ok(),
                "{json}"
            );
            let back: Payload = serde_json::from_str(&json).unwrap();
            assert_eq!(back.0, bytes);
        }
        let old: Payload = serde_json::from_str(r#""<A/>""#).unwrap();
        assert_eq!(old.0, b"<A/>");
        assert!(serde_json::from_str::<Payload>(r#"{"hex":"abc"}"#).is_err());
        assert!(serde_json::from_str::<Payload>(r#"{"hex":"zz"}"#).is_err());
    }
}
