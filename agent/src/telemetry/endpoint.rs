//! The HTTP endpoint: `/metrics`, `/healthz` and `/readyz`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::task::JoinHandle;

use super::exposition::PROMETHEUS_CONTENT_TYPE;
use super::metrics::Metrics;

/// What the endpoint's handlers share.
#[derive(Clone)]
struct Probe {
    metrics: Metrics,
    ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
}

/// Serves `GET /metrics`, `GET /healthz` (200 while the process runs) and `GET /readyz`
/// (200 while `ready()` says so, else 503 with the reason it gives) on `listen` (port 0 picks
/// a free port) until `shutdown` completes, then finishes the requests in flight.
///
/// Returns the address actually bound and the server task; the task ends with the server's
/// result, and its owner should await it after triggering `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
    ready: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<(SocketAddr, JoinHandle<io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let router = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(health))
        .route("/readyz", get(readiness))
        .with_state(Probe {
            metrics,
            ready: Arc::new(ready),
        });
    tracing::info!(%address, "serving /metrics, /healthz and /readyz");
    let server = async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    };
    Ok((address, tokio::spawn(server)))
}

async fn metrics_page(State(probe): State<Probe>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        probe.metrics.render(),
    )
}

/// `ok`, then the quarantined runs: the process is healthy, and an operator reading its health
/// learns which runs it keeps apart and why.
async fn health(State(probe): State<Probe>) -> String {
    format!("ok\n{}", probe.metrics.quarantined().health_detail())
}

async fn readiness(State(probe): State<Probe>) -> impl IntoResponse {
    match (probe.ready)() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}
