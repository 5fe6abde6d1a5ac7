//! Stage 4, upsert: apply a validated document to the hub inside one store transaction.
//!
//! For each noun instance (DESIGN §3 "upsert"):
//! 1. **Identity**: the sender's cross-reference names the record; without one, the
//!    application's `create_policy` decides (create, match on `match_on` keys and link, park,
//!    or ignore). Two matching records are never merged silently: the document is parked
//!    `ambiguous_match`.
//! 2. **Staleness**: a variationID lower than the one stored for that cross-reference is
//!    `stale`, equal is `duplicate`; a message id already applied is `duplicate` and emits
//!    nothing.
//! 3. **Mastership**: once a record is linked to other applications, a sender changes only the
//!    field groups it `masters` (all when it lists none).
//! 4. **Contacts** resolve their account through the sender's cross-references; an unknown
//!    account leaves the contact on the application's `default_account` (a placeholder created
//!    on first use) with the intended parent remembered, and the contact is re-linked when
//!    that account arrives.
//! 5. **Delete** per the inbound flow: soft (marked deleted, stops flowing), hard (removed with
//!    its cross-references; a hard-deleted account's contacts wait for it again, as in 4), or
//!    off (filtered).
//! 6. **Classification**: contacts from an application with `stamp_classification` get it
//!    (new ones become employees of their account).
//!
//! A change that puts a match value on a record wakes the `no_match` documents parked under it
//! ([`super::release`]); an applied account change may promote the account
//! ([`super::promote`]), which also answers inbound `Acknowledge` documents.
//!
//! Emission (ConfirmBOD, Acknowledge, Sync fan-out) happens in the same transaction through
//! [`Emitter`]. This module only reads and writes through the transaction: an error drops the
//! whole write set, so nothing half-applied can remain.

use crate::bod::read::{MAX_USER_AREA_BYTES, MAX_USER_AREA_VALUES};
use crate::config::{Application, Config, CreatePolicy, DeleteMode, FieldGroup, MatchKey};
use crate::store::{
    Fields, HubRecord, Kind, Marker, Owner, ParkReason, Parked, Tombstone, Tx, TxResult, Xref,
    XrefKey,
};

use super::emit::Emitter;
use super::{
    Action, Context, Decision, Doc, Intent, Item, NounReport, Outcome, ParkedAs, Rejection, Report,
    Stage, Verb,
};

/// The result of one document's transaction.
#[derive(Debug)]
pub struct Applied {
    pub items: Vec<ItemResult>,
    pub rejection: Option<Rejection>,
    pub outputs: Vec<super::OutputReport>,
    /// What emit decided not to send, and why.
    pub emitted: Vec<Decision>,
    /// Set when the whole document was a duplicate by message id.
    pub duplicate_message: bool,
}

#[derive(Debug, Clone)]
pub struct ItemResult {
    pub outcome: Outcome,
    pub action: Option<Action>,
    pub record: Option<String>,
    /// The record's owner and country after the change (what the hub holds, which
    /// mastership may make differ from what the document asked for).
    pub owner: Option<String>,
    pub country: Option<String>,
    pub notes: Vec<Decision>,
    /// Set when the item was parked.
    pub parked: Option<ParkedAs>,
}

impl ItemResult {
    fn new(outcome: Outcome, action: Option<Action>, record: Option<String>, note: String) -> Self {
        ItemResult {
            outcome,
            action,
            record,
            owner: None,
            country: None,
            notes: vec![Decision::new(Stage::Upsert, note)],
            parked: None,
        }
    }

    pub(super) fn applied(action: Action, record: &HubRecord, notes: Vec<String>) -> Self {
        ItemResult {
            outcome: Outcome::Applied,
            action: Some(action),
            record: Some(record.id.clone()),
            owner: record.owner.owner.clone(),
            country: record
                .fields
                .address
                .as_ref()
                .and_then(|a| a.country.clone()),
            notes: notes
                .into_iter()
                .map(|n| Decision::new(Stage::Upsert, n))
                .collect(),
            parked: None,
        }
    }
}

/// Whether an existing marker makes this delivery a duplicate: always, except for a
/// deliberate retry of a parked or rejected message id, and the release of a noun's parked
/// row while that noun is still parked ([`Marker::parked`]).
pub fn blocks(marker: &Marker, ctx: &Context) -> bool {
    // The row of one noun is work still owed while the marker lists that noun as parked,
    // whatever its outcome says (the release of another noun may have marked it applied).
    // (A marker of the version before the list, `parked` with none listed, lets it run.)
    if let (Some(_), Some(noun)) = (ctx.unpark, &ctx.released_noun) {
        let unlisted = marker.parked.is_empty() && marker.outcome == Outcome::Parked.as_str();
        return !(marker.parked.contains(noun) || unlisted);
    }
    // The replay that wrote the marker, delivered again: done already.
    if let Some(token) = replay_of(ctx) {
        if marker.retry.as_ref() == Some(&token) {
            return true;
        }
    }
    // A replay of a noun's dead letter runs while that noun is listed as refused, whatever the
    // document's other nouns made of the marker's outcome since.
    if let (true, None, Some(noun)) = (ctx.retry, ctx.unpark, &ctx.released_noun) {
        if marker.refused.contains(noun) {
            return false;
        }
    }
    let retryable =
        marker.outcome == Outcome::Parked.as_str() || marker.outcome == Outcome::Rejected.as_str();
    !(ctx.retry && retryable)
}

/// The result for a message id that was processed before: nothing is applied or emitted.
pub fn duplicate_message(ctx: &Context, marker: &Marker) -> Applied {
    Applied {
        items: vec![ItemResult::new(
            Outcome::Duplicate,
            None,
            marker.record.clone(),
            format!(
                "message id {} already processed ({})",
                ctx.message_id, marker.outcome
            ),
        )],
        rejection: None,
        outputs: Vec::new(),
        emitted: Vec::new(),
        duplicate_message: true,
    }
}

/// Applies a document. Pure over the transaction (see module docs).
pub fn apply(tx: &Tx<'_>, config: &Config, ctx: &Context, doc: &Doc) -> TxResult<Applied> {
    // The caller (`commit_in`) has checked the message-id marker.
    let mut em = Emitter::new(config, ctx);
    let app = &config.applications[doc.app];

    if doc.verb == Verb::Acknowledge {
        // Correlates with a Process bodflow sent (promotion), else `unknown_correlation`.
        let mut applied = super::promote::acknowledge(tx, config, ctx, doc, &mut em)?;
        (applied.outputs, applied.emitted) = em.finish();
        return Ok(applied);
    }

    // Accounts before contacts, whatever the document order: a contact in the same document
    // as its account must find it (CRM's noun priority). Results stay in document order.
    let mut order: Vec<usize> = (0..doc.items.len()).collect();
    order.sort_by_key(|&i| doc.items[i].kind != Kind::Account);
    let mut slots: Vec<Option<ItemResult>> = vec![None; doc.items.len()];
    for i in order {
        let item = &doc.items[i];
        let mut result = apply_item(tx, config, ctx, doc, app, item, &mut em)?;
        let mut notes = item.notes.clone();
        notes.append(&mut result.notes);
        result.notes = notes;
        slots[i] = Some(result);
    }
    let items: Vec<ItemResult> = slots.into_iter().flatten().collect();
    let outcome = items
        .iter()
        .map(|r| r.outcome)
        .max_by_key(|o| o.rank())
        .unwrap_or(Outcome::Filtered);
    let records: Vec<String> = items.iter().filter_map(|r| r.record.clone()).collect();
    put_marker(tx, ctx, outcome, records.first().cloned())?;
    if outcome != Outcome::Duplicate {
        em.success(tx, doc.app, outcome.as_str(), &records)?;
    }
    let (outputs, emitted) = em.finish();
    Ok(Applied {
        items,
        rejection: None,
        outputs,
        emitted,
        duplicate_message: false,
    })
}

pub(super) fn put_marker(
    tx: &Tx<'_>,
    ctx: &Context,
    outcome: Outcome,
    record: Option<String>,
) -> TxResult<()> {
    tx.put_marker(
        &ctx.message_id,
        &Marker {
            outcome: outcome.as_str().into(),
            record,
            bod_id: ctx.area.as_ref().and_then(|a| a.bod_id.clone()),
            tracked: Vec::new(),
            run: ctx.run,
            parked: Vec::new(),
            refused: Vec::new(),
            retry: replay_of(ctx),
            at: None,
        },
    )
}

/// The token of the dead-letter replay a run is ([`crate::store::Envelope::retry`]); a
/// release from parking is a run of its own, whatever delivery parked the document.
pub(super) fn replay_of(ctx: &Context) -> Option<String> {
    ctx.envelope.retry.clone().filter(|_| ctx.unpark.is_none())
}

/// variationID guard: incoming vs stored for the same cross-reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    Apply,
    Stale,
    Duplicate,
}

/// Compares normalised decimal strings (no leading zeros) of any length: longer is larger.
pub fn guard(stored: &str, incoming: Option<&str>) -> Guard {
    let Some(incoming) = incoming else {
        return Guard::Apply;
    };
    if stored.is_empty() {
        return Guard::Apply;
    }
    match (incoming.len(), incoming).cmp(&(stored.len(), stored)) {
        std::cmp::Ordering::Greater => Guard::Apply,
        std::cmp::Ordering::Equal => Guard::Duplicate,
        std::cmp::Ordering::Less => Guard::Stale,
    }
}

#[allow(clippy::too_many_arguments)]
fn apply_item(
    tx: &Tx<'_>,
    config: &Config,
    ctx: &Context,
    doc: &Doc,
    app: &Application,
    item: &Item,
    em: &mut Emitter<'_>,
) -> TxResult<ItemResult> {
    let noun = item.kind.noun();
    let inbound = app.flows_for(noun).inbound;
    let existing = if item.key.id.is_empty() {
        None
    } else {
        match tx.xref(&item.key)? {
            Some(hub_id) => tx.record(&hub_id)?,
            None => None,
        }
    };

    let Some(mut record) = existing else {
        if item.intent == Intent::Delete {
            return Ok(ItemResult::new(
                Outcome::Filtered,
                None,
                None,
                format!(
                    "delete of {} ignored: no hub record for it",
                    item.key.display()
                ),
            ));
        }
        if let Some(refused) = before_delete(tx, item)? {
            return Ok(refused);
        }
        // Inbound `create` governs new records, `update` a match with an existing one (a
        // link changes that record): an "update existing only" flow still links by match.
        return place_new(tx, config, ctx, doc, app, item, em);
    };

    let stored = record
        .xrefs
        .iter()
        .find(|x| x.key(item.kind) == item.key)
        .map(|x| x.variation.clone())
        .unwrap_or_default();
    match guard(&stored, item.variation.as_deref()) {
        Guard::Apply => {}
        Guard::Stale => {
            return Ok(ItemResult::new(
                Outcome::Stale,
                None,
                Some(record.id),
                format!(
                    "variationID {} is older than the applied {stored}",
                    item.variation.as_deref().unwrap_or("")
                ),
            ))
        }
        Guard::Duplicate => {
            return Ok(ItemResult::new(
                Outcome::Duplicate,
                None,
                Some(record.id),
                format!("variationID {stored} was already applied"),
            ))
        }
    }
    set_variation(&mut record, item);

    if item.intent == Intent::Delete {
        return delete(tx, config, doc, item, inbound.delete.0, record, em);
    }
    if !inbound.update {
        return Ok(ItemResult::new(
            Outcome::Filtered,
            None,
            Some(record.id),
            format!("inbound {noun} updates are off for {}", app.name),
        ));
    }
    if record.deleted {
        return Ok(ItemResult::new(
            Outcome::Filtered,
            None,
            Some(record.id.clone()),
            format!("{} is deleted; updates are not applied", record.id),
        ));
    }
    let before = record.clone();
    let mut notes = Vec::new();
    merge(&mut record, item, app, &mut notes);
    if item.kind == Kind::Contact {
        stamp(&mut record.fields, app, false, &mut notes);
        link_employer(tx, config, app, item, &mut record, &mut notes)?;
    }
    let changed = changed_parts(&before, &record);
    if !changed.is_empty() {
        record.revision += 1;
    }
    tx.put_record(&record)?;
    if !changed.is_empty() {
        reindex(tx, config, Some(&before), Some(&record))?;
        notes.push(format!("updated {} ({})", record.id, changed.join(", ")));
    } else {
        notes.push(format!("{} unchanged", record.id));
    }
    let announce = if !changed.is_empty() {
        Announce::Change
    } else {
        Announce::AnswerOnly
    };
    applied(tx, doc, em, Action::Updated, &record, announce, notes)
}

/// What an applied change tells the other applications.
enum Announce<'k> {
    /// Fan the record out.
    Change,
    /// Fan the account out, then move the contacts waiting for this key to it.
    NewKey(&'k XrefKey),
    /// A link that changed nothing but the cross-references: move the contacts waiting for
    /// this key, without sending the other applications what they already have.
    LinkOnly(&'k XrefKey),
    /// The record was just deleted: tell the applications that know it and take deletes.
    Deleted,
    /// Nothing changed: only the sender's Acknowledge, if it asked.
    AnswerOnly,
}

/// The common end of an applied change: fan-out (the account before contacts re-linked to
/// it), then the Acknowledge a Process asks for.
fn applied(
    tx: &Tx<'_>,
    doc: &Doc,
    em: &mut Emitter<'_>,
    action: Action,
    record: &HubRecord,
    announce: Announce<'_>,
    mut notes: Vec<String>,
) -> TxResult<ItemResult> {
    match announce {
        Announce::AnswerOnly | Announce::LinkOnly(_) => {}
        Announce::Deleted => em.fan_out(tx, doc.app, record, true)?,
        Announce::Change | Announce::NewKey(_) => em.fan_out(tx, doc.app, record, false)?,
    }
    if let Announce::NewKey(key) | Announce::LinkOnly(key) = announce {
        if record.kind == Kind::Account {
            relink_waiting(tx, doc.app, key, &record.id, em, &mut notes)?;
        }
    }
    let promoted = match announce {
        Announce::Change | Announce::NewKey(_) | Announce::LinkOnly(_) => {
            super::promote::after_change(tx, em, record, &mut notes)?
        }
        Announce::Deleted | Announce::AnswerOnly => None,
    };
    let record = promoted.as_ref().unwrap_or(record);
    if doc.verb == Verb::Process {
        let ack_code = doc.bod.header.acknowledge_code.as_deref();
        em.accepted(tx, doc.app, record, ack_code)?;
    }
    Ok(ItemResult::applied(action, record, notes))
}

fn set_variation(record: &mut HubRecord, item: &Item) {
    if let Some(x) = record
        .xrefs
        .iter_mut()
        .find(|x| x.key(item.kind) == item.key)
    {
        if let Some(v) = &item.variation {
            x.variation = v.clone();
        }
    }
}

/// The part [`changed_parts`] names when the number of cross-references differs.
const CROSS_REFERENCES: &str = "cross-references";

/// What an update changed in the record's content (everything but cross-reference
/// bookkeeping), for its decision: the field groups of `[applications.masters]` whose values
/// differ, then the parts outside them (the UserArea values, a contact's account, the deleted
/// mark, the number of cross-references). Empty when nothing changed: no new revision, no
/// fan-out. An update never changes the last two today (a deleted record is not updated, and
/// only a link adds a cross-reference).
fn changed_parts(a: &HubRecord, b: &HubRecord) -> Vec<&'static str> {
    // Destructured so that a new field of `Fields` cannot be left out of the comparison.
    let Fields {
        identity,
        address,
        communication,
        commercial,
        classification,
        user_area,
    } = &a.fields;
    let y = &b.fields;
    let group_changed = |g: FieldGroup| match g {
        FieldGroup::Identity => *identity != y.identity,
        FieldGroup::Address => *address != y.address,
        FieldGroup::Communication => *communication != y.communication,
        FieldGroup::Commercial => *commercial != y.commercial,
        FieldGroup::Owner => a.owner != b.owner,
        FieldGroup::Classification => *classification != y.classification,
    };
    let mut parts: Vec<&'static str> = FieldGroup::ALL
        .into_iter()
        .filter(|&g| group_changed(g))
        .map(group_name)
        .collect();
    for (differs, name) in [
        (*user_area != y.user_area, "UserArea"),
        (a.account != b.account, "account"),
        (a.deleted != b.deleted, "deleted"),
        (a.xrefs.len() != b.xrefs.len(), CROSS_REFERENCES),
    ] {
        if differs {
            parts.push(name);
        }
    }
    parts
}

/// Field groups `app` may change on `record` now.
fn writable_groups(record: &HubRecord, app: &Application) -> Vec<FieldGroup> {
    let linked_elsewhere = record.xrefs.iter().any(|x| x.application != app.logical_id);
    if !linked_elsewhere || app.masters.is_empty() {
        FieldGroup::ALL.to_vec()
    } else {
        app.masters.clone()
    }
}

/// Applies the item's content to the groups `app` may write (a note names those it may not).
fn merge(record: &mut HubRecord, item: &Item, app: &Application, notes: &mut Vec<String>) {
    let groups = writable_groups(record, app);
    let has = |g| groups.contains(&g);
    let incoming = &item.fields;
    let current = &mut record.fields;
    if has(FieldGroup::Identity) {
        merge_identity(current, incoming);
    }
    if has(FieldGroup::Address) && incoming.address.is_some() {
        current.address = incoming.address.clone();
    }
    if has(FieldGroup::Communication) {
        let c = &incoming.communication;
        if !c.phones.is_empty() || !c.emails.is_empty() || c.web.is_some() {
            current.communication = c.clone();
        }
    }
    if has(FieldGroup::Commercial) {
        let c = &incoming.commercial;
        if c.currency.is_some() {
            current.commercial.currency = c.currency.clone();
        }
        if c.payment_term.is_some() {
            current.commercial.payment_term = c.payment_term.clone();
        }
        if c.account_type.is_some() {
            current.commercial.account_type = c.account_type.clone();
        }
    }
    if has(FieldGroup::Classification) && !incoming.classification.is_empty() {
        current.classification = incoming.classification.clone();
    }
    // An update only moves the owner to a sales person it names, never back to a default.
    if has(FieldGroup::Owner) && item.owner.owner.as_deref() != app.default_record_owner.as_deref()
    {
        record.owner.owner = item.owner.owner.clone();
    }
    merge_user_area(&mut current.user_area, &incoming.user_area, notes);
    let skipped: Vec<&str> = FieldGroup::ALL
        .iter()
        .filter(|g| !groups.contains(g))
        .map(|g| group_name(*g))
        .collect();
    if !skipped.is_empty() {
        notes.push(format!(
            "mastership: {} does not master {} (ignored)",
            app.name,
            skipped.join(", ")
        ));
    }
}

fn group_name(g: FieldGroup) -> &'static str {
    match g {
        FieldGroup::Identity => "identity",
        FieldGroup::Address => "address",
        FieldGroup::Communication => "communication",
        FieldGroup::Commercial => "commercial",
        FieldGroup::Owner => "owner",
        FieldGroup::Classification => "classification",
    }
}

fn merge_identity(current: &mut Fields, incoming: &Fields) {
    let (c, i) = (&mut current.identity, &incoming.identity);
    let set = |slot: &mut Option<String>, value: &Option<String>| {
        if value.is_some() {
            slot.clone_from(value);
        }
    };
    set(&mut c.name, &i.name);
    set(&mut c.given_name, &i.given_name);
    set(&mut c.family_name, &i.family_name);
    set(&mut c.job_title, &i.job_title);
    set(&mut c.account_number, &i.account_number);
    set(&mut c.external_number, &i.external_number);
    set(&mut c.status, &i.status);
    set(&mut c.relationship, &i.relationship);
}

/// Classification rules for an inbound contact (DESIGN §3 "Classification"): the sender's
/// `stamp_classification` is added whatever the sender masters; a new contact from such an
/// application becomes an employee of its account.
fn stamp(fields: &mut Fields, app: &Application, new: bool, notes: &mut Vec<String>) {
    let Some(code) = app.stamp_classification.as_deref() else {
        return;
    };
    if !Application::has_classification(&fields.classification, code) {
        fields.classification.push(code.to_string());
        notes.push(format!(
            "classification: stamped {code} ({} stamp_classification)",
            app.name
        ));
    }
    if new && fields.identity.relationship.is_none() {
        fields.identity.relationship = Some(EMPLOYEE.into());
        notes.push(format!(
            "relationship: new contact from {} is an employee of its account",
            app.name
        ));
    }
}

/// The relationship of contacts imported from an application that stamps a classification.
pub const EMPLOYEE: &str = "employee";

/// Keeps the match indexes in step with a record's change (`before` = `None`: new record;
/// `after` = `None`: removed record).
fn reindex(
    tx: &Tx<'_>,
    config: &Config,
    before: Option<&HubRecord>,
    after: Option<&HubRecord>,
) -> TxResult<()> {
    let indexed = config.indexed_keys();
    if indexed.is_empty() {
        return Ok(());
    }
    // Parked `no_match` documents wait under the values of `match_only` applications' keys.
    let wakes = config.parks_without_match();
    let old = before.map(HubRecord::match_values);
    let new = after.map(HubRecord::match_values);
    for i in 0..3 {
        let key = old.as_ref().or(new.as_ref()).map(|v| v[i].0);
        if !key.is_some_and(|k| indexed.contains(&k)) {
            continue;
        }
        let o = old.as_ref().and_then(|v| v[i].1);
        let n = new.as_ref().and_then(|v| v[i].1);
        if o == n {
            continue;
        }
        if let (Some(value), Some(r)) = (o, before) {
            tx.index(r.kind, r.match_values()[i].0, value, &r.id, false)?;
        }
        if let (Some(value), Some(r)) = (n, after) {
            tx.index(r.kind, r.match_values()[i].0, value, &r.id, true)?;
            if wakes && !r.deleted {
                tx.wake_parked(r.kind, r.match_values()[i].0, value)?;
            }
        }
    }
    Ok(())
}

fn delete(
    tx: &Tx<'_>,
    config: &Config,
    doc: &Doc,
    item: &Item,
    mode: DeleteMode,
    mut record: HubRecord,
    em: &mut Emitter<'_>,
) -> TxResult<ItemResult> {
    let note = match mode {
        DeleteMode::Off => {
            return Ok(ItemResult::new(
                Outcome::Filtered,
                None,
                Some(record.id.clone()),
                "inbound deletes are off".into(),
            ))
        }
        DeleteMode::Soft => {
            if record.deleted {
                tx.put_record(&record)?;
                return Ok(ItemResult::new(
                    Outcome::Duplicate,
                    None,
                    Some(record.id.clone()),
                    format!("{} is already deleted", record.id),
                ));
            }
            record.deleted = true;
            record.fields.identity.status = Some("Deleted".into());
            record.revision += 1;
            tx.put_record(&record)?;
            format!("soft-deleted {}", record.id)
        }
        DeleteMode::Hard => {
            record.deleted = true;
            record.revision += 1;
            for x in &record.xrefs {
                let key = x.key(record.kind);
                tx.remove_xref(&key)?;
                tx.put_tombstone(
                    &key,
                    &Tombstone {
                        record: record.id.clone(),
                        variation: x.variation.clone(),
                        deleted_at: Some(em.received_ms()),
                    },
                )?;
            }
            reindex(tx, config, Some(&record), None)?;
            if let Some(parent) = &record.intended_parent {
                forget_waiting(tx, parent, &record.id)?;
            }
            tx.move_contact(&record.id, record.account.as_deref(), None);
            tx.remove_record(&record.id)?;
            format!("hard-deleted {} ({})", record.id, item.key.display())
        }
    };
    let mut notes = vec![note];
    if mode == DeleteMode::Hard && record.kind == Kind::Account {
        // After the account left the store (and its number the match index): the contacts
        // cannot fall back to it as their default account.
        release_contacts(tx, config, doc, &record, &item.key, em, &mut notes)?;
    }
    applied(
        tx,
        doc,
        em,
        Action::Deleted,
        &record,
        Announce::Deleted,
        notes,
    )
}

/// No cross-reference yet: apply the application's create policy.
fn place_new(
    tx: &Tx<'_>,
    config: &Config,
    ctx: &Context,
    doc: &Doc,
    app: &Application,
    item: &Item,
    em: &mut Emitter<'_>,
) -> TxResult<ItemResult> {
    let policy = app.create_policy;
    let inbound = app.flows_for(item.kind.noun()).inbound;
    let creates_off = || {
        Ok(ItemResult::new(
            Outcome::Filtered,
            None,
            None,
            format!(
                "inbound {} creates are off for {}",
                item.kind.noun(),
                app.name
            ),
        ))
    };
    let park = |reason: ParkReason, note: String| -> TxResult<ItemResult> {
        // A `no_match` document is released when a record comes to carry one of these.
        let match_values = if reason == ParkReason::NoMatch {
            item.match_values
                .iter()
                .filter(|(k, _)| app.match_on.contains(k))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let seq = tx.park(Parked {
            seq: 0,
            message_id: ctx.message_id.clone(),
            reason,
            application: app.logical_id.clone(),
            key: Some(item.key.clone()),
            source: ctx.source.clone(),
            payload: ctx.payload.clone(),
            payload_ref: None,
            envelope: ctx.envelope.clone(),
            reply_to: ctx.reply_to.clone(),
            match_values,
            noun: Some(item.path.clone()),
        })?;
        Ok(ItemResult {
            parked: Some(ParkedAs { reason, seq }),
            ..ItemResult::new(Outcome::Parked, None, None, note)
        })
    };
    if !inbound.create
        && !matches!(
            policy,
            CreatePolicy::MatchOrCreate | CreatePolicy::MatchOnly
        )
    {
        return creates_off();
    }
    match policy {
        CreatePolicy::Ignore => {
            return Ok(ItemResult::new(
                Outcome::Filtered,
                None,
                None,
                format!("create_policy ignore: {} is not taken", item.key.display()),
            ))
        }
        CreatePolicy::Manual => {
            return park(
                ParkReason::ManualLink,
                format!(
                    "parked: create_policy manual, {} waits for `bodflow link`",
                    item.key.display()
                ),
            )
        }
        CreatePolicy::Create => {}
        CreatePolicy::MatchOrCreate | CreatePolicy::MatchOnly => {
            let mut skipped = Vec::new();
            let (candidates, via) = find_matches(tx, app, item, &mut skipped)?;
            let mut result = match candidates.len() {
                0 if policy == CreatePolicy::MatchOnly => park(
                    ParkReason::NoMatch,
                    format!(
                        "parked: create_policy match_only, no record matches {}",
                        item.key.display()
                    ),
                )?,
                0 if !inbound.create => creates_off()?,
                0 => create(tx, config, doc, app, item, em)?,
                1 if !inbound.update => ItemResult::new(
                    Outcome::Filtered,
                    None,
                    Some(candidates[0].clone()),
                    format!(
                        "matches {} by {via}, but inbound {} updates are off for {}",
                        candidates[0],
                        item.kind.noun(),
                        app.name
                    ),
                ),
                1 => link(tx, config, doc, app, item, &candidates[0], &via, em)?,
                _ => park(
                    ParkReason::AmbiguousMatch,
                    format!(
                        "parked ambiguous_match: {} records match by {via}: {}",
                        candidates.len(),
                        candidates.join(", ")
                    ),
                )?,
            };
            // The records left out because of an unlink come first: they explain the rest.
            if !skipped.is_empty() {
                let mut notes: Vec<Decision> = skipped
                    .into_iter()
                    .map(|n| Decision::new(Stage::Upsert, n))
                    .collect();
                notes.append(&mut result.notes);
                result.notes = notes;
            }
            return Ok(result);
        }
    }
    create(tx, config, doc, app, item, em)
}

/// Live records matching the item's keys that the application has no ID on yet, in
/// `match_on` order: the first key that finds anything decides. A record an operator unlinked
/// from this application is never matched again (the operator said it is not this one; only
/// `bodflow link` joins them again): it is left out, with a note.
fn find_matches(
    tx: &Tx<'_>,
    app: &Application,
    item: &Item,
    notes: &mut Vec<String>,
) -> TxResult<(Vec<String>, String)> {
    for key in &app.match_on {
        for (k, value) in &item.match_values {
            if k != key {
                continue;
            }
            let mut found = Vec::new();
            for hub_id in tx.matches(item.kind, *key, value)? {
                let Some(r) = tx.record(&hub_id)? else {
                    continue;
                };
                if r.deleted || r.xref_for(&app.logical_id).is_some() {
                    continue;
                }
                if r.unlinked.contains(&app.logical_id) {
                    notes.push(format!(
                        "{hub_id} matches by {} {value:?} but was unlinked from {} by an operator: not matched (bodflow link joins them)",
                        match_name(*key),
                        app.name
                    ));
                    continue;
                }
                found.push(hub_id);
            }
            if !found.is_empty() {
                let via = format!("{} {value:?}", match_name(*key));
                return Ok((found, via));
            }
        }
    }
    Ok((Vec::new(), String::new()))
}

/// `key` was just linked (created or matched): documents of it parked for want of a match
/// (a later version parked under another value while an earlier one waited) are released in
/// this transaction, as updates of the record. Only matching configurations park so.
fn wake_waiting_for(tx: &Tx<'_>, config: &Config, key: &XrefKey) -> TxResult<()> {
    if !config.indexed_keys().is_empty() {
        tx.wake_parked_for(key)?;
    }
    Ok(())
}

fn match_name(k: MatchKey) -> &'static str {
    match k {
        MatchKey::AccountNumber => "account_number",
        MatchKey::ExternalNumber => "external_number",
        MatchKey::Email => "email",
    }
}

#[allow(clippy::too_many_arguments)]
fn link(
    tx: &Tx<'_>,
    config: &Config,
    doc: &Doc,
    app: &Application,
    item: &Item,
    hub_id: &str,
    via: &str,
    em: &mut Emitter<'_>,
) -> TxResult<ItemResult> {
    let Some(mut record) = tx.record(hub_id)? else {
        return create(tx, config, doc, app, item, em);
    };
    let before = record.clone();
    let mut notes = vec![format!("linked to {hub_id} by {via}")];
    let key = assign_id(tx, config, item, Some(&record), &record.id, &mut notes)?;
    record.xrefs.push(Xref {
        application: key.application.clone(),
        accounting_entity: key.accounting_entity.clone(),
        id: key.id.clone(),
        variation: item.variation.clone().unwrap_or_default(),
    });
    record.unlinked.retain(|a| *a != app.logical_id);
    take_over_placeholder(&mut record, app, &key, &mut notes);
    merge(&mut record, item, app, &mut notes);
    if item.kind == Kind::Contact {
        stamp(&mut record.fields, app, false, &mut notes);
        link_employer(tx, config, app, item, &mut record, &mut notes)?;
    }
    // What the other applications have of the record changes only with its content (a
    // placeholder taken over becomes content they may receive); the new cross-reference is
    // bodflow's own bookkeeping.
    let content_changed = before.placeholder != record.placeholder
        || changed_parts(&before, &record)
            .iter()
            .any(|&part| part != CROSS_REFERENCES);
    record.revision += 1;
    tx.put_xref(&key, &record.id)?;
    tx.put_record(&record)?;
    reindex(tx, config, Some(&before), Some(&record))?;
    wake_waiting_for(tx, config, &key)?;
    let announce = if content_changed {
        Announce::NewKey(&key)
    } else {
        notes.push(format!(
            "{} unchanged by the link: not sent to other applications",
            record.id
        ));
        Announce::LinkOnly(&key)
    };
    applied(tx, doc, em, Action::Linked, &record, announce, notes)
}

fn format_account_number(pattern: &str, seq: u64) -> String {
    let Some(start) = pattern.find("{seq") else {
        return format!("{pattern}{seq}");
    };
    let Some(len) = pattern[start..].find('}') else {
        return format!("{pattern}{seq}");
    };
    let spec = &pattern[start + 4..start + len];
    let width = spec
        .strip_prefix(":0")
        .or_else(|| spec.strip_prefix(':'))
        .and_then(|w| w.parse::<usize>().ok())
        .unwrap_or(0);
    format!(
        "{}{seq:0width$}{}",
        &pattern[..start],
        &pattern[start + len + 1..]
    )
}

/// The sender's key for the record. A Process with an empty ID asks bodflow to assign one:
/// an account's number (its existing one when linking, else the next from
/// `hub.account_number_format`), or a contact's hub ID.
fn assign_id(
    tx: &Tx<'_>,
    config: &Config,
    item: &Item,
    existing: Option<&HubRecord>,
    hub_id: &str,
    notes: &mut Vec<String>,
) -> TxResult<XrefKey> {
    let mut key = item.key.clone();
    if !key.id.is_empty() {
        return Ok(key);
    }
    key.id = match item.kind {
        Kind::Account => match existing.and_then(|r| r.fields.identity.account_number.clone()) {
            Some(number) => number,
            None => {
                let n = tx.next("account_number")?;
                format_account_number(&config.hub.account_number_format, n)
            }
        },
        Kind::Contact => hub_id.to_string(),
    };
    notes.push(format!("assigned ID {}", key.id));
    Ok(key)
}

fn create(
    tx: &Tx<'_>,
    config: &Config,
    doc: &Doc,
    app: &Application,
    item: &Item,
    em: &mut Emitter<'_>,
) -> TxResult<ItemResult> {
    let seq = tx.next(item.kind.prefix())?;
    let id = format!("{}-{seq:06}", item.kind.prefix());
    let mut fields = item.fields.clone();
    let mut notes = Vec::new();
    let key = assign_id(tx, config, item, None, &id, &mut notes)?;
    if item.kind == Kind::Account && fields.identity.account_number.is_none() {
        fields.identity.account_number = Some(key.id.clone());
    }
    if item.kind == Kind::Contact {
        stamp(&mut fields, app, true, &mut notes);
    }
    let owner = Owner {
        owner: item.owner.owner.clone(),
        account_manager: match item.kind {
            Kind::Account => item.owner.account_manager.clone(),
            Kind::Contact => None,
        },
    };
    let mut record = HubRecord {
        id: id.clone(),
        kind: item.kind,
        deleted: false,
        placeholder: false,
        fields,
        owner,
        account: None,
        intended_parent: None,
        xrefs: vec![Xref {
            application: key.application.clone(),
            accounting_entity: key.accounting_entity.clone(),
            id: key.id.clone(),
            variation: item.variation.clone().unwrap_or_default(),
        }],
        unlinked: Vec::new(),
        promotion: None,
        created_by: app.logical_id.clone(),
        revision: 1,
    };
    if item.kind == Kind::Contact {
        link_employer(tx, config, app, item, &mut record, &mut notes)?;
    }
    tx.put_record(&record)?;
    tx.put_xref(&key, &id)?;
    reindex(tx, config, None, Some(&record))?;
    wake_waiting_for(tx, config, &key)?;
    notes.insert(0, format!("created {id} for {}", key.display()));
    applied(
        tx,
        doc,
        em,
        Action::Created,
        &record,
        Announce::NewKey(&key),
        notes,
    )
}

/// Points a contact at its account: the one its EmployerReference names through the sender's
/// cross-references; else the application's default account, remembering the intended parent.
fn link_employer(
    tx: &Tx<'_>,
    config: &Config,
    app: &Application,
    item: &Item,
    record: &mut HubRecord,
    notes: &mut Vec<String>,
) -> TxResult<()> {
    let resolved = match &item.employer {
        Some(parent) => tx.xref(parent)?,
        None => None,
    };
    let previous_intent = record.intended_parent.clone();
    match (resolved, &item.employer) {
        (Some(account), _) => {
            if let Some(old) = &previous_intent {
                forget_waiting(tx, old, &record.id)?;
            }
            record.intended_parent = None;
            if record.account.as_deref() != Some(account.as_str()) {
                notes.push(format!("contact of {account}"));
            }
            set_account(tx, record, Some(account));
        }
        (None, Some(parent)) => {
            if previous_intent.as_ref() != Some(parent) {
                if let Some(old) = &previous_intent {
                    forget_waiting(tx, old, &record.id)?;
                }
                let mut waiting = tx.waiting_children(parent)?;
                if !waiting.contains(&record.id) {
                    waiting.push(record.id.clone());
                }
                tx.set_waiting_children(parent, &waiting)?;
            }
            record.intended_parent = Some(parent.clone());
            let account = default_account(tx, config, app)?;
            set_account(tx, record, account);
            notes.push(format!(
                "account {} unknown: {}, re-linked when it arrives",
                parent.display(),
                match &record.account {
                    Some(a) => format!("kept on default account {a}"),
                    None => "kept without account".to_string(),
                }
            ));
        }
        (None, None) => {
            if record.account.is_none() {
                let account = default_account(tx, config, app)?;
                set_account(tx, record, account);
                if let Some(a) = &record.account {
                    notes.push(format!("no EmployerReference: default account {a}"));
                }
            }
        }
    }
    Ok(())
}

/// Sets a contact's account, keeping the account→contacts index in step.
fn set_account(tx: &Tx<'_>, record: &mut HubRecord, account: Option<String>) {
    tx.move_contact(&record.id, record.account.as_deref(), account.as_deref());
    record.account = account;
}

/// The contacts of a hard-deleted account wait for it again, as a contact waits for an
/// account it names before the account arrives: under the key the delete came by (all the
/// account's keys are gone, and the application that deleted it is the one that may create
/// it again), kept meanwhile on their own application's default account (or without an
/// account), and announced with that employer. When that application creates the account
/// again (a newer variationID), they are re-linked to it; a contact its application sends
/// again, naming the account by a key of its own, waits under that key instead. A contact
/// already waiting for another account keeps waiting for that one.
fn release_contacts(
    tx: &Tx<'_>,
    config: &Config,
    doc: &Doc,
    account: &HubRecord,
    deleted_by: &XrefKey,
    em: &mut Emitter<'_>,
    notes: &mut Vec<String>,
) -> TxResult<()> {
    let mut waiting = tx.waiting_children(deleted_by)?;
    let waited = waiting.len();
    let mut released = Vec::new();
    let mut fallbacks: std::collections::BTreeMap<&str, Option<String>> = Default::default();
    for contact_id in tx.contacts_of(&account.id)? {
        let contact = tx.record(&contact_id)?;
        let Some(mut contact) =
            contact.filter(|c| c.account.as_deref() == Some(account.id.as_str()))
        else {
            // An entry its record does not agree with: not this account's contact.
            tx.move_contact(&contact_id, Some(&account.id), None);
            continue;
        };
        if contact.intended_parent.is_none() {
            if !waiting.contains(&contact.id) {
                waiting.push(contact.id.clone());
            }
            contact.intended_parent = Some(deleted_by.clone());
        }
        // Its own application's default account, as when it named an unknown account.
        let own = std::iter::once(contact.created_by.as_str())
            .chain(contact.xrefs.iter().map(|x| x.application.as_str()))
            .find_map(|lid| config.applications.iter().find(|a| a.logical_id == lid));
        let fallback = match own {
            // Looked up once an application: the contacts of one account mostly share it.
            Some(app) => match fallbacks.get(app.logical_id.as_str()) {
                Some(known) => known.clone(),
                None => {
                    let found = default_account(tx, config, app)?;
                    fallbacks.insert(app.logical_id.as_str(), found.clone());
                    found
                }
            },
            None => None,
        };
        set_account(tx, &mut contact, fallback);
        contact.revision += 1;
        tx.put_record(&contact)?;
        em.fan_out(tx, doc.app, &contact, false)?;
        released.push(match &contact.account {
            Some(a) => format!("{} (kept on {a})", contact.id),
            None => format!("{} (kept without account)", contact.id),
        });
    }
    if waiting.len() != waited {
        tx.set_waiting_children(deleted_by, &waiting)?;
    }
    if !released.is_empty() {
        notes.push(format!(
            "contacts of {} wait for it again: {}",
            account.id,
            released.join(", ")
        ));
    }
    Ok(())
}

fn forget_waiting(tx: &Tx<'_>, parent: &XrefKey, contact: &str) -> TxResult<()> {
    let mut waiting = tx.waiting_children(parent)?;
    let before = waiting.len();
    waiting.retain(|c| c != contact);
    if waiting.len() != before {
        tx.set_waiting_children(parent, &waiting)?;
    }
    Ok(())
}

/// A key whose record was hard-deleted: only a document newer than the delete brings it back
/// (the application created it again; the cross-reference it gets clears the tombstone). An
/// older or the same one is the result here.
fn before_delete(tx: &Tx<'_>, item: &Item) -> TxResult<Option<ItemResult>> {
    let Some(gone) = (!item.key.id.is_empty())
        .then(|| tx.tombstone(&item.key))
        .transpose()?
        .flatten()
    else {
        return Ok(None);
    };
    let (outcome, what) = match guard(&gone.variation, item.variation.as_deref()) {
        Guard::Apply => return Ok(None),
        Guard::Stale => (
            Outcome::Stale,
            format!(
                "variationID {} is older",
                item.variation.as_deref().unwrap_or("")
            ),
        ),
        Guard::Duplicate => (Outcome::Duplicate, "the same variationID again".into()),
    };
    Ok(Some(ItemResult::new(
        outcome,
        None,
        None,
        format!(
            "{} was hard-deleted ({}) at variationID {}: {what}",
            gone.record,
            item.key.display(),
            gone.variation
        ),
    )))
}

/// A placeholder default account linked to an application's own account (by a match, or by
/// an operator): it is the account the placeholder stood for, and from now on a record like
/// any other (synced, promoted, resynced).
pub(super) fn take_over_placeholder(
    record: &mut HubRecord,
    app: &Application,
    key: &XrefKey,
    notes: &mut Vec<String>,
) {
    if record.placeholder {
        record.placeholder = false;
        record.created_by = app.logical_id.clone();
        notes.push(format!(
            "{} is no longer a placeholder: it is {}'s account {}",
            record.id, app.name, key.id
        ));
    }
}

/// The hub ID of the application's default account, created as a placeholder on first use.
fn default_account(tx: &Tx<'_>, _config: &Config, app: &Application) -> TxResult<Option<String>> {
    let Some(number) = app.default_account.as_deref() else {
        return Ok(None);
    };
    // An application's real account with that number comes before a placeholder (under the
    // `create` policy both can exist).
    let mut placeholder = None;
    for hub_id in tx.matches(Kind::Account, MatchKey::AccountNumber, number)? {
        match tx.record(&hub_id)? {
            Some(r) if !r.deleted && !r.placeholder => return Ok(Some(hub_id)),
            Some(r) if !r.deleted && placeholder.is_none() => placeholder = Some(hub_id),
            _ => {}
        }
    }
    if placeholder.is_some() {
        return Ok(placeholder);
    }
    let seq = tx.next(Kind::Account.prefix())?;
    let id = format!("{}-{seq:06}", Kind::Account.prefix());
    let record = HubRecord {
        id: id.clone(),
        kind: Kind::Account,
        deleted: false,
        placeholder: true,
        fields: Fields {
            identity: crate::store::Identity {
                name: Some(format!("Default account {number} ({})", app.name)),
                account_number: Some(number.to_string()),
                ..Default::default()
            },
            ..Default::default()
        },
        owner: Owner {
            owner: app.default_record_owner.clone(),
            account_manager: app.default_account_manager.clone(),
        },
        account: None,
        intended_parent: None,
        xrefs: Vec::new(),
        unlinked: Vec::new(),
        promotion: None,
        created_by: String::new(),
        revision: 1,
    };
    tx.put_record(&record)?;
    tx.index(Kind::Account, MatchKey::AccountNumber, number, &id, true)?;
    Ok(Some(id))
}

/// An account just got the key `key`: contacts that were waiting for it move to it (and are
/// announced to every application but `sender`'s).
pub(super) fn relink_waiting(
    tx: &Tx<'_>,
    sender: usize,
    key: &XrefKey,
    account: &str,
    em: &mut Emitter<'_>,
    notes: &mut Vec<String>,
) -> TxResult<()> {
    let waiting = tx.waiting_children(key)?;
    if waiting.is_empty() {
        return Ok(());
    }
    for contact_id in &waiting {
        let Some(mut contact) = tx.record(contact_id)? else {
            continue;
        };
        set_account(tx, &mut contact, Some(account.to_string()));
        contact.intended_parent = None;
        contact.revision += 1;
        tx.put_record(&contact)?;
        em.fan_out(tx, sender, &contact, false)?;
    }
    tx.set_waiting_children(key, &[])?;
    notes.push(format!(
        "re-linked waiting contacts {} to {account}",
        waiting.join(", ")
    ));
    Ok(())
}

impl Applied {
    /// The replay line for this document.
    pub fn into_report(self, ctx: &Context, doc: Option<&Doc>) -> Report {
        let outcome = if let Some(_r) = &self.rejection {
            Outcome::Rejected
        } else {
            self.items
                .iter()
                .map(|r| r.outcome)
                .max_by_key(|o| o.rank())
                .unwrap_or(Outcome::Filtered)
        };
        let mut report = super::base_report(ctx, outcome);
        report.error = self.rejection;
        report.outputs = self.outputs;
        report.parked = self.items.iter().find_map(|r| r.parked);
        if let Some(doc) = doc {
            report.decisions.extend(doc.notes.iter().cloned());
        }
        let first = self.items.first();
        report.action = first.and_then(|r| r.action);
        report.record = first.and_then(|r| r.record.clone());
        // Applied: what the hub now holds. Otherwise: what the stages decided.
        match (first, doc.and_then(|d| d.items.first())) {
            (Some(r), _) if r.outcome == Outcome::Applied => {
                report.owner = r.owner.clone();
                report.country = r.country.clone();
            }
            (Some(_), Some(item)) if !self.duplicate_message => {
                report.owner = item.owner.owner.clone();
                report.country = item.fields.address.as_ref().and_then(|a| a.country.clone());
            }
            _ => {}
        }
        if self.items.len() > 1 {
            report.nouns = self
                .items
                .iter()
                .zip(doc.map(|d| d.items.as_slice()).unwrap_or_default())
                .map(|(r, i)| NounReport {
                    path: i.path.clone(),
                    outcome: r.outcome,
                    action: r.action,
                    record: r.record.clone(),
                })
                .collect();
        }
        for r in self.items {
            report.decisions.extend(r.notes);
        }
        report.decisions.extend(self.emitted);
        report
    }
}

/// Merges a document's `UserArea` values into a record's by name (a value named again
/// replaces the one kept, a new name is added at the end), looking names up in a map: a
/// document of 5,000 values on a record of 5,000 would otherwise compare names 25 million
/// times. A record keeps at most as many values, and as many bytes, as one document may
/// carry: a sender naming new values in every document (a date in the name, say) would
/// otherwise grow it for ever. The values first seen longest ago go.
fn merge_user_area(
    kept: &mut Vec<crate::bod::NameValue>,
    incoming: &[crate::bod::NameValue],
    notes: &mut Vec<String>,
) {
    // The map only when there is something to merge: most updates carry no values.
    let mut at: std::collections::HashMap<String, usize> = if incoming.is_empty() {
        Default::default()
    } else {
        kept.iter()
            .enumerate()
            .map(|(i, nv)| (nv.name.clone(), i))
            .collect()
    };
    for nv in incoming {
        match at.get(&nv.name) {
            Some(&i) => kept[i] = nv.clone(),
            None => {
                at.insert(nv.name.clone(), kept.len());
                kept.push(nv.clone());
            }
        }
    }
    let mut over = kept.len().saturating_sub(MAX_USER_AREA_VALUES);
    let mut bytes: usize = kept[over..].iter().map(crate::bod::NameValue::size).sum();
    while bytes > MAX_USER_AREA_BYTES && over < kept.len() {
        bytes -= kept[over].size();
        over += 1;
    }
    if over > 0 {
        kept.drain(..over);
        notes.push(format!(
            "UserArea: the {over} values first seen longest ago dropped (a record keeps at most {MAX_USER_AREA_VALUES}, of {} KiB)",
            MAX_USER_AREA_BYTES / 1024
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variation_guard_handles_empty_small_and_epoch_millis() {
        assert_eq!(guard("", Some("5")), Guard::Apply);
        assert_eq!(
            guard("5", None),
            Guard::Apply,
            "no variation: last writer wins"
        );
        assert_eq!(guard("5", Some("6")), Guard::Apply);
        assert_eq!(guard("5", Some("5")), Guard::Duplicate);
        assert_eq!(guard("10", Some("9")), Guard::Stale, "numeric, not lexical");
        assert_eq!(guard("1763360144691", Some("1763360144692")), Guard::Apply);
        assert_eq!(
            guard("99999999999999999999999", Some("100000000000000000000000")),
            Guard::Apply,
            "beyond u64"
        );
    }

    #[test]
    fn the_update_note_names_what_changed_not_what_the_sender_may_write() {
        let before: HubRecord = serde_json::from_str(
            r#"{"id":"ACC-000001","kind":"account","fields":{"identity":{"name":"Nordwind"},
                "commercial":{"payment_term":"N30"}},"xrefs":[],"revision":3}"#,
        )
        .unwrap();

        let mut after = before.clone();
        after.fields.user_area.push(crate::bod::NameValue {
            name: "Segment".into(),
            kind: None,
            value: "B2B".into(),
        });
        assert_eq!(changed_parts(&before, &after), ["UserArea"]);

        after.fields.commercial.payment_term = Some("N45".into());
        after.owner.owner = Some("U-JSMITH".into());
        after.account = Some("ACC-000002".into());

        // In this order; nothing named when nothing changed.
        let mut marked = before.clone();
        marked.deleted = true;
        let mut linked = before.clone();
        linked.xrefs.push(Xref {
            application: "lid://infor.crm.crm01".into(),
            accounting_entity: String::new(),
            id: "AKXW4D000120".into(),
            variation: String::new(),
        });
        for (other, named) in [
            (&before, &[][..]),
            (&after, &["commercial", "owner", "UserArea", "account"][..]),
            (&marked, &["deleted"][..]),
            (&linked, &["cross-references"][..]),
        ] {
            assert_eq!(changed_parts(&before, other), named);
        }
    }

    #[test]
    fn account_number_format_pads_the_sequence() {
        assert_eq!(format_account_number("C{seq:06}", 42), "C000042");
        assert_eq!(format_account_number("{seq}-X", 7), "7-X");
        assert_eq!(format_account_number("N", 3), "N3");
    }
}
