//! Emit: turns decisions into outbox rows (ConfirmBOD, Acknowledge<Noun>, Sync<Noun>) inside
//! the store transaction that made them.
//!
//! Every emitted BOD gets a BODID derived from the inbound message id and its position among
//! that message's outputs, so a re-emit after a crash (the message
//! redelivered before its ack) is recognisably the same document.
//!
//! Outputs it decides not to write (a receiver that is inactive or whose outbound flow is off,
//! a ConfirmBOD the sender did not ask for or cannot be routed) are stated as `emit`
//! [`Decision`]s, so tracking can say why a document did not reach someone.
//!
//! Routing: replies (ConfirmBOD, Acknowledge) go to the inbound `reply_to` when given, else to
//! the sender's application; `Sync<Noun>` goes to each subscribed application. A reply for a
//! sender bodflow does not know is only written when `reply_to` names a destination: on
//! `bodflow.out` it would be unroutable.

use std::borrow::Cow;

use crate::bod::write::{self, Confirmation, Envelope, NounOut, OutId, Problem, Response};
use crate::bod::{is_plain_logical_id, ApplicationArea, MAX_LOGICAL_ID};
use crate::config::{Application, Config, DeleteMode, FieldGroup};
use crate::store::{Fields, HubRecord, Kind, OutboxRow, TxResult};

use super::validate::{MAX_CODE, MAX_ENTITY, MAX_ID};
use super::{country, Context, Decision, OutputReport, RejectedProcess, Rejection, Stage};

/// `schemeName` of an ID that is a bodflow hub ID rather than the receiver's own.
pub const HUB_ID_SCHEME: &str = "bodflow.HubID";

/// What the shared parts of a `Sync` noun depend on besides the record: the receiver's
/// country code for it, language, sales person (ID, role) and outbound field selection.
type SharedKey<'a> = (
    Option<String>,
    &'a str,
    Option<(&'a str, &'a str)>,
    Option<&'a [FieldGroup]>,
);

/// Collects the rows one document emits.
pub struct Emitter<'a> {
    config: &'a Config,
    ctx: &'a Context,
    digest: String,
    count: u32,
    outputs: Vec<OutputReport>,
    /// Decisions about outputs not written (who did not get a Sync or a ConfirmBOD, and why).
    notes: Vec<Decision>,
}

impl<'a> Emitter<'a> {
    /// When the document being applied was received (milliseconds since the Unix epoch).
    pub fn received_ms(&self) -> u64 {
        self.ctx.received_ms
    }

    pub fn new(config: &'a Config, ctx: &'a Context) -> Emitter<'a> {
        // The first run's BODIDs derive from the message id alone (a redelivery after a
        // crash writes the same ones); a retry's from its run number too.
        let digest = match ctx.run {
            0 => blake3::hash(ctx.message_id.as_bytes()),
            run => blake3::hash(format!("{}#{run}", ctx.message_id).as_bytes()),
        };
        let digest = digest.to_hex()[..20].to_string();
        Emitter {
            config,
            ctx,
            digest,
            count: 0,
            outputs: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// The decisions about outputs not written, collected since the last call.
    pub fn take_notes(&mut self) -> Vec<Decision> {
        std::mem::take(&mut self.notes)
    }

    /// The outputs written, and the decisions about the ones not written.
    pub fn finish(self) -> (Vec<OutputReport>, Vec<Decision>) {
        (self.outputs, self.notes)
    }

    /// Continues the BODID numbering of an earlier emitter of the same message id (a resync
    /// writes its rows over several transactions).
    pub fn numbered_from(mut self, count: u32) -> Self {
        self.count = count;
        self
    }

    /// BODIDs numbered so far.
    pub fn emitted(&self) -> u32 {
        self.count
    }

    pub fn config(&self) -> &'a Config {
        self.config
    }

    /// The delivery this emitter answers.
    pub fn context(&self) -> &'a Context {
        self.ctx
    }

    /// States why an output was not written (stage `emit`).
    fn note(&mut self, text: String) {
        self.notes.push(Decision::new(Stage::Emit, text));
    }

    fn next_bod_id(&mut self) -> String {
        self.count += 1;
        let mut id = String::with_capacity(40);
        id.push_str("bodflow:");
        id.push_str(&self.digest);
        id.push(':');
        id.push_str(&self.count.to_string());
        id
    }

    fn tenant(&self) -> Option<&'a str> {
        self.config
            .hub
            .tenant
            .as_deref()
            .or(self.ctx.tenant.as_deref())
    }

    /// Every row of the document continues its trace (bodflow's span as the parent).
    fn traceparent(&self) -> Option<String> {
        self.ctx.trace.as_ref().map(|t| t.traceparent())
    }

    fn tracestate(&self) -> Option<String> {
        self.ctx.trace.as_ref().and_then(|t| t.state.clone())
    }

    fn push(&mut self, tx: &crate::store::Tx<'_>, row: OutboxRow) -> TxResult<()> {
        let seq = tx.push_outbox(&row)?;
        self.outputs.push(OutputReport {
            kind: row.kind,
            to: row.reply_to.unwrap_or(row.to),
            file: None,
            seq,
            bod_id: row.bod_id,
        });
        Ok(())
    }

    /// Where a reply to the sender goes: (routing logical ID, explicit reply queue).
    ///
    /// Not the `reply_to` of a released document whose sender is not (or no longer) an
    /// application: that queue was named by a delivery taken long ago, most likely by a client
    /// gone since, and with no application queue to fall back on, the reply would only end in
    /// `bodflow.dead` as `unroutable` (and raise its alert) after its returns.
    fn reply_route(&self, app: Option<usize>) -> Option<(String, Option<String>)> {
        let to = app.map(|i| self.config.applications[i].logical_id.clone());
        let released = self.ctx.unpark.is_some();
        match (&self.ctx.reply_to, to) {
            (Some(_), None) if released => None,
            (Some(r), to) => Some((to.unwrap_or_default(), Some(r.clone()))),
            (None, Some(to)) => Some((to, None)),
            (None, None) => None,
        }
    }

    fn reply(
        &mut self,
        tx: &crate::store::Tx<'_>,
        app: Option<usize>,
        kind: String,
        document_name: String,
        xml: String,
        bod_id: String,
    ) -> TxResult<()> {
        let Some((to, reply_to)) = self.reply_route(app) else {
            return Ok(());
        };
        let row = OutboxRow {
            kind,
            to,
            reply_to,
            bod_id,
            correlation_id: self.ctx.message_id.clone(),
            // An RPC request (a `reply_to` and a `correlation_id`) gets its reply under its own
            // correlation id: the client matches replies on it.
            reply_correlation_id: self
                .ctx
                .reply_to
                .as_ref()
                .and(self.ctx.envelope.correlation_id.clone()),
            document_name,
            tenant: self.tenant().map(str::to_string),
            traceparent: self.traceparent(),
            tracestate: self.tracestate(),
            tracked: None,
            variation: None,
            xml,
            dead_letter: None,
        };
        self.push(tx, row)
    }

    fn original(&self) -> ApplicationArea {
        self.ctx.area.clone().unwrap_or_default()
    }

    fn confirmation_code(&self) -> &str {
        self.ctx
            .area
            .as_ref()
            .and_then(|a| a.confirmation_code.as_deref())
            .unwrap_or("OnError")
    }

    /// ConfirmBOD (per ConfirmationCode) and, for a Process, Acknowledge Rejected (per
    /// acknowledgeCode) for a refused document.
    pub fn rejection(
        &mut self,
        tx: &crate::store::Tx<'_>,
        app: Option<usize>,
        rejection: &Rejection,
        process: Option<&RejectedProcess>,
    ) -> TxResult<()> {
        let problem = Problem {
            stage: rejection.stage.as_str(),
            code: rejection.code,
            message: &rejection.message,
            path: rejection.path.as_deref(),
        };
        if self.confirmation_code() == "Never" {
            self.notes.push(Decision::new(
                Stage::Emit,
                "no ConfirmBOD: the sender's ConfirmationCode is Never",
            ));
        } else if self.reply_route(app).is_none() {
            self.notes.push(Decision::new(
                Stage::Emit,
                "no ConfirmBOD: the sender is unknown or not configured, and the delivery has no reply_to",
            ));
        } else {
            let bod_id = self.next_bod_id();
            let xml = write::confirm_bod(
                &self.envelope(&bod_id, None),
                &self.original(),
                &Confirmation::Failure(problem.clone()),
            );
            self.reply(
                tx,
                app,
                "ConfirmBOD".into(),
                "Confirm.BOD".into(),
                xml,
                bod_id,
            )?;
        }
        if let Some(p) = process {
            if p.acknowledge_code.as_deref() != Some("Never") {
                let kind = p.kind;
                let ids = p
                    .ids
                    .iter()
                    // Echo only what is well-formed for the schema: the document was refused,
                    // possibly for exactly these values.
                    .map(|i| OutId {
                        value: if i.value.chars().count() <= MAX_ID
                            && !i.value.chars().any(char::is_control)
                        {
                            &i.value
                        } else {
                            ""
                        },
                        accounting_entity: echo(&i.accounting_entity, MAX_ENTITY),
                        lid: echo(&i.lid, MAX_LOGICAL_ID).filter(|l| is_plain_logical_id(l)),
                        variation: i.variation.clone().filter(|v| {
                            !v.is_empty() && v.len() <= 22 && v.bytes().all(|b| b.is_ascii_digit())
                        }),
                        scheme_name: echo(&i.scheme_name, MAX_CODE),
                    })
                    .collect();
                let bod_id = self.next_bod_id();
                let xml = write::acknowledge(
                    &self.envelope(&bod_id, None),
                    kind,
                    &self.original(),
                    &Response::Rejected(problem, ids),
                );
                self.reply(
                    tx,
                    app,
                    ["Acknowledge", kind.noun()].concat(),
                    ["Acknowledge.", kind.noun()].concat(),
                    xml,
                    bod_id,
                )?;
            }
        }
        Ok(())
    }

    /// ConfirmBOD success for senders asking `Always`.
    pub fn success(
        &mut self,
        tx: &crate::store::Tx<'_>,
        app: usize,
        outcome: &str,
        records: &[String],
    ) -> TxResult<()> {
        if self.confirmation_code() != "Always" {
            return Ok(());
        }
        let bod_id = self.next_bod_id();
        let xml = write::confirm_bod(
            &self.envelope(&bod_id, None),
            &self.original(),
            &Confirmation::Success {
                outcome,
                records: records.iter().map(String::as_str).collect(),
            },
        );
        self.reply(
            tx,
            Some(app),
            "ConfirmBOD".into(),
            "Confirm.BOD".into(),
            xml,
            bod_id,
        )
    }

    /// Acknowledge Accepted for a Process: the record in the sender's terms, its assigned ID
    /// first.
    pub fn accepted(
        &mut self,
        tx: &crate::store::Tx<'_>,
        app: usize,
        record: &HubRecord,
        ack_code: Option<&str>,
    ) -> TxResult<()> {
        if matches!(ack_code, Some("Never" | "OnError")) {
            return Ok(());
        }
        let application = &self.config.applications[app];
        let xref = record.xref_for(&application.logical_id);
        let ids = vec![OutId {
            value: xref.map(|x| x.id.as_str()).unwrap_or(&record.id),
            accounting_entity: xref.map(|x| x.accounting_entity.as_str()),
            lid: Some(self.config.hub.logical_id.as_str()),
            variation: Some(record.revision.to_string()),
            scheme_name: None,
        }];
        let country = receiver_country(record, application);
        let noun = NounOut {
            ids,
            fields: &record.fields,
            country,
            language: &application.language_code,
            employer: None,
            sales_person: None,
            hub_id: &record.id,
        };
        let bod_id = self.next_bod_id();
        let xml = write::acknowledge(
            &self.envelope(&bod_id, xref.map(|x| x.accounting_entity.as_str())),
            record.kind,
            &self.original(),
            &Response::Accepted(noun),
        );
        self.reply(
            tx,
            Some(app),
            ["Acknowledge", record.kind.noun()].concat(),
            ["Acknowledge.", record.kind.noun()].concat(),
            xml,
            bod_id,
        )
    }

    fn envelope<'e>(&'e self, bod_id: &'e str, accounting_entity: Option<&'e str>) -> Envelope<'e> {
        Envelope {
            sender: &self.config.hub.logical_id,
            bod_id,
            creation: &self.ctx.now,
            tenant: self.tenant(),
            accounting_entity: accounting_entity.filter(|a| !a.is_empty()),
        }
    }

    /// `Sync<Noun>` of `record` to every application subscribed to it, except `sender`.
    /// `deleted` says the record was just deleted (soft or hard): only applications that know
    /// it and take deletes hear of it.
    pub fn fan_out(
        &mut self,
        tx: &crate::store::Tx<'_>,
        sender: usize,
        record: &HubRecord,
        deleted: bool,
    ) -> TxResult<()> {
        if record.placeholder || (record.deleted && !deleted) {
            return Ok(());
        }
        let employer = self.employer_of(tx, record)?;
        let mut shared = write::Shared::new();
        for (i, app) in self.config.applications.iter().enumerate() {
            if i == sender {
                continue;
            }
            if !app.active {
                self.note(format!("not sent to {}: inactive", app.name));
                continue;
            }
            self.sync_to(tx, app, record, employer.as_ref(), deleted, &mut shared)?;
        }
        Ok(())
    }

    /// The account a contact belongs to (what its `EmployerReference` names), if any.
    pub fn employer_of(
        &self,
        tx: &crate::store::Tx<'_>,
        record: &HubRecord,
    ) -> TxResult<Option<HubRecord>> {
        match (&record.account, record.kind) {
            (Some(acc), Kind::Contact) => tx.record(acc),
            _ => Ok(None),
        }
    }

    /// `Sync<Noun>` of `record` to one application, if its outbound flow takes it: in its
    /// cross-reference ID (`Change`; empty with `Add` for a record it has never seen), its
    /// country format and language, its outbound `fields`. Returns whether a row was written.
    /// Used by [`Emitter::fan_out`] and by resync, so both send exactly the same documents.
    /// `shared` holds the parts of `record`'s noun already written for another receiver with
    /// the same settings (a new one for a single receiver; never one of another record).
    pub(crate) fn sync_to(
        &mut self,
        tx: &crate::store::Tx<'_>,
        app: &'a Application,
        record: &HubRecord,
        employer: Option<&HubRecord>,
        deleted: bool,
        shared: &mut write::Shared<SharedKey<'a>>,
    ) -> TxResult<bool> {
        if !record.unlinked.is_empty() && record.unlinked.contains(&app.logical_id) {
            self.note(format!(
                "not sent to {}: unlinked from {} by an operator",
                app.name, record.id
            ));
            return Ok(false);
        }
        let outbound = app.flows_for(record.kind.noun()).outbound;
        let xref = record.xref_for(&app.logical_id);
        // The system of record learns of accounts by promotion (a Process it answers with its
        // own number), never by a Sync Add.
        if record.kind == Kind::Account
            && xref.is_none()
            && self
                .config
                .hub
                .promotion
                .as_ref()
                .is_some_and(|p| p.system_of_record == app.logical_id)
        {
            if !deleted {
                self.note(format!(
                    "not sent to {}: the system of record receives accounts by promotion",
                    app.name
                ));
            }
            return Ok(false);
        }
        // A contact goes only to applications whose required classification it has (a contact
        // that loses it stops flowing; deletes still reach those that know it).
        if let (Kind::Contact, Some(code), false) =
            (record.kind, app.require_classification.as_deref(), deleted)
        {
            if !Application::has_classification(&record.fields.classification, code) {
                self.note(format!(
                    "not sent to {}: contact not classified {code} (require_classification)",
                    app.name
                ));
                return Ok(false);
            }
        }
        let action = match (deleted, xref) {
            // A receiver that never heard of a deleted record is not worth a word.
            (true, None) => return Ok(false),
            (true, Some(_)) => (outbound.delete.0 != DeleteMode::Off)
                .then_some("Delete")
                .ok_or("deletes"),
            (false, Some(_)) => outbound.update.then_some("Change").ok_or("updates"),
            (false, None) => outbound.create.then_some("Add").ok_or("creates"),
        };
        let action = match action {
            Ok(action) => action,
            Err(switch) => {
                self.note(format!("not sent to {}: outbound {switch} off", app.name));
                return Ok(false);
            }
        };
        // The field selection borrowed from the configuration: it both selects the fields
        // and keys the parts shared with other receivers, so the two cannot disagree.
        let selection = app
            .flows
            .get(record.kind.noun())
            .and_then(|f| f.outbound.fields.as_deref());
        debug_assert_eq!(selection, outbound.fields.as_deref());
        let fields = select_fields(&record.fields, selection);
        let ids = vec![OutId {
            value: xref.map(|x| x.id.as_str()).unwrap_or(""),
            accounting_entity: xref.map(|x| x.accounting_entity.as_str()),
            lid: Some(app.logical_id.as_str()),
            variation: Some(record.revision.to_string()),
            scheme_name: None,
        }];
        // The receiver's ID of the account; for an account it was only told about (its
        // Add went out with an empty ID), the hub ID, marked as such.
        let employer_id = employer.map(|acc| match acc.xref_for(&app.logical_id) {
            Some(x) => OutId {
                value: x.id.as_str(),
                accounting_entity: Some(x.accounting_entity.as_str()),
                lid: Some(app.logical_id.as_str()),
                variation: None,
                scheme_name: None,
            },
            None => OutId {
                value: acc.id.as_str(),
                accounting_entity: None,
                lid: Some(self.config.hub.logical_id.as_str()),
                variation: None,
                scheme_name: Some(HUB_ID_SCHEME),
            },
        });
        let sales_person = self.sales_person(app, record);
        let noun = NounOut {
            ids,
            fields: &fields,
            country: receiver_country(record, app),
            language: &app.language_code,
            employer: employer_id,
            sales_person,
            hub_id: &record.id,
        };
        let bod_id = self.next_bod_id();
        // Everything the receiver-independent parts of the noun depend on besides the record.
        let key = (
            noun.country.clone(),
            app.language_code.as_str(),
            sales_person,
            selection,
        );
        let xml = write::sync_noun_shared(
            &self.envelope(&bod_id, xref.map(|x| x.accounting_entity.as_str())),
            record.kind,
            action,
            &noun,
            shared,
            key,
        );
        let row = OutboxRow {
            kind: ["Sync", record.kind.noun()].concat(),
            to: app.logical_id.clone(),
            reply_to: None,
            bod_id,
            correlation_id: self.ctx.message_id.clone(),
            reply_correlation_id: None,
            document_name: ["Sync.", record.kind.noun()].concat(),
            tenant: self.tenant().map(str::to_string),
            traceparent: self.traceparent(),
            tracestate: self.tracestate(),
            tracked: None,
            variation: Some(record.revision.to_string()),
            xml,
            dead_letter: None,
        };
        self.push(tx, row)?;
        Ok(true)
    }
}

impl<'a> Emitter<'a> {
    /// The record's owner as `app` knows sales persons: (personnel number, its role).
    fn sales_person(&self, app: &'a Application, record: &HubRecord) -> Option<(&'a str, &'a str)> {
        match (&app.sales_person_role, record.kind) {
            (Some(role), Kind::Account) => record
                .owner
                .owner
                .as_deref()
                .and_then(|o| self.config.user(o))
                .and_then(|u| u.personnel_number.as_deref())
                .map(|p| (p, role.as_str())),
            _ => None,
        }
    }

    /// `ProcessCustomerPartyMaster` `Add` of `record` to application `to` (the system of
    /// record): an empty first ID asks it to assign its number, the second carries the hub
    /// ID. Returns the Process's BODID, which its Acknowledge quotes.
    pub fn process(
        &mut self,
        tx: &crate::store::Tx<'_>,
        to: usize,
        record: &HubRecord,
        accounting_entity: Option<&str>,
    ) -> TxResult<String> {
        let config = self.config;
        let app = &config.applications[to];
        let outbound = app.flows_for(record.kind.noun()).outbound;
        let fields = select_fields(&record.fields, outbound.fields.as_deref());
        let ids = vec![
            OutId {
                value: "",
                accounting_entity,
                lid: Some(app.logical_id.as_str()),
                variation: None,
                scheme_name: None,
            },
            OutId {
                value: record.id.as_str(),
                accounting_entity: None,
                lid: Some(config.hub.logical_id.as_str()),
                variation: Some(record.revision.to_string()),
                scheme_name: Some(HUB_ID_SCHEME),
            },
        ];
        let noun = NounOut {
            ids,
            fields: &fields,
            country: receiver_country(record, app),
            language: &app.language_code,
            employer: None,
            sales_person: self.sales_person(app, record),
            hub_id: &record.id,
        };
        let bod_id = self.next_bod_id();
        let xml = write::process_noun(
            &self.envelope(&bod_id, accounting_entity),
            record.kind,
            &noun,
        );
        let row = OutboxRow {
            kind: ["Process", record.kind.noun()].concat(),
            to: app.logical_id.clone(),
            reply_to: None,
            bod_id: bod_id.clone(),
            correlation_id: self.ctx.message_id.clone(),
            reply_correlation_id: None,
            document_name: ["Process.", record.kind.noun()].concat(),
            tenant: self.tenant().map(str::to_string),
            traceparent: self.traceparent(),
            tracestate: self.tracestate(),
            tracked: None,
            variation: Some(record.revision.to_string()),
            xml,
            dead_letter: None,
        };
        self.push(tx, row)?;
        Ok(bod_id)
    }
}

fn receiver_country(record: &HubRecord, app: &Application) -> Option<String> {
    record
        .fields
        .address
        .as_ref()
        .and_then(|a| a.country.as_deref())
        .map(|iso| country::from_iso2(iso, app))
}

/// The record's fields limited to an outbound `fields` selection (identity always goes: a
/// receiver cannot place a record without it).
fn select_fields<'f>(fields: &'f Fields, selection: Option<&[FieldGroup]>) -> Cow<'f, Fields> {
    let Some(groups) = selection else {
        return Cow::Borrowed(fields);
    };
    let has = |g| groups.contains(&g);
    Cow::Owned(Fields {
        identity: fields.identity.clone(),
        address: if has(FieldGroup::Address) {
            fields.address.clone()
        } else {
            None
        },
        communication: if has(FieldGroup::Communication) {
            fields.communication.clone()
        } else {
            Default::default()
        },
        commercial: if has(FieldGroup::Commercial) {
            fields.commercial.clone()
        } else {
            Default::default()
        },
        classification: if has(FieldGroup::Classification) {
            fields.classification.clone()
        } else {
            Vec::new()
        },
        user_area: Vec::new(),
    })
}

/// Reads Sender/LogicalID, ConfirmationCode and BODID out of a document that is not
/// well-formed, so its sender can still be answered. Looks only at the first 64 KiB and takes
/// an element's text only when it is short and plain.
pub fn sniff_area(bytes: &[u8]) -> Option<ApplicationArea> {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(64 * 1024)]);
    let logical_id = sniff(&head, "LogicalID")?;
    Some(ApplicationArea {
        logical_id: Some(logical_id),
        component_id: None,
        confirmation_code: sniff(&head, "ConfirmationCode"),
        creation: sniff(&head, "CreationDateTime"),
        bod_id: sniff(&head, "BODID"),
    })
}

fn sniff(text: &str, element: &str) -> Option<String> {
    let mut from = 0;
    while let Some(at) = text[from..].find(element) {
        let start = from + at;
        from = start + element.len();
        let before = text[..start].chars().last();
        if !matches!(before, Some('<' | ':')) {
            continue;
        }
        let rest = &text[from..];
        let open_end = rest.find('>')?;
        let tag = &rest[..open_end];
        if tag.ends_with('/') || tag.contains('<') {
            continue;
        }
        let body = &rest[open_end + 1..];
        let close = body.find('<')?;
        let value = body[..close].trim();
        if !value.is_empty() && value.len() <= 255 && !value.contains('&') {
            return Some(value.to_string());
        }
    }
    None
}

/// An attribute of a refused document's ID, echoed in its Acknowledge only when the schema
/// takes it (at most `max` characters, not blank, no control characters): the document may
/// have been refused for exactly this value.
fn echo(value: &Option<String>, max: usize) -> Option<&str> {
    value.as_deref().filter(|v| {
        !v.trim().is_empty() && v.chars().count() <= max && !v.chars().any(char::is_control)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_the_sender_of_a_truncated_document() {
        let doc = b"<SyncCustomerPartyMaster><ApplicationArea><Sender><oa:LogicalID>lid://a</oa:LogicalID>\
            <ConfirmationCode>Always</ConfirmationCode></Sender><BODID>b-1</BODID></ApplicationArea><DataArea><Sy";
        let area = sniff_area(doc).unwrap();
        assert_eq!(area.logical_id.as_deref(), Some("lid://a"));
        assert_eq!(area.confirmation_code.as_deref(), Some("Always"));
        assert_eq!(area.bod_id.as_deref(), Some("b-1"));
        assert!(sniff_area(b"not xml at all").is_none());
    }
}
