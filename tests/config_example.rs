//! `deploy/bodflow.example.toml` is the documented reference configuration (DESIGN §5.2): it
//! must load, it must show every key `src/config.rs` accepts, and its key facts must survive
//! parsing. A section that only works in some deployments (`[amqp.tls]`, which needs an
//! `amqps://` URL and certificate files) is shown switched off: its header and keys commented
//! out as `# [section]` and `# key = value` lines, which must load once switched on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use bodflow::config::{
    Amqp, Application, Config, CountryCodeFormat, CreatePolicy, DeleteMode, DeleteModeOrBool,
    Direction, FieldGroup, Flows, Http, Hub, Limits, MatchKey, Period, Promotion, Tls, Tracking,
    User,
};

/// Stands for "any key" where a configuration table is a map (nouns, country codes).
const ANY: &str = "*";

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/bodflow.example.toml")
}

fn example_text() -> String {
    std::fs::read_to_string(example_path()).unwrap_or_else(|e| panic!("reading example: {e}"))
}

/// The switched-off sections of the example (module docs), switched on: each `# [section]`
/// line and the `# key = value` lines right after it, uncommented.
fn switched_off() -> String {
    let text = example_text();
    let mut on = String::new();
    let mut in_section = false;
    for line in text.lines() {
        let body = line.strip_prefix("# ").unwrap_or_default();
        if body.starts_with('[') && body.ends_with(']') {
            in_section = true;
        } else if !(in_section && body.contains(" = ")) {
            in_section = false;
            continue;
        }
        on.push_str(body);
        on.push('\n');
    }
    on
}

fn example() -> Config {
    Config::load(&example_path()).unwrap_or_else(|e| panic!("example must be valid: {e}"))
}

fn app<'a>(config: &'a Config, name: &str) -> &'a Application {
    config
        .applications
        .iter()
        .find(|a| a.name == name)
        .unwrap_or_else(|| panic!("example has no application {name:?}"))
}

#[test]
fn example_loads_and_passes_the_cross_checks() {
    // `Config::load` = parse with unknown keys denied + `Config::check` (owners are users,
    // logical IDs unique, nouns known, match_on present, alternate codes ISO).
    let config = example();
    assert!(config.users.len() >= 3, "several [[users]]");
    assert!(
        config.applications.len() >= 3,
        "at least three [[applications]]"
    );
}

// ---------------------------------------------------------------------------------------------
// Every key is documented.
//
// Choice: the expected keys are derived, not listed by hand. `fully_populated()` builds a
// `Config` with exhaustive struct literals — no `..Default::default()` anywhere — so adding a
// field to any config struct is a compile error here until it is filled in; every `Option` is
// `Some` and every collection has one entry, whose map keys are `*`. It is serialized to JSON
// (not TOML) because JSON keeps a `None` as `null` rather than dropping it, so a field's name
// shows up even if someone fills a new one with `None`. The JSON tree gives the schema: paths
// like `applications.flows.*.outbound.fields`, with arrays of tables flattened (`users.id`) and
// map keys generalised to `*`. The example's TOML tree, walked against that schema, must
// contain every path. A key added to src/config.rs but not to the example therefore fails.
//
// One generalisation more: `inbound` and `outbound` are the same struct (`Direction`), so its
// keys are compared once for both (`flows.*.<direction>.fields`). Each struct's keys must
// appear, not each struct at every place it is used — and `fields` is outbound-only
// (DESIGN §3), so the reference must not show it under `inbound`.
// ---------------------------------------------------------------------------------------------

fn everything() -> Direction {
    Direction {
        create: true,
        update: true,
        delete: DeleteModeOrBool(DeleteMode::Soft),
        fields: Some(FieldGroup::ALL.to_vec()),
    }
}

fn fully_populated() -> Config {
    Config {
        hub: Hub {
            logical_id: "lid://hub".into(),
            tenant: Some("T".into()),
            store: PathBuf::from("store"),
            store_cache_mb: Some(4),
            account_number_format: "C{seq}".into(),
            promotion: Some(Promotion {
                when_type: "Customer".into(),
                system_of_record: "lid://a".into(),
                accounting_entity: Some("1".into()),
            }),
            tombstone_retention: Period(std::time::Duration::from_secs(3600)),
            dedup_window: Some(Period(std::time::Duration::from_secs(7200))),
        },
        amqp: Amqp {
            url: "amqp://localhost".into(),
            prefetch: 1,
            lanes: 1,
            tls: Tls {
                ca_file: Some(PathBuf::from("ca.pem")),
                cert_file: Some(PathBuf::from("client.pem")),
                key_file: Some(PathBuf::from("client.key")),
            },
        },
        http: Http {
            listen: "127.0.0.1:1".into(),
        },
        tracking: Tracking {
            enabled: true,
            retention: Period(std::time::Duration::from_secs(60)),
        },
        limits: Limits {
            max_bytes: 1,
            max_depth: 1,
        },
        users: vec![User {
            id: "U".into(),
            first_name: Some("F".into()),
            last_name: Some("L".into()),
            personnel_number: Some("1".into()),
            external_personnel_number: Some("2".into()),
        }],
        applications: vec![Application {
            name: "A".into(),
            logical_id: "lid://a".into(),
            active: true,
            country_code_format: CountryCodeFormat::Alternate,
            alternate_country_codes: BTreeMap::from([(ANY.into(), "GB".into())]),
            default_account: Some("X".into()),
            default_account_manager: Some("U".into()),
            default_record_owner: Some("U".into()),
            sales_person_role: Some("Internal".into()),
            language_code: "en-US".into(),
            create_policy: CreatePolicy::MatchOrCreate,
            match_on: vec![MatchKey::Email],
            masters: FieldGroup::ALL.to_vec(),
            flows: BTreeMap::from([(
                ANY.into(),
                Flows {
                    inbound: everything(),
                    outbound: everything(),
                },
            )]),
            require_classification: Some("Sales".into()),
            stamp_classification: Some("Sales".into()),
            resync_every: Some("24h".into()),
            resync_at: Some("02:30".into()),
        }],
    }
}

/// Schema paths (`a.b.*.c`) of every table key in a serialized `Config`.
fn schema_paths(value: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                let path = join(prefix, key);
                out.insert(path.clone());
                schema_paths(child, &path, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                schema_paths(item, prefix, out);
            }
        }
        _ => {}
    }
}

/// Paths of every key in the example, with keys of map tables (those whose schema child is
/// `*`) generalised to `*`.
fn example_paths(
    value: &toml::Value,
    prefix: &str,
    schema: &BTreeSet<String>,
    out: &mut BTreeSet<String>,
) {
    match value {
        toml::Value::Table(table) => {
            let is_map = schema.contains(&join(prefix, ANY));
            for (key, child) in table {
                let path = join(prefix, if is_map { ANY } else { key });
                out.insert(path.clone());
                example_paths(child, &path, schema, out);
            }
        }
        toml::Value::Array(items) => {
            for item in items {
                example_paths(item, prefix, schema, out);
            }
        }
        _ => {}
    }
}

/// `applications.flows.*.inbound.fields` → `applications.flows.*.<direction>.fields`.
fn generalise_direction(path: &str) -> String {
    path.replace(".inbound.", ".<direction>.")
        .replace(".outbound.", ".<direction>.")
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn expected_and_documented() -> (BTreeSet<String>, BTreeSet<String>) {
    let json = serde_json::to_value(fully_populated())
        .unwrap_or_else(|e| panic!("serializing Config: {e}"));
    let mut expected = BTreeSet::new();
    schema_paths(&json, "", &mut expected);

    let table: toml::Table = example_text()
        .parse()
        .unwrap_or_else(|e| panic!("example is not TOML: {e}"));
    let mut present = BTreeSet::new();
    example_paths(&toml::Value::Table(table), "", &expected, &mut present);
    let off: toml::Table = switched_off()
        .parse()
        .unwrap_or_else(|e| panic!("a switched-off section is not TOML: {e}"));
    example_paths(&toml::Value::Table(off), "", &expected, &mut present);
    let generalise = |set: BTreeSet<String>| -> BTreeSet<String> {
        set.iter().map(|p| generalise_direction(p)).collect()
    };
    (generalise(expected), generalise(present))
}

#[test]
fn example_shows_every_config_key() {
    let (expected, present) = expected_and_documented();
    // Sanity: the derivation really reaches the nested structs.
    for path in [
        "hub.tenant",
        "users.external_personnel_number",
        "applications.alternate_country_codes.*",
        "applications.flows.*.inbound",
        "applications.flows.*.<direction>.fields",
    ] {
        assert!(expected.contains(path), "schema lacks {path}: {expected:?}");
    }
    let missing: Vec<&String> = expected.difference(&present).collect();
    assert!(
        missing.is_empty(),
        "deploy/bodflow.example.toml does not show these keys of src/config.rs: {missing:?}"
    );
    // The other direction is already enforced by deny_unknown_fields; checked here for a
    // clearer message.
    let unknown: Vec<&String> = present.difference(&expected).collect();
    assert!(unknown.is_empty(), "example has unknown keys: {unknown:?}");
}

#[test]
fn every_key_is_explained_in_a_comment() {
    // Each key's name must appear in some comment line of the example (the comments above the
    // key or the `flows` legend), so no key is shown without an explanation.
    let (expected, _) = expected_and_documented();
    let text = example_text();
    let comments: Vec<&str> = text
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('#'))
        .collect();
    let names: BTreeSet<&str> = expected
        .iter()
        .filter_map(|p| p.rsplit('.').next())
        .filter(|n| *n != ANY && *n != "<direction>")
        .collect();
    let words = |line: &str| -> BTreeSet<String> {
        line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map(str::to_string)
            .collect()
    };
    let undocumented: Vec<&&str> = names
        .iter()
        .filter(|name| !comments.iter().any(|l| words(l).contains(**name)))
        .collect();
    assert!(
        undocumented.is_empty(),
        "keys never mentioned in a comment: {undocumented:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Key facts round-trip.
// ---------------------------------------------------------------------------------------------

#[test]
fn ln_back_office_is_modelled() {
    let config = example();
    let ln = app(&config, "LN Europe");
    assert_eq!(ln.logical_id, "lid://infor.ln.ln01");
    assert!(config.application("lid://infor.ln.ln01/3555").is_some());
    assert!(ln.active);
    assert_eq!(ln.country_code_format, CountryCodeFormat::Iso3);
    assert_eq!(ln.sales_person_role.as_deref(), Some("Internal"));
    assert_eq!(ln.default_account.as_deref(), Some("LN-ORPHANS"));
    assert_eq!(ln.create_policy, CreatePolicy::MatchOrCreate);
    assert!(!ln.match_on.is_empty());
    assert_eq!(ln.slug(), "ln-europe");
    let customers = ln.flows_for("CustomerPartyMaster");
    assert_eq!(customers.inbound.delete.0, DeleteMode::Soft);
    assert_eq!(customers.outbound.delete.0, DeleteMode::Off);
    assert_eq!(
        ln.flows_for("ContactMaster").inbound.delete.0,
        DeleteMode::Hard
    );
    for owner in [&ln.default_record_owner, &ln.default_account_manager] {
        let id = owner
            .as_deref()
            .unwrap_or_else(|| panic!("LN defaults set"));
        assert!(config.user(id).is_some(), "{id} is a user");
    }
}

#[test]
fn crm_and_mobile_app_are_modelled() {
    let config = example();
    let crm = app(&config, "Infor CRM");
    assert_eq!(crm.create_policy, CreatePolicy::Create);
    assert_eq!(crm.country_code_format, CountryCodeFormat::Iso2);
    // No ContactMaster entry: defaults, full flow both ways.
    let contacts = crm.flows_for("ContactMaster");
    assert!(contacts.inbound.create && contacts.outbound.update);
    assert_eq!(contacts.outbound.delete.0, DeleteMode::Soft);
    assert!(contacts.outbound.fields.is_none());

    let mobile = app(&config, "Comarch Mobile Sales");
    assert_eq!(mobile.country_code_format, CountryCodeFormat::Alternate);
    assert_eq!(
        mobile.alternate_country_codes.get("UK").map(String::as_str),
        Some("GB")
    );
    assert_eq!(mobile.language_code, "de-DE");
    let customers = mobile.flows_for("CustomerPartyMaster");
    assert!(!customers.inbound.create);
    assert_eq!(customers.inbound.delete.0, DeleteMode::Off);
    assert_eq!(
        customers.outbound.fields.as_deref(),
        Some(
            &[
                FieldGroup::Identity,
                FieldGroup::Address,
                FieldGroup::Communication
            ][..]
        )
    );
    // Omitted direction keys take their defaults.
    let contacts = mobile.flows_for("ContactMaster").outbound;
    assert!(contacts.create && contacts.update);
    assert_eq!(contacts.delete.0, DeleteMode::Soft);
    assert!(contacts
        .fields
        .as_deref()
        .is_some_and(|f| !f.contains(&FieldGroup::Commercial)));

    let inactive: Vec<&str> = config
        .applications
        .iter()
        .filter(|a| !a.active)
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(inactive, ["Marketing Cloud"]);
}

#[test]
fn the_switched_off_tls_section_loads_once_switched_on() {
    let off = switched_off();
    assert!(off.starts_with("[amqp.tls]\n"), "{off}");
    let on = format!("[amqp]\nurl = \"amqps://bodflow@mq.acme.internal/ion\"\n{off}");
    let config = Config::from_toml(&on, "switched-on.toml").unwrap_or_else(|e| panic!("{e}\n{on}"));
    assert!(config.amqp.tls.ca_file.is_some() && config.amqp.tls.key_file.is_some());
    // Switched off, it is off.
    assert_eq!(example().amqp.tls, Tls::default());
}

#[test]
fn example_survives_a_serialize_parse_round_trip() {
    let config = example();
    let text = toml::to_string(&config).unwrap_or_else(|e| panic!("to TOML: {e}"));
    let again =
        Config::from_toml(&text, "round-trip.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
    let json = |c: &Config| serde_json::to_value(c).unwrap_or_else(|e| panic!("to JSON: {e}"));
    assert_eq!(json(&config), json(&again));
}

// ---------------------------------------------------------------------------------------------
// Typos are caught with their path.
// ---------------------------------------------------------------------------------------------

/// The example with the first line starting with `from` rewritten to start with `to`.
fn with_first_line_changed(from: &str, to: &str) -> String {
    let text = example_text();
    let mut done = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| match line.strip_prefix(from) {
            Some(rest) if !done => {
                done = true;
                format!("{to}{rest}")
            }
            _ => line.to_string(),
        })
        .collect();
    assert!(done, "example has no line starting with {from:?}");
    lines.join("\n")
}

#[test]
fn misspelled_application_key_is_rejected_with_its_path() {
    let text = with_first_line_changed("default_account =", "defualt_account =");
    let err = Config::from_toml(&text, "typo.toml")
        .err()
        .unwrap_or_else(|| panic!("a misspelled key must be rejected"))
        .to_string();
    assert!(err.contains("typo.toml"), "{err}");
    assert!(err.contains("applications[0].defualt_account"), "{err}");
}

#[test]
fn misspelled_flow_key_is_rejected_with_its_path() {
    let text = with_first_line_changed(
        "inbound = { create = true, update = true, delete = \"soft\" }",
        "inbound = { create = true, update = true, delet = \"soft\" }",
    );
    let err = Config::from_toml(&text, "typo.toml")
        .err()
        .unwrap_or_else(|| panic!("a misspelled key must be rejected"))
        .to_string();
    assert!(
        err.contains("applications[0].flows.CustomerPartyMaster.inbound.delet"),
        "{err}"
    );
}

#[test]
fn unknown_owner_is_rejected_by_the_cross_check() {
    let text = with_first_line_changed(
        "default_record_owner = \"U-ADMIN\"",
        "default_record_owner = \"U-NOBODY\"",
    );
    let err = Config::from_toml(&text, "owner.toml")
        .err()
        .unwrap_or_else(|| panic!("an unknown owner must be rejected"))
        .to_string();
    assert!(
        err.contains("applications[0].default_record_owner") && err.contains("U-NOBODY"),
        "{err}"
    );
}
