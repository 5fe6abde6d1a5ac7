//! The HTTP endpoint on `http.listen` while `bodflow run` runs:
//!
//! - `GET /metrics`: the registry in the Prometheus text format;
//! - `GET /healthz`: 200 while the process runs;
//! - `GET /readyz`: 200 when the store is open and the broker session is consuming, else 503
//!   with the reason as text;
//! - `GET /messages/{id}` (with a store, [`router_with_store`]): the timelines tracked under
//!   `id` as a message id or a BODID (percent-encode it: BODIDs hold `:`, `?`, `&`, `/`), as
//!   JSON `{"id": ..., "messages": [...]}` — the message first, then the BODID's messages
//!   newest first, at most `?limit=N` (default [`DEFAULT_LIMIT`]); 404 with an empty list when
//!   nothing is tracked under it; 503 while the service opens its store again after it could
//!   not write. `bodflow track` uses it while the service holds the store.
//!
//! [`router`] is driven without a socket in the tests; [`serve`] stops (graceful: requests in
//! flight finish) when its token is cancelled, which `bodflow run` does last, after the
//! broker is closed.

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::events::{emit, TrackingFailed};
use super::Readiness;
use crate::reload::Slot;
use crate::store::track::Track;

/// Timelines returned for one `GET /messages/{id}` unless `?limit=` says otherwise.
pub const DEFAULT_LIMIT: usize = 20;
/// The most `?limit=` may ask for.
pub const MAX_LIMIT: usize = 1000;

/// What `GET /messages/{id}` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct Messages {
    pub id: String,
    pub messages: Vec<Track>,
}

/// `/metrics`, `/healthz`, `/readyz`.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

/// [`router`] plus `GET /messages/{id}` over the store of the pipeline in `slot`.
pub fn router_with_store(readiness: Readiness, slot: Slot) -> Router {
    router(readiness).merge(
        Router::new()
            .route("/messages/{id}", get(messages))
            .with_state(slot),
    )
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        super::encode(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(readiness): State<Readiness>) -> (StatusCode, String) {
    match readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// `limit=N` from a query string; anything else is ignored.
fn limit(query: Option<&str>) -> usize {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("limit="))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT)
}

async fn messages(
    State(slot): State<Slot>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> impl IntoResponse {
    let json = [(header::CONTENT_TYPE, "application/json")];
    let Some(store) = slot.get().map(|live| live.store().clone()) else {
        let body = serde_json::json!({
            "id": id,
            "error": "the store is being opened again (it could not write); try again shortly",
        });
        return (StatusCode::SERVICE_UNAVAILABLE, json, body.to_string());
    };
    let limit = limit(query.as_deref());
    let lookup_id = id.clone();
    let found = tokio::task::spawn_blocking(move || store.lookup_tracked(&lookup_id, limit)).await;
    let failed = |error: &dyn std::fmt::Display| {
        emit(TrackingFailed {
            action: "lookup",
            error,
        });
        let body = serde_json::json!({ "id": id, "error": error.to_string() }).to_string();
        (StatusCode::INTERNAL_SERVER_ERROR, body)
    };
    let (status, body) = match found {
        Ok(Ok(messages)) => {
            let status = if messages.is_empty() {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::OK
            };
            let body = Messages {
                id: id.clone(),
                messages,
            };
            match serde_json::to_string(&body) {
                Ok(text) => (status, text),
                Err(e) => failed(&e),
            }
        }
        Ok(Err(e)) => failed(&e),
        Err(e) => failed(&e),
    };
    (status, json, body)
}

/// Serves [`router`] on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    readiness: Readiness,
    stop: CancellationToken,
) -> std::io::Result<()> {
    serve_router(listener, router(readiness), stop).await
}

/// Serves `router` (e.g. [`router_with_store`]) on `listener` until `stop` is cancelled.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_comes_from_the_query_and_is_bounded() {
        assert_eq!(limit(None), DEFAULT_LIMIT);
        assert_eq!(limit(Some("limit=5")), 5);
        assert_eq!(limit(Some("x=1&limit=7")), 7);
        assert_eq!(limit(Some("limit=0")), 1);
        assert_eq!(limit(Some("limit=99999999")), MAX_LIMIT);
        assert_eq!(limit(Some("limit=lots")), DEFAULT_LIMIT);
    }
}
