//! PersistentVolumeClaims and PersistentVolumes: the Kubernetes docs' manifests (MySQL with a
//! hostPath PersistentVolume, WordPress with default-class claims) parse unchanged; bad fields
//! are refused with their path; a claim that names no class gets `local-path`; volume node
//! affinity and claim matching follow Kubernetes' rules.

#![allow(clippy::unwrap_used)]

use berth_proto::manifest::parse_manifest;
use berth_proto::storage::*;
use berth_proto::types::*;
use berth_proto::{DynObject, Kind};

fn errors(text: &str) -> Vec<String> {
    match parse_manifest("app.yaml", text) {
        Ok(objs) => panic!("expected errors, got {} objects", objs.len()),
        Err(e) => e.errors().iter().map(|e| e.to_string()).collect(),
    }
}

fn docs(path: &str) -> Vec<DynObject> {
    let file = format!(
        "{}/../manifests/k8s-docs/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&file).unwrap();
    parse_manifest(&file, &text).unwrap_or_else(|e| panic!("{e}"))
}

fn stored<T: berth_proto::Resource>(o: &DynObject) -> T {
    DynObject::from_value(o.value.clone())
        .unwrap()
        .to_typed()
        .unwrap()
}

#[test]
fn the_docs_mysql_and_wordpress_manifests_parse_unchanged() {
    let kinds = |objs: &[DynObject]| objs.iter().map(|o| o.kind).collect::<Vec<_>>();
    let pv = docs("mysql/mysql-pv.yaml");
    assert_eq!(
        kinds(&pv),
        [Kind::PersistentVolume, Kind::PersistentVolumeClaim]
    );
    let v: PersistentVolume = stored(&pv[0]);
    assert_eq!(v.spec.host_path.as_ref().unwrap().path, "/mnt/data");
    assert_eq!(
        v.reclaim_policy(),
        "Retain",
        "a hand-made volume is retained"
    );
    let c: PersistentVolumeClaim = stored(&pv[1]);
    assert_eq!(c.storage_class(), "manual");
    assert!(
        v.satisfies(&c),
        "the docs' volume satisfies the docs' claim"
    );
    let mysql = docs("mysql/mysql-deployment.yaml");
    assert_eq!(kinds(&mysql), [Kind::Service, Kind::Deployment]);
    for f in [
        "wordpress/mysql-deployment.yaml",
        "wordpress/wordpress-deployment.yaml",
    ] {
        let objs = docs(f);
        assert_eq!(
            kinds(&objs),
            [Kind::Service, Kind::PersistentVolumeClaim, Kind::Deployment],
            "{f}"
        );
        let c: PersistentVolumeClaim = stored(&objs[1]);
        assert_eq!(
            c.spec.storage_class_name.as_deref(),
            Some(LOCAL_PATH),
            "a claim naming no class gets the default class when stored"
        );
        assert_eq!(c.requested_bytes(), Some(20 << 30));
        let d: Deployment = objs[2].to_typed().unwrap();
        assert_eq!(pod_claims(&d.spec.template.spec).count(), 1);
    }
}

#[test]
fn claim_errors_name_the_field() {
    let cases: &[(&str, &str)] = &[
        (
            "spec:\n  resources:\n    requests:\n      storage: 1Gi\n",
            "spec.accessModes: at least one access mode is required",
        ),
        (
            "spec:\n  accessModes: [ReadWriteSometimes]\n  resources:\n    requests:\n      storage: 1Gi\n",
            "spec.accessModes[0]: unsupported access mode \"ReadWriteSometimes\"",
        ),
        (
            "spec:\n  accessModes: [ReadWriteOnce]\n",
            "spec.resources.requests.storage: is required",
        ),
        (
            "spec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: lots\n",
            "spec.resources.requests.storage:",
        ),
        (
            "spec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 0\n",
            "spec.resources.requests.storage: must be greater than zero",
        ),
        (
            "spec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 1Gi\n      cpu: 1\n",
            "spec.resources.requests.cpu: unsupported resource \"cpu\"",
        ),
        (
            "spec:\n  accessModes: [ReadWriteOnce]\n  volumeMode: Block\n  resources:\n    requests:\n      storage: 1Gi\n",
            "spec.volumeMode: unsupported volumeMode \"Block\"",
        ),
        (
            "spec:\n  accessModes: [ReadWriteOnce]\n  storageClassName: Fast_SSD\n  resources:\n    requests:\n      storage: 1Gi\n",
            "spec.storageClassName: invalid name \"Fast_SSD\"",
        ),
        (
            "spec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 1Gi\n  sizee: 1\n",
            "spec.sizee",
        ),
    ];
    for (spec, want) in cases {
        let text =
            format!("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\n{spec}");
        let errs = errors(&text).join("\n");
        assert!(errs.contains(want), "{spec}\nwant {want:?}\ngot {errs}");
    }
}

#[test]
fn volume_errors_name_the_field() {
    let base = "  capacity:\n    storage: 1Gi\n  accessModes: [ReadWriteOnce]\n";
    let cases: &[(&str, &str)] = &[
        (
            "  accessModes: [ReadWriteOnce]\n  hostPath:\n    path: /d\n",
            "spec.capacity.storage: is required",
        ),
        ("", "spec: a volume source is required: hostPath or local"),
        (
            "  hostPath:\n    path: data\n",
            "spec.hostPath.path: \"data\" must be an absolute path",
        ),
        (
            "  hostPath:\n    path: /d\n  persistentVolumeReclaimPolicy: Recycle\n",
            "spec.persistentVolumeReclaimPolicy: Recycle is deprecated",
        ),
        (
            "  local:\n    path: /d\n",
            "spec.nodeAffinity: is required for a local volume",
        ),
        (
            "  local:\n    path: /d\n  nodeAffinity:\n    required:\n      nodeSelectorTerms:\n      - matchExpressions:\n        - key: kubernetes.io/hostname\n          operator: Near\n          values: [a]\n",
            "spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].operator: unsupported operator \"Near\"",
        ),
        (
            "  local:\n    path: /d\n  nodeAffinity:\n    required:\n      nodeSelectorTerms:\n      - matchExpressions:\n        - key: kubernetes.io/hostname\n          operator: In\n",
            "spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values: must have at least one value for operator In",
        ),
        (
            "  hostPath:\n    path: /d\n  claimRef:\n    name: data\n",
            "spec.claimRef.namespace: is required",
        ),
    ];
    for (spec, want) in cases {
        let text = format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: pv1\nspec:\n{}{spec}",
            if want.starts_with("spec.capacity") {
                ""
            } else {
                base
            }
        );
        let errs = errors(&text).join("\n");
        assert!(errs.contains(want), "{spec}\nwant {want:?}\ngot {errs}");
    }
}

#[test]
fn a_pod_volume_names_its_claim() {
    let errs = errors(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: busybox\n  volumes:\n  - name: data\n    persistentVolumeClaim:\n      claimName: Bad_Name\n",
    )
    .join("\n");
    assert!(
        errs.contains("spec.volumes[0].persistentVolumeClaim.claimName"),
        "{errs}"
    );
}

fn node(name: &str, labels: &[(&str, &str)]) -> Node {
    Node {
        metadata: ObjectMeta {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn volume_with(affinity: Option<VolumeNodeAffinity>) -> PersistentVolume {
    PersistentVolume {
        spec: PersistentVolumeSpec {
            node_affinity: affinity,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn term(reqs: &[(&str, &str, &[&str])]) -> VolumeNodeAffinity {
    VolumeNodeAffinity {
        required: Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: reqs
                    .iter()
                    .map(|(k, op, vs)| NodeSelectorRequirement {
                        key: k.to_string(),
                        operator: op.to_string(),
                        values: vs.iter().map(|v| v.to_string()).collect(),
                    })
                    .collect(),
                match_fields: Vec::new(),
            }],
        }),
    }
}

#[test]
fn volume_node_affinity_matches_like_kubernetes() {
    let a = node("a", &[("disk", "ssd"), ("rack", "3")]);
    let b = node("b", &[("kubernetes.io/hostname", "b")]);
    let cases: Vec<(VolumeNodeAffinity, bool, bool)> = vec![
        // The provisioner's pin: by hostname label, or the node's name without the label.
        (pin_to_node("a"), true, false),
        (pin_to_node("b"), false, true),
        (term(&[("disk", "In", &["ssd", "nvme"])]), true, false),
        (term(&[("disk", "NotIn", &["ssd"])]), false, true),
        (term(&[("disk", "Exists", &[])]), true, false),
        (term(&[("disk", "DoesNotExist", &[])]), false, true),
        (term(&[("rack", "Gt", &["2"])]), true, false),
        (term(&[("rack", "Lt", &["2"])]), false, false),
        (
            term(&[("disk", "In", &["ssd"]), ("rack", "In", &["4"])]),
            false,
            false,
        ),
        (VolumeNodeAffinity { required: None }, true, true),
    ];
    for (aff, want_a, want_b) in cases {
        let v = volume_with(Some(aff.clone()));
        assert_eq!(v.allows_node(&a), want_a, "{aff:?} on a");
        assert_eq!(v.allows_node(&b), want_b, "{aff:?} on b");
    }
    assert!(volume_with(None).allows_node(&a), "no affinity: any node");
    assert_eq!(volume_with(Some(pin_to_node("a"))).pinned_node(), Some("a"));
}

fn claim(class: Option<&str>, modes: &[&str], size: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: "data".into(),
            namespace: "default".into(),
            uid: "u1".into(),
            ..Default::default()
        },
        spec: PersistentVolumeClaimSpec {
            access_modes: modes.iter().map(|m| m.to_string()).collect(),
            resources: VolumeResourceRequirements {
                requests: [("storage".to_string(), Quantity(size.into()))].into(),
                ..Default::default()
            },
            storage_class_name: class.map(String::from),
            ..Default::default()
        },
        status: None,
        ..Default::default()
    }
}

fn pv(class: &str, modes: &[&str], size: &str, phase: &str) -> PersistentVolume {
    PersistentVolume {
        spec: PersistentVolumeSpec {
            capacity: [("storage".to_string(), Quantity(size.into()))].into(),
            access_modes: modes.iter().map(|m| m.to_string()).collect(),
            storage_class_name: class.into(),
            ..Default::default()
        },
        status: Some(PersistentVolumeStatus {
            phase: phase.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn a_volume_satisfies_a_claim_of_its_class_size_and_modes() {
    let c = claim(Some("manual"), &["ReadWriteOnce"], "10Gi");
    let cases = [
        (pv("manual", &["ReadWriteOnce"], "10Gi", "Available"), true),
        (
            pv(
                "manual",
                &["ReadWriteOnce", "ReadOnlyMany"],
                "20Gi",
                "Available",
            ),
            true,
        ),
        (pv("manual", &["ReadWriteOnce"], "5Gi", "Available"), false),
        (pv("manual", &["ReadOnlyMany"], "10Gi", "Available"), false),
        (pv("fast", &["ReadWriteOnce"], "10Gi", "Available"), false),
        (pv("", &["ReadWriteOnce"], "10Gi", "Available"), false),
        (pv("manual", &["ReadWriteOnce"], "10Gi", "Released"), false),
    ];
    for (v, want) in cases {
        assert_eq!(v.satisfies(&c), want, "{:?}", v.spec);
    }
    // A claim with no class stored means local-path; `""` means "no class".
    let no_class = claim(Some(""), &["ReadWriteOnce"], "1Gi");
    assert!(pv("", &["ReadWriteOnce"], "1Gi", "Available").satisfies(&no_class));
    // Pre-bound to another claim: not for this one; to this one: yes, whatever its phase.
    let mut other = pv("manual", &["ReadWriteOnce"], "10Gi", "Available");
    other.spec.claim_ref = Some(ClaimReference {
        namespace: "default".into(),
        name: "other".into(),
        ..Default::default()
    });
    assert!(!other.satisfies(&c));
    other.spec.claim_ref.as_mut().unwrap().name = "data".into();
    assert!(other.satisfies(&c));
}
