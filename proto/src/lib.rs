//! berth-proto: the berth.v1 schema, its wire framing, and everything about objects that needs
//! no I/O (kinds, validation, label selectors, resource quantities).
//!
//! **One source of truth.** The schema is the serde types in [`types`]: Kubernetes-shaped
//! structs with `deny_unknown_fields`, parsed from users' YAML and stored/transmitted as JSON.
//! The gRPC messages in `proto/berth.proto` (compiled by tonic-prost-build into [`pb`]) only
//! frame requests *around* those JSON bytes. We chose "serde types carried in proto messages"
//! over "proto types with serde attributes" because Kubernetes manifests need things protobuf
//! cannot express directly (int-or-string, quantities as strings or numbers, camelCase maps,
//! strict unknown-field errors with line numbers), and because it keeps exactly one definition
//! of every field.
//!
//! Data flow: YAML text -> [`manifest`] (parse, strict decode, [`validate`], file:line:path
//! errors) -> typed objects -> JSON bytes in a [`pb`] request -> the API server, which decodes
//! the same types again ([`object::DynObject`]) and re-validates before anything is stored.

pub mod apitoken;
pub mod certificates;
pub mod enums;
pub mod hostpath;
pub mod image;
pub mod jointoken;
pub mod manifest;
pub mod object;
pub mod patch;
pub mod quantity;
pub mod selector;
pub mod snapshotfile;
pub mod storage;
pub mod table;
pub mod trust;
pub mod types;
pub mod validate;

pub use enums::{BlueGreenPhase, PodPhase, StrategyType, TaintEffect, UnknownValue};
pub use object::{DynObject, Kind, Resource};

/// Generated gRPC code for `berth.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("berth.v1");
}
