//! Writers for the documents bodflow emits: `ConfirmBOD`, `Acknowledge<Noun>` and
//! `Sync<Noun>`. Output is InforOAGIS/2-namespaced, indented (goldens diff line by line), and
//! in exactly the element order of `schemas/`, which tests check with `xmllint --schema`.
//!
//! Writers take plain values, not the store's records: the caller (the upsert stage) decides
//! which IDs, formats and fields a receiver gets.

use std::borrow::Cow;

use super::ApplicationArea;
use crate::store::{Communication, Fields, HubAddress};

pub const NAMESPACE: &str = "http://schema.infor.com/InforOAGIS/2";
pub const RELEASE_ID: &str = "9.2";
pub const VERSION_ID: &str = "2.14.0";

/// Indented XML text with escaping. Appends to one `String`; no intermediate tree.
struct Out {
    buf: String,
    depth: usize,
}

/// Appends `text` escaped for element content and attribute values: the five XML specials as
/// entities, and the characters XML 1.0 allows nowhere (control characters other than tab,
/// newline and carriage return; U+FFFE, U+FFFF) as U+FFFD. A sender's broken document can
/// carry those into what bodflow echoes (an error message naming its tag, a stored value), and
/// every document bodflow emits must still be well-formed.
fn push_escaped(buf: &mut String, text: &str) {
    // 0xEF leads U+FFFE and U+FFFF (and the rest of U+E000..U+FFFF, rare in master data).
    let plain = |b: u8| {
        !matches!(b, b'<' | b'>' | b'&' | b'"' | b'\'' | 0xEF)
            && (b >= 0x20 || matches!(b, b'\t' | b'\n' | b'\r'))
    };
    if text.bytes().all(plain) {
        buf.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '<' => buf.push_str("&lt;"),
            '>' => buf.push_str("&gt;"),
            '&' => buf.push_str("&amp;"),
            '"' => buf.push_str("&quot;"),
            '\'' => buf.push_str("&apos;"),
            '\t' | '\n' | '\r' => buf.push(c),
            // Not allowed anywhere in XML 1.0, not even as a character reference.
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => buf.push(char::REPLACEMENT_CHARACTER),
            c => buf.push(c),
        }
    }
}

/// An element name with its tags spelled out at compile time by [`tag!`], so that writing a
/// tag is one copy rather than one per bracket and name.
#[derive(Debug, Clone, Copy)]
struct Tag {
    /// `<Name`
    start: &'static str,
    /// `<Name>`
    open: &'static str,
    /// `<Name>` and a line break
    open_line: &'static str,
    /// `</Name>` and a line break
    close: &'static str,
}

macro_rules! tag {
    ($name:literal) => {
        Tag {
            start: concat!("<", $name),
            open: concat!("<", $name, ">"),
            open_line: concat!("<", $name, ">\n"),
            close: concat!("</", $name, ">\n"),
        }
    };
}

/// Indentation, two spaces a level (documents are shallow; deeper levels share the last).
const INDENT: &str = "                                                            ";

impl Out {
    fn new(root: &str) -> Out {
        // A Sync is a little over 2 KiB: one allocation, no doubling halfway.
        let mut buf = String::with_capacity(4096);
        buf.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<");
        buf.push_str(root);
        for part in [
            " xmlns=\"",
            NAMESPACE,
            "\" releaseID=\"",
            RELEASE_ID,
            "\" versionID=\"",
            VERSION_ID,
            "\">\n",
        ] {
            buf.push_str(part);
        }
        Out { buf, depth: 1 }
    }

    fn indent(&mut self) {
        self.buf
            .push_str(&INDENT[..(2 * self.depth).min(INDENT.len())]);
    }

    fn open(&mut self, tag: Tag) {
        self.indent();
        self.buf.push_str(tag.open_line);
        self.depth += 1;
    }

    fn open_with(&mut self, tag: Tag, attrs: &[(&str, &str)]) {
        self.indent();
        self.buf.push_str(tag.start);
        self.attrs(attrs);
        self.buf.push_str(">\n");
        self.depth += 1;
    }

    fn close(&mut self, tag: Tag) {
        self.depth -= 1;
        self.indent();
        self.buf.push_str(tag.close);
    }

    fn attrs(&mut self, attrs: &[(&str, &str)]) {
        for (k, v) in attrs {
            self.buf.push(' ');
            self.buf.push_str(k);
            self.buf.push_str("=\"");
            push_escaped(&mut self.buf, v);
            self.buf.push('"');
        }
    }

    fn leaf_with(&mut self, tag: Tag, attrs: &[(&str, &str)], text: &str) {
        self.indent();
        self.buf.push_str(tag.start);
        self.attrs(attrs);
        if text.is_empty() {
            self.buf.push_str("/>\n");
        } else {
            self.buf.push('>');
            push_escaped(&mut self.buf, text);
            self.buf.push_str(tag.close);
        }
    }

    fn leaf(&mut self, tag: Tag, text: &str) {
        self.indent();
        if text.is_empty() {
            self.buf.push_str(tag.start);
            self.buf.push_str("/>\n");
        } else {
            self.buf.push_str(tag.open);
            push_escaped(&mut self.buf, text);
            self.buf.push_str(tag.close);
        }
    }

    fn opt(&mut self, tag: Tag, text: Option<&str>) {
        if let Some(t) = text.filter(|t| !t.is_empty()) {
            self.leaf(tag, t);
        }
    }

    /// Writes a balanced run of elements with `write`, or, when `slot` holds the bytes an
    /// earlier receiver's document got for the same run, copies those. An empty slot is
    /// filled with what was written.
    fn shared(&mut self, slot: Option<&mut Option<String>>, write: impl FnOnce(&mut Out)) {
        match slot {
            Some(Some(done)) => self.buf.push_str(done),
            Some(empty) => {
                let start = self.buf.len();
                write(self);
                *empty = Some(self.buf[start..].to_string());
            }
            None => write(self),
        }
    }

    fn finish(mut self, root: &str) -> String {
        for part in ["</", root, ">\n"] {
            self.buf.push_str(part);
        }
        self.buf
    }
}

/// The envelope of every emitted BOD.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// bodflow's logical ID (`hub.logical_id`).
    pub sender: &'a str,
    pub bod_id: &'a str,
    /// RFC 3339 UTC.
    pub creation: &'a str,
    pub tenant: Option<&'a str>,
    pub accounting_entity: Option<&'a str>,
}

impl Envelope<'_> {
    fn application_area(&self, out: &mut Out) {
        out.open(tag!("ApplicationArea"));
        out.open(tag!("Sender"));
        out.leaf(tag!("LogicalID"), self.sender);
        out.leaf(tag!("ComponentID"), "bodflow");
        // bodflow never asks receivers for confirmations of its own replies.
        out.leaf(tag!("ConfirmationCode"), "Never");
        out.close(tag!("Sender"));
        out.leaf(tag!("CreationDateTime"), self.creation);
        out.leaf(tag!("BODID"), self.bod_id);
        out.close(tag!("ApplicationArea"));
    }

    fn verb_ids(&self, out: &mut Out) {
        out.opt(tag!("TenantID"), self.tenant);
        out.opt(tag!("AccountingEntityID"), self.accounting_entity);
    }
}

fn original_area(out: &mut Out, area: &ApplicationArea) {
    out.open(tag!("OriginalApplicationArea"));
    // The sender's values as it sent them, however long (they may be why it is refused) —
    // up to MAX_ECHO bytes each.
    fn echo(v: &Option<String>) -> Option<std::borrow::Cow<'_, str>> {
        v.as_deref().map(|v| super::clipped(v, super::MAX_ECHO))
    }
    if area.logical_id.is_some() || area.component_id.is_some() {
        out.open(tag!("Sender"));
        out.opt(tag!("LogicalID"), echo(&area.logical_id).as_deref());
        out.opt(tag!("ComponentID"), echo(&area.component_id).as_deref());
        out.opt(
            tag!("ConfirmationCode"),
            echo(&area.confirmation_code).as_deref(),
        );
        out.close(tag!("Sender"));
    }
    // Required by the schema; an absent original time is written empty rather than invented.
    out.leaf(
        tag!("CreationDateTime"),
        echo(&area.creation).as_deref().unwrap_or(""),
    );
    out.opt(tag!("BODID"), echo(&area.bod_id).as_deref());
    out.close(tag!("OriginalApplicationArea"));
}

/// One coded problem, as carried by ConfirmBOD and a Rejected Acknowledge.
#[derive(Debug, Clone)]
pub struct Problem<'a> {
    pub stage: &'a str,
    pub code: &'a str,
    pub message: &'a str,
    pub path: Option<&'a str>,
}

/// What a ConfirmBOD reports.
#[derive(Debug, Clone)]
pub enum Confirmation<'a> {
    Failure(Problem<'a>),
    /// `Always`: success, with the outcome and the hub IDs touched.
    Success {
        outcome: &'a str,
        records: Vec<&'a str>,
    },
}

/// `ConfirmBOD` answering `original`.
pub fn confirm_bod(
    env: &Envelope<'_>,
    original: &ApplicationArea,
    what: &Confirmation<'_>,
) -> String {
    let mut out = Out::new("ConfirmBOD");
    env.application_area(&mut out);
    out.open(tag!("DataArea"));
    out.open(tag!("Confirm"));
    env.verb_ids(&mut out);
    out.close(tag!("Confirm"));
    out.open(tag!("BOD"));
    original_area(&mut out, original);
    match what {
        Confirmation::Failure(p) => {
            out.open(tag!("BODFailureMessage"));
            out.open(tag!("ErrorProcessMessage"));
            out.leaf(tag!("Description"), p.message);
            out.opt(tag!("Note"), p.path);
            out.leaf(tag!("Type"), p.stage);
            out.leaf(tag!("ReasonCode"), p.code);
            out.close(tag!("ErrorProcessMessage"));
            out.close(tag!("BODFailureMessage"));
        }
        Confirmation::Success { outcome, records } => {
            out.open(tag!("BODSuccessMessage"));
            out.open(tag!("NounSuccessMessage"));
            if records.is_empty() {
                out.open(tag!("ProcessMessage"));
                out.leaf(tag!("Description"), outcome);
                out.close(tag!("ProcessMessage"));
            }
            for r in records {
                out.open(tag!("ProcessMessage"));
                out.leaf(tag!("ID"), r);
                out.leaf(tag!("Description"), outcome);
                out.close(tag!("ProcessMessage"));
            }
            out.close(tag!("NounSuccessMessage"));
            out.close(tag!("BODSuccessMessage"));
        }
    }
    out.close(tag!("BOD"));
    out.close(tag!("DataArea"));
    out.finish("ConfirmBOD")
}

/// An identifier as written into an emitted noun.
#[derive(Debug, Clone, Default)]
pub struct OutId<'a> {
    pub value: &'a str,
    pub accounting_entity: Option<&'a str>,
    pub lid: Option<&'a str>,
    pub variation: Option<String>,
    pub scheme_name: Option<&'a str>,
}

fn id_element(out: &mut Out, id: &OutId<'_>) {
    let mut attrs = [("", ""); 4];
    let mut n = 0;
    let present = [
        ("schemeName", id.scheme_name),
        (
            "accountingEntity",
            id.accounting_entity.filter(|a| !a.is_empty()),
        ),
        ("lid", id.lid),
        ("variationID", id.variation.as_deref()),
    ];
    for (name, value) in present {
        if let Some(value) = value {
            attrs[n] = (name, value);
            n += 1;
        }
    }
    out.leaf_with(tag!("ID"), &attrs[..n], id.value);
}

/// A noun to write: the record content in the receiver's terms.
#[derive(Debug, Clone)]
pub struct NounOut<'a> {
    /// The receiver's IDs for the record (the first may be empty: "unknown to you, create it").
    pub ids: Vec<OutId<'a>>,
    pub fields: &'a Fields,
    /// Country code already in the receiver's format.
    pub country: Option<String>,
    pub language: &'a str,
    /// Contacts: the receiver's ID of the account.
    pub employer: Option<OutId<'a>>,
    /// Owner as the receiver knows sales persons: (ID, role).
    pub sales_person: Option<(&'a str, &'a str)>,
    pub hub_id: &'a str,
}

/// `AddressLine@sequence` values without formatting a number per line.
const SEQUENCES: [&str; 9] = ["1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// The parts of one record's noun that do not depend on the receiver's IDs, kept while its
/// `Sync` is written for several receivers: receivers with equal keys (the same country
/// format, language, sales person role and outbound fields) share them, so each is written
/// once. The key is the caller's: it must capture every receiver setting a part depends on.
pub(crate) struct Shared<K> {
    parts: Vec<(K, Parts)>,
    /// The record the parts are of: one `Shared` must never serve two records.
    #[cfg(debug_assertions)]
    record: Option<String>,
}

/// The receiver-independent runs of a noun: for an account, everything after its IDs; for a
/// contact, the run between its IDs and its `EmployerReference`, and the run after it.
type Parts = [Option<String>; 2];

impl<K: PartialEq> Shared<K> {
    pub(crate) fn new() -> Shared<K> {
        Shared {
            parts: Vec::new(),
            #[cfg(debug_assertions)]
            record: None,
        }
    }

    fn parts(&mut self, key: K) -> &mut Parts {
        let at = match self.parts.iter().position(|(k, _)| *k == key) {
            Some(at) => at,
            None => {
                self.parts.push((key, [None, None]));
                self.parts.len() - 1
            }
        };
        &mut self.parts[at].1
    }
}

impl<K: PartialEq> Default for Shared<K> {
    fn default() -> Self {
        Shared::new()
    }
}

fn address(out: &mut Out, a: &HubAddress, country: Option<&str>) {
    out.open(tag!("Address"));
    out.opt(tag!("AttentionOfName"), a.attention.as_deref());
    for (i, line) in a.lines.iter().enumerate() {
        let seq = SEQUENCES
            .get(i)
            .map_or_else(|| Cow::Owned((i + 1).to_string()), |s| Cow::Borrowed(*s));
        out.leaf_with(tag!("AddressLine"), &[("sequence", &seq)], line);
    }
    out.opt(tag!("CityName"), a.city.as_deref());
    out.opt(tag!("CountrySubDivisionCode"), a.subdivision.as_deref());
    out.opt(tag!("CountrySubDivision2Code"), a.subdivision2.as_deref());
    out.opt(tag!("CountryCode"), country);
    out.opt(tag!("PostalCode"), a.postal_code.as_deref());
    out.close(tag!("Address"));
}

fn classification(out: &mut Out, codes: &[String]) {
    if codes.is_empty() {
        return;
    }
    out.open(tag!("Classification"));
    out.open(tag!("Codes"));
    for c in codes {
        out.leaf(tag!("Code"), c);
    }
    out.close(tag!("Codes"));
    out.close(tag!("Classification"));
}

fn user_area(out: &mut Out, hub_id: &str) {
    out.open(tag!("UserArea"));
    out.open(tag!("Property"));
    out.leaf_with(
        tag!("NameValue"),
        &[("name", "bodflow.HubID"), ("type", "String")],
        hub_id,
    );
    out.close(tag!("Property"));
    out.close(tag!("UserArea"));
}

fn party(out: &mut Out, n: &NounOut<'_>, parts: Option<&mut Parts>) {
    let f = n.fields;
    match f.commercial.account_type.as_deref() {
        Some(role) => out.open_with(tag!("CustomerPartyMaster"), &[("role", role)]),
        None => out.open(tag!("CustomerPartyMaster")),
    }
    out.open(tag!("PartyIDs"));
    for id in &n.ids {
        id_element(out, id);
    }
    out.close(tag!("PartyIDs"));
    let [rest, _] = parts.map_or([None, None], |[a, b]| [Some(a), Some(b)]);
    out.shared(rest, |out| party_rest(out, n));
    out.close(tag!("CustomerPartyMaster"));
}

/// An account after its IDs (all of it the same for receivers with the same settings).
fn party_rest(out: &mut Out, n: &NounOut<'_>) {
    let f = n.fields;
    if let Some(name) = f.identity.name.as_deref() {
        out.leaf_with(tag!("Name"), &[("languageID", n.language)], name);
    }
    if let Some(num) = f.identity.account_number.as_deref() {
        out.open(tag!("AccountIDs"));
        out.leaf(tag!("ID"), num);
        out.close(tag!("AccountIDs"));
    }
    out.opt(tag!("CurrencyCode"), f.commercial.currency.as_deref());
    if let Some(status) = f.identity.status.as_deref() {
        out.open(tag!("Status"));
        out.leaf(tag!("Code"), status);
        out.close(tag!("Status"));
    }
    out.opt(tag!("PaymentTermID"), f.commercial.payment_term.as_deref());
    classification(out, &f.classification);
    if let Some((id, role)) = n.sales_person {
        out.open(tag!("SalesPersonReference"));
        out.open(tag!("IDs"));
        out.leaf(tag!("ID"), id);
        out.close(tag!("IDs"));
        out.leaf(tag!("SalesPersonRole"), role);
        out.close(tag!("SalesPersonReference"));
    }
    if let Some(a) = &f.address {
        out.open(tag!("Location"));
        address(out, a, n.country.as_deref());
        out.close(tag!("Location"));
    }
    communications(out, &f.communication, tag!("Communication"));
    user_area(out, n.hub_id);
}

fn communications(out: &mut Out, c: &Communication, element: Tag) {
    for p in &c.phones {
        out.open(element);
        out.leaf(tag!("ChannelCode"), "Phone");
        out.opt(tag!("UseCode"), p.use_code.as_deref());
        out.leaf(tag!("DialNumber"), &p.number);
        out.close(element);
    }
    for e in &c.emails {
        out.open(element);
        out.leaf(tag!("ChannelCode"), "EMail");
        out.leaf(tag!("URI"), e);
        out.close(element);
    }
    if let Some(w) = c.web.as_deref() {
        out.open(element);
        out.leaf(tag!("ChannelCode"), "Web Site");
        out.leaf(tag!("URI"), w);
        out.close(element);
    }
}

fn contact(out: &mut Out, n: &NounOut<'_>, parts: Option<&mut Parts>) {
    let f = n.fields;
    match f.identity.relationship.as_deref() {
        Some(rel) => out.open_with(tag!("ContactMaster"), &[("type", rel)]),
        None => out.open(tag!("ContactMaster")),
    }
    out.open(tag!("IDs"));
    for id in &n.ids {
        id_element(out, id);
    }
    out.close(tag!("IDs"));
    let [details, rest] = parts.map_or([None, None], |[a, b]| [Some(a), Some(b)]);
    out.shared(details, |out| {
        if let Some(name) = f.identity.name.as_deref() {
            out.leaf_with(tag!("Name"), &[("languageID", n.language)], name);
        }
        out.opt(tag!("GivenName"), f.identity.given_name.as_deref());
        out.opt(tag!("FamilyName"), f.identity.family_name.as_deref());
        out.opt(tag!("JobTitle"), f.identity.job_title.as_deref());
        communications(out, &f.communication, tag!("CommunicationDetail"));
        if let Some(a) = &f.address {
            out.open(tag!("CommunicationDetail"));
            address(out, a, n.country.as_deref());
            out.close(tag!("CommunicationDetail"));
        }
    });
    if let Some(emp) = &n.employer {
        out.open(tag!("EmployerReference"));
        out.open(tag!("DocumentID"));
        id_element(out, emp);
        out.close(tag!("DocumentID"));
        out.close(tag!("EmployerReference"));
    }
    out.shared(rest, |out| {
        classification(out, &f.classification);
        if let Some(status) = f.identity.status.as_deref() {
            out.open(tag!("Status"));
            out.leaf(tag!("Code"), status);
            out.close(tag!("Status"));
        }
        user_area(out, n.hub_id);
    });
    out.close(tag!("ContactMaster"));
}

fn noun(out: &mut Out, kind: crate::store::Kind, n: &NounOut<'_>, parts: Option<&mut Parts>) {
    match kind {
        crate::store::Kind::Account => party(out, n, parts),
        crate::store::Kind::Contact => contact(out, n, parts),
    }
}

/// `Sync<Noun>` with an action code (`Add`, `Change`, `Delete`).
pub fn sync_noun(
    env: &Envelope<'_>,
    kind: crate::store::Kind,
    action_code: &str,
    n: &NounOut<'_>,
) -> String {
    action_document(env, ("Sync", tag!("Sync")), &[], kind, action_code, n, None)
}

/// [`sync_noun`] for one of several receivers of the same record: the parts of the noun
/// that `key` (the receiver's settings) says are the same come from `shared`, written once.
pub(crate) fn sync_noun_shared<K: PartialEq>(
    env: &Envelope<'_>,
    kind: crate::store::Kind,
    action_code: &str,
    n: &NounOut<'_>,
    shared: &mut Shared<K>,
    key: K,
) -> String {
    #[cfg(debug_assertions)]
    {
        let record = shared.record.get_or_insert_with(|| n.hub_id.to_string());
        debug_assert_eq!(record, n.hub_id, "one Shared serves one record");
    }
    let parts = shared.parts(key);
    action_document(
        env,
        ("Sync", tag!("Sync")),
        &[],
        kind,
        action_code,
        n,
        Some(parts),
    )
}

/// `Process<Noun>` `Add` asking the receiver (a system of record) to create the record and
/// answer with `Acknowledge<Noun>` (`acknowledgeCode="Always"`): how bodflow promotes an
/// account.
pub fn process_noun(env: &Envelope<'_>, kind: crate::store::Kind, n: &NounOut<'_>) -> String {
    action_document(
        env,
        ("Process", tag!("Process")),
        &[("acknowledgeCode", "Always")],
        kind,
        "Add",
        n,
        None,
    )
}

fn action_document(
    env: &Envelope<'_>,
    (verb, verb_tag): (&str, Tag),
    verb_attrs: &[(&str, &str)],
    kind: crate::store::Kind,
    action_code: &str,
    n: &NounOut<'_>,
    parts: Option<&mut Parts>,
) -> String {
    let root = [verb, kind.noun()].concat();
    let mut out = Out::new(&root);
    env.application_area(&mut out);
    out.open(tag!("DataArea"));
    out.open_with(verb_tag, verb_attrs);
    env.verb_ids(&mut out);
    out.open(tag!("ActionCriteria"));
    out.leaf_with(tag!("ActionExpression"), &[("actionCode", action_code)], "");
    out.close(tag!("ActionCriteria"));
    out.close(verb_tag);
    noun(&mut out, kind, n, parts);
    out.close(tag!("DataArea"));
    out.finish(&root)
}

/// The answer of an Acknowledge.
#[derive(Debug, Clone)]
pub enum Response<'a> {
    /// The record in the sender's terms.
    Accepted(NounOut<'a>),
    /// The problem, and the rejected noun's IDs as sent (every Acknowledge carries its noun).
    Rejected(Problem<'a>, Vec<OutId<'a>>),
}

/// `Acknowledge<Noun>` answering a Process.
pub fn acknowledge(
    env: &Envelope<'_>,
    kind: crate::store::Kind,
    original: &ApplicationArea,
    response: &Response<'_>,
) -> String {
    let root = ["Acknowledge", kind.noun()].concat();
    let mut out = Out::new(&root);
    env.application_area(&mut out);
    out.open(tag!("DataArea"));
    out.open(tag!("Acknowledge"));
    env.verb_ids(&mut out);
    original_area(&mut out, original);
    out.open(tag!("ResponseCriteria"));
    match response {
        Response::Accepted(_) => {
            out.leaf_with(
                tag!("ResponseExpression"),
                &[("actionCode", "Accepted")],
                "",
            );
        }
        Response::Rejected(p, _) => {
            out.leaf_with(
                tag!("ResponseExpression"),
                &[("actionCode", "Rejected")],
                "",
            );
            out.open(tag!("ChangeStatus"));
            out.leaf(tag!("Code"), "Rejected");
            out.leaf(tag!("Description"), p.message);
            out.leaf(tag!("ReasonCode"), p.code);
            out.close(tag!("ChangeStatus"));
        }
    }
    out.close(tag!("ResponseCriteria"));
    out.close(tag!("Acknowledge"));
    match response {
        Response::Accepted(n) => noun(&mut out, kind, n, None),
        Response::Rejected(_, ids) => {
            let (element, container) = match kind {
                crate::store::Kind::Account => (tag!("CustomerPartyMaster"), tag!("PartyIDs")),
                crate::store::Kind::Contact => (tag!("ContactMaster"), tag!("IDs")),
            };
            out.open(element);
            out.open(container);
            if ids.is_empty() {
                out.leaf(tag!("ID"), "");
            }
            for id in ids {
                id_element(&mut out, id);
            }
            out.close(container);
            out.close(element);
        }
    }
    out.close(tag!("DataArea"));
    out.finish(&root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bod::{parse, Limits};

    fn env() -> Envelope<'static> {
        Envelope {
            sender: "lid://bodflow.hub",
            bod_id: "bodflow:abc:1",
            creation: "2026-01-01T00:00:00Z",
            tenant: Some("ACME"),
            accounting_entity: None,
        }
    }

    #[test]
    fn characters_xml_forbids_become_replacement_characters_and_the_rest_stays() {
        let mut buf = String::new();
        push_escaped(
            &mut buf,
            "a\u{1}b\u{1b}[31m\tc\nd\re\u{fffe}\u{ffff}\u{e000}ü<'\"&>",
        );
        assert_eq!(
            buf,
            "a\u{fffd}b\u{fffd}[31m\tc\nd\re\u{fffd}\u{fffd}\u{e000}ü&lt;&apos;&quot;&amp;&gt;"
        );
        let mut plain = String::new();
        push_escaped(&mut plain, "Müller GmbH, Straße 1");
        assert_eq!(plain, "Müller GmbH, Straße 1");
        // A ConfirmBOD echoing such a message is well-formed.
        let xml = confirm_bod(
            &env(),
            &ApplicationArea::default(),
            &Confirmation::Failure(Problem {
                stage: "decode",
                code: "not_well_formed",
                message: "expected `</Logical\u{2}ID>`",
                path: None,
            }),
        );
        parse(xml.as_bytes(), Limits::default()).unwrap();
        assert!(!xml.contains('\u{2}'), "{xml}");
    }

    #[test]
    fn shared_noun_parts_give_the_same_documents_as_writing_each_alone() {
        let mut fields = Fields::default();
        fields.identity.name = Some("Acme & Sons".into());
        fields.identity.family_name = Some("Byron".into());
        fields.address = Some(HubAddress {
            lines: vec!["1 Main St".into(), "Floor 2".into()],
            city: Some("Leeds".into()),
            country: Some("GB".into()),
            ..Default::default()
        });
        fields.communication.emails = vec!["a@example.com".into()];
        fields.classification = vec!["Sales".into()];
        let receiver = |id: &'static str, country: &str, lang: &'static str| NounOut {
            ids: vec![OutId {
                value: id,
                lid: Some("lid://r"),
                variation: Some("3".into()),
                ..Default::default()
            }],
            fields: &fields,
            country: Some(country.to_string()),
            language: lang,
            employer: Some(OutId {
                value: id,
                lid: Some("lid://r"),
                ..Default::default()
            }),
            sales_person: None,
            hub_id: "X-1",
        };
        for kind in [crate::store::Kind::Account, crate::store::Kind::Contact] {
            let mut shared = Shared::new();
            // Two receivers share their key, a third differs in country format and language.
            for (id, country, lang) in [
                ("A1", "GB", "en-US"),
                ("B2", "GB", "en-US"),
                ("C3", "GBR", "de-DE"),
                ("D4", "GB", "en-US"),
            ] {
                let n = receiver(id, country, lang);
                let alone = sync_noun(&env(), kind, "Change", &n);
                let together =
                    sync_noun_shared(&env(), kind, "Change", &n, &mut shared, (country, lang));
                assert_eq!(together, alone, "{kind:?} to {id}");
                assert!(alone.contains(id) && alone.contains(country), "{alone}");
            }
            assert_eq!(shared.parts.len(), 2, "{kind:?}: one entry per key");
        }
    }

    #[test]
    fn confirm_bod_escapes_and_reads_back() {
        let original = ApplicationArea {
            logical_id: Some("lid://a".into()),
            creation: Some("2020".into()),
            bod_id: Some("x&y".into()),
            ..Default::default()
        };
        let xml = confirm_bod(
            &env(),
            &original,
            &Confirmation::Failure(Problem {
                stage: "validate",
                code: "missing_field",
                message: "Name: required <here>",
                path: Some("/A/B"),
            }),
        );
        assert!(
            xml.contains("x&amp;y") && xml.contains("&lt;here&gt;"),
            "{xml}"
        );
        let back = parse(xml.as_bytes(), Limits::default()).unwrap();
        assert_eq!((back.verb.as_str(), back.noun.as_str()), ("Confirm", "BOD"));
    }

    #[test]
    fn process_and_the_role_and_type_attributes_round_trip_through_the_reader() {
        let mut fields = Fields::default();
        fields.identity.name = Some("Acme".into());
        fields.commercial.account_type = Some("Customer".into());
        let n = NounOut {
            ids: vec![
                OutId {
                    value: "",
                    lid: Some("lid://erp"),
                    ..Default::default()
                },
                OutId {
                    value: "ACC-000001",
                    scheme_name: Some("bodflow.HubID"),
                    ..Default::default()
                },
            ],
            fields: &fields,
            country: None,
            language: "en-US",
            employer: None,
            sales_person: None,
            hub_id: "ACC-000001",
        };
        let xml = process_noun(&env(), crate::store::Kind::Account, &n);
        assert!(
            xml.contains(r#"<Process acknowledgeCode="Always">"#),
            "{xml}"
        );
        let back = parse(xml.as_bytes(), Limits::default()).unwrap();
        assert_eq!(
            (back.verb.as_str(), back.header.action_code.as_deref()),
            ("Process", Some("Add"))
        );
        assert_eq!(back.header.acknowledge_code.as_deref(), Some("Always"));
        let crate::bod::Noun::Account(p) = &back.nouns[0] else {
            panic!("party expected")
        };
        assert_eq!(p.account_type.as_deref(), Some("Customer"));
        assert_eq!(
            (p.ids[0].value.as_str(), p.ids[1].value.as_str()),
            ("", "ACC-000001")
        );

        let mut person = Fields::default();
        person.identity.family_name = Some("Byron".into());
        person.identity.relationship = Some("employee".into());
        let c = NounOut {
            fields: &person,
            ..n
        };
        let xml = sync_noun(&env(), crate::store::Kind::Contact, "Add", &c);
        let back = parse(xml.as_bytes(), Limits::default()).unwrap();
        let crate::bod::Noun::Contact(c) = &back.nouns[0] else {
            panic!("contact expected")
        };
        assert_eq!(c.relationship.as_deref(), Some("employee"));
    }

    #[test]
    fn sync_round_trips_through_the_reader() {
        let fields = Fields {
            identity: crate::store::Identity {
                name: Some("Acme".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let n = NounOut {
            ids: vec![OutId {
                value: "C1",
                variation: Some("3".into()),
                ..Default::default()
            }],
            fields: &fields,
            country: None,
            language: "en-US",
            employer: None,
            sales_person: None,
            hub_id: "ACC-000001",
        };
        let xml = sync_noun(&env(), crate::store::Kind::Account, "Change", &n);
        let back = parse(xml.as_bytes(), Limits::default()).unwrap();
        assert_eq!(back.root, "SyncCustomerPartyMaster");
        assert_eq!(back.header.action_code.as_deref(), Some("Change"));
        let crate::bod::Noun::Account(p) = &back.nouns[0] else {
            panic!("party expected")
        };
        assert_eq!(p.ids[0].variation.as_deref(), Some("3"));
    }
}
