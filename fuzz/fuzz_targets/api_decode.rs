//! Fuzz target: what the API server does with request bytes before anything reaches the store.
//! The first byte picks a request message of `berth_proto::pb`; the rest is decoded with prost,
//! and every carried object goes through `DynObject::from_json` and `validate`, every kind
//! through `Kind::parse` and every label selector through `Selector::parse`. Any panic is a bug.
#![no_main]

use berth_proto::pb;
use berth_proto::selector::Selector;
use berth_proto::{DynObject, Kind};
use libfuzzer_sys::fuzz_target;
use prost::Message;

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

fuzz_target!(|data: &[u8]| {
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
});
