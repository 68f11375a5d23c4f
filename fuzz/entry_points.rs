//! The fuzz targets' entry points, shared by the targets (fuzz_targets/*.rs) and by the
//! regression test that replays every committed seed and regression input through them
//! (proto/tests/fuzz_regressions.rs, included there with `#[path]`). A panic is a finding.
//! Only `berth_proto` and `prost` are used, both dependencies of the fuzz crate and of proto.
//! Each target uses one of the two functions; the other is dead code there.
#![allow(dead_code)]

use berth_proto::pb;
use berth_proto::selector::Selector;
use berth_proto::{DynObject, Kind};
use prost::Message;

/// `api_decode`: the first byte picks a request message of `berth_proto::pb`; the rest is
/// decoded with prost, and every carried object goes through `DynObject::from_json` and
/// `validate`, every kind through `Kind::parse` and every label selector through
/// `Selector::parse`.
pub fn api_decode(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 12 {
        0 => {
            if let Ok(r) = pb::CreateRequest::decode(bytes) {
                object(&r.object);
            }
        }
        1 => {
            if let Ok(r) = pb::UpdateRequest::decode(bytes) {
                object(&r.object);
            }
        }
        2 => {
            if let Ok(r) = pb::ApplyRequest::decode(bytes) {
                object(&r.object);
            }
        }
        3 => {
            if let Ok(r) = pb::GetRequest::decode(bytes) {
                key(&r.key);
            }
        }
        4 => {
            if let Ok(r) = pb::ListRequest::decode(bytes) {
                kind_and_selector(&r.kind, &r.label_selector);
            }
        }
        5 => {
            if let Ok(r) = pb::DeleteRequest::decode(bytes) {
                key(&r.key);
            }
        }
        6 => {
            if let Ok(r) = pb::BatchRequest::decode(bytes) {
                r.ops.iter().for_each(batch_op);
            }
        }
        7 => {
            if let Ok(r) = pb::WatchRequest::decode(bytes) {
                kind_and_selector(&r.kind, &r.label_selector);
            }
        }
        8 => {
            let _ = pb::ClusterStatusRequest::decode(bytes);
        }
        9 => {
            let _ = pb::JoinRequest::decode(bytes);
        }
        10 => {
            let _ = pb::RemoveMemberRequest::decode(bytes);
        }
        _ => {
            let _ = pb::RaftBatch::decode(bytes);
            // Raw object bytes, as a client could send in any object field.
            object(bytes);
        }
    }
}

/// `manifest`: the manifest loader on arbitrary UTF-8; whatever loads must serialize back and
/// validate cleanly.
pub fn manifest(text: &str) {
    if let Ok(objs) = berth_proto::manifest::parse_manifest("fuzz.yaml", text) {
        for obj in objs {
            let json = obj.to_json();
            let again = DynObject::from_json(&json).expect("a loaded object decodes");
            let errors = berth_proto::validate::validate(&again);
            assert!(
                errors.is_empty(),
                "a loaded object no longer validates: {errors:?}"
            );
        }
    }
}

fn object(bytes: &[u8]) {
    if let Ok(obj) = DynObject::from_json(bytes) {
        let _ = berth_proto::validate::validate(&obj);
        let _ = obj.name();
        let _ = obj.namespace();
    }
}

fn key(k: &Option<pb::ObjectKey>) {
    if let Some(k) = k {
        let _ = Kind::parse(&k.kind);
    }
}

fn kind_and_selector(kind: &str, selector: &str) {
    let _ = Kind::parse(kind);
    let _ = Selector::parse(selector);
}

fn batch_op(op: &pb::BatchOp) {
    use pb::batch_op::Op;
    match &op.op {
        Some(Op::Create(r)) => object(&r.object),
        Some(Op::Update(r)) | Some(Op::UpdateStatus(r)) => object(&r.object),
        Some(Op::Apply(r)) => object(&r.object),
        Some(Op::Delete(r)) => key(&r.key),
        None => {}
    }
}
