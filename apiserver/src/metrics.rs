//! The server's Prometheus metrics: a per-server [`Registry`] with
//! - a collector reading raft status, proposal counts, the store (revision, objects per kind)
//!   and the number of open watch streams at scrape time;
//! - gRPC request counts and latencies per method and status code, recorded by
//!   [`Instrumented`], a wrapper around a tonic service (the `Api` service is mounted through
//!   it in [`crate::server::start`]).
//!
//! `berth server --metrics-listen HOST:PORT` serves them (plus the process-wide
//! [`berth_metrics::global`] registry: scheduler and controllers) at `GET /metrics`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use berth_metrics::{CounterVec, Family, HistogramVec, Registry, DEFAULT_LATENCY_BUCKETS};
use berth_proto::selector::Selector;
use berth_proto::Kind;
use tokio_util::task::TaskTracker;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;

use crate::raft::{RaftHandle, Role};
use crate::store::Store;

/// Request counters and latency histograms of the gRPC services.
#[derive(Clone, Debug)]
pub struct GrpcMetrics {
    requests: CounterVec,
    latency: HistogramVec,
}

impl GrpcMetrics {
    pub fn register(registry: &Registry) -> GrpcMetrics {
        GrpcMetrics {
            requests: registry.counter_vec(
                "berth_grpc_requests_total",
                "gRPC requests handled, by method and status code.",
                &["method", "code"],
            ),
            latency: registry.histogram_vec(
                "berth_grpc_request_duration_seconds",
                "gRPC request latency until the response headers (for Watch: until the stream \
                 starts), by method and status code.",
                &["method", "code"],
                DEFAULT_LATENCY_BUCKETS,
            ),
        }
    }

    fn record(&self, method: &str, code: &str, started: Instant) {
        self.requests.with(&[method, code]).inc();
        self.latency
            .with(&[method, code])
            .observe_duration(started.elapsed());
    }
}

/// The method name of a gRPC path (`/berth.v1.Api/Create` -> `Create`).
fn method_of(path: &str) -> &str {
    path.rsplit('/')
        .next()
        .filter(|m| !m.is_empty())
        .unwrap_or("unknown")
}

/// The status code of a response: tonic puts an error's `grpc-status` in the headers
/// (trailers-only response); a success carries it in the trailers, so no header means OK.
fn code_of<B>(resp: &http::Response<B>) -> String {
    match resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
    {
        Some(n) => format!("{:?}", tonic::Code::from_i32(n)),
        None => format!("{:?}", tonic::Code::Ok),
    }
}

/// A tonic service wrapped to record [`GrpcMetrics`] for every request.
#[derive(Clone)]
pub struct Instrumented<S> {
    inner: S,
    metrics: GrpcMetrics,
}

impl<S> Instrumented<S> {
    pub fn new(inner: S, metrics: GrpcMetrics) -> Instrumented<S> {
        Instrumented { inner, metrics }
    }
}

impl<S: NamedService> NamedService for Instrumented<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for Instrumented<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ResB>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let method = method_of(req.uri().path()).to_string();
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            metrics.record(&method, &code_of(&resp), started);
            Ok(resp)
        })
    }
}

/// Register the collector of raft, store and watch state.
pub fn register_server_collector(
    registry: &Registry,
    raft: RaftHandle,
    store: Arc<Store>,
    watches: TaskTracker,
) {
    registry.add_collector(move || {
        let st = raft.status();
        let (proposals, failed) = raft.proposal_counts();
        let g = |name: &str, help: &str, v: f64| Family::gauge(name, help).with(&[], v);
        let c = |name: &str, help: &str, v: f64| Family::counter(name, help).with(&[], v);
        let mut objects = Family::gauge(
            "berth_store_objects",
            "Objects in this member's store, by kind.",
        );
        let everything = Selector::everything();
        for kind in Kind::ALL {
            if let Ok((items, _)) = store.list(kind, None, &everything) {
                objects.push(&[("kind", kind.as_str())], items.len() as f64);
            }
        }
        vec![
            g("berth_raft_term", "Current raft term.", st.term as f64),
            g(
                "berth_raft_leader_id",
                "Member id of the current leader (0: none known).",
                st.leader_id.unwrap_or(0) as f64,
            ),
            g(
                "berth_raft_is_leader",
                "1 if this member is the raft leader.",
                if st.role == Role::Leader { 1.0 } else { 0.0 },
            ),
            g(
                "berth_raft_commit_index",
                "Highest raft log index known to be committed.",
                st.commit as f64,
            ),
            g(
                "berth_raft_applied_index",
                "Highest raft log index applied to this member's store.",
                st.applied as f64,
            ),
            g(
                "berth_raft_apply_lag",
                "Committed entries not yet applied here (commit - applied).",
                st.commit.saturating_sub(st.applied) as f64,
            ),
            g(
                "berth_raft_members",
                "Voting members in the configuration.",
                st.members.len() as f64,
            ),
            c(
                "berth_raft_proposals_total",
                "Entries proposed by this member while leader.",
                proposals as f64,
            ),
            c(
                "berth_raft_proposals_failed_total",
                "Proposals that were not applied (dropped by a leadership change, timed out).",
                failed as f64,
            ),
            g(
                "berth_store_revision",
                "Revision of the last committed mutation.",
                store.revision() as f64,
            ),
            g(
                "berth_store_oldest_watchable_revision",
                "Oldest revision a watch can resume from (older answers Expired).",
                store.oldest_watchable_revision() as f64,
            ),
            objects,
            g(
                "berth_watchers_active",
                "Open watch streams served by this member.",
                watches.len() as f64,
            ),
        ]
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_and_code_are_read_from_path_and_headers() {
        assert_eq!(method_of("/berth.v1.Api/Create"), "Create");
        assert_eq!(method_of("/"), "unknown");
        let ok = http::Response::builder().body(()).unwrap_or_default();
        assert_eq!(code_of(&ok), "Ok");
        let nf = http::Response::builder()
            .header("grpc-status", "5")
            .body(())
            .unwrap_or_default();
        assert_eq!(code_of(&nf), "NotFound");
    }
}
