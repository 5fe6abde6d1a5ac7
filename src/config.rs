//! Configuration: one TOML tree (DESIGN §5.2), strict.
//!
//! Every struct denies unknown keys, and loading reports the offending key's full path
//! (`applications[1].flows.ContactMaster.inbound.delet`), so a typo never silently falls back to
//! a default. After parsing, [`Config::check`] verifies references between sections (owners
//! that must be users, unique logical IDs, nouns that exist).
//!
//! Resolution order for the file: `--config F`, then `./bodflow.toml`, then for `replay` and
//! `check` a `bodflow.toml` inside the first input folder (fixture sets carry their own
//! applications), then built-in defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable that overrides `amqp.url`.
pub const AMQP_URL_ENV: &str = "BODFLOW_AMQP_URL";

/// Environment variable that overrides `http.listen` (tests use `127.0.0.1:0`).
pub const HTTP_LISTEN_ENV: &str = "BODFLOW_HTTP_LISTEN";

/// Nouns bodflow keeps hub records for.
pub const NOUNS: [&str; 2] = ["CustomerPartyMaster", "ContactMaster"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// bodflow's own identity and store.
    #[serde(default)]
    pub hub: Hub,
    /// The message broker.
    #[serde(default)]
    pub amqp: Amqp,
    /// The operator HTTP endpoint.
    #[serde(default)]
    pub http: Http,
    /// Message tracking: each processed message's timeline, kept for a while.
    #[serde(default)]
    pub tracking: Tracking,
    /// Limits applied to every inbound document before it is parsed further.
    #[serde(default)]
    pub limits: Limits,
    /// Hub users and teams: record owners and account managers.
    #[serde(default)]
    pub users: Vec<User>,
    /// The applications on the bus, by logical ID.
    #[serde(default)]
    pub applications: Vec<Application>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hub {
    /// Sender LogicalID of everything bodflow emits.
    pub logical_id: String,
    /// Tenant written into emitted BODs; when set, inbound BODs naming another tenant
    /// (compared case-insensitively, as ION does) are rejected `wrong_tenant`.
    pub tenant: Option<String>,
    /// The sled folder of the hub store.
    pub store: PathBuf,
    /// sled's page cache in MiB; unset: 4 for the service and operator commands, 32 for
    /// `replay` ([`Hub::store_cache_bytes`]). sled's resident memory is a multiple of it.
    pub store_cache_mb: Option<u32>,
    /// Pattern for account numbers assigned to accounts created through Process BODs;
    /// `{seq}` or `{seq:06}` is replaced by a store-wide sequence.
    pub account_number_format: String,
    /// Outbound promotion of accounts to their system of record (`[hub.promotion]`); none
    /// when absent.
    pub promotion: Option<Promotion>,
    /// How long the tombstone of a hard-deleted cross-reference is kept (the variationID
    /// guard against documents older than the delete); the service removes older ones.
    pub tombstone_retention: Period,
    /// The dedup window: how long a message id is remembered after its last processing. A
    /// delivery of it within the window is a duplicate; the service removes older markers,
    /// and a delivery after that is processed as a new message. At least
    /// `tracking.retention` while tracking is on (a timeline is found through its marker);
    /// unset: 7 days, or `tracking.retention` if that is longer ([`Config::dedup_window`]).
    pub dedup_window: Option<Period>,
}

/// `[hub.promotion]`: when an account reaches `when_type` and the system of record has no ID
/// for it, bodflow sends it `ProcessCustomerPartyMaster` and links the ID its
/// `AcknowledgeCustomerPartyMaster` assigns.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Promotion {
    /// The account type (compared case-insensitively) that makes an account due for
    /// promotion, e.g. `Customer`.
    pub when_type: String,
    /// Logical ID of the application that is the system of record for accounts (a configured
    /// application). It receives accounts by promotion only, not as `Sync` Adds.
    pub system_of_record: String,
    /// AccountingEntityID written into the Process (the entity the account is to be created
    /// in); none when absent.
    #[serde(default)]
    pub accounting_entity: Option<String>,
}

/// `hub.dedup_window` when unset (and `tracking.retention` is not longer).
const DEFAULT_DEDUP_WINDOW: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// The shortest `hub.dedup_window` accepted.
const MIN_DEDUP_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

/// The largest `hub.store_cache_mb` accepted (64 GiB): a larger figure is a typo.
const MAX_STORE_CACHE_MB: u32 = 65_536;

/// Highest `limits.max_depth`: reading a `UserArea` recurses once a level, and a lane's stack
/// holds a few thousand levels; BODs nest about a dozen.
pub const MAX_DEPTH_LIMIT: usize = 1_000;

impl Hub {
    /// The page cache to open the store with: `hub.store_cache_mb`, else `default` (the
    /// command's own figure).
    pub fn store_cache_bytes(&self, default: u64) -> u64 {
        self.store_cache_mb
            .map_or(default, |mb| u64::from(mb) * 1024 * 1024)
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            logical_id: "lid://bodflow.hub".into(),
            tenant: None,
            store: PathBuf::from("data/bodflow.db"),
            store_cache_mb: None,
            account_number_format: "C{seq:06}".into(),
            promotion: None,
            tombstone_retention: Period(std::time::Duration::from_secs(90 * 24 * 3600)),
            dedup_window: None,
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Amqp {
    /// Broker URL; `BODFLOW_AMQP_URL` overrides it. Redacted in logs.
    pub url: String,
    /// Unacknowledged deliveries the broker may push at once (bounds memory). A delivery is
    /// acked only after the store flush that follows its group's commit, so a larger window
    /// keeps the committer busier: a 50,000-document backlog took 12.0–14.8 s at 1024
    /// against 17.3–18.0 s at the default 256, for 72–74 MB of peak RSS against 59–65 MB
    /// with a 200,000 backlog (`benches/README.md`).
    pub prefetch: u16,
    /// Documents prepared (parsed, validated, mapped) in parallel. Deliveries of one document
    /// key are still applied in arrival order. Default: the number of CPU cores.
    pub lanes: usize,
    /// TLS for an `amqps://` URL (`[amqp.tls]`). Not written out when unset, so a written
    /// configuration stays readable by versions without it.
    #[serde(skip_serializing_if = "Tls::is_unset")]
    pub tls: Tls,
}

/// `[amqp.tls]`: what an `amqps://` connection trusts and presents. The broker's certificate
/// is checked against the system's CA certificates plus `ca_file`, and against the URL's host.
/// The files are read at every connection, so renewed certificates are picked up on the next
/// reconnect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM file of CA certificates trusted besides the system's (a private CA).
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (and its chain) for mutual TLS; with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or SEC1; not
    /// encrypted).
    pub key_file: Option<PathBuf>,
}

impl Tls {
    /// Whether anything is set.
    pub fn is_set(&self) -> bool {
        *self != Tls::default()
    }

    fn is_unset(&self) -> bool {
        !self.is_set()
    }
}

/// More lanes than this is a typo, not a machine.
const MAX_LANES: usize = 256;

/// The default of `amqp.lanes`: one lane per core the process may use.
pub fn default_lanes() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

impl Default for Amqp {
    fn default() -> Self {
        Amqp {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefetch: 256,
            lanes: default_lanes(),
            tls: Tls::default(),
        }
    }
}

impl fmt::Debug for Amqp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Amqp")
            .field("url", &redact_url(&self.url))
            .field("prefetch", &self.prefetch)
            .field("lanes", &self.lanes)
            .field("tls", &self.tls)
            .finish()
    }
}

/// `amqp://user:secret@host` → `amqp://user:***@host`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((creds, host)) => match creds.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://{creds}@{host}"),
        },
        None => url.to_string(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub listen: String,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// Message tracking (`bodflow track`, `GET /messages/{id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tracking {
    /// Keep each processed message's timeline (received, each stage's decision, outcome,
    /// outputs and their publish confirms) in the store, written with the commit.
    pub enabled: bool,
    /// How long each processing of a message stays on its timeline; the service purges older
    /// ones in the background. `7d`, `36h`, `90m`, `45s`.
    pub retention: Period,
}

impl Default for Tracking {
    fn default() -> Self {
        Tracking {
            enabled: true,
            retention: Period(std::time::Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

/// A duration written as whole numbers with units: `45s`, `90m`, `36h`, `7d`, `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period(pub std::time::Duration);

impl std::str::FromStr for Period {
    type Err = String;

    fn from_str(text: &str) -> Result<Period, String> {
        parse_every(text).map(Period)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        match s {
            _ if s.is_multiple_of(86400) => write!(f, "{}d", s / 86400),
            _ if s.is_multiple_of(3600) => write!(f, "{}h", s / 3600),
            _ if s.is_multiple_of(60) => write!(f, "{}m", s / 60),
            _ => write!(f, "{s}s"),
        }
    }
}

impl Serialize for Period {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Period, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Larger documents are rejected `too_large` before they are parsed.
    pub max_bytes: usize,
    /// Deeper element nesting is rejected `too_deep` while reading.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let l = crate::bod::Limits::default();
        Limits {
            max_bytes: l.max_bytes,
            max_depth: l.max_depth,
        }
    }
}

impl From<Limits> for crate::bod::Limits {
    fn from(l: Limits) -> Self {
        crate::bod::Limits {
            max_bytes: l.max_bytes,
            max_depth: l.max_depth,
        }
    }
}

/// A hub user or team.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// The hub's user ID (`U-JSMITH`), written as owner / account manager.
    pub id: String,
    /// First name, matched with `last_name` against a SalesPersonReference Name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// Personnel number: first match for a SalesPersonReference ID.
    #[serde(default)]
    pub personnel_number: Option<String>,
    /// External personnel number: second match for a SalesPersonReference ID.
    #[serde(default)]
    pub external_personnel_number: Option<String>,
}

/// How an application writes country codes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CountryCodeFormat {
    /// ISO 3166-1 alpha-2 (`US`).
    #[default]
    Iso2,
    /// ISO 3166-1 alpha-3 (`USA`).
    Iso3,
    /// The application's own table (`alternate_country_codes`), ISO alpha-2 otherwise.
    Alternate,
}

/// What happens when a document names a record bodflow has no cross-reference for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreatePolicy {
    /// Create a new hub record.
    #[default]
    Create,
    /// Link to an unlinked record matching on `match_on`, else create.
    MatchOrCreate,
    /// Link to a matching record, else park until one appears.
    MatchOnly,
    /// Park until an operator links it.
    Manual,
    /// Count and drop.
    Ignore,
}

/// Keys a document can be matched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchKey {
    AccountNumber,
    ExternalNumber,
    Email,
}

/// Field groups an application can master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldGroup {
    Identity,
    Address,
    Communication,
    Commercial,
    Owner,
    Classification,
}

impl FieldGroup {
    pub const ALL: [FieldGroup; 6] = [
        FieldGroup::Identity,
        FieldGroup::Address,
        FieldGroup::Communication,
        FieldGroup::Commercial,
        FieldGroup::Owner,
        FieldGroup::Classification,
    ];
}

/// Delete handling of a flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteMode {
    /// Mark the record deleted; it stops flowing out.
    #[default]
    Soft,
    /// Remove the record and its cross-references.
    Hard,
    /// Deletes do not flow (`delete = false`).
    Off,
}

impl<'de> Deserialize<'de> for DeleteModeOrBool {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        let mode = match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom(r#"expected "soft", "hard" or false"#))?
        {
            Raw::Bool(false) => DeleteMode::Off,
            Raw::Bool(true) => DeleteMode::Soft,
            Raw::Text(t) if t == "soft" => DeleteMode::Soft,
            Raw::Text(t) if t == "hard" => DeleteMode::Hard,
            Raw::Text(t) => {
                return Err(serde::de::Error::custom(format!(
                    r#"{t:?} is not a delete mode: expected "soft", "hard" or false"#
                )))
            }
        };
        Ok(DeleteModeOrBool(mode))
    }
}

/// `delete = "soft" | "hard" | false` (true means soft).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeleteModeOrBool(pub DeleteMode);

impl Serialize for DeleteModeOrBool {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            DeleteMode::Soft => s.serialize_str("soft"),
            DeleteMode::Hard => s.serialize_str("hard"),
            DeleteMode::Off => s.serialize_bool(false),
        }
    }
}

/// One direction of a flow.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Direction {
    /// New records flow.
    pub create: bool,
    /// Changes to existing records flow.
    pub update: bool,
    /// Deletes flow, and how they are applied.
    pub delete: DeleteModeOrBool,
    /// Outbound only: the field groups sent (all when absent).
    pub fields: Option<Vec<FieldGroup>>,
}

impl Default for Direction {
    fn default() -> Self {
        Direction {
            create: true,
            update: true,
            delete: DeleteModeOrBool(DeleteMode::Soft),
            fields: None,
        }
    }
}

/// Inbound and outbound flow of one noun for one application.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Flows {
    /// From the application into the hub.
    pub inbound: Direction,
    /// From the hub to the application (`Sync<Noun>`).
    pub outbound: Direction,
}

/// An application on the bus.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    /// Display name; its slug names the application's reply queue.
    pub name: String,
    /// Its logical ID; senders with a `/suffix` (`lid://infor.ln.ln01/3555`) match too.
    pub logical_id: String,
    /// Inactive applications' documents are parked, and released on re-activation.
    #[serde(default = "yes")]
    pub active: bool,
    /// How it writes country codes.
    #[serde(default)]
    pub country_code_format: CountryCodeFormat,
    /// Its own codes → ISO alpha-2 (`{ UK = "GB" }`), used with `alternate`.
    #[serde(default)]
    pub alternate_country_codes: BTreeMap<String, String>,
    /// Account number of the placeholder account for contacts whose account is unknown.
    #[serde(default)]
    pub default_account: Option<String>,
    /// Account manager of accounts it creates when no sales person matches.
    #[serde(default)]
    pub default_account_manager: Option<String>,
    /// Owner of records when no sales person matches.
    #[serde(default)]
    pub default_record_owner: Option<String>,
    /// The SalesPersonRole whose reference decides the owner (`Internal`).
    #[serde(default)]
    pub sales_person_role: Option<String>,
    /// Which `languageID` to read when text repeats per language.
    #[serde(default = "default_language")]
    pub language_code: String,
    /// What a document for a record without cross-reference does.
    #[serde(default)]
    pub create_policy: CreatePolicy,
    /// Keys for `match_or_create` / `match_only`.
    #[serde(default)]
    pub match_on: Vec<MatchKey>,
    /// Field groups it masters once a record is linked (empty: all).
    #[serde(default)]
    pub masters: Vec<FieldGroup>,
    /// Per noun flows; a noun without an entry flows fully in both directions.
    #[serde(default)]
    pub flows: BTreeMap<String, Flows>,
    /// Outbound contacts go to this application only while their classification contains
    /// this value (compared case-insensitively).
    #[serde(default)]
    pub require_classification: Option<String>,
    /// Inbound contacts from this application get this classification added; new contacts
    /// from it become employees of their account (`relationship = "employee"`).
    #[serde(default)]
    pub stamp_classification: Option<String>,
    /// Scheduled resync ("Run Now" on a timer, run by `bodflow run`): every record it may
    /// receive is sent to it again this often (`"24h"`, `"90m"`, `"1h30m"`; units s, m, h, d).
    #[serde(default)]
    pub resync_every: Option<String>,
    /// Scheduled resync once a day at this UTC time (`"02:30"`); excludes `resync_every`.
    #[serde(default)]
    pub resync_at: Option<String>,
}

/// When `bodflow run` resyncs an application by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncSchedule {
    /// This long after the previous resync (or after the start, when it never ran).
    Every(std::time::Duration),
    /// Daily at hour:minute UTC.
    DailyAt(u32, u32),
}

/// `"24h"`, `"90m"`, `"1h30m"`, `"45s"`, `"7d"`: at least one second.
fn parse_every(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{text:?} is not a duration (like \"24h\", \"90m\", \"1h30m\")");
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
    }
    if !digits.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs(total))
}

/// `"HH:MM"` (24-hour, UTC).
fn parse_daily(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{text:?} is not a time of day (\"HH:MM\", UTC)");
    let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok((h, m))
}

fn yes() -> bool {
    true
}

fn default_language() -> String {
    "en-US".into()
}

impl Application {
    /// Whether `classification` holds `code` (case-insensitively, as classifications are
    /// compared everywhere).
    pub fn has_classification(classification: &[String], code: &str) -> bool {
        classification.iter().any(|c| c.eq_ignore_ascii_case(code))
    }

    /// Whether a sender logical ID denotes this application (exactly, or with a `/suffix`).
    pub fn matches_sender(&self, sender: &str) -> bool {
        sender == self.logical_id
            || sender
                .strip_prefix(self.logical_id.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// Whether `a` is `b` followed by `/suffix` (the sender-suffix rule, from the other side).
    fn prefix_of(a: &str, b: &str) -> bool {
        b.strip_prefix(a).is_some_and(|rest| rest.starts_with('/'))
    }

    /// Flows for a noun (defaults when not configured).
    pub fn flows_for(&self, noun: &str) -> Flows {
        self.flows.get(noun).cloned().unwrap_or_default()
    }

    /// Its resync schedule, if one is configured (checked when the configuration loads).
    pub fn resync_schedule(&self) -> Result<Option<ResyncSchedule>, String> {
        match (&self.resync_every, &self.resync_at) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err("give resync_every or resync_at, not both".into()),
            (Some(every), None) => parse_every(every).map(|d| Some(ResyncSchedule::Every(d))),
            (None, Some(at)) => parse_daily(at).map(|(h, m)| Some(ResyncSchedule::DailyAt(h, m))),
        }
    }

    /// `LN Europe` → `ln-europe`, for `bodflow.to.<slug>`.
    pub fn slug(&self) -> String {
        let mut slug = String::with_capacity(self.name.len());
        for c in self.name.chars() {
            if c.is_ascii_alphanumeric() {
                slug.push(c.to_ascii_lowercase());
            } else if !slug.ends_with('-') {
                slug.push('-');
            }
        }
        slug.trim_matches('-').to_string()
    }
}

impl Config {
    /// Parses TOML text; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Invalid {
            path: origin.to_string(),
            key: "(syntax)".into(),
            message: e.to_string(),
        })?;
        let config: Config =
            serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Invalid {
                path: origin.to_string(),
                key: e.path().to_string(),
                message: e.inner().message().to_string(),
            })?;
        config.check(origin)?;
        Ok(config)
    }

    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::from_toml(&text, &path.display().to_string())?;
        config.apply_env();
        Ok(config)
    }

    /// Applies `BODFLOW_AMQP_URL` and `BODFLOW_HTTP_LISTEN`.
    pub fn apply_env(&mut self) {
        if let Ok(url) = std::env::var(AMQP_URL_ENV) {
            if !url.is_empty() {
                self.amqp.url = url;
            }
        }
        if let Ok(listen) = std::env::var(HTTP_LISTEN_ENV) {
            if !listen.is_empty() {
                self.http.listen = listen;
            }
        }
    }

    /// Resolves the configuration file (see the module docs) and loads it.
    pub fn resolve(
        explicit: Option<&Path>,
        inputs: &[PathBuf],
    ) -> Result<(Config, Option<PathBuf>), ConfigError> {
        if let Some(path) = explicit {
            return Ok((Config::load(path)?, Some(path.to_path_buf())));
        }
        let local = PathBuf::from("bodflow.toml");
        if local.is_file() {
            return Ok((Config::load(&local)?, Some(local)));
        }
        if let Some(dir) = inputs.first().filter(|p| p.is_dir()) {
            let beside = dir.join("bodflow.toml");
            if beside.is_file() {
                return Ok((Config::load(&beside)?, Some(beside)));
            }
        }
        let mut config = Config::default();
        config.apply_env();
        Ok((config, None))
    }

    /// The dedup window in force: `hub.dedup_window`, else 7 days or `tracking.retention`
    /// (while tracking is on) if that is longer.
    pub fn dedup_window(&self) -> std::time::Duration {
        self.hub.dedup_window.map_or_else(
            || {
                let retention = self.tracking.enabled.then_some(self.tracking.retention.0);
                DEFAULT_DEDUP_WINDOW.max(retention.unwrap_or_default())
            },
            |p| p.0,
        )
    }

    /// Checks references between sections (done by [`Config::from_toml`]; again by a reload
    /// after it kept the running values of restart-only settings).
    pub fn check(&self, origin: &str) -> Result<(), ConfigError> {
        let err = |key: String, message: String| ConfigError::Invalid {
            path: origin.to_string(),
            key,
            message,
        };
        let user_known = |id: &str| self.users.iter().any(|u| u.id == id);
        if self.amqp.prefetch == 0 {
            return Err(err(
                "amqp.prefetch".into(),
                "must be at least 1 (0 means unlimited in AMQP and removes the memory bound)"
                    .into(),
            ));
        }
        if self.amqp.lanes == 0 || self.amqp.lanes > MAX_LANES {
            return Err(err(
                "amqp.lanes".into(),
                format!("must be between 1 and {MAX_LANES}"),
            ));
        }
        if self.amqp.tls.cert_file.is_some() != self.amqp.tls.key_file.is_some() {
            return Err(err(
                "amqp.tls".into(),
                "cert_file and key_file go together (the client certificate and its key)".into(),
            ));
        }
        if self
            .hub
            .store_cache_mb
            .is_some_and(|mb| mb == 0 || mb > MAX_STORE_CACHE_MB)
        {
            return Err(err(
                "hub.store_cache_mb".into(),
                format!("must be between 1 and {MAX_STORE_CACHE_MB} (MiB)"),
            ));
        }
        let window = self.dedup_window();
        if window < MIN_DEDUP_WINDOW {
            return Err(err(
                "hub.dedup_window".into(),
                "must be at least 1h: a delivery not acked before a crash or a broker restart \
                 comes back later, and must still be a duplicate"
                    .into(),
            ));
        }
        if self.tracking.enabled && window < self.tracking.retention.0 {
            return Err(err(
                "hub.dedup_window".into(),
                format!(
                    "{} is shorter than tracking.retention ({}): a message's timeline is found \
                     through its message id, which is forgotten at the end of the window",
                    Period(window),
                    self.tracking.retention
                ),
            ));
        }
        if self.limits.max_bytes == 0 || self.limits.max_depth == 0 {
            return Err(err(
                "limits".into(),
                "max_bytes and max_depth must be at least 1 (0 would reject every document)".into(),
            ));
        }
        if self.limits.max_depth > MAX_DEPTH_LIMIT {
            return Err(err(
                "limits.max_depth".into(),
                format!("must be at most {MAX_DEPTH_LIMIT}"),
            ));
        }
        if let Some(p) = &self.hub.promotion {
            if p.when_type.trim().is_empty() {
                return Err(err(
                    "hub.promotion.when_type".into(),
                    "must name an account type".into(),
                ));
            }
            if !self
                .applications
                .iter()
                .any(|a| a.logical_id == p.system_of_record)
            {
                return Err(err(
                    "hub.promotion.system_of_record".into(),
                    format!(
                        "{:?} is not the logical_id of a configured application",
                        p.system_of_record
                    ),
                ));
            }
            if p.accounting_entity
                .as_ref()
                .is_some_and(|e| e.trim().is_empty() || e.chars().count() > 22)
            {
                return Err(err(
                    "hub.promotion.accounting_entity".into(),
                    "must be 1 to 22 characters".into(),
                ));
            }
        }
        for (i, user) in self.users.iter().enumerate() {
            if user.id.trim().is_empty() {
                return Err(err(format!("users[{i}].id"), "must not be empty".into()));
            }
            if self.users[..i].iter().any(|u| u.id == user.id) {
                return Err(err(
                    format!("users[{i}].id"),
                    format!("duplicate user {:?}", user.id),
                ));
            }
        }
        if !crate::bod::is_plain_logical_id(&self.hub.logical_id) {
            return Err(err(
                "hub.logical_id".into(),
                not_a_logical_id(&self.hub.logical_id),
            ));
        }
        for (i, app) in self.applications.iter().enumerate() {
            let key = |k: &str| format!("applications[{i}].{k}");
            if app.logical_id.trim().is_empty() {
                return Err(err(key("logical_id"), "must not be empty".into()));
            }
            if !crate::bod::is_plain_logical_id(&app.logical_id) {
                return Err(err(key("logical_id"), not_a_logical_id(&app.logical_id)));
            }
            if let Some(other) = self.applications[..i]
                .iter()
                .find(|o| o.matches_sender(&app.logical_id) || app.matches_sender(&o.logical_id))
            {
                return Err(err(
                    key("logical_id"),
                    format!("{:?} overlaps application {:?}", app.logical_id, other.name),
                ));
            }
            if app.matches_sender(&self.hub.logical_id)
                || self.hub.logical_id == app.logical_id
                || Application::prefix_of(&self.hub.logical_id, &app.logical_id)
            {
                return Err(err(
                    key("logical_id"),
                    format!(
                        "{:?} overlaps hub.logical_id {:?}: bodflow's own documents would look like its",
                        app.logical_id, self.hub.logical_id
                    ),
                ));
            }
            let slug = app.slug();
            if slug.is_empty() {
                return Err(err(
                    key("name"),
                    "needs at least one letter or digit".into(),
                ));
            }
            // Its queue `bodflow.to.<slug>`: two applications on one queue would each take
            // the other's documents.
            if let Some(other) = self.applications[..i].iter().find(|o| o.slug() == slug) {
                return Err(err(
                    key("name"),
                    format!(
                        "{:?} makes the queue name bodflow.to.{slug}, as application {:?} does: give each application a name of its own",
                        app.name, other.name
                    ),
                ));
            }
            for (field, value) in [
                ("default_record_owner", &app.default_record_owner),
                ("default_account_manager", &app.default_account_manager),
            ] {
                if let Some(id) = value {
                    if !user_known(id) {
                        return Err(err(
                            key(field),
                            format!("unknown user {id:?} (add it to [[users]])"),
                        ));
                    }
                }
            }
            for (code, iso) in &app.alternate_country_codes {
                if rust_iso3166::from_alpha2(iso).is_none() {
                    return Err(err(
                        key(&format!("alternate_country_codes.{code}")),
                        format!("{iso:?} is not an ISO 3166-1 alpha-2 code"),
                    ));
                }
            }
            if matches!(
                app.create_policy,
                CreatePolicy::MatchOrCreate | CreatePolicy::MatchOnly
            ) && app.match_on.is_empty()
            {
                return Err(err(
                    key("match_on"),
                    format!("required by create_policy {:?}", app.create_policy),
                ));
            }
            if let Err(message) = app.resync_schedule() {
                let field = if app.resync_at.is_some() {
                    "resync_at"
                } else {
                    "resync_every"
                };
                return Err(err(key(field), message));
            }
            for (field, value) in [
                ("require_classification", &app.require_classification),
                ("stamp_classification", &app.stamp_classification),
            ] {
                if let Some(v) = value {
                    if v.trim().is_empty() || v.chars().count() > 64 {
                        return Err(err(
                            key(field),
                            "must be a classification code of 1 to 64 characters".into(),
                        ));
                    }
                }
            }
            for (noun, flows) in &app.flows {
                if !NOUNS.contains(&noun.as_str()) {
                    return Err(err(
                        key(&format!("flows.{noun}")),
                        format!("unknown noun (expected one of {NOUNS:?})"),
                    ));
                }
                if flows.inbound.fields.is_some() {
                    return Err(err(
                        key(&format!("flows.{noun}.inbound.fields")),
                        "only outbound flows select fields (inbound, use `masters`)".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The application a sender logical ID belongs to.
    pub fn application(&self, sender: &str) -> Option<(usize, &Application)> {
        self.applications
            .iter()
            .enumerate()
            .find(|(_, a)| a.matches_sender(sender))
    }

    /// Match keys the hub must index: those some application matches on, plus account
    /// numbers when an application has a default account (found by its number).
    pub fn indexed_keys(&self) -> Vec<MatchKey> {
        let mut keys = Vec::new();
        for app in &self.applications {
            if matches!(
                app.create_policy,
                CreatePolicy::MatchOrCreate | CreatePolicy::MatchOnly
            ) {
                for k in &app.match_on {
                    if !keys.contains(k) {
                        keys.push(*k);
                    }
                }
            }
            if app.default_account.is_some() && !keys.contains(&MatchKey::AccountNumber) {
                keys.push(MatchKey::AccountNumber);
            }
        }
        keys
    }

    /// Whether some application parks documents `no_match` (`match_only`), which a record
    /// change may then release: only then does the upsert stage look for them.
    pub fn parks_without_match(&self) -> bool {
        self.applications
            .iter()
            .any(|a| a.create_policy == CreatePolicy::MatchOnly)
    }

    /// The promotion settings and the index of the system of record, when promotion is on.
    pub fn promotion(&self) -> Option<(&Promotion, usize)> {
        let p = self.hub.promotion.as_ref()?;
        let i = self
            .applications
            .iter()
            .position(|a| a.logical_id == p.system_of_record)?;
        Some((p, i))
    }

    pub fn user(&self, id: &str) -> Option<&User> {
        self.users.iter().find(|u| u.id == id)
    }
}

/// Why a configured logical ID is refused: bodflow writes it into every document it sends,
/// where the schema types it `xs:anyURI`.
fn not_a_logical_id(value: &str) -> String {
    format!(
        "{value:?} is not a logical ID bodflow can write into its documents: an optional scheme \
         (lid:), then only letters, digits and -._~/ (lid://infor.ln.ln01), at most {} characters",
        crate::bod::MAX_LOGICAL_ID
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error text of a configuration `from_toml` refuses.
    fn refusal(toml: &str) -> String {
        Config::from_toml(toml, "t").unwrap_err().to_string()
    }

    #[test]
    fn unknown_keys_fail_with_their_path() {
        let err = Config::from_toml(
            "[[applications]]\nname='a'\nlogical_id='lid://a'\n[applications.flows.ContactMaster]\ninbound = { delet = 'soft' }\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("applications[0].flows.ContactMaster.inbound.delet"),
            "{err}"
        );
    }

    #[test]
    fn delete_accepts_false_and_modes() {
        let cfg = Config::from_toml(
            "[[applications]]\nname='a'\nlogical_id='lid://a'\n[applications.flows.ContactMaster]\ninbound = { delete = false }\noutbound = { delete = 'hard' }\n",
            "t.toml",
        )
        .unwrap();
        let flows = cfg.applications[0].flows_for("ContactMaster");
        assert_eq!(flows.inbound.delete.0, DeleteMode::Off);
        assert_eq!(flows.outbound.delete.0, DeleteMode::Hard);
    }

    #[test]
    fn bad_delete_modes_inbound_fields_and_zero_limits_are_refused() {
        let base = "[[applications]]\nname='a'\nlogical_id='lid://a'\n[applications.flows.ContactMaster]\n";
        let err = refusal(&format!("{base}inbound = {{ delete = 'sfot' }}\n"));
        assert!(
            err.contains("inbound.delete") && err.contains(r#"expected "soft", "hard" or false"#),
            "{err}"
        );
        let err = refusal(&format!("{base}inbound = {{ fields = ['address'] }}\n"));
        assert!(err.contains("flows.ContactMaster.inbound.fields"), "{err}");
        let err = refusal("[amqp]\nprefetch = 0\n");
        assert!(err.contains("amqp.prefetch"), "{err}");
        let err = refusal("[amqp]\nlanes = 0\n");
        assert!(err.contains("amqp.lanes"), "{err}");
        let err = refusal("[limits]\nmax_depth = 1001\n");
        assert!(err.contains("limits.max_depth"), "{err}");
        assert!(Config::from_toml("[limits]\nmax_depth = 1000\n", "t").is_ok());
        assert!(Config::from_toml("[amqp]\nlanes = 3\n", "t").is_ok_and(|c| c.amqp.lanes == 3));
        let err = refusal("[[applications]]\nname='a'\nlogical_id='lid://bodflow.hub'\n");
        assert!(err.contains("hub.logical_id"), "{err}");
    }

    #[test]
    fn logical_ids_the_schema_would_refuse_are_refused() {
        // bodflow writes them into every document (xs:anyURI): the golden and schema tests
        // validate what it writes with the configured ones.
        for bad in [
            "lid://crm[1]",
            "lid://a b",
            "lid://a:b",
            "lid://a%zz",
            "lid://a#b#c",
        ] {
            let err = refusal(&format!("[[applications]]\nname='a'\nlogical_id={bad:?}\n"));
            assert!(
                err.contains("applications[0].logical_id") && err.contains("not a logical ID"),
                "{bad}: {err}"
            );
            let err = refusal(&format!("[hub]\nlogical_id={bad:?}\n"));
            assert!(err.contains("hub.logical_id"), "{bad}: {err}");
        }
        for good in [
            "lid://infor.ln.ln01",
            "infor.engine.workflow",
            "lid://acme.crm_2-b/eu",
        ] {
            let toml = format!("[[applications]]\nname='a'\nlogical_id={good:?}\n");
            assert!(Config::from_toml(&toml, "t").is_ok(), "{good}");
        }
    }

    #[test]
    fn references_are_checked() {
        let err = Config::from_toml(
            "[[applications]]\nname='a'\nlogical_id='lid://a'\ndefault_record_owner='U-NOBODY'\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("default_record_owner") && err.contains("U-NOBODY"),
            "{err}"
        );
    }

    #[test]
    fn senders_with_suffix_match_and_slugs_are_clean() {
        let cfg = Config::from_toml(
            "[[applications]]\nname='LN Europe (01)'\nlogical_id='lid://infor.ln.ln01'\n",
            "t.toml",
        )
        .unwrap();
        assert!(cfg.application("lid://infor.ln.ln01/3555").is_some());
        assert!(cfg.application("lid://infor.ln.ln012").is_none());
        assert_eq!(cfg.applications[0].slug(), "ln-europe-01");
    }

    #[test]
    fn resync_schedules_parse_and_bad_ones_name_their_key() {
        let app = |extra: &str| {
            Config::from_toml(
                &format!("[[applications]]\nname='a'\nlogical_id='lid://a'\n{extra}\n"),
                "t",
            )
        };
        let cfg = app("resync_every = '1h30m'").unwrap();
        assert_eq!(
            cfg.applications[0].resync_schedule(),
            Ok(Some(ResyncSchedule::Every(std::time::Duration::from_secs(
                5400
            ))))
        );
        let cfg = app("resync_at = '02:30'").unwrap();
        assert_eq!(
            cfg.applications[0].resync_schedule(),
            Ok(Some(ResyncSchedule::DailyAt(2, 30)))
        );
        for (extra, key) in [
            ("resync_every = '24'", "resync_every"),
            ("resync_every = '0s'", "resync_every"),
            ("resync_every = 'daily'", "resync_every"),
            ("resync_at = '25:00'", "resync_at"),
            ("resync_at = '2pm'", "resync_at"),
            ("resync_every = '1h'\nresync_at = '02:00'", "resync_at"),
        ] {
            let err = app(extra).unwrap_err().to_string();
            assert!(
                err.contains(&format!("applications[0].{key}")),
                "{extra}: {err}"
            );
        }
    }

    #[test]
    fn promotion_needs_a_configured_system_of_record() {
        let apps = "[[applications]]\nname='a'\nlogical_id='lid://a'\n";
        let ok = Config::from_toml(
            &format!("[hub.promotion]\nwhen_type='Customer'\nsystem_of_record='lid://a'\n{apps}"),
            "t",
        )
        .unwrap();
        assert_eq!(
            ok.promotion().map(|(p, i)| (p.when_type.as_str(), i)),
            Some(("Customer", 0))
        );
        assert!(Config::default().promotion().is_none());
        for (toml, key) in [
            (
                "when_type='Customer'\nsystem_of_record='lid://a/1'\n",
                "hub.promotion.system_of_record",
            ),
            (
                "when_type=' '\nsystem_of_record='lid://a'\n",
                "hub.promotion.when_type",
            ),
            (
                "when_type='C'\nsystem_of_record='lid://a'\naccounting_entity=''\n",
                "hub.promotion.accounting_entity",
            ),
            (
                "when_type='C'\nsystem_of_record='lid://a'\nwhen='x'\n",
                "hub.promotion.when",
            ),
        ] {
            let err = refusal(&format!("[hub.promotion]\n{toml}{apps}"));
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn two_applications_cannot_share_a_queue_name() {
        let app = |name: &str, lid: &str| {
            format!("[[applications]]\nname='{name}'\nlogical_id='{lid}'\n")
        };
        for (first, second) in [("Infor CRM", "Infor-CRM"), ("CRM", "crm"), ("ERP", " erp!")] {
            let err = refusal(&format!(
                "{}{}",
                app(first, "lid://a"),
                app(second, "lid://b")
            ));
            assert!(
                err.contains("applications[1].name")
                    && err.contains("bodflow.to.")
                    && err.contains(first),
                "{first} / {second}: {err}"
            );
        }
        let ok = Config::from_toml(
            &format!(
                "{}{}",
                app("Infor CRM", "lid://a"),
                app("Infor CRM 2", "lid://b")
            ),
            "t",
        )
        .unwrap();
        assert_eq!(ok.applications[1].slug(), "infor-crm-2");
    }

    #[test]
    fn classification_keys_must_be_codes() {
        let base = "[[applications]]\nname='a'\nlogical_id='lid://a'\n";
        let ok = Config::from_toml(
            &format!("{base}require_classification='Sales'\nstamp_classification='Sales'\n"),
            "t",
        )
        .unwrap();
        assert_eq!(
            ok.applications[0].require_classification.as_deref(),
            Some("Sales")
        );
        assert!(Application::has_classification(
            &["VIP".into(), "sales".into()],
            "SALES"
        ));
        let err = refusal(&format!("{base}stamp_classification='  '\n"));
        assert!(
            err.contains("applications[0].stamp_classification"),
            "{err}"
        );
    }

    #[test]
    fn tracking_defaults_to_seven_days_and_retention_takes_a_number_and_a_unit() {
        let cfg = Config::from_toml("", "t.toml").unwrap();
        assert!(cfg.tracking.enabled);
        assert_eq!(cfg.tracking.retention.0.as_secs(), 7 * 86400);
        assert_eq!(cfg.hub.tombstone_retention.0.as_secs(), 90 * 86400);
        assert_eq!(cfg.dedup_window().as_secs(), 7 * 86400);
        // Unset, it follows a longer tracking retention.
        let cfg = Config::from_toml("[tracking]\nretention = '30d'\n", "t.toml").unwrap();
        assert_eq!(cfg.dedup_window().as_secs(), 30 * 86400);
        let cfg = Config::from_toml(
            "[hub]
tombstone_retention = '30d'
",
            "t.toml",
        )
        .unwrap();
        assert_eq!(cfg.hub.tombstone_retention.0.as_secs(), 30 * 86400);
        let cfg = Config::from_toml("[tracking]\nenabled = false\nretention = '36h'\n", "t.toml")
            .unwrap();
        assert!(!cfg.tracking.enabled);
        assert_eq!(cfg.tracking.retention.0.as_secs(), 36 * 3600);
        for (text, secs) in [("45s", 45), ("90m", 5400), ("7d", 604800), (" 2h ", 7200)] {
            let p: Period = text.parse().unwrap();
            assert_eq!(p.0.as_secs(), secs, "{text}");
        }
        assert_eq!(
            Period(std::time::Duration::from_secs(5400)).to_string(),
            "90m"
        );
        assert_eq!(
            Period(std::time::Duration::from_secs(604800)).to_string(),
            "7d"
        );
        for bad in [
            "7",
            "d",
            "7w",
            "0d",
            "-1d",
            "1.5h",
            "99999999999999999999d",
            "",
        ] {
            assert!(bad.parse::<Period>().is_err(), "{bad:?} must be refused");
        }
        let err = Config::from_toml("[tracking]\nretention = '7 days'\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tracking.retention"), "{err}");
        // The dedup window holds at least the timelines (their way in is the marker).
        let cfg = Config::from_toml("[hub]\ndedup_window = '90d'\n", "t.toml").unwrap();
        assert_eq!(cfg.dedup_window().as_secs(), 90 * 86400);
        let err = Config::from_toml("[hub]\ndedup_window = '6d'\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hub.dedup_window") && err.contains("6d") && err.contains("(7d)"),
            "{err}"
        );
        for ok in [
            "[hub]\ndedup_window = '7d'\n",
            "[hub]\ndedup_window = '1h'\n[tracking]\nretention = '1h'\n",
            "[hub]\ndedup_window = '1h'\n[tracking]\nenabled = false\n",
        ] {
            Config::from_toml(ok, "t.toml").unwrap();
        }
        let err = Config::from_toml(
            "[hub]\ndedup_window = '59m'\n[tracking]\nenabled = false\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("at least 1h"), "{err}");
    }

    #[test]
    fn amqp_url_is_redacted_in_debug() {
        let dbg = format!("{:?}", Amqp::default());
        assert!(
            dbg.contains("guest:***@") && !dbg.contains("guest:guest"),
            "{dbg}"
        );
    }

    #[test]
    fn the_store_cache_is_the_commands_own_unless_configured() {
        let hub = Config::default().hub;
        assert_eq!(hub.store_cache_bytes(4 << 20), 4 << 20);
        assert_eq!(hub.store_cache_bytes(32 << 20), 32 << 20);
        let c = Config::from_toml("[hub]\nstore_cache_mb = 16\n", "t").unwrap();
        assert_eq!(c.hub.store_cache_bytes(4 << 20), 16 << 20);
        assert_eq!(c.hub.store_cache_bytes(32 << 20), 16 << 20);
        for bad in ["0", "65537"] {
            let err = refusal(&format!("[hub]\nstore_cache_mb = {bad}\n"));
            assert!(err.contains("hub.store_cache_mb"), "{bad}: {err}");
        }
        let err = refusal("[hub]\nstore_cache_mb = -1\n");
        assert!(err.contains("store_cache_mb"), "{err}");
    }
}
