//! The HTTP endpoint on `http.listen` while `bodflow run` runs:
//!
//! - `GET /metrics`: the registry in the Prometheus text format;
//! - `GET /healthz`: 200 while the process runs;
//! - `GET /readyz`: 200 when the store is open and the broker session is consuming, else 503
//!   with the reason as text.
//!
//! [`router`] is driven without a socket in the tests; [`serve`] stops (graceful: requests in
//! flight finish) when its token is cancelled, which `bodflow run` does last, after the
//! broker is closed.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use super::Readiness;

pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(readiness)
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

/// Serves [`router`] on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    readiness: Readiness,
    stop: CancellationToken,
) -> std::io::Result<()> {
    serve_router(listener, router(readiness), stop).await
}

/// Serves `app` ([`router`] merged with the service's admin routes) until `stop` is cancelled.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    app: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
