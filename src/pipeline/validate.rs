//! Stage 1, validate: is this a document bodflow may apply, from whom, and is it complete?
//!
//! Input: a decoded [`Bod`] and the configuration. Output: a [`Doc`] whose items carry the
//! normalised content in hub terms (fields grouped for mastership, the sender's key, the raw
//! country code for the next stage), or [`Checked::Inactive`] for an inactive sender (parked,
//! not rejected), or a [`ValidationError`] naming code and XML path.
//!
//! Real senders are sloppy (bod-format.md §11): values arrive trimmed from the reader, text is
//! picked per the application's `language_code`, unknown action codes are refused by name.

use crate::bod::{
    self, clipped, pick_language, Address, Bod, Channel, ChannelKind, Id, Noun, MAX_MESSAGE,
};
use crate::config::{Application, Config, MatchKey};
use crate::store::{Commercial, Communication, Fields, HubAddress, Identity, Kind, Phone, XrefKey};

use super::{Decision, Doc, Intent, Item, Rejection, Stage, Verb};

/// Longest accepted identifier (InforOAGIS NormalizedStringBaseType).
pub const MAX_ID: usize = 64;
/// Longest accepted name or text value.
pub const MAX_TEXT: usize = 255;
/// Longest code value (status, currency, use code, classification, subdivision).
pub const MAX_CODE: usize = 64;
/// Longest tenant or accounting entity (InforOAGIS String1BaseType).
pub const MAX_ENTITY: usize = 22;
/// variationID digits (u128 holds 38).
const MAX_VARIATION_DIGITS: usize = 38;
/// Longest BODID, in characters: what a reply repeats of it fits in [`bod::MAX_ECHO`] bytes.
pub const MAX_BOD_ID: usize = bod::MAX_ECHO / 4;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ValidationError {
    #[error("{path}: required")]
    MissingField { path: String },
    #[error("sender {logical_id:?}{via} is not a configured application")]
    UnknownSender {
        logical_id: String,
        path: String,
        /// Where the value came from when not from the document ([`via_header`]).
        via: &'static str,
    },
    #[error("{what} is not supported (bodflow handles Sync, Process and Acknowledge of CustomerPartyMaster and ContactMaster)")]
    UnsupportedDocument { what: String, path: String },
    #[error("{path}: {value:?} is not one of {expected}")]
    InvalidCode {
        path: String,
        value: String,
        expected: &'static str,
    },
    #[error("{path}: longer than {max} characters{}", shared_line(*.shares_with))]
    TooLong {
        path: String,
        max: usize,
        /// What else goes into the address line the value is part of (`max` is what is left
        /// of the line for it).
        shares_with: Option<&'static str>,
    },
    #[error("{path}: {why}")]
    InvalidValue { path: String, why: String },
    #[error("tenant {tenant:?}{via} is not this hub's tenant {expected:?}")]
    WrongTenant {
        tenant: String,
        expected: String,
        path: String,
        via: &'static str,
    },
}

impl ValidationError {
    pub fn code(&self) -> &'static str {
        match self {
            ValidationError::MissingField { .. } => "missing_field",
            ValidationError::UnknownSender { .. } => "unknown_sender",
            ValidationError::UnsupportedDocument { .. } => "unsupported_document",
            ValidationError::InvalidCode { .. } => "invalid_code",
            ValidationError::TooLong { .. } => "too_long",
            ValidationError::InvalidValue { .. } => "invalid_value",
            ValidationError::WrongTenant { .. } => "wrong_tenant",
        }
    }

    pub fn path(&self) -> &str {
        match self {
            ValidationError::MissingField { path }
            | ValidationError::UnknownSender { path, .. }
            | ValidationError::UnsupportedDocument { path, .. }
            | ValidationError::InvalidCode { path, .. }
            | ValidationError::TooLong { path, .. }
            | ValidationError::InvalidValue { path, .. }
            | ValidationError::WrongTenant { path, .. } => path,
        }
    }
}

impl From<ValidationError> for Rejection {
    fn from(e: ValidationError) -> Rejection {
        Rejection {
            stage: Stage::Validate,
            code: e.code(),
            path: Some(e.path().to_string()),
            message: clipped(&e.to_string(), MAX_MESSAGE).into_owned(),
        }
    }
}

/// What validation decided.
#[derive(Debug)]
pub enum Checked {
    Doc(Box<Doc>),
    /// The sender's application is configured but inactive: park the document.
    Inactive {
        app: usize,
    },
}

type Result<T> = std::result::Result<T, ValidationError>;

/// How a refusal names a value taken from an AMQP header because the document left it out
/// (the path it gives is where the document would have carried it).
const SENDER_FROM_HEADER: &str =
    " (from the AMQP header fromLogicalId: the document names no sender)";
const TENANT_FROM_HEADER: &str = " (from the AMQP header tenantId: the document has no TenantID)";

/// `note` when the value came from a header, else nothing.
fn via_header(from_header: bool, note: &'static str) -> &'static str {
    if from_header {
        note
    } else {
        ""
    }
}

fn missing(path: String) -> ValidationError {
    ValidationError::MissingField { path }
}

/// Validates a document against the configuration.
pub fn validate(mut bod: Bod, config: &Config) -> Result<Checked> {
    let root = bod.path();
    let sender_path = format!("{root}/ApplicationArea/Sender/LogicalID");
    let sender = bod
        .area
        .logical_id
        .clone()
        .ok_or_else(|| missing(sender_path.clone()))?;
    let (app_idx, app) =
        config
            .application(&sender)
            .ok_or_else(|| ValidationError::UnknownSender {
                logical_id: sender.clone(),
                path: sender_path,
                via: via_header(bod.from_envelope.sender, SENDER_FROM_HEADER),
            })?;

    let verb = match bod.verb.as_str() {
        "Sync" => Verb::Sync,
        "Process" => Verb::Process,
        "Acknowledge" => Verb::Acknowledge,
        other => {
            return Err(ValidationError::UnsupportedDocument {
                what: format!("verb {other:?}"),
                path: format!("{root}/DataArea/{other}"),
            })
        }
    };
    if bod.nouns.is_empty() {
        return Err(missing(format!("{root}/DataArea/{}", root_noun(&bod))));
    }
    for noun in &bod.nouns {
        if let Noun::Other { name, path } = noun {
            return Err(ValidationError::UnsupportedDocument {
                what: format!("noun {name:?}"),
                path: path.clone(),
            });
        }
    }
    if !app.active {
        return Ok(Checked::Inactive { app: app_idx });
    }

    // The BODID comes back in every reply (`OriginalApplicationArea`), where one over
    // MAX_ECHO bytes would be cut: refused rather than answered with one the sender cannot
    // match (256 characters of up to 4 bytes each; real ones are under 100).
    if let Some(bod_id) = &bod.area.bod_id {
        check_len(bod_id, MAX_BOD_ID, || {
            format!("{root}/ApplicationArea/BODID")
        })?;
    }
    if let Some(code) = &bod.area.confirmation_code {
        if !["Never", "OnError", "Always"].contains(&code.as_str()) {
            return Err(ValidationError::InvalidCode {
                path: format!("{root}/ApplicationArea/Sender/ConfirmationCode"),
                value: code.clone(),
                expected: "Never, OnError, Always",
            });
        }
    }
    let verb_path = format!("{root}/DataArea/{}", bod.verb);
    if let Some(tenant) = &bod.header.tenant_id {
        check_len(tenant, MAX_ENTITY, || format!("{verb_path}/TenantID"))?;
    }
    if let Some(ae) = &bod.header.accounting_entity_id {
        check_len(ae, MAX_ENTITY, || format!("{verb_path}/AccountingEntityID"))?;
    }
    if let (Some(expected), Some(tenant)) = (&config.hub.tenant, &bod.header.tenant_id) {
        if !expected.eq_ignore_ascii_case(tenant) {
            return Err(ValidationError::WrongTenant {
                tenant: tenant.clone(),
                expected: expected.clone(),
                path: format!("{verb_path}/TenantID"),
                via: via_header(bod.from_envelope.tenant, TENANT_FROM_HEADER),
            });
        }
    }

    let mut intent = Intent::Upsert;
    match verb {
        Verb::Sync | Verb::Process => {
            if let Some(code) = &bod.header.action_code {
                match code.to_ascii_lowercase().as_str() {
                    "add" | "change" | "replace" => {}
                    "delete" => intent = Intent::Delete,
                    _ => {
                        return Err(ValidationError::InvalidCode {
                            path: format!(
                                "{verb_path}/ActionCriteria/ActionExpression/@actionCode"
                            ),
                            value: code.clone(),
                            expected: "Add, Change, Replace, Delete",
                        })
                    }
                }
            }
        }
        Verb::Acknowledge => {
            let code = bod.header.response_code.clone().ok_or_else(|| {
                missing(format!(
                    "{verb_path}/ResponseCriteria/ResponseExpression/@actionCode"
                ))
            })?;
            if !["Accepted", "Modified", "Rejected"].contains(&code.as_str()) {
                return Err(ValidationError::InvalidCode {
                    path: format!("{verb_path}/ResponseCriteria/ResponseExpression/@actionCode"),
                    value: code,
                    expected: "Accepted, Modified, Rejected",
                });
            }
            if bod
                .header
                .original
                .as_ref()
                .and_then(|o| o.bod_id.as_ref())
                .is_none()
            {
                return Err(missing(format!(
                    "{verb_path}/OriginalApplicationArea/BODID"
                )));
            }
        }
    }

    let ae = bod.header.accounting_entity_id.clone().unwrap_or_default();
    // The typed nouns are not needed once their items are made (the items carry everything
    // the commit needs): their values move into the items instead of being copied, and what
    // is left of them is freed here, on the preparing thread, not on the committing one.
    let nouns = std::mem::take(&mut bod.nouns);
    let mut items = Vec::with_capacity(nouns.len());
    for noun in nouns {
        items.push(match noun {
            Noun::Account(p) => party_item(*p, app, verb, intent, &ae)?,
            Noun::Contact(c) => contact_item(*c, app, verb, intent, &ae)?,
            Noun::Other { .. } => continue,
        });
    }
    let decision = format!(
        "valid {} of {}{} from {:?} ({})",
        bod.verb,
        noun_counts(&items),
        if intent == Intent::Delete {
            ", actionCode Delete"
        } else {
            ""
        },
        app.name,
        app.logical_id
    );
    Ok(Checked::Doc(Box::new(Doc {
        bod,
        app: app_idx,
        verb,
        items,
        notes: vec![Decision::new(Stage::Validate, decision)],
    })))
}

/// `1 CustomerPartyMaster`, `1 CustomerPartyMaster, 2 ContactMaster`.
fn noun_counts(items: &[Item]) -> String {
    let count = |kind| items.iter().filter(|i| i.kind == kind).count();
    [Kind::Account, Kind::Contact]
        .into_iter()
        .map(|kind| (count(kind), kind.noun()))
        .filter(|(n, _)| *n > 0)
        .map(|(n, noun)| format!("{n} {noun}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn root_noun(bod: &Bod) -> String {
    bod.root
        .strip_prefix(bod.verb.as_str())
        .unwrap_or(&bod.root)
        .to_string()
}

fn check_len(value: &str, max: usize, path: impl FnOnce() -> String) -> Result<()> {
    check_in_line(value, max, None, path)
}

/// [`check_len`] of a value that shares an address line with `shares_with`: `room` is what is
/// left of the line for it.
fn check_in_line(
    value: &str,
    room: usize,
    shares_with: Option<&'static str>,
    path: impl FnOnce() -> String,
) -> Result<()> {
    if value.chars().count() > room {
        return Err(ValidationError::TooLong {
            path: path(),
            max: room,
            shares_with,
        });
    }
    Ok(())
}

fn shared_line(shares_with: Option<&str>) -> String {
    shares_with
        .map(|other| {
            format!(
                " (what is left of the {MAX_TEXT}-character address line it shares with {other})"
            )
        })
        .unwrap_or_default()
}

/// The sender's key for a noun: its first ID, checked. `None` when empty and allowed to be
/// (a Process asking bodflow to assign one).
fn check_id(id: Option<&Id>, path: &str, may_be_empty: bool) -> Result<Option<String>> {
    let value = id.map(|i| i.value.as_str()).unwrap_or("");
    if value.is_empty() {
        return if may_be_empty {
            Ok(None)
        } else {
            Err(missing(path.to_string()))
        };
    }
    check_len(value, MAX_ID, || path.to_string())?;
    if value.chars().any(char::is_control) {
        return Err(ValidationError::InvalidValue {
            path: path.to_string(),
            why: "control characters are not allowed in IDs".into(),
        });
    }
    Ok(Some(value.to_string()))
}

/// variationID: absent/empty → None; otherwise decimal digits (leading zeros dropped).
fn check_variation(id: Option<&Id>, path: &str) -> Result<Option<String>> {
    let Some(raw) = id.and_then(|i| i.variation.as_deref()) else {
        return Ok(None);
    };
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    if !raw.bytes().all(|b| b.is_ascii_digit()) || raw.len() > MAX_VARIATION_DIGITS {
        return Err(ValidationError::InvalidValue {
            path: format!("{path}/@variationID"),
            why: format!(
                "{raw:?} is not a decimal number of at most {MAX_VARIATION_DIGITS} digits"
            ),
        });
    }
    let trimmed = raw.trim_start_matches('0');
    Ok(Some(
        if trimmed.is_empty() { "0" } else { trimmed }.to_string(),
    ))
}

fn is_delete_status(status: Option<&str>) -> bool {
    status.is_some_and(|s| {
        let s = s.to_ascii_lowercase().replace([' ', '_', '-'], "");
        s == "deleted" || s == "markedfordeletion"
    })
}

fn check_email(value: &str, path: impl FnOnce() -> String) -> Result<()> {
    let ok = value.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !domain.contains('@')
    }) && !value.chars().any(char::is_whitespace);
    if !ok {
        return Err(ValidationError::InvalidValue {
            path: path(),
            why: format!("{value:?} is not an e-mail address"),
        });
    }
    check_len(value, MAX_TEXT, path)
}

/// A noun's channels (`noun`: the noun's path; each channel knows its element's below it).
fn communication(channels: &[Channel], noun: &str) -> Result<Communication> {
    let mut c = Communication::default();
    // The preferred entry of each kind goes first.
    let mut sorted: Vec<&Channel> = channels.iter().collect();
    sorted.sort_by_key(|ch| !ch.preferred);
    // Each address once (a set: a document may list tens of thousands).
    let mut seen = std::collections::HashSet::new();
    for ch in sorted {
        let at = |element: &str| format!("{noun}/{}/{element}", ch.path);
        let value_at = || at(ch.value_element);
        match ch.channel {
            ChannelKind::Email => {
                check_email(&ch.value, value_at)?;
                if seen.insert(ch.value.as_str()) {
                    c.emails.push(ch.value.clone());
                }
            }
            ChannelKind::Web => {
                check_len(&ch.value, MAX_TEXT, value_at)?;
                c.web.get_or_insert_with(|| ch.value.clone());
            }
            ChannelKind::Phone => {
                check_len(&ch.value, MAX_ID, value_at)?;
                // Kept with the number (an e-mail's or web site's use code is not).
                if let Some(u) = &ch.use_code {
                    check_len(u, MAX_CODE, || at("UseCode"))?;
                }
                c.phones.push(Phone {
                    use_code: ch.use_code.clone(),
                    number: ch.value.clone(),
                });
            }
        }
    }
    Ok(c)
}

/// Whether an address part is written as sent, without its label: it has the label's `word`
/// (`Unit 4`, `3rd floor`, `P.O. Box 17`), or is several words beginning with a letter (`Suite
/// 200`, `Ground level`). One word or number gets the label (`4B` → `Unit 4B`).
fn names_itself(value: &str, word: &str) -> bool {
    value.to_lowercase().contains(word)
        || (value.starts_with(char::is_alphabetic) && value.contains(char::is_whitespace))
}

/// A merged address, and its country code as sent with the path it was read from.
type Merged = (HubAddress, Option<(String, String)>);

/// One hub address from a location's address views: the preferred one, completed from its
/// siblings (a `Text` view has lines, a `Discrete` one street and number), with its country
/// code as sent; each value's length checked, under the path of the element it came from
/// (`noun`: the noun's path).
fn hub_address(addresses: &[Address], noun: &str) -> Result<Option<Merged>> {
    let Some(base) = addresses
        .iter()
        .find(|a| a.preferred)
        .or_else(|| addresses.first())
    else {
        return Ok(None);
    };
    // The value from the base view, else from the first view that has one, with that view. The
    // paths are only for errors: formatted when a check fails, not for every value.
    let from_any = |f: fn(&Address) -> Option<&String>| {
        std::iter::once(base)
            .chain(addresses)
            .find_map(|a| Some((f(a)?, a)))
    };
    let path = |a: &Address, element: &str| format!("{noun}/{}/{element}", a.path);
    // Each line with the view and the element it came from.
    let mut lines: Vec<(String, &Address, &str)> = std::iter::once(base)
        .chain(addresses)
        .find(|a| !a.lines.is_empty())
        .map(|a| {
            a.lines
                .iter()
                .zip(&a.line_steps)
                .map(|(l, s)| (l.clone(), a, s.as_str()))
                .collect()
        })
        .unwrap_or_default();
    if lines.is_empty() {
        // A `Discrete` view alone: its elements become lines, in the order a label prints
        // them — the building's name, the street and number, the unit, the floor, the post
        // office box — so that nothing the sender gave is lost. Each element is checked
        // against what is left of the line it goes into, so that a refusal names the element
        // that does not fit: the street and number share one line, and a unit, floor or box
        // is written after its label unless it names itself ([`names_itself`]).
        // The view with the parts: the base, else a sibling (a preferred `Text` view with
        // neither lines nor parts, next to a `Discrete` one).
        let base = std::iter::once(base)
            .chain(addresses)
            .find(|a| {
                [
                    &a.building_name,
                    &a.street_name,
                    &a.building_number,
                    &a.unit,
                    &a.floor,
                    &a.post_office_box,
                ]
                .iter()
                .any(|v| v.is_some())
            })
            .unwrap_or(base);
        if let Some(name) = &base.building_name {
            lines.push((name.clone(), base, "BuildingName"));
        }
        let mut room = MAX_TEXT;
        let mut before = None;
        for (value, element) in [
            (&base.street_name, "StreetName"),
            (&base.building_number, "BuildingNumber"),
        ] {
            if let Some(v) = value {
                check_in_line(v, room, before, || path(base, element))?;
                room = room.saturating_sub(v.chars().count() + 1);
                before = Some(element);
            }
        }
        let street = [base.street_name.as_deref(), base.building_number.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        if !street.is_empty() {
            let element = if base.street_name.is_some() {
                "StreetName"
            } else {
                "BuildingNumber"
            };
            lines.push((street, base, element));
        }
        // (value, label, the label as a refusal names it, element, the word that shows a
        // value names itself)
        for (value, label, quoted, element, word) in [
            (&base.unit, "Unit ", "\"Unit \"", "Unit", "unit"),
            (&base.floor, "Floor ", "\"Floor \"", "Floor", "floor"),
            (
                &base.post_office_box,
                "PO Box ",
                "\"PO Box \"",
                "PostOfficeBox",
                "box",
            ),
        ] {
            let Some(value) = value else { continue };
            let label = if names_itself(value, word) { "" } else { label };
            let shares_with = (!label.is_empty()).then_some(quoted);
            check_in_line(value, MAX_TEXT - label.len(), shares_with, || {
                path(base, element)
            })?;
            lines.push((format!("{label}{value}"), base, element));
        }
    }
    for (line, a, element) in &lines {
        check_len(line, MAX_TEXT, || path(a, element))?;
    }
    let field = |f: fn(&Address) -> Option<&String>, element: &str, max: usize| {
        from_any(f)
            .map(|(value, a)| check_len(value, max, || path(a, element)).map(|()| value.clone()))
            .transpose()
    };
    let address = HubAddress {
        attention: field(|a| a.attention.as_ref(), "AttentionOfName", MAX_TEXT)?,
        lines: lines.into_iter().map(|(l, _, _)| l).collect(),
        city: field(|a| a.city.as_ref(), "CityName", MAX_TEXT)?,
        subdivision: field(
            |a| a.subdivision.as_ref(),
            "CountrySubDivisionCode",
            MAX_CODE,
        )?,
        subdivision2: field(
            |a| a.subdivision2.as_ref(),
            "CountrySubDivision2Code",
            MAX_CODE,
        )?,
        postal_code: field(|a| a.postal_code.as_ref(), "PostalCode", MAX_CODE)?,
        country: None,
    };
    let country =
        from_any(|a| a.country.as_ref()).map(|(c, a)| (c.clone(), path(a, "CountryCode")));
    Ok(Some((address, country)))
}

/// A merged address apart from its country code as sent, and where that came from, else
/// where it would be.
fn country_of(
    address: Option<Merged>,
    noun: &str,
    container: &str,
) -> (Option<HubAddress>, Option<String>, String) {
    let (address, country) = address.map_or((None, None), |(a, c)| (Some(a), c));
    match country {
        Some((code, path)) => (address, Some(code), path),
        None => (
            address,
            None,
            format!("{noun}/{container}/Address/CountryCode"),
        ),
    }
}

fn check_text(value: Option<String>, path: impl FnOnce() -> String) -> Result<Option<String>> {
    if let Some(v) = &value {
        check_len(v, MAX_TEXT, path)?;
    }
    Ok(value)
}

/// Length limits on everything the hub keeps and passes on, so an emitted BOD never carries
/// a value its receivers' schemas refuse.
fn check_fields(f: &Fields, path: &str) -> Result<()> {
    let codes = [
        (f.identity.status.as_deref(), "Status/Code"),
        (f.commercial.currency.as_deref(), "CurrencyCode"),
        (f.commercial.payment_term.as_deref(), "PaymentTermID"),
        (f.identity.relationship.as_deref(), "@type"),
    ];
    for (value, at) in codes {
        if let Some(v) = value {
            check_len(v, MAX_CODE, || format!("{path}/{at}"))?;
        }
    }
    // Channels and addresses are checked as they are read ([`communication`],
    // [`hub_address`]), the account type and classifications before the item is built
    // ([`check_codes`]): each where the element its value came from is known.
    Ok(())
}

/// Code values (classifications, the account type) against [`MAX_CODE`], each under its own
/// element: `steps` are their path steps below the noun at `path`.
fn check_codes<'a>(
    values: impl IntoIterator<Item = (&'a String, &'a String)>,
    path: &str,
) -> Result<()> {
    for (value, step) in values {
        check_len(value, MAX_CODE, || format!("{path}/{step}"))?;
    }
    Ok(())
}

/// The path of the `Name` [`pick_language`] picks: with its position when there are several.
fn name_path(noun: &str, names: &[bod::LangText], language: &str) -> String {
    match bod::pick_language_at(names, language) {
        Some(i) if names.len() > 1 => format!("{noun}/Name[{}]", i + 1),
        _ => format!("{noun}/Name"),
    }
}

/// The sender's key and variationID of a noun from its first ID (`ids`), checked.
/// A Process (not a delete) may leave the ID empty to ask for one; so may an Acknowledge.
#[allow(clippy::too_many_arguments)]
fn noun_key(
    kind: Kind,
    ids: &[Id],
    id_path: &str,
    app: &Application,
    verb: Verb,
    intent: Intent,
    ae: &str,
) -> Result<(XrefKey, Option<String>)> {
    let primary = ids.first();
    let may_be_empty =
        (verb == Verb::Process && intent == Intent::Upsert) || verb == Verb::Acknowledge;
    let id = check_id(primary, id_path, may_be_empty)?;
    let variation = check_variation(primary, id_path)?;
    let key = XrefKey {
        kind,
        application: app.logical_id.clone(),
        accounting_entity: primary
            .and_then(|i| i.accounting_entity.clone())
            .unwrap_or_else(|| ae.to_string()),
        id: id.unwrap_or_default(),
    };
    // From the ID's attribute, or the verb's AccountingEntityID (checked with the header).
    check_len(&key.accounting_entity, MAX_ENTITY, || {
        format!("{id_path}/@accountingEntity")
    })?;
    Ok((key, variation))
}

fn party_item(
    p: bod::Party,
    app: &Application,
    verb: Verb,
    intent: Intent,
    ae: &str,
) -> Result<Item> {
    let id_path = format!("{}/PartyIDs/ID", p.path);
    let (key, variation) = noun_key(Kind::Account, &p.ids, &id_path, app, verb, intent, ae)?;
    let delete = intent == Intent::Delete || is_delete_status(p.status.as_deref());
    let name = pick_language(&p.names, &app.language_code).map(str::to_string);
    if name.is_none() && !delete && verb != Verb::Acknowledge {
        return Err(missing(format!("{}/Name", p.path)));
    }
    let name = check_text(name, || name_path(&p.path, &p.names, &app.language_code))?;
    for (a, step) in p.account_ids.iter().zip(&p.account_id_steps) {
        check_len(a, MAX_ID, || format!("{}/{step}", p.path))?;
    }
    check_codes(
        p.classifications.iter().zip(&p.classification_steps),
        &p.path,
    )?;
    check_codes(p.account_type.iter().zip(&p.account_type_at), &p.path)?;
    // An ID like the others (it may become a match key): checked as one.
    let external = match p.ids.iter().enumerate().skip(1).find(|(_, i)| {
        i.scheme_name
            .as_deref()
            .is_some_and(|s| s.to_ascii_lowercase().starts_with("external"))
    }) {
        Some((at, id)) => check_id(
            Some(id),
            &format!("{}/PartyIDs/ID[{}]", p.path, at + 1),
            true,
        )?,
        None => None,
    };
    let communication = communication(&p.channels, &p.path)?;
    let address = hub_address(&p.addresses, &p.path)?;
    let (address, raw_country, country_path) = country_of(address, &p.path, "Location");
    let account_id = p.account_ids.into_iter().next();
    let mut match_values = Vec::new();
    if let Some(n) = account_id
        .clone()
        .or_else(|| Some(key.id.clone()).filter(|id| !id.is_empty()))
    {
        match_values.push((MatchKey::AccountNumber, n));
    }
    if let Some(x) = &external {
        match_values.push((MatchKey::ExternalNumber, x.clone()));
    }
    if let Some(e) = communication.emails.first() {
        match_values.push((MatchKey::Email, e.clone()));
    }
    let item = Item {
        kind: Kind::Account,
        path: p.path,
        key,
        variation,
        intent: if delete { Intent::Delete } else { intent },
        fields: Fields {
            identity: Identity {
                name,
                account_number: account_id,
                external_number: external,
                status: p.status,
                ..Default::default()
            },
            address,
            communication,
            commercial: Commercial {
                currency: p.currency,
                payment_term: p.payment_term,
                account_type: p.account_type,
            },
            classification: p.classifications,
            user_area: p.user_area,
        },
        raw_country,
        country_path,
        employer: None,
        sales_persons: p.sales_persons,
        match_values,
        owner: Default::default(),
        notes: Vec::new(),
    };
    check_fields(&item.fields, &item.path)?;
    Ok(item)
}

fn contact_item(
    c: bod::Contact,
    app: &Application,
    verb: Verb,
    intent: Intent,
    ae: &str,
) -> Result<Item> {
    let id_path = format!("{}/IDs/ID", c.path);
    let (key, variation) = noun_key(Kind::Contact, &c.ids, &id_path, app, verb, intent, ae)?;
    let delete = intent == Intent::Delete || is_delete_status(c.status.as_deref());
    let name = pick_language(&c.names, &app.language_code).map(str::to_string);
    if name.is_none() && c.family_name.is_none() && !delete && verb != Verb::Acknowledge {
        return Err(missing(format!("{}/FamilyName", c.path)));
    }
    let name = check_text(name, || name_path(&c.path, &c.names, &app.language_code))?;
    check_codes(
        c.classifications.iter().zip(&c.classification_steps),
        &c.path,
    )?;
    let given = check_text(c.given_name, || format!("{}/GivenName", c.path))?;
    let family = check_text(c.family_name, || format!("{}/FamilyName", c.path))?;
    let job = check_text(c.job_title, || format!("{}/JobTitle", c.path))?;
    let communication = communication(&c.channels, &c.path)?;
    let address = match &c.address {
        Some(a) => hub_address(std::slice::from_ref(a), &c.path)?,
        None => None,
    };
    let (address, raw_country, country_path) = country_of(address, &c.path, "CommunicationDetail");
    let employer = match &c.employer {
        Some(e) if !e.value.is_empty() => {
            let path = format!("{}/EmployerReference/{}", c.path, c.employer_at);
            check_id(Some(e), &path, false)?;
            let accounting_entity = e
                .accounting_entity
                .clone()
                .unwrap_or_else(|| ae.to_string());
            check_len(&accounting_entity, MAX_ENTITY, || {
                format!("{path}/@accountingEntity")
            })?;
            Some(XrefKey {
                kind: Kind::Account,
                application: app.logical_id.clone(),
                accounting_entity,
                id: e.value.clone(),
            })
        }
        _ => None,
    };
    let mut match_values = Vec::new();
    if let Some(e) = communication.emails.first() {
        match_values.push((MatchKey::Email, e.clone()));
    }
    let item = Item {
        kind: Kind::Contact,
        path: c.path,
        key,
        variation,
        intent: if delete { Intent::Delete } else { intent },
        fields: Fields {
            identity: Identity {
                name,
                given_name: given,
                family_name: family,
                job_title: job,
                status: c.status,
                relationship: c.relationship,
                ..Default::default()
            },
            address,
            communication,
            commercial: Commercial::default(),
            classification: c.classifications,
            user_area: c.user_area,
        },
        raw_country,
        country_path,
        employer,
        sales_persons: c.sales_persons,
        match_values,
        owner: Default::default(),
        notes: Vec::new(),
    };
    check_fields(&item.fields, &item.path)?;
    Ok(item)
}
