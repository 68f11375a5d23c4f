//! ConfigMaps, Secrets and the environment a container takes from them: the Kubernetes docs'
//! shapes parse; bad keys, sizes, base64 and references are refused with the field path;
//! a Secret's `stringData` is stored as base64 `data`; no error ever shows a secret value.

#![allow(clippy::unwrap_used)]

use berth_proto::manifest::parse_manifest;
use berth_proto::types::*;
use berth_proto::DynObject;

fn errors(text: &str) -> Vec<String> {
    match parse_manifest("app.yaml", text) {
        Ok(objs) => panic!("expected errors, got {} objects", objs.len()),
        Err(e) => e.errors().iter().map(|e| e.to_string()).collect(),
    }
}

fn one(text: &str) -> DynObject {
    let mut v = parse_manifest("app.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.len(), 1);
    v.remove(0)
}

#[test]
fn a_secret_with_string_data_is_stored_as_base64_data() {
    // The WordPress tutorial's mysql-pass, written as a user would without kustomize.
    let obj = one(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: mysql-pass\ntype: Opaque\nstringData:\n  password: hunter2\ndata:\n  user: cm9vdA==\n",
    );
    let stored = DynObject::from_value(obj.value.clone()).unwrap();
    let s: Secret = stored.to_typed().unwrap();
    assert!(s.string_data.is_empty(), "stringData is write-only");
    assert_eq!(s.data["password"], "aHVudGVyMg==");
    assert_eq!(s.value("password").unwrap(), b"hunter2");
    assert_eq!(s.value("user").unwrap(), b"root");
    let json = String::from_utf8(stored.to_json()).unwrap();
    assert!(!json.contains("hunter2"), "{json}");
    // Debug output (logs) shows keys and sizes only.
    let dbg = format!("{s:?}");
    assert!(
        !dbg.contains("aHVudGVyMg") && !dbg.contains("hunter2"),
        "{dbg}"
    );
}

#[test]
fn secret_errors_name_the_field_and_never_the_value() {
    let errs = errors(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ndata:\n  token: 'not base64 hunter2!'\n  bad/key: YQ==\nstringData:\n  pin: 12345\n",
    );
    let text = errs.join("\n");
    assert!(
        !text.contains("hunter2") && !text.contains("12345"),
        "{text}"
    );
    assert!(text.contains("stringData.pin"), "{text}");
    let errs = errors(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ndata:\n  token: 'not base64 hunter2!'\n  bad/key: YQ==\n",
    );
    let text = errs.join("\n");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains("data.token") && text.contains("not valid base64"),
        "{text}"
    );
    assert!(
        text.contains("data[bad/key]") && text.contains("file names"),
        "{text}"
    );
}

#[test]
fn typed_secrets_need_their_keys() {
    let text = errors(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: tls\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: x\n",
    )
    .join("\n");
    assert!(text.contains("needs the key \"tls.key\""), "{text}");
    let text = errors(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: reg\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{}'\n",
    )
    .join("\n");
    assert!(text.contains("auths"), "{text}");
    one("apiVersion: v1\nkind: Secret\nmetadata:\n  name: reg\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{\"auths\":{\"r.example:5000\":{\"auth\":\"dTpw\"}}}'\n");
}

#[test]
fn config_maps_refuse_bad_keys_clashes_and_more_than_1_mib() {
    one("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: game-demo\ndata:\n  player_initial_lives: \"3\"\n  game.properties: |\n    enemy.types=aliens,monsters\n");
    let text = errors(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  ..: x\n  a: x\nbinaryData:\n  a: YQ==\n",
    )
    .join("\n");
    assert!(text.contains("names a directory"), "{text}");
    assert!(text.contains("also in data"), "{text}");
    let big = "x".repeat(1024 * 1024 + 1);
    let text = errors(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  big: {big}\n"
    ))
    .join("\n");
    assert!(
        text.contains("at most 1048576"),
        "{}",
        &text[..text.len().min(300)]
    );
}

#[test]
fn env_value_from_references_are_checked() {
    let pod = |env: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: busybox\n    env:\n{env}")
    };
    one(&pod("    - name: PASS\n      valueFrom:\n        secretKeyRef:\n          name: mysql-pass\n          key: password\n    - name: NODE\n      valueFrom:\n        fieldRef:\n          fieldPath: spec.nodeName\n    - name: APP\n      valueFrom:\n        fieldRef:\n          fieldPath: metadata.labels['app']\n"));
    let text = errors(&pod("    - name: A\n      value: x\n      valueFrom:\n        configMapKeyRef:\n          name: c\n          key: k\n    - name: B\n      valueFrom:\n        fieldRef:\n          fieldPath: status.phase\n    - name: C\n      valueFrom: {}\n")).join("\n");
    assert!(
        text.contains("env[0].valueFrom") && text.contains("together with value"),
        "{text}"
    );
    assert!(
        text.contains("env[1].valueFrom.fieldRef.fieldPath") && text.contains("status.phase"),
        "{text}"
    );
    assert!(
        text.contains("env[2].valueFrom") && text.contains("exactly one"),
        "{text}"
    );
}

#[test]
fn pods_name_the_config_they_reference() {
    let obj = one("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: busybox\n    envFrom:\n    - configMapRef:\n        name: game-demo\n    env:\n    - name: PASS\n      valueFrom:\n        secretKeyRef:\n          name: mysql-pass\n          key: password\n");
    let p: Pod = obj.to_typed().unwrap();
    let (cms, secrets) = p.spec.referenced_config();
    assert_eq!(cms.into_iter().collect::<Vec<_>>(), vec!["game-demo"]);
    assert_eq!(secrets.into_iter().collect::<Vec<_>>(), vec!["mysql-pass"]);
}

#[test]
fn init_containers_config_references_count_too() {
    let obj = one("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  initContainers:\n  - name: migrate\n    image: busybox\n    envFrom:\n    - secretRef:\n        name: db-admin\n  containers:\n  - name: c\n    image: busybox\n    envFrom:\n    - configMapRef:\n        name: game-demo\n");
    let p: Pod = obj.to_typed().unwrap();
    let (cms, secrets) = p.spec.referenced_config();
    assert_eq!(cms.into_iter().collect::<Vec<_>>(), vec!["game-demo"]);
    assert_eq!(secrets.into_iter().collect::<Vec<_>>(), vec!["db-admin"]);
}

/// The Kubernetes docs' sidecar Deployment (concepts/workloads/pods/sidecar-containers),
/// unchanged: a native sidecar and the app share an emptyDir. Also an init container's
/// volumeMounts are checked like an app container's.
#[test]
fn the_kubernetes_docs_sidecar_deployment_with_an_empty_dir_applies_unchanged() {
    let obj = one(r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: myapp
  labels:
    app: myapp
spec:
  replicas: 1
  selector:
    matchLabels:
      app: myapp
  template:
    metadata:
      labels:
        app: myapp
    spec:
      containers:
        - name: myapp
          image: alpine:latest
          command: ['sh', '-c', 'while true; do echo "logging" >> /opt/logs.txt; sleep 1; done']
          volumeMounts:
            - name: data
              mountPath: /opt
      initContainers:
        - name: logshipper
          image: alpine:latest
          restartPolicy: Always
          command: ['sh', '-c', 'tail -F /opt/logs.txt']
          volumeMounts:
            - name: data
              mountPath: /opt
      volumes:
        - name: data
          emptyDir: {}
"#);
    let d: Deployment = obj.to_typed().unwrap();
    assert_eq!(d.spec.template.spec.volumes[0].name, "data");
    let text = errors("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  initContainers:\n  - name: i\n    image: busybox\n    volumeMounts:\n    - name: nope\n      mountPath: /x\n  containers:\n  - name: c\n    image: busybox\n    volumeMounts:\n    - name: data\n      mountPath: /opt\n      subPath: ../etc\n  volumes:\n  - name: data\n    emptyDir: {}\n    hostPath:\n      path: /tmp\n").join("\n");
    assert!(
        text.contains("initContainers[0].volumeMounts[0].name")
            && text.contains("no volume named \"nope\""),
        "{text}"
    );
    assert!(
        text.contains("containers[0].volumeMounts[0].subPath") && text.contains("'..'"),
        "{text}"
    );
    assert!(
        text.contains("volumes[0]") && text.contains("exactly one of emptyDir"),
        "{text}"
    );
}
