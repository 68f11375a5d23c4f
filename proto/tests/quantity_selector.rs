//! Table tests for resource quantities and label selectors (public API only).

#![allow(clippy::unwrap_used)]

use berth_proto::quantity::{
    container_limits, format_cpu, format_memory, pod_requests, Limits, QuantityError, Resources,
};
use berth_proto::selector::{Operator, Requirement, Selector, SelectorError};
use berth_proto::types::{
    Container, LabelSelector, LabelSelectorRequirement, Labels, PodSpec, Quantity,
    ResourceRequirements,
};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn container(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
    let map = |p: &[(&str, &str)]| {
        p.iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect()
    };
    Container {
        name: "c".into(),
        image: "img".into(),
        resources: Some(ResourceRequirements {
            requests: map(requests),
            limits: map(limits),
        }),
        ..Default::default()
    }
}

#[test]
fn quantity_table_cpu_and_memory() {
    let cpu = [
        ("500m", 500),
        ("0.5", 500),
        ("2", 2000),
        ("1", 1000),
        ("250m", 250),
        ("0.001", 1),
        ("0.0001", 1), // rounds up like Kubernetes
    ];
    for (s, want) in cpu {
        assert_eq!(Quantity::parse(s).unwrap().millis(), want, "cpu {s}");
    }
    let mem = [
        ("128Mi", 134_217_728u64),
        ("1G", 1_000_000_000),
        ("1Gi", 1_073_741_824),
        ("512k", 512_000),
        ("1e3", 1_000),
        ("1000", 1_000),
        ("64Ki", 65_536),
        ("2Ti", 2_199_023_255_552),
    ];
    for (s, want) in mem {
        assert_eq!(Quantity::parse(s).unwrap().value(), want, "memory {s}");
    }
}

#[test]
fn quantity_yaml_number_is_accepted() {
    let r: ResourceRequirements =
        serde_yaml_ng::from_str("requests: {cpu: 1, memory: 0.5}").unwrap();
    assert_eq!(r.requests["cpu"].parsed().unwrap().millis(), 1000);
    assert_eq!(r.requests["memory"].parsed().unwrap().value(), 1);
    let r: ResourceRequirements = serde_yaml_ng::from_str("requests: {cpu: 0.25}").unwrap();
    assert_eq!(r.requests["cpu"].parsed().unwrap().millis(), 250);
}

#[test]
fn quantity_errors_say_what_is_wrong() {
    assert_eq!(
        Quantity::parse("1Gb").unwrap_err().to_string(),
        "invalid quantity \"1Gb\": unknown suffix \"Gb\" (use one of Ki Mi Gi Ti Pi Ei, n u m k M G T P E, or an exponent like e3)"
    );
    assert!(matches!(
        Quantity::parse("lots"),
        Err(QuantityError::Syntax(_))
    ));
    assert!(matches!(
        Quantity::parse("-100m"),
        Err(QuantityError::Negative(_))
    ));
}

#[test]
fn quantity_formats_back_canonically() {
    assert_eq!(format_cpu(1500), "1500m");
    assert_eq!(format_cpu(4000), "4");
    assert_eq!(format_memory(8 * 1024 * 1024 * 1024), "8Gi");
    assert_eq!(format_memory(512 * 1024 * 1024), "512Mi");
    assert_eq!(format_memory(2_000_000_000), "2G");
    assert_eq!(Quantity::from_millicores(1500).0, "1500m");
    assert_eq!(Quantity::from_bytes(8 << 30).0, "8Gi");
    // Formatting then parsing gives the same number.
    for m in [0u64, 1, 999, 1000, 1500, 123_456] {
        assert_eq!(Quantity::parse(&format_cpu(m)).unwrap().millis(), m);
    }
    for b in [0u64, 1, 1023, 1024, 1_000_000, 3 << 40, 1_234_567_890] {
        assert_eq!(Quantity::parse(&format_memory(b)).unwrap().value(), b);
    }
}

#[test]
fn pod_requests_sum_containers_and_default_to_limits() {
    let spec = PodSpec {
        containers: vec![
            container(&[("cpu", "250m"), ("memory", "64Mi")], &[]),
            // Only limits: requests default to the limits.
            container(&[], &[("cpu", "1"), ("memory", "1Gi")]),
            // Request given and a larger limit: the request counts.
            container(&[("cpu", "100m")], &[("cpu", "2")]),
            Container {
                name: "bare".into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    assert_eq!(
        pod_requests(&spec),
        Resources::new(250 + 1000 + 100, (64 << 20) + (1 << 30))
    );
}

#[test]
fn container_limits_default_to_requests_or_unbounded() {
    let c = container(&[("cpu", "250m"), ("memory", "64Mi")], &[("cpu", "500m")]);
    assert_eq!(
        container_limits(&c),
        Limits {
            milli_cpu: Some(500),
            memory: Some(64 << 20)
        }
    );
    let bare = Container::default();
    assert_eq!(container_limits(&bare), Limits::default());
}

#[test]
fn selector_table_matches_like_kubernetes() {
    let web = labels(&[("app", "web"), ("tier", "frontend"), ("env", "prod")]);
    let db = labels(&[("app", "db"), ("tier", "backend")]);
    let none = Labels::new();
    // (selector, matches web, matches db, matches no labels)
    let table = [
        ("", true, true, true),
        ("app=web", true, false, false),
        ("app==web", true, false, false),
        ("app!=web", false, true, true),
        ("app in (web,db)", true, true, false),
        ("app notin (web)", false, true, true),
        ("env", true, false, false),
        ("!env", false, true, true),
        ("app=web,tier=frontend", true, false, false),
        ("app=web,tier=backend", false, false, false),
        ("tier in (frontend, backend),!env", false, true, false),
    ];
    for (s, w, d, n) in table {
        let sel = Selector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(sel.matches(&web), w, "{s} vs web");
        assert_eq!(sel.matches(&db), d, "{s} vs db");
        assert_eq!(sel.matches(&none), n, "{s} vs none");
    }
}

#[test]
fn selector_display_round_trips() {
    for (input, canonical) in [
        (
            "a=b,c==d,e!=f,g in (x,y),h notin (z),i,!j",
            "a=b,c=d,e!=f,g in (x,y),h notin (z),i,!j",
        ),
        ("  app = web ", "app=web"),
        ("z=1,a=2", "a=2,z=1"),
        ("app.kubernetes.io/name=web", "app.kubernetes.io/name=web"),
        ("tier=", "tier="),
    ] {
        let s = Selector::parse(input).unwrap();
        assert_eq!(s.to_string(), canonical, "{input}");
        assert_eq!(Selector::parse(&s.to_string()).unwrap(), s);
    }
}

#[test]
fn selector_errors_carry_position() {
    let table = [
        ("a=b,", 4, "expected a label key, found end of input"),
        ("a in x", 5, "expected '(' after 'in', found \"x\""),
        ("a in ()", 6, "expected at least one value in '( )'"),
        ("a b", 2, "expected '=', '==', '!=', 'in', 'notin', ',' or end of input after key \"a\", found \"b\""),
        ("=b", 0, "expected a label key, found '='"),
        ("a in (x y)", 8, "expected ',' or ')', found \"y\""),
        ("-bad=x", 0, "invalid label key"),
        ("a=b c", 4, "expected ',' or end of input"),
        (
            "a (",
            2,
            "expected '=', '==', '!=', 'in', 'notin', ',' or end of input",
        ),
    ];
    for (input, pos, msg) in table {
        match Selector::parse(input) {
            Err(SelectorError::Parse {
                pos: p, message, ..
            }) => {
                assert_eq!(p, pos, "{input}: {message}");
                assert!(message.starts_with(msg), "{input}: {message}");
            }
            other => panic!("{input}: expected parse error, got {other:?}"),
        }
    }
}

#[test]
fn selector_from_label_selector() {
    let ls = LabelSelector {
        match_labels: labels(&[("app", "web")]),
        match_expressions: vec![
            LabelSelectorRequirement {
                key: "env".into(),
                operator: "In".into(),
                values: vec!["prod".into(), "staging".into()],
            },
            LabelSelectorRequirement {
                key: "legacy".into(),
                operator: "DoesNotExist".into(),
                values: vec![],
            },
        ],
    };
    let s = Selector::from_label_selector(&ls).unwrap();
    assert_eq!(s.to_string(), "app=web,env in (prod,staging),!legacy");
    assert!(ls.matches(&labels(&[("app", "web"), ("env", "prod")])));
    assert!(!ls.matches(&labels(&[("app", "web"), ("env", "dev")])));
    assert!(!ls.matches(&labels(&[("app", "web"), ("env", "prod"), ("legacy", "1")])));

    let bad = LabelSelector {
        match_expressions: vec![LabelSelectorRequirement {
            key: "env".into(),
            operator: "Exists".into(),
            values: vec!["x".into()],
        }],
        ..Default::default()
    };
    let e = Selector::from_label_selector(&bad).unwrap_err();
    assert_eq!(
        e.to_string(),
        "matchExpressions[0]: existence operators for key \"env\" take no values"
    );
    assert!(
        !bad.matches(&Labels::new()),
        "an invalid selector selects nothing"
    );
}

#[test]
fn selector_from_labels_and_requirements() {
    let s = Selector::from_labels(&labels(&[("app", "web")]))
        .and(Requirement::new("rev", Operator::Equals, ["abc"]).unwrap());
    assert_eq!(s.to_string(), "app=web,rev=abc");
    assert!(Requirement::new("k", Operator::In, Vec::<String>::new()).is_err());
    assert!(Selector::everything().matches(&Labels::new()));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn requirement() -> impl Strategy<Value = Requirement> {
        let key = "([a-z]{1,8}\\.)?[a-z][a-z0-9]{0,6}(/[a-z][a-z0-9_.-]{0,6}[a-z0-9])?";
        let value = "[A-Za-z0-9]([A-Za-z0-9_.-]{0,6}[A-Za-z0-9])?";
        let op = prop::sample::select(vec![
            Operator::Equals,
            Operator::NotEquals,
            Operator::In,
            Operator::NotIn,
            Operator::Exists,
            Operator::DoesNotExist,
        ]);
        (key, op, prop::collection::vec(value, 1..4)).prop_map(|(k, op, vals)| {
            let vals = match op {
                Operator::Equals | Operator::NotEquals => vals[..1].to_vec(),
                Operator::In | Operator::NotIn => vals,
                Operator::Exists | Operator::DoesNotExist => vec![],
            };
            Requirement::new(&k, op, vals).unwrap()
        })
    }

    proptest! {
        #[test]
        fn selector_display_parses_back_to_the_same_selector(
            reqs in prop::collection::vec(requirement(), 0..5)
        ) {
            let s = Selector::from_requirements(reqs);
            let back = Selector::parse(&s.to_string()).unwrap();
            prop_assert_eq!(back, s);
        }

        #[test]
        fn selector_parse_never_panics(s in "\\PC{0,60}") {
            let _ = Selector::parse(&s);
        }

        #[test]
        fn quantity_formatting_round_trips(m in 0u64..1 << 50, b in 0u64..1 << 62) {
            prop_assert_eq!(Quantity::parse(&format_cpu(m)).unwrap().millis(), m);
            prop_assert_eq!(Quantity::parse(&format_memory(b)).unwrap().value(), b);
        }

        #[test]
        fn quantity_parse_never_panics(s in "[-+0-9.eEkMGTPKiumn]{0,30}") {
            let _ = Quantity::parse(&s);
        }
    }
}

/// Found by the round-trip proptest: a label key or value spelled like an operator.
#[test]
fn keys_and_values_named_in_or_notin_parse() {
    for s in [
        "in in (c)",
        "notin notin (in,notin)",
        "in",
        "!in",
        "tier=in",
        "a,in!=notin",
        "!bhp.s/m942gz,erznh.oz4z1r8/j1h4-34=78_.j4,in in (c),w4 notin (A-1,HD-.I)",
    ] {
        let sel =
            berth_proto::selector::Selector::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        let again = berth_proto::selector::Selector::parse(&sel.to_string()).unwrap();
        assert_eq!(again, sel, "{s:?}");
    }
}
