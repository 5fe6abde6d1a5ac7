//! `bodflow run`: the broker service (DESIGN §4, §5.3, §5.5). Opens the store, binds the
//! HTTP endpoint on `http.listen` (a busy address fails the start; it also takes
//! `POST /resync`, and the configured resync schedules run beside it), then hands over to
//! [`crate::amqp::run_with`] with SIGINT/SIGTERM as its shutdown; exit 0 after a clean stop.
//!
//! With `tracking.enabled` it also serves `GET /messages/{id}` and purges message timelines
//! older than `tracking.retention` every [`PURGE_EVERY`] (from the start). The tombstones of
//! hard deletes older than `hub.tombstone_retention` go on the same schedule.
//!
//! Shutdown order: stop consuming → finish the deliveries taken → drain the outbox (all of it
//! within [`crate::amqp::RunOptions::stop_timeout`]) → close the broker → flush the store →
//! stop HTTP (so `/metrics` and `/readyz` answer until the very end, `/readyz` with 503 from
//! the moment shutdown is requested). A second SIGINT/SIGTERM exits at once (status 128 + the
//! signal: 130, 143).
//!
//! SIGHUP re-reads the configuration file resolved at start and swaps it between commit
//! groups ([`crate::reload`]); an invalid file is refused and the running one kept.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::amqp::{self, RunOptions};
use crate::config::{redact_url, Config};
use crate::pipeline::Pipeline;
use crate::reload::{self, Live};
use crate::store::track::Millis;
use crate::store::{Store, StoreError};
use crate::telemetry::events::{
    emit, MarkersExpired, MarkersFailed, TombstonesFailed, TombstonesPurged, TrackingFailed,
    TrackingPurged,
};
use crate::telemetry::{self, Readiness};

/// How often the store size and outbox length gauges are refreshed.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// How often expired message timelines are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Tracking groups (one per commit, up to 64 runs each) removed, or marker lists (one per
/// commit) gone through, per store batch while purging: each batch holds the store's writer
/// lock briefly, so commits go on in between.
const PURGE_CHUNK: usize = 16;

/// Tombstones removed per store batch while purging (each batch holds the writer lock).
const TOMBSTONE_CHUNK: usize = 512;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (default: ./bodflow.toml, else built-in).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Commit attempts on store errors before a delivery is dead-lettered
    /// `retries_exhausted`.
    #[arg(long, default_value_t = RunOptions::default().store_attempts)]
    store_attempts: u32,
    /// Most deliveries per store transaction (group commit).
    #[arg(long, default_value_t = RunOptions::default().group_max)]
    group_max: usize,
    /// Times in a row bodflow.out may return an outbound message (no queue bound for its
    /// receiver) before it goes to bodflow.dead with code `unroutable`.
    #[arg(long, default_value_t = RunOptions::default().unroutable_attempts)]
    unroutable_attempts: u32,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    limit_malloc_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Listening from the very start: a SIGHUP while the store opens becomes a reload once
    // the service runs, and a SIGTERM a clean stop, instead of the default action
    // (terminate).
    let hangup = listen_hangup(&runtime);
    let mut stop_signals = listen_stop(&runtime);
    let (config, config_path) = Config::resolve(args.config.as_deref(), &[])?;
    // A URL no connection could use is a configuration error, not a broker to wait for.
    let endpoint = amqp::endpoint(&config.amqp)?;
    if config_path.is_none() {
        tracing::warn!("No bodflow.toml found: built-in defaults, no applications configured");
    }
    let store_path = config.hub.store.clone();
    let store = Store::open_configured(&store_path, &config.hub)
        .with_context(|| format!("opening store {}", store_path.display()))?;
    tracing::info!(
        store = %store_path.display(),
        store_cache_mb = store.cache_bytes() >> 20,
        broker = %redact_url(&config.amqp.url),
        tls = endpoint.tls(),
        applications = config.applications.len(),
        prefetch = config.amqp.prefetch,
        "Starting"
    );
    let listen = config.http.listen.clone();
    let tracking = config.tracking;
    let pipeline = Pipeline::new(Arc::new(config), Arc::new(store))?;
    // Documents parked while their application was inactive go through now that it is active;
    // their replies wait in the outbox for the publisher.
    let (released, failed) = pipeline.release_reactivated(chrono::Utc::now());
    pipeline.store.flush()?;
    if !released.is_empty() || failed > 0 {
        tracing::info!(
            documents = released.len(),
            failed,
            "Released documents of re-activated applications"
        );
    }
    let options = RunOptions {
        store_attempts: args.store_attempts.max(1),
        group_max: args.group_max.max(1),
        unroutable_attempts: args.unroutable_attempts.max(1),
        ..Default::default()
    };
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("binding http.listen {listen}"))?;
        let readiness = Readiness::default();
        readiness.set_store_open(true);
        let stop_http = tokio_util::sync::CancellationToken::new();
        let sampler = tokio::spawn(telemetry::sample(
            pipeline.store.clone(),
            SAMPLE_EVERY,
            stop_http.clone(),
        ));
        let live = Live::new(pipeline);
        let admin = crate::admin::Admin::new(live.clone());
        let store = live.store().clone();
        let router = if tracking.enabled {
            tracing::info!(listen = %listener.local_addr()?, "Serving /metrics, /healthz, /readyz, /messages/{{id}}, /resync");
            telemetry::http::router_with_store(readiness.clone(), store.clone())
        } else {
            tracing::info!(listen = %listener.local_addr()?, "Serving /metrics, /healthz, /readyz, /resync");
            telemetry::http::router(readiness.clone())
        };
        let http = tokio::spawn(telemetry::http::serve_router(
            listener,
            router.merge(crate::admin::router(admin.clone())),
            stop_http.clone(),
        ));
        let schedules = tokio::spawn(crate::admin::schedules(admin, stop_http.clone()));
        let reloader = tokio::spawn(reload_on_sighup(
            live.clone(),
            config_path,
            hangup,
            stop_http.clone(),
        ));
        let tombstones = tokio::spawn(purge_tombstones(live.clone(), stop_http.clone()));
        let markers = tokio::spawn(expire_markers(live.clone(), stop_http.clone()));
        let purger = tracking
            .enabled
            .then(|| tokio::spawn(purge_tracking(live.clone(), stop_http.clone())));
        let shutdown = async move {
            stop_signals.next().await;
            // A second signal: the operator will not wait. Exit at once (128 + the signal, as
            // the shell reports a process it killed); nothing is lost: what is not flushed
            // was not acked and comes back, as after a crash.
            tokio::spawn(async move {
                let signal = stop_signals.next().await;
                tracing::warn!(signal, "Second stop signal: exiting at once");
                std::process::exit(128 + signal);
            });
        };
        let result = amqp::run_live(live, options, readiness.clone(), shutdown).await;
        readiness.set_store_open(false);
        stop_http.cancel();
        let _ = reloader.await;
        let _ = sampler.await;
        let _ = schedules.await;
        if let Some(purger) = purger {
            let _ = purger.await;
        }
        let _ = tombstones.await;
        let _ = markers.await;
        match http.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server failed"),
            Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
        }
        result.map_err(anyhow::Error::from)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Arenas glibc's malloc may create (`MALLOC_ARENA_MAX`) unless the environment says
/// otherwise.
const MALLOC_ARENA_MAX: &str = "1";

/// Caps glibc's malloc arenas for the service. glibc gives a thread that meets contention an
/// arena of its own (up to 8 per core) and an arena keeps the memory it once held: with the
/// lapin I/O thread, the runtime workers, the prepare lanes, the committer and sled's I/O
/// threads each freeing what another allocated, the service's peak RSS with a 200,000
/// backlog was ~10 MB higher than with one arena (glibc's per-thread caches keep the
/// small allocations off its lock), at the same throughput (benches/README.md).
/// The limit can only be set before the process starts (setting it from inside needs
/// `unsafe`), so when `MALLOC_ARENA_MAX` is not set the process re-executes itself — same
/// pid, arguments, environment and open descriptors — with it set; a failed exec only costs
/// the limit. An explicit `MALLOC_ARENA_MAX` (any value) is left alone.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt as _;
        if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
            return;
        }
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                tracing::debug!(error = %e, "Cannot find the executable; malloc arenas not capped");
                return;
            }
        };
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new(exe);
        if let Some(arg0) = args.next() {
            command.arg0(arg0);
        }
        // Only returns on failure.
        let e = command
            .args(args)
            .env("MALLOC_ARENA_MAX", MALLOC_ARENA_MAX)
            .exec();
        tracing::debug!(error = %e, "Cannot re-execute; malloc arenas not capped");
    }
}

#[cfg(unix)]
type Hangup = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangup = std::convert::Infallible;

/// The stream of signal `kind`, listened for from now on; `None`, with a warning naming what
/// is off without it, when it cannot be had.
#[cfg(unix)]
fn listen_signal(
    runtime: &tokio::runtime::Runtime,
    kind: tokio::signal::unix::SignalKind,
    name: &str,
    without: &str,
) -> Option<tokio::signal::unix::Signal> {
    let _context = runtime.enter();
    tokio::signal::unix::signal(kind)
        .map_err(
            |e| tracing::warn!(error = %e, signal = name, without, "Cannot listen for a signal"),
        )
        .ok()
}

/// The SIGHUP stream (`None`, with a warning, when it cannot be had: reload is then off).
fn listen_hangup(runtime: &tokio::runtime::Runtime) -> Option<Hangup> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::SignalKind;
        listen_signal(
            runtime,
            SignalKind::hangup(),
            "SIGHUP",
            "configuration reload is off",
        )
    }
    #[cfg(not(unix))]
    {
        let _ = runtime;
        None
    }
}

/// The next SIGHUP; `false` when no more can come.
async fn next_hangup(hangup: &mut Hangup) -> bool {
    #[cfg(unix)]
    {
        hangup.recv().await.is_some()
    }
    #[cfg(not(unix))]
    {
        match *hangup {}
    }
}

/// Reloads the configuration on every SIGHUP until `stop`. `path` is the file resolved at
/// start (`None`: none was found, so a reload resolves again and may find one).
async fn reload_on_sighup(
    live: Live,
    path: Option<PathBuf>,
    hangup: Option<Hangup>,
    stop: tokio_util::sync::CancellationToken,
) {
    let Some(mut hangup) = hangup else {
        return;
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            more = next_hangup(&mut hangup) => {
                if !more {
                    return;
                }
            }
        }
        tracing::info!("SIGHUP: reloading the configuration");
        // Outcome logged and counted by the reload's events.
        let _ = reload::reload(&live, path.clone()).await;
    }
}

/// Runs `purge` on the blocking pool with the cut-off "`retention` of the configuration
/// before now" (read at every round: a reload applies), now and every [`PURGE_EVERY`] until
/// `stop`; `report` gets its outcome and the seconds it took. A failure is reported and the
/// next round tries again.
async fn purge_every<T: Send + 'static>(
    live: Live,
    stop: tokio_util::sync::CancellationToken,
    retention: fn(&Config) -> Duration,
    purge: fn(&Store, Millis) -> Result<T, StoreError>,
    report: fn(Result<T, &dyn std::fmt::Display>, f64),
) {
    loop {
        let retention = retention(&live.current().await.config);
        let store = live.store().clone();
        let started = std::time::Instant::now();
        let outcome = tokio::task::spawn_blocking(move || {
            let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
            purge(&store, Millis(Millis::now().0.saturating_sub(retention_ms)))
        })
        .await;
        let seconds = started.elapsed().as_secs_f64();
        match outcome {
            Ok(Ok(done)) => report(Ok(done), seconds),
            Ok(Err(e)) => report(Err(&e), seconds),
            Err(e) => report(Err(&e), seconds),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PURGE_EVERY) => {}
        }
    }
}

/// Calls `step` (one store batch: entries gone through, items removed) until it goes through
/// fewer than `chunk` entries; returns the items removed.
fn in_chunks(
    chunk: usize,
    mut step: impl FnMut() -> Result<(usize, usize), StoreError>,
) -> Result<usize, StoreError> {
    let mut removed = 0;
    loop {
        let (through, n) = step()?;
        removed += n;
        if through < chunk {
            return Ok(removed);
        }
    }
}

/// Removes the message timelines last processed more than `tracking.retention` ago.
async fn purge_tracking(live: Live, stop: tokio_util::sync::CancellationToken) {
    purge_every(
        live,
        stop,
        |config| config.tracking.retention.0,
        |store, before| {
            in_chunks(PURGE_CHUNK, || {
                let purged = store.purge_tracked(before, PURGE_CHUNK)?;
                Ok((purged.groups, purged.runs))
            })
        },
        |outcome, seconds| match outcome {
            Ok(removed) => emit(TrackingPurged { removed, seconds }),
            Err(error) => emit(TrackingFailed {
                action: "purge",
                error,
            }),
        },
    )
    .await;
}

/// Removes the tombstones of hard deletes older than `hub.tombstone_retention`.
async fn purge_tombstones(live: Live, stop: tokio_util::sync::CancellationToken) {
    purge_every(
        live,
        stop,
        |config| config.hub.tombstone_retention.0,
        |store, before| {
            in_chunks(TOMBSTONE_CHUNK, || {
                store.purge_tombstones(before.0, TOMBSTONE_CHUNK)
            })
        },
        |outcome, _| match outcome {
            Ok(removed) => emit(TombstonesPurged { removed }),
            Err(error) => emit(TombstonesFailed { error }),
        },
    )
    .await;
}

/// Removes the message-id markers last written more than `hub.dedup_window` ago, then
/// rebuilds the marker filter if enough of it has expired.
async fn expire_markers(live: Live, stop: tokio_util::sync::CancellationToken) {
    purge_every(
        live,
        stop,
        Config::dedup_window,
        |store, before| {
            let before = store.marker_cutoff(before, Millis::now())?;
            let parked = store.parked_marker_keys()?;
            let removed = in_chunks(PURGE_CHUNK, || {
                let expired = store.expire_markers(before, PURGE_CHUNK, &parked)?;
                Ok((expired.lists, expired.markers))
            })?;
            Ok((removed, store.rebuild_marker_filter_if_due()?))
        },
        |outcome, seconds| match outcome {
            Ok((removed, filter_bytes)) => emit(MarkersExpired {
                removed,
                filter_bytes,
                seconds,
            }),
            Err(error) => emit(MarkersFailed { error }),
        },
    )
    .await;
}

/// SIGTERM and SIGINT, listened for from the start: one that comes while the store opens or
/// the service starts stops it cleanly once it runs, instead of killing it (the default
/// action), and a second one ends it at once.
struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

/// Starts listening for SIGTERM and SIGINT (a stream that cannot be had is logged and left
/// out; with neither, SIGINT is still caught by `ctrl_c` when waited for).
fn listen_stop(runtime: &tokio::runtime::Runtime) -> StopSignals {
    #[cfg(unix)]
    {
        use tokio::signal::unix::SignalKind;
        let stops = "it kills the service instead of stopping it";
        StopSignals {
            term: listen_signal(runtime, SignalKind::terminate(), "SIGTERM", stops),
            int: listen_signal(runtime, SignalKind::interrupt(), "SIGINT", stops),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = runtime;
        StopSignals {}
    }
}

impl StopSignals {
    /// Completes on the next SIGINT or SIGTERM, with its number.
    async fn next(&mut self) -> i32 {
        const SIGINT: i32 = 2;
        #[cfg(unix)]
        {
            const SIGTERM: i32 = 15;
            // A stream that cannot be had (or has ended) never completes.
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                if let Some(s) = s {
                    if s.recv().await.is_some() {
                        return;
                    }
                }
                std::future::pending().await
            }
            if self.term.is_none() && self.int.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return SIGINT;
            }
            tokio::select! {
                () = recv(&mut self.int) => SIGINT,
                () = recv(&mut self.term) => SIGTERM,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            SIGINT
        }
    }
}
