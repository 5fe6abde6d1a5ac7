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

    fn open(&mut self, name: &str) {
        self.open_with(name, &[]);
    }

    fn open_with(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.indent();
        self.buf.push('<');
        self.buf.push_str(name);
        self.attrs(attrs);
        self.buf.push_str(">\n");
        self.depth += 1;
    }

    fn close(&mut self, name: &str) {
        self.depth -= 1;
        self.indent();
        self.end_tag(name);
    }

    fn end_tag(&mut self, name: &str) {
        self.buf.push_str("</");
        self.buf.push_str(name);
        self.buf.push_str(">\n");
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

    fn leaf_with(&mut self, name: &str, attrs: &[(&str, &str)], text: &str) {
        self.indent();
        self.buf.push('<');
        self.buf.push_str(name);
        self.attrs(attrs);
        if text.is_empty() {
            self.buf.push_str("/>\n");
        } else {
            self.buf.push('>');
            push_escaped(&mut self.buf, text);
            self.end_tag(name);
        }
    }

    fn leaf(&mut self, name: &str, text: &str) {
        self.leaf_with(name, &[], text);
    }

    fn opt(&mut self, name: &str, text: Option<&str>) {
        if let Some(t) = text.filter(|t| !t.is_empty()) {
            self.leaf(name, t);
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
        self.depth = 0;
        self.end_tag(root);
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
        out.open("ApplicationArea");
        out.open("Sender");
        out.leaf("LogicalID", self.sender);
        out.leaf("ComponentID", "bodflow");
        // bodflow never asks receivers for confirmations of its own replies.
        out.leaf("ConfirmationCode", "Never");
        out.close("Sender");
        out.leaf("CreationDateTime", self.creation);
        out.leaf("BODID", self.bod_id);
        out.close("ApplicationArea");
    }

    fn verb_ids(&self, out: &mut Out) {
        out.opt("TenantID", self.tenant);
        out.opt("AccountingEntityID", self.accounting_entity);
    }
}

fn original_area(out: &mut Out, area: &ApplicationArea) {
    out.open("OriginalApplicationArea");
    if area.logical_id.is_some() || area.component_id.is_some() {
        out.open("Sender");
        out.opt("LogicalID", area.logical_id.as_deref());
        out.opt("ComponentID", area.component_id.as_deref());
        out.opt("ConfirmationCode", area.confirmation_code.as_deref());
        out.close("Sender");
    }
    // Required by the schema; an absent original time is written empty rather than invented.
    out.leaf("CreationDateTime", area.creation.as_deref().unwrap_or(""));
    out.opt("BODID", area.bod_id.as_deref());
    out.close("OriginalApplicationArea");
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
    out.open("DataArea");
    out.open("Confirm");
    env.verb_ids(&mut out);
    out.close("Confirm");
    out.open("BOD");
    original_area(&mut out, original);
    match what {
        Confirmation::Failure(p) => {
            out.open("BODFailureMessage");
            out.open("ErrorProcessMessage");
            out.leaf("Description", p.message);
            out.opt("Note", p.path);
            out.leaf("Type", p.stage);
            out.leaf("ReasonCode", p.code);
            out.close("ErrorProcessMessage");
            out.close("BODFailureMessage");
        }
        Confirmation::Success { outcome, records } => {
            out.open("BODSuccessMessage");
            out.open("NounSuccessMessage");
            if records.is_empty() {
                out.open("ProcessMessage");
                out.leaf("Description", outcome);
                out.close("ProcessMessage");
            }
            for r in records {
                out.open("ProcessMessage");
                out.leaf("ID", r);
                out.leaf("Description", outcome);
                out.close("ProcessMessage");
            }
            out.close("NounSuccessMessage");
            out.close("BODSuccessMessage");
        }
    }
    out.close("BOD");
    out.close("DataArea");
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
    out.leaf_with("ID", &attrs[..n], id.value);
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
pub struct Shared<K> {
    parts: Vec<(K, Parts)>,
}

/// The receiver-independent runs of a noun: for an account, everything after its IDs; for a
/// contact, the run between its IDs and its `EmployerReference`, and the run after it.
type Parts = [Option<String>; 2];

impl<K: PartialEq> Shared<K> {
    pub fn new() -> Shared<K> {
        Shared { parts: Vec::new() }
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
    out.open("Address");
    for (i, line) in a.lines.iter().enumerate() {
        let seq = SEQUENCES
            .get(i)
            .map_or_else(|| Cow::Owned((i + 1).to_string()), |s| Cow::Borrowed(*s));
        out.leaf_with("AddressLine", &[("sequence", &seq)], line);
    }
    out.opt("CityName", a.city.as_deref());
    out.opt("CountrySubDivisionCode", a.subdivision.as_deref());
    out.opt("CountrySubDivision2Code", a.subdivision2.as_deref());
    out.opt("CountryCode", country);
    out.opt("PostalCode", a.postal_code.as_deref());
    out.close("Address");
}

fn classification(out: &mut Out, codes: &[String]) {
    if codes.is_empty() {
        return;
    }
    out.open("Classification");
    out.open("Codes");
    for c in codes {
        out.leaf("Code", c);
    }
    out.close("Codes");
    out.close("Classification");
}

fn user_area(out: &mut Out, hub_id: &str) {
    out.open("UserArea");
    out.open("Property");
    out.leaf_with(
        "NameValue",
        &[("name", "bodflow.HubID"), ("type", "String")],
        hub_id,
    );
    out.close("Property");
    out.close("UserArea");
}

fn party(out: &mut Out, n: &NounOut<'_>, parts: Option<&mut Parts>) {
    let f = n.fields;
    match f.commercial.account_type.as_deref() {
        Some(role) => out.open_with("CustomerPartyMaster", &[("role", role)]),
        None => out.open("CustomerPartyMaster"),
    }
    out.open("PartyIDs");
    for id in &n.ids {
        id_element(out, id);
    }
    out.close("PartyIDs");
    let [rest, _] = parts.map_or([None, None], |[a, b]| [Some(a), Some(b)]);
    out.shared(rest, |out| party_rest(out, n));
    out.close("CustomerPartyMaster");
}

/// An account after its IDs (all of it the same for receivers with the same settings).
fn party_rest(out: &mut Out, n: &NounOut<'_>) {
    let f = n.fields;
    if let Some(name) = f.identity.name.as_deref() {
        out.leaf_with("Name", &[("languageID", n.language)], name);
    }
    if let Some(num) = f.identity.account_number.as_deref() {
        out.open("AccountIDs");
        out.leaf("ID", num);
        out.close("AccountIDs");
    }
    out.opt("CurrencyCode", f.commercial.currency.as_deref());
    if let Some(status) = f.identity.status.as_deref() {
        out.open("Status");
        out.leaf("Code", status);
        out.close("Status");
    }
    out.opt("PaymentTermID", f.commercial.payment_term.as_deref());
    classification(out, &f.classification);
    if let Some((id, role)) = n.sales_person {
        out.open("SalesPersonReference");
        out.open("IDs");
        out.leaf("ID", id);
        out.close("IDs");
        out.leaf("SalesPersonRole", role);
        out.close("SalesPersonReference");
    }
    if let Some(a) = &f.address {
        out.open("Location");
        address(out, a, n.country.as_deref());
        out.close("Location");
    }
    communications(out, &f.communication, "Communication");
    user_area(out, n.hub_id);
}

fn communications(out: &mut Out, c: &Communication, element: &str) {
    for p in &c.phones {
        out.open(element);
        out.leaf("ChannelCode", "Phone");
        out.opt("UseCode", p.use_code.as_deref());
        out.leaf("DialNumber", &p.number);
        out.close(element);
    }
    for e in &c.emails {
        out.open(element);
        out.leaf("ChannelCode", "EMail");
        out.leaf("URI", e);
        out.close(element);
    }
    if let Some(w) = c.web.as_deref() {
        out.open(element);
        out.leaf("ChannelCode", "Web Site");
        out.leaf("URI", w);
        out.close(element);
    }
}

fn contact(out: &mut Out, n: &NounOut<'_>, parts: Option<&mut Parts>) {
    let f = n.fields;
    match f.identity.relationship.as_deref() {
        Some(rel) => out.open_with("ContactMaster", &[("type", rel)]),
        None => out.open("ContactMaster"),
    }
    out.open("IDs");
    for id in &n.ids {
        id_element(out, id);
    }
    out.close("IDs");
    let [details, rest] = parts.map_or([None, None], |[a, b]| [Some(a), Some(b)]);
    out.shared(details, |out| {
        if let Some(name) = f.identity.name.as_deref() {
            out.leaf_with("Name", &[("languageID", n.language)], name);
        }
        out.opt("GivenName", f.identity.given_name.as_deref());
        out.opt("FamilyName", f.identity.family_name.as_deref());
        out.opt("JobTitle", f.identity.job_title.as_deref());
        communications(out, &f.communication, "CommunicationDetail");
        if let Some(a) = &f.address {
            out.open("CommunicationDetail");
            address(out, a, n.country.as_deref());
            out.close("CommunicationDetail");
        }
    });
    if let Some(emp) = &n.employer {
        out.open("EmployerReference");
        out.open("DocumentID");
        id_element(out, emp);
        out.close("DocumentID");
        out.close("EmployerReference");
    }
    out.shared(rest, |out| {
        classification(out, &f.classification);
        if let Some(status) = f.identity.status.as_deref() {
            out.open("Status");
            out.leaf("Code", status);
            out.close("Status");
        }
        user_area(out, n.hub_id);
    });
    out.close("ContactMaster");
}

fn noun(out: &mut Out, kind: crate::store::Kind, n: &NounOut<'_>, parts: Option<&mut Parts>) {
    match kind {
        crate::store::Kind::Account => party(out, n, parts),
        crate::store::Kind::Contact => contact(out, n, parts),
    }
}

/// `Sync<Noun>` (or `Process<Noun>`) with an action code (`Add`, `Change`, `Delete`).
pub fn sync_noun(
    env: &Envelope<'_>,
    verb: &str,
    kind: crate::store::Kind,
    action_code: &str,
    n: &NounOut<'_>,
) -> String {
    action_document(env, verb, &[], kind, action_code, n, None)
}

/// [`sync_noun`] for one of several receivers of the same record: the parts of the noun
/// that `key` (the receiver's settings) says are the same come from `shared`, written once.
pub fn sync_noun_shared<K: PartialEq>(
    env: &Envelope<'_>,
    kind: crate::store::Kind,
    action_code: &str,
    n: &NounOut<'_>,
    shared: &mut Shared<K>,
    key: K,
) -> String {
    let parts = shared.parts(key);
    action_document(env, "Sync", &[], kind, action_code, n, Some(parts))
}

/// `Process<Noun>` `Add` asking the receiver (a system of record) to create the record and
/// answer with `Acknowledge<Noun>` (`acknowledgeCode="Always"`): how bodflow promotes an
/// account.
pub fn process_noun(env: &Envelope<'_>, kind: crate::store::Kind, n: &NounOut<'_>) -> String {
    action_document(
        env,
        "Process",
        &[("acknowledgeCode", "Always")],
        kind,
        "Add",
        n,
        None,
    )
}

fn action_document(
    env: &Envelope<'_>,
    verb: &str,
    verb_attrs: &[(&str, &str)],
    kind: crate::store::Kind,
    action_code: &str,
    n: &NounOut<'_>,
    parts: Option<&mut Parts>,
) -> String {
    let root = [verb, kind.noun()].concat();
    let mut out = Out::new(&root);
    env.application_area(&mut out);
    out.open("DataArea");
    out.open_with(verb, verb_attrs);
    env.verb_ids(&mut out);
    out.open("ActionCriteria");
    out.leaf_with("ActionExpression", &[("actionCode", action_code)], "");
    out.close("ActionCriteria");
    out.close(verb);
    noun(&mut out, kind, n, parts);
    out.close("DataArea");
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
    out.open("DataArea");
    out.open("Acknowledge");
    env.verb_ids(&mut out);
    original_area(&mut out, original);
    out.open("ResponseCriteria");
    match response {
        Response::Accepted(_) => {
            out.leaf_with("ResponseExpression", &[("actionCode", "Accepted")], "");
        }
        Response::Rejected(p, _) => {
            out.leaf_with("ResponseExpression", &[("actionCode", "Rejected")], "");
            out.open("ChangeStatus");
            out.leaf("Code", "Rejected");
            out.leaf("Description", p.message);
            out.leaf("ReasonCode", p.code);
            out.close("ChangeStatus");
        }
    }
    out.close("ResponseCriteria");
    out.close("Acknowledge");
    match response {
        Response::Accepted(n) => noun(&mut out, kind, n, None),
        Response::Rejected(_, ids) => {
            let (element, container) = match kind {
                crate::store::Kind::Account => ("CustomerPartyMaster", "PartyIDs"),
                crate::store::Kind::Contact => ("ContactMaster", "IDs"),
            };
            out.open(element);
            out.open(container);
            if ids.is_empty() {
                out.leaf("ID", "");
            }
            for id in ids {
                id_element(&mut out, id);
            }
            out.close(container);
            out.close(element);
        }
    }
    out.close("DataArea");
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
                let alone = sync_noun(&env(), "Sync", kind, "Change", &n);
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
        let xml = sync_noun(&env(), "Sync", crate::store::Kind::Contact, "Add", &c);
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
        let xml = sync_noun(&env(), "Sync", crate::store::Kind::Account, "Change", &n);
        let back = parse(xml.as_bytes(), Limits::default()).unwrap();
        assert_eq!(back.root, "SyncCustomerPartyMaster");
        assert_eq!(back.header.action_code.as_deref(), Some("Change"));
        let crate::bod::Noun::Account(p) = &back.nouns[0] else {
            panic!("party expected")
        };
        assert_eq!(p.ids[0].variation.as_deref(), Some("3"));
    }
}
