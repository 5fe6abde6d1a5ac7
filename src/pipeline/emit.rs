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
use crate::bod::ApplicationArea;
use crate::config::{Application, Config, DeleteMode, FieldGroup};
use crate::store::{Fields, HubRecord, Kind, OutboxRow, TxResult};

use super::validate::MAX_ID;
use super::{country, Context, Decision, OutputReport, RejectedProcess, Rejection, Stage};

/// `schemeName` of an ID that is a bodflow hub ID rather than the receiver's own.
pub const HUB_ID_SCHEME: &str = "bodflow.HubID";

/// Collects the rows one document emits.
pub struct Emitter<'a> {
    config: &'a Config,
    ctx: &'a Context,
    digest: String,
    count: u32,
    outputs: Vec<OutputReport>,
    notes: Vec<Decision>,
}

impl<'a> Emitter<'a> {
    pub fn new(config: &'a Config, ctx: &'a Context) -> Emitter<'a> {
        let digest = blake3::hash(ctx.message_id.as_bytes()).to_hex()[..20].to_string();
        Emitter {
            config,
            ctx,
            digest,
            count: 0,
            outputs: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// The outputs written, and the decisions about the ones not written.
    pub fn finish(self) -> (Vec<OutputReport>, Vec<Decision>) {
        (self.outputs, self.notes)
    }

    fn next_bod_id(&mut self) -> String {
        self.count += 1;
        format!("bodflow:{}:{}", self.digest, self.count)
    }

    fn tenant(&self) -> Option<&'a str> {
        self.config
            .hub
            .tenant
            .as_deref()
            .or(self.ctx.tenant.as_deref())
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
    fn reply_route(&self, app: Option<usize>) -> Option<(String, Option<String>)> {
        let to = app.map(|i| self.config.applications[i].logical_id.clone());
        match (&self.ctx.reply_to, to) {
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
            document_name,
            tenant: self.tenant().map(str::to_string),
            xml,
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
                        accounting_entity: i.accounting_entity.as_deref(),
                        lid: i.lid.as_deref(),
                        variation: i.variation.clone().filter(|v| {
                            !v.is_empty() && v.len() <= 22 && v.bytes().all(|b| b.is_ascii_digit())
                        }),
                        scheme_name: i.scheme_name.as_deref(),
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
                    format!("Acknowledge{}", kind.noun()),
                    format!("Acknowledge.{}", kind.noun()),
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
            format!("Acknowledge{}", record.kind.noun()),
            format!("Acknowledge.{}", record.kind.noun()),
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
        let employer = match (&record.account, record.kind) {
            (Some(acc), Kind::Contact) => tx.record(acc)?,
            _ => None,
        };
        // Receivers left out, with why (a receiver that never heard of a deleted record is
        // not worth a word).
        let mut skipped: Vec<String> = Vec::new();
        for (i, app) in self.config.applications.iter().enumerate() {
            if i == sender {
                continue;
            }
            if !app.active {
                skipped.push(format!("{:?} (inactive)", app.name));
                continue;
            }
            let outbound = app.flows_for(record.kind.noun()).outbound;
            let xref = record.xref_for(&app.logical_id);
            let off = |what: &str| format!("{:?} (outbound {what} off)", app.name);
            let action = match (deleted, xref) {
                (true, None) => continue,
                (true, Some(_)) if outbound.delete.0 == DeleteMode::Off => {
                    skipped.push(off("deletes"));
                    continue;
                }
                (true, Some(_)) => "Delete",
                (false, Some(_)) if !outbound.update => {
                    skipped.push(off("updates"));
                    continue;
                }
                (false, Some(_)) => "Change",
                (false, None) if !outbound.create => {
                    skipped.push(off("creates"));
                    continue;
                }
                (false, None) => "Add",
            };
            let fields = select_fields(&record.fields, outbound.fields.as_deref());
            let ids = vec![OutId {
                value: xref.map(|x| x.id.as_str()).unwrap_or(""),
                accounting_entity: xref.map(|x| x.accounting_entity.as_str()),
                lid: Some(app.logical_id.as_str()),
                variation: Some(record.revision.to_string()),
                scheme_name: None,
            }];
            // The receiver's ID of the account; for an account it was only told about (its
            // Add went out with an empty ID), the hub ID, marked as such.
            let employer_id = employer
                .as_ref()
                .map(|acc| match acc.xref_for(&app.logical_id) {
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
            let sales_person = match (&app.sales_person_role, record.kind) {
                (Some(role), Kind::Account) => record
                    .owner
                    .owner
                    .as_deref()
                    .and_then(|o| self.config.user(o))
                    .and_then(|u| u.personnel_number.as_deref())
                    .map(|p| (p, role.as_str())),
                _ => None,
            };
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
            let xml = write::sync_noun(
                &self.envelope(&bod_id, xref.map(|x| x.accounting_entity.as_str())),
                "Sync",
                record.kind,
                action,
                &noun,
            );
            let row = OutboxRow {
                kind: format!("Sync{}", record.kind.noun()),
                to: app.logical_id.clone(),
                reply_to: None,
                bod_id,
                correlation_id: self.ctx.message_id.clone(),
                document_name: format!("Sync.{}", record.kind.noun()),
                tenant: self.tenant().map(str::to_string),
                xml,
            };
            self.push(tx, row)?;
        }
        if !skipped.is_empty() {
            self.notes.push(Decision::new(
                Stage::Emit,
                format!(
                    "no Sync{} of {} to {}",
                    record.kind.noun(),
                    record.id,
                    skipped.join(", ")
                ),
            ));
        }
        Ok(())
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
