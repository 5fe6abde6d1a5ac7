//! The BOD document model, its reader and its writers.
//!
//! - [`dom`]: bytes → element tree (limits, DOCTYPE refusal, namespaces, encodings).
//! - [`read`]: element tree → [`Bod`] (envelope, verb header, typed nouns), matching children by
//!   local name so element order and prefixes do not matter.
//! - [`write`]: [`Bod`]-independent writers for `ConfirmBOD`, `Acknowledge<Noun>` and
//!   `Sync<Noun>`/`Process<Noun>`.
//!
//! The model is deliberately lossless where senders are sloppy: values are trimmed, text that
//! repeats per `languageID` is kept per language, unknown `UserArea` content is kept, and
//! unparseable dates keep their raw string.

pub mod dom;
pub mod read;
pub mod write;

use serde::{Deserialize, Serialize};

pub use dom::Limits;

/// Why a document could not be read at all. Codes are stable (replay JSON, DLQ headers,
/// metrics labels).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// `message` names the line and column when the text could be read that far; `path` is
    /// the element the reader was in (`/SyncCustomerPartyMaster/DataArea/…`), if any.
    #[error("document is not well-formed XML: {message}")]
    NotWellFormed {
        message: String,
        position: Option<u64>,
        path: Option<String>,
    },
    #[error(
        "DOCTYPE declarations are not accepted (entity expansion and external fetches are refused)"
    )]
    DoctypeForbidden,
    #[error("document exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// `path` is where the reader was: the open elements at the limit.
    #[error("document nests deeper than {limit} elements")]
    TooDeep { limit: usize, path: Option<String> },
    /// A structural limit other than size and depth (see [`dom`]'s `MAX_*` and the reader's
    /// `UserArea` limit): these bound the work and memory a document of the allowed size can
    /// cost, which would otherwise grow with the square of some counts. `path` is the element
    /// where the limit was crossed.
    #[error("document is too complex: {what}")]
    TooComplex { what: String, path: Option<String> },
    #[error("root element <{root}> is not a BOD: {why}")]
    UnknownRoot { root: String, why: &'static str },
}

impl DecodeError {
    /// The element the reader was in when the document stopped being XML.
    pub fn path(&self) -> Option<&str> {
        match self {
            DecodeError::NotWellFormed { path, .. }
            | DecodeError::TooDeep { path, .. }
            | DecodeError::TooComplex { path, .. } => path.as_deref(),
            _ => None,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::NotWellFormed { .. } => "not_well_formed",
            DecodeError::DoctypeForbidden => "doctype_forbidden",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::TooDeep { .. } => "too_deep",
            DecodeError::TooComplex { .. } => "too_complex",
            DecodeError::UnknownRoot { .. } => "unknown_root",
        }
    }
}

/// One Business Object Document.
#[derive(Debug, Clone, PartialEq)]
pub struct Bod {
    /// Local name of the BOD root (`SyncCustomerPartyMaster`), after unwrapping a SOAP envelope.
    pub root: String,
    /// The verb element's name in the DataArea (`Sync`).
    pub verb: String,
    /// The first noun element's name in the DataArea (`CustomerPartyMaster`); may disagree with
    /// the root (one real sender wraps `WooSalesOrder` in `SyncSalesOrder`).
    pub noun: String,
    pub release_id: Option<String>,
    pub language_code: Option<String>,
    pub area: ApplicationArea,
    pub header: VerbHeader,
    pub nouns: Vec<Noun>,
    /// Values taken from the AMQP envelope because the document left them out.
    pub from_envelope: FromEnvelope,
}

/// Which of a document's values came from the AMQP envelope (ION's headers) rather than from
/// the document, so that a refusal of one says so: the path it names is where the document
/// would have carried it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FromEnvelope {
    /// `Sender/LogicalID`, from `fromLogicalId`.
    pub sender: bool,
    /// `TenantID`, from `tenantId`.
    pub tenant: bool,
}

impl Bod {
    /// `/SyncCustomerPartyMaster`, the prefix of every error path in this document.
    pub fn path(&self) -> String {
        format!("/{}", self.root)
    }
}

/// `ApplicationArea` (also used for `OriginalApplicationArea`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApplicationArea {
    pub logical_id: Option<String>,
    pub component_id: Option<String>,
    pub confirmation_code: Option<String>,
    /// `CreationDateTime` as sent (junk such as `3/3/2021, 6:08 AM` is kept, not refused).
    pub creation: Option<String>,
    pub bod_id: Option<String>,
}

/// The verb element: identification of the tenant/entity and what to do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerbHeader {
    pub tenant_id: Option<String>,
    pub accounting_entity_id: Option<String>,
    pub location_id: Option<String>,
    /// `ActionCriteria/ActionExpression/@actionCode` (Sync/Process).
    pub action_code: Option<String>,
    /// `Process/@acknowledgeCode`.
    pub acknowledge_code: Option<String>,
    /// `OriginalApplicationArea` (Acknowledge/Confirm).
    pub original: Option<ApplicationArea>,
    /// `ResponseCriteria/ResponseExpression/@actionCode` (Accepted | Modified | Rejected).
    pub response_code: Option<String>,
    /// `ResponseCriteria/ChangeStatus/(ReasonCode|Description)` of a Rejected Acknowledge.
    pub response_reason: Option<String>,
}

/// A noun instance in the DataArea.
#[derive(Debug, Clone, PartialEq)]
pub enum Noun {
    Account(Box<Party>),
    Contact(Box<Contact>),
    /// A noun bodflow does not model (its name is kept for the rejection message).
    Other {
        name: String,
        path: String,
    },
}

impl Noun {
    pub fn path(&self) -> &str {
        match self {
            Noun::Account(p) => &p.path,
            Noun::Contact(c) => &c.path,
            Noun::Other { path, .. } => path,
        }
    }
}

/// An `ID` element with its identity attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Id {
    pub value: String,
    pub accounting_entity: Option<String>,
    pub location: Option<String>,
    pub lid: Option<String>,
    /// `variationID` as sent: absent, empty, small, or 13+-digit epoch millis.
    pub variation: Option<String>,
    pub scheme_name: Option<String>,
}

/// Text that may repeat once per `languageID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LangText {
    pub lang: Option<String>,
    pub text: String,
}

/// Picks the text for `language` (case-insensitive), else one without a language, else the
/// first. This is CRM's documented XPath rule, made configurable.
pub fn pick_language<'a>(texts: &'a [LangText], language: &str) -> Option<&'a str> {
    pick_language_at(texts, language).map(|i| texts[i].text.as_str())
}

/// The position in `texts` of what [`pick_language`] picks.
pub fn pick_language_at(texts: &[LangText], language: &str) -> Option<usize> {
    texts
        .iter()
        .position(|t| {
            t.lang
                .as_deref()
                .is_some_and(|l| l.eq_ignore_ascii_case(language))
        })
        .or_else(|| {
            texts
                .iter()
                .position(|t| t.lang.as_deref().is_none_or(str::is_empty))
        })
        .or_else(|| (!texts.is_empty()).then_some(0))
        .filter(|&i| !texts[i].text.is_empty())
}

/// A postal address (`Location/Address`, `CommunicationDetail/Address`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// `@type`: `Text` or `Discrete` (two views of one location).
    pub kind: Option<String>,
    pub attention: Option<String>,
    /// Non-empty `AddressLine`s in `@sequence` order (gaps are normal).
    pub lines: Vec<String>,
    pub building_number: Option<String>,
    pub building_name: Option<String>,
    pub street_name: Option<String>,
    pub unit: Option<String>,
    pub floor: Option<String>,
    pub post_office_box: Option<String>,
    pub city: Option<String>,
    pub subdivision: Option<String>,
    pub subdivision2: Option<String>,
    /// `CountryCode` as sent, in the sender's format (mapped by the country stage).
    pub country: Option<String>,
    pub postal_code: Option<String>,
    pub preferred: bool,
    /// Its path below the noun (`Location/Address`, `Location[2]/Address`,
    /// `CommunicationDetail/Address`), for the paths of rejections.
    #[serde(skip)]
    pub path: String,
    /// The path step of each of `lines` (`AddressLine`, `AddressLine[3]`).
    #[serde(skip)]
    pub line_steps: Vec<String>,
}

/// A `Communication` (party) or `CommunicationDetail` (contact) entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// `ChannelCode` (`Phone`, `EMail`, `Web Site`, ...), or inferred from the value.
    pub channel: ChannelKind,
    /// `UseCode` (`Office`, `Fax`, `Mobile`, ...).
    pub use_code: Option<String>,
    pub value: String,
    pub preferred: bool,
    /// The element's path below the noun (`Communication[2]`, `CommunicationDetail`), for the
    /// paths of rejections.
    #[serde(skip)]
    pub path: String,
    /// Where `value` was: `DialNumber` or `URI`.
    #[serde(skip)]
    pub value_element: &'static str,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    #[default]
    Phone,
    Email,
    Web,
}

/// `SalesPersonReference`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SalesPerson {
    pub id: Option<String>,
    pub names: Vec<LangText>,
    pub role: Option<String>,
}

/// A `UserArea` value: `Property/NameValue[@name,@type]`, or any other element's text under
/// its path below `UserArea`. Kept, never interpreted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameValue {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub value: String,
}

impl NameValue {
    /// Its bytes: name, type and value.
    pub fn size(&self) -> usize {
        self.name.len() + self.kind.as_ref().map_or(0, String::len) + self.value.len()
    }
}

/// `CustomerPartyMaster`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Party {
    /// XML path of this noun, for error locations.
    pub path: String,
    /// `PartyIDs/ID` (the first is the sender's key; more may carry other schemes).
    pub ids: Vec<Id>,
    /// `AccountIDs/ID` (the non-empty ones).
    pub account_ids: Vec<String>,
    /// The path step of each of `account_ids` below the party (`AccountIDs/ID[2]`).
    pub account_id_steps: Vec<String>,
    pub names: Vec<LangText>,
    pub currency: Option<String>,
    pub status: Option<String>,
    pub payment_term: Option<String>,
    /// `Classification/Codes/Code` values (except the account type's).
    pub classifications: Vec<String>,
    /// The path step of each of `classifications` below the party
    /// (`Classification[2]/Codes/Code`).
    pub classification_steps: Vec<String>,
    /// The account type (Customer, Prospect, ...): `@role` (OAGIS `PartyType/@role`), else a
    /// classification code marked as the account type (`Classification/@type` or
    /// `Code/@listID` / `Code/@name` = `AccountType`).
    pub account_type: Option<String>,
    /// Where `account_type` was read, below the party (`@role`, or a code's path step).
    pub account_type_at: Option<String>,
    pub sales_persons: Vec<SalesPerson>,
    pub addresses: Vec<Address>,
    pub channels: Vec<Channel>,
    pub user_area: Vec<NameValue>,
    pub last_modified: Option<String>,
}

/// `ContactMaster`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Contact {
    pub path: String,
    /// `IDs/ID`.
    pub ids: Vec<Id>,
    pub names: Vec<LangText>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub job_title: Option<String>,
    pub channels: Vec<Channel>,
    pub address: Option<Address>,
    /// `EmployerReference/(DocumentID|PartyIDs|IDs)/ID`: the account this person works for.
    pub employer: Option<Id>,
    /// Which of those it was, below `EmployerReference` (`DocumentID/ID`, ...).
    pub employer_at: &'static str,
    pub classifications: Vec<String>,
    /// The path step of each of `classifications` below the contact.
    pub classification_steps: Vec<String>,
    pub status: Option<String>,
    pub sales_persons: Vec<SalesPerson>,
    pub user_area: Vec<NameValue>,
    /// `@type`: the person's relationship to the account (OAGIS `ContactType/@type`).
    pub relationship: Option<String>,
}

/// Most bytes bodflow echoes of one value a sender sent (in a ConfirmBOD's
/// `OriginalApplicationArea`, say): a value the pipeline refuses may be as long as the document.
pub const MAX_ECHO: usize = 1_024;

/// Most bytes of a rejection's message; it quotes the sender's values.
pub const MAX_MESSAGE: usize = 2_048;

/// `value` cut to at most `max` bytes (at a character boundary, ending in `…`) when longer:
/// what bodflow echoes of a sender's value, so that no value — escaped again in a message,
/// then in XML — makes a reply many times the size of the document.
pub fn clipped(value: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if value.len() <= max {
        return value.into();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end]).into()
}

/// Most characters of a logical ID (`LogicalIDType` in `schemas/common.xsd`).
pub const MAX_LOGICAL_ID: usize = 255;

/// Whether `value` is a logical ID bodflow can write where the schema types it `xs:anyURI`
/// (`LogicalIDType`): an optional scheme (`lid:`), then only letters, digits and `-._~/`, as
/// in `lid://infor.ln.ln01/3555` or `infor.engine.workflow`; at most [`MAX_LOGICAL_ID`]
/// characters. Configured logical IDs must be ([`crate::config`]); a sender's is echoed in a
/// refusal only when it is. What URI parsers accept beyond that (brackets only around an IPv6
/// host, `%` only before two hex digits, one `#`, a numeric port) is deliberately left out.
pub fn is_plain_logical_id(value: &str) -> bool {
    let rest = match value.split_once(':') {
        Some((scheme, rest))
            if scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-')) =>
        {
            rest
        }
        _ => value,
    };
    !rest.is_empty()
        && value.len() <= MAX_LOGICAL_ID
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '/'))
}

/// Reads one document: decode + typed model. The only entry point for untrusted bytes.
pub fn parse(bytes: &[u8], limits: Limits) -> Result<Bod, DecodeError> {
    let text = dom::decode(bytes, limits)?;
    let dom = dom::Dom::parse(&text, limits)?;
    read::read_bod(&dom)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_long_value_is_clipped_at_a_character_boundary() {
        assert_eq!(clipped("abc", 3), "abc");
        assert_eq!(clipped("abcd", 3), "…");
        assert_eq!(clipped("abcdefgh", 6), "abc…");
        // `é` is two bytes: the cut falls before it rather than inside it.
        let cut = clipped("abééé", 6);
        assert_eq!(cut, "ab…");
        assert!(cut.len() <= 6);
        assert!(matches!(
            clipped("short", 100),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    use super::*;

    #[test]
    fn plain_logical_ids_are_what_the_schema_takes() {
        for plain in [
            "lid://infor.ln.ln01",
            "lid://infor.ln.ln01/3555",
            "infor.engine.workflow",
            "infor.workflow.workflow1-bbadbb00-252c-4b90-be31-e6adafff4201",
            "x+y.z-1:a~b_c",
            &format!("lid://{}", "a".repeat(MAX_LOGICAL_ID - 6)),
        ] {
            assert!(is_plain_logical_id(plain), "{plain}");
        }
        // What the fuzzer made senders send (the schema's anyURI refuses them), values a URI
        // parser refuses, and one character too many.
        for odd in [
            "lid://infor.crm.crm]]>01",
            "lid://infor.crm.crm0<LogicalID>lid://nobody</LogicalID>1",
            "lid://a[b",
            "lid://a%zz",
            "a#b#c",
            "lid://a@b:c",
            "lid://a:b",
            ":a",
            "lid:",
            "lid://a b",
            "",
            &format!("lid://{}", "a".repeat(MAX_LOGICAL_ID - 5)),
        ] {
            assert!(!is_plain_logical_id(odd), "{odd}");
        }
    }
}
