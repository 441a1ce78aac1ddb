//! Request metrics as a tower layer over every gRPC service, and the metrics endpoint.
//!
//! The layer reads the method from the request path and the outcome from the `grpc-status` of
//! the response headers: tonic answers a refusal as a trailers-only response, with the status in
//! the headers; a response without one is a success whose status comes in the trailers (`OK`).
//! Label values are bounded: a path outside the served packages, or a method the server does
//! not have (`UNIMPLEMENTED`), is counted as `unknown`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use hsm_api::Hsm;
use tokio::net::TcpListener;

use crate::error::{Error, Result};
use crate::metrics::{MethodLabels, Metrics, RequestLabels};
use crate::service::Kms;

/// Adds [`MetricsService`] around a service.
#[derive(Debug, Clone)]
pub(crate) struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    /// A layer recording into `metrics`.
    pub(crate) fn new(metrics: Arc<Metrics>) -> MetricsLayer {
        MetricsLayer { metrics }
    }
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> MetricsService<S> {
        MetricsService {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// Counts and times each request.
#[derive(Debug, Clone)]
pub(crate) struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// `(service, method)` of a gRPC path `/package.Service/Method`, if it is one of ours.
fn method_of(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let ours = service.starts_with("sscard.kms.v1.")
        || service.starts_with("grpc.health.v1.")
        || service.starts_with("grpc.reflection.");
    let plain = |s: &str| {
        !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
    };
    (ours && plain(service) && plain(method)).then_some((service, method))
}

impl<S, B, R> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = match method_of(request.uri().path()) {
            Some((service, method)) => (service.to_owned(), method.to_owned()),
            None => ("unknown".to_owned(), "unknown".to_owned()),
        };
        let metrics = Arc::clone(&self.metrics);
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .map_or(tonic::Code::Ok, |v| tonic::Code::from_bytes(v.as_bytes())),
                Err(_) => tonic::Code::Unavailable,
            };
            let method = if code == tonic::Code::Unimplemented {
                "unknown".to_owned()
            } else {
                method
            };
            metrics
                .request_seconds
                .get_or_create(&MethodLabels {
                    service: service.clone(),
                    method: method.clone(),
                })
                .observe(started.elapsed().as_secs_f64());
            metrics
                .requests
                .get_or_create(&RequestLabels {
                    service,
                    method,
                    code: format!("{code:?}"),
                })
                .inc();
            response
        })
    }
}

/// Serves `GET /metrics` (Prometheus/OpenMetrics text) on `listener` until `shutdown`. Plain
/// HTTP: bind it to an address only the monitoring network reaches.
pub async fn serve_metrics<H: Hsm>(
    kms: Arc<Kms<H>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let kms = Arc::clone(&kms);
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    kms.scrape().await,
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "metrics endpoint failed");
            Error::Tls {
                what: "metrics",
                reason: "listener failure",
            }
        })
}

#[cfg(test)]
mod tests {
    use super::method_of;

    #[test]
    fn only_our_methods_become_labels() {
        assert_eq!(
            method_of("/sscard.kms.v1.CardKeyService/InjectCardKeys"),
            Some(("sscard.kms.v1.CardKeyService", "InjectCardKeys"))
        );
        assert_eq!(
            method_of("/grpc.health.v1.Health/Check"),
            Some(("grpc.health.v1.Health", "Check"))
        );
        for path in [
            "/",
            "",
            "/evil.Service/Method",
            "/sscard.kms.v1.CardKeyService",
            "/sscard.kms.v1.CardKeyService/",
            "/sscard.kms.v1.CardKeyService/Inject Card",
            "/sscard.kms.v1.CardKeyService/a/b",
        ] {
            assert_eq!(method_of(path), None, "{path:?}");
        }
    }
}
