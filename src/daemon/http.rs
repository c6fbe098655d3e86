//! `/metrics`, `/healthz`, `/readyz` on `metrics.listen` (SPEC §8b), for the daemon only.
//! Ready = the database answers and the audit log is writable.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::domain::ports::AuditLog;
use crate::infrastructure::db::SeaOrmStore;
use crate::infrastructure::metrics::Metrics;

/// A readiness probe gives the database this long to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct Endpoints {
    metrics: Arc<Metrics>,
    store: SeaOrmStore,
    audit: Arc<dyn AuditLog>,
}

/// Serves until `stop` is cancelled. The listener is bound by the caller, so that a bad
/// address fails the start, not a background task.
pub fn spawn(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    store: SeaOrmStore,
    audit: Arc<dyn AuditLog>,
    stop: CancellationToken,
) {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Endpoints {
            metrics,
            store,
            audit,
        });
    info!(%addr, "Serving /metrics, /healthz and /readyz.");
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            error!(%addr, error = %e, "The metrics endpoint stopped.");
        }
    });
}

/// Binds `metrics.listen`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

async fn metrics_page(State(endpoints): State<Endpoints>) -> Response {
    match endpoints.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, Metrics::content_type())], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn ready(State(endpoints): State<Endpoints>) -> Response {
    if let Some(failure) = endpoints.audit.failure() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{failure}\n")).into_response();
    }
    match tokio::time::timeout(READY_TIMEOUT, endpoints.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the database did not answer within {}\n",
                humantime::format_duration(READY_TIMEOUT)
            ),
        )
            .into_response(),
    }
}
