//! berth-client: how every Berth component talks to the API server.
//!
//! - [`Client`] ([`client`]): typed gRPC calls (`get::<Deployment>`, `list`, `create`,
//!   `update` with CAS on resourceVersion, `update_status`, `apply`, `delete`, `batch`,
//!   `watch`, `cluster_status`) plus dynamic variants over [`DynObject`] for the CLI; fails
//!   over across servers (following `berth-leader` hints) with backoff and a deadline.
//! - [`ClientError`] ([`error`]): the ONE mapping from gRPC status to error variants.
//! - [`runtime`]: the controller runtime every control loop uses: [`runtime::watcher`]
//!   (list + resumable watch, relist on expiry), [`runtime::reflector`] (one writer, many
//!   cheap [`runtime::reflector::Store`] readers), [`runtime::queue`] (dedup work queue with
//!   delays and per-key backoff) and [`runtime::controller`] (`Controller::new(..).owns(..)
//!   .run(reconcile, error_policy, ctx)`).
//!
//! Data flow: server -> Client (JSON bytes -> serde types) -> watcher events -> reflector
//! store + work-queue keys -> reconcile(Arc<T>, Arc<Ctx>) -> Client writes -> server.

pub mod client;
pub mod error;
pub mod runtime;

pub use berth_proto::{DynObject, Kind, Resource};
pub use client::{
    BatchOp, Change, Client, ClientConfig, Outcome, WatchEvent, WatchStream, DEFAULT_SERVER,
};
pub use error::ClientError;
pub use runtime::controller::{Action, Controller, ControllerConfig};
pub use runtime::reflector::{Store, Writer};
pub use runtime::{Object, ObjectRef};
