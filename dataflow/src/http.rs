//! The observability HTTP server: `/metrics` (OpenMetrics text for Prometheus), `/` (the live
//! dashboard), `/api/state` (the dashboard's JSON), `/healthz` (the process is up) and `/readyz`
//! (the source is connected and, with an LLM, the LLM side is up: no outage, start-up check done).
//!
//! It runs on its own one-thread tokio runtime, so a slow scraper never competes with the LLM
//! calls, and it only reads shared state: a scrape never blocks a timely worker for longer than
//! a counter lock.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::metrics::EngineMetrics;

/// The dashboard: one page, plain HTML and JavaScript, no external resources.
const DASHBOARD: &str = include_str!("../assets/dashboard.html");
/// Where the page expects the first state, so it renders without waiting for a request.
const INITIAL_STATE_MARK: &str = "/*INITIAL_STATE*/null";

/// A running server; dropping it stops it.
pub struct MetricsServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl MetricsServer {
    /// Binds `addr` (`HOST:PORT`; port 0 picks a free one) and serves `metrics` in the
    /// background. A taken port fails here, with the address named.
    pub fn start(addr: &str, metrics: EngineMetrics) -> anyhow::Result<MetricsServer> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on metrics address '{addr}'"))?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("webscale-http")
            .enable_all()
            .build()?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(metrics.clone());
        runtime.spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "metrics server stopped");
            }
        });
        // From now on the Kafka runtime also refreshes the partitions' end offsets (for the lag).
        metrics.funnel().live().set_watched();
        tracing::info!(addr = %local, "metrics and dashboard server listening");
        Ok(MetricsServer {
            addr: local,
            shutdown: Some(tx),
            runtime: Some(runtime),
        })
    }

    /// The bound address (with the port picked when 0 was given).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

fn router(metrics: EngineMetrics) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(prometheus))
        .route("/api/state", get(api_state))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(metrics)
}

async fn prometheus(State(m): State<EngineMetrics>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

/// JSON for embedding in a `<script>` element: no `<` can close it.
fn state_json(m: &EngineMetrics) -> String {
    m.state().to_string().replace('<', "\\u003c")
}

async fn api_state(State(m): State<EngineMetrics>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        state_json(&m),
    )
        .into_response()
}

async fn dashboard(State(m): State<EngineMetrics>) -> Response {
    let page = DASHBOARD.replacen(INITIAL_STATE_MARK, &state_json(&m), 1);
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response()
}

async fn readyz(State(m): State<EngineMetrics>) -> Response {
    match m.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()).into_response(),
        Err(missing) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{}\n", missing.join("\n")),
        )
            .into_response(),
    }
}
