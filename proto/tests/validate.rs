//! Validation tables: each case changes one thing in a valid object and expects exactly the
//! listed errors (path and message), so both the rule and its wording are pinned.

#![allow(clippy::unwrap_used)]

use berth_proto::types::*;
use berth_proto::validate::{
    check_dns1123_label, check_dns1123_subdomain, check_label_value, check_port_name,
    check_qualified_name, validate, validate_deployment, validate_event, validate_node,
    validate_pod, validate_replica_set, validate_service, FieldPath,
};
use berth_proto::DynObject;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web, tier: frontend}
    spec:
      containers:
        - name: web
          image: nginx:1.27
          ports:
            - {name: http, containerPort: 8080}
          resources:
            requests: {cpu: 250m, memory: 64Mi}
            limits: {cpu: "1", memory: 128Mi}
          readinessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 5
"#;

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http}
"#;

fn deployment() -> Deployment {
    serde_yaml_ng::from_str(DEPLOYMENT).unwrap()
}

fn service() -> Service {
    serde_yaml_ng::from_str(SERVICE).unwrap()
}

fn rendered(errs: Vec<berth_proto::validate::FieldError>) -> Vec<String> {
    errs.into_iter().map(|e| e.to_string()).collect()
}

fn c0(d: &mut Deployment) -> &mut Container {
    &mut d.spec.template.spec.containers[0]
}

const C0: &str = "spec.template.spec.containers[0]";

#[test]
fn valid_examples_have_no_errors() {
    assert_eq!(
        rendered(validate_deployment(&deployment())),
        Vec::<String>::new()
    );
    assert_eq!(rendered(validate_service(&service())), Vec::<String>::new());
    let obj = DynObject::from_typed(&deployment());
    assert!(validate(&obj).is_empty());
}

type Case = (&'static str, fn(&mut Deployment), Vec<String>);

#[test]
fn deployment_rules_table() {
    let cases: Vec<Case> = vec![
        ("missing name", |d| d.metadata.name.clear(), vec!["metadata.name: is required".into()]),
        (
            "uppercase name",
            |d| d.metadata.name = "Web_App".into(),
            vec!["metadata.name: invalid name \"Web_App\": must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into()],
        ),
        (
            "bad namespace",
            |d| d.metadata.namespace = "a.b".into(),
            vec!["metadata.namespace: invalid namespace \"a.b\": must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character".into()],
        ),
        (
            "bad label key and value",
            |d| {
                d.metadata.labels.insert("-x".into(), "ok".into());
                d.metadata.labels.insert("app.kubernetes.io/name".into(), "bad value".into());
            },
            vec![
                "metadata.labels[-x]: invalid label key \"-x\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into(),
                "metadata.labels[app.kubernetes.io/name]: invalid label value \"bad value\": must be empty or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into(),
            ],
        ),
        (
            "unknown runtime class",
            |d| d.spec.template.spec.runtime_class_name = Some("gvisor".into()),
            vec!["spec.template.spec.runtimeClassName: unsupported runtime class \"gvisor\": use \"docker\" (images in the Docker engine) or \"process\" (host processes), or leave it out for the node's default".into()],
        ),
        (
            "known runtime class",
            |d| d.spec.template.spec.runtime_class_name = Some("process".into()),
            vec![],
        ),
        (
            "negative replicas",
            |d| d.spec.replicas = Some(-1),
            vec!["spec.replicas: must be greater than or equal to 0 (got -1)".into()],
        ),
        (
            "empty selector",
            |d| d.spec.selector = LabelSelector::default(),
            vec!["spec.selector: must not be empty: give matchLabels that match spec.template.metadata.labels".into()],
        ),
        (
            "selector mismatch",
            |d| {
                d.spec.selector.match_labels.insert("app".into(), "api".into());
            },
            vec!["spec.selector: does not match spec.template.metadata.labels: selector \"app=api\", labels \"app=web,tier=frontend\"".into()],
        ),
        (
            "bad match expression",
            |d| {
                d.spec.selector.match_expressions.push(LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "Like".into(),
                    values: vec![],
                })
            },
            vec!["spec.selector.matchExpressions[0]: unsupported operator \"Like\": use In, NotIn, Exists or DoesNotExist".into()],
        ),
        (
            "no containers",
            |d| d.spec.template.spec.containers.clear(),
            vec!["spec.template.spec.containers: at least one container is required".into()],
        ),
        (
            "duplicate container name and port",
            |d| {
                let mut c = c0(d).clone();
                c.readiness_probe = None;
                c.ports[0].name = "http2".into();
                d.spec.template.spec.containers.push(c);
            },
            vec![
                "spec.template.spec.containers[1].name: duplicate container name \"web\" (also containers[0])".into(),
                "spec.template.spec.containers[1].ports[0].containerPort: duplicate port 8080/TCP (also containers[0].ports[0])".into(),
            ],
        ),
        (
            "same port number on UDP is fine, duplicate port name is not",
            |d| {
                c0(d).ports.push(ContainerPort {
                    name: "http".into(),
                    container_port: 8080,
                    protocol: Some("UDP".into()),
                    host_port: None,
                })
            },
            vec![format!("{C0}.ports[1].name: duplicate port name \"http\" (also containers[0].ports[0])")],
        ),
        (
            "container name not a DNS label, image empty",
            |d| {
                c0(d).name = "Web".into();
                c0(d).image = " ".into();
            },
            vec![
                format!("{C0}.name: invalid container name \"Web\": must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"),
                format!("{C0}.image: is required"),
            ],
        ),
        (
            "port out of range and bad protocol",
            |d| {
                c0(d).ports[0].container_port = 70000;
                c0(d).ports[0].protocol = Some("SCTP".into());
            },
            vec![
                format!("{C0}.ports[0].containerPort: must be between 1 and 65535 (got 70000)"),
                format!("{C0}.ports[0].protocol: unsupported protocol \"SCTP\": use TCP or UDP"),
            ],
        ),
        (
            "bad quantity and unknown resource",
            |d| {
                let r = c0(d).resources.as_mut().unwrap();
                r.requests.insert("cpu".into(), Quantity("lots".into()));
                r.requests.insert("gpu".into(), Quantity("1".into()));
            },
            vec![
                format!("{C0}.resources.requests.cpu: invalid quantity \"lots\": expected a number with an optional suffix, like 500m, 0.5, 128Mi or 1G"),
                format!("{C0}.resources.requests.gpu: unsupported resource \"gpu\": use cpu or memory"),
            ],
        ),
        (
            "request above limit",
            |d| {
                let r = c0(d).resources.as_mut().unwrap();
                r.requests.insert("memory".into(), Quantity("1Gi".into()));
            },
            vec![format!("{C0}.resources.requests.memory: must be less than or equal to the memory limit (1Gi > 128Mi)")],
        ),
        (
            "probe with two handlers and zero period",
            |d| {
                let p = c0(d).readiness_probe.as_mut().unwrap();
                p.tcp_socket = Some(TcpSocketAction { port: IntOrString::Int(8080), host: None });
                p.period_seconds = Some(0);
            },
            vec![
                format!("{C0}.readinessProbe: must specify exactly one of httpGet, tcpSocket or exec (found 2)"),
                format!("{C0}.readinessProbe.periodSeconds: must be greater than 0 (got 0)"),
            ],
        ),
        (
            "probe without handler",
            |d| c0(d).liveness_probe = Some(Probe::default()),
            vec![format!("{C0}.livenessProbe: must specify exactly one of httpGet, tcpSocket or exec (found 0)")],
        ),
        (
            "probe port name unknown",
            |d| {
                c0(d).readiness_probe.as_mut().unwrap().http_get.as_mut().unwrap().port =
                    IntOrString::String("metrics".into())
            },
            vec![format!("{C0}.readinessProbe.httpGet.port: port name \"metrics\" does not name a port of container \"web\" (named ports: http)")],
        ),
        (
            "unknown strategy",
            |d| {
                d.spec.strategy = Some(DeploymentStrategy {
                    type_: Some("Canary".into()),
                    ..Default::default()
                })
            },
            vec!["spec.strategy.type: unsupported deployment strategy type \"Canary\": must be one of RollingUpdate, Recreate, BlueGreen".into()],
        ),
        (
            "rollingUpdate with Recreate",
            |d| {
                d.spec.strategy = Some(DeploymentStrategy {
                    type_: Some("Recreate".into()),
                    rolling_update: Some(RollingUpdateDeployment::default()),
                    blue_green: None,
                })
            },
            vec!["spec.strategy.rollingUpdate: may only be set when type is RollingUpdate (type is Recreate)".into()],
        ),
        (
            "surge and unavailable both zero",
            |d| {
                d.spec.strategy = Some(DeploymentStrategy {
                    type_: None,
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(IntOrString::String("0%".into())),
                        max_unavailable: Some(IntOrString::Int(0)),
                        ..Default::default()
                    }),
                    blue_green: None,
                })
            },
            vec!["spec.strategy.rollingUpdate.maxUnavailable: may not be 0 when maxSurge is 0: the rollout could never progress".into()],
        ),
        (
            "auto-revert threshold without autoRevert",
            |d| {
                d.spec.strategy = Some(DeploymentStrategy {
                    type_: None,
                    rolling_update: Some(RollingUpdateDeployment {
                        auto_revert_failed_seconds: Some(10),
                        ..Default::default()
                    }),
                    blue_green: None,
                })
            },
            vec!["spec.strategy.rollingUpdate.autoRevertFailedSeconds: may only be set with autoRevert: true (it is the threshold at which a failing rollout is reverted)".into()],
        ),
        (
            "auto-revert after zero failed pods",
            |d| {
                d.spec.strategy = Some(DeploymentStrategy {
                    type_: None,
                    rolling_update: Some(RollingUpdateDeployment {
                        auto_revert: true,
                        auto_revert_failed_pods: Some(0),
                        ..Default::default()
                    }),
                    blue_green: None,
                })
            },
            vec!["spec.strategy.rollingUpdate.autoRevertFailedPods: must be at least 1 (got 0)".into()],
        ),
        (
            "bad surge and too large unavailable",
            |d| {
                d.spec.strategy = Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(IntOrString::String("lots".into())),
                        max_unavailable: Some(IntOrString::String("150%".into())),
                        ..Default::default()
                    }),
                    blue_green: None,
                })
            },
            vec![
                "spec.strategy.rollingUpdate.maxSurge: must be a non-negative integer or a percentage like \"25%\" (got \"lots\")".into(),
                "spec.strategy.rollingUpdate.maxUnavailable: must not be greater than 100% (got 150%)".into(),
            ],
        ),
        (
            "BlueGreen without blueGreen",
            |d| {
                d.spec.strategy = Some(DeploymentStrategy {
                    type_: Some("BlueGreen".into()),
                    ..Default::default()
                })
            },
            vec!["spec.strategy.blueGreen: is required when type is BlueGreen".into()],
        ),
        (
            "blueGreen with RollingUpdate",
            |d| {
                d.spec.strategy = Some(DeploymentStrategy {
                    type_: None,
                    rolling_update: None,
                    blue_green: Some(BlueGreenStrategy {
                        active_service: "web".into(),
                        ..Default::default()
                    }),
                })
            },
            vec!["spec.strategy.blueGreen: may only be set when type is BlueGreen (type is RollingUpdate)".into()],
        ),
        (
            "preview equals active",
            |d| {
                d.spec.strategy = Some(DeploymentStrategy {
                    type_: Some("BlueGreen".into()),
                    rolling_update: None,
                    blue_green: Some(BlueGreenStrategy {
                        active_service: "web".into(),
                        preview_service: Some("web".into()),
                        scale_down_delay_seconds: Some(-5),
                        ..Default::default()
                    }),
                })
            },
            vec![
                "spec.strategy.blueGreen.previewService: must differ from activeService \"web\"".into(),
                "spec.strategy.blueGreen.scaleDownDelaySeconds: must be greater than or equal to 0 (got -5)".into(),
            ],
        ),
        (
            "active service not a name",
            |d| {
                d.spec.strategy = Some(DeploymentStrategy {
                    type_: Some("BlueGreen".into()),
                    rolling_update: None,
                    blue_green: Some(BlueGreenStrategy {
                        active_service: "".into(),
                        preview_service: Some("Web".into()),
                        ..Default::default()
                    }),
                })
            },
            vec![
                "spec.strategy.blueGreen.activeService: is required".into(),
                "spec.strategy.blueGreen.previewService: invalid service name \"Web\": must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character".into(),
            ],
        ),
    ];
    for (name, mutate, want) in cases {
        let mut d = deployment();
        mutate(&mut d);
        assert_eq!(rendered(validate_deployment(&d)), want, "case: {name}");
    }
}

type SvcCase = (&'static str, fn(&mut Service), Vec<&'static str>);

#[test]
fn service_rules_table() {
    let cases: Vec<SvcCase> = vec![
        ("no ports", |s| s.spec.ports.clear(), vec!["spec.ports: at least one port is required"]),
        (
            "second port needs a name, duplicate port",
            |s| {
                s.spec.ports.push(ServicePort { port: 80, ..Default::default() });
            },
            vec![
                "spec.ports[1].name: is required when the service has more than one port",
                "spec.ports[1].port: duplicate port 80/TCP (also ports[0])",
            ],
        ),
        (
            "duplicate name",
            |s| {
                s.spec.ports.push(ServicePort { name: "http".into(), port: 81, ..Default::default() });
            },
            vec!["spec.ports[1].name: duplicate port name \"http\" (also ports[0])"],
        ),
        (
            "port and target port out of range",
            |s| {
                s.spec.ports[0].port = 0;
                s.spec.ports[0].target_port = Some(IntOrString::Int(65536));
            },
            vec![
                "spec.ports[0].port: must be between 1 and 65535 (got 0)",
                "spec.ports[0].targetPort: must be between 1 and 65535 (got 65536)",
            ],
        ),
        (
            "target port name invalid",
            |s| s.spec.ports[0].target_port = Some(IntOrString::String("http--alt".into())),
            vec!["spec.ports[0].targetPort: invalid port name \"http--alt\": must not contain consecutive hyphens (or give a port number)"],
        ),
        (
            "node port zero is allocated by the server, out of range is not",
            |s| {
                s.spec.ports[0].node_port = Some(0);
                s.spec.ports.push(ServicePort { name: "b".into(), port: 81, node_port: Some(70000), ..Default::default() });
            },
            vec!["spec.ports[1].nodePort: must be between 1 and 65535 (got 70000)"],
        ),
        (
            "bad selector label and type",
            |s| {
                s.spec.selector.insert("app".into(), "web app".into());
                s.spec.type_ = Some("ExternalName".into());
            },
            vec![
                "spec.selector.app: invalid label value \"web app\": must be empty or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                "spec.type: unsupported service type \"ExternalName\": use ClusterIP, NodePort or LoadBalancer",
            ],
        ),
        (
            "clusterIP: an address or None, and None only without node ports",
            |s| {
                s.spec.cluster_ip = Some("None".into());
                s.spec.type_ = Some("LoadBalancer".into());
            },
            vec![
                "spec.clusterIP: may not be \"None\" for a LoadBalancer Service (a headless Service has no virtual IP to serve): drop the type or the clusterIP",
            ],
        ),
        (
            "clusterIP must be an IPv4 address",
            |s| {
                s.spec.cluster_ip = Some("10.43.0.300".into());
            },
            vec!["spec.clusterIP: \"10.43.0.300\" is not an IPv4 address or \"None\" (headless)"],
        ),
        (
            "service names are DNS labels",
            |s| s.metadata.name = "web.v2".into(),
            vec!["metadata.name: invalid name \"web.v2\": must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"],
        ),
    ];
    for (name, mutate, want) in cases {
        let mut s = service();
        mutate(&mut s);
        assert_eq!(rendered(validate_service(&s)), want, "case: {name}");
    }
}

#[test]
fn pod_node_event_replicaset_rules() {
    let d = deployment();
    let mut pod = Pod {
        metadata: ObjectMeta {
            name: "web-abc12".into(),
            ..Default::default()
        },
        spec: d.spec.template.spec.clone(),
        ..Default::default()
    };
    assert!(validate_pod(&pod).is_empty());
    for phase in ["", "Pending", "Running", "Succeeded", "Failed", "Unknown"] {
        let mut p = pod.clone();
        p.status = Some(PodStatus {
            phase: phase.into(),
            ..Default::default()
        });
        assert!(validate_pod(&p).is_empty(), "phase {phase:?}");
    }
    let mut stale = pod.clone();
    stale.status = Some(PodStatus {
        phase: "Completed".into(),
        ..Default::default()
    });
    assert_eq!(
        rendered(validate_pod(&stale)),
        vec!["status.phase: unsupported pod phase \"Completed\": must be one of Pending, Running, Succeeded, Failed, Unknown"]
    );
    pod.spec.node_name = "Node_1".into();
    pod.spec.tolerations.push(Toleration {
        operator: Some("Exists".into()),
        value: "x".into(),
        effect: "Sometimes".into(),
        ..Default::default()
    });
    assert_eq!(
        rendered(validate_pod(&pod)),
        vec![
            "spec.nodeName: invalid node name \"Node_1\": must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            "spec.tolerations[0].value: must be empty when operator is Exists",
            "spec.tolerations[0].effect: unsupported taint effect \"Sometimes\": must be one of NoSchedule, PreferNoSchedule, NoExecute (or leave it empty to tolerate every effect)",
        ]
    );

    let node = Node {
        metadata: ObjectMeta {
            name: "node-1".into(),
            ..Default::default()
        },
        spec: NodeSpec {
            unschedulable: false,
            taints: vec![Taint {
                key: "gpu".into(),
                value: "".into(),
                effect: "NoRun".into(),
            }],
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(
        rendered(validate_node(&node)),
        vec!["spec.taints[0].effect: unsupported taint effect \"NoRun\": must be one of NoSchedule, PreferNoSchedule, NoExecute"]
    );

    let ev = Event {
        metadata: ObjectMeta {
            name: "web.1".into(),
            ..Default::default()
        },
        type_: "Error".into(),
        ..Default::default()
    };
    assert_eq!(
        rendered(validate_event(&ev)),
        vec![
            "involvedObject.kind: is required",
            "involvedObject.name: is required",
            "type: unsupported event type \"Error\": use Normal or Warning",
        ]
    );

    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: "web-5d4f".into(),
            ..Default::default()
        },
        spec: ReplicaSetSpec {
            replicas: -2,
            selector: LabelSelector::default(),
            template: d.spec.template.clone(),
            min_ready_seconds: None,
        },
        ..Default::default()
    };
    assert_eq!(
        rendered(validate_replica_set(&rs)),
        vec![
            "spec.replicas: must be greater than or equal to 0 (got -2)",
            "spec.selector: must not be empty: give matchLabels that match spec.template.metadata.labels",
        ]
    );
}

#[test]
fn name_rules() {
    assert!(check_dns1123_label("web-1").is_ok());
    assert!(check_dns1123_label(&"a".repeat(63)).is_ok());
    assert!(check_dns1123_label(&"a".repeat(64)).is_err());
    for bad in ["", "-a", "a-", "A", "a_b", "a.b"] {
        assert!(check_dns1123_label(bad).is_err(), "{bad}");
    }
    assert!(check_dns1123_subdomain("a.b-c.d").is_ok());
    assert!(check_dns1123_subdomain(&format!("{}.b", "a".repeat(63))).is_ok());
    for bad in ["a..b", ".a", "a.", "A.b"] {
        assert!(check_dns1123_subdomain(bad).is_err(), "{bad}");
    }
    assert!(check_dns1123_subdomain(&"a.".repeat(127)).is_err()); // 254 chars
    for good in ["app", "App_1.x", "example.com/app", "a"] {
        assert!(check_qualified_name(good).is_ok(), "{good}");
    }
    for bad in ["", "/app", "Example.com/app", "a/", "_a", &"a".repeat(64)] {
        assert!(check_qualified_name(bad).is_err(), "{bad}");
    }
    assert!(check_label_value("").is_ok());
    assert!(check_label_value("v1.2_3-x").is_ok());
    assert!(check_label_value("a b").is_err());
    for good in ["http", "h2c", "grpc-web"] {
        assert!(check_port_name(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "8080",
        "HTTP",
        "-http",
        "http-",
        "a--b",
        "abcdefghijklmnop",
    ] {
        assert!(check_port_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn field_path_prints_and_parses() {
    let p = FieldPath::root()
        .child("spec")
        .child("containers")
        .index(0)
        .child("ports")
        .index(1)
        .child("containerPort");
    assert_eq!(p.to_string(), "spec.containers[0].ports[1].containerPort");
    assert_eq!(FieldPath::parse(&p.to_string()), p);
    let l = FieldPath::root()
        .child("metadata")
        .child("labels")
        .child("app.kubernetes.io/name");
    assert_eq!(l.to_string(), "metadata.labels[app.kubernetes.io/name]");
    assert_eq!(FieldPath::parse(&l.to_string()), l);
}

#[test]
fn dyn_object_validation_dispatches_by_kind() {
    let mut s = service();
    s.spec.ports.clear();
    let errs = validate(&DynObject::from_typed(&s));
    assert_eq!(
        rendered(errs),
        vec!["spec.ports: at least one port is required"]
    );
}

fn init(name: &str) -> Container {
    Container {
        name: name.into(),
        image: "busybox:1.36".into(),
        command: vec!["true".into()],
        ..Default::default()
    }
}

fn sidecar(name: &str) -> Container {
    Container {
        restart_policy: Some("Always".into()),
        ..init(name)
    }
}

fn exec_hook(cmd: &[&str]) -> LifecycleHandler {
    LifecycleHandler {
        exec: Some(ExecAction {
            command: cmd.iter().map(|s| s.to_string()).collect(),
        }),
        ..Default::default()
    }
}

const I0: &str = "spec.template.spec.initContainers[0]";

#[test]
fn init_containers_sidecars_and_lifecycle_rules_table() {
    let cases: Vec<Case> = vec![
        (
            "two init containers and a sidecar are valid",
            |d| {
                let s = &mut d.spec.template.spec;
                s.init_containers = vec![init("a"), sidecar("proxy"), init("b")];
                s.init_containers[1].readiness_probe = Some(Probe {
                    exec: Some(ExecAction {
                        command: vec!["true".into()],
                    }),
                    ..Default::default()
                });
                s.init_containers[1].lifecycle = Some(Lifecycle {
                    pre_stop: Some(LifecycleHandler {
                        sleep: Some(SleepAction { seconds: 2 }),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            },
            vec![],
        ),
        (
            "init container name clashes with an app container",
            |d| d.spec.template.spec.init_containers = vec![init("web")],
            vec![format!(
                "{C0}.name: duplicate container name \"web\" (also initContainers[0])"
            )],
        ),
        (
            "two init containers with one name",
            |d| d.spec.template.spec.init_containers = vec![init("a"), init("a")],
            vec![
                "spec.template.spec.initContainers[1].name: duplicate container name \"a\" (also initContainers[0])".into(),
            ],
        ),
        (
            "init container without image",
            |d| {
                let mut c = init("a");
                c.image.clear();
                d.spec.template.spec.init_containers = vec![c];
            },
            vec![format!("{I0}.image: is required")],
        ),
        (
            "restartPolicy other than Always on an init container",
            |d| {
                let mut c = init("a");
                c.restart_policy = Some("OnFailure".into());
                d.spec.template.spec.init_containers = vec![c];
            },
            vec![format!("{I0}.restartPolicy: unsupported restart policy \"OnFailure\": only Always (a sidecar) is allowed on an init container")],
        ),
        (
            "restartPolicy on an app container",
            |d| c0(d).restart_policy = Some("Always".into()),
            vec![format!("{C0}.restartPolicy: may only be set on init containers (got \"Always\"); use spec.restartPolicy for app containers")],
        ),
        (
            "probe on a plain init container",
            |d| {
                let mut c = init("a");
                c.readiness_probe = Some(Probe {
                    exec: Some(ExecAction {
                        command: vec!["true".into()],
                    }),
                    ..Default::default()
                });
                d.spec.template.spec.init_containers = vec![c];
            },
            vec![format!("{I0}.readinessProbe: may not be set for init containers without restartPolicy: Always")],
        ),
        (
            "lifecycle on a plain init container",
            |d| {
                let mut c = init("a");
                c.lifecycle = Some(Lifecycle {
                    post_start: Some(exec_hook(&["true"])),
                    ..Default::default()
                });
                d.spec.template.spec.init_containers = vec![c];
            },
            vec![format!("{I0}.lifecycle: may not be set for init containers without restartPolicy: Always")],
        ),
        (
            "hook with two handlers and a hook with none",
            |d| {
                let mut two = exec_hook(&["true"]);
                two.sleep = Some(SleepAction { seconds: 1 });
                c0(d).lifecycle = Some(Lifecycle {
                    post_start: Some(two),
                    pre_stop: Some(LifecycleHandler::default()),
                });
            },
            vec![
                format!("{C0}.lifecycle.postStart: must specify exactly one of exec, httpGet or sleep (found 2)"),
                format!("{C0}.lifecycle.preStop: must specify exactly one of exec, httpGet or sleep (found 0)"),
            ],
        ),
        (
            "empty exec command, zero sleep, unknown named port in hooks",
            |d| {
                c0(d).lifecycle = Some(Lifecycle {
                    post_start: Some(exec_hook(&[])),
                    pre_stop: Some(LifecycleHandler {
                        sleep: Some(SleepAction { seconds: 0 }),
                        ..Default::default()
                    }),
                });
                let mut s = sidecar("proxy");
                s.lifecycle = Some(Lifecycle {
                    post_start: Some(LifecycleHandler {
                        http_get: Some(HttpGetAction {
                            port: IntOrString::String("admin".into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                d.spec.template.spec.init_containers = vec![s];
            },
            vec![
                format!("{I0}.lifecycle.postStart.httpGet.port: port name \"admin\" does not name a port of container \"proxy\" (the container has no named ports)"),
                format!("{C0}.lifecycle.postStart.exec.command: must not be empty"),
                format!("{C0}.lifecycle.preStop.sleep.seconds: must be greater than 0 (got 0)"),
            ],
        ),
    ];
    for (name, mutate, want) in cases {
        let mut d = deployment();
        mutate(&mut d);
        assert_eq!(rendered(validate_deployment(&d)), want, "case: {name}");
    }
}

#[test]
fn kubernetes_sidecar_manifest_parses_and_validates() {
    let y = r#"
apiVersion: v1
kind: Pod
metadata: {name: myapp}
spec:
  initContainers:
    - name: logshipper
      image: alpine:latest
      restartPolicy: Always
      command: ['sh', '-c', 'tail -F /opt/logs.txt']
      startupProbe:
        exec: {command: ["true"]}
      lifecycle:
        preStop:
          exec: {command: ["sh", "-c", "sleep 1"]}
    - name: init-db
      image: busybox:1.36
      command: ['sh', '-c', 'true']
  containers:
    - name: myapp
      image: alpine:latest
      command: ['sh', '-c', 'while true; do echo logging >> /opt/logs.txt; sleep 1; done']
      lifecycle:
        postStart:
          httpGet: {path: /ready, port: 8080}
        preStop:
          sleep: {seconds: 3}
"#;
    let p: Pod = serde_yaml_ng::from_str(y).unwrap();
    assert_eq!(p.spec.init_containers.len(), 2);
    assert!(p.spec.init_containers[0].is_sidecar());
    assert!(!p.spec.init_containers[1].is_sidecar());
    assert_eq!(rendered(validate_pod(&p)), Vec::<String>::new());
}

#[test]
fn the_init_sidecar_example_manifest_is_valid() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/init-sidecar.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let objs = berth_proto::manifest::parse_manifest(path, &text).unwrap();
    assert_eq!(objs.len(), 1);
    assert!(validate(&objs[0]).is_empty(), "{:?}", validate(&objs[0]));
    let p: Pod = objs[0].to_typed().unwrap();
    assert_eq!(p.spec.init_containers.len(), 3);
    assert!(p.spec.init_containers[1].is_sidecar());
}
