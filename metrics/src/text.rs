//! The Prometheus text exposition format (version 0.0.4): [`render`], and [`parse`] /
//! [`find`] to read samples back (tests, tools).

use std::fmt::Write as _;

use crate::registry::{Family, MetricType, MetricValue};

/// The `Content-Type` of a rendered exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escape a label value: backslash, double quote and newline.
pub fn escape_label_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Escape HELP text: backslash and newline.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as Prometheus writes it (`+Inf`, `-Inf`, `NaN`, shortest float otherwise).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{v}")
    }
}

fn write_labels(out: &mut String, labels: &[(String, String)], extra: Option<(&str, &str)>) {
    if labels.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    let all = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(extra);
    for (k, v) in all {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
    }
    out.push('}');
}

/// Render families in the text format. Families sharing a name (e.g. from two registries)
/// are written under one HELP/TYPE header, as the format requires.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    let mut seen: Vec<&str> = Vec::new();
    for (i, fam) in families.iter().enumerate() {
        if seen.contains(&fam.name.as_str()) {
            continue;
        }
        seen.push(&fam.name);
        let _ = writeln!(out, "# HELP {} {}", fam.name, escape_help(&fam.help));
        let _ = writeln!(out, "# TYPE {} {}", fam.name, fam.kind.as_str());
        for same in families[i..].iter().filter(|f| f.name == fam.name) {
            render_samples(&mut out, same);
        }
    }
    out
}

fn render_samples(out: &mut String, fam: &Family) {
    let name = &fam.name;
    for m in &fam.metrics {
        match (&m.value, fam.kind) {
            (MetricValue::Single(v), _) => {
                out.push_str(name);
                write_labels(out, &m.labels, None);
                let _ = writeln!(out, " {}", format_value(*v));
            }
            (MetricValue::Histogram(h), MetricType::Histogram) => {
                let mut cumulative = 0u64;
                for (bound, count) in h.bounds.iter().zip(&h.counts) {
                    cumulative += count;
                    let _ = write!(out, "{name}_bucket");
                    write_labels(out, &m.labels, Some(("le", &format_value(*bound))));
                    let _ = writeln!(out, " {cumulative}");
                }
                let _ = write!(out, "{name}_bucket");
                write_labels(out, &m.labels, Some(("le", "+Inf")));
                let _ = writeln!(out, " {}", h.count());
                let _ = write!(out, "{name}_sum");
                write_labels(out, &m.labels, None);
                let _ = writeln!(out, " {}", format_value(h.sum));
                let _ = write!(out, "{name}_count");
                write_labels(out, &m.labels, None);
                let _ = writeln!(out, " {}", h.count());
            }
            (MetricValue::Histogram(_), kind) => {
                tracing::error!(metric = %name, kind = kind.as_str(), "histogram value in a non-histogram family; skipped");
            }
        }
    }
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
    use crate::registry::{Family, Registry};

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
        assert!(text.contains("h_sum 2\nh_count 1\n"), "{text}");
    }

    #[test]
    fn same_family_from_two_sources_gets_one_header() {
        let a = Family::gauge("g", "G.").with(&[("x", "1")], 1.0);
        let b = Family::gauge("g", "G.").with(&[("x", "2")], f64::INFINITY);
        let text = render(&[a, b]);
        assert_eq!(text.matches("# TYPE g gauge").count(), 1);
        assert!(text.ends_with("g{x=\"1\"} 1\ng{x=\"2\"} +Inf\n"), "{text}");
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
