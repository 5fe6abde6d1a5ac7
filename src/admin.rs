//! Operator actions inside the running service: `POST /resync` on the HTTP listener and the
//! scheduled resyncs of `resync_every` / `resync_at`.
//!
//! Both work on the running configuration ([`Live`]: a resync takes a snapshot of it when it
//! starts, and the schedules are re-read after every SIGHUP reload). While the service opens
//! its store again after it could not write ([`Slot`] empty), a request gets 503 and the
//! schedules wait.
//!
//! Why in the service: sled lets one process open a store, so while `bodflow run` holds it,
//! `bodflow resync` cannot. The CLI then asks the service through [`resync_over_http`]; the
//! service writes the Syncs through its own store, and its outbox publisher sends them with
//! publisher confirms like every other row. One resync runs at a time per process (a second
//! request gets 409).
//!
//! `POST /resync?application=LID[&noun=CustomerPartyMaster|ContactMaster]` answers 200 with the
//! [`Summary`] as JSON, 400 (unknown application or noun, inactive application) or 409 (a resync
//! is already running) with `{"error": ..., "code": ...}`, 500 on a store error, 503 while the
//! store is being opened again. The listener is
//! `http.listen`, loopback by default: whoever can reach it can start a resync (which only
//! re-sends what the hub holds), so keep it on loopback or behind an authenticating proxy.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, NaiveTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::ResyncSchedule;
use crate::pipeline::resync::{self, Request, ResyncError, Summary, Trigger};
use crate::reload::Slot;
use crate::store::Kind;
use crate::telemetry::events::{emit, ResyncFailed};

/// Shared by the handlers and the scheduler: the running pipeline and the one-at-a-time
/// guard.
#[derive(Clone)]
pub struct Admin {
    slot: Slot,
    running: Arc<tokio::sync::Mutex<()>>,
}

impl Admin {
    pub fn new(slot: Slot) -> Admin {
        Admin {
            slot,
            running: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Runs a resync on a blocking thread, waiting for a running one to finish first.
    async fn resync(&self, request: Request) -> Result<Summary, ResyncError> {
        let _guard = self.running.lock().await;
        self.resync_locked(request).await
    }

    async fn resync_locked(&self, request: Request) -> Result<Summary, ResyncError> {
        let Some(live) = self.slot.get() else {
            return Err(ResyncError::StoreReopening);
        };
        // A snapshot: a reload meanwhile does not change what this resync sends.
        let pipeline = live.current().await;
        let known = pipeline
            .config
            .applications
            .iter()
            .any(|a| a.logical_id == request.application);
        let trigger = request.trigger;
        let application = request.application.clone();
        let result = tokio::task::spawn_blocking(move || pipeline.resync(&request, Utc::now()))
            .await
            .unwrap_or_else(|e| Err(ResyncError::Task(e.to_string())));
        if let Err(e) = &result {
            emit(ResyncFailed {
                application: if known { &application } else { "other" },
                trigger: trigger.as_str(),
                code: e.code(),
                error: e,
            });
        }
        result
    }
}

/// `POST /resync`, merged into the service's router.
pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/resync", post(resync_handler))
        .with_state(admin)
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

fn error_response(status: StatusCode, code: &str, error: &str) -> Response {
    json_response(status, &serde_json::json!({ "error": error, "code": code }))
}

async fn resync_handler(State(admin): State<Admin>, RawQuery(query): RawQuery) -> Response {
    let mut application = None;
    let mut nouns = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "application" => application = Some(v.into_owned()),
            "noun" => match Kind::from_noun(&v) {
                Some(kind) => nouns.push(kind),
                None => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        "unknown_noun",
                        &format!("noun {v:?}: expected CustomerPartyMaster or ContactMaster"),
                    )
                }
            },
            other => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "unknown_parameter",
                    &format!("unknown parameter {other:?} (application, noun)"),
                )
            }
        }
    }
    let Some(application) = application else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "missing_application",
            "give ?application=<logical ID>",
        );
    };
    let Ok(_guard) = admin.running.try_lock() else {
        return error_response(
            StatusCode::CONFLICT,
            "resync_running",
            "a resync is already running; try again when it has finished",
        );
    };
    let request = Request {
        application,
        nouns,
        trigger: Trigger::Http,
    };
    match admin.resync_locked(request).await {
        Ok(summary) => json_response(StatusCode::OK, &summary),
        Err(e @ (ResyncError::UnknownApplication(_) | ResyncError::Inactive(_))) => {
            error_response(StatusCode::BAD_REQUEST, e.code(), &e.to_string())
        }
        Err(e @ ResyncError::StoreReopening) => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, e.code(), &e.to_string())
        }
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e.code(), &e.to_string()),
    }
}

/// When a scheduled resync is next due: `every` after the last run (or after `started` when it
/// never ran); `DailyAt` at the first slot after the last run (or after `started`), so a slot
/// missed while the service was down is due at once.
pub fn next_due(
    schedule: ResyncSchedule,
    last: Option<DateTime<Utc>>,
    started: DateTime<Utc>,
) -> DateTime<Utc> {
    let from = last.unwrap_or(started);
    match schedule {
        ResyncSchedule::Every(every) => {
            from + chrono::Duration::from_std(every).unwrap_or(chrono::Duration::MAX)
        }
        ResyncSchedule::DailyAt(h, m) => {
            let time = NaiveTime::from_hms_opt(h, m, 0).unwrap_or(NaiveTime::MIN);
            let today = from.date_naive().and_time(time).and_utc();
            if today > from {
                today
            } else {
                today + chrono::Duration::days(1)
            }
        }
    }
}

/// Runs the configured resync schedules until `stop` is cancelled, re-reading them from the
/// running configuration at least once a minute (a reload may add, change or remove one). A
/// failed run is logged (through [`ResyncFailed`]) and tried again at its next slot.
pub async fn schedules(admin: Admin, stop: CancellationToken) {
    let started = Utc::now();
    // When a scheduled run last failed, per application: it counts as a run for the schedule.
    let mut failed_at: std::collections::BTreeMap<String, DateTime<Utc>> = Default::default();
    let mut announced = 0;
    loop {
        let Some(live) = admin.slot.get() else {
            // The store is being opened again: look again shortly.
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        };
        let pipeline = live.current().await;
        drop(live);
        let scheduled: Vec<(String, ResyncSchedule)> = pipeline
            .config
            .applications
            .iter()
            .filter(|a| a.active)
            .filter_map(|a| {
                a.resync_schedule()
                    .ok()
                    .flatten()
                    .map(|s| (a.logical_id.clone(), s))
            })
            .collect();
        if scheduled.len() != announced {
            announced = scheduled.len();
            tracing::info!(applications = announced, "Resync schedules active");
        }
        let now = Utc::now();
        let mut soonest = now + chrono::Duration::minutes(1);
        for (lid, schedule) in &scheduled {
            let last = match resync::last_run(&pipeline, lid) {
                Ok(last) => last.max(failed_at.get(lid).copied()),
                Err(e) => {
                    tracing::warn!(application = %lid, error = %e, "Cannot read the last resync time");
                    continue;
                }
            };
            let due = next_due(*schedule, last, started);
            if due <= now {
                let request = Request {
                    application: lid.clone(),
                    nouns: Vec::new(),
                    trigger: Trigger::Schedule,
                };
                match admin.resync(request).await {
                    Ok(_) => failed_at.remove(lid),
                    Err(_) => failed_at.insert(lid.clone(), Utc::now()),
                };
                soonest = Utc::now();
                break;
            }
            soonest = soonest.min(due);
        }
        // Not held while waiting: the store must be free to open again if it fails meanwhile.
        drop(pipeline);
        let wait = (soonest - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(60));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// `POST /resync` to a running service at `listen` (`http.listen`), for `bodflow resync` when
/// the service holds the store. Blocking; waits as long as the resync takes. Returns the
/// summary, or the service's error message.
pub fn resync_over_http(
    listen: &str,
    application: &str,
    nouns: &[Kind],
) -> Result<Summary, String> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("application", application);
    for n in nouns {
        query.append_pair("noun", n.noun());
    }
    let query = query.finish();
    let mut stream = std::net::TcpStream::connect(listen)
        .map_err(|e| format!("cannot reach the service at {listen} (http.listen): {e}"))?;
    let request = format!(
        "POST /resync?{query} HTTP/1.1\r\nHost: {listen}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending to {listen}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("reading from {listen}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{listen} answered without an HTTP header: {text:.200}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("{listen} answered without a status: {head:.200}"))?;
    if status == 200 {
        return serde_json::from_str(body)
            .map_err(|e| format!("unexpected answer from {listen}: {e}: {body:.200}"));
    }
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    Err(format!(
        "the service refused the resync ({status}): {message}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn every_counts_from_the_last_run_or_the_start() {
        let day = ResyncSchedule::Every(Duration::from_secs(86_400));
        let start = t("2026-03-02T08:00:00Z");
        assert_eq!(next_due(day, None, start), t("2026-03-03T08:00:00Z"));
        assert_eq!(
            next_due(day, Some(t("2026-03-01T23:00:00Z")), start),
            t("2026-03-02T23:00:00Z")
        );
    }

    #[test]
    fn daily_slots_follow_the_last_run_and_a_missed_slot_is_due_at_once() {
        let at = ResyncSchedule::DailyAt(2, 30);
        let start = t("2026-03-02T08:00:00Z");
        assert_eq!(next_due(at, None, start), t("2026-03-03T02:30:00Z"));
        // Last ran yesterday at the slot; today's slot passed while the service was down.
        let due = next_due(at, Some(t("2026-03-01T02:30:05Z")), start);
        assert_eq!(due, t("2026-03-02T02:30:00Z"));
        assert!(due <= start);
        assert_eq!(
            next_due(at, Some(t("2026-03-02T02:30:00Z")), start),
            t("2026-03-03T02:30:00Z")
        );
    }
}
