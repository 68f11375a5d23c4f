//! The Prometheus text exposition format (version 0.0.4): [`render`] (prometheus-client's
//! encoder over one or more registries), and [`parse`] / [`find`] to read samples back (tests,
//! tools).

use crate::registry::{Family, Registry};

/// The `Content-Type` of a rendered exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Render several registries as one exposition (each family's HELP/TYPE once: the
/// registries must not share family names; the components' prefixes keep them apart).
pub fn render(registries: &[&Registry]) -> String {
    let mut out = String::new();
    for r in registries {
        if r.encode_into(&mut out).is_err() {
            // Writing to a String cannot fail; an error here is a collector's.
            tracing::error!("a metrics collector failed to encode; the exposition is partial");
        }
    }
    out
}

/// Render families computed by the caller (e.g. fetched from a worker per scrape).
pub fn render_families(families: Vec<Family>) -> String {
    let r = Registry::new();
    r.add_collector(move || families.clone());
    r.render()
}

/// One sample line of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parse the sample lines of an exposition (comments skipped). Errors name the line.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).map_err(|e| format!("line {}: {e}: {line:?}", n + 1))?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = line[..name_end].to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err("bad metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' if key.is_empty() => {
                    end = Some(i + 1);
                    break;
                }
                ',' | ' ' if key.is_empty() => {}
                '=' => {
                    if chars.next().map(|x| x.1) != Some('"') {
                        return Err("label value not quoted".into());
                    }
                    let mut val = String::new();
                    loop {
                        match chars.next().map(|x| x.1) {
                            Some('\\') => match chars.next().map(|x| x.1) {
                                Some('n') => val.push('\n'),
                                Some(o) => val.push(o),
                                None => return Err("unterminated label value".into()),
                            },
                            Some('"') => break,
                            Some(o) => val.push(o),
                            None => return Err("unterminated label value".into()),
                        }
                    }
                    labels.push((std::mem::take(&mut key), val));
                }
                c => key.push(c),
            }
        }
        let end = end.ok_or("unterminated label set")?;
        rest = &r[end..];
    }
    let value_s = rest.split_whitespace().next().ok_or("no value")?;
    let value = match value_s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// The value of the first sample named `name` whose labels include all of `labels`.
pub fn find(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_render_with_help_type_and_escaped_labels() {
        let r = Registry::new();
        r.counter_vec("req_total", "Requests\nserved \\ total.", &["path", "code"])
            .with(&["/a\"b\\c\nd", "OK"])
            .add(3);
        r.gauge("temp", "Temperature.").set(-1.5);
        let text = r.render();
        let expected = "# HELP req_total Requests\\nserved \\\\ total.\n\
                        # TYPE req_total counter\n\
                        req_total{path=\"/a\\\"b\\\\c\\nd\",code=\"OK\"} 3\n\
                        # HELP temp Temperature.\n\
                        # TYPE temp gauge\n\
                        temp -1.5\n";
        assert_eq!(text, expected);
        let samples = parse(&text).unwrap();
        assert_eq!(
            find(&samples, "req_total", &[("path", "/a\"b\\c\nd")]),
            Some(3.0)
        );
    }

    #[test]
    fn histogram_renders_cumulative_buckets_inf_sum_and_count() {
        let r = Registry::new();
        let h = r
            .histogram_vec("lat_seconds", "Latency.", &["method"], &[0.1, 1.0])
            .with(&["Get"]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(7.0);
        let text = r.render();
        let expected = "# HELP lat_seconds Latency.\n\
                        # TYPE lat_seconds histogram\n\
                        lat_seconds_bucket{method=\"Get\",le=\"0.1\"} 1\n\
                        lat_seconds_bucket{method=\"Get\",le=\"1\"} 2\n\
                        lat_seconds_bucket{method=\"Get\",le=\"+Inf\"} 3\n\
                        lat_seconds_sum{method=\"Get\"} 7.55\n\
                        lat_seconds_count{method=\"Get\"} 3\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn unlabelled_histogram_has_only_le_label() {
        let r = Registry::new();
        r.histogram("h", "H.", &[1.0]).observe(2.0);
        let text = r.render();
        assert!(text.contains("h_bucket{le=\"1\"} 0\n"), "{text}");
        assert!(text.contains("h_bucket{le=\"+Inf\"} 1\n"), "{text}");
        assert!(text.contains("h_sum 2.0\nh_count 1\n"), "{text}");
    }

    #[test]
    fn several_registries_and_computed_families_render_as_one_exposition() {
        let a = Registry::new();
        a.gauge("a_gauge", "A.").set(1.0);
        let b = Registry::new();
        b.counter("b_total", "B.").inc();
        let text = render(&[&a, &b]);
        let s = parse(&text).unwrap();
        assert_eq!(find(&s, "a_gauge", &[]), Some(1.0));
        assert_eq!(find(&s, "b_total", &[]), Some(1.0));
        let computed = render_families(vec![
            Family::gauge("g", "G.").with(&[("x", "1")], 1.0),
            Family::counter("c_total", "C.").with(&[("x", "2")], 2.5),
        ]);
        assert!(computed.contains("g{x=\"1\"} 1\n"), "{computed}");
        assert!(computed.contains("c_total{x=\"2\"} 2.5\n"), "{computed}");
        assert!(computed.contains("# TYPE c_total counter\n"), "{computed}");
    }

    #[test]
    fn parse_rejects_malformed_lines_with_their_number() {
        assert!(parse("ok 1\nbad{x=1} 2\n")
            .unwrap_err()
            .starts_with("line 2"));
        assert!(parse("x{a=\"1\" 3").is_err());
        assert!(parse("x abc").is_err());
        assert_eq!(parse("# c\n\nx_y{} NaN").unwrap()[0].name, "x_y");
    }
}
