//! What an operator watches: Prometheus metrics, served in the text format on a listener of
//! their own (never the API's), off by default in `serve` and on in `dev`.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `sscard_requests_total` | service, method, code | gRPC requests by outcome (gRPC status name) |
//! | `sscard_request_duration_seconds` | service, method | request latency |
//! | `sscard_keys_released_total` | form, template | keys delivered to stations and PSAM lines |
//! | `sscard_hsm_calls_total` | op, outcome | HSM operations |
//! | `sscard_hsm_call_duration_seconds` | op | HSM latency |
//! | `sscard_store_commit_requests` | — | requests that shared one commit (one fsync) |
//! | `sscard_store_commit_seconds` | — | time of one commit, fsync included |
//! | `sscard_audit_unsealed_records` | — | audit records written since the last HSM seal |
//! | `sscard_hsm_state` | state | 1 for the HSM's current state, 0 for the others |
//!
//! Nothing here carries a key, an SSN or a card number: labels are names of methods, forms,
//! templates, operations and states.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a gRPC request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub service: String,
    pub method: String,
    pub code: String,
}

/// Labels of a gRPC method.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub service: String,
    pub method: String,
}

/// Labels of released keys.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReleaseLabels {
    pub form: &'static str,
    pub template: String,
}

/// Labels of an HSM call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HsmCallLabels {
    pub op: &'static str,
    pub outcome: &'static str,
}

/// Labels of an HSM operation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HsmOpLabels {
    pub op: &'static str,
}

/// Labels of the HSM state gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

/// The store's own figures (its writer thread records them).
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    pub commit_requests: Histogram,
    pub commit_seconds: Histogram,
    pub unsealed_records: Gauge,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            // 1, 2, 4, … 4096 requests per commit.
            commit_requests: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            // 50 µs … ~1.6 s.
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            unsealed_records: Gauge::default(),
        }
    }
}

/// Every metric of one service instance.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<MethodLabels, Histogram>,
    pub keys_released: Family<ReleaseLabels, Counter>,
    pub hsm_calls: Family<HsmCallLabels, Counter>,
    pub hsm_seconds: Family<HsmOpLabels, Histogram>,
    pub hsm_state: Family<StateLabels, Gauge>,
    /// How long a batch waited for its turn at the HSM (`service::hsm_turns`).
    pub hsm_turn_wait_seconds: Histogram,
}

fn latency_histogram() -> Histogram {
    // 20 µs … ~0.65 s.
    Histogram::new(exponential_buckets(0.000_02, 2.0, 16))
}

impl Metrics {
    /// A registry with every metric, the store's included.
    pub fn new(store: &StoreMetrics) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("sscard");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds =
            Family::<MethodLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let keys_released = Family::<ReleaseLabels, Counter>::default();
        let hsm_calls = Family::<HsmCallLabels, Counter>::default();
        let hsm_seconds =
            Family::<HsmOpLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let hsm_state = Family::<StateLabels, Gauge>::default();
        let hsm_turn_wait_seconds = latency_histogram();
        registry.register(
            "requests",
            "gRPC requests by service, method and status code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "gRPC request latency",
            request_seconds.clone(),
        );
        registry.register(
            "keys_released",
            "Keys delivered, by form and template",
            keys_released.clone(),
        );
        registry.register("hsm_calls", "HSM operations by outcome", hsm_calls.clone());
        registry.register(
            "hsm_call_duration_seconds",
            "HSM operation latency",
            hsm_seconds.clone(),
        );
        registry.register(
            "hsm_state",
            "1 for the HSM's current state",
            hsm_state.clone(),
        );
        registry.register(
            "hsm_turn_wait_seconds",
            "Time a batch waited for its turn at the HSM (callers served in turn)",
            hsm_turn_wait_seconds.clone(),
        );
        registry.register(
            "store_commit_requests",
            "Requests that shared one store commit (one fsync)",
            store.commit_requests.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "Time of one store commit, fsync included",
            store.commit_seconds.clone(),
        );
        registry.register(
            "audit_unsealed_records",
            "Audit records written since the last HSM seal of the chain head",
            store.unsealed_records.clone(),
        );
        Arc::new(Metrics {
            registry,
            requests,
            request_seconds,
            keys_released,
            hsm_calls,
            hsm_seconds,
            hsm_state,
            hsm_turn_wait_seconds,
        })
    }

    /// Sets the HSM state gauge: 1 for `current`, 0 for every other state.
    pub fn set_hsm_state(&self, current: &'static str) {
        for state in HSM_STATES {
            self.hsm_state
                .get_or_create(&StateLabels { state })
                .set(i64::from(state == current));
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The HSM states the gauge reports, as `service::Status::hsm_state` names them.
pub const HSM_STATES: [&str; 4] = ["uninitialised", "sealed", "operational", "self-test-failed"];
