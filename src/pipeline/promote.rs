//! Outbound promotion and Acknowledge correlation (DESIGN §3 "Process verbs", issue 5 item 6).
//!
//! With `[hub.promotion]` configured, an account that reaches the promotion condition — its
//! account type is `when_type` — while the system of record has no ID for it is sent
//! `ProcessCustomerPartyMaster` `Add` (`after_change`, called by the upsert stage after
//! every applied account change, in the same transaction). The Process's BODID is remembered
//! in the store ([`Correlation`]) and the record's sync status becomes
//! `awaiting_acknowledgement`; no second Process goes out while it waits. (The system of
//! record gets no `Sync` Add for accounts it does not know: promotion is how it learns of
//! them.)
//!
//! The system of record answers `AcknowledgeCustomerPartyMaster`; `acknowledge` correlates it
//! by `OriginalApplicationArea/BODID` (and its sender: only the application the Process went
//! to may answer it):
//! - `Accepted` or `Modified`: the first `PartyIDs/ID` becomes the application's cross-reference
//!   of the record (a later `Modified` for the same Process replaces it), status `promoted`;
//!   contacts waiting for that account move to it.
//! - `Rejected`: status `promotion_rejected` with the reason (`ChangeStatus/ReasonCode` or
//!   `Description`); the next change that still meets the condition promotes again.
//! - Anything else — an unknown BODID, another sender, a record gone — is rejected
//!   `unknown_correlation`, as before.

use crate::bod::{clipped, MAX_MESSAGE};
use crate::config::Config;
use crate::store::{Correlation, HubRecord, Kind, PromotionState, SyncStatus, Tx, TxResult, Xref};

use super::emit::Emitter;
use super::upsert::{self, Applied, ItemResult};
use super::{Action, Context, Doc, Outcome, Rejection, Stage};

/// After an applied change to `record`: sends the Process if the account is due. Returns
/// the record with its new promotion state when one was sent (already stored).
pub(super) fn after_change(
    tx: &Tx<'_>,
    em: &mut Emitter<'_>,
    record: &HubRecord,
    notes: &mut Vec<String>,
) -> TxResult<Option<HubRecord>> {
    let config = em.config();
    let Some((promotion, sor)) = config.promotion() else {
        return Ok(None);
    };
    if record.kind != Kind::Account || record.deleted || record.placeholder {
        return Ok(None);
    }
    let due = record
        .fields
        .commercial
        .account_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case(&promotion.when_type));
    let app = &config.applications[sor];
    if !due || record.xref_for(&app.logical_id).is_some() {
        return Ok(None);
    }
    if record.unlinked.contains(&app.logical_id) {
        notes.push(format!(
            "promotion: {} is due but was unlinked from {} by an operator (link it instead)",
            record.id, app.name
        ));
        return Ok(None);
    }
    if !app.active {
        notes.push(format!(
            "promotion: {} is due but {} (system of record) is inactive",
            record.id, app.name
        ));
        return Ok(None);
    }
    if let Some(p) = record
        .promotion
        .as_ref()
        .filter(|p| p.status == SyncStatus::AwaitingAcknowledgement)
    {
        notes.push(format!(
            "promotion: {} still awaits {}'s acknowledgement of {}; not sent again",
            record.id, app.name, p.bod_id
        ));
        return Ok(None);
    }
    let bod_id = em.process(tx, sor, record, promotion.accounting_entity.as_deref())?;
    // The Process this one replaces — the system of record rejected it — is forgotten, so
    // the store keeps one per record however often a promotion is refused; a late answer to
    // it is `unknown_correlation`. One another system of record accepted (before a reload
    // changed `system_of_record`) stays: its `Modified` still applies.
    if let Some(previous) = record.promotion.as_ref().filter(|p| {
        p.status == SyncStatus::PromotionRejected
            && p.application == app.logical_id
            && p.bod_id != bod_id
    }) {
        tx.remove_correlation(&previous.bod_id)?;
    }
    let now = em.context().now.clone();
    tx.put_correlation(
        &bod_id,
        &Correlation {
            kind: record.kind,
            record: record.id.clone(),
            application: app.logical_id.clone(),
            sent_at: now.clone(),
        },
    )?;
    let mut promoted = record.clone();
    promoted.promotion = Some(PromotionState {
        status: SyncStatus::AwaitingAcknowledgement,
        application: app.logical_id.clone(),
        bod_id: bod_id.clone(),
        at: now,
        reason: None,
    });
    tx.put_record(&promoted)?;
    notes.push(format!(
        "promotion: {} is a {} unknown to {} (system of record): ProcessCustomerPartyMaster {bod_id} sent, awaiting acknowledgement",
        record.id, promotion.when_type, app.name
    ));
    Ok(Some(promoted))
}

/// An inbound `Acknowledge<Noun>`: correlates it with the Process bodflow sent (see the
/// module docs). The caller has checked the message-id marker.
pub(super) fn acknowledge(
    tx: &Tx<'_>,
    config: &Config,
    ctx: &Context,
    doc: &Doc,
    em: &mut Emitter<'_>,
) -> TxResult<Applied> {
    let app = &config.applications[doc.app];
    let header = &doc.bod.header;
    let original = header
        .original
        .as_ref()
        .and_then(|o| o.bod_id.clone())
        .unwrap_or_default();
    let verb_path = format!("{}/DataArea/Acknowledge", doc.bod.path());
    let reject = |em: &mut Emitter<'_>, code: &'static str, message: String, path: String| {
        let rejection = Rejection {
            stage: Stage::Upsert,
            code,
            message: clipped(&message, MAX_MESSAGE).into_owned(),
            path: Some(path),
        };
        em.rejection(tx, Some(doc.app), &rejection, None)?;
        upsert::put_marker(tx, ctx, Outcome::Rejected, None)?;
        Ok(Applied {
            items: Vec::new(),
            rejection: Some(rejection),
            outputs: Vec::new(),
            emitted: Vec::new(),
            duplicate_message: false,
        })
    };
    let bod_path = format!("{verb_path}/OriginalApplicationArea/BODID");
    let correlation = if original.is_empty() {
        None
    } else {
        tx.correlation(&original)?
    };
    let found = correlation
        .filter(|c| c.application == app.logical_id)
        .map(|c| {
            let record = tx.record(&c.record)?;
            TxResult::Ok(record.map(|r| (c, r)))
        })
        .transpose()?
        .flatten();
    let Some((correlation, mut record)) = found else {
        return reject(
            em,
            "unknown_correlation",
            format!("no Process with BODID {original:?} is awaiting acknowledgement"),
            bod_path,
        );
    };
    let item = doc.items.iter().find(|i| i.kind == correlation.kind);
    let response = header.response_code.as_deref().unwrap_or("");
    let mut notes = Vec::new();
    let action = if response == "Rejected" {
        // Kept on the record: as much of the sender's text as a rejection's message.
        let reason = header.response_reason.as_deref().map_or_else(
            || "no reason given".to_string(),
            |r| clipped(r, MAX_MESSAGE).into_owned(),
        );
        notes.push(format!(
            "promotion of {} rejected by {} ({original}): {reason}",
            record.id, app.name
        ));
        record.promotion = Some(PromotionState {
            status: SyncStatus::PromotionRejected,
            application: app.logical_id.clone(),
            bod_id: original.clone(),
            at: ctx.now.clone(),
            reason: Some(reason),
        });
        tx.put_record(&record)?;
        Action::Updated
    } else {
        let Some(item) = item.filter(|i| !i.key.id.is_empty()) else {
            let path = match item {
                Some(i) => format!("{}/PartyIDs/ID", i.path),
                None => format!("{}/DataArea/{}", doc.bod.path(), correlation.kind.noun()),
            };
            return reject(
                em,
                "missing_field",
                format!("{path}: required (the ID {} assigned)", app.name),
                path.clone(),
            );
        };
        let key = &item.key;
        if let Some(other) = tx.xref(key)?.filter(|o| *o != record.id) {
            return reject(
                em,
                "id_linked_elsewhere",
                format!("{} is already linked to {other}", key.display()),
                format!("{}/PartyIDs/ID", item.path),
            );
        }
        let xref = Xref {
            application: key.application.clone(),
            accounting_entity: key.accounting_entity.clone(),
            id: key.id.clone(),
            variation: item.variation.clone().unwrap_or_default(),
        };
        match record
            .xrefs
            .iter_mut()
            .find(|x| x.application == app.logical_id)
        {
            Some(old) if *old == xref => {
                notes.push(format!("{} already linked to {}", key.display(), record.id));
            }
            Some(old) => {
                notes.push(format!(
                    "promotion: {} {response} {original}: its ID for {} changed from {} to {}",
                    app.name, record.id, old.id, key.id
                ));
                tx.remove_xref(&old.key(record.kind))?;
                *old = xref;
            }
            None => {
                notes.push(format!(
                    "promotion: {} {response} {original}: linked {} to {} (promoted)",
                    app.name,
                    key.display(),
                    record.id
                ));
                record.xrefs.push(xref);
            }
        }
        record.unlinked.retain(|a| *a != app.logical_id);
        record.promotion = Some(PromotionState {
            status: SyncStatus::Promoted,
            application: app.logical_id.clone(),
            bod_id: original.clone(),
            at: ctx.now.clone(),
            reason: None,
        });
        record.revision += 1;
        tx.put_record(&record)?;
        tx.put_xref(key, &record.id)?;
        upsert::relink_waiting(tx, doc.app, key, &record.id, em, &mut notes)?;
        Action::Linked
    };
    upsert::put_marker(tx, ctx, Outcome::Applied, Some(record.id.clone()))?;
    em.success(
        tx,
        doc.app,
        Outcome::Applied.as_str(),
        std::slice::from_ref(&record.id),
    )?;
    // The stage notes of the noun (owner, country) are not reported: an Acknowledge only
    // links an ID, it does not apply the noun's content.
    Ok(Applied {
        items: vec![ItemResult::applied(action, &record, notes)],
        rejection: None,
        outputs: Vec::new(),
        emitted: Vec::new(),
        duplicate_message: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Fields, Owner, Store};

    const CONFIG: &str =
        "[hub.promotion]\nwhen_type = 'Customer'\nsystem_of_record = 'lid://erp'\n\
        [[applications]]\nname = 'ERP'\nlogical_id = 'lid://erp'\n\
        [[applications]]\nname = 'CRM'\nlogical_id = 'lid://crm'\n";

    fn account(account_type: &str) -> HubRecord {
        let mut fields = Fields::default();
        fields.identity.name = Some("Acme".into());
        fields.commercial.account_type = Some(account_type.into());
        HubRecord {
            id: "ACC-000001".into(),
            kind: Kind::Account,
            deleted: false,
            placeholder: false,
            fields,
            owner: Owner::default(),
            account: None,
            intended_parent: None,
            xrefs: vec![Xref {
                application: "lid://crm".into(),
                accounting_entity: String::new(),
                id: "C1".into(),
                variation: String::new(),
            }],
            unlinked: Vec::new(),
            promotion: None,
            created_by: "lid://crm".into(),
            revision: 1,
        }
    }

    /// Runs `after_change` for `record` in its own transaction.
    fn promote(
        config: &Config,
        store: &Store,
        record: &HubRecord,
    ) -> (Option<HubRecord>, Vec<String>, usize) {
        promote_for(config, store, record, "m-1")
    }

    /// [`promote`] as the change of message `message_id`.
    fn promote_for(
        config: &Config,
        store: &Store,
        record: &HubRecord,
        message_id: &str,
    ) -> (Option<HubRecord>, Vec<String>, usize) {
        let ctx =
            super::super::link::operator_context("test", message_id.into(), chrono::Utc::now());
        store
            .transact(|tx| {
                let mut em = Emitter::new(config, &ctx);
                let mut notes = Vec::new();
                let promoted = after_change(tx, &mut em, record, &mut notes)?;
                Ok((promoted, notes, em.finish().0.len()))
            })
            .unwrap()
    }

    #[test]
    fn a_promotion_sent_again_after_a_rejection_replaces_the_process_it_remembers() {
        let config = Config::from_toml(CONFIG, "t").unwrap();
        let store = Store::temporary().unwrap();
        let correlation = |bod_id: &str| store.transact(|tx| tx.correlation(bod_id)).unwrap();
        let mut record = account("Customer");
        let mut sent = Vec::new();
        for i in 0..3 {
            let (promoted, _, outputs) = promote_for(&config, &store, &record, &format!("m-{i}"));
            assert_eq!(outputs, 1, "round {i}");
            record = promoted.unwrap();
            let state = record.promotion.as_mut().unwrap();
            sent.push(state.bod_id.clone());
            // The system of record refuses it.
            state.status = SyncStatus::PromotionRejected;
        }
        assert!(sent[0] != sent[1] && sent[1] != sent[2], "{sent:?}");
        assert!(correlation(&sent[0]).is_none() && correlation(&sent[1]).is_none());
        assert_eq!(correlation(&sent[2]).unwrap().record, record.id);

        // Accepted by another system of record (the configured one changed since): its
        // Process stays remembered, a `Modified` from it still applies.
        let mut elsewhere = account("Customer");
        elsewhere.promotion = Some(PromotionState {
            status: SyncStatus::Promoted,
            application: "lid://old-erp".into(),
            bod_id: "bodflow:old:1".into(),
            at: "2026-01-01T00:00:00Z".into(),
            reason: None,
        });
        store
            .transact(|tx| {
                tx.put_correlation(
                    "bodflow:old:1",
                    &Correlation {
                        kind: Kind::Account,
                        record: elsewhere.id.clone(),
                        application: "lid://old-erp".into(),
                        sent_at: "2026-01-01T00:00:00Z".into(),
                    },
                )
            })
            .unwrap();
        let (promoted, _, _) = promote_for(&config, &store, &elsewhere, "m-9");
        assert!(
            promoted.is_some(),
            "due for the configured system of record"
        );
        assert!(correlation("bodflow:old:1").is_some());
    }

    #[test]
    fn only_a_due_account_unknown_to_the_system_of_record_is_promoted_once() {
        let config = Config::from_toml(CONFIG, "t").unwrap();
        let store = Store::temporary().unwrap();
        let (none, _, outputs) = promote(&config, &store, &account("Prospect"));
        assert!(none.is_none() && outputs == 0, "not due");

        let (promoted, notes, outputs) = promote(&config, &store, &account("CUSTOMER"));
        let promoted = promoted.expect("due: promoted");
        assert_eq!(outputs, 1, "one ProcessCustomerPartyMaster");
        let state = promoted.promotion.clone().unwrap();
        assert_eq!(state.status, SyncStatus::AwaitingAcknowledgement);
        assert!(notes[0].contains(&state.bod_id), "{notes:?}");
        let correlation = store
            .transact(|tx| tx.correlation(&state.bod_id))
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                correlation.record.as_str(),
                correlation.application.as_str()
            ),
            ("ACC-000001", "lid://erp")
        );

        let (again, notes, outputs) = promote(&config, &store, &promoted);
        assert!(again.is_none() && outputs == 0, "awaiting: {notes:?}");

        let mut known = account("Customer");
        known.xrefs.push(Xref {
            application: "lid://erp".into(),
            accounting_entity: String::new(),
            id: "E1".into(),
            variation: String::new(),
        });
        assert!(
            promote(&config, &store, &known).0.is_none(),
            "the ERP knows it"
        );

        let off = Config::from_toml(
            "[[applications]]\nname = 'ERP'\nlogical_id = 'lid://erp'\n",
            "t",
        )
        .unwrap();
        assert!(
            promote(&off, &store, &account("Customer")).0.is_none(),
            "not configured"
        );
    }
}
