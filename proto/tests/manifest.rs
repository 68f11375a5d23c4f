//! Manifest loading: exact error text and line numbers, all errors of a file at once, nothing
//! returned from a file with any error, limits against hostile YAML, and round trips.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use berth_proto::manifest::{load_documents, load_paths, parse_documents, parse_manifest};
use berth_proto::types::*;
use berth_proto::{DynObject, Kind, Resource};
use proptest::prelude::*;

/// The rendered errors of a file that must fail.
fn errors(text: &str) -> Vec<String> {
    match parse_manifest("app.yaml", text) {
        Ok(objs) => panic!("expected errors, got {} objects", objs.len()),
        Err(e) => e.errors().iter().map(|e| e.to_string()).collect(),
    }
}

const GOOD_DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
        - name: web
          image: nginx:1.27
          ports:
            - name: http
              containerPort: 8080
";

#[test]
fn wrong_type_reports_file_line_and_path() {
    let text = GOOD_DEPLOYMENT.replace("containerPort: 8080", "containerPort: eighty");
    let text = format!("# comment\n# another\n{text}");
    assert_eq!(
        errors(&text),
        vec!["app.yaml:22: spec.template.spec.containers[0].ports[0].containerPort: expected integer"]
    );
    let text = GOOD_DEPLOYMENT.replace("replicas: 2", "replicas: [2]");
    assert_eq!(
        errors(&text),
        vec!["app.yaml:6: spec.replicas: expected integer"]
    );
    let text = GOOD_DEPLOYMENT.replace("image: nginx:1.27", "image: {name: nginx}");
    assert_eq!(
        errors(&text),
        vec!["app.yaml:17: spec.template.spec.containers[0].image: expected string"]
    );
    let text = GOOD_DEPLOYMENT.replace(
        "          image: nginx:1.27\n",
        "          image: nginx:1.27\n          env: [{name: DEBUG, value: true}]\n",
    );
    assert_eq!(
        errors(&text),
        vec!["app.yaml:18: spec.template.spec.containers[0].env[0].value: expected string (put the value in quotes)"]
    );
    let text = GOOD_DEPLOYMENT.replace("replicas: 2", "replicas: 3000000000");
    assert_eq!(
        errors(&text),
        vec!["app.yaml:6: spec.replicas: integer 3000000000 is out of range"]
    );
}

#[test]
fn unknown_field_suggests_the_closest_known_field_and_keeps_checking_inside() {
    let text = GOOD_DEPLOYMENT
        .replace("      containers:", "      contaniers:")
        .replace("containerPort: 8080", "containerPort: 0");
    assert_eq!(
        errors(&text),
        vec![
            "app.yaml:15: spec.template.spec.contaniers: unknown field \"contaniers\": did you mean \"containers\"?",
            "app.yaml:20: spec.template.spec.containers[0].ports[0].containerPort: must be between 1 and 65535 (got 0)",
        ]
    );
    let text = GOOD_DEPLOYMENT.replace("  replicas: 2\n", "  replicas: 2\n  volumes: []\n");
    let errs = errors(&text);
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("app.yaml:7: spec.volumes: unknown field \"volumes\" (known fields: replicas, selector, template,"),
        "{}",
        errs[0]
    );
}

#[test]
fn auto_revert_is_a_checked_field_of_rolling_update() {
    let with = |block: &str| {
        GOOD_DEPLOYMENT.replace("  replicas: 2\n", &format!("  replicas: 2\n{block}"))
    };
    let good = with(
        "  strategy:\n    rollingUpdate:\n      autoRevert: true\n      autoRevertFailedPods: 2\n      autoRevertFailedSeconds: 15\n",
    );
    let objs = parse_manifest("app.yaml", &good).expect("valid");
    let d: berth_proto::types::Deployment = objs[0].to_typed().expect("typed");
    let ru = d.spec.strategy.and_then(|s| s.rolling_update).expect("ru");
    assert!(ru.auto_revert);
    assert_eq!(ru.auto_revert_failed_pods, Some(2));
    let typo = with("  strategy:\n    rollingUpdate:\n      autoRevrt: true\n");
    let errs = errors(&typo);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("spec.strategy.rollingUpdate.autoRevrt: unknown field \"autoRevrt\": did you mean \"autoRevert\"?"),
        "{errs:?}"
    );
}

#[test]
fn missing_required_field_points_at_the_parent() {
    let text =
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n";
    assert_eq!(
        errors(text),
        vec!["app.yaml:5: spec.ports: missing required field"]
    );
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n";
    assert_eq!(
        errors(text),
        vec!["app.yaml:1: spec: missing required field"]
    );
}

#[test]
fn unsupported_kind_and_api_version() {
    assert_eq!(
        errors("apiVersion: apps/v1\nkind: Deploymnt\nmetadata: {name: x}\n"),
        vec!["app.yaml:2: kind: unsupported kind \"Deploymnt\": did you mean Deployment?"]
    );
    assert_eq!(
        errors("apiVersion: v1\nkind: LimitRange\n"),
        vec!["app.yaml:2: kind: unsupported kind \"LimitRange\": use one of Deployment, ReplicaSet, Service, Pod, Endpoints, Node, Event, ImageManifest, ImageTag, ImageBlob, RegistryServer, TrustKey, ImageSignature, ClusterImagePolicy, ImagePolicy, ConfigMap, Secret, PersistentVolumeClaim, PersistentVolume, Namespace"]
    );
    assert_eq!(
        errors("apiVersion: extensions/v1beta1\nkind: Deployment\n"),
        vec!["app.yaml:1: apiVersion: apiVersion extensions/v1beta1 is not supported for Deployment: use apps/v1"]
    );
    assert_eq!(
        errors("kind: Service\nmetadata: {name: x}\n"),
        vec!["app.yaml:1: apiVersion: missing required field: use v1"]
    );
    assert_eq!(
        errors("apiVersion: v1\nmetadata: {name: x}\n"),
        vec!["app.yaml:1: kind: missing required field: set it to one of Deployment, ReplicaSet, Service, Pod, Endpoints, Node, Event, ImageManifest, ImageTag, ImageBlob, RegistryServer, TrustKey, ImageSignature, ClusterImagePolicy, ImagePolicy, ConfigMap, Secret, PersistentVolumeClaim, PersistentVolume, Namespace"]
    );
    assert_eq!(
        errors("- a\n- b\n"),
        vec![
            "app.yaml:1: expected a mapping with apiVersion, kind, metadata and spec, found a list"
        ]
    );
}

/// One file with several broken documents: every error is reported, in line order, with
/// schema errors and semantic errors side by side.
#[test]
fn multi_error_file_reports_everything() {
    let text = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: Web
spec:
  replicas: -1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: api}
    spec:
      containers:
        - name: web
          image: nginx
          resources:
            requests: {cpu: lots}
          ports:
            - containerPort: 8080
            - containerPort: 8080
---
# a comment-only document is skipped
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ports:
    - port: 80
      targetPort: http
      protcol: TCP
    - port: 80
";
    assert_eq!(
        errors(text),
        vec![
            "app.yaml:4: metadata.name: invalid name \"Web\": must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            "app.yaml:6: spec.replicas: must be greater than or equal to 0 (got -1)",
            "app.yaml:7: spec.selector: does not match spec.template.metadata.labels: selector \"app=web\", labels \"app=api\"",
            "app.yaml:17: spec.template.spec.containers[0].resources.requests.cpu: invalid quantity \"lots\": expected a number with an optional suffix, like 500m, 0.5, 128Mi or 1G",
            "app.yaml:20: spec.template.spec.containers[0].ports[1].containerPort: duplicate port 8080/TCP (also containers[0].ports[0])",
            "app.yaml:30: spec.ports[0].name: is required when the service has more than one port",
            "app.yaml:32: spec.ports[0].protcol: unknown field \"protcol\": did you mean \"protocol\"?",
            "app.yaml:33: spec.ports[1].name: is required when the service has more than one port",
            "app.yaml:33: spec.ports[1].port: duplicate port 80/TCP (also ports[0])",
        ]
    );
}

#[test]
fn one_invalid_document_fails_the_whole_file() {
    let bad = GOOD_DEPLOYMENT
        .replace("name: web\nspec", "name: api\nspec")
        .replace("image: nginx:1.27", "image: \"\"");
    let text = format!("{GOOD_DEPLOYMENT}---\n{bad}");
    let err = parse_manifest("app.yaml", &text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "app.yaml:38: spec.template.spec.containers[0].image: is required"
    );
    // Each half on its own: the good one loads.
    assert_eq!(
        parse_manifest("app.yaml", GOOD_DEPLOYMENT).unwrap().len(),
        1
    );
}

#[test]
fn yaml_syntax_error_has_the_parser_line() {
    let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n   bad: indent\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("app.yaml:5: invalid YAML: "),
        "{}",
        errs[0]
    );

    // Errors of earlier documents are kept; the syntax error ends the file.
    let text = format!(
        "{}---\nkind: [unclosed\n",
        GOOD_DEPLOYMENT.replace("replicas: 2", "replicas: x")
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(errs[0], "app.yaml:6: spec.replicas: expected integer");
    assert!(errs[1].starts_with("app.yaml:2"), "{}", errs[1]);
    assert!(errs[1].contains("invalid YAML"), "{}", errs[1]);
}

#[test]
fn duplicate_keys_and_duplicate_objects_are_errors() {
    let text = GOOD_DEPLOYMENT.replace("  replicas: 2\n", "  replicas: 2\n  replicas: 3\n");
    assert_eq!(
        errors(&text),
        vec!["app.yaml:7: duplicate key \"replicas\" in the same mapping"]
    );
    let text = format!("{GOOD_DEPLOYMENT}---\n{GOOD_DEPLOYMENT}");
    assert_eq!(
        errors(&text),
        vec!["app.yaml:25: metadata.name: duplicate Deployment \"web\": already defined by the document at line 1"]
    );
}

#[test]
fn alias_bomb_is_refused() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        text.push_str(&format!(
            "a{i}: &a{i} [{}]\n",
            std::iter::repeat_n(prev.as_str(), 10)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("more than 100000 nodes once YAML aliases are expanded"),
        "{}",
        errs[0]
    );
}

#[test]
fn deep_nesting_is_refused() {
    let text = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert_eq!(
        errors(&text),
        vec!["app.yaml:1: document is nested more than 64 levels deep"]
    );
    let mut text = String::new();
    for i in 0..70 {
        text.push_str(&format!("{}k{i}:\n", "  ".repeat(i)));
    }
    let errs = errors(&text);
    assert_eq!(
        errs,
        vec!["app.yaml:65: document is nested more than 64 levels deep"]
    );
}

#[test]
fn ordinary_anchors_quantities_and_empty_documents_work() {
    let text = "\
---
---
# nothing here
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: &labels {app: web}
spec:
  selector:
    matchLabels: *labels
  template:
    metadata:
      labels: *labels
    spec:
      containers:
        - name: web
          image: nginx
          resources:
            requests: {cpu: 0.5, memory: 1e3}
            limits: {cpu: 1, memory: 128Mi}
...
";
    let docs = parse_documents("app.yaml", text).unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].line, 5);
    let d: Deployment = docs[0].object.to_typed().unwrap();
    let r = d.spec.template.spec.containers[0]
        .resources
        .clone()
        .unwrap();
    assert_eq!(r.requests["cpu"].parsed().unwrap().millis(), 500);
    assert_eq!(r.requests["memory"].parsed().unwrap().value(), 1000);
    assert_eq!(r.limits["cpu"].parsed().unwrap().millis(), 1000);
    assert_eq!(d.spec.selector.match_labels["app"], "web");
}

#[test]
fn typed_to_yaml_and_back_is_unchanged() {
    let mut d: Deployment = parse_manifest("a.yaml", GOOD_DEPLOYMENT).unwrap()[0]
        .to_typed()
        .unwrap();
    let c = &mut d.spec.template.spec.containers[0];
    c.command = vec!["berth".into(), "demo-server".into()];
    c.env = vec![
        EnvVar {
            name: "VERSION".into(),
            value: "1.10".into(),
            value_from: None,
        },
        EnvVar {
            name: "DEBUG".into(),
            value: "true".into(),
            value_from: None,
        },
    ];
    c.resources = Some(ResourceRequirements {
        requests: [
            ("cpu".to_string(), Quantity("250m".into())),
            ("memory".to_string(), Quantity("64Mi".into())),
        ]
        .into(),
        limits: [("cpu".to_string(), Quantity("1".into()))].into(),
    });
    c.readiness_probe = Some(Probe {
        http_get: Some(HttpGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::String("http".into()),
            host: None,
            scheme: None,
        }),
        period_seconds: Some(1),
        ..Default::default()
    });
    d.metadata
        .annotations
        .insert("example.com/note".into(), "null".into());
    d.metadata.resource_version = 42;
    d.metadata.creation_timestamp = Some("2026-01-02T03:04:05Z".parse().unwrap());
    d.spec.strategy = Some(DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::String("25%".into())),
            max_unavailable: Some(IntOrString::Int(0)),
            ..Default::default()
        }),
        blue_green: None,
    });
    let svc = Service {
        metadata: ObjectMeta {
            name: "web".into(),
            namespace: "prod".into(),
            ..Default::default()
        },
        spec: ServiceSpec {
            selector: [("app".to_string(), "web".to_string())].into(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                node_port: Some(30080),
                protocol: None,
            }],
            type_: None,
            ..Default::default()
        },
        ..Default::default()
    };
    let objs = [DynObject::from_typed(&d), DynObject::from_typed(&svc)];
    let yaml = objs
        .iter()
        .map(|o| serde_yaml_ng::to_string(&o.value).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    let back = parse_manifest("rt.yaml", &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(back, objs);
    let d2: Deployment = back[0].to_typed().unwrap();
    assert_eq!(d2, d.with_type_meta());
}

#[test]
fn json_documents_are_accepted() {
    let v = DynObject::from_typed(
        &parse_manifest("a.yaml", GOOD_DEPLOYMENT).unwrap()[0]
            .to_typed::<Deployment>()
            .unwrap(),
    );
    let json = serde_json::to_string_pretty(&v.value).unwrap();
    assert_eq!(parse_manifest("app.json", &json).unwrap(), vec![v]);
}

#[test]
fn every_example_manifest_in_the_repository_is_valid() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let objs = load_paths(&[dir]).unwrap_or_else(|e| panic!("{e}"));
    assert!(objs.iter().any(|o| o.kind == Kind::Deployment));
    assert!(objs.iter().any(|o| o.kind == Kind::Service));
}

#[test]
fn load_paths_reads_files_and_directories_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let svc =
        "apiVersion: v1\nkind: Service\nmetadata: {name: NAME}\nspec:\n  ports: [{port: 80}]\n";
    std::fs::write(dir.path().join("b.yaml"), svc.replace("NAME", "b")).unwrap();
    std::fs::write(dir.path().join("a.yml"), svc.replace("NAME", "a")).unwrap();
    std::fs::write(dir.path().join("c.json"), r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"c"},"spec":{"ports":[{"port":81}]}}"#).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
    let single = dir.path().join("single.yaml.bak");
    std::fs::write(&single, svc.replace("NAME", "d")).unwrap();

    let objs = load_paths(&[dir.path().to_path_buf(), single.clone()]).unwrap();
    let names: Vec<&str> = objs.iter().map(|o| o.name()).collect();
    assert_eq!(names, vec!["a", "b", "c", "d"]);
    let docs = load_documents(std::slice::from_ref(&single)).unwrap();
    assert_eq!(docs[0].file, single.display().to_string());

    // A broken file and a missing one: both reported, nothing returned.
    std::fs::write(dir.path().join("z.yaml"), svc.replace("NAME", "Z")).unwrap();
    let missing = dir.path().join("missing.yaml");
    let err = load_paths(&[dir.path().to_path_buf(), missing.clone()]).unwrap_err();
    let lines: Vec<String> = err.errors().iter().map(|e| e.to_string()).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!(
            "{}:3: metadata.name: invalid name \"Z\"",
            dir.path().join("z.yaml").display()
        )),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(&format!("{}: cannot read: ", missing.display())),
        "{}",
        lines[1]
    );

    // The same object in two files is allowed (applied in order), unlike within one file.
    let other = tempfile::tempdir().unwrap();
    let again = other.path().join("again.yaml");
    std::fs::write(&again, svc.replace("NAME", "a")).unwrap();
    assert_eq!(
        load_paths(&[dir.path().join("a.yml"), again])
            .unwrap()
            .len(),
        2
    );

    let empty = tempfile::tempdir().unwrap();
    let err = load_paths(&[empty.path().to_path_buf()]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: directory has no manifests (*.yaml, *.yml or *.json)",
            empty.path().display()
        )
    );
}

fn yamlish() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "apiVersion: apps/v1\n",
        "kind: Deployment\n",
        "kind: Service\n",
        "metadata:\n",
        "  name: web\n",
        "spec:\n",
        "  ports:\n",
        "    - port: 80\n",
        "  containers:\n",
        "- ",
        "---\n",
        "&a ",
        "*a",
        "[",
        "]",
        "{",
        "}",
        ": ",
        "\n",
        "  ",
        "'",
        "\"",
        "#",
        "|\n",
        ">-\n",
        "!!str ",
        "? ",
        ",",
        "1e999",
        "-",
        "~",
        "\t",
        "é",
        "replicas: 3\n",
        "selector: {matchLabels: {app: web}}\n",
    ]);
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn parse_manifest_never_panics_on_arbitrary_text(s in "\\PC{0,200}") {
        let _ = parse_manifest("fuzz.yaml", &s);
    }

    #[test]
    fn parse_manifest_never_panics_on_yaml_like_text(s in yamlish()) {
        match parse_manifest("fuzz.yaml", &s) {
            Ok(_) => {}
            Err(e) => {
                // Every error names the file and a real line of it (or the whole file).
                let lines = s.lines().count().max(1) + 1;
                for err in e.errors() {
                    prop_assert_eq!(&err.file, "fuzz.yaml");
                    prop_assert!(err.line <= lines, "line {} of {}: {}", err.line, lines, err);
                }
            }
        }
    }
}

#[test]
fn merge_keys_fill_in_without_overriding() {
    let text = "\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ports:
    - &base {name: http, port: 80, protocol: TCP}
    - <<: *base
      name: admin
      port: 81
";
    let objs = parse_manifest("app.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    let s: Service = objs[0].to_typed().unwrap();
    assert_eq!(s.spec.ports[1].name, "admin");
    assert_eq!(s.spec.ports[1].port, 81);
    assert_eq!(s.spec.ports[1].protocol.as_deref(), Some("TCP"));

    let bad = text.replace("<<: *base", "<<: 3");
    assert_eq!(
        errors(&bad),
        vec!["app.yaml:8: the merge key << needs a mapping or a list of mappings"]
    );
}

#[test]
fn int_or_string_quantity_and_timestamp_errors_are_explained() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  creationTimestamp: yesterday\nspec:\n  ports:\n    - port: 80\n      targetPort: [8080]\n";
    assert_eq!(
        errors(svc),
        vec![
            "app.yaml:5: metadata.creationTimestamp: invalid timestamp (input contains invalid characters): use RFC 3339, like 2024-01-02T15:04:05Z",
            "app.yaml:9: spec.ports[0].targetPort: expected integer or string",
        ]
    );
    let text = GOOD_DEPLOYMENT.replace(
        "          image: nginx:1.27\n",
        "          image: nginx:1.27\n          resources:\n            limits: {cpu: [1]}\n",
    );
    assert_eq!(
        errors(&text),
        vec!["app.yaml:19: spec.template.spec.containers[0].resources.limits.cpu: expected a quantity: a string like \"500m\" or \"128Mi\", or a number"]
    );
}

#[test]
fn anchored_keys_and_tags_resolve() {
    let text = "\
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {&k app: web, version: !!str 1.10}
  annotations: {*k : x}
spec:
  ports: [{port: !!int 80}]
";
    let objs = parse_manifest("app.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    let s: Service = objs[0].to_typed().unwrap();
    assert_eq!(s.metadata.labels["version"], "1.10");
    assert_eq!(s.metadata.annotations["app"], "x");
    assert_eq!(s.spec.ports[0].port, 80);
}
