//! Element tree → [`Bod`]. Children are matched by local name, never by position: the Infor
//! schemas for the party and contact nouns are not public and senders disagree on order.
//!
//! Reading never fails on content, only on shape: a root without `ApplicationArea` and
//! `DataArea`, or a DataArea without a verb, is not a BOD. Everything a stage could object to
//! (missing IDs, bad codes) is left for validation, which knows the sender's configuration.

use super::dom::{Dom, Ns};
use super::{
    Address, ApplicationArea, Bod, Channel, ChannelKind, Contact, DecodeError, Id, LangText,
    NameValue, Noun, Party, SalesPerson, VerbHeader,
};

/// Builds the typed BOD from an element tree.
pub fn read_bod(dom: &Dom<'_>) -> Result<Bod, DecodeError> {
    let root = find_bod_root(dom)?;
    let root_name = dom.node(root).name.to_string();
    let unknown = |why| DecodeError::UnknownRoot {
        root: root_name.clone(),
        why,
    };
    let area_idx = dom
        .child(root, "ApplicationArea")
        .ok_or_else(|| unknown("no ApplicationArea"))?;
    let data = dom
        .child(root, "DataArea")
        .ok_or_else(|| unknown("no DataArea"))?;
    let mut content = dom
        .all_children(data)
        .filter(|&c| dom.node(c).ns == Ns::Bod);
    let verb_idx = content
        .next()
        .ok_or_else(|| unknown("DataArea has no verb"))?;
    let noun_idxs: Vec<usize> = content.collect();
    if noun_idxs.len() > MAX_NOUNS {
        return Err(DecodeError::TooComplex {
            what: format!("more than {MAX_NOUNS} nouns"),
            path: Some(format!("/{root_name}/DataArea")),
        });
    }
    let verb = dom.node(verb_idx).name.to_string();
    let noun = noun_idxs
        .first()
        .map(|&n| dom.node(n).name.to_string())
        .unwrap_or_default();

    // How many nouns share each name, and how many of them were read so far: a repeated name
    // gets an index in its path.
    let mut named: std::collections::HashMap<&str, (usize, usize)> =
        std::collections::HashMap::new();
    for &n in &noun_idxs {
        named.entry(dom.node(n).name).or_default().0 += 1;
    }
    let mut nouns = Vec::with_capacity(noun_idxs.len());
    // `UserArea` values the document may still carry, over all its nouns.
    let mut user_area = UserAreaBudget::default();
    for &n in &noun_idxs {
        let name = dom.node(n).name;
        let (same_name, read) = named.entry(name).or_default();
        *read += 1;
        let path = if *same_name > 1 {
            format!("/{root_name}/DataArea/{name}[{read}]")
        } else {
            format!("/{root_name}/DataArea/{name}")
        };
        nouns.push(match name {
            "CustomerPartyMaster" => {
                Noun::Account(Box::new(read_party(dom, n, path, &mut user_area)?))
            }
            "ContactMaster" => Noun::Contact(Box::new(read_contact(dom, n, path, &mut user_area)?)),
            _ => Noun::Other {
                name: name.to_string(),
                path,
            },
        });
    }

    Ok(Bod {
        root: root_name.clone(),
        verb,
        noun,
        release_id: dom.attr(root, "releaseID").map(str::to_string),
        language_code: dom.attr(root, "languageCode").map(str::to_string),
        area: read_area(dom, area_idx),
        header: read_verb(dom, verb_idx),
        nouns,
        from_envelope: Default::default(),
    })
}

/// The BOD root: the document root, or the first element of a SOAP `Body`.
fn find_bod_root(dom: &Dom<'_>) -> Result<usize, DecodeError> {
    let root = dom.root();
    if root.ns == Ns::Soap && root.name == "Envelope" {
        let body = dom
            .all_children(0)
            .find(|&c| dom.node(c).ns == Ns::Soap && dom.node(c).name == "Body");
        return body
            .and_then(|b| dom.all_children(b).next())
            .ok_or(DecodeError::UnknownRoot {
                root: "Envelope".into(),
                why: "SOAP envelope without a BOD in its Body",
            });
    }
    if root.ns != Ns::Bod {
        return Err(DecodeError::UnknownRoot {
            root: root.name.to_string(),
            why: "not in a BOD namespace",
        });
    }
    Ok(0)
}

fn owned(dom: &Dom<'_>, at: usize, path: &str) -> Option<String> {
    dom.text(at, path).map(str::to_string)
}

fn read_area(dom: &Dom<'_>, at: usize) -> ApplicationArea {
    ApplicationArea {
        logical_id: owned(dom, at, "Sender/LogicalID"),
        component_id: owned(dom, at, "Sender/ComponentID"),
        confirmation_code: owned(dom, at, "Sender/ConfirmationCode"),
        creation: owned(dom, at, "CreationDateTime"),
        bod_id: owned(dom, at, "BODID"),
    }
}

fn read_verb(dom: &Dom<'_>, at: usize) -> VerbHeader {
    let action_code = dom
        .find(at, "ActionCriteria/ActionExpression")
        .and_then(|e| dom.attr(e, "actionCode"))
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let response = dom.find(at, "ResponseCriteria/ResponseExpression");
    let response_reason = dom
        .text(at, "ResponseCriteria/ChangeStatus/ReasonCode")
        .or_else(|| dom.text(at, "ResponseCriteria/ChangeStatus/Description"))
        .or_else(|| dom.text(at, "ResponseCriteria/ChangeStatus/Reason"))
        .map(str::to_string);
    VerbHeader {
        tenant_id: owned(dom, at, "TenantID"),
        accounting_entity_id: owned(dom, at, "AccountingEntityID"),
        location_id: owned(dom, at, "LocationID"),
        action_code,
        acknowledge_code: dom.attr(at, "acknowledgeCode").map(str::to_string),
        original: dom
            .child(at, "OriginalApplicationArea")
            .map(|o| read_area(dom, o)),
        response_code: response
            .and_then(|r| dom.attr(r, "actionCode"))
            .filter(|v| !v.is_empty())
            .map(str::to_string),
        response_reason,
    }
}

fn read_id(dom: &Dom<'_>, at: usize) -> Id {
    let attr = |n: &str| dom.attr(at, n).map(str::to_string);
    Id {
        value: dom.node(at).text.to_string(),
        accounting_entity: attr("accountingEntity").filter(|v| !v.is_empty()),
        location: attr("location").filter(|v| !v.is_empty()),
        lid: attr("lid").filter(|v| !v.is_empty()),
        variation: attr("variationID"),
        scheme_name: attr("schemeName").filter(|v| !v.is_empty()),
    }
}

fn read_ids(dom: &Dom<'_>, at: usize, container: &str) -> Vec<Id> {
    dom.children(at, container)
        .flat_map(|c| dom.children(c, "ID"))
        .map(|i| read_id(dom, i))
        .collect()
}

fn lang_texts(dom: &Dom<'_>, at: usize, name: &str) -> Vec<LangText> {
    dom.children(at, name)
        .map(|n| LangText {
            lang: dom.attr(n, "languageID").map(str::to_string),
            text: dom.node(n).text.to_string(),
        })
        .collect()
}

/// Every `Code` of `at`'s classifications (`Classification/Code` and
/// `Classification/Codes/Code`, in that order per classification) with its path step below
/// `at` and whether its classification is typed as the account type.
fn classification_codes(dom: &Dom<'_>, at: usize) -> Vec<(usize, bool, String)> {
    let mut out = Vec::new();
    for (c, c_step) in named_children(dom, at, "Classification") {
        let typed = is_account_type_label(dom.attr(c, "type"));
        for (code, step) in named_children(dom, c, "Code") {
            out.push((code, typed, format!("{c_step}/{step}")));
        }
        for (codes, codes_step) in named_children(dom, c, "Codes") {
            for (code, step) in named_children(dom, codes, "Code") {
                out.push((code, typed, format!("{c_step}/{codes_step}/{step}")));
            }
        }
    }
    out
}

/// The non-empty classification codes of `at` and their path steps.
fn classifications(dom: &Dom<'_>, at: usize) -> (Vec<String>, Vec<String>) {
    classification_codes(dom, at)
        .into_iter()
        .map(|(c, _, step)| (dom.node(c).text.to_string(), step))
        .filter(|(t, _)| !t.is_empty())
        .unzip()
}

/// Whether an attribute value names the account type list (`AccountType`, `Account Type`,
/// `account_type`, any case).
fn is_account_type_label(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        v.chars()
            .filter(|c| !matches!(c, ' ' | '_' | '-'))
            .collect::<String>()
            .eq_ignore_ascii_case("accounttype")
    })
}

/// A party's classification codes (with their path steps) and its account type with where
/// it was read: `@role` of the party, else the first code marked as the account type (which
/// is then not a classification).
struct PartyClassifications {
    codes: Vec<String>,
    steps: Vec<String>,
    account_type: Option<(String, String)>,
}

fn party_classifications(dom: &Dom<'_>, at: usize) -> PartyClassifications {
    let mut out = PartyClassifications {
        codes: Vec::new(),
        steps: Vec::new(),
        account_type: dom
            .attr(at, "role")
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| (v.to_string(), "@role".to_string())),
    };
    for (code, typed, step) in classification_codes(dom, at) {
        let text = dom.node(code).text.to_string();
        if text.is_empty() {
            continue;
        }
        let marked = typed
            || is_account_type_label(dom.attr(code, "listID"))
            || is_account_type_label(dom.attr(code, "name"));
        if marked {
            out.account_type.get_or_insert((text, step));
        } else {
            out.codes.push(text);
            out.steps.push(step);
        }
    }
    out
}

fn is_true(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// `name` as a path step: with its position among its `count` siblings of that name when
/// there is more than one (`Location[2]`), as rejections name elements.
fn step(name: &str, pos: usize, count: usize) -> String {
    if count > 1 {
        format!("{name}[{}]", pos + 1)
    } else {
        name.to_string()
    }
}

/// The children of `at` named `name`, each with its path step.
fn named_children(dom: &Dom<'_>, at: usize, name: &str) -> Vec<(usize, String)> {
    let all: Vec<usize> = dom.children(at, name).collect();
    let count = all.len();
    all.into_iter()
        .enumerate()
        .map(|(pos, c)| (c, step(name, pos, count)))
        .collect()
}

/// The `Address` children of each `container` child of `at` (`Location`), with their paths.
fn addresses_under(dom: &Dom<'_>, at: usize, container: &str) -> Vec<Address> {
    named_children(dom, at, container)
        .into_iter()
        .flat_map(|(c, c_step)| {
            named_children(dom, c, "Address")
                .into_iter()
                .map(move |(a, a_step)| (a, format!("{c_step}/{a_step}")))
        })
        .map(|(a, path)| read_address(dom, a, path))
        .collect()
}

fn read_address(dom: &Dom<'_>, at: usize, path: String) -> Address {
    let count = dom.children(at, "AddressLine").count();
    let mut lines: Vec<(u32, usize, String)> = dom
        .children(at, "AddressLine")
        .enumerate()
        .map(|(pos, l)| {
            let seq = dom
                .attr(l, "sequence")
                .and_then(|s| s.parse::<u32>().ok())
                .unwrap_or(u32::MAX);
            (seq, pos, dom.node(l).text.to_string())
        })
        .filter(|(_, _, t)| !t.is_empty())
        .collect();
    lines.sort();
    Address {
        kind: dom
            .attr(at, "type")
            .filter(|v| !v.is_empty())
            .map(str::to_string),
        attention: owned(dom, at, "AttentionOfName"),
        line_steps: lines
            .iter()
            .map(|(_, pos, _)| step("AddressLine", *pos, count))
            .collect(),
        lines: lines.into_iter().map(|(_, _, t)| t).collect(),
        building_number: owned(dom, at, "BuildingNumber"),
        building_name: owned(dom, at, "BuildingName"),
        street_name: owned(dom, at, "StreetName"),
        unit: owned(dom, at, "Unit"),
        floor: owned(dom, at, "Floor"),
        post_office_box: owned(dom, at, "PostOfficeBox"),
        city: owned(dom, at, "CityName"),
        subdivision: owned(dom, at, "CountrySubDivisionCode"),
        subdivision2: owned(dom, at, "CountrySubDivision2Code"),
        country: owned(dom, at, "CountryCode"),
        postal_code: owned(dom, at, "PostalCode"),
        preferred: is_true(dom.attr(at, "preferredIndicator"))
            || is_true(dom.text(at, "Preference/Indicator")),
        path,
    }
}

/// Channel kind from `ChannelCode`, else from the value's shape.
fn channel_kind(code: Option<&str>, uri: bool, value: &str) -> ChannelKind {
    let code = code.map(|c| c.to_ascii_lowercase().replace(['-', ' ', '_'], ""));
    match code.as_deref() {
        Some("email" | "mail") => ChannelKind::Email,
        Some("website" | "web" | "url" | "internet") => ChannelKind::Web,
        Some("phone" | "telephone" | "fax" | "mobile") => ChannelKind::Phone,
        _ if value.contains('@') => ChannelKind::Email,
        _ if uri => ChannelKind::Web,
        _ => ChannelKind::Phone,
    }
}

/// A `Communication`/`CommunicationDetail` carrying a number or URI; `None` when it carries
/// neither (an address-only detail, or empty placeholders as in the SX.e samples).
fn read_channel(dom: &Dom<'_>, at: usize, path: String) -> Option<Channel> {
    let (value, uri) = match (dom.text(at, "DialNumber"), dom.text(at, "URI")) {
        (Some(d), _) => (d, false),
        (None, Some(u)) => (u, true),
        (None, None) => return None,
    };
    Some(Channel {
        path,
        value_element: if uri { "URI" } else { "DialNumber" },
        channel: channel_kind(dom.text(at, "ChannelCode"), uri, value),
        use_code: owned(dom, at, "UseCode"),
        value: value.to_string(),
        preferred: is_true(dom.attr(at, "preferredIndicator"))
            || is_true(dom.text(at, "Preference/Indicator")),
    })
}

fn read_sales_persons(dom: &Dom<'_>, at: usize) -> Vec<SalesPerson> {
    dom.children(at, "SalesPersonReference")
        .map(|s| SalesPerson {
            id: read_ids(dom, s, "IDs")
                .into_iter()
                .map(|i| i.value)
                .find(|v| !v.is_empty()),
            names: lang_texts(dom, s, "Name"),
            role: owned(dom, s, "SalesPersonRole"),
        })
        .collect()
}

/// Most nouns one document may carry. Real BODs carry one or a few dozen; each costs memory
/// as it is read, before the sender is even known.
pub const MAX_NOUNS: usize = 1_000;

/// Most `UserArea` values one document may carry, over all its nouns. Real senders send a few
/// dozen a noun.
pub const MAX_USER_AREA_VALUES: usize = 5_000;

/// Longest name of a `UserArea` value, in bytes. A value's name is its path below `UserArea`
/// (element names joined by `/`), so without this bound a document of the allowed size could
/// expand into gigabytes of names: long element names nested deep, above many leaves.
pub const MAX_USER_AREA_NAME_BYTES: usize = 1_024;

/// Most bytes of `UserArea` values (names, types and values) one document may carry, over all
/// its nouns. bodflow keeps them on the record, which every change reads and writes whole: a
/// document of the allowed size whose UserArea is one 3.5 MB value would make each later
/// change of that record cost as much (a record keeps at most this much, too).
pub const MAX_USER_AREA_BYTES: usize = 1 << 20;

/// What a document may still carry of `UserArea` values, over all its nouns.
pub(crate) struct UserAreaBudget {
    values: usize,
    bytes: usize,
}

impl Default for UserAreaBudget {
    fn default() -> Self {
        UserAreaBudget {
            values: MAX_USER_AREA_VALUES,
            bytes: MAX_USER_AREA_BYTES,
        }
    }
}

/// Everything under `UserArea`: `Property/NameValue` pairs by name, any other leaf by its path.
/// Each value is taken from `budget` ([`MAX_USER_AREA_VALUES`], [`MAX_USER_AREA_BYTES`]);
/// going over it, or a name over [`MAX_USER_AREA_NAME_BYTES`], is `too_complex` at
/// `{path}/UserArea`.
fn read_user_area(
    dom: &Dom<'_>,
    at: usize,
    path: &str,
    budget: &mut UserAreaBudget,
) -> Result<Vec<NameValue>, DecodeError> {
    let mut out = Vec::new();
    for ua in dom.all_children(at) {
        if dom.node(ua).name != "UserArea" {
            continue;
        }
        for child in dom.all_children(ua) {
            if let Err(what) = collect_user_area(dom, child, "", &mut out, budget) {
                return Err(DecodeError::TooComplex {
                    what,
                    path: Some(format!("{path}/UserArea")),
                });
            }
        }
    }
    Ok(out)
}

/// Adds the values below `at` to `out`, taking each from `budget`; `Err` names the limit
/// crossed.
fn collect_user_area(
    dom: &Dom<'_>,
    at: usize,
    prefix: &str,
    out: &mut Vec<NameValue>,
    budget: &mut UserAreaBudget,
) -> Result<(), String> {
    let el = dom.node(at);
    let mut push = |value: NameValue| {
        if budget.values == 0 {
            return Err(format!(
                "more than {MAX_USER_AREA_VALUES} UserArea values in the document"
            ));
        }
        let size = value.size();
        if size > budget.bytes {
            return Err(format!(
                "UserArea values of more than {} KiB in the document",
                MAX_USER_AREA_BYTES / 1024
            ));
        }
        budget.values -= 1;
        budget.bytes -= size;
        out.push(value);
        Ok(())
    };
    if el.name == "NameValue" {
        return push(NameValue {
            name: dom.attr(at, "name").unwrap_or_default().to_string(),
            kind: dom.attr(at, "type").map(str::to_string),
            value: el.text.to_string(),
        });
    }
    let leaf = dom.all_children(at).next().is_none();
    // `Property` wrappers add nothing to a name; an empty leaf has no value and needs none.
    if (leaf && el.text.is_empty()) || (!leaf && el.name == "Property") {
        for child in dom.all_children(at) {
            collect_user_area(dom, child, prefix, out, budget)?;
        }
        return Ok(());
    }
    let len = prefix.len() + usize::from(!prefix.is_empty()) + el.name.len();
    if len > MAX_USER_AREA_NAME_BYTES {
        return Err(format!(
            "a UserArea value name (its path) longer than {MAX_USER_AREA_NAME_BYTES} bytes"
        ));
    }
    let mut path = String::with_capacity(len);
    if !prefix.is_empty() {
        path.push_str(prefix);
        path.push('/');
    }
    path.push_str(el.name);
    if leaf {
        return push(NameValue {
            name: path,
            kind: None,
            value: el.text.to_string(),
        });
    }
    for child in dom.all_children(at) {
        collect_user_area(dom, child, &path, out, budget)?;
    }
    Ok(())
}

fn read_party(
    dom: &Dom<'_>,
    at: usize,
    path: String,
    user_area: &mut UserAreaBudget,
) -> Result<Party, DecodeError> {
    let user_area = read_user_area(dom, at, &path, user_area)?;
    let addresses = addresses_under(dom, at, "Location");
    let classified = party_classifications(dom, at);
    let (account_type, account_type_at) = classified.account_type.unzip();
    let (account_ids, account_id_steps) = named_children(dom, at, "AccountIDs")
        .into_iter()
        .flat_map(|(c, c_step)| {
            named_children(dom, c, "ID")
                .into_iter()
                .map(move |(i, step)| (read_id(dom, i).value, format!("{c_step}/{step}")))
        })
        .filter(|(v, _)| !v.is_empty())
        .unzip();
    Ok(Party {
        path,
        ids: read_ids(dom, at, "PartyIDs"),
        account_ids,
        account_id_steps,
        names: lang_texts(dom, at, "Name"),
        currency: owned(dom, at, "CurrencyCode"),
        status: owned(dom, at, "Status/Code"),
        payment_term: owned(dom, at, "PaymentTermID")
            .or_else(|| owned(dom, at, "PaymentTerm/IDs/ID")),
        classifications: classified.codes,
        classification_steps: classified.steps,
        account_type,
        account_type_at,
        sales_persons: read_sales_persons(dom, at),
        addresses,
        channels: named_children(dom, at, "Communication")
            .into_iter()
            .filter_map(|(c, path)| read_channel(dom, c, path))
            .collect(),
        user_area,
        last_modified: owned(dom, at, "LastModificationDateTime"),
    })
}

fn read_contact(
    dom: &Dom<'_>,
    at: usize,
    path: String,
    user_area: &mut UserAreaBudget,
) -> Result<Contact, DecodeError> {
    let user_area = read_user_area(dom, at, &path, user_area)?;
    let details = named_children(dom, at, "CommunicationDetail");
    let address = addresses_under(dom, at, "CommunicationDetail")
        .into_iter()
        .next()
        .or_else(|| addresses_under(dom, at, "Location").into_iter().next());
    let employer = dom.child(at, "EmployerReference").and_then(|e| {
        ["DocumentID/ID", "PartyIDs/ID", "IDs/ID", "ID"]
            .into_iter()
            .find_map(|p| dom.find(e, p).map(|i| (read_id(dom, i), p)))
    });
    let (classifications, classification_steps) = classifications(dom, at);
    Ok(Contact {
        path,
        ids: read_ids(dom, at, "IDs"),
        names: lang_texts(dom, at, "Name"),
        given_name: owned(dom, at, "GivenName"),
        family_name: owned(dom, at, "FamilyName"),
        job_title: owned(dom, at, "JobTitle"),
        channels: details
            .into_iter()
            .chain(named_children(dom, at, "Communication"))
            .filter_map(|(d, path)| read_channel(dom, d, path))
            .collect(),
        address,
        employer_at: employer.as_ref().map_or("DocumentID/ID", |(_, p)| p),
        employer: employer.map(|(id, _)| id),
        classifications,
        classification_steps,
        status: owned(dom, at, "Status/Code"),
        sales_persons: read_sales_persons(dom, at),
        user_area,
        relationship: dom
            .attr(at, "type")
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::super::{parse, pick_language, Limits, Noun};

    const PARTY: &str = r#"<?xml version="1.0"?>
<SyncCustomerPartyMaster xmlns="http://schema.infor.com/InforOAGIS/2" releaseID="9.2">
  <ApplicationArea>
    <Sender><LogicalID>lid://infor.ln.ln01/3555</LogicalID><ConfirmationCode>OnError</ConfirmationCode></Sender>
    <CreationDateTime>2025-09-24T09:33:09.770Z</CreationDateTime>
    <BODID>infor-nid:T:3555::C1:?CustomerPartyMaster&amp;verb=Sync</BODID>
  </ApplicationArea>
  <DataArea>
    <Sync><TenantID>ACME</TenantID><AccountingEntityID>3555</AccountingEntityID>
      <ActionCriteria><ActionExpression actionCode="Change">Change</ActionExpression></ActionCriteria></Sync>
    <CustomerPartyMaster>
      <PartyIDs><ID accountingEntity="3555" variationID="1763360144691">C1</ID></PartyIDs>
      <Name languageID="de-DE">Acme GmbH (de)</Name><Name languageID="en-us">Acme GmbH</Name>
      <Location><Address type="Text"><AddressLine sequence="3">c</AddressLine><!-- gap -->
        <AddressLine sequence="1">a</AddressLine><AddressLine sequence="2">
        </AddressLine><CountryCode>DEU</CountryCode></Address></Location>
      <Communication><ChannelCode>EMail</ChannelCode><URI>info@acme.example</URI></Communication>
      <Communication><ChannelCode>Phone</ChannelCode><DialNumber/></Communication>
      <SalesPersonReference><IDs><ID>1001</ID></IDs><SalesPersonRole>Internal</SalesPersonRole></SalesPersonReference>
      <UserArea><Property><NameValue name="ln.Area" type="String">North</NameValue></Property><X><Y>z</Y></X></UserArea>
    </CustomerPartyMaster>
  </DataArea>
</SyncCustomerPartyMaster>"#;

    #[test]
    fn reads_envelope_verb_and_party() {
        let bod = parse(PARTY.as_bytes(), Limits::default()).unwrap();
        assert_eq!(
            (bod.verb.as_str(), bod.noun.as_str()),
            ("Sync", "CustomerPartyMaster")
        );
        assert_eq!(
            bod.area.logical_id.as_deref(),
            Some("lid://infor.ln.ln01/3555")
        );
        assert_eq!(
            bod.area.bod_id.as_deref(),
            Some("infor-nid:T:3555::C1:?CustomerPartyMaster&verb=Sync")
        );
        assert_eq!(bod.header.action_code.as_deref(), Some("Change"));
        let Noun::Account(p) = &bod.nouns[0] else {
            panic!("expected a party")
        };
        assert_eq!(
            p.path,
            "/SyncCustomerPartyMaster/DataArea/CustomerPartyMaster"
        );
        assert_eq!(p.ids[0].variation.as_deref(), Some("1763360144691"));
        assert_eq!(pick_language(&p.names, "en-US"), Some("Acme GmbH"));
        assert_eq!(p.addresses[0].lines, vec!["a", "c"]);
        assert_eq!(p.channels.len(), 1, "an empty DialNumber is no channel");
        assert_eq!(p.sales_persons[0].id.as_deref(), Some("1001"));
        let names: Vec<_> = p.user_area.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, vec!["ln.Area", "X/Y"]);
    }

    #[test]
    fn the_account_type_is_read_from_role_or_an_account_type_classification() {
        let doc = |attrs: &str, classes: &str| {
            PARTY
                .replacen(
                    "<CustomerPartyMaster>",
                    &format!("<CustomerPartyMaster{attrs}>"),
                    1,
                )
                .replacen(
                    "<Name languageID=\"de-DE\">",
                    &format!("{classes}<Name languageID=\"de-DE\">"),
                    1,
                )
        };
        let party = |xml: String| {
            let bod = parse(xml.as_bytes(), Limits::default()).unwrap();
            let Noun::Account(p) = bod.nouns.into_iter().next().unwrap() else {
                panic!("party expected")
            };
            (p.account_type, p.classifications)
        };
        assert_eq!(
            party(doc(r#" category="Organization" role=" Customer ""#, "")),
            (Some("Customer".into()), vec![])
        );
        let coded = r#"<Classification><Codes><Code listID="Account Type">Prospect</Code><Code>VIP</Code></Codes></Classification>"#;
        assert_eq!(
            party(doc("", coded)),
            (Some("Prospect".into()), vec!["VIP".to_string()])
        );
        let typed = r#"<Classification type="account_type"><Codes><Code>Partner</Code></Codes></Classification>"#;
        assert_eq!(party(doc("", typed)).0.as_deref(), Some("Partner"));
        assert_eq!(
            party(doc(r#" role="Customer""#, coded)),
            (Some("Customer".into()), vec!["VIP".to_string()]),
            "@role wins; the coded type is still not a classification"
        );
        assert_eq!(party(doc("", "")), (None, vec![]));
    }

    #[test]
    fn soap_envelopes_are_unwrapped() {
        let doc = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>
          <oa:ConfirmBOD xmlns:oa="http://www.openapplications.org/oagis/9"><oa:ApplicationArea/>
          <oa:DataArea><oa:Confirm/><oa:BOD/></oa:DataArea></oa:ConfirmBOD></s:Body></s:Envelope>"#;
        let bod = parse(doc.as_bytes(), Limits::default()).unwrap();
        assert_eq!(
            (bod.root.as_str(), bod.verb.as_str()),
            ("ConfirmBOD", "Confirm")
        );
    }

    #[test]
    fn non_bod_roots_are_unknown() {
        for doc in [
            "<html><body/></html>",
            "<A><ApplicationArea/></A>",
            "<x:A xmlns:x='urn:q'/>",
        ] {
            let err = parse(doc.as_bytes(), Limits::default()).unwrap_err();
            assert_eq!(err.code(), "unknown_root", "{doc}");
        }
    }
}
