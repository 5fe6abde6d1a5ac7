//! `bodflow run`: the broker service (DESIGN §4, §5.3, §5.5). Opens the store, binds the
//! HTTP endpoint on `http.listen` (a busy address fails the start; it also takes
//! `POST /resync`, and the configured resync schedules run beside it), then runs the service
//! ([`Service`], [`crate::amqp::run_live`]) with SIGINT/SIGTERM as its shutdown; exit 0 after
//! a clean stop.
//!
//! With `tracking.enabled` it also serves `GET /messages/{id}`; message timelines older than
//! `tracking.retention` are purged every [`PURGE_EVERY`] (from the start) either way. The
//! tombstones of hard deletes older than `hub.tombstone_retention` go on the same schedule.
//!
//! Shutdown order: stop consuming → finish the deliveries taken → drain the outbox (all of it
//! within [`crate::amqp::RunOptions::stop_timeout`]) → close the broker → flush the store →
//! stop HTTP (so `/metrics` and `/readyz` answer until the very end, `/readyz` with 503 from
//! the moment shutdown is requested). A second SIGINT/SIGTERM exits at once (status 128 + the
//! signal: 130, 143).
//!
//! A store that cannot write (a full disk) does not stop the process (DESIGN §6): the service
//! lets go of it and opens it again until it can write, then goes on ([`Service`]).
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
use crate::reload::{self, Live, Slot};
use crate::store::track::Millis;
use crate::store::{Store, StoreError};
use crate::telemetry::events::{
    emit, MarkersExpired, MarkersFailed, StoreDown, StoreReopenFailed, StoreReopened,
    TombstonesFailed, TombstonesPurged, TrackingFailed, TrackingPurged,
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
    let options = RunOptions {
        store_attempts: args.store_attempts.max(1),
        group_max: args.group_max.max(1),
        unroutable_attempts: args.unroutable_attempts.max(1),
        ..Default::default()
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("binding http.listen {listen}"))?;
        let readiness = Readiness::default();
        let stop_http = tokio_util::sync::CancellationToken::new();
        // What outlives one store: the HTTP endpoints, the reloader and the resync schedules
        // find the running pipeline here (none while the store is opened again).
        let slot = Slot::default();
        let admin = crate::admin::Admin::new(slot.clone());
        let router = if tracking.enabled {
            tracing::info!(listen = %listener.local_addr()?, "Serving /metrics, /healthz, /readyz, /messages/{{id}}, /resync");
            telemetry::http::router_with_store(readiness.clone(), slot.clone())
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
            slot.clone(),
            config_path,
            hangup,
            stop_http.clone(),
        ));
        let stopping = tokio_util::sync::CancellationToken::new();
        tokio::spawn({
            let stopping = stopping.clone();
            async move {
                stop_signals.next().await;
                stopping.cancel();
                // A second signal: the operator will not wait. Exit at once (128 + the
                // signal, as the shell reports a process it killed); nothing is lost: what is
                // not flushed was not acked and comes back, as after a crash.
                let signal = stop_signals.next().await;
                tracing::warn!(signal, "Second stop signal: exiting at once");
                std::process::exit(128 + signal);
            }
        });
        let service = Service {
            slot,
            readiness: readiness.clone(),
            options,
            stopping,
        };
        let result = service.run(store, Arc::new(config)).await;
        stop_http.cancel();
        let _ = reloader.await;
        let _ = schedules.await;
        match http.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server failed"),
            Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
        }
        result
    });
    // Everything of ours has ended (the store is flushed); a thread stuck inside a library
    // (a lapin deadlock was seen once, see `amqp::release_channels`) must not hold up the exit.
    runtime.shutdown_timeout(RUNTIME_EXIT);
    result?;
    Ok(ExitCode::SUCCESS)
}

/// How long the exit waits for the runtime's threads once the service has stopped.
const RUNTIME_EXIT: Duration = Duration::from_secs(5);

/// The first wait before opening a store that could not write again; it doubles up to
/// [`REOPEN_MAX`].
const REOPEN_MIN: Duration = Duration::from_secs(1);
const REOPEN_MAX: Duration = Duration::from_secs(30);

/// The service over one store after another: the store it opened at start, and, whenever that
/// store cannot write (a full disk, a failing device: [`amqp::Error::StoreDown`]), the same
/// store opened again. sled writes nothing more after an I/O error until it is opened again,
/// so the service lets go of it — the broker session is closed (what was not durable was not
/// acked and is back in the queue), the store's tasks stop, and [`Slot`] is emptied so that
/// nothing holds it open — then opens it again with backoff until it opens and takes a
/// flushed write, and resumes. The process, its HTTP endpoint and its metrics stay up
/// throughout (DESIGN §6), `/readyz` answering 503 "store not open" meanwhile. A reload's
/// configuration carries over to the next store.
struct Service {
    slot: Slot,
    readiness: Readiness,
    options: RunOptions,
    stopping: tokio_util::sync::CancellationToken,
}

impl Service {
    /// Runs until a stop is requested (`Ok`, also while the store is being opened again),
    /// or until an error that opening the store again would not cure.
    async fn run(&self, mut store: Store, mut config: Arc<Config>) -> anyhow::Result<()> {
        let mut delay = REOPEN_MIN;
        let mut reopened = None;
        loop {
            let started = std::time::Instant::now();
            let (result, running) = self.serve(store, config, reopened.take()).await?;
            config = running;
            match result {
                // Reported (`report_down`) as it happened.
                Err(amqp::Error::StoreDown(_)) => {}
                other => return other.map_err(anyhow::Error::from),
            }
            if started.elapsed() > REOPEN_MAX {
                delay = REOPEN_MIN;
            }
            (store, reopened) = match self.reopen(&config, &mut delay).await {
                Some((store, how)) => (store, Some(how)),
                None => return Ok(()),
            };
        }
    }

    /// One store's run: the pipeline and the store's own tasks (sampling, purges), then the
    /// broker service until it ends; returns how it ended and the configuration then in force.
    /// Everything that holds the store is dropped when it returns. `reopened`: the store was
    /// opened again after it could not write (reported once the service runs on it).
    async fn serve(
        &self,
        store: Store,
        config: Arc<Config>,
        reopened: Option<Reopened>,
    ) -> anyhow::Result<(Result<(), amqp::Error>, Arc<Config>)> {
        let store = Arc::new(store);
        // A store error here has acked nothing. If the store cannot write, it is opened again
        // like one the service found failing; any other error (a row it cannot read) ends
        // the process, as at start.
        let failed = |e: StoreError, config: Arc<Config>| {
            if store.probe().is_ok() {
                return Err(anyhow::Error::from(e).context("preparing the store"));
            }
            report_down(&config, &e);
            Ok((Err(amqp::Error::StoreDown(e)), config))
        };
        let pipeline = match Pipeline::new(config.clone(), store.clone()) {
            Ok(pipeline) => pipeline,
            Err(e) => return failed(e, config),
        };
        // Documents parked while their application was inactive go through now that it is
        // active; their replies wait in the outbox for the publisher.
        let releasing = pipeline.clone();
        let released = tokio::task::spawn_blocking(move || {
            let released = releasing.release_reactivated(chrono::Utc::now());
            releasing.store.flush().map(|_| released)
        })
        .await?;
        let (released, unreleased) = match released {
            Ok(released) => released,
            Err(e) => return failed(e, config),
        };
        // The pipeline holds the store from here on.
        drop(store);
        if !released.is_empty() || unreleased > 0 {
            tracing::info!(
                documents = released.len(),
                failed = unreleased,
                "Released documents of re-activated applications"
            );
        }
        let live = Live::new(pipeline);
        self.readiness.set_store_open(true);
        self.slot.set(Some(live.clone()));
        if let Some(how) = reopened {
            emit(StoreReopened {
                attempts: how.attempts,
                seconds: how.since.elapsed().as_secs_f64(),
            });
        }
        let stop_tasks = tokio_util::sync::CancellationToken::new();
        let tasks = [
            tokio::spawn(telemetry::sample(
                live.store().clone(),
                SAMPLE_EVERY,
                stop_tasks.clone(),
            )),
            tokio::spawn(purge_tombstones(live.clone(), stop_tasks.clone())),
            tokio::spawn(expire_markers(live.clone(), stop_tasks.clone())),
            // Also with tracking off: timelines an earlier run tracked still expire.
            tokio::spawn(purge_tracking(live.clone(), stop_tasks.clone())),
        ];
        let result = amqp::run_live(
            live.clone(),
            self.options.clone(),
            self.readiness.clone(),
            self.stopping.cancelled(),
        )
        .await;
        if let Err(amqp::Error::StoreDown(e)) = &result {
            report_down(&live.current().await.config, e);
            // A marker filter rebuild under way would hold its task (and the store) until it
            // has read every marker: stop it, the filter goes with the store.
            live.store().interrupt();
        }
        self.readiness.set_store_open(false);
        self.slot.set(None);
        stop_tasks.cancel();
        for task in tasks {
            let _ = task.await;
        }
        let config = live.current().await.config.clone();
        Ok((result, config))
    }

    /// Opens the store again, waiting `delay` (doubled each time, up to [`REOPEN_MAX`]) before
    /// each try, until it opens and takes a flushed write; `None` when a stop is requested
    /// first.
    async fn reopen(&self, config: &Config, delay: &mut Duration) -> Option<(Store, Reopened)> {
        let path = config.hub.store.clone();
        let since = std::time::Instant::now();
        let mut attempts = 0u32;
        loop {
            tokio::select! {
                () = self.stopping.cancelled() => {
                    tracing::info!("Stopped while the store could not write");
                    return None;
                }
                () = tokio::time::sleep(*delay) => {}
            }
            *delay = (*delay * 2).min(REOPEN_MAX);
            attempts += 1;
            let (path, hub) = (path.clone(), config.hub.clone());
            let opened = tokio::task::spawn_blocking(move || {
                let store = Store::open_configured(&path, &hub)?;
                store.probe()?;
                Ok::<_, StoreError>(store)
            })
            .await;
            match opened {
                Ok(Ok(_)) if self.stopping.is_cancelled() => {
                    tracing::info!("Stopped while the store was being opened again");
                    return None;
                }
                Ok(Ok(store)) => return Some((store, Reopened { attempts, since })),
                Ok(Err(error)) => emit(StoreReopenFailed {
                    error: &error,
                    code: error.code(),
                    retry_s: delay.as_secs_f64(),
                }),
                Err(error) => emit(StoreReopenFailed {
                    error: &error,
                    code: "task_failed",
                    retry_s: delay.as_secs_f64(),
                }),
            }
        }
    }
}

/// How a store was opened again: after how many attempts, since when it could not write.
struct Reopened {
    attempts: u32,
    since: std::time::Instant,
}

/// The store cannot write: the ERROR line and `bodflow_store_down` (as soon as it is known,
/// before the store's tasks are stopped).
fn report_down(config: &Config, error: &StoreError) {
    emit(StoreDown {
        error,
        code: error.code(),
        store: &config.hub.store,
    });
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
    slot: Slot,
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
        let Some(live) = slot.get() else {
            tracing::warn!("SIGHUP while the store is being opened again: the configuration is not reloaded; send SIGHUP again once /readyz answers 200");
            continue;
        };
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
            Ok((removed, parked.len(), store.rebuild_marker_filter_if_due()?))
        },
        |outcome, seconds| match outcome {
            Ok((removed, parked, filter_bytes)) => emit(MarkersExpired {
                removed,
                parked,
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
