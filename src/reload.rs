//! Live configuration: the [`Pipeline`] the service runs, swapped by a reload (SIGHUP in
//! `bodflow run`) between commit groups (DESIGN §4: nothing lost, nothing applied twice).
//!
//! The consumer takes [`Live::read`] once per commit group and holds it until the group is
//! committed; a document its lanes prepared under an older configuration is prepared again
//! under the held one, so every document is prepared and committed under one configuration. [`reload`] takes the write lock: it waits for the group in flight, then
//! brings the store's match indexes in line with the new configuration, releases the
//! documents of re-activated applications (their replies go to the outbox) and swaps — no
//! group ever runs across a change, and nothing is consumed or acked differently: deliveries
//! simply wait in the broker's prefetch meanwhile.
//!
//! What reloads: applications (new ones get their queue declared before the swap), users,
//! country tables, policies, flows, limits, `hub.tenant`, `hub.account_number_format` and
//! `hub.tombstone_retention` (read by each purge round).
//! What needs a restart ([`RESTART_ONLY`]): `hub.store`, `hub.store_cache_mb`,
//! `hub.logical_id`, `amqp.url`, `amqp.prefetch`, `amqp.lanes`, `amqp.tls`, `http.listen` — a
//! changed value is reported (WARN, metric `bodflow_config_restart_required`) and the running
//! value kept.
//!
//! An invalid file (syntax, unknown key, broken reference) is refused with the error logged
//! (`bodflow_config_reloads_total{result="invalid"}`); a valid one that cannot be applied
//! (the broker refuses the topology, the store cannot build an index) is refused as `failed`.
//! Either way the running configuration stays.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{RwLock, RwLockReadGuard};

use crate::config::{Config, ConfigError};
use crate::pipeline::Pipeline;
use crate::store::{Store, StoreError};
use crate::telemetry::events::{emit, ConfigReloadRefused, ConfigReloaded};

/// Settings a running service cannot change; a reload keeps their running value.
pub const RESTART_ONLY: [&str; 9] = [
    "hub.store",
    "hub.store_cache_mb",
    "hub.logical_id",
    "amqp.url",
    "amqp.prefetch",
    "amqp.lanes",
    "amqp.tls",
    "http.listen",
    "tracking.enabled",
];

/// The running pipeline, shared by the consumer, the outbox publisher and the reloader
/// (cheap clone).
#[derive(Clone)]
pub struct Live {
    pipeline: Arc<RwLock<Pipeline>>,
    store: Arc<Store>,
}

impl Live {
    pub fn new(pipeline: Pipeline) -> Live {
        Live {
            store: pipeline.store.clone(),
            pipeline: Arc::new(RwLock::new(pipeline)),
        }
    }

    /// The pipeline for one commit group; a reload waits until the guard is dropped (and,
    /// once a reload waits, the next group waits for the reload: tokio's lock is fair).
    /// Holding it, never wait for another holder (another lane, say): a reload queued
    /// between the two would deadlock them.
    pub async fn read(&self) -> RwLockReadGuard<'_, Pipeline> {
        self.pipeline.read().await
    }

    /// A snapshot of the running pipeline, for work that needs no exclusion from reloads
    /// (declaring topology, publishing).
    pub async fn current(&self) -> Pipeline {
        self.pipeline.read().await.clone()
    }

    /// The store; it never changes under a `Live` (`bodflow run` makes a new one when it
    /// opens the store again, see [`Slot`]).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

/// The service's [`Live`] pipeline while its store is open, for what outlives one store: the
/// HTTP endpoints, the reloader and the resync scheduler of `bodflow run`. Empty while the
/// service lets go of a store that cannot write and opens it again (DESIGN §6: the process
/// stays up), so that nothing holds the old one open meanwhile.
#[derive(Clone, Default)]
pub struct Slot(Arc<std::sync::RwLock<Option<Live>>>);

impl Slot {
    /// The running pipeline, if the store is open.
    pub fn get(&self) -> Option<Live> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, live: Option<Live>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = live;
    }
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error("declaring the topology of the new configuration: {0}")]
    Topology(#[from] crate::amqp::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reload task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl ReloadError {
    /// The `result` label: `invalid` for a file that does not load, else `failed`.
    pub fn result(&self) -> &'static str {
        match self {
            ReloadError::Invalid(_) => "invalid",
            _ => "failed",
        }
    }
}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The file read (`None`: built-in defaults).
    pub path: Option<PathBuf>,
    /// Changed settings that keep their running value until a restart.
    pub restart_needed: Vec<&'static str>,
    /// Documents of re-activated applications released from parking.
    pub released: usize,
}

/// Re-reads the configuration as `bodflow run` resolved it at start (`--config`, else
/// `./bodflow.toml`, else built-in defaults) and applies it (module docs). Emits
/// [`ConfigReloaded`] or [`ConfigReloadRefused`]; on `Err` the running configuration stays.
pub async fn reload(live: &Live, explicit: Option<PathBuf>) -> Result<Reloaded, ReloadError> {
    let shown = explicit
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "bodflow.toml".into());
    let result = reload_inner(live, explicit).await;
    match &result {
        Ok(r) => emit(ConfigReloaded {
            path: &r
                .path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(built-in defaults)".into()),
            applications: live.read().await.config.applications.len(),
            restart_needed: &r.restart_needed,
            released: r.released,
        }),
        Err(e) => emit(ConfigReloadRefused {
            path: &shown,
            result: e.result(),
            error: e,
        }),
    }
    result
}

async fn reload_inner(live: &Live, explicit: Option<PathBuf>) -> Result<Reloaded, ReloadError> {
    let (mut config, path) =
        tokio::task::spawn_blocking(move || Config::resolve(explicit.as_deref(), &[])).await??;
    let running = live.current().await;
    let restart_needed = keep_running(&mut config, &running.config);
    config.check(
        &path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    )?;
    // New applications' queues exist before any document can be routed to them.
    crate::amqp::declare_topology(&config).await?;

    let mut guard = live.pipeline.write().await;
    let store = live.store.clone();
    let running = guard.config.clone();
    let (pipeline, released) = tokio::task::spawn_blocking(move || {
        build_or_restore(&store, &running, || {
            let pipeline = Pipeline::new(Arc::new(config), store.clone())?;
            // The new configuration is in force either way; what stayed parked (with a
            // warning) is released by the next reload or start.
            let released = pipeline.release_reactivated(chrono::Utc::now()).0.len();
            pipeline.store.flush()?;
            Ok((pipeline, released))
        })
    })
    .await??;
    *guard = pipeline;
    drop(guard);
    Ok(Reloaded {
        path,
        restart_needed,
        released,
    })
}

/// The new configuration's pipeline, from `build`. Should that fail, the reload is refused and
/// the `running` configuration stays — but building may have dropped match indexes it
/// matches on (or listed ones it does not keep up to date), so they are put back as it has
/// them before the error is returned.
fn build_or_restore<T>(
    store: &Store,
    running: &Config,
    build: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    build().inspect_err(|_| {
        if let Err(e) = store.ensure_indexes(&running.indexed_keys()) {
            tracing::error!(error = %e, code = e.code(), "The running configuration's match indexes could not be restored after a refused reload; restart bodflow to rebuild them");
        }
    })
}

/// Puts the running values of [`RESTART_ONLY`] settings into `new`; returns those that
/// differed.
pub fn keep_running(new: &mut Config, running: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut keep = |name: &'static str, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    keep("hub.store", new.hub.store != running.hub.store);
    keep(
        "hub.store_cache_mb",
        new.hub.store_cache_mb != running.hub.store_cache_mb,
    );
    keep(
        "hub.logical_id",
        new.hub.logical_id != running.hub.logical_id,
    );
    keep("amqp.url", new.amqp.url != running.amqp.url);
    keep("amqp.prefetch", new.amqp.prefetch != running.amqp.prefetch);
    keep("amqp.lanes", new.amqp.lanes != running.amqp.lanes);
    keep("amqp.tls", new.amqp.tls != running.amqp.tls);
    keep("http.listen", new.http.listen != running.http.listen);
    keep(
        "tracking.enabled",
        new.tracking.enabled != running.tracking.enabled,
    );
    new.hub.store = running.hub.store.clone();
    new.hub.store_cache_mb = running.hub.store_cache_mb;
    new.hub.logical_id = running.hub.logical_id.clone();
    new.amqp = running.amqp.clone();
    new.http = running.http.clone();
    // Whether `/messages/{id}` is served and timelines purged is decided at start.
    new.tracking.enabled = running.tracking.enabled;
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_reload_puts_back_the_match_indexes_of_the_running_configuration() {
        let store = Arc::new(Store::temporary().unwrap());
        let config = |key: &str| {
            Config::from_toml(
                &format!(
                    "[[applications]]\nname = 'LN'\nlogical_id = 'lid://infor.ln.ln01'\n\
                     country_code_format = 'iso3'\ncreate_policy = 'match_or_create'\n\
                     match_on = ['{key}']\n"
                ),
                "t",
            )
            .unwrap()
        };
        let running = Pipeline::new(Arc::new(config("email")), store.clone()).unwrap();
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/010-ln-sync-account-new-iso3-owner-by-personnel-number.xml"
        ))
        .unwrap();
        let report = running
            .process(&crate::pipeline::Input::file(
                &bytes,
                "010",
                chrono::Utc::now(),
            ))
            .unwrap();
        assert_eq!(
            report.outcome,
            crate::pipeline::Outcome::Applied,
            "{:?}",
            report.error
        );
        let matched = || {
            store
                .transact(|tx| {
                    tx.matches(
                        crate::store::Kind::Account,
                        crate::config::MatchKey::Email,
                        "einkauf@brandt-maschinenbau.de",
                    )
                })
                .unwrap()
        };
        assert_eq!(
            matched(),
            report.record.clone().into_iter().collect::<Vec<_>>()
        );

        // The new configuration matches on account numbers only: building its pipeline drops
        // the e-mail index; then the reload fails (say, the flush).
        let refused = build_or_restore(&store, &running.config, || {
            Pipeline::new(Arc::new(config("account_number")), store.clone())?;
            assert!(matched().is_empty(), "dropped by the new configuration");
            Err::<(), _>(StoreError::Internal("the flush failed".into()))
        });
        assert!(refused.is_err());
        assert_eq!(
            matched(),
            report.record.into_iter().collect::<Vec<_>>(),
            "the running configuration matches on e-mail again"
        );
    }

    #[test]
    fn restart_only_settings_keep_their_running_value_and_are_reported() {
        let running = Config::default();
        let mut new = Config::from_toml(
            "[hub]\nstore = 'elsewhere'\nstore_cache_mb = 64\ntenant = 'T2'\n[amqp]\nprefetch = 7\n[http]\nlisten = '0.0.0.0:1'\n[tracking]\nenabled = false\nretention = '1d'\n[[users]]\nid = 'U-NEW'\n",
            "t",
        )
        .unwrap();
        let changed = keep_running(&mut new, &running);
        assert_eq!(
            changed,
            [
                "hub.store",
                "hub.store_cache_mb",
                "amqp.prefetch",
                "http.listen",
                "tracking.enabled"
            ]
        );
        assert_eq!(new.tracking.enabled, running.tracking.enabled);
        assert_ne!(
            new.tracking.retention, running.tracking.retention,
            "reloads"
        );
        assert_eq!(new.hub.store, running.hub.store);
        assert_eq!(new.hub.store_cache_mb, running.hub.store_cache_mb);
        assert_eq!(new.amqp.prefetch, running.amqp.prefetch);
        assert_eq!(new.http.listen, running.http.listen);
        // What reloads is taken.
        assert_eq!(new.hub.tenant.as_deref(), Some("T2"));
        assert_eq!(new.users.len(), 1);
        let mut same = running.clone();
        assert!(keep_running(&mut same, &running).is_empty());
        for name in changed {
            assert!(RESTART_ONLY.contains(&name));
        }
    }
}
